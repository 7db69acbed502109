"""The local broker and a round trip through it."""

from __future__ import annotations

import asyncio
import os
import subprocess

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.helpers import ROOT, Namespace, consume


def test_round_trip_through_the_real_broker(ns: Namespace) -> None:
    topic = ns.topic("roundtrip")

    async def produce() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=ns.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 2, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=ns.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(100):
                await producer.send(topic, f"v{i}".encode(), key=f"k{i % 7}".encode(), headers=[("h", b"1")])
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())
    records = consume(ns.bootstrap, topic, stop=lambda rs: len(rs) >= 100, timeout=30)
    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(100))
    assert all(r.headers == (("h", b"1"),) for r in records)
    assert {r.partition for r in records} == {0, 1}


def test_kafka_up_is_idempotent_and_status_reports_ready(kafka: str) -> None:
    port = kafka.rpartition(":")[2]
    env = dict(os.environ, KAFKA_PORT=port, KAFKA_DATA_DIR=str(ROOT / ".data" / "kafka-test"))
    if "KAFKA_BOOTSTRAP" in os.environ:
        env["KAFKA_DATA_DIR"] = str(ROOT / ".data" / "kafka")
    up = subprocess.run([str(ROOT / "scripts/kafka.sh"), "up"], env=env, capture_output=True, text=True, timeout=120)
    if "KAFKA_BOOTSTRAP" not in os.environ:
        assert up.returncode == 0, up.stderr
        assert "already running" in up.stderr
        status = subprocess.run([str(ROOT / "scripts/kafka.sh"), "status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0
        assert "ready" in status.stderr


def test_kafka_up_refuses_a_port_taken_by_something_else(kafka: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = kafka.rpartition(":")[2]
    env = dict(os.environ, KAFKA_PORT=port, KAFKA_DATA_DIR=str(tmp_path / "other"))
    proc = subprocess.run([str(ROOT / "scripts/kafka.sh"), "up"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"port {port} is already in use" in proc.stderr


def test_stale_pid_file_is_reported_and_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "k"
    data.mkdir()
    (data / "kafka.pid").write_text("999999\n")
    env = dict(os.environ, KAFKA_PORT="19999", KAFKA_DATA_DIR=str(data))
    proc = subprocess.run([str(ROOT / "scripts/kafka.sh"), "status"], env=env, capture_output=True, text=True)
    assert proc.returncode == 3
    assert "stale pid file" in proc.stderr
    assert not (data / "kafka.pid").exists()
