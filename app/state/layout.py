"""The books table layout: row keys, the versioned state row, progress rows, loading back.

One table partition holds every instrument whose key hashes to it, plus one progress row per
raw topic saying which source offset the partition covers. Keys and values are raw bytes;
``K`` is the instrument key (``binance-usdm:BTCUSDT``) and ``\\0`` separates it from the tag::

    K \\0 s               → state row: orjson object with version ``v`` (:func:`encode_state`)
    K \\0 b <price>       → bid size at <price>, both the venue's decimal text
    K \\0 a <price>       → ask size at <price>
    K \\0 q <u:020d>      → a Binance delta buffered until its REST snapshot (the frame, verbatim)
    K \\0 i b <price>     → the sequence of the update that set that bid (ask: ``i a``) level, for
                           venues that uncross by age (dYdX ``message_id``); none for the others
    \\0 p <raw topic>     → progress: the next source offset of that topic's partition to apply
    \\0 m                 → local checkpoint (never in the changelog): where the local copy is in
                           the changelog, and whether a restore is under way

Why one row per level: what an applied update writes is one small row per changed level plus
the state row, whatever the book's depth; compaction keeps one record per live level, so
restoring costs what the live books hold, not their history.

Write order and atomicity: a commit is one Kafka transaction on the changelog (rows, then the
instruments' state rows, then the progress rows) and, once the transaction is committed, one
RocksDB write batch locally holding the same rows plus the local checkpoint. A reader of the
changelog (``read_committed``) sees whole commits or nothing, and the progress rows of a
commit cover exactly the source records whose effects the commit holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.market.cursor import TradeCursor
from app.sync import BookState, Instrument

SEP = b"\x00"
_SEP_TEXT = SEP.decode()
STATE, BID, ASK, BUFFER, IDS = b"s", b"b", b"a", b"q", b"i"
PROGRESS_PREFIX = SEP + b"p"
CHECKPOINT_KEY = SEP + b"m"
STATE_ROW_VERSION = 1
#: The Faust-era state row (terse keys, no version) → the names of version 1.
_V0_KEYS = {"st": "state", "why": "reason", "seq": "seq", "fresh": "fresh", "conn": "conn", "tx": "ts_exchange",
            "tr": "ts_recv", "n": "counters"}


class LayoutError(ValueError):
    """A row that this version of bookstream cannot read."""


def state_key(instrument: bytes) -> bytes:
    return instrument + SEP + STATE


def level_prefix(instrument: str, side: str) -> str:
    """The text of a level row key before its price (a level row's key is
    ``(level_prefix(k, s) + price).encode()``)."""
    return instrument + _SEP_TEXT + side


def ids_prefix(instrument: str, side: str) -> str:
    """The text of a level's id row key before its price (``K \\0 i <side>``; its value: the
    sequence of the update that set the level), for rules that uncross by age."""
    return instrument + _SEP_TEXT + "i" + side


def buffer_key(instrument: bytes, seq: int) -> bytes:
    return instrument + SEP + BUFFER + b"%020d" % seq


def progress_key(topic: str) -> bytes:
    return PROGRESS_PREFIX + topic.encode()


def encode_state(inst: Instrument) -> bytes:
    """The state row of ``inst`` (version :data:`STATE_ROW_VERSION`, readable keys)."""
    return orjson.dumps({
        "v": STATE_ROW_VERSION, "state": str(inst.status), "reason": inst.reason, "seq": inst.seq,
        "fresh": inst.fresh, "conn": inst.conn, "ts_exchange": inst.ts_exchange, "ts_recv": inst.ts_recv,
        "counters": inst.counters, "trades": inst.trades.encode() if inst.trades is not None else None,
    })


def decode_state(value: bytes) -> dict[str, Any]:
    """A state row as a dict with the version-1 names (a Faust-era row is converted)."""
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise LayoutError(f"state row is not JSON: {exc}") from exc
    if not isinstance(row, dict):
        raise LayoutError("state row is not an object")
    version = row.get("v")
    if version is None:  # bookstream 0.1 (Faust table): terse keys
        row = {new: row[old] for old, new in _V0_KEYS.items() if old in row}
    elif version != STATE_ROW_VERSION:
        raise LayoutError(f"state row version {version!r}; this bookstream reads version {STATE_ROW_VERSION}")
    return row


def apply_state(inst: Instrument, value: bytes) -> None:
    row = decode_state(value)
    inst.status = BookState(row["state"])
    inst.reason = row["reason"]
    inst.seq = row["seq"]
    inst.fresh = row["fresh"]
    inst.conn = row["conn"]
    inst.ts_exchange = row["ts_exchange"]
    inst.ts_recv = row["ts_recv"]
    inst.counters.update(row["counters"])
    trades = row.get("trades")  # absent in rows written before trades were published
    inst.trades = TradeCursor.decode(trades) if trades else None


def encode_progress(next_offset: int) -> bytes:
    return b"%d" % next_offset


def decode_progress(rows: Iterable[tuple[bytes, bytes]]) -> dict[str, int]:
    """``{raw topic: next offset}`` from the progress rows among ``rows``."""
    out: dict[str, int] = {}
    for key, value in rows:
        if key.startswith(PROGRESS_PREFIX):
            out[key[len(PROGRESS_PREFIX):].decode()] = int(value)
    return out


@dataclass(slots=True)
class Checkpoint:
    """Where a local copy stands in the changelog (local only, written with every local batch)."""

    changelog_next: int = 0  # next changelog offset to read into this copy
    restoring: bool = False  # a restore from an older point is under way: the copy is not consistent yet
    written_at_ms: int = 0  # wall clock of the write (a copy older than delete.retention.ms is rebuilt)

    def encode(self) -> bytes:
        return orjson.dumps({"v": 1, "changelog_next": self.changelog_next, "restoring": self.restoring,
                             "written_at_ms": self.written_at_ms})

    @classmethod
    def decode(cls, value: bytes | None) -> Checkpoint:
        if value is None:
            return cls()
        row = orjson.loads(value)
        return cls(int(row["changelog_next"]), bool(row["restoring"]), int(row["written_at_ms"]))


def instrument_rows(items: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[str, list[tuple[bytes, bytes]]]]:
    """Group rows in key order by instrument: (instrument key, [(tag + rest, value), …])."""
    current: bytes | None = None
    rows: list[tuple[bytes, bytes]] = []
    for key, value in items:
        if key.startswith(SEP):
            continue  # partition rows
        inst, sep, rest = key.partition(SEP)
        if not sep:
            continue
        if inst != current:
            if current is not None:
                yield current.decode(), rows
            current, rows = inst, []
        rows.append((rest, value))
    if current is not None:
        yield current.decode(), rows


def load_instrument(inst: Instrument, rows: Iterable[tuple[bytes, bytes]], parse_buffered: Any) -> bool:
    """Put an instrument's rows (tag + rest → value) back into ``inst``; False if it had none.

    ``parse_buffered(frame) -> list[BookUpdate]`` reads a buffered Binance delta back.
    """
    found = False
    bids: list[tuple[str, str]] = []
    asks: list[tuple[str, str]] = []
    for rest, value in rows:
        found = True
        tag = rest[:1]
        if tag == STATE:
            apply_state(inst, value)
        elif tag == BID:
            bids.append((rest[1:].decode(), value.decode()))
        elif tag == ASK:
            asks.append((rest[1:].decode(), value.decode()))
        elif tag == BUFFER:
            for upd in parse_buffered(value):
                inst.buffer.append((upd, value))
        elif tag == IDS:
            if inst.ids is not None:  # (rows of a rule that no longer uncrosses by age are ignored)
                inst.ids.restore(rest[1:2].decode(), rest[2:].decode(), int(value))
        else:
            raise LayoutError(f"{inst.key}: unknown row tag {tag!r}")
    inst.book.restore(bids, asks)
    # A synced book published every change of its top, so its last published top is its top:
    # a frame after the reload that leaves it unchanged publishes nothing, as without a reload.
    inst.last_top = inst.book.top() if inst.status == BookState.SYNCED else None
    return found
