"""The worker's wiring: ``faust -A app worker`` (or ``faust -A app.main worker``).

Builds the faust.App from the environment (``app.worker``) and registers the book agent,
ingestion inside the worker, the ``faust -A app <command>`` commands and the web view. A bad
setting stops here with one clear line, not a traceback.
"""

from __future__ import annotations

import sys

from app.errors import ConfigError

try:
    from agents import books as _books  # noqa: F401  (the book agent)
    from agents import ingest
    from agents import report as _report  # noqa: F401  (the daily report, on a schedule)
    from app import commands as _commands  # noqa: F401  (faust -A app replay, ingest, …)
    from app import web
    from app.risk import cli as _risk_cli  # noqa: F401  (faust -A app positions, rules)
    from app.worker import app, settings
except ConfigError as exc:
    print(f"bookstream: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

web.register(app, app.runtime, settings, app.runtime.topics.assignment, ingest.service, app.runtime.consumer_lag,
             app.runtime.state.uncommitted)

__all__ = ["app", "settings"]
