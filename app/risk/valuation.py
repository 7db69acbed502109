"""What positions are worth, their greeks, and the scenario grid, by contract spec.

Conventions (README "Risk"):

* every figure is in USD except delta, which is in coins of the underlying: the USD P&L of a
  1 USD move of the underlying (``delta_usd = delta × price``);
* **linear** contracts (and spot): ``n = quantity × contract_size × multiplier`` coins;
  P&L(S') = n·(S' − S); delta n;
* **inverse** contracts: ``N`` USD of notional (Deribit sizes them in USD; elsewhere
  ``contracts × contract_size``); the position's coin P&L is N·(1/S − 1/S'), worth
  S'·N·(1/S − 1/S') = N·(S'/S − 1) USD at the new price, so its delta is **N/S coins** — not
  its size — and a move m of the price is N·m USD;
* **options**: Black-76 on the option's forward with our implied volatility (solved from the
  venue's mark, as the options chain does; the venue's mark IV when the mark does not determine
  one); ``n`` coins of underlying per the spec; greeks are n × Black-76's (gamma also per 1 %
  move: the change of coin delta for a 1 % rise; vega per vol point; theta per calendar day);
* scenarios revalue everything fully: a move m scales each position's own price (forward, mark)
  by (1 + m), a vol shift adds to every option's volatility (floored at 1 %); time does not move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.market import black76

YEAR_NS = 365 * 86_400 * 1e9

#: The default scenario grid: underlying moves −16 % … +16 % in 8 steps, and the extremes.
DEFAULT_MOVES = (-0.50, -0.16, -0.12, -0.08, -0.04, 0.0, 0.04, 0.08, 0.12, 0.16, 1.00)
#: Vol shifts in volatility points (decimal): down, flat, up.
DEFAULT_VOL_SHIFTS = (-0.10, 0.0, 0.10)
MIN_VOL = 0.01


@dataclass(slots=True)
class Leg:
    """One position, priced now."""

    key: str
    kind: str  # linear | inverse | option
    quantity: float  # in the position's units (see the module docstring)
    size: float  # coins per unit (linear, option) or USD per unit (inverse)
    price: float  # the mark (futures, spot) or forward (options), USD
    strike: float = 0.0
    call: bool = True
    t: float = 0.0  # years to expiry (options)
    sigma: float = 0.0  # our implied volatility (options)
    venue_greeks: dict[str, float | None] = field(default_factory=dict)  # per coin of underlying

    @property
    def coins(self) -> float:
        return self.quantity * self.size


def per_unit_delta(kind: str, size: float, price: float, option_delta: float = 0.0) -> float:
    """Coin delta of one unit (contract) of an instrument."""
    if kind == "inverse":
        return size / price
    if kind == "option":
        return size * option_delta
    return size


def pnl_inverse(notional_usd: float, price: float, new_price: float) -> float:
    """USD P&L of N USD of an inverse contract when its price moves from price to new_price,
    the coin P&L valued at the new price."""
    return new_price * notional_usd * (1.0 / price - 1.0 / new_price)


class Book:
    """Legs of one portfolio and underlying as arrays, for exposure and the scenario grid."""

    def __init__(self, legs: list[Leg]) -> None:
        self.legs = legs
        opts = [leg for leg in legs if leg.kind == "option"]
        self.options = opts
        self.n = np.array([leg.coins for leg in opts])
        self.f = np.array([leg.price for leg in opts])
        self.k = np.array([leg.strike for leg in opts])
        self.t = np.array([leg.t for leg in opts])
        self.sigma = np.array([leg.sigma for leg in opts])
        self.call = np.array([leg.call for leg in opts], dtype=bool)
        self.linear = [leg for leg in legs if leg.kind == "linear"]
        self.inverse = [leg for leg in legs if leg.kind == "inverse"]

    def exposure(self) -> dict[str, Any]:
        """Totals and per-leg figures (JSON-ready)."""
        per: dict[str, dict[str, float]] = {}
        delta = gamma = gamma_1pct = vega = theta = notional = delta_usd = 0.0
        for leg in self.linear:
            d = leg.coins
            per[leg.key] = {"delta": d, "notional_usd": abs(d) * leg.price}
        for leg in self.inverse:
            d = leg.coins / leg.price  # coins = N USD here
            per[leg.key] = {"delta": d, "notional_usd": abs(leg.coins)}
        if self.options:
            g = black76.greeks(self.f, self.k, self.t, self.sigma, self.call)
            for i, leg in enumerate(self.options):
                n = self.n[i]
                per[leg.key] = {"delta": float(n * g["delta"][i]), "gamma": float(n * g["gamma"][i]),
                                "gamma_1pct": float(n * g["gamma"][i] * leg.price * 0.01),
                                "vega": float(n * g["vega"][i]), "theta": float(n * g["theta"][i]),
                                "notional_usd": abs(float(n)) * leg.price, "iv": leg.sigma}
        for leg in self.legs:
            row = per[leg.key]
            delta += row["delta"]
            delta_usd += row["delta"] * leg.price
            gamma += row.get("gamma", 0.0)
            gamma_1pct += row.get("gamma_1pct", 0.0)
            vega += row.get("vega", 0.0)
            theta += row.get("theta", 0.0)
            notional += row["notional_usd"]
        # the venue's greeks where every option has them (futures' delta is the contract's own)
        venue: dict[str, float] = {}
        futures_delta = sum(per[leg.key]["delta"] for leg in (*self.linear, *self.inverse))
        for name in ("delta", "gamma", "vega", "theta"):
            values = [leg.coins * v for leg in self.options if (v := leg.venue_greeks.get(name)) is not None]
            if len(values) == len(self.options):
                venue[name] = float(sum(values)) + (futures_delta if name == "delta" else 0.0)
        return {"delta": delta, "delta_usd": delta_usd, "gamma": gamma, "gamma_1pct": gamma_1pct, "vega": vega,
                "theta": theta, "notional_usd": notional, "venue": venue, "legs": per}

    def scenarios(self, moves: np.ndarray, vol_shifts: np.ndarray) -> np.ndarray:
        """USD P&L of the book for every (move, vol shift): shape (len(moves), len(vol_shifts))."""
        out = np.zeros((len(moves), len(vol_shifts)))
        lin = sum(leg.coins * leg.price for leg in self.linear)  # P&L of a move m: lin·m
        inv = sum(leg.coins for leg in self.inverse)  # N·m (pnl_inverse is linear in S')
        out += ((lin + inv) * moves)[:, None]
        if self.options:
            base = black76.price(self.f, self.k, self.t, self.sigma, self.call)
            f = self.f[None, None, :] * (1.0 + moves[:, None, None])
            s = np.maximum(self.sigma[None, None, :] + vol_shifts[None, :, None], MIN_VOL)
            value = black76.price(f, self.k[None, None, :], self.t[None, None, :], s, self.call[None, None, :])
            out += ((value - base[None, None, :]) * self.n[None, None, :]).sum(axis=2)
        return out
