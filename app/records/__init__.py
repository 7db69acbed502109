"""Every record bookstream reads or writes on Kafka: one typed definition per topic, with its
topic name, key and field documentation beside it (README "Topics and schemas").

The definitions are `msgspec <https://jcristharif.com/msgspec/>`_ Structs: producers build
records from them and :func:`encode` them; consumers inside bookstream :func:`decode` with
them; ``schemas/<topic>.json`` (JSON Schema 2020-12) is generated from them
(``faust -A app schemas``) and served at ``/api/schemas``. Why msgspec: encoding a Struct is
~3× faster than building a dict for orjson (``bench/serialization.py``), decoding validates
the types, and the JSON Schema comes from the same definitions.

Compatibility (README): within one ``SCHEMA_VERSION`` a topic may gain fields (readers ignore
what they do not know) and a field may gain values it documents as open (``reason``, ``state``);
removing or renaming a field, changing its type or its meaning, or changing a topic's key is a
new version, announced in the README and the schema's ``version``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from app.records import book, market, raw, risk
from app.records.book import BookCheckpoint, BookDepth, BookStatus, BookTop, DeadLetter, ResyncRequest
from app.records.common import Source, source
from app.records.market import FeedStatus, InstrumentRecord, OptionsChain, TickerRecord, TradeRecord
from app.records.raw import ConnEvent, RawLine
from app.records.risk import (
    Alert,
    CollateralRecord,
    Exposure,
    HedgeBlocked,
    HedgeFill,
    HedgeSignal,
    InputRef,
    MarginRecord,
    Nbbo,
    PositionRecord,
    RiskDepth,
    RuleState,
    Scenarios,
)

#: Bumped on an incompatible change (see the module's docstring).
SCHEMA_VERSION = 1

#: Topic names without TOPIC_PREFIX (``app.wire.Topics`` applies it).
BOOK_TOP, BOOK_DEPTH, BOOK_STATUS = "book.top", "book.depth", "book.status"
BOOK_CHECKPOINTS = "book.checkpoints"
CONTROL_RESYNC, DEADLETTER = "control.resync", "raw.deadletter"
TRADES, TICKER, FEED_STATUS = "trades", "ticker", "feed.status"
OPTIONS_CHAIN, REF_INSTRUMENTS = "options.chain", "ref.instruments"
POSITIONS, RISK_RULES, RISK_DEPTH = "positions", "risk.rules", "risk.depth"
RISK_EXPOSURE, RISK_SCENARIOS, RISK_HEDGE = "risk.exposure", "risk.scenarios", "risk.hedge"
ALERTS, NBBO = "alerts", "nbbo"
COLLATERAL, HEDGE_FILLS, RISK_MARGIN = "collateral", "hedge.fills", "risk.margin"

__all__ = [
    "ALERTS", "BOOK_CHECKPOINTS", "COLLATERAL", "HEDGE_FILLS", "RISK_MARGIN",
    "BOOK_DEPTH", "BOOK_STATUS", "BOOK_TOP", "CONTROL_RESYNC", "DEADLETTER",
    "FEED_STATUS", "NBBO",
    "OPTIONS_CHAIN", "POSITIONS", "REF_INSTRUMENTS", "RISK_DEPTH", "RISK_EXPOSURE", "RISK_HEDGE", "RISK_RULES",
    "RISK_SCENARIOS", "TICKER", "TRADES",
    "SCHEMA_VERSION", "TOPICS", "Alert", "BookCheckpoint", "BookDepth", "BookStatus", "BookTop",
    "CollateralRecord", "ConnEvent", "DeadLetter", "Exposure",
    "FeedStatus", "HedgeBlocked", "HedgeFill", "MarginRecord",
    "HedgeSignal", "InputRef", "InstrumentRecord", "Nbbo", "OptionsChain",
    "PositionRecord", "RawLine", "ResyncRequest", "RiskDepth", "RuleState", "Scenarios", "Source", "TickerRecord",
    "TopicSpec", "TradeRecord", "book", "decode", "encode", "json_schema", "market", "raw", "risk", "schema_file",
    "schema_text", "source", "spec_of", "stale_schemas", "write_schemas",
]


@dataclass(frozen=True)
class TopicSpec:
    """A topic (its name without TOPIC_PREFIX), the type of its record values, and its key."""

    topic: str
    type: Any
    key: str
    producer: str
    compacted: bool = False

    @property
    def doc(self) -> str:
        first = self.type if isinstance(self.type, type) else msgspec.inspect.type_info(self.type)
        text = getattr(first, "__doc__", None) or ""
        return " ".join(text.split())


RAW = "raw.<venue>"
TOPICS: dict[str, TopicSpec] = {t.topic: t for t in (
    TopicSpec(RAW, RawLine, "the instrument key, or <venue>:* for frames of several instruments (per-frame key inside)",
              "ingest, record --produce, replay"),
    TopicSpec(BOOK_TOP, BookTop, "instrument key", "worker"),
    TopicSpec(BOOK_DEPTH, BookDepth, "instrument key", "worker"),
    TopicSpec(BOOK_STATUS, BookStatus, "instrument key", "worker"),
    TopicSpec(BOOK_CHECKPOINTS, BookCheckpoint, "instrument key", "worker"),
    TopicSpec(CONTROL_RESYNC, ResyncRequest, "instrument key", "worker"),
    TopicSpec(DEADLETTER, DeadLetter, "instrument key (or the raw record's key)", "worker"),
    TopicSpec(TRADES, TradeRecord, "instrument key", "worker"),
    TopicSpec(TICKER, TickerRecord, "instrument key", "worker"),
    TopicSpec(FEED_STATUS, FeedStatus, "instrument key (<venue>: for a venue-wide channel)", "worker"),
    TopicSpec(REF_INSTRUMENTS, InstrumentRecord, "<instrument key>|<valid_from>", "worker", compacted=True),
    TopicSpec(OPTIONS_CHAIN, OptionsChain, "<venue>:<chain>", "worker"),
    TopicSpec(POSITIONS, PositionRecord, "<portfolio>|<instrument key>", "positions set, the desk's tools",
              compacted=True),
    TopicSpec(COLLATERAL, CollateralRecord, "<portfolio>|<currency>", "collateral set", compacted=True),
    TopicSpec(HEDGE_FILLS, HedgeFill, "the signal's id", "hedge fill|ack|reject, hedge paper, the desk's executor",
              compacted=True),
    TopicSpec(RISK_RULES, RuleState, "rule id", "rules state, POST /api/risk/rules/{rule}/state", compacted=True),
    TopicSpec(RISK_DEPTH, RiskDepth, "instrument key", "worker"),
    TopicSpec(RISK_EXPOSURE, Exposure, "<portfolio>|<underlying>", "worker (risk engine)"),
    TopicSpec(RISK_SCENARIOS, Scenarios, "<portfolio>|<underlying>", "worker (risk engine)"),
    TopicSpec(RISK_MARGIN, MarginRecord, "<portfolio>|<venue>|<currency>", "worker (risk engine)"),
    TopicSpec(RISK_HEDGE, HedgeSignal | HedgeBlocked, "the record's id (partition: of its rule)",
              "worker (risk engine)"),
    TopicSpec(ALERTS, Alert, "<kind>|<instrument key or pair>", "worker (risk engine)"),
    TopicSpec(NBBO, Nbbo, "group: a spot pair (BTC/USD) or linear perpetuals (BTC/USD perp)", "worker (risk engine)"),
)}

_ENCODER = msgspec.json.Encoder()
encode = _ENCODER.encode


def spec_of(topic: str) -> TopicSpec:
    """The spec of ``topic`` (without TOPIC_PREFIX; any ``raw.<venue>`` but the dead letters is raw)."""
    if topic in TOPICS:
        return TOPICS[topic]
    if topic.startswith("raw."):
        return TOPICS[RAW]
    raise KeyError(f"no record definition for topic {topic!r}")


@cache
def _decoder(topic: str) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(spec_of(topic).type)


def decode(topic: str, value: bytes) -> Any:
    """A record of ``topic`` (without TOPIC_PREFIX), typed; raises ``msgspec.ValidationError``
    or ``msgspec.DecodeError`` for one that does not match its definition."""
    return _decoder(topic).decode(value)


def json_schema(topic: str) -> dict[str, Any]:
    """The published JSON Schema of ``topic``'s record values."""
    spec = spec_of(topic)
    schema: dict[str, Any] = msgspec.json.schema(spec.type)
    name = spec.topic.replace("<venue>", "venue")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"bookstream/{name}/v{SCHEMA_VERSION}",
            "title": spec.topic, "description": spec.doc, "x-kafka-key": spec.key, "x-producer": spec.producer,
            "x-compacted": spec.compacted, "x-version": SCHEMA_VERSION, **schema}


def schema_file(topic: str) -> str:
    """``schemas/<file>`` of a topic: ``raw.venue.json`` for the raw topics."""
    return topic.replace("<venue>", "venue") + ".json"


def schema_text(topic: str) -> str:
    """The schema file's text: sorted keys, two-space indents, a final newline (stable diffs)."""
    return json.dumps(json_schema(topic), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every topic's schema file into ``directory`` (and no other file); the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic in TOPICS:
        path = directory / schema_file(topic)
        path.write_text(schema_text(topic))
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """Files of ``directory`` that differ from the definitions (or are missing, or name no topic)."""
    wanted = {schema_file(t): schema_text(t) for t in TOPICS}
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    out = [name for name, text in wanted.items()
           if name not in present or (directory / name).read_text() != text]
    return sorted(out + [name for name in present if name not in wanted])
