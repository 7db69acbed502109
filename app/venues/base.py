"""The shared venue interface: pure functions from verbatim frames to normalised updates.

Adapters do no I/O. Each one answers three questions about a frame:

* ``route``: which instrument keys is this frame about (for keying the raw topic)?
* ``parse``: what book updates does it carry for one instrument?
* ``conn_seq``: does the venue number frames per connection (Coinbase ``sequence_num``)?

and says which continuity rule (:class:`Sequencing`) its updates follow. The socket,
reconnect and REST code lives in ``app.ingest``; the sync state machine in ``app.sync``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from app.errors import FrameError

#: A price level as the venue sent it: (price, size), both decimal strings; size "0" deletes.
Level = tuple[str, str]


class Kind(enum.StrEnum):
    """What a raw record holds (header ``kind``)."""

    WS = "ws"  # a WebSocket frame, verbatim
    REST = "rest"  # a REST response body, verbatim (Binance depth snapshot)
    CONN = "conn"  # a connection event written by ingestion/replay (gap, reconnect)


class Sequencing(enum.Enum):
    """Continuity rules, one per venue family (see VENUES.md and app.sync)."""

    BINANCE_SPOT = "binance-spot"  # U == prev u + 1; first: U <= L+1 <= u
    BINANCE_FUTURES = "binance-futures"  # pu == prev u; first: U <= L <= u
    DERIBIT = "deribit"  # prev_change_id == prev change_id
    OKX = "okx"  # prevSeqId == prev seqId when present, else CRC32 checksum
    BYBIT = "bybit"  # u == prev u + 1; u == 1 is a restart (snapshot)
    COINBASE = "coinbase"  # sequence_num contiguous per connection (checked by the router)


@dataclass(slots=True)
class BookUpdate:
    """One normalised order-book message for one instrument."""

    snapshot: bool  # replaces the whole book
    seq: int  # the venue's sequence of this update (u, change_id, seqId, sequence_num)
    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)
    first: int | None = None  # Binance U (first update id in the event)
    prev: int | None = None  # pu / prev_change_id / prevSeqId
    ts_exchange: int = 0  # venue timestamp, ns since epoch (0 if the venue gives none)
    checksum: int | None = None  # OKX signed CRC32 of the top 25 levels (None/0: not sent)
    restart: bool = False  # Bybit u == 1: the venue restarted the book


class Adapter(Protocol):
    """What every venue module provides (registered in ``app.venues.ADAPTERS``)."""

    venue: str
    sequencing: Sequencing

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        """Venue symbols this frame concerns ([] for acks, heartbeats, other venues' data)."""
        ...

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        """Book updates in ``frame`` for ``symbol`` ([] when it carries none). FrameError if bad."""
        ...

    def conn_seq(self, frame: bytes) -> int | None:
        """Connection-wide sequence number of this frame, for venues that have one."""
        ...


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


def _plain(d: Decimal) -> str:
    if not d.is_finite():
        raise FrameError("bad-number", str(d))
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def levels(raw: Any, what: str) -> list[Level]:
    """``[[price, size, ...], ...]`` with string or number fields → list of (price, size)."""
    if not isinstance(raw, list):
        raise FrameError("bad-levels", f"{what} is not a list")
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


def as_int(value: Any, what: str) -> int:
    """An integer sequence field, accepting numeric strings; FrameError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise FrameError("bad-sequence", f"{what}={str(value)[:30]}")
