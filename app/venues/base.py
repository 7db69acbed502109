"""The shared venue interfaces: what every venue module provides, without I/O.

An :class:`Adapter` answers three questions about a verbatim frame:

* ``route``: which instrument keys is this frame about (for keying the raw topic)?
* ``parse``: what book updates does it carry for one instrument?
* ``conn_seq``: does the venue number frames per connection (Coinbase ``sequence_num``)?

A :class:`SyncRule` says how the venue's updates follow each other (:class:`Continuity`),
how a REST snapshot joins buffered updates, and how to checksum a book; ``app.sync`` asks
it and names no venue. The socket, reconnect and REST code lives in ``app.ingest``.

Shape helpers (``as_int``, ``levels``, ``num_str``, ``ms_to_ns``, ``rfc3339_ns``) raise only
:class:`~app.errors.FrameError`: adapters build on them so that any bad frame is a
``FrameError`` from the adapter itself.
"""

from __future__ import annotations

import calendar
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from app import book_core
from app.decimals import decimal_text
from app.errors import FrameError
from app.market.instruments import InstrumentListParser
from app.market.records import Ticker, Trade
from app.venues import session

#: A price level as the venue sent it: (price, size), both decimal strings; size "0" deletes.
Level = tuple[str, str]


class Kind(enum.StrEnum):
    """What a raw record holds (header ``kind``)."""

    WS = "ws"  # a WebSocket frame, verbatim
    REST = "rest"  # a REST response body, verbatim (Binance depth snapshot)
    CONN = "conn"  # a connection event written by ingestion/replay (gap, reconnect)


class Continuity(enum.StrEnum):
    """How an update follows the last one applied (:meth:`SyncRule.continuity`)."""

    OK = "ok"  # it follows: apply it
    DUPLICATE = "duplicate"  # already applied (a venue repeat or a Kafka redelivery): ignore it
    GAP = "gap"  # something is missing: the book is stale until a fresh snapshot


@dataclass(slots=True)
class BookUpdate:
    """One normalised order-book message for one instrument."""

    snapshot: bool  # replaces the whole book
    seq: int  # the venue's sequence of this update (u, change_id, seqId, sequence_num)
    # (a list; from a typed reader, the book core's levels read in place: ``raw_levels``)
    bids: Sequence[Level] = field(default_factory=list)
    asks: Sequence[Level] = field(default_factory=list)
    first: int | None = None  # Binance U (first update id in the event)
    prev: int | None = None  # pu / prev_change_id / prevSeqId
    ts_exchange: int = 0  # venue timestamp, ns since epoch (0 if the venue gives none)
    checksum: int | None = None  # OKX signed CRC32 of the top 25 levels (None/0: not sent)
    restart: bool = False  # Bybit u == 1: the venue restarted the book


class Adapter(Protocol):
    """Frames to normalised updates, pure (registered in ``app.venues.VENUE_TABLE``)."""

    venue: str

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        """Venue symbols this frame concerns ([] for acks, heartbeats, other venues' data)."""
        ...

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        """Book updates in ``frame`` for ``symbol`` ([] when it carries none). FrameError if bad."""
        ...

    def conn_seq(self, frame: bytes) -> int | None:
        """Connection-wide sequence number of this frame, for venues that have one."""
        ...


class MarketParser(Protocol):
    """Frames to trades and tickers, pure (``Venue.market``): ``([], [])`` for any other frame,
    cheaply (a book frame must not pay for a second JSON parse)."""

    def parse_market(self, kind: Kind, frame: bytes, symbol: str) -> tuple[list[Trade], list[Ticker]]:
        ...


class VenueMarketParser(Protocol):
    """A venue-wide channel carrying fields of many instruments (dYdX ``v4_markets``): its frames
    are keyed ``<venue>:`` (once, not once per instrument named) and each ticker names its
    instrument (``Ticker.symbol``); ``[]`` cheaply for any other frame (``Venue.venue_market``)."""

    def parse_venue_market(self, kind: Kind, frame: bytes) -> list[Ticker]:
        ...


def channel_prefix(frame: bytes, marks: tuple[bytes, ...], window: int = 160) -> bool:
    """Does one of ``marks`` (a channel name as it appears in the venue's JSON) occur in the
    first ``window`` bytes of ``frame``? Venues name the channel before the data."""
    # find, not ``mark in head``: bytes' ``in`` first tries its operand as an integer and formats
    # a TypeError to throw away (1.5 % of a books-only worker's CPU, under perf); find within the
    # window, not in a slice of it; no generator, no map: 0.18 µs for one mark, 0.67 with them
    for mark in marks:  # noqa: SIM110 - any() would make a generator per call
        if frame.find(mark, 0, window) >= 0:
            return True
    return False


class LevelsView(Protocol):
    """What a rule may read of a book (``app.book.OrderBook``)."""

    def levels(self, n: int) -> tuple[list[Level], list[Level]]:
        """The best ``n`` levels of each side, best first, as the venue's text."""
        ...


class SyncRule(Protocol):
    """A venue's sequencing rule: ``app.sync.Instrument`` asks it and names no venue.

    Snapshots in the stream (``snapshot_from_rest`` False): a snapshot replaces the book unless
    ``snapshot_repeated`` says it is one already applied, and every later update is judged by
    ``continuity(last seq, update)``.

    Snapshots from REST (``snapshot_from_rest`` True, Binance): updates are buffered until
    the snapshot (id L) arrives. Buffered updates it already ``contained`` are dropped; if
    the first one left shows the snapshot is too old (``snapshot_older``), another is
    fetched; else the snapshot is applied, the first update after it must ``join`` it, and
    the ones after that are judged by ``continuity``.
    """

    snapshot_from_rest: bool
    #: A crossed book is resolved by the venue's own rule rather than made stale: each level
    #: remembers the sequence of the update that set it, and the crossing levels of the side set
    #: earlier give way (equal: the sizes net). ``app.book.uncross``; dYdX only.
    uncross_by_age: bool
    #: A snapshot received more than this after its venue time (``ts_exchange``) leaves the book
    #: stale (held, not published) until one arrives in time: the age of the venue's own time is
    #: what says the book is current (Hyperliquid block times). 0: not judged.
    max_lag_ns: int

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        """Does ``upd`` follow the update (or snapshot) with sequence ``last``?"""
        ...

    def snapshot_repeated(self, last: int | None, upd: BookUpdate, synced_same_conn: bool) -> bool:
        """Is the snapshot ``upd`` one already applied (ignored, counted as a duplicate)?
        ``synced_same_conn``: the book is synced and ``upd`` came on the connection of its last
        snapshot."""
        ...

    def contained(self, snapshot_id: int, upd: BookUpdate) -> bool:
        """Is ``upd`` already part of the snapshot with id ``snapshot_id``?"""
        ...

    def joins(self, snapshot_id: int, upd: BookUpdate) -> bool:
        """May ``upd`` (not contained) be the first update applied after that snapshot?"""
        ...

    def snapshot_older(self, snapshot_id: int, upd: BookUpdate) -> bool:
        """Is the snapshot older than the buffered ``upd`` it does not contain (fetch again)?"""
        ...

    def checksum(self, book: LevelsView) -> int | None:
        """The venue's checksum of ``book``, compared with ``BookUpdate.checksum``; None if it
        sends none."""
        ...


class SequenceRule:
    """Base of the rules: snapshots in the stream, no checksum. Subclasses define ``continuity``.

    The REST-join questions default to what ``continuity`` answers against the snapshot's
    sequence, which is what they mean for a venue whose snapshots arrive in the stream.
    """

    snapshot_from_rest = False
    uncross_by_age = False
    max_lag_ns = 0

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        raise NotImplementedError

    def snapshot_repeated(self, last: int | None, upd: BookUpdate, synced_same_conn: bool) -> bool:
        """A synced book's snapshot repeated on its own connection, at or before the sequence last
        applied (a venue restart, or a snapshot without a sequence, ``-1``, is never a repeat)."""
        return (synced_same_conn and not upd.restart and last is not None and upd.seq != -1
                and upd.seq <= last)

    def contained(self, snapshot_id: int, upd: BookUpdate) -> bool:
        return self.continuity(snapshot_id, upd) is Continuity.DUPLICATE

    def joins(self, snapshot_id: int, upd: BookUpdate) -> bool:
        return self.continuity(snapshot_id, upd) is Continuity.OK

    def snapshot_older(self, snapshot_id: int, upd: BookUpdate) -> bool:
        return self.continuity(snapshot_id, upd) is Continuity.GAP

    def checksum(self, book: LevelsView) -> int | None:
        return None

    def __repr__(self) -> str:
        return type(self).__name__

    @staticmethod
    def repeated(last: int | None, upd: BookUpdate) -> bool:
        """``upd`` is at or before ``last``: a repeat of what was applied."""
        return last is not None and upd.seq <= last


class ChainedRule(SequenceRule):
    """Each update names the sequence of the one before it (``BookUpdate.prev``): it follows
    when that is the sequence last applied."""

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        if self.repeated(last, upd):
            return Continuity.DUPLICATE
        return Continuity.OK if upd.prev == last else Continuity.GAP


@dataclass(frozen=True, slots=True)
class Venue:
    """Everything about one venue id, as registered in ``app.venues.VENUE_TABLE``."""

    id: str  # the venue id: raw topic ``raw.<id>``, instrument keys ``<id>:<symbol>``
    adapter: Adapter  # the pure adapter (callers use ``app.venues.adapter(id)``: it is guarded)
    rule: SyncRule  # how its updates follow each other (``app.sync``)
    protocol: type[session.Protocol]  # what a connection sends (``app.ingest``)
    endpoint: session.Endpoint  # the live endpoint (``FEED=live``; ``FEEDS_FILE`` overrides it)
    sim_ws_path: str  # the simulator's WebSocket path (``FEED=sim``)
    sim_rest_path: str = ""  # the simulator's REST snapshot path, for rules with REST snapshots
    market: MarketParser | None = None  # trades and tickers (``app.market``)
    instrument_lists: InstrumentListParser | None = None  # REST instrument lists (``app.market.instruments``)
    venue_market: VenueMarketParser | None = None  # tickers from a venue-wide channel (dYdX v4_markets)


def opt_str(value: Any) -> str | None:
    """An optional venue number as decimal text (None, "" → None)."""
    return None if value is None or value == "" else num_str(value)


def named_objects(items: Any, field: str) -> list[dict[str, Any]] | None:
    """The objects of a JSON array whose ``field`` is a non-empty string (others skipped); None
    when ``items`` is not an array. For venue lists (instruments, products) read leniently."""
    if not isinstance(items, list):
        return None
    return [d for d in items if isinstance(d, dict) and isinstance(d.get(field), str) and d[field]]


def ms_to_ns(value: Any) -> int:
    """Venue millisecond timestamp (int or numeric string) to integer nanoseconds."""
    if value is None or value == "":
        return 0
    try:
        return int(value) * 1_000_000
    except (TypeError, ValueError):
        raise FrameError("bad-timestamp", repr(value)[:40]) from None


def num_str(value: Any) -> str:
    """A JSON number or numeric string as a plain decimal string, never an exponent.

    Venues that send numbers (Deribit) are parsed to float by orjson; ``repr`` of a float is
    the shortest string that reads back to it, which is the venue's own text for any price
    with up to 15 significant digits. Integral values print without a fraction.
    """
    if isinstance(value, str):
        if not value or value[0] not in "0123456789-." or "e" in value or "E" in value:
            try:
                return _plain(Decimal(value))
            except ArithmeticError:
                raise FrameError("bad-number", repr(value)[:40]) from None
        return value
    if isinstance(value, bool):
        raise FrameError("bad-number", repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise FrameError("bad-number", repr(value))
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return _plain(Decimal(repr(value)))
    raise FrameError("bad-number", repr(value)[:40])


#: Largest decimal exponent a price or size may have (1e999999999 would print a gigabyte).
MAX_EXPONENT = 64


def _plain(d: Decimal) -> str:
    if not d.is_finite() or abs(d.adjusted()) > MAX_EXPONENT:
        raise FrameError("bad-number", str(d)[:40])
    return decimal_text(d)


#: The book core's reader of levels in the venues' own form (``plain_levels`` of
#: ``app.book_core`` or the compiled core): ``app.book`` sets it to the core that runs.
plain_levels: Callable[[Any], list[Level] | None] = book_core.plain_levels
#: And its reader of a side's levels from the frame's own bytes (``raw_levels``): a sequence of
#: (price, size) — the compiled core's reads them in place — or None (read the general way).
raw_levels: Callable[[Any], Sequence[Level] | None] = book_core.raw_levels


def levels(raw: Any, what: str) -> list[Level]:
    """``[[price, size, ...], ...]`` with string or number fields → list of (price, size)."""
    if not isinstance(raw, list):
        raise FrameError("bad-levels", f"{what} is not a list")
    fast = plain_levels(raw)  # every entry a list of at least two strings, kept verbatim
    if fast is not None:
        return fast
    out: list[Level] = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) < 2:
            raise FrameError("bad-levels", f"{what} entry {str(item)[:40]}")
        px, sz = item[0], item[1]
        if type(px) is str and type(sz) is str:  # fast path: venue strings kept verbatim
            out.append((px, sz))
        else:
            out.append((num_str(px), num_str(sz)))
    return out


def rfc3339_ns(text: Any) -> int:
    """``2026-08-09T21:05:48.505350477Z`` → ns since epoch (nanosecond digits kept)."""
    if not isinstance(text, str) or len(text) < 20 or text[10] != "T":
        raise FrameError("bad-timestamp", repr(text)[:40])
    try:
        date, _, clock = text.rstrip("Z").partition("T")
        whole, _, frac = clock.partition(".")
        y, mo, d = (int(x) for x in date.split("-"))
        h, mi, s = (int(x) for x in whole.split(":"))
        seconds = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
        return seconds * 1_000_000_000 + int((frac + "000000000")[:9] or 0)
    except (ValueError, OverflowError):
        raise FrameError("bad-timestamp", repr(text)[:40]) from None


def as_int(value: Any, what: str) -> int:
    """An integer sequence field, accepting numeric strings; FrameError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        try:
            return int(value)
        except ValueError:  # "--1", "²", or more digits than int() reads
            pass
    raise FrameError("bad-sequence", f"{what}={str(value)[:30]}")
