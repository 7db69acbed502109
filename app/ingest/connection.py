"""One venue WebSocket connection carrying a group of instruments, kept alive forever.

Connect → send the protocol's opening frames → read frames verbatim (receive time taken
first) → hand each to ``emit``. Around it: the venue's keepalive, a watchdog that
reconnects a feed silent beyond ``Endpoint.silence_s``, Binance REST snapshots after
subscribing, and per-instrument resync. On any disconnect every instrument of the
connection gets a ``conn`` reset record (its book resyncs), then the loop reconnects with
capped, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection

from app.venues.base import Kind
from app.venues.session import Protocol

log = logging.getLogger(__name__)

#: emit(kind, frame, ts_ns, url, symbol, conn_id) — route, record and produce one frame.
Emit = Callable[[Kind, bytes, int, str, str, str], None]
#: reset(conn_id, reason) — the connection ended; its instruments must resync.
Reset = Callable[[str, str], None]

_numbers = itertools.count(1)
RETRIABLE = (OSError, TimeoutError, websockets.exceptions.WebSocketException, aiohttp.ClientError)


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Capped exponential backoff with full jitter (attempt 0 → up to `base` seconds)."""
    return random.uniform(0, min(cap, base * 2**attempt))


@dataclass
class ConnStats:
    connected: bool = False
    frames: int = 0
    reconnects: int = 0
    watchdog: int = 0
    last_frame: float = 0.0  # monotonic
    errors: list[str] = field(default_factory=list)


class FeedConnection:
    def __init__(self, venue: str, symbols: list[str], proto: Protocol, emit: Emit, reset: Reset,
                 http: aiohttp.ClientSession) -> None:
        self.venue, self.symbols, self.proto = venue, symbols, proto
        self.emit, self.reset, self.http = emit, reset, http
        self.conn_id = ""
        self.stats = ConnStats()
        self._ws: ClientConnection | None = None

    async def run(self) -> None:
        attempt = 0
        while True:
            self.conn_id = f"{self.venue}#{next(_numbers)}"
            started = time.monotonic()
            reason = "closed"
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except RETRIABLE as exc:
                reason = f"{type(exc).__name__}: {exc}"[:200]
                log.warning("%s %s: connection ended (%s)", self.venue, self.conn_id, reason)
            finally:
                self._ws = None
                self.stats.connected = False
                self.reset(self.conn_id, reason)
            attempt = 0 if time.monotonic() - started > 60 else attempt + 1
            self.stats.reconnects += 1
            delay = backoff(attempt)
            log.info("%s: reconnecting in %.1fs (attempt %d)", self.venue, delay, attempt)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        url = self.proto.url(self.symbols)
        async with websockets.connect(url, open_timeout=10, ping_interval=20, ping_timeout=20, close_timeout=2,
                                      max_size=None, max_queue=None) as ws:
            self._ws = ws
            self.stats.connected = True
            self.stats.last_frame = time.monotonic()
            log.info("%s %s: connected to %s (%d instruments)", self.venue, self.conn_id, url, len(self.symbols))
            for text in self.proto.on_open(self.symbols):
                await ws.send(text)
            tasks = [asyncio.create_task(self._keepalive(ws)), asyncio.create_task(self._watchdog(ws))]
            if self.proto.snapshot_url(self.symbols[0]):
                tasks.append(asyncio.create_task(self._snapshots(self.symbols)))
            try:
                async for frame in ws:
                    ts = time.time_ns()
                    self.stats.last_frame = time.monotonic()
                    self.stats.frames += 1
                    data = frame.encode() if isinstance(frame, str) else frame
                    text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                    for answer in self.proto.reply(text):
                        await ws.send(answer)
                    self.emit(Kind.WS, data, ts, url, "", self.conn_id)
            finally:
                for task in tasks:
                    task.cancel()

    async def _keepalive(self, ws: ClientConnection) -> None:
        message = self.proto.ping()
        if message is None:
            return
        while True:
            await asyncio.sleep(self.proto.endpoint.ping_s)
            await ws.send(message)

    async def _watchdog(self, ws: ClientConnection) -> None:
        limit = self.proto.endpoint.silence_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            silent = time.monotonic() - self.stats.last_frame
            if silent > limit:
                self.stats.watchdog += 1
                log.warning("%s %s: no frame for %.1fs (limit %.0fs), reconnecting", self.venue, self.conn_id,
                            silent, limit)
                await ws.close(code=4000, reason="silent feed")
                return

    async def _snapshots(self, symbols: list[str]) -> None:
        for symbol in symbols:
            await self.fetch_snapshot(symbol)

    async def fetch_snapshot(self, symbol: str) -> None:
        """GET the venue's REST depth snapshot and emit it into the same raw topic."""
        url = self.proto.snapshot_url(symbol)
        assert url is not None
        for attempt in range(5):
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    body = await resp.read()
                    ts = time.time_ns()
                    if resp.status == 200:
                        self.emit(Kind.REST, body, ts, url, symbol, f"{self.conn_id}/rest")
                        return
                    log.warning("%s %s: snapshot HTTP %d: %s", self.venue, symbol, resp.status, body[:200])
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("%s %s: snapshot request failed (%s)", self.venue, symbol, exc)
            await asyncio.sleep(backoff(attempt))
        log.error("%s %s: no snapshot after 5 attempts; the book stays unsynced until the next resync",
                  self.venue, symbol)

    async def resync(self, symbol: str) -> bool:
        """Fresh snapshot for one instrument without touching the others on this connection."""
        ws = self._ws
        if ws is None:
            return False  # reconnecting: every instrument resyncs on the new connection anyway
        if self.proto.snapshot_url(symbol):
            await self.fetch_snapshot(symbol)
        else:
            for text in self.proto.resubscribe(symbol):
                await ws.send(text)
        log.info("%s %s: resync of %s requested", self.venue, self.conn_id, symbol)
        return True
