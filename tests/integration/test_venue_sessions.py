"""Live ingestion against the strict simulator (in-process, real WebSockets and REST): every
subscription confirmed or loudly failed, the venues' limits kept, channels on the endpoints that
serve them. Ingestion runs without Kafka here (``produce=False``): what it emits and reports is
collected directly; the worker's side (book status, ``feed.status``) is in test_live_market."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from app.config import Secret, load
from app.feeds import FeedConfig, sim_endpoints
from app.ingest.connection import FeedConnection
from app.ingest.limits import Pacing
from app.ingest.service import Ingest
from app.simulator.server import Simulator
from app.venues import protocol
from app.venues.base import Kind
from app.venues.session import Limits
from app.wire import RawFrame

#: The simulator's counters of what a real venue would refuse, throttle or close.
LIMIT_COUNTERS = ("refused_rate", "refused_args", "closed_rate", "rest_429", "rest_418")


class Run:
    """One ingestion run against the in-process simulator."""

    def __init__(self, sim: Simulator, base: str, http: aiohttp.ClientSession) -> None:
        self.sim, self.base, self.http = sim, base, http
        self.frames: list[tuple[str, Kind, bytes, str]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []  # (instrument key, conn event)
        self.ingest: Ingest | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, feeds: dict[str, list[str]], endpoints: dict[str, dict[str, Any]] | None = None,
                    creds: dict[str, dict[str, str]] | None = None, quick: bool = True) -> Ingest:
        eps = sim_endpoints(self.base)
        if quick:  # answers, first data and retries timed for a test (the simulator answers at once)
            eps = {v: dataclasses.replace(e, limits=dataclasses.replace(e.limits, ack_s=3.0, first_s=3.0,
                                                                        retry_s=1.5))
                   for v, e in eps.items()}
        for venue, fields in (endpoints or {}).items():
            eps[venue] = dataclasses.replace(eps[venue], **fields)
        cfg = FeedConfig(feeds, eps, {v: {k: Secret(x) for k, x in c.items()} for v, c in (creds or {}).items()}, "sim")
        ingest = Ingest(dataclasses.replace(load(), instruments_refresh_s=0.0), cfg, produce=False)
        ingest.emit = self._emit  # type: ignore[method-assign]
        ingest._conn_frames = self._conn  # type: ignore[method-assign]
        self.ingest, self.task = ingest, asyncio.create_task(ingest.run())
        return ingest

    def _emit(self, venue: str, kind: Kind, frame: bytes, ts: int, url: str, symbol: str, conn: str) -> None:
        self.frames.append((venue, kind, frame, symbol))

    def _conn(self, venue: str, conn: str, frames: list[RawFrame]) -> None:
        self.events += [(f.key, orjson.loads(f.data)) for f in frames]

    def channels(self) -> dict[str, str]:
        assert self.ingest is not None
        return {f"{c.venue}|{cid}": ch.state for c in self.ingest.connections for cid, ch in c.channels.items()}

    def books_live(self, venue: str, symbols: list[str]) -> bool:
        assert self.ingest is not None
        live = {ch.sub.symbol for c in self.ingest.connections if c.venue == venue
                for ch in c.channels.values() if ch.sub.book and ch.state == "live"}
        return live >= set(symbols)

    def event(self, key: str, name: str, feed: str = "book") -> bool:
        return any(k == key and e["event"] == name and e.get("feed") == feed for k, e in self.events)

    async def counters(self) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/control/status") as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def fault(self, venue: str, symbol: str, fault: str, seconds: float = 5.0) -> None:
        body = {"venue": venue, "symbol": symbol, "fault": fault, "seconds": seconds}
        async with self.http.post(f"{self.base}/control/fault", data=orjson.dumps(body)) as resp:
            assert resp.status == 200, await resp.text()

    async def no_limit_tripped(self) -> None:
        counters = await self.counters()
        assert {c: counters.get(c, 0) for c in LIMIT_COUNTERS} == dict.fromkeys(LIMIT_COUNTERS, 0)


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def run() -> AsyncIterator[Run]:
    sim = Simulator(rate=10.0, seed=3)
    runner = web.AppRunner(sim.app(), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    async with aiohttp.ClientSession() as http:
        r = Run(sim, f"http://127.0.0.1:{runner.addresses[0][1]}", http)
        yield r
        if r.task is not None:
            r.task.cancel()
            await asyncio.gather(r.task, return_exceptions=True)
    await runner.cleanup()


async def test_usdm_mark_price_comes_from_the_market_endpoint_and_depth_from_public(run: Run) -> None:
    symbols = ["BTCUSDT", "ETHUSDT"]
    ingest = await run.start({"binance-usdm": symbols})
    marks = lambda: {f[3] or orjson.loads(f[2])["data"]["s"] for f in run.frames  # noqa: E731
                     if b'"e":"markPriceUpdate"' in f[2]}
    await until(lambda: marks() >= set(symbols) and run.books_live("binance-usdm", symbols), 20,
                "USD-M mark prices and depth of both symbols")
    paths = sorted(c.proto.endpoint.ws_url.rsplit("/ws/binance-usdm", 1)[1] for c in ingest.connections)
    assert paths == ["/market/stream", "/public/stream"]
    states = run.channels()
    assert all(states[f"binance-usdm|{s.lower()}@markPrice@1s"] == "live" for s in symbols)
    await run.no_limit_tripped()


async def test_bybit_spot_subscribes_ten_args_a_request(run: Run) -> None:
    symbols = [f"C{i}USDT" for i in range(9)]  # 27 channels on one connection: three requests
    await run.start({"bybit-spot": symbols})
    await until(lambda: run.books_live("bybit-spot", symbols), 20, "every Bybit spot book live")
    await run.no_limit_tripped()
    assert not [e for _, e in run.events if e["event"] != "recovered"]


@pytest.mark.parametrize(("venue", "symbol", "expected"), [
    ("okx", "ETH-USDT", "refused"), ("bybit-linear", "ETHUSDT", "refused"), ("deribit", "ETH-PERPETUAL", "refused"),
    ("coinbase", "ETH-USD", "refused"),
    ("binance", "ETHUSDT", "silent"),  # Binance says nothing of a stream it does not serve
])
async def test_a_refused_subscription_is_reported_then_retried(run: Run, venue: str, symbol: str,
                                                                expected: str) -> None:
    other = {"okx": "BTC-USDT", "bybit-linear": "BTCUSDT", "deribit": "BTC-PERPETUAL", "coinbase": "BTC-USD",
             "binance": "BTCUSDT"}[venue]
    await run.fault(venue, symbol, "refuse", 7.0)
    await run.start({venue: [other, symbol]})
    key = f"{venue}:{symbol}"
    await until(lambda: run.event(key, expected), 20, f"{key}'s book subscription reported {expected}")
    await until(lambda: run.books_live(venue, [other]), 20, f"{venue}:{other} live beside it")
    assert not run.books_live(venue, [symbol])
    await until(lambda: run.event(key, "recovered") and run.books_live(venue, [symbol]), 40,
                f"{key} subscribed again once the venue lists it")
    await run.no_limit_tripped()


@pytest.mark.parametrize(("venue", "symbol"), [
    ("deribit", "BTC-PERPETUAL"), ("okx", "BTC-USDT"), ("bybit-linear", "BTCUSDT"), ("binance", "BTCUSDT"),
    ("coinbase", "BTC-USD"),  # its heartbeats keep flowing: they never count as data
])
async def test_a_subscription_acknowledged_but_never_served_is_found_and_resubscribed(run: Run, venue: str,
                                                                                       symbol: str) -> None:
    await run.fault(venue, symbol, "ignore")
    await run.start({venue: [symbol]})
    key = f"{venue}:{symbol}"
    await until(lambda: run.event(key, "silent"), 20, f"{key}'s silent book channel reported")
    await until(lambda: run.event(key, "recovered") and run.books_live(venue, [symbol]), 30,
                f"{key} resubscribed and live")
    await run.no_limit_tripped()


async def test_coinbase_connections_share_eight_messages_a_second(run: Run) -> None:
    symbols = [f"C{i}-USD" for i in range(6)]  # a connection each, 4 messages each: 24 messages
    started = time.monotonic()
    await run.start({"coinbase": symbols})
    await until(lambda: run.books_live("coinbase", symbols), 30, "every Coinbase book live")
    assert time.monotonic() - started > 2.0  # 24 messages at 8 a second (the pacing is real)
    await run.no_limit_tripped()


async def test_a_resync_storm_stays_inside_deribits_subscribe_quota(run: Run) -> None:
    symbols = [f"BTC-PERP{i}" for i in range(12)]
    ingest = await run.start({"deribit": symbols})
    await until(lambda: run.books_live("deribit", symbols), 20, "every Deribit book live")
    results = await asyncio.gather(*(ingest.resync(f"deribit:{s}") for s in symbols))
    assert all(results)
    snapshots = lambda: sum(b'"type":"snapshot"' in f[2] for f in run.frames)  # noqa: E731
    await until(lambda: snapshots() >= 2 * len(symbols), 30, "a fresh snapshot of every book")
    await run.no_limit_tripped()
    assert sum(c.stats.reconnects for c in ingest.connections) == 0


async def test_okx_connection_opens_are_paced(run: Run) -> None:
    symbols = [f"C{i}-USDT" for i in range(7)]
    ingest = await run.start({"okx": symbols}, {"okx": {"max_per_conn": 1}})
    await until(lambda: run.books_live("okx", symbols), 30, "every OKX book live")
    assert len(ingest.connections) == 7
    assert sum(c.stats.reconnects for c in ingest.connections) == 0
    await run.no_limit_tripped()


@pytest.mark.parametrize(("venue", "creds", "channel", "expected"), [
    ("okx", {"key": "good", "secret": "s", "passphrase": "p"}, "books-l2-tbt", "books-l2-tbt:BTC-USDT"),
    ("okx", {"key": "bad", "secret": "s", "passphrase": "p"}, "books-l2-tbt", "books:BTC-USDT"),
    ("deribit", {"client_id": "good", "client_secret": "s"}, None, "book.BTC-PERPETUAL.raw"),
    ("deribit", {"client_id": "bad", "client_secret": "s"}, None, "book.BTC-PERPETUAL.100ms"),
])
async def test_the_login_is_awaited_and_a_refused_one_falls_back_to_public_channels(
        run: Run, caplog: pytest.LogCaptureFixture, venue: str, creds: dict[str, str], channel: str | None,
        expected: str) -> None:
    symbol = expected.split(":")[-1] if venue == "okx" else "BTC-PERPETUAL"
    await run.start({venue: [symbol]}, {venue: {"channel": channel}} if channel else None, {venue: creds})
    await until(lambda: run.channels().get(f"{venue}|{expected}") == "live", 20, f"{expected} live")
    refused = [r.getMessage() for r in caplog.records if "login refused" in r.getMessage()]
    assert len(refused) == (1 if "bad" in creds.values() else 0)


async def rest_server(responses: list[tuple[int, dict[str, str], bytes]]) -> tuple[web.AppRunner, str, list[float]]:
    """A REST depth endpoint answering ``responses`` in turn (then the last one), noting when."""
    seen: list[float] = []

    async def depth(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        status, headers, body = responses[min(len(seen) - 1, len(responses) - 1)]
        return web.Response(status=status, headers=headers, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/depth", depth)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/depth", seen


@pytest.mark.parametrize("status", [429, 418])
async def test_rest_snapshots_wait_as_long_as_the_venue_says(status: int) -> None:
    body = b'{"lastUpdateId":5,"bids":[["1","1"]],"asks":[["2","1"]]}'
    runner, url, seen = await rest_server([(status, {"Retry-After": "2"}, b'{"code":-1003}'),
                                           (200, {"X-MBX-USED-WEIGHT-1M": "4000"}, body)])
    endpoint = dataclasses.replace(sim_endpoints("http://127.0.0.1:1")["binance"], rest_url=url)
    emitted: list[bytes] = []
    try:
        async with aiohttp.ClientSession() as http:
            conn = FeedConnection("binance", ["BTCUSDT"], protocol("binance", endpoint),
                                  emit=lambda kind, frame, *_: emitted.append(frame), reset=lambda *_: None,
                                  http=http, pacing=Pacing())
            await conn.fetch_snapshot("BTCUSDT")
    finally:
        await runner.cleanup()
    assert emitted == [body]
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 2.0
    assert conn.rest.used >= 4000  # the venue's own count of the weight used is believed


def test_the_snapshot_depth_follows_the_queue_and_the_weight_budget() -> None:
    endpoint = dataclasses.replace(sim_endpoints("http://127.0.0.1:1")["binance"],
                                   limits=dataclasses.replace(Limits(), rest_weight=(6000, 60.0),
                                                              rest_weights=((100, 5), (500, 25), (1000, 50),
                                                                            (5000, 250))))
    conn = FeedConnection("binance", ["BTCUSDT"], protocol("binance", endpoint), emit=lambda *_: None,
                          reset=lambda *_: None, http=None)  # type: ignore[arg-type]
    depths = []
    for queued in (1, 13, 60, 120, 2000):
        conn.rest.waiting = queued
        depths.append(conn.snapshot_depth())
    # at most half of 6,000 a minute for the snapshots queued: 120 books after a reconnect 120 × 25
    assert depths == [5000, 1000, 1000, 500, 100]
    assert [conn.snapshot_weight(d) for d in depths] == [250, 50, 50, 25, 5]


async def test_many_instruments_per_venue_start_and_reconnect_inside_every_limit(run: Run) -> None:
    """`make run SIM_INSTRUMENTS=50`'s universe (200 for Binance spot): everything confirmed and
    live, then every connection dropped at once (a network blip): back again, no limit tripped."""
    from app.feeds import parse_feeds, sim_feeds

    feeds = parse_feeds(sim_feeds(50))
    assert all(len(s) >= 50 for s in feeds.values())
    assert len(feeds["binance"]) >= 200
    run.sim.rate = 2.0  # a light market (each book still moves every few seconds): this is about sessions
    ingest = await run.start(feeds, quick=False)
    everything = lambda: all(run.books_live(v, s) for v, s in feeds.items())  # noqa: E731
    await until(everything, 150, "every book channel of every venue live")
    confirmed = sum(1 for state in run.channels().values() if state in ("confirmed", "live"))
    assert confirmed >= sum(len(s) for s in feeds.values())
    for conn in list(run.sim.conns):
        await conn.ws.close()
    await until(lambda: sum(c.stats.reconnects for c in ingest.connections) >= len(ingest.connections), 30,
                "every connection dropped")
    await until(everything, 150, "every book channel live again after the reconnect storm")
    await run.no_limit_tripped()


async def test_okx_subscription_requests_wait_for_the_hourly_budget(run: Run) -> None:
    """The venue closes a connection past its subscription requests per hour (480; here 5):
    resyncs beyond the budget wait for it instead of costing the connection."""
    from app import metrics

    async with run.http.post(f"{run.base}/control/limits", data=orjson.dumps({"okx_ops_per_hour": 5})) as resp:
        assert resp.status == 200
    limits = dataclasses.replace(sim_endpoints(run.base)["okx"].limits, ops=(4, 3600.0))
    ingest = await run.start({"okx": ["BTC-USDT"]}, {"okx": {"limits": limits}})
    await until(lambda: run.books_live("okx", ["BTC-USDT"]), 20, "the OKX book live")
    waits = metrics.counters["limit_waits.okx"]
    for _ in range(3):  # each an unsubscribe and a subscribe: 1 + 6 requests, 4 allowed an hour
        await ingest.resync("okx:BTC-USDT")
        await asyncio.sleep(1.1)  # resyncs of one instrument closer than 1 s are coalesced
    await until(lambda: metrics.counters["limit_waits.okx"] > waits, 10, "a request held back")
    conn = ingest.connections[0]
    assert conn._out.qsize() + 1 >= 3  # the rest wait in the queue (one waits in the sender)
    await run.no_limit_tripped()
    assert conn.stats.reconnects == 0
