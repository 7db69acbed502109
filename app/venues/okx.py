"""OKX v5 order books: ``books``, ``books5``, ``bbo-tbt``, ``books-l2-tbt``, ``books50-l2-tbt``.

Wire schema: ``{"arg":{"channel":…,"instId":…},"action":"snapshot"|"update","data":[{
"asks":[[price,size,"0",orderCount]…],"bids":[…],"ts":ms string,"checksum":signed CRC32,
"seqId":…,"prevSeqId":…}]}``. ``books5``/``bbo-tbt`` have no action: every push is a
full snapshot of 5 / 1 levels. seqId/prevSeqId are absent on older feeds.

The session logs in when an API key is configured (``books-l2-tbt``/``books50-l2-tbt``
need it) and sends a plain-text ``ping`` to keep the connection open.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import re
import time
import zlib

from app.config import Secret
from app.errors import FrameError
from app.market.instruments import Spec
from app.market.records import Ticker, Trade
from app.market.symbols import parse_option
from app.venues._json import loads, obj
from app.venues.base import (
    BookUpdate,
    Continuity,
    Kind,
    Level,
    LevelsView,
    SequenceRule,
    Venue,
    as_int,
    channel_prefix,
    levels,
    ms_to_ns,
    num_str,
    opt_str,
)
from app.venues.session import Ack, Endpoint, Limits, Protocol, Request, Sub, dumps, next_id

log = logging.getLogger(__name__)

BOOK_CHANNELS = frozenset({"books", "books5", "bbo-tbt", "books-l2-tbt", "books50-l2-tbt"})
SNAPSHOT_ONLY = frozenset({"books5", "bbo-tbt"})


class OkxAdapter:
    venue = "okx"

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        if frame == b"pong":  # the answer to our plain-text keepalive, not JSON
            return []
        msg = loads(frame)
        if not isinstance(msg, dict) or "event" in msg:  # subscribe acks, errors, pong
            return []
        arg = msg.get("arg")
        if isinstance(arg, dict) and arg.get("channel") == "opt-summary":
            return _summary_chains(msg)
        inst = arg.get("instId") if isinstance(arg, dict) else None
        return [inst] if isinstance(inst, str) and inst else []

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        if frame == b"pong":
            return []
        msg = loads(frame)
        if not isinstance(msg, dict) or "event" in msg:
            return []
        arg = obj(msg.get("arg"), "arg")
        channel = arg.get("channel")
        if isinstance(channel, list | dict):  # not a channel name (nor hashable)
            raise FrameError("bad-shape", "arg.channel is not a string")
        if channel not in BOOK_CHANNELS:
            return []
        if arg.get("instId") != symbol:
            raise FrameError("wrong-instrument", f"frame for {arg.get('instId')!r}")
        action = msg.get("action")
        if channel in SNAPSHOT_ONLY:
            snapshot = True
        elif action in ("snapshot", "update"):
            snapshot = action == "snapshot"
        else:
            raise FrameError("bad-shape", f"action {str(action)[:20]!r}")
        data = msg.get("data")
        if not isinstance(data, list) or not data:
            raise FrameError("bad-shape", "data is not a non-empty list")
        out = []
        for item in data:
            item = obj(item, "data item")
            has_seq = "seqId" in item and item["seqId"] is not None
            checksum = item.get("checksum")
            out.append(
                BookUpdate(
                    snapshot=snapshot,
                    seq=as_int(item["seqId"], "seqId") if has_seq else -1,
                    prev=as_int(item.get("prevSeqId", -1), "prevSeqId") if has_seq else None,
                    bids=levels(item.get("bids", []), "bids"),
                    asks=levels(item.get("asks", []), "asks"),
                    ts_exchange=ms_to_ns(item.get("ts")),
                    checksum=as_int(checksum, "checksum") if checksum not in (None, 0) else None,
                )
            )
        return out

    def conn_seq(self, frame: bytes) -> int | None:
        return None


def okx_checksum(bids: list[Level], asks: list[Level]) -> int:
    """OKX CRC32 over the top 25 levels (best first), interleaved bid/ask, signed 32-bit.

    ``bidPx:bidSz:askPx:askSz:…`` with the venue's own strings; a side that runs out is
    skipped. The simulator signs its frames with it too.
    """
    parts: list[str] = []
    for i in range(min(25, max(len(bids), len(asks)))):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


class OkxRule(SequenceRule):
    """``prevSeqId`` == the ``seqId`` last applied, where the feed has seqIds: a heartbeat
    (no levels, ``seqId == prevSeqId``) and the one-off reset after maintenance (``seqId`` below
    ``prevSeqId``) follow too. Feeds without seqIds rely on the checksum, verified after every
    update that carries a non-zero one."""

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        if upd.prev is None or upd.prev == last:
            return Continuity.OK
        return Continuity.DUPLICATE if self.repeated(last, upd) else Continuity.GAP

    def checksum(self, book: LevelsView) -> int:
        return okx_checksum(*book.levels(25))


class OkxProtocol(Protocol):
    """``{"id":…,"op":"subscribe","args":[{"channel":…,"instId":…}…]}``; each arg is answered on
    its own (``{"event":"subscribe","arg":{…},"id":…}``), a refused one with ``{"event":"error",
    "code":…,"msg":"… channel:books,instId:X doesn't exist","id":…}``. With an API key the
    connection logs in first (``{"op":"login"}`` → ``{"event":"login","code":"0"}``) and
    subscribes only once the venue accepted it; a refused login falls back to public ``books``."""

    def __init__(self, venue: str, endpoint: Endpoint, creds: dict[str, Secret] | None = None) -> None:
        super().__init__(venue, endpoint, creds)
        self.authed = all(self.creds.get(k) for k in ("key", "secret", "passphrase"))
        if self.endpoint.channel.endswith("-tbt") and not self.authed:
            log.info("okx: no OKX_API_KEY/SECRET/PASSPHRASE, using the public 'books' channel")
            self._public()

    def _public(self) -> None:
        self.endpoint = dataclasses.replace(self.endpoint, channel="books")

    def auth(self) -> Request | None:
        if not self.authed:
            return None
        ts = str(int(time.time()))
        sign = base64.b64encode(hmac.new(self.creds["secret"].reveal().encode(),
                                         f"{ts}GET/users/self/verify".encode(), hashlib.sha256).digest()).decode()
        rid = next_id()
        return Request(dumps({"id": str(rid), "op": "login", "args": [{
            "apiKey": self.creds["key"].reveal(), "passphrase": self.creds["passphrase"].reveal(),
            "timestamp": ts, "sign": sign}]}), "auth", (), str(rid))

    def auth_failed(self, reason: str) -> None:
        self.authed = False
        if self.endpoint.channel.endswith("-tbt"):
            self._public()

    def channel_id(self, symbol: str, name: str) -> str:
        return f"{name}:{symbol}"

    def arg(self, symbol: str, name: str) -> dict[str, str]:
        return {"channel": name, "instId": symbol}

    def aux(self, symbols: list[str]) -> list[Sub]:
        if not self.market_templates():
            return []
        # options: the family's greeks and volatilities (one channel per family); the registry's
        # changes between two REST lists (one channel per instrument type)
        families = sorted({spec.underlying for s in symbols if (spec := parse_option(s)) is not None})
        types = sorted({okx_inst_type(s)[0] for s in symbols})
        return ([Sub("", f"opt-summary:{f}", {"channel": "opt-summary", "instFamily": f}) for f in families]
                + [Sub("", f"instruments:{t}", {"channel": "instruments", "instType": t}) for t in types])

    def request(self, op: str, subs: list[Sub]) -> Request:
        rid = next_id()
        return Request(dumps({"id": str(rid), "op": op, "args": [s.arg for s in subs]}), op,
                       tuple(s.id for s in subs), str(rid))

    def ping(self) -> str | None:
        return "ping"  # OKX closes a connection that sends nothing for 30 s

    def ack(self, frame: bytes) -> Ack | None:
        if b'"event"' not in frame[:80]:
            return None
        msg = loads(frame)
        if not isinstance(msg, dict):
            return None
        event, rid = msg.get("event"), str(msg.get("id", ""))
        if event == "login":
            return Ack(rid, auth=str(msg.get("code", "0")) == "0", failed=None if str(msg.get("code", "0")) == "0"
                       else f"{msg.get('code')}: {msg.get('msg')}")
        if event == "unsubscribe":
            return Ack(rid)
        if event == "subscribe":
            arg = msg.get("arg") or {}
            target = arg.get("instId") or arg.get("instFamily") or arg.get("instType") or ""
            return Ack(rid, ok=(f"{arg.get('channel')}:{target}",))
        if event == "error":
            reason = f"{msg.get('code')}: {msg.get('msg')}"[:200]
            named = _NAMED.search(str(msg.get("msg", "")))
            refused = (f"{named.group(1)}:{named.group(2)}",) if named else ()
            return Ack(rid, failed=reason, refused=refused, auth=False if str(msg.get("code")) in _LOGIN_ERRORS
                       else None)
        return None

    def data_channels(self, frame: bytes) -> tuple[str, ...]:
        found = _ARG.search(frame, 0, 160)
        return (f"{found.group(1).decode()}:{found.group(2).decode()}",) if found and b'"event"' not in frame[:40] \
            else ()


_ARG = re.compile(rb'"arg":\{"channel":"([^"]+)","inst(?:Id|Family|Type)":"([^"]+)"')
_NAMED = re.compile(r"channel:([^,]+),inst(?:Id|Family|Type):([^ ]+)")
#: login refusals (API key, passphrase, timestamp, signature)
_LOGIN_ERRORS = frozenset({"60004", "60005", "60006", "60007", "60008", "60009", "60022", "60024"})


#: OKX market channel → {data field: normalised field} (``app.market.records.TICKER_FIELDS``).
_TICKER_CHANNELS: dict[str, dict[str, str]] = {
    "tickers": {"last": "last", "bidPx": "bid", "bidSz": "bid_size", "askPx": "ask", "askSz": "ask_size"},
    "mark-price": {"markPx": "mark"},
    "index-tickers": {"idxPx": "index"},
    "funding-rate": {"fundingRate": "funding_rate", "nextFundingRate": "predicted_funding"},
    "open-interest": {"oi": "open_interest"},
}


def _summary_chains(msg: dict[str, object]) -> list[str]:
    """``opt-summary`` covers a whole instrument family: it is keyed once per chain (expiry) it
    holds — ``BTC-USD-260327``, the key of that expiry's future and the partition of its options
    — rather than once per option (hundreds of copies)."""
    data = msg.get("data")
    chains: dict[str, None] = {}
    for item in data if isinstance(data, list) else []:
        inst = item.get("instId") if isinstance(item, dict) else None
        spec = parse_option(inst) if isinstance(inst, str) else None
        if spec is not None:
            chains[spec.chain] = None
    return list(chains)


#: ``opt-summary`` field → normalised field: Black–Scholes greeks as ``delta``…, OKX's
#: price-adjusted (coin) greeks as ``*_pa``; volatilities are decimals already.
_SUMMARY = {"deltaBS": "delta", "gammaBS": "gamma", "vegaBS": "vega", "thetaBS": "theta", "delta": "delta_pa",
            "gamma": "gamma_pa", "vega": "vega_pa", "theta": "theta_pa", "markVol": "mark_iv", "bidVol": "bid_iv",
            "askVol": "ask_iv", "fwdPx": "underlying_price"}


class OkxMarket:
    """``trades`` (``tradeId`` increasing per instrument, not contiguous) and the ticker-like
    channels, each giving some fields (``Ticker.partial``): ``tickers``, ``mark-price``,
    ``index-tickers``, ``funding-rate``, ``open-interest``."""

    MARKS = tuple(b'"channel":"%s"' % c.encode() for c in ("trades", "opt-summary", *_TICKER_CHANNELS))

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        if kind is not Kind.WS or not channel_prefix(frame, self.MARKS, 80):
            return [], []
        msg = obj(loads(frame), "frame")
        if "event" in msg:
            return [], []
        channel = obj(msg.get("arg"), "arg").get("channel")
        data = msg.get("data")
        if not isinstance(data, list):
            raise FrameError("bad-shape", "data is not a list")
        rows = [obj(d, "data") for d in data]
        if channel == "opt-summary":  # keyed by chain: one ticker per option of that chain
            out = []
            for d in rows:
                inst = d.get("instId")
                spec = parse_option(inst) if isinstance(inst, str) else None
                if spec is None or spec.chain != symbol:
                    continue
                summary = {out_: opt_str(d.get(name)) for name, out_ in _SUMMARY.items() if name in d}
                out.append(Ticker("opt-summary", ms_to_ns(d.get("ts")), summary, partial=True, symbol=inst))
            return [], out
        for d in rows:
            if d.get("instId") != symbol:
                raise FrameError("wrong-instrument", f"data for {str(d.get('instId'))[:40]!r}, keyed {symbol!r}")
        if channel == "trades":
            unit = "base" if symbol.count("-") == 1 else "contracts"  # spot BTC-USDT; swaps, futures, options
            trades = []
            for d in rows:
                tid = as_int(d.get("tradeId"), "tradeId")
                side = d.get("side")
                trades.append(Trade(trade_id=str(d["tradeId"]), price=num_str(d.get("px")), size=num_str(d.get("sz")),
                                    unit=unit, side=side if side in ("buy", "sell") else "",
                                    ts_exchange=ms_to_ns(d.get("ts")), order=tid))
            return trades, []
        names = _TICKER_CHANNELS.get(channel) if isinstance(channel, str) else None
        if names is None:
            return [], []
        tickers = []
        for d in rows:
            fields: dict[str, object] = {out: opt_str(d.get(name)) for name, out in names.items() if name in d}
            if channel == "funding-rate" and d.get("fundingTime"):
                fields["next_funding_ts"] = ms_to_ns(d["fundingTime"])
            tickers.append(Ticker(str(channel), ms_to_ns(d.get("ts")), fields, partial=True))
        return [], tickers


_OKX_STATE = {"live": "open", "suspend": "halted", "preopen": "preopen", "expired": "delivered",
              "test": "test", "rebase": "halted"}


def okx_inst_type(symbol: str) -> tuple[str, str]:
    """(instType, instFamily) of an OKX instrument id."""
    parts = symbol.split("-")
    if len(parts) == 2:
        return "SPOT", ""
    family = "-".join(parts[:2])
    if parts[-1] == "SWAP":
        return "SWAP", family
    return ("OPTION", family) if parts[-1] in ("C", "P") else ("FUTURES", family)


class OkxInstruments:
    """``/api/v5/public/instruments?instType=…[&instFamily=…]``, one request per type and family."""

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        wanted = sorted({okx_inst_type(s) for s in symbols})
        return [f"{api_url}/api/v5/public/instruments?instType={t}" + (f"&instFamily={f}" if f else "")
                for t, f in wanted]

    def parse(self, body: bytes) -> list[Spec] | None:
        msg = loads(body)
        if not isinstance(msg, dict) or msg.get("code") != "0":
            return None
        return self._specs(msg.get("data"))

    def parse_ws(self, frame: bytes) -> tuple[list[Spec], list[tuple[str, str, int]]] | None:
        """The ``instruments`` channel: a snapshot of a type's instruments, then changes, in the
        REST list's shape."""
        if not channel_prefix(frame, (b'"channel":"instruments"',), 60):
            return None
        msg = obj(loads(frame), "frame")
        if "event" in msg:
            return None
        specs = self._specs(msg.get("data"))
        if specs is None:
            raise FrameError("bad-shape", "instruments push without a list of instruments")
        return specs, []

    @staticmethod
    def _specs(data: object) -> list[Spec] | None:
        if not isinstance(data, list) or not all(isinstance(d, dict) and "instType" in d for d in data):
            return None
        out = []
        for d in data:
            t = d["instType"]
            out.append(Spec(
                key=f"okx:{d['instId']}",
                kind={"SPOT": "spot", "SWAP": "perpetual", "FUTURES": "future", "OPTION": "option"}.get(t, t.lower()),
                margin="inverse" if d.get("ctType") == "inverse" or (
                    t == "OPTION" and str(d.get("settleCcy")) not in ("USDC", "USDT", "USD")) else "linear",
                base=str(d.get("baseCcy") or d.get("ctValCcy") or ""), quote=str(d.get("quoteCcy") or ""),
                settle=str(d.get("settleCcy") or d.get("quoteCcy") or ""), contract_size=opt_str(d.get("ctVal")),
                multiplier=opt_str(d.get("ctMult")), tick_size=opt_str(d.get("tickSz")),
                lot_size=opt_str(d.get("lotSz")),
                min_size=opt_str(d.get("minSz")), strike=opt_str(d.get("stk")),
                option_type={"C": "call", "P": "put"}.get(str(d.get("optType"))),
                expiry_ns=ms_to_ns(d["expTime"]) if d.get("expTime") else None,
                underlying=d.get("uly") or None, index=d.get("uly") or d.get("instFamily") or None,
                state=_OKX_STATE.get(str(d.get("state")), str(d.get("state"))),
            ))
        return out


VENUE = Venue(
    "okx", OkxAdapter(), OkxRule(), OkxProtocol,
    endpoint=Endpoint("wss://ws.okx.com:8443/ws/v5/public", "books", max_per_conn=100, ping_s=20,
                      market=("trades", "tickers"), api_url="https://www.okx.com",
                      # OKX v5 "WebSocket" overview (2026-11): 3 connection requests a second per
                      # IP; 480 subscribe/unsubscribe/login requests an hour per connection
                      limits=Limits(scope="okx", conns=(3, 1.0), ops=(480, 3600.0))),
    sim_ws_path="/ws/okx/ws/v5/public", market=OkxMarket(), instrument_lists=OkxInstruments(),
)
