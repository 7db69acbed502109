"""The book agent's work, without Faust: raw record in → books, table rows, downstream records.

``app.rawreader`` hands every raw record of the active table partitions to
:meth:`BookRuntime.handle`, however many frames it carries. ``app.faust_glue`` calls the
rebalance methods. Everything here runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from app import book, metrics, venues
from app.config import Settings
from app.history import checkpoint_of
from app.loopwatch import LoopWatch
from app.outputs import DEADLETTER_LINGER_S, OutputSink, Publisher
from app.processor import Outcome
from app.rawreader import RawReader
from app.records import encode, source
from app.registry import RegistryReader
from app.risk.service import RiskService, load_configured_rules
from app.state.manager import PartitionState, Standing, StateManager
from app.sync import SYNCED, Effects, Instrument
from app.venues import VENUES
from app.wire import BadFrame, RawFrame, Topics, decode_record, partition_for
from tables.books import BOOKS

log = logging.getLogger(__name__)

#: seek(topic, partition, offset): reposition the consumer (Faust's consumer.seek, in the glue).
Seek = Callable[[str, int, int], None]


def quiet_fenced_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """A transactional producer fenced at a takeover (its partition's new owner took the
    transactional id) leaves futures inside aiokafka that nobody can read any more (a shielded
    commit, the sender's own); asyncio would log each with a traceback as "Future exception was
    never retrieved". That is the fencing working: one WARNING line, no traceback. Everything else
    goes to the handler that was there."""
    from aiokafka.errors import ProducerFenced

    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, ProducerFenced) and "never retrieved" in str(context.get("message", "")):
            log.warning("a fenced transactional producer's pending result was dropped (%s): expected after a "
                        "takeover", type(exc).__name__)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class BookRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix, VENUES, settings.app_id)
        self.sink = OutputSink(settings, {self.topics.deadletter: DEADLETTER_LINGER_S})
        #: PROCESSING_GUARANTEE=exactly_once: a raw record's outputs go in its table partition's
        #: next changelog transaction, with the rows and progress they come from.
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self.publisher = Publisher(settings, self.topics, self.sink, self.find)
        self.state = StateManager(settings, BOOKS, self.topics.changelog, self.sink.delivered, self.sink.release,
                                  self.publisher.publish_chains, self.publisher.chains_owed)
        self.reader = RawReader(self)
        self.seek: Seek = self.reader.seek
        self._holes: dict[tuple[str, int], tuple[int, float]] = {}  # (topic, partition) → (expected, asked at)
        self._registry: RegistryReader | None = None
        self._registry_task: asyncio.Task[None] | None = None
        self.rules = load_configured_rules(settings)  # RISK_RULES_FILE, checked before anything starts
        self.publisher.risk_depth_keys = {rule.hedge for rule in self.rules}
        self.risk: RiskService | None = None
        #: (raw topic, partition) → receive time (ns) of the last frame applied from it
        self.applied_ts: dict[tuple[str, int], int] = {}
        #: (raw topic, partition) → wall time (ns) that frame was applied at; aged topics only
        self.applied_at: dict[tuple[str, int], int] = {}
        #: venues whose books go stale by the age of the venue's time → (raw topic, ``max_lag_ns``)
        self._aged = {v: (t, lag) for v, t in self.topics.raw_by_venue.items() if (lag := venues.rule(v).max_lag_ns)}
        self._aged_topics = {t for t, _ in self._aged.values()}
        self._checkpointed = time.monotonic()  # the first book.checkpoints one interval after the start
        self.loop_watch = LoopWatch(settings.loop_stall_trace_ms)  # bookstream_loop_lag_seconds, LOOP_STALL_TRACE_MS

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        quiet_fenced_leftovers(asyncio.get_running_loop())
        log.info("book core: %s (BOOK_CORE=%s)", book.core.NAME, self.settings.book_core)
        metrics.watch_gc()
        metrics.tune_gc(self.settings.gc_gen0_threshold)
        self.loop_watch.start()
        await self.sink.start()
        self.state.start()
        self._registry = RegistryReader(self.settings, self.topics.instruments, self.publisher.registry)
        await self._registry.start()
        read = await self._registry.catch_up()
        log.info("instrument registry: %d versions read from %s", read, self.topics.instruments)
        self._registry_task = asyncio.create_task(self._registry.follow(), name="registry-follow")
        self.reader.start()  # reads once the first assignment is restored (app.faust_glue)
        if self.settings.risk.enabled:
            self.risk = RiskService(self.settings, self.topics, self.rules,
                                    lambda t, p, k, v: self.sink.add(t, p, k.encode(), v), self.owns, self.ready,
                                    self.caught_up, self.raw_applying, self.sink.room,
                                    self.sink.undelivered, self.sink.acknowledged_to)
            await self.risk.start()

    async def stop(self) -> None:
        self.loop_watch.stop()
        await self.reader.stop()
        if self.risk is not None:
            await self.risk.stop()
        if self._registry_task is not None:
            self._registry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._registry_task
        if self._registry is not None:
            await self._registry.stop()
        await self.state.close()
        await self.sink.stop()

    # -- books -------------------------------------------------------------------------
    def partition_of(self, key: str) -> int:
        return partition_for(key, self.settings.partitions)

    def find(self, key: str) -> Instrument | None:
        """The live book of ``key`` if this worker owns it."""
        return self.state.book(key, self.partition_of(key))

    def books(self) -> Iterator[Instrument]:
        return self.state.books()

    def owns(self, key: str) -> bool:
        return self.partition_of(key) in self.state.active

    def ready(self) -> bool:
        return self.state.is_activated()

    def caught_up(self, slack: int = 2) -> bool:
        """Every assigned raw partition's high watermark is known and applied to within ``slack``
        records (the risk engine starts after a crash only then: see app.risk.service)."""
        lag = self.consumer_lag()
        return self.reader.positioned() and all(tp in lag and lag[tp] <= slack for tp in self.reader.assignment())

    def raw_applying(self) -> dict[tuple[str, int], float]:
        """The assigned raw partitions with frames still to apply (behind their known end), each
        with the receive time (ns) of the newest frame applied from it: the frames still to apply
        were received no earlier (a raw partition is written in receive order); -inf when nothing
        was applied from it yet (its next frames may be of any age). No slack: one record behind
        is frames to come, which may be the first records of an output partition (a replay). The
        risk engine's watermark holds there (app.risk.watermark)."""
        applied = self.applied_ts
        return {tp: applied.get(tp, float("-inf")) for tp, behind in self.consumer_lag().items() if behind}

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Raw records behind the end of each assigned partition: its high watermark minus the
        next offset its table partition will apply (``/metrics`` bookstream_consumer_lag)."""
        tps = self.reader.assignment()
        nexts = self.positions(tps)
        out: dict[tuple[str, int], int] = {}
        for topic, partition in tps:
            high = self.reader.highwater(topic, partition)
            if high is not None:
                out[(topic, partition)] = max(0, high - (nexts.get((topic, partition)) or 0))
        return out

    def local_copy(self, key: str) -> tuple[Instrument | None, str]:
        return self.state.local_copy(key, self.partition_of(key))

    # -- the hot path ------------------------------------------------------------------
    def handle(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
               headers: object) -> None:
        """One raw record: every frame applied exactly once, in order, or the record ignored."""
        part = self.state.active.get(partition)
        if part is None:
            metrics.count("records_not_ready")  # not restored yet: sought back to after activation
            return
        progress = part.progress
        position = progress.position(topic, offset)
        if position is Standing.SEEN:
            metrics.count("redelivered")
            return
        if position is Standing.AHEAD:
            self._hole(topic, partition, progress.next[topic], offset)
            return
        self._holes.pop((topic, partition), None)
        items = decode_record(key, value, headers)
        metrics.count(f"frames.{topic.rpartition('raw.')[2]}", len(items))
        metrics.count("raw_records")
        with self._in_txn(part):
            self._apply(part, topic, partition, offset, items)
        progress.applied(topic, offset)
        for item in reversed(items):  # the newest frame's receive time (a dead letter has none)
            if isinstance(item, RawFrame):
                self.applied_ts[(topic, partition)] = item.ts
                if item.ts > part.newest_ts:
                    part.newest_ts = item.ts
                if topic in self._aged_topics:
                    self.applied_at[(topic, partition)] = time.time_ns()
                break

    @contextlib.contextmanager
    def _in_txn(self, part: PartitionState) -> Iterator[None]:
        """What is published meanwhile belongs to partition ``part``'s transaction (exactly_once)."""
        if self.exactly_once:
            self.publisher.txn = part
        try:
            yield
        finally:
            self.publisher.txn = None

    def _apply(self, part: PartitionState, topic: str, partition: int, offset: int, items: list[Any]) -> None:
        publisher = self.publisher
        processor = part.processor
        for index, item in enumerate(items):
            if isinstance(item, BadFrame):
                publisher.dead(topic, partition, offset, None, index, item.key, item.reason, item.detail, item.data)
                continue
            try:
                out = processor.handle(item)
                if out.dead is not None:
                    publisher.dead(topic, partition, offset, item, index, item.key, *out.dead, item.data)
                # the registry first: a message can hold specs and tickers (dYdX's v4_markets list)
                if out.specs or out.states:
                    publisher.instruments(out.specs, out.states, item.ts, source(topic, partition, offset, index))
                if out.trades or out.tickers or out.trade_gaps or out.feed_events:
                    publisher.market(partition, out, item.ts, source(topic, partition, offset, index))
                inst = out.inst
                if inst is not None:
                    part.record(item.key, out.fx)  # counters move even when the book does not
                    if out.fx.changed():
                        publisher.outcome(partition, out, inst, item.ts)
            except Exception as exc:  # one bad frame must not stop every book on this worker
                log.exception("internal error on %s %s:%s@%s#%d", item.key, topic, partition, offset, index)
                metrics.count("internal_errors")
                publisher.dead(topic, partition, offset, item, index, item.key, "internal-error",
                               f"{type(exc).__name__}: {exc}", item.data)
                self._stale_after_error(part, item.key, exc)

    def _stale_after_error(self, part: PartitionState, key: str, exc: Exception) -> None:
        inst = part.books.get(key)
        if inst is None or inst.status != SYNCED:
            return
        fx = Effects()
        inst.connection_event("internal error", type(exc).__name__, fx)
        try:
            part.record(key, fx)
            self.publisher.outcome(part.number, Outcome(key, inst, fx), inst, 0)
        except Exception:
            log.exception("could not mark %s stale after an internal error", key)

    def _hole(self, topic: str, partition: int, expected: int, offset: int) -> None:
        """A record past the next one: records before it were never applied (deleted by
        retention before this worker read them, or a consumer's position reset). Never apply it;
        read the partition again from the next record (at most once a second while the hole stays)."""
        metrics.count("records_ahead")
        now = time.monotonic()
        asked = self._holes.get((topic, partition))
        if asked is not None and asked[0] == expected and now - asked[1] < 1.0:
            return
        self._holes[(topic, partition)] = (expected, now)
        log.warning("%s:%d: record %d arrived before %d..%d: reading the partition again from %d", topic, partition,
                    offset, expected, offset - 1, expected)
        self.seek(topic, partition, expected)

    # -- timers ------------------------------------------------------------------------
    def tick(self) -> None:
        self.publisher.tick()
        interval = self.settings.book_checkpoint_interval_s
        if interval and time.monotonic() - self._checkpointed >= interval:
            self._checkpointed = time.monotonic()
            self.checkpoint()

    def checkpoint(self) -> int:
        """Every active book's whole state to ``book.checkpoints``, with the raw position it covers
        (``book-at`` starts there). Between raw records: the books and their progress agree."""
        written = 0
        for number, part in self.state.active.items():
            for key, inst in part.books.items():
                raw = self.topics.raw_by_venue.get(key.partition(":")[0])
                next_offset = part.progress.next.get(raw) if raw is not None else None
                if raw is None or next_offset is None:
                    continue
                cp = checkpoint_of(inst, raw.removeprefix(self.settings.topic_prefix), number, next_offset)
                self.sink.add(self.topics.checkpoints, number, key.encode(), encode(cp))
                written += 1
        metrics.count("book_checkpoints", written)
        return written

    def age_books(self, wall_ns: int | None = None) -> int:
        """Books that no frame has kept current for longer than their rule's ``max_lag_ns`` go stale
        (``Processor.age``), published as any other transition; asked every second. Their age is
        judged by each raw partition's own clock (:func:`event_now`): the wall clock while its
        frames arrive as they are received, their receive time while it applies older ones (a
        replay, a backlog). Returns how many went stale."""
        wall = time.time_ns() if wall_ns is None else wall_ns
        aged = 0
        for number, part in list(self.state.active.items()):
            for venue, (topic, lag) in self._aged.items():
                now = event_now(self.applied_ts.get((topic, number)), self.applied_at.get((topic, number)), wall, lag)
                if now is None:
                    continue
                for out in part.processor.age(now, venue):
                    assert out.inst is not None
                    with self._in_txn(part):
                        part.record(out.key, out.fx)
                        self.publisher.outcome(number, out, out.inst, now)
                    aged += 1
        return aged

    def retry_resyncs(self) -> None:
        for key in self.publisher.retry.due():
            inst = self.find(key)
            if inst is None or inst.status == SYNCED:
                self.publisher.retry.done(key)
            else:
                self.publisher.request_resync(self.partition_of(key), key, inst,
                                              f"retry: still {inst.status} ({inst.reason})")

    # -- rebalance (called by the glue) ------------------------------------------------
    async def on_revoked(self) -> None:
        self.reader.revoke()  # nothing more applied to the partitions being let go
        metrics.unsettle_gc()  # the books let go become collectable again
        keys = {k for p in self.state.active.values() for k in p.books}
        await self.state.on_revoked()
        self.publisher.depth.forget(keys)
        self.publisher.chains.forget(self.owns)
        self.publisher.recent.forget(self.owns)
        self._holes.clear()

    def on_assigned(self, actives: Iterable[int], standbys: Iterable[int]) -> None:
        self.state.on_assigned(set(actives), set(standbys))

    def on_activated(self) -> None:
        """The assigned table partitions are restored and loaded: read their raw partitions."""
        metrics.settle_gc()  # the loaded books out of the collector's walks (app.metrics)
        self.reader.resume(set(self.state.active))

    def positions(self, topic_partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Where to read each raw partition from: the offset its table partition covers up to
        (None: nothing applied yet — from the beginning of the log). Partitions not active here
        (not restored yet) are left out."""
        out: dict[tuple[str, int], int | None] = {}
        for topic, partition in topic_partitions:
            part = self.state.active.get(partition)
            if part is not None:
                out[(topic, partition)] = part.progress.next.get(topic)
        return out

    def start_at(self, topic: str, partition: int, offset: int, force: bool = False) -> None:
        """A raw partition with no progress yet is read from ``offset`` (its log start); with
        ``force``, records before ``offset`` are gone (retention) and are given up."""
        part = self.state.active.get(partition)
        if part is not None and (force or topic not in part.progress.next):
            part.progress.next[topic] = offset

    # -- market data for the web view --------------------------------------------------
    def trades(self, key: str) -> list[bytes]:
        """The latest trades of ``key`` published by this worker (oldest first)."""
        return list(self.publisher.recent.trades.get(key, ()))

    def ticker(self, key: str) -> dict[str, object] | None:
        quote = self.publisher.recent.merged(key)
        if quote is None:
            return None
        return {**quote.fields, "ts_exchange": quote.ts_exchange, "ts_recv": quote.ts_recv}

    def chains(self, venue: str, underlying: str) -> list[bytes]:
        """The latest options.chain record of every expiry of ``underlying`` on this worker."""
        built = self.publisher.chains.chains
        return [body for key, body in sorted(self.publisher.recent.chains.items())
                if (chain := built.get(key)) is not None and (chain.venue, chain.underlying) == (venue, underlying)]

    def underlyings(self) -> list[tuple[str, str]]:
        """(venue, underlying) of every chain published on this worker."""
        built = self.publisher.chains.chains
        return sorted({(c.venue, c.underlying) for key in self.publisher.recent.chains if (c := built.get(key))})


def event_now(received_ns: int | None, applied_ns: int | None, wall_ns: int, live_within_ns: int) -> int | None:
    """A raw partition's clock for judging the age of the venue's time with no frame to say so:
    the wall clock while its newest frame was applied within ``live_within_ns`` of its receipt
    (live: silence counts), else that frame's receive time (a replay or a backlog: the frames'
    own time, so a capture of last year is not stale for being old, nor a finished replay
    stale for being over). None before this process applied a frame of it (nothing to judge by)."""
    if received_ns is None or applied_ns is None:
        return None
    return wall_ns if applied_ns - received_ns <= live_within_ns else received_ns
