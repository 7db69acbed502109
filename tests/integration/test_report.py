"""`faust -A app report DATE` against the real broker: the day of a replayed capture, with what the
worker publishes for it and a desk's risk records, becomes Parquet tables whose figures are those
of the topics, and the page the web view serves at /reports/DATE opens in a real browser."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from app.capture.formats import read
from app.wire import RawFrame
from tests.conftest import ARTIFACTS
from tests.helpers import Namespace, Worker, consume, frames, produce_records, publish, wait_for, workers
from tests.unit.test_market import paths
from tests.unit.test_risk import _market, _run

pytestmark = pytest.mark.captures


def test_a_days_report_holds_the_topics_figures_and_opens_in_a_browser(ns: Namespace, captures: Path,
                                                                      tmp_path: Path, browser: Any) -> None:
    capture = paths(captures, "OKX.ws.1.0")
    records = list(read(capture, "cryptofeed"))
    day = datetime.fromtimestamp(records[0].ts / 1e9, tz=UTC).date().isoformat()
    ns.replay(*map(str, capture), "--format", "cryptofeed")
    sent = publish(read(capture, "cryptofeed"))
    # the risk engine's test desk runs at its own times: moved into the capture's day (its records'
    # own times, which the report selects by), so that one report holds both
    start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) * 10**9
    outs = _run(_market(60)) + _run(_market(30, stale_at=0))
    shift = min(body["ts"] for _, _, body in outs) - (start + 3600 * 10**9)
    risk = [(topic, 0, key.encode(), json.dumps({**body, "ts": body["ts"] - shift}).encode())
            for topic, key, body in outs]
    produce_records(ns, sent + risk)
    out = tmp_path / "reports"
    proc = ns.faust("report", day, "--out", str(out), timeout=300)
    assert "report.html" in proc.stderr
    folder = out / day

    in_day = range(start, start + 86_400 * 10**9)
    raw = [f for f in frames(consume(ns.bootstrap, ns.topic("raw.okx"), idle_s=1))
           if isinstance(f, RawFrame) and f.ts in in_day and f.key.partition(":")[2]]
    want_frames = Counter(f.key for f in raw)
    got = {f"{r['venue']}:{r['instrument']}": r for r in pq.read_table(folder / "instruments.parquet").to_pylist()}
    assert {k: r["frames"] for k, r in got.items() if r["frames"]} == dict(want_frames)
    bodies = [(t, json.loads(v)) for t, _, _, v in sent if t in ("trades", "ticker")]
    for topic, column in (("trades", "trades"), ("ticker", "tickers")):
        want = Counter(b["key"] for t, b in bodies if t == topic and b["ts_recv"] in in_day)
        assert {k: r[column] for k, r in got.items() if r[column]} == dict(want), topic
    # the raw chains of the day the records were written (today): the digest `verify` gives for it
    today = datetime.now(UTC).date()
    ns.faust("report", today.isoformat(), "--out", str(out), timeout=300)
    chains = pq.read_table(out / today.isoformat() / "chains.parquet").to_pylist()
    total = next(c for c in chains if c["topic"] == "all")
    assert (total["findings"], total["frames"]) == (0, len(frames(consume(ns.bootstrap, ns.topic("raw.okx"),
                                                                          idle_s=1))))
    verified = ns.faust("verify", "--from", today.isoformat(), "--to",
                        str(int(datetime.fromisoformat(today.isoformat()).replace(tzinfo=UTC).timestamp()) * 10**9
                            + 86_400 * 10**9 - 1))
    assert f"end digest {total['end_digest']}" in verified.stdout, verified.stdout

    # the risk records, in the same day's report
    risk_day = day
    hedges = pq.read_table(out / risk_day / "hedges.parquet").to_pylist()
    published = [json.loads(v) for t, _, _, v in risk if t == "risk.hedge"]
    assert sorted(h["id"] for h in hedges) == sorted(h["id"] for h in published)
    assert all(json.loads(h["inputs"]) for h in hedges if h["type"] == "signal")
    risk_rows = pq.read_table(out / risk_day / "risk.parquet").to_pylist()
    assert risk_rows
    assert all(r["worst_case_usd"] is not None for r in risk_rows)

    # and on a schedule: a worker past its REPORT_DAILY_AT writes yesterday's report by itself
    worker = Worker(ns, tmp_path / "data", REPORTS_DIR=str(out), REPORT_DAILY_AT="00:00", INGEST_IN_WORKER="false")
    with workers(worker):
        worker.start()
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{worker.url}/reports/{day}")
        page.wait_for_selector("#instruments-table tbody tr", timeout=15_000)
        assert page.title() == f"bookstream daily report {day}"
        rows = page.locator("#instruments-table tbody tr").count()
        assert rows == len(got)
        page.screenshot(path=str(ARTIFACTS / "daily-report.png"), full_page=True)
        page.close()
        yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
        wait_for(lambda: f"daily report for {yesterday} written" in worker.log_text(), 60,
                 "the worker's own report of yesterday")
        assert (out / yesterday / "report.html").exists()
        status, body = worker.get("/reports/2001-01-01")
        assert status == 404
        assert "no report for 2001-01-01" in body["error"]
        assert worker.get("/reports/..%2F..%2Fetc")[0] == 400
