"""Binance spot (``binance``), USD-M (``binance-usdm``) and COIN-M (``binance-coinm``) depth.

Wire schemas (venue field names):

* depth event ``{"e":"depthUpdate","E":event ms,"T":transaction ms (futures),"s":symbol,
  "U":first update id,"u":final update id,"pu":previous final id (futures),
  "b":[[price,qty]…],"a":[[price,qty]…]}``, quantities absolute, ``"0"`` removes the level;
  combined streams wrap it as ``{"stream":"btcusdt@depth@100ms","data":{…}}``.
* REST snapshot ``{"lastUpdateId":L,"bids":[…],"asks":[…]}`` (symbol only in the URL).
* ``bookTicker`` and trades are routed to their instrument but carry no book update.

The session subscribes to the depth streams and fetches REST snapshots; a resync is a
fresh REST snapshot (the stream continues).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import msgspec

from app.errors import FrameError
from app.market.instruments import Spec
from app.market.records import Ticker, Trade
from app.venues import base
from app.venues._json import loads, obj
from app.venues.base import (
    BookUpdate,
    ChainedRule,
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

# An integer orjson reads as an integer too (past 64 bits it reads a float, which the general
# reading refuses); one past int64 goes the general way (msgspec bounds stop at int64).
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Depth(msgspec.Struct):
    """A depth event as the typed reader takes it (other fields are skipped)."""

    e: str
    s: str
    U: _Int
    u: _Int
    E: _Int | None = None
    T: _Int | None = None
    pu: _Int | None = None
    b: msgspec.Raw = msgspec.Raw(b"[]")  # read by the book core (venues.base.raw_levels)
    a: msgspec.Raw = msgspec.Raw(b"[]")


class _Combined(msgspec.Struct):
    stream: str
    data: _Depth


_COMBINED_DEPTH = msgspec.json.Decoder(_Combined)
_COMBINED = b'{"stream":'
_DEPTH_MARK = (b'"depthUpdate"',)


class BinanceAdapter:
    """One class for the three Binance markets; futures events also carry ``pu``.

    A combined stream's depth event (most of what a Binance worker reads) is read by a typed
    decoder straight into its fields, its levels left as the bytes the venue wrote for the book
    core to read in place (``venues.base.raw_levels``: the compiled core makes no text for a
    level the book does not keep) — about a third of the CPU of decoding it to dicts and lists
    and reading those (``BENCH_ONLY=book_core make bench``). It answers only when the event is one
    the general reading would accept as it is; any other frame, and any event with a field of
    another type, a missing ``pu`` on futures, another symbol, ``U > u`` or levels the core does
    not read in place, goes the general way, which gives the result or the error it always gave
    (``tests/unit/test_binance_typed.py`` holds the two to the same answers)."""

    def __init__(self, venue: str, futures: bool) -> None:
        self.venue = venue
        self.futures = futures

    @staticmethod
    def _event(msg: Any) -> dict[str, Any]:
        msg = obj(msg, "frame")
        data = msg.get("data")
        return obj(data, "data") if data is not None and "stream" in msg else msg

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        if kind is Kind.REST:
            query = parse_qs(urlsplit(url).query).get("symbol", [""])[0]
            return [query.upper()] if query else []
        event = self._event(loads(frame))
        symbol = event.get("s")
        return [symbol] if isinstance(symbol, str) and symbol else []

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        if kind is Kind.WS and frame.startswith(_COMBINED) and channel_prefix(frame, _DEPTH_MARK):
            fast = self._typed_depth(frame, symbol)
            if fast is not None:
                return fast
        return self.parse_general(kind, frame, symbol)

    def _typed_depth(self, frame: bytes, symbol: str) -> list[BookUpdate] | None:
        """The depth event of a combined stream frame, read typed; None: read it the general way."""
        try:
            event = _COMBINED_DEPTH.decode(frame).data
        except msgspec.MsgspecError:
            return None
        if event.e != "depthUpdate" or event.s != symbol or event.u < event.U or (self.futures and event.pu is None):
            return None
        bids, asks = base.raw_levels(event.b), base.raw_levels(event.a)
        if bids is None or asks is None:
            return None
        return [BookUpdate(snapshot=False, seq=event.u, first=event.U, prev=event.pu if self.futures else None,
                           bids=bids, asks=asks, ts_exchange=ms_to_ns(event.T or event.E))]

    def parse_general(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        """:meth:`parse` through dicts and lists: every frame, and every error."""
        msg = obj(loads(frame), "frame")
        if kind is Kind.REST:
            if "lastUpdateId" not in msg:
                raise FrameError("bad-snapshot", "REST body without lastUpdateId")
            return [
                BookUpdate(
                    snapshot=True,
                    seq=as_int(msg["lastUpdateId"], "lastUpdateId"),
                    bids=levels(msg.get("bids"), "bids"),
                    asks=levels(msg.get("asks"), "asks"),
                    ts_exchange=ms_to_ns(msg.get("T") or msg.get("E")),
                )
            ]
        event = self._event(msg)
        if event.get("e") != "depthUpdate":
            return []
        if event.get("s") != symbol:
            raise FrameError("wrong-instrument", f"frame for {event.get('s')!r}, keyed {symbol!r}")
        futures = self.futures
        if futures and "pu" not in event:
            raise FrameError("bad-shape", "futures depthUpdate without pu")
        first, last = as_int(event.get("U"), "U"), as_int(event.get("u"), "u")
        if first > last:
            raise FrameError("bad-sequence", f"U={first} > u={last}")
        return [
            BookUpdate(
                snapshot=False,
                seq=last,
                first=first,
                prev=as_int(event["pu"], "pu") if futures else None,
                bids=levels(event.get("b", []), "b"),
                asks=levels(event.get("a", []), "a"),
                ts_exchange=ms_to_ns(event.get("T") or event.get("E")),
            )
        ]

    def conn_seq(self, frame: bytes) -> int | None:
        return None


class _BinanceRule(SequenceRule):
    """The REST-snapshot join of every Binance market. With the snapshot's ``lastUpdateId`` L,
    the first event applied must cover update id L + ``lead``: events ending before it are
    contained in the snapshot, and a snapshot whose first buffered event starts after it is
    too old ("if L < first buffered U, fetch again")."""

    snapshot_from_rest = True
    lead = 0

    def contained(self, snapshot_id: int, upd: BookUpdate) -> bool:
        return upd.seq < snapshot_id + self.lead

    def joins(self, snapshot_id: int, upd: BookUpdate) -> bool:
        return upd.first is not None and upd.first <= snapshot_id + self.lead <= upd.seq

    def snapshot_older(self, snapshot_id: int, upd: BookUpdate) -> bool:
        return upd.first is not None and upd.first > snapshot_id + self.lead


class BinanceSpotRule(_BinanceRule):
    """Spot: drop ``u <= L``; the first applied event has ``U <= L+1 <= u``; afterwards
    ``U == previous u + 1``."""

    lead = 1

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        if self.repeated(last, upd):
            return Continuity.DUPLICATE
        return Continuity.OK if last is not None and upd.first == last + 1 else Continuity.GAP


class BinanceFuturesRule(_BinanceRule, ChainedRule):
    """USD-M and COIN-M: drop ``u < L``; the first applied event has ``U <= L <= u``, or chains
    to the snapshot exactly (``pu == L``: L was an event's final id, the next starts at L+1);
    afterwards ``pu == previous u``."""

    def joins(self, snapshot_id: int, upd: BookUpdate) -> bool:
        return super().joins(snapshot_id, upd) or upd.prev == snapshot_id

    def snapshot_older(self, snapshot_id: int, upd: BookUpdate) -> bool:
        """Older than the buffer only if the first buffered event does not chain to it."""
        return super().snapshot_older(snapshot_id, upd) and upd.prev != snapshot_id


class BinanceProtocol(Protocol):
    """``SUBSCRIBE``/``UNSUBSCRIBE`` of stream names, answered ``{"result":null,"id":N}`` or
    ``{"error":{…},"id":N}``. The venue says nothing about a stream it does not serve (an unknown
    symbol, a channel on the wrong endpoint): only its silence tells (``Limits.first_s``,
    ``Limits.cadence``)."""

    def request(self, op: str, subs: list[Sub]) -> Request:
        rid = next_id()
        return Request(dumps({"method": op.upper(), "params": [s.arg for s in subs], "id": rid}), op,
                       tuple(s.id for s in subs), str(rid))

    def resubscribe(self, symbol: str) -> list[Request]:
        return []  # the stream continues; a resync is a fresh REST snapshot

    def snapshot_url(self, symbol: str, depth: int = 0) -> str | None:
        if not self.endpoint.rest_url:
            return None  # a connection for market data only
        limit = depth or self.endpoint.depth
        return f"{self.endpoint.rest_url}?{urlencode({'symbol': symbol.upper(), 'limit': limit})}"

    def ack(self, frame: bytes) -> Ack | None:
        if b'"stream"' in frame[:12] or b'"id"' not in frame:
            return None
        msg = loads(frame)
        if not isinstance(msg, dict) or "id" not in msg or ("result" not in msg and "error" not in msg):
            return None
        error = msg.get("error")
        return Ack(str(msg["id"]), failed=None if error is None else str(error)[:200], complete=True)

    def data_channels(self, frame: bytes) -> tuple[str, ...]:
        found = _STREAM.match(frame)
        return (found.group(1).decode(),) if found else ()


_STREAM = re.compile(rb'\{"stream":"([^"]+)"')


class BinanceMarket:
    """``<s>@trade`` (``t`` contiguous per symbol; ``m``: the buyer is the maker, so the taker
    sold), ``<s>@markPrice[@1s]`` (mark, index, estimated settle, funding rate, next funding
    time) and ``<s>@bookTicker`` (best bid/ask), combined-stream wrapped or bare."""

    MARKS = (b'"e":"trade"', b'"e":"markPriceUpdate"', b'"e":"bookTicker"', b"@bookTicker", b"@trade",
             b"@markPrice")

    def __init__(self, unit: str) -> None:
        self.unit = unit  # spot and USD-M: base; COIN-M: contracts

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        if kind is not Kind.WS or channel_prefix(frame, _DEPTH_MARK) or not channel_prefix(frame, self.MARKS, 200):
            return [], []  # (a depth event, most frames, is told by one look rather than six)
        event = BinanceAdapter._event(loads(frame))
        e = event.get("e")
        if e is None and "u" in event and "b" in event and "a" in event and "B" in event:
            e = "bookTicker"  # spot bookTicker events carry no "e"
        if e not in ("trade", "markPriceUpdate", "bookTicker"):
            return [], []
        if event.get("s") != symbol:
            raise FrameError("wrong-instrument", f"frame for {str(event.get('s'))[:40]!r}, keyed {symbol!r}")
        if e == "trade":
            t = as_int(event.get("t"), "t")
            x = event.get("X")  # futures: MARKET | LIQUIDATION | INSURANCE_FUND | ADL | NA
            maker = event.get("m")
            if not isinstance(maker, bool):
                raise FrameError("bad-shape", "trade without m")
            return [Trade(
                trade_id=str(t), price=num_str(event.get("p")), size=num_str(event.get("q")), unit=self.unit,
                side="sell" if maker else "buy", ts_exchange=ms_to_ns(event.get("T") or event.get("E")),
                order=t, contiguous=True, seq=t,
                liquidation=x if isinstance(x, str) and x not in ("MARKET", "NA") else None,
            )], []
        if e == "markPriceUpdate":
            next_funding = event.get("T")
            fields = {"mark": opt_str(event.get("p")), "index": opt_str(event.get("i")),
                      "estimated_delivery_price": opt_str(event.get("P")), "funding_rate": opt_str(event.get("r")),
                      "next_funding_ts": ms_to_ns(next_funding) if next_funding else None}
            return [], [Ticker("markPrice", ms_to_ns(event.get("E")), fields)]
        fields = {"bid": opt_str(event.get("b")), "bid_size": opt_str(event.get("B")),
                  "ask": opt_str(event.get("a")), "ask_size": opt_str(event.get("A"))}
        return [], [Ticker("bookTicker", ms_to_ns(event.get("T") or event.get("E")), fields, partial=True)]


def _filters(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(f.get("filterType")): f for f in item.get("filters") or [] if isinstance(f, dict)}


class BinanceInstruments:
    """``exchangeInfo``: spot ``/api/v3`` (``symbols`` filter), USD-M ``/fapi/v1``, COIN-M
    ``/dapi/v1`` (``contractSize`` USD per contract: inverse)."""

    def __init__(self, venue: str) -> None:
        self.venue = venue
        self.path = {"binance": "/api/v3", "binance-usdm": "/fapi/v1", "binance-coinm": "/dapi/v1"}[venue]

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        if self.venue == "binance":
            return [f"{api_url}{self.path}/exchangeInfo?" + urlencode({"symbols": dumps([s.upper() for s in symbols])})]
        return [f"{api_url}{self.path}/exchangeInfo"]

    def parse(self, body: bytes) -> list[Spec] | None:
        msg = loads(body)
        items = named_objects(msg.get("symbols"), "symbol") if isinstance(msg, dict) and "timezone" in msg else None
        if items is None:
            return None
        coinm = self.venue == "binance-coinm"
        out = []
        for item in items:
            f = _filters(item)
            contract = item.get("contractType")
            kind = "spot" if self.venue == "binance" else "perpetual" if contract == "PERPETUAL" else "future"
            notional = f.get("MIN_NOTIONAL", {}).get("notional") or f.get("MIN_NOTIONAL", {}).get("minNotional") \
                or f.get("NOTIONAL", {}).get("minNotional")
            status = item.get("status") or item.get("contractStatus")
            out.append(Spec(
                key=f"{self.venue}:{item['symbol']}", kind=kind, margin="inverse" if coinm else "linear",
                base=str(item.get("baseAsset", "")), quote=str(item.get("quoteAsset", "")),
                settle=str(item.get("marginAsset") or item.get("quoteAsset", "")),
                contract_size=opt_str(item.get("contractSize")) if coinm else "1" if kind != "spot" else None,
                tick_size=opt_str(f.get("PRICE_FILTER", {}).get("tickSize")),
                lot_size=opt_str(f.get("LOT_SIZE", {}).get("stepSize")),
                min_size=opt_str(f.get("LOT_SIZE", {}).get("minQty")), min_notional=opt_str(notional),
                expiry_ns=ms_to_ns(item["deliveryDate"]) if kind == "future" and item.get("deliveryDate") else None,
                underlying=item.get("pair"), index=item.get("pair"),
                state="open" if status == "TRADING" else str(status or "unknown").lower(),
            ))
        return out


def _venue(venue: str, futures: bool, endpoint: Endpoint, sim_ws_path: str, sim_rest_path: str) -> Venue:
    rule = BinanceFuturesRule() if futures else BinanceSpotRule()
    market = BinanceMarket("contracts" if venue == "binance-coinm" else "base")
    return Venue(venue, BinanceAdapter(venue, futures), rule, BinanceProtocol, endpoint, sim_ws_path, sim_rest_path,
                 market=market, instrument_lists=BinanceInstruments(venue))


_DEPTH = "{symbol_lower}@depth@100ms"
_SPOT_MARKET = ("{symbol_lower}@trade", "{symbol_lower}@bookTicker")
_FUTURES_MARKET = ("{symbol_lower}@trade", "{symbol_lower}@markPrice@1s")
#: Binance's limits (docs as of 2026-11: "WebSocket Limits", "LIMITS" of each API, the USD-M
#: "Important WebSocket Change Notice" of 2026-03-06): 5 messages a second per connection
#: (spot; futures 10: 5 kept for both), 300 connection opens per 5 minutes per IP, 1,024 streams per
#: spot connection and 200 per futures one; REST weight 6,000 a minute (spot) and 2,400 shared by
#: USD-M and COIN-M since 2026-06-30. Depth snapshot weight by ``limit`` (the depths used).
_SPOT_LIMITS = Limits(scope="binance", streams_per_conn=1024, rest_weight=(6000, 60.0),
                      rest_weights=((100, 5), (500, 25), (1000, 50), (5000, 250)),
                      msgs=(5, 1.0), conns=(300, 300.0), first_s=30.0)
_FUTURES_LIMITS = dataclasses.replace(_SPOT_LIMITS, scope="binance-futures", streams_per_conn=200,
                                      rest_weight=(2400, 60.0), rest_weights=((50, 2), (100, 5), (500, 10), (1000, 20)),
                                      cadence=(("{symbol_lower}@markPrice@1s", 5.0),))
VENUES = (
    _venue("binance", False,
           Endpoint("wss://stream.binance.com:9443/stream", _DEPTH, "https://api.binance.com/api/v3/depth",
                    depth=5000, max_per_conn=200, silence_s=15, market=_SPOT_MARKET,
                    api_url="https://api.binance.com", limits=_SPOT_LIMITS),
           "/ws/binance/stream", "/rest/binance/api/v3/depth"),
    # since 2026 the USD-M streams are split: depth and book tickers under /public, mark price,
    # trades and the rest of the market data under /market (the legacy paths were retired 2026-04-23)
    _venue("binance-usdm", True,
           Endpoint("wss://fstream.binance.com/public/stream", _DEPTH, "https://fapi.binance.com/fapi/v1/depth",
                    depth=1000, max_per_conn=200, silence_s=15, market=_FUTURES_MARKET,
                    api_url="https://fapi.binance.com", limits=_FUTURES_LIMITS,
                    ws_urls=tuple((t, "wss://fstream.binance.com/market/stream") for t in _FUTURES_MARKET)),
           "/ws/binance-usdm/public/stream", "/rest/binance-usdm/fapi/v1/depth"),
    _venue("binance-coinm", True,
           Endpoint("wss://dstream.binance.com/stream", _DEPTH, "https://dapi.binance.com/dapi/v1/depth",
                    depth=1000, max_per_conn=200, silence_s=15, market=_FUTURES_MARKET,
                    api_url="https://dapi.binance.com", limits=_FUTURES_LIMITS),
           "/ws/binance-coinm/stream", "/rest/binance-coinm/dapi/v1/depth"),
)
