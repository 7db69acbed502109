"""`make chaos`: the long fault scenarios, with a report table and a results file.

Collected only when CHAOS=1 (tests/conftest.py leaves this folder out otherwise). Each
scenario adds its figures to the report; the end of the session prints the table and
writes it to CHAOS_RESULTS (default bench/chaos-results.json).
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import pytest

from tests.helpers import ROOT

RESULTS = os.environ.get("CHAOS_RESULTS", str(ROOT / "bench" / "chaos-results.json"))
REPORT: dict[str, dict[str, Any]] = {}
STARTED = time.time()


@pytest.fixture(scope="session")
def report() -> dict[str, dict[str, Any]]:
    return REPORT


ROWS = [
    ("kills survived", lambda r: r.get("kills", {}).get("kills", 0)),
    ("broker outages survived", lambda r: r.get("outage", {}).get("outages", 0)),
    ("worker takeovers survived", lambda r: r.get("takeover", {}).get("takeovers", 0)),
    ("frames processed", lambda r: sum(v.get("frames", 0) for v in r.values())),
    ("books compared", lambda r: sum(v.get("books_compared", 0) for v in r.values())),
    ("book.top records checked against truth", lambda r: sum(v.get("book_tops_checked", 0) for v in r.values())),
    ("bad inputs tried", lambda r: r.get("flood", {}).get("bad_frames", 0)),
    ("frames in dead letters", lambda r: r.get("flood", {}).get("dead_letters", 0)),
    ("frames lost to the outage (counted, books resynced)",
     lambda r: r.get("outage", {}).get("frames_dropped_counted", 0)
     + r.get("outage", {}).get("deliveries_failed_counted", 0)),
    ("book.top at-least-once duplicates", lambda r: sum(v.get("book_top_duplicates", 0) for v in r.values())),
    ("data lost", lambda r: sum(v.get("lost", 0) for v in r.values())),
]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    if not REPORT:
        return
    # A run of some scenarios (-k) updates them in the results file and keeps the others.
    merged: dict[str, dict[str, Any]] = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as fh:
            merged = json.load(fh).get("scenarios", {})
    merged.update(REPORT)
    rows = [(name, fn(merged)) for name, fn in ROWS]
    width = max(len(n) for n, _ in rows)
    tr = terminalreporter
    tr.section("bookstream chaos report")
    for name, value in rows:
        tr.write_line(f"{name:<{width}}  {value:>12,}" if isinstance(value, int) else f"{name:<{width}}  {value}")
    for scenario, figures in merged.items():
        tr.write_line(f"{scenario}: {json.dumps(figures, sort_keys=True)}")
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(STARTED)),
        "duration_s": round(time.time() - STARTED, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "exit_status": int(exitstatus),
        "command": "make chaos",
        "summary": dict(rows),
        "scenarios": merged,
        "this_run": sorted(REPORT),
    }
    with open(RESULTS, "w") as fh:
        json.dump(out, fh, indent=2, sort_keys=True)
        fh.write("\n")
    tr.write_line(f"written to {RESULTS}")
