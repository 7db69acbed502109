"""`make chaos` scenario ``broker-restart``: a broker restart under a running worker — one
WARNING each way per broker, counted in /metrics, and none of aiokafka's connection-failure
ERROR lines (app/brokers.py). (A fault scenario with a 15 s outage: moved from `make test`.)"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Broker, Namespace, Worker, wait_for, workers

#: aiokafka's lines that only repeat "the broker cannot be reached" (thousands per restart before).
CONNECTION_NOISE = re.compile(r"\[ERROR\].*(Unable connect to|Unable to update metadata|NodeNotReadyError|"
                              r"KafkaConnectionError|Connection refused|Group Coordinator Request failed|"
                              r"Failed fetch messages)")


def metrics_text(worker: Worker) -> str:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as resp:  # noqa: S310 - our own worker
        return str(resp.read().decode())


@pytest.mark.scenario("broker-restart")
def test_broker_restart_is_one_warning_each_way_and_counted(tmp_path: Path, report: dict[str, Any]) -> None:
    broker = Broker(tmp_path / "kafka").up()
    ns = Namespace("brokerev", broker.bootstrap, tmp_path)
    worker = Worker(ns, tmp_path / "data")
    try:
        with workers(worker):
            worker.start(timeout=120)
            assert "bookstream_brokers_unreachable 0" in metrics_text(worker)
            before = len(worker.log_text())
            down_at = time.monotonic()
            broker.down()
            wait_for(lambda: "unreachable:" in worker.log_text()[before:], 30, "the worker to see the broker gone")
            time.sleep(15)
            broker.up()
            wait_for(lambda: "back after" in worker.log_text()[before:], 90, "the worker to see the broker back")
            report["broker_down_to_seen_back_s"] = round(time.monotonic() - down_at, 1)
            wait_for(lambda: "bookstream_brokers_unreachable 0" in metrics_text(worker), 30, "the gauge back at 0")
            time.sleep(10)  # anything the clients still had to say about the restart
            text = metrics_text(worker)
            log = worker.log_text()[before:]
        lines = log.splitlines()
        gone = [ln for ln in lines if re.search(r"kafka: broker .* unreachable: ", ln)]
        back = [ln for ln in lines if re.search(r"kafka: broker \S+ back after [\d.]+s", ln)]
        noise = [ln for ln in lines if CONNECTION_NOISE.search(ln)]
        report.update(warnings_gone=len(gone), warnings_back=len(back), error_noise_lines=len(noise))
        assert len(gone) == 1, gone
        assert len(back) == 1, back
        assert "[WARNING]" in gone[0], gone
        assert "[WARNING]" in back[0], back
        assert "broker 1 (127.0.0.1:" in gone[0], gone[0]
        assert not noise, f"{len(noise)} connection-failure ERROR lines, e.g. {noise[:5]}"
        assert 'bookstream_broker_disconnects_total{node="1"} 1' in text, text
        assert "bookstream_brokers_unreachable 0" in text
        suppressed = int(re.search(r"bookstream_kafka_log_lines_suppressed_total (\d+)", text).group(1))  # type: ignore[union-attr]
        assert suppressed > 0
        assert "Traceback" not in log
    finally:
        broker.run("down")
