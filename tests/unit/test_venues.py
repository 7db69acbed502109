"""Venues: real-shaped frames parse; anything else is a FrameError from the adapter itself,
never a crash; every registered venue has every part."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.book import OrderBook
from app.errors import FrameError
from app.processor import Processor
from app.venues import VENUE_TABLE, VENUES, Guarded, adapter, rule
from app.venues.base import BookUpdate, Continuity, Kind
from app.venues.coinbase import rfc3339_ns
from app.venues.okx import okx_checksum
from app.wire import RawFrame
from tests.helpers import examples

FRAMES = {
    "deribit": ('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.BTC-PERPETUAL.100ms","data":'
                '{"type":"change","timestamp":1626993724318,"prev_change_id":5,"instrument_name":"BTC-PERPETUAL",'
                '"change_id":6,"bids":[["delete",100.5,0.0]],"asks":[["new",101,2.6]]}}}', "BTC-PERPETUAL"),
    "binance-usdm": ('{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1,"T":2,"s":"BTCUSDT","U":10,'
                     '"u":12,"pu":9,"b":[["100.10","0.5"]],"a":[["100.20","0.000"]]}}', "BTCUSDT"),
    "binance-coinm": ('{"stream":"btcusd_perp@depth@100ms","data":{"e":"depthUpdate","E":1591270260907,'
                      '"T":1591270260891,"s":"BTCUSD_PERP","ps":"BTCUSD","U":17285681,"u":17285702,"pu":17285675,'
                      '"b":[["9517.6","10"]],"a":[["9518.5","45"],["9518.8","0"]]}}', "BTCUSD_PERP"),
    "binance": ('{"e":"depthUpdate","E":1,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],"a":[]}', "BNBBTC"),
    "okx": ('{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":'
            '[["41006.8","0.6","0","1"]],"bids":[],"ts":"1629966436396","checksum":-1,"seqId":124,"prevSeqId":123}]}',
            "BTC-USDT"),
    "bybit-linear": ('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":'
                     '[["30247.20","30.028"]],"a":[],"u":177400507,"seq":66544703342},"cts":1}', "BTCUSDT"),
    "bybit-spot": ('{"topic":"orderbook.50.BTCUSDT","ts":1672304484978,"type":"snapshot","data":{"s":"BTCUSDT","b":'
                   '[["16493.50","0.006"],["16493.00","0.100"]],"a":[["16611.00","0.029"]],"u":18521288,'
                   '"seq":7961638724},"cts":1672304484976}', "BTCUSDT"),
    "bybit-inverse": ('{"topic":"orderbook.50.BTCUSD","type":"delta","ts":1687940967466,"data":{"s":"BTCUSD","b":[],'
                      '"a":[["30248.0","0"],["30248.5","12000"]],"u":2233519,"seq":30474470810},"cts":1687940967464}',
                      "BTCUSD"),
    "bybit-option": ('{"topic":"orderbook.25.BTC-27MAR26-60000-C","type":"snapshot","ts":1672304484978,"data":'
                     '{"s":"BTC-27MAR26-60000-C","b":[["1050","2.5"]],"a":[["1100","1.2"]],"u":37,"seq":98712},'
                     '"cts":1672304484976}', "BTC-27MAR26-60000-C"),
    "coinbase": ('{"channel":"l2_data","timestamp":"2023-02-09T20:32:50.714964855Z","sequence_num":7,"events":[{"type":'
                 '"update","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2023-02-09T20:32:50.7Z",'
                 '"price_level":"21921.73","new_quantity":"0.06317902"}]}]}', "BTC-USD"),
    # the l2Book shape of hyperliquid-python-sdk hyperliquid/utils/types.py (L2BookMsg, L2Level) and
    # of the venue's "Websocket > Subscriptions" page (WsBook: coin, levels [bids, asks], time)
    "hyperliquid": ('{"channel":"l2Book","data":{"coin":"BTC","time":1788490065008,"levels":[[{"px":"80639.0",'
                    '"sz":"0.00186","n":2},{"px":"80638.0","sz":"1.25","n":3}],[{"px":"80640.0","sz":"13.74589",'
                    '"n":46}]]}}', "BTC"),
    # dydxprotocol/v4-chain indexer/services/comlink/public/websocket-documentation.md, "Orderbooks",
    # the channel_data example
    "dydx": ('{"type":"channel_data","connection_id":"ee5a4696-dce8-44ef-8d68-f0e0d0b06160","message_id":484,'
             '"id":"BTC-USD","channel":"v4_orderbook","version":"0.0.1","contents":{"bids":[["27773","1.986168516"]]}}',
             "BTC-USD"),
}
#: A Binance REST depth snapshot (the same shape for spot, USD-M and COIN-M).
REST_BODY = b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}'


@pytest.mark.parametrize("venue", sorted(FRAMES))
def test_real_shaped_frames_parse_and_route(venue: str) -> None:
    frame, symbol = FRAMES[venue]
    ad = adapter(venue)
    assert ad.route(Kind.WS, frame.encode()) == [symbol]
    (upd,) = ad.parse(Kind.WS, frame.encode(), symbol)
    assert upd.bids or upd.asks


@pytest.mark.parametrize("venue", VENUES)
def test_every_registered_venue_has_every_part(venue: str) -> None:
    """Adapter, rule, session protocol, endpoints, checksum: a venue missing one fails here."""
    entry = VENUE_TABLE[venue]
    assert entry.id == entry.adapter.venue == venue
    # adapter: a real-shaped frame of this venue (add one to FRAMES) routes and parses
    assert venue in FRAMES, f"add a real-shaped frame of {venue} to FRAMES"
    frame, symbol = FRAMES[venue]
    assert entry.adapter.route(Kind.WS, frame.encode()) == [symbol]
    updates = entry.adapter.parse(Kind.WS, frame.encode(), symbol)
    assert updates
    # rule: judges every update; an update never follows itself
    for upd in updates:
        assert isinstance(entry.rule.continuity(None, upd), Continuity)
        assert entry.rule.continuity(upd.seq, upd) is Continuity.DUPLICATE
    # session protocol: subscribes, unsubscribes and resyncs one instrument
    proto = entry.protocol(venue, entry.endpoint)
    wide = {s.id for s in proto.subs([symbol]) if not s.symbol}  # venue-wide channels (their own frames: dYdX)
    for frames in (proto.subscribe([symbol]), proto.unsubscribe([symbol])):
        assert frames
        assert all(symbol.lower() in orjson.dumps(orjson.loads(f.text)).decode().lower()
                   or (f.channels and set(f.channels) <= wide) for f in frames)
    assert proto.on_open([symbol])
    # endpoints: live and simulator
    assert entry.endpoint.ws_url.startswith("wss://")
    assert entry.endpoint.channel
    assert entry.sim_ws_path.startswith("/ws/")
    if entry.rule.snapshot_from_rest:
        # the REST snapshot: where to fetch it, how it parses, how it joins the buffered deltas
        assert entry.endpoint.rest_url.startswith("https://")
        assert entry.sim_rest_path.startswith("/rest/")
        assert proto.resubscribe(symbol) == []  # a resync is a fresh REST snapshot
        assert (proto.snapshot_url(symbol) or "").startswith(entry.endpoint.rest_url)
        (snap,) = entry.adapter.parse(Kind.REST, REST_BODY, symbol)
        assert snap.snapshot
        for upd in updates:
            for answer in (entry.rule.contained(snap.seq, upd), entry.rule.joins(snap.seq, upd),
                           entry.rule.snapshot_older(snap.seq, upd)):
                assert isinstance(answer, bool)
    else:
        assert proto.resubscribe(symbol)
        assert proto.snapshot_url(symbol) is None
    # checksum: where the venue sends one, the rule computes it
    if any(upd.checksum is not None for upd in updates):
        book = OrderBook()
        book.apply(updates[0].bids, updates[0].asks)
        assert isinstance(entry.rule.checksum(book), int)
    # market data: trades and tickers (a book frame is none of them), and the instrument registry
    assert entry.market is not None, f"{venue}: no market parser (trades, tickers)"
    assert entry.market.parse_market(Kind.WS, frame.encode(), symbol) == ([], [])
    assert entry.instrument_lists is not None, f"{venue}: no registry parser (REST instrument lists)"
    assert entry.endpoint.api_url.startswith("https://")
    urls = entry.instrument_lists.urls(entry.endpoint.api_url, [symbol])
    assert urls
    assert all(u.startswith(entry.endpoint.api_url) for u in urls)


def test_deribit_numbers_become_exact_strings_and_deletes_size_zero() -> None:
    (upd,) = adapter("deribit").parse(Kind.WS, FRAMES["deribit"][0].encode(), "BTC-PERPETUAL")
    assert (upd.seq, upd.prev) == (6, 5)
    assert upd.bids == [("100.5", "0")]
    assert upd.asks == [("101", "2.6")]


def test_binance_rest_snapshot_is_routed_by_its_url() -> None:
    ad = adapter("binance")
    assert ad.route(Kind.REST, REST_BODY, "https://api.binance.com/api/v3/depth?symbol=BNBBTC&limit=1000") == ["BNBBTC"]
    (snap,) = ad.parse(Kind.REST, REST_BODY, "BNBBTC")
    assert snap.snapshot
    assert snap.seq == 1027024


def test_a_frame_keyed_to_another_instrument_is_rejected() -> None:
    frame, _ = FRAMES["bybit-linear"]
    with pytest.raises(FrameError, match="wrong-instrument"):
        adapter("bybit-linear").parse(Kind.WS, frame.encode(), "ETHUSDT")


def test_okx_checksum_worked_example_from_the_venue_docs() -> None:
    book = OrderBook()
    book.apply([("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")])
    assert okx_checksum(*book.levels(25)) == 831078360
    assert rule("okx").checksum(book) == 831078360
    assert rule("deribit").checksum(book) is None  # a venue that sends no checksum


def test_coinbase_timestamps_keep_nanoseconds() -> None:
    assert rfc3339_ns("2023-02-09T20:32:50.714964855Z") == 1675974770714964855
    with pytest.raises(FrameError):
        rfc3339_ns("yesterday")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
#: Values that look almost right: numbers and keywords a shape check might let through.
TRICKY = st.sampled_from([
    "", "-", "--1", "1-", "²", "١٢", "1_0", " 1", "1e400", "-1e400", "NaN", "Infinity", "0x10", "9" * 4301,
    "snapshot", "update", "delta", "change", "bid", "offer", "books", "depthUpdate", "l2_data", "subscription",
    "2023-13-45T99:99:99.1Z", "0000-00-00T00:00:00Z", 0, -1, 2**63 - 1, 1e300, -0.0, True, [], {}, [[]], [["1"]],
])


def _slots(node: object, out: list[tuple[Any, Any]]) -> None:
    """Every (container, key or index) of a JSON tree, depth first."""
    if isinstance(node, dict):
        for key, child in node.items():
            out.append((node, key))
            _slots(child, out)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out.append((node, i))
            _slots(child, out)


def _mutate(frame: bytes, edits: list[tuple[int, int, object]]) -> bytes:
    """Change one to three nodes of a real frame, however deep: replace one by another value,
    retype it (string, list, object), garble it, or delete it."""
    tree = orjson.loads(frame)
    for pick, op, value in edits:
        slots: list[tuple[Any, Any]] = []
        _slots(tree, slots)
        if not slots:
            break
        parent, where = slots[pick % len(slots)]
        old = parent[where]
        if op == 7:
            del parent[where]
        else:
            parent[where] = [copy.deepcopy(value), str(old), [old], {"x": old}, f"--{old}", f"{old}²", None][op]
    return orjson.dumps(tree)


def _mutations_of(samples: list[bytes]) -> st.SearchStrategy[bytes]:
    truncated = st.sampled_from(samples).flatmap(lambda f: st.integers(0, len(f)).map(lambda n: f[:n]))
    edit = st.tuples(st.integers(0, 10_000), st.integers(0, 7), TRICKY | JSON_VALUES)
    mutated = st.tuples(st.sampled_from(samples), st.lists(edit, min_size=1, max_size=3)).map(lambda t: _mutate(*t))
    return truncated | mutated | mutated


def _mutations() -> st.SearchStrategy[bytes]:
    """Bad frames of any venue: random bytes, truncated or mutated real frames, random JSON."""
    samples = [f.encode() for f, _ in FRAMES.values()] + [REST_BODY]
    return st.binary(max_size=64) | _mutations_of(samples) | (TRICKY | JSON_VALUES).map(orjson.dumps)


def _cases(venue: str) -> st.SearchStrategy[tuple[bytes, str]]:
    """(frame, symbol): mostly the venue's own frame mutated, keyed to its own symbol (so the
    parser gets past its first checks to the deep ones); sometimes any bad frame."""
    frame, symbol = FRAMES[venue]
    own = st.tuples(_mutations_of([frame.encode(), REST_BODY]), st.just(symbol))
    anything = st.tuples(_mutations(), st.sampled_from([symbol, "BTCUSDT", ""]))
    return own | own | own | anything


@pytest.mark.fuzz
@pytest.mark.parametrize("venue", VENUES)
def test_adapters_themselves_raise_nothing_but_frame_error(venue: str) -> None:
    """The adapters, not the Guarded safety net: any bad shape is their own FrameError."""
    ad = VENUE_TABLE[venue].adapter

    @settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=_cases(venue), kind=st.sampled_from([Kind.WS, Kind.REST]))
    def fuzz(case: tuple[bytes, str], kind: Kind) -> None:
        frame, symbol = case
        for call in (lambda: ad.route(kind, frame, f"https://x/depth?symbol={symbol}"),
                     lambda: ad.parse(kind, frame, symbol), lambda: ad.conn_seq(frame)):
            with contextlib.suppress(FrameError):
                call()

    fuzz()


#: Real-shaped trade, ticker and instrument-list frames (venue, symbol, frame), fuzzed through the
#: market, venue-wide ticker and instrument-list parsers (sources: tests/unit/test_hyperliquid.py
#: and tests/unit/test_dydx.py).
MARKET_FRAMES = [
    ("hyperliquid", "BTC", '{"channel":"trades","data":[{"coin":"BTC","side":"B","px":"80639.0","sz":"0.1","hash":'
                           '"0x2f8b","time":1788490065008,"tid":118906512037719,"users":["0x31ca","0x0104"]}]}'),
    ("hyperliquid", "BTC", '{"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":{"funding":"0.0000052974",'
                           '"openInterest":"36295.80812","premium":"-0.0005540084","oraclePx":"80684.7","markPx":'
                           '"80640.0","midPx":"80639.5","impactPxs":["80637.2","80640.0"]}}}'),
    ("hyperliquid", "BTC", '{"channel":"bbo","data":{"coin":"BTC","time":1788490065008,"bbo":[{"px":"80639.0","sz":'
                           '"0.00186","n":2},null]}}'),
    ("hyperliquid", "", '{"universe":[{"szDecimals":5,"name":"BTC","maxLeverage":40},{"szDecimals":1,"name":"MATIC",'
                        '"maxLeverage":20,"isDelisted":true}]}'),
    ("dydx", "BTC-USD", '{"type":"channel_data","connection_id":"c","message_id":4,"id":"BTC-USD",'
                        '"channel":"v4_trades","contents":{"trades":[{"id":"8ee6d90d","size":"0.000100431","price":"27839","side":"BUY",'
                        '"type":"LIMIT","createdAt":"2023-04-04T00:29:19.353Z","createdAtHeight":"49592"}]}}'),
    ("dydx", "", '{"type":"channel_data","connection_id":"c","message_id":2,"channel":"v4_markets","contents":{'
                 '"trading":{"BTC-USD":{"nextFundingRate":"0.00006821875","openInterest":"1891.47"}},"oraclePrices":'
                 '{"BTC-USD":{"oraclePrice":"60001.75","effectiveAt":"2026-08-27T00:00:00.000Z","marketId":0}}}}'),
    ("dydx", "", '{"type":"subscribed","connection_id":"c","message_id":1,"channel":"v4_markets","contents":{"markets":'
                 '{"BTC-USD":{"ticker":"BTC-USD","status":"ACTIVE","tickSize":"1","stepSize":"0.000000001",'
                 '"atomicResolution":-10,"minOrderBaseQuantums":10,"initialMarginFraction":"0.05",'
                 '"maintenanceMarginFraction":"0.03"}}}}'),
]


@pytest.mark.fuzz
@pytest.mark.parametrize("venue", sorted({v for v, _, _ in MARKET_FRAMES}))
def test_market_and_registry_parsers_themselves_raise_nothing_but_frame_error(venue: str) -> None:
    """Trades, tickers (per instrument and venue-wide) and instrument lists: their own FrameError."""
    entry = VENUE_TABLE[venue]
    samples = [(f.encode(), symbol) for v, symbol, f in MARKET_FRAMES if v == venue]
    parse_ws = getattr(entry.instrument_lists, "parse_ws", None)  # optional: an instrument channel
    for frame, symbol in samples:  # the real-shaped ones parse to something
        got = [entry.market.parse_market(Kind.WS, frame, symbol) if entry.market else ([], []),
               entry.venue_market.parse_venue_market(Kind.WS, frame) if entry.venue_market else [],
               entry.instrument_lists.parse(frame) if entry.instrument_lists else None,
               parse_ws(frame) if parse_ws else None]
        assert got[0] != ([], []) or got[1] or got[2] or got[3], frame

    @settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frame=_mutations_of([f for f, _ in samples]), symbol=st.sampled_from(sorted({s for _, s in samples})))
    def fuzz(frame: bytes, symbol: str) -> None:
        calls = []
        if entry.market is not None:
            calls.append(lambda: entry.market.parse_market(Kind.WS, frame, symbol))  # type: ignore[union-attr]
        if entry.venue_market is not None:
            calls.append(lambda: entry.venue_market.parse_venue_market(Kind.WS, frame))  # type: ignore[union-attr]
        if entry.instrument_lists is not None:
            calls.append(lambda: entry.instrument_lists.parse(frame))  # type: ignore[union-attr]
        if parse_ws is not None:
            calls.append(lambda: parse_ws(frame))
        for call in calls:
            with contextlib.suppress(FrameError):
                call()

    fuzz()


class _BrokenAdapter:
    """An adapter with the kind of bug the guard is there for."""

    venue = "broken"

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        return [orjson.loads(frame)["symbol"]]  # TypeError on a JSON list

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        return [BookUpdate(snapshot=False, seq=int(orjson.loads(frame)["seq"]))]  # TypeError on null

    def conn_seq(self, frame: bytes) -> int | None:
        return len(orjson.loads(frame)) // 0  # ZeroDivisionError


def test_the_guard_turns_an_adapter_bug_into_a_frame_error() -> None:
    guarded = Guarded(_BrokenAdapter())
    with pytest.raises(FrameError, match="malformed: TypeError"):
        guarded.route(Kind.WS, b"[1]")
    with pytest.raises(FrameError, match="malformed: TypeError"):
        guarded.parse(Kind.WS, b'{"seq":null}', "X")
    with pytest.raises(FrameError, match="malformed: ZeroDivisionError"):
        guarded.conn_seq(b"{}")
    assert guarded.route(Kind.WS, b'{"symbol":"X"}') == ["X"]  # and passes good answers through


def test_a_refused_snapshot_of_a_waiting_book_asks_for_a_resync() -> None:
    """Deribit sends a book's snapshot once, with its subscription: a snapshot refused (a level
    priced 0) left the book waiting for good ("no snapshot yet") — the simulator's far options
    showed it. Now the book goes stale with the reason and a resync is requested; the next good
    snapshot syncs it."""
    from app.processor import Processor
    from app.sync import STALE, SYNCED
    from app.wire import RawFrame

    def snapshot(change_id: int, bid: str) -> bytes:
        return ('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.ETH-26MAR27-2050-P.100ms",'
                '"data":{"type":"snapshot","timestamp":1626993724318,"instrument_name":"ETH-26MAR27-2050-P",'
                f'"change_id":{change_id},"bids":[["new",{bid},5]],"asks":[["new",0.016,2]]}}}}}}').encode()

    proc, key = Processor(), "deribit:ETH-26MAR27-2050-P"
    out = proc.handle(RawFrame(key, 1, Kind.WS, "c1", snapshot(7, "0")))
    assert out.dead is not None
    assert out.dead[0] == "bad-price"
    assert proc.instruments[key].status == STALE
    assert out.fx.resync is not None
    assert "bad frame" in out.fx.resync
    out = proc.handle(RawFrame(key, 2, Kind.WS, "c1", snapshot(9, "0.0145")))
    assert out.dead is None
    assert proc.instruments[key].status == SYNCED


@pytest.mark.fuzz
@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(venue=st.sampled_from(sorted(FRAMES)), frame=_mutations())
def test_every_rejected_frame_becomes_a_dead_letter_with_a_reason(venue: str, frame: bytes) -> None:
    """Through the book processor (what the agent runs): a synced book, then a bad frame."""
    good, symbol = FRAMES[venue]
    key = f"{venue}:{symbol}"
    proc = Processor()
    try:
        adapter(venue).parse(Kind.WS, frame, symbol)
    except FrameError:
        rejected = True
    else:
        rejected = False
    out = proc.handle(RawFrame(key, 1, Kind.WS, "c", frame))
    if rejected:
        assert out.dead is not None, "a rejected frame must become a dead letter"
        assert out.dead[0], "a dead letter must carry a reason"
    # the processor is still usable afterwards: a good frame is handled without an exception
    proc.handle(RawFrame(key, 2, Kind.WS, "c", good.encode()))


def test_a_corrupt_frame_is_keyed_to_the_one_instrument_of_its_connection_it_names() -> None:
    from app.router import Router

    router = Router()
    frame = FRAMES["binance-usdm"][0].encode()
    other = frame.replace(b"btcusdt", b"ethusdt").replace(b"BTCUSDT", b"ETHUSDT")
    assert [r.key for r in router.route("binance-usdm", "c", Kind.WS, frame, 1)] == ["binance-usdm:BTCUSDT"]
    assert [r.key for r in router.route("binance-usdm", "c", Kind.WS, other, 2)] == ["binance-usdm:ETHUSDT"]
    cut = frame[:40]  # only the lower-case stream name survives
    assert [r.key for r in router.route("binance-usdm", "c", Kind.WS, cut, 3)] == ["binance-usdm:BTCUSDT"]
    assert [r.key for r in router.route("binance-usdm", "c", Kind.WS, b"{garbage", 4)] == ["binance-usdm:"]
    assert router.unparseable == 2
