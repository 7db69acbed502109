"""Broker reachability: one WARNING when a broker goes, one when it is back, counted.

aiokafka logs every failed connection attempt, and every request that could not be sent
because of it, at ERROR — each client, every retry backoff: a broker restart turns into
thousands of lines (``Unable connect to node with id 1: [Errno 111] Connection refused``,
``Unable to update metadata from [1]``, ``Failed fetch messages from 1: NodeNotReadyError``,
``Group Coordinator Request failed: NodeNotReadyError`` …). :func:`install` replaces them by
per-broker state transitions, process-wide (every client: Faust's consumers and producers,
the raw sink, the admin clients):

* ``kafka: broker 1 (127.0.0.1:9092) unreachable: Connection refused`` (WARNING), once, at the
  first connection attempt to that broker that fails;
* ``kafka: broker 1 back after 12.3s`` (WARNING), once, at the first connection that succeeds
  again.

The transitions come from a wrapper around ``aiokafka.client.create_conn`` (every connection
aiokafka opens goes through it), so "back" means a Kafka connection (with its ApiVersions
handshake) succeeded: a client's, or a probe's that retries an unreachable broker every
:data:`PROBE_S` seconds with the failed client's settings, so a broker no client needs at the
moment is still seen back. A :class:`logging.Filter` on aiokafka's loggers drops the lines
that only repeat a connection failure (their exception is a connection error, or they follow
from a broker being unreachable or restarting: coordinator lost, session expired, leaders not
elected yet — up to :data:`RECOVERY_S` after it is back or after a line said a connection
broke) and counts them; every other aiokafka line, and every real error, stays visible.
Counters: :data:`WATCH` (``disconnects`` per broker, ``unreachable``, ``suppressed``), shown by
``/metrics`` as ``bookstream_broker_disconnects_total{node}``, ``bookstream_brokers_unreachable``
and ``bookstream_kafka_log_lines_suppressed_total``.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("app.kafka")

#: aiokafka's loggers that report connection failures (read in aiokafka 0.14's source).
LOGGERS = (
    "aiokafka", "aiokafka.client", "aiokafka.conn", "aiokafka.cluster", "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator", "aiokafka.consumer.consumer", "aiokafka.producer.sender",
    "aiokafka.producer.producer", "aiokafka.admin.client",
)

#: Message templates that only ever say "could not reach a broker" (whatever their arguments).
_ALWAYS = frozenset({
    'Unable connect to "%s:%s": %s',
    'Unable to request metadata from "%s:%s": %s',
})
#: Templates that report a failure: dropped when the failure is a connection error.
_IF_CONNECTION_ERROR = frozenset({
    "Unable connect to node with id %s: %s",
    "Unable to request metadata from node with id %s: %r",
    "Failed fetch messages from %s: %s",
    "Failed fetch offsets from %s: %s",
    "Group Coordinator Request failed: %s",
    "Error sending %s to node %s [%s] -- marking coordinator dead",
    "Heartbeat send request failed: %s. Will retry.",
    "Got error produce response: %s",
    "Cannot send %r to %s: %r",
    "Could not send %r: %r",
    "FindCoordinator Request failed: %s",
    "LeaveGroup request failed: %s",
    "OffsetCommit failed before join, ignoring: %s",
    "Failed to commit on finallization: %s",
})
#: Templates logged with a traceback (``log.exception``): dropped when a connection error caused
#: it (a transactional producer's sender gives up when its coordinator's connection breaks — the
#: owner of that producer replaces it and says so).
_IF_CAUSED_BY_CONNECTION_ERROR = frozenset({
    "Unexpected error in sender routine",
})
#: Templates that follow from a broker being unreachable (coordinator lost, leaders moving, the
#: group's session expired, retried produce requests): dropped while one is, and for
#: :data:`RECOVERY_S` after the last one is back (the cluster elects leaders and reloads groups).
_WHILE_UNREACHABLE = frozenset({
    "Unable to update metadata from %s",
    "Marking the coordinator dead (node %s)for group %s.",
    "Heartbeat session expired - marking coordinator dead",
    "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid",
    "Got error produce response on topic-partition %s, retrying. Error: %s",
    "Auto offset commit failed: %s",
    "OffsetCommit failed for group %s due to a coordinator error (%s), will find new coordinator and retry",
    "OffsetCommit failed for group %s because group is initializing (%s), will retry",
})
#: Seconds after a broker is back during which the lines above still only tell of the restart.
RECOVERY_S = 30.0
#: Faust's consumer reports partitions it cannot fetch (``SLOW_PROCESSING_*`` in
#: faust/transport/drivers/aiokafka.py): while a broker is unreachable, that is why.
FAUST_LOGGERS = ("faust.transport.drivers.aiokafka",)
_FAUST_WHILE_UNREACHABLE = (
    "Aiokafka has not sent fetch request for", "Aiokafka has not received fetch response for",
    "Aiokafka stopped fetching from", "Broker stopped responding to fetch requests for",
    "Highwater not yet available for",
)


def connection_error(value: Any) -> bool:
    """Is ``value`` an exception (or exception class) that says a broker could not be reached?"""
    from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, RequestTimedOutError

    kinds = (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError, OSError, TimeoutError)
    if isinstance(value, type):
        return issubclass(value, kinds)
    return isinstance(value, kinds)


def caused_by_connection_error(exc: BaseException | None) -> bool:
    """Is ``exc``, or an exception it was raised from, a connection error?"""
    seen = 0
    while exc is not None and seen < 10:
        if connection_error(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def reason(exc: BaseException) -> str:
    """A short reason: ``Connection refused`` rather than ``[Errno 111] Connect call failed (…)``."""
    for err in (exc, exc.__cause__ or exc.__context__):
        if isinstance(err, OSError) and err.errno is not None:  # asyncio says "Connect call failed (…)"
            return os.strerror(err.errno) or errno.errorcode.get(err.errno, str(err))
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class _Down:
    since: float  # monotonic
    node: str
    reason: str


@dataclass
class BrokerWatch:
    """Per broker address: reachable or since when not; transitions logged once, counted."""

    clock: Callable[[], float] = time.monotonic
    nodes: dict[str, str] = field(default_factory=dict)  # "host:port" → node id, as metadata names it
    down: dict[str, _Down] = field(default_factory=dict)  # "host:port" → since when unreachable
    disconnects: collections.Counter[str] = field(default_factory=collections.Counter)  # node → times it went
    suppressed: int = 0  # aiokafka log lines dropped
    last_back: float | None = None  # monotonic time the last unreachable broker came back
    last_broken: float | None = None  # monotonic time a line said a connection failed

    @property
    def unreachable(self) -> int:
        return len(self.down)

    def node(self, addr: str) -> str:
        return self.nodes.get(addr, addr)

    def learn(self, node_id: Any, host: str, port: int) -> None:
        self.nodes[f"{host}:{port}"] = str(node_id)

    def failed(self, host: str, port: int, exc: BaseException) -> None:
        addr = f"{host}:{port}"
        if addr in self.down:
            return
        node = self.node(addr)
        why = reason(exc)
        self.down[addr] = _Down(self.clock(), node, why)
        self.disconnects[node] += 1
        name = f"broker {node} ({addr})" if node != addr else f"broker {addr}"
        log.warning("kafka: %s unreachable: %s", name, why)

    def connected(self, host: str, port: int) -> None:
        addr = f"{host}:{port}"
        gone = self.down.pop(addr, None)
        if gone is not None:
            self.last_back = self.clock()
            log.warning("kafka: broker %s back after %.1fs", self.node(addr) if self.node(addr) != addr else addr,
                        self.clock() - gone.since)

    def drop(self, record: logging.LogRecord) -> bool:
        """Should this aiokafka log record be dropped (it only repeats a connection failure)?"""
        msg = record.msg
        if not isinstance(msg, str):
            return False
        if record.name.startswith("faust."):
            return self.recovering() and any(m in msg for m in _FAUST_WHILE_UNREACHABLE)
        args = record.args if isinstance(record.args, tuple) else ()
        if msg in _ALWAYS or (msg in _IF_CONNECTION_ERROR and any(connection_error(a) for a in args)):
            # An open connection that breaks (a broker shutting down) fails the requests in flight
            # before any new connection attempt can: their consequences are the restart's too.
            self.last_broken = self.clock()
            return True
        if msg in _IF_CONNECTION_ERROR:
            return self.recovering() and not any(isinstance(a, BaseException) for a in args)
        if msg in _IF_CAUSED_BY_CONNECTION_ERROR:
            return caused_by_connection_error(record.exc_info[1] if record.exc_info else None)
        return msg in _WHILE_UNREACHABLE and self.recovering()

    def recovering(self) -> bool:
        """A broker is unreachable, or one came back or a connection broke less than RECOVERY_S ago."""
        now = self.clock()
        recent = (t for t in (self.last_back, self.last_broken) if t is not None)
        return bool(self.down) or any(now - t < RECOVERY_S for t in recent)

    def reset(self) -> None:
        self.last_back = None
        self.last_broken = None
        self.nodes.clear()
        self.down.clear()
        self.disconnects.clear()
        self.suppressed = 0


WATCH = BrokerWatch()


class _Filter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            dropped = WATCH.drop(record)
        except Exception:  # noqa: BLE001 - a filter must never lose a line by failing
            return True
        if dropped:
            WATCH.suppressed += 1
        return not dropped


_FILTER = _Filter("app.brokers")
_installed = False
_probes: set[asyncio.Task[None]] = set()
#: Seconds between two connection attempts of the probe that notices an unreachable broker is back.
PROBE_S = 2.0


def install() -> None:
    """Install once per process (idempotent): the filter on aiokafka's loggers and the
    connection hooks that turn connection attempts into broker state transitions."""
    global _installed
    if _installed:
        return
    _installed = True
    import aiokafka.client as client_module

    for name in (*LOGGERS, *FAUST_LOGGERS):
        logging.getLogger(name).addFilter(_FILTER)

    create_conn = client_module.create_conn

    async def probe(host: str, port: int, kwargs: dict[str, Any]) -> None:
        """Until the broker answers (or a client reached it first): a real connection, with the
        failed client's settings (TLS, SASL), every PROBE_S — so "back" is said when the broker
        is, even if no client happens to need it then (a follower in a cluster)."""
        addr = f"{host}:{port}"
        kwargs = {k: v for k, v in kwargs.items() if k != "on_close"}
        while addr in WATCH.down:
            await asyncio.sleep(PROBE_S)
            if addr not in WATCH.down:
                return
            try:
                conn = await create_conn(host, port, **kwargs)
            except Exception:  # noqa: BLE001, S112 - still unreachable: the next probe will tell
                continue
            conn.close()
            WATCH.connected(host, port)

    async def watched_create_conn(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        try:
            conn = await create_conn(host, port, *args, **kwargs)
        except Exception as exc:
            if connection_error(exc):
                went = f"{host}:{port}" not in WATCH.down
                WATCH.failed(host, port, exc)
                if went and not args:
                    task = asyncio.get_running_loop().create_task(probe(host, port, kwargs),
                                                                  name=f"kafka-probe {host}:{port}")
                    _probes.add(task)
                    task.add_done_callback(_probes.discard)
            raise
        WATCH.connected(host, port)
        return conn

    client_module.create_conn = watched_create_conn

    get_conn = client_module.AIOKafkaClient._get_conn  # noqa: SLF001

    async def watched_get_conn(self: Any, node_id: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            broker = self.cluster.broker_metadata(node_id)
        except Exception:  # noqa: BLE001 - only a name for the log line
            broker = None
        if broker is not None:
            WATCH.learn(node_id, broker.host, broker.port)
        return await get_conn(self, node_id, *args, **kwargs)

    client_module.AIOKafkaClient._get_conn = watched_get_conn  # noqa: SLF001
