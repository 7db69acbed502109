"""Normalised trades and tickers, and the JSON records of the ``trades`` and ``ticker`` topics.

Prices, sizes and every venue number stay the venue's decimal text (``num_str``); implied
volatilities are converted exactly to decimals (Deribit sends percent). Times are integer
nanoseconds since the epoch. Every record names the raw record and frame it came from
(``source``), so each published number can be traced to the verbatim frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from app.decimals import decimal_text
from app.records import FeedStatus, Source, TickerRecord, TradeRecord, encode

#: Units of a trade size: contracts, the base currency, or the quote currency (Deribit
#: perpetuals and inverse futures trade amounts in USD).
UNITS = ("contracts", "base", "quote")


@dataclass(slots=True)
class Trade:
    trade_id: str  # the venue's trade id, as text
    price: str
    size: str
    unit: str  # one of UNITS
    side: str  # taker side: "buy" | "sell" | "" when the venue does not say
    ts_exchange: int
    order: int  # where it stands in the venue's trade order (trade_seq, t, tradeId, seq, or ts)
    contiguous: bool = False  # ``order`` numbers every trade of the instrument without holes
    seq: int | None = None  # the venue's trade sequence, when it has one
    liquidation: str | None = None  # the venue's liquidation flag (Deribit M/T/MT, Binance LIQUIDATION…)
    block_trade_id: str | None = None
    combo_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # venue fields kept as sent: app.records.market.TRADE_EXTRA


#: Ticker fields, all optional (None where the venue does not give them in this frame): those of
#: the ``ticker`` record (app.records.market.TickerRecord) between its head and its times.
TICKER_FIELDS = tuple(f for f in TickerRecord.__struct_fields__ if f not in (
    "key", "channel", "partial", "ts_exchange", "ts_recv", "ts_published", "source"))


@dataclass(slots=True)
class Ticker:
    channel: str  # the venue channel the fields came from (ticker, markPrice, tickers, mark-price…)
    ts_exchange: int
    fields: dict[str, Any]  # TICKER_FIELDS given by this frame (absent ones are published as null)
    partial: bool = False  # a delta: fields not in this frame keep their previous value
    symbol: str | None = None  # another instrument of the frame's venue (OKX opt-summary, keyed by chain)


def percent_to_decimal(text: str | None) -> str | None:
    """``"120.74"`` (percent) → ``"1.2074"``, exactly."""
    if text is None:
        return None
    return decimal_text(Decimal(text) / 100)


def trade_record(key: str, t: Trade, ts_recv: int, ts_published: int, src: Source) -> bytes:
    return encode(TradeRecord(
        key=key, trade_id=t.trade_id, price=t.price, size=t.size, unit=t.unit, side=t.side, liquidation=t.liquidation,
        block_trade_id=t.block_trade_id, combo_id=t.combo_id, seq=t.seq, **t.extra, ts_exchange=t.ts_exchange,
        ts_recv=ts_recv, ts_published=ts_published, source=src))


def ticker_record(key: str, t: Ticker, ts_recv: int, ts_published: int, src: Source) -> bytes:
    return encode(TickerRecord(key=key, channel=t.channel, partial=t.partial, **t.fields, ts_exchange=t.ts_exchange,
                               ts_recv=ts_recv, ts_published=ts_published, source=src))


def subscription_record(key: str, event: dict[str, Any], ts_recv: int, ts_published: int, src: Source) -> bytes:
    """A ``feed.status`` record: a subscription of ``key`` (``<venue>:`` for a venue-wide
    channel) ``refused``, ``unconfirmed``, ``silent`` or ``recovered`` (``app.ingest.connection``)."""
    return encode(FeedStatus(
        key=key, feed=str(event.get("feed", "")), event=str(event.get("event", "")),
        channel=str(event.get("channel", "")), detail=str(event.get("detail", ""))[:300], ts_recv=ts_recv,
        ts_published=ts_published, source=src))


def gap_record(key: str, kind: str, first_missing: int, last_missing: int, gaps: int, ts_exchange: int,
               ts_recv: int, ts_published: int, src: Source) -> bytes:
    """A ``feed.status`` record: trades ``first_missing..last_missing`` never arrived (seen when
    the trade after them, of exchange time ``ts_exchange``, did)."""
    return encode(FeedStatus(
        key=key, feed=kind, event="gap", first_missing=first_missing, last_missing=last_missing,
        missing=last_missing - first_missing + 1, gaps=gaps, ts_exchange=ts_exchange, ts_recv=ts_recv,
        ts_published=ts_published, source=src))
