"""Simulator → real WebSockets → ingestion (inside a real worker) → Kafka → books.

One simulator and one worker for the module. Each injected fault targets its own
instrument, so the others prove that a fault never spreads.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    FAUST,
    ROOT,
    Namespace,
    SimSite,
    SimSiteFactory,
    Simulator,
    Worker,
    consume,
    match_truth,
    reference,
    wait_for,
    workers,
)

FEEDS = {
    "deribit": ["BTC-PERPETUAL", "ETH-PERPETUAL", "BTC-27MAR26-60000-C"],
    "binance": ["BTCUSDT"],
    "binance-usdm": ["BTCUSDT", "ETHUSDT"],
    "okx": ["BTC-USDT", "BTC-USDT-SWAP"],
    "bybit-linear": ["BTCUSDT", "ETHUSDT"],
    "coinbase": ["BTC-USD", "ETH-USD"],
}
# fault → instrument, and whether the fault must make the book stale (then resync)
FAULTS = [
    ("drop", "deribit", "BTC-PERPETUAL", True),
    ("reorder", "deribit", "BTC-27MAR26-60000-C", True),
    ("corrupt", "binance-usdm", "BTCUSDT", True),
    ("burst", "binance-usdm", "ETHUSDT", False),  # heavy flow, then a drop: snapshot during heavy flow
    ("duplicate", "binance", "BTCUSDT", False),
    ("slow", "binance", "BTCUSDT", False),  # slow delivery: late, never wrong
    ("okx-reset", "okx", "BTC-USDT", False),
    ("drop", "okx", "BTC-USDT-SWAP", True),
    ("bybit-restart", "bybit-linear", "BTCUSDT", False),
    ("reorder", "bybit-linear", "ETHUSDT", True),
    ("disconnect", "coinbase", "BTC-USD", True),
    ("silence", "coinbase", "ETH-USD", True),
]
CONTROL = "deribit:ETH-PERPETUAL"  # no fault, shares its connection with two faulted books


@pytest.fixture(scope="module")
def live(sim_site: SimSiteFactory) -> SimSite:
    return sim_site(FEEDS, DERIBIT_CLIENT_ID="planted-client-id-7Q", DERIBIT_CLIENT_SECRET="planted-secret-9Z",
                    OKX_API_KEY="planted-okx-key-3K", OKX_API_SECRET="planted-okx-secret-5M",
                    OKX_API_PASSPHRASE="planted-okx-pass-1P")


def test_every_book_top_equals_the_simulator_truth(live: SimSite) -> None:
    wait_for(lambda: all(b["counters"]["applied"] > 40 for b in live.books().values()), 30, "flow")
    checked = 0
    for key, tops in live.tops().items():
        venue, symbol = key.split(":", 1)
        checked += match_truth(tops, live.sim.truth(venue, symbol))
    assert checked > 300


def test_each_fault_stales_only_its_book_which_resyncs_and_is_correct_again(live: SimSite) -> None:
    # counted before any fault: a fault can take effect within milliseconds of its injection
    before = {k: b["counters"]["gaps"] for k, b in live.books().items()}
    for fault, venue, symbol, _ in FAULTS:
        live.sim.fault(venue, symbol, fault, seconds=4.0 if fault == "burst" else 6.0)
    live.sim.fault("binance-usdm", "ETHUSDT", "drop")  # a resync in the middle of the burst

    stale_expected = {f"{v}:{s}" for _, v, s, stale in FAULTS if stale} | {"binance-usdm:ETHUSDT"}

    def recovered() -> bool:
        books = live.books()
        return (all(books[k]["counters"]["gaps"] > before[k] for k in stale_expected)
                and all(b["state"] == "synced" for b in books.values()))

    wait_for(recovered, 60, "faulted books stale, then synced again", every=1)
    statuses = live.topic("book.status")
    went_stale = {f"{s['venue']}:{s['instrument']}" for s in statuses if s["state"] == "stale"}
    assert went_stale == stale_expected  # duplicates, resets and restarts are not gaps
    resyncs = {f"{r['venue']}:{r['instrument']}" for r in live.topic("control.resync")}
    assert resyncs == stale_expected
    dead = live.topic("raw.deadletter")
    assert {(d["venue"], d["instrument"], d["reason"]) for d in dead} == {("binance-usdm", "BTCUSDT", "bad-json")}

    after = {k: b["counters"]["applied"] for k, b in live.books().items()}
    wait_for(lambda: all(b["counters"]["applied"] > after[k] + 20 for k, b in live.books().items()), 30,
             "flow after recovery")
    for key, tops in live.tops().items():
        venue, symbol = key.split(":", 1)
        match_truth(tops, live.sim.truth(venue, symbol))
    assert "no data for" in live.worker.log_text()  # the silent feed's watchdog fired (data only: not its pings)
    assert CONTROL not in went_stale


def test_reconnect_after_the_simulator_is_killed_and_restarted(live: SimSite) -> None:
    port = live.sim.port
    live.sim.kill()
    wait_for(lambda: all(b["state"] != "synced" for b in live.books().values()), 30, "every book stale")
    live.sim = Simulator(live.ns.tmp, port=port, rate=20).start()
    wait_for(lambda: all(b["state"] == "synced" for b in live.books().values()), 60, "every book synced again",
             every=1)
    applied = {k: b["counters"]["applied"] for k, b in live.books().items()}
    wait_for(lambda: all(b["counters"]["applied"] > applied[k] + 10 for k, b in live.books().items()), 30, "flow")
    for key, tops in live.tops().items():  # the last tops come from the new simulator's books
        venue, symbol = key.split(":", 1)
        match_truth(tops[-5:], live.sim.truth(venue, symbol))


def test_credentials_never_appear_in_logs_or_topics(live: SimSite) -> None:
    planted = ["planted-client-id-7Q", "planted-secret-9Z", "planted-okx-key-3K", "planted-okx-secret-5M",
               "planted-okx-pass-1P"]
    log = live.worker.log_text()
    assert "deribit" in log
    outputs = ["book.top", "book.status", "book.depth", "raw.deadletter", "control.resync"]
    blobs = [log, *(str(live.topic(n)) for n in outputs)]
    raw = [r.value for v in FEEDS for r in consume(live.ns.bootstrap, live.ns.topic(f"raw.{v}"), idle_s=1)]
    raw += [r.value for r in consume(live.ns.bootstrap, f"{live.ns.name}-books-changelog", idle_s=1) if r.value]
    assert raw
    for secret in planted:
        assert all(secret not in blob for blob in blobs)
        assert all(secret.encode() not in value for value in raw)
    # the raw channels were used: the credentials reached the (simulated) venue
    assert any(b'.raw"' in v or b"book.BTC-PERPETUAL.raw" in v for v in raw)


def test_recorded_session_replays_to_the_same_books(live: SimSite, ns: Namespace, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    env = ns.env(FEED="sim", SIM_URL=live.sim.url, FEEDS="deribit:BTC-PERPETUAL;okx:BTC-USDT;coinbase:BTC-USD")
    rec = subprocess.Popen([*FAUST, "record", "--out", str(out), "--rotate-mb", "0.05"], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=(tmp_path / "rec.log").open("wb"), start_new_session=True)
    try:
        wait_for(lambda: len(list(out.glob("*.jsonl"))) >= 3, 60, "a few rotated capture files")
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=30)
    files = sorted(out.glob("*.jsonl"))
    assert all(f.stat().st_size <= 0.05 * 1024 * 1024 for f in files[:-1])
    ref = reference(files, "native")
    worker = Worker(ns, tmp_path / "data")
    with workers(worker):
        worker.start()
        ns.replay(*map(str, files), "--format", "native")
        for key, inst in ref.instruments.items():
            venue, symbol = key.split(":", 1)
            if not symbol:
                continue
            assert inst.status == "synced", (key, inst.reason)
            body = wait_for(lambda v=venue, s=symbol, i=inst: (lambda r: r if r[0] == 200 and r[1]["seq"] == i.seq
                                                              else None)(worker.get(f"/api/books/{v}/{s}?depth=5000")),
                            60, f"{key} replayed")[1]
            bids, asks = [list(x) for x in inst.book.iter_bids()], [list(x) for x in inst.book.iter_asks()]
            assert (body["bids"], body["asks"]) == (bids[:5000], asks[:5000])
