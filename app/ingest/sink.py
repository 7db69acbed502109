"""Raw frames to Kafka: batched into version-2 raw records, within a bounded memory budget.

Batching is natural (README "Raw record format"): frames go to one lane per raw topic partition
of the shared batching producer (``app.lanes``: an idle lane sends a frame at once, alone; under
load a lane has one record in flight and sends its next at most once per ``RAW_BATCH_LINGER_MS``).
Here a lane's batch is one raw record: closed as soon as it holds ``RAW_BATCH_MAX_FRAMES`` frames
or ``RAW_BATCH_MAX_BYTES`` bytes. A worker then gets one Faust event for many frames, whether they
are one deep instrument's or a thousand light ones' of the same partition. Order, retries and the
producer's replacement after a producer-state error are the lanes' (nothing wedges, nothing is
lost; a record that reached Kafka before its acknowledgement was lost may appear twice, and the
book agent recognises the repeat by the venue's sequence). A record Kafka refuses for good (too
large, not authorised, invalid topic …) is not sent again: it is counted per error (``refused``)
and logged, and its frames count as lost.

``put`` never blocks the WebSocket readers (replay uses ``put_wait``, which waits for room
instead). Queued plus in-flight bytes never exceed ``INGEST_BUFFER_MB``: past that, new frames
are dropped and counted. An instrument that lost a frame (dropped here, or refused by Kafka)
cannot be trusted any more: once Kafka accepts records again it gets a ``conn`` gap frame and a
resync, so its book goes stale and recovers instead of being silently wrong.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from app import metrics
from app.audit import ChainWriter, writer_name
from app.config import Settings
from app.lanes import Batch, Lane, LaneProducer
from app.venues.base import Kind
from app.wire import V2_HEADERS, RawFrame, conn_event, encode_frame, encode_record, partition_for, record_key

log = logging.getLogger(__name__)

#: A record that failed with a new producer this many times in a row is refused for good.
MAX_RESENDS = 8


class RawBatch(Batch):
    """Frames of one lane that travel as one raw record."""

    __slots__ = ("chain", "gap", "keys", "lines", "sealed", "venues")

    def __init__(self, began: float, chain: ChainWriter, gap: bool = False) -> None:
        super().__init__(began)
        self.count = 1  # one Kafka record
        self.lines: list[bytes] = []
        self.keys: list[str] = []
        self.venues: list[str] = []
        self.gap = gap  # a gap frame of ingestion's own
        self.chain = chain
        # Value, headers and the chain state before it, fixed when first sent (in the partition's
        # order: one record in flight per lane) and kept for every retry.
        self.sealed: tuple[bytes, list[tuple[str, bytes]], tuple[int, bytes]] | None = None

    def build(self, producer: Any, lane: Lane) -> tuple[Any, Batch | None]:
        if self.sealed is None:
            value = encode_record(self.lines)
            headers, before = self.chain.headers(lane.topic, lane.partition, value)
            self.sealed = (value, [*V2_HEADERS, *headers], before)
        value, headers, _ = self.sealed
        built = producer.create_batch(len(value))
        built.append(key=record_key(self.keys), value=value, timestamp=None, headers=headers)
        return built, None


class RawSink(LaneProducer):
    name = "raw sink"
    stage = "raw"
    metric_retried = "raw_sink_resent"
    metric_restarts = "raw_sink_producer_restarts"
    undelivered_note = "; their frames are lost (their books resync from a snapshot)"

    def __init__(self, settings: Settings, budget_bytes: int, on_lost: Callable[[str], None] | None = None,
                 role: str = "ingest") -> None:
        """``role`` names the writer of the raw records' hash chain (app.audit): ingest, replay, record …"""
        self.max_frames = settings.raw_batch_max_frames
        self.max_bytes = settings.raw_batch_max_bytes
        super().__init__(settings, budget=budget_bytes, linger_s=settings.raw_batch_linger_ms / 1000,
                         batch_bytes=max(2 * self.max_bytes, 256 * 1024), request_timeout_ms=15_000,
                         max_resends=MAX_RESENDS)
        self.on_lost = on_lost  # called with an instrument key once Kafka is back, to resync it
        self.sent = 0  # frames delivered
        self.records = 0  # raw records delivered
        self.dropped: collections.Counter[str] = collections.Counter()  # frames, per venue
        self.failed: collections.Counter[str] = collections.Counter()  # frames refused by Kafka, per venue
        self.refused: collections.Counter[str] = collections.Counter()  # records refused for good, per error
        self.lost_keys: set[str] = set()
        self.chain = ChainWriter(writer_name(role), strip_prefix=settings.topic_prefix)

    # -- frames in ----------------------------------------------------------------------
    def put(self, frame: RawFrame) -> None:
        """Queue one frame (never blocks); past the budget it is dropped, counted, and its book resyncs."""
        metrics.observe_stage("ingest", (time.time_ns() - frame.ts) / 1e9)  # live: received a moment ago
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
            self._progress.clear()
            await self._progress.wait()
        self._add(frame.key, frame.venue, line, size)

    def _raw_lane(self, key: str, venue: str) -> Lane:
        return self.lane(self.settings.topic(f"raw.{venue}"), partition_for(key, self.settings.partitions))

    def _add(self, key: str, venue: str, line: bytes, size: int) -> None:
        lane = self._raw_lane(key, venue)
        batch = lane.open
        new = batch is None
        if batch is None:
            batch = lane.open = RawBatch(time.monotonic(), self.chain)
        assert isinstance(batch, RawBatch)
        batch.lines.append(line)
        batch.keys.append(key)
        batch.venues.append(venue)
        batch.size += size
        if len(batch.lines) >= self.max_frames or batch.size >= self.max_bytes:
            lane.ready.append(batch)
            lane.open = None
        self._added(lane, size, 1 if new else 0)

    # -- outcomes -----------------------------------------------------------------------
    def _delivered(self, lane: Lane, batch: Batch) -> None:
        assert isinstance(batch, RawBatch)
        self.sent += len(batch.lines)
        self.records += 1

    def _given_up(self, lane: Lane, batch: Batch, exc: BaseException) -> None:
        """Kafka refused a record for good: its frames are lost (their books resync), never retried."""
        assert isinstance(batch, RawBatch)
        if batch.sealed is not None:  # it never reached Kafka: the next record takes its chain sequence number
            self.chain.undo(lane.topic, lane.partition, batch.sealed[2])
        name = type(exc).__name__
        for venue in batch.venues:
            self.failed[venue] += 1
        self.refused[name] += 1
        metrics.count(f"raw_sink_refused.{name}")
        if not batch.gap:  # a refused gap frame is not announced again (no loop of refused gap frames)
            self.lost_keys.update(k for k in batch.keys if k.partition(":")[2])
        self._warn(f"Kafka refused a record of {len(batch.lines)} frames ({batch.size:,} bytes) for "
                   f"{lane.topic}[{lane.partition}] for good ({name}: {exc}); its frames are lost and their books "
                   f"resync. Refused so far: {dict(self.refused)}, {sum(self.failed.values())} frames",
                   reason=f"refused.{name}")

    def _round(self) -> None:
        if self.kafka_ok and self.lost_keys:
            self._announce_losses()

    def _announce_losses(self) -> None:
        """Each instrument that lost frames gets a gap frame, ahead of anything still queued in
        its lane; from then on its frames are sent again (its book resyncs)."""
        keys, self.lost_keys = self.lost_keys, set()
        now = time.time_ns()
        log.warning("raw sink: %d instruments lost frames and will resync", len(keys))
        for key in sorted(keys):
            frame = RawFrame(key, now, Kind.CONN, "ingest",
                             conn_event("gap", "frames lost by ingestion while Kafka was unavailable"))
            line = encode_frame(frame)
            batch = RawBatch(time.monotonic(), self.chain, gap=True)
            batch.lines.append(line)
            batch.keys.append(key)
            batch.venues.append(frame.venue)
            batch.size = len(line) + 1
            lane = self._raw_lane(key, frame.venue)
            # ahead of everything queued, but behind records already sent once (their chain
            # sequence numbers are taken: they go first, in order)
            at = 0
            while at < len(lane.ready) and lane.ready[at].sealed is not None:  # type: ignore[attr-defined]
                at += 1
            lane.ready.insert(at, batch)
            self._added(lane, batch.size, 1)
            if self.on_lost is not None:
                self.on_lost(key)

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "records": self.records, "dropped": dict(self.dropped),
                "failed": dict(self.failed), "refused": dict(self.refused), "pending_bytes": self.pending_bytes,
                "peak_bytes": self.peak_bytes, "budget_bytes": self.budget, "kafka_ok": self.kafka_ok,
                "retried": self.retried, "producer_restarts": self.producer_restarts, "idempotent": self.idempotent,
                "waiting_retry": sum(len(lane.ready) for lane in self.lanes.values())}
