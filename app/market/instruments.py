"""The instrument registry: what each contract *is*, versioned in time.

A :class:`Spec` is one version of an instrument's terms (kind, linear or inverse, currencies,
contract size and multiplier, tick — Deribit's ``tick_size_steps`` included — lot, minimum size
and notional, maximum leverage and margin fractions where the venue states them, strike,
call/put, expiry, underlying and index, state), valid from ``valid_from``
(ns). The venues' REST instrument lists are fetched by ingestion and kept verbatim in the raw
topics (REST frames keyed ``<venue>:``); each venue module's ``REGISTRY_PARSER`` turns one into
specs. :class:`Registry` keeps every version of every instrument: a spec whose terms changed
becomes a new version (never an overwrite), so ``at(key, ts)`` answers with the spec in force
at any moment, as a replay needs. ``ref.instruments`` (compacted) carries one record per
version, keyed ``<instrument key>|<valid_from>``, so compaction keeps the whole history.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import msgspec

from app.records import REF_INSTRUMENTS, InstrumentRecord, Source, decode, encode

KINDS = ("spot", "perpetual", "future", "option")
#: Fields that are not the contract's terms: a change in them alone is not a new version.
_NOT_TERMS = ("valid_from", "source", "ts_exchange")
_FIELDS: tuple[str, ...] = ()  # Spec's field names (set below)


@dataclass(frozen=True, slots=True)
class Spec:
    key: str  # <venue>:<symbol>
    kind: str  # one of KINDS
    margin: str  # linear | inverse | quanto
    base: str
    quote: str
    settle: str
    contract_size: str | None = None  # one contract in base (linear) or quote (inverse) units
    multiplier: str | None = None
    tick_size: str | None = None
    tick_size_steps: list[dict[str, str]] = field(default_factory=list)  # Deribit: [{above_price, tick_size}]
    lot_size: str | None = None
    min_size: str | None = None
    min_notional: str | None = None
    max_leverage: str | None = None  # Hyperliquid maxLeverage
    initial_margin: str | None = None  # fraction of notional (dYdX initialMarginFraction)
    maintenance_margin: str | None = None  # fraction of notional (dYdX maintenanceMarginFraction)
    strike: str | None = None
    option_type: str | None = None  # call | put
    expiry_ns: int | None = None
    underlying: str | None = None
    index: str | None = None
    state: str = "open"  # open | halted | settlement | delivered | closed … (the venue's word mapped)
    valid_from: int = 0  # ns: the receive time of the frame (REST list or push) that first showed these terms
    source: Source | None = None  # raw topic, partition, offset, index
    ts_exchange: int = 0  # the venue's time of that frame, when it gives one (Deribit state pushes); else 0

    def terms(self) -> dict[str, Any]:
        out = asdict(self)
        for name in _NOT_TERMS:
            out.pop(name)
        return out

    def record_key(self) -> str:
        return f"{self.key}|{self.valid_from}"

    def encode(self, ts_published: int = 0) -> bytes:
        """The ``ref.instruments`` record: the spec, ``ts_recv`` (= ``valid_from``) and ``ts_published``."""
        return encode(self.record(ts_published))

    def record(self, ts_published: int = 0) -> InstrumentRecord:
        """The ``ref.instruments`` record of this version."""
        record = msgspec.convert(self, InstrumentRecord, from_attributes=True)
        record.ts_recv, record.ts_published = self.valid_from, ts_published
        return record

    @classmethod
    def decode(cls, value: bytes) -> Spec:
        """A ``ref.instruments`` record's spec (``msgspec.ValidationError`` when it is not one)."""
        return cls.from_record(decode(REF_INSTRUMENTS, value))

    @classmethod
    def from_record(cls, record: InstrumentRecord) -> Spec:
        fields = {k: getattr(record, k) for k in _FIELDS}
        fields["tick_size_steps"] = [msgspec.structs.asdict(step) for step in record.tick_size_steps]
        return cls(**fields)


_FIELDS = tuple(Spec.__dataclass_fields__)


class InstrumentListParser(Protocol):
    """A venue's REST instrument lists → specs (``Venue.instrument_lists``).

    A venue whose list is a POST (Hyperliquid's ``/info``) also defines ``post_body(url) ->
    bytes | None``: the JSON body to POST to that URL of ``urls`` (None: a GET). It is optional
    (``app.venues.GuardedInstrumentList.post_body`` answers None without it)."""

    def urls(self, api_url: str, symbols: list[str]) -> list[str]:
        """The REST requests that list ``symbols``' instruments (at ``api_url``, live or simulator)."""
        ...

    def parse(self, body: bytes) -> list[Spec] | None:
        """The specs in a REST body; None when the body is not this venue's instrument list."""
        ...


class Registry:
    """Every version of every instrument (in memory; fed from ``ref.instruments``)."""

    def __init__(self) -> None:
        self.versions: dict[str, list[Spec]] = {}  # key → versions, oldest first
        self.generation = 0  # counts the versions added: what is derived from them is stale when it moves

    def apply(self, spec: Spec) -> bool:
        """Add ``spec`` if its terms differ from the version in force at its time: True if new."""
        versions = self.versions.setdefault(spec.key, [])
        current = self._at(versions, spec.valid_from)
        if current is not None and current.terms() == spec.terms():
            return False
        if any(v.valid_from == spec.valid_from for v in versions):
            return False  # the same moment already has a version (a redelivered record)
        bisect.insort(versions, spec, key=lambda v: v.valid_from)
        self.generation += 1
        return True

    def changed(self, specs: list[Spec], valid_from: int, source: Source) -> list[Spec]:
        """The specs of one REST response that are new versions (and apply them)."""
        return [s for s in (replace(s, valid_from=valid_from, source=source, ts_exchange=0) for s in specs)
                if self.apply(s)]

    def state_changed(self, states: list[tuple[str, str, int]], valid_from: int,
                      source: Source) -> list[Spec]:
        """New versions for instruments whose state changed (a venue's state channel); an
        instrument not in the registry yet waits for its REST list."""
        out = []
        for key, state, ts_exchange in states:
            current = self.at(key, valid_from)
            if current is not None and current.state != state:
                new = replace(current, state=state, valid_from=valid_from, source=source, ts_exchange=ts_exchange)
                if self.apply(new):
                    out.append(new)
        return out

    @staticmethod
    def _at(versions: list[Spec], ts: int) -> Spec | None:
        i = bisect.bisect_right(versions, ts, key=lambda v: v.valid_from)
        return versions[i - 1] if i else None

    def at(self, key: str, ts: int) -> Spec | None:
        """The version of ``key`` in force at ``ts`` (None before its first)."""
        return self._at(self.versions.get(key, []), ts)
