"""Risk automation end to end: simulator → real WebSockets → worker → Kafka → risk engine.

One scenario for the module: a desk long BTC calls and short the Deribit perpetual; the
underlying moves 5 % (the simulator's ``move``) while the hedge rule watches delta. Midway the
perpetual's feed goes silent (its inputs grow older than RISK_MAX_INPUT_AGE_MS), and later the
worker is SIGKILLed and started again. Then:

* the signals on ``risk.hedge`` are exactly those an in-process engine computes from the same
  input topics in event time (ids, sizes, count): none lost, none duplicated across the kill;
* no signal used a perpetual input older than the limit, and a ``blocked`` record said why;
* the raw topics, replayed twice into fresh apps, give identical risk records.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.capture.formats import Record, write_native
from app.config import RiskSettings
from app.market.symbols import monthly_expiries
from app.risk.rules import load_rules
from app.risk.service import engine_settings
from app.wire import decode_record
from tests.helpers import Namespace, SimSite, SimSiteFactory, Worker, consume, values, wait_for, workers
from tests.risk_reference import hedge_reference, read_inputs

EXPIRY = monthly_expiries(time.time_ns(), 1)[0]
CALL = f"BTC-{EXPIRY}-65000-C"
FEEDS = {"deribit": ["BTC-PERPETUAL", CALL, f"BTC-{EXPIRY}-70000-C"]}
PERP = "deribit:BTC-PERPETUAL"
MAX_AGE_MS = 3000
SILENCE_S = 8
IDLE_S = RiskSettings.idle_ms / 1000  # the workers run with the default
RULES = f"""
[[rule]]
id = "desk-btc-delta"
portfolio = "desk"
underlying = "BTC"
greek = "delta"
trigger = 0.5
target = 0.1
hedge = "{PERP}"
cooldown_s = 2
max_per_minute = 30
"""
BOOK = f"""
[[position]]
portfolio = "desk"
instrument = "deribit:{CALL}"
quantity = 6

[[position]]
portfolio = "desk"
instrument = "{PERP}"
quantity = -200000
"""


class Scenario:
    def __init__(self, site: SimSite, rules: Path, t_silence: tuple[int, int], t_kill: int) -> None:
        self.site, self.rules, self.t_silence, self.t_kill = site, rules, t_silence, t_kill

    def topic(self, name: str, ns: Namespace | None = None) -> list[dict[str, Any]]:
        return values(consume(self.site.ns.bootstrap, (ns or self.site.ns).topic(name), idle_s=2))


#: No executor answers this desk's signals: one counts as in flight only until the rule's cooldown
#: is over, so the rule fires at every tick its cooldown allows (tests/integration/test_margin_live.py
#: closes the loop with fills).
TTL_S = 2


def risk_env(rules: Path) -> dict[str, str]:
    return {"RISK_RULES_FILE": str(rules), "RISK_MAX_INPUT_AGE_MS": str(MAX_AGE_MS), "HEDGE_SIGNAL_TTL_S": str(TTL_S)}


@pytest.fixture(scope="module")
def scenario(sim_site: SimSiteFactory, module_ns: Namespace) -> Scenario:
    rules = module_ns.tmp / "rules.toml"
    rules.write_text(RULES)
    book = module_ns.tmp / "book.toml"
    book.write_text(BOOK)
    site = sim_site(FEEDS, data="risk", **risk_env(rules))

    def set_book() -> bool:
        proc = module_ns.faust("positions", "set", "--file", str(book), check=False)
        assert proc.returncode == 0, proc.stderr[-500:]
        return True

    wait_for(set_book, 60, "positions accepted (the registry knows the instruments)", every=2)
    module_ns.faust("collateral", "set", "desk", "BTC", "5")  # equity and ratios on risk.margin

    def hedge() -> list[dict[str, Any]]:
        return [r for r in site.topic("risk.hedge") if r["type"] == "signal"]

    site.sim.move("BTC", 6, 40)
    wait_for(lambda: len(hedge()) >= 2, 60, "hedge signals as the underlying moves", every=2)
    silent_from = time.time_ns()
    site.sim.fault("deribit", "BTC-PERPETUAL", "silence", SILENCE_S)  # the whole Deribit connection
    silent_to = silent_from + SILENCE_S * 10**9
    wait_for(lambda: any(r["type"] == "blocked" for r in site.topic("risk.hedge")), 30, "a blocked record", every=1)
    n = len(hedge())
    wait_for(lambda: len(hedge()) > n, 60, "signals again after the silence", every=2)
    t_kill = time.time_ns()
    site.worker.kill()  # mid-scenario: the move goes on
    site.worker.start()
    m = len(hedge())
    wait_for(lambda: len(hedge()) > m + 1, 90, "signals after the restart", every=2)
    return Scenario(site, rules, (silent_from, silent_to), t_kill)


def reference(s: Scenario) -> list[dict[str, Any]]:
    """The risk.hedge records an engine computes from the input topics, in event time
    (tests/risk_reference.py: the service's own reading of each topic)."""
    conf = replace(engine_settings(s.site.ns.settings()), max_input_age_ms=MAX_AGE_MS,
                   signal_ttl_s=TTL_S)  # the worker's risk_env
    ref = hedge_reference(read_inputs(s.site.ns.bootstrap, s.site.ns.topic("")), conf, load_rules(s.rules))
    return list(ref.records.values())


def test_the_expected_signals_are_published_once_each_across_a_kill(scenario: Scenario) -> None:
    published = scenario.topic("risk.hedge")
    ids = Counter(r["id"] for r in published)
    assert [i for i, c in ids.items() if c > 1] == []  # no duplicate, though the worker was killed
    cut = max(r["ts"] for r in published)
    want = [r for r in reference(scenario) if r["ts"] <= cut]
    signals = [r for r in want if r["type"] == "signal"]
    assert len([r for r in signals if r["ts"] > scenario.t_kill]) >= 2
    assert len(signals) >= 6
    got = {r["id"]: r for r in published}
    table = "\n".join(f"{'ref' if r in want else '   '} {'pub' if r['id'] in got else '   '} {r['type']} {r['ts']} "
                      f"{r.get('size')} {r.get('reason')}"
                      for r in sorted(want + [p for p in published if p["id"] not in {w["id"] for w in want}],
                                      key=lambda r: r["ts"]))
    assert [r["id"] for r in want if r["id"] not in got] == [], table  # none lost
    assert sorted(got) == sorted(r["id"] for r in want), table  # and none the inputs do not give
    for r in signals:
        assert (got[r["id"]]["side"], got[r["id"]]["size"]) == (r["side"], r["size"])
        assert abs(r["exposure_after"]) <= 0.5 < abs(r["exposure_before"])


def test_no_signal_from_a_stale_input_and_a_blocked_record_instead(scenario: Scenario) -> None:
    published = scenario.topic("risk.hedge")
    blocked = [r for r in published if r["type"] == "blocked"]
    assert any(PERP in r["reason"] and "old" in r["reason"] for r in blocked), blocked
    for r in published:
        if r["type"] != "signal":
            continue
        hedge_input = next(i for i in r["inputs"] if i.get("key") == PERP)
        assert r["ts"] - hedge_input["ts_recv"] <= MAX_AGE_MS * 1_000_000
        assert r["ts"] - r["depth_ts_recv"] <= MAX_AGE_MS * 1_000_000
    start, end = scenario.t_silence
    inside = [r for r in published if r["type"] == "signal" and start + MAX_AGE_MS * 1_000_000 < r["ts"] < end]
    assert inside == []


def test_exposure_and_scenarios_are_published_with_their_inputs(scenario: Scenario) -> None:
    exposure = scenario.topic("risk.exposure")
    assert any(r["reason"] == "position" for r in exposure)
    ok = [r for r in exposure if r["ok"] and r["reason"] == "interval"]
    assert ok
    assert all(len(r["positions"]) == 2 and r["inputs"] for r in ok)
    gaps = sorted({b["ts"] - a["ts"] for a, b in zip(ok, ok[1:], strict=False) if b["reason"] == "interval"})
    assert gaps[0] >= 250_000_000  # at most every RISK_INTERVAL_MS of event time
    grids = scenario.topic("risk.scenarios")
    assert grids
    assert all(len(g["pnl_usd"]) == 11 and len(g["pnl_usd"][0]) == 3 for g in grids)
    flagged = [r for r in exposure if PERP in r["flags"]]
    assert any("old" in r["flags"][PERP] for r in flagged)  # the silence showed


def _dump_raw(ns: Namespace, path: Path) -> int:
    """The namespace's raw.deribit frames as a native capture (receive order); the last
    frame's receive time."""
    frames = []
    for msg in consume(ns.bootstrap, ns.topic("raw.deribit"), idle_s=2):
        for item in decode_record(msg.key, msg.value, msg.headers):
            frames.append(Record(item.ts, "deribit", item.conn, item.kind, item.data,
                                 symbol=item.key.partition(":")[2]))
    frames.sort(key=lambda r: r.ts)
    path.write_bytes(b"".join(write_native(r) for r in frames))
    assert len(frames) > 1000
    return frames[-1].ts


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in ("ts_published", "source")}
    return [_plain(v) for v in value] if isinstance(value, list) else value


def test_replaying_the_raw_topics_twice_gives_identical_risk_records(scenario: Scenario, tmp_path: Path,
                                                                  kafka: str) -> None:
    capture = tmp_path / "risk.jsonl"
    end = _dump_raw(scenario.site.ns, capture)  # the receive time of its last frame
    positions = consume(scenario.site.ns.bootstrap, scenario.site.ns.topic("positions"), idle_s=2)
    collateral = consume(scenario.site.ns.bootstrap, scenario.site.ns.topic("collateral"), idle_s=2)
    assert collateral
    # Two namespaces, two workers started together: run a replays as soon as its positions are in,
    # run b only once its engine has held the positions for a while (the late replay).
    runs = []
    for run in ("a", "b"):
        ns = Namespace(f"r{run}{uuid.uuid4().hex[:10]}", kafka, tmp_path / run)
        (tmp_path / run).mkdir()
        runs.append((ns, Worker(ns, tmp_path / run / "data", INGEST_IN_WORKER="false", **risk_env(scenario.rules))))
    (ns_a, worker_a), (ns_b, worker_b) = runs
    with workers(worker_a, worker_b):
        for _, worker in runs:
            worker.start(wait=False)
        for ns, worker in runs:
            worker.wait_ready()
            _produce(ns, "positions", [(m.key, m.value) for m in positions])
            _produce(ns, "collateral", [(m.key, m.value) for m in collateral])
        ns_a.replay(str(capture))

        def read() -> bool:
            risk = worker_b.get("/api/risk")[1]
            return (len(risk["positions"]), len(risk["collateral"])) == (
                len(positions), len({m.key for m in collateral if m.value is not None}))

        wait_for(read, 60, "the engine read the positions")
        time.sleep(3 * IDLE_S)  # the fault itself (a late replay), no condition to wait for
        held = worker_b.get("/api/risk")[1]
        balances = [m for m in collateral if m.value is not None]  # a tombstone applies when read
        assert (held["pending_inputs"], held["event_time"]) == (len(positions) + len(balances), 0), held
        ns_b.replay(str(capture))
        outputs = []
        for run, (ns, _) in zip(("a", "b"), runs, strict=True):
            def done(ns: Namespace = ns) -> list[dict[str, Any]] | None:
                got = values(consume(kafka, ns.topic("risk.exposure"), idle_s=2))
                return got if got and max(r["ts"] for r in got) >= end - 2 * 10**9 else None

            wait_for(done, 120, f"run {run}: risk.exposure up to the end of the capture", every=3)
            outputs.append({t: [_plain(r) for r in values(consume(kafka, ns.topic(t), idle_s=3))]
                            for t in ("risk.exposure", "risk.scenarios", "risk.margin", "risk.hedge")})
    a, b = outputs
    for topic in a:
        key = lambda r: (r["ts"], orjson.dumps(r, option=orjson.OPT_SORT_KEYS))  # noqa: E731 - a total order
        ra, rb = sorted(a[topic], key=key), sorted(b[topic], key=key)
        assert len(ra) > 0, topic
        for x, y in zip(ra, rb, strict=False):
            assert x == y, (topic, x, y)
        assert len(ra) == len(rb), topic
    assert any(r["type"] == "signal" for r in a["risk.hedge"])


def _produce(ns: Namespace, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    import asyncio

    from aiokafka import AIOKafkaProducer

    from app.wire import partition_for

    async def go() -> None:
        prod = AIOKafkaProducer(bootstrap_servers=ns.bootstrap)
        await prod.start()
        try:
            for key, value in records:
                await prod.send_and_wait(ns.topic(topic), value, key=key,
                                         partition=partition_for(key, ns.partitions))
        finally:
            await prod.stop()

    asyncio.run(go())


def test_the_commands_and_the_endpoints_a_desk_uses(scenario: Scenario) -> None:
    ns, worker = scenario.site.ns, scenario.site.worker
    listed = [orjson.loads(line) for line in ns.faust("positions", "list", "--json").stdout.splitlines()]
    assert {(p["instrument"], p["quantity"]) for p in listed if p["portfolio"] == "desk"} == {
        (f"deribit:{CALL}", "6"), (PERP, "-200000")}
    # Every refusal (none changes anything) at once: a command is a process start of ~2 s.
    signals = [r for r in scenario.topic("risk.hedge") if r["type"] == "signal"]
    assert len(signals) >= 3
    first, second, third = signals[:3]
    refusals = [
        (("positions", "set", "desk", PERP, "ten"), "quantity: 'ten' is not a number"),
        (("positions", "set", "desk", "deribit:BTC-NOPE", "1"), "unknown instrument(s) deribit:BTC-NOPE"),
        (("collateral", "set", "desk", "BTC", "--", "-1"), "amount: '-1' must be zero or more"),
        (("collateral", "set", "desk", "BTC", "lots"), "amount: 'lots' is not a number"),
        (("collateral", "set", "desk", "B!", "1"), "currency: 'B!' is not a currency code"),
        (("collateral", "set", "desk", "BTC"), "set PORTFOLIO CURRENCY AMOUNT"),
        (("margin", "simulate", "--add", "deribit:BTC-PERPETUAL"), "expected INSTRUMENT=QTY"),
        (("hedge", "fill", "0" * 24), f"no signal {'0' * 24!r}"),
        (("hedge", "fill", first["id"], "--size", str(float(first["size"]) * 2)), "must be between 0 and"),
        (("hedge", "wave", first["id"]), "unknown action 'wave'"),
        (("rules", "state", "desk-btc-delta", "paused"), "state 'paused' is not one of active, reduce-only, halted"),
    ]
    for (args, says), bad in zip(refusals, ns.faust_all(*(a for a, _ in refusals), env=risk_env(scenario.rules)),
                                 strict=True):
        assert (bad.returncode, says in bad.stderr) == (1, True), (args, bad.stderr)
    ns.faust("positions", "set", "play", PERP, "--", "-5000")  # a short on the command line
    script = ns.tmp / "script.toml"
    script.write_text(f'[[position]]\nportfolio = "play"\ninstrument = "{PERP}"\nquantity = -7000\nat_s = 1\n')
    played = ns.faust("positions", "play", str(script))
    assert "1 position change(s) played" in played.stderr

    def play_position() -> list[Any]:
        rows = worker.get("/api/risk")[1]["positions"]
        return [r for r in rows if r["portfolio"] == "play" and r["quantity"] == "-7000"]

    wait_for(play_position, 30, "the played position on /api/risk")
    assert "1 position(s) cleared" in ns.faust("positions", "clear", "play").stderr
    assert ns.faust("positions", "list", "--json", "--portfolio", "play").stdout.strip() == ""
    # collateral: set, replaced, listed, refused whole when bad, cleared
    ns.faust("collateral", "set", "desk", "btc", "12.5")
    ns.faust("collateral", "set", "desk", "USDC", "1000")
    ns.faust("collateral", "set", "desk", "BTC", "10")  # replaces the last BTC balance
    held = [orjson.loads(line) for line in ns.faust("collateral", "list", "--json").stdout.splitlines()]
    assert {(c["portfolio"], c["currency"], c["amount"]) for c in held} == {("desk", "BTC", "10"),
                                                                             ("desk", "USDC", "1000")}
    assert "1 collateral balance(s) cleared" in ns.faust("collateral", "clear", "desk", "usdc").stderr
    table = ns.faust("collateral", "list").stdout
    assert "BTC" in table
    assert "USDC" not in table
    # what-if margin of a hypothetical book at the live market
    whatif = ns.tmp / "whatif.toml"
    whatif.write_text(f'[[position]]\nportfolio = "try"\ninstrument = "deribit:{CALL}"\nquantity = -3\n')
    answer = orjson.loads(ns.faust("margin", "simulate", "--positions", str(whatif), "--add", f"{PERP}=-50000",
                                   "--json").stdout)
    tried = answer["portfolios"]["try"]
    assert {leg["key"] for leg in tried["legs"]} == {f"deribit:{CALL}", PERP}, tried
    deribit = tried["venues"]["deribit"]
    assert deribit["deribit-standard"]["currencies"]["BTC"]["im"] > 0
    components = deribit["deribit-portfolio"]["currencies"]["BTC"]
    assert components["mm"] == pytest.approx(0.8 * components["risk_matrix_margin"])
    table = ns.faust("margin", "simulate", "--add", f"{PERP}=-50000")
    assert "deribit-portfolio" in table.stdout
    assert "parameters of 2024-06-17" in table.stderr
    # hedge fills by hand: refused whole when wrong, applied to the position when right
    half = str(int(float(first["size"]) / 2 // 10 * 10))
    assert "partial" in ns.faust("hedge", "fill", first["id"], "--size", half, "--price", "65000").stderr
    assert "filled" in ns.faust("hedge", "fill", first["id"], "--price", "65010").stderr
    again = ns.faust("hedge", "fill", first["id"], check=False)
    assert "is already filled" in again.stderr
    assert "rejected" in ns.faust("hedge", "reject", second["id"], "--reason", "venue refused").stderr
    assert "acked" in ns.faust("hedge", "ack", third["id"]).stderr

    def answered() -> bool:
        fills = {f["signal"]: f for f in worker.get("/api/risk")[1]["fills"]}
        return [fills.get(s["id"], {}).get("state") for s in (first, second, third)] == ["filled", "rejected",
                                                                                           "acked"]

    wait_for(answered, 30, "the fills on /api/risk")
    checked = ns.faust("rules", "check", env=risk_env(scenario.rules))
    assert f"{scenario.rules}: 1 rule(s), no errors" in checked.stdout
    rules = [orjson.loads(line) for line in ns.faust("rules", "list", "--json",
                                                     env=risk_env(scenario.rules)).stdout.splitlines()]
    assert [(r["id"], r["state"]) for r in rules] == [("desk-btc-delta", "active")]
    ns.faust("rules", "state", "desk-btc-delta", "reduce-only", env=risk_env(scenario.rules))
    wait_for(lambda: worker.get("/api/risk")[1]["rules"][0]["state"] == "reduce-only", 30, "reduce-only applied")
    metrics = urllib.request.urlopen(worker.url + "/metrics", timeout=10).read().decode()  # noqa: S310 - local
    assert re.search(r'^bookstream_risk_records_total\{topic="risk.hedge"\} [1-9]', metrics, re.M)
    assert "# TYPE bookstream_alerts_total counter" in metrics
