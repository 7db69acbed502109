"""In-process counters and a latency histogram (exposed by the web view).

Importing this module also installs :mod:`app.brokers` (once per process): broker
reachability as one WARNING per transition and counters, instead of aiokafka's flood of
connection-failure lines. Every entry point that talks to Kafka imports it (the worker through
the runtime, ingestion and replay through the raw sink)."""

from __future__ import annotations

import bisect
import gc
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

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
#: Kafka time → in the raw reader's hands), ``wait`` (in hand → applied), ``apply`` (the worker's
#: work on one raw record), ``output_linger``
#: and ``output_broker`` (an output batch gathering, then sent → acknowledged).
STAGES = ("ingest", "raw_linger", "raw_broker", "fetch", "wait", "apply", "output_linger", "output_broker")
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0, 60.0)
stage_counts: dict[str, list[int]] = {s: [0] * (len(STAGE_BUCKETS) + 1) for s in STAGES}
stage_sum: dict[str, float] = dict.fromkeys(STAGES, 0.0)


def stage_bound(row: Sequence[float], q: float) -> float:
    """Upper bound (seconds; ``inf`` past the last) of the :data:`STAGE_BUCKETS` bucket that the
    ``q`` quantile of ``row`` (observations per bucket, as in :data:`stage_counts`) falls in."""
    n, cum = sum(row), 0.0
    for bound, c in zip((*STAGE_BUCKETS, math.inf), row, strict=True):
        cum += c
        if n and cum >= q * n:
            return bound
    return math.inf


def observe_stage(stage: str, seconds: float) -> None:
    """One observation of ``stage`` (one of :data:`STAGES`): a list item incremented, no lock."""
    stage_counts[stage][bisect.bisect_left(STAGE_BUCKETS, seconds)] += 1
    stage_sum[stage] += seconds


#: How late the worker's event-loop heartbeat ran (app.loopwatch): time the loop spent elsewhere,
#: or the process was not running; every frame arriving meanwhile waits that long.
loop_lag_counts = [0] * (len(STAGE_BUCKETS) + 1)
loop_lag_sum = [0.0]


def observe_loop_lag(seconds: float) -> None:
    loop_lag_counts[bisect.bisect_left(STAGE_BUCKETS, seconds)] += 1
    loop_lag_sum[0] += seconds


def count(name: str, n: int = 1) -> None:
    if n:
        counters[name] += n


def observe_latency(ns: int) -> None:
    seconds = ns / 1e9
    latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    latency_sum[0] += seconds


#: Python's cyclic garbage collector, per generation: how long each collection held the event
#: loop (a full, generation-2 collection walks every tracked object: tens of ms in a worker).
gc_counts: dict[int, list[int]] = {g: [0] * (len(STAGE_BUCKETS) + 1) for g in range(3)}
gc_sum: dict[int, float] = dict.fromkeys(range(3), 0.0)
_gc_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    seconds = time.perf_counter() - _gc_started[0]
    generation = info["generation"]
    gc_counts[generation][bisect.bisect_left(STAGE_BUCKETS, seconds)] += 1
    gc_sum[generation] += seconds


def watch_gc() -> None:
    """Time every collection of this process (``bookstream_gc_pause_seconds``); once per process."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def tune_gc(gen0: int) -> None:
    """A young collection once ``gen0`` more container objects were allocated than freed
    (GC_GEN0_THRESHOLD; Python's default is 700); the older generations keep Python's thresholds.

    At 700 a young collection ran every few milliseconds under load, so every object alive
    across two of them — a batch waiting for its acknowledgement, a commit's rows — was promoted,
    and the old generation grew fast enough for a full collection every ~4 s at 5,000 frames/s
    (~28 ms each, once 295) and every ~14 s in the options universe (~23 ms, up to 50), each
    holding every frame that arrived meanwhile. The count is allocations *minus* frees: a worker
    whose objects come and go reaches 20,000 rarely (once in the universe's 10 minutes), what is
    short-lived has died by then, and cyclic garbage still brings it there (memory stays bounded).
    The price: a young collection, when one comes, walks what was kept since the last one: 10–40 ms
    here while the books' level tuples were among it, 4–6 ms since the compiled core creates them
    untracked (``app/book_core_c.pyx``)."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)


def settle_gc() -> None:
    """Everything alive now — the code, the app, the books just loaded — is moved out of the
    collector's reach (``gc.freeze``): later full collections walk only what was created since,
    instead of every object of the process (measured: 31 ms for the imports alone, 99,000
    objects, against 0 after). Frozen objects are still freed when nothing refers to them; only
    reference cycles among them wait for :func:`unsettle_gc`."""
    gc.freeze()


def unsettle_gc() -> None:
    """Before books are let go (a rebalance): frozen objects become collectable again, so the
    cycles among them do not outlive them."""
    gc.unfreeze()
