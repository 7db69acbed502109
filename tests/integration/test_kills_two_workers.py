"""Two workers; one is SIGKILLed and restarted again and again while real captures are replayed.

The one killed (the victim) owns the capture's long stream (an hftbacktest day). Some kills
come right after a start (group joined, table restore), some while it applies records; some
restarts are quick (before the session timeout: static membership keeps its partitions),
some late (the survivor takes its partitions over from its standby copies, and gives them
back when it returns). At the end every book, asked of either worker, equals the in-process
reference, and every book.top ever published equals the reference's top at its (epoch, seq):
repeats of a record are allowed (at-least-once), nothing else, and none may be missing.
"""

from __future__ import annotations

import functools
import random
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from app.capture.formats import read
from tests.helpers import Namespace, Worker, http_json, wait_for, workers
from tests.scenarios import (
    books_equal_reference,
    native_capture,
    owned,
    reference_tops,
    tops_by_key,
    tops_equal_reference,
)
from tests.unit.test_captures import CRYPTOFEED, hft

KILLS = 2  # while applying: a late restart (a takeover), then a quick one; `make chaos` runs 12 (start-up too)
SEED = 20261130
# The capture is replayed in parts: the first before the workers start, the others one after the
# other from the first kill on, each paced (--speed) over about PACE_S, so that records keep coming
# (more kills, more parts).
PACE_S = 10
MOMENTS = ("start-up", "processing")
RESTARTS = ("quick", "late")
BUSY = "binance-usdm:BTCUSDT"  # the hftbacktest day, most of the capture: its owner is the one killed
ACTIVATION = re.compile(r"partitions \[[\d, ]*\] active \(")  # app.state.manager: one line per assignment


def activations(worker: Worker) -> int:
    """How many assignments the worker has taken (each rebalance gives it one)."""
    return len(ACTIVATION.findall(worker.log_text()))


def took_over(worker: Worker, activations_before: int, keys: set[str]) -> bool:
    """The worker has taken a new assignment since it had ``activations_before``, and serves ``keys``."""
    return activations(worker) > activations_before and owned(worker) >= keys


def joined(worker: Worker) -> bool:
    """The worker's current process has joined the consumer group (its restore follows at once)."""
    assert worker.proc is not None
    mark = f"] [{worker.proc.pid}] "  # log lines: [time] [pid] [level] message
    return any(mark in line for line in worker.log_text().splitlines() if "Joined group" in line)


def raw_records(worker: Worker) -> int:
    """Raw records the worker's current process has handed to its books (``/metrics/counters``)."""
    return int(worker.get("/metrics/counters")[1].get("raw_records", 0))


def until_applying(worker: Worker, replays: list[Future[Any]]) -> int:
    """Wait until the worker applies raw records (its count moves between two looks), or until
    no replay is left to give it any (or it no longer owns BUSY); returns the count last seen."""
    seen = [raw_records(worker)]

    def moved() -> bool:
        now, before = raw_records(worker), seen[0]
        seen[0] = now
        return now > before or all(r.done() for r in replays) or BUSY not in owned(worker)

    wait_for(moved, 60, "the worker applying records (or the replays done)", every=0.05)
    return seen[0]


def span_s(capture: Path) -> float:
    """Seconds from the first receive time of a native capture to its last (a continuous one)."""
    ts = [rec.ts for rec in read([capture], "native")]
    assert ts == sorted(ts), f"{capture} is not one continuous capture"
    return (ts[-1] - ts[0]) / 1e9


def ready(worker: Worker) -> bool:
    try:
        return http_json(worker.url + "/ready", timeout=2)[0] == 200
    except OSError:  # not answering yet
        return False


@pytest.mark.captures
def test_one_of_two_workers_killed_again_and_again_loses_nothing_and_every_top_is_the_reference(
        ns: Namespace, captures: Path, tmp_path: Path) -> None:
    kill_the_busy_worker(ns, captures, tmp_path, KILLS)


def kill_the_busy_worker(ns: Namespace, captures: Path, tmp_path: Path, kills: int) -> dict[str, Any]:
    """The scenario with ``kills`` kills (a multiple of 4: each pair as often, shuffled; fewer than
    4: the pairs in a fixed order); its figures."""
    began = time.monotonic()
    sources = [([captures / "cryptofeed" / n], "cryptofeed") for n in CRYPTOFEED]
    sources.append((hft(captures, "usdm")[:1], "hftbacktest"))
    parts = native_capture(sources, tmp_path / "capture.jsonl", 1 + max(2, kills * 7 // 12))
    ref, ref_tops = reference_tops(parts)
    rng = random.Random(SEED)
    if kills % 4:  # not every pair as often: a takeover, its hand-back seen by a kill while applying, start-up
        plan = [("processing", "late"), ("processing", "quick"), ("start-up", "quick"), ("start-up", "late")][:kills]
    else:
        plan = [(moment, restart) for moment in MOMENTS for restart in RESTARTS] * (kills // 4)
        rng.shuffle(plan)
    processing = next(i for i, (moment, _) in enumerate(plan) if moment == "processing")
    plan.insert(0, plan.pop(processing))  # the victim is up and processing when the kills begin
    first, second = (Worker(ns, tmp_path / name, None, TABLE_STANDBY_REPLICAS="1", INGEST_IN_WORKER="false")
                     for name in ("first", "second"))
    figures: dict[str, Any] = dict.fromkeys(
        ["kills", "kills_at_start_up", "killed_before_ready", "killed_while_applying", "quick_restarts",
         "quick_restarts_without_rebalance", "late_restarts", "takeovers", "served_books_taken_over", "moved_back"], 0)
    with workers(first, second), ThreadPoolExecutor(max_workers=1) as pool:
        ns.replay(str(parts[0]), "--format", "native")
        first.start()
        second.start()
        wait_for(lambda: owned(first) and owned(second) and BUSY in owned(first) | owned(second), 120,
                 "books split between the two workers", every=1)
        victim, survivor = (first, second) if BUSY in owned(first) else (second, first)
        known = owned(victim) | owned(survivor)
        replays: list[Future[Any]] = [pool.submit(ns.replay, str(part), "--format", "native", "--speed",
                                                  f"{span_s(part) / PACE_S:.3f}") for part in parts[1:]]
        after_late = False  # the victim's partitions are the survivor's: they must come back
        quick_from: int | None = None  # the survivor's activations when a quick restart began
        for i, (moment, restart) in enumerate(plan):
            if i:  # the victim was killed: start it again (the first time, it runs already)
                victim.start(wait=False)
            if moment == "start-up":  # a member of the group again, fencing and restoring its partitions
                wait_for(lambda: joined(victim), 60, "the victim joining the group", every=0.1)
                time.sleep(rng.uniform(0.0, 0.6))
                figures["kills_at_start_up"] += 1
                figures["killed_before_ready"] += not ready(victim)
                mine: set[str] = set()
            else:
                victim.wait_ready(120)
                mine = wait_for(lambda: owned(victim), 60, "the victim serving its books", every=0.5)
                if after_late:
                    figures["moved_back"] += 1  # the survivor had them all: they came back
                known |= mine | owned(survivor)
                seen = until_applying(victim, replays)
                time.sleep(rng.uniform(0.0, 0.2))
                figures["killed_while_applying"] += raw_records(victim) > seen
            assert victim.proc is not None
            assert victim.proc.poll() is None, f"the victim died by itself:\n{victim.tail()}"
            if quick_from is not None and activations(survivor) == quick_from:
                figures["quick_restarts_without_rebalance"] += 1  # the survivor never took its partitions
            quick_from = at_kill = activations(survivor)
            victim.kill()
            figures["kills"] += 1
            after_late = False
            if restart == "quick":
                figures["quick_restarts"] += 1
            else:  # down until its session timed out: the survivor takes its partitions and serves every book
                figures["late_restarts"] += 1
                wait_for(functools.partial(took_over, survivor, at_kill, known | mine), 120,
                         "the survivor taking over every book", every=0.5)
                figures["takeovers"] += 1
                figures["served_books_taken_over"] += bool(mine)  # seen on both workers' /api/books
                quick_from = None
                after_late = True
            print(f"  kill {i + 1}/{kills} ({moment}, {restart} restart) at {time.monotonic() - began:.0f}s",
                  flush=True)
        victim.start()
        wait_for(lambda: owned(victim), 120, "the victim serving books again", every=0.5)
        figures["moved_back"] += after_late
        if quick_from is not None and activations(survivor) == quick_from:
            figures["quick_restarts_without_rebalance"] += 1
        for done in replays:
            done.result()
        figures["books_compared"] = books_equal_reference(victim, ref, 240) + books_equal_reference(survivor, ref, 60)
        assert owned(victim)
        assert owned(survivor)
        print("figures:", figures, flush=True)
        figures.update(tops_equal_reference(tops_by_key(ns), ref_tops))
        for w in (victim, survivor):
            assert "Traceback" not in w.log_text(), f"a Traceback in {w.log_path}:\n{w.tail()}"
    figures["seconds"] = round(time.monotonic() - began)
    print("figures:", figures, flush=True)
    assert figures["kills"] == kills
    assert figures["takeovers"] >= 1, figures
    assert figures["moved_back"] >= 1, figures
    assert figures["killed_while_applying"] >= 1, figures
    assert figures["reference_tops_not_published"] == 0, (
        f"book.top is at-least-once, but {figures['reference_tops_not_published']} of the reference's tops were never "
        f"published: {figures}")
    return figures
