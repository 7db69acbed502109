"""app.risk.service.RiskService.watermark: how far the engine may compute, per input source."""

from __future__ import annotations

import time

from app.config import Settings
from app.risk.service import RiskService
from app.venues import VENUES
from app.wire import Topics

DAY_NS = 86_400 * 10**9


def service(caught_up: bool = True) -> tuple[RiskService, int]:
    settings = Settings()
    svc = RiskService(settings, Topics("", VENUES, "unit"), [], lambda *a: None, lambda key: True, lambda: True,
                      caught_up=lambda: caught_up)
    return svc, settings.risk.lateness_ms * 1_000_000


def test_quiet_live_sources_hold_the_engine_at_the_lateness_bound_not_past_the_wall_clock() -> None:
    """A broker failover stalls the whole pipeline for seconds: every source is quiet. The
    engine must not run ahead (an infinite watermark released every input held, and the
    stalled ones came late): what they bring next was received no earlier than RISK_LATENESS_MS ago."""
    svc, lateness = service()
    now, wall = time.monotonic(), time.time_ns()
    for p in range(4):
        svc.sources[("book.top", p, "deribit")] = [wall - 10 * 10**9, now - 10]  # quiet for 10 s
    mark = svc.watermark(now)
    assert wall - lateness <= mark <= time.time_ns() - lateness


def test_a_live_source_counts_with_its_newest_input_when_later_than_the_bound() -> None:
    svc, lateness = service()
    now, wall = time.monotonic(), time.time_ns()
    svc.sources[("book.top", 0, "deribit")] = [wall + 5 * 10**9, now]  # a clock ahead: its own time
    svc.sources[("ticker", 0, "okx")] = [wall - 10 * 10**9, now - 10]
    mark = svc.watermark(now)
    assert wall - lateness <= mark <= time.time_ns() - lateness


def test_history_holds_the_engine_while_read_recently_or_while_the_worker_is_behind() -> None:
    svc, _ = service()
    now, wall = time.monotonic(), time.time_ns()
    svc.sources[("book.top", 0, "binance-usdm")] = [wall - DAY_NS, now]  # a replay, read a moment ago
    svc.sources[("book.top", 1, "deribit")] = [wall, now]
    assert svc.watermark(now) == wall - DAY_NS
    svc.sources[("book.top", 0, "binance-usdm")] = [wall - DAY_NS, now - 10]  # quiet: its replay done
    assert svc.watermark(now) > wall - DAY_NS
    behind, _ = service(caught_up=False)
    behind.sources = svc.sources  # quiet only because the worker is still applying its raw topics
    assert behind.watermark(now) == wall - DAY_NS
