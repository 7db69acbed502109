"""The book agent: raw venue frames → books in the ``books`` table → downstream topics.

One agent reads every ``raw.<venue>`` topic (concurrency 1 per partition: ordered and
stateful). Per record it runs ``app.processor`` and then, in this order:

1. writes the changed level rows, buffer rows and finally the state row to the table;
2. publishes ``book.top`` for every top-of-book change, ``book.status`` for state
   transitions, ``control.resync`` when a book went stale, ``raw.deadletter`` for input
   it could not use; ``book.depth`` at most every DEPTH_INTERVAL_MS per instrument.

Nothing here raises out of the loop: an exception in a faust agent acks the message and
kills the agent, so each record is handled inside its own guard.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust.transport.consumer
import orjson
from faust import current_event
from faust.types import EventT, StreamT
from mode.types.signals import BaseSignalT

from app import metrics
from app.core import app, settings
from app.offsets import HandledOffsets
from app.processor import Outcome, Processor, header_map
from app.sync import STALE, SYNCED, Effects, Instrument
from app.topics import OUTPUTS, RAW_NAMES, book_depth, book_status, book_top, control_resync, deadletter, raw
from app.venues import ADAPTERS, rule, split_key
from app.venues.base import Kind
from tables.books import BUFFER, SEP, STATE, books, buffer_key, level_key, state_key

log = logging.getLogger(__name__)


def _load(key: str) -> Instrument | None:
    """The processor's loader: the instrument's rows in the current event's partition."""
    event = current_event()
    if event is None:
        return None
    msg = event.message
    inst = load_instrument(key, msg.partition)
    if inst is not None:
        log.info("loaded %s from table: %s, %d levels, seq=%s, source offset %s (now at %s:%s@%s)", key, inst.status,
                 len(inst.book), inst.seq, inst.offset, msg.topic, msg.partition, msg.offset)
    return inst


def load_instrument(key: str, partition: int) -> Instrument | None:
    """Rebuild one instrument from its table rows (prefix scan of its partition's RocksDB)."""
    store: Any = books.data  # faust's RocksDB store: one rocksdict per partition
    db = store._db_for_partition(partition)
    prefix = key.encode() + SEP
    venue, symbol = split_key(key)
    adapter = ADAPTERS[venue]
    inst = Instrument(key, rule(venue), settings.buffer_max_frames)
    found = False
    for k, v in db.items(from_key=prefix):
        if not k.startswith(prefix):
            break
        found = True
        tag, rest = k[len(prefix) : len(prefix) + 1], k[len(prefix) + 1 :]
        if tag == STATE:
            inst.from_state(orjson.loads(v))
        elif tag == BUFFER:
            for upd in adapter.parse(Kind.WS, v, symbol):
                inst.buffer.append((upd, v))
        else:
            inst.book.load(tag.decode(), rest.decode(), v.decode())
    return inst if found else None  # the agent logs what it loads; web view copies are not logged


processor = Processor(_load, settings.buffer_max_frames)


@app.on_partitions_revoked.connect
def _on_revoked(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    processor.clear()  # another worker may own them now; reload from the table when back


@app.on_partitions_assigned.connect
def _on_assigned(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    processor.clear()
    handled.reset()


#: What this agent handled and made durable, per source partition: faust's offset commits
#: are capped at it (see app.offsets).
handled = HandledOffsets(lambda tp: _consumer()._committed_offset.get(tp), lambda: set(RAW_NAMES),
                         queued=lambda: _buffer().queued, handed=lambda: _buffer().handed)
_faust_commit_offsets = faust.transport.consumer.Consumer._commit_offsets


def _consumer() -> Any:
    return app.consumer  # faust's Consumer: its committed offsets are not part of ConsumerT


def _buffer() -> Any:
    return app.producer.buffer  # app.core.CountingProducerBuffer


async def _commit_handled_offsets(consumer: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
    return await _faust_commit_offsets(consumer, handled.cap(offsets), start_new_transaction=start_new_transaction)


faust.transport.consumer.Consumer._commit_offsets = _commit_handled_offsets  # type: ignore[method-assign,assignment]


def _persist(key: str, inst: Instrument, fx: Effects) -> None:
    ik = key.encode()
    for side, price, size in fx.changes:
        if size is None:
            del books[level_key(ik, side, price)]
        else:
            books[level_key(ik, side, price)] = size.encode()
    for seq, frame in fx.buffer_put:
        books[buffer_key(ik, seq)] = frame
    for seq in fx.buffer_del:
        del books[buffer_key(ik, seq)]
    books[state_key(ik)] = orjson.dumps(inst.to_state())  # last, see tables/books.py


def _send(topic: Any, key: str, value: dict[str, Any]) -> None:
    topic.send_soon(key=key.encode(), value=orjson.dumps(value))


def _publish(out: Outcome, inst: Instrument, ts_recv: int) -> None:
    key, fx = out.key, out.fx
    venue, symbol = split_key(key)
    now = time.time_ns()
    for seq, ts_exchange, (bpx, bsz, apx, asz) in fx.tops:
        _send(book_top, key, {
            "venue": venue, "instrument": symbol, "bid_px": bpx, "bid_sz": bsz, "ask_px": apx,
            "ask_sz": asz, "seq": seq, "epoch": inst.counters["epoch"], "ts_exchange": ts_exchange, "ts_recv": ts_recv,
            "ts_published": now,
        })
        metrics.observe_latency(now - ts_recv)
    metrics.count("book_top", len(fx.tops))
    for state, reason in fx.transitions:
        _send(book_status, key, {
            "venue": venue, "instrument": symbol, "state": state, "reason": reason, "seq": inst.seq,
            "ts": now, "counters": inst.counters,
        })
        log.log(logging.WARNING if state == STALE else logging.INFO, "%s %s: %s", key, state, reason)
    if fx.resync is not None:
        request_resync(key, inst, fx.resync)
    elif inst.status == SYNCED:
        retry.done(key)
    if fx.applied and inst.status == SYNCED:
        depth.touch(key)


def request_resync(key: str, inst: Instrument, reason: str) -> None:
    """Ask ingestion (control.resync) for a fresh snapshot of one instrument, and say so."""
    venue, symbol = split_key(key)
    now = time.time_ns()
    _send(control_resync, key, {"venue": venue, "instrument": symbol, "reason": reason, "seq": inst.seq, "ts": now})
    _send(book_status, key, {"venue": venue, "instrument": symbol, "state": "resync-requested", "reason": reason,
                             "seq": inst.seq, "ts": now, "counters": inst.counters})
    metrics.count("resyncs")
    retry.requested(key)


class ResyncRetry:
    """Repeat the resync request of a book that stays unsynced (a lost snapshot or request),
    with backoff from RESYNC_RETRY_S up to a minute."""

    def __init__(self, first_s: float) -> None:
        self.first_s = first_s
        self.pending: dict[str, tuple[float, float]] = {}  # key → (next attempt, current interval)

    def requested(self, key: str) -> None:
        interval = self.pending.get(key, (0.0, self.first_s / 2))[1] * 2
        self.pending[key] = (time.monotonic() + interval, min(interval, 60.0))

    def done(self, key: str) -> None:
        self.pending.pop(key, None)

    def due(self) -> list[str]:
        now = time.monotonic()
        return [k for k, (at, _) in self.pending.items() if at <= now]


retry = ResyncRetry(settings.resync_retry_s)


@app.timer(interval=1.0)
async def _retry_resyncs() -> None:
    for key in retry.due():
        inst = processor.instruments.get(key)
        if inst is None or inst.status == SYNCED:
            retry.done(key)
        else:
            request_resync(key, inst, f"retry: still {inst.status} ({inst.reason})")


class LogLimiter:
    """At most one log line per reason per ``every_s``: a flood of bad frames must not
    turn into a flood of log lines (each dead letter is still counted and published)."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.windows: dict[str, tuple[float, int]] = {}  # reason → (last line at, suppressed since)
        self._note = 0

    def allow(self, reason: str) -> bool:
        now = time.monotonic()
        last, suppressed = self.windows.get(reason, (-self.every_s, 0))
        if now - last >= self.every_s:
            self._note = suppressed
            self.windows[reason] = (now, 0)
            return True
        self.windows[reason] = (last, suppressed + 1)
        return False

    def suppressed_note(self, reason: str) -> str:
        return f" (+{self._note:,} more {reason} not logged)" if self._note else ""


dead_log = LogLimiter()


def _dead(event: EventT, key: str, reason: str, detail: str) -> None:
    msg = event.message
    venue, _, symbol = key.partition(":")
    metrics.count("deadletters")
    metrics.count(f"deadletters.{reason}")
    if dead_log.allow(reason):
        log.warning("dead letter %s %s:%s@%s: %s %s%s", key, msg.topic, msg.partition, msg.offset, reason,
                    detail[:200], dead_log.suppressed_note(reason))
    value = event.value if isinstance(event.value, bytes) else b""
    _send(deadletter, key, {
        "venue": venue, "instrument": symbol or None, "reason": reason, "detail": detail,
        "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
        "headers": {k: v.decode("utf-8", "replace") for k, v in header_map(msg.headers).items()},
        "frame": value.decode("utf-8", "replace"),
    })


class DepthPublisher:
    """book.depth at most every DEPTH_INTERVAL_MS per instrument; the last change always goes out."""

    def __init__(self, interval_ms: int, levels: int) -> None:
        self.interval_ns = interval_ms * 1_000_000
        self.levels = levels
        self.last: dict[str, int] = {}
        self.dirty: set[str] = set()

    def touch(self, key: str) -> None:
        if time.monotonic_ns() - self.last.get(key, 0) >= self.interval_ns:
            self.publish(key)
        else:
            self.dirty.add(key)

    def flush(self) -> None:
        for key in list(self.dirty):
            if time.monotonic_ns() - self.last.get(key, 0) >= self.interval_ns:
                self.publish(key)

    def publish(self, key: str) -> None:
        self.dirty.discard(key)
        self.last[key] = time.monotonic_ns()  # the moment of publishing: spacing is measured from it
        published = time.time_ns()
        inst = processor.instruments.get(key)
        if inst is None or inst.status != SYNCED:
            return
        venue, symbol = split_key(key)
        value = inst.book.aggregates(self.levels)
        value.update({
            "venue": venue, "instrument": symbol, "seq": inst.seq, "epoch": inst.counters["epoch"],
            "ts_exchange": inst.ts_exchange,
            "ts_recv": inst.ts_recv, "ts_published": published,
        })
        _send(book_depth, key, value)


depth = DepthPublisher(settings.depth_interval_ms, settings.depth_levels)


@app.timer(interval=max(settings.depth_interval_ms / 2000.0, 0.01))
async def _flush_depth() -> None:
    depth.flush()


@app.agent(raw, name="books")
async def books_agent(stream: StreamT) -> None:
    for topic in OUTPUTS:
        await topic.maybe_declare()
    async for event in stream.events():
        handle(event)


def handle(event: EventT) -> None:
    """One raw record: applied, then counted as handled (what offset commits may cover)."""
    try:
        _apply(event)
    finally:
        handled.handled(event.message.tp, event.message.offset)


def _apply(event: EventT) -> None:
    """Guarded: nothing escapes to faust (which would ack and stop)."""
    msg = event.message
    key = msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else str(msg.key)
    venue = key.partition(":")[0]
    metrics.count(f"frames.{venue}")
    try:
        headers = header_map(msg.headers)
        out = processor.handle(key, event.value, headers, msg.offset)
        if out.dead is not None:
            _dead(event, key, *out.dead)
        inst = out.inst
        if inst is None or out.redelivered:
            if out.redelivered:
                metrics.count("redelivered")
            return
        if out.fx.changed():
            _persist(key, inst, out.fx)
            _publish(out, inst, int(headers.get("ts", b"0") or 0))
    except Exception as exc:  # one bad record must not stop every book on this worker
        log.exception("internal error on %s %s:%s@%s", key, msg.topic, msg.partition, msg.offset)
        metrics.count("internal_errors")
        _dead(event, key, "internal-error", f"{type(exc).__name__}: {exc}")
        inst = processor.instruments.get(key)
        if inst is not None and inst.status == SYNCED:
            fx = Effects()
            inst.connection_event("internal error", type(exc).__name__, fx)
            try:
                _persist(key, inst, fx)
                _publish(Outcome(key, inst, fx), inst, 0)
            except Exception:
                log.exception("could not mark %s stale after an internal error", key)
