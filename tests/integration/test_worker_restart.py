"""A real worker keeps its books in RocksDB + changelog across SIGKILL."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from tests.helpers import Namespace, Worker, wait_for, workers


def deribit_frame(name: str, kind: str, change_id: int, prev: int | None,
                  bids: list[list[object]], asks: list[list[object]]) -> str:
    data: dict[str, object] = {"type": kind, "timestamp": 1700000000000 + change_id,
                               "instrument_name": name, "change_id": change_id, "bids": bids, "asks": asks}
    if prev is not None:
        data["prev_change_id"] = prev
    return orjson.dumps({"jsonrpc": "2.0", "method": "subscription",
                         "params": {"channel": f"book.{name}.100ms", "data": data}}).decode()


def write_capture(path: Path, names: list[str], changes: int) -> None:
    lines = []
    ts = 1_700_000_000_000_000_000
    for n, name in enumerate(names):
        base = 100 + n * 10
        bids = [["new", base - i, 10 + i] for i in range(1, 30)]
        asks = [["new", base + i, 10 + i] for i in range(1, 30)]
        lines.append({"ts": ts, "venue": "deribit", "conn": "c1", "kind": "ws",
                      "frame": deribit_frame(name, "snapshot", 1000, None, bids, asks)})
        for c in range(1, changes + 1):
            ts += 1000
            ask = ["delete", base + 2 + (c % 3), 0] if c % 7 == 0 else ["change", base + 2 + (c % 3), 5 + c]
            bid = ["change", base - 1 - (c % 5), 50 + c]
            lines.append({"ts": ts, "venue": "deribit", "conn": "c1", "kind": "ws",
                          "frame": deribit_frame(name, "change", 1000 + c, 1000 + c - 1, [bid], [ask])})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_books_survive_sigkill_and_restart(ns: Namespace, tmp_path: Path) -> None:
    names = ["BTC-PERPETUAL", "ETH-PERPETUAL", "SOL-PERPETUAL"]
    capture = tmp_path / "deribit.jsonl"
    write_capture(capture, names, changes=40)
    worker = Worker(ns, tmp_path / "data")
    with workers(worker):
        worker.start()
        ns.replay(str(capture), "--format", "native")

        def all_synced() -> dict[str, object] | None:
            books = {}
            for name in names:
                status, body = worker.get(f"/api/books/deribit/{name}?depth=100")
                if status != 200 or body["seq"] != 1040 or body["state"] != "synced":
                    return None
                books[name] = body
            return books

        before = wait_for(all_synced, 60, "all books synced at change_id 1040")
        worker.kill()  # SIGKILL: no clean shutdown, no final commit
        worker.start()
        after = wait_for(all_synced, 60, "books back after restart")
        for name in names:
            for field in ("bids", "asks", "seq", "state", "bid_px", "ask_px", "mid"):
                assert after[name][field] == before[name][field], (name, field)
            assert len(before[name]["bids"]) == 29
        assert "Traceback" not in worker.log_text()
        assert "recovery: tables ready after" in worker.log_text()
