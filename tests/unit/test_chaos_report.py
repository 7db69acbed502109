"""The `make chaos` report (tests/chaos/conftest.py): every scenario run shows its own outcome.

A pytest run of stand-in scenarios with the real conftest: one passes, one fails in its call,
one fails in its setup; the results file of an "earlier run" holds other figures for the
failing one. The failures must show as failed with their error line and this run's figures,
never the earlier run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

SCENARIOS = '''
import pytest


@pytest.mark.scenario("kills")
def test_kills(report):
    report.update(kills=3, books_compared=4, lost=0)


@pytest.mark.scenario("takeover")
def test_takeover(report):
    report.update(takeovers=1, book_tops_matching_no_truth=2, lost=2)
    assert report["lost"] == 0, "2 book.top records match no true book"


@pytest.mark.scenario("outage")
def test_outage(report, no_such_fixture):
    report.update(outages=1, lost=0)
'''

EARLIER = {"scenarios": {
    "takeover": {"status": "passed", "run_at": "2026-01-01T00:00:00Z", "takeovers": 99, "lost": 0},
    "flood": {"status": "passed", "run_at": "2026-01-01T00:00:00Z", "bad_frames": 5, "lost": 0},
    "legacy": {"kills": 20, "lost": 0},  # written before figures were measured: no status
}}


def test_a_failed_scenario_shows_failed_with_its_error_and_never_an_earlier_runs_figures(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "chaos" / "conftest.py").read_text())
    (tmp_path / "test_scenarios.py").write_text(SCENARIOS)
    results = tmp_path / "chaos-results.json"
    results.write_text(json.dumps(EARLIER))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT), CHAOS_RESULTS=str(results)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = json.loads(results.read_text())
    scenarios = out["scenarios"]
    assert set(scenarios) == {"kills", "takeover", "outage", "flood"}  # the legacy entry is dropped
    assert scenarios["kills"]["status"] == "passed"
    assert scenarios["kills"]["kills"] == 3
    takeover = scenarios["takeover"]
    assert takeover["status"] == "failed"
    assert takeover["failed_in"] == "call"
    assert "2 book.top records match no true book" in takeover["error"]
    assert takeover["takeovers"] == 1  # this run's figure, not the earlier 99
    assert takeover["run_at"] == out["when"]
    assert scenarios["outage"]["status"] == "failed"
    assert scenarios["outage"]["failed_in"] == "setup"
    assert "no_such_fixture" in scenarios["outage"]["error"]
    assert scenarios["flood"] == EARLIER["scenarios"]["flood"]  # not run now: kept, with its run's time
    assert out["this_run"] == ["kills", "outage", "takeover"]
    assert out["summary"]["scenarios failed"] == "outage, takeover"
    assert out["summary"]["data lost (measured; see each scenario's `lost`)"] == 2
    assert out["summary"]["worker takeovers survived"] == 1
    assert out["summary"]["bad inputs tried"] == 5  # the earlier run's flood
    assert "takeover: FAILED (this run)" in proc.stdout
    assert "flood: PASSED (an earlier run, 2026-01-01T00:00:00Z)" in proc.stdout
