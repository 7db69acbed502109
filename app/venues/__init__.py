"""Venue adapters, registered by venue id (the public identifiers, see README)."""

from __future__ import annotations

from app.errors import ConfigError
from app.venues import binance, bybit
from app.venues.base import Adapter, BookUpdate, Kind, Level, Sequencing
from app.venues.coinbase import CoinbaseAdapter
from app.venues.deribit import DeribitAdapter
from app.venues.okx import OkxAdapter

_ALL: list[Adapter] = [DeribitAdapter(), *binance.adapters(), OkxAdapter(), *bybit.adapters(), CoinbaseAdapter()]
ADAPTERS: dict[str, Adapter] = {a.venue: a for a in _ALL}

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
