"""Margin on the stream (``risk.margin``), margin alerts and rules, and the closed hedge loop
(signals in flight until filled, rejected or expired; fills move positions and realize P&L), on
the synthetic event-time market of tests/unit/test_risk.py: the perpetual's price rises 5 % over
the run."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from typing import Any

import pytest

from app.records import HedgeFill
from app.risk import positions as pos
from app.risk.engine import DeskEvent, EngineSettings, RiskEngine, pnl
from app.risk.margin import MarginLeg, deribit_future, load_params
from app.risk.rules import Rule, parse_rules
from tests.risk_reference import plain, typed
from tests.unit.test_risk import OPTION, T0, _market

PERP = "deribit:BTC-PERPETUAL"
P = load_params()


def _engine(rules: list[Rule], ttl_s: float = 60.0, ratios: tuple[float, ...] = (0.5, 0.8)) -> RiskEngine:
    from app.risk.alerts import AlertSettings

    conf = EngineSettings(interval_ms=250, scenario_interval_ms=1000, max_input_age_ms=2000, signal_ttl_s=ttl_s,
                          alerts=AlertSettings(margin_ratios=ratios))
    return RiskEngine(conf, rules)


def _feed(engine: RiskEngine, inputs: list[tuple[str, dict[str, Any]]],
          desk: dict[int, list[DeskEvent]] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """The market in order; ``desk``: events handed over before the market input of that index."""
    out = []
    for i, (kind, body) in enumerate(inputs):
        for event in (desk or {}).get(i, []):
            out += engine.on_input("position", event)
        out += engine.on_input(kind, typed(kind, body))
    return plain(out)


def _collateral(amount: str | None, ts: int, portfolio: str = "desk", currency: str = "BTC") -> DeskEvent:
    return DeskEvent(f"{portfolio}|{currency}", ts, collateral=None if amount is None else Decimal(amount),
                     what="collateral")


def _position(instrument: str, qty: str, avg: str | None, portfolio: str = "desk") -> DeskEvent:
    return DeskEvent(f"{portfolio}|{instrument}", 0, position=pos.make(portfolio, instrument, qty, avg, ts=0))


def _ts(inputs: list[tuple[str, dict[str, Any]]], i: int) -> int:
    return int(inputs[i][1].get("ts_recv") or inputs[i][1].get("valid_from"))


def test_margin_is_streamed_with_equity_from_collateral_and_the_marked_positions() -> None:
    inputs = _market(20)
    engine = _engine([])
    out = _feed(engine, inputs, {2: [_position(PERP, "-100000", "60000")], 40: [_collateral("0.5", _ts(inputs, 40))]})
    margin = [b for t, k, b in out if t == "risk.margin"]
    assert margin
    assert all(k == "desk|deribit|BTC" for t, k, _ in out if t == "risk.margin")
    before = [b for b in margin if b["collateral"] is None]
    assert before
    assert all(b["equity"] is None and b["mm_ratio"] is None for b in before)
    last = margin[-1]
    assert last["method"] == "deribit-standard"
    assert last["ok"]
    (ref,) = last["inputs"]
    assert ref["input"] == "book.top"  # the perpetual has no ticker here: its book's mid
    (top,) = [b for k, b in inputs if k == "book.top" and b["seq"] == ref["seq"]]
    mark = (float(top["bid_px"]) + float(top["ask_px"])) / 2
    leg = deribit_future(MarginLeg(PERP, "perpetual", "BTC", -100000 / mark, mark, mark), P)
    assert (last["im"], last["mm"]) == (pytest.approx(leg.im, rel=1e-9), pytest.approx(leg.mm, rel=1e-9))
    upnl = -100000 * (1 / 60000 - 1 / mark)  # short 100,000 USD from 60,000: inverse P&L in BTC
    assert last["unrealized"] == pytest.approx(upnl, rel=1e-9)
    assert last["equity"] == pytest.approx(0.5 + upnl, rel=1e-9)
    assert last["mm_ratio"] == pytest.approx(leg.mm / (0.5 + upnl), rel=1e-9)
    # a tick publishes it only when it changes: two records never say the same
    news = [tuple(sorted((k, str(v)) for k, v in b.items() if k not in ("ts", "inputs"))) for b in margin]
    assert all(a != b for a, b in zip(news, news[1:], strict=False))


def test_a_position_without_avg_price_is_listed_not_valued() -> None:
    inputs = _market(3)
    engine = _engine([])
    out = _feed(engine, inputs, {2: [_position(PERP, "-100000", None), _collateral("1", 0)]})
    last = [b for t, _, b in out if t == "risk.margin"][-1]
    assert last["no_avg_price"] == [PERP]
    assert last["unrealized"] == 0
    assert last["equity"] == 1


def test_margin_alerts_are_raised_and_cleared_once_each_threshold() -> None:
    inputs = _market(20)
    n = len(inputs)
    engine = _engine([], ratios=(0.5, 0.8))
    # no avg_price: equity is the collateral alone, the ratio moves with the collateral set
    desk = {2: [_position(PERP, "-100000", None), _collateral("1", _ts(inputs, 2))]}
    out = _feed(engine, inputs[: n // 3], desk)
    mm = engine.margins[("desk", "deribit", "BTC")].mm
    assert mm is not None
    equity = engine.margins[("desk", "deribit", "BTC")].equity
    assert equity is not None
    # the collateral falls so that MM/equity is ~0.9 (both thresholds), then rises to ~0.3 (below both)
    low = str(round(mm / 0.9 - (equity - 1), 8))
    high = str(round(mm / 0.3 - (equity - 1), 8))
    out += _feed(engine, inputs[n // 3: 2 * n // 3], {0: [_collateral(low, _ts(inputs, n // 3))]})
    out += _feed(engine, inputs[2 * n // 3:], {0: [_collateral(high, _ts(inputs, 2 * n // 3))]})
    alerts = [(b["key"], b["state"]) for t, _, b in out if t == "alerts" and b["kind"] == "margin"]
    assert sorted(alerts) == sorted([("desk|deribit|BTC|0.5", "raised"), ("desk|deribit|BTC|0.8", "raised"),
                                     ("desk|deribit|BTC|0.5", "cleared"), ("desk|deribit|BTC|0.8", "cleared")])


MARGIN_RULES = f"""
[[rule]]
id = "desk-margin"
portfolio = "desk"
underlying = "BTC"
greek = "margin_ratio"
trigger = 0.6
target = 0.4
hedge = "{PERP}"
cooldown_s = 1
reduce_only_above = 0.9
reduce_only_rules = ["desk-delta"]

[[rule]]
id = "desk-delta"
portfolio = "desk"
underlying = "BTC"
greek = "delta"
trigger = 100.0
target = 1.0
hedge = "{PERP}"
"""


def _rules(text: str) -> list[Rule]:
    rules, errors = parse_rules(tomllib.loads(text))
    assert errors == []
    return rules


def test_a_margin_rule_hedges_the_smallest_size_that_brings_the_ratio_under_target() -> None:
    """Short 300,000 USD of the perpetual from 65,000 with 0.25 BTC: as the price rises the loss eats
    the equity and MM/equity crosses 0.6; the signal buys back the fewest lots that bring it ≤ 0.4."""
    inputs = _market(60)
    engine = _engine(_rules(MARGIN_RULES))
    out = _feed(engine, inputs, {2: [_position(PERP, "-300000", "65000"), _collateral("0.25", 0)]})
    signals = [b for t, _, b in out if t == "risk.hedge" and b["type"] == "signal"]
    assert signals, [b["reason"] for t, _, b in out if t == "risk.hedge"]
    first = signals[0]
    assert (first["greek"], first["side"], first["instrument"]) == ("margin_ratio", "buy", PERP)
    assert first["exposure_before"] > 0.6 >= 0.4 >= first["exposure_after"]
    assert Decimal(first["size"]) % 10 == 0
    # no second signal for the same ratio while the first is in flight (cooldown 1 s, TTL 60 s)
    assert len(signals) == 1 or signals[1]["ts"] - first["ts"] >= 60 * 10**9 or \
        signals[1]["exposure_before"] > 0.6
    # smallest: one lot less would not have done it (recomputed by an engine at that instant)
    check = _engine(_rules(MARGIN_RULES))
    _feed(check, [x for x in inputs if _ts_of(x) < first["ts"]],
          {2: [_position(PERP, "-300000", "65000"), _collateral("0.25", 0)]})
    rule = check.rules["desk-margin"].rule
    check.tick(first["ts"], False)
    assert check._ratio_with(rule, first["ts"], Decimal(first["size"])) == pytest.approx(first["exposure_after"])
    assert check._ratio_with(rule, first["ts"], Decimal(first["size"]) - 10) > 0.4


def _ts_of(item: tuple[str, dict[str, Any]]) -> int:
    return int(item[1].get("ts_recv") or item[1].get("valid_from"))


def test_a_fill_moves_the_position_realizes_pnl_and_ends_the_flight() -> None:
    inputs = _market(60)
    engine = _engine(_rules(MARGIN_RULES))
    out = _feed(engine, inputs[:3], {2: [_position(PERP, "-300000", "65000"), _collateral("0.25", 0)]})
    for item in inputs[3:]:  # up to the first signal
        out += _feed(engine, [item])
        if any(t == "risk.hedge" and b["type"] == "signal" for t, _, b in out):
            break
    (signal,) = [b for t, _, b in out if t == "risk.hedge" and b["type"] == "signal"]
    assert signal["id"] in engine.in_flight
    size = Decimal(signal["size"])
    price = Decimal(str(signal["expected_price"]))
    half = (size / 2).quantize(Decimal(10))
    t = engine.now
    fill = HedgeFill(signal=signal["id"], state="partial", portfolio="desk", instrument=PERP, side="buy",
                     filled=str(half), price=str(price), ts=t, by="test")
    res = plain(engine.on_input("fill", DeskEvent(signal["id"], t, fill=fill)))
    assert engine.positions["desk"][PERP].quantity == -300000 + half
    assert engine.in_flight[signal["id"]].remaining() == size - half
    realized = pnl(engine.spec(PERP, t), -float(half), 65000.0, float(price))  # type: ignore[arg-type]
    assert engine.realized[("desk", "BTC")] == pytest.approx(realized)
    assert [r for _, _, r in res if "reason" in r and r.get("reason") == "fill"]  # the exposure at once
    # the same record again changes nothing; the final one applies only the rest
    engine.on_input("fill", DeskEvent(signal["id"], t, fill=fill))
    assert engine.positions["desk"][PERP].quantity == -300000 + half
    done = HedgeFill(signal=signal["id"], state="filled", portfolio="desk", instrument=PERP, side="buy",
                     filled=str(size), price=str(price), ts=t + 1, by="test")
    engine.on_input("fill", DeskEvent(signal["id"], t + 1, fill=done))
    assert engine.positions["desk"][PERP].quantity == -300000 + size
    assert engine.positions["desk"][PERP].avg_price == Decimal(65000)  # a reduction keeps the average
    assert signal["id"] not in engine.in_flight
    # a new collateral balance is the venue's figure, realized P&L included
    engine.on_input("collateral", _collateral("0.25", t + 2))
    assert ("desk", "BTC") not in engine.realized


def test_a_delta_rule_does_not_fire_again_for_exposure_in_flight_until_it_expires() -> None:
    rule = Rule("desk-delta", "desk", "BTC", "delta", 2.0, PERP, 0.5, 5.0, 30)
    inputs = _market(60)
    counts = {}
    for ttl in (0.0, 20.0, 600.0):
        engine = _engine([rule], ttl_s=ttl)
        out = _feed(engine, inputs, {0: [_position(OPTION, "20", None)]})
        counts[ttl] = [b["ts"] for t, _, b in out if t == "risk.hedge" and b["type"] == "signal"]
    # no executor answers: TTL 0 fires at every cooldown, TTL 20 s once in 20 s at most while the
    # move stays covered, TTL 600 s only when the move outgrows what is in flight
    assert len(counts[0.0]) > len(counts[20.0]) > 0
    assert len(counts[600.0]) <= len(counts[20.0])
    gaps = [b - a for a, b in zip(counts[20.0], counts[20.0][1:], strict=False)]
    assert len(counts[20.0]) < len(counts[0.0])
    assert all(g >= 5 * 10**9 for g in gaps)


def test_a_margin_rule_switches_itself_and_others_to_reduce_only_and_back() -> None:
    inputs = _market(20)
    n = len(inputs)
    engine = _engine(_rules(MARGIN_RULES))
    desk = {2: [_position(PERP, "-100000", None), _collateral("1", _ts(inputs, 2))]}
    out = _feed(engine, inputs[: n // 3], desk)
    record = engine.margins[("desk", "deribit", "BTC")]
    assert record.mm is not None
    assert record.equity is not None
    low = str(round(record.mm / 0.95 - (record.equity - 1), 8))
    out += _feed(engine, inputs[n // 3: 2 * n // 3], {0: [_collateral(low, _ts(inputs, n // 3))]})
    assert engine.rules["desk-delta"].forced_by == {"desk-margin"}
    assert engine.rules["desk-margin"].forced_by == {"desk-margin"}
    out += _feed(engine, inputs[2 * n // 3:], {0: [_collateral("1", _ts(inputs, 2 * n // 3))]})
    assert not engine.rules["desk-delta"].forced_by
    switched = [(b["key"], b["state"]) for t, _, b in out if t == "alerts" and b["kind"] == "reduce-only"]
    assert sorted(switched) == sorted([("desk-delta", "raised"), ("desk-margin", "raised"),
                                       ("desk-delta", "cleared"), ("desk-margin", "cleared")])


def test_margin_rule_fields_are_checked() -> None:
    bad = MARGIN_RULES.replace('reduce_only_rules = ["desk-delta"]', 'reduce_only_rules = ["nope"]')
    _, errors = parse_rules(tomllib.loads(bad))
    assert errors == ["rule desk-margin: reduce_only_rules: no rule 'nope'"]
    bad = MARGIN_RULES.replace("reduce_only_above = 0.9\n", "")
    _, errors = parse_rules(tomllib.loads(bad))
    assert errors == ["rule 1 (desk-margin): reduce_only_rules: needs reduce_only_above (the ratio that switches "
                      "them)"]
    _, errors = parse_rules(tomllib.loads(MARGIN_RULES.replace("reduce_only_above = 0.9", "reduce_only_above = -1")))
    assert errors == ["rule 1 (desk-margin): reduce_only_above: -1.0 must be > 0 (a MM/equity ratio)"]
    assert T0 > 0


def test_the_paper_executor_fills_what_the_book_takes_in_the_signals_steps() -> None:
    from app.config import Settings
    from app.records import HedgeSignal, RiskDepth
    from app.risk.execution import PaperExecutor

    def signal(size: str, side: str = "buy") -> HedgeSignal:
        return HedgeSignal(id="s1", rule="r", portfolio="desk", underlying="BTC", greek="delta", band=[-1.0, 1.0],
                           target=0.1, state="active", reason="", ts=T0, inputs=[], instrument=PERP, side=side,  # type: ignore[arg-type]
                           size=size, exposure_before=2.0, exposure_after=0.1, expected_price=None, mid=None,
                           slippage_bps=None, fillable=None, depth_ts_recv=None)

    paper = PaperExecutor(Settings(), delay_s=1.5)
    rejected = paper.fill(signal("100"))
    assert (rejected.state, rejected.reason) == ("rejected", f"no book of {PERP}")
    paper.depth[PERP] = RiskDepth(key=PERP, bids=[["64990", "30"]], asks=[["65000", "30"], ["65010", "40.3"]],
                                  seq=1, ts_exchange=0, ts_recv=T0, ts_published=0)
    full = paper.fill(signal("50"))
    assert (full.state, full.filled, full.ts, full.by) == ("filled", "50", T0 + 1_500_000_000, "paper")
    assert Decimal(full.price or "0") == Decimal("65004")  # 30 at 65,000 and 20 at 65,010
    part = paper.fill(signal("100"))
    assert (part.state, part.filled) == ("partial", "70")  # 70.3 in the book, the signal's steps are whole
    sell = paper.fill(signal("10", "sell"))
    assert (sell.state, sell.price) == ("filled", "64990")
