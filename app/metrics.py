"""In-process counters and a latency histogram (exposed by the web view).

Importing this module also installs :mod:`app.brokers` (once per process): broker
reachability as one WARNING per transition and counters, instead of aiokafka's flood of
connection-failure lines. Every entry point that talks to Kafka imports it (the worker through
the runtime, ingestion and replay through the raw sink)."""

from __future__ import annotations

import bisect
from collections import Counter

from app import brokers

brokers.install()

#: Broker reachability (``disconnects`` per node, ``unreachable``, ``suppressed`` log lines).
broker_watch = brokers.WATCH

counters: Counter[str] = Counter()
#: Values set, not counted (``feed_channels.<venue>.<state>``: ingestion's channels by state).
gauges: dict[str, float] = {}

#: Upper bounds (seconds) of the receive → book.top published latency histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
latency_sum = [0.0]


#: The stages a frame goes through, each timed where it happens (``observe_stage``; README
#: "Metrics"): ``ingest`` (receive time → the raw sink), ``raw_linger`` (a raw record gathering
#: frames before it is sent), ``raw_broker`` (sent → acknowledged), ``fetch`` (the raw record's
#: Kafka time → the book agent), ``apply`` (the agent's work on one raw record), ``output_linger``
#: and ``output_broker`` (an output batch gathering, then sent → acknowledged).
STAGES = ("ingest", "raw_linger", "raw_broker", "fetch", "apply", "output_linger", "output_broker")
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0, 60.0)
stage_counts: dict[str, list[int]] = {s: [0] * (len(STAGE_BUCKETS) + 1) for s in STAGES}
stage_sum: dict[str, float] = dict.fromkeys(STAGES, 0.0)


def observe_stage(stage: str, seconds: float) -> None:
    """One observation of ``stage`` (one of :data:`STAGES`): a list item incremented, no lock."""
    stage_counts[stage][bisect.bisect_left(STAGE_BUCKETS, seconds)] += 1
    stage_sum[stage] += seconds


def count(name: str, n: int = 1) -> None:
    if n:
        counters[name] += n


def observe_latency(ns: int) -> None:
    seconds = ns / 1e9
    latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    latency_sum[0] += seconds
