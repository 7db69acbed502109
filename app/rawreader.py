"""The raw topics, read on the worker's event loop by a plain aiokafka consumer.

Faust runs the consumer group: its agent subscribes to the **assignment topic**
(``<APP_ID>-partitions``, TOPIC_PARTITIONS empty partitions), and its co-partitioning assignor
gives each worker table partitions — actives and standbys — exactly as it gave raw partitions
before. Partition *p* of every ``raw.<venue>`` topic belongs to table partition *p*, and this
reader fetches the raw partitions of the active table partitions itself, without a group:
``assign`` + ``seek`` to the offset the table's progress names (progress lives with the state,
never in consumer offsets).

Why not Faust's stream: Faust fetches in a thread of its own and hands every record to the
agent as one event through its stream machinery; at live rates (a few frames per raw record)
that path cost more CPU than the books, and its thread hop plus the GIL handover added
milliseconds to every record (README "Where the time goes": profile before and after). Here a
fetch returns records straight to the loop that applies them.

Flow control is the same promise: while the outputs wait for Kafka beyond OUTPUT_BUFFER_MB the
reader waits (``OutputSink.room``) and aiokafka keeps at most one fetched batch per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app import metrics
from app.kafka import client_auth, stop_reading
from app.retry import Backoff

if TYPE_CHECKING:
    from app.runtime import BookRuntime

log = logging.getLogger(__name__)

#: A fetch with nothing to return waits at most this long before the loop looks at its
#: assignment again (a rebalance, a hole to read again).
IDLE_MS = 100
#: Longest the reader applies records before it lets the loop's other tasks run. Each of
#: aiokafka's steps (a response read, a batch acknowledged, the next batch or fetch sent) waits
#: for such a turn: in the options universe 2 ms slices held the outputs' round trips at ~5 ms
#: where the broker answered a plain producer in 0.4 ms (README "Where the time goes").
SLICE_S = 0.0005
#: Turns of the loop given to aiokafka's fetcher after each fetch, so that the next fetch is on
#: its way while the records just fetched are applied.
FETCH_TURNS = 3
#: How often raw partitions that have never held a record are asked whether they have one now.
DORMANT_CHECK_S = 1.0


class RawReader:
    """Reads the raw partitions of the worker's active table partitions and hands every record
    to :meth:`BookRuntime.handle`, in order, on the worker's loop."""

    def __init__(self, runtime: BookRuntime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.consumer: Any = None
        #: table partitions to read (None: revoked; wait for the next activation)
        self._wanted: frozenset[int] | None = None
        self._generation = 0  # bumped at each revoke and activation: a batch of an older one is dropped
        self._changed = asyncio.Event()
        self._holes: dict[TopicPartition, int] = {}  # raw partition → offset to read again from
        self._assigned: list[TopicPartition] = []  # fetched
        #: assigned but paused: never held a record (a venue nobody ingests). Every fetch request
        #: names each fetched partition, encoded and decoded in aiokafka's pure Python: ten venues'
        #: topics cost ten times one venue's, per fetch
        self._dormant: list[TopicPartition] = []
        self._dormant_checked = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- driven by the rebalance (app.faust_glue) ----------------------------------------
    def revoke(self) -> None:
        """Stop applying at once: the state's partitions are about to be committed and let go."""
        self._wanted = None
        self._generation += 1
        self._changed.set()

    def resume(self, partitions: set[int]) -> None:
        """The table partitions are restored and loaded: read their raw partitions from the
        offsets their progress names."""
        self._wanted = frozenset(partitions)
        self._generation += 1
        self._changed.set()

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``topic``:``partition`` again from ``offset`` (a hole: see ``BookRuntime._hole``);
        the rest of the batch in hand of that partition is dropped."""
        self._holes[TopicPartition(topic, partition)] = offset

    # -- what the metrics and the risk engine ask ------------------------------------------
    def assignment(self) -> list[tuple[str, int]]:
        """The raw partitions fetched (not those never written to)."""
        return [(tp.topic, tp.partition) for tp in self._assigned]

    def positioned(self) -> bool:
        """The raw partitions of the active table partitions are assigned and sought."""
        return bool(self._assigned or self._dormant)

    def highwater(self, topic: str, partition: int) -> int | None:
        consumer = self.consumer
        if consumer is None:
            return None
        result: int | None = consumer.highwater(TopicPartition(topic, partition))
        return result

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="raw-reader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                await self._serve(backoff)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                log.warning("raw reader: %r; reading again from the table's positions", exc)
            except Exception:
                log.exception("raw reader failed; reading again from the table's positions")
                metrics.count("internal_errors")
            finally:
                consumer, self.consumer, self._assigned = self.consumer, None, []
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await stop_reading(consumer)
            await backoff.sleep()

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, client_id=f"{s.app_id}-raw", enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=s.fetch_max_wait_ms, fetch_min_bytes=s.fetch_min_bytes,
            max_partition_fetch_bytes=s.max_fetch_size, **client_auth(s))

    async def _serve(self, backoff: Backoff) -> None:
        consumer = self.consumer = self._new_consumer()
        await consumer.start()
        backoff.reset()
        generation = -1
        runtime = self.runtime
        handle = runtime.handle
        sink = runtime.sink
        publisher = runtime.publisher
        observe = metrics.observe_stage
        max_records = self.settings.max_poll_records
        more = False  # deferred outputs wait: take the records already fetched, then build more
        while True:
            if generation != self._generation:
                generation = self._generation
                self._changed.clear()
                await self._reposition(consumer)
                continue
            if not self._assigned and not self._dormant:
                await self._changed.wait()
                continue
            if self._holes:
                await self._read_again(consumer)
            if self._dormant and time.monotonic() - self._dormant_checked >= DORMANT_CHECK_S:
                await self._wake_dormant(consumer)
            batches = await consumer.getmany(timeout_ms=0 if more else IDLE_MS, max_records=max_records)
            taken = time.time()
            if batches:
                # Before applying them, let aiokafka fetch what comes behind them: taking the records
                # wakes its fetcher, which starts a fetch task, which sends the request — three
                # turns of the loop (FETCH_TURNS). Without them the next fetch left only when this
                # batch was applied (or a slice ended), and records that arrived meanwhile waited
                # for the whole batch and then a round trip.
                for _ in range(FETCH_TURNS):
                    await asyncio.sleep(0)
            slice_end = time.monotonic() + SLICE_S
            for tp, messages in batches.items():
                for msg in messages:
                    if generation != self._generation or tp in self._holes:
                        break  # revoked meanwhile, or read again from a hole: the rest is not applied
                    start = time.time()
                    observe("fetch", taken - msg.timestamp / 1000)  # its Kafka time (when the sink sent it) → in hand
                    observe("wait", start - taken)  # in hand → applied: behind the records before it in the fetch
                    handle(msg.topic, msg.partition, msg.offset, msg.key, msg.value, msg.headers)
                    observe("apply", time.time() - start)
                    if sink.full():
                        # Flow control: the outputs wait for Kafka beyond OUTPUT_BUFFER_MB: take
                        # no more raw records until half of them is delivered (late, never lossy).
                        await sink.room()
                        slice_end = time.monotonic() + SLICE_S
                    elif time.monotonic() >= slice_end:
                        # A fetch of a backlog holds seconds of work: let the outputs' sender, the
                        # commits and the timers run between slices (they are what the books wait for).
                        await asyncio.sleep(0)
                        slice_end = time.monotonic() + SLICE_S
            # What no frame waits for (options chains, book.depth), a slice at a time between
            # batches: records that arrive meanwhile go first
            more = publisher.deferred() and await publisher.publish_deferred(SLICE_S)

    async def _reposition(self, consumer: AIOKafkaConsumer) -> None:
        """Assign the raw partitions of the wanted table partitions and seek each to the offset
        its table partition's progress names (the start of its log when nothing was applied)."""
        wanted = self._wanted
        self._holes.clear()
        if not wanted:
            if self._assigned or self._dormant:
                consumer.unsubscribe()
                self._assigned, self._dormant = [], []
            return
        runtime = self.runtime
        tps = [TopicPartition(t, p) for t in runtime.topics.raw for p in sorted(wanted)]
        consumer.assign(tps)
        # What the reader says it reads follows the consumer at once: the offsets asked below are
        # awaited, meanwhile the risk engine asks the lag of each partition of ``assignment()``,
        # and aiokafka's ``highwater`` of one it no longer holds is an AssertionError
        self._assigned, self._dormant = list(tps), []
        positions = runtime.positions((tp.topic, tp.partition) for tp in tps)
        fresh = [tp for tp in tps if positions.get((tp.topic, tp.partition)) is None]
        earliest = await consumer.beginning_offsets(fresh) if fresh else {}
        ends = await consumer.end_offsets(tps)
        self._dormant = [tp for tp in tps if not ends.get(tp)]  # nothing ever written to it
        self._assigned = [tp for tp in tps if tp not in self._dormant]
        if self._dormant:
            consumer.pause(*self._dormant)
            self._dormant_checked = time.monotonic()
        sought = []
        for tp in tps:
            offset = positions.get((tp.topic, tp.partition))
            if offset is None:
                offset = earliest.get(tp) or 0
                runtime.start_at(tp.topic, tp.partition, offset)
            consumer.seek(tp, offset)
            if offset:
                sought.append(f"{tp.topic}:{tp.partition}@{offset}")
        log.info("raw partitions read from the table's positions: %s; %d never written, asked again every %.0f s",
                 ", ".join(sought) or "all from the start", len(self._dormant), DORMANT_CHECK_S)

    async def _wake_dormant(self, consumer: AIOKafkaConsumer) -> None:
        """Fetch the paused partitions that got their first record (from the start of their log)."""
        self._dormant_checked = time.monotonic()
        ends = await consumer.end_offsets(self._dormant)
        woke = [tp for tp in self._dormant if ends.get(tp)]
        if woke and all(tp in self._dormant for tp in woke):  # not reassigned meanwhile
            consumer.resume(*woke)
            self._dormant = [tp for tp in self._dormant if tp not in woke]
            self._assigned.extend(woke)
            log.info("raw partitions written for the first time, now read: %s",
                     ", ".join(f"{tp.topic}:{tp.partition}" for tp in woke))

    async def _read_again(self, consumer: AIOKafkaConsumer) -> None:
        """Holes: read each partition again from its offset — or, when retention deleted records
        since, from the start of its log (its books resync on the sequence gap)."""
        holes, self._holes = self._holes, {}
        earliest = await consumer.beginning_offsets(list(holes))
        for tp, offset in holes.items():
            first = earliest.get(tp)
            if first is not None and first > offset:
                log.warning("%s:%d: records %d..%d were deleted by the topic's retention before this worker applied "
                            "them; going on from %d", tp.topic, tp.partition, offset, first - 1, first)
                self.runtime.start_at(tp.topic, tp.partition, first, force=True)
                offset = first
            if tp in self._assigned:
                consumer.seek(tp, offset)
