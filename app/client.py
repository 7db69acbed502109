"""Read bookstream's topics from your own Python code: typed records, repeats dropped.

    import asyncio
    from app.client import read

    async def main() -> None:
        async for top in read("book.top", bootstrap="127.0.0.1:9092"):
            print(top.venue, top.instrument, top.bid_px, top.ask_px)

    asyncio.run(main())

:func:`read` is an async iterator over one topic (its name without ``TOPIC_PREFIX``; any
``raw.<venue>`` gives the frames of the raw records). Each record is decoded with the topic's
definition (``app.records``: attributes, not dict keys; a record that does not match its
schema raises ``msgspec.ValidationError``, never passes silently). It reads
``read_committed``, so with ``DELIVERY_GUARANTEE=exactly_once`` the records of an aborted
commit never reach you, and it applies the README's rule for dropping at-least-once repeats
(:class:`Repeats`):

* ``book.top``, ``book.depth``: per instrument, a record whose ``(epoch, seq)`` is not above
  the last one's is a repeat;
* ``trades``: a trade id already seen for that instrument (the last ``TRADE_IDS`` per
  instrument are remembered);
* ``risk.hedge``: a signal id already seen;
* ``risk.exposure``, ``risk.scenarios``, ``alerts``, ``nbbo``: per key, a record whose ``ts``
  is not above the last one's (each is the latest value of its key, in event time);
* other topics: none dropped (``ticker`` fields merge per key: see the README).

With ``from_beginning`` it starts at the oldest record, else at the end; with ``until_end`` it
stops at the end offsets it found when it started (a batch read: a day of trades into a
frame), else it waits for new records for ever. Settings not given come from the same
environment as the worker (``KAFKA_BOOTSTRAP``, ``TOPIC_PREFIX``, the ``KAFKA_SECURITY_*``
settings).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app import records
from app.config import Settings
from app.config import load as load_settings
from app.kafka import client_auth
from app.wire import RawFrame, decode_record

#: Trade ids remembered per instrument to drop repeats (a repeat comes within a few hundred
#: records of the original: a worker restart republishes since its last commit).
TRADE_IDS = 100_000
_LATEST_BY_TS = ("risk.exposure", "risk.scenarios", "alerts", "nbbo")


class Repeats:
    """The README's rule for dropping at-least-once repeats of one topic: :meth:`new` is False
    for a repeat."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.last: dict[str, Any] = {}
        self.ids: dict[str, OrderedDict[str, None]] = {}

    def new(self, key: str, record: Any) -> bool:
        topic = self.topic
        if topic in ("book.top", "book.depth"):
            if record.seq is None:
                return True
            mark, instrument = (record.epoch, record.seq), f"{record.venue}:{record.instrument}"
            return self._above(instrument, mark)
        if topic == "trades":
            return self._unseen(record.key, record.trade_id, TRADE_IDS)
        if topic == "risk.hedge":
            return self._unseen("", record.id, TRADE_IDS)
        if topic in _LATEST_BY_TS:
            return self._above(key, record.ts)
        return True

    def _above(self, key: str, mark: Any) -> bool:
        last = self.last.get(key)
        if last is not None and mark <= last:
            return False
        self.last[key] = mark
        return True

    def _unseen(self, scope: str, ident: str, keep: int) -> bool:
        seen = self.ids.setdefault(scope, OrderedDict())
        if ident in seen:
            return False
        seen[ident] = None
        if len(seen) > keep:
            seen.popitem(last=False)
        return True


async def read(topic: str, *, bootstrap: str | None = None, prefix: str | None = None,
               from_beginning: bool = False, until_end: bool = False, drop_repeats: bool = True,
               settings: Settings | None = None) -> AsyncIterator[Any]:
    """The records of ``topic`` (without ``TOPIC_PREFIX``), typed, repeats dropped (see the
    module's docstring); for a raw topic, its frames (``app.wire.RawFrame``)."""
    settings = settings or load_settings()
    spec = records.spec_of(topic)  # KeyError for a topic bookstream does not define
    name = (settings.topic_prefix if prefix is None else prefix) + topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap or settings.kafka_bootstrap, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest" if from_beginning else "latest",
        **client_auth(settings))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(name) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - a topic created a moment ago
            partitions = consumer.partitions_for_topic(name) or set()
        if not partitions:
            raise KeyError(f"topic {name} does not exist at {bootstrap or settings.kafka_bootstrap}")
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        ends = await consumer.end_offsets(tps) if until_end else {}
        left = {tp for tp in tps if until_end and await consumer.position(tp) < ends[tp]}
        if until_end and not left:
            return
        repeats = Repeats(spec.topic)
        raw = spec.topic == records.RAW
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                for msg in msgs:
                    if until_end and msg.offset >= ends[tp]:
                        break
                    if msg.value is None:  # a tombstone (compacted topics)
                        continue
                    if raw:
                        for frame in decode_record(msg.key, msg.value, msg.headers):
                            if isinstance(frame, RawFrame):
                                yield frame
                        continue
                    record = records.decode(spec.topic, msg.value)
                    key = msg.key.decode("utf-8", "replace") if msg.key else ""
                    if not drop_repeats or repeats.new(key, record):
                        yield record
            if until_end:
                for tp in list(left):
                    if await consumer.position(tp) >= ends[tp]:
                        left.discard(tp)
                if not left:
                    return
    finally:
        await consumer.stop()
