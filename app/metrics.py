"""In-process counters and a latency histogram (exposed by the web view)."""

from __future__ import annotations

import bisect
from collections import Counter

counters: Counter[str] = Counter()

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
