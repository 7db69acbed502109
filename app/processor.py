"""One raw frame in, effects out: the book agent's logic without Faust or Kafka.

The book agent (``agents.books``) feeds every frame of the raw records of one table partition
through that partition's :class:`Processor` and turns each :class:`Outcome` into table rows
(``app.state``) and downstream records (``app.outputs``). Tests and the benchmarks use the same
class to build reference books in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import FrameError, VenueFault
from app.market.cursor import TradeCursor
from app.market.instruments import Spec
from app.market.records import Ticker, Trade
from app.sync import SYNCED, Effects, Instrument
from app.venues import ADAPTERS, INSTRUMENT_LISTS, MARKETS, VENUE_MARKETS, rule, split_key
from app.venues.base import BookUpdate, Kind
from app.wire import RawFrame


@dataclass(slots=True, init=False)
class Outcome:
    key: str
    inst: Instrument | None
    fx: Effects  # by default one that lists no level change (the books' sides track them)
    dead: tuple[str, str] | None  # (reason, detail) for raw.deadletter
    trades: list[Trade]  # new trades, in the venue's order (duplicates dropped)
    tickers: list[Ticker]
    trade_gaps: list[tuple[int, int, int]]  # (first, last missing, ts_exchange after)
    specs: list[Spec]  # a venue's instrument list (REST, or its WS channel)
    states: list[tuple[str, str, int]]  # (key, state, venue time) from a state channel
    feed_events: list[dict[str, Any]]  # subscriptions failed or recovered (feed.status)

    def __init__(self, key: str, inst: Instrument | None = None, fx: Effects | None = None,
                 dead: tuple[str, str] | None = None, trades: list[Trade] | None = None,
                 tickers: list[Ticker] | None = None, trade_gaps: list[tuple[int, int, int]] | None = None,
                 specs: list[Spec] | None = None, states: list[tuple[str, str, int]] | None = None,
                 feed_events: list[dict[str, Any]] | None = None) -> None:
        # written out (``init=False``), as Effects': one per frame (0.98 against 0.63 µs); the
        # defaults are here only
        self.key = key
        self.inst = inst
        self.fx = Effects(levels=False) if fx is None else fx
        self.dead = dead
        self.trades = [] if trades is None else trades
        self.tickers = [] if tickers is None else tickers
        self.trade_gaps = [] if trade_gaps is None else trade_gaps
        self.specs = [] if specs is None else specs
        self.states = [] if states is None else states
        self.feed_events = [] if feed_events is None else feed_events


def new_instrument(key: str, buffer_limit: int = 20_000) -> Instrument:
    """An empty instrument following its venue's sync rule."""
    venue, _ = split_key(key)
    return Instrument(key, rule(venue), buffer_limit)


def parse_buffered(key: str, frame: bytes) -> list[BookUpdate]:
    """A buffered (Binance) delta read back from the table."""
    venue, symbol = split_key(key)
    return ADAPTERS[venue].parse(Kind.WS, frame, symbol)


class Processor:
    """The instruments of one table partition (or of everything, in the in-process reference)."""

    def __init__(self, instruments: dict[str, Instrument] | None = None, buffer_limit: int = 20_000) -> None:
        self.buffer_limit = buffer_limit
        self.instruments: dict[str, Instrument] = {} if instruments is None else instruments

    def instrument(self, key: str) -> Instrument:
        inst = self.instruments.get(key)
        if inst is None:
            inst = self.instruments[key] = new_instrument(key, self.buffer_limit)
        return inst

    def handle(self, frame: RawFrame) -> Outcome:
        key = frame.key
        out = Outcome(key)
        try:
            venue, symbol = split_key(key)
        except ValueError as exc:
            out.dead = ("bad-key", str(exc))
            return out
        ad = ADAPTERS.get(venue)
        if ad is None:
            out.dead = ("unknown-venue", venue)
            return out
        kind, value = frame.kind, frame.data
        if kind is Kind.CONN:
            return self._conn(out, symbol, value)
        if not symbol:  # venue-level frame (acks, heartbeats, instrument lists): audit, and the registry
            try:
                registry = INSTRUMENT_LISTS.get(venue)
                if kind is Kind.WS:
                    ad.route(kind, value)
                    pushed = registry.parse_ws(value) if registry is not None else None
                    if pushed is not None:
                        out.specs, out.states = pushed
                    if (wide := VENUE_MARKETS.get(venue)) is not None:
                        # a venue-wide channel of per-instrument fields (dYdX v4_markets, whose first
                        # message is also the registry's list): each ticker names its instrument
                        # (Ticker.symbol) and goes to its partition
                        out.tickers = wide.parse_venue_market(kind, value)
                elif kind is Kind.REST and registry is not None:
                    out.specs = registry.parse(value) or []
            except FrameError as exc:
                out.dead = (exc.reason, exc.detail)
            return out
        market = MARKETS.get(venue) if kind is Kind.WS else None
        if market is not None:
            try:
                trades, out.tickers = market.parse_market(kind, value, symbol)
            except FrameError as exc:  # a bad trade or ticker frame says nothing about the book
                out.dead = (exc.reason, exc.detail)
                return out
            if trades:  # the instrument's trade cursor is part of its state
                out.inst = self.instrument(key)
                self._admit(out.inst, trades, out)
            if trades or out.tickers:
                return out  # no book update; a ticker changes no state (and makes no book appear)
        inst = out.inst = self.instrument(key)
        fx = out.fx
        try:
            updates = ad.parse(kind, value, symbol)
        except VenueFault as exc:  # not a bad frame: the venue says this book's stream failed
            inst.venue_fault(f"venue error: {exc.detail}", fx)
            return out
        except FrameError as exc:
            out.dead = (exc.reason, exc.detail)
            # A lost frame may have been a delta: the book can no longer be trusted.
            inst.connection_event("bad frame", exc.reason, fx)
            return out
        for upd in updates:
            try:
                inst.step(upd, value, frame.conn, frame.ts, fx)
            except FrameError as exc:  # bad level values inside a well-formed frame
                out.dead = (exc.reason, exc.detail)
                inst.connection_event("bad frame", exc.reason, fx)
                break
        return out

    def _conn(self, out: Outcome, symbol: str, value: bytes) -> Outcome:
        """A connection event (gap, reset: the book resyncs) or a subscription's (refused,
        unconfirmed, silent, recovered: ``feed.status``; a book's failure makes it stale)."""
        try:
            event = orjson.loads(value)
            name, detail = str(event["event"]), str(event.get("detail", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            out.dead = ("bad-conn-event", value[:200].decode("utf-8", "replace"))
            return out
        feed = event.get("feed")
        if feed is not None:
            out.feed_events.append(event)
            if feed != "book" or name == "recovered":
                return out
        if symbol:
            out.inst = self.instrument(out.key)
            out.inst.connection_event(name, detail, out.fx)
        return out

    @staticmethod
    def _admit(inst: Instrument, trades: list[Trade], out: Outcome) -> None:
        cursor = inst.trades
        if cursor is None:
            cursor = inst.trades = TradeCursor()
        if len(trades) > 1:
            trades.sort(key=lambda t: t.order)  # Coinbase snapshots list the newest first
        for trade in trades:
            new, gap = cursor.admit(trade)
            if gap is not None:
                out.trade_gaps.append((gap[0], gap[1], trade.ts_exchange))
            if new:
                out.trades.append(trade)

    def age(self, now_ns: int, venue: str | None = None) -> list[Outcome]:
        """Books (of ``venue``, or of any) whose venue time is too old to be current at ``now_ns``
        with no frame to say so (rules with ``max_lag_ns``: Hyperliquid): each one's outcome
        (stale, a resync asked)."""
        out = []
        prefix = None if venue is None else venue + ":"
        for key, inst in list(self.instruments.items()):
            if inst.rule.max_lag_ns and inst.status == SYNCED and (prefix is None or key.startswith(prefix)):
                fx = Effects()
                inst.age(now_ns, fx)
                if fx.changed():
                    out.append(Outcome(key, inst, fx))
        return out

    def synced(self) -> int:
        return sum(1 for i in self.instruments.values() if i.status == SYNCED)
