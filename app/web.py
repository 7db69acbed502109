"""HTTP endpoints served by the worker's faust web server (WEB_HOST:WEB_PORT).

``/health``                               liveness: the process and its event loop answer
``/ready``                                readiness: table recovery finished, books synced count
``/api/books``                            every instrument this worker owns: top of book, state
``/api/books/{venue}/{instrument}?depth=N`` levels, aggregates, state, seq, timestamps
"""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import murmur2
from faust.web import Request, Response, View

from app import metrics
from app.core import app, settings
from app.sync import SYNCED, Instrument
from app.venues import ADAPTERS, split_key

MAX_DEPTH = 5000


def partition_for(key: str) -> int:
    """The partition Kafka's default partitioner gives ``key`` (so: its table partition)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % settings.partitions


def _recovered() -> bool:
    tables: Any = app.tables  # TableManager; its interface type omits `recovery`
    return bool(tables.recovery.completed.is_set())


def _instrument(key: str) -> Instrument | None:
    from agents.books import load_instrument, processor

    inst = processor.instruments.get(key)
    if inst is None and _recovered():
        partition = partition_for(key)
        changelog = app.tables["books"].changelog_topic.get_topic_name()
        active = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog}
        if partition in active:
            inst = load_instrument(key, partition)
            if inst is not None:
                processor.instruments[key] = inst
    return inst


def summary(inst: Instrument) -> dict[str, Any]:
    venue, symbol = split_key(inst.key)
    bpx, bsz, apx, asz = inst.book.top()
    return {
        "venue": venue, "instrument": symbol, "key": inst.key, "state": inst.status,
        "reason": inst.reason, "seq": inst.seq, "bid_px": bpx, "bid_sz": bsz, "ask_px": apx,
        "ask_sz": asz, "ts_exchange": inst.ts_exchange, "ts_recv": inst.ts_recv,
        "levels": {"bids": len(inst.book.bids), "asks": len(inst.book.asks)},
        "counters": dict(inst.counters),
    }


@app.page("/health")
async def health(self: View, request: Request) -> Response:
    return self.json({"status": "ok"})


@app.page("/ready")
async def ready(self: View, request: Request) -> Response:
    from agents.books import processor

    recovered = _recovered()
    body = {
        "ready": recovered,
        "recovery_completed": recovered,
        "books_synced": processor.synced(),
        "books_loaded": len(processor.instruments),
    }
    return self.json(body, status=200 if recovered else 503)


@app.page("/api/books")
async def books_index(self: View, request: Request) -> Response:
    from agents.books import processor

    rows = [summary(i) for i in processor.instruments.values()]
    rows.sort(key=lambda r: r["key"])
    return self.json({"books": rows, "count": len(rows)})


@app.page("/api/books/{venue}/{instrument}")
async def book_detail(self: View, request: Request, venue: str, instrument: str) -> Response:
    if venue not in ADAPTERS:
        return self.json({"error": f"unknown venue {venue!r}", "venues": list(ADAPTERS)}, status=404)
    raw_depth = request.query.get("depth", str(settings.depth_levels))
    if not raw_depth.isdigit() or not 1 <= int(raw_depth) <= MAX_DEPTH:
        return self.json({"error": f"depth must be a whole number from 1 to {MAX_DEPTH}"}, status=400)
    if not _recovered():
        return self.json({"error": "table recovery in progress"}, status=503)
    inst = _instrument(f"{venue}:{instrument}")
    if inst is None:
        return self.json({"error": f"unknown instrument {venue}:{instrument}"}, status=404)
    body = summary(inst)
    body.update(inst.book.aggregates(int(raw_depth)))
    body["synced"] = inst.status == SYNCED
    return self.json(body)


@app.page("/metrics/counters")
async def counters(self: View, request: Request) -> Response:
    return self.json(dict(metrics.counters))
