"""Downstream records to Kafka: built from each frame's effects, sent in producer batches.

:class:`Publisher` turns what the processor did to a book into ``book.top``, ``book.status``,
``book.depth``, ``control.resync`` and ``raw.deadletter`` records (definitions in ``app.records``).
:class:`OutputSink` sends them: one record per top-of-book change, as downstream consumers
expect, but gathered per topic partition in the lanes of the shared batching producer
(``app.lanes``: a lane with nothing in flight that sent nothing in the last ``PRODUCER_LINGER_MS``
sends at once; otherwise records gather, and a lane sends at most one batch per linger) and sent
as one producer batch rather than one by one (a Faust ``send_soon`` costs tens of microseconds per
record).

Nothing is dropped (README "Delivery guarantees"):

* **Flow control.** Past ``OUTPUT_BUFFER_MB`` of records waiting for Kafka, whoever adds them
  waits (:meth:`OutputSink.room`): the raw reader stops taking raw records and aiokafka fetches
  no further (one fetch per partition) until half of the budget is delivered.
  A slow or absent broker makes the worker late, never lossy.
* **Commit after delivery.** A table partition's commit first waits until every output added
  before it is acknowledged (:meth:`OutputSink.delivered`), so the progress it commits covers
  only raw records whose outputs the broker holds; after a crash the rest is published again.
* **Retries in order.** The lanes' (``app.lanes``): one batch in flight per lane, a failed one
  sent again first, the producer replaced after an error it cannot go on from. A record is
  given up only when no retry can deliver it (too large, not authorised): counted in
  ``outputs_failed`` and logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from app import metrics
from app.config import Settings
from app.kafka import fill
from app.lanes import Batch, Lane, LaneProducer
from app.market.chain import ChainBuilder, Quote
from app.market.instruments import Registry, Spec
from app.market.records import Ticker, gap_record, subscription_record, ticker_record, trade_record
from app.processor import Outcome
from app.publishing import DepthPublisher, LogLimiter, ResyncRetry, TopConflater
from app.sync import STALE, SYNCED, Instrument

if TYPE_CHECKING:
    from app.state.manager import PartitionState
from app.records import BookDepth, BookStatus, BookTop, DeadLetter, ResyncRequest, RiskDepth, Source, encode
from app.venues import split_key
from app.wire import RawFrame, Topics, partition_for

log = logging.getLogger(__name__)

# Longest a timer tick spends on each of waiting book.depth records and closed options chains;
# the rest go at the next one (the raw reader builds them between its batches, in slices of its
# own: app.rawreader SLICE_S).
DEFERRED_BUDGET_S = 0.002
#: Turns of the loop given to aiokafka (fetch answers, acknowledgements) before each piece of
#: deferred outputs (an options chain, a book.depth slice) built between the raw reader's batches.
DEFERRED_TURNS = 4

#: Bytes counted per record beside its key and value (batch overhead, roughly).
RECORD_OVERHEAD = 24

# Dead letters are for audit, not for trading: their lanes send at most one batch per 100 ms.
# With the books' PRODUCER_LINGER_MS (5 ms then; 1 ms now) a flood of bad frames (1,000/s in
# `make chaos`) sent ~200 produce requests a second per dead-letter partition, and on 2 cores
# those requests (a syscall each, and the broker's work) took the CPU the good books needed.
DEADLETTER_LINGER_S = 0.1


class OutputBatch(Batch):
    """Downstream records of one lane that travel as one producer batch."""

    __slots__ = ("records",)

    def __init__(self, began: float) -> None:
        super().__init__(began)
        self.records: list[tuple[bytes, bytes]] = []

    def build(self, producer: Any, lane: Lane) -> tuple[Any, Batch | None]:
        built = producer.create_batch(self.size)
        records = self.records
        i = fill(built, records, 0, len(records))
        if i < len(records):
            rest = OutputBatch(self.began)
            rest.records, self.records = records[i:], records[:i]
            rest.size = sum(len(k) + len(v) + RECORD_OVERHEAD for k, v in rest.records)
            rest.count, self.count = len(rest.records), i
            self.size -= rest.size
            return built, rest
        return built, None


class OutputSink(LaneProducer):
    """Records to Kafka in batches per topic partition. Never drops a record: past
    OUTPUT_BUFFER_MB of records waiting for Kafka, :meth:`room` holds back whoever adds them
    (the raw reader, so no more raw records are fetched; the risk engine) until the
    broker has taken half of them."""

    name = "outputs"
    metric_retried = "outputs_retried"
    metric_restarts = "outputs_producer_restarts"
    undelivered_note = "; they are published again by whichever worker resumes these partitions"

    def __init__(self, settings: Settings, lingers: dict[str, float] | None = None) -> None:
        """``lingers``: topics whose lanes wait longer than PRODUCER_LINGER_MS between batches."""
        # Its own client id (``<APP_ID>-outputs``): a broker quota or a client metric can name it.
        super().__init__(settings, budget=int(settings.output_buffer_mb * 2**20),
                         linger_s=settings.producer_linger_ms / 1000, batch_bytes=settings.producer_max_batch_size,
                         lingers=lingers, client_id=f"{settings.app_id}-outputs")
        self.sent = 0
        self.failed = 0  # records given up: undeliverable whatever the retries (record too large…)
        self.paused_s = 0.0  # time spent holding back the inputs
        self.pauses = 0

    async def start(self) -> None:  # type: ignore[override]
        """Start sending, once a producer has started (retrying while Kafka is unreachable)."""
        super().start()
        await self.connected()

    # -- adding ------------------------------------------------------------------------
    def add(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        """Queue one record; never drops it (see :meth:`room` for the bound)."""
        size = len(key) + len(value) + RECORD_OVERHEAD
        lane = self.lanes.get((topic, partition)) or self.lane(topic, partition)
        batch = lane.open
        if batch is None:
            batch = lane.open = OutputBatch(time.monotonic())
        elif batch.size + size > self.batch_bytes:
            lane.ready.append(batch)
            batch = lane.open = OutputBatch(time.monotonic())
        batch.records.append((key, value))  # type: ignore[attr-defined]
        batch.size += size
        batch.count += 1
        self._added(lane, size, 1)

    def hold(self, size: int) -> None:
        """``size`` bytes of outputs held elsewhere until a commit (exactly_once: in their table
        partition's next transaction) count against the same budget."""
        self.pending_bytes += size
        if self.pending_bytes > self.peak_bytes:
            self.peak_bytes = self.pending_bytes

    def release(self, size: int) -> None:
        """Held bytes left memory (their transaction committed, or their partition was lost)."""
        self._release(size)

    def full(self) -> bool:
        """More than OUTPUT_BUFFER_MB waits for Kafka: whoever adds records must wait (:meth:`room`)."""
        return self.pending_bytes > self.budget

    async def room(self) -> None:
        """Until the records waiting for Kafka are back under half the budget (at once if under it).
        The raw reader waits here (``app.rawreader``), so aiokafka stops fetching the raw
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

    # -- outcomes ----------------------------------------------------------------------
    def _delivered(self, lane: Lane, batch: Batch) -> None:
        self.sent += batch.count

    def _given_up(self, lane: Lane, batch: Batch, exc: BaseException) -> None:
        self.failed += batch.count
        metrics.count("outputs_failed", batch.count)
        log.error("outputs: %d records to %s:%d can never be delivered (%s: %s); given up", batch.count,
                  lane.topic, lane.partition, type(exc).__name__, exc)

    def stats(self) -> dict[str, Any]:
        return {"pending_mb": round(self.pending_bytes / 2**20, 3), "peak_mb": round(self.peak_bytes / 2**20, 3),
                "budget_mb": self.settings.output_buffer_mb, "sent": self.sent, "retried": self.retried,
                "failed": self.failed, "pauses": self.pauses, "paused_s": round(self.paused_s, 3),
                "producers": self.producers, "producer_restarts": self.producer_restarts,
                "idempotent": self.idempotent}


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
        wide = key[-1] == ":"  # a venue-wide frame (dYdX v4_markets): each ticker to its instrument's partition
        for ticker in out.tickers:
            tkey = key if ticker.symbol is None else f"{key.partition(':')[0]}:{ticker.symbol}"
            tpart = partition_for(tkey, self.settings.partitions) if wide else partition
            send(self.topics.ticker, tpart, tkey, ticker_record(tkey, ticker, ts_recv, now, src))
            self.chains.offer(tkey, ticker.fields, ticker.ts_exchange, ts_recv, src, self.txn)
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

    def publish_chains(self, budget_s: float | None = None) -> int:
        """Build and send the closed options chains — all, or with ``budget_s`` at least one and
        no more once that long was spent — each to where the record that closed it sent its
        outputs (its table partition's transaction under exactly_once)."""
        txn, published = self.txn, 0
        start = time.monotonic()
        try:
            for key, body, tag in self.chains.built(time.time_ns()):
                self.txn = tag
                self._send(self.topics.chain, partition_for(key, self.settings.partitions), key, body)
                self.recent.chain(key, body)
                published += 1
                if budget_s is not None and time.monotonic() - start >= budget_s:
                    break
        finally:
            self.txn = txn
        metrics.count("chains", published)
        return published

    def chains_owed(self) -> bool:
        """Closed options chains wait to be built (a commit sends them before it takes its position)."""
        return bool(self.chains.closed)

    def deferred(self) -> bool:
        """Outputs wait to be built: closed options chains, book.depth whose interval passed."""
        return self.chains_owed() or self.depth.due()

    async def publish_deferred(self, budget_s: float) -> bool:
        """The outputs no frame's latency rides on — closed options chains (milliseconds each: a
        bucket boundary closes every chain of a venue within one burst of tickers), book.depth
        whose interval passed (tens of µs each, a thousand a second for a thousand books) — built
        by the raw reader between its batches of records (``app.rawreader``): about ``budget_s``
        of them, a piece at a time, each after a turn of the loop so that the batch's own
        outputs leave first. True while more wait: the reader first takes the records that
        arrived meanwhile, then calls again (a burst of frames never waits behind a second's
        book.depth). A commit builds whatever chain is still closed before it takes its
        position (``StateManager`` ``before_commit``); the timer publishes what waits while no
        record arrives."""
        start = time.monotonic()
        while self.deferred():
            # Before each piece, the turns a fetch answer needs to reach the raw reader (the
            # connection's reader, the fetcher, the waiter) and an acknowledgement the outputs'
            # sender (DEFERRED_TURNS): with one, a burst's records waited behind one chain after
            # another — twelve close together each second — and the outputs behind depth slices
            for _ in range(DEFERRED_TURNS):
                await asyncio.sleep(0)
            try:
                if not self.publish_chains(budget_s=0):
                    self.depth.flush(budget_s=budget_s)
            except Exception:
                log.exception("building deferred outputs failed")
                metrics.count("internal_errors")
                return False
            if time.monotonic() - start >= budget_s:
                break
        return self.deferred()

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
        self.depth.flush(budget_s=DEFERRED_BUDGET_S)
        self.chains.due(time.monotonic_ns())
        self.publish_chains(budget_s=DEFERRED_BUDGET_S)
        if self.conflater is not None:
            now = time.time_ns()
            for partition, record in self.conflater.due():
                self._send(self.topics.top, partition, f"{record.venue}:{record.instrument}",
                           encode(msgspec.structs.replace(record, ts_published=now)))
                metrics.observe_latency(now - record.ts_recv)
