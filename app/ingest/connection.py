"""One venue WebSocket connection carrying a group of instruments, kept alive forever.

Connect (paced: the venue's connection opens per IP) → log in and wait for the venue's answer
(where credentials are configured) → subscribe, every request paced by the venue's limits
(:mod:`app.ingest.limits`) → read frames verbatim, each with its receive time: when the socket read
that brought it returned (:class:`StampedConnection`) → hand each to ``emit``.

Every subscription is followed, per channel and instrument, until the venue shows it works:

* *queued* (waiting for the venue's request budget) → *pending* once sent → *confirmed* by
  the venue's acknowledgement (``Protocol.ack``), or *refused*
  (the venue said no), or *unconfirmed* (no answer within ``Limits.ack_s``);
* *confirmed* → *live* on its first data frame (``Protocol.data_channels``: answers,
  heartbeats and pongs never count), or *silent* when a book channel (or one with a push
  cadence) sends nothing within ``Limits.first_s``;
* *live* → *silent* when a channel with a push cadence (``Limits.cadence``) misses it.

Each failure is one WARNING line, a counter, and a ``conn`` record for the instrument (its book
goes stale and ``feed.status`` says why); the channel is subscribed again after
``Limits.retry_s``, doubling to 10 minutes. Data flowing again reports *recovered*.

A venue that refuses a subscription by closing the whole connection (``Protocol.refusal_closes``:
Hyperliquid, for an unknown coin) names nothing: when such a venue closes the connection (its close
frame, not a dropped transport or this side's watchdog) while subscriptions are unanswered, the one
sent first among them is the one it refused (the venue answers in order). Its instrument is
quarantined: every channel of it *refused* (reported, one WARNING line), never subscribed again by
this connection; the others are subscribed again on the next connection.

Around it: the venue's keepalive, a watchdog that reconnects a connection that delivers no data
for ``Endpoint.silence_s``, Binance REST snapshots within the venue's REST weight budget, and
per-instrument resync. On any disconnect every instrument of the connection gets a ``conn``
reset record (its book resyncs), then the loop reconnects with capped, jittered exponential
backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import DATA_OPCODES, Frame

from app import metrics
from app.errors import FrameError
from app.ingest.limits import Pacing, Window, acquire, retry_after
from app.retry import backoff
from app.venues.base import Kind
from app.venues.session import Ack, Protocol, Request, Sub

log = logging.getLogger(__name__)

#: emit(kind, frame, ts_ns, url, symbol, conn_id) — route, record and produce one frame.
Emit = Callable[[Kind, bytes, int, str, str, str], None]
#: reset(conn_id, reason) — the connection ended; its instruments must resync.
Reset = Callable[[str, str], None]
#: report(sub, event, detail, conn_id) — a subscription failed or recovered.
Report = Callable[[Sub, str, str, str], None]

_numbers = itertools.count(1)
RETRIABLE = (OSError, TimeoutError, websockets.exceptions.WebSocketException, aiohttp.ClientError)
FAILED = ("refused", "unconfirmed", "silent")
MAX_RETRY_S = 600.0


@dataclass
class ConnStats:
    connected: bool = False
    frames: int = 0
    reconnects: int = 0
    watchdog: int = 0
    last_frame: float = 0.0  # monotonic: the last data frame
    errors: list[str] = field(default_factory=list)


@dataclass
class Channel:
    """One subscription's state (see the module)."""

    sub: Sub
    state: str = "queued"
    since: float = 0.0  # monotonic: when it entered this state
    last: float = 0.0  # monotonic: its last data frame
    reason: str = ""
    failures: int = 0
    next_try: float = 0.0
    cadence: float = 0.0  # its push interval allows no longer silence (0: it pushes on change)
    order: int = 0  # when its last subscribe request was sent, in this connection's sending order


class StampedConnection(ClientConnection):
    """A client connection that remembers when each message's bytes were read from the socket.

    Every message completed by one read (``data_received``: a venue's burst often arrives in one)
    is stamped with that read's time, taken before websockets parses it: a frame's receive time is
    when it reached this process, not when the reader came to it behind the rest of the burst
    (the wait in between is this process's, and is measured as ``ingest``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.arrivals: deque[int] = deque()  # receive time (ns) of each message not yet taken, in order
        self._read_ns = 0

    def data_received(self, data: bytes) -> None:
        self._read_ns = time.time_ns()
        super().data_received(data)

    def process_event(self, event: object) -> None:
        # a message is complete with its last frame (a fragmented one's final continuation)
        if isinstance(event, Frame) and event.fin and event.opcode in DATA_OPCODES:
            self.arrivals.append(self._read_ns)
        super().process_event(event)  # type: ignore[arg-type]

    def received_at(self) -> int:
        """Receive time (ns) of the message the reader just took."""
        return self.arrivals.popleft() if self.arrivals else time.time_ns()


class FeedConnection:
    def __init__(self, venue: str, symbols: list[str], proto: Protocol, emit: Emit, reset: Reset,
                 http: aiohttp.ClientSession, pacing: Pacing | None = None, report: Report | None = None,
                 compression: str | None = None) -> None:
        self.venue, self.symbols, self.proto = venue, symbols, proto
        self.compression = compression  # "deflate": permessage-deflate offered to the venue
        self.emit, self.reset, self.http = emit, reset, http
        self.pacing = pacing or Pacing()
        self.report = report or (lambda sub, event, detail, conn: None)
        self.conn_id = ""
        self.stats = ConnStats()
        self.channels: dict[str, Channel] = {}
        self.books = bool(proto.endpoint.channel)  # this connection carries books (not market data only)
        self._ws: ClientConnection | None = None
        self._out: asyncio.Queue[Request] = asyncio.Queue()
        self._inflight: dict[str, Request] = {}
        self._auth: asyncio.Future[Ack] | None = None
        self._opening: asyncio.Lock | None = None  # held from connecting until subscribed
        self._fetching: set[str] = set()  # REST snapshots queued or in flight
        #: instruments whose subscription made the venue close the connection → why (never subscribed again)
        self.quarantined: dict[str, str] = {}
        self._sent = itertools.count(1)
        self._closing = False  # this side closes the connection (the watchdog): the venue refused nothing
        limits = proto.endpoint.limits
        scope = limits.scope or venue
        self._conns = [self.pacing.shared(scope, "conns", limits.conns)]
        self._ip_msgs = self.pacing.shared(scope, "msgs", limits.ip_msgs)
        self._ip_ops = self.pacing.shared(scope, "ops", limits.ip_ops)
        self.rest = self.pacing.rest(scope, limits.rest_weight)

    async def run(self) -> None:
        attempt = 0
        while True:
            if self.symbols and all(s in self.quarantined for s in self.symbols):
                log.warning("%s: every instrument of this connection is quarantined (%s): not connecting again",
                            self.venue, ", ".join(self.symbols))
                return
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
        # Connections of one scope open one after another, each once the one before has sent its
        # subscriptions: with many (Coinbase: one per product) sharing one message budget, each
        # subscribes right after it opens instead of all opening first and waiting idle.
        self._opening = self.pacing.opening(self.proto.endpoint.limits.scope or self.venue)
        await self._opening.acquire()
        try:
            await self._connected(url)
        finally:
            self._opened()

    def _opened(self) -> None:
        """This connection has sent its subscriptions (or ended): the next of its scope may open."""
        lock, self._opening = self._opening, None
        if lock is not None:
            lock.release()

    async def _connected(self, url: str) -> None:
        await acquire(self._conns, counter=f"limit_waits.{self.venue}")
        async with websockets.connect(url, open_timeout=10, ping_interval=20, ping_timeout=20, close_timeout=2,
                                      max_size=None, max_queue=None, compression=self.compression,
                                      create_connection=StampedConnection) as ws:
            assert isinstance(ws, StampedConnection)
            self._ws = ws
            self._closing = False
            self.stats.connected = True
            self.stats.last_frame = time.monotonic()
            self._out = asyncio.Queue()
            self._inflight.clear()
            self.channels.clear()
            log.info("%s %s: connected to %s (%d instruments)", self.venue, self.conn_id, url, len(self.symbols))
            tasks = [asyncio.create_task(self._sender(ws)), asyncio.create_task(self._open()),
                     asyncio.create_task(self._keepalive()), asyncio.create_task(self._watch(ws))]
            try:
                async for frame in ws:
                    ts = ws.received_at()
                    self.stats.frames += 1
                    data = frame.encode() if isinstance(frame, str) else frame
                    self._read(frame, data)
                    self.emit(Kind.WS, data, ts, url, "", self.conn_id)
            finally:
                for task in tasks:
                    task.cancel()
                if self._auth is not None and not self._auth.done():
                    self._auth.cancel()
                if self.proto.refusal_closes and not self._closing and ws.protocol.close_rcvd is not None \
                        and ws.protocol.close_rcvd_then_sent:
                    self._blame_close()

    # -- sending ----------------------------------------------------------------------
    def send(self, request: Request | str) -> None:
        """Queue a frame: the sender paces it within the venue's limits."""
        self._out.put_nowait(request if isinstance(request, Request) else Request(request))

    async def _sender(self, ws: ClientConnection) -> None:
        limits = self.proto.endpoint.limits
        msgs, ops = Window(limits.msgs), Window(limits.ops)  # this connection's own budgets
        while True:
            request = await self._out.get()
            windows = [msgs, self._ip_msgs]
            if request.op in ("subscribe", "unsubscribe", "auth"):
                windows.append(ops)
                if request.op != "auth":
                    windows.append(self._ip_ops)
            await acquire(windows, counter=f"limit_waits.{self.venue}")
            now = time.monotonic()
            if request.op == "subscribe":
                # nothing is due before the venue had the request: the data watchdog counts from it
                self.stats.last_frame = max(self.stats.last_frame, now)
                order = next(self._sent)
                for cid in request.channels:
                    channel = self.channels.get(cid)
                    if channel is not None and channel.state != "live":
                        channel.state, channel.since = "pending", now  # the ack timeout runs from its sending
                        channel.order = order
            if request.id and request.op != "other":
                self._inflight[request.id] = request
            try:
                await ws.send(request.text)
            except websockets.exceptions.ConnectionClosed:
                return  # the session ends: the next one subscribes everything again
            finally:
                self._out.task_done()

    async def _open(self) -> None:
        """Log in (and wait for the answer), then subscribe everything."""
        proto = self.proto
        login = proto.auth()
        if login is not None:
            self._auth = asyncio.get_running_loop().create_future()
            self.send(login)
            try:
                answer = await asyncio.wait_for(self._auth, proto.endpoint.limits.ack_s)
                ok, reason = bool(answer.auth) and answer.failed is None, answer.failed or "refused"
            except TimeoutError:
                ok, reason = False, f"no answer within {proto.endpoint.limits.ack_s:.0f}s"
            if ok:
                log.info("%s %s: logged in", self.venue, self.conn_id)
            else:
                log.warning("%s %s: login refused (%s); subscribing to the public channels instead", self.venue,
                            self.conn_id, reason)
                metrics.count(f"feed_auth_failed.{self.venue}")
                proto.auth_failed(reason)
        for request in proto.setup():
            self.send(request)
        now = time.monotonic()
        for sub in proto.subs(self.symbols):
            cadence = proto.endpoint.cadence_of(sub.template)
            channel = self.channels[sub.id] = Channel(sub, since=now, cadence=cadence)
            if sub.symbol in self.quarantined:  # shown as refused, never subscribed again
                channel.state, channel.reason, channel.failures = "refused", self.quarantined[sub.symbol], 1
                channel.next_try = math.inf
        for request in proto.subscribe([s for s in self.symbols if s not in self.quarantined]):
            self.send(request)
        await self._out.join()
        self._opened()
        if self.books and proto.snapshot_url(self.symbols[0]):
            queued = len(self.symbols)  # the snapshots to come: their depth is chosen against them all
            self.rest.waiting += queued
            try:
                for symbol in self.symbols:  # one after another, within the REST budget
                    self.rest.waiting -= 1
                    queued -= 1
                    await self.fetch_snapshot(symbol)
            finally:
                self.rest.waiting -= queued

    async def _keepalive(self) -> None:
        message = self.proto.ping()
        if message is None:
            return
        while True:
            await asyncio.sleep(self.proto.endpoint.ping_s)
            self.send(message)

    # -- reading ----------------------------------------------------------------------
    def _read(self, frame: str | bytes, data: bytes) -> None:
        proto = self.proto
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        for answer in proto.reply(text):
            self.send(answer)
        ids = proto.data_channels(data)
        if ids:
            now = time.monotonic()
            self.stats.last_frame = now
            for cid in ids:
                channel = self.channels.get(cid)
                if channel is not None:
                    channel.last = now
                    if channel.state != "live":
                        self._live(channel, now)
            return
        try:
            ack = proto.ack(data)
        except (FrameError, ValueError, TypeError, AttributeError) as exc:  # an answer we cannot read
            log.debug("%s %s: unreadable answer %r (%s)", self.venue, self.conn_id, data[:200], exc)
            return
        if ack is not None:
            self._answer(ack)

    def _live(self, channel: Channel, now: float) -> None:
        if channel.failures:
            log.warning("%s %s: subscription %s recovered (data flows again)", self.venue, self.conn_id, channel.sub.id)
            self._report(channel, "recovered", f"data flows again after {channel.reason or channel.state}")
        channel.state, channel.since, channel.failures, channel.reason = "live", now, 0, ""

    def _answer(self, ack: Ack) -> None:
        request = self._inflight.get(ack.id) if ack.id else None
        login = request is not None and request.op == "auth" or request is None and ack.auth is False
        if login and self._auth is not None and not self._auth.done():
            self._inflight.pop(ack.id, None)
            self._auth.set_result(ack)
            return
        if request is not None and request.op == "unsubscribe":
            del self._inflight[ack.id]
            return
        now = time.monotonic()
        if ack.failed is None:
            ok = ack.ok or (request.channels if request is not None and ack.complete else ())
            for cid in ok:
                self._confirm(cid, now)
            if request is not None and ack.complete:
                for cid in request.channels:
                    if cid not in ok:  # answered, but the venue left it out: not subscribed
                        self._fail(cid, "refused", "not in the venue's list of channels subscribed", now)
            self._answered(request, ack.complete)
            return
        named = set(ack.refused) | {cid for cid, c in self.channels.items()
                                    if c.sub.symbol and c.sub.symbol in ack.symbols and c.state == "pending"}
        if not named and request is not None:
            named = set(request.channels)
        if not named:
            log.warning("%s %s: the venue refused a request (%s)", self.venue, self.conn_id, ack.failed)
            return
        for cid in named:
            self._fail(cid, "refused", ack.failed, now)
        if request is not None and ack.complete:
            rest = [self.channels[c].sub for c in request.channels if c not in named and c in self.channels]
            for again in self.proto.requests("subscribe", rest):  # the others of a request refused whole
                self.send(again)
        self._answered(request, ack.complete)

    def _answered(self, request: Request | None, complete: bool) -> None:
        """Forget a request answered whole, or whose channels are all answered one by one (OKX)."""
        if request is None:
            return
        if complete or all(c not in self.channels or self.channels[c].state != "pending" for c in request.channels):
            self._inflight.pop(request.id, None)

    def _confirm(self, cid: str, now: float) -> None:
        channel = self.channels.get(cid)
        if channel is not None and channel.state in ("pending", "refused", "unconfirmed"):
            channel.state, channel.since = "confirmed", now
            metrics.count(f"feed_subscriptions.{self.venue}.confirmed")

    def _fail(self, cid: str, event: str, reason: str, now: float) -> None:
        channel = self.channels.get(cid)
        if channel is None or channel.state == event:
            return
        channel.failures += 1
        channel.state, channel.since, channel.reason = event, now, reason
        retry = min(MAX_RETRY_S, self.proto.endpoint.limits.retry_s * 2 ** (channel.failures - 1))
        channel.next_try = now + retry
        log.warning("%s %s: subscription %s %s (%s); subscribing again in %.0f s", self.venue, self.conn_id, cid,
                    event, reason, retry)
        self._report(channel, event, reason)

    def _blame_close(self) -> None:
        """The venue closed the connection and closes it to refuse a subscription: the first one
        sent and still unanswered is the one it refused (see the module)."""
        pending = [c for c in self.channels.values() if c.state == "pending" and c.sub.symbol]
        if pending:
            culprit = min(pending, key=lambda c: c.order)
            known = getattr(self.proto, "known", None)
            if known is not None and culprit.sub.symbol in known:  # listed: the close was for another reason
                log.warning("%s %s: the venue closed the connection with %s unanswered; %s is on the venue's "
                            "instrument list, so it is not blamed (subscribed again)", self.venue, self.conn_id,
                            culprit.sub.id, culprit.sub.symbol)
                return
            self.quarantine(culprit.sub.symbol, f"the venue closed the connection on subscription {culprit.sub.id} "
                                                "(unanswered): an instrument it does not know")

    def learn_instruments(self, symbols: list[str]) -> None:
        """The venue's instrument list (ingestion fetches it at start and every
        INSTRUMENTS_REFRESH_S), for a venue that closes the whole connection on a subscription of
        an instrument it does not know (``set_known``: Hyperliquid): this connection's instruments
        not on it are quarantined before they are subscribed — refused and reported, the others
        untouched — and a close is never blamed on one that is on it."""
        set_known = getattr(self.proto, "set_known", None)
        if set_known is None or not symbols:
            return
        set_known(symbols)
        listed = set(symbols)
        for symbol in self.symbols:
            if symbol not in listed:
                self.quarantine(symbol, f"not among the venue's {len(listed)} instruments (its instrument list)")

    def quarantine(self, symbol: str, reason: str) -> None:
        """Never subscribe ``symbol`` again on this connection: each of its channels is refused
        (reported: its book stale or unsynced, ``feed.status``), one WARNING line."""
        if symbol in self.quarantined:
            return
        self.quarantined[symbol] = reason
        others = sum(1 for s in self.symbols if s not in self.quarantined)
        log.warning("%s %s: %s; %s is quarantined: never subscribed again on this connection (%d other instruments "
                    "subscribed again)", self.venue, self.conn_id, reason, symbol, others)
        now = time.monotonic()
        for channel in [c for c in self.channels.values() if c.sub.symbol == symbol]:
            channel.failures += 1
            channel.state, channel.since, channel.reason, channel.next_try = "refused", now, reason, math.inf
            self._report(channel, "refused", reason)

    def _report(self, channel: Channel, event: str, detail: str) -> None:
        metrics.count(f"feed_subscriptions.{self.venue}.{event}")
        self.report(channel.sub, event, detail, self.conn_id)

    # -- watching -----------------------------------------------------------------------
    async def _watch(self, ws: ClientConnection) -> None:
        """Every channel's confirmation and liveness (see the module), and the connection's data."""
        endpoint = self.proto.endpoint
        limits = endpoint.limits
        while True:
            await asyncio.sleep(min(0.5, endpoint.silence_s / 4))
            now = time.monotonic()
            for cid, channel in list(self.channels.items()):
                state, age = channel.state, now - channel.since
                if state == "pending" and age > limits.ack_s:
                    self._fail(cid, "unconfirmed", f"no answer within {limits.ack_s:.0f}s", now)
                elif state == "confirmed" and (channel.sub.book or channel.cadence) and age > limits.first_s:
                    self._fail(cid, "silent", f"confirmed, but no data within {limits.first_s:.0f}s", now)
                elif state == "live" and channel.cadence and now - channel.last > channel.cadence:
                    self._fail(cid, "silent", f"no data for {now - channel.last:.1f}s (pushed every "
                                              f"{channel.cadence:.0f}s at most)", now)
                elif state in FAILED and now >= channel.next_try:
                    self._again(channel, now)
            silent = now - self.stats.last_frame
            if silent > endpoint.silence_s:
                self.stats.watchdog += 1
                log.warning("%s %s: no data for %.1fs (limit %.0fs), reconnecting", self.venue, self.conn_id,
                            silent, endpoint.silence_s)
                self._closing = True
                await ws.close(code=4000, reason="silent feed")
                return

    def _again(self, channel: Channel, now: float) -> None:
        """Subscribe a failed channel again (a silent one is unsubscribed first)."""
        channel.next_try = now + MAX_RETRY_S  # until this attempt fails or works
        channel.since = now
        requests = self.proto.requests("subscribe", [channel.sub])
        if channel.state == "silent":
            requests = self.proto.requests("unsubscribe", [channel.sub]) + requests
        for request in requests:
            self.send(request)
        if channel.sub.book and self.proto.snapshot_url(channel.sub.symbol):
            asyncio.get_running_loop().create_task(self.fetch_snapshot(channel.sub.symbol))

    # -- REST snapshots -----------------------------------------------------------------
    def snapshot_depth(self) -> int:
        """The deepest snapshot the REST budget affords for every snapshot queued now: at most
        half the budget's window for them (the rest for instrument lists and what is to come)."""
        limits = self.proto.endpoint.limits
        weights = limits.rest_weights
        if not weights or not limits.rest_weight[0]:
            return self.proto.endpoint.depth
        queued = max(1, self.rest.waiting)
        fits = [depth for depth, weight in weights
                if depth <= self.proto.endpoint.depth and weight * queued <= limits.rest_weight[0] / 2]
        return fits[-1] if fits else min(self.proto.endpoint.depth, weights[0][0])

    def snapshot_weight(self, depth: int) -> int:
        return next((w for d, w in self.proto.endpoint.limits.rest_weights if depth <= d), 1)

    async def fetch_snapshot(self, symbol: str) -> None:
        """GET the venue's REST depth snapshot (within its weight budget, as deep as the queue
        allows when it goes) and emit it into the same raw topic. A request for a snapshot
        already queued or in flight joins it."""
        if symbol in self._fetching:
            return
        self._fetching.add(symbol)
        try:
            await self._fetch(symbol)
        finally:
            self._fetching.discard(symbol)

    async def _fetch(self, symbol: str) -> None:
        budget = self.rest
        chosen = [self.proto.endpoint.depth]

        def weight() -> int:  # asked when the budget has room: the depth fits the queue then
            chosen[0] = self.snapshot_depth()
            return self.snapshot_weight(chosen[0])

        for attempt in range(5):
            budget.waiting += 1
            try:
                await acquire([budget], weight, counter=f"limit_waits.{self.venue}")
            finally:
                budget.waiting -= 1
            url = self.proto.snapshot_url(symbol, chosen[0])
            assert url is not None
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    body = await resp.read()
                    ts = time.time_ns()
                    used = resp.headers.get("X-MBX-USED-WEIGHT-1M")
                    if used and used.isdigit():
                        budget.observe(int(used))
                    if resp.status == 200:
                        self.emit(Kind.REST, body, ts, url, symbol, f"{self.conn_id}/rest")
                        return
                    if resp.status in (418, 429):
                        budget.throttled(resp.status, retry_after(resp.headers.get("Retry-After"), 60.0))
                        continue  # the budget holds the next try until the venue's time
                    log.warning("%s %s: snapshot HTTP %d: %s", self.venue, symbol, resp.status, body[:200])
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("%s %s: snapshot request failed (%s)", self.venue, symbol, exc)
            await asyncio.sleep(backoff(attempt))
        log.error("%s %s: no snapshot after 5 attempts; the book stays unsynced until the next resync",
                  self.venue, symbol)

    async def resync(self, symbol: str) -> bool:
        """Fresh snapshot for one instrument without touching the others on this connection."""
        if self._ws is None or symbol in self.quarantined:
            return False  # reconnecting: every instrument resyncs on the new connection anyway
        if self.proto.snapshot_url(symbol):
            await self.fetch_snapshot(symbol)
        elif self._subscribing(symbol):
            return True  # its subscription, under way, brings a snapshot: asking again only costs requests
        else:
            for request in self.proto.resubscribe(symbol):
                self.send(request)
        log.info("%s %s: resync of %s requested", self.venue, self.conn_id, symbol)
        return True

    def _subscribing(self, symbol: str) -> bool:
        channel = self.channels.get(self.proto.channel_id(symbol, self.proto.channel(symbol)))
        return channel is not None and channel.state in ("queued", "pending", "confirmed")

    def channel_states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for channel in self.channels.values():
            counts[channel.state] = counts.get(channel.state, 0) + 1
        return counts
