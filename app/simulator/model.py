"""A stochastic order-flow model: the simulator's true book for one instrument.

Prices and sizes are integers (ticks, lots) rendered as exact decimal strings. Each
:meth:`TrueBook.step` applies a small burst of realistic events — cancels and new orders
near the top, size changes, trades eating the best level, the occasional price move — and
returns the absolute level changes, never crossing the book. :meth:`TrueBook.shift` moves the
whole book by a number of ticks (an underlying move) and returns its changes the same way.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal

Change = tuple[str, str, str]  # (side "b"|"a", price text, size text; "0" deletes)


@dataclass(frozen=True)
class Spec:
    tick: Decimal
    lot: Decimal
    mid_ticks: int
    depth: int
    mean_lots: int = 40  # a level's mean size, in lots


#: Contracts sized in USD as their venues size them: Deribit's inverse futures and perpetuals
#: (amounts in USD, steps of the 10 USD contract for BTC, 1 USD for ETH), Binance COIN-M (whole
#: contracts of 100 USD) and Bybit's inverse contracts (whole USD).
DERIBIT_INVERSE = re.compile(r"(BTC|ETH)-(PERPETUAL|\d{1,2}[A-Z]{3}\d{2})")
COIN_MARGINED = re.compile(r"(BTC|ETH)USD(_PERP|_\d{6})?")


def spec_for(symbol: str) -> Spec:
    """Deterministic, plausible contract specs from the symbol's name."""
    s = symbol.upper()
    mid = 650_000 if s.startswith("BTC") else 192_000
    tick = Decimal("0.1") if s.startswith("BTC") else Decimal("0.01")
    if DERIBIT_INVERSE.fullmatch(s):  # ~20,000 USD a level (BTC), ~2,000 (ETH)
        return Spec(tick, Decimal(10) if s.startswith("BTC") else Decimal(1), mid, 200, 2000)
    if COIN_MARGINED.fullmatch(s):
        whole = "_" in s  # Binance COIN-M: contracts of 100 USD; Bybit inverse: USD
        return Spec(tick, Decimal(1), mid, 200, 200 if whole else 20_000)
    if s.startswith(("BTC", "XBT")) and s.count("-") == 3:  # Deribit option BTC-27MAR26-60000-C
        return Spec(Decimal("0.0005"), Decimal("0.1"), 40 + zlib.crc32(s.encode()) % 200, 30)
    if s.startswith("ETH") and s.count("-") == 3:
        return Spec(Decimal("0.0005"), Decimal("1"), 30 + zlib.crc32(s.encode()) % 200, 30)
    if s.startswith(("BTC", "XBT")):
        return Spec(Decimal("0.1"), Decimal("0.001"), 650_000, 200)
    if s.startswith("ETH"):
        return Spec(Decimal("0.01"), Decimal("0.01"), 192_000, 200)
    return Spec(Decimal("0.001"), Decimal("1"), 5_000 + zlib.crc32(s.encode()) % 50_000, 100)


def _text(units: int, step: Decimal) -> str:
    value = Decimal(units) * step
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


class TrueBook:
    """The ground-truth book of one simulated instrument."""

    def __init__(self, symbol: str, seed: int | None = None) -> None:
        self.symbol = symbol
        self.spec = spec_for(symbol)
        self.rng = random.Random(zlib.crc32(symbol.encode()) if seed is None else seed)
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self._best: tuple[int, int] | None = None  # (best bid, best ask) while known: see best()
        self._texts: dict[tuple[int, Decimal], str] = {}  # (units, step) → text
        mid = self.spec.mid_ticks
        for i in range(1, self.spec.depth + 1):
            if mid - i > 0:  # a cheap option's bids stop at its first tick: no venue quotes a price of 0
                self.bids[mid - i] = self._size()
            self.asks[mid + i] = self._size()

    def _size(self) -> int:
        return max(1, int(self.rng.expovariate(1 / self.spec.mean_lots)))

    def price(self, ticks: int) -> str:
        return self._text(ticks, self.spec.tick)

    def size(self, lots: int) -> str:
        return self._text(lots, self.spec.lot)

    def _text(self, units: int, step: Decimal) -> str:
        text = self._texts.get((units, step))
        if text is None:
            if len(self._texts) > 10_000:
                self._texts.clear()
            text = self._texts[(units, step)] = _text(units, step)
        return text

    def best(self) -> tuple[int, int]:
        """(best bid, best ask) in ticks; kept between changes (a scan of both sides per event
        was a fifth of the simulator's time at 10,000 frames/s). Whoever writes ``bids`` or
        ``asks`` other than through the book's own methods calls :meth:`forget_best`."""
        best = self._best
        if best is None:
            best = self._best = (max(self.bids), min(self.asks))
        return best

    def forget_best(self) -> None:
        self._best = None

    def top(self) -> tuple[str, str, str, str]:
        b, a = self.best()
        return self.price(b), self.size(self.bids[b]), self.price(a), self.size(self.asks[a])

    def levels(self, n: int | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids = sorted(self.bids, reverse=True)[:n]
        asks = sorted(self.asks)[:n]
        return ([(self.price(p), self.size(self.bids[p])) for p in bids],
                [(self.price(p), self.size(self.asks[p])) for p in asks])

    def _set(self, side: str, ticks: int, lots: int, out: dict[tuple[str, int], int]) -> None:
        book = self.bids if side == "b" else self.asks
        if lots <= 0:
            book.pop(ticks, None)
        else:
            book[ticks] = lots
        out[(side, ticks)] = max(lots, 0)
        best = self._best
        if best is not None:
            bid, ask = best
            if side == "b":
                if lots > 0 and ticks > bid:
                    self._best = (ticks, ask)
                elif lots <= 0 and ticks == bid:
                    self._best = None
            elif lots > 0 and ticks < ask:
                self._best = (bid, ticks)
            elif lots <= 0 and ticks == ask:
                self._best = None

    def step(self, events: int | None = None) -> list[Change]:
        """Apply 1..5 events (or ``events``); return absolute changes, each level once."""
        rng = self.rng
        out: dict[tuple[str, int], int] = {}
        for _ in range(events or rng.randint(1, 5)):
            side = rng.choice("ba")
            book = self.bids if side == "b" else self.asks
            best_bid, best_ask = self.best()
            r = rng.random()
            if r < 0.30 and len(book) > 5:  # cancel near the top
                near = sorted(book, reverse=side == "b")[: rng.randint(1, 8)]
                self._set(side, near[-1], 0, out)
            elif r < 0.60:  # new order near the top; a wide spread attracts orders inside it
                spread = best_ask - best_bid
                inside = spread > 1 and rng.random() < min(0.9, 0.2 * spread)
                if side == "b":
                    lo, hi = (best_bid + 1, best_ask - 1) if inside else (best_bid - 10, best_bid)
                else:
                    lo, hi = (best_bid + 1, best_ask - 1) if inside else (best_ask, best_ask + 10)
                ticks = max(1, rng.randint(lo, hi))
                if side == "b" and ticks >= best_ask or side == "a" and ticks <= best_bid:
                    continue
                self._set(side, ticks, book.get(ticks, 0) + self._size(), out)
            elif r < 0.85 and book:  # size change somewhere in the book
                ticks = rng.choice(list(book))
                self._set(side, ticks, max(0, book[ticks] + rng.randint(-book[ticks], 30)), out)
            else:  # a trade eats into the best level on one side
                best = best_bid if side == "b" else best_ask
                self._set(side, best, book[best] - rng.randint(1, book[best]), out)
            self._refill(out)
        return [(side, self.price(t), self.size(lots)) for (side, t), lots in out.items()]

    def shift(self, ticks: int) -> list[Change]:
        """Move every level of both sides by ``ticks`` (sizes unchanged); return the absolute
        changes — vacated levels deleted with size "0", then the new levels — each level once.

        A translation never crosses the book. Downwards it stops where the best bid would reach
        zero (``ticks`` is clamped to ``1 - best bid``); levels pushed to or below zero are dropped
        and the sides refilled."""
        if not ticks:
            return []
        ticks = max(ticks, 1 - max(self.bids))
        out: dict[tuple[str, int], int] = {}
        for side, book in (("b", self.bids), ("a", self.asks)):
            old = dict(book)
            new = {p + ticks: lots for p, lots in old.items() if p + ticks > 0}
            for p in old:
                if p not in new:
                    out[(side, p)] = 0
            for p, lots in new.items():
                if old.get(p) != lots:
                    out[(side, p)] = lots
            book.clear()
            book.update(new)
        self._best = None
        self._refill(out)
        return [(side, self.price(t), self.size(lots)) for (side, t), lots in out.items()]

    def _refill(self, out: dict[tuple[str, int], int]) -> None:
        """Keep both sides populated to roughly their configured depth, the spread tight."""
        best_bid, best_ask = self.best()
        while best_ask - best_bid > 5:  # liquidity providers step into a wide spread
            if self.rng.random() < 0.5:
                best_bid += self.rng.randint(1, 2)
                self._set("b", best_bid, self._size(), out)
            else:
                best_ask -= self.rng.randint(1, 2)
                self._set("a", best_ask, self._size(), out)
        for side, book, sign in (("b", self.bids, -1), ("a", self.asks, 1)):
            while len(book) < max(3, self.spec.depth // 2):
                ticks = (min(book) if side == "b" else max(book)) + sign * self.rng.randint(1, 3)
                if ticks < 1:
                    break  # no prices at or below zero
                self._set(side, ticks, self._size(), out)
