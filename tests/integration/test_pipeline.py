"""Real captures → `faust -A app replay` → Kafka → a real worker → book.* topics.

One worker for the module; every capture is replayed once, then each test checks one
property of what the worker published.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from app.capture.formats import read
from tests.helpers import Namespace, Worker, book_levels, consume, reference, values, wait_for, workers
from tests.unit.test_captures import CRYPTOFEED, hft, note_ticker

pytestmark = pytest.mark.captures

SUMMARY = re.compile(r"^\s+(\S+)\s+[\d,]+ frames read,\s+([\d,]+) frames produced", re.M)


class Pipeline:
    def __init__(self, ns: Namespace, worker: Worker, inputs: list[tuple[list[Path], str]]) -> None:
        self.ns, self.worker, self.inputs = ns, worker, inputs
        self._cache: dict[str, list[dict[str, Any]]] = {}
        self._references: list[Any] | None = None

    def topic(self, name: str) -> list[dict[str, Any]]:
        if name not in self._cache:
            self._cache[name] = values(consume(self.ns.bootstrap, self.ns.topic(name), idle_s=3))
        return self._cache[name]

    def references(self) -> Iterator[Any]:
        """The in-process reference (a Processor) of each input, computed once."""
        if self._references is None:
            self._references = [reference(paths, fmt) for paths, fmt in self.inputs]
        yield from self._references


@pytest.fixture(scope="module")
def pipeline(module_ns: Namespace, captures: Path) -> Iterator[Pipeline]:
    worker = Worker(module_ns, module_ns.tmp / "data", DEPTH_INTERVAL_MS="100")
    inputs = [([captures / "cryptofeed" / n], "cryptofeed") for n in CRYPTOFEED]
    inputs.append((hft(captures, "spot"), "hftbacktest"))
    with workers(worker):
        worker.start()
        produced: dict[str, int] = defaultdict(int)
        for paths, fmt in inputs:
            out = module_ns.replay(*map(str, paths), "--format", fmt).stderr
            for venue, n in SUMMARY.findall(out):
                produced[venue] += int(n.replace(",", ""))
        assert sum(produced.values()) > 100_000

        def consumed() -> bool:
            counters = worker.get("/metrics/counters")[1]
            return all(counters.get(f"frames.{v}", 0) >= n for v, n in produced.items())

        wait_for(consumed, 240, f"worker to consume {dict(produced)}", every=1)
        yield Pipeline(module_ns, worker, inputs)


def test_book_top_agrees_with_every_binance_book_ticker(pipeline: Pipeline) -> None:
    tops: dict[str, list[tuple[int, tuple[str, str, str, str]]]] = defaultdict(list)
    for t in pipeline.topic("book.top"):
        tops[f"{t['venue']}:{t['instrument']}"].append((t["seq"], (t["bid_px"], t["bid_sz"], t["ask_px"], t["ask_sz"])))
    for series in tops.values():
        series.sort(key=lambda x: x[0])
    checked = 0
    for paths, fmt in pipeline.inputs:
        if not any("BINANCE" in p.name or "hftbacktest" in str(p) for p in paths):
            continue
        tickers: dict[str, list[Any]] = defaultdict(list)
        depth_ids: dict[str, set[int]] = defaultdict(set)
        for rec in read(paths, fmt):
            key = rec.venue + ":" + (rec.symbol or _symbol(rec.frame))
            note_ticker(key, rec.frame, tickers, depth_ids)
        for key, ticks in tickers.items():
            seqs = [s for s, _ in tops[key]]
            for u, tick in ticks:
                i = bisect.bisect_right(seqs, u) - 1
                if u in depth_ids[key] and i >= 0:
                    assert tops[key][i][1] == tick, (key, u)
                    checked += 1
    assert checked > 1000


def _symbol(frame: bytes) -> str:
    m = re.search(rb'"s":"([^"]+)"', frame)
    return m.group(1).decode() if m else ""


def test_every_book_synced_with_zero_gaps_and_nothing_dead_lettered(pipeline: Pipeline) -> None:
    statuses = pipeline.topic("book.status")
    assert statuses
    assert [s for s in statuses if s["state"] != "synced"] == []  # no gap, checksum failure or crossed book
    assert pipeline.topic("raw.deadletter") == []
    synced = {f"{s['venue']}:{s['instrument']}" for s in statuses}
    assert {"okx:BTC-USDT", "bybit-linear:BTCUSDT", "coinbase:BTC-USD", "binance:BTCUSDT"} <= synced
    assert len(synced) >= 40


def test_final_books_equal_the_in_process_reference(pipeline: Pipeline) -> None:
    for ref in pipeline.references():
        for key in ref.instruments:
            venue, symbol = key.split(":", 1)
            status, body = pipeline.worker.get(f"/api/books/{venue}/{symbol}?depth=5000")
            assert status == 200, (key, body)
            bids, asks = book_levels(ref, key)
            assert (body["bids"], body["asks"]) == (bids[:5000], asks[:5000]), key
            assert body["seq"] == ref.instruments[key].seq


def test_book_depth_records_are_consistent(pipeline: Pipeline) -> None:
    depth = pipeline.topic("book.depth")
    # How many records there are depends on how fast the replay ran (one per instrument per
    # DEPTH_INTERVAL_MS of wall time, at most); what must hold whatever the speed: every book has
    # them, and the last one of each (the last change always goes out) is its final book.
    final = {f"{d['venue']}:{d['instrument']}": d for d in depth}
    books, venues = 0, set()
    for ref in pipeline.references():
        for key, inst in ref.instruments.items():
            if inst.status != "synced" or not len(inst.book):
                continue
            bids, asks = book_levels(ref, key)
            assert key in final, f"{key}: no book.depth record"
            assert (final[key]["bids"], final[key]["asks"]) == (bids[:20], asks[:20]), key
            books += 1
            venues.add(key.split(":")[0])
    assert books >= 30
    assert {"okx", "bybit-linear", "coinbase", "binance", "binance-usdm", "deribit"} <= venues
    last: dict[str, int] = {}
    for rec in depth:  # at most one record per instrument per DEPTH_INTERVAL_MS (100 ms)
        key = f"{rec['venue']}:{rec['instrument']}"
        if key in last:
            assert rec["ts_published"] - last[key] >= 95_000_000, key  # wall vs monotonic clock slack
        last[key] = rec["ts_published"]
    for rec in depth:
        assert len(rec["bids"]) <= 20
        assert len(rec["asks"]) <= 20
        if rec["bids"] and rec["asks"]:
            bid, ask = Decimal(rec["bids"][0][0]), Decimal(rec["asks"][0][0])
            assert bid < ask
            assert Decimal(rec["mid"]) == (bid + ask) / 2
            assert Decimal(rec["spread"]) == ask - bid
            assert set(rec["bands_bps"]) == {"10", "25", "50", "100"}
            assert re.fullmatch(r"-?\d+(\.\d+)?", rec["mid"])  # plain decimal, no exponent


def test_prices_and_sizes_are_the_venues_own_strings(pipeline: Pipeline) -> None:
    okx = [t for t in pipeline.topic("book.top") if t["venue"] == "okx"]
    assert okx
    raw = (pipeline.inputs[4][0][0]).read_text()
    for t in okx:
        assert f'["{t["bid_px"]}","{t["bid_sz"]}",' in raw  # a level exactly as the venue sent it
    deribit = [t for t in pipeline.topic("book.top") if t["venue"] == "deribit"]
    assert all(re.fullmatch(r"\d+(\.\d+)?", t["bid_px"] or "0") for t in deribit)


def test_trades_and_tickers_are_published_once_each_with_the_venues_values(pipeline: Pipeline) -> None:
    want_trades: Counter[tuple[str, ...]] = Counter()
    want_tickers: Counter[tuple[Any, ...]] = Counter()

    def note(_raw: Any, out: Any) -> None:
        want_trades.update((out.key, t.trade_id, t.price, t.size, t.unit, t.side) for t in out.trades)
        want_tickers.update((out.key, t.channel, t.fields.get("mark"), t.fields.get("bid"), t.fields.get("ask"))
                            for t in out.tickers)

    for paths, fmt in pipeline.inputs:
        reference(paths, fmt, on_outcome=note)
    trades = pipeline.topic("trades")
    assert len(want_trades) > 19_000
    fields = ("key", "trade_id", "price", "size", "unit", "side")
    assert Counter(tuple(r[f] for f in fields) for r in trades) == want_trades
    tickers = pipeline.topic("ticker")
    assert Counter((r["key"], r["channel"], r["mark"], r["bid"], r["ask"]) for r in tickers) == want_tickers
    for r in trades[:100] + tickers[:100]:
        assert r["source"]["topic"].endswith("raw." + r["key"].partition(":")[0])
        assert r["ts_recv"] > 0
        assert r["ts_published"] >= r["ts_recv"]
    assert pipeline.topic("feed.status") == []  # no trade gap in the captures


def test_options_chains_carry_our_iv_beside_deribits(pipeline: Pipeline) -> None:
    chains = {r["key"]: r for r in pipeline.topic("options.chain")}  # the latest of each chain
    assert {"deribit:ETH-30JUL21", "deribit:BTC-24SEP21"} <= set(chains)
    checked = 0
    for chain in chains.values():
        assert chain["forward_source"] == "venue-underlying-price"
        assert chain["premium_currency"] == "coin"
        for row in chain["strikes"]:
            for side in (row["call"], row["put"]):
                if side is None or side["delta"] is None:
                    continue
                delta = float(side["delta"])
                if 0.05 <= abs(delta) <= 0.95 and chain["t_years"] > 7 / 365:
                    assert abs(side["residual"]["mark_iv"]) <= 0.0002, (chain["key"], row["strike"])
                    assert abs(side["residual"]["delta"]) <= 1e-4, (chain["key"], row["strike"])
                    checked += 1
    assert checked >= 3


def test_a_second_replay_into_a_fresh_app_publishes_the_same_chains(pipeline: Pipeline, ns: Namespace,
                                                                    captures: Path) -> None:
    """options.chain is computed in exchange time: the DERIBIT capture replayed into a fresh app
    gives record for record the chains the module's app published (publication times and raw
    positions aside)."""

    def plain(value: Any) -> Any:
        """Without publication times and raw-record positions (this replay batches frames into
        raw records of its own, in topics of its own prefix)."""
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k not in ("ts_published", "source")}
        return [plain(v) for v in value] if isinstance(value, list) else value

    def chains(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [plain(r) for r in records if r["key"].startswith("deribit:")]

    first = chains(pipeline.topic("options.chain"))
    assert len(first) >= 3
    worker = Worker(ns, ns.tmp / "again")
    with workers(worker):
        worker.start()
        # paced this time (the capture's 30 s in about 8): wall time must not change the chains
        ns.replay(str(captures / "cryptofeed" / "DERIBIT.ws.1.0"), "--format", "cryptofeed", "--speed", "4")

        def again() -> list[dict[str, Any]] | None:
            got = chains(values(consume(ns.bootstrap, ns.topic("options.chain"), idle_s=3)))
            return got if len(got) >= len(first) else None

        second = wait_for(again, 60, "the chains of the second replay", every=2)
    key = lambda r: (r["key"], r["ts_exchange"])  # noqa: E731 - records of different chains interleave
    first, second = sorted(first, key=key), sorted(second, key=key)
    for a, b in zip(first, second, strict=False):  # the first difference, readably
        for field in a:
            assert a[field] == b.get(field), (a["key"], a["ts_exchange"], field, a[field], b.get(field))
    assert second == first
