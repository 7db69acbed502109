"""`make bench`: throughput, scaling, latency, many instruments, an options universe, recovery and changelog cost.

    make bench                          # everything (about an hour on 2 cores)
    BENCH_ONLY=baseline,throughput make bench
    BENCH_COPIES=4 make bench           # a smaller throughput capture for a quick look

Runs against a broker started for the benchmark (BENCH_KAFKA_PORT, default 29092, data in
.data/kafka-bench; stopped at the end if this run started it, and warmed up first with
BENCH_BROKER_WARMUP_S of bookstream's traffic). Every measurement uses its own
app id and topic prefix and real processes: ``faust -A app replay --max`` (frames batched into raw
records exactly as ingestion batches them at that rate), ``faust -A app worker``, ``faust -A app
simulate`` and ``ingest``. Prints a table and writes BENCH_RESULTS (bench/results.json): a
``summary`` with the targets' figures and ``figures`` with every measurement, the command and
settings that produced it. With BENCH_ONLY the other figures of the results file are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from app.capture.formats import Record, read, write_native  # noqa: E402
from app.config import Settings  # noqa: E402
from app.config import load as load_settings  # noqa: E402
from app.ingest.sink import RawSink  # noqa: E402
from app.kafka import ensure_topics  # noqa: E402
from app.market.symbols import monthly_expiries  # noqa: E402
from app.venues.base import Kind  # noqa: E402
from app.wire import RawFrame, v1_headers  # noqa: E402
from bench.profile import profile_top  # noqa: E402
from bench.serialization import measure as measure_serialization  # noqa: E402
from bench.top_reader import waited_seconds  # noqa: E402
from scripts.harness import (  # noqa: E402
    CAPTURES,
    FAUST,
    Broker,
    Namespace,
    Simulator,
    Worker,
    free_port,
    http_json,
    percentile,
    produce_frames,
    rss_mb,
    topic_partitions,
    wait_for,
)

PORT = int(os.environ.get("BENCH_KAFKA_PORT", "29092"))
BOOTSTRAP = f"127.0.0.1:{PORT}"
COPIES = int(os.environ.get("BENCH_COPIES", "12"))
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "4"))
#: PROCESSING_GUARANTEE when unset: the mode of the headline latency figure.
DEFAULT_GUARANTEE = next(f.default for f in dataclasses.fields(Settings) if f.name == "processing_guarantee")
RESULTS = Path(os.environ.get("BENCH_RESULTS", str(ROOT / "bench" / "results.json")))
WORK = ROOT / ".data" / "bench"
BROKER_DIR = ROOT / ".data" / "kafka-bench"  # the bench's own broker: its topics emptied when the bench starts it
BROKER = Broker(BROKER_DIR, PORT)
USDM = CAPTURES / "hftbacktest" / "usdm"
#: Seconds of traffic a broker this run started gets before its first step (BENCH_BROKER_WARMUP_S;
#: 0: none). A JVM just started compiles its hot paths while it serves (its compiler threads were
#: busy for the first ~40 s of a `latency` step at 800 frames/s), and the broker used 0.81 of a
#: core in that step right after its start against 0.45-0.54 when warm (2026-12-06 21:37), which
#: every figure of the first step counted as the broker's cost and the latency it adds.
BROKER_WARMUP_S = float(os.environ.get("BENCH_BROKER_WARMUP_S", "90"))
TICK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------
def proc_stat(pid: int | str) -> tuple[str, list[str]]:
    """A process's name and the fields after it in ``/proc/<pid>/stat`` (OSError once it is gone)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.find("(") + 1:raw.rfind(")")], raw[raw.rfind(")") + 1:].split()


def cpu_seconds(pid: int, fields: list[str] | None = None) -> float:
    """The CPU seconds (user and system) process ``pid`` used so far (from ``fields``, its
    :func:`proc_stat` fields, when given)."""
    fields = proc_stat(pid)[1] if fields is None else fields
    return (int(fields[11]) + int(fields[12])) / TICK


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def namespace(tag: str) -> Namespace:
    name = f"b{tag}{uuid.uuid4().hex[:6]}"
    tmp = WORK / name
    tmp.mkdir(parents=True, exist_ok=True)
    return Namespace(name, BOOTSTRAP, tmp, partitions=PARTITIONS)


def counters(worker: Worker) -> dict[str, int]:
    status, body = worker.get("/metrics/counters")
    return body if status == 200 else {}


def frames_done(worker: Worker) -> int:
    return sum(v for k, v in counters(worker).items() if k.startswith("frames."))


def start_spy(worker_pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling a worker into ``out`` (raw collapsed stacks), if py-spy is installed."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return None
    return subprocess.Popen([str(spy), "record", "--format", "raw", "--rate", "50", "--nonblocking", "-o", str(out),
                             "--pid", str(worker_pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


def broker_pids() -> list[int]:
    """The bench broker's processes (scripts/kafka.sh writes kafka.pid per node)."""
    pids = []
    for f in (ROOT / ".data" / "kafka-bench").rglob("kafka.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid_ = int(f.read_text().strip())
            if Path(f"/proc/{pid_}").exists():
                pids.append(pid_)
    return pids


def processes() -> dict[int, tuple[int, str, float, int]]:
    """Every process now: pid → (its parent's pid, its name, the CPU seconds it used so far, when
    it started: a pid used again is another process)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                name, fields = proc_stat(entry.name)
            except OSError:  # gone meanwhile
                continue
            pid = int(entry.name)
            table[pid] = (int(fields[1]), name, cpu_seconds(pid, fields), int(fields[19]))
    return table


def interrupt_seconds() -> float:
    """The machine's time in interrupts and softirqs so far (``/proc/stat``): the kernel's network
    work for loopback Kafka, charged to no process."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[6]) + int(fields[7])) / TICK


def rest_of_machine(before: dict[int, tuple[int, str, float, int]], after: dict[int, tuple[int, str, float, int]],
                    ours: set[int], elapsed: float, irq: float) -> dict[str, Any]:
    """What ran beside a step: the cores used by processes that are neither ``ours`` nor started by
    one of them (``other``, with the busiest named; only those still running at the end are
    seen), and by the kernel's interrupts (``interrupts``).
    A worker left behind by a killed run, a build, a browser: their load is latency and
    throughput the step's figures lose, so the report says it."""
    def of_step(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            if pid in ours:
                return True
            seen.add(pid)
            pid = after[pid][0] if pid in after else before.get(pid, (0,))[0]
        return False

    used: Counter[str] = Counter()
    for pid, (_, name, cpu, started) in after.items():
        if not of_step(pid):
            was = before.get(pid)
            used[f"{name} ({pid})"] += cpu - was[2] if was is not None and was[3] == started else cpu
    other = sum(used.values()) / elapsed
    return {"other": round(other, 2), "interrupts": round(irq / elapsed, 2),
            "busiest_other": {k: round(v / elapsed, 2) for k, v in used.most_common(3) if v / elapsed >= 0.01}}


def beside_it(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()``'s figures with what ran beside it (``rest_of_machine``; the bench's broker and
    whatever this process starts are the step's)."""
    rest: dict[str, Any] = {}
    figures: dict[str, Any] = cores_used(broker_pids(), work, rest)[0]
    return figures | {"rest_of_machine": rest}


#: Processes beside a step that used more cores than this make its figures those of a busy machine (said).
OTHER_LOAD_WARN = 0.1


def cores_used(pids: list[int], work: Callable[[], Any],
               rest: dict[str, Any] | None = None) -> tuple[Any, list[float], list[float | None]]:
    """``work()``'s result, the cores each of ``pids`` used while it ran (0 = this process), and
    the cores each **waited for**: its threads' time ready to run without a core, per second of
    the run (0.25: a quarter of a second lost a second, summed over its threads). On a shared
    machine that wait is a hop's latency that no stage of the process itself shows. ``rest``
    receives what ran beside them (:func:`rest_of_machine`: every process this one started is
    the step's), and a busy machine is said."""
    def cpu(p: int) -> float:
        if p == 0:
            t = os.times()
            return t.user + t.system
        try:
            return cpu_seconds(p)
        except OSError:
            return float("nan")
    def waited(p: int, before: float | None, elapsed: float) -> float | None:
        after = waited_seconds(p or "self")
        return None if before is None or after is None else round((after - before) / elapsed, 3)
    table0, irq0 = processes(), interrupt_seconds()
    c0, w0, t0 = [cpu(p) for p in pids], [waited_seconds(p or "self") for p in pids], time.monotonic()
    result = work()
    elapsed = time.monotonic() - t0
    beside = rest_of_machine(table0, processes(), {os.getpid(), *pids}, elapsed, interrupt_seconds() - irq0)
    if beside["other"] >= OTHER_LOAD_WARN:
        say(f"WARNING: processes beside this step used {beside['other']} of a core (busiest: "
            f"{beside['busiest_other']}): its figures are those of a busy machine")
    if rest is not None:
        rest.update(beside)
    return (result, [round((cpu(p) - c) / elapsed, 2) for p, c in zip(pids, c0, strict=True)],
            [waited(p, w, elapsed) for p, w in zip(pids, w0, strict=True)])


def many_feeds() -> dict[str, list[str]]:
    """`many`'s instruments: ``BENCH_MANY_PER_KIND`` (250) each of Deribit and Bybit options, OKX
    swaps and Binance USD-M perpetuals."""
    per_kind = int(os.environ.get("BENCH_MANY_PER_KIND", "250"))
    options = [f"BTC-27MAR26-{20000 + 1000 * (i // 2)}-{'CP'[i % 2]}" for i in range(per_kind)]
    return {"deribit": options, "bybit-option": options, "okx": [f"C{i}-USDT-SWAP" for i in range(per_kind)],
            "binance-usdm": [f"C{i}USDT" for i in range(per_kind)]}


def pid(worker: Worker) -> int:
    assert worker.proc is not None
    return worker.proc.pid


# -- the throughput capture -----------------------------------------------------------------
_IDS = re.compile(rb'"(U|u|pu|lastUpdateId)":(\d+)')


def usdm_records() -> list[Record]:
    return list(read(sorted(USDM.glob("*.gz")), "hftbacktest"))


def copy_frame(rec: Record, k: int) -> tuple[str, bytes]:
    """Frame of copy ``k`` of the capture: instrument BTC<k>USDT, update ids shifted by k·10^13."""
    sym = f"BTC{k}USDT"
    frame = rec.frame.replace(b"btcusdt@", f"btc{k}usdt@".encode()).replace(b'"BTCUSDT"', f'"{sym}"'.encode())
    shift = k * 10**13
    return sym, _IDS.sub(lambda m: b'"%s":%d' % (m.group(1), int(m.group(2)) + shift), frame)


def copies(records: list[Record], n: int, ids: list[int] | None = None) -> Iterator[Record]:
    """The capture ``n`` times over, each copy another instrument (copy numbers ``ids``, default
    0…n-1), interleaved record by record."""
    for rec in records:
        for k in ids or range(n):
            sym, frame = copy_frame(rec, k)
            yield Record(rec.ts, "binance-usdm", f"bench#{k}", rec.kind, frame, rec.url, sym)


def spread_ids(n: int, partitions: int = PARTITIONS) -> list[int]:
    """``n`` copy numbers whose instruments fill the partitions evenly (12 copies over 4
    partitions: 3 each), so that the two-worker step measures the workers and not how a dozen
    names hash: copies 0…11 put 5 instruments on one partition and 1 on another."""
    from app.wire import partition_for

    per, ids, count, k = -(-n // partitions), [], [0] * partitions, 0
    while len(ids) < n:
        p = partition_for(f"binance-usdm:BTC{k}USDT", partitions)  # copy_frame's instrument
        if count[p] < per:
            ids.append(k)
            count[p] += 1
        k += 1
    return ids


def book_frames(records: list[Record]) -> list[Record]:
    """The capture's book frames only: the REST snapshots and the depth updates (no bookTicker,
    trade or mark price), for the books-only step."""
    return [rec for rec in records if rec.kind is not Kind.WS or b"depthUpdate" in rec.frame]


def level_updates(records: list[Record]) -> int:
    n = 0
    for rec in records:
        if rec.kind is Kind.WS and b"depthUpdate" in rec.frame:
            data = orjson.loads(rec.frame)["data"]
            n += len(data["b"]) + len(data["a"])
    return n


def reference_tops(records: list[Record]) -> int:
    """Top-of-book changes the in-process reference publishes for ``records`` (the same router
    and processor as the worker, no Kafka)."""
    from app.processor import Processor
    from app.router import Router

    router, proc, tops = Router(), Processor(), 0
    for rec in records:
        for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol):
            tops += len(proc.handle(raw).fx.tops)
    return tops


class TopCounter:
    """Distinct ``book.top`` records of a namespace, read as they arrive: (instrument, epoch, seq)
    once each, so at-least-once repeats count once. Runs on its own thread's event loop."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._read()), daemon=True)
        self._thread.start()

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                                    isolation_level="read_committed", enable_auto_commit=False)
        await consumer.start()
        try:
            while not self._stop.is_set():
                for records in (await consumer.getmany(timeout_ms=200, max_records=50_000)).values():
                    for msg in records:
                        top = orjson.loads(msg.value)
                        self.seen.add(b"%s|%d|%d" % (msg.key, top["epoch"], top["seq"]))
        finally:
            await consumer.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Bench:
    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}
        self._records: list[Record] = []
        self._loaded: dict[tuple[int, str, bool], tuple[Namespace, int, dict[str, Any]]] = {}

    @property
    def records(self) -> list[Record]:
        if not self._records:
            self._records = usdm_records()
        return self._records

    def capture(self, n: int, books_only: bool = False) -> Path:
        """The capture ×``n`` as a native capture file (written once); ``books_only``: its book
        frames only (:func:`book_frames`)."""
        path = WORK / f"usdm{'-books' if books_only else ''}-x{n}.jsonl"
        if not path.exists():
            with path.open("wb") as fh:
                for rec in copies(book_frames(self.records) if books_only else self.records, n, spread_ids(n)):
                    fh.write(write_native(rec))
        return path

    def loaded(self, n: int, books_only: bool = False, **env: str) -> tuple[Namespace, int, dict[str, Any]]:
        """A namespace whose raw topics hold the capture ×``n`` (``books_only``: its book frames),
        produced by the real replay command at full speed (``--max``), batched as ingestion batches
        them at that rate."""
        key = (n, json.dumps(env, sort_keys=True), books_only)
        if key not in self._loaded:
            ns = namespace(f"x{n}{'b' if books_only else ''}")
            path = self.capture(n, books_only)
            say(f"replaying the USD-M capture{' (books only)' if books_only else ''} ×{n} with "
                f"`faust -A app replay --max` {env or ''}")
            t0 = time.monotonic()
            out = ns.replay(str(path), "--format", "native", "--max", timeout=3600, env=env).stderr
            seconds = time.monotonic() - t0
            m = re.search(r"([\d,]+) frames in ([\d,]+) records", out)
            assert m, out[-2000:]
            frames, records = (int(x.replace(",", "")) for x in m.groups())
            replay = {"frames": frames, "records": records, "frames_per_record": round(frames / records, 1),
                      "seconds": round(seconds, 1), "frames_per_s": round(frames / seconds), "settings": env}
            say(f"  {frames:,} frames in {records:,} raw records in {seconds:.0f}s")
            self._loaded[key] = (ns, frames, replay)
        return self._loaded[key]

    # -- workers over a loaded namespace ------------------------------------------------------
    def worker_run(self, ns: Namespace, frames: int, n_workers: int, env: dict[str, str],
                   profile: Path | None = None, tops: int | None = None) -> dict[str, Any]:
        """Workers of a fresh app id over the loaded raw topics: the time until every frame is
        applied and every downstream record the workers made is acknowledged by the broker (their
        ``bookstream_outputs_pending_bytes`` back to 0), as the baseline is timed until its
        producer's sends are acknowledged. Then, with ``tops`` (the reference's count of top
        changes), ``book.top`` is read from its start: the figure is void unless every top change
        is there (a figure bought by dropping outputs is not a figure). It is read after the
        clock stops, so that the reading's CPU does not share the cores with the workers timed
        (the baseline has no reader beside it either)."""
        run = Namespace(f"{ns.name}w{uuid.uuid4().hex[:4]}", BOOTSTRAP, ns.tmp, PARTITIONS)
        workers = [Worker(run, ns.tmp / f"data-{run.name}-{i}", TOPIC_PREFIX=f"{ns.name}.", **env)
                   for i in range(n_workers)]
        counter: TopCounter | None = None
        delivered = None
        spy = None
        try:
            for w in workers:
                w.start(wait=False)
            for w in workers:
                w.wait_ready(180)
            cpu0 = sum(cpu_seconds(pid(w)) for w in workers)
            t0 = time.monotonic()
            if profile is not None:
                spy = start_spy(pid(workers[0]), profile)
            last, last_t = 0, t0
            while True:
                done = sum(frames_done(w) for w in workers)
                now = time.monotonic()
                if done >= frames:
                    break
                if now - last_t > 5:
                    say(f"  {done:,}/{frames:,} frames, {(done - last) / (now - last_t):,.0f}/s")
                    last, last_t = done, now
                if now - t0 > 3600:
                    raise RuntimeError("workers did not finish within an hour")
                time.sleep(0.2)
            applied_s = time.monotonic() - t0
            wait_for(lambda: all(pending_bytes(metrics_text(w)) == 0 for w in workers), 600,
                     "every output acknowledged by the broker", every=0.02)
            seconds = time.monotonic() - t0
            cpu = sum(cpu_seconds(pid(w)) for w in workers) - cpu0
            stop_spy(spy)
            spy = None
            if tops is not None:  # untimed: every top change of the input is on book.top
                counter = TopCounter(f"{ns.name}.book.top")
                checked_at = time.monotonic()
                while len(counter.seen) < tops and time.monotonic() - checked_at < 600:
                    time.sleep(0.05)
                delivered = len(counter.seen)
                if delivered != tops:
                    raise RuntimeError(f"book.top holds {delivered:,} distinct top changes of the reference's "
                                       f"{tops:,}: outputs were lost, the figure is void")
            rss = max(rss_mb(pid(w)) for w in workers)
            stale = sum(1 for w in workers for b in http_json(w.url + "/api/books")[1]["books"]
                        if b["state"] != "synced")
        finally:
            if counter is not None:
                counter.stop()
            stop_spy(spy)
            for w in workers:
                w.kill()
        checked = {} if tops is None else {
            "tops_expected": tops, "tops_delivered": delivered, "applied_seconds": round(applied_s, 1),
            "note": "seconds until every frame was applied and every output acknowledged by the broker; "
                    "book.top then read from its start: every top change of the input is there"}
        return checked | {"seconds": round(seconds, 1), "frames": frames, "frames_per_s": round(frames / seconds),
                "cpu_ms_per_frame": round(cpu * 1000 / frames, 4), "cpu_seconds": round(cpu, 1),
                "rss_mb": round(rss), "workers": n_workers, "books_not_synced": stale, "settings": env}

    # -- steps --------------------------------------------------------------------------------
    def warm_up_broker(self, seconds: float) -> dict[str, Any]:
        """Bookstream's own traffic for ``seconds`` through a broker just started, measured by
        nothing: a worker on the `latency` step's frames at 1,000 a second, so that the broker's
        JIT has compiled every request path the steps use (produce, fetch, transactions, the
        consumer groups) before the first step counts its cores."""
        rate = 1000.0
        say(f"warming the broker up: {seconds:g} s of bookstream's traffic (BENCH_BROKER_WARMUP_S)")
        items = list(itertools.islice(copies(self.records, 50), int(rate * seconds)))
        ns = namespace("warmup")
        worker = Worker(ns, ns.tmp / "data")
        worker.start()
        try:
            _, (cores,), _ = cores_used(broker_pids()[:1], lambda: asyncio.run(
                measure_latency(ns, items, rate, reference_tops(items))))
        finally:
            worker.kill()
        say(f"  the broker used {cores} of a core meanwhile")
        return {"seconds": seconds, "frames_per_s": rate, "broker_cores": cores}

    def baseline(self) -> None:
        """Plain aiokafka consume → orjson.loads → produce, one frame per record: the practical
        limit of a Python Kafka pipeline here (the ratio's denominator)."""
        ns = namespace("base")
        total = len(self.records) * COPIES
        asyncio.run(produce_v1(ns, copies(self.records, COPIES, spread_ids(COPIES)), "bench.v1"))
        self.figures["baseline"] = beside_it(lambda: asyncio.run(passthrough(ns, "bench.v1", total))) | {
            "command": "bench/run.py baseline: aiokafka consume → orjson.loads → produce, one frame per record, "
                       f"the USD-M capture ×{COPIES}"}

    def throughput(self) -> None:
        ns, frames, replay = self.loaded(COPIES)
        say("throughput: one worker")
        raw = WORK / "profile.txt"
        tops = reference_tops(self.records) * COPIES
        r = beside_it(lambda: self.worker_run(ns, frames, 1, {}, profile=raw, tops=tops))
        r["level_updates_per_s"] = round(level_updates(self.records) * COPIES / r["seconds"])
        r["profile"] = profile_top(raw)
        if raw.exists():  # py-spy's collapsed stacks, for flame graph tools
            shutil.copy(raw, ROOT / "bench" / "profile-worker.txt")
        r.update(replay=replay, command=f"faust -A app worker over raw.binance-usdm holding {frames:,} frames "
                                        f"in {replay['records']:,} raw records (USD-M capture ×{COPIES})")
        self.figures["throughput"] = r

    def books_only(self) -> None:
        """The throughput step on the capture's book frames only (snapshots and depth updates, no
        bookTicker, trade or mark price), against the plain aiokafka baseline over the same frames
        in the same run: a worker that batches can beat a per-record passthrough."""
        n = int(os.environ.get("BENCH_BOOKS_ONLY_COPIES", str(4 * COPIES)))  # ~ as long a run as `throughput`
        books = book_frames(self.records)
        base = namespace("baseb")
        asyncio.run(produce_v1(base, copies(books, n, spread_ids(n)), "bench.v1"))
        baseline = beside_it(lambda: asyncio.run(passthrough(base, "bench.v1", len(books) * n)))
        ns, frames, replay = self.loaded(n, books_only=True)
        say("books_only: one worker")
        raw = WORK / "profile-books-only.txt"
        r = beside_it(lambda: self.worker_run(ns, frames, 1, {}, profile=raw, tops=reference_tops(books) * n))
        r["level_updates_per_s"] = round(level_updates(books) * n / r["seconds"])
        r["profile"] = profile_top(raw)
        if raw.exists():  # py-spy's collapsed stacks (bench/profile-*.txt, not committed)
            shutil.copy(raw, ROOT / "bench" / raw.name)
        r.update(baseline=baseline, replay=replay, ratio_to_baseline=round(r["frames_per_s"] /
                                                                           baseline["records_per_s"], 3),
                 command=f"faust -A app worker over raw.binance-usdm holding the USD-M capture's {frames:,} book "
                         f"frames (×{n}, BENCH_BOOKS_ONLY_COPIES); baseline: bench/run.py's aiokafka consume → "
                         "orjson.loads → produce of the same frames, one per record")
        self.figures["books_only"] = r

    def export(self) -> None:
        """`faust -A app export` of the throughput step's raw topic (the USD-M capture ×COPIES):
        rows/s and MB/s, every frame a row (counted, not assumed)."""
        ns, frames, replay = self.loaded(COPIES)
        out = WORK / "export"
        shutil.rmtree(out, ignore_errors=True)
        say("export: raw.binance-usdm to Parquet")
        t0 = time.monotonic()
        err = ns.faust("export", "raw.binance-usdm", "--out", str(out), timeout=3600).stderr
        seconds = time.monotonic() - t0
        m = re.search(r"([\d,]+) records → ([\d,]+) rows in (\d+) files, ([\d.]+) MiB, ([\d.]+) s", err)
        assert m, err[-2000:]
        records, rows, files = (int(x.replace(",", "")) for x in m.groups()[:3])
        mib, inner = float(m.group(4)), float(m.group(5))
        assert rows == frames, f"{rows:,} rows for {frames:,} frames"
        capture_mib = self.capture(COPIES).stat().st_size / 2**20  # the frames' text, as captured
        self.figures["export"] = {
            "records": records, "rows": rows, "files": files, "parquet_mib": mib, "seconds": round(inner, 1),
            "rows_per_s": round(rows / inner), "capture_mib_per_s": round(capture_mib / inner, 1),
            "parquet_mib_per_s": round(mib / inner, 1), "command_seconds": round(seconds, 1),
            "command": f"faust -A app export raw.binance-usdm --out DIR over {frames:,} frames in "
                       f"{replay['records']:,} raw records (USD-M capture ×{COPIES})"}

    def book_at(self) -> None:
        """`faust -A app book-at` latency at the start, middle and end of the throughput step's raw topic
        (the USD-M capture ×COPIES), after a worker wrote book.checkpoints every 2 s while applying it."""
        ns, frames, _ = self.loaded(COPIES)
        run = Namespace(f"{ns.name}b{uuid.uuid4().hex[:4]}", BOOTSTRAP, ns.tmp, PARTITIONS)
        worker = Worker(run, ns.tmp / f"data-{run.name}", TOPIC_PREFIX=f"{ns.name}.", BOOK_CHECKPOINT_INTERVAL_S="2",
                        INGEST_IN_WORKER="false")
        say("book_at: a worker writing checkpoints over the loaded raw topic")
        try:
            worker.start(timeout=300)
            wait_for(lambda: frames_done(worker) >= frames, 1800, "the worker applying every frame", every=2)
            time.sleep(3)  # one more checkpoint after the last frame (the interval is 2 s)
        finally:
            worker.kill()
        times = sorted(rec.ts for rec in copies(self.records, COPIES))
        key = f"binance-usdm:BTC{spread_ids(COPIES)[0]}USDT"  # the first copy's instrument (capture, copy_frame)
        out: dict[str, Any] = {}
        for name, at in (("start", times[len(times) // 100]), ("middle", times[len(times) // 2]),
                         ("end", times[-1])):
            t0 = time.monotonic()
            proc = run.faust("book-at", key, str(at), env={"TOPIC_PREFIX": f"{ns.name}."}, timeout=600)
            seconds = time.monotonic() - t0
            answer = orjson.loads(proc.stdout)
            assert answer["frames_applied"] or answer["start"]["from"] == "checkpoint", answer  # a real rebuild
            out[name] = {"command_seconds": round(seconds, 2), "rebuild_seconds": answer["seconds"],
                         "raw_records_read": answer["raw_records_read"], "frames_applied": answer["frames_applied"],
                         "start": answer["start"]["from"], "state": answer["state"]}
        out["command"] = (f"faust -A app book-at {key} TIME over {frames:,} frames (USD-M capture ×{COPIES}), "
                          "checkpoints every 2 s of the worker's run")
        self.figures["book_at"] = out

    def scaling(self) -> None:
        ns, frames, _ = self.loaded(COPIES)
        say("scaling: two workers")
        r = self.worker_run(ns, frames, 2, {}, tops=reference_tops(self.records) * COPIES)
        r["command"] = "two faust -A app worker processes, one consumer group, over the throughput topics"
        self.figures["scaling"] = r

    def sweep(self) -> None:
        """Settings one at a time (the worker's on the ×4 capture; the raw batch size and the
        event loop also on replay)."""
        n = min(COPIES, 4)
        runs = []
        worker_settings: list[dict[str, str]] = [
            {}, {"EVENT_LOOP": "asyncio"}, {"STATE_COMMIT_INTERVAL_MS": "20"}, {"STATE_COMMIT_INTERVAL_MS": "500"},
            {"STREAM_BUFFER_MAXSIZE": "1024"}, {"CONSUMER_MAX_FETCH_SIZE": str(8 * 2**20)},
            {"PRODUCER_COMPRESSION": "none"}, {"PRODUCER_COMPRESSION": "lz4"}]
        ns, frames, _ = self.loaded(n)
        for env in worker_settings:
            say(f"sweep: worker {env or 'defaults'}")
            r = self.worker_run(ns, frames, 1, env)
            runs.append({"worker": env or "defaults", "frames_per_s": r["frames_per_s"],
                         "cpu_ms_per_frame": r["cpu_ms_per_frame"]})
        for env in ({"RAW_BATCH_MAX_FRAMES": "100"}, {"EVENT_LOOP": "asyncio"}):
            ns2, frames2, replay = self.loaded(n, **env)
            r = self.worker_run(ns2, frames2, 1, {})
            runs.append({"replay": env, "replay_frames_per_s": replay["frames_per_s"],
                         "frames_per_record": replay["frames_per_record"], "frames_per_s": r["frames_per_s"],
                         "cpu_ms_per_frame": r["cpu_ms_per_frame"]})
        _, _, default_replay = self.loaded(n)
        self.figures["settings_sweep"] = {
            "frames": frames, "runs": runs, "replay_defaults": default_replay,
            "command": f"one worker per setting over the USD-M capture ×{n}; replay settings replay it again"}

    def latency(self) -> None:
        """Receive time → book.top seen by a read_committed consumer at a steady rate over 50
        instruments, frames batched by the ingestion sink as they arrive; once per
        PROCESSING_GUARANTEE (BENCH_LATENCY_GUARANTEES), each counted only if every top change of
        the input reached book.top."""
        rate = float(os.environ.get("BENCH_LATENCY_RATE", "5000"))
        seconds = float(os.environ.get("BENCH_LATENCY_S", "40"))
        instruments = int(os.environ.get("BENCH_LATENCY_INSTRUMENTS", "50"))
        modes = os.environ.get("BENCH_LATENCY_GUARANTEES", "at_least_once,exactly_once").split(",")
        n = int(rate * seconds)
        items = list(itertools.islice(copies(self.records, instruments), n))
        tops = reference_tops(items)
        by_mode: dict[str, Any] = {}
        for mode in modes:
            ns = namespace(f"lat-{mode.replace('_', '')}")
            worker = Worker(ns, ns.tmp / "data", PROCESSING_GUARANTEE=mode)
            worker.start()
            profile = WORK / f"profile-latency-{mode}.txt"
            spy = None
            try:
                say(f"latency ({mode}): {n:,} frames at {rate:,.0f}/s over {instruments} instruments")
                cpu0 = cpu_seconds(pid(worker))
                spy = start_spy(pid(worker), profile)
                brokers = broker_pids()
                # the stages (this process runs the ingestion sink: ingest, raw_linger, raw_broker)
                # read when the warm-up ends and at the end: the window's figures alone
                window: list[StageCounts] = []
                def measure(ns: Namespace = ns, url: str = worker.url, window: list[StageCounts] = window) -> Any:
                    return asyncio.run(measure_latency(ns, items, rate, tops,
                                                       on_measuring=lambda: window.append(stage_readings(url))))

                rest: dict[str, Any] = {}
                lat, cores, waited = cores_used([pid(worker), 0, *brokers], measure, rest)
                lat["rest_of_machine"] = rest
                # the machine's 2 cores, shared: the worker, this process (the feed through the raw
                # sink), the reading consumer (its own process), the broker
                lat["cores_used"] = {"worker": cores[0], "feed": cores[1], "reader": lat.pop("reader_cores"),
                                     "broker": round(sum(cores[2:]), 2) if brokers else None}
                broker_waited = [w for w in waited[2:] if w is not None]  # None: no schedstats
                lat["cores_waited"] = {"worker": waited[0], "feed": waited[1], "reader": lat.pop("reader_waited"),
                                       "broker": round(sum(broker_waited), 3)
                                       if brokers and len(broker_waited) == len(brokers) else None}
                cpu = cpu_seconds(pid(worker)) - cpu0
                lat["cpu_ms_per_frame"] = round(cpu * 1000 / n, 4)
                lat["cpu_ms_per_raw_record"] = round(cpu * 1000 / lat["sent_in_records"], 3)
                # a run shorter than its warm-up has no window: everything since the start then
                lat["stages"] = stage_window(window[0] if window else ({}, {}), stage_readings(worker.url))
                if os.environ.get("LOOP_STALL_TRACE_MS"):  # the worker traced what held its loop: its lines
                    lat["loop_stalls_traced"] = [line.split("] ", 2)[-1] for line in worker.log_text().splitlines()
                                                 if "event loop held" in line]
            finally:
                stop_spy(spy)
                worker.kill()
            lat["profile"] = profile_top(profile)
            if profile.exists():  # the raw stacks, kept for a closer look (bench/profile-*.txt, not committed)
                shutil.copy(profile, ROOT / "bench" / profile.name)
            by_mode[mode] = lat
            say(f"  p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, {lat['tops_delivered']:,}/{tops:,} tops; "
                f"cores used {lat['cores_used']}, waited for {lat['cores_waited']}; beside them other processes "
                f"{lat['rest_of_machine']['other']}, interrupts {lat['rest_of_machine']['interrupts']}")
            say("  each top's way, p50/p99 ms: " + ", ".join(
                f"{k} {v['p50']}/{v['p99']}" for k, v in lat["split_ms"].items()))
            say("  stages (p50/p99/max bucket bounds, ms): " + ", ".join(
                f"{k} {v['p50_le_ms']}/{v['p99_le_ms']}/{v['max_le_ms']}" for k, v in lat["stages"].items()))
            say("  worst moments (s into the window: ms = to published + to sent + to seen): " + ", ".join(
                f"{m['at_s']}: {m['ms']} = {m['receive_to_published']} + {m['published_to_sent']} + "
                f"{m['sent_to_seen']}" for m in lat["worst_moments"]))
        command = ("frames of the USD-M capture ×50 paced at the rate through bookstream's ingestion sink "
                   "(receive time stamped when put) into raw.binance-usdm; receive time → book.top seen by a "
                   "read_committed consumer, for frames received after a 10 s warm-up (BENCH_LATENCY_WARMUP_S); "
                   "void unless every top change of the input was delivered")
        common = {"rate_per_s": rate, "seconds": seconds, "instruments": instruments, "command": command}
        default = DEFAULT_GUARANTEE if DEFAULT_GUARANTEE in by_mode else modes[0]
        self.figures["latency"] = by_mode[default] | common | {"guarantee": default}
        self.figures["latency_by_guarantee"] = {m: v | common for m, v in by_mode.items()}

    def mixed(self) -> None:
        """Books, trades and tickers of 1,000 Deribit options (the chains included): the worker's
        frames/s over raw topics loaded ahead, as `throughput` measures books alone."""
        instruments = int(os.environ.get("BENCH_MIXED_INSTRUMENTS", "1000"))
        per = int(os.environ.get("BENCH_MIXED_FRAMES_PER_INSTRUMENT", "300"))
        ns = namespace("mixed")
        say(f"mixed: producing {instruments:,} options × {per} frames (book changes, trades, tickers)")
        settings = ns.settings()
        asyncio.run(ensure_topics(settings, [settings.topic("raw.deribit")]))
        frames = asyncio.run(produce_frames(settings, mixed_frames(instruments, per)))
        raw = WORK / "profile-mixed.txt"
        r = self.worker_run(ns, frames, 1, {}, profile=raw)
        r["profile"] = profile_top(raw)
        kinds = Counter(mixed_kinds(per))
        r.update(instruments=instruments, mix={k: round(v / per, 2) for k, v in kinds.items()},
                 command=f"faust -A app worker over raw.deribit holding {frames:,} frames: {instruments:,} option "
                         f"books (snapshot, then book changes, trades and option tickers with greeks; "
                         f"options.chain every CHAIN_INTERVAL_MS)")
        self.figures["mixed"] = r

    def book_core(self) -> None:
        """Each book core alone, in process, on the capture's book frames: every depth update applied
        in order to one book (``OrderBook.apply``), and every frame through the worker's parse, sync
        and book (``Router``, ``Processor``) with its table rows recorded and encoded as a commit
        does. µs per level update, best of 3 passes; the rows each core would commit compared."""
        from app import book
        from app.processor import Processor
        from app.router import Router
        from app.state.layout import level_prefix
        from app.venues import ADAPTERS, split_key

        records, router = book_frames(self.records), Router()
        frames = [raw for rec in records
                  for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol)]
        updates = [u for raw in frames if raw.kind is Kind.WS and b"depthUpdate" in raw.data
                   for u in ADAPTERS["binance-usdm"].parse(raw.kind, raw.data, split_key(raw.key)[1])]
        levels = level_updates(records)
        previous, out, rows_of = book.core.NAME, {}, {}
        try:
            for name in ("python", "compiled"):
                book.use_core(name)
                apply_s = path_s = float("inf")
                for _ in range(3):
                    ob = book.OrderBook()
                    t0 = time.perf_counter()
                    for u in updates:
                        ob.apply(u.bids, u.asks)
                    apply_s = min(apply_s, time.perf_counter() - t0)
                    proc, touched, rows = Processor(), set(), []
                    t0 = time.perf_counter()
                    for raw in frames:
                        proc.handle(raw)
                        touched.add(raw.key)
                    for key in touched:  # the commit: each book's sides give their changed levels' rows
                        inst = proc.instruments.get(key)
                        if inst is not None:
                            inst.book.bids.take_rows(level_prefix(key, "b").encode(), rows)
                            inst.book.asks.take_rows(level_prefix(key, "a").encode(), rows)
                    path_s = min(path_s, time.perf_counter() - t0)
                rows_of[name] = sorted(rows, key=lambda row: (row[0], row[1] or b""))
                out[name] = {"apply_us_per_level": round(apply_s / levels * 1e6, 3),
                             "path_us_per_level": round(path_s / levels * 1e6, 3)}
        finally:
            book.use_core(previous)
        same = rows_of["python"] == rows_of["compiled"]
        self.figures["book_core"] = {
            **out, "level_updates": levels, "frames": len(frames), "same_rows": same,
            "apply_speedup": round(out["python"]["apply_us_per_level"] / out["compiled"]["apply_us_per_level"], 2),
            "command": "BENCH_ONLY=book_core: the USD-M capture's book frames in process, each core (BOOK_CORE) "
                       "in turn; apply: every depth update applied in order to one OrderBook; path: every frame "
                       "through Router and Processor (parse, sync, book) with its changes recorded and encoded as "
                       "table rows; best of 3"}
        py, cc = out["python"], out["compiled"]
        say(f"book_core: {levels:,} level updates; apply µs/level python {py['apply_us_per_level']}, compiled "
            f"{cc['apply_us_per_level']}; whole path python {py['path_us_per_level']}, compiled "
            f"{cc['path_us_per_level']}; same rows: {same}")
        if not same:
            raise SystemExit("book_core: the two cores made different table rows")

    def scenarios(self) -> None:
        """The scenario grid of a portfolio of 1,000 option positions (full Black-76 revaluation of
        11 underlying moves × 3 vol shifts), in process: the median of 50 revaluations."""
        import numpy as np

        from app.risk import valuation

        n = int(os.environ.get("BENCH_SCENARIO_OPTIONS", "1000"))
        rng = np.random.default_rng(7)
        legs = [valuation.Leg(f"deribit:BTC-X-{i}", "option", float(rng.integers(-50, 50)), 1.0, 65_000.0,
                              float(rng.uniform(30_000, 120_000)), bool(i % 2), float(rng.uniform(0.01, 1.0)),
                              float(rng.uniform(0.3, 1.2))) for i in range(n)]
        moves, vols = np.array(valuation.DEFAULT_MOVES), np.array(valuation.DEFAULT_VOL_SHIFTS)
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            book = valuation.Book(legs)  # the arrays are built per revaluation, as the engine does
            book.scenarios(moves, vols)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        self.figures["scenarios"] = {
            "options": n, "grid": [len(moves), len(vols)], "median_ms": round(times[len(times) // 2], 3),
            "max_ms": round(times[-1], 3), "target_ms": 20,
            "command": f"app.risk.valuation.Book(1 portfolio of {n} option legs).scenarios(11 moves × 3 vol shifts), "
                       "50 times in one process"}
        say(f"scenarios: {n} options, median {times[len(times) // 2]:.2f} ms, max {times[-1]:.2f} ms")

    def margin(self) -> None:
        """Deribit portfolio margin of a portfolio of 1,000 option positions (every scenario of the risk
        matrix and the extended table, roll and delta shock), in process: median and max of 50."""
        import numpy as np

        from app.market import black76
        from app.risk.margin import MarginLeg, deribit_portfolio, load_params

        n = int(os.environ.get("BENCH_MARGIN_OPTIONS", "1000"))
        params = load_params()
        rng = np.random.default_rng(11)
        legs = []
        for i in range(n):
            strike, days = float(rng.integers(30, 121) * 1000), float(rng.choice([1, 7, 14, 30, 60, 90, 180, 365]))
            call, sigma = bool(i % 2), float(rng.uniform(0.4, 0.9))
            mark = float(black76.price(65_000.0, strike, days / 365, sigma, call)) / 65_000.0
            legs.append(MarginLeg(f"deribit:BTC-X{i}-{int(strike)}-{'C' if call else 'P'}", "option", "BTC",
                                  float(rng.uniform(-10, 10)), 65_000.0, 65_000.0, strike, call, days, sigma, mark))
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            result = deribit_portfolio(legs, params)
            times.append((time.perf_counter() - t0) * 1000)
        assert result["currencies"]["BTC"]["mm"] > 0, result["currencies"]["BTC"]  # a real computation
        times.sort()
        tick = self._margin_tick(legs)
        self.figures["margin"] = {
            "options": n, "scenarios": 27 + len(params["deribit"]["portfolio"]["general"]["extended_moves"]),
            "median_ms": round(times[len(times) // 2], 3), "max_ms": round(times[-1], 3), "target_ms": 20,
            "command": f"app.risk.margin.deribit_portfolio(1 portfolio of {n} BTC options), 50 times in one process",
            "engine_tick": tick}
        say(f"margin: {n} options, median {times[len(times) // 2]:.2f} ms, max {times[-1]:.2f} ms; a risk tick "
            f"of the engine with its risk.margin {tick['with_margin_median_ms']} ms "
            f"(without {tick['without_margin_median_ms']} ms)")

    @staticmethod
    def _margin_tick(legs: list[Any]) -> dict[str, Any]:
        """What streaming ``risk.margin`` adds to a tick of the risk engine for that portfolio (its
        positions priced from tickers, exposure and rules, then margin by each method): median of
        20 ticks with ``RISK_DERIBIT_MARGIN`` standard and portfolio, and without margin."""
        from decimal import Decimal

        from app.market.chain import Quote
        from app.market.instruments import Spec
        from app.records import Source
        from app.risk import positions as pos
        from app.risk.engine import EngineSettings, RiskEngine

        t0 = 1_800_000_000 * 10**9
        out: dict[str, Any] = {"options": len(legs)}
        for name, method in (("without_margin", None), ("with_margin", "standard"), ("with_portfolio_margin",
                                                                                       "portfolio")):
            engine = RiskEngine(EngineSettings(deribit_margin=method or "standard"), [])
            for i, leg in enumerate(legs):
                key = f"deribit:BTC-1JAN30-{int(leg.strike) + i}-{'C' if leg.call else 'P'}"
                engine.registry.apply(Spec(key=key, kind="option", margin="inverse", base="BTC", quote="USD",
                                           settle="BTC", contract_size="1", strike=str(leg.strike),
                                           option_type="call" if leg.call else "put",
                                           expiry_ns=t0 + int(leg.days * 86_400e9), valid_from=0))
                quote = engine.tickers[key] = Quote()
                quote.update({"mark": str(leg.mark), "underlying_price": "65000", "index": "65000",
                              "mark_iv": str(leg.sigma)}, t0, t0, Source(topic="raw.deribit", partition=0,
                                                                          offset=i, index=0))
                engine.positions.setdefault("p", {})[key] = pos.make("p", key, repr(round(leg.coins, 1)),
                                                                     ts=0)
            engine.on_collateral("p|BTC", Decimal(100))
            if method is None:
                engine._margin = lambda portfolio, t: []  # type: ignore[method-assign]  # noqa: SLF001
            times = []
            for k in range(20):
                start = time.perf_counter()
                engine.tick(t0 + k * 250_000_000, False)
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            out[f"{name}_median_ms"] = round(times[len(times) // 2], 2)
            assert method is None or engine.margins[("p", "deribit", "BTC")].mm, "a real margin computed"
        return out

    def many(self) -> None:
        """1,000 light instruments from the simulator through `ingest` and one worker."""
        rate = float(os.environ.get("BENCH_MANY_RATE", "10"))
        window = float(os.environ.get("BENCH_MANY_S", "60"))
        feeds = many_feeds()
        keys = {f"{v}:{s}" for v, syms in feeds.items() for s in syms}
        spec = ";".join(f"{v}:{','.join(s)}" for v, s in feeds.items())
        ns = namespace("many")
        sim = Simulator(ns.tmp, port=free_port(), rate=rate).start()
        worker = Worker(ns, ns.tmp / "data", INGEST_IN_WORKER="false")
        ingest, ingest_log = start_ingest(ns, sim, spec, status_s=2)
        backlog = Backlog(ingest_log, worker, float(os.environ.get("BENCH_MANY_SAMPLE_S", "2")))
        try:
            worker.start()
            say(f"many: {len(keys)} instruments at {rate} book updates/s each (and their tickers and trades) from the "
                "simulator")

            wait_for(lambda: all_synced(worker, len(keys)), 600, "every book synced", every=2)
            procs = {"worker": pid(worker), "simulator": sim.proc.pid if sim.proc else 0, "ingest": ingest.pid,
                     "bench": 0, **{f"broker{i}": p for i, p in enumerate(broker_pids())}}
            f0, c0, t0 = frames_done(worker), cpu_seconds(pid(worker)), time.monotonic()
            stages0, sent0 = worker_stage_counts(worker.url), http_json(sim.url + "/control/status")[1]["frames_sent"]
            sim_cpu0 = cpu_seconds(procs["simulator"])
            backlog.start()
            rest: dict[str, Any] = {}
            lat, cores, waited = cores_used(list(procs.values()), lambda: asyncio.run(watch_latency(ns, window)), rest)
            backlog.stop()
            stages = stage_window(stages0, worker_stage_counts(worker.url))
            f1, c1, t1 = frames_done(worker), cpu_seconds(pid(worker)), time.monotonic()
            sent = http_json(sim.url + "/control/status")[1]["frames_sent"] - sent0
            sim_cpu_window = cpu_seconds(procs["simulator"]) - sim_cpu0
            # stale at the end of the window, while ingestion runs (once it stops, its closed
            # connections stale every book, as they should)
            books = http_json(worker.url + "/api/books")[1]["books"]
            stale = [b["key"] for b in books if b["state"] != "synced"]
            ingest.send_signal(signal.SIGTERM)
            ingest.wait(timeout=60)
            produced = ingest_produced(ingest_log)
            wait_for(lambda: frames_done(worker) >= produced, 600, f"worker applied all {produced:,} frames")
            applied = frames_done(worker)
            sim_cpu = cpu_seconds(sim.proc.pid) if sim.proc is not None else None
        finally:
            stop_live(backlog, worker, ingest, sim)
        grown = backlog.result(window)
        met = not grown["growing"] and lat["p99_ms"] == lat["p99_ms"] and lat["p99_ms"] <= 50  # not NaN: a top seen
        self.figures["many"] = {
            "instruments": len(keys), "offered_per_s": round(len(keys) * rate), "frames_per_s": round((f1 - f0) /
                                                                                                      (t1 - t0)),
            "worker_cpu_ms_per_frame": round((c1 - c0) * 1000 / max(1, f1 - f0), 4), "frames_produced": produced,
            "frames_applied": applied, "books_not_synced": len(stale), "not_synced": stale[:10],
            "simulator_cpu_s": sim_cpu, "cores": dict(zip(procs, cores, strict=True)),
            "cores_waited": dict(zip(procs, waited, strict=True)), "rest_of_machine": rest,
            "simulator_frames_sent_per_s": round(sent / (t1 - t0)),
            "simulator_cpu_us_per_frame_sent": round(sim_cpu_window / max(1, sent) * 1e6, 1),
            "worker_cores_in_window": round((c1 - c0) / (t1 - t0), 2), **lat, "worker_stages": stages,
            "offered_frames_per_s": round(backlog.offered), "backlog": grown,
            "target": "no growing backlog and p99 ≤ 50 ms", "met": "met" if met else "not met",
            "command": "faust -A app simulate + faust -A app ingest (1,000 instruments: Deribit and Bybit options, "
                       f"OKX swaps, Binance USD-M) + one worker; frames/s and receive → book.top over {window:.0f} s"}

    def simulator(self) -> None:
        """The simulator alone: `many`'s 1,000 instruments, read by `faust -A app record` (no Kafka,
        nothing else on the machine's cores): frames sent a second and its CPU a frame sent."""
        rate = float(os.environ.get("BENCH_MANY_RATE", "10"))
        window = float(os.environ.get("BENCH_SIMULATOR_S", "20"))
        feeds = many_feeds()
        spec = ";".join(f"{v}:{','.join(s)}" for v, s in feeds.items())
        ns = namespace("sim")
        sim = Simulator(ns.tmp, port=free_port(), rate=rate).start()
        recorder = subprocess.Popen([*FAUST, "record", "--out", str(ns.tmp / "capture"), "--feeds", spec],
                                    env=ns.env(FEED="sim", SIM_URL=sim.url), cwd=ROOT,
                                    stdout=(ns.tmp / "record.log").open("wb"), stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        assert sim.proc is not None
        try:
            total = sum(len(v) for v in feeds.values())
            wait_for(lambda: sum(i["subscribers"] > 0 for i in http_json(sim.url + "/control/status")[1]
                                 ["instruments"]) >= total, 300, f"all {total:,} instruments subscribed", every=1)
            time.sleep(5)  # past the subscriptions' snapshots
            sent0, cpu0, t0 = http_json(sim.url + "/control/status")[1]["frames_sent"], cpu_seconds(sim.proc.pid), \
                time.monotonic()
            time.sleep(window)
            sent = http_json(sim.url + "/control/status")[1]["frames_sent"] - sent0
            cpu, seconds = cpu_seconds(sim.proc.pid) - cpu0, time.monotonic() - t0
        finally:
            recorder.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.wait(timeout=30)
            if recorder.poll() is None:
                recorder.kill()
            sim.kill()
        self.figures["simulator"] = {
            "instruments": total, "rate_per_instrument": rate, "frames_sent_per_s": round(sent / seconds),
            "cores": round(cpu / seconds, 3), "cpu_us_per_frame_sent": round(cpu / max(1, sent) * 1e6, 1),
            "window_s": round(seconds, 1),
            "command": "faust -A app simulate + faust -A app record of many's 1,000 instruments (Deribit and Bybit "
                       f"options, OKX swaps, Binance USD-M) at {rate:g}/s each; the simulator's CPU over "
                       f"{window:.0f} s (BENCH_SIMULATOR_S)"}
        say(f"simulator: {sent / seconds:,.0f} frames/s sent, {cpu / seconds:.2f} core, "
            f"{cpu / max(1, sent) * 1e6:.1f} µs CPU a frame")

    def ingest(self) -> None:
        """`ingest`'s own part of the latency, at the universe's load: its 1,500 options and the
        futures read from the simulator by the ingestion code in this process (the raw sink left
        out: no Kafka, nothing else on the cores); per WebSocket frame, receive (the socket read
        that brought it) → handed to the raw sink, and the CPU a frame."""
        from app import feeds as feed_config
        from app.ingest.service import Ingest

        window = float(os.environ.get("BENCH_INGEST_S", "20"))
        universe = Universe.from_env()
        ns = namespace("ing")
        sim = universe.simulator(ns)
        config = feed_config.load({"FEED": "sim", "SIM_URL": sim.url, "FEEDS": universe.feeds})
        waits: list[float] = []  # ms, in the window
        counting = [False]
        sim_use = [0.0, 0]  # the simulator's CPU seconds and frames sent over the window
        assert sim.proc is not None
        sim_pid = sim.proc.pid

        def sim_now() -> tuple[float, int]:
            return cpu_seconds(sim_pid), http_json(sim.url + "/control/status")[1]["frames_sent"]

        async def run() -> tuple[float, float]:
            ing = Ingest(ns.settings(), config, produce=False)

            def emit(venue: str, kind: Kind, frame: bytes, ts: int, *_: str) -> None:
                if counting[0] and kind is Kind.WS:
                    waits.append((time.time_ns() - ts) / 1e6)

            ing.emit = emit  # type: ignore[method-assign]
            task = asyncio.create_task(ing.run())
            try:
                deadline = time.monotonic() + 300
                # every subscription answered (a trades channel of an option nobody trades stays confirmed)
                while not ing.connections or any(c.channel_states().keys() - {"live", "confirmed"}
                                                 for c in ing.connections):
                    if time.monotonic() > deadline or task.done():
                        raise RuntimeError(f"ingest: subscriptions unanswered after 300 s: {ing.channel_gauges()}")
                    await asyncio.sleep(0.5)  # polled: the connections' states have no event
                await asyncio.sleep(5)  # past the subscriptions' snapshots
                sim_at0 = await asyncio.to_thread(sim_now)
                counting[0], cpu0, t0 = True, time.process_time(), time.monotonic()
                await asyncio.sleep(window)
                counting[0] = False
                cpu, seconds = time.process_time() - cpu0, time.monotonic() - t0
                sim_at1 = await asyncio.to_thread(sim_now)
                sim_use[:] = [sim_at1[0] - sim_at0[0], sim_at1[1] - sim_at0[1]]
                return cpu, seconds
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        loop = None
        if ns.settings().event_loop == "uvloop":  # as `ingest` runs (EVENT_LOOP)
            import uvloop
            loop = uvloop.new_event_loop
        try:
            with asyncio.Runner(loop_factory=loop) as runner:
                cpu, seconds = runner.run(run())
        finally:
            sim.kill()
        waits.sort()
        self.figures["ingest"] = {
            "frames": len(waits), "frames_per_s": round(len(waits) / seconds), "cores": round(cpu / seconds, 3),
            "cpu_us_per_frame": round(cpu / max(1, len(waits)) * 1e6, 1),
            "read_to_sink_ms": {"p50": percentile(waits, 0.5), "p90": percentile(waits, 0.9),
                                "p99": percentile(waits, 0.99), "max": percentile(waits, 1.0),
                                "mean": round(sum(waits) / max(1, len(waits)), 2)},
            "window_s": round(seconds, 1),
            # what the feed costs at this load (the universe step's simulator, with no Kafka beside it)
            "simulator_cores": round(sim_use[0] / seconds, 3),
            "simulator_cpu_us_per_frame_sent": round(sim_use[0] / max(1, sim_use[1]) * 1e6, 1),
            "command": "the universe's instruments (BENCH_UNIVERSE_OPTIONS options and the BTC and ETH futures) from "
                       "faust -A app simulate, read by app.ingest (Ingest, FeedConnection) in the bench's process on "
                       f"EVENT_LOOP's loop with the raw sink left out, over {window:.0f} s (BENCH_INGEST_S); per "
                       "WebSocket frame: the socket read that brought it → handed to the raw sink"}
        r = self.figures["ingest"]["read_to_sink_ms"]
        say(f"ingest: {len(waits) / seconds:,.0f} frames/s, {cpu / seconds:.2f} core, "
            f"{cpu / max(1, len(waits)) * 1e6:.1f} µs a frame; read → raw sink p50 {r['p50']} ms, p99 {r['p99']} ms; "
            f"simulator {sim_use[0] / seconds:.2f} core, {sim_use[0] / max(1, sim_use[1]) * 1e6:.1f} µs a frame sent")

    def universe(self) -> None:
        """A full Deribit options universe (1,500 options, BTC and ETH futures and perpetuals; books,
        tickers, trades on the 100ms channels) from the simulator through `ingest` into one worker,
        sustained: offered and applied frames/s, receive → book.top, and the backlog's trend."""
        universe = Universe.from_env()
        options, futures, rate, futures_rate = universe.options, universe.futures, universe.rate, universe.futures_rate
        window = float(os.environ.get("BENCH_UNIVERSE_S", "600"))
        every = float(os.environ.get("BENCH_UNIVERSE_SAMPLE_S", "5"))
        ns = namespace("uni")
        sim = universe.simulator(ns)
        worker = Worker(ns, ns.tmp / "data", INGEST_IN_WORKER="false")
        ingest, ingest_log = start_ingest(ns, sim, universe.feeds, status_s=1)
        keys = len(options) + len(futures)
        backlog = Backlog(ingest_log, worker, every)
        try:
            worker.start()
            say(f"universe: {len(options):,} options at {rate}/s and {len(futures)} futures at {futures_rate}/s "
                f"(simulator steps; Deribit 100ms channels) for {window:.0f} s")

            wait_for(lambda: all_synced(worker, keys), 900, "every book synced", every=2)
            procs = {"worker": pid(worker), "simulator": sim.proc.pid if sim.proc else 0, "ingest": ingest.pid,
                     **{f"broker{i}": p for i, p in enumerate(broker_pids())}}
            f0, t0 = frames_done(worker), time.monotonic()
            backlog.start()
            stages0 = worker_stage_counts(worker.url)
            rest: dict[str, Any] = {}
            lat, cores, waited = cores_used(list(procs.values()), lambda: asyncio.run(watch_latency(ns, window)), rest)
            used_by, waited_by = dict(zip(procs, cores, strict=True)), dict(zip(procs, waited, strict=True))
            stages = stage_window(stages0, worker_stage_counts(worker.url))
            backlog.stop()
            f1, t1 = frames_done(worker), time.monotonic()
            worker_cpu_s = cores[0] * (t1 - t0)
            # stale at the end of the window, while ingestion runs (once it stops, its closed
            # connections stale every book, as they should)
            books = http_json(worker.url + "/api/books")[1]["books"]
            stale = [b["key"] for b in books if b["state"] != "synced"]
            ingest.send_signal(signal.SIGTERM)
            ingest.wait(timeout=60)
            produced = ingest_produced(ingest_log)
            wait_for(lambda: frames_done(worker) >= produced, 900, f"worker applied all {produced:,} frames")
            applied = frames_done(worker)
            status = http_json(sim.url + "/control/status")[1]
        finally:
            stop_live(backlog, worker, ingest, sim)
        grown, offered = backlog.result(window), backlog.offered
        p99 = lat["p99_ms"]
        met = not grown["growing"] and p99 == p99 and p99 <= 50  # p99 == p99: not NaN (no top seen)
        self.figures["universe"] = {
            "options": len(options), "futures": futures, "option_rate": rate, "futures_rate": futures_rate,
            "window_s": window, "offered_frames_per_s": round(offered), "frames_per_s": round((f1 - f0) / (t1 - t0)),
            "worker_cpu_ms_per_frame": round(worker_cpu_s * 1000 / max(1, f1 - f0), 4),
            "cores": used_by, "cores_waited": waited_by, "rest_of_machine": rest, "frames_produced": produced,
            "frames_applied": applied,
            "books_not_synced": len(stale), "not_synced": stale[:10],
            "simulator_frames_sent": status.get("frames_sent"), **lat, "worker_stages": stages,
            "backlog": grown, "target": "no growing backlog and p99 ≤ 50 ms", "met": "met" if met else "not met",
            "command": f"faust -A app simulate + faust -A app ingest (Deribit: {len(options):,} options, "
                       f"{len(futures)} futures and perpetuals; book, ticker and trades on the 100ms channels) + one "
                       f"worker; receive → book.top and the backlog over {window:.0f} s (BENCH_UNIVERSE_OPTIONS, "
                       "BENCH_UNIVERSE_RATE, BENCH_UNIVERSE_FUTURES_RATE, BENCH_UNIVERSE_S)"}
        say(f"universe: offered {offered:,.0f} frames/s, applied {(f1 - f0) / (t1 - t0):,.0f}/s, p99 {p99} ms, "
            f"backlog slope {grown['slope_frames_per_s']} frames/s: {'met' if met else 'not met'}; cores used "
            f"{used_by}, waited for {waited_by}; beside them other processes {rest['other']}, interrupts "
            f"{rest['interrupts']}")

    def recovery(self) -> None:
        """1,000 books × 500 levels after a long history: restart with the same DATA_DIR, and a new
        worker with an empty one, to /ready. The figure must not grow with the history."""
        books = int(os.environ.get("BENCH_BOOKS", "1000"))
        levels = int(os.environ.get("BENCH_LEVELS", "500"))
        histories = [int(x) for x in os.environ.get("BENCH_HISTORIES", "1000000,5000000").split(",")]
        out: dict[str, Any] = {"books": books, "levels_per_book": levels, "by_history": {}}
        for history in histories:
            out["by_history"][str(history)] = run_recovery(books, levels, history)
        worst = max(out["by_history"].values(), key=lambda r: r["new_worker_to_ready_s"])
        out.update(restart_to_ready_s=max(r["restart_to_ready_s"] for r in out["by_history"].values()),
                   new_worker_to_ready_s=worst["new_worker_to_ready_s"],
                   command="bybit-linear snapshots then deltas (10 levels each) into one worker; after compaction: "
                           "SIGKILL + restart with the same DATA_DIR → /ready, and a worker with an empty DATA_DIR "
                           "→ /ready (BENCH_BOOKS, BENCH_LEVELS, BENCH_HISTORIES)")
        self.figures["recovery"] = out

    def serialization(self) -> None:
        """µs per record to encode and decode each hot topic: msgspec (app.records) against orjson."""
        self.figures["serialization"] = measure_serialization(CAPTURES)

    def changelog(self) -> None:
        """Changelog bytes per applied level update on a 50- and a 5,000-level book."""
        out = {}
        n = int(os.environ.get("BENCH_CHANGELOG_UPDATES", "200"))
        # one update per commit (STATE_COMMIT_INTERVAL_MS, its default): what one update writes, uncoalesced
        per_s = 1000 / (1.5 * load_settings().state_commit_interval_ms)
        for depth in (50, 5000):
            ns = namespace(f"cl{depth}")
            worker = Worker(ns, ns.tmp / "data")
            worker.start()
            topic = f"{ns.name}-books-changelog"
            try:
                asyncio.run(produce_frames(ns.settings(), snapshots(1, depth)))
                wait_for(lambda w=worker: frames_done(w) >= 1 and committed(w), 120, "snapshot committed")
                before = asyncio.run(end_offsets(topic))
                asyncio.run(produce_frames(ns.settings(), deltas(n), per_s=per_s))
                wait_for(lambda w=worker: frames_done(w) >= 1 + n and committed(w), 300, "deltas committed")
                records, size = asyncio.run(changelog_bytes(topic, before))
            finally:
                worker.kill()
            out[str(depth)] = {"level_updates": n, "records_per_update": round(records / n, 3),
                               "bytes_per_update": round(size / n, 1)}
        small, big = out["50"]["bytes_per_update"], out["5000"]["bytes_per_update"]
        self.figures["changelog"] = {
            "by_depth": out, "growth_50_to_5000": round(big / small - 1, 3),
            "command": "one book at 50 / 5,000 levels, the same 200 one-level deltas (over its top 25 bid levels), "
                       "each in a commit of its own (1.5 commit intervals apart); "
                       "key + value bytes of the changelog records (level, state and progress rows) they committed"}


@dataclasses.dataclass(frozen=True)
class Universe:
    """The universe's instruments and rates (``BENCH_UNIVERSE_OPTIONS``, ``BENCH_UNIVERSE_RATE``,
    ``BENCH_UNIVERSE_FUTURES_RATE``), shared by the `universe` and `ingest` steps."""

    options: list[str]
    futures: list[str]
    rate: float  # an option's steps a second
    futures_rate: float

    @classmethod
    def from_env(cls) -> Universe:
        return cls(universe_options(int(os.environ.get("BENCH_UNIVERSE_OPTIONS", "1500"))), universe_futures(),
                   float(os.environ.get("BENCH_UNIVERSE_RATE", "0.6")),
                   float(os.environ.get("BENCH_UNIVERSE_FUTURES_RATE", "50")))

    @property
    def feeds(self) -> str:
        """``FEEDS`` for ingestion: every instrument of the universe."""
        return f"deribit:{','.join(self.futures + self.options)}"

    def simulator(self, ns: Namespace) -> Simulator:
        """A simulator with the universe listed (before ingestion fetches the list)."""
        sim = Simulator(ns.tmp, port=free_port(), rate=self.futures_rate).start()
        sim.list_instruments("deribit", self.options, self.rate)
        sim.list_instruments("deribit", self.futures, self.futures_rate)
        return sim


def universe_options(n: int) -> list[str]:
    """``n`` Deribit options, half BTC and half ETH, as the venue names them: six monthly expiries,
    calls and puts at strikes stepping out from the simulator's forward (BTC 65,000 by 1,000, ETH
    2,000 by 25), nearest first."""
    expiries = monthly_expiries(time.time_ns(), 6)
    out: list[str] = []
    for coin, atm, step, count in (("BTC", 65_000, 1_000, n - n // 2), ("ETH", 2_000, 25, n // 2)):
        offsets = ((i + 1) // 2 * (1 if i % 2 else -1) for i in itertools.count())  # 0, +1, -1, +2, -2, …
        names = (f"{coin}-{e}-{atm + k * step}-{cp}" for k in offsets for e in expiries for cp in "CP")
        out += itertools.islice(names, count)
    if any(int(name.split("-")[2]) <= 0 for name in out):
        raise ValueError(f"{n:,} options reach strikes at or below zero")
    return out


def universe_futures() -> list[str]:
    """BTC and ETH perpetuals and their next three monthly futures."""
    return [f"{coin}-{e}" for coin in ("BTC", "ETH") for e in ("PERPETUAL", *monthly_expiries(time.time_ns(), 3))]


def all_synced(worker: Worker, books: int) -> bool:
    """The worker holds at least ``books`` books, every one synced."""
    held = http_json(worker.url + "/api/books")[1]["books"]
    return len(held) >= books and all(b["state"] == "synced" for b in held)


def start_ingest(ns: Namespace, sim: Simulator, feeds: str, status_s: int) -> tuple[subprocess.Popen[bytes], Path]:
    """`faust -A app ingest` of ``feeds`` from the simulator, its output in the namespace's
    ``ingest.log``; the simulator is stopped when it cannot start (a step's cleanup covers both
    only from its ``try`` on: a run whose directory vanished left the simulator running)."""
    log = ns.tmp / "ingest.log"
    try:
        proc = subprocess.Popen([*FAUST, "ingest"], env=ns.env(FEED="sim", SIM_URL=sim.url, FEEDS=feeds,
                                                               INGEST_STATUS_S=str(status_s)),
                                cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except BaseException:
        sim.kill()
        raise
    return proc, log


def stop_live(backlog: Backlog, worker: Worker, ingest: subprocess.Popen[bytes], sim: Simulator) -> None:
    """A live step's cleanup: the backlog's last reading, then every process stopped, even when
    that reading fails (a run whose directory vanished had left the simulator and `ingest` running)."""
    try:
        backlog.stop()
    finally:
        worker.kill()
        if ingest.poll() is None:
            ingest.kill()
        sim.kill()


def ingest_produced(log: Path) -> int:
    """Frames `ingest` reported produced so far (its last status line; 0 before the first)."""
    found = re.findall(r"produced ([\d,]+) in", log.read_text(errors="replace"))
    return int(found[-1].replace(",", "")) if found else 0


def ingest_records(log: Path) -> int:
    """Raw records `ingest` reported produced so far (its last status line; 0 before the first)."""
    found = re.findall(r"produced [\d,]+ in ([\d,]+) records", log.read_text(errors="replace"))
    return int(found[-1].replace(",", "")) if found else 0


def metrics_text(worker: Worker) -> str:
    """The worker's ``/metrics`` (Prometheus text)."""
    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as resp:  # noqa: S310 - local URL
        return str(resp.read().decode())


def consumer_lag(text: str) -> float:
    """Raw records behind the end of a worker's partitions, from its ``/metrics``
    (``bookstream_consumer_lag``, summed)."""
    return sum(float(x) for x in re.findall(r"^bookstream_consumer_lag\{[^}]*\} (\S+)$", text, re.M))


def worker_lag(worker: Worker) -> int:
    return round(consumer_lag(metrics_text(worker)))


def pending_bytes(text: str) -> float:
    """Bytes of downstream records a worker has made that the broker has not acknowledged yet,
    from its ``/metrics`` (``bookstream_outputs_pending_bytes``; inf when the gauge is missing)."""
    found = re.search(r"^bookstream_outputs_pending_bytes (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("inf")


def fit_slope(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of ``points`` (None with fewer than three)."""
    if len(points) < 3:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else None


class Backlog:
    """A live run's backlog, sampled every ``every`` s on a thread from ``start`` to ``stop``: frames
    produced by `ingest` (its status lines) − applied by the worker, and the worker's raw records
    behind (``bookstream_consumer_lag``). Growing: over the window's second half either rose by
    more than a second of the flow (produced is read from a once-a-second status line: a second
    of noise; the records behind are exact)."""

    def __init__(self, ingest_log: Path, worker: Worker, every: float) -> None:
        self.log, self.worker, self.every = ingest_log, worker, every
        self.samples: list[tuple[float, int, int, int]] = []  # (s into the window, produced, applied, lag)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.t0 = self.t1 = 0.0
        self.p0 = self.p1 = self.r0 = self.r1 = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError, ValueError):  # a missed sample is no sample
                produced, applied = ingest_produced(self.log), frames_done(self.worker)
                self.samples.append((time.monotonic() - self.t0, produced, applied, worker_lag(self.worker)))

    def start(self) -> None:
        self.p0, self.r0, self.t0 = ingest_produced(self.log), ingest_records(self.log), time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if not self.t1:
            self.p1, self.r1, self.t1 = ingest_produced(self.log), ingest_records(self.log), time.monotonic()

    @property
    def offered(self) -> float:
        """Frames produced by `ingest` a second over the window."""
        return (self.p1 - self.p0) / (self.t1 - self.t0)

    def result(self, window: float) -> dict[str, Any]:
        half = [(t, p - a) for t, p, a, _ in self.samples if t >= window / 2]
        slope = fit_slope(half)
        lag_slope = fit_slope([(t, lag) for t, _, _, lag in self.samples if t >= window / 2])
        records_per_s = (self.r1 - self.r0) / (self.t1 - self.t0)
        growing = (slope is None or slope * window / 2 > max(self.offered, 1.0)
                   or lag_slope is None or lag_slope * window / 2 > max(records_per_s, 1.0))
        return {"every_s": self.every, "samples": [[round(t, 1), p - a, lag] for t, p, a, lag in self.samples],
                "slope_frames_per_s": None if slope is None else round(slope, 2),
                "lag_slope_records_per_s": None if lag_slope is None else round(lag_slope, 3),
                "growing": growing,
                "note": "samples [s into the window, frames produced by ingest − applied by the worker, "
                        "the worker's raw records behind (bookstream_consumer_lag)]; the slope is a "
                        "least-squares fit over the second half (lag_slope: of the records behind); "
                        "growing: either rose by more than a second of the flow over that half"}


def committed(worker: Worker) -> bool:
    """Every record in the worker's raw partitions applied and committed (/metrics gauges)."""
    text = metrics_text(worker)
    lag = consumer_lag(text)
    pending = re.search(r"^bookstream_state_uncommitted_partitions (\S+)$", text, re.M)
    return lag == 0 and pending is not None and float(pending.group(1)) == 0


# -- recovery --------------------------------------------------------------------------------
def run_recovery(books: int, levels: int, history: int) -> dict[str, Any]:
    ns = namespace(f"rec{history // 1000}k")
    env = {"BROKER_SESSION_TIMEOUT": "6"}
    worker = Worker(ns, ns.tmp / "a", **env)
    worker.start()
    per_frame = 10
    try:
        say(f"recovery: {books} books × {levels} levels, then {history:,} level updates")
        settings = ns.settings()
        asyncio.run(produce_frames(settings, snapshots(books, levels)))
        asyncio.run(produce_frames(settings, book_deltas(books, levels, history // per_frame, per_frame)))
        total = books + history // per_frame
        wait_for(lambda: frames_done(worker) >= total and committed(worker), 1800,
                 f"{total:,} frames applied and committed", every=1)
        rss = rss_mb(pid(worker))
        topic = f"{ns.name}-books-changelog"
        t_history = time.monotonic()
        # The feed goes on, as a live one would (its appends roll the segments once
        # CHANGELOG_SEGMENT_MS has passed), until the broker's cleaner has compacted the history.
        say("recovery: feed goes on (1,000 frames/s) until the log cleaner has compacted the changelog")
        done = history // per_frame
        while (cleaned := compacted(topic)) is None:
            if time.monotonic() - t_history > 900:
                raise AssertionError("the changelog was not compacted within 15 minutes")
            asyncio.run(produce_frames(settings, book_deltas(books, levels, 2000, per_frame, start=done), per_s=1000))
            done += 2000
        total = books + done
        wait_for(lambda: frames_done(worker) >= total and committed(worker), 300,
                 f"{total:,} frames applied and committed", every=1)
        worker.kill()
        t0 = time.monotonic()
        worker.start(timeout=300)
        restart_s = time.monotonic() - t0
        restart_restored = restored(worker)
        check_book(worker, books, levels)
        disk = du_mb(worker.data_dir)
        worker.kill()
        wait_for(lambda: asyncio.run(group_empty(ns.name)), 60, "the killed worker's session expired")
        fresh = Worker(ns, ns.tmp / "b", **env)
        t0 = time.monotonic()
        fresh.start(timeout=300)
        new_s = time.monotonic() - t0
        new_restored = restored(fresh)
        check_book(fresh, books, levels)
        fresh.kill()
    finally:
        worker.kill()
    return {"level_updates_of_history": history, "frames": total, "rss_with_books_mb": round(rss),
            "changelog_on_disk": cleaned, "restart_to_ready_s": round(restart_s, 2),
            "restart_changelog_records_read": restart_restored, "new_worker_to_ready_s": round(new_s, 2),
            "new_worker_changelog_records_read": new_restored, "rocksdb_mb": round(disk, 1)}


def restored(worker: Worker) -> int:
    m = re.findall(r"tables ready after [\d.]+s \(([\d,]+) changelog records", worker.log_text())
    return int(m[-1].replace(",", "")) if m else 0


def check_book(worker: Worker, books: int, levels: int) -> None:
    _, body = http_json(f"{worker.url}/api/books/bybit-linear/SYM{books - 1}USDT?depth=5000")
    assert len(body["bids"]) + len(body["asks"]) == levels, body


def compacted(topic: str) -> dict[str, Any] | None:
    """The broker's own record of its log cleaner: every partition of ``topic`` cleaned up to the
    start of its active segment (the cleaner never touches that one). Sizes on disk, in MB."""
    logs = BROKER_DIR / "kraft-logs"
    checkpoint = logs / "cleaner-offset-checkpoint"
    if not checkpoint.exists():
        return None
    cleaned = {}
    for line in checkpoint.read_text().splitlines()[2:]:
        parts = line.split()
        if len(parts) == 3 and parts[0] == topic:
            cleaned[int(parts[1])] = int(parts[2])
    dirs = sorted(logs.glob(f"{topic}-*"))
    active = {int(d.name.rsplit("-", 1)[1]): max(int(f.stem) for f in d.glob("*.log")) for d in dirs}
    # a partition that never rolled has nothing compactable: not done (its history is all there)
    if not active or any(base == 0 or cleaned.get(p, -1) < base for p, base in active.items()):
        return None
    return {"partitions": len(dirs), "mb": round(sum(du_mb(d) for d in dirs), 1),
            "active_segment_base": active, "cleaned_to": cleaned}


async def group_empty(group: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([group])
        groups = getattr(described, "groups", None) or []
        return all(g[2] in ("Empty", "Dead") for g in groups)  # (error, id, state, protocol type, …)
    finally:
        await admin.close()


# -- producing -------------------------------------------------------------------------------
def snapshots(books: int, levels: int) -> Iterator[RawFrame]:
    half = levels // 2
    for i in range(books):
        sym = f"SYM{i}USDT"
        frame = orjson.dumps({"topic": f"orderbook.500.{sym}", "type": "snapshot", "ts": 1, "data": {
            "s": sym, "b": [[f"{10000 - j}.5", "1.25"] for j in range(half)],
            "a": [[f"{10001 + j}.5", "2.5"] for j in range(levels - half)], "u": 1, "seq": 1}, "cts": 1})
        yield RawFrame(f"bybit-linear:{sym}", time.time_ns(), Kind.WS, "bench", frame)


def book_deltas(books: int, levels: int, frames: int, per_frame: int, start: int = 0) -> Iterator[RawFrame]:
    """``frames`` deltas over ``books`` books, each changing ``per_frame`` levels (sizes, so the
    books keep ``levels`` levels), books in turn; ``start`` continues an earlier run."""
    half = levels // 2
    for n in range(start, start + frames):
        book, u = n % books, 2 + n // books
        sym = f"SYM{book}USDT"
        side = [[f"{10000 - (u * 7 + j) % half}.5", f"{(u + j) % 9 + 1}.25"] for j in range(per_frame)]
        frame = orjson.dumps({"topic": f"orderbook.500.{sym}", "type": "delta", "ts": u, "data": {
            "s": sym, "b": side, "a": [], "u": u, "seq": u}, "cts": u})
        yield RawFrame(f"bybit-linear:{sym}", time.time_ns(), Kind.WS, "bench", frame)


def mixed_kinds(per: int) -> Iterator[str]:
    """The frames of one instrument: a snapshot, then book changes, trades and tickers (5:1:4)."""
    yield "book"
    for j in range(1, per):
        yield ("book", "book", "ticker", "book", "trade", "ticker", "book", "ticker", "book", "ticker")[j % 10]


def mixed_frames(instruments: int, per: int) -> Iterator[RawFrame]:
    """Deribit option frames (``book``, ``trades``, ``ticker`` channels), instruments in turn."""
    expiries = monthly_expiries(time.time_ns(), 4)
    names = [f"BTC-{expiries[i % 4]}-{40000 + 500 * (i // 8)}-{'CP'[(i // 4) % 2]}" for i in range(instruments)]
    kinds = list(mixed_kinds(per))
    book_seq = [sum(1 for k in kinds[: j + 1] if k == "book") for j in range(len(kinds))]  # change_id of book frames
    for j, kind in enumerate(kinds):
        for i, name in enumerate(names):
            ms = 1_700_000_000_000 + j * 100
            if j == 0:
                data: Any = {"type": "snapshot", "timestamp": ms, "instrument_name": name, "change_id": 1,
                             "bids": [["new", 0.05 - k * 0.0005, 10.0] for k in range(20)],
                             "asks": [["new", 0.0505 + k * 0.0005, 10.0] for k in range(20)]}
                channel = f"book.{name}.100ms"
            elif kind == "book":
                data = {"type": "change", "timestamp": ms, "instrument_name": name, "change_id": book_seq[j],
                        "prev_change_id": book_seq[j] - 1,
                        "bids": [["change", 0.05 - (j % 20) * 0.0005, float(j % 7 + 1)]], "asks": []}
                channel = f"book.{name}.100ms"
            elif kind == "trade":
                data = [{"trade_seq": j, "trade_id": f"{i}-{j}", "timestamp": ms, "tick_direction": 0,
                         "price": 0.0505, "mark_price": 0.0502, "index_price": 65000.0, "instrument_name": name,
                         "direction": "buy", "amount": 1.0, "iv": 55.0}]
                channel = f"trades.{name}.100ms"
            else:
                data = {"timestamp": ms, "instrument_name": name, "state": "open", "underlying_price": 65000.0 + j,
                        "underlying_index": f"BTC-{expiries[i % 4]}", "mark_price": 0.0502, "mark_iv": 55.0 + j % 3,
                        "bid_iv": 54.0, "ask_iv": 56.0, "best_bid_price": 0.05, "best_ask_price": 0.0505,
                        "best_bid_amount": 10.0, "best_ask_amount": 10.0, "index_price": 65000.0,
                        "open_interest": 100.0, "interest_rate": 0.0, "last_price": 0.0505,
                        "greeks": {"delta": 0.5, "gamma": 0.0001, "vega": 20.0, "theta": -50.0, "rho": 1.0}}
                channel = f"ticker.{name}.100ms"
            frame = orjson.dumps({"jsonrpc": "2.0", "method": "subscription",
                                  "params": {"channel": channel, "data": data}})
            yield RawFrame(f"deribit:{name}", time.time_ns(), Kind.WS, "bench", frame)


def deltas(n: int) -> Iterator[RawFrame]:
    """One-level deltas of SYM0USDT cycling over its top 25 bid levels: the same updates
    whatever the book's depth (so what commits coalesce is the same too)."""
    for u in range(2, n + 2):
        frame = orjson.dumps({"topic": "orderbook.500.SYM0USDT", "type": "delta", "ts": u, "data": {
            "s": "SYM0USDT", "b": [[f"{10000 - u % 25}.5", f"{u}.25"]], "a": [], "u": u, "seq": u}, "cts": u})
        yield RawFrame("bybit-linear:SYM0USDT", time.time_ns(), Kind.WS, "bench", frame)


async def produce_v1(ns: Namespace, items: Iterator[Record], topic: str) -> int:
    """One frame per record (raw record format v1), for the baseline."""
    # created and served by the broker before the first send (created and written at once, the
    # producer's first batches met NotLeaderForPartition and logged their retries)
    await ensure_topics(ns.settings(), [ns.topic(topic), ns.topic(topic + ".out")])
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5, max_batch_size=256 * 1024,
                                compression_type="zstd", max_request_size=16 * 2**20)
    await producer.start()
    n, pending = 0, []
    try:
        for rec in items:
            key = f"binance-usdm:{rec.symbol}".encode()
            pending.append(await producer.send(ns.topic(topic), rec.frame, key=key,
                                               headers=v1_headers(rec.ts, rec.kind, rec.conn)))
            n += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


async def passthrough(ns: Namespace, topic: str, total: int) -> dict[str, Any]:
    """The practical limit: consume the records, parse each with orjson, produce it on, with
    aiokafka as it comes (its own zstd codec, not bookstream's ``app.zstd``)."""
    from app import zstd

    zstd.install(ours=False)
    try:
        return await _passthrough(ns, topic, total)
    finally:
        zstd.install()


async def _passthrough(ns: Namespace, topic: str, total: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(ns.topic(topic), bootstrap_servers=BOOTSTRAP, group_id=f"{ns.name}-passthrough",
                                auto_offset_reset="earliest", enable_auto_commit=True, max_poll_records=2000)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5, max_batch_size=256 * 1024,
                                compression_type="zstd")
    await consumer.start()
    await producer.start()
    cpu0 = time.process_time()
    n = 0
    t0: float | None = None
    try:
        while n < total:
            batch = await consumer.getmany(timeout_ms=1000)
            if t0 is None and batch:
                t0 = time.monotonic()
            pending = []
            for msgs in batch.values():
                for m in msgs:
                    orjson.loads(m.value)
                    pending.append(await producer.send(ns.topic(topic + ".out"), m.value, key=m.key,
                                                       headers=list(m.headers)))
                    n += 1
            if pending:
                await asyncio.gather(*pending)
        seconds = time.monotonic() - (t0 or time.monotonic())
    finally:
        await consumer.stop()
        await producer.stop()
    return {"records": n, "seconds": round(seconds, 1), "records_per_s": round(n / seconds),
            "cpu_ms_per_record": round((time.process_time() - cpu0) * 1000 / n, 4)}


async def end_offsets(topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, isolation_level="read_committed")
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await topic_partitions(consumer, topic))
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def changelog_bytes(topic: str, since: dict[int, int]) -> tuple[int, int]:
    """(records, key + value bytes) committed to ``topic`` after the offsets ``since``."""
    ends = await end_offsets(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, isolation_level="read_committed",
                                enable_auto_commit=False)
    await consumer.start()
    records = size = 0
    try:
        tps = [TopicPartition(topic, p) for p in ends if ends[p] > since.get(p, 0)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, since.get(tp.partition, 0))
        while tps and any([await consumer.position(tp) < ends[tp.partition] for tp in tps]):
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    records += 1
                    size += len(m.key or b"") + len(m.value or b"")
    finally:
        await consumer.stop()
    return records, size


def stage_figures(counts: dict[str, list[float]], sums: dict[str, float]) -> dict[str, Any]:
    """Per stage: observations, mean, and the bucket bounds the median and the 99th percentile fall
    under (app.metrics.STAGE_BUCKETS; "inf" beyond the last)."""
    from app import metrics

    out: dict[str, Any] = {}
    for stage, row in counts.items():
        n = sum(row)
        if not n:
            continue

        def bound(q: float, row: list[float] = row) -> float | str:
            b = metrics.stage_bound(row, q)
            return round(b * 1000, 3) if b != float("inf") else "inf"

        out[stage] = {"n": int(n), "mean_ms": round(sums[stage] / n * 1000, 3), "p50_le_ms": bound(0.5),
                      "p99_le_ms": bound(0.99), "max_le_ms": bound(1.0)}
    return out


StageCounts = tuple[dict[str, list[float]], dict[str, float]]  # per stage: count per bucket, sum of seconds


def own_stage_counts() -> StageCounts:
    """The stages this process timed (the ingestion sink's), as counts per bucket."""
    from app import metrics

    return {k: list(map(float, v)) for k, v in metrics.stage_counts.items()}, dict(metrics.stage_sum)


def own_gc_counts() -> StageCounts:
    """This process's collections per generation (``gc0``..``gc2``: app.metrics times each one)."""
    from app import metrics

    metrics.watch_gc()  # once per process
    return ({f"gc{g}": list(map(float, c)) for g, c in metrics.gc_counts.items()},
            {f"gc{g}": s for g, s in metrics.gc_sum.items()})


def worker_stage_counts(url: str) -> StageCounts:
    """The stages a worker timed, its collections (``gc0``..``gc2``) and its event loop's lateness
    (``loop_lag``), from its /metrics, as counts per bucket."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:  # noqa: S310 - local URL
        text = resp.read().decode()
    cumulative: dict[str, list[float]] = {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("bookstream_stage_latency_seconds", "bookstream_gc_pause_seconds",
                               "bookstream_loop_lag_seconds"):
            continue
        for sample in family.samples:
            if family.name == "bookstream_loop_lag_seconds":
                stage = "loop_lag"
            else:
                stage = sample.labels.get("stage") or f"gc{sample.labels['generation']}"  # gc2: full collections
            if sample.name.endswith("_bucket"):
                cumulative.setdefault(stage, []).append(sample.value)
            elif sample.name.endswith("_sum"):
                sums[stage] = sample.value
    counts = {k: [b - a for a, b in zip([0.0, *v], v, strict=False)] for k, v in cumulative.items()}
    return counts, sums


def stage_window(before: StageCounts, after: StageCounts) -> dict[str, Any]:
    """The stage figures of what was timed between two readings (a measurement window, its
    warm-up and the worker's start left out)."""
    counts = {k: [b - a for a, b in zip(before[0].get(k, [0.0] * len(v)), v, strict=True)]
              for k, v in after[0].items()}
    sums = {k: v - before[1].get(k, 0.0) for k, v in after[1].items()}
    return stage_figures(counts, sums)


def stage_readings(url: str) -> StageCounts:
    """This process's stages and a worker's, read at one moment."""
    (own, own_sums), (worker, worker_sums) = own_stage_counts(), worker_stage_counts(url)
    counts = {k: [a + b for a, b in zip(own.get(k, [0.0] * len(v)), v, strict=True)] for k, v in worker.items()}
    return own | counts, {k: own_sums.get(k, 0.0) + worker_sums.get(k, 0.0) for k in own_sums.keys() | worker_sums}


async def measure_latency(ns: Namespace, items: list[Record], rate: float, tops: int,
                          on_measuring: Callable[[], None] | None = None) -> dict[str, Any]:
    """Put frames into the ingestion sink at ``rate`` (receive time = when put) while a plain
    consumer in a process of its own (``bench/top_reader.py``) reads book.top; latency = seen −
    ts_recv. Raises unless the ``tops`` top changes of
    the input all arrive (distinct instrument, epoch, seq): a latency of lost records is none.
    ``on_measuring`` is called (in a thread) when the warm-up ends. A run whose input holds no top
    change, or whose window saw none, raises: a latency of nothing is none either."""
    if not tops:
        raise ValueError(f"the {len(items):,} frames change no top of book: nothing to measure (a longer "
                         "BENCH_LATENCY_S, or a higher BENCH_LATENCY_RATE, takes more of the capture)")
    settings = ns.settings()
    warmup_ns = int(float(os.environ.get("BENCH_LATENCY_WARMUP_S", "10")) * 1e9)
    out = ns.tmp / f"tops-{uuid.uuid4().hex[:6]}.txt"
    # the reader in a process of its own (bench/top_reader.py), as a desk's consumer is
    reader = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "top_reader.py"), BOOTSTRAP, ns.topic("book.top"), f"{ns.name}-latency",
        str(tops), str(out), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert reader.stdin is not None
    assert reader.stdout is not None
    began = time.monotonic()
    try:
        if (await reader.stdout.readline()).strip() != b"ready":
            raise RuntimeError(f"the latency step's reader did not start (exit {await reader.wait()})")
        sink = RawSink(settings, 64 * 2**20, role="bench")
        sink.start()
        measure_from = time.time_ns() + warmup_ns
        loop = asyncio.get_running_loop()
        # this process's own collections (it holds the loaded capture): a long one would stop the
        # feed and be measured as bookstream's latency; the report says how long they were
        gc_before = own_gc_counts()
        fed = time.monotonic()
        measuring: asyncio.Future[None] | None = None
        try:
            for i, rec in enumerate(items):
                ahead = i / rate - (time.monotonic() - fed)
                if ahead > 0.001:  # in steps of a millisecond: a sleep per frame would load the generator
                    await asyncio.sleep(ahead)
                received = time.time_ns()
                if measuring is None and received >= measure_from and on_measuring is not None:
                    measuring = loop.run_in_executor(None, on_measuring)
                sink.put(RawFrame(f"binance-usdm:{rec.symbol}", received, rec.kind, rec.conn, rec.frame))
            if measuring is not None:
                await measuring
            await sink.flush()
            gc_after = own_gc_counts()
            # the tail's tops, still on their way: the reader stops once it has seen them all
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.wait(), 120)
        finally:
            await sink.stop()
    finally:
        if reader.returncode is None:
            reader.stdin.close()  # no more to wait for: it writes what it read and exits
        said = (await reader.stdout.read()).split()
        await reader.wait()
    if reader.returncode:
        raise RuntimeError(f"the latency step's reader failed (exit {reader.returncode}; its error is above)")
    # its last line: "cpu <seconds> waited <seconds>" (bench/top_reader.py)
    told = {said[i]: said[i + 1] for i in range(len(said) - 1) if said[i] in (b"cpu", b"waited")}
    span = time.monotonic() - began
    reader_cores = round(float(told[b"cpu"]) / span, 2) if b"cpu" in told else None
    reader_waited = round(float(told[b"waited"]) / span, 3) if told.get(b"waited", b"-") != b"-" else None
    lat: list[float] = []
    worker_lat: list[float] = []  # receive → published by the worker (its share of the latency)
    sent_lat: list[float] = []  # published → its Kafka time (the output lane's linger until sent)
    read_lat: list[float] = []  # its Kafka time → seen by the reader (the broker, the fetch, its loop)
    moments: list[tuple[float, ...]] = []  # (received, latency, the three parts) of each: when the worst were
    seen: set[bytes] = set()
    for line in out.read_bytes().splitlines():
        key, epoch, seq, ts_recv, ts_published, kafka_ms, now = line.split()
        seen.add(b"%s|%s|%s" % (key, epoch, seq))
        if int(ts_recv) >= measure_from:
            lat.append((int(now) - int(ts_recv)) / 1e6)
            worker_lat.append((int(ts_published) - int(ts_recv)) / 1e6)
            sent_lat.append(int(kafka_ms) - int(ts_published) / 1e6)
            read_lat.append(int(now) / 1e6 - int(kafka_ms))
            moments.append((int(ts_recv) / 1e9, lat[-1], worker_lat[-1], sent_lat[-1], read_lat[-1]))
    if len(seen) != tops:
        raise RuntimeError(f"book.top holds {len(seen):,} distinct top changes of the reference's {tops:,}: "
                           "outputs were lost, the latency figure is void")
    if not lat:
        raise RuntimeError(f"none of the {tops:,} top changes came from a frame received after the warm-up "
                           "(BENCH_LATENCY_WARMUP_S): nothing was measured; a longer BENCH_LATENCY_S measures some")
    for values in (lat, worker_lat, sent_lat, read_lat):
        values.sort()
    return {"frames_sent": len(items), "sent_in_records": sink.records, "book_tops_seen": len(lat),
            "tops_expected": tops, "tops_delivered": len(seen),
            "to_published_p50_ms": percentile(worker_lat, 0.5, empty=float("nan")),
            "to_published_p99_ms": percentile(worker_lat, 0.99, empty=float("nan")),
            # each book.top's way in three parts (p50/p99 of each part alone: they need not add up)
            "split_ms": {name: {"p50": percentile(v, 0.5, empty=float("nan")),
                                "p99": percentile(v, 0.99, empty=float("nan"))}
                         for name, v in (("receive_to_published", worker_lat), ("published_to_sent", sent_lat),
                                         ("sent_to_seen", read_lat))},
            "p50_ms": percentile(lat, 0.5, empty=float("nan")), "p99_ms": percentile(lat, 0.99, empty=float("nan")),
            "p999_ms": percentile(lat, 0.999, empty=float("nan")), "max_ms": round(lat[-1], 2) if lat else None,
            "worst_moments": worst_moments(moments),
            "reader_cores": reader_cores, "reader_waited": reader_waited, "feed_gc": stage_window(gc_before, gc_after)}


def worst_moments(moments: list[tuple[float, ...]], n: int = 5, apart_s: float = 1.0) -> list[dict[str, Any]]:
    """The ``n`` worst moments of a latency run, each the worst top within ``apart_s`` of any other
    listed: the p99 of a few thousand tops rests on a few dozen, and they come in bursts (a moment
    where every part of the way is slow at once). Seconds into the window, the wall-clock time (UTC,
    to match against a broker's or a collector's log), latency and its parts."""
    if not moments:
        return []
    start = min(m[0] for m in moments)
    picked: list[tuple[float, ...]] = []
    for m in sorted(moments, key=lambda m: -m[1]):
        if all(abs(m[0] - p[0]) >= apart_s for p in picked):
            picked.append(m)
            if len(picked) == n:
                break
    def wall(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%H:%M:%S.%f")[:-3]
    return [{"at_s": round(t - start, 2), "at": wall(t), "ms": round(total, 1), "receive_to_published": round(w, 1),
             "published_to_sent": round(sent, 1), "sent_to_seen": round(read, 1)}
            for t, total, w, sent, read in picked]


async def watch_latency(ns: Namespace, seconds: float) -> dict[str, Any]:
    """Receive → book.top seen, over ``seconds`` of a live flow."""
    consumer = AIOKafkaConsumer(ns.topic("book.top"), bootstrap_servers=BOOTSTRAP, auto_offset_reset="latest",
                                isolation_level="read_committed",
                                group_id=f"{ns.name}-watch", fetch_max_wait_ms=5)
    await consumer.start()
    lat: list[float] = []
    try:
        await consumer.getmany(timeout_ms=500)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for msgs in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time_ns()
                lat.extend((now - orjson.loads(m.value)["ts_recv"]) / 1e6 for m in msgs)
    finally:
        await consumer.stop()
    lat.sort()
    return {"book_tops_seen": len(lat), "p50_ms": percentile(lat, 0.5, empty=float("nan")),
            "p99_ms": percentile(lat, 0.99, empty=float("nan")), "max_ms": round(lat[-1], 2) if lat else None}


# -- report --------------------------------------------------------------------------------
def _get(figures: dict[str, Any], *path: str) -> Any:
    value: Any = figures
    for p in path:
        if not isinstance(value, dict) or p not in value:
            return None
        value = value[p]
    return value


SUMMARY: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("baseline_records_per_s", lambda f: _get(f, "baseline", "records_per_s")),
    ("worker_frames_per_s", lambda f: _get(f, "throughput", "frames_per_s")),
    ("ratio_to_baseline", lambda f: round(f["throughput"]["frames_per_s"] / f["baseline"]["records_per_s"], 3)),
    ("two_workers_frames_per_s", lambda f: _get(f, "scaling", "frames_per_s")),
    ("books_only_ratio_to_baseline", lambda f: _get(f, "books_only", "ratio_to_baseline")),
    ("latency_p99_ms_at_5000", lambda f: _get(f, "latency", "p99_ms")),
    ("latency_p50_ms_at_5000", lambda f: _get(f, "latency", "p50_ms")),
    ("latency_p99_ms_at_5000_exactly_once", lambda f: _get(f, "latency_by_guarantee", "exactly_once", "p99_ms")),
    ("latency_p50_ms_at_5000_exactly_once", lambda f: _get(f, "latency_by_guarantee", "exactly_once", "p50_ms")),
    ("many_instruments_frames_per_s", lambda f: _get(f, "many", "frames_per_s")),
    ("many_instruments_p99_ms", lambda f: _get(f, "many", "p99_ms")),
    ("many_met", lambda f: _get(f, "many", "met")),
    ("simulator_cpu_us_per_frame_sent", lambda f: _get(f, "simulator", "cpu_us_per_frame_sent")),
    ("ingest_read_to_sink_p99_ms", lambda f: _get(f, "ingest", "read_to_sink_ms", "p99")),
    ("universe_offered_frames_per_s", lambda f: _get(f, "universe", "offered_frames_per_s")),
    ("universe_frames_per_s", lambda f: _get(f, "universe", "frames_per_s")),
    ("universe_p99_ms", lambda f: _get(f, "universe", "p99_ms")),
    ("universe_backlog_slope_frames_per_s", lambda f: _get(f, "universe", "backlog", "slope_frames_per_s")),
    ("universe_met", lambda f: _get(f, "universe", "met")),
    ("mixed_options_frames_per_s", lambda f: _get(f, "mixed", "frames_per_s")),
    ("book_core_apply_us_per_level_compiled", lambda f: _get(f, "book_core", "compiled", "apply_us_per_level")),
    ("book_core_apply_us_per_level_python", lambda f: _get(f, "book_core", "python", "apply_us_per_level")),
    ("scenario_grid_1000_options_ms", lambda f: _get(f, "scenarios", "median_ms")),
    ("portfolio_margin_1000_options_ms", lambda f: _get(f, "margin", "median_ms")),
    ("recovery_restart_s", lambda f: _get(f, "recovery", "restart_to_ready_s")),
    ("recovery_new_worker_s", lambda f: _get(f, "recovery", "new_worker_to_ready_s")),
    ("changelog_bytes_per_update_50", lambda f: _get(f, "changelog", "by_depth", "50", "bytes_per_update")),
    ("changelog_bytes_per_update_5000", lambda f: _get(f, "changelog", "by_depth", "5000", "bytes_per_update")),
    ("book_top_encode_us_msgspec", lambda f: _get(f, "serialization", "book.top", "encode_msgspec_struct_us")),
    ("book_top_encode_us_orjson_dict", lambda f: _get(f, "serialization", "book.top", "encode_orjson_dict_us")),
    ("export_rows_per_s", lambda f: _get(f, "export", "rows_per_s")),
    ("book_at_end_s", lambda f: _get(f, "book_at", "end", "command_seconds")),
]

STEPS = ["baseline", "throughput", "books_only", "book_core", "scaling", "latency", "many", "simulator", "ingest",
         "universe", "mixed", "scenarios", "margin", "recovery", "changelog", "serialization", "export", "book_at",
         "sweep"]


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, {platform.system()} "
            f"{platform.release()}, Apache Kafka 3.9.2 (one KRaft node on the same machine)")


def summarise(figures: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in SUMMARY:
        try:
            out[name] = fn(figures)
        except (KeyError, TypeError, ZeroDivisionError):
            out[name] = None
    out["machine"] = machine()
    return out


def main() -> int:
    only = [s.strip() for s in os.environ.get("BENCH_ONLY", "").split(",") if s.strip()]
    unknown = set(only) - set(STEPS)
    if unknown:
        print(f"bench: unknown BENCH_ONLY step(s) {', '.join(sorted(unknown))}; steps: {', '.join(STEPS)}",
              file=sys.stderr)
        return 2
    if not USDM.is_dir():
        print(f"bench: the hftbacktest USD-M capture is missing ({USDM})", file=sys.stderr)
        return 2
    started_broker = BROKER.run("status").returncode != 0
    if started_broker:
        # The bench's own broker starts empty: one that kept every earlier run's topics (5,471
        # partitions, 2.4 GB found here) loads them all at start and walks them in its periodic
        # checkpoints, and every figure measured its leftovers as well as bookstream.
        shutil.rmtree(BROKER_DIR / "kraft-logs", ignore_errors=True)  # its own logs (logs/) are kept
    up = BROKER.run("up")
    if up.returncode != 0:
        print(f"bench: cannot start the benchmark broker:\n{up.stderr}", file=sys.stderr)
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    bench = Bench()
    results = json.loads(RESULTS.read_text()) if only and RESULTS.exists() else {}
    figures = results.setdefault("figures", {})
    failed = []
    warmup: dict[str, Any] | str = "none: the broker was running, or BENCH_BROKER_WARMUP_S=0"
    try:
        if started_broker and BROKER_WARMUP_S > 0:
            try:
                warmup = bench.warm_up_broker(BROKER_WARMUP_S)
            except Exception as exc:  # noqa: BLE001 - the steps still run; the results say so
                warmup = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                say(f"broker warm-up {warmup}")
        for step in only or STEPS:
            say(f"== {step}")
            try:
                getattr(bench, step)()
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
                say(f"{step} failed: {type(exc).__name__}: {exc}")
                failed.append(step)
                figures.pop(step, None)  # never an earlier run's figures for a step that failed now
                figures.setdefault("failed", {})[step] = f"{type(exc).__name__}: {str(exc)[:500]}"
            else:
                figures.get("failed", {}).pop(step, None)
            figures.update(bench.figures)
    finally:
        if started_broker:
            BROKER.run("down")
            shutil.rmtree(BROKER_DIR / "kraft-logs", ignore_errors=True)
        shutil.rmtree(WORK, ignore_errors=True)
    results["summary"] = summarise(figures)
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["settings"] = {"copies": COPIES, "partitions": PARTITIONS, "broker": f"127.0.0.1:{PORT}",
                           "worker": "defaults of README Configuration unless a run says",
                           "broker_warmup": warmup}
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    width = max(len(n) for n, _ in SUMMARY)
    print(f"\n{'summary':<{width}}  value")
    for name, value in results["summary"].items():
        shown = "—" if value is None else (f"{value:,}" if isinstance(value, int) else str(value))
        print(f"{name:<{width}}  {shown}")
    print(f"\nwritten to {RESULTS}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
