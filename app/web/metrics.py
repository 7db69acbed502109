"""``/metrics`` in Prometheus text exposition, and ``/metrics/counters`` as JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from faust.web import Request, Response, View

from app import metrics
from app.sync import Instrument
from app.web.view import BookView


def prometheus(counters: dict[str, int], books: Iterable[Instrument], lag: dict[tuple[str, int], int],
               uncommitted: int, active_alerts: dict[str, int] | None = None,
               outputs: dict[str, Any] | None = None) -> str:
    """The exposition text for the process counters, the books' counters, consumer lag and the
    table partitions with effects not committed yet."""
    lines: list[str] = []
    active_alerts = active_alerts or {}

    def metric(name: str, kind: str, help_: str, samples: Sequence[tuple[str, float]]) -> None:
        lines.append(f"# HELP bookstream_{name} {help_}")
        lines.append(f"# TYPE bookstream_{name} {kind}")
        lines.extend(f"bookstream_{name}{labels} {value}" for labels, value in samples)

    frames = [(f'{{venue="{k.split(".", 1)[1]}"}}', v) for k, v in sorted(counters.items()) if k.startswith("frames.")]
    metric("frames_total", "counter", "Raw frames consumed, per venue.", frames)
    totals: dict[str, int] = {}
    states: dict[str, int] = {}
    for inst in books:
        for k, v in inst.counters.items():
            totals[k] = totals.get(k, 0) + v
        states[inst.status] = states.get(inst.status, 0) + 1
    metric("raw_records_total", "counter", "Raw records consumed (each carries one or more frames).",
           [("", counters.get("raw_records", 0))])
    metric("applied_deltas_total", "counter", "Book updates applied (books loaded on this worker).",
           [("", totals.get("applied", 0))])
    metric("applied_levels_total", "counter", "Level updates applied.", [("", totals.get("levels", 0))])
    metric("gaps_total", "counter", "Books that went stale (gap, checksum, crossed, reset).",
           [("", totals.get("gaps", 0))])
    metric("resync_requests_total", "counter", "control.resync requests sent.", [("", counters.get("resyncs", 0))])
    metric("dead_letters_total", "counter", "Frames sent to raw.deadletter.", [("", counters.get("deadletters", 0))])
    metric("book_top_total", "counter", "book.top records published.", [("", counters.get("book_top", 0))])
    metric("trades_total", "counter", "trades records published (duplicates dropped).",
           [("", counters.get("trades", 0))])
    metric("trade_gaps_total", "counter", "Gaps in a venue's contiguous trade numbers (feed.status records).",
           [("", counters.get("trade_gaps", 0))])
    metric("tickers_total", "counter", "ticker records published.", [("", counters.get("tickers", 0))])
    metric("options_chains_total", "counter", "options.chain records published.", [("", counters.get("chains", 0))])
    metric("instrument_versions_total", "counter", "New instrument spec versions published on ref.instruments.",
           [("", counters.get("instrument_versions", 0))])
    alerts = [(f'{{kind="{k.split(".", 1)[1]}"}}', v) for k, v in sorted(counters.items()) if k.startswith("alerts.")]
    metric("alerts_total", "counter", "Alerts raised by the risk engine, per kind (stale, crossed, spread, "
           "funding-jump, divergence).", alerts)
    metric("alerts_active", "gauge", "Alerts raised and not cleared, per kind.",
           [(f'{{kind="{k}"}}', n) for k, n in sorted(active_alerts.items())])
    outs = [(f'{{topic="{k.split(".", 1)[1]}"}}', v) for k, v in sorted(counters.items()) if k.startswith("risk_out.")]
    metric("risk_records_total", "counter", "Records published by the risk engine, per topic.", outs)
    metric("risk_bad_positions_total", "counter", "positions records refused (not applied).",
           [("", counters.get("risk_bad_positions", 0))])
    metric("risk_late_inputs_total", "counter", "Risk inputs that arrived behind the engine's watermark.",
           [("", counters.get("risk_late_inputs", 0))])
    metric("risk_held_published_total", "counter", "Risk records computed while another worker (or none) owned "
           "their partition, published here once it came here.", [("", counters.get("risk_held_published", 0))])
    metric("state_commits_total", "counter", "Table commits (changelog transactions).",
           [("", counters.get("state_commits", 0))])
    metric("state_uncommitted_partitions", "gauge", "Table partitions holding effects not committed yet.",
           [("", uncommitted)])
    metric("books", "gauge", "Books loaded on this worker, by state.",
           [(f'{{state="{s}"}}', n) for s, n in sorted(states.items())])
    metric("consumer_lag", "gauge", "Records behind the end of each assigned partition.",
           [(f'{{topic="{t}",partition="{p}"}}', n) for (t, p), n in sorted(lag.items())])
    if outputs is not None:  # the worker's output sink (app.outputs): late, never lossy
        metric("outputs_pending_bytes", "gauge", "Downstream records waiting for Kafka (or, exactly_once, for their "
               "transaction), in bytes.", [("", round(outputs["pending_mb"] * 2**20))])
        metric("outputs_budget_bytes", "gauge", "OUTPUT_BUFFER_MB: past it the worker takes no more raw records.",
               [("", round(outputs["budget_mb"] * 2**20))])
        metric("outputs_delivered_total", "counter", "Downstream records acknowledged by the broker.",
               [("", outputs["sent"])])
        metric("outputs_paused_total", "counter", "Times the worker stopped taking raw records because its outputs "
               "waited beyond OUTPUT_BUFFER_MB.", [("", outputs["pauses"])])
        metric("outputs_paused_seconds_total", "counter", "Time spent paused on the outputs.",
               [("", outputs["paused_s"])])
        metric("outputs_retried_total", "counter", "Output batches sent again after a failed delivery.",
               [("", outputs["retried"])])
        metric("outputs_producer_restarts_total", "counter", "Output producers replaced after a fatal error "
               "(OutOfOrderSequenceNumber…).", [("", max(0, outputs["producers"] - 1))])
        metric("outputs_failed_total", "counter", "Output records given up: no retry can deliver them (too large, "
               "not authorised).", [("", outputs["failed"])])
    watch = metrics.broker_watch
    metric("broker_disconnects_total", "counter", "Times a Kafka broker became unreachable (first failed "
           "connection after it was reachable), per node.",
           [(f'{{node="{node}"}}', n) for node, n in sorted(watch.disconnects.items())])
    metric("brokers_unreachable", "gauge", "Kafka brokers unreachable now (a connection failed, none succeeded "
           "since).", [("", watch.unreachable)])
    metric("kafka_log_lines_suppressed_total", "counter", "aiokafka log lines dropped because they only repeated "
           "a connection failure (see app/brokers.py).", [("", watch.suppressed)])
    sink = [(f'{{error="{k.split(".", 1)[1]}"}}', v) for k, v in sorted(counters.items())
            if k.startswith("raw_sink_refused.")]
    metric("raw_sink_refused_total", "counter", "Raw records Kafka refused for good (never sent again; their "
           "frames are lost and their books resync), per error.", sink)
    metric("raw_sink_resent_total", "counter", "Raw records sent again after a failed or abandoned delivery.",
           [("", counters.get("raw_sink_resent", 0))])
    metric("raw_sink_producer_restarts_total", "counter", "Raw sink producers replaced after a producer-state "
           "error (OutOfOrderSequenceNumber, UnknownProducerId, fenced) or a failed delivery.",
           [("", counters.get("raw_sink_producer_restarts", 0))])
    def labelled(prefix: str, names: tuple[str, ...]) -> list[tuple[str, float]]:
        """Counters ``<prefix>.<a>.<b>…`` as samples labelled ``names``."""
        out = []
        for k, v in sorted({**counters, **metrics.gauges}.items()):
            if k.startswith(prefix + "."):
                parts = k[len(prefix) + 1:].rsplit(".", len(names) - 1)
                out.append(("{" + ",".join(f'{n}="{p}"' for n, p in zip(names, parts, strict=True)) + "}", v))
        return out

    metric("feed_subscriptions_total", "counter", "Venue subscriptions by what became of them: confirmed, refused, "
           "unconfirmed (no answer), silent (no data), recovered.", labelled("feed_subscriptions", ("venue", "event")))
    metric("feed_channels", "gauge", "Subscribed channels by state (queued, pending, confirmed, live, refused, "
           "unconfirmed, silent), per venue, on this process's connections.", labelled("feed_channels",
                                                                                      ("venue", "state")))
    metric("feed_limit_waits_total", "counter", "Requests held back to keep a venue's limits (messages, "
           "subscriptions, connection opens, REST weight).", labelled("limit_waits", ("venue",)))
    metric("feed_rest_throttled_total", "counter", "REST answers 429 (slow down) and 418 (IP banned), per limit scope.",
           labelled("rest_throttled", ("scope", "status")))
    metric("feed_auth_failed_total", "counter", "Logins the venue refused (the feed fell back to public channels).",
           labelled("feed_auth_failed", ("venue",)))
    cum = 0
    samples: list[tuple[str, float]] = []
    for bound, n in zip([*metrics.LATENCY_BUCKETS, "+Inf"], metrics.latency_counts, strict=True):
        cum += n
        samples.append((f'_bucket{{le="{bound}"}}', cum))
    samples += [("_sum", round(metrics.latency_sum[0], 6)), ("_count", cum)]
    metric("top_latency_seconds", "histogram", "Receive time to book.top published.", samples)
    return "\n".join(lines) + "\n"


def register(app: Any, books: BookView, consumer_lag: Callable[[], dict[tuple[str, int], int]],
             uncommitted: Callable[[], int]) -> None:
    @app.page("/metrics/counters")
    async def counters(self: View, request: Request) -> Response:
        return self.json(dict(metrics.counters))

    @app.page("/metrics")
    async def exposition(self: View, request: Request) -> Response:
        risk = getattr(books, "risk", None)
        active = risk.engine.alerts.active_by_kind() if risk is not None else {}
        sink = getattr(books, "sink", None)
        text = prometheus(dict(metrics.counters), books.books(), consumer_lag(), uncommitted(), active,
                          sink.stats() if sink is not None else None)
        return self.text(text, content_type="text/plain; version=0.0.4")
