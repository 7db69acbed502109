"""The risk engine in event time: market inputs in order → ``risk.*``, ``alerts``, ``nbbo`` records.

Deterministic by construction. Market inputs (``ticker``, ``book.top``, ``book.status``, risk
depth snapshots, ``ref.instruments``) are handed over in event-time order (their ``ts_recv``: the
receive time of the raw frame that produced them, kept verbatim by a replay), each instrument's
inputs only ever moving forward (a redelivered or republished record is ignored). Everything
is computed at **ticks**: the boundaries of ``RISK_INTERVAL_MS`` of event time (scenarios at
those of ``SCENARIO_INTERVAL_MS``); a tick at boundary b sees every input before b and is
computed when the first input at or after b arrives. So the same raw topics give the same
records, at any replay speed, on any worker. Positions and rule states are the desk's
instructions: they come in the same order, at their own ``ts`` (the service holds them until
the market inputs reach it), and a position change publishes the exposure at once
(``reason: position``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, NamedTuple

import numpy as np
from msgspec import UNSET

from app.decimals import decimal_text
from app.market import black76
from app.market.chain import Quote, coin_premium, finite_number
from app.market.instruments import Registry, Spec
from app.market.records import TICKER_FIELDS
from app.market.symbols import parse_option
from app.records import BookStatus, BookTop, InstrumentRecord, RiskDepth, TickerRecord
from app.records.risk import Exposure, ExposureLeg, HedgeBlocked, HedgeSignal, InputRef, RiskRecord, Scenarios
from app.risk import valuation
from app.risk.alerts import Alerts, AlertSettings
from app.risk.margin import LINEAR, MarginLeg
from app.risk.positions import Position
from app.risk.rules import Rule, Sizing, hedge_size, signal_id, walk, with_state

NS_PER_MS = 1_000_000
SYNCED = "synced"

#: An output: (topic name without prefix, record key, record body).
Out = tuple[str, str, RiskRecord]
#: Fields of a record that do not make it news: it is published again only when another changed.
_NOT_NEWS = ("inputs", "reason", "ts", "ts_published")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    interval_ms: int = 250  # RISK_INTERVAL_MS
    scenario_interval_ms: int = 1000  # SCENARIO_INTERVAL_MS
    max_input_age_ms: int = 30_000  # RISK_MAX_INPUT_AGE_MS
    moves: tuple[float, ...] = valuation.DEFAULT_MOVES
    vol_shifts: tuple[float, ...] = valuation.DEFAULT_VOL_SHIFTS
    alerts: AlertSettings = field(default_factory=AlertSettings)


@dataclass(slots=True)
class MarketTop:
    bid: float | None
    ask: float | None
    ts_recv: int
    seq: int


@dataclass(slots=True)
class RuleRun:
    """What a rule remembers between ticks."""

    rule: Rule
    last_signal: int = -(2**62)  # event time of its last signal
    recent: deque[int] = field(default_factory=deque)  # event times of its signals in the last minute
    blocked: str | None = None  # the reason of the blocked record last published (once per reason)


class DeskEvent(NamedTuple):
    """A position (None: gone) or a rule's state, set at ``ts_recv`` (event time)."""

    key: str  # <portfolio>|<instrument> or the rule id
    ts_recv: int
    position: Position | None = None
    state: str | None = None  # a rule's new state; None: a position


#: What the engine takes, in event-time order.
Input = InstrumentRecord | TickerRecord | BookTop | BookStatus | RiskDepth | DeskEvent


def instrument_key(record: TickerRecord | BookTop | BookStatus | RiskDepth) -> str:
    return record.key if isinstance(record, TickerRecord | RiskDepth) else f"{record.venue}:{record.instrument}"


def leg_kind(spec: Spec) -> str:
    if spec.kind == "option":
        return "option"
    return "inverse" if spec.margin == "inverse" else "linear"


def unit_size(spec: Spec) -> float:
    """Coins per unit (linear, option) or USD per unit (inverse) of a position's quantity."""
    if leg_kind(spec) == "inverse":
        # Deribit sizes inverse futures and perpetuals in USD; other venues in contracts
        return 1.0 if spec.key.startswith("deribit:") else float(spec.contract_size or 1)
    return float(spec.contract_size or 1) * float(spec.multiplier or 1)


class RiskEngine:
    def __init__(self, settings: EngineSettings, rules: list[Rule]) -> None:
        """Computes every portfolio: which worker publishes which is the service's choice."""
        self.conf = settings
        self.interval = settings.interval_ms * NS_PER_MS
        self.scenario_interval = settings.scenario_interval_ms * NS_PER_MS
        self.max_age = settings.max_input_age_ms * NS_PER_MS
        self.moves = np.array(settings.moves)
        self.vol_shifts = np.array(settings.vol_shifts)
        self.rules = {r.id: RuleRun(r) for r in rules}
        self.registry = Registry()
        self.tickers: dict[str, Quote] = {}
        self.tops: dict[str, MarketTop] = {}
        self.status: dict[str, str] = {}
        self.depth: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]], int]] = {}
        self.positions: dict[str, dict[str, Position]] = {}  # portfolio → instrument → position
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}  # (input kind, key) → latest (ts_recv, seq)
        self.now = 0  # event time of the latest input
        self.next_tick = 0
        self.next_scenario = 0
        self.published: dict[tuple[str, str], tuple[Any, ...]] = {}  # (topic, key) → last body's news
        self.alerts = Alerts(settings.alerts, self.registry)

    # -- inputs ----------------------------------------------------------------------------
    def on_input(self, kind: str, record: Input) -> list[Out]:
        """One input (in event-time order): ticks due before it, then its effects."""
        if isinstance(record, InstrumentRecord):
            self.registry.apply(Spec.from_record(record))
            return []
        ts = record.ts_recv or 0
        if isinstance(record, DeskEvent):  # the desk's instructions, at their own time
            out = self._ticks(ts)
            self.now = max(self.now, ts)
            if record.state is None:
                return out + self.on_position(record.key, record.position)
            self.on_rule_state(record.key, record.state)
            return out
        key = instrument_key(record)
        seq = record.seq if not isinstance(record, TickerRecord) else record.source.offset
        last = self.seen.get((kind, key))
        if last is not None and (ts, seq or 0) <= last:
            return []  # redelivered or republished: this instrument's inputs only move forward
        self.seen[(kind, key)] = (ts, seq or 0)
        out = self._ticks(ts)
        self.now = max(self.now, ts)
        if isinstance(record, TickerRecord):
            quote = self.tickers.get(key)
            if quote is None:
                quote = self.tickers[key] = Quote()
            quote.update({name: getattr(record, name) for name in TICKER_FIELDS}, record.ts_exchange, ts,
                         record.source)
            out += self.alerts.on_ticker(key, quote, ts)
        elif isinstance(record, BookTop):
            top = MarketTop(finite_number(record.bid_px), finite_number(record.ask_px), ts, seq or 0)
            self.tops[key] = top
            out += self.alerts.on_top(key, top.bid, top.ask, ts)
        elif isinstance(record, BookStatus):
            self.status[key] = record.state
            out += self.alerts.on_status(key, record.state, record.reason, ts)
        elif isinstance(record, RiskDepth):
            self.depth[key] = (record.bids, record.asks, ts)
        return out

    def on_position(self, key: str, position: Position | None) -> list[Out]:
        portfolio, _, instrument = key.partition("|")
        book = self.positions.setdefault(portfolio, {})
        before = book.get(instrument)
        if position is None:
            book.pop(instrument, None)
        else:
            book[instrument] = position
        if before == position:
            return []
        if self.now == 0:
            return []
        spec = self.spec(instrument, self.now)
        return [] if spec is None else self._exposure(portfolio, spec.base, self.now, "position")

    def on_rule_state(self, rule_id: str, state: str) -> bool:
        run = self.rules.get(rule_id)
        if run is None:
            return False
        run.rule = with_state(run.rule, state)
        run.blocked = None
        return True

    # -- ticks -------------------------------------------------------------------------------
    def _ticks(self, ts: int) -> list[Out]:
        if ts < self.next_tick:
            return []
        boundary = ts - ts % self.interval
        out: list[Out] = []
        if self.next_tick:  # the first input only starts the clock
            scenarios = boundary >= self.next_scenario
            out += self.tick(boundary, scenarios)
            if scenarios:
                self.next_scenario = boundary - boundary % self.scenario_interval + self.scenario_interval
        else:
            self.next_scenario = boundary - boundary % self.scenario_interval + self.scenario_interval
        self.next_tick = boundary + self.interval
        return out

    def tick(self, t: int, scenarios: bool) -> list[Out]:
        out: list[Out] = []
        for portfolio in sorted(self.positions):
            for underlying in self._underlyings(portfolio, t):
                out += self._exposure(portfolio, underlying, t, "interval", scenarios)
        for run in self.rules.values():  # a rule naming a portfolio that holds nothing
            if not self.positions.get(run.rule.portfolio):
                why = f"unknown portfolio {run.rule.portfolio!r}: it holds no positions"
                out += self._blocked(run, t, 0.0, why, [])
        out += self.alerts.tick(t, self.tops, self.status, self.max_age)
        return out

    def spec(self, key: str, t: int) -> Spec | None:
        """The terms in force at t (the first version for times before it: a list fetched a
        moment after the first ticker still describes it)."""
        versions = self.registry.versions.get(key)
        return (self.registry.at(key, t) or versions[0]) if versions else None

    def _underlyings(self, portfolio: str, t: int) -> list[str]:
        names = set()
        for instrument in self.positions.get(portfolio, {}):
            spec = self.spec(instrument, t)
            if spec is not None:
                names.add(spec.base)
        names |= {run.rule.underlying for run in self.rules.values() if run.rule.portfolio == portfolio}
        return sorted(names)

    # -- exposure ----------------------------------------------------------------------------
    def _price(self, key: str, spec: Spec, t: int) -> tuple[float | None, list[str], InputRef]:
        """(USD price, flags, input reference) of a future, perpetual or spot instrument."""
        flags: list[str] = []
        quote = self.tickers.get(key)
        top = self.tops.get(key)
        price = quote.number("mark") if quote is not None else None
        ref: InputRef
        if price is not None and quote is not None:
            ref = InputRef(key=key, input="ticker", field="mark", ts_recv=quote.ts_recv, source=quote.source or UNSET)
            age_from = quote.ts_recv
        elif top is not None and top.bid is not None and top.ask is not None:
            price = (top.bid + top.ask) / 2
            ref = InputRef(key=key, input="book.top", field="mid", ts_recv=top.ts_recv, seq=top.seq)
            age_from = top.ts_recv
        else:
            return None, ["missing"], InputRef(key=key)
        flags += self._book_flags(key, t, age_from)
        return price, flags, ref

    def _book_flags(self, key: str, t: int, age_from: int) -> list[str]:
        flags = []
        state = self.status.get(key)
        if state is not None and state != SYNCED:
            flags.append("stale")
        top = self.tops.get(key)
        if top is not None and top.bid is not None and top.ask is not None and top.bid >= top.ask:
            flags.append("crossed")
        if t - age_from > self.max_age:
            flags.append("old")
        return flags

    def _option(self, key: str, spec: Spec, t: int) -> tuple[dict[str, Any] | None, list[str], InputRef]:
        quote = self.tickers.get(key)
        if quote is None:
            return None, ["missing"], InputRef(key=key)
        ref = InputRef(key=key, input="ticker", ts_recv=quote.ts_recv, source=quote.source or UNSET)
        f = quote.number("underlying_price") or quote.number("index")
        strike = float(spec.strike) if spec.strike else None
        expiry = spec.expiry_ns
        opt = parse_option(key.partition(":")[2])
        if strike is None and opt is not None:
            strike, expiry = opt.strike, opt.expiry_ns
        if f is None or strike is None or expiry is None:
            return None, ["missing"], ref
        years = (expiry - t) / valuation.YEAR_NS
        if years <= 0:
            return None, ["expired"], ref
        call = (spec.option_type or ("call" if opt is None or opt.call else "put")) == "call"
        flags = self._book_flags(key, t, quote.ts_recv)
        mark = quote.number("mark")
        sigma = None
        if mark is not None:
            usd = mark * f if opt is not None and coin_premium(key.partition(":")[0], opt) else mark
            iv, ok = black76.implied_vol(usd, f, strike, years, call)
            if bool(ok):
                sigma = float(iv)
        if sigma is None:
            sigma = quote.number("mark_iv")
            if sigma is None:
                return None, [*flags, "no-iv"], ref
            flags.append("venue-iv")
        venue = {g: quote.number(g) for g in ("delta", "gamma", "vega", "theta")}
        return {"f": f, "strike": strike, "t": years, "sigma": sigma, "call": call, "venue": venue}, flags, ref

    def legs(self, portfolio: str, underlying: str, t: int) -> tuple[list[valuation.Leg], dict[str, list[str]],
                                                                   list[InputRef], list[str]]:
        """The priced legs of ``underlying``, the flags of its inputs, their references, and the
        portfolio's instruments the registry does not know."""
        legs: list[valuation.Leg] = []
        flags: dict[str, list[str]] = {}
        refs: list[InputRef] = []
        unknown: list[str] = []
        for instrument, pos in sorted(self.positions.get(portfolio, {}).items()):
            spec = self.spec(instrument, t)
            if spec is None:
                unknown.append(instrument)
                continue
            if spec.base != underlying:
                continue
            kind = leg_kind(spec)
            qty = float(pos.quantity)
            if kind == "option":
                priced, fl, ref = self._option(instrument, spec, t)
                if priced is not None:
                    legs.append(valuation.Leg(instrument, kind, qty, unit_size(spec), priced["f"], priced["strike"],
                                              priced["call"], priced["t"], priced["sigma"], priced["venue"]))
            else:
                price, fl, ref = self._price(instrument, spec, t)
                if price is not None:
                    legs.append(valuation.Leg(instrument, kind, qty, unit_size(spec), price))
            refs.append(ref)
            if fl:
                flags[instrument] = fl
        return legs, flags, refs, unknown

    def margin_legs(self, portfolio: str, t: int) -> tuple[list[MarginLeg], dict[str, list[str]], list[str]]:
        """Every priced position of ``portfolio`` as the margin methods take it (app.risk.margin),
        the flags of their inputs (stale, old, missing…), and the instruments it could not price
        or the registry does not know."""
        legs: list[MarginLeg] = []
        flags: dict[str, list[str]] = {}
        left_out: list[str] = []
        for underlying in self._underlyings(portfolio, t):
            priced, fl, _refs, unknown = self.legs(portfolio, underlying, t)
            flags.update(fl)
            left_out += unknown
            seen = {leg.key for leg in priced}
            left_out += [k for k in self.positions.get(portfolio, {}) if k not in seen and k in fl
                         and (spec := self.spec(k, t)) is not None and spec.base == underlying]
            for leg in priced:
                spec = self.spec(leg.key, t)
                assert spec is not None
                if spec.kind == "spot":
                    continue  # held, not margined
                quote = self.tickers.get(leg.key)
                index = (quote.number("index") if quote is not None else None) or leg.price
                if leg.kind == "option":
                    mark = quote.number("mark") if quote is not None else None
                    opt = parse_option(leg.key.partition(":")[2])
                    in_coin = opt is not None and coin_premium(leg.key.partition(":")[0], opt)
                    if mark is not None and in_coin:
                        settle_mark = mark  # the venue's own mark, in coin (Deribit's formulas take it so)
                    else:
                        usd = mark if mark is not None else float(
                            black76.price(leg.price, leg.strike, leg.t, leg.sigma, leg.call))
                        settle_mark = usd / index if spec.settle.upper() not in LINEAR else usd
                    legs.append(MarginLeg(leg.key, "option", spec.settle, leg.coins, index, leg.price, leg.strike,
                                          leg.call, leg.t * 365.0, leg.sigma, settle_mark))
                else:
                    coins = leg.coins / leg.price if leg.kind == "inverse" else leg.coins
                    days = max(0.0, (spec.expiry_ns - t) / 86_400e9) if spec.expiry_ns else 0.0
                    legs.append(MarginLeg(leg.key, spec.kind if spec.kind in ("future", "perpetual") else "future",
                                          spec.settle, coins, index, leg.price, days=days))
        return legs, flags, sorted(set(left_out))

    def _exposure(self, portfolio: str, underlying: str, t: int, reason: str, scenarios: bool = False) -> list[Out]:
        legs, flags, refs, unknown = self.legs(portfolio, underlying, t)
        book = valuation.Book(legs)
        exp = book.exposure()
        key = f"{portfolio}|{underlying}"
        body = Exposure(
            portfolio=portfolio, underlying=underlying,
            **{k: _round(v) for k, v in exp.items() if k not in ("legs", "venue")},
            venue={k: _round(v) for k, v in exp["venue"].items()},
            positions=[ExposureLeg(instrument=leg.key, quantity=str(self.positions[portfolio][leg.key].quantity),
                                   price=_round(leg.price), **{k: _round(v) for k, v in exp["legs"][leg.key].items()})
                       for leg in legs],
            flags=flags, unknown=unknown, ok=not flags and not unknown, inputs=refs, reason=reason, ts=t)
        out: list[Out] = []
        if self._changed("risk.exposure", key, body) or reason == "position":
            out.append(("risk.exposure", key, body))
        if scenarios:
            grid = book.scenarios(self.moves, self.vol_shifts)
            sbody = Scenarios(portfolio=portfolio, underlying=underlying, moves=list(self.conf.moves),
                              vol_shifts=list(self.conf.vol_shifts),
                              pnl_usd=[[_round(float(v)) for v in row] for row in grid],
                              worst_usd=_round(float(grid.min())) if grid.size else 0.0, flags=flags,
                              ok=not flags and not unknown, inputs=refs, ts=t)
            if self._changed("risk.scenarios", key, sbody):
                out.append(("risk.scenarios", key, sbody))
        if reason == "interval":
            out += self._rules(portfolio, underlying, t, exp, flags, unknown, refs)
        return out

    def _changed(self, topic: str, key: str, body: Exposure | Scenarios) -> bool:
        """Whether ``body`` says something new (its inputs, cause and time aside)."""
        plain = tuple(getattr(body, f) for f in body.__struct_fields__ if f not in _NOT_NEWS)
        if self.published.get((topic, key)) == plain:
            return False
        self.published[(topic, key)] = plain
        return True

    # -- hedge rules ---------------------------------------------------------------------------
    def _rules(self, portfolio: str, underlying: str, t: int, exp: dict[str, Any], flags: dict[str, list[str]],
               unknown: list[str], refs: list[InputRef]) -> list[Out]:
        out: list[Out] = []
        for run in self.rules.values():
            rule = run.rule
            if (rule.portfolio, rule.underlying) != (portfolio, underlying):
                continue
            value = float(exp.get(rule.greek, 0.0))
            if rule.state == "halted":
                if abs(value) > rule.trigger:
                    out += self._blocked(run, t, value, "rule halted", refs)
                continue
            if abs(value) <= rule.trigger:
                run.blocked = None  # back inside the band: a later block is news again
                continue
            while run.recent and run.recent[0] <= t - 60_000 * NS_PER_MS:
                run.recent.popleft()
            if t - run.last_signal < rule.cooldown_s * 1e9:
                continue
            reasons = [f"{k} {','.join(v)}" for k, v in sorted(flags.items())]
            reasons += [f"{k} unknown instrument" for k in unknown]
            hedge = self.spec(rule.hedge, t)
            hedge_ref = InputRef(key=rule.hedge)
            per_unit = None
            if hedge is None:
                reasons.append(f"{rule.hedge} unknown instrument")
            else:
                per_unit, hflags, hedge_ref = self._per_unit(rule, hedge, t)
                if hflags:
                    reasons.append(f"{rule.hedge} {','.join(hflags)}")
            if reasons:
                out += self._blocked(run, t, value, "; ".join(reasons), refs)
                continue
            if len(run.recent) >= rule.max_per_minute:
                out += self._blocked(run, t, value, f"max_per_minute {rule.max_per_minute} reached", refs)
                continue
            assert hedge is not None
            assert per_unit is not None
            pos = self.positions.get(portfolio, {}).get(rule.hedge)
            sizing = Sizing(per_unit, Decimal(hedge.lot_size or hedge.contract_size or "1"),
                            Decimal(hedge.min_size or "0"), pos.quantity if pos else Decimal(0))
            size, why = hedge_size(value, rule, sizing)
            if why is not None:
                out += self._blocked(run, t, value, why, refs)
                continue
            out.append(self._signal(run, t, value, size, per_unit, refs, hedge_ref))
        return out

    def _per_unit(self, rule: Rule, hedge: Spec, t: int) -> tuple[float | None, list[str], InputRef]:
        """The rule's greek per unit of the hedge instrument now, and the hedge book's flags."""
        if leg_kind(hedge) == "option":
            priced, flags, ref = self._option(rule.hedge, hedge, t)
            if priced is None:
                return None, flags, ref
            leg = valuation.Leg(rule.hedge, "option", 1.0, unit_size(hedge), priced["f"], priced["strike"],
                                priced["call"], priced["t"], priced["sigma"])
            per = valuation.Book([leg]).exposure()
            value = per["delta_usd" if rule.greek == "delta_usd" else rule.greek]
        else:
            price, flags, ref = self._price(rule.hedge, hedge, t)
            if price is None:
                return None, flags, ref
            d = valuation.per_unit_delta(leg_kind(hedge), unit_size(hedge), price)
            value = {"delta": d, "delta_usd": d * price}.get(rule.greek, 0.0)
        depth = self.depth.get(rule.hedge)
        if depth is None:
            flags = [*flags, "no-depth"]
        elif t - depth[2] > self.max_age:
            flags = [*flags, "old-depth"]
        return value, flags, ref

    def _blocked(self, run: RuleRun, t: int, value: float, reason: str, refs: list[InputRef]) -> list[Out]:
        if run.blocked == reason:
            return []
        run.blocked = reason
        rule = run.rule
        body = HedgeBlocked(id=signal_id(rule, t), rule=rule.id, portfolio=rule.portfolio, underlying=rule.underlying,
                            greek=rule.greek, exposure=_round(value), reason=reason, state=rule.state,
                            band=[-rule.trigger, rule.trigger], target=rule.target, ts=t, inputs=refs)
        return [("risk.hedge", body.id, body)]

    def _signal(self, run: RuleRun, t: int, value: float, size: Decimal, per_unit: float,
                refs: list[InputRef], hedge_ref: InputRef) -> Out:
        rule = run.rule
        run.last_signal = t
        run.recent.append(t)
        run.blocked = None
        side: Literal["buy", "sell"] = "buy" if size > 0 else "sell"
        bids, asks, depth_ts = self.depth[rule.hedge]
        levels = asks if side == "buy" else bids
        price, filled = walk(levels, float(abs(size)))
        mid = None
        if bids and asks:
            mid = (float(bids[0][0]) + float(asks[0][0])) / 2
        slippage = None
        if price is not None and mid:
            slippage = (price - mid) / mid * 1e4 * (1 if side == "buy" else -1)
        after = value + float(size) * per_unit
        body = HedgeSignal(
            id=signal_id(rule, t), rule=rule.id, portfolio=rule.portfolio, underlying=rule.underlying, greek=rule.greek,
            instrument=rule.hedge, side=side, size=decimal_text(abs(size)), exposure_before=_round(value),
            exposure_after=_round(after), band=[-rule.trigger, rule.trigger], target=rule.target, state=rule.state,
            expected_price=_round(price), mid=_round(mid), slippage_bps=_round(slippage), fillable=_round(filled),
            depth_ts_recv=depth_ts,
            reason=(f"{rule.greek} {value:.6g} outside ±{rule.trigger:g}: "
                    f"hedge to {math.copysign(rule.target, value):g}"),
            ts=t, inputs=[*refs, hedge_ref])
        return "risk.hedge", body.id, body


def _round(value: Any) -> Any:
    """12 significant digits: the same inputs give the same text on every machine."""
    if value is None or not isinstance(value, float):
        return value
    if not math.isfinite(value):
        return None
    return float(f"{value:.12g}")
