"""The risk reference of `make chaos` (tests/risk_reference.py) on synthetic input topics: the
scenarios' desk fires on the simulator's own Deribit perpetual spec, repeats and reading order
change nothing, and the comparison counts what it says. The catch-up's desk: the copies' instrument
list (``copies_instruments``) becomes their specs through the worker's own code, and copies of a
Binance USD-M feed (bench.run.copies) through the worker's processor and publisher make its rule
fire — on the real capture, 69 times."""

from __future__ import annotations

import collections
import tomllib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.capture.formats import Record, read
from app.config import Settings
from app.processor import Processor
from app.records import encode
from app.risk.engine import EngineSettings, RiskEngine, leg_kind, unit_size
from app.risk.rules import Rule, parse_rules
from app.risk.service import engine_settings
from app.router import Router
from app.simulator import instruments as sim_instruments
from app.venues import INSTRUMENT_LISTS
from app.venues.base import Kind
from bench.run import copies
from tests.helpers import publish
from tests.risk_reference import (
    COPY_HEDGE,
    COPY_RULES,
    DESK_HEDGE,
    DESK_RULES,
    KV,
    NO_EXECUTOR_ENV,
    compare_hedge,
    copies_instruments,
    copy_positions,
    desk_positions,
    hedge_reference,
    typed,
)
from tests.unit.test_captures import hft

T0 = 1_800_000_000 * 10**9
HISTORY = T0 - 365 * 86_400 * 10**9  # a replayed capture of an older day
MS = 1_000_000


def _rules(text: str = DESK_RULES) -> list[Rule]:
    rules, errors = parse_rules(tomllib.loads(text))
    assert errors == []
    return rules


def _engine_conf() -> EngineSettings:
    return replace(engine_settings(Settings()), signal_ttl_s=float(NO_EXECUTOR_ENV["HEDGE_SIGNAL_TTL_S"]))


def _kv(kind: str, key: str, body: dict[str, Any]) -> KV:
    """A record of ``kind`` as the worker writes it (the fields the test leaves out at their defaults)."""
    return key.encode(), encode(typed(kind, body))


def _topics(seconds: int = 60) -> dict[str, list[KV]]:
    """The perpetual's spec (the simulator's Deribit list through the venue's parser, as ingestion
    fetches it), its book and depth from T0, a replayed book of another instrument from HISTORY,
    and the desk's positions."""
    specs = INSTRUMENT_LISTS["deribit"].parse(orjson.dumps(sim_instruments.deribit(["BTC-PERPETUAL"], {})))
    assert specs is not None
    perp = replace(specs[0], valid_from=T0)
    out: dict[str, list[KV]] = {"ref.instruments": [(perp.record_key().encode(), perp.encode())], "book.top": [],
                                "risk.depth": [], "ticker": [], "risk.rules": [],
                                "book.status": [_kv("book.status", DESK_HEDGE, {
                                    "venue": "deribit", "instrument": "BTC-PERPETUAL", "state": "synced",
                                    "reason": "", "seq": 1, "ts_recv": T0})],
                                "positions": [(p.key.encode(), p.encode()) for p in desk_positions()]}
    for i in range(300):
        out["book.top"].append(_kv("book.top", "binance-usdm:BTCUSDT", {
            "venue": "binance-usdm", "instrument": "BTCUSDT", "bid_px": "61000.0", "ask_px": "61000.1",
            "seq": i + 1, "epoch": 1, "ts_recv": HISTORY + i * 100 * MS}))
    for i in range(seconds * 10):
        t, mid = T0 + i * 100 * MS, 65_000 + (i % 50) * 10
        out["book.top"].append(_kv("book.top", DESK_HEDGE, {"venue": "deribit", "instrument": "BTC-PERPETUAL",
                                                "bid_px": str(mid - 0.5), "ask_px": str(mid + 0.5), "seq": i + 2,
                                                "epoch": 1, "ts_recv": t}))
        if i % 3 == 0:
            out["risk.depth"].append(_kv("risk.depth", DESK_HEDGE, {
                "key": DESK_HEDGE, "bids": [[str(mid - 0.5), "500000"]], "asks": [[str(mid + 0.5), "500000"]],
                "seq": i + 2, "ts_recv": t}))
    return out


def test_the_desk_fires_at_every_cooldown_on_the_simulators_perpetual() -> None:
    ref = hedge_reference(_topics(), _engine_conf(), _rules())
    records = list(ref.records.values())
    assert ref.types() == {"signal": len(records)}  # the replayed day before T0 gives nothing
    assert len(records) >= 11
    times = [r["ts"] for r in records]
    assert all(t >= T0 for t in times)
    assert all(5 * 10**9 <= b - a < 6 * 10**9 for a, b in zip(times, times[1:], strict=False))
    for r in records:
        assert r["side"] == "sell"
        assert int(r["size"]) % 10 == 0  # the simulator's lot (min_trade_amount 10 USD)
        assert abs(r["exposure_after"]) <= 1.0 < abs(r["exposure_before"])
    assert ref.event_time == T0 + 599 * 100 * MS
    assert ref.inputs["binance-usdm:BTCUSDT"] == 300


def test_repeats_and_the_order_of_reading_change_nothing() -> None:
    topics = _topics()
    ref = hedge_reference(topics, _engine_conf(), _rules())
    again = {k: list(v) for k, v in reversed(topics.items())}
    for name in ("book.top", "risk.depth", "ref.instruments", "book.status", "positions"):
        records = again[name]
        again[name] = [r for i, r in enumerate(records) for _ in range(1 + (i % 4 == 0))]  # at-least-once repeats
    again["book.top"] += topics["book.top"][-40:]  # a resent batch, read long after
    assert hedge_reference(again, _engine_conf(), _rules()).records == ref.records


def test_a_position_stamped_after_a_replayed_day_blocks_the_rule_at_its_first_tick() -> None:
    topics = _topics()
    late = replace(desk_positions()[0], ts=T0 - 10**9)
    topics["positions"] = [(late.key.encode(), late.encode())]
    ref = hedge_reference(topics, _engine_conf(), _rules())
    first = next(iter(ref.records.values()))
    assert first["type"] == "blocked"
    assert first["ts"] < T0
    assert "holds no positions" in first["reason"]


def test_the_comparison_counts_missing_unexpected_repeated_and_differing_records() -> None:
    ref = hedge_reference(_topics(), _engine_conf(), _rules())
    ids = list(ref.records)
    published = [dict(ref.records[i], ts_published=1) for i in ids[1:]]  # the first is missing
    published.append(dict(published[0]))  # a repeat
    published[1] = {**published[1], "type": "blocked"}
    published[2] = {**published[2], "size": "10"}  # the same inputs, another size
    published[3] = {**published[3], "size": "20", "inputs": []}  # priced from other inputs
    published.append({**published[4], "id": "not-a-reference-id"})
    c = compare_hedge(ref, published)
    assert c.missing == [ids[0]]
    assert c.unexpected == ["not-a-reference-id"]
    assert (c.duplicates, c.duplicated) == (1, [ids[1]])
    assert c.type_differing == [ids[2]]
    assert c.bodies_differing == [ids[3], ids[4]]
    assert c.other_inputs == [ids[4]]
    figures = c.figures()
    assert (figures["hedge_signals_reference"], figures["hedge_signals_published"]) == (len(ids), len(ids) + 1)
    assert ids[0] in c.describe(ids[0])


# -- the catch-up's desk, on copies of a Binance USD-M feed ----------------------------------------
def _worker_topics(records: Iterable[Record], partitions: int = 4) -> dict[str, list[KV]]:
    """What a worker with the catch-up's rule publishes for ``records`` (tests.helpers.publish),
    by topic name without the prefix, partition by partition in order: the risk engine's
    market inputs, as tests/risk_reference.read_inputs reads them."""
    sent = publish(records, partitions, risk_depth_keys={rule.hedge for rule in _rules(COPY_RULES)})
    by_topic: dict[str, list[tuple[int, KV]]] = collections.defaultdict(list)
    for topic, partition, key, value in sent:
        by_topic[topic].append((partition, (key, value)))
    assert "raw.deadletter" not in by_topic, by_topic["raw.deadletter"]
    out_topics = {name: [kv for _, kv in sorted(rows, key=lambda row: row[0])] for name, rows in by_topic.items()}
    out_topics["positions"] = [(p.key.encode(), p.encode()) for p in copy_positions()]
    return out_topics


def _usdm_feed(seconds: int) -> list[Record]:
    """A Binance USD-M BTCUSDT feed as ingestion receives it (combined streams): depth events and
    bookTickers every 100 ms from T0, the REST snapshot they join after the first, the best bid
    moving 0.1 up and down (each event moves it: a new level, the other one removed)."""
    ms = T0 // MS
    out: list[Record] = []
    last = 1000
    for i in range(seconds * 10):
        t, bid, other = T0 + i * 100 * MS, 61_800 + (i % 2) / 10, 61_800 + (1 - i % 2) / 10
        first, final = last + 1, last + 10
        depth = {"e": "depthUpdate", "E": ms + i * 100, "T": ms + i * 100, "s": "BTCUSDT", "U": first, "u": final,
                 "pu": last, "b": [[f"{bid:.1f}", "2.500"], [f"{other:.1f}", "0.000"]], "a": [["61800.3", "2.510"]]}
        out.append(Record(t, "binance-usdm", "c1", Kind.WS,
                          orjson.dumps({"stream": "btcusdt@depth@0ms", "data": depth})))
        if i == 0:
            snapshot = {"lastUpdateId": final, "E": ms, "T": ms, "bids": [["61799.0", "5.000"]],
                        "asks": [["61800.3", "2.510"], ["61801.0", "8.000"]]}
            out.append(Record(t + 50 * MS, "binance-usdm", "c1", Kind.REST, orjson.dumps(snapshot),
                              "https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=1000", "BTCUSDT"))
        ticker = {"e": "bookTicker", "u": final, "s": "BTCUSDT", "b": f"{bid:.1f}", "B": "2.500", "a": "61800.3",
                  "A": "2.510", "T": ms + i * 100, "E": ms + i * 100}
        out.append(Record(t + MS, "binance-usdm", "c1", Kind.WS,
                          orjson.dumps({"stream": "btcusdt@bookTicker", "data": ticker})))
        last = final
    return out


def test_the_copies_instrument_list_is_parsed_into_a_linear_perpetual_spec_for_each_copy() -> None:
    listing = copies_instruments(3, T0 - 10**9)
    (raw,) = Router().route(listing.venue, listing.conn, listing.kind, listing.frame, listing.ts, listing.url,
                            listing.symbol)
    assert (raw.key, raw.kind, raw.conn) == ("binance-usdm:", Kind.REST, "binance-usdm-instruments")
    out = Processor().handle(raw)
    assert (out.dead, out.inst) == (None, None)  # a venue-level frame: no book, no dead letter
    topics = _worker_topics([listing])
    rows = [(k.decode(), orjson.loads(v)) for k, v in topics["ref.instruments"] if k is not None and v is not None]
    specs = [body for _, body in rows]
    assert sorted(s["key"] for s in specs) == ["binance-usdm:BTC0USDT", "binance-usdm:BTC1USDT",
                                                "binance-usdm:BTC2USDT"]
    assert all(key == f"{s['key']}|{T0 - 10**9}" for key, s in rows)  # one version each, valid from the list's receipt
    for s in specs:
        assert (s["kind"], s["margin"], s["base"], s["quote"], s["settle"], s["contract_size"]) == (
            "perpetual", "linear", "BTC", "USDT", "USDT", "1")
        assert (s["tick_size"], s["lot_size"], s["min_size"], s["min_notional"], s["state"]) == (
            "0.10", "0.001", "0.001", "100", "open")
        assert (s["valid_from"], s["ts_recv"], s["expiry_ns"]) == (T0 - 10**9, T0 - 10**9, None)
    engine = RiskEngine(_engine_conf(), _rules(COPY_RULES))
    for s in specs:
        engine.on_input("ref.instruments", typed("ref.instruments", s))
    spec = engine.spec(COPY_HEDGE, T0)
    assert spec is not None
    assert (leg_kind(spec), unit_size(spec)) == ("linear", 1.0)  # a position's delta is its quantity
    # bench.run.copies names the copies as the list does
    feed = _usdm_feed(1)
    assert {rec.symbol for rec in copies(feed, 3)} == {"BTC0USDT", "BTC1USDT", "BTC2USDT"}


def test_the_catchup_desk_fires_on_copies_of_a_usdm_feed_after_their_instrument_list() -> None:
    feed = _usdm_feed(60)
    topics = _worker_topics([copies_instruments(2, T0 - 10**9), *copies(feed, 2)])
    ref = hedge_reference(topics, _engine_conf(), _rules(COPY_RULES))
    records = list(ref.records.values())
    assert ref.types() == {"signal": len(records)}
    assert len(records) >= 11
    times = [r["ts"] for r in records]
    assert T0 <= times[0] < T0 + 10**9  # at the first tick after the snapshot
    assert all(5 * 10**9 <= b - a < 6 * 10**9 for a, b in zip(times, times[1:], strict=False))
    for r in records:
        assert (r["instrument"], r["side"], r["size"]) == (COPY_HEDGE, "sell", "2.8")
        assert (r["exposure_before"], r["exposure_after"]) == (3.0, 0.2)  # long 3 BTC: delta 3, hedged to 0.2
        assert (r["inputs"][0]["key"], r["inputs"][0]["input"]) == (COPY_HEDGE, "book.top")
    assert ref.inputs["binance-usdm:BTC1USDT"] > 0  # the other copy's inputs are there, valuing nothing held
    # Without the list the engine knows no copy: the position is "unknown", no delta, nothing fires.
    assert hedge_reference({**topics, "ref.instruments": []}, _engine_conf(), _rules(COPY_RULES)).records == {}


@pytest.mark.captures
@pytest.mark.slow
def test_the_catchup_desk_fires_69_times_over_the_usdm_capture(captures: Path) -> None:
    records = list(read(hft(captures, "usdm"), "hftbacktest"))
    assert (records[-1].ts - records[0].ts) / 1e9 == pytest.approx(344.8, abs=0.1)
    topics = _worker_topics([copies_instruments(1, records[0].ts - 10**9), *copies(records, 1)])
    ref = hedge_reference(topics, _engine_conf(), _rules(COPY_RULES))
    assert ref.types() == {"signal": 69}  # one every 5 s from the first tick after the snapshot (0.29 s in)
    first = next(iter(ref.records.values()))
    assert records[0].ts < first["ts"] < records[0].ts + 10**9

