"""Every place bookstream reaches into Faust, and why. Nothing else touches Faust internals.

bookstream keeps its table itself (``app.state``): progress lives with the state, as in Kafka
Streams and Flink, so correctness never rests on Faust's consumer offset commits. It reads the
raw topics itself too (``app.rawreader``: a plain aiokafka consumer on the worker's loop, no
group), from the offsets the table's progress names. Faust runs the consumer group, the timers,
the web server and the commands. These are the touches, each a subclass or a public hook:

1. **The group is over table partitions** — the book agent subscribes to the assignment topic
   (``<APP_ID>-partitions``, no records); :class:`StateConsumerThread` takes the aiokafka
   consumer Faust creates and gives it Faust's co-partitioning assignor (which Faust skips when
   it sees no table and no standby), so ``TABLE_STANDBY_REPLICAS`` standbys are assigned too.
   Partition p of the assignment topic is table partition p and partition p of every raw topic.
2. **Recovery waits for the table** — :class:`StateRecovery` overrides
   ``faust.tables.recovery.Recovery._resume_streams`` (Faust runs it after each rebalance when
   no Faust table exists): it waits, through ``Recovery._wait`` so that a new rebalance
   interrupts it (``RebalanceAgain``), until ``app.state`` has fenced, restored and loaded the
   assigned partitions; then the raw reader reads their raw partitions from the table's
   positions. The restore reads the changelog with its own consumer in write batches, not one
   Faust event per record, and ``read_committed`` (Faust's recovery reads uncommitted records).
3. **Installing them** — :class:`StateTableManager` (passed as ``App(TableManager=…)``) builds
   (2); :meth:`StateTransport` (``App._new_transport``) makes Faust's aiokafka transport build (1).
   It also overrides ``TableManager.on_start`` without its one-second sleep (there for Faust
   tables defined late; bookstream defines none), which every start and restart waited out.
4. **Rebalance signals** — ``app.on_partitions_revoked`` / ``on_partitions_assigned`` (public)
   drive ``app.state`` and stop the raw reader at a revoke; ``app.assignor.assigned_standbys()``
   names the standby partitions this worker keeps copies of, and it promotes a standby when an
   owner dies.
5. ``faust.web.base.Web.production_blueprints`` is emptied: the dashboard is ``/``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import faust.web.base
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as aiokafka_driver

if TYPE_CHECKING:
    from app.runtime import BookRuntime

log = logging.getLogger(__name__)

# (6) Our dashboard is "/": faust's production index (also "/") is not mounted.
faust.web.base.Web.production_blueprints = []


def _runtime(app: Any) -> BookRuntime:
    runtime: BookRuntime = app.runtime
    return runtime


class StateSeekingConsumer(aiokafka_driver.Consumer):
    """(1) Faust's consumer, building :class:`StateConsumerThread`."""

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return StateConsumerThread(self, loop=self.loop, beacon=self.beacon)


class StateConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """(1) The aiokafka consumer Faust builds, with the co-partitioning assignor."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust takes aiokafka's round-robin assignor when no Faust table and no standby exist:
        # table partition p must be partition p of every raw topic, on one worker, with its
        # standbys elsewhere. Faust's assignor co-partitions, always.
        self._assignor = self.app.assignor
        consumer._partition_assignment_strategy = [self.app.assignor]
        return consumer


class StateTransport(aiokafka_driver.Transport):
    """(3) Faust's aiokafka transport, building :class:`StateSeekingConsumer`."""

    Consumer = StateSeekingConsumer


class StateRecovery(Recovery):
    """(2) Streams resume only once the table partitions are restored and loaded."""

    async def _resume_streams(self, generation_id: int = 0) -> None:
        runtime = _runtime(self.app)
        await self._wait(runtime.state.activated())
        runtime.on_activated()
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
    """(4) Rebalance signals → ``app.runtime``."""
    runtime = _runtime(app)
    assignment = runtime.topics.assignment

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        await runtime.on_revoked()

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: Any, /, *args: Any, **kwargs: Any) -> None:
        actives = {tp.partition for tp in assigned if tp.topic == assignment}
        standbys = {tp.partition for tp in app.assignor.assigned_standbys() if tp.topic == assignment}
        runtime.on_assigned(actives, standbys - actives)
