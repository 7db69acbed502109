"""Venue adapters, registered by venue id (the public identifiers, see README)."""

from __future__ import annotations

from typing import Any

from app.errors import ConfigError, FrameError
from app.venues import binance, bybit
from app.venues.base import Adapter, BookUpdate, Kind, Level, Sequencing
from app.venues.coinbase import CoinbaseAdapter
from app.venues.deribit import DeribitAdapter
from app.venues.okx import OkxAdapter


class Guarded:
    """An adapter whose every call fails only with FrameError.

    The adapters check the shapes they rely on, but venues (and corrupt bytes) can send any
    JSON: a field of a type nobody checked must still become a dead letter with a reason,
    never an exception in the book agent. Each call converts the error kinds that bad shapes
    raise into ``FrameError("malformed", …)``.
    """

    __slots__ = ("_inner", "venue", "sequencing")

    def __init__(self, inner: Adapter) -> None:
        self._inner = inner
        self.venue = inner.venue
        self.sequencing = inner.sequencing

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (TypeError, KeyError, AttributeError, IndexError, ValueError, ArithmeticError) as exc:
            raise FrameError("malformed", f"{type(exc).__name__}: {exc}"[:200]) from exc

    def route(self, kind: Kind, frame: bytes, url: str = "") -> list[str]:
        return self._call(self._inner.route, kind, frame, url)

    def parse(self, kind: Kind, frame: bytes, symbol: str) -> list[BookUpdate]:
        return self._call(self._inner.parse, kind, frame, symbol)

    def conn_seq(self, frame: bytes) -> int | None:
        return self._call(self._inner.conn_seq, frame)

    def __getattr__(self, name: str) -> Any:  # venue-specific helpers (e.g. checksums)
        return getattr(self._inner, name)


_ALL: list[Adapter] = [DeribitAdapter(), *binance.adapters(), OkxAdapter(), *bybit.adapters(), CoinbaseAdapter()]
ADAPTERS: dict[str, Adapter] = {a.venue: Guarded(a) for a in _ALL}

VENUES: tuple[str, ...] = tuple(ADAPTERS)


def adapter(venue: str) -> Adapter:
    """The adapter for ``venue``; ConfigError naming the known venues otherwise."""
    try:
        return ADAPTERS[venue]
    except KeyError:
        raise ConfigError(f"unknown venue {venue!r}; known venues: {', '.join(VENUES)}") from None


def split_key(key: str) -> tuple[str, str]:
    """``"deribit:BTC-PERPETUAL"`` → ("deribit", "BTC-PERPETUAL")."""
    venue, sep, symbol = key.partition(":")
    if not sep:
        raise ValueError(f"instrument key {key!r} is not <venue>:<symbol>")
    return venue, symbol


__all__ = ["ADAPTERS", "VENUES", "Adapter", "BookUpdate", "Kind", "Level", "Sequencing", "adapter", "split_key"]
