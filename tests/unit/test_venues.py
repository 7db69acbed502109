"""Venue adapters: real-shaped frames parse; anything else is a FrameError, never a crash."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.book import OrderBook
from app.errors import FrameError
from app.processor import Processor
from app.venues import ADAPTERS, adapter, rule
from app.venues.base import Kind
from app.venues.coinbase import rfc3339_ns
from app.venues.okx import okx_checksum
from tests.helpers import examples

FRAMES = {
    "deribit": ('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.BTC-PERPETUAL.100ms","data":'
                '{"type":"change","timestamp":1626993724318,"prev_change_id":5,"instrument_name":"BTC-PERPETUAL",'
                '"change_id":6,"bids":[["delete",100.5,0.0]],"asks":[["new",101,2.6]]}}}', "BTC-PERPETUAL"),
    "binance-usdm": ('{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1,"T":2,"s":"BTCUSDT","U":10,'
                     '"u":12,"pu":9,"b":[["100.10","0.5"]],"a":[["100.20","0.000"]]}}', "BTCUSDT"),
    "binance": ('{"e":"depthUpdate","E":1,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],"a":[]}', "BNBBTC"),
    "okx": ('{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":'
            '[["41006.8","0.6","0","1"]],"bids":[],"ts":"1629966436396","checksum":-1,"seqId":124,"prevSeqId":123}]}',
            "BTC-USDT"),
    "bybit-linear": ('{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":'
                     '[["30247.20","30.028"]],"a":[],"u":177400507,"seq":66544703342},"cts":1}', "BTCUSDT"),
    "coinbase": ('{"channel":"l2_data","timestamp":"2023-02-09T20:32:50.714964855Z","sequence_num":7,"events":[{"type":'
                 '"update","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2023-02-09T20:32:50.7Z",'
                 '"price_level":"21921.73","new_quantity":"0.06317902"}]}]}', "BTC-USD"),
}


@pytest.mark.parametrize("venue", sorted(FRAMES))
def test_real_shaped_frames_parse_and_route(venue: str) -> None:
    frame, symbol = FRAMES[venue]
    ad = adapter(venue)
    assert ad.route(Kind.WS, frame.encode()) == [symbol]
    (upd,) = ad.parse(Kind.WS, frame.encode(), symbol)
    assert upd.bids or upd.asks


def test_deribit_numbers_become_exact_strings_and_deletes_size_zero() -> None:
    (upd,) = adapter("deribit").parse(Kind.WS, FRAMES["deribit"][0].encode(), "BTC-PERPETUAL")
    assert (upd.seq, upd.prev) == (6, 5)
    assert upd.bids == [("100.5", "0")]
    assert upd.asks == [("101", "2.6")]


def test_binance_rest_snapshot_is_routed_by_its_url() -> None:
    body = b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}'
    ad = adapter("binance")
    assert ad.route(Kind.REST, body, "https://api.binance.com/api/v3/depth?symbol=BNBBTC&limit=1000") == ["BNBBTC"]
    (snap,) = ad.parse(Kind.REST, body, "BNBBTC")
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


def _mutations() -> st.SearchStrategy[bytes]:
    samples = [f.encode() for f, _ in FRAMES.values()]
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=12,
    )

    def replace_field(frame: bytes, path_value: object) -> bytes:
        obj = orjson.loads(frame)
        data = obj.get("data", obj.get("params", obj))
        if isinstance(data, list):
            data = data[0]
        if isinstance(data, dict) and data:
            key = sorted(data)[hash(str(path_value)) % len(data)]
            data[key] = path_value
        return orjson.dumps(obj)

    truncated = st.sampled_from(samples).flatmap(lambda f: st.integers(0, len(f)).map(lambda n: f[:n]))
    mutated = st.tuples(st.sampled_from(samples), json_values).map(lambda t: replace_field(*t))
    return st.binary(max_size=64) | truncated | mutated | json_values.map(orjson.dumps)


@pytest.mark.fuzz
@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(venue=st.sampled_from(sorted(ADAPTERS)), frame=_mutations(), kind=st.sampled_from([Kind.WS, Kind.REST]))
def test_parsers_never_raise_anything_but_frame_error(venue: str, frame: bytes, kind: Kind) -> None:
    ad = adapter(venue)
    for call in (lambda: ad.route(kind, frame, "https://x/depth?symbol=BTCUSDT"),
                 lambda: ad.parse(kind, frame, "BTCUSDT"), lambda: ad.conn_seq(frame)):
        with contextlib.suppress(FrameError):
            call()


@pytest.mark.fuzz
@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(venue=st.sampled_from(sorted(FRAMES)), frame=_mutations(), offset=st.integers(1, 5))
def test_every_rejected_frame_becomes_a_dead_letter_with_a_reason(venue: str, frame: bytes, offset: int) -> None:
    """Through the book processor (what the agent runs): a synced book, then a bad frame."""
    good, symbol = FRAMES[venue]
    key = f"{venue}:{symbol}"
    proc = Processor(lambda _k: None)
    try:
        adapter(venue).parse(Kind.WS, frame, symbol)
    except FrameError:
        rejected = True
    else:
        rejected = False
    out = proc.handle(key, frame, {"kind": b"ws", "ts": b"1", "conn": b"c"}, offset)
    if rejected:
        assert out.dead is not None, "a rejected frame must become a dead letter"
        assert out.dead[0], "a dead letter must carry a reason"
    # the processor is still usable afterwards: a good frame is handled without an exception
    proc.handle(key, good.encode(), {"kind": b"ws", "ts": b"2", "conn": b"c"}, offset + 1)


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
