"""Downstream records to Kafka: built from each frame's effects, sent in producer batches.

:class:`Publisher` turns what the processor did to a book into ``book.top``, ``book.status``,
``book.depth``, ``control.resync`` and ``raw.deadletter`` records (builders in ``app.wire``).
:class:`OutputSink` sends them: one record per top-of-book change, as downstream consumers
expect, but appended to an aiokafka ``BatchBuilder`` per topic partition rather than sent one
by one (a Faust ``send_soon`` costs tens of microseconds per record). Batching is natural:
a lane (topic partition) with nothing in flight that sent nothing in the last
``PRODUCER_LINGER_MS`` sends at once; otherwise records gather until both hold.

Output delivery is at-least-once across restarts (records after the last state commit are
published again, with the same contents). A record whose delivery fails (broker unreachable
beyond the request timeout) is counted (``outputs_failed``) and dropped: the books stay right
and the next change publishes the current top again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from app import metrics
from app.config import Settings
from app.kafka import producer as make_producer
from app.market.chain import ChainBuilder, Quote
from app.market.instruments import Registry, Spec
from app.market.records import Ticker, gap_record, ticker_record, trade_record
from app.processor import Outcome
from app.publishing import DepthPublisher, LogLimiter, ResyncRetry, TopConflater
from app.sync import STALE, SYNCED, Instrument
from app.venues import split_key
from app.wire import BookDepth, BookStatus, BookTop, DeadLetter, RawFrame, ResyncRequest, Topics, partition_for

log = logging.getLogger(__name__)

# Longest a timer tick spends on waiting book.depth records (an aggregate of a deep book costs
# ~1 ms); the rest go at the next tick.
DEPTH_FLUSH_BUDGET_S = 0.005

# Dead letters are for audit, not for trading: their lanes send at most one batch per 100 ms.
# With the books' PRODUCER_LINGER_MS (5 ms) a flood of bad frames (1,000/s in `make chaos`) sent
# ~200 produce requests a second per dead-letter partition, and on 2 cores those requests (a
# syscall each, and the broker's work) took the CPU the good books needed.
DEADLETTER_LINGER_S = 0.1


@dataclass(slots=True)
class _Lane:
    topic: str
    partition: int
    open: Any = None  # the BatchBuilder gathering records
    ready: deque[Any] = field(default_factory=deque)  # full builders waiting
    inflight: bool = False
    last_sent: float = 0.0  # monotonic time of its last batch
    linger: float = 0.0  # it sends at most one batch per this many seconds


class OutputSink:
    """Records to Kafka in batches per topic partition, within OUTPUT_BUFFER_MB."""

    def __init__(self, settings: Settings, lingers: dict[str, float] | None = None) -> None:
        """``lingers``: topics whose lanes wait longer than PRODUCER_LINGER_MS between batches."""
        self.settings = settings
        self.linger_s = settings.producer_linger_ms / 1000
        self.lingers = {topic: max(s, self.linger_s) for topic, s in (lingers or {}).items()}
        self.budget = int(settings.output_buffer_mb * 2**20)
        self.lanes: dict[tuple[str, int], _Lane] = {}
        self.pending_bytes = 0
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self._producer: Any = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = LogLimiter()

    async def start(self) -> None:
        delay = 0.5
        while True:
            producer = make_producer(self.settings, enable_idempotence=False, acks=1, linger_ms=0,
                                     max_batch_size=self.settings.producer_max_batch_size)
            try:
                await asyncio.wait_for(producer.start(), timeout=15)
                break
            except (KafkaError, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("outputs: Kafka at %s unreachable (%s); retrying", self.settings.kafka_bootstrap, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._producer = producer
        self._task = asyncio.get_running_loop().create_task(self._run(), name="output-sink")

    async def stop(self, grace_s: float = 10.0) -> None:
        if self._producer is None:
            return
        deadline = time.monotonic() + grace_s
        while self.pending_bytes and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._producer.stop(), timeout=grace_s)
        self._producer = None

    def add(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        if self._producer is None:
            self.dropped += 1
            return
        size = len(key) + len(value) + 24
        if self.pending_bytes + size > self.budget:
            self.dropped += 1
            self._warn(f"outputs: {self.pending_bytes / 2**20:.1f} MiB waiting for Kafka; dropping records "
                       f"({self.dropped:,} so far)")
            return
        lane = self.lanes.get((topic, partition))
        if lane is None:
            lane = self.lanes[(topic, partition)] = _Lane(topic, partition,
                                                          linger=self.lingers.get(topic, self.linger_s))
        if lane.open is None:
            lane.open = self._producer.create_batch()
        if lane.open.append(key=key, value=value, timestamp=None) is None:
            lane.ready.append(lane.open)
            lane.open = self._producer.create_batch()
            lane.open.append(key=key, value=value, timestamp=None)
        self.pending_bytes += size
        if not lane.inflight:
            self._wake.set()

    def _warn(self, message: str) -> None:
        if self._log.allow("outputs")[0]:
            log.error(message)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            next_due: float | None = None
            for lane in list(self.lanes.values()):
                if lane.inflight or (lane.open is None and not lane.ready):
                    continue
                due = lane.last_sent + lane.linger  # a lane sends at most one batch per linger
                if now < due and lane.open is not None and not lane.ready:
                    next_due = due if next_due is None else min(next_due, due)
                    continue
                if not lane.ready:
                    lane.ready.append(lane.open)
                    lane.open = None
                await self._send(lane, lane.ready.popleft())
            if next_due is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(next_due - time.monotonic(), 0.0005))

    async def _send(self, lane: _Lane, batch: Any) -> None:
        count, size = batch.record_count(), batch.size()
        lane.inflight = True
        lane.last_sent = time.monotonic()
        try:
            fut = await self._producer.send_batch(batch, lane.topic, partition=lane.partition)
        except (KafkaError, OSError) as exc:
            self._delivered(lane, count, size, exc)
            return
        fut.add_done_callback(lambda f: self._delivered(lane, count, size, f.exception() if not f.cancelled()
                                                        else asyncio.CancelledError()))

    def _delivered(self, lane: _Lane, count: int, size: int, exc: BaseException | None) -> None:
        lane.inflight = False
        self.pending_bytes = max(0, self.pending_bytes - size - 24 * count)
        if exc is None:
            self.sent += count
        else:
            self.failed += count
            metrics.count("outputs_failed", count)
            self._warn(f"outputs: delivery to {lane.topic}:{lane.partition} failed ({exc}); {self.failed:,} records "
                       "lost so far (books are unaffected)")
        self._wake.set()


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
            quote.update({**fields, "channel": channel}, ts, self.recv[key], {})
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

    def _send(self, topic: str, partition: int, key: str, value: bytes) -> None:
        self.sink.add(topic, partition, key.encode(), value)

    def outcome(self, partition: int, out: Outcome, inst: Instrument, ts_recv: int) -> None:
        key, fx = out.key, out.fx
        venue, symbol = split_key(key)
        now = time.time_ns()
        if fx.tops:
            epoch = inst.counters["epoch"]
            for seq, ts_exchange, top in fx.tops:
                record = BookTop(venue, symbol, top[0], top[1], top[2], top[3], seq, epoch, ts_exchange, ts_recv, now)
                if self.conflater is not None:
                    self.conflater.offer(key, (partition, record))
                    continue
                self._send(self.topics.top, partition, key, record.encode())
                metrics.observe_latency(now - ts_recv)
            metrics.count("book_top", len(fx.tops))
        for state, reason in fx.transitions:
            self._send(self.topics.status, partition, key,
                       BookStatus(venue, symbol, state, reason, inst.seq, now, inst.counters, ts_recv).encode())
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
        self._send(self.topics.risk_depth, partition, key, orjson.dumps({
            "key": key, "bids": [list(x) for x in bids], "asks": [list(x) for x in asks], "seq": inst.seq,
            "ts_exchange": inst.ts_exchange, "ts_recv": ts_recv, "ts_published": time.time_ns()}))

    def request_resync(self, partition: int, key: str, inst: Instrument, reason: str,
                       ts_recv: int | None = None) -> None:
        """Ask ingestion (control.resync) for a fresh snapshot of one instrument, and say so."""
        venue, symbol = split_key(key)
        now = time.time_ns()
        self._send(self.topics.resync, partition, key, ResyncRequest(venue, symbol, reason, inst.seq, now).encode())
        self._send(self.topics.status, partition, key,
                   BookStatus(venue, symbol, "resync-requested", reason, inst.seq, now, inst.counters,
                              ts_recv).encode())
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
        record = DeadLetter(venue, instrument, reason, detail, topic, partition, offset, index, headers, data)
        self._send(self.topics.deadletter, partition, key, record.encode())

    def market(self, partition: int, out: Outcome, ts_recv: int, src: dict[str, Any]) -> None:
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

    def instruments(self, specs: list[Spec], states: list[tuple[str, str, int]], ts_recv: int,
                    src: dict[str, Any]) -> None:
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
        record = BookDepth(venue, symbol, inst.book.aggregates(self.settings.depth_levels), inst.seq,
                           inst.counters["epoch"], inst.ts_exchange, inst.ts_recv, published)
        self._send(self.topics.depth, partition_for(key, self.settings.partitions), key, record.encode())

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
                           record._replace(ts_published=now).encode())
                metrics.observe_latency(now - record.ts_recv)
