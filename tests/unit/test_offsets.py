"""Offset commits cover only records the book agent handled (app.offsets, agents.books).

faust acks the records its stream skips during a rebalance as if processed; committing
them made the next owner of a partition resume past frames nobody applied.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from faust.types import TP

from app.offsets import HandledOffsets

RAW = TP("raw.okx", 1)
OTHER = TP("other", 0)


class Buffer:
    """The producer buffer's counters: records put, records handed to aiokafka."""

    def __init__(self) -> None:
        self.queued = self.handed = 0


def offsets(committed: dict[Any, int] | None = None, buf: Buffer | None = None) -> HandledOffsets:
    """Offsets whose writes are handed on at once, unless a ``buf`` says otherwise."""
    committed = committed or {}
    if buf is None:
        return HandledOffsets(committed.get, lambda: {"raw.okx"}, queued=lambda: 0, handed=lambda: 0)
    return HandledOffsets(committed.get, lambda: {"raw.okx"}, queued=lambda: buf.queued, handed=lambda: buf.handed)


def test_commits_are_capped_at_the_end_of_the_handled_run() -> None:
    h = offsets({RAW: 100})
    for o in range(100, 110):
        h.handled(RAW, o)
    # faust would commit 121: records 110..120 were acked while skipped (flow stopped)
    assert h.cap({RAW: 121}) == {RAW: 110}
    assert h.cap({RAW: 105}) == {RAW: 105}


def test_a_partition_with_nothing_handled_since_the_assignment_is_not_committed() -> None:
    h = offsets({RAW: 100})
    assert h.cap({RAW: 130}) == {}
    h.handled(RAW, 100)
    h.reset()
    assert h.cap({RAW: 130}) == {}


def test_other_topics_pass_through() -> None:
    assert offsets().cap({OTHER: 7}) == {OTHER: 7}


def test_a_record_past_the_committed_offset_is_a_hole_that_caps_until_it_is_redelivered(
        caplog: pytest.LogCaptureFixture) -> None:
    h = offsets({RAW: 100})
    with caplog.at_level(logging.WARNING):
        h.handled(RAW, 108)  # 100..107 never reached the agent
        h.handled(RAW, 109)
    assert h.cap({RAW: 110}) == {}  # nothing before the hole was handled: nothing to commit
    assert sum("records 100 to 107 did not reach the book agent" in r.message for r in caplog.records) == 1
    for o in range(100, 110):  # redelivered (after a rebalance, say)
        h.handled(RAW, o)
    assert h.cap({RAW: 110}) == {RAW: 110}
    assert not h.holes


def test_commits_wait_for_the_changelog_rows_still_in_the_producer_buffer() -> None:
    buf = Buffer()
    h = offsets({RAW: 100}, buf)
    for o in range(100, 110):
        buf.queued += 5  # each record put five rows in the buffer
        h.handled(RAW, o)
    assert h.cap({RAW: 110}) == {}  # none handed on yet: nothing may be committed
    buf.handed = 23  # rows of records 100..103 handed on, 104's only in part
    assert h.cap({RAW: 110}) == {RAW: 104}
    buf.handed = buf.queued
    assert h.cap({RAW: 110}) == {RAW: 110}
    assert h.cap({RAW: 108}) == {RAW: 108}


def test_redeliveries_below_the_run_change_nothing() -> None:
    h = offsets({RAW: 100})
    for o in (100, 101, 102, 90, 101):
        h.handled(RAW, o)
    assert h.cap({RAW: 200}) == {RAW: 103}


def test_without_a_committed_offset_the_run_starts_at_the_first_record() -> None:
    h = offsets()
    h.handled(RAW, 42)
    h.handled(RAW, 43)
    assert h.cap({RAW: 50}) == {RAW: 44}


async def test_the_worker_commits_through_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import books
    from app.core import app
    from app.topics import RAW_NAMES

    tp = TP(RAW_NAMES[0], 0)
    consumer: Any = app.consumer
    sent: list[dict[Any, int]] = []

    async def commit(offsets: dict[Any, int]) -> bool:
        sent.append(dict(offsets))
        return True

    monkeypatch.setattr(consumer, "_commit", commit)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    monkeypatch.setattr(books, "handled", HandledOffsets(lambda _: 10, lambda: set(RAW_NAMES), queued=lambda: 0,
                                                         handed=lambda: 0))
    for o in range(10, 15):
        books.handled.handled(tp, o)
    await consumer._commit_offsets({tp: 40})  # what faust computed from its acks
    assert sent == [{tp: 15}]
