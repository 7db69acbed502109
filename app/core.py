"""The faust.App and its configuration (settings from ``app.settings``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
import faust.web.base
from faust.transport.producer import ProducerBuffer

from app.config import Settings, load

settings: Settings = load()
log = logging.getLogger(__name__)


class BookstreamApp(faust.App):
    """faust.App that creates its topics itself, before any client subscribes.

    Otherwise a broker with auto-creation on would create the raw topics with its default
    partition count on the consumer's first metadata request, breaking co-partitioning.
    """

    async def on_first_start(self) -> None:
        await super().on_first_start()
        from app.kafka import ensure_topics
        from app.topics import ALL_NAMES

        changelog = self.tables["books"].changelog_topic.get_topic_name()
        await ensure_topics(settings, ALL_NAMES, compacted=(changelog,))
        # faust starts app tasks only after table recovery: this one must run during it
        self._progress_task = asyncio.get_running_loop().create_task(self._recovery_progress())

    async def _recovery_progress(self, every_s: float = 1.0) -> None:
        """Log table recovery per table: records restored of total, and the rate."""
        tables: Any = self.tables
        recovery = tables.recovery
        start: dict[Any, int] = {}
        began = time.monotonic()
        last_done: dict[str, int] = {}
        while not recovery.completed.is_set():
            await asyncio.sleep(every_s)
            highs, offsets = dict(recovery.active_highwaters), dict(recovery.active_offsets)
            per_table: dict[str, list[int]] = {}
            for tp, high in highs.items():
                if high is None:
                    continue
                offset = offsets.get(tp)
                start.setdefault(tp, offset if offset is not None else -1)
                pos = offset if offset is not None else start[tp]
                acc = per_table.setdefault(tp.topic, [0, 0])
                acc[0] += max(0, pos - start[tp])
                acc[1] += max(0, high - start[tp])
            for topic, (done, total) in per_table.items():
                rate = (done - last_done.get(topic, 0)) / every_s
                last_done[topic] = done
                pct = 100.0 * done / total if total else 100.0
                log.info("recovery: %s: %s of %s records (%.1f%%), %s/s", topic, f"{done:,}", f"{total:,}", pct,
                         f"{rate:,.0f}")
        restored = sum(last_done.values())
        log.info("recovery: tables ready after %.1fs (%s changelog records restored)", time.monotonic() - began,
                 f"{restored:,}")


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
    # faust's own views expose internals (tables, routing, stats): off unless WEB_FAUST_VIEWS
    web_stats_enabled=settings.faust_views,
    web_graph_enabled=settings.faust_views,
    web_router_enabled=settings.faust_views,
    web_tables_enabled=settings.faust_views,
    web_metrics_enabled=settings.faust_views,
)
# Our dashboard is "/": faust's production index (also "/") is not mounted.
faust.web.base.Web.production_blueprints = []

# Faust pauses every stream while more than `max_messages` (100) table/changelog and
# send_soon records wait to be produced, then drains them one by one: a snapshot of a few
# hundred levels stalls all books. A larger bound keeps back-pressure but stops the stalls.
ProducerBuffer.max_messages = settings.producer_buffer_messages

for _name in ("app", "agents", "tables"):
    logging.getLogger(_name).setLevel(settings.log_level.upper())
