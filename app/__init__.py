"""bookstream: correct, replayable per-instrument crypto order books on Kafka.

``faust -A app worker`` (and every ``faust -A app <command>``) finds the faust.App as
``app.app``: it is built on first access by ``app.main``, which reads the settings and wires
the agents, the commands and the web view. Importing any other module of this package
(``app.book``, ``app.sync``, ``app.wire``, ``app.state`` …) starts nothing and reads no
environment.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "settings"):
        from app import main

        return getattr(main, name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
