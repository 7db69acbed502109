"""Raw frames to Kafka: batched into version-2 raw records, within a bounded memory budget.

Batching is natural (README "Raw record format"): frames go to one lane per raw topic
partition. An idle lane — nothing in flight, nothing sent in the last ``RAW_BATCH_LINGER_MS`` —
sends a frame at once, alone: no added latency when the load is light. Under load frames
gather: a lane sends its next record once the previous one is delivered and a linger has
passed since it went out, so it sends at most one record per linger, and no frame waits
longer than one linger; a record also goes out as soon as it holds ``RAW_BATCH_MAX_FRAMES``
frames or ``RAW_BATCH_MAX_BYTES`` bytes. A worker then gets one Faust event for many frames,
whether they are one deep instrument's or a thousand light ones' of the same partition.

``put`` never blocks the WebSocket readers (replay uses ``put_wait``, which waits for room
instead). Queued plus in-flight bytes never exceed ``INGEST_BUFFER_MB``: past that, new frames
are dropped and counted. A record whose delivery failed for a reason that passes (broker down,
leader moving, request timed out) stays within the budget and is sent again, in its lane's
order, once Kafka answers: an outage shorter than the budget loses nothing (a record that
reached Kafka before its ack was lost may then appear twice; the book agent recognises the
repeat by the venue's sequence). An instrument that lost a frame (dropped here, a delivery that
cannot succeed, or one that could only arrive out of order) cannot be trusted any more: once
Kafka accepts records again it gets a ``conn`` gap frame and a resync, so its book goes stale
and recovers instead of being silently wrong.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError

from app.config import Settings
from app.kafka import producer as make_producer
from app.publishing import LogLimiter
from app.venues.base import Kind
from app.wire import V2_HEADERS, RawFrame, conn_event, encode_frame, encode_record, partition_for, record_key

log = logging.getLogger(__name__)


async def _close_quietly(producer: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), timeout=5)


@dataclass(slots=True)
class _Batch:
    """Frames of one lane that travel as one raw record."""

    lines: list[bytes] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    venues: list[str] = field(default_factory=list)
    size: int = 0
    began: float = 0.0  # monotonic time of its first frame
    order: int = 0  # send order (set when sent)


@dataclass(slots=True)
class _Lane:
    """One raw topic partition: a gathering batch, closed ones waiting, and what is in flight."""

    topic: str
    partition: int
    open: _Batch | None = None
    ready: collections.deque[_Batch] = field(default_factory=collections.deque)
    inflight: int = 0
    last_sent: float = 0.0  # monotonic time of its last record
    retry: list[_Batch] = field(default_factory=list)


class RawSink:
    def __init__(self, settings: Settings, budget_bytes: int, on_lost: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.budget = budget_bytes
        self.on_lost = on_lost  # called with an instrument key once Kafka is back, to resync it
        self.max_frames = settings.raw_batch_max_frames
        self.max_bytes = settings.raw_batch_max_bytes
        self.linger_s = settings.raw_batch_linger_ms / 1000
        self.lanes: dict[tuple[str, int], _Lane] = {}
        self.pending_bytes = 0  # gathering + waiting + in flight
        self.peak_bytes = 0
        self.sent = 0  # frames delivered
        self.records = 0  # raw records delivered
        self.dropped: collections.Counter[str] = collections.Counter()  # frames, per venue
        self.failed: collections.Counter[str] = collections.Counter()
        self.lost_keys: set[str] = set()
        self.kafka_ok = False
        self.retried = 0
        self.stall_s = 20.0  # nothing delivered for this long with records in flight: new producer
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._log = LogLimiter()
        self._task: asyncio.Task[None] | None = None
        self._stall_task: asyncio.Task[None] | None = None
        self._producer: Any = None
        self._replace_producer = False
        self._inflight: dict[asyncio.Future[Any], tuple[_Lane, _Batch]] = {}
        self._order = 0
        self._delivered: dict[str, int] = {}  # instrument key → order of its last delivered record
        self.last_delivery = time.monotonic()

    # -- frames in ----------------------------------------------------------------------
    def put(self, frame: RawFrame) -> None:
        """Queue one frame (never blocks); past the budget it is dropped, counted, and its book resyncs."""
        line = encode_frame(frame)
        size = len(line) + 1
        venue = frame.venue
        if frame.key in self.lost_keys:
            self.dropped[venue] += 1  # its book resyncs after the gap frame: nothing of it goes before
            return
        if self.pending_bytes + size > self.budget:
            self.kafka_ok = False  # not keeping up: unreachable, or too slow for the feed
            self.dropped[venue] += 1
            if frame.key.partition(":")[2]:
                self.lost_keys.add(frame.key)
            self._warn(f"ingest buffer full ({self.pending_bytes / 2**20:.1f} of {self.budget / 2**20:.1f} MiB): "
                       f"dropping frames, {sum(self.dropped.values())} so far; Kafka at "
                       f"{self.settings.kafka_bootstrap} is {'slow' if self.kafka_ok else 'unreachable'}")
            return
        self._add(frame.key, venue, line, size)

    async def put_wait(self, frame: RawFrame) -> None:
        """Queue one frame, waiting for room in the budget (replay: nothing is dropped)."""
        line = encode_frame(frame)
        size = len(line) + 1
        while self.pending_bytes + size > self.budget and self.pending_bytes > 0:
            self._room.clear()
            await self._room.wait()
        self._add(frame.key, frame.venue, line, size)

    def _lane(self, key: str, venue: str) -> _Lane:
        topic = self.settings.topic(f"raw.{venue}")
        partition = partition_for(key, self.settings.partitions)
        lane = self.lanes.get((topic, partition))
        if lane is None:
            lane = self.lanes[(topic, partition)] = _Lane(topic, partition)
        return lane

    def _add(self, key: str, venue: str, line: bytes, size: int) -> None:
        lane = self._lane(key, venue)
        batch = lane.open
        if batch is None:
            batch = lane.open = _Batch(began=time.monotonic())
        batch.lines.append(line)
        batch.keys.append(key)
        batch.venues.append(venue)
        batch.size += size
        self.pending_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.pending_bytes)
        if len(batch.lines) >= self.max_frames or batch.size >= self.max_bytes:
            lane.ready.append(batch)
            lane.open = None
        self._idle.clear()
        self._wake.set()

    def _warn(self, message: str) -> None:
        if self._log.allow("sink")[0]:
            log.error(message)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="raw-sink")

    async def flush(self, within_s: float | None = None) -> bool:
        """Wait until every queued frame is delivered (or given up); False if ``within_s`` passed first."""
        try:
            await asyncio.wait_for(self._wait_idle(), timeout=within_s)
        except TimeoutError:
            return False
        return True

    async def _wait_idle(self) -> None:
        while self.pending_bytes > 0:
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()

    async def stop(self, flush_timeout: float = 10.0) -> None:
        if self.pending_bytes and self.kafka_ok:
            await self.flush(within_s=flush_timeout)
        for task in (self._task, self._stall_task):
            if task is not None:
                task.cancel()
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
            # harmless: the book agent recognises it by the venue's sequence. No linger: the
            # lanes batch naturally (see the module docstring).
            prod = make_producer(self.settings, request_timeout_ms=15_000, enable_idempotence=False, linger_ms=0,
                                 max_batch_size=max(2 * self.max_bytes, 256 * 1024))
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

    # -- sending ------------------------------------------------------------------------
    async def _run(self) -> None:
        self._producer = await self._connect()
        self.kafka_ok = True
        self._stall_task = asyncio.get_running_loop().create_task(self._stall_watch(), name="raw-sink-stall")
        while True:
            if self._replace_producer:
                await self._new_producer()
            if self.kafka_ok and self.lost_keys:
                self._announce_losses()
            next_due = await self._send_due()
            if self.pending_bytes == 0:
                self._idle.set()
            self._wake.clear()
            if next_due is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(next_due - time.monotonic(), 0.0005))

    async def _send_due(self) -> float | None:
        """Send every record that is due; returns when the next gathering one lingers out."""
        now = time.monotonic()
        next_due: float | None = None
        for lane in list(self.lanes.values()):
            if lane.retry and not lane.inflight:
                self._requeue(lane)
            batch = lane.open
            if batch is not None:
                spaced = lane.last_sent + self.linger_s  # a lane sends at most once a linger …
                waited = batch.began + self.linger_s  # … and no frame waits longer than one
                if (not lane.inflight and now >= spaced) or now >= waited:
                    lane.ready.append(batch)
                    lane.open = None
                else:
                    due = min(waited, spaced) if not lane.inflight else waited
                    next_due = due if next_due is None else min(next_due, due)
            if lane.retry:
                continue  # failed records go again first, once nothing of the lane is in flight
            while lane.ready:
                if not await self._send(lane, lane.ready[0]):
                    break
                lane.ready.popleft()
        return next_due

    async def _send(self, lane: _Lane, batch: _Batch) -> bool:
        self._order += 1
        batch.order = self._order
        try:
            fut = await self._producer.send(lane.topic, encode_record(batch.lines), key=record_key(batch.keys),
                                            partition=lane.partition, headers=V2_HEADERS)
        except KafkaError as exc:
            lane.ready.popleft()
            self._failed(lane, batch, exc)
            return False
        lane.inflight += 1
        lane.last_sent = time.monotonic()
        self._inflight[fut] = (lane, batch)
        fut.add_done_callback(self._done)
        return True

    async def _stall_watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._inflight and time.monotonic() - self.last_delivery > self.stall_s:
                log.error("raw sink: nothing delivered for %.0fs with %d records in flight; abandoning them "
                          "(their books will resync) and starting a new producer", self.stall_s, len(self._inflight))
                for fut in list(self._inflight):
                    fut.cancel()  # _done counts each as lost
                self.last_delivery = time.monotonic()
                self._replace_producer = True
                self._wake.set()

    def _done(self, fut: asyncio.Future[Any]) -> None:
        entry = self._inflight.pop(fut, None)
        if entry is None:
            return  # already accounted for
        lane, batch = entry
        lane.inflight -= 1
        self._wake.set()
        if fut.cancelled() or fut.exception() is not None:
            self._failed(lane, batch, fut.exception() if not fut.cancelled() else None)
            return
        self.last_delivery = time.monotonic()
        self._release(batch)
        self.sent += len(batch.lines)
        self.records += 1
        for key in batch.keys:
            if batch.order > self._delivered.get(key, 0):
                self._delivered[key] = batch.order
        if not self.kafka_ok:
            log.warning("Kafka accepts records again; %d instruments lost frames and will resync", len(self.lost_keys))
        self.kafka_ok = True

    def _release(self, batch: _Batch) -> None:
        self.pending_bytes -= batch.size
        self._room.set()
        if self.pending_bytes == 0:
            self._idle.set()

    async def _new_producer(self) -> None:
        """After a non-retriable error start a fresh producer."""
        self._replace_producer = False
        old, self._producer = self._producer, None
        log.warning("raw sink: replacing the Kafka producer after a non-retriable error")
        asyncio.get_running_loop().create_task(_close_quietly(old))
        self._producer = await self._connect()

    def _failed(self, lane: _Lane, batch: _Batch, exc: BaseException | None) -> None:
        """A delivery failed: send it again later if the failure can pass (it stays in the
        budget meanwhile), otherwise count its frames lost."""
        passing = exc is None or (isinstance(exc, KafkaError) and exc.retriable)
        self.kafka_ok = False
        if not passing:
            self._release(batch)
            for venue in batch.venues:
                self.failed[venue] += 1
            if isinstance(exc, KafkaError):
                self._replace_producer = True
            self.lost_keys.update(k for k in batch.keys if k.partition(":")[2])
            self._warn(f"delivery to Kafka failed ({exc}); {sum(self.failed.values())} frames lost so far")
            return
        lane.retry.append(batch)
        self._warn(f"delivery to Kafka failed ({exc or 'no answer'}); "
                   f"{sum(len(ln.retry) for ln in self.lanes.values())} records kept to send again")
        self._wake.set()

    def _requeue(self, lane: _Lane) -> None:
        """Nothing of the lane is in flight: its failed records go first again, in order.

        A failed frame of an instrument whose later frame already landed would now arrive out
        of order: that instrument is treated as having lost frames (gap frame, resync)."""
        lane.retry.sort(key=lambda b: b.order)
        for batch in lane.retry:
            for key in batch.keys:
                if self._delivered.get(key, 0) > batch.order and key.partition(":")[2]:
                    self.lost_keys.add(key)
        lane.ready.extendleft(reversed(lane.retry))
        self.retried += len(lane.retry)
        lane.retry.clear()

    def _announce_losses(self) -> None:
        """Each instrument that lost frames gets a gap frame, ahead of anything still queued in
        its lane; from then on its frames are sent again (its book resyncs)."""
        keys, self.lost_keys = self.lost_keys, set()
        now = time.time_ns()
        for key in sorted(keys):
            frame = RawFrame(key, now, Kind.CONN, "ingest",
                             conn_event("gap", "frames lost by ingestion while Kafka was unavailable"))
            line = encode_frame(frame)
            batch = _Batch([line], [key], [frame.venue], len(line) + 1, time.monotonic())
            self.pending_bytes += batch.size
            self._lane(key, frame.venue).ready.appendleft(batch)
            if self.on_lost is not None:
                self.on_lost(key)

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "records": self.records, "dropped": dict(self.dropped),
                "failed": dict(self.failed), "pending_bytes": self.pending_bytes, "peak_bytes": self.peak_bytes,
                "budget_bytes": self.budget, "kafka_ok": self.kafka_ok, "retried": self.retried,
                "waiting_retry": sum(len(lane.retry) for lane in self.lanes.values())}
