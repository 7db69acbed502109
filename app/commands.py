"""The project's own commands: ``faust -A app <command>``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import orjson
from faust.cli import AppCommand, argument, option

from app.capture.formats import FORMATS
from app.errors import BookstreamError
from app.venues import VENUES
from app.wire import BadFrame, RawFrame, decode_record
from app.worker import app, settings

log = logging.getLogger(__name__)


def _show_our_logs() -> None:
    """faust sets up command logging at WARN; let bookstream's own loggers speak at LOG_LEVEL.

    Only the handlers are lowered: faust's and aiokafka's loggers keep their level.
    """
    level = logging.getLevelName(settings.log_level.upper())
    for handler in logging.getLogger().handlers:
        if handler.level > level:
            handler.setLevel(level)


def _fail(exc: BookstreamError) -> None:
    print(f"bookstream: error: {exc}", file=sys.stderr)
    raise SystemExit(1)


@app.command(
    argument("paths", nargs=-1, required=True, type=Path),
    option("--format", "fmt", type=str, default="native",
           help=f"Capture format: {', '.join(FORMATS)}."),
    option("--venue", type=str, default=None,
           help=f"Venue id when the capture does not say it: {', '.join(VENUES)}."),
    option("--symbol", type=str, default=None,
           help="Only this venue symbol (and the symbol of captures that do not name it)."),
    option("--speed", type=float, default=None,
           help="Pace by original receive times, X times real time (default: as fast as possible)."),
    option("--max", "max_", is_flag=True, default=False, help="As fast as possible (the default)."),
)
async def replay(self: AppCommand, paths: tuple[Path, ...], fmt: str, venue: str | None,
                 symbol: str | None, speed: float | None, max_: bool) -> None:
    """Produce captured frames into the raw topics exactly as live ingestion would."""
    from app.replay import replay as run

    if speed is not None and max_:
        _fail(BookstreamError("--speed and --max exclude each other"))
    try:
        summary = await run(settings, list(paths), fmt, venue, symbol, None if max_ else speed)
    except BookstreamError as exc:
        _fail(exc)
        return
    for line in summary.lines():
        print(line, file=sys.stderr)




@app.command(
    argument("topic", type=str),
    option("--from-beginning", is_flag=True, default=False, help="Start at the oldest record."),
    option("--count", type=int, default=0,
           help="Stop after this many lines (records; frames for raw.<venue>; 0: never)."),
)
async def tail(self: AppCommand, topic: str, from_beginning: bool, count: int) -> None:
    """Print a topic's records as JSON lines (TOPIC without TOPIC_PREFIX, e.g. book.top); for raw.<venue>,
    one line per frame."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from app.kafka import client_auth, unreachable

    consumer = AIOKafkaConsumer(
        settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest", **client_auth(settings),
    )
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        _fail(unreachable(settings, exc))
    seen = 0
    frames = topic.startswith("raw.") and topic != "raw.deadletter"
    try:
        async for msg in consumer:
            key = msg.key.decode("utf-8", "replace") if msg.key else ""
            if frames:  # raw records carry batches of frames: one line per frame
                lines = [_frame_line(msg.partition, msg.offset, index, item)
                         for index, item in enumerate(decode_record(msg.key, msg.value, msg.headers))]
            else:
                value = msg.value.decode("utf-8", "replace") if msg.value else "null"
                lines = [f'{{"key":"{key}","partition":{msg.partition},"offset":{msg.offset},"value":{value}}}']
            for line in lines[: count - seen if count else None]:
                print(line, flush=True)
                seen += 1
            if count and seen >= count:
                break
    finally:
        await consumer.stop()


def _frame_line(partition: int, offset: int, index: int, item: RawFrame | BadFrame) -> str:
    where = {"partition": partition, "offset": offset, "index": index}
    if isinstance(item, BadFrame):
        return orjson.dumps({"key": item.key, **where, "error": f"{item.reason}: {item.detail}"}).decode()
    return orjson.dumps({"key": item.key, **where, "ts": item.ts, "kind": item.kind.value, "conn": item.conn,
                         "frame": item.data.decode("utf-8", "replace")}).decode()


@app.command(
    option("--host", type=str, default="127.0.0.1", help="Address to listen on."),
    option("--port", type=int, default=8765, help="Port for every venue's WebSocket and REST endpoint."),
    option("--rate", type=float, default=10.0, help="Book updates per second per instrument (bursts on top)."),
    option("--seed", type=int, default=0, help="Random seed of the order-flow model."),
)
async def simulate(self: AppCommand, host: str, port: int, rate: float, seed: int) -> None:
    """Run the local venue simulator (every venue's protocol over real WebSockets)."""
    from app.simulator.server import serve

    _show_our_logs()
    if rate <= 0:
        _fail(BookstreamError("--rate must be greater than 0"))
    print(f"simulator: http://{host}:{port}/  (FEED=sim SIM_URL=http://{host}:{port})", file=sys.stderr, flush=True)
    try:
        await serve(host, port, rate, seed)
    except OSError as exc:
        _fail(BookstreamError(f"cannot listen on {host}:{port}: {exc.strerror}"))


async def _ingest(feeds: str | None, produce: bool, record_dir: Path | None, rotate_mb: float) -> None:
    from app import feeds as feeds_mod
    from app.ingest.service import Ingest

    _show_our_logs()
    try:
        config = feeds_mod.load(feeds_override=feeds)
        service = Ingest(settings, config, produce=produce, record_dir=record_dir, rotate_mb=rotate_mb,
                         buffer_mb=settings.ingest_buffer_mb)
        if produce:
            from app.kafka import ensure_topics

            await ensure_topics(settings, app.runtime.topics.all)
        await service.run()
    except BookstreamError as exc:
        _fail(exc)


@app.command(
    option("--feeds", type=str, default=None, help="Feeds to ingest (default: FEEDS / FEEDS_FILE)."),
    option("--record", "record_dir", type=Path, default=None, help="Also write a native capture into this folder."),
    option("--rotate-mb", type=float, default=256.0, help="Start a new capture file past this size."),
)
async def ingest(self: AppCommand, feeds: str | None, record_dir: Path | None, rotate_mb: float) -> None:
    """Ingest live venue feeds into the raw topics (FEED=live, or FEED=sim for the simulator)."""
    await _ingest(feeds, True, record_dir, rotate_mb)


@app.command(
    option("--out", "out", type=Path, required=True, help="Folder for the native capture files."),
    option("--rotate-mb", type=float, default=256.0, help="Start a new capture file past this size."),
    option("--feeds", type=str, default=None, help="Feeds to record (default: FEEDS / FEEDS_FILE)."),
    option("--produce", is_flag=True, default=False, help="Also produce to the raw topics, like ingest."),
)
async def record(self: AppCommand, out: Path, rotate_mb: float, feeds: str | None, produce: bool) -> None:
    """Record venue feeds to native capture files (replay them later with `replay`)."""
    await _ingest(feeds, produce, out, rotate_mb)
