"""Hyperliquid: whole-book snapshots ordered by block time, diffed; trades, tickers, specs, session.

Frame shapes, and where they come from:

* ``l2Book`` — hyperliquid-python-sdk ``hyperliquid/utils/types.py`` (``L2BookMsg``: ``{"channel":
  "l2Book","data":{"coin","levels":[bids, asks],"time"}}``, ``L2Level`` ``{px, sz, n}``) and the
  venue's docs, https://hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/websocket/subscriptions
  (``WsBook``, ``WsLevel``);
* ``trades`` — the same page (``WsTrade``: coin, side, px, sz, hash, time, tid, users) and the SDK's
  ``Trade``; ``bbo`` (``WsBbo``: coin, time, bbo [bid | null, ask | null]) and ``activeAssetCtx``
  (``WsActiveAssetCtx``: coin, ctx with funding, openInterest, prevDayPx, dayNtlVlm, premium,
  oraclePx, markPx, midPx, impactPxs, dayBaseVlm) from the same page;
* ``subscriptionResponse``, ``{"method":"ping"}`` and the greeting ``Websocket connection
  established.`` — hyperliquid-python-sdk ``hyperliquid/websocket_manager.py``; the error text
  (``Invalid subscription {…}``, ``Already subscribed: {…}``) as clients quote it in public issues
  (gemwalletcom/wallet#462);
* ``meta`` — POST /info ``{"type":"meta"}``, docs "Info endpoint > Perpetuals" (``universe``: name,
  szDecimals, maxLeverage, isDelisted) and the SDK's ``Meta``/``AssetInfo``.

Prices and sizes below are illustrative; the shapes are the venue's.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from app.capture.formats import read_hftbacktest
from app.errors import FrameError
from app.processor import Processor
from app.sync import STALE, SYNCED, Effects, Instrument
from app.venues import INSTRUMENT_LISTS, MARKETS, VENUE_TABLE, adapter, protocol, rule
from app.venues.base import BookUpdate, Kind
from app.venues.hyperliquid import HyperliquidProtocol
from app.wire import RawFrame

VENUE = "hyperliquid"
KEY = "hyperliquid:BTC"


def l2book(time_ms: int, bids: list[tuple[str, str]], asks: list[tuple[str, str]], coin: str = "BTC") -> bytes:
    def side(levels: list[tuple[str, str]]) -> list[dict[str, object]]:
        return [{"px": p, "sz": s, "n": 1 + i} for i, (p, s) in enumerate(levels)]

    return orjson.dumps({"channel": "l2Book", "data": {"coin": coin, "time": time_ms,
                                                       "levels": [side(bids), side(asks)]}})


def trades_frame(*trades: tuple[int, int, str, str, str]) -> bytes:
    """(time, tid, side, px, sz) → a ``trades`` frame."""
    return orjson.dumps({"channel": "trades", "data": [
        {"coin": "BTC", "side": side, "px": px, "sz": sz, "time": t, "tid": tid,
         "hash": "0x2f8b1f3c0ae5d4a6f9e0c1b2a3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6",
         "users": ["0x31ca8395cf837de08b24da3f660e77761dfb974b", "0x010461c14e146ac35fe42271bdc1134ee31c703a"]}
        for t, tid, side, px, sz in trades]})


def step(inst: Instrument, frame: bytes, conn: str = "c1") -> Effects:
    fx = Effects()
    for upd in adapter(VENUE).parse(Kind.WS, frame, "BTC"):
        inst.step(upd, frame, conn, 0, fx)
    return fx


def synced() -> Instrument:
    inst = Instrument(KEY, rule(VENUE))
    step(inst, l2book(1_000, [("100.5", "1"), ("100", "2")], [("101", "3"), ("101.5", "4")]))
    assert inst.status == SYNCED
    return inst


# -- the book ----------------------------------------------------------------------------------
def test_an_l2book_message_is_a_whole_snapshot_sequenced_by_its_block_time() -> None:
    frame = l2book(1_788_490_065_008, [("80639.0", "0.00186")], [("80640.0", "13.74589")])
    assert adapter(VENUE).route(Kind.WS, frame) == ["BTC"]
    (upd,) = adapter(VENUE).parse(Kind.WS, frame, "BTC")
    assert (upd.snapshot, upd.seq, upd.ts_exchange) == (True, 1_788_490_065_008, 1_788_490_065_008_000_000)
    assert (upd.bids, upd.asks) == ([("80639.0", "0.00186")], [("80640.0", "13.74589")])
    with pytest.raises(FrameError, match="wrong-instrument"):
        adapter(VENUE).parse(Kind.WS, frame, "ETH")


def test_an_older_snapshot_is_ignored_whatever_connection_it_came_on() -> None:
    inst = synced()
    for conn in ("c1", "c2"):  # a second API server a block behind
        fx = step(inst, l2book(999, [("90", "9")], [("91", "9")]), conn)
        assert not fx.changed()
        assert fx.tops == []
    assert (inst.status, inst.seq, inst.counters["duplicates"]) == (SYNCED, 1_000, 2)
    assert inst.book.top() == ("100.5", "1", "101", "3")


def test_a_snapshot_of_the_same_time_is_applied() -> None:
    inst = synced()
    fx = step(inst, l2book(1_000, [("100.5", "7"), ("100", "2")], [("101", "3"), ("101.5", "4")]), "c2")
    assert (inst.status, inst.seq, inst.counters["duplicates"]) == (SYNCED, 1_000, 0)
    assert fx.changes == [("b", "100.5", "7")]
    assert inst.book.top() == ("100.5", "7", "101", "3")


def test_consecutive_snapshots_publish_their_diff_only() -> None:
    inst = synced()
    fx = step(inst, l2book(1_400, [("100.5", "1"), ("100", "2.5"), ("99.5", "1")], [("101.5", "4"), ("102", "1")]))
    # kept levels say nothing; a changed size, a new level and a level gone are one change each
    assert sorted(fx.changes, key=str) == sorted([("b", "100", "2.5"), ("b", "99.5", "1"), ("a", "101", None),
                                                  ("a", "102", "1")], key=str)
    assert inst.counters["epoch"] == 2
    assert inst.seq == 1_400
    assert list(inst.book.iter_asks()) == [("101.5", "4"), ("102", "1")]


def test_top_changes_come_only_when_the_top_moves() -> None:
    inst = synced()
    fx = step(inst, l2book(1_400, [("100.5", "1"), ("100", "5")], [("101", "3"), ("101.5", "4")]))  # deeper only
    assert fx.changes == [("b", "100", "5")]
    assert fx.tops == []
    fx = step(inst, l2book(1_800, [("100.5", "1"), ("100", "5")], [("100.75", "2"), ("101", "3"), ("101.5", "4")]))
    assert [(t.seq, t.top) for t in fx.tops] == [(1_800, ("100.5", "1", "100.75", "2"))]


def test_a_stale_book_resyncs_with_the_next_newer_snapshot_only() -> None:
    inst = synced()
    fx = Effects()
    inst.connection_event("reset", "c1 closed", fx)
    assert inst.status == STALE
    assert fx.resync is not None
    step(inst, l2book(990, [("1", "1")], [("2", "1")]), "c2")  # older than what was applied: not the book
    assert inst.status == STALE
    step(inst, l2book(1_200, [("100", "1")], [("101", "1")]), "c2")
    assert (inst.status, inst.book.top()) == (SYNCED, ("100", "1", "101", "1"))


def test_bbo_ctx_trades_and_answers_are_no_book_updates() -> None:
    ad = adapter(VENUE)
    frames = [b'{"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":[null,null]}}',
              trades_frame((1, 2, "B", "1", "1")),
              b'{"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":{"markPx":"1"}}}',
              b'{"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":{"type":"l2Book",'
              b'"coin":"BTC"}}}', b'{"channel":"pong"}', b"Websocket connection established."]
    for frame in frames:
        assert ad.parse(Kind.WS, frame, "BTC") == []
    assert [ad.route(Kind.WS, f) for f in frames] == [["BTC"], ["BTC"], ["BTC"], [], [], []]
    assert ad.route(Kind.REST, b'{"universe":[]}') == []  # the instrument list is venue-wide


# -- trades and tickers --------------------------------------------------------------------------
def test_trades_repeated_in_the_first_frame_after_subscribing_are_dropped_by_the_cursor() -> None:
    proc = Processor()
    first = trades_frame((1_000, 11, "B", "80639", "0.1"), (1_000, 12, "A", "80638", "0.2"))
    out = proc.handle(RawFrame(KEY, 1, Kind.WS, "c1", first))
    assert [(t.trade_id, t.side, t.price, t.size, t.order, t.ts_exchange) for t in out.trades] == [
        ("11", "buy", "80639", "0.1", 1_000, 1_000_000_000), ("12", "sell", "80638", "0.2", 1_000, 1_000_000_000)]
    # a resubscription's first frame repeats recent trades (one older, two of the last time) with a new one
    again = trades_frame((999, 10, "B", "80630", "1"), (1_000, 12, "A", "80638", "0.2"),
                         (1_000, 11, "B", "80639", "0.1"), (1_000, 13, "B", "80640", "0.3"),
                         (1_200, 14, "A", "80641", "0.4"))
    out = proc.handle(RawFrame(KEY, 2, Kind.WS, "c2", again))
    assert [t.trade_id for t in out.trades] == ["13", "14"]
    assert out.trade_gaps == []
    assert proc.instruments[KEY].trades is not None
    assert proc.instruments[KEY].trades.dups == 3  # type: ignore[union-attr]


def test_active_asset_ctx_gives_mark_mid_oracle_funding_open_interest_and_premium() -> None:
    frame = (b'{"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":{"funding":"0.0000052974","openInterest":'
             b'"36295.80812","prevDayPx":"77759.0","dayNtlVlm":"4490636699.3287734985","premium":"-0.0005540084",'
             b'"oraclePx":"80684.7","markPx":"80640.0","midPx":"80639.5","impactPxs":["80637.2","80640.0"],'
             b'"dayBaseVlm":"56265.69068"}}}')
    trades, (ticker,) = MARKETS[VENUE].parse_market(Kind.WS, frame, "BTC")
    assert trades == []
    assert (ticker.channel, ticker.partial, ticker.ts_exchange) == ("activeAssetCtx", False, 0)
    assert ticker.fields == {"mark": "80640.0", "mid": "80639.5", "index": "80684.7", "funding_rate": "0.0000052974",
                             "open_interest": "36295.80812", "premium": "-0.0005540084"}
    # a book-less asset: mid and premium are null
    _, (empty,) = MARKETS[VENUE].parse_market(
        Kind.WS, b'{"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":{"markPx":"1.5","midPx":null,'
                 b'"premium":null,"oraclePx":"1.49","funding":"0","openInterest":"0"}}}', "BTC")
    assert (empty.fields["mid"], empty.fields["premium"]) == (None, None)


def test_bbo_is_a_ticker_and_a_null_side_is_an_empty_side() -> None:
    frame = (b'{"channel":"bbo","data":{"coin":"BTC","time":1788490065008,"bbo":[{"px":"80639.0","sz":"0.00186","n":2},'
             b'null]}}')
    _, (ticker,) = MARKETS[VENUE].parse_market(Kind.WS, frame, "BTC")
    assert (ticker.channel, ticker.ts_exchange, ticker.partial) == ("bbo", 1_788_490_065_008_000_000, False)
    assert ticker.fields == {"bid": "80639.0", "bid_size": "0.00186", "ask": None, "ask_size": None}
    out = Processor().handle(RawFrame(KEY, 1, Kind.WS, "c1", frame))  # a ticker makes no book
    assert out.tickers
    assert out.inst is None


def test_a_book_frame_is_no_market_data() -> None:
    assert MARKETS[VENUE].parse_market(Kind.WS, l2book(1, [("1", "1")], [("2", "1")]), "BTC") == ([], [])


# -- specs -----------------------------------------------------------------------------------------
def test_meta_universe_gives_linear_usdc_perpetuals_and_delisted_ones() -> None:
    body = orjson.dumps({"universe": [
        {"szDecimals": 5, "name": "BTC", "maxLeverage": 40, "marginTableId": 56},
        {"szDecimals": 0, "name": "kPEPE", "maxLeverage": 10},
        {"szDecimals": 1, "name": "MATIC", "maxLeverage": 20, "isDelisted": True, "onlyIsolated": True}],
        "marginTables": []})
    specs = INSTRUMENT_LISTS[VENUE].parse(body)
    assert specs is not None
    btc, pepe, matic = specs
    assert (btc.key, btc.kind, btc.margin, btc.base, btc.quote, btc.settle, btc.contract_size, btc.lot_size,
            btc.max_leverage, btc.tick_size, btc.state) == (
        "hyperliquid:BTC", "perpetual", "linear", "BTC", "USD", "USDC", "1", "0.00001", "40", None, "open")
    assert (pepe.lot_size, matic.lot_size, matic.state) == ("1", "0.1", "delisted")
    assert INSTRUMENT_LISTS[VENUE].parse(b'{"markets":{}}') is None  # another venue's list


def test_meta_with_a_bad_size_decimals_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        INSTRUMENT_LISTS[VENUE].parse(b'{"universe":[{"name":"X","szDecimals":"five","maxLeverage":3}]}')
    with pytest.raises(FrameError):
        INSTRUMENT_LISTS[VENUE].parse(b'{"universe":[{"name":"X","szDecimals":900,"maxLeverage":3}]}')


def test_the_instrument_list_is_a_post_of_the_meta_request() -> None:
    lists = INSTRUMENT_LISTS[VENUE]
    (url,) = lists.urls(VENUE_TABLE[VENUE].endpoint.api_url, ["BTC", "ETH"])
    assert url == "https://api.hyperliquid.xyz/info"
    assert orjson.loads(lists.post_body(url) or b"") == {"type": "meta"}
    assert INSTRUMENT_LISTS["okx"].post_body("https://www.okx.com/api/v5/public/instruments") is None  # GETs


# -- the session -------------------------------------------------------------------------------
def test_one_subscription_per_message_at_full_precision() -> None:
    proto = protocol(VENUE, VENUE_TABLE[VENUE].endpoint)
    frames = proto.subscribe(["BTC"])
    assert [orjson.loads(f.text) for f in frames] == [
        {"method": "subscribe", "subscription": {"type": t, "coin": "BTC"}}
        for t in ("l2Book", "trades", "activeAssetCtx", "bbo")]  # no nSigFigs, no mantissa
    assert [f.channels for f in frames] == [("l2Book:BTC",), ("trades:BTC",), ("activeAssetCtx:BTC",), ("bbo:BTC",)]
    assert [orjson.loads(f.text) for f in proto.resubscribe("BTC")] == [
        {"method": "unsubscribe", "subscription": {"type": "l2Book", "coin": "BTC"}},
        {"method": "subscribe", "subscription": {"type": "l2Book", "coin": "BTC"}}]
    assert orjson.loads(proto.ping() or "") == {"method": "ping"}
    assert VENUE_TABLE[VENUE].endpoint.ping_s < 60 / 2  # well inside the venue's 60 s idle limit


def test_answers_confirm_or_refuse_the_channel_they_name() -> None:
    proto = protocol(VENUE, VENUE_TABLE[VENUE].endpoint)
    ok = proto.ack(b'{"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":{"type":"l2Book",'
                   b'"coin":"BTC"}}}')
    assert ok is not None
    assert ok.ok == ("l2Book:BTC",)
    assert ok.failed is None
    gone = proto.ack(b'{"channel":"subscriptionResponse","data":{"method":"unsubscribe","subscription":{"type":"bbo",'
                     b'"coin":"BTC"}}}')
    assert gone is not None
    assert gone.ok == ()
    assert gone.failed is None
    refused = proto.ack(orjson.dumps({"channel": "error",
                                      "data": 'Invalid subscription {"type":"trades","coin":"NOPE"}'}))
    assert refused is not None
    assert refused.refused == ("trades:NOPE",)
    assert refused.failed
    again = proto.ack(orjson.dumps({"channel": "error", "data": 'Already subscribed: {"type":"activeAssetCtx",'
                                                              '"coin":"BTC"}'}))
    assert again is not None
    assert again.ok == ("activeAssetCtx:BTC",)
    assert again.failed is None
    assert proto.ack(b'{"channel":"pong"}') is None
    assert proto.ack(l2book(1, [], [])) is None


def test_data_frames_name_their_channel_and_answers_are_no_data() -> None:
    proto = protocol(VENUE, VENUE_TABLE[VENUE].endpoint)
    assert proto.data_channels(l2book(1, [("1", "1")], [])) == ("l2Book:BTC",)
    assert proto.data_channels(trades_frame((1, 2, "B", "1", "1"))) == ("trades:BTC",)
    assert proto.data_channels(b'{"channel":"bbo","data":{"coin":"xyz:AAPL","time":1,"bbo":[null,null]}}') == (
        "bbo:xyz:AAPL",)
    for answer in (b'{"channel":"pong"}', b'{"channel":"subscriptionResponse","data":{}}',
                   b'{"channel":"trades","data":[]}', b"Websocket connection established."):
        assert proto.data_channels(answer) == ()


def test_a_coin_that_would_close_the_connection_is_never_subscribed() -> None:
    proto = protocol(VENUE, VENUE_TABLE[VENUE].endpoint)
    assert isinstance(proto, HyperliquidProtocol)
    names = {s.symbol for s in proto.subs(["BTC", "kPEPE", "xyz:AAPL", "BTC-PERP", "", "B TC"])}
    assert names == {"BTC", "kPEPE", "xyz:AAPL"}  # the others' shape is no coin's
    proto.set_known(["BTC", "ETH"])
    assert {s.symbol for s in proto.subs(["BTC", "DOGEFAKE", "ETH"])} == {"BTC", "ETH"}
    assert all("DOGEFAKE" not in f.text for f in proto.subscribe(["BTC", "DOGEFAKE"]))


def test_an_hftbacktest_hyperliquid_capture_is_recognised(tmp_path: Path) -> None:
    """The hftbacktest collector's Hyperliquid files: gzip ``<recv_ns> <raw json>`` lines."""
    path = tmp_path / "BTC_20261201.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"1788490065100000000 " + l2book(1_788_490_065_008, [("1", "1")], [("2", "1")]) + b"\n")
    (record,) = read_hftbacktest(path)
    assert (record.venue, record.kind) == ("hyperliquid", Kind.WS)


def test_a_snapshot_rule_never_takes_an_update_for_its_own_repeat() -> None:
    upd = BookUpdate(snapshot=True, seq=5)
    assert rule(VENUE).snapshot_repeated(6, upd, False)
    assert not rule(VENUE).snapshot_repeated(5, upd, False)
    assert not rule(VENUE).snapshot_repeated(None, upd, True)


def test_a_perpetual_position_is_a_linear_usdc_leg_in_coins_at_the_venues_mark() -> None:
    from app.risk import positions as pos
    from app.risk.engine import EngineSettings, RiskEngine
    from tests.risk_reference import typed

    specs = INSTRUMENT_LISTS[VENUE].parse(b'{"universe":[{"szDecimals":5,"name":"BTC","maxLeverage":40},'
                                          b'{"szDecimals":2,"name":"xyz:AAPL","maxLeverage":10}]}')
    assert specs is not None
    engine = RiskEngine(EngineSettings(), [])
    t = 1_788_490_065_008_000_000
    for spec in specs:
        engine.on_input("ref.instruments", spec.record())
    _, (ctx,) = MARKETS[VENUE].parse_market(Kind.WS, b'{"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":'
                                                     b'{"markPx":"80640.0","oraclePx":"80684.7"}}}', "BTC")
    engine.on_input("ticker", typed("ticker", {"key": KEY, **ctx.fields, "ts_recv": t}))
    engine.on_position(f"desk|{KEY}", pos.make("desk", KEY, "-2.5", ts=t))
    pos.make("desk", "hyperliquid:xyz:AAPL", "1", ts=t)  # a builder-deployed perpetual's key is a position's too
    (leg,), flags, _, unknown = engine.legs("desk", "BTC", t)
    assert (leg.kind, leg.quantity, leg.size, leg.price, flags, unknown) == ("linear", -2.5, 1.0, 80640.0, {}, [])
    (margin,), *_ = engine.margin_legs("desk", t)
    assert (margin.kind, margin.settlement, margin.coins, margin.inverse, margin.index) == (
        "perpetual", "USDC", -2.5, False, 80684.7)


def test_a_snapshot_received_long_after_its_block_time_leaves_the_book_stale_until_a_current_one() -> None:
    inst = synced()
    late = l2book(2_000, [("100", "1")], [("101", "1")])
    fx = Effects()
    (upd,) = adapter(VENUE).parse(Kind.WS, late, "BTC")
    inst.step(upd, late, "c1", 2_000 * 1_000_000 + 10_000_000_001, fx)  # received 10 s and a bit later
    assert (inst.status, inst.reason, fx.resync is not None, fx.tops) == (
        STALE, "venue time more than 10 s behind receive time", True, [])
    fx = Effects()
    (upd,) = adapter(VENUE).parse(Kind.WS, l2book(2_500, [("100", "2")], [("101", "1")]), "BTC")
    inst.step(upd, b"", "c1", 2_500 * 1_000_000 + 10_000_000_000, fx)  # 10 s: still current
    assert (inst.status, inst.book.top()) == (SYNCED, ("100", "2", "101", "1"))
    assert [t.top for t in fx.tops] == [("100", "2", "101", "1")]


def test_a_book_no_snapshot_keeps_current_goes_stale_on_the_timer() -> None:
    """No frame at all (the venue gone quiet): the book timer's ``Processor.age`` makes the book stale
    once its block time is more than 10 s old, and asks for a resync; books of rules without
    ``max_lag_ns`` are never aged."""
    proc = Processor()
    inst = proc.instruments[KEY] = synced()  # block time 1,000 ms
    other = proc.instrument("dydx:BTC-USD")
    for upd in adapter("dydx").parse(Kind.WS, b'{"type":"subscribed","connection_id":"c","message_id":1,"channel":'
                                              b'"v4_orderbook","id":"BTC-USD","contents":{"bids":[{"price":"1",'
                                              b'"size":"1"}],"asks":[{"price":"2","size":"1"}]}}', "BTC-USD"):
        other.step(upd, b"", "c1", 0, Effects())
    block_ns = 1_000 * 1_000_000
    assert proc.age(block_ns + 10_000_000_000) == []  # 10 s: still current
    (out,) = proc.age(block_ns + 10_000_000_001)
    assert (out.key, inst.status, inst.reason, out.fx.resync is not None) == (
        KEY, STALE, "no venue time newer than 10 s", True)
    assert proc.age(block_ns + 60_000_000_000) == []  # stale already: asked once
    assert other.status == SYNCED
    fx = step(inst, l2book(70_000, [("100", "1")], [("101", "1")]))  # the next snapshot: current again
    assert inst.status == SYNCED
    assert fx.tops


def test_the_age_of_venue_time_is_judged_by_the_partitions_own_clock() -> None:
    from app.runtime import event_now

    lag = 10_000_000_000
    # live: the newest frame was applied a moment after its receipt, so silence counts (wall clock)
    assert event_now(1_000, 1_000 + 5_000_000, 99 * lag, lag) == 99 * lag
    # a replay or backlog of old frames: their own receive time, however late the wall clock
    old = 1_700_000_000_000_000_000
    assert event_now(old, old + 400 * 86_400 * 10**9, old + 401 * 86_400 * 10**9, lag) == old
    assert event_now(None, None, 5, lag) is None  # nothing applied here yet: nothing to judge by


def test_only_the_named_venues_books_are_aged() -> None:
    proc = Processor()
    inst = proc.instruments[KEY] = synced()  # block time 1,000 ms
    later = 1_000 * 1_000_000 + 60 * 10**9
    assert proc.age(later, "dydx") == []
    assert inst.status == SYNCED
    (out,) = proc.age(later, VENUE)
    assert (out.key, inst.status) == (KEY, STALE)
