"""The risk engine's reference: which ``risk.hedge`` records a namespace's input topics give.

:func:`hedge_reference` hands the engine's input topics to a fresh :class:`app.risk.engine.RiskEngine`
(the same rules, the same engine settings) in the order :class:`app.risk.service.RiskService`
releases them: every record in one heap keyed ``(ts, RANK[kind], key, seq, n)`` — ``ts`` the
``ts_recv`` of a market input (``valid_from`` of a spec, the ``ts`` of a position or rule state),
``n`` the order of reading (partition by partition, in offset order: records that tie on the rest
are of one instrument, hence of one partition, so offset order is the order the service reads them
in too). Records are parsed and skipped as the service does (a ``book.status`` without
``ts_recv`` is a timer's retry; a bad position or rule state is not applied). It is the service
without its watermark: an engine for which no input ever arrives late.

Repeats are not dropped here: the service does not drop them either, the engine does — an input
whose ``(ts_recv, seq)`` is not past the last one of its kind and instrument is ignored
(``RiskEngine.seen``; tests/unit/test_risk.py feeds half the inputs twice), a position equal to the
one held changes nothing, and a spec version already known is not added again. An at-least-once
repeat of ``book.top`` (same ``ts_recv``, same ``seq``) sorts right behind its first copy and is
ignored, as the live engine ignores it whenever it comes.

:func:`compare_hedge` holds ``risk.hedge`` (read_committed) against it: every id once, none
missing, none the reference does not give, each of the reference's type (signal or blocked); the
contents of the records of one id are compared too, and those computed from other inputs than
the reference's told apart: an input reached the live engine behind its watermark
(``risk_late_inputs``) and was applied when it came, not in its place.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from app import records
from app.capture.formats import Record
from app.risk import positions as pos
from app.risk.engine import DeskEvent, EngineSettings, RiskEngine
from app.risk.rules import STATES, Rule
from app.risk.service import RANK, BadInput, collateral_event, fill_event, market_input
from app.venues.base import Kind
from tests.helpers import read_committed_partitions

#: The market inputs of the risk engine (topic names without the prefix; each is also its kind).
#: Fields the engine's unit tests leave out of their inputs, per kind (:func:`typed`).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "book.top": {"bid_sz": None, "ask_sz": None, "epoch": 0, "ts_exchange": 0, "ts_published": 0},
    "book.status": {"counters": {}, "ts": 0},
    "risk.depth": {"seq": None, "ts_exchange": 0, "ts_published": 0},
    "ticker": {"channel": "ticker", "partial": False, "ts_exchange": 0, "ts_published": 0,
               "source": {"topic": "raw.test", "partition": 0, "offset": 0, "index": 0}},
    "ref.instruments": {},
}


def typed(kind: str, body: Mapping[str, Any]) -> Any:
    """A test's input of ``kind`` (the fields it cares about) as the record the engine takes."""
    return msgspec.convert({**_DEFAULTS[kind], **body}, records.spec_of(kind).type)


def plain(outs: Iterable[tuple[str, str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The engine's (topic, key, record) outputs with each record as JSON-ready values."""
    return [(topic, key, msgspec.to_builtins(body)) for topic, key, body in outs]


MARKET = ("ref.instruments", "book.status", "book.top", "risk.depth", "ticker")
#: Every topic the engine reads: the market inputs and the desk's instructions.
INPUTS = (*MARKET, "positions", "risk.rules", "collateral", "hedge.fills")

#: (key, value) of one record.
KV = tuple[bytes | None, bytes | None]

#: The fault scenarios' desks have no executor: no fill ever answers a signal, and a signal counts
#: as in flight only until its rule's cooldown (5 s) is over (HEDGE_SIGNAL_TTL_S), so the rule fires
#: at every tick its cooldown allows — many signals to check across the faults.
NO_EXECUTOR_ENV = {"HEDGE_SIGNAL_TTL_S": "5"}

#: A desk for fault scenarios on the simulator (tests/chaos/test_cluster_chaos.py): long 200,000
#: USD of the Deribit BTC perpetual, i.e. ~3 BTC of delta at the simulator's ~65,000 — outside
#: ±1 whatever the price does, and a hedge signal changes no position (no executor:
#: NO_EXECUTOR_ENV), so the rule fires at every tick its cooldown allows (one every 5 s of event
#: time, 12 a minute, under its 30).
DESK_HEDGE = "deribit:BTC-PERPETUAL"
DESK_RULES = f"""
[[rule]]
id = "chaos-btc-delta"
portfolio = "chaos"
underlying = "BTC"
greek = "delta"
trigger = 1.0
target = 0.2
hedge = "{DESK_HEDGE}"
cooldown_s = 5
max_per_minute = 30
"""


def desk_positions() -> list[pos.Position]:
    """The desk's book, in force from the start (``ts`` 0): before any input, replayed captures
    of an older day included. A position stamped when it is set would come after those in event
    time, and before it the rule is blocked for an empty portfolio at the capture's first tick —
    a record the live engine publishes or not depending on whether the capture's inputs reach it
    before or after the live feed's (behind its watermark: late, never ticking)."""
    return [pos.make("chaos", DESK_HEDGE, "200000", ts=0)]


#: The catch-up scenario's desk (tests/chaos/test_cluster_chaos.py), on copies of the Binance USD-M
#: capture (bench.run.copies: copy k is instrument BTC<k>USDT, its frames the capture's renamed):
#: long 3 BTC of copy 0 — a linear perpetual of contract size 1, so its delta is its quantity,
#: outside ±1 whatever the price — hedged in copy 0 itself. A hedge signal changes no position: the
#: rule fires at every tick its cooldown allows once the copy's book is synced (one every 5 s of
#: event time, 12 a minute, under its 30): 69 over the capture's 345 s, the first at its first tick
#: after the snapshot, 0.47 s in (tests/unit/test_risk_reference.py computes them).
COPY_HEDGE = "binance-usdm:BTC0USDT"
COPY_RULES = f"""
[[rule]]
id = "catchup-btc-delta"
portfolio = "catchup"
underlying = "BTC"
greek = "delta"
trigger = 1.0
target = 0.2
hedge = "{COPY_HEDGE}"
cooldown_s = 5
max_per_minute = 30
"""
#: Where ingestion fetches the USD-M instrument list (app.venues.binance.BinanceInstruments.urls).
USDM_EXCHANGE_INFO = "https://fapi.binance.com/fapi/v1/exchangeInfo"


def copy_positions() -> list[pos.Position]:
    """The catch-up desk's book, in force from the start (``ts`` 0, as :func:`desk_positions`)."""
    return [pos.make("catchup", COPY_HEDGE, "3", ts=0)]


def copies_exchange_info(n: int, ts: int) -> bytes:
    """``GET /fapi/v1/exchangeInfo`` as Binance USD-M answers it at ``ts`` (ns), listing the ``n``
    copies of the capture as it listed BTCUSDT in August 2024 (the capture's day): USDT-margined
    perpetuals on BTC, tick 0.10, lot and minimum 0.001 BTC, minimum notional 100 USDT. Each copy
    is its own contract (its own ``pair``); bench.run.copies names them."""
    symbols = [{
        "symbol": f"BTC{k}USDT", "pair": f"BTC{k}USDT", "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000", "baseAsset": "BTC", "quoteAsset": "USDT", "marginAsset": "USDT",
        "pricePrecision": 2, "quantityPrecision": 3, "baseAssetPrecision": 8, "quotePrecision": 8,
        "underlyingType": "COIN", "underlyingSubType": ["PoW"], "settlePlan": 0, "triggerProtect": "0.0500",
        "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764", "tickSize": "0.10"},
            {"filterType": "LOT_SIZE", "stepSize": "0.001", "maxQty": "1000", "minQty": "0.001"},
            {"filterType": "MARKET_LOT_SIZE", "stepSize": "0.001", "maxQty": "120", "minQty": "0.001"},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": "100"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
             "multiplierDecimal": "4"}],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                       "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"]} for k in range(n)]
    return orjson.dumps({
        "timezone": "UTC", "serverTime": ts // 1_000_000, "futuresType": "U_MARGINED",
        "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
                       {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200}],
        "exchangeFilters": [], "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": symbols})


def copies_instruments(n: int, ts: int) -> Record:
    """The USD-M instrument list naming the ``n`` copies as ingestion writes it into
    ``raw.binance-usdm`` (app.ingest.service: a REST frame, verbatim, received at ``ts``, on
    connection ``binance-usdm-instruments``; app.router.Router keys it ``binance-usdm:``). The
    worker parses it with the venue's registry parser into one ``ref.instruments`` spec a copy,
    valid from ``ts``."""
    return Record(ts, "binance-usdm", "binance-usdm-instruments", Kind.REST, copies_exchange_info(n, ts),
                  USDM_EXCHANGE_INFO)


@dataclass
class HedgeReference:
    """What the engine publishes on ``risk.hedge`` given its inputs, in order, no input late."""

    records: dict[str, dict[str, Any]]  # id → body (as JSON gives it back), in the order published
    inputs: collections.Counter[str]  # input records handed to the engine, by instrument (or position, rule) key
    event_time: int  # the engine's event time after the last input (the live engine's, once it has them all)
    margin: list[dict[str, Any]] = field(default_factory=list)  # risk.margin bodies, in order

    def types(self) -> dict[str, int]:
        return dict(collections.Counter(str(b["type"]) for b in self.records.values()))


def hedge_reference(records: Mapping[str, Iterable[KV]], conf: EngineSettings, rules: list[Rule]) -> HedgeReference:
    """``records``: each input topic's records (by topic name without the prefix, see
    :data:`INPUTS`), partition by partition in offset order."""
    engine = RiskEngine(conf, rules)
    heap: list[tuple[int, int, str, int, int, str, Any]] = []
    order = itertools.count()
    inputs: collections.Counter[str] = collections.Counter()
    hedge: dict[str, dict[str, Any]] = {}
    margin: list[dict[str, Any]] = []

    def push(ts: int, kind: str, key: str, seq: int, body: Any) -> None:
        inputs[key] += 1
        heapq.heappush(heap, (ts, RANK[kind], key, seq, next(order), kind, body))

    def emit(outs: list[tuple[str, str, Any]]) -> None:
        for topic, _key, body in plain(outs):
            if topic == "risk.hedge" and body["id"] not in hedge:  # the service publishes an id once
                hedge[body["id"]] = body
            elif topic == "risk.margin":
                margin.append(body)

    for kind in MARKET:  # RiskService._record
        for _key, value in records.get(kind, ()):
            if value is None:
                continue
            try:
                found = market_input(kind, value)
            except BadInput:
                continue
            if found is not None:  # None: a timer's retry, no event time
                ts, instrument, seq, body = found
                push(ts, kind, instrument, seq, body)
    for key, value in records.get("positions", ()):  # RiskService._position
        text = key.decode("utf-8", "replace") if key else ""
        try:
            record = pos.parse_record(key, value)
        except pos.PositionError:
            continue
        if record is None:  # a tombstone applies when read: the service reads positions before market inputs
            emit(engine.on_position(text, None))
            continue
        position = record if record.quantity != 0 else None
        push(record.ts, "position", text, 0, DeskEvent(text, record.ts, position=position))
    for key, value in records.get("risk.rules", ()):  # RiskService._rule_state
        if key is None or value is None:
            continue
        rule_id = key.decode("utf-8", "replace")
        try:
            row = records.decode("risk.rules", value)
        except msgspec.DecodeError:
            continue
        if row.state in STATES and rule_id in engine.rules:
            push(row.ts, "rule-state", rule_id, 0, DeskEvent(rule_id, row.ts, state=row.state))
    for key, value in records.get("collateral", ()):  # RiskService._collateral
        try:
            event = collateral_event(key, value)
        except pos.PositionError:
            continue
        if event.collateral is None:
            engine.on_collateral(event.key, None)
        else:
            push(event.ts_recv, "collateral", event.key, 0, event)
    for _key, value in records.get("hedge.fills", ()):  # RiskService._fill
        try:
            fill = fill_event(value)
        except BadInput:
            continue
        if fill is not None:
            push(fill.ts_recv, "fill", fill.key, 0, fill)
    while heap:
        item = heapq.heappop(heap)
        emit(engine.on_input(item[5], item[6]))
    return HedgeReference(hedge, inputs, engine.now, margin)


def read_inputs(bootstrap: str, prefix: str) -> dict[str, list[KV]]:
    """Every committed record of the engine's input topics (``prefix`` + :data:`INPUTS`), each
    topic partition by partition in offset order."""
    return {name: [(r.key, r.value) for _, part in sorted(read_committed_partitions(bootstrap, prefix + name).items())
                   for r in part] for name in INPUTS}


def input_delays(records: Mapping[str, Iterable[KV]], keys: set[str]) -> list[tuple[int, int, str]]:
    """(ts_recv, ts_published - ts_recv, topic) of every ``book.top`` and ``ticker`` record of
    the instruments ``keys``: how long after receiving its frame the worker published it."""
    out = []
    for topic in ("book.top", "ticker"):
        for _key, value in records.get(topic, ()):
            if value is None:
                continue
            body = orjson.loads(value)
            if body.get("key") in keys and body.get("ts_published") and body.get("ts_recv"):
                out.append((int(body["ts_recv"]), int(body["ts_published"]) - int(body["ts_recv"]), topic))
    return out


def published_hedge(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every committed record of ``risk.hedge``, partition by partition in offset order."""
    return [orjson.loads(r.value) for _, part in sorted(read_committed_partitions(bootstrap, topic).items())
            for r in part if r.value is not None]


async def _write_positions(bootstrap: str, topic: str, partitions: int, rows: list[pos.Position]) -> None:
    from aiokafka import AIOKafkaProducer

    from app.wire import partition_for

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for p in rows:
            await producer.send_and_wait(topic, p.encode(), key=p.key.encode(),
                                         partition=partition_for(p.key, partitions))
    finally:
        await producer.stop()


def write_positions(bootstrap: str, topic: str, partitions: int, rows: list[pos.Position]) -> None:
    """``rows`` on the ``positions`` topic as the desk's own systems write them (app.risk.positions:
    key ``<portfolio>|<instrument>``, partition of the key), each with its own ``ts`` —
    ``faust -A app positions set`` stamps the moment it sends instead."""
    asyncio.run(_write_positions(bootstrap, topic, partitions, rows))


# -- the comparison ------------------------------------------------------------------------------
def _plain(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "ts_published"}


def _inputs(body: dict[str, Any]) -> Any:
    """What a record was computed from: its inputs' references and its depth snapshot's time."""
    return body.get("inputs"), body.get("depth_ts_recv")


@dataclass
class HedgeComparison:
    reference: HedgeReference
    published: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)  # reference ids not published (in event time order)
    unexpected: list[str] = field(default_factory=list)  # ids published that the reference does not give
    duplicates: int = 0  # records that repeat an id published before
    duplicated: list[str] = field(default_factory=list)  # the ids published more than once
    type_differing: list[str] = field(default_factory=list)  # a signal where the reference blocks, or the reverse
    bodies_differing: list[str] = field(default_factory=list)  # same id and type, other contents
    other_inputs: list[str] = field(default_factory=list)  # of those: computed from other inputs than the reference's

    def figures(self) -> dict[str, Any]:
        return {"hedge_signals_reference": len(self.reference.records), "hedge_reference_types": self.reference.types(),
                "hedge_signals_published": len(self.published), "hedge_missing": len(self.missing),
                "hedge_duplicates": self.duplicates, "hedge_unexpected": len(self.unexpected),
                "hedge_type_differing": len(self.type_differing), "hedge_bodies_differing": len(self.bodies_differing),
                "hedge_from_other_inputs": len(self.other_inputs)}

    def describe(self, hid: str) -> str:
        """One line: the id, the reference's record and the published one (time, type, size, reason)."""
        def short(b: dict[str, Any] | None) -> str:
            if b is None:
                return "-"
            sized = f" {b['side']} {b['size']}" if b.get("type") == "signal" else ""
            return f"{b['type']}{sized} {str(b.get('reason'))[:80]!r}"

        ref = self.reference.records.get(hid)
        got = next((b for b in self.published if b.get("id") == hid), None)
        ts = (ref or got or {}).get("ts")
        line = f"{hid} at {ts}: reference {short(ref)}; published {short(got)}"
        if ref is not None and got is not None and _inputs(ref) != _inputs(got):
            line += f"; inputs: reference {_inputs(ref)}, published {_inputs(got)}"
        return line


def compare_hedge(reference: HedgeReference, published: list[dict[str, Any]]) -> HedgeComparison:
    out = HedgeComparison(reference, published)
    counts = collections.Counter(str(b["id"]) for b in published)
    first: dict[str, dict[str, Any]] = {}
    for b in published:
        first.setdefault(str(b["id"]), b)
    want = reference.records
    out.missing = [i for i in want if i not in counts]
    out.unexpected = sorted((i for i in counts if i not in want), key=lambda i: (first[i].get("ts") or 0, i))
    out.duplicated = sorted(i for i, c in counts.items() if c > 1)
    out.duplicates = sum(counts[i] - 1 for i in out.duplicated)
    for hid, body in want.items():
        got = first.get(hid)
        if got is None:
            continue
        if got.get("type") != body["type"]:
            out.type_differing.append(hid)
        elif _plain(got) != _plain(body):
            out.bodies_differing.append(hid)
            if _inputs(got) != _inputs(body):
                out.other_inputs.append(hid)
    return out
