"""The books table's changelog topic: transactional commits, restores and standby copies.

Writing: the worker owning table partition ``p`` commits through one transactional producer
whose ``transactional.id`` is ``<APP_ID>-books-<p>``. Starting it (``InitProducerId``) fences
whichever worker owned ``p`` before — a killed one, or a zombie that has not noticed the
rebalance — and aborts its open transaction, so only the current owner's commits can land.
A commit is one transaction: every row, then the progress rows (see :mod:`app.state.layout`).

Reading (restore, standbys) is ``read_committed``: an aborted or unfinished commit is never
seen, so a copy read to the end of the log always holds whole commits. Compaction
(``cleanup.policy=compact``, settings ``CHANGELOG_*``) keeps one record per live row: what a
new worker reads is bounded by the live books, not by their history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from app.config import Settings
from app.kafka import client_auth, fill
from app.state.layout import Checkpoint
from app.state.store import PartitionStore

log = logging.getLogger(__name__)

#: Longest a commit may stay open before the broker aborts it (and an abandoned one blocks
#: readers of its partition: the next owner aborts it at once by taking the transactional id).
TRANSACTION_TIMEOUT_MS = 30_000
BATCH_BYTES = 1024 * 1024
#: A commit hands the event loop over after this many rows put in its batches (~1 µs each then in
#: aiokafka's batch builder, ~0.2 µs since ``app.kafka.fill``): a burst's commit (16,600 rows for
#: 50 books' 332-level diffs) was otherwise one turn of the loop of several milliseconds, and
#: every frame and output waited.
YIELD_ROWS = 1000


def _retrieved(fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """``fut``, its outcome read when it comes: a commit that fails leaves its batches' futures
    unawaited (the transaction is abandoned whole), and asyncio would log each failed one as
    "Future exception was never retrieved"."""
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


async def _send_outputs(producer: AIOKafkaProducer, outputs: Sequence[tuple[str, int, bytes, bytes]]) -> None:
    """Downstream records into the open transaction, in order per topic partition, in batches."""
    lanes: dict[tuple[str, int], Any] = {}
    for topic, partition, key, value in outputs:
        batch = lanes.get((topic, partition))
        if batch is None:
            batch = lanes[(topic, partition)] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            _retrieved(await producer.send_batch(batch, topic, partition=partition))
            batch = lanes[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise CommitFailed(f"an output record of {len(key) + len(value)} bytes to {topic} exceeds "
                                   f"{BATCH_BYTES} bytes")
    for (topic, partition), batch in lanes.items():
        if batch.record_count():
            _retrieved(await producer.send_batch(batch, topic, partition=partition))


class Fenced(Exception):
    """Another worker took this partition's transactional id: it owns the partition now."""


class CommitFailed(Exception):
    """A commit did not go through (broker unreachable, timeout); its rows stay pending."""


class ChangelogWriter:
    """One partition's transactional producer."""

    def __init__(self, settings: Settings, topic: str, partition: int) -> None:
        self.settings = settings
        self.topic = topic
        self.partition = partition
        self.transactional_id = f"{settings.app_id}-books-{partition}"
        self._producer: AIOKafkaProducer | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, transactional_id=self.transactional_id,
            enable_idempotence=True, acks="all", linger_ms=0, compression_type=self.settings.compression,
            max_batch_size=BATCH_BYTES, max_request_size=16 * BATCH_BYTES, request_timeout_ms=20_000,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, **client_auth(self.settings))

    async def start(self) -> None:
        """Take the transactional id: fences the previous owner and aborts its open commit."""
        await self.close()
        self._producer = await _start(self._new_producer())

    async def commit(self, records: Sequence[tuple[bytes, bytes | None]],
                     outputs: Sequence[tuple[str, int, bytes, bytes]] = ()) -> int:
        """Write ``records`` in one transaction; returns the changelog offset after them.

        ``outputs`` (``PROCESSING_GUARANTEE=exactly_once``): downstream records ``(topic,
        partition, key, value)`` of the raw records this commit covers, written in the same
        transaction, so that a ``read_committed`` consumer sees them exactly when the state and
        progress that produced them are committed, and never those of an aborted commit."""
        if self._producer is None:
            await self.start()
        producer = self._producer
        assert producer is not None
        try:
            await producer.begin_transaction()
            futures: list[tuple[asyncio.Future[Any], int]] = []
            if outputs:
                await _send_outputs(producer, outputs)
            batch = producer.create_batch()
            for start in range(0, len(records), YIELD_ROWS):
                if start:
                    await asyncio.sleep(0)
                i, stop = start, min(start + YIELD_ROWS, len(records))
                while (i := fill(batch, records, i, stop)) < stop:  # the batch is full
                    if not batch.record_count():
                        key, value = records[i]
                        raise CommitFailed(f"a changelog row of {len(key) + len(value or b'')} bytes exceeds "
                                           f"{BATCH_BYTES} bytes")
                    futures.append((_retrieved(await producer.send_batch(batch, self.topic, partition=self.partition)),
                                    batch.record_count()))
                    batch = producer.create_batch()
            if batch.record_count():
                futures.append((_retrieved(await producer.send_batch(batch, self.topic, partition=self.partition)),
                                batch.record_count()))
            await producer.commit_transaction()
            last = -1
            for fut, count in futures:
                meta = await fut
                last = max(last, meta.offset + count - 1)
            return last + 1
        except ProducerFenced as exc:
            self._producer = None
            with contextlib.suppress(Exception):
                await producer.stop()
            raise Fenced(f"partition {self.partition}: {exc}") from exc
        except (KafkaError, OSError, TimeoutError) as exc:
            # Whatever state the transaction is in, a new producer with the same id aborts it.
            self._producer = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=5)
            raise CommitFailed(f"partition {self.partition}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=10)


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 2**20,
        fetch_max_bytes=64 * 2**20, request_timeout_ms=30_000, **client_auth(settings))


Client = TypeVar("Client", AIOKafkaConsumer, AIOKafkaProducer)


async def _start(client: Client) -> Client:
    """``client`` started (30 s at most), or stopped again and the error raised."""
    try:
        await asyncio.wait_for(client.start(), timeout=30)
    except BaseException:
        with contextlib.suppress(Exception):
            await client.stop()
        raise
    return client


def usable_checkpoint(store: PartitionStore, end: int, delete_retention_ms: int) -> int:
    """Where to read a local copy on from; wipes a copy that cannot be caught up from the log:
    its position is beyond the end (the topic was recreated), or it was written longer than
    ``delete_retention_ms`` ago (a delete it never saw may have been compacted away)."""
    cp = store.checkpoint()
    age_ms = time.time() * 1000 - cp.written_at_ms
    if cp.changelog_next > end:
        store.wipe(f"its changelog position {cp.changelog_next} is past the end of the changelog ({end}): "
                   "the topic was recreated")
        return 0
    if cp.changelog_next and age_ms >= delete_retention_ms:
        store.wipe(f"written {age_ms / 3.6e6:.1f} h ago, longer than the changelog keeps deletes "
                   "(CHANGELOG_DELETE_RETENTION_MS)")
        return 0
    return cp.changelog_next


async def _apply(store: PartitionStore, records: list[Any], restoring: bool) -> int:
    """Write fetched changelog records into the local copy with the new checkpoint, on the
    store's background thread (a fetch of 20,000 records written on the loop held every active
    partition's frames as long)."""
    await store.write_soon([(r.key, r.value) for r in records],
                           Checkpoint(changelog_next=records[-1].offset + 1, restoring=restoring))
    return len(records)


async def restore(settings: Settings, topic: str, stores: Iterable[PartitionStore],
                  delete_retention_ms: int) -> dict[int, int]:
    """Read each partition's changelog from its local checkpoint to the end of the log (as it
    is when the restore starts), in write batches. Returns records applied per partition.

    A copy that cannot be caught up is rebuilt from the beginning (:func:`usable_checkpoint`).
    """
    by_tp = {TopicPartition(topic, s.partition): s for s in stores}
    if not by_tp:
        return {}
    consumer = _consumer(settings)
    await _start(consumer)
    applied = dict.fromkeys((s.partition for s in by_tp.values()), 0)
    began = time.monotonic()
    try:
        tps = list(by_tp)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        todo: dict[TopicPartition, int] = {}
        total = 0
        for tp, store in by_tp.items():
            position = max(usable_checkpoint(store, ends[tp], delete_retention_ms), starts[tp])
            consumer.seek(tp, position)
            if position < ends[tp]:
                todo[tp] = ends[tp]
                total += ends[tp] - position
                log.info("recovery: partition %d: changelog records %d to %d", tp.partition, position, ends[tp])
            else:
                await store.write_soon([], Checkpoint(changelog_next=position))
        last_log = time.monotonic()
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=100, max_records=20_000)
            for tp, records in fetched.items():
                if records and tp in todo:
                    applied[by_tp[tp].partition] += await _apply(by_tp[tp], records, restoring=True)
            for tp in list(todo):
                position = await consumer.position(tp)
                if position >= todo[tp]:
                    await by_tp[tp].write_soon([], Checkpoint(changelog_next=position, restoring=False))
                    del todo[tp]
            now = time.monotonic()
            if now - last_log >= 1.0 and todo:
                done = sum(applied.values())
                log.info("recovery: %s: %s of %s records (%.1f%%), %s/s", topic, f"{done:,}", f"{total:,}",
                         100.0 * done / max(total, 1), f"{done / (now - began):,.0f}")
                last_log = now
    finally:
        await consumer.stop()
    done = sum(applied.values())
    log.info("recovery: tables ready after %.1fs (%s changelog records restored)", time.monotonic() - began,
             f"{done:,}")
    return applied


class StandbyReplicator:
    """Keeps standby copies of partitions this worker does not own up to date with the
    changelog (``read_committed``), so that taking one over reads only the tail."""

    def __init__(self, settings: Settings, topic: str, delete_retention_ms: int) -> None:
        self.settings = settings
        self.topic = topic
        self.delete_retention_ms = delete_retention_ms
        self.stores: dict[int, PartitionStore] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.records = 0

    def set_partitions(self, stores: Iterable[PartitionStore]) -> None:
        self.stores = {s.partition: s for s in stores}
        self._changed.set()
        if self._task is None and self.stores:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="standby-replicator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._tail()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broker outage: try again, the copies only lag
                log.warning("standby copies: %s; retrying", exc)
                await asyncio.sleep(2.0)

    async def _tail(self) -> None:
        consumer = _consumer(self.settings)
        await _start(consumer)
        try:
            while True:
                self._changed.clear()
                stores = dict(self.stores)
                tps = {TopicPartition(self.topic, p): s for p, s in stores.items()}
                consumer.assign(list(tps))
                ends = await consumer.end_offsets(list(tps)) if tps else {}
                if self._changed.is_set():
                    continue  # reassigned meanwhile (a standby may be being promoted): start over
                for tp, store in tps.items():
                    consumer.seek(tp, usable_checkpoint(store, ends[tp], self.delete_retention_ms))
                while not self._changed.is_set():
                    if not tps:
                        await self._changed.wait()
                        break
                    fetched = await consumer.getmany(timeout_ms=200, max_records=20_000)
                    for tp, records in fetched.items():
                        target = tps.get(tp)
                        if records and target is not None and self.stores.get(tp.partition) is target:
                            self.records += await _apply(target, records, restoring=False)
        finally:
            await consumer.stop()
