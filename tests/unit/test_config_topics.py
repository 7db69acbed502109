"""Topic settings: TOPIC_REPLICATION, MIN_INSYNC_REPLICAS, retention, PROCESSING_GUARANTEE."""

from __future__ import annotations

import pytest

import app.config as config
from app.config import Settings, resolve_replication
from app.errors import ConfigError
from app.kafka import faust_leader_topic, is_raw_topic, topic_configs
from app.wire import Topics


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in config.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("F_DATADIR", raising=False)


def test_defaults() -> None:
    s = config.load()
    assert s.replication is None  # auto
    assert s.min_insync_replicas is None  # auto
    assert (s.raw_retention_ms, s.raw_retention_bytes) == (-1, -1)
    assert s.output_retention_ms == 7 * 24 * 3600 * 1000
    assert s.processing_guarantee == "at_least_once"
    assert s.gc_gen0_threshold == 20_000
    for name in ("TOPIC_REPLICATION", "MIN_INSYNC_REPLICAS", "RAW_RETENTION_MS", "RAW_RETENTION_BYTES",
                 "OUTPUT_RETENTION_MS", "PROCESSING_GUARANTEE"):
        assert name in config.ENV_VARS


def test_explicit_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_REPLICATION", "3")
    monkeypatch.setenv("MIN_INSYNC_REPLICAS", "2")
    monkeypatch.setenv("RAW_RETENTION_MS", "2592000000")
    monkeypatch.setenv("RAW_RETENTION_BYTES", "107374182400")
    monkeypatch.setenv("OUTPUT_RETENTION_MS", "86400000")
    monkeypatch.setenv("PROCESSING_GUARANTEE", "Exactly_Once")
    s = config.load()
    assert (s.replication, s.min_insync_replicas) == (3, 2)
    assert (s.raw_retention_ms, s.raw_retention_bytes, s.output_retention_ms) == (2592000000, 107374182400, 86400000)
    assert s.processing_guarantee == "exactly_once"


@pytest.mark.parametrize("value", ["auto", "AUTO", " auto ", ""])
def test_auto_is_none(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TOPIC_REPLICATION", value)
    monkeypatch.setenv("MIN_INSYNC_REPLICAS", value)
    s = config.load()
    assert (s.replication, s.min_insync_replicas) == (None, None)


@pytest.mark.parametrize(("env", "name", "message"), [
    ({"TOPIC_REPLICATION": "three"}, "TOPIC_REPLICATION", "is not auto or a whole number"),
    ({"TOPIC_REPLICATION": "0"}, "TOPIC_REPLICATION", "must be auto or at least 1"),
    ({"MIN_INSYNC_REPLICAS": "-1"}, "MIN_INSYNC_REPLICAS", "must be auto or at least 1"),
    ({"TOPIC_REPLICATION": "2", "MIN_INSYNC_REPLICAS": "3"}, "MIN_INSYNC_REPLICAS", "more than TOPIC_REPLICATION=2"),
    ({"RAW_RETENTION_MS": "0"}, "RAW_RETENTION_MS", "would delete everything"),
    ({"RAW_RETENTION_MS": "-2"}, "RAW_RETENTION_MS", "at least -1"),
    ({"RAW_RETENTION_BYTES": "lots"}, "RAW_RETENTION_BYTES", "is not a whole number"),
    ({"OUTPUT_RETENTION_MS": "0"}, "OUTPUT_RETENTION_MS", "would delete everything"),
    ({"PROCESSING_GUARANTEE": "exactly_once_v2"}, "PROCESSING_GUARANTEE", "must be at_least_once or exactly_once"),
    ({"LOOP_STALL_TRACE_MS": "2"}, "LOOP_STALL_TRACE_MS", "below 5"),
    ({"LOOP_STALL_TRACE_MS": "soon"}, "LOOP_STALL_TRACE_MS", "is not a number"),
    ({"GC_GEN0_THRESHOLD": "0"}, "GC_GEN0_THRESHOLD", "must be at least 100"),
])
def test_bad_values_are_one_clear_line(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str,
                                       message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message) as info:
        config.load()
    assert name in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_auto_replication_follows_the_broker_count(brokers: int, expected: tuple[int, int]) -> None:
    assert resolve_replication(None, None, brokers) == expected


def test_explicit_replication_and_min_insync() -> None:
    assert resolve_replication(2, None, 3) == (2, 1)
    assert resolve_replication(3, 3, 5) == (3, 3)
    assert resolve_replication(None, 1, 3) == (3, 1)
    assert resolve_replication(4, None, 5) == (4, 2)


def test_replication_above_the_brokers_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"TOPIC_REPLICATION=3 but the cluster has 1 broker\(s\)"):
        resolve_replication(3, None, 1)


def test_min_insync_above_the_resolved_factor_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"MIN_INSYNC_REPLICAS=2 is more than the replication factor 1 "
                                          r"\(TOPIC_REPLICATION=auto, 1 broker\(s\)\)"):
        resolve_replication(None, 2, 1)


def test_topic_configs_by_kind() -> None:
    s = Settings(topic_prefix="p.", raw_retention_ms=-1, raw_retention_bytes=10**12, output_retention_ms=3_600_000)
    topics = Topics("p.", ["okx", "binance"], "app")
    raw = topic_configs(s, topics.raw_by_venue["okx"], 2)
    assert raw == {"max.message.bytes": str(config.RAW_MAX_MESSAGE_BYTES), "min.insync.replicas": "2",
                   "cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": str(10**12)}
    for name in (topics.top, topics.deadletter, topics.alerts):
        derived = topic_configs(s, name, 1)
        assert derived["retention.ms"] == "3600000"
        assert derived["cleanup.policy"] == "delete"
        assert "retention.bytes" not in derived
    compacted = topic_configs(s, topics.instruments, 2, topics.compacted()[topics.instruments])
    assert compacted["cleanup.policy"] == "compact"
    assert "retention.ms" not in compacted
    assert compacted["min.insync.replicas"] == "2"
    changelog = topic_configs(s, topics.changelog, 2, s.changelog.topic_configs())
    assert changelog["cleanup.policy"] == "compact"
    assert changelog["segment.ms"] == str(s.changelog.segment_ms)
    assert changelog["min.insync.replicas"] == "2"


def test_raw_topics_are_told_apart_by_name_with_the_prefix() -> None:
    s = Settings(topic_prefix="p.")
    assert is_raw_topic(s, "p.raw.okx")
    assert not is_raw_topic(s, "p.raw.deadletter")  # the worker's output
    assert not is_raw_topic(s, "raw.okx")  # another deployment's
    assert not is_raw_topic(s, "p.book.top")
    assert faust_leader_topic("bookstream") == "bookstream-__assignor-__leader"


def test_config_values_compare_as_the_broker_spells_them() -> None:
    from app.kafka import _same_configs, _same_value

    assert _same_value("0.00001", "1.0E-5")
    assert _same_value("-1", "-1")
    assert not _same_value("compact", "delete")
    assert not _same_value(None, "1")
    assert _same_configs({"a": "0.1", "b": "x"}, {"a": "0.10", "b": "x"})
    assert not _same_configs({"a": "1"}, {"a": "1", "b": "2"})


async def test_a_reading_consumer_that_does_not_stop_is_closed_under_it() -> None:
    """aiokafka's fetch routine can swallow the cancel of ``stop`` and wait for good (the book-at
    hang): stop_reading gives up on it and closes the connections, so a command ends."""
    import asyncio

    from app.kafka import stop_reading

    closed: list[bool] = []

    class Client:
        async def close(self) -> None:
            closed.append(True)

    class Stuck:
        _client = Client()

        async def stop(self) -> None:
            await asyncio.Event().wait()  # never

    await asyncio.wait_for(stop_reading(Stuck(), within_s=0.1), timeout=2)
    assert closed == [True]
