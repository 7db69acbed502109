"""The guard of every endpoint that changes what the automation does (rule states today; fills,
positions and collateral as they get endpoints): the read-only views stay open, a control request
must prove it is not a browser tricked by another site.

A web page a trader opens can make the browser send a "simple" cross-site POST (``text/plain``,
``application/x-www-form-urlencoded``, ``multipart/form-data``) to ``127.0.0.1`` without asking
anyone, and a page on a domain it controls can re-point that name at ``127.0.0.1`` (DNS
rebinding) and then read the answers too. So a control request is refused (403, 415 or 401, one
line in ``{"error"}``) unless:

* its body is declared ``application/json`` — a cross-site request can only send that after a
  CORS preflight, which this server never approves;
* its ``Host`` names this server: a loopback name, ``WEB_HOST`` or one of ``WEB_ALLOWED_HOSTS``
  (a rebound foreign name is refused);
* its ``Origin``, when a browser sends one, is this server's own (the same host and port as
  the ``Host`` it asked: only this server listens there), and the browser does not call it
  ``cross-site`` (``Sec-Fetch-Site``);
* with ``WEB_CONTROL_TOKEN`` set (required when ``WEB_HOST`` is not a loopback address), it
  carries ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from app import metrics
from app.config import Settings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
WILDCARDS = frozenset({"0.0.0.0", "::", "[::]", ""})  # noqa: S104 - names of "every address", compared only


def _host_name(authority: str) -> str:
    """``host`` of ``host[:port]`` (an IPv6 literal keeps its brackets off), lower case."""
    parts = urlsplit(f"//{authority}")
    return (parts.hostname or "").lower()


def refusal(settings: Settings, method: str, headers: Any) -> tuple[int, str] | None:
    """Why a control request with these ``headers`` is refused — (status, one line) — or None."""
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return 415, (f"{method} needs Content-Type: application/json (got {content_type or 'none'}): "
                     "a control request is never a plain form or text post")
    host = headers.get("Host") or ""
    name = _host_name(host)
    allowed = set(LOOPBACK_NAMES) | set(settings.web_allowed_hosts)
    bound = settings.web_host.strip().lower()
    if bound not in WILDCARDS:
        allowed.add(bound.strip("[]"))
    open_names = bound in WILDCARDS and not settings.web_allowed_hosts  # any name: the token guards
    if not open_names and name not in allowed:
        return 403, (f"Host {host!r} is not this server (allowed: {', '.join(sorted(allowed))}; add a name with "
                     "WEB_ALLOWED_HOSTS)")
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.netloc.lower() != host.lower():
            return 403, f"Origin {origin!r} is not this server ({host}): a control request comes from its own pages"
    if (headers.get("Sec-Fetch-Site") or "").lower() == "cross-site":
        return 403, "a cross-site request (Sec-Fetch-Site: cross-site) may not change the automation"
    token = settings.web_control_token
    if token is not None:
        scheme, _, given = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return 401, "this control endpoint needs 'Authorization: Bearer <WEB_CONTROL_TOKEN>'"
    return None


def guarded(settings: Settings, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``handler`` (a Faust view's method) behind :func:`refusal`."""

    async def guard(self: Any, request: Any, **kwargs: Any) -> Any:
        refused = refusal(settings, request.method, request.headers)
        if refused is not None:
            status, line = refused
            metrics.count("web_control_refused")
            log.warning("refused %s %s: %s", request.method, request.path, line)
            return self.json({"error": line}, status=status)
        return await handler(self, request, **kwargs)

    return guard
