"""The raw reader (app.rawreader): the worker reads the raw topics with its own consumer from the
table's positions — raw records deleted by retention before it applied them are given up with
one line and the books go on from what is left; a raw topic nobody has written to is not
fetched until it gets its first record."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from tests.helpers import Namespace, Worker, wait_for, workers
from tests.integration.test_worker_restart import deribit_frame, write_capture

NAMES = ["BTC-PERPETUAL", "ETH-PERPETUAL", "SOL-PERPETUAL"]


def consumer_lag(worker: Worker) -> dict[tuple[str, int], float]:
    """``bookstream_consumer_lag`` of each raw partition, from the worker's /metrics."""
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as resp:  # noqa: S310 - local URL
        text = resp.read().decode()
    out = {}
    for labels, value in re.findall(r"^bookstream_consumer_lag\{([^}]*)\} (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(got["topic"], int(got["partition"]))] = float(value)
    return out


def stage_counts(worker: Worker) -> dict[str, float]:
    """``bookstream_stage_latency_seconds_count`` of each stage, from the worker's /metrics."""
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as resp:  # noqa: S310 - local URL
        text = resp.read().decode()
    return {stage: float(value) for stage, value in
            re.findall(r'^bookstream_stage_latency_seconds_count\{stage="(\w+)"\} (\S+)$', text, re.M)}


def write_frames(path: Path, frames: list[tuple[str, str]], ts: int) -> None:
    lines = [{"ts": ts + i * 1000, "venue": "deribit", "conn": "c2", "kind": "ws", "frame": frame}
             for i, (_, frame) in enumerate(frames)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


async def delete_to_end(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Every record of ``topic`` deleted (as retention would): the new log start of each partition."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(ends[tp]) for tp in tps if ends[tp]}, timeout_ms=10_000)
    finally:
        await admin.close()
    return {tp.partition: ends[tp] for tp in tps}


def test_records_deleted_before_they_were_applied_are_given_up_and_the_books_go_on(
        ns: Namespace, tmp_path: Path) -> None:
    first = tmp_path / "first.jsonl"
    write_capture(first, NAMES, changes=20)  # snapshot at change 1000, changes to 1020
    worker = Worker(ns, tmp_path / "data")
    with workers(worker):
        worker.start()
        ns.replay(str(first), "--format", "native")

        def at(seq: int, state: str = "synced") -> dict[str, object] | None:
            books = {}
            for name in NAMES:
                status, body = worker.get(f"/api/books/deribit/{name}")
                if status != 200 or body["seq"] != seq or body["state"] != state:
                    return None
                books[name] = body
            return books

        wait_for(lambda: at(1020), 60, "every book synced at change 1020")
        # Each raw record it applied was timed once in each of the reader's stages.
        stages = stage_counts(worker)
        assert stages["fetch"] == stages["wait"] == stages["apply"] > 0, stages
        # Only raw.deribit was ever written: the other venues' raw partitions are not fetched.
        first_log = worker.log_text()
        assert "never written, asked again every" in first_log
        assert "raw partitions written for the first time, now read" in first_log
        worker.kill()

        # While the worker is down: changes 1021..1030 are written, then deleted before anyone
        # applied them; then a new snapshot (change 2000) and changes after it.
        lost = [(n, deribit_frame(n, "change", c, c - 1, [["change", 90, c]], [])) for n in NAMES
                for c in range(1021, 1031)]
        write_frames(tmp_path / "lost.jsonl", lost, 1_700_000_100_000_000_000)
        ns.replay(str(tmp_path / "lost.jsonl"), "--format", "native")
        starts = asyncio.run(delete_to_end(ns.bootstrap, ns.topic("raw.deribit"), ns.partitions))
        assert any(starts.values())
        after = []
        for n in NAMES:
            after.append((n, deribit_frame(n, "snapshot", 2000, None, [["new", 95, 1]], [["new", 105, 2]])))
            after += [(n, deribit_frame(n, "change", c, c - 1, [["change", 95, c - 1990]], [])) for c in
                      range(2001, 2006)]
        write_frames(tmp_path / "after.jsonl", after, 1_700_000_200_000_000_000)
        ns.replay(str(tmp_path / "after.jsonl"), "--format", "native")

        worker.start()
        books = wait_for(lambda: at(2005), 60, "every book synced again from the snapshot after the deleted records")
        for name in NAMES:
            assert (books[name]["bid_px"], books[name]["ask_px"]) == ("95", "105"), books[name]
        text = worker.log_text()
        assert "were deleted by the topic's retention before this worker applied them" in text
        assert "Traceback" not in text
        # nothing left behind: every raw partition read to its end
        def read_to_end() -> dict[tuple[str, int], float] | None:
            lag = consumer_lag(worker)
            return lag if lag and all(v == 0.0 for v in lag.values()) else None

        lag = wait_for(read_to_end, 30, "consumer lag 0 on every raw partition read")
        assert {topic for topic, _ in lag} == {ns.topic("raw.deribit")}  # the only raw topic ever written


class Applied(Exception):
    """Every record was applied: the reader's loop ends here."""


def test_the_next_fetch_is_at_the_broker_while_a_fetched_batch_is_applied(ns: Namespace) -> None:
    """The reader gives aiokafka's fetcher its turns before it applies what a fetch returned: the
    fetch of the records behind them is already on the consumer's connection when the first
    record of a batch is applied, so a record that arrives meanwhile is fetched at once instead
    of after the whole batch (without those turns no fetch is in flight at that moment)."""
    from app.rawreader import RawReader
    from app.retry import Backoff
    from tests.helpers import produce_records

    produce_records(ns, [("raw.deribit", 0, b"k", b"v%d" % i) for i in range(50)])
    topic = ns.topic("raw.deribit")
    seen: list[tuple[int, bool]] = []
    reader: RawReader

    def fetch_in_flight() -> bool:
        conns = reader.consumer._client._conns.values()  # noqa: SLF001 - the mechanism under test
        return any(type(request).__name__.startswith("FetchRequest")
                   for conn in conns for _, request, _ in conn._requests)  # noqa: SLF001

    def handle(topic: str, partition: int, offset: int, key: bytes, value: bytes, headers: Any) -> None:
        seen.append((offset, fetch_in_flight()))
        if offset == 49:
            raise Applied

    runtime = SimpleNamespace(
        settings=ns.settings(), topics=SimpleNamespace(raw=[topic]), handle=handle,
        publisher=SimpleNamespace(deferred=lambda: False), sink=SimpleNamespace(full=lambda: False),
        positions=lambda tps: {}, start_at=lambda *a, **k: None)
    reader = RawReader(runtime)  # type: ignore[arg-type]
    reader.resume({0})

    async def serve() -> None:
        try:
            await reader._serve(Backoff(0.1, 1.0))  # noqa: SLF001
        finally:
            await reader.consumer.stop()

    with pytest.raises(Applied):
        asyncio.run(serve())
    assert [offset for offset, _ in seen] == list(range(50))
    assert seen[0] == (0, True), seen[:3]  # the first record of the fetch: the next fetch already sent
