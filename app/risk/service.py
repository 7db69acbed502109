"""The risk engine inside the worker: topics in, ``risk.*``, ``alerts`` and ``nbbo`` out.

A plain aiokafka consumer (no Faust events: ``book.top`` and ``ticker`` run at book rates)
reads every partition of the engine's inputs. Start:

1. its own outputs (``risk.hedge``, ``risk.exposure``, ``risk.scenarios``, ``alerts``, ``nbbo``)
   to their end — what was already published is never published again, so a restarted or
   redelivered computation adds no duplicate (signals carry deterministic ids);
2. ``positions`` and ``risk.rules`` (compacted) to their end;
3. the market inputs from ``RISK_LOOKBACK_S`` ago (0: from the beginning), recomputing the
   engine's state from them — progress lives in the outputs, not in consumer commits.

Market inputs wait in a heap until every input source (topic, partition, venue) has moved
past them by ``RISK_LATENESS_MS`` of event time, or has been quiet for ``RISK_IDLE_MS`` of wall
time; then they go to the engine in event-time order. Positions and rule states also wait for
the market inputs to reach their time. Every worker computes every portfolio
(its web view shows them all) and publishes those it owns: the partition of the portfolio's
name (alerts: of the instrument; NBBO: of the pair) is active here. What it computes for a
partition it does not own is held until read back from the owner's output; if the partition
comes here first (a handover: the old owner stopped publishing, or no one owned it a moment),
this worker publishes it, once it has read its outputs to their end — nothing computed during
a rebalance is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app import metrics, records
from app.config import Settings
from app.kafka import client_auth, read_to_end
from app.records import HEDGE_FILLS, RISK_RULES, HedgeFill, InstrumentRecord, PositionRecord, RuleState, TickerRecord
from app.records.risk import Alert, HedgeBlocked, HedgeSignal, MarginRecord, Nbbo, RiskRecord
from app.risk import positions as pos
from app.risk.alerts import AlertSettings
from app.risk.engine import DeskEvent, EngineSettings, Input, Out, RiskEngine, instrument_key
from app.risk.margin import load_params
from app.risk.rules import STATES, Rule, load_rules, state_record
from app.risk.watermark import Watermark
from app.wire import Topics, partition_for

log = logging.getLogger(__name__)

#: Tie-break of inputs at one event time: specs first, then status, books, tickers.
RANK = {"ref.instruments": 0, "book.status": 1, "book.top": 2, "risk.depth": 3, "ticker": 4, "position": 5,
        "rule-state": 6, "collateral": 7, "fill": 8}
OUTPUTS = ("risk.exposure", "risk.scenarios", "risk.margin", "risk.hedge", "alerts", "nbbo")
RECENT_HEDGE = 50
CATCH_UP_S = 120
#: Records per fetch, and how many are handled between two yields to the event loop (the book
#: agent shares it: a slice is a few milliseconds).
FETCH_RECORDS = 1000
SLICE = 100
FETCH_MIN_BYTES = 256 * 1024
FETCH_WAIT_MS = 100
#: Seconds between two looks for held records of partitions that came here.
HELD_CHECK_S = 0.5


def engine_settings(settings: Settings) -> EngineSettings:
    r = settings.risk
    return EngineSettings(
        interval_ms=r.interval_ms, scenario_interval_ms=r.scenario_interval_ms, max_input_age_ms=r.max_input_age_ms,
        vol_shifts=(-r.vol_shift, 0.0, r.vol_shift),
        alerts=AlertSettings(r.alert_stale_s, r.alert_spread_bps, r.alert_funding_jump, r.alert_divergence_bps,
                             r.alert_margin_ratios),
        signal_ttl_s=r.signal_ttl_s, deribit_margin=r.deribit_margin, margin_params=load_params(r.margin_params_file))


def load_configured_rules(settings: Settings) -> list[Rule]:
    """RISK_RULES_FILE's rules (none without it); ConfigError listing every error."""
    return load_rules(settings.risk.rules_file) if settings.risk.rules_file is not None else []


def owner_key(body: RiskRecord) -> str:
    """What decides which worker publishes ``body``: the partition of its portfolio, its
    instrument (alerts) or its pair (NBBO)."""
    if isinstance(body, Nbbo):
        return body.pair
    if isinstance(body, Alert):
        return body.key
    return body.portfolio


def order_key(key: str, body: RiskRecord) -> str:
    """What a record is ordered under: a rule's hedge records (each keyed by its own id) share
    the rule's partition and are published in order; any other output record is ordered by
    its key (a latest value)."""
    return body.rule if isinstance(body, HedgeSignal | HedgeBlocked) else key


def latest_key(body: RiskRecord) -> str:
    """The key of the latest record of its kind that the web view shows (a rule's for hedges)."""
    if isinstance(body, HedgeSignal | HedgeBlocked):
        return body.rule
    if isinstance(body, Nbbo):
        return body.pair
    if isinstance(body, Alert):
        return f"{body.kind}|{body.key}"
    if isinstance(body, MarginRecord):
        return f"{body.portfolio}|{body.venue}|{body.currency}"
    return f"{body.portfolio}|{body.underlying}"


class BadInput(ValueError):
    """A market input record that cannot be read (counted, ``risk_bad_inputs``)."""


def market_input(kind: str, value: bytes) -> tuple[int, str, int, Input] | None:
    """A market input record of ``kind`` (its topic, decoded with its definition) as the engine
    takes it: (event time, instrument key, seq, record); None for one that says nothing (a
    ``book.status`` timer's retry, which has no event time). Raises :class:`BadInput` for one
    that does not match its definition."""
    try:
        body = records.decode(kind, value)
    except msgspec.DecodeError as exc:
        raise BadInput(str(exc)) from exc
    if isinstance(body, InstrumentRecord):
        return body.valid_from, body.key, 0, body
    if body.ts_recv is None:  # book.status
        return None
    seq = 0 if isinstance(body, TickerRecord) else body.seq or 0
    return body.ts_recv, instrument_key(body), seq, body


def collateral_event(key: bytes | None, value: bytes | None) -> DeskEvent:
    """A ``collateral`` record as the engine takes it (``collateral`` None: a tombstone, which has
    no time: applied when read). Raises PositionError naming what is wrong."""
    text = key.decode("utf-8", "replace") if key else ""
    row = pos.parse_collateral(key, value)
    if row is None:
        return DeskEvent(text, 0, collateral=None, what="collateral")
    return DeskEvent(row.key, row.ts, collateral=row.amount, what="collateral")


def fill_event(value: bytes | None) -> DeskEvent | None:
    """A ``hedge.fills`` record as the engine takes it (None: a tombstone, nothing to apply).
    Raises :class:`BadInput` for one that does not match its definition."""
    if value is None:
        return None
    try:
        fill: HedgeFill = records.decode(HEDGE_FILLS, value)
        Decimal(fill.filled)
        if fill.price is not None:
            Decimal(fill.price)
    except (msgspec.DecodeError, ArithmeticError) as exc:
        raise BadInput(str(exc)) from exc
    return DeskEvent(fill.signal, fill.ts, fill=fill)


class RiskService:
    def __init__(self, settings: Settings, topics: Topics, rules: list[Rule], send: Callable[[str, int, str, bytes],
                 None], owns: Callable[[str], bool], ready: Callable[[], bool],
                 caught_up: Callable[[], bool] = lambda: True,
                 applying: Callable[[], Mapping[tuple[str, int], float]] = dict,
                 room: Callable[[], Awaitable[None]] | None = None,
                 undelivered: Callable[[str, int], bool] = lambda topic, partition: False,
                 acknowledged_to: Callable[[str, int], int] = lambda topic, partition: -1) -> None:
        """``applying()``: the raw (topic, partition)s the worker still has frames of to apply, each
        with the receive time it has applied it to (``BookRuntime.raw_applying``). ``room``: waits
        while the worker's outputs are over their budget (flow control: the
        engine reads no more inputs until Kafka has taken what it published). ``undelivered(topic,
        partition)``: whether this worker has records for it that Kafka has not acknowledged yet;
        ``acknowledged_to(topic, partition)``: the offset of its last one Kafka did (-1: none)."""
        self.settings = settings
        self.topics = topics
        self.rules = rules
        self.send = send
        self.owns = owns
        self.ready = ready
        self.caught_up = caught_up
        self.applying = applying
        self.room = room
        self.undelivered = undelivered
        self.acknowledged_to = acknowledged_to
        self.task: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        settings, topics, rules = self.settings, self.topics, self.rules
        self.engine = RiskEngine(engine_settings(settings), rules)
        self.inputs = {topics.ticker: "ticker", topics.top: "book.top", topics.status: "book.status",
                       topics.risk_depth: "risk.depth", topics.instruments: "ref.instruments"}
        self.outputs = {topics.name(t): t for t in OUTPUTS}
        self.consumer: AIOKafkaConsumer | None = None
        self._end: dict[TopicPartition, int] = {}
        self.read_to: dict[tuple[str, int], int] = {}  # (topic, partition) → offset of the last record read
        self.heap: list[tuple[int, int, str, int, int, str, Input]] = []
        self._n = 0
        self.marks = Watermark(settings.risk.lateness_ms * 1_000_000, settings.risk.idle_ms * 1_000_000)
        self.assigned: list[TopicPartition] = []  # every input partition read after the restore
        self.market_max = float("-inf")  # the newest event time of a market input read
        self.done_ids: set[str] = set()  # risk.hedge ids already published
        self.restored_ts: dict[tuple[str, str], int] = {}  # (topic, key) → latest ts published before start
        # (topic, rule or key) → records computed while another worker owns their partition (or
        # none does, in a rebalance), in order: published here if the partition comes here before
        # they are read back from the owner's output (the alerts and signals each; of the other
        # topics the latest only)
        self.unowned: dict[tuple[str, str], list[tuple[int, str, RiskRecord]]] = {}
        self._held_check_at = 0.0
        self.restoring = False
        self.rule_states = {r.id: RuleState(rule=r.id, state=r.state, ts=0, by="file") for r in rules}
        self.latest: dict[str, dict[str, RiskRecord]] = {t: {} for t in OUTPUTS}
        self.hedge_recent: deque[HedgeSignal | HedgeBlocked] = deque(maxlen=RECENT_HEDGE)
        self.bad_positions: dict[str, str] = {}  # record key → reason (the latest bad record of each)
        self.position_rows: dict[str, PositionRecord] = {}
        self.collateral_rows: dict[str, pos.Collateral] = {}
        self.fills: dict[str, HedgeFill] = {}  # signal id → its latest fill record

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="risk")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.consumer is not None:
            await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                log.warning("risk: %s; starting again in 2 s", exc)
            except Exception:
                log.exception("risk engine failed; starting again in 5 s")
                metrics.count("risk_errors")
                await asyncio.sleep(3)
            if self.consumer is not None:
                with contextlib.suppress(Exception):
                    await self.consumer.stop()
                self.consumer = None
            await asyncio.sleep(2)
            self._reset()  # the state is recomputed from the topics

    async def _serve(self) -> None:
        # Fetches wait for FETCH_MIN_BYTES or FETCH_WAIT_MS: a few round trips a second. With the
        # default (answer as soon as one byte is there) this consumer's fetch requests over every
        # partition of book.top and ticker cost the broker and the worker's event loop enough to
        # multiply the books' latency under load (`make chaos` flood: p50 18 ms → 2.8 s).
        consumer = self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False, max_poll_records=5000,
            fetch_min_bytes=FETCH_MIN_BYTES, fetch_max_wait_ms=FETCH_WAIT_MS,
            # PROCESSING_GUARANTEE=exactly_once: never an output of an aborted commit
            isolation_level="read_committed", **client_auth(self.settings))
        await consumer.start()
        parts = self.settings.partitions
        tps = lambda topics: [TopicPartition(t, p) for t in topics for p in range(parts)]  # noqa: E731
        # 1-2: what was published, the positions and the rule states — read to their end first
        first = tps([*self.outputs, self.topics.positions, self.topics.rules, self.topics.collateral,
                     self.topics.fills])
        consumer.assign(first)
        await consumer.seek_to_beginning(*first)
        self.restoring = True
        await self._read_to_end(first)
        self.restoring = False
        await self._until(self.ready, None)  # owned partitions known: the worker's table is active
        # After a crash the worker publishes again what it had not delivered (its outputs after
        # the last table commit): start once those are out, or they would arrive behind the
        # watermark. Bounded: a worker that cannot catch up must not stop risk forever.
        if not await self._until(self.caught_up, CATCH_UP_S):
            log.warning("risk: the worker is still behind its raw topics after %d s; starting anyway", CATCH_UP_S)
        # 3: market inputs from the lookback
        market = tps(self.inputs)
        consumer.assign([*first, *market])
        lookback = self.settings.risk.lookback_s
        if lookback > 0:
            since = int((time.time() - lookback) * 1000)
            # the ends first: a partition with nothing since then is read from this end, not from
            # its end after the search (a record written in between, e.g. ref.instruments, would be lost)
            ends = await consumer.end_offsets(market)
            offsets = await consumer.offsets_for_times(dict.fromkeys(market, since))
            for tp in market:
                found = offsets.get(tp)
                if found is None:
                    consumer.seek(tp, ends[tp])
                else:
                    consumer.seek(tp, found.offset)
        else:
            starts = await consumer.beginning_offsets(market)
            for tp in market:
                consumer.seek(tp, starts[tp])
        for tp in first:  # assign() forgot the positions reached
            consumer.seek(tp, self._end[tp])
        for tp in [*first, *market]:  # where each partition is read from: the watermark knows what is left
            self.read_to[(tp.topic, tp.partition)] = await consumer.position(tp) - 1
        self.assigned = [tp for tp in [*first, *market] if tp.topic not in self.outputs]
        log.info("risk engine: %d rules, %d positions, %d signals already published", len(self.rules),
                 sum(len(b) for b in self.engine.positions.values()), len(self.done_ids))
        while True:
            if self.room is not None:
                await self.room()
            batches = await consumer.getmany(timeout_ms=200, max_records=FETCH_RECORDS)
            now = time.monotonic()
            for tp, msgs in batches.items():
                for i, msg in enumerate(msgs, 1):
                    self._record(tp.topic, tp.partition, msg.key, msg.value, now)
                    if i % SLICE == 0:
                        await asyncio.sleep(0)  # the books' agent shares this event loop
                self.read_to[(tp.topic, tp.partition)] = msgs[-1].offset
            await self._past_markers(batches)
            await self._release(now)
            if self.unowned and now >= self._held_check_at:
                self._held_check_at = now + HELD_CHECK_S
                self._publish_held()

    async def _past_markers(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """A partition written in transactions ends with a commit marker, which is no record: the
        consumer steps over it, and what was read reaches the partition's end only as far as the
        consumer's position says (else it would look forever behind, with nothing left to read)."""
        consumer = self.consumer
        assert consumer is not None
        for tp in self.assigned:
            if tp in batches:
                continue
            high = consumer.highwater(tp)
            key = (tp.topic, tp.partition)
            if high is not None and self.read_to.get(key, -1) + 1 < high:
                self.read_to[key] = max(self.read_to.get(key, -1), await consumer.position(tp) - 1)

    @staticmethod
    async def _until(condition: Callable[[], bool], timeout_s: float | None) -> bool:
        """Poll ``condition`` (a worker's state, no event to wait on) until true or the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not condition():
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)  # noqa: ASYNC110 - polled: the worker's state has no event
        return True

    async def _read_to_end(self, tps: list[TopicPartition]) -> None:
        consumer = self.consumer
        assert consumer is not None
        now = time.monotonic()

        def handle(tp: TopicPartition, msg: Any) -> None:
            self._record(tp.topic, tp.partition, msg.key, msg.value, now)
            self.read_to[(tp.topic, tp.partition)] = msg.offset

        await read_to_end(consumer, tps, handle)
        self._end = {tp: await consumer.position(tp) for tp in tps}

    # -- records ----------------------------------------------------------------------------
    def _record(self, topic: str, partition: int, key: bytes | None, value: bytes | None, now: float) -> None:
        kind = self.inputs.get(topic)
        if kind is not None:
            if value is None:
                return
            try:
                found = market_input(kind, value)
            except BadInput:
                metrics.count("risk_bad_inputs")
                return
            if found is not None:
                ts, instrument, seq, body = found
                self._push(topic, partition, kind, instrument, ts, seq, body, now)
            return
        if topic == self.topics.positions:
            self._position(key, value, partition, now)
        elif topic == self.topics.rules:
            self._rule_state(key, value, partition, now)
        elif topic == self.topics.collateral:
            self._collateral(key, value, partition, now)
        elif topic == self.topics.fills:
            self._fill(key, value, partition, now)
        elif topic in self.outputs:
            self._published(self.outputs[topic], key, value)

    def _push(self, topic: str, partition: int, kind: str, key: str, ts: int, seq: int, body: Input,
              now: float) -> None:
        self.marks.observe((topic, partition, key.partition(":")[0]), ts, now)
        if topic in self.inputs:
            self.market_max = max(self.market_max, ts)
        self._n += 1
        heapq.heappush(self.heap, (ts, RANK[kind], key, seq, self._n, kind, body))

    def _position(self, key: bytes | None, value: bytes | None, partition: int, now: float) -> None:
        """A position applies at its own ``ts`` (event time), like market data: so a recomputation
        after a restart puts it where it was. A tombstone has no time: it applies when read."""
        text = key.decode("utf-8", "replace") if key else ""
        try:
            record = pos.parse_record(key, value)
        except pos.PositionError as exc:
            self.bad_positions[text] = str(exc)
            metrics.count("risk_bad_positions")
            log.warning("positions %r: %s (not applied)", text, exc)
            return
        self.bad_positions.pop(text, None)
        position = record if record is not None and record.quantity != 0 else None
        if position is None:
            self.position_rows.pop(text, None)
        else:
            self.position_rows[text] = position.record()
        if record is None:  # a tombstone
            self._emit(self.engine.on_position(text, None))
            return
        self._push(self.topics.positions, partition, "position", text, record.ts, 0,
                   DeskEvent(text, record.ts, position=position), now)

    def _collateral(self, key: bytes | None, value: bytes | None, partition: int, now: float) -> None:
        """A balance applies at its own ``ts``; a tombstone (no time) when read."""
        text = key.decode("utf-8", "replace") if key else ""
        try:
            event = collateral_event(key, value)
        except pos.PositionError as exc:
            self.bad_positions[text] = f"collateral: {exc}"
            metrics.count("risk_bad_positions")
            log.warning("collateral %r: %s (not applied)", text, exc)
            return
        self.bad_positions.pop(text, None)
        if event.collateral is None:
            self.collateral_rows.pop(text, None)
            self.engine.on_collateral(text, None)
            return
        portfolio, _, currency = event.key.partition("|")
        self.collateral_rows[text] = pos.Collateral(portfolio, currency, event.collateral, event.ts_recv)
        self._push(self.topics.collateral, partition, "collateral", text, event.ts_recv, 0, event, now)

    def _fill(self, key: bytes | None, value: bytes | None, partition: int, now: float) -> None:
        """A signal's fill record applies at its ``ts`` (event time, like a position)."""
        try:
            event = fill_event(value)
        except BadInput as exc:
            metrics.count("risk_bad_fills")
            log.warning("hedge.fills %r: unreadable record (%s)", key, exc)
            return
        if event is None:
            return
        assert event.fill is not None
        self.fills[event.key] = event.fill
        self._push(self.topics.fills, partition, "fill", event.key, event.ts_recv, 0, event, now)

    def _rule_state(self, key: bytes | None, value: bytes | None, partition: int, now: float) -> None:
        if key is None or value is None:
            return
        rule_id = key.decode("utf-8", "replace")
        try:
            row: RuleState = records.decode(RISK_RULES, value)
        except msgspec.DecodeError as exc:
            log.warning("risk.rules %r: unreadable record (%s)", rule_id, exc)
            return
        if row.state not in STATES or rule_id not in self.engine.rules:
            log.warning("risk.rules %r: unknown rule or state %r (ignored)", rule_id, row.state)
            return
        self.rule_states[rule_id] = row
        self._push(self.topics.rules, partition, "rule-state", rule_id, row.ts, 0,
                   DeskEvent(rule_id, row.ts, state=row.state), now)

    def _published(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            body: RiskRecord = records.decode(topic, value)
        except msgspec.DecodeError as exc:
            log.warning("%s: a record this engine cannot read (%s)", topic, exc)
            return
        if self.unowned:
            slot = (topic, order_key((key or b"").decode("utf-8", "replace"), body))
            held = self.unowned.get(slot)
            if held is not None:
                # the owner publishes a rule's (a key's) records in order: what it published up to
                # this one is out, or was not to be
                held[:] = [h for h in held if h[0] > body.ts]
                if not held:
                    del self.unowned[slot]
        self._remember(topic, body)

    def _remember(self, topic: str, body: RiskRecord) -> None:
        if isinstance(body, HedgeSignal | HedgeBlocked):
            if body.id in self.done_ids:
                return
            self.done_ids.add(body.id)
            self.hedge_recent.append(body)
        key = latest_key(body)
        if self.restoring:
            self.restored_ts[(topic, key)] = max(body.ts, self.restored_ts.get((topic, key), -1))
        old = self.latest[topic].get(key)
        if old is None or body.ts >= old.ts:
            self.latest[topic][key] = body

    # -- event time ---------------------------------------------------------------------------
    def watermark(self, now: float) -> float:
        """Event time (ns) no input still to come can be older than (:class:`Watermark`), from
        the partitions still to be read (:meth:`_behind`) and the raw frames the worker still has to apply."""
        return self.marks.at(now, time.time_ns(), self._unread(), self.applying())

    def held_by(self) -> list[str]:
        """The inputs holding event time where it is (:meth:`Watermark.held_by`)."""
        if self.consumer is None:
            return ["not reading: the engine is starting"]
        return self.marks.held_by(time.monotonic(), time.time_ns(), self._unread(), self.applying())

    def _unread(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.assigned if self._behind(tp.topic, tp.partition)}

    def _behind(self, topic: str, partition: int) -> bool:
        """Records of the partition are still to be read, or may be: its end is not known, or
        not known lately (no fetch answered for it in ``RISK_IDLE_MS``: its leader is moving),
        or this worker still has records for it that Kafka has not acknowledged (its producer
        waits for a new leader), or it has records Kafka acknowledged that were not read here yet.
        A broker failover holds the engine instead of making the inputs it delays late."""
        consumer = self.consumer
        if consumer is None:
            return True
        tp = TopicPartition(topic, partition)
        high = consumer.highwater(tp)
        read_to = self.read_to.get((topic, partition), -1)
        if high is None or read_to + 1 < high:
            return True
        # This worker's own records acknowledged since the consumer last learnt the partition's
        # end: their event time may be older than what the other partitions show (a raw partition
        # applied behind the others in a replay), and its next fetch may be FETCH_WAIT_MS away.
        if read_to < self.acknowledged_to(topic, partition):
            return True
        polled = consumer.last_poll_timestamp(tp)
        if polled is None or time.time() * 1000 - polled > self.settings.risk.idle_ms:
            return True
        return self.undelivered(topic, partition)

    async def _release(self, now: float) -> None:
        # Positions and rule states wait for the market to reach their time: the desk's
        # instructions are sparse, and alone they do not say that no older market data is to
        # come (positions restored at a start, or written before a replay of the day they belong to).
        limit = min(self.watermark(now) - self.settings.risk.lateness_ms * 1_000_000, self.market_max)
        heap = self.heap
        engine = self.engine
        n = 0
        while heap and heap[0][0] <= limit:
            item = heapq.heappop(heap)
            if item[0] < engine.now:
                metrics.count("risk_late_inputs")  # behind the watermark: applied now, not in its place
            outs = engine.on_input(item[5], item[6])
            if outs:
                self._emit(outs)
            n += 1
            if n % SLICE == 0:
                await asyncio.sleep(0)  # never hold the loop for long: the hot path's latency is on it
        metrics.count("risk_inputs", n)

    def _emit(self, outs: list[Out]) -> None:
        for topic, key, body in outs:
            done = order_key(key, body)
            if isinstance(body, HedgeSignal | HedgeBlocked) and body.id in self.done_ids:
                continue  # published before (this worker before a restart, or another)
            ts = body.ts
            if ts <= self.restored_ts.get((topic, done), -1):
                continue  # a recomputation of what was published before the restart
            self._remember(topic, body)
            slot = (topic, done)
            if slot in self.unowned or not self.owns(owner_key(body)):
                # Another worker's to publish — or no one's at this moment (a rebalance): held
                # until read back from the owner's output, or published here if the partition
                # comes here first. (Behind earlier held ones of its rule: in order.)
                held = self.unowned.setdefault(slot, [])
                if topic not in ("risk.hedge", "alerts"):
                    held.clear()  # a latest value: only the latest matters
                held.append((ts, key, body))
                continue
            self._send(topic, key, body)

    def _send(self, topic: str, key: str, body: RiskRecord) -> None:
        metrics.count(f"risk_out.{topic}")
        # A rule's hedge records share one partition (of the rule id; their key is their own
        # id): delivered in order, so a restart that skips what is at or before the newest one
        # published (restored_ts) skips only records that were delivered.
        self.send(self.topics.name(topic), partition_for(order_key(key, body), self.settings.partitions), key,
                  records.encode(msgspec.structs.replace(body, ts_published=time.time_ns())))

    def _publish_held(self) -> None:
        """Publish the held records of partitions this worker owns now, once it has read every
        output partition to its end (what the previous owner delivered is read back by then,
        and not published again)."""
        ready = None
        for slot in list(self.unowned):
            held = self.unowned[slot]
            topic = slot[0]
            if not self.owns(owner_key(held[0][2])):
                continue
            if ready is None:
                ready = not any(self._behind(self.topics.name(t), p) for t in OUTPUTS
                                for p in range(self.settings.partitions))
            if not ready:
                return
            del self.unowned[slot]
            for _ts, key, body in held:
                self._send(topic, key, body)
            metrics.count("risk_held_published", len(held))

    # -- the web view -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """``/api/risk``: what the engine computed last, as JSON-ready values."""
        rules = []
        for run in self.engine.rules.values():
            state = self.rule_states.get(run.rule.id)
            rules.append({**run.rule.as_dict(), "state": run.rule.state, "state_by": state.by if state else None,
                          "blocked": run.blocked, "reduce_only_by": sorted(run.forced_by)})
        latest = {topic: sorted(bodies.items()) for topic, bodies in self.latest.items()}
        raised = [b for _, b in latest["alerts"] if isinstance(b, Alert) and b.state == "raised"]
        return {
            "exposure": msgspec.to_builtins([b for _, b in latest["risk.exposure"]]),
            "scenarios": msgspec.to_builtins([b for _, b in latest["risk.scenarios"]]),
            "margin": msgspec.to_builtins([b for _, b in latest["risk.margin"]]),
            "collateral": [{"portfolio": c.portfolio, "currency": c.currency, "amount": str(c.amount), "ts": c.ts}
                           for _, c in sorted(self.collateral_rows.items())],
            "in_flight": [{"signal": sid, "rule": f.rule, "portfolio": f.portfolio, "instrument": f.instrument,
                           "size": str(f.size), "filled": str(f.filled), "expires": f.expires}
                          for sid, f in sorted(self.engine.in_flight.items())],
            "fills": msgspec.to_builtins([f for _, f in sorted(self.fills.items(), key=lambda kv: kv[1].ts)][-50:]),
            "rules": rules,
            "hedge": msgspec.to_builtins(list(reversed(self.hedge_recent))),
            "alerts": msgspec.to_builtins(raised),
            "nbbo": msgspec.to_builtins([b for _, b in latest["nbbo"]]),
            "positions": msgspec.to_builtins([r for _, r in sorted(self.position_rows.items())]),
            "held": [{"portfolio": p.portfolio, "instrument": p.instrument, "quantity": str(p.quantity),
                      "avg_price": None if p.avg_price is None else str(p.avg_price)}
                     for _, book in sorted(self.engine.positions.items()) for _, p in sorted(book.items())],
            "bad_positions": dict(sorted(self.bad_positions.items())),
            "event_time": self.engine.now,
            "pending_inputs": len(self.heap),
            "inputs_read": self._n,
            "event_time_held_by": self.held_by(),
        }

    def set_rule_state(self, rule_id: str, state: str, by: str) -> None:
        """Publish a rule's new state on ``risk.rules`` (it applies when read back, on every worker)."""
        if rule_id not in self.engine.rules:
            raise KeyError(f"no rule {rule_id!r} (rules: {', '.join(sorted(self.engine.rules)) or 'none'})")
        self.send(self.topics.rules, partition_for(rule_id, self.settings.partitions), rule_id,
                  state_record(rule_id, state, by))
