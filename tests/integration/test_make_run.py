"""`make run` as a user runs it: broker + worker + web, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import ROOT, free_port, http_json, wait_for


def test_make_run_starts_broker_and_worker_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    kafka_port, web_port = free_port(), free_port()
    env = dict(os.environ, KAFKA_PORT=str(kafka_port), KAFKA_CONTROLLER_PORT=str(free_port()),
               KAFKA_DATA_DIR=str(tmp_path / "kafka"), WEB_PORT=str(web_port), DATA_DIR=str(tmp_path / "data"),
               APP_ID="makerun", BROKER_SESSION_TIMEOUT="6", SIM_PORT=str(free_port()))
    for name in ("KAFKA_BOOTSTRAP", "FEEDS", "FEEDS_FILE"):  # out of the box: every simulated venue
        env.pop(name, None)
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(["scripts/run.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: http_json(f"http://127.0.0.1:{web_port}/health")[0] == 200, 120, "web /health")
        web = f"http://127.0.0.1:{web_port}"

        def synced() -> bool:  # live books from the simulator within seconds of the command
            books = http_json(f"{web}/api/books")[1]["books"]
            return {b["key"] for b in books if b["state"] == "synced"} >= {
                "deribit:BTC-PERPETUAL", "okx:BTC-USDT", "coinbase:BTC-USD", "binance-usdm:BTCUSDT"}

        wait_for(synced, 90, "books synced from the simulator")

        def market() -> bool:  # trades, tickers and live options chains out of the box
            perp = http_json(f"{web}/api/market/deribit/BTC-PERPETUAL")[1]
            chains = http_json(f"{web}/api/options/deribit/BTC")[1]["chains"]
            return bool(perp["trades"]) and perp["ticker"] is not None and len(chains) == 2 and all(
                row["call"] and row["call"].get("ours", {}).get("mark_iv") for c in chains for row in c["strikes"])

        wait_for(market, 90, "trades, a ticker and two BTC option chains with our IVs")

        def demo_risk() -> bool:  # the demo portfolio: live exposure, the scenario grid, a hedge signal
            risk = http_json(f"{web}/api/risk")[1]
            exposure = [e for e in risk["exposure"] if e["portfolio"] == "demo" and e["underlying"] == "BTC"]
            grids = [g for g in risk["scenarios"] if g["portfolio"] == "demo"]
            signals = [h for h in risk["hedge"] if h["rule"] == "demo-btc-delta" and h["type"] == "signal"]
            return bool(exposure and len(exposure[0]["positions"]) == 3 and grids
                        and len(grids[0]["pnl_usd"]) == 11 and signals)

        wait_for(demo_risk, 90, "the demo portfolio's exposure, scenarios and a hedge signal on /api/risk")
        broker_pid = int((tmp_path / "kafka" / "kafka.pid").read_text())
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = (tmp_path / "run.log").read_text()
    assert f"http://127.0.0.1:{web_port}/" in output
    assert "stopped" in output
    wait_for(lambda: not Path(f"/proc/{broker_pid}").exists(), 30, "broker process gone")
    leftovers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
    assert not _port_open(web_port)  # the worker's web server is gone


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
