"""Importing Hyperliquid and dYdX captures: through the replay path (reader → router → processor).

Two formats, each written here from the venues' documented frame shapes (see the docstrings of
tests/unit/test_hyperliquid.py and test_dydx.py for where each shape comes from):

* the hftbacktest collector's Hyperliquid files (``collector/src/hyperliquid``, nkaz001/hftbacktest):
  ``<symbol>_<YYYYMMDD>.gz``, the symbol lower-cased, gzip lines ``<recv_ns> <frame>``, the frames
  verbatim but for ``subscriptionResponse`` and ``pong`` (which it drops); channels ``trades``,
  ``l2Book`` and ``bbo`` of each coin;
* the dYdX raw dump: cryptofeed's v3 JSON Lines envelope (``{"t":"header"|"connect"|"send"|"recv",
  "conn","ts":<epoch s>,"data":"<frame>"}``) holding the v4 indexer's frames.

``tests.helpers.reference`` is the replay path without Kafka: the capture reader, the same
``Router`` replay uses, and the worker's ``Processor`` — books, trades and tickers as a worker
would publish them from what replay produces.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.capture.formats import read
from app.errors import CaptureError
from app.sync import SYNCED
from tests.helpers import book_levels, reference

T0 = 1_788_490_065_000_000_000  # 2026-09-04T…Z, receive time of the first frame (ns)
MS0 = T0 // 1_000_000


# -- Hyperliquid, the hftbacktest collector -------------------------------------------------------
def l2book(time_ms: int, bids: list[tuple[str, str]], asks: list[tuple[str, str]], coin: str = "BTC") -> bytes:
    def side(levels: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return [{"px": p, "sz": s, "n": 1 + i} for i, (p, s) in enumerate(levels)]

    return orjson.dumps({"channel": "l2Book", "data": {"coin": coin, "time": time_ms,
                                                       "levels": [side(bids), side(asks)]}})


def hl_trades(*trades: tuple[int, int, str, str, str], coin: str = "BTC") -> bytes:
    """(time ms, tid, side, px, sz) → a ``trades`` frame."""
    return orjson.dumps({"channel": "trades", "data": [
        {"coin": coin, "side": side, "px": px, "sz": sz, "time": t, "tid": tid,
         "hash": "0x2f8b1f3c0ae5d4a6f9e0c1b2a3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6",
         "users": ["0x31ca8395cf837de08b24da3f660e77761dfb974b", "0x010461c14e146ac35fe42271bdc1134ee31c703a"]}
        for t, tid, side, px, sz in trades]})


def bbo(time_ms: int, bid: tuple[str, str] | None, ask: tuple[str, str] | None, coin: str = "BTC") -> bytes:
    def level(x: tuple[str, str] | None) -> dict[str, Any] | None:
        return None if x is None else {"px": x[0], "sz": x[1], "n": 3}

    return orjson.dumps({"channel": "bbo", "data": {"coin": coin, "time": time_ms, "bbo": [level(bid), level(ask)]}})


def hft_file(path: Path, lines: list[tuple[int, bytes]]) -> Path:
    with gzip.open(path, "wb") as fh:
        for ts, frame in lines:
            fh.write(b"%d %s\n" % (ts, frame))
    return path


def test_hyperliquid_hftbacktest_day_files_replay_into_the_venues_book_trades_and_bbo(tmp_path: Path) -> None:
    day1 = hft_file(tmp_path / "btc_20260903.gz", [
        (T0, hl_trades((MS0 - 900, 101, "B", "80640", "0.01"), (MS0 - 800, 102, "A", "80639", "0.2"))),
        (T0 + 1, l2book(MS0 - 50, [("80639", "1.5"), ("80638", "2")], [("80640", "0.7"), ("80641", "3")])),
        (T0 + 2, bbo(MS0 - 50, ("80639", "1.5"), ("80640", "0.7"))),
        (T0 + 300_000_000, l2book(MS0 + 250, [("80640", "0.4"), ("80639", "1.5")], [("80641", "3")])),
        # an API server a block behind: its older snapshot is no news
        (T0 + 310_000_000, l2book(MS0 - 50, [("80639", "1.5"), ("80638", "2")], [("80640", "0.7")])),
    ])
    day2 = hft_file(tmp_path / "btc_20260904.gz", [
        # the collector reconnected: the first trades frame repeats trades already seen
        (T0 + 900_000_000, hl_trades((MS0 - 800, 102, "A", "80639", "0.2"), (MS0 + 700, 103, "B", "80641", "1"))),
        (T0 + 901_000_000, bbo(MS0 + 700, ("80640", "0.4"), None)),
        (T0 + 902_000_000, l2book(MS0 + 700, [("80640", "0.4"), ("80639", "1.1")], [("80642", "5")])),
    ])
    records = list(read([day2, day1], "hftbacktest"))  # given in any order: merged by receive time
    assert {r.venue for r in records} == {"hyperliquid"}
    assert [r.ts for r in records] == sorted(r.ts for r in records)
    assert {r.conn for r in records} == {"hftbacktest:BTC"}  # one capture across the day files

    trades: list[tuple[str, str, str, str]] = []
    tickers: list[dict[str, Any]] = []

    def on(raw: Any, out: Any) -> None:
        assert raw.key == "hyperliquid:BTC"
        assert out.dead is None
        trades.extend((t.trade_id, t.side, t.price, t.size) for t in out.trades)
        tickers.extend(t.fields for t in out.tickers)

    proc = reference([day1, day2], "hftbacktest", on_outcome=on)
    inst = proc.instruments["hyperliquid:BTC"]
    assert inst.status == SYNCED, inst.reason
    assert book_levels(proc, "hyperliquid:BTC") == ([["80640", "0.4"], ["80639", "1.1"]], [["80642", "5"]])
    assert inst.seq == MS0 + 700  # the block time, ms
    assert inst.counters["duplicates"] == 1  # the older snapshot
    assert trades == [("101", "buy", "80640", "0.01"), ("102", "sell", "80639", "0.2"), ("103", "buy", "80641", "1")]
    assert tickers == [{"bid": "80639", "bid_size": "1.5", "ask": "80640", "ask_size": "0.7"},
                       {"bid": "80640", "bid_size": "0.4", "ask": None, "ask_size": None}]


def test_a_hyperliquid_file_is_told_by_its_frames_or_its_folder_and_any_coin_name_is_kept(tmp_path: Path) -> None:
    trades_only = hft_file(tmp_path / "eth_20260903.gz", [(T0, hl_trades((MS0, 7, "B", "3000", "1"), coin="ETH"))])
    (rec,) = read([trades_only], "hftbacktest")
    assert (rec.venue, rec.conn) == ("hyperliquid", "hftbacktest:ETH")
    (tmp_path / "hyperliquid").mkdir()
    deployed = hft_file(tmp_path / "hyperliquid" / "xyz:aapl_20260903.gz",
                        [(T0, l2book(MS0, [("230.1", "4")], [("230.2", "1")], coin="xyz:AAPL"))])
    proc = reference([deployed], "hftbacktest")
    assert book_levels(proc, "hyperliquid:xyz:AAPL") == ([["230.1", "4"]], [["230.2", "1"]])


# -- dYdX, the raw dump (cryptofeed's v3 envelope) --------------------------------------------------
CONN_ID = "ee5a4696-dce8-44ef-8d68-f0e0d0b06160"


def dydx(type_: str, message_id: int, channel: str, contents: Any, market: str | None = "BTC-USD",
         conn_id: str = CONN_ID) -> str:
    msg: dict[str, Any] = {"type": type_, "connection_id": conn_id, "message_id": message_id, "channel": channel}
    if market is not None:
        msg["id"] = market
    if type_ == "channel_data":
        msg["version"] = "1.0.0"
    msg["contents"] = contents
    return orjson.dumps(msg).decode()


def envelope(t: str, ts: float, conn: str = "DYDX.ws.1", **more: Any) -> bytes:
    return orjson.dumps({"t": t, "conn": conn, "ts": ts, **more})


MARKETS = {"markets": {"BTC-USD": {
    "clobPairId": "0", "ticker": "BTC-USD", "status": "ACTIVE", "oraclePrice": "60010.5", "nextFundingRate": "0",
    "initialMarginFraction": "0.05", "maintenanceMarginFraction": "0.03", "openInterest": "1891.473716288",
    "atomicResolution": -10, "quantumConversionExponent": -9, "tickSize": "1", "stepSize": "0.0001",
    "stepBaseQuantums": 1000000, "subticksPerTick": 100000, "marketType": "CROSS"}}}


def dydx_dump(path: Path, reconnect: bool = True) -> Path:
    s = T0 / 1e9
    lines = [
        orjson.dumps({"t": "header", "format": 2, "exchange": "DYDX",
                      "config": {"l2_book": ["BTC-USD-PERP"], "trades": ["BTC-USD-PERP"]}, "recorded": s}),
        envelope("connect", s, addr="wss://indexer.dydx.trade/v4/ws"),
        envelope("recv", s + 0.01, data=orjson.dumps({"type": "connected", "connection_id": CONN_ID,
                                                       "message_id": 0}).decode()),
        envelope("send", s + 0.02, data='{"type":"subscribe","channel":"v4_orderbook","id":"BTC-USD","batched":false}'),
        envelope("recv", s + 0.05, data=dydx("subscribed", 1, "v4_markets", MARKETS, market=None)),
        envelope("recv", s + 0.10, data=dydx("subscribed", 2, "v4_orderbook", {
            "bids": [{"price": "60000", "size": "1.5"}, {"price": "59999", "size": "2"}],
            "asks": [{"price": "60001", "size": "0.8"}, {"price": "60002", "size": "4"}]})),
        envelope("recv", s + 0.11, data=dydx("subscribed", 3, "v4_trades", {"trades": [
            {"id": "8ee6d90d-272d-5edd-bf0f-2e4d6ae3d3b7", "side": "BUY", "size": "0.01", "price": "60001",
             "type": "LIMIT", "createdAt": "2026-09-04T00:07:44.900Z", "createdAtHeight": "53123001"}]})),
        envelope("recv", s + 0.20, data=dydx("channel_data", 5, "v4_orderbook",
                                             {"bids": [["60000", "0"], ["60000.5", "0.3"]]})),
        envelope("recv", s + 0.21, data=dydx("channel_data", 6, "v4_trades", {"trades": [
            {"id": "d310c32c-f066-5ba8-a97d-10a29d9a6c84", "side": "SELL", "size": "0.3", "price": "60000",
             "type": "LIMIT", "createdAt": "2026-09-04T00:07:45.100Z", "createdAtHeight": "53123002"}]})),
        envelope("recv", s + 0.22, data=dydx("channel_data", 7, "v4_markets", {
            "oraclePrices": {"BTC-USD": {"oraclePrice": "60003.25", "effectiveAt": "2026-09-04T00:07:45.000Z",
                                         "effectiveAtHeight": "53123002", "marketId": 0}}}, market=None)),
        envelope("recv", s + 0.25, data=dydx("channel_data", 8, "v4_orderbook", {"asks": [["60001", "0.5"]]})),
    ]
    if reconnect:  # the same connection name again: a new connection, whose message_id starts again
        lines += [
            envelope("connect", s + 5, addr="wss://indexer.dydx.trade/v4/ws"),
            envelope("recv", s + 5.01, data=orjson.dumps({"type": "connected", "connection_id": "c2",
                                                           "message_id": 0}).decode()),
            envelope("recv", s + 5.10, data=dydx("subscribed", 1, "v4_orderbook", {
                "bids": [{"price": "60010", "size": "1"}], "asks": [{"price": "60011", "size": "2"}]},
                conn_id="c2")),
            envelope("recv", s + 5.20, data=dydx("channel_data", 2, "v4_orderbook", {"bids": [["60009", "3"]]},
                                                 conn_id="c2")),
        ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_dydx_dump_replays_into_the_venues_book_trades_marks_and_specs(tmp_path: Path) -> None:
    path = dydx_dump(tmp_path / "DYDX.jsonl", reconnect=False)
    trades: list[tuple[str, str, str, str]] = []
    tickers: list[tuple[str | None, dict[str, Any]]] = []
    specs: list[Any] = []

    def on(raw: Any, out: Any) -> None:
        assert out.dead is None, out.dead
        trades.extend((t.trade_id, t.side, t.price, t.size) for t in out.trades)
        tickers.extend((t.symbol, t.fields) for t in out.tickers)
        specs.extend(out.specs)

    proc = reference([path], "cryptofeed", on_outcome=on)
    inst = proc.instruments["dydx:BTC-USD"]
    assert inst.status == SYNCED, inst.reason
    assert book_levels(proc, "dydx:BTC-USD") == ([["60000.5", "0.3"], ["59999", "2"]],
                                                [["60001", "0.5"], ["60002", "4"]])
    assert trades == [("8ee6d90d-272d-5edd-bf0f-2e4d6ae3d3b7", "buy", "60001", "0.01"),
                      ("d310c32c-f066-5ba8-a97d-10a29d9a6c84", "sell", "60000", "0.3")]
    assert tickers == [  # the subscription's list, with its figures, then the update
        ("BTC-USD", {"index": "60010.5", "mark": "60010.5", "funding_rate": "0", "open_interest": "1891.473716288"}),
        ("BTC-USD", {"index": "60003.25", "mark": "60003.25"})]
    (spec,) = specs
    assert (spec.key, spec.kind, spec.settle, spec.initial_margin, spec.maintenance_margin) == (
        "dydx:BTC-USD", "perpetual", "USDC", "0.05", "0.03")
    recs = list(read([path], "cryptofeed"))
    assert {(r.venue, r.url) for r in recs} == {("dydx", "wss://indexer.dydx.trade/v4/ws")}
    assert len(recs) == 8  # every received frame, none of the header, connect or sent lines


def test_a_dydx_reconnect_under_the_same_name_is_a_new_connection_whose_snapshot_resyncs(tmp_path: Path) -> None:
    path = dydx_dump(tmp_path / "DYDX.jsonl")
    assert [r.conn for r in read([path], "cryptofeed")][-3:] == ["DYDX.ws.1~2"] * 3
    proc = reference([path], "cryptofeed")
    inst = proc.instruments["dydx:BTC-USD"]
    assert inst.status == SYNCED, inst.reason
    # message_id 1 then 2 on the new connection, below the 8 of the old one: applied, not repeats
    assert book_levels(proc, "dydx:BTC-USD") == ([["60010", "1"], ["60009", "3"]], [["60011", "2"]])


def test_the_dydx_venue_comes_from_the_header_without_a_connect_line(tmp_path: Path) -> None:
    path = tmp_path / "dump.jsonl"
    path.write_bytes(orjson.dumps({"t": "header", "exchange": "DYDX"}) + b"\n"
                     + envelope("recv", T0 / 1e9, data=dydx("subscribed", 1, "v4_orderbook", {
                         "bids": [{"price": "1", "size": "1"}], "asks": []})) + b"\n")
    (rec,) = read([path], "cryptofeed")
    assert rec.venue == "dydx"


def test_a_dydx_v3_api_capture_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "DYDX.jsonl"
    path.write_bytes(envelope("connect", T0 / 1e9, addr="wss://api.dydx.exchange/v3/ws") + b"\n")
    with pytest.raises(CaptureError, match="v3 API.*v4 indexer"):
        list(read([path], "cryptofeed"))


def test_a_cryptofeed_hyperliquid_dump_replays_like_the_collectors(tmp_path: Path) -> None:
    path = tmp_path / "HYPERLIQUID.jsonl"
    lines = [orjson.dumps({"t": "header", "exchange": "HYPERLIQUID"}),
             envelope("connect", T0 / 1e9, conn="HYPERLIQUID.ws.1", addr="wss://api.hyperliquid.xyz/ws"),
             envelope("recv", T0 / 1e9 + 0.01, conn="HYPERLIQUID.ws.1", data="Websocket connection established."),
             envelope("recv", T0 / 1e9 + 0.1, conn="HYPERLIQUID.ws.1",
                      data=l2book(MS0 + 50, [("80639", "1.5")], [("80640", "0.7")]).decode())]
    path.write_bytes(b"\n".join(lines) + b"\n")
    proc = reference([path], "cryptofeed")
    assert proc.instruments["hyperliquid:BTC"].status == SYNCED
    assert book_levels(proc, "hyperliquid:BTC") == ([["80639", "1.5"]], [["80640", "0.7"]])
