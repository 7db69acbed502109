"""app.risk.watermark.Watermark: the risk engine's event time, from what is known now (no clock)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from app.risk.watermark import Watermark

S = 1_000_000_000  # ns
WALL = 1_800_000_000 * S
LATE, IDLE = 200 * 1_000_000, 2 * S  # RISK_LATENESS_MS=200, RISK_IDLE_MS=2000
NOW = 1000.0  # monotonic seconds


def marks(**sources: tuple[int, float]) -> Watermark:
    """A watermark with sources named ``topic_partition_venue`` → (newest ts, monotonic seen)."""
    w = Watermark(LATE, IDLE)
    for name, (ts, seen) in sources.items():
        topic, partition, venue = name.split("_")
        w.sources[(topic, int(partition), venue)] = [ts, seen]
    return w


def test_no_source_is_no_bound_and_an_unread_partition_without_a_source_holds_everything() -> None:
    assert Watermark(LATE, IDLE).at(NOW, WALL, set(), applied_to=math.inf) == math.inf
    assert Watermark(LATE, IDLE).at(NOW, WALL, {("ticker", 3)}, applied_to=math.inf) == -math.inf
    w = marks(ticker_0_okx=(WALL, NOW))
    assert w.at(NOW, WALL, {("ticker", 1)}, applied_to=math.inf) == -math.inf  # partition 1 never read yet


def test_a_live_source_counts_with_the_lateness_bound_or_its_own_time_if_later() -> None:
    assert marks(top_0_okx=(WALL - 10 * S, NOW - 10)).at(NOW, WALL, set(), math.inf) == WALL - LATE  # quiet
    assert marks(top_0_okx=(WALL - S, NOW)).at(NOW, WALL, set(), math.inf) == WALL - LATE  # live, a second old
    ahead = WALL + 5 * S  # a venue clock ahead of ours
    assert marks(top_0_okx=(ahead, NOW)).at(NOW, WALL, set(), math.inf) == ahead


def test_history_holds_while_read_recently_or_at_what_the_worker_still_applies() -> None:
    day_ago = WALL - 86_400 * S
    assert marks(top_0_binance=(day_ago, NOW - 0.5)).at(NOW, WALL, set(), math.inf) == day_ago  # a replay, being read
    assert marks(top_0_binance=(day_ago, NOW - 10)).at(NOW, WALL, set(), math.inf) == WALL - LATE  # its replay done
    applying = day_ago + 60 * S  # the worker a minute further into the day on another raw partition
    assert marks(top_0_binance=(day_ago, NOW - 10)).at(NOW, WALL, set(), applying) == applying
    later = marks(top_0_binance=(applying + S, NOW - 10))
    assert later.at(NOW, WALL, set(), applying) == applying + S  # its own time, when later
    # a few milliseconds behind, as a live worker is between fetches: the lateness bound
    assert marks(top_0_okx=(WALL - 10 * S, NOW - 10)).at(NOW, WALL, set(), WALL - 5_000_000) == WALL - LATE
    # nothing applied yet of a raw partition it is behind on: everything quiet holds at its own time
    assert marks(top_0_okx=(WALL - 10 * S, NOW - 10)).at(NOW, WALL, set(), -math.inf) == WALL - 10 * S


def test_a_partition_with_records_still_to_read_holds_at_its_newest_input_and_the_minimum_wins() -> None:
    w = marks(top_0_okx=(WALL - S, NOW), top_1_okx=(WALL - 3 * S // 2, NOW), ticker_0_deribit=(WALL, NOW))
    assert w.at(NOW, WALL, {("top", 1)}, applied_to=math.inf) == WALL - 3 * S // 2
    assert w.at(NOW, WALL, set(), applied_to=math.inf) == WALL - LATE  # all live: the lateness bound


def test_observe_keeps_the_newest_time_and_the_latest_read() -> None:
    w = Watermark(LATE, IDLE)
    w.observe(("top", 0, "okx"), 50, 1.0)
    w.observe(("top", 0, "okx"), 40, 2.0)  # an older input read later
    assert w.sources == {("top", 0, "okx"): [50, 2.0]}


@given(st.lists(st.tuples(st.integers(-5 * 86_400, 60), st.floats(0, 30), st.booleans()), min_size=1, max_size=8),
       st.one_of(st.just(math.inf), st.integers(-5 * 86_400, 60).map(lambda s: WALL + s * S)))
def test_the_watermark_never_passes_the_wall_clock_bound_unless_an_input_is_later(
        sources: list[tuple[int, float, bool]], applied_to: float) -> None:
    w = Watermark(LATE, IDLE)
    unread = set()
    for i, (offset_s, ago_s, pending) in enumerate(sources):
        w.sources[("top", i, "v")] = [WALL + offset_s * S, NOW - ago_s]
        if pending:
            unread.add(("top", i))
    got = w.at(NOW, WALL, unread, applied_to)
    newest = max(ts for ts, _ in w.sources.values())
    assert got <= max(WALL - LATE, newest)
    assert got >= min(ts for ts, _ in w.sources.values())  # never below what was read


def test_held_by_names_the_sources_at_the_watermark_and_why() -> None:
    w = marks(top_0_okx=(WALL - S, NOW), top_1_okx=(WALL - 3 * S // 2, NOW), ticker_0_deribit=(WALL, NOW))
    assert w.held_by(NOW, WALL, {("top", 1)}, applied_to=math.inf) == ["top[1] okx: newest read, more to read"]
    assert w.held_by(NOW, WALL, {("status", 2), ("top", 1)}, applied_to=math.inf) == [
        "status[2]: records to read, none read yet"]
    assert w.held_by(NOW, WALL, set(), applied_to=math.inf) == [  # live: at the lateness bound (the ticker is later)
        "top[0] okx: read to its end, live", "top[1] okx: read to its end, live"]
    assert Watermark(LATE, IDLE).held_by(NOW, WALL, set(), applied_to=math.inf) == []
