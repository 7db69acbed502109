"""`make chaos`: the long fault scenarios, with a report table and a results file.

Collected only when CHAOS=1 (tests/conftest.py leaves this folder out otherwise). Each
scenario test is marked ``@pytest.mark.scenario(name)`` and fills the ``report`` fixture with
the figures it measures, as it goes. A hook records each scenario's outcome: ``status``
(passed, failed, skipped) and, when it failed, the ``error`` line, beside whatever figures it
measured before it failed. The end of the session prints the table and writes CHAOS_RESULTS
(default bench/chaos-results.json). A run of some scenarios (``-k``) keeps the other
scenarios' entries of the results file, each with the time of the run that measured it;
entries without a status (written before the figures were measured) are dropped.
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
WHEN = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(STARTED))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name): the chaos report entry this test measures")


def scenario_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("scenario")
    return str(marker.args[0]) if marker is not None else None


@pytest.fixture
def report(request: pytest.FixtureRequest) -> dict[str, Any]:
    """This scenario's entry of the report: the test adds the figures it measures."""
    name = scenario_of(request.node)
    assert name is not None, f"{request.node.nodeid} uses `report` without @pytest.mark.scenario(name)"
    return REPORT.setdefault(name, {"run_at": WHEN})


def error_line(rep: pytest.TestReport) -> str:
    """The line that says what went wrong: the exception's message, the first ``E`` line of
    another failure (a missing fixture), or a skip's reason."""
    crash = getattr(rep.longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(rep.longrepr, tuple):  # a skip: (path, line, reason)
        text = str(rep.longrepr[2])
    else:
        marked = [line[1:].strip() for line in rep.longreprtext.splitlines() if line.startswith("E ")]
        text = marked[0] if marked else rep.longreprtext
    return text.strip().splitlines()[0][:500] if text.strip() else f"failed in {rep.when}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each scenario's outcome in the report, whatever phase decided it (setup, call, teardown)."""
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    name = scenario_of(item)
    if name is None:
        return
    entry = REPORT.setdefault(name, {"run_at": WHEN})
    if entry.get("status") == "failed":
        return  # the first failure is the one to tell
    if rep.failed:
        entry.update(status="failed", error=error_line(rep), failed_in=rep.when)
    elif rep.skipped:
        entry.update(status="skipped", error=error_line(rep))
    elif rep.when == "call":
        entry["status"] = "passed"


def total(figure: str, *scenarios: str) -> Any:
    """A row: ``figure`` summed over ``scenarios`` (all of them when none is named); "not run"
    when none of them has an entry."""
    def row(r: dict[str, dict[str, Any]]) -> int | str:
        entries = [v for k, v in r.items() if k in scenarios or not scenarios]
        return sum(v.get(figure) or 0 for v in entries) if entries else "not run"
    return row


CLUSTER_SCENARIOS = ("catchup", "leader_kills", "rolling_restart")
ROWS = [
    ("kills survived", total("kills", "kills")),
    ("broker outages survived", total("outages", "outage")),
    ("worker takeovers survived", total("takeovers", "takeover")),
    ("frames processed", total("frames")),
    ("books compared", total("books_compared")),
    ("books differing from the reference", total("books_differing", "kills")),
    ("capture frames missing from the raw topics", total("raw_frames_missing", "kills")),
    ("book.top records checked against truth", total("book_tops_checked")),
    ("book.top records matching no truth", total("book_tops_matching_no_truth")),
    ("bad inputs tried", total("bad_frames", "flood")),
    ("frames in dead letters", total("dead_letters", "flood")),
    ("frames dropped by ingestion in the outage (counted, books resynced)", total("frames_dropped_counted", "outage")),
    ("deliveries failed for good in the outage (counted, books resynced)",
     total("deliveries_failed_counted", "outage")),
    ("frames ingestion dropped in the takeovers", total("ingest_frames_dropped", "takeover")),
    ("deliveries failed for good in the takeovers", total("ingest_deliveries_failed", "takeover")),
    ("book.top at-least-once duplicates", total("book_top_duplicates")),
    # the three-node cluster scenarios (tests/chaos/test_cluster_chaos.py)
    ("worker kills in the catch-up on three brokers", total("worker_kills", "catchup")),
    ("broker leader kills survived", total("broker_kills", "leader_kills")),
    ("broker rolling restarts survived (nodes)", total("broker_restarts", "rolling_restart")),
    ("frames sent missing from the raw topics (cluster)",
     total("raw_frames_missing", *CLUSTER_SCENARIOS)),
    ("books differing from the reference (cluster)", total("books_differing", *CLUSTER_SCENARIOS)),
    ("reference top changes missing from book.top (cluster)", total("book_tops_missing", *CLUSTER_SCENARIOS)),
    ("reference risk.hedge records missing / repeated / unexpected (cluster)",
     lambda r: "/".join(str(total(f, *CLUSTER_SCENARIOS)(r)) for f in
                        ("hedge_missing", "hedge_duplicates", "hedge_unexpected"))),
    ("under-replicated partitions at the end (cluster)",
     total("under_replicated_partitions", *CLUSTER_SCENARIOS)),
    ("broker unreachable / back WARNING lines (cluster workers)",
     lambda r: "/".join(str(total(f, *CLUSTER_SCENARIOS)(r)) for f in
                        ("worker_log_broker_unreachable_lines", "worker_log_broker_back_lines"))),
    ("replays stopped by an error and run again (cluster)",
     lambda r: sum(len(v.get("replay_errors") or []) for k, v in r.items() if k in CLUSTER_SCENARIOS)),
    ("data lost (measured; see each scenario's `lost`)", total("lost")),
    ("scenarios failed", lambda r: ", ".join(sorted(k for k, v in r.items() if v.get("status") == "failed"))
     or "none"),
]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    if not REPORT:
        return
    # A run of some scenarios (-k) replaces them in the results file and keeps the others.
    merged: dict[str, dict[str, Any]] = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as fh:
            merged = {k: v for k, v in json.load(fh).get("scenarios", {}).items() if "status" in v}
    merged.update(REPORT)
    rows = [(name, fn(merged)) for name, fn in ROWS]
    width = max(len(n) for n, _ in rows)
    tr = terminalreporter
    tr.section("bookstream chaos report")
    for name, value in rows:
        tr.write_line(f"{name:<{width}}  {value:>12,}" if isinstance(value, int) else f"{name:<{width}}  {value:>12}")
    for scenario, entry in sorted(merged.items()):
        figures = {k: v for k, v in entry.items() if k not in ("status", "error", "failed_in", "run_at")}
        run = "this run" if scenario in REPORT else f"an earlier run, {entry.get('run_at')}"
        status = str(entry.get("status", "unknown")).upper()
        tr.write_line(f"{scenario}: {status} ({run}) {json.dumps(figures, sort_keys=True)}")
        if entry.get("status") == "failed":
            tr.write_line(f"    error ({entry.get('failed_in')}): {entry.get('error')}")
    out = {
        "when": WHEN,
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
