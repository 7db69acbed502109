"""Fault scenarios shared by the fast tests (tests/integration) and `make chaos` (tests/chaos).

Each returns the figures it measured; it raises AssertionError when anything is lost or wrong.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.helpers import (
    FAUST,
    ROOT,
    Broker,
    Namespace,
    Simulator,
    Worker,
    book_levels,
    by_instrument,
    consume,
    feeds_spec,
    frames,
    reference,
    tops_matching_no_truth,
    values,
    wait_for,
)


# -- helpers ------------------------------------------------------------------------
def tops_by_key(ns: Namespace) -> dict[str, list[dict[str, Any]]]:
    return by_instrument(values(consume(ns.bootstrap, ns.topic("book.top"), idle_s=2, timeout=300)))


def check_tops_never_go_back(tops: dict[str, list[dict[str, Any]]]) -> int:
    """Per instrument, (epoch, seq) never decreases except to repeat one already published (an
    at-least-once duplicate after a restart). Returns how many duplicates there were."""
    return sum(len(stream) - len(drop_duplicates(stream, key)) for key, stream in tops.items())


def drop_duplicates(stream: list[dict[str, Any]], key: str = "") -> list[dict[str, Any]]:
    """What a consumer does with at-least-once delivery (README "Delivery guarantees"): drop a
    record whose (epoch, seq) is not past the last one seen for that instrument. A repeat must
    be of a record already published, with the same book."""
    first: dict[tuple[int, int], tuple[str, ...]] = {}
    out: list[dict[str, Any]] = []
    last = (-1, -1)
    for t in stream:
        top, at = (t["bid_px"], t["bid_sz"], t["ask_px"], t["ask_sz"]), (t["epoch"], t["seq"])
        if at <= last:
            assert at in first, f"{key}: (epoch, seq) went back to {at} (after {last}), not a duplicate"
            assert first[at] == top, f"{key}: {at} republished with another book: {top}"
            continue
        first[at], last = top, at
        out.append(t)
    return out


def api_book(worker: Worker, key: str) -> tuple[int, Any]:
    venue, symbol = key.split(":", 1)
    return worker.get(f"/api/books/{venue}/{symbol}?depth=5000")


def books_differing(worker: Worker, ref: Any, timeout: float) -> tuple[int, list[str]]:
    """Every instrument of the in-process reference as the worker serves it, against the reference
    (same seq, same levels, same state), once each is at its final seq or ``timeout`` has passed:
    (how many were compared, a line for each that differs)."""
    keys = sorted(k for k in ref.instruments if k.partition(":")[2])

    def all_there() -> bool:
        for key in keys:
            status, body = api_book(worker, key)
            if status != 200 or body["seq"] != ref.instruments[key].seq:
                return False
        return True

    with contextlib.suppress(AssertionError):  # the books not at their final seq differ: counted below
        wait_for(all_there, timeout, "every book at its final seq", every=1)
    differing = []
    for key in keys:
        status, body = api_book(worker, key)
        inst = ref.instruments[key]
        if status != 200:
            differing.append(f"{key}: answered {status} {str(body)[:200]}")
            continue
        bids, asks = book_levels(ref, key)
        if body["seq"] != inst.seq:
            differing.append(f"{key}: at seq {body['seq']}, the reference at {inst.seq}")
        elif (body["bids"], body["asks"]) != (bids[:5000], asks[:5000]):
            differing.append(f"{key}: its levels differ from the reference's at seq {inst.seq}")
        elif body["state"] != inst.status:
            differing.append(f"{key}: {body['state']}, the reference {inst.status}")
    return len(keys), differing


def books_equal_reference(worker: Worker, ref: Any, timeout: float) -> int:
    """Every instrument of the in-process reference, as the worker serves it: same seq, same levels."""
    compared, differing = books_differing(worker, ref, timeout)
    assert not differing, f"{len(differing)} of {compared} books differ from the reference:\n" + "\n".join(differing)
    return compared


# -- captures, and what the reference publishes --------------------------------------------
Position = tuple[int, int]  # (epoch, seq) of a book.top
TopFields = tuple[Any, ...]  # bid_px, bid_sz, ask_px, ask_sz, ts_exchange, ts_recv


def native_capture(sources: list[tuple[list[Path], str]], out: Path, parts: int = 1) -> list[Path]:
    """The records of ``sources`` (``(paths, format)``, in order) written as one native capture,
    or as ``parts`` consecutive files of about equal size (``<stem>-1<suffix>`` …) to replay one
    after the other."""
    from app.capture.formats import read, write_native

    lines = [write_native(rec) for paths, fmt in sources for rec in read(paths, fmt)]
    files = [out] if parts == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(parts)]
    size = -(-len(lines) // parts)
    for i, path in enumerate(files):
        path.write_bytes(b"".join(lines[i * size:(i + 1) * size]))
    return files


def reference_tops(parts: list[Path], fmt: str = "native") -> tuple[Any, dict[str, dict[Position, TopFields]]]:
    """The in-process reference over ``parts`` replayed one after the other (a router per part,
    as each replay run has), and every book.top it publishes, per instrument: (epoch, seq) →
    the record's fields, epoch as the instrument's counter right after the frame (what the
    worker's publisher reads)."""
    tops: dict[str, dict[Position, TopFields]] = collections.defaultdict(dict)

    def keep(raw: Any, out: Any) -> None:
        if out.inst is None or not out.fx.tops:
            return
        epoch, mine = out.inst.counters["epoch"], tops[raw.key]
        for seq, ts_exchange, top in out.fx.tops:
            fields = (*top, ts_exchange, raw.ts)
            assert mine.setdefault((epoch, seq), fields) == fields, \
                f"{raw.key}: the reference itself publishes two tops at {(epoch, seq)}"

    proc = None
    for part in parts:
        proc = reference([part], fmt, proc=proc, on_outcome=keep)
    return proc, dict(tops)


def tops_equal_reference(published: dict[str, list[dict[str, Any]]],
                         ref_tops: dict[str, dict[Position, TopFields]]) -> dict[str, int]:
    """Every published book.top equals the reference's top at its (epoch, seq), timestamps of the
    venue and of receipt included; a record may be repeated (at-least-once), nothing else.
    Returns how many were checked, how many were repeats, and how many of the reference's tops
    were never published."""
    wrong: list[str] = []
    checked = repeats = 0
    for key, stream in sorted(published.items()):
        want = ref_tops.get(key, {})
        positions = sorted(want)
        seen: set[Position] = set()
        for t in stream:
            at: Position = (t["epoch"], t["seq"])
            got = (t["bid_px"], t["bid_sz"], t["ask_px"], t["ask_sz"], t["ts_exchange"], t["ts_recv"])
            checked += 1
            repeats += at in seen
            seen.add(at)
            if at not in want:
                i = bisect.bisect_left(positions, at)
                before = positions[i - 1] if i else None
                same = before is not None and want[before][:4] == got[:4]
                wrong.append(f"{key} at {at}: published {got[:4]}, but the reference publishes no top at {at}"
                             + (f" (it is the reference's top at {before}: an unchanged top published again at a "
                                "new (epoch, seq))" if same else ""))
            elif got != want[at]:
                wrong.append(f"{key} at {at}: published {got}, the reference's top there is {want[at]}")
    assert not wrong, f"{len(wrong)} of {checked} book.top records are not the reference's:\n" + "\n".join(wrong[:20])
    for key, stream in published.items():
        drop_duplicates(stream, key)  # and the order: (epoch, seq) only grows but for repeats
    unpublished = sum(len(set(want) - {(t["epoch"], t["seq"]) for t in published.get(key, [])})
                      for key, want in ref_tops.items())
    return {"book_tops_checked": checked, "book_top_repeats": repeats, "reference_tops_not_published": unpublished}


# -- worker crashes ------------------------------------------------------------------
def repeated_kills(ns: Namespace, tmp: Path, kills: int, ref: Any, seed: int = 1,
                   figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw topics already hold the whole capture; SIGKILL the worker ``kills`` times at
    random moments (during recovery or processing), then let it finish and compare. Fills
    ``figures`` as it goes (``books_differing``: the books not equal to the reference)."""
    rng = random.Random(seed)
    worker = Worker(ns, tmp / "data")
    figures = {} if figures is None else figures
    figures["kills"] = 0
    try:
        for i in range(kills):
            worker.start(wait=False)
            if rng.random() < 0.25:  # a kill during start-up / table recovery
                time.sleep(rng.uniform(1.0, 6.0))
            else:  # a kill while processing
                worker.wait_ready(180)
                time.sleep(rng.uniform(0.5, 5.0))
            assert worker.proc is not None
            assert worker.proc.poll() is None, f"worker died by itself:\n{worker.tail()}"
            worker.kill()
            figures["kills"] += 1
            print(f"  kill {i + 1}/{kills} done", flush=True)
        worker.start()
        figures["books_compared"], differing = books_differing(worker, ref, 600)
        figures["books_differing"] = len(differing)
        for line in differing:
            print(f"  differs: {line}", flush=True)
        log = worker.log_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        worker.kill()
    figures["book_top_duplicates"] = check_tops_never_go_back(tops_by_key(ns))
    return figures


def raw_frames_missing(ns: Namespace, paths: list[Path], fmt: str) -> dict[str, int]:
    """The frames one replay run of ``paths`` produces (the capture through one router, as replay
    routes it) against the frames the namespace's raw topics hold: how many are there, how many
    of the capture's are missing, how many are there more often than the capture has them (a
    producer retry after a lost acknowledgement may write one twice)."""
    from app.capture.formats import read
    from app.router import Router
    from app.venues import VENUES

    def ident(f: Any) -> int:
        return hash((f.key, f.ts, f.kind, f.conn, f.data))

    router = Router()
    want = collections.Counter(ident(raw) for rec in read(paths, fmt)
                               for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url,
                                                       rec.symbol))
    found = collections.Counter(ident(f) for venue in VENUES
                                for f in frames(consume(ns.bootstrap, ns.topic(f"raw.{venue}"), idle_s=1, timeout=300)))
    return {"frames_in_raw_topics": found.total(), "raw_frames_missing": (want - found).total(),
            "raw_frames_repeated": (found - want).total()}


# -- two workers: kill one, the other takes over --------------------------------------
class Poller:
    """Asks a worker for every instrument, over and over, and counts the answers."""

    def __init__(self, worker: Worker, keys: list[str]) -> None:
        self.worker, self.keys = worker, keys
        self.codes: collections.Counter[int] = collections.Counter()
        self.sources: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key in self.keys:
                try:
                    status, body = api_book(self.worker, key)
                except OSError as exc:
                    status, body = 0, repr(exc)
                self.codes[status] += 1
                if status == 200:
                    self.sources[body.get("source", "?")] += 1
                else:
                    self.failures.append(f"{key}: {status} {str(body)[:120]}")
            time.sleep(0.1)

    @contextlib.contextmanager
    def running(self) -> Iterator[Poller]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


def stop_ingest(ingest: subprocess.Popen[bytes]) -> None:
    """SIGTERM (it flushes its buffer to Kafka), SIGKILL if it has not exited within 20 s."""
    if ingest.poll() is not None:
        return
    ingest.send_signal(signal.SIGTERM)
    try:
        ingest.wait(timeout=20)
    except subprocess.TimeoutExpired:
        ingest.kill()


def start_ingest(ns: Namespace, sim: Simulator, feeds: str, log: Path) -> subprocess.Popen[bytes]:
    env = ns.env(FEED="sim", SIM_URL=sim.url, FEEDS=feeds, INGEST_STATUS_S="1")
    return subprocess.Popen([*FAUST, "ingest"], env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def ingest_losses(log: Path) -> tuple[int, int]:
    """(frames dropped, frames whose delivery failed for good) by a `faust -A app ingest`, from the
    last status line of its log (app.ingest.service: "… dropped N, failed M, …")."""
    found = re.findall(r"dropped ([\d,]+), failed ([\d,]+),", log.read_text(errors="replace"))
    assert found, f"no ingestion status line in {log}"
    dropped, failed = found[-1]
    return int(dropped.replace(",", "")), int(failed.replace(",", ""))


def unmatched_tops(tops: dict[str, list[dict[str, Any]]], keys: list[str], sim: Simulator) -> tuple[int, list[str]]:
    """The book.top records of ``keys``, repeats dropped, against the simulator's truth: (how many
    were checked, a line for each that equals no true top at its seq)."""
    checked, wrong = 0, []
    for k in keys:
        stream = drop_duplicates(tops[k], k)
        checked += len(stream)
        wrong += [f"{k}: {line}" for line in tops_matching_no_truth(stream, sim.truth(*k.split(":", 1)))]
    return checked, wrong


def owned(worker: Worker) -> set[str]:
    status, body = worker.get("/api/books")
    return {b["key"] for b in body["books"]} if status == 200 else set()


def takeover(ns: Namespace, tmp: Path, feeds: dict[str, list[str]], rounds: int = 1, rate: float = 20.0,
             figures: dict[str, Any] | None = None, env: dict[str, str] | None = None,
             started: Callable[[Worker], None] | None = None,
             check: Callable[[Worker], list[str]] | None = None) -> dict[str, Any]:
    """Two workers (standby replicas 1), ingestion from the simulator; kill one, the other
    serves every book; start it again, partitions come back; books equal the truth. Fills
    ``figures`` as it goes. ``env``: more settings for both workers; ``started(worker)``: called
    once both run, before ingestion; ``check(worker)``: more checks at the end (a line for each
    failure), with both workers running."""
    keys = sorted(f"{v}:{s}" for v, syms in feeds.items() for s in syms)
    spec = feeds_spec(feeds)
    sim = Simulator(tmp, rate=rate).start()
    common = {"TABLE_STANDBY_REPLICAS": "1", "INGEST_IN_WORKER": "false", **(env or {})}
    a, b = Worker(ns, tmp / "a", **common), Worker(ns, tmp / "b", **common)
    figures = {} if figures is None else figures
    figures["takeovers"] = 0
    ingest: subprocess.Popen[bytes] | None = None
    try:
        a.start()
        b.start()
        if started is not None:
            started(b)
        ingest = start_ingest(ns, sim, spec, tmp / "ingest.log")

        def split_and_synced() -> bool:
            mine_a, mine_b = owned(a), owned(b)
            return bool(mine_a) and bool(mine_b) and mine_a | mine_b >= set(keys) and all(
                api_book(b, k)[1].get("state") == "synced" for k in keys)

        wait_for(split_and_synced, 120, "books split between the two workers, all synced", every=1)
        poller = Poller(b, keys)
        with poller.running():
            for _ in range(rounds):
                a.kill()  # SIGKILL: no goodbye to the group
                wait_for(lambda: owned(b) >= set(keys) and all(
                    api_book(b, k)[1].get("source") == "owner" and api_book(b, k)[1]["state"] == "synced"
                    for k in keys), 120, "the survivor owns and serves every book", every=1)
                figures["takeovers"] += 1
                a.start()
                wait_for(split_and_synced, 180, "partitions back on the restarted worker", every=1)
        assert poller.codes[200] > 0
        assert set(poller.codes) == {200}, f"answers other than 200: {dict(poller.codes)}: {poller.failures[:5]}"
        figures.update(api_answers=sum(poller.codes.values()), api_sources=dict(poller.sources))
        tops = tops_by_key(ns)
        stale = [line for w in (a, b) for line in w.log_text().splitlines() if " stale: " in line]
        try:
            checked, unmatched = unmatched_tops(tops, keys, sim)
        except AssertionError as exc:  # (epoch, seq) went back to something not published before
            raise AssertionError(f"{exc}; books the workers marked stale:\n" + "\n".join(stale[-20:])) from None
        dropped, failed = ingest_losses(tmp / "ingest.log")
        # What the simulator sent that never reached the raw topics cannot be known exactly here;
        # `lost` counts what can be: book.top records equal to no true book, and the frames that
        # ingestion itself dropped (over its buffer) or could not deliver.
        figures.update(book_tops_checked=checked, book_tops_matching_no_truth=len(unmatched),
                       ingest_frames_dropped=dropped, ingest_deliveries_failed=failed,
                       lost=len(unmatched) + dropped + failed, book_top_duplicates=check_tops_never_go_back(tops),
                       stale_lines=len(stale))
        assert not unmatched, (f"{len(unmatched)} book.top records match no true book:\n" + "\n".join(unmatched[:10])
                               + "\nbooks the workers marked stale:\n" + "\n".join(stale[-20:]))
        # no fault is injected here: a book the workers find crossed or failing its checksum was
        # built from a wrong table (e.g. changelog rows lost behind an offset commit)
        wrong = [line for line in stale if "crossed book" in line or "checksum mismatch" in line]
        assert not wrong, "\n".join(wrong)
        for w in (a, b):
            assert "Traceback" not in w.log_text(), w.tail()
        if check is not None:
            stop_ingest(ingest)  # its inputs final: the checks compare with what is in the topics
            failures = check(b)
            assert not failures, "; ".join(failures)
    finally:
        for w in (a, b):
            w.kill()
        if ingest is not None:
            stop_ingest(ingest)
        sim.kill()
    figures["books_compared"] = len(keys)
    return figures


# -- broker outage ------------------------------------------------------------------------
def broker_outage(tmp: Path, feeds: dict[str, list[str]], outage_s: float = 20.0, rate: float = 50.0,
                  figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """Worker ingesting from the simulator; the broker stops for ``outage_s`` and comes back.
    Fills ``figures`` as it goes."""
    keys = sorted(f"{v}:{s}" for v, syms in feeds.items() for s in syms)
    spec = feeds_spec(feeds)
    broker = Broker(tmp / "kafka").up()
    sim = Simulator(tmp, rate=rate).start()
    ns = Namespace("outage", broker.bootstrap, tmp)
    worker = Worker(ns, tmp / "data", FEED="sim", SIM_URL=sim.url, FEEDS=spec, INGEST_STATUS_S="1")
    figures = {} if figures is None else figures
    figures.update(outages=0, outage_s=outage_s)
    try:
        worker.start()

        def all_synced() -> bool:
            return all(api_book(worker, k)[1].get("state") == "synced" for k in keys)

        wait_for(all_synced, 90, "every book synced", every=1)
        broker.down()
        time.sleep(outage_s)  # the outage itself: a fixed length is the scenario
        assert worker.proc is not None
        assert worker.proc.poll() is None, f"worker died in the outage:\n{worker.tail()}"
        broker.up()
        figures["outages"] += 1
        before = {k: api_book(worker, k)[1]["counters"]["applied"] for k in keys}
        wait_for(lambda: all_synced() and all(api_book(worker, k)[1]["counters"]["applied"] > before[k] + 10
                                              for k in keys), 180, "every book synced and flowing again", every=1)
        tops = tops_by_key(ns)
        checked, unmatched = unmatched_tops(tops, keys, sim)
        _, counters = worker.get("/metrics/counters")
        sink = worker.get("/api/venues")[1]["sink"]
        dropped, failed = sum(sink["dropped"].values()), sum(sink["failed"].values())
        # What the simulator sent that never reached the raw topics cannot be known exactly here;
        # `lost` counts what can be: book.top records equal to no true book, and the frames that
        # ingestion dropped (over INGEST_BUFFER_MB) or could not deliver (their books resynced).
        figures.update(books_compared=len(keys), book_tops_checked=checked,
                       book_tops_matching_no_truth=len(unmatched), frames_dropped_counted=dropped,
                       deliveries_failed_counted=failed, lost=len(unmatched) + dropped + failed,
                       sent_again=sink["retried"], peak_buffer_mb=round(sink["peak_bytes"] / 2**20, 1),
                       resyncs=counters.get("resyncs", 0))
        assert not unmatched, f"{len(unmatched)} book.top records match no true book:\n" + "\n".join(unmatched[:10])
        assert worker.proc.poll() is None
        log = worker.log_text()
        assert "Traceback" not in log, log[-3000:]
        return figures
    finally:
        worker.kill()
        sim.kill()
        broker.down()
