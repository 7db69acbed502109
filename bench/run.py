"""`make bench`: throughput, latency, scaling, recovery, memory and changelog cost.

    make bench                       # everything, ~45 min on 2 cores
    BENCH_ONLY=baseline,throughput make bench
    BENCH_COPIES=2 make bench        # a smaller throughput capture for a quick look

Runs against a broker started for the benchmark (BENCH_KAFKA_PORT, default 29092, data in
.data/kafka-bench; stopped at the end if this run started it). Every measurement uses its
own app id and topic prefix. Prints a table and writes BENCH_RESULTS (bench/results.json):
each figure with the command and settings that produced it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from app.capture.formats import read  # noqa: E402
from app.router import headers  # noqa: E402
from app.venues.base import Kind  # noqa: E402
from scripts.harness import (  # noqa: E402
    CAPTURES,
    FAUST,
    Broker,
    Namespace,
    Simulator,
    Worker,
    consume,
    free_port,
    http_json,
    percentile,
    rss_mb,
    wait_for,
)

PORT = int(os.environ.get("BENCH_KAFKA_PORT", "29092"))
BOOTSTRAP = f"127.0.0.1:{PORT}"
COPIES = int(os.environ.get("BENCH_COPIES", "12"))
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "4"))
RESULTS = Path(os.environ.get("BENCH_RESULTS", str(ROOT / "bench" / "results.json")))
WORK = ROOT / ".data" / "bench"
BROKER = Broker(ROOT / ".data" / "kafka-bench", PORT)
USDM = CAPTURES / "hftbacktest" / "usdm"
TICK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def namespace(tag: str) -> Namespace:
    name = f"b{tag}{uuid.uuid4().hex[:6]}"
    tmp = WORK / name
    tmp.mkdir(parents=True, exist_ok=True)
    return Namespace(name, BOOTSTRAP, tmp, partitions=PARTITIONS)


def frames_done(worker: Worker) -> int:
    status, body = worker.get("/metrics/counters")
    return sum(v for k, v in body.items() if k.startswith("frames.")) if status == 200 else 0


# -- the throughput capture ---------------------------------------------------------------------
_IDS = re.compile(rb'"(U|u|pu|lastUpdateId)":(\d+)')


def usdm_records() -> list[Any]:
    return list(read(sorted(USDM.glob("*.gz")), "hftbacktest"))


def copies(records: list[Any], n: int) -> Iterator[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """The capture ``n`` times over, each copy another instrument (BTC<k>USDT) with its update
    ids shifted by k·10^13, interleaved record by record: (key, frame, headers)."""
    for rec in records:
        for k in range(n):
            shift = k * 10**13
            sym = f"BTC{k}USDT"
            frame = rec.frame.replace(b"btcusdt@", f"btc{k}usdt@".encode()).replace(b'"BTCUSDT"', f'"{sym}"'.encode())
            frame = _IDS.sub(lambda m, s=shift: b'"%s":%d' % (m.group(1), int(m.group(2)) + s), frame)
            yield f"binance-usdm:{sym}", frame, headers(rec.ts, rec.kind, f"bench#{k}")


def level_updates(records: list[Any]) -> int:
    n = 0
    for rec in records:
        if rec.kind is Kind.WS and b"depthUpdate" in rec.frame:
            data = orjson.loads(rec.frame)["data"]
            n += len(data["b"]) + len(data["a"])
    return n


async def produce(ns: Namespace, items: Iterator[tuple[str, bytes, list[tuple[str, bytes]]]], topic: str,
                  per_s: float | None = None) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5, max_batch_size=256 * 1024,
                                compression_type="zstd", max_request_size=16 * 2**20)
    await producer.start()
    n, pending, began = 0, [], time.monotonic()
    try:
        for key, value, hdrs in items:
            if per_s is not None:
                hdrs = [("ts", str(time.time_ns()).encode()), *hdrs[1:]]
                ahead = n / per_s - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            pending.append(await producer.send(ns.topic(topic), value, key=key.encode(), headers=hdrs))
            n += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


def create_topics(ns: Namespace) -> None:
    env = ns.env()
    code = ("import asyncio; from app.core import settings; from app.kafka import ensure_topics; "
            "from app.topics import ALL_NAMES; asyncio.run(ensure_topics(settings, ALL_NAMES))")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=120)


async def create_bench_topics(ns: Namespace, *names: str) -> None:
    """Topics of the bench's own pipelines (the broker does not create topics on first use)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(ns.topic(name), PARTITIONS, 1) for name in names])
    finally:
        await admin.close()


def batched(items: Iterator[tuple[str, bytes, list[tuple[str, bytes]]]], size: int
            ) -> Iterator[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """Records of ``size`` consecutive frames of one instrument, each frame verbatim with its
    headers (the record format of bench/batched.py); an instrument's rest at the end."""
    pending: dict[str, list[list[str]]] = {}
    for key, frame, hdrs in items:
        h = dict(hdrs)
        batch = pending.setdefault(key, [])
        batch.append([h["kind"].decode(), h["ts"].decode(), h["conn"].decode(), frame.decode()])
        if len(batch) == size:
            yield key, orjson.dumps(batch), []
            pending[key] = []
    for key, batch in pending.items():
        if batch:
            yield key, orjson.dumps(batch), []


# -- measurements ---------------------------------------------------------------------------------
class Bench:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.records: list[Any] = []
        self.loaded: Namespace | None = None
        self.frames = 0
        self.levels = 0

    def capture_ns(self) -> Namespace:
        """A namespace whose raw.binance-usdm holds the COPIES-fold capture (made once)."""
        if self.loaded is None:
            self.records = self.records or usdm_records()
            ns = namespace("tp")
            create_topics(ns)
            say(f"producing {len(self.records) * COPIES:,} frames ({COPIES} copies of the USD-M capture)")
            t0 = time.monotonic()
            self.frames = asyncio.run(produce(ns, copies(self.records, COPIES), "raw.binance-usdm"))
            self.levels = level_updates(self.records) * COPIES
            say(f"produced in {time.monotonic() - t0:.0f}s")
            self.loaded = ns
        return self.loaded

    def worker_run(self, ns: Namespace, n_workers: int, env: dict[str, str], profile: bool = False) -> dict[str, Any]:
        """Workers on a fresh app id over the loaded raw topic: time to consume every frame."""
        run = Namespace(f"{ns.name}w{uuid.uuid4().hex[:4]}", BOOTSTRAP, ns.tmp, PARTITIONS)
        # the loaded raw topics (TOPIC_PREFIX of ns), its own consumer group and changelog (APP_ID)
        workers = [Worker(run, ns.tmp / f"data-{run.name}-{i}", TOPIC_PREFIX=f"{ns.name}.", **env)
                   for i in range(n_workers)]
        spy = None
        try:
            for w in workers:
                w.start(wait=False)
            for w in workers:
                w.wait_ready(180)
            cpu0 = sum(cpu_seconds(w.proc.pid) for w in workers)  # type: ignore[union-attr]
            t0 = time.monotonic()
            if profile and shutil.which("py-spy", path=str(Path(sys.executable).parent)):
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                                        "--rate", "50", "--nonblocking", "-o", str(WORK / "profile.txt"),
                                        "--pid", str(workers[0].proc.pid)],  # type: ignore[union-attr]
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            last, last_t = 0, t0
            while True:
                done = sum(frames_done(w) for w in workers)
                now = time.monotonic()
                if done >= self.frames:
                    break
                if now - last_t > 5:
                    say(f"  {done:,}/{self.frames:,} frames, {(done - last) / (now - last_t):,.0f}/s")
                    last, last_t = done, now
                if now - t0 > 3600:
                    raise RuntimeError("workers did not finish within an hour")
                time.sleep(0.5)
            seconds = time.monotonic() - t0
            cpu = sum(cpu_seconds(w.proc.pid) for w in workers) - cpu0  # type: ignore[union-attr]
            rss = max(rss_mb(w.proc.pid) for w in workers)  # type: ignore[union-attr]
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            for w in workers:
                w.kill()
        return {"seconds": round(seconds, 1), "frames": self.frames, "frames_per_s": round(self.frames / seconds),
                "level_updates_per_s": round(self.levels / seconds), "cpu_ms_per_frame": round(cpu * 1000 /
                                                                                                 self.frames, 3),
                "cpu_seconds": round(cpu, 1), "rss_mb": round(rss), "workers": n_workers, "settings": env}

    # -- baseline
    def baseline(self) -> None:
        ns = self.capture_ns()
        self.results["baseline"] = asyncio.run(passthrough(ns, self.frames)) | {
            "command": "bench/run.py baseline: aiokafka consume → orjson.loads → produce, one process",
        }

    # -- throughput
    def throughput(self) -> None:
        ns = self.capture_ns()
        say("throughput: one worker")
        r = self.worker_run(ns, 1, {}, profile=True)
        r["command"] = f"faust -A app worker over raw.binance-usdm holding {self.frames:,} frames"
        r["profile"] = profile_top(WORK / "profile.txt")
        if (WORK / "profile.txt").exists():  # py-spy's collapsed stacks, for flame graph tools
            shutil.copy(WORK / "profile.txt", ROOT / "bench" / "profile-worker.txt")
        base = self.results.get("baseline", {}).get("records_per_s")
        if base:
            r["ratio_to_baseline"] = round(r["frames_per_s"] / base, 3)
        self.results["throughput"] = r

    def scaling(self) -> None:
        ns = self.capture_ns()
        say("scaling: two workers")
        r = self.worker_run(ns, 2, {})
        one = self.results.get("throughput", {}).get("frames_per_s")
        if one:
            r["speedup_vs_one"] = round(r["frames_per_s"] / one, 2)
        r["command"] = "two faust -A app worker processes, one consumer group"
        self.results["scaling"] = r

    def batching(self) -> None:
        """How far batching frames per Kafka record moves throughput: the same frames, ``size``
        per record, through bench/batched.py (one Faust event, one changelog record and one
        book.top record per batch; the same processor)."""
        self.records = self.records or usdm_records()
        n_copies = int(os.environ.get("BENCH_BATCH_COPIES", "2"))
        runs = []
        for size in (int(x) for x in os.environ.get("BENCH_BATCH_SIZES", "1,10,100").split(",")):
            ns = namespace(f"bat{size}")
            asyncio.run(create_bench_topics(ns, "raw.batched", "book.top.batched"))
            total = len(self.records) * n_copies  # copies() yields every record once per copy
            records = asyncio.run(produce(ns, batched(copies(self.records, n_copies), size), "raw.batched"))
            say(f"batching: {total:,} frames in {records:,} records of up to {size}")
            run = {"frames_per_record": size, "frames": total, "records": records} | self._batched_run(ns, total)
            books, levels = run["books"], level_updates(self.records) * n_copies
            # the same books as the real worker builds, or the figure means nothing
            if books["synced"] != n_copies or books["gaps"] or books["dead"] or books["levels"] < 0.95 * levels:
                raise RuntimeError(f"bench.batched did not build the books: {books}, {levels:,} level updates "
                                   "in the capture")
            runs.append(run)
            say(f"  {runs[-1]['frames_per_s']:,} frames/s, {runs[-1]['cpu_ms_per_frame']} ms CPU per frame")
        base = self.results.get("baseline", {}).get("records_per_s")
        for r in runs:
            if base:
                r["ratio_to_baseline"] = round(r["frames_per_s"] / base, 3)
        self.results["batching"] = {"runs": runs, "command": "faust -A bench.batched worker over the USD-M capture "
                                    f"×{n_copies} (BENCH_BATCH_COPIES), BENCH_BATCH_SIZES frames per record"}

    @staticmethod
    def _batched_run(ns: Namespace, total: int) -> dict[str, Any]:
        port = free_port()
        url = f"http://127.0.0.1:{port}/frames"
        env = ns.env(DATA_DIR=str(ns.tmp / "data"), WEB_PORT=str(port), LOG_LEVEL="warning")
        proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", "bench.batched", "worker", "-l", "warn",
                                 "--web-port", str(port)], env=env, cwd=ROOT,
                                stdout=(ns.tmp / "batched.log").open("wb"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)

        def done() -> int:
            if proc.poll() is not None:
                raise RuntimeError(f"bench.batched exited with {proc.returncode}: see {ns.tmp / 'batched.log'}")
            status, body = http_json(url, timeout=2)
            return int(body["frames"]) if status == 200 else 0

        try:
            wait_for(lambda: done() > 0, 180, "bench.batched consuming", every=0.1)
            f0, cpu0, t0 = done(), cpu_seconds(proc.pid), time.monotonic()
            wait_for(lambda: done() >= total, 3600, "bench.batched done", every=0.2)
            seconds, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
            _, end = http_json(url)
        finally:
            proc.kill()
            proc.wait()
        n = total - f0
        return {"seconds": round(seconds, 1), "frames_per_s": round(n / seconds),
                "cpu_ms_per_frame": round(cpu * 1000 / n, 3),
                "books": {k: end[k] for k in ("books", "synced", "applied", "levels", "gaps", "dead")}}

    def sweep(self) -> None:
        """Faust settings one at a time on one copy of the capture."""
        saved = (self.loaded, self.frames, self.levels)
        global COPIES
        copies_before, COPIES = COPIES, 1
        self.loaded = None
        try:
            ns = self.capture_ns()
            out = []
            for env in ({}, {"STREAM_BUFFER_MAXSIZE": "16384"}, {"BROKER_MAX_POLL_RECORDS": "2000"},
                        {"CONSUMER_MAX_FETCH_SIZE": str(8 * 2**20)}, {"PRODUCER_LINGER_MS": "50"},
                        {"PRODUCER_MAX_BATCH_SIZE": str(256 * 1024)}, {"COMMIT_INTERVAL_S": "10"},
                        {"PRODUCER_COMPRESSION": "none"}):
                say(f"sweep: {env or 'defaults'}")
                r = self.worker_run(ns, 1, env)
                out.append({"settings": env or "defaults", "frames_per_s": r["frames_per_s"],
                            "cpu_ms_per_frame": r["cpu_ms_per_frame"]})
            self.results["settings_sweep"] = {"frames": self.frames, "runs": out,
                                              "command": "one worker per setting over one copy of the capture"}
        finally:
            COPIES = copies_before
            self.loaded, self.frames, self.levels = saved

    # -- latency
    def latency(self) -> None:
        """Receive time → book.top seen by a consumer, at the target rate and at a rate one
        worker sustains (BENCH_LATENCY_RATES, default 5000,1000 frames/s)."""
        seconds = float(os.environ.get("BENCH_LATENCY_S", "30"))
        self.records = self.records or usdm_records()
        for i, rate in enumerate(float(r) for r in os.environ.get("BENCH_LATENCY_RATES", "5000,1000").split(",")):
            ns = namespace("lat")
            create_topics(ns)
            worker = Worker(ns, ns.tmp / "data")
            worker.start()
            try:
                n = int(rate * seconds)
                items = iter(list(itertools.islice(copies(self.records, 4), n)))
                say(f"latency: {n:,} frames at {rate:,.0f}/s")
                lat = asyncio.run(measure_latency(ns, items, rate, seconds))
            finally:
                worker.kill()
            self.results["latency" if i == 0 else f"latency_{rate:.0f}"] = lat | {
                "rate_per_s": rate, "seconds": seconds,
                "command": "frames paced at the rate into raw.binance-usdm (4 instruments); receive time → "
                           "book.top seen by a consumer, for frames received after a 10 s warm-up "
                           "(BENCH_LATENCY_WARMUP_S); 10 s drain after the last frame"}

    # -- recovery, disk, memory
    def recovery(self) -> None:
        books = int(os.environ.get("BENCH_BOOKS", "1000"))
        levels = int(os.environ.get("BENCH_LEVELS", "500"))
        ns = namespace("rec")
        create_topics(ns)
        worker = Worker(ns, ns.tmp / "data")
        worker.start()
        try:
            idle = rss_mb(worker.proc.pid)  # type: ignore[union-attr]
            say(f"recovery: {books} books × {levels} levels")
            asyncio.run(produce(ns, snapshots(books, levels), "raw.bybit-linear"))
            wait_for(lambda: frames_done(worker) >= books, 900, "snapshots applied", every=1)
            wait_for(lambda: http_json(worker.url + "/api/books")[1]["count"] >= books, 120, "books loaded")
            loaded = rss_mb(worker.proc.pid)  # type: ignore[union-attr]
            time.sleep(3)  # let the changelog producer flush before the kill
            worker.kill()
            t0 = time.monotonic()
            worker.start(timeout=900)
            recovered_s = time.monotonic() - t0
            disk = du_mb(worker.data_dir)
            sample = f"bybit-linear/SYM{books - 1}USDT"
            _, body = http_json(f"{worker.url}/api/books/{sample}?depth=5000")
            assert len(body["bids"]) + len(body["asks"]) == levels, body
            log = worker.log_text()
            m = re.findall(r"tables ready after ([\d.]+)s \(([\d,]+) changelog records", log)
        finally:
            worker.kill()
        self.results["recovery"] = {
            "books": books, "levels_per_book": levels, "level_rows": books * levels,
            "restart_to_ready_s": round(recovered_s, 1),
            "table_recovery_s": float(m[-1][0]) if m else None,
            "changelog_records_restored": int(m[-1][1].replace(",", "")) if m else None,
            "rocksdb_mb": round(disk, 1), "rss_idle_mb": round(idle), "rss_with_books_mb": round(loaded),
            "rss_mb_per_1000_books": round((loaded - idle) * 1000 / books, 1),
            "command": "bybit-linear snapshots, SIGKILL, restart: start → /ready (includes the group rejoin)",
        }

    # -- changelog cost
    def changelog(self) -> None:
        out = {}
        n = 2000
        for depth in (50, 5000):
            ns = namespace(f"cl{depth}")
            create_topics(ns)
            worker = Worker(ns, ns.tmp / "data")
            worker.start()
            try:
                asyncio.run(produce(ns, snapshots(1, depth), "raw.bybit-linear"))
                wait_for(lambda w=worker: frames_done(w) >= 1, 120, "snapshot applied")
                time.sleep(3)
                changelog = f"{ns.name}-books-changelog"
                before = topic_bytes(changelog)
                asyncio.run(produce(ns, deltas(depth, n), "raw.bybit-linear"))
                wait_for(lambda w=worker: frames_done(w) >= 1 + n, 300, "deltas applied")
                time.sleep(3)
                after = topic_bytes(changelog)
            finally:
                worker.kill()
            out[str(depth)] = {"level_updates": n, "records_per_update": round((after[0] - before[0]) / n, 2),
                               "bytes_per_update": round((after[1] - before[1]) / n, 1)}
        small, big = out["50"]["bytes_per_update"], out["5000"]["bytes_per_update"]
        self.results["changelog"] = {"by_depth": out, "growth_50_to_5000": round(big / small - 1, 3),
                                     "command": "one book at 50 / 5,000 levels, 2,000 one-level deltas; key + "
                                                "value bytes of the changelog records they wrote"}

    # -- 500 instruments from the simulator
    def simulator(self) -> None:
        per_venue = int(os.environ.get("BENCH_SIM_PER_VENUE", "100"))
        rate = float(os.environ.get("BENCH_SIM_RATE", "10"))
        venues = {"deribit": "BTC-{}-PERP", "binance-usdm": "C{}USDT", "okx": "C{}-USDT-SWAP",
                  "bybit-linear": "C{}USDT", "coinbase": "C{}-USD"}
        feeds = ";".join(f"{v}:" + ",".join(pat.format(i) for i in range(per_venue)) for v, pat in venues.items())
        n = per_venue * len(venues)
        ns = namespace("sim")
        sim = Simulator(ns.tmp, port=free_port(), rate=rate).start()
        env = ns.env(FEED="sim", SIM_URL=sim.url, FEEDS=feeds)
        ingest = subprocess.Popen([*FAUST, "ingest"], env=env, cwd=ROOT, stdout=(ns.tmp / "ingest.log").open("wb"),
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        worker = Worker(ns, ns.tmp / "data", INGEST_IN_WORKER="false")
        try:
            worker.start()
            say(f"simulator: {n} instruments at {rate}/s each")
            wait_for(lambda: http_json(worker.url + "/api/books")[1]["count"] >= n, 300, "every book seen", every=2)
            f0, c0, t0 = frames_done(worker), cpu_seconds(worker.proc.pid), time.monotonic()  # type: ignore[union-attr]
            time.sleep(60)
            f1, c1, t1 = frames_done(worker), cpu_seconds(worker.proc.pid), time.monotonic()  # type: ignore[union-attr]
            _, books = http_json(worker.url + "/api/books")
            synced = sum(1 for b in books["books"] if b["state"] == "synced")
            lag = lag_total(worker)
        finally:
            worker.kill()
            ingest.kill()
            sim.kill()
        self.results["simulator_500"] = {
            "instruments": n, "offered_per_s": n * rate, "frames_per_s": round((f1 - f0) / (t1 - t0)),
            "cpu_ms_per_frame": round((c1 - c0) * 1000 / max(1, f1 - f0), 3), "synced": synced,
            "consumer_lag_end": lag,
            "command": "faust -A app simulate + faust -A app ingest + one worker; frames/s over 60 s",
        }


def lag_total(worker: Worker) -> int | None:
    try:
        import urllib.request

        with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as resp:  # noqa: S310 - local URL
            text = resp.read().decode()
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("bookstream_consumer_lag"))
    except OSError:
        return None


def snapshots(books: int, levels: int) -> Iterator[tuple[str, bytes, list[tuple[str, bytes]]]]:
    half = levels // 2
    for i in range(books):
        sym = f"SYM{i}USDT"
        frame = orjson.dumps({"topic": f"orderbook.500.{sym}", "type": "snapshot", "ts": 1, "data": {
            "s": sym, "b": [[f"{10000 - j}.5", "1.25"] for j in range(half)],
            "a": [[f"{10001 + j}.5", "2.5"] for j in range(levels - half)], "u": 1, "seq": 1}, "cts": 1})
        yield f"bybit-linear:{sym}", frame, headers(time.time_ns(), Kind.WS, "bench")


def deltas(levels: int, n: int) -> Iterator[tuple[str, bytes, list[tuple[str, bytes]]]]:
    half = levels // 2
    for u in range(2, n + 2):
        j = u % half
        frame = orjson.dumps({"topic": "orderbook.500.SYM0USDT", "type": "delta", "ts": u, "data": {
            "s": "SYM0USDT", "b": [[f"{10000 - j}.5", f"{u % 7 + 1}.25"]], "a": [], "u": u, "seq": u}, "cts": u})
        yield "bybit-linear:SYM0USDT", frame, headers(time.time_ns(), Kind.WS, "bench")


def topic_bytes(topic: str) -> tuple[int, int]:
    """(records, key + value bytes) in a topic now."""
    records = consume(BOOTSTRAP, topic, idle_s=1)
    return len(records), sum(len(r.key or b"") + len(r.value or b"") for r in records)


async def passthrough(ns: Namespace, total: int) -> dict[str, Any]:
    """The practical limit: consume the raw topic, parse each frame with orjson, produce it on."""
    await create_bench_topics(ns, "bench.passthrough")
    consumer = AIOKafkaConsumer(ns.topic("raw.binance-usdm"), bootstrap_servers=BOOTSTRAP,
                                group_id=f"{ns.name}-passthrough", auto_offset_reset="earliest",
                                enable_auto_commit=True, max_poll_records=2000)
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
                    pending.append(await producer.send(ns.topic("bench.passthrough"), m.value, key=m.key,
                                                       headers=list(m.headers)))
                    n += 1
            if pending:
                await asyncio.gather(*pending)
        seconds = time.monotonic() - (t0 or time.monotonic())
    finally:
        await consumer.stop()
        await producer.stop()
    return {"records": n, "seconds": round(seconds, 1), "records_per_s": round(n / seconds),
            "cpu_ms_per_record": round((time.process_time() - cpu0) * 1000 / n, 3)}


async def measure_latency(ns: Namespace, items: Iterator[Any], rate: float, seconds: float) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(ns.topic("book.top"), bootstrap_servers=BOOTSTRAP, auto_offset_reset="latest",
                                group_id=f"{ns.name}-latency")
    await consumer.start()
    await consumer.getmany(timeout_ms=500)  # join and take positions before the flow starts
    lat: list[float] = []
    stop = asyncio.Event()
    # The capture's first seconds hold deltas buffered until each book's REST snapshot arrives;
    # their book.top records carry old receive times. Measure the steady flow after them.
    measure_from = time.time_ns() + int(float(os.environ.get("BENCH_LATENCY_WARMUP_S", "10")) * 1e9)

    async def read() -> None:
        while not stop.is_set():
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                now = time.time_ns()
                for m in msgs:
                    ts_recv = orjson.loads(m.value)["ts_recv"]
                    if ts_recv >= measure_from:  # after the warm-up: books synced, buffers replayed
                        lat.append((now - ts_recv) / 1e6)

    reader = asyncio.get_running_loop().create_task(read())
    sent = await produce(ns, items, "raw.binance-usdm", per_s=rate)
    await asyncio.sleep(10)  # let the tail drain
    stop.set()
    await reader
    await consumer.stop()
    lat.sort()

    def q(p: float) -> float:
        return percentile(lat, p, empty=float("nan"))

    return {"frames_sent": sent, "book_tops_seen": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99),
            "p999_ms": q(0.999), "max_ms": round(lat[-1], 2) if lat else None}


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


def _path_of(frames: list[str]) -> str:
    """Which part of the worker a sample belongs to, by what is on its stack."""
    if any(_group(f) == "bookstream" for f in frames):
        return "bookstream (book code, table writes and sends it makes)"
    text = ";".join(frames)
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


TABLE: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("baseline passthrough (records/s)", lambda r: r.get("baseline", {}).get("records_per_s")),
    ("worker throughput (frames/s)", lambda r: r.get("throughput", {}).get("frames_per_s")),
    ("  level updates/s", lambda r: r.get("throughput", {}).get("level_updates_per_s")),
    ("  ratio to baseline", lambda r: r.get("throughput", {}).get("ratio_to_baseline")),
    ("  CPU ms per frame", lambda r: r.get("throughput", {}).get("cpu_ms_per_frame")),
    ("two workers (frames/s)", lambda r: r.get("scaling", {}).get("frames_per_s")),
    ("  speed-up vs one", lambda r: r.get("scaling", {}).get("speedup_vs_one")),
    ("latency p50 / p99 / p99.9 (ms)", lambda r: "{p50_ms} / {p99_ms} / {p999_ms}".format(**r["latency"])
     if "latency" in r else None),
    ("  at frames/s offered", lambda r: r.get("latency", {}).get("rate_per_s")),
    ("latency p50 / p99 / p99.9 at 1000/s (ms)", lambda r: "{p50_ms} / {p99_ms} / {p999_ms}".format(
        **r["latency_1000"]) if "latency_1000" in r else None),
    ("recovery 1000×500 restart→ready (s)", lambda r: r.get("recovery", {}).get("restart_to_ready_s")),
    ("  table recovery alone (s)", lambda r: r.get("recovery", {}).get("table_recovery_s")),
    ("  RocksDB on disk (MB)", lambda r: r.get("recovery", {}).get("rocksdb_mb")),
    ("  RSS per 1000 books (MB)", lambda r: r.get("recovery", {}).get("rss_mb_per_1000_books")),
    ("changelog bytes/update @50", lambda r: r.get("changelog", {}).get("by_depth", {}).get("50", {}).get(
        "bytes_per_update")),
    ("changelog bytes/update @5000", lambda r: r.get("changelog", {}).get("by_depth", {}).get("5000", {}).get(
        "bytes_per_update")),
    ("500 simulator instruments (frames/s)", lambda r: r.get("simulator_500", {}).get("frames_per_s")),
    ("batched prototype frames/s by frames per record", lambda r: ", ".join(
        f"{x['frames_per_record']}: {x['frames_per_s']:,}" for x in r["batching"]["runs"])),
]

STEPS = ["baseline", "throughput", "scaling", "latency", "recovery", "changelog", "simulator", "batching", "sweep"]


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
    up = BROKER.run("up")
    if up.returncode != 0:
        print(f"bench: cannot start the benchmark broker:\n{up.stderr}", file=sys.stderr)
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    bench = Bench()
    results = json.loads(RESULTS.read_text()) if only and RESULTS.exists() else {}
    failed = []
    try:
        for step in only or STEPS:
            try:
                getattr(bench, step)()
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
                say(f"{step} failed: {type(exc).__name__}: {exc}")
                failed.append(step)
            results.setdefault("figures", {}).update(bench.results)
    finally:
        if started_broker:
            BROKER.run("down")
        shutil.rmtree(WORK, ignore_errors=True)
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "system": platform.platform(), "memory_gb": round(
                              os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["settings"] = {"copies": COPIES, "partitions": PARTITIONS, "broker": "Apache Kafka 3.9.2, 1 node, "
                           f"127.0.0.1:{PORT}", "worker": "defaults of README Configuration unless a run says"}
    figures = results.get("figures", {})
    base, tp = figures.get("baseline", {}).get("records_per_s"), figures.get("throughput")
    if base and tp:  # also when the two came from separate BENCH_ONLY runs
        tp["ratio_to_baseline"] = round(tp["frames_per_s"] / base, 3)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    width = max(len(n) for n, _ in TABLE)
    print(f"\n{'measurement':<{width}}  value")
    for name, fn in TABLE:
        try:
            value = fn(figures)
        except (KeyError, TypeError):
            value = None
        shown = "—" if value is None else (f"{value:,}" if isinstance(value, int) else str(value))
        print(f"{name:<{width}}  {shown}")
    print(f"\nwritten to {RESULTS}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
