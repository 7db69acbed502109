"""Every place bookstream reaches into Faust, and why. Nothing else touches Faust internals.

bookstream keeps its table itself (``app.state``): progress lives with the state, as in Kafka
Streams and Flink, so correctness never rests on Faust's consumer offset commits. Faust still
runs the consumer group, the agent, the timers, the web server and the commands. These are the
touches, each a subclass or a public hook:

1. **Seek to what the table covers** — :class:`StateSeekingConsumer` overrides
   ``faust.transport.drivers.aiokafka.Consumer.seek_to_committed``. Faust calls it (through
   ``Consumer.perform_seek``) once a rebalance's recovery is done, and again whenever its fetch
   loop runs while flow is stopped. It seeks each raw partition (with Faust's own
   ``Consumer.seek_wait``) to the next offset its table partition's progress row names, or to
   the start of the log when nothing was applied yet, instead of the committed offset. Why not
   the commits: Faust acks — and so commits — records its streams *skip* during a rebalance
   (flow stopped, or fetched in the previous generation), so a committed offset can be past
   records no worker applied. Faust keeps committing; its commits only report lag now.
2. **Recovery waits for the table** — :class:`StateRecovery` overrides
   ``faust.tables.recovery.Recovery._resume_streams`` (Faust runs it after each rebalance when
   no Faust table exists): it waits, through ``Recovery._wait`` so that a new rebalance
   interrupts it (``RebalanceAgain``), until ``app.state`` has fenced, restored and loaded the
   assigned partitions; then Faust resumes the partitions and seeks (1). The restore reads the
   changelog with its own consumer in write batches, not one Faust event per record, and
   ``read_committed`` (Faust's recovery reads uncommitted records).
3. **Installing them** — :class:`StateTableManager` (passed as ``App(TableManager=…)``) builds
   (2); :meth:`StateTransport` (``App._new_transport``) makes Faust's aiokafka transport build (1).
   It also overrides ``TableManager.on_start`` without its one-second sleep (there for Faust
   tables defined late; bookstream defines none), which every start and restart waited out.
4. **Rebalance signals** — ``app.on_partitions_revoked`` / ``on_partitions_assigned`` (public)
   drive ``app.state``; ``app.assignor.assigned_standbys()`` names standby partitions: Faust's
   assignor computes standbys for every co-partitioned topic, so the raw topics' standby
   partitions (``TABLE_STANDBY_REPLICAS``) are the table partitions this worker keeps standby
   copies of, and it promotes a standby when an owner dies.
5. **Reading a partition again after a hole** — :func:`seek_after_hole` uses Faust's
   ``Consumer.seek`` (which also resets the read-offset filter of Faust's fetch loop). Holes only
   come from records Faust dropped around a rebalance; after every rebalance (1) reads from the
   table's position anyway, so this is the safety net.
6. ``faust.web.base.Web.production_blueprints`` is emptied: the dashboard is ``/``.
7. **Consumer lag** (``/metrics``) — :func:`consumer_lag` reads ``Consumer.highwater`` (public)
   against the table's progress, not Faust's read offsets.
8. **The aiokafka consumer** — :class:`StateConsumerThread` (built by (1)) takes the aiokafka
   consumer Faust creates and sets private fields before it starts: the assignor (Faust's
   co-partitioning one, which Faust skips when it sees no table and no standby),
   ``fetch_max_wait_ms`` (``CONSUMER_FETCH_MAX_WAIT_MS``; Faust hard-codes 1,500 ms, which
   parks busy partitions for seconds, see the class) and ``fetch_min_bytes``
   (``CONSUMER_FETCH_MIN_BYTES``, which Faust does not expose).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import faust.web.base
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

if TYPE_CHECKING:
    from app.runtime import BookRuntime

log = logging.getLogger(__name__)

# (6) Our dashboard is "/": faust's production index (also "/") is not mounted.
faust.web.base.Web.production_blueprints = []


def _runtime(app: Any) -> BookRuntime:
    runtime: BookRuntime = app.runtime
    return runtime


class StateSeekingConsumer(aiokafka_driver.Consumer):
    """(1) Seeks raw partitions to the offsets the table covers, not to committed offsets."""

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return StateConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        runtime = _runtime(self.app)
        raw = set(runtime.topics.raw)
        assigned = self.assignment()
        others = {tp for tp in assigned if tp.topic not in raw}  # Faust's own (leader assignor topic)
        committed = {tp: o for tp, o in (await super().seek_to_committed()).items() if tp in others} if others \
            else {}
        wanted = runtime.positions((tp.topic, tp.partition) for tp in assigned if tp.topic in raw)
        positions: dict[TP, int] = {}
        fresh: list[TP] = []
        for (topic, partition), offset in wanted.items():
            if offset is None:
                fresh.append(TP(topic, partition))
            else:
                positions[TP(topic, partition)] = offset
        if fresh:
            earliest = await self.earliest_offsets(*fresh)
            for tp in fresh:
                start = earliest.get(tp) or 0
                runtime.start_at(tp.topic, tp.partition, start)
                positions[tp] = start
        if positions:
            await self.seek_wait(positions)
            log.info("raw partitions sought to the table's positions: %s",
                     ", ".join(f"{tp.topic}:{tp.partition}@{o}" for tp, o in sorted(positions.items()) if o))
        return {**committed, **positions}


class StateConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """(8) The aiokafka consumer Faust builds, with settings Faust does not expose."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust takes aiokafka's round-robin assignor when no Faust table and no standby exist:
        # it does not keep partition p of every raw topic on one worker, and table partition p
        # is partition p of every raw topic. Faust's assignor co-partitions them, always.
        self._assignor = self.app.assignor
        consumer._partition_assignment_strategy = [self.app.assignor]
        # Faust hard-codes fetch.max.wait 1,500 ms. aiokafka keeps one fetch in flight per broker
        # and leaves partitions holding unconsumed records out of it, so a fetch sent while the
        # agent was busy can park at the broker for 1.5 s without the busy partitions, which
        # then wait for it: seconds of latency at any rate. A short wait bounds that stall.
        consumer._fetch_max_wait_ms = _runtime(self.app).settings.fetch_max_wait_ms
        consumer._fetch_min_bytes = _runtime(self.app).settings.fetch_min_bytes
        return consumer


class StateTransport(aiokafka_driver.Transport):
    """(3) Faust's aiokafka transport, building :class:`StateSeekingConsumer`."""

    Consumer = StateSeekingConsumer


class StateRecovery(Recovery):
    """(2) Streams resume only once the table partitions are restored and loaded."""

    async def _resume_streams(self, generation_id: int = 0) -> None:
        await self._wait(_runtime(self.app).state.activated())
        await super()._resume_streams(generation_id)


class StateTableManager(TableManager):
    """(3) Faust's table manager with :class:`StateRecovery` as its recovery service."""

    async def on_start(self) -> None:
        # Faust's own sleeps 1 s first so that tables defined after start-up still register
        # before recovery starts; bookstream's state is not a Faust table (app.state), so there
        # is nothing to wait for, and the second would be added to every start and restart.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = StateRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


def install(app: Any) -> None:
    """(4) Rebalance signals → ``app.runtime``; (5) hole seeks."""
    runtime = _runtime(app)
    raw = set(runtime.topics.raw)

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        await runtime.on_revoked()

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: Any, /, *args: Any, **kwargs: Any) -> None:
        actives = {tp.partition for tp in assigned if tp.topic in raw}
        standbys = {tp.partition for tp in app.assignor.assigned_standbys() if tp.topic in raw}
        runtime.on_assigned(actives, standbys - actives)

    def seek(topic: str, partition: int, offset: int) -> None:
        task = asyncio.get_running_loop().create_task(seek_after_hole(app, topic, partition, offset))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    runtime.seek = seek


_pending: set[asyncio.Task[None]] = set()  # hole seeks in flight (a reference keeps them alive)


async def seek_after_hole(app: Any, topic: str, partition: int, offset: int) -> None:
    """(5) Read a raw partition again from ``offset``; if retention deleted records since, go on
    from the start of the log (their books resync on the sequence gap)."""
    consumer = app.consumer
    tp = TP(topic, partition)
    try:
        earliest = (await consumer.earliest_offsets(tp)).get(tp)
        if earliest is not None and earliest > offset:
            log.warning("%s:%d: records %d..%d were deleted by the topic's retention before this worker applied "
                        "them; going on from %d", topic, partition, offset, earliest - 1, earliest)
            _runtime(app).start_at(topic, partition, earliest, force=True)
            offset = earliest
        await consumer.seek(tp, offset)
    except Exception as exc:  # noqa: BLE001 - a rebalance meanwhile: (1) repositions anyway
        log.info("%s:%d: seek to %d not done (%r); the next rebalance or hole repositions it", topic, partition,
                 offset, exc)


def raw_caught_up(app: Any, slack: int = 2) -> bool:
    """Every assigned raw partition's high watermark is known and applied to within ``slack``
    records (the risk engine starts after a crash only then: see app.risk.service)."""
    try:
        raw = set(_runtime(app).topics.raw)
        tps = [tp for tp in app.consumer.assignment() if tp.topic in raw]
    except Exception:  # noqa: BLE001 - no consumer yet
        return False
    lag = consumer_lag(app)
    return bool(tps) and all((tp.topic, tp.partition) in lag and lag[(tp.topic, tp.partition)] <= slack for tp in tps)


def raw_applied_to(app: Any, slack: int = 2) -> float:
    """The receive time (ns) up to which the worker has applied the assigned raw partitions it is
    more than ``slack`` records behind on: the oldest frame it has still to apply was received no
    earlier (a raw partition is written in receive order). +inf when it is behind on none; -inf
    when one of them has nothing applied yet (its next frames may be of any age). The risk engine's
    watermark holds quiet inputs there (app.risk.watermark)."""
    runtime = _runtime(app)
    lag = consumer_lag(app)
    bound = float("inf")
    for tp, behind in lag.items():
        if behind > slack:
            bound = min(bound, runtime.applied_ts.get(tp, float("-inf")))
    return bound


def consumer_lag(app: Any) -> dict[tuple[str, int], int]:
    """(7) Raw records behind the end of each assigned partition: its high watermark minus the
    next offset its table partition will apply."""
    runtime = _runtime(app)
    consumer = app.consumer
    raw = set(runtime.topics.raw)
    try:
        tps = [tp for tp in consumer.assignment() if tp.topic in raw]
        nexts = runtime.positions((tp.topic, tp.partition) for tp in tps)
        out: dict[tuple[str, int], int] = {}
        for tp in tps:
            high = consumer.highwater(tp)
            if high is not None:
                out[(tp.topic, tp.partition)] = max(0, high - (nexts.get((tp.topic, tp.partition)) or 0))
        return out
    except Exception:  # noqa: BLE001 - metrics must never break the endpoint
        log.debug("consumer lag unavailable", exc_info=True)
        return {}
