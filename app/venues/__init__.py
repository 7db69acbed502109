"""The venues, registered by venue id (the public identifiers, see README).

A venue is one module under ``app/venues/`` (its adapter, sync rule, session protocol and
endpoints) and its :class:`~app.venues.base.Venue` entries in :data:`VENUE_TABLE`. Callers
reach an adapter through :func:`adapter` (guarded: bad frames fail only with FrameError),
a sync rule through :func:`rule` and a session protocol through :func:`protocol`;
``app.feeds`` builds its endpoint tables from the venue table.
"""

from __future__ import annotations

from app.config import Secret
from app.errors import ConfigError, FrameError
from app.market.instruments import InstrumentListParser, Spec
from app.market.records import Ticker, Trade
from app.venues import binance, bybit, coinbase, deribit, dydx, hyperliquid, okx
from app.venues.base import (
    Adapter,
    BookUpdate,
    Continuity,
    Kind,
    Level,
    MarketParser,
    SyncRule,
    Venue,
    VenueMarketParser,
)
from app.venues.session import Endpoint, Protocol

#: venue id → everything about that venue. Adding a venue adds its module's entries here.
VENUE_TABLE: dict[str, Venue] = {
    v.id: v for v in (deribit.VENUE, *binance.VENUES, okx.VENUE, *bybit.VENUES, coinbase.VENUE, hyperliquid.VENUE,
                      dydx.VENUE)
}

VENUES: tuple[str, ...] = tuple(VENUE_TABLE)


class Guarded:
    """An adapter whose every call fails only with FrameError: the safety net.

    The adapters themselves raise FrameError for every bad shape (fuzzed in
    tests/unit/test_venues.py). Should one still slip — a field of a type nobody checked —
    the frame must become a dead letter with a reason, never an exception in the book
    agent: each call converts the error kinds that bad shapes raise into
    ``FrameError("malformed", …)``.
    """

    __slots__ = ("_conn_seq", "_inner", "_parse", "_route", "venue")

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner
        self.venue = inner.venue
        self._route, self._parse, self._conn_seq = inner.route, inner.parse, inner.conn_seq  # bound once

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        try:
            return self._route(kind, frame, url)
        except _SHAPE_ERRORS as exc:
            raise _malformed(exc) from exc

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        try:
            return self._parse(kind, frame, symbol)
        except _SHAPE_ERRORS as exc:
            raise _malformed(exc) from exc

    def conn_seq(self, frame: bytes) -> int | None:
        try:
            return self._conn_seq(frame)
        except _SHAPE_ERRORS as exc:
            raise _malformed(exc) from exc


#: What a bad shape raises when no check caught it.
_SHAPE_ERRORS = (TypeError, KeyError, AttributeError, IndexError, ValueError, ArithmeticError)


def _malformed(exc: Exception) -> FrameError:
    return FrameError("malformed", f"{type(exc).__name__}: {exc}"[:200])


ADAPTERS: dict[str, Adapter] = {venue: Guarded(v.adapter) for venue, v in VENUE_TABLE.items()}


class GuardedMarket:
    """A market parser whose calls fail only with FrameError (as :class:`Guarded`)."""

    __slots__ = ("_parse",)

    def __init__(self, inner: MarketParser) -> None:
        self._parse = inner.parse_market

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        try:
            return self._parse(kind, frame, symbol)
        except _SHAPE_ERRORS as exc:
            raise _malformed(exc) from exc


class GuardedVenueMarket:
    """A venue-wide market parser whose calls fail only with FrameError (as :class:`Guarded`)."""

    __slots__ = ("_parse",)

    def __init__(self, inner: VenueMarketParser) -> None:
        self._parse = inner.parse_venue_market

    def parse_venue_market(self, kind: Kind, frame: bytes) -> list[Ticker]:
        try:
            return self._parse(kind, frame)
        except _SHAPE_ERRORS as exc:
            raise _malformed(exc) from exc


class GuardedInstrumentList:
    """An instrument-list parser whose ``parse`` fails only with FrameError (as :class:`Guarded`)."""

    __slots__ = ("_inner", "_parse_ws")

    def __init__(self, inner: InstrumentListParser) -> None:
        self._inner = inner
        #: optional (``InstrumentListParser``): a venue without it has no instrument channel
        self._parse_ws = getattr(inner, "parse_ws", None)

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        return self._inner.urls(api_url, symbols)

    def post_body(self, url: str) -> bytes | None:
        """The body to POST to ``url`` (one of ``urls``); None for a GET. Optional for a parser
        (``app.market.instruments.InstrumentListParser``): Hyperliquid's lists are POSTs."""
        body = getattr(self._inner, "post_body", None)
        return body(url) if body is not None else None

    def parse(self, body: bytes) -> list[Spec] | None:
        try:
            return self._inner.parse(body)
        except _SHAPE_ERRORS as exc:
            raise _malformed(exc) from exc

    def parse_ws(self, frame: bytes) -> tuple[list[Spec], list[tuple[str, str, int]]] | None:
        if self._parse_ws is None:
            return None  # no instrument channel: the REST list, refreshed, is the source
        try:
            return self._parse_ws(frame)
        except _SHAPE_ERRORS as exc:
            raise _malformed(exc) from exc


#: venue id → its REST instrument-list parser.
INSTRUMENT_LISTS: dict[str, GuardedInstrumentList] = {
    venue: GuardedInstrumentList(v.instrument_lists) for venue, v in VENUE_TABLE.items()
    if v.instrument_lists is not None
}

#: venue id → its trades/tickers parser (venues without one are absent).
MARKETS: dict[str, MarketParser] = {
    venue: GuardedMarket(v.market) for venue, v in VENUE_TABLE.items() if v.market is not None
}

#: venue id → its parser of venue-wide ticker channels (dYdX v4_markets; others are absent).
VENUE_MARKETS: dict[str, VenueMarketParser] = {
    venue: GuardedVenueMarket(v.venue_market) for venue, v in VENUE_TABLE.items() if v.venue_market is not None
}


def _entry(venue: str) -> Venue:
    try:
        return VENUE_TABLE[venue]
    except KeyError:
        raise ConfigError(f"unknown venue {venue!r}; known venues: {', '.join(VENUES)}") from None


def adapter(venue: str) -> Adapter:
    """The (guarded) adapter for ``venue``; ConfigError naming the known venues otherwise."""
    return ADAPTERS[_entry(venue).id]


def rule(venue: str) -> SyncRule:
    """The sync rule for ``venue`` (what ``app.sync.Instrument`` asks); ConfigError if unknown."""
    return _entry(venue).rule


def protocol(venue: str, endpoint: Endpoint, creds: dict[str, Secret] | None = None) -> Protocol:
    """A session protocol for ``venue`` at ``endpoint`` (the live one, the simulator's, or an override)."""
    return _entry(venue).protocol(venue, endpoint, creds)


def split_key(key: str) -> tuple[str, str]:
    """``"deribit:BTC-PERPETUAL"`` → ("deribit", "BTC-PERPETUAL")."""
    venue, sep, symbol = key.partition(":")
    if not sep:
        raise ValueError(f"instrument key {key!r} is not <venue>:<symbol>")
    return venue, symbol


__all__ = [
    "ADAPTERS", "INSTRUMENT_LISTS", "MARKETS", "VENUE_MARKETS", "VENUE_TABLE", "VENUES", "Adapter", "BookUpdate",
    "Continuity", "Endpoint", "Guarded", "Kind", "Level", "MarketParser", "Protocol", "SyncRule", "Venue",
    "VenueMarketParser", "adapter", "protocol", "rule", "split_key",
]
