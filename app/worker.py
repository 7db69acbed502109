"""The faust.App of the worker and every command: ``faust -A app worker`` (``app.main`` wires it).

Importing this module reads the settings from the environment and builds the app; the core
modules (``app.book``, ``app.sync``, ``app.processor``, ``app.wire``, ``app.state`` …) never
import it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import IO, Any, NoReturn

import faust

from app import book
from app.config import Settings, load
from app.errors import ConfigError
from app.faust_glue import StateTableManager, StateTransport, install
from app.kafka import ensure_topics, faust_credentials
from app.runtime import BookRuntime

settings: Settings = load()
log = logging.getLogger(__name__)


def use_event_loop(name: str) -> None:
    """EVENT_LOOP for the worker and every command, unless ``faust --loop`` or F_LOOP chose one.

    faust picks its loop when ``faust`` is imported (before this module); no loop exists yet
    at that point, so the policy set here is the one the worker's loop is created with."""
    chosen = os.environ.get("F_LOOP") or any(a in ("-L", "--loop") or a.startswith("--loop=") for a in sys.argv)
    if name == "uvloop" and not chosen:
        import mode.loop

        mode.loop.use("uvloop")


use_event_loop(settings.event_loop)
book.use_core(settings.book_core)  # before any book exists


_data_dir_lock: list[IO[str]] = []  # held for the life of the worker process


def claim_data_dir(path: Path) -> None:
    """Refuse to start, with one clear line, when DATA_DIR is unusable or already in use.

    Two workers on one data dir would fight over RocksDB's lock or, worse, share state. An
    exclusive lock file says who.
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


def instance_id(settings: Settings) -> str | None:
    """The worker's static group membership id (``STATIC_MEMBERSHIP``): stable for one host and
    DATA_DIR, so a restarted worker rejoins with its partitions and no rebalance."""
    if not settings.static_membership:
        return None
    where = f"{socket.gethostname()}:{settings.data_dir}"
    return f"{settings.app_id}-{hashlib.sha1(where.encode(), usedforsecurity=False).hexdigest()[:12]}"


class BookstreamApp(faust.App):
    """faust.App whose table is ``app.state`` (see ``app.faust_glue``), creating its topics
    itself before any client subscribes (a broker with auto-creation on would otherwise create
    the raw topics with its default partition count, breaking co-partitioning)."""

    runtime: BookRuntime

    def _new_transport(self) -> Any:
        return StateTransport(self.conf.broker_consumer, self)

    async def on_first_start(self) -> None:
        claim_data_dir(settings.data_dir)  # before anything touches the folder
        await super().on_first_start()
        topics = self.runtime.topics
        try:  # Faust's leader topic too: created here with the resolved replication factor, before Faust would
            plan = await ensure_topics(settings, [*topics.all, topics.assignment], faust_leader=True, compacted={
                **topics.compacted(), topics.changelog: settings.changelog.topic_configs()})
        except ConfigError as exc:  # TOPIC_REPLICATION above the brokers, topics not served in time …
            _refuse(str(exc))
        self.conf.topic_replication_factor = plan.replication  # any topic Faust declares from now on
        await self.runtime.start()

    async def on_stop(self) -> None:
        await super().on_stop()
        await self.runtime.stop()


app = BookstreamApp(
    settings.app_id,
    # Faust reads its own settings from environment variables too, under names bookstream's
    # settings share (PROCESSING_GUARANTEE would switch Faust's consumer to its own transactions,
    # WEB_PORT, TOPIC_PARTITIONS…). Every Faust setting bookstream needs is passed below; Faust's
    # own environment variables count only with the FAUST_ prefix (FAUST_BROKER_REQUEST_TIMEOUT…).
    env_prefix="FAUST_",
    broker=settings.broker_url,
    broker_credentials=faust_credentials(settings),  # KAFKA_SECURITY_PROTOCOL, SASL, TLS
    store="memory://",  # no Faust tables: the books table is app.state
    TableManager=StateTableManager,
    datadir=str(settings.data_dir),
    autodiscover=False,
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=settings.partitions,
    # TOPIC_REPLICATION=auto is resolved against the cluster in on_first_start, which sets this again
    topic_replication_factor=settings.replication or 1,
    table_standby_replicas=settings.standby_replicas,
    consumer_auto_offset_reset="earliest",
    consumer_group_instance_id=instance_id(settings),
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
app.runtime = BookRuntime(settings)
install(app)

for _name in ("app", "agents", "tables"):
    logging.getLogger(_name).setLevel(settings.log_level.upper())
