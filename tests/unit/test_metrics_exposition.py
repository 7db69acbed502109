"""app/web/metrics.py: /metrics built by prometheus_client from the process's own figures.

Every ``bookstream_*`` name below is what dashboards already query: a rename must show here."""

from __future__ import annotations

import dataclasses
from collections import Counter

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import brokers, metrics, venues
from app.records import MarginRecord
from app.sync import STALE, SYNCED, Instrument
from app.web.metrics import BookstreamCollector, WorkerFigures, registry
from bench.run import pending_bytes
from tests.helpers import ROOT, promtool_check

#: Every family of the worker's /metrics with its type, as the parser names them (a counter's
#: family without its ``_total``; its samples keep it).
FAMILIES = {
    "bookstream_frames": "counter", "bookstream_raw_records": "counter", "bookstream_applied_deltas": "counter",
    "bookstream_applied_levels": "counter", "bookstream_gaps": "counter", "bookstream_resync_requests": "counter",
    "bookstream_dead_letters": "counter", "bookstream_book_top": "counter", "bookstream_trades": "counter",
    "bookstream_trade_gaps": "counter", "bookstream_tickers": "counter", "bookstream_options_chains": "counter",
    "bookstream_instrument_versions": "counter", "bookstream_alerts": "counter", "bookstream_alerts_active": "gauge",
    "bookstream_risk_records": "counter", "bookstream_risk_bad_positions": "counter",
    "bookstream_risk_late_inputs": "counter", "bookstream_risk_held_published": "counter",
    "bookstream_state_commits": "counter", "bookstream_state_uncommitted_partitions": "gauge",
    "bookstream_books": "gauge", "bookstream_consumer_lag": "gauge", "bookstream_outputs_pending_bytes": "gauge",
    "bookstream_outputs_budget_bytes": "gauge", "bookstream_outputs_delivered": "counter",
    "bookstream_outputs_paused": "counter", "bookstream_outputs_paused_seconds": "counter",
    "bookstream_outputs_retried": "counter", "bookstream_outputs_producer_restarts": "counter",
    "bookstream_outputs_failed": "counter", "bookstream_broker_disconnects": "counter",
    "bookstream_brokers_unreachable": "gauge", "bookstream_kafka_log_lines_suppressed": "counter",
    "bookstream_raw_sink_refused": "counter", "bookstream_raw_sink_resent": "counter",
    "bookstream_raw_sink_producer_restarts": "counter", "bookstream_feed_subscriptions": "counter",
    "bookstream_feed_channels": "gauge", "bookstream_feed_limit_waits": "counter",
    "bookstream_feed_rest_throttled": "counter", "bookstream_feed_auth_failed": "counter",
    "bookstream_top_latency_seconds": "histogram", "bookstream_margin_im": "gauge", "bookstream_margin_mm": "gauge",
    "bookstream_margin_equity": "gauge", "bookstream_margin_mm_ratio": "gauge", "bookstream_margin_im_ratio": "gauge",
    "bookstream_margin_ok": "gauge", "bookstream_hedge_in_flight": "gauge",
    "bookstream_stage_latency_seconds": "histogram", "bookstream_gc_pause_seconds": "histogram",
    "bookstream_loop_lag_seconds": "histogram",
}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> WorkerFigures:
    """The process's figures (app.metrics) set to known values, and a worker's."""
    monkeypatch.setattr(metrics, "counters", Counter({
        "frames.okx": 7, "frames.binance-usdm": 3, "raw_records": 4, "resyncs": 2, "book_top": 5,
        "alerts.stale": 1, "risk_out.risk.hedge": 6, "raw_sink_refused.MessageSizeTooLargeError": 1,
        "feed_subscriptions.okx.refused": 2, "rest_throttled.binance-futures.429": 1, "state_commits": 9,
    }))
    monkeypatch.setattr(metrics, "gauges", {"feed_channels.bybit-spot.live": 27})
    monkeypatch.setattr(metrics, "broker_watch", brokers.BrokerWatch(disconnects=Counter({"1": 2})))
    counts = [0] * (len(metrics.LATENCY_BUCKETS) + 1)
    counts[0], counts[2], counts[-1] = 3, 1, 1  # ≤ 0.5 ms, ≤ 2.5 ms, beyond the last bound
    monkeypatch.setattr(metrics, "latency_counts", counts)
    monkeypatch.setattr(metrics, "latency_sum", [7.5])
    stages = {stage: [0] * (len(metrics.STAGE_BUCKETS) + 1) for stage in metrics.STAGES}
    monkeypatch.setattr(metrics, "stage_counts", stages)
    monkeypatch.setattr(metrics, "stage_sum", dict.fromkeys(metrics.STAGES, 0.0))
    metrics.observe_stage("apply", 0.0003)  # ≤ 0.5 ms
    metrics.observe_stage("apply", 0.004)  # ≤ 5 ms
    metrics.observe_stage("fetch", 9.0)  # beyond the last bound
    synced, stale = Instrument("okx:BTC-USDT", venues.rule("okx")), Instrument("okx:ETH-USDT", venues.rule("okx"))
    synced.status, stale.status = SYNCED, STALE
    synced.counters.update(applied=10, levels=40)
    stale.counters.update(applied=5, levels=9, gaps=1)
    outputs = {"pending_mb": 0.5, "budget_mb": 64, "sent": 100, "pauses": 1, "paused_s": 0.25, "retried": 2,
               "producers": 3, "producer_restarts": 2, "failed": 0}
    margin = MarginRecord(portfolio="desk", venue="deribit", currency="BTC", method="deribit-standard", im=0.5, mm=0.25,
                          components={}, legs=[], collateral=2.0, realized=0.0, unrealized=-1.0, equity=1.0,
                          mm_ratio=0.25, im_ratio=0.5, no_avg_price=[], flags={}, not_priced=[], ok=True, inputs=[],
                          ts=1)
    no_collateral = msgspec.structs.replace(margin, portfolio="other", collateral=None, equity=None, mm_ratio=None,
                                            im_ratio=None)
    return WorkerFigures(books=iter([synced, stale]), lag={("raw.okx", 0): 12}, uncommitted=1,
                         active_alerts={"stale": 1}, outputs=outputs, margin=[margin, no_collateral], in_flight=2)


def scrape(figures: WorkerFigures) -> str:
    return generate_latest(registry(lambda: figures)).decode()  # figures.books read once: one scrape a test


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_family_is_there_with_its_type(figures: WorkerFigures) -> None:
    types = {f.name: f.type for f in text_string_to_metric_families(scrape(figures))}
    assert {name: types.get(name) for name in FAMILIES} == FAMILIES
    # the process's own, from prometheus_client's collectors
    assert types["process_cpu_seconds"] == "counter"
    assert types["process_resident_memory_bytes"] == "gauge"
    assert types["python_info"] == "gauge"


def test_the_bench_reads_the_outputs_not_yet_acknowledged(figures: WorkerFigures) -> None:
    """``make bench`` stops a worker's clock when this gauge is back to 0 (bench/run.py)."""
    assert pending_bytes(scrape(figures)) == 2**19
    assert pending_bytes(scrape(dataclasses.replace(figures, outputs={**figures.outputs, "pending_mb": 0}))) == 0
    assert pending_bytes(scrape(dataclasses.replace(figures, outputs=None))) == float("inf")  # no sink: not 0


def test_counters_and_gauges_hold_the_process_and_worker_figures(figures: WorkerFigures) -> None:
    got = samples(scrape(figures))
    assert got["bookstream_frames_total", (("venue", "okx"),)] == 7
    assert got["bookstream_frames_total", (("venue", "binance-usdm"),)] == 3
    assert got["bookstream_raw_records_total", ()] == 4
    assert got["bookstream_applied_deltas_total", ()] == 15  # summed over the worker's books
    assert got["bookstream_applied_levels_total", ()] == 49
    assert got["bookstream_gaps_total", ()] == 1
    assert got["bookstream_resync_requests_total", ()] == 2
    assert got["bookstream_dead_letters_total", ()] == 0  # never counted yet: there, at 0
    assert got["bookstream_alerts_total", (("kind", "stale"),)] == 1
    assert got["bookstream_alerts_active", (("kind", "stale"),)] == 1
    assert got["bookstream_risk_records_total", (("topic", "risk.hedge"),)] == 6
    desk = (("currency", "BTC"), ("method", "deribit-standard"), ("portfolio", "desk"), ("venue", "deribit"))
    other = (("currency", "BTC"), ("method", "deribit-standard"), ("portfolio", "other"), ("venue", "deribit"))
    assert (got["bookstream_margin_mm", desk], got["bookstream_margin_mm_ratio", desk]) == (0.25, 0.25)
    assert got["bookstream_margin_mm", other] == 0.25
    assert ("bookstream_margin_mm_ratio", other) not in got  # no collateral: no ratio, not a 0
    assert got["bookstream_hedge_in_flight", ()] == 2
    apply, fetch = (("stage", "apply"),), (("stage", "fetch"),)
    assert got["bookstream_stage_latency_seconds_bucket", (("le", "0.0005"), *apply)] == 1
    assert got["bookstream_stage_latency_seconds_bucket", (("le", "0.005"), *apply)] == 2
    assert got["bookstream_stage_latency_seconds_count", apply] == 2
    assert got["bookstream_stage_latency_seconds_sum", apply] == pytest.approx(0.0043)
    assert got["bookstream_stage_latency_seconds_bucket", (("le", "5.0"), *fetch)] == 0
    assert got["bookstream_stage_latency_seconds_bucket", (("le", "+Inf"), *fetch)] == 1
    assert got["bookstream_state_commits_total", ()] == 9
    assert got["bookstream_state_uncommitted_partitions", ()] == 1
    assert got["bookstream_books", (("state", "synced"),)] == 1
    assert got["bookstream_books", (("state", "stale"),)] == 1
    assert got["bookstream_consumer_lag", (("partition", "0"), ("topic", "raw.okx"))] == 12
    assert got["bookstream_outputs_pending_bytes", ()] == 2**19
    assert got["bookstream_outputs_budget_bytes", ()] == 64 * 2**20
    assert got["bookstream_outputs_delivered_total", ()] == 100
    assert got["bookstream_outputs_paused_seconds_total", ()] == 0.25
    assert got["bookstream_outputs_producer_restarts_total", ()] == 2  # the sink's own count of replacements
    assert got["bookstream_broker_disconnects_total", (("node", "1"),)] == 2
    assert got["bookstream_brokers_unreachable", ()] == 0
    assert got["bookstream_raw_sink_refused_total", (("error", "MessageSizeTooLargeError"),)] == 1
    assert got["bookstream_feed_subscriptions_total", (("event", "refused"), ("venue", "okx"))] == 2
    assert got["bookstream_feed_channels", (("state", "live"), ("venue", "bybit-spot"))] == 27
    assert got["bookstream_feed_rest_throttled_total", (("scope", "binance-futures"), ("status", "429"))] == 1


def test_latency_histogram_is_cumulative_with_inf_sum_and_count(figures: WorkerFigures) -> None:
    got = samples(scrape(figures))
    buckets = {dict(labels)["le"]: v for (name, labels), v in got.items()
               if name == "bookstream_top_latency_seconds_bucket"}
    assert buckets["0.0005"] == 3
    assert buckets["0.001"] == 3
    assert buckets["0.0025"] == 4
    assert buckets["5.0"] == 4
    assert buckets["+Inf"] == 5
    assert list(buckets) == [*map(str, metrics.LATENCY_BUCKETS), "+Inf"]
    assert got["bookstream_top_latency_seconds_count", ()] == 5
    assert got["bookstream_top_latency_seconds_sum", ()] == 7.5


def test_no_worker_gives_the_process_figures_alone() -> None:
    """No books, lag or output sink: the families are there (at 0, or without samples), none of the outputs'."""
    names = {m.name for m in BookstreamCollector().collect()}
    assert "bookstream_frames" in names
    assert "bookstream_consumer_lag" in names
    assert not [n for n in names if n.startswith("bookstream_outputs_")]


def test_label_values_are_escaped(figures: WorkerFigures, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(metrics.counters, 'raw_sink_refused.a "quoted"\\error', 1)
    got = samples(scrape(figures))
    assert got["bookstream_raw_sink_refused_total", (("error", 'a "quoted"\\error'),)] == 1


def test_promtool_finds_nothing_to_say_of_the_exposition(figures: WorkerFigures) -> None:
    assert promtool_check(scrape(figures)) == ""


@pytest.mark.parametrize(("text", "complaint"), [
    ("# HELP bookstream_frames Frames.\n# TYPE bookstream_frames counter\nbookstream_frames 1\n",
     'counter metrics should have "_total" suffix'),
    ("# TYPE bookstream_lag_ms gauge\nbookstream_lag_ms 1\n", "no help text"),
    ("bookstream_frames_total{venue=okx} 1\n", "parsing error"),
])
def test_promtool_check_fails_on_a_bad_exposition(text: str, complaint: str) -> None:
    """The check the integration test runs on a worker's /metrics is not a check that always passes."""
    said = promtool_check(text)
    assert said.startswith("exit "), said
    assert complaint in said


def test_hand_written_exposition_is_gone() -> None:
    """Every /metrics text comes from prometheus_client: no ``# TYPE`` or ``# HELP`` line built in app/."""
    found = [p for p in (ROOT / "app").rglob("*.py") if "# TYPE" in p.read_text() or "# HELP" in p.read_text()]
    assert not found


def test_collections_are_timed_per_generation_and_settled_objects_leave_the_collectors_walks() -> None:
    import gc

    metrics.watch_gc()
    metrics.watch_gc()  # once per process, however often asked
    assert gc.callbacks.count(metrics._on_gc) == 1
    full, spent = sum(metrics.gc_counts[2]), metrics.gc_sum[2]
    gc.collect(2)
    assert sum(metrics.gc_counts[2]) == full + 1
    assert metrics.gc_sum[2] > spent
    text = generate_latest(registry(lambda: WorkerFigures())).decode()
    assert f'bookstream_gc_pause_seconds_count{{generation="2"}} {full + 1}.0' in text
    books = [{"px": [str(i)]} for i in range(50_000)]  # tracked containers, as loaded books are
    try:
        metrics.settle_gc()
        assert gc.get_freeze_count() >= len(books)
    finally:
        metrics.unsettle_gc()
    assert gc.get_freeze_count() == 0


def test_young_collections_wait_for_the_tuned_threshold() -> None:
    """GC_GEN0_THRESHOLD: 5,000 more containers than freed do not start a young collection at
    20,000 (Python's 700 would have run seven); the older generations keep their thresholds."""
    import gc

    before = gc.get_threshold()
    try:
        metrics.tune_gc(20_000)
        assert gc.get_threshold() == (20_000, *before[1:])
        gc.collect()
        kept = [[i] for i in range(5_000)]
        assert gc.get_count()[0] >= len(kept)  # no collection ran: the count only grew
        metrics.tune_gc(700)
        kept += [[i] for i in range(1_000)]
        assert gc.get_count()[0] < 700  # past the threshold: collected
    finally:
        gc.set_threshold(*before)
