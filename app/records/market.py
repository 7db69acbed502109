"""``trades``, ``ticker``, ``feed.status``, ``ref.instruments``, ``options.chain``: normalised
market data beside the books. Venue numbers stay the venue's decimal text; every record names
the raw record and frame it came from (``source``)."""

from __future__ import annotations

from typing import Annotated

from msgspec import UNSET, Meta, UnsetType

from app.records.common import Dec, InstrumentKey, Ns, Record, Source, Venue

OptDec = Dec | None


class TradeRecord(Record, kw_only=True):
    """One trade, once (a repeat of a trade id the worker has seen is dropped). Key: the
    instrument key."""

    key: InstrumentKey
    trade_id: Annotated[str, Meta(description="the venue's trade id, as text; unique per instrument")]
    price: Dec
    size: Dec
    unit: Annotated[str, Meta(description="units of size: contracts | base | quote")]
    side: Annotated[str, Meta(description="taker side: buy | sell | empty when the venue does not say")]
    liquidation: Annotated[str | None, Meta(description="the venue's liquidation flag, as sent")]
    block_trade_id: str | None
    combo_id: str | None
    seq: Annotated[int | None, Meta(description="the venue's trade sequence, when it has one")]
    mark_price: OptDec | UnsetType = UNSET
    index_price: OptDec | UnsetType = UNSET
    iv: Annotated[OptDec | UnsetType, Meta(description="implied volatility as a decimal (0.55 = 55 %)")] = UNSET
    mark_iv: OptDec | UnsetType = UNSET
    tick_direction: Annotated[int | UnsetType, Meta(description="Deribit's tick direction (0-3)")] = UNSET
    ts_exchange: Ns
    ts_recv: Ns
    ts_published: Ns
    source: Source


#: Trade fields a venue may add beside the common ones (``Trade.extra``).
TRADE_EXTRA = ("mark_price", "index_price", "iv", "mark_iv", "tick_direction")


class TickerRecord(Record, kw_only=True):
    """A ticker, mark-price or funding update of one instrument. Every field is present; null
    where the venue did not give it in this frame (with ``partial``, it kept its previous value).
    Key: the instrument key."""

    key: InstrumentKey
    channel: Annotated[str, Meta(description="the venue channel: ticker, markPrice, tickers, mark-price …")]
    partial: Annotated[bool, Meta(description="a delta: null fields keep their previous value")]
    last: OptDec = None
    mark: OptDec = None
    index: OptDec = None
    mid: Annotated[OptDec, Meta(description="the venue's own mid price (Hyperliquid midPx)")] = None
    bid: OptDec = None
    bid_size: OptDec = None
    ask: OptDec = None
    ask_size: OptDec = None
    open_interest: OptDec = None
    funding_rate: OptDec = None
    funding_8h: OptDec = None
    next_funding_ts: Ns | None = None
    predicted_funding: OptDec = None
    premium: Annotated[OptDec, Meta(description="the venue's premium of its book over the oracle price, as a decimal "
                                                "(Hyperliquid premium)")] = None
    settlement_price: OptDec = None
    estimated_delivery_price: OptDec = None
    state: Annotated[str | None, Meta(description="the venue's instrument state word")] = None
    underlying_price: OptDec = None
    underlying_index: Annotated[str | None, Meta(description="the venue's underlying name")] = None
    interest_rate: OptDec = None
    bid_iv: Annotated[OptDec, Meta(description="implied volatilities as decimals (0.55 = 55 %)")] = None
    ask_iv: OptDec = None
    mark_iv: OptDec = None
    delta: OptDec = None
    gamma: OptDec = None
    vega: OptDec = None
    theta: OptDec = None
    rho: OptDec = None
    delta_pa: OptDec = None
    gamma_pa: OptDec = None
    vega_pa: OptDec = None
    theta_pa: OptDec = None
    ts_exchange: Ns
    ts_recv: Ns
    ts_published: Ns
    source: Source


class FeedStatus(Record, kw_only=True):
    """Something about a feed rather than a book: a subscription ``refused``, ``unconfirmed``,
    ``silent`` or ``recovered`` (from ingestion's ``conn`` frames), or a ``gap`` in a venue's
    contiguous trade numbers. Key: the instrument key (``<venue>:`` for a venue-wide channel)."""

    key: str
    feed: Annotated[str, Meta(description="book, trades, or the channel's name")]
    event: Annotated[str, Meta(description="refused | unconfirmed | silent | recovered | gap")]
    channel: Annotated[str | UnsetType, Meta(description="subscriptions: the channel id")] = UNSET
    detail: Annotated[str | UnsetType, Meta(description="subscriptions: the venue's own words")] = UNSET
    first_missing: Annotated[int | UnsetType, Meta(description="gap: first trade number not received")] = UNSET
    last_missing: int | UnsetType = UNSET
    missing: int | UnsetType = UNSET
    gaps: Annotated[int | UnsetType, Meta(description="gap: gaps of this instrument so far")] = UNSET
    ts_exchange: Annotated[Ns | UnsetType, Meta(description="gap: exchange time of the trade after it")] = UNSET
    ts_recv: Ns
    ts_published: Ns
    source: Source


class TickStep(Record, kw_only=True):
    above_price: Dec
    tick_size: Dec


class InstrumentRecord(Record, kw_only=True):
    """One version of an instrument's terms, valid from ``valid_from``: a change of terms is a
    new version, never an overwrite. Key: ``<instrument key>|<valid_from>`` (compacted: every
    version kept)."""

    key: InstrumentKey
    kind: Annotated[str, Meta(description="spot | perpetual | future | option")]
    margin: Annotated[str, Meta(description="linear | inverse | quanto")]
    base: str
    quote: str
    settle: str
    contract_size: Annotated[OptDec, Meta(description="one contract in base (linear) or quote (inverse) units")] = None
    multiplier: OptDec = None
    tick_size: OptDec = None
    tick_size_steps: Annotated[list[TickStep], Meta(description="Deribit's tick size above a price")] = []
    lot_size: OptDec = None
    min_size: OptDec = None
    min_notional: OptDec = None
    max_leverage: Annotated[OptDec, Meta(description="the highest leverage the venue allows (Hyperliquid)")] = None
    initial_margin: Annotated[OptDec, Meta(description="initial margin as a fraction of notional (dYdX)")] = None
    maintenance_margin: Annotated[OptDec, Meta(description="maintenance margin as a fraction of notional "
                                                          "(dYdX)")] = None
    strike: OptDec = None
    option_type: Annotated[str | None, Meta(description="call | put")] = None
    expiry_ns: Ns | None = None
    underlying: str | None = None
    index: str | None = None
    state: Annotated[str, Meta(description="open | halted | settlement | delivered | closed …")] = "open"
    valid_from: Annotated[Ns, Meta(description="receive time of the frame that first showed these terms")] = 0
    source: Source | None = None
    ts_exchange: Annotated[int, Meta(description="the venue's time of that frame, else 0")] = 0
    ts_recv: Annotated[Ns, Meta(description="= valid_from")] = 0
    ts_published: Ns = 0


Num = float | None


class OursGreeks(Record, kw_only=True):
    """bookstream's own Black-76 numbers from the venue's inputs."""

    forward: Num
    bid_iv: Num
    ask_iv: Num
    mark_iv: Num
    delta: Num
    gamma: Num
    vega: Num
    theta: Num


class Residuals(Record, kw_only=True):
    """Ours minus the venue's, where both exist."""

    bid_iv: Num
    ask_iv: Num
    mark_iv: Num
    delta: Num


class ChainOption(Record, kw_only=True):
    """One option of a strike: the venue's quote and greeks (as sent) and ours."""

    instrument: InstrumentKey
    bid: OptDec = None
    ask: OptDec = None
    mark: OptDec = None
    bid_iv: OptDec = None
    ask_iv: OptDec = None
    mark_iv: OptDec = None
    delta: OptDec = None
    gamma: OptDec = None
    vega: OptDec = None
    theta: OptDec = None
    ts_exchange: Ns
    source: Source | None
    ours: OursGreeks | UnsetType = UNSET
    residual: Residuals | UnsetType = UNSET
    undetermined: Annotated[list[str] | UnsetType, Meta(description="sides whose IV has no solution")] = UNSET


class ChainStrike(Record, kw_only=True):
    strike: Dec
    call: ChainOption | None
    put: ChainOption | None


class SpecRef(Record, kw_only=True):
    """The ``ref.instruments`` version whose terms priced the chain."""

    key: InstrumentKey
    valid_from: Ns


class OptionsChain(Record, kw_only=True):
    """One expiry's options on one venue, by strike, every CHAIN_INTERVAL_MS of exchange time.
    Key: ``<venue>:<chain>`` (e.g. deribit:BTC-27MAR26)."""

    key: str
    venue: Venue
    chain: str
    underlying: str
    expiry: Annotated[str, Meta(description="ISO 8601 UTC")]
    expiry_ns: Ns
    t_years: float
    forward: float | None
    forward_source: str | None
    premium_currency: Annotated[str, Meta(description="coin | quote")]
    ts_exchange: Ns
    ts_recv: Ns
    ts_published: Ns
    strikes: list[ChainStrike]
    missing_forward: bool
    spec: SpecRef | None
