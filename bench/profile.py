"""Where a worker's CPU goes: py-spy's raw (collapsed) stacks grouped by package and by path."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PROFILE_GROUPS = (("bookstream", ("app", "agents", "tables")), ("faust", ("faust", "mode")),
                  ("aiokafka", ("aiokafka", "kafka")), ("rocksdb", ("rocksdict",)),
                  ("asyncio", ("asyncio", "selectors")))


def _group(frame: str) -> str:
    """The package a py-spy frame ``func (path/to/file.py:line)`` belongs to."""
    path = frame.rpartition("(")[2].rpartition(":")[0]
    parts = path.split("/")
    for anchor in ("site-packages", str(ROOT.name)):
        if anchor in parts[:-1]:
            parts = parts[parts.index(anchor) + 1:]
            break
    else:
        parts = [p for p in parts if p and not p.startswith("python3")] if path.startswith("/") else parts
        if path.startswith("/") and len(parts) > 1:
            parts = parts[-2:]  # /usr/lib/python3.11/asyncio/events.py → asyncio/events.py
    top = parts[0].removesuffix(".py") if parts else ""
    for name, packages in PROFILE_GROUPS:
        if top in packages:
            return name
    return "other"


#: Which part of the worker a sample belongs to: the first rule matching its stack.
PATHS = (
    ("bookstream: outputs (book.top, book.depth and its aggregates, status)", ("outputs.py", "publishing.py")),
    ("bookstream: table rows and commits (changelog transactions, RocksDB)", ("state/",)),
    ("bookstream: applying frames (parse, sync, book)", ("processor.py", "sync.py", "book.py", "venues/")),
    ("bookstream: other (record decoding, the agent)", ("app/", "agents/", "tables/")),
)


def _path_of(frames: list[str]) -> str:
    """Which part of the worker a sample belongs to, by what is on its stack."""
    text = ";".join(frames)
    if any(_group(f) == "bookstream" for f in frames):
        for name, marks in PATHS:
            if any(m in text for m in marks):
                return name
    if "producer" in text.lower() or "publish_message" in text or "_on_published" in text:
        return "faust/aiokafka producing (changelog and output records)"
    if any(m in text for m in ("consumer", "Consumer", "fetcher", "Fetcher", "streams.py", "Stream.")):
        return "faust/aiokafka consuming (fetch, per-record stream)"
    if "rocksdb" in text.lower():
        return "faust table store"
    return "event loop and other"


def profile_top(path: Path, n: int = 15) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output: self time per function and per package, and the
    share of samples with bookstream code anywhere on the stack (ours, callees included)."""
    if not path.exists():
        return {}
    own: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    paths: collections.Counter[str] = collections.Counter()
    total = inclusive_ours = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        frames = stack.split(";")
        leaf, weight = frames[-1], int(count)
        fn = re.sub(r"\s*\((?:.*/(?:site-packages|python3\.\d+|main)/)?([^:)]*)(?::\d+)?\)", r" (\1)", leaf)
        own[fn] += weight
        groups[_group(leaf)] += weight
        if any(_group(f) == "bookstream" for f in frames):
            inclusive_ours += weight
        paths[_path_of(frames)] += weight
        total += weight
    if not total:
        return {}
    return {
        "samples": total,
        "self_pct_by_package": {g: round(100 * c / total, 1) for g, c in groups.most_common()},
        "pct_with_bookstream_on_stack": round(100 * inclusive_ours / total, 1),
        "pct_by_path": {k: round(100 * c / total, 1) for k, c in paths.most_common()},
        "self_pct_top_functions": [{"function": f, "self_pct": round(100 * c / total, 1)}
                                   for f, c in own.most_common(n)],
    }
