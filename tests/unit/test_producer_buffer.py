"""The send_soon buffer faust flushes before committing source offsets.

faust's flush returns once a record takes over 0.1 s to hand on, leaving table changelog
rows queued behind an offset commit. Ours counts the records put and handed on, so the
book agent caps commits at records whose rows were handed on (tests/unit/test_offsets.py).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

from app.core import CountingProducerBuffer, app

#: faust's own class (the module attribute is ours once app.core is imported)
FaustProducerBuffer = CountingProducerBuffer.__bases__[0]


class SlowChannel:
    """Stands in for a topic whose records take a while to reach aiokafka (busy loop, full accumulator)."""

    def __init__(self, delay_s: float, expect: int) -> None:
        self.delay_s = delay_s
        self.handed: list[int] = []
        self.expect = expect
        self.all_handed = asyncio.Event()
        if expect == 0:
            self.all_handed.set()

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.delay_s)
        self.handed.append(fut.n)
        if len(self.handed) == self.expect:
            self.all_handed.set()


async def _run(buffer_cls: type[ProducerBuffer], n: int, delay_s: float, check: Any) -> list[int]:
    """Put ``n`` records, flush, call ``check(buffer)``; returns what was handed on when flush returned."""
    buf = buffer_cls()
    buf.app = app
    channel = SlowChannel(delay_s, n)
    await buf.start()
    try:
        for i in range(n):
            buf.put(SimpleNamespace(n=i, message=SimpleNamespace(channel=channel)))  # type: ignore[arg-type]
        await buf.flush()
        at_flush = list(channel.handed)
        await asyncio.wait_for(channel.all_handed.wait(), 10)  # the rest, before stopping (faust refuses mid-send)
        check(buf)
        return at_flush
    finally:
        await buf.stop()


async def test_fausts_flush_gives_up_early_which_is_why_commits_are_capped_by_count() -> None:
    assert FaustProducerBuffer.__module__ == "faust.transport.producer"
    handed = await _run(FaustProducerBuffer, 4, 0.15, lambda buf: None)
    assert len(handed) < 4  # if faust ever fixes this, the count cap in app.offsets can go


async def test_the_counts_follow_what_was_put_and_what_was_handed_on() -> None:
    seen: list[tuple[int, int]] = []

    def counts(buf: Any) -> None:
        seen.append((buf.queued, buf.handed))

    handed_at_flush = await _run(CountingProducerBuffer, 4, 0.15, counts)
    assert seen == [(4, 4)]
    assert len(handed_at_flush) < 4  # its flush is faust's: no stall at commits


async def test_the_counts_with_fast_sends() -> None:
    seen: list[tuple[int, int]] = []
    await _run(CountingProducerBuffer, 50, 0.0, lambda buf: seen.append((buf.queued, buf.handed)))
    assert seen == [(50, 50)]


def test_the_app_producer_uses_it() -> None:
    assert isinstance(app.producer.buffer, CountingProducerBuffer)
