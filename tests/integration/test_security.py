"""Kafka SASL settings pass through to every client; the password shows up nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SASL_PASSWORD, SASL_USER
from tests.helpers import Namespace, Worker, consume, http_json, wait_for, workers

pytestmark = pytest.mark.captures


def sasl_env(password: str = SASL_PASSWORD) -> dict[str, str]:
    return {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": SASL_USER, "KAFKA_SASL_PASSWORD": password}


def test_worker_and_replay_through_a_sasl_listener_never_show_the_password(
        kafka: str, sasl_kafka: str, captures: Path, tmp_path: Path) -> None:
    ns = Namespace(f"sasl{tmp_path.name[-8:].replace('_', '')}", sasl_kafka, tmp_path)
    worker = Worker(ns, tmp_path / "data", **sasl_env())
    with workers(worker):
        worker.start()
        replay = ns.replay(str(captures / "cryptofeed" / "DERIBIT.ws.1.0"), "--format", "cryptofeed",
                           env=sasl_env())
        wait_for(lambda: worker.get("/api/books")[1]["count"] > 0, 60, "books from the SASL broker")
        assert worker.get("/ready")[0] == 200  # its broker probe authenticates too
        pages = [repr(http_json(worker.url + path)) for path in
                 ("/api/books", "/ready", "/metrics/counters", "/api/venues", "/health")]
    # the records went through the authenticated listener: the plain one sees them too
    tops = consume(kafka, ns.topic("book.top"), idle_s=1)
    assert tops, "no book.top record written through SASL"
    blobs = [worker.log_text(), replay.stdout, replay.stderr, *pages,
             *(r.value.decode("utf-8", "replace") for r in tops)]
    assert all(SASL_PASSWORD not in blob for blob in blobs)


def test_a_wrong_sasl_password_is_one_clear_error(sasl_kafka: str, captures: Path, tmp_path: Path) -> None:
    ns = Namespace("saslbad", sasl_kafka, tmp_path)
    proc = ns.replay(str(captures / "cryptofeed" / "DERIBIT.ws.1.0"), "--format", "cryptofeed", check=False,
                     env=sasl_env("wrong-password-8J"), timeout=120)
    assert proc.returncode != 0
    assert "cannot reach Kafka" in proc.stderr or "authentication" in proc.stderr.lower(), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "wrong-password-8J" not in proc.stderr + proc.stdout


def test_bad_security_settings_are_refused_at_start(tmp_path: Path) -> None:
    import subprocess

    from tests.helpers import FAUST, ROOT

    cases = {
        "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_USERNAME": {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD": "x-planted-1"},
        "KAFKA_SECURITY_PROTOCOL='KERBEROS' must be one of": {"KAFKA_SECURITY_PROTOCOL": "kerberos"},
        "KAFKA_SSL_CAFILE=/nope/ca.pem: no such file": {"KAFKA_SECURITY_PROTOCOL": "SSL",
                                                        "KAFKA_SSL_CAFILE": "/nope/ca.pem"},
    }
    import os

    for message, env in cases.items():
        proc = subprocess.run([*FAUST, "replay", "--format", "native", str(tmp_path / "x")],
                              env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert "x-planted-1" not in proc.stderr
