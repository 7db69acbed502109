"""`faust -A app verify` on the real broker: raw topics written by bookstream's raw sink and by
`replay` verify clean with a digest that `--expect` checks; a copy of them with one byte altered,
one record dropped, one inserted and two swapped (one tampering per partition) is reported at
exactly those offsets; a retry's repeat is not tampering."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from app.audit import CHAIN_HEADER, SEQ_HEADER, WRITER_HEADER, ChainWriter
from app.kafka import ensure_topics
from app.venues.base import Kind
from app.wire import RawFrame, header_map
from tests.helpers import Namespace, consume, produce_frames

SYMBOLS = [f"X{i}-USDT" for i in range(12)]


def _frames(n: int) -> list[RawFrame]:
    return [RawFrame(f"okx:{s}", time.time_ns(), Kind.WS, "c1", f'{{"n":{i},"s":"{s}"}}'.encode())
            for i in range(n) for s in SYMBOLS]


def _written(ns: Namespace) -> dict[int, list[Any]]:
    """raw.okx of ``ns``, written by the raw sink (several records per partition), by partition."""
    settings = ns.settings()

    async def go() -> None:
        await ensure_topics(settings, [settings.topic("raw.okx")])
        for _ in range(4):  # four runs of the sink: four writers per partition, each a chain of its own
            await produce_frames(settings, _frames(40), per_s=4000)

    asyncio.run(go())
    by_partition: dict[int, list[Any]] = {}
    for msg in consume(ns.bootstrap, ns.topic("raw.okx"), idle_s=1):
        by_partition.setdefault(msg.partition, []).append(msg)
    return by_partition


def _copy(ns: Namespace, by_partition: dict[int, list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]]) -> None:
    settings = ns.settings()

    async def go() -> None:
        await ensure_topics(settings, [settings.topic("raw.okx")])
        producer = AIOKafkaProducer(bootstrap_servers=ns.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for partition, records in by_partition.items():
                for key, value, headers in records:
                    await producer.send_and_wait(settings.topic("raw.okx"), value, key=key, partition=partition,
                                                 headers=headers)
        finally:
            await producer.stop()

    asyncio.run(go())


def _plain(msg: Any) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    return msg.key, msg.value, list(header_map(msg.headers).items())


def _verify(ns: Namespace, *args: str) -> tuple[int, str]:
    proc = ns.faust("verify", *args, check=False, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_sinks_chain_verifies_clean_and_every_kind_of_tampering_is_found_at_its_offset(ns: Namespace,
                                                                                            kafka: str) -> None:
    written = _written(ns)
    assert len(written) == 4
    assert all(len(records) >= 8 for records in written.values()), {p: len(r) for p, r in written.items()}
    code, out = _verify(ns)
    assert code == 0, out
    assert re.search(r"verify: clean — 1 topics, 4 partitions, [\d,]+ records, 1,920 frames; end digest", out), out
    digest = re.search(r"end digest ([0-9a-f]{64})", out).group(1)  # type: ignore[union-attr]
    assert _verify(ns, "--topic", "raw.okx", "--expect", digest)[0] == 0
    code, out = _verify(ns, "--expect", "0" * 64)
    assert code == 1
    assert "END DIGEST DIFFERS" in out

    tampered = Namespace(f"t{uuid.uuid4().hex[:10]}", kafka, ns.tmp)
    copies = {p: [_plain(m) for m in msgs] for p, msgs in written.items()}
    expect = []
    # partition 0: one byte of a frame altered
    key, value, headers = copies[0][5]
    middle = len(value) // 2
    copies[0][5] = (key, value[:middle] + bytes([value[middle] ^ 1]) + value[middle + 1:], headers)
    expect.append((0, 5, "ALTERED"))
    # partition 1: one record dropped: found at the next record of its writer
    writer = dict(copies[1][4][2])[WRITER_HEADER]
    del copies[1][4]
    nxt = next(i for i in range(4, len(copies[1])) if dict(copies[1][i][2])[WRITER_HEADER] == writer)
    expect.append((1, nxt, "REMOVED"))
    # partition 2: a record inserted with a forged but valid link of its writer's chain
    key, value, headers = copies[2][3]
    h = dict(headers)
    seq = int(h[SEQ_HEADER])
    forger = ChainWriter(h[WRITER_HEADER].decode())
    previous = next(dict(c[2]) for c in copies[2] if dict(c[2])[WRITER_HEADER] == h[WRITER_HEADER]
                    and int(dict(c[2])[SEQ_HEADER]) == seq - 1) if seq else None
    if previous is not None:
        forger._state[("raw.okx", 2)] = (seq, bytes.fromhex(previous[CHAIN_HEADER].decode()))
    fake = b'{"key":"okx:X0-USDT","ts":1,"kind":"ws","conn":"c1","frame":"{}"}'
    forged, _ = forger.headers("raw.okx", 2, fake)
    copies[2].insert(3, (key, fake, [("v", b"2"), *forged]))
    expect.append((2, 3, "INSERTED"))
    # partition 3: two records of one writer swapped
    writer = dict(copies[3][2][2])[WRITER_HEADER]
    j = next(i for i in range(3, len(copies[3])) if dict(copies[3][i][2])[WRITER_HEADER] == writer)
    copies[3][2], copies[3][j] = copies[3][j], copies[3][2]
    expect.append((3, 2, "REORDERED"))
    _copy(tampered, copies)
    code, out = _verify(tampered)
    assert code == 1, out
    found = [(int(p), int(o), k) for p, o, k in re.findall(r"raw\.okx\[(\d)\] offset (\d+): ([A-Z]+):", out)]
    assert sorted(found) == sorted(expect), out
    assert "verify: NOT CLEAN" in out

    # A producer retry's repeat (the same record again, right after itself) is no tampering.
    repeated = Namespace(f"t{uuid.uuid4().hex[:10]}", kafka, ns.tmp)
    copies = {p: [_plain(m) for m in msgs] for p, msgs in written.items()}
    copies[1].insert(3, copies[1][2])
    _copy(repeated, copies)
    code, out = _verify(repeated)
    assert code == 0, out
    assert "1 repeats of a producer retry" in out


def test_a_replay_writes_the_chain_and_a_time_range_enters_chains_mid_way(ns: Namespace, captures: Path) -> None:
    # small records: enough of them for a time range to start mid-way
    ns.replay(str(captures / "cryptofeed" / "DERIBIT.ws.1.0"), "--format", "cryptofeed",
              env={"RAW_BATCH_MAX_FRAMES": "4"})
    code, out = _verify(ns, "--topic", "raw.deribit")
    assert code == 0, out
    assert "verify: clean — 1 topics" in out, out
    records = consume(ns.bootstrap, ns.topic("raw.deribit"), idle_s=1)
    assert all(header_map(m.headers)[WRITER_HEADER].startswith(b"replay/") for m in records)
    cut = sorted(m.timestamp for m in records)[len(records) // 2]
    code, out = _verify(ns, "--topic", "raw.deribit", "--from", str(cut * 1_000_000))
    assert code == 0, out
    assert "chains entering the range mid-way" in out, out
