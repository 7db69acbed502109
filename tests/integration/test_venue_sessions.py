"""Live ingestion against the strict simulator (in-process, real WebSockets and REST): every
subscription confirmed or loudly failed, the venues' limits kept, channels on the endpoints that
serve them. Ingestion runs without Kafka here (``produce=False``): what it emits and reports is
collected directly; the worker's side (book status, ``feed.status``) is in test_live_market, and
in-process here (:class:`Pipeline`: the router and the book agent's processor, no Kafka) for the venues
whose books are checked against the simulator's truth over the real WebSockets (Hyperliquid, dYdX)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict
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
from app.market.records import Trade
from app.processor import Outcome, Processor
from app.simulator.server import Simulator
from app.venues import protocol
from app.venues.base import Kind
from app.venues.session import Limits
from app.wire import RawFrame
from tests.helpers import tops_matching_no_truth

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
        self.pipeline: Pipeline | None = None

    async def start(self, feeds: dict[str, list[str]], endpoints: dict[str, dict[str, Any]] | None = None,
                    creds: dict[str, dict[str, str]] | None = None, quick: bool = True,
                    pipeline: bool = False, refresh_s: float = 0.0) -> Ingest:
        eps = sim_endpoints(self.base)
        if quick:  # answers, first data and retries timed for a test (the simulator answers at once)
            eps = {v: dataclasses.replace(e, limits=dataclasses.replace(e.limits, ack_s=3.0, first_s=3.0,
                                                                        retry_s=1.5))
                   for v, e in eps.items()}
        for venue, fields in (endpoints or {}).items():
            eps[venue] = dataclasses.replace(eps[venue], **fields)
        cfg = FeedConfig(feeds, eps, {v: {k: Secret(x) for k, x in c.items()} for v, c in (creds or {}).items()}, "sim")
        ingest = Ingest(dataclasses.replace(load(), instruments_refresh_s=refresh_s), cfg, produce=False)
        ingest.emit = self._emit  # type: ignore[method-assign]
        ingest._conn_frames = self._conn  # type: ignore[method-assign]
        if pipeline:
            self.pipeline = Pipeline(ingest)
        self.ingest, self.task = ingest, asyncio.create_task(ingest.run())
        return ingest

    def _emit(self, venue: str, kind: Kind, frame: bytes, ts: int, url: str, symbol: str, conn: str) -> None:
        self.frames.append((venue, kind, frame, symbol))
        if self.pipeline is not None:
            self.pipeline.frame(venue, kind, frame, ts, url, symbol, conn)

    def _conn(self, venue: str, conn: str, frames: list[RawFrame]) -> None:
        self.events += [(f.key, orjson.loads(f.data)) for f in frames]
        if self.pipeline is not None:
            for raw in frames:
                self.pipeline.apply(raw)

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


class Pipeline:
    """The worker's side in-process, as the book agent applies the raw frames (``app.router`` then
    ``app.processor``, no Kafka): every published top, trade and ``feed.status`` event is kept, and a
    resync the processor asks goes to ingestion as ``control.resync`` would."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.proc = Processor()
        self.tops: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.trades: dict[str, list[Trade]] = defaultdict(list)
        self.feed: list[tuple[str, dict[str, Any]]] = []
        self.outcomes: list[tuple[RawFrame, Outcome]] = []
        self.resyncs: list[str] = []
        self.transitions: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self._tasks: set[asyncio.Task[bool]] = set()

    def frame(self, venue: str, kind: Kind, frame: bytes, ts: int, url: str, symbol: str, conn: str) -> None:
        for raw in self.ingest.router.route(venue, conn, kind, frame, ts, url, symbol):
            self.apply(raw)

    def apply(self, raw: RawFrame) -> None:
        out = self.proc.handle(raw)
        self.outcomes.append((raw, out))
        for top in out.fx.tops:
            self.tops[raw.key].append({"seq": top.seq, "bid_px": top.top.bid_px, "bid_sz": top.top.bid_sz,
                                       "ask_px": top.top.ask_px, "ask_sz": top.top.ask_sz})
        self.trades[raw.key] += out.trades
        self.transitions[raw.key] += out.fx.transitions
        self.feed += [(raw.key, e) for e in out.feed_events]
        if out.fx.resync is not None:
            self.resyncs.append(raw.key)
            task = asyncio.get_running_loop().create_task(self.ingest.resync(raw.key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def status(self, key: str) -> str:
        inst = self.proc.instruments.get(key)
        return inst.status if inst is not None else "absent"

    def synced(self, keys: list[str], tops: int = 1) -> bool:
        return all(self.status(k) == "synced" and len(self.tops[k]) >= tops for k in keys)


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
    ("coinbase", "ETH-USD", "refused"), ("dydx", "ETH-USD", "refused"),
    ("binance", "ETHUSDT", "silent"),  # Binance says nothing of a stream it does not serve
])
async def test_a_refused_subscription_is_reported_then_retried(run: Run, venue: str, symbol: str,
                                                                expected: str) -> None:
    other = {"okx": "BTC-USDT", "bybit-linear": "BTCUSDT", "deribit": "BTC-PERPETUAL", "coinbase": "BTC-USD",
             "binance": "BTCUSDT", "dydx": "BTC-USD"}[venue]
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


# -- Hyperliquid and dYdX: books against the simulator's truth, over the real WebSockets ----------
async def truth_of(run: Run, key: str) -> list[list[Any]]:
    venue, symbol = key.split(":", 1)
    async with run.http.get(f"{run.base}/control/truth/{venue}/{symbol}") as resp:
        assert resp.status == 200, await resp.text()
        entries: list[list[Any]] = (await resp.json())["entries"]
        return entries


async def tops_match_truth(run: Run, keys: list[str]) -> None:
    """Every top the pipeline published equals the simulator's true top at its sequence."""
    assert run.pipeline is not None
    for key in keys:
        tops = run.pipeline.tops[key]
        wrong = tops_matching_no_truth(tops, await truth_of(run, key))
        assert not wrong, f"{key}: {len(wrong)} of {len(tops)} tops wrong, the first: {wrong[0]}"


def trades_once(pipeline: Pipeline, key: str, number: Callable[[str], int]) -> list[int]:
    """The trades published for ``key``, numbered by the simulator (contiguous per instrument): each
    once, in order, none missing."""
    numbers = [number(t.trade_id) for t in pipeline.trades[key]]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"{key}: trades {numbers}"
    return numbers


def raw_trade_items(run: Run, venue: str, symbol: str) -> int:
    """Trades the venue sent for ``symbol``, repeats included."""
    count = 0
    for v, _, frame, _ in run.frames:
        if v == venue == "hyperliquid" and frame.startswith(b'{"channel":"trades"'):
            count += sum(1 for t in orjson.loads(frame)["data"] if t["coin"] == symbol)
        elif v == venue == "dydx" and b'"channel":"v4_trades"' in frame[:200] and b'"contents"' in frame:
            msg = orjson.loads(frame)
            if msg.get("id") == symbol and msg["type"] in ("subscribed", "channel_data"):
                count += len(msg["contents"]["trades"])
    return count


async def test_hyperliquid_books_equal_the_truth_and_repeated_trades_are_dropped(run: Run) -> None:
    symbols = ["BTC", "ETH"]
    keys = [f"hyperliquid:{s}" for s in symbols]
    ingest = await run.start({"hyperliquid": symbols}, pipeline=True)
    p = run.pipeline
    assert p is not None
    await until(lambda: p.synced(keys, 5) and all(len(p.trades[k]) >= 3 for k in keys), 40,
                "both Hyperliquid books synced with 5 tops and 3 trades each")
    before = len(p.trades["hyperliquid:BTC"])
    await run.fault("hyperliquid", "BTC", "disconnect")  # the new connection's first trades repeat recent ones
    await until(lambda: ingest.connections[0].stats.reconnects >= 1 and p.synced(keys)
                and len(p.trades["hyperliquid:BTC"]) >= before + 3, 40, "reconnected, synced, trades again")
    await tops_match_truth(run, keys)
    for key, symbol in zip(keys, symbols, strict=True):
        published = trades_once(p, key, int)
        assert raw_trade_items(run, "hyperliquid", symbol) > len(published)  # the repeats came, and went
    assert not [e for _, e in run.events if e.get("feed")]  # no subscription failed
    assert not ingest.connections[0].quarantined  # the venue's close of a subscribed connection blames nothing
    await run.no_limit_tripped()


async def test_a_hyperliquid_snapshot_older_than_the_book_is_ignored(run: Run) -> None:
    key = "hyperliquid:BTC"
    await run.start({"hyperliquid": ["BTC"]}, pipeline=True)
    p = run.pipeline
    assert p is not None
    await until(lambda: p.synced([key], 3), 20, "the Hyperliquid book synced")

    def older() -> list[bool]:
        """Whether each l2Book message older than the newest before it was applied."""
        newest, out = 0, []
        for raw, outcome in p.outcomes:
            if raw.key == key and raw.data.startswith(b'{"channel":"l2Book"'):
                time_ms = orjson.loads(raw.data)["data"]["time"]
                if time_ms < newest:
                    out.append(outcome.fx.applied)
                newest = max(newest, time_ms)
        return out

    for n in range(1, 4):  # an API server a block behind, three times
        await run.fault("hyperliquid", "BTC", "hyperliquid-old-snapshot")
        await until(lambda n=n: len(older()) >= n, 10, f"older snapshot {n} received")  # type: ignore[misc]
    assert older() == [False, False, False]
    await until(lambda: len(p.tops[key]) >= 6, 20, "the book moving on")
    assert p.status(key) == "synced"
    await tops_match_truth(run, [key])


async def test_an_unknown_hyperliquid_coin_is_refused_without_losing_the_other_coins(
        run: Run, caplog: pytest.LogCaptureFixture) -> None:
    """The venue closes the whole connection on a coin it does not know: that coin is found (the
    subscription unanswered when the venue closed), quarantined and reported; the others come back."""
    await run.fault("hyperliquid", "NOPE", "refuse", 600)  # unlisted: subscribing it closes the connection
    ingest = await run.start({"hyperliquid": ["BTC", "NOPE", "ETH"]}, pipeline=True)
    p = run.pipeline
    assert p is not None
    others = ["hyperliquid:BTC", "hyperliquid:ETH"]
    await until(lambda: any(k == "hyperliquid:NOPE" and e["event"] == "refused" and e["feed"] == "book"
                            for k, e in p.feed), 20, "hyperliquid:NOPE refused on feed.status")
    await until(lambda: p.synced(others, 2) and run.books_live("hyperliquid", ["BTC", "ETH"]), 30,
                "BTC and ETH synced on the next connection")
    conn = ingest.connections[0]
    assert list(conn.quarantined) == ["NOPE"]
    refusals = (await run.counters())["refused_symbol"]
    tops = len(p.tops["hyperliquid:BTC"])
    await until(lambda: len(p.tops["hyperliquid:BTC"]) >= tops + 5, 20, "BTC moving on")
    assert conn.stats.reconnects == 1  # closed once, for NOPE, and never again
    assert (await run.counters())["refused_symbol"] == refusals == 1  # NOPE never subscribed again
    states = run.channels()
    assert {c: st for c, st in states.items() if c.endswith(":NOPE")} == dict.fromkeys(
        [f"hyperliquid|{t}:NOPE" for t in ("l2Book", "trades", "activeAssetCtx", "bbo")], "refused")
    assert p.status("hyperliquid:NOPE") == "waiting"
    assert not await ingest.resync("hyperliquid:NOPE")  # a resync does not subscribe it either
    assert len([r for r in caplog.records if "quarantined" in r.getMessage()]) == 1
    await tops_match_truth(run, others)


async def test_dydx_books_equal_the_truth_through_crossed_moments(run: Run) -> None:
    symbols = ["BTC-USD", "ETH-USD"]
    keys = [f"dydx:{s}" for s in symbols]
    await run.start({"dydx": symbols}, pipeline=True)
    p = run.pipeline
    assert p is not None
    await until(lambda: p.synced(keys, 5), 20, "both dYdX books synced")

    def uncrossed() -> int:
        return p.proc.instruments["dydx:BTC-USD"].counters.get("uncrossed", 0)

    for n in range(1, 7):
        await run.fault("dydx", "BTC-USD", "dydx-cross")
        await until(lambda n=n: uncrossed() >= n, 10, f"crossed moment {n} resolved")  # type: ignore[misc]
    await until(lambda: all(len(p.trades[k]) >= 3 for k in keys) and len(p.tops["dydx:BTC-USD"]) >= 15, 30,
                "trades and tops flowing")
    assert [p.status(k) for k in keys] == ["synced", "synced"]
    assert [t for k in keys for t in p.transitions[k] if t[0] != "synced"] == []  # never stale
    await tops_match_truth(run, keys)
    for key in keys:
        trades_once(p, key, lambda tid: int(tid, 16))
    await run.no_limit_tripped()


async def test_dydx_internal_error_resubscribes_and_the_book_syncs_again(run: Run) -> None:
    symbols = ["BTC-USD", "ETH-USD"]
    keys = [f"dydx:{s}" for s in symbols]
    await run.start({"dydx": symbols}, pipeline=True)
    p = run.pipeline
    assert p is not None
    await until(lambda: p.synced(keys, 3), 20, "both dYdX books synced")
    await run.fault("dydx", "BTC-USD", "dydx-fetch-error")
    stale = lambda: [r for s, r in p.transitions["dydx:BTC-USD"] if s == "stale"]  # noqa: E731
    await until(lambda: bool(stale()), 10, "dydx:BTC-USD stale")
    assert "Internal error, could not fetch data for subscription" in stale()[0]
    tops = len(p.tops["dydx:BTC-USD"])
    await until(lambda: p.status("dydx:BTC-USD") == "synced" and len(p.tops["dydx:BTC-USD"]) >= tops + 3, 20,
                "dydx:BTC-USD resubscribed and synced again")
    assert [t for t in p.transitions["dydx:ETH-USD"] if t[0] != "synced"] == []  # the other book untouched
    await tops_match_truth(run, keys)
    await run.no_limit_tripped()


@pytest.mark.parametrize(("venue", "symbol"), [("hyperliquid", "BTC"), ("dydx", "BTC-USD")])
async def test_the_instrument_list_is_fetched_the_venues_way(run: Run, venue: str, symbol: str) -> None:
    """Hyperliquid's list is a POST of ``{"type":"meta"}`` (the simulator answers 422 to anything else),
    dYdX's a GET: either becomes the registry's specs."""
    await run.start({venue: [symbol]}, pipeline=True, refresh_s=60.0)
    p = run.pipeline
    assert p is not None
    specs = lambda: {s.key for _, o in p.outcomes for s in o.specs}  # noqa: E731
    await until(lambda: f"{venue}:{symbol}" in specs(), 20, f"{venue}'s instrument list read")
    if venue == "hyperliquid":  # its connections learn the list: an unlisted coin is never subscribed
        proto = run.ingest.connections[0].proto
        await until(lambda: proto.known is not None, 5, "the connection told the venue's coins")
        assert symbol in proto.known
        assert "NOPE" not in proto.known
