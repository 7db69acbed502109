"""`make run` as a user runs it: broker + worker + web, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
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

        try:
            wait_for(demo_risk, 90, "the demo portfolio's exposure, scenarios and a hedge signal on /api/risk")
        except AssertionError as exc:  # say where the engine stands: positions read, inputs held back
            risk = http_json(f"{web}/api/risk")[1]
            lag_s = time.time() - risk["event_time"] / 1e9
            raise AssertionError(f"{exc}\npositions read: {len(risk['positions'])}, pending inputs: "
                                 f"{risk['pending_inputs']}, event time {lag_s:.1f} s behind the clock, held by "
                                 f"{risk['event_time_held_by']}") from None

        def closed_loop() -> bool:  # the paper executor fills a signal, the fill moves the position
            risk = http_json(f"{web}/api/risk")[1]
            fills = {f["signal"]: f for f in risk["fills"] if f["by"] == "paper" and f["state"] == "filled"}
            filled = [h for h in risk["hedge"] if h["type"] == "signal" and h["id"] in fills]
            exposure = [e for e in risk["exposure"] if e["portfolio"] == "demo" and e["underlying"] == "BTC"]
            perp = [p for e in exposure for p in e["positions"] if p["instrument"] == "deribit:BTC-PERPETUAL"]
            margin = [m for m in risk["margin"] if (m["portfolio"], m["venue"], m["currency"]) == ("demo", "deribit",
                                                                                                    "BTC")]
            back = [e for e in exposure if filled and e["ts"] > max(fills[h["id"]]["ts"] for h in filled)
                    and abs(e["delta"]) <= 0.5]  # the demo rule's band
            held = [h["quantity"] for h in risk["held"] if (h["portfolio"], h["instrument"]) == ("demo",
                                                                                               "deribit:BTC-PERPETUAL")]
            return bool(filled and perp and perp[0]["quantity"] != "-20000" and held != ["-20000"] and back and margin
                        and margin[0]["collateral"] == 1.0 and margin[0]["mm"] > 0 and margin[0]["mm_ratio"] > 0)

        wait_for(closed_loop, 60, "a demo signal filled by the paper executor, the position moved, the exposure "
                 "back inside the band, margin on /api/risk")
        broker_pid = int((tmp_path / "kafka" / "kafka.pid").read_text())
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert proc.wait(timeout=60) is not None
        output = (tmp_path / "run.log").read_text()
        assert f"http://127.0.0.1:{web_port}/" in output
        assert "stopped" in output
        wait_for(lambda: not Path(f"/proc/{broker_pid}").exists(), 30, "broker process gone")
        assert _group(proc.pid) == []  # run.sh returns only once all it started is gone
        assert not _port_open(web_port)  # the worker's web server is gone
    finally:
        _kill_group(proc)
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "down"], env=env, capture_output=True, timeout=60)


def test_ctrl_c_while_the_demo_positions_job_runs_stops_it_too(tmp_path: Path) -> None:
    """Ctrl-C before the demo portfolio is set: run.sh stops the demo job and the command it runs.

    They run in the background, where bash makes them ignore SIGINT, so the group's Ctrl-C alone
    leaves them running (a `faust` command handles SIGINT only once started). A stand-in `faust`
    (FAUST) that ignores SIGINT, as one still starting up does, and an address for a broker that
    is not started (KAFKA_BOOTSTRAP) keep this to a second or two."""
    fake = tmp_path / "faust"
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")  # worker, simulate, positions alike
    fake.chmod(0o755)
    env = dict(os.environ, FAUST=str(fake), KAFKA_BOOTSTRAP="127.0.0.1:1", FEED="sim", DEMO_POSITIONS="1",
               FEEDS="deribit:BTC-PERPETUAL",
               WEB_PORT=str(free_port()), SIM_PORT=str(free_port()), DATA_DIR=str(tmp_path / "data"))
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(["scripts/run.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: any("positions set" in p for p in _group(proc.pid)), 60,
                 f"the demo job's command (log: {tmp_path / 'run.log'})")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:  # each stop waits up to 15 s for its process before SIGKILL: slow under a loaded CI, never stuck
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run.sh still running 90 s after Ctrl-C; its group: {_group(proc.pid)}\n"
                                 f"{(tmp_path / 'run.log').read_text()}") from None
        output = (tmp_path / "run.log").read_text()
        assert _group(proc.pid) == [], output
        assert "stopping demo positions job" in output
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of ``proc``'s process group (after a failure: nothing, if all went well)."""
    if proc.poll() is None or _group(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _group(pgid: int) -> list[str]:
    """The processes of process group ``pgid``: pid, parent, state, command line (zombies too)."""
    out = subprocess.run(["ps", "-eww", "-o", "pgid=,pid=,ppid=,stat=,args="], capture_output=True, text=True)
    return [line.split(None, 1)[1] for line in out.stdout.splitlines() if line.split(None, 1)[0] == str(pgid)]


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
