"""Downstream records to Kafka: built from each frame's effects, sent in producer batches.

:class:`Publisher` turns what the processor did to a book into ``book.top``, ``book.status``,
``book.depth``, ``control.resync`` and ``raw.deadletter`` records (builders in ``app.wire``).
:class:`OutputSink` sends them: one record per top-of-book change, as downstream consumers
expect, but gathered per topic partition ("lane") and sent as one producer batch rather than
one by one (a Faust ``send_soon`` costs tens of microseconds per record). Batching is natural:
a lane with nothing in flight that sent nothing in the last ``PRODUCER_LINGER_MS`` sends at
once; otherwise records gather until both hold.

Nothing is dropped (README "Delivery guarantees"):

* **Flow control.** Past ``OUTPUT_BUFFER_MB`` of records waiting for Kafka, whoever adds them
  waits (:meth:`OutputSink.room`): the book agent stops taking raw records, its stream buffer
  fills and Faust stops fetching the raw partitions until half of the budget is delivered.
  A slow or absent broker makes the worker late, never lossy.
* **Commit after delivery.** A table partition's commit first waits until every output added
  before it is acknowledged (:meth:`OutputSink.delivered`), so the progress it commits covers
  only raw records whose outputs the broker holds; after a crash the rest is published again.
* **Retries in order.** The producer is idempotent with ``acks=all``: aiokafka retries a batch
  until it is delivered. A lane has one batch in flight; a failed one is sent again first. An
  error that leaves aiokafka's idempotent producer unusable (``OutOfOrderSequenceNumber``,
  ``UnknownProducerId``, fenced epoch: aiokafka has no KIP-360 epoch bump, aio-libs/aiokafka#1017)
  replaces the producer, and every batch it had not delivered is sent again with the new one.
  Only a record no retry can deliver (too large, not authorised) is given up, counted in
  ``outputs_failed`` and logged as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from aiokafka import errors as Errors
from aiokafka.errors import KafkaError

from app import metrics
from app.config import Settings
from app.kafka import producer as make_producer
from app.kafka import producer_dead
from app.market.chain import ChainBuilder, Quote
from app.market.instruments import Registry, Spec
from app.market.records import Ticker, gap_record, subscription_record, ticker_record, trade_record
from app.processor import Outcome
from app.publishing import DepthPublisher, LogLimiter, ResyncRetry, TopConflater
from app.retry import Backoff
from app.sync import STALE, SYNCED, Instrument

if TYPE_CHECKING:
    from app.state.manager import PartitionState
from app.records import BookDepth, BookStatus, BookTop, DeadLetter, ResyncRequest, RiskDepth, Source, encode
from app.venues import split_key
from app.wire import RawFrame, Topics, partition_for

log = logging.getLogger(__name__)

# Longest a timer tick spends on waiting book.depth records (an aggregate of a deep book costs
# ~1 ms); the rest go at the next tick.
DEPTH_FLUSH_BUDGET_S = 0.005

#: Bytes counted per record beside its key and value (batch overhead, roughly).
RECORD_OVERHEAD = 24

#: After a failed delivery a lane waits this long before sending the batch again.
RETRY_BACKOFF_S = 0.25

# Dead letters are for audit, not for trading: their lanes send at most one batch per 100 ms.
# With the books' PRODUCER_LINGER_MS (5 ms) a flood of bad frames (1,000/s in `make chaos`) sent
# ~200 produce requests a second per dead-letter partition, and on 2 cores those requests (a
# syscall each, and the broker's work) took the CPU the good books needed.
DEADLETTER_LINGER_S = 0.1


class OutputBatch:
    """Records of one lane that travel as one producer batch; kept until acknowledged, so that a
    batch whose delivery failed is built again and sent again in its place."""

    __slots__ = ("records", "size")

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.size = 0


@dataclass(slots=True)
class _Lane:
    topic: str
    partition: int
    open: OutputBatch | None = None  # the batch gathering records
    ready: deque[OutputBatch] = field(default_factory=deque)  # closed batches waiting, in order
    inflight: OutputBatch | None = None
    last_sent: float = 0.0  # monotonic time of its last batch
    linger: float = 0.0  # it sends at most one batch per this many seconds
    retry_at: float = 0.0  # monotonic: after a failed delivery, not before
    added: int = 0  # records ever added to this lane
    done: int = 0  # records acknowledged by the broker (or given up as undeliverable), in order
    flush_to: int = 0  # a commit waits for the records up to here: they go without lingering


#: Errors that no retry can mend: the batch is given up, counted (``outputs_failed``) and logged.
UNDELIVERABLE: tuple[type[BaseException], ...] = (
    Errors.MessageSizeTooLargeError, Errors.RecordListTooLargeError, Errors.InvalidTopicError,
    Errors.TopicAuthorizationFailedError, Errors.ClusterAuthorizationFailedError, Errors.CorruptRecordException,
    Errors.UnsupportedVersionError)


class OutputSink:
    """Records to Kafka in batches per topic partition. Never drops a record: past
    OUTPUT_BUFFER_MB of records waiting for Kafka, :meth:`room` holds back whoever adds them
    (the book agent, so Faust stops fetching the raw partitions; the risk engine) until the
    broker has taken half of them."""

    def __init__(self, settings: Settings, lingers: dict[str, float] | None = None) -> None:
        """``lingers``: topics whose lanes wait longer than PRODUCER_LINGER_MS between batches."""
        self.settings = settings
        self.linger_s = settings.producer_linger_ms / 1000
        self.lingers = {topic: max(s, self.linger_s) for topic, s in (lingers or {}).items()}
        self.budget = int(settings.output_buffer_mb * 2**20)
        self.batch_bytes = settings.producer_max_batch_size
        self.lanes: dict[tuple[str, int], _Lane] = {}
        self.pending_bytes = 0
        self.peak_bytes = 0
        self.sent = 0
        self.failed = 0  # records given up: undeliverable whatever the retries (record too large…)
        self.retried = 0  # batches sent again after a failed delivery
        self.paused_s = 0.0  # time spent holding back the inputs
        self.pauses = 0
        self.producers = 0  # producers created (more than one: recreated after a fatal error)
        self._producer: Any = None
        self._recreate = False
        self._wake = asyncio.Event()
        self._due_at = 0.0  # monotonic time the sender looks at the lanes next (0: it is looking now)
        self._progress = asyncio.Event()  # set whenever a delivery completes
        self._task: asyncio.Task[None] | None = None
        self._log = LogLimiter()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._producer = await self._new_producer()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="output-sink")

    async def _new_producer(self) -> Any:
        retry = Backoff(cap=5.0)
        while True:
            # acks=all with idempotence: a record is acknowledged once min.insync.replicas hold it,
            # and aiokafka retries an idempotent batch until it is delivered (it never expires one).
            # Its own client id (``<APP_ID>-outputs``): a broker quota or a client metric can name it.
            producer = make_producer(self.settings, enable_idempotence=True, acks="all", linger_ms=0,
                                     max_batch_size=self.batch_bytes, client_id=f"{self.settings.app_id}-outputs")
            try:
                await asyncio.wait_for(producer.start(), timeout=15)
                self.producers += 1
                return producer
            except (KafkaError, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("outputs: Kafka at %s unreachable (%s); retrying", self.settings.kafka_bootstrap, exc)
                await retry.sleep()

    async def stop(self, grace_s: float = 10.0) -> None:
        if self._producer is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.delivered(), timeout=grace_s)
        if self.pending_bytes:
            log.warning("outputs: stopping with %d records not delivered; they are published again by whichever "
                        "worker resumes these partitions", sum(lane.added - lane.done for lane in self.lanes.values()))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._producer.stop(), timeout=grace_s)
        self._producer = None

    # -- adding ------------------------------------------------------------------------
    def undelivered(self, topic: str, partition: int) -> bool:
        """Records added for this topic partition that the broker has not acknowledged yet."""
        lane = self.lanes.get((topic, partition))
        return lane is not None and lane.done < lane.added

    def add(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        """Queue one record; never drops it (see :meth:`room` for the bound)."""
        size = len(key) + len(value) + RECORD_OVERHEAD
        lane = self.lanes.get((topic, partition))
        if lane is None:
            lane = self.lanes[(topic, partition)] = _Lane(topic, partition,
                                                          linger=self.lingers.get(topic, self.linger_s))
        batch = lane.open
        if batch is None:
            batch = lane.open = OutputBatch()
        elif batch.size + size > self.batch_bytes:
            lane.ready.append(batch)
            batch = lane.open = OutputBatch()
        batch.records.append((key, value))
        batch.size += size
        lane.added += 1
        self.pending_bytes += size
        if self.pending_bytes > self.peak_bytes:
            self.peak_bytes = self.pending_bytes
        if lane.inflight is None:
            # Woken when this lane is due before the sender looks anyway (or while it is looking: it
            # may have passed this lane): a wake for every record, each a pass over every lane, cost
            # as much CPU as the books (bench latency p50 78 ms → 15.6 s at 5,000 frames/s).
            due = lane.retry_at if lane.ready else max(lane.last_sent + lane.linger, lane.retry_at)
            if self._due_at == 0.0 or due < self._due_at:
                self._wake.set()

    def hold(self, size: int) -> None:
        """``size`` bytes of outputs held elsewhere until a commit (exactly_once: in their table
        partition's next transaction) count against the same budget."""
        self.pending_bytes += size
        if self.pending_bytes > self.peak_bytes:
            self.peak_bytes = self.pending_bytes

    def release(self, size: int) -> None:
        """Held bytes left memory (their transaction committed, or their partition was lost)."""
        self.pending_bytes = max(0, self.pending_bytes - size)
        self._progress.set()

    def full(self) -> bool:
        """More than OUTPUT_BUFFER_MB waits for Kafka: whoever adds records must wait (:meth:`room`)."""
        return self.pending_bytes > self.budget

    async def room(self) -> None:
        """Until the records waiting for Kafka are back under half the budget (at once if under it).
        The book agent waits here, so its stream's buffer fills and Faust stops fetching the raw
        partitions (its own flow control) until the outputs drain: late, never lossy."""
        if self.pending_bytes <= self.budget:
            return
        began = time.monotonic()
        self.pauses += 1
        metrics.count("outputs_paused")
        if self._log.allow("outputs-paused")[0]:
            log.warning("outputs: %.1f MiB waiting for Kafka (OUTPUT_BUFFER_MB=%g); raw partitions paused until "
                        "half of it is delivered (nothing is dropped)", self.pending_bytes / 2**20,
                        self.settings.output_buffer_mb)
        try:
            while self.pending_bytes > self.budget // 2:
                self._progress.clear()
                await self._progress.wait()
        finally:
            self.paused_s += time.monotonic() - began

    async def delivered(self) -> None:
        """Until every record added before this call is acknowledged by the broker (or given up
        as undeliverable). The state commits wait here: progress is committed after the outputs
        of the records it covers (flush, then commit — as Kafka Streams does)."""
        marks = [(lane, lane.added) for lane in self.lanes.values() if lane.done < lane.added]
        for lane, mark in marks:
            lane.flush_to = max(lane.flush_to, mark)
        if marks:
            self._wake.set()
        while True:
            marks = [(lane, mark) for lane, mark in marks if lane.done < mark]
            if not marks:
                return
            self._progress.clear()
            await self._progress.wait()

    # -- sending -----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._recreate or producer_dead(self._producer):
                await self._replace_producer()
            now = time.monotonic()
            next_due: float | None = None
            for lane in list(self.lanes.values()):
                if lane.inflight is not None or (lane.open is None and not lane.ready):
                    continue
                # a lane sends at most one batch per linger, unless a commit waits for it
                due = max(lane.last_sent + lane.linger, lane.retry_at)
                if lane.flush_to > lane.done and now >= lane.retry_at:
                    due = now
                if now < due and (lane.retry_at > now or (lane.open is not None and not lane.ready)):
                    next_due = due if next_due is None else min(next_due, due)
                    continue
                if not lane.ready:
                    lane.ready.append(lane.open)  # type: ignore[arg-type]
                    lane.open = None
                await self._send(lane, lane.ready.popleft())
            # at least once a second: a producer whose sender task died wakes nobody
            timeout = 1.0 if next_due is None else min(max(next_due - time.monotonic(), 0.0005), 1.0)
            self._due_at = time.monotonic() + timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._due_at = 0.0

    async def _send(self, lane: _Lane, batch: OutputBatch) -> None:
        producer = self._producer
        built = producer.create_batch()
        records = batch.records
        for i, (key, value) in enumerate(records):
            if built.append(key=key, value=value, timestamp=None) is None:
                # larger than our estimate: the rest goes as the lane's next batch
                rest = OutputBatch()
                rest.records, batch.records = records[i:], records[:i]
                rest.size = sum(len(k) + len(v) + RECORD_OVERHEAD for k, v in rest.records)
                batch.size -= rest.size
                lane.ready.appendleft(rest)
                break
        lane.inflight = batch
        lane.last_sent = time.monotonic()
        try:
            fut = await producer.send_batch(built, lane.topic, partition=lane.partition)
        except (KafkaError, OSError) as exc:
            self._delivered(lane, batch, producer, exc)
            return
        fut.add_done_callback(lambda f: self._delivered(lane, batch, producer, f.exception() if not f.cancelled()
                                                        else asyncio.CancelledError()))

    def _delivered(self, lane: _Lane, batch: OutputBatch, producer: Any, exc: BaseException | None) -> None:
        if lane.inflight is not batch:
            return  # already sent again after its producer was replaced: a late word from the old one
        lane.inflight = None
        count = len(batch.records)
        if exc is None or isinstance(exc, UNDELIVERABLE):
            lane.done += count
            self.pending_bytes = max(0, self.pending_bytes - batch.size)
            if exc is None:
                self.sent += count
            else:
                self.failed += count
                metrics.count("outputs_failed", count)
                log.error("outputs: %d records to %s:%d can never be delivered (%s: %s); given up", count,
                          lane.topic, lane.partition, type(exc).__name__, exc)
        else:
            # Sent again, first in its lane: the lane's order holds (one batch in flight per lane).
            lane.ready.appendleft(batch)
            lane.retry_at = time.monotonic() + RETRY_BACKOFF_S
            self.retried += 1
            metrics.count("outputs_retried")
            fatal = not isinstance(exc, (asyncio.CancelledError, Errors.KafkaTimeoutError,
                                         Errors.KafkaConnectionError)) \
                and not getattr(exc, "retriable", False)
            if fatal and producer is self._producer:
                self._recreate = True
            if self._log.allow("outputs-retry")[0]:
                log.warning("outputs: delivery to %s:%d failed (%s: %s); sending it again%s", lane.topic,
                            lane.partition, type(exc).__name__, exc,
                            " with a new producer" if fatal else "")
        self._progress.set()
        self._wake.set()

    async def _replace_producer(self) -> None:
        """After a fatal producer error (OutOfOrderSequenceNumber…): a new producer; batches the old
        one still held fail with it and are sent again, each first in its lane."""
        self._recreate = False
        old, self._producer = self._producer, None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), timeout=5)
        for lane in self.lanes.values():  # a batch the old producer never answered for goes again, first
            if lane.inflight is not None:
                lane.ready.appendleft(lane.inflight)
                lane.inflight = None
                self.retried += 1
        self._producer = await self._new_producer()
        log.warning("outputs: producer recreated after a fatal error; undelivered batches are sent again")

    def stats(self) -> dict[str, Any]:
        return {"pending_mb": round(self.pending_bytes / 2**20, 3), "peak_mb": round(self.peak_bytes / 2**20, 3),
                "budget_mb": self.settings.output_buffer_mb, "sent": self.sent, "retried": self.retried,
                "failed": self.failed, "pauses": self.pauses, "paused_s": round(self.paused_s, 3),
                "producers": self.producers}


class RecentMarket:
    """The latest market data of the books on this worker, for the web view (memory only)."""

    TAPE = 50  # trades kept per instrument

    def __init__(self) -> None:
        self.trades: dict[str, deque[bytes]] = {}
        self.tickers: dict[str, dict[str, tuple[dict[str, Any], int]]] = {}  # key → channel → (fields, ts)
        self.recv: dict[str, int] = {}  # key → receive time of its latest ticker
        self.chains: dict[str, bytes] = {}  # chain key → latest options.chain record

    def trade(self, key: str, record: bytes) -> None:
        tape = self.trades.get(key)
        if tape is None:
            tape = self.trades[key] = deque(maxlen=self.TAPE)
        tape.append(record)

    def ticker(self, key: str, ticker: Ticker, ts_recv: int) -> None:
        """Cheap on the hot path: a full ticker replaces its channel's fields, a partial one
        (a delta) updates them; channels are merged when the web view reads (``merged``)."""
        channels = self.tickers.get(key)
        if channels is None:
            channels = self.tickers[key] = {}
        held = channels.get(ticker.channel)
        if held is None or not ticker.partial:
            channels[ticker.channel] = (dict(ticker.fields), ticker.ts_exchange)
        else:
            held[0].update(ticker.fields)
            channels[ticker.channel] = (held[0], ticker.ts_exchange)
        self.recv[key] = ts_recv

    def merged(self, key: str) -> Quote | None:
        """The latest value of each ticker field of ``key`` across its channels."""
        channels = self.tickers.get(key)
        if not channels:
            return None
        quote = Quote()
        for channel, (fields, ts) in sorted(channels.items(), key=lambda kv: kv[1][1]):
            quote.update({**fields, "channel": channel}, ts, self.recv[key], None)
        return quote

    def chain(self, key: str, record: bytes) -> None:
        self.chains[key] = record

    def forget(self, keep: Callable[[str], bool]) -> None:
        for table in (self.trades, self.tickers, self.recv, self.chains):
            for key in [k for k in table if not keep(k)]:
                del table[key]


class Publisher:
    """From outcomes to downstream records (one per top change, status transition, resync
    request, dead letter; book.depth rate-limited)."""

    def __init__(self, settings: Settings, topics: Topics, sink: OutputSink,
                 find: Callable[[str], Instrument | None]) -> None:
        self.settings = settings
        self.topics = topics
        self.sink = sink
        self.retry = ResyncRetry(settings.resync_retry_s)
        self.dead_log = LogLimiter()
        self.depth = DepthPublisher(settings.depth_interval_ms / 1000, self._publish_depth)
        self.conflater: TopConflater[tuple[int, BookTop]] | None = (
            TopConflater(settings.top_conflate_ms / 1000) if settings.top_conflate_ms else None)
        self.find = find  # the live book of a key (book.depth reads it)
        self.registry = Registry()  # every version of every instrument, fed by ``ref.instruments``
        self.chains = ChainBuilder(settings.chain_interval_ms, self.registry)
        self.recent = RecentMarket()  # what the web view shows: trades tape, ticker fields, chains
        self.risk_depth_keys: set[str] = set()  # hedge instruments of the risk rules (risk.depth)
        self.risk_interval_ns = settings.risk.interval_ms * 1_000_000
        self._risk_bucket: dict[str, int] = {}
        # PROCESSING_GUARANTEE=exactly_once: while the runtime applies a raw record, the table
        # partition whose next transaction takes the record's outputs (None: the sink, at least once).
        self.txn: PartitionState | None = None

    def _send(self, topic: str, partition: int, key: str, value: bytes) -> None:
        txn = self.txn
        if txn is None:
            self.sink.add(topic, partition, key.encode(), value)
        else:
            self.sink.hold(txn.output(topic, partition, key.encode(), value))

    def outcome(self, partition: int, out: Outcome, inst: Instrument, ts_recv: int) -> None:
        key, fx = out.key, out.fx
        venue, symbol = split_key(key)
        now = time.time_ns()
        if fx.tops:
            epoch = inst.counters["epoch"]
            for seq, ts_exchange, top in fx.tops:
                record = BookTop(venue=venue, instrument=symbol, bid_px=top[0], bid_sz=top[1], ask_px=top[2],
                                 ask_sz=top[3], seq=seq, epoch=epoch, ts_exchange=ts_exchange, ts_recv=ts_recv,
                                 ts_published=now)
                if self.conflater is not None:
                    self.conflater.offer(key, (partition, record))
                    continue
                self._send(self.topics.top, partition, key, encode(record))
                metrics.observe_latency(now - ts_recv)
            metrics.count("book_top", len(fx.tops))
        for state, reason in fx.transitions:
            self._status(partition, key, state, reason, inst, now, ts_recv)
            log.log(logging.WARNING if state == STALE else logging.INFO, "%s %s: %s", key, state, reason)
        if fx.resync is not None:
            self.request_resync(partition, key, inst, fx.resync, ts_recv)
        elif inst.status == SYNCED:
            self.retry.done(key)
        if fx.applied and inst.status == SYNCED:
            self.depth.touch(key)
            if key in self.risk_depth_keys:
                self._risk_depth(partition, key, inst, ts_recv)

    def _risk_depth(self, partition: int, key: str, inst: Instrument, ts_recv: int) -> None:
        """``risk.depth``: a hedge instrument's book after the first frame of each RISK_INTERVAL_MS
        of receive time — in event time, unlike book.depth's wall-clock timer, so that the risk
        engine walks the same book in every replay."""
        bucket = ts_recv // self.risk_interval_ns
        if self._risk_bucket.get(key) == bucket:
            return
        self._risk_bucket[key] = bucket
        bids, asks = inst.book.levels(self.settings.depth_levels)
        self._send(self.topics.risk_depth, partition, key, encode(RiskDepth(
            key=key, bids=bids, asks=asks, seq=inst.seq, ts_exchange=inst.ts_exchange, ts_recv=ts_recv,
            ts_published=time.time_ns())))

    def _status(self, partition: int, key: str, state: str, reason: str, inst: Instrument, now: int,
                ts_recv: int | None) -> None:
        venue, symbol = split_key(key)
        self._send(self.topics.status, partition, key, encode(BookStatus(
            venue=venue, instrument=symbol, state=state, reason=reason, seq=inst.seq, ts=now,
            counters=dict(inst.counters), ts_recv=ts_recv)))

    def request_resync(self, partition: int, key: str, inst: Instrument, reason: str,
                       ts_recv: int | None = None) -> None:
        """Ask ingestion (control.resync) for a fresh snapshot of one instrument, and say so."""
        venue, symbol = split_key(key)
        now = time.time_ns()
        self._send(self.topics.resync, partition, key,
                   encode(ResyncRequest(venue=venue, instrument=symbol, reason=reason, seq=inst.seq, ts=now)))
        self._status(partition, key, "resync-requested", reason, inst, now, ts_recv)
        metrics.count("resyncs")
        self.retry.requested(key)

    def dead(self, topic: str, partition: int, offset: int, frame: RawFrame | None, index: int, key: str,
             reason: str, detail: str, data: bytes) -> None:
        venue, _, symbol = key.partition(":")
        metrics.count("deadletters")
        metrics.count(f"deadletters.{reason}")
        allowed, suppressed = self.dead_log.allow(reason)
        if allowed:
            more = f" (+{suppressed:,} more {reason} not logged)" if suppressed else ""
            log.warning("dead letter %s %s:%s@%s#%d: %s %s%s", key, topic, partition, offset, index, reason,
                        detail[:200], more)
        headers = ({"ts": str(frame.ts), "kind": frame.kind.value, "conn": frame.conn} if frame is not None else {})
        instrument = symbol if symbol and symbol != "*" else None  # "<venue>:*": a record of several instruments
        record = DeadLetter(venue=venue, instrument=instrument, reason=reason, detail=detail, topic=topic,
                            partition=partition, offset=offset, index=index, headers=headers,
                            frame=data.decode("utf-8", "replace"))
        self._send(self.topics.deadletter, partition, key, encode(record))

    def market(self, partition: int, out: Outcome, ts_recv: int, src: Source) -> None:
        """``trades``, ``ticker`` and ``feed.status`` (trade gaps) records of one frame; option and
        future tickers also feed the options chains."""
        key = out.key
        now = time.time_ns()
        send = self._send
        recent = self.recent
        for trade in out.trades:
            record = trade_record(key, trade, ts_recv, now, src)
            send(self.topics.trades, partition, key, record)
            recent.trade(key, record)
        for ticker in out.tickers:
            tkey = key if ticker.symbol is None else f"{key.partition(':')[0]}:{ticker.symbol}"
            send(self.topics.ticker, partition, tkey, ticker_record(tkey, ticker, ts_recv, now, src))
            for chain_key, body in self.chains.offer(tkey, ticker.fields, ticker.ts_exchange, ts_recv, src, now):
                self._chain(chain_key, body)
            recent.ticker(tkey, ticker, ts_recv)
        if out.trades:
            metrics.count("trades", len(out.trades))
        if out.tickers:
            metrics.count("tickers", len(out.tickers))
        if out.trade_gaps and out.inst is not None and out.inst.trades is not None:
            cursor = out.inst.trades
            for first, last, ts_exchange in out.trade_gaps:
                send(self.topics.feed_status, partition, key,
                     gap_record(key, "trades", first, last, cursor.gaps, ts_exchange, ts_recv, now, src))
                log.warning("%s: trades %d..%d missing (trade gap %d)", key, first, last, cursor.gaps)
            metrics.count("trade_gaps", len(out.trade_gaps))
        for event in out.feed_events:
            send(self.topics.feed_status, partition, key, subscription_record(key, event, ts_recv, now, src))

    def instruments(self, specs: list[Spec], states: list[tuple[str, str, int]], ts_recv: int,
                    src: Source) -> None:
        """New versions of instrument specs (``ref.instruments``, keyed ``<key>|<valid_from>``)."""
        registry = self.registry
        for spec in registry.changed(specs, ts_recv, src) + registry.state_changed(states, ts_recv, src):
            self._send(self.topics.instruments, partition_for(spec.key, self.settings.partitions), spec.record_key(),
                       spec.encode(time.time_ns()))
            metrics.count("instrument_versions")

    def _chain(self, key: str, body: bytes) -> None:
        self._send(self.topics.chain, partition_for(key, self.settings.partitions), key, body)
        self.recent.chain(key, body)
        metrics.count("chains")

    def _publish_depth(self, key: str) -> None:
        inst = self.find(key)
        if inst is None or inst.status != SYNCED:
            return
        published = time.time_ns()  # the moment DepthPublisher spaces records from, before the aggregates
        venue, symbol = split_key(key)
        record = BookDepth(**msgspec.structs.asdict(inst.book.aggregates(self.settings.depth_levels)), venue=venue,
                           instrument=symbol, seq=inst.seq, epoch=inst.counters["epoch"], ts_exchange=inst.ts_exchange,
                           ts_recv=inst.ts_recv, ts_published=published)
        self._send(self.topics.depth, partition_for(key, self.settings.partitions), key, encode(record))

    def tick(self) -> None:
        """Timers: pending book.depth, conflated tops, options chains due."""
        self.depth.flush(budget_s=DEPTH_FLUSH_BUDGET_S)
        published = time.time_ns()
        for key, body in self.chains.due(time.monotonic_ns(), published):
            self._chain(key, body)
        if self.conflater is not None:
            now = time.time_ns()
            for partition, record in self.conflater.due():
                self._send(self.topics.top, partition, f"{record.venue}:{record.instrument}",
                           encode(msgspec.structs.replace(record, ts_published=now)))
                metrics.observe_latency(now - record.ts_recv)
