"""Kafka's zstd record batches with a kept zstd context per thread, in place of aiokafka's codec.

aiokafka compresses and decompresses every zstd batch through ``aiokafka.codec`` (cramjam),
which sets up a new zstd context for each call: ~10 µs to compress and ~9 µs to decompress a
batch of a few hundred bytes to a few KB, whatever its size, and a live worker handles many
such batches (measured at 5,000 frames/s: ~1,200 compressed and ~2,400 decompressed a second,
most under 4 KB, ~7 % of the worker's CPU). ``zstandard`` with one compressor and one
decompressor kept per thread does the same in 2.7 and 1.3 µs (README "Where the time goes").

The format is unchanged: one zstd frame per batch at level 3 (Kafka's default, as aiokafka's),
its size in the frame header. A payload this decoder does not take in one call — a frame whose
header has no content size (a streaming compressor's, as the Java client writes), an empty one,
one that says it is larger than ``FAST_MAX_BYTES``, several frames, a damaged one — goes to
cramjam's decoder as before, so every batch aiokafka could read is read, and what cramjam would
refuse is still refused.
"""

from __future__ import annotations

import threading
from typing import Any

import cramjam
import zstandard

#: aiokafka's (and Kafka's) default zstd level: the level of every batch it compresses.
LEVEL = 3

#: Larger declared sizes go to cramjam, which streams (a damaged header must not allocate GBs;
#: a batch is at most a few times max.message.bytes, 16 MiB here, once decompressed).
FAST_MAX_BYTES = 256 * 2**20

_local = threading.local()
_AIOKAFKAS: list[Any] = []  # aiokafka's own encode and decode, as found before the first install


def _compressor() -> zstandard.ZstdCompressor:
    try:
        return _local.compressor
    except AttributeError:
        _local.compressor = zstandard.ZstdCompressor(level=LEVEL)
        return _local.compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    try:
        return _local.decompressor
    except AttributeError:
        _local.decompressor = zstandard.ZstdDecompressor()
        return _local.decompressor


def zstd_encode(payload: Any, level: int | None = None) -> bytes:
    """One zstd frame of ``payload`` (aiokafka's ``zstd_encode``)."""
    if level is not None and level != LEVEL:
        return bytes(cramjam.zstd.compress(payload, level=level))
    return _compressor().compress(payload)


def zstd_decode(payload: Any) -> bytes:
    """The bytes of a zstd payload (aiokafka's ``zstd_decode``)."""
    try:
        # an empty first frame is decoded as b"" whatever follows it (zstandard 0.25 does not
        # check the rest then): those, the ones without a size and the huge ones go to cramjam
        if 0 < zstandard.frame_content_size(payload) <= FAST_MAX_BYTES:
            return _decompressor().decompress(payload, allow_extra_data=False)
    except zstandard.ZstdError:  # several frames, or damaged
        pass
    return bytes(cramjam.zstd.decompress(payload))


def install(ours: bool = True) -> None:
    """aiokafka's record batches (the compiled and the Python ones) and its codec module use
    these from now on, in this process; ``ours=False`` puts aiokafka's own back (the bench's
    plain-aiokafka baseline)."""
    import aiokafka.codec
    import aiokafka.record.default_records

    modules: list[Any] = [aiokafka.codec, aiokafka.record.default_records]
    try:
        from aiokafka.record._crecords import default_records as compiled
    except ImportError:  # aiokafka without its compiled extensions (AIOKAFKA_NO_EXTENSIONS)
        pass
    else:
        modules.append(compiled)
    if not _AIOKAFKAS:
        _AIOKAFKAS.extend((aiokafka.codec.zstd_encode, aiokafka.codec.zstd_decode))
    encode, decode = (zstd_encode, zstd_decode) if ours else _AIOKAFKAS
    for module in modules:
        module.zstd_encode, module.zstd_decode = encode, decode

