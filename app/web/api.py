"""The JSON API: liveness, readiness, books (routed to their owner), venues.

``/health``                                liveness: the process and its event loop answer
``/ready``                                 readiness: broker reachable, partitions restored, N of M synced
``/api/books``                             every book this worker owns: top of book, state
``/api/books/{venue}/{instrument}?depth=N`` levels, aggregates, state, seq, timestamps; answered by
                                           the owner whichever worker is asked (routed by the group's
                                           assignment of the instrument's partition)
``/api/venues``                            per-feed state and rates (when this worker ingests)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaClient
from faust.web import Request, Response, View
from yarl import URL

from app import records
from app.config import Settings
from app.kafka import client_auth
from app.sync import SYNCED
from app.venues import ADAPTERS
from app.web.view import BookView, detail, summary
from app.wire import partition_for

log = logging.getLogger(__name__)
MAX_DEPTH = 5000


class BrokerProbe:
    """A metadata request to the bootstrap servers (with the configured auth), at most every 2 s."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.at = 0.0
        self.ok = False

    async def reachable(self) -> bool:
        if time.monotonic() - self.at > 2.0:
            client = AIOKafkaClient(bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=2000,
                                    **client_auth(self.settings))
            try:
                await asyncio.wait_for(client.bootstrap(), timeout=3.0)
                self.ok = True
            except Exception:  # noqa: BLE001 - any failure means "not reachable now"
                self.ok = False
            finally:
                await client.close()
            self.at = time.monotonic()
        return self.ok


class VenueRates:
    """Per-venue ingestion state with frames/s since the previous look."""

    def __init__(self, ingest: Any | None) -> None:
        self.ingest = ingest
        self.last: dict[str, tuple[float, int]] = {}

    def status(self) -> dict[str, Any]:
        if self.ingest is None:
            return {}
        out: dict[str, Any] = self.ingest.status()["venues"]
        now = time.monotonic()
        for name, v in out.items():
            prev = self.last.get(name)
            v["frames_per_s"] = (v["frames"] - prev[1]) / max(now - prev[0], 1e-9) if prev else 0.0
            self.last[name] = (now, v["frames"])
        return out


class LastAnswers:
    """The owner's last 200 answer per instrument routed through this worker: served (marked
    ``last-answer``, never ``synced``) only while neither the owner nor a local copy can answer."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[float, bytes]] = {}

    def keep(self, key: str, answer: Response) -> None:
        body = getattr(answer, "body", None)
        if answer.status == 200 and isinstance(body, bytes):
            self.answers[key] = (time.time(), body)

    def get(self, key: str) -> dict[str, Any] | None:
        last = self.answers.get(key)
        if last is None:
            return None
        at, raw = last
        body: dict[str, Any] = orjson.loads(raw)
        body.update(source="last-answer", synced=False, age_s=round(time.time() - at, 3))
        return body


class NoOwner(Exception):
    """The group's last assignment names no worker for the partition (a rebalance is under way)."""


def owner_url(app: Any, assignment_topic: str, partition: int) -> URL:
    """The web address of the worker the group assigned ``partition`` of the assignment topic —
    that is, the instrument's partition of every raw topic and of the table (``app.rawreader``).
    Faust's own topic routing cannot be used: it hashes a key over the topic it is given with the
    producer's partitioner, and the raw topics are not in the group's subscription any more."""
    for url, topics in app.router.external_topics_metadata().items():
        if partition in topics.get(assignment_topic, ()):
            return URL(url)
    raise NoOwner(f"no worker is assigned partition {partition}")


async def forward(app: Any, view: View, dest: URL, request: Request) -> Response | None:
    """``request`` answered by the worker at ``dest``; None when ``dest`` is this worker."""
    here = URL(str(app.conf.canonical_url))
    if (dest.host, dest.port) == (here.host, here.port):
        return None
    routed = request.url.with_host(dest.host or "").with_port(dest.port)
    async with app.http_client.request(method=request.method, headers=request.headers, url=routed) as resp:
        return view.text(await resp.text(), content_type=resp.content_type, status=resp.status)


def register(app: Any, books: BookView, settings: Settings, assignment_topic: str, rates: VenueRates) -> None:
    probe = BrokerProbe(settings)
    last_answers = LastAnswers()

    def recovered() -> bool:
        return bool(app.tables.recovery.completed.is_set()) and books.ready()

    @app.page("/health")
    async def health(self: View, request: Request) -> Response:
        return self.json({"status": "ok"})

    @app.page("/ready")
    async def ready(self: View, request: Request) -> Response:
        done = recovered()
        broker = await probe.reachable()
        owned = list(books.books())
        body = {"ready": done and broker, "broker_reachable": broker, "recovery_completed": done,
                "books_synced": sum(1 for i in owned if i.status == SYNCED), "books_loaded": len(owned)}
        return self.json(body, status=200 if body["ready"] else 503)

    @app.page("/reports/{day}")
    async def daily_report(self: View, request: Request, day: str) -> Response:
        import datetime as dt

        try:
            dt.date.fromisoformat(day)
        except ValueError:
            return self.json({"error": f"{day!r}: expected YYYY-MM-DD"}, status=400)
        page = settings.reports_dir / day / "report.html"
        if not page.is_file():
            return self.json({"error": f"no report for {day} in {settings.reports_dir} (faust -A app report {day}, "
                                       "or the worker's daily one at REPORT_DAILY_AT)"}, status=404)
        return self.html(page.read_text())

    @app.page("/api/books")
    async def books_index(self: View, request: Request) -> Response:
        rows = sorted((summary(i) for i in books.books()), key=lambda r: r["key"])
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
        at = request.query.get("at")
        if at is not None:  # a past book, rebuilt from the raw topics (any worker can: no routing)
            return await past_book(self, key, at, depth)
        if not books.owns(key):
            try:  # the worker the group assigned the instrument's partition answers
                dest = owner_url(app, assignment_topic, partition_for(key, settings.partitions))
                answer = await forward(app, self, dest, request)
            except Exception as exc:  # noqa: BLE001 - owner dead or unknown (rebalance): answer from a copy
                log.info("cannot route %s to its owner: %r", key, exc)
                return copy_or_503(self, key, depth, f"the worker owning {key} does not answer (rebalancing)")
            if answer is not None:
                last_answers.keep(key, answer)
                if answer.status != 503:
                    return answer
                # the owner is still restoring it: a standby copy here, if any, beats no answer
                return copy_or_503(self, key, depth, "the owner is recovering it", answer)
        if not recovered():
            return copy_or_503(self, key, depth, "table recovery in progress")
        if not books.owns(key):
            # Faust's assignment names this worker a moment before the partition is
            # restored and active here (app.state.manager): a copy, or 503 — never "unknown"
            return copy_or_503(self, key, depth, f"the partition of {key} is being taken over here")
        inst = books.find(key)
        if inst is None:
            if not books.caught_up():
                # Its partition is being rebuilt from the raw topics (taken over before its owner
                # committed it): the book may be in a record not applied yet — not "unknown"
                return copy_or_503(self, key, depth, f"the partition of {key} is catching up on its raw records")
            return self.json({"error": f"unknown instrument {venue}:{instrument}"}, status=404)
        return self.json(detail(inst, depth, "owner"))

    async def past_book(view: View, key: str, at: str, depth: int) -> Response:
        from app.errors import BookstreamError
        from app.history import book_at, parse_time
        from app.kafka import BrokerUnavailable

        try:
            when = parse_time(at, "at")
            past = await book_at(settings, key, when)
        except BrokerUnavailable as exc:
            return view.json({"error": str(exc)}, status=503)
        except BookstreamError as exc:
            return view.json({"error": str(exc)}, status=400 if "expected" in str(exc) else 404)
        return view.json(past.to_dict(depth))

    def copy_or_503(view: View, key: str, depth: int, why: str, otherwise: Response | None = None) -> Response:
        """While the owner cannot answer: this worker's copy (standby or recovering), or the
        owner's last answer, marked as such and never ``synced``; 503 when there is none."""
        try:
            inst, source = books.local_copy(key)
        except Exception as exc:  # noqa: BLE001 - the copy is being replaced: as if there were none
            log.debug("no local copy of %s: %r", key, exc)
            inst, source = None, ""
        if inst is not None:
            return view.json(detail(inst, depth, source))
        body = last_answers.get(key)
        if body is not None:
            return view.json(body)
        return otherwise if otherwise is not None else view.json({"error": why}, status=503)

    @app.page("/api/venues")
    async def api_venues(self: View, request: Request) -> Response:
        ingest = rates.ingest
        sink = ingest.sink.stats() if ingest is not None and ingest.sink else None
        return self.json({"ingesting": ingest is not None, "venues": rates.status(), "sink": sink})

    @app.page("/api/options/{venue}/{underlying}")
    async def api_options(self: View, request: Request, venue: str, underlying: str) -> Response:
        """The latest options.chain record of each expiry of ``underlying`` held by this worker."""
        chains = [orjson.Fragment(c) for c in books.chains(venue, underlying)]
        return self.bytes(orjson.dumps({"venue": venue, "underlying": underlying, "chains": chains}),
                          content_type="application/json")

    @app.page("/api/market/{venue}/{instrument}")
    async def api_market(self: View, request: Request, venue: str, instrument: str) -> Response:
        """The latest ticker fields and trades of an instrument held by this worker."""
        key = f"{venue}:{instrument}"
        body = {"key": key, "ticker": books.ticker(key), "trades": [orjson.Fragment(t) for t in books.trades(key)]}
        return self.bytes(orjson.dumps(body), content_type="application/json")

    @app.page("/api/schemas")
    async def api_schemas(self: View, request: Request) -> Response:
        """Every topic's record definition: its key, producer and schema address (app.records)."""
        return self.json({"version": records.SCHEMA_VERSION, "topics": [
            {"topic": t.topic, "key": t.key, "producer": t.producer, "compacted": t.compacted, "description": t.doc,
             "schema": f"/api/schemas/{t.topic.replace('<venue>', 'venue')}"} for t in records.TOPICS.values()]})

    @app.page("/api/schemas/{topic}")
    async def api_schema(self: View, request: Request, topic: str) -> Response:
        """The JSON Schema of ``topic``'s records (without TOPIC_PREFIX; any raw.<venue> is raw.venue)."""
        try:
            spec = records.spec_of("raw.<venue>" if topic == "raw.venue" else topic)
        except KeyError:
            return self.json({"error": f"no topic {topic!r}; GET /api/schemas lists them"}, status=404)
        return self.bytes(records.schema_text(spec.topic).encode(), content_type="application/schema+json")
