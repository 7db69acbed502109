"""``/metrics`` (Prometheus text exposition, by prometheus_client) and ``/metrics/counters`` (JSON).

The process keeps its own figures where they are counted, cheaply: :mod:`app.metrics` (a
``Counter``, the ``gauges`` dict, the latency histogram's bucket counts, the brokers' watch) and
the books' own counters. Nothing on the hot path touches prometheus_client: at each scrape
:class:`BookstreamCollector` turns that state into metric families (``bookstream_*``), and
:func:`registry` serves them beside prometheus_client's process, platform and GC collectors
(``process_*``, ``python_info``, ``python_gc_*``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from app import book, metrics
from app.sync import Instrument
from app.web.view import BookView

__all__ = ["BookstreamCollector", "WorkerFigures", "register", "registry"]


@dataclass(frozen=True)
class WorkerFigures:
    """What the worker adds at a scrape to the process's own figures (:mod:`app.metrics`)."""

    books: Iterable[Instrument] = ()  # the books loaded on this worker, with their counters (read once)
    lag: Mapping[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) → records behind
    uncommitted: int = 0  # table partitions holding effects not committed yet
    active_alerts: Mapping[str, int] = field(default_factory=dict)  # kind → alerts raised and not cleared
    outputs: Mapping[str, Any] | None = None  # the output sink's stats() (app.outputs), None: no sink
    margin: Iterable[Any] = ()  # the risk engine's latest risk.margin records (app.records.MarginRecord)
    in_flight: int = 0  # hedge signals not answered yet (filled, rejected or expired)


def _counter(name: str, help_: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_, value=value)


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, value=value)


def _labelled(family: CounterMetricFamily | GaugeMetricFamily,
              samples: Iterable[tuple[Iterable[str], float]]) -> CounterMetricFamily | GaugeMetricFamily:
    for labels, value in samples:
        family.add_metric([str(v) for v in labels], value)
    return family


def _suffixed(figures: Mapping[str, float], prefix: str, names: int) -> list[tuple[list[str], float]]:
    """Figures ``<prefix>.<a>.<b>…`` as (``[a, b, …]``, value), ``names`` label values each (the
    last ones split off the right: a venue name may hold a dot, a state or an event never does)."""
    head = prefix + "."
    return [(k[len(head):].rsplit(".", names - 1), v) for k, v in sorted(figures.items()) if k.startswith(head)]


class BookstreamCollector(Collector):
    """The ``bookstream_*`` families, built from the process's state when scraped.

    ``worker`` gives what only a worker has (its books, consumer lag, …); the default, no worker,
    gives the process's own figures alone."""

    def __init__(self, worker: Callable[[], WorkerFigures] = WorkerFigures) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        counters: Mapping[str, float] = dict(metrics.counters)
        w = self.worker()
        totals: dict[str, int] = {}  # the books' counters, summed
        states: dict[str, int] = {}  # books by state
        for inst in w.books:  # once: the runtime gives an iterator
            for k, v in inst.counters.items():
                totals[k] = totals.get(k, 0) + v
            states[inst.status] = states.get(inst.status, 0) + 1
        yield from self._pipeline(counters, totals)
        yield from self._risk(counters, w)
        yield from self._state(counters, w, states)
        if w.outputs is not None:  # the worker's output sink (app.outputs): late, never lossy
            yield from self._outputs(w.outputs)
        yield from self._kafka(counters)
        yield from self._feeds(counters)
        yield self._latency()
        yield self._stages()
        yield self._gc()
        yield self._loop_lag()
        yield _labelled(GaugeMetricFamily("bookstream_book_core", "The book core this worker runs (1 for the one "
                                          "running): compiled, or python (the reference; BOOK_CORE).",
                                          labels=["core"]), [([book.core.NAME], 1)])

    @staticmethod
    def _pipeline(counters: Mapping[str, float], totals: Mapping[str, int]) -> Iterator[Metric]:
        yield _labelled(CounterMetricFamily("bookstream_frames_total", "Raw frames consumed, per venue.",
                                            labels=["venue"]), _suffixed(counters, "frames", 1))
        yield _counter("bookstream_raw_records_total", "Raw records consumed (each carries one or more frames).",
                       counters.get("raw_records", 0))
        yield _counter("bookstream_applied_deltas_total", "Book updates applied (books loaded on this worker).",
                       totals.get("applied", 0))
        yield _counter("bookstream_applied_levels_total", "Level updates applied.", totals.get("levels", 0))
        yield _counter("bookstream_gaps_total", "Books that went stale (gap, checksum, crossed, reset).",
                       totals.get("gaps", 0))
        yield _counter("bookstream_resync_requests_total", "control.resync requests sent.",
                       counters.get("resyncs", 0))
        yield _counter("bookstream_dead_letters_total", "Frames sent to raw.deadletter.",
                       counters.get("deadletters", 0))
        yield _counter("bookstream_book_top_total", "book.top records published.", counters.get("book_top", 0))
        yield _counter("bookstream_trades_total", "trades records published (duplicates dropped).",
                       counters.get("trades", 0))
        yield _counter("bookstream_trade_gaps_total", "Gaps in a venue's contiguous trade numbers (feed.status "
                       "records).", counters.get("trade_gaps", 0))
        yield _counter("bookstream_tickers_total", "ticker records published.", counters.get("tickers", 0))
        yield _counter("bookstream_options_chains_total", "options.chain records published.",
                       counters.get("chains", 0))
        yield _counter("bookstream_instrument_versions_total", "New instrument spec versions published on "
                       "ref.instruments.", counters.get("instrument_versions", 0))
        yield _counter("bookstream_book_checkpoints_total", "Book states written to book.checkpoints.",
                       counters.get("book_checkpoints", 0))

    @staticmethod
    def _risk(counters: Mapping[str, float], w: WorkerFigures) -> Iterator[Metric]:
        yield _labelled(CounterMetricFamily("bookstream_alerts_total", "Alerts raised by the risk engine, per kind "
                                            "(stale, crossed, spread, funding-jump, divergence).", labels=["kind"]),
                        _suffixed(counters, "alerts", 1))
        yield _labelled(GaugeMetricFamily("bookstream_alerts_active", "Alerts raised and not cleared, per kind.",
                                          labels=["kind"]),
                        (([kind], n) for kind, n in sorted(w.active_alerts.items())))
        yield _labelled(CounterMetricFamily("bookstream_risk_records_total", "Records published by the risk "
                                            "engine, per topic.", labels=["topic"]),
                        _suffixed(counters, "risk_out", 1))
        yield _counter("bookstream_risk_bad_positions_total", "positions records refused (not applied).",
                       counters.get("risk_bad_positions", 0))
        yield _counter("bookstream_risk_late_inputs_total", "Risk inputs that arrived behind the engine's watermark.",
                       counters.get("risk_late_inputs", 0))
        margin = [m for m in w.margin if m.mm is not None]
        labels = ["portfolio", "venue", "currency", "method"]
        for name, field_, help_ in (("im", "im", "Initial margin"), ("mm", "mm", "Maintenance margin"),
                                    ("equity", "equity", "Equity (collateral + realized + unrealized P&L)"),
                                    ("mm_ratio", "mm_ratio", "Maintenance margin / equity"),
                                    ("im_ratio", "im_ratio", "Initial margin / equity")):
            yield _labelled(GaugeMetricFamily(f"bookstream_margin_{name}", f"{help_} per portfolio, venue and "
                                              "settlement currency (risk.margin; in that currency).", labels=labels),
                            (([m.portfolio, m.venue, m.currency, m.method], getattr(m, field_)) for m in margin
                             if getattr(m, field_) is not None))
        yield _labelled(GaugeMetricFamily("bookstream_margin_ok", "1 when the margin's inputs are all fresh and "
                                          "priced, else 0.", labels=labels),
                        (([m.portfolio, m.venue, m.currency, m.method], float(m.ok)) for m in margin))
        yield _gauge("bookstream_hedge_in_flight", "Hedge signals not answered yet on hedge.fills (not filled, "
                     "rejected or HEDGE_SIGNAL_TTL_S old).", w.in_flight)
        yield _counter("bookstream_risk_held_published_total", "Risk records computed while another worker (or none) "
                       "owned their partition, published here once it came here.",
                       counters.get("risk_held_published", 0))

    @staticmethod
    def _state(counters: Mapping[str, float], w: WorkerFigures, states: Mapping[str, int]) -> Iterator[Metric]:
        yield _counter("bookstream_state_commits_total", "Table commits (changelog transactions).",
                       counters.get("state_commits", 0))
        yield _gauge("bookstream_state_uncommitted_partitions", "Table partitions holding effects not committed "
                     "yet.", w.uncommitted)
        yield _labelled(GaugeMetricFamily("bookstream_books", "Books loaded on this worker, by state.",
                                          labels=["state"]), (([s], n) for s, n in sorted(states.items())))
        yield _labelled(GaugeMetricFamily("bookstream_consumer_lag", "Records behind the end of each assigned "
                                          "partition.", labels=["topic", "partition"]),
                        (([t, str(p)], n) for (t, p), n in sorted(w.lag.items())))

    @staticmethod
    def _outputs(outputs: Mapping[str, Any]) -> Iterator[Metric]:
        yield _gauge("bookstream_outputs_pending_bytes", "Downstream records waiting for Kafka (or, exactly_once, "
                     "for their transaction), in bytes.", round(outputs["pending_mb"] * 2**20))
        yield _gauge("bookstream_outputs_budget_bytes", "OUTPUT_BUFFER_MB: past it the worker takes no more raw "
                     "records.", round(outputs["budget_mb"] * 2**20))
        yield _counter("bookstream_outputs_delivered_total", "Downstream records acknowledged by the broker.",
                       outputs["sent"])
        yield _counter("bookstream_outputs_paused_total", "Times the worker stopped taking raw records because its "
                       "outputs waited beyond OUTPUT_BUFFER_MB.", outputs["pauses"])
        yield _counter("bookstream_outputs_paused_seconds_total", "Time spent paused on the outputs.",
                       outputs["paused_s"])
        yield _counter("bookstream_outputs_retried_total", "Output batches sent again after a failed delivery.",
                       outputs["retried"])
        yield _counter("bookstream_outputs_producer_restarts_total", "Output producers replaced after a producer-state "
                       "error (OutOfOrderSequenceNumber…), a failed delivery or a stall.", outputs["producer_restarts"])
        yield _counter("bookstream_outputs_failed_total", "Output records given up: no retry can deliver them (too "
                       "large, not authorised).", outputs["failed"])

    @staticmethod
    def _kafka(counters: Mapping[str, float]) -> Iterator[Metric]:
        watch = metrics.broker_watch
        yield _labelled(CounterMetricFamily("bookstream_broker_disconnects_total", "Times a Kafka broker became "
                                            "unreachable (first failed connection after it was reachable), per node.",
                                            labels=["node"]),
                        (([node], n) for node, n in sorted(watch.disconnects.items())))
        yield _gauge("bookstream_brokers_unreachable", "Kafka brokers unreachable now (a connection failed, none "
                     "succeeded since).", watch.unreachable)
        yield _counter("bookstream_kafka_log_lines_suppressed_total", "aiokafka log lines dropped because they only "
                       "repeated a connection failure (see app/brokers.py).", watch.suppressed)
        yield _labelled(CounterMetricFamily("bookstream_raw_sink_refused_total", "Raw records Kafka refused for good "
                                            "(never sent again; their frames are lost and their books resync), per "
                                            "error.", labels=["error"]),
                        _suffixed(counters, "raw_sink_refused", 1))
        yield _counter("bookstream_raw_sink_resent_total", "Raw records sent again after a failed or abandoned "
                       "delivery.", counters.get("raw_sink_resent", 0))
        yield _counter("bookstream_raw_sink_producer_restarts_total", "Raw sink producers replaced after a "
                       "producer-state error (OutOfOrderSequenceNumber, UnknownProducerId, fenced) or a failed "
                       "delivery.", counters.get("raw_sink_producer_restarts", 0))

    @staticmethod
    def _feeds(counters: Mapping[str, float]) -> Iterator[Metric]:
        yield _labelled(CounterMetricFamily("bookstream_feed_subscriptions_total", "Venue subscriptions by what "
                                            "became of them: confirmed, refused, unconfirmed (no answer), silent (no "
                                            "data), recovered.", labels=["venue", "event"]),
                        _suffixed(counters, "feed_subscriptions", 2))
        yield _labelled(GaugeMetricFamily("bookstream_feed_channels", "Subscribed channels by state (queued, pending, "
                                          "confirmed, live, refused, unconfirmed, silent), per venue, on this "
                                          "process's connections.", labels=["venue", "state"]),
                        _suffixed(metrics.gauges, "feed_channels", 2))
        yield _labelled(CounterMetricFamily("bookstream_feed_limit_waits_total", "Requests held back to keep a "
                                            "venue's limits (messages, subscriptions, connection opens, REST weight).",
                                            labels=["venue"]), _suffixed(counters, "limit_waits", 1))
        yield _labelled(CounterMetricFamily("bookstream_feed_rest_throttled_total", "REST answers 429 (slow down) and "
                                            "418 (IP banned), per limit scope.", labels=["scope", "status"]),
                        _suffixed(counters, "rest_throttled", 2))
        yield _labelled(CounterMetricFamily("bookstream_feed_auth_failed_total", "Logins the venue refused (the feed "
                                            "fell back to public channels).", labels=["venue"]),
                        _suffixed(counters, "feed_auth_failed", 1))

    @staticmethod
    def _latency() -> Metric:
        return HistogramMetricFamily("bookstream_top_latency_seconds", "Receive time to book.top published.",
                                     buckets=_cumulative(metrics.LATENCY_BUCKETS, metrics.latency_counts),
                                     sum_value=metrics.latency_sum[0])

    @staticmethod
    def _stages() -> Metric:
        """Per stage of a frame's way (app.metrics.STAGES), one histogram each, labelled ``stage``."""
        family = HistogramMetricFamily("bookstream_stage_latency_seconds", "Time a frame spends in each stage: ingest, "
                                       "raw_linger, raw_broker, fetch, wait, apply, output_linger, output_broker.",
                                       labels=["stage"])
        for stage in metrics.STAGES:
            family.add_metric([stage], _cumulative(metrics.STAGE_BUCKETS, metrics.stage_counts[stage]),
                              metrics.stage_sum[stage])
        return family

    @staticmethod
    def _loop_lag() -> Metric:
        """How late the event loop's heartbeat ran (app.loopwatch)."""
        family = HistogramMetricFamily("bookstream_loop_lag_seconds", "How late the worker's event-loop heartbeat "
                                       "(every 10 ms) ran: time the loop was busy elsewhere or the process was not "
                                       "running. Every frame arriving meanwhile waits as long.")
        family.add_metric([], _cumulative(metrics.STAGE_BUCKETS, metrics.loop_lag_counts), metrics.loop_lag_sum[0])
        return family

    @staticmethod
    def _gc() -> Metric:
        """Python's garbage collections, per generation: each one holds the event loop."""
        family = HistogramMetricFamily("bookstream_gc_pause_seconds", "Time each collection of Python's cyclic "
                                       "garbage collector held the process, per generation.", labels=["generation"])
        for generation, counts in metrics.gc_counts.items():
            family.add_metric([str(generation)], _cumulative(metrics.STAGE_BUCKETS, counts), metrics.gc_sum[generation])
        return family


def _cumulative(bounds: Iterable[float], counts: list[int]) -> list[tuple[str, float]]:
    """app.metrics keeps one count per bucket (the hot path adds 1 to one list item); the
    exposition wants them cumulative, ending with +Inf."""
    buckets: list[tuple[str, float]] = []
    cum = 0
    for bound, n in zip([*map(floatToGoString, bounds), "+Inf"], list(counts), strict=True):
        cum += n
        buckets.append((bound, cum))
    return buckets


def registry(worker: Callable[[], WorkerFigures] = WorkerFigures) -> CollectorRegistry:
    """A registry of our own (not prometheus_client's global one): the ``bookstream_*`` families
    and the process's (CPU, memory, open files, start time), Python's and its garbage collector's."""
    reg = CollectorRegistry()
    reg.register(BookstreamCollector(worker))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)  # registers nothing where the interpreter is not CPython
    return reg


def register(app: Any, books: BookView, consumer_lag: Callable[[], dict[tuple[str, int], int]],
             uncommitted: Callable[[], int]) -> None:
    def figures() -> WorkerFigures:
        risk = getattr(books, "risk", None)
        sink = getattr(books, "sink", None)
        return WorkerFigures(books=books.books(), lag=consumer_lag(), uncommitted=uncommitted(),
                             active_alerts=risk.engine.alerts.active_by_kind() if risk is not None else {},
                             margin=list(risk.engine.margins.values()) if risk is not None else (),
                             in_flight=len(risk.engine.in_flight) if risk is not None else 0,
                             outputs=sink.stats() if sink is not None else None)

    exposition = registry(figures)

    @app.page("/metrics/counters")
    async def counters(self: View, request: Request) -> Response:
        return self.json(dict(metrics.counters))

    @app.page("/metrics")
    async def scrape(self: View, request: Request) -> Response:
        # the content type as a header: aiohttp refuses a charset in its content_type argument
        return self.bytes(generate_latest(exposition), headers={"Content-Type": CONTENT_TYPE_LATEST})
