"""The simulator's REST instrument lists, in each venue's own shape (``app.market.instruments``
reads them back). Terms come from :func:`app.simulator.model.spec_for`; the ``spec-change``
fault doubles an instrument's tick size from then on, and ``state-change`` closes it: either is
a new version of its spec in bookstream's registry (OKX's ``instruments`` channel and Deribit's
``instrument.state`` push them at once; every venue's next REST list shows them)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.market.symbols import expiry_ns, parse_option
from app.simulator.model import spec_for


def _text(d: Decimal) -> str:
    out = format(d, "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


def terms(symbol: str, tick_factor: int) -> tuple[str, str]:
    """(tick size, lot size) of ``symbol`` as the simulator quotes it."""
    spec = spec_for(symbol)
    return _text(spec.tick * tick_factor), _text(spec.lot)


def deribit(symbols: list[str], factor: dict[str, int], closed: set[str] | None = None) -> dict[str, Any]:
    closed = closed or set()
    result = []
    for s in symbols:
        tick, lot = terms(s, factor.get(s, 1))
        opt = parse_option(s)
        coin = s.split("-")[0]
        item: dict[str, Any] = {
            "instrument_name": s, "kind": "option" if opt else "future", "tick_size": float(tick),
            "tick_size_steps": [{"above_price": 0.005, "tick_size": float(tick) * 2}] if opt else [],
            "min_trade_amount": float(lot) if opt else 10.0, "contract_size": 1.0 if opt else 10.0,
            "base_currency": coin, "quote_currency": "USD", "settlement_currency": coin, "counter_currency": "USD",
            "instrument_type": "reversed", "is_active": s not in closed, "price_index": f"{coin.lower()}_usd",
            "settlement_period": "month" if opt else "perpetual", "expiration_timestamp": 32503680000000,
        }
        if opt:
            item.update({"strike": opt.strike, "option_type": "call" if opt.call else "put",
                         "expiration_timestamp": opt.expiry_ns // 1_000_000})
        elif not s.endswith("-PERPETUAL"):  # a dated future (BTC-25DEC26): it expires
            item.update({"settlement_period": "month", "expiration_timestamp": expiry_ns(s.split("-")[1]) // 1_000_000})
        result.append(item)
    return {"jsonrpc": "2.0", "result": result, "usIn": 0, "usOut": 0, "usDiff": 0, "testnet": False}


def binance(venue: str, symbols: list[str], factor: dict[str, int]) -> dict[str, Any]:
    items = []
    for s in symbols:
        tick, lot = terms(s, factor.get(s, 1))
        base, quote = (s[:-4], s[-4:]) if s.endswith("USDT") else (s.split("_")[0][:-3], "USD")
        item: dict[str, Any] = {"symbol": s, "status": "TRADING", "baseAsset": base, "quoteAsset": quote,
                                "filters": [{"filterType": "PRICE_FILTER", "tickSize": tick},
                                            {"filterType": "LOT_SIZE", "stepSize": lot, "minQty": lot},
                                            {"filterType": "MIN_NOTIONAL", "notional": "5"}]}
        if venue != "binance":
            item.update({"contractType": "PERPETUAL", "marginAsset": base if venue == "binance-coinm" else quote,
                         "pair": s.split("_")[0], "deliveryDate": 4133404800000})
            if venue == "binance-coinm":
                item["contractSize"] = 100
        items.append(item)
    return {"timezone": "UTC", "serverTime": 0, "symbols": items}


def okx(symbols: list[str], factor: dict[str, int]) -> dict[str, Any]:
    data = []
    for s in symbols:
        tick, lot = terms(s, factor.get(s, 1))
        parts = s.split("-")
        kind = "SPOT" if len(parts) == 2 else "SWAP" if parts[-1] == "SWAP" else "FUTURES"
        data.append({"instId": s, "instType": kind, "baseCcy": parts[0] if kind == "SPOT" else "",
                     "quoteCcy": parts[1] if kind == "SPOT" else "", "settleCcy": parts[1],
                     "ctVal": "" if kind == "SPOT" else "0.01", "ctMult": "" if kind == "SPOT" else "1",
                     "ctValCcy": "" if kind == "SPOT" else parts[0], "ctType": "" if kind == "SPOT" else "linear",
                     "tickSz": tick, "lotSz": lot, "minSz": lot, "stk": "", "optType": "", "expTime": "",
                     "uly": "" if kind == "SPOT" else "-".join(parts[:2]), "instFamily": "", "state": "live"})
    return {"code": "0", "msg": "", "data": data}


def bybit(category: str, symbols: list[str], factor: dict[str, int]) -> dict[str, Any]:
    items = []
    for s in symbols:
        tick, lot = terms(s, factor.get(s, 1))
        opt = parse_option(s)
        item: dict[str, Any] = {"symbol": s, "status": "Trading", "baseCoin": s[:3], "quoteCoin": "USDT",
                                "settleCoin": "USDT", "priceFilter": {"tickSize": tick},
                                "lotSizeFilter": {"qtyStep": lot, "minOrderQty": lot}}
        if category in ("linear", "inverse"):
            item["contractType"] = "LinearPerpetual" if category == "linear" else "InversePerpetual"
            item["deliveryTime"] = "0"
        if opt is not None:
            item.update({"optionsType": "Call" if opt.call else "Put", "deliveryTime": str(opt.expiry_ns // 10**6),
                         "settleCoin": "USDC", "quoteCoin": "USDC"})
        items.append(item)
    return {"retCode": 0, "retMsg": "OK", "result": {"category": category, "list": items}, "time": 0}


def coinbase(symbols: list[str], factor: dict[str, int]) -> dict[str, Any]:
    products = []
    for s in symbols:
        tick, lot = terms(s, factor.get(s, 1))
        base, _, quote = s.partition("-")
        products.append({"product_id": s, "base_currency_id": base, "quote_currency_id": quote,
                         "quote_increment": tick, "base_increment": lot, "base_min_size": lot, "quote_min_size": "1",
                         "status": "online", "trading_disabled": False, "product_type": "SPOT"})
    return {"products": products, "num_products": len(products)}


def deribit_listed(currency: str) -> list[str]:
    """What the simulated Deribit lists for a currency whether or not anyone subscribed yet, as
    the real one lists every instrument: the perpetual, the next three monthly futures and a
    strike grid of calls and puts on each (BTC 40,000-100,000 by 5,000; ETH 1,000-4,000 by 250)."""
    import time

    from app.market.symbols import monthly_expiries

    grids = {"BTC": range(40_000, 100_001, 5_000), "ETH": range(1_000, 4_001, 250)}
    if currency not in grids:
        return []
    expiries = monthly_expiries(time.time_ns(), 3)
    return [f"{currency}-PERPETUAL", *(f"{currency}-{e}" for e in expiries),
            *(f"{currency}-{e}-{k}-{cp}" for e in expiries for k in grids[currency] for cp in "CP")]


#: What the simulated Hyperliquid and dYdX list whether or not anyone subscribed yet.
HYPERLIQUID_LISTED = ("BTC", "ETH", "SOL")
DYDX_LISTED = ("BTC-USD", "ETH-USD", "SOL-USD")


def hyperliquid(symbols: list[str]) -> dict[str, Any]:
    """``POST /info {"type":"meta"}``: the perpetuals' universe (``szDecimals`` from the lot)."""
    universe = []
    for s in symbols:
        _, lot = terms(s, 1)
        decimals = len(lot.partition(".")[2]) if "." in lot else 0
        universe.append({"name": s, "szDecimals": decimals, "maxLeverage": 40 if s in ("BTC", "ETH") else 20,
                         "marginTableId": 1})
    return {"universe": universe, "marginTables": []}


def dydx(symbols: list[str], factor: dict[str, int], closed: set[str] | None = None) -> dict[str, Any]:
    """``GET /v4/perpetualMarkets``: every market, keyed by ticker (also ``v4_markets``' subscribed contents)."""
    closed = closed or set()
    markets = {}
    for i, s in enumerate(symbols):
        tick, lot = terms(s, factor.get(s, 1))
        step = Decimal(lot)
        markets[s] = {"clobPairId": str(i), "ticker": s, "status": "FINAL_SETTLEMENT" if s in closed else "ACTIVE",
                      "oraclePrice": "0", "priceChange24H": "0", "volume24H": "0", "trades24H": 0,
                      "nextFundingRate": "0.0000125", "initialMarginFraction": "0.05",
                      "maintenanceMarginFraction": "0.03", "openInterest": "0", "atomicResolution": -10,
                      "quantumConversionExponent": -9, "tickSize": tick, "stepSize": lot, "stepBaseQuantums": 0,
                      "subticksPerTick": 100000, "marketType": "CROSS",
                      "minOrderBaseQuantums": int(step.scaleb(10))}
    return {"markets": markets}
