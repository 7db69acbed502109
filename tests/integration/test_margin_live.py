"""Margin and the closed hedge loop, live: simulator → real WebSockets → worker → Kafka → risk
engine, with the paper executor answering on ``hedge.fills``.

A desk short the Deribit BTC perpetual, its collateral set so that MM/equity is ~0.10. The
simulator moves BTC up (its ``move`` control): the short's loss eats the equity and MM/equity
crosses the alert's threshold and the margin rule's trigger. Then:

* a ``margin`` alert is raised (once), and the margin rule signals a buy of the perpetual sized to
  bring the ratio back to its target;
* the paper executor fills the signal against the live hedge book; the fill moves the position,
  and the next ``risk.margin`` records show the smaller margin with the ratio back under trigger;
* the signal counted as in flight until its fill (no second signal for the same excess);
* every ``risk.hedge`` and ``risk.margin`` record is what an in-process engine computes from
  the input topics (fills and collateral included) in event time: the loop is deterministic.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.risk.rules import load_rules
from app.risk.service import engine_settings
from tests.helpers import FAUST, ROOT, Namespace, SimSiteFactory, wait_for
from tests.risk_reference import compare_hedge, hedge_reference, read_inputs

PERP = "deribit:BTC-PERPETUAL"
TRIGGER, TARGET, ALERT = 0.15, 0.12, 0.14
RULES = f"""
[[rule]]
id = "m-btc-margin"
portfolio = "m"
underlying = "BTC"
greek = "margin_ratio"
trigger = {TRIGGER}
target = {TARGET}
hedge = "{PERP}"
cooldown_s = 2
max_per_minute = 10
"""
KEY = ("m", "deribit", "BTC")


def _margin(site: Any) -> dict[str, Any] | None:
    rows = [m for m in site.worker.get("/api/risk")[1]["margin"] if (m["portfolio"], m["venue"], m["currency"]) == KEY]
    return rows[0] if rows else None


@pytest.mark.timeout(600)
def test_a_margin_crossing_is_alerted_hedged_filled_and_replayable(sim_site: SimSiteFactory, module_ns: Namespace,
                                                                    tmp_path: Path) -> None:
    rules = module_ns.tmp / "margin-rules.toml"
    rules.write_text(RULES)
    site = sim_site({"deribit": ["BTC-PERPETUAL"]}, data="margin", RISK_RULES_FILE=str(rules),
                    ALERT_MARGIN_RATIOS=str(ALERT), HEDGE_SIGNAL_TTL_S="60")
    price = site.sim.forward("BTC")

    def set_book() -> bool:
        proc = module_ns.faust("positions", "set", "m", PERP, "--avg-price", f"{price:.1f}", "--", "-300000",
                               check=False)
        assert proc.returncode == 0, proc.stderr[-500:]
        return True

    wait_for(set_book, 60, "the position accepted (the registry knows the perpetual)", every=2)
    module_ns.faust("collateral", "set", "m", "BTC", "10")
    wait_for(lambda: (m := _margin(site)) is not None and m["collateral"] == 10 and m["ok"], 60,
             "risk.margin of the desk with its collateral", every=1)
    first = _margin(site)
    assert first is not None
    assert first["method"] == "deribit-standard"
    assert first["equity"] == pytest.approx(10 + first["unrealized"], rel=1e-9)
    # MM/equity ~0.10: the collateral that gives it now
    balance = first["mm"] / 0.10 - first["unrealized"]
    module_ns.faust("collateral", "set", "m", "BTC", f"{balance:.8f}")
    wait_for(lambda: (m := _margin(site)) is not None and m["mm_ratio"] is not None and m["mm_ratio"] < ALERT, 60,
             "the ratio below the alert's threshold", every=1)
    log = (tmp_path / "paper.log").open("wb")
    paper = subprocess.Popen([*FAUST, "hedge", "paper", "--delay-s", "1"], env=module_ns.env(), cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        site.sim.move("BTC", 4, 12)  # the short loses ~0.18 BTC: MM/equity ~0.10 → well above 0.15

        def signal() -> list[dict[str, Any]]:
            return [r for r in site.topic("risk.hedge") if r["type"] == "signal"]

        wait_for(lambda: signal(), 90, "a margin signal as the underlying moves", every=2)
        sig = signal()[0]
        assert (sig["rule"], sig["greek"], sig["side"], sig["instrument"]) == ("m-btc-margin", "margin_ratio", "buy",
                                                                                PERP)
        assert sig["exposure_before"] > TRIGGER
        assert sig["exposure_after"] <= TARGET

        def filled() -> dict[str, Any] | None:
            fills = [f for f in site.topic("hedge.fills") if f["signal"] == sig["id"]]
            return fills[-1] if fills else None

        wait_for(lambda: filled() is not None, 30, "the paper executor's fill", every=1)
        fill = filled()
        assert fill is not None
        assert (fill["by"], fill["side"], fill["portfolio"], fill["instrument"]) == ("paper", "buy", "m", PERP)
        assert fill["state"] in ("filled", "partial")
        assert fill["ts"] >= sig["ts"] + 1_000_000_000  # stamped when published: ahead of the engine's event time

        def moved() -> bool:  # the fills moved the position (the move may cross the trigger again: each counts)
            latest = {f["signal"]: f for f in site.topic("hedge.fills")}
            bought = sum(float(f["filled"]) * (1 if f["side"] == "buy" else -1) for f in latest.values())
            held = [h["quantity"] for h in site.worker.get("/api/risk")[1]["held"] if h["portfolio"] == "m"]
            m = _margin(site)
            return bool(held and float(held[0]) == -300000 + bought and m is not None and m["ts"] > fill["ts"]
                        and m["mm"] < first["mm"])

        wait_for(moved, 30, "the position moved by the fill and the margin recomputed", every=1)
        alerts = [a for a in site.topic("alerts") if a["kind"] == "margin"]
        assert {a["key"] for a in alerts} == {f"m|deribit|BTC|{ALERT:g}"}
        states = [a["state"] for a in alerts]  # raised once, cleared once, each crossing (the move goes on)
        assert states[0] == "raised"
        assert all(a != b for a, b in zip(states, states[1:], strict=False)), states
    finally:
        paper.terminate()
        paper.wait(timeout=30)
    # The whole loop again, in process, from the input topics: the same records
    settings = module_ns.settings(**site.worker.extra_env)

    def same() -> str | None:
        ref = hedge_reference(read_inputs(module_ns.bootstrap, settings.topic_prefix), engine_settings(settings),
                              load_rules(rules))
        got = compare_hedge(ref, site.topic("risk.hedge"))
        if got.missing or got.unexpected or got.type_differing or got.bodies_differing:
            return f"risk.hedge: {got.missing=} {got.unexpected=} {got.bodies_differing=}"
        published = [_plain(m) for m in site.topic("risk.margin") if m["portfolio"] == "m"]
        want = [_plain(m) for m in ref.margin if m["portfolio"] == "m"]
        n = min(len(published), len(want))
        if n < 10 or published[:n] != want[:n]:
            diff = next((i for i in range(n) if published[i] != want[i]), n)
            return f"risk.margin: {len(published)} published, {len(want)} computed, first difference at {diff}"
        return None

    last: list[str | None] = [None]

    def equal() -> bool:
        last[0] = same()
        return last[0] is None

    try:
        wait_for(equal, 60, "risk.hedge and risk.margin equal to the in-process engine's", every=3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[0]}") from None


def _plain(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "ts_published"}
