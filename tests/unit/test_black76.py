"""Black-76 pricer, implied volatility and greeks: properties, and Deribit's own numbers."""

from __future__ import annotations

import calendar
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.market import black76 as b
from app.market.symbols import parse_option
from tests.helpers import examples

forward = st.floats(100.0, 200_000.0)
moneyness = st.floats(-1.2, 1.2)  # ln(K/F)
vol = st.floats(0.05, 3.0)
years = st.floats(2 / 365, 3.0)


@settings(max_examples=examples(300), deadline=None)
@given(forward, moneyness, vol, years, st.booleans())
def test_price_to_iv_to_price_round_trips_to_1e10_where_vega_is_meaningful(f: float, m: float, sigma: float,
                                                                          t: float, call: bool) -> None:
    k = f * np.exp(m)
    p = b.price(f, k, t, sigma, call)
    iv, ok = b.implied_vol(p, f, k, t, call)
    vega = float(b.greeks(f, k, t, sigma, call)["vega"]) * 100  # per unit of volatility
    if vega < 1e-6 * f:  # a deep wing: the price barely moves with volatility, it may be flagged
        return
    assert bool(ok), (f, k, t, sigma, call, p)
    back = float(b.price(f, k, t, iv, call))
    assert abs(back - float(p)) <= 1e-10 * float(p), (back, p)
    assert abs(float(iv) - sigma) <= 1e-8 * sigma


@settings(max_examples=examples(200), deadline=None)
@given(forward, moneyness, vol, years, st.floats(0.5, 1.0))
def test_put_call_parity_of_our_prices(f: float, m: float, sigma: float, t: float, df: float) -> None:
    k = f * np.exp(m)
    c, p = b.price(f, k, t, sigma, True, df), b.price(f, k, t, sigma, False, df)
    assert abs(float(c - p) - df * (f - k)) <= 1e-9 * max(f, k)


@settings(max_examples=examples(200), deadline=None)
@given(forward, st.floats(-0.6, 0.6), st.floats(0.1, 2.0), st.floats(10 / 365, 2.0), st.booleans())
def test_greeks_agree_with_finite_differences_of_our_pricer(f: float, m: float, sigma: float, t: float,
                                                            call: bool) -> None:
    k = f * np.exp(m)
    g = b.greeks(f, k, t, sigma, call)
    h = f * 1e-6
    up, mid, down = (float(b.price(x, k, t, sigma, call)) for x in (f + h, f, f - h))
    assert float(g["delta"]) == pytest.approx((up - down) / (2 * h), abs=1e-7)
    hg = f * 1e-4
    up, down = float(b.price(f + hg, k, t, sigma, call)), float(b.price(f - hg, k, t, sigma, call))
    assert float(g["gamma"]) == pytest.approx((up - 2 * mid + down) / (hg * hg), rel=1e-3, abs=1e-9)
    dv = 1e-5
    vega_fd = (float(b.price(f, k, t, sigma + dv, call)) - float(b.price(f, k, t, sigma - dv, call))) / (2 * dv) / 100
    assert float(g["vega"]) == pytest.approx(vega_fd, rel=1e-5, abs=1e-9 * f)
    dt = 1e-5
    theta_fd = -(float(b.price(f, k, t + dt, sigma, call)) - float(b.price(f, k, t - dt, sigma, call))) / (2 * dt) / 365
    assert float(g["theta"]) == pytest.approx(theta_fd, rel=1e-4, abs=1e-9 * f)


@settings(max_examples=examples(300), deadline=None)
@given(forward, moneyness, vol, years, st.booleans(), st.floats(0.5, 1.0), st.floats(0.0, 0.1))
def test_one_option_in_floats_gives_the_vectorised_numbers(f: float, m: float, sigma: float, t: float, call: bool,
                                                           df: float, rate: float) -> None:
    """``price_one`` and ``greeks_one`` (the simulator's tickers) compute what ``price`` and
    ``greeks`` do, to the digits double precision keeps of a price of this size."""
    k = f * np.exp(m)
    assert b.price_one(f, k, t, sigma, call, df) == pytest.approx(float(b.price(f, k, t, sigma, call, df)),
                                                                  rel=1e-9, abs=1e-12 * f)
    one, many = b.greeks_one(f, k, t, sigma, call, df, rate), b.greeks(f, k, t, sigma, call, df, rate)
    assert set(one) == set(many)
    for name, value in one.items():
        assert value == pytest.approx(float(many[name]), rel=1e-9, abs=1e-12 * f), name


def test_prices_outside_the_no_arbitrage_bounds_are_flagged_not_invented() -> None:
    f, k, t = 100.0, np.array([90.0, 110.0, 110.0, 100.0]), 0.5
    prices = np.array([5.0, 0.0, 150.0, 20.0])  # below intrinsic, zero, above F, fine
    iv, ok = b.implied_vol(prices, f, k, t, np.array([True, True, True, True]))
    assert ok.tolist() == [False, False, False, True]
    assert np.isnan(iv[:3]).all()
    assert np.isfinite(iv[3])


def deribit_option_tickers(captures: Path) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for line in (captures / "cryptofeed" / "DERIBIT.ws.1.0").read_text().splitlines():
        if '"channel":"ticker.' in line:
            out.append(orjson.loads(line.split(": ", 1)[1])["params"]["data"])
    return out


@pytest.mark.captures
def test_our_black76_iv_and_delta_agree_with_deribit(captures: Path) -> None:
    """Deribit option tickers: our IV from the venue's mark price and underlying price agrees with
    its mark_iv within 0.02 vol points, its delta within 1e-4 (|delta| in 0.05..0.95, > 7 days)."""
    rows = deribit_option_tickers(captures)
    spec = [parse_option(d["instrument_name"]) for d in rows]
    f = np.array([d["underlying_price"] for d in rows])
    k = np.array([s.strike for s in spec])
    t = np.array([(s.expiry_ns / 1e6 - d["timestamp"]) / 1000 / 86400 / 365 for s, d in zip(spec, rows, strict=True)])
    call = np.array([s.call for s in spec])
    iv, ok = b.implied_vol(np.array([d["mark_price"] for d in rows]) * f, f, k, t, call)
    delta = b.greeks(f, k, t, iv, call)["delta"]
    venue_iv = np.array([d["mark_iv"] for d in rows]) / 100
    venue_delta = np.array([d["greeks"]["delta"] for d in rows])
    inside = (np.abs(venue_delta) >= 0.05) & (np.abs(venue_delta) <= 0.95) & (t > 7 / 365)
    assert inside.sum() >= 20, "too few tickers inside the checked region"
    assert ok[inside].all()
    iv_err, delta_err = np.abs(iv - venue_iv) * 100, np.abs(delta - venue_delta)
    assert iv_err[inside].max() <= 0.02, iv_err[inside].max()
    assert delta_err[inside].max() <= 1e-4, delta_err[inside].max()
    outside = ~inside & ok
    worst = np.argsort(-np.nan_to_num(iv_err * outside))[:3]
    for i in worst:  # what -rA shows: the larger residuals outside, and why
        why = "last days before expiry" if t[i] <= 7 / 365 else "deep wing (|delta| outside 0.05..0.95)"
        print(f"outside the checked region: {rows[i]['instrument_name']} {t[i] * 365:.2f} days, venue delta "
              f"{venue_delta[i]}: IV residual {iv_err[i]:.4f} vol points, delta residual {delta_err[i]:.2e} ({why})")


def test_expiry_is_0800_utc() -> None:
    s = parse_option("BTC-27MAR26-60000-C")
    assert s.expiry_ns == calendar.timegm((2026, 3, 27, 8, 0, 0)) * 10**9


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.tuples(forward, moneyness, vol, years, st.booleans(), st.sampled_from([1.0, 1.0, 0.5, 0.0, -1.0])),
                min_size=1, max_size=40))
def test_implied_vol_of_a_whole_array_is_each_options_own(options: list[tuple[float, float, float, float, bool,
                                                                                float]]) -> None:
    """The solver works on the options still unsolved only (those that converged drop out of the
    passes): every option's volatility is the one it gets alone, whatever the others in its array
    and whatever the array's shape (a 2-D array, a scalar)."""
    f = np.array([o[0] for o in options])
    k = f * np.exp([o[1] for o in options])
    t = np.array([o[3] for o in options])
    call = np.array([o[4] for o in options])
    px = b.price(f, k, t, np.array([o[2] for o in options]), call) * np.array([o[5] for o in options])
    together, determined = b.implied_vol(px, f, k, t, call)
    alone = [b.implied_vol(px[i], f[i], k[i], t[i], call[i]) for i in range(len(options))]
    assert all(np.shape(a[0]) == () for a in alone)
    assert np.array_equal(together, np.array([a[0] for a in alone]), equal_nan=True)
    assert np.array_equal(determined, np.array([a[1] for a in alone]))
    if len(options) % 2 == 0:  # the same as a 2-D array
        grid, _ = b.implied_vol(px.reshape(2, -1), f.reshape(2, -1), k.reshape(2, -1), t.reshape(2, -1),
                                call.reshape(2, -1))
        assert np.array_equal(grid.ravel(), together, equal_nan=True)


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.tuples(forward, moneyness, vol, years, st.booleans(), st.floats(-0.5, 0.5)), min_size=1,
                max_size=40))
def test_a_few_passes_solve_prices_as_venues_quote_them_and_a_guess_changes_no_answer(
        options: list[tuple[float, float, float, float, bool, float]]) -> None:
    """Prices rounded to a venue's tick (4 decimals of a coin premium): the solver stops an
    option once its price matches within the price's own rounding, so from a guess at the
    answer every option is solved within 10 passes (it took ~30, halving a bracket around
    Newton's noise, for in-the-money options whose time value is a difference of two large
    terms). A guess (the venue's own volatility, here off by up to half) moves where Newton
    starts, not the root."""
    f = np.array([o[0] for o in options])
    k = f * np.exp([o[1] for o in options])
    t = np.array([o[3] for o in options])
    sigma = np.array([o[2] for o in options])
    call = np.array([o[4] for o in options])
    px = np.round(b.price(f, k, t, sigma, call) / f, 4) * f
    full, determined = b.implied_vol(px, f, k, t, call)
    # what the price says of the volatility: the solver stops within the rounding of the price's
    # terms, so answers may differ where a change of volatility moves the price less than that
    # (deep in the money: ~1e-11 of the volatility), never by more than the price can tell
    rounding = 16 * np.finfo(float).eps * (px + np.maximum(f, k))
    for guess, passes in ((None, 40), (np.full(len(options), np.nan), 40),  # no guess: from the ATM approximation
                          (sigma * (1 + np.array([o[5] for o in options])), 60), (full, 10)):
        quick, ok = b.implied_vol(px, f, k, t, call, max_iter=passes, guess=guess)
        assert np.array_equal(ok, determined)
        assert np.all(np.abs(b.price(f, k, t, quick, call) - b.price(f, k, t, full, call))[ok] <= rounding[ok])
        assert np.allclose(quick[ok], full[ok], rtol=1e-8, atol=0)
