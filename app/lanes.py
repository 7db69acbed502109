"""One batching producer for both ways bookstream writes to Kafka: raw frames (``app.ingest.sink``)
and downstream records (``app.outputs``).

Records go in **lanes**, one per topic partition. A lane gathers records into a batch and has at
most one batch in flight; the next goes once the previous one is acknowledged. Batching is
natural: a lane with nothing in flight that sent nothing in the last linger sends its first
record at once, alone (no added latency when the load is light); under load records gather, a
lane sends at most one batch per linger, and no record waits longer than one linger after the
lane could send. A full batch goes without lingering, and so does everything a commit waits for
(:meth:`LaneProducer.delivered`).

**Nothing lost, order kept.** The producer is idempotent with ``acks=all`` whenever the cluster
allows it (otherwise a plain ``acks=all`` producer, said once). A lane's only batch in flight is
always its oldest, so a batch that must go again goes first and the partition's order holds
whatever happens to the producer. aiokafka retries an idempotent batch, but it has no way back
from a producer-state error (``OutOfOrderSequenceNumber``, ``UnknownProducerId``, a fenced
epoch: no KIP-360 epoch bump, aio-libs/aiokafka#1017), and a batch it does fail (an expired one
of a partition without a leader, a non-retriable error) may leave a hole in the partition's
sequence numbers that fails everything after it. So after any failed delivery the producer lets
what is in flight settle (``settle_s``), is closed without flushing, and a new one (a new
producer id) sends, in each lane's order, every batch not acknowledged. The same happens when
the producer's sender dies, and when nothing is delivered for ``stall_s`` with batches in flight.
A batch that reached the broker before its acknowledgement was lost may appear twice: readers
recognise the repeat (README "Delivery guarantees").

Only a batch that no retry can deliver (too large for the topic, not authorised, an invalid or
too small topic …: ``UNDELIVERABLE``), or one that failed with a new producer ``max_resends``
times in a row, is given up; the subclass says what that means for its records.

**Bounded memory.** ``pending_bytes`` counts what is gathering, waiting and in flight; the
subclass decides what happens past its budget (the output sink holds back whoever adds records,
the raw sink drops frames and resyncs their books).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import errors as Errors
from aiokafka.errors import KafkaError

from app import metrics
from app.config import Settings
from app.kafka import close_hard, producer_dead
from app.kafka import producer as make_producer
from app.publishing import LogLimiter
from app.retry import Backoff

log = logging.getLogger(__name__)

#: Errors after which a producer cannot go on: a new producer (a new producer id) sends the batch again.
PRODUCER_STATE_ERRORS: tuple[type[BaseException], ...] = (
    Errors.OutOfOrderSequenceNumber, Errors.UnknownProducerId, Errors.InvalidProducerEpoch, Errors.ProducerFenced,
    Errors.InvalidProducerIdMapping, Errors.InvalidTxnState, Errors.ProducerClosed,
)
#: Errors starting an idempotent producer that mean the cluster does not allow idempotence.
NO_IDEMPOTENCE_ERRORS: tuple[type[BaseException], ...] = (
    Errors.ClusterAuthorizationFailedError, Errors.UnsupportedVersionError, Errors.IncompatibleBrokerVersion,
)
#: Errors that no retry can mend: the batch is given up. (aiokafka asserts that the partition
#: exists: a topic with fewer partitions than TOPIC_PARTITIONS is refused that way.)
UNDELIVERABLE: tuple[type[BaseException], ...] = (
    Errors.MessageSizeTooLargeError, Errors.RecordListTooLargeError, Errors.InvalidTopicError,
    Errors.TopicAuthorizationFailedError, Errors.ClusterAuthorizationFailedError, Errors.CorruptRecordException,
    Errors.UnsupportedVersionError, AssertionError,
)
#: Failures that say Kafka is not answering (rather than answering "no").
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncio.CancelledError, Errors.KafkaTimeoutError, Errors.KafkaConnectionError,
    Errors.RequestTimedOutError, Errors.NodeNotReadyError,
)

#: After a failed delivery a lane waits this long before sending the batch again (a failure
#: that repeats at once is no tight loop).
RETRY_BACKOFF_S = 0.2


class Batch:
    """Records of one lane that travel as one producer batch; kept until acknowledged."""

    __slots__ = ("began", "count", "resends", "sent", "size")

    def __init__(self, began: float) -> None:
        self.began = began  # monotonic time of its first record
        self.sent = 0.0  # monotonic time it was (last) sent
        self.size = 0  # bytes counted against the budget
        self.count = 0  # Kafka records
        self.resends = 0  # failures in a row that needed a new producer

    def build(self, producer: Any, lane: Lane) -> tuple[Any, Batch | None]:
        """An aiokafka batch of these records for ``lane``, and the records that did not fit (sent next).
        Called again for every retry of the batch."""
        raise NotImplementedError


@dataclass(slots=True)
class Lane:
    """One topic partition: the batch gathering, closed ones waiting in order, the one in flight."""

    topic: str
    partition: int
    linger: float  # it sends at most one batch per this many seconds
    open: Batch | None = None
    ready: collections.deque[Batch] = field(default_factory=collections.deque)
    inflight: Batch | None = None
    producer: Any = None  # the producer its batch in flight went to
    last_sent: float = 0.0  # monotonic time of its last batch
    retry_at: float = 0.0  # after a failed delivery: not before this (monotonic)
    added: int = 0  # records ever added
    done: int = 0  # records acknowledged (or given up), in order
    acked_to: int = -1  # offset of the last record the broker acknowledged (-1: none yet)
    flush_to: int = 0  # a commit waits for the records up to here: they go without lingering

    def due(self) -> float | None:
        """When this lane sends its next batch (monotonic), None while it has nothing to send or a
        batch in flight."""
        if self.inflight is not None:
            return None
        if self.ready:
            return self.retry_at
        batch = self.open
        if batch is None:
            return None
        if self.flush_to > self.done:
            return self.retry_at
        return max(min(self.last_sent, batch.began) + self.linger, self.retry_at)


class LaneProducer:
    """The lanes, the sender, the producer's replacement; subclasses add records
    (:meth:`_added`) and say what delivered and given-up batches mean."""

    #: Log line prefix and metric names.
    name = "producer"
    stage = "output"  # app.metrics.STAGES: <stage>_linger, <stage>_broker
    metric_retried = "producer_resent"
    metric_restarts = "producer_restarts"
    #: What happens to records not delivered when it stops (said in the log).
    undelivered_note = ""

    def __init__(self, settings: Settings, *, budget: int, linger_s: float, batch_bytes: int,
                 lingers: dict[str, float] | None = None, client_id: str | None = None,
                 request_timeout_ms: int = 30_000, max_resends: int | None = None) -> None:
        self.settings = settings
        self.budget = budget
        self.linger_s = linger_s
        self.lingers = {topic: max(s, linger_s) for topic, s in (lingers or {}).items()}
        self.batch_bytes = batch_bytes
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.max_resends = max_resends
        self.lanes: dict[tuple[str, int], Lane] = {}
        self.pending_bytes = 0  # gathering + waiting + in flight (+ held, see the output sink)
        self.peak_bytes = 0
        self.retried = 0  # batches sent again
        self.producers = 0  # producers started
        self.producer_restarts = 0
        self.idempotent = True  # until the cluster refuses it
        self.kafka_ok = False  # the last delivery succeeded and nothing has been failing since
        self.unavailable_s = 15.0  # nothing delivered this long with a batch in flight: Kafka unavailable
        self.stall_s = 30.0  # … and this long: abandon the producer, send its batches again with a new one
        self.settle_s = 5.0  # before replacing a producer, wait this long for its other batches' outcome
        self.send_timeout_s = 20.0  # send_batch() (queueing a batch, after metadata) taking longer: failed
        self.last_delivery = time.monotonic()
        self._stalled_since = self.last_delivery
        self._inflight = 0
        self._producer: Any = None
        self._replace: str | None = None  # why the producer must be replaced
        self._last_replace = 0.0
        self._wake = asyncio.Event()
        self._due_at = 0.0  # when the sender looks at the lanes next (0: it is looking now)
        self._progress = asyncio.Event()  # set whenever a batch leaves memory
        self._idle = asyncio.Event()
        self._settled = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = LogLimiter()

    # -- lanes -------------------------------------------------------------------------
    def lane(self, topic: str, partition: int) -> Lane:
        lane = self.lanes.get((topic, partition))
        if lane is None:
            lane = self.lanes[(topic, partition)] = Lane(topic, partition, self.lingers.get(topic, self.linger_s))
        return lane

    def _added(self, lane: Lane, size: int, records: int) -> None:
        """``size`` bytes of ``records`` new records are in ``lane``'s batches: counted, and the
        sender woken if this lane is due before it looks anyway. (A wake for every record, each
        a pass over every lane, cost as much CPU as the books.)"""
        lane.added += records
        self.pending_bytes += size
        if self.pending_bytes > self.peak_bytes:
            self.peak_bytes = self.pending_bytes
        self._idle.clear()
        if lane.inflight is None:
            due = lane.due()
            if due is not None and (self._due_at == 0.0 or due < self._due_at):
                self._wake.set()

    def _release(self, size: int) -> None:
        self.pending_bytes = max(0, self.pending_bytes - size)
        self._progress.set()
        if self.pending_bytes == 0:
            self._idle.set()

    def undelivered(self, topic: str, partition: int) -> bool:
        """Records added for this topic partition that the broker has not acknowledged yet."""
        lane = self.lanes.get((topic, partition))
        return lane is not None and lane.done < lane.added

    def acknowledged_to(self, topic: str, partition: int) -> int:
        """Offset of the last record of this topic partition the broker acknowledged (-1: none)."""
        lane = self.lanes.get((topic, partition))
        return -1 if lane is None else lane.acked_to

    def _warn(self, message: str, reason: str = "sink", level: int = logging.ERROR) -> None:
        if self._log.allow(reason)[0]:
            log.log(level, "%s: %s", self.name, message)

    # -- waiting -----------------------------------------------------------------------
    async def delivered(self) -> None:
        """Until every record added before this call is acknowledged by the broker (or given up).
        The state commits wait here: progress is committed after the outputs of the records it
        covers (flush, then commit — as Kafka Streams does)."""
        marks = [(lane, lane.added) for lane in self.lanes.values() if lane.done < lane.added]
        for lane, mark in marks:
            lane.flush_to = max(lane.flush_to, mark)
        if marks:
            self._wake.set()
        while True:
            marks = [(lane, mark) for lane, mark in marks if lane.done < mark]
            if not marks:
                return
            self._progress.clear()
            await self._progress.wait()

    async def flush(self, within_s: float | None = None) -> bool:
        """Until nothing waits for Kafka (every batch delivered or given up); False if ``within_s``
        passed first."""
        async def idle() -> None:
            while self.pending_bytes > 0:
                self._idle.clear()
                for lane in self.lanes.values():
                    lane.flush_to = lane.added
                self._wake.set()
                await self._idle.wait()

        try:
            await asyncio.wait_for(idle(), timeout=within_s)
        except TimeoutError:
            return False
        return True

    async def connected(self) -> None:
        """Until the first producer has started."""
        await self._connected.wait()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-sender")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Deliver what waits (up to ``grace_s`` while Kafka answers), then stop."""
        if self._producer is not None and (self.kafka_ok or self._inflight):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.delivered(), timeout=grace_s)
        undelivered = sum(lane.added - lane.done for lane in self.lanes.values())
        if undelivered:
            log.warning("%s: stopping with %d records not delivered%s", self.name, undelivered, self.undelivered_note)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), timeout=grace_s)
            except (TimeoutError, KafkaError):
                log.warning("%s: the producer did not stop within %.0fs", self.name, grace_s)
            self._producer = None

    def _make_producer(self) -> Any:
        # No linger of aiokafka's: the lanes batch (see the module docstring).
        extra = {"client_id": self.client_id} if self.client_id else {}
        return make_producer(self.settings, enable_idempotence=self.idempotent, acks="all", linger_ms=0,
                             max_batch_size=self.batch_bytes, request_timeout_ms=self.request_timeout_ms, **extra)

    async def _connect(self) -> Any:
        """A started producer, retrying with backoff while Kafka is unreachable."""
        retry = Backoff(cap=5.0)
        began = time.monotonic()
        said = 0.0  # when the last "no producer" line was logged (once, then once a minute)
        while True:
            prod = self._make_producer()
            try:
                await asyncio.wait_for(prod.start(), timeout=15)
            except NO_IDEMPOTENCE_ERRORS as exc:
                await close_hard(prod)
                if not self.idempotent:
                    raise
                self.idempotent = False
                log.warning("%s: Kafka at %s does not allow an idempotent producer (%s: %s); using a "
                            "non-idempotent acks=all producer", self.name, self.settings.kafka_bootstrap,
                            type(exc).__name__, exc)
                continue
            except (KafkaError, OSError, TimeoutError) as exc:
                await close_hard(prod)
                self.kafka_ok = False
                now = time.monotonic()
                if not said or now - said >= 60:  # the broker's own line says when it is back
                    said = now
                    log.warning("%s: no producer for %.0fs, Kafka at %s unreachable (%s); keeping up to %.1f MiB, "
                                "retrying", self.name, now - began, self.settings.kafka_bootstrap,
                                str(exc) or type(exc).__name__, self.budget / 2**20)
                await retry.sleep()
                continue
            self.producers += 1
            log.info("%s: connected to Kafka at %s (%s)", self.name, self.settings.kafka_bootstrap,
                     "idempotent, acks=all" if self.idempotent else "acks=all, not idempotent")
            return prod

    # -- sending -----------------------------------------------------------------------
    def _round(self) -> None:
        """Called before each pass over the lanes (the raw sink announces lost frames here)."""

    async def _run(self) -> None:
        self._producer = await self._connect()
        self._connected.set()
        self.kafka_ok = True
        while True:
            self._wake.clear()  # before sending: an acknowledgement while we send wakes the next round
            if self._replace is None and producer_dead(self._producer):
                self._replace = "the producer stopped"  # what it holds is never delivered (nor always said)
            if self._replace is not None:
                await self._new_producer()
            self._watch_stall()
            self._round()
            now = time.monotonic()
            next_due: float | None = None
            for lane in list(self.lanes.values()):
                due = lane.due()
                if due is None:
                    continue
                if due > now:
                    next_due = due if next_due is None or due < next_due else next_due
                    continue
                if not lane.ready:
                    lane.ready.append(lane.open)  # type: ignore[arg-type]
                    lane.open = None
                await self._send(lane)
                if self._replace is not None:
                    break
            if self._replace is not None:
                continue
            if self.pending_bytes == 0:
                self._idle.set()
            # at least once a second: a producer whose sender task died wakes nobody
            timeout = 1.0 if next_due is None else min(max(next_due - time.monotonic(), 0.0005), 1.0)
            self._due_at = time.monotonic() + timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._due_at = 0.0

    async def _send(self, lane: Lane) -> None:
        batch = lane.ready.popleft()
        producer = self._producer
        if producer_dead(producer):
            lane.ready.appendleft(batch)
            self._request_replace("the producer stopped")
            return
        built, rest = batch.build(producer, lane)
        if rest is not None:  # larger than estimated: the rest goes as the lane's next batch
            lane.ready.appendleft(rest)
        lane.inflight, lane.producer, lane.last_sent = batch, producer, time.monotonic()
        if not batch.sent:  # its first send: how long it gathered (a retry is not lingering)
            metrics.observe_stage(self.stage + "_linger", lane.last_sent - batch.began)
        batch.sent = lane.last_sent
        try:
            # Bounded: send_batch() waits for metadata, which a producer closed underneath never gets.
            # asyncio.timeout, not wait_for: no task per batch, and no yield to the event loop when the
            # metadata is known — with wait_for every send let the book agent run in between, a pass
            # over the lanes took one loop turn per lane, and under a flood the outputs fell seconds behind.
            async with asyncio.timeout(self.send_timeout_s):
                fut = await producer.send_batch(built, lane.topic, partition=lane.partition)
        except (KafkaError, OSError, TimeoutError, AssertionError) as exc:
            # Not queued in the producer: no sequence number was taken for it.
            lane.inflight = lane.producer = None
            self._failed(lane, batch, exc, producer, accepted=False)
            return
        self._inflight += 1
        self._settled.clear()
        fut.add_done_callback(functools.partial(self._done, lane, batch, producer))

    def _done(self, lane: Lane, batch: Batch, producer: Any, fut: asyncio.Future[Any]) -> None:
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()  # retrieved, also when abandoned
        if lane.inflight is not batch or lane.producer is not producer:
            return  # abandoned with its producer: already sent again
        lane.inflight = lane.producer = None
        self._inflight -= 1
        if self._inflight == 0:
            self._settled.set()
        self._wake.set()
        if exc is not None:
            self._failed(lane, batch, exc, producer, accepted=True)
            return
        batch.resends = 0
        self.last_delivery = time.monotonic()
        metrics.observe_stage(self.stage + "_broker", self.last_delivery - batch.sent)
        if not self.kafka_ok:
            log.warning("%s: Kafka accepts records again", self.name)
            self.kafka_ok = True
        lane.done += batch.count
        meta = fut.result()
        if meta is not None and meta.offset >= 0:  # acks=0 answers no offset
            lane.acked_to = max(lane.acked_to, meta.offset + batch.count - 1)
        self._release(batch.size)
        self._delivered(lane, batch)

    def _delivered(self, lane: Lane, batch: Batch) -> None:
        """A batch was acknowledged (counters)."""

    def _given_up(self, lane: Lane, batch: Batch, exc: BaseException) -> None:
        """A batch that no retry can deliver was given up (what its records' loss means)."""

    def _failed(self, lane: Lane, batch: Batch, exc: BaseException, producer: Any, accepted: bool) -> None:
        """A delivery failed: send the batch again, first in its lane (with a new producer if this one
        may not go on), unless no retry can deliver it."""
        state = isinstance(exc, PRODUCER_STATE_ERRORS)
        unreachable = isinstance(exc, UNREACHABLE)
        # An idempotent producer took a sequence number for a batch it accepted: after its failure the
        # partition's sequence may have a hole that fails every later batch. A new producer, then.
        replace = state or (accepted and self.idempotent) or producer_dead(producer) or not (
            unreachable or getattr(exc, "retriable", False))
        if replace:
            batch.resends += 1
        if isinstance(exc, UNDELIVERABLE) or (self.max_resends is not None and batch.resends > self.max_resends):
            lane.done += batch.count
            self._release(batch.size)
            self._given_up(lane, batch, exc)
            self._wake.set()
            return
        if replace and producer is self._producer:
            self._request_replace(f"{type(exc).__name__}: {exc}")
        if not state:  # a producer-state error comes from a broker that answers
            self.kafka_ok = False
        lane.ready.appendleft(batch)
        lane.retry_at = time.monotonic() + RETRY_BACKOFF_S
        self.retried += 1
        metrics.count(self.metric_retried)
        self._warn(f"delivery to {lane.topic}[{lane.partition}] failed ({type(exc).__name__}: {exc}); sending it "
                   f"again{' with a new producer' if replace else ''}; "
                   f"{sum(len(ln.ready) for ln in self.lanes.values())} batches waiting",
                   reason="retry", level=logging.WARNING if state or replace else logging.ERROR)
        self._wake.set()

    def _request_replace(self, reason: str) -> None:
        if self._replace is None:
            self._replace = reason
        self._wake.set()

    def _watch_stall(self) -> None:
        now = time.monotonic()
        if not self._inflight:
            self._stalled_since = now
            return
        quiet = now - max(self.last_delivery, self._stalled_since)
        if quiet > self.unavailable_s:
            self.kafka_ok = False  # the producer keeps retrying: Kafka is not answering
        if quiet > self.stall_s and self._replace is None:
            self._stalled_since = now
            self._request_replace(f"nothing delivered for {self.stall_s:.0f}s with {self._inflight} batches in "
                                  "flight")

    async def _new_producer(self) -> None:
        """Let what is in flight settle, then close the producer without flushing and start a new
        one; every batch not acknowledged goes again first, in its lane's order."""
        reason = self._replace
        if self._inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), timeout=self.settle_s)
        self._replace = None  # failures of the old producer meanwhile are covered by this replacement
        for lane in self.lanes.values():
            if lane.inflight is not None:  # the lane's only batch in flight: its oldest
                lane.ready.appendleft(lane.inflight)
                lane.inflight = lane.producer = None
                self.retried += 1
                metrics.count(self.metric_retried)
        self._inflight = 0
        self._settled.set()
        old, self._producer = self._producer, None
        self.producer_restarts += 1
        metrics.count(self.metric_restarts)
        waiting = sum(len(lane.ready) + (lane.open is not None) for lane in self.lanes.values())
        log.warning("%s: starting a new Kafka producer (%s); %d batches waiting are sent again in order",
                    self.name, reason, waiting)
        await close_hard(old)
        pause = self._last_replace + 1.0 - time.monotonic()  # never a tight loop of new producers
        if pause > 0:
            await asyncio.sleep(pause)
        self._last_replace = time.monotonic()
        self._producer = await self._connect()
