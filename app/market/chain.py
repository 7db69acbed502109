"""Options chains: per venue, underlying and expiry, the venue's quotes and greeks beside
bookstream's own Black-76 implied volatilities and greeks, with the residuals.

:class:`ChainBuilder` keeps the latest ticker fields of every option (merged: a partial ticker
updates the fields it carries) and of every future, grouped by chain (``app.market.symbols``),
and publishes, at most once per ``CHAIN_INTERVAL_MS`` of the inputs' exchange time per chain
and only for chains whose inputs changed, one ``options.chain`` record computed in one
vectorised pass (``app.market.black76``) over all its strikes.

Conventions (README "Options chains"): IV as a decimal; vega per 1 vol point; theta per
calendar day; delta, gamma, vega and theta of bookstream in the quote currency (USD) of one
unit of the underlying; coin-settled (inverse) premiums are converted to USD with the forward,
as the venues do (``premium × forward``). Each option is computed from its own ticker's inputs:
time to expiry in years of 365 days from that ticker's exchange time (so a replay computes the
same chain) to 08:00 UTC on the expiry day, and its forward: the venue's underlying price in
that ticker, else the chain's forward — the mark (or mid) of the future of that expiry, else
put–call parity on the mid prices of the strike nearest the money.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from app.market import black76
from app.market.instruments import Registry
from app.market.symbols import OptionSpec, parse_option
from app.records import OptionsChain, Source, encode
from app.records.market import ChainOption, ChainStrike, OursGreeks, Residuals, SpecRef

YEAR_NS = 365 * 86_400 * 1_000_000_000
SIDES = ("bid", "ask", "mark")
GREEKS = ("delta", "gamma", "vega", "theta")


@dataclass(slots=True)
class Quote:
    """The latest ticker fields of one instrument (merged across partial tickers)."""

    fields: dict[str, Any] = field(default_factory=dict)
    ts_exchange: int = 0
    ts_recv: int = 0
    source: Source | None = None

    def update(self, fields: dict[str, Any], ts_exchange: int, ts_recv: int, source: Source | None) -> None:
        self.fields.update((k, v) for k, v in fields.items() if v is not None)
        self.ts_exchange = max(self.ts_exchange, ts_exchange)
        self.ts_recv, self.source = ts_recv, source

    def number(self, name: str) -> float | None:
        return finite_number(self.fields.get(name))


def finite_number(value: Any) -> float | None:
    """A venue's number (text or number) as a float; None when absent, unreadable or not finite."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


@dataclass(slots=True)
class Chain:
    venue: str
    name: str  # BTC-27MAR26
    underlying: str
    expiry_ns: int
    inverse: bool  # premiums in coin (× forward to USD), by the venue's conventions; the registry's terms win
    options: dict[str, tuple[OptionSpec, Quote]] = field(default_factory=dict)  # symbol → (spec, quote)
    future: Quote | None = None
    changed: bool = False  # inputs arrived since the last publication
    bucket: int = -1  # exchange-time bucket (ts // CHAIN_INTERVAL_MS) of the latest input
    touched_ns: int = 0  # monotonic time of the latest input


def coin_premium(venue: str, spec: OptionSpec) -> bool:
    """Deribit BTC/ETH options and OKX coin-margined (``-USD``) options quote premiums in coin."""
    if venue == "deribit":
        return "_" not in spec.underlying
    return venue == "okx" and spec.underlying.endswith("-USD")


class ChainBuilder:
    """Chains publish in exchange time, so that a replay publishes the same records: a chain's
    snapshot covers every input up to the end of one ``CHAIN_INTERVAL_MS`` bucket of its inputs'
    exchange times, and goes out when the first input of a later bucket arrives (``offer``).
    A chain whose inputs stop is flushed after ``IDLE_INTERVALS`` intervals of wall time
    (``due``), so the last changes are not held back."""

    IDLE_INTERVALS = 2

    def __init__(self, interval_ms: int, registry: Registry | None = None) -> None:
        self.interval_ns = interval_ms * 1_000_000
        self.chains: dict[str, Chain] = {}  # chain key (venue:BTC-27MAR26) → chain
        self.registry = registry  # the contract terms in force, where the registry has them

    def offer(self, key: str, fields: dict[str, Any], ts_exchange: int, ts_recv: int, source: Source,
              ts_published: int = 0) -> list[tuple[str, bytes]]:
        """A ticker of ``key`` (an option, or an expiry's future): the chain records it closes
        (the chain as it stood before this input, when this input starts a later bucket)."""
        venue, _, symbol = key.partition(":")
        spec = parse_option(symbol)
        chain_key = key if spec is None else f"{venue}:{spec.chain}"
        chain = self.chains.get(chain_key)
        if chain is None:
            if spec is None:
                return []  # a future whose options were not seen (yet)
            chain = self.chains[chain_key] = Chain(venue, spec.chain, spec.underlying, spec.expiry_ns,
                                                   coin_premium(venue, spec))
        out = []
        bucket = ts_exchange // self.interval_ns
        if chain.changed and bucket > chain.bucket and chain.options:
            out.append((chain_key, self._publish(chain_key, chain, ts_published)))
        if spec is None:
            if chain.future is None:
                chain.future = Quote()
            quote = chain.future
        else:
            entry = chain.options.get(symbol)
            if entry is None:
                entry = chain.options[symbol] = (spec, Quote())
            quote = entry[1]
        quote.update(fields, ts_exchange, ts_recv, source)
        chain.bucket = max(chain.bucket, bucket)
        chain.changed = True
        chain.touched_ns = time.monotonic_ns()
        return out

    def _publish(self, key: str, chain: Chain, ts_published: int) -> bytes:
        chain.changed = False
        return encode(build(key, chain, ts_published, self.registry))

    def forget(self, keep: Any) -> None:
        """Drop chains whose key ``keep(key)`` rejects (partitions no longer owned)."""
        for key in [k for k in self.chains if not keep(k)]:
            del self.chains[key]

    def due(self, now_monotonic_ns: int, ts_published: int) -> Iterator[tuple[str, bytes]]:
        """Chains whose inputs went quiet with changes not yet published."""
        idle = self.IDLE_INTERVALS * self.interval_ns
        for key, chain in self.chains.items():
            if chain.changed and chain.options and now_monotonic_ns - chain.touched_ns >= idle:
                yield key, self._publish(key, chain, ts_published)


def _forward(chain: Chain, inverse: bool) -> tuple[float | None, str]:
    quotes = [q for _, q in chain.options.values()]
    latest = max(quotes, key=lambda q: q.ts_exchange)
    if latest.number("underlying_price"):
        return latest.number("underlying_price"), "venue-underlying-price"
    if chain.future is not None:
        mark = chain.future.number("mark")
        bid, ask = chain.future.number("bid"), chain.future.number("ask")
        if mark:
            return mark, "future-mark"
        if bid and ask:
            return (bid + ask) / 2, "future-mid"
    best: tuple[float, float] | None = None  # (|C - P|, forward)
    by_strike: dict[float, dict[bool, Quote]] = {}
    for spec, q in chain.options.values():
        by_strike.setdefault(spec.strike, {})[spec.call] = q
    for strike, pair in by_strike.items():
        if len(pair) != 2:
            continue
        mids = []
        for q in (pair[True], pair[False]):
            bid, ask = q.number("bid"), q.number("ask")
            mids.append((bid + ask) / 2 if bid and ask else None)
        if mids[0] is None or mids[1] is None:
            continue
        diff = mids[0] - mids[1]
        if inverse:  # C - P = (F - K) / F in coin
            if diff >= 1:
                continue
            forward = strike / (1 - diff)
        else:  # C - P = F - K
            forward = strike + diff
        if best is None or abs(diff) < best[0]:
            best = (abs(diff), forward)
    if best is not None:
        return best[1], "put-call-parity"
    return None, "none"


def build(key: str, chain: Chain, ts_published: int, registry: Registry | None = None) -> OptionsChain:
    """The ``options.chain`` record of ``chain``, our numbers computed in one vectorised pass.

    Where the registry holds the options' spec in force at the chain's time, its terms decide
    (coin or quote premiums, expiry), and the record names that version (``spec``); else the
    symbol and the venue's conventions do."""
    items = sorted(chain.options.items(), key=lambda kv: (kv[1][0].strike, not kv[1][0].call))
    asof = max(q.ts_exchange for _, (_, q) in items)
    terms = registry.at(f"{chain.venue}:{items[0][0]}", asof) if registry is not None else None
    inverse, expiry_ns = chain.inverse, chain.expiry_ns  # from the symbol and the venue's conventions
    if terms is not None:
        inverse = bool(terms.settle) and terms.settle == terms.base
        expiry_ns = terms.expiry_ns or expiry_ns
    forward, forward_source = _forward(chain, inverse)
    t = (expiry_ns - asof) / YEAR_NS
    n = len(items)
    specs = [s for _, (s, _) in items]
    quotes = [q for _, (_, q) in items]
    rates = np.array([q.number("interest_rate") or 0.0 for q in quotes])
    usable = forward is not None and forward > 0 and t > 0
    ours: dict[str, np.ndarray] = {}
    if usable:
        assert forward is not None
        # each option's own inputs where its ticker gives them ("from the same inputs"): the
        # venue's underlying price and exchange time of that ticker; else the chain's forward
        f = np.array([q.number("underlying_price") or forward for q in quotes])
        ts = np.array([q.ts_exchange or asof for q in quotes], dtype=np.float64)
        t_each = (expiry_ns - ts) / YEAR_NS
        k = np.array([s.strike for s in specs])
        call = np.array([s.call for s in specs])
        df = np.exp(-rates * t_each)
        scale = f if inverse else 1.0
        for side in SIDES:
            px = np.array([np.nan if q.number(side) is None else q.number(side) for q in quotes], dtype=np.float64)
            iv, _ = black76.implied_vol(px * scale, f, k, t_each, call, df)
            ours[f"{side}_iv"] = iv
        ours.update(black76.greeks(f, k, t_each, ours["mark_iv"], call, df, rates))
        ours["forward"] = f
    strikes: dict[str, ChainStrike] = {}
    for i in range(n):
        spec, q = specs[i], quotes[i]
        row = strikes.setdefault(spec.strike_text, ChainStrike(strike=spec.strike_text, call=None, put=None))
        got = q.fields.get
        entry = ChainOption(instrument=f"{chain.venue}:{items[i][0]}", bid=got("bid"), ask=got("ask"),
                            mark=got("mark"), bid_iv=got("bid_iv"), ask_iv=got("ask_iv"), mark_iv=got("mark_iv"),
                            delta=got("delta"), gamma=got("gamma"), vega=got("vega"), theta=got("theta"),
                            ts_exchange=q.ts_exchange, source=q.source)
        if usable:
            mine = OursGreeks(**{name: _num(ours[name][i]) for name in OursGreeks.__struct_fields__})
            entry.ours = mine
            entry.residual = Residuals(**{name: _residual(getattr(mine, name), q.number(name))
                                          for name in Residuals.__struct_fields__})
            entry.undetermined = [f"{s}_iv" for s in SIDES
                                  if q.number(s) is not None and getattr(mine, f"{s}_iv") is None]
        if spec.call:
            row.call = entry
        else:
            row.put = entry
    return OptionsChain(
        key=key, venue=chain.venue, chain=chain.name, underlying=chain.underlying,
        expiry=datetime.fromtimestamp(expiry_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), expiry_ns=expiry_ns,
        t_years=t, forward=forward, forward_source=forward_source, premium_currency="coin" if inverse else "quote",
        ts_exchange=asof, ts_recv=max(q.ts_recv for _, (_, q) in items), ts_published=ts_published,
        strikes=list(strikes.values()), missing_forward=not usable,
        spec=None if terms is None else SpecRef(key=terms.key, valid_from=terms.valid_from))


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _residual(ours: float | None, venue: float | None) -> float | None:
    return None if ours is None or venue is None else ours - venue
