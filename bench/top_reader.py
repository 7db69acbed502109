"""The latency step's reader: a plain aiokafka consumer of ``book.top`` in a process of its own.

A desk's consumer is a process of its own, and so is ``ingest``. Before 2026-12-07 the bench
read ``book.top`` on the same event loop that fed the ingestion sink, so every top's "seen"
waited for the feed's own work (pacing, building and sending the raw records) as well as for
bookstream; here nothing else runs on the reader's loop. It imports aiokafka and orjson only.

``python bench/top_reader.py BOOTSTRAP TOPIC GROUP TOPS OUT``: joins, takes its positions (the
end of each partition), prints ``ready``, then reads until it has seen ``TOPS`` distinct top
changes (key, epoch, seq) or its stdin closes, and writes to ``OUT`` one line per record read
(key, epoch, seq, ts_recv, ts_published, the record's Kafka time in ms, when it was seen in ns),
and prints ``cpu <seconds> waited <seconds>``: the CPU it used, and how long its threads were
ready to run but waited for a core (``/proc/self/task/*/schedstat``; ``-`` where the kernel
keeps no schedstats).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer


def waited_seconds(pid: int | str) -> float | None:
    """How long the threads of process ``pid`` ("self": this one) were ready to run but waited
    for a core, summed over its threads, in seconds (Linux ``/proc/<pid>/task/*/schedstat``, its
    second field: the run queue delay; None where the kernel keeps no schedstats). The bench
    reads the other processes of a step with it too."""
    stats = list(Path(f"/proc/{pid}/task").glob("*/schedstat"))
    total = 0
    for stat in stats:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread gone meanwhile
            total += int(stat.read_text().split()[1])
    return total / 1e9 if stats else None


async def read(bootstrap: str, topic: str, group: str, tops: int) -> list[tuple[bytes, int, int, int, int, int, int]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest",
                                isolation_level="read_committed", group_id=group, fetch_max_wait_ms=5)
    await consumer.start()
    rows: list[tuple[bytes, int, int, int, int, int, int]] = []
    seen: set[tuple[bytes, int, int]] = set()
    try:
        await consumer.getmany(timeout_ms=500)  # join and take positions before the flow starts
        print("ready", flush=True)
        closed = asyncio.Event()  # the bench closes stdin (a pipe): EOF makes it readable
        asyncio.get_running_loop().add_reader(sys.stdin.fileno(), closed.set)
        while len(seen) < tops and not closed.is_set():
            for msgs in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time_ns()
                for m in msgs:
                    top = orjson.loads(m.value)
                    key = (m.key or b"", top["epoch"], top["seq"])
                    seen.add(key)
                    rows.append((*key, top["ts_recv"], top["ts_published"], m.timestamp, now))
    finally:
        await consumer.stop()
    return rows


if __name__ == "__main__":
    bootstrap_, topic_, group_, tops_, out_ = sys.argv[1:6]
    read_rows = asyncio.run(read(bootstrap_, topic_, group_, int(tops_)))
    with open(out_, "wb") as f:
        f.writelines(b"%s %d %d %d %d %d %d\n" % row for row in read_rows)
    t = os.times()
    waited = waited_seconds("self")
    # the bench counts the reader's cores from it
    print(f"cpu {t.user + t.system} waited {'-' if waited is None else waited}", flush=True)
