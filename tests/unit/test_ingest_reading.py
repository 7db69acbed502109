"""Ingestion's reader over a real WebSocket: a frame's receive time is when its bytes were read
from the socket, not when the reader came to it behind the rest of a burst."""

from __future__ import annotations

import asyncio
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
