"""Books as of any instant: `faust -A app book-at` and `/api/books/{venue}/{instrument}?at=` rebuild
a past book from the worker's latest book.checkpoints record before it and the raw topic after it;
at random instants of the captures the answer equals the reference (the same processor over the
raw partition's frames up to that instant, from the beginning)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from app.capture.formats import read, write_native
from app.processor import Processor
from app.wire import RawFrame, partition_for
from tests.helpers import Namespace, Worker, consume, frames, wait_for, workers
from tests.unit.test_market import paths

pytestmark = pytest.mark.captures


def _reference(ns: Namespace, key: str, at: int, partitions: int) -> Processor:
    proc = Processor()
    venue = key.partition(":")[0]
    records = [m for m in consume(ns.bootstrap, ns.topic(f"raw.{venue}"), idle_s=1)
               if m.partition == partition_for(key, partitions)]
    for frame in frames(sorted(records, key=lambda m: m.offset)):
        if isinstance(frame, RawFrame) and frame.key == key:
            if frame.ts > at:
                break
            proc.handle(frame)
    return proc


def _same(answer: dict[str, Any], proc: Processor, key: str, depth: int) -> None:
    inst = proc.instruments[key]
    bids, asks = inst.book.levels(depth)
    assert (answer["state"], answer["seq"]) == (str(inst.status), inst.seq), (key, answer["at"])
    assert answer["bids"] == [list(x) for x in bids], key
    assert answer["asks"] == [list(x) for x in asks], key


def test_book_at_random_instants_equals_the_reference_and_starts_from_a_checkpoint(ns: Namespace, captures: Path,
                                                                                   tmp_path: Path) -> None:
    records = list(read(paths(captures, "OKX.ws.1.0"), "cryptofeed"))
    half = len(records) // 2
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(write_native(r) for r in records[:half]))
    second.write_bytes(b"".join(write_native(r) for r in records[half:]))
    worker = Worker(ns, tmp_path / "data", BOOK_CHECKPOINT_INTERVAL_S="1", INGEST_IN_WORKER="false")
    with workers(worker):
        worker.start()
        ns.replay(str(first), "--format", "native")

        def checkpointed() -> bool:
            return bool(consume(ns.bootstrap, ns.topic("book.checkpoints"), idle_s=0.5))

        wait_for(checkpointed, 60, "book.checkpoints written")
        ns.replay(str(second), "--format", "native")
        wait_for(lambda: worker.get("/metrics/counters")[1].get("book_checkpoints", 0) > 0, 30, "checkpoints counted")
        keys = sorted({m.key.decode() for m in consume(ns.bootstrap, ns.topic("book.checkpoints"), idle_s=1)})
        assert keys
        rng = random.Random(3)
        times = sorted(r.ts for r in records)
        late = [t for t in times if t > records[half].ts]
        checked = 0
        for key in keys[:3]:
            venue, _, symbol = key.partition(":")
            for at in [rng.choice(late), rng.choice(times[: len(times) // 3])]:
                proc = _reference(ns, key, at, ns.partitions)
                if key not in proc.instruments:
                    continue
                status, body = worker.get(f"/api/books/{venue}/{symbol}?at={at}&depth=25")
                assert status == 200, body
                _same(body, proc, key, 25)
                checked += 1
            started = worker.get(f"/api/books/{venue}/{symbol}?at={times[-1]}")[1]["start"]
            assert started["from"] == "checkpoint", started  # not a replay of the whole partition
        assert checked >= 3
        # the command gives the same answer
        key, at = keys[0], rng.choice(late)
        answer = json.loads(ns.faust("book-at", key, str(at), "--depth", "25").stdout)
        _same(answer, _reference(ns, key, at, ns.partitions), key, 25)
        # an instant after the last frame, from a checkpoint that covers the whole partition: nothing
        # is read after it, and the command ends (it hung there for good: aiokafka stopped just after
        # a new assignment, aio-libs/aiokafka#983)
        part = partition_for(key, ns.partitions)
        end = 1 + max(m.offset for m in consume(ns.bootstrap, ns.topic("raw.okx"), idle_s=0.5) if m.partition == part)

        def covered() -> bool:
            return any(m.key.decode() == key and json.loads(m.value)["next_offset"] >= end
                       for m in consume(ns.bootstrap, ns.topic("book.checkpoints"), idle_s=0.5))

        wait_for(covered, 30, f"a checkpoint of {key} covering its raw partition's end")
        last = json.loads(ns.faust("book-at", key, str(times[-1]), timeout=60).stdout)
        assert (last["start"]["from"], last["raw_records_read"]) == ("checkpoint", 0), last
        bad = ns.faust("book-at", "okx", "2024-01-01T00:00:00Z", check=False)
        assert bad.returncode != 0
        assert "expected VENUE:INSTRUMENT" in bad.stderr
