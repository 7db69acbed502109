"""The simulator's venue limits: their values (:class:`SimLimits`, the real venues' by default)
and the machinery that enforces them: a sliding-window counter (:class:`Window`, every rate
rule), a credit bucket (:class:`Bucket`, Deribit's subscribe quota) and Binance's REST weight
per calendar minute with its 429 warning and 418 ban (:class:`WeightBudget`, :func:`rest_weight`)."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class SimLimits:
    binance_msgs_per_s: int = 5  # incoming messages per connection, sliding second: more closes 1008
    binance_spot_streams: int = 1024  # streams per connection
    binance_futures_streams: int = 200
    binance_spot_weight_per_min: int = 6000  # REST weight per calendar minute, scope "binance"
    binance_futures_weight_per_min: int = 2400  # usdm and coinm together, scope "binance-futures"
    binance_ban_s: float = 120.0  # the first 418 ban, doubling on each request while banned
    bybit_spot_args: int = 10  # args per subscribe/unsubscribe on the spot path
    okx_conns_per_s: int = 3  # connection opens per sliding second per IP
    okx_ops_per_hour: int = 480  # subscribe/unsubscribe/login per connection, sliding hour
    deribit_sub_burst: float = 10.0  # subscribe/unsubscribe credit per IP ...
    deribit_sub_per_s: float = 3.3  # ... refilling at this rate
    coinbase_msgs_per_s: int = 8  # client messages per sliding second per IP
    coinbase_conns_per_s: int = 8  # connection opens per sliding second per IP
    hyperliquid_idle_s: float = 60.0  # a connection that sends nothing (not even a ping) for this long is closed
    hyperliquid_msgs_per_min: int = 2000  # client messages per sliding minute per IP, all connections: then closed
    dydx_subs_per_s: int = 2  # subscribe/unsubscribe per connection per sliding second: then an error and closed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: Any) -> None:
        """Set the fields of ``changes`` (a JSON object field → positive number), all or none:
        ValueError on an unknown field or a bad value."""
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object of limit → value")
        types = {f.name: f.type for f in fields(self)}
        checked: dict[str, float] = {}
        for name, value in changes.items():
            if name not in types:
                raise ValueError(f"unknown limit {name!r}; one of {', '.join(types)}")
            if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                    or value <= 0 or (types[name] == "int" and value != int(value))):
                raise ValueError(f"{name} must be a positive {types[name]}, not {value!r}")
            checked[name] = int(value) if types[name] == "int" else float(value)
        for name, value in checked.items():
            setattr(self, name, value)


class Window:
    """Events in a sliding window: :meth:`allow` records one if fewer than ``limit`` happened in
    the last ``span`` seconds."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def allow(self, limit: float, span: float = 1.0) -> bool:
        now = time.monotonic()
        while self.times and self.times[0] <= now - span:
            self.times.popleft()
        if len(self.times) >= limit:
            return False
        self.times.append(now)
        return True


class Bucket:
    """A credit bucket: ``burst`` credits at first, refilling at ``rate`` a second; :meth:`allow`
    takes one if there is one."""

    def __init__(self) -> None:
        self.credit: float | None = None
        self.at = time.monotonic()

    def allow(self, burst: float, rate: float) -> bool:
        now = time.monotonic()
        credit = burst if self.credit is None else min(burst, self.credit + (now - self.at) * rate)
        self.at = now
        self.credit = credit - 1 if credit >= 1 else credit
        return credit >= 1


class WeightBudget:
    """Binance's REST request weight in one scope: a budget per calendar minute; a request over it
    gets 429 and warns the scope until the minute ends; a request in a warned scope gets 418 and
    bans it for ``ban_s``, each request while banned doubling the ban."""

    def __init__(self) -> None:
        self.minute, self.spent = -1, 0
        self.warned_until = self.banned_until = 0.0
        self.ban_s = 0.0

    def used(self, now: float) -> int:
        return self.spent if int(now // 60) == self.minute else 0

    def charge(self, weight: int, budget: int, ban_s: float, now: float) -> tuple[int, float] | None:
        """None if the request may run (its weight spent), else (429 or 418, Retry-After seconds)."""
        if now < self.banned_until:
            self.ban_s *= 2
        elif now < self.warned_until:
            self.ban_s = ban_s
        else:
            minute = int(now // 60)
            if minute != self.minute:
                self.minute, self.spent = minute, 0
            if self.spent + weight <= budget:
                self.spent += weight
                return None
            self.warned_until = (minute + 1) * 60.0
            return 429, self.warned_until - now
        self.banned_until = now + self.ban_s
        return 418, self.ban_s


# (largest limit, weight) of a depth request; futures limits round up to the next valid one
SPOT_DEPTH = ((100, 5), (500, 25), (1000, 50), (5000, 250))
FUTURES_DEPTH = ((5, 2), (10, 2), (20, 2), (50, 2), (100, 5), (500, 10), (1000, 20))
EXCHANGE_INFO = {"binance": 20}  # futures: 1


def depth_limit(venue: str, limit_text: str) -> tuple[int, int]:
    """(levels served, weight) of a Binance REST depth request; ValueError on a bad limit."""
    try:
        limit = int(limit_text)
    except ValueError:
        raise ValueError(f"Illegal characters found in parameter 'limit'; legal range is '^[0-9]{{1,20}}$'. "
                         f"({limit_text!r})") from None
    table = SPOT_DEPTH if venue == "binance" else FUTURES_DEPTH
    for cap, weight in table:
        if 1 <= limit <= cap:
            return (limit if venue == "binance" else cap), weight
    raise ValueError(f"Invalid limit {limit}: between 1 and {table[-1][0]}.")


def rest_weight(venue: str, path: str, limit_text: str) -> int | None:
    """The weight of a Binance REST request (None: not a weighed endpoint); ValueError on a bad limit."""
    if path.endswith("/depth"):
        return depth_limit(venue, limit_text)[1]
    if path.endswith("/exchangeInfo"):
        return EXCHANGE_INFO.get(venue, 1)
    return None
