"""Per-instrument sync state machine, no I/O, no venue names.

States (:class:`BookState`): ``waiting`` (no snapshot yet) → ``synced`` → ``stale`` (gap,
checksum mismatch, crossed book, connection reset) → ``synced`` again after a fresh
snapshot. While not synced nothing is published for the book.

Each instrument asks its venue's :class:`~app.venues.base.SyncRule` (``app.venues.rule``),
defined in the venue's module:

* snapshots in the stream: a snapshot replaces the book; each later update is applied,
  ignored or a gap as ``rule.continuity(last seq, update)`` says;
* snapshots from REST (``rule.snapshot_from_rest``): deltas are buffered (bounded) until
  the snapshot, which drops those it ``contained``, is refused when ``snapshot_older`` than
  the buffer, and must be ``joined`` by the first delta applied after it;
* a snapshot received more than ``rule.max_lag_ns`` after its venue time leaves the book stale
  (Hyperliquid: the age of the block time says whether the book is current), and so does no
  snapshot at all for that long (:meth:`Instrument.age`, asked by the book timer);
* after every applied update the book must match ``rule.checksum`` when the update
  carries a checksum, and must not be crossed — unless the rule resolves a crossed book by age
  (``rule.uncross_by_age``, dYdX): then each level remembers the sequence of the update that set
  it (``app.book.LevelIds``, persisted beside the levels) and ``app.book.uncross`` applies the
  venue's rule instead of making the book stale.

A venue may also say outright that an instrument's stream broke (dYdX "could not fetch data
for subscription", ``app.errors.VenueFault``): :meth:`Instrument.venue_fault` makes the book
stale with the venue's words and requests a resync, whatever its state.

Duplicates (at-least-once redelivery, venue repeats) are recognised by sequence and
ignored. :meth:`Instrument.step` returns :class:`Effects`: what to persist and publish.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from app.book import ASK, BID, Change, LevelIds, OrderBook, Top, uncross
from app.market.cursor import TradeCursor
from app.venues.base import BookUpdate, Continuity, SyncRule


class BookState(enum.StrEnum):
    """An instrument's sync state; the values are what ``book.status`` and the web view show."""

    WAITING = "waiting"  # no snapshot yet
    SYNCED = "synced"  # in sync with the venue: published
    STALE = "stale"  # gap, checksum mismatch, crossed book, bad frame: waiting for a resync


WAITING, SYNCED, STALE = BookState.WAITING, BookState.SYNCED, BookState.STALE
#: A book channel's subscription failed (``app.ingest.connection``).
SUBSCRIPTION_FAILURES = frozenset({"refused", "unconfirmed", "silent"})
COUNTERS = ("applied", "levels", "gaps", "resyncs", "duplicates", "skipped", "buffered", "dropped", "epoch")


_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (hot path)


class Transition(NamedTuple):
    """A state change (or a new reason in the same state), for ``book.status``."""

    state: BookState
    reason: str


class TopChange(NamedTuple):
    """A changed top of book, for ``book.top``."""

    seq: int  # the venue sequence of the update that produced it
    ts_exchange: int  # venue timestamp of that update, ns
    top: Top


@dataclass(slots=True, init=False)
class Effects:
    """What one step changed, for the caller to persist and publish."""

    #: the level changes the step made (see :data:`app.book.Change`), when ``levels`` asks for them
    changes: list[Change]
    buffer_put: list[tuple[int, bytes]]
    buffer_del: list[int]
    transitions: list[Transition]
    resync: str | None  # reason, when a resync must be requested
    applied: bool  # the book moved (top/depth may have changed)
    tops: list[TopChange]
    #: (side, persisted price, sequence of the update that set the level; None: the level is gone):
    #: for rules with ``uncross_by_age`` only (None for every other venue: nothing to build)
    ids: list[tuple[str, str, int | None]] | None
    #: list each level change in ``changes``. The worker's steps do not (``app.processor.Outcome``):
    #: the books' sides track their changed levels for the commit themselves, and a tuple per
    #: level update was 7 % of the level loop; a rule that uncrosses by age lists them anyway
    #: (its levels' id rows follow them)
    levels: bool

    def __init__(self, changes: list[Change] | None = None, buffer_put: list[tuple[int, bytes]] | None = None,
                 buffer_del: list[int] | None = None, transitions: list[Transition] | None = None,
                 resync: str | None = None, applied: bool = False, tops: list[TopChange] | None = None,
                 ids: list[tuple[str, str, int | None]] | None = None, levels: bool = True) -> None:
        # written out (``init=False``): one is made per frame, and the generated ``__init__``
        # calls a factory per list (0.54 against 0.35 µs); the defaults are here only
        self.changes = [] if changes is None else changes
        self.buffer_put = [] if buffer_put is None else buffer_put
        self.buffer_del = [] if buffer_del is None else buffer_del
        self.transitions = [] if transitions is None else transitions
        self.resync = resync
        self.applied = applied
        self.tops = [] if tops is None else tops
        self.ids = ids
        self.levels = levels

    def changed(self) -> bool:
        """Did the step change persisted state? (Else the state row need not be rewritten:
        reprocessing such a record after a crash changes nothing either.)"""
        return bool(self.applied or self.changes or self.buffer_put or self.buffer_del
                    or self.transitions or self.resync)


class Instrument:
    """One instrument's book and sync state (persisted as table rows by ``app.state.layout``)."""

    __slots__ = (
        "book", "buffer", "buffer_limit", "conn", "counters", "fresh", "ids", "key", "last_top",
        "reason", "rule", "seq", "status", "trades", "ts_exchange", "ts_recv",
    )

    def __init__(self, key: str, rule: SyncRule, buffer_limit: int = 20_000) -> None:
        self.key = key
        self.rule = rule
        self.buffer_limit = buffer_limit  # BUFFER_MAX_FRAMES
        self.book = OrderBook()
        self.status = BookState.WAITING
        self.reason = "no snapshot yet"
        self.seq: int | None = None
        self.fresh = False  # last applied was a REST snapshot: the next delta must join it
        self.conn = ""
        self.ts_exchange = 0
        self.ts_recv = 0
        self.buffer: list[tuple[BookUpdate, bytes]] = []  # deltas awaiting a REST snapshot
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_top: Top | None = None  # last top emitted (memory only: re-emitted after restart)
        self.trades: TradeCursor | None = None  # trades published so far (``app.market.cursor``)
        #: which update set each level, for a rule that uncrosses by age (None otherwise)
        self.ids: LevelIds | None = LevelIds() if rule.uncross_by_age else None

    # -- transitions ----------------------------------------------------------------
    def _go(self, fx: Effects, status: BookState, reason: str) -> None:
        if status == BookState.STALE and self.status != BookState.STALE:
            self.counters["gaps"] += 1
            self.request_resync(reason, fx)
        if status != self.status or reason != self.reason:
            fx.transitions.append(Transition(status, reason))
        if status != self.status:
            self.last_top = None  # the first top after any transition is always emitted
        self.status, self.reason = status, reason
        if status != BookState.SYNCED:
            self.fresh = False

    def connection_event(self, event: str, detail: str, fx: Effects) -> None:
        """A gap or reset on the connection that carries this instrument, or its book channel
        failed (refused, unconfirmed, silent: then a book not synced says why, too)."""
        reason = f"{event}: {detail}" if detail else event
        if self.status == BookState.SYNCED:
            self._go(fx, BookState.STALE, reason)
        elif self.status == BookState.WAITING and event == "bad frame":
            # the frame refused may have been its snapshot (Deribit's, dYdX's come once, with the
            # subscription): waiting on would be waiting for good. Stale: a resync is requested,
            # and asked again until a snapshot syncs the book (app.retry)
            self._go(fx, BookState.STALE, reason)
        elif event in SUBSCRIPTION_FAILURES:
            self._go(fx, self.status, reason)

    def venue_fault(self, reason: str, fx: Effects) -> None:
        """The venue says this instrument's stream failed (dYdX "Internal error, could not fetch
        data for subscription"): whatever the book's state it is stale for that reason, and a
        resync is requested — again if it was stale already (the resubscription itself failed)."""
        if self.status == BookState.STALE:
            self._go(fx, BookState.STALE, reason)
            self.request_resync(reason, fx)
        else:
            self._go(fx, BookState.STALE, reason)  # requests the resync

    def age(self, now_ns: int, fx: Effects) -> None:
        """A synced book whose last venue time is more than ``rule.max_lag_ns`` old goes stale, though
        no frame came to say so (a venue gone quiet): the book timer asks every book of such a rule
        every second (``Processor.age``). The next snapshot in time makes it synced again."""
        lag = self.rule.max_lag_ns
        if lag and self.status == BookState.SYNCED and self.ts_exchange and now_ns - self.ts_exchange > lag:
            self._go(fx, BookState.STALE, f"no venue time newer than {lag / 1e9:g} s")

    def request_resync(self, reason: str, fx: Effects) -> None:
        fx.resync = reason
        self.counters["resyncs"] += 1

    # -- the step -------------------------------------------------------------------
    def step(self, upd: BookUpdate, frame: bytes, conn: str, ts_recv: int, fx: Effects) -> None:
        """Apply one normalised update (the caller has already checked the offset guard)."""
        if self.rule.snapshot_from_rest:
            self._rest_step(upd, frame, ts_recv, fx)
            return
        if upd.snapshot:
            if self.rule.snapshot_repeated(self.seq, upd, self.status == BookState.SYNCED and conn == self.conn):
                self.counters["duplicates"] += 1
                return
            self.conn = conn
            self._snapshot(upd, ts_recv, fx)
            return
        if self.status != BookState.SYNCED:
            self.counters["skipped"] += 1
            return
        if conn != self.conn:
            self._go(fx, BookState.STALE, f"update from connection {conn} after snapshot on {self.conn}")
            return
        self._follow(upd, ts_recv, fx)

    def _follow(self, upd: BookUpdate, ts_recv: int, fx: Effects) -> None:
        """An update after the first: the rule's continuity decides."""
        verdict = self.rule.continuity(self.seq, upd)
        if verdict is Continuity.DUPLICATE:
            self.counters["duplicates"] += 1
        elif verdict is Continuity.GAP:
            self._gap(upd, fx)
        else:
            self._apply(upd, ts_recv, fx)

    def _gap(self, upd: BookUpdate, fx: Effects) -> None:
        self._go(fx, BookState.STALE, f"gap: expected after {self.seq}, got {self._describe(upd)}")

    @staticmethod
    def _describe(upd: BookUpdate) -> str:
        parts = [f"seq={upd.seq}"]
        if upd.first is not None:
            parts.append(f"first={upd.first}")
        if upd.prev is not None:
            parts.append(f"prev={upd.prev}")
        return " ".join(parts)

    def _snapshot(self, upd: BookUpdate, ts_recv: int, fx: Effects) -> None:
        """Replace the book (then check it): a new sequence starts."""
        listed = fx.levels or self.ids is not None
        changes = self.book.replace(upd.bids, upd.asks, listed)
        if listed:
            fx.changes.extend(changes)
        if self.ids is not None:
            self._snapshot_ids(upd.seq, changes, fx)
        self.counters["epoch"] += 1  # (epoch, seq) only ever grows
        self.seq = upd.seq
        self.ts_exchange, self.ts_recv = upd.ts_exchange, ts_recv
        fx.applied = True
        lag = self.rule.max_lag_ns
        if lag and upd.ts_exchange and ts_recv - upd.ts_exchange > lag:  # the venue's time is too old
            self._go(fx, BookState.STALE, f"venue time more than {lag / 1e9:g} s behind receive time")
            return
        self._go(fx, BookState.SYNCED, "snapshot" if not upd.restart else "venue restart (u=1)")
        self.fresh = self.rule.snapshot_from_rest  # a REST snapshot: the next delta must join it
        self._check(upd, fx)

    def _apply(self, upd: BookUpdate, ts_recv: int, fx: Effects) -> None:
        """Apply a delta the rule accepted (then check the book)."""
        listed = fx.levels or self.ids is not None
        changes = self.book.apply(upd.bids, upd.asks, listed)
        if listed:
            fx.changes.extend(changes)
        if self.ids is not None:
            self._update_ids(upd, changes, fx)
        self.counters["applied"] += 1
        self.counters["levels"] += len(upd.bids) + len(upd.asks)
        if self.seq is not None and upd.seq <= self.seq:
            self.counters["epoch"] += 1  # the rule accepted a lower seq: a venue reset, then it continues
        self.seq = upd.seq
        self.fresh = False
        self.ts_exchange, self.ts_recv = upd.ts_exchange, ts_recv
        fx.applied = True
        self._check(upd, fx)

    def _check(self, upd: BookUpdate, fx: Effects) -> None:
        """Post-apply invariants (the venue's checksum, uncrossed book), then emit a changed top."""
        if self.status != BookState.SYNCED:
            return
        if upd.checksum is not None and self.rule.checksum(self.book) != upd.checksum:
            self._go(fx, BookState.STALE, f"checksum mismatch at ts={upd.ts_exchange}")
            return
        if self.book.crossed() and not self._uncrossed(fx):
            self._go(fx, BookState.STALE, "crossed book")
            return
        top = self.book.top()
        if top != self.last_top:
            self.last_top = top
            assert self.seq is not None
            fx.tops.append(_new(TopChange, (self.seq, self.ts_exchange, top)))

    # -- levels' ids (rules that uncross by age) -------------------------------------------
    def _snapshot_ids(self, seq: int, changes: list[Change], fx: Effects) -> None:
        """Every level of the snapshot was set by it; the levels it removed are forgotten."""
        assert self.ids is not None
        rows = fx.ids if fx.ids is not None else []
        rows += [(side, price, None) for side, price, size in changes if size is None]
        for side, tree in ((BID, self.book.bids), (ASK, self.book.asks)):
            memory = self.ids.side(side)
            memory.clear()
            for key, (price, _) in tree.items():
                memory[key] = seq
                rows.append((side, price, seq))
        fx.ids = rows

    def _update_ids(self, upd: BookUpdate, changes: list[Change], fx: Effects) -> None:
        """Each level the update names is now set by it (even at an unchanged size); a level it
        removed is forgotten. Prices were validated by ``OrderBook.apply``."""
        assert self.ids is not None
        rows = fx.ids if fx.ids is not None else []
        rows += [(side, price, None) for side, price, size in changes if size is None]
        seq = upd.seq
        for side, levels, tree in ((BID, upd.bids, self.book.bids), (ASK, upd.asks, self.book.asks)):
            memory = self.ids.side(side)
            for price, _ in levels:
                key = float(price)
                level = tree.get(key)
                if level is None:
                    memory.pop(key, None)
                else:
                    memory[key] = seq
                    rows.append((side, level[0], seq))
        fx.ids = rows

    def _uncrossed(self, fx: Effects) -> bool:
        """A crossed book the rule resolves by age (``app.book.uncross``): True when it did."""
        if self.ids is None:
            return False
        changes = uncross(self.book, self.ids)
        fx.changes.extend(changes)
        rows = fx.ids if fx.ids is not None else []
        rows += [(side, price, None) for side, price, size in changes if size is None]
        fx.ids = rows
        self.counters["uncrossed"] = self.counters.get("uncrossed", 0) + 1
        return not self.book.crossed()

    # -- snapshots from REST ------------------------------------------------------------
    def _rest_step(self, upd: BookUpdate, frame: bytes, ts_recv: int, fx: Effects) -> None:
        """Deltas are buffered (bounded) until the REST snapshot joins them."""
        if upd.snapshot:
            if self.status == BookState.SYNCED:
                self.counters["duplicates"] += 1  # already in sync: an older/extra snapshot
                return
            self._rest_snapshot(upd, ts_recv, fx)
            return
        if self.status != BookState.SYNCED:
            if self.buffer and upd.seq <= self.buffer[-1][0].seq:
                self.counters["duplicates"] += 1
                return
            self.buffer.append((upd, frame))
            fx.buffer_put.append((upd.seq, frame))
            self.counters["buffered"] += 1
            while len(self.buffer) > self.buffer_limit:
                old = self.buffer.pop(0)
                fx.buffer_del.append(old[0].seq)
                self.counters["dropped"] += 1
            return
        self._rest_delta(upd, ts_recv, fx)

    def _rest_snapshot(self, upd: BookUpdate, ts_recv: int, fx: Effects) -> None:
        last_id = upd.seq
        # Drop buffered events the snapshot already contains.
        keep = [(u, f) for (u, f) in self.buffer if not self.rule.contained(last_id, u)]
        stale = self.buffer[: len(self.buffer) - len(keep)]  # the buffer is in sequence order
        fx.buffer_del.extend(u.seq for (u, _) in stale)
        self.counters["dropped"] += len(stale)
        self.buffer = keep
        if keep and self.rule.snapshot_older(last_id, keep[0][0]):
            self.request_resync(f"snapshot seq={last_id} older than buffered {self._describe(keep[0][0])}", fx)
            return
        self._snapshot(upd, ts_recv, fx)
        pending, self.buffer = self.buffer, []
        for buffered, _ in pending:
            fx.buffer_del.append(buffered.seq)
        for buffered, _ in pending:
            if self.status != BookState.SYNCED:
                break
            self._rest_delta(buffered, ts_recv, fx)

    def _rest_delta(self, upd: BookUpdate, ts_recv: int, fx: Effects) -> None:
        if not self.fresh:
            self._follow(upd, ts_recv, fx)
            return
        assert self.seq is not None  # the snapshot's id
        if self.rule.contained(self.seq, upd):
            self.counters["dropped"] += 1
        elif self.rule.joins(self.seq, upd):
            self._apply(upd, ts_recv, fx)
        else:
            self._gap(upd, fx)
