"""The compiled book core (app/book_core_c.pyx) against the Python reference (app/book_core.py):
built by ``make install``, and level for level the same on any input, bad ones included."""

from __future__ import annotations

import gc
import importlib
import os
import random
import sys
import tracemalloc
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from app import book, book_core
from app.errors import ConfigError, FrameError
from app.venues import base as venue_base
from tests.helpers import examples


def _compiled() -> ModuleType:
    return importlib.import_module("app.book_core_c")


def book_of(core: ModuleType) -> book.OrderBook:
    """An empty book running ``core``."""
    ob = book.OrderBook()
    ob.core, ob.bids, ob.asks = core, core.Side(True), core.Side(False)
    return ob


def test_make_install_built_the_compiled_core_and_the_worker_runs_it_by_default() -> None:
    compiled = _compiled()  # ImportError: `make install` did not build it (a C compiler is needed)
    assert compiled.NAME == "compiled"
    if os.environ.get("BOOK_CORE", "auto") != "python":
        assert book.core is compiled
    previous = book.core.NAME
    try:
        assert book.use_core("python") == "python"
        assert book.OrderBook().core is book_core
        assert venue_base.plain_levels is book_core.plain_levels  # the venues read levels with it too
        assert book.use_core("auto") == "compiled"
        assert book.OrderBook().core is compiled
        assert venue_base.plain_levels is compiled.plain_levels
        with pytest.raises(ConfigError, match="BOOK_CORE='fast' must be one of auto, compiled, python"):
            book.use_core("fast")
    finally:
        book.use_core(previous)


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except FrameError as exc:
        return "frame-error", (exc.reason, exc.detail)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, None


numbers = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\A[ +-]?(\d{1,6}(\.\d{0,8})?|\.\d{1,8})([eE][+-]?\d{1,3})?\s?\Z"),
    st.sampled_from(["0", "0.0", "-0", "0e5", "nan", "NaN", "inf", "-inf", "1_000", "1e308", "1e309", "5e-324",
                     "2.5e-324", " 7 ", "\u0661\u0662", "0x10", "", "."]),
)


# Plain decimals, the venues' own form: the compiled core reads these itself (m / 10**k, exact
# while m ≤ 2**53 and k ≤ 22) and asks ``float`` for anything else; the edges of that rule here.
plain_decimals = st.one_of(
    st.from_regex(r"\A\d{0,19}(\.\d{0,26})?\Z"),
    st.sampled_from(["9007199254740992", "9007199254740993", "9007199254740991.5", "900719925474099.3",
                     "0.0000000000000000000001", "0.00000000000000000000001", "1.0000000000000000000000",
                     "123456789012345678901234567890", "00000000000000000067123.40", "67123.", ".5", "0.",
                     "0", "0.000", "..5", "1.2.3", "1e5", "+1", "-1", "1 ", "\u0661", "100000000000000001"]),
)


@settings(max_examples=examples(5000), deadline=None)
@given(text=st.one_of(numbers, plain_decimals))
def test_prices_and_sizes_are_read_alike_good_or_bad(text: str) -> None:
    compiled = _compiled()
    assert _outcome(lambda: compiled.parse_key(text)) == _outcome(lambda: book_core.parse_key(text))
    assert _outcome(lambda: compiled.parse_zero(text)) == _outcome(lambda: book_core.parse_zero(text))


fields = st.one_of(st.sampled_from(["1", "0.5", "", "67123.40"]), st.integers(0, 9), st.floats(0, 9), st.none())
entries = st.one_of(st.lists(fields, max_size=4), st.tuples(fields, fields), fields)
raw_levels = st.one_of(st.lists(st.lists(st.sampled_from(["1", "0.5", "67123.40"]), min_size=2, max_size=3),
                                max_size=6),
                       st.lists(entries, max_size=6), st.tuples(entries), st.none(), st.text(max_size=3))


@settings(max_examples=examples(2000), deadline=None)
@given(raw=raw_levels)
def test_levels_in_the_venues_own_form_are_read_alike(raw: Any) -> None:
    """``plain_levels``: [[price, size, ...], ...] of strings → [(price, size), ...], the same
    text objects; anything else → None (``app.venues.base.levels`` then reads entry by entry)."""
    expected = book_core.plain_levels(raw)
    got = _compiled().plain_levels(raw)
    assert got == expected
    if expected is not None:
        assert all(type(g) is tuple and g[0] is r[0] and g[1] is r[1] for g, r in zip(got, raw, strict=True))


prices = st.integers(1, 60).map(lambda p: f"{p / 4:g}")  # few prices: updates hit, move and delete levels
# (the compiled side keeps a size of up to 23 ASCII characters inline, any other as its str)
sizes = st.sampled_from(["0", "0.000", "1", "1.0", "2", "0.5", "3", "2." + "0" * 21, "2." + "0" * 22, "\uff12"])
levels = st.lists(st.tuples(prices, sizes), max_size=12)  # a price may repeat within an update
operation = st.one_of(
    # unlisted: as the worker's steps; raw: read in place from their JSON
    st.tuples(st.sampled_from(["apply", "apply_unlisted", "apply_raw"]), levels, levels),
    st.tuples(st.sampled_from(["replace", "replace_unlisted"]), levels, levels),
    st.tuples(st.just("apply"), levels, st.lists(st.tuples(st.sampled_from(["1", "x", "-2", "inf"]), sizes),
                                                  min_size=1, max_size=2)),  # a bad level: nothing applied
    # what the dYdX uncrossing does: a side's level set or removed; a price written otherwise
    # ("2.50" for 2.5) keeps its level but changes its row's key
    st.tuples(st.sampled_from(["set", "remove"]), st.booleans(),
              st.tuples(prices.map(lambda p: p + ("0" if "." in p else ".0")) | prices,
                        sizes.filter(lambda s: float(s) > 0))),
    st.tuples(st.just("take"), st.none(), st.none()),  # a commit: the rows changed since the last
)


def _state(ob: book.OrderBook, bound: float) -> Any:
    return (ob.bids.items(), ob.asks.items(), ob.levels(3), ob.top(), ob.crossed(), len(ob),
            ob.bids.within(bound), ob.asks.within(bound), ob.bids.best(), ob.asks.best(), list(ob.bids),
            [ob.bids.get(k) for k in (1.0, 2.25, 99.0)], [k in ob.asks for k in (1.0, 2.25, 99.0)])


def _step(ob: book.OrderBook, name: str, first: Any, second: Any) -> Any:
    if name in ("apply", "replace"):
        return getattr(ob, name)(first, second)
    if name == "apply_raw":  # levels read in place from their JSON, as the Binance reader leaves them
        raw = [ob.core.raw_levels(orjson.dumps(levels)) for levels in (first, second)]
        return ob.apply(first if raw[0] is None else raw[0], second if raw[1] is None else raw[1])
    if name.endswith("_unlisted"):
        changes = getattr(ob, name.removesuffix("_unlisted"))(first, second, False)
        assert changes == []  # none listed; the sides track them all the same (the rows below)
        return changes
    side = ob.bids if first else ob.asks
    if name == "set":
        return side.set(float(second[0]), (second[0], second[1]))
    if name == "remove":
        return side.remove(float(second[0]))
    rows: list[tuple[bytes, bytes | None]] = []
    ob.bids.take_rows(b"k\x00b", rows)
    ob.asks.take_rows(b"k\x00a", rows)
    return sorted(rows, key=lambda row: (row[0], row[1] or b""))


def _rows_of(ob: book.OrderBook) -> dict[bytes, bytes]:
    """The book as its table rows (``app.state.layout``)."""
    return {(b"k\x00" + tag + price.encode()): size.encode()
            for tag, side in ((b"b", ob.bids), (b"a", ob.asks)) for _, (price, size) in side.items()}


@settings(max_examples=examples(500), deadline=None)
@given(ops=st.lists(operation, max_size=25), bound=st.integers(1, 60).map(lambda p: p / 4))
def test_both_cores_make_the_same_books_changes_and_rows(ops: list[tuple[str, Any, Any]], bound: float) -> None:
    """Any sequence of updates, snapshots, single-level sets and removals and commits (``take``):
    the same books, the same changes and the same rows from both cores — and the rows taken,
    written in order over the table (the last row of a key wins, None deletes), always hold the
    book exactly: a level changed many times between two takes is written once, as it is."""
    books = [book_of(_compiled()), book_of(book_core)]
    table: dict[bytes, bytes] = {}
    for name, first, second in [*ops, ("take", None, None)]:
        results = [_outcome(partial(_step, ob, name, first, second)) for ob in books]
        assert results[0] == results[1]
        assert _state(books[0], bound) == _state(books[1], bound)
        if name == "take":
            rows = results[0][1]
            assert len({key for key, _ in rows}) == len(rows)  # each key once
            for key, value in rows:
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
            assert table == _rows_of(books[0])
    for ob in books:  # and the reference's own invariants: sorted, best last, no zero size
        bids, asks = [k for k, _ in ob.bids.items()], [k for k, _ in ob.asks.items()]
        assert bids == sorted(bids, reverse=True)
        assert asks == sorted(asks)
        assert all(float(s) > 0 for _, (_, s) in ob.bids.items() + ob.asks.items())


def test_a_deep_side_keeps_its_order_through_inserts_and_deletes_at_both_ends() -> None:
    """Far more levels than the compiled side's first allocation (64): it grows, shifts and stays
    sorted exactly as the reference does."""
    books = [book_of(_compiled()), book_of(book_core)]
    for ob in books:
        ob.apply([(str(1000 - i), "1") for i in range(500)], [(str(1001 + i), "1") for i in range(500)])
        ob.apply([(str(1000 - i), "0") for i in range(0, 500, 3)], [(str(1500 - i), "0") for i in range(0, 500, 7)])
        ob.apply([(str(400 - i), "2") for i in range(50)], [(str(1001 + i), "5") for i in range(0, 40, 2)])
    assert books[0].bids.items() == books[1].bids.items()
    assert books[0].asks.items() == books[1].asks.items()
    assert (len(books[0].bids), len(books[0].asks)) == (333 + 50, 428 + 3)  # 3 asks deleted, then set again


def _many_levels(seed: int, n: int, low: int, width: int, zeros: float) -> list[tuple[str, str]]:
    """``n`` levels of prices in [low, low + width), a share ``zeros`` of them deletions: drawn
    from a seed (hypothesis's own lists of hundreds of levels would be short, and shrink badly)."""
    rnd = random.Random(seed)
    return [(str(rnd.randrange(low, low + width)), "0" if rnd.random() < zeros else rnd.choice(["1", "2", "3"]))
            for _ in range(n)]


deep_levels = st.builds(_many_levels, st.integers(0, 2**32), st.sampled_from([0, 3, 150, 600, 1500]),
                        st.integers(1, 2500), st.sampled_from([1, 5, 40, 500, 3000]),
                        st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]))
deep_prices = st.integers(1, 3000).map(str)
deep_operation = st.one_of(
    st.tuples(st.just("apply_unlisted"), deep_levels, deep_levels),
    st.tuples(st.just("apply_raw"), deep_levels, deep_levels),
    st.tuples(st.just("apply"), deep_levels, st.just([])),
    st.tuples(st.just("replace_unlisted"), deep_levels, deep_levels),
    st.tuples(st.sampled_from(["set", "remove"]), st.booleans(), st.tuples(deep_prices, st.just("4"))),
    st.tuples(st.just("take"), st.none(), st.none()),
    st.tuples(st.just("restore"), st.none(), st.none()),  # the sides built again from their levels
)


@settings(max_examples=examples(300), deadline=None)
@given(ops=st.lists(deep_operation, min_size=3, max_size=30), bound=st.integers(1, 3000).map(float),
       n=st.integers(0, 700))
def test_deep_books_are_the_same_in_both_cores(ops: list[tuple[str, Any, Any]], bound: float, n: int) -> None:
    """Thousands of levels a side, inserted and removed anywhere: the compiled side's blocks of
    64 levels split, take in their neighbours and go, and every reading (levels, best, top,
    within, iteration, lookups) and every take's rows stay those of the reference's flat lists."""
    books = [book_of(_compiled()), book_of(book_core)]
    table: dict[bytes, bytes] = {}
    blocks = 0
    for name, first, second in [*ops, ("take", None, None)]:
        if name == "restore":
            for ob in books:
                ob.bids = ob.core.Side(True, dict(ob.bids.items()))
                ob.asks = ob.core.Side(False, dict(ob.asks.items()))
            results = [None, None]
        else:
            results = [_outcome(partial(_step, ob, name, first, second)) for ob in books]
        assert results[0] == results[1]
        readings = [(ob.bids.items(), ob.asks.items(), ob.bids.top(n), ob.asks.top(n), ob.bids.within(bound),
                     ob.asks.within(bound), list(ob.asks), ob.bids.best(), ob.asks.best(), len(ob.bids),
                     [ob.bids.get(float(k)) for k in (1, 999, 1000, 2999, 3000)]) for ob in books]
        assert readings[0] == readings[1]
        blocks = max(blocks, books[0].bids.check_blocks(), books[0].asks.check_blocks())
        if name == "take":
            for key, value in results[0][1]:
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
            assert table == _rows_of(books[0])
        elif name == "restore":
            table = _rows_of(books[0])
    event(f"blocks of a side, at most: {min(blocks, 10)}{'+' if blocks >= 10 else ''}")


def test_the_compiled_sides_blocks_split_take_in_their_neighbours_and_go() -> None:
    """Levels added at the top and at the bottom (blocks split), most of them removed but every
    tenth (small blocks take in their next one), then all (blocks go), then added again: the
    blocks' invariants hold and every level is the reference's at each step."""
    compiled = _compiled()
    sides = [(compiled.Side(True), compiled), (book_core.Side(True), book_core)]
    steps = [[(str(p), "1") for p in range(1000, 3000)], [(str(p), "2") for p in range(999, 0, -1)],
             [(str(p), "0") for p in range(1, 3000) if p % 10], [(str(p), "3") for p in range(5, 3000, 10)],
             [(str(p), "0") for p in range(1, 3000)], [(str(p), "4") for p in range(2000, 0, -3)]]
    most = 0
    for levels in steps:
        sides[1][1].apply_levels(sides[1][0], book_core.Side(False), levels, [], False)
        for level in levels:  # the compiled side one level at a time: its invariants after each
            compiled.apply_levels(sides[0][0], compiled.Side(False), [level], [], False)
            blocks = sides[0][0].check_blocks()
        most = max(most, blocks)
        assert sides[0][0].items() == sides[1][0].items()
        assert blocks <= len(sides[0][0]) / 8 + 1  # never many small blocks
    assert most >= 40  # (3,000 levels: the steps made and merged blocks)


def test_a_size_that_is_not_text_is_kept_as_it_is_by_both_cores() -> None:
    """Levels are the venues' texts, but a number given as a size (``float`` reads it) is kept as
    the object it is, by both cores alike — never read as text it is not."""
    books = [book_of(_compiled()), book_of(book_core)]
    for ob in books:
        ob.apply([("1.5", 2), ("2.5", "3")], [("3", 2.5)], False)
        ob.apply([("1.5", 2), ("2.5", 4)], [("3", "1")], False)  # the same number again, a number for a text
        ob.bids.set(1.0, ("1.0", 7))
    assert [(ob.bids.items(), ob.asks.items()) for ob in books][0] == (books[1].bids.items(), books[1].asks.items())
    assert books[0].bids.items() == [(2.5, ("2.5", 4)), (1.5, ("1.5", 2)), (1.0, ("1.0", 7))]


def _young_level_tuples() -> int:
    """Tuples of text or bytes (or None) that the next young collection would walk."""
    return sum(1 for o in gc.get_objects(0) if type(o) is tuple and o
               and all(type(x) in (str, bytes) or x is None for x in o))


@pytest.mark.parametrize("core_name", ["compiled", "python"])
def test_the_compiled_books_keep_their_levels_out_of_the_young_collections(core_name: str) -> None:
    """A level's (price, size) as read lives as long as its reader keeps it, a commit's rows until
    the commit is done: the compiled core creates them untracked (no reference cycle), so a
    young collection never walks them (at 5,000 frames/s tens of thousands since the last one,
    10-40 ms of it). The reference leaves that to CPython (untracked after a first walk)."""
    core = _compiled() if core_name == "compiled" else book_core
    ob = book_of(core)
    was = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        ob.replace([(str(1000 - i), "1") for i in range(200)], [(str(1001 + i), "1") for i in range(200)])
        ob.apply([(str(1000 - i), "2") for i in range(0, 400, 2)], [(str(2000 + i), "3") for i in range(300)])
        ob.restore(ob.levels(10_000)[0], ob.levels(10_000)[1])
        ob.bids.set(5.0, ("5", str(1)))  # built at run time (a constant tuple is never tracked)
        rows: list[tuple[bytes, bytes | None]] = []
        core.encode_rows(b"k\x00b", {str(i): None if i % 2 else "1" for i in range(300)}, rows)
        levels = [v for _, v in ob.bids.items() + ob.asks.items()]
        assert len(levels) == (200 + 100 + 1) + (200 + 300)
        young = _young_level_tuples()
        tracked = [x for x in levels + rows if gc.is_tracked(x)]  # before a collection may untrack them
    finally:
        if was:
            gc.enable()
    if core_name == "compiled":
        assert tracked == []
        assert young < 50, young
    else:
        assert len(tracked) == len(levels) + len(rows)
        assert young >= len(tracked)


@pytest.mark.parametrize("core_name", ["compiled", "python"])
def test_levels_that_come_and_go_between_two_commits_are_held_once(core_name: str) -> None:
    """Commits failing for a while (the broker away): a side keeps the levels removed since the
    last take for their rows, but a price removed a million times is held a bounded number of
    times (the compiled side makes its list unique past a limit), and taken once."""
    core = _compiled() if core_name == "compiled" else book_core
    ob = book_of(core)
    ob.apply([(str(100 + i), "1") for i in range(10)], [])
    rows: list[tuple[bytes, bytes | None]] = []
    ob.bids.take_rows(b"k\x00b", rows)
    assert len(rows) == 10
    gone, back = [(str(100 + i), "0") for i in range(10)], [(str(100 + i), "2") for i in range(5)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200_000 if core_name == "compiled" else 2_000):  # a million removals (compiled)
            ob.apply(gone, [])
            ob.apply(back, [])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2**20, held  # a list of every removal: 8 MB
    rows = []
    ob.bids.take_rows(b"k\x00b", rows)
    assert sorted(rows) == sorted([(b"k\x00b%d" % (100 + i), b"2") for i in range(5)]
                                  + [(b"k\x00b%d" % (100 + i), None) for i in range(5, 10)])


@pytest.mark.parametrize("core_name", ["compiled", "python"])
def test_a_row_key_is_the_price_text_as_utf8_ascii_or_not(core_name: str) -> None:
    """The compiled side builds an ASCII price's row key in one copy; any other text (float()
    reads Arabic-Indic digits) is encoded as UTF-8 like the reference does."""
    core = _compiled() if core_name == "compiled" else book_core
    ob = book_of(core)
    ob.apply([("101.5", "1"), ("١٠٠", "2")], [("102", "٣")])
    ob.apply([("101.5", "0")], [])
    rows: list[tuple[bytes, bytes | None]] = []
    ob.bids.take_rows(b"k\x00b", rows)
    ob.asks.take_rows(b"k\x00a", rows)
    assert sorted(rows, key=lambda r: r[0]) == [(b"k\x00a102", "٣".encode()), (b"k\x00b101.5", None),
                                                (b"k\x00b" + "١٠٠".encode(), b"2")]


def test_the_compiled_side_holds_each_text_exactly_while_its_level_lives() -> None:
    """The compiled side keeps its levels' price texts in C arrays (no tuple per level), and a
    size text of up to 23 ASCII characters copied into its block (a longer or other one as the
    str): a text is held once while its level lives and let go when the level goes, changes size
    or is replaced — counted by CPython's own reference counts."""
    core = _compiled()
    side = core.Side(True)
    # objects of their own: a price, a size too long to keep inline, a short one
    price, size, other = "".join(["101", ".5"]), "".join(["2.", "0" * 22]), "".join(["3"])

    def counts() -> list[int]:
        return [sys.getrefcount(price), sys.getrefcount(size), sys.getrefcount(other)]

    base = counts()

    def held() -> list[int]:
        return [now - then for now, then in zip(counts(), base, strict=True)]

    ob = book.OrderBook()
    ob.core, ob.bids, ob.asks = core, side, core.Side(False)
    ob.apply([(price, size)], [])
    assert held() == [1, 1, 0]
    assert side.best() == (101.5, (price, size))
    ob.apply([("101.5", other)], [])  # a new size: the old one let go (the short one copied), the price kept
    assert held() == [1, 0, 0]
    assert side.best() == (101.5, (price, "3"))
    rows: list[tuple[bytes, bytes | None]] = []
    side.take_rows(b"k\x00b", rows)
    assert rows == [(b"k\x00b101.5", b"3")]
    ob.apply([("101.50", "0")], [])  # gone: its price text waits in the removed list for the next take
    assert held() == [1, 0, 0]
    side.take_rows(b"k\x00b", rows)
    assert held() == [0, 0, 0]
    ob.replace([(price, size)], [])
    ob.restore([(price, size)], [])  # the book's sides are new: the old ones let go of everything
    del side
    assert held() == [1, 1, 0]
    assert ob.bids.remove(101.5) == (price, size)
    ob.bids.take_rows(b"k\x00b", rows)
    assert held() == [0, 0, 0]


# Sizes as venues send them and as they should not (exponents, more than 18 decimals, more than
# 19 integer digits): the compiled band sums take the first and leave the rest to Decimal.
band_sizes = st.one_of(
    st.from_regex(r"\A\d{1,4}(\.\d{1,8})?\Z"),
    st.sampled_from(["0.000000000000000001", "0.0000000000000000001", "1E-8", "12345678901234567890",
                     "9999999999999999.999999999999999999", "0.10", "7."]),
)


@settings(max_examples=examples(500), deadline=None)
@given(bids=st.dictionaries(st.integers(9000, 10000), band_sizes, min_size=1, max_size=80),
       asks=st.dictionaries(st.integers(10001, 11000), band_sizes, min_size=1, max_size=80),
       cents=st.booleans())
# levels on the 10 bps bounds; an odd size outside every band (no fallback needed); 19 decimals (Decimal's sum)
@example(bids={9990: "5", 9989: "2", 9999: "1"}, asks={10001: "1", 10010: "7", 10011: "3"}, cents=True)
@example(bids={9000: "1E-8", 9999: "2"}, asks={10001: "1"}, cents=True)
@example(bids={9998: "0.0000000000000000001", 9999: "2"}, asks={10001: "1"}, cents=True)
def test_depth_bands_are_the_same_in_both_cores(bids: dict[int, str], asks: dict[int, str], cents: bool) -> None:
    """``book.depth``'s bands: the compiled side sums in 128-bit integers (``Side.band_sums``), the
    reference with Decimal; the same text for every band, levels on a bound included, and where
    a size is no plain decimal of at most 18 decimals the compiled side hands the sum back."""
    def price(p: int) -> str:
        return f"{p / 100}" if cents else f"{p}.{p % 7}5"
    results = []
    for core in (_compiled(), book_core):
        ob = book_of(core)
        ob.replace([(price(p), s) for p, s in bids.items()], [(price(p), s) for p, s in asks.items()])
        results.append(msgspec.to_builtins(ob.aggregates(5))["bands_bps"])
    assert results[0] == results[1]


def _plain(units: int, decimals: int) -> str:
    """``units`` × 10**-decimals as a plain decimal text."""
    whole, fraction = divmod(units, 10**decimals)
    return f"{whole}.{fraction:0{decimals}d}" if decimals else str(whole)


@settings(max_examples=examples(500), deadline=None)
@given(bid=st.integers(1, 10**27), spread=st.integers(0, 10**20), decimals=st.integers(0, 18))
@example(bid=1, spread=0, decimals=18)
@example(bid=599995, spread=10, decimals=1)
def test_the_bands_bounds_in_integers_are_the_exact_bounds(bid: int, spread: int, decimals: int) -> None:
    """``_integer_bounds``: each band's bound × 10**18 is the exact (B + A)/2 × (1 ∓ bps/10,000),
    rounded up for bids and down for asks — and the integer Decimal gave it before, wherever
    Decimal's 34 digits held the product (whole prices below 10**9 with 18 decimals do)."""
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, Inexact, localcontext
    from fractions import Fraction

    bid_px, ask_px = _plain(bid, decimals), _plain(bid + spread, decimals)
    b, a = book._scaled_int(bid_px), book._scaled_int(ask_px)
    assert b is not None
    assert a is not None
    assert (Fraction(b, 10**18), Fraction(a, 10**18)) == (Fraction(bid_px), Fraction(ask_px))
    bid_bounds, ask_bounds = book._integer_bounds(b, a)
    mid = Fraction(b + a, 2)
    for bounds, bps_sign, up in ((bid_bounds, -1, True), (ask_bounds, 1, False)):
        for bound, bps in zip(bounds, sorted(book.BANDS_BPS), strict=True):
            exact = mid * (1 + Fraction(bps_sign * bps, 10_000))
            assert (bound - 1 < exact <= bound) if up else (bound <= exact < bound + 1)
    with localcontext() as ctx:
        ctx.prec = 34
        ctx.clear_flags()
        dmid = (Decimal(bid_px) + Decimal(ask_px)) / 2
        old_bids = [int((dmid * f).scaleb(18).to_integral_value(rounding=ROUND_CEILING)) for f in book._BID_FACTORS]
        old_asks = [int((dmid * f).scaleb(18).to_integral_value(rounding=ROUND_FLOOR)) for f in book._ASK_FACTORS]
        if not ctx.flags[Inexact]:
            assert (old_bids, old_asks) == (bid_bounds, ask_bounds)


@pytest.mark.parametrize("text", ["1E+2", "1e-5", "-5", "0.0000000000000000001", "1.2.3", "", ".", "١٢", "²"])
def test_a_price_that_is_no_plain_decimal_has_no_band_integer(text: str) -> None:
    """Exponents, signs, more than 18 decimals and non-ASCII digits: no integer; the bands are
    then found through Decimal (``_band_texts``)."""
    assert book._scaled_int(text) is None


@settings(max_examples=examples(200), deadline=None)
@given(thousands=st.integers(1, 10**6), sizes=st.lists(
    st.sampled_from(["1", "0.5", "0.000000000000000001", "3.25", "2"]), min_size=13, max_size=13))
@example(thousands=1, sizes=["1"] * 12 + ["1E-8"])  # a size no integer holds: the Decimal path
def test_the_bands_are_the_same_through_integer_and_decimal_bounds(thousands: int, sizes: list[str]) -> None:
    """A compiled book's bands through ``_bands`` (integer bounds) are the texts of the Decimal
    path (``_band_texts`` with Decimal bounds), with levels exactly on each bound and a cent
    either side of it: the mid is a multiple of 2,000, so every bound is a whole price."""
    from decimal import Decimal, localcontext
    from fractions import Fraction

    mid = 2_000 * thousands
    ob = book_of(_compiled())
    sides = []
    for sign in (-1, 1):
        cents = [mid * 100 + sign]  # the best level, a cent from the mid
        for bps in sorted(book.BANDS_BPS):
            bound = (mid * 100) * (10_000 + sign * bps) // 10_000
            cents += [bound - 1, bound, bound + 1]
        sides.append([(_plain(c, 2), size) for c, size in zip(cents, sizes, strict=True)])
    ob.replace(*sides)
    best_bid, best_ask = sides[0][0][0], sides[1][0][0]
    with localcontext() as ctx:
        ctx.prec = 34
        dmid = (Decimal(best_bid) + Decimal(best_ask)) / 2
        assert dmid == mid
        fast = book._bands(ob, best_bid, best_ask, dmid)
        reference = (book._band_texts(ob.bids, [dmid * f for f in book._BID_FACTORS], bids_side=True),
                     book._band_texts(ob.asks, [dmid * f for f in book._ASK_FACTORS], bids_side=False))
    assert fast == reference
    for texts, levels, sign in ((fast[0], sides[0], -1), (fast[1], sides[1], 1)):
        for text, bps in zip(texts, sorted(book.BANDS_BPS), strict=True):
            bound = Fraction(mid) * (1 + Fraction(sign * bps, 10_000))
            inside = [Fraction(size) for px, size in levels if (Fraction(px) - bound) * sign <= 0]
            assert Fraction(text) == sum(inside)


def test_the_compiled_band_sums_are_exact_where_a_float_is_not() -> None:
    """Sizes whose float sum is off in the last digit, and a level exactly on a bound: counted
    exactly, in 128-bit integers; a size past 18 decimals or in an exponent: None (Decimal's)."""
    assert _compiled().BAND_SCALE == book._BAND_SCALE == 18  # the integers both sides of the call mean
    side = _compiled().Side(True)
    for px, sz in [("100", "0.1"), ("99.99", "0.2"), ("99", "0.000000000000000001"), ("90", "3")]:
        side.set(float(px), (px, sz))
    scale = 10 ** 18
    assert side.band_sums([100 * scale, 9999 * scale // 100, 99 * scale, 91 * scale],
                          [100.0, 99.99, 99.0, 91.0]) == [
        10 ** 17, 3 * 10 ** 17, 3 * 10 ** 17 + 1, 3 * 10 ** 17 + 1]
    assert side.band_sums([99 * scale + 1], [99.0]) == [3 * 10 ** 17]  # just above 99: the 99 level is out
    side.set(95.0, ("95", "1E-8"))
    assert side.band_sums([99 * scale], [99.0]) == [3 * 10 ** 17 + 1]  # the odd size is beyond the bound
    assert side.band_sums([91 * scale], [91.0]) is None
    side.set(95.0, ("95", "0.0000000000000000001"))
    assert side.band_sums([91 * scale], [91.0]) is None


@pytest.mark.parametrize(("bids_side", "bound", "inside"), [
    (True, "99.0000000000000000001", False), (True, "98.9999999999999999999", True),
    (False, "98.9999999999999999999", False), (False, "99.0000000000000000001", True),
])
def test_a_bound_finer_than_the_band_integers_still_cuts_exactly(bids_side: bool, bound: str, inside: bool) -> None:
    """A bound with more decimals than the integers hold (19 here): rounded up for bids, down for
    asks, so that the level at 99 is in or out of the band exactly as Decimal says."""
    from decimal import Decimal, localcontext

    sums = []
    for core in (_compiled(), book_core):
        side = core.Side(bids_side)
        side.set(99.0, ("99", "2"))
        with localcontext() as ctx:
            ctx.prec = 34
            sums.append(book._band_sums(side, [Decimal(bound)], bids_side))
    assert sums[0] == sums[1] == [Decimal(2 if inside else 0)]


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(0, 10**34 - 1) | st.sampled_from([0, 1, 10**18, 10**17, 5 * 10**18 + 10**12, 10**34 - 1]))
def test_a_band_sum_becomes_the_text_decimal_gives_it(total: int) -> None:
    """The compiled core's band sums (integers × 10**18, below 10**34) go straight to the
    record's text: the text ``decimal_text`` gives the Decimal they stand for (in the 34 digits
    of the aggregates' context)."""
    from decimal import Decimal, localcontext

    from app.decimals import decimal_text

    with localcontext() as ctx:
        ctx.prec = 34
        assert book._scaled_text(total) == decimal_text(Decimal(total).scaleb(-book._BAND_SCALE))
