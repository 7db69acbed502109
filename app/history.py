"""Books as of any instant (``faust -A app book-at``, ``/api/books/{venue}/{instrument}?at=``).

A past book is rebuilt from the raw topics, exactly as the worker built it: the same processor
applies the instrument's frames, in their partition's order, up to the last one received at or
before the instant. So that this does not replay a day, the worker writes every book's whole
state to ``book.checkpoints`` every ``BOOK_CHECKPOINT_INTERVAL_S`` (:func:`checkpoint_of`: the
book's table rows and the raw position they cover); a rebuild starts from the latest checkpoint
written before the instant (:func:`instrument_from`), or from the partition's first record when
there is none.
"""

from __future__ import annotations

import base64
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from app.errors import BookstreamError
from app.kafka import read_range, reading_consumer, stop_reading
from app.processor import Processor, new_instrument, parse_buffered
from app.records import BookCheckpoint, decode
from app.state.layout import ASK, BID, BUFFER, IDS, STATE, encode_state, load_instrument
from app.sync import Instrument
from app.wire import BOOK_CHECKPOINTS, RawFrame, decode_record, partition_for, raw_topic


def parse_time(text: str, option: str) -> int:
    """ns since the epoch, or an ISO-8601 time (UTC when it names no zone)."""
    from datetime import UTC, datetime, timedelta

    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BookstreamError(f"{option} {text!r}: expected an ISO time (2026-12-01T08:00:00Z) or ns since the "
                              "epoch") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000  # exact, no float


def checkpoint_of(inst: Instrument, raw: str, partition: int, next_offset: int) -> BookCheckpoint:
    """``inst``'s whole state, which covers every frame of raw records before ``next_offset``."""
    cp = BookCheckpoint(key=inst.key, raw_topic=raw, raw_partition=partition, next_offset=next_offset,
                        state=orjson.loads(encode_state(inst)), bids=list(inst.book.iter_bids()),
                        asks=list(inst.book.iter_asks()),
                        buffer=[base64.b64encode(frame).decode() for _, frame in inst.buffer],
                        ts_recv=inst.ts_recv or 0, ts=time.time_ns())
    if inst.ids is not None:  # which update set each level (rules that uncross by age)
        cp.ids = [(side, price, seq) for side, tree in (("b", inst.book.bids), ("a", inst.book.asks))
                  for key, (price, _) in tree.items() if (seq := inst.ids.side(side).get(key)) is not None]
    return cp


def instrument_from(cp: BookCheckpoint, buffer_limit: int = 20_000) -> Instrument:
    """The book a checkpoint holds, as the worker held it (its table rows loaded back)."""
    rows: list[tuple[bytes, bytes]] = [(STATE, orjson.dumps(cp.state))]
    rows += [(BID + p.encode(), s.encode()) for p, s in cp.bids]
    rows += [(ASK + p.encode(), s.encode()) for p, s in cp.asks]
    rows += [(BUFFER + b"%020d" % i, base64.b64decode(f)) for i, f in enumerate(cp.buffer)]
    if cp.ids:
        rows += [(IDS + side.encode() + p.encode(), b"%d" % seq) for side, p, seq in cp.ids]
    inst = new_instrument(cp.key, buffer_limit)
    load_instrument(inst, rows, lambda frame: parse_buffered(cp.key, frame))
    return inst


@dataclass
class PastBook:
    """What :func:`book_at` rebuilt."""

    key: str
    at: int
    inst: Instrument
    checkpoint: BookCheckpoint | None
    frames: int = 0  # frames of the instrument applied after the start
    records: int = 0  # raw records read
    seconds: float = 0.0
    last_frame_ts: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self, depth: int) -> dict[str, Any]:
        venue, _, symbol = self.key.partition(":")
        bids, asks = self.inst.book.levels(depth)
        start = ({"from": "checkpoint", "raw_offset": self.checkpoint.next_offset, "ts_recv": self.checkpoint.ts_recv}
                 if self.checkpoint is not None else {"from": "the raw partition's first record"})
        return {"venue": venue, "instrument": symbol, "at": self.at, "state": str(self.inst.status),
                "reason": self.inst.reason, "seq": self.inst.seq, "epoch": self.inst.counters.get("epoch"),
                "ts_exchange": self.inst.ts_exchange, "ts_recv": self.last_frame_ts or self.inst.ts_recv,
                "bids": bids, "asks": asks, "start": start, "frames_applied": self.frames,
                "raw_records_read": self.records, "seconds": round(self.seconds, 3), "notes": self.notes}


#: Records of book.checkpoints a search reads back at first from where the instant falls (doubled
#: until a checkpoint of the instrument at or before the instant is among them).
SEARCH_WINDOW = 256


async def _newest_from(consumer: Any, tp: Any, offset: int) -> int:
    """The newest ``ts_recv`` among the first checkpoints at or after ``offset`` (a probe of the search)."""
    consumer.seek(tp, offset)
    batch = await consumer.getmany(tp, timeout_ms=2000, max_records=32)
    newest = -1
    for msg in batch.get(tp, []):
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            newest = max(newest, decode(BOOK_CHECKPOINTS, msg.value).ts_recv) if msg.value else newest
    return newest


async def latest_checkpoint(consumer: Any, tp: Any, key: str, at: int) -> BookCheckpoint | None:
    """A checkpoint of ``key`` covering only frames received at or before ``at`` — the latest one,
    or one close before it — from ``tp`` (its book.checkpoints partition, assigned by the caller).

    Without reading the partition whole (a day is hundreds of MB): the worker writes checkpoints in
    time order, so a bisection over offsets on the newest receive time at each probe finds where
    the instant falls, and windows read back from there (doubling) find the key's checkpoint. Any
    checkpoint at or before the instant is a correct start (the raw frames after it are applied);
    a quiet book's old receive time among newer ones can only make the one found an earlier one."""
    begin = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    lo, hi = begin, end
    while hi - lo > SEARCH_WINDOW:
        mid = (lo + hi) // 2
        if await _newest_from(consumer, tp, mid) <= at:
            lo = mid
        else:
            hi = mid
    wanted = key.encode()
    stop, window = hi, SEARCH_WINDOW
    while stop > begin:
        start = max(begin, stop - window)
        best: BookCheckpoint | None = None
        async for batch in read_range(consumer, {tp: start}, {tp: stop}):
            for msg in batch[tp]:
                if msg.key != wanted or not msg.value:
                    continue
                try:
                    cp = decode(BOOK_CHECKPOINTS, msg.value)
                except msgspec.ValidationError:
                    continue
                later = best is None or (cp.next_offset, cp.ts_recv) > (best.next_offset, best.ts_recv)
                if cp.ts_recv <= at and later:
                    best = cp
        if best is not None:
            return best
        stop, window = start, window * 2
    return None


async def book_at(settings: Any, key: str, at: int) -> PastBook:
    """``key``'s book as it was at ``at`` (ns): the state after the last of its frames received at or
    before then."""
    from aiokafka import TopicPartition

    venue, _, symbol = key.partition(":")
    if not venue or not symbol:
        raise BookstreamError(f"{key!r}: expected VENUE:INSTRUMENT, e.g. okx:BTC-USDT")
    began = time.monotonic()
    consumer = await reading_consumer(settings)
    try:
        names = await consumer.topics()
        raw = settings.topic(raw_topic(venue))
        if raw not in names:
            raise BookstreamError(f"no raw topic {raw} on {settings.kafka_bootstrap}")
        tp = TopicPartition(raw, partition_for(key, settings.partitions))
        checkpoints = settings.topic(BOOK_CHECKPOINTS)
        cp_tp = TopicPartition(checkpoints, tp.partition) if checkpoints in names else None
        # One assignment for the whole rebuild, the partition not being read paused: a consumer
        # stopped just after a new assignment can hang for good in aiokafka 0.14 (its fetch routine
        # swallows the cancel while it drops the old assignment's fetches: aio-libs/aiokafka#983).
        consumer.assign([tp] if cp_tp is None else [cp_tp, tp])
        consumer.pause(tp)
        cp = None if cp_tp is None else await latest_checkpoint(consumer, cp_tp, key, at)
        if cp_tp is not None:
            consumer.pause(cp_tp)
        consumer.resume(tp)
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        inst = instrument_from(cp, settings.buffer_max_frames) if cp is not None else new_instrument(
            key, settings.buffer_max_frames)
        past = PastBook(key, at, inst, cp)
        start = cp.next_offset if cp is not None else first
        if start < first:
            past.notes.append(f"retention deleted raw offsets {start}..{first - 1} after the checkpoint; the book "
                              "resyncs at the next snapshot after them")
            start = first
        processor = Processor({key: inst}, settings.buffer_max_frames)
        async for batch in read_range(consumer, {tp: start}, {tp: end}):
            done = False
            for msg in batch[tp]:
                past.records += 1
                for item in decode_record(msg.key, msg.value, msg.headers):
                    if not isinstance(item, RawFrame) or item.key != key:
                        continue
                    if item.ts > at:
                        done = True
                        break
                    processor.handle(item)
                    past.frames += 1
                    past.last_frame_ts = item.ts
                if done:
                    break
            if done:
                break
        if past.frames == 0 and cp is None:
            past.notes.append("no frame of this instrument at or before that time")
        past.inst = processor.instruments[key]
        past.seconds = time.monotonic() - began
        return past
    finally:
        await stop_reading(consumer)
