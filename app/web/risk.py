"""The risk engine's page and API: what :class:`app.risk.service.RiskService` of this worker
computes (every worker computes every portfolio, so any worker answers for all of them).

``GET  /api/risk``                        the engine's snapshot: exposure, scenarios, rules (and their
                                          state), latest hedge signals and blocked records, raised
                                          alerts, NBBO, positions; 503 ``{"error"}`` while there is no
                                          engine (RISK_ENABLED=false, or not started yet)
``POST /api/risk/rules/{rule}/state``     body ``{"state": "active" | "reduce-only" | "halted"}``: the
                                          new state is published on ``risk.rules`` and applies when read
                                          back (every worker); 202 ``{"rule", "state"}``, 404 unknown
                                          rule, 400 bad body or state, 503 no engine (``{"error"}``);
                                          a control endpoint: 415/403/401 as app.web.control says
``GET  /risk``                            the risk page (``/events/risk``)
``GET  /events/risk[?only=nbbo,…]``       Server-Sent Events ``risk`` every 0.5 s: the snapshot without
                                          the records' ``inputs`` references, or only the named parts of
                                          it (the dashboard's NBBO table), or ``{"error"}`` while there
                                          is no engine
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from app.config import Settings
from app.web.control import guarded
from app.web.live import _file, _sse

if TYPE_CHECKING:
    from app.risk.service import RiskService

DISABLED = "risk engine disabled (RISK_ENABLED=false)"
STARTING = "risk engine not started yet"
LEAN = ("exposure", "scenarios", "margin", "hedge")  # records whose ``inputs`` the pushed snapshot leaves out


def register(app: Any, books: Any, settings: Settings) -> None:
    """``books`` is the worker's runtime: its ``risk`` (set when it starts) is read on each request."""

    def service() -> RiskService | None:
        risk: RiskService | None = getattr(books, "risk", None)
        return risk

    def unavailable() -> str:
        return DISABLED if not settings.risk.enabled else STARTING

    @app.page("/risk")
    async def risk_page(self: View, request: Request) -> Response:
        return _file(self, "risk.html")

    @app.page("/api/risk")
    async def api_risk(self: View, request: Request) -> Response:
        risk = service()
        if risk is None:
            return self.json({"error": unavailable()}, status=503)
        return self.bytes(orjson.dumps(risk.snapshot()), content_type="application/json",
                          headers={"Cache-Control": "no-cache"})

    async def set_state(self: View, request: Request, **kwargs: Any) -> Response:
        risk = service()
        if risk is None:
            return self.json({"error": unavailable()}, status=503)
        rule = kwargs["rule"]
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        state = body.get("state") if isinstance(body, dict) else None
        if not isinstance(state, str):
            return self.json({"error": 'the body must be JSON {"state": "active" | "reduce-only" | "halted"}'},
                             status=400)
        try:
            risk.set_rule_state(rule, state, "web")
        except KeyError as exc:
            return self.json({"error": _line(exc)}, status=404)
        except ValueError as exc:
            return self.json({"error": _line(exc)}, status=400)
        return self.json({"rule": rule, "state": state}, status=202)

    @app.page("/api/risk/rules/{rule}/state")
    class RuleState(View):
        post = guarded(settings, set_state)  # a control endpoint: app.web.control

    @app.page("/events/risk")
    class RiskEvents(View):
        async def get(self, request: Request, **kwargs: Any) -> Any:
            only = [p for p in request.query.get("only", "").split(",") if p]
            return await _sse(request, "risk", _producer(service, unavailable, only))


def _producer(service: Callable[[], RiskService | None], unavailable: Callable[[], str],
              only: list[str]) -> Callable[[], dict[str, Any]]:
    def produce() -> dict[str, Any]:
        risk = service()
        if risk is None:
            return {"error": unavailable()}
        snap = risk.snapshot()
        if only:
            snap = {"event_time": snap.get("event_time"), **{k: snap[k] for k in only if k in snap}}
        for part in LEAN:  # the page shows no input references (the API keeps them): ~10× less to push
            if part in snap:
                snap[part] = [{k: v for k, v in r.items() if k != "inputs"} for r in snap[part]]
        return snap

    return produce


def _line(exc: Exception) -> str:
    """An exception's message on one line (a KeyError's str() would quote it)."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return " ".join(text.split())
