"""The README's examples of reading the topics (the blocks marked ``<!-- example: NAME -->``),
run as a user runs them against a worker's topics: kcat + jq, and app.client into a dict and
into a polars frame. Their output is compared with the in-process reference of the same
capture, so an example that prints something else fails."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from app.capture.formats import read
from app.client import Repeats
from app.records import BookTop
from tests.helpers import ROOT, Namespace, Worker, consume, publish, values, wait_for, workers

pytestmark = pytest.mark.captures

CAPTURE = "OKX.ws.1.0"  # books, trades, tickers and an options chain, in one capture
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.S)


def examples() -> dict[str, tuple[str, str]]:
    """name → (language, code) of every marked example of the README."""
    found = {m.group(1): (m.group(2), m.group(3)) for m in EXAMPLE.finditer((ROOT / "README.md").read_text())}
    assert {"kcat-jq", "latest-tops", "trades-frame"} <= set(found), sorted(found)
    return found


@pytest.fixture(scope="module")
def topics(module_ns: Namespace, captures: Path, tmp_path_factory: pytest.TempPathFactory) -> Namespace:
    """The capture replayed and applied by a worker: its topics hold every output."""
    path = captures / "cryptofeed" / CAPTURE
    ns = module_ns
    ns.replay(str(path), "--format", "cryptofeed")
    published = [(t, v) for t, _, _, v in publish(read([path], "cryptofeed"))]
    want = collections.Counter(t for t, _ in published if t in ("book.top", "trades"))
    worker = Worker(ns, tmp_path_factory.mktemp("data"), RISK_ENABLED="false", INGEST_IN_WORKER="false")
    with workers(worker):
        worker.start()
        for topic, n in want.items():
            wait_for(lambda t=topic, n=n: len(consume(ns.bootstrap, ns.topic(t), idle_s=1)) >= n, 120,
                     f"{n} {topic} records")
    return ns


def run(ns: Namespace, language: str, code: str) -> str:
    env = {**os.environ, **ns.env(), "KAFKA_BOOTSTRAP": ns.bootstrap, "TOPIC_PREFIX": ns.topic("")}
    if language == "sh":
        kcat = os.environ.get("KCAT", str(ROOT / ".cache" / "kcat" / "kcat"))
        assert Path(kcat).exists(), f"kcat not found at {kcat}: run `make kcat`"
        env["PATH"] = f"{Path(kcat).parent}{os.pathsep}{env['PATH']}"
        cmd = ["bash", "-eo", "pipefail", "-c", code]
    else:
        cmd = [sys.executable, "-c", code]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def latest_tops(ns: Namespace) -> dict[str, tuple[str | None, str | None]]:
    """The last top of each instrument on book.top, by the README's rule for repeats."""
    repeats, out = Repeats("book.top"), {}
    for body in values(consume(ns.bootstrap, ns.topic("book.top"), idle_s=1)):
        top = BookTop(**body)
        if repeats.new("", top):
            out[f"{top.venue}:{top.instrument}"] = (top.bid_px, top.ask_px)
    return out


def test_the_latest_tops_example_prints_each_instruments_last_top(topics: Namespace) -> None:
    lang, code = examples()["latest-tops"]
    printed = [line.split(" ") for line in run(topics, lang, code).splitlines()]
    got = {key: (None if bid == "None" else bid, None if ask == "None" else ask) for key, bid, ask in printed}
    want = latest_tops(topics)
    assert len(want) >= 3
    assert got == want


def test_the_trades_frame_example_gives_each_instruments_trades_and_volume(topics: Namespace) -> None:
    lang, code = examples()["trades-frame"]
    lines = run(topics, lang, code).splitlines()
    assert lines[0] == "instrument,unit,trades,volume"
    rows = {(i, u): (int(n), v) for i, u, n, v in (line.split(",") for line in lines[1:])}
    trades = values(consume(topics.bootstrap, topics.topic("trades"), idle_s=1))
    day = max(t["ts_exchange"] // 86_400_000_000_000 for t in trades)
    unique = {(t["key"], t["trade_id"]): t for t in trades if t["ts_exchange"] // 86_400_000_000_000 == day}
    want: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    volume: dict[tuple[str, str], Decimal] = collections.defaultdict(Decimal)
    for t in unique.values():
        want[(t["key"], t["unit"])][0] += 1
        volume[(t["key"], t["unit"])] += Decimal(t["size"])
    assert rows
    assert {k: n for k, (n, _) in rows.items()} == {k: n for k, (n, _) in want.items()}
    assert {k: Decimal(v) for k, (_, v) in rows.items()} == dict(volume)


def test_the_kcat_jq_example_prints_the_last_three_top_changes(topics: Namespace) -> None:
    lang, code = examples()["kcat-jq"]
    got = [json.loads(line) for line in run(topics, lang, code).splitlines()]
    tops = values(consume(topics.bootstrap, topics.topic("book.top"), idle_s=1))
    assert got
    assert len(got) == 3
    published = {(f"{t['venue']}:{t['instrument']}", t["bid_px"], t["ask_px"]) for t in tops}
    assert all((g["instrument"], g["bid"], g["ask"]) in published for g in got), got
