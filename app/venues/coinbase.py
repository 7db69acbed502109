"""Coinbase Advanced Trade ``level2`` (channel ``l2_data``).

Wire schema: ``{"channel":"l2_data","timestamp":RFC 3339,"sequence_num":n,"events":[{
"type":"snapshot"|"update","product_id":…,"updates":[{"side":"bid"|"offer",
"event_time":…,"price_level":…,"new_quantity":…}]}]}``. Quantities are absolute, "0"
removes. ``sequence_num`` counts per connection across all channels: its continuity is
checked where the whole connection is visible (``app.router``), not per instrument.
The session also subscribes to ``heartbeats``, which keep ``sequence_num`` moving.
"""

from __future__ import annotations

import re
from typing import Any

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
    named_objects,
    num_str,
    opt_str,
    rfc3339_ns,
)
from app.venues.session import Ack, Endpoint, Limits, Protocol, Request, Sub, chunks, dumps


def _array(value: Any, what: str) -> list[Any]:
    """A JSON array field; absent (or empty) is none; FrameError for anything else."""
    if not value:
        return []
    if not isinstance(value, list):
        raise FrameError("bad-shape", f"{what} is not a list")
    return value


def _products(msg: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for event in _array(msg.get("events"), "events"):
        if not isinstance(event, dict):
            continue
        ids = [event.get("product_id")]
        for key in ("tickers", "trades", "candles"):
            ids.extend(x.get("product_id") for x in _array(event.get(key), key) if isinstance(x, dict))
        out.extend(p for p in ids if isinstance(p, str) and p and p not in out)
    return out


class CoinbaseAdapter:
    venue = "coinbase"

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        msg = loads(frame)
        return _products(msg) if isinstance(msg, dict) else []

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        msg = obj(loads(frame), "frame")
        if msg.get("channel") != "l2_data":
            return []
        seq = as_int(msg.get("sequence_num"), "sequence_num")
        ts = rfc3339_ns(msg.get("timestamp"))
        events = msg.get("events")
        if not isinstance(events, list):
            raise FrameError("bad-shape", "events is not a list")
        out = []
        for event in events:
            event = obj(event, "event")
            if event.get("product_id") != symbol:
                continue  # a frame spanning products is produced once per product key
            type_ = event.get("type")
            if type_ not in ("snapshot", "update"):
                raise FrameError("bad-shape", f"event type {str(type_)[:20]!r}")
            bids: list[Level] = []
            asks: list[Level] = []
            for upd in _array(event.get("updates"), "updates"):
                if not isinstance(upd, dict):
                    raise FrameError("bad-levels", "update is not an object")
                px, qty, side = upd.get("price_level"), upd.get("new_quantity"), upd.get("side")
                if not isinstance(px, str) or not isinstance(qty, str):
                    raise FrameError("bad-levels", "price_level/new_quantity not strings")
                if side == "bid":
                    bids.append((px, qty))
                elif side == "offer":
                    asks.append((px, qty))
                else:
                    raise FrameError("bad-levels", f"side {str(side)[:10]!r}")
            out.append(
                BookUpdate(snapshot=type_ == "snapshot", seq=seq, bids=bids, asks=asks, ts_exchange=ts)
            )
        return out

    def conn_seq(self, frame: bytes) -> int | None:
        msg = loads(frame)
        if isinstance(msg, dict) and "sequence_num" in msg:
            return as_int(msg["sequence_num"], "sequence_num")
        return None


class CoinbaseRule(SequenceRule):
    """``sequence_num`` counts per connection across every channel, so its contiguity is the
    router's (``app.router``: a gap stales every book of the connection); per instrument
    only its order is checked."""

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        return Continuity.DUPLICATE if self.repeated(last, upd) else Continuity.OK


class CoinbaseProtocol(Protocol):
    """One message per channel for its products (``{"type":"subscribe","product_ids":[…],
    "channel":…}``), plus ``heartbeats``. The venue answers with a ``subscriptions`` message
    listing everything the connection is subscribed to, and refuses a product with
    ``{"type":"error","message":…,"reason":"X is not a valid product"}``."""

    def channel_id(self, symbol: str, name: str) -> str:
        return f"{name}:{symbol}"

    def arg(self, symbol: str, name: str) -> tuple[str, tuple[str, ...]]:
        return name, (symbol,)

    def aux(self, symbols: list[str]) -> list[Sub]:
        return [] if self._book_only else [Sub("", "heartbeats", ("heartbeats", tuple(symbols)))]

    def requests(self, op: str, subs: list[Sub]) -> list[Request]:
        """One message per channel, heartbeats first (they keep ``sequence_num`` moving)."""
        by_channel: dict[str, list[Sub]] = {}
        for sub in sorted(subs, key=lambda s: s.arg[0] != "heartbeats"):
            by_channel.setdefault(sub.arg[0], []).append(sub)
        size = self.endpoint.limits.args_per_request
        return [Request(dumps({"type": op, "product_ids": [p for s in part for p in s.arg[1]], "channel": channel}),
                        op, tuple(s.id for s in part))
                for channel, group in by_channel.items() for part in chunks(group, size)]

    def ack(self, frame: bytes) -> Ack | None:
        head = frame[:40]
        if b'"channel":"subscriptions"' in head:
            msg = obj(loads(frame), "frame")
            ok: list[str] = []
            for event in _array(msg.get("events"), "events"):
                for channel, products in (obj(event, "event").get("subscriptions") or {}).items():
                    name = _CHANNELS.get(channel, channel)
                    ok += [f"{name}:{p}" for p in products or []] + ([name] if name == "heartbeats" else [])
            return Ack(ok=tuple(ok))
        if b'"type":"error"' in frame[:60]:
            msg = obj(loads(frame), "frame")
            reason = str(msg.get("reason") or msg.get("message") or "error")[:200]
            product = reason.split(" ", 1)[0] if "not a valid product" in reason else ""
            return Ack(failed=reason, symbols=(product,) if product else ())
        return None

    def data_channels(self, frame: bytes) -> tuple[str, ...]:
        found = _DATA.match(frame)
        if found is None:
            return ()
        name = _CHANNELS[found.group(1).decode()]
        return tuple(dict.fromkeys(f"{name}:{p.decode()}" for p in _PRODUCT.findall(frame, 0, 600)))


#: the channel a message names → the channel subscribed
_CHANNELS = {"l2_data": "level2", "level2": "level2", "market_trades": "market_trades", "ticker": "ticker",
             "heartbeats": "heartbeats"}
_DATA = re.compile(rb'\{"channel":"(l2_data|market_trades|ticker)"')
_PRODUCT = re.compile(rb'"product_id":"([^"]+)"')


class CoinbaseMarket:
    """``market_trades`` (``trade_id`` increasing per product; ``side`` is the maker's, so the
    taker took the other side; a snapshot lists the latest trades newest first) and ``ticker``
    (last price, best bid/ask and quantities)."""

    MARKS = (b'"channel":"market_trades"', b'"channel":"ticker"')

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        if kind is not Kind.WS or not channel_prefix(frame, self.MARKS, 40):
            return [], []
        msg = obj(loads(frame), "frame")
        channel = msg.get("channel")
        trades: list[Trade] = []
        tickers: list[Ticker] = []
        for event in _array(msg.get("events"), "events"):
            event = obj(event, "event")
            if channel == "market_trades":
                for t in _array(event.get("trades"), "trades"):
                    t = obj(t, "trade")
                    if t.get("product_id") != symbol:
                        continue
                    tid = as_int(t.get("trade_id"), "trade_id")
                    maker = t.get("side")
                    trades.append(Trade(trade_id=str(t["trade_id"]), price=num_str(t.get("price")),
                                        size=num_str(t.get("size")), unit="base",
                                        side={"BUY": "sell", "SELL": "buy"}.get(str(maker), ""),
                                        ts_exchange=rfc3339_ns(t.get("time")), order=tid))
            elif channel == "ticker":
                ts = rfc3339_ns(msg.get("timestamp"))
                for t in _array(event.get("tickers"), "tickers"):
                    t = obj(t, "ticker")
                    if t.get("product_id") != symbol:
                        continue
                    tickers.append(Ticker("ticker", ts, {
                        "last": opt_str(t.get("price")), "bid": opt_str(t.get("best_bid")),
                        "bid_size": opt_str(t.get("best_bid_quantity")), "ask": opt_str(t.get("best_ask")),
                        "ask_size": opt_str(t.get("best_ask_quantity"))}))
        return trades, tickers


class CoinbaseInstruments:
    """``/api/v3/brokerage/market/products?product_ids=…`` (public)."""

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        return [f"{api_url}/api/v3/brokerage/market/products?" + "&".join(f"product_ids={s}" for s in symbols)]

    def parse(self, body: bytes) -> list[Spec] | None:
        msg = loads(body)
        items = named_objects(msg.get("products"), "product_id") if isinstance(msg, dict) else None
        if items is None:
            return None
        out = []
        for d in items:
            halted = d.get("trading_disabled") or d.get("is_disabled") or d.get("status") not in (None, "online")
            out.append(Spec(
                key=f"coinbase:{d['product_id']}", kind="spot" if d.get("product_type", "SPOT") == "SPOT" else "future",
                margin="linear", base=str(d.get("base_currency_id", "")), quote=str(d.get("quote_currency_id", "")),
                settle=str(d.get("quote_currency_id", "")), tick_size=opt_str(d.get("quote_increment")),
                lot_size=opt_str(d.get("base_increment")), min_size=opt_str(d.get("base_min_size")),
                min_notional=opt_str(d.get("quote_min_size")), state="halted" if halted else "open",
            ))
        return out


VENUE = Venue(
    "coinbase", CoinbaseAdapter(), CoinbaseRule(), CoinbaseProtocol,
    # one product per connection: sequence_num is per connection, so a gap then names one book
    endpoint=Endpoint("wss://advanced-trade-ws.coinbase.com", "level2", max_per_conn=1,
                      market=("market_trades", "ticker"), api_url="https://api.coinbase.com",
                      # Advanced Trade "WebSocket Rate Limits" (2026-11): 8 unauthenticated
                      # messages a second per IP; connections 8 a second per IP (one page of the
                      # docs says 750: the stricter kept)
                      limits=Limits(scope="coinbase", ip_msgs=(8, 1.0), conns=(8, 1.0))),
    sim_ws_path="/ws/coinbase", market=CoinbaseMarket(), instrument_lists=CoinbaseInstruments(),
)
