"""The simulator's underlying move: TrueBook.shift, the forward's move, and the books and
messages of a move through the Simulator and its /control/move route."""

from __future__ import annotations

import asyncio
import copy
import math
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.simulator.market import Forwards
from app.simulator.model import Change, TrueBook
from app.simulator.server import Conn, Simulator, _okx_snapshot

Side = dict[Decimal, Decimal]


def _sides(book: TrueBook) -> tuple[Side, Side]:
    bids, asks = book.levels()
    return ({Decimal(p): Decimal(s) for p, s in bids}, {Decimal(p): Decimal(s) for p, s in asks})


def _apply(bids: Side, asks: Side, changes: list[tuple[str, str, str]] | list[Change]) -> None:
    for side, price, size in changes:
        book = bids if side == "b" else asks
        if Decimal(size) == 0:
            book.pop(Decimal(price), None)
        else:
            book[Decimal(price)] = Decimal(size)


@pytest.mark.parametrize("symbol", ["BTC-PERPETUAL", "ETHUSDT", "BTC-27MAR26-60000-C", "SOL-USDT-SWAP"])
@pytest.mark.parametrize("ticks", [1, -1, 7, -30, 250, -400, 0])
def test_shift_moves_the_whole_book(symbol: str, ticks: int) -> None:
    book = TrueBook(symbol, seed=1)
    for _ in range(20):
        book.step()
    ticks = max(ticks, 1 - max(book.bids))  # what shift clamps it to near zero
    before = copy.deepcopy((book.bids, book.asks))
    old_bids, old_asks = _sides(book)
    best_bid, best_ask = book.best()
    changes = book.shift(ticks)
    assert book.best() == (best_bid + ticks, best_ask + ticks)
    assert max(book.bids) < min(book.asks)
    if ticks == 0:
        assert changes == []
    if min(before[0]) + ticks > 0:  # nothing dropped at zero: an exact translation
        assert book.bids == {p + ticks: s for p, s in before[0].items()}
        assert book.asks == {p + ticks: s for p, s in before[1].items()}
    assert len({(c[0], Decimal(c[1])) for c in changes}) == len(changes)  # each level once
    _apply(old_bids, old_asks, changes)
    assert (old_bids, old_asks) == _sides(book)


def test_shift_down_stops_above_zero() -> None:
    book = TrueBook("XYZ", seed=3)
    best_bid, best_ask = book.best()
    old = _sides(book)
    changes = book.shift(-10 * best_ask)
    assert book.best()[0] == 1
    assert min(book.bids) >= 1
    assert book.best()[1] - book.best()[0] == best_ask - best_bid
    _apply(*old, changes)
    assert old == _sides(book)


async def test_forward_moves_to_target_log_linearly() -> None:
    fwd = Forwards(random.Random(0))
    for _ in range(50):
        fwd.get("BTC")
    start = fwd.peek("BTC")
    factors: list[float] = []
    await fwd.move("BTC", 5, 0.3, factors.append, interval=0.02)
    assert fwd.peek("BTC") == pytest.approx(start * 1.05, rel=1e-12)
    assert fwd.level("BTC") == pytest.approx(start * 1.05, rel=1e-12)
    assert factors[-1] == pytest.approx(1.05, rel=1e-12)
    assert len(factors) >= 10  # smooth: many steps
    assert factors == sorted(factors)
    assert max(b / a for a, b in zip(factors, factors[1:], strict=False)) < 1.05 ** (1 / 3)
    # the random walk goes on around the moved level
    values = [fwd.get("BTC") for _ in range(100)]
    assert all(abs(v / (start * 1.05) - 1) < 0.01 for v in values)
    assert len(set(values)) > 1
    # down moves, from wherever it is
    await fwd.move("BTC", -20, 0.05, interval=0.01)
    assert fwd.peek("BTC") == pytest.approx(values[-1] * 0.8, rel=1e-12)


async def test_forward_move_rejects_bad_input() -> None:
    fwd = Forwards(random.Random(0))
    for pct, seconds in ((5, 0), (5, -1), (-100, 1), (math.nan, 1), (5, math.inf)):
        with pytest.raises(ValueError, match="pct|seconds"):
            await fwd.move("BTC", pct, seconds)


class _FakeWs:
    closed = False


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    sim = Simulator(rate=10.0, seed=1)
    yield sim
    for task in [*sim.moves.values(), *(i.driver for i in sim.instruments.values() if i.driver is not None)]:
        task.cancel()
    await asyncio.sleep(0)


def _mid(sim: Simulator, venue: str, symbol: str) -> float:
    bid, _, ask, _ = sim.instrument(venue, symbol).book.top()
    return (float(bid) + float(ask)) / 2


async def test_simulator_move_shifts_books_not_options(sim: Simulator) -> None:
    conn = Conn(sim, _FakeWs(), "okx", 1)  # type: ignore[arg-type]
    okx = sim.subscribe(conn, "BTC-USDT-SWAP", _okx_snapshot)
    for venue, symbol in (("deribit", "BTC-PERPETUAL"), ("deribit", "BTC-27MAR26-60000-C"),
                          ("deribit", "ETH-PERPETUAL"), ("binance", "BTCUSDT")):
        sim.instrument(venue, symbol)
    before = {k: _mid(sim, *k) for k in sim.instruments}
    option = sim.instruments[("deribit", "BTC-27MAR26-60000-C")]
    forward = sim.forwards.peek("BTC")
    sim.move("BTC", 5, 0.6)
    await asyncio.sleep(0.25)
    assert 1.0 < sim.book_factor["BTC"] < 1.05  # under way
    await sim.moves["BTC"]
    assert sim.forwards.peek("BTC") == pytest.approx(forward * 1.05, rel=1e-9)
    for key, mid in before.items():
        ratio = _mid(sim, *key) / mid
        if key[1] in ("BTC-USDT-SWAP", "BTC-PERPETUAL", "BTCUSDT"):
            assert ratio == pytest.approx(1.05, abs=0.002), key  # the book's own walk is a few ticks
        elif key[1] == "ETH-PERPETUAL":
            assert ratio == pytest.approx(1.0, abs=0.002)
    assert option.shifted == 0
    assert sim.instruments[("deribit", "ETH-PERPETUAL")].shifted == 0
    # truth follows the book
    assert float(sim.instruments[("deribit", "BTC-PERPETUAL")].truth[-1][1]) > before[("deribit", "BTC-PERPETUAL")]
    # the subscriber's messages rebuild the book: sequence chained
    messages = []
    while not conn.queue.empty():
        messages.append(orjson.loads(conn.queue.get_nowait()[0]))
    item = messages[0]["data"][0]
    assert messages[0]["action"] == "snapshot"
    bids = {Decimal(p): Decimal(s) for p, s, *_ in item["bids"]}
    asks = {Decimal(p): Decimal(s) for p, s, *_ in item["asks"]}
    seq = item["seqId"]
    for msg in messages[1:]:
        if "action" not in msg:
            continue
        item = msg["data"][0]
        assert item["prevSeqId"] == seq
        seq = item["seqId"]
        _apply(bids, asks, [("b", p, s) for p, s, *_ in item["bids"]] + [("a", p, s) for p, s, *_ in item["asks"]])
        assert item["checksum"] == 0  # OKX sends no checksum since 2026-06-23
    assert (bids, asks) == _sides(okx.book)
    # a book born after the move starts at the moved level
    assert _mid(sim, "bybit-linear", "BTCUSDT") == pytest.approx(65_000 * 1.05, rel=0.002)
    assert _mid(sim, "bybit-linear", "ETHUSDT") == pytest.approx(1_920, rel=0.002)


async def test_new_move_replaces_running_one(sim: Simulator) -> None:
    sim.instrument("deribit", "BTC-PERPETUAL")
    forward = sim.forwards.peek("BTC")
    sim.move("BTC", 50, 10)
    first = sim.moves["BTC"]
    await asyncio.sleep(0.1)
    sim.move("BTC", 0, 0.05)
    await asyncio.sleep(0)
    assert first.cancelled()
    await sim.moves["BTC"]
    assert sim.forwards.peek("BTC") / forward - 1 < 0.01  # stopped near where the first move got to
    level = sim.forwards.peek("BTC")
    await asyncio.sleep(0.6)
    assert sim.forwards.peek("BTC") == level


async def test_control_move_route(sim: Simulator) -> None:
    async with TestClient(TestServer(sim.app())) as client:
        async def post(body: Any) -> tuple[int, Any]:
            resp = await client.post("/control/move", data=body if isinstance(body, str) else orjson.dumps(body))
            return resp.status, await resp.json()

        for bad in ({"coin": "BTC", "pct": 5}, {"coin": "BTC", "pct": 5, "seconds": 0},
                    {"coin": "BTC", "pct": "5", "seconds": 1}, {"coin": "BTC", "pct": -100, "seconds": 1},
                    {"coin": 1, "pct": 5, "seconds": 1}, {"coin": "", "pct": 5, "seconds": 1}, [1], "nonsense"):
            status, body = await post(bad)
            assert status == 400, bad
            assert body["error"]
            assert "\n" not in body["error"]
        assert await post({"coin": "eth", "pct": -10, "seconds": 0.1}) == (200, {"ok": True})
        await sim.moves["ETH"]
        status = await (await client.get("/control/status")).json()
        assert status["forwards"]["ETH"] == pytest.approx(2_000 * 0.9, rel=1e-9)
        assert status["forwards"]["BTC"] == pytest.approx(65_000)


def test_no_simulated_book_ever_quotes_a_price_at_or_below_zero() -> None:
    """A cheap option's model mid is a few ticks; its book's depth is more: the initial bids went
    down to a price of 0 (ETH-26MAR27-2050-P: mid 30 ticks, 30 levels), which bookstream rightly
    refuses and no venue sends."""
    import zlib

    from app.simulator.model import TrueBook

    cheap = next(f"ETH-26MAR27-{k}-P" for k in range(1000, 100_000, 25)
                 if zlib.crc32(f"ETH-26MAR27-{k}-P".encode()) % 200 == 0)  # the lowest mid the model gives
    book = TrueBook(cheap)
    assert book.spec.mid_ticks <= book.spec.depth  # deeper than its mid: the case
    for _ in range(200):
        book.step()
        assert min(book.bids) >= 1
        assert min(book.asks) >= 1


@pytest.mark.parametrize("symbol", ["BTC-PERPETUAL", "ETH-27MAR26-2000-P", "C7USDT"])
def test_the_simulated_books_kept_best_levels_are_always_the_true_ones(symbol: str) -> None:
    """``TrueBook.best`` is kept between changes instead of scanning both sides per event: after
    every step, shift and crossing (which writes the sides directly) it must equal the scan."""
    from app.simulator.server import Instrument

    sim = Simulator(seed=5)
    inst = Instrument("dydx", symbol, TrueBook(symbol, seed=11))
    book, rng = inst.book, random.Random(3)
    for _ in range(3000):
        r = rng.random()
        if r < 0.02:
            book.shift(rng.randint(-40, 40))
        elif r < 0.04:
            sim._cross(inst)  # noqa: SLF001 - the dydx-cross fault's write of the true book
            book._refill({})  # noqa: SLF001 - what the next step does first: the sides populated
        else:
            book.step()
        assert book.best() == (max(book.bids), min(book.asks))
