"""The web view every worker serves on WEB_HOST:WEB_PORT (faust's aiohttp server), by concern:

* :mod:`app.web.api`     — ``/health``, ``/ready``, ``/api/books``, ``/api/books/{venue}/{instrument}``,
  ``/api/venues``
* :mod:`app.web.live`    — the dashboard and instrument pages, their static files, Server-Sent Events
* :mod:`app.web.metrics` — ``/metrics`` (Prometheus) and ``/metrics/counters``
* :mod:`app.web.risk`    — ``/risk`` (the risk page), ``/api/risk``, ``/api/risk/rules/{rule}/state``
  (POST), ``/events/risk``: the worker's risk engine
* :mod:`app.web.view`    — the :class:`~app.web.view.BookView` the pages read through, and the JSON
  shapes of a book

The worker hands the pages what they read (:func:`register`); nothing here imports the agents
or keeps module-level state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.web import api, live, metrics, risk
from app.web.view import BookView


def register(app: Any, books: BookView, settings: Settings, assignment_topic: str, ingest: Any | None,
             consumer_lag: Callable[[], dict[tuple[str, int], int]], uncommitted: Callable[[], int]) -> None:
    """Mount every page on ``app``: ``books`` is read, ``ingest`` (or None) reports the feeds."""
    rates = api.VenueRates(ingest)
    api.register(app, books, settings, assignment_topic, rates)
    live.register(app, books, rates)
    metrics.register(app, books, consumer_lag, uncommitted)
    risk.register(app, books, settings)  # reads ``books.risk`` (the runtime's engine, or None) per request
