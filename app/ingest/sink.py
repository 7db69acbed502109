"""Raw frames to Kafka: batched into version-2 raw records, within a bounded memory budget.

Batching is natural (README "Raw record format"): frames go to one lane per raw topic
partition. An idle lane — nothing in flight, nothing sent in the last ``RAW_BATCH_LINGER_MS`` —
sends a frame at once, alone: no added latency when the load is light. Under load frames
gather: a lane has at most one record in flight, and sends its next one once the previous one
is acknowledged and a linger has passed since it went out, so it sends at most one record per
linger; a record is closed as soon as it holds ``RAW_BATCH_MAX_FRAMES`` frames or
``RAW_BATCH_MAX_BYTES`` bytes. A worker then gets one Faust event for many frames, whether
they are one deep instrument's or a thousand light ones' of the same partition. One record in
flight per lane keeps each partition's order whatever happens to the producer: a record that
must go again is always its lane's oldest.

The producer is idempotent with ``acks=all`` whenever the broker allows it (it falls back to a
plain ``acks=all`` producer, saying so once, when idempotence is refused). aiokafka's
idempotent producer retries a record until it is delivered, but it has no way back from a
producer-state error (``OutOfOrderSequenceNumber``, ``UnknownProducerId``, a fenced epoch —
aio-libs/aiokafka#1017), and any delivery it does fail leaves a hole in the partition's
sequence numbers that fails everything after it. So after any failed delivery the sink lets
what is in flight settle, closes that producer, starts a new one and sends again, in each
lane's order, every record not acknowledged: nothing wedges and nothing is lost (a record that
reached Kafka before its acknowledgement was lost may appear twice; the book agent recognises
the repeat by the venue's sequence). A record Kafka refuses for good (too large, not
authorised, invalid topic …) is not sent again: it is counted per error (``refused``) and
logged, and its frames count as lost.

``put`` never blocks the WebSocket readers (replay uses ``put_wait``, which waits for room
instead). Queued plus in-flight bytes never exceed ``INGEST_BUFFER_MB``: past that, new frames
are dropped and counted. An instrument that lost a frame (dropped here, or refused by Kafka)
cannot be trusted any more: once Kafka accepts records again it gets a ``conn`` gap frame and a
resync, so its book goes stale and recovers instead of being silently wrong.
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

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    IncompatibleBrokerVersion,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
    UnsupportedVersionError,
)

from app import metrics
from app.config import Settings
from app.kafka import close_hard, producer_dead
from app.kafka import producer as make_producer
from app.publishing import LogLimiter
from app.retry import Backoff
from app.venues.base import Kind
from app.wire import V2_HEADERS, RawFrame, conn_event, encode_frame, encode_record, partition_for, record_key

log = logging.getLogger(__name__)

#: Errors after which a producer cannot go on: a new producer (a new producer id) sends the record again.
PRODUCER_STATE_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced, InvalidProducerIdMapping,
    InvalidTxnState, ProducerClosed,
)
#: Errors starting an idempotent producer that mean the cluster does not allow idempotence.
NO_IDEMPOTENCE_ERRORS: tuple[type[BaseException], ...] = (
    ClusterAuthorizationFailedError, UnsupportedVersionError, IncompatibleBrokerVersion,
)
#: A record failed by producer-state errors this many times in a row is refused for good.
MAX_RESENDS = 8


@dataclass(slots=True)
class _Batch:
    """Frames of one lane that travel as one raw record."""

    lines: list[bytes] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    venues: list[str] = field(default_factory=list)
    size: int = 0
    began: float = 0.0  # monotonic time of its first frame
    resends: int = 0  # producer-state failures in a row
    gap: bool = False  # a gap frame of ingestion's own


@dataclass(slots=True)
class _Lane:
    """One raw topic partition: a gathering batch, closed ones waiting, and the one in flight."""

    topic: str
    partition: int
    open: _Batch | None = None
    ready: collections.deque[_Batch] = field(default_factory=collections.deque)
    inflight: int = 0  # 0 or 1
    last_sent: float = 0.0  # monotonic time of its last record
    hold_until: float = 0.0  # after a failed send: not before this (monotonic)


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
        self.failed: collections.Counter[str] = collections.Counter()  # frames refused by Kafka, per venue
        self.refused: collections.Counter[str] = collections.Counter()  # records refused for good, per error
        self.lost_keys: set[str] = set()
        self.kafka_ok = False
        self.retried = 0  # records sent again
        self.producer_restarts = 0
        self.idempotent = True  # until the cluster refuses it
        self.unavailable_s = 15.0  # nothing delivered this long with a record in flight: Kafka UNAVAILABLE
        self.stall_s = 30.0  # … and this long: abandon the producer, send its records again with a new one
        self.settle_s = 5.0  # before replacing a producer, wait this long for its other records' outcome
        self.send_timeout_s = 20.0  # producer.send() (queueing a record, after metadata) taking longer: failed
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._settled = asyncio.Event()
        self._log = LogLimiter()
        self._task: asyncio.Task[None] | None = None
        self._stall_task: asyncio.Task[None] | None = None
        self._producer: Any = None
        self._replace: str | None = None  # why the producer must be replaced
        self._last_replace = 0.0
        self._inflight: dict[asyncio.Future[Any], tuple[_Lane, _Batch, Any]] = {}
        self.last_delivery = time.monotonic()
        self._stalled_since = self.last_delivery

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

    def _warn(self, message: str, reason: str = "sink", level: int = logging.ERROR) -> None:
        if self._log.allow(reason)[0]:
            log.log(level, message)

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

    def _make_producer(self) -> Any:
        # No linger: the lanes batch naturally (see the module docstring).
        return make_producer(self.settings, request_timeout_ms=15_000, enable_idempotence=self.idempotent,
                             acks="all", linger_ms=0, max_batch_size=max(2 * self.max_bytes, 256 * 1024))

    async def _connect(self) -> Any:
        retry = Backoff(cap=5.0)
        began = time.monotonic()
        said = 0.0  # when the last "no producer" line was logged (once, then once a minute)
        while True:
            prod = self._make_producer()
            try:
                await asyncio.wait_for(prod.start(), timeout=15)
                log.info("raw sink connected to Kafka at %s (%s)", self.settings.kafka_bootstrap,
                         "idempotent, acks=all" if self.idempotent else "acks=all, not idempotent")
                return prod
            except NO_IDEMPOTENCE_ERRORS as exc:
                await close_hard(prod)
                if not self.idempotent:
                    raise
                self.idempotent = False
                log.warning("raw sink: Kafka at %s does not allow an idempotent producer (%s: %s); using a "
                            "non-idempotent acks=all producer", self.settings.kafka_bootstrap,
                            type(exc).__name__, exc)
            except (KafkaError, OSError, TimeoutError) as exc:
                await close_hard(prod)
                self.kafka_ok = False
                now = time.monotonic()
                if not said or now - said >= 60:  # the broker's own line says when it is back
                    said = now
                    log.warning("raw sink: no producer for %.0fs, Kafka at %s unreachable (%s); buffering up to "
                                "%.1f MiB, retrying", now - began, self.settings.kafka_bootstrap,
                                str(exc) or type(exc).__name__, self.budget / 2**20)
                await retry.sleep()

    # -- sending ------------------------------------------------------------------------
    async def _run(self) -> None:
        self._producer = await self._connect()
        self.kafka_ok = True
        self._stall_task = asyncio.get_running_loop().create_task(self._stall_watch(), name="raw-sink-stall")
        while True:
            self._wake.clear()  # before sending: an acknowledgement while we send wakes the next round
            if self._replace is not None:
                await self._new_producer()
            if self.kafka_ok and self.lost_keys:
                self._announce_losses()
            next_due = await self._send_due()
            if self.pending_bytes == 0:
                self._idle.set()
            if self._replace is not None:
                continue
            if next_due is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(next_due - time.monotonic(), 0.0005))

    async def _send_due(self) -> float | None:
        """Send the next record of every lane with nothing in flight; returns when the next
        gathering one lingers out."""
        now = time.monotonic()
        next_due: float | None = None
        for lane in list(self.lanes.values()):
            if lane.inflight:
                continue  # one record in flight per lane: its outcome wakes the loop
            if lane.hold_until > now:
                next_due = lane.hold_until if next_due is None else min(next_due, lane.hold_until)
                continue
            batch = lane.open
            if batch is not None and not lane.ready:
                spaced = lane.last_sent + self.linger_s  # a lane sends at most once a linger …
                waited = batch.began + self.linger_s  # … and no frame waits longer than one
                if now >= spaced or now >= waited:
                    lane.ready.append(batch)
                    lane.open = None
                else:
                    due = min(waited, spaced)
                    next_due = due if next_due is None else min(next_due, due)
            if lane.ready and self._replace is None:
                await self._send(lane)
        return next_due

    async def _send(self, lane: _Lane) -> None:
        batch = lane.ready.popleft()
        producer = self._producer
        if producer_dead(producer):  # stopped or its sender died: it would never deliver (nor always say so)
            lane.ready.appendleft(batch)
            self._request_replace("the producer stopped")
            return
        try:
            # Bounded: send() waits for metadata, which a producer closed underneath never gets.
            fut = await asyncio.wait_for(
                producer.send(lane.topic, encode_record(batch.lines), key=record_key(batch.keys),
                              partition=lane.partition, headers=V2_HEADERS), timeout=self.send_timeout_s)
        except (KafkaError, TimeoutError, AssertionError) as exc:
            # Not queued in the producer: no sequence number was taken, so the same producer may
            # send it again, unless the producer itself is dead. (aiokafka asserts that the
            # partition exists: a topic with fewer partitions than TOPIC_PARTITIONS is refused.)
            self._failed(lane, batch, exc, producer_broken=producer_dead(producer))
            return
        lane.inflight += 1
        lane.last_sent = time.monotonic()
        self._inflight[fut] = (lane, batch, producer)
        self._settled.clear()
        fut.add_done_callback(self._done)

    async def _stall_watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self._inflight:
                self._stalled_since = time.monotonic()
                continue
            if self._producer is not None and producer_dead(self._producer) and self._replace is None:
                self._request_replace("the producer stopped")  # what it holds is never delivered
                continue
            quiet = time.monotonic() - max(self.last_delivery, self._stalled_since)
            if quiet > self.unavailable_s:
                self.kafka_ok = False  # the producer keeps retrying: Kafka is not answering
            if quiet > self.stall_s and self._replace is None:
                self._stalled_since = time.monotonic()
                self._request_replace(f"nothing delivered for {self.stall_s:.0f}s with {len(self._inflight)} "
                                      "records in flight")

    def _done(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved, also for an abandoned record (no "never retrieved" noise)
        entry = self._inflight.pop(fut, None)
        if entry is None:
            return  # abandoned: already sent again
        lane, batch, producer = entry
        lane.inflight -= 1
        if not self._inflight:
            self._settled.set()
        self._wake.set()
        if fut.cancelled() or fut.exception() is not None:
            exc = None if fut.cancelled() else fut.exception()
            # An idempotent producer took a sequence number for it: after any failure the
            # partition's sequence has a hole that fails all later records. Replace it.
            self._failed(lane, batch, exc, producer_broken=self.idempotent and producer is self._producer)
            return
        batch.resends = 0
        self.last_delivery = time.monotonic()
        self._release(batch)
        self.sent += len(batch.lines)
        self.records += 1
        if not self.kafka_ok:
            log.warning("Kafka accepts records again; %d instruments lost frames and will resync", len(self.lost_keys))
        self.kafka_ok = True

    def _release(self, batch: _Batch) -> None:
        self.pending_bytes -= batch.size
        self._room.set()
        if self.pending_bytes == 0:
            self._idle.set()

    def _request_replace(self, reason: str) -> None:
        if self._replace is None:
            self._replace = reason
        self._wake.set()

    async def _new_producer(self) -> None:
        """Let what is in flight settle, then close the producer and start a new one; every
        record not acknowledged goes again first, in its lane's order."""
        reason = self._replace
        if self._inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), timeout=self.settle_s)
        self._replace = None  # failures of the old producer meanwhile are covered by this replacement
        abandoned = list(self._inflight.items())
        self._inflight.clear()
        self._settled.set()
        for _, (lane, batch, _producer) in abandoned:
            lane.inflight -= 1
            lane.ready.appendleft(batch)  # the lane's only record in flight: its oldest
            self.retried += 1
            metrics.count("raw_sink_resent")
        old, self._producer = self._producer, None
        self.producer_restarts += 1
        metrics.count("raw_sink_producer_restarts")
        waiting = sum(len(lane.ready) + (lane.open is not None) for lane in self.lanes.values())
        log.warning("raw sink: starting a new Kafka producer (%s); %d records waiting are sent again in order",
                    reason, waiting)
        await close_hard(old)
        pause = self._last_replace + 1.0 - time.monotonic()  # never a tight loop of new producers
        if pause > 0:
            await asyncio.sleep(pause)
        self._last_replace = time.monotonic()
        self._producer = await self._connect()

    def _failed(self, lane: _Lane, batch: _Batch, exc: BaseException | None, producer_broken: bool) -> None:
        """A delivery failed: send it again, first in its lane, if it can succeed (it stays in the
        budget meanwhile); count its frames lost if Kafka refuses it for good."""
        state = isinstance(exc, PRODUCER_STATE_ERRORS)
        passing = exc is None or state or isinstance(exc, (OSError, TimeoutError, KafkaTimeoutError)) or (
            isinstance(exc, KafkaError) and exc.retriable)
        if state:
            batch.resends += 1
        if producer_broken or state:
            self._request_replace(f"{type(exc).__name__ if exc else 'abandoned'}: {exc or 'no answer'}")
        if not passing or batch.resends > MAX_RESENDS:
            self._refuse(lane, batch, exc)
            return
        if not state:  # a producer-state error comes from a broker that answers
            self.kafka_ok = False
        lane.ready.appendleft(batch)
        lane.hold_until = time.monotonic() + 0.2  # a failure that repeats at once is no tight loop
        self.retried += 1
        metrics.count("raw_sink_resent")
        self._warn(f"delivery to Kafka failed ({type(exc).__name__ if exc else 'abandoned'}: {exc or 'no answer'}); "
                   f"{sum(len(ln.ready) for ln in self.lanes.values())} records kept to send again",
                   level=logging.WARNING if state or producer_broken else logging.ERROR)
        self._wake.set()

    def _refuse(self, lane: _Lane, batch: _Batch, exc: BaseException | None) -> None:
        """Kafka refused a record for good: its frames are lost (their books resync), never retried."""
        name = type(exc).__name__ if exc is not None else "Abandoned"
        self._release(batch)
        for venue in batch.venues:
            self.failed[venue] += 1
        self.refused[name] += 1
        metrics.count(f"raw_sink_refused.{name}")
        if not batch.gap:  # a refused gap frame is not announced again (no loop of refused gap frames)
            self.lost_keys.update(k for k in batch.keys if k.partition(":")[2])
        self._warn(f"raw sink: Kafka refused a record of {len(batch.lines)} frames ({batch.size:,} bytes) for "
                   f"{lane.topic}[{lane.partition}] for good ({name}: {exc}); its frames are lost and their books "
                   f"resync. Refused so far: {dict(self.refused)}, {sum(self.failed.values())} frames",
                   reason=f"refused.{name}")
        self._wake.set()

    def _announce_losses(self) -> None:
        """Each instrument that lost frames gets a gap frame, ahead of anything still queued in
        its lane; from then on its frames are sent again (its book resyncs)."""
        keys, self.lost_keys = self.lost_keys, set()
        now = time.time_ns()
        for key in sorted(keys):
            frame = RawFrame(key, now, Kind.CONN, "ingest",
                             conn_event("gap", "frames lost by ingestion while Kafka was unavailable"))
            line = encode_frame(frame)
            batch = _Batch([line], [key], [frame.venue], len(line) + 1, time.monotonic(), gap=True)
            self.pending_bytes += batch.size
            self._lane(key, frame.venue).ready.appendleft(batch)
            if self.on_lost is not None:
                self.on_lost(key)

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "records": self.records, "dropped": dict(self.dropped),
                "failed": dict(self.failed), "refused": dict(self.refused), "pending_bytes": self.pending_bytes,
                "peak_bytes": self.peak_bytes, "budget_bytes": self.budget, "kafka_ok": self.kafka_ok,
                "retried": self.retried, "producer_restarts": self.producer_restarts, "idempotent": self.idempotent,
                "waiting_retry": sum(len(lane.ready) for lane in self.lanes.values())}
