"""PROCESSING_GUARANTEE=exactly_once: SIGKILL the worker again and again mid-capture; a
``read_committed`` consumer sees every output record exactly once — every top change of the
reference once, no repeat, no gap — and every trade once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from scripts.harness import topic_partitions
from tests.helpers import Namespace, Worker, reference, wait_for, workers
from tests.unit.test_captures import hft

pytestmark = [pytest.mark.captures, pytest.mark.timeout(900)]

KEY = "binance-usdm:BTCUSDT"


async def _read_committed(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every committed record of ``topic`` up to its last stable offset, in partition order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # read_committed: the last stable offsets
        out: list[dict[str, Any]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:  # a list: any() takes no async gen
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(orjson.loads(m.value) for m in msgs)
        return out
    finally:
        await consumer.stop()


def read_committed(ns: Namespace, topic: str) -> list[dict[str, Any]]:
    return asyncio.run(_read_committed(ns.bootstrap, ns.topic(topic)))


def test_exactly_once_outputs_survive_sigkills_without_a_repeat_or_a_gap(ns: Namespace, captures: Path,
                                                                         tmp_path: Path) -> None:
    paths = hft(captures, "usdm")
    want_tops: list[tuple[int, str, str, str, str]] = []
    want_trades = 0

    def on(raw: Any, out: Any) -> None:
        nonlocal want_trades
        if out.key == KEY:
            want_tops.extend((seq, *top) for seq, _, top in out.fx.tops)
            want_trades += len(out.trades)

    ref = reference(paths, "hftbacktest", on_outcome=on)
    ns.replay(*map(str, paths), "--format", "hftbacktest")
    worker = Worker(ns, tmp_path / "data", PROCESSING_GUARANTEE="exactly_once", RISK_ENABLED="false",
                    OUTPUT_BUFFER_MB="4")
    rng = random.Random(7)
    with workers(worker):
        for _ in range(4):  # killed at random moments of the catch-up (93,954 frames), restarted each time
            worker.start()
            at = rng.randint(2_000, 15_000)  # frames applied by this process (each resumes at its last commit)
            wait_for(lambda at=at: (worker.get("/metrics/counters")[1] or {}).get("frames.binance-usdm", 0) >= at,
                     180, f"the worker {at:,} frames on")
            worker.kill()
        worker.start()
        want_seq = ref.instruments[KEY].seq
        wait_for(lambda: (r := worker.get("/api/books/binance-usdm/BTCUSDT"))[0] == 200 and r[1]["seq"] == want_seq,
                 300, f"the book at seq {want_seq}", every=1)
        tops = wait_for(lambda: (t := [x for x in read_committed(ns, "book.top") if x["instrument"] == "BTCUSDT"])
                        and (t[-1]["seq"], t[-1]["bid_px"]) == (want_tops[-1][0], want_tops[-1][1]) and t,
                        120, "the last top committed", every=1)
        trades = [t for t in read_committed(ns, "trades") if t["key"] == KEY]
        log = worker.log_text()
    got = [(t["seq"], t["bid_px"], t["bid_sz"], t["ask_px"], t["ask_sz"]) for t in tops]
    first = next((i for i, (a, b) in enumerate(zip(got, want_tops, strict=False)) if a != b), None)
    assert got == want_tops, f"{len(got)} tops committed, {len(want_tops)} in the reference; first differs at {first}"
    ids = [t["trade_id"] for t in trades]
    assert len(ids) == len(set(ids)) == want_trades  # every trade once
    assert worker.starts == 5
    assert "Traceback" not in log
