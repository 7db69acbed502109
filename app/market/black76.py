"""Black-76 on forwards, vectorised with numpy: prices, implied volatility and greeks.

Conventions (the README's "Options conventions" says the same):

* inputs are arrays (or scalars) of forward ``F``, strike ``K``, time to expiry ``T`` in years
  of 365 days, volatility ``sigma`` as a decimal (0.55 = 55 %), ``is_call`` booleans and the
  discount factor ``df`` (1 when the venue's rate is 0, as Deribit's is);
* prices are in the forward's currency (USD for BTC options: a coin premium is converted first,
  ``premium_usd = price_coin × F``, as Deribit does);
* delta is d price / d F; gamma d²price / dF²; vega per 1 vol point (d price / d sigma / 100);
  theta per calendar day (d price / d calendar time / 365).

Implied volatility (:func:`implied_vol`) is solved on the out-of-the-money price (the call's
time value for K > F, the put's below), which has no intrinsic part to cancel, by Newton's
method on the logarithm of that price inside a bracket that halves whenever a step would leave
it; the logarithm makes the wings nearly linear, so a few steps reach machine precision. Points
where the volatility is not determined by the price — a price at or outside its no-arbitrage
bounds, or a time value so small that a change in volatility does not move it at double
precision — are NaN and flagged (:data:`UNDETERMINED`), never invented.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

Array = NDArray[np.float64]

_SQRT_2PI = np.sqrt(2.0 * np.pi)
#: An out-of-the-money price below this fraction of sqrt(F·K) does not determine volatility.
MIN_TIME_VALUE = 1e-12
MAX_SIGMA_SQRT_T = 20.0  # the bracket's upper end for sigma·sqrt(T)
UNDETERMINED = "undetermined"
_ROUNDING = 4 * np.finfo(np.float64).eps  # a price computed from terms of size x is exact to ~this·x


def _pdf(x: Array) -> Array:
    return np.exp(-0.5 * x * x) / _SQRT_2PI


def _arrays(*values: ArrayLike) -> list[Array]:
    return [np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(*values)]


def _d1d2(f: Array, k: Array, s: Array) -> tuple[Array, Array]:
    """d1, d2 for total volatility s = sigma·sqrt(T)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = np.log(f / k) / s + 0.5 * s
    return d1, d1 - s


def _otm(f: Array, k: Array, s: Array) -> Array:
    """The undiscounted out-of-the-money price (call for K ≥ F, put below) at total vol s."""
    return _otm_of(f, k, *_d1d2(f, k, s))


def _otm_of(f: Array, k: Array, d1: Array, d2: Array) -> Array:
    """:func:`_otm` from d1 and d2 already computed."""
    call = f * ndtr(d1) - k * ndtr(d2)
    put = k * ndtr(-d2) - f * ndtr(-d1)
    return np.where(k >= f, call, put)


def price(f: ArrayLike, k: ArrayLike, t: ArrayLike, sigma: ArrayLike, is_call: ArrayLike, df: ArrayLike = 1.0) -> Array:
    """Black-76 price of calls (``is_call``) and puts."""
    f_, k_, t_, v_, c_, df_ = _arrays(f, k, t, sigma, is_call, df)
    otm = _otm(f_, k_, v_ * np.sqrt(t_))
    intrinsic_call = np.maximum(f_ - k_, 0.0)
    intrinsic_put = np.maximum(k_ - f_, 0.0)
    # the OTM price plus, for the in-the-money side, its intrinsic value (put–call parity)
    out = np.where(c_.astype(bool), otm + intrinsic_call, otm + intrinsic_put)
    return np.asarray(df_ * out, dtype=np.float64)


def greeks(f: ArrayLike, k: ArrayLike, t: ArrayLike, sigma: ArrayLike, is_call: ArrayLike, df: ArrayLike = 1.0,
           rate: ArrayLike = 0.0) -> dict[str, Array]:
    """delta, gamma, vega (per vol point), theta (per calendar day) of Black-76."""
    f_, k_, t_, v_, c_, df_, r_ = _arrays(f, k, t, sigma, is_call, df, rate)
    sqrt_t = np.sqrt(t_)
    s = v_ * sqrt_t
    d1, _ = _d1d2(f_, k_, s)
    call = c_.astype(bool)
    pdf = _pdf(d1)
    delta = np.where(call, df_ * ndtr(d1), -df_ * ndtr(-d1))
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = df_ * pdf / (f_ * s)
        decay = -f_ * df_ * pdf * v_ / (2.0 * sqrt_t)
    vega = f_ * df_ * pdf * sqrt_t / 100.0
    theta = (decay + r_ * price(f_, k_, t_, v_, call, df_)) / 365.0
    return {"delta": delta, "gamma": gamma, "vega": vega, "theta": theta}


def price_one(f: float, k: float, t: float, sigma: float, call: bool, df: float = 1.0) -> float:
    """:func:`price` of one option in plain floats: the same formulas, for a caller pricing one
    option at a time (the simulator's tickers), where numpy's per-call cost is ~30× the math.
    For ``f``, ``k``, ``t`` and ``sigma`` > 0 only (a ZeroDivisionError or ValueError
    otherwise, where the vectorised functions give NaN or a limit)."""
    s = sigma * math.sqrt(t)
    d1 = math.log(f / k) / s + 0.5 * s
    d2 = d1 - s
    otm = f * _ndtr(d1) - k * _ndtr(d2) if k >= f else k * _ndtr(-d2) - f * _ndtr(-d1)
    return df * (otm + (max(f - k, 0.0) if call else max(k - f, 0.0)))


def greeks_one(f: float, k: float, t: float, sigma: float, call: bool, df: float = 1.0,
               rate: float = 0.0) -> dict[str, float]:
    """:func:`greeks` of one option in plain floats (see :func:`price_one`)."""
    sqrt_t = math.sqrt(t)
    s = sigma * sqrt_t
    d1 = math.log(f / k) / s + 0.5 * s
    pdf = math.exp(-0.5 * d1 * d1) / _SQRT_2PI_F
    delta = df * _ndtr(d1) if call else -df * _ndtr(-d1)
    decay = -f * df * pdf * sigma / (2.0 * sqrt_t)
    theta = (decay + (rate * price_one(f, k, t, sigma, call, df) if rate else 0.0)) / 365.0
    return {"delta": delta, "gamma": df * pdf / (f * s), "vega": f * df * pdf * sqrt_t / 100.0, "theta": theta}


def _ndtr(x: float) -> float:
    """The standard normal CDF, as scipy's ``ndtr`` computes it (erfc on the lower side)."""
    return 0.5 * math.erfc(-x / _SQRT_2)


_SQRT_2 = math.sqrt(2.0)
_SQRT_2PI_F = math.sqrt(2.0 * math.pi)


def implied_vol(prices: ArrayLike, f: ArrayLike, k: ArrayLike, t: ArrayLike, is_call: ArrayLike,
                df: ArrayLike = 1.0, max_iter: int = 60,
                guess: ArrayLike | None = None) -> tuple[Array, NDArray[np.bool_]]:
    """(sigma, determined) for each option price; sigma is NaN where ``determined`` is False.

    ``guess``: a volatility near the answer where one is known (NaN where not), such as the
    venue's own implied volatility of the same price: Newton then starts a few steps from the
    root instead of the ~10 from the at-the-money approximation that a far wing needs. It
    changes how many steps are taken; the answer only within what the price itself cannot tell
    apart (the stopping rule below)."""
    p_, f_, k_, t_, c_, df_ = _arrays(prices, f, k, t, is_call, df)
    call = c_.astype(bool)
    undiscounted = p_ / df_
    intrinsic = np.where(call, np.maximum(f_ - k_, 0.0), np.maximum(k_ - f_, 0.0))
    target = undiscounted - intrinsic  # the out-of-the-money (time) value
    upper = np.where(k_ >= f_, f_, k_)  # the OTM price tends to min(F, K) as vol grows
    scale = np.sqrt(f_ * k_)
    ok = (t_ > 0) & (f_ > 0) & (k_ > 0) & np.isfinite(target) & (target > MIN_TIME_VALUE * scale) & (target < upper)
    # first guess: the ATM approximation of the time value (Brenner–Subrahmanyam), inside the bracket
    s = np.where(ok, np.clip(target / scale * _SQRT_2PI, 1e-4, 5.0), 1.0)
    if guess is not None:
        with np.errstate(invalid="ignore"):
            near = np.broadcast_to(np.asarray(guess, dtype=np.float64), s.shape) * np.sqrt(np.maximum(t_, 0.0))
        s = np.where(ok & np.isfinite(near) & (near > 1e-4) & (near < MAX_SIGMA_SQRT_T), near, s)
    s = s.ravel()  # flat: written by index
    # Newton on the log price, bisecting where a step leaves the bracket, on the options still
    # unsolved only (those that converged drop out), with d1 computed once a pass. Every
    # option's result is the one it gets alone.
    #
    # An option also stops once its price at ``s`` equals its target within the rounding of
    # both: 4 ulps of the price's larger term, and of the whole price the target's intrinsic
    # value was taken from (an in-the-money option's time value is a difference of large
    # numbers either way). Beyond that the price does not tell neighbouring volatilities apart:
    # Newton's steps there were noise, and halving the bracket around them took twenty passes
    # more (a chain of 125 options took ~30 passes; ~8 now, ~4 from the venue's volatilities).
    at = np.flatnonzero(ok)
    fa, ka, sa = f_.ravel()[at], k_.ravel()[at], s[at]
    ta = target.ravel()[at]
    known = _ROUNDING * undiscounted.ravel()[at]  # the time value's own rounding (price − intrinsic)
    log_target = np.log(ta)
    lo, hi = np.zeros(at.size), np.full(at.size, MAX_SIGMA_SQRT_T)
    for _ in range(max_iter):
        if not at.size:
            break
        d1, d2 = _d1d2(fa, ka, sa)
        call_side = ka >= fa
        big = np.where(call_side, fa * ndtr(d1), ka * ndtr(-d2))  # _otm_of's terms: the larger one
        value = big - np.where(call_side, ka * ndtr(d2), fa * ndtr(-d1))
        matched = np.abs(value - ta) <= _ROUNDING * big + known
        vega = fa * _pdf(d1)  # d value / d s
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.log(value) - log_target
            step = g * value / vega
        below = g < 0
        lo = np.where(below, np.maximum(lo, sa), lo)
        hi = np.where(below, hi, np.minimum(hi, sa))
        new = sa - step
        bad = ~np.isfinite(new) | (new <= lo) | (new >= hi)
        new = np.where(bad, 0.5 * (lo + hi), new)
        new = np.where(matched, sa, new)
        done = matched | (np.abs(new - sa) <= 1e-15 * np.maximum(sa, 1e-300) + 1e-300)
        s[at] = new
        left = ~done
        at, fa, ka, sa, ta, known, log_target, lo, hi = (at[left], fa[left], ka[left], new[left], ta[left], known[left],
                                                         log_target[left], lo[left], hi[left])
    total = s.reshape(target.shape)
    sigma = total / np.sqrt(np.where(t_ > 0, t_, 1.0))
    # a volatility the price does not determine: d price / d sigma vanishes at double precision
    d1, _ = _d1d2(f_, k_, total)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_vega = f_ * _pdf(d1) * total / target
    determined = ok & np.isfinite(sigma) & (relative_vega > 1e-8)
    return np.where(determined, sigma, np.nan), determined
