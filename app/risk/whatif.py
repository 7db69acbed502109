"""``faust -A app margin simulate``: every margin component of a hypothetical book at the market
of now or of a past instant — the desk's "can I add this trade" question, as the venues'
simulators answer it (app.risk.margin).

The market is read from the topics as the risk engine reads it: the instrument registry whole,
and ``book.status``, ``book.top`` and ``ticker`` from ``lookback`` seconds (Kafka's record time)
before the instant, each input applied in event-time order up to the instant, into a risk engine
with no rules; the book is priced by that engine (app.risk.engine.RiskEngine.margin_legs) with the
same flags as exposure (stale, old, missing…): a position it cannot price is listed, never
margined as zero.
"""

from __future__ import annotations

import heapq
from typing import Any

from app.errors import BookstreamError
from app.kafka import partitions_of, read_range, reading_consumer, stop_reading
from app.records import BOOK_STATUS, BOOK_TOP, REF_INSTRUMENTS, TICKER
from app.risk.engine import RiskEngine
from app.risk.margin import (
    FRACTION_METHODS,
    MarginLeg,
    bybit_usdc_option,
    deribit_portfolio,
    deribit_standard,
    fraction_margin,
    is_finite,
    okx_portfolio,
)
from app.risk.positions import Position
from app.risk.service import RANK, BadInput, engine_settings, market_input

MARKET = (REF_INSTRUMENTS, BOOK_STATUS, BOOK_TOP, TICKER)


async def market_at(settings: Any, at: int, lookback_s: float) -> tuple[RiskEngine, int]:
    """A risk engine without rules holding the market as it was at ``at`` (ns), and how many
    inputs it took."""
    engine = RiskEngine(engine_settings(settings), [])
    heap: list[tuple[int, int, str, int, int, str, Any]] = []
    consumer = await reading_consumer(settings)
    try:
        names = await consumer.topics()
        for kind in MARKET:
            topic = settings.topic(kind)
            if topic not in names:
                if kind == REF_INSTRUMENTS:
                    raise BookstreamError(f"no topic {topic} on {settings.kafka_bootstrap}: a worker writes the "
                                          "instrument registry (faust -A app worker)")
                continue
            tps = await partitions_of(consumer, topic)
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            begin = await consumer.beginning_offsets(tps)
            if kind != REF_INSTRUMENTS:  # the registry whole; market data from the lookback
                found = await consumer.offsets_for_times(dict.fromkeys(tps, max(0, (at // 1_000_000)
                                                                                  - int(lookback_s * 1000))))
                begin = {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps}
            async for batch in read_range(consumer, begin, ends):
                for msgs in batch.values():
                    for msg in msgs:
                        if msg.value is None:
                            continue
                        try:
                            item = market_input(kind, msg.value)
                        except BadInput:
                            continue
                        if item is not None and item[0] <= at:
                            ts, key, seq, body = item
                            heap.append((ts, RANK[kind], key, seq, len(heap), kind, body))
    finally:
        await stop_reading(consumer)
    heapq.heapify(heap)
    taken = len(heap)
    while heap:
        entry = heapq.heappop(heap)
        engine.on_input(entry[5], entry[6])
    return engine, taken


def simulate(engine: RiskEngine, book: list[Position], at: int, params: dict[str, Any]) -> dict[str, Any]:
    """Every portfolio of ``book`` margined by each venue's methods at ``at`` (JSON-ready)."""
    for p in book:
        engine.on_position(p.key, p if p.quantity != 0 else None)
    out: dict[str, Any] = {}
    for portfolio in sorted({p.portfolio for p in book}):
        legs, flags, left_out, _refs = engine.margin_legs(portfolio, at)
        by_venue: dict[str, list[MarginLeg]] = {}
        for leg in legs:
            by_venue.setdefault(leg.key.partition(":")[0], []).append(leg)
        venues: dict[str, Any] = {}
        for venue, group in sorted(by_venue.items()):
            venues[venue] = _venue(venue, group, params)
        out[portfolio] = {"venues": venues, "flags": flags, "not_priced": left_out,
                          "legs": [_leg(leg) for leg in legs]}
        if not is_finite(out[portfolio]):
            raise BookstreamError(f"portfolio {portfolio}: a margin figure is not a number (an input without a "
                                  "price?): see its flags")
    return out


def _leg(leg: MarginLeg) -> dict[str, Any]:
    option = leg.kind == "option"
    return {"key": leg.key, "kind": leg.kind, "coins": leg.coins, "settlement": leg.settlement, "index": leg.index,
            "price": leg.price, "mark": leg.mark if option else None, "iv": leg.sigma if option else None,
            "days": leg.days}


def _venue(venue: str, legs: list[MarginLeg], params: dict[str, Any]) -> dict[str, Any]:
    if venue == "deribit":
        return {"deribit-standard": deribit_standard(legs, params),
                "deribit-portfolio": deribit_portfolio(legs, params)}
    if venue == "bybit":
        rows = [bybit_usdc_option(leg, params) for leg in legs if leg.kind == "option" and not leg.inverse]
        return {"bybit-usdc-options": {
            "method": "bybit-usdc-options", "currencies": {"USDC": {"im": sum(r.im for r in rows),
                                                                    "mm": sum(r.mm for r in rows)}},
            "legs": [{"key": r.key, "im": r.im, "mm": r.mm, **r.detail} for r in rows],
            "not_margined": [leg.key for leg in legs if leg.kind != "option" or leg.inverse]}}
    if venue == "okx":
        return {"okx-portfolio": okx_portfolio(legs, params)}
    if venue in FRACTION_METHODS:
        return {FRACTION_METHODS[venue]: fraction_margin(venue, legs)}
    return {"none": {"method": None, "reason": f"no margin method for {venue}", "legs": [leg.key for leg in legs]}}


def rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """One table row per portfolio, venue, method and currency: IM, MM and the main components."""
    out: list[tuple[str, ...]] = []
    for portfolio, body in result.items():
        for venue, methods in body["venues"].items():
            for method, figures in methods.items():
                if method == "okx-portfolio":
                    out.append((portfolio, venue, method, "USD", _num(figures["im"]), _num(figures["mm"]),
                                " ".join(f"{k} {_num(figures[k])}" for k in ("MR1", "MR2", "MR3", "MR6", "MR7"))))
                    continue
                for currency, total in (figures.get("currencies") or {}).items():
                    parts = "" if method != "deribit-portfolio" else " ".join(
                        f"{k} {_num(total[k])}" for k in ("worst_case", "roll_shock", "delta_shock",
                                                          "correlation_contingency"))
                    out.append((portfolio, venue, method, currency, _num(total["im"]), _num(total["mm"]), parts))
    return out


def _num(value: float) -> str:
    return f"{value:.10g}"
