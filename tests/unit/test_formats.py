"""Capture readers on small files written here (real captures are covered in test_captures)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from app.capture.formats import Record, read, write_native
from app.errors import CaptureError, ConfigError
from app.venues.base import Kind

DEPTH = (b'{"stream":"btcusd_perp@depth@100ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSD_PERP",'
         b'"U":5,"u":6,"pu":4,"b":[],"a":[]}}')
TICKER = (b'{"stream":"btcusd_perp@bookTicker","data":{"e":"bookTicker","u":7,"s":"BTCUSD_PERP",'
          b'"b":"1","B":"1","a":"2","A":"1"}}')
SNAPSHOT = b'{"lastUpdateId":3,"bids":[],"asks":[]}'


def test_hftbacktest_infers_market_and_symbol_and_keeps_early_frames(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSD_PERP_20240808.gz"
    path.write_bytes(gzip.compress(b"10 " + TICKER + b"\n11 " + SNAPSHOT + b"\n12 " + DEPTH + b"\n"))
    recs = list(read([path], "hftbacktest"))
    assert [(r.venue, r.kind, r.ts) for r in recs] == [
        ("binance-coinm", Kind.WS, 10), ("binance-coinm", Kind.REST, 11), ("binance-coinm", Kind.WS, 12)]
    assert recs[1].symbol == "BTCUSD_PERP"


def test_day_files_are_one_capture_in_time_order(tmp_path: Path) -> None:
    (tmp_path / "usdm").mkdir()
    a, b = tmp_path / "usdm" / "x_20240808.gz", tmp_path / "usdm" / "x_20240809.gz"
    a.write_bytes(gzip.compress(b"1 {}\n3 {}\n"))
    b.write_bytes(gzip.compress(b"5 {}\n7 {}\n"))
    assert [r.ts for r in read([b, a], "hftbacktest")] == [1, 3, 5, 7]


def test_native_round_trip(tmp_path: Path) -> None:
    rec = Record(ts=123, venue="okx", conn="okx#1", kind=Kind.WS, frame='{"a":"é"}'.encode(), url="wss://x")
    path = tmp_path / "c.jsonl"
    path.write_bytes(write_native(rec) * 2)
    assert list(read([path], "native")) == [rec, rec]


def test_cryptofeed_v1_pairs_ws_with_its_http_file_by_time(tmp_path: Path) -> None:
    (tmp_path / "BINANCE_FUTURES.ws.1.0").write_text(
        "wss://fstream.binance.com/stream?streams=btcusdt@depth <-> 1.0\n"
        '2.5: {"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":2,"pu":0,"b":[],"a":[]}}\n')
    (tmp_path / "BINANCE_FUTURES.http.0.0").write_text(
        'https://fapi.binance.com/fapi/v1/exchangeInfo -> 1.5: {"symbols":[]}\n'
        'https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=1000 -> 2.0: '
        '{"lastUpdateId":1,"bids":[],"asks":[]}\n')
    recs = list(read([tmp_path / "BINANCE_FUTURES.ws.1.0"], "cryptofeed"))
    assert [(r.venue, r.kind) for r in recs] == [("binance-usdm", Kind.REST), ("binance-usdm", Kind.WS)]
    assert recs[1].ts == 2_500_000_000


@pytest.mark.parametrize(("content", "fmt", "venue", "message"), [
    (b"not json\n", "native", None, "x.jsonl:1: not a native capture record"),
    (b'{"t":"recv","conn":"X.ws.1","ts":1,"data":"{}"}\n', "cryptofeed", None, "cannot tell the venue"),
    (b'{"t":"recv","conn":"X.ws.1","ts":1,"data":"{}"', "cryptofeed", "okx", r"x.jsonl:1: .*\(truncated file\?\)"),
    (b"123 {}\n456", "hftbacktest", "binance", "x_20240101.gz:2: not an hftbacktest line"),
    (b"123 {}\n", "hftbacktest", None, "cannot tell the venue; pass --venue"),
])
def test_bad_files_are_capture_errors_naming_the_line(tmp_path: Path, content: bytes, fmt: str, venue: str | None,
                                                      message: str) -> None:
    path = tmp_path / ("x.jsonl" if fmt != "hftbacktest" else "x_20240101.gz")
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=message):
        list(read([path], fmt, venue=venue))


def test_truncated_gzip_is_a_capture_error(tmp_path: Path) -> None:
    path = tmp_path / "btcusdt_20240808.gz"
    path.write_bytes(gzip.compress(b"1 {}\n" * 5000)[:-30])
    with pytest.raises(CaptureError, match="truncated"):
        list(read([path], "hftbacktest", venue="binance"))


def test_unknown_format_and_venue(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    with pytest.raises(ConfigError, match="unknown capture format"):
        list(read([tmp_path / "a"], "pcap"))
    with pytest.raises(ConfigError, match="unknown venue"):
        list(read([tmp_path / "a"], "hftbacktest", venue="kraken"))
