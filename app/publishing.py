"""Rate rules of what the book agent publishes, without Faust or Kafka.

* :class:`ResyncRetry` — ask again for a snapshot of a book that stays unsynced, with backoff;
* :class:`LogLimiter` — one log line per reason per interval, however many bad frames arrive;
* :class:`DepthPublisher` — ``book.depth`` at most every ``DEPTH_INTERVAL_MS`` per instrument;
* :class:`TopConflater` — with ``TOP_CONFLATE_MS`` > 0, at most one ``book.top`` per instrument
  per interval (the latest).

Each takes ``clock`` (monotonic seconds) so that tests can drive time.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Clock = Callable[[], float]
T = TypeVar("T")


class ResyncRetry:
    """Repeat the resync request of a book that stays unsynced (a lost snapshot or request).

    The first repeat comes ``first_s`` (RESYNC_RETRY_S) after the request, then the wait
    doubles, never beyond ``cap_s`` (a minute): 5, 10, 20, 40, 60, 60 … seconds.
    """

    def __init__(self, first_s: float, cap_s: float = 60.0, clock: Clock = time.monotonic) -> None:
        self.first_s = min(first_s, cap_s)
        self.cap_s = cap_s
        self.clock = clock
        self.pending: dict[str, tuple[float, float]] = {}  # key → (next attempt at, wait used for it)

    def requested(self, key: str) -> None:
        """A resync request went out for ``key``: schedule the next one."""
        previous = self.pending.get(key)
        wait = self.first_s if previous is None else min(previous[1] * 2, self.cap_s)
        self.pending[key] = (self.clock() + wait, wait)

    def done(self, key: str) -> None:
        self.pending.pop(key, None)

    def due(self) -> list[str]:
        now = self.clock()
        return [k for k, (at, _) in self.pending.items() if at <= now]


class LogLimiter:
    """At most one log line per reason per ``every_s``: a flood of bad frames must not turn
    into a flood of log lines (each dead letter is still counted and published)."""

    def __init__(self, every_s: float = 5.0, clock: Clock = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.windows: dict[str, tuple[float, int]] = {}  # reason → (last line at, suppressed since)

    def allow(self, reason: str) -> tuple[bool, int]:
        """(may log now, how many lines of this reason were suppressed before it)."""
        now = self.clock()
        last, suppressed = self.windows.get(reason, (now - self.every_s, 0))
        if now - last >= self.every_s:
            self.windows[reason] = (now, 0)
            return True, suppressed
        self.windows[reason] = (last, suppressed + 1)
        return False, 0


class DepthPublisher:
    """``book.depth`` at most every ``interval_s`` per instrument; the last change always goes
    out. A change only marks its book (:meth:`touch`, on the frame path); :meth:`flush`
    publishes the marked books whose interval has passed — an aggregate of a deep book costs
    tens of microseconds, work the worker does after the raw records in hand, not between them."""

    def __init__(self, interval_s: float, publish: Callable[[str], None], clock: Clock = time.monotonic) -> None:
        self.interval_s = interval_s
        self.publish = publish  # publish(key): builds and sends the record (if the book is synced)
        self.clock = clock
        self.last: dict[str, float] = {}
        self.dirty: set[str] = set()
        #: (due at, key) of every marked book, soonest first (exactly the keys of ``dirty``:
        #: :meth:`forget` takes both): a flush looks at the books that are due, not at every marked one
        self.queue: list[tuple[float, str]] = []

    def touch(self, key: str) -> None:
        """The book moved."""
        if key not in self.dirty:
            self.dirty.add(key)
            heapq.heappush(self.queue, (self.last.get(key, -self.interval_s) + self.interval_s, key))

    def due(self) -> bool:
        """A marked book's interval has passed."""
        queue = self.queue
        return bool(queue) and queue[0][0] <= self.clock()

    def flush(self, budget_s: float | None = None) -> None:
        """Publish the marked books whose interval has passed, longest waiting first; with
        ``budget_s``, stop once that long was spent (the rest go at the next flush), so that a
        thousand due books never hold the event loop at once."""
        now = self.clock()
        queue = self.queue
        while queue and queue[0][0] <= now:
            self._publish(heapq.heappop(queue)[1])
            if budget_s is not None and self.clock() - now >= budget_s:
                break

    def forget(self, keys: set[str]) -> None:
        """Books no longer here: unmarked, out of the queue (a book that comes back waits for its
        next move)."""
        self.dirty -= keys
        self.queue = [(at, key) for at, key in self.queue if key not in keys]
        heapq.heapify(self.queue)

    def _publish(self, key: str) -> None:
        self.dirty.discard(key)
        self.last[key] = self.clock()  # the moment of publishing: spacing is measured from it
        self.publish(key)


class TopConflater(Generic[T]):
    """Keeps the latest value per instrument and hands them out at most every ``interval_s``."""

    def __init__(self, interval_s: float, clock: Clock = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.latest: dict[str, T] = {}
        self._next = clock() + interval_s

    def offer(self, key: str, value: T) -> None:
        self.latest[key] = value

    def due(self) -> list[T]:
        """The values to publish now (each instrument's latest), or [] before the interval ends."""
        now = self.clock()
        if now < self._next or not self.latest:
            return []
        self._next = now + self.interval_s
        out, self.latest = list(self.latest.values()), {}
        return out
