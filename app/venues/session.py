"""Venue sessions, sans I/O: where a venue is, what it allows, what a connection sends it and
how the venue answers.

An :class:`Endpoint` is a venue's address, channels and :class:`Limits` (data, not code: venues
move them, and ``FEEDS_FILE`` overrides them). A :class:`Protocol` turns (symbols, credentials)
into :class:`Request` frames — to log in, subscribe, resubscribe one instrument or one channel,
keep the connection alive, answer venue requests (Deribit's ``test_request``) — and reads the
venue's answers back: which channel a data frame belongs to (:meth:`Protocol.data_channels`) and
what an acknowledgement or refusal says (:meth:`Protocol.ack`, an :class:`Ack`). Each venue
module subclasses it. The socket, pacing and confirmation code lives in ``app.ingest.connection``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import orjson

from app.config import Secret

_ids = itertools.count(1)


#: A rate: at most ``n`` per ``seconds`` ((0, 0): no limit).
Rate = tuple[int, float]
NO_RATE: Rate = (0, 0.0)


@dataclass(frozen=True)
class Limits:
    """What a venue allows (its documentation; the date is in the README's venue table).
    Per-IP budgets are shared by every connection of the same ``scope`` in this process
    (Binance USD-M and COIN-M share one REST budget: scope ``binance-futures``)."""

    scope: str = ""  # who shares the per-IP budgets ("" → the venue id)
    args_per_request: int = 0  # channels in one subscribe request (Bybit spot: 10)
    streams_per_conn: int = 0  # channels on one connection (Binance futures: 200)
    msgs: Rate = NO_RATE  # messages a connection may send (Binance: 5 a second)
    ip_msgs: Rate = NO_RATE  # messages all connections may send (Coinbase: 8 a second per IP)
    ops: Rate = NO_RATE  # subscribe / unsubscribe / login requests per connection (OKX: 480 an hour)
    ip_ops: Rate = NO_RATE  # subscribe requests per IP (Deribit's subscribe credits)
    conns: Rate = NO_RATE  # connection opens per IP (OKX: 3 a second)
    rest_weight: Rate = NO_RATE  # REST weight per IP (Binance spot: 6,000 a minute)
    rest_weights: tuple[tuple[int, int], ...] = ()  # snapshot depth → weight, ascending (the depths to use)
    ack_s: float = 10.0  # a subscription not acknowledged within this has failed
    first_s: float = 10.0  # a confirmed book channel must deliver within this (its snapshot)
    cadence: tuple[tuple[str, float], ...] = ()  # channel template → longest silence its push interval allows
    retry_s: float = 30.0  # first retry of a refused or silent subscription (doubling to 10 min)


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
    limits: Limits = Limits()
    #: channel template → the WebSocket URL that serves it when not ``ws_url`` (Binance USD-M:
    #: mark price and trades under ``/market``, depth under ``/public``)
    ws_urls: tuple[tuple[str, str], ...] = ()

    def parts(self) -> list[Endpoint]:
        """One endpoint per WebSocket URL: the book channel (and the market channels it serves)
        on ``ws_url``, each other URL with its market channels only (no book, no REST)."""
        moved = dict(self.ws_urls)
        if not moved:
            return [self]
        urls: dict[str, list[str]] = {}
        for template in self.market:
            urls.setdefault(moved.get(template, self.ws_url), []).append(template)
        main = replace(self, market=tuple(urls.pop(self.ws_url, [])), ws_urls=())
        return [main] + [replace(self, ws_url=url, channel="", rest_url="", market=tuple(templates), ws_urls=())
                         for url, templates in urls.items()]

    def cadence_of(self, template: str) -> float:
        return dict(self.limits.cadence).get(template, 0.0)


@dataclass(frozen=True)
class Request:
    """A text frame to send, and what it is: ``op`` (subscribe, unsubscribe, auth, other), the
    channel ids it asks for, and the request id the venue's answer echoes ("" if none)."""

    text: str
    op: str = "other"
    channels: tuple[str, ...] = ()
    id: str = ""


class Sub(NamedTuple):
    """One channel of one instrument (``symbol`` "" for a venue-wide channel): its id as the
    venue names it in data and answers, the venue's subscribe argument, its template."""

    symbol: str
    id: str
    arg: Any
    template: str = ""
    book: bool = False


@dataclass
class Ack:
    """What a venue answer says about a request. ``complete``: it answers the whole request
    (channels of it not in ``ok`` were not subscribed); otherwise channels are confirmed one by one."""

    id: str = ""  # the request answered ("" when the venue names none)
    ok: tuple[str, ...] = ()  # channel ids confirmed
    failed: str | None = None  # the request (or the channels named) refused: the venue's reason
    refused: tuple[str, ...] = ()  # channel ids the refusal names
    symbols: tuple[str, ...] = ()  # instruments the refusal names (all their channels)
    complete: bool = False
    auth: bool | None = None  # the answer to a login: accepted or not
    extra: dict[str, Any] = field(default_factory=dict)


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """``items`` in lists of at most ``size`` (0: one list)."""
    if size <= 0:
        return [items] if items else []
    return [items[i : i + size] for i in range(0, len(items), size)]


def next_id() -> int:
    """A request id, unique within this process."""
    return next(_ids)


def dumps(obj: object) -> str:
    """A JSON text frame."""
    return orjson.dumps(obj).decode()


class Protocol:
    """Defaults: no auth, no keepalive message, resync = unsubscribe + subscribe of the book
    channel. A venue module defines ``request`` (one frame for some subscriptions), ``ack``
    and ``data_channels``; the rest follows from the endpoint's channels and limits."""

    venue = ""
    #: The venue answers a subscription it refuses by closing the whole connection (Hyperliquid, an
    #: unknown coin): the connection blames the subscription that was still unanswered when the venue
    #: closed it, and never subscribes that instrument again (``app.ingest.connection``).
    refusal_closes = False

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

    # -- subscriptions --------------------------------------------------------------------
    def channel_id(self, symbol: str, name: str) -> str:
        """How the venue names this channel in its data frames and answers."""
        return name

    def arg(self, symbol: str, name: str) -> Any:
        """The venue's subscribe argument for this channel."""
        return name

    def subs(self, symbols: list[str]) -> list[Sub]:
        """Every subscription a connection makes for ``symbols``: each instrument's channels,
        then the venue-wide ones (``aux``)."""
        out = []
        templates = [(self.endpoint.channel, True)] if self.endpoint.channel else []
        templates += [(t, False) for t in self.market_templates()]
        for symbol in symbols:
            for template, book in templates:
                name = self._name(template, symbol, book)
                out.append(Sub(symbol, self.channel_id(symbol, name), self.arg(symbol, name), template, book))
        return out + self.aux(symbols)

    def _name(self, template: str, symbol: str, book: bool) -> str:
        return self.channel(symbol) if book else template.format(symbol=symbol, symbol_lower=symbol.lower())

    def aux(self, symbols: list[str]) -> list[Sub]:
        """Venue-wide channels that go with these instruments (registry changes, option summaries)."""
        return []

    def requests(self, op: str, subs: list[Sub]) -> list[Request]:
        """The frames that (un)subscribe ``subs``, at most ``Limits.args_per_request`` each."""
        return [self.request(op, part) for part in chunks(subs, self.endpoint.limits.args_per_request)]

    def request(self, op: str, subs: list[Sub]) -> Request:
        raise NotImplementedError

    def url(self, symbols: list[str]) -> str:
        return self.endpoint.ws_url

    def auth(self) -> Request | None:
        """The login to send (and wait for) before subscribing; None without credentials."""
        return None

    def auth_failed(self, reason: str) -> None:
        """The venue refused the login: fall back to what needs none."""

    def setup(self) -> list[Request]:
        """Frames sent after the login and before the subscriptions (Deribit's heartbeat)."""
        return []

    def on_open(self, symbols: list[str]) -> list[Request]:
        """Everything a new connection sends, in order (the connection awaits the login)."""
        login = self.auth()
        return ([login] if login is not None else []) + self.setup() + self.subscribe(symbols)

    def subscribe(self, symbols: list[str]) -> list[Request]:
        return self.requests("subscribe", self.subs(symbols))

    def unsubscribe(self, symbols: list[str]) -> list[Request]:
        return self.requests("unsubscribe", self.subs(symbols))

    def resubscribe(self, symbol: str) -> list[Request]:
        """Frames that make the venue send a fresh snapshot of one instrument's book."""
        self._book_only = True
        try:
            return self.unsubscribe([symbol]) + self.subscribe([symbol])
        finally:
            self._book_only = False

    def ack(self, frame: bytes) -> Ack | None:
        """What a venue answer (acknowledgement, refusal, login result) says; None for any other frame."""
        return None

    def data_channels(self, frame: bytes) -> tuple[str, ...]:
        """The channel ids a data frame belongs to; () for answers, heartbeats and pongs (they
        never count as data)."""
        return ()

    def ping(self) -> str | None:
        return None

    def reply(self, frame: str) -> list[str]:
        return []

    def snapshot_url(self, symbol: str, depth: int = 0) -> str | None:
        return None
