"""app/brokers.py: broker reachability as one line per transition, aiokafka's repeats dropped."""

from __future__ import annotations

import ast
import asyncio
import logging
import socket
from pathlib import Path

import aiokafka
import pytest
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, StaleMetadata
from prometheus_client import generate_latest

from app import brokers, metrics
from app.web.metrics import registry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_one_line_when_a_broker_goes_and_one_when_it_is_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    watch = brokers.BrokerWatch(clock=clock)
    watch.learn(2, "127.0.0.1", 9202)
    refused = ConnectionRefusedError(111, "Connection refused")
    with caplog.at_level(logging.WARNING, logger="app.kafka"):
        for _ in range(500):  # every client, every backoff
            watch.failed("127.0.0.1", 9202, refused)
        assert watch.unreachable == 1
        clock.now += 12.34
        watch.connected("127.0.0.1", 9202)
        watch.connected("127.0.0.1", 9202)  # other clients reconnecting: nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["kafka: broker 2 (127.0.0.1:9202) unreachable: Connection refused",
                     "kafka: broker 2 back after 12.3s"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert watch.disconnects == {"2": 1}
    assert watch.unreachable == 0
    watch.failed("127.0.0.1", 9202, refused)
    assert watch.disconnects == {"2": 2}


def test_an_unknown_address_is_named_by_its_address(caplog: pytest.LogCaptureFixture) -> None:
    watch = brokers.BrokerWatch(clock=Clock())
    with caplog.at_level(logging.WARNING, logger="app.kafka"):
        watch.failed("10.0.0.9", 9092, TimeoutError())
    assert caplog.records[0].getMessage() == "kafka: broker 10.0.0.9:9092 unreachable: TimeoutError"
    assert watch.disconnects == {"10.0.0.9:9092": 1}


def test_only_connection_failure_lines_are_dropped() -> None:
    clock = Clock()
    watch = brokers.BrokerWatch(clock=clock)
    refused = KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
    not_ready = NodeNotReadyError("Attempt to send a request to node which is not ready (node id 1).")
    # always connection failures
    assert watch.drop(record("aiokafka.client", logging.ERROR, "Unable connect to node with id %s: %s", 1,
                             ConnectionRefusedError(111, "Connection refused")))
    assert watch.drop(record("aiokafka.client", logging.ERROR, 'Unable connect to "%s:%s": %s', "h", 1, refused))
    assert watch.drop(record("aiokafka.consumer.fetcher", logging.ERROR, "Failed fetch messages from %s: %s", 1,
                             not_ready))
    assert watch.drop(record("aiokafka.consumer.group_coordinator", logging.ERROR,
                             "Group Coordinator Request failed: %s", not_ready))
    # the same templates with a real error stay visible
    assert not watch.drop(record("aiokafka.client", logging.ERROR, "Unable connect to node with id %s: %s", 3,
                                 StaleMetadata("Broker id 3 not in current metadata")))
    assert not watch.drop(record("aiokafka.consumer.group_coordinator", logging.ERROR,
                                 "Group Coordinator Request failed: %s", ValueError("bug")))
    # a connection failure line opens a recovery window of its own (an open connection broken
    # by a broker shutting down fails its requests before any reconnect attempt can fail)
    assert watch.recovering()
    assert not watch.down
    clock.now += brokers.RECOVERY_S + 1
    assert not watch.recovering()
    # consequences of a lost broker: only while one is unreachable, and a while after it is back
    expired = record("aiokafka.consumer.group_coordinator", logging.ERROR,
                     "Heartbeat session expired - marking coordinator dead")
    metadata = record("aiokafka.client", logging.ERROR, "Unable to update metadata from %s", [1])
    assert not watch.drop(expired)
    assert not watch.drop(metadata)
    assert watch.drop(record("aiokafka.client", logging.WARNING, "Unable to request metadata from node with id %s: %r",
                             1, refused))  # the broken connection, then what follows from it
    assert watch.drop(metadata)
    clock.now += brokers.RECOVERY_S + 1
    watch.failed("127.0.0.1", 9092, ConnectionRefusedError(111, "Connection refused"))
    assert watch.drop(expired)
    assert watch.drop(metadata)
    watch.connected("127.0.0.1", 9092)
    assert watch.drop(expired)
    clock.now += brokers.RECOVERY_S + 1
    assert not watch.drop(expired)
    # Faust's "cannot fetch" errors: while a broker is unreachable only
    slow = record("faust.transport.drivers.aiokafka", logging.ERROR,
                  "[^--Consumer]: Aiokafka stopped fetching from %r (last done %s) There are multiple ...",
                  "TP(topic='t', partition=0)", "5 minutes ago")
    assert not watch.drop(slow)
    watch.failed("127.0.0.1", 9092, ConnectionRefusedError(111, "Connection refused"))
    assert watch.drop(slow)
    assert not watch.drop(record("faust.transport.drivers.aiokafka", logging.ERROR, "[^--Consumer]: other"))
    watch.connected("127.0.0.1", 9092)
    clock.now += brokers.RECOVERY_S + 1
    # anything else
    assert not watch.drop(record("aiokafka.consumer.fetcher", logging.WARNING, "Not authorized to read from topic %s.",
                                 "t"))
    assert not watch.drop(record("aiokafka.cluster", logging.ERROR, "Topic %s not found in cluster metadata", "t"))


def test_a_sender_that_died_of_a_broken_connection_is_not_a_traceback_in_the_log() -> None:
    watch = brokers.BrokerWatch(clock=Clock())

    def died(cause: BaseException) -> logging.LogRecord:
        try:
            try:
                raise cause
            except Exception as exc:
                raise aiokafka.errors.KafkaError(repr(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - as aiokafka's sender logs it
            rec = record("aiokafka.producer.sender", logging.ERROR, "Unexpected error in sender routine")
            rec.exc_info = (type(exc), exc, exc.__traceback__)
            return rec

    assert watch.drop(died(KafkaConnectionError("Connection at 127.0.0.1:9092 closed")))
    assert not watch.drop(died(ValueError("a bug")))  # a real error keeps its traceback


def test_the_dropped_templates_are_aiokafkas_own() -> None:
    """The filter matches aiokafka's message templates verbatim: an aiokafka upgrade that reworded
    one would silently bring the flood back."""
    root = Path(aiokafka.__file__).parent
    said: set[str] = set()
    for path in ("client.py", "consumer/fetcher.py", "consumer/group_coordinator.py", "producer/sender.py"):
        for node in ast.walk(ast.parse((root / path).read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                    and node.func.attr in ("error", "warning", "info", "exception")
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                said.add(node.args[0].value)
    templates = (brokers._ALWAYS | brokers._IF_CONNECTION_ERROR | brokers._WHILE_UNREACHABLE  # noqa: SLF001
                 | brokers._IF_CAUSED_BY_CONNECTION_ERROR)  # noqa: SLF001
    assert templates <= said, templates - said
    import faust.transport.drivers.aiokafka as driver

    faust_said = " ".join(v for k, v in vars(driver).items() if k.startswith("SLOW_PROCESSING_") and isinstance(v, str))
    assert all(m in faust_said for m in brokers._FAUST_WHILE_UNREACHABLE)  # noqa: SLF001


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_installed_a_real_client_failing_to_connect_says_it_once(caplog: pytest.LogCaptureFixture) -> None:
    """Installed (importing app.metrics does it): a real aiokafka client bootstrapping against a
    closed port, three times, gives one WARNING and no aiokafka ERROR; /metrics counts it."""
    assert metrics.broker_watch is brokers.WATCH
    port = free_port()

    async def attempt() -> None:
        client = aiokafka.AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=2000)
        try:
            with pytest.raises(KafkaConnectionError):
                await client.bootstrap()
        finally:
            await client.close()

    before = brokers.WATCH.suppressed
    down_before = brokers.WATCH.unreachable  # a broker an earlier test in this process left down
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(3):
                asyncio.run(attempt())
        warnings = [r.getMessage() for r in caplog.records if r.name == "app.kafka"]
        assert warnings == [f"kafka: broker 127.0.0.1:{port} unreachable: Connection refused"]
        assert not [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno >= logging.ERROR]
        assert brokers.WATCH.suppressed >= before + 3
        text = generate_latest(registry()).decode()
        assert f'bookstream_broker_disconnects_total{{node="127.0.0.1:{port}"}} 1.0' in text
        assert f"bookstream_brokers_unreachable {down_before + 1}.0" in text
    finally:
        brokers.WATCH.down.pop(f"127.0.0.1:{port}", None)
        brokers.WATCH.disconnects.pop(f"127.0.0.1:{port}", None)
