"""The risk reference of `make chaos` (tests/risk_reference.py) on synthetic input topics: the
scenarios' desk fires on the simulator's own Deribit perpetual spec, repeats and reading order
change nothing, and the comparison counts what it says."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from typing import Any

import orjson

from app.config import Settings
from app.risk.engine import EngineSettings
from app.risk.rules import Rule, parse_rules
from app.risk.service import engine_settings
from app.simulator import instruments as sim_instruments
from app.venues import REGISTRY_PARSERS
from tests.risk_reference import DESK_HEDGE, DESK_RULES, KV, compare_hedge, desk_positions, hedge_reference

T0 = 1_800_000_000 * 10**9
HISTORY = T0 - 365 * 86_400 * 10**9  # a replayed capture of an older day
MS = 1_000_000


def _rules() -> list[Rule]:
    rules, errors = parse_rules(tomllib.loads(DESK_RULES))
    assert errors == []
    return rules


def _engine_conf() -> EngineSettings:
    return engine_settings(Settings())


def _kv(key: str, body: dict[str, Any]) -> KV:
    return key.encode(), orjson.dumps(body)


def _topics(seconds: int = 60) -> dict[str, list[KV]]:
    """The perpetual's spec (the simulator's Deribit list through the venue's parser, as ingestion
    fetches it), its book and depth from T0, a replayed book of another instrument from HISTORY,
    and the desk's positions."""
    specs = REGISTRY_PARSERS["deribit"].parse(orjson.dumps(sim_instruments.deribit(["BTC-PERPETUAL"], {})))
    assert specs is not None
    perp = replace(specs[0], valid_from=T0)
    out: dict[str, list[KV]] = {"ref.instruments": [(perp.record_key().encode(), perp.encode())], "book.top": [],
                                "risk.depth": [], "ticker": [], "risk.rules": [],
                                "book.status": [_kv(DESK_HEDGE, {"venue": "deribit", "instrument": "BTC-PERPETUAL",
                                                                 "state": "synced", "reason": "", "seq": 1,
                                                                 "ts_recv": T0})],
                                "positions": [(p.key.encode(), p.encode()) for p in desk_positions()]}
    for i in range(300):
        out["book.top"].append(_kv("binance-usdm:BTCUSDT", {
            "venue": "binance-usdm", "instrument": "BTCUSDT", "bid_px": "61000.0", "ask_px": "61000.1",
            "seq": i + 1, "epoch": 1, "ts_recv": HISTORY + i * 100 * MS}))
    for i in range(seconds * 10):
        t, mid = T0 + i * 100 * MS, 65_000 + (i % 50) * 10
        out["book.top"].append(_kv(DESK_HEDGE, {"venue": "deribit", "instrument": "BTC-PERPETUAL",
                                                "bid_px": str(mid - 0.5), "ask_px": str(mid + 0.5), "seq": i + 2,
                                                "epoch": 1, "ts_recv": t}))
        if i % 3 == 0:
            out["risk.depth"].append(_kv(DESK_HEDGE, {"key": DESK_HEDGE, "bids": [[str(mid - 0.5), "500000"]],
                                                      "asks": [[str(mid + 0.5), "500000"]], "seq": i + 2,
                                                      "ts_recv": t}))
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
