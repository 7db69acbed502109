"""Margin the way the venues compute it: pure functions of positions, prices and the venues'
published parameters (``margin_params.json``, replaceable with ``MARGIN_PARAMS_FILE``). No clock,
no Kafka: the risk engine, ``faust -A app margin simulate`` and the tests call the same code.

Methods (each result names the one it used):

* ``deribit-standard`` — Deribit's standard margin per instrument, summed per settlement
  currency: futures and perpetuals at a rate growing with the position's size, short options
  from the out-of-the-money amount, the underlying and the mark (long options need none).
* ``deribit-portfolio`` — Deribit's portfolio margin as its simulator (``private/pme/simulate``)
  documents it: the risk matrix (price moves × volatility scenarios per currency pair), the
  extended table, roll shock, delta shock, correlation contingency, ``pnl_offset``, ``mm_factor``.
* ``bybit-usdc-options`` — Bybit's maintenance and initial margin of USDC options.
* ``okx-portfolio`` — OKX's portfolio margin *structure* (MR1…MR9); its parameters here are
  stand-ins (README "Margin").
* ``dydx-fractions`` — dYdX v4: each market's initial and maintenance margin fraction of the
  position's notional at the oracle price, as the indexer publishes them (``v4_markets``,
  ``/v4/perpetualMarkets``).
* ``hyperliquid-max-leverage`` — Hyperliquid: initial margin at the asset's maximum leverage
  (notional / ``maxLeverage``), maintenance half of that (``meta``'s ``maxLeverage``).

The last two take their rates from the instrument registry (the venues publish them per market
with their instrument lists: :func:`published_fractions`), not from the parameters file.

Units: a leg's ``coins`` is its signed size in coins of the underlying (an inverse future of N
USD is N/price coins); results are in the leg's settlement currency — the coin for inverse
(coin-settled) contracts, USDC for linear ones; OKX's in USD.

Where the venues' text leaves a term open, the assumption is named at its line with
``ASSUMPTION`` and listed in the README.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import BookstreamError
from app.market import black76

PARAMS_FILE = Path(__file__).with_name("margin_params.json")
LINEAR = frozenset({"USDC", "USDT", "USD"})
YEAR_DAYS = 365.0


class MarginError(BookstreamError):
    """Bad margin parameters or positions: one line saying which."""


@dataclass(frozen=True, slots=True)
class MarginLeg:
    """One position as the margin methods take it."""

    key: str  # venue:instrument
    kind: str  # future | perpetual | option
    settlement: str  # BTC, ETH (inverse, coin-settled) or USDC (linear)
    coins: float  # signed size in coins of the underlying
    index: float  # the underlying's index price, USD
    price: float  # futures: the mark; options: the forward, USD
    strike: float = 0.0
    call: bool = True
    days: float = 0.0  # to expiry (a perpetual: 0)
    sigma: float = 0.0  # an option's mark implied volatility (decimal)
    mark: float = 0.0  # an option's mark in its settlement currency per coin of underlying
    im_fraction: float | None = None  # the venue's initial margin fraction of notional (dYdX, Hyperliquid)
    mm_fraction: float | None = None  # the venue's maintenance margin fraction of notional

    @property
    def inverse(self) -> bool:
        return _names(self.key, self.settlement)[0]

    @property
    def base(self) -> str:
        """The underlying's coin (BTC of deribit:BTC-PERPETUAL, BTC_USDC-PERPETUAL, BTC-28JUN24-60000-C)."""
        return _names(self.key, self.settlement)[1]

    @property
    def pair(self) -> str:
        """Deribit's portfolio-margin currency pair: btc_usd (coin-settled), btc_usdc (linear)."""
        return _names(self.key, self.settlement)[2]

    def otm(self) -> float:
        """The out-of-the-money amount against the index, USD per coin."""
        return max(0.0, self.strike - self.index) if self.call else max(0.0, self.index - self.strike)


@lru_cache(maxsize=65536)
def _names(key: str, settlement: str) -> tuple[bool, str, str]:
    """(inverse, base coin, portfolio-margin pair) of an instrument key (parsed once per key)."""
    inverse = settlement.upper() not in LINEAR
    base = key.partition(":")[2].split("-")[0].split("_")[0].upper()
    return inverse, base, f"{base.lower()}_{'usd' if inverse else settlement.lower()}"


def load_params(path: Path | None = None) -> dict[str, Any]:
    """The parameters file (``MARGIN_PARAMS_FILE``, else the bundled one), checked for the keys used."""
    source = path or PARAMS_FILE
    try:
        params = json.loads(source.read_text())
    except OSError as exc:
        raise MarginError(f"MARGIN_PARAMS_FILE {source}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise MarginError(f"MARGIN_PARAMS_FILE {source}: not JSON ({exc.msg} at line {exc.lineno})") from None
    for path_ in (("as_of",), ("deribit", "futures"), ("deribit", "options"), ("deribit", "portfolio", "pairs"),
                  ("deribit", "portfolio", "currencies"), ("deribit", "portfolio", "general"),
                  ("bybit", "usdc_options"), ("okx", "portfolio")):
        node: Any = params
        for part in path_:
            if not isinstance(node, dict) or part not in node:
                raise MarginError(f"MARGIN_PARAMS_FILE {source}: no {'.'.join(path_)}")
            node = node[part]
    return params


def _need(table: dict[str, Any], name: str, what: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise MarginError(f"margin parameters: no {what} {name!r} (have {', '.join(sorted(table))})") from None


# -- Deribit standard margin ------------------------------------------------------------------
@dataclass(slots=True)
class LegMargin:
    key: str
    currency: str
    method: str
    im: float
    mm: float
    detail: dict[str, float] = field(default_factory=dict)


def deribit_future(leg: MarginLeg, params: dict[str, Any]) -> LegMargin:
    """Futures and perpetuals: IM rate = im + size × per_coin, MM rate = mm + size × per_coin, of
    the position's notional (Deribit support, "Linear Perpetual": 25 BTC of BTC_USDC at an index of
    100,000 needs IM 2 % + 25 × 0.005 % = 2.125 % = 53,125 USDC and MM 1.125 % = 28,125 USDC).
    Linear: in USDC of size × price; inverse: in coin of the size in coins."""
    family = f"{leg.base}_{leg.settlement.upper()}" if not leg.inverse else leg.base
    rates = _need(params["deribit"]["futures"], family, "futures family")
    size = abs(leg.coins)
    im_rate = rates["im"] + size * rates["per_coin"]
    mm_rate = rates["mm"] + size * rates["per_coin"]
    notional = size if leg.inverse else size * leg.price
    return LegMargin(leg.key, leg.settlement, "deribit-standard", im_rate * notional, mm_rate * notional,
                     {"im_rate": im_rate, "mm_rate": mm_rate, "notional": notional})


def deribit_option(leg: MarginLeg, params: dict[str, Any]) -> LegMargin:
    """Short options (long ones need none; Deribit support, "Inverse Options"), per coin of
    underlying with U the index and the mark in the settlement currency:

    * call: IM = max(0.15 − OTM/U, 0.10) + mark, MM = 0.075 + mark;
    * put: MM = max(0.075, 0.075 × mark) + mark, IM = max(max(0.15 − OTM/U, 0.10) + mark, MM).

    Coin-settled options take these as they are (fractions of a coin); USDC options ("Linear
    USDC Options") the same in USD — every fraction of the index times U, the mark in USDC.
    ASSUMPTION: the put's MM term 0.075 × mark is taken on the mark in coin for both (a USDC
    mark would make it 0.075 × mark_usdc, compared with 0.075 × U)."""
    rules = params["deribit"]["options"]
    if leg.coins >= 0:
        return LegMargin(leg.key, leg.settlement, "deribit-standard", 0.0, 0.0, {"otm": leg.otm()})
    size = -leg.coins
    u = leg.index
    unit = 1.0 if leg.inverse else u  # fractions of the index: of a coin, or of U USDC
    mark_coin = leg.mark if leg.inverse else leg.mark / u
    base = max(rules["im_otm_base"] - leg.otm() / u, rules["im_floor"]) * unit + leg.mark
    if leg.call:
        mm = rules["mm"] * unit + leg.mark
        im = base
    else:
        mm = max(rules["mm"], rules["mm"] * mark_coin) * unit + leg.mark
        im = max(base, mm)
    return LegMargin(leg.key, leg.settlement, "deribit-standard", im * size, mm * size,
                     {"otm": leg.otm(), "per_coin_im": im, "per_coin_mm": mm})


def deribit_standard(legs: list[MarginLeg], params: dict[str, Any]) -> dict[str, Any]:
    """Per leg and summed per settlement currency (JSON-ready)."""
    rows = [deribit_option(leg, params) if leg.kind == "option" else deribit_future(leg, params) for leg in legs]
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        total = totals.setdefault(row.currency, {"im": 0.0, "mm": 0.0})
        total["im"] += row.im
        total["mm"] += row.mm
    return {"method": "deribit-standard", "currencies": totals,
            "legs": [{"key": r.key, "currency": r.currency, "im": r.im, "mm": r.mm, **r.detail} for r in rows]}


# -- Deribit portfolio margin -----------------------------------------------------------------
def _vol_shocks(sigma: np.ndarray, days: np.ndarray, pair: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The up and down volatilities of each option. ASSUMPTION (the simulator's parameters name
    the terms, not the formula; as independent write-ups of Deribit's model give it): the shock
    scales with (30 / days to expiry) ^ power — short_term_vega_power under 30 days,
    long_term_vega_power from 30 — up: σ × (1 + volatility_range_up × scale), at least
    min_volatility_for_shock_up; down: σ × (1 − volatility_range_down × scale), at least 1 %."""
    days = np.maximum(days, 1.0 / 24)  # an option expiring within the hour: scaled as one
    power = np.where(days < 30, pair["short_term_vega_power"], pair["long_term_vega_power"])
    scale = (30.0 / days) ** power
    up = np.maximum(sigma * (1 + pair["volatility_range_up"] * scale), pair["min_volatility_for_shock_up"])
    down = np.maximum(sigma * (1 - pair["volatility_range_down"] * scale), 0.01)
    return up, down


def _option_pnl(opts: list[MarginLeg], moves: np.ndarray, vols: list[np.ndarray]) -> np.ndarray:
    """P&L in the settlement currency of the options, one row per (move, vol) in that order."""
    f = np.array([o.price for o in opts])
    k = np.array([o.strike for o in opts])
    t = np.array([max(o.days, 1.0 / 24) / YEAR_DAYS for o in opts])
    sigma = np.array([o.sigma for o in opts])
    call = np.array([o.call for o in opts], dtype=bool)
    coins = np.array([o.coins for o in opts])
    inverse = np.array([o.inverse for o in opts], dtype=bool)
    now = black76.price(f, k, t, sigma, call)
    now = np.where(inverse, now / f, now)
    # every scenario at once: rows (move, vol) in that order, one column per option
    f2 = np.repeat(f[None, :] * (1 + moves[:, None]), len(vols), axis=0)
    sig = np.tile(np.stack(vols), (len(moves), 1))
    later = black76.price(f2, k[None, :], t[None, :], sig, call[None, :])
    later = np.where(inverse[None, :], later / f2, later)  # coin-settled: valued in coin at the new price
    return np.asarray((later - now[None, :]) @ coins, dtype=np.float64)


def _future_pnl(futs: list[MarginLeg], move: float) -> float:
    """Inverse: coins × (1 − 1/(1 + m)) in coin (the coin P&L of N USD at the new price: Deribit's
    example BTC-PERPETUAL 0.314538364 at −16 % gives −0.059912069); linear: coins × price × m USDC."""
    return sum(f.coins * (1 - 1 / (1 + move)) if f.inverse else f.coins * f.price * move for f in futs)


def deribit_portfolio(legs: list[MarginLeg], params: dict[str, Any], mmp_margin: float = 0.0,
                      open_orders_margin: float = 0.0) -> dict[str, Any]:
    """Portfolio margin per settlement currency, every component (JSON-ready); ``mmp_margin`` and
    ``open_orders_margin`` (the venue's, from the account) add to the initial margin as documented."""
    pm = params["deribit"]["portfolio"]
    general = pm["general"]
    n = int(general["buckets_count"])
    out: dict[str, Any] = {}
    by_currency: dict[str, list[MarginLeg]] = {}
    for leg in legs:
        by_currency.setdefault(leg.settlement.upper(), []).append(leg)
    for currency, group in sorted(by_currency.items()):
        cur = _need(pm["currencies"], currency.lower(), "portfolio-margin currency")
        pairs: dict[str, Any] = {}
        worst = roll = delta_shock = 0.0
        by_pair: dict[str, list[MarginLeg]] = {}
        for leg in group:
            by_pair.setdefault(leg.pair, []).append(leg)
        for pair_name, members in sorted(by_pair.items()):
            pair = _need(pm["pairs"], pair_name, "portfolio-margin currency pair")
            r = pair["price_range"]
            moves = np.array([-r + i * r / n for i in range(2 * n + 1)])
            opts = [leg for leg in members if leg.kind == "option"]
            futs = [leg for leg in members if leg.kind != "option"]
            extended_moves = np.array(general["extended_moves"])
            if opts:
                sigma = np.array([o.sigma for o in opts])
                days = np.array([o.days for o in opts])
                up, down = _vol_shocks(sigma, days, pair)
                standard = _option_pnl(opts, moves, [up, sigma, down])
                extended = _option_pnl(opts, extended_moves, [up])
            else:
                standard = np.zeros(len(moves) * 3)
                extended = np.zeros(len(extended_moves))
            standard = standard + np.repeat([_future_pnl(futs, float(m)) for m in moves], 3)
            standard = _offset(standard, cur)
            extended = extended + np.array([_future_pnl(futs, float(m)) for m in extended_moves])
            extended = _dampen(extended * pair["extended_table_factor"], cur, members)
            pair_worst = max(0.0, -float(min(standard.min(), extended.min(initial=0.0))))
            pair_roll = sum(_roll(f, cur) for f in futs)
            pair_delta_shock, delta = _delta_shock(members, pair)
            worst += pair_worst
            roll += pair_roll
            delta_shock += pair_delta_shock
            pairs[pair_name] = {"worst_case": pair_worst, "roll_shock": pair_roll, "delta_shock": pair_delta_shock,
                                "delta": delta, "standard": standard.tolist(), "extended": extended.tolist(),
                                "moves": moves.tolist(), "extended_moves": list(general["extended_moves"])}
        # ASSUMPTION: pairs sharing a settlement currency add up (no offset between them) and the
        # correlation contingency is 0: the simulator's example has one pair and correlation_set false.
        contingency = 0.0
        matrix = worst + roll + delta_shock + contingency
        out[currency] = {
            "method": "deribit-portfolio", "worst_case": worst, "roll_shock": roll, "delta_shock": delta_shock,
            "correlation_contingency": contingency, "risk_matrix_margin": matrix,
            "mmp_margin": mmp_margin, "open_orders_margin": open_orders_margin,
            "mm": general["mm_factor"] * matrix, "im": matrix + mmp_margin + open_orders_margin,
            "mm_factor": general["mm_factor"], "pairs": pairs}
    return {"method": "deribit-portfolio", "as_of": params.get("as_of"), "currencies": out}


def _roll(future: MarginLeg, cur: dict[str, Any]) -> float:
    """Roll shock of a future or perpetual: its size × max(min_annualised_move, annualised_move_risk
    × years to expiry), in coin (inverse) or USDC (linear). ASSUMPTION on the time term (the example's
    perpetual and 11-day future both take the minimum, 1 %: 0.01 × (0.314538364 + 0.001187534))."""
    move = max(cur["min_annualised_move"], cur["annualised_move_risk"] * future.days / YEAR_DAYS)
    return abs(future.coins) * move * (1.0 if future.inverse else future.price)


def _offset(pnl: np.ndarray, cur: dict[str, Any]) -> np.ndarray:
    """Positive scenarios count pnl_offset of their P&L (0: none), capped at max_offsetable_pnl
    when that is positive. ASSUMPTION: a cap of 0 means no cap (both 0 in the example)."""
    gains = pnl * cur["pnl_offset"]
    if cur["max_offsetable_pnl"] > 0:
        gains = np.minimum(gains, cur["max_offsetable_pnl"])
    return np.where(pnl > 0, gains, pnl)


def _dampen(pnl: np.ndarray, cur: dict[str, Any], legs: list[MarginLeg]) -> np.ndarray:
    """The extended table's losses, dampened. ASSUMPTION (Deribit names an extended_dampener per
    currency — 100,000 for btc, 25,000 for usd — not its formula): the dampener is a deductible in
    USD: a loss L counts max(0, L_usd − extended_dampener), back in the settlement currency; gains
    count nothing. So a large far-out-of-the-money short book is charged at the extreme moves and
    the example's small futures book (a 40,000 USD loss at −66 %) is not: its extended vector is all
    zero, as the simulator's. Futures count with the options, so a hedge offsets there too."""
    if not len(pnl):
        return pnl
    to_usd = legs[0].index if legs[0].inverse else 1.0
    loss_usd = np.maximum(-pnl, 0.0) * to_usd
    return -np.maximum(loss_usd - cur["extended_dampener"], 0.0) / to_usd


def _delta_shock(legs: list[MarginLeg], pair: dict[str, Any]) -> tuple[float, float]:
    """(delta shock, net delta in coins). ASSUMPTION (the simulator names the parameters only):
    above delta_total_liq_shock_threshold USD of net delta, a fraction m_inc per million USD over
    it, at most max_delta_shock, of the net delta — in coin for coin-settled books, USDC for linear."""
    opts = [leg for leg in legs if leg.kind == "option"]
    delta = sum(leg.coins for leg in legs if leg.kind != "option")
    if opts:
        g = black76.greeks(np.array([o.price for o in opts]), np.array([o.strike for o in opts]),
                           np.array([max(o.days, 1.0 / 24) / YEAR_DAYS for o in opts]),
                           np.array([o.sigma for o in opts]), np.array([o.call for o in opts], dtype=bool))
        delta += float(np.dot([o.coins for o in opts], g["delta"]))
    index = legs[0].index
    over = abs(delta) * index - pair["delta_total_liq_shock_threshold"]
    if over <= 0:
        return 0.0, delta
    fraction = min(pair["max_delta_shock"], pair["m_inc"] * over / 1e6)
    return fraction * abs(delta) * (1.0 if legs[0].inverse else index), delta


# -- Bybit USDC options -------------------------------------------------------------------------
def bybit_usdc_option(leg: MarginLeg, params: dict[str, Any], avg_entry: float | None = None) -> LegMargin:
    """Bybit help "USDC options margin": a short option's MM = [max(3 % × index, 3 % × mark) + mark
    + 0.2 % × index (the liquidation fee)] × size (short 1 call, index 30,000, mark 300 → 1,260
    USDC); IM = max{[max(15 % × index − OTM, 10 % × index) + max(average entry, mark)] × size, MM}.
    Long options: none (the premium is paid)."""
    p = params["bybit"]["usdc_options"]
    if leg.coins >= 0:
        return LegMargin(leg.key, "USDC", "bybit-usdc-options", 0.0, 0.0)
    size, u, mark = -leg.coins, leg.index, leg.mark
    mm = (max(p["mm_index"] * u, p["mm_mark"] * mark) + mark + p["liquidation_fee"] * u) * size
    premium = max(avg_entry if avg_entry is not None else mark, mark)
    im = max((max(p["im_otm_base"] * u - leg.otm(), p["im_floor"] * u) + premium) * size, mm)
    return LegMargin(leg.key, "USDC", "bybit-usdc-options", im, mm, {"otm": leg.otm()})


# -- OKX portfolio margin (structure) -------------------------------------------------------------
def okx_portfolio(legs: list[MarginLeg], params: dict[str, Any]) -> dict[str, Any]:
    """OKX help "Portfolio margin mode": MMR = max{[max(MR1, MR2, MR6) + MR4 + MR3 + MR5 + MR9], MR7},
    IMR = 1.3 × MMR, in USD. The structure is OKX's; each MR here is this project's reading of its
    name with stand-in parameters (``okx.portfolio``): MR1 the worst full revaluation over ±price_range,
    MR2 a day of theta, MR3 vega × vol_shift, MR4 basis_rate of futures notional, MR5 an interest-rate
    charge, MR6 extreme_factor × the loss at ±extreme_move, MR7 the minimum charge, MR9 a stablecoin
    depeg charge. Not checked against an OKX example (it publishes none whole)."""
    p = params["okx"]["portfolio"]
    usd = [_as_usd(leg) for leg in legs]
    notional = sum(abs(leg.coins) * leg.index for leg in usd)

    def loss_at(move: float, vol: float = 0.0) -> float:
        total = 0.0
        for leg in usd:
            if leg.kind == "option":
                t = max(leg.days, 1.0 / 24) / YEAR_DAYS
                now = float(black76.price(leg.price, leg.strike, t, leg.sigma, leg.call))
                shocked = max(leg.sigma + vol, 0.01)
                later = float(black76.price(leg.price * (1 + move), leg.strike, t, shocked, leg.call))
                total += leg.coins * (later - now)
            else:
                total += leg.coins * leg.price * move
        return max(0.0, -total)

    r = p["price_range"]
    mr1 = max(loss_at(r * i / 4) for i in range(-4, 5))
    theta = vega = 0.0
    for leg in usd:
        if leg.kind == "option":
            g = black76.greeks(leg.price, leg.strike, max(leg.days, 1.0 / 24) / YEAR_DAYS, leg.sigma, leg.call)
            theta += leg.coins * float(g["theta"])
            vega += leg.coins * float(g["vega"])
    mr2 = max(0.0, -theta * p["theta_days"])
    mr3 = abs(vega) * p["vol_shift"] * 100  # vega per vol point
    mr4 = p["basis_rate"] * sum(abs(leg.coins) * leg.index for leg in usd if leg.kind == "future")
    mr5 = p["interest_rate_charge"] * notional
    mr6 = p["extreme_factor"] * max(loss_at(-p["extreme_move"]), loss_at(p["extreme_move"]))
    mr7 = p["min_charge_rate"] * notional
    mr9 = p["stablecoin_depeg"] * notional
    mmr = max(max(mr1, mr2, mr6) + mr4 + mr3 + mr5 + mr9, mr7)
    return {"method": "okx-portfolio", "currency": "USD", "MR1": mr1, "MR2": mr2, "MR3": mr3, "MR4": mr4,
            "MR5": mr5, "MR6": mr6, "MR7": mr7, "MR9": mr9, "mm": mmr, "im": p["imr_factor"] * mmr,
            "assumption": "structure per OKX; MR parameters are stand-ins"}


def _as_usd(leg: MarginLeg) -> MarginLeg:
    """A leg as OKX values it: in USD (a coin-settled mark converted at the index)."""
    if leg.inverse and leg.kind == "option":
        from dataclasses import replace

        return replace(leg, mark=leg.mark * leg.index, settlement="USD")
    return leg


def is_finite(result: dict[str, Any]) -> bool:
    """Every number of a result is finite (a NaN mark must not turn into a margin)."""
    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return all(walk(v) for v in node.values())
        if isinstance(node, list):
            return all(walk(v) for v in node)
        return not isinstance(node, float) or math.isfinite(node)

    return walk(result)


# -- venues that publish each market's margin fractions -----------------------------------------
#: venue → the method name of :func:`fraction_margin`
FRACTION_METHODS = {"dydx": "dydx-fractions", "hyperliquid": "hyperliquid-max-leverage"}


def published_fractions(venue: str, initial_margin: str | None, maintenance_margin: str | None,
                        max_leverage: str | None) -> tuple[float, float] | None:
    """(initial, maintenance) margin fractions of notional that the venue publishes for a market,
    from its instrument-list fields (``app.market.instruments.Spec``); None when it publishes none
    (or not for this market).

    * dYdX v4 (docs "Margining", concepts-trading/margin): initial margin requirement = |S × P × I|,
      maintenance = |S × P × M| — S the size, P the **oracle** price, I and M the market's
      ``initialMarginFraction`` and ``maintenanceMarginFraction`` (``v4_markets``,
      ``/v4/perpetualMarkets``). NOT APPLIED: the open-interest-based IMF (the IMF grows linearly
      from the base fraction once the market's open notional passes its liquidity tier's lower
      cap, up to 100 % at the upper cap; the MMF does not change): the caps are not in the spec,
      so the IM here is the base one — a lower bound when the market's open notional is above its
      lower cap.
    * Hyperliquid (docs "Margining"): the margin to open is position_size × mark_price /
      leverage, the leverage the user's, at most the asset's ``maxLeverage``; "the maintenance
      margin is currently set to half of the initial margin at max leverage". So IM here is at
      max leverage, 1 / ``maxLeverage`` — the least the venue accepts (ASSUMPTION: the account's
      own leverage setting is not public; a lower leverage needs more) — and MM half of it. NOT
      APPLIED: margin tiers (``marginTables``: a lower max leverage above a notional, with a
      maintenance deduction), which the ``meta`` spec does not carry: for positions above an
      asset's first tier the MM here is too low.

    /work/shared/MARGIN.md (the project's gathered margin facts) is silent on both venues; the two
    formulas above are each venue's own page, as cited."""
    try:
        if venue == "dydx" and initial_margin is not None and maintenance_margin is not None:
            im, mm = float(initial_margin), float(maintenance_margin)
        elif venue == "hyperliquid" and max_leverage is not None:
            leverage = float(max_leverage)
            if not leverage >= 1:  # NaN too
                return None
            im = 1.0 / leverage
            mm = im / 2.0
        else:
            return None
    except ValueError:
        return None
    if not (0.0 <= mm <= im <= 1.0):
        return None  # not fractions of notional, or maintenance above initial: not the venue's
    return im, mm


def fraction_margin(venue: str, legs: list[MarginLeg]) -> dict[str, Any]:
    """Per leg IM = |coins| × price × im_fraction, MM = |coins| × price × mm_fraction (the price:
    the leg's mark — dYdX's is its oracle price, Hyperliquid's ``markPx``), summed per settlement
    currency (USDC); legs whose market has no published fractions are ``not_margined``."""
    method = FRACTION_METHODS[venue]
    totals: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for leg in legs:
        if leg.im_fraction is None or leg.mm_fraction is None or leg.kind == "option":
            continue
        notional = abs(leg.coins) * leg.price
        im, mm = notional * leg.im_fraction, notional * leg.mm_fraction
        total = totals.setdefault(leg.settlement.upper(), {"im": 0.0, "mm": 0.0, "notional": 0.0})
        total["im"] += im
        total["mm"] += mm
        total["notional"] += notional
        rows.append({"key": leg.key, "currency": leg.settlement.upper(), "im": im, "mm": mm, "notional": notional,
                     "im_fraction": leg.im_fraction, "mm_fraction": leg.mm_fraction})
    margined = {row["key"] for row in rows}
    return {"method": method, "currencies": totals, "legs": rows,
            "not_margined": [leg.key for leg in legs if leg.key not in margined]}


# -- one account's margin, as the risk engine streams it ----------------------------------------
#: Components of Deribit's portfolio margin published per currency (the vectors stay in the simulator's output).
PM_PARTS = ("worst_case", "roll_shock", "delta_shock", "correlation_contingency", "risk_matrix_margin",
            "mmp_margin", "open_orders_margin", "mm_factor")
DERIBIT_METHODS = ("standard", "portfolio")


def account_margin(venue: str, legs: list[MarginLeg], params: dict[str, Any],
                   deribit_method: str = "standard") -> dict[str, dict[str, Any]]:
    """Settlement currency → ``{method, im, mm, components, legs}`` of one venue's positions, by
    the method its accounts use (Deribit: ``deribit_method``; Bybit: USDC options; OKX: portfolio
    margin in USD; dYdX and Hyperliquid: their published fractions). A venue without a method gives
    nothing; ``legs`` the method leaves out (Bybit futures, inverse options; dYdX or Hyperliquid
    markets without published fractions) are listed under ``not_margined`` of the currency they
    settle in."""
    if venue == "deribit" and deribit_method == "portfolio":
        pm = deribit_portfolio(legs, params)
        return {cur: {"method": "deribit-portfolio", "im": body["im"], "mm": body["mm"],
                      "components": {k: body[k] for k in PM_PARTS}, "legs": []}
                for cur, body in pm["currencies"].items()}
    if venue == "deribit":
        std = deribit_standard(legs, params)
        out: dict[str, dict[str, Any]] = {}
        for cur, total in std["currencies"].items():
            rows = [row for row in std["legs"] if row["currency"] == cur]
            kinds = {leg.key: leg.kind for leg in legs}
            parts = {f"{k}_{m}": sum(r[m] for r in rows if (kinds[r["key"]] == "option") == (k == "options"))
                     for k in ("futures", "options") for m in ("im", "mm")}
            out[cur] = {"method": "deribit-standard", "im": total["im"], "mm": total["mm"], "components": parts,
                        "legs": [{"key": r["key"], "im": r["im"], "mm": r["mm"]} for r in rows]}
        return out
    if venue == "bybit":
        margined = [leg for leg in legs if leg.kind == "option" and not leg.inverse]
        if not margined:
            return {}
        rows_ = [bybit_usdc_option(leg, params) for leg in margined]
        return {"USDC": {"method": "bybit-usdc-options", "im": sum(r.im for r in rows_), "mm": sum(r.mm for r in rows_),
                         "components": {}, "legs": [{"key": r.key, "im": r.im, "mm": r.mm} for r in rows_],
                         "not_margined": [leg.key for leg in legs if leg not in margined]}}
    if venue in FRACTION_METHODS:
        fm = fraction_margin(venue, legs)
        return {cur: {"method": fm["method"], "im": total["im"], "mm": total["mm"],
                      "components": {"notional": total["notional"]},
                      "legs": [{"key": r["key"], "im": r["im"], "mm": r["mm"]} for r in fm["legs"]
                               if r["currency"] == cur],
                      "not_margined": fm["not_margined"]}
                for cur, total in fm["currencies"].items()}
    if venue == "okx" and legs:
        okx = okx_portfolio(legs, params)
        return {"USD": {"method": "okx-portfolio", "im": okx["im"], "mm": okx["mm"],
                        "components": {k: okx[k] for k in ("MR1", "MR2", "MR3", "MR4", "MR5", "MR6", "MR7", "MR9")},
                        "legs": []}}
    return {}
