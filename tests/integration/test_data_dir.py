"""The worker refuses to start, with one clear line, on a data dir it cannot own."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Namespace, Worker, workers


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
