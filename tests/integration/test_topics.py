"""Topics bookstream creates on a real broker: replication, min.insync.replicas, retention, and
configs of existing topics brought to the settings (AlterConfigs replaces a topic's whole set)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient

from app.config import RAW_MAX_MESSAGE_BYTES, Settings
from app.errors import ConfigError
from app.kafka import (
    TopicPlan,
    TopicsNotReady,
    _metadata,
    _not_led,
    _wait_served,
    ensure_topics,
    faust_leader_topic,
    wait_for_topic,
)
from app.wire import Topics
from tests.helpers import Namespace, free_port

DAY_MS = 24 * 3600 * 1000


def settings_of(ns: Namespace, **changes: Any) -> Settings:
    return dataclasses.replace(ns.settings(), **changes)


def topics_of(s: Settings) -> Topics:
    return Topics(s.topic_prefix, ["okx", "binance"], s.app_id)


def ensure_all(s: Settings, **kwargs: Any) -> TopicPlan:
    topics = topics_of(s)
    return asyncio.run(ensure_topics(s, topics.all, faust_leader=True,
                                     compacted={**topics.compacted(), topics.changelog: s.changelog.topic_configs()},
                                     **kwargs))


def create_by_hand(bootstrap: str, topics: list[NewTopic]) -> None:
    """Create ``topics`` as another client (or an earlier release) would, without bookstream."""
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(topics)
        finally:
            await admin.close()

    asyncio.run(create())


async def _describe(bootstrap: str, names: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]],
                                                               dict[str, list[int]]]:
    """Each topic's effective configs, its own (dynamic) configs, and its partitions' replica counts."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        effective: dict[str, dict[str, str]] = {}
        own: dict[str, dict[str, str]] = {}
        for response in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names]):
            for code, _msg, _type, name, entries in response.resources:
                assert code == 0, (name, code)
                effective[name] = {e[0]: e[1] for e in entries}
                own[name] = {e[0]: e[1] for e in entries if e[3] == 1}  # config_source DYNAMIC_TOPIC_CONFIG
        replicas = {t["topic"]: [len(p["replicas"]) for p in t["partitions"]]
                    for t in await admin.describe_topics(names)}
        return effective, own, replicas
    finally:
        await admin.close()


def describe(bootstrap: str, names: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]],
                                                         dict[str, list[int]]]:
    return asyncio.run(_describe(bootstrap, names))


def test_topics_are_created_with_the_configured_replication_and_retention(ns: Namespace) -> None:
    s = settings_of(ns, raw_retention_ms=-1, raw_retention_bytes=50 * 2**30, output_retention_ms=2 * DAY_MS)
    plan = ensure_all(s)
    assert plan == TopicPlan(brokers=1, replication=1, min_insync=1)  # auto on a single broker
    topics = topics_of(s)
    leader = faust_leader_topic(s.app_id)
    names = [*topics.all, topics.changelog, leader]
    effective, _own, replicas = describe(ns.bootstrap, names)
    assert set(replicas) == set(names)
    assert replicas[leader] == [1]  # one partition
    assert all(counts == [1] * s.partitions for name, counts in replicas.items() if name != leader)
    for name in topics.raw:
        conf = effective[name]
        assert (conf["cleanup.policy"], conf["retention.ms"], conf["retention.bytes"]) == ("delete", "-1",
                                                                                           str(50 * 2**30))
    for name in (topics.top, topics.depth, topics.trades, topics.deadletter, topics.alerts, leader):
        assert (effective[name]["cleanup.policy"], effective[name]["retention.ms"]) == ("delete", str(2 * DAY_MS))
    for name in (topics.instruments, topics.positions, topics.rules, topics.changelog):
        assert effective[name]["cleanup.policy"] == "compact"
    assert effective[topics.changelog]["segment.ms"] == str(s.changelog.segment_ms)
    for name in names:
        assert effective[name]["min.insync.replicas"] == "1"
        assert effective[name]["max.message.bytes"] == str(RAW_MAX_MESSAGE_BYTES)


def test_every_partition_is_served_by_its_leader_when_ensure_topics_returns(ns: Namespace) -> None:
    """A fresh worker read ref.instruments right after creating it and got NOT_LEADER_OR_FOLLOWER
    for seconds: the broker named itself leader in its metadata before it served the partition."""
    s = settings_of(ns)

    async def create_then_ask() -> list[str]:
        topics = topics_of(s)
        await ensure_topics(s, topics.all, compacted=topics.compacted())
        client = AIOKafkaClient(bootstrap_servers=ns.bootstrap)
        await client.bootstrap()
        try:
            meta = await _metadata(client, client.get_random_node(), topics.all)
            tps = [(t["topic"], p["partition"]) for t in meta["topics"] for p in t["partitions"]]
            assert len(tps) == len(topics.all) * s.partitions
            return await _not_led(client, 1, tps)
        finally:
            await client.close()

    assert asyncio.run(create_then_ask()) == []


def test_an_existing_topics_retention_follows_the_setting_and_keeps_its_other_configs(ns: Namespace) -> None:
    first = settings_of(ns, raw_retention_ms=DAY_MS, raw_retention_bytes=-1, output_retention_ms=DAY_MS)
    ensure_all(first)
    topics = topics_of(first)
    raw, top, instruments = topics.raw_by_venue["okx"], topics.top, topics.instruments

    async def set_by_hand() -> None:
        # an operator's own setting on a raw topic: AlterConfigs replaces the whole set, so send it whole
        admin = AIOKafkaAdminClient(bootstrap_servers=ns.bootstrap)
        await admin.start()
        try:
            own = (await _describe(ns.bootstrap, [raw]))[1][raw]
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, raw,
                                                      {**own, "segment.bytes": str(64 * 2**20)})])
            for _ in range(100):  # the broker applies it a moment after the controller took it
                if "segment.bytes" in (await _describe(ns.bootstrap, [raw]))[1][raw]:
                    break
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    asyncio.run(set_by_hand())
    second = dataclasses.replace(first, raw_retention_ms=-1, raw_retention_bytes=10 * 2**30,
                                 output_retention_ms=3 * DAY_MS)
    ensure_all(second)
    effective, own, _ = describe(ns.bootstrap, [raw, top, instruments, topics.changelog])
    assert (effective[raw]["retention.ms"], effective[raw]["retention.bytes"]) == ("-1", str(10 * 2**30))
    assert effective[raw]["max.message.bytes"] == str(RAW_MAX_MESSAGE_BYTES)  # not lost to the alter
    assert own[raw]["segment.bytes"] == str(64 * 2**20)  # the operator's own setting is kept
    assert effective[top]["retention.ms"] == str(3 * DAY_MS)
    assert effective[top]["max.message.bytes"] == str(RAW_MAX_MESSAGE_BYTES)
    assert effective[instruments]["cleanup.policy"] == "compact"
    assert effective[instruments]["max.message.bytes"] == str(RAW_MAX_MESSAGE_BYTES)
    assert effective[topics.changelog]["segment.ms"] == str(first.changelog.segment_ms)
    # an unchanged start alters nothing and changes nothing
    ensure_all(second)
    assert describe(ns.bootstrap, [raw, top])[1] == {raw: own[raw], top: own[top]}


def test_a_topic_created_by_an_earlier_release_gets_the_whole_set(ns: Namespace) -> None:
    """Before retention settings a derived topic only had max.message.bytes (and compacted ones
    lost it on every start: the old code altered them with cleanup.policy alone)."""
    s = settings_of(ns)
    topics = topics_of(s)

    create_by_hand(ns.bootstrap, [NewTopic(topics.top, s.partitions, 1, topic_configs={"max.message.bytes": "1000"}),
                                  NewTopic(topics.instruments, s.partitions, 1,
                                           topic_configs={"cleanup.policy": "compact"})])
    ensure_all(s)
    effective, _, _ = describe(ns.bootstrap, [topics.top, topics.instruments])
    assert effective[topics.top]["max.message.bytes"] == str(RAW_MAX_MESSAGE_BYTES)
    assert effective[topics.top]["retention.ms"] == str(s.output_retention_ms)
    assert effective[topics.instruments]["max.message.bytes"] == str(RAW_MAX_MESSAGE_BYTES)
    assert effective[topics.instruments]["cleanup.policy"] == "compact"


def test_a_topic_the_broker_asked_did_not_know_yet_still_gets_the_settings(ns: Namespace,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker that answers the first metadata request may not know a topic the controller
    has just created (another client's, or one created a moment ago): the creation then says
    TopicAlreadyExists, and the topic is an existing one whose configs must follow the settings —
    not be left as that other client made it (min.insync.replicas 2 on one copy refuses writes)."""
    import app.kafka

    s = settings_of(ns)
    topics = topics_of(s)

    create_by_hand(ns.bootstrap, [NewTopic(topics.trades, s.partitions, 1, topic_configs={"retention.ms": "1000"})])
    real, asked = app.kafka._metadata, []

    async def lagging_first(client: AIOKafkaClient, node_id: int, names: list[str]) -> dict[str, Any]:
        meta = await real(client, node_id, names)
        if not asked:  # the first answer, from a broker behind the controller
            meta["topics"] = [t for t in meta["topics"] if t["topic"] != topics.trades]
        asked.append(node_id)
        return meta

    monkeypatch.setattr(app.kafka, "_metadata", lagging_first)
    ensure_all(s)
    effective, _, _ = describe(ns.bootstrap, [topics.trades])
    assert effective[topics.trades]["retention.ms"] == str(s.output_retention_ms)
    assert effective[topics.trades]["max.message.bytes"] == str(RAW_MAX_MESSAGE_BYTES)


def test_a_replication_factor_above_the_brokers_is_refused_before_anything_is_created(ns: Namespace) -> None:
    s = settings_of(ns, replication=2)
    with pytest.raises(ConfigError, match=r"TOPIC_REPLICATION=2 but the cluster has 1 broker\(s\)"):
        ensure_all(s)

    async def topic_names() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=ns.bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(s.topic_prefix)]
        finally:
            await admin.close()

    assert asyncio.run(topic_names()) == []  # nothing created


def test_min_insync_above_the_auto_factor_is_refused(ns: Namespace) -> None:
    with pytest.raises(ConfigError, match=r"MIN_INSYNC_REPLICAS=2 is more than the replication factor 1 "
                                          r"\(TOPIC_REPLICATION=auto, 1 broker\(s\)\)"):
        ensure_all(settings_of(ns, min_insync_replicas=2))


def test_a_topic_with_other_partitions_is_still_refused(ns: Namespace) -> None:
    s = settings_of(ns)
    ensure_all(s)
    with pytest.raises(ConfigError, match="partitions but TOPIC_PARTITIONS=8"):
        ensure_all(dataclasses.replace(s, partitions=8))


def test_waiting_for_every_broker_errors_clearly_in_time(ns: Namespace) -> None:
    async def wait() -> None:
        client = AIOKafkaClient(bootstrap_servers=ns.bootstrap)
        await client.bootstrap()
        try:
            brokers = [b.nodeId for b in client.cluster.brokers()]
            await _wait_served(client, brokers, {ns.topic("never.created"): 4}, 0.5)
        finally:
            await client.close()

    with pytest.raises(TopicsNotReady, match=r"not served by every broker 0s after creating them: broker 1: "
                                             r"1 topic\(s\) without a leader there yet, e\.g\. "):
        asyncio.run(wait())


def test_wait_for_topic_asks_again(ns: Namespace) -> None:
    s = settings_of(ns)

    async def check() -> tuple[bool, bool]:
        consumer = AIOKafkaConsumer(bootstrap_servers=ns.bootstrap)
        await consumer.start()
        try:
            missing = await wait_for_topic(consumer, ns.topic("nowhere"), timeout_s=0.3)
            create = asyncio.create_task(asyncio.sleep(0.5))
            await create
            await ensure_topics(s, [s.topic("late")])
            return missing, await wait_for_topic(consumer, s.topic("late"), timeout_s=5)
        finally:
            await consumer.stop()

    assert asyncio.run(check()) == (False, True)


def test_the_worker_refuses_a_replication_factor_the_cluster_cannot_hold(ns: Namespace) -> None:
    proc = ns.faust("worker", "-l", "warn", check=False, timeout=120,
                    env={"TOPIC_REPLICATION": "3", "DATA_DIR": str(ns.tmp / "data"), "WEB_PORT": str(free_port())})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("bookstream: cannot start: TOPIC_REPLICATION=3 but the cluster has 1 broker(s): use at most 1, or auto"
            in proc.stderr), proc.stderr[-2000:]


def test_auto_on_three_brokers_is_three_replicas_min_insync_two_served_by_every_broker(cluster: Any,
                                                                                        tmp_path: Path) -> None:
    ns = Namespace(f"c{uuid.uuid4().hex[:10]}", cluster.bootstrap, tmp_path)
    s = settings_of(ns)
    topics = topics_of(s)

    create_by_hand(cluster.bootstrap, [NewTopic(topics.trades, s.partitions, 1)])  # one copy
    assert ensure_all(s) == TopicPlan(brokers=3, replication=3, min_insync=2)
    names = [*topics.all, topics.changelog, faust_leader_topic(s.app_id)]

    async def ask_each_broker_alone() -> dict[int, list[str]]:
        """Per node, a client bootstrapped to that node only: the topics it does not serve."""
        out: dict[int, list[str]] = {}
        for node in (1, 2, 3):
            client = AIOKafkaClient(bootstrap_servers=cluster.address(node))
            await client.bootstrap()
            try:
                meta = await _metadata(client, node, names)
                out[node] = [t["topic"] for t in meta["topics"] if t["error_code"] != 0 or not t["partitions"]
                             or any(p["leader"] < 0 for p in t["partitions"])]
                led = [(t["topic"], p["partition"]) for t in meta["topics"] for p in t["partitions"]
                       if p["leader"] == node]
                out[node] += await _not_led(client, node, led)
            finally:
                await client.close()
        return out

    assert asyncio.run(ask_each_broker_alone()) == {1: [], 2: [], 3: []}  # right when ensure_topics returned
    effective, _, replicas = describe(cluster.bootstrap, names)
    for name in names:
        if name == topics.trades:
            assert replicas[name] == [1] * s.partitions
            assert effective[name]["min.insync.replicas"] == "1"  # 2 would refuse every acks=all write
        else:
            assert set(replicas[name]) == {3}, name
            assert effective[name]["min.insync.replicas"] == "2", name
    # explicit values: fewer copies; or a stricter minimum
    assert ensure_all(settings_of(Namespace(f"d{uuid.uuid4().hex[:10]}", cluster.bootstrap, tmp_path),
                                  replication=2)) == TopicPlan(3, 2, 1)
    assert ensure_all(settings_of(Namespace(f"e{uuid.uuid4().hex[:10]}", cluster.bootstrap, tmp_path),
                                  min_insync_replicas=3)) == TopicPlan(3, 3, 3)

    # a restart with one broker of three down: the topics still have three copies — neither a
    # refusal of TOPIC_REPLICATION=3 nor min.insync.replicas lowered to what two brokers would get
    s = settings_of(Namespace(f"f{uuid.uuid4().hex[:10]}", cluster.bootstrap, tmp_path))
    topics = topics_of(s)
    ensure_all(s)
    cluster.kill(3)
    try:
        assert ensure_all(dataclasses.replace(s, replication=3)) == TopicPlan(brokers=3, replication=3, min_insync=2)
        assert ensure_all(s) == TopicPlan(brokers=3, replication=3, min_insync=2)
        effective, _, _ = describe(cluster.bootstrap, [topics.top, topics.changelog])
        assert effective[topics.top]["min.insync.replicas"] == "2"
        assert effective[topics.changelog]["min.insync.replicas"] == "2"
    finally:
        cluster.start(3)


def test_a_number_the_broker_spells_its_own_way_is_not_altered_again(ns: Namespace,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    s = settings_of(ns)
    s = dataclasses.replace(s, changelog=dataclasses.replace(s.changelog, min_cleanable_dirty_ratio=0.00001))
    ensure_all(s)
    ensure_all(dataclasses.replace(s, output_retention_ms=DAY_MS))  # alters every derived topic, and waits
    changelog = topics_of(s).changelog
    effective, _, _ = describe(ns.bootstrap, [changelog])
    assert float(effective[changelog]["min.cleanable.dirty.ratio"]) == 0.00001
    caplog.clear()
    with caplog.at_level("INFO", logger="app.kafka"):
        ensure_all(dataclasses.replace(s, output_retention_ms=DAY_MS))
    assert not [r for r in caplog.records if "setting" in r.getMessage()]
