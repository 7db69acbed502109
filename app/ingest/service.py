"""Ingestion: venue connections → router → raw topics (and optionally a native capture).

Runs as ``faust -A app ingest``, as ``faust -A app record`` (capture files, optionally
produced too), and inside ``faust -A app worker`` when ``FEEDS`` is set. Reads
``control.resync`` and resyncs exactly the instrument named, on its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from app import metrics, records
from app.capture.formats import Record
from app.capture.recorder import Recorder
from app.config import Settings
from app.errors import BookstreamError, CaptureError, FrameError
from app.feeds import FeedConfig
from app.ingest.connection import FAILED, Emit, FeedConnection, Report, Reset
from app.ingest.limits import Pacing, acquire, retry_after
from app.ingest.sink import RawSink
from app.kafka import client_auth
from app.records import ResyncRequest
from app.retry import Backoff
from app.router import Router
from app.venues import INSTRUMENT_LISTS, protocol, split_key
from app.venues.base import Kind
from app.venues.session import Protocol, Sub
from app.wire import CONTROL_RESYNC, RawFrame, conn_event

log = logging.getLogger(__name__)

RESYNC_MIN_INTERVAL_S = 1.0
LIST_WEIGHT = 20  # REST weight of an instrument list (Binance spot exchangeInfo: 20; futures: 1)


def group_size(proto: Protocol, symbol: str) -> int:
    """Instruments per connection: ``Endpoint.max_per_conn``, fewer when the venue's streams per
    connection would not hold all their channels (Binance futures: 200 streams)."""
    endpoint = proto.endpoint
    size = max(1, endpoint.max_per_conn)
    streams = endpoint.limits.streams_per_conn
    if streams:
        size = min(size, max(1, streams // max(1, len(proto.subs([symbol])))))
    return size


#: The stages of a frame's time that ingestion runs (app.metrics.STAGES), in its status line.
INGEST_STAGES = ("ingest", "raw_linger", "raw_broker")


def _ms(bound: float) -> str:
    return "inf" if bound == float("inf") else f"{bound:g}"


class Ingest:
    def __init__(self, settings: Settings, feeds: FeedConfig, *, produce: bool = True,
                 record_dir: Path | None = None, rotate_mb: float = 256.0, buffer_mb: float = 64.0) -> None:
        if not feeds.feeds:
            raise BookstreamError("no feeds configured: set FEEDS (e.g. deribit:BTC-PERPETUAL;okx:BTC-USDT) "
                                  "or FEEDS_FILE")
        self.settings, self.feeds, self.produce = settings, feeds, produce
        self.router = Router()
        self.recorder = Recorder(record_dir, rotate_mb) if record_dir is not None else None
        self.sink = (RawSink(settings, int(buffer_mb * 1024 * 1024), on_lost=self._resync_later,
                             role="record" if record_dir is not None else "ingest") if produce else None)
        self.connections: list[FeedConnection] = []
        self.by_key: dict[str, FeedConnection] = {}
        self._last_resync: dict[str, float] = {}
        self._deferred: set[str] = set()
        self.pacing = Pacing()  # the venues' per-IP budgets, shared by all connections of this process
        self._tasks: list[asyncio.Task[Any]] = []
        self.failure: BaseException | None = None
        self._stage_marks: dict[str, list[int]] = {}  # the stages' bucket counts at the last status line

    # -- frames ---------------------------------------------------------------------
    def emit(self, venue: str, kind: Kind, frame: bytes, ts: int, url: str, symbol: str, conn: str) -> None:
        if self.recorder is not None:
            try:
                self.recorder.write(Record(ts, venue, conn, kind, frame, url, symbol))
            except CaptureError as exc:
                self._fail(exc)
        if self.sink is not None:
            for raw in self.router.route(venue, conn, kind, frame, ts, url, symbol):
                self.sink.put(raw)

    def _emitter(self, venue: str) -> Emit:
        def emit(kind: Kind, frame: bytes, ts: int, url: str, symbol: str, conn: str) -> None:
            self.emit(venue, kind, frame, ts, url, symbol, conn)
        return emit

    def _resetter(self, venue: str, books: bool) -> Reset:
        def reset(conn: str, reason: str) -> None:
            self.reset(venue, conn, reason, books)
        return reset

    def reset(self, venue: str, conn: str, reason: str, books: bool = True) -> None:
        frames = self.router.reset(venue, conn, time.time_ns(), reason)
        if books:  # a connection of market data only ending says nothing about the books
            self._conn_frames(venue, conn, frames)

    def _conn_frames(self, venue: str, conn: str, frames: list[RawFrame]) -> None:
        for raw in frames:
            if self.recorder is not None:
                with contextlib.suppress(CaptureError):
                    self.recorder.write(Record(raw.ts, venue, conn, Kind.CONN, raw.data,
                                               symbol=raw.key.partition(":")[2]))
            if self.sink is not None:
                self.sink.put(raw)

    def _reporter(self, venue: str) -> Report:
        def report(sub: Sub, event: str, detail: str, conn: str) -> None:
            """A subscription failed or recovered: a ``conn`` record for its instrument (the
            worker marks its book stale and publishes ``feed.status``), or for the venue."""
            feed = "book" if sub.book else sub.template or sub.id
            data = conn_event(event, detail, feed=feed, channel=sub.id)
            self._conn_frames(venue, conn, [RawFrame(f"{venue}:{sub.symbol}", time.time_ns(), Kind.CONN, conn, data)])
        return report

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            log.error("%s", exc)
            for task in self._tasks:
                task.cancel()

    # -- resync ---------------------------------------------------------------------
    def _resync_later(self, key: str) -> None:
        asyncio.get_running_loop().create_task(self.resync(key))

    async def resync(self, key: str) -> bool:
        """Resync one instrument; requests closer than RESYNC_MIN_INTERVAL_S are coalesced, not lost."""
        conn = self.by_key.get(key)
        if conn is None:
            return False
        wait = self._last_resync.get(key, -RESYNC_MIN_INTERVAL_S) + RESYNC_MIN_INTERVAL_S - time.monotonic()
        if wait > 0:
            if key in self._deferred:
                return False
            self._deferred.add(key)
            await asyncio.sleep(wait)
            self._deferred.discard(key)
        self._last_resync[key] = time.monotonic()
        return await conn.resync(split_key(key)[1])

    async def _resync_consumer(self) -> None:
        topic = self.settings.topic("control.resync")
        retry = Backoff(base=1.0, cap=30.0)
        while True:
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.settings.kafka_bootstrap,
                                        group_id=f"{self.settings.app_id}-ingest", auto_offset_reset="latest",
                                        enable_auto_commit=True, isolation_level="read_committed",
                                        **client_auth(self.settings))
            try:
                await consumer.start()
                retry.reset()
                async for msg in consumer:
                    try:
                        request: ResyncRequest = records.decode(CONTROL_RESYNC, msg.value or b"")
                    except msgspec.DecodeError as exc:
                        log.warning("control.resync %d@%d: not a resync request (%s)", msg.partition, msg.offset, exc)
                        continue
                    key = f"{request.venue}:{request.instrument}"
                    if key in self.by_key:
                        log.debug("%s: resync asked (%s)", key, request.reason)
                        asyncio.get_running_loop().create_task(self.resync(key))
            except (KafkaError, OSError) as exc:
                log.warning("control.resync consumer: %s; retrying", exc)
                await retry.sleep()
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()

    # -- run ------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled (or a recording error): connections, sink, resync consumer."""
        async with aiohttp.ClientSession() as http:
            for venue, symbols in self.feeds.feeds.items():
                creds = self.feeds.credentials.get(venue.split("-")[0])
                for endpoint in self.feeds.endpoints[venue].parts():  # one per WebSocket URL
                    size = group_size(protocol(venue, endpoint, creds), symbols[0])
                    for i in range(0, len(symbols), size):
                        group = symbols[i : i + size]
                        conn = FeedConnection(venue, group, protocol(venue, endpoint, creds), emit=self._emitter(venue),
                                              reset=self._resetter(venue, bool(endpoint.channel)), http=http,
                                              pacing=self.pacing, report=self._reporter(venue),
                                              compression=self.settings.ingest_ws_compression)
                        self.connections.append(conn)
                        if conn.books:
                            for symbol in group:
                                self.by_key[f"{venue}:{symbol}"] = conn
            log.info("ingesting %d instruments over %d connections (%s endpoints)", len(self.by_key),
                     len(self.connections), self.feeds.mode)
            if self.sink is not None:
                self.sink.start()
                self._tasks.append(asyncio.create_task(self._resync_consumer(), name="resync-consumer"))
            if self.recorder is not None:
                self._tasks.append(asyncio.create_task(self._flush_recorder(), name="recorder-flush"))
            self._tasks.append(asyncio.create_task(self._report(), name="ingest-report"))
            self._tasks += [asyncio.create_task(c.run(), name=c.venue) for c in self.connections]
            if self.settings.instruments_refresh_s > 0:
                self._tasks += [asyncio.create_task(self._instruments(venue, symbols, http), name=f"{venue}-specs")
                                for venue, symbols in self.feeds.feeds.items()
                                if venue in INSTRUMENT_LISTS and self.feeds.endpoints[venue].api_url]
            try:
                await asyncio.gather(*self._tasks)
            except asyncio.CancelledError:
                if self.failure is None:
                    raise
            finally:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                if self.sink is not None:
                    await self.sink.stop()
                    self.report()  # the final figures, after the last frames were flushed
                if self.recorder is not None:
                    self.recorder.close()
            if self.failure is not None:
                raise self.failure

    async def _instruments(self, venue: str, symbols: list[str], http: aiohttp.ClientSession) -> None:
        """The venue's REST instrument lists, at start and every INSTRUMENTS_REFRESH_S, into the raw
        topic verbatim (venue-keyed REST frames): the worker derives ``ref.instruments`` from them."""
        endpoint = self.feeds.endpoints[venue]
        lists = INSTRUMENT_LISTS[venue]
        urls = lists.urls(endpoint.api_url, symbols)
        limits = endpoint.limits
        budget = self.pacing.rest(limits.scope or venue, limits.rest_weight)  # the venue's REST weight, shared
        while True:
            for url in urls:
                await acquire([budget], LIST_WEIGHT, counter=f"limit_waits.{venue}")
                post = lists.post_body(url)  # Hyperliquid's lists are POSTs (``{"type":"meta"}``)
                request = (http.get(url, timeout=aiohttp.ClientTimeout(total=30)) if post is None else
                           http.post(url, data=post, headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=30)))
                try:
                    async with request as resp:
                        body = await resp.read()
                        if resp.status in (418, 429):
                            budget.throttled(resp.status, retry_after(resp.headers.get("Retry-After"), 60.0))
                        if resp.status != 200:
                            log.warning("%s instruments: HTTP %d from %s", venue, resp.status, url)
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("%s instruments: %s from %s (next try in %.0f s)", venue, type(exc).__name__, url,
                                self.settings.instruments_refresh_s)
                    continue
                self.emit(venue, Kind.REST, body, time.time_ns(), url, "", f"{venue}-instruments")
                self._learn(venue, body)
            await asyncio.sleep(self.settings.instruments_refresh_s)

    def _learn(self, venue: str, body: bytes) -> None:
        """Connections of a venue that refuses an unknown instrument by closing the whole
        connection (Hyperliquid) learn its instrument list (``FeedConnection.learn_instruments``)."""
        conns = [c for c in self.connections if c.venue == venue and hasattr(c.proto, "set_known")]
        if not conns:
            return
        try:
            specs = INSTRUMENT_LISTS[venue].parse(body)
        except FrameError:
            return  # the worker says what is wrong with it (the raw record is kept)
        symbols = [spec.key.partition(":")[2] for spec in specs or ()]
        for conn in conns:
            conn.learn_instruments(symbols)

    async def _report(self) -> None:
        """One status line every INGEST_STATUS_S: frames, rates, produced, dropped, buffer."""
        last, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(self.settings.ingest_status_s)
            last, last_t = self.report(last, last_t)

    def channel_gauges(self) -> dict[str, dict[str, int]]:
        """Channels by venue and state, also set as the ``feed_channels`` gauges of ``/metrics``."""
        counts: dict[str, dict[str, int]] = {}
        for conn in self.connections:
            venue = counts.setdefault(conn.venue, {})
            for state, n in conn.channel_states().items():
                venue[state] = venue.get(state, 0) + n
        for key in [k for k in metrics.gauges if k.startswith("feed_channels.")]:
            metrics.gauges[key] = 0
        for venue_id, states in counts.items():
            for state, n in states.items():
                metrics.gauges[f"feed_channels.{venue_id}.{state}"] = n
        return counts

    def report(self, last: int = 0, last_t: float = 0.0) -> tuple[int, float]:
        """Log the status line (frames and rate since ``last``/``last_t``); returns the new marks."""
        frames = sum(c.stats.frames for c in self.connections)
        now = time.monotonic()
        rate = (frames - last) / max(now - last_t, 1e-9)
        connected = sum(c.stats.connected for c in self.connections)
        channels: dict[str, int] = {}
        for states in self.channel_gauges().values():
            for state, n in states.items():
                channels[state] = channels.get(state, 0) + n
        line = (f"ingest: {frames:,} frames ({rate:,.0f}/s), {connected}/{len(self.connections)} connections up, "
                f"channels {', '.join(f'{n:,} {s}' for s, n in sorted(channels.items())) or 'none'}")
        if self.sink is not None:
            s = self.sink
            dropped, failed = sum(s.dropped.values()), sum(s.failed.values())
            line += (f", produced {s.sent:,} in {s.records:,} records, dropped {dropped:,}, failed {failed:,}, buffer "
                     f"{s.pending_bytes / 2**20:.1f}/{s.budget / 2**20:.1f} MiB, kafka "
                     f"{'ok' if s.kafka_ok else 'UNAVAILABLE'}")
        if self.recorder is not None:
            line += f", recorded {self.recorder.records:,} to {self.recorder.out}"
        log.info(line + self._stages())
        return frames, now

    def _stages(self) -> str:
        """Where this process's share of a frame's time went since the last line: per stage the
        buckets its median and 99th percentile fall under (the stages of /metrics, which this
        process does not serve)."""
        parts = []
        for stage in INGEST_STAGES:
            row = metrics.stage_counts[stage]
            last = self._stage_marks.get(stage, [0] * len(row))
            delta = [a - b for a, b in zip(row, last, strict=True)]
            self._stage_marks[stage] = list(row)
            if any(delta):
                p50, p99 = (metrics.stage_bound(delta, q) * 1000 for q in (0.5, 0.99))
                parts.append(f"{stage} {_ms(p50)}/{_ms(p99)}")
        return f"; p50/p99 under (ms): {', '.join(parts)}" if parts else ""

    async def _flush_recorder(self) -> None:
        assert self.recorder is not None
        while True:
            await asyncio.sleep(1.0)
            try:
                self.recorder.flush()
            except CaptureError as exc:
                self._fail(exc)
                return

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        venues: dict[str, dict[str, Any]] = {}
        gauges = self.channel_gauges()
        for conn in self.connections:
            v = venues.setdefault(conn.venue, {"connections": 0, "connected": 0, "frames": 0, "reconnects": 0,
                                               "watchdog": 0, "last_frame_age_s": None,
                                               "channels": gauges.get(conn.venue, {}), "failed": []})
            v["failed"] += [{"channel": cid, "state": c.state, "reason": c.reason, "connection": conn.conn_id}
                            for cid, c in conn.channels.items() if c.state in FAILED][:50 - len(v["failed"])]
            v["connections"] += 1
            v["connected"] += int(conn.stats.connected)
            v["frames"] += conn.stats.frames
            v["reconnects"] += conn.stats.reconnects
            v["watchdog"] += conn.stats.watchdog
            if conn.stats.last_frame:
                age = round(now - conn.stats.last_frame, 3)
                v["last_frame_age_s"] = age if v["last_frame_age_s"] is None else min(age, v["last_frame_age_s"])
        return {"venues": venues, "sink": self.sink.stats() if self.sink else None,
                "recorded": self.recorder.records if self.recorder else None}
