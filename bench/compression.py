"""Measure Kafka compression codecs on real raw frames, batched as the producer batches them.

    .venv/bin/python bench/compression.py [CAPTURE …]   (default: the shared captures)

For each codec: compression ratio and CPU time to compress/decompress per MB of frames,
over 256 KiB batches (PRODUCER max_batch_size). Prints a table; writes nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from aiokafka import codec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [ROOT.parent / "shared/captures/hftbacktest/usdm/btcusdt_20240808.gz",
           ROOT.parent / "shared/captures/cryptofeed/COINBASE.jsonl",
           ROOT.parent / "shared/captures/cryptofeed/OKX.ws.1.0"]
CODECS = {
    "gzip": (codec.gzip_encode, codec.gzip_decode),
    "snappy": (codec.snappy_encode, codec.snappy_decode),
    "lz4": (codec.lz4_encode, codec.lz4_decode),
    "zstd": (codec.zstd_encode, codec.zstd_decode),
}


def frames(paths: list[Path]) -> list[bytes]:
    sys.path.insert(0, str(ROOT))
    from app.capture.formats import read

    out: list[bytes] = []
    for path in paths:
        fmt = "hftbacktest" if path.suffix == ".gz" else "cryptofeed"
        out.extend(rec.frame for rec in read([path], fmt))
    return out


def batches(data: list[bytes], size: int = 256 * 1024) -> list[bytes]:
    out, cur, n = [], [], 0
    for frame in data:
        cur.append(frame)
        n += len(frame)
        if n >= size:
            out.append(b"".join(cur))
            cur, n = [], 0
    if cur:
        out.append(b"".join(cur))
    return out


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or [p for p in DEFAULT if p.exists()]
    data = batches(frames(paths))
    raw = sum(map(len, data))
    print(f"{len(data)} batches, {raw / 2**20:.1f} MiB of frames from {', '.join(p.name for p in paths)}")
    print(f"{'codec':<8}{'ratio':>8}{'compress ms/MiB':>18}{'decompress ms/MiB':>20}")
    for name, (enc, dec) in CODECS.items():
        t0 = time.process_time()
        packed = [enc(b) for b in data]
        t1 = time.process_time()
        for b in packed:
            dec(b)
        t2 = time.process_time()
        size = sum(map(len, packed))
        mib = raw / 2**20
        print(f"{name:<8}{raw / size:>8.2f}{(t1 - t0) * 1000 / mib:>18.2f}{(t2 - t1) * 1000 / mib:>20.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
