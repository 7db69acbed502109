"""Simulator trades and tickers → real WebSockets → ingestion → Kafka → trades, ticker,
feed.status and options.chain: every venue end to end, a skipped trade reported as a gap."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from app.market.symbols import monthly_expiries
from tests.conftest import ARTIFACTS
from tests.helpers import SimSite, SimSiteFactory, http_json, wait_for

EXPIRY = monthly_expiries(time.time_ns(), 1)[0]
OPTIONS = [f"BTC-{EXPIRY}-{k}-{cp}" for k in (55000, 65000, 75000) for cp in "CP"]
FEEDS = {
    "deribit": ["BTC-PERPETUAL", *OPTIONS],
    "binance": ["BTCUSDT"],
    "binance-usdm": ["BTCUSDT"],
    "okx": ["BTC-USDT-SWAP"],
    "bybit-linear": ["BTCUSDT"],
    "bybit-option": [f"BTC-{EXPIRY}-65000-C"],
    "coinbase": ["BTC-USD"],
}
SKIPPED = [("deribit", "BTC-PERPETUAL"), ("binance-usdm", "BTCUSDT")]  # contiguous trade numbers: a visible gap


@pytest.fixture(scope="module")
def market(sim_site: SimSiteFactory) -> SimSite:
    return sim_site(FEEDS, data="market", INSTRUMENTS_REFRESH_S="1")


def by_key(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[r["key"]].append(r)
    return out


def test_every_venue_publishes_trades_and_tickers(market: SimSite) -> None:
    keys = {f"{v}:{s}" for v, symbols in FEEDS.items() for s in symbols}

    def flowing() -> bool:  # options too; Bybit's option trades come over its per-coin topic
        trades, tickers = by_key(market.topic("trades")), by_key(market.topic("ticker"))
        return all(len(trades.get(k, [])) >= 3 and len(tickers.get(k, [])) >= 3 for k in keys)

    wait_for(flowing, 60, "trades of every instrument and tickers of every instrument")
    trades = market.topic("trades")
    for key, rows in by_key(trades).items():
        ids = [r["trade_id"] for r in rows]
        assert len(ids) == len(set(ids)), f"{key}: a trade published twice"
        for r in rows:
            assert r["side"] in ("buy", "sell")
            assert float(r["price"]) > 0
            assert r["ts_exchange"] > 0
    units = {r["key"]: r["unit"] for r in trades}
    assert units["deribit:BTC-PERPETUAL"] == "quote"  # Deribit perpetual amounts are USD
    assert units["binance:BTCUSDT"] == "base"
    tickers = by_key(market.topic("ticker"))
    assert all(t["mark"] is not None and t["funding_rate"] is not None for t in tickers["binance-usdm:BTCUSDT"])
    option = tickers[f"deribit:{OPTIONS[0]}"][-1]
    assert option["mark_iv"] is not None
    assert option["delta"] is not None
    assert option["underlying_price"] is not None


def test_a_skipped_trade_is_reported_as_a_gap_on_feed_status(market: SimSite) -> None:
    for venue, symbol in SKIPPED:
        market.sim.fault(venue, symbol, "skip-trade")

    def reported() -> bool:
        return {r["key"] for r in market.topic("feed.status")} >= {f"{v}:{s}" for v, s in SKIPPED}

    wait_for(reported, 60, "a feed.status gap for each skipped trade")
    trade_gaps = [r for r in market.topic("feed.status") if r["feed"] == "trades"]
    gaps = Counter(r["key"] for r in trade_gaps)
    for venue, symbol in SKIPPED:
        assert gaps[f"{venue}:{symbol}"] == 1
    for r in trade_gaps:
        assert (r["feed"], r["event"], r["missing"]) == ("trades", "gap", 1)
        assert 0 < r["ts_exchange"] <= r["ts_recv"] + 10**9
        assert r["ts_recv"] <= r["ts_published"]
        seqs = sorted(int(t["seq"]) for t in by_key(market.topic("trades"))[r["key"]])
        assert r["first_missing"] not in seqs  # the missing trade never appears
        assert seqs[-1] > r["first_missing"]  # and trades went on after it


def test_the_options_chain_carries_the_venues_numbers_and_ours(market: SimSite) -> None:
    key = f"deribit:BTC-{EXPIRY}"

    def full_chain() -> dict[str, Any] | None:
        chains = [r for r in market.topic("options.chain") if r["key"] == key]
        full = [c for c in chains if sum((s["call"] is not None) + (s["put"] is not None) for s in c["strikes"]) == 6
                and c["spec"] is not None]  # and computed with the registry's terms in force
        return full[-1] if full else None

    wait_for(lambda: full_chain() is not None, 60, "a chain with all six options and their registry terms")
    chain = full_chain()
    assert chain is not None
    assert chain["forward_source"] == "venue-underlying-price"
    assert chain["premium_currency"] == "coin"
    assert chain["spec"]["key"] == f"deribit:{OPTIONS[0]}"
    assert chain["ts_exchange"] > 0
    assert 0 < chain["ts_recv"] <= chain["ts_published"]
    assert 0 < chain["t_years"] < 0.25
    assert [s["strike"] for s in chain["strikes"]] == ["55000", "65000", "75000"]
    for row in chain["strikes"]:
        for side in (row["call"], row["put"]):
            # the simulator quotes Black-76 marks (rounded to 1e-8 coin): ours must agree closely
            assert abs(side["residual"]["mark_iv"]) < 2e-3, side
            assert abs(side["residual"]["delta"]) < 2e-3, side
            assert side["ours"]["vega"] > 0
            assert side["source"]["topic"].endswith("raw.deribit")


def test_the_registry_versions_a_spec_change_and_the_command_lists_it(market: SimSite) -> None:
    def specs() -> dict[str, list[dict[str, Any]]]:
        return by_key(market.topic("ref.instruments"))

    keys = {f"{v}:{s}" for v, symbols in FEEDS.items() for s in symbols}
    wait_for(lambda: set(specs()) >= keys, 60, "a spec of every instrument in ref.instruments")
    option = specs()[f"deribit:{OPTIONS[0]}"][0]
    assert (option["kind"], option["margin"], option["option_type"], option["strike"]) == ("option", "inverse",
                                                                                          "call", "55000")
    assert option["tick_size_steps"]
    assert option["ts_recv"] == option["valid_from"] <= option["ts_published"]
    assert specs()["binance-usdm:BTCUSDT"][0]["kind"] == "perpetual"
    before = specs()["okx:BTC-USDT-SWAP"]
    assert len(before) == 1
    market.sim.fault("okx", "BTC-USDT-SWAP", "spec-change")
    wait_for(lambda: len(specs()["okx:BTC-USDT-SWAP"]) == 2, 30, "a second version after the spec change")
    old, new = specs()["okx:BTC-USDT-SWAP"]
    assert float(new["tick_size"]) == 2 * float(old["tick_size"])
    assert new["valid_from"] > old["valid_from"]
    assert all(len(v) == 1 for k, v in specs().items() if k != "okx:BTC-USDT-SWAP")  # refreshes add no version
    listing = market.ns.faust("instruments", "--venue", "okx", "--all-versions", "--json")
    versions = [orjson.loads(line) for line in listing.stdout.splitlines()]
    assert [v["tick_size"] for v in versions] == [old["tick_size"], new["tick_size"]]
    at_first = market.ns.faust("instruments", "--venue", "okx", "--json", "--at", str(new["valid_from"] - 1))
    assert [orjson.loads(line)["tick_size"] for line in at_first.stdout.splitlines()] == [old["tick_size"]]
    table = market.ns.faust("instruments", "--kind", "option")
    assert OPTIONS[0] in table.stdout
    assert "BTC-PERPETUAL" not in table.stdout
    bad = market.ns.faust("instruments", "--kind", "swap", check=False)
    assert bad.returncode == 1
    assert "--kind 'swap'" in bad.stderr


def test_the_instrument_page_shows_ticker_fields_and_a_live_trades_tape(market: SimSite, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(market.worker.url + "/book/deribit/BTC-PERPETUAL")
    page.wait_for_function("document.querySelectorAll('#trades tbody tr').length >= 3", timeout=30_000)
    page.wait_for_function("document.querySelector('#ticker tbody').dataset.fields >= 5", timeout=30_000)
    assert "funding_rate" in page.inner_text("#ticker")
    first = page.get_attribute("#trades tbody tr:first-child", "data-id")
    page.wait_for_function(
        f"document.querySelector('#trades tbody tr:first-child').dataset.id !== {first!r}", timeout=30_000)
    shown = {page.get_attribute(f"#trades tbody tr:nth-child({i})", "data-id") for i in (1, 2, 3)}
    published = {r["trade_id"] for r in by_key(market.topic("trades"))["deribit:BTC-PERPETUAL"]}
    assert shown <= published
    page.screenshot(path=str(ARTIFACTS / "book-market.png"))
    page.close()


def test_the_options_page_shows_the_chain_and_the_smile_live(market: SimSite, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(market.worker.url + "/")
    page.wait_for_selector("#chains a[href='/options/deribit/BTC']", timeout=30_000)
    page.wait_for_selector("#chains a[href='/options/bybit-option/BTC']", timeout=30_000)
    page.click("#chains a[href='/options/deribit/BTC']")
    page.wait_for_function("document.querySelectorAll('#chain tbody tr').length === 3", timeout=30_000)
    page.evaluate("window.__sameDocument = true")
    assert page.inner_text("#expiry option") == chain_day(EXPIRY)
    page.wait_for_function("document.getElementById('smile').dataset.points >= 12", timeout=30_000)
    cells = [page.inner_text(f"#chain tbody tr[data-strike='65000'] td:nth-child({i})") for i in (4, 5)]
    assert abs(float(cells[0]) - float(cells[1])) < 0.3  # venue and our mark IV, in %
    forward = page.inner_text("#forward")
    page.wait_for_function(f"document.getElementById('forward').textContent !== {forward!r}", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True  # pushed, not reloaded
    page.screenshot(path=str(ARTIFACTS / "options.png"))
    page.close()


def chain_day(expiry: str) -> str:
    from app.market.symbols import parse_option

    spec = parse_option(f"BTC-{expiry}-1-C")
    assert spec is not None
    return time.strftime("%Y-%m-%d", time.gmtime(spec.expiry_ns // 10**9))


def test_a_state_change_is_a_new_version_that_stays(market: SimSite) -> None:
    key = f"deribit:{OPTIONS[1]}"

    def versions() -> list[dict[str, Any]]:
        return by_key(market.topic("ref.instruments")).get(key, [])

    wait_for(lambda: len(versions()) == 1, 60, f"the first version of {key}")
    market.sim.fault("deribit", OPTIONS[1], "state-change")  # instrument.state pushes it; REST lists agree
    wait_for(lambda: len(versions()) == 2, 30, "a second version after the state change")
    old, new = versions()
    assert (old["state"], new["state"]) == ("open", "closed")
    moment = ("state", "valid_from", "source", "ts_exchange", "ts_recv", "ts_published")
    assert {k: v for k, v in old.items() if k not in moment} == {k: v for k, v in new.items() if k not in moment}
    assert new["ts_exchange"] > 0  # the venue's time of its state push

    def lists() -> int:
        return int(http_json(market.sim.url + "/control/status")[1]["instrument_lists"])

    served = lists()
    wait_for(lambda: lists() >= served + 3, 30, "three more REST instrument lists served")
    assert len(versions()) == 2  # later REST lists say the same: no flapping


def test_a_refused_book_subscription_is_on_feed_status_and_the_book_says_why(market: SimSite) -> None:
    """The venue stops listing an instrument and the connection drops: its book subscription
    is refused on the new connection — one feed.status record, the book not synced with that
    reason on book.status — and subscribed again once the venue lists it again."""
    venue, symbol = "okx", "BTC-USDT-SWAP"
    key = f"{venue}:{symbol}"
    market.sim.fault(venue, symbol, "refuse", seconds=8.0)
    market.sim.fault(venue, symbol, "disconnect")

    def events(name: str) -> list[dict[str, Any]]:
        return [r for r in market.topic("feed.status") if r["key"] == key and r["feed"] == "book"
                and r["event"] == name]

    wait_for(lambda: events("refused"), 30, f"{key}'s refused book subscription on feed.status")
    refused = events("refused")[0]
    assert refused["channel"] == f"books:{symbol}"
    assert "60018" in refused["detail"]  # the venue's own refusal, verbatim
    assert refused["ts_recv"] <= refused["ts_published"]
    reasons = [s["reason"] for s in market.topic("book.status") if f"{s['venue']}:{s['instrument']}" == key]
    assert any(r.startswith("refused") for r in reasons), reasons
    wait_for(lambda: events("recovered") and market.books()[key]["state"] == "synced", 60,
             f"{key} subscribed again and synced once listed again")
