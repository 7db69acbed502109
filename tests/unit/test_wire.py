"""Raw record format (README "Raw record format") and the downstream builders."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.records import BookTop, DeadLetter, encode
from app.venues.base import Kind
from app.wire import (
    BadFrame,
    RawFrame,
    decode_record,
    encode_frame,
    encode_record,
    partition_for,
    record_key,
    v1_headers,
)
from tests.helpers import examples

frames = st.builds(RawFrame, key=st.sampled_from(["okx:BTC-USDT", "okx:ETH-USDT", "okx:"]),
                   ts=st.integers(0, 2**63 - 1), kind=st.sampled_from(list(Kind)), conn=st.text(max_size=12),
                   data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))


@settings(max_examples=examples(300))
@given(batch=st.lists(frames, min_size=1, max_size=20))
def test_a_v2_record_gives_back_every_frame_verbatim_in_order(batch: list[RawFrame]) -> None:
    value = encode_record([encode_frame(f) for f in batch])
    assert decode_record(record_key(f.key for f in batch), value, [("v", b"2")]) == batch


def test_a_v2_record_is_json_lines_readable_with_one_line_of_python() -> None:
    batch = [RawFrame("okx:BTC-USDT", 1, Kind.WS, "okx#1", b'{"arg":{}}'),
             RawFrame("okx:ETH-USDT", 2, Kind.CONN, "okx#1", b'{"event":"gap"}'),
             RawFrame("okx:BTC-USDT", 3, Kind.WS, "okx#1", b"\xff\xfe not text")]
    value = encode_record([encode_frame(f) for f in batch])
    lines = [json.loads(line) for line in value.splitlines()]
    assert lines[0] == {"key": "okx:BTC-USDT", "ts": 1, "kind": "ws", "conn": "okx#1", "frame": '{"arg":{}}'}
    assert lines[1]["kind"] == "conn"
    assert "frame_b64" in lines[2]  # not UTF-8: carried in base64, still verbatim
    assert record_key(f.key for f in batch) == b"okx:*"
    assert record_key(["okx:BTC-USDT", "okx:BTC-USDT"]) == b"okx:BTC-USDT"


def test_a_v1_record_is_still_read() -> None:
    (frame,) = decode_record(b"okx:BTC-USDT", b'{"x":1}', v1_headers(5, Kind.REST, "c"))
    assert frame == RawFrame("okx:BTC-USDT", 5, Kind.REST, "c", b'{"x":1}')
    (bad,) = decode_record(b"okx:BTC-USDT", b"{}", [("ts", b"soon")])
    assert isinstance(bad, BadFrame)
    assert bad.reason == "bad-headers"


def test_a_line_of_whitespace_is_no_frame_and_no_bad_frame() -> None:
    """Blank lines, and lines of spaces, tabs or a carriage return (a CRLF writer's blank line),
    are skipped whether the record is read whole or line by line; a bad line after them keeps
    its line index."""
    good = encode_frame(RawFrame("okx:BTC-USDT", 1, Kind.WS, "c", b"{}"))
    for gap in (b"", b" ", b"\r", b" \t\r", b"\x0c"):
        out = decode_record(b"okx:BTC-USDT", b"\n".join([good, gap, good]) + b"\r\n", [("v", b"2")])
        assert [type(x).__name__ for x in out] == ["RawFrame", "RawFrame"], gap
    out = decode_record(b"okx:BTC-USDT", b"\n".join([good, b" \r", b"[1]"]), [("v", b"2")])
    assert isinstance(out[1], BadFrame)
    assert out[1].frame_index == 2


def test_a_bad_line_is_a_bad_frame_at_its_index_and_the_others_still_decode() -> None:
    good = encode_frame(RawFrame("okx:BTC-USDT", 1, Kind.WS, "c", b"{}"))
    value = b"\n".join([good, b'{"key": "okx:BTC-USDT", "ts": "late"', good, b'{"key": 1, "ts": 1, "kind": "ws", '
                        b'"conn": "c", "frame": ""}'])
    out = decode_record(b"okx:BTC-USDT", value, [("v", b"2")])
    assert [type(x).__name__ for x in out] == ["RawFrame", "BadFrame", "RawFrame", "BadFrame"]
    assert [x.frame_index for x in out if isinstance(x, BadFrame)] == [1, 3]
    (unknown,) = decode_record(b"k", b"x", [("v", b"3")])
    assert isinstance(unknown, BadFrame)
    assert unknown.reason == "bad-record-version"


lines = st.one_of(
    frames.map(encode_frame),  # good lines (base64 ones included)
    st.sampled_from([b"", b"  ", b"\r", b" \t\r", b"\x0c", b"\x0b ", b"{}", b'{"key":"okx:BTC-USDT","ts":"late"',
                     b"[1]", b"null",
                     b'{"key":"okx:BTC-USDT","ts":1,"kind":"ws","conn":"c"}',  # neither frame nor frame_b64
                     b'{"key":"okx:BTC-USDT","ts":1,"kind":"ws","conn":"c","frame":"x","frame_b64":"eA=="}',
                     b'{"key":"okx:BTC-USDT","ts":-1,"kind":"ws","conn":"c","frame":"x"}',
                     b'{"key":"okx:BTC-USDT","ts":1,"kind":"wss","conn":"c","frame":"x"}',
                     b'{"key":"okx:BTC-USDT","ts":1,"kind":"ws","conn":"c","frame":"x"}\r',
                     b' {"key":"okx:BTC-USDT","ts":1,"kind":"ws","conn":"c","frame":"\\u00e9"} ']))


@settings(max_examples=examples(1000))
@given(record=st.lists(lines, max_size=8), trailing=st.sampled_from([b"", b"\n", b"\n\n"]))
def test_a_v2_record_read_whole_is_read_as_line_by_line(record: list[bytes], trailing: bytes) -> None:
    """The frames of a record are read in one call when every line is a good frame with its text;
    any other record line by line: the same frames and bad frames (at the same indexes, for the
    same reasons) either way, and a line of nothing but whitespace skipped either way."""
    from app.wire import _decode_each

    value = b"\n".join(record) + trailing
    assert decode_record(b"okx:*", value, [("v", b"2")]) == _decode_each(value, "okx:*")


def test_partition_for_is_kafkas_default_partitioner_of_the_partition_key() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    def kafka(key: str) -> int:
        return DefaultPartitioner()(key.encode(), list(range(4)), list(range(4)))

    for key in ("okx:BTC-USDT", "binance-usdm:BTCUSDT", "deribit:BTC-27MAR26", "coinbase:"):
        assert partition_for(key, 4) == kafka(key)
    # an option goes with its expiry's chain and future
    for option, chain in (("deribit:BTC-27MAR26-60000-C", "deribit:BTC-27MAR26"),
                          ("okx:BTC-USD-260327-50000-P", "okx:BTC-USD-260327")):
        assert partition_for(option, 4) == kafka(chain)
        assert partition_for(option.encode(), 4) == kafka(chain)


def test_downstream_records_keep_their_public_field_names() -> None:
    top = orjson.loads(encode(BookTop(venue="okx", instrument="BTC-USDT", bid_px="1", bid_sz="2", ask_px="3",
                                      ask_sz="4", seq=9, epoch=1, ts_exchange=10, ts_recv=11, ts_published=12)))
    assert list(top) == ["venue", "instrument", "bid_px", "bid_sz", "ask_px", "ask_sz", "seq", "epoch",
                         "ts_exchange", "ts_recv", "ts_published"]
    dead = orjson.loads(encode(DeadLetter(venue="okx", instrument="BTC-USDT", reason="bad-json", detail="x",
                                          topic="raw.okx", partition=1, offset=2, index=3, headers={}, frame="{")))
    assert (dead["index"], dead["offset"], dead["frame"]) == (3, 2, "{")
