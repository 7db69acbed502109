"""The web view against a real worker fed by the simulator: API, metrics, routing, browser."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ARTIFACTS
from tests.helpers import ROOT, SimSite, SimSiteFactory, Worker, promtool_check, wait_for, workers


def _misrouted_options(n: int) -> list[str]:
    """Options whose partition (their chain's) is not the one Kafka's partitioner gives their own
    name: the API must route them by their partition key."""
    from aiokafka.partitioner import murmur2

    from app.market.symbols import monthly_expiries
    from app.wire import partition_for

    out = []
    for strike in range(50_000, 90_000, 1_000):
        symbol = f"BTC-{monthly_expiries(time.time_ns(), 1)[0]}-{strike}-C"
        if (murmur2(f"deribit:{symbol}".encode()) & 0x7FFFFFFF) % 4 != partition_for(f"deribit:{symbol}", 4):
            out.append(symbol)
        if len(out) == n:
            return out
    raise AssertionError("no option partitioned away from its own name")


FEEDS = {"deribit": ["BTC-PERPETUAL", "ETH-PERPETUAL", *_misrouted_options(2)], "okx": ["BTC-USDT"],
         "coinbase": ["BTC-USD", "ETH-USD"], "binance-usdm": ["BTCUSDT"]}
KEYS = {f"{venue}:{symbol}" for venue, symbols in FEEDS.items() for symbol in symbols}


@pytest.fixture(scope="module")
def site(sim_site: SimSiteFactory) -> SimSite:
    return sim_site(FEEDS, "w1", TABLE_STANDBY_REPLICAS="1")


def test_book_api_fields(site: SimSite) -> None:
    status, body = site.worker.get("/api/books/okx/BTC-USDT?depth=5")
    assert status == 200
    assert len(body["bids"]) == 5
    assert len(body["asks"]) == 5
    for field in ("state", "seq", "bid_px", "ask_px", "mid", "spread", "spread_bps", "microprice", "imbalance",
                  "bands_bps", "ts_exchange", "ts_recv", "counters"):
        assert field in body, field
    assert body["state"] == "synced"
    assert float(body["bids"][0][0]) < float(body["asks"][0][0])
    index = site.worker.get("/api/books")[1]
    assert index["count"] >= len(KEYS)


@pytest.mark.parametrize(("path", "status"), [
    ("/api/books/okx/NOPE-USDT", 404), ("/api/books/kraken/XBTUSD", 404), ("/api/books/okx/BTC-USDT?depth=abc", 400),
    ("/api/books/okx/BTC-USDT?depth=0", 400), ("/api/books/okx/BTC-USDT?depth=999999", 400),
    ("/api/books/okx/BTC-USDT?depth=-1", 400), ("/table/books", 404), ("/router", 404), ("/stats/", 404),
])
def test_errors_are_json_never_500(site: SimSite, path: str, status: int) -> None:
    got, body = site.worker.get(path)
    assert got == status, body
    if path.startswith("/api/"):
        assert isinstance(body, dict)
        assert "error" in body


def test_health_ready_venues_and_metrics(site: SimSite) -> None:
    assert site.worker.get("/health") == (200, {"status": "ok"})
    status, ready = site.worker.get("/ready")
    assert status == 200
    assert ready["broker_reachable"]
    assert ready["recovery_completed"]
    assert ready["books_synced"] >= len(KEYS)
    venues = site.worker.get("/api/venues")[1]
    assert venues["ingesting"]
    assert venues["venues"]["okx"]["connected"] == 1
    with urllib.request.urlopen(site.worker.url + "/metrics", timeout=5) as resp:  # noqa: S310 - local URL
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples = dict(re.findall(r"^(bookstream_[^ ]+) ([0-9.e+-]+)$", text, flags=re.M))
    assert float(samples['bookstream_frames_total{venue="okx"}']) > 0
    assert float(samples["bookstream_applied_deltas_total"]) > 0
    assert float(samples['bookstream_top_latency_seconds_bucket{le="+Inf"}']) > 0
    assert "# TYPE bookstream_top_latency_seconds histogram" in text
    assert "bookstream_consumer_lag{" in text


def test_schemas_are_served_as_committed(site: SimSite) -> None:
    """GET /api/schemas lists every topic's definition; /api/schemas/{topic} is the committed file."""
    from app import records

    status, index = site.worker.get("/api/schemas")
    assert status == 200
    assert index["version"] == records.SCHEMA_VERSION
    assert [t["topic"] for t in index["topics"]] == list(records.TOPICS)
    for entry in index["topics"]:
        with urllib.request.urlopen(site.worker.url + entry["schema"], timeout=5) as resp:  # noqa: S310 - local URL
            assert resp.headers["Content-Type"].startswith("application/schema+json")
            assert resp.read().decode() == (ROOT / "schemas" / records.schema_file(entry["topic"])).read_text()
    assert site.worker.get("/api/schemas/raw.okx")[0] == 200  # any raw.<venue>
    status, body = site.worker.get("/api/schemas/book.nope")
    assert status == 404
    assert "GET /api/schemas" in body["error"]


def test_metrics_pass_promtool_check(site: SimSite) -> None:
    """The real /metrics of a worker that ingests, publishes and has books: promtool (Prometheus' own
    linter) finds nothing wrong, and prometheus_client's process metrics are there beside ours."""
    wait_for(lambda: site.worker.get("/metrics/counters")[1].get("book_top", 0) > 0, 60, "book.top published")
    with urllib.request.urlopen(site.worker.url + "/metrics", timeout=5) as resp:  # noqa: S310 - local URL
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = resp.read().decode()
    assert promtool_check(text) == ""
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["bookstream_top_latency_seconds"] == "histogram"
    assert types["bookstream_outputs_delivered"] == "counter"
    assert types["bookstream_books"] == "gauge"
    books = {s.labels["state"]: s.value for f in text_string_to_metric_families(text) if f.name == "bookstream_books"
             for s in f.samples}
    assert books.get("synced", 0) > 0  # by state, counted in the same pass as the books' counters
    assert types["process_cpu_seconds"] == "counter"
    assert types["python_info"] == "gauge"


def test_second_worker_answers_for_every_instrument_through_table_routing(site: SimSite, tmp_path: Path) -> None:
    second = Worker(site.ns, tmp_path / "w2", INGEST_IN_WORKER="false", TABLE_STANDBY_REPLICAS="1")
    with workers(second):
        second.start()
        # partitions split between the two workers: each loads only the books it owns
        wait_for(lambda: site.books(second) and len(site.books(second)) + len(site.books()) == len(KEYS), 60,
                 "books split between two workers", every=1)
        owned_by_first = set(site.books()) - set(site.books(second))
        assert owned_by_first
        assert set(site.books(second))
        for key in KEYS:
            venue, symbol = key.split(":", 1)
            for w in (site.worker, second):
                status, body = w.get(f"/api/books/{venue}/{symbol}?depth=3")
                assert status == 200, (key, w.web_port, body)
                # the owner's live book, whichever worker is asked: never a standby copy or a last answer
                assert (body["source"], body["synced"], body["state"]) == ("owner", True, "synced"), (key, w.web_port)
    # the first worker takes its books back when the second one leaves
    wait_for(lambda: set(site.books()) >= KEYS, 60, "books back on one worker", every=1)




def test_dashboard_updates_live_and_shows_a_gap_as_stale_then_recovered(site: SimSite, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    page.goto(site.worker.url + "/")
    page.wait_for_selector('tr[data-key="okx:BTC-USDT"]', timeout=15_000)
    page.evaluate("window.__sameDocument = true")
    cell = 'tr[data-key="okx:BTC-USDT"] td.bidpx'
    first = page.inner_text(cell)
    page.wait_for_function(f"document.querySelector('{cell}').textContent !== {json.dumps(first)}",
                           timeout=20_000)
    assert page.evaluate("window.__sameDocument") is True  # updated by push, no reload
    # watch the row's states as the page sees them
    page.evaluate("""() => { window.__states = new Set();
        new MutationObserver(() => { const r = document.querySelector('tr[data-key="coinbase:ETH-USD"]');
          if (r) window.__states.add(r.className); }).observe(document.querySelector('#books tbody'),
          {childList: true, subtree: true}); }""")
    site.sim.fault("coinbase", "ETH-USD", "silence", seconds=6)
    page.wait_for_function("window.__states.has('stale')", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-stale.png"))
    page.wait_for_selector('tr[data-key="coinbase:ETH-USD"].synced', timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
    page.select_option("#venue", "deribit")
    page.wait_for_function(
        "[...document.querySelectorAll('#books tbody tr')].every(r => r.dataset.key.startsWith('deribit:'))")
    page.fill("#filter", "ETH")
    page.wait_for_function("document.querySelectorAll('#books tbody tr').length === 1")
    page.close()


def test_instrument_page_renders_ladder_depth_chart_and_series(site: SimSite, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(site.worker.url + "/book/deribit/BTC-PERPETUAL")
    page.wait_for_function("document.querySelectorAll('#ladder tbody tr').length >= 10", timeout=15_000)
    drawn = """id => { const c = document.getElementById(id);
                       const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                       for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }"""
    page.wait_for_function(f"({drawn})('depth')", timeout=15_000)
    page.wait_for_function(f"({drawn})('spread') && ({drawn})('imbalance')", timeout=15_000)
    assert "synced" in page.inner_text("#status")
    bid = page.inner_text("#ladder tbody tr:first-child td:nth-child(3)")
    ask = page.inner_text("#ladder tbody tr:first-child td:nth-child(4)")
    assert float(bid) < float(ask)
    page.screenshot(path=str(ARTIFACTS / "book.png"))
    page.close()
