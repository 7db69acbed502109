"""OutputSink's lanes: how often each topic partition sends a producer batch."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from app.config import load
from app.outputs import DEADLETTER_LINGER_S, OutputSink


class _Batch:
    def __init__(self) -> None:
        self.records = 0

    def append(self, key: bytes, value: bytes, timestamp: Any) -> object:
        self.records += 1
        return object()

    def record_count(self) -> int:
        return self.records

    def size(self) -> int:
        return self.records * 10


class _Producer:
    """Records which lane sent a batch when; every send is delivered at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, float]] = []

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[None]:
        self.sent.append((topic, batch.records, time.monotonic()))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_dead_letters_batch_over_a_longer_linger_than_the_books_topics() -> None:
    settings = dataclasses.replace(load(), producer_linger_ms=5)
    sink = OutputSink(settings, {"raw.deadletter": DEADLETTER_LINGER_S})
    sink._producer = producer = _Producer()
    sink._task = asyncio.get_running_loop().create_task(sink._run())
    began = time.monotonic()
    try:
        while time.monotonic() - began < 0.5:  # 1,000 records a second to each lane
            sink.add("book.top", 0, b"k", b"v")
            sink.add("raw.deadletter", 0, b"k", b"v")
            await asyncio.sleep(0.001)
        await asyncio.sleep(DEADLETTER_LINGER_S + 0.05)
    finally:
        sink._task.cancel()
    tops = [n for topic, n, _ in producer.sent if topic == "book.top"]
    dead = [(n, t) for topic, n, t in producer.sent if topic == "raw.deadletter"]
    assert sum(tops) == sum(n for n, _ in dead) > 300  # every record sent, in both lanes
    assert len(tops) > 40  # the books' lane: a batch per ~5 ms
    assert len(dead) <= 0.5 / DEADLETTER_LINGER_S + 2  # dead letters: at most one batch per 100 ms
    gaps = [b - a for (_, a), (_, b) in zip(dead, dead[1:], strict=False)]
    assert min(gaps) >= DEADLETTER_LINGER_S * 0.95


def test_recent_tickers_merge_deltas_and_channels_for_the_web_view() -> None:
    from app.market.records import Ticker
    from app.outputs import RecentMarket

    recent = RecentMarket()
    key = "bybit-linear:BTCUSDT"
    recent.ticker(key, Ticker("tickers", 1, {"mark": "100", "bid": "99", "funding_rate": "0.0001"}), 10)
    recent.ticker(key, Ticker("tickers", 2, {"bid": "98"}, partial=True), 11)  # a delta
    recent.ticker(key, Ticker("other", 3, {"mark": "101", "bid": None}), 12)
    quote = recent.merged(key)
    assert quote is not None
    assert quote.fields == {"mark": "101", "bid": "98", "funding_rate": "0.0001", "channel": "other"}
    assert (quote.ts_exchange, quote.ts_recv) == (3, 12)
    recent.ticker(key, Ticker("tickers", 4, {"mark": "102"}), 13)  # a full one replaces its channel's fields
    merged = recent.merged(key)
    assert merged is not None
    assert merged.fields["mark"] == "102"
    assert "funding_rate" not in {k for k, v in recent.tickers[key]["tickers"][0].items()}
    assert recent.merged("nothing:here") is None
