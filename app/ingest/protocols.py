"""Per-venue session protocols, sans I/O: what to send, when, and what to answer.

A protocol turns (symbols, credentials) into the text frames a connection sends after it
opens, to resubscribe one instrument, to keep the connection alive, and in reply to venue
requests (Deribit's ``test_request``). The socket code lives in ``app.ingest.connection``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import logging
import time
from urllib.parse import urlencode

import orjson

from app.feeds import Endpoint, Secret

log = logging.getLogger(__name__)
_ids = itertools.count(1)


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


class Protocol:
    """Defaults: no auth, no keepalive message, resync = unsubscribe + subscribe."""

    venue = ""

    def __init__(self, venue: str, endpoint: Endpoint, creds: dict[str, Secret] | None = None) -> None:
        self.venue = venue
        self.endpoint = endpoint
        self.creds = creds or {}

    def channel(self, symbol: str) -> str:
        return self.endpoint.channel.format(symbol=symbol, symbol_lower=symbol.lower(), depth=self.endpoint.depth)

    def url(self, symbols: list[str]) -> str:
        return self.endpoint.ws_url

    def on_open(self, symbols: list[str]) -> list[str]:
        return self.subscribe(symbols)

    def subscribe(self, symbols: list[str]) -> list[str]:
        raise NotImplementedError

    def unsubscribe(self, symbols: list[str]) -> list[str]:
        raise NotImplementedError

    def resubscribe(self, symbol: str) -> list[str]:
        """Frames that make the venue send a fresh snapshot of one instrument."""
        return self.unsubscribe([symbol]) + self.subscribe([symbol])

    def ping(self) -> str | None:
        return None

    def reply(self, frame: str) -> list[str]:
        return []

    def snapshot_url(self, symbol: str) -> str | None:
        return None


class Deribit(Protocol):
    def __init__(self, venue: str, endpoint: Endpoint, creds: dict[str, Secret] | None = None) -> None:
        super().__init__(venue, endpoint, creds)
        self.authed = bool(self.creds.get("client_id") and self.creds.get("client_secret"))
        if not self.authed:
            log.info("deribit: no DERIBIT_CLIENT_ID/SECRET, using public %s channels", endpoint.channel)

    def channel(self, symbol: str) -> str:
        name = super().channel(symbol)
        return name.rsplit(".", 1)[0] + ".raw" if self.authed else name

    def _call(self, method: str, params: dict[str, object]) -> str:
        return _dumps({"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params})

    def on_open(self, symbols: list[str]) -> list[str]:
        out = []
        if self.authed:
            out.append(self._call("public/auth", {
                "grant_type": "client_credentials", "client_id": self.creds["client_id"].reveal(),
                "client_secret": self.creds["client_secret"].reveal()}))
        out.append(self._call("public/set_heartbeat", {"interval": max(10, int(self.endpoint.ping_s))}))
        return out + self.subscribe(symbols)

    def subscribe(self, symbols: list[str]) -> list[str]:
        method = "private/subscribe" if self.authed else "public/subscribe"
        return [self._call(method, {"channels": [self.channel(s) for s in symbols]})]

    def unsubscribe(self, symbols: list[str]) -> list[str]:
        method = "private/unsubscribe" if self.authed else "public/unsubscribe"
        return [self._call(method, {"channels": [self.channel(s) for s in symbols]})]

    def reply(self, frame: str) -> list[str]:
        if '"test_request"' in frame:
            return [self._call("public/test", {})]
        return []


class Binance(Protocol):
    def subscribe(self, symbols: list[str]) -> list[str]:
        return [_dumps({"method": "SUBSCRIBE", "params": [self.channel(s) for s in symbols], "id": next(_ids)})]

    def unsubscribe(self, symbols: list[str]) -> list[str]:
        return [_dumps({"method": "UNSUBSCRIBE", "params": [self.channel(s) for s in symbols], "id": next(_ids)})]

    def resubscribe(self, symbol: str) -> list[str]:
        return []  # the stream continues; a resync is a fresh REST snapshot

    def snapshot_url(self, symbol: str) -> str | None:
        return f"{self.endpoint.rest_url}?{urlencode({'symbol': symbol.upper(), 'limit': self.endpoint.depth})}"


class Okx(Protocol):
    def __init__(self, venue: str, endpoint: Endpoint, creds: dict[str, Secret] | None = None) -> None:
        super().__init__(venue, endpoint, creds)
        self.authed = all(self.creds.get(k) for k in ("key", "secret", "passphrase"))
        if self.endpoint.channel.endswith("-tbt") and not self.authed:
            log.info("okx: no OKX_API_KEY/SECRET/PASSPHRASE, using the public 'books' channel")
            self.endpoint = Endpoint(**{**self.endpoint.__dict__, "channel": "books"})

    def on_open(self, symbols: list[str]) -> list[str]:
        out = []
        if self.authed:
            ts = str(int(time.time()))
            sign = base64.b64encode(hmac.new(self.creds["secret"].reveal().encode(),
                                             f"{ts}GET/users/self/verify".encode(), hashlib.sha256).digest()).decode()
            out.append(_dumps({"op": "login", "args": [{"apiKey": self.creds["key"].reveal(),
                                                         "passphrase": self.creds["passphrase"].reveal(),
                                                         "timestamp": ts, "sign": sign}]}))
        return out + self.subscribe(symbols)

    def _args(self, symbols: list[str]) -> list[dict[str, str]]:
        return [{"channel": self.channel(s), "instId": s} for s in symbols]

    def subscribe(self, symbols: list[str]) -> list[str]:
        return [_dumps({"op": "subscribe", "args": self._args(symbols)})]

    def unsubscribe(self, symbols: list[str]) -> list[str]:
        return [_dumps({"op": "unsubscribe", "args": self._args(symbols)})]

    def ping(self) -> str | None:
        return "ping"  # OKX closes a connection that sends nothing for 30 s


class Bybit(Protocol):
    def subscribe(self, symbols: list[str]) -> list[str]:
        return [_dumps({"op": "subscribe", "args": [self.channel(s) for s in symbols], "req_id": str(next(_ids))})]

    def unsubscribe(self, symbols: list[str]) -> list[str]:
        return [_dumps({"op": "unsubscribe", "args": [self.channel(s) for s in symbols], "req_id": str(next(_ids))})]

    def ping(self) -> str | None:
        return '{"op":"ping"}'


class Coinbase(Protocol):
    def on_open(self, symbols: list[str]) -> list[str]:
        heartbeats = _dumps({"type": "subscribe", "product_ids": symbols, "channel": "heartbeats"})
        return [heartbeats, *self.subscribe(symbols)]

    def subscribe(self, symbols: list[str]) -> list[str]:
        return [_dumps({"type": "subscribe", "product_ids": symbols, "channel": self.endpoint.channel})]

    def unsubscribe(self, symbols: list[str]) -> list[str]:
        return [_dumps({"type": "unsubscribe", "product_ids": symbols, "channel": self.endpoint.channel})]


def protocol(venue: str, endpoint: Endpoint, creds: dict[str, Secret] | None = None) -> Protocol:
    family = venue.split("-")[0]
    cls = {"deribit": Deribit, "binance": Binance, "okx": Okx, "bybit": Bybit, "coinbase": Coinbase}[family]
    return cls(venue, endpoint, creds)
