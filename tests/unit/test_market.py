"""Trades and tickers from the real captures: every trade and ticker frame, the venue's values
exactly; duplicates dropped; a missing trade reported as a gap, never silent."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from app.capture.formats import Record
from app.market.cursor import TradeCursor
from app.market.records import Trade
from app.market.symbols import parse_option, partition_key
from app.records import encode, source
from app.venues.base import Kind
from scripts.harness import CRYPTOFEED_FILES
from tests.helpers import reference

CAPTURES = dict.fromkeys(CRYPTOFEED_FILES, "cryptofeed")


def paths(captures: Path, name: str) -> list[Path]:
    if name in ("spot", "usdm"):
        return sorted((captures / "hftbacktest" / name).glob("*.gz"))
    return [captures / "cryptofeed" / name]


def expected(frame: bytes) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, dict[str, Any]]]]:
    """Trades (symbol, id, price, size) and tickers (symbol, fields) read from a frame
    independently of the adapters: the venues' field names, straight from their JSON."""
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return [], []
    if not isinstance(msg, dict):
        return [], []
    trades, tickers = [], []
    data = msg.get("data")
    stream = msg.get("stream", "")
    if "params" in msg and isinstance(msg["params"], dict):  # Deribit
        ch, d = msg["params"].get("channel", ""), msg["params"].get("data")
        if ch.startswith("trades."):
            trades += [(t["instrument_name"], str(t["trade_id"]), repr(t["price"]), repr(t["amount"])) for t in d]
        elif ch.startswith("ticker."):
            tickers.append((d["instrument_name"], {"mark": d["mark_price"], "bid": d.get("best_bid_price")}))
    elif isinstance(data, dict) and "@" in stream or (isinstance(msg, dict) and msg.get("e") == "trade"):
        e = data if isinstance(data, dict) else msg
        if e.get("e") == "trade":
            trades.append((e["s"], str(e["t"]), e["p"], e["q"]))
        elif e.get("e") == "markPriceUpdate":
            tickers.append((e["s"], {"mark": e["p"], "index": e["i"]}))
        elif stream.endswith("@bookTicker"):
            tickers.append((e["s"], {"bid": e["b"], "ask": e["a"]}))
    elif isinstance(msg.get("arg"), dict) and "event" not in msg:  # OKX
        ch = msg["arg"]["channel"]
        if ch == "trades":
            trades += [(t["instId"], t["tradeId"], t["px"], t["sz"]) for t in data]
        elif ch == "tickers":
            tickers += [(t["instId"], {"bid": t["bidPx"], "ask": t["askPx"], "last": t["last"]}) for t in data]
    elif isinstance(msg.get("topic"), str):  # Bybit
        if msg["topic"].startswith("publicTrade."):
            trades += [(t["s"], t["i"], t["p"], t["v"]) for t in data]
        elif msg["topic"].startswith("tickers."):
            tickers.append((data["symbol"], {k2: data[k] for k, k2 in (("markPrice", "mark"), ("bid1Price", "bid"))
                                             if k in data}))
    elif msg.get("channel") in ("market_trades", "ticker"):  # Coinbase
        for ev in msg["events"]:
            trades += [(t["product_id"], t["trade_id"], t["price"], t["size"]) for t in ev.get("trades", [])]
            tickers += [(t["product_id"], {"bid": t["best_bid"], "last": t["price"]}) for t in ev.get("tickers", [])]
    return trades, tickers


def _num(x: Any) -> str:
    """A venue's JSON number as plain decimal text (1e-06 → 0.000001)."""
    if isinstance(x, str):
        return x
    text = format(Decimal(repr(x)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@pytest.mark.captures
@pytest.mark.parametrize("name", [*CAPTURES, "spot", "usdm"])
def test_every_trade_and_ticker_frame_is_published_with_the_venues_values(captures: Path, name: str) -> None:
    got_trades: Counter[tuple[str, str, str, str]] = Counter()
    got_tickers: list[tuple[str, dict[str, Any]]] = []
    want_trades: Counter[tuple[str, str, str, str]] = Counter()
    want_tickers: list[tuple[str, dict[str, Any]]] = []
    seen: set[bytes] = set()

    def on(raw: Any, out: Any) -> None:
        symbol = raw.key.partition(":")[2]
        got_trades.update((symbol, t.trade_id, t.price, t.size) for t in out.trades)
        got_tickers.extend((symbol, t.fields) for t in out.tickers)
        if raw.data not in seen:  # a frame spanning products is routed once per product
            seen.add(raw.data)
            trades, tickers = expected(raw.data)
            want_trades.update((s, i, _num(p), _num(q)) for s, i, p, q in trades)
            want_tickers.extend(tickers)

    fmt = "hftbacktest" if name in ("spot", "usdm") else CAPTURES[name]
    reference(paths(captures, name), fmt, on_outcome=on)
    assert want_trades or want_tickers, "the capture holds trades or tickers"
    assert got_trades == want_trades  # each trade exactly once (no duplicates in these captures)
    assert len(got_tickers) == len(want_tickers)
    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for symbol, fields in got_tickers:
        by_symbol.setdefault(symbol, []).append(fields)
    cursor = Counter[str]()
    for symbol, fields in want_tickers:
        ours = by_symbol[symbol][cursor[symbol]]
        cursor[symbol] += 1
        for field, value in fields.items():
            assert ours[field] == (None if value is None else _num(value)), (symbol, field)


@pytest.mark.captures
def test_binance_trade_ids_have_no_gap_over_both_hftbacktest_days(captures: Path) -> None:
    for market in ("spot", "usdm"):
        proc = reference(paths(captures, market), "hftbacktest")
        (inst,) = proc.instruments.values()
        assert inst.trades is not None
        assert inst.trades.published > 19_000
        assert (inst.trades.gaps, inst.trades.missing, inst.trades.dups) == (0, 0, 0), market


@pytest.mark.captures
def test_a_deleted_trade_frame_is_reported_as_a_gap(captures: Path) -> None:
    dropped: list[int] = []

    def drop(_i: int, rec: Record) -> bool:
        if not dropped and b'"e":"trade"' in rec.frame and b'"t":' in rec.frame and _i > 5000:
            dropped.append(orjson.loads(rec.frame)["data"]["t"])
            return True
        return False

    gaps: list[tuple[int, int]] = []
    proc = reference(paths(captures, "spot"), "hftbacktest", drop=drop,
                     on_outcome=lambda raw, out: gaps.extend(out.trade_gaps))
    assert [(first, last) for first, last, _ in gaps] == [(dropped[0], dropped[0])]
    assert all(ts > 0 for _, _, ts in gaps)  # the exchange time of the trade that revealed it
    (inst,) = proc.instruments.values()
    assert (inst.trades.gaps, inst.trades.missing) == (1, 1)


def trade(order: int, tid: str = "", contiguous: bool = True) -> Trade:
    return Trade(tid or str(order), "1", "1", "base", "buy", 0, order, contiguous)


def test_duplicates_are_dropped_by_trade_id_and_order() -> None:
    c = TradeCursor()
    assert c.admit(trade(10)) == (True, None)
    assert c.admit(trade(10)) == (False, None)  # the same trade again
    assert c.admit(trade(9)) == (False, None)  # before the last one
    assert c.admit(trade(11)) == (True, None)
    assert c.admit(trade(14)) == (True, (12, 13))
    shared = TradeCursor()  # Bybit: several trades of one match share an order value
    assert shared.admit(trade(5, "a", False))[0]
    assert shared.admit(trade(5, "b", False))[0]
    assert not shared.admit(trade(5, "a", False))[0]
    assert shared.admit(trade(9, "c", False)) == (True, None)  # not contiguous: no gap
    back = TradeCursor.decode(c.encode())
    assert back.encode() == c.encode()
    assert back.admit(trade(14)) == (False, None)


def test_options_share_their_expirys_partition_key_with_its_future() -> None:
    assert partition_key("deribit:BTC-27MAR26-60000-C") == "deribit:BTC-27MAR26"
    assert partition_key("okx:BTC-USD-260327-60000-P") == "okx:BTC-USD-260327"
    assert partition_key("bybit-option:BTC-27MAR26-60000-C-USDT") == "bybit-option:BTC-27MAR26-USDT"
    assert partition_key("deribit:BTC-PERPETUAL") == "deribit:BTC-PERPETUAL"
    assert partition_key("coinbase:BTC-USD") == "coinbase:BTC-USD"
    spec = parse_option("XRP_USDC-30JAN26-2d5-P")
    assert spec is not None
    assert (spec.strike, spec.call, spec.underlying) == (2.5, False, "XRP_USDC")


def test_okx_opt_summary_is_keyed_per_chain_and_gives_each_option_its_ticker() -> None:
    import time as _time

    from app.market import black76
    from app.market.chain import ChainBuilder, build
    from app.market.symbols import monthly_expiries
    from app.processor import Processor
    from app.router import Router

    near, far = monthly_expiries(_time.time_ns(), 2)
    yymmdd = {e: _time.strftime("%y%m%d", _time.gmtime(parse_option(f"BTC-{e}-1-C").expiry_ns // 10**9))  # type: ignore[union-attr]
              for e in (near, far)}
    now_ms = _time.time_ns() // 10**6
    f = 65_000.0
    data, marks = [], {}
    for e in (near, far):
        for k in (60_000, 70_000):
            for cp in "CP":
                inst = f"BTC-USD-{yymmdd[e]}-{k}-{cp}"
                spec = parse_option(inst)
                assert spec is not None
                t = (spec.expiry_ns / 1e6 - now_ms) / 1000 / 86400 / 365
                marks[inst] = float(black76.price(f, k, t, 0.5, cp == "C")) / f  # coin premium
                g = black76.greeks(f, k, t, 0.5, cp == "C")
                data.append({"instType": "OPTION", "instId": inst, "uly": "BTC-USD", "delta": "0.1",
                             "deltaBS": repr(float(g["delta"])), "gammaBS": "0.0001", "vegaBS": "1", "thetaBS": "-1",
                             "gamma": "0.1", "vega": "0.001", "theta": "-0.001", "markVol": "0.5", "bidVol": "0.49",
                             "askVol": "0.51", "fwdPx": repr(f), "realVol": "0.4", "ts": str(now_ms)})
    summary = orjson.dumps({"arg": {"channel": "opt-summary", "instFamily": "BTC-USD"}, "data": data})
    router, proc, chains = Router(), Processor(), ChainBuilder(1000)
    keyed = router.route("okx", "c1", Kind.WS, summary, 1)
    assert sorted(r.key for r in keyed) == sorted(f"okx:BTC-USD-{yymmdd[e]}" for e in (near, far))
    frames = keyed + [r for inst, px in marks.items() for r in router.route("okx", "c1", Kind.WS, orjson.dumps(
        {"arg": {"channel": "mark-price", "instId": inst},
         "data": [{"instType": "OPTION", "instId": inst, "markPx": repr(px), "ts": str(now_ms)}]}), 2)]
    per_option: Counter[str] = Counter()
    for raw in frames:
        out = proc.handle(raw)
        assert out.dead is None
        for t in out.tickers:
            key = f"okx:{t.symbol}" if t.symbol else out.key
            per_option[key] += 1
            chains.offer(key, t.fields, t.ts_exchange, 1, source("raw.okx", 0, 0, 0))
    assert len(per_option) == 8
    assert proc.instruments == {}  # tickers make no book appear (the chain key is a future's name)
    assert set(per_option.values()) == {2}  # one opt-summary ticker and one mark-price each
    chain = msgspec.to_builtins(build(f"okx:BTC-USD-{yymmdd[near]}", chains.chains[f"okx:BTC-USD-{yymmdd[near]}"], 0))
    assert chain["premium_currency"] == "coin"
    assert chain["forward"] == f
    for row in chain["strikes"]:
        for side in (row["call"], row["put"]):
            assert side["mark_iv"] == "0.5"
            assert abs(side["residual"]["mark_iv"]) < 1e-6
            assert abs(side["residual"]["delta"]) < 1e-6


def test_chains_publish_in_exchange_time_so_a_replay_publishes_the_same_records() -> None:
    from app.market.chain import ChainBuilder

    def run(build_late: bool = False) -> list[tuple[str, dict[str, Any]]]:
        chains, out = ChainBuilder(1000), []
        for i, ms in enumerate([0, 300, 900, 1000, 1500, 2100, 2200, 5000]):  # exchange times
            symbol = f"BTC-25DEC26-{60000 + 5000 * (i % 2)}-C"
            fields = {"mark": f"0.0{5 + i}", "underlying_price": "65000", "mark_iv": "0.5"}
            chains.offer(f"deribit:{symbol}", fields, 1_766_000_000_000_000_000 + ms * 10**6, i, {"offset": i})
            if not build_late:
                out += [(key, orjson.loads(body)) for key, body, _ in chains.built(0)]
        out += [(key, orjson.loads(body)) for key, body, _ in chains.built(0)]
        return [(key, {k: v for k, v in record.items() if k != "ts_published"}) for key, record in out]

    first = run()
    # one record per 1 s bucket left behind: at 1000 ms (inputs 0–900), 2100 (1000–1500), 5000 (2100–2200)
    assert [r["ts_exchange"] % 10**12 // 10**6 for _, r in first] == [900, 1500, 2200]
    assert first == run()  # whatever the wall clock did
    # built long after they closed (the worker builds them between records): each the chain as
    # it stood when it closed, not as later tickers left it
    assert first == run(build_late=True)


def test_an_idle_chain_is_flushed_after_two_intervals_of_wall_time() -> None:
    from app.market.chain import ChainBuilder

    chains = ChainBuilder(1000)
    assert chains.offer("deribit:BTC-25DEC26-60000-C", {"mark": "0.05", "underlying_price": "65000"},
                        1_766_000_000_000_000_000, 1, source("raw.okx", 0, 0, 0)) == 0
    (chain,) = chains.chains.values()
    assert chains.due(chain.touched_ns + 1_999_000_000) == 0
    assert chains.due(chain.touched_ns + 2_000_000_000) == 1
    ((key, _, _),) = chains.built(0)
    assert key == "deribit:BTC-25DEC26"
    assert chains.due(chain.touched_ns + 9_000_000_000) == 0  # published once


def test_the_worker_builds_closed_chains_after_its_records_one_at_a_time_and_all_before_a_commit() -> None:
    """Closing is cheap and happens on the frame path; building (milliseconds a chain) waits for
    the raw reader to finish its batch (``publish_deferred``: one chain at a time, DEFERRED_TURNS
    turns of the loop before each, the turns a fetch answer needs to reach the reader), or for
    the next commit, which builds every closed chain first, into the transaction of the record
    that closed it."""
    import asyncio

    from app.config import Settings
    from app.market.records import Ticker
    from app.outputs import DEFERRED_TURNS, Publisher
    from app.processor import Outcome
    from app.venues import VENUES
    from app.wire import Topics
    from scripts.harness import MemorySink

    class Sink(MemorySink):
        def hold(self, size: int) -> None:
            pass

    class Transaction:  # a table partition's next changelog transaction (PartitionState.output)
        def __init__(self) -> None:
            self.outputs: list[str] = []

        def output(self, topic: str, partition: int, key: bytes, value: bytes) -> int:
            if topic == "options.chain":
                self.outputs.append(key.decode())
            return len(value)

    sink = Sink()
    publisher = Publisher(Settings(), Topics("", VENUES, "unit"), sink, lambda key: None)  # type: ignore[arg-type]
    t0 = 1_766_000_000_000_000_000
    part = Transaction()
    expiries = ("25DEC26", "29JAN27", "26FEB27")

    def tickers(second: int) -> None:
        for expiry in expiries:
            key = f"deribit:BTC-{expiry}-60000-C"
            fields = {"mark": f"0.0{5 + second}", "underlying_price": "65000"}
            publisher.market(0, Outcome(key, tickers=[Ticker("ticker", t0 + second * 10**9, fields)]), 1,
                             source("raw.deribit", 0, second, 0))

    def chains_sent() -> list[str]:
        return [key.decode() for topic, _, key, _ in sink.sent if topic == "options.chain"]

    async def main() -> list[list[str]]:
        seen = []
        tickers(0)
        tickers(1)  # the next second: all three chains close within one record
        assert len(publisher.chains.closed) == 3
        assert chains_sent() == []  # nothing built on the frame path
        assert publisher.deferred()
        task = asyncio.get_running_loop().create_task(publisher.publish_deferred(1.0))
        for _ in range(4 * (DEFERRED_TURNS + 1)):
            await asyncio.sleep(0)
            seen.append(chains_sent())
        await task
        assert not publisher.deferred()
        publisher.txn = part  # type: ignore[assignment]  # exactly_once: the outputs of the record being applied go in its transaction
        tickers(2)
        publisher.txn = None
        assert publisher.publish_chains() == 3  # what a commit does first (StateManager before_commit)
        return seen

    seen = asyncio.run(main())
    # one chain at a time, never two within DEFERRED_TURNS turns of the loop, not the three at once
    built = [len(s) for s in seen]
    assert (built[0], built[-1]) == (0, 3), built
    assert all(b - a in (0, 1) for a, b in zip(built, built[1:], strict=False)), built
    at = [built.index(n) for n in (1, 2, 3)]  # the turn each was built in
    assert min(b - a for a, b in zip(at, at[1:], strict=False)) >= DEFERRED_TURNS, built
    assert sorted(seen[-1]) == [f"deribit:BTC-{e}" for e in sorted(expiries)]
    # the three closed by the transactional record went to its partition's transaction, not the sink
    assert len(chains_sent()) == 3
    assert sorted(part.outputs) == [f"deribit:BTC-{e}" for e in sorted(expiries)]


def test_a_chain_keeps_the_entries_of_options_that_did_not_move_and_gives_the_records_a_full_build_gives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder keeps each option's entry from one build of its chain to the next and builds
    again only the options whose inputs changed: their own ticker, or the chain's forward for an
    option whose ticker gives no underlying price (the future's mark here). Every record is the
    one a build from scratch gives of the same closed chain."""
    import random

    from app.market import black76
    from app.market import chain as chain_module
    from app.market.chain import ChainBuilder, build

    solved = [0]  # options whose numbers a build computed
    ours = chain_module._ours

    def counting(specs: list[Any], *args: Any) -> Any:
        solved[0] += len(specs)
        return ours(specs, *args)

    monkeypatch.setattr(chain_module, "_ours", counting)

    rng = random.Random(7)
    t0 = 1_766_000_000_000_000_000  # exchange time (ns); the BTC-25DEC26 options expire ~110 days later
    strikes = [50_000 + 5_000 * i for i in range(6)]
    symbols = [f"BTC-25DEC26-{k}-{cp}" for k in strikes for cp in "CP"] + \
              [f"BTC-26DEC26-{k}-{cp}" for k in strikes[:2] for cp in "CP"]
    forward = 65_000.0
    chains = ChainBuilder(1000)
    records = options = from_scratch = 0
    for second in range(30):
        forward *= 1 + rng.uniform(-0.002, 0.002)
        for i in range(rng.randint(1, 4)):
            ts = t0 + second * 10**9 + i * 10**8
            if rng.random() < 0.5:  # the future: the forward of the options without an underlying price
                chains.offer("deribit:BTC-25DEC26", {"mark": f"{forward:.1f}"}, ts, ts, source("raw.deribit", 0, 0, 0))
            for symbol in rng.sample(symbols, rng.randint(0, 4)):
                spec = parse_option(symbol)
                assert spec is not None
                sigma = 0.5 + rng.uniform(-0.05, 0.05)
                t = (spec.expiry_ns - ts) / (365 * 86_400 * 1e9)
                coin = max(black76.price_one(forward, spec.strike, t, sigma, spec.call) / forward, 0.0005)
                fields = {"mark": f"{coin:.4f}", "bid": f"{coin * 0.97:.4f}", "ask": f"{coin * 1.03:.4f}",
                          "mark_iv": f"{sigma:.4f}", "delta": "0.5"}
                if spec.strike % 10_000:  # half the strikes' tickers give the underlying price
                    fields["underlying_price"] = f"{forward:.1f}"
                chains.offer(f"deribit:{symbol}", fields, ts, ts, source("raw.deribit", 0, second, i))
        closed = list(chains.closed)
        for (key, chain, _), (built_key, body, _) in zip(closed, chains.built(second), strict=True):
            kept = solved[0]
            assert built_key == key
            from_scratch -= solved[0]
            assert body == encode(build(key, chain, second))
            from_scratch += solved[0]
            records += 1
            options += len(chain.options)
            solved[0] = kept
    assert records >= 40
    assert from_scratch == options  # the check built every option of every record
    assert 0 < solved[0] < 0.8 * options  # the builder: only the options that moved, or whose forward did
    assert chains.entries.keys() == {"deribit:BTC-25DEC26", "deribit:BTC-26DEC26"}
