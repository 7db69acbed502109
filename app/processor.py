"""One raw record in, effects out: the book agent's logic without Faust or Kafka.

The Faust agent (``agents.books``) feeds every record of the raw topics through
:meth:`Processor.handle` and turns the returned :class:`Outcome` into table writes and
downstream records. Tests use the same class to build reference books in-process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson

from app.errors import FrameError
from app.sync import SYNCED, Effects, Instrument
from app.venues import ADAPTERS, rule, split_key
from app.venues.base import Kind

#: Load a persisted instrument (None if it has never been seen on this partition).
Loader = Callable[[str], Instrument | None]


@dataclass(slots=True)
class Outcome:
    key: str
    inst: Instrument | None = None
    fx: Effects = field(default_factory=Effects)
    redelivered: bool = False  # offset already processed (at-least-once redelivery)
    dead: tuple[str, str] | None = None  # (reason, detail) for raw.deadletter


def header_map(headers: object) -> dict[str, bytes]:
    """Kafka headers as a dict, whatever shape the client gives (list of pairs or mapping)."""
    if not headers:
        return {}
    if isinstance(headers, Mapping):
        return {str(k): bytes(v or b"") for k, v in headers.items()}
    return {str(k): bytes(v or b"") for k, v in headers}  # type: ignore[attr-defined]


class Processor:
    """Keeps the instruments of the partitions this worker owns, loaded on first use."""

    def __init__(self, loader: Loader, buffer_limit: int = 20_000) -> None:
        self._loader = loader
        self.buffer_limit = buffer_limit
        self.instruments: dict[str, Instrument] = {}

    def clear(self) -> None:
        """Forget everything (partitions were revoked or reassigned); reloaded lazily."""
        self.instruments.clear()

    def instrument(self, key: str) -> Instrument:
        inst = self.instruments.get(key)
        if inst is None:
            inst = self._loader(key)
            if inst is None:
                venue, _ = split_key(key)
                inst = Instrument(key, rule(venue), self.buffer_limit)
            self.instruments[key] = inst
        return inst

    def handle(self, key: str, value: bytes, headers: dict[str, bytes], offset: int) -> Outcome:
        out = Outcome(key)
        try:
            venue, symbol = split_key(key)
        except ValueError as exc:
            out.dead = ("bad-key", str(exc))
            return out
        ad = ADAPTERS.get(venue)
        if ad is None:
            out.dead = ("unknown-venue", venue)
            return out
        try:
            kind = Kind(headers.get("kind", b"ws").decode())
            ts_recv = int(headers.get("ts", b"0") or 0)
        except ValueError:
            out.dead = ("bad-headers", repr(headers)[:200])
            return out
        conn = headers.get("conn", b"").decode("utf-8", "replace")
        if not symbol:  # venue-level frame (acks, heartbeats): audit only
            if kind is Kind.WS:
                try:
                    ad.route(kind, value)
                except FrameError as exc:
                    out.dead = (exc.reason, exc.detail)
            return out
        inst = out.inst = self.instrument(key)
        if offset <= inst.offset:
            out.redelivered = True
            return out
        fx = out.fx
        if kind is Kind.CONN:
            try:
                event = orjson.loads(value)
                inst.connection_event(str(event["event"]), str(event.get("detail", "")), fx)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                out.dead = ("bad-conn-event", value[:200].decode("utf-8", "replace"))
        else:
            try:
                updates = ad.parse(kind, value, symbol)
            except FrameError as exc:
                out.dead = (exc.reason, exc.detail)
                # A lost frame may have been a delta: the book can no longer be trusted.
                inst.connection_event("bad frame", exc.reason, fx)
            else:
                for upd in updates:
                    try:
                        inst.step(upd, value, conn, ts_recv, fx)
                    except FrameError as exc:  # bad level values inside a well-formed frame
                        out.dead = (exc.reason, exc.detail)
                        inst.connection_event("bad frame", exc.reason, fx)
                        break
        inst.offset = offset
        return out

    def synced(self) -> int:
        return sum(1 for i in self.instruments.values() if i.status == SYNCED)
