"""bookstream: ``faust -A app worker`` finds the faust.App as ``app.app``.

Importing this package configures the app from the environment (``app.config``),
declares topics and tables, and registers the agents and the ``faust -A app <command>``
commands. A bad setting stops here with one clear line, not a traceback.
"""

from __future__ import annotations

import sys

from app.errors import ConfigError

try:
    # `from app import x`, never `import app.x`: the latter would rebind `app` to this package.
    from agents import books as _books  # noqa: F401  (registers the book agent)
    from agents import ingest as _ingest  # noqa: F401  (ingestion inside the worker when FEEDS is set)
    from app import commands as _commands  # noqa: F401  (faust -A app replay, ingest, …)
    from app import web as _web  # noqa: F401  (HTTP endpoints)
    from app.core import app, settings
except ConfigError as exc:
    print(f"bookstream: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

__all__ = ["app", "settings"]
