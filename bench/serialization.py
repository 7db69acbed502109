"""Record encoding and decoding on the hot path: msgspec Structs (app.records) against building
a dict for orjson (what bookstream did before), on records the worker publishes for the shared
captures. A step of `make bench` (``BENCH_ONLY=serialization``); also runnable alone:

    .venv/bin/python bench/serialization.py

Per topic: µs per record to encode (from the record's typed fields) and to decode (orjson into
a dict, untyped; msgspec into the definition, typed and validated).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOPICS = ("book.top", "trades", "ticker", "book.depth", "options.chain")


def _per_record_us(fn: Callable[[Any], Any], items: list[Any], repeat: int = 5) -> float:
    """The best of ``repeat`` passes over ``items``: µs per item."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - began)
    return round(best / len(items) * 1e6, 3)


def measure(captures: Path = ROOT.parent / "shared" / "captures") -> dict[str, Any]:
    from app import records
    from app.capture.formats import read
    from scripts.harness import CRYPTOFEED_FILES, publish

    sent: list[tuple[str, int, bytes, bytes]] = []
    for name in CRYPTOFEED_FILES:
        sent += publish(read([captures / "cryptofeed" / name], "cryptofeed"))
    out: dict[str, Any] = {}
    for topic in TOPICS:
        values = [v for t, _, _, v in sent if t == topic]
        typed = [records.decode(topic, v) for v in values]
        fields = [msgspec.to_builtins(r) for r in typed]  # the plain values the old builders had at hand
        out[topic] = {
            "records": len(values),
            "bytes_per_record": round(sum(map(len, values)) / len(values)),
            "encode_orjson_dict_us": _per_record_us(lambda f: orjson.dumps(dict(f)), fields),
            "encode_msgspec_struct_us": _per_record_us(records.encode, typed),
            "decode_orjson_untyped_us": _per_record_us(orjson.loads, values),
            "decode_msgspec_typed_us": _per_record_us(lambda v, t=topic: records.decode(t, v), values),
        }
    return out


def main() -> int:
    figures = measure()
    head = ("topic", "records", "bytes", "enc orjson(dict)", "enc msgspec", "dec orjson", "dec msgspec typed")
    print("  ".join(f"{h:>17}" for h in head))
    for topic, f in figures.items():
        print("  ".join(f"{v:>17}" for v in (topic, f["records"], f["bytes_per_record"], f["encode_orjson_dict_us"],
                                             f["encode_msgspec_struct_us"], f["decode_orjson_untyped_us"],
                                             f["decode_msgspec_typed_us"])))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
