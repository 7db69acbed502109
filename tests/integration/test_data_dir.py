"""The worker refuses to start, with one clear line, on a data dir it cannot own."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest

from app.capture.formats import read
from tests.helpers import FAUST, ROOT, Namespace, Simulator, Worker, wait_for, workers


def test_a_second_worker_on_the_same_data_dir_is_refused_clearly(ns: Namespace, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, second = Worker(ns, data), Worker(ns, data)
    with workers(first, second):
        first.start()
        second.start(wait=False)
        assert second.proc is not None
        assert second.proc.wait(timeout=60) == 2
        log = second.log_text()
        assert f"DATA_DIR {data} is in use by another worker (pid {first.proc.pid})" in log  # type: ignore[union-attr]
        assert "Traceback" not in log
        assert first.get("/health")[0] == 200  # the first one is untouched


def test_an_unusable_data_dir_is_refused_clearly(ns: Namespace, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    worker = Worker(ns, blocker / "data")
    with workers(worker):
        worker.start(wait=False)
        assert worker.proc is not None
        assert worker.proc.wait(timeout=60) == 2
        log = worker.log_text()
        assert f"DATA_DIR {blocker / 'data'} is not usable" in log
        assert "Traceback" not in log


@pytest.mark.captures
def test_a_corrupted_table_dir_is_rebuilt_from_the_changelog(ns: Namespace, captures: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    worker = Worker(ns, data)
    with workers(worker):
        worker.start()
        ns.replay(str(captures / "cryptofeed" / "DERIBIT.ws.1.0"), "--format", "cryptofeed")
        before = wait_for(lambda: synced_books(worker), 90, "deribit books synced")
        worker.stop()
        files = [f for f in data.rglob("*") if f.is_file() and f.name != ".bookstream.lock"]
        assert any(f.suffix == ".sst" or f.name.startswith("MANIFEST") for f in files), files
        for f in files:  # garbage over every RocksDB file: headers, manifests, tables, logs
            f.write_bytes(b"\xde\xad\xbe\xef" * 64)
        worker.start()
        after = wait_for(lambda: details(worker, list(before)), 90, "the books after the restart")
        assert after == before
        log = worker.log_text()
        assert "discarding local table state in" in log
        assert "Traceback" not in log


def synced_books(worker: Worker) -> dict[str, tuple[object, ...]] | None:
    status, body = worker.get("/api/books")
    if status != 200 or not body["books"] or any(b["state"] != "synced" for b in body["books"]):
        return None
    return details(worker, [b["key"] for b in body["books"]])


def details(worker: Worker, keys: list[str]) -> dict[str, tuple[object, ...]] | None:
    """seq and every level of each book, as the (table-backed) detail endpoint gives them."""
    out = {}
    for key in keys:
        status, detail = worker.get(f"/api/books/{key.replace(':', '/', 1)}?depth=5000")
        if status != 200 or detail["state"] != "synced":
            return None
        out[key] = (detail["seq"], detail["bids"], detail["asks"])
    return out


def test_a_full_disk_stops_the_recorder_with_one_clear_line(tmp_path: Path) -> None:
    """The capture writer hits a file-size limit (RLIMIT_FSIZE: EFBIG, like ENOSPC on a full disk)."""
    sim = Simulator(tmp_path, rate=50).start()
    out = tmp_path / "captures"

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    try:
        proc = subprocess.run(
            [*FAUST, "record", "--out", str(out), "--feeds", "binance:BTCUSDT;okx:BTC-USDT"],
            env={**os.environ, "PYTHONPATH": str(ROOT), "FEED": "sim", "SIM_URL": sim.url, "LOG_LEVEL": "info"},
            cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, preexec_fn=small_disk,
        )
    finally:
        sim.kill()
    assert proc.returncode != 0
    written = sorted(out.glob("*.jsonl"))
    assert len(written) == 1, proc.stderr[-2000:]  # no new file after the failure (it would fail too)
    assert f"{written[-1]}: writing the capture failed (File too large); free disk space or record to another " \
           "folder (--out)" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # what was written before the failure is whole lines, still readable
    assert list(read(written, "native"))
