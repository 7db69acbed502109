"""Feed configuration: which instruments to ingest, from which endpoints, with which keys.

* ``FEEDS``: ``deribit:BTC-PERPETUAL,ETH-PERPETUAL;binance-usdm:BTCUSDT;okx:BTC-USDT-SWAP``
* ``FEEDS_FILE``: JSON ``{"feeds": {"okx": ["BTC-USDT"]}, "endpoints": {"okx": {"ws_url": …}}}``;
  its feeds are added to ``FEEDS``, its endpoint fields override the defaults.
* ``FEED``: ``live`` (the venues' real endpoints) or ``sim`` (the local simulator at ``SIM_URL``).
* Credentials: ``DERIBIT_CLIENT_ID``/``DERIBIT_CLIENT_SECRET``, ``OKX_API_KEY``/
  ``OKX_API_SECRET``/``OKX_API_PASSPHRASE``, or ``CREDENTIALS_FILE`` (JSON, same names in
  lower case per venue). They are :class:`Secret`: never printed, logged or published.

Endpoints, channels, depths and per-connection limits are data, not code: venues move
them (Binance moved its futures depth streams under ``/public`` in 2026). Each venue's
defaults live in its module under ``app/venues/`` (its registry entry); ``FEEDS_FILE``
overrides them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.config import Secret
from app.errors import ConfigError
from app.market.symbols import monthly_expiries
from app.venues import VENUE_TABLE, VENUES
from app.venues.session import Endpoint, Limits

#: Each venue's live endpoint and simulator (WebSocket, REST) paths, from its module.
LIVE: dict[str, Endpoint] = {venue: v.endpoint for venue, v in VENUE_TABLE.items()}
SIM_PATHS: dict[str, tuple[str, str]] = {venue: (v.sim_ws_path, v.sim_rest_path) for venue, v in VENUE_TABLE.items()}

def _sim_options() -> str:
    """Two live chains for the simulator: the next two monthly expiries (14+ days away), BTC
    calls and puts across strikes, ETH a few; named from today, so they never expire."""
    near, far = monthly_expiries(time.time_ns(), 2)
    btc = [f"BTC-{e}-{k}-{cp}" for e in (near, far) for k in (55000, 60000, 65000, 70000, 75000) for cp in "CP"]
    eth = [f"ETH-{near}-{k}-{cp}" for k in (1800, 2000, 2200) for cp in "CP"]
    return ",".join(btc + eth)


#: What `make run` ingests from the simulator: every venue, Deribit option chains across strikes.
DEFAULT_SIM_FEEDS = (
    f"deribit:BTC-PERPETUAL,ETH-PERPETUAL,{_sim_options()};"
    "binance:BTCUSDT,ETHUSDT;binance-usdm:BTCUSDT,ETHUSDT;binance-coinm:BTCUSD_PERP;"
    "okx:BTC-USDT,BTC-USDT-SWAP,ETH-USDT-SWAP;bybit-spot:BTCUSDT;bybit-linear:BTCUSDT,ETHUSDT;"
    f"bybit-inverse:BTCUSD;bybit-option:BTC-{monthly_expiries(time.time_ns(), 1)[0]}-60000-C;coinbase:BTC-USD,ETH-USD;"
    "hyperliquid:BTC,ETH;dydx:BTC-USD,ETH-USD"
)


def sim_feeds(n: int) -> str:
    """``DEFAULT_SIM_FEEDS`` and ``n`` more instruments per venue (``4 n`` for Binance spot): the
    universe `make run SIM_INSTRUMENTS=n` ingests, to see the venues' limits kept at a desk's size."""
    if n <= 0:
        return DEFAULT_SIM_FEEDS
    expiry = monthly_expiries(time.time_ns(), 1)[0]
    strikes = [40000 + 1000 * (i // 2) for i in range(n)]
    names = {
        "deribit": [f"BTC-{expiry}-{k}-{'CP'[i % 2]}" for i, k in enumerate(strikes)],
        "binance": [f"C{i}USDT" for i in range(4 * n)], "binance-usdm": [f"C{i}USDT" for i in range(n)],
        "binance-coinm": [f"C{i}USD_PERP" for i in range(n)], "okx": [f"C{i}-USDT-SWAP" for i in range(n)],
        "bybit-spot": [f"C{i}USDT" for i in range(n)], "bybit-linear": [f"C{i}USDT" for i in range(n)],
        "bybit-inverse": [f"C{i}USD" for i in range(n)],
        "bybit-option": [f"BTC-{expiry}-{50000 + 500 * (i // 2)}-{'CP'[i % 2]}" for i in range(n)],
        "coinbase": [f"C{i}-USD" for i in range(n)], "hyperliquid": [f"C{i}" for i in range(n)],
        "dydx": [f"C{i}-USD" for i in range(n)],
    }
    return DEFAULT_SIM_FEEDS + "".join(f";{venue}:{','.join(symbols)}" for venue, symbols in names.items())


#: What `make run FEED=live` ingests unless FEEDS says otherwise.
DEFAULT_LIVE_FEEDS = (
    "deribit:BTC-PERPETUAL,ETH-PERPETUAL;binance:BTCUSDT;binance-usdm:BTCUSDT;binance-coinm:BTCUSD_PERP;"
    "okx:BTC-USDT-SWAP;bybit-linear:BTCUSDT;bybit-spot:BTCUSDT;coinbase:BTC-USD"
)


def sim_endpoints(base_url: str) -> dict[str, Endpoint]:
    """The simulator's addresses for every venue (same channels and limits as live)."""
    base = base_url.rstrip("/")
    ws_base = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    out = {}
    for venue, (ws_path, rest_path) in SIM_PATHS.items():
        live = LIVE[venue]
        # a channel the venue serves elsewhere: the same path under the simulator's venue prefix
        moved = tuple((t, f"{ws_base}/ws/{venue}{urlsplit(url).path}") for t, url in live.ws_urls)
        limits = dataclasses.replace(live.limits, ack_s=min(live.limits.ack_s, 5.0),
                                     first_s=min(live.limits.first_s, 5.0), retry_s=min(live.limits.retry_s, 3.0))
        out[venue] = dataclasses.replace(live, ws_url=ws_base + ws_path, rest_url=base + rest_path if rest_path else "",
                                         silence_s=min(live.silence_s, 10.0), api_url=f"{base}/rest/{venue}",
                                         ws_urls=moved, limits=limits)
    return out


def _endpoint_fields(venue: str, fields: Any, current: Endpoint) -> dict[str, Any]:
    """A ``FEEDS_FILE`` endpoint override, checked: ``market`` a list of templates, ``ws_urls`` an
    object {template: URL}, ``limits`` an object of :class:`Limits` fields (rates as [n, seconds])."""
    what = f"FEEDS_FILE endpoints for {venue}"
    if not isinstance(fields, dict):
        raise ConfigError(f"{what}: expected a JSON object")
    fields = dict(fields)
    if "market" in fields:
        market = fields["market"]
        if not isinstance(market, list) or not all(isinstance(c, str) for c in market):
            raise ConfigError(f"{what}: market must be a list of channel templates")
        fields["market"] = tuple(market)
    if "ws_urls" in fields:
        urls = fields["ws_urls"]
        if not isinstance(urls, dict) or not all(isinstance(v, str) and v.startswith(("ws://", "wss://"))
                                                  for v in urls.values()):
            raise ConfigError(f"{what}: ws_urls must map channel templates to ws:// or wss:// URLs")
        fields["ws_urls"] = tuple(urls.items())
    if "limits" in fields:
        limits = fields["limits"]
        if not isinstance(limits, dict):
            raise ConfigError(f"{what}: limits must be a JSON object")
        given: dict[str, Any] = {}
        for name, value in limits.items():
            default = getattr(Limits(), name, None)
            if default is None:
                raise ConfigError(f"{what}: limits has no field {name!r}; known: "
                                  f"{', '.join(f.name for f in dataclasses.fields(Limits))}")
            if isinstance(default, tuple):
                ok = isinstance(value, list) and all(isinstance(x, list | str | int | float) for x in value)
                value = tuple(tuple(x) if isinstance(x, list) else x for x in value) if ok else value
            else:
                ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
            if not ok or isinstance(value, bool):
                raise ConfigError(f"{what}: limits.{name} = {value!r} is not a {type(default).__name__}")
            given[name] = value
        fields["limits"] = dataclasses.replace(current.limits, **given)
    return fields


def parse_feeds(spec: str) -> dict[str, list[str]]:
    """``venue:SYM1,SYM2;venue2:SYM`` → {venue: [symbols]}; ConfigError on anything malformed."""
    feeds: dict[str, list[str]] = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        venue, sep, symbols = part.partition(":")
        venue = venue.strip()
        if not sep:
            raise ConfigError(f"FEEDS entry {part!r} is not <venue>:<symbol>[,<symbol>…]")
        if venue not in VENUES:
            raise ConfigError(f"FEEDS names unknown venue {venue!r}; known venues: {', '.join(VENUES)}")
        names = [s.strip() for s in symbols.split(",") if s.strip()]
        if not names:
            raise ConfigError(f"FEEDS entry for {venue} names no symbol")
        for name in names:
            if any(c.isspace() or c in ":;/" for c in name):
                raise ConfigError(f"FEEDS symbol {name!r} for {venue} is malformed")
        feeds.setdefault(venue, [])
        feeds[venue].extend(n for n in names if n not in feeds[venue])
    return feeds


@dataclass(frozen=True)
class FeedConfig:
    feeds: dict[str, list[str]]
    endpoints: dict[str, Endpoint]
    credentials: dict[str, dict[str, Secret]] = field(default_factory=dict)
    mode: str = "live"


def _load_json(path: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise ConfigError(f"{what}={path}: cannot read ({exc.strerror})") from exc
    except ValueError as exc:
        raise ConfigError(f"{what}={path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what}={path}: expected a JSON object")
    return data


def credentials(env: dict[str, str]) -> dict[str, dict[str, Secret]]:
    found: dict[str, dict[str, str]] = {}
    if env.get("CREDENTIALS_FILE"):
        for venue, values in _load_json(env["CREDENTIALS_FILE"], "CREDENTIALS_FILE").items():
            if isinstance(values, dict):
                found[venue] = {str(k).lower(): str(v) for k, v in values.items()}
    for name, value in env.items():
        for venue, prefix in (("deribit", "DERIBIT_"), ("okx", "OKX_API_")):
            if name.startswith(prefix) and value:
                found.setdefault(venue, {})[name[len(prefix):].lower()] = value
    return {venue: {k: Secret(v) for k, v in values.items()} for venue, values in found.items()}


def load(env: dict[str, str] | None = None, feeds_override: str | None = None) -> FeedConfig:
    env = dict(os.environ) if env is None else env
    mode = env.get("FEED", "live").strip() or "live"
    if mode not in ("live", "sim"):
        raise ConfigError(f"FEED={mode!r} must be 'live' or 'sim'")
    endpoints = dict(LIVE) if mode == "live" else sim_endpoints(env.get("SIM_URL", "http://127.0.0.1:8765"))
    feeds = parse_feeds(feeds_override if feeds_override is not None else env.get("FEEDS", ""))
    if env.get("FEEDS_FILE"):
        data = _load_json(env["FEEDS_FILE"], "FEEDS_FILE")
        for venue, symbols in (data.get("feeds") or {}).items():
            extra = parse_feeds(f"{venue}:{','.join(symbols)}")
            for v, names in extra.items():
                feeds.setdefault(v, []).extend(n for n in names if n not in feeds.get(v, []))
        for venue, fields in (data.get("endpoints") or {}).items():
            if venue not in endpoints:
                raise ConfigError(f"FEEDS_FILE endpoints name unknown venue {venue!r}")
            try:
                endpoints[venue] = dataclasses.replace(endpoints[venue],
                                                       **_endpoint_fields(venue, fields, endpoints[venue]))
            except TypeError as exc:
                raise ConfigError(f"FEEDS_FILE endpoints for {venue}: {exc}") from exc
    return FeedConfig(feeds=feeds, endpoints=endpoints, credentials=credentials(env), mode=mode)
