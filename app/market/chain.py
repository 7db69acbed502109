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

import collections
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import compress, repeat
from operator import is_not
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
#: A quote's numbers that a chain reads.
NUMBERS = ("interest_rate", "underlying_price", *SIDES, "bid_iv", "ask_iv", "mark_iv", "delta")
#: Ours minus the venue's, where both exist.
RESIDUALS = ("bid_iv", "ask_iv", "mark_iv", "delta")


@dataclass(slots=True)
class Quote:
    """The latest ticker fields of one instrument (merged across partial tickers)."""

    fields: dict[str, Any] = field(default_factory=dict)
    ts_exchange: int = 0
    ts_recv: int = 0
    source: Source | None = None

    def update(self, fields: dict[str, Any], ts_exchange: int, ts_recv: int, source: Source | None) -> None:
        self.merge(fields.keys(), fields.values(), ts_exchange, ts_recv, source)

    def merge(self, names: Iterable[str], values: Iterable[Any], ts_exchange: int, ts_recv: int,
              source: Source | None) -> None:
        """:meth:`update` from names and their values, side by side: the fields that are not None
        replace theirs (picked in C: the risk engine merges every ticker of every instrument)."""
        values = tuple(values)
        self.fields.update(compress(zip(names, values, strict=True), map(is_not, values, repeat(None))))
        if ts_exchange > self.ts_exchange:
            self.ts_exchange = ts_exchange
        self.ts_recv, self.source = ts_recv, source

    def number(self, name: str) -> float | None:
        return finite_number(self.fields.get(name))

    def copy(self) -> Quote:
        return Quote(dict(self.fields), self.ts_exchange, self.ts_recv, self.source)


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
    #: the options as the last close copied them (never changed after: a closed chain shares the
    #: quotes that did not move since with the one before it), and the symbols updated since
    closed_options: dict[str, tuple[OptionSpec, Quote]] | None = None
    moved: set[str] = field(default_factory=set)


def coin_premium(venue: str, spec: OptionSpec) -> bool:
    """Deribit BTC/ETH options and OKX coin-margined (``-USD``) options quote premiums in coin."""
    if venue == "deribit":
        return "_" not in spec.underlying
    return venue == "okx" and spec.underlying.endswith("-USD")


class ChainBuilder:
    """Chains publish in exchange time, so that a replay publishes the same records: a chain's
    snapshot covers every input up to the end of one ``CHAIN_INTERVAL_MS`` bucket of its inputs'
    exchange times, and is closed when the first input of a later bucket arrives (``offer``).
    A chain whose inputs stop is closed after ``IDLE_INTERVALS`` intervals of wall time
    (``due``), so the last changes are not held back.

    Closing copies the chain's inputs (a fraction of a millisecond); building its record is the
    costly part, left to :meth:`built`, so that a burst of tickers closing every chain at the
    same bucket boundary does not hold the frames behind it (the worker builds one chain at a
    time after each batch of raw records, and every closed chain before a commit: ``app.outputs``)."""

    IDLE_INTERVALS = 2

    def __init__(self, interval_ms: int, registry: Registry | None = None) -> None:
        self.interval_ns = interval_ms * 1_000_000
        self.chains: dict[str, Chain] = {}  # chain key (venue:BTC-27MAR26) → chain
        self.registry = registry  # the contract terms in force, where the registry has them
        #: closed chains not built yet: (chain key, a copy of its inputs, the tag it was closed with)
        self.closed: collections.deque[tuple[str, Chain, Any]] = collections.deque()
        #: chain key → its options' entries as last built (see :func:`build`)
        self.entries: dict[str, dict[str, Entry]] = {}

    def offer(self, key: str, fields: dict[str, Any], ts_exchange: int, ts_recv: int, source: Source,
              tag: Any = None) -> int:
        """A ticker of ``key`` (an option, or an expiry's future). When it starts a later bucket,
        the chain as it stood before it is closed: kept for :meth:`built` with ``tag`` (the
        caller's: where its record goes). Returns how many chains it closed (0 or 1)."""
        venue, _, symbol = key.partition(":")
        spec = parse_option(symbol)
        chain_key = key if spec is None else f"{venue}:{spec.chain}"
        chain = self.chains.get(chain_key)
        if chain is None:
            if spec is None:
                return 0  # a future whose options were not seen (yet)
            chain = self.chains[chain_key] = Chain(venue, spec.chain, spec.underlying, spec.expiry_ns,
                                                   coin_premium(venue, spec))
        closed = 0
        bucket = ts_exchange // self.interval_ns
        if chain.changed and bucket > chain.bucket and chain.options:
            self._close(chain_key, chain, tag)
            closed = 1
        if spec is None:
            if chain.future is None:
                chain.future = Quote()
            quote = chain.future
        else:
            entry = chain.options.get(symbol)
            if entry is None:
                entry = chain.options[symbol] = (spec, Quote())
            quote = entry[1]
            chain.moved.add(symbol)
        quote.update(fields, ts_exchange, ts_recv, source)
        chain.bucket = max(chain.bucket, bucket)
        chain.changed = True
        chain.touched_ns = time.monotonic_ns()
        return closed

    def _close(self, key: str, chain: Chain, tag: Any) -> None:
        """The chain's inputs as they stand, copied (the next inputs change the live ones), to be
        built. Only the quotes updated since the last close are copied; the others are the very
        objects the chain closed before held, which lets :func:`build` keep their entries."""
        chain.changed = False
        if chain.closed_options is None:
            options = {symbol: (spec, quote.copy()) for symbol, (spec, quote) in chain.options.items()}
        else:
            options = dict(chain.closed_options)
            for symbol in chain.moved:
                spec, quote = chain.options[symbol]
                options[symbol] = (spec, quote.copy())
        chain.closed_options = options
        chain.moved.clear()
        future = None if chain.future is None else chain.future.copy()
        self.closed.append((key, Chain(chain.venue, chain.name, chain.underlying, chain.expiry_ns, chain.inverse,
                                       options, future), tag))

    def built(self, ts_published: int) -> Iterator[tuple[str, bytes, Any]]:
        """The closed chains' ``options.chain`` records, oldest first, each with the tag it was
        closed with, built one at a time as the caller asks. Building one costs milliseconds (a
        vectorised pass over its strikes): the caller spaces them out."""
        closed = self.closed
        while closed:
            key, chain, tag = closed.popleft()
            entries = self.entries.get(key)
            if entries is None:
                entries = self.entries[key] = {}
            yield key, encode(build(key, chain, ts_published, self.registry, entries)), tag

    def forget(self, keep: Any) -> None:
        """Drop chains whose key ``keep(key)`` rejects (partitions no longer owned)."""
        for key in [k for k in self.chains if not keep(k)]:
            del self.chains[key]
            self.entries.pop(key, None)
        self.closed = collections.deque(c for c in self.closed if keep(c[0]))

    def due(self, now_monotonic_ns: int) -> int:
        """Close the chains whose inputs went quiet with changes not yet published; how many."""
        idle = self.IDLE_INTERVALS * self.interval_ns
        closed = 0
        for key, chain in self.chains.items():
            if chain.changed and chain.options and now_monotonic_ns - chain.touched_ns >= idle:
                self._close(key, chain, None)
                closed += 1
        return closed


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


#: An option's entry as last built: (its quote, what else its numbers depended on, the entry).
Entry = tuple[Quote, tuple[Any, ...], ChainOption]


def build(key: str, chain: Chain, ts_published: int, registry: Registry | None = None,
          entries: dict[str, Entry] | None = None) -> OptionsChain:
    """The ``options.chain`` record of ``chain``, our numbers computed in one vectorised pass.

    Where the registry holds the options' spec in force at the chain's time, its terms decide
    (coin or quote premiums, expiry), and the record names that version (``spec``); else the
    symbol and the venue's conventions do.

    With ``entries`` (symbol → :data:`Entry`, kept by the caller from one build of this chain to
    the next), an option whose quote is the same object as at the last build, and whose other
    inputs are the same — the chain's forward where its ticker gives no underlying price, the
    chain's time where it gives no exchange time, the premium convention, the expiry — keeps the
    entry built then: the numbers would be computed again from the same inputs, and each option's
    are its own (:func:`app.market.black76.implied_vol`). In an options universe most options
    do not move within a second; a chain of 125 then solves a few of them, not all."""
    items = sorted(chain.options.items(), key=lambda kv: (kv[1][0].strike, not kv[1][0].call))
    asof = max(q.ts_exchange for _, (_, q) in items)
    terms = registry.at(f"{chain.venue}:{items[0][0]}", asof) if registry is not None else None
    inverse, expiry_ns = chain.inverse, chain.expiry_ns  # from the symbol and the venue's conventions
    if terms is not None:
        inverse = bool(terms.settle) and terms.settle == terms.base
        expiry_ns = terms.expiry_ns or expiry_ns
    forward, forward_source = _forward(chain, inverse)
    t = (expiry_ns - asof) / YEAR_NS
    usable = forward is not None and forward > 0 and t > 0
    kept: list[ChainOption | None] = []  # per option: its entry of the last build, if it holds
    depends: list[tuple[Any, ...]] = []
    for symbol, (_, q) in items:
        depends.append(inputs := (None if q.number("underlying_price") else forward,
                                  None if q.ts_exchange else asof, inverse, expiry_ns, usable))
        last = None if entries is None else entries.get(symbol)
        kept.append(last[2] if last is not None and last[0] is q and last[1] == inputs else None)
    new = [i for i, entry in enumerate(kept) if entry is None]
    specs = [items[i][1][0] for i in new]
    quotes = [items[i][1][1] for i in new]
    # every number of every quote to build read once (a venue's text to float)
    numbers = {name: [q.number(name) for q in quotes] for name in NUMBERS}
    ours: list[list[float | None]] = []  # per option built: OursGreeks' fields in order (None: not finite)
    if usable and new:
        assert forward is not None
        ours = _ours(specs, quotes, numbers, forward, asof, expiry_ns, inverse)
    for j, i in enumerate(new):
        q = quotes[j]
        got = q.fields.get
        entry = ChainOption(instrument=f"{chain.venue}:{items[i][0]}", bid=got("bid"), ask=got("ask"),
                            mark=got("mark"), bid_iv=got("bid_iv"), ask_iv=got("ask_iv"), mark_iv=got("mark_iv"),
                            delta=got("delta"), gamma=got("gamma"), vega=got("vega"), theta=got("theta"),
                            ts_exchange=q.ts_exchange, source=q.source)
        if usable:
            o = ours[j]
            entry.ours = OursGreeks(forward=o[0], bid_iv=o[1], ask_iv=o[2], mark_iv=o[3], delta=o[4], gamma=o[5],
                                    vega=o[6], theta=o[7])
            venue = [numbers[name][j] for name in RESIDUALS]
            entry.residual = Residuals(**{name: None if mine is None or theirs is None else mine - theirs
                                          for name, mine, theirs in zip(RESIDUALS, o[1:5], venue, strict=True)})
            entry.undetermined = [f"{side}_iv" for side, mine in zip(SIDES, o[1:4], strict=True)
                                  if numbers[side][j] is not None and mine is None]
        kept[i] = entry
        if entries is not None:
            entries[items[i][0]] = (q, depends[i], entry)
    if entries is not None and len(entries) > len(items):  # options gone from the chain
        for symbol in entries.keys() - chain.options.keys():
            del entries[symbol]
    strikes: dict[str, ChainStrike] = {}
    for (_, (spec, _)), option in zip(items, kept, strict=True):
        row = strikes.get(spec.strike_text)
        if row is None:
            row = strikes[spec.strike_text] = ChainStrike(strike=spec.strike_text, call=None, put=None)
        if spec.call:
            row.call = option
        else:
            row.put = option
    return OptionsChain(
        key=key, venue=chain.venue, chain=chain.name, underlying=chain.underlying,
        expiry=datetime.fromtimestamp(expiry_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), expiry_ns=expiry_ns,
        t_years=t, forward=forward, forward_source=forward_source, premium_currency="coin" if inverse else "quote",
        ts_exchange=asof, ts_recv=max(q.ts_recv for _, (_, q) in items), ts_published=ts_published,
        strikes=list(strikes.values()), missing_forward=not usable,
        spec=None if terms is None else SpecRef(key=terms.key, valid_from=terms.valid_from))


def _ours(specs: list[OptionSpec], quotes: list[Quote], numbers: dict[str, list[float | None]],
          forward: float, asof: int, expiry_ns: int, inverse: bool) -> list[list[float | None]]:
    """Our numbers of every option (rows of :data:`OURS`), in one vectorised pass: the three
    sides' implied volatilities solved together, the greeks at the mark's."""
    n = len(quotes)
    # each option's own inputs where its ticker gives them ("from the same inputs"): the
    # venue's underlying price and exchange time of that ticker; else the chain's forward
    f = np.array([u or forward for u in numbers["underlying_price"]])
    rates = np.array([r or 0.0 for r in numbers["interest_rate"]])
    ts = np.array([q.ts_exchange or asof for q in quotes], dtype=np.float64)
    t_each = (expiry_ns - ts) / YEAR_NS
    k = np.array([s.strike for s in specs])
    call = np.array([s.call for s in specs])
    df = np.exp(-rates * t_each)
    px = np.array([np.nan if v is None else v for side in SIDES for v in numbers[side]], dtype=np.float64)
    f3 = np.tile(f, 3)
    # the venue's own volatilities of the same prices as Newton's first guesses (where given)
    venue_iv = np.array([np.nan if v is None else v for side in SIDES for v in numbers[f"{side}_iv"]],
                        dtype=np.float64)
    iv, _ = black76.implied_vol(px * f3 if inverse else px, f3, np.tile(k, 3), np.tile(t_each, 3),
                                np.tile(call, 3), np.tile(df, 3), guess=venue_iv)
    mark_iv = iv[2 * n:]
    greeks = black76.greeks(f, k, t_each, mark_iv, call, df, rates)
    table = np.column_stack([f, iv[:n], iv[n:2 * n], mark_iv, *(greeks[g] for g in GREEKS)])
    return [[x if math.isfinite(x) else None for x in row] for row in table.tolist()]
