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
from app.kafka import ensure_topics, start_producer
from app.progress import Progress
from app.router import RawRecord, Router
from app.venues import VENUES
from app.venues.base import Kind


@dataclass
class Summary:
    frames: Counter[str] = field(default_factory=Counter)  # records read, per venue
    produced: Counter[str] = field(default_factory=Counter)  # raw records produced, per venue
    skipped: Counter[str] = field(default_factory=Counter)  # reason → count
    conn_events: int = 0
    unroutable: int = 0  # frames that could not be parsed for routing (produced venue-keyed)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = ["replay summary:"]
        for venue in sorted(self.frames):
            read_, produced = self.frames[venue], self.produced[venue]
            out.append(f"  {venue:<14} {read_:>10,} frames read, {produced:>10,} records produced")
        for reason, n in sorted(self.skipped.items()):
            out.append(f"  skipped: {n:,} ({reason})")
        if self.unroutable:
            out.append(f"  unparseable frames produced venue-keyed (the worker dead-letters them): {self.unroutable:,}")
        if self.conn_events:
            out.append(f"  connection events (gaps/resets) produced: {self.conn_events:,}")
        total = sum(self.produced.values())
        out.append(f"  {total:,} records in {self.seconds:.1f}s ({total / max(self.seconds, 1e-9):,.0f}/s)")
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
    producer = await start_producer(settings)
    summary = Summary()
    router = Router()
    progress = Progress(total, "frames", out)
    want = symbol.upper() if symbol else None
    first_ts: int | None = None
    t0 = time.monotonic()
    pending: list[asyncio.Future[object]] = []
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
                if raw.headers[1][1] == Kind.CONN.value.encode():
                    summary.conn_events += 1
                fut = await producer.send(
                    settings.topic(f"raw.{raw.venue}"), raw.value, key=raw.key.encode(), headers=raw.headers
                )
                pending.append(fut)
                summary.produced[raw.venue] += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            progress.update()
        await producer.flush()
        await asyncio.gather(*pending)
    except BookstreamError:
        raise
    except Exception as exc:
        done = sum(summary.produced.values())
        raise CaptureError(
            f"replay stopped after producing {done:,} records ({exc}); the raw topics hold a partial "
            "replay: books will resync or stay incomplete. Fix the cause and replay again (duplicates "
            "are recognised by sequence)."
        ) from exc
    finally:
        await producer.stop()
    summary.seconds = progress.finish()
    summary.unroutable = router.unparseable
    return summary


def _route(router: Router, rec: Record) -> list[RawRecord]:
    return router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol)
