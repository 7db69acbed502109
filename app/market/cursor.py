"""Which trades of one instrument were already published: duplicates dropped, gaps found.

Venues publish an instrument's trades in order. ``Trade.order`` is where a trade stands in
that order (Deribit ``trade_seq``, Binance ``t``, OKX ``tradeId``, Bybit ``seq``, Coinbase
``trade_id``); several trades may share one order value (a Bybit match), so the ids seen at
the last value are kept too. A trade before the last one, or at it with an id already seen,
is a duplicate (a venue repeat, a resubscription's snapshot, a replay overlap). Where the
order numbers every trade (``Trade.contiguous``: Deribit, Binance), a jump is a gap: the
missing trades are reported, never silently skipped.

The cursor is part of the instrument's state row (``app.state.layout``), so it is committed
with the progress of the raw records it covers and survives restarts exactly.
"""

from __future__ import annotations

from typing import Any

from app.market.records import Trade


class TradeCursor:
    __slots__ = ("dups", "gaps", "ids", "last", "missing", "published")

    def __init__(self) -> None:
        self.last: int | None = None  # order of the last trade published
        self.ids: list[str] = []  # ids published at that order
        self.published = 0
        self.dups = 0
        self.gaps = 0
        self.missing = 0

    def admit(self, trade: Trade) -> tuple[bool, tuple[int, int] | None]:
        """(publish it?, (first, last) missing order values when it reveals a gap)."""
        last = self.last
        if last is not None and (trade.order < last or (trade.order == last and trade.trade_id in self.ids)):
            self.dups += 1
            return False, None
        gap = None
        if last is not None and trade.contiguous and trade.order > last + 1:
            gap = (last + 1, trade.order - 1)
            self.gaps += 1
            self.missing += trade.order - 1 - last
        if trade.order != last:
            self.last, self.ids = trade.order, []
        self.ids.append(trade.trade_id)
        self.published += 1
        return True, gap

    def encode(self) -> dict[str, Any]:
        return {"last": self.last, "ids": self.ids, "published": self.published, "dups": self.dups,
                "gaps": self.gaps, "missing": self.missing}

    @classmethod
    def decode(cls, row: dict[str, Any] | None) -> TradeCursor:
        cur = cls()
        if row:
            cur.last, cur.ids = row["last"], list(row["ids"])
            cur.published, cur.dups = int(row["published"]), int(row["dups"])
            cur.gaps, cur.missing = int(row["gaps"]), int(row["missing"])
        return cur
