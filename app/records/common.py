"""Field types shared by the record definitions: each carries its documentation into the
published JSON Schema."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

#: Integer nanoseconds since the Unix epoch.
Ns = Annotated[int, Meta(description="nanoseconds since the Unix epoch")]
#: A decimal number as text, exactly as the venue sent it (or computed exactly from such).
Dec = Annotated[str, Meta(description="a decimal number as text (never a float): the venue's own digits")]
#: ``<venue>:<symbol>``.
InstrumentKey = Annotated[str, Meta(description="instrument key <venue>:<symbol>, e.g. binance-usdm:BTCUSDT")]
Venue = Annotated[str, Meta(description="venue name as in FEEDS: deribit, binance, binance-usdm, okx …")]
Symbol = Annotated[str, Meta(description="the venue's own instrument symbol")]
Level = Annotated[tuple[str, str], Meta(description="[price, size] as decimal text")]


class Record(msgspec.Struct, kw_only=True):
    """Base of every record definition: keyword construction, JSON objects on the wire."""


class Source(msgspec.Struct, kw_only=True):
    """Where a published number came from: the raw record and the frame within it."""

    topic: Annotated[str, Meta(description="the raw topic, e.g. raw.deribit")]
    partition: int
    offset: Annotated[int, Meta(description="the raw record's offset")]
    index: Annotated[int, Meta(description="the frame's position in that record (0 for a v1 record)")]


def source(topic: str, partition: int, offset: int, index: int) -> Source:
    return Source(topic=topic, partition=partition, offset=offset, index=index)


#: A JSON value of any shape (kept as the venue or the configuration gave it).
Json = Any
