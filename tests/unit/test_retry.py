"""The one backoff of every reconnect and retry loop."""

from __future__ import annotations

from app.retry import Backoff, backoff


def test_waits_double_to_the_cap_with_jitter_and_never_zero() -> None:
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (500, 30.0)):
        waits = [backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 100  # jittered: clients that failed together do not retry in step


def test_a_loop_counts_its_attempts_and_starts_over_after_a_success() -> None:
    retry = Backoff(base=1.0, cap=8.0)
    waits = [retry.next() for _ in range(5)]
    for wait, (low, high) in zip(waits, [(0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8)], strict=True):
        assert low <= wait <= high
    retry.reset()
    assert 0.5 <= retry.next() <= 1.0
