"""One backoff for every reconnect and retry loop: capped exponential with jitter.

The n-th wait (n from 0) is drawn from ``[d / 2, d]`` with ``d = min(cap, base · 2ⁿ)`` ("equal
jitter"): many clients that failed together (every connection after a network blip, every
producer after a broker failover) spread their retries instead of retrying in step, and none
retries at once in a hot loop. :class:`Backoff` keeps the count for a loop; ``reset`` after a
success.
"""

from __future__ import annotations

import asyncio
import random


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry ``attempt`` (0 first)."""
    ceiling = min(cap, base * 2 ** min(attempt, 62))
    return random.uniform(ceiling / 2, ceiling)


class Backoff:
    """The retries of one loop: ``await backoff.sleep()`` after each failure, ``reset()`` after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap = base, cap
        self.attempt = 0

    def next(self) -> float:
        """The next wait, counting the attempt."""
        delay = backoff(self.attempt, self.base, self.cap)
        self.attempt += 1
        return delay

    async def sleep(self) -> float:
        delay = self.next()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        self.attempt = 0
