"""Venue sessions, sans I/O: where a venue is and what a connection sends it.

An :class:`Endpoint` is a venue's address and limits (data, not code: venues move them,
and ``FEEDS_FILE`` overrides them). A :class:`Protocol` turns (symbols, credentials) into
the text frames a connection sends after it opens, to resubscribe one instrument, to
keep the connection alive, and in reply to venue requests (Deribit's ``test_request``);
each venue module subclasses it. The socket code lives in ``app.ingest.connection``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import orjson

from app.config import Secret

_ids = itertools.count(1)


@dataclass(frozen=True)
class Endpoint:
    ws_url: str
    channel: str  # template: {symbol} {symbol_lower} {depth}
    rest_url: str = ""  # REST depth snapshots (venues whose rule needs them)
    depth: int = 0
    max_per_conn: int = 50  # instruments per WebSocket connection
    silence_s: float = 30.0  # watchdog: reconnect when nothing arrives for this long
    ping_s: float = 20.0  # application-level keepalive interval
    market: tuple[str, ...] = ()  # trades/ticker channel templates subscribed beside the book ({symbol} …)
    api_url: str = ""  # the REST API's base URL: instrument lists (``app.market.instruments``)


def next_id() -> int:
    """A request id, unique within this process."""
    return next(_ids)


def dumps(obj: object) -> str:
    """A JSON text frame."""
    return orjson.dumps(obj).decode()


class Protocol:
    """Defaults: no auth, no keepalive message, resync = unsubscribe + subscribe."""

    venue = ""

    def __init__(self, venue: str, endpoint: Endpoint, creds: dict[str, Secret] | None = None) -> None:
        self.venue = venue
        self.endpoint = endpoint
        self.creds = creds or {}

    def channel(self, symbol: str) -> str:
        return self.endpoint.channel.format(symbol=symbol, symbol_lower=symbol.lower(), depth=self.endpoint.depth)

    #: True while building a resync's frames: those touch the book channel only (a trade or
    #: ticker channel resubscribed would repeat trades, which are dropped, for nothing).
    _book_only = False

    def market_templates(self) -> tuple[str, ...]:
        return () if self._book_only else self.endpoint.market

    def market_channels(self, symbol: str) -> list[str]:
        """The trades and ticker channels of ``symbol`` (``Endpoint.market``)."""
        return [t.format(symbol=symbol, symbol_lower=symbol.lower()) for t in self.market_templates()]

    def channels(self, symbol: str) -> list[str]:
        """Every channel a connection subscribes for ``symbol``: its book, then its market data."""
        return [self.channel(symbol), *self.market_channels(symbol)]

    def url(self, symbols: list[str]) -> str:
        return self.endpoint.ws_url

    def on_open(self, symbols: list[str]) -> list[str]:
        return self.subscribe(symbols)

    def subscribe(self, symbols: list[str]) -> list[str]:
        raise NotImplementedError

    def unsubscribe(self, symbols: list[str]) -> list[str]:
        raise NotImplementedError

    def resubscribe(self, symbol: str) -> list[str]:
        """Frames that make the venue send a fresh snapshot of one instrument's book."""
        self._book_only = True
        try:
            return self.unsubscribe([symbol]) + self.subscribe([symbol])
        finally:
            self._book_only = False

    def ping(self) -> str | None:
        return None

    def reply(self, frame: str) -> list[str]:
        return []

    def snapshot_url(self, symbol: str) -> str | None:
        return None
