"""What the web view is handed: a small read-only interface over the worker's books.

The worker (``app.runtime.BookRuntime``) implements :class:`BookView`; the pages only read
through it. Also the JSON shapes of a book (summary and detail), shared by the API and the
live pages. No Faust here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import msgspec

from app.book import mid_spread
from app.sync import SYNCED, Instrument
from app.venues import split_key


class BookView(Protocol):
    """Read access to the books of one worker."""

    def books(self) -> Iterable[Instrument]:
        """The books this worker owns and serves live."""
        ...

    def find(self, key: str) -> Instrument | None:
        """The live book of ``key`` if this worker owns it."""
        ...

    def owns(self, key: str) -> bool:
        """Is ``key``'s table partition active on this worker?"""
        ...

    def ready(self) -> bool:
        """Are the partitions of the current assignment restored and loaded?"""
        ...

    def caught_up(self) -> bool:
        """Has this worker applied its raw partitions to (nearly) their end? (Else a book it owns
        may still be in a record it has not applied.)"""
        ...

    def local_copy(self, key: str) -> tuple[Instrument | None, str]:
        """This worker's copy of a book it does not serve live: ``standby`` or ``recovering``."""
        ...

    def trades(self, key: str) -> list[bytes]:
        """The latest ``trades`` records of ``key`` on this worker, oldest first."""
        ...

    def ticker(self, key: str) -> dict[str, Any] | None:
        """The latest ticker fields of ``key`` (merged across partial tickers)."""
        ...

    def chains(self, venue: str, underlying: str) -> list[bytes]:
        """The latest ``options.chain`` record of each expiry of ``underlying`` on this worker."""
        ...

    def underlyings(self) -> list[tuple[str, str]]:
        """(venue, underlying) of every options chain on this worker."""
        ...


def summary(inst: Instrument) -> dict[str, Any]:
    venue, symbol = split_key(inst.key)
    bpx, bsz, apx, asz = inst.book.top()
    return {
        "venue": venue, "instrument": symbol, "key": inst.key, "state": inst.status,
        "reason": inst.reason, "seq": inst.seq, "bid_px": bpx, "bid_sz": bsz, "ask_px": apx,
        "ask_sz": asz, "ts_exchange": inst.ts_exchange, "ts_recv": inst.ts_recv,
        "levels": {"bids": len(inst.book.bids), "asks": len(inst.book.asks)},
        "counters": dict(inst.counters),
    }


def detail(inst: Instrument, depth: int, source: str) -> dict[str, Any]:
    """``source``: ``owner`` (the live book), or a copy while the owner cannot answer:
    ``standby`` (this worker's standby replica) or ``recovering`` (being restored here)."""
    body = summary(inst)
    body.update(msgspec.to_builtins(inst.book.aggregates(depth)))
    body["synced"] = inst.status == SYNCED and source == "owner"
    body["source"] = source
    return body


def with_derived(row: dict[str, Any]) -> dict[str, Any]:
    """A summary with mid and spread (bps) for the dashboard."""
    if row["bid_px"] is not None and row["ask_px"] is not None:
        row["mid"], _, row["spread_bps"] = mid_spread(row["bid_px"], row["ask_px"])
    else:
        row["mid"] = row["spread_bps"] = None
    return row
