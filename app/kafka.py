"""Kafka clients for commands that run outside the worker (replay, ingest, record)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from app.config import RAW_MAX_MESSAGE_BYTES, KafkaSecurity, Settings
from app.errors import ConfigError

log = logging.getLogger(__name__)


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


class BrokerUnavailable(ConfigError):
    """The configured broker cannot be reached."""


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


async def ensure_topics(settings: Settings, names: list[str], compacted: Mapping[str, dict[str, str]] | None = None
                        ) -> None:
    """Create missing topics with TOPIC_PARTITIONS partitions (``compacted`` ones with their
    configs, which are also applied to them when they exist); refuse mismatched ones; return
    once every topic has a leader for every partition, so a consumer subscribing next sees them."""
    compacted = dict(compacted or {})
    names = [*names, *(n for n in compacted if n not in names)]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000,
                                **client_auth(settings))
    try:
        await admin.start()
    except (KafkaConnectionError, KafkaError, OSError) as exc:
        raise unreachable(settings, exc) from exc
    try:
        existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)
                    if t.get("error_code", 0) == 0}
        for name, count in existing.items():
            if count != settings.partitions:
                raise ConfigError(
                    f"topic {name} has {count} partitions but TOPIC_PARTITIONS={settings.partitions}; "
                    "books are co-partitioned with their topics. Use the same TOPIC_PARTITIONS as the "
                    "worker, or a fresh TOPIC_PREFIX."
                )
        default = {"max.message.bytes": str(RAW_MAX_MESSAGE_BYTES)}
        missing = [NewTopic(n, settings.partitions, settings.replication, topic_configs=compacted.get(n, default))
                   for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by another client
                await admin.create_topics(missing)
            log.info("created topics %s", ", ".join(t.name for t in missing))
            await _wait_visible(admin, names)
        kept = [ConfigResource(ConfigResourceType.TOPIC, n, configs) for n, configs in compacted.items()
                if n in existing]
        if kept:  # settings such as CHANGELOG_SEGMENT_MS apply to a topic created earlier too
            await admin.alter_configs(kept)
    finally:
        await admin.close()


async def _wait_visible(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        ready = {t["topic"] for t in described if t.get("error_code", 0) == 0 and t["partitions"]
                 and all(p["leader"] >= 0 for p in t["partitions"])}
        if ready >= set(names):
            return
        if asyncio.get_running_loop().time() > deadline:
            log.warning("topics still without a leader after %.0fs (slow broker?): %s; continuing", timeout_s,
                        ", ".join(sorted(set(names) - ready)))
            return
        await asyncio.sleep(0.1)


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer tuned for market data: idempotent, acks=all, short linger, batching."""
    conf: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.producer_linger_ms,
        "max_batch_size": 256 * 1024,
        "compression_type": settings.compression,
        "max_request_size": 16 * 1024 * 1024,
        "request_timeout_ms": 30_000,
        **client_auth(settings),
    }
    conf.update(overrides)
    return AIOKafkaProducer(**conf)


async def start_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    prod = producer(settings, **overrides)
    try:
        await asyncio.wait_for(prod.start(), timeout=30)
    except (KafkaConnectionError, KafkaError, OSError, TimeoutError) as exc:
        await prod.stop()
        raise unreachable(settings, exc) from exc
    return prod
