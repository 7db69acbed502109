"""The simulator's trades and tickers: each venue's real channels and field names.

Every simulated instrument that a connection watches for trades or tickers produces, as its
book steps, a trade now and then (at the best bid or ask, numbered without holes per
instrument, as Deribit ``trade_seq`` and Binance ``t`` are) and a ticker (best bid/ask from
the true book, a mark near the mid, index, funding and open interest). Options get a forward
per underlying (a slow random walk around a level that :meth:`Forwards.move` can move), a
volatility smile, and Black-76 marks, IVs and greeks computed from them, so the venue-side
numbers of an options chain are consistent and bookstream's own can be checked against them.
The ``skip-trade`` fault consumes a trade number without sending the trade: a gap bookstream
must report.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from app.market import black76
from app.market.symbols import parse_option

KINDS = ("trades", "ticker")
_FORWARD0 = {"BTC": 65_000.0, "ETH": 2_000.0}


def _ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(ns: int | None = None) -> str:
    now = time.time_ns() if ns is None else ns
    return datetime.fromtimestamp(now // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{now % 10**9:09d}Z"


@dataclass
class MarketState:
    trade_seq: int = 0
    open_interest: float = 1000.0


class Forwards:
    """One forward per underlying coin, shared by its options: a slow random walk around a level.

    ``values[coin]`` is the current forward: ``levels[coin]`` (the coin's level, moved by
    :meth:`move`) times ``exp(walk)``, the walk taking a tiny step on every :meth:`get`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.values: dict[str, float] = {}
        self.levels: dict[str, float] = {}
        self.walks: dict[str, float] = {}  # log deviation of the forward from its level

    def level(self, coin: str) -> float:
        return self.levels.get(coin, _FORWARD0.get(coin, 100.0))

    def peek(self, coin: str) -> float:
        """The current forward, without stepping the walk."""
        return self.values.get(coin, self.level(coin))

    def coins(self) -> list[str]:
        return sorted({*_FORWARD0, *self.values, *self.levels})

    def get(self, coin: str) -> float:
        walk = self.walks.get(coin, 0.0) + self.rng.gauss(0.0, 0.0002)
        self.walks[coin] = walk
        value = self.values[coin] = self.level(coin) * math.exp(walk)
        return value

    async def move(self, coin: str, pct: float, seconds: float, on_step: Callable[[float], None] | None = None,
                   interval: float = 0.5) -> None:
        """Move ``coin``'s level to (1 + pct/100) × the forward now, linearly in log price over
        ``seconds``, a step at least every ``interval`` s; ``on_step(factor)`` after each step with
        the factor moved so far (1 at the start, 1 + pct/100 at the end). Cancelling it leaves the
        level where it got to."""
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a positive number, not {seconds!r}")
        if not (pct > -100 and math.isfinite(pct)):
            raise ValueError(f"pct must be a number above -100, not {pct!r}")
        start = self.peek(coin)
        self.levels[coin], self.walks[coin] = start, 0.0  # the walk so far becomes part of the level
        total = math.log1p(pct / 100)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            frac = min(1.0, (loop.time() - t0) / seconds)
            factor = math.exp(total * frac)
            self.levels[coin] = start * factor
            self.values[coin] = self.levels[coin] * math.exp(self.walks.get(coin, 0.0))
            if on_step is not None:
                on_step(factor)
            if frac >= 1.0:
                return
            await asyncio.sleep(min(interval, t0 + seconds - loop.time()))


def smile(log_moneyness: float, t: float) -> float:
    """The simulator's implied volatility: a smile that flattens with time."""
    return 0.55 + 0.35 * log_moneyness**2 / max(math.sqrt(t), 0.1) - 0.05 * log_moneyness


def option_fields(symbol: str, forwards: Forwards) -> dict[str, Any] | None:
    """Forward, marks (coin per unit), IVs (decimal) and Black-76 greeks of an option now."""
    spec = parse_option(symbol)
    if spec is None:
        return None
    t = (spec.expiry_ns - time.time_ns()) / (365 * 86_400 * 1e9)
    if t <= 0:
        return None
    coin = spec.underlying.split("-")[0].split("_")[0]
    f = forwards.get(coin)
    sigma = smile(math.log(spec.strike / f), t)
    # one option at a time: the plain-float Black-76 (numpy's per-call cost was a quarter of the
    # simulator's CPU in the bench's options universe)
    usd = black76.price_one(f, spec.strike, t, sigma, spec.call)
    g = black76.greeks_one(f, spec.strike, t, sigma, spec.call)
    return {"forward": f, "mark_usd": usd, "mark_iv": sigma, "bid_iv": sigma - 0.01, "ask_iv": sigma + 0.01,
            "delta": g["delta"], "gamma": g["gamma"], "vega": g["vega"], "theta": g["theta"],
            "bid_usd": black76.price_one(f, spec.strike, t, sigma - 0.01, spec.call),
            "ask_usd": black76.price_one(f, spec.strike, t, sigma + 0.01, spec.call), "coin": coin}


def _r(x: float, digits: int = 8) -> float:
    return round(x, digits)


# -- trades -----------------------------------------------------------------------------
def trade_message(family: str, venue: str, symbol: str, seq: int, price: str, size: str, buy: bool) -> str:
    ms = _ms()
    if family == "deribit":
        return deribit_trades(f"trades.{symbol}.100ms", [deribit_trade(symbol, seq, price, size, buy)])
    if family == "binance":
        event: dict[str, Any] = {"e": "trade", "E": ms, "s": symbol, "t": seq, "p": price, "q": size, "T": ms,
                                 "m": not buy}
        if venue != "binance":
            event["X"] = "MARKET"
        return orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": event}).decode()
    if family == "okx":
        item = {"instId": symbol, "tradeId": str(seq), "px": price, "sz": size, "side": "buy" if buy else "sell",
                "ts": str(ms), "count": "1"}
        return orjson.dumps({"arg": {"channel": "trades", "instId": symbol}, "data": [item]}).decode()
    if family == "bybit":
        fill = {"T": ms, "s": symbol, "S": "Buy" if buy else "Sell", "v": size, "p": price, "L": "PlusTick",
                "i": str(uuid.UUID(int=seq)), "BT": False, "seq": seq}
        topic = f"publicTrade.{symbol.split('-')[0]}" if venue == "bybit-option" else f"publicTrade.{symbol}"
        return orjson.dumps({"topic": topic, "type": "snapshot", "ts": ms, "data": [fill]}).decode()
    raise ValueError(family)


def deribit_trade(symbol: str, seq: int, price: str, size: str, buy: bool) -> dict[str, Any]:
    return {"trade_seq": seq, "trade_id": f"SIM-{seq}", "timestamp": _ms(), "tick_direction": 0,
            "price": float(price), "instrument_name": symbol, "direction": "buy" if buy else "sell",
            "amount": float(size)}


def deribit_trades(channel: str, items: list[dict[str, Any]]) -> str:
    """A ``trades.<i>.<interval>`` notification: the trades of one interval (``raw``: one), oldest first."""
    params = {"channel": channel, "data": items}
    return orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": params}).decode()


def coinbase_trade(symbol: str, seq: int, conn_seq: int, price: str, size: str, buy: bool) -> str:
    item = {"product_id": symbol, "trade_id": str(seq), "price": price, "size": size, "time": _iso(),
            "side": "SELL" if buy else "BUY"}  # the maker's side
    return orjson.dumps({"channel": "market_trades", "client_id": "", "timestamp": _iso(), "sequence_num": conn_seq,
                         "events": [{"type": "update", "trades": [item]}]}).decode()


# -- tickers ----------------------------------------------------------------------------
def ticker_message(family: str, venue: str, symbol: str, top: tuple[str, str, str, str], seq: int,
                   state: MarketState, forwards: Forwards, stream: str = "") -> str:
    bid, bid_sz, ask, ask_sz = top
    mid = (float(bid) + float(ask)) / 2
    ms = _ms()
    opt = option_fields(symbol, forwards)
    if family == "deribit":
        data: dict[str, Any] = {
            "timestamp": ms, "instrument_name": symbol, "state": "open", "best_bid_price": float(bid),
            "best_bid_amount": float(bid_sz), "best_ask_price": float(ask), "best_ask_amount": float(ask_sz),
            "open_interest": _r(state.open_interest, 1), "settlement_price": 0.0, "min_price": 0.0, "max_price": 0.0,
            "last_price": float(ask),
        }
        if opt is not None:
            f = opt["forward"]
            data.update({
                "mark_price": _r(opt["mark_usd"] / f, 8), "underlying_price": _r(f, 4),
                "underlying_index": symbol.rsplit("-", 2)[0], "index_price": _r(f * 0.9995, 2), "interest_rate": 0.0,
                "mark_iv": _r(opt["mark_iv"] * 100, 4), "bid_iv": _r(opt["bid_iv"] * 100, 4),
                "ask_iv": _r(opt["ask_iv"] * 100, 4),
                "greeks": {"delta": _r(opt["delta"], 5), "gamma": _r(opt["gamma"], 8),
                           "vega": _r(opt["vega"], 5), "theta": _r(opt["theta"], 5), "rho": 0.0},
            })
        else:
            data.update({"mark_price": _r(mid, 2), "index_price": _r(mid * 0.9998, 2),
                         "current_funding": 0.0001, "funding_8h": 0.00012, "estimated_delivery_price": _r(mid, 2)})
        params = {"channel": f"ticker.{symbol}.100ms", "data": data}
        return orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": params}).decode()
    if family == "binance":
        if stream.endswith("@bookTicker"):
            book = {"u": seq, "s": symbol, "b": bid, "B": bid_sz, "a": ask, "A": ask_sz}
            return orjson.dumps({"stream": stream, "data": book}).decode()
        event = {"e": "markPriceUpdate", "E": ms, "s": symbol, "p": f"{mid:.2f}", "i": f"{mid * 0.9998:.2f}",
                 "P": f"{mid:.2f}", "r": "0.00010000", "T": (ms // 28_800_000 + 1) * 28_800_000}
        return orjson.dumps({"stream": stream or f"{symbol.lower()}@markPrice@1s", "data": event}).decode()
    if family == "okx":
        item = {"instType": "SPOT" if symbol.count("-") == 1 else "SWAP", "instId": symbol, "last": ask, "lastSz": "1",
                "askPx": ask, "askSz": ask_sz, "bidPx": bid, "bidSz": bid_sz, "ts": str(ms)}
        return orjson.dumps({"arg": {"channel": "tickers", "instId": symbol}, "data": [item]}).decode()
    if family == "bybit":
        body: dict[str, Any] = {"symbol": symbol, "bid1Price": bid, "bid1Size": bid_sz, "ask1Price": ask,
                                "ask1Size": ask_sz, "lastPrice": ask, "markPrice": f"{mid:.2f}",
                                "indexPrice": f"{mid * 0.9998:.2f}", "openInterest": f"{state.open_interest:.3f}"}
        if opt is not None:
            body.update({"markPrice": f"{opt['mark_usd']:.4f}", "underlyingPrice": f"{opt['forward']:.2f}",
                         "markIv": f"{opt['mark_iv']:.4f}", "bid1Iv": f"{opt['bid_iv']:.4f}",
                         "ask1Iv": f"{opt['ask_iv']:.4f}", "delta": f"{opt['delta']:.8f}",
                         "gamma": f"{opt['gamma']:.8f}", "vega": f"{opt['vega']:.8f}", "theta": f"{opt['theta']:.8f}"})
        elif venue in ("bybit-linear", "bybit-inverse"):
            body.update({"fundingRate": "0.0001", "nextFundingTime": str((ms // 28_800_000 + 1) * 28_800_000)})
        return orjson.dumps({"topic": f"tickers.{symbol}", "type": "snapshot", "data": body, "cs": seq,
                             "ts": ms}).decode()
    raise ValueError(family)


def coinbase_ticker(symbol: str, top: tuple[str, str, str, str], conn_seq: int) -> str:
    bid, bid_sz, ask, ask_sz = top
    item = {"type": "ticker", "product_id": symbol, "price": ask, "best_bid": bid, "best_ask": ask,
            "best_bid_quantity": bid_sz, "best_ask_quantity": ask_sz}
    return orjson.dumps({"channel": "ticker", "client_id": "", "timestamp": _iso(), "sequence_num": conn_seq,
                         "events": [{"type": "update", "tickers": [item]}]}).decode()


# -- Hyperliquid and dYdX v4 (their own shapes: see app/venues/hyperliquid.py, app/venues/dydx.py) ----
def hyperliquid_trade(symbol: str, tid: int, time_ms: int, price: str, size: str, buy: bool) -> dict[str, Any]:
    """One ``trades`` item: unique by (time, coin, tid); ``side`` the taker's (B buy, A sell)."""
    return {"coin": symbol, "side": "B" if buy else "A", "px": price, "sz": size, "time": time_ms,
            "hash": f"0x{tid:064x}", "tid": tid, "users": ["0x" + "1" * 40, "0x" + "2" * 40]}


def hyperliquid_trades(items: list[dict[str, Any]]) -> str:
    return orjson.dumps({"channel": "trades", "data": items}).decode()


def hyperliquid_ctx(symbol: str, top: tuple[str, str, str, str], state: MarketState) -> str:
    bid, _, ask, _ = top
    mid = (float(bid) + float(ask)) / 2
    ctx = {"funding": "0.0000125", "openInterest": f"{state.open_interest:.3f}", "prevDayPx": f"{mid:.1f}",
           "dayNtlVlm": "1000000.0", "premium": "0.0001", "oraclePx": f"{mid * 0.9998:.1f}", "markPx": f"{mid:.1f}",
           "midPx": f"{mid:.2f}", "impactPxs": [bid, ask], "dayBaseVlm": "100.0"}
    return orjson.dumps({"channel": "activeAssetCtx", "data": {"coin": symbol, "ctx": ctx}}).decode()


def hyperliquid_bbo(symbol: str, time_ms: int, top: tuple[str, str, str, str]) -> str:
    bid, bid_sz, ask, ask_sz = top
    bbo = [{"px": bid, "sz": bid_sz, "n": 1}, {"px": ask, "sz": ask_sz, "n": 1}]
    return orjson.dumps({"channel": "bbo", "data": {"coin": symbol, "time": time_ms, "bbo": bbo}}).decode()


def dydx_trade(seq: int, created_ns: int, price: str, size: str, buy: bool) -> dict[str, Any]:
    """One ``v4_trades`` item: unique by ``id``; ``side`` the taker's."""
    return {"id": f"{seq:032x}", "side": "BUY" if buy else "SELL", "size": size, "price": price, "type": "LIMIT",
            "createdAt": _iso(created_ns), "createdAtHeight": str(1_000_000 + seq)}


def dydx_message(kind: str, conn_id: str, message_id: int, channel: str, market: str,
                 contents: dict[str, Any]) -> str:
    """A v4 indexer message; ``type`` first and ``contents`` last, as the indexer writes them."""
    head: dict[str, Any] = {"type": kind, "connection_id": conn_id, "message_id": message_id, "channel": channel}
    if market:
        head["id"] = market
    if kind == "channel_data":
        head["version"] = "1.0.0"
    return orjson.dumps({**head, "contents": contents}).decode()


def dydx_markets_update(symbol: str, top: tuple[str, str, str, str], state: MarketState) -> dict[str, Any]:
    """``v4_markets`` channel_data contents for one market: trading fields and its oracle price."""
    bid, _, ask, _ = top
    mid = (float(bid) + float(ask)) / 2
    return {"trading": {symbol: {"id": symbol, "nextFundingRate": "0.0000125",
                                 "openInterest": f"{state.open_interest:.4f}"}},
            "oraclePrices": {symbol: {"oraclePrice": f"{mid:.2f}", "effectiveAt": _iso(), "effectiveAtHeight": "1",
                                      "marketId": 0}}}
