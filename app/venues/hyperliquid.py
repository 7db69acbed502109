"""Hyperliquid perpetuals: ``l2Book``, ``bbo``, ``trades`` and ``activeAssetCtx`` on one WebSocket.

Wire schema (``wss://api.hyperliquid.xyz/ws``; every message ``{"channel":…,"data":…}``):

* ``l2Book``: ``{"coin","time":ms,"levels":[[bid…],[ask…]]}``, a level ``{"px","sz","n"}`` (price and
  size strings, ``n`` the number of orders), best first. Every message is the venue's WHOLE book
  (up to 20 levels a side), pushed on blocks: no sequence number, no checksum.
* ``bbo``: ``{"coin","time","bbo":[bid | null, ask | null]}``, pushed when the top changes on a block.
* ``trades``: ``[{"coin","side":"B"|"A","px","sz","hash","time","tid","users"}]``; a trade is unique by
  (time, coin, tid); the first frame after subscribing may repeat recent trades.
* ``activeAssetCtx``: ``{"coin","ctx":{"markPx","midPx","oraclePx","funding","openInterest","premium",…}}``.
* answers: ``subscriptionResponse`` (echoes the subscription), ``pong``, ``error`` (text naming the
  subscription), and the plain text ``Websocket connection established.`` on connect.

The rule (:class:`HyperliquidRule`): an ``l2Book`` message replaces the book; one whose ``time`` is
older than the ``time`` last applied is ignored — counted as a duplicate, whatever connection it came
on (two API servers a block apart) — and one of the same ``time`` is applied. ``BookUpdate.seq`` is
the block time in ms, ``ts_exchange`` the same in ns. What ``book.top``/``book.depth`` and the table
see of a snapshot is its diff against the book before it (``OrderBook.replace``): the levels that
changed, appeared or left. A level that leaves the visible 20 is published as deleted although it
may rest deeper in the venue's book: the book is the venue's top 20, no more.

``bbo`` is not used for books (it names the top of a block the ``l2Book`` of that block also
carries): it is published as a ticker (channel ``bbo``: bid, ask and their sizes; a null side is an
empty one). ``activeAssetCtx`` is published as a ticker (mark, mid, oracle price as ``index``,
funding — the venue's hourly rate — open interest in coins, premium); it carries no time.

Aggregation: ``l2Book`` takes ``nSigFigs`` (2–5: levels rounded to that many significant figures)
and, with ``nSigFigs`` 5, ``mantissa`` (1, 2 or 5) — an aggregated, coarser book. bookstream never
sends them: the book is at full precision (a bad ``nSigFigs`` would also close the connection).

Session (:class:`HyperliquidProtocol`): one ``{"method":"subscribe","subscription":{"type":…,
"coin":…}}`` per channel, confirmed by a ``subscriptionResponse`` echoing it; ``{"method":"ping"}``
every ``ping_s`` (answered on channel ``pong``) keeps the connection inside the venue's 60 s idle
limit. An unknown coin makes the venue close the WHOLE connection (every subscription on it), so the
protocol never subscribes a coin it can tell is not one: a coin of the wrong shape, or — once
:meth:`HyperliquidProtocol.set_known` was given the venue's list — one not on it. One bad coin must
not take the others down: a coin refused so is logged and left out of the connection, and a coin
the venue closed the connection for is quarantined by it (``refusal_closes``, ``app.ingest.connection``).

Specs: ``POST /info {"type":"meta"}`` → ``{"universe":[{"name","szDecimals","maxLeverage",
"isDelisted"?},…]}`` (:class:`HyperliquidInstruments`; its request is a POST: ``post_body``).
Perpetuals, linear, USDC-settled, quoted in USD; the lot is 10^-szDecimals; the tick is not a
constant (prices have at most 5 significant figures and 6 − szDecimals decimals) and is left out.

Staleness: the venue's ``time`` is the block time, so a book is judged by the age of that time,
not by the arrival of frames: a snapshot received more than 10 s after its block time
(``HyperliquidRule.max_lag_ns``; an API server behind the chain) leaves the book stale until a
current one arrives; while no snapshot arrives at all, the book timer (``Processor.age``, every
second) makes it stale once its last block time is that old.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from typing import Any

import orjson

from app.decimals import decimal_text
from app.errors import FrameError
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
    ms_to_ns,
    named_objects,
    num_str,
    opt_str,
)
from app.venues.session import Ack, Endpoint, Limits, Protocol, Request, Sub, dumps

log = logging.getLogger(__name__)

BOOK = "l2Book"
#: channels whose data is one object naming its ``coin``
_COIN_CHANNELS = frozenset({BOOK, "bbo", "activeAssetCtx"})
#: the plain-text greeting the venue sends on connect (not JSON)
GREETING = b"Websocket connection established."


def _book_levels(raw: Any, what: str) -> list[Level]:
    """``[{"px","sz","n"}…]`` → [(px, sz)], the venue's strings kept."""
    if not isinstance(raw, list):
        raise FrameError("bad-levels", f"{what} is not a list")
    # Fast path, in C: every level an object with string px and sz.
    fast = [(x["px"], x["sz"]) for x in raw if type(x) is dict and type(x.get("px")) is str is type(x.get("sz"))]
    if len(fast) == len(raw):
        return fast
    out: list[Level] = []
    for item in raw:
        if not isinstance(item, dict) or "px" not in item or "sz" not in item:
            raise FrameError("bad-levels", f"{what} entry {str(item)[:40]}")
        out.append((num_str(item["px"]), num_str(item["sz"])))
    return out


class HyperliquidAdapter:
    venue = "hyperliquid"

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        if kind is not Kind.WS or frame.startswith(GREETING):
            return []  # REST bodies are the instrument list (venue-keyed); the greeting is no JSON
        msg = loads(frame)
        if not isinstance(msg, dict):
            return []
        channel, data = msg.get("channel"), msg.get("data")
        if not isinstance(channel, str):
            return []
        if channel in _COIN_CHANNELS and isinstance(data, dict):
            coin = data.get("coin")
            return [coin] if isinstance(coin, str) and coin else []
        if channel == "trades" and isinstance(data, list):
            coins = (t.get("coin") for t in data if isinstance(t, dict))
            return list(dict.fromkeys(c for c in coins if isinstance(c, str) and c))
        return []  # subscriptionResponse, pong, error

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        if kind is not Kind.WS or frame.startswith(GREETING):
            return []
        msg = obj(loads(frame), "frame")
        if msg.get("channel") != BOOK:
            return []
        data = obj(msg.get("data"), "data")
        if data.get("coin") != symbol:
            raise FrameError("wrong-instrument", f"l2Book of {str(data.get('coin'))[:40]!r}, keyed {symbol!r}")
        sides = data.get("levels")
        if not isinstance(sides, list) or len(sides) != 2:
            raise FrameError("bad-levels", "levels is not [bids, asks]")
        time_ms = as_int(data.get("time"), "time")
        return [BookUpdate(snapshot=True, seq=time_ms, bids=_book_levels(sides[0], "bids"),
                           asks=_book_levels(sides[1], "asks"), ts_exchange=ms_to_ns(time_ms))]

    def conn_seq(self, frame: bytes) -> int | None:
        return None


class HyperliquidRule(SequenceRule):
    """Every message a whole snapshot, ordered by its block ``time``: one older than the last
    applied is a duplicate (whatever its connection), one of the same time is applied again; one
    received more than ``max_lag_ns`` after its block time (an API server behind the chain) leaves
    the book stale until a current one arrives."""

    max_lag_ns = 10_000_000_000

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        # never asked for l2Book (snapshots only); an update at or before the last is a repeat
        return Continuity.DUPLICATE if self.repeated(last, upd) else Continuity.OK

    def snapshot_repeated(self, last: int | None, upd: BookUpdate, synced_same_conn: bool) -> bool:
        return last is not None and upd.seq < last


#: what a coin may look like: a perpetual (``BTC``, ``kPEPE``), a builder-deployed one (``xyz:AAPL``),
#: a spot pair (``PURR/USDC``) or index (``@107``)
_COIN = re.compile(r"^(?:(?:[a-z0-9]{1,16}:)?[A-Za-z0-9]{1,24}|[A-Za-z0-9]{1,24}/[A-Za-z0-9]{1,24}|@\d{1,6})$")


class HyperliquidProtocol(Protocol):
    """One message per subscription (``{"method":"subscribe","subscription":{"type","coin"}}``),
    confirmed by ``{"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":
    {…}}}``; refused by ``{"channel":"error","data":"Invalid subscription {…}"}`` (``Already
    subscribed: {…}`` confirms it). Keepalive ``{"method":"ping"}``. Coins it can tell are not the
    venue's are never subscribed (see the module: one would close the connection)."""

    known: frozenset[str] | None = None  # the venue's coins, when known (``set_known``)
    refusal_closes = True  # an unknown coin (or a bad nSigFigs) closes the whole connection

    def set_known(self, coins: list[str] | frozenset[str]) -> None:
        """The venue's coins (its ``meta`` list): a coin not on it is never subscribed."""
        self.known = frozenset(coins)

    def accepted(self, symbols: list[str]) -> list[str]:
        """``symbols`` without the coins that would make the venue close the connection (logged)."""
        out = []
        for coin in symbols:
            if not _COIN.match(coin):
                log.warning("hyperliquid: %r is not a coin name: not subscribed (the venue would close the "
                            "connection of every other coin with it)", coin)
            elif self.known is not None and coin not in self.known:
                log.warning("hyperliquid: %r is not among the venue's %d coins: not subscribed", coin, len(self.known))
            else:
                out.append(coin)
        return out

    def subs(self, symbols: list[str]) -> list[Sub]:
        return super().subs(self.accepted(symbols))

    def channel_id(self, symbol: str, name: str) -> str:
        return f"{name}:{symbol}"

    def arg(self, symbol: str, name: str) -> dict[str, str]:
        return {"type": name, "coin": symbol}  # no nSigFigs/mantissa: full precision

    def requests(self, op: str, subs: list[Sub]) -> list[Request]:
        return [self.request(op, [sub]) for sub in subs]  # one subscription per message, whatever the limits say

    def request(self, op: str, subs: list[Sub]) -> Request:
        if len(subs) != 1:
            raise ValueError(f"hyperliquid: one subscription per message, not {len(subs)}")
        return Request(dumps({"method": op, "subscription": subs[0].arg}), op, (subs[0].id,))

    def ping(self) -> str | None:
        return '{"method":"ping"}'

    def ack(self, frame: bytes) -> Ack | None:
        head = frame[:40]
        if b'"channel":"subscriptionResponse"' in head:
            data = obj(obj(loads(frame), "frame").get("data"), "data")
            cid = _subscription_id(data.get("subscription"))
            if data.get("method") != "subscribe" or cid is None:
                return Ack()  # an unsubscribe answered
            return Ack(ok=(cid,))
        if b'"channel":"error"' in head:
            text = str(obj(loads(frame), "frame").get("data", ""))
            cid = _subscription_id(_named_subscription(text))
            if text.startswith("Already subscribed"):
                return Ack(ok=(cid,) if cid else ())
            return Ack(failed=text[:200] or "error", refused=(cid,) if cid else ())
        return None

    def data_channels(self, frame: bytes) -> tuple[str, ...]:
        found = _DATA.match(frame)
        if found is None:
            return ()
        coin = _COIN_FIELD.search(frame, found.end(), found.end() + 200)
        return (f"{found.group(1).decode()}:{coin.group(1).decode()}",) if coin else ()


_DATA = re.compile(rb'\{"channel":"(l2Book|trades|bbo|activeAssetCtx)"')
_COIN_FIELD = re.compile(rb'"coin":"([^"]+)"')


def _named_subscription(text: str) -> Any:
    """The subscription an error names (``Invalid subscription {"type":…,"coin":…}``), or None."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        return orjson.loads(text[start:])
    except orjson.JSONDecodeError:
        return None


def _subscription_id(sub: Any) -> str | None:
    if not isinstance(sub, dict) or not isinstance(sub.get("type"), str) or not isinstance(sub.get("coin"), str):
        return None
    return f"{sub['type']}:{sub['coin']}"


#: ``activeAssetCtx.ctx`` field → normalised ticker field (``app.market.records.TICKER_FIELDS``)
_CTX = {"markPx": "mark", "midPx": "mid", "oraclePx": "index", "funding": "funding_rate",
        "openInterest": "open_interest", "premium": "premium"}


class HyperliquidMarket:
    """``trades`` (``order`` = the block time in ms, ``trade_id`` = ``tid``: the cursor drops a
    trade at an older time, or at the last time with a ``tid`` already seen — which is how the
    trades repeated after a subscription go; ``side`` is the taker's, B = buy), ``activeAssetCtx``
    and ``bbo`` (tickers)."""

    MARKS = (b'"channel":"trades"', b'"channel":"activeAssetCtx"', b'"channel":"bbo"')

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        if kind is not Kind.WS or not channel_prefix(frame, self.MARKS, 40):
            return [], []
        msg = obj(loads(frame), "frame")
        channel, data = msg.get("channel"), msg.get("data")
        if channel == "trades":
            if not isinstance(data, list):
                raise FrameError("bad-shape", "trades data is not a list")
            return [self._trade(t) for t in data if isinstance(t, dict) and t.get("coin") == symbol], []
        if channel not in ("activeAssetCtx", "bbo"):
            return [], []
        data = obj(data, "data")
        if data.get("coin") != symbol:
            raise FrameError("wrong-instrument", f"{channel} of {str(data.get('coin'))[:40]!r}, keyed {symbol!r}")
        if channel == "activeAssetCtx":
            ctx = obj(data.get("ctx"), "ctx")
            given = {out: opt_str(ctx.get(name)) for name, out in _CTX.items() if name in ctx}
            return [], [Ticker("activeAssetCtx", 0, given)]  # the venue gives no time
        bbo = data.get("bbo")
        if not isinstance(bbo, list) or len(bbo) != 2:
            raise FrameError("bad-shape", "bbo is not [bid, ask]")
        fields: dict[str, Any] = {}
        for side, level in zip(("bid", "ask"), bbo, strict=True):
            if level is None:  # an empty side
                fields[side] = fields[f"{side}_size"] = None
            else:
                level = obj(level, side)
                fields[side], fields[f"{side}_size"] = num_str(level.get("px")), num_str(level.get("sz"))
        return [], [Ticker("bbo", ms_to_ns(as_int(data.get("time"), "time")), fields)]

    @staticmethod
    def _trade(t: dict[str, Any]) -> Trade:
        time_ms = as_int(t.get("time"), "time")
        tid = as_int(t.get("tid"), "tid")
        return Trade(trade_id=str(tid), price=num_str(t.get("px")), size=num_str(t.get("sz")), unit="base",
                     side={"B": "buy", "A": "sell"}.get(str(t.get("side")), ""), ts_exchange=ms_to_ns(time_ms),
                     order=time_ms)


class HyperliquidInstruments:
    """``POST {api_url}/info`` with ``{"type":"meta"}``: the perpetuals' universe."""

    BODY = b'{"type":"meta"}'

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        return [f"{api_url}/info"]  # one list for every coin

    def post_body(self, url: str) -> bytes | None:
        return self.BODY if url.endswith("/info") else None

    def parse(self, body: bytes) -> list[Spec] | None:
        msg = loads(body)
        items = named_objects(msg.get("universe"), "name") if isinstance(msg, dict) else None
        if items is None:
            return None
        out = []
        for d in items:
            decimals = as_int(d.get("szDecimals"), "szDecimals")
            if not 0 <= decimals <= 18:
                raise FrameError("bad-shape", f"szDecimals={decimals}")
            name = d["name"]
            out.append(Spec(
                key=f"hyperliquid:{name}", kind="perpetual", margin="linear", base=name.rpartition(":")[2],
                quote="USD", settle="USDC", contract_size="1", lot_size=decimal_text(Decimal(1).scaleb(-decimals)),
                max_leverage=opt_str(d.get("maxLeverage")),
                underlying=name, index=name, state="delisted" if d.get("isDelisted") is True else "open",
            ))
        return out


VENUE = Venue(
    "hyperliquid", HyperliquidAdapter(), HyperliquidRule(), HyperliquidProtocol,
    # Hyperliquid "Rate limits" and "Timeouts and heartbeats" (2026-12): at most 1,000 subscriptions
    # and 100 connections per IP, 2,000 messages a minute sent over all of them; a connection that
    # sends nothing for 60 s is closed (pinged every 20 s). 50 coins × 4 channels = 200 a connection.
    endpoint=Endpoint("wss://api.hyperliquid.xyz/ws", BOOK, max_per_conn=50, ping_s=20, silence_s=60,
                      market=("trades", "activeAssetCtx", "bbo"), api_url="https://api.hyperliquid.xyz",
                      limits=Limits(scope="hyperliquid", args_per_request=1, ip_msgs=(2000, 60.0))),
    sim_ws_path="/ws/hyperliquid/ws", market=HyperliquidMarket(), instrument_lists=HyperliquidInstruments(),
)
