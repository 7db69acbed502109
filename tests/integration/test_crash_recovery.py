"""SIGKILL the worker mid-replay: after restart the books equal an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.capture.formats import read, write_native
from tests.helpers import Namespace, Worker, book_levels, consume, reference, values, wait_for, workers
from tests.unit.test_captures import hft

pytestmark = pytest.mark.captures


def test_sigkill_mid_replay_then_finish_gives_the_uninterrupted_books(ns: Namespace, captures: Path,
                                                                       tmp_path: Path) -> None:
    paths = hft(captures, "usdm")
    records = list(read(paths, "hftbacktest"))
    half = len(records) // 2
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(write_native(r) for r in records[:half]))
    second.write_bytes(b"".join(write_native(r) for r in records[half:]))

    worker = Worker(ns, tmp_path / "data")
    with workers(worker):
        worker.start()
        ns.replay(str(first), "--format", "native")
        # kill while it is busy: some of the first half processed, not all of it
        wait_for(lambda: worker.get("/metrics/counters")[1].get("frames.binance-usdm", 0) > half // 3, 120,
                 "worker midway through the first half")
        worker.kill()
        ns.replay(str(second), "--format", "native")  # the rest arrives while it is down
        worker.start()
        key = "binance-usdm:BTCUSDT"
        ref = reference(paths, "hftbacktest")
        want_seq = ref.instruments[key].seq

        def finished() -> dict | None:  # type: ignore[type-arg]
            status, body = worker.get("/api/books/binance-usdm/BTCUSDT?depth=5000")
            return body if status == 200 and body["seq"] == want_seq else None

        body = wait_for(finished, 180, f"book at seq {want_seq}", every=1)
        bids, asks = book_levels(ref, key)
        assert (body["bids"], body["asks"]) == (bids[:5000], asks[:5000])
        assert body["state"] == "synced"
        assert "Traceback" not in worker.log_text()
        final_top = (body["bid_px"], body["bid_sz"], body["ask_px"], body["ask_sz"])

        def delivered() -> list[dict] | None:  # type: ignore[type-arg]
            """book.top up to the final top: the worker publishes it after applying the frame, and
            the SIGKILL ending this block would lose what is not delivered yet (at-least-once:
            a restart would publish it again, and there is none here)."""
            got = values(consume(ns.bootstrap, ns.topic("book.top"), idle_s=1))
            if not got:
                return None
            last = got[-1]
            return got if (last["bid_px"], last["bid_sz"], last["ask_px"], last["ask_sz"]) == final_top else None

        tops = wait_for(delivered, 60, "the final top delivered to book.top", every=1)

    # book.top never goes backwards, except at-least-once duplicates after the restart
    seen: set[int] = set()
    last = 0
    for t in tops:
        if t["seq"] < last:
            assert t["seq"] in seen, f"seq went back to {t['seq']} (after {last}) without being a duplicate"
        seen.add(t["seq"])
        last = max(last, t["seq"])
    assert last <= want_seq
    assert (tops[-1]["bid_px"], tops[-1]["bid_sz"], tops[-1]["ask_px"], tops[-1]["ask_sz"]) == final_top
