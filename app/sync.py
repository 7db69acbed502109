"""Per-instrument sync state machine, no I/O.

States: ``waiting`` (no snapshot yet) → ``synced`` → ``stale`` (gap, checksum mismatch,
crossed book, connection reset) → ``synced`` again after a fresh snapshot. While not
synced nothing is published for the book; Binance deltas are buffered (bounded) so that
the REST snapshot can be joined exactly as the venue documents.

Venue rules (VENUES.md):

* Binance spot: drop u <= L; first applied U <= L+1 <= u; then U == prev u + 1.
* Binance futures: drop u < L; first applied U <= L <= u; then pu == prev u.
* Deribit: prev_change_id == last change_id.
* OKX: prevSeqId == last seqId when the feed has seqIds (heartbeats: empty, seqId ==
  prevSeqId; a reset may have seqId < prevSeqId); every non-zero checksum is verified.
* Bybit: snapshot or u == 1 replaces the book; then u == prev u + 1.
* Coinbase: sequence_num continuity is per connection and checked by the router, which
  turns a gap into a ``conn`` record for every instrument of that connection.

Duplicates (at-least-once redelivery, venue repeats) are recognised by sequence and
ignored. :meth:`Instrument.step` returns :class:`Effects`: what to persist and publish.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from app.book import Change, OrderBook, Top
from app.venues.base import BookUpdate, Sequencing


class BookState(enum.StrEnum):
    """An instrument's sync state; the values are what ``book.status`` and the web view show."""

    WAITING = "waiting"  # no snapshot yet
    SYNCED = "synced"  # in sync with the venue: published
    STALE = "stale"  # gap, checksum mismatch, crossed book, bad frame: waiting for a resync


WAITING, SYNCED, STALE = BookState.WAITING, BookState.SYNCED, BookState.STALE
COUNTERS = ("applied", "levels", "gaps", "resyncs", "duplicates", "skipped", "buffered", "dropped", "epoch")


class Transition(NamedTuple):
    """A state change (or a new reason in the same state), for ``book.status``."""

    state: BookState
    reason: str


class TopChange(NamedTuple):
    """A changed top of book, for ``book.top``."""

    seq: int  # the venue sequence of the update that produced it
    ts_exchange: int  # venue timestamp of that update, ns
    top: Top


@dataclass(slots=True)
class Effects:
    """What one step changed, for the caller to persist and publish."""

    changes: list[Change] = field(default_factory=list)
    buffer_put: list[tuple[int, bytes]] = field(default_factory=list)
    buffer_del: list[int] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    resync: str | None = None  # reason, when a resync must be requested
    applied: bool = False  # the book moved (top/depth may have changed)
    tops: list[TopChange] = field(default_factory=list)

    def changed(self) -> bool:
        """Did the step change persisted state? (Else the state row need not be rewritten:
        reprocessing such a record after a crash changes nothing either.)"""
        return bool(self.applied or self.changes or self.buffer_put or self.buffer_del
                    or self.transitions or self.resync)


class Instrument:
    """One instrument's book and sync state. ``to_state``/``from_state`` persist it."""

    __slots__ = (
        "book", "buffer", "buffer_limit", "conn", "counters", "fresh", "key", "last_top",
        "offset", "reason", "rule", "seq", "status", "ts_exchange", "ts_recv",
    )

    def __init__(self, key: str, rule: Sequencing, buffer_limit: int = 20_000) -> None:
        self.key = key
        self.rule = rule
        self.buffer_limit = buffer_limit  # BUFFER_MAX_FRAMES
        self.book = OrderBook()
        self.status = BookState.WAITING
        self.reason = "no snapshot yet"
        self.seq: int | None = None
        self.fresh = False  # Binance: last applied was the snapshot (first-event rule next)
        self.conn = ""
        self.offset = -1  # last source offset processed (redelivery guard)
        self.ts_exchange = 0
        self.ts_recv = 0
        self.buffer: list[tuple[BookUpdate, bytes]] = []  # Binance deltas awaiting a snapshot
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_top: Top | None = None  # last top emitted (memory only: re-emitted after restart)

    # -- persistence ----------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {
            "st": self.status, "why": self.reason, "seq": self.seq, "fresh": self.fresh,
            "conn": self.conn, "off": self.offset, "tx": self.ts_exchange, "tr": self.ts_recv,
            "n": self.counters,
        }

    def from_state(self, state: dict[str, Any]) -> None:
        self.status = BookState(state["st"])
        self.reason = state["why"]
        self.seq = state["seq"]
        self.fresh = state["fresh"]
        self.conn = state["conn"]
        self.offset = state["off"]
        self.ts_exchange = state["tx"]
        self.ts_recv = state["tr"]
        self.counters.update(state["n"])

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
        """A gap or reset on the connection that carries this instrument."""
        if self.status == BookState.SYNCED:
            self._go(fx, BookState.STALE, f"{event}: {detail}" if detail else event)

    def request_resync(self, reason: str, fx: Effects) -> None:
        fx.resync = reason
        self.counters["resyncs"] += 1

    # -- the step -------------------------------------------------------------------
    def step(self, upd: BookUpdate, frame: bytes, conn: str, ts_recv: int, fx: Effects) -> None:
        """Apply one normalised update (the caller has already checked the offset guard)."""
        if self.rule in (Sequencing.BINANCE_SPOT, Sequencing.BINANCE_FUTURES):
            self._binance(upd, frame, ts_recv, fx)
            return
        if upd.snapshot:
            duplicate = (
                self.status == BookState.SYNCED and not upd.restart and conn == self.conn
                and self.seq is not None and upd.seq != -1 and upd.seq <= self.seq
            )
            if duplicate:
                self.counters["duplicates"] += 1
                return
            self._snapshot(upd, conn, ts_recv, fx)
            self._check(upd, fx)
            return
        if self.status != BookState.SYNCED:
            self.counters["skipped"] += 1
            return
        if conn != self.conn:
            self._go(fx, BookState.STALE, f"update from connection {conn} after snapshot on {self.conn}")
            return
        verdict = self._continuity(upd)
        if verdict == "dup":
            self.counters["duplicates"] += 1
        elif verdict == "gap":
            self._go(fx, BookState.STALE, f"gap: expected after {self.seq}, got {self._describe(upd)}")
        else:
            self._apply(upd, ts_recv, fx)
            self._check(upd, fx)

    def _continuity(self, upd: BookUpdate) -> str:
        last = self.seq
        rule = self.rule
        if rule is Sequencing.DERIBIT:
            if last is not None and upd.seq <= last:
                return "dup"
            return "ok" if upd.prev == last else "gap"
        if rule is Sequencing.OKX:
            if upd.prev is None:  # feed without seqIds: the checksum is the guard
                return "ok"
            if upd.prev == last:
                return "ok"
            return "dup" if last is not None and upd.seq <= last else "gap"
        if rule is Sequencing.BYBIT:
            if last is not None and upd.seq <= last:
                return "dup"
            return "ok" if last is not None and upd.seq == last + 1 else "gap"
        # Coinbase: contiguity per connection is the router's; here only order.
        return "dup" if last is not None and upd.seq <= last else "ok"

    @staticmethod
    def _describe(upd: BookUpdate) -> str:
        parts = [f"seq={upd.seq}"]
        if upd.first is not None:
            parts.append(f"first={upd.first}")
        if upd.prev is not None:
            parts.append(f"prev={upd.prev}")
        return " ".join(parts)

    def _snapshot(self, upd: BookUpdate, conn: str, ts_recv: int, fx: Effects) -> None:
        fx.changes.extend(self.book.replace(upd.bids, upd.asks))
        self.counters["epoch"] += 1  # a new sequence starts: (epoch, seq) only ever grows
        self.seq = upd.seq
        self.conn = conn
        self.ts_exchange, self.ts_recv = upd.ts_exchange, ts_recv
        fx.applied = True
        self._go(fx, BookState.SYNCED, "snapshot" if not upd.restart else "venue restart (u=1)")

    def _apply(self, upd: BookUpdate, ts_recv: int, fx: Effects) -> None:
        changes = self.book.apply(upd.bids, upd.asks)
        fx.changes.extend(changes)
        self.counters["applied"] += 1
        self.counters["levels"] += len(upd.bids) + len(upd.asks)
        if self.seq is not None and upd.seq <= self.seq:
            self.counters["epoch"] += 1  # OKX reset: seqId lower than prevSeqId, then continues
        self.seq = upd.seq
        self.fresh = False
        self.ts_exchange, self.ts_recv = upd.ts_exchange, ts_recv
        fx.applied = True

    def _check(self, upd: BookUpdate, fx: Effects) -> None:
        """Post-apply invariants (OKX checksum, uncrossed book), then emit a changed top."""
        if self.status != BookState.SYNCED:
            return
        if upd.checksum is not None and self.book.okx_checksum() != upd.checksum:
            self._go(fx, BookState.STALE, f"checksum mismatch at ts={upd.ts_exchange}")
            return
        if self.book.crossed():
            self._go(fx, BookState.STALE, "crossed book")
            return
        top = self.book.top()
        if top != self.last_top:
            self.last_top = top
            assert self.seq is not None
            fx.tops.append(TopChange(self.seq, self.ts_exchange, top))

    # -- Binance --------------------------------------------------------------------
    def _binance(self, upd: BookUpdate, frame: bytes, ts_recv: int, fx: Effects) -> None:
        spot = self.rule is Sequencing.BINANCE_SPOT
        if upd.snapshot:
            if self.status == BookState.SYNCED:
                self.counters["duplicates"] += 1  # already in sync: an older/extra snapshot
                return
            self._binance_snapshot(upd, spot, ts_recv, fx)
            return
        assert upd.first is not None
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
        self._binance_delta(upd, spot, ts_recv, fx)

    def _binance_snapshot(self, upd: BookUpdate, spot: bool, ts_recv: int, fx: Effects) -> None:
        last_id = upd.seq
        # Drop buffered events the snapshot already contains.
        keep = [(u, f) for (u, f) in self.buffer if (u.seq > last_id if spot else u.seq >= last_id)]
        stale = self.buffer[: len(self.buffer) - len(keep)]  # the buffer is in u order
        fx.buffer_del.extend(u.seq for (u, _) in stale)
        self.counters["dropped"] += len(stale)
        self.buffer = keep
        target = last_id + 1 if spot else last_id
        if keep and keep[0][0].first is not None and keep[0][0].first > target:
            # "If L < first buffered U, fetch again": the snapshot is older than the buffer.
            self.request_resync(f"snapshot lastUpdateId={last_id} older than buffered U={keep[0][0].first}", fx)
            return
        fx.changes.extend(self.book.replace(upd.bids, upd.asks))
        self.counters["epoch"] += 1
        self.seq = last_id
        self.ts_exchange, self.ts_recv = upd.ts_exchange, ts_recv
        fx.applied = True
        self._go(fx, BookState.SYNCED, "snapshot")
        self.fresh = True
        self._check(upd, fx)
        pending, self.buffer = self.buffer, []
        for buffered, _ in pending:
            fx.buffer_del.append(buffered.seq)
        for buffered, _ in pending:
            if self.status != BookState.SYNCED:
                break
            self._binance_delta(buffered, spot, ts_recv, fx)

    def _binance_delta(self, upd: BookUpdate, spot: bool, ts_recv: int, fx: Effects) -> None:
        assert self.seq is not None
        assert upd.first is not None
        last = self.seq
        if self.fresh:
            if upd.seq < last or (spot and upd.seq == last):
                self.counters["dropped"] += 1  # contained in the snapshot
                return
            # futures: U <= L <= u, or the event chains to the snapshot exactly (pu == L, when
            # lastUpdateId is an event's final id, the next event starts at L+1)
            ok = upd.first <= last + 1 <= upd.seq if spot else (upd.first <= last <= upd.seq or upd.prev == last)
        else:
            if upd.seq <= last:
                self.counters["duplicates"] += 1
                return
            ok = upd.first == last + 1 if spot else upd.prev == last
        if not ok:
            self._go(fx, BookState.STALE, f"gap: expected after u={last}, got {self._describe(upd)}")
            return
        self._apply(upd, ts_recv, fx)
        self._check(upd, fx)

