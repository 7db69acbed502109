"""The risk page and API against a real worker fed by the simulator: a position of 10 calls
gives a delta outside the rule's band, the page shows the exposure, the scenario heat map, the
rule and its hedge signal, halting the rule from the page takes effect; the dashboard shows the
cross-venue NBBO."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from app.market.symbols import monthly_expiries
from tests.conftest import ARTIFACTS
from tests.helpers import Namespace, SimSite, SimSiteFactory, Worker, http_json, wait_for

EXPIRY = monthly_expiries(time.time_ns(), 1)[0]
CALL = f"BTC-{EXPIRY}-65000-C"
FEEDS = {
    "deribit": ["BTC-PERPETUAL", CALL, f"BTC-{EXPIRY}-65000-P", f"BTC-{EXPIRY}-75000-C"],
    "binance": ["BTCUSDT"],
    "okx": ["BTC-USDT"],
    "coinbase": ["BTC-USD"],
}
SPOT = {"binance:BTCUSDT", "okx:BTC-USDT", "coinbase:BTC-USD"}
RULE = "desk-btc-delta"
RULES = f"""
[[rule]]
id = "{RULE}"
portfolio = "desk"
underlying = "BTC"
greek = "delta"
trigger = 0.5
target = 0.1
hedge = "deribit:BTC-PERPETUAL"
cooldown_s = 5
max_per_minute = 6
"""
ROW = "#exposure tr[data-key='desk|BTC']"
RULE_ROW = f"#rules tr[data-key='{RULE}']"


@pytest.fixture(scope="module")
def site(sim_site: SimSiteFactory, tmp_path_factory: pytest.TempPathFactory) -> SimSite:
    rules = tmp_path_factory.mktemp("risk") / "rules.toml"
    rules.write_text(RULES)
    return sim_site(FEEDS, data="risk", INSTRUMENTS_REFRESH_S="1", RISK_RULES_FILE=str(rules))


@pytest.fixture(scope="module")
def positioned(site: SimSite) -> SimSite:
    """``desk`` long 10 calls and short 10,000 USD of the perpetual (set with ``faust -A app positions
    set`` once the registry knows them), 2 BTC of collateral."""
    key = f"deribit:{CALL}"
    wait_for(lambda: any(r["key"] == key for r in site.topic("ref.instruments")), 60, f"{key} in ref.instruments")
    site.ns.faust("positions", "set", "desk", key, "10")
    site.ns.faust("positions", "set", "desk", "deribit:BTC-PERPETUAL", "--avg-price", "65000", "--", "-10000")
    site.ns.faust("collateral", "set", "desk", "BTC", "2")
    return site


def post(url: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - local test URL
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - local test URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def drop_namespace(ns: Namespace) -> None:
    """Delete the topics of ``ns`` (a namespace of one test: the broker's open files are finite)."""
    async def drop() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=ns.bootstrap)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith((f"{ns.name}.", f"{ns.name}-"))]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
        pool.submit(asyncio.run, drop()).result()


def risk(site: SimSite) -> dict[str, Any]:
    status, body = site.worker.get("/api/risk")
    assert status == 200, body
    return dict(body)


def spot_inputs(site: SimSite) -> str:
    """What the engine reads of the spot books (for a failure's message)."""
    lines = []
    for name in ("ref.instruments", "book.status", "book.top"):
        rows = [r for r in site.topic(name) if (r.get("key") or f"{r.get('venue')}:{r.get('instrument')}") in SPOT]
        last: dict[str, dict[str, Any]] = {}
        for r in rows:
            last[r.get("key") or f"{r['venue']}:{r['instrument']}"] = r
        lines += [f"{name} ({sum(1 for r in rows if (r.get('key') or r['venue'] + ':' + r['instrument']) == k)}) "
                  f"{k}: {r}" for k, r in sorted(last.items())]
    return "\n".join(lines)


def test_the_api_lists_the_rule_and_refuses_bad_state_changes(site: SimSite) -> None:
    snap = risk(site)
    for part in ("exposure", "scenarios", "rules", "hedge", "alerts", "nbbo", "positions", "bad_positions",
                 "event_time", "pending_inputs", "event_time_held_by", "inputs_read"):
        assert part in snap, part
    (rule,) = snap["rules"]
    assert (rule["id"], rule["portfolio"], rule["underlying"], rule["greek"], rule["trigger"], rule["target"],
            rule["hedge"], rule["state"]) == (RULE, "desk", "BTC", "delta", 0.5, 0.1, "deribit:BTC-PERPETUAL",
                                              "active")
    url = site.worker.url + "/api/risk/rules/{}/state"
    status, body = post(url.format("nope"), b'{"state": "halted"}')
    assert status == 404
    assert "nope" in body["error"]
    assert RULE in body["error"]
    status, body = post(url.format(RULE), b'{"state": "paused"}')
    assert status == 400
    assert "'paused'" in body["error"]
    assert "reduce-only" in body["error"]
    for bad in (b"halted", b"[]", b'{"state": 1}', b""):
        status, body = post(url.format(RULE), bad)
        assert status == 400, bad
        assert "\n" not in body["error"]
    assert risk(site)["rules"][0]["state"] == "active"  # nothing was published


def test_the_risk_page_shows_exposure_scenarios_the_rule_and_its_signal_and_halts_it(
        positioned: SimSite, browser: Any) -> None:
    site = positioned
    page = browser.new_page(viewport={"width": 1500, "height": 1800})
    page.goto(site.worker.url + "/risk")
    page.evaluate("window.__sameDocument = true")
    try:
        page.wait_for_selector(ROW, timeout=60_000)
        page.wait_for_function(f"Math.abs(parseFloat(document.querySelector(\"{ROW}\").dataset.delta)) > 0.5",
                               timeout=30_000)
    except Exception:
        raise AssertionError(f"no desk|BTC exposure on /risk: {risk(site)}\n--- worker log ---\n"
                             f"{site.worker.tail(80)}") from None
    shown = page.eval_on_selector(ROW, "tr => [tr.dataset.delta, ...[...tr.children].map(td => td.textContent)]")
    delta, cells = float(shown[0]), shown[1:]  # one moment: the row is updated every 0.5 s
    assert 3.0 < delta < 7.0, delta  # 10 calls struck at the money (65000): about 5 coins
    assert cells[:2] == ["desk", "BTC"]
    assert float(cells[2].replace(",", "")) == pytest.approx(delta, abs=1e-4)
    assert float(cells[3].replace(",", "")) > 1e5  # delta USD: ~5 BTC at ~65000
    assert all(cells[i] for i in range(4, 8)), cells  # gamma 1%, vega, theta, notional

    # margin, live: the short perpetual's (long options need none), equity from the collateral
    margin_row = "#margin tr[data-key='desk|deribit|BTC']"
    page.wait_for_selector(margin_row, timeout=30_000)
    cells = page.eval_on_selector(margin_row, "tr => [...tr.children].map(td => td.textContent)")
    assert cells[:4] == ["desk", "deribit", "BTC", "deribit-standard"], cells
    im, mm, equity, ratio = (float(c.replace(",", "")) for c in cells[4:8])
    assert 0 < mm < im < 0.01  # ~0.15 BTC of perpetual
    assert equity == pytest.approx(2.0, abs=0.01)
    assert ratio == pytest.approx(mm / equity, rel=1e-3)
    assert "futures_im" in cells[9]
    (api,) = [m for m in risk(site)["margin"] if m["portfolio"] == "desk"]
    assert api["collateral"] == 2.0

    # the scenario heat map: 11 moves × 3 vol shifts, gains green, losses red, scaled by size
    grid = "#scenarios table[data-key='desk|BTC']"
    page.wait_for_selector(grid, timeout=30_000)
    # one evaluation, so one rendering: eval_on_selector_all queries the cells and evaluates on them in
    # two round trips, and a new computation between them replaces the table (its cells, detached, have
    # no computed style)
    heat = page.evaluate("""grid => [...document.querySelectorAll(`${grid} td[data-pnl]`)].map(td => {
        const [r, g, b, a] = getComputedStyle(td).backgroundColor.match(/[\\d.]+/g).map(Number);
        return {pnl: parseFloat(td.dataset.pnl), r, g, a: a ?? 1};
    })""", grid)
    assert len(heat) == 33
    assert len(page.query_selector_all(f"{grid} tbody tr")) == 11
    assert len(page.query_selector_all(f"{grid} thead th")) == 4
    losses, gains = [c for c in heat if c["pnl"] < 0], [c for c in heat if c["pnl"] > 0]
    assert losses
    assert gains
    assert all(c["r"] > c["g"] for c in losses)
    assert all(c["g"] > c["r"] for c in gains)
    assert heat[0]["pnl"] < 0 < heat[-1]["pnl"]  # long calls: −50 % loses, +100 % gains
    big, small = max(heat, key=lambda c: abs(c["pnl"])), min(heat, key=lambda c: abs(c["pnl"]) or 1e18)
    assert big["a"] > small["a"]

    # the rule and its sell signal on the perpetual (delta ≈ 5 > 0.5 → back to 0.1)
    assert page.get_attribute(RULE_ROW, "data-state") == "active"
    assert "deribit:BTC-PERPETUAL" in page.inner_text(RULE_ROW)
    assert "±0.5 → 0.1" in page.inner_text(RULE_ROW)
    signal = "#signals tr[data-type='signal']"
    try:
        page.wait_for_selector(signal, timeout=30_000)
    except Exception:
        raise AssertionError(f"no hedge signal; hedge records: {risk(site)['hedge']}\n--- worker log ---\n"
                             f"{site.worker.tail(80)}") from None
    row = page.eval_on_selector(signal, "tr => [tr.dataset.id, ...[...tr.children].map(td => td.textContent)]")
    sid, _time, kind, rule, side, size, instrument = row[:7]
    assert (kind, rule, side, instrument) == ("signal", RULE, "sell", "deribit:BTC-PERPETUAL")
    assert float(size) > 0
    assert "→" in row[7]
    published = {h["id"]: h for h in risk(site)["hedge"]}
    assert sid in published
    assert published[sid]["side"] == "sell"
    assert abs(published[sid]["exposure_after"]) <= 0.5 < abs(published[sid]["exposure_before"])

    # halting the rule from the page: published, read back, shown; the hedge is blocked from then on
    page.click(f"{RULE_ROW} button[data-state='halted']")
    page.wait_for_function(f"document.querySelector(\"{RULE_ROW}\").dataset.state === 'halted'", timeout=15_000)
    assert "halted (web)" in page.inner_text(f"{RULE_ROW} .state")
    assert page.is_disabled(f"{RULE_ROW} button[data-state='halted']")
    assert risk(site)["rules"][0]["state"] == "halted"
    page.wait_for_function("[...document.querySelectorAll(\"#signals tr[data-type='blocked']\")]"
                           ".some(tr => tr.lastChild.textContent === 'rule halted')", timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True  # pushed, never reloaded
    page.screenshot(path=str(ARTIFACTS / "risk.png"), full_page=True)
    page.close()


FOREIGN = """<!doctype html><title>a page the trader opened</title>
<form id="form" method="POST" enctype="text/plain" action="{url}">
  <input name='{{"state": "halted", "pad": "' value='"}}'>
</form>
<script>
  const url = "{url}";
  window.results = {{}};
  // a "simple" request: no preflight, the browser sends it and hides the answer (no-cors)
  fetch(url, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
               body: '{{"state": "halted"}}'}})
    .then(() => window.results.simple = "sent", e => window.results.simple = String(e));
  // JSON needs a CORS preflight, which the server never approves: the POST is never sent
  fetch(url, {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: '{{"state": "halted"}}'}})
    .then(r => window.results.json = "answered " + r.status, e => window.results.json = "blocked");
</script>"""


def test_a_cross_site_post_from_another_origin_changes_nothing(site: SimSite, browser: Any,
                                                               tmp_path: Path) -> None:
    """A page of another origin on the trader's machine (another port of 127.0.0.1) posts to the
    rule's control endpoint the three ways a browser lets it: a text/plain fetch, a JSON fetch and
    a text/plain form. Nothing is published, the server counts and says each refusal; the page's
    own controls work (test_the_risk_page_…_halts_it clicks them)."""
    import functools
    import http.server
    import threading

    url = f"{site.worker.url}/api/risk/rules/{RULE}/state"
    (tmp_path / "index.html").write_text(FOREIGN.format(url=url))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    before_state = risk(site)["rules"][0]["state"]
    before_rules = len(site.topic("risk.rules"))
    refused = lambda: site.worker.get("/metrics/counters")[1].get("web_control_refused", 0)  # noqa: E731
    before_refused = refused()
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        page.wait_for_function("window.results.simple && window.results.json", timeout=15_000)
        assert page.evaluate("window.results") == {"simple": "sent", "json": "blocked"}
        wait_for(lambda: refused() >= before_refused + 1, 15, "the text/plain fetch refused")
        with page.expect_navigation():
            page.evaluate("document.getElementById('form').submit()")
        answer = json.loads(page.inner_text("body"))  # the form's answer replaces the page: readable here
        assert "application/json" in answer["error"], answer
        assert refused() >= before_refused + 2
    finally:
        page.close()
        server.shutdown()
    assert risk(site)["rules"][0]["state"] == before_state
    assert len(site.topic("risk.rules")) == before_rules  # nothing was published
    assert "refused POST /api/risk/rules" in site.worker.tail(200)


def test_the_dashboard_shows_the_nbbo_and_links_to_the_risk_page(site: SimSite, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(site.worker.url + "/")
    nbbo = "#nbbo tr[data-key='BTC/USD']"
    try:
        page.wait_for_function(f"(document.querySelector(\"{nbbo}\")?.children[8].textContent | 0) >= 3",
                               timeout=60_000)
    except Exception:
        raise AssertionError(f"no NBBO of BTC/USD from the three spot books: {risk(site)['nbbo']}\n"
                             f"{spot_inputs(site)}") from None
    shown = page.eval_on_selector(nbbo, "tr => [...[...tr.children].map(td => td.textContent), tr.children[8].title]")
    pair, bid, bid_venue, _bq, ask, ask_venue, _aq, bps, venues, title = shown  # one moment: updated every 0.5 s
    assert pair == "BTC/USD"
    assert venues == "3"
    assert bid_venue in SPOT
    assert ask_venue in SPOT
    quotes = {}  # the venues' books behind the row (its title): the NBBO is their best bid and best ask
    for line in title.splitlines():
        key, venue_bid, _slash, venue_ask = line.split()
        quotes[key] = (float(venue_bid), float(venue_ask))
    assert set(quotes) == SPOT
    assert float(bid) == max(b for b, _ in quotes.values()) == quotes[bid_venue][0]
    assert float(ask) == min(a for _, a in quotes.values()) == quotes[ask_venue][1]
    assert all(0 < b < a for b, a in quotes.values())
    mid = (float(bid) + float(ask)) / 2
    assert float(bps) == pytest.approx((float(ask) - float(bid)) / mid * 1e4, abs=0.01)  # < 0 when venues cross
    page.screenshot(path=str(ARTIFACTS / "dashboard-nbbo.png"))
    # The link stays where it is while the live header text changes width (a rate gaining a digit, a
    # venue joining): it used to sit after the venue badges and jump to a second line between the
    # moment the pointer aimed and the click, which then landed on the header and went nowhere.
    moved = page.eval_on_selector("#risk-link", """a => {
        const at = () => JSON.stringify(a.getBoundingClientRect());
        const before = at(), wide = document.createElement("span");
        wide.className = "venue"; wide.textContent = "x".repeat(300);
        document.getElementById("venues").append(wide);
        const after = at();
        wide.remove();
        return before === after ? null : [before, after];
    }""")
    assert moved is None, f"the risk link moved when the venue badges grew: {moved}"
    with page.expect_navigation(url="**/risk"):
        page.click("#risk-link")
    page.wait_for_selector(f"{RULE_ROW} .state", timeout=15_000)
    page.close()


def test_without_the_engine_the_api_says_so_and_the_dashboard_shows_risk_disabled(
        kafka: str, browser: Any, tmp_path: Path) -> None:
    ns = Namespace(f"r{uuid.uuid4().hex[:10]}", kafka, tmp_path)
    worker = Worker(ns, tmp_path / "data", RISK_ENABLED="false")
    try:
        worker.start()
        disabled = (503, {"error": "risk engine disabled (RISK_ENABLED=false)"})
        assert http_json(worker.url + "/api/risk") == disabled
        assert post(worker.url + f"/api/risk/rules/{RULE}/state", b'{"state": "halted"}') == disabled
        page = browser.new_page()
        page.goto(worker.url + "/")
        page.wait_for_function("document.getElementById('nbbo-status').textContent === 'risk disabled'",
                               timeout=15_000)
        assert page.is_hidden("#nbbo")
        page.goto(worker.url + "/risk")
        page.wait_for_selector("#disabled:not([hidden])", timeout=15_000)
        assert "RISK_ENABLED=false" in page.inner_text("#disabled")
        page.close()
    finally:
        worker.kill()
        drop_namespace(ns)
