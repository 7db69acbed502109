"""`make soak`: the takeover tests again and again, each repetition a fresh pytest run.

    make soak                 # SOAK_N=20 repetitions
    SOAK_N=2 make soak

Runs TESTS (or the pytest arguments in ``SOAK_TESTS``, space-separated) ``SOAK_N`` times, one
new ``pytest`` process per repetition (a new namespace, new workers, a new simulator; the
suite's broker is started by the run unless it already runs).
Prints a line per repetition and a table at the end, writes SOAK_RESULTS
(bench/soak-results.json): the counts per test and in total, when, and for each failure the
repetition, the test id and the last lines of its output. Exits 1 if any test of any
repetition did not pass (failed, errored, skipped or did not run), 2 on a bad SOAK_N.
Standard library only; every pytest run's full output stays in SOAK_LOGS (.data/soak).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET  # noqa: S405 - parses the junit file our own pytest run wrote
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: What each repetition runs (a file: every test in it).
TESTS = [
    "tests/integration/test_takeover.py",
    "tests/integration/test_web.py::test_second_worker_answers_for_every_instrument_through_table_routing",
]
TAIL_LINES = 40
RUN_TIMEOUT_S = 1800


def node_id(case: ET.Element) -> str:
    """A junit testcase as a pytest node id (module-level test functions)."""
    return case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """test id → (outcome, the failure's text) from a pytest junit file (empty if there is none)."""
    if not junit.exists():
        return {}
    out: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314 - our own pytest's junit file
        bad = next((case.find(tag) for tag in ("failure", "error", "skipped") if case.find(tag) is not None), None)
        if bad is None:
            out[node_id(case)] = ("passed", "")
        else:
            text = bad.text or bad.get("message") or ""
            out[node_id(case)] = ({"failure": "failed"}.get(bad.tag, bad.tag), text)
    return out


def tail(text: str, n: int = TAIL_LINES) -> list[str]:
    return text.rstrip().splitlines()[-n:]


def run_once(rep: int, logs: Path, tests: list[str]) -> tuple[dict[str, tuple[str, str]], str, float]:
    """One fresh pytest run of TESTS: (per-test outcome and failure text, its log file, seconds)."""
    junit, log = logs / f"rep-{rep:03d}.xml", logs / f"rep-{rep:03d}.log"
    junit.unlink(missing_ok=True)
    began = time.monotonic()
    with log.open("w") as fh:
        try:
            subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", f"--junitxml={junit}",
                            *tests], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=fh,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            fh.write(f"\nsoak: the pytest run did not end within {RUN_TIMEOUT_S} s and was killed\n")
    seconds = time.monotonic() - began
    got = outcomes(junit)
    output = log.read_text(errors="replace")
    for arg in tests:  # a run that crashed, timed out or failed to collect: its output says why
        if not any(t == arg or t.startswith(arg + "::") for t in got):
            got[arg] = ("not run", output)
    return got, str(log), seconds


def main() -> int:
    try:
        n = int(os.environ.get("SOAK_N") or 20)
        if n < 1:
            raise ValueError(n)
    except ValueError:
        print(f"soak: SOAK_N must be a whole number ≥ 1 (got {os.environ.get('SOAK_N')!r})", file=sys.stderr)
        return 2
    results = Path(os.environ.get("SOAK_RESULTS") or ROOT / "bench" / "soak-results.json")
    logs = Path(os.environ.get("SOAK_LOGS") or ROOT / ".data" / "soak")
    logs.mkdir(parents=True, exist_ok=True)
    tests = os.environ.get("SOAK_TESTS", "").split() or TESTS
    started = time.time()
    counts: dict[str, dict[str, int]] = {}  # test id → passed, failed
    failures: list[dict[str, Any]] = []
    for rep in range(1, n + 1):
        got, log, seconds = run_once(rep, logs, tests)
        for test, (outcome, text) in got.items():
            counts.setdefault(test, {"passed": 0, "failed": 0})
            if outcome == "passed":
                counts[test]["passed"] += 1
            else:
                counts[test]["failed"] += 1
                failures.append({"repetition": rep, "test": test, "outcome": outcome, "log": log,
                                 "output_tail": tail(text)})
        bad = [t.rpartition("::")[2] or t for t, (o, _) in got.items() if o != "passed"]
        print(f"soak {rep}/{n}: {len(got) - len(bad)} passed, {len(bad)} failed ({seconds:.0f} s)"
              + (f": {', '.join(bad)}" if bad else ""), flush=True)
    total = {"passed": sum(c["passed"] for c in counts.values()), "failed": sum(c["failed"] for c in counts.values())}
    report = {
        "command": "make soak", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1), "repetitions": n, "pytest_args": tests,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "tests": counts, "total": total, "failures": failures,
    }
    results.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(t) for t in [*counts, "total"])
    print(f"\nsoak report: {n} repetitions, {report['duration_s']:.0f} s")
    for test, c in counts.items():
        print(f"  {test:<{width}}  {c['passed']:>3} passed  {c['failed']:>3} failed")
    print(f"  {'total':<{width}}  {total['passed']:>3} passed  {total['failed']:>3} failed")
    for f in failures:
        print(f"\nFAILED (repetition {f['repetition']}, {f['outcome']}) {f['test']}  [{f['log']}]")
        print("\n".join(f"  | {line}" for line in f["output_tail"][-15:]))
    print(f"written to {results}")
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
