"""Risk: contract-spec valuation, the hedge decision's properties, rules and positions checking,
and the engine's determinism on synthetic event-time inputs."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import ConfigError
from app.market.instruments import Spec
from app.risk import positions as pos
from app.risk import valuation
from app.risk.engine import EngineSettings, RiskEngine, unit_size
from app.risk.rules import Rule, Sizing, hedge_size, load_rules, parse_rules, walk
from tests.helpers import examples
from tests.risk_reference import plain, typed

EXPIRY = 1_900_000_000 * 10**9  # 2030
T0 = 1_800_000_000 * 10**9


# -- valuation ------------------------------------------------------------------------------
@settings(max_examples=examples(200))
@given(notional=st.floats(-1e7, 1e7).filter(lambda x: abs(x) > 1), price=st.floats(100, 200_000))
def test_inverse_delta_is_the_finite_difference_of_its_usd_pnl_not_its_size(notional: float, price: float) -> None:
    book = valuation.Book([valuation.Leg("deribit:BTC-PERPETUAL", "inverse", notional, 1.0, price)])
    delta = book.exposure()["delta"]
    h = price * 1e-6
    up, down = valuation.pnl_inverse(notional, price, price + h), valuation.pnl_inverse(notional, price, price - h)
    fd = (up - down) / (2 * h)
    assert delta == pytest.approx(fd, rel=1e-6)
    assert delta == pytest.approx(notional / price, rel=1e-12)
    assert abs(delta) != pytest.approx(abs(notional))  # its size is USD, its delta coins
    # the scenario grid's full revaluation is the same P&L function
    moves = np.array([-0.5, -0.1, 0.0, 0.1, 1.0])
    grid = book.scenarios(moves, np.array([0.0]))[:, 0]
    want = [valuation.pnl_inverse(notional, price, price * (1 + m)) for m in moves]
    assert grid == pytest.approx(want, rel=1e-9, abs=1e-6)


def test_option_greeks_agree_with_finite_differences_of_the_scenario_revaluation() -> None:
    leg = valuation.Leg("deribit:BTC-27MAR30-70000-C", "option", 10.0, 1.0, 65_000.0, 70_000.0, True, 0.25, 0.6)
    book = valuation.Book([leg])
    exp = book.exposure()
    h = 1e-5
    pnl = book.scenarios(np.array([-h, h]), np.array([-0.0001, 0.0, 0.0001]))
    delta_fd = (pnl[1, 1] - pnl[0, 1]) / (2 * h * leg.price)
    assert exp["delta"] == pytest.approx(delta_fd, rel=1e-5)
    vega_fd = (book.scenarios(np.array([0.0]), np.array([0.0001]))[0, 0]
               - book.scenarios(np.array([0.0]), np.array([-0.0001]))[0, 0]) / 0.02  # per vol point
    assert exp["vega"] == pytest.approx(vega_fd, rel=1e-5)
    assert exp["delta_usd"] == pytest.approx(exp["delta"] * 65_000.0)
    # gamma per 1 %: how much the coin delta changes when the underlying rises 1 %
    up = valuation.Book([valuation.Leg(leg.key, "option", 10.0, 1.0, 65_000.0 * 1.0001, 70_000.0, True, 0.25, 0.6)])
    down = valuation.Book([valuation.Leg(leg.key, "option", 10.0, 1.0, 65_000.0 * 0.9999, 70_000.0, True, 0.25, 0.6)])
    assert exp["gamma_1pct"] == pytest.approx((up.exposure()["delta"] - down.exposure()["delta"]) / 0.0002 * 0.01,
                                              rel=1e-4)


def test_unit_sizes_follow_the_contract_spec() -> None:
    def spec(key: str, kind: str, margin: str, size: str | None, mult: str | None = None) -> Spec:
        return Spec(key=key, kind=kind, margin=margin, base="BTC", quote="USD", settle="BTC", contract_size=size,
                    multiplier=mult)

    assert unit_size(spec("deribit:BTC-PERPETUAL", "perpetual", "inverse", "10")) == 1.0  # Deribit sizes in USD
    assert unit_size(spec("binance-coinm:BTCUSD_PERP", "perpetual", "inverse", "100")) == 100.0  # USD per contract
    assert unit_size(spec("okx:BTC-USDT-SWAP", "perpetual", "linear", "0.01")) == 0.01  # coins per contract
    assert unit_size(spec("okx:BTC-USD-261225-60000-C", "option", "inverse", "0.01", "1")) == 0.01


# -- hedge decision -----------------------------------------------------------------------------
def _rule(trigger: float, target: float, state: str = "active") -> Rule:
    return Rule("r", "desk", "BTC", "delta", trigger, "deribit:BTC-PERPETUAL", target, 0, 100, state)


@settings(max_examples=examples(300))
@given(exposure=st.floats(-1000, 1000), trigger=st.floats(0.5, 50), frac=st.floats(0, 0.9),
       price=st.floats(1000, 200_000), lot=st.sampled_from(["10", "1", "100"]))
def test_after_a_signal_the_exposure_is_inside_the_band_and_inside_it_nothing_fires(
        exposure: float, trigger: float, frac: float, price: float, lot: str) -> None:
    rule = _rule(trigger, trigger * frac)
    per_unit = 1.0 / price  # one USD of a Deribit inverse perpetual, in coins
    size, why = hedge_size(exposure, rule, Sizing(per_unit, Decimal(lot), Decimal(lot), Decimal(0)))
    if abs(exposure) <= trigger:
        assert (size, why) == (Decimal(0), None)  # hysteresis: no signal inside ±trigger
        return
    if why is not None:
        assert size == 0
        assert "too coarse" in why or "below the minimum" in why
        assert float(lot) * per_unit / 2 > trigger - rule.target or abs(exposure) - rule.target < float(lot) * per_unit
        return
    after = exposure + float(size) * per_unit
    assert abs(after) <= trigger
    assert size % Decimal(lot) == 0
    # and the hedged exposure, being inside the band, asks for nothing more
    assert hedge_size(after, rule, Sizing(per_unit, Decimal(lot), Decimal(lot), Decimal(0))) == (Decimal(0), None)


def test_reduce_only_never_grows_the_position() -> None:
    rule = _rule(1.0, 0.0, "reduce-only")
    sizing = Sizing(1.0, Decimal("1"), Decimal("1"), Decimal("-3"))  # short 3 already
    assert hedge_size(5.0, rule, sizing)[0] == 0  # selling more would grow the short
    assert hedge_size(-5.0, rule, sizing)[0] == Decimal(3)  # buying back: at most the 3


def test_walking_the_book_averages_the_levels() -> None:
    price, filled = walk([["100", "1"], ["101", "2"], ["105", "10"]], 2.0)
    assert price == pytest.approx(100.5)
    assert filled == 2.0
    assert walk([["100", "1"]], 5.0) == (100.0, 1.0)


# -- rules file and positions -------------------------------------------------------------------
def test_rules_file_errors_name_the_rule_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nid = "a"\nportfolio = "desk"\nunderlying = "BTC"\ngreek = "rho"\ntrigger = 1\n'
                    'target = 2\nhedge = "nocolon"\nstate = "paused"\n'
                    '[[rule]]\nid = "b"\nportfolio = "desk"\nunderlying = "BTC"\ngreek = "delta"\ntrigger = "x"\n'
                    'hedge = "deribit:BTC-PERPETUAL"\nfoo = 1\n')
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    lines = str(err.value).splitlines()[1:]
    assert {line.strip() for line in lines} == {
        "rule 1 (a): greek: 'rho' is not one of delta, delta_usd, gamma_1pct, vega, margin_ratio",
        "rule 1 (a): target: 2.0 must be ≥ 0 and below trigger (1.0)",
        "rule 1 (a): hedge: 'nocolon' is not an instrument key (<venue>:<symbol>)",
        "rule 1 (a): state: 'paused' is not one of active, reduce-only, halted",
        "rule 2 (b): unknown field 'foo'",
        "rule 2 (b): trigger: 'x' is not a number",
    }
    yaml_path = tmp_path / "rules.yaml"
    yaml_path.write_text("rule:\n  - id: c\n    portfolio: desk\n    underlying: BTC\n    greek: delta\n"
                         "    trigger: 2\n    target: 0.5\n    hedge: deribit:BTC-PERPETUAL\n")
    assert load_rules(yaml_path)[0] == Rule("c", "desk", "BTC", "delta", 2.0, "deribit:BTC-PERPETUAL", 0.5)
    assert parse_rules({"rule": [{"id": "a"}] * 1})[1][0] == "rule 1 (a): portfolio: missing"


@pytest.mark.parametrize(("key", "value", "error"), [
    (b"desk|deribit:BTC-PERPETUAL", b'{"quantity": "ten"}', "quantity: 'ten' is not a number"),
    (b"desk|deribit:BTC-PERPETUAL", b'{"quantity": true}', "quantity: True is not a number"),
    (b"desk|deribit:BTC-PERPETUAL", b'{"avg_price": 1}', "quantity: missing"),
    (b"desk", b'{"quantity": 1}', "not <portfolio>|<instrument>"),
    (b"desk|BTC-PERPETUAL", b'{"quantity": 1}', "is not an instrument key"),
    (b"desk|deribit:BTC-PERPETUAL", b"[1]", "not a JSON object"),
    (b"desk|deribit:BTC-PERPETUAL", b'{"quantity": "1", "portfolio": "other"}', "does not match"),
])
def test_a_bad_position_record_is_refused_whole(key: bytes, value: bytes, error: str) -> None:
    with pytest.raises(pos.PositionError, match=error):
        pos.parse(key, value)


def test_a_position_file_is_checked_before_any_row_is_used() -> None:
    text = "portfolio,instrument,quantity\ndesk,deribit:BTC-PERPETUAL,1000\ndesk,deribit:X,abc\n"
    with pytest.raises(pos.PositionError, match="position 2: quantity: 'abc'"):
        pos.load_file(text, "csv")
    got = pos.load_file('[[position]]\nportfolio = "desk"\ninstrument = "deribit:BTC-PERPETUAL"\nquantity = -2000\n',
                        "toml", ts=5)
    assert got == [pos.Position("desk", "deribit:BTC-PERPETUAL", Decimal(-2000), None, 5)]
    assert pos.parse(got[0].key.encode(), got[0].encode()) == got[0]
    assert pos.parse(got[0].key.encode(), None) is None


# -- the engine -----------------------------------------------------------------------------------
OPTION = "deribit:BTC-27MAR30-70000-C"


def _spec_records() -> list[dict[str, Any]]:
    perp = Spec(key="deribit:BTC-PERPETUAL", kind="perpetual", margin="inverse", base="BTC", quote="USD",
                settle="BTC", contract_size="10", lot_size="10", min_size="10", valid_from=T0 - 10**9)
    opt = Spec(key=OPTION, kind="option", margin="inverse", base="BTC", quote="USD", settle="BTC", contract_size="1",
               strike="70000", option_type="call", expiry_ns=EXPIRY, valid_from=T0 - 10**9)
    return [orjson.loads(s.encode()) for s in (perp, opt)]


def _market(seconds: int, seed: int = 1, stale_at: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Synthetic inputs: the forward drifts up 5 % over the run; perp book, depth, option ticker."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = [("ref.instruments", s) for s in _spec_records()]
    for i in range(seconds * 10):
        t = T0 + i * 100_000_000
        f = 65_000 * (1 + 0.05 * i / (seconds * 10))
        bid, ask = round(f - 0.5, 1), round(f + 0.5, 1)
        if stale_at is not None and i == stale_at:
            out.append(("book.status", {"venue": "deribit", "instrument": "BTC-PERPETUAL", "state": "stale",
                                        "reason": "gap", "seq": i, "ts_recv": t}))
        out.append(("book.top", {"venue": "deribit", "instrument": "BTC-PERPETUAL", "bid_px": str(bid),
                                 "ask_px": str(ask), "seq": i + 1, "ts_recv": t}))
        out.append(("risk.depth", {"key": "deribit:BTC-PERPETUAL", "bids": [[str(bid), "50000"], [str(bid - 1), "1e6"]],
                                   "asks": [[str(ask), "50000"], [str(ask + 1), "1e6"]], "seq": i + 1, "ts_recv": t}))
        if rng.random() < 0.8:
            out.append(("ticker", {"key": OPTION, "mark": str(round(0.08 * (f / 65_000) ** 8, 6)),
                                   "underlying_price": str(f), "mark_iv": "0.6", "delta": "0.4", "ts_recv": t + 1,
                                   "source": {"topic": "raw.deribit", "partition": 0, "offset": i, "index": 0}}))
    return out


def _run(inputs: list[tuple[str, dict[str, Any]]], quantity: str = "20") -> list[tuple[str, str, dict[str, Any]]]:
    rule = Rule("desk-delta", "desk", "BTC", "delta", 2.0, "deribit:BTC-PERPETUAL", 0.5, 5.0, 4)
    engine = RiskEngine(EngineSettings(interval_ms=250, scenario_interval_ms=1000, max_input_age_ms=2000), [rule])
    out = engine.on_position(f"desk|{OPTION}", pos.make("desk", OPTION, quantity, ts=0))
    for kind, body in inputs:
        out += engine.on_input(kind, typed(kind, body))
    return plain(out)


def _ordered(inputs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    rank = {"ref.instruments": 0, "book.status": 1, "book.top": 2, "risk.depth": 3, "ticker": 4}
    return sorted(inputs, key=lambda kb: (kb[1].get("ts_recv", kb[1].get("valid_from")), rank[kb[0]]))


def test_the_engine_signals_on_a_move_with_deterministic_ids_and_ignores_redelivery() -> None:
    inputs = _market(60)
    first = _run(inputs)
    signals = [b for t, _, b in first if t == "risk.hedge" and b["type"] == "signal"]
    assert signals, "a 5 % move of 20 calls must push delta out of ±2"
    for s in signals:
        assert s["side"] in ("buy", "sell")
        assert Decimal(s["size"]) % 10 == 0  # the perpetual's lot
        assert abs(s["exposure_after"]) <= 2.0 < abs(s["exposure_before"])
        assert s["expected_price"] is not None
        assert s["slippage_bps"] >= 0
    gaps = [b - a for a, b in zip([s["ts"] for s in signals], [s["ts"] for s in signals][1:], strict=False)]
    assert all(g >= 5 * 10**9 for g in gaps)  # cooldown
    # redelivered inputs (the first half of them twice) change nothing
    again = _run(_ordered(inputs + [(k, dict(b)) for k, b in inputs[: len(inputs) // 2]]))
    assert [o for o in again if o[0] == "risk.hedge"] == [o for o in first if o[0] == "risk.hedge"]
    exposures = [b for t, _, b in first if t == "risk.exposure"]
    assert all(b["ok"] for b in exposures if b["ts"] > T0 + 10**9)
    grids = [b for t, _, b in first if t == "risk.scenarios"]
    assert grids
    assert all(len(g["pnl_usd"]) == 11 and len(g["pnl_usd"][0]) == 3 for g in grids)


def test_a_stale_hedge_book_blocks_once_and_never_signals() -> None:
    inputs = _market(60, stale_at=0)
    out = _run(inputs)
    hedge = [b for t, _, b in out if t == "risk.hedge"]
    assert [b["type"] for b in hedge] == ["blocked"]
    assert "deribit:BTC-PERPETUAL stale" in hedge[0]["reason"]


def test_a_rule_for_a_portfolio_without_positions_is_blocked_once() -> None:
    rule = Rule("ghost", "nobody", "BTC", "delta", 1.0, "deribit:BTC-PERPETUAL")
    engine = RiskEngine(EngineSettings(), [rule])
    out = []
    for kind, body in _market(5):
        out += engine.on_input(kind, typed(kind, body))
    blocked = [b for t, _, b in out if t == "risk.hedge"]
    assert [b.reason for b in blocked] == ["unknown portfolio 'nobody': it holds no positions"]


# -- alerts and NBBO ----------------------------------------------------------------------------
def _spot(key: str, base: str, quote: str) -> Spec:
    return Spec(key=key, kind="spot", margin="linear", base=base, quote=quote, settle=quote)


def test_alerts_are_raised_once_and_cleared_once() -> None:
    from app.market.instruments import Registry
    from app.risk.alerts import Alerts, AlertSettings

    alerts = Alerts(AlertSettings(stale_s=2, spread_bps=10, funding_jump=0.001), Registry())
    s = 10**9
    assert alerts.on_top("okx:BTC-USDT-SWAP", 100.0, 100.05, s) == []  # 5 bps
    crossed = alerts.on_top("okx:BTC-USDT-SWAP", 100.1, 100.0, 2 * s)
    assert [(o[2].kind, o[2].state) for o in crossed] == [("crossed", "raised")]
    assert alerts.on_top("okx:BTC-USDT-SWAP", 100.2, 100.1, 3 * s) == []  # still crossed: nothing new
    wide = alerts.on_top("okx:BTC-USDT-SWAP", 100.0, 100.5, 4 * s)  # uncrossed, 50 bps wide
    assert [(o[2].kind, o[2].state) for o in wide] == [("crossed", "cleared"), ("spread", "raised")]
    assert alerts.on_top("deribit:BTC-25DEC26-65000-C", 0.01, 0.02, 4 * s) == []  # options: no spread alert
    assert [o[2].state for o in alerts.on_top("okx:BTC-USDT-SWAP", 100.0, 100.01, 5 * s)] == ["cleared"]
    assert alerts.on_status("okx:BTC-USDT-SWAP", "stale", "gap", 6 * s) == []
    assert alerts.tick(7 * s, {}, {"okx:BTC-USDT-SWAP": "stale"}, 10 * s) == []  # 1 s: not yet
    stale = alerts.tick(8_500_000_000, {}, {"okx:BTC-USDT-SWAP": "stale"}, 10 * s)
    assert [(o[2].kind, o[2].state) for o in stale] == [("stale", "raised")]
    assert alerts.tick(9 * s, {}, {"okx:BTC-USDT-SWAP": "stale"}, 10 * s) == []
    assert [o[2].state for o in alerts.on_status("okx:BTC-USDT-SWAP", "synced", "", 10 * s)] == ["cleared"]
    from app.market.chain import Quote

    q = Quote()
    q.update({"funding_rate": "0.0001"}, 0, 0, None)
    assert alerts.on_ticker("okx:BTC-USDT-SWAP", q, 11 * s) == []
    q.update({"funding_rate": "0.0021"}, 0, 0, None)
    jump = alerts.on_ticker("okx:BTC-USDT-SWAP", q, 12 * s)
    assert [(o[2].kind, o[2].value) for o in jump] == [("funding-jump", 0.0021)]
    assert alerts.active_by_kind() == {}


def test_nbbo_maps_pairs_through_the_registry_and_flags_a_diverging_venue() -> None:
    from app.market.instruments import Registry
    from app.risk.alerts import Alerts, AlertSettings
    from app.risk.engine import MarketTop

    registry = Registry()
    for key, quote in (("binance:BTCUSDT", "USDT"), ("okx:BTC-USDT", "USDT"), ("coinbase:BTC-USD", "USD"),
                       ("bybit-spot:BTCUSDT", "USDT")):
        registry.apply(_spot(key, "BTC", quote))
    alerts = Alerts(AlertSettings(divergence_bps=50), registry)
    t = 10**12
    tops = {"binance:BTCUSDT": MarketTop(65_000.0, 65_001.0, t, 1),
            "okx:BTC-USDT": MarketTop(65_000.5, 65_002.0, t, 1),
            "coinbase:BTC-USD": MarketTop(64_999.0, 65_000.8, t, 1),
            "bybit-spot:BTCUSDT": MarketTop(65_500.0, 65_501.0, t, 1),
            "deribit:BTC-PERPETUAL": MarketTop(1.0, 2.0, t, 1)}  # not spot: not in the NBBO
    out = alerts.tick(t + 1, tops, {}, 10**10)
    nbbo = [o[2] for o in out if o[0] == "nbbo"]
    assert len(nbbo) == 1
    assert (nbbo[0].pair, nbbo[0].bid, nbbo[0].bid_venue) == ("BTC/USD", 65_500.0, "bybit-spot:BTCUSDT")
    assert (nbbo[0].ask, nbbo[0].ask_venue, nbbo[0].ask_quote) == (65_000.8, "coinbase:BTC-USD", "USD")
    diverging = [o[2].key for o in out if o[0] == "alerts" and o[2].kind == "divergence"]
    assert diverging == ["bybit-spot:BTCUSDT"]  # ~77 bps from the median of the others
    assert [o for o in alerts.tick(t + 2, tops, {}, 10**10) if o[0] == "nbbo"] == []  # unchanged: not again
    stale = alerts.tick(t + 3, tops, {"bybit-spot:BTCUSDT": "stale"}, 10**10)  # a stale book leaves the NBBO
    assert [o[2].bid_venue for o in stale if o[0] == "nbbo"] == ["okx:BTC-USDT"]
    assert [(o[2].key, o[2].state) for o in stale if o[0] == "alerts"] == [("bybit-spot:BTCUSDT", "cleared")]


def test_an_instrument_listed_after_a_tick_joins_the_nbbo_at_the_next() -> None:
    """The alerts keep which instruments are compared across venues by the registry's
    generation: a version added after a tick is in the next one."""
    from app.market.instruments import Registry
    from app.risk.alerts import Alerts, AlertSettings
    from app.risk.engine import MarketTop

    registry = Registry()
    registry.apply(_spot("binance:BTCUSDT", "BTC", "USDT"))
    alerts = Alerts(AlertSettings(divergence_bps=50), registry)
    t = 10**12
    tops = {"binance:BTCUSDT": MarketTop(65_000.0, 65_001.0, t, 1), "okx:BTC-USDT": MarketTop(65_000.5, 65_002.0, t, 1)}
    first = [o[2] for o in alerts.tick(t + 1, tops, {}, 10**10) if o[0] == "nbbo"]
    assert [[v.key for v in n.venues] for n in first] == [["binance:BTCUSDT"]]  # okx: not listed yet
    generation = registry.generation
    assert registry.apply(_spot("okx:BTC-USDT", "BTC", "USDT"))
    assert registry.generation == generation + 1
    assert not registry.apply(_spot("okx:BTC-USDT", "BTC", "USDT"))  # the same terms: no new version
    assert registry.generation == generation + 1
    second = [o[2] for o in alerts.tick(t + 2, tops, {}, 10**10) if o[0] == "nbbo"]
    assert [[v.key for v in n.venues] for n in second] == [["binance:BTCUSDT", "okx:BTC-USDT"]]


def _listed(venue: str, body: dict[str, object]) -> list[Spec]:
    """Specs as the registry gets them: the venue's own instrument-list parser on its list."""
    from app.venues import INSTRUMENT_LISTS

    specs = INSTRUMENT_LISTS[venue].parse(orjson.dumps(body))
    assert specs, venue
    return specs


def _perpetual_lists() -> list[Spec]:
    return [
        *_listed("binance-usdm", {"timezone": "UTC", "symbols": [
            {"symbol": "BTCUSDT", "contractType": "PERPETUAL", "baseAsset": "BTC", "quoteAsset": "USDT",
             "marginAsset": "USDT", "status": "TRADING", "filters": []}]}),
        *_listed("okx", {"code": "0", "msg": "", "data": [  # a swap names no base or quote currency
            {"instType": "SWAP", "instId": "BTC-USDT-SWAP", "ctType": "linear", "ctVal": "0.01", "ctValCcy": "BTC",
             "settleCcy": "USDT", "baseCcy": "", "quoteCcy": "", "uly": "BTC-USDT", "state": "live"}]}),
        *_listed("bybit-linear", {"retCode": 0, "result": {"category": "linear", "list": [
            {"symbol": "BTCUSDT", "contractType": "LinearPerpetual", "baseCoin": "BTC", "quoteCoin": "USDT",
             "settleCoin": "USDT", "status": "Trading"}]}}),
        *_listed("hyperliquid", {"universe": [{"name": "BTC", "szDecimals": 5, "maxLeverage": 40}]}),
        *_listed("dydx", {"markets": {"BTC-USD": {"ticker": "BTC-USD", "status": "ACTIVE", "tickSize": "1",
                                                  "stepSize": "0.0001", "initialMarginFraction": "0.05",
                                                  "maintenanceMarginFraction": "0.03"}}}),
        *_listed("deribit", {"result": [  # inverse: coin-margined, not in the dollar group
            {"instrument_name": "BTC-PERPETUAL", "kind": "future", "settlement_period": "perpetual",
             "instrument_type": "reversed", "base_currency": "BTC", "quote_currency": "USD",
             "settlement_currency": "BTC", "contract_size": 10}]}),
    ]


def test_linear_dollar_perpetuals_of_every_venue_form_their_own_nbbo_group_apart_from_spot() -> None:
    from app.market.instruments import Registry
    from app.risk.alerts import Alerts, AlertSettings, group_of
    from app.risk.engine import MarketTop

    registry = Registry()
    for spec in [_spot("binance:BTCUSDT", "BTC", "USDT"), _spot("coinbase:BTC-USD", "BTC", "USD"),
                 *_perpetual_lists()]:
        registry.apply(spec)
    assert {key: group_of(v[-1]) for key, v in registry.versions.items()} == {
        "binance:BTCUSDT": "BTC/USD", "coinbase:BTC-USD": "BTC/USD",
        "binance-usdm:BTCUSDT": "BTC/USD perp", "okx:BTC-USDT-SWAP": "BTC/USD perp",
        "bybit-linear:BTCUSDT": "BTC/USD perp", "hyperliquid:BTC": "BTC/USD perp", "dydx:BTC-USD": "BTC/USD perp",
        "deribit:BTC-PERPETUAL": None}
    alerts = Alerts(AlertSettings(divergence_bps=50), registry)
    t = 10**12
    tops = {"binance:BTCUSDT": MarketTop(65_000.0, 65_001.0, t, 1),
            "coinbase:BTC-USD": MarketTop(64_999.0, 65_000.8, t, 1),
            # perpetuals 5 bps over spot: their bids above spot's asks are a basis, not a crossed NBBO
            "binance-usdm:BTCUSDT": MarketTop(65_030.0, 65_030.1, t, 1),
            "okx:BTC-USDT-SWAP": MarketTop(65_029.9, 65_030.1, t, 1),
            "bybit-linear:BTCUSDT": MarketTop(65_030.0, 65_030.2, t, 1),
            "hyperliquid:BTC": MarketTop(65_031.0, 65_032.0, t, 1),
            "dydx:BTC-USD": MarketTop(65_400.0, 65_401.0, t, 1),  # ~57 bps over the others
            "deribit:BTC-PERPETUAL": MarketTop(65_100.0, 65_100.5, t, 1)}
    out = alerts.tick(t + 1, tops, {}, 10**10)
    nbbo = {o[2].pair: o[2] for o in out if o[0] == "nbbo"}
    assert sorted(nbbo) == ["BTC/USD", "BTC/USD perp"]
    spot, perp = nbbo["BTC/USD"], nbbo["BTC/USD perp"]
    assert (spot.bid, spot.bid_venue, spot.ask, spot.ask_venue) == (65_000.0, "binance:BTCUSDT", 65_000.8,
                                                                    "coinbase:BTC-USD")
    assert [v.key for v in perp.venues] == ["binance-usdm:BTCUSDT", "bybit-linear:BTCUSDT", "dydx:BTC-USD",
                                            "hyperliquid:BTC", "okx:BTC-USDT-SWAP"]
    assert {v.key: v.quote for v in perp.venues} == {
        "binance-usdm:BTCUSDT": "USDT", "bybit-linear:BTCUSDT": "USDT", "dydx:BTC-USD": "USD",
        "hyperliquid:BTC": "USD", "okx:BTC-USDT-SWAP": "USDT"}  # each venue's own quote (OKX: its settlement)
    assert (perp.bid, perp.bid_venue, perp.bid_quote) == (65_400.0, "dydx:BTC-USD", "USD")
    assert (perp.ask, perp.ask_venue, perp.ask_quote) == (65_030.1, "binance-usdm:BTCUSDT", "USDT")
    diverging = [o[2].key for o in out if o[0] == "alerts" and o[2].kind == "divergence"]
    assert diverging == ["dydx:BTC-USD"]  # against the perpetuals' median, not spot's
    back = dict(tops, **{"dydx:BTC-USD": MarketTop(65_031.0, 65_031.5, t + 2, 2)})
    cleared = alerts.tick(t + 3, back, {}, 10**10)
    assert [(o[2].key, o[2].state) for o in cleared if o[0] == "alerts"] == [("dydx:BTC-USD", "cleared")]
    assert [o[2].bid_venue for o in cleared if o[0] == "nbbo"] == ["hyperliquid:BTC"]


def test_a_position_script_is_ordered_by_its_times_and_checked_whole() -> None:
    text = ('[[position]]\nportfolio = "demo"\ninstrument = "deribit:BTC-PERPETUAL"\nquantity = -1000\nat_s = 5\n'
            '[[position]]\nportfolio = "demo"\ninstrument = "deribit:BTC-PERPETUAL"\nquantity = 0\nat_s = 1.5\n')
    script = pos.load_script(text, "toml")
    assert [(at, str(p.quantity)) for at, p in script] == [(1.5, "0"), (5.0, "-1000")]
    with pytest.raises(pos.PositionError, match="at_s: -1"):
        pos.load_script(text.replace("at_s = 5", "at_s = -1"), "toml")
    with pytest.raises(pos.PositionError, match="unknown field"):
        pos.load_file(text, "toml")  # a book has no times


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(st.sampled_from(["last", "mark", "bid", "ask", "funding_rate", "mark_iv",
                                                            "delta", "state", "next_funding_ts"]),
                                          st.none() | st.sampled_from(["0", "1.5", "", "-2e-3"])),
                          st.integers(0, 50)), min_size=1, max_size=12))
def test_the_engine_merges_tickers_field_by_field_as_a_dict_would(tickers: list[tuple[dict[str, Any], int]]) -> None:
    """Each ticker's fields that are not null replace the instrument's (a partial one keeps the
    rest; an empty or zero value is a value), its exchange time only moves forward, and the
    latest ticker's source is kept: the engine's C-level merge against a plain dict merge."""
    from app.market.records import TICKER_FIELDS
    from app.records import TickerRecord
    from app.records.common import Source

    engine = RiskEngine(EngineSettings(), [])
    want: dict[str, Any] = {}
    newest = 0
    for i, (fields, ts_exchange) in enumerate(tickers):
        values = {k: (None if v is None else 7 if k == "next_funding_ts" else v) for k, v in fields.items()}
        src = Source(topic="raw.okx", partition=0, offset=i, index=0)
        record = TickerRecord(key="okx:BTC-USDT-SWAP", channel="tickers", partial=True, ts_exchange=ts_exchange,
                              ts_recv=10**9 + i, ts_published=10**9 + i, source=src, **values)
        engine.on_input("ticker", record)
        want.update((k, v) for k, v in values.items() if v is not None)
        newest = max(newest, ts_exchange)
        quote = engine.tickers["okx:BTC-USDT-SWAP"]
        assert quote.fields == want
        assert set(quote.fields) <= set(TICKER_FIELDS)
        assert (quote.ts_exchange, quote.ts_recv, quote.source) == (newest, 10**9 + i, src)
