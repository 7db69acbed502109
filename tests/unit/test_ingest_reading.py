"""Ingestion's reader over a real WebSocket: a frame's receive time is when its bytes were read
from the socket, not when the reader came to it behind the rest of a burst; and the status line
of `faust -A app ingest` (which serves no /metrics) says where its share of the time went."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import websockets
from websockets.asyncio.server import Server, ServerConnection, serve

from app import feeds
from app.ingest.connection import FeedConnection, StampedConnection
from app.simulator.server import _text_frame
from app.venues import protocol

BURST = 3000


@pytest.fixture
async def burst_server() -> AsyncIterator[str]:
    """A server that writes BURST text frames in one write as soon as a client connects, then
    closes the connection."""
    async def handler(conn: ServerConnection) -> None:
        pad = b"x" * 200
        conn.transport.write(b"".join(_text_frame(b'{"n":%d,"pad":"%s"}' % (i, pad)) for i in range(BURST)))
        await conn.close()

    server: Server = await serve(handler, "127.0.0.1", 0)
    try:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_frames_receive_time_is_its_socket_read_not_the_readers_turn(burst_server: str) -> None:
    async with websockets.connect(burst_server, create_connection=StampedConnection, max_queue=None) as ws:
        assert isinstance(ws, StampedConnection)
        deadline = time.monotonic() + 20
        while len(ws.arrivals) < BURST:  # the whole burst read from the socket, none taken yet
            assert time.monotonic() < deadline, f"{len(ws.arrivals)} of {BURST} frames read"
            await asyncio.sleep(0.001)
        taken_from = time.time_ns()
        stamps = []
        for _ in range(BURST):
            await ws.recv()
            stamps.append(ws.received_at())
    assert max(stamps) <= taken_from  # stamped when read, not when the reader came to them
    assert stamps == sorted(stamps)
    assert len(set(stamps)) < BURST / 10  # one stamp per read of the socket, whatever it held


async def test_ingestion_stamps_each_frame_with_its_read(burst_server: str) -> None:
    """A venue connection hands each frame on with the time of the socket read that brought it."""
    emitted: list[tuple[int, int]] = []  # (receive time, when handed on)
    conn = FeedConnection("binance", ["BTCUSDT"], protocol("binance", feeds.LIVE["binance"]),
                          emit=lambda kind, data, ts, *_: emitted.append((ts, time.time_ns())),
                          reset=lambda *_: None, http=None)  # type: ignore[arg-type]
    await asyncio.wait_for(conn._connected(burst_server), timeout=60)
    assert len(emitted) == BURST
    assert all(ts <= handed for ts, handed in emitted)
    assert len({ts for ts, _ in emitted}) < BURST / 10  # a read's frames share its time


def test_the_status_line_gives_each_stage_since_the_last_line(caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from app import metrics
    from app.config import load
    from app.ingest.service import Ingest

    monkeypatch.setattr(metrics, "stage_counts", {s: [0] * (len(metrics.STAGE_BUCKETS) + 1) for s in metrics.STAGES})
    ing = Ingest(load(), feeds.load({"FEED": "sim", "FEEDS": "deribit:BTC-PERPETUAL"}), produce=False)
    for _ in range(98):
        metrics.observe_stage("ingest", 0.0003)  # under 0.5 ms
    metrics.observe_stage("ingest", 0.004)  # under 5 ms: the 99th of 100
    metrics.observe_stage("ingest", 0.2)
    metrics.observe_stage("raw_broker", 0.02)
    with caplog.at_level(logging.INFO, logger="app.ingest.service"):
        ing.report()
        metrics.observe_stage("raw_linger", 0.0009)
        ing.report()
        ing.report()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].endswith("; p50/p99 under (ms): ingest 0.5/5, raw_broker 25/25"), lines[0]
    assert lines[1].endswith("; p50/p99 under (ms): raw_linger 1/1"), lines[1]  # only what came since
    assert "p50/p99" not in lines[2]
