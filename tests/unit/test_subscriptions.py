"""What each venue's protocol reads from the venue's answers and data frames, the venues' limits
as data, and the pacing windows that keep them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import feeds
from app.errors import ConfigError
from app.ingest.limits import Window
from app.ingest.service import group_size
from app.venues import protocol
from app.venues.session import Ack

LIVE = feeds.LIVE


def ids(venue: str, symbols: list[str]) -> set[str]:
    return {s.id for s in protocol(venue, LIVE[venue]).subs(symbols)}


#: (venue, a data frame's head, the channel id it belongs to): every id is one the venue's
#: subscriptions name, so a frame marks exactly the channel it came on.
DATA = [
    ("binance-usdm", b'{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","s":"BTCUSDT"}}',
     "btcusdt@markPrice@1s"),
    ("binance", b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate"}}', "btcusdt@depth@100ms"),
    ("bybit-spot", b'{"topic":"orderbook.200.BTCUSDT","type":"delta","data":{}}', "orderbook.200.BTCUSDT"),
    ("okx", b'{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[]}', "books:BTC-USDT"),
    ("deribit", b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.BTC-PERPETUAL.100ms"}}',
     "ticker.BTC-PERPETUAL.100ms"),
    ("coinbase", b'{"channel":"l2_data","timestamp":"t","sequence_num":3,"events":[{"type":"update",'
                 b'"product_id":"BTC-USD","updates":[]}]}', "level2:BTC-USD"),
]


@pytest.mark.parametrize(("venue", "frame", "channel"), DATA)
def test_a_data_frame_names_a_channel_the_subscriptions_name(venue: str, frame: bytes, channel: str) -> None:
    symbol = {"binance-usdm": "BTCUSDT", "binance": "BTCUSDT", "bybit-spot": "BTCUSDT"}.get(venue, "BTC-USDT")
    symbol = {"deribit": "BTC-PERPETUAL", "coinbase": "BTC-USD"}.get(venue, symbol)
    proto = protocol(venue, LIVE[venue])
    assert proto.data_channels(frame) == (channel,)
    assert channel in ids(venue, [symbol])
    assert proto.ack(frame) is None


#: Answers that are never data: heartbeats, pongs, acknowledgements.
NOT_DATA = [
    ("okx", b"pong"), ("okx", b'{"id":"7","event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"}}'),
    ("bybit-spot", b'{"success":true,"ret_msg":"pong","conn_id":"x","op":"ping"}'),
    ("deribit", b'{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}'),
    ("coinbase", b'{"channel":"heartbeats","timestamp":"t","sequence_num":4,"events":[{"heartbeat_counter":3}]}'),
    ("binance", b'{"result":null,"id":3}'),
]


@pytest.mark.parametrize(("venue", "frame"), NOT_DATA)
def test_heartbeats_pongs_and_answers_are_never_data(venue: str, frame: bytes) -> None:
    assert protocol(venue, LIVE[venue]).data_channels(frame) == ()


ANSWERS = [
    ("binance", b'{"result":null,"id":12}', Ack("12", complete=True)),
    ("binance", b'{"error":{"code":2,"msg":"Invalid request"},"id":12}',
     Ack("12", failed="{'code': 2, 'msg': 'Invalid request'}", complete=True)),
    ("bybit-spot", b'{"success":false,"ret_msg":"args size >10","conn_id":"c","req_id":"9","op":"subscribe"}',
     Ack("9", failed="args size >10", complete=True)),
    ("bybit-linear", b'{"success":false,"ret_msg":"Invalid symbol :[orderbook.200.X,tickers.X]","req_id":"4",'
                     b'"op":"subscribe"}',
     Ack("4", failed="Invalid symbol :[orderbook.200.X,tickers.X]", refused=("orderbook.200.X", "tickers.X"),
         complete=True)),
    ("okx", b'{"id":"5","event":"subscribe","arg":{"channel":"opt-summary","instFamily":"BTC-USD"},"connId":"a"}',
     Ack("5", ok=("opt-summary:BTC-USD",))),
    ("okx", b'{"id":"5","event":"error","code":"60018","msg":"Wrong URL or channel:books,instId:X-USDT doesn\'t '
            b'exist","connId":"a"}',
     Ack("5", failed="60018: Wrong URL or channel:books,instId:X-USDT doesn't exist", refused=("books:X-USDT",))),
    ("okx", b'{"id":"1","event":"login","code":"0","msg":"","connId":"a"}', Ack("1", auth=True)),
    ("okx", b'{"event":"error","code":"60009","msg":"Login failed.","connId":"a"}',
     Ack("", failed="60009: Login failed.", auth=False)),
    ("deribit", b'{"jsonrpc":"2.0","id":8,"result":["book.BTC-PERPETUAL.100ms"]}',
     Ack("8", ok=("book.BTC-PERPETUAL.100ms",), complete=True)),
    ("deribit", b'{"jsonrpc":"2.0","id":8,"error":{"code":10028,"message":"too_many_requests"}}',
     Ack("8", failed="10028: too_many_requests", complete=True, auth=False, extra={"code": 10028})),
    ("coinbase", b'{"channel":"subscriptions","timestamp":"t","sequence_num":1,"events":[{"subscriptions":'
                 b'{"level2":["BTC-USD"],"heartbeats":["heartbeats"]}}]}',
     Ack(ok=("level2:BTC-USD", "heartbeats:heartbeats", "heartbeats"))),
    ("coinbase", b'{"type":"error","message":"Failed to subscribe","reason":"X-USD is not a valid product"}',
     Ack(failed="X-USD is not a valid product", symbols=("X-USD",))),
]


@pytest.mark.parametrize(("venue", "frame", "expected"), ANSWERS)
def test_each_venue_answer_reads_as_confirmed_or_refused(venue: str, frame: bytes, expected: Ack) -> None:
    assert protocol(venue, LIVE[venue]).ack(frame) == expected


def test_requests_keep_the_venue_limit_of_args_and_name_their_channels() -> None:
    proto = protocol("bybit-spot", LIVE["bybit-spot"])
    symbols = [f"C{i}USDT" for i in range(4)]  # 12 channels: the venue refuses more than 10 in a request
    requests = proto.subscribe(symbols)
    assert [len(r.channels) for r in requests] == [10, 2]
    assert {c for r in requests for c in r.channels} == ids("bybit-spot", symbols)
    assert all(r.op == "subscribe" and r.id for r in requests)


def test_usdm_market_data_goes_to_market_and_depth_to_public() -> None:
    main, market = LIVE["binance-usdm"].parts()
    assert main.ws_url.endswith("/public/stream")
    assert main.channel
    assert main.market == ()
    assert market.ws_url == "wss://fstream.binance.com/market/stream"
    assert market.channel == ""
    assert market.market == ("{symbol_lower}@trade", "{symbol_lower}@markPrice@1s")
    assert market.rest_url == ""
    assert protocol("binance-usdm", market).snapshot_url("BTCUSDT") is None  # no book: no snapshots
    assert [p.ws_url for p in LIVE["binance"].parts()] == [LIVE["binance"].ws_url]  # spot serves all on one
    # 200 streams a futures connection: 100 instruments of two market channels
    assert group_size(protocol("binance-usdm", market), "BTCUSDT") == 100
    assert group_size(protocol("binance-usdm", main), "BTCUSDT") == 200


def test_simulator_endpoints_serve_moved_channels_under_the_venues_prefix() -> None:
    sim = feeds.sim_endpoints("http://127.0.0.1:9")
    assert dict(sim["binance-usdm"].ws_urls) == {t: "ws://127.0.0.1:9/ws/binance-usdm/market/stream"
                                                 for t in LIVE["binance-usdm"].market}


def test_feeds_file_overrides_limits_and_channel_urls(tmp_path: Path) -> None:
    path = tmp_path / "feeds.json"
    path.write_text(json.dumps({"endpoints": {"binance": {"limits": {"rest_weight": [1200, 60], "ack_s": 3}},
                                              "binance-usdm": {"ws_urls": {"{symbol_lower}@trade": "wss://x/y"}}}}))
    cfg = feeds.load({"FEEDS_FILE": str(path), "FEEDS": "binance:BTCUSDT"})
    assert cfg.endpoints["binance"].limits.rest_weight == (1200, 60)
    assert cfg.endpoints["binance"].limits.ack_s == 3
    assert cfg.endpoints["binance"].limits.msgs == LIVE["binance"].limits.msgs  # the others kept
    assert cfg.endpoints["binance-usdm"].ws_urls == (("{symbol_lower}@trade", "wss://x/y"),)
    for bad, message in (({"limits": {"nope": 1}}, "limits has no field 'nope'"),
                         ({"limits": {"ack_s": "soon"}}, "limits.ack_s = 'soon' is not a float"),
                         ({"ws_urls": {"x": "http://y"}}, "ws_urls must map")):
        path.write_text(json.dumps({"endpoints": {"okx": bad}}))
        with pytest.raises(ConfigError, match=message):
            feeds.load({"FEEDS_FILE": str(path)})


def test_a_window_never_lets_more_than_n_through_in_any_window() -> None:
    window = Window((5, 1.0))  # a short window: counted over 1.5 s
    sent: list[float] = []
    now = 0.0
    for _ in range(40):
        now += window.delay(now)
        window.add(now)
        sent.append(now)
    assert all(sum(1 for t in sent if s <= t < s + 1.5) <= 5 for s in sent)
    assert sent[1] == pytest.approx(0.3)  # spaced evenly, never a burst of five
    assert sent[-1] == pytest.approx(39 * 0.3)  # as fast as allowed
    weights = Window((100, 60.0))
    weights.add(0.0, 80)
    assert weights.delay(1.0, 30) == pytest.approx(65.0)  # 80 + 30 > 100 until the 80 expire
    assert weights.delay(1.0, 500) == pytest.approx(65.0)  # heavier than the budget: waits for it empty


def test_metrics_name_venue_and_state_of_every_subscription_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import Counter

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from app import metrics
    from app.web.metrics import registry

    monkeypatch.setitem(metrics.gauges, "feed_channels.bybit-spot.live", 27)
    monkeypatch.setattr(metrics, "counters", Counter({"feed_subscriptions.okx.refused": 2, "limit_waits.coinbase": 5,
                                                      "rest_throttled.binance-futures.429": 1}))
    text = generate_latest(registry()).decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}
    assert got["bookstream_feed_subscriptions_total", (("event", "refused"), ("venue", "okx"))] == 2
    assert got["bookstream_feed_channels", (("state", "live"), ("venue", "bybit-spot"))] == 27
    assert got["bookstream_feed_limit_waits_total", (("venue", "coinbase"),)] == 5
    assert got["bookstream_feed_rest_throttled_total", (("scope", "binance-futures"), ("status", "429"))] == 1


async def test_the_subscription_unanswered_when_hyperliquid_closed_the_connection_is_quarantined() -> None:
    """Hyperliquid closes the whole connection on a coin it does not know and names nothing: the
    first subscription sent and still unanswered at the close is the one it refused. Its coin is
    quarantined — every channel refused and reported once, never resubscribed or resynced — and the
    other coins are left to be subscribed again."""
    from app.ingest.connection import Channel, FeedConnection

    proto = protocol("hyperliquid", LIVE["hyperliquid"])
    assert proto.refusal_closes
    assert not protocol("dydx", LIVE["dydx"]).refusal_closes
    reports: list[tuple[str, str]] = []
    conn = FeedConnection("hyperliquid", ["BTC", "NOPE", "ETH"], proto, emit=lambda *_: None,
                          reset=lambda *_: None, http=None,  # type: ignore[arg-type]
                          report=lambda sub, event, detail, conn_id: reports.append((sub.id, event)))
    for order, sub in enumerate(proto.subs(["BTC", "NOPE", "ETH"]), 1):
        state = "confirmed" if sub.symbol == "BTC" else "pending"  # BTC answered; NOPE then ETH were not
        conn.channels[sub.id] = Channel(sub, state=state, order=order)
    conn._blame_close()
    assert list(conn.quarantined) == ["NOPE"]
    assert sorted(reports) == sorted((f"{t}:NOPE", "refused") for t in ("l2Book", "trades", "activeAssetCtx", "bbo"))
    assert {c.state for c in conn.channels.values() if c.sub.symbol == "NOPE"} == {"refused"}
    assert {c.next_try for c in conn.channels.values() if c.sub.symbol == "NOPE"} == {float("inf")}
    assert {c.state for c in conn.channels.values() if c.sub.symbol == "ETH"} == {"pending"}
    conn.quarantine("NOPE", "again")  # reported once only
    assert len(reports) == 4
    conn._ws = object()  # type: ignore[assignment]
    assert not await conn.resync("NOPE")


async def test_hyperliquids_instrument_list_quarantines_unlisted_coins_and_clears_listed_ones() -> None:
    """With the venue's coin list (its ``meta``, fetched by ingestion) a coin not on it is refused
    before it is ever subscribed — the others untouched — and a close with a listed coin's
    subscription unanswered is not blamed on it (the venue closed for another reason)."""
    from app.ingest.connection import Channel, FeedConnection

    proto = protocol("hyperliquid", LIVE["hyperliquid"])
    reports: list[tuple[str, str]] = []
    conn = FeedConnection("hyperliquid", ["BTC", "NOPE", "ETH"], proto, emit=lambda *_: None,
                          reset=lambda *_: None, http=None,  # type: ignore[arg-type]
                          report=lambda sub, event, detail, conn_id: reports.append((sub.id, event)))
    for order, sub in enumerate(proto.subs(["BTC", "NOPE", "ETH"]), 1):
        conn.channels[sub.id] = Channel(sub, state="pending", order=order)
    conn.learn_instruments([])  # an empty or unreadable list says nothing
    assert conn.quarantined == {}
    conn.learn_instruments(["BTC", "ETH", "SOL"])
    assert list(conn.quarantined) == ["NOPE"]
    assert {e for _, e in reports} == {"refused"}
    assert [s.symbol for s in proto.subs(["BTC", "NOPE", "ETH"])] == ["BTC"] * 4 + ["ETH"] * 4  # never sent
    conn._blame_close()  # BTC's subscriptions unanswered at a close: BTC is listed, not blamed
    assert list(conn.quarantined) == ["NOPE"]
