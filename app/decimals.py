"""Decimal numbers as the text every record carries: plain (never an exponent), no trailing
zeros, ``"0"`` for zero — the one helper for it (venue levels, book aggregates, positions,
tickers, hedge sizes)."""

from __future__ import annotations

from decimal import Decimal


def decimal_text(value: Decimal, places: int | None = None) -> str:
    """``Decimal("1.2500")`` → ``"1.25"``, ``Decimal("1E+3")`` → ``"1000"``; rounded to
    ``places`` decimals first when given."""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
