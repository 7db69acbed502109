"""dYdX v4 indexer: ``v4_orderbook``, ``v4_trades`` and ``v4_markets`` on one WebSocket.

Wire schema (``wss://indexer.dydx.trade/v4/ws``): ``{"type","connection_id","message_id",
"channel","id","contents"}`` where ``type`` is ``connected`` (on connect), ``subscribed`` (the
channel's initial data), ``channel_data`` (one update), ``channel_batch_data`` (``contents`` a list
of updates, for ``"batched":true`` subscriptions), ``unsubscribed`` or ``error`` (``message``).
``message_id`` counts the messages of one connection, over every channel: it increases, but a
channel sees only some of its values.

* ``v4_orderbook`` (``id`` the market, ``BTC-USD``): ``subscribed`` carries the whole book
  (``contents: {bids:[{price,size}…], asks:[…]}``) — a snapshot; then ``contents: {bids?:
  [[price,size]…], asks?: […]}``: absolute sizes, ``"0"`` deletes. No venue time.
* ``v4_trades``: ``contents: {trades:[{id,side,size,price,type,createdAt,createdAtHeight}…]}``, the
  ``subscribed`` one listing the latest trades (newest first); a trade is unique by ``id``.
* ``v4_markets`` (venue-wide, no ``id``): ``subscribed`` holds every market (``contents.markets``,
  the REST ``/v4/perpetualMarkets`` body), ``channel_data`` what changed (``contents.trading`` per
  market: ``nextFundingRate``, ``openInterest``, …; ``contents.oraclePrices`` per market:
  ``oraclePrice`` (``price`` in older indexers), ``effectiveAt``).

The rule (:class:`DydxRule`): a snapshot replaces the book; ``BookUpdate.seq`` is ``message_id``; an
update at or before the ``message_id`` last applied is a duplicate, any later one follows (the
counter is the connection's, so the ids a book sees have holes by design; a connection reset
resyncs every book of it). Crossed books happen by design (no global sequence across the chain's
nodes); the venue documents how to uncross ("How to uncross the orderbook"): each level remembers
the ``message_id`` that set it, and while best bid ≥ best ask the crossing level of the side set
by the older message goes; set by the same message, the sizes net (the larger keeps the
difference). The rule says so (``uncross_by_age``): ``app.sync`` applies ``app.book.uncross`` and the
book stays synced where every other venue's would go stale. The ids are state, persisted with the
levels (``app.state.layout``, rows ``K \\0 i b|a <price>``) and in ``book.checkpoints``: a worker
restarted from the table uncrosses exactly as the one before it would have.

The indexer's ``{"type":"error","message":"Internal error, could not fetch data for subscription:
v4_orderbook.","channel":"v4_orderbook","id":"BTC-USD",…}`` answers a subscription it could not
serve: the channel is not subscribed and must be subscribed again. The adapter raises
``app.errors.VenueFault`` for it (the book goes stale with the venue's words and asks for a resync,
which subscribes again); the session also reads it as a refusal (``feed.status``; retried after
``Limits.retry_s``).

Session (:class:`DydxProtocol`): one ``{"type":"subscribe","channel":…,"id":…,"batched":false}``
per channel (``v4_markets`` once per connection, without ``id``), at most 2 a second per
connection; the ``subscribed`` message is the channel's first data. ``{"type":"unsubscribe",
"channel":…,"id":…}`` is answered ``unsubscribed``. The server pings every 30 s and the WebSocket
library answers: nothing to send. ``v4_markets`` frames are keyed ``dydx:`` once, not once per
market they name: the full list feeds the registry, the updates become one ticker per market
(``parse_venue_market``), published on that market's partition.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from app.decimals import decimal_text
from app.errors import FrameError, VenueFault
from app.market.instruments import Spec
from app.market.records import Ticker, Trade
from app.venues._json import loads, obj
from app.venues.base import (
    BookUpdate,
    Continuity,
    Kind,
    Level,
    SequenceRule,
    Venue,
    as_int,
    channel_prefix,
    levels,
    num_str,
    opt_str,
    rfc3339_ns,
)
from app.venues.session import Ack, Endpoint, Limits, Protocol, Request, Sub, dumps

BOOK, TRADES, MARKETS = "v4_orderbook", "v4_trades", "v4_markets"
#: a tuple: ``in`` compares, never hashes (a list in a bad frame is no key)
DATA = ("subscribed", "channel_data", "channel_batch_data")
#: the start of the indexer's answer to a subscription it could not serve (resubscribe)
FETCH_FAILED = "Internal error, could not fetch data for subscription"


def _levels(raw: Any, what: str) -> list[Level]:
    """``[[price,size]…]`` (updates) or ``[{price,size}…]`` (the snapshot) → [(price, size)]."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FrameError("bad-levels", f"{what} is not a list")
    if not raw or type(raw[0]) is not dict:
        return levels(raw, what)
    fast = [(x["price"], x["size"]) for x in raw
            if type(x) is dict and type(x.get("price")) is str is type(x.get("size"))]
    if len(fast) == len(raw):
        return fast
    out: list[Level] = []
    for item in raw:
        if not isinstance(item, dict) or "price" not in item or "size" not in item:
            raise FrameError("bad-levels", f"{what} entry {str(item)[:40]}")
        out.append((num_str(item["price"]), num_str(item["size"])))
    return out


def _contents(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The update(s) of a data message: ``channel_batch_data`` holds a list of them."""
    contents = msg.get("contents")
    if msg.get("type") == "channel_batch_data":
        if not isinstance(contents, list):
            raise FrameError("bad-shape", "channel_batch_data contents is not a list")
        return [obj(c, "contents item") for c in contents]
    return [obj(contents, "contents")]


class DydxAdapter:
    venue = "dydx"

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        if kind is not Kind.WS:
            return []  # REST bodies are the instrument list (venue-keyed)
        msg = loads(frame)
        if not isinstance(msg, dict):
            return []
        channel, market = msg.get("channel"), msg.get("id")
        if channel in (BOOK, TRADES) and isinstance(market, str) and market:
            return [market]
        return []  # connected, v4_markets (venue-wide), answers naming no market

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        if kind is not Kind.WS:
            return []
        msg = obj(loads(frame), "frame")
        if msg.get("channel") != BOOK:
            return []
        if msg.get("id") != symbol:
            raise FrameError("wrong-instrument", f"v4_orderbook of {str(msg.get('id'))[:40]!r}, keyed {symbol!r}")
        type_ = msg.get("type")
        if type_ == "error":
            message = str(msg.get("message", ""))
            if message.startswith(FETCH_FAILED):
                raise VenueFault(message[:200])
            return []  # another answer (already subscribed …): the session's
        if type_ not in DATA:
            return []  # unsubscribed
        seq = as_int(msg.get("message_id"), "message_id")
        if type_ == "subscribed":
            c = obj(msg.get("contents"), "contents")
            return [BookUpdate(snapshot=True, seq=seq, bids=_levels(c.get("bids"), "bids"),
                               asks=_levels(c.get("asks"), "asks"))]
        bids: list[Level] = []
        asks: list[Level] = []
        for c in _contents(msg):  # a batch: its updates in order, all of one message_id
            bids += _levels(c.get("bids"), "bids")
            asks += _levels(c.get("asks"), "asks")
        return [BookUpdate(snapshot=False, seq=seq, bids=bids, asks=asks)]

    def conn_seq(self, frame: bytes) -> int | None:
        # message_id numbers the connection's messages, but they are not promised in order across
        # channels: a jump is not a gap here (the per-instrument rule checks only the order)
        return None


class DydxRule(SequenceRule):
    """``message_id`` only grows: an update at or before the last applied is a duplicate, any later
    one follows (a channel sees some of the connection's ids). Crossed books are uncrossed by the
    venue's rule (see the module), not made stale."""

    uncross_by_age = True

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        return Continuity.DUPLICATE if self.repeated(last, upd) else Continuity.OK


class DydxProtocol(Protocol):
    """One message per channel; ``v4_markets`` once per connection (with the market data); a
    channel's ``subscribed`` message is its first data (it confirms it). Errors name the channel and
    market they answer: "could not fetch data" and invalid subscriptions are refusals (subscribed
    again after ``retry_s``), "already subscribed" confirms."""

    def channel_id(self, symbol: str, name: str) -> str:
        return f"{name}:{symbol}"

    def arg(self, symbol: str, name: str) -> dict[str, str]:
        return {"channel": name, "id": symbol}

    def aux(self, symbols: list[str]) -> list[Sub]:
        return [Sub("", MARKETS, {"channel": MARKETS})] if self.market_templates() else []

    def requests(self, op: str, subs: list[Sub]) -> list[Request]:
        return [self.request(op, [sub]) for sub in subs]  # one channel per message, whatever the limits say

    def request(self, op: str, subs: list[Sub]) -> Request:
        if len(subs) != 1:
            raise ValueError(f"dydx: one channel per message, not {len(subs)}")
        body: dict[str, Any] = {"type": op, **subs[0].arg}
        if op == "subscribe":
            body["batched"] = False
        return Request(dumps(body), op, (subs[0].id,))

    def ack(self, frame: bytes) -> Ack | None:
        head = frame[:30]
        if b'"type":"unsubscribed"' in head:
            return Ack()
        if b'"type":"error"' not in head:
            return None
        msg = obj(loads(frame), "frame")
        message = str(msg.get("message", ""))[:200] or "error"
        channel, market = msg.get("channel"), msg.get("id")
        cid = (f"{channel}:{market}" if isinstance(market, str) and market else channel) \
            if isinstance(channel, str) and channel else None
        if "already subscribed" in message:
            return Ack(ok=(cid,) if cid else ())
        if message.startswith("Invalid unsubscribe"):
            return Ack(failed=message)  # an unsubscribe of what was not subscribed: nothing to follow
        return Ack(failed=message, refused=(cid,) if cid else ())

    def data_channels(self, frame: bytes) -> tuple[str, ...]:
        if _DATA.match(frame) is None:
            return ()
        end = frame.find(b'"contents"', 0, 400)
        head = frame[: end if end > 0 else 400]
        channel = _CHANNEL.search(head)
        if channel is None:
            return ()
        name = channel.group(1).decode()
        market = _ID.search(head)
        return (f"{name}:{market.group(1).decode()}" if market and name != MARKETS else name,)


_DATA = re.compile(rb'\{"type":"(?:subscribed|channel_data|channel_batch_data)"')
_CHANNEL = re.compile(rb'"channel":"(v4_[a-z_]+)"')
_ID = re.compile(rb'"id":"([^"]+)"')


class DydxMarket:
    """``v4_trades``: ``order`` = ``createdAt`` (ns), ``trade_id`` = ``id`` — the cursor drops a trade
    older than the last published, or at its time with an id already seen (so the latest trades
    the ``subscribed`` message repeats); ``side`` is the taker's; ``type`` LIQUIDATED or
    DELEVERAGED (or ``liquidation: true``) is the liquidation flag."""

    MARKS = (b'"channel":"v4_trades"',)

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        if kind is not Kind.WS or not channel_prefix(frame, self.MARKS, 200):
            return [], []
        msg = obj(loads(frame), "frame")
        if msg.get("channel") != TRADES or msg.get("type") not in DATA:
            return [], []  # an answer (error, unsubscribed)
        if msg.get("id") != symbol:
            raise FrameError("wrong-instrument", f"v4_trades of {str(msg.get('id'))[:40]!r}, keyed {symbol!r}")
        trades = []
        for c in _contents(msg):
            items = c.get("trades")
            if not isinstance(items, list):
                raise FrameError("bad-shape", "trades is not a list")
            trades += [self._trade(obj(t, "trade")) for t in items]
        return trades, []

    @staticmethod
    def _trade(t: dict[str, Any]) -> Trade:
        tid = t.get("id")
        if not isinstance(tid, str) or not tid:
            raise FrameError("bad-shape", "trade without id")
        ts = rfc3339_ns(t.get("createdAt"))
        kind = t.get("type")
        liquidation = kind if kind in ("LIQUIDATED", "DELEVERAGED") else "LIQUIDATED" if t.get("liquidation") is True \
            else None
        return Trade(trade_id=tid, price=num_str(t.get("price")), size=num_str(t.get("size")), unit="base",
                     side={"BUY": "buy", "SELL": "sell"}.get(str(t.get("side")), ""), ts_exchange=ts, order=ts,
                     liquidation=liquidation)


class DydxMarkets:
    """``v4_markets`` updates (venue-wide): one partial ticker per market named — the oracle price
    as ``index`` and ``mark`` (dYdX margins and liquidates at the oracle price: it has no other
    mark), ``nextFundingRate`` as ``funding_rate`` (the rate of the coming hourly payment),
    ``openInterest`` (in the base asset); the full list (``subscribed``) is the registry's and,
    for every market with a price, a ticker of the same fields."""

    MARKS = (b'"channel":"v4_markets"',)

    def parse_venue_market(self, kind: Kind, frame: bytes) -> list[Ticker]:
        if kind is not Kind.WS or not channel_prefix(frame, self.MARKS, 200):
            return []
        msg = obj(loads(frame), "frame")
        if msg.get("channel") != MARKETS:
            return []
        if msg.get("type") == "subscribed":
            return self._listed(msg)
        if msg.get("type") not in ("channel_data", "channel_batch_data"):
            return []
        fields: dict[str, dict[str, Any]] = {}
        times: dict[str, int] = {}
        for c in _contents(msg):
            for market, m in obj(c.get("trading") or {}, "trading").items():
                m = obj(m, "trading market")
                row = fields.setdefault(market, {})
                if "nextFundingRate" in m:
                    row["funding_rate"] = opt_str(m["nextFundingRate"])
                if "openInterest" in m:
                    row["open_interest"] = opt_str(m["openInterest"])
            for market, o in obj(c.get("oraclePrices") or {}, "oraclePrices").items():
                o = obj(o, "oracle price")
                price = opt_str(o.get("oraclePrice", o.get("price")))
                fields.setdefault(market, {}).update(index=price, mark=price)
                if o.get("effectiveAt"):
                    times[market] = rfc3339_ns(o["effectiveAt"])
        return [Ticker(MARKETS, times.get(market, 0), row, partial=True, symbol=market)
                for market, row in fields.items() if market and row]

    @staticmethod
    def _listed(msg: dict[str, Any]) -> list[Ticker]:
        """The subscription's first message lists every market with its figures (the registry's
        specs too): a ticker for each market with an oracle price above 0, so a position is valued
        at the venue's price from the start, not only from the first update."""
        contents = obj(msg.get("contents") or {}, "contents")
        out = []
        for market, m in obj(contents.get("markets") or {}, "markets").items():
            m = obj(m, "market")
            price = opt_str(m.get("oraclePrice"))
            if not market or price is None or Decimal(price) <= 0:
                continue  # no price yet (a market initialising): nothing to value at
            row = {"index": price, "mark": price, "funding_rate": opt_str(m.get("nextFundingRate")),
                   "open_interest": opt_str(m.get("openInterest"))}
            out.append(Ticker(MARKETS, 0, {k: v for k, v in row.items() if v is not None}, partial=True,
                              symbol=market))
        return out


#: ``status`` → registry state
_STATES = {"ACTIVE": "open", "PAUSED": "halted", "CANCEL_ONLY": "cancel-only", "POST_ONLY": "post-only",
           "INITIALIZING": "preopen", "FINAL_SETTLEMENT": "settlement"}


def _quantums(count: Any, resolution: Any) -> str | None:
    """``minOrderBaseQuantums`` × 10^``atomicResolution``, exactly (None when either is missing)."""
    if count is None or resolution is None:
        return None
    exponent = as_int(resolution, "atomicResolution")
    if not -40 <= exponent <= 40:
        raise FrameError("bad-shape", f"atomicResolution={exponent}")
    return decimal_text(Decimal(as_int(count, "minOrderBaseQuantums")).scaleb(exponent))


def market_specs(markets: Any) -> list[Spec] | None:
    """``{ticker: market}`` (REST ``/v4/perpetualMarkets`` ``markets``, or the ``subscribed``
    ``v4_markets`` contents) → specs: linear perpetuals quoted in USD, settled in USDC."""
    if not isinstance(markets, dict):
        return None
    out = []
    for ticker, m in markets.items():
        if not ticker or not isinstance(m, dict):
            continue
        base = m.get("baseAsset") or ticker.partition("-")[0]
        out.append(Spec(
            key=f"dydx:{ticker}", kind="perpetual", margin="linear", base=str(base), quote="USD", settle="USDC",
            contract_size="1", tick_size=opt_str(m.get("tickSize")), lot_size=opt_str(m.get("stepSize")),
            min_size=_quantums(m.get("minOrderBaseQuantums"), m.get("atomicResolution")),
            initial_margin=opt_str(m.get("initialMarginFraction")),
            maintenance_margin=opt_str(m.get("maintenanceMarginFraction")),
            underlying=ticker, index=ticker,
            state=_STATES.get(str(m.get("status")), str(m.get("status", "unknown")).lower()),
        ))
    return out


class DydxInstruments:
    """``GET /v4/perpetualMarkets`` (every market in one body), and the ``subscribed`` answer of
    ``v4_markets`` (the same list)."""

    MARKS = (b'"channel":"v4_markets"',)

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        return [f"{api_url}/v4/perpetualMarkets"]

    def parse_ws(self, frame: bytes) -> tuple[list[Spec], list[tuple[str, str, int]]] | None:
        if not frame.startswith(b'{"type":"subscribed"') or not channel_prefix(frame, self.MARKS, 200):
            return None
        msg = obj(loads(frame), "frame")
        if msg.get("type") != "subscribed" or msg.get("channel") != MARKETS:
            return None
        specs = market_specs(obj(msg.get("contents"), "contents").get("markets"))
        if specs is None:
            raise FrameError("bad-shape", "v4_markets subscribed without markets")
        return specs, []

    def parse(self, body: bytes) -> list[Spec] | None:
        msg = loads(body)
        return market_specs(msg.get("markets")) if isinstance(msg, dict) else None


VENUE = Venue(
    "dydx", DydxAdapter(), DydxRule(), DydxProtocol,
    # dYdX indexer "WebSockets" (2026-12): at most 2 subscribe/unsubscribe messages a second per
    # connection; the server pings every 30 s. A subscription it could not serve is retried soon.
    endpoint=Endpoint("wss://indexer.dydx.trade/v4/ws", BOOK, max_per_conn=50, market=(TRADES,),
                      api_url="https://indexer.dydx.trade",
                      limits=Limits(scope="dydx", args_per_request=1, ops=(2, 1.0), retry_s=2.0)),
    sim_ws_path="/ws/dydx/v4/ws", market=DydxMarket(), instrument_lists=DydxInstruments(),
    venue_market=DydxMarkets(),
)
