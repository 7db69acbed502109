"""``ref.instruments`` → :class:`~app.market.instruments.Registry`: read whole, then followed.

The worker keeps a registry current (every version of every instrument) so that a REST
instrument list publishes only what changed, whichever worker owns that venue's partition;
``faust -A app instruments`` reads the topic once to list it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app.config import Settings
from app.errors import BookstreamError
from app.kafka import client_auth, read_to_end, wait_for_topic
from app.market.instruments import Registry, Spec

log = logging.getLogger(__name__)


class RegistryReader:
    def __init__(self, settings: Settings, topic: str, registry: Registry) -> None:
        self.settings, self.topic, self.registry = settings, topic, registry
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        consumer = self.consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap,
                                                    enable_auto_commit=False, isolation_level="read_committed",
                                                    **client_auth(self.settings))
        await consumer.start()
        if not await wait_for_topic(consumer, self.topic):  # a topic created a moment ago may still be on its way
            await consumer.stop()
            raise BookstreamError(f"topic {self.topic} does not exist yet: a worker creates it (faust -A app worker)")
        # every bookstream topic has TOPIC_PARTITIONS partitions (ensure_topics refuses others)
        tps = [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

    async def catch_up(self, timeout_s: float = 30.0) -> int:
        """Read to the end offsets of now; the number of records read."""
        consumer = self.consumer
        assert consumer is not None
        return await read_to_end(consumer, list(consumer.assignment()), lambda tp, msg: self._apply_one(msg),
                                 timeout_s)

    async def follow(self) -> None:
        """Apply new versions as they are published (by this worker or another), until cancelled."""
        consumer = self.consumer
        assert consumer is not None
        while True:
            try:
                self._apply(await consumer.getmany(timeout_ms=1000, max_records=10_000))
            except KafkaError as exc:
                log.warning("ref.instruments: %s; retrying", exc)
                await asyncio.sleep(1.0)

    def _apply(self, batches: dict[TopicPartition, list[Any]]) -> int:
        n = 0
        for records in batches.values():
            for msg in records:
                n += 1
                self._apply_one(msg)
        return n

    def _apply_one(self, msg: Any) -> None:
        try:
            self.registry.apply(Spec.decode(msg.value))
        except (ValueError, TypeError) as exc:
            log.warning("ref.instruments %d@%d: unreadable version (%s)", msg.partition, msg.offset, exc)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


async def read_registry(settings: Settings) -> Registry:
    """The whole registry as ``ref.instruments`` holds it now (for commands)."""
    registry = Registry()
    reader = RegistryReader(settings, settings.topic("ref.instruments"), registry)
    try:
        await reader.start()
        await reader.catch_up()
    finally:
        await reader.stop()
    return registry
