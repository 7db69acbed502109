"""The send_soon buffer faust flushes before committing source offsets.

faust's own flush returns once a message takes over 0.1 s to hand on, leaving table
changelog rows queued behind an offset commit; a worker killed then loses them, and the
worker taking over resumes past frames its table never saw. Ours waits for all of them.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.producer import ProducerBuffer

from app.core import DrainingProducerBuffer, app

#: faust's own class (the module attribute is ours once app.core is imported)
FaustProducerBuffer = DrainingProducerBuffer.__bases__[0]


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


async def _flush_after_putting(buffer_cls: type[ProducerBuffer], n: int, delay_s: float) -> list[int]:
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
        return at_flush
    finally:
        await buf.stop()


async def test_flush_returns_only_when_every_message_queued_before_it_was_handed_on() -> None:
    assert await _flush_after_putting(DrainingProducerBuffer, 4, 0.15) == [0, 1, 2, 3]


async def test_fausts_own_flush_gives_up_early_which_is_why_ours_exists() -> None:
    assert FaustProducerBuffer.__module__ == "faust.transport.producer"
    handed = await _flush_after_putting(FaustProducerBuffer, 4, 0.15)
    assert len(handed) < 4  # if faust ever fixes this, DrainingProducerBuffer can go


@pytest.mark.parametrize("n", [0, 1, 50])
async def test_flush_with_fast_sends(n: int) -> None:
    assert await _flush_after_putting(DrainingProducerBuffer, n, 0.0) == list(range(n))


def test_the_app_producer_uses_it() -> None:
    assert isinstance(app.producer.buffer, DrainingProducerBuffer)
