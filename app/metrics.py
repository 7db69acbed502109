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


def count(name: str, n: int = 1) -> None:
    if n:
        counters[name] += n


def observe_latency(ns: int) -> None:
    seconds = ns / 1e9
    latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    latency_sum[0] += seconds
