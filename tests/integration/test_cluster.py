"""The replicated three-node cluster of scripts/kafka.sh (KAFKA_NODES=3): real JVMs, real kills."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from scripts.harness import Cluster
from scripts.kafka_ready import metadata
from tests.helpers import wait_for


def test_three_brokers_in_the_metadata_and_the_bootstrap_names_them(cluster: Cluster) -> None:
    for node in (1, 2, 3):  # every node answers, and lists all three
        host, _, port = cluster.address(node).rpartition(":")
        meta = metadata(host, int(port), [])
        assert sorted(meta.brokers) == [1, 2, 3]
        assert {p for _, p in meta.brokers.values()} == set(cluster.ports)
    boot = cluster.run("bootstrap")
    assert boot.returncode == 0, boot.stderr
    assert boot.stdout.strip() == cluster.bootstrap
    assert len(cluster.bootstrap.split(",")) == 3
    props = (cluster.data_dir / "node-2" / "server.properties").read_text()
    for line in ("node.id=2", "process.roles=broker,controller", "default.replication.factor=3",
                 "min.insync.replicas=2", "offsets.topic.replication.factor=3",
                 "transaction.state.log.replication.factor=3", "transaction.state.log.min.isr=2",
                 "unclean.leader.election.enable=false", "log.retention.ms=-1"):
        assert line in props.splitlines(), line
    ids = {(cluster.data_dir / f"node-{n}" / "kraft-logs" / "meta.properties").read_text().split("cluster.id=")[1]
           .split()[0] for n in (1, 2, 3)}
    assert len(ids) == 1, ids  # one cluster id, shared


def test_status_reports_each_node(cluster: Cluster) -> None:
    proc = cluster.run("status")
    assert proc.returncode == 0, proc.stderr
    for node in (1, 2, 3):
        assert f"node {node}: running (pid {cluster.pid(node)}), ready on {cluster.address(node)}" in proc.stderr
    assert "cluster ready: 3 of 3 nodes" in proc.stderr


async def _create(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 3, topic_configs={"min.insync.replicas": "2"})])
    finally:
        await admin.close()


async def _read_all(bootstrap: str, topic: str, want: set[bytes], limit_s: float = 30) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got: list[bytes] = []
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and not want <= set(got):
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(m.value for m in msgs)
        # a little longer: a duplicate would come after the last expected record
        for msgs in (await consumer.getmany(timeout_ms=500)).values():
            got.extend(m.value for m in msgs)
        return got
    finally:
        await consumer.stop()


def test_no_acknowledged_record_is_lost_when_the_partition_leader_is_killed(cluster: Cluster) -> None:
    """acks=all + idempotence, min.insync.replicas=2: the leader is SIGKILLed mid-stream and
    started again; the producer rides through the failover, and a read_committed consumer from
    the earliest offset finds every record exactly once."""
    topic = f"cluster-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create(cluster.bootstrap, topic))

    def everywhere_with_three_replicas() -> bool:  # every node's metadata has it (a moment after the create)
        for node in (1, 2, 3):
            host, _, port = cluster.address(node).rpartition(":")
            p = metadata(host, int(port), [topic]).topics.get(topic, {}).get(0)
            if p is None or p.leader < 0 or len(p.replicas) != 3:
                return False
        return True

    wait_for(everywhere_with_three_replicas, 30, f"{topic} on every node with 3 replicas")
    first = cluster.leader(topic, 0)
    assert sorted(cluster.isr(topic, 0)) == [1, 2, 3]

    acked: list[bytes] = []
    failed: list[str] = []
    events: dict[str, float] = {}

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True,
                                    linger_ms=5, request_timeout_ms=40000, retry_backoff_ms=200)
        await producer.start()
        stop = asyncio.Event()

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                batch = [f"r{n:07d}".encode() for n in range(i, i + 20)]
                i += 20
                futs = [await producer.send(topic, v) for v in batch]
                for v, res in zip(batch, await asyncio.gather(*futs, return_exceptions=True), strict=True):
                    if isinstance(res, BaseException):
                        failed.append(f"{v.decode()}: {res!r}")
                    else:
                        acked.append(v)
                await asyncio.sleep(0.01)

        task = asyncio.create_task(produce())
        try:
            await _until(lambda: len(acked) >= 300, 30, "300 records acknowledged before the kill")
            before_kill = len(acked)
            events["kill"] = time.monotonic()
            await asyncio.to_thread(cluster.kill, first)
            assert cluster.pid(first) is None
            # production goes on once another node leads
            events["new_leader"] = await asyncio.to_thread(cluster.leader, topic, 0, 60, first)
            await _until(lambda: len(acked) >= before_kill + 300, 60, "300 more records acknowledged after the kill")
            events["failover_s"] = time.monotonic() - events["kill"]
            await asyncio.to_thread(cluster.start, first)
            after_start = len(acked)
            await _until(lambda: len(acked) >= after_start + 200, 30, "200 more records after the restart")
            # the restarted node catches up and is back in the in-sync replicas
            await asyncio.to_thread(wait_for, lambda: sorted(cluster.isr(topic, 0)) == [1, 2, 3], 30,
                                    "the restarted node back in the ISR")
        finally:
            stop.set()
            await task
            await producer.stop()

    asyncio.run(scenario())
    assert not failed, failed[:5]
    assert events["new_leader"] != first
    got = asyncio.run(_read_all(cluster.bootstrap, topic, set(acked)))
    missing = set(acked) - set(got)
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {sorted(missing)[:5]}"
    assert len(got) == len(set(got)), "duplicates"
    assert got == sorted(got), "out of order"
    print(f"{len(acked)} records, leader {first} killed → node {events['new_leader']} led after "
          f"{events['failover_s']:.1f} s (incl. 300 records), no record lost")


async def _until(cond: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what}")
        await asyncio.sleep(0.1)


def _later_tests_need(request: pytest.FixtureRequest) -> bool:
    """Does a test after this one in the session use the cluster (itself, or as ``kafka``)?"""
    items = request.session.items
    later = items[items.index(request.node) + 1:] if request.node in items else items
    wanted = {"cluster", "kafka"} if os.environ.get("TEST_KAFKA_NODES") == "3" else {"cluster"}
    return any(wanted & set(getattr(it, "fixturenames", ())) for it in later)


def test_down_stops_every_node(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    pids = [cluster.pid(n) for n in (1, 2, 3)]
    assert all(pids), pids
    cluster.down()
    assert cluster.java_pids() == []  # no process of that data dir left
    status = cluster.run("status")
    assert status.returncode == 3
    assert status.stderr.count("not running") == 3
    if _later_tests_need(request):  # back up for them: same ports, same data
        cluster.up()
        assert sorted(cluster.metadata().brokers) == [1, 2, 3]
