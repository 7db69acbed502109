"""The table layout and local store (real RocksDB on a temp dir), without Kafka.

* persist → reload equals the book (hypothesis): whatever updates a book takes, the rows
  a commit writes put the same book, sync state and progress back;
* what one applied update writes does not grow with the book's depth;
* a record is applied only at exactly the next offset of its partition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.state import store as store_module
from app.state.layout import CHECKPOINT_KEY, Checkpoint, LayoutError, decode_state, encode_state
from app.state.manager import PartitionState, SourceProgress, Standing
from app.state.store import LocalStore
from app.venues.base import Kind
from app.wire import RawFrame
from tables.books import BOOKS
from tests.helpers import examples

KEY = "deribit:BTC-PERPETUAL"


def deribit(kind: str, change_id: int, bids: list[tuple[int, float]], asks: list[tuple[int, float]],
            prev: int | None = None) -> RawFrame:
    """A Deribit book frame; bid tick t is at 10000 - t/2, ask tick t at 10001 + t/2."""
    def side(levels: list[tuple[int, float]], sign: int) -> list[list[object]]:
        return [["delete" if size == 0 else "new", (10000 if sign < 0 else 10001) + sign * tick * 0.5, size]
                for tick, size in levels]

    data: dict[str, object] = {"type": kind, "timestamp": 1_700_000_000_000 + change_id,
                               "instrument_name": "BTC-PERPETUAL", "change_id": change_id,
                               "bids": side(bids, -1), "asks": side(asks, 1)}
    if prev is not None:
        data["prev_change_id"] = prev
    frame = orjson.dumps({"jsonrpc": "2.0", "method": "subscription",
                          "params": {"channel": "book.BTC-PERPETUAL.100ms", "data": data}})
    return RawFrame(KEY, 1_700_000_000_000_000_000 + change_id, Kind.WS, "c1", frame)


def new_partition(tmp: Path) -> PartitionState:
    return PartitionState(0, LocalStore(tmp, BOOKS).open(0), buffer_limit=100)


def commit_locally(part: PartitionState) -> None:
    """What a commit writes, minus Kafka: the snapshot's rows in one local write batch."""
    rows, progress = part.snapshot()
    part.store.write(rows, Checkpoint(changelog_next=1))
    part.committed = progress


def apply(part: PartitionState, frame: RawFrame, topic: str, offset: int) -> None:
    out = part.processor.handle(frame)
    assert out.dead is None, out.dead
    if out.inst is not None:
        part.record(frame.key, out.fx)
    part.progress.applied(topic, offset)


def snapshot_of(part: PartitionState) -> dict[str, object]:
    return {key: (str(i.status), i.reason, i.seq, i.conn, i.ts_exchange, i.ts_recv, dict(i.counters),
                  list(i.book.iter_bids()), list(i.book.iter_asks())) for key, i in part.books.items()}


ticks = st.integers(0, 40)
sizes = st.sampled_from([0, 0, 1.0, 2.5, 10.0, 0.001])
updates = st.lists(st.tuples(st.lists(st.tuples(ticks, sizes), max_size=6),
                             st.lists(st.tuples(ticks, sizes), max_size=6)),
                   min_size=1, max_size=30)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(updates=updates, commit_every=st.integers(1, 7), gap_at=st.integers(0, 40))
def test_persist_then_reload_equals_the_book(tmp_path_factory: pytest.TempPathFactory,
                                             updates: list[tuple[list[tuple[int, float]], list[tuple[int, float]]]],
                                             commit_every: int, gap_at: int) -> None:
    tmp = tmp_path_factory.mktemp("state")
    part = new_partition(tmp)
    apply(part, deribit("snapshot", 100, [(t, 1.0) for t in range(10)], [(t, 1.0) for t in range(10)]),
          "raw.deribit", 0)
    change_id = 100
    for i, (bids, asks) in enumerate(updates, 1):
        prev = change_id if i != gap_at else change_id - 1  # a gap makes the book stale: that is state too
        change_id += 1
        apply(part, deribit("change", change_id, bids, asks, prev), "raw.deribit", i)
        if i % commit_every == 0:
            commit_locally(part)
    commit_locally(part)
    want = snapshot_of(part)
    part.store.close()

    reloaded = PartitionState(0, LocalStore(tmp, BOOKS).open(0), buffer_limit=100)
    reloaded.load()
    assert snapshot_of(reloaded) == want
    assert reloaded.progress.next == {"raw.deribit": len(updates) + 1}
    reloaded.store.close()


def test_what_one_update_writes_does_not_grow_with_depth(tmp_path: Path) -> None:
    written = {}
    for depth in (10, 1000, 5000):
        part = new_partition(tmp_path / str(depth))
        apply(part, deribit("snapshot", 1, [(t, 1.0) for t in range(depth)], [(t, 1.0) for t in range(depth)]),
              "raw.deribit", 0)
        commit_locally(part)
        apply(part, deribit("change", 2, [(0, 3.0), (1, 0)], [], prev=1), "raw.deribit", 1)
        rows, _ = part.snapshot()
        written[depth] = (len(rows), sum(len(k) + len(v or b"") for k, v in rows))
        part.store.close()
    assert {n for n, _ in written.values()} == {4}  # two level rows, the state row, the progress row
    sizes = [size for _, size in written.values()]
    assert max(sizes) - min(sizes) <= 4, written  # a counter may gain a digit


def test_a_record_applies_only_at_the_next_offset_of_its_partition() -> None:
    progress = SourceProgress({"raw.okx": 10})
    assert progress.position("raw.okx", 9) is Standing.SEEN  # a redelivery
    assert progress.position("raw.okx", 11) is Standing.AHEAD  # a hole: record 10 never arrived
    assert progress.position("raw.okx", 10) is Standing.NEXT
    progress.applied("raw.okx", 10)
    assert progress.position("raw.okx", 10) is Standing.SEEN
    assert progress.position("raw.deribit", 0) is Standing.NEXT  # a topic with no progress yet


def test_the_state_row_has_a_version_and_readable_keys_and_reads_the_old_row(tmp_path: Path) -> None:
    part = new_partition(tmp_path)
    apply(part, deribit("snapshot", 7, [(1, 1.0)], [(6, 2.0)]), "raw.deribit", 0)
    row = orjson.loads(encode_state(part.books[KEY]))
    assert row["v"] == 1
    assert {"state", "reason", "seq", "fresh", "conn", "ts_exchange", "ts_recv", "counters"} <= set(row)
    old = orjson.dumps({"st": "synced", "why": "snapshot", "seq": 7, "fresh": False, "conn": "c", "off": 3,
                        "tx": 1, "tr": 2, "n": {"epoch": 1}})
    assert decode_state(old) == {"state": "synced", "reason": "snapshot", "seq": 7, "fresh": False, "conn": "c",
                                 "ts_exchange": 1, "ts_recv": 2, "counters": {"epoch": 1}}
    with pytest.raises(LayoutError, match="version 99"):
        decode_state(orjson.dumps({"v": 99}))
    part.store.close()


def test_an_unreadable_local_copy_is_discarded_and_starts_empty(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, BOOKS)
    part = new_partition(tmp_path)
    apply(part, deribit("snapshot", 7, [(1, 1.0)], [(6, 2.0)]), "raw.deribit", 0)
    commit_locally(part)
    part.store.close()
    for f in store.path(0).rglob("*"):
        if f.is_file():
            f.write_bytes(b"\xde\xad\xbe\xef" * 64)
    reopened = LocalStore(tmp_path, BOOKS).open(0)
    assert list(reopened.items()) == []
    assert reopened.checkpoint() == Checkpoint()
    reopened.close()


def test_a_reloaded_book_publishes_no_top_for_a_frame_that_leaves_its_top_unchanged(tmp_path: Path) -> None:
    """book.top is published when the top changes; after a restore (restart, takeover, standby
    promotion) the worker must not publish an unchanged top again at a new (epoch, seq): a
    consumer's repeat rule (README "Delivery guarantees") only allows repeating an earlier record."""
    part = new_partition(tmp_path)
    apply(part, deribit("snapshot", 100, [(t, 1.0) for t in range(5)], [(t, 1.0) for t in range(5)]),
          "raw.deribit", 0)
    commit_locally(part)
    part.store.close()  # the books stay in memory: the uninterrupted run goes on with them
    reloaded = PartitionState(0, LocalStore(tmp_path, BOOKS).open(0), buffer_limit=100)
    reloaded.load()
    below_the_top = deribit("change", 101, [(3, 2.0)], [], prev=100)  # the 4th bid level changes
    uninterrupted = part.processor.handle(below_the_top)
    assert uninterrupted.fx.applied
    assert uninterrupted.fx.tops == []
    restored = reloaded.processor.handle(below_the_top)
    assert restored.fx.applied
    assert restored.fx.tops == [], (
        f"the restored book published its unchanged top again at seq 101: {restored.fx.tops} (Instrument.last_top "
        "is memory only, so the first frame after a restore always publishes)")
    reloaded.store.close()


def test_background_writes_land_in_order_even_when_their_callers_are_cancelled(tmp_path: Path) -> None:
    """The periodic local flush runs on a thread; a cancelled commit must not reorder writes."""
    import asyncio

    store = LocalStore(tmp_path, BOOKS).open(0)

    async def run() -> None:
        def rows(i: int) -> list[tuple[bytes, bytes | None]]:
            return [(b"k", b"%d" % i), (b"w%d" % i, b"1")] + [(b"x%d" % j, b"y" * 100) for j in range(5000)]

        tasks = [asyncio.ensure_future(store.write_soon(rows(i), Checkpoint(changelog_next=i))) for i in range(1, 21)]
        await asyncio.sleep(0)
        for task in tasks[::3]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.write_soon([(b"k", b"last")], Checkpoint(changelog_next=99))
        store.write([(b"sync", b"1")], Checkpoint(changelog_next=100))  # waits for any write in flight

    asyncio.run(run())
    assert store.get(b"k") == b"last"
    assert [i for i in range(1, 21) if store.get(b"w%d" % i) is None] == []  # cancelled callers' writes too
    assert store.checkpoint().changelog_next == 100
    store.close()
    reopened = LocalStore(tmp_path, BOOKS).open(0)
    assert reopened.get(b"k") == b"last"
    assert reopened.get(b"sync") == b"1"
    reopened.close()


class CountingDb:
    """A RocksDB handle that records the rows of each write batch and fails the ``fail_at``-th
    write (a process killed between two of them)."""

    def __init__(self, db: Any, fail_at: int = 0) -> None:
        self.db, self.fail_at, self.batches = db, fail_at, []  # type: list[int]

    def write(self, batch: Any) -> None:
        self.batches.append(batch.len())
        if len(self.batches) == self.fail_at:
            raise OSError("killed")
        self.db.write(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def rows_of(store: Any) -> list[tuple[bytes, bytes]]:
    return [(key, value) for key, value in store.items() if key != CHECKPOINT_KEY]


def test_a_large_write_lands_in_batches_with_the_checkpoint_last_and_a_torn_one_is_mended_by_the_restore(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rocksdict holds the GIL for a whole write, so a large one held the event loop: writes go
    in batches of WRITE_BATCH_ROWS, the checkpoint in the last. A kill between two leaves the copy
    at its old checkpoint with some rows after it; the restore writes the changelog again from the
    checkpoint (later wins) and the copy ends where the whole write would have put it."""
    monkeypatch.setattr(store_module, "WRITE_BATCH_ROWS", 4)
    rows: list[tuple[bytes, bytes | None]] = [(b"r%02d" % i, b"%d" % i) for i in range(10)]
    rows += [(b"a", b"1"), (b"gone", None)]
    whole = LocalStore(tmp_path / "whole", BOOKS).open(0)
    whole.db = counting = CountingDb(whole.db)
    whole.write(rows, Checkpoint(changelog_next=17))
    assert counting.batches == [4, 4, 4, 1]  # the checkpoint alone in the last

    torn = LocalStore(tmp_path / "torn", BOOKS).open(0)
    torn.write([(b"a", b"0"), (b"gone", b"1")], Checkpoint(changelog_next=5))
    torn.db = CountingDb(torn.db, fail_at=3)
    with pytest.raises(OSError, match="killed"):
        torn.write(rows, Checkpoint(changelog_next=17))
    assert torn.checkpoint().changelog_next == 5  # the copy still says: read on from 5
    assert torn.get(b"r07") == b"7"  # two batches of rows landed
    assert torn.get(b"r08") is None
    assert torn.get(b"a") == b"0"
    torn.db = torn.db.db
    torn.write(rows, Checkpoint(changelog_next=17))  # the restore: the changelog from 5 on, again
    assert rows_of(torn) == rows_of(whole)
    assert torn.checkpoint().changelog_next == 17
    torn.close()
    whole.db = counting.db
    whole.close()


def test_a_commit_sends_the_outputs_still_owed_before_it_takes_the_position(tmp_path: Path) -> None:
    """The options chains closed by applied records are built off the frame path: a commit builds
    and sends them (``before_commit``) before it takes the progress it commits, so a committed
    position never covers a chain that was not sent."""
    import asyncio
    import dataclasses

    from app.config import Settings
    from app.state.manager import StateManager

    order: list[str] = []

    class Part:
        number = 0
        lock = asyncio.Lock()

        def has_pending(self) -> bool:
            return True

        def snapshot(self) -> None:
            order.append("snapshot")
            raise RuntimeError("the rest of the commit is not this test's")

    settings = dataclasses.replace(Settings(), data_dir=tmp_path)
    manager = StateManager(settings, BOOKS, "changelog", before_commit=lambda: order.append("owed outputs sent"))
    with pytest.raises(RuntimeError, match="not this test's"):
        asyncio.run(manager.commit(Part()))  # type: ignore[arg-type]
    assert order == ["owed outputs sent", "snapshot"]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_partition_catching_up_commits_less_often_under_at_least_once(tmp_path: Path, guarantee: str) -> None:
    """A partition whose newest frame was received more than a second ago (a backlog, a replay)
    commits every STATE_COMMIT_CATCHUP_MS under at_least_once; a live one every
    STATE_COMMIT_INTERVAL_MS; under exactly_once (outputs wait for commits) both do. Checked on
    the spacing of the commits (at 20 and 100 ms: a catching-up partition's never closer than
    90 ms, the loop's half-tick tolerance; a live one's at the ticks), not on how many ticks a
    loaded machine gives the loop."""
    import asyncio
    import dataclasses
    import time

    from app.config import Settings
    from app.state.manager import StateManager

    settings = dataclasses.replace(Settings(), data_dir=tmp_path, processing_guarantee=guarantee,
                                   state_commit_interval_ms=20, state_commit_catchup_ms=100)
    manager = StateManager(settings, BOOKS, "changelog")
    live, behind = PartitionState(0, None, 10), PartitionState(1, None, 10)  # type: ignore[arg-type]
    behind.newest_ts = time.time_ns() - 5 * 10**9
    commits: dict[int, list[float]] = {0: [], 1: []}

    async def commit(part: PartitionState) -> None:  # what the real commit does to the timing
        part.committed_at = time.monotonic()
        commits[part.number].append(part.committed_at)

    manager.commit = commit  # type: ignore[method-assign]

    async def run() -> None:
        manager.active = {0: live, 1: behind}
        for part in (live, behind):
            part.dirty.add("k")  # always something pending
        manager.start()
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            live.newest_ts = time.time_ns()
            await asyncio.sleep(0.005)
        assert manager._commit_task is not None
        manager._commit_task.cancel()

    asyncio.run(run())
    gaps = {n: [b - a for a, b in zip(t, t[1:], strict=False)] for n, t in commits.items()}
    assert len(commits[0]) >= 20, commits
    assert min(gaps[0]) < 0.06, gaps[0]  # live: a commit at (about) every tick
    if guarantee == "at_least_once":
        assert len(commits[1]) >= 4, commits
        assert min(gaps[1]) >= 0.09, gaps[1]  # catching up: never within 100 ms less half a tick
    else:
        assert len(commits[1]) >= 20, commits
        assert min(gaps[1]) < 0.06, gaps[1]


def test_periodic_commits_wait_for_owed_chains_to_be_built_but_not_past_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While closed options chains wait to be built (a turn of the loop each, between the raw
    reader's batches), the periodic commits wait rather than build them all at once; they commit
    at the first tick after the last one is out, and past OWED_WAIT_S a commit goes ahead anyway
    (it builds what is owed itself, as ``test_a_commit_sends_the_owed_outputs_first`` holds)."""
    import asyncio
    import dataclasses
    import time

    from app.config import Settings
    from app.state import manager as manager_mod
    from app.state.manager import StateManager

    monkeypatch.setattr(manager_mod, "OWED_WAIT_S", 0.3)
    owed = {"chains": True}
    settings = dataclasses.replace(Settings(), data_dir=tmp_path, state_commit_interval_ms=20)
    manager = StateManager(settings, BOOKS, "changelog", owed=lambda: owed["chains"])
    part = PartitionState(0, None, 10)  # type: ignore[arg-type]
    commits: list[float] = []

    async def commit(p: PartitionState) -> None:
        p.committed_at = time.monotonic()
        commits.append(p.committed_at)

    manager.commit = commit  # type: ignore[method-assign]

    async def run() -> tuple[float, float]:
        manager.active = {0: part}
        part.dirty.add("k")  # always something pending
        manager.start()
        waited = time.monotonic()
        while time.monotonic() - waited < 0.15:
            part.newest_ts = time.time_ns()
            await asyncio.sleep(0.005)
        assert commits == []  # owed: waiting (0.15 s < the bound)
        owed["chains"] = False  # built
        built = time.monotonic()
        while not commits:
            part.newest_ts = time.time_ns()  # live: commits every tick
            await asyncio.sleep(0.005)
        owed["chains"] = True  # owed again, for good: the bound lets the commits through
        again = time.monotonic()
        while time.monotonic() - again < 0.6:
            part.newest_ts = time.time_ns()
            await asyncio.sleep(0.005)
        assert manager._commit_task is not None
        manager._commit_task.cancel()
        return built, again

    built, again = asyncio.run(run())
    assert built <= commits[0] < built + 0.2, (commits[0] - built)  # at a tick after the chains were out
    later = [t for t in commits if t > again]
    assert later, commits  # past the bound: committing again
    assert min(later) - again >= 0.3 - 0.03, min(later) - again  # not before the bound
    assert len(later) >= 5, later  # and then at every tick


def test_a_commit_notes_when_it_began(tmp_path: Path) -> None:
    import asyncio
    import dataclasses
    import time

    from app.config import Settings
    from app.state.manager import StateManager

    part = PartitionState(0, None, 10)  # type: ignore[arg-type]
    part.dirty.add("k")
    part.snapshot = lambda: (_ for _ in ()).throw(RuntimeError("not this test's"))  # type: ignore[method-assign]
    manager = StateManager(dataclasses.replace(Settings(), data_dir=tmp_path), BOOKS, "changelog")
    before = time.monotonic()
    with pytest.raises(RuntimeError, match="not this test's"):
        asyncio.run(manager.commit(part))
    assert part.committed_at >= before
