"""Test-only helpers: references, truth checks, worker cleanup.

The process-level harness (broker, namespaces, worker and simulator processes, topic reads)
is scripts/harness.py, shared with the benchmarks; it is re-exported here for the tests.
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from scripts.harness import (
    CAPTURES,
    FAUST,
    ROOT,
    Broker,
    Namespace,
    Simulator,
    Worker,
    consume,
    frames,
    free_port,
    http_json,
    percentile,
    produce_frames,
    publish,
    rss_mb,
    values,
    wait_for,
)

__all__ = [
    "CAPTURES", "FAUST", "ROOT", "Broker", "Namespace", "SimSite", "SimSiteFactory", "Simulator", "Worker",
    "book_levels", "by_instrument", "consume", "examples", "feeds_spec", "frames", "free_port", "http_json",
    "match_truth", "percentile", "produce_frames", "produce_records", "promtool_check", "publish", "reference",
    "rss_mb",
    "tops_matching_no_truth", "values", "wait_for", "workers",
]


def produce_records(ns: Namespace, sent: list[tuple[str, int, bytes, bytes]]) -> None:
    """Records (topic without prefix, partition, key, value) into ``ns``'s topics, as published."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from app.kafka import ensure_topics

    settings = ns.settings()

    async def go() -> None:
        await ensure_topics(settings, sorted({settings.topic(t) for t, *_ in sent}))
        producer = AIOKafkaProducer(bootstrap_servers=ns.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(settings.topic(t), v, key=k, partition=p) for t, p, k, v in sent]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a module's browser keeps a loop in this thread
        pool.submit(asyncio.run, go()).result()


def promtool_check(text: str) -> str:
    """What ``promtool check metrics`` says of a Prometheus text exposition: parse errors and lint
    problems with its exit status, or "" when it exits 0 saying nothing. Fails the calling test
    when promtool is not there (PROMTOOL, else .cache/promtool/promtool: `make promtool`, run by
    `make test`, fetches it)."""
    promtool = Path(os.environ.get("PROMTOOL") or ROOT / ".cache/promtool/promtool")
    if not os.access(promtool, os.X_OK):
        pytest.fail(f"promtool not found at {promtool}: `make promtool` (run by `make test`) fetches it")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,  # noqa: S603 - our tool
                          timeout=60, check=False)
    said = (done.stdout + done.stderr).strip()
    return f"exit {done.returncode}: {said}" if done.returncode or said else ""


def examples(default: int) -> int:
    """Hypothesis examples per property: ``default`` in `make test`, FUZZ_EXAMPLES in `make fuzz`."""
    return int(os.environ.get("FUZZ_EXAMPLES") or default)


def reference(paths: list[Path], fmt: str, drop: Callable[[int, Any], bool] | None = None, proc: Any = None,
              on_outcome: Callable[[Any, Any], None] | None = None) -> Any:
    """In-process reference: the same router + processor, no Kafka. Returns the Processor.

    One router per call, as one replay run has; ``proc`` carries the books on from an earlier
    call (a capture replayed in parts). ``on_outcome(raw_frame, outcome)`` sees every frame's
    :class:`app.processor.Outcome`."""
    from app.capture.formats import read
    from app.processor import Processor
    from app.router import Router

    router = Router()
    proc = Processor() if proc is None else proc
    for i, rec in enumerate(read(paths, fmt)):
        if drop is not None and drop(i, rec):
            continue
        for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol):
            out = proc.handle(raw)
            if on_outcome is not None:
                on_outcome(raw, out)
    return proc


def book_levels(proc: Any, key: str) -> tuple[list[list[str]], list[list[str]]]:
    book = proc.instruments[key].book
    return [list(x) for x in book.iter_bids()], [list(x) for x in book.iter_asks()]


def feeds_spec(feeds: dict[str, list[str]]) -> str:
    """The FEEDS setting (``venue:SYM,SYM;venue:SYM``) for ``{venue: [symbol, …]}``."""
    return ";".join(f"{venue}:{','.join(symbols)}" for venue, symbols in feeds.items())


def by_instrument(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Downstream records (book.top, …) per instrument key ``venue:instrument``, in order."""
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in records:
        out[f"{r['venue']}:{r['instrument']}"].append(r)
    return out


class SimSite:
    """A simulator and a worker ingesting ``keys`` from it: the ``sim_site`` fixture of
    tests/conftest.py. A test may replace ``sim`` (a restarted simulator)."""

    def __init__(self, ns: Namespace, sim: Simulator, worker: Worker, keys: set[str]) -> None:
        self.ns, self.sim, self.worker, self.keys = ns, sim, worker, keys

    def books(self, worker: Worker | None = None) -> dict[str, dict[str, Any]]:
        """The books ``worker`` (this site's by default) owns, by key, from /api/books."""
        return {b["key"]: b for b in (worker or self.worker).get("/api/books")[1]["books"]}

    def topic(self, name: str) -> list[dict[str, Any]]:
        """Every record of this namespace's ``name`` topic (book.status, raw.deadletter, …)."""
        return values(consume(self.ns.bootstrap, self.ns.topic(name), idle_s=2))

    def tops(self) -> dict[str, list[dict[str, Any]]]:
        return by_instrument(self.topic("book.top"))


#: ``sim_site(feeds, data="data", **worker_env)`` (tests/conftest.py).
SimSiteFactory = Callable[..., SimSite]


@contextlib.contextmanager
def workers(*ws: Worker) -> Any:
    try:
        yield ws
    finally:
        for w in ws:
            w.kill()


def tops_matching_no_truth(tops: list[dict[str, Any]], truth: list[list[Any]]) -> list[str]:
    """The book.top records that equal no simulator true top at their seq (one line each).

    Truth entries are ``[seq, bid_px, bid_sz, ask_px, ask_sz, conn]`` in time order. ``conn``
    is 0 where the venue's sequence belongs to the instrument, the simulator's connection
    number where it belongs to a connection (Coinbase). Sequences may repeat (venue resets,
    new connections), so each connection's truth is walked forward only.
    """
    by_conn: dict[int, list[list[Any]]] = {}
    for entry in truth:
        by_conn.setdefault(entry[5], []).append(entry)
    pos = dict.fromkeys(by_conn, 0)
    wrong: list[str] = []
    for top in tops:
        got = (top["bid_px"], top["bid_sz"], top["ask_px"], top["ask_sz"])
        for conn, entries in by_conn.items():
            i = pos[conn]
            while i < len(entries) and entries[i][0] != top["seq"]:
                i += 1
            if i < len(entries) and tuple(entries[i][1:5]) == got:
                pos[conn] = i
                break
        else:
            wrong.append(f"book.top {got} at seq {top['seq']} matches no true book at that seq")
    return wrong


def match_truth(tops: list[dict[str, Any]], truth: list[list[Any]]) -> int:
    """Every book.top equals the simulator's true top at its seq; returns how many were checked."""
    wrong = tops_matching_no_truth(tops, truth)
    assert not wrong, wrong[0]
    return len(tops)


# -- replicated clusters: committed reads, the raw topics' own reference, replication --------------
async def _read_committed_partitions(bootstrap: str, topic: str) -> dict[int, list[Any]]:
    from aiokafka import AIOKafkaConsumer

    from scripts.harness import topic_partitions

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed", max_partition_fetch_bytes=8 * 2**20)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        out: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # read_committed: the last stable offsets
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:  # a list: any() takes no async gen
            for tp, msgs in (await consumer.getmany(timeout_ms=500, max_records=20_000)).items():
                out[tp.partition].extend(msgs)
        return out
    finally:
        await consumer.stop()


def read_committed_partitions(bootstrap: str, topic: str) -> dict[int, list[Any]]:
    """Every committed record of ``topic`` up to its last stable offset, per partition, in
    offset order (an ``isolation_level="read_committed"`` consumer)."""
    import asyncio

    return asyncio.run(_read_committed_partitions(bootstrap, topic))


TopChange = tuple[str, int, Any, Any, Any, Any]  # (instrument key, seq, bid px, bid size, ask px, ask size)


def raw_topics_reference(bootstrap: str, topics: Iterable[str]) -> tuple[Any, set[TopChange], Any, int]:
    """The worker's input as it is in the raw topics (read_committed), through the same processor
    as the worker, partition by partition in offset order: (the Processor with every book, every
    top change it publishes, a Counter of the frames found by (key, ts, kind, conn, data), how
    many lines of a raw record were not frames)."""
    from app.processor import Processor
    from app.wire import RawFrame, decode_record

    proc = Processor()
    tops: set[TopChange] = set()
    found: collections.Counter[tuple[Any, ...]] = collections.Counter()
    bad = 0
    for topic in topics:
        for _, records in sorted(read_committed_partitions(bootstrap, topic).items()):
            for r in records:
                for f in decode_record(r.key, r.value, r.headers):
                    if not isinstance(f, RawFrame):
                        bad += 1
                        continue
                    found[(f.key, f.ts, f.kind, f.conn, f.data)] += 1
                    out = proc.handle(f)
                    tops.update((f.key, seq, *top) for seq, _, top in out.fx.tops)
    return proc, tops, found, bad


def published_top_changes(bootstrap: str, topic: str) -> tuple[set[TopChange], int, int]:
    """``book.top`` read_committed: (its distinct top changes, how many records, how many were
    repeats of an (instrument, epoch, seq) already read)."""
    seen: set[tuple[str, int, int]] = set()
    changes: set[TopChange] = set()
    n = repeats = 0
    import orjson

    for _, records in read_committed_partitions(bootstrap, topic).items():
        for r in records:
            t = orjson.loads(r.value)
            key = f"{t['venue']}:{t['instrument']}"
            n += 1
            at = (key, t["epoch"], t["seq"])
            repeats += at in seen
            seen.add(at)
            changes.add((key, t["seq"], t["bid_px"], t["bid_sz"], t["ask_px"], t["ask_sz"]))
    return changes, n, repeats


def under_replicated(cluster: Any, replicas: int = 3) -> list[str]:
    """``topic-partition (isr [..])`` for every partition of the cluster (internal topics
    included) whose in-sync replicas are fewer than ``replicas``, from one node's metadata."""
    from scripts.kafka_ready import metadata

    last: Exception | None = None
    for node in cluster.running():
        try:
            meta = metadata("127.0.0.1", cluster.ports[node - 1], None, timeout=10)
        except OSError as exc:
            last = exc
            continue
        return [f"{t}-{p} (isr {m.isr}, leader {m.leader})" for t, parts in sorted(meta.topics.items())
                for p, m in sorted(parts.items()) if len(m.isr) < replicas or m.leader < 0]
    raise OSError(f"no node answered a metadata request: {last!r}")
