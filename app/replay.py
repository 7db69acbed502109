"""Replay captures into the raw topics exactly as live ingestion would produce them."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from app.capture.formats import Record, read
from app.config import Settings
from app.errors import BookstreamError, CaptureError
from app.ingest.sink import RawSink
from app.kafka import ensure_topics
from app.progress import Progress
from app.router import Router
from app.venues import VENUES
from app.venues.base import Kind
from app.wire import RawFrame

#: Frames replay may have waiting for Kafka (it waits for room rather than dropping).
REPLAY_BUFFER_BYTES = 64 * 1024 * 1024
#: Nothing acknowledged this long during a replay ends it with an error. Four times the sink's
#: own stall limit (RawSink.stall_s, 30 s: it then abandons its producer and sends every record
#: not acknowledged again with a new one): at 30 s, as before, a replay gave up at the very moment
#: the sink recovered from an aiokafka producer wedged by a broker failover.
REPLAY_STALL_S = 120.0


@dataclass
class Summary:
    frames: Counter[str] = field(default_factory=Counter)  # records read, per venue
    produced: Counter[str] = field(default_factory=Counter)  # frames produced, per venue
    records: int = 0  # raw records (batches of frames) produced
    skipped: Counter[str] = field(default_factory=Counter)  # reason → count
    conn_events: int = 0
    unroutable: int = 0  # frames that could not be parsed for routing (produced venue-keyed)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = ["replay summary:"]
        for venue in sorted(self.frames):
            read_, produced = self.frames[venue], self.produced[venue]
            out.append(f"  {venue:<14} {read_:>10,} frames read, {produced:>10,} frames produced")
        for reason, n in sorted(self.skipped.items()):
            out.append(f"  skipped: {n:,} ({reason})")
        if self.unroutable:
            out.append(f"  unparseable frames produced venue-keyed (the worker dead-letters them): {self.unroutable:,}")
        if self.conn_events:
            out.append(f"  connection events (gaps/resets) produced: {self.conn_events:,}")
        total = sum(self.produced.values())
        out.append(f"  {total:,} frames in {self.records:,} records in {self.seconds:.1f}s "
                   f"({total / max(self.seconds, 1e-9):,.0f} frames/s)")
        return out


def _scan(paths: list[Path], fmt: str, venue: str | None, symbol: str | None) -> int:
    """Read every record once before producing anything: a truncated file fails here."""
    return sum(1 for _ in read(paths, fmt, venue, symbol))


async def replay(
    settings: Settings,
    paths: Iterable[Path],
    fmt: str,
    venue: str | None = None,
    symbol: str | None = None,
    speed: float | None = None,
    out: TextIO | None = None,
) -> Summary:
    """Produce the capture's frames to ``raw.<venue>``; ``speed`` None means as fast as possible."""
    out = out or sys.stderr
    plist = [Path(p) for p in paths]
    if speed is not None and speed <= 0:
        raise CaptureError("--speed must be greater than 0")
    total = await asyncio.get_running_loop().run_in_executor(None, _scan, plist, fmt, venue, symbol)
    if total == 0:
        raise CaptureError(f"no frames found in {', '.join(map(str, plist))} (format {fmt})")
    await ensure_topics(settings, [settings.topic(f"raw.{v}") for v in VENUES])
    sink = RawSink(settings, REPLAY_BUFFER_BYTES, role="replay")
    sink.start()
    summary = Summary()
    router = Router()
    progress = Progress(total, "frames", out)
    want = symbol.upper() if symbol else None
    first_ts: int | None = None
    t0 = time.monotonic()
    try:
        for rec in read(plist, fmt, venue, symbol):
            summary.frames[rec.venue] += 1
            if speed is not None:
                first_ts = rec.ts if first_ts is None else first_ts
                delay = (rec.ts - first_ts) / 1e9 / speed - (time.monotonic() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
            for raw in _route(router, rec):
                sym = raw.key.partition(":")[2]
                if want is not None and sym.upper() != want:
                    summary.skipped["other symbol" if sym else "no instrument (acks, heartbeats)"] += 1
                    continue
                if raw.kind is Kind.CONN:
                    summary.conn_events += 1
                await sink.put_wait(raw)
                summary.produced[raw.venue] += 1
            _check(sink, settings)
            progress.update()
        while not await sink.flush(within_s=1.0):
            _check(sink, settings)
        _check(sink, settings)
    except BookstreamError:
        raise
    except Exception as exc:
        raise CaptureError(
            f"replay stopped after producing {sink.sent:,} frames ({exc}); the raw topics hold a partial "
            "replay: books will resync or stay incomplete. Fix the cause and replay again (duplicates "
            "are recognised by sequence)."
        ) from exc
    finally:
        await sink.stop()
    summary.seconds = progress.finish()
    summary.records = sink.records
    summary.unroutable = router.unparseable
    return summary


def _check(sink: RawSink, settings: Settings) -> None:
    """Replay loses nothing: a frame that cannot be delivered, or Kafka gone for too long, ends it."""
    lost = sum(sink.failed.values()) + sum(sink.dropped.values())
    if lost:
        raise CaptureError(f"{lost:,} frames could not be delivered to Kafka at {settings.kafka_bootstrap}; "
                           "the raw topics hold a partial replay")
    if not sink.kafka_ok and time.monotonic() - sink.last_delivery > REPLAY_STALL_S:
        raise CaptureError(f"nothing delivered to Kafka at {settings.kafka_bootstrap} for {REPLAY_STALL_S:.0f}s; "
                           "the raw topics hold a partial replay. Check the broker (make kafka-status) and "
                           "replay again (duplicates are recognised by sequence).")


def _route(router: Router, rec: Record) -> list[RawFrame]:
    return router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol)
