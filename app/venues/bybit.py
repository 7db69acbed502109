"""Bybit v5 ``orderbook.{depth}.{symbol}`` for spot, linear, inverse and option.

Wire schema: ``{"topic":"orderbook.200.BTCUSDT","type":"snapshot"|"delta","ts":ms,
"cts":ms,"data":{"s":symbol,"b":[[price,size]…],"a":[…],"u":update id,"seq":cross seq}}``.
Size "0" deletes. ``u == 1`` means the venue restarted the book: treat it as a snapshot.
The venue id comes from the connection's endpoint (``/v5/public/{category}``); one venue id
per category, each with its own endpoint. The session pings with ``{"op":"ping"}``.
"""

from __future__ import annotations

import re

from app.errors import FrameError
from app.market.instruments import Spec
from app.market.records import Ticker, Trade
from app.venues._json import loads, obj
from app.venues.base import (
    BookUpdate,
    Continuity,
    Kind,
    SequenceRule,
    Venue,
    as_int,
    channel_prefix,
    levels,
    ms_to_ns,
    named_objects,
    num_str,
    opt_str,
)
from app.venues.session import Ack, Endpoint, Limits, Protocol, Request, Sub, dumps, next_id

CATEGORIES = ("spot", "linear", "inverse", "option")


class BybitAdapter:
    def __init__(self, venue: str) -> None:
        self.venue = venue

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        msg = loads(frame)
        topic = msg.get("topic") if isinstance(msg, dict) else None
        if not isinstance(topic, str) or "." not in topic:
            return []  # op acks, pongs
        if topic.startswith("publicTrade."):  # options: one topic per base coin, trades name their symbol
            data = msg.get("data")
            symbols = [t.get("s") for t in data if isinstance(t, dict)] if isinstance(data, list) else []
            return list(dict.fromkeys(s for s in symbols if isinstance(s, str) and s))
        symbol = topic.rsplit(".", 1)[1]
        return [symbol] if symbol else []

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        msg = obj(loads(frame), "frame")
        topic = msg.get("topic")
        if not isinstance(topic, str) or not topic.startswith("orderbook."):
            return []
        data = obj(msg.get("data"), "data")
        if data.get("s") != symbol or topic.rsplit(".", 1)[1] != symbol:
            raise FrameError("wrong-instrument", f"frame for {data.get('s')!r}")
        type_ = msg.get("type")
        if type_ not in ("snapshot", "delta"):
            raise FrameError("bad-shape", f"type {str(type_)[:20]!r}")
        u = as_int(data.get("u"), "u")
        return [
            BookUpdate(
                snapshot=type_ == "snapshot" or u == 1,
                restart=u == 1,  # whatever the type: never a duplicate of the old book
                seq=u,
                bids=levels(data.get("b", []), "b"),
                asks=levels(data.get("a", []), "a"),
                ts_exchange=ms_to_ns(msg.get("cts") or msg.get("ts")),
            )
        ]

    def conn_seq(self, frame: bytes) -> int | None:
        return None


class BybitRule(SequenceRule):
    """After a snapshot (or ``u == 1``, a restart: the adapter makes it a snapshot) ``u`` grows by 1."""

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        if self.repeated(last, upd):
            return Continuity.DUPLICATE
        return Continuity.OK if last is not None and upd.seq == last + 1 else Continuity.GAP


class BybitProtocol(Protocol):
    """``{"op":"subscribe","args":[topic…],"req_id":…}``, answered ``{"success":…,"ret_msg":…,
    "req_id":…,"op":…}`` for the whole request; a refusal names the topics it refuses
    (``Invalid symbol :[orderbook.200.X,…]``). Spot takes at most 10 args a request."""

    def aux(self, symbols: list[str]) -> list[Sub]:
        if self.venue != "bybit-option" or not self.market_templates():
            return []
        # option trades come per base coin
        return [Sub("", t, t) for t in (f"publicTrade.{c}" for c in sorted({s.split("-")[0] for s in symbols}))]

    def request(self, op: str, subs: list[Sub]) -> Request:
        rid = str(next_id())
        return Request(dumps({"op": op, "args": [s.arg for s in subs], "req_id": rid}), op, tuple(s.id for s in subs),
                       rid)

    def ping(self) -> str | None:
        return '{"op":"ping"}'

    def ack(self, frame: bytes) -> Ack | None:
        if b'"success"' not in frame[:200]:
            return None
        msg = loads(frame)
        if not isinstance(msg, dict) or msg.get("op") not in ("subscribe", "unsubscribe"):
            return None  # pong
        if msg.get("success") is True:
            return Ack(str(msg.get("req_id", "")), complete=True)
        reason = str(msg.get("ret_msg", ""))[:200] or "refused"
        named = _NAMED.search(reason)
        refused = tuple(t.strip() for t in named.group(1).split(",") if t.strip()) if named else ()
        return Ack(str(msg.get("req_id", "")), failed=reason, refused=refused, complete=True)

    def data_channels(self, frame: bytes) -> tuple[str, ...]:
        found = _TOPIC.search(frame, 0, 120)
        return (found.group(1).decode(),) if found else ()


_TOPIC = re.compile(rb'"topic":"([^"]+)"')
_NAMED = re.compile(r"\[([^\]]*)\]")


#: ``tickers`` data field → normalised field (``app.market.records.TICKER_FIELDS``); option IVs
#: are decimals already.
_TICKER = {
    "lastPrice": "last", "markPrice": "mark", "indexPrice": "index", "bid1Price": "bid", "bid1Size": "bid_size",
    "ask1Price": "ask", "ask1Size": "ask_size", "openInterest": "open_interest", "fundingRate": "funding_rate",
    "predictedDeliveryPrice": "estimated_delivery_price", "underlyingPrice": "underlying_price",
    "bid1Iv": "bid_iv", "ask1Iv": "ask_iv", "markIv": "mark_iv", "delta": "delta", "gamma": "gamma",
    "vega": "vega", "theta": "theta",
}


class BybitMarket:
    """``publicTrade.{symbol}`` (options: by base coin; ``i`` trade id, ``seq`` increasing, not
    contiguous) and ``tickers.{symbol}`` (linear/inverse: a snapshot then deltas)."""

    MARKS = (b'"topic":"publicTrade.', b'"topic":"tickers.')

    def __init__(self, category: str) -> None:
        self.unit = "contracts" if category == "inverse" else "base"  # inverse sizes are USD contracts

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        if kind is not Kind.WS or not channel_prefix(frame, self.MARKS, 60):
            return [], []
        msg = obj(loads(frame), "frame")
        topic = msg.get("topic")
        if not isinstance(topic, str):
            return [], []
        if topic.startswith("publicTrade."):
            data = msg.get("data")
            if not isinstance(data, list):
                raise FrameError("bad-shape", "publicTrade data is not a list")
            return [self._trade(obj(t, "trade")) for t in data if isinstance(t, dict) and t.get("s") == symbol], []
        if topic.startswith("tickers."):
            d = obj(msg.get("data"), "data")
            if d.get("symbol") != symbol:
                raise FrameError("wrong-instrument", f"ticker of {str(d.get('symbol'))[:40]!r}, keyed {symbol!r}")
            fields: dict[str, object] = {out: opt_str(d.get(name)) for name, out in _TICKER.items() if name in d}
            if d.get("nextFundingTime"):
                fields["next_funding_ts"] = ms_to_ns(d["nextFundingTime"])
            return [], [Ticker("tickers", ms_to_ns(msg.get("ts")), fields, partial=msg.get("type") == "delta")]
        return [], []

    def _trade(self, t: dict[str, object]) -> Trade:
        ts = ms_to_ns(t.get("T"))
        seq = as_int(t["seq"], "seq") if t.get("seq") is not None else None
        side = t.get("S")
        extra = {out: opt_str(t.get(name)) for name, out in (("mP", "mark_price"), ("iP", "index_price"),
                                                             ("mIv", "mark_iv"), ("iv", "iv")) if name in t}
        return Trade(trade_id=str(t.get("i")), price=num_str(t.get("p")), size=num_str(t.get("v")), unit=self.unit,
                     side={"Buy": "buy", "Sell": "sell"}.get(str(side), ""), ts_exchange=ts,
                     order=seq if seq is not None else ts, seq=seq,
                     block_trade_id=str(t.get("i")) if t.get("BT") is True else None, extra=extra)


class BybitInstruments:
    """``/v5/market/instruments-info?category=…&symbol=…`` (one request per symbol: no paging)."""

    def __init__(self, category: str) -> None:
        self.category = category

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        return [f"{api_url}/v5/market/instruments-info?category={self.category}&symbol={s}" for s in symbols]

    def parse(self, body: bytes) -> list[Spec] | None:
        msg = loads(body)
        result = msg.get("result") if isinstance(msg, dict) else None
        if not isinstance(result, dict) or result.get("category") != self.category:
            return None
        items = named_objects(result.get("list"), "symbol")
        if items is None:
            return None
        out = []
        for d in items:
            contract = str(d.get("contractType") or "")
            kind = ("spot" if self.category == "spot" else "option" if self.category == "option"
                    else "perpetual" if "Perpetual" in contract else "future")
            price, lot = d.get("priceFilter") or {}, d.get("lotSizeFilter") or {}
            delivery = d.get("deliveryTime")
            out.append(Spec(
                key=f"bybit-{self.category}:{d['symbol']}", kind=kind,
                margin="inverse" if self.category == "inverse" else "linear",
                base=str(d.get("baseCoin", "")), quote=str(d.get("quoteCoin", "")),
                settle=str(d.get("settleCoin") or d.get("quoteCoin", "")),
                contract_size="1" if self.category == "inverse" else None, tick_size=opt_str(price.get("tickSize")),
                lot_size=opt_str(lot.get("qtyStep") or lot.get("basePrecision")),
                min_size=opt_str(lot.get("minOrderQty")),
                min_notional=opt_str(lot.get("minNotionalValue") or lot.get("minOrderAmt")),
                option_type={"Call": "call", "Put": "put"}.get(str(d.get("optionsType"))),
                strike=d["symbol"].split("-")[2] if self.category == "option" else None,
                expiry_ns=ms_to_ns(delivery) if delivery not in (None, "", "0") else None,
                underlying=d.get("baseCoin"), state="open" if d.get("status") == "Trading" else
                str(d.get("status", "unknown")).lower(),
            ))
        return out


def _limits(category: str) -> Limits:
    """Bybit v5 "Connect" (2026-11): spot takes at most 10 args per subscribe request (the other
    categories limit a request's length, not its args: 10 kept for all); at most 500 connection
    opens per 5 minutes per IP."""
    return Limits(scope="bybit", args_per_request=10, conns=(500, 300.0))


def _venue(category: str) -> Venue:
    live = Endpoint(f"wss://stream.bybit.com/v5/public/{category}", "orderbook.{depth}.{symbol}",
                    depth=100 if category == "option" else 200, max_per_conn=10 if category == "spot" else 50,
                    market=("publicTrade.{symbol}", "tickers.{symbol}") if category != "option"
                    else ("tickers.{symbol}",),  # option trades: publicTrade.<coin>, added once per coin
                    api_url="https://api.bybit.com", limits=_limits(category))
    return Venue(f"bybit-{category}", BybitAdapter(f"bybit-{category}"), RULE, BybitProtocol, live,
                 sim_ws_path=f"/ws/bybit/v5/public/{category}", market=BybitMarket(category),
                 instrument_lists=BybitInstruments(category))


RULE = BybitRule()
VENUES = tuple(_venue(c) for c in CATEGORIES)
