"""``positions``, ``collateral``, ``hedge.fills``, ``risk.rules``, ``risk.depth``, ``risk.exposure``,
``risk.scenarios``, ``risk.margin``, ``risk.hedge``, ``alerts``, ``nbbo``: the desk's inputs and
what the risk engine derives.

Every derived record lists its ``inputs`` (which record of which topic gave each number), and
its ``ts`` is event time (the inputs' receive time): a replay publishes the same records."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from app.records.common import Dec, InstrumentKey, Level, Ns, Record, Source

#: A figure rounded to 12 significant digits; null when not finite or not computable.
Fig = float | None


class PositionRecord(Record, kw_only=True):
    """A desk's position. Key: ``<portfolio>|<instrument key>`` (compacted; a tombstone removes it).
    bookstream writes numbers as text; the worker also takes JSON numbers from a desk's own tools
    (``app.risk.positions.parse_record`` checks every field and names the one that is wrong)."""

    portfolio: Annotated[str, Meta(description="must equal the key's; may be left out")]
    instrument: InstrumentKey
    quantity: Annotated[Dec | int | float, Meta(description="signed, in the venue's units (contracts, coin or USD)")]
    avg_price: Dec | int | float | None = None
    ts: Annotated[Ns, Meta(description="in force from (event time); missing: 0, from the start")] = 0


class CollateralRecord(Record, kw_only=True):
    """What a portfolio holds as collateral in one currency at its venue. Key:
    ``<portfolio>|<currency>`` (compacted; a tombstone removes it). Set with `faust -A app
    collateral set`; equity = collateral + the unrealised P&L of the portfolio's positions."""

    portfolio: str
    currency: Annotated[str, Meta(description="BTC, ETH, USDC, … (upper case)")]
    amount: Annotated[Dec, Meta(description="decimal text, ≥ 0")]
    ts: Annotated[Ns, Meta(description="in force from (event time)")]


class HedgeFill(Record, kw_only=True):
    """What became of a hedge signal, reported by an execution system (`faust -A app hedge
    fill|ack|reject`, `hedge paper`, or the desk's own). Key: the signal's id (compacted: its
    latest state). Until a signal is filled, rejected or expires (HEDGE_SIGNAL_TTL_S) its unfilled
    size counts as in flight; a fill changes the portfolio's position by the size filled since the
    signal's previous fill record (``filled`` is cumulative)."""

    signal: str
    state: Annotated[Literal["acked", "partial", "filled", "rejected"], Meta(
        description="acked: working at the venue; partial: part filled, the rest still working")]
    portfolio: str
    instrument: InstrumentKey
    side: Literal["buy", "sell"]
    filled: Annotated[Dec, Meta(description="cumulative size filled, in the instrument's units")]
    price: Annotated[Dec | None, Meta(description="average price of what was filled")] = None
    reason: str = ""
    ts: Annotated[Ns, Meta(description="event time it happened (a replay applies it there)")]
    by: Annotated[str, Meta(description="who reported it (command, paper, the desk's executor)")]


class RuleState(Record, kw_only=True):
    """A hedge rule's state, set by `faust -A app risk rule` or the web API. Key: the rule id
    (compacted)."""

    rule: str
    state: Annotated[str, Meta(description="active | reduce-only | halted")]
    ts: Ns
    by: Annotated[str, Meta(description="who set it (command, web)")]


class RiskDepth(Record, kw_only=True):
    """An instrument's top DEPTH_LEVELS levels per side, once per RISK_DEPTH_INTERVAL_MS of
    receive time: what the hedge engine walks for slippage. Key: the instrument key."""

    key: InstrumentKey
    bids: list[Level]
    asks: list[Level]
    seq: int | None
    ts_exchange: int
    ts_recv: Ns
    ts_published: Ns


class InputRef(Record, kw_only=True):
    """Which input record gave a number (``input`` null: none was available)."""

    key: InstrumentKey
    input: Annotated[str | None, Meta(description="book.top | ticker | risk.depth, or null when missing")] = None
    field: Annotated[str | UnsetType, Meta(description="the field used: mark, mid …")] = UNSET
    ts_recv: Ns | UnsetType = UNSET
    seq: int | UnsetType = UNSET
    source: Source | UnsetType = UNSET


class ExposureLeg(Record, kw_only=True):
    instrument: InstrumentKey
    quantity: Dec
    price: Fig
    delta: Fig
    notional_usd: Fig
    gamma: Fig | UnsetType = UNSET
    gamma_1pct: Fig | UnsetType = UNSET
    vega: Fig | UnsetType = UNSET
    theta: Fig | UnsetType = UNSET
    iv: Fig | UnsetType = UNSET


class Exposure(Record, kw_only=True):
    """A portfolio's greeks on one underlying, on every change. Key: ``<portfolio>|<underlying>``."""

    portfolio: str
    underlying: str
    delta: Annotated[Fig, Meta(description="in coin")]
    delta_usd: Fig
    gamma: Fig
    gamma_1pct: Fig
    vega: Fig
    theta: Fig
    notional_usd: Fig
    venue: Annotated[dict[str, Fig], Meta(description="the venue's own greeks summed, where every option has them")]
    positions: list[ExposureLeg]
    flags: Annotated[dict[str, list[str]], Meta(description="per instrument: why its input is doubtful (old …)")]
    unknown: Annotated[list[str], Meta(description="positions the instrument registry does not know")]
    ok: bool
    inputs: list[InputRef]
    reason: Annotated[str, Meta(description="what caused it: position, top, ticker, interval …")]
    ts: Ns
    ts_published: Ns = 0


class Scenarios(Record, kw_only=True):
    """The portfolio's USD P&L over a grid of underlying moves × volatility shifts. Key:
    ``<portfolio>|<underlying>``."""

    portfolio: str
    underlying: str
    moves: list[float]
    vol_shifts: list[float]
    pnl_usd: Annotated[list[list[Fig]], Meta(description="[move][vol shift]")]
    worst_usd: Fig
    flags: dict[str, list[str]]
    ok: bool
    inputs: list[InputRef]
    ts: Ns
    ts_published: Ns = 0


class MarginRecord(Record, kw_only=True):
    """A portfolio's margin at one venue in one settlement currency, at each risk tick (published
    when it changes). Key: ``<portfolio>|<venue>|<currency>``. ``method`` names how it was computed
    (app.risk.margin; README "Margin"); ``components`` are that method's parts."""

    portfolio: str
    venue: str
    currency: str
    method: Annotated[str, Meta(description="deribit-standard | deribit-portfolio | bybit-usdc-options | "
                                            "okx-portfolio")]
    im: Fig
    mm: Fig
    components: Annotated[dict[str, Fig], Meta(description="the method's parts (worst_case, roll_shock …; MR1 …)")]
    legs: Annotated[list[dict[str, Any]], Meta(description="per position: key, im, mm (standard methods)")]
    collateral: Annotated[Fig, Meta(description="from the collateral topic; null when none is set (then no "
                                                "equity, no ratios)")]
    realized: Annotated[Fig, Meta(description="P&L of hedge fills since the collateral record")]
    unrealized: Annotated[Fig, Meta(description="positions marked at the venue's mark against avg_price")]
    equity: Annotated[Fig, Meta(description="collateral + realized + unrealized; null without collateral")]
    mm_ratio: Annotated[Fig, Meta(description="mm / equity; null when equity ≤ 0")]
    im_ratio: Fig
    no_avg_price: Annotated[list[str], Meta(description="positions without avg_price: no unrealized P&L counted")]
    flags: Annotated[dict[str, list[str]], Meta(description="per input: stale, old, missing …")]
    not_priced: Annotated[list[str], Meta(description="positions left out: no price, unknown instrument")]
    ok: bool
    inputs: list[InputRef]
    ts: Ns
    ts_published: Ns = 0


class HedgeCommon(Record, kw_only=True, tag_field="type"):
    id: Annotated[str, Meta(description="unique per signal: <rule>:<ts>")]
    rule: str
    portfolio: str
    underlying: str
    greek: str
    band: Annotated[list[float], Meta(description="[-trigger, trigger]")]
    target: float
    state: str
    reason: str
    ts: Ns
    inputs: list[InputRef]
    ts_published: Ns = 0


class HedgeSignal(HedgeCommon, kw_only=True, tag="signal"):
    """A hedge to send: exposure outside the rule's band, sized to bring it to target. Key: its id."""

    instrument: InstrumentKey
    side: Literal["buy", "sell"]
    size: Dec
    exposure_before: Fig
    exposure_after: Fig
    expected_price: Fig
    mid: Fig
    slippage_bps: Fig
    fillable: Fig
    depth_ts_recv: Ns | None


class HedgeBlocked(HedgeCommon, kw_only=True, tag="blocked"):
    """A hedge that was due but not sent, and why. Key: its id."""

    exposure: Fig


class Alert(Record, kw_only=True):
    """An alert ``raised`` or ``cleared`` (stale, crossed, spread, funding-jump, divergence). Key:
    ``<kind>|<instrument key or pair>``."""

    kind: str
    key: str
    state: Literal["raised", "cleared"]
    value: Annotated[Any, Meta(description="the measured value (a number, or null)")]
    threshold: Any
    detail: str
    ts: Ns
    raised_ts: Annotated[Ns | UnsetType, Meta(description="cleared: when it was raised")] = UNSET
    ts_published: Ns = 0


class NbboVenue(Record, kw_only=True):
    key: InstrumentKey
    quote: str
    bid: float | None
    ask: float | None
    mid: float | None


class Nbbo(Record, kw_only=True):
    """The best bid and ask of one group across venues, on every change. Key: the group — a spot
    pair (BTC/USD) or linear perpetuals of one base (BTC/USD perp); ``app.risk.alerts.group_of``."""

    pair: str
    bid: float | None
    bid_venue: str
    bid_quote: str
    ask: float | None
    ask_venue: str
    ask_quote: str
    venues: list[NbboVenue]
    ts: Ns
    ts_published: Ns = 0


#: What the risk engine publishes: (topic, key, record).
RiskRecord = Exposure | Scenarios | MarginRecord | HedgeSignal | HedgeBlocked | Alert | Nbbo
