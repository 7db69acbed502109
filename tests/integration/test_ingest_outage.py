"""Kafka unreachable during ingestion: bounded memory, loss counted and reported, recovery."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from app.venues.base import Kind
from tests.helpers import FAUST, ROOT, Broker, Namespace, Simulator, consume, frames, rss_mb, wait_for


def test_broker_outage_keeps_memory_bounded_counts_losses_and_recovers(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "kafka").up()
    sim = Simulator(tmp_path, rate=200).start()
    ns = Namespace("outage", broker.bootstrap, tmp_path)
    log_path = tmp_path / "ingest.log"
    env = ns.env(FEED="sim", SIM_URL=sim.url, FEEDS="bybit-linear:BTCUSDT,ETHUSDT;okx:BTC-USDT",
                 INGEST_BUFFER_MB="0.5", INGEST_STATUS_S="1")
    ingest = subprocess.Popen([*FAUST, "ingest"], env=env, cwd=ROOT, stdout=log_path.open("wb"),
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(consume(ns.bootstrap, ns.topic("raw.okx"), idle_s=0.5)) > 100, 60, "raw frames")
        baseline = rss_mb(ingest.pid)
        broker.down()
        wait_for(lambda: "dropping frames" in log_path.read_text(), 60, "the buffer to fill and drop")
        peak = baseline
        for _ in range(20):  # sample memory through ten seconds of outage at full flow
            peak = max(peak, rss_mb(ingest.pid))
            time.sleep(0.5)
        assert peak - baseline < 40, f"RSS grew {peak - baseline:.1f} MB with a 0.5 MB buffer budget"
        log = log_path.read_text()
        assert "UNAVAILABLE" in log
        dropped = max(int(m.replace(",", "")) for m in re.findall(r"dropped ([\d,]+)", log))
        assert dropped > 0
        broker.up()
        wait_for(lambda: "accepts records again" in log_path.read_text(), 90, "ingestion to see Kafka back")
        gaps = wait_for(lambda: [f for f in frames(consume(ns.bootstrap, ns.topic("raw.bybit-linear"), idle_s=1))
                                 if f.kind is Kind.CONN], 60, "gap frames for lost books")
        assert {f.key for f in gaps} <= {"bybit-linear:BTCUSDT", "bybit-linear:ETHUSDT"}
        assert ingest.poll() is None, "ingestion must survive the outage"
        assert "Traceback" not in log_path.read_text()
    finally:
        ingest.terminate()
        try:
            ingest.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ingest.kill()
        sim.kill()
        broker.run("down")
