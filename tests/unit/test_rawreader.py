"""The raw reader's loop: records first, the deferred outputs (options chains, book.depth) in
slices between its batches, so that a burst of frames never waits behind them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from app.config import Settings
from app.rawreader import IDLE_MS, SLICE_S, RawReader
from app.retry import Backoff

TP = TopicPartition("raw.x", 0)


class Consumer:
    """Hands out the batches it is given; a batch that "arrives" while deferred work waits is
    queued by the publisher below. Ends the reader once nothing is left."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches
        self.timeouts: list[int] = []

    async def start(self) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 100)

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        self.timeouts.append(timeout_ms)
        if not self.batches:
            if timeout_ms:  # idle with nothing deferred: the scenario is over
                raise asyncio.CancelledError
            return {}
        offsets = self.batches.pop(0)
        return {TP: [SimpleNamespace(topic=TP.topic, partition=0, offset=o, key=b"k", value=b"v", headers=[],
                                     timestamp=0) for o in offsets]}


class Publisher:
    """``pieces`` of deferred work, one per call; the first call also sees a new record arrive."""

    def __init__(self, log: list[Any], consumer: Consumer, pieces: int) -> None:
        self.log, self.consumer, self.pieces = log, consumer, pieces
        self.budgets: list[float] = []

    def deferred(self) -> bool:
        return self.pieces > 0

    async def publish_deferred(self, budget_s: float) -> bool:
        self.budgets.append(budget_s)
        self.pieces -= 1
        self.log.append(("deferred", self.pieces))
        if len(self.budgets) == 1:
            self.consumer.batches.append([7])  # fetched meanwhile
        return self.deferred()


def reader(log: list[Any], batches: list[list[int]], pieces: int) -> tuple[RawReader, Consumer, Publisher]:
    consumer = Consumer(batches)
    publisher = Publisher(log, consumer, pieces)
    runtime = SimpleNamespace(
        settings=Settings(), topics=SimpleNamespace(raw=[TP.topic]), publisher=publisher,
        sink=SimpleNamespace(full=lambda: False),
        handle=lambda topic, partition, offset, key, value, headers: log.append(("record", offset)),
        positions=lambda tps: {tp: 3 for tp in tps}, start_at=lambda *a, **k: None)
    r = RawReader(runtime)  # type: ignore[arg-type]
    r._new_consumer = lambda: consumer  # type: ignore[method-assign]
    r.resume({0})
    return r, consumer, publisher


def test_records_that_arrive_while_deferred_outputs_wait_are_applied_before_the_rest_of_them() -> None:
    log: list[Any] = []
    r, consumer, publisher = reader(log, [[3, 4]], pieces=3)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(r._serve(Backoff(0.1, 1.0)))
    assert log == [("record", 3), ("record", 4), ("deferred", 2), ("record", 7), ("deferred", 1), ("deferred", 0)]
    # while deferred work waited the reader only looked for records already there; idle, it waits
    assert consumer.timeouts == [IDLE_MS, 0, 0, IDLE_MS]
    assert publisher.budgets == [SLICE_S] * 3


def test_a_reader_with_nothing_deferred_waits_for_records() -> None:
    log: list[Any] = []
    r, consumer, _ = reader(log, [[3], [4]], pieces=0)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(r._serve(Backoff(0.1, 1.0)))
    assert log == [("record", 3), ("record", 4)]
    assert consumer.timeouts == [IDLE_MS] * 3


class Reassigned(Consumer):
    """Like aiokafka's consumer: asking the high watermark of a partition not assigned is an
    AssertionError; and each offsets request is a wait, during which the loop runs others."""

    def __init__(self) -> None:
        super().__init__([])
        self.assigned: set[TopicPartition] = set()
        self.asked: list[list[tuple[str, int]]] = []

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = set(tps)

    def highwater(self, tp: TopicPartition) -> int | None:
        assert tp in self.assigned, "Partition is not assigned"
        return 100

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        await asyncio.sleep(0)
        return await super().beginning_offsets(tps)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        await asyncio.sleep(0)
        return await super().end_offsets(tps)


def test_what_the_reader_says_it_reads_is_always_what_its_consumer_holds() -> None:
    """A rebalance moves the reader from table partition 0 to 1: while it asks Kafka where the
    new partitions start and end, the risk engine asks the lag of what it reads (``highwater``
    of each partition of ``assignment()``). Seen in a two-worker kill test: the reader still
    named partition 0, which its consumer no longer held — aiokafka's AssertionError stopped
    the risk engine for 5 s."""
    log: list[Any] = []
    r, _, _ = reader(log, [], pieces=0)
    consumer = Reassigned()
    r.consumer = consumer
    r.runtime.topics.raw = ["raw.x", "raw.y"]

    async def scenario() -> None:
        await r._reposition(consumer)  # type: ignore[arg-type]
        assert r.assignment() == [("raw.x", 0), ("raw.y", 0)]
        r.resume({1})
        moving = asyncio.ensure_future(r._reposition(consumer))  # type: ignore[arg-type]
        while not moving.done():
            consumer.asked.append(r.assignment())
            for topic, partition in r.assignment():
                r.highwater(topic, partition)  # AssertionError if not assigned
            await asyncio.sleep(0)
        await moving

    asyncio.run(scenario())
    assert len(consumer.asked) >= 2  # it was asked while the offsets were on their way
    assert r.assignment() == [("raw.x", 1), ("raw.y", 1)]
