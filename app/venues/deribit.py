"""Deribit ``book.{instrument}.{raw|100ms|agg2}`` over JSON-RPC 2.0.

Wire schema: ``{"jsonrpc":"2.0","method":"subscription","params":{"channel":…,"data":{
"type":"snapshot"|"change","timestamp":ms,"instrument_name":…,"change_id":…,
"prev_change_id":… (absent on snapshots),"bids":[[action,price,amount]…],"asks":[…]}}}``.
``action`` is new | change | delete; prices and amounts are JSON numbers.
"""

from __future__ import annotations

from typing import Any

from app.errors import FrameError
from app.venues._json import loads, obj
from app.venues.base import (
    BookUpdate,
    Continuity,
    Kind,
    Level,
    SequenceRule,
    Venue,
    as_int,
    ms_to_ns,
    num_str,
)


def _actions(raw: Any, what: str) -> list[Level]:
    if not isinstance(raw, list):
        raise FrameError("bad-levels", f"{what} is not a list")
    out: list[Level] = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3 or item[0] not in ("new", "change", "delete"):
            raise FrameError("bad-levels", f"{what} entry {str(item)[:40]}")
        out.append((num_str(item[1]), "0" if item[0] == "delete" else num_str(item[2])))
    return out


def _book_channel(msg: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    if msg.get("method") != "subscription":
        return None
    params = obj(msg.get("params"), "params")
    channel = params.get("channel")
    if not isinstance(channel, str):
        raise FrameError("bad-shape", "subscription without channel")
    parts = channel.split(".")
    if parts[0] != "book" or len(parts) != 3:
        return None
    return parts[1], obj(params.get("data"), "data")


class DeribitAdapter:
    venue = "deribit"

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        msg = obj(loads(frame), "frame")
        if msg.get("method") != "subscription":
            return []
        channel = obj(msg.get("params"), "params").get("channel")
        parts = channel.split(".") if isinstance(channel, str) else []
        return [parts[1]] if len(parts) >= 2 and parts[1] else []

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        found = _book_channel(obj(loads(frame), "frame"))
        if found is None:
            return []
        name, data = found
        if name != symbol:
            raise FrameError("wrong-instrument", f"frame for {name!r}, keyed {symbol!r}")
        kind_ = data.get("type")
        if kind_ not in ("snapshot", "change"):
            raise FrameError("bad-shape", f"book type {str(kind_)[:20]!r}")
        snapshot = kind_ == "snapshot"
        return [
            BookUpdate(
                snapshot=snapshot,
                seq=as_int(data.get("change_id"), "change_id"),
                prev=None if snapshot else as_int(data.get("prev_change_id"), "prev_change_id"),
                bids=_actions(data.get("bids", []), "bids"),
                asks=_actions(data.get("asks", []), "asks"),
                ts_exchange=ms_to_ns(data.get("timestamp")),
            )
        ]

    def conn_seq(self, frame: bytes) -> int | None:
        return None


class DeribitRule(SequenceRule):
    """A change follows when its ``prev_change_id`` is the ``change_id`` last applied."""

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        if self.repeated(last, upd):
            return Continuity.DUPLICATE
        return Continuity.OK if upd.prev == last else Continuity.GAP


VENUE = Venue("deribit", DeribitAdapter(), DeribitRule())
