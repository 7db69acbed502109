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
RAW0, RAW1 = ("raw.deribit", 0), ("raw.deribit", 1)


def marks(**sources: tuple[int, float]) -> Watermark:
    """A watermark with sources named ``topic_partition_venue`` → (newest ts, monotonic seen)."""
    w = Watermark(LATE, IDLE)
    for name, (ts, seen) in sources.items():
        topic, partition, venue = name.split("_")
        w.sources[(topic, int(partition), venue)] = [ts, seen]
    return w


def test_no_source_is_no_bound_and_an_unread_partition_without_a_source_holds_everything() -> None:
    assert Watermark(LATE, IDLE).at(NOW, WALL, set(), applying={}) == math.inf
    assert Watermark(LATE, IDLE).at(NOW, WALL, {("ticker", 3)}, applying={}) == -math.inf
    w = marks(ticker_0_okx=(WALL, NOW))
    assert w.at(NOW, WALL, {("ticker", 1)}, applying={}) == -math.inf  # partition 1 never read yet


def test_a_live_source_counts_with_the_lateness_bound_or_its_own_time_if_later() -> None:
    assert marks(top_0_okx=(WALL - 10 * S, NOW - 10)).at(NOW, WALL, set(), {}) == WALL - LATE  # quiet
    assert marks(top_0_okx=(WALL - S, NOW)).at(NOW, WALL, set(), {}) == WALL - LATE  # live, a second old
    ahead = WALL + 5 * S  # a venue clock ahead of ours
    assert marks(top_0_okx=(ahead, NOW)).at(NOW, WALL, set(), {}) == ahead


def test_history_holds_while_read_recently_or_at_what_the_worker_still_applies() -> None:
    day_ago = WALL - 86_400 * S
    assert marks(top_0_binance=(day_ago, NOW - 0.5)).at(NOW, WALL, set(), {}) == day_ago  # a replay, being read
    assert marks(top_0_binance=(day_ago, NOW - 10)).at(NOW, WALL, set(), {}) == WALL - LATE  # its replay done
    applying = day_ago + 60 * S  # the worker a minute further into the day on a raw partition
    assert marks(top_0_binance=(day_ago, NOW - 10)).at(NOW, WALL, set(), {RAW0: applying}) == applying
    # a quiet source's own later time does not lift it: what is still to apply may be older
    later = marks(top_0_binance=(applying + S, NOW - 10))
    assert later.at(NOW, WALL, set(), {RAW0: applying}) == applying
    # a few milliseconds behind, as a live worker is between fetches: the lateness bound
    assert marks(top_0_okx=(WALL - 10 * S, NOW - 10)).at(NOW, WALL, set(), {RAW0: WALL - 5_000_000}) == WALL - LATE
    # nothing applied yet of a raw partition it has frames of: they may be of any age
    assert marks(top_0_okx=(WALL - 10 * S, NOW - 10)).at(NOW, WALL, set(), {RAW0: -math.inf}) == -math.inf


def test_raw_frames_still_to_apply_bound_a_partition_no_input_was_read_from_yet() -> None:
    """A replay: the worker has applied raw partition 0 a minute into the day, raw partition 1
    only its first second, and nothing was read from ``ticker[1]`` yet (its first records come
    from raw partition 1's frames). Read to its end, it is in no source and not unread: only the
    raw partition still to apply keeps event time from running past its first ticker."""
    day_ago = WALL - 86_400 * S
    w = marks(top_0_deribit=(day_ago + 60 * S, NOW), top_1_deribit=(day_ago + 60 * S, NOW))
    assert w.at(NOW, WALL, set(), {}) == day_ago + 60 * S
    assert w.at(NOW, WALL, set(), {RAW1: day_ago + S}) == day_ago + S
    assert w.held_by(NOW, WALL, set(), {RAW1: day_ago + S}) == [
        "raw.deribit[1]: raw frames still to apply, received from here on"]
    assert Watermark(LATE, IDLE).at(NOW, WALL, set(), {RAW1: day_ago + S}) == day_ago + S  # no source yet


def test_a_partition_with_records_still_to_read_holds_at_its_newest_input_and_the_minimum_wins() -> None:
    w = marks(top_0_okx=(WALL - S, NOW), top_1_okx=(WALL - 3 * S // 2, NOW), ticker_0_deribit=(WALL, NOW))
    assert w.at(NOW, WALL, {("top", 1)}, applying={}) == WALL - 3 * S // 2
    assert w.at(NOW, WALL, set(), applying={}) == WALL - LATE  # all live: the lateness bound


def test_observe_keeps_the_newest_time_and_the_latest_read() -> None:
    w = Watermark(LATE, IDLE)
    w.observe(("top", 0, "okx"), 50, 1.0)
    w.observe(("top", 0, "okx"), 40, 2.0)  # an older input read later
    assert w.sources == {("top", 0, "okx"): [50, 2.0]}


@given(st.lists(st.tuples(st.integers(-5 * 86_400, 60), st.floats(0, 30), st.booleans()), min_size=1, max_size=8),
       st.dictionaries(st.integers(0, 3).map(lambda p: ("raw.v", p)),
                       st.integers(-5 * 86_400, 60).map(lambda s: WALL + s * S), max_size=4))
def test_the_watermark_never_passes_the_wall_clock_bound_unless_an_input_is_later(
        sources: list[tuple[int, float, bool]], applying: dict[tuple[str, int], int]) -> None:
    w = Watermark(LATE, IDLE)
    unread = set()
    for i, (offset_s, ago_s, pending) in enumerate(sources):
        w.sources[("top", i, "v")] = [WALL + offset_s * S, NOW - ago_s]
        if pending:
            unread.add(("top", i))
    got = w.at(NOW, WALL, unread, applying)
    newest = max(ts for ts, _ in w.sources.values())
    assert got <= max(WALL - LATE, newest)
    assert got <= min(applying.values(), default=math.inf)  # never past a frame still to apply
    # never below what was read, nor below what is still to apply
    assert got >= min(min(ts for ts, _ in w.sources.values()), min(applying.values(), default=math.inf))


def test_held_by_names_the_sources_at_the_watermark_and_why() -> None:
    w = marks(top_0_okx=(WALL - S, NOW), top_1_okx=(WALL - 3 * S // 2, NOW), ticker_0_deribit=(WALL, NOW))
    assert w.held_by(NOW, WALL, {("top", 1)}, applying={}) == ["top[1] okx: newest read, more to read"]
    assert w.held_by(NOW, WALL, {("status", 2), ("top", 1)}, applying={}) == [
        "status[2]: records to read, none read yet"]
    assert w.held_by(NOW, WALL, set(), applying={}) == [  # live: at the lateness bound (the ticker is later)
        "top[0] okx: read to its end, live", "top[1] okx: read to its end, live"]
    assert Watermark(LATE, IDLE).held_by(NOW, WALL, set(), applying={}) == []
