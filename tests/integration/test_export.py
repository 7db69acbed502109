"""`faust -A app export` against the real broker: what the worker publishes for a capture, and
the raw topics a replay writes, exported and read back with pyarrow and polars, row for row."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from app.capture.formats import read
from tests.helpers import Namespace, consume, frames, produce_records, publish
from tests.unit.test_market import paths

pytestmark = pytest.mark.captures


def test_export_of_a_topic_and_of_a_raw_topic_reads_back_row_for_row(ns: Namespace, captures: Path,
                                                                      tmp_path: Path) -> None:
    import polars as pl

    sent = publish(read(paths(captures, "DERIBIT.ws.1.0"), "cryptofeed"))
    sent += publish(read(paths(captures, "OKX.ws.1.0"), "cryptofeed"))
    produce_records(ns, sent)
    out = tmp_path / "ds"
    proc = ns.faust("export", "book.top", "--out", str(out), timeout=120)
    assert "export: book.top:" in proc.stderr, proc.stderr
    tops = [json.loads(v) for t, _, _, v in sent if t == "book.top"]
    table = ds.dataset(out / "book.top", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(tops)
    in_kafka = {(m.partition, m.offset): json.loads(m.value) for m in consume(ns.bootstrap, ns.topic("book.top"))}
    for row in table.to_pylist():
        record = in_kafka[(row["kafka_partition"], row["kafka_offset"])]
        assert (row["bid_px"], row["ask_sz"], row["seq"], row["ts_recv"].value) == (
            record["bid_px"], record["ask_sz"], record["seq"], record["ts_recv"])
        assert row["venue"] == record["venue"]
    frame = pl.scan_parquet(out / "book.top" / "**" / "*.parquet", hive_partitioning=True).collect()
    assert sorted(frame["venue"].unique().to_list()) == ["deribit", "okx"]

    # a venue and a time range: exactly the rows in it
    times = sorted(t["ts_recv"] for t in tops if t["venue"] == "okx")
    lo, hi = times[len(times) // 4], times[3 * len(times) // 4]
    part = tmp_path / "part"
    ns.faust("export", "book.top", "--out", str(part), "--venue", "okx", "--from", str(lo), "--to", str(hi))
    got = ds.dataset(part / "book.top", format="parquet", partitioning="hive").to_table()
    assert got.num_rows == sum(1 for t in tops if t["venue"] == "okx" and lo <= t["ts_recv"] <= hi)

    # a raw topic: every frame, verbatim
    ns.replay(str(paths(captures, "OKX.ws.1.0")[0]), "--format", "cryptofeed")
    ns.faust("export", "raw.okx", "--out", str(out))
    raw = ds.dataset(out / "raw.okx", format="parquet", partitioning="hive").to_table()
    written = frames(consume(ns.bootstrap, ns.topic("raw.okx"), idle_s=1))
    assert raw.num_rows == len(written)
    assert sorted((r["frame"].encode(), r["ts_recv"].value) for r in raw.to_pylist()) == sorted(
        (f.data, f.ts) for f in written)
    assert not list(out.rglob("*.tmp"))

    bad = ns.faust("export", "no.such", "--out", str(out), check=False)
    assert bad.returncode != 0
    assert "unknown topic 'no.such'" in bad.stderr


def test_follow_keeps_a_dataset_current_through_sigkills_without_a_repeat_or_a_gap(ns: Namespace,
                                                                                   tmp_path: Path) -> None:
    """A file and its Kafka position are committed together: SIGKILLed at random moments and started
    again, `export --follow` ends with every record of the topic exactly once."""
    import random
    import signal
    import subprocess
    import threading

    from app.records import BookTop, encode
    from tests.helpers import FAUST, ROOT, wait_for

    total = 6000
    records = [("book.top", i % 4, b"okx:BTC-USDT", encode(BookTop(
        venue="okx", instrument="BTC-USDT", bid_px=f"{60000 + i}.5", bid_sz="2", ask_px=f"{60001 + i}", ask_sz="3",
        seq=i, epoch=1, ts_exchange=0, ts_recv=1_723_161_255_000_000_000 + i * 10**6, ts_published=1)))
        for i in range(total)]
    produce_records(ns, records[:500])  # the topic exists before the export starts
    out = tmp_path / "follow"
    log = (tmp_path / "export.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*FAUST, "export", "book.top", "--out", str(out), "--follow", "--roll-s", "0.3",
                                 "--roll-rows", "400"], env=ns.env(), cwd=ROOT, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)

    def feed() -> None:
        for at in range(500, total, 250):
            produce_records(ns, records[at:at + 250])
            time.sleep(0.4)

    proc = start()
    feeder = threading.Thread(target=feed)
    feeder.start()
    rng = random.Random(7)
    kills = 0
    while feeder.is_alive() or kills < 3:
        time.sleep(rng.uniform(1.5, 3.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        last_start = len((tmp_path / "export.log").read_text())
        proc = start()
    feeder.join()

    def committed() -> bool:
        marks = (out / "book.top" / "_positions").glob("p*.json")
        return sum(json.loads(p.read_text())["next_offset"] for p in marks) == total

    try:
        wait_for(committed, 90, "every record committed")
        # the last start is running (its Ctrl-C handler in place), not still starting
        wait_for(lambda: "export: following" in (tmp_path / "export.log").read_text()[last_start:], 60,
                 "the last export process following")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, (tmp_path / "export.log").read_text()[-3000:]
    table = ds.dataset(out / "book.top", format="parquet", partitioning="hive").to_table()
    coordinates = sorted(zip(table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist(),
                             strict=True))
    assert len(coordinates) == len(set(coordinates)), "a row exported twice"
    assert sorted(table.column("seq").to_pylist()) == list(range(total)), "a row missing"
    assert kills >= 3
