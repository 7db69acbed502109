"""Market alerts and the cross-venue best bid/offer, in event time (see :mod:`app.risk.engine`).

Per instrument: ``stale`` (its book not synced for longer than ``ALERT_STALE_S``), ``crossed``
(best bid ≥ best ask), ``spread`` (wider than ``ALERT_SPREAD_BPS``; not for options, whose
spreads are wide in bps of their premium), ``funding-jump`` (the
funding rate moved by more than ``ALERT_FUNDING_JUMP`` between two tickers). Per portfolio,
venue and currency: ``margin`` (MM/equity above each of ``ALERT_MARGIN_RATIOS``; key
``<portfolio>|<venue>|<currency>|<threshold>``; cleared 5 % below it). Per rule: ``reduce-only``
(a rule held reduce-only by a margin rule's ``reduce_only_above``; key: the rule id). Across venues:
books of one **group**, mapped through the registry (:func:`group_of`), give the **NBBO** on
``nbbo``, and a ``divergence`` alert when one venue's mid is more than ``ALERT_DIVERGENCE_BPS``
from the median of the others. Each alert is a transition: ``raised`` once, ``cleared`` once
(``funding-jump`` is an event: raised only). Books that are stale or crossed are left out of the
NBBO.

The groups (the NBBO's key):

* spot: ``<base>/<quote family>`` — ``BTC/USD`` for Binance ``BTCUSDT``, OKX ``BTC-USDT``, Bybit
  ``BTCUSDT``, Coinbase ``BTC-USD``;
* **linear perpetuals**: ``<base>/<quote family> perp`` — ``BTC/USD perp`` for Binance USD-M
  ``BTCUSDT`` (and ``BTCUSDC``), OKX ``BTC-USDT-SWAP``, Bybit linear ``BTCUSDT`` (and ``BTCPERP``),
  Deribit ``BTC_USDC-PERPETUAL``, Hyperliquid ``BTC``, dYdX ``BTC-USD``. A perpetual's price is one
  base coin in the quote, whatever the contract's size, so the venues' prices compare as they are.
  Kept apart from spot: a perpetual trades at a basis to spot (its premium, which funding pulls
  in), and a desk's best bid for spot is not a perpetual's bid — mixed, the basis would read as a
  crossed NBBO and as divergence.
* not compared: **inverse** perpetuals (Deribit ``BTC-PERPETUAL``, Binance COIN-M, Bybit inverse:
  coin-margined, their basis follows the coin-collateral funding market, not the dollar one),
  dated futures (each expiry its own basis), options.

The quote family: USD, USDT and USDC are one dollar (each venue's own quote is kept in the
record: ``bid_quote``, ``ask_quote``, ``venues[].quote``). Grouping USDT with USD/USDC is a choice:
the liquid dollar perpetuals are USDT-margined (Binance, OKX, Bybit), and Hyperliquid and dYdX
(quoted in USD, settled in USDC) would otherwise have only each other; USDT/USD trades within a
few bps, far inside the 50 bps ``ALERT_DIVERGENCE_BPS``, and a depeg wider than the threshold is
exactly what a desk wants raised — it shows as the USDT venues diverging together. A consumer
that needs the exact dollar NBBO converts by the quotes the record names. A linear perpetual
that names no quote currency (OKX swaps) is quoted in its settlement currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Any

import msgspec

from app import metrics
from app.market.instruments import Registry, Spec
from app.market.symbols import parse_option
from app.records.risk import Alert, Nbbo, NbboVenue, RiskRecord

if TYPE_CHECKING:
    from app.market.chain import Quote

NS = 1_000_000_000
USD_LIKE = {"USD", "USDT", "USDC"}

Out = tuple[str, str, RiskRecord]


@dataclass(frozen=True, slots=True)
class AlertSettings:
    stale_s: float = 10.0  # ALERT_STALE_S
    spread_bps: float = 50.0  # ALERT_SPREAD_BPS
    funding_jump: float = 0.0005  # ALERT_FUNDING_JUMP (absolute rate per funding period)
    divergence_bps: float = 50.0  # ALERT_DIVERGENCE_BPS
    margin_ratios: tuple[float, ...] = (0.5, 0.8)  # ALERT_MARGIN_RATIOS (MM / equity)


def _ratio(ratio: float) -> float | None:
    """A margin ratio as an alert's value: null when infinite (equity ≤ 0 with margin due)."""
    return round(ratio, 6) if ratio != float("inf") else None


def pair_of(base: str, quote: str) -> str:
    return f"{base}/{'USD' if quote.upper() in USD_LIKE else quote.upper()}"


def group_of(spec: Spec) -> str | None:
    """The NBBO group of an instrument (see the module): ``BTC/USD`` (spot), ``BTC/USD perp``
    (linear perpetuals), None (not compared across venues)."""
    if not spec.base:
        return None
    if spec.kind == "spot":
        return pair_of(spec.base, spec.quote)
    if spec.kind == "perpetual" and spec.margin == "linear":
        quote = spec.quote or spec.settle  # OKX swaps name only their settlement currency
        return f"{pair_of(spec.base, quote)} perp" if quote else None
    return None


class Alerts:
    def __init__(self, settings: AlertSettings, registry: Registry) -> None:
        self.conf = settings
        self.registry = registry
        self.active: dict[tuple[str, str], Alert] = {}  # (kind, key) → the raised record
        self.not_synced: dict[str, int] = {}  # key → event time it left synced
        self.funding: dict[str, float] = {}
        self.nbbo: dict[str, Nbbo] = {}  # pair → last published body (sans ts)
        # the instruments compared across venues: key → (NBBO group, quote currency), by their
        # latest version; rebuilt when the registry gains one. A tick reads only their tops: the
        # scan of every top (1,508 in the options universe, none of them compared) was 2.6 % of
        # the worker's samples
        self._grouped: dict[str, tuple[str, str]] = {}
        self._grouped_at = -1

    def active_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, _key in self.active:
            out[kind] = out.get(kind, 0) + 1
        return out

    def _raise(self, kind: str, key: str, t: int, value: Any, threshold: Any, detail: str) -> list[Out]:
        if (kind, key) in self.active and kind != "funding-jump":
            return []
        body = Alert(kind=kind, key=key, state="raised", value=value, threshold=threshold, detail=detail, ts=t)
        if kind != "funding-jump":
            self.active[(kind, key)] = body
        metrics.count(f"alerts.{kind}")
        return [("alerts", f"{kind}|{key}", body)]

    def _clear(self, kind: str, key: str, t: int, value: Any = None) -> list[Out]:
        raised = self.active.pop((kind, key), None)
        if raised is None:
            return []
        body = msgspec.structs.replace(raised, state="cleared", value=value, ts=t, raised_ts=raised.ts)
        return [("alerts", f"{kind}|{key}", body)]

    # -- per input ---------------------------------------------------------------------------
    def on_top(self, key: str, bid: float | None, ask: float | None, t: int) -> list[Out]:
        out: list[Out] = []
        if bid is None or ask is None:
            return out
        if bid >= ask:
            out += self._raise("crossed", key, t, [bid, ask], None, f"bid {bid:g} ≥ ask {ask:g}")
        else:
            out += self._clear("crossed", key, t, [bid, ask])
            bps = (ask - bid) / ((ask + bid) / 2) * 1e4
            if parse_option(key.partition(":")[2]) is not None:
                return out  # an option's spread is wide in bps of its premium: not an alert
            if bps > self.conf.spread_bps:
                out += self._raise("spread", key, t, round(bps, 4), self.conf.spread_bps,
                                   f"spread {bps:.1f} bps > {self.conf.spread_bps:g}")
            else:
                out += self._clear("spread", key, t, round(bps, 4))
        return out

    def on_status(self, key: str, state: str, reason: str, t: int) -> list[Out]:
        if state == "synced":
            self.not_synced.pop(key, None)
            return self._clear("stale", key, t)
        self.not_synced.setdefault(key, t)
        return []

    def on_ticker(self, key: str, quote: Quote, t: int) -> list[Out]:
        rate = quote.number("funding_rate")
        if rate is None:
            return []
        before = self.funding.get(key)
        self.funding[key] = rate
        if before is not None and abs(rate - before) > self.conf.funding_jump:
            return self._raise("funding-jump", key, t, rate, self.conf.funding_jump,
                               f"funding rate {before:g} → {rate:g}")
        return []

    def on_margin(self, key: str, ratio: float, t: int) -> list[Out]:
        """MM/equity of ``<portfolio>|<venue>|<currency>`` against each threshold: raised above
        it, cleared 5 % below it (an infinite ratio: equity ≤ 0 with margin due)."""
        out: list[Out] = []
        value = _ratio(ratio)
        for threshold in self.conf.margin_ratios:
            slot = f"{key}|{threshold:g}"
            if ratio > threshold:
                out += self._raise("margin", slot, t, value, threshold,
                                   f"MM/equity {ratio:.4g} > {threshold:g}" if value is not None
                                   else "equity ≤ 0 with margin due")
            elif ratio <= threshold * 0.95:
                out += self._clear("margin", slot, t, value)
        return out

    def switched(self, rule: str, by: str, ratio: float, above: float, t: int, on: bool) -> list[Out]:
        """A rule held reduce-only (``on``) or released by the margin rule ``by``."""
        if not on:
            return self._clear("reduce-only", rule, t, _ratio(ratio))
        return self._raise("reduce-only", rule, t, _ratio(ratio), above,
                           f"reduce-only: MM/equity {ratio:.4g} above {above:g} ({by})")

    # -- per tick ----------------------------------------------------------------------------
    def _groups(self) -> dict[str, tuple[str, str]]:
        if self._grouped_at != self.registry.generation:
            self._grouped_at = self.registry.generation
            self._grouped = {}
            for key, versions in self.registry.versions.items():
                spec = versions[-1] if versions else None
                if spec is not None and (group := group_of(spec)) is not None:
                    self._grouped[key] = (group, spec.quote or spec.settle)
        return self._grouped

    def tick(self, t: int, tops: dict[str, Any], status: dict[str, str], max_age_ns: int) -> list[Out]:
        out: list[Out] = []
        for key, since in sorted(self.not_synced.items()):
            if t - since > self.conf.stale_s * NS:
                out += self._raise("stale", key, t, round((t - since) / NS, 3), self.conf.stale_s,
                                   f"{status.get(key)} for {(t - since) / NS:.1f} s")
        pairs: dict[str, list[tuple[str, str, float, float]]] = {}
        for key, (group, quote) in self._groups().items():
            top = tops.get(key)
            if top is None or top.bid is None or top.ask is None or top.bid >= top.ask:
                continue
            if status.get(key, "synced") != "synced" or t - top.ts_recv > max_age_ns:
                continue
            pairs.setdefault(group, []).append((key, quote, top.bid, top.ask))
        for pair, books in sorted(pairs.items()):
            books.sort()
            best_bid = max(books, key=lambda b: (b[2], b[0]))
            best_ask = min(books, key=lambda b: (b[3], b[0]))
            body = Nbbo(pair=pair, bid=best_bid[2], bid_venue=best_bid[0], bid_quote=best_bid[1], ask=best_ask[3],
                        ask_venue=best_ask[0], ask_quote=best_ask[1], ts=0,  # compared without its time
                        venues=[NbboVenue(key=k, quote=q, bid=b, ask=a, mid=(a + b) / 2) for k, q, b, a in books])
            if self.nbbo.get(pair) != body:
                self.nbbo[pair] = body
                out.append(("nbbo", pair, msgspec.structs.replace(body, ts=t)))
            if len(books) < 2:
                continue
            for key, _q, b, a in books:
                mid = (a + b) / 2
                others = median((ob + oa) / 2 for k, _, ob, oa in books if k != key)
                bps = abs(mid - others) / others * 1e4
                if bps > self.conf.divergence_bps:
                    out += self._raise("divergence", key, t, round(bps, 4), self.conf.divergence_bps,
                                       f"mid {mid:g} vs {others:g} elsewhere ({pair})")
                else:
                    out += self._clear("divergence", key, t, round(bps, 4))
        compared = {key for books in pairs.values() if len(books) >= 2 for key, *_ in books}
        for kind, key in sorted(self.active):
            if kind == "divergence" and key not in compared:  # left the NBBO (stale, old, alone)
                out += self._clear(kind, key, t)
        return out
