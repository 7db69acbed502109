"""Hedge rules (``RISK_RULES_FILE``, TOML or YAML) and the hedge decision.

A rule watches one greek of one portfolio and underlying. When the exposure leaves the band
``±trigger`` it asks for a hedge in ``hedge`` (an instrument key) that brings the greek back to
``target`` on the same side (0 ≤ target < trigger: the gap between them is the hysteresis, so
a hedged book does not flap). The size is rounded to the instrument's lot (the registry's
``lot_size``) and must reach its minimum (``min_size``); ``cooldown_s`` and
``max_per_minute`` bound how often it may fire. Its ``state``: ``active``, ``reduce-only`` (only
signals that shrink the portfolio's position in the hedge instrument) or ``halted`` — the file
gives the starting state; ``faust -A app rules state`` and ``POST /api/risk/rules/{id}/state``
change it at run time (kept in the compacted ``risk.rules`` topic).

Example (TOML)::

    [[rule]]
    id = "desk-btc-delta"
    portfolio = "desk"
    underlying = "BTC"
    greek = "delta"            # delta (coins) | delta_usd | gamma_1pct (coins) | vega (USD per vol point)
    trigger = 5.0              # fire when |greek| > 5
    target = 1.0               # ... and hedge back to ±1
    hedge = "deribit:BTC-PERPETUAL"
    cooldown_s = 30
    max_per_minute = 4
    state = "active"           # active | reduce-only | halted

A **margin rule** watches the portfolio's MM/equity ratio (``risk.margin``) at the hedge
instrument's venue and settlement currency instead of a greek::

    [[rule]]
    id = "desk-btc-margin"
    portfolio = "desk"
    underlying = "BTC"
    greek = "margin_ratio"
    trigger = 0.6              # fire when MM / equity > 0.6
    target = 0.4               # ... with the smallest hedge (in lots) that brings it to ≤ 0.4
    hedge = "deribit:BTC-PERPETUAL"
    reduce_only_above = 0.8    # any rule: above this ratio it runs reduce-only …
    reduce_only_rules = ["desk-btc-delta"]   # … and so do these (released 5 % below it)
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from app.errors import ConfigError
from app.records import RuleState, encode

GREEKS = ("delta", "delta_usd", "gamma_1pct", "vega", "margin_ratio")
MARGIN_RATIO = "margin_ratio"
STATES = ("active", "reduce-only", "halted")
_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_FIELDS = {"id": str, "portfolio": str, "underlying": str, "greek": str, "trigger": float, "target": float,
           "hedge": str, "cooldown_s": float, "max_per_minute": int, "state": str, "reduce_only_above": float,
           "reduce_only_rules": list}
_REQUIRED = ("id", "portfolio", "underlying", "greek", "trigger", "hedge")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    portfolio: str
    underlying: str
    greek: str
    trigger: float
    hedge: str
    target: float = 0.0
    cooldown_s: float = 30.0
    max_per_minute: int = 4
    state: str = "active"
    reduce_only_above: float | None = None  # a margin ratio: above it this rule and reduce_only_rules are reduce-only
    reduce_only_rules: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _FIELDS}
        out["reduce_only_rules"] = list(self.reduce_only_rules)
        return out


def load_mapping(text: str, fmt: str) -> dict[str, Any]:
    """A TOML or YAML document as a mapping (ConfigError with the parser's line otherwise)."""
    if fmt == "toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}") from None
    if fmt in ("yaml", "yml"):
        import yaml  # type: ignore[import-untyped]

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}") from None
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise ConfigError("the document is not a mapping")
        return doc
    raise ConfigError(f"unknown format {fmt!r} (toml or yaml)")


def file_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("toml", "yaml", "yml", "csv"):
        return "yaml" if suffix == "yml" else suffix
    raise ConfigError(f"{path}: name it .toml, .yaml or .yml")


def parse_rules(doc: dict[str, Any]) -> tuple[list[Rule], list[str]]:
    """Rules and the list of errors, one line each naming the rule and field."""
    errors: list[str] = []
    extra = set(doc) - {"rule", "rules"}
    if extra:
        errors.append(f"unknown top-level key(s) {', '.join(sorted(extra))} (expected [[rule]])")
    raw = doc.get("rule", doc.get("rules", []))
    if not isinstance(raw, list):
        return [], [*errors, "rule: expected a list of tables ([[rule]])"]
    rules: list[Rule] = []
    seen: set[str] = set()
    for n, row in enumerate(raw, 1):
        where = f"rule {n}"
        if not isinstance(row, dict):
            errors.append(f"{where}: not a table")
            continue
        if isinstance(row.get("id"), str):
            where = f"rule {n} ({row['id']})"
        bad = False
        for name in sorted(set(row) - set(_FIELDS)):
            errors.append(f"{where}: unknown field {name!r}")
            bad = True
        for name in _REQUIRED:
            if name not in row:
                errors.append(f"{where}: {name}: missing")
                bad = True
        values: dict[str, Any] = {}
        for name, kind in _FIELDS.items():
            if name not in row:
                continue
            value = row[name]
            if kind is list:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    errors.append(f"{where}: {name}: {value!r} is not a list of rule ids")
                    bad = True
                else:
                    values[name] = tuple(value)
            elif kind is str and not isinstance(value, str):
                errors.append(f"{where}: {name}: {value!r} is not text")
                bad = True
            elif kind in (float, int) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                           or not math.isfinite(value)):
                errors.append(f"{where}: {name}: {value!r} is not a number")
                bad = True
            elif kind is int and value != int(value):
                errors.append(f"{where}: {name}: {value!r} is not a whole number")
                bad = True
            else:
                values[name] = kind(value)
        if bad:
            continue
        rule = Rule(**values)
        problems = []
        if not _ID.match(rule.id):
            problems.append(f"id: {rule.id!r} is not a rule id (letters, digits, _ . -)")
        elif rule.id in seen:
            problems.append(f"id: {rule.id!r} is used by an earlier rule")
        if rule.greek not in GREEKS:
            problems.append(f"greek: {rule.greek!r} is not one of {', '.join(GREEKS)}")
        if rule.trigger <= 0:
            problems.append(f"trigger: {rule.trigger} must be > 0")
        if not 0 <= rule.target < rule.trigger:
            problems.append(f"target: {rule.target} must be ≥ 0 and below trigger ({rule.trigger})")
        if ":" not in rule.hedge:
            problems.append(f"hedge: {rule.hedge!r} is not an instrument key (<venue>:<symbol>)")
        if rule.cooldown_s < 0:
            problems.append(f"cooldown_s: {rule.cooldown_s} must be ≥ 0")
        if rule.max_per_minute < 1:
            problems.append(f"max_per_minute: {rule.max_per_minute} must be ≥ 1")
        if rule.state not in STATES:
            problems.append(f"state: {rule.state!r} is not one of {', '.join(STATES)}")
        if rule.reduce_only_above is not None and rule.reduce_only_above <= 0:
            problems.append(f"reduce_only_above: {rule.reduce_only_above} must be > 0 (a MM/equity ratio)")
        if rule.reduce_only_rules and rule.reduce_only_above is None:
            problems.append("reduce_only_rules: needs reduce_only_above (the ratio that switches them)")
        errors.extend(f"{where}: {p}" for p in problems)
        if not problems:
            seen.add(rule.id)
            rules.append(rule)
    for rule in rules:
        for other in rule.reduce_only_rules:
            if other not in seen:
                errors.append(f"rule {rule.id}: reduce_only_rules: no rule {other!r}")
    return rules, errors


def load_rules(path: Path) -> list[Rule]:
    """The rules of ``path``; ConfigError listing every error (one line each) otherwise."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"RISK_RULES_FILE {path}: {exc.strerror}") from None
    fmt = file_format(path)
    try:
        doc = load_mapping(text, fmt)
    except ConfigError as exc:
        raise ConfigError(f"RISK_RULES_FILE {path}: {exc}") from None
    rules, errors = parse_rules(doc)
    if errors:
        raise ConfigError(f"RISK_RULES_FILE {path}: {len(errors)} error(s):\n  " + "\n  ".join(errors))
    return rules


def check_state(state: str) -> None:
    """ValueError unless ``state`` is a rule state."""
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")


def with_state(rule: Rule, state: str) -> Rule:
    check_state(state)
    return replace(rule, state=state)


def state_record(rule_id: str, state: str, by: str) -> bytes:
    """A ``risk.rules`` record (key: the rule id): the state set now, and who set it."""
    check_state(state)
    return encode(RuleState(rule=rule_id, state=state, ts=time.time_ns(), by=by))


# -- the decision ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sizing:
    """The hedge instrument's terms and its greek per unit."""

    per_unit: float  # the rule's greek of one unit (contract) of the hedge instrument
    lot: Decimal  # size step, in the instrument's units
    minimum: Decimal  # smallest size
    position: Decimal  # the portfolio's current position in the hedge instrument


def hedge_size(exposure: float, rule: Rule, sizing: Sizing) -> tuple[Decimal, str | None]:
    """Signed hedge size (units of the hedge instrument; 0 with the reason when none is due).

    Outside ±trigger the size brings the greek to ±target on its own side, rounded to the lot;
    inside the band nothing is due (hysteresis)."""
    if abs(exposure) <= rule.trigger:
        return Decimal(0), None
    if sizing.per_unit == 0 or not math.isfinite(sizing.per_unit):
        return Decimal(0), "hedge instrument has no sensitivity to this greek"
    goal = math.copysign(rule.target, exposure)
    raw = (goal - exposure) / sizing.per_unit
    lot = sizing.lot if sizing.lot > 0 else Decimal(1)
    lots = (Decimal(repr(raw)) / lot).to_integral_value(rounding=ROUND_HALF_EVEN)
    size = lots * lot
    if rule.state == "reduce-only":
        pos = sizing.position
        if pos == 0 or (size > 0) == (pos > 0):
            return Decimal(0), "reduce-only: the hedge would not reduce the position in " + rule.hedge
        if abs(size) > abs(pos):
            size = -pos
    if size == 0 or abs(size) < sizing.minimum:
        return Decimal(0), f"size {size} below the minimum {sizing.minimum} of {rule.hedge}"
    after = exposure + float(size) * sizing.per_unit
    if abs(after) > rule.trigger and rule.state != "reduce-only":
        return Decimal(0), f"lot {lot} of {rule.hedge} too coarse to bring {rule.greek} inside ±{rule.trigger}"
    return size, None


def signal_id(rule: Rule, ts: int) -> str:
    """Deterministic: the same rule at the same event time is the same signal, whoever computes it."""
    text = f"{rule.id}|{rule.portfolio}|{rule.underlying}|{rule.greek}|{ts}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def walk(levels: Sequence[Sequence[str]], size: float) -> tuple[float | None, float]:
    """Average fill price of ``size`` against ``levels`` ([[price, size], …] best first) and the
    size the levels could fill."""
    left, cost = size, 0.0
    for px_text, sz_text in levels:
        px, sz = float(px_text), float(sz_text)
        take = min(left, sz)
        cost += take * px
        left -= take
        if left <= 1e-12:
            break
    filled = size - max(left, 0.0)
    return (cost / filled if filled > 0 else None), filled
