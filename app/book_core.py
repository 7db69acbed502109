"""The book's level store and level loop, in Python: the reference core.

``app/book_core_c.pyx`` is the same core compiled (Cython): ``make install`` builds it, and
``app.book`` runs it when it is built (``BOOK_CORE``). The tests run every book test on both and
compare them level by level on random updates (``tests/unit/test_book_core.py``). Change one,
change the other.

A :class:`Side` holds one side's levels sorted by price, the best last: a sorted list of ranks
(the price's float for bids, its negation for asks) beside the list of the levels' values
``(price text, size text)``. Keeping the best at the end means the levels that move most — those
near the top — are inserted and removed where the lists barely shift, on either side.

The float is only an ordering key (distinct decimal prices of ≤ 15 significant digits never
collide); what is published, persisted and check-summed is always the venue's text.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from app.errors import ConfigError, FrameError

NAME = "python"
#: BOOK_CORE: which core runs (``auto``: the compiled one when it is built).
CORES = ("auto", "compiled", "python")


def checked_core(name: str) -> str:
    """``name`` if it is a BOOK_CORE value; ConfigError otherwise."""
    if name not in CORES:
        raise ConfigError(f"BOOK_CORE={name!r} must be one of {', '.join(CORES)}")
    return name

Value = tuple[str, str]  # (price text, size text)
Change = tuple[str, str, "str | None"]  # (side "b"|"a", price text, new size text; None: deleted)

_INF = math.inf


def parse_key(price: str) -> float:
    """A price's sort key; FrameError ``bad-price`` unless a finite positive number."""
    try:
        value = float(price)
    except ValueError:
        raise FrameError("bad-price", price[:30]) from None
    if not 0 < value < _INF:  # NaN fails too
        raise FrameError("bad-price", price[:30])
    return value


def parse_zero(size: str) -> bool:
    """Whether a size deletes its level; FrameError ``bad-size`` unless finite and ≥ 0."""
    try:
        value = float(size)
    except ValueError:
        raise FrameError("bad-size", size[:30]) from None
    if not 0 <= value < _INF:
        raise FrameError("bad-size", size[:30])
    return value == 0


class Side:
    """One side of a book: price key → (price text, size text), sorted, the best last."""

    __slots__ = ("_changed", "_ranks", "_vals", "is_bid")

    def __init__(self, is_bid: bool, levels: Mapping[float, Value] | None = None) -> None:
        self.is_bid = is_bid
        keys = sorted(levels or (), reverse=not is_bid)
        self._ranks: list[float] = keys if is_bid else [-k for k in keys]
        self._vals: list[Value] = [levels[k] for k in keys] if levels else []
        #: price text → size text (None: gone) of every level changed since the last
        #: :meth:`take_rows`; levels given at construction are not changes (a restore)
        self._changed: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self._ranks)

    def __iter__(self) -> Iterator[float]:
        """The keys, best first."""
        sign = 1.0 if self.is_bid else -1.0
        return (sign * r for r in reversed(self._ranks))

    def __contains__(self, key: float) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key: float) -> Value:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: float) -> Value | None:
        rank = key if self.is_bid else -key
        i = bisect.bisect_left(self._ranks, rank)
        return self._vals[i] if i < len(self._ranks) and self._ranks[i] == rank else None

    def set(self, key: float, value: Value) -> None:
        rank = key if self.is_bid else -key
        i = bisect.bisect_left(self._ranks, rank)
        if i < len(self._ranks) and self._ranks[i] == rank:
            self._changed[self._vals[i][0]] = None  # (its own text is set again just below)
            self._vals[i] = value
        else:
            self._vals.insert(i, value)
            self._ranks.insert(i, rank)
        self._changed[value[0]] = value[1]

    def remove(self, key: float) -> Value | None:
        """Remove the level at ``key``; its value, or None if there was none."""
        rank = key if self.is_bid else -key
        i = bisect.bisect_left(self._ranks, rank)
        if i < len(self._ranks) and self._ranks[i] == rank:
            del self._ranks[i]
            value = self._vals.pop(i)
            self._changed[value[0]] = None
            return value
        return None

    def take_rows(self, start: bytes, rows: list[tuple[bytes, bytes | None]]) -> None:
        """Append to ``rows`` the table row of every level changed since the last take — key
        ``start`` + price text, value the size text (None: a deletion), as UTF-8
        (``app.state.layout``) — and forget them. A level changed many times between two takes
        is written once, as it is now; the state manager takes them at each commit."""
        encode_rows(start, self._changed, rows)
        self._changed = {}

    def best(self) -> tuple[float, Value] | None:
        """(key, value) of the best level, or None for an empty side."""
        if not self._ranks:
            return None
        rank = self._ranks[-1]
        return (rank if self.is_bid else -rank), self._vals[-1]

    def top(self, n: int) -> list[Value]:
        """The best ``n`` levels' values, best first."""
        return self._vals[:-n - 1:-1] if n > 0 else []

    def items(self) -> list[tuple[float, Value]]:
        """Every level as (key, value), best first."""
        sign = 1.0 if self.is_bid else -1.0
        return [(sign * r, v) for r, v in zip(reversed(self._ranks), reversed(self._vals), strict=True)]

    def within(self, bound: float) -> tuple[list[float], list[Value]]:
        """Keys and values of the levels at ``bound`` or better (bids ≥, asks ≤), best first."""
        i = bisect.bisect_left(self._ranks, bound if self.is_bid else -bound)
        sign = 1.0 if self.is_bid else -1.0
        return [sign * r for r in self._ranks[:i - 1 if i else None:-1]], self._vals[:i - 1 if i else None:-1]


def _parsed(levels: Iterable[tuple[str, str]]) -> list[tuple[float, bool, str, str]]:
    return [(parse_key(price), parse_zero(size), price, size) for price, size in levels]


def apply_levels(bids: Side, asks: Side, bid_levels: Iterable[tuple[str, str]],
                 ask_levels: Iterable[tuple[str, str]], listed: bool = True) -> list[Change]:
    """Apply absolute level updates of both sides: every level validated first, then applied (a
    bad level leaves the book untouched). Returns the changes made, in order: a new level or a new
    size (the price text first seen for a level stays: it is the persisted key), or a deletion
    (size None; a delete of a level never seen is harmless, Coinbase does it). With
    ``listed=False`` none is listed (``[]``): the sides track their changes for the commit all the
    same (:meth:`Side.take_rows`), and the worker does not read the list."""
    parsed = ((bids, "b", _parsed(bid_levels)), (asks, "a", _parsed(ask_levels)))
    changes: list[Change] = []
    append = changes.append
    for side, tag, updates in parsed:
        ranks, vals, is_bid, changed = side._ranks, side._vals, side.is_bid, side._changed
        for key, zero, price, size in updates:
            rank = key if is_bid else -key
            i = bisect.bisect_left(ranks, rank)
            found = i < len(ranks) and ranks[i] == rank
            if zero:
                if found:
                    del ranks[i]
                    gone = vals.pop(i)[0]
                    changed[gone] = None
                    append((tag, gone, None))
            elif not found:
                ranks.insert(i, rank)
                vals.insert(i, (price, size))
                changed[price] = size
                append((tag, price, size))
            else:
                old = vals[i]
                if old[1] != size:
                    vals[i] = (old[0], size)
                    changed[old[0]] = size
                    append((tag, old[0], size))
    return changes if listed else []


def plain_levels(raw: object) -> list[tuple[str, str]] | None:
    """``raw`` as a new list of (price, size) when it is a list whose every entry is a list of at
    least two strings, its first two kept verbatim (the venues' own form, read by
    ``app.venues.base.levels``); None otherwise: the caller reads it entry by entry."""
    if type(raw) is not list:
        return None
    fast = [(x[0], x[1]) for x in raw if type(x) is list and len(x) >= 2 and type(x[0]) is str is type(x[1])]
    return fast if len(fast) == len(raw) else None


def raw_levels(raw: Any) -> list[tuple[str, str]] | None:
    """The levels of ``raw`` — the bytes of a side's JSON array as the venue wrote it (a
    ``msgspec.Raw``, bytes) — when it is exactly an array of ``[price, size]`` string pairs, as a
    list of (price, size); None for anything else: the caller reads the frame the general way.
    (The compiled core reads them in place, and fewer of them: see its ``RawLevels``.)"""
    try:
        value = orjson.loads(bytes(raw))
    except orjson.JSONDecodeError:
        return None
    if type(value) is not list or not all(type(x) is list and len(x) == 2 for x in value):
        return None
    return plain_levels(value)


def encode_rows(start: bytes, changed: dict[str, str | None], rows: list[tuple[bytes, bytes | None]]) -> None:
    """Append to ``rows`` the table row of each changed level: key ``start`` + price, value the size
    (None: a tombstone), as UTF-8 (``app.state.layout``)."""
    rows.extend((start + price.encode(), None if size is None else size.encode()) for price, size in changed.items())
