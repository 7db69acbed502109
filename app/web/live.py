"""The pages a person looks at, pushed live over Server-Sent Events.

``/``                                     dashboard (``/events`` every 0.5 s)
``/book/{venue}/{instrument}``            ladder, depth chart, spread/imbalance series, ticker
                                          fields and trades tape (``/events/book/{venue}/{instrument}``)
``/options/{venue}/{underlying}``         options chain by expiry and the smile, venue vs ours
                                          (``/events/options/{venue}/{underlying}``)
``/static/{name}``                        the pages' CSS and JS (``app/web/static``, no CDN)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiohttp import web
from faust.web import Request, Response, View

from app.web.api import VenueRates
from app.web.view import BookView, summary, with_derived

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "application/javascript"}
PUSH_INTERVAL_S = 0.5


def _file(view: View, name: str) -> Response:
    path = STATIC / name
    return view.bytes(path.read_bytes(), content_type=CONTENT_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


async def _sse(request: Request, event: str, produce: Callable[[], Any]) -> web.StreamResponse:
    """Server-Sent Events: ``produce()`` pushed every PUSH_INTERVAL_S until the client leaves."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    aio_request: Any = request  # faust's Request is aiohttp's with a narrower type
    await resp.prepare(aio_request)
    try:
        while True:
            payload = orjson.dumps(produce())
            await resp.write(b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n")
            await asyncio.sleep(PUSH_INTERVAL_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


def register(app: Any, books: BookView, rates: VenueRates) -> None:
    names = {p.name for p in STATIC.iterdir()}

    @app.page("/")
    async def dashboard(self: View, request: Request) -> Response:
        return _file(self, "index.html")

    @app.page("/book/{venue}/{instrument}")
    async def book_page(self: View, request: Request, venue: str, instrument: str) -> Response:
        return _file(self, "book.html")

    @app.page("/options/{venue}/{underlying}")
    async def options_page(self: View, request: Request, venue: str, underlying: str) -> Response:
        return _file(self, "options.html")

    @app.page("/static/{name}")
    async def static(self: View, request: Request, name: str) -> Response:
        if name not in names:
            return self.json({"error": "not found"}, status=404)
        return _file(self, name)

    @app.page("/events")
    class Events(View):
        async def get(self, request: Request, **kwargs: Any) -> Any:
            def snapshot() -> dict[str, Any]:
                rows = sorted((with_derived(summary(i)) for i in books.books()), key=lambda r: r["key"])
                return {"books": rows, "venues": rates.status(),
                        "chains": [{"venue": v, "underlying": u} for v, u in books.underlyings()]}

            return await _sse(request, "books", snapshot)

    @app.page("/events/book/{venue}/{instrument}")
    class BookEvents(View):
        async def get(self, request: Request, **kwargs: Any) -> Any:
            key = f"{kwargs['venue']}:{kwargs['instrument']}"

            def snapshot() -> dict[str, Any]:
                inst = books.find(key)
                if inst is None:
                    return {"state": "unknown", "reason": "not on this worker", "seq": None, "bids": [], "asks": []}
                body = summary(inst)
                body.update(msgspec.to_builtins(inst.book.aggregates(25)))
                body["ticker"] = books.ticker(key)
                body["trades"] = [orjson.Fragment(t) for t in books.trades(key)]
                return body

            return await _sse(request, "book", snapshot)

    @app.page("/events/options/{venue}/{underlying}")
    class OptionsEvents(View):
        async def get(self, request: Request, **kwargs: Any) -> Any:
            venue, underlying = kwargs["venue"], kwargs["underlying"]

            def snapshot() -> dict[str, Any]:
                return {"chains": [orjson.Fragment(c) for c in books.chains(venue, underlying)]}

            return await _sse(request, "options", snapshot)
