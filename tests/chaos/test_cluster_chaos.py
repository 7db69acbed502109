"""`make chaos` on a replicated three-node cluster (issue 21 part 5): replication factor 3,
min.insync.replicas 2, acks=all everywhere.

* ``catchup``: the raw topics hold CHAOS_CATCHUP_COPIES copies of the Binance USD-M capture
  (each copy its own instrument: 93,954 frames a copy, 11 copies ≥ 1,000,000 frames), after
  the copies' instrument list; one worker catches up, SIGKILLed CHAOS_CATCHUP_KILLS times mid-way
  and restarted, then once more as soon as its risk engine publishes (CHAOS_CATCHUP_HEDGE_KILL),
  until it finishes.
* ``leader_kills``: the simulator feeds live (``faust -A app ingest``, FEED=sim) and the USD-M
  capture is replayed (``faust -A app replay``, paced over CHAOS_REPLAY_S) while the node
  leading the instrument's raw, changelog and ``book.top`` partitions (in turn) is SIGKILLed
  and started again CHAOS_BROKER_KILLS times, waiting for full ISR between kills.
* ``rolling_restart``: the same feed and replay during a rolling restart of the three nodes
  (stop, start, wait for full ISR, next).

Each checks, and fails on any miss: every frame sent is in the raw topics; every book served
equals the in-process reference (the raw topics' frames, read_committed, through the same
processor, partition by partition in offset order); ``book.top`` (read_committed) holds exactly
the reference's top changes — none wrong, none missing — at-least-once repeats aside; no
under-replicated partition at the end; no "dropping records" and no Traceback in the logs.
The broker WARNING/ERROR lines of the logs are counted into the report.

The live scenarios also run the risk engine: the desk of tests/risk_reference.py (long 200,000 USD
of deribit:BTC-PERPETUAL from ts 0, a delta rule hedging in it with a 5 s cooldown: a signal every
5 s of event time) on the worker, which reads its inputs from the beginning (RISK_LOOKBACK_S=0)
and computes CHAOS_RISK_LATENESS_MS (30 s) behind its slowest input. Once the engine has applied
every input, ``risk.hedge`` (read_committed) must hold every record of the reference exactly once
(by id), none the reference does not give, each of the same type (signal or blocked). The
reference: the engine's input topics (``ref.instruments``, ``book.status``, ``book.top``,
``risk.depth``, ``ticker``, ``positions``, ``risk.rules``; read_committed, every partition from the
beginning) through a fresh engine with the same rules, in the service's event-time order
(app.risk.service: heap key ``(ts, RANK[kind], key, seq, n)``); at-least-once repeats are left to
the engine, which ignores them as the live one does. The live engine applies an input that reaches
it behind its watermark when it comes, not in its place (``risk_late_inputs``): a difference is
failed all the same, and its message says how many inputs were late, how many of the replayed
capture's inputs there are (older than the live feed's: late whenever the live feed's came first,
and valuing nothing the desk holds), how many records were computed from other inputs than the
reference's, how often the engine restarted and the partitions were activated. Records of the
same id and type whose contents differ are counted (``hedge_bodies_differing``,
``hedge_from_other_inputs``), not failed.

The catch-up checks ``risk.hedge`` the same way, on a desk of its own (tests/risk_reference.py:
long 3 BTC of the capture's copy 0, binance-usdm:BTC0USDT, from ts 0; a delta rule hedging in it
with a 5 s cooldown: 69 signals over the capture's 345 s). The copies are instruments no venue
lists and the capture holds no instrument list, so raw.binance-usdm gets one before the capture,
as ingestion writes it (a venue-keyed REST frame of the USD-M ``exchangeInfo`` listing each copy
as a linear perpetual, received a second before the capture's first frame): the worker derives
the copies' ``ref.instruments`` specs from it, as from a live venue's list. It is a frame of the
raw topic like the others (in the frames sent and found). The engine releases no input while the
worker is behind its raw topics, so it publishes only once the worker has caught up, after the
kills that test the books: the last SIGKILL comes as soon as it has sent its first record, and
the next engine must publish exactly what is left.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.capture.formats import read, write_native
from app.risk.rules import load_rules
from app.risk.service import engine_settings
from app.router import Router
from app.venues import VENUES
from app.wire import Topics, changelog_topic, partition_for
from bench.run import copies
from scripts.harness import Cluster
from tests.helpers import (
    FAUST,
    ROOT,
    Namespace,
    Simulator,
    Worker,
    feeds_spec,
    produce_frames,
    published_top_changes,
    raw_topics_reference,
    under_replicated,
    wait_for,
)
from tests.risk_reference import (
    COPY_HEDGE,
    COPY_RULES,
    DESK_RULES,
    NO_EXECUTOR_ENV,
    compare_hedge,
    copies_instruments,
    copy_positions,
    desk_positions,
    hedge_reference,
    input_delays,
    published_hedge,
    read_inputs,
    write_positions,
)
from tests.scenarios import api_book, books_differing, ingest_losses, start_ingest
from tests.unit.test_captures import hft

CATCHUP_COPIES = int(os.environ.get("CHAOS_CATCHUP_COPIES", "11"))
CATCHUP_KILLS = int(os.environ.get("CHAOS_CATCHUP_KILLS", "3"))
#: The catch-up's worker is SIGKILLed once more, caught up, as soon as its risk engine has sent its
#: first risk.hedge record (0: not). The kills while it catches up come before the engine publishes
#: anything: while the worker is behind its raw topics, every input source holds the engine's
#: watermark at its newest input (app.risk.service.RiskService.watermark), and the desk's position
#: (ts 0) and the instrument list hold it before the capture's first frame.
CATCHUP_HEDGE_KILL = os.environ.get("CHAOS_CATCHUP_HEDGE_KILL", "1") != "0"
BROKER_KILLS = int(os.environ.get("CHAOS_BROKER_KILLS", "10"))
BROKER_DOWN_S = float(os.environ.get("CHAOS_BROKER_DOWN_S", "3"))
REPLAY_S = float(os.environ.get("CHAOS_REPLAY_S", "180"))
SIM_RATE = float(os.environ.get("CHAOS_SIM_RATE", "20"))
GUARANTEE = os.environ.get("CHAOS_GUARANTEE", "at_least_once")
#: The live scenarios' risk engine computes this far behind its slowest input (RISK_LATENESS_MS):
#: past the delays the faults cause (a leader's failover, the backlog after it), so that no input
#: of the desk's instrument reaches it late and ``risk.hedge`` can be held to the reference
#: exactly. With the default (500) an outage makes late inputs, which are applied when they come
#: (``risk_late_inputs``) and may move a signal: the scenario then fails and says so.
RISK_LATENESS_MS = int(os.environ.get("CHAOS_RISK_LATENESS_MS", "30000"))
#: Fewer hedge signals in the reference than this and the check proves nothing: a failure.
MIN_HEDGE_SIGNALS = 3
CLUSTER_DIR = Path(os.environ.get("CHAOS_CLUSTER_DIR") or ROOT / ".data" / "chaos-cluster")
#: The live feed: instruments the replayed capture (binance-usdm:BTCUSDT) does not touch.
SIM_FEEDS = {"deribit": ["BTC-PERPETUAL"], "binance": ["BTCUSDT"], "okx": ["BTC-USDT-SWAP"],
             "bybit-linear": ["ETHUSDT"], "coinbase": ["BTC-USD"]}
REPLAYED = "binance-usdm:BTCUSDT"


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[Cluster]:
    """Our own three-node cluster (free ports, CHAOS_CLUSTER_DIR, default .data/chaos-cluster, wiped first)."""
    c = Cluster(CLUSTER_DIR, 3)
    c.run("down")  # nodes a killed earlier session left running from this data dir
    shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
    up = c.run("up")
    if up.returncode != 0:
        c.run("down")
        pytest.fail(f"could not start the three-node chaos cluster:\n{up.stderr}")
    try:
        yield c
    finally:
        c.run("down")


@pytest.fixture
def cns(chaos_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Namespace:
    """A namespace on the chaos cluster; every process started (and ns.settings()) asks for
    replication 3 and min.insync.replicas 2, in CHAOS_GUARANTEE mode, risk engine off (the live
    scenarios' worker turns it on)."""
    for k, v in {"TOPIC_REPLICATION": "3", "MIN_INSYNC_REPLICAS": "2", "PROCESSING_GUARANTEE": GUARANTEE,
                 "RISK_ENABLED": "false"}.items():
        monkeypatch.setenv(k, v)
    return Namespace(f"c{uuid.uuid4().hex[:10]}", chaos_cluster.bootstrap, tmp_path)


# -- shared checks ------------------------------------------------------------------------
def raw_topics(ns: Namespace) -> list[str]:
    return [ns.topic(f"raw.{v}") for v in VENUES]


def log_figures(*logs: str) -> dict[str, int]:
    lines = [line for text in logs for line in text.splitlines()]
    return {
        "log_broker_unreachable_lines": sum(1 for line in lines if "unreachable" in line and "kafka:" in line),
        "log_broker_back_lines": sum(1 for line in lines if re.search(r"kafka: broker \S+ back after", line)),
        "log_broker_warning_error_lines": sum(1 for line in lines if re.search(r"\[(WARNING|ERROR)\]", line)
                                              and re.search(r"broker|node|leader|coordinator|connect", line, re.I)),
        "log_warning_lines": sum(1 for line in lines if "WARNING" in line),
        "log_error_lines": sum(1 for line in lines if "ERROR" in line),
        "log_dropping_records": sum(1 for line in lines if "dropping records" in line),
        "log_tracebacks": sum(1 for line in lines if "Traceback" in line),
    }


def check_outputs(ns: Namespace, worker: Worker, want: collections.Counter[Any], figures: dict[str, Any],
                  cluster: Cluster, settle_s: float = 600, ref: Any = None) -> list[str]:
    """The checks every scenario ends with, once the raw topics are final; fills ``figures``
    and returns a line for each failed check. ``ref``: the raw topics' reference
    (:func:`raw_topics_reference`), or a future of it, computed here when None."""
    failures: list[str] = []
    t0 = time.monotonic()
    if ref is None:
        ref = raw_topics_reference(ns.bootstrap, raw_topics(ns))
    elif isinstance(ref, concurrent.futures.Future):
        ref = ref.result()
    proc, ref_tops, found, bad = ref
    figures.update(frames_in_raw_topics=found.total(), raw_lines_not_frames=bad,
                   reference_s=round(time.monotonic() - t0, 1), reference_top_changes=len(ref_tops))
    missing_frames = (want - found).total()
    figures.update(raw_frames_missing=missing_frames, raw_frames_repeated=sum(c - 1 for c in found.values() if c > 1))
    if missing_frames:
        failures.append(f"{missing_frames} frames sent are not in the raw topics")
    if bad:
        failures.append(f"{bad} raw lines are not frames")
    t0 = time.monotonic()
    compared, differing = books_differing(worker, proc, settle_s)
    figures.update(books_compared=compared, books_differing=len(differing),
                   books_settle_s=round(time.monotonic() - t0, 1))
    for line in differing[:10]:
        print(f"  differs: {line}", flush=True)
    if differing:
        failures.append(f"{len(differing)} of {compared} books differ from the reference: {differing[:3]}")

    t0 = time.monotonic()
    state: dict[str, Any] = {}

    def all_tops() -> bool:
        state["got"], state["n"], state["repeats"] = published_top_changes(ns.bootstrap, ns.topic("book.top"))
        return state["got"] >= ref_tops

    with contextlib.suppress(AssertionError):  # what is missing is counted below
        wait_for(all_tops, 300, "every reference top change in book.top", every=5)
    got = state.get("got", set())
    wrong, missing = got - ref_tops, ref_tops - got
    figures.update(book_tops_checked=state.get("n", 0), book_top_duplicates=state.get("repeats", 0),
                   book_tops_matching_no_truth=len(wrong), book_tops_missing=len(missing),
                   tops_settle_s=round(time.monotonic() - t0, 1))
    if wrong:
        failures.append(f"{len(wrong)} book.top records are not top changes of the reference, e.g. "
                        f"{sorted(wrong)[:3]}")
    if missing:
        failures.append(f"{len(missing)} top changes of the reference are not in book.top, e.g. {sorted(missing)[:3]}")
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not under_replicated(cluster), 180, "every partition's ISR full", every=2)
    urp = under_replicated(cluster)
    figures["under_replicated_partitions"] = len(urp)
    if urp:
        failures.append(f"{len(urp)} under-replicated partitions at the end: {urp[:5]}")
    figures["lost"] = missing_frames + len(differing) + len(missing)
    return failures


def check_logs(figures: dict[str, Any], failures: list[str], **logs: str) -> None:
    for name, text in logs.items():
        f = log_figures(text)
        figures.update({f"{name}_{k}": v for k, v in f.items()})
        if f["log_dropping_records"] or f["log_tracebacks"]:
            failures.append(f"{name} log: {f['log_dropping_records']} 'dropping records', "
                            f"{f['log_tracebacks']} Traceback")


def wait_isr_full(cluster: Cluster, timeout: float = 180) -> float:
    t0 = time.monotonic()
    wait_for(lambda: not under_replicated(cluster), timeout, "every partition's ISR full again", every=1)
    return time.monotonic() - t0


# -- (c) catch-up of a million frames, SIGKILLs mid-way -------------------------------------
def counters(worker: Worker) -> dict[str, Any]:
    try:
        status, body = worker.get("/metrics/counters")
    except OSError:
        return {}
    return body if status == 200 else {}


@pytest.mark.captures
@pytest.mark.scenario("catchup")
def test_catchup_of_a_million_frames_with_sigkills_on_three_brokers(
        cns: Namespace, chaos_cluster: Cluster, captures: Path, tmp_path: Path, report: dict[str, Any]) -> None:
    from app.kafka import ensure_topics

    # The risk.hedge check (check_hedge) needs specs of the copies: the capture holds depth,
    # bookTicker and trade frames of binance-usdm BTCUSDT and no instrument list, and each copy is an
    # instrument no venue lists (BTC<k>USDT); without a spec the engine values nothing (a position is
    # "unknown", no delta: a rule on it never fires). So raw.binance-usdm gets, before the capture,
    # the copies' instrument list as ingestion writes one (tests/risk_reference.copies_instruments:
    # a venue-keyed REST frame of exchangeInfo, received a second before the capture's first frame,
    # through the same router and sink, counted in ``want`` like every frame). The worker parses it
    # with the venue's registry parser into ref.instruments, one spec a copy (a USDT-margined linear
    # perpetual, contract size 1) valid from its receive time; the desk (long 3 BTC of copy 0, in
    # force from ts 0, on ``positions`` before the worker starts) and its rule (delta outside ±1 →
    # hedge in copy 0, cooldown 5 s of event time) give a signal every 5 s once copy 0's book is
    # synced: 69 over the capture's 345 s.
    ns, cluster = cns, chaos_cluster
    began = time.monotonic()
    records = list(read(hft(captures, "usdm"), "hftbacktest"))
    listing = copies_instruments(CATCHUP_COPIES, records[0].ts - 10**9)
    want: collections.Counter[Any] = collections.Counter()
    router = Router()

    def frames() -> Iterator[Any]:
        for rec in itertools.chain([listing], copies(records, CATCHUP_COPIES)):
            for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol):
                want[(raw.key, raw.ts, raw.kind, raw.conn, raw.data)] += 1
                yield raw

    settings = ns.settings()
    topics = Topics(settings.topic_prefix, VENUES, settings.app_id)
    # the raw topics, and the compacted ones (positions) as the worker makes them: the desk goes in first
    asyncio.run(ensure_topics(settings, raw_topics(ns), topics.compacted()))
    t0 = time.monotonic()
    sent = asyncio.run(produce_frames(settings, frames()))
    report.update(copies=CATCHUP_COPIES, instruments=CATCHUP_COPIES, frames=sent,
                  produce_s=round(time.monotonic() - t0, 1), guarantee=GUARANTEE,
                  capture_span_s=round((records[-1].ts - records[0].ts) / 1e9, 1), hedge_instrument=COPY_HEDGE)
    print(f"  {sent:,} frames in the raw topics in {report['produce_s']}s", flush=True)
    book = copy_positions()
    write_positions(ns.bootstrap, topics.positions, ns.partitions, book)

    # the reference over the raw topics (final now), computed while the worker catches up
    pool = concurrent.futures.ThreadPoolExecutor(1)
    ref = pool.submit(raw_topics_reference, ns.bootstrap, raw_topics(ns))
    rules = tmp_path / "rules.toml"
    rules.write_text(COPY_RULES)
    # The risk engine on, with the desk's rule, from the beginning of its inputs at every (re)start
    # as the reference reads them, RISK_LATENESS_MS behind.
    worker = Worker(ns, tmp_path / "data", RISK_ENABLED="true", RISK_RULES_FILE=str(rules), RISK_LOOKBACK_S="0",
                    RISK_LATENESS_MS=str(RISK_LATENESS_MS), **NO_EXECUTOR_ENV)
    chunk = sent // (CATCHUP_KILLS + 1)
    report.update(worker_kills=0, hedge_kills=0)
    logs: list[str] = []
    failures: list[str] = []
    try:
        t0 = time.monotonic()
        for i in range(CATCHUP_KILLS):
            worker.start(wait=False)

            def midway(w: Worker = worker) -> bool:
                assert w.proc is not None
                if w.proc.poll() is not None:
                    raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")
                return counters(w).get("frames.binance-usdm", 0) >= chunk

            wait_for(midway, 600, f"the worker {chunk:,} frames further", every=1)
            worker.kill()
            report["worker_kills"] += 1
            print(f"  worker kill {i + 1}/{CATCHUP_KILLS} done ({time.monotonic() - t0:.0f}s)", flush=True)
        worker.start(wait=False)
        if CATCHUP_HEDGE_KILL:
            # Caught up, the engine releases its inputs in event-time order and publishes as it goes
            # (the first signal half a second into the capture): SIGKILLed now, the next engine must
            # publish exactly the rest — what it recomputes and finds published, it skips.
            def publishing(w: Worker = worker) -> bool:
                assert w.proc is not None
                if w.proc.poll() is not None:
                    raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.tail()}")
                report["hedge_sent_before_kill"] = counters(w).get("risk_out.risk.hedge", 0)
                return report["hedge_sent_before_kill"] >= 1

            wait_for(publishing, 1800, "the risk engine publishing risk.hedge", every=0.5)
            worker.kill()
            report["hedge_kills"] += 1
            report["hedge_records_at_kill"] = len(published_hedge(ns.bootstrap, topics.hedge))
            print(f"  worker kill while the risk engine publishes, {report['hedge_records_at_kill']} risk.hedge "
                  f"records then ({time.monotonic() - t0:.0f}s)", flush=True)
            worker.start(wait=False)
        failures += check_outputs(ns, worker, want, report, cluster, settle_s=1200, ref=ref)
        report["catchup_s"] = round(time.monotonic() - t0, 1)
        del ref  # the raw topics' reference (a million frames): not kept while the hedge's is computed
        failures += check_hedge(ns, worker, rules, report, settle_s=900)
        logs.append(worker.log_text())
    finally:
        worker.kill()
        pool.shutdown(wait=False, cancel_futures=True)
    check_logs(report, failures, worker="\n".join(logs))
    report["duration_s"] = round(time.monotonic() - began, 1)
    assert not failures, "; ".join(failures)


# -- (a), (b): live feed + replay while brokers go -----------------------------------------
class LiveSite:
    """Simulator → `faust -A app ingest` → raw topics, a replay of the USD-M capture paced over
    REPLAY_S, and one worker (ingestion off) turning them into books."""

    def __init__(self, ns: Namespace, tmp: Path, captures: Path) -> None:
        self.ns, self.tmp = ns, tmp
        self.sim = Simulator(tmp, rate=SIM_RATE)
        self.rules = tmp / "rules.toml"
        self.rules.write_text(DESK_RULES)
        # The risk engine on, with the desk's rule (tests/risk_reference.py), from the beginning of
        # its inputs at every (re)start as the reference reads them, RISK_LATENESS_MS behind.
        self.worker = Worker(ns, tmp / "data", INGEST_IN_WORKER="false", RISK_ENABLED="true",
                             RISK_RULES_FILE=str(self.rules), RISK_LOOKBACK_S="0",
                             RISK_LATENESS_MS=str(RISK_LATENESS_MS), **NO_EXECUTOR_ENV)
        self.ingest: subprocess.Popen[bytes] | None = None
        self.replay: subprocess.Popen[str] | None = None
        self.ingest_log = tmp / "ingest.log"
        self.replay_log = tmp / "replay.log"
        records = list(read(hft(captures, "usdm"), "hftbacktest"))
        self.capture = tmp / "usdm.jsonl"
        self.capture.write_bytes(b"".join(write_native(r) for r in records))
        self.span_s = (records[-1].ts - records[0].ts) / 1e9
        router = Router()
        self.want: collections.Counter[Any] = collections.Counter(
            (raw.key, raw.ts, raw.kind, raw.conn, raw.data) for rec in records
            for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol))
        self.keys = [f"{v}:{s}" for v, syms in SIM_FEEDS.items() for s in syms]

    def start(self) -> None:
        self.sim.start()
        self.worker.start(timeout=180)
        # The desk's book, in force from the start, held by the risk engine before any market input
        # (its service may first wait up to app.risk.service.CATCH_UP_S for the worker to catch up).
        book = desk_positions()
        write_positions(self.ns.bootstrap, self.ns.topic("positions"), self.ns.partitions, book)
        wait_for(lambda: len(self.worker.get("/api/risk")[1].get("positions") or []) == len(book), 180,
                 "the risk engine holding the desk's positions", every=1)
        self.ingest = start_ingest(self.ns, self.sim, feeds_spec(SIM_FEEDS), self.ingest_log)
        wait_for(lambda: all(api_book(self.worker, k)[1].get("state") == "synced" for k in self.keys), 180,
                 "every live book synced", every=2)
        speed = max(self.span_s / REPLAY_S, 0.01)
        self.replay = subprocess.Popen(
            [*FAUST, "replay", str(self.capture), "--format", "native", "--speed", f"{speed:.4f}"],
            env=self.ns.env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.replay_log.open("w"),
            stdin=subprocess.DEVNULL, text=True)
        # Faults begin once the replay is producing: these scenarios test the data path, not starts.
        wait_for(lambda: self.replay_running() and api_book(self.worker, REPLAYED)[0] == 200, 180,
                 "the replay producing (its book on the worker)", every=1)

    def replay_running(self) -> bool:
        assert self.replay is not None
        if self.replay.poll() is not None:
            raise AssertionError(f"replay exited with {self.replay.returncode}:\n"
                                 f"{self.replay_log.read_text(errors='replace')[-3000:]}")
        return True

    def alive(self) -> None:
        assert self.worker.proc is not None
        assert self.worker.proc.poll() is None, f"the worker exited:\n{self.worker.tail()}"
        assert self.ingest is not None
        assert self.ingest.poll() is None, f"ingest exited:\n{self.ingest_log.read_text()[-3000:]}"

    def finish(self, figures: dict[str, Any]) -> None:
        """Wait for the replay, stop ingestion (its buffer flushed): the raw topics are final."""
        assert self.replay is not None
        assert self.ingest is not None
        rc = self.replay.wait(timeout=REPLAY_S * 3 + 600)
        text = self.replay_log.read_text(errors="replace")
        errors: list[str] = []
        # A replay that stops on an error is run again once every node is back, as its message
        # says to do (frames written twice are recognised by sequence); the stops are counted in
        # the report (replay_errors) and fail the scenario, the data checks apply to the result.
        # (Seen before: "nothing delivered to Kafka … for 30s" while one node of three was SIGKILLed
        # — the replay gave up at the very moment its sink would replace a wedged producer.)
        while rc != 0 and len(errors) < 3:
            errors += [line for line in text.splitlines() if "error:" in line][-1:] or [f"exit {rc}"]
            print(f"  replay stopped ({errors[-1].strip()[:200]}); replaying again", flush=True)
            with self.replay_log.open("w") as log:
                rc = subprocess.run([*FAUST, "replay", str(self.capture), "--format", "native"], env=self.ns.env(),
                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                                    timeout=900, check=False).returncode
            text = self.replay_log.read_text(errors="replace")
        figures.update(replay_runs=1 + len(errors), replay_errors=errors)
        assert rc == 0, f"replay exited with {rc}:\n{text[-3000:]}"
        produced = re.findall(r"([\d,]+) frames in [\d,]+ records", text)
        figures["replay_frames_produced"] = int(produced[-1].replace(",", "")) if produced else None
        time.sleep(3)
        self.ingest.send_signal(signal.SIGTERM)
        self.ingest.wait(timeout=60)
        dropped, failed = ingest_losses(self.ingest_log)
        sent = re.findall(r"produced ([\d,]+) in", self.ingest_log.read_text(errors="replace"))
        figures.update(ingest_frames_dropped=dropped, ingest_deliveries_failed=failed,
                       ingest_frames_produced=int(sent[-1].replace(",", "")) if sent else None)
        self.sim.kill()

    def stop(self) -> None:
        self.worker.kill()
        for p in (self.replay, self.ingest):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        self.sim.kill()


def prometheus_value(worker: Worker, name: str) -> float | None:
    """The sum of one metric's samples in the worker's /metrics (None: not there, or no answer)."""
    try:
        with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as resp:  # noqa: S310 - local test URL
            text = resp.read().decode()
    except OSError:
        return None
    found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(found) if found else None


def check_hedge(ns: Namespace, worker: Worker, rules: Path, figures: dict[str, Any], settle_s: float = 300,
                replayed: str | None = None, repeats_fail: bool = True, live: bool = False) -> list[str]:
    """``risk.hedge`` (read_committed) against the reference over the risk engine's input topics
    as they are now (tests/risk_reference.py), once the worker's engine (its rules file ``rules``)
    has applied them all: every record of the reference there exactly once (by id), none it does
    not give, each of the same type (signal or blocked). ``replayed``: the instrument of a capture
    replayed alongside a live feed (its inputs counted). ``live``: the desk's inputs come from a
    live feed (how long after receipt they were published is reported). ``repeats_fail``: an id published twice is
    a failure (else counted only: two workers may both publish at a handover). Fills ``figures``;
    returns a line for each failed check."""
    failures: list[str] = []
    t0 = time.monotonic()
    settings = ns.settings(**worker.extra_env)

    def reference() -> tuple[dict[str, Any], Any]:
        inputs = read_inputs(ns.bootstrap, settings.topic_prefix)
        return inputs, hedge_reference(inputs, engine_settings(settings), load_rules(rules))

    inputs, ref = reference()
    figures["hedge_reference_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    state: dict[str, Any] = {"rereads": 0}

    def settled() -> bool:
        nonlocal inputs, ref
        status, snap = worker.get("/api/risk")
        if status != 200:
            return False
        state["event_time"], state["pending"] = snap["event_time"], snap["pending_inputs"]
        if snap["event_time"] > ref.event_time or snap["inputs_read"] > ref.inputs.total():
            # The engine applied inputs the reference did not read: the reference was read before
            # the worker had published them all (it catches up after the faults: a leader-kill run
            # read the hedge instrument's ticker partition 30 s short while the others were whole,
            # the event time alike, and the engine's records from those 30 s were "not the
            # reference's"), or the reading stopped short (seen once right after leader kills:
            # 68,786 of 93,130 inputs read, at end offsets a broker gave while leadership moved).
            # Read them again: both read every input from the beginning.
            inputs, ref = reference()
            state["rereads"] += 1
            return False
        if snap["pending_inputs"] or snap["event_time"] < ref.event_time:
            return False  # still holding inputs back, or not at the last one yet
        return {b["id"] for b in published_hedge(ns.bootstrap, ns.topic("risk.hedge"))} >= ref.records.keys()

    with contextlib.suppress(AssertionError):  # what is missing is counted below
        wait_for(settled, settle_s, "the risk engine past its last input, every reference id in risk.hedge", every=5)
    time.sleep(3)  # whatever it sent last, delivered
    figures["hedge_reference_rereads"] = state["rereads"]
    hedged = {r.hedge for r in load_rules(rules)}
    delays = sorted(input_delays(inputs, hedged), key=lambda d: d[1], reverse=True) if live else []
    late_desk = [d for d in delays if d[1] > RISK_LATENESS_MS * 1_000_000]
    figures.update(desk_input_delay_s_max=round(delays[0][1] / 1e9, 1) if delays else None,
                   desk_inputs_later_than_lateness=len(late_desk))
    for recv, delay, topic in late_desk[:5]:
        print(f"  {topic} of the hedge instrument received at {time.strftime('%H:%M:%S', time.gmtime(recv / 1e9))} "
              f"published {delay / 1e9:.1f}s later", flush=True)
    c = compare_hedge(ref, published_hedge(ns.bootstrap, ns.topic("risk.hedge")))
    log = worker.log_text()
    late = counters(worker).get("risk_late_inputs", 0)
    n_replayed = ref.inputs[replayed] if replayed is not None else None
    restarts = len(re.findall(r"risk: .*starting again|risk engine failed", log))
    activations = len(re.findall(r"partitions \[[\d, ]*\] active", log))
    producers = prometheus_value(worker, "bookstream_outputs_producer_restarts_total")
    behind = round((ref.event_time - state["event_time"]) / 1e9, 1) if "event_time" in state else None
    figures.update(c.figures(), hedge_settle_s=round(time.monotonic() - t0, 1), risk_late_inputs=late,
                   risk_inputs=ref.inputs.total(), risk_engine_restarts=restarts,
                   worker_partition_activations=activations, outputs_producer_restarts=producers,
                   risk_pending_inputs=state.get("pending"), risk_event_time_behind_reference_s=behind)
    if replayed is not None:
        figures["risk_inputs_replayed"] = n_replayed
    figures["lost"] = figures.get("lost", 0) + len(c.missing)
    for what, ids in (("missing", c.missing), ("unexpected", c.unexpected), ("of another type", c.type_differing),
                      ("with other contents", c.bodies_differing)):
        for hid in ids[:10]:
            print(f"  risk.hedge {what}: {c.describe(hid)}", flush=True)
    if c.bodies_differing:  # not a failure (ids and types are the requirement), but never passed over
        print(f"  risk.hedge: {len(c.bodies_differing)} records differ from the reference's in their contents, "
              f"{len(c.other_inputs)} of them computed from other inputs (late inputs of the desk's instrument; "
              f"the worker counted {late} late inputs)", flush=True)
    signals = ref.types().get("signal", 0)
    if signals < MIN_HEDGE_SIGNALS:
        failures.append(f"the reference holds {signals} hedge signals ({ref.types()}), fewer than "
                        f"{MIN_HEDGE_SIGNALS}: the desk's rule did not fire, the risk.hedge check proves nothing")
    # Why records can differ, said with every difference (never passed over): an input behind the
    # engine's watermark is applied when it comes, not in its place (README "Status and known limits"). A
    # replayed capture's inputs are older than a live feed's: late whenever the live feed's reached
    # the engine first, and harmless (the desk holds nothing they value). Late inputs of the desk's
    # instrument show as published records computed from other inputs than the reference's.
    has = f", the replayed capture has {n_replayed}" if replayed is not None else ""
    delayed = (f"{len(late_desk)} inputs of the hedge instrument were published more than RISK_LATENESS_MS after "
               f"they were received (at most {figures['desk_input_delay_s_max']} s); " if live else "")
    why = (f" [the worker counted {late} late inputs (the reference has {ref.inputs.total()}{has}); {delayed}"
           f"{len(c.other_inputs)} records published were computed from other inputs than the reference's "
           f"(RISK_LATENESS_MS {RISK_LATENESS_MS}); the risk engine restarted {restarts} time(s); partitions were "
           f"activated {activations} time(s); at the end the engine was {behind} s of event time behind the "
           f"reference's last input, {state.get('pending')} inputs pending]")
    for found, what in ((c.missing, f"of {len(ref.records)} risk.hedge records of the reference are not published"),
                        (c.unexpected, "risk.hedge records are not the reference's"),
                        (c.type_differing, "risk.hedge records are of another type than the reference's")):
        if found:
            failures.append(f"{len(found)} {what}, e.g. {c.describe(found[0])}{why}")
    if c.duplicates and repeats_fail:
        failures.append(f"{c.duplicates} risk.hedge records repeat an id published before ({len(c.duplicated)} ids, "
                        f"e.g. {c.duplicated[0]}; output producers replaced {producers} time(s))")
    return failures


def live_checks(site: LiveSite, cluster: Cluster, figures: dict[str, Any]) -> list[str]:
    failures: list[str] = []
    site.finish(figures)
    if figures["replay_errors"]:
        failures.append(f"the replay stopped {len(figures['replay_errors'])} time(s): {figures['replay_errors']}")
    if figures["ingest_frames_dropped"] or figures["ingest_deliveries_failed"]:
        failures.append(f"ingestion dropped {figures['ingest_frames_dropped']} frames and failed "
                        f"{figures['ingest_deliveries_failed']} deliveries")
    failures += check_outputs(site.ns, site.worker, site.want, figures, cluster)
    failures += check_hedge(site.ns, site.worker, site.rules, figures, replayed=REPLAYED, live=True)
    figures["frames"] = figures["frames_in_raw_topics"]
    live = figures["frames_in_raw_topics"] - sum(site.want.values())
    figures["live_frames_in_raw_topics"] = live
    if figures.get("ingest_frames_produced") is not None and live < figures["ingest_frames_produced"]:
        failures.append(f"ingestion produced {figures['ingest_frames_produced']} frames, the raw topics hold "
                        f"{live} live frames")
    check_logs(figures, failures, worker=site.worker.log_text(), ingest=site.ingest_log.read_text(errors="replace"))
    return failures


@pytest.fixture
def live(cns: Namespace, tmp_path: Path, captures: Path) -> Iterator[LiveSite]:
    site = LiveSite(cns, tmp_path, captures)
    try:
        yield site
    finally:
        site.stop()


@pytest.mark.captures
@pytest.mark.scenario("leader_kills")
def test_leader_kills_sigkill_the_leading_broker_under_live_feed_and_replay(
        live: LiveSite, chaos_cluster: Cluster, report: dict[str, Any]) -> None:
    began, cluster, ns = time.monotonic(), chaos_cluster, live.ns
    p = partition_for(REPLAYED, ns.partitions)
    targets = [(ns.topic("raw.binance-usdm"), p), (changelog_topic(ns.name), p), (ns.topic("book.top"), p)]
    report.update(guarantee=GUARANTEE, broker_kills=0, partition=p)
    live.start()
    isr_waits: list[float] = []
    victims: collections.Counter[int] = collections.Counter()
    for i in range(BROKER_KILLS):
        topic, part = targets[i % len(targets)]
        node = cluster.leader(topic, part)
        cluster.kill(node)
        victims[node] += 1
        time.sleep(BROKER_DOWN_S)
        live.alive()
        cluster.start(node)
        isr_waits.append(wait_isr_full(cluster))
        report["broker_kills"] += 1
        live.alive()
        print(f"  kill {i + 1}/{BROKER_KILLS}: node {node} (leader of {topic}-{part}), ISR full "
              f"{isr_waits[-1]:.0f}s after its start", flush=True)
    report.update(kills_by_node={str(k): v for k, v in sorted(victims.items())},
                  isr_full_after_start_s_max=round(max(isr_waits, default=0), 1),
                  faults_s=round(time.monotonic() - began, 1))
    failures = live_checks(live, cluster, report)
    report["duration_s"] = round(time.monotonic() - began, 1)
    assert not failures, "; ".join(failures)


@pytest.mark.captures
@pytest.mark.scenario("rolling_restart")
def test_rolling_restart_of_the_three_brokers_under_live_feed_and_replay(
        live: LiveSite, chaos_cluster: Cluster, report: dict[str, Any]) -> None:
    began, cluster = time.monotonic(), chaos_cluster
    report.update(guarantee=GUARANTEE, broker_restarts=0)
    live.start()
    isr_waits: list[float] = []
    for node in range(1, cluster.nodes + 1):
        t0 = time.monotonic()
        cluster.stop(node)
        stopped = time.monotonic() - t0
        live.alive()
        cluster.start(node)
        isr_waits.append(wait_isr_full(cluster))
        report["broker_restarts"] += 1
        live.alive()
        print(f"  node {node}: stopped in {stopped:.0f}s, ISR full {isr_waits[-1]:.0f}s after its start", flush=True)
    report.update(isr_full_after_start_s_max=round(max(isr_waits, default=0), 1),
                  faults_s=round(time.monotonic() - began, 1))
    failures = live_checks(live, cluster, report)
    report["duration_s"] = round(time.monotonic() - began, 1)
    assert not failures, "; ".join(failures)

