"""The batching producer's lanes (app.lanes), through both of its sinks: how often each topic
partition sends a batch, order and retries across failed deliveries and new producers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import pytest
from aiokafka.structs import RecordMetadata

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

    def create_batch(self, nbytes: int | None = None) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[None]:
        self.sent.append((topic, batch.records, time.monotonic()))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_dead_letters_batch_over_a_longer_linger_than_the_books_topics() -> None:
    settings = dataclasses.replace(load(), producer_linger_ms=5)
    sink = OutputSink(settings, {"raw.deadletter": DEADLETTER_LINGER_S})
    producer = _Producer()
    await _running(sink, producer)
    began = time.monotonic()
    try:
        # Up to 1,000 records a second to each lane, counted rather than timed: a loaded machine
        # (2 cores shared with the broker) sleeps longer than asked.
        for _ in range(400):
            sink.add("book.top", 0, b"k", b"v")
            sink.add("raw.deadletter", 0, b"k", b"v")
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - began
        while sink.sent < 800 and time.monotonic() - began < 30:  # noqa: ASYNC110 - the last batches go
            await asyncio.sleep(0.01)  # at their lane's own pace: waiting on delivered() would flush them
    finally:
        sink._task.cancel()
    tops = [n for topic, n, _ in producer.sent if topic == "book.top"]
    dead = [(n, t) for topic, n, t in producer.sent if topic == "raw.deadletter"]
    assert sum(tops) == sum(n for n, _ in dead) == 400  # every record sent, in both lanes
    assert len(tops) > 40  # the books' lane: a batch per ~5 ms (400 records over >= 0.4 s)
    assert len(dead) <= elapsed / DEADLETTER_LINGER_S + 2  # dead letters: at most one batch per 100 ms
    gaps = [b - a for (_, a), (_, b) in zip(dead, dead[1:], strict=False)]
    assert min(gaps) >= DEADLETTER_LINGER_S * 0.95


class _SlowProducer(_Producer):
    """Each batch acknowledged ``ack_s`` after it is sent (a broker's round trip)."""

    def __init__(self, ack_s: float) -> None:
        super().__init__()
        self.ack_s = ack_s

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[None]:
        self.sent.append((topic, batch.records, time.monotonic()))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(self.ack_s, fut.set_result, None)
        return fut


async def test_a_busy_lane_sends_what_gathered_during_a_round_trip_as_one_batch() -> None:
    """One batch in flight per lane: a lane's throughput is its batch size per broker round trip.
    With 16 KB batches (the former default) a lane of 800-byte tickers carried ~20 records a
    round trip and fell seconds behind at a few thousand a second (measured: `make bench`
    latency step); the default batch holds a round trip's worth of a busy topic."""
    settings = load()
    sink = OutputSink(settings)
    producer = _SlowProducer(0.05)
    await _running(sink, producer)
    try:
        sink.add("ticker", 0, b"k", b"x" * 800)  # goes at once, alone
        await asyncio.sleep(0.01)
        for _ in range(1000):  # 800 KB arrive while it is in flight
            sink.add("ticker", 0, b"k", b"x" * 800)
        await asyncio.wait_for(sink.delivered(), timeout=10)
    finally:
        sink._task.cancel()
    assert [n for _, n, _ in producer.sent] == [1, 1000]


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


class _FlakyProducer(_Producer):
    """Fails its first ``fail`` deliveries with ``error``; holds deliveries while ``hold`` is set."""

    def __init__(self, error: BaseException | None = None, fail: int = 0) -> None:
        super().__init__()
        self.error, self.fail = error, fail
        self.records: list[tuple[str, int]] = []  # (topic, record index) delivered, in order
        self.hold = asyncio.Event()
        self.hold.set()
        self.stopped = False

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch_records = list(batch.values)

        async def deliver() -> None:
            await self.hold.wait()
            if self.fail:
                self.fail -= 1
                fut.set_exception(self.error or RuntimeError("no error given"))
                return
            self.delivered(topic, batch_records)
            fut.set_result(None)

        asyncio.get_running_loop().create_task(deliver())
        return fut

    def delivered(self, topic: str, values: list[bytes]) -> None:
        self.records.extend((topic, int(v.rstrip(b"x"))) for v in values)

    def create_batch(self, nbytes: int | None = None) -> _Batch:
        batch = _Batch()
        batch.values = []  # type: ignore[attr-defined]
        append = batch.append

        def keep(key: bytes, value: bytes, timestamp: Any, headers: Any = ()) -> object:
            batch.values.append(value)  # type: ignore[attr-defined]
            return append(key, value, timestamp)

        batch.append = keep  # type: ignore[method-assign]
        return batch

    async def stop(self) -> None:
        self.stopped = True


async def _running(sink: OutputSink, producer: _Producer, replacement: _Producer | None = None) -> None:
    """The sink sending with ``producer``, and with ``replacement`` if it replaces it."""
    producers = [producer, replacement]

    async def connect() -> _Producer:
        assert producers, "the sink replaced a producer that had no fatal error"
        given = producers.pop(0)
        assert given is not None, "the sink replaced a producer that had no fatal error"
        return given

    sink._connect = connect  # type: ignore[method-assign]
    sink._task = asyncio.get_running_loop().create_task(sink._run())
    await sink.connected()


async def test_a_fatal_producer_error_recreates_the_producer_and_sends_everything_again_in_order() -> None:
    from aiokafka.errors import OutOfOrderSequenceNumber

    sink = OutputSink(dataclasses.replace(load(), producer_linger_ms=1))
    first, second = _FlakyProducer(OutOfOrderSequenceNumber(), fail=1), _FlakyProducer()
    await _running(sink, first, second)
    try:
        for i in range(200):
            sink.add("book.top", 0, b"k", str(i).encode())
            if i % 20 == 0:
                await asyncio.sleep(0.002)
        await asyncio.wait_for(sink.delivered(), timeout=10)
    finally:
        assert sink._task is not None
        sink._task.cancel()
    assert first.stopped  # replaced
    delivered = [i for _, i in first.records + second.records]
    assert delivered == list(range(200))  # nothing lost, nothing out of order
    assert sink.failed == 0
    assert sink.retried >= 1
    assert sink.pending_bytes == 0


async def test_over_budget_room_waits_until_half_is_delivered_and_nothing_is_dropped() -> None:
    sink = OutputSink(dataclasses.replace(load(), producer_linger_ms=1, output_buffer_mb=1.0))
    producer = _FlakyProducer()
    producer.hold.clear()  # Kafka takes nothing for now
    await _running(sink, producer)
    try:
        value = b"x" * 1000
        n = 0
        while not sink.full():
            sink.add("book.top", n % 4, b"k", str(n).encode() + value)
            n += 1
        room = asyncio.ensure_future(sink.room())
        await asyncio.sleep(0.05)
        assert not room.done()  # still over budget: the agent waits
        producer.hold.set()
        await asyncio.wait_for(room, timeout=10)
        await asyncio.wait_for(sink.delivered(), timeout=10)
    finally:
        assert sink._task is not None
        sink._task.cancel()
    assert len(producer.records) == n > 1000  # every record delivered
    assert sink.failed == 0
    assert sink.pauses == 1


class _OffsetProducer(_Producer):
    """Acknowledges each batch as the broker does: the offset its first record was given."""

    def __init__(self) -> None:
        super().__init__()
        self.next: dict[tuple[str, int], int] = {}

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        self.sent.append((topic, batch.records, time.monotonic()))
        base = self.next.get((topic, partition), 100)
        self.next[(topic, partition)] = base + batch.records
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(RecordMetadata(topic, partition, None, base, -1, 0, 0))
        return fut


async def test_each_lane_knows_the_offset_of_its_last_acknowledged_record() -> None:
    """The risk engine reading this worker's outputs knows it has not read all of a partition
    while a record acknowledged there has an offset past what it read (app.risk.service._behind)."""
    sink = OutputSink(dataclasses.replace(load(), producer_linger_ms=1))
    producer = _OffsetProducer()
    await _running(sink, producer)
    try:
        assert sink.acknowledged_to("ticker", 1) == -1
        for n in range(7):
            sink.add("ticker", 1, b"k", b"%d" % n)
            sink.add("book.top", 2, b"k", b"%d" % n)
            await asyncio.sleep(0.002)  # several batches
        await asyncio.wait_for(sink.delivered(), timeout=10)
    finally:
        assert sink._task is not None
        sink._task.cancel()
    assert sum(1 for topic, _, _ in producer.sent if topic == "ticker") > 1
    assert sink.acknowledged_to("ticker", 1) == sink.acknowledged_to("book.top", 2) == 106  # 100 … 106
    assert sink.acknowledged_to("ticker", 2) == -1


async def test_an_accepted_batch_that_fails_gets_a_new_idempotent_producer_even_for_a_retriable_error() -> None:
    """aiokafka fails an expired batch of a partition without a leader (NotLeaderForPartition, retriable)
    after it may have taken a sequence number: the next batch of that partition would fail with
    OutOfOrderSequenceNumber for good. So any failed delivery of an idempotent producer replaces it."""
    from aiokafka.errors import NotLeaderForPartitionError

    sink = OutputSink(dataclasses.replace(load(), producer_linger_ms=1))
    first, second = _FlakyProducer(NotLeaderForPartitionError(), fail=1), _FlakyProducer()
    await _running(sink, first, second)
    try:
        for i in range(50):
            sink.add("book.top", 1, b"k", str(i).encode())
        await asyncio.wait_for(sink.delivered(), timeout=10)
    finally:
        assert sink._task is not None
        sink._task.cancel()
    assert first.stopped
    assert sink.producer_restarts == 1
    assert [i for _, i in first.records + second.records] == list(range(50))


async def test_an_undeliverable_batch_is_given_up_and_the_lane_goes_on() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    sink = OutputSink(dataclasses.replace(load(), producer_linger_ms=1))
    producer = _FlakyProducer(MessageSizeTooLargeError(), fail=1)
    await _running(sink, producer)
    try:
        sink.add("book.top", 0, b"k", b"0")
        await asyncio.wait_for(sink.delivered(), timeout=10)
        sink.add("book.top", 0, b"k", b"1")
        await asyncio.wait_for(sink.delivered(), timeout=10)
    finally:
        assert sink._task is not None
        sink._task.cancel()
    assert (sink.failed, sink.sent, sink.producer_restarts) == (1, 1, 0)
    assert producer.records == [("book.top", 1)]
    assert sink.pending_bytes == 0


class _RawProducer(_FlakyProducer):
    """Keeps the raw records it delivers (their values), failing the first ``fail`` with ``error``."""

    def __init__(self, error: BaseException | None = None, fail: int = 0) -> None:
        super().__init__(error, fail)
        self.raw: list[tuple[str, bytes]] = []

    def delivered(self, topic: str, values: list[bytes]) -> None:
        self.raw.extend((topic, v) for v in values)


async def test_raw_sink_resends_in_order_with_a_new_producer_after_a_producer_state_error() -> None:
    from aiokafka.errors import OutOfOrderSequenceNumber

    from app.ingest.sink import RawSink
    from app.venues.base import Kind
    from app.wire import RawFrame, decode_record

    settings = dataclasses.replace(load(), raw_batch_linger_ms=50)
    sink = RawSink(settings, 2**20)
    first, second = _RawProducer(OutOfOrderSequenceNumber(), fail=1), _RawProducer()
    sink._connect = _connector([first, second])  # type: ignore[method-assign]
    sink.start()
    await sink.connected()
    try:
        for n in range(200):
            sink.put(RawFrame("okx:BTC-USDT", n, Kind.WS, "c1", b'{"n":%d}' % n))
        assert await sink.flush(within_s=10)
    finally:
        await sink.stop(grace_s=1)
    values = [value for _, value in first.raw + second.raw]
    got = [json.loads(f.data)["n"] for value in values for f in decode_record(None, value, [("v", b"2")])]
    assert got == list(range(200))  # in order, nothing lost, nothing twice
    assert sink.stats()["producer_restarts"] == 1
    assert sink.sent == 200
    assert sink.records < 200  # frames gather into fewer records


def _connector(producers: list[Any]) -> Any:
    async def connect() -> Any:
        assert producers, "a producer replaced more often than expected"
        return producers.pop(0)

    return connect


def test_a_fenced_producers_leftover_future_is_one_warning_and_anything_else_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka.errors import ProducerFenced

    from app.runtime import quiet_fenced_leftovers

    loop = asyncio.new_event_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        quiet_fenced_leftovers(loop)
        with caplog.at_level("WARNING", logger="app.runtime"):
            loop.call_exception_handler({"message": "Future exception was never retrieved",
                                         "exception": ProducerFenced()})
        assert seen == []
        assert "expected after a takeover" in caplog.text
        other = {"message": "Future exception was never retrieved", "exception": RuntimeError("boom")}
        loop.call_exception_handler(other)
        assert seen == [other]  # the handler that was there
    finally:
        loop.close()
