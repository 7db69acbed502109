"""The venues' request limits, kept on our side (``app.venues.session.Limits``).

A :class:`Window` allows at most ``n`` units (messages, connection opens, REST weight) in any
window of ``seconds`` — a sliding log, stricter than a venue's token bucket or fixed minute —
counted over a window 10 % longer than the venue's (50 % for a window of 2 s or less: a loaded
event loop, here or at the venue, can stall for a moment and then pass on frames sent apart all
at once, and a venue that counts a sliding second sees them together); and a short window
(10 s or less) spaces its units evenly (``seconds / n`` apart) instead of sending ``n`` at once.

:class:`Pacing` holds the windows shared by every connection of one scope (one IP: all Binance
USD-M and COIN-M connections share one REST budget); :func:`acquire` waits on several at once.
A :class:`RestBudget` also honours what the venue says: its own count of the weight used
(``X-MBX-USED-WEIGHT-1M``), ``Retry-After`` on a 429, and a 418 (the IP banned) as a stop of
every REST request of the scope until the ban ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from app import metrics
from app.venues.session import Rate

log = logging.getLogger(__name__)

SAFETY = 1.1  # a window counted this much longer than the venue's
SHORT_SAFETY = 1.5  # a window of 2 s or less: half as long again (a stall of a loop, here or there)
SPACED = 10.0  # windows this short (seconds) space their units evenly


class Window:
    """At most ``n`` units in any ``seconds`` (``n`` 0: no limit)."""

    def __init__(self, rate: Rate) -> None:
        self.n, self.seconds = int(rate[0]), float(rate[1]) * (SHORT_SAFETY if 0 < rate[1] <= 2 else SAFETY)
        self.log: deque[tuple[float, int]] = deque()
        self.used = 0
        self.blocked_until = 0.0  # the venue said to wait (Retry-After)

    def _expire(self, now: float) -> None:
        log_, edge = self.log, now - self.seconds
        while log_ and log_[0][0] <= edge:
            self.used -= log_.popleft()[1]

    def delay(self, now: float, units: int = 1) -> float:
        """Seconds to wait before ``units`` more fit (0: now)."""
        wait = max(0.0, self.blocked_until - now)
        if self.n <= 0:
            return wait
        if self.log and self.seconds <= SPACED * SAFETY:  # (a short window: spaced)
            wait = max(wait, self.log[-1][0] + self.seconds / self.n - now)
        self._expire(now)
        units = min(units, self.n)  # a request heavier than the whole budget waits for an empty window
        excess = self.used + units - self.n
        if excess <= 0:
            return wait
        freed = 0
        for at, n in self.log:
            freed += n
            if freed >= excess:
                return max(wait, at + self.seconds - now)
        return max(wait, self.seconds)

    def add(self, now: float, units: int = 1) -> None:
        if self.n > 0:
            self.log.append((now, units))
            self.used += units


async def acquire(windows: list[Window], units: int | Callable[[], int] = 1, counter: str = "") -> int:
    """Wait until ``units`` fit in every window, then take them; returns the units taken. ``units``
    may be a function, asked again after each wait (a snapshot's weight follows the queue at
    the moment it goes). A wait is counted under ``counter`` when it starts."""
    waited = 0.0
    while True:
        now = time.monotonic()
        n = units() if callable(units) else units
        wait = max((w.delay(now, n) for w in windows), default=0.0)
        if wait <= 0:
            for w in windows:
                w.add(now, n)
            return n
        if not waited and counter:
            metrics.count(counter)
        waited += wait
        await asyncio.sleep(wait)


class RestBudget(Window):
    """A REST weight budget that also follows the venue's own word (see the module)."""

    def __init__(self, rate: Rate, scope: str) -> None:
        super().__init__(rate)
        self.scope = scope
        self.banned_until = 0.0  # wall clock, for the log line
        self.waiting = 0  # requests queued on this budget (the snapshot depth is chosen against it)

    def observe(self, used: int) -> None:
        """The venue's count of the weight used in its current window: never believe less."""
        now = time.monotonic()
        self._expire(now)
        if used > self.used:
            self.add(now, used - self.used)

    def throttled(self, status: int, retry_after: float) -> None:
        """A 429 (slow down) or 418 (banned): nothing more of this scope until ``retry_after``."""
        retry_after = max(retry_after, 1.0)
        self.blocked_until = max(self.blocked_until, time.monotonic() + retry_after)
        metrics.count(f"rest_throttled.{self.scope}.{status}")
        if status == 418:
            self.banned_until = time.time() + retry_after
            log.error("%s: the venue banned this IP from its REST API for %.0f s (HTTP 418); every REST request "
                      "of %s waits until %s", self.scope, retry_after, self.scope,
                      time.strftime("%H:%M:%S", time.gmtime(self.banned_until)))
        else:
            log.warning("%s: REST request limit reached (HTTP %d); waiting %.0f s as the venue asks (Retry-After)",
                        self.scope, status, retry_after)


class Pacing:
    """The windows shared by the connections of one process, by (scope, what)."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, str], Window] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    def opening(self, scope: str) -> asyncio.Lock:
        """Held by a connection of ``scope`` from connecting until it has sent its subscriptions."""
        return self.locks.setdefault(scope, asyncio.Lock())

    def shared(self, scope: str, what: str, rate: Rate) -> Window:
        window = self.windows.get((scope, what))
        if window is None:
            window = self.windows[(scope, what)] = RestBudget(rate, scope) if what == "rest" else Window(rate)
        return window

    def rest(self, scope: str, rate: Rate) -> RestBudget:
        budget = self.shared(scope, "rest", rate)
        assert isinstance(budget, RestBudget)
        return budget


def retry_after(value: str | None, default: float) -> float:
    """A ``Retry-After`` header in seconds (``default`` when absent or not a number)."""
    try:
        return float(value) if value else default
    except ValueError:
        return default
