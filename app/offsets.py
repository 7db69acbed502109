"""Source offsets the book agent has applied *and* made durable: what offset commits may cover.

Two faust behaviours let a commit run ahead of the books, so that the next worker to
consume a partition (after a kill, a restart or a rebalance) resumed past frames nobody
applied: a sequence gap on the partition's books, or a wrong book where a venue's
sequence cannot show the gap.

* faust acks, and so commits, the records its streams *skip* during a rebalance (flow
  stopped, or fetched in the previous consumer generation), exactly as if processed.
* faust's producer flush before a commit gives up after 0.1 s, so the changelog rows of
  committed frames could still be queued in its send buffer and die with the worker.

:class:`HandledOffsets` caps every commit at both bounds: the unbroken run of records the
agent handled, and among those the ones whose changelog rows were already handed to
aiokafka (whose flush, right before the commit, waits for their delivery).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

#: A topic-partition: faust's TP (``topic``, ``partition``)
TP = Any


class HandledOffsets:
    """Per source partition: the first offset not handled yet, counted from where
    consumption (re)started, and which handled records have their writes handed on.

    Raw topics are plain append-only logs, so their offsets are consecutive: a record past
    the expected one means records in between never reached the agent (faust skipped
    them). Commits of that partition then stay before the first of them, so the next
    consumer of the partition (after a rebalance or restart) reads them again; a book that
    missed a frame meanwhile has gone stale on its sequence and resynced.

    ``queued()`` and ``handed()`` count the producer buffer's records ever put and ever
    handed to aiokafka; a record is durable-bound once ``handed()`` reaches ``queued()`` as
    it was right after the record was handled.
    """

    def __init__(self, start: Callable[[TP], int | None], topics: Callable[[], set[str]],
                 queued: Callable[[], int], handed: Callable[[], int]) -> None:
        self._start = start  # where consumption of a partition (re)starts: its committed offset, if known
        self._topics = topics  # the topics whose commits are capped (the agent's sources)
        self._queued, self._handed = queued, handed
        self.next: dict[TP, int] = {}
        self.holes: dict[TP, tuple[int, int]] = {}
        self._pending: dict[TP, deque[tuple[int, int]]] = {}  # (next offset, buffer mark), oldest first
        self._safe: dict[TP, int] = {}  # the largest next offset whose writes are all handed on

    def reset(self) -> None:
        """A new assignment: every partition restarts from its committed offset."""
        self.next.clear()
        self.holes.clear()
        self._pending.clear()
        self._safe.clear()

    def handled(self, tp: TP, offset: int) -> None:
        """Call after the record's table writes and sends were put in the producer buffer."""
        expected = self.next.get(tp)
        if expected is None:
            expected = self._start(tp)
            if expected is None:  # nothing committed yet: consumption starts where the log does
                expected = offset
        self.next[tp] = expected
        if offset == expected:
            self.next[tp] = offset + 1
            self._pending.setdefault(tp, deque()).append((offset + 1, self._queued()))
            if self.holes.pop(tp, None) is not None:
                log.info("%s:%s: record %d arrived again; commits go on", tp.topic, tp.partition, offset)
        elif offset > expected and tp not in self.holes:
            self.holes[tp] = (expected, offset)
            log.warning("%s:%s: records %d to %d did not reach the book agent (skipped by faust); offsets of this "
                        "partition are committed only up to %d, so they are read again after the next rebalance "
                        "or restart", tp.topic, tp.partition, expected, offset - 1, expected)
        # offset < expected: a redelivery, already counted; past a known hole: still capped

    def cap(self, offsets: Mapping[TP, int]) -> dict[TP, int]:
        """The commit to make instead of ``offsets``: each source partition capped at its
        handled records whose writes are handed on (one with none is not committed)."""
        capped: dict[TP, int] = {}
        topics, handed = self._topics(), self._handed()
        for tp, offset in offsets.items():
            if tp.topic not in topics:
                capped[tp] = offset
                continue
            pending = self._pending.get(tp)
            while pending and pending[0][1] <= handed:
                self._safe[tp] = pending.popleft()[0]
            if tp in self._safe:
                capped[tp] = min(offset, self._safe[tp])
        return capped
