"""``book.top``, ``book.depth``, ``book.status``, ``control.resync``, ``raw.deadletter``: what
the book agent publishes about each instrument's order book."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import UNSET, Meta, UnsetType

from app.records.common import Dec, Level, Ns, Record, Symbol, Venue

EpochSeq = "(epoch, seq) only grows per instrument: a consumer drops a record whose (epoch, seq) is not above the last"


class BookTop(Record, kw_only=True):
    """One record per change of the best bid or ask (price or size). Key: the instrument key."""

    venue: Venue
    instrument: Symbol
    bid_px: Dec | None
    bid_sz: Dec | None
    ask_px: Dec | None
    ask_sz: Dec | None
    seq: Annotated[int, Meta(description="venue sequence of the update that produced it")]
    epoch: Annotated[int, Meta(description=f"sync epoch of the book; {EpochSeq}")]
    ts_exchange: Annotated[int, Meta(description="the venue's event time, ns (0 when it gives none)")]
    ts_recv: Annotated[int, Meta(description="receive time of the frame, ns")]
    ts_published: Annotated[int, Meta(description="when the worker published it, ns")]


class Band(Record, kw_only=True):
    """Cumulative size within a band around the mid."""

    bid: Dec
    ask: Dec


class Aggregates(Record, kw_only=True):
    """A book's depth view: top levels per side, mid, spread, microprice, imbalance, bands."""

    bids: Annotated[list[Level], Meta(description="best first")]
    asks: Annotated[list[Level], Meta(description="best first")]
    mid: Dec | None = None
    spread: Dec | None = None
    spread_bps: Dec | None = None
    microprice: Dec | None = None
    imbalance: Annotated[Dec | None, Meta(description="(bid size − ask size) / total over the levels published")] = None
    bands_bps: Annotated[dict[str, Band], Meta(description="per band width in bps: cumulative sizes within it")] = {}


class BookDepth(Aggregates, kw_only=True):
    """The top DEPTH_LEVELS levels per side with aggregates, at most every DEPTH_INTERVAL_MS per
    instrument. Key: the instrument key."""

    venue: Venue
    instrument: Symbol
    seq: int | None
    epoch: int
    ts_exchange: int
    ts_recv: int
    ts_published: int


class BookStatus(Record, kw_only=True):
    """Every state transition of a book: ``synced``, ``stale``, ``resync-requested``. Key: the
    instrument key."""

    venue: Venue
    instrument: Symbol
    state: Annotated[str, Meta(description="synced | stale | resync-requested")]
    reason: Annotated[str, Meta(description="why (gap, checksum, crossed, reset, a refused subscription …)")]
    seq: int | None
    ts: Annotated[int, Meta(description="when it was published, ns")]
    counters: Annotated[dict[str, int], Meta(description="the book's counters: applied, levels, gaps …")]
    ts_recv: Annotated[Ns | None, Meta(description="receive time of the frame that caused it; null: a timer's retry")]


class ResyncRequest(Record, kw_only=True):
    """Ask ingestion for a fresh snapshot of one instrument. Key: the instrument key."""

    venue: Venue
    instrument: Symbol
    reason: str
    seq: int | None
    ts: Ns


class DeadLetter(Record, kw_only=True):
    """Input that could not be used, with where it came from. Key: the instrument key (or the
    raw record's key)."""

    venue: Venue
    instrument: Symbol | None
    reason: Annotated[str, Meta(description="e.g. bad-record-line, parse-error, unknown-instrument")]
    detail: str
    topic: str
    partition: int
    offset: int
    index: Annotated[int, Meta(description="the frame's position in its raw record (0 for a v1 record)")]
    headers: dict[str, str]
    frame: Annotated[str, Meta(description="the frame (invalid UTF-8 replaced)")]


class BookCheckpoint(Record, kw_only=True):
    """A book's whole state at a raw position, every BOOK_CHECKPOINT_INTERVAL_S per instrument:
    where ``book-at`` starts rebuilding a past book instead of replaying the whole raw topic.
    Key: the instrument key."""

    key: Annotated[str, Meta(description="instrument key <venue>:<symbol>")]
    raw_topic: Annotated[str, Meta(description="the raw topic without TOPIC_PREFIX, e.g. raw.okx")]
    raw_partition: int
    next_offset: Annotated[int, Meta(description="every frame of the raw records before this offset is in the state")]
    state: Annotated[dict[str, Any], Meta(description="the book's state row (sync state, seq, counters …)")]
    bids: Annotated[list[Level], Meta(description="every level, best first")]
    asks: Annotated[list[Level], Meta(description="every level, best first")]
    buffer: Annotated[list[str], Meta(description="deltas buffered until a snapshot (Binance), base64 frames")] = []
    ids: Annotated[list[tuple[str, str, int]] | UnsetType,
                   Meta(description="[side b|a, price, sequence of the update that set the level] of every level, "
                                    "for venues that uncross by age (dYdX message_id); absent for the others")] = UNSET
    ts_recv: Annotated[Ns, Meta(description="receive time of the last frame applied (0: none yet)")]
    ts: Annotated[Ns, Meta(description="when the worker wrote it")]
