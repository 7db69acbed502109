"""Risk in Hyperliquid and dYdX perpetuals: positions accepted, valued at the venue's mark, counted
in exposure, and margined by what each venue publishes per market.

The specs come from each venue's own instrument-list parser (Hyperliquid ``meta``, dYdX
``/v4/perpetualMarkets``) and the marks from its own market parser (``activeAssetCtx``,
``v4_markets``): the registry and ticker fields exactly as the worker publishes them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from app.market.instruments import Registry, Spec
from app.risk import positions as pos
from app.risk.engine import DeskEvent, EngineSettings, RiskEngine
from app.risk.margin import MarginLeg, account_margin, fraction_margin, load_params, published_fractions
from app.risk.whatif import simulate
from app.venues import INSTRUMENT_LISTS, MARKETS, VENUE_MARKETS
from app.venues.base import Kind
from tests.risk_reference import plain, typed

HL, DYDX = "hyperliquid:BTC", "dydx:BTC-USD"
T = 1_788_490_065_000_000_000
META = {"universe": [{"name": "BTC", "szDecimals": 5, "maxLeverage": 40},
                     {"name": "ETH", "szDecimals": 4, "maxLeverage": 25},
                     {"name": "xyz:AAPL", "szDecimals": 3, "maxLeverage": 10}]}
PERPETUAL_MARKETS = {"markets": {"BTC-USD": {
    "clobPairId": "0", "ticker": "BTC-USD", "status": "ACTIVE", "oraclePrice": "60000", "nextFundingRate": "0",
    "initialMarginFraction": "0.05", "maintenanceMarginFraction": "0.03", "openInterest": "1891.47",
    "atomicResolution": -10, "quantumConversionExponent": -9, "tickSize": "1", "stepSize": "0.0001",
    "stepBaseQuantums": 1000000, "subticksPerTick": 100000, "minOrderBaseQuantums": 1000000}}}


def specs() -> list[Spec]:
    hl = INSTRUMENT_LISTS["hyperliquid"].parse(orjson.dumps(META))
    dydx = INSTRUMENT_LISTS["dydx"].parse(orjson.dumps(PERPETUAL_MARKETS))
    assert hl is not None
    assert dydx is not None
    return [*hl, *dydx]


def marks(hl_mark: str, dydx_oracle: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, ticker fields) as the venues' parsers give them."""
    _, (ctx,) = MARKETS["hyperliquid"].parse_market(Kind.WS, orjson.dumps({"channel": "activeAssetCtx", "data": {
        "coin": "BTC", "ctx": {"markPx": hl_mark, "midPx": hl_mark, "oraclePx": hl_mark, "funding": "0.0000125",
                               "openInterest": "10312.2", "premium": "0.0001"}}}), "BTC")
    (oracle,) = VENUE_MARKETS["dydx"].parse_venue_market(Kind.WS, orjson.dumps({
        "type": "channel_data", "connection_id": "c", "message_id": 9, "channel": "v4_markets", "version": "1.0.0",
        "contents": {"oraclePrices": {"BTC-USD": {"oraclePrice": dydx_oracle, "effectiveAt": "2026-09-04T00:07:45Z",
                                                  "effectiveAtHeight": "53123002", "marketId": 0}}}}))
    return [(HL, ctx.fields), (DYDX, oracle.fields)]


def test_the_registry_gets_linear_usdc_perpetuals_with_contract_size_and_margin_terms() -> None:
    by_key = {s.key: s for s in specs()}
    hl, dydx = by_key[HL], by_key[DYDX]
    assert (hl.kind, hl.margin, hl.base, hl.quote, hl.settle, hl.contract_size, hl.lot_size, hl.max_leverage) == (
        "perpetual", "linear", "BTC", "USD", "USDC", "1", "0.00001", "40")
    assert (dydx.kind, dydx.margin, dydx.base, dydx.quote, dydx.settle, dydx.contract_size, dydx.tick_size,
            dydx.lot_size, dydx.initial_margin, dydx.maintenance_margin) == (
        "perpetual", "linear", "BTC", "USD", "USDC", "1", "1", "0.0001", "0.05", "0.03")
    assert by_key["hyperliquid:xyz:AAPL"].base == "AAPL"


def test_positions_in_their_perpetuals_are_accepted_by_the_command_and_its_files() -> None:
    registry = Registry()
    for spec in specs():
        registry.apply(spec)
    rows = pos.load_file("portfolio,instrument,quantity,avg_price\n"
                         "desk,hyperliquid:BTC,-2.5,80000\n"
                         "desk,dydx:BTC-USD,1.25,\n"
                         "desk,hyperliquid:xyz:AAPL,10,231.5\n", "csv", ts=T)
    assert [(p.instrument, str(p.quantity)) for p in rows] == [
        (HL, "-2.5"), (DYDX, "1.25"), ("hyperliquid:xyz:AAPL", "10")]
    # `positions set` refuses what the registry does not know (app.risk.cli._require_known)
    assert [p.instrument for p in rows if p.instrument not in registry.versions] == []
    toml = pos.load_file('[[position]]\nportfolio = "desk"\ninstrument = "dydx:BTC-USD"\nquantity = -0.5\n', "toml",
                         ts=T)
    assert toml[0].key == "desk|dydx:BTC-USD"
    assert pos.parse(b"desk|dydx:BTC-USD", toml[0].encode()) == toml[0]


def engine_with_book(hl_qty: str, dydx_qty: str, hl_mark: str = "80000", dydx_oracle: str = "79990",
                     published: list[Any] | None = None) -> RiskEngine:
    """The engine with both venues' specs and marks, a position in each, 50,000 USDC of collateral;
    ``published``: gets what the positions published (their exposure at once)."""
    engine = RiskEngine(EngineSettings(), [])
    for spec in specs():
        engine.on_input("ref.instruments", spec.record())
    for key, fields in marks(hl_mark, dydx_oracle):
        engine.on_input("ticker", typed("ticker", {"key": key, **fields, "ts_recv": T}))
    out = engine.on_position(f"desk|{HL}", pos.make("desk", HL, hl_qty, "78000", ts=T))
    out += engine.on_position(f"desk|{DYDX}", pos.make("desk", DYDX, dydx_qty, "81000", ts=T))
    if published is not None:
        published += plain(out)
    engine.on_collateral("desk|USDC", Decimal("50000"))
    return engine


def test_their_positions_are_valued_at_the_venues_mark_and_counted_in_exposure() -> None:
    out: list[Any] = []
    engine_with_book("-2.5", "1.5", published=out)
    exposure = [b for topic, k, b in out if topic == "risk.exposure" and k == "desk|BTC"][-1]  # after both
    assert {p["instrument"]: (p["quantity"], p["price"], p["delta"], p["notional_usd"])
            for p in exposure["positions"]} == {HL: ("-2.5", 80000.0, -2.5, 2.5 * 80000),
                                                DYDX: ("1.5", 79990.0, 1.5, 1.5 * 79990)}
    assert exposure["delta"] == pytest.approx(-1.0)
    assert exposure["delta_usd"] == pytest.approx(-2.5 * 80000 + 1.5 * 79990)
    assert exposure["notional_usd"] == pytest.approx(2.5 * 80000 + 1.5 * 79990)
    assert exposure["flags"] == {}
    assert exposure["ok"]
    assert sorted(r["key"] for r in exposure["inputs"]) == [DYDX, HL]
    assert {r["field"] for r in exposure["inputs"]} == {"mark"}  # the venues' marks, not a book's mid


def test_each_venue_margins_by_its_published_fractions_in_usdc() -> None:
    engine = engine_with_book("-2.5", "1.5")
    out = plain(engine.tick(T + 250_000_000, scenarios=False))
    margin = {k: b for topic, k, b in out if topic == "risk.margin"}
    assert sorted(margin) == ["desk|dydx|USDC", "desk|hyperliquid|USDC"]
    hl, dydx = margin["desk|hyperliquid|USDC"], margin["desk|dydx|USDC"]
    # Hyperliquid: IM at max leverage 40 = 2.5 % of notional, MM half of it
    assert hl["method"] == "hyperliquid-max-leverage"
    assert (hl["im"], hl["mm"]) == (pytest.approx(200_000 * 0.025), pytest.approx(200_000 * 0.0125))
    assert hl["unrealized"] == pytest.approx(-2.5 * (80000 - 78000))
    # dYdX: notional at the oracle price × initialMarginFraction 0.05 / maintenanceMarginFraction 0.03
    assert dydx["method"] == "dydx-fractions"
    assert (dydx["im"], dydx["mm"]) == (pytest.approx(1.5 * 79990 * 0.05), pytest.approx(1.5 * 79990 * 0.03))
    assert dydx["components"] == {"notional": pytest.approx(1.5 * 79990)}
    assert dydx["unrealized"] == pytest.approx(1.5 * (79990 - 81000))
    for body in (hl, dydx):
        assert body["ok"]
        assert body["collateral"] == 50000.0  # one account's USDC, counted at each venue it has margin at
        assert body["mm_ratio"] == pytest.approx(body["mm"] / body["equity"])


def test_the_what_if_simulator_names_the_same_methods() -> None:
    engine = engine_with_book("-2.5", "1.5")
    book = [pos.make("what-if", HL, "-5", ts=T), pos.make("what-if", DYDX, "2", ts=T)]
    result = simulate(engine, book, T + 1, load_params())["what-if"]
    hl = result["venues"]["hyperliquid"]["hyperliquid-max-leverage"]
    dydx = result["venues"]["dydx"]["dydx-fractions"]
    assert hl["currencies"]["USDC"]["mm"] == pytest.approx(5 * 80000 * 0.0125)
    assert dydx["currencies"]["USDC"]["im"] == pytest.approx(2 * 79990 * 0.05)
    assert (hl["not_margined"], dydx["not_margined"]) == ([], [])


def test_published_fractions_are_only_what_the_venue_publishes() -> None:
    assert published_fractions("dydx", "0.05", "0.03", None) == (0.05, 0.03)
    assert published_fractions("hyperliquid", None, None, "40") == (0.025, 0.0125)
    assert published_fractions("hyperliquid", None, None, "3") == pytest.approx((1 / 3, 1 / 6))
    assert published_fractions("hyperliquid", None, None, None) is None  # no maxLeverage: no method
    assert published_fractions("hyperliquid", None, None, "0") is None
    assert published_fractions("dydx", "0.05", None, None) is None
    assert published_fractions("dydx", "0.03", "0.05", None) is None  # maintenance above initial: not margin
    assert published_fractions("dydx", "x", "0.03", None) is None
    assert published_fractions("binance-usdm", "0.05", "0.03", "20") is None  # other venues: their own methods


def test_a_leg_without_published_fractions_is_listed_not_margined_never_margined_as_zero() -> None:
    known = MarginLeg(HL, "perpetual", "USDC", -1.0, 80000.0, 80000.0, im_fraction=0.025, mm_fraction=0.0125)
    unknown = MarginLeg("hyperliquid:ETH", "perpetual", "USDC", 3.0, 3000.0, 3000.0)
    result = fraction_margin("hyperliquid", [known, unknown])
    assert result["not_margined"] == ["hyperliquid:ETH"]
    assert result["currencies"]["USDC"]["im"] == pytest.approx(2000.0)
    (usdc,) = account_margin("hyperliquid", [known, unknown], load_params()).values()
    assert (usdc["im"], usdc["mm"], usdc["not_margined"]) == (pytest.approx(2000.0), pytest.approx(1000.0),
                                                              ["hyperliquid:ETH"])
    assert account_margin("hyperliquid", [unknown], load_params()) == {}


def test_collateral_in_usdc_is_a_desk_event_of_that_currency() -> None:
    event = DeskEvent("desk|USDC", T, collateral=Decimal("100"), what="collateral")
    engine = engine_with_book("-1", "1")
    engine.on_input("collateral", event)
    assert engine.collateral[("desk", "USDC")] == 100.0
