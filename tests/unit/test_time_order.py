"""Time and order: venues interleaved differently, skewed receive clocks, duplicate deliveries.

Real captures of every venue go through the router, then reach the book processor
(what the agent runs) perturbed the ways Kafka and the world perturb them. The books must
equal the in-order reference, and no book may go stale.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

from app.capture.formats import read
from app.processor import Processor
from app.router import Router
from app.state.manager import SourceProgress, Standing
from app.sync import SYNCED
from app.wire import RawFrame
from tests.unit.test_captures import CRYPTOFEED, hft

pytestmark = pytest.mark.captures

Stream = list[tuple[int, RawFrame]]  # (offset in its partition, frame), one instrument key


def routed(captures: Path) -> dict[str, Stream]:
    """Every capture's records, per instrument key, with the offsets Kafka would give them."""
    out: dict[str, Stream] = defaultdict(list)
    sources = [([captures / "cryptofeed" / name], "cryptofeed") for name in CRYPTOFEED]
    sources.append((hft(captures, "spot"), "hftbacktest"))
    for paths, fmt in sources:
        router = Router()
        for rec in read(paths, fmt):
            for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol):
                out[raw.key].append((len(out[raw.key]) + 1, raw))
    return out


def books(proc: Processor) -> dict[str, tuple[object, ...]]:
    return {k: (i.status, i.seq, list(i.book.iter_bids()), list(i.book.iter_asks()))
            for k, i in proc.instruments.items()}


def run(deliveries: list[tuple[str, int, RawFrame]]) -> Processor:
    """What the worker does with each delivered record: applied only if its offset is exactly
    the next one of its partition (each instrument its own partition here)."""
    proc, progress = Processor(), SourceProgress()
    for key, offset, raw in deliveries:
        if progress.position(key, offset) is Standing.NEXT:
            proc.handle(raw)
            progress.applied(key, offset)
    return proc


@pytest.fixture(scope="module")
def streams(captures: Path) -> dict[str, Stream]:
    return routed(captures)


@pytest.fixture(scope="module")
def expected(streams: dict[str, Stream]) -> dict[str, tuple[object, ...]]:
    return books(run([(k, off, raw) for k, s in streams.items() for off, raw in s]))


def interleave(streams: dict[str, Stream], rng: random.Random) -> list[tuple[str, int, RawFrame]]:
    """A random merge of the instruments' streams: each keeps its own order (as a partition does)."""
    pos = dict.fromkeys(streams, 0)
    live = [k for k in streams if streams[k]]
    out = []
    while live:
        key = rng.choice(live)
        off, raw = streams[key][pos[key]]
        out.append((key, off, raw))
        pos[key] += 1
        if pos[key] == len(streams[key]):
            live.remove(key)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_cross_venue_interleaving_gives_the_same_books(streams: dict[str, Stream], expected: dict[str, tuple[
        object, ...]], seed: int) -> None:
    got = books(run(interleave(streams, random.Random(seed))))
    assert got == expected
    assert sum(1 for v in got.values() if v[0] == SYNCED) == len([k for k in got if k.partition(":")[2]])


def test_receive_clock_skew_changes_no_book(streams: dict[str, Stream], expected: dict[str, tuple[object, ...]]
                                            ) -> None:
    """Receive time is recorded, never used to order or sequence: skew it by ±1 h per record."""
    rng = random.Random(7)
    skewed = []
    for key, off, raw in interleave(streams, rng):
        ts = raw.ts + rng.randint(-3_600_000_000_000, 3_600_000_000_000)
        skewed.append((key, off, RawFrame(raw.key, ts, raw.kind, raw.conn, raw.data)))
    assert books(run(skewed)) == expected


def test_redelivered_and_duplicated_records_change_no_book(streams: dict[str, Stream],
                                                           expected: dict[str, tuple[object, ...]]) -> None:
    """Kafka at-least-once: a run of records delivered again with the same offsets (after a
    restart); a producer retry: the same frame written twice, the copy under a new offset."""
    rng = random.Random(11)
    deliveries: list[tuple[str, int, RawFrame]] = []
    for key, stream in streams.items():
        offset = 0
        seen: list[tuple[int, RawFrame]] = []
        for _, raw in stream:
            offset += 1
            deliveries.append((key, offset, raw))
            seen.append((offset, raw))
            if rng.random() < 0.05:  # producer retry: the same frame again, next offset
                offset += 1
                deliveries.append((key, offset, raw))
            if rng.random() < 0.02:  # consumer redelivery: the last few records, same offsets
                deliveries.extend((key, o, r) for o, r in seen[-rng.randint(1, 5):])
    assert books(run(deliveries)) == expected
