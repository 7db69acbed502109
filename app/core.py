"""The faust.App and its configuration (settings from ``app.settings``)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import IO, Any, NoReturn

import faust
import faust.transport.producer
import faust.web.base
from faust.transport.producer import ProducerBuffer
from faust.types import FutureMessage

from app.config import Settings, load
from app.kafka import faust_credentials

settings: Settings = load()
log = logging.getLogger(__name__)


_data_dir_lock: list[IO[str]] = []  # held for the life of the worker process


def claim_data_dir(path: Path) -> None:
    """Refuse to start, with one clear line, when DATA_DIR is unusable or already in use.

    Two workers on one data dir would fight over RocksDB's lock (faust retries for 30 s,
    then dies with a traceback) or, worse, share state. An exclusive lock file says who.
    """
    lock = path / ".bookstream.lock"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fh = lock.open("a+")
    except OSError as exc:
        _refuse(f"DATA_DIR {path} is not usable ({exc.strerror}); point DATA_DIR (or --datadir) at a writable folder")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        _refuse(f"DATA_DIR {path} is in use by another worker (pid {owner}); give each worker its own "
                "DATA_DIR (or --datadir), or stop the other one")
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _data_dir_lock.append(fh)


def _refuse(message: str) -> NoReturn:
    print(f"bookstream: cannot start: {message}", file=sys.stderr, flush=True)
    os._exit(2)  # a clean, immediate exit: faust would otherwise log a crash and hang in shutdown


class BookstreamApp(faust.App):
    """faust.App that creates its topics itself, before any client subscribes.

    Otherwise a broker with auto-creation on would create the raw topics with its default
    partition count on the consumer's first metadata request, breaking co-partitioning.
    """

    async def on_first_start(self) -> None:
        claim_data_dir(settings.data_dir)  # before faust touches the folder
        self._discard_local_tables()
        await super().on_first_start()
        from app.kafka import ensure_topics
        from app.topics import ALL_NAMES

        changelog = self.tables["books"].changelog_topic.get_topic_name()
        await ensure_topics(settings, ALL_NAMES, compacted=(changelog,))
        # faust starts app tasks only after table recovery: this one must run during it
        self._progress_task = asyncio.get_running_loop().create_task(self._recovery_progress())

    def _discard_local_tables(self) -> None:
        """Rebuild tables from their changelogs, the one consistent source, at every start.

        After a SIGKILL the local RocksDB holds every write up to the kill, while faust
        replays the changelog from an offset persisted only when sends were acknowledged:
        older acknowledged level rows would overwrite newer local ones, next to a newer state
        row whose own changelog record died in the producer buffer — a book mixed from two
        moments (seen as a crossed book). The changelog is ordered per partition and the
        state row is written after its levels, so any prefix of it is consistent; re-applying
        a partly written frame is idempotent.
        """
        tabledir = Path(self.conf.tabledir)
        if tabledir.exists():
            log.info("discarding local table state in %s: tables are rebuilt from their changelogs", tabledir)
            try:
                shutil.rmtree(tabledir)
            except OSError as exc:  # never run on table files we could not reset
                _refuse(f"cannot discard the local table state in {tabledir} ({exc.strerror}: {exc.filename}); "
                        "remove that folder by hand (it is rebuilt from the changelog) or fix its permissions")

    async def _recovery_progress(self, every_s: float = 1.0) -> None:
        """Log every table recovery (at start and after each rebalance that brings work):
        records restored of total per table, the rate, and the time it took."""
        tables: Any = self.tables
        recovery = tables.recovery
        logged: dict[Any, int] = {}
        while True:
            highs = dict(recovery.active_highwaters)
            if recovery.completed.is_set() or not any(highs.values()):
                if recovery.completed.is_set() and any(highs.values()) and highs != logged:
                    logged = highs  # a recovery that finished between two looks
                    log.info("recovery: tables ready after <0.1s")
                await asyncio.sleep(0.05)
                continue
            began = time.monotonic()
            start: dict[Any, int] = {}
            last: dict[str, tuple[int, int]] = {}
            while not recovery.completed.is_set():
                per_table = self._recovery_totals(recovery, start)
                for topic, (done, total) in per_table.items():
                    rate = (done - last.get(topic, (0, 0))[0]) / every_s
                    pct = 100.0 * done / total if total else 100.0
                    log.info("recovery: %s: %s of %s records (%.1f%%), %s/s", topic, f"{done:,}", f"{total:,}", pct,
                             f"{rate:,.0f}")
                last.update(per_table)
                await asyncio.sleep(every_s)
            logged = dict(recovery.active_highwaters)
            restored = sum(total for _, total in last.values())
            log.info("recovery: tables ready after %.1fs (%s changelog records restored)", time.monotonic() - began,
                     f"{restored:,}")

    @staticmethod
    def _recovery_totals(recovery: Any, start: dict[Any, int]) -> dict[str, tuple[int, int]]:
        per_table: dict[str, list[int]] = {}
        highs, offsets = dict(recovery.active_highwaters), dict(recovery.active_offsets)
        for tp, high in highs.items():
            if high is None:
                continue
            offset = offsets.get(tp)
            start.setdefault(tp, offset if offset is not None else -1)
            pos = offset if offset is not None else start[tp]
            acc = per_table.setdefault(tp.topic, [0, 0])
            acc[0] += max(0, pos - start[tp])
            acc[1] += max(0, high - start[tp])
        return {topic: (done, total) for topic, (done, total) in per_table.items()}


app = BookstreamApp(
    settings.app_id,
    broker=settings.broker_url,
    broker_credentials=faust_credentials(settings),  # KAFKA_SECURITY_PROTOCOL, SASL, TLS
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
    producer_max_batch_size=settings.producer_max_batch_size,
    broker_max_poll_records=settings.max_poll_records,
    consumer_max_fetch_size=settings.max_fetch_size,
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


class CountingProducerBuffer(ProducerBuffer):
    """faust's send_soon buffer (table changelog rows, book.top …), counting what it hands on.

    faust flushes the producer before it commits source offsets, but this buffer's flush
    gives up as soon as one record takes over 0.1 s to reach aiokafka (a busy loop, a full
    accumulator), so offsets could be committed while changelog rows of the frames they
    cover were still queued here, and die with a killed worker. Waiting for the whole
    buffer instead stalls consumption at every commit. The counters let the book agent
    cap each commit at the records whose rows were already handed on (``queued`` when a
    record was handled ≤ ``handed`` now), which aiokafka's flush then delivers before the
    commit is sent (see app.offsets).

    ``max_messages``: faust pauses every stream while more than this many records wait,
    then drains them one by one; its default (100) makes a snapshot of a few hundred
    levels stall all books. A larger bound keeps back-pressure but stops the stalls.
    """

    max_messages = settings.producer_buffer_messages

    def __post_init__(self) -> None:
        super().__post_init__()
        self.queued = 0  # records put, ever
        self.handed = 0  # records handed to the producer (sent or failed), ever

    def put(self, fut: FutureMessage) -> None:
        self.queued += 1
        super().put(fut)

    async def _send_pending(self, fut: FutureMessage) -> None:
        try:
            await super()._send_pending(fut)
        finally:
            self.handed += 1


# faust.transport.producer.Producer builds its buffer from this module attribute.
faust.transport.producer.ProducerBuffer = CountingProducerBuffer  # type: ignore[misc]

for _name in ("app", "agents", "tables"):
    logging.getLogger(_name).setLevel(settings.log_level.upper())
