"""Deribit ``book.{instrument}.{raw|100ms|agg2}`` over JSON-RPC 2.0: adapter, rule, session.

Wire schema: ``{"jsonrpc":"2.0","method":"subscription","params":{"channel":…,"data":{
"type":"snapshot"|"change","timestamp":ms,"instrument_name":…,"change_id":…,
"prev_change_id":… (absent on snapshots),"bids":[[action,price,amount]…],"asks":[…]}}}``.
``action`` is new | change | delete; prices and amounts are JSON numbers.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from app.config import Secret
from app.errors import FrameError
from app.market.instruments import Spec
from app.market.records import Ticker, Trade, percent_to_decimal
from app.venues._json import loads, obj
from app.venues.base import (
    BookUpdate,
    ChainedRule,
    Kind,
    Level,
    Venue,
    as_int,
    channel_prefix,
    ms_to_ns,
    num_str,
    opt_str,
)
from app.venues.session import Ack, Endpoint, Limits, Protocol, Request, Sub, dumps, next_id

log = logging.getLogger(__name__)


def _actions(raw: Any, what: str) -> list[Level]:
    if not isinstance(raw, list):
        raise FrameError("bad-levels", f"{what} is not a list")
    out: list[Level] = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3 or item[0] not in ("new", "change", "delete"):
            raise FrameError("bad-levels", f"{what} entry {str(item)[:40]}")
        out.append((num_str(item[1]), "0" if item[0] == "delete" else num_str(item[2])))
    return out


def _book_channel(msg: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    if msg.get("method") != "subscription":
        return None
    params = obj(msg.get("params"), "params")
    channel = params.get("channel")
    if not isinstance(channel, str):
        raise FrameError("bad-shape", "subscription without channel")
    parts = channel.split(".")
    if parts[0] != "book" or len(parts) != 3:
        return None
    return parts[1], obj(params.get("data"), "data")


class DeribitAdapter:
    venue = "deribit"

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        msg = obj(loads(frame), "frame")
        if msg.get("method") != "subscription":
            return []
        channel = obj(msg.get("params"), "params").get("channel")
        parts = channel.split(".") if isinstance(channel, str) else []
        if parts and parts[0] == "instrument":  # instrument.state.{kind}.{currency}: the venue's registry
            return []
        return [parts[1]] if len(parts) >= 2 and parts[1] else []

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        found = _book_channel(obj(loads(frame), "frame"))
        if found is None:
            return []
        name, data = found
        if name != symbol:
            raise FrameError("wrong-instrument", f"frame for {name!r}, keyed {symbol!r}")
        kind_ = data.get("type")
        if kind_ not in ("snapshot", "change"):
            raise FrameError("bad-shape", f"book type {str(kind_)[:20]!r}")
        snapshot = kind_ == "snapshot"
        return [
            BookUpdate(
                snapshot=snapshot,
                seq=as_int(data.get("change_id"), "change_id"),
                prev=None if snapshot else as_int(data.get("prev_change_id"), "prev_change_id"),
                bids=_actions(data.get("bids", []), "bids"),
                asks=_actions(data.get("asks", []), "asks"),
                ts_exchange=ms_to_ns(data.get("timestamp")),
            )
        ]

    def conn_seq(self, frame: bytes) -> int | None:
        return None


class DeribitRule(ChainedRule):
    """A change follows when its ``prev_change_id`` is the ``change_id`` last applied."""


class DeribitProtocol(Protocol):
    """Public ``100ms`` channels, or ``raw`` ones after ``public/auth`` with an API key (awaited:
    a refused login falls back to ``100ms``); answers the venue's heartbeat ``test_request`` with
    ``public/test``. A subscribe is answered with the list of channels subscribed: one left out
    was refused."""

    def __init__(self, venue: str, endpoint: Endpoint, creds: dict[str, Secret] | None = None) -> None:
        super().__init__(venue, endpoint, creds)
        self.authed = bool(self.creds.get("client_id") and self.creds.get("client_secret"))
        if not self.authed:
            log.info("deribit: no DERIBIT_CLIENT_ID/SECRET, using public %s channels", endpoint.channel)

    def channel(self, symbol: str) -> str:
        return self._interval(super().channel(symbol))

    def _name(self, template: str, symbol: str, book: bool) -> str:
        return self._interval(super()._name(template, symbol, book))

    def _interval(self, name: str) -> str:
        return name.rsplit(".", 1)[0] + ".raw" if self.authed else name

    def _call(self, method: str, params: dict[str, object], op: str = "other",
              channels: tuple[str, ...] = ()) -> Request:
        rid = next_id()
        return Request(dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}), op, channels, str(rid))

    def auth(self) -> Request | None:
        if not self.authed:
            return None
        return self._call("public/auth", {
            "grant_type": "client_credentials", "client_id": self.creds["client_id"].reveal(),
            "client_secret": self.creds["client_secret"].reveal()}, "auth")

    def auth_failed(self, reason: str) -> None:
        self.authed = False

    def setup(self) -> list[Request]:
        return [self._call("public/set_heartbeat", {"interval": max(10, int(self.endpoint.ping_s))})]

    def aux(self, symbols: list[str]) -> list[Sub]:
        if not self.market_templates():  # the registry's state changes (with market data: not for books only)
            return []
        return [Sub("", c, c) for c in (f"instrument.state.any.{cur}" for cur in currencies(symbols))]

    def request(self, op: str, subs: list[Sub]) -> Request:
        scope = "public" if not self.authed or all(s.id.startswith("instrument.") for s in subs) else "private"
        return self._call(f"{scope}/{op}", {"channels": [s.arg for s in subs]}, op, tuple(s.id for s in subs))

    def reply(self, frame: str) -> list[str]:
        if '"test_request"' in frame:
            return [self._call("public/test", {}).text]
        return []

    def ack(self, frame: bytes) -> Ack | None:
        if b'"method"' in frame[:40] or b'"id"' not in frame:
            return None
        msg = loads(frame)
        if not isinstance(msg, dict) or "id" not in msg:
            return None
        rid, error, result = str(msg["id"]), msg.get("error"), msg.get("result")
        if error is not None:
            reason = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else str(error)
            return Ack(rid, failed=reason[:200], complete=True, auth=False,
                       extra={"code": error.get("code") if isinstance(error, dict) else None})
        if isinstance(result, list):
            return Ack(rid, ok=tuple(c for c in result if isinstance(c, str)), complete=True)
        return Ack(rid, auth=isinstance(result, dict) and "access_token" in result, complete=True)

    def data_channels(self, frame: bytes) -> tuple[str, ...]:
        if b'"method":"subscription"' not in frame[:60]:
            return ()
        found = _CHANNEL.search(frame, 0, 200)
        return (found.group(1).decode(),) if found else ()


_CHANNEL = re.compile(rb'"channel":"([^"]+)"')


def trade_unit(symbol: str) -> str:
    """Deribit amounts: coin for options, spot and linear (``_USDC``/``_USDT``) contracts; USD
    for inverse perpetuals and futures (``BTC-PERPETUAL``, ``BTC-27MAR26``)."""
    if symbol.endswith(("-C", "-P")) or "_" in symbol.partition("-")[0]:
        return "base"
    return "quote"


#: ticker data field → normalised field (``app.market.records.TICKER_FIELDS``).
_TICKER = {
    "last_price": "last", "mark_price": "mark", "index_price": "index", "best_bid_price": "bid",
    "best_bid_amount": "bid_size", "best_ask_price": "ask", "best_ask_amount": "ask_size",
    "open_interest": "open_interest", "current_funding": "funding_rate", "funding_8h": "funding_8h",
    "settlement_price": "settlement_price", "estimated_delivery_price": "estimated_delivery_price",
    "underlying_price": "underlying_price", "interest_rate": "interest_rate",
}


class DeribitMarket:
    """``trades.{instrument}.{interval}`` (a list of trades, ``trade_seq`` contiguous per
    instrument) and ``ticker.{instrument}.{interval}`` (options: IVs in percent, greeks)."""

    MARKS = (b'"channel":"trades.', b'"channel":"ticker.')

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        if kind is not Kind.WS or not channel_prefix(frame, self.MARKS):
            return [], []
        params = obj(obj(loads(frame), "frame").get("params"), "params")
        channel = params.get("channel")
        if not isinstance(channel, str):
            raise FrameError("bad-shape", "subscription without channel")
        name, _, rest = channel.partition(".")
        if rest.partition(".")[0] != symbol:
            raise FrameError("wrong-instrument", f"{channel!r} keyed {symbol!r}")
        if name == "trades":
            data = params.get("data")
            if not isinstance(data, list):
                raise FrameError("bad-shape", "trades data is not a list")
            return [self._trade(obj(t, "trade"), symbol) for t in data], []
        if name == "ticker":
            return [], [self._ticker(obj(params.get("data"), "data"), symbol)]
        return [], []

    @staticmethod
    def _trade(t: dict[str, Any], symbol: str) -> Trade:
        if t.get("instrument_name") != symbol:
            raise FrameError("wrong-instrument", f"trade of {str(t.get('instrument_name'))[:40]!r}")
        seq = as_int(t.get("trade_seq"), "trade_seq")
        side = t.get("direction")
        extra: dict[str, Any] = {k: opt_str(t.get(k)) for k in ("mark_price", "index_price") if k in t}
        if "iv" in t:
            extra["iv"] = percent_to_decimal(opt_str(t["iv"]))
        if "tick_direction" in t:
            extra["tick_direction"] = t["tick_direction"]
        return Trade(
            trade_id=str(t.get("trade_id")), price=num_str(t.get("price")), size=num_str(t.get("amount")),
            unit=trade_unit(symbol), side=side if side in ("buy", "sell") else "",
            ts_exchange=ms_to_ns(t.get("timestamp")), order=seq, contiguous=True, seq=seq,
            liquidation=t.get("liquidation"), block_trade_id=t.get("block_trade_id"),
            combo_id=t.get("combo_id"), extra=extra,
        )

    @staticmethod
    def _ticker(d: dict[str, Any], symbol: str) -> Ticker:
        if d.get("instrument_name") != symbol:
            raise FrameError("wrong-instrument", f"ticker of {str(d.get('instrument_name'))[:40]!r}")
        fields: dict[str, Any] = {out: opt_str(d.get(name)) for name, out in _TICKER.items() if name in d}
        for name in ("bid_iv", "ask_iv", "mark_iv"):
            if name in d:
                fields[name] = percent_to_decimal(opt_str(d[name]))
        greeks = d.get("greeks")
        if isinstance(greeks, dict):
            fields.update({g: opt_str(greeks.get(g)) for g in ("delta", "gamma", "vega", "theta", "rho")})
        if isinstance(d.get("underlying_index"), str):
            fields["underlying_index"] = d["underlying_index"]
        if isinstance(d.get("state"), str):
            fields["state"] = d["state"]
        return Ticker("ticker", ms_to_ns(d.get("timestamp")), fields)


#: ``instrument.state`` states → registry states.
_STATES = {"started": "open", "settled": "settlement", "terminated": "delivered", "deactivated": "closed"}


def currencies(symbols: list[str]) -> list[str]:
    """The currencies of Deribit symbols: BTC-PERPETUAL → BTC, SOL_USDC-PERPETUAL → USDC."""
    out = set()
    for s in symbols:
        head = s.split("-")[0]
        out.add(head.split("_")[-1] if "_" in head else head)
    return sorted(out)


class DeribitInstruments:
    """``public/get_instruments?currency=…`` (one request per currency of the feeds), and the
    ``instrument.state.any.{currency}`` channel (state changes between two REST lists)."""

    MARKS = (b'"channel":"instrument.state.',)

    def parse_ws(self, frame: bytes) -> tuple[list[Spec], list[tuple[str, str, int]]] | None:
        if not channel_prefix(frame, self.MARKS, 100):
            return None
        data = obj(obj(obj(loads(frame), "frame").get("params"), "params").get("data"), "data")
        name, state = data.get("instrument_name"), data.get("state")
        if not isinstance(name, str) or not isinstance(state, str):
            raise FrameError("bad-shape", "instrument.state without instrument_name or state")
        return [], [(f"deribit:{name}", _STATES.get(state, state), ms_to_ns(data.get("timestamp")))]

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        return [f"{api_url}/api/v2/public/get_instruments?currency={c}" for c in currencies(symbols)]

    def parse(self, body: bytes) -> list[Spec] | None:
        msg = loads(body)
        result = msg.get("result") if isinstance(msg, dict) else None
        if not isinstance(result, list) or not all(isinstance(r, dict) and "instrument_name" in r for r in result):
            return None
        out = []
        for r in result:
            kind = r.get("kind")
            perpetual = r.get("settlement_period") == "perpetual"
            out.append(Spec(
                key=f"deribit:{r['instrument_name']}",
                kind="option" if kind == "option" else "spot" if kind == "spot" else
                "perpetual" if perpetual else "future",
                margin="inverse" if r.get("instrument_type") == "reversed" else "linear",
                base=str(r.get("base_currency", "")), quote=str(r.get("quote_currency", "")),
                settle=str(r.get("settlement_currency", "")), contract_size=opt_str(r.get("contract_size")),
                tick_size=opt_str(r.get("tick_size")),
                tick_size_steps=[{"above_price": num_str(x["above_price"]), "tick_size": num_str(x["tick_size"])}
                                 for x in r.get("tick_size_steps") or []],
                min_size=opt_str(r.get("min_trade_amount")), lot_size=opt_str(r.get("min_trade_amount")),
                strike=opt_str(r.get("strike")), option_type=r.get("option_type"),
                expiry_ns=None if perpetual or kind == "spot" else ms_to_ns(r.get("expiration_timestamp")),
                underlying=r.get("price_index"), index=r.get("price_index"),
                state="open" if r.get("is_active", True) else "closed",
            ))
        return out


VENUE = Venue(
    "deribit", DeribitAdapter(), DeribitRule(), DeribitProtocol,
    endpoint=Endpoint("wss://www.deribit.com/ws/api/v2", "book.{symbol}.100ms", max_per_conn=100, ping_s=10,
                      api_url="https://www.deribit.com",
                      market=("trades.{symbol}.100ms", "ticker.{symbol}.100ms"),
                      # Deribit "Rate Limits" (2026-11): a subscribe costs 3,000 of 30,000 credits
                      # refilled at 10,000 a second: a burst of 10, then 3.3 a second; a request
                      # without credit is refused (10028) and the session closed. 32 connections per IP.
                      limits=Limits(scope="deribit", ip_ops=(10, 3.0))),
    sim_ws_path="/ws/deribit", market=DeribitMarket(), instrument_lists=DeribitInstruments(),
)
