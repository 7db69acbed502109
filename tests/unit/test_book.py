"""The order book: exact strings, minimal change records, checksum, aggregates."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.book import OrderBook
from app.errors import FrameError
from app.venues.base import num_str

pytestmark = pytest.mark.usefixtures("each_book_core")  # every test with each book core


def test_changes_record_only_what_moved_and_keep_the_venue_text() -> None:
    book = OrderBook()
    assert book.apply([("7.6110", "2")], [("7.6150", "10")]) == [("b", "7.6110", "2"), ("a", "7.6150", "10")]
    assert book.apply([("7.6110", "2")], []) == []  # same size: no change
    assert book.apply([("7.611", "3")], []) == [("b", "7.6110", "3")]  # same price, other text
    assert book.apply([("7.6110", "0.000")], []) == [("b", "7.6110", None)]
    assert book.apply([("9.99", "0")], []) == []  # delete of an unknown level is harmless
    assert book.top() == (None, None, "7.6150", "10")


def test_a_number_with_a_huge_exponent_is_a_frame_error_not_a_gigabyte_of_text() -> None:
    with pytest.raises(FrameError, match="bad-number"):
        num_str("1e999999999")
    assert num_str("1.5e3") == "1500"


def test_a_bad_level_leaves_the_whole_update_unapplied() -> None:
    """Validated first, then applied: the table records exactly what memory holds."""
    book = OrderBook()
    book.apply([("100", "1")], [("101", "1")])
    with pytest.raises(FrameError, match="bad-size"):
        book.apply([("100", "5"), ("99", "2")], [("101", "x")])
    assert (list(book.iter_bids()), list(book.iter_asks())) == ([("100", "1")], [("101", "1")])


def test_snapshot_replace_diffs_against_the_current_book() -> None:
    book = OrderBook()
    book.apply([("100", "1"), ("99", "2")], [("101", "1")])
    changes = book.replace([("100", "1"), ("98", "5")], [("101", "3")])
    assert sorted(changes) == sorted([("b", "99", None), ("b", "98", "5"), ("a", "101", "3")])
    assert book.levels(10) == ([("100", "1"), ("98", "5")], [("101", "3")])


def test_crossed_book_is_detected() -> None:
    book = OrderBook()
    book.apply([("101", "1")], [("100", "1")])
    assert book.crossed()


@pytest.mark.parametrize(("price", "size"),
                         [("abc", "1"), ("-1", "1"), ("0", "1"), ("1", "-2"), ("1", "nan"), ("inf", "1")])
def test_bad_prices_and_sizes_are_frame_errors(price: str, size: str) -> None:
    with pytest.raises(FrameError):
        OrderBook().apply([(price, size)], [])


def test_aggregates_are_exact_decimal_strings() -> None:
    book = OrderBook()
    book.apply([("99.5", "2"), ("99", "3"), ("90", "100")], [("100.5", "1"), ("101", "4")])
    agg = msgspec.to_builtins(book.aggregates(2))
    assert agg["bids"] == [("99.5", "2"), ("99", "3")]
    assert agg["mid"] == "100"
    assert agg["spread"] == "1"
    assert agg["spread_bps"] == "100"
    assert agg["microprice"] == "100.166666666667"  # (bid_px*ask_sz + ask_px*bid_sz) / (bid_sz+ask_sz)
    assert agg["imbalance"] == "0"  # (2+3) vs (1+4) in the top 2
    assert agg["bands_bps"]["100"] == {"bid": "5", "ask": "5"}  # 99..101 inclusive
    assert agg["bands_bps"]["10"] == {"bid": "0", "ask": "0"}


@pytest.mark.parametrize(("value", "text"), [
    (0.0015, "0.0015"), (4714.0, "4714"), (1e-05, "0.00001"), (65086.18, "65086.18"), (3, "3"),
    ("0.00000011", "0.00000011"), ("1E-8", "0.00000001"),
])
def test_numbers_render_as_plain_decimal_text(value: object, text: str) -> None:
    assert num_str(value) == text


@settings(max_examples=200, deadline=None)
@given(bids=st.dictionaries(st.integers(9000, 10000), st.integers(1, 50), min_size=1, max_size=60),
       asks=st.dictionaries(st.integers(10001, 11000), st.integers(1, 50), min_size=1, max_size=60))
@example(bids={9990: 5, 9989: 2, 9999: 1}, asks={10001: 1, 10010: 7, 10011: 3})  # mid 100: levels on the 10 bps bounds
def test_depth_bands_equal_a_level_by_level_sum(bids: dict[int, int], asks: dict[int, int]) -> None:
    from decimal import Decimal

    book = OrderBook()
    book.replace([(f"{p / 100}", str(s)) for p, s in bids.items()], [(f"{p / 100}", str(s)) for p, s in asks.items()])
    agg = msgspec.to_builtins(book.aggregates(5))
    mid = (Decimal(str(max(bids) / 100)) + Decimal(str(min(asks) / 100))) / 2
    for bps, band in agg["bands_bps"].items():
        lo, hi = mid * (1 - Decimal(bps) / 10_000), mid * (1 + Decimal(bps) / 10_000)
        want_bid = sum(s for p, s in bids.items() if Decimal(str(p / 100)) >= lo)
        want_ask = sum(s for p, s in asks.items() if Decimal(str(p / 100)) <= hi)
        assert band == {"bid": str(want_bid), "ask": str(want_ask)}
