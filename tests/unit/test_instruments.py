"""The instrument registry: each venue's REST instrument list → specs; versions in time."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from app.market.instruments import Registry, Spec
from app.records import source
from app.venues import INSTRUMENT_LISTS

# Bodies in each venue's documented shape (fields as the venues' API references list them).
DERIBIT = {"jsonrpc": "2.0", "result": [
    {"tick_size_steps": [{"above_price": 0.005, "tick_size": 0.0005}], "tick_size": 0.0001, "strike": 60000.0,
     "settlement_period": "month", "settlement_currency": "BTC", "quote_currency": "BTC", "price_index": "btc_usd",
     "option_type": "call", "min_trade_amount": 0.1, "kind": "option", "is_active": True,
     "instrument_name": "BTC-27MAR26-60000-C", "instrument_type": "reversed", "expiration_timestamp": 1774598400000,
     "counter_currency": "USD", "contract_size": 1.0, "base_currency": "BTC"},
    {"tick_size_steps": [], "tick_size": 0.5, "settlement_period": "perpetual", "settlement_currency": "BTC",
     "quote_currency": "USD", "price_index": "btc_usd", "min_trade_amount": 10.0, "kind": "future",
     "is_active": True, "instrument_name": "BTC-PERPETUAL", "instrument_type": "reversed",
     "expiration_timestamp": 32503708800000, "contract_size": 10.0, "base_currency": "BTC"}]}
BINANCE_COINM = {"timezone": "UTC", "serverTime": 1, "symbols": [
    {"symbol": "BTCUSD_PERP", "pair": "BTCUSD", "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
     "contractStatus": "TRADING", "contractSize": 100, "marginAsset": "BTC", "baseAsset": "BTC", "quoteAsset": "USD",
     "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.1"},
                 {"filterType": "LOT_SIZE", "stepSize": "1", "minQty": "1"}]},
    {"symbol": "BTCUSD_260327", "pair": "BTCUSD", "contractType": "CURRENT_QUARTER", "deliveryDate": 1774598400000,
     "contractStatus": "TRADING", "contractSize": 100, "marginAsset": "BTC", "baseAsset": "BTC", "quoteAsset": "USD",
     "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.1"}]}]}
OKX = {"code": "0", "msg": "", "data": [
    {"instType": "OPTION", "instId": "BTC-USD-260327-60000-C", "uly": "BTC-USD", "instFamily": "BTC-USD",
     "settleCcy": "BTC", "ctVal": "1", "ctMult": "0.1", "ctValCcy": "BTC", "optType": "C", "stk": "60000",
     "expTime": "1774598400000", "tickSz": "0.0005", "lotSz": "1", "minSz": "1", "ctType": "", "state": "live",
     "baseCcy": "", "quoteCcy": ""},
    {"instType": "SWAP", "instId": "BTC-USD-SWAP", "uly": "BTC-USD", "settleCcy": "BTC", "ctVal": "100",
     "ctMult": "1", "ctValCcy": "USD", "ctType": "inverse", "tickSz": "0.1", "lotSz": "1", "minSz": "1",
     "state": "suspend", "expTime": "", "stk": "", "optType": ""}]}
BYBIT = {"retCode": 0, "result": {"category": "linear", "list": [
    {"symbol": "BTCUSDT", "contractType": "LinearPerpetual", "status": "Trading", "baseCoin": "BTC",
     "quoteCoin": "USDT", "settleCoin": "USDT", "deliveryTime": "0", "priceFilter": {"tickSize": "0.10"},
     "lotSizeFilter": {"qtyStep": "0.001", "minOrderQty": "0.001", "minNotionalValue": "5"}}]}}
COINBASE = {"products": [{"product_id": "BTC-USD", "base_currency_id": "BTC", "quote_currency_id": "USD",
                          "quote_increment": "0.01", "base_increment": "0.00000001", "base_min_size": "0.00000001",
                          "quote_min_size": "1", "status": "online", "trading_disabled": False,
                          "product_type": "SPOT"}]}

SRC = source("raw.test", 0, 0, 0)


def parse(venue: str, body: dict) -> list[Spec]:  # type: ignore[type-arg]
    specs = INSTRUMENT_LISTS[venue].parse(orjson.dumps(body))
    assert specs is not None
    return specs


def test_deribit_option_and_inverse_perpetual() -> None:
    option, perp = parse("deribit", DERIBIT)
    assert (option.kind, option.margin, option.strike, option.option_type, option.tick_size) == (
        "option", "inverse", "60000", "call", "0.0001")
    assert option.tick_size_steps == [{"above_price": "0.005", "tick_size": "0.0005"}]
    assert option.expiry_ns == 1774598400000 * 10**6
    assert (perp.kind, perp.contract_size, perp.expiry_ns, perp.min_size) == ("perpetual", "10", None, "10")


def test_binance_coinm_contracts_are_inverse_usd() -> None:
    perp, quarter = parse("binance-coinm", BINANCE_COINM)
    assert (perp.kind, perp.margin, perp.contract_size, perp.settle) == ("perpetual", "inverse", "100", "BTC")
    assert (quarter.kind, quarter.expiry_ns) == ("future", 1774598400000 * 10**6)


def test_okx_coin_margined_options_and_a_suspended_swap() -> None:
    option, swap = parse("okx", OKX)
    assert (option.kind, option.margin, option.option_type, option.multiplier) == ("option", "inverse", "call", "0.1")
    assert (swap.kind, swap.margin, swap.contract_size, swap.state) == ("perpetual", "inverse", "100", "halted")


def test_bybit_and_coinbase() -> None:
    (perp,) = parse("bybit-linear", BYBIT)
    assert (perp.kind, perp.tick_size, perp.lot_size, perp.min_notional) == ("perpetual", "0.10", "0.001", "5")
    (spot,) = parse("coinbase", COINBASE)
    assert (spot.kind, spot.tick_size, spot.min_notional, spot.state) == ("spot", "0.01", "1", "open")


@pytest.mark.parametrize("venue", sorted(INSTRUMENT_LISTS))
def test_other_bodies_are_not_instrument_lists(venue: str) -> None:
    assert INSTRUMENT_LISTS[venue].parse(b'{"lastUpdateId":1,"bids":[],"asks":[]}') is None


def test_a_changed_spec_is_a_new_version_never_an_overwrite() -> None:
    reg = Registry()
    (perp,) = parse("bybit-linear", BYBIT)
    assert reg.changed([perp], 100, SRC) == [replace(perp, valid_from=100, source=SRC)]
    assert reg.changed([perp], 200, SRC) == []  # the same terms again: no version
    wider = replace(perp, tick_size="0.20")
    (new,) = reg.changed([wider], 300, source("raw.bybit-linear", 0, 7, 0))
    assert new.valid_from == 300
    assert [v.tick_size for v in reg.versions[perp.key]] == ["0.10", "0.20"]
    assert reg.at(perp.key, 99) is None
    assert reg.at(perp.key, 299).tick_size == "0.10"  # a replay at that time sees the old terms
    assert reg.at(perp.key, 300).tick_size == "0.20"
    assert not reg.apply(new)  # a redelivered record changes nothing
    assert Spec.decode(new.encode()) == new


def test_state_channels_version_the_instrument_they_name() -> None:
    deribit = INSTRUMENT_LISTS["deribit"]
    reg = Registry()
    option, _ = parse("deribit", DERIBIT)
    reg.changed([option], 100, SRC)
    push = orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": {
        "channel": "instrument.state.any.BTC",
        "data": {"timestamp": 1, "state": "settled", "instrument_name": "BTC-27MAR26-60000-C"}}})
    assert deribit.parse_ws(b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.X.100ms"}}') is None
    specs, states = deribit.parse_ws(push)  # type: ignore[misc]
    assert (specs, states) == ([], [("deribit:BTC-27MAR26-60000-C", "settlement", 1_000_000)])
    (new,) = reg.state_changed(states, 200, SRC)
    assert (new.state, new.valid_from, new.strike, new.ts_exchange) == ("settlement", 200, "60000", 1_000_000)
    assert reg.state_changed(states, 300, SRC) == []  # the same state again: no version
    assert reg.state_changed([("deribit:UNKNOWN", "settlement", 0)], 300, SRC) == []  # waits for its REST list
    record = orjson.loads(new.encode(ts_published=400))
    assert (record["ts_exchange"], record["ts_recv"], record["ts_published"]) == (1_000_000, 200, 400)
    assert Spec.decode(new.encode(400)) == new
    okx = INSTRUMENT_LISTS["okx"]
    pushed = okx.parse_ws(orjson.dumps({"arg": {"channel": "instruments", "instType": "OPTION"}, "data": OKX["data"]}))
    assert pushed is not None
    assert [s.key for s in pushed[0]] == ["okx:BTC-USD-260327-60000-C", "okx:BTC-USD-SWAP"]
    assert okx.parse_ws(b'{"event":"subscribe","arg":{"channel":"instruments","instType":"SWAP"}}') is None
