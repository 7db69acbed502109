"""The risk engine in event time: market inputs in order → ``risk.*``, ``alerts``, ``nbbo`` records.

Deterministic by construction. Market inputs (``ticker``, ``book.top``, ``book.status``, risk
depth snapshots, ``ref.instruments``) are handed over in event-time order (their ``ts_recv``: the
receive time of the raw frame that produced them, kept verbatim by a replay), each instrument's
inputs only ever moving forward (a redelivered or republished record is ignored). Everything
is computed at **ticks**: the boundaries of ``RISK_INTERVAL_MS`` of event time (scenarios at
those of ``SCENARIO_INTERVAL_MS``); a tick at boundary b sees every input before b and is
computed when the first input at or after b arrives. So the same raw topics give the same
records, at any replay speed, on any worker. Positions, collateral, hedge fills and rule states
are the desk's instructions: they come in the same order, at their own ``ts`` (the service holds
them until the market inputs reach it), and a position change publishes the exposure at once
(``reason: position``; a fill: ``reason: fill``).

Margin (``risk.margin``) is computed at every tick per portfolio, venue and settlement currency
by the venue's method (app.risk.margin), with equity = collateral + P&L realized by fills since
the collateral record + the positions' unrealized P&L at the venue's mark. A hedge signal's
unfilled size counts as **in flight** until a fill record says it is filled or rejected, or
``HEDGE_SIGNAL_TTL_S`` of event time passes: a rule does not fire again for exposure already
being hedged.
"""

from __future__ import annotations

import math
import operator
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
from app.records.risk import (
    Exposure,
    ExposureLeg,
    HedgeBlocked,
    HedgeFill,
    HedgeSignal,
    InputRef,
    MarginRecord,
    RiskRecord,
    Scenarios,
)
from app.risk import valuation
from app.risk.alerts import Alerts, AlertSettings
from app.risk.margin import LINEAR, MarginLeg, account_margin, load_params, published_fractions
from app.risk.positions import Position
from app.risk.rules import MARGIN_RATIO, Rule, Sizing, hedge_size, signal_id, walk, with_state

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
    signal_ttl_s: float = 60.0  # HEDGE_SIGNAL_TTL_S
    deribit_margin: str = "standard"  # RISK_DERIBIT_MARGIN: standard | portfolio
    margin_params: dict[str, Any] | None = field(default=None, compare=False)  # MARGIN_PARAMS_FILE's; None: bundled


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
    forced_by: set[str] = field(default_factory=set)  # margin rules holding it reduce-only (reduce_only_above)


@dataclass(slots=True)
class Flight:
    """A hedge signal not yet answered: its unfilled size counts as in flight until ``expires``."""

    rule: str
    portfolio: str
    instrument: str
    size: Decimal  # signed, the signal's
    filled: Decimal  # cumulative, unsigned
    expires: int  # event time

    def remaining(self) -> Decimal:
        left = max(abs(self.size) - self.filled, Decimal(0))
        return left if self.size > 0 else -left


class DeskEvent(NamedTuple):
    """A position (None: gone), a rule's state, a collateral balance or a hedge fill, set at
    ``ts_recv`` (event time)."""

    key: str  # <portfolio>|<instrument>, the rule id, <portfolio>|<currency> or the signal id
    ts_recv: int
    position: Position | None = None
    state: str | None = None  # a rule's new state; None: a position
    collateral: Decimal | None = None  # with what="collateral" (None: the balance is gone)
    fill: HedgeFill | None = None
    what: str = ""  # "collateral"; "" for the others (told apart by their fields)


#: What the engine takes, in event-time order.
Input = InstrumentRecord | TickerRecord | BookTop | BookStatus | RiskDepth | DeskEvent


#: A ticker record's TICKER_FIELDS values, in that order, in one call.
_ticker_values = operator.attrgetter(*TICKER_FIELDS)


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


def pnl(spec: Spec, quantity: float, avg: float, price: float) -> float:
    """P&L of ``quantity`` (signed, in the position's units) from ``avg`` to ``price``, in the
    settlement currency: inverse contracts USD × (1/avg − 1/price) in coin; linear contracts and
    options coins × (price − avg) in their price's currency (Deribit's coin options: coin)."""
    if leg_kind(spec) == "inverse":
        return quantity * unit_size(spec) * (1 / avg - 1 / price)
    return quantity * unit_size(spec) * (price - avg)


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
        self.params = settings.margin_params if settings.margin_params is not None else load_params()
        self.ttl = int(settings.signal_ttl_s * 1e9)
        self.collateral: dict[tuple[str, str], float] = {}  # (portfolio, currency) → balance
        self.realized: dict[tuple[str, str], float] = {}  # (portfolio, currency) → P&L of fills since the balance
        self.in_flight: dict[str, Flight] = {}  # signal id → what is not answered yet
        self.filled: dict[str, Decimal] = {}  # signal id → the cumulative size of fills applied
        self.margins: dict[tuple[str, str, str], MarginRecord] = {}  # (portfolio, venue, currency) → latest
        self._memo: dict[tuple[str, str, int], Any] | None = None  # legs priced during a tick

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
            if record.fill is not None:
                return out + self.on_fill(record.fill)
            if record.what == "collateral":
                self.on_collateral(record.key, record.collateral)
                return out
            if record.state is None:
                return out + self.on_position(record.key, record.position)
            self.on_rule_state(record.key, record.state)
            return out
        # Every top and ticker of every instrument comes here: a ticker's fields are taken in one
        # call and merged in C (with the rest, 7.9 → 6.6 µs an input in process)
        key = instrument_key(record)
        stamp = (ts, (record.source.offset if isinstance(record, TickerRecord) else record.seq) or 0)
        slot = (kind, key)
        last = self.seen.get(slot)
        if last is not None and stamp <= last:
            return []  # redelivered or republished: this instrument's inputs only move forward
        self.seen[slot] = stamp
        out = self._ticks(ts) if ts >= self.next_tick else []
        if ts > self.now:
            self.now = ts
        if isinstance(record, TickerRecord):
            quote = self.tickers.get(key)
            if quote is None:
                quote = self.tickers[key] = Quote()
            quote.merge(TICKER_FIELDS, _ticker_values(record), record.ts_exchange, ts, record.source)
            out += self.alerts.on_ticker(key, quote, ts)
        elif isinstance(record, BookTop):
            top = MarketTop(finite_number(record.bid_px), finite_number(record.ask_px), ts, stamp[1])
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

    def on_collateral(self, key: str, amount: Decimal | None) -> None:
        """A balance is the venue's account figure: it includes what earlier fills realized."""
        portfolio, _, currency = key.partition("|")
        slot = (portfolio, currency.upper())
        if amount is None:
            self.collateral.pop(slot, None)
        else:
            self.collateral[slot] = float(amount)
        self.realized.pop(slot, None)

    def on_fill(self, fill: HedgeFill) -> list[Out]:
        """A signal's fill record: the size filled since its previous record changes the position
        (at the fill's price: a reduction realizes P&L); filled or rejected ends its flight."""
        total = Decimal(fill.filled)
        before = self.filled.get(fill.signal, Decimal(0))
        self.filled[fill.signal] = max(total, before)
        flight = self.in_flight.get(fill.signal)
        if flight is not None:
            flight.filled = max(total, flight.filled)
            if fill.state in ("filled", "rejected"):
                del self.in_flight[fill.signal]
        if total <= before:
            return []
        size = total - before if fill.side == "buy" else before - total
        price = Decimal(fill.price) if fill.price is not None else None
        return self.trade(fill.portfolio, fill.instrument, size, price, self.now)

    def trade(self, portfolio: str, instrument: str, size: Decimal, price: Decimal | None, t: int) -> list[Out]:
        """``size`` (signed) of ``instrument`` bought or sold at ``price``: the position and its
        average price change, and what a reduction closes is realized in the settlement currency."""
        book = self.positions.setdefault(portfolio, {})
        old = book.get(instrument)
        q0 = old.quantity if old is not None else Decimal(0)
        a0 = old.avg_price if old is not None else None
        q1 = q0 + size
        spec = self.spec(instrument, t)
        if q0 == 0:
            avg = price
        elif (q0 > 0) == (size > 0):  # added to (an unknown average stays unknown)
            avg = None if a0 is None or price is None else (a0 * abs(q0) + price * abs(size)) / abs(q1)
        else:
            closed = min(abs(size), abs(q0)) * (1 if q0 > 0 else -1)
            if spec is not None and a0 is not None and price is not None:
                slot = (portfolio, spec.settle.upper())
                self.realized[slot] = self.realized.get(slot, 0.0) + pnl(spec, float(closed), float(a0), float(price))
            avg = a0 if abs(size) <= abs(q0) else price
        if q1 == 0:
            book.pop(instrument, None)
        else:
            book[instrument] = Position(portfolio, instrument, q1, avg, t)
        return [] if spec is None or self.now == 0 else self._exposure(portfolio, spec.base, self.now, "fill")

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
        self._memo = {}  # no input arrives during a tick: a portfolio's legs are priced once (margin, exposure)
        try:
            return self._tick(t, scenarios)
        finally:
            self._memo = None

    def _tick(self, t: int, scenarios: bool) -> list[Out]:
        out: list[Out] = []
        for sid in [sid for sid, f in self.in_flight.items() if f.expires <= t]:
            del self.in_flight[sid]  # not answered in HEDGE_SIGNAL_TTL_S: no longer counted
        for portfolio in sorted(self.positions):
            out += self._margin(portfolio, t)
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
        """One option priced (the hedge instrument): :meth:`_options` of one."""
        return self._options([(key, spec)], t)[0]

    def _options(self, items: list[tuple[str, Spec]], t: int) -> list[tuple[dict[str, Any] | None, list[str],
                                                                            InputRef]]:
        """Each option's forward, strike, years, call, our implied volatility from the venue's mark
        (one vectorised solve for all of them), the venue's greeks; its flags and input reference."""
        out: list[tuple[dict[str, Any] | None, list[str], InputRef]] = []
        solve: list[tuple[int, float, float, float, float, bool]] = []  # (index, usd mark, f, strike, years, call)
        for key, spec in items:
            quote = self.tickers.get(key)
            if quote is None:
                out.append((None, ["missing"], InputRef(key=key)))
                continue
            ref = InputRef(key=key, input="ticker", ts_recv=quote.ts_recv, source=quote.source or UNSET)
            f = quote.number("underlying_price") or quote.number("index")
            strike = float(spec.strike) if spec.strike else None
            expiry = spec.expiry_ns
            opt = parse_option(key.partition(":")[2])
            if strike is None and opt is not None:
                strike, expiry = opt.strike, opt.expiry_ns
            if f is None or strike is None or expiry is None:
                out.append((None, ["missing"], ref))
                continue
            years = (expiry - t) / valuation.YEAR_NS
            if years <= 0:
                out.append((None, ["expired"], ref))
                continue
            call = (spec.option_type or ("call" if opt is None or opt.call else "put")) == "call"
            mark = quote.number("mark")
            if mark is not None:
                usd = mark * f if opt is not None and coin_premium(key.partition(":")[0], opt) else mark
                solve.append((len(out), usd, f, strike, years, call))
            venue = {g: quote.number(g) for g in ("delta", "gamma", "vega", "theta")}
            out.append(({"f": f, "strike": strike, "t": years, "sigma": None, "call": call, "venue": venue},
                        self._book_flags(key, t, quote.ts_recv), ref))
        if solve:
            cols = list(zip(*solve, strict=True))
            ivs, determined = black76.implied_vol(np.array(cols[1]), np.array(cols[2]), np.array(cols[3]),
                                                  np.array(cols[4]), np.array(cols[5]))
            for n, (i, *_rest) in enumerate(solve):
                priced = out[i][0]
                if priced is not None and bool(determined[n]):
                    priced["sigma"] = float(ivs[n])
        for i, (priced, flags, ref) in enumerate(out):
            if priced is None or priced["sigma"] is not None:
                continue
            quote = self.tickers[ref.key]
            sigma = quote.number("mark_iv")
            if sigma is None:
                out[i] = (None, [*flags, "no-iv"], ref)
            else:
                priced["sigma"] = sigma
                flags.append("venue-iv")
        return out

    def legs(self, portfolio: str, underlying: str, t: int, book: dict[str, Position] | None = None,
             ) -> tuple[list[valuation.Leg], dict[str, list[str]], list[InputRef], list[str]]:
        """The priced legs of ``underlying``, the flags of its inputs, their references, and the
        portfolio's instruments the registry does not know (``book``: instead of its positions)."""
        memo = self._memo if book is None else None
        if memo is not None and (portfolio, underlying, t) in memo:
            return memo[(portfolio, underlying, t)]
        legs: list[valuation.Leg] = []
        flags: dict[str, list[str]] = {}
        refs: list[InputRef] = []
        unknown: list[str] = []
        held = self.positions.get(portfolio, {}) if book is None else book
        mine: list[tuple[str, Position, Spec]] = []
        for instrument, pos in sorted(held.items()):
            spec = self.spec(instrument, t)
            if spec is None:
                unknown.append(instrument)
            elif spec.base == underlying:
                mine.append((instrument, pos, spec))
        options = iter(self._options([(k, spec) for k, _, spec in mine if leg_kind(spec) == "option"], t))
        for instrument, pos, spec in mine:
            kind = leg_kind(spec)
            qty = float(pos.quantity)
            if kind == "option":
                priced, fl, ref = next(options)
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
        if memo is not None:
            memo[(portfolio, underlying, t)] = (legs, flags, refs, unknown)
        return legs, flags, refs, unknown

    def margin_legs(self, portfolio: str, t: int, book: dict[str, Position] | None = None,
                    ) -> tuple[list[MarginLeg], dict[str, list[str]], list[str], list[InputRef]]:
        """Every priced position of ``portfolio`` (``book``: instead of its positions) as the margin
        methods take it (app.risk.margin), the flags of their inputs (stale, old, missing…), the
        instruments it could not price or the registry does not know, and the inputs' references."""
        legs: list[MarginLeg] = []
        flags: dict[str, list[str]] = {}
        left_out: list[str] = []
        refs: list[InputRef] = []
        held = self.positions.get(portfolio, {}) if book is None else book
        underlyings = sorted({s.base for k in held if (s := self.spec(k, t)) is not None})
        for underlying in underlyings:
            priced, fl, found, unknown = self.legs(portfolio, underlying, t, book)
            refs += found
            flags.update(fl)
            left_out += unknown
            seen = {leg.key for leg in priced}
            left_out += [k for k in held if k not in seen and k in fl
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
                    fractions = published_fractions(leg.key.partition(":")[0], spec.initial_margin,
                                                    spec.maintenance_margin, spec.max_leverage)
                    im_fraction, mm_fraction = fractions if fractions is not None else (None, None)
                    legs.append(MarginLeg(leg.key, spec.kind if spec.kind in ("future", "perpetual") else "future",
                                          spec.settle, coins, index, leg.price, days=days,
                                          im_fraction=im_fraction, mm_fraction=mm_fraction))
        unknown_keys = [k for k in held if self.spec(k, t) is None]
        return legs, flags, sorted(set(left_out) | set(unknown_keys)), refs

    # -- margin -------------------------------------------------------------------------------
    def margin_figures(self, portfolio: str, t: int, book: dict[str, Position] | None = None,
                       ) -> tuple[dict[tuple[str, str], dict[str, Any]], list[MarginLeg], dict[str, list[str]],
                                  list[str], list[InputRef]]:
        """(venue, currency) → the venue's method's figures (app.risk.margin.account_margin), and
        what :meth:`margin_legs` says of the inputs."""
        legs, flags, left_out, refs = self.margin_legs(portfolio, t, book)
        by_venue: dict[str, list[MarginLeg]] = {}
        for leg in legs:
            by_venue.setdefault(leg.key.partition(":")[0], []).append(leg)
        figures = {(venue, currency): body for venue, group in sorted(by_venue.items())
                   for currency, body in account_margin(venue, group, self.params, self.conf.deribit_margin).items()}
        return figures, legs, flags, left_out, refs

    def _margin(self, portfolio: str, t: int) -> list[Out]:
        """``risk.margin`` of each venue and currency the portfolio has margin in, its alerts,
        and the reduce-only switches of the rules that watch it."""
        figures, legs, flags, left_out, refs = self.margin_figures(portfolio, t)
        book = self.positions.get(portfolio, {})
        for slot, rec in self.margins.items():  # positions closed since: their margin is now none
            if slot[0] == portfolio and slot[1:] not in figures:
                figures[slot[1:]] = {"method": rec.method, "im": 0.0, "mm": 0.0, "components": {}, "legs": []}
        out: list[Out] = []
        for (venue, currency), body in sorted(figures.items()):
            mine = [leg for leg in legs if leg.key.partition(":")[0] == venue and _settles_in(leg, currency)]
            unrealized = 0.0
            no_avg = []
            for leg in mine:
                pos = book.get(leg.key)
                spec = self.spec(leg.key, t)
                if pos is None or spec is None:
                    continue
                if pos.avg_price is None:
                    no_avg.append(leg.key)
                    continue
                mark = leg.mark if leg.kind == "option" else leg.price
                value = pnl(spec, float(pos.quantity), float(pos.avg_price), mark)
                unrealized += value * leg.index if leg.inverse and currency in LINEAR else value
            keys = {leg.key for leg in mine}
            leg_flags = {k: v for k, v in flags.items() if k in keys}
            balance = self.collateral.get((portfolio, currency))
            realized = self.realized.get((portfolio, currency), 0.0)
            equity = None if balance is None else balance + realized + unrealized
            mm, im = float(body["mm"]), float(body["im"])
            ratio = None if equity is None else (mm / equity if equity > 0 else (math.inf if mm > 0 else 0.0))
            not_priced = sorted(k for k in left_out if k.partition(":")[0] == venue)
            ok = not leg_flags and not not_priced
            record = MarginRecord(
                portfolio=portfolio, venue=venue, currency=currency, method=body["method"], im=_round(im),
                mm=_round(mm),
                components={k: _round(float(v)) for k, v in body["components"].items()},
                legs=[{k: _round(v) for k, v in row.items()} for row in body["legs"]],
                collateral=_round(balance), realized=_round(realized), unrealized=_round(unrealized),
                equity=_round(equity), mm_ratio=_round(ratio), im_ratio=_round(None if equity is None else (
                    im / equity if equity > 0 else (math.inf if im > 0 else 0.0))),
                no_avg_price=no_avg, flags=leg_flags, not_priced=not_priced, ok=ok,
                inputs=[r for r in refs if r.key in keys], ts=t)
            self.margins[(portfolio, venue, currency)] = record
            key = f"{portfolio}|{venue}|{currency}"
            if self._changed("risk.margin", key, record):
                out.append(("risk.margin", key, record))
            if ok and ratio is not None:  # never raised, cleared or switched on doubtful inputs
                out += self.alerts.on_margin(key, ratio, t)
                out += self._switches(portfolio, venue, currency, ratio, t)
        return out

    def _switches(self, portfolio: str, venue: str, currency: str, ratio: float, t: int) -> list[Out]:
        """Rules with ``reduce_only_above`` hold themselves and ``reduce_only_rules`` reduce-only
        while the margin ratio they watch is above it (released below it by the hysteresis)."""
        out: list[Out] = []
        for run in self.rules.values():
            rule = run.rule
            if rule.reduce_only_above is None or rule.portfolio != portfolio or self._watches(rule) != (venue,
                                                                                                        currency):
                continue
            for target in (rule.id, *rule.reduce_only_rules):
                held = self.rules.get(target)
                if held is None:
                    continue
                if ratio > rule.reduce_only_above:
                    held.forced_by.add(rule.id)
                    out += self.alerts.switched(target, rule.id, ratio, rule.reduce_only_above, t, True)
                elif ratio <= rule.reduce_only_above * (1 - MARGIN_HYSTERESIS) and rule.id in held.forced_by:
                    held.forced_by.discard(rule.id)
                    if not held.forced_by:
                        out += self.alerts.switched(target, rule.id, ratio, rule.reduce_only_above, t, False)
        return out

    def _watches(self, rule: Rule) -> tuple[str, str] | None:
        """The (venue, settlement currency) whose margin ratio a rule watches: its hedge instrument's."""
        spec = self.spec(rule.hedge, self.now)
        return None if spec is None else (rule.hedge.partition(":")[0], _margin_currency(rule.hedge, spec.settle))

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

    def _changed(self, topic: str, key: str, body: Exposure | Scenarios | MarginRecord) -> bool:
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
            if (run.rule.portfolio, run.rule.underlying) != (portfolio, underlying):
                continue
            rule = run.rule
            if run.forced_by and rule.state == "active":
                rule = with_state(rule, "reduce-only")  # a margin ratio above reduce_only_above
            if rule.greek == MARGIN_RATIO:
                out += self._margin_rule(run, rule, t)
                continue
            value = float(exp.get(rule.greek, 0.0))
            if rule.state == "halted":
                if abs(value) > rule.trigger:
                    out += self._blocked(run, t, value, "rule halted", refs)
                continue
            if abs(value) <= rule.trigger:
                run.blocked = None  # back inside the band: a later block is news again
                continue
            hedge = self.spec(rule.hedge, t)
            flying = self._flying(rule.id)
            priced = self._per_unit(rule, hedge, t) if flying and hedge is not None else None
            if priced is not None and priced[0] is not None and abs(value + float(flying) * priced[0]) <= rule.trigger:
                continue  # what is in flight brings it inside the band: not hedged twice
            if not self._may_fire(run, rule, t):
                continue
            reasons = [f"{k} {','.join(v)}" for k, v in sorted(flags.items())]
            reasons += [f"{k} unknown instrument" for k in unknown]
            hedge_ref = InputRef(key=rule.hedge)
            per_unit = None
            if hedge is None:
                reasons.append(f"{rule.hedge} unknown instrument")
            else:
                per_unit, hflags, hedge_ref = priced or self._per_unit(rule, hedge, t)  # once a tick
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
            value += float(flying) * per_unit  # the hedge sized for what is not in flight already
            size, why = hedge_size(value, rule, self._sizing(rule, hedge, per_unit, portfolio))
            if why is not None:
                out += self._blocked(run, t, value, why, refs)
                continue
            out.append(self._signal(run, rule, t, value, size, value + float(size) * per_unit, refs, hedge_ref,
                                    f"{rule.greek} {value:.6g} outside ±{rule.trigger:g}: "
                                    f"hedge to {math.copysign(rule.target, value):g}"))
        return out

    def _may_fire(self, run: RuleRun, rule: Rule, t: int) -> bool:
        """Not within ``cooldown_s`` of its last signal (and its last minute's signals counted)."""
        while run.recent and run.recent[0] <= t - 60_000 * NS_PER_MS:
            run.recent.popleft()
        return t - run.last_signal >= rule.cooldown_s * 1e9

    def _flying(self, rule_id: str) -> Decimal:
        """The signed size of a rule's signals still in flight (not filled, rejected or expired)."""
        return sum((f.remaining() for f in self.in_flight.values() if f.rule == rule_id), Decimal(0))

    def _sizing(self, rule: Rule, hedge: Spec, per_unit: float, portfolio: str) -> Sizing:
        pos = self.positions.get(portfolio, {}).get(rule.hedge)
        held = (pos.quantity if pos else Decimal(0)) + self._flying(rule.id)
        return Sizing(per_unit, Decimal(hedge.lot_size or hedge.contract_size or "1"), Decimal(hedge.min_size or "0"),
                      held)

    def _margin_rule(self, run: RuleRun, rule: Rule, t: int) -> list[Out]:
        """A rule on the MM/equity ratio: above ``trigger``, the smallest hedge (in lots of the
        hedge instrument) that brings the ratio to ``target`` or below, never on doubtful inputs."""
        hedge = self.spec(rule.hedge, t)
        watched = self._watches(rule)
        record = self.margins.get((rule.portfolio, *watched)) if watched is not None else None
        refs = record.inputs if record is not None else []
        if hedge is None or watched is None:
            return self._blocked(run, t, 0.0, f"{rule.hedge} unknown instrument", refs)
        if record is None or record.mm_ratio is None and record.equity is None:
            why = (f"no margin of {rule.portfolio} at {watched[0]} in {watched[1]}" if record is None
                   else f"no collateral of {rule.portfolio} in {watched[1]} (faust -A app collateral set)")
            return self._blocked(run, t, 0.0, why, refs)
        ratio = math.inf if record.mm_ratio is None else record.mm_ratio
        if rule.state == "halted":
            return self._blocked(run, t, ratio, "rule halted", refs) if ratio > rule.trigger else []
        if ratio <= rule.trigger:
            run.blocked = None
            return []
        flying = self._flying(rule.id)
        if flying and self._ratio_with(rule, t, flying) <= rule.trigger:
            return []  # what is in flight brings it back: not hedged twice
        if not self._may_fire(run, rule, t):
            return []
        reasons = [f"{k} {','.join(v)}" for k, v in sorted(record.flags.items())]
        reasons += [f"{k} not priced" for k in record.not_priced]
        _per, hflags, hedge_ref = self._per_unit(rule, hedge, t)
        if hflags:
            reasons.append(f"{rule.hedge} {','.join(hflags)}")
        if not record.ok or reasons:
            return self._blocked(run, t, ratio, "; ".join(reasons) or "margin inputs doubtful", refs)
        if len(run.recent) >= rule.max_per_minute:
            return self._blocked(run, t, ratio, f"max_per_minute {rule.max_per_minute} reached", refs)
        size, after, problem = self._margin_size(rule, hedge, t, flying)
        if problem is not None:
            return self._blocked(run, t, ratio, problem, refs)
        return [self._signal(run, rule, t, ratio, size, after, list(refs), hedge_ref,
                             f"MM/equity {ratio:.4g} above {rule.trigger:g}: hedge to ≤ {rule.target:g}")]

    def _ratio_with(self, rule: Rule, t: int, extra: Decimal) -> float:
        """The watched MM/equity ratio with ``extra`` more of the hedge instrument (equity as now:
        a hedge filled at the mark moves P&L from unrealized to realized)."""
        watched = self._watches(rule)
        assert watched is not None
        record = self.margins[(rule.portfolio, *watched)]
        book = dict(self.positions.get(rule.portfolio, {}))
        venue = watched[0]
        book = {k: p for k, p in book.items() if k.partition(":")[0] == venue}
        old = book.get(rule.hedge)
        qty = (old.quantity if old is not None else Decimal(0)) + extra
        if qty == 0:
            book.pop(rule.hedge, None)
        else:
            book[rule.hedge] = Position(rule.portfolio, rule.hedge, qty, old.avg_price if old else None, t)
        figures = self.margin_figures(rule.portfolio, t, book)[0]
        mm = float(figures.get(watched, {}).get("mm", 0.0))
        equity = record.equity or 0.0
        return mm / equity if equity > 0 else math.inf

    def _margin_size(self, rule: Rule, hedge: Spec, t: int, flying: Decimal) -> tuple[Decimal, float, str | None]:
        """The smallest size (lots, either side; reduce-only: only the side that shrinks the
        position) bringing the ratio to ≤ target: doubling, then halving the interval. A side is
        given up where the ratio stops falling."""
        lot = Decimal(hedge.lot_size or hedge.contract_size or "1")
        lot = lot if lot > 0 else Decimal(1)
        minimum = Decimal(hedge.min_size or "0")
        pos = self.positions.get(rule.portfolio, {}).get(rule.hedge)
        held = (pos.quantity if pos else Decimal(0)) + flying
        best: tuple[Decimal, float] | None = None
        lowest = math.inf
        for side in (1, -1):
            if rule.state == "reduce-only" and (held == 0 or (held > 0) == (side > 0)):
                continue
            limit = abs(held) / lot if rule.state == "reduce-only" else Decimal(2) ** 30
            prev, prev_ratio, k, found = Decimal(0), math.inf, Decimal(1), None
            while k <= limit:
                r = self._ratio_with(rule, t, flying + side * k * lot)
                lowest = min(lowest, r)
                if r <= rule.target:
                    found = k
                    break
                if r >= prev_ratio:
                    break  # past the side's lowest margin
                prev, prev_ratio, k = k, r, k * 2
            if found is None:
                continue
            lo, hi = prev + 1, found  # the ratio is ≤ target at hi, not at prev
            ratio_hi = self._ratio_with(rule, t, flying + side * hi * lot)
            while lo < hi:
                mid = (lo + hi) // 2
                r = self._ratio_with(rule, t, flying + side * mid * lot)
                if r <= rule.target:
                    hi, ratio_hi = mid, r
                else:
                    lo = mid + 1
            size = side * hi * lot
            if best is None or abs(size) < abs(best[0]):
                best = (size, ratio_hi)
        if best is None:
            low = "none" if lowest == math.inf else f"{lowest:.4g}"
            return Decimal(0), 0.0, (f"no size of {rule.hedge} brings MM/equity to ≤ {rule.target:g} "
                                     f"(lowest found {low}{', reduce-only' if rule.state == 'reduce-only' else ''})")
        if abs(best[0]) < minimum:
            best = (minimum if best[0] > 0 else -minimum, self._ratio_with(rule, t, flying + best[0]))
        return best[0], best[1], None

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

    def _signal(self, run: RuleRun, rule: Rule, t: int, value: float, size: Decimal, after: float,
                refs: list[InputRef], hedge_ref: InputRef, reason: str) -> Out:
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
        body = HedgeSignal(
            id=signal_id(rule, t), rule=rule.id, portfolio=rule.portfolio, underlying=rule.underlying, greek=rule.greek,
            instrument=rule.hedge, side=side, size=decimal_text(abs(size)), exposure_before=_round(value),
            exposure_after=_round(after), band=[-rule.trigger, rule.trigger], target=rule.target, state=rule.state,
            expected_price=_round(price), mid=_round(mid), slippage_bps=_round(slippage), fillable=_round(filled),
            depth_ts_recv=depth_ts, reason=reason, ts=t, inputs=[*refs, hedge_ref])
        self.in_flight[body.id] = Flight(rule.id, rule.portfolio, rule.hedge, size, Decimal(0), t + self.ttl)
        return "risk.hedge", body.id, body


MARGIN_HYSTERESIS = 0.05  # a margin threshold is left when the ratio is 5 % below it


def _margin_currency(key: str, settle: str) -> str:
    return "USD" if key.startswith("okx:") else settle.upper()  # OKX's portfolio margin is in USD


def _settles_in(leg: MarginLeg, currency: str) -> bool:
    return _margin_currency(leg.key, leg.settlement) == currency


def _round(value: Any) -> Any:
    """12 significant digits: the same inputs give the same text on every machine."""
    if value is None or not isinstance(value, float):
        return value
    if not math.isfinite(value):
        return None
    return float(f"{value:.12g}")
