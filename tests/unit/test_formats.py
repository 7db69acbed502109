"""Capture readers on small files written here (real captures are covered in test_captures)."""

from __future__ import annotations

import errno
import gzip
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.capture.formats import Record, read, write_native
from app.capture.recorder import Recorder
from app.errors import CaptureError, ConfigError
from app.venues.base import Kind
from tests.helpers import examples

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


#: A valid small file per format; fuzzing mutates these bytes.
SAMPLES: dict[str, tuple[str, bytes]] = {
    "native": ("c.jsonl", write_native(Record(ts=1, venue="okx", conn="okx#1", kind=Kind.WS, frame=b'{"a":1}',
                                              url="wss://x")) * 3),
    "cryptofeed": ("BINANCE_FUTURES.ws.1.0", b"wss://fstream.binance.com/stream?streams=btcusdt@depth <-> 1.0\n"
                   b"2.5: " + DEPTH + b"\n3.5: " + TICKER + b"\n"),
    "cryptofeed-v3": ("BYBIT.jsonl", b'{"t":"header","format":2,"exchange":"BYBIT"}\n'
                      b'{"t":"recv","conn":"BYBIT.ws.1","ts":1.5,"data":"{\\"topic\\":\\"x\\"}"}\n'),
    "hftbacktest": ("BTCUSD_PERP_20240808.gz", b"10 " + TICKER + b"\n11 " + SNAPSHOT + b"\n12 " + DEPTH + b"\n"),
}


@st.composite
def _mutated_file(draw: st.DrawFn) -> tuple[str, str, bytes]:
    kind = draw(st.sampled_from(sorted(SAMPLES)))
    name, data = SAMPLES[kind]
    how = draw(st.sampled_from(["truncate", "flip", "insert", "random"]))
    if how == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    elif how == "insert":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(max_size=40)) + data[i:]
    else:
        data = draw(st.binary(max_size=200))
    if name.endswith(".gz"):
        packed = gzip.compress(data)
        data = packed[:draw(st.integers(0, len(packed)))] if draw(st.booleans()) else packed
    return kind.split("-")[0], name, data


@pytest.mark.fuzz
@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.function_scoped_fixture])
@given(case=_mutated_file())
def test_importers_never_raise_anything_but_a_capture_error(tmp_path: Path, case: tuple[str, str, bytes]) -> None:
    fmt, name, data = case
    path = tmp_path / name
    path.write_bytes(data)
    error = None
    try:
        records = list(read([path], fmt))
    except (CaptureError, ConfigError) as exc:  # anything else fails the test
        error = str(exc)
    if error is None:
        assert all(isinstance(r.frame, bytes) for r in records)
        assert all(r.venue for r in records)
    else:
        assert error.strip()


class _FullDisk:
    """A capture file whose writes fail as on a full disk (the real limit, RLIMIT_FSIZE, is in
    tests/integration/test_data_dir.py)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])  # part of the line landed
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.fh.close()


def test_a_recorder_whose_write_failed_stays_failed_and_opens_no_file(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    frame = Record(1, "okx", "c1", Kind.WS, b'{"arg":{}}', symbol="BTC-USDT")
    rec.write(frame)
    rec._fh = _FullDisk(rec._fh)  # type: ignore[assignment]
    with pytest.raises(CaptureError, match=r"-0001\.jsonl: writing the capture failed \(No space left") as first:
        rec.write(frame)
    for again in (lambda: rec.write(frame), rec.flush):  # a frame or flush after the failure
        with pytest.raises(CaptureError) as later:
            again()
        assert str(later.value) == str(first.value)
    assert rec.files == sorted(tmp_path.glob("*.jsonl"))
    assert len(rec.files) == 1  # no second file
    assert [r.frame for r in read(rec.files, "native")] == [frame.frame]  # the partial line trimmed
