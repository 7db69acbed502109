"""The project's own commands: ``faust -A app <command>``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from faust.cli import AppCommand, argument, option

from app.capture.formats import FORMATS
from app.core import app, settings
from app.errors import BookstreamError
from app.venues import VENUES

log = logging.getLogger(__name__)


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
    option("--count", type=int, default=0, help="Stop after this many records (0: never)."),
)
async def tail(self: AppCommand, topic: str, from_beginning: bool, count: int) -> None:
    """Print a topic's records as JSON lines (TOPIC without TOPIC_PREFIX, e.g. book.top)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from app.kafka import unreachable

    consumer = AIOKafkaConsumer(
        settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        _fail(unreachable(settings, exc))
    seen = 0
    try:
        async for msg in consumer:
            key = msg.key.decode("utf-8", "replace") if msg.key else ""
            value = msg.value.decode("utf-8", "replace") if msg.value else "null"
            print(f'{{"key":"{key}","partition":{msg.partition},"offset":{msg.offset},"value":{value}}}', flush=True)
            seen += 1
            if count and seen >= count:
                break
    finally:
        await consumer.stop()
