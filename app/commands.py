"""The project's own commands: ``faust -A app <command>``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

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


