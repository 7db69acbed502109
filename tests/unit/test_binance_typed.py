"""Binance's typed depth reader (app.venues.binance): a combined stream's depth event read straight
into its fields gives exactly what the general reading (dicts and lists) gives — the same updates,
or the same error — and it is the one that reads the venue's own frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.capture.formats import read
from app.errors import FrameError
from app.venues import ADAPTERS
from app.venues.base import Kind
from tests.helpers import examples
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
