"""Test-only helpers: references, truth checks, worker cleanup.

The process-level harness (broker, namespaces, worker and simulator processes, topic reads)
is scripts/harness.py, shared with the benchmarks; it is re-exported here for the tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts.harness import (
    CAPTURES,
    FAUST,
    ROOT,
    Broker,
    Namespace,
    Simulator,
    Worker,
    consume,
    frames,
    free_port,
    http_json,
    percentile,
    rss_mb,
    values,
    wait_for,
)

__all__ = [
    "CAPTURES", "FAUST", "ROOT", "Broker", "Namespace", "Simulator", "Worker", "book_levels", "consume", "examples",
    "frames", "free_port", "http_json", "match_truth", "percentile", "reference", "rss_mb", "values", "wait_for",
    "workers",
]


def examples(default: int) -> int:
    """Hypothesis examples per property: ``default`` in `make test`, FUZZ_EXAMPLES in `make fuzz`."""
    return int(os.environ.get("FUZZ_EXAMPLES") or default)


def reference(paths: list[Path], fmt: str, drop: Callable[[int, Any], bool] | None = None) -> Any:
    """In-process reference: the same router + processor, no Kafka. Returns the Processor."""
    from app.capture.formats import read
    from app.processor import Processor
    from app.router import Router

    router, proc = Router(), Processor()
    for i, rec in enumerate(read(paths, fmt)):
        if drop is not None and drop(i, rec):
            continue
        for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol):
            proc.handle(raw)
    return proc


def book_levels(proc: Any, key: str) -> tuple[list[list[str]], list[list[str]]]:
    book = proc.instruments[key].book
    return [list(x) for x in book.iter_bids()], [list(x) for x in book.iter_asks()]


@contextlib.contextmanager
def workers(*ws: Worker) -> Any:
    try:
        yield ws
    finally:
        for w in ws:
            w.kill()


def match_truth(tops: list[dict[str, Any]], truth: list[list[Any]]) -> int:
    """Every book.top equals the simulator's true top at its seq; returns how many were checked.

    Truth entries are ``[seq, bid_px, bid_sz, ask_px, ask_sz, conn]`` in time order. ``conn``
    is 0 where the venue's sequence belongs to the instrument, the simulator's connection
    number where it belongs to a connection (Coinbase). Sequences may repeat (venue resets,
    new connections), so each connection's truth is walked forward only.
    """
    by_conn: dict[int, list[list[Any]]] = {}
    for entry in truth:
        by_conn.setdefault(entry[5], []).append(entry)
    pos = dict.fromkeys(by_conn, 0)
    for top in tops:
        got = (top["bid_px"], top["bid_sz"], top["ask_px"], top["ask_sz"])
        for conn, entries in by_conn.items():
            i = pos[conn]
            while i < len(entries) and entries[i][0] != top["seq"]:
                i += 1
            if i < len(entries) and tuple(entries[i][1:5]) == got:
                pos[conn] = i
                break
        else:
            raise AssertionError(f"book.top {got} at seq {top['seq']} matches no true book at that seq")
    return len(tops)
