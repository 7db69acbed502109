"""Kafka clients for commands that run outside the worker (replay, ingest, record)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    ProducerClosed,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.admin import DescribeConfigsRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.offset import OffsetRequest

from app import zstd
from app.config import RAW_MAX_MESSAGE_BYTES, KafkaSecurity, Settings, resolve_replication
from app.errors import ConfigError
from app.wire import BOOK_CHECKPOINTS, DEADLETTER, raw_topic

log = logging.getLogger(__name__)
zstd.install()  # every process that talks to Kafka imports this module: its zstd batches are cheaper
T = TypeVar("T")


async def read_to_end(consumer: Any, tps: list[Any], handle: Callable[[Any, Any], None],
                      timeout_s: float | None = None) -> int:
    """Read the assigned ``tps`` (positioned by the caller) up to their end offsets of now,
    handing every record to ``handle(tp, record)``; the number of records read. With
    ``timeout_s``, stops there even if behind."""
    end = await consumer.end_offsets(tps) if tps else {}
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    read = 0
    while deadline is None or loop.time() < deadline:
        if not [tp for tp in tps if await consumer.position(tp) < end[tp]]:  # a list: any() takes no async generator
            break
        for tp, records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).items():
            for msg in records:
                handle(tp, msg)
            read += len(records)
    return read


async def read_range(consumer: Any, begin: Mapping[Any, int], ends: Mapping[Any, int] | None,
                     until_ms: int | None = None, poll_ms: int = 1000) -> AsyncIterator[dict[Any, list[Any]]]:
    """The records of each partition of ``begin`` (assigned by the caller) from its offset there
    to before ``ends[tp]`` — and, with ``until_ms``, to before its first record stamped later — as
    each fetch returns them (partition → records in offset order; a partition with none is left
    out). Ends once every partition is read to its end. With ``ends`` None it reads on as records
    arrive and yields after every fetch, an empty one too: the caller decides when to stop
    (``export --follow``). ``verify``, ``export``, ``book-at`` and ``report`` read through this."""
    for tp, at in begin.items():
        consumer.seek(tp, at)
    open_tps = set(begin) if ends is None else {tp for tp in begin if begin[tp] < ends[tp]}
    while open_tps:
        batch = await consumer.getmany(*open_tps, timeout_ms=poll_ms)
        out: dict[Any, list[Any]] = {}
        for tp, msgs in batch.items():
            if tp not in open_tps:
                continue
            end = None if ends is None else ends[tp]
            keep = len(msgs)
            for i, msg in enumerate(msgs):
                if (end is not None and msg.offset >= end) or (until_ms is not None and msg.timestamp > until_ms):
                    keep = i
                    open_tps.discard(tp)
                    break
            if keep:
                out[tp] = msgs if keep == len(msgs) else msgs[:keep]
        if ends is not None:
            for tp in list(open_tps):
                if await consumer.position(tp) >= ends[tp]:  # past transaction markers too
                    open_tps.discard(tp)
        if out or ends is None:
            yield out


class BrokerUnavailable(ConfigError):
    """The configured broker cannot be reached."""


_NO_HEADERS: list[Any] = []


def fill(batch: Any, records: Sequence[tuple[bytes, bytes | None]], start: int, stop: int) -> int:
    """Append ``records[start:stop]`` to aiokafka's ``batch`` (a ``BatchBuilder`` from
    ``create_batch``) until it is full; the index of the first record left out (``stop`` when
    all went in). A full batch is closed, as ``BatchBuilder.append`` closes it.

    The records go straight to aiokafka's C record builder: ``BatchBuilder.append``'s Python
    layer (serializers, keyword arguments) was ~40 % of each append (0.34 → 0.21 µs a record),
    and a commit appends every changed level's row (16,600 for a burst of 50 deep updates).
    ``tests/unit/test_kafka_fill.py`` holds it to ``BatchBuilder.append`` record for record."""
    builder = getattr(batch, "_builder", None)
    if builder is None:  # not aiokafka's BatchBuilder (a stand-in): its own append
        for i in range(start, stop):
            key, value = records[i]
            if batch.append(key=key, value=value, timestamp=None) is None:
                return i
        return stop
    if batch.closed():
        return start
    append = builder.append
    offset = batch._relative_offset
    i = start
    try:
        while i < stop:
            key, value = records[i]
            if append(offset, None, key, value, _NO_HEADERS) is None:
                batch.close()
                return i
            offset += 1
            i += 1
        return stop
    finally:
        batch._relative_offset = offset


def unreachable(settings: Settings, exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"cannot reach Kafka at {settings.kafka_bootstrap} (KAFKA_BOOTSTRAP): {exc}. "
        "Start the local broker with `make kafka-up`, or point KAFKA_BOOTSTRAP at a running one."
    )


def ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    """TLS context for SSL / SASL_SSL: the system CAs or KAFKA_SSL_CAFILE, plus a client cert."""
    if not sec.tls:
        return None
    ctx = ssl.create_default_context(cafile=sec.ssl_cafile or None)
    if sec.ssl_certfile:
        ctx.load_cert_chain(sec.ssl_certfile, sec.ssl_keyfile)
    return ctx


def client_auth(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for KAFKA_SECURITY_PROTOCOL (every client we create uses them)."""
    sec = settings.security
    auth: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.tls:
        auth["ssl_context"] = ssl_context(sec)
    if sec.sasl:
        auth.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.sasl_username,
                    sasl_plain_password=sec.sasl_password.reveal())
    return auth


def faust_credentials(settings: Settings) -> Any:
    """The same, as faust's ``broker_credentials`` (None for PLAINTEXT)."""
    import faust

    sec = settings.security
    if sec.sasl:
        return faust.SASLCredentials(username=sec.sasl_username, password=sec.sasl_password.reveal(),
                                     mechanism=sec.sasl_mechanism, ssl_context=ssl_context(sec))
    if sec.tls:
        return faust.SSLCredentials(ssl_context(sec))
    return None


def faust_leader_topic(app_id: str) -> str:
    """Faust's leader-election topic (one partition), which the worker creates before Faust does."""
    return f"{app_id}-__assignor-__leader"


def is_raw_topic(settings: Settings, name: str) -> bool:
    """A ``raw.<venue>`` topic (RAW_RETENTION_*): ingestion's input, everything else is derived
    from it. ``raw.deadletter`` is the worker's output (a report of unusable frames, rebuilt by
    processing the raw topics again), so it is derived."""
    return name.startswith(settings.topic(raw_topic(""))) and name != settings.topic(DEADLETTER)


def topic_configs(settings: Settings, name: str, min_insync: int,
                  compacted: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every config bookstream sets on topic ``name``. AlterConfigs replaces a topic's whole set
    of dynamic configs, so this is always sent whole: raw topics keep RAW_RETENTION_MS /
    RAW_RETENTION_BYTES, derived ones OUTPUT_RETENTION_MS, compacted ones (``compacted``: their
    configs) one record per key, however old."""
    configs = {"max.message.bytes": str(RAW_MAX_MESSAGE_BYTES), "min.insync.replicas": str(min_insync)}
    if compacted is not None:
        configs.update(compacted)
    elif is_raw_topic(settings, name) or name == settings.topic(BOOK_CHECKPOINTS):  # as long as the raw they start
        configs.update({"cleanup.policy": "delete", "retention.ms": str(settings.raw_retention_ms),
                        "retention.bytes": str(settings.raw_retention_bytes)})
    else:
        configs.update({"cleanup.policy": "delete", "retention.ms": str(settings.output_retention_ms)})
    return configs


@dataclass(frozen=True)
class TopicPlan:
    """What :func:`ensure_topics` resolved on the cluster: its broker count, and the replication
    factor and ``min.insync.replicas`` of the topics it creates."""

    brokers: int
    replication: int
    min_insync: int


class TopicsNotReady(ConfigError):
    """The topics were created but not every broker serves them in time."""


async def ensure_topics(settings: Settings, names: list[str], compacted: Mapping[str, dict[str, str]] | None = None,
                        *, faust_leader: bool = False, ready_timeout_s: float = 30.0) -> TopicPlan:
    """Create missing topics with TOPIC_PARTITIONS partitions, the resolved replication factor
    (TOPIC_REPLICATION, MIN_INSYNC_REPLICAS) and :func:`topic_configs` (``compacted`` ones with
    their configs); bring the configs of existing ones to the settings (retention follows
    RAW_RETENTION_* / OUTPUT_RETENTION_MS; configs set by others are kept); refuse mismatched
    partition counts. With ``faust_leader``, Faust's leader topic too (one partition). Returns
    once every broker of the cluster serves every topic with a leader for each partition, so a
    client asking any broker next sees them; raises :class:`TopicsNotReady` after ``ready_timeout_s``."""
    compacted = dict(compacted or {})
    names = [*names, *(n for n in compacted if n not in names)]
    partitions = {n: settings.partitions for n in names}
    if faust_leader:
        partitions[faust_leader_topic(settings.app_id)] = 1
    names = list(partitions)
    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000,
                            **client_auth(settings))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000,
                                **client_auth(settings))
    try:
        await client.bootstrap()
        await admin.start()
    except (KafkaConnectionError, KafkaError, OSError) as exc:
        await asyncio.gather(client.close(), admin.close(), return_exceptions=True)
        raise unreachable(settings, exc) from exc
    try:
        meta = await _any_metadata(client, names)
        brokers = sorted(b["node_id"] for b in meta["brokers"])  # those alive now
        # With one broker of three down, its topics still have three replicas: a restart then must
        # neither refuse TOPIC_REPLICATION=3 nor lower min.insync.replicas (auto) of the existing
        # topics. The cluster is as large as either says.
        size = max([len(brokers)] + [len(p["replicas"]) for t in meta["topics"] if t["error_code"] == 0
                                     for p in t["partitions"]])
        factor, min_insync = resolve_replication(settings.replication, settings.min_insync_replicas, size)
        plan = TopicPlan(size, factor, min_insync)
        existing = _existing(settings, meta, partitions)  # name → its replication factor
        wanted = {n: topic_configs(settings, n, min_insync, compacted.get(n)) for n in names}
        missing = [n for n in names if n not in existing]
        if missing:
            raced = await _create(admin, [NewTopic(n, partitions[n], factor, topic_configs=wanted[n]) for n in missing])
            if created := [n for n in missing if n not in raced]:
                log.info("created topics %s (replication %d, min.insync.replicas %d, %d broker(s))",
                         ", ".join(created), factor, min_insync, len(brokers))
            if raced:
                # Created meanwhile by another client (or known to the controller before the broker
                # we asked): created with its settings, not ours — it is an existing topic.
                existing.update(await _known(client, settings, brokers, {n: partitions[n] for n in raced},
                                             ready_timeout_s))
        if existing:
            await _update_configs(admin, client, brokers, settings, plan, existing, wanted, ready_timeout_s)
        await _wait_served(client, brokers, partitions, ready_timeout_s)
        return plan
    finally:
        await asyncio.gather(client.close(), admin.close(), return_exceptions=True)


async def _any_metadata(client: AIOKafkaClient, names: list[str]) -> dict[str, Any]:
    """:func:`_metadata` from the first broker that answers (one of them may be down)."""
    nodes = [b.nodeId for b in client.cluster.brokers()]
    random.shuffle(nodes)
    for node in nodes[:-1]:
        try:
            return await _metadata(client, node, names)
        except (KafkaError, OSError) as exc:
            log.info("broker %d did not answer (%r); asking another", node, exc)
    return await _metadata(client, nodes[-1], names)


async def _metadata(client: AIOKafkaClient, node_id: int, names: list[str]) -> dict[str, Any]:
    """One broker's metadata of ``names`` (never auto-creating them: a broker with
    auto.create.topics.enable would give them its default partition count)."""
    response = await client.send(node_id, MetadataRequest(names, allow_auto_topic_creation=False))
    obj: dict[str, Any] = response.to_object()
    return obj


def _existing(settings: Settings, meta: Mapping[str, Any], partitions: Mapping[str, int]) -> dict[str, int]:
    """The topics of a metadata response that exist, with their replication factor; refuses a
    partition count other than TOPIC_PARTITIONS."""
    existing: dict[str, int] = {}
    for t in meta["topics"]:
        if t["error_code"] != 0 or not t["partitions"]:
            continue
        name, count = t["topic"], len(t["partitions"])
        if count != partitions[name]:
            raise ConfigError(
                f"topic {name} has {count} partitions but TOPIC_PARTITIONS={settings.partitions}; "
                "books are co-partitioned with their topics. Use the same TOPIC_PARTITIONS as the "
                "worker, or a fresh TOPIC_PREFIX."
            )
        existing[name] = min(len(p["replicas"]) for p in t["partitions"])
    return existing


async def _known(client: AIOKafkaClient, settings: Settings, brokers: list[int], partitions: Mapping[str, int],
                 timeout_s: float) -> dict[str, int]:
    """:func:`_existing` of topics the controller says exist, once a broker's metadata has them all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        for node in brokers:
            try:
                found = _existing(settings, await _metadata(client, node, list(partitions)), partitions)
            except (KafkaError, OSError):
                continue
            if found.keys() == partitions.keys():
                return found
        if loop.time() > deadline:
            raise TopicsNotReady(f"topic(s) {', '.join(partitions)} exist (the controller refused to create them "
                                 f"again) but no broker lists them after {timeout_s:.0f}s. Check the brokers")
        await asyncio.sleep(0.1)


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> list[str]:
    """Create ``topics``; returns those that already existed."""
    response = await _on_a_live_broker(admin, lambda: admin.create_topics(topics), "creating topics")
    raced = []
    for topic, code, *rest in response.topic_errors:
        if code == TopicAlreadyExistsError.errno:
            raced.append(topic)
        elif code:
            detail = (rest[0] if rest else None) or for_code(code).description
            raise ConfigError(f"cannot create topic {topic}: {for_code(code).message}: {detail}")
    return raced


async def _update_configs(admin: AIOKafkaAdminClient, client: AIOKafkaClient, brokers: list[int], settings: Settings,
                          plan: TopicPlan, existing: dict[str, int], wanted: dict[str, dict[str, str]],
                          timeout_s: float) -> None:
    """Bring existing topics' configs to ``wanted`` (retention follows the settings), keeping
    configs others set on them. AlterConfigs replaces the whole set: it gets all of them."""
    current = await _topic_overrides(admin, list(existing))
    changes = []
    for name, factor in existing.items():
        target = dict(wanted[name])
        if factor < plan.replication:
            said = "auto" if settings.replication is None else str(settings.replication)
            log.warning("topic %s has replication factor %d, below %d (TOPIC_REPLICATION=%s, %d broker(s)): a config "
                        "cannot change it; reassign its partitions (kafka-reassign-partitions.sh) or recreate it",
                        name, factor, plan.replication, said, plan.brokers)
            target["min.insync.replicas"] = str(min(plan.min_insync, factor))  # more would refuse every write
        merged = {**current.get(name, {}), **target}
        if not _same_configs(merged, current.get(name, {})):
            changed = {k: v for k, v in target.items() if not _same_value(current.get(name, {}).get(k), v)}
            log.info("topic %s: setting %s", name, ", ".join(f"{k}={v}" for k, v in sorted(changed.items())))
            changes.append(ConfigResource(ConfigResourceType.TOPIC, name, merged))
    if not changes:
        return
    for response in await _on_a_live_broker(admin, lambda: admin.alter_configs(changes), "setting topic configs"):
        for code, message, _type, name in response.resources:
            if code:
                raise ConfigError(f"cannot set the configs of topic {name}: {for_code(code).message}: "
                                  f"{message or for_code(code).description}")
    # The controller has them; each broker applies them from the metadata log a moment later, and
    # a partition's leader enforces them (min.insync.replicas): return once every live broker has.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    want = {c.name: c.configs for c in changes}
    while stale := await _configs_lagging(client, brokers, want):
        if loop.time() > deadline:
            raise TopicsNotReady(f"configs of topic(s) {stale} set but still not in effect after "
                                 f"{timeout_s:.0f}s. Check the brokers (their logs, kafka-metadata-quorum.sh)")
        await asyncio.sleep(0.1)


async def _configs_lagging(client: AIOKafkaClient, brokers: list[int], want: Mapping[str, Mapping[str, str]]) -> str:
    """Which live brokers do not have ``want`` in effect yet ("" when all have); a broker that
    does not answer is down and serves no one (as in :func:`_wait_served`)."""
    resources = [(int(ConfigResourceType.TOPIC), name, None) for name in want]
    lagging = []
    for node in brokers:
        try:
            response = await client.send(node, DescribeConfigsRequest(resources, False))
        except (KafkaError, OSError):
            continue
        own = _own_configs([response])
        if stale := [n for n in want if not _same_configs(own.get(n, {}), want[n])]:
            lagging.append(f"{', '.join(stale)} on broker {node}")
    return "; ".join(lagging)


async def _on_a_live_broker(admin: AIOKafkaAdminClient, call: Callable[[], Awaitable[T]], what: str,
                            timeout_s: float = 30.0) -> T:
    """``call`` (an admin request aiokafka sends to a broker of its choosing: at random, or the
    one the metadata names controller) again while the broker it chose does not answer. A broker
    killed a moment ago stays in the metadata until the controller fences it (seconds): a
    restart with one of three down must not fail on it. Safe to repeat: describing is, altering
    sets the same values, creating again says "already exists" (taken as existing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await call()
        except (NodeNotReadyError, KafkaConnectionError, RequestTimedOutError, TimeoutError) as exc:
            # (TimeoutError: the controller did not answer within the admin's request timeout)
            if loop.time() > deadline:
                raise TopicsNotReady(f"{what}: no broker answered for {timeout_s:.0f}s (last: {exc!r}). "
                                     "Check the brokers") from exc
            log.info("%s: the broker asked did not answer (%r); asking again", what, exc)
            await asyncio.sleep(0.2)
            # a fresh view of the cluster: the controller may have moved off a dead broker
            await admin._client.force_metadata_update()  # noqa: SLF001


def _same_value(a: str | None, b: str | None) -> bool:
    """Equal config values, as the broker may spell a number its own way (0.00001 → 1.0E-5)."""
    if a == b:
        return True
    try:
        return a is not None and b is not None and float(a) == float(b)
    except ValueError:
        return False


def _same_configs(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)


#: DescribeConfigs config_source of a topic's own (dynamic) config.
_DYNAMIC_TOPIC_CONFIG = 1


async def _topic_overrides(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """The configs set on each topic itself (not broker defaults), as AlterConfigs would replace them."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    return _own_configs(await _on_a_live_broker(admin, lambda: admin.describe_configs(resources),
                                                "reading topic configs"))


def _own_configs(responses: list[Any]) -> dict[str, dict[str, str]]:
    """Per topic of DescribeConfigs responses, the configs set on the topic itself."""
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for code, message, _type, name, entries in response.resources:
            if code:
                raise ConfigError(f"cannot read the configs of topic {name}: {for_code(code).message}: "
                                  f"{message or for_code(code).description}")
            own: dict[str, str] = {}
            for key, value, _read_only, source, *_ in entries:
                # version 0 of the response says is_default (a bool) where later ones say config_source
                dynamic = (not source) if response.API_VERSION == 0 else source == _DYNAMIC_TOPIC_CONFIG
                if dynamic and value is not None:
                    own[key] = value
            out[name] = own
    return out


async def _wait_served(client: AIOKafkaClient, brokers: list[int], partitions: Mapping[str, int],
                       timeout_s: float) -> None:
    """Until every broker's own metadata has every topic with a leader for each partition, and
    each leader answers for its partitions (a broker names itself leader in its metadata a
    moment before it serves them): a client that asks any broker next sees the topics."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    names = list(partitions)
    down: set[int] = set()
    while True:
        lagging: dict[int, str] = {}
        leaders: dict[int, set[tuple[str, int]]] = {}  # as the brokers say (once they agree, one leader each)
        for node in brokers:
            try:
                meta = await _metadata(client, node, names)
            except (KafkaError, OSError) as exc:
                # Down (listed until the controller fences it): it serves no one, stale or not. A
                # restart with one broker of three down goes on with the other two.
                if node not in down:
                    log.warning("broker %d unreachable (%r): not waiting for it to serve the topics", node, exc)
                    down.add(node)
                continue
            served = {t["topic"] for t in meta["topics"] if t["error_code"] == 0
                      and len(t["partitions"]) == partitions[t["topic"]]
                      and all(p["leader"] >= 0 for p in t["partitions"])}
            if unserved := [n for n in names if n not in served]:
                lagging[node] = f"{len(unserved)} topic(s) without a leader there yet, e.g. {', '.join(unserved[:3])}"
            for t in meta["topics"]:
                for p in t["partitions"]:
                    leaders.setdefault(p["leader"], set()).add((t["topic"], p["partition"]))
        if not lagging:
            for node, tps in leaders.items():
                if not_led := await _not_led(client, node, sorted(tps)):
                    lagging[node] = f"not leading {len(not_led)} of its partitions yet, e.g. {', '.join(not_led[:3])}"
        if not lagging and len(down) < len(brokers):
            return
        if loop.time() > deadline:
            raise TopicsNotReady(
                f"topics still not served by every broker {timeout_s:.0f}s after creating them: "
                + "; ".join(f"broker {node}: {why}" for node, why in sorted(lagging.items()))
                + ". Check those brokers (their logs, kafka-metadata-quorum.sh describe --status)")
        await asyncio.sleep(0.1)


async def _not_led(client: AIOKafkaClient, node: int, tps: list[tuple[str, int]]) -> list[str]:
    """The partitions of ``tps`` that broker ``node`` does not answer for as their leader yet
    (a ListOffsets request for their end)."""
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for topic, partition in tps:
        by_topic.setdefault(topic, []).append((partition, -1))  # -1: the latest offset
    try:
        response = await client.send(node, OffsetRequest(-1, 0, list(by_topic.items())))
    except (KafkaError, OSError) as exc:
        return [f"all ({exc!r})"]
    return [f"{t['topic']}-{p['partition']}" for t in response.to_object()["topics"] for p in t["partitions"]
            if p["error_code"] != 0]


async def wait_for_topic(consumer: Any, topic: str, timeout_s: float = 5.0) -> bool:
    """Whether ``topic`` exists, asking the cluster again for up to ``timeout_s``: a topic
    created a moment ago (by a fresh worker) may not have reached the broker asked first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while topic not in await consumer.topics():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.25)
    return True


class Producer(AIOKafkaProducer):
    """aiokafka's producer, whose batches of few bytes go uncompressed.

    A batch of fewer than ``compression_min_bytes`` bytes of records (``create_batch(nbytes)``)
    is sent without compression whatever ``compression_type`` says: Kafka marks compression per
    batch, and every consumer reads both kinds. At live rates most batches hold one record of a
    few hundred bytes, and a compressed one costs its producer a compression, the broker a
    decompression to validate it, and each reader another. At 800 frames/s, every batch
    uncompressed, the broker used 0.34–0.35 of a core against 0.42–0.43 with zstd and receive →
    ``book.top`` p99 fell from 15–16 to 11 ms (README "Latency settings"). Larger batches
    (catching up, replay, deep books' bursts) are compressed as before."""

    def __init__(self, *, compression_min_bytes: int = 0, **conf: Any) -> None:
        super().__init__(**conf)
        self.compression_min_bytes = compression_min_bytes

    def create_batch(self, nbytes: int | None = None) -> Any:
        """An empty batch; uncompressed when ``nbytes`` (what the caller will put in it) is below
        ``compression_min_bytes``."""
        acc = self._message_accumulator
        if nbytes is None or nbytes >= self.compression_min_bytes or not acc._compression_type:  # noqa: SLF001
            return super().create_batch()
        txn = acc._txn_manager  # noqa: SLF001
        return BatchBuilder(acc._batch_size, 0,  # noqa: SLF001
                            is_transactional=txn is not None and txn.transactional_id is not None,
                            key_serializer=self._key_serializer, value_serializer=self._value_serializer)


def producer(settings: Settings, **overrides: Any) -> Producer:
    """A producer tuned for market data: idempotent, acks=all, short linger, batching."""
    conf: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.producer_linger_ms,
        "max_batch_size": 256 * 1024,
        "compression_type": settings.compression,
        "compression_min_bytes": settings.compression_min_bytes,
        "max_request_size": 16 * 1024 * 1024,
        "request_timeout_ms": 30_000,
        **client_auth(settings),
    }
    conf.update(overrides)
    return Producer(**conf)


async def close_hard(producer: Any, within_s: float = 5.0) -> None:
    """Close an aiokafka producer without delivering what it still holds: its pending batches
    are failed first (they are sent again by a new producer), so ``stop`` has nothing to flush."""
    with contextlib.suppress(Exception):
        sender = producer._sender  # noqa: SLF001
        if sender.sender_task is not None:  # aiokafka's own callback fails for an idempotent producer
            sender.sender_task.remove_done_callback(sender._fail_all)  # noqa: SLF001
    with contextlib.suppress(Exception):
        producer._message_accumulator.fail_all(ProducerClosed())  # noqa: SLF001 - no public "abort"
    try:
        await asyncio.wait_for(producer.stop(), timeout=within_s)
    except Exception:  # noqa: BLE001 - a producer being discarded: any failure to close is only logged
        log.debug("closing a discarded producer failed", exc_info=True)
        with contextlib.suppress(Exception):
            sender = producer._sender  # noqa: SLF001
            if sender.sender_task is not None:
                sender.sender_task.cancel()
            await asyncio.wait_for(producer.client.close(), timeout=within_s)


def producer_dead(producer: Any) -> bool:
    """Has this aiokafka producer been stopped, or its sender task ended or never started (it
    delivers nothing more)? An object without aiokafka's sender (a test's stand-in) is not dead."""
    sender = getattr(producer, "_sender", None)
    if sender is None:
        return bool(getattr(producer, "_closed", False))
    task = sender.sender_task
    return bool(producer._closed or task is None or task.done())  # noqa: SLF001


async def reading_consumer(settings: Settings) -> Any:
    """A started consumer for reading topics whole (``verify``, ``export``, ``book-at``, ``report``):
    no group, nothing committed, ``read_committed``, from the earliest record, large fetches."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed",
                                max_partition_fetch_bytes=16 * 2**20, **client_auth(settings))
    try:
        await consumer.start()
    except (OSError, KafkaError) as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise unreachable(settings, exc) from exc
    return consumer


async def stop_reading(consumer: Any, within_s: float = 10.0) -> None:
    """Stop a :func:`reading_consumer`. Bounded: aiokafka 0.14's fetch routine can swallow the
    cancel ``stop`` sends it (it suppresses CancelledError while it drops an old assignment's
    fetches, aio-libs/aiokafka#983) and wait for good — a command then never ends. Past
    ``within_s`` its connections are closed under it."""
    try:
        await asyncio.wait_for(consumer.stop(), timeout=within_s)
    except TimeoutError:
        log.warning("a reading consumer did not stop within %.0f s; closing its connections", within_s)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer._client.close(), timeout=within_s)  # noqa: SLF001


async def partitions_of(consumer: Any, topic: str) -> list[Any]:
    """Every partition of ``topic``, from the cluster's whole metadata: once a consumer has an
    assignment its own metadata covers only the assigned topics (a report reading one topic after
    another found no partitions for the second)."""
    from aiokafka import TopicPartition

    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public call for this
    parts = cluster.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]
