"""An L2 order book with exact prices and sizes, no I/O.

Each side maps a float sort key to the venue's own (price, size) strings. The float is
only an ordering key (distinct decimal prices of ≤ 15 significant digits never collide);
what is published, persisted and check-summed is always the venue's text.

Every mutation returns the level changes it made (:class:`Change`: side, price, size, with
size None meaning "deleted"), so the caller can persist exactly what changed and nothing more;
a snapshot (:meth:`OrderBook.replace`) returns the diff against the book it replaces.

A venue whose crossed books are resolved by age (dYdX, ``SyncRule.uncross_by_age``) keeps
beside the book a :class:`LevelIds` — the sequence of the update that set each level — and
:func:`uncross` applies its rule. Other venues pay nothing for it: the book itself is unchanged.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterable, Iterator
from decimal import Decimal, localcontext
from typing import NamedTuple

from sortedcontainers import SortedDict

from app.decimals import decimal_text
from app.errors import FrameError
from app.records.book import Aggregates, Band
from app.venues.base import Level

BID, ASK = "b", "a"
BANDS_BPS = (10, 25, 50, 100)


class Change(NamedTuple):
    """A persisted level change."""

    side: str  # BID or ASK
    price: str  # the level's price text (the one first seen for it: the persisted key)
    size: str | None  # the new size text; None: the level was deleted


class Top(NamedTuple):
    """Top of book as the venue's text; None for an empty side."""

    bid_px: str | None
    bid_sz: str | None
    ask_px: str | None
    ask_sz: str | None


#: Builds a NamedTuple without its Python-level ``__new__`` (a third of the cost, on the hot path).
_new = tuple.__new__
_INF = math.inf
_dict_set = dict.__setitem__  # SortedDict is a dict: an existing key needs no re-sorting


def _key(price: str) -> float:
    try:
        value = float(price)
    except ValueError:
        raise FrameError("bad-price", price[:30]) from None
    if not 0 < value < _INF:  # NaN fails too
        raise FrameError("bad-price", price[:30])
    return value


def _is_zero(size: str) -> bool:
    try:
        value = float(size)
    except ValueError:
        raise FrameError("bad-size", size[:30]) from None
    if not 0 <= value < _INF:
        raise FrameError("bad-size", size[:30])
    return value == 0


class OrderBook:
    """Two sorted sides. Best bid is the highest key, best ask the lowest."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()

    def side(self, side: str) -> SortedDict:
        return self.bids if side == BID else self.asks

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)

    # -- mutation -------------------------------------------------------------------
    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> list[Change]:
        """Apply absolute level updates of both sides: all validated first, then applied, so a
        bad level leaves the book untouched (memory and table never part ways)."""
        parsed = [(side, [(_key(price), _is_zero(size), price, size) for price, size in levels])
                  for side, levels in ((BID, bids), (ASK, asks))]
        changes: list[Change] = []
        append = changes.append
        for side, updates in parsed:
            book = self.bids if side == BID else self.asks
            get = book.get
            for key, zero, price, size in updates:
                old = get(key)
                if zero:
                    if old is not None:  # a delete of a level never seen is harmless (Coinbase does it)
                        del book[key]
                        append(_new(Change, (side, old[0], None)))
                elif old is None:
                    book[key] = (price, size)
                    append(_new(Change, (side, price, size)))
                elif old[1] != size:  # the price text first seen stays: it is the persisted key
                    _dict_set(book, key, (old[0], size))
                    append(_new(Change, (side, old[0], size)))
        return changes

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> list[Change]:
        """Replace the whole book by a snapshot; returns only the levels that differ."""
        changes: list[Change] = []
        for side, levels in ((BID, bids), (ASK, asks)):
            new: dict[float, tuple[str, str]] = {}
            for price, size in levels:
                if not _is_zero(size):
                    new[_key(price)] = (price, size)
            old = self.side(side)
            for key, (price, _) in old.items():
                if key not in new:
                    changes.append(Change(side, price, None))
            for key, (price, size) in new.items():
                prev = old.get(key)
                if prev is None or prev[1] != size:
                    changes.append(Change(side, prev[0] if prev is not None else price, size))
            fresh = SortedDict(new)
            for key, prev in old.items():  # keep the persisted price text of kept levels
                if key in fresh:
                    fresh[key] = (prev[0], fresh[key][1])
            if side == BID:
                self.bids = fresh
            else:
                self.asks = fresh
        return changes

    def restore(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Put persisted levels back (loading from the table): no validation, no change records."""
        self.bids = SortedDict({float(p): (p, s) for p, s in bids})
        self.asks = SortedDict({float(p): (p, s) for p, s in asks})

    # -- reading --------------------------------------------------------------------
    def best_bid(self) -> tuple[str, str] | None:
        return self.bids.peekitem(-1)[1] if self.bids else None

    def best_ask(self) -> tuple[str, str] | None:
        return self.asks.peekitem(0)[1] if self.asks else None

    def crossed(self) -> bool:
        return bool(self.bids and self.asks) and self.bids.peekitem(-1)[0] >= self.asks.peekitem(0)[0]

    def top(self) -> Top:
        bid, ask = self.best_bid(), self.best_ask()
        return _new(Top, (
            bid[0] if bid else None,
            bid[1] if bid else None,
            ask[0] if ask else None,
            ask[1] if ask else None,
        ))

    def iter_bids(self) -> Iterator[tuple[str, str]]:
        """Bids best first."""
        return (self.bids[k] for k in reversed(self.bids.keys()))

    def iter_asks(self) -> Iterator[tuple[str, str]]:
        """Asks best first."""
        return (self.asks[k] for k in self.asks)

    def levels(self, n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids = [self.bids[k] for k in self.bids.islice(max(0, len(self.bids) - n), reverse=True)]
        asks = [self.asks[k] for k in self.asks.islice(0, n)]
        return bids, asks

    def aggregates(self, n: int) -> Aggregates:
        """Depth view: top ``n`` levels, mid, spread, microprice, imbalance, bps bands."""
        bids, asks = self.levels(n)
        out = Aggregates(bids=bids, asks=asks)
        with localcontext() as ctx:
            ctx.prec = 34
            bid_sum = sum(map(_DECIMALS.__getitem__, map(_SIZE, bids)), Decimal(0))
            ask_sum = sum(map(_DECIMALS.__getitem__, map(_SIZE, asks)), Decimal(0))
            if bid_sum + ask_sum > 0:
                out.imbalance = decimal_text((bid_sum - ask_sum) / (bid_sum + ask_sum), 8)
            if not bids or not asks:
                return out
            bpx, bsz = Decimal(bids[0][0]), Decimal(bids[0][1])
            apx, asz = Decimal(asks[0][0]), Decimal(asks[0][1])
            mid = (bpx + apx) / 2
            out.mid, out.spread, out.spread_bps = mid_spread(bids[0][0], asks[0][0])
            out.microprice = decimal_text((bpx * asz + apx * bsz) / (bsz + asz), 12)
            widths = sorted(BANDS_BPS)
            bid_cum = _band_sums(self.bids, [mid * (1 - Decimal(b) / 10_000) for b in widths], bids_side=True)
            ask_cum = _band_sums(self.asks, [mid * (1 + Decimal(b) / 10_000) for b in widths], bids_side=False)
            out.bands_bps = {str(b): Band(bid=decimal_text(bc), ask=decimal_text(ac))
                             for b, bc, ac in zip(widths, bid_cum, ask_cum, strict=True)}
        return out


class LevelIds:
    """Which update set each level: side → price key → the update's sequence (dYdX
    ``message_id``). Kept in step with the book by ``app.sync`` and persisted with it
    (``app.state.layout``: one row per level, beside the level's own)."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids: dict[float, int] = {}
        self.asks: dict[float, int] = {}

    def side(self, side: str) -> dict[float, int]:
        return self.bids if side == BID else self.asks

    def restore(self, side: str, price: str, seq: int) -> None:
        """Put a persisted id back (loading from the table)."""
        self.side(side)[float(price)] = seq


def uncross(book: OrderBook, ids: LevelIds) -> list[Change]:
    """Resolve a crossed book by age, the rule dYdX documents ("How to uncross the orderbook"):
    while the best bid is at or above the best ask, the one of the two set by the older update
    (the smaller id) is removed; set by the same update, the smaller size is removed and the
    larger keeps the difference (equal sizes: both go). A level whose id is unknown counts as
    the oldest. Returns the level changes made (their ids are dropped with removed levels)."""
    changes: list[Change] = []
    bids, asks = book.bids, book.asks
    while bids and asks:
        bid_key, (bid_px, bid_sz) = bids.peekitem(-1)
        ask_key, (ask_px, ask_sz) = asks.peekitem(0)
        if bid_key < ask_key:
            break
        bid_id, ask_id = ids.bids.get(bid_key, -1), ids.asks.get(ask_key, -1)
        if bid_id != ask_id:
            drop_bid = bid_id < ask_id
        else:
            with localcontext() as ctx:
                ctx.prec = 34
                net = Decimal(bid_sz) - Decimal(ask_sz)
            if net == 0:  # both go
                del bids[bid_key], asks[ask_key]
                ids.bids.pop(bid_key, None)
                ids.asks.pop(ask_key, None)
                changes += [Change(BID, bid_px, None), Change(ASK, ask_px, None)]
                continue
            drop_bid = net < 0
            if drop_bid:  # the ask keeps the difference
                _dict_set(asks, ask_key, (ask_px, decimal_text(-net)))
                changes.append(Change(ASK, ask_px, decimal_text(-net)))
            else:
                _dict_set(bids, bid_key, (bid_px, decimal_text(net)))
                changes.append(Change(BID, bid_px, decimal_text(net)))
        if drop_bid:
            del bids[bid_key]
            ids.bids.pop(bid_key, None)
            changes.append(Change(BID, bid_px, None))
        else:
            del asks[ask_key]
            ids.asks.pop(ask_key, None)
            changes.append(Change(ASK, ask_px, None))
    return changes


def mid_spread(bid_px: str, ask_px: str) -> tuple[str, str, str]:
    """(mid, spread, spread in bps to 4 places) as plain decimal text, from the best prices."""
    with localcontext() as ctx:
        ctx.prec = 34
        bid, ask = Decimal(bid_px), Decimal(ask_px)
        mid = (bid + ask) / 2
        return decimal_text(mid), decimal_text(ask - bid), decimal_text((ask - bid) / mid * 10_000, 4)


def _band_sums(side: SortedDict, bounds: list[Decimal], bids_side: bool) -> list[Decimal]:
    """Cumulative size from the top of book out to each bound (nearest bound first).

    Called for every ``book.depth`` record, on books of a few levels to thousands: only the
    levels inside the widest band are taken (one bisection of the float keys; a float key never
    orders against the bound differently from its exact price, though two may tie), each cut is
    found by bisection and made exact with Decimal at the edge, and sizes are summed per segment
    in C, not level by level.
    """
    widest = float(bounds[-1])
    keys = side.keys()[side.bisect_left(widest):] if bids_side else side.keys()[:side.bisect_right(widest)]
    if not keys:
        return [Decimal(0)] * len(bounds)
    levels = operator.itemgetter(*keys)(side) if len(keys) > 1 else (side[keys[0]],)
    m = len(levels)

    def inside(i: int, bound: Decimal) -> bool:
        price = Decimal(levels[i][0])
        return price >= bound if bids_side else price <= bound

    sizes = list(map(_DECIMALS.__getitem__, map(_SIZE, levels)))
    totals: list[Decimal] = []
    total, edge = Decimal(0), m if bids_side else 0
    for bound in bounds:
        if bids_side:  # inside: indices cut..m-1 (the best bid is last)
            cut = bisect.bisect_left(keys, float(bound))
            while cut < m and not inside(cut, bound):
                cut += 1
            while cut > 0 and inside(cut - 1, bound):
                cut -= 1
            total += sum(sizes[cut:edge], Decimal(0))
        else:  # inside: indices 0..cut-1 (the best ask is first)
            cut = bisect.bisect_right(keys, float(bound))
            while cut > 0 and not inside(cut - 1, bound):
                cut -= 1
            while cut < m and inside(cut, bound):
                cut += 1
            total += sum(sizes[edge:cut], Decimal(0))
        totals.append(total)
        edge = cut
    return totals


class _Decimals(dict[str, Decimal]):
    """Decimal of a size text, memoised: a book's sizes repeat (lots), and parsing them is the
    cost of a band sum. Bounded: cleared past ``LIMIT`` texts."""

    LIMIT = 200_000

    def __missing__(self, text: str) -> Decimal:
        if len(self) >= self.LIMIT:
            self.clear()
        value = self[text] = Decimal(text)
        return value


_DECIMALS = _Decimals()
_SIZE = operator.itemgetter(1)


