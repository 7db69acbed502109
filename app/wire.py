"""Every record bookstream reads or writes on Kafka, and every topic name: one home, no Faust.

Raw records (topics ``raw.<venue>``), README "Raw record format"
-----------------------------------------------------------------

**Version 2** (written by ``ingest``, ``record --produce`` and ``replay``): several frames in one
Kafka record. Header ``v`` = ``2``. The value is JSON Lines, one object per frame::

    {"key":"okx:BTC-USDT","ts":1723161255030314667,"kind":"ws","conn":"okx#1","frame":"<verbatim text>"}

``key`` is the frame's instrument key (``<venue>:`` for a frame about no instrument: acks,
heartbeats), ``ts`` the receive time in integer nanoseconds, ``kind`` ``ws`` | ``rest`` |
``conn``, ``conn`` the connection id, and ``frame`` the frame exactly as received (a frame
that is not UTF-8 text is carried as ``"frame_b64"`` instead). Every frame of one record
belongs to the record's partition: the partition Kafka's default partitioner gives the
frame's instrument key (murmur2; an option's chain key, :func:`partition_for`), so each
instrument's frames stay in one partition, in order. Frames of several instruments of a
partition share a record: a thousand light instruments batch as well as one deep one.
The record key is the instrument key when all its frames are about one instrument, else
``<venue>:*``; readers use the per-frame ``key``.
Read one with ``kcat -C -t raw.okx -f '%s\\n' | jq -c .`` or, in Python,
``[json.loads(line) for line in value.splitlines()]``.

**Version 1** (still read; anything may keep producing it): one frame per record, the value
is the frame verbatim, the key its instrument key, headers ``ts``, ``kind`` and ``conn``.

Every record's definition (raw lines included) is in :mod:`app.records`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import msgspec
from aiokafka.partitioner import murmur2
from msgspec import UNSET, UnsetType

from app.market.symbols import partition_key
from app.records import (  # the topic names (without TOPIC_PREFIX) live with their records
    ALERTS,
    BOOK_CHECKPOINTS,
    BOOK_DEPTH,
    BOOK_STATUS,
    BOOK_TOP,
    COLLATERAL,
    CONTROL_RESYNC,
    DEADLETTER,
    FEED_STATUS,
    HEDGE_FILLS,
    NBBO,
    OPTIONS_CHAIN,
    POSITIONS,
    REF_INSTRUMENTS,
    RISK_DEPTH,
    RISK_EXPOSURE,
    RISK_HEDGE,
    RISK_MARGIN,
    RISK_RULES,
    RISK_SCENARIOS,
    TICKER,
    TRADES,
    ConnEvent,
    RawLine,
    encode,
)
from app.venues.base import Kind

#: Header and value of a version-2 raw record.
FORMAT_HEADER = "v"
FORMAT_V2 = b"2"
V2_HEADERS: list[tuple[str, bytes]] = [(FORMAT_HEADER, FORMAT_V2)]

OUTPUT_TOPICS = (BOOK_TOP, BOOK_DEPTH, BOOK_STATUS, CONTROL_RESYNC, DEADLETTER, TRADES, TICKER, FEED_STATUS,
                 OPTIONS_CHAIN, REF_INSTRUMENTS, BOOK_CHECKPOINTS)
#: Compacted topics other than the changelog: one record per key is kept forever.
COMPACTED = {"cleanup.policy": "compact"}


def raw_topic(venue: str) -> str:
    """``raw.<venue>`` (without TOPIC_PREFIX)."""
    return f"raw.{venue}"


def changelog_topic(app_id: str, table: str = "books") -> str:
    """The table's changelog: ``<APP_ID>-<table>-changelog`` (no TOPIC_PREFIX, as Kafka Streams names them)."""
    return f"{app_id}-{table}-changelog"


def assignment_topic(app_id: str) -> str:
    """``<APP_ID>-partitions``: the topic the worker's Faust agent subscribes to. It holds no
    records; Faust's co-partitioning assignor hands out its partitions, and partition p of it is
    table partition p and partition p of every raw topic (``app.rawreader``)."""
    return f"{app_id}-partitions"


class Topics:
    """Topic names with TOPIC_PREFIX applied, for one deployment."""

    def __init__(self, prefix: str, venues: Sequence[str], app_id: str) -> None:
        self.prefix = prefix
        self.venues = tuple(venues)
        self.raw_by_venue = {v: prefix + raw_topic(v) for v in self.venues}
        self.raw = tuple(self.raw_by_venue.values())
        self.top, self.depth, self.status = prefix + BOOK_TOP, prefix + BOOK_DEPTH, prefix + BOOK_STATUS
        self.resync, self.deadletter = prefix + CONTROL_RESYNC, prefix + DEADLETTER
        self.trades, self.ticker, self.feed_status = prefix + TRADES, prefix + TICKER, prefix + FEED_STATUS
        self.chain, self.instruments = prefix + OPTIONS_CHAIN, prefix + REF_INSTRUMENTS
        self.checkpoints = prefix + BOOK_CHECKPOINTS
        self.outputs = (self.top, self.depth, self.status, self.resync, self.deadletter, self.trades, self.ticker,
                        self.feed_status, self.chain, self.instruments, self.checkpoints)
        self.positions, self.rules, self.risk_depth = prefix + POSITIONS, prefix + RISK_RULES, prefix + RISK_DEPTH
        self.exposure, self.scenarios, self.hedge = prefix + RISK_EXPOSURE, prefix + RISK_SCENARIOS, prefix + RISK_HEDGE
        self.alerts, self.nbbo = prefix + ALERTS, prefix + NBBO
        self.collateral, self.fills, self.margin = prefix + COLLATERAL, prefix + HEDGE_FILLS, prefix + RISK_MARGIN
        self.risk = (self.positions, self.rules, self.risk_depth, self.exposure, self.scenarios, self.hedge,
                     self.alerts, self.nbbo, self.collateral, self.fills, self.margin)
        self.changelog = changelog_topic(app_id)
        self.assignment = assignment_topic(app_id)

    def name(self, topic: str) -> str:
        return self.prefix + topic

    def compacted(self) -> dict[str, dict[str, str]]:
        """Compacted topics and their configs (``ref.instruments``: every version kept; ``positions``,
        ``collateral``, ``hedge.fills`` and ``risk.rules``: the latest per key)."""
        return {self.instruments: dict(COMPACTED), self.positions: dict(COMPACTED), self.rules: dict(COMPACTED),
                self.collateral: dict(COMPACTED), self.fills: dict(COMPACTED)}

    @property
    def all(self) -> list[str]:
        """Every topic bookstream reads or writes except the changelog (created compacted)."""
        return [*self.raw, *self.outputs, *self.risk]


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition of an instrument's raw records, table rows and outputs (co-partitioning):
    what Kafka's default partitioner gives its :func:`~app.market.symbols.partition_key` — the
    instrument key itself, except for an option, which goes with its expiry's chain (and future)
    so that the options chain is built where all its options are."""
    return _partition(key if isinstance(key, str) else key.decode(), partitions)


@functools.lru_cache(maxsize=1 << 16)
def _partition(key: str, partitions: int) -> int:
    """Kept per key: aiokafka's murmur2 is pure Python (~3 µs a key here), and every frame, output
    and depth record asks for its instrument's partition."""
    return (murmur2(partition_key(key).encode()) & 0x7FFFFFFF) % partitions


# -- raw frames ------------------------------------------------------------------------
@dataclass(slots=True)
class RawFrame:
    """One received frame (or connection event) about one instrument, as carried on Kafka."""

    key: str  # instrument key <venue>:<symbol>; "<venue>:" when about no instrument
    ts: int  # receive time, ns since the epoch
    kind: Kind
    conn: str  # connection id, unique within an ingestion/replay run
    data: bytes  # the frame, verbatim

    @property
    def venue(self) -> str:
        return self.key.partition(":")[0]


class BadFrame(NamedTuple):
    """A line of a v2 record (or a v1 record) that is not a usable frame: a dead letter."""

    frame_index: int  # position in the record (0 for v1)
    key: str  # the instrument key if it could be read, else the record key
    reason: str
    detail: str
    data: bytes  # the offending line or value


def encode_frame(frame: RawFrame) -> bytes:
    """One JSON line of a v2 record (no newline)."""
    try:
        return encode(RawLine(key=frame.key, ts=frame.ts, kind=frame.kind.value, conn=frame.conn,
                              frame=frame.data.decode()))
    except UnicodeDecodeError:
        return encode(RawLine(key=frame.key, ts=frame.ts, kind=frame.kind.value, conn=frame.conn,
                              frame_b64=base64.b64encode(frame.data).decode()))


def record_key(keys: Iterable[str]) -> bytes:
    """The Kafka key of a v2 record holding frames of ``keys`` (informational only)."""
    first: str | None = None
    for key in keys:
        if first is None:
            first = key
        elif key != first:
            return first.partition(":")[0].encode() + b":*"
    return (first or "").encode()


def encode_record(lines: Sequence[bytes]) -> bytes:
    """A v2 record value from lines made by :func:`encode_frame`."""
    return b"\n".join(lines)


def header_map(headers: object) -> dict[str, bytes]:
    """Kafka headers as a dict, whatever shape the client gives (list of pairs or mapping)."""
    if not headers:
        return {}
    if isinstance(headers, Mapping):
        return {str(k): bytes(v or b"") for k, v in headers.items()}
    return {str(k): bytes(v or b"") for k, v in headers}  # type: ignore[attr-defined]


def v1_headers(ts: int, kind: Kind, conn: str) -> list[tuple[str, bytes]]:
    """Headers of a version-1 raw record (one frame, value verbatim)."""
    return [("ts", str(ts).encode()), ("kind", kind.value.encode()), ("conn", conn.encode())]


def decode_record(key: bytes | None, value: bytes | None, headers: object) -> list[RawFrame | BadFrame]:
    """The frames of a raw record (v2, or v1 when the ``v`` header is absent), in order; a line
    that cannot be read is a :class:`BadFrame` in its place, the other lines still count."""
    hdrs = header_map(headers)
    record_key_text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key or "")
    data = value if isinstance(value, bytes) else b""
    version = hdrs.get(FORMAT_HEADER)
    if version is None:
        return [_decode_v1(record_key_text, data, hdrs)]
    if version != FORMAT_V2:
        return [BadFrame(0, record_key_text, "bad-record-version", f"v={version[:10]!r}", data)]
    return _decode_v2(data, record_key_text)


def _decode_v2(data: bytes, record_key_text: str) -> list[RawFrame | BadFrame]:
    """A v2 record's frames: every line at once (msgspec's ``decode_lines``, no split, no call per
    line) when each of them is a good frame line; otherwise line by line (:func:`_decode_each`),
    which says which lines are bad and why. A line of nothing but whitespace is no frame, and
    either way it is skipped (``decode_lines`` skips spaces, tabs and carriage returns; a line
    of other whitespace fails it, and the line-by-line reading skips it too)."""
    try:
        lines = _RAW_LINE.decode_lines(data)
    except msgspec.DecodeError:  # (a ValidationError too): some line is bad
        lines = None
    if lines is not None:
        with contextlib.suppress(ValueError, binascii.Error):  # a line with no frame: line by line
            return [_frame_of(obj) for obj in lines]
    return _decode_each(data, record_key_text)


def _decode_each(data: bytes, record_key_text: str) -> list[RawFrame | BadFrame]:
    return [_decode_line(i, line, record_key_text) for i, line in enumerate(data.split(b"\n")) if line.strip()]


def _decode_v1(key: str, data: bytes, hdrs: dict[str, bytes]) -> RawFrame | BadFrame:
    try:
        kind = Kind(hdrs.get("kind", b"ws").decode())
        ts = int(hdrs.get("ts", b"0") or 0)
    except ValueError:
        return BadFrame(0, key, "bad-headers", repr(hdrs)[:200], data)
    return RawFrame(key, ts, kind, hdrs.get("conn", b"").decode("utf-8", "replace"), data)


_KINDS = {k.value: k for k in Kind}


_RAW_LINE = msgspec.json.Decoder(RawLine)


def _frame_of(obj: RawLine) -> RawFrame:
    """The frame of a decoded line; ValueError (or binascii.Error) when it carries none."""
    if isinstance(obj.frame, str):
        data = obj.frame.encode()
    elif isinstance(obj.frame_b64, str):
        data = base64.b64decode(obj.frame_b64, validate=True)
    else:
        raise ValueError("neither frame nor frame_b64")
    return RawFrame(obj.key, obj.ts, _KINDS[obj.kind], obj.conn, data)


def _decode_line(index: int, line: bytes, record_key_text: str) -> RawFrame | BadFrame:
    try:
        return _frame_of(_RAW_LINE.decode(line))
    except (msgspec.DecodeError, TypeError, ValueError, binascii.Error) as exc:
        return BadFrame(index, record_key_text, "bad-record-line", f"{type(exc).__name__}: {exc}"[:200], line)


# -- downstream records: app.records ---------------------------------------------------------
def conn_event(event: str, detail: str, feed: str | UnsetType = UNSET, channel: str | UnsetType = UNSET) -> bytes:
    """The value of a ``conn`` frame written by ingestion/replay: ``gap`` or ``reset`` of the
    connection, or a subscription's ``refused``, ``unconfirmed``, ``silent`` or ``recovered``
    (with its ``feed`` — book, or the channel's name — and ``channel``)."""
    return encode(ConnEvent(event=event, detail=detail, feed=feed, channel=channel))
