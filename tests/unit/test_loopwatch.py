"""The event-loop heartbeat (bookstream_loop_lag_seconds) and the stall tracer (LOOP_STALL_TRACE_MS)."""

from __future__ import annotations

import asyncio
import bisect
import logging
import time

import pytest

from app import metrics
from app.loopwatch import LoopWatch


def hold_the_loop(seconds: float) -> None:
    """Python work that keeps the loop's thread busy (and the GIL, between switches)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1


def lag_at_least(seconds: float) -> int:
    """Heartbeats observed at least ``seconds`` late (bucket bounds: app.metrics.STAGE_BUCKETS)."""
    return sum(metrics.loop_lag_counts[bisect.bisect_left(metrics.STAGE_BUCKETS, seconds):])


async def run_watched(watch: LoopWatch, hold_s: float, calm_s: float = 0.1) -> None:
    watch.start()
    try:
        await asyncio.sleep(calm_s)  # a few beats on time
        hold_the_loop(hold_s)
        await asyncio.sleep(calm_s)  # the late beat, then the tracer's report
    finally:
        watch.stop()


def test_a_held_loop_is_a_late_heartbeat() -> None:
    before_late, before_all = lag_at_least(0.05), sum(metrics.loop_lag_counts)
    asyncio.run(run_watched(LoopWatch(), 0.08))
    assert lag_at_least(0.05) - before_late >= 1  # the beat that came 80 ms late
    assert sum(metrics.loop_lag_counts) - before_all >= 5  # a beat every 10 ms while calm (0.2 s)


def test_the_tracer_names_the_code_that_held_the_loop(caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.loopwatch.LOG_EVERY_S", 0.0)  # every stall said (a busy machine may add its own)
    watch = LoopWatch(trace_ms=20)
    before = metrics.counters["loop_stalls"]
    with caplog.at_level(logging.WARNING, logger="app.loopwatch"):
        asyncio.run(run_watched(watch, 0.12))
    assert metrics.counters["loop_stalls"] - before == len(watch.stalls) >= 1
    held, stack = max(watch.stalls)
    assert 0.1 <= held < 0.5
    assert stack.startswith("test_loopwatch.py:hold_the_loop:")  # innermost first
    assert "run_watched" in stack
    lines = [r.getMessage() for r in caplog.records if "hold_the_loop" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith(f"event loop held {held * 1000:.0f} ms (LOOP_STALL_TRACE_MS=20)")


def test_started_twice_it_beats_once_and_starts_again_after_a_stop() -> None:
    async def beats_in(watch: LoopWatch, seconds: float) -> int:
        before = sum(metrics.loop_lag_counts)
        watch.start()
        watch.start()
        await asyncio.sleep(seconds)
        return sum(metrics.loop_lag_counts) - before

    async def main() -> tuple[int, int]:
        watch = LoopWatch()
        first = await beats_in(watch, 0.2)
        watch.stop()
        second = await beats_in(watch, 0.2)
        watch.stop()
        return first, second

    first, second = asyncio.run(main())
    assert 3 <= first <= 21  # one chain of beats every 10 ms, not two
    assert 3 <= second <= 21


def test_a_calm_loop_traces_nothing(caplog: pytest.LogCaptureFixture) -> None:
    watch = LoopWatch(trace_ms=100)
    with caplog.at_level(logging.WARNING, logger="app.loopwatch"):
        asyncio.run(run_watched(watch, 0.0, calm_s=0.3))
    assert not watch.stalls
    assert not [r for r in caplog.records if "event loop held" in r.getMessage()]
