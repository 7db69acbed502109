"""The faust.App and its configuration (settings from ``app.settings``)."""

from __future__ import annotations

import logging

import faust
from faust.transport.producer import ProducerBuffer

from app.config import Settings, load

settings: Settings = load()


class BookstreamApp(faust.App):
    """faust.App that creates its topics itself, before any client subscribes.

    Otherwise a broker with auto-creation on would create the raw topics with its default
    partition count on the consumer's first metadata request, breaking co-partitioning.
    """

    async def on_first_start(self) -> None:
        await super().on_first_start()
        from app.kafka import ensure_topics
        from app.topics import ALL_NAMES

        await ensure_topics(settings, ALL_NAMES)


app = BookstreamApp(
    settings.app_id,
    broker=settings.broker_url,
    store="rocksdb://",
    datadir=str(settings.data_dir),
    autodiscover=False,
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    table_standby_replicas=settings.standby_replicas,
    consumer_auto_offset_reset="earliest",
    stream_buffer_maxsize=settings.stream_buffer_maxsize,
    producer_linger=settings.producer_linger_ms / 1000.0,
    producer_compression_type=settings.compression,
    broker_commit_interval=settings.commit_interval_s,
    # A SIGKILLed member holds its partitions until its session expires (faust: 60 s).
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=settings.session_timeout_s / 3,
    web_host=settings.web_host,
    web_port=settings.web_port,
    web_bind=settings.web_host,  # faust binds 0.0.0.0 by default; we bind what WEB_HOST says
)

# Faust pauses every stream while more than `max_messages` (100) table/changelog and
# send_soon records wait to be produced, then drains them one by one: a snapshot of a few
# hundred levels stalls all books. A larger bound keeps back-pressure but stops the stalls.
ProducerBuffer.max_messages = settings.producer_buffer_messages

for _name in ("app", "agents", "tables"):
    logging.getLogger(_name).setLevel(settings.log_level.upper())
