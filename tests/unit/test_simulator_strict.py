"""The simulator's venue limits, refusals and the "ignore" / "refuse" faults, over real sockets:
the simulator runs in-process on a free port and is spoken to with websockets and aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.simulator.limits import SimLimits
from app.simulator.server import Simulator

Frame = Any


class Server:
    def __init__(self, sim: Simulator, port: int, http: aiohttp.ClientSession) -> None:
        self.sim, self.port, self.http = sim, port, http

    def ws(self, path: str) -> Any:
        return connect(f"ws://127.0.0.1:{self.port}{path}")

    async def get(self, path: str, **query: Any) -> tuple[int, Any, Any]:
        async with self.http.get(f"http://127.0.0.1:{self.port}{path}", params=query) as resp:
            return resp.status, resp.headers, await resp.json(content_type=None)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(f"http://127.0.0.1:{self.port}{path}", data=orjson.dumps(body)) as resp:
            return resp.status, await resp.json()

    async def limits(self, **changes: Any) -> None:
        assert (await self.post("/control/limits", changes))[0] == 200

    async def fault(self, venue: str, symbol: str, fault: str, seconds: float = 5.0) -> None:
        body = {"venue": venue, "symbol": symbol, "fault": fault, "seconds": seconds}
        assert await self.post("/control/fault", body) == (200, {"ok": True})

    async def counters(self) -> dict[str, Any]:
        return (await self.get("/control/status"))[2]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    sim = Simulator(rate=10.0, seed=1)
    runner = web.AppRunner(sim.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    async with aiohttp.ClientSession() as http:
        yield Server(sim, runner.addresses[0][1], http)
    await runner.cleanup()


async def send(ws: ClientConnection, msg: Any) -> None:
    await ws.send(orjson.dumps(msg).decode())


async def recv(ws: ClientConnection, wait: float = 3.0) -> Frame:
    return orjson.loads(await asyncio.wait_for(ws.recv(), wait))


async def until(ws: ClientConnection, pred: Callable[[Frame], bool], wait: float = 3.0) -> tuple[Frame, list[Frame]]:
    """The first frame ``pred`` accepts (within ``wait`` seconds), and the frames before it."""
    seen: list[Frame] = []

    async def read() -> Frame:
        while not pred(frame := await recv(ws, wait)):
            seen.append(frame)
        return frame

    return await asyncio.wait_for(read(), wait), seen


async def closed(ws: ClientConnection) -> ConnectionClosed:
    """How the simulator closed ``ws`` (within 3 s), after whatever it sent before."""
    async def read_all() -> None:
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(read_all(), 3.0)
    return info.value


def stream_of(frame: Frame) -> str:
    return frame.get("stream", "") if isinstance(frame, dict) else ""


# -- limits over HTTP ---------------------------------------------------------------
async def test_limits_route_reads_and_validates(server: Server) -> None:
    status, _, body = await server.get("/control/limits")
    assert (status, body) == (200, SimLimits().as_dict())
    assert body["binance_futures_streams"] == 200
    assert body["okx_ops_per_hour"] == 480
    for bad in ({"nonsense": 1}, {"okx_ops_per_hour": 0}, {"okx_ops_per_hour": 2.5}, {"okx_ops_per_hour": "3"},
                {"binance_ban_s": True}, {"binance_ban_s": -1}, [1], {"bybit_spot_args": 3, "nope": 1}):
        status, body = await server.post("/control/limits", bad)
        assert status == 400, bad
        assert body["error"]
    assert server.sim.limits.bybit_spot_args == 10  # all or nothing
    status, body = await server.post("/control/limits", {"bybit_spot_args": 3, "deribit_sub_per_s": 0.5})
    assert status == 200
    assert (body["bybit_spot_args"], body["deribit_sub_per_s"]) == (3, 0.5)
    assert server.sim.limits.bybit_spot_args == 3


# -- Binance ------------------------------------------------------------------------
async def test_binance_sixth_message_in_a_second_closes_1008(server: Server) -> None:
    async with server.ws("/ws/binance/stream") as ws:
        for i in range(6):
            await send(ws, {"method": "SUBSCRIBE", "params": [], "id": i})
        assert [await recv(ws) for _ in range(5)] == [{"result": None, "id": i} for i in range(5)]
        close = await closed(ws)
    assert close.rcvd is not None
    assert (close.rcvd.code, close.rcvd.reason) == (1008, "Too many requests")
    assert (await server.counters())["closed_rate"] == 1


async def test_binance_futures_stream_limit(server: Server) -> None:
    quiet = [f"sym{i}usd_perp@aggTrade" for i in range(199)]  # acknowledged streams the simulator never fills
    async with server.ws("/ws/binance-coinm/stream") as ws:
        await send(ws, {"method": "SUBSCRIBE", "params": [*quiet, "btcusd_perp@depth@100ms", "x@aggTrade"], "id": 1})
        assert await recv(ws) == {"error": {"code": -1, "msg": "too many streams"}, "id": 1}
        assert not server.sim.instruments  # nothing of it subscribed
        await send(ws, {"method": "SUBSCRIBE", "params": [*quiet, "btcusd_perp@depth@100ms"], "id": 2})
        assert await recv(ws) == {"result": None, "id": 2}
        await until(ws, lambda f: stream_of(f) == "btcusd_perp@depth@100ms")
        await send(ws, {"method": "SUBSCRIBE", "params": ["ethusd_perp@depth@100ms"], "id": 3})  # the 201st
        await until(ws, lambda f: f == {"error": {"code": -1, "msg": "too many streams"}, "id": 3})
        await send(ws, {"method": "SUBSCRIBE", "params": quiet[:5], "id": 4})  # already held: no more streams
        await until(ws, lambda f: f == {"result": None, "id": 4})
    assert ("binance-coinm", "ETHUSD_PERP") not in server.sim.instruments
    counters = await server.counters()
    assert (counters["refused_args"], counters["subscriptions_confirmed"]) == (2, 205)


async def test_binance_spot_takes_more_than_200_streams(server: Server) -> None:
    async with server.ws("/ws/binance/stream") as ws:
        await send(ws, {"method": "SUBSCRIBE", "params": [f"s{i}usdt@aggTrade" for i in range(1024)], "id": 1})
        assert await recv(ws) == {"result": None, "id": 1}
        await send(ws, {"method": "SUBSCRIBE", "params": ["one@aggTrade"], "id": 2})
        assert await recv(ws) == {"error": {"code": -1, "msg": "too many streams"}, "id": 2}


async def test_usdm_streams_split_by_path(server: Server) -> None:
    streams = ["btcusdt@markPrice@1s", "btcusdt@depth@100ms"]
    async with server.ws("/ws/binance-usdm/public/stream") as public, \
            server.ws("/ws/binance-usdm/market/stream") as market:
        for ws in (public, market):
            await send(ws, {"method": "SUBSCRIBE", "params": streams, "id": 1})
            assert await recv(ws) == {"result": None, "id": 1}  # acknowledged on both paths
        on_public: list[Frame] = []

        async def read_public() -> None:
            while True:
                on_public.append(await recv(public, 10))

        reader = asyncio.get_running_loop().create_task(read_public())
        for _ in range(3):  # marks flow on /market (depth does not) ...
            _, before = await until(market, lambda f: stream_of(f) == "btcusdt@markPrice@1s")
            assert not any("depth" in stream_of(f) for f in before)
        reader.cancel()
        streams_on_public = {stream_of(f) for f in on_public}  # ... never on /public, which has the depth
        assert streams_on_public == {"btcusdt@depth@100ms"}, streams_on_public
    assert (await server.counters())["refused_path"] == 2
    with pytest.raises(InvalidStatus) as info:  # the legacy path is gone
        async with server.ws("/ws/binance-usdm/stream"):
            pass
    assert info.value.response.status_code == 404


async def test_binance_rest_weight_429_then_418(server: Server) -> None:
    now = [6_000_000.0 + 10]  # 10 s into a calendar minute
    server.sim.wall = lambda: now[0]
    await server.limits(binance_futures_weight_per_min=25)

    async def get(venue: str, path: str, **query: Any) -> tuple[int, Any, Any]:
        return await server.get(f"/rest/{venue}{path}", **query)

    status, headers, body = await get("binance-usdm", "/fapi/v1/depth", symbol="BTCUSDT", limit=1000)
    assert (status, headers["X-MBX-USED-WEIGHT-1M"]) == (200, "20")
    assert body["lastUpdateId"] > 0
    status, headers, _ = await get("binance-coinm", "/dapi/v1/depth", symbol="BTCUSD_PERP", limit=60)  # as 100: 5
    assert (status, headers["X-MBX-USED-WEIGHT-1M"]) == (200, "25")  # usdm and coinm share the budget
    status, headers, body = await get("binance-usdm", "/fapi/v1/exchangeInfo")
    assert (status, headers["Retry-After"], headers["X-MBX-USED-WEIGHT-1M"]) == (429, "50", "25")
    assert body["code"] == -1003
    assert body["msg"].startswith("Too many requests; ")
    status, headers, _ = await get("binance", "/api/v3/depth", symbol="BTCUSDT", limit=5000)
    assert (status, headers["X-MBX-USED-WEIGHT-1M"]) == (200, "250")  # spot: its own budget
    status, headers, body = await get("binance-usdm", "/fapi/v1/depth", symbol="BTCUSDT", limit=5)
    assert (status, headers["Retry-After"]) == (418, "120")  # the Retry-After was not honoured
    assert body == {"code": -1003, "msg": f"Way too many requests; IP banned until {6_000_130_000}."}
    status, headers, _ = await get("binance-coinm", "/dapi/v1/exchangeInfo")
    assert (status, headers["Retry-After"]) == (418, "240")  # each request while banned doubles it
    now[0] += 60  # a new minute, still banned
    status, headers, _ = await get("binance-usdm", "/fapi/v1/depth", symbol="BTCUSDT", limit=5)
    assert (status, headers["Retry-After"], headers["X-MBX-USED-WEIGHT-1M"]) == (418, "480", "0")
    now[0] += 481
    status, headers, _ = await get("binance-usdm", "/fapi/v1/depth", symbol="BTCUSDT", limit=500)
    assert (status, headers["X-MBX-USED-WEIGHT-1M"]) == (200, "10")
    for venue, path, limit in (("binance-usdm", "/fapi/v1/depth", 1001), ("binance", "/api/v3/depth", 5001),
                               ("binance", "/api/v3/depth", 0), ("binance", "/api/v3/depth", "x")):
        status, _, body = await get(venue, path, symbol="BTCUSDT", limit=limit)
        assert (status, body["code"]) == (400, -1100), (venue, limit)
    counters = await server.counters()
    assert (counters["rest_429"], counters["rest_418"]) == (1, 3)


async def test_binance_refused_symbol_acked_and_silent(server: Server) -> None:
    await server.fault("binance", "BTCUSDT", "refuse")
    status, _, body = await server.get("/rest/binance/api/v3/depth", symbol="BTCUSDT", limit=100)
    assert (status, body) == (400, {"code": -1121, "msg": "Invalid symbol."})
    async with server.ws("/ws/binance/stream") as ws:
        await send(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms", "ethusdt@depth@100ms"], "id": 1})
        assert await recv(ws) == {"result": None, "id": 1}
        for _ in range(3):
            _, before = await until(ws, lambda f: stream_of(f) == "ethusdt@depth@100ms")
            assert not before
    assert not server.sim.instruments[("binance", "BTCUSDT")].subscribers


# -- Bybit --------------------------------------------------------------------------
async def test_bybit_spot_args_limit(server: Server) -> None:
    topics = [f"orderbook.50.S{i}USDT" for i in range(11)]
    async with server.ws("/ws/bybit/v5/public/spot") as ws:
        await send(ws, {"op": "subscribe", "args": topics, "req_id": "r1"})
        assert await recv(ws) == {"success": False, "ret_msg": "args size >10", "conn_id": "sim1", "op": "subscribe",
                                  "req_id": "r1"}
        assert not server.sim.instruments
        await send(ws, {"op": "subscribe", "args": topics[:10], "req_id": "r2"})
        ack = await recv(ws)
        assert (ack["success"], ack["req_id"]) == (True, "r2")
        await until(ws, lambda f: f.get("type") == "snapshot")
    async with server.ws("/ws/bybit/v5/public/linear") as ws:  # no such limit on linear
        await send(ws, {"op": "subscribe", "args": [f"tickers.L{i}USDT" for i in range(11)], "req_id": "r3"})
        assert (await recv(ws))["success"] is True
    assert (await server.counters())["refused_args"] == 1


async def test_bybit_refused_symbol_refuses_the_request(server: Server) -> None:
    await server.fault("bybit-linear", "BTCUSDT", "refuse", seconds=0.3)
    topics = ["orderbook.200.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.200.ETHUSDT"]
    async with server.ws("/ws/bybit/v5/public/linear") as ws:
        await send(ws, {"op": "subscribe", "args": topics, "req_id": "a"})
        assert await recv(ws) == {"success": False, "conn_id": "sim1", "op": "subscribe", "req_id": "a",
                                  "ret_msg": "Invalid symbol :[orderbook.200.BTCUSDT,publicTrade.BTCUSDT]"}
        assert ("bybit-linear", "ETHUSDT") not in server.sim.instruments
        listed_again = server.sim.instruments[("bybit-linear", "BTCUSDT")].until["refuse"]
        await asyncio.sleep(listed_again - time.monotonic() + 0.01)
        await send(ws, {"op": "subscribe", "args": topics[:1], "req_id": "b"})  # listed again
        assert (await recv(ws))["success"] is True
        await until(ws, lambda f: f.get("topic") == "orderbook.200.BTCUSDT")
    assert (await server.counters())["refused_symbol"] == 2


# -- OKX ----------------------------------------------------------------------------
async def test_okx_fourth_connection_in_a_second_refused(server: Server) -> None:
    async with server.ws("/ws/okx/ws/v5/public"), server.ws("/ws/okx/ws/v5/public"), \
            server.ws("/ws/okx/ws/v5/public"):
        with pytest.raises(InvalidStatus) as info:
            async with server.ws("/ws/okx/ws/v5/public"):
                pass
    assert info.value.response.status_code == 429
    counters = await server.counters()
    assert (counters["refused_rate"], counters["connections"]) == (1, 3)


async def test_okx_ops_per_hour_then_close(server: Server) -> None:
    await server.limits(okx_ops_per_hour=3)
    arg = {"channel": "tickers", "instId": "BTC-USDT"}
    async with server.ws("/ws/okx/ws/v5/public") as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 3) == "pong"  # pings are no operations
        for i in range(3):
            await send(ws, {"id": str(i), "op": "unsubscribe" if i else "subscribe", "args": [arg]})
            await until(ws, lambda f, i=i: f.get("event") in ("subscribe", "unsubscribe") and f.get("id") == str(i))
        await send(ws, {"id": "x", "op": "subscribe", "args": [arg]})
        error, _ = await until(ws, lambda f: f.get("event") == "error")
        assert error == {"id": "x", "event": "error", "code": "60014", "msg": "Requests too frequent.",
                         "connId": "sim1"}
        await closed(ws)
    assert (await server.counters())["closed_rate"] == 1


async def test_okx_refused_arg_id_echo_and_checksum_zero(server: Server) -> None:
    await server.fault("okx", "BTC-USDT", "refuse")
    btc, eth = {"channel": "books", "instId": "BTC-USDT"}, {"channel": "books", "instId": "ETH-USDT"}
    async with server.ws("/ws/okx/ws/v5/public") as ws:
        await send(ws, {"id": "7", "op": "subscribe", "args": [btc, eth]})
        assert await recv(ws) == {"id": "7", "event": "error", "code": "60018",
                                  "msg": "Wrong URL or channel:books,instId:BTC-USDT doesn't exist", "connId": "sim1"}
        assert await recv(ws) == {"id": "7", "event": "subscribe", "arg": eth, "connId": "sim1"}
        snapshot = await recv(ws)
        assert (snapshot["action"], snapshot["arg"]) == ("snapshot", eth)
        assert snapshot["data"][0]["checksum"] == 0
        for _ in range(3):
            update, _ = await until(ws, lambda f: f.get("action") == "update")
            assert update["arg"] == eth
            assert update["data"][0]["checksum"] == 0
        await send(ws, {"op": "subscribe", "args": [{"channel": "trades", "instId": "ETH-USDT"}]})  # no id: none
        assert (await until(ws, lambda f: f.get("event") == "subscribe"))[0] == {
            "event": "subscribe", "arg": {"channel": "trades", "instId": "ETH-USDT"}, "connId": "sim1"}
    assert not server.sim.instruments[("okx", "BTC-USDT")].subscribers
    assert (await server.counters())["refused_symbol"] == 1


async def test_okx_login(server: Server) -> None:
    tbt = {"channel": "books-l2-tbt", "instId": "BTC-USDT"}
    creds = {"passphrase": "p", "timestamp": "1", "sign": "s"}
    async with server.ws("/ws/okx/ws/v5/public") as ws:
        await send(ws, {"op": "login", "args": [{"apiKey": "bad", **creds}]})
        assert await recv(ws) == {"event": "error", "code": "60009", "msg": "Login failed.", "connId": "sim1"}
        await send(ws, {"id": "2", "op": "subscribe", "args": [tbt]})
        assert await recv(ws) == {"id": "2", "event": "error", "code": "60011", "msg": "Please log in",
                                  "connId": "sim1"}
        await send(ws, {"id": "3", "op": "login", "args": [{"apiKey": "good", **creds}]})
        assert await recv(ws) == {"id": "3", "event": "login", "code": "0", "msg": "", "connId": "sim1"}
        await send(ws, {"id": "4", "op": "subscribe", "args": [tbt]})
        assert await recv(ws) == {"id": "4", "event": "subscribe", "arg": tbt, "connId": "sim1"}
        assert (await recv(ws))["action"] == "snapshot"
    assert (await server.counters())["refused_auth"] == 2


# -- Deribit ------------------------------------------------------------------------
def rpc(rid: int, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


async def test_deribit_subscribe_credit_then_close(server: Server) -> None:
    await server.limits(deribit_sub_per_s=0.01)  # the burst of 10, hardly refilled
    async with server.ws("/ws/deribit") as ws:
        for i in range(11):
            await send(ws, rpc(i, "public/subscribe", channels=["instrument.state.any.BTC"]))
        for i in range(10):
            assert await recv(ws) == {"jsonrpc": "2.0", "id": i, "result": ["instrument.state.any.BTC"]}
        assert await recv(ws) == {"jsonrpc": "2.0", "id": 10, "error": {"code": 10028, "message": "too_many_requests"}}
        await closed(ws)
    async with server.ws("/ws/deribit") as ws:  # the quota is the IP's, not the connection's
        await send(ws, rpc(1, "public/test"))
        assert (await recv(ws))["result"] == {"version": "sim"}
        await send(ws, rpc(2, "public/unsubscribe", channels=["instrument.state.any.BTC"]))
        assert (await recv(ws))["error"]["code"] == 10028
        await closed(ws)
    assert (await server.counters())["closed_rate"] == 2


async def test_deribit_refused_channel_left_out_and_bad_auth(server: Server) -> None:
    await server.fault("deribit", "BTC-PERPETUAL", "refuse")
    channels = ["book.BTC-PERPETUAL.100ms", "book.ETH-PERPETUAL.100ms", "ticker.BTC-PERPETUAL.100ms"]
    async with server.ws("/ws/deribit") as ws:
        await send(ws, rpc(1, "public/subscribe", channels=channels))
        assert await recv(ws) == {"jsonrpc": "2.0", "id": 1, "result": ["book.ETH-PERPETUAL.100ms"]}
        assert (await recv(ws))["params"]["data"]["instrument_name"] == "ETH-PERPETUAL"
        await send(ws, rpc(2, "public/auth", grant_type="client_credentials", client_id="bad", client_secret="x"))
        await send(ws, rpc(3, "public/subscribe", channels=["book.ETH-PERPETUAL.raw"]))
        assert (await until(ws, lambda f: f.get("id") == 2))[0] == {
            "jsonrpc": "2.0", "id": 2, "error": {"code": 13004, "message": "invalid_credentials"}}
        assert (await until(ws, lambda f: f.get("id") == 3))[0]["error"]["code"] == 13778  # still unauthenticated
    inst = server.sim.instruments[("deribit", "BTC-PERPETUAL")]
    assert not inst.subscribers
    assert not inst.watchers
    counters = await server.counters()
    assert (counters["refused_symbol"], counters["refused_auth"]) == (2, 2)


async def read_for(ws: ClientConnection, seconds: float) -> list[tuple[float, Frame]]:
    """Every frame of ``seconds`` with its receive time."""
    out: list[tuple[float, Frame]] = []
    end = time.monotonic() + seconds
    with contextlib.suppress(TimeoutError):
        while (left := end - time.monotonic()) > 0:
            out.append((time.monotonic(), await recv(ws, left)))
    return out


def top_of(bids: dict[float, float], asks: dict[float, float]) -> tuple[float, float, float, float]:
    bid, ask = max(bids), min(asks)
    return bid, bids[bid], ask, asks[ask]


async def test_deribit_100ms_channels_send_an_interval_at_most_once(server: Server) -> None:
    """A symbol stepping at 200/s: its book.100ms, ticker.100ms and trades.100ms each get at most
    one notification per 100 ms (the interval's changes grouped, the change_id chain contiguous,
    every grouped book equal to the truth at its change_id), while book.raw gets every change."""
    symbol, seconds = "BTC-PERPETUAL", 1.5
    status, body = await server.post("/control/instruments", {"venue": "deribit", "symbols": [symbol], "rate": 200})
    assert (status, body) == (200, {"ok": True, "instruments": 1})
    assert (await server.post("/control/instruments", {"venue": "deribit", "symbols": [symbol], "rate": 0}))[0] == 400
    channels = [f"{kind}.{symbol}.100ms" for kind in ("book", "ticker", "trades")]
    async with server.ws("/ws/deribit") as ws, server.ws("/ws/deribit") as raw:
        await send(raw, rpc(1, "public/auth", grant_type="client_credentials", client_id="k", client_secret="s"))
        await send(raw, rpc(2, "public/subscribe", channels=[f"book.{symbol}.raw"]))
        await send(ws, rpc(1, "public/subscribe", channels=channels))
        assert (await until(ws, lambda f: f.get("id") == 1))[0]["result"] == channels
        frames, raw_frames = await asyncio.gather(read_for(ws, seconds), read_for(raw, seconds))
    by_channel: dict[str, list[tuple[float, Frame]]] = {}
    for at, frame in frames:
        by_channel.setdefault(frame["params"]["channel"], []).append((at, frame["params"]["data"]))
    assert set(by_channel) == set(channels)
    for channel, notes in by_channel.items():
        assert len(notes) <= seconds / 0.1 + 1, f"{channel}: {len(notes)} notifications in {seconds} s"
    for channel in channels[:2]:  # the venue's time of each: never two within 100 ms
        stamps = [data["timestamp"] for _, data in by_channel[channel]]
        assert min(b - a for a, b in zip(stamps, stamps[1:], strict=False)) >= 99, (channel, stamps)
    trades = [t for _, data in by_channel[channels[2]] for t in data]
    assert [t["trade_seq"] for t in trades] == list(range(trades[0]["trade_seq"], trades[-1]["trade_seq"] + 1))
    assert max(len(data) for _, data in by_channel[channels[2]]) > 1  # an interval's trades in one list
    truth = {entry[0]: tuple(float(x) for x in entry[1:5]) for entry in server.sim.instruments[("deribit",
                                                                                              symbol)].truth}
    books = [data for _, data in by_channel[channels[0]]]
    assert books[0]["type"] == "snapshot"
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    last = None
    for data in books:
        if data["type"] == "change":
            assert data["prev_change_id"] == last, "the grouped notifications' chain has a hole"
        for side, levels in ((bids, data["bids"]), (asks, data["asks"])):
            for action, price, size in levels:
                if action == "delete":
                    side.pop(price, None)
                else:
                    side[price] = size
        last = data["change_id"]
        assert top_of(bids, asks) == truth[last]
    raw_books = [f["params"]["data"] for _, f in raw_frames if f.get("method") == "subscription"]
    assert len(raw_books) > 2 * len(books)  # raw: every change as it happens
    assert all(b["prev_change_id"] == a["change_id"] for a, b in zip(raw_books, raw_books[1:], strict=False))


async def test_control_instruments_lists_them(server: Server) -> None:
    names = ["BTC-25DEC26-70000-C", "ETH-25DEC26-2000-P"]
    assert (await server.post("/control/instruments", {"venue": "deribit", "symbols": names}))[0] == 200
    assert server.sim.instruments[("deribit", names[0])].rate is None  # the simulator's rate
    for name in names:
        _, _, body = await server.get("/rest/deribit/api/v2/public/get_instruments", currency=name[:3])
        assert name in [i["instrument_name"] for i in body["result"]]
    for bad in ({"venue": "deribit"}, {"venue": "deribit", "symbols": "BTC"}, {"venue": 1, "symbols": []}, [1]):
        assert (await server.post("/control/instruments", bad))[0] == 400, bad


# -- Coinbase -----------------------------------------------------------------------
async def test_coinbase_connection_and_message_rates(server: Server) -> None:
    heartbeats = {"type": "subscribe", "channel": "heartbeats", "product_ids": []}
    async with contextlib.AsyncExitStack() as stack:
        a, b, *_ = [await stack.enter_async_context(server.ws("/ws/coinbase")) for _ in range(8)]
        with pytest.raises(InvalidStatus) as info:  # the 9th open in a second
            async with server.ws("/ws/coinbase"):
                pass
        assert info.value.response.status_code == 429
        for i in range(8):  # 8 messages a second over all the connections
            await send(a if i % 2 else b, heartbeats)
        for ws in (a, b):
            for _ in range(4):
                await until(ws, lambda f: f.get("channel") == "subscriptions")
        await send(a, heartbeats)
        assert (await until(a, lambda f: f.get("type") == "error"))[0] == {"type": "error",
                                                                        "message": "rate limit exceeded"}
        await closed(a)
    counters = await server.counters()
    assert (counters["refused_rate"], counters["closed_rate"]) == (1, 1)


async def test_coinbase_refused_product(server: Server) -> None:
    await server.fault("coinbase", "BTC-USD", "refuse")
    async with server.ws("/ws/coinbase") as ws:
        await send(ws, {"type": "subscribe", "channel": "level2", "product_ids": ["BTC-USD", "ETH-USD"]})
        assert await recv(ws) == {"type": "error", "message": "Failed to subscribe",
                                  "reason": "BTC-USD is not a valid product"}
        reply = await recv(ws)
        assert reply["events"] == [{"subscriptions": {"level2": ["ETH-USD"]}}]
        snapshot = await recv(ws)
        assert snapshot["events"][0]["type"] == "snapshot"
        assert snapshot["events"][0]["product_id"] == "ETH-USD"
    assert (await server.counters())["refused_symbol"] == 1


# -- the "ignore" fault -------------------------------------------------------------
async def test_ignore_fault_acks_without_serving_once(server: Server) -> None:
    await server.fault("okx", "BTC-USDT", "ignore")
    btc, eth = {"channel": "books", "instId": "BTC-USDT"}, {"channel": "books", "instId": "ETH-USDT"}
    async with server.ws("/ws/okx/ws/v5/public") as first, server.ws("/ws/okx/ws/v5/public") as second:
        await send(first, {"op": "subscribe", "args": [btc, eth]})
        assert await recv(first) == {"event": "subscribe", "arg": btc, "connId": "sim1"}  # as a success
        assert await recv(first) == {"event": "subscribe", "arg": eth, "connId": "sim1"}
        assert (await recv(first))["arg"] == eth  # the served one's snapshot comes, the ignored one's not
        await send(second, {"op": "subscribe", "args": [btc]})  # the next subscription is served
        assert (await recv(second))["event"] == "subscribe"
        assert (await recv(second))["action"] == "snapshot"
        for _ in range(3):
            await until(second, lambda f: f.get("action") == "update")
        _, before = await until(first, lambda f: f.get("action") == "update" and f["arg"] == eth)
        assert all(f["arg"] == eth for f in before)
    counters = await server.counters()
    assert (counters["ignored_subscriptions"], counters["subscriptions_confirmed"]) == (1, 3)


# -- Hyperliquid and dYdX ---------------------------------------------------------------
def hl_sub(kind: str, coin: str, **extra: Any) -> dict[str, Any]:
    return {"method": "subscribe", "subscription": {"type": kind, "coin": coin, **extra}}


async def test_hyperliquid_acks_pings_and_closes_an_idle_connection(server: Server) -> None:
    await server.limits(hyperliquid_idle_s=1.0)
    async with server.ws("/ws/hyperliquid/ws") as ws:
        assert await ws.recv() == "Websocket connection established."
        await send(ws, hl_sub("l2Book", "BTC"))
        ack, _ = await until(ws, lambda f: f.get("channel") == "subscriptionResponse")
        assert ack["data"] == {"method": "subscribe", "subscription": {"type": "l2Book", "coin": "BTC"}}
        book, _ = await until(ws, lambda f: f.get("channel") == "l2Book")
        assert len(book["data"]["levels"][0]) == len(book["data"]["levels"][1]) == 20
        await send(ws, {"method": "ping"})
        await until(ws, lambda f: f.get("channel") == "pong")
        await send(ws, hl_sub("l2Book", "BTC"))
        refused, _ = await until(ws, lambda f: f.get("channel") == "error")
        assert refused["data"].startswith("Already subscribed")
        await closed(ws)  # then nothing more sent: closed after a second idle
    assert (await server.counters())["closed_idle"] == 1


@pytest.mark.parametrize("sub", [hl_sub("l2Book", "BTC", nSigFigs=7), hl_sub("trades", "NO SUCH COIN"),
                                 hl_sub("l2Book", "ETH", nSigFigs=4, mantissa=2)])
async def test_hyperliquid_closes_the_whole_connection_on_a_bad_subscription(server: Server,
                                                                            sub: dict[str, Any]) -> None:
    async with server.ws("/ws/hyperliquid/ws") as ws:
        await ws.recv()
        await send(ws, hl_sub("trades", "SOL"))
        await until(ws, lambda f: f.get("channel") == "subscriptionResponse")
        await send(ws, sub)
        await closed(ws)
    assert not server.sim.instruments[("hyperliquid", "SOL")].watchers  # every subscription of it gone


async def test_dydx_numbers_every_message_of_a_connection(server: Server) -> None:
    await server.limits(dydx_subs_per_s=10)  # three subscribes at once here (the limit: the test below)
    async with server.ws("/ws/dydx/v4/ws") as ws:
        connected = await recv(ws)
        assert (connected["type"], connected["message_id"]) == ("connected", 0)
        await send(ws, {"type": "subscribe", "channel": "v4_orderbook", "id": "BTC-USD", "batched": False})
        await send(ws, {"type": "subscribe", "channel": "v4_markets", "batched": False})
        frames = [await recv(ws) for _ in range(8)]
        assert [f["message_id"] for f in frames] == list(range(1, 9))
        assert frames[0]["type"] == "subscribed"
        assert frames[0]["contents"]["bids"]
        await send(ws, {"type": "subscribe", "channel": "v4_orderbook", "id": "BTC-USD", "batched": False})
        error, _ = await until(ws, lambda f: f["type"] == "error")
        assert "already subscribed" in error["message"]
        assert (error["channel"], error["id"]) == ("v4_orderbook", "BTC-USD")


async def test_hyperliquid_messages_per_minute_per_ip_then_closed(server: Server) -> None:
    await server.limits(hyperliquid_msgs_per_min=3)
    async with server.ws("/ws/hyperliquid/ws") as a, server.ws("/ws/hyperliquid/ws") as b:
        await a.recv()
        await b.recv()
        await send(a, hl_sub("trades", "BTC"))
        await send(b, {"method": "ping"})
        await send(a, {"method": "ping"})  # 3 in the minute over both connections: answered
        await until(b, lambda f: f.get("channel") == "pong")
        await until(a, lambda f: f.get("channel") == "pong")
        await send(b, {"method": "ping"})  # the 4th, from either connection
        assert (await closed(b)).rcvd.code == 1008
    assert (await server.counters())["closed_rate"] == 1


async def test_dydx_third_subscribe_in_a_second_is_an_error_and_a_close(server: Server) -> None:
    async with server.ws("/ws/dydx/v4/ws") as ws:
        await recv(ws)  # connected
        for market in ("BTC-USD", "ETH-USD"):
            await send(ws, {"type": "subscribe", "channel": "v4_trades", "id": market, "batched": False})
        await send(ws, {"type": "subscribe", "channel": "v4_markets", "batched": False})
        error, before = await until(ws, lambda f: f["type"] == "error")
        assert [f["id"] for f in before if f["type"] == "subscribed"] == ["BTC-USD", "ETH-USD"]
        assert error["message"].startswith("Rate limit exceeded")
        assert (await closed(ws)).rcvd.code == 1008
    assert (await server.counters())["closed_rate"] == 1


# -- framing ------------------------------------------------------------------------
@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_frames_whole_and_in_order_with_and_without_deflate(server: Server, compression: str | None) -> None:
    """Without permessage-deflate the simulator writes every frame queued for a connection in one
    write (Conn._write); with it, each through aiohttp's compressor. Either way each frame arrives
    whole and in its order: Coinbase numbers every message of a connection (``sequence_num``).
    The client reads without flow control, as ingestion does (``max_queue=None``): websockets'
    default stops reading at 16 unread messages, and would not read the closing handshake."""
    products = [f"P{i}-USD" for i in range(20)]
    assert (await server.post("/control/instruments", {"venue": "coinbase", "symbols": products,
                                                       "rate": 300}))[0] == 200
    async with connect(f"ws://127.0.0.1:{server.port}/ws/coinbase", compression=compression, max_size=None,
                       max_queue=None) as ws:
        assert [e.name for e in ws.protocol.extensions] == (["permessage-deflate"] if compression else [])
        await send(ws, {"type": "subscribe", "channel": "level2", "product_ids": products})
        numbers = [(await recv(ws))["sequence_num"] for _ in range(3000)]
    assert numbers == list(range(numbers[0], numbers[0] + 3000))
    assert server.sim.counters["frames_sent"] >= 3000


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 70_000])
def test_text_frame_is_what_a_client_parses(length: int) -> None:
    from websockets.frames import Frame as WsFrame
    from websockets.frames import Opcode
    from websockets.streams import StreamReader

    from app.simulator.server import _text_frame

    payload = bytes(ord("a") + i % 26 for i in range(length))
    reader = StreamReader()
    reader.feed_data(_text_frame(payload) + _text_frame(b"next"))
    frames = []
    for _ in range(2):
        parser = WsFrame.parse(reader.read_exact, mask=False)
        with pytest.raises(StopIteration) as done:
            next(parser)
        frames.append(done.value.value)
    assert [(f.opcode, f.fin, f.data) for f in frames] == [(Opcode.TEXT, True, payload), (Opcode.TEXT, True, b"next")]
