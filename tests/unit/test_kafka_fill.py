"""``app.kafka.fill``: rows straight into aiokafka's C record builder, held to what
``BatchBuilder.append`` builds (aiokafka's own reader reads both batches back)."""

from __future__ import annotations

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from app.kafka import Producer, fill


def _built(batch: BatchBuilder) -> DefaultRecordBatch:
    batch._set_producer_state(7, 0, 0)
    return DefaultRecordBatch(bytes(batch._build()))


def _read(batch: BatchBuilder) -> list[tuple[int, bytes | None, bytes | None]]:
    return [(r.offset, r.key, r.value) for r in _built(batch)]


def _rows(n: int) -> list[tuple[bytes, bytes | None]]:
    return [(b"deribit:BTC-PERPETUAL\x00b\x00%d" % i, None if i % 5 == 0 else b"%d.5" % i) for i in range(n)]


@pytest.mark.parametrize("compression", [0, 4])
def test_fill_builds_the_batch_append_builds_and_stops_where_it_is_full(compression: int) -> None:
    rows = _rows(3000)
    by_fill, by_append = BatchBuilder(16384, compression), BatchBuilder(16384, compression)
    stop = fill(by_fill, rows, 0, 1000)
    stop = fill(by_fill, rows, stop, len(rows)) if stop == 1000 else stop  # on from where it was
    appended = 0
    for key, value in rows:
        if by_append.append(key=key, value=value, timestamp=None) is None:
            break
        appended += 1
    assert 0 < stop == appended < len(rows)  # full before the end, at the same row
    assert by_fill.record_count() == by_append.record_count() == stop
    assert by_fill.closed()
    assert by_append.closed()
    assert fill(by_fill, rows, stop, len(rows)) == stop  # a closed batch takes nothing more
    assert _read(by_fill) == _read(by_append) == [(i, k, v) for i, (k, v) in enumerate(rows[:stop])]


def test_fill_takes_every_row_when_they_fit() -> None:
    rows = _rows(10)
    batch = BatchBuilder(1 << 20, 0)
    assert fill(batch, rows, 2, 7) == 7
    assert not batch.closed()
    assert batch.record_count() == 5
    assert [(k, v) for _, k, v in _read(batch)] == rows[2:7]


@pytest.mark.parametrize("transactional", [False, True])
async def test_a_batch_of_few_bytes_goes_uncompressed_and_a_larger_one_compressed(transactional: bool) -> None:
    extra = {"transactional_id": "t-1"} if transactional else {}
    producer = Producer(bootstrap_servers="127.0.0.1:1", compression_type="zstd", compression_min_bytes=1024,
                        enable_idempotence=True, **extra)
    rows = _rows(200)
    for nbytes, codec in ((None, 4), (1023, 0), (1024, 4), (50_000, 4)):
        batch = producer.create_batch(nbytes)
        assert fill(batch, rows, 0, len(rows)) == len(rows)
        read = _built(batch)
        assert read.compression_type == codec, nbytes
        assert read.is_transactional == transactional
        assert [(r.key, r.value) for r in read] == rows  # aiokafka's reader takes both kinds
    plain = Producer(bootstrap_servers="127.0.0.1:1", compression_type=None, compression_min_bytes=1024)
    assert _built(plain.create_batch(50_000)).compression_type == 0
