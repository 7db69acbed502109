"""`faust -A app replay` as a user runs it: errors, summaries, and a gap through Kafka."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from app.capture.formats import read, write_native
from app.venues.base import Kind
from app.wire import decode_record
from tests.helpers import FAUST, ROOT, Namespace, Worker, consume, values, wait_for, workers


def test_unknown_format_is_a_clear_error(ns: Namespace, tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text("{}\n")
    proc = ns.replay(str(f), "--format", "pcap", check=False)
    assert proc.returncode != 0
    assert "unknown capture format 'pcap'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_is_a_clear_error(ns: Namespace, tmp_path: Path) -> None:
    proc = ns.replay(str(tmp_path / "nope.gz"), "--format", "hftbacktest", check=False)
    assert proc.returncode != 0
    assert "no such file" in proc.stderr


def test_truncated_capture_fails_before_producing_anything(ns: Namespace, tmp_path: Path) -> None:
    lines = b"".join(
        b'%d {"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":%d,"u":%d,'
        b'"pu":%d,"b":[["1.0","1"]],"a":[]}}\n' % (1_700_000_000_000_000_000 + i, i, i, i - 1)
        for i in range(1, 3000)
    )
    path = tmp_path / "usdm" / "btcusdt_20240808.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(lines)[:-200])  # cut the end off
    proc = ns.replay(str(path), "--format", "hftbacktest", check=False)
    assert proc.returncode != 0
    assert "truncated" in proc.stderr
    assert consume(ns.bootstrap, ns.topic("raw.binance-usdm"), idle_s=1) == []


def test_native_capture_replays_with_a_summary(ns: Namespace, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"ts": 1, "venue": "okx", "conn": "a", "kind": "ws", "frame": "{\\"event\\":\\"subscribe\\"}"}\n')
    proc = ns.replay(str(path), "--format", "native")
    assert "okx" in proc.stderr
    assert "1 frames produced" in proc.stderr
    assert "1 frames in 1 records" in proc.stderr
    (rec,) = consume(ns.bootstrap, ns.topic("raw.okx"), stop=lambda rs: len(rs) >= 1, timeout=30)
    assert rec.key == b"okx:"
    headers = dict(rec.headers)
    assert headers["v"] == b"2"  # raw record format version 2: JSON Lines of frames
    assert headers["writer"].startswith(b"replay/")  # and a link of its writer's hash chain (app.audit)
    assert (headers["wseq"], len(headers["chain"])) == (b"0", 64)
    assert json.loads(rec.value) == {"key": "okx:", "ts": 1, "kind": "ws", "conn": "a",
                                     "frame": '{"event":"subscribe"}'}
    (frame,) = decode_record(rec.key, rec.value, rec.headers)
    assert (frame.key, frame.ts, frame.kind, frame.conn, frame.data) == ("okx:", 1, Kind.WS, "a",
                                                                          b'{"event":"subscribe"}')


def test_tail_prints_the_frames_of_raw_records_one_per_line(ns: Namespace, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"ts": i, "venue": "okx", "conn": "a", "kind": "ws", "symbol": "BTC-USDT",
                                        "frame": f'{{"n":{i}}}'}) + "\n" for i in range(3)))
    ns.replay(str(path), "--format", "native")
    proc = subprocess.run([*FAUST, "tail", "raw.okx", "--from-beginning", "--count", "3"], env=ns.env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(x["key"], x["ts"], x["kind"], x["frame"]) for x in lines] == [
        ("okx:BTC-USDT", i, "ws", f'{{"n":{i}}}') for i in range(3)]


@pytest.mark.captures
def test_a_deleted_frame_makes_that_instrument_stale_and_requests_a_resync(ns: Namespace, captures: Path,
                                                                         tmp_path: Path) -> None:
    records = list(read([captures / "cryptofeed" / "DERIBIT.ws.1.0"], "cryptofeed"))
    changes = [i for i, r in enumerate(records) if b'"type":"change"' in r.frame]
    victim = records[changes[5]]
    capture = tmp_path / "cut.jsonl"
    capture.write_bytes(b"".join(write_native(r) for i, r in enumerate(records) if i != changes[5]))
    name = victim.frame.split(b'"instrument_name":"')[1].split(b'"')[0].decode()

    worker = Worker(ns, tmp_path / "data")
    with workers(worker):
        worker.start()
        ns.replay(str(capture), "--format", "native")
        resync = consume(ns.bootstrap, ns.topic("control.resync"), stop=lambda rs: len(rs) >= 1, timeout=60)
        wait_for(lambda: worker.get(f"/api/books/deribit/{name}")[1].get("state") == "stale", 30, "stale book")
        books = worker.get("/api/books")[1]["books"]
    assert [(r.key, values([r])[0]["reason"][:3]) for r in resync] == [(f"deribit:{name}".encode(), "gap")]
    states = {b["instrument"]: b["state"] for b in books}
    assert states.pop(name) == "stale"
    assert set(states.values()) == {"synced"}
    assert len(states) == 9
    stale_at = next(s["seq"] for s in values(consume(ns.bootstrap, ns.topic("book.status"), idle_s=2))
                    if s["instrument"] == name and s["state"] == "stale")
    after = [t for t in values(consume(ns.bootstrap, ns.topic("book.top"), idle_s=2))
             if t["instrument"] == name and t["seq"] > stale_at]
    assert after == []  # nothing published for the stale book


def test_bad_frames_land_in_the_dead_letter_topic_with_their_source(ns: Namespace, tmp_path: Path) -> None:
    good = ('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.BTC-PERPETUAL.100ms","data":{"type":'
            '"snapshot","timestamp":1,"instrument_name":"BTC-PERPETUAL","change_id":1,"bids":[["new",100,1]],'
            '"asks":[["new",101,1]]}}}')
    bad_levels = good.replace('"snapshot"', '"change"').replace('"change_id":1', '"change_id":2,"prev_change_id":1')
    bad_levels = bad_levels.replace('["new",100,1]', '["new","abc",1]')
    lines = [
        {"ts": 1, "venue": "deribit", "conn": "c", "kind": "ws", "frame": good},
        {"ts": 2, "venue": "deribit", "conn": "c", "kind": "ws", "symbol": "BTC-PERPETUAL",
         "frame": '{"jsonrpc": "2.0", "meth'},
        {"ts": 3, "venue": "deribit", "conn": "c", "kind": "ws", "frame": bad_levels},
    ]
    capture = tmp_path / "bad.jsonl"
    capture.write_text("".join(json.dumps(line) + "\n" for line in lines))
    worker = Worker(ns, tmp_path / "data")
    with workers(worker):
        worker.start()
        ns.replay(str(capture), "--format", "native")
        dead = values(consume(ns.bootstrap, ns.topic("raw.deadletter"), stop=lambda rs: len(rs) >= 2, timeout=60))
        counters = wait_for(lambda: worker.get("/metrics/counters")[1].get("deadletters") == 2 and
                            worker.get("/metrics/counters")[1], 30, "dead letter counter")
        state = worker.get("/api/books/deribit/BTC-PERPETUAL")[1]
    assert [d["reason"] for d in dead] == ["bad-json", "bad-number"]
    # the three frames travel in one raw record; each bad one is a dead letter of its own, with its
    # index in the record, and the good one before them applied
    assert len({(d["partition"], d["offset"]) for d in dead}) == 1
    assert [d["index"] for d in dead] == [1, 2]
    for d in dead:
        assert (d["venue"], d["instrument"], d["topic"]) == ("deribit", "BTC-PERPETUAL", ns.topic("raw.deribit"))
        assert isinstance(d["partition"], int)
        assert isinstance(d["offset"], int)
        assert d["frame"]
    assert counters["deadletters.bad-json"] == 1
    assert state["state"] == "stale"  # a lost frame may have been a delta: never trust the book
    assert "Traceback" not in worker.log_text()
