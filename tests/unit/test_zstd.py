"""app.zstd: aiokafka's zstd record batches through a kept context per thread, the same bytes on
the wire as aiokafka's own codec, and every payload aiokafka's codec reads still read."""

from __future__ import annotations

import struct
from typing import Any

import cramjam
import pytest
import zstandard
from aiokafka.record import _crecords
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

import app.kafka  # noqa: F401 - importing it installs app.zstd, as in every process that talks to Kafka
from app import zstd

ZSTD = 4  # the compression codec in a record batch's attributes
RECORDS = [(b"binance-usdm:BTC%dUSDT" % i, b'{"bid":"42000.%d","ask":"42001.0","seq":%d}' % (i, i))
           for i in range(200)]
ATTRIBUTES_AT = 21  # a v2 record batch: base offset, length, leader epoch, magic, crc, then attributes
# Fixed record times: with timestamp=None each record takes the current millisecond, and two
# batches built across a tick differ before compression (their sizes then differed by a few bytes).
T0_MS = 1_764_000_000_000


def _batch(builder_cls: Any = DefaultRecordBatchBuilder) -> bytes:
    builder = builder_cls(magic=2, compression_type=ZSTD, is_transactional=0, producer_id=-1,
                          producer_epoch=-1, base_sequence=0, batch_size=1 << 20)
    for offset, (key, value) in enumerate(RECORDS):
        builder.append(offset, timestamp=T0_MS + offset, key=key, value=value, headers=[])
    return bytes(builder.build())


def _read(buffer: bytes, batch_cls: Any = DefaultRecordBatch) -> list[tuple[bytes, bytes]]:
    return [(r.key, r.value) for r in batch_cls(buffer)]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times app.zstd's kept contexts were asked for (aiokafka calling app.zstd)."""
    counts = {"compress": 0, "decompress": 0}
    compressor, decompressor = zstd._compressor, zstd._decompressor

    def counted_compressor() -> zstandard.ZstdCompressor:
        counts["compress"] += 1
        return compressor()

    def counted_decompressor() -> zstandard.ZstdDecompressor:
        counts["decompress"] += 1
        return decompressor()

    monkeypatch.setattr(zstd, "_compressor", counted_compressor)
    monkeypatch.setattr(zstd, "_decompressor", counted_decompressor)
    return counts


def test_aiokafkas_compiled_batches_compress_and_read_through_app_zstd(calls: dict[str, int]) -> None:
    builder_cls = _crecords.default_records.DefaultRecordBatchBuilder
    buffer = _batch(builder_cls)
    assert calls["compress"] == 1
    assert struct.unpack_from(">h", buffer, ATTRIBUTES_AT)[0] & 0x07 == ZSTD
    assert _read(buffer, _crecords.default_records.DefaultRecordBatch) == RECORDS
    assert calls["decompress"] == 1


def test_the_batches_are_the_ones_aiokafkas_own_codec_writes_and_reads() -> None:
    ours = _batch()
    zstd.install(ours=False)
    try:
        theirs = _batch()
        assert _read(ours) == RECORDS  # aiokafka's codec reads a batch app.zstd wrote
    finally:
        zstd.install()
    assert _read(theirs) == RECORDS  # and app.zstd reads aiokafka's
    assert len(ours) == len(theirs)  # one frame at the same level: the same size on the wire


def test_install_puts_app_zstd_in_every_module_aiokafka_calls_it_from_and_can_put_aiokafkas_back() -> None:
    import aiokafka.codec

    modules = (aiokafka.codec, _crecords.default_records, __import__("aiokafka.record.default_records").record
               .default_records)
    assert all(m.zstd_encode is zstd.zstd_encode and m.zstd_decode is zstd.zstd_decode for m in modules)
    zstd.install(ours=False)
    try:
        assert all(m.zstd_encode is not zstd.zstd_encode and m.zstd_decode is not zstd.zstd_decode
                   for m in modules)
        assert aiokafka.codec.zstd_decode(aiokafka.codec.zstd_encode(b"x" * 100)) == b"x" * 100
    finally:
        zstd.install()
    assert all(m.zstd_encode is zstd.zstd_encode for m in modules)


@pytest.mark.parametrize("payload", [b"", b"a", b'{"e":"depthUpdate"}' * 5000], ids=["empty", "one", "large"])
def test_every_frame_aiokafkas_codec_reads_is_read(payload: bytes) -> None:
    # no content size in its header, as a streaming compressor writes (the Java client's frames)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(payload)
    assert zstandard.frame_content_size(no_size) == -1
    two_frames = zstd.zstd_encode(payload) + zstd.zstd_encode(b"and more")
    for frame, expected in ((zstd.zstd_encode(payload), payload),
                            (bytes(cramjam.zstd.compress(payload, level=3)), payload),
                            (no_size, payload), (two_frames, payload + b"and more")):
        assert zstd.zstd_decode(frame) == expected == bytes(cramjam.zstd.decompress(frame))


def test_another_level_and_damaged_input_behave_as_aiokafkas_codec() -> None:
    payload = b'{"e":"depthUpdate","b":[["42000.1","1.5"]]}' * 300
    assert zstd.zstd_decode(zstd.zstd_encode(payload, level=19)) == payload
    assert zstd.zstd_encode(payload, level=zstd.LEVEL) == zstd.zstd_encode(payload)
    damaged = bytearray(zstd.zstd_encode(payload))
    damaged[len(damaged) // 2:] = b"\x00" * (len(damaged) - len(damaged) // 2)
    with pytest.raises(cramjam.DecompressionError):
        zstd.zstd_decode(bytes(damaged))
    with pytest.raises(cramjam.DecompressionError):
        cramjam.zstd.decompress(bytes(damaged))


def test_a_frame_larger_than_the_fast_bound_is_streamed_by_cramjam(monkeypatch: pytest.MonkeyPatch,
                                                                    calls: dict[str, int]) -> None:
    payload = b'{"e":"depthUpdate"}' * 100
    frame = zstd.zstd_encode(payload)
    monkeypatch.setattr(zstd, "FAST_MAX_BYTES", len(payload) - 1)
    assert zstd.zstd_decode(frame) == payload
    assert calls["decompress"] == 0  # not through the kept context: no allocation of the declared size
    monkeypatch.setattr(zstd, "FAST_MAX_BYTES", len(payload))
    assert zstd.zstd_decode(frame) == payload
    assert calls["decompress"] == 1
