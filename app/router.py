"""From a received frame to raw frames keyed by instrument: the one keying rule for ingestion
and replay (which then batch them into raw records, ``app.wire`` and ``app.batching``).

Keying:

* a frame about one instrument is keyed by it;
* a frame spanning several instruments (a Coinbase message with events for several
  products) is produced once per instrument, the same bytes under each key; each book
  agent reads only its own instrument's part;
* a frame about no instrument (subscription acks, heartbeats, pongs) is keyed
  ``<venue>:`` so that the raw topic still holds every frame for audit and replay.

Venues that number frames per connection (Coinbase ``sequence_num``) are checked here,
where the whole connection is visible: a gap cannot be attributed to one product, so
every instrument seen on that connection receives a ``conn`` record
``{"event": "gap", ...}`` and resyncs. (Live ingestion opens one Coinbase connection per
product by default, so a gap there touches exactly one book.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.errors import FrameError
from app.venues import adapter
from app.venues.base import Kind
from app.wire import RawFrame, conn_event


@dataclass
class _Conn:
    last_seq: int | None = None
    instruments: list[str] = field(default_factory=list)


class Router:
    """Stateful per connection (sequence tracking); one instance per ingest/replay run."""

    def __init__(self) -> None:
        self._conns: dict[str, _Conn] = {}
        self.unparseable = 0  # frames that could not even be routed (still produced, venue-keyed)

    def route(
        self, venue: str, conn: str, kind: Kind, frame: bytes, ts: int, url: str = "", symbol: str = ""
    ) -> list[RawFrame]:
        ad = adapter(venue)
        state = self._conns.setdefault(conn, _Conn())
        out: list[RawFrame] = []
        try:
            symbols = [symbol] if symbol else ad.route(kind, frame, url)
            seq = ad.conn_seq(frame) if kind is Kind.WS else None
        except FrameError:
            # Not even routable (corrupt JSON). If exactly one instrument of this connection is
            # named in its bytes, it is that instrument's (its book must resync); otherwise keep
            # it venue-keyed. Either way the agent dead-letters it.
            self.unparseable += 1
            text = frame.lower()  # Binance names streams in lower case
            named = [k for k in state.instruments if k.partition(":")[2].lower().encode() in text]
            symbols, seq = ([named[0].partition(":")[2]] if len(named) == 1 else []), None
        if seq is not None:
            if state.last_seq is not None and seq != state.last_seq + 1 and seq > state.last_seq:
                detail = f"{conn}: sequence_num {state.last_seq} → {seq}"
                for key in state.instruments:
                    out.append(RawFrame(key, ts, Kind.CONN, conn, conn_event("gap", detail)))
            if state.last_seq is None or seq > state.last_seq:
                state.last_seq = seq
        keys = [f"{venue}:{s}" for s in symbols] or [f"{venue}:"]
        for key in keys:
            if symbols and key not in state.instruments:
                state.instruments.append(key)
            out.append(RawFrame(key, ts, kind, conn, frame))
        return out

    def reset(self, venue: str, conn: str, ts: int, reason: str) -> list[RawFrame]:
        """A connection closed or was replaced: every instrument on it must resync."""
        state = self._conns.pop(conn, None)
        if state is None:
            return []
        return [RawFrame(key, ts, Kind.CONN, conn, conn_event("reset", reason)) for key in state.instruments]
