"""HTTP endpoints served by the worker's faust web server (WEB_HOST:WEB_PORT).

``/``                                     live dashboard (Server-Sent Events from ``/events``)
``/book/{venue}/{instrument}``            ladder, depth chart, spread/imbalance series
``/health``                               liveness: the process and its event loop answer
``/ready``                                readiness: broker reachable, recovery finished, N of M synced
``/api/books``                            every instrument this worker owns: top of book, state
``/api/books/{venue}/{instrument}?depth=N`` levels, aggregates, state, seq, timestamps (routed
                                          to the worker that owns the instrument)
``/api/venues``                           per-feed state and rates (when this worker ingests)
``/metrics``                              Prometheus text exposition
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from faust.exceptions import SameNode
from faust.web import Request, Response, View

from app import metrics
from app.book import mid_spread
from app.sync import SYNCED, Instrument
from app.venues import ADAPTERS, split_key
from app.worker import app, settings

log = logging.getLogger(__name__)
MAX_DEPTH = 5000


runtime = app.runtime


def partition_for(key: str) -> int:
    return runtime.partition_of(key)


def _recovered() -> bool:
    tables: Any = app.tables  # TableManager; its interface type omits `recovery`
    return bool(tables.recovery.completed.is_set()) and runtime.state.is_activated()


def _active_partitions() -> set[int]:
    return set(runtime.state.active)


def _instrument(key: str) -> Instrument | None:
    return runtime.find(key)


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


_broker_probe: dict[str, Any] = {"at": 0.0, "ok": False}


async def _broker_reachable() -> bool:
    """A metadata request to the bootstrap servers (with the configured auth), cached for 2 s."""
    if time.monotonic() - _broker_probe["at"] > 2.0:
        from aiokafka import AIOKafkaClient

        from app.kafka import client_auth

        client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=2000,
                                **client_auth(settings))
        try:
            await asyncio.wait_for(client.bootstrap(), timeout=3.0)
            _broker_probe["ok"] = True
        except Exception:  # noqa: BLE001 - any failure means "not reachable now"
            _broker_probe["ok"] = False
        finally:
            await client.close()
        _broker_probe["at"] = time.monotonic()
    return bool(_broker_probe["ok"])


@app.page("/ready")
async def ready(self: View, request: Request) -> Response:
    recovered = _recovered()
    broker = await _broker_reachable()
    body = {
        "ready": recovered and broker,
        "broker_reachable": broker,
        "recovery_completed": recovered,
        "books_synced": sum(1 for i in runtime.books() if i.status == SYNCED),
        "books_loaded": sum(1 for _ in runtime.books()),
    }
    return self.json(body, status=200 if body["ready"] else 503)


@app.page("/api/books")
async def books_index(self: View, request: Request) -> Response:
    rows = [summary(i) for i in runtime.books()]
    rows.sort(key=lambda r: r["key"])
    return self.json({"books": rows, "count": len(rows)})


@app.page("/api/books/{venue}/{instrument}")
async def book_detail(self: View, request: Request, venue: str, instrument: str) -> Response:
    if venue not in ADAPTERS:
        return self.json({"error": f"unknown venue {venue!r}", "venues": list(ADAPTERS)}, status=404)
    raw_depth = request.query.get("depth", str(settings.depth_levels))
    if not raw_depth.isdigit() or not 1 <= int(raw_depth) <= MAX_DEPTH:
        return self.json({"error": f"depth must be a whole number from 1 to {MAX_DEPTH}"}, status=400)
    key = f"{venue}:{instrument}"
    depth = int(raw_depth)
    partition = partition_for(key)
    if partition not in _active_partitions():
        try:  # the worker that owns the instrument's partition answers (Faust table routing)
            answer = await app.router.route_topic_req(_raw_topics[venue], key.encode(), self.web, request)
            if answer.status == 200 and isinstance(getattr(answer, "body", None), bytes):
                _last_routed[key] = (time.time(), answer.body)
            if answer.status != 503:
                return answer
            # the owner is still recovering it: a standby copy here, if any, beats no answer
            return _copy_or_503(self, key, partition, depth, "standby", "the owner is recovering it", answer)
        except SameNode:
            pass
        except Exception as exc:  # noqa: BLE001 - owner dead or unknown (rebalance): answer from a copy
            log.info("cannot route %s to its owner: %r", key, exc)
            return _copy_or_503(self, key, partition, depth, "standby",
                                     f"the worker owning {key} does not answer (rebalancing)")
    if not _recovered():
        return _copy_or_503(self, key, partition, depth, "recovering", "table recovery in progress")
    inst = _instrument(key)
    if inst is None:
        return self.json({"error": f"unknown instrument {venue}:{instrument}"}, status=404)
    return self.json(_detail(inst, depth, "owner"))


def _detail(inst: Instrument, depth: int, source: str) -> dict[str, Any]:
    """``source``: ``owner`` (the live book), or a local copy while the owner cannot answer:
    ``standby`` (this worker's standby replica) or ``recovering`` (being restored here)."""
    body = summary(inst)
    body.update(inst.book.aggregates(depth))
    body["synced"] = inst.status == SYNCED and source == "owner"
    body["source"] = source
    return body


def _copy_or_503(view: View, key: str, partition: int, depth: int, source: str, why: str,
                 otherwise: Response | None = None) -> Response:
    """While the owner cannot answer, the copy this worker holds (standby or recovering), marked
    as such and never ``synced``; 503 when there is none."""
    try:
        inst, where = runtime.state.local_copy(key, partition)
    except Exception as exc:  # noqa: BLE001 - the copy is being replaced: as if there were none
        log.debug("no local copy of %s: %r", key, exc)
        inst = None
    if inst is not None:
        return view.json(_detail(inst, depth, where or source))
    last = _last_routed.get(key)
    if last is not None:  # no copy here yet (standby lag): the owner's last answer, marked as such
        at, raw = last
        body = orjson.loads(raw)
        body.update(source="last-answer", synced=False, age_s=round(time.time() - at, 3))
        return view.json(body)
    return otherwise if otherwise is not None else view.json({"error": why}, status=503)


_raw_topics = {v: app.topic(name, key_type=bytes, key_serializer="raw")
               for v, name in runtime.topics.raw_by_venue.items()}

#: The owner's last 200 answer per instrument routed through this worker: served (marked
#: ``last-answer``, never ``synced``) only while neither the owner nor a local copy can answer.
_last_routed: dict[str, tuple[float, bytes]] = {}


@app.page("/metrics/counters")
async def counters(self: View, request: Request) -> Response:
    return self.json(dict(metrics.counters))


# -- dashboard, pages and push ------------------------------------------------------
STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "application/javascript"}
PUSH_INTERVAL_S = 0.5


def _file(view: View, name: str) -> Response:
    path = STATIC / name
    return view.bytes(path.read_bytes(), content_type=CONTENT_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


@app.page("/")
async def dashboard(self: View, request: Request) -> Response:
    return _file(self, "index.html")


@app.page("/book/{venue}/{instrument}")
async def book_page(self: View, request: Request, venue: str, instrument: str) -> Response:
    return _file(self, "book.html")


@app.page("/static/{name}")
async def static(self: View, request: Request, name: str) -> Response:
    if name not in {p.name for p in STATIC.iterdir()}:
        return self.json({"error": "not found"}, status=404)
    return _file(self, name)


def _with_derived(row: dict[str, Any]) -> dict[str, Any]:
    if row["bid_px"] is not None and row["ask_px"] is not None:
        row["mid"], _, row["spread_bps"] = mid_spread(row["bid_px"], row["ask_px"])
    else:
        row["mid"] = row["spread_bps"] = None
    return row


def venues_status() -> dict[str, Any]:
    from agents import ingest

    if ingest.service is None:
        return {}
    out: dict[str, Any] = ingest.service.status()["venues"]
    for name, v in out.items():
        prev = _rates.get(name)
        now = time.monotonic()
        v["frames_per_s"] = (v["frames"] - prev[1]) / max(now - prev[0], 1e-9) if prev else 0.0
        _rates[name] = (now, v["frames"])
    return out


_rates: dict[str, tuple[float, int]] = {}


async def _sse(request: Request, event: str, produce: Any) -> web.StreamResponse:
    """Server-Sent Events: ``produce()`` pushed every PUSH_INTERVAL_S until the client leaves."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    aio_request: Any = request  # faust's Request is aiohttp's with a narrower type
    await resp.prepare(aio_request)
    try:
        while True:
            payload = orjson.dumps(produce())
            await resp.write(b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n")
            await asyncio.sleep(PUSH_INTERVAL_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


@app.page("/events")
class Events(View):
    async def get(self, request: Request, **kwargs: Any) -> Any:
        def snapshot() -> dict[str, Any]:
            rows = [_with_derived(summary(i)) for i in runtime.books()]
            rows.sort(key=lambda r: r["key"])
            return {"books": rows, "venues": venues_status()}

        return await _sse(request, "books", snapshot)


@app.page("/events/book/{venue}/{instrument}")
class BookEvents(View):
    async def get(self, request: Request, **kwargs: Any) -> Any:
        key = f"{kwargs['venue']}:{kwargs['instrument']}"

        def snapshot() -> dict[str, Any]:
            inst = _instrument(key)
            if inst is None:
                return {"state": "unknown", "reason": "not on this worker", "seq": None, "bids": [], "asks": []}
            body = summary(inst)
            body.update(inst.book.aggregates(25))
            return body

        return await _sse(request, "book", snapshot)


@app.page("/api/venues")
async def api_venues(self: View, request: Request) -> Response:
    from agents import ingest

    sink = ingest.service.sink.stats() if ingest.service is not None and ingest.service.sink else None
    return self.json({"ingesting": ingest.service is not None, "venues": venues_status(), "sink": sink})


# -- metrics --------------------------------------------------------------------------
def _consumer_lag() -> dict[tuple[str, int], int]:
    consumer: Any = app.consumer
    out: dict[tuple[str, int], int] = {}
    try:
        read = consumer._read_offset  # last offset handed to a stream, per partition
        for tp in consumer.assignment():
            if tp.topic.startswith(settings.topic("raw.")):
                high = consumer.highwater(tp)
                position = read.get(tp)
                if high is not None:
                    out[(tp.topic, tp.partition)] = max(0, high - (position + 1 if position is not None else 0))
    except Exception:  # noqa: BLE001 - metrics must never break the endpoint
        log.debug("consumer lag unavailable", exc_info=True)
    return out


@app.page("/metrics")
async def prometheus(self: View, request: Request) -> Response:
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: Sequence[tuple[str, float]]) -> None:
        lines.append(f"# HELP bookstream_{name} {help_}")
        lines.append(f"# TYPE bookstream_{name} {kind}")
        lines.extend(f"bookstream_{name}{labels} {value}" for labels, value in samples)

    counters = metrics.counters
    frames = [(f'{{venue="{k.split(".", 1)[1]}"}}', v) for k, v in sorted(counters.items()) if k.startswith("frames.")]
    metric("frames_total", "counter", "Raw records consumed, per venue.", frames)
    totals: dict[str, int] = {}
    for inst in runtime.books():
        for k, v in inst.counters.items():
            totals[k] = totals.get(k, 0) + v
    metric("applied_deltas_total", "counter", "Book updates applied (books loaded on this worker).",
           [("", totals.get("applied", 0))])
    metric("applied_levels_total", "counter", "Level updates applied.", [("", totals.get("levels", 0))])
    metric("gaps_total", "counter", "Books that went stale (gap, checksum, crossed, reset).",
           [("", totals.get("gaps", 0))])
    metric("resync_requests_total", "counter", "control.resync requests sent.", [("", counters.get("resyncs", 0))])
    metric("dead_letters_total", "counter", "Records sent to raw.deadletter.", [("", counters.get("deadletters", 0))])
    metric("book_top_total", "counter", "book.top records published.", [("", counters.get("book_top", 0))])
    states: dict[str, int] = {}
    for inst in runtime.books():
        states[inst.status] = states.get(inst.status, 0) + 1
    metric("books", "gauge", "Books loaded on this worker, by state.",
           [(f'{{state="{s}"}}', n) for s, n in sorted(states.items())])
    lag = _consumer_lag()
    metric("consumer_lag", "gauge", "Records behind the end of each assigned partition.",
           [(f'{{topic="{t}",partition="{p}"}}', n) for (t, p), n in sorted(lag.items())])
    cum = 0
    samples: list[tuple[str, float]] = []
    for bound, n in zip([*metrics.LATENCY_BUCKETS, "+Inf"], metrics.latency_counts, strict=True):
        cum += n
        samples.append((f'_bucket{{le="{bound}"}}', cum))
    samples += [("_sum", round(metrics.latency_sum[0], 6)), ("_count", cum)]
    metric("top_latency_seconds", "histogram", "Receive time to book.top published.", samples)
    return self.text("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
