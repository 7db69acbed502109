"""Bybit v5 ``orderbook.{depth}.{symbol}`` for spot, linear, inverse and option.

Wire schema: ``{"topic":"orderbook.200.BTCUSDT","type":"snapshot"|"delta","ts":ms,
"cts":ms,"data":{"s":symbol,"b":[[price,size]…],"a":[…],"u":update id,"seq":cross seq}}``.
Size "0" deletes. ``u == 1`` means the venue restarted the book: treat it as a snapshot.
The venue id comes from the connection's endpoint (``/v5/public/{category}``); one venue id
per category, each with its own endpoint. The session pings with ``{"op":"ping"}``.
"""

from __future__ import annotations

from app.errors import FrameError
from app.venues._json import loads, obj
from app.venues.base import BookUpdate, Continuity, Kind, SequenceRule, Venue, as_int, levels, ms_to_ns
from app.venues.session import Endpoint, Protocol, dumps, next_id

CATEGORIES = ("spot", "linear", "inverse", "option")


class BybitAdapter:
    def __init__(self, venue: str) -> None:
        self.venue = venue

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        msg = loads(frame)
        topic = msg.get("topic") if isinstance(msg, dict) else None
        if not isinstance(topic, str) or "." not in topic:
            return []  # op acks, pongs
        symbol = topic.rsplit(".", 1)[1]
        return [symbol] if symbol else []

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        msg = obj(loads(frame), "frame")
        topic = msg.get("topic")
        if not isinstance(topic, str) or not topic.startswith("orderbook."):
            return []
        data = obj(msg.get("data"), "data")
        if data.get("s") != symbol or topic.rsplit(".", 1)[1] != symbol:
            raise FrameError("wrong-instrument", f"frame for {data.get('s')!r}")
        type_ = msg.get("type")
        if type_ not in ("snapshot", "delta"):
            raise FrameError("bad-shape", f"type {str(type_)[:20]!r}")
        u = as_int(data.get("u"), "u")
        return [
            BookUpdate(
                snapshot=type_ == "snapshot" or u == 1,
                restart=u == 1,  # whatever the type: never a duplicate of the old book
                seq=u,
                bids=levels(data.get("b", []), "b"),
                asks=levels(data.get("a", []), "a"),
                ts_exchange=ms_to_ns(msg.get("cts") or msg.get("ts")),
            )
        ]

    def conn_seq(self, frame: bytes) -> int | None:
        return None


class BybitRule(SequenceRule):
    """After a snapshot (or ``u == 1``, a restart: the adapter makes it a snapshot) ``u`` grows by 1."""

    def continuity(self, last: int | None, upd: BookUpdate) -> Continuity:
        if self.repeated(last, upd):
            return Continuity.DUPLICATE
        return Continuity.OK if last is not None and upd.seq == last + 1 else Continuity.GAP


class BybitProtocol(Protocol):
    def _op(self, op: str, symbols: list[str]) -> list[str]:
        return [dumps({"op": op, "args": [self.channel(s) for s in symbols], "req_id": str(next_id())})]

    def subscribe(self, symbols: list[str]) -> list[str]:
        return self._op("subscribe", symbols)

    def unsubscribe(self, symbols: list[str]) -> list[str]:
        return self._op("unsubscribe", symbols)

    def ping(self) -> str | None:
        return '{"op":"ping"}'


def _venue(category: str) -> Venue:
    live = Endpoint(f"wss://stream.bybit.com/v5/public/{category}", "orderbook.{depth}.{symbol}",
                    depth=100 if category == "option" else 200, max_per_conn=10 if category == "spot" else 50)
    return Venue(f"bybit-{category}", BybitAdapter(f"bybit-{category}"), RULE, BybitProtocol, live,
                 sim_ws_path=f"/ws/bybit/v5/public/{category}")


RULE = BybitRule()
VENUES = tuple(_venue(c) for c in CATEGORIES)
