"""Table partitions on this worker: restore, activate, commit, revoke, standby.

Lifecycle of one table partition ``p`` (the books of every instrument hashing to ``p`` and
the progress of every raw topic's partition ``p``):

1. **Assigned** (first start, restart, rebalance, takeover, standby promotion): the worker
   takes ``p``'s transactional id (fencing the previous owner), reads the changelog from its
   local copy's checkpoint to the end of the log (only the tail after a restart with the same
   ``DATA_DIR``; everything after a wipe), loads the books into memory unless the copy it
   already holds is current, and reads the progress rows. Only then does Faust resume the raw
   partitions, each sought to the offset its progress row names (``app.faust_glue``).
2. **Active**: the book agent applies each raw record whose offset is exactly the next one
   (:meth:`PartitionState.position`); a redelivered one is recognised and ignored, one past a
   hole is never applied. Effects accumulate in memory; every ``STATE_COMMIT_INTERVAL_MS`` they
   are committed (:meth:`StateManager.commit`): one changelog transaction, then one local write
   batch, both carrying the progress rows of the records they cover.
3. **Revoked**: pending effects are committed, the transactional producer is closed and the
   books are kept in memory in case the partition comes back to this worker.

Standby partitions (Faust's assignor gives them with ``TABLE_STANDBY_REPLICAS`` ≥ 1) are
kept current by :class:`~app.state.changelog.StandbyReplicator`; promoting one reads the tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum

from app import book, metrics
from app.book import ASK, BID
from app.config import Settings
from app.outputs import RECORD_OVERHEAD
from app.processor import Processor, new_instrument, parse_buffered
from app.retry import Backoff, backoff
from app.state import changelog
from app.state.changelog import ChangelogWriter, CommitFailed, Fenced, StandbyReplicator
from app.state.layout import (
    Checkpoint,
    buffer_key,
    encode_progress,
    encode_state,
    ids_prefix,
    instrument_rows,
    level_prefix,
    load_instrument,
    progress_key,
    state_key,
)
from app.state.store import LocalStore, PartitionStore, TableSpec
from app.sync import Effects, Instrument

log = logging.getLogger(__name__)

#: Committed rows reach the local copy at most this often (coalesced: a level changed in ten
#: commits is written once). A restart reads the changelog tail since the local checkpoint.
LOCAL_FLUSH_S = 1.0
#: A partition whose newest applied frame was received longer ago than this is catching up (a
#: backlog, a replay): under at_least_once it commits every STATE_COMMIT_CATCHUP_MS, not every
#: STATE_COMMIT_INTERVAL_MS — each level changed between two commits is one row, and a deep book
#: caught up at full speed wrote ~27 rows a frame at 100 ms, ~13 at 500 ms. A live partition keeps
#: the short interval: a commit's rows are taken in one go, and larger commits made the tail of
#: live latency longer.
CATCHUP_LAG_NS = 1_000_000_000
#: How long the periodic commits wait for closed options chains to be built a turn at a time
#: (``StateManager._postponed``) before a commit builds the rest itself.
OWED_WAIT_S = 1.0


class Standing(StrEnum):
    """Where a raw record stands against what the table partition covers."""

    NEXT = "next"  # exactly the next record: apply it
    SEEN = "seen"  # already applied (a redelivery): ignore it
    AHEAD = "ahead"  # records before it were never applied: do not apply, read them first


class SourceProgress:
    """Per raw topic of one table partition: the next source offset to apply. A record is
    applied only when its offset is exactly that one, so none is applied twice or skipped."""

    __slots__ = ("next",)

    def __init__(self, committed: dict[str, int] | None = None) -> None:
        self.next: dict[str, int] = dict(committed or {})  # raw topic → next offset to apply

    def position(self, topic: str, offset: int) -> Standing:
        expected = self.next.get(topic)
        if expected is None or offset == expected:
            return Standing.NEXT
        return Standing.SEEN if offset < expected else Standing.AHEAD

    def applied(self, topic: str, offset: int) -> None:
        """The record at ``offset`` is applied (its effects recorded): the next one is due."""
        self.next[topic] = offset + 1


class PartitionState:
    """One active table partition: its books in memory and the rows not committed yet."""

    def __init__(self, number: int, store: PartitionStore, buffer_limit: int) -> None:
        self.number = number
        self.store = store
        self.buffer_limit = buffer_limit
        self.books: dict[str, Instrument] = {}
        self.processor = Processor(self.books, buffer_limit)
        self.levels: dict[str, dict[str, str | None]] = {}  # levels' id rows (``ids_prefix``) → price → id
        # since the last commit, as text (dYdX only). The levels themselves: tracked by the books' sides
        self.pending: dict[bytes, bytes | None] = {}  # other rows since the last commit (buffer, failed commits)
        self.dirty: set[str] = set()  # instruments whose state row must be committed
        self._prefixes: dict[str, tuple[bytes, bytes]] = {}  # instrument → its bid and ask level row key prefixes
        self.unflushed: dict[bytes, bytes | None] = {}  # committed rows not in the local copy yet
        self.unflushed_end = 0  # the changelog position after the last commit
        self.flushed_at = time.monotonic()
        self.outputs: list[tuple[str, int, bytes, bytes]] = []  # exactly_once: records for the next commit
        self.outputs_bytes = 0
        self.progress = SourceProgress()  # in memory
        self.committed: dict[str, int] = {}  # raw topic → next offset, as committed
        self.current = False  # memory equals the local copy plus pending (False: reload)
        self.writer: ChangelogWriter | None = None
        self.lock = asyncio.Lock()  # one commit at a time
        self.commits = 0
        self.failures = 0  # commits failed in a row
        self.retry_at = 0.0  # monotonic: no commit attempt before (backoff after failures)
        self.committed_at = 0.0  # monotonic: when the last commit began
        self.newest_ts = 0  # receive time (ns) of the newest frame applied (catching up: CATCHUP_LAG_NS)

    # -- the agent's side --------------------------------------------------------------
    def record(self, key: str, fx: Effects) -> None:
        """Remember which instrument a frame touched: its changed levels (tracked by its book's
        sides) and its state row (sync state, counters) are written at commit time, once per
        commit."""
        self.dirty.add(key)
        if fx.ids:  # which update set each level (rules that uncross by age: dYdX only)
            for side, price, seq in fx.ids:
                prefix = ids_prefix(key, side)
                rows = self.levels.get(prefix)
                if rows is None:
                    rows = self.levels[prefix] = {}
                rows[price] = None if seq is None else str(seq)
        if fx.buffer_put or fx.buffer_del:
            ik = key.encode()
            for seq, frame in fx.buffer_put:
                self.pending[buffer_key(ik, seq)] = frame
            for seq in fx.buffer_del:
                self.pending[buffer_key(ik, seq)] = None

    def catching_up(self, now_ns: int) -> bool:
        """Is the newest frame applied here older than :data:`CATCHUP_LAG_NS` (by its receive time)?"""
        return now_ns - self.newest_ts > CATCHUP_LAG_NS

    def has_pending(self) -> bool:
        return bool(self.levels or self.pending or self.dirty or self.outputs or self.progress.next != self.committed)

    def output(self, topic: str, partition: int, key: bytes, value: bytes) -> int:
        """``exactly_once``: a downstream record of this partition's raw records, written in its
        next commit's transaction. Returns the bytes it holds (flow control counts them)."""
        self.outputs.append((topic, partition, key, value))
        size = len(key) + len(value) + RECORD_OVERHEAD  # as the output sink counts a record
        self.outputs_bytes += size
        return size

    # -- commits -----------------------------------------------------------------------
    def take_outputs(self) -> tuple[list[tuple[str, int, bytes, bytes]], int]:
        outputs, size = self.outputs, self.outputs_bytes
        self.outputs, self.outputs_bytes = [], 0
        return outputs, size

    def untake_outputs(self, outputs: list[tuple[str, int, bytes, bytes]], size: int) -> None:
        """A commit failed: its outputs go first in the next one (their order holds)."""
        self.outputs[:0] = outputs
        self.outputs_bytes += size

    def snapshot(self) -> tuple[list[tuple[bytes, bytes | None]], dict[str, int]]:
        """Take the rows to commit now (level rows, then state rows, then progress rows)."""
        # Rows held back by a failed commit first: a level changed since (taken from its book's
        # side) must come after its older value (the last row of a key wins, in the changelog and
        # locally).
        rows: list[tuple[bytes, bytes | None]] = list(self.pending.items())
        for key in self.dirty:
            inst = self.books.get(key)
            if inst is not None:
                prefixes = self._prefixes.get(key)
                if prefixes is None:
                    prefixes = self._prefixes[key] = (level_prefix(key, BID).encode(), level_prefix(key, ASK).encode())
                inst.book.bids.take_rows(prefixes[0], rows)
                inst.book.asks.take_rows(prefixes[1], rows)
        encode_rows = book.core.encode_rows
        for prefix, changed in self.levels.items():
            encode_rows(prefix.encode(), changed, rows)
        self.levels, self.pending = {}, {}
        rows.extend((state_key(k.encode()), encode_state(self.books[k])) for k in self.dirty if k in self.books)
        self.dirty.clear()
        progress = dict(self.progress.next)
        rows.extend((progress_key(t), encode_progress(o)) for t, o in progress.items() if self.committed.get(t) != o)
        return rows, progress

    def unsnapshot(self, rows: list[tuple[bytes, bytes | None]]) -> None:
        """A commit failed: its rows go back under whatever changed since (newer wins)."""
        merged = dict(rows)
        merged.update(self.pending)
        self.pending = merged

    async def flush(self) -> None:
        """Write the committed rows the local copy lacks, in one write batch with its checkpoint
        (on the store's background thread: the books go on meanwhile)."""
        self.flushed_at = time.monotonic()
        if self.unflushed:
            rows, self.unflushed = self.unflushed, {}
            await self.store.write_soon(rows.items(), Checkpoint(changelog_next=self.unflushed_end))

    def load(self) -> None:
        """Books and progress from the local copy (after a restore)."""
        self.books = self.processor.instruments = {}
        for key, rows in instrument_rows(self.store.items()):
            inst = new_instrument(key, self.buffer_limit)
            load_instrument(inst, rows, lambda frame, k=key: parse_buffered(k, frame))
            self.books[key] = inst
        self.committed = self.store.progress()
        self.progress = SourceProgress(self.committed)
        self.levels, self.pending, self.dirty, self.unflushed = {}, {}, set(), {}
        self.current = True


class StateManager:
    """Every table partition this worker holds, and the commit loop."""

    def __init__(self, settings: Settings, table: TableSpec, changelog_topic: str,
                 outputs_delivered: Callable[[], Awaitable[None]] | None = None,
                 released: Callable[[int], None] | None = None,
                 before_commit: Callable[[], object] | None = None, owed: Callable[[], bool] | None = None) -> None:
        """``outputs_delivered``: waits until every downstream record published so far is
        acknowledged; each commit waits for it before it writes the progress (commit after
        delivery). ``released(n)``: ``n`` bytes of transactional outputs left memory (committed,
        or dropped with a partition another worker fenced us out of). ``before_commit()``: sends
        the outputs still owed for the records applied so far (the options chains they closed,
        built off the frame path), before a commit takes their position. ``owed()``: whether
        such outputs wait to be built; the periodic commits wait for them (up to ``OWED_WAIT_S``)
        rather than build them all at once."""
        self.settings = settings
        self.outputs_delivered = outputs_delivered
        self.before_commit = before_commit
        self.owed = owed
        self._owed_since: float | None = None
        self.released = released
        self.topic = changelog_topic
        self.local = LocalStore(settings.data_dir, table)
        self.active: dict[int, PartitionState] = {}
        self.suspended: dict[int, PartitionState] = {}  # revoked: kept in case they come back
        self.standby_partitions: set[int] = set()
        self.standby = StandbyReplicator(settings, changelog_topic, settings.changelog.delete_retention_ms)
        self._activation: asyncio.Task[None] | None = None
        self._activated = asyncio.Event()
        self._commit_task: asyncio.Task[None] | None = None
        self.restored_records = 0
        self.last_activation_s = 0.0

    # -- rebalance ---------------------------------------------------------------------
    async def on_revoked(self) -> None:
        """Every partition is revoked (eager rebalance): commit what is pending, let go of the
        transactional ids, keep the books in memory in case they come back."""
        self._activated.clear()
        if self._activation is not None:
            self._activation.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._activation
            self._activation = None
        parts, self.active = self.active, {}
        await asyncio.gather(*(self._release(part) for part in parts.values()))
        self.suspended.update(parts)

    async def _release(self, part: PartitionState) -> None:
        try:
            await asyncio.wait_for(self.commit(part), timeout=self.settings.session_timeout_s / 2)
        except (TimeoutError, CommitFailed, Fenced) as exc:
            log.warning("partition %d: final commit before the rebalance failed (%s); the next owner resumes "
                        "from the last commit", part.number, exc)
        await part.flush()
        if part.has_pending():
            part.current = False  # memory is ahead of what is committed: reload if it comes back
        if part.writer is not None:
            await part.writer.close()
            part.writer = None

    def on_assigned(self, actives: set[int], standbys: set[int]) -> None:
        """A new assignment: activate ``actives`` in the background (Faust's recovery waits for
        :meth:`activated` before it resumes the raw partitions); keep ``standbys`` current."""
        if self._activation is not None:
            self._activation.cancel()
        self._activated.clear()
        self._activation = asyncio.get_running_loop().create_task(self._activate(set(actives), set(standbys)),
                                                                  name="state-activation")

    async def activated(self) -> None:
        """Until the current assignment's partitions are restored and loaded."""
        while not self._activated.is_set():
            task = self._activation
            if task is None:
                await self._activated.wait()
                continue
            await asyncio.wait({task, asyncio.ensure_future(self._activated.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _activate(self, actives: set[int], standbys: set[int]) -> None:
        began = time.monotonic()
        for p in list(self.suspended):
            if p not in actives:
                self._release_outputs(self.suspended.pop(p).take_outputs()[1])
                if p not in standbys:
                    self.local.close(p)
        self.standby_partitions = standbys - actives
        self.standby.set_partitions(self.local.open(p) for p in sorted(self.standby_partitions))
        parts: dict[int, PartitionState] = {}
        limit = self.settings.buffer_max_frames
        for p in sorted(actives):
            kept = self.suspended.pop(p, None)
            parts[p] = kept if kept is not None else PartitionState(p, self.local.open(p), limit)
        retry = Backoff(cap=10.0)
        while True:
            try:
                await asyncio.gather(*(self._fence(part) for part in parts.values()))
                applied = await changelog.restore(self.settings, self.topic, [pt.store for pt in parts.values()],
                                                  self.settings.changelog.delete_retention_ms)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker unreachable, leader moving: try again
                log.warning("restoring partitions %s failed (%s: %s); retrying", sorted(parts),
                            type(exc).__name__, exc)
                await retry.sleep()
        for part in parts.values():
            if applied.get(part.number) or not part.current:
                self._release_outputs(part.take_outputs()[1])  # their records are applied again
                part.load()
            self.restored_records += applied.get(part.number, 0)
        self.active = parts
        self.last_activation_s = time.monotonic() - began
        log.info("partitions %s active (%d books, %.1fs)%s", sorted(parts), sum(len(p.books) for p in parts.values()),
                 self.last_activation_s, f"; standby copies of {sorted(self.standby_partitions)}"
                 if self.standby_partitions else "")
        self._activated.set()

    async def _fence(self, part: PartitionState) -> None:
        if part.writer is None:
            part.writer = ChangelogWriter(self.settings, self.topic, part.number)
        await part.writer.start()

    # -- commits -----------------------------------------------------------------------
    def start(self) -> None:
        if self._commit_task is None:
            self._commit_task = asyncio.get_running_loop().create_task(self._commit_loop(), name="state-commits")

    async def _commit_loop(self) -> None:
        interval = self.settings.state_commit_interval_ms / 1000
        # at_least_once: a partition catching up commits less often (CATCHUP_LAG_NS); exactly_once
        # publishes at its commits, whose interval is its outputs' latency
        catchup = interval
        if self.settings.processing_guarantee == "at_least_once":
            catchup = max(interval, self.settings.state_commit_catchup_ms / 1000)
        while True:
            await asyncio.sleep(interval)
            now, wall = time.monotonic(), time.time_ns()
            if self._postponed(now):
                continue
            parts = [p for p in self.active.values()
                     if p.has_pending() and not p.lock.locked() and now >= p.retry_at
                     and (now - p.committed_at >= catchup - interval / 2 or not p.catching_up(wall))]
            results = await asyncio.gather(*(self.commit(p) for p in parts), return_exceptions=True)
            for part, result in zip(parts, results, strict=True):
                if result is None:
                    if part.failures:
                        log.info("partition %d commits again after %d failures", part.number, part.failures)
                    part.failures = 0
                    continue
                part.failures += 1
                part.retry_at = time.monotonic() + backoff(part.failures, base=0.25, cap=10.0)
                if isinstance(result, Fenced):
                    log.warning("partition %d was taken over by another worker (%s); dropping it until the "
                                "rebalance", part.number, result)
                    if self.active.get(part.number) is part:
                        del self.active[part.number]
                elif isinstance(result, CommitFailed):
                    if part.failures in (1, 2, 4) or part.failures % 20 == 0:
                        log.warning("commit of partition %d failed %d times in a row (%s); its rows stay pending "
                                    "and the books keep going", part.number, part.failures, result)
                else:
                    log.error("commit of partition %d failed", part.number, exc_info=result)

    def _postponed(self, now: float) -> bool:
        """Whether this round of periodic commits waits: options chains closed by the records
        applied are still being built, one a turn of the loop between the raw reader's batches.
        A commit builds whatever is owed first (``before_commit``), all at once: 12 chains of a
        1,500-option universe close together each second, ~2–5 ms each, one turn of the loop of
        up to ~60 ms with every frame behind it. Bounded: past ``OWED_WAIT_S`` the commit builds
        them itself, as a revoke or a stop always does."""
        if self.owed is None or not self.owed():
            self._owed_since = None
            return False
        if self._owed_since is None:
            self._owed_since = now
        return now - self._owed_since < OWED_WAIT_S

    async def commit(self, part: PartitionState) -> None:
        """Commit what ``part`` has pending: a changelog transaction, then the local batch."""
        async with part.lock:
            if not part.has_pending():
                return
            part.committed_at = time.monotonic()
            if self.before_commit is not None:
                self.before_commit()
            rows, progress = part.snapshot()
            outputs, size = part.take_outputs()  # exactly_once: those of the records ``progress`` covers
            if self.outputs_delivered is not None:
                # Flush, then commit: the progress below covers records whose outputs Kafka holds.
                try:
                    await self.outputs_delivered()
                except BaseException:  # cancelled (a rebalance's deadline): the rows stay pending
                    part.unsnapshot(rows)
                    part.untake_outputs(outputs, size)
                    raise
            if part.writer is None:
                part.writer = ChangelogWriter(self.settings, self.topic, part.number)
            try:
                end = await part.writer.commit(rows, outputs)
            except Fenced:
                part.unsnapshot(rows)
                self._release_outputs(size)  # the new owner publishes them again from the last commit
                raise
            except BaseException:
                part.unsnapshot(rows)
                part.untake_outputs(outputs, size)
                raise
            self._release_outputs(size)
            part.committed = progress
            part.commits += 1
            metrics.count("state_commits")
            part.unflushed.update(rows)
            part.unflushed_end = end
            if time.monotonic() - part.flushed_at >= LOCAL_FLUSH_S:
                await part.flush()

    def _release_outputs(self, size: int) -> None:
        if size and self.released is not None:
            self.released(size)

    async def close(self) -> None:
        """Graceful stop: commit everything, release every transactional id."""
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
        await self.on_revoked()
        await self.standby.stop()
        self.local.close_all()

    # -- reading (web view, seeks) -----------------------------------------------------
    def books(self) -> Iterator[Instrument]:
        for part in list(self.active.values()):
            yield from list(part.books.values())

    def book(self, key: str, partition: int) -> Instrument | None:
        part = self.active.get(partition)
        return part.books.get(key) if part is not None else None

    def local_copy(self, key: str, partition: int) -> tuple[Instrument | None, str]:
        """This worker's copy of an instrument it does not serve live: (book, source), source
        ``standby`` (a standby copy) or ``recovering`` (being restored here)."""
        store = self.local.open_stores.get(partition)
        if store is None:
            return None, ""
        prefix = key.encode() + b"\x00"
        inst = new_instrument(key, self.settings.buffer_max_frames)
        rows = [(k[len(prefix):], v) for k, v in store.items(prefix)]
        if not load_instrument(inst, rows, lambda frame: parse_buffered(key, frame)):
            return None, ""
        return inst, "standby" if partition in self.standby_partitions else "recovering"

    def is_activated(self) -> bool:
        return self._activated.is_set()

    def uncommitted(self) -> int:
        """Active partitions holding effects not committed yet."""
        return sum(1 for part in self.active.values() if part.has_pending())

