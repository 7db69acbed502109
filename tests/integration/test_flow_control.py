"""Late, never lossy: a worker whose outputs Kafka takes slowly, or not at all for a while,
pauses its raw partitions and publishes every output record once Kafka takes them.

Both tests apply the whole Binance USD-M capture and check every top change of the in-process
reference against ``book.top``: none missing, none wrong (at-least-once repeats aside).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, Namespace, Worker, consume, reference, values, wait_for, workers
from tests.unit.test_captures import hft

pytestmark = pytest.mark.captures

KEY = "binance-usdm:BTCUSDT"


def reference_tops(paths: list[Path]) -> tuple[Any, set[tuple[int, str, str, str, str]]]:
    """Every top change the reference publishes for KEY: (seq, bid px, bid size, ask px, ask size)."""
    tops: set[tuple[int, str, str, str, str]] = set()

    def on(raw: Any, out: Any) -> None:
        if out.key == KEY:
            tops.update((seq, *top) for seq, _, top in out.fx.tops)

    return reference(paths, "hftbacktest", on_outcome=on), tops


def published_tops(ns: Namespace) -> set[tuple[int, str, str, str, str]]:
    return {(t["seq"], t["bid_px"], t["bid_sz"], t["ask_px"], t["ask_sz"])
            for t in values(consume(ns.bootstrap, ns.topic("book.top"), idle_s=1)) if t["instrument"] == "BTCUSDT"}


def set_producer_quota(bootstrap: str, client_id: str, bytes_per_s: int | None) -> None:
    """A Kafka client quota (the broker throttles that client id's produce requests), set with
    Kafka's own ConfigCommand from the Maven-resolved jars; ``None`` removes it."""
    change = (["--add-config", f"producer_byte_rate={bytes_per_s}"] if bytes_per_s is not None
              else ["--delete-config", "producer_byte_rate"])
    cmd = ["java", "-cp", str(ROOT / ".cache" / "kafka" / "libs" / "*"), "kafka.admin.ConfigCommand",
           "--bootstrap-server", bootstrap, "--alter", *change, "--entity-type", "clients", "--entity-name", client_id]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr


def finished(worker: Worker, ns: Namespace, want_seq: int, want: set[tuple[int, str, str, str, str]]
             ) -> set[tuple[int, str, str, str, str]]:
    """Once the worker's book reached the reference's last seq: book.top, once it holds every top
    change of the reference (what it holds then, to compare)."""

    def done() -> bool:
        status, body = worker.get("/api/books/binance-usdm/BTCUSDT")
        return status == 200 and body["seq"] == want_seq

    wait_for(done, 300, f"the book at seq {want_seq}", every=1)
    got: set[tuple[int, str, str, str, str]] = wait_for(lambda: (g := published_tops(ns)) >= want and g, 300,
                                                        "every top delivered", every=2)
    return got


def counters(worker: Worker) -> dict[str, Any]:
    status, body = worker.get("/metrics/counters")
    return body if status == 200 else {}


def test_a_throttled_output_producer_pauses_the_worker_and_every_top_is_delivered(ns: Namespace, captures: Path,
                                                                                   tmp_path: Path) -> None:
    paths = hft(captures, "usdm")
    ref, want = reference_tops(paths)
    ns.replay(*map(str, paths), "--format", "hftbacktest")  # the backlog a restarted worker catches up
    # ~100,000 output records (tops, tickers, trades) through a 1 MiB budget at 300 KB/s
    set_producer_quota(ns.bootstrap, f"{ns.name}-outputs", 300_000)
    worker = Worker(ns, tmp_path / "data", OUTPUT_BUFFER_MB="1", RISK_ENABLED="false")
    try:
        with workers(worker):
            worker.start()
            wait_for(lambda: counters(worker).get("outputs_paused", 0) > 0, 120, "the worker to pause on its outputs")
            got = finished(worker, ns, ref.instruments[KEY].seq, want)
            log = worker.log_text()
    finally:
        set_producer_quota(ns.bootstrap, f"{ns.name}-outputs", None)
    assert got == want, f"{len(want - got)} top changes missing, {len(got - want)} not in the reference"
    assert "raw partitions paused" in log
    assert "dropping" not in log
    assert "given up" not in log
    assert "Traceback" not in log
