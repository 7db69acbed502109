"""Option symbols: underlying, expiry, strike, call/put, and the chain an option belongs to.

The venues name options alike — Deribit and Bybit ``BTC-27MAR26-60000-C`` (Bybit USDT/USDC
options add ``-USDT``/``-USDC``; Deribit linear ones write a decimal strike ``2d5``), OKX
``BTC-USD-260327-60000-C`` — and expire at 08:00 UTC on the named day. The *chain* of an
option is its symbol without strike and type (``BTC-27MAR26``, ``BTC-USD-260327``): the name
of that expiry's future on the same venue, so an expiry's options and future share one
partition (:func:`partition_key`) and the chain is built where they all are.

The instrument registry, when loaded, is the authority on a contract's terms; these names are
what every frame already carries.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from functools import lru_cache

_MONTHS = {m: i + 1 for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                           "NOV", "DEC"))}
_OPTION = re.compile(
    r"^(?P<chain>(?P<underlying>[A-Z0-9_]+(?:-[A-Z]+)?)-(?P<expiry>\d{1,2}[A-Z]{3}\d{2}|\d{6}))"
    r"-(?P<strike>\d+(?:[.d]\d+)?)-(?P<type>[CP])(?P<settle>-[A-Z]+)?$"
)
EXPIRY_HOUR_UTC = 8


@dataclass(frozen=True, slots=True)
class OptionSpec:
    underlying: str  # BTC, BTC-USD, XRP_USDC
    chain: str  # the symbol without strike and type: BTC-27MAR26 (+ -USDT for Bybit USDT options)
    expiry_ns: int  # 08:00 UTC on the expiry day
    strike: float
    strike_text: str  # as the symbol writes it
    call: bool


def expiry_ns(text: str) -> int:
    """``27MAR26`` (Deribit, Bybit) or ``260327`` (OKX) → 08:00 UTC that day, in ns."""
    if text.isdigit():  # OKX YYMMDD
        year, month, day = 2000 + int(text[:2]), int(text[2:4]), int(text[4:])
    else:  # 27MAR26
        day, month, year = int(text[:-5]), _MONTHS[text[-5:-2]], 2000 + int(text[-2:])
    return calendar.timegm((year, month, day, EXPIRY_HOUR_UTC, 0, 0, 0, 0, 0)) * 1_000_000_000


@lru_cache(maxsize=65_536)
def parse_option(symbol: str) -> OptionSpec | None:
    """The option named ``symbol``, or None when it names no option."""
    m = _OPTION.match(symbol)
    if m is None or (not m["expiry"].isdigit() and m["expiry"][-5:-2] not in _MONTHS):
        return None
    try:
        expiry = expiry_ns(m["expiry"])
    except (ValueError, OverflowError):
        return None
    strike_text = m["strike"]
    return OptionSpec(m["underlying"], m["chain"] + (m["settle"] or ""), expiry, float(strike_text.replace("d", ".")),
                      strike_text, m["type"] == "C")


def partition_key(key: str) -> str:
    """The key an instrument is partitioned by: its chain for an option (``deribit:BTC-27MAR26``,
    the same key as that expiry's future), else the instrument key itself."""
    if key.endswith(("-C", "-P")) or "-C-" in key or "-P-" in key:
        venue, _, symbol = key.partition(":")
        spec = parse_option(symbol)
        if spec is not None:
            return f"{venue}:{spec.chain}"
    return key


def expiry_text(year: int, month: int, day: int) -> str:
    """Deribit/Bybit's expiry text: 26 MAR 2027 → ``26MAR27``."""
    return f"{day}{list(_MONTHS)[month - 1]}{year % 100:02d}"


def monthly_expiries(now_ns: int, count: int, min_days: int = 14) -> list[str]:
    """The next ``count`` monthly expiries (last Friday of the month, as the venues list them) at
    least ``min_days`` ahead of ``now_ns``, as ``26MAR27`` texts (the simulator's option names)."""
    out: list[str] = []
    year, month = time.gmtime(now_ns // 1_000_000_000)[:2]
    while len(out) < count:
        days = calendar.monthrange(year, month)[1]
        last_friday = max(d for d in range(days - 6, days + 1) if calendar.weekday(year, month, d) == calendar.FRIDAY)
        text = expiry_text(year, month, last_friday)
        if expiry_ns(text) - now_ns >= min_days * 86_400 * 1_000_000_000:
            out.append(text)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out
