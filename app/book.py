"""An L2 order book with exact prices and sizes, no I/O.

Each side maps a float sort key to the venue's own (price, size) strings. The float is
only an ordering key (distinct decimal prices of ≤ 15 significant digits never collide);
what is published, persisted and check-summed is always the venue's text.

Every mutation returns the level changes it made (:data:`Change`: side, price, size, with
size None meaning "deleted"; none listed with ``listed=False``); a snapshot
(:meth:`OrderBook.replace`) returns the diff against the book it replaces. What the table must
persist the sides track themselves: each commit takes their changed levels' rows
(``Side.take_rows``), whatever was listed.

The sides and the level loop are the *book core*: compiled (``app/book_core_c.pyx``, built by
``make install``) or the Python reference (``app/book_core.py``), same results. Which one runs:
``BOOK_CORE`` (``auto``: the compiled one when it is built), :func:`use_core`, :data:`core`.

A venue whose crossed books are resolved by age (dYdX, ``SyncRule.uncross_by_age``) keeps
beside the book a :class:`LevelIds` — the sequence of the update that set each level — and
:func:`uncross` applies its rule. Other venues pay nothing for it: the book itself is unchanged.
"""

from __future__ import annotations

import bisect
import importlib
import logging
import operator
import os
from collections.abc import Iterable, Iterator
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from types import ModuleType
from typing import Any, NamedTuple

from app import book_core
from app.book_core import Change, Side
from app.decimals import decimal_text
from app.errors import ConfigError
from app.records.book import Aggregates, Band
from app.venues import base as venue_base
from app.venues.base import Level

log = logging.getLogger(__name__)

BID, ASK = "b", "a"
BANDS_BPS = (10, 25, 50, 100)

__all__ = ["ASK", "BID", "Change", "LevelIds", "OrderBook", "Top", "core", "mid_spread", "uncross",
           "use_core"]


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("app.book_core_c")  # built by `make install` (setup.py)
    except ImportError:
        return None


#: The core in use (``core.NAME``: "compiled" or "python"): the compiled one when it is built,
#: unless BOOK_CORE=python; the worker sets it from its settings (:func:`use_core`).
core: Any = book_core if os.environ.get("BOOK_CORE", "").strip().lower() == "python" else (_compiled() or book_core)


def _lend_readers(to: ModuleType) -> None:
    """The venues read levels with the core that runs (``plain_levels``, ``raw_levels``)."""
    venue_base.plain_levels = to.plain_levels
    venue_base.raw_levels = to.raw_levels


_lend_readers(core)


def use_core(name: str) -> str:
    """Run the book core ``name`` (``BOOK_CORE``: auto, compiled, python) from now on; returns the
    name of the one that runs. Books made before keep theirs (call it before any book exists)."""
    global core
    book_core.checked_core(name)
    compiled = _compiled()
    if name == "compiled" and compiled is None:
        raise ConfigError("BOOK_CORE=compiled but the compiled book core is not built (app/book_core_c.pyx): "
                          "run `make install` (it needs a C compiler), or set BOOK_CORE=auto or python")
    core = book_core if name == "python" or compiled is None else compiled
    _lend_readers(core)
    if name == "auto" and compiled is None:
        log.warning("the compiled book core is not built: the Python core runs (same books, slower; "
                    "`make install` builds it)")
    return str(core.NAME)


class Top(NamedTuple):
    """Top of book as the venue's text; None for an empty side."""

    bid_px: str | None
    bid_sz: str | None
    ask_px: str | None
    ask_sz: str | None


#: Builds a NamedTuple without its Python-level ``__new__`` (a third of the cost, on the hot path).
_new = tuple.__new__


class OrderBook:
    """Two sorted sides (:class:`app.book_core.Side`: the best level last)."""

    __slots__ = ("asks", "bids", "core")

    def __init__(self) -> None:
        self.core = core
        self.bids: Side = self.core.Side(True)
        self.asks: Side = self.core.Side(False)

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)

    # -- mutation -------------------------------------------------------------------
    def apply(self, bids: Iterable[Level], asks: Iterable[Level], listed: bool = True) -> list[Change]:
        """Apply absolute level updates of both sides: all validated first, then applied, so a
        bad level leaves the book untouched (memory and table never part ways). Returns the
        changes made — none listed with ``listed=False`` (the sides track them all the same)."""
        changes: list[Change] = self.core.apply_levels(self.bids, self.asks, bids, asks, listed)
        return changes

    def replace(self, bids: Iterable[Level], asks: Iterable[Level], listed: bool = True) -> list[Change]:
        """Replace the whole book by a snapshot; returns only the levels that differ. Both sides
        are validated before either changes. The book is changed in place, by the level loop:
        each level the snapshot lacks deleted, each of its levels set (a kept level keeps its
        persisted price text), so the sides track these changes as any others."""
        parse_key, parse_zero = self.core.parse_key, self.core.parse_zero
        updates = []
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            new: dict[float, tuple[str, str]] = {}
            for price, size in levels:
                if not parse_zero(size):
                    new[parse_key(price)] = (price, size)
            gone = [(prev[0], "0") for key, prev in side.items() if key not in new]
            # the worst level first: into an empty side each one goes at the end of its arrays
            updates.append(gone + [new[key] for key in sorted(new, reverse=side is self.asks)])
        changes: list[Change] = self.core.apply_levels(self.bids, self.asks, updates[0], updates[1], listed)
        return changes

    def restore(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Put persisted levels back (loading from the table): no validation, no change records."""
        self.bids = self.core.Side(True, {float(p): (p, s) for p, s in bids})
        self.asks = self.core.Side(False, {float(p): (p, s) for p, s in asks})

    # -- reading --------------------------------------------------------------------
    def best_bid(self) -> tuple[str, str] | None:
        best = self.bids.best()
        return best[1] if best is not None else None

    def best_ask(self) -> tuple[str, str] | None:
        best = self.asks.best()
        return best[1] if best is not None else None

    def crossed(self) -> bool:
        bid, ask = self.bids.best(), self.asks.best()
        return bid is not None and ask is not None and bid[0] >= ask[0]

    def top(self) -> Top:
        bid, ask = self.bids.best(), self.asks.best()
        return _new(Top, (
            bid[1][0] if bid else None,
            bid[1][1] if bid else None,
            ask[1][0] if ask else None,
            ask[1][1] if ask else None,
        ))

    def iter_bids(self) -> Iterator[tuple[str, str]]:
        """Bids best first."""
        return iter(self.bids.top(len(self.bids)))

    def iter_asks(self) -> Iterator[tuple[str, str]]:
        """Asks best first."""
        return iter(self.asks.top(len(self.asks)))

    def levels(self, n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        return self.bids.top(n), self.asks.top(n)

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
            bid_cum, ask_cum = _bands(self, bids[0][0], asks[0][0], mid)
            out.bands_bps = {b: Band(bid=bc, ask=ac) for b, bc, ac in zip(_BAND_NAMES, bid_cum, ask_cum, strict=True)}
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
    while (best_bid := bids.best()) is not None and (best_ask := asks.best()) is not None:
        bid_key, (bid_px, bid_sz) = best_bid
        ask_key, (ask_px, ask_sz) = best_ask
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
                bids.remove(bid_key)
                asks.remove(ask_key)
                ids.bids.pop(bid_key, None)
                ids.asks.pop(ask_key, None)
                changes += [(BID, bid_px, None), (ASK, ask_px, None)]
                continue
            drop_bid = net < 0
            if drop_bid:  # the ask keeps the difference
                asks.set(ask_key, (ask_px, decimal_text(-net)))
                changes.append((ASK, ask_px, decimal_text(-net)))
            else:
                bids.set(bid_key, (bid_px, decimal_text(net)))
                changes.append((BID, bid_px, decimal_text(net)))
        if drop_bid:
            bids.remove(bid_key)
            ids.bids.pop(bid_key, None)
            changes.append((BID, bid_px, None))
        else:
            asks.remove(ask_key)
            ids.asks.pop(ask_key, None)
            changes.append((ASK, ask_px, None))
    return changes


def mid_spread(bid_px: str, ask_px: str) -> tuple[str, str, str]:
    """(mid, spread, spread in bps to 4 places) as plain decimal text, from the best prices."""
    with localcontext() as ctx:
        ctx.prec = 34
        bid, ask = Decimal(bid_px), Decimal(ask_px)
        mid = (bid + ask) / 2
        return decimal_text(mid), decimal_text(ask - bid), decimal_text((ask - bid) / mid * 10_000, 4)


def _band_sums(side: Side, bounds: list[Decimal], bids_side: bool) -> list[Decimal]:
    """Cumulative size from the top of book out to each bound (nearest bound first).

    Called for every ``book.depth`` record, on books of a few levels to thousands: only the
    levels inside the widest band are taken (one bisection of the float keys; a float key never
    orders against the bound differently from its exact price, though two may tie), each cut is
    found by bisection and made exact with Decimal at the edge, and sizes are summed per segment
    in C, not level by level. The compiled core does it all in C, exactly, in integers
    (``Side.band_sums``: the 2,232 bids within 100 bps of the capture's 5,018-level Binance book in
    0.026 ms, 0.39 ms here); this path sums when it cannot (a text that is no plain decimal of at
    most 18 decimals).
    """
    sums = _band_totals(side, bounds, bids_side)
    if sums is not None:
        return [Decimal(total).scaleb(-_BAND_SCALE) for total in sums]
    return _decimal_band_sums(side, bounds, bids_side)


def _decimal_band_sums(side: Side, bounds: list[Decimal], bids_side: bool) -> list[Decimal]:
    """:func:`_band_sums` with Decimal, where the compiled core is not running or said it cannot."""
    keys, levels = side.within(float(bounds[-1]))  # best first
    if not keys:
        return [Decimal(0)] * len(bounds)
    m = len(levels)
    order = [-k for k in keys] if bids_side else keys  # ascending, away from the top

    def inside(i: int, bound: Decimal) -> bool:
        price = Decimal(levels[i][0])
        return price >= bound if bids_side else price <= bound

    sizes = list(map(_DECIMALS.__getitem__, map(_SIZE, levels)))
    totals: list[Decimal] = []
    total, edge = Decimal(0), 0
    for bound in bounds:  # inside: indices edge..cut-1
        cut = bisect.bisect_right(order, -float(bound) if bids_side else float(bound))
        while cut > 0 and not inside(cut - 1, bound):
            cut -= 1
        while cut < m and inside(cut, bound):
            cut += 1
        total += sum(sizes[edge:cut], Decimal(0))
        totals.append(total)
        edge = cut
    return totals


def _bands(book: OrderBook, bid_px: str, ask_px: str, mid: Decimal) -> tuple[list[str], list[str]]:
    """Each band's cumulative bid and ask size, as the record's texts (nearest band first).

    With the compiled core and best prices that are plain decimals of at most 18 decimals, the
    bounds are found in integers: with B and A the best prices × 10**18, a bound × 10**18 is
    (B + A) × (10,000 ∓ bps) / 20,000, rounded up for bids and down for asks, exactly — the
    integers ``_band_totals`` takes from Decimal (16 Decimal operations, a quarter of an
    aggregate's cost), the same wherever the 34 digits of ``mid * factor`` hold the product.
    Otherwise (the pure-Python core, a price in an exponent or past 18 decimals) through
    :func:`_band_texts` with Decimal bounds, and a side whose levels the core cannot sum (a size
    in an exponent) with Decimal sums; ``mid`` is the Decimal mid for those paths."""
    fast_bids, fast_asks = getattr(book.bids, "band_sums", None), getattr(book.asks, "band_sums", None)
    if fast_bids is not None and fast_asks is not None:
        bid, ask = _scaled_int(bid_px), _scaled_int(ask_px)
        if bid is not None and ask is not None:
            bid_bounds, ask_bounds = _integer_bounds(bid, ask)
            approx = (bid + ask) / (2 * _BAND_ONE)  # the bounds as floats: the core's first look (a millionth's slack)
            bid_sums = fast_bids(bid_bounds, [approx * f for f in _BID_FLOATS])
            ask_sums = fast_asks(ask_bounds, [approx * f for f in _ASK_FLOATS])
            return (_core_texts(bid_sums, book.bids, mid, bids_side=True),
                    _core_texts(ask_sums, book.asks, mid, bids_side=False))
    return (_band_texts(book.bids, _decimal_bounds(mid, bids_side=True), bids_side=True),
            _band_texts(book.asks, _decimal_bounds(mid, bids_side=False), bids_side=False))


def _decimal_bounds(mid: Decimal, bids_side: bool) -> list[Decimal]:
    """The bands' bounds of one side in Decimal (nearest first)."""
    return [mid * f for f in (_BID_FACTORS if bids_side else _ASK_FACTORS)]


def _integer_bounds(bid: int, ask: int) -> tuple[list[int], list[int]]:
    """The bands' bounds × 10**_BAND_SCALE from the best prices × 10**_BAND_SCALE: bids' rounded
    up, asks' down (a level at P is inside a bid band when P × 10**18 ≥ the bound)."""
    twice = bid + ask  # 2 × mid × 10**18
    return [-(-twice * k // 20_000) for k in _BID_KS], [twice * k // 20_000 for k in _ASK_KS]


def _scaled_int(text: str) -> int | None:
    """A price text × 10**_BAND_SCALE as an integer; None unless it is a plain decimal (ASCII
    digits, at most one point) of at most _BAND_SCALE decimals."""
    whole, _, fraction = text.partition(".")
    if (len(fraction) > _BAND_SCALE or not (whole.isascii() and whole.isdigit())
            or (fraction and not (fraction.isascii() and fraction.isdigit()))):
        return None
    return int(whole + fraction.ljust(_BAND_SCALE, "0"))


def _band_totals(side: Side, bounds: list[Decimal], bids_side: bool) -> list[int] | None:
    """:func:`_band_sums` by the compiled core, each sum × 10**_BAND_SCALE; None where it cannot."""
    fast = getattr(side, "band_sums", None)
    if fast is None or not bounds:
        return None
    # a level is inside a bid bound b when P ≥ b, that is P·10**18 ≥ ⌈b·10**18⌉ (P·10**18 is
    # an integer); inside an ask bound when P·10**18 ≤ ⌊b·10**18⌋
    rounding = ROUND_CEILING if bids_side else ROUND_FLOOR
    sums: list[int] | None = fast([int(b.scaleb(_BAND_SCALE).to_integral_value(rounding=rounding))
                                   for b in bounds], [float(b) for b in bounds])
    return sums


def _band_texts(side: Side, bounds: list[Decimal], bids_side: bool) -> list[str]:
    """:func:`_band_sums` as the record's texts; from the compiled core's integers straight to
    text (``decimal_text`` of each sum was a fifth of an aggregate's cost)."""
    sums = _band_totals(side, bounds, bids_side)
    return _decimal_texts(side, bounds, bids_side) if sums is None else [_scaled_text(total) for total in sums]


def _core_texts(sums: list[int] | None, side: Side, mid: Decimal, bids_side: bool) -> list[str]:
    """The compiled core's band sums as texts; where it gave none, the Decimal sums' (without
    asking the core again), over Decimal bounds made only then."""
    if sums is None:
        return _decimal_texts(side, _decimal_bounds(mid, bids_side), bids_side)
    return [_scaled_text(total) for total in sums]


def _decimal_texts(side: Side, bounds: list[Decimal], bids_side: bool) -> list[str]:
    return [decimal_text(total) for total in _decimal_band_sums(side, bounds, bids_side)]


def _scaled_text(total: int) -> str:
    """``decimal_text(Decimal(total).scaleb(-_BAND_SCALE))`` of a sum ≥ 0, from the integer's
    digits (a third faster than ``divmod`` by 10**18 and a format: eight of them a record)."""
    text = str(total)
    if len(text) <= _BAND_SCALE:
        fraction = text.rjust(_BAND_SCALE, "0").rstrip("0")
        return "0." + fraction if fraction else "0"
    whole, fraction = text[:-_BAND_SCALE], text[-_BAND_SCALE:].rstrip("0")
    return whole + "." + fraction if fraction else whole


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
#: Decimals of the integers the compiled core's band sums work in (``BAND_SCALE`` of app/book_core_c.pyx).
_BAND_SCALE = 18
_BAND_ONE = 10**_BAND_SCALE
#: The bands' names in the record and their bounds' factors of the mid, nearest first.
_BAND_NAMES = tuple(str(b) for b in sorted(BANDS_BPS))
_BID_FACTORS = tuple(1 - Decimal(b) / 10_000 for b in sorted(BANDS_BPS))
_ASK_FACTORS = tuple(1 + Decimal(b) / 10_000 for b in sorted(BANDS_BPS))
#: The same factors × 10,000 (``_bands``' integers) and as floats.
_BID_KS = tuple(10_000 - b for b in sorted(BANDS_BPS))
_ASK_KS = tuple(10_000 + b for b in sorted(BANDS_BPS))
_BID_FLOATS = tuple(k / 10_000 for k in _BID_KS)
_ASK_FLOATS = tuple(k / 10_000 for k in _ASK_KS)


