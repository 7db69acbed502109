"""What became of each hedge signal: the compacted ``hedge.fills`` topic (key: the signal id).

An execution system answers each ``risk.hedge`` signal there: ``acked`` (working at the venue),
``partial`` / ``filled`` (``filled`` is the cumulative size), ``rejected``. The risk engine counts
a signal's unfilled size as in flight until it is filled, rejected or HEDGE_SIGNAL_TTL_S old, and a
fill changes the portfolio's position (app.risk.engine). Two writers come with bookstream:

* ``faust -A app hedge fill|ack|reject SIGNAL_ID`` — a desk answering by hand;
* ``faust -A app hedge paper`` — a paper executor (on in ``make run``): each signal, ``delay_s``
  after it arrives, is filled against the live hedge book (``risk.depth``) at the price walking
  the book gives, as much as the book can take; a signal with no book is rejected. Its fill is
  stamped when it is published (the wall clock; at least ``signal.ts + delay``): ahead of the
  engine's event time, so it is applied in its place, and a replay applies it at the same point.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from decimal import ROUND_DOWN, Decimal
from typing import Any

import msgspec

from app import records
from app.config import Settings
from app.decimals import decimal_text
from app.errors import BookstreamError
from app.kafka import partitions_of, producer, read_range, reading_consumer, stop_reading, wait_for_topic
from app.records import HEDGE_FILLS, RISK_DEPTH, RISK_HEDGE, HedgeFill, HedgeSignal, RiskDepth
from app.risk.rules import walk
from app.wire import partition_for

log = logging.getLogger(__name__)

DONE = ("filled", "rejected")


class ExecutionError(BookstreamError):
    """A fill, ack or reject that cannot be recorded (unknown signal, already answered, bad size)."""


def answer(signal: HedgeSignal, state: str, filled: Decimal, price: Decimal | None, by: str, reason: str = "",
           ts: int | None = None) -> HedgeFill:
    """A ``hedge.fills`` record for ``signal``, checked: ``filled`` (cumulative) within its size."""
    size = Decimal(signal.size)
    if filled < 0 or filled > size:
        raise ExecutionError(f"filled {filled} must be between 0 and the signal's size {size}")
    if state == "filled" and filled == 0:
        raise ExecutionError("a fill of 0: reject the signal instead")
    if price is not None and (not price.is_finite() or price <= 0):
        raise ExecutionError(f"price {price} must be positive")
    return HedgeFill(signal=signal.id, state=state, portfolio=signal.portfolio, instrument=signal.instrument,  # type: ignore[arg-type]
                     side=signal.side, filled=decimal_text(filled),
                     price=None if price is None else decimal_text(price), reason=reason,
                     ts=time.time_ns() if ts is None else ts, by=by)


async def find_signal(settings: Settings, signal_id: str) -> tuple[HedgeSignal, HedgeFill | None]:
    """The signal ``signal_id`` of ``risk.hedge`` and its latest ``hedge.fills`` record (both topics
    read to their end at once)."""
    found: list[HedgeSignal] = []
    latest: list[HedgeFill] = []
    key = signal_id.encode()
    hedge, fills = settings.topic(RISK_HEDGE), settings.topic(HEDGE_FILLS)
    consumer = await reading_consumer(settings)
    try:
        tps = []
        for topic in (hedge, fills):
            if not await wait_for_topic(consumer, topic):
                raise ExecutionError(f"topic {topic} does not exist yet: a worker creates it (faust -A app worker)")
            tps += await partitions_of(consumer, topic)
        consumer.assign(tps)
        begin, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        async for batch in read_range(consumer, begin, ends):
            for tp, msgs in batch.items():
                for msg in msgs:
                    if msg.key != key or msg.value is None:
                        continue
                    if tp.topic == fills:
                        latest.append(records.decode(HEDGE_FILLS, msg.value))
                    elif isinstance(body := records.decode(RISK_HEDGE, msg.value), HedgeSignal):
                        found.append(body)
    finally:
        await stop_reading(consumer)
    if not found:
        raise ExecutionError(f"no signal {signal_id!r} on {hedge} (a blocked record is no signal; ids are in "
                             "`faust -A app tail risk.hedge` and on /risk)")
    return found[-1], (latest[-1] if latest else None)


async def publish(settings: Settings, fills: list[HedgeFill]) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        topic = settings.topic(HEDGE_FILLS)
        for fill in fills:
            await prod.send(topic, records.encode(fill), key=fill.signal.encode(),
                            partition=partition_for(fill.signal, settings.partitions))
        await prod.flush()
    finally:
        await prod.stop()


# -- the paper executor ---------------------------------------------------------------------------
class PaperExecutor:
    """Fills every signal against the live hedge book ``delay_s`` after it arrives."""

    def __init__(self, settings: Settings, delay_s: float) -> None:
        self.settings = settings
        self.delay_ns = int(delay_s * 1e9)
        self.delay_s = delay_s
        self.depth: dict[str, RiskDepth] = {}
        self.answered: dict[str, HedgeFill] = {}
        self.due: list[tuple[float, int, HedgeSignal]] = []
        self._n = 0
        self.done = 0

    def _record(self, topic: str, value: bytes | None) -> None:
        if value is None:
            return
        try:
            if topic == self.settings.topic(RISK_DEPTH):
                depth: RiskDepth = records.decode(RISK_DEPTH, value)
                self.depth[depth.key] = depth
            elif topic == self.settings.topic(HEDGE_FILLS):
                fill: HedgeFill = records.decode(HEDGE_FILLS, value)
                self.answered[fill.signal] = fill
            else:
                body = records.decode(RISK_HEDGE, value)
                if isinstance(body, HedgeSignal) and body.id not in self.answered:
                    self._n += 1
                    heapq.heappush(self.due, (time.monotonic() + self.delay_s, self._n, body))
        except msgspec.DecodeError as exc:
            log.warning("%s: a record the paper executor cannot read (%s)", topic, exc)

    def fill(self, signal: HedgeSignal) -> HedgeFill:
        """The answer to ``signal`` now: what its hedge book can take, at the walked price."""
        size = Decimal(signal.size)
        depth = self.depth.get(signal.instrument)
        # stamped when published (at least the signal's time + the delay): a fill behind the engine's
        # event time would be applied late, not in its place, and a replay could differ
        when = max(signal.ts + self.delay_ns, time.time_ns())
        if depth is None:
            return answer(signal, "rejected", Decimal(0), None, "paper", f"no book of {signal.instrument}", when)
        levels = depth.asks if signal.side == "buy" else depth.bids
        price, fillable = walk(levels, float(size))
        # in the signal's own steps (its size is a whole number of lots): no float residue
        filled = min(size, Decimal(repr(fillable)).quantize(size, rounding=ROUND_DOWN))
        if price is None or filled <= 0:
            return answer(signal, "rejected", Decimal(0), None, "paper", f"{signal.instrument}: book empty", when)
        state = "filled" if filled == size else "partial"
        return answer(signal, state, filled, Decimal(f"{price:.12g}"), "paper", "", when)

    async def run(self, ttl_s: float, stop: asyncio.Event | None = None) -> None:
        settings = self.settings
        consumer = await reading_consumer(settings)
        prod = producer(settings)
        await prod.start()
        try:
            names = [settings.topic(t) for t in (HEDGE_FILLS, RISK_HEDGE, RISK_DEPTH)]
            for name in names:
                if not await wait_for_topic(consumer, name, timeout_s=60):
                    raise ExecutionError(f"topic {name} does not exist yet: a worker creates it (faust -A app worker)")
            tps = {name: await partitions_of(consumer, name) for name in names}
            consumer.assign([tp for part in tps.values() for tp in part])
            fills_tps = tps[names[0]]
            ends = await consumer.end_offsets(fills_tps)  # what was answered before: read first
            begin = await consumer.beginning_offsets(fills_tps)
            async for batch in read_range(consumer, begin, ends):
                for tp, msgs in batch.items():
                    for msg in msgs:
                        self._record(tp.topic, msg.value)
            since = int((time.time() - ttl_s) * 1000)  # signals still in flight
            for name in names[1:]:
                found = await consumer.offsets_for_times(dict.fromkeys(tps[name], since))
                last = await consumer.end_offsets(tps[name])
                for tp in tps[name]:
                    hit = found.get(tp)
                    consumer.seek(tp, hit.offset if hit is not None else last[tp])
            for tp in fills_tps:
                consumer.seek(tp, ends[tp])
            log.info("paper executor: filling hedge signals %.1f s after they arrive", self.delay_s)
            while stop is None or not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=1000)
                for tp, msgs in batches.items():
                    for msg in msgs:
                        self._record(tp.topic, msg.value)
                await self._due(prod)
        finally:
            await prod.stop()
            await stop_reading(consumer)

    async def _due(self, prod: Any) -> None:
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _, _, signal = heapq.heappop(self.due)
            if signal.id in self.answered:
                continue
            fill = self.fill(signal)
            self.answered[signal.id] = fill
            await prod.send_and_wait(self.settings.topic(HEDGE_FILLS), records.encode(fill), key=signal.id.encode(),
                                     partition=partition_for(signal.id, self.settings.partitions))
            self.done += 1
            log.info("paper: %s %s %s of %s at %s (signal %s)", fill.state, signal.side, fill.filled,
                     signal.instrument, fill.price, signal.id)
