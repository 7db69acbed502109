"""Local venue simulator: each venue's real protocol over real WebSockets, plus Binance REST.

One aiohttp server on ``SIM_HOST:SIM_PORT`` (127.0.0.1:8765 by default):

    ws   /ws/deribit                              JSON-RPC 2.0, book.{instrument}.{100ms|raw}
    ws   /ws/binance/stream                       SUBSCRIBE, combined-stream frames, depth@100ms
    ws   /ws/binance-usdm/public/stream           (the 2026 futures path)   + pu
    ws   /ws/binance-coinm/stream
    ws   /ws/okx/ws/v5/public                     books, seqId/prevSeqId, CRC32 checksum, ping/pong
    ws   /ws/bybit/v5/public/{category}           orderbook.{depth}.{symbol}, {"op":"ping"}
    ws   /ws/coinbase                             level2 + heartbeats, sequence_num per connection
    get  /rest/binance/api/v3/depth               REST depth snapshots (lastUpdateId)
    get  /rest/binance-usdm/fapi/v1/depth
    get  /rest/binance-coinm/dapi/v1/depth
    get  /control/truth/{venue}/{symbol}          ground truth: [seq, bid_px, bid_sz, ask_px, ask_sz, conn]
    post /control/fault                           {"venue","symbol","fault","seconds"}: see FAULTS
    post /control/move                            {"coin","pct","seconds"}: move the underlying, see below
    get  /control/status                          instruments, connections, counters, forwards per coin

Every instrument is created on first subscription (or REST request) with a stochastic
order-flow model seeded by its name; it steps at ``rate`` updates/s with bursts. The
simulator serves full depth (it does not truncate books to the subscribed depth).

``/control/move`` {"coin": "BTC", "pct": 5, "seconds": 60} moves the coin over ``seconds``,
linearly in log price (a step at least every 0.5 s), to (1 + pct/100) × its level now: the
options' forward (so their marks, IVs and greeks follow) and the books of every non-option
instrument whose symbol starts with the coin, each shifted whole by ticks and sent as ordinary
deltas. A new move of the same coin replaces a running one; books created later start at the
moved level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from app.market.symbols import parse_option
from app.simulator import instruments as sim_instruments
from app.simulator import market
from app.simulator.market import Forwards, MarketState
from app.simulator.model import Change, TrueBook
from app.venues.okx import okx_checksum

log = logging.getLogger(__name__)

FAULTS = ("drop", "duplicate", "reorder", "corrupt", "disconnect", "silence", "slow", "burst",
          "okx-reset", "bybit-restart", "skip-trade", "spec-change", "state-change")
TRUTH_KEEP = 200_000


def _ms() -> int:
    return time.time_ns() // 1_000_000


def _iso() -> str:
    now = time.time_ns()
    return datetime.fromtimestamp(now // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{now % 10**9:09d}Z"


@dataclass
class Instrument:
    venue: str
    symbol: str
    book: TrueBook
    seq: int = 1000
    subscribers: set[Conn] = field(default_factory=set)
    truth: deque[list[Any]] = field(default_factory=lambda: deque(maxlen=TRUTH_KEEP))
    faults: dict[str, int] = field(default_factory=dict)
    until: dict[str, float] = field(default_factory=dict)  # silence / slow / burst deadlines
    held: Any = None  # a message held back by "reorder"
    driver: asyncio.Task[None] | None = None
    watchers: dict[Conn, set[str]] = field(default_factory=dict)  # trades/ticker channels per connection
    market: MarketState = field(default_factory=MarketState)
    shifted: int = 0  # ticks the book has been shifted by underlying moves

    def active(self, fault: str) -> bool:
        return time.monotonic() < self.until.get(fault, 0)

    def take(self, fault: str) -> bool:
        if self.faults.get(fault, 0) > 0:
            self.faults[fault] -= 1
            return True
        return False


class Conn:
    """One client connection: an ordered send queue drained by its own task."""

    def __init__(self, sim: Simulator, ws: web.WebSocketResponse, venue: str, number: int) -> None:
        self.sim, self.ws, self.venue, self.number = sim, ws, venue, number
        self.queue: asyncio.Queue[tuple[str, Instrument | None]] = asyncio.Queue()
        self.subs: set[str] = set()
        self.seq = 0  # Coinbase sequence_num
        self.authed = False
        self.heartbeats = False
        self.coin_trades: set[str] = set()  # Bybit options: publicTrade.<coin> subscriptions
        self.state_channels: set[str] = set()  # Deribit instrument.state.any.<currency>
        self.instrument_channel = False  # OKX instruments

    def next_seq(self) -> int:
        seq, self.seq = self.seq, self.seq + 1
        return seq

    def send(self, text: str, inst: Instrument | None = None) -> None:
        self.queue.put_nowait((text, inst))

    def silenced(self) -> bool:
        return any(i.active("silence") for i in self.sim.instruments.values() if self in i.subscribers)

    async def drain(self) -> None:
        while True:
            text, inst = await self.queue.get()
            if self.silenced():
                continue  # the venue went quiet on this connection: nothing at all arrives
            if inst is not None and inst.active("slow"):
                await asyncio.sleep(0.2)
            if self.ws.closed:
                return
            await self.ws.send_str(text)
            self.sim.counters["frames_sent"] += 1


class Simulator:
    def __init__(self, rate: float = 10.0, seed: int = 0) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.instruments: dict[tuple[str, str], Instrument] = {}
        self.conns: set[Conn] = set()
        self.counters: dict[str, int] = {"connections": 0, "frames_sent": 0, "faults": 0, "trades": 0,
                                         "trades_skipped": 0, "tickers": 0, "instrument_lists": 0}
        self.forwards = Forwards(self.rng)
        self.tick_factor: dict[tuple[str, str], int] = {}  # spec-change: (venue, symbol) → tick multiplier
        self.closed: set[tuple[str, str]] = set()  # state-change: instruments the venue closed
        self.book_factor: dict[str, float] = {}  # coin → how far moves have taken its books' level
        self.moves: dict[str, asyncio.Task[None]] = {}  # coin → its running move
        self._conn_numbers = 0

    # -- instruments ----------------------------------------------------------------
    def instrument(self, venue: str, symbol: str) -> Instrument:
        key = (venue, symbol)
        inst = self.instruments.get(key)
        if inst is None:
            seed = zlib.crc32(f"{venue}:{symbol}".encode())  # same symbol, different venue: its own market
            inst = self.instruments[key] = Instrument(venue, symbol, TrueBook(symbol, seed=seed))
            inst.driver = asyncio.get_running_loop().create_task(self._drive(inst))
            coin = _moved_coin(symbol, self.book_factor)
            if coin is not None:  # born after a move: at the moved level
                self._align(inst, coin)
            self._record_truth(inst, inst.seq, 0)
        return inst

    def _record_truth(self, inst: Instrument, seq: int, conn: int) -> None:
        inst.truth.append([seq, *inst.book.top(), conn])

    async def _drive(self, inst: Instrument) -> None:
        rng = self.rng
        while True:
            rate = self.rate * (20 if inst.active("burst") else 1) * (5 if rng.random() < 0.05 else 1)
            await asyncio.sleep(rng.expovariate(rate))
            self.step(inst)

    def step(self, inst: Instrument, changes: list[Change] | None = None) -> None:
        """One book update of ``inst`` (a model step, or ``changes`` already applied to its book)
        sent to its subscribers in its venue's format, faults and all."""
        if changes is None:
            changes = inst.book.step()
        family = _family(inst.venue)
        fmt = FORMATTERS[family]
        prev = inst.seq
        if family == "binance":
            inst.seq += len(changes)  # one update id per level change: U..u
        elif family == "bybit":
            inst.seq += 1
        elif family == "okx" and inst.take("okx-reset"):
            inst.seq = 3  # after maintenance the venue restarts low (seqId < prevSeqId), then continues
        else:
            inst.seq += self.rng.randint(1, 3)
        if family != "coinbase":
            self._record_truth(inst, inst.seq, 0)
        first = prev + 1
        drop, dup, corrupt = inst.take("drop"), inst.take("duplicate"), inst.take("corrupt")
        reorder = inst.take("reorder")
        for conn in list(inst.subscribers):
            if family == "coinbase":
                seq = conn.next_seq()  # consumed even when the message is dropped: a visible gap
                self._record_truth(inst, seq, conn.number)
                text = fmt(inst, changes, seq)
            else:
                text = fmt(inst, changes, first, prev)
            if drop:
                continue
            if corrupt:
                text = text[: len(text) // 2]
            if reorder:
                inst.held = (conn, text)
                continue
            conn.send(text, inst)
            if dup:
                conn.send(text, inst)
            if inst.held is not None and inst.held[0] is conn:
                conn.send(inst.held[1], inst)
                inst.held = None
        if inst.watchers:
            self._market(inst, family)
        if family == "bybit" and inst.take("bybit-restart"):
            inst.seq = 1  # the venue restarted: a fresh book with u = 1
            self._record_truth(inst, inst.seq, 0)
            for conn in inst.subscribers:
                conn.send(_bybit_message(inst, *inst.book.levels(), "snapshot"), inst)

    def _market(self, inst: Instrument, family: str) -> None:
        """A trade (sometimes) and a ticker (often) to the connections watching ``inst``."""
        rng = self.rng
        trade = rng.random() < 0.3
        ticker = rng.random() < 0.5
        if not (trade or ticker):
            return
        top = inst.book.top()
        skip = False
        if trade:
            inst.market.trade_seq += 1
            skip = inst.take("skip-trade")
            self.counters["trades_skipped" if skip else "trades"] += 1
            buy = rng.random() < 0.5
            price, size = (top[2] if buy else top[0]), inst.book.size(rng.randint(1, 5))
            inst.market.open_interest += rng.uniform(-1, 1)
        if trade and not skip and inst.venue == "bybit-option":
            coin = inst.symbol.split("-")[0]
            for conn in [c for c in self.conns if c.venue == inst.venue and coin in c.coin_trades]:
                conn.send(market.trade_message(family, inst.venue, inst.symbol, inst.market.trade_seq, price, size,
                                               buy), inst)
        for conn, channels in list(inst.watchers.items()):
            for channel in channels:
                if "rade" in channel:
                    if not trade or skip:
                        continue
                    seq = inst.market.trade_seq
                    text = (market.coinbase_trade(inst.symbol, seq, conn.next_seq(), price, size, buy)
                            if family == "coinbase" else
                            market.trade_message(family, inst.venue, inst.symbol, seq, price, size, buy))
                else:
                    if not ticker:
                        continue
                    text = (market.coinbase_ticker(inst.symbol, top, conn.next_seq()) if family == "coinbase" else
                            market.ticker_message(family, inst.venue, inst.symbol, top, inst.seq, inst.market,
                                                  self.forwards, channel))
                    self.counters["tickers"] += 1
                conn.send(text, inst)

    def watch(self, conn: Conn, symbol: str, channel: str, on: bool) -> None:
        """Start (or stop) sending ``channel`` (a trades or ticker channel) of ``symbol`` on ``conn``."""
        inst = self.instrument(conn.venue, symbol)
        channels = inst.watchers.setdefault(conn, set())
        if on:
            channels.add(channel)
        else:
            channels.discard(channel)
            if not channels:
                inst.watchers.pop(conn, None)

    def fault(self, venue: str, symbol: str, fault: str, seconds: float = 5.0) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        inst = self.instrument(venue, symbol)
        self.counters["faults"] += 1
        log.info("fault %s on %s:%s", fault, venue, symbol)
        if fault == "spec-change":
            self.tick_factor[(venue, symbol)] = self.tick_factor.get((venue, symbol), 1) * 2
            if venue == "okx":  # the instruments channel pushes the change at once
                body = sim_instruments.okx([symbol], {symbol: self.tick_factor[(venue, symbol)]})
                push = orjson.dumps({"arg": {"channel": "instruments", "instType": body["data"][0]["instType"]},
                                     "data": body["data"]}).decode()
                for conn in [c for c in self.conns if c.venue == "okx" and c.instrument_channel]:
                    conn.send(push)
        elif fault == "state-change":
            self.closed.add((venue, symbol))
            if venue == "deribit":  # instrument.state pushes it at once
                currency = symbol.split("-")[0]
                data = {"timestamp": _ms(), "state": "deactivated", "instrument_name": symbol}
                push = orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": {
                    "channel": f"instrument.state.any.{currency}", "data": data}}).decode()
                for conn in [c for c in self.conns if c.venue == "deribit" and currency in c.state_channels]:
                    conn.send(push)
        elif fault in ("silence", "slow", "burst"):
            inst.until[fault] = time.monotonic() + seconds
        elif fault == "disconnect":
            for conn in list(inst.subscribers):
                asyncio.get_running_loop().create_task(conn.ws.close())
        else:
            inst.faults[fault] = inst.faults.get(fault, 0) + 1

    def move(self, coin: str, pct: float, seconds: float) -> None:
        """Start moving ``coin`` by ``pct`` percent over ``seconds`` (replacing a running move of it)."""
        coin = coin.upper()
        if not coin:
            raise ValueError("coin must be a non-empty string")
        if not (math.isfinite(pct) and pct > -100):
            raise ValueError(f"pct must be a number above -100, not {pct!r}")
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a number above 0, not {seconds!r}")
        running = self.moves.pop(coin, None)
        if running is not None:
            running.cancel()
        start = self.book_factor.get(coin, 1.0)

        def on_step(factor: float) -> None:
            self.book_factor[coin] = start * factor
            for inst in list(self.instruments.values()):
                if _moved_coin(inst.symbol, self.book_factor) == coin:
                    self._align(inst, coin, send=True)

        log.info("move %s by %+g%% over %gs", coin, pct, seconds)
        task = asyncio.get_running_loop().create_task(self.forwards.move(coin, pct, seconds, on_step))
        task.add_done_callback(_log_failure)
        self.moves[coin] = task

    def _align(self, inst: Instrument, coin: str, send: bool = False) -> None:
        """Shift ``inst``'s book to its coin's moved level: by the ticks that scale its starting mid
        by the coin's factor (its own random walk around that level is kept)."""
        book = inst.book
        want = round(book.spec.mid_ticks * (self.book_factor[coin] - 1))
        ticks = max(want - inst.shifted, 1 - max(book.bids))  # as TrueBook.shift clamps it
        if not ticks:
            return
        changes = book.shift(ticks)
        inst.shifted += ticks
        if send:
            self.step(inst, changes)

    # -- connections ----------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        venue = request.match_info.get("venue") or request.path.split("/")[2]
        if venue == "bybit":
            venue = f"bybit-{request.match_info['category']}"
        ws = web.WebSocketResponse(heartbeat=20.0 if venue.startswith("binance") else None)
        await ws.prepare(request)
        self._conn_numbers += 1
        conn = Conn(self, ws, venue, self._conn_numbers)
        self.conns.add(conn)
        self.counters["connections"] += 1
        drain = asyncio.get_running_loop().create_task(conn.drain())
        beat = asyncio.get_running_loop().create_task(self._heartbeats(conn))
        handler = HANDLERS[_family(venue)]
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                handler(self, conn, msg.data)
        finally:
            drain.cancel()
            beat.cancel()
            self.conns.discard(conn)
            for inst in self.instruments.values():
                inst.subscribers.discard(conn)
                inst.watchers.pop(conn, None)
        return ws

    async def _heartbeats(self, conn: Conn) -> None:
        while True:
            await asyncio.sleep(1.0)
            if conn.venue == "coinbase" and conn.heartbeats:
                conn.send(orjson.dumps({"channel": "heartbeats", "timestamp": _iso(), "sequence_num": conn.next_seq(),
                                        "events": [{"current_time": _iso(), "heartbeat_counter": conn.seq}]}).decode())
            elif conn.venue == "deribit" and conn.heartbeats:
                conn.send('{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}')

    def subscribe(self, conn: Conn, symbol: str, snapshot: Callable[[Instrument], str] | None) -> Instrument:
        inst = self.instrument(conn.venue, symbol)
        conn.subs.add(symbol)
        if snapshot is not None:
            conn.send(snapshot(inst), inst)
        inst.subscribers.add(conn)
        return inst

    def unsubscribe(self, conn: Conn, symbol: str) -> None:
        conn.subs.discard(symbol)
        inst = self.instruments.get((conn.venue, symbol))
        if inst is not None:
            inst.subscribers.discard(conn)

    # -- HTTP -----------------------------------------------------------------------
    async def depth(self, request: web.Request) -> web.Response:
        venue = request.path.split("/")[2]
        symbol = request.query.get("symbol", "").upper()
        if not symbol:
            return web.json_response({"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent"}, status=400)
        inst = self.instrument(venue, symbol)
        limit = int(request.query.get("limit", "1000"))
        bids, asks = inst.book.levels(limit)
        body: dict[str, Any] = {"lastUpdateId": inst.seq, "bids": bids, "asks": asks}
        if venue != "binance":
            body = {"lastUpdateId": inst.seq, "E": _ms(), "T": _ms(), "bids": bids, "asks": asks}
        await asyncio.sleep(self.rng.uniform(0.01, 0.05))  # REST latency: deltas keep flowing meanwhile
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def instrument_list(self, request: web.Request) -> web.Response:
        """A venue's REST instrument list: the symbols the request names, else every simulated
        instrument of that venue (and currency / type)."""
        venue = request.path.split("/")[2]
        q = request.query
        self.counters["instrument_lists"] += 1
        known = sorted(s for v, s in self.instruments if v == venue)

        def factor(symbols: list[str]) -> dict[str, int]:
            return {s: self.tick_factor.get((venue, s), 1) for s in symbols}

        closed = {s for v, s in self.closed if v == venue}
        if venue == "deribit":
            currency = q.get("currency", "")
            if not currency:
                error = {"code": 10001, "message": "currency"}
                return web.json_response({"jsonrpc": "2.0", "error": error}, status=400)
            names = sorted({s for s in known if s.split("-")[0].split("_")[-1] == currency
                            or s.startswith(currency + "-")} | set(sim_instruments.deribit_listed(currency)))
            body = sim_instruments.deribit(names, factor(names), closed)
        elif venue.startswith("binance"):
            names = orjson.loads(q["symbols"]) if "symbols" in q else known
            body = sim_instruments.binance(venue, names, factor(names))
        elif venue == "okx":
            kind = q.get("instType", "")
            names = [s for s in known if {"SPOT": s.count("-") == 1, "SWAP": s.endswith("-SWAP")}.get(kind, False)]
            body = sim_instruments.okx(names, factor(names))
        elif venue.startswith("bybit"):
            names = [q["symbol"]] if "symbol" in q else known
            body = sim_instruments.bybit(venue.split("-", 1)[1], names, factor(names))
        else:
            names = q.getall("product_ids", known)
            body = sim_instruments.coinbase(names, factor(names))
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def truth(self, request: web.Request) -> web.Response:
        inst = self.instruments.get((request.match_info["venue"], request.match_info["symbol"]))
        if inst is None:
            return web.json_response({"error": "unknown instrument"}, status=404)
        return web.Response(body=orjson.dumps({"entries": list(inst.truth)}), content_type="application/json")

    async def post_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            self.fault(body["venue"], body["symbol"], body["fault"], float(body.get("seconds", 5)))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def post_move(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            coin, pct, seconds = body["coin"], body["pct"], body["seconds"]
            if not isinstance(coin, str):
                raise ValueError(f"coin must be a string, not {coin!r}")
            for name, value in (("pct", pct), ("seconds", seconds)):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number, not {value!r}")
            self.move(coin, float(pct), float(seconds))
        except KeyError as exc:
            return web.json_response({"error": f"missing {exc}"}, status=400)
        except (ValueError, TypeError) as exc:  # also a body that is no JSON object
            return web.json_response({"error": str(exc).splitlines()[0] if str(exc) else "bad request"}, status=400)
        return web.json_response({"ok": True})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({
            "instruments": [{"venue": i.venue, "symbol": i.symbol, "seq": i.seq, "subscribers": len(i.subscribers)}
                            for i in self.instruments.values()],
            "connections": len(self.conns), **self.counters,
            "forwards": {coin: self.forwards.peek(coin) for coin in self.forwards.coins()},
        })

    def app(self) -> web.Application:
        app = web.Application()
        for path in ("/ws/deribit", "/ws/binance/stream", "/ws/binance-usdm/public/stream", "/ws/binance-usdm/stream",
                     "/ws/binance-coinm/stream", "/ws/okx/ws/v5/public", "/ws/coinbase"):
            app.router.add_get(path, self.websocket)
        app.router.add_get("/ws/bybit/v5/public/{category}", self.websocket)
        app.router.add_get("/rest/binance/api/v3/depth", self.depth)
        app.router.add_get("/rest/binance-usdm/fapi/v1/depth", self.depth)
        app.router.add_get("/rest/binance-coinm/dapi/v1/depth", self.depth)
        app.router.add_get("/rest/deribit/api/v2/public/get_instruments", self.instrument_list)
        for venue, path in (("binance", "/api/v3"), ("binance-usdm", "/fapi/v1"), ("binance-coinm", "/dapi/v1")):
            app.router.add_get(f"/rest/{venue}{path}/exchangeInfo", self.instrument_list)
        app.router.add_get("/rest/okx/api/v5/public/instruments", self.instrument_list)
        app.router.add_get("/rest/bybit-{category}/v5/market/instruments-info", self.instrument_list)
        app.router.add_get("/rest/coinbase/api/v3/brokerage/market/products", self.instrument_list)
        app.router.add_get("/control/truth/{venue}/{symbol}", self.truth)
        app.router.add_post("/control/fault", self.post_fault)
        app.router.add_post("/control/move", self.post_move)
        app.router.add_get("/control/status", self.status)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, _app: web.Application) -> None:
        for task in self.moves.values():
            task.cancel()
        for inst in self.instruments.values():
            if inst.driver is not None:
                inst.driver.cancel()
        for conn in list(self.conns):
            with contextlib.suppress(Exception):
                await conn.ws.close()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("move failed", exc_info=task.exception())


def _moved_coin(symbol: str, coins: dict[str, float]) -> str | None:
    """The coin among ``coins`` whose moves shift ``symbol``'s book (the longest prefix), or None:
    options (three or more dashes, or any option name) follow the forward instead."""
    if symbol.count("-") >= 3 or parse_option(symbol) is not None:
        return None
    upper = symbol.upper()
    return max((c for c in coins if upper.startswith(c)), key=len, default=None)


def _family(venue: str) -> str:
    return venue.split("-")[0] if venue.startswith(("binance", "bybit")) else venue


# -- per-venue message formats ------------------------------------------------------
def _deribit_book(inst: Instrument, kind: str, bids: list[Any], asks: list[Any], change_id: int,
                  prev: int | None) -> str:
    data: dict[str, Any] = {"type": kind, "timestamp": _ms(), "instrument_name": inst.symbol, "change_id": change_id,
                            "bids": bids, "asks": asks}
    if prev is not None:
        data["prev_change_id"] = prev
    params = {"channel": f"book.{inst.symbol}.100ms", "data": data}
    return orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": params}).decode()


def _deribit_update(inst: Instrument, changes: list[Change], first: int, prev: int) -> str:
    def side(s: str) -> list[list[Any]]:
        return [["delete" if z == "0" else "change", float(p), float(z)] for c, p, z in changes if c == s]
    return _deribit_book(inst, "change", side("b"), side("a"), inst.seq, prev)


def _deribit_snapshot(inst: Instrument) -> str:
    bids, asks = inst.book.levels()
    return _deribit_book(inst, "snapshot", [["new", float(p), float(s)] for p, s in bids],
                         [["new", float(p), float(s)] for p, s in asks], inst.seq, None)


def _binance_update(inst: Instrument, changes: list[Change], first: int, prev: int) -> str:
    data: dict[str, Any] = {"e": "depthUpdate", "E": _ms(), "s": inst.symbol, "U": first, "u": inst.seq,
                            "b": [[p, z] for c, p, z in changes if c == "b"],
                            "a": [[p, z] for c, p, z in changes if c == "a"]}
    if inst.venue != "binance":
        data["T"] = data["E"]
        data["pu"] = prev
    return orjson.dumps({"stream": f"{inst.symbol.lower()}@depth@100ms", "data": data}).decode()


def _okx_message(inst: Instrument, action: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]],
                 seq: int, prev: int) -> str:
    item = {"asks": [[p, s, "0", "1"] for p, s in asks], "bids": [[p, s, "0", "1"] for p, s in bids],
            "ts": str(_ms()), "checksum": okx_checksum(*inst.book.levels(25)), "seqId": seq, "prevSeqId": prev}
    return orjson.dumps({"arg": {"channel": "books", "instId": inst.symbol}, "action": action, "data": [item]}).decode()


def _okx_update(inst: Instrument, changes: list[Change], first: int, prev: int) -> str:
    return _okx_message(inst, "update", [(p, z) for c, p, z in changes if c == "b"],
                        [(p, z) for c, p, z in changes if c == "a"], inst.seq, prev)


def _okx_snapshot(inst: Instrument) -> str:
    return _okx_message(inst, "snapshot", *inst.book.levels(), inst.seq, -1)


def _bybit_message(inst: Instrument, bids: list[tuple[str, str]], asks: list[tuple[str, str]], kind: str) -> str:
    now = _ms()
    return orjson.dumps({"topic": f"orderbook.200.{inst.symbol}", "type": kind, "ts": now,
                         "data": {"s": inst.symbol, "b": [list(x) for x in bids], "a": [list(x) for x in asks],
                                  "u": inst.seq, "seq": inst.seq * 7}, "cts": now}).decode()


def _bybit_update(inst: Instrument, changes: list[Change], first: int, prev: int) -> str:
    return _bybit_message(inst, [(p, z) for c, p, z in changes if c == "b"],
                          [(p, z) for c, p, z in changes if c == "a"], "delta")


def _coinbase_event(inst: Instrument, kind: str, seq: int, bids: list[tuple[str, str]],
                    asks: list[tuple[str, str]]) -> str:
    now = _iso()
    updates = [{"side": "bid", "event_time": now, "price_level": p, "new_quantity": q} for p, q in bids]
    updates += [{"side": "offer", "event_time": now, "price_level": p, "new_quantity": q} for p, q in asks]
    return orjson.dumps({"channel": "l2_data", "client_id": "", "timestamp": now, "sequence_num": seq,
                         "events": [{"type": kind, "product_id": inst.symbol, "updates": updates}]}).decode()


def _coinbase_update(inst: Instrument, changes: list[Change], seq: int) -> str:
    return _coinbase_event(inst, "update", seq, [(p, z) for c, p, z in changes if c == "b"],
                           [(p, z) for c, p, z in changes if c == "a"])


FORMATTERS: dict[str, Callable[..., str]] = {
    "deribit": _deribit_update, "binance": _binance_update, "okx": _okx_update, "bybit": _bybit_update,
    "coinbase": _coinbase_update,
}


# -- per-venue request handlers -----------------------------------------------------
def _deribit(sim: Simulator, conn: Conn, text: str) -> None:
    msg = orjson.loads(text)
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if method == "public/auth":
        conn.authed = True
        conn.send(orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": {"access_token": "sim-token",
                                                                       "expires_in": 900}}).decode())
    elif method == "public/set_heartbeat":
        conn.heartbeats = True
        conn.send(orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": "ok"}).decode())
    elif method == "public/test":
        conn.send(orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": {"version": "sim"}}).decode())
    elif method in ("public/subscribe", "private/subscribe", "public/unsubscribe", "private/unsubscribe"):
        channels = params.get("channels", [])
        if any(c.endswith(".raw") for c in channels) and not conn.authed:
            error = {"code": 13778, "message": "raw_subscriptions_not_available_for_unauthorized"}
            conn.send(orjson.dumps({"jsonrpc": "2.0", "id": rid, "error": error}).decode())
            return
        conn.send(orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": channels}).decode())
        for channel in channels:
            parts = channel.split(".")
            if parts[0] == "book" and len(parts) == 3:
                if method.endswith("unsubscribe"):
                    sim.unsubscribe(conn, parts[1])
                else:
                    sim.subscribe(conn, parts[1], _deribit_snapshot)
            elif parts[:2] == ["instrument", "state"] and len(parts) == 4:
                (conn.state_channels.discard if method.endswith("unsubscribe") else conn.state_channels.add)(parts[3])
            elif parts[0] in ("trades", "ticker") and len(parts) == 3:
                sim.watch(conn, parts[1], channel, not method.endswith("unsubscribe"))


def _binance(sim: Simulator, conn: Conn, text: str) -> None:
    msg = orjson.loads(text)
    method, params = msg.get("method"), msg.get("params") or []
    conn.send(orjson.dumps({"result": None, "id": msg.get("id")}).decode())
    for stream in params:
        symbol = stream.split("@")[0].upper()
        if "@depth" not in stream:
            if stream.split("@")[1] in ("trade", "markPrice", "bookTicker"):
                sim.watch(conn, symbol, stream, method == "SUBSCRIBE")
        elif method == "SUBSCRIBE":
            sim.subscribe(conn, symbol, None)  # Binance sends no snapshot: the client GETs it
        elif method == "UNSUBSCRIBE":
            sim.unsubscribe(conn, symbol)


def _okx(sim: Simulator, conn: Conn, text: str) -> None:
    if text == "ping":
        conn.send("pong")
        return
    msg = orjson.loads(text)
    op = msg.get("op")
    if op == "login":
        conn.authed = True
        conn.send(orjson.dumps({"event": "login", "code": "0", "msg": "", "connId": f"sim{conn.number}"}).decode())
        return
    for arg in msg.get("args", []):
        conn.send(orjson.dumps({"event": op, "arg": arg, "connId": f"sim{conn.number}"}).decode())
        if arg.get("channel") in ("books", "books-l2-tbt", "books50-l2-tbt"):
            if op == "subscribe":
                sim.subscribe(conn, arg["instId"], _okx_snapshot)
            elif op == "unsubscribe":
                sim.unsubscribe(conn, arg["instId"])
        elif arg.get("channel") == "instruments":
            conn.instrument_channel = op == "subscribe"
        elif arg.get("channel") in ("trades", "tickers") and op in ("subscribe", "unsubscribe"):
            sim.watch(conn, arg["instId"], arg["channel"], op == "subscribe")


def _bybit(sim: Simulator, conn: Conn, text: str) -> None:
    msg = orjson.loads(text)
    op = msg.get("op")
    ack = {"success": True, "ret_msg": "pong" if op == "ping" else "", "conn_id": f"sim{conn.number}", "op": op}
    if op != "ping":
        ack["req_id"] = msg.get("req_id", "")
    conn.send(orjson.dumps(ack).decode())
    if op == "ping":
        return
    for topic in msg.get("args", []):
        if conn.venue == "bybit-option" and topic.startswith("publicTrade.") and "-" not in topic:
            coins = conn.coin_trades  # option trades: one topic per base coin
            (coins.add if op == "subscribe" else coins.discard)(topic.split(".", 1)[1])
            continue
        if topic.startswith(("publicTrade.", "tickers.")) and op in ("subscribe", "unsubscribe"):
            sim.watch(conn, topic.split(".", 1)[1], topic, op == "subscribe")
            continue
        if not topic.startswith("orderbook."):
            continue
        symbol = topic.rsplit(".", 1)[1]
        if op == "subscribe":
            sim.subscribe(conn, symbol, lambda inst: _bybit_message(inst, *inst.book.levels(), "snapshot"))
        elif op == "unsubscribe":
            sim.unsubscribe(conn, symbol)


def _coinbase(sim: Simulator, conn: Conn, text: str) -> None:
    msg = orjson.loads(text)
    kind, channel, products = msg.get("type"), msg.get("channel"), msg.get("product_ids", [])
    if channel == "heartbeats":
        conn.heartbeats = kind == "subscribe"
    conn.send(orjson.dumps({"channel": "subscriptions", "timestamp": _iso(), "sequence_num": conn.next_seq(),
                            "events": [{"subscriptions": {channel: products}}]}).decode())
    if channel in ("market_trades", "ticker"):
        for product in products:
            sim.watch(conn, product, channel, kind == "subscribe")
        return
    if channel != "level2":
        return
    def snapshot(inst: Instrument) -> str:
        seq = conn.next_seq()
        sim._record_truth(inst, seq, conn.number)
        return _coinbase_event(inst, "snapshot", seq, *inst.book.levels())

    for product in products:
        if kind == "subscribe":
            sim.subscribe(conn, product, snapshot)
        else:
            sim.unsubscribe(conn, product)


HANDLERS: dict[str, Callable[[Simulator, Conn, str], None]] = {
    "deribit": _deribit, "binance": _binance, "okx": _okx, "bybit": _bybit, "coinbase": _coinbase,
}


async def serve(host: str, port: int, rate: float, seed: int = 0) -> None:
    """Run the simulator until cancelled."""
    sim = Simulator(rate=rate, seed=seed)
    runner = web.AppRunner(sim.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("venue simulator on http://%s:%d (rate %.1f updates/s per instrument)", host, port, rate)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
