"""Property tests of the sync state machine (hypothesis).

For any valid snapshot + delta sequence — Binance snapshots arriving late with buffered
deltas, duplicate redeliveries sprinkled in — the incrementally maintained book equals a
book rebuilt from scratch, and every emitted top equals the true top at that sequence.
A crossed book is never emitted as valid.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import venues
from app.state.layout import apply_state, encode_state
from app.sync import STALE, SYNCED, Effects, Instrument
from app.venues.base import BookUpdate, SyncRule
from tests.helpers import examples

pytestmark = pytest.mark.usefixtures("each_book_core")  # every test with each book core

Level = tuple[str, str]
Delta = tuple[list[Level], list[Level]]


def price(i: int) -> str:
    return f"{Decimal(1000 + i) / 4}"  # 250.25-style texts, exact


sizes = st.sampled_from(["0", "0", "1", "2.5", "10", "0.001"])
bid_levels = st.lists(st.tuples(st.integers(0, 30).map(price), sizes), max_size=5)
ask_levels = st.lists(st.tuples(st.integers(40, 70).map(price), sizes), max_size=5)
deltas = st.lists(st.tuples(bid_levels, ask_levels), min_size=1, max_size=40)
snapshots = st.tuples(
    st.lists(st.tuples(st.integers(0, 30).map(price), sizes.filter(lambda s: s != "0")), max_size=10),
    st.lists(st.tuples(st.integers(40, 70).map(price), sizes.filter(lambda s: s != "0")), max_size=10),
)


def rebuild(snap: Delta, applied: list[Delta]) -> tuple[dict[float, str], dict[float, str]]:
    bids = {float(p): s for p, s in snap[0] if float(s) != 0}
    asks = {float(p): s for p, s in snap[1] if float(s) != 0}
    for b, a in applied:
        for side, levels in ((bids, b), (asks, a)):
            for p, s in levels:
                if float(s) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = s
    return bids, asks


def top_of(bids: dict[float, str], asks: dict[float, str]) -> tuple[str | None, ...]:
    b = max(bids) if bids else None
    a = min(asks) if asks else None
    return (
        None if b is None else price_text(b), None if b is None else bids[b],
        None if a is None else price_text(a), None if a is None else asks[a],
    )


def price_text(key: float) -> str:
    return f"{Decimal(key)}" if key != int(key) else f"{Decimal(key)}".split(".")[0]


def book_state(inst: Instrument) -> tuple[dict[float, str], dict[float, str]]:
    return ({k: v[1] for k, v in inst.book.bids.items()}, {k: v[1] for k, v in inst.book.asks.items()})


def run(inst: Instrument, stream: list[BookUpdate]) -> list[tuple[int, tuple[str | None, ...]]]:
    tops = []
    for upd in stream:
        fx = Effects()
        inst.step(upd, b"", "c1", 0, fx)
        tops.extend((seq, tuple(float(x) if x and i % 2 == 0 else x for i, x in enumerate(top)))
                    for seq, _, top in fx.tops)
    return tops


def normalise(top: tuple[str | None, ...]) -> tuple[object, ...]:
    return tuple(float(x) if x is not None and i % 2 == 0 else x for i, x in enumerate(top))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(["deribit", "bybit-linear", "okx", "coinbase"]).map(venues.rule),
    snap=snapshots, ds=deltas, dup_at=st.lists(st.integers(0, 39), max_size=5),
)
def test_incremental_book_equals_rebuild_for_sequenced_venues(rule: SyncRule, snap: Delta, ds: list[Delta],
                                                             dup_at: list[int]) -> None:
    stream = [BookUpdate(snapshot=True, seq=100, bids=snap[0], asks=snap[1], prev=-1)]
    for i, (b, a) in enumerate(ds):
        stream.append(BookUpdate(snapshot=False, seq=101 + i, prev=100 + i, bids=b, asks=a))
        if i in dup_at:  # an at-least-once redelivery of the same update
            stream.append(BookUpdate(snapshot=False, seq=101 + i, prev=100 + i, bids=b, asks=a))
    inst = Instrument("x:Y", rule)
    tops = run(inst, stream)
    truths = {100 + i: rebuild(snap, ds[:i]) for i in range(len(ds) + 1)}
    final = truths[100 + len(ds)]
    if inst.status == SYNCED:
        assert book_state(inst) == final
    else:  # only a crossed book may stop it (bids and asks are on disjoint grids here: never)
        raise AssertionError(f"went {inst.status}: {inst.reason}")
    for seq, top in tops:
        assert normalise(top) == normalise(top_of(*truths[seq]))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spot=st.booleans(), snap_after=st.integers(0, 39), late_by=st.integers(0, 5), ds=deltas,
       spans=st.lists(st.integers(1, 4), min_size=40, max_size=40))
def test_binance_buffered_deltas_join_the_snapshot_exactly(spot: bool, snap_after: int, late_by: int,
                                                          ds: list[Delta], spans: list[int]) -> None:
    snap_after = min(snap_after, len(ds) - 1)
    first_u, ups = 1000, []
    for span in spans[: len(ds)]:
        ups.append((first_u, first_u + span - 1))
        first_u += span
    events = [
        BookUpdate(snapshot=False, seq=u, first=U, prev=(ups[i - 1][1] if i else 999), bids=b, asks=a)
        for i, ((U, u), (b, a)) in enumerate(zip(ups, ds, strict=False))
    ]
    truth_at_snapshot = rebuild(([], []), ds[: snap_after + 1])
    last_id = ups[snap_after][1]
    snapshot = BookUpdate(snapshot=True, seq=last_id,
                          bids=[(price_text(k), v) for k, v in truth_at_snapshot[0].items()],
                          asks=[(price_text(k), v) for k, v in truth_at_snapshot[1].items()])
    arrive = min(snap_after + 1 + late_by, len(events))  # the REST answer lands after some deltas
    stream = events[:arrive] + [snapshot] + events[arrive:]
    inst = Instrument("binance:X", venues.rule("binance") if spot else venues.rule("binance-usdm"))
    tops = run(inst, stream)
    assert inst.status == SYNCED, inst.reason
    assert book_state(inst) == rebuild(([], []), ds)
    truths = {u: rebuild(([], []), ds[: i + 1]) for i, (_, u) in enumerate(ups)}
    for seq, top in tops:
        assert normalise(top) == normalise(top_of(*truths[seq]))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=snapshots, ds=st.lists(st.tuples(
    st.lists(st.tuples(st.integers(0, 60).map(price), sizes), max_size=4),
    st.lists(st.tuples(st.integers(10, 70).map(price), sizes), max_size=4)), min_size=1, max_size=30))
def test_a_crossed_book_is_never_published_as_valid(snap: Delta, ds: list[Delta]) -> None:
    stream = [BookUpdate(snapshot=True, seq=1, bids=snap[0], asks=snap[1])]
    stream += [BookUpdate(snapshot=False, seq=2 + i, prev=1 + i, bids=b, asks=a) for i, (b, a) in enumerate(ds)]
    inst = Instrument("deribit:X", venues.rule("deribit"))
    for upd in stream:
        fx = Effects()
        inst.step(upd, b"", "c1", 0, fx)
        for _, _, (bpx, _, apx, _) in fx.tops:
            assert bpx is None or apx is None or float(bpx) < float(apx)
        if inst.book.crossed() and inst.status != STALE:
            raise AssertionError("crossed book left in state " + inst.status)


def test_gap_makes_only_that_instrument_stale_and_asks_for_a_resync() -> None:
    a, b = Instrument("deribit:A", venues.rule("deribit")), Instrument("deribit:B", venues.rule("deribit"))
    for inst in (a, b):
        inst.step(BookUpdate(snapshot=True, seq=10, bids=[("1", "1")], asks=[("2", "1")]), b"", "c", 0, Effects())
    fx = Effects()
    a.step(BookUpdate(snapshot=False, seq=12, prev=11, bids=[("1", "3")]), b"", "c", 0, fx)
    assert (a.status, fx.resync is not None, fx.tops) == (STALE, True, [])
    b.step(BookUpdate(snapshot=False, seq=11, prev=10, bids=[("1", "3")]), b"", "c", 0, Effects())
    assert b.status == SYNCED
    fx = Effects()
    a.step(BookUpdate(snapshot=True, seq=20, bids=[("1", "5")], asks=[("2", "1")]), b"", "c", 0, fx)
    assert a.status == SYNCED
    assert fx.tops == [(20, 0, ("1", "5", "2", "1"))]


def test_binance_first_event_must_straddle_the_snapshot() -> None:
    for rule, first_ok in ((venues.rule("binance"), 101), (venues.rule("binance-usdm"), 100)):
        inst = Instrument("binance:X", rule)
        inst.step(BookUpdate(snapshot=True, seq=100, bids=[("1", "1")], asks=[("2", "1")]), b"", "r", 0, Effects())
        fx = Effects()
        # the event that should straddle L is missing: the next one starts after it
        inst.step(BookUpdate(snapshot=False, seq=110, first=first_ok + 3, prev=105, bids=[("1", "2")]), b"", "w", 0, fx)
        assert inst.status == STALE, rule
        assert fx.resync is not None
        assert fx.tops == []


def test_binance_snapshot_older_than_the_buffer_asks_for_another() -> None:
    inst = Instrument("binance:X", venues.rule("binance"))
    inst.step(BookUpdate(snapshot=False, seq=205, first=200, bids=[("1", "2")]), b"", "w", 0, Effects())
    fx = Effects()
    inst.step(BookUpdate(snapshot=True, seq=150, bids=[("1", "1")], asks=[("2", "1")]), b"", "r", 0, fx)
    assert inst.status != SYNCED
    assert fx.resync is not None
    assert "older than buffered" in fx.resync


def test_binance_futures_snapshot_joins_a_buffered_event_that_chains_to_it_exactly() -> None:
    """L is an event's final id: the next buffered event starts at L+1 with pu == L — it chains."""
    inst = Instrument("binance-usdm:X", venues.rule("binance-usdm"))
    inst.step(BookUpdate(snapshot=False, seq=160, first=151, prev=150, bids=[("1", "2")]), b"", "w", 0, Effects())
    fx = Effects()
    inst.step(BookUpdate(snapshot=True, seq=150, bids=[("1", "1")], asks=[("2", "1")]), b"", "r", 0, fx)
    assert (inst.status, inst.seq, fx.resync) == (SYNCED, 160, None)
    assert inst.book.top() == ("1", "2", "2", "1")


def _synced(rule: SyncRule, seq: int = 10, prev: int | None = -1) -> Instrument:
    inst = Instrument("v:X", rule)
    snapshot = BookUpdate(snapshot=True, seq=seq, prev=prev, bids=[("1", "1")], asks=[("2", "1")])
    inst.step(snapshot, b"", "c", 0, Effects())
    assert inst.status == SYNCED
    return inst


def test_okx_heartbeat_and_one_off_reset_keep_the_book_synced() -> None:
    inst = _synced(venues.rule("okx"))
    inst.step(BookUpdate(snapshot=False, seq=10, prev=10), b"", "c", 0, Effects())  # heartbeat: empty, seq == prev
    assert (inst.status, inst.seq) == (SYNCED, 10)
    inst.step(BookUpdate(snapshot=False, seq=3, prev=10, bids=[("1", "2")]), b"", "c", 0, Effects())  # reset
    assert (inst.status, inst.seq) == (SYNCED, 3)
    inst.step(BookUpdate(snapshot=False, seq=4, prev=3, bids=[("1", "5")]), b"", "c", 0, Effects())
    assert (inst.status, inst.book.top()[1]) == (SYNCED, "5")
    fx = Effects()
    inst.step(BookUpdate(snapshot=False, seq=9, prev=7), b"", "c", 0, fx)
    assert inst.status == STALE
    assert fx.resync is not None


def test_bybit_u_equal_one_is_a_restart_that_replaces_the_book() -> None:
    inst = _synced(venues.rule("bybit-linear"), seq=500, prev=None)
    fx = Effects()
    inst.step(BookUpdate(snapshot=True, restart=True, seq=1, bids=[("1.5", "9")], asks=[("3", "1")]), b"", "c", 0, fx)
    assert (inst.status, inst.seq, inst.book.top()) == (SYNCED, 1, ("1.5", "9", "3", "1"))
    inst.step(BookUpdate(snapshot=False, seq=2, bids=[("1.5", "8")]), b"", "c", 0, Effects())
    assert inst.book.top()[1] == "8"


def test_changelog_writes_per_update_do_not_grow_with_depth() -> None:
    for depth in (10, 1000, 5000):
        inst = Instrument("deribit:X", venues.rule("deribit"))
        levels = [(str(10_000 - i), "1") for i in range(depth)], [(str(20_000 + i), "1") for i in range(depth)]
        inst.step(BookUpdate(snapshot=True, seq=1, bids=levels[0], asks=levels[1]), b"", "c", 0, Effects())
        fx = Effects()
        inst.step(BookUpdate(snapshot=False, seq=2, prev=1, bids=[("9999", "3"), ("10000", "0")]), b"", "c", 0, fx)
        assert fx.changes == [("b", "9999", "3"), ("b", "10000", None)]
        assert len(encode_state(inst)) < 400


def test_a_redelivered_update_is_ignored_by_sequence() -> None:
    inst = _synced(venues.rule("deribit"))
    upd = BookUpdate(snapshot=False, seq=11, prev=10, bids=[("1", "7")])
    inst.step(upd, b"", "c", 0, Effects())
    fx = Effects()
    inst.step(upd, b"", "c", 0, fx)
    assert (inst.status, fx.changed(), inst.counters["duplicates"]) == (SYNCED, False, 1)


def test_states_and_effects_are_typed_but_serialise_as_before() -> None:
    import orjson

    from app.sync import BookState, TopChange, Transition

    inst = Instrument("deribit:X", venues.rule("deribit"))
    fx = Effects()
    inst.step(BookUpdate(snapshot=True, seq=7, ts_exchange=5, bids=[("1", "2")], asks=[("3", "4")]), b"", "c", 0, fx)
    assert fx.transitions == [Transition(BookState.SYNCED, "snapshot")]
    assert fx.tops == [TopChange(7, 5, ("1", "2", "3", "4"))]
    assert fx.tops[0].top.ask_sz == "4"
    row = orjson.loads(encode_state(inst))
    assert row["state"] == "synced"
    copy = Instrument("deribit:X", venues.rule("deribit"))
    apply_state(copy, encode_state(inst))
    assert copy.status is BookState.SYNCED is SYNCED
