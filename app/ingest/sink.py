"""Raw records to Kafka within a bounded memory budget.

``put`` never blocks the WebSocket readers. Records wait in a queue, sent by one task
through an aiokafka producer. Queued plus in-flight bytes never exceed ``INGEST_BUFFER_MB``:
past that, new records are dropped and counted. A record whose delivery failed for a
reason that passes (broker down, leader moving, request timed out) stays within the budget
and is sent again, in its original order, once Kafka answers: an outage shorter than the
budget loses nothing (a record that reached Kafka before its ack was lost may then appear
twice; the book agent recognises the repeat by the venue's sequence). An instrument that
lost a record (dropped here, or a delivery that cannot succeed) cannot be trusted any more:
it is remembered, and once Kafka accepts records again it gets a ``conn`` gap record and a
resync, so its book goes stale and recovers instead of being silently wrong.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError

from app.config import Settings
from app.kafka import producer as make_producer
from app.router import RawRecord, conn_event, headers
from app.venues.base import Kind

log = logging.getLogger(__name__)


async def _close_quietly(producer: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), timeout=5)


class RawSink:
    def __init__(self, settings: Settings, budget_bytes: int, on_lost: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.budget = budget_bytes
        self.on_lost = on_lost  # called with an instrument key once Kafka is back, to resync it
        self.queue: collections.deque[RawRecord] = collections.deque()
        self.pending_bytes = 0  # queued + in flight
        self.peak_bytes = 0
        self.sent = 0
        self.dropped: collections.Counter[str] = collections.Counter()  # per venue
        self.failed: collections.Counter[str] = collections.Counter()
        self.lost_keys: set[str] = set()
        self.kafka_ok = False
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._last_warning = 0.0
        self._task: asyncio.Task[None] | None = None
        self._producer: Any = None
        self._replace_producer = False
        self._inflight: dict[asyncio.Future[Any], tuple[RawRecord, int, int]] = {}  # → (record, size, order)
        self._order = 0  # send order, so that records to send again keep it
        self.retry: list[tuple[int, RawRecord, int]] = []  # (order, record, size): failed, to send again
        self.retried = 0
        self._delivered: dict[str, int] = {}  # instrument key → order of its last delivered record
        self._last_delivery = time.monotonic()
        self.stall_s = 20.0  # nothing delivered for this long with records in flight: new producer

    @staticmethod
    def _size(rec: RawRecord) -> int:
        return len(rec.value) + len(rec.key) + 64

    def put(self, rec: RawRecord) -> None:
        size = self._size(rec)
        if self.pending_bytes + size > self.budget:
            self.kafka_ok = False  # not keeping up: unreachable, or too slow for the feed
            self.dropped[rec.venue] += 1
            if rec.key.partition(":")[2]:
                self.lost_keys.add(rec.key)
            self._warn(f"ingest buffer full ({self.pending_bytes / 2**20:.1f} of {self.budget / 2**20:.1f} MiB): "
                       f"dropping frames, {sum(self.dropped.values())} so far; Kafka at "
                       f"{self.settings.kafka_bootstrap} is {'slow' if self.kafka_ok else 'unreachable'}")
            return
        self.pending_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.pending_bytes)
        self.queue.append(rec)
        self._wake.set()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 5.0:
            self._last_warning = now
            log.error(message)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="raw-sink")

    async def stop(self, flush_timeout: float = 10.0) -> None:
        if self.queue and self.kafka_ok:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout=flush_timeout)
        if self._task is not None:
            self._task.cancel()
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), timeout=flush_timeout)
            except (TimeoutError, KafkaError):
                log.warning("raw sink: producer did not flush within %.0fs", flush_timeout)

    async def _connect(self) -> Any:
        delay = 0.5
        while True:
            # Not idempotent: an idempotent producer whose batches expired during an outage is
            # wedged for good (OutOfOrderSequenceNumber). A retried duplicate in a raw topic is
            # harmless: the book agent recognises it by the venue's sequence.
            prod = make_producer(self.settings, request_timeout_ms=15_000, enable_idempotence=False)
            try:
                await asyncio.wait_for(prod.start(), timeout=15)
                log.info("raw sink connected to Kafka at %s", self.settings.kafka_bootstrap)
                return prod
            except (KafkaError, OSError, TimeoutError) as exc:
                await prod.stop()
                self.kafka_ok = False
                self._warn(f"Kafka at {self.settings.kafka_bootstrap} unreachable ({exc}); buffering up to "
                           f"{self.budget / 2**20:.1f} MiB, retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        self._producer = await self._connect()
        self.kafka_ok = True
        asyncio.get_running_loop().create_task(self._stall_watch(), name="raw-sink-stall")
        while True:
            if self._replace_producer:
                await self._new_producer()
            if self.retry and not self._inflight:
                self._requeue()
            if not self.queue or self.retry:  # nothing to send, or failed records must go first
                if not self.queue and not self.retry:
                    self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.kafka_ok and self.lost_keys:
                self._announce_losses()
            rec = self.queue.popleft()
            size = self._size(rec)
            self._order += 1
            try:
                fut = await self._producer.send(self.settings.topic(f"raw.{rec.venue}"), rec.value,
                                                key=rec.key.encode(), headers=rec.headers)
            except KafkaError as exc:
                self._failed(rec, size, self._order, exc)
                continue
            self._inflight[fut] = (rec, size, self._order)
            fut.add_done_callback(lambda f, rec=rec, size=size, order=self._order: self._done(f, rec, size, order))

    async def _stall_watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._inflight and time.monotonic() - self._last_delivery > self.stall_s:
                log.error("raw sink: nothing delivered for %.0fs with %d records in flight; abandoning them "
                          "(their books will resync) and starting a new producer", self.stall_s, len(self._inflight))
                for fut in list(self._inflight):
                    fut.cancel()  # _done counts each as lost
                self._last_delivery = time.monotonic()
                self._replace_producer = True
                self._wake.set()

    def _done(self, fut: asyncio.Future[Any], rec: RawRecord, size: int, order: int) -> None:
        if self._inflight.pop(fut, None) is None:
            return  # already accounted for
        if fut.cancelled() or fut.exception() is not None:
            self._failed(rec, size, order, fut.exception() if not fut.cancelled() else None)
            return
        self._last_delivery = time.monotonic()
        self.pending_bytes -= size
        self.sent += 1
        if order > self._delivered.get(rec.key, 0):
            self._delivered[rec.key] = order
        if self.retry and not self._inflight:
            self._wake.set()  # the failed ones can go again now
        if not self.kafka_ok:
            log.warning("Kafka accepts records again; %d instruments lost frames and will resync", len(self.lost_keys))
        self.kafka_ok = True

    async def _new_producer(self) -> None:
        """After a non-retriable error (an idempotent producer whose expired batches left a
        hole in its sequence gets OutOfOrderSequenceNumber for ever) start a fresh producer."""
        self._replace_producer = False
        old, self._producer = self._producer, None
        log.warning("raw sink: replacing the Kafka producer after a non-retriable error")
        asyncio.get_running_loop().create_task(_close_quietly(old))
        self._producer = await self._connect()

    def _failed(self, rec: RawRecord, size: int, order: int, exc: BaseException | None) -> None:
        """A delivery failed: send it again later if the failure can pass (it stays in the
        budget meanwhile), otherwise count it lost."""
        passing = exc is None or (isinstance(exc, KafkaError) and exc.retriable)
        if not passing:
            self._lost(rec, size, exc)
            return
        self.kafka_ok = False
        self.retry.append((order, rec, size))
        self._warn(f"delivery to Kafka failed ({exc or 'no answer'}); {len(self.retry)} records kept to send again")
        self._wake.set()

    def _requeue(self) -> None:
        """Every in-flight record has failed or landed: put the failed ones back first, in order.

        A failed record of an instrument whose later record already landed would now arrive
        out of order: that instrument is treated as having lost frames (gap record, resync)."""
        self.retry.sort(key=lambda item: item[0])
        for order, rec, _ in self.retry:
            if self._delivered.get(rec.key, 0) > order and rec.key.partition(":")[2]:
                self.lost_keys.add(rec.key)
        self.queue.extendleft(rec for _, rec, _ in reversed(self.retry))
        self.retried += len(self.retry)
        self.retry.clear()

    def _lost(self, rec: RawRecord, size: int, exc: BaseException | None) -> None:
        self.pending_bytes -= size
        self.failed[rec.venue] += 1
        self.kafka_ok = False
        if isinstance(exc, KafkaError) and not exc.retriable:
            self._replace_producer = True
            self._wake.set()
        if rec.key.partition(":")[2]:
            self.lost_keys.add(rec.key)
        self._warn(f"delivery to Kafka failed ({exc}); {sum(self.failed.values())} records lost so far")

    def _announce_losses(self) -> None:
        keys, self.lost_keys = self.lost_keys, set()
        now = time.time_ns()
        for key in sorted(keys):
            venue = key.partition(":")[0]
            value = conn_event("gap", "frames lost by ingestion while Kafka was unavailable")
            self.queue.appendleft(RawRecord(venue, key, value, headers(now, Kind.CONN, "ingest")))
            self.pending_bytes += len(value) + len(key) + 64
            if self.on_lost is not None:
                self.on_lost(key)

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "dropped": dict(self.dropped), "failed": dict(self.failed),
                "pending_bytes": self.pending_bytes, "peak_bytes": self.peak_bytes, "budget_bytes": self.budget,
                "kafka_ok": self.kafka_ok, "retried": self.retried, "waiting_retry": len(self.retry)}
