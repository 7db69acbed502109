"""Feed configuration, credentials and venue session protocols (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from app import feeds
from app.errors import ConfigError
from app.venues import protocol


def test_feeds_spec_parses_venues_and_symbols() -> None:
    spec = "deribit:BTC-PERPETUAL,ETH-PERPETUAL;binance-usdm:BTCUSDT;okx:BTC-USDT-SWAP; "
    assert feeds.parse_feeds(spec) == {"deribit": ["BTC-PERPETUAL", "ETH-PERPETUAL"], "binance-usdm": ["BTCUSDT"],
                                       "okx": ["BTC-USDT-SWAP"]}


@pytest.mark.parametrize(("spec", "message"), [
    ("kraken:XBT", "unknown venue 'kraken'"),
    ("deribit", "is not <venue>:<symbol>"),
    ("okx:", "names no symbol"),
    ("okx:BTC USDT", "malformed"),
])
def test_bad_feeds_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        feeds.parse_feeds(spec)


def test_default_feeds_cover_every_simulated_venue() -> None:
    """Every venue the simulator serves is in `make run`'s feeds (simulator support is optional for
    a venue, README "Adding a venue" step 4)."""
    from app.simulator.server import HANDLERS
    from app.venues import VENUES

    simulated = {v for v in VENUES if v.split("-")[0] in HANDLERS}
    assert simulated >= {"deribit", "binance", "binance-usdm", "okx", "bybit-linear", "coinbase", "hyperliquid", "dydx"}
    assert set(feeds.parse_feeds(feeds.DEFAULT_SIM_FEEDS)) == simulated


def test_feeds_file_adds_feeds_and_overrides_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"feeds": {"okx": ["ETH-USDT"]},
                                "endpoints": {"binance-usdm": {"ws_url": "wss://example/public/stream"}}}))
    cfg = feeds.load({"FEEDS": "okx:BTC-USDT", "FEEDS_FILE": str(path)})
    assert cfg.feeds == {"okx": ["BTC-USDT", "ETH-USDT"]}
    assert cfg.endpoints["binance-usdm"].ws_url == "wss://example/public/stream"
    path.write_text(json.dumps({"endpoints": {"okx": {"nope": 1}}}))
    with pytest.raises(ConfigError, match="FEEDS_FILE endpoints for okx"):
        feeds.load({"FEEDS_FILE": str(path)})
    with pytest.raises(ConfigError, match="FEED='paper'"):
        feeds.load({"FEED": "paper"})


def test_simulator_endpoints_keep_channels_and_point_at_the_simulator() -> None:
    sim = feeds.sim_endpoints("http://127.0.0.1:9999")
    assert sim["bybit-option"].ws_url == "ws://127.0.0.1:9999/ws/bybit/v5/public/option"
    assert sim["binance"].rest_url == "http://127.0.0.1:9999/rest/binance/api/v3/depth"
    assert sim["okx"].channel == feeds.LIVE["okx"].channel


def test_secrets_never_print(tmp_path: Path) -> None:
    creds = tmp_path / "c.json"
    creds.write_text(json.dumps({"okx": {"key": "k-123", "secret": "s-456", "passphrase": "p-789"}}))
    cfg = feeds.load({"CREDENTIALS_FILE": str(creds), "DERIBIT_CLIENT_SECRET": "d-000", "FEEDS": "okx:BTC-USDT"})
    text = repr(cfg) + str(cfg.credentials)
    for secret in ("k-123", "s-456", "p-789", "d-000"):
        assert secret not in text
    assert cfg.credentials["okx"]["secret"].reveal() == "s-456"


def test_protocols_resync_one_instrument_only() -> None:
    eps = feeds.LIVE
    deribit = protocol("deribit", eps["deribit"])
    frames = [orjson.loads(f.text) for f in deribit.resubscribe("BTC-PERPETUAL")]
    assert [f["method"] for f in frames] == ["public/unsubscribe", "public/subscribe"]
    assert all(f["params"]["channels"] == ["book.BTC-PERPETUAL.100ms"] for f in frames)
    assert deribit.reply('{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}')
    binance = protocol("binance-usdm", eps["binance-usdm"])
    assert binance.resubscribe("BTCUSDT") == []  # a resync is a REST snapshot
    assert binance.snapshot_url("btcusdt") == "https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=1000"
    bybit = protocol("bybit-linear", eps["bybit-linear"])
    assert orjson.loads(bybit.subscribe(["BTCUSDT"])[0].text)["args"] == [
        "orderbook.200.BTCUSDT", "publicTrade.BTCUSDT", "tickers.BTCUSDT"]
    assert orjson.loads(bybit.resubscribe("BTCUSDT")[1].text)["args"] == ["orderbook.200.BTCUSDT"]
    option = protocol("bybit-option", eps["bybit-option"])
    assert orjson.loads(option.subscribe(["BTC-25DEC26-60000-C", "BTC-25DEC26-60000-P"])[0].text)["args"] == [
        "orderbook.100.BTC-25DEC26-60000-C", "tickers.BTC-25DEC26-60000-C", "orderbook.100.BTC-25DEC26-60000-P",
        "tickers.BTC-25DEC26-60000-P", "publicTrade.BTC"]
    coinbase = protocol("coinbase", eps["coinbase"])
    assert [orjson.loads(f.text)["channel"] for f in coinbase.subscribe(["BTC-USD"])] == [
        "heartbeats", "level2", "market_trades", "ticker"]
    assert [orjson.loads(f.text)["channel"] for f in coinbase.resubscribe("BTC-USD")] == ["level2", "level2"]
    okx = protocol("okx", eps["okx"])
    assert okx.ping() == "ping"
    args = orjson.loads(okx.subscribe(["BTC-USD-261225-60000-C", "BTC-USD-261225-60000-P"])[0].text)["args"]
    assert {"channel": "opt-summary", "instFamily": "BTC-USD"} in args  # once per option family
    assert sum(a["channel"] == "opt-summary" for a in args) == 1
    assert all(a["channel"] == "books" for a in orjson.loads(okx.resubscribe("BTC-USD-261225-60000-C")[1].text)["args"])


def test_deribit_with_credentials_uses_raw_channels_and_authenticates_first() -> None:
    creds = feeds.credentials({"DERIBIT_CLIENT_ID": "id", "DERIBIT_CLIENT_SECRET": "sec"})["deribit"]
    deribit = protocol("deribit", feeds.LIVE["deribit"], creds)
    first, _, subscribe = (orjson.loads(f.text) for f in deribit.on_open(["BTC-PERPETUAL"]))
    assert first["method"] == "public/auth"
    assert subscribe["method"] == "private/subscribe"
    assert subscribe["params"]["channels"] == ["book.BTC-PERPETUAL.raw", "trades.BTC-PERPETUAL.raw",
                                               "ticker.BTC-PERPETUAL.raw",
                                               "instrument.state.any.BTC"]  # the registry's state changes
