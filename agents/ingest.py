"""Ingestion inside the worker: when FEEDS (or FEEDS_FILE) is set and INGEST_IN_WORKER is on.

With several workers, set INGEST_IN_WORKER=false and run one `faust -A app ingest` instead,
or every worker would subscribe to the same feeds (harmless for the books — duplicates
are recognised by sequence — but twice the traffic).
"""

from __future__ import annotations

import logging
import os

from app import feeds
from app.ingest.service import Ingest
from app.worker import app, settings

log = logging.getLogger(__name__)

#: Validated at import: a malformed FEEDS stops the worker at start with one clear line.
config = feeds.load() if (os.environ.get("FEEDS") or os.environ.get("FEEDS_FILE")) else None
service: Ingest | None = (
    Ingest(settings, config, buffer_mb=settings.ingest_buffer_mb)
    if config is not None and config.feeds and settings.ingest_in_worker else None
)


@app.task
async def run_ingest() -> None:
    if service is not None:
        log.info("ingesting %s feeds inside the worker", config.mode if config else "")
        await service.run()
