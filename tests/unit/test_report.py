"""The daily report's tables (app.report): each figure follows from the records of the day."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from app.errors import BookstreamError
from app.report import DayBuilder, day_bounds, render, write
from app.venues.base import Kind
from app.wire import V2_HEADERS, RawFrame, encode_frame

S = 10**9


def test_a_day_folds_into_its_tables_and_nothing_outside_it_counts(tmp_path: Path) -> None:
    day, start, end = day_bounds("2026-12-01")
    assert end - start == 86_400 * S
    b = DayBuilder(start, end)
    frames = [RawFrame("okx:BTC-USDT", start + i * S, Kind.WS, "c", b"{}") for i in range(5)]
    frames.append(RawFrame("okx:BTC-USDT", start - S, Kind.WS, "c", b"{}"))  # the day before
    b.raw(b"okx:BTC-USDT", b"\n".join(encode_frame(f) for f in frames), V2_HEADERS)
    status = [("synced", 10), ("stale", 100), ("resync-requested", 101), ("synced", 130), ("stale", 86_390)]
    for state, at in status:
        b.record("book.status", {"venue": "okx", "instrument": "BTC-USDT", "state": state, "ts_recv": start + at * S,
                                 "ts": 0}, 0)
    b.record("raw.deadletter", {"venue": "okx", "instrument": "BTC-USDT", "reason": "bad-json",
                                "headers": {"ts": str(start + 5 * S)}}, 0)
    for i in range(3):
        b.record("trades", {"key": "okx:BTC-USDT", "ts_recv": start + i * 61 * S}, 0)
        b.record("ticker", {"key": "okx:BTC-USDT", "ts_recv": start + i * 61 * S}, 0)
    b.record("ticker", {"key": "okx:BTC-USDT", "ts_recv": start + 5 * S}, 0)  # the same minute as the first
    b.record("feed.status", {"key": "okx:BTC-USDT", "feed": "trades", "event": "gap", "missing": 4,
                             "ts_recv": start + S}, 0)
    b.record("positions", {"portfolio": "desk", "instrument": "deribit:BTC-PERPETUAL", "quantity": "-1000",
                           "avg_price": "65000", "ts": start + S}, 0)
    b.record("positions", {"portfolio": "desk", "instrument": "deribit:BTC-PERPETUAL", "quantity": "-2000",
                           "avg_price": "65000", "ts": end + S}, 0)  # tomorrow's change: not the day's end
    for t, delta in ((10, 1.0), (20, 2.0)):
        b.record("risk.exposure", {"portfolio": "desk", "underlying": "BTC", "delta": delta, "ts": start + t * S}, 0)
    b.record("risk.scenarios", {"portfolio": "desk", "underlying": "BTC", "worst_usd": -1234.5, "ts": start + S}, 0)
    b.record("risk.hedge", {"type": "signal", "id": "r:1", "rule": "r", "ts": start + S, "inputs": [{"topic": "x"}]},
             0)
    b.record("risk.hedge", {"type": "blocked", "id": "r:2", "rule": "r", "ts": end + S}, 0)  # tomorrow
    b.record("alerts", {"kind": "stale", "key": "okx:BTC-USDT", "state": "raised", "ts": start + 100 * S}, 0)
    b.record("alerts", {"kind": "stale", "key": "okx:BTC-USDT", "state": "cleared", "ts": start + 130 * S}, 0)
    b.finish()
    tables = b.tables()
    (inst,) = tables["instruments"]
    assert (inst["frames"], inst["gaps"], inst["resyncs"]) == (5, 2, 1)
    assert inst["stale_s"] == 30 + 10  # 100 → 130, then 86,390 → the day's end
    assert (inst["dead_letters"], inst["dead_letters_by_reason"]) == (1, '{"bad-json":1}')
    assert (inst["trades"], inst["trade_gaps"], inst["trades_missing"]) == (3, 1, 4)
    assert (inst["tickers"], inst["ticker_minutes"]) == (4, 3)
    assert [p["quantity"] for p in tables["positions"]] == ["-1000"]
    assert tables["risk"] == [{"portfolio": "desk", "underlying": "BTC", "delta": 2.0, "delta_usd": None,
                               "gamma": None, "vega": None, "notional_usd": None, "exposure_ts": start + 20 * S,
                               "worst_case_usd": -1234.5, "scenarios_ts": start + S}]
    assert [h["id"] for h in tables["hedges"]] == ["r:1"]
    assert tables["hedges"][0]["inputs"] == '[{"topic":"x"}]'
    assert [a["state"] for a in tables["alerts"]] == ["raised", "cleared"]

    folder = write(tmp_path, day, b)
    assert pq.read_table(folder / "instruments.parquet").num_rows == 1
    assert pq.read_table(folder / "alerts.parquet").num_rows == 2
    page = (folder / "report.html").read_text()
    assert "Daily report 2026-12-01" in page
    assert 'id="hedges-table"' in page
    assert not list(folder.glob(".*"))


def test_the_page_escapes_what_the_topics_hold() -> None:
    day, _, _ = day_bounds("2026-12-01")
    page = render(day, {"instruments": [], "positions": [], "risk": [], "hedges": [],
                        "alerts": [{"kind": "<script>alert(1)</script>"}], "chains": []},
                  {"records_read": {}, "generated_at": 0})
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


def test_a_bad_date_is_one_clear_error() -> None:
    with pytest.raises(BookstreamError, match="expected YYYY-MM-DD"):
        day_bounds("yesterday")
