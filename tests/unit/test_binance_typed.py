"""Binance's typed depth reader (app.venues.binance): a combined stream's depth event read straight
into its fields gives exactly what the general reading (dicts and lists) gives — the same updates,
or the same error — and it is the one that reads the venue's own frames."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app import book_core
from app.capture.formats import read
from app.errors import FrameError
from app.venues import ADAPTERS
from app.venues.base import Kind
from tests.helpers import examples
from tests.unit.test_book_core import book_of
from tests.unit.test_market import paths

ADAPTER_NAMES = ["binance", "binance-usdm", "binance-coinm"]


def _adapter(name: str) -> Any:
    return ADAPTERS[name]._inner  # the adapter itself, not its safety net


def _outcome(adapter: Any, frame: bytes, symbol: str, general: bool) -> Any:
    try:
        return "ok", (adapter.parse_general if general else adapter.parse)(Kind.WS, frame, symbol)
    except FrameError as exc:
        return "frame-error", exc.reason, exc.detail
    except Exception as exc:  # noqa: BLE001 - whatever the general reading raises, the same
        return type(exc).__name__, str(exc)


ints = st.one_of(st.integers(0, 2**63 - 1), st.integers(-5, 5), st.sampled_from([2**64, "17", "x", 1.0, True, None]))
level = st.one_of(st.tuples(st.sampled_from(["1.5", "0", "67123.40", "0.000"]), st.sampled_from(["2", "0", "0.001"])),
                  st.sampled_from([["1", "2", "3"], ["1"], [1, 2], ["1", 2], "x", None]))
levels = st.one_of(st.lists(level, max_size=4), st.sampled_from([None, "x", {}]))
fields: dict[str, Any] = {
    "e": st.sampled_from(["depthUpdate", "depthUpdate", "bookTicker", 1, None]),
    "E": ints, "T": ints, "U": ints, "u": ints, "pu": ints,
    "s": st.sampled_from(["BTCUSDT", "BTCUSDT", "ETHUSDT", 5]),
    "b": levels, "a": levels,
}
events = st.fixed_dictionaries({}, optional=fields)
frames = st.one_of(
    st.builds(lambda ev, stream: {"stream": stream, "data": ev}, events,
              st.sampled_from(["btcusdt@depth@0ms", "btcusdt@depth", None, 3])),
    st.builds(lambda ev: {"stream": "btcusdt@depth@0ms", "data": ev, "extra": [1, {"e": "x"}]}, events),
    st.builds(lambda ev: {"stream": "btcusdt@depth@0ms", "data": [ev]}, events),
)


@settings(max_examples=examples(3000), deadline=None)
@given(frame=frames, name=st.sampled_from(ADAPTER_NAMES), symbol=st.sampled_from(["BTCUSDT", "ETHUSDT"]))
def test_the_typed_reader_answers_as_the_general_reading(frame: dict[str, Any], name: str, symbol: str) -> None:
    raw = json.dumps(frame, separators=(",", ":")).encode()  # as Binance writes it: the stream name first
    adapter = _adapter(name)
    assert _outcome(adapter, raw, symbol, general=False) == _outcome(adapter, raw, symbol, general=True)


def test_the_venues_own_depth_frames_are_read_typed_and_alike(captures: Path) -> None:
    adapter = _adapter("binance-usdm")
    depth = [rec for rec in read(paths(captures, "usdm"), "hftbacktest")
             if rec.kind is Kind.WS and b'"depthUpdate"' in rec.frame][:3000]
    assert len(depth) == 3000
    typed = 0
    for rec in depth:
        symbol = orjson.loads(rec.frame)["data"]["s"]
        fast = adapter._typed_depth(rec.frame, symbol)
        typed += fast is not None
        assert adapter.parse(Kind.WS, rec.frame, symbol) == adapter.parse_general(Kind.WS, rec.frame, symbol)
    assert typed == len(depth)  # every one of them read typed, none the general way


# Levels as text, the way a venue (or a broken one) might write them: spaces and line breaks
# between tokens, escapes, exponents, signs, zero and empty prices, too many digits, a third field.
texts = st.one_of(st.from_regex(r"\A\d{1,6}(\.\d{0,8})?\Z"),
                  st.sampled_from(["0", "0.000", "00.10", "1e5", "-1", "+2", "\\u0031", "1.2.3", "", ".", "5.",
                                   "9007199254740993", "0.00000000000000000000001", "1." + "0" * 22, "1_0", " 1"]))
spaces = st.sampled_from(["", "", " ", "\n\t", "\r "])
level_text = st.builds(lambda w1, p, w2, w3, s, w4, extra: f'[{w1}"{p}"{w2},{w3}"{s}"{w4}{extra}]',
                       spaces, texts, spaces, spaces, texts, spaces, st.sampled_from(["", "", ',"x"', ",1"]))
levels_text = st.one_of(
    st.builds(lambda items, w: "[" + w + ("," + w).join(items) + w + "]", st.lists(level_text, max_size=5), spaces),
    st.sampled_from(["null", "[1]", "[[]]", '[["1","2"],]', "{}", '[["1","2"]', '[[1.5,"2"]]']))
DEPTH = ('{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1,"T":2,"s":"BTCUSDT","U":5,"u":7,'
         '"pu":4,"b":%s,"a":%s}}')


def _applied(updates: Any) -> Any:
    """A book made by applying ``updates`` (both cores): its levels, or the error it refused with."""
    out = []
    for core in (importlib.import_module("app.book_core_c"), book_core):
        ob = book_of(core)
        try:
            for upd in updates:
                ob.apply(upd.bids, upd.asks, False)
            out.append((ob.bids.items(), ob.asks.items()))
        except FrameError as exc:
            out.append(("frame-error", exc.reason, exc.detail))
    assert out[0] == out[1]
    return out[0]


@settings(max_examples=examples(3000), deadline=None)
@given(bids=levels_text, asks=levels_text, name=st.sampled_from(ADAPTER_NAMES))
def test_levels_read_in_place_are_read_as_the_general_reading_reads_them(bids: str, asks: str, name: str) -> None:
    """The typed reader leaves a depth event's levels to the book core, which reads them in place
    only when they are plain ``["price","size"]`` pairs: whatever the text, the same updates or
    the same error as the general reading, and the same book (or the same refusal) from each."""
    raw = (DEPTH % (bids, asks)).encode()
    adapter = _adapter(name)
    typed, general = _outcome(adapter, raw, "BTCUSDT", general=False), _outcome(adapter, raw, "BTCUSDT", general=True)
    assert typed == general
    if typed[0] == "ok":
        assert _applied(typed[1]) == _applied(general[1])


def test_the_venues_own_levels_are_read_in_place_by_the_compiled_core(captures: Path) -> None:
    """On the capture's depth events the compiled core reads every side in place (no text made
    for a level until the book keeps it), and its books are the reference's."""
    from app import book

    adapter = _adapter("binance-usdm")
    depth = [rec for rec in read(paths(captures, "usdm"), "hftbacktest")
             if rec.kind is Kind.WS and b'"depthUpdate"' in rec.frame][:500]
    previous = book.core.NAME
    try:
        book.use_core("compiled")
        updates = [u for rec in depth for u in adapter.parse(Kind.WS, rec.frame, orjson.loads(rec.frame)["data"]["s"])]
    finally:
        book.use_core(previous)
    assert {type(u.bids).__name__ for u in updates} == {type(u.asks).__name__ for u in updates} == {"RawLevels"}
    assert sum(len(u.bids) + len(u.asks) for u in updates) > 10_000
    _applied(updates)  # both cores, the same book
