"""app.risk.margin against the venues' published numbers, and the properties of the methods whose
text leaves terms open."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.risk.margin import (
    MarginError,
    MarginLeg,
    bybit_usdc_option,
    deribit_future,
    deribit_option,
    deribit_portfolio,
    deribit_standard,
    load_params,
    okx_portfolio,
)

P = load_params()


def perp(coins: float, settlement: str = "USDC", base: str = "BTC", price: float = 100_000.0) -> MarginLeg:
    symbol = f"{base}_USDC-PERPETUAL" if settlement == "USDC" else f"{base}-PERPETUAL"
    return MarginLeg(f"deribit:{symbol}", "perpetual", settlement, coins, price, price)


def option(coins: float, strike: float, call: bool = True, index: float = 60_000.0, days: float = 20.0,
           sigma: float = 0.6, mark: float | None = None, settlement: str = "BTC") -> MarginLeg:
    leg = MarginLeg(f"deribit:BTC-27DEC24-{int(strike)}-{'C' if call else 'P'}", "option", settlement, coins, index,
                    index, strike, call, days, sigma, 0.0)
    if mark is None:
        from app.market import black76

        usd = float(black76.price(index, strike, days / 365, sigma, call))
        mark = usd / index if leg.inverse else usd
    return replace(leg, mark=mark)


def test_deribit_linear_perpetual_matches_the_venues_worked_table() -> None:
    """Deribit support, "Linear Perpetual", index 100,000 (BTC) and 200 (SOL)."""
    m = deribit_future(perp(25), P)
    assert (m.im, m.mm) == (pytest.approx(53_125), pytest.approx(28_125))
    assert deribit_future(perp(-350), P).im == pytest.approx(1_312_500)  # short: the same
    sol = deribit_future(perp(25, base="SOL", price=200.0), P)
    assert (sol.im, sol.mm) == (pytest.approx(200.625), pytest.approx(100.625))
    assert deribit_future(perp(6_000, base="SOL", price=200.0), P).im == pytest.approx(84_000)


def test_deribit_inverse_futures_are_in_coin() -> None:
    m = deribit_future(perp(10, settlement="BTC", price=60_000.0), P)
    assert m.currency == "BTC"
    assert m.im == pytest.approx((0.02 + 10 * 0.00005) * 10)


def test_deribit_short_options_standard_margin_and_long_ones_none() -> None:
    call = deribit_option(option(-2, 70_000, mark=0.005), P)  # OTM 10,000 of 60,000: max(0.15 − 0.1667, 0.10)
    assert call.im == pytest.approx(2 * (0.10 + 0.005))
    assert call.mm == pytest.approx(2 * (0.075 + 0.005))
    put = deribit_option(option(-1, 62_000, call=False, mark=0.04), P)  # ITM: OTM 0
    assert put.mm == pytest.approx(max(0.075, 0.075 * 0.04) + 0.04)
    assert put.im == pytest.approx(max(0.15 + 0.04, put.mm))
    assert deribit_option(option(3, 70_000, mark=0.005), P).im == 0
    usdc = deribit_option(option(-1, 70_000, mark=300.0, settlement="USDC"), P)  # the same in USD
    assert usdc.im == pytest.approx(max(0.15 * 60_000 - 10_000, 0.10 * 60_000) + 300)
    assert usdc.mm == pytest.approx(0.075 * 60_000 + 300)
    totals = deribit_standard([option(-2, 70_000, mark=0.005), perp(1, settlement="BTC", price=60_000.0),
                               option(-1, 70_000, mark=300.0, settlement="USDC")], P)["currencies"]
    assert set(totals) == {"BTC", "USDC"}
    assert totals["BTC"]["im"] == pytest.approx(2 * 0.105 + (0.02 + 0.00005))


def test_deribit_portfolio_margin_matches_the_simulators_documented_example() -> None:
    """private/pme/simulate, BTC, 2024-06-17: BTC-PERPETUAL 0.314538364 and BTC-28JUN24 −0.001187534
    (coins; the future 11 days from expiry) with the example's parameters (the bundled file's)."""
    legs = [MarginLeg("deribit:BTC-PERPETUAL", "perpetual", "BTC", 0.314538364, 66_000.0, 66_000.0),
            MarginLeg("deribit:BTC-28JUN24", "future", "BTC", -0.001187534, 66_000.0, 66_100.0, days=11.0)]
    got = deribit_portfolio(legs, P, mmp_margin=0.06, open_orders_margin=0.000018212)["currencies"]["BTC"]
    assert got["worst_case"] == pytest.approx(0.05968587238095239, abs=1e-12)
    assert got["roll_shock"] == pytest.approx(0.00315725898, abs=1e-11)
    assert (got["delta_shock"], got["correlation_contingency"]) == (0, 0)
    assert got["risk_matrix_margin"] == pytest.approx(0.06284313098, abs=1e-9)
    assert got["mm"] == pytest.approx(0.050274504784, abs=1e-9)
    assert got["im"] == pytest.approx(0.122861343, abs=1e-9)
    vector = got["pairs"]["btc_usd"]["standard"]  # the example's aggregated_risk_vectors.btc_btc.standard
    assert vector[:3] == [pytest.approx(-0.05968587238095239, abs=1e-15)] * 3
    assert vector[3] == pytest.approx(-0.04272965863636364, abs=1e-15)
    assert vector[9] == pytest.approx(-0.013056284583333334, abs=1e-15)
    assert vector[12:] == [0] * 15  # the flat move and the gains: pnl_offset 0
    assert got["pairs"]["btc_usd"]["extended"] == [0] * 8


book = st.lists(st.tuples(st.floats(-5, 5).filter(lambda q: abs(q) > 1e-3), st.floats(40_000, 90_000),
                          st.booleans(), st.floats(1, 200)), min_size=1, max_size=6)


def _options(rows: list[tuple[float, float, bool, float]], scale: float = 1.0) -> list[MarginLeg]:
    return [option(q * scale, k, call, days=d) for q, k, call, d in rows]


@settings(max_examples=60, deadline=None)
@given(book)
def test_portfolio_margin_grows_with_the_size_of_a_short_book(rows: list[tuple[float, float, bool, float]]) -> None:
    shorts = [(-abs(q), k, c, d) for q, k, c, d in rows]
    small = deribit_portfolio(_options(shorts), P)["currencies"]["BTC"]["mm"]
    large = deribit_portfolio(_options(shorts, 2.0), P)["currencies"]["BTC"]["mm"]
    assert large >= small - 1e-12
    assert small > 0


def test_portfolio_margin_of_nothing_is_nothing_and_a_hedged_book_needs_less_than_either_leg() -> None:
    assert deribit_portfolio([], P)["currencies"] == {}
    flat = deribit_portfolio([option(1, 65_000), option(-1, 65_000)], P)["currencies"]["BTC"]
    assert flat["risk_matrix_margin"] == pytest.approx(0, abs=1e-12)
    long_perp = MarginLeg("deribit:BTC-PERPETUAL", "perpetual", "BTC", 2.0, 60_000.0, 60_000.0)
    short_fut = MarginLeg("deribit:BTC-27DEC24", "future", "BTC", -2.0, 60_000.0, 61_000.0, days=90.0)
    hedged = deribit_portfolio([long_perp, short_fut], P)["currencies"]["BTC"]["mm"]
    alone = [deribit_portfolio([leg], P)["currencies"]["BTC"]["mm"] for leg in (long_perp, short_fut)]
    assert 0 < hedged < min(alone)
    # a short call delta-hedged by the perpetual: less in the ±16 % matrix than the call alone (not
    # in the extended table: a long coin-settled perpetual loses 194 % of its size at −66 %)
    call = option(-3, 60_000, days=30)
    delta_hedge = MarginLeg("deribit:BTC-PERPETUAL", "perpetual", "BTC", 1.5, 60_000.0, 60_000.0)

    def matrix_worst(legs: list[MarginLeg]) -> float:
        return -min(deribit_portfolio(legs, P)["currencies"]["BTC"]["pairs"]["btc_usd"]["standard"])

    assert matrix_worst([call, delta_hedge]) < matrix_worst([call])


def test_the_extended_table_catches_a_far_out_of_the_money_short_book() -> None:
    far = [option(-40, 150_000, days=60)]  # +150 % away: nothing in ±16 %, a loss at +200 %
    got = deribit_portfolio(far, P)["currencies"]["BTC"]["pairs"]["btc_usd"]
    assert min(got["extended"]) < 0
    assert max(0, -min(got["extended"])) >= max(0, -min(got["standard"]))


def test_bybit_usdc_option_maintenance_margin_matches_the_worked_example() -> None:
    short_call = MarginLeg("bybit:BTC-27DEC24-32000-C", "option", "USDC", -1, 30_000.0, 30_000.0, 32_000.0, True,
                           30, 0.5, 300.0)
    m = bybit_usdc_option(short_call, P)
    assert m.mm == pytest.approx(1_260)
    assert m.im == pytest.approx(max(max(0.15 * 30_000 - 2_000, 0.10 * 30_000) + 300, 1_260))
    assert bybit_usdc_option(replace(short_call, coins=1), P).mm == 0


def test_okx_portfolio_margin_has_its_structure() -> None:
    legs = [option(-2, 65_000, settlement="USDC"), perp(1, price=60_000.0)]
    got = okx_portfolio(legs, P)
    parts = {k: got[k] for k in ("MR1", "MR2", "MR3", "MR4", "MR5", "MR6", "MR7", "MR9")}
    assert all(v >= 0 for v in parts.values())
    assert got["mm"] == pytest.approx(max(max(parts["MR1"], parts["MR2"], parts["MR6"]) + parts["MR4"] + parts["MR3"]
                                          + parts["MR5"] + parts["MR9"], parts["MR7"]))
    assert got["im"] == pytest.approx(1.3 * got["mm"])
    assert okx_portfolio([], P)["mm"] == 0


def test_a_bad_parameters_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "params.json"
    bad.write_text("{")
    with pytest.raises(MarginError, match="not JSON"):
        load_params(bad)
    bad.write_text(json.dumps({"as_of": "2026-01-01", "deribit": {}}))
    with pytest.raises(MarginError, match="no deribit.futures"):
        load_params(bad)
    with pytest.raises(MarginError, match="no futures family 'DOGE'"):
        deribit_future(perp(1, settlement="DOGE", base="DOGE"), P)


def test_margin_params_file_is_a_setting_checked_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import app.config as config
    from app.errors import ConfigError

    monkeypatch.setenv("MARGIN_PARAMS_FILE", str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="MARGIN_PARAMS_FILE"):
        config.load()
    mine = tmp_path / "params.json"
    mine.write_text(json.dumps({**P, "as_of": "2026-12-01"}))
    monkeypatch.setenv("MARGIN_PARAMS_FILE", str(mine))
    assert load_params(config.load().risk.margin_params_file)["as_of"] == "2026-12-01"


def test_what_if_prices_the_book_with_the_engine_and_margins_it_by_venue() -> None:
    """app.risk.whatif.simulate on an engine fed the synthetic market of tests/unit/test_risk.py:
    the perpetual (inverse, sized in USD) becomes coins at its price, the option takes the venue's
    mark in coin, and the figures equal the methods called on those legs directly."""
    from app.risk import positions as pos
    from app.risk.engine import EngineSettings, RiskEngine
    from app.risk.whatif import rows, simulate
    from tests.risk_reference import typed
    from tests.unit.test_risk import OPTION, _market

    engine = RiskEngine(EngineSettings(interval_ms=250, scenario_interval_ms=1000, max_input_age_ms=2000), [])
    inputs = _market(5)
    for kind, body in inputs:
        engine.on_input(kind, typed(kind, body))
    at = engine.now
    book = [pos.make("desk", OPTION, "-4", ts=at), pos.make("desk", "deribit:BTC-PERPETUAL", "100000", ts=at),
            pos.make("desk", "deribit:BTC-NOPE", "1", ts=at)]
    got = simulate(engine, book, at, P)["desk"]
    legs = {leg["key"]: leg for leg in got["legs"]}
    perp, opt = legs["deribit:BTC-PERPETUAL"], legs[OPTION]
    assert perp["coins"] == pytest.approx(100_000 / perp["price"])
    assert perp["settlement"] == "BTC"
    last_mark = float([b for k, b in inputs if k == "ticker"][-1]["mark"])
    assert (opt["coins"], opt["mark"]) == (-4, pytest.approx(last_mark))
    deribit = got["venues"]["deribit"]
    assert deribit["deribit-standard"]["currencies"]["BTC"]["im"] > 0
    assert deribit["deribit-portfolio"]["currencies"]["BTC"]["mm"] > 0
    direct = deribit_standard([MarginLeg(OPTION, "option", "BTC", -4.0, opt["index"], opt["price"], 70_000.0, True,
                                         opt["days"], opt["iv"], opt["mark"])], P)["legs"][0]
    (mine,) = [r for r in deribit["deribit-standard"]["legs"] if r["key"] == OPTION]
    assert mine["im"] == pytest.approx(direct["im"])
    assert "deribit:BTC-NOPE" in got["not_priced"]  # unknown to the registry: listed, not margined as zero
    table = rows({"desk": got})
    assert {(r[2], r[3]) for r in table} == {("deribit-standard", "BTC"), ("deribit-portfolio", "BTC")}
