"""dYdX v4: snapshot + deltas by message_id, the venue's uncrossing rule (kept across restarts),
the indexer's "could not fetch data" answer, trades, v4_markets tickers and specs, the session.

Frame shapes, and where they come from:

* ``connected``, ``subscribed``/``channel_data`` of ``v4_orderbook``, ``v4_trades`` and ``v4_markets``
  (``contents.markets``; ``contents.trading``/``contents.oraclePrices``), unsubscribe — dydxprotocol/v4-chain
  ``indexer/services/comlink/public/websocket-documentation.md``;
* the uncrossing rule — dydxprotocol/v4-documentation ``pages/guides/how_to_uncross_orderbook.md``
  (the reference below follows its code: older offset gives way, equal offsets net the sizes);
* the error answer ``{"type":"error","message":"Internal error, could not fetch data for subscription:
  <channel>.","connection_id","message_id","channel","id"}`` — dydxprotocol/v4-chain
  ``indexer/services/socks/src/lib/subscription.ts`` (``createErrorMessage(errorMsg, connectionId,
  messageId, channel, id)``); clients resubscribe on it (nautilus_trader's dYdX adapter, the dYdX
  web front end's ``_handleErrorReceived``);
* ``oraclePrices`` entries named ``oraclePrice`` (newer indexers) or ``price`` (the documentation);
  trades with ``type`` and ``createdAtHeight`` (newer indexers) or ``liquidation`` (the documentation).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.book import LevelIds, OrderBook, uncross
from app.errors import VenueFault
from app.history import checkpoint_of, instrument_from
from app.processor import Processor
from app.state.layout import Checkpoint
from app.state.manager import PartitionState
from app.state.store import LocalStore
from app.sync import STALE, SYNCED, WAITING, Effects, Instrument
from app.venues import INSTRUMENT_LISTS, MARKETS, VENUE_MARKETS, VENUE_TABLE, adapter, protocol, rule
from app.venues.base import Kind
from app.wire import RawFrame
from tables.books import BOOKS
from tests.helpers import examples

pytestmark = pytest.mark.usefixtures("each_book_core")  # every test with each book core

VENUE = "dydx"
KEY = "dydx:BTC-USD"
CONN = "ee5a4696-dce8-44ef-8d68-f0e0d0b06160"
Levels = list[tuple[str, str]]


def subscribed(message_id: int, bids: Levels, asks: Levels) -> bytes:
    return orjson.dumps({"type": "subscribed", "connection_id": CONN, "message_id": message_id,
                         "channel": "v4_orderbook", "id": "BTC-USD",
                         "contents": {"bids": [{"price": p, "size": s} for p, s in bids],
                                      "asks": [{"price": p, "size": s} for p, s in asks]}})


def update(message_id: int, bids: Levels | None = None, asks: Levels | None = None) -> bytes:
    contents: dict[str, Any] = {}
    if bids is not None:
        contents["bids"] = [list(x) for x in bids]
    if asks is not None:
        contents["asks"] = [list(x) for x in asks]
    return orjson.dumps({"type": "channel_data", "connection_id": CONN, "message_id": message_id, "id": "BTC-USD",
                         "channel": "v4_orderbook", "version": "1.0.0", "contents": contents})


def step(inst: Instrument, frame: bytes, conn: str = "c1") -> Effects:
    fx = Effects()
    for upd in adapter(VENUE).parse(Kind.WS, frame, "BTC-USD"):
        inst.step(upd, frame, conn, 0, fx)
    return fx


def book(inst: Instrument) -> tuple[Levels, Levels]:
    return list(inst.book.iter_bids()), list(inst.book.iter_asks())


def synced() -> Instrument:
    inst = Instrument(KEY, rule(VENUE))
    step(inst, subscribed(2, [("28194", "4.764826096"), ("28193", "3.115323739")],
                          [("28195", "3.219612343"), ("28196", "2.387087565")]))
    assert inst.status == SYNCED
    return inst


# -- snapshot and deltas -----------------------------------------------------------------------
def test_the_subscribed_book_then_deltas_give_the_venues_book_exactly() -> None:
    inst = synced()
    assert (inst.seq, inst.book.top()) == (2, ("28194", "4.764826096", "28195", "3.219612343"))
    step(inst, update(484, bids=[("28193", "1.986168516"), ("28192", "3.400340775")]))
    step(inst, update(490, asks=[("28195", "0"), ("28197", "2.698530469")]))
    fx = step(inst, update(497, bids=[("28194", "0")], asks=[("28196", "2.5")]))
    assert (inst.status, inst.seq) == (SYNCED, 497)
    assert book(inst) == ([("28193", "1.986168516"), ("28192", "3.400340775")],
                          [("28196", "2.5"), ("28197", "2.698530469")])
    assert fx.changes == [("b", "28194", None), ("a", "28196", "2.5")]
    assert fx.ids == [("b", "28194", None), ("a", "28196", 497)]
    assert [t.top for t in fx.tops] == [("28193", "1.986168516", "28196", "2.5")]


def test_a_batch_is_one_update_of_its_message_id() -> None:
    inst = synced()
    frame = orjson.dumps({"type": "channel_batch_data", "connection_id": CONN, "message_id": 9, "id": "BTC-USD",
                          "channel": "v4_orderbook", "version": "1.0.0",
                          "contents": [{"bids": [["28190", "1"]]},
                                       {"bids": [["28190", "2"]], "asks": [["28195", "0"]]}]})
    step(inst, frame)
    assert (inst.seq, inst.book.bids[28190.0], 28195.0 in inst.book.asks) == (9, ("28190", "2"), False)


def test_an_update_at_or_before_the_last_message_id_is_a_duplicate() -> None:
    inst = synced()
    step(inst, update(10, bids=[("28193", "9")]))
    for repeat in (update(10, bids=[("28193", "1")]), update(7, bids=[("28150", "1")]), subscribed(2, [], [])):
        fx = step(inst, repeat)
        assert not fx.changed()
    assert (inst.status, inst.seq, inst.counters["duplicates"], inst.book.bids[28193.0]) == (SYNCED, 10, 3,
                                                                                             ("28193", "9"))
    step(inst, update(11, bids=[("28193", "8")]))  # ids grow with holes: later is next
    assert inst.book.bids[28193.0] == ("28193", "8")


# -- the uncrossing rule ------------------------------------------------------------------------
def test_a_crossing_ask_newer_than_the_best_bid_removes_the_bid() -> None:
    inst = synced()  # bids set by message 2
    fx = step(inst, update(20, asks=[("28193.5", "1")]))  # crosses 28194 (message 2): the bid is older
    assert (inst.status, inst.reason) == (SYNCED, "snapshot")
    assert book(inst)[0] == [("28193", "3.115323739")]
    assert inst.book.top() == ("28193", "3.115323739", "28193.5", "1")
    assert ("b", "28194", None) in fx.changes
    assert ("b", "28194", None) in (fx.ids or [])
    assert fx.transitions == []
    assert fx.resync is None
    assert inst.counters["uncrossed"] == 1


def test_a_crossing_bid_newer_than_the_best_asks_removes_every_ask_it_crosses() -> None:
    inst = synced()
    fx = step(inst, update(30, bids=[("28196", "0.5")]))  # crosses both asks (message 2)
    assert inst.status == SYNCED
    assert book(inst) == ([("28196", "0.5"), ("28194", "4.764826096"), ("28193", "3.115323739")], [])
    assert [c for c in fx.changes if c[0] == "a"] == [("a", "28195", None), ("a", "28196", None)]


def test_levels_set_by_the_same_message_net_their_sizes() -> None:
    bids, asks = [("28194", "4.764826096"), ("28193", "3.115323739")], [("28195", "3.219612343"),
                                                                        ("28196", "2.387087565")]
    inst = synced()  # every level set by message 2
    step(inst, update(40, bids=[("28195.5", "5")], asks=[("28195.5", "2")]))
    # the bid first crosses the ask 28195 (message 2, older): it goes; then the bid and ask of message 40
    # net: the bid keeps 5 - 2 = 3, the ask goes
    assert (inst.status, book(inst)) == (SYNCED, ([("28195.5", "3"), *bids], [("28196", "2.387087565")]))
    inst = synced()
    step(inst, update(41, bids=[("28195.5", "1.5")], asks=[("28194.5", "4")]))  # the ask is the larger: keeps 2.5
    assert (inst.status, book(inst)) == (SYNCED, (bids, [("28194.5", "2.5"), *asks]))
    inst = synced()
    fx = step(inst, update(42, bids=[("28195.5", "2")], asks=[("28194.5", "2")]))  # equal sizes: both go
    assert (inst.status, book(inst)) == (SYNCED, (bids, asks))
    assert [c for c in fx.changes if c[2] is None] == [("b", "28195.5", None), ("a", "28194.5", None)]
    assert inst.ids is not None
    assert 28195.5 not in inst.ids.bids
    assert 28194.5 not in inst.ids.asks


def test_other_venues_still_go_stale_on_a_crossed_book() -> None:
    from app.venues.base import BookUpdate

    inst = Instrument("deribit:BTC-PERPETUAL", rule("deribit"))
    inst.step(BookUpdate(snapshot=True, seq=1, bids=[("100", "1")], asks=[("101", "1")]), b"", "c", 0, Effects())
    assert inst.ids is None
    fx = Effects()
    inst.step(BookUpdate(snapshot=False, seq=2, prev=1, asks=[("99", "1")]), b"", "c", 0, fx)
    assert (inst.status, inst.reason, fx.resync, fx.ids) == (STALE, "crossed book", "crossed book", None)


def reference_uncross(bids: list[tuple[Decimal, Decimal, int]], asks: list[tuple[Decimal, Decimal, int]]
                      ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    """The venue guide's loop (how_to_uncross_orderbook.md) over [price, size, offset] arrays, best first."""
    b = sorted(bids, key=lambda x: -x[0])
    a = sorted(asks, key=lambda x: x[0])
    while b and a and b[0][0] >= a[0][0]:
        (bp, bs, bo), (ap, asz, ao) = b[0], a[0]
        if bo < ao:
            b.pop(0)
        elif bo > ao:
            a.pop(0)
        elif bs > asz:
            a.pop(0)
            b[0] = (bp, bs - asz, bo)
        elif bs < asz:
            a[0] = (ap, asz - bs, ao)
            b.pop(0)
        else:
            a.pop(0)
            b.pop(0)
    return [(p, s) for p, s, _ in b], [(p, s) for p, s, _ in a]


side_levels = st.dictionaries(st.integers(90, 110), st.tuples(st.sampled_from(["0.5", "1", "2", "2.5"]),
                                                              st.integers(1, 4)), max_size=8)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bids=side_levels, asks=side_levels)
def test_uncross_is_the_venues_rule(bids: dict[int, tuple[str, int]], asks: dict[int, tuple[str, int]]) -> None:
    ob, ids = OrderBook(), LevelIds()
    ob.apply([(str(p), s) for p, (s, _) in bids.items()], [(str(p), s) for p, (s, _) in asks.items()])
    for p, (_, i) in bids.items():
        ids.bids[float(p)] = i
    for p, (_, i) in asks.items():
        ids.asks[float(p)] = i
    uncross(ob, ids)
    want = reference_uncross([(Decimal(p), Decimal(s), i) for p, (s, i) in bids.items()],
                             [(Decimal(p), Decimal(s), i) for p, (s, i) in asks.items()])
    got = ([(Decimal(p), Decimal(s)) for p, s in ob.iter_bids()], [(Decimal(p), Decimal(s)) for p, s in ob.iter_asks()])
    assert got == want
    assert not ob.crossed()
    assert set(ids.bids) == set(ob.bids)
    assert set(ids.asks) == set(ob.asks)


# -- the ids are state: they survive a restart exactly -------------------------------------------
def test_a_restarted_worker_uncrosses_exactly_as_the_one_before(tmp_path: Path) -> None:
    frames = [subscribed(2, [("100", "1"), ("99", "1")], [("101", "1"), ("102", "1")]),
              update(5, asks=[("101", "2")]),  # the best ask is now message 5's; the bids stay message 2's
              update(8, bids=[("99", "3")])]
    crossing = update(9, bids=[("101.5", "0.5")])  # crosses 101 (message 5, older): the ask goes
    part = PartitionState(0, LocalStore(tmp_path, BOOKS).open(0), buffer_limit=100)
    for offset, frame in enumerate(frames):
        out = part.processor.handle(RawFrame(KEY, offset, Kind.WS, "c1", frame))
        assert out.dead is None
        part.record(KEY, out.fx)
        part.progress.applied("raw.dydx", offset)
    rows, progress = part.snapshot()
    assert sorted((k.rpartition(b"\x00")[2], v) for k, v in rows if b"\x00i" in k) == [
        (b"ia101", b"5"), (b"ia102", b"2"), (b"ib100", b"2"), (b"ib99", b"8")]
    part.store.write(rows, Checkpoint(changelog_next=1))
    part.store.close()

    reloaded = PartitionState(0, LocalStore(tmp_path, BOOKS).open(0), buffer_limit=100)
    reloaded.load()
    inst = reloaded.books[KEY]
    assert inst.ids is not None
    assert (inst.ids.bids, inst.ids.asks) == ({100.0: 2, 99.0: 8}, {101.0: 5, 102.0: 2})
    reloaded.processor.handle(RawFrame(KEY, 3, Kind.WS, "c1", crossing))
    uninterrupted = Processor()
    for offset, frame in enumerate([*frames, crossing]):
        uninterrupted.handle(RawFrame(KEY, offset, Kind.WS, "c1", frame))
    assert book(inst) == book(uninterrupted.instruments[KEY]) == ([("101.5", "0.5"), ("100", "1"), ("99", "3")],
                                                                  [("102", "1")])
    assert inst.status == SYNCED
    reloaded.store.close()


def test_a_checkpoint_carries_the_ids_and_a_rebuild_restores_them() -> None:
    inst = synced()
    step(inst, update(5, asks=[("28195", "1")]))
    cp = checkpoint_of(inst, "raw.dydx", 0, 2)
    assert sorted(cp.ids) == [("a", "28195", 5), ("a", "28196", 2), ("b", "28193", 2), ("b", "28194", 2)]
    back = instrument_from(cp)
    assert back.ids is not None
    assert (back.ids.bids, back.ids.asks) == (inst.ids.bids, inst.ids.asks)
    deribit = Instrument("deribit:X", rule("deribit"))
    assert "ids" not in orjson.loads(msgspec.json.encode(checkpoint_of(deribit, "raw.deribit", 0, 0)))


# -- the indexer's "could not fetch data" -----------------------------------------------------------
FETCH_FAILED = orjson.dumps({"type": "error", "message": "Internal error, could not fetch data for subscription: "
                             "v4_orderbook.", "connection_id": CONN, "message_id": 3, "channel": "v4_orderbook",
                             "id": "BTC-USD"})


def test_could_not_fetch_data_makes_the_book_stale_with_that_reason_and_asks_for_a_resync() -> None:
    assert adapter(VENUE).route(Kind.WS, FETCH_FAILED) == ["BTC-USD"]
    with pytest.raises(VenueFault, match="could not fetch data"):
        adapter(VENUE).parse(Kind.WS, FETCH_FAILED, "BTC-USD")
    proc = Processor()
    proc.handle(RawFrame(KEY, 1, Kind.WS, "c1", subscribed(2, [("1", "1")], [("2", "1")])))
    out = proc.handle(RawFrame(KEY, 2, Kind.WS, "c1", FETCH_FAILED))
    assert out.dead is None  # the venue's answer, not a bad frame
    inst = proc.instruments[KEY]
    reason = "venue error: Internal error, could not fetch data for subscription: v4_orderbook."
    assert (inst.status, inst.reason, out.fx.resync) == (STALE, reason, reason)
    again = proc.handle(RawFrame(KEY, 3, Kind.WS, "c1", FETCH_FAILED))  # the resubscription failed too
    assert again.fx.resync == reason
    assert inst.counters["resyncs"] == 2
    proc.handle(RawFrame(KEY, 4, Kind.WS, "c1", subscribed(8, [("1", "1")], [("2", "1")])))
    assert inst.status == SYNCED


def test_could_not_fetch_data_before_any_snapshot_still_asks_for_the_resync() -> None:
    proc = Processor()
    assert proc.instrument(KEY).status == WAITING
    out = proc.handle(RawFrame(KEY, 1, Kind.WS, "c1", FETCH_FAILED))
    assert (proc.instruments[KEY].status, out.fx.resync is not None) == (STALE, True)


def test_other_answers_are_not_book_faults() -> None:
    already = orjson.dumps({"type": "error", "message": "Invalid subscribe message: already subscribed "
                            "(v4_orderbook-BTC-USD)", "connection_id": CONN, "message_id": 4,
                            "channel": "v4_orderbook", "id": "BTC-USD"})
    gone = b'{"type":"unsubscribed","connection_id":"c","message_id":5,"channel":"v4_orderbook","id":"BTC-USD"}'
    for frame in (already, gone, b'{"type":"connected","connection_id":"c","message_id":0}'):
        assert adapter(VENUE).parse(Kind.WS, frame, "BTC-USD") == []


# -- trades, tickers, specs ---------------------------------------------------------------------
def trades(kind: str, message_id: int, *items: tuple[str, str, str, str, str]) -> bytes:
    """(id, side, size, price, createdAt) → a v4_trades message."""
    return orjson.dumps({"type": kind, "connection_id": CONN, "message_id": message_id, "id": "BTC-USD",
                         "channel": "v4_trades", "contents": {"trades": [
                             {"id": i, "side": side, "size": size, "price": price, "type": "LIMIT",
                              "createdAt": at, "createdAtHeight": "49592"} for i, side, size, price, at in items]}})


def test_trades_the_subscription_repeats_are_dropped_by_id() -> None:
    proc = Processor()
    first = trades("channel_data", 4, ("8ee6d90d-272d-5edd-bf0f-2e4d6ae3d3b7", "BUY", "0.000100431", "27839",
                                       "2023-04-04T00:29:19.353Z"))
    out = proc.handle(RawFrame(KEY, 1, Kind.WS, "c1", first))
    assert [(t.trade_id, t.side, t.size, t.price, t.unit, t.ts_exchange) for t in out.trades] == [
        ("8ee6d90d-272d-5edd-bf0f-2e4d6ae3d3b7", "buy", "0.000100431", "27839", "base", 1680568159353000000)]
    # a resubscription: the latest trades again, newest first, one of them new
    latest = trades("subscribed", 9, ("d310c32c-f066-5ba8-a97d-10a29d9a6c84", "SELL", "0.000000005", "27837",
                                      "2023-04-04T00:29:20.001Z"),
                    ("8ee6d90d-272d-5edd-bf0f-2e4d6ae3d3b7", "BUY", "0.000100431", "27839", "2023-04-04T00:29:19.353Z"),
                    ("38e64479-af09-5417-a795-195f83879156", "BUY", "0.000000004", "27839", "2023-04-04T00:28:56.226Z"))
    out = proc.handle(RawFrame(KEY, 2, Kind.WS, "c2", latest))
    assert [t.trade_id for t in out.trades] == ["d310c32c-f066-5ba8-a97d-10a29d9a6c84"]
    liquidated = orjson.loads(trades("channel_data", 11, ("x1", "SELL", "1", "27000", "2023-04-04T00:30:00Z")))
    liquidated["contents"]["trades"][0]["type"] = "LIQUIDATED"
    (trade,), _ = MARKETS[VENUE].parse_market(Kind.WS, orjson.dumps(liquidated), "BTC-USD")
    assert trade.liquidation == "LIQUIDATED"


def markets_update() -> bytes:
    return orjson.dumps({"type": "channel_data", "connection_id": CONN, "message_id": 2, "channel": "v4_markets",
                         "version": "1.0.0", "contents": {
                             "trading": {"BTC-USD": {"nextFundingRate": "0.00006821875", "openInterest": "1891.47"},
                                         "ETH-USD": {"volume24H": "1462890959.6541"}},
                             "oraclePrices": {"BTC-USD": {"oraclePrice": "60001.75", "effectiveAt":
                                                          "2026-08-27T00:00:00.000Z", "effectiveAtHeight": "123456",
                                                          "marketId": 0},
                                              "ETH-USD": {"price": "1808.2", "effectiveAt": "2026-08-27T00:00:01Z",
                                                          "effectiveAtHeight": "123457", "marketId": 1}}}})


def test_market_updates_are_keyed_once_and_give_each_market_its_ticker() -> None:
    frame = markets_update()
    assert adapter(VENUE).route(Kind.WS, frame) == []  # one copy, venue-keyed (it names many markets)
    tickers = VENUE_MARKETS[VENUE].parse_venue_market(Kind.WS, frame)
    assert [(t.symbol, t.channel, t.partial, t.ts_exchange, t.fields) for t in tickers] == [
        ("BTC-USD", "v4_markets", True, 1787788800000000000,
         {"funding_rate": "0.00006821875", "open_interest": "1891.47", "index": "60001.75", "mark": "60001.75"}),
        ("ETH-USD", "v4_markets", True, 1787788801000000000, {"index": "1808.2", "mark": "1808.2"})]
    out = Processor().handle(RawFrame("dydx:", 1, Kind.WS, "c1", frame))
    assert out.dead is None
    assert [t.symbol for t in out.tickers] == ["BTC-USD", "ETH-USD"]
    assert out.specs == []


MARKETS_BODY = {"markets": {
    "BTC-USD": {"clobPairId": "0", "ticker": "BTC-USD", "status": "ACTIVE", "oraclePrice": "27752.92",
                "nextFundingRate": "0", "initialMarginFraction": "0.050000", "maintenanceMarginFraction": "0.030000",
                "openInterest": "1891.473716288", "atomicResolution": -10, "quantumConversionExponent": -8,
                "tickSize": "1", "stepSize": "0.000000001", "stepBaseQuantums": 10, "subticksPerTick": 10000,
                "minOrderBaseQuantums": 10, "baseAsset": "", "quoteAsset": ""},
    "ETH-USD": {"clobPairId": "1", "ticker": "ETH-USD", "status": "FINAL_SETTLEMENT", "tickSize": "0.01",
                "stepSize": "0.000001", "atomicResolution": -9, "minOrderBaseQuantums": 1000,
                "initialMarginFraction": "0.05", "maintenanceMarginFraction": "0.03"}}}


def test_perpetual_markets_give_linear_usdc_perpetual_specs() -> None:
    specs = INSTRUMENT_LISTS[VENUE].parse(orjson.dumps(MARKETS_BODY))
    assert specs is not None
    btc, eth = specs
    assert (btc.key, btc.kind, btc.margin, btc.base, btc.quote, btc.settle, btc.contract_size, btc.tick_size,
            btc.lot_size, btc.min_size, btc.initial_margin, btc.maintenance_margin, btc.state) == (
        "dydx:BTC-USD", "perpetual", "linear", "BTC", "USD", "USDC", "1", "1", "0.000000001", "0.000000001",
        "0.050000", "0.030000", "open")
    assert (eth.min_size, eth.state) == ("0.000001", "settlement")
    (url,) = INSTRUMENT_LISTS[VENUE].urls(VENUE_TABLE[VENUE].endpoint.api_url, ["BTC-USD"])
    assert url == "https://indexer.dydx.trade/v4/perpetualMarkets"
    assert INSTRUMENT_LISTS[VENUE].post_body(url) is None
    # the v4_markets subscription's first message is the same list: the registry's
    ws = orjson.dumps({"type": "subscribed", "connection_id": CONN, "message_id": 1, "channel": "v4_markets",
                       "contents": MARKETS_BODY})
    pushed = INSTRUMENT_LISTS[VENUE].parse_ws(ws)
    assert pushed is not None
    assert pushed[0] == specs
    out = Processor().handle(RawFrame("dydx:", 1, Kind.WS, "c1", ws))
    assert out.specs == specs
    # … and each market's figures a ticker from the start (ETH-USD has no oracle price: none)
    (btc_ticker,) = out.tickers
    assert (btc_ticker.symbol, btc_ticker.fields) == ("BTC-USD", {
        "index": "27752.92", "mark": "27752.92", "funding_rate": "0", "open_interest": "1891.473716288"})
    assert INSTRUMENT_LISTS[VENUE].parse_ws(markets_update()) is None


# -- the session -------------------------------------------------------------------------------
def test_one_channel_per_message_and_the_markets_channel_once() -> None:
    proto = protocol(VENUE, VENUE_TABLE[VENUE].endpoint)
    assert [orjson.loads(f.text) for f in proto.subscribe(["BTC-USD", "ETH-USD"])] == [
        {"type": "subscribe", "channel": "v4_orderbook", "id": "BTC-USD", "batched": False},
        {"type": "subscribe", "channel": "v4_trades", "id": "BTC-USD", "batched": False},
        {"type": "subscribe", "channel": "v4_orderbook", "id": "ETH-USD", "batched": False},
        {"type": "subscribe", "channel": "v4_trades", "id": "ETH-USD", "batched": False},
        {"type": "subscribe", "channel": "v4_markets", "batched": False}]
    assert [orjson.loads(f.text) for f in proto.resubscribe("BTC-USD")] == [
        {"type": "unsubscribe", "channel": "v4_orderbook", "id": "BTC-USD"},
        {"type": "subscribe", "channel": "v4_orderbook", "id": "BTC-USD", "batched": False}]
    assert proto.ping() is None  # the server pings; the WebSocket library answers
    assert VENUE_TABLE[VENUE].endpoint.limits.ops == (2, 1.0)


def test_data_confirms_and_errors_refuse_the_channel_they_name() -> None:
    proto = protocol(VENUE, VENUE_TABLE[VENUE].endpoint)
    assert proto.data_channels(subscribed(2, [], [])) == ("v4_orderbook:BTC-USD",)
    assert proto.data_channels(update(3, bids=[])) == ("v4_orderbook:BTC-USD",)
    assert proto.data_channels(trades("channel_data", 4, ("a", "BUY", "1", "1", "2023-04-04T00:29:19.353Z"))) == (
        "v4_trades:BTC-USD",)
    assert proto.data_channels(markets_update()) == ("v4_markets",)
    assert proto.data_channels(FETCH_FAILED) == ()
    assert proto.data_channels(b'{"type":"connected"}') == ()
    refused = proto.ack(FETCH_FAILED)
    assert refused is not None
    assert refused.refused == ("v4_orderbook:BTC-USD",)
    assert "could not fetch" in (
        refused.failed or "")
    already = proto.ack(orjson.dumps({"type": "error", "message": "Invalid subscribe message: already subscribed "
                                      "(v4_trades-BTC-USD)", "channel": "v4_trades", "id": "BTC-USD"}))
    assert already is not None
    assert already.ok == ("v4_trades:BTC-USD",)
    assert already.failed is None
    gone = proto.ack(b'{"type":"unsubscribed","connection_id":"c","message_id":5,"channel":"v4_trades","id":"BTC-USD"}')
    assert gone is not None
    assert gone.ok == ()
    assert gone.failed is None
    assert proto.ack(update(3, bids=[])) is None


def test_a_perpetual_position_is_a_linear_usdc_leg_in_coins_at_the_oracle_price() -> None:
    from app.risk import positions as pos
    from app.risk.engine import EngineSettings, RiskEngine
    from tests.risk_reference import typed

    specs = INSTRUMENT_LISTS[VENUE].parse(orjson.dumps(MARKETS_BODY))
    assert specs is not None
    engine = RiskEngine(EngineSettings(), [])
    t = 1_787_788_800_000_000_000
    for spec in specs:
        engine.on_input("ref.instruments", spec.record())
    (ticker, _) = VENUE_MARKETS[VENUE].parse_venue_market(Kind.WS, markets_update())
    engine.on_input("ticker", typed("ticker", {"key": f"dydx:{ticker.symbol}", **ticker.fields, "ts_recv": t}))
    engine.on_position(f"desk|{KEY}", pos.make("desk", KEY, "0.75", ts=t))
    (leg,), flags, _, unknown = engine.legs("desk", "BTC", t)
    assert (leg.kind, leg.quantity, leg.size, leg.price, flags, unknown) == ("linear", 0.75, 1.0, 60001.75, {}, [])
    (margin,), *_ = engine.margin_legs("desk", t)
    assert (margin.kind, margin.settlement, margin.coins, margin.inverse) == ("perpetual", "USDC", 0.75, False)


def test_the_simulators_crossed_moments_resolve_by_the_venues_rule_to_its_truth() -> None:
    """The simulator's "dydx-cross" fault sends one message that crosses the book and takes as its
    truth what the venue's rule makes of it: the book built by the rule equals that truth after
    every message, crossed moments (both kinds: a newer level through the other side, and both
    sides in one message netting) and ordinary deltas alike."""
    from app.simulator.model import TrueBook
    from app.simulator.server import Instrument as SimInstrument
    from app.simulator.server import Simulator

    sim = Simulator(seed=7)
    true = SimInstrument("dydx", "BTC-USD", TrueBook("BTC-USD", seed=11))
    inst = Instrument(KEY, rule(VENUE))
    step(inst, subscribed(1, *true.book.levels()))
    for message_id in range(2, 302):
        changes = sim._cross(true) if message_id % 3 == 0 else true.book.step()
        step(inst, update(message_id, [(p, z) for c, p, z in changes if c == "b"],
                          [(p, z) for c, p, z in changes if c == "a"]))
        assert inst.status == SYNCED, inst.reason
        assert book(inst) == true.book.levels(), f"message {message_id}"
    assert inst.counters["uncrossed"] >= 100  # every crossed moment crossed the book
