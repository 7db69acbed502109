"""The ``books`` table: every instrument's book, sync state and Binance buffer.

Layout (keys and values are raw bytes; ``K`` is the instrument key, e.g.
``binance-usdm:BTCUSDT``, and ``\\0`` separates it from the row tag)::

    K \\0 s             → sync state (orjson: state, reason, seq, offset, counters …)
    K \\0 b <price>     → bid size at <price>, both the venue's decimal text
    K \\0 a <price>     → ask size at <price>
    K \\0 q <u:020d>    → a Binance delta buffered until the REST snapshot arrives

Why one row per level: what an applied update writes to the changelog is one small
record per changed level plus the state row (~200 bytes), whatever the book's depth; a
1,000-level book is never re-serialised per delta. Compaction keeps the changelog at one
record per live level. Why one table for all of it: rows of one instrument share a
changelog partition, so Kafka keeps them in write order; the state row (with the source
offset it covers) is written last for every record, so a recovered state row implies
all level rows before it were recovered too.

RocksDB options are set deliberately: faust's defaults (2 GiB block cache per partition
database) would add up to tens of GiB with many partitions.
"""

from __future__ import annotations

from app.core import app, settings

SEP = b"\x00"
STATE, BID, ASK, BUFFER = b"s", b"b", b"a", b"q"

books = app.Table(
    "books",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    options={
        "block_cache_size": 32 * 1024 * 1024,
        "write_buffer_size": 16 * 1024 * 1024,
        "max_write_buffer_number": 3,
    },
)


def state_key(instrument: bytes) -> bytes:
    return instrument + SEP + STATE


def level_key(instrument: bytes, side: str, price: str) -> bytes:
    return instrument + SEP + side.encode() + price.encode()


def buffer_key(instrument: bytes, seq: int) -> bytes:
    return instrument + SEP + BUFFER + b"%020d" % seq
