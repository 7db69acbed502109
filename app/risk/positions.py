"""The ``positions`` topic: what each portfolio holds, fed by the desk's own systems.

Compacted, keyed ``<portfolio>|<instrument key>`` (``desk|deribit:BTC-PERPETUAL``); the value is
JSON ``{"portfolio", "instrument", "quantity", "avg_price", "ts"}``: ``quantity`` a decimal
string in the venue's contract units (Deribit inverse futures and perpetuals: USD, as Deribit
sizes them; every other contract: contracts; spot: the base currency), signed (negative is
short); ``avg_price`` optional; ``ts`` ns. A null value (tombstone) or a zero quantity closes the
position. :func:`parse` checks one record whole; a bad one is never applied in part.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from app.decimals import decimal_text
from app.errors import BookstreamError
from app.records import CollateralRecord, PositionRecord, encode

PORTFOLIO = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
#: ``<venue>:<symbol>``; a symbol may hold a colon (Hyperliquid's builder-deployed perpetuals: ``xyz:AAPL``)
INSTRUMENT = re.compile(r"^[a-z0-9\-]+:[A-Za-z0-9_.\-/:]+$")


class PositionError(BookstreamError):
    """A position record that cannot be applied (the message says which field and why)."""


@dataclass(frozen=True, slots=True)
class Position:
    portfolio: str
    instrument: str  # <venue>:<symbol>
    quantity: Decimal
    avg_price: Decimal | None
    ts: int

    @property
    def key(self) -> str:
        return record_key(self.portfolio, self.instrument)

    def record(self) -> PositionRecord:
        """The ``positions`` record."""
        return PositionRecord(portfolio=self.portfolio, instrument=self.instrument,
                              quantity=decimal_text(self.quantity),
                              avg_price=None if self.avg_price is None else decimal_text(self.avg_price), ts=self.ts)

    def encode(self) -> bytes:
        return encode(self.record())


def record_key(portfolio: str, instrument: str) -> str:
    return f"{portfolio}|{instrument}"


def _decimal(name: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PositionError(f"{name}: {value!r} is not a number")
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise PositionError(f"{name}: {value!r} is not a number") from None
    if not out.is_finite():
        raise PositionError(f"{name}: {value!r} is not a finite number")
    return out


def make(portfolio: str, instrument: str, quantity: Any, avg_price: Any = None, ts: int | None = None) -> Position:
    """A checked position (PositionError naming the field otherwise)."""
    if not isinstance(portfolio, str) or not PORTFOLIO.match(portfolio):
        raise PositionError(f"portfolio: {portfolio!r} is not a portfolio name (letters, digits, _ . -; ≤ 64)")
    if not isinstance(instrument, str) or not INSTRUMENT.match(instrument):
        raise PositionError(f"instrument: {instrument!r} is not an instrument key (<venue>:<symbol>)")
    qty = _decimal("quantity", quantity)
    avg = None if avg_price in (None, "") else _decimal("avg_price", avg_price)
    if avg is not None and avg <= 0:
        raise PositionError(f"avg_price: {avg_price!r} must be positive")
    when = time.time_ns() if ts is None else ts
    if not isinstance(when, int) or isinstance(when, bool) or when < 0:
        raise PositionError(f"ts: {ts!r} is not a time in ns")
    return Position(portfolio, instrument, qty, avg, when)


def _keyed_row(key: bytes | None, value: bytes | None, second: str) -> tuple[str, str, dict[str, Any] | None]:
    """(portfolio, the key's second part, the value as a JSON object — None for a tombstone) of a
    record keyed ``<portfolio>|<second>`` (positions, collateral); PositionError when the key is
    not that, the value is not a JSON object, or its body names another portfolio or ``second``."""
    if key is None:
        raise PositionError(f"record has no key (expected <portfolio>|<{second}>)")
    text = key.decode("utf-8", "replace")
    portfolio, sep, other = text.partition("|")
    if not sep:
        raise PositionError(f"key {text!r} is not <portfolio>|<{second}>")
    if value is None:
        return portfolio, other, None
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PositionError(f"value is not JSON ({exc})") from None
    if not isinstance(row, dict):
        raise PositionError("value is not a JSON object")
    for name, want in (("portfolio", portfolio), (second, other)):
        if row.get(name, want) != want:
            raise PositionError(f"{name}: {row.get(name)!r} does not match the record key {text!r}")
    return portfolio, other, row


def parse(key: bytes | None, value: bytes | None) -> Position | None:
    """A ``positions`` record → Position (None: the position is closed). PositionError if bad."""
    record = parse_record(key, value)
    return None if record is None or record.quantity == 0 else record


def parse_record(key: bytes | None, value: bytes | None) -> Position | None:
    """A ``positions`` record as written, a zero quantity included (None: a tombstone); a
    missing ``ts`` is 0 (in force from the start). PositionError if bad."""
    portfolio, instrument, row = _keyed_row(key, value, "instrument")
    if row is None:
        make(portfolio, instrument, 0)  # the key itself must be valid
        return None
    if "quantity" not in row:
        raise PositionError("quantity: missing")
    return make(portfolio, instrument, row["quantity"], row.get("avg_price"), row.get("ts") or 0)


def load_file(text: str, fmt: str, ts: int | None = None) -> list[Position]:
    """A book of positions (TOML or YAML ``[[position]]`` tables, or CSV
    ``portfolio,instrument,quantity[,avg_price]``), every row checked before any is used."""
    return [p for _, p in _rows(text, fmt, ts, script=False)]


def load_script(text: str, fmt: str) -> list[tuple[float, Position]]:
    """A scripted book: ``[[position]]`` tables (TOML/YAML) each with ``at_s``, the seconds after
    the start at which it applies (``positions play``), in time order; every row checked first."""
    if fmt == "csv":
        raise PositionError("a script is TOML or YAML ([[position]] tables with at_s)")
    return sorted(_rows(text, fmt, 0, script=True), key=lambda r: r[0])


def _rows(text: str, fmt: str, ts: int | None, script: bool) -> list[tuple[float, Position]]:
    rows: list[dict[str, Any]]
    if fmt == "csv":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#") or line.lower().startswith("portfolio,"):
                continue
            cells = [c.strip() for c in line.split(",")]
            if len(cells) not in (3, 4):
                raise PositionError(f"line {n}: expected portfolio,instrument,quantity[,avg_price]")
            rows.append(dict(zip(("portfolio", "instrument", "quantity", "avg_price"), cells, strict=False)))
    else:
        from app.risk.rules import load_mapping  # TOML/YAML reading in one place

        doc = load_mapping(text, fmt)
        raw = doc.get("position", doc.get("positions", []))
        if not isinstance(raw, list):
            raise PositionError("position: expected a list of tables")
        rows = raw
    out: list[tuple[float, Position]] = []
    errors: list[str] = []
    fields = {"portfolio", "instrument", "quantity", "avg_price"} | ({"at_s"} if script else set())
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            errors.append(f"position {n}: not a table")
            continue
        unknown = set(row) - fields
        if unknown:
            errors.append(f"position {n}: unknown field(s) {', '.join(sorted(unknown))}")
            continue
        at = row.get("at_s", 0.0)
        if script and (isinstance(at, bool) or not isinstance(at, (int, float)) or at < 0):
            errors.append(f"position {n}: at_s: {at!r} is not a number of seconds ≥ 0")
            continue
        try:
            out.append((float(at), make(row.get("portfolio"), row.get("instrument"),  # type: ignore[arg-type]
                                        row.get("quantity"), row.get("avg_price"), ts)))
        except PositionError as exc:
            errors.append(f"position {n}: {exc}")
    if errors:
        raise PositionError("; ".join(errors))
    return out


# -- collateral --------------------------------------------------------------------------------
CURRENCY = re.compile(r"^[A-Z0-9]{2,10}$")


@dataclass(frozen=True, slots=True)
class Collateral:
    """What a portfolio holds as collateral in one currency (the compacted ``collateral`` topic)."""

    portfolio: str
    currency: str
    amount: Decimal
    ts: int

    @property
    def key(self) -> str:
        return f"{self.portfolio}|{self.currency}"

    def encode(self) -> bytes:
        return encode(CollateralRecord(portfolio=self.portfolio, currency=self.currency,
                                       amount=decimal_text(self.amount), ts=self.ts))


def make_collateral(portfolio: str, currency: str, amount: Any, ts: int | None = None) -> Collateral:
    """Checked whole (PositionError naming the field otherwise): a portfolio name, a currency code
    (upper-cased), an amount ≥ 0."""
    if not isinstance(portfolio, str) or not PORTFOLIO.match(portfolio):
        raise PositionError(f"portfolio: {portfolio!r} is not a portfolio name (letters, digits, _ . -; ≤ 64)")
    code = currency.upper() if isinstance(currency, str) else currency
    if not isinstance(code, str) or not CURRENCY.match(code):
        raise PositionError(f"currency: {currency!r} is not a currency code (BTC, ETH, USDC, …)")
    value = _decimal("amount", amount)
    if value < 0:
        raise PositionError(f"amount: {amount!r} must be zero or more")
    when = time.time_ns() if ts is None else ts
    if not isinstance(when, int) or isinstance(when, bool) or when < 0:
        raise PositionError(f"ts: {ts!r} is not a time in ns")
    return Collateral(portfolio, code, value, when)


def parse_collateral(key: bytes | None, value: bytes | None) -> Collateral | None:
    """A ``collateral`` record → Collateral (None: a tombstone). PositionError if bad."""
    portfolio, currency, row = _keyed_row(key, value, "currency")
    if row is None:
        make_collateral(portfolio, currency, 0)  # the key itself must be valid
        return None
    if "amount" not in row:
        raise PositionError("amount: missing")
    return make_collateral(portfolio, currency, row["amount"], row.get("ts") or 0)
