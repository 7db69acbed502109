"""The ``books`` table: every instrument's book, sync state and Binance buffer, plus the
progress rows saying which raw offsets each partition covers.

Row layout, write order and loading back: ``app.state.layout``. Local copy: one RocksDB per
partition under ``DATA_DIR/state/books-<partition>`` (``app.state.store``). Changelog:
``<APP_ID>-books-changelog``, compacted, written in transactions (``app.state.changelog``).
Partitions: ``TOPIC_PARTITIONS``, co-partitioned with every raw and downstream topic.

RocksDB options are set deliberately: faust's defaults (a 2 GiB block cache per partition
database) would add up to tens of GiB with many partitions.
"""

from __future__ import annotations

from app.state.store import TableSpec

BOOKS = TableSpec(
    name="books",
    block_cache_bytes=32 * 1024 * 1024,
    write_buffer_bytes=16 * 1024 * 1024,
    max_write_buffers=3,
)
