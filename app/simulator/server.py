"""Local venue simulator: each venue's real protocol over real WebSockets, plus Binance REST.

One aiohttp server on ``SIM_HOST:SIM_PORT`` (127.0.0.1:8765 by default):

    ws   /ws/deribit                              JSON-RPC 2.0, book.{instrument}.{100ms|raw}
    ws   /ws/binance/stream                       SUBSCRIBE, combined-stream frames, depth@100ms
    ws   /ws/binance-usdm/public/stream           (the 2026 futures split) depth and bookTicker only, + pu
    ws   /ws/binance-usdm/market/stream           trade, aggTrade, markPrice[@1s] only
    ws   /ws/binance-coinm/stream
    ws   /ws/okx/ws/v5/public                     books, seqId/prevSeqId, checksum 0, ping/pong, login
    ws   /ws/bybit/v5/public/{category}           orderbook.{depth}.{symbol}, {"op":"ping"}
    ws   /ws/coinbase                             level2 + heartbeats, sequence_num per connection
    ws   /ws/hyperliquid/ws                       l2Book whole snapshots per block, bbo, trades, activeAssetCtx, ping
    ws   /ws/dydx/v4/ws                           v4_orderbook, v4_trades, v4_markets; message_id per connection
    get  /rest/binance/api/v3/depth               REST depth snapshots (lastUpdateId), weighed
    get  /rest/binance-usdm/fapi/v1/depth
    get  /rest/binance-coinm/dapi/v1/depth
    post /rest/hyperliquid/info                   {"type":"meta"}: the coins (any other body 422)
    get  /rest/dydx/v4/perpetualMarkets           the markets
    get  /control/truth/{venue}/{symbol}          ground truth: [seq, bid_px, bid_sz, ask_px, ask_sz, conn]
    post /control/fault                           {"venue","symbol","fault","seconds"}: see FAULTS
    post /control/move                            {"coin","pct","seconds"}: move the underlying, see below
    get  /control/limits                          the venue limits (SimLimits) in force
    post /control/limits                          {field: value, ...}: change them (400 on a bad one)
    get  /control/status                          instruments, connections, counters, forwards per coin
    post /control/instruments                     {"venue","symbols","rate"}: list them, each at its own rate

Every instrument is created on first subscription (or REST request, or ``/control/instruments``)
with a stochastic order-flow model seeded by its name; it steps at ``rate`` updates/s with bursts
(``/control/instruments`` gives instruments their own rate and lists them before anyone
subscribes, as a venue lists its whole universe). The simulator serves full depth (it does not
truncate books to the subscribed depth).

Deribit's ``.100ms`` channels are as strict as the venue's: at most one notification per 100 ms
per instrument and channel, and none when nothing changed. ``book.<i>.100ms`` gets the levels
changed in the interval in one ``change`` (``change_id`` the interval's last, ``prev_change_id``
the notification before: the chain stays contiguous), a new subscription its snapshot at the next
interval's end; ``trades.<i>.100ms`` the interval's trades in one list; ``ticker.<i>.100ms`` the
ticker at the interval's end. ``.raw`` channels get every change as it happens.

Limits (app.simulator.limits.SimLimits; the real venues' by default; "per IP" is per simulator
process), each refusal counted in ``counters`` (/control/status):

* Binance: 5 messages per connection per sliding second, the 6th closes it (1008 "Too many
  requests"; closed_rate); 1024 streams per connection on spot, 200 on futures: a SUBSCRIBE over
  it gets ``{"error":{"code":-1,"msg":"too many streams"},"id":N}`` and subscribes nothing
  (refused_args); USD-M streams asked on the path that does not serve them are acknowledged and
  never sent (refused_path). REST weight (depth by limit, exchangeInfo 20 spot / 1 futures) per
  calendar minute, 6000 spot, 2400 USD-M and COIN-M together, reported in X-MBX-USED-WEIGHT-1M:
  over it 429 with Retry-After (rest_429), a request before that 418 with a 120 s ban doubling
  on each request while banned (rest_418).
* Bybit: at most 10 args per spot subscribe/unsubscribe (``"success":false``, "args size >10";
  refused_args).
* OKX: 3 connection opens per sliding second (then HTTP 429 before the upgrade; refused_rate);
  480 subscribe/unsubscribe/login per connection per sliding hour (then error 60014 and close;
  closed_rate); a request's ``id`` is echoed; login with apiKey "bad" fails (60009), the
  books-l2-tbt channels need a login (60011; refused_auth).
* Deribit: subscribe/unsubscribe credit 10 refilling 3.3/s (then error 10028 and close;
  closed_rate); public/auth with client_id "bad" fails (13004; refused_auth).
* Coinbase: 8 client messages per sliding second (then an error and close; closed_rate), 8
  connection opens per sliding second (then HTTP 429; refused_rate).

``subscriptions_confirmed`` counts the channels acknowledged as subscribed.

Faults beyond the stream faults: "ignore" (once) acknowledges the next subscription of an
instrument's book as a success but never serves it (ignored_subscriptions); "refuse" unlists an
instrument for ``seconds``: its subscriptions are refused the venue's way (Binance: acknowledged
and never sent, REST depth 400 -1121; Bybit: the whole request; OKX 60018 and Coinbase an error
per instrument, the others subscribed; Deribit: left out of the result; dYdX: an error naming the
channel; Hyperliquid: the whole connection closed; refused_symbol).

Hyperliquid closes a connection that sent nothing for ``hyperliquid_idle_s`` (closed_idle), every
connection of the IP that sends more than ``hyperliquid_msgs_per_min`` messages in a sliding minute
(closed_rate: the venue documents the limit, not what it does past it), and the whole connection on a
subscription of an unknown coin or a bad ``nSigFigs``/``mantissa``. dYdX takes ``dydx_subs_per_s``
subscribe/unsubscribe messages a second per connection (then an error and close; closed_rate). Its books go
out whole once a block (``block_s``), their truth at the block time; dYdX numbers every message of a
connection, so its truth is per connection (like Coinbase's). Venue faults: "hyperliquid-old-snapshot"
(the block before again, after the next one: its older time must be ignored), "dydx-cross" (a message
that crosses the book; the truth is what the venue's uncrossing rule makes of it, ``Simulator._cross``),
"dydx-fetch-error" (the indexer's internal error for the book, which it stops serving).

``/control/move`` {"coin": "BTC", "pct": 5, "seconds": 60} moves the coin over ``seconds``,
linearly in log price (a step at least every 0.5 s), to (1 + pct/100) × its level now: the
options' forward (so their marks, IVs and greeks follow) and the books of every non-option
instrument whose symbol starts with the coin, each shifted whole by ticks and sent as ordinary
deltas. A new move of the same coin replaces a running one; books created later start at the
moved level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from app.market.symbols import parse_option
from app.simulator import instruments as sim_instruments
from app.simulator import market
from app.simulator.limits import Bucket, SimLimits, WeightBudget, Window, depth_limit, rest_weight
from app.simulator.market import Forwards, MarketState
from app.simulator.model import Change, TrueBook

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAULTS = ("drop", "duplicate", "reorder", "corrupt", "disconnect", "silence", "slow", "burst",
          "okx-reset", "bybit-restart", "skip-trade", "spec-change", "state-change", "ignore", "refuse",
          "hyperliquid-old-snapshot", "dydx-cross", "dydx-fetch-error")
TRUTH_KEEP = 200_000
REFUSALS = ("refused_rate", "refused_args", "refused_symbol", "refused_path", "refused_auth", "rest_429", "rest_418",
            "closed_rate", "closed_idle", "ignored_subscriptions")  # counters of what the venue limits refused
CONN_LIMITS = {"okx": "okx_conns_per_s", "coinbase": "coinbase_conns_per_s"}  # SimLimits fields
USDM_PATHS = {"public": ("depth", "bookTicker"), "market": ("trade", "aggTrade", "markPrice")}  # streams served


def _ms() -> int:
    return time.time_ns() // 1_000_000


def _iso() -> str:
    now = time.time_ns()
    return datetime.fromtimestamp(now // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{now % 10**9:09d}Z"


@dataclass
class Instrument:
    venue: str
    symbol: str
    book: TrueBook
    seq: int = 1000
    subscribers: set[Conn] = field(default_factory=set)
    truth: deque[list[Any]] = field(default_factory=lambda: deque(maxlen=TRUTH_KEEP))
    faults: dict[str, int] = field(default_factory=dict)
    until: dict[str, float] = field(default_factory=dict)  # silence / slow / burst deadlines
    held: Any = None  # a message held back by "reorder"
    driver: asyncio.TimerHandle | None = None  # its next step (Simulator._drive)
    watchers: dict[Conn, set[str]] = field(default_factory=dict)  # trades/ticker channels per connection
    market: MarketState = field(default_factory=MarketState)
    shifted: int = 0  # ticks the book has been shifted by underlying moves
    block_time: int = 0  # Hyperliquid: the time (ms) of the last block whose l2Book was made
    last_block: str = ""  # Hyperliquid: that l2Book message, as sent
    last_bbo: tuple[str, str, str, str] | None = None  # Hyperliquid: the top the last bbo carried
    recent_trades: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))  # repeated on subscribe
    trade_time: int = 0  # the last trade's time (Hyperliquid ms, dYdX ns): trade times never go back
    rate: float | None = None  # its own updates/s (POST /control/instruments), else the simulator's
    # Deribit's 100ms channels: what happened in the interval goes out once at its end (_flush)
    grouped: dict[Conn, bool] = field(default_factory=dict)  # book.<i>.100ms subscribers → snapshot owed
    pending: dict[tuple[str, str], str] = field(default_factory=dict)  # (side, price) → size: the interval's
    sent_change: int = 0  # the change_id the grouped subscribers last got
    pending_trades: list[dict[str, Any]] = field(default_factory=list)
    pending_ticker: bool = False

    def active(self, fault: str) -> bool:
        return time.monotonic() < self.until.get(fault, 0)

    def take(self, fault: str) -> bool:
        if self.faults.get(fault, 0) > 0:
            self.faults[fault] -= 1
            return True
        return False


class Conn:
    """One client connection: an ordered send queue drained by its own task."""

    def __init__(self, sim: Simulator, ws: web.WebSocketResponse, venue: str, number: int, path: str = "") -> None:
        self.sim, self.ws, self.venue, self.number, self.path = sim, ws, venue, number, path
        self.queue: asyncio.Queue[tuple[str | None, Instrument | None]] = asyncio.Queue()  # None: close
        self.subs: set[str] = set()
        self.aliases: dict[str, tuple[str, str]] = {}  # symbol → (book channel as sent, as subscribed)
        self.streams: set[str] = set()  # Binance: the streams subscribed
        self.window = Window()  # Binance messages, OKX operations
        self.closing: tuple[int, str] | None = None  # the close code and reason once asked to close
        self.seq = 0  # Coinbase sequence_num
        self.authed = False
        self.heartbeats = False
        self.coin_trades: set[str] = set()  # Bybit options: publicTrade.<coin> subscriptions
        self.state_channels: set[str] = set()  # Deribit instrument.state.any.<currency>
        self.instrument_channel = False  # OKX instruments
        self.channels: set[str] = set()  # Hyperliquid, dYdX: the subscriptions held ("<type>:<coin>")
        self.markets = False  # dYdX v4_markets
        self.last_in = time.monotonic()  # Hyperliquid closes a connection idle for 60 s

    def next_seq(self) -> int:
        seq, self.seq = self.seq, self.seq + 1
        return seq

    def send(self, text: str, inst: Instrument | None = None) -> None:
        alias = self.aliases.get(inst.symbol) if inst is not None and self.aliases else None
        if alias is not None:  # the book channel as this connection subscribed it (OKX tbt, Deribit raw)
            text = text.replace(alias[0], alias[1], 1)
        self.queue.put_nowait((text, inst))

    def close(self, code: int, reason: str) -> None:
        """Close the connection once what is queued is sent; what the client sends meanwhile is ignored."""
        self.closing = (code, reason)
        self.queue.put_nowait((None, None))

    def silenced(self) -> bool:
        quiet = self.sim.silenced  # instruments told to go silent (most of the time none: no scan)
        return bool(quiet) and any(i.active("silence") for i in quiet if self in i.subscribers)

    async def drain(self) -> None:
        """Send what is queued, in order: every message queued by the time this task runs goes
        out in one write of its frames (``_write``), as a venue's server under load writes many
        frames a syscall."""
        queue = self.queue
        while True:
            item = await queue.get()
            out: list[str] = []
            while True:
                text, inst = item
                if text is None:
                    await self._write(out)
                    code, reason = self.closing or (1000, "")
                    await self.ws.close(code=code, message=reason.encode())
                    return
                if not self.silenced():  # the venue went quiet on this connection: nothing at all arrives
                    if inst is not None and inst.active("slow"):
                        await self._write(out)
                        out = []
                        await asyncio.sleep(0.2)
                    out.append(text)
                if queue.empty():
                    break
                item = queue.get_nowait()
            if not await self._write(out):
                return

    async def _write(self, texts: list[str]) -> bool:
        """Text frames of ``texts`` on the connection; False once it is closed. Uncompressed
        frames go out in one transport write (a server's frames are not masked: RFC 6455 5.1);
        with permessage-deflate negotiated each goes through aiohttp's compressor."""
        if self.ws.closed:
            return False
        if not texts:
            return True
        if self.ws.compress:
            for text in texts:
                if self.ws.closed:  # closed while a send waited for the client
                    return False
                await self.ws.send_str(text)
                self.sim.counters["frames_sent"] += 1
            return True
        writer = self.ws._writer  # noqa: SLF001  # aiohttp writes one frame a call: frames joined here
        assert writer is not None
        if writer.transport.is_closing():
            return False
        writer.transport.write(b"".join([_text_frame(text.encode()) for text in texts]))
        self.sim.counters["frames_sent"] += len(texts)
        if writer.protocol._paused:  # noqa: SLF001  # the client reads slower: wait, as aiohttp's writer does
            await writer.protocol._drain_helper()  # noqa: SLF001
        return True


def _text_frame(data: bytes) -> bytes:
    """A final, unmasked text frame of ``data`` (RFC 6455 5.2)."""
    length = len(data)
    if length < 126:
        return bytes((0x81, length)) + data
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + data
    return b"\x81\x7f" + length.to_bytes(8, "big") + data


class Simulator:
    def __init__(self, rate: float = 10.0, seed: int = 0, limits: SimLimits | None = None) -> None:
        self.rate = rate
        self.limits = limits or SimLimits()
        self.wall: Callable[[], float] = time.time  # the clock of Binance's weight minutes
        self.conn_windows = {"okx": Window(), "coinbase": Window()}  # connection opens per IP
        self.coinbase_messages = Window()
        self.hyperliquid_messages = Window()  # per IP, over every connection
        self.deribit_credit = Bucket()
        self.budgets = {"binance": WeightBudget(), "binance-futures": WeightBudget()}
        self.rng = random.Random(seed)
        self.instruments: dict[tuple[str, str], Instrument] = {}
        self.conns: set[Conn] = set()
        self.counters: dict[str, int] = {"connections": 0, "frames_sent": 0, "faults": 0, "trades": 0,
                                         "trades_skipped": 0, "tickers": 0, "instrument_lists": 0,
                                         "subscriptions_confirmed": 0, **dict.fromkeys(REFUSALS, 0)}
        self.forwards = Forwards(self.rng)
        self.tick_factor: dict[tuple[str, str], int] = {}  # spec-change: (venue, symbol) → tick multiplier
        self.closed: set[tuple[str, str]] = set()  # state-change: instruments the venue closed
        self.silenced: list[Instrument] = []  # instruments given the "silence" fault
        self.book_factor: dict[str, float] = {}  # coin → how far moves have taken its books' level
        self.moves: dict[str, asyncio.Task[None]] = {}  # coin → its running move
        self.block_s = 0.5  # Hyperliquid's block cadence: an l2Book snapshot of every book subscribed per block
        self.blocks: asyncio.Task[None] | None = None
        self.dirty: dict[tuple[str, str], Instrument] = {}  # Deribit instruments with an interval to send
        self.intervals: asyncio.Task[None] | None = None  # Deribit's 100 ms clock (_intervals)
        self._conn_numbers = 0

    # -- instruments ----------------------------------------------------------------
    def instrument(self, venue: str, symbol: str) -> Instrument:
        key = (venue, symbol)
        inst = self.instruments.get(key)
        if inst is None:
            seed = zlib.crc32(f"{venue}:{symbol}".encode())  # same symbol, different venue: its own market
            inst = self.instruments[key] = Instrument(venue, symbol, TrueBook(symbol, seed=seed))
            self._drive(inst)
            if venue == "hyperliquid" and self.blocks is None:
                self.blocks = asyncio.get_running_loop().create_task(self._blocks())
            if venue == "deribit" and self.intervals is None:
                self.intervals = asyncio.get_running_loop().create_task(self._intervals())
            coin = _moved_coin(symbol, self.book_factor)
            if coin is not None:  # born after a move: at the moved level
                self._align(inst, coin)
            self._record_truth(inst, inst.seq, 0)
        return inst

    def _record_truth(self, inst: Instrument, seq: int, conn: int) -> None:
        inst.truth.append([seq, *inst.book.top(), conn])

    def _drive(self, inst: Instrument) -> None:
        """Schedule ``inst``'s next step, a random wait away at its rate (a loop callback, not a
        task: a thousand instruments at 10/s are 10,000 wake-ups a second)."""
        rng = self.rng
        rate = (inst.rate or self.rate) * (20 if inst.active("burst") else 1) * (5 if rng.random() < 0.05 else 1)
        inst.driver = asyncio.get_running_loop().call_later(rng.expovariate(rate), self._driven, inst)

    def _driven(self, inst: Instrument) -> None:
        self.step(inst)
        self._drive(inst)

    def step(self, inst: Instrument, changes: list[Change] | None = None) -> None:
        """One book update of ``inst`` (a model step, or ``changes`` already applied to its book)
        sent to its subscribers in its venue's format, faults and all."""
        if changes is None:
            changes = inst.book.step()
        family = _family(inst.venue)
        if family == "hyperliquid":  # books go out whole, once a block (_blocks)
            if inst.watchers:
                self._market(inst, family)
            return
        fmt = FORMATTERS[family]
        prev = inst.seq
        if family == "binance":
            inst.seq += len(changes)  # one update id per level change: U..u
        elif family == "bybit":
            inst.seq += 1
        elif family == "okx" and inst.take("okx-reset"):
            inst.seq = 3  # after maintenance the venue restarts low (seqId < prevSeqId), then continues
        else:
            inst.seq += self.rng.randint(1, 3)
        if family not in ("coinbase", "dydx"):
            self._record_truth(inst, inst.seq, 0)
        first = prev + 1
        if inst.grouped:  # Deribit book.<i>.100ms: this step's changes wait for the interval's end
            for side, price, size in changes:
                inst.pending[(side, price)] = size
            self.dirty[(inst.venue, inst.symbol)] = inst
        texts = []
        for conn in [c for c in inst.subscribers if c not in inst.grouped]:
            if family in ("coinbase", "dydx"):
                seq = conn.next_seq()  # consumed even when the message is dropped: a visible gap
                self._record_truth(inst, seq, conn.number)
                text = fmt(inst, changes, seq) if family == "coinbase" else _dydx_update(inst, changes, seq, conn)
            else:
                text = fmt(inst, changes, first, prev)
            texts.append((conn, text))
        if texts or not inst.grouped:  # faults left for the interval's notification when that is all there is
            self._send_faulted(inst, texts)
        if inst.watchers:
            self._market(inst, family)
        if family == "dydx" and inst.take("dydx-cross"):
            crossing = self._cross(inst)  # the venue's rule resolves it: the truth is the book after that
            for conn in list(inst.subscribers):
                seq = conn.next_seq()
                self._record_truth(inst, seq, conn.number)
                conn.send(_dydx_update(inst, crossing, seq, conn), inst)
        if family == "bybit" and inst.take("bybit-restart"):
            inst.seq = 1  # the venue restarted: a fresh book with u = 1
            self._record_truth(inst, inst.seq, 0)
            for conn in inst.subscribers:
                conn.send(_bybit_message(inst, *inst.book.levels(), "snapshot"), inst)

    def _send_faulted(self, inst: Instrument, texts: list[tuple[Conn, str]]) -> None:
        """One book update's message per connection, with the instrument's message faults applied."""
        drop, dup, corrupt = inst.take("drop"), inst.take("duplicate"), inst.take("corrupt")
        reorder = inst.take("reorder")
        for conn, text in texts:
            if drop:
                continue
            if corrupt:
                text = text[: len(text) // 2]
            if reorder:
                inst.held = (conn, text)
                continue
            conn.send(text, inst)
            if dup:
                conn.send(text, inst)
            if inst.held is not None and inst.held[0] is conn:
                conn.send(inst.held[1], inst)
                inst.held = None

    async def _intervals(self) -> None:
        """Deribit's 100 ms intervals: at the end of each, every instrument with something to say
        on a ``.100ms`` channel says it once (the next interval starts after that: never two
        notifications of one instrument and channel within 100 ms)."""
        while True:
            await asyncio.sleep(0.1)
            dirty, self.dirty = self.dirty, {}
            for inst in dirty.values():
                self._flush(inst)

    def _flush(self, inst: Instrument) -> None:
        """The end of an interval of ``inst``'s Deribit ``.100ms`` channels: the book's changes in
        one notification (a new subscriber: its snapshot), its trades in one list, its ticker now."""
        owed = [c for c, snapshot in inst.grouped.items() if snapshot]
        for conn in owed:
            inst.grouped[conn] = False
            conn.send(_deribit_snapshot(inst), inst)
        receivers = [c for c in inst.grouped if c not in owed]
        if receivers and inst.seq != inst.sent_change:
            changes = [(side, price, size) for (side, price), size in inst.pending.items()]
            text = _deribit_update(inst, changes, inst.sent_change + 1, inst.sent_change)
            self._send_faulted(inst, [(c, text) for c in receivers])
        inst.sent_change = inst.seq
        inst.pending.clear()
        trades, ticker = inst.pending_trades, inst.pending_ticker
        inst.pending_trades, inst.pending_ticker = [], False
        if not (trades or ticker):
            return
        for conn, channels in list(inst.watchers.items()):
            for channel in channels:
                if not channel.endswith(".100ms"):
                    continue
                if channel.startswith("trades.") and trades:
                    conn.send(market.deribit_trades(channel, trades), inst)
                elif channel.startswith("ticker.") and ticker:
                    conn.send(market.ticker_message("deribit", inst.venue, inst.symbol, inst.book.top(), inst.seq,
                                                    inst.market, self.forwards, channel), inst)
                    self.counters["tickers"] += 1

    def _market(self, inst: Instrument, family: str) -> None:
        """A trade (sometimes) and a ticker (often) to the connections watching ``inst``."""
        rng = self.rng
        trade = rng.random() < 0.3
        ticker = rng.random() < 0.5
        if not (trade or ticker):
            return
        top = inst.book.top()
        skip = False
        if family in ("hyperliquid", "dydx"):
            self._dex_market(inst, family, trade, ticker, top)
            return
        if trade:
            skip, price, size, buy = self._new_trade(inst, top)
        if trade and not skip and inst.venue == "bybit-option":
            coin = inst.symbol.split("-")[0]
            for conn in [c for c in self.conns if c.venue == inst.venue and coin in c.coin_trades]:
                conn.send(market.trade_message(family, inst.venue, inst.symbol, inst.market.trade_seq, price, size,
                                               buy), inst)
        grouped_trade = grouped_ticker = False
        for conn, channels in list(inst.watchers.items()):
            for channel in channels:
                if family == "deribit" and channel.endswith(".100ms"):  # sent at the interval's end (_flush)
                    grouped_trade |= trade and not skip and channel.startswith("trades.")
                    grouped_ticker |= ticker and channel.startswith("ticker.")
                    continue
                if "rade" in channel:
                    if not trade or skip:
                        continue
                    seq = inst.market.trade_seq
                    text = (market.coinbase_trade(inst.symbol, seq, conn.next_seq(), price, size, buy)
                            if family == "coinbase" else
                            market.trade_message(family, inst.venue, inst.symbol, seq, price, size, buy))
                else:
                    if not ticker or channel.endswith("@markPrice@1s"):  # that one on its clock (_mark_prices)
                        continue
                    text = (market.coinbase_ticker(inst.symbol, top, conn.next_seq()) if family == "coinbase" else
                            market.ticker_message(family, inst.venue, inst.symbol, top, inst.seq, inst.market,
                                                  self.forwards, channel))
                    self.counters["tickers"] += 1
                conn.send(text, inst)
        if grouped_trade or grouped_ticker:
            if grouped_trade:
                inst.pending_trades.append(market.deribit_trade(inst.symbol, inst.market.trade_seq, price, size, buy))
            inst.pending_ticker |= grouped_ticker
            self.dirty[(inst.venue, inst.symbol)] = inst

    def _new_trade(self, inst: Instrument, top: tuple[str, str, str, str]) -> tuple[bool, str, str, bool]:
        """The instrument's next trade at its top: (skipped by the "skip-trade" fault, price, size,
        the buyer the taker)."""
        rng = self.rng
        inst.market.trade_seq += 1
        skip = inst.take("skip-trade")
        self.counters["trades_skipped" if skip else "trades"] += 1
        buy = rng.random() < 0.5
        price, size = (top[2] if buy else top[0]), inst.book.size(rng.randint(1, 5))
        inst.market.open_interest += rng.uniform(-1, 1)
        return skip, price, size, buy

    def _dex_market(self, inst: Instrument, family: str, trade: bool, ticker: bool,
                    top: tuple[str, str, str, str]) -> None:
        """Hyperliquid's ``trades`` and ``activeAssetCtx``, dYdX's ``v4_trades`` and ``v4_markets``
        (each dYdX message numbered on its connection). Recent trades are kept: a subscription's
        first trades message repeats them."""
        item: dict[str, Any] | None = None
        if trade:
            skip, price, size, buy = self._new_trade(inst, top)
            if family == "hyperliquid":
                inst.trade_time = max(_ms(), inst.trade_time)
                item = market.hyperliquid_trade(inst.symbol, inst.market.trade_seq, inst.trade_time, price, size, buy)
            else:
                inst.trade_time = max(time.time_ns(), inst.trade_time)
                item = market.dydx_trade(inst.market.trade_seq, inst.trade_time, price, size, buy)
            inst.recent_trades.append(item)
            if skip:
                item = None
        if family == "hyperliquid":
            trades = market.hyperliquid_trades([item]) if item is not None else None
            ctx = market.hyperliquid_ctx(inst.symbol, top, inst.market) if ticker else None
            for conn, channels in list(inst.watchers.items()):
                if trades is not None and "trades" in channels:
                    conn.send(trades, inst)
                if ctx is not None and "activeAssetCtx" in channels:
                    conn.send(ctx, inst)
                    self.counters["tickers"] += 1
            return
        if item is not None:
            for conn, channels in list(inst.watchers.items()):
                if "v4_trades" in channels:
                    conn.send(market.dydx_message("channel_data", _dydx_id(conn), conn.next_seq(), "v4_trades",
                                                  inst.symbol, {"trades": [item]}), inst)
        if ticker:
            contents = market.dydx_markets_update(inst.symbol, top, inst.market)
            for conn in [c for c in self.conns if c.venue == "dydx" and c.markets]:
                conn.send(market.dydx_message("channel_data", _dydx_id(conn), conn.next_seq(), "v4_markets", "",
                                              contents))
                self.counters["tickers"] += 1

    def _cross(self, inst: Instrument) -> list[Change]:
        """A crossed moment of dYdX's indexer (the "dydx-cross" fault): the changes of one message that
        leaves the book crossed, applied to the true book as the venue's rule resolves them — a newer
        bid at or through the best ask (the older asks it crosses go), or a bid and an ask at the
        best ask in one message (same message id: the sizes net, the larger keeps the difference)."""
        book, rng = inst.book, self.rng
        book.forget_best()  # the sides are written here directly
        best_ask = min(book.asks)
        if rng.random() < 0.5:
            ticks, lots = best_ask + rng.randint(0, 2), rng.randint(1, 50)
            for gone in [t for t in book.asks if t <= ticks]:
                del book.asks[gone]
            book.bids[ticks] = lots
            return [("b", book.price(ticks), book.size(lots))]
        bid_lots, ask_lots = rng.randint(1, 50), rng.randint(1, 50)
        net = bid_lots - ask_lots
        book.asks.pop(best_ask, None)
        if net > 0:
            book.bids[best_ask] = net
        elif net < 0:
            book.asks[best_ask] = -net
        if not book.asks:  # never an empty side: a level further out
            book.asks[best_ask + 1] = 1
            return [("b", book.price(best_ask), book.size(bid_lots)), ("a", book.price(best_ask), book.size(ask_lots)),
                    ("a", book.price(best_ask + 1), book.size(1))]
        return [("b", book.price(best_ask), book.size(bid_lots)), ("a", book.price(best_ask), book.size(ask_lots))]

    async def _blocks(self) -> None:
        """Hyperliquid's blocks: every ``block_s`` the whole book (20 levels a side) of each coin
        subscribed, with the block's time, and its bbo when the top changed."""
        while True:
            await asyncio.sleep(self.block_s)
            for inst in [i for i in self.instruments.values() if i.venue == "hyperliquid"]:
                self._block(inst)

    def _new_block(self, inst: Instrument) -> str:
        inst.block_time = max(_ms(), inst.block_time + 1)
        self._record_truth(inst, inst.block_time, 0)
        inst.last_block = _hyperliquid_book(inst, inst.block_time)
        return inst.last_block

    def _block(self, inst: Instrument) -> None:
        if not inst.subscribers and not inst.watchers:
            return
        older = inst.last_block
        text = self._new_block(inst)
        behind = bool(older) and inst.take("hyperliquid-old-snapshot")  # an API server a block behind
        for conn in list(inst.subscribers):
            conn.send(text, inst)
            if behind:
                conn.send(older, inst)
        top = inst.book.top()
        if top != inst.last_bbo:
            inst.last_bbo = top
            bbo = market.hyperliquid_bbo(inst.symbol, inst.block_time, top)
            for conn, channels in list(inst.watchers.items()):
                if "bbo" in channels:
                    conn.send(bbo, inst)

    def hyperliquid_snapshot(self, inst: Instrument) -> str:
        """What a new l2Book subscription gets at once: the last block's book (a new block if none)."""
        return inst.last_block or self._new_block(inst)

    def watch(self, conn: Conn, symbol: str, channel: str, on: bool) -> None:
        """Start (or stop) sending ``channel`` (a trades or ticker channel) of ``symbol`` on ``conn``."""
        inst = self.instrument(conn.venue, symbol)
        channels = inst.watchers.setdefault(conn, set())
        if on:
            channels.add(channel)
        else:
            channels.discard(channel)
            if not channels:
                inst.watchers.pop(conn, None)

    def fault(self, venue: str, symbol: str, fault: str, seconds: float = 5.0) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        inst = self.instrument(venue, symbol)
        self.counters["faults"] += 1
        log.info("fault %s on %s:%s", fault, venue, symbol)
        if fault == "spec-change":
            self.tick_factor[(venue, symbol)] = self.tick_factor.get((venue, symbol), 1) * 2
            if venue == "okx":  # the instruments channel pushes the change at once
                body = sim_instruments.okx([symbol], {symbol: self.tick_factor[(venue, symbol)]})
                push = orjson.dumps({"arg": {"channel": "instruments", "instType": body["data"][0]["instType"]},
                                     "data": body["data"]}).decode()
                for conn in [c for c in self.conns if c.venue == "okx" and c.instrument_channel]:
                    conn.send(push)
        elif fault == "state-change":
            self.closed.add((venue, symbol))
            if venue == "deribit":  # instrument.state pushes it at once
                currency = symbol.split("-")[0]
                data = {"timestamp": _ms(), "state": "deactivated", "instrument_name": symbol}
                push = orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": {
                    "channel": f"instrument.state.any.{currency}", "data": data}}).decode()
                for conn in [c for c in self.conns if c.venue == "deribit" and currency in c.state_channels]:
                    conn.send(push)
        elif fault in ("silence", "slow", "burst", "refuse"):
            if fault == "silence":
                self.silenced.append(inst)
            inst.until[fault] = time.monotonic() + seconds
        elif fault == "dydx-fetch-error":  # the indexer gives up the book subscription, saying so
            for conn in [c for c in inst.subscribers if c.venue == "dydx"]:
                conn.send(orjson.dumps({"type": "error", "connection_id": _dydx_id(conn), "message_id": conn.next_seq(),
                                        "message": "Internal error, could not fetch data for subscription: "
                                                   "v4_orderbook.", "channel": "v4_orderbook",
                                        "id": symbol}).decode(), inst)
                conn.channels.discard(f"v4_orderbook:{symbol}")
                self.unsubscribe(conn, symbol)
        elif fault == "disconnect":
            for conn in list(inst.subscribers):
                asyncio.get_running_loop().create_task(conn.ws.close())
        else:
            inst.faults[fault] = inst.faults.get(fault, 0) + 1

    def move(self, coin: str, pct: float, seconds: float) -> None:
        """Start moving ``coin`` by ``pct`` percent over ``seconds`` (replacing a running move of it)."""
        coin = coin.upper()
        if not coin:
            raise ValueError("coin must be a non-empty string")
        if not (math.isfinite(pct) and pct > -100):
            raise ValueError(f"pct must be a number above -100, not {pct!r}")
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a number above 0, not {seconds!r}")
        running = self.moves.pop(coin, None)
        if running is not None:
            running.cancel()
        start = self.book_factor.get(coin, 1.0)

        def on_step(factor: float) -> None:
            self.book_factor[coin] = start * factor
            for inst in list(self.instruments.values()):
                if _moved_coin(inst.symbol, self.book_factor) == coin:
                    self._align(inst, coin, send=True)

        log.info("move %s by %+g%% over %gs", coin, pct, seconds)
        task = asyncio.get_running_loop().create_task(self.forwards.move(coin, pct, seconds, on_step))
        task.add_done_callback(_log_failure)
        self.moves[coin] = task

    def _align(self, inst: Instrument, coin: str, send: bool = False) -> None:
        """Shift ``inst``'s book to its coin's moved level: by the ticks that scale its starting mid
        by the coin's factor (its own random walk around that level is kept)."""
        book = inst.book
        want = round(book.spec.mid_ticks * (self.book_factor[coin] - 1))
        ticks = max(want - inst.shifted, 1 - max(book.bids))  # as TrueBook.shift clamps it
        if not ticks:
            return
        changes = book.shift(ticks)
        inst.shifted += ticks
        if send:
            self.step(inst, changes)

    # -- connections ----------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        venue = request.match_info.get("venue") or request.path.split("/")[2]
        if venue == "bybit":
            venue = f"bybit-{request.match_info['category']}"
        family = _family(venue)
        if family in CONN_LIMITS and not self.conn_windows[family].allow(getattr(self.limits, CONN_LIMITS[family])):
            self.counters["refused_rate"] += 1  # too many connection opens: refused before the upgrade
            return web.Response(status=429, text="Too Many Requests")
        # Binance pings every 20 s, dYdX every 30 s (WebSocket pings: the client's library answers)
        ws = web.WebSocketResponse(heartbeat=20.0 if venue.startswith("binance") else 30.0 if venue == "dydx" else None)
        await ws.prepare(request)
        self._conn_numbers += 1
        conn = Conn(self, ws, venue, self._conn_numbers, request.path)
        self.conns.add(conn)
        self.counters["connections"] += 1
        drain = asyncio.get_running_loop().create_task(conn.drain())
        beat = asyncio.get_running_loop().create_task(self._heartbeats(conn))
        handler = HANDLERS[family]
        if venue == "hyperliquid":
            conn.send("Websocket connection established.")
        elif venue == "dydx":
            conn.send(orjson.dumps({"type": "connected", "connection_id": _dydx_id(conn),
                                    "message_id": conn.next_seq()}).decode())
        try:
            async for msg in ws:
                conn.last_in = time.monotonic()
                if msg.type != WSMsgType.TEXT or conn.closing or self._over_message_rate(conn, family):
                    continue
                handler(self, conn, msg.data)
        finally:
            drain.cancel()
            beat.cancel()
            self.conns.discard(conn)
            for inst in self.instruments.values():
                inst.subscribers.discard(conn)
                inst.grouped.pop(conn, None)
                inst.watchers.pop(conn, None)
        return ws

    def _over_message_rate(self, conn: Conn, family: str) -> bool:
        """Whether this message from ``conn`` broke its venue's message rate (and closed it)."""
        if family == "binance":
            return self.over_rate(conn, conn.window.allow(self.limits.binance_msgs_per_s))
        if family == "coinbase":
            return self.over_rate(conn, self.coinbase_messages.allow(self.limits.coinbase_msgs_per_s),
                                  '{"type":"error","message":"rate limit exceeded"}')
        if family == "hyperliquid":  # the venue documents the limit, not what it does past it: closed
            return self.over_rate(conn, self.hyperliquid_messages.allow(self.limits.hyperliquid_msgs_per_min, 60.0))
        return False

    def over_rate(self, conn: Conn, allowed: bool, reply: str | None = None) -> bool:
        """False if ``allowed``; else ``conn`` gets the venue's ``reply`` (if any) and is closed."""
        if allowed:
            return False
        self.counters["closed_rate"] += 1
        log.warning("%s connection %d: over the venue's request rate, closed", conn.venue, conn.number)
        if reply is not None:
            conn.send(reply)
        conn.close(1008, "Too many requests")
        return True

    def refuses(self, venue: str, symbol: str) -> bool:
        """Whether ``symbol`` is unlisted on ``venue`` (the "refuse" fault), counting the refusal."""
        inst = self.instruments.get((venue, symbol))
        if inst is None or not inst.active("refuse"):
            return False
        self.counters["refused_symbol"] += 1
        return True

    def confirmed(self, channels: int) -> None:
        self.counters["subscriptions_confirmed"] += channels

    async def _heartbeats(self, conn: Conn) -> None:
        while True:
            await asyncio.sleep(1.0)
            if conn.venue == "coinbase" and conn.heartbeats:
                conn.send(orjson.dumps({"channel": "heartbeats", "timestamp": _iso(), "sequence_num": conn.next_seq(),
                                        "events": [{"current_time": _iso(), "heartbeat_counter": conn.seq}]}).decode())
            elif conn.venue == "deribit" and conn.heartbeats:
                conn.send('{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}')
            elif conn.venue in ("binance-usdm", "binance-coinm"):
                self._mark_prices(conn)
            elif (conn.venue == "hyperliquid" and conn.closing is None
                  and time.monotonic() - conn.last_in > self.limits.hyperliquid_idle_s):
                self.counters["closed_idle"] += 1  # nothing sent (not even a ping) for 60 s
                log.warning("hyperliquid connection %d: idle for %.0f s, closed", conn.number,
                            self.limits.hyperliquid_idle_s)
                conn.close(1000, "idle")

    def _mark_prices(self, conn: Conn) -> None:
        """Binance pushes ``<s>@markPrice@1s`` every second, changed or not."""
        for inst in list(self.instruments.values()):
            for channel in inst.watchers.get(conn, ()):
                if channel.endswith("@markPrice@1s"):
                    conn.send(market.ticker_message("binance", inst.venue, inst.symbol, inst.book.top(), inst.seq,
                                                    inst.market, self.forwards, channel), inst)

    def subscribe(self, conn: Conn, symbol: str, snapshot: Callable[[Instrument], str] | None,
                  alias: tuple[str, str] | None = None) -> Instrument:
        """Serve ``symbol``'s book on ``conn`` (``alias``: its channel named as the connection
        subscribed it, when not as the book frames name it)."""
        inst = self.instrument(conn.venue, symbol)
        if alias is not None and alias[0] != alias[1]:
            conn.aliases[symbol] = alias
        if inst.take("ignore"):  # acknowledged by the caller, never served
            self.counters["ignored_subscriptions"] += 1
            return inst
        conn.subs.add(symbol)
        if snapshot is not None:
            conn.send(snapshot(inst), inst)
        inst.subscribers.add(conn)
        return inst

    def unsubscribe(self, conn: Conn, symbol: str) -> None:
        conn.subs.discard(symbol)
        inst = self.instruments.get((conn.venue, symbol))
        if inst is not None:
            inst.subscribers.discard(conn)
            inst.grouped.pop(conn, None)

    # -- HTTP -----------------------------------------------------------------------
    @web.middleware
    async def weigh(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Binance's REST weight: charged per calendar minute in the request's scope, reported in
        X-MBX-USED-WEIGHT-1M; 429, then 418 (a ban), past the budget."""
        venue = request.path.split("/")[2] if request.path.startswith("/rest/binance") else ""
        try:
            weight = rest_weight(venue, request.path, request.query.get("limit", "1000")) if venue else None
        except ValueError as exc:
            return web.json_response({"code": -1100, "msg": str(exc)}, status=400)
        if weight is None:
            return await handler(request)
        spot = venue == "binance"
        scope = self.budgets["binance" if spot else "binance-futures"]
        budget = self.limits.binance_spot_weight_per_min if spot else self.limits.binance_futures_weight_per_min
        now = self.wall()
        refused = scope.charge(weight, budget, self.limits.binance_ban_s, now)
        if refused is None:
            response = await handler(request)
        else:
            status, retry = refused
            self.counters[f"rest_{status}"] += 1
            msg = (f"Too many requests; current limit of IP request weight per minute is {budget}. Please use "
                   "WebSocket Streams for live updates to avoid polling the API." if status == 429 else
                   f"Way too many requests; IP banned until {int((now + retry) * 1000)}.")
            response = web.json_response({"code": -1003, "msg": msg}, status=status,
                                         headers={"Retry-After": str(max(1, math.ceil(retry)))})
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(scope.used(now))
        return response

    async def depth(self, request: web.Request) -> web.Response:
        venue = request.path.split("/")[2]
        symbol = request.query.get("symbol", "").upper()
        if not symbol:
            return web.json_response({"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent"}, status=400)
        if self.refuses(venue, symbol):
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        inst = self.instrument(venue, symbol)
        limit, _ = depth_limit(venue, request.query.get("limit", "1000"))  # weigh() answered a bad one
        bids, asks = inst.book.levels(limit)
        body: dict[str, Any] = {"lastUpdateId": inst.seq, "bids": bids, "asks": asks}
        if venue != "binance":
            body = {"lastUpdateId": inst.seq, "E": _ms(), "T": _ms(), "bids": bids, "asks": asks}
        await asyncio.sleep(self.rng.uniform(0.01, 0.05))  # REST latency: deltas keep flowing meanwhile
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def instrument_list(self, request: web.Request) -> web.Response:
        """A venue's REST instrument list: the symbols the request names, else every simulated
        instrument of that venue (and currency / type)."""
        venue = request.path.split("/")[2]
        q = request.query
        self.counters["instrument_lists"] += 1
        known = sorted(s for v, s in self.instruments if v == venue)

        def factor(symbols: list[str]) -> dict[str, int]:
            return {s: self.tick_factor.get((venue, s), 1) for s in symbols}

        closed = {s for v, s in self.closed if v == venue}
        if venue == "deribit":
            currency = q.get("currency", "")
            if not currency:
                error = {"code": 10001, "message": "currency"}
                return web.json_response({"jsonrpc": "2.0", "error": error}, status=400)
            names = sorted({s for s in known if s.split("-")[0].split("_")[-1] == currency
                            or s.startswith(currency + "-")} | set(sim_instruments.deribit_listed(currency)))
            body = sim_instruments.deribit(names, factor(names), closed)
        elif venue.startswith("binance"):
            names = orjson.loads(q["symbols"]) if "symbols" in q else known
            body = sim_instruments.binance(venue, names, factor(names))
        elif venue == "okx":
            kind = q.get("instType", "")
            names = [s for s in known if {"SPOT": s.count("-") == 1, "SWAP": s.endswith("-SWAP")}.get(kind, False)]
            body = sim_instruments.okx(names, factor(names))
        elif venue.startswith("bybit"):
            names = [q["symbol"]] if "symbol" in q else known
            body = sim_instruments.bybit(venue.split("-", 1)[1], names, factor(names))
        else:
            names = q.getall("product_ids", known)
            body = sim_instruments.coinbase(names, factor(names))
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _dex_listed(self, venue: str, listed: tuple[str, ...]) -> list[str]:
        """A venue's markets: those it lists anyway and those simulated, less those unlisted ("refuse")."""
        names = sorted({*listed, *(s for v, s in self.instruments if v == venue)})
        return [s for s in names if not ((inst := self.instruments.get((venue, s))) and inst.active("refuse"))]

    async def hyperliquid_info(self, request: web.Request) -> web.Response:
        """``POST /info``: ``{"type":"meta"}`` answers the perpetuals' universe; any other body 422."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or body.get("type") != "meta":
            return web.Response(status=422, text="Failed to deserialize the JSON body into the target type")
        self.counters["instrument_lists"] += 1
        universe = sim_instruments.hyperliquid(self._dex_listed("hyperliquid", sim_instruments.HYPERLIQUID_LISTED))
        return web.Response(body=orjson.dumps(universe), content_type="application/json")

    def dydx_markets(self) -> dict[str, Any]:
        names = self._dex_listed("dydx", sim_instruments.DYDX_LISTED)
        closed = {s for v, s in self.closed if v == "dydx"}
        listing = sim_instruments.dydx(names, {s: self.tick_factor.get(("dydx", s), 1) for s in names}, closed)
        for symbol, row in listing["markets"].items():  # the indexer's list carries each market's figures now
            inst = self.instruments.get(("dydx", symbol))
            if inst is not None and inst.book.bids and inst.book.asks:
                live = market.dydx_markets_update(symbol, inst.book.top(), inst.market)
                row["oraclePrice"] = live["oraclePrices"][symbol]["oraclePrice"]
                row["openInterest"] = live["trading"][symbol]["openInterest"]
        return listing

    async def dydx_perpetual_markets(self, request: web.Request) -> web.Response:
        self.counters["instrument_lists"] += 1
        return web.Response(body=orjson.dumps(self.dydx_markets()), content_type="application/json")

    async def truth(self, request: web.Request) -> web.Response:
        inst = self.instruments.get((request.match_info["venue"], request.match_info["symbol"]))
        if inst is None:
            return web.json_response({"error": "unknown instrument"}, status=404)
        return web.Response(body=orjson.dumps({"entries": list(inst.truth)}), content_type="application/json")

    async def post_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            self.fault(body["venue"], body["symbol"], body["fault"], float(body.get("seconds", 5)))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def post_move(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            coin, pct, seconds = body["coin"], body["pct"], body["seconds"]
            if not isinstance(coin, str):
                raise ValueError(f"coin must be a string, not {coin!r}")
            for name, value in (("pct", pct), ("seconds", seconds)):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number, not {value!r}")
            self.move(coin, float(pct), float(seconds))
        except KeyError as exc:
            return web.json_response({"error": f"missing {exc}"}, status=400)
        except (ValueError, TypeError) as exc:  # also a body that is no JSON object
            return web.json_response({"error": str(exc).splitlines()[0] if str(exc) else "bad request"}, status=400)
        return web.json_response({"ok": True})

    async def post_instruments(self, request: web.Request) -> web.Response:
        """``{"venue", "symbols": [...], "rate": R}``: create (so list) each instrument now, stepping at
        ``rate`` updates/s (optional: the simulator's), as a venue lists its universe before anyone
        subscribes; an instrument already made takes the new rate."""
        try:
            body = await request.json()
            venue, symbols, rate = body["venue"], body["symbols"], body.get("rate")
            if not isinstance(venue, str) or not isinstance(symbols, list) or not all(
                    isinstance(s, str) and s for s in symbols):
                raise ValueError("venue must be a string and symbols a list of names")
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)
                                     or not math.isfinite(rate) or rate <= 0):
                raise ValueError(f"rate must be a number above 0, not {rate!r}")
        except KeyError as exc:
            return web.json_response({"error": f"missing {exc}"}, status=400)
        except (ValueError, TypeError) as exc:  # also a body that is no JSON object
            return web.json_response({"error": str(exc).splitlines()[0] if str(exc) else "bad request"}, status=400)
        for symbol in symbols:
            self.instrument(venue, symbol).rate = None if rate is None else float(rate)
        return web.json_response({"ok": True, "instruments": len(symbols)})

    async def get_limits(self, request: web.Request) -> web.Response:
        return web.json_response(self.limits.as_dict())

    async def post_limits(self, request: web.Request) -> web.Response:
        try:
            self.limits.update(await request.json())
        except ValueError as exc:  # also a body that is no JSON
            return web.json_response({"error": str(exc).splitlines()[0] if str(exc) else "bad request"}, status=400)
        return web.json_response(self.limits.as_dict())

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({
            "instruments": [{"venue": i.venue, "symbol": i.symbol, "seq": i.seq, "subscribers": len(i.subscribers)}
                            for i in self.instruments.values()],
            "connections": len(self.conns), **self.counters,
            "forwards": {coin: self.forwards.peek(coin) for coin in self.forwards.coins()},
        })

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.weigh])
        for path in ("/ws/deribit", "/ws/binance/stream", "/ws/binance-usdm/public/stream",
                     "/ws/binance-usdm/market/stream", "/ws/binance-coinm/stream", "/ws/okx/ws/v5/public",
                     "/ws/coinbase", "/ws/hyperliquid/ws", "/ws/dydx/v4/ws"):
            app.router.add_get(path, self.websocket)
        app.router.add_get("/ws/bybit/v5/public/{category}", self.websocket)
        app.router.add_get("/rest/binance/api/v3/depth", self.depth)
        app.router.add_get("/rest/binance-usdm/fapi/v1/depth", self.depth)
        app.router.add_get("/rest/binance-coinm/dapi/v1/depth", self.depth)
        app.router.add_get("/rest/deribit/api/v2/public/get_instruments", self.instrument_list)
        for venue, path in (("binance", "/api/v3"), ("binance-usdm", "/fapi/v1"), ("binance-coinm", "/dapi/v1")):
            app.router.add_get(f"/rest/{venue}{path}/exchangeInfo", self.instrument_list)
        app.router.add_get("/rest/okx/api/v5/public/instruments", self.instrument_list)
        app.router.add_get("/rest/bybit-{category}/v5/market/instruments-info", self.instrument_list)
        app.router.add_get("/rest/coinbase/api/v3/brokerage/market/products", self.instrument_list)
        app.router.add_post("/rest/hyperliquid/info", self.hyperliquid_info)
        app.router.add_get("/rest/dydx/v4/perpetualMarkets", self.dydx_perpetual_markets)
        app.router.add_get("/control/truth/{venue}/{symbol}", self.truth)
        app.router.add_post("/control/fault", self.post_fault)
        app.router.add_post("/control/move", self.post_move)
        app.router.add_post("/control/instruments", self.post_instruments)
        app.router.add_get("/control/status", self.status)
        app.router.add_get("/control/limits", self.get_limits)
        app.router.add_post("/control/limits", self.post_limits)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, _app: web.Application) -> None:
        for task in self.moves.values():
            task.cancel()
        for clock in (self.blocks, self.intervals):
            if clock is not None:
                clock.cancel()
        for inst in self.instruments.values():
            if inst.driver is not None:
                inst.driver.cancel()
        for conn in list(self.conns):
            with contextlib.suppress(Exception):
                await conn.ws.close()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("move failed", exc_info=task.exception())


def _moved_coin(symbol: str, coins: dict[str, float]) -> str | None:
    """The coin among ``coins`` whose moves shift ``symbol``'s book (the longest prefix), or None:
    options (three or more dashes, or any option name) follow the forward instead."""
    if symbol.count("-") >= 3 or parse_option(symbol) is not None:
        return None
    upper = symbol.upper()
    return max((c for c in coins if upper.startswith(c)), key=len, default=None)


def _family(venue: str) -> str:
    return venue.split("-")[0] if venue.startswith(("binance", "bybit")) else venue


# -- per-venue message formats ------------------------------------------------------
def _deribit_book(inst: Instrument, kind: str, bids: list[Any], asks: list[Any], change_id: int,
                  prev: int | None) -> str:
    data: dict[str, Any] = {"type": kind, "timestamp": _ms(), "instrument_name": inst.symbol, "change_id": change_id,
                            "bids": bids, "asks": asks}
    if prev is not None:
        data["prev_change_id"] = prev
    params = {"channel": f"book.{inst.symbol}.100ms", "data": data}
    return orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": params}).decode()


def _deribit_update(inst: Instrument, changes: list[Change], first: int, prev: int) -> str:
    def side(s: str) -> list[list[Any]]:
        return [["delete" if z == "0" else "change", float(p), float(z)] for c, p, z in changes if c == s]
    return _deribit_book(inst, "change", side("b"), side("a"), inst.seq, prev)


def _deribit_snapshot(inst: Instrument) -> str:
    bids, asks = inst.book.levels()
    return _deribit_book(inst, "snapshot", [["new", float(p), float(s)] for p, s in bids],
                         [["new", float(p), float(s)] for p, s in asks], inst.seq, None)


def _binance_update(inst: Instrument, changes: list[Change], first: int, prev: int) -> str:
    data: dict[str, Any] = {"e": "depthUpdate", "E": _ms(), "s": inst.symbol, "U": first, "u": inst.seq,
                            "b": [[p, z] for c, p, z in changes if c == "b"],
                            "a": [[p, z] for c, p, z in changes if c == "a"]}
    if inst.venue != "binance":
        data["T"] = data["E"]
        data["pu"] = prev
    return orjson.dumps({"stream": f"{inst.symbol.lower()}@depth@100ms", "data": data}).decode()


def _okx_message(inst: Instrument, action: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]],
                 seq: int, prev: int) -> str:
    item = {"asks": [[p, s, "0", "1"] for p, s in asks], "bids": [[p, s, "0", "1"] for p, s in bids],
            "ts": str(_ms()), "checksum": 0, "seqId": seq, "prevSeqId": prev}
    return orjson.dumps({"arg": {"channel": "books", "instId": inst.symbol}, "action": action, "data": [item]}).decode()


def _okx_update(inst: Instrument, changes: list[Change], first: int, prev: int) -> str:
    return _okx_message(inst, "update", [(p, z) for c, p, z in changes if c == "b"],
                        [(p, z) for c, p, z in changes if c == "a"], inst.seq, prev)


def _okx_snapshot(inst: Instrument) -> str:
    return _okx_message(inst, "snapshot", *inst.book.levels(), inst.seq, -1)


def _bybit_message(inst: Instrument, bids: list[tuple[str, str]], asks: list[tuple[str, str]], kind: str) -> str:
    now = _ms()
    return orjson.dumps({"topic": f"orderbook.200.{inst.symbol}", "type": kind, "ts": now,
                         "data": {"s": inst.symbol, "b": [list(x) for x in bids], "a": [list(x) for x in asks],
                                  "u": inst.seq, "seq": inst.seq * 7}, "cts": now}).decode()


def _bybit_update(inst: Instrument, changes: list[Change], first: int, prev: int) -> str:
    return _bybit_message(inst, [(p, z) for c, p, z in changes if c == "b"],
                          [(p, z) for c, p, z in changes if c == "a"], "delta")


def _coinbase_event(inst: Instrument, kind: str, seq: int, bids: list[tuple[str, str]],
                    asks: list[tuple[str, str]]) -> str:
    now = _iso()
    updates = [{"side": "bid", "event_time": now, "price_level": p, "new_quantity": q} for p, q in bids]
    updates += [{"side": "offer", "event_time": now, "price_level": p, "new_quantity": q} for p, q in asks]
    return orjson.dumps({"channel": "l2_data", "client_id": "", "timestamp": now, "sequence_num": seq,
                         "events": [{"type": kind, "product_id": inst.symbol, "updates": updates}]}).decode()


def _coinbase_update(inst: Instrument, changes: list[Change], seq: int) -> str:
    return _coinbase_event(inst, "update", seq, [(p, z) for c, p, z in changes if c == "b"],
                           [(p, z) for c, p, z in changes if c == "a"])


def _hyperliquid_book(inst: Instrument, time_ms: int) -> str:
    """An ``l2Book`` message: the whole book, 20 levels a side, of the block at ``time_ms``."""
    bids, asks = inst.book.levels(20)
    levels = [[{"px": p, "sz": s, "n": 1} for p, s in bids], [{"px": p, "sz": s, "n": 1} for p, s in asks]]
    return orjson.dumps({"channel": "l2Book", "data": {"coin": inst.symbol, "time": time_ms,
                                                        "levels": levels}}).decode()


def _dydx_id(conn: Conn) -> str:
    return f"sim-{conn.number:08d}-0000-0000-0000-000000000000"


def _dydx_update(inst: Instrument, changes: list[Change], message_id: int, conn: Conn) -> str:
    contents: dict[str, Any] = {}
    bids = [[p, z] for c, p, z in changes if c == "b"]
    asks = [[p, z] for c, p, z in changes if c == "a"]
    if bids:
        contents["bids"] = bids
    if asks:
        contents["asks"] = asks
    return market.dydx_message("channel_data", _dydx_id(conn), message_id, "v4_orderbook", inst.symbol, contents)


def _dydx_snapshot(inst: Instrument, conn: Conn) -> str:
    seq = conn.next_seq()
    conn.sim._record_truth(inst, seq, conn.number)
    bids, asks = inst.book.levels()
    return market.dydx_message("subscribed", _dydx_id(conn), seq, "v4_orderbook", inst.symbol,
                               {"bids": [{"price": p, "size": s} for p, s in bids],
                                "asks": [{"price": p, "size": s} for p, s in asks]})


FORMATTERS: dict[str, Callable[..., str]] = {
    "deribit": _deribit_update, "binance": _binance_update, "okx": _okx_update, "bybit": _bybit_update,
    "coinbase": _coinbase_update, "dydx": _dydx_update, "hyperliquid": _hyperliquid_book,
}


# -- per-venue request handlers -----------------------------------------------------
def _deribit(sim: Simulator, conn: Conn, text: str) -> None:
    msg = orjson.loads(text)
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}

    def reply(key: str, value: Any) -> str:
        return orjson.dumps({"jsonrpc": "2.0", "id": rid, key: value}).decode()

    if method == "public/auth":
        if params.get("client_id") == "bad":
            sim.counters["refused_auth"] += 1
            conn.send(reply("error", {"code": 13004, "message": "invalid_credentials"}))
            return
        conn.authed = True
        conn.send(reply("result", {"access_token": "sim-token", "expires_in": 900}))
    elif method == "public/set_heartbeat":
        conn.heartbeats = True
        conn.send(reply("result", "ok"))
    elif method == "public/test":
        conn.send(reply("result", {"version": "sim"}))
    elif method in ("public/subscribe", "private/subscribe", "public/unsubscribe", "private/unsubscribe"):
        limits = sim.limits
        if sim.over_rate(conn, sim.deribit_credit.allow(limits.deribit_sub_burst, limits.deribit_sub_per_s),
                         reply("error", {"code": 10028, "message": "too_many_requests"})):
            return
        channels, on = params.get("channels", []), not method.endswith("unsubscribe")
        if any(c.endswith(".raw") for c in channels) and not conn.authed:
            sim.counters["refused_auth"] += 1
            conn.send(reply("error", {"code": 13778, "message": "raw_subscriptions_not_available_for_unauthorized"}))
            return
        if on:  # an unlisted instrument's channels are left out of the result
            channels = [c for c in channels if not (c.startswith(("book.", "trades.", "ticker."))
                                                    and sim.refuses("deribit", c.split(".")[1]))]
            sim.confirmed(len(channels))
        conn.send(reply("result", channels))
        for channel in channels:
            parts = channel.split(".")
            if parts[0] == "book" and len(parts) == 3:
                if on and parts[2] == "100ms":  # its snapshot, then its changes, at intervals' ends (_flush)
                    inst = sim.subscribe(conn, parts[1], None)
                    if conn in inst.subscribers:
                        inst.grouped[conn] = True
                        sim.dirty[(inst.venue, inst.symbol)] = inst
                elif on:
                    inst = sim.subscribe(conn, parts[1], _deribit_snapshot,
                                         (f'"channel":"book.{parts[1]}.100ms"', f'"channel":"{channel}"'))
                    inst.grouped.pop(conn, None)  # raw from now on
                else:
                    sim.unsubscribe(conn, parts[1])
            elif parts[:2] == ["instrument", "state"] and len(parts) == 4:
                (conn.state_channels.add if on else conn.state_channels.discard)(parts[3])
            elif parts[0] in ("trades", "ticker") and len(parts) == 3:
                sim.watch(conn, parts[1], channel, on)


def _binance(sim: Simulator, conn: Conn, text: str) -> None:
    msg = orjson.loads(text)
    method, params, rid = msg.get("method"), msg.get("params") or [], msg.get("id")
    if method == "SUBSCRIBE":
        limit = sim.limits.binance_spot_streams if conn.venue == "binance" else sim.limits.binance_futures_streams
        if len(conn.streams | set(params)) > limit:
            sim.counters["refused_args"] += 1
            conn.send(orjson.dumps({"error": {"code": -1, "msg": "too many streams"}, "id": rid}).decode())
            return
        conn.streams.update(params)
        sim.confirmed(len(params))
    elif method == "UNSUBSCRIBE":
        conn.streams.difference_update(params)
    conn.send(orjson.dumps({"result": None, "id": rid}).decode())
    for stream in params:
        symbol, _, kind = stream.partition("@")
        symbol = symbol.upper()
        if method == "SUBSCRIBE" and not _binance_serves(sim, conn, symbol, kind):
            continue  # acknowledged, never sent
        if "depth" not in kind:
            if kind.split("@")[0] in ("trade", "markPrice", "bookTicker"):
                sim.watch(conn, symbol, stream, method == "SUBSCRIBE")
        elif method == "SUBSCRIBE":
            sim.subscribe(conn, symbol, None)  # Binance sends no snapshot: the client GETs it
        elif method == "UNSUBSCRIBE":
            sim.unsubscribe(conn, symbol)


def _binance_serves(sim: Simulator, conn: Conn, symbol: str, kind: str) -> bool:
    """Whether ``conn`` is sent ``symbol``'s streams of ``kind``: not if its path does not serve them
    (USD-M splits them by path), nor while the symbol is unlisted; refusals counted."""
    part = conn.path.split("/")[3] if conn.venue == "binance-usdm" else ""
    if part in USDM_PATHS and not kind.startswith(USDM_PATHS[part]):
        sim.counters["refused_path"] += 1
        return False
    return not sim.refuses(conn.venue, symbol)


def _okx(sim: Simulator, conn: Conn, text: str) -> None:
    if text == "ping":
        conn.send("pong")
        return
    msg = orjson.loads(text)
    op, rid = msg.get("op"), msg.get("id")

    def frame(event: str, **fields: Any) -> str:
        head = {"id": rid} if rid is not None else {}
        return orjson.dumps({**head, "event": event, **fields, "connId": f"sim{conn.number}"}).decode()

    if op in ("subscribe", "unsubscribe", "login") and sim.over_rate(
            conn, conn.window.allow(sim.limits.okx_ops_per_hour, 3600.0),
            frame("error", code="60014", msg="Requests too frequent.")):
        return
    if op == "login":
        if (msg.get("args") or [{}])[0].get("apiKey") == "bad":
            sim.counters["refused_auth"] += 1
            conn.send(frame("error", code="60009", msg="Login failed."))
        else:
            conn.authed = True
            conn.send(frame("login", code="0", msg=""))
        return
    for arg in msg.get("args", []):
        channel, inst_id = arg.get("channel"), arg.get("instId")
        if op == "subscribe":
            if channel in ("books-l2-tbt", "books50-l2-tbt") and not conn.authed:
                sim.counters["refused_auth"] += 1
                conn.send(frame("error", code="60011", msg="Please log in"))
                continue
            if inst_id is not None and sim.refuses("okx", inst_id):
                conn.send(frame("error", code="60018", msg=f"Wrong URL or channel:{channel},instId:{inst_id} "
                                                           "doesn't exist"))
                continue
            sim.confirmed(1)
        conn.send(frame(op, arg=arg))
        if channel in ("books", "books-l2-tbt", "books50-l2-tbt"):
            if op == "subscribe":
                sim.subscribe(conn, inst_id, _okx_snapshot, ('"channel":"books"', f'"channel":"{channel}"'))
            elif op == "unsubscribe":
                sim.unsubscribe(conn, inst_id)
        elif channel == "instruments":
            conn.instrument_channel = op == "subscribe"
        elif channel in ("trades", "tickers") and op in ("subscribe", "unsubscribe"):
            sim.watch(conn, inst_id, channel, op == "subscribe")


def _bybit(sim: Simulator, conn: Conn, text: str) -> None:
    msg = orjson.loads(text)
    op, topics = msg.get("op"), msg.get("args", [])
    ack = {"success": True, "ret_msg": "pong" if op == "ping" else "", "conn_id": f"sim{conn.number}", "op": op}
    if op != "ping":
        ack["req_id"] = msg.get("req_id", "")
    limit = sim.limits.bybit_spot_args
    if op in ("subscribe", "unsubscribe") and conn.venue == "bybit-spot" and len(topics) > limit:
        sim.counters["refused_args"] += 1
        ack.update(success=False, ret_msg=f"args size >{limit}")
    elif op == "subscribe":
        refused = [t for t in topics if sim.refuses(conn.venue, t.rsplit(".", 1)[-1])]
        if refused:  # the whole request is refused
            ack.update(success=False, ret_msg=f"Invalid symbol :[{','.join(refused)}]")
        else:
            sim.confirmed(len(topics))
    conn.send(orjson.dumps(ack).decode())
    if op == "ping" or not ack["success"]:
        return
    for topic in topics:
        if conn.venue == "bybit-option" and topic.startswith("publicTrade.") and "-" not in topic:
            coins = conn.coin_trades  # option trades: one topic per base coin
            (coins.add if op == "subscribe" else coins.discard)(topic.split(".", 1)[1])
            continue
        if topic.startswith(("publicTrade.", "tickers.")) and op in ("subscribe", "unsubscribe"):
            sim.watch(conn, topic.split(".", 1)[1], topic, op == "subscribe")
            continue
        if not topic.startswith("orderbook."):
            continue
        symbol = topic.rsplit(".", 1)[1]
        if op == "subscribe":
            sim.subscribe(conn, symbol, lambda inst: _bybit_message(inst, *inst.book.levels(), "snapshot"),
                          (f'"topic":"orderbook.200.{symbol}"', f'"topic":"{topic}"'))
        elif op == "unsubscribe":
            sim.unsubscribe(conn, symbol)


def _coinbase(sim: Simulator, conn: Conn, text: str) -> None:
    msg = orjson.loads(text)
    kind, channel, products = msg.get("type"), msg.get("channel"), msg.get("product_ids", [])
    if channel == "heartbeats":
        conn.heartbeats = kind == "subscribe"
    if kind == "subscribe":
        refused = [p for p in products if sim.refuses("coinbase", p)]
        for product in refused:
            conn.send(orjson.dumps({"type": "error", "message": "Failed to subscribe",
                                    "reason": f"{product} is not a valid product"}).decode())
        products = [p for p in products if p not in refused]
        sim.confirmed(len(products) or 1)
    conn.send(orjson.dumps({"channel": "subscriptions", "timestamp": _iso(), "sequence_num": conn.next_seq(),
                            "events": [{"subscriptions": {channel: products}}]}).decode())
    if channel in ("market_trades", "ticker"):
        for product in products:
            sim.watch(conn, product, channel, kind == "subscribe")
        return
    if channel != "level2":
        return
    def snapshot(inst: Instrument) -> str:
        seq = conn.next_seq()
        sim._record_truth(inst, seq, conn.number)
        return _coinbase_event(inst, "snapshot", seq, *inst.book.levels())

    for product in products:
        if kind == "subscribe":
            sim.subscribe(conn, product, snapshot)
        else:
            sim.unsubscribe(conn, product)


#: Hyperliquid's data channels (per coin) and what a coin may look like
HYPERLIQUID_CHANNELS = ("l2Book", "trades", "bbo", "activeAssetCtx")
_HL_COIN = re.compile(r"^(?:(?:[a-z0-9]{1,16}:)?[A-Za-z0-9]{1,24}|[A-Za-z0-9]{1,24}/[A-Za-z0-9]{1,24}|@\d{1,6})$")


def _hyperliquid(sim: Simulator, conn: Conn, text: str) -> None:
    """``{"method":"ping"}`` → pong; ``subscribe``/``unsubscribe`` one subscription each, answered on
    ``subscriptionResponse``. An unknown (or unlisted) coin, or a bad ``nSigFigs``/``mantissa``,
    closes the whole connection, as the venue does."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        msg = None
    if not isinstance(msg, dict):
        conn.send(orjson.dumps({"channel": "error", "data": f"Error parsing JSON into valid websocket request: "
                                                            f"{text[:100]}"}).decode())
        return
    method = msg.get("method")
    if method == "ping":
        conn.send('{"channel":"pong"}')
        return
    sub = msg.get("subscription")
    if method not in ("subscribe", "unsubscribe") or not isinstance(sub, dict):
        conn.send(orjson.dumps({"channel": "error", "data": f"Error parsing JSON into valid websocket request: "
                                                            f"{text[:100]}"}).decode())
        return
    kind, coin = sub.get("type"), sub.get("coin")
    if kind not in HYPERLIQUID_CHANNELS:
        conn.send(orjson.dumps({"channel": "error", "data": f"Invalid subscription {orjson.dumps(sub).decode()}"})
                  .decode())
        return
    figs, mantissa = sub.get("nSigFigs"), sub.get("mantissa")
    bad_figs = figs is not None and figs not in (2, 3, 4, 5) or mantissa is not None and (
        figs != 5 or mantissa not in (1, 2, 5))
    unknown = not isinstance(coin, str) or not _HL_COIN.match(coin) or sim.refuses("hyperliquid", coin)
    if method == "subscribe" and (unknown or bad_figs):
        if bad_figs:
            sim.counters["refused_args"] += 1
        log.info("hyperliquid connection %d: subscription %s refused: the connection is closed", conn.number, sub)
        conn.close(1000, "")  # the venue closes the whole connection: every subscription on it is gone
        return
    assert isinstance(coin, str)
    cid = f"{kind}:{coin}"
    if method == "subscribe" and cid in conn.channels:
        conn.send(orjson.dumps({"channel": "error", "data": f"Already subscribed: {orjson.dumps(sub).decode()}"})
                  .decode())
        return
    if method == "unsubscribe" and cid not in conn.channels:
        conn.send(orjson.dumps({"channel": "error", "data": f"Already unsubscribed: {orjson.dumps(sub).decode()}"})
                  .decode())
        return
    on = method == "subscribe"
    (conn.channels.add if on else conn.channels.discard)(cid)
    conn.send(orjson.dumps({"channel": "subscriptionResponse", "data": {"method": method,
                                                                         "subscription": sub}}).decode())
    if on:
        sim.confirmed(1)
    if kind == "l2Book":
        if on:
            sim.subscribe(conn, coin, sim.hyperliquid_snapshot)
        else:
            sim.unsubscribe(conn, coin)
        return
    sim.watch(conn, coin, kind, on)
    if on and kind == "trades":  # the first trades message repeats the recent trades
        inst = sim.instrument("hyperliquid", coin)
        if inst.recent_trades:
            conn.send(market.hyperliquid_trades(list(inst.recent_trades)), inst)


def _dydx(sim: Simulator, conn: Conn, text: str) -> None:
    """``subscribe``/``unsubscribe`` one channel each (``v4_orderbook``, ``v4_trades`` per market,
    ``v4_markets``): ``subscribed`` with the channel's initial data, ``unsubscribed``, or an
    ``error`` naming the channel; every message numbered on the connection (``message_id``)."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        msg = {}
    if not isinstance(msg, dict):
        msg = {}
    kind, channel, market_id = msg.get("type"), msg.get("channel"), msg.get("id")

    def error(message: str) -> None:
        body: dict[str, Any] = {"type": "error", "connection_id": _dydx_id(conn), "message_id": conn.next_seq(),
                                "message": message}
        if isinstance(channel, str):
            body["channel"] = channel
        if isinstance(market_id, str):
            body["id"] = market_id
        conn.send(orjson.dumps(body).decode())

    if kind not in ("subscribe", "unsubscribe"):
        error(f"Invalid message: type must be subscribe or unsubscribe, got {str(kind)[:40]}")
        return
    if not conn.window.allow(sim.limits.dydx_subs_per_s):  # the venue's limit; past it: an error, closed
        over = {"type": "error", "connection_id": _dydx_id(conn), "message_id": conn.next_seq(),
                "message": f"Rate limit exceeded: more than {sim.limits.dydx_subs_per_s} subscribe/unsubscribe "
                           "a second"}
        sim.over_rate(conn, False, orjson.dumps(over).decode())
        return
    if channel not in ("v4_orderbook", "v4_trades", "v4_markets"):
        error(f"Invalid channel: {str(channel)[:40]}")
        return
    per_market = channel != "v4_markets"
    if per_market and (not isinstance(market_id, str) or not market_id):
        error(f"Invalid id for channel {channel}")
        return
    symbol = market_id if isinstance(market_id, str) else ""
    cid = f"{channel}:{symbol}" if per_market else channel
    if kind == "unsubscribe":
        if cid not in conn.channels:
            error(f"Invalid unsubscribe message: not subscribed to {channel} {market_id or ''}".rstrip())
            return
        conn.channels.discard(cid)
        if channel == "v4_orderbook":
            sim.unsubscribe(conn, symbol)
        elif channel == "v4_trades":
            sim.watch(conn, symbol, "v4_trades", False)
        else:
            conn.markets = False
        head = {"type": "unsubscribed", "connection_id": _dydx_id(conn), "message_id": conn.next_seq(),
                "channel": channel, **({"id": symbol} if per_market else {})}
        conn.send(orjson.dumps(head).decode())
        return
    if cid in conn.channels:
        error(f"Invalid subscribe message: already subscribed ({cid})")
        return
    if per_market and sim.refuses("dydx", symbol):
        error(f"Invalid subscription id for channel: ({channel}-{market_id})")
        return
    conn.channels.add(cid)
    sim.confirmed(1)
    if channel == "v4_orderbook":
        sim.subscribe(conn, symbol, lambda inst: _dydx_snapshot(inst, conn))
    elif channel == "v4_trades":
        sim.watch(conn, symbol, "v4_trades", True)
        inst = sim.instrument("dydx", symbol)
        conn.send(market.dydx_message("subscribed", _dydx_id(conn), conn.next_seq(), channel, symbol,
                                      {"trades": list(reversed(inst.recent_trades))}), inst)  # newest first
    else:
        conn.markets = True
        conn.send(market.dydx_message("subscribed", _dydx_id(conn), conn.next_seq(), channel, "", sim.dydx_markets()))


HANDLERS: dict[str, Callable[[Simulator, Conn, str], None]] = {
    "deribit": _deribit, "binance": _binance, "okx": _okx, "bybit": _bybit, "coinbase": _coinbase,
    "hyperliquid": _hyperliquid, "dydx": _dydx,
}


async def serve(host: str, port: int, rate: float, seed: int = 0) -> None:
    """Run the simulator until cancelled."""
    sim = Simulator(rate=rate, seed=seed)
    runner = web.AppRunner(sim.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("venue simulator on http://%s:%d (rate %.1f updates/s per instrument)", host, port, rate)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
