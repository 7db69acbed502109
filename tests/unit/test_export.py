"""Parquet datasets (app.export): every record the worker publishes for the shared captures, and the
risk engine's, becomes rows with the topic's typed schema; the files read back with pyarrow,
polars and pandas, row for row, in Hive partitions, and never appear half-written."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from app.capture.formats import Record, read
from app.errors import BookstreamError
from app.export import KAFKA_COLUMNS, DatasetWriter, Row, _raw_rows, _record_rows, schema_columns, spec_for
from app.venues.base import Kind
from app.wire import V2_HEADERS, RawFrame, conn_event, encode_frame
from tests.helpers import publish
from tests.risk_reference import copies_instruments
from tests.unit.test_market import CAPTURES, paths
from tests.unit.test_risk import _market, _run


def _write(tmp: Path, topic: str, records: list[tuple[int, int, bytes | None, bytes]], rows_per_file: int = 10**6,
           ) -> tuple[DatasetWriter, list[Row]]:
    """Records (partition, offset, key, value) of ``topic`` through the export's rows into a dataset."""
    columns = schema_columns(topic)
    writer = DatasetWriter(tmp, topic, columns, rows_per_file)
    rows = []
    for partition, offset, key, value in records:
        for row in _record_rows(topic, spec_for(topic), columns, partition, offset, key, value):
            writer.add(row, partition, offset)
            rows.append(row)
    writer.close()
    return writer, rows


@pytest.fixture(scope="module")
def published(captures: Path) -> dict[str, list[tuple[int, int, bytes | None, bytes]]]:
    by_topic: dict[str, list[tuple[int, int, bytes | None, bytes]]] = collections.defaultdict(list)
    offsets: collections.Counter[tuple[str, int]] = collections.Counter()
    sent = []
    for name, fmt in CAPTURES.items():
        sent += publish(read(paths(captures, name), fmt))
    sent += publish([copies_instruments(2, 1_800_000_000 * 10**9),  # an instrument list: ref.instruments
                     Record(2, "okx", "c9", Kind.CONN, conn_event("refused", "60018: no such channel", feed="trades",
                                                                  channel="trades:BTC-USDT"), symbol="BTC-USDT")])
    for topic, key, body in _run(_market(60)) + _run(_market(30, stale_at=0)):
        sent.append((topic, 0, key.encode() if isinstance(key, str) else key, json.dumps(body).encode()))
    for topic, partition, key, value in sent:
        by_topic[topic].append((partition, offsets[(topic, partition)], key, value))
        offsets[(topic, partition)] += 1
    return by_topic


@pytest.mark.captures
@pytest.mark.parametrize("topic", ["book.top", "trades", "ticker", "options.chain", "ref.instruments", "book.depth",
                                   "book.status", "feed.status", "risk.exposure", "risk.scenarios", "risk.hedge"])
def test_every_topic_exports_typed_rows_that_read_back_with_pyarrow_polars_and_pandas(
        published: dict[str, list[tuple[int, int, bytes | None, bytes]]], tmp_path: Path, topic: str) -> None:
    import pandas as pd
    import polars as pl

    records = published[topic]
    assert records, topic
    writer, rows = _write(tmp_path, topic, records)
    if topic == "options.chain":  # one row per option per snapshot
        want = sum(1 for _, _, _, v in records for s in json.loads(v)["strikes"] for side in ("call", "put") if s[side])
    else:
        want = len(records)
    assert len(rows) == writer.rows == want
    assert not list(tmp_path.rglob("*.tmp"))
    assert not list(tmp_path.rglob(".*"))
    table = ds.dataset(tmp_path / topic, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == want
    assert table.schema.field("kafka_offset").type == pa.int64()
    for column in schema_columns(topic):
        expected = {"ns": pa.timestamp("ns", tz="UTC"), "dec": pa.string(), "dec_f64": pa.float64()}.get(column.kind)
        if expected is not None:
            assert table.schema.field(column.name).type == expected, column
    # row for row: each row's own coordinates give back its record, and its cells are the record's values
    by_coord = {(p, o): json.loads(v) for p, o, _, v in records}
    got = table.to_pylist()
    for row in got[:: max(1, len(got) // 300)]:
        record = by_coord[(row["kafka_partition"], row["kafka_offset"])]
        for column in schema_columns(topic)[len(KAFKA_COLUMNS):]:
            if topic == "options.chain" and column.path[0] in ("option", "strike", "option_type", "chain"):
                continue
            if column.name == "venue":  # the partition folder's key
                continue
            value = record
            for part in column.path:
                value = value.get(part) if isinstance(value, dict) else None
            cell = row[column.name]
            if column.kind == "dec":
                assert cell == value, (column, cell, value)
            elif column.kind == "dec_f64":
                assert cell == (float(value) if value is not None else None), column
            elif column.kind == "ns":
                assert (cell.value if cell is not None else None) == (value or None), column  # type: ignore[union-attr]
            elif column.kind in ("int", "str", "bool", "float"):
                assert cell == value, (column, cell, value)
    frame = pl.scan_parquet(tmp_path / topic / "**" / "*.parquet", hive_partitioning=True).collect()
    assert frame.height == want
    assert {"venue", "date"} <= set(frame.columns)
    assert pd.read_parquet(tmp_path / topic).shape[0] == want


@pytest.mark.captures
def test_options_chain_folders_are_by_venue_then_chain_then_date(
        published: dict[str, list[tuple[int, int, bytes | None, bytes]]], tmp_path: Path) -> None:
    _write(tmp_path, "options.chain", published["options.chain"])
    folders = {p.parent.relative_to(tmp_path / "options.chain").as_posix() for p in tmp_path.rglob("*.parquet")}
    assert folders
    for folder in folders:
        venue, chain, date = folder.split("/")
        assert (venue[:6], chain[:6], date[:5]) == ("venue=", "chain=", "date="), folder


def test_raw_records_export_their_frames_verbatim_with_receive_time_and_source(tmp_path: Path) -> None:
    frames = [RawFrame("okx:BTC-USDT", 1_723_161_255_030_314_667 + i, Kind.WS, "okx#1", b'{"n":%d, "x": "\\u00e9"}' % i)
              for i in range(5)]
    frames.append(RawFrame("okx:BTC-USDT", 1_723_161_256_000_000_000, Kind.WS, "okx#1", b"\xff\xfe not text"))
    value = b"\n".join(encode_frame(f) for f in frames)
    columns = schema_columns("raw.okx")
    writer = DatasetWriter(tmp_path, "raw.okx", columns)
    for row in _raw_rows("raw.okx", 2, 77, b"okx:BTC-USDT", value, V2_HEADERS):
        writer.add(row, 2, 77)
    writer.close()
    table = ds.dataset(tmp_path / "raw.okx", format="parquet", partitioning="hive").to_table().to_pylist()
    coordinates = [(r["kafka_partition"], r["kafka_offset"], r["frame_index"]) for r in table]
    assert coordinates == [(2, 77, i) for i in range(6)]
    assert [r["frame"] for r in table[:5]] == [f.data.decode() for f in frames[:5]]
    assert table[5]["frame"] is None
    assert table[5]["frame_b64"] == "//4gbm90IHRleHQ="
    assert table[0]["ts_recv"].value == frames[0].ts
    assert (table[0]["venue"], table[0]["instrument"], table[0]["date"]) == ("okx", "BTC-USDT", "2024-08-08")


def test_files_roll_by_rows_and_are_named_after_their_offsets(tmp_path: Path) -> None:
    from app.records import BookTop, encode

    records: list[tuple[int, int, bytes | None, bytes]] = []
    for i in range(25):
        top = BookTop(venue="okx", instrument="BTC-USDT", bid_px="1.5", bid_sz="2", ask_px="1.6", ask_sz="3", seq=i,
                      epoch=1, ts_exchange=0, ts_recv=1_723_161_255_000_000_000 + i, ts_published=1)
        records.append((1, 100 + i, b"okx:BTC-USDT", encode(top)))
    writer, _ = _write(tmp_path, "book.top", records, rows_per_file=10)
    names = sorted(p.name for p in writer.files)
    assert names == ["p1-00000000000000000100-00000000000000000109.parquet",
                     "p1-00000000000000000110-00000000000000000119.parquet",
                     "p1-00000000000000000120-00000000000000000124.parquet"]
    table: Any = ds.dataset(tmp_path / "book.top", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 25
    assert table.column("ts_exchange").null_count == 25  # 0: the venue gave none


def _tops(n: int, first: int = 0) -> list[tuple[int, int, bytes | None, bytes]]:
    from app.records import BookTop, encode

    return [(0, first + i, b"okx:BTC-USDT", encode(BookTop(
        venue="okx", instrument="BTC-USDT", bid_px="1.5", bid_sz="2", ask_px="1.6", ask_sz="3", seq=first + i, epoch=1,
        ts_exchange=0, ts_recv=1_723_161_255_000_000_000 + first + i, ts_published=1))) for i in range(n)]


def _follow_writer(tmp: Path) -> DatasetWriter:
    return DatasetWriter(tmp, "book.top", schema_columns("book.top"), 1000, follow=True)


def test_following_commits_files_with_their_position_and_a_crash_between_them_is_undone(tmp_path: Path) -> None:
    args = {"topic": "book.top", "venue": None}
    writer = _follow_writer(tmp_path)
    assert writer.resume(args) == {}
    for p, o, k, v in _tops(10):
        for row in _record_rows("book.top", spec_for("book.top"), schema_columns("book.top"), p, o, k, v):
            writer.add(row, p, o)
    writer.commit(0, 10)
    assert [f.name for f in writer.files] == ["p0-00000000000000000000-00000000000000000009.parquet"]
    # the next commit's file renamed into place, then a crash before its position is written
    crashed = _follow_writer(tmp_path)
    assert crashed.resume(args) == {0: 10}
    for p, o, k, v in _tops(5, first=10):
        for row in _record_rows("book.top", spec_for("book.top"), schema_columns("book.top"), p, o, k, v):
            crashed.add(row, p, o)
    crashed._write(next(iter(crashed.buffers.values())), 10, 14)
    (tmp_path / "book.top" / "venue=okx" / "date=2024-08-08" / ".p0-x.parquet.1.tmp").write_bytes(b"half")
    restarted = _follow_writer(tmp_path)
    assert restarted.resume(args) == {0: 10}  # read again from 10: the orphan file is gone, nothing twice
    files = sorted(p.name for p in tmp_path.rglob("*.parquet"))
    assert files == ["p0-00000000000000000000-00000000000000000009.parquet"]
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(BookstreamError, match="other arguments"):
        _follow_writer(tmp_path).resume({**args, "venue": "okx"})


@pytest.mark.captures
def test_book_snapshots_at_each_instant_are_the_books_after_every_frame_received_by_then(captures: Path,
                                                                                        tmp_path: Path) -> None:
    from app.export import SNAPSHOT_COLUMNS, Snapshotter, parse_every
    from app.processor import Processor
    from app.router import Router
    from app.wire import encode_frame

    router = Router()
    frames = [raw for rec in read(paths(captures, "OKX.ws.1.0"), "cryptofeed")
              for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol)]
    every = parse_every("250ms")
    assert (every, parse_every("1s"), parse_every("5m")) == (250_000_000, 10**9, 300 * 10**9)
    snap = Snapshotter("raw.okx", 0, every, 5, lambda key: True)
    writer = DatasetWriter(tmp_path, "book.snapshots", SNAPSHOT_COLUMNS)
    rows = []
    for offset, frame in enumerate(frames):
        for row in snap.frames(offset, frame.key.encode(), encode_frame(frame), V2_HEADERS):
            rows.append(row)
            writer.add(row, 0, offset)
    writer.close()
    assert rows
    instants = sorted({r.ts for r in rows})
    assert all(b - a == every for a, b in zip(instants, instants[1:], strict=False))  # a regular grid
    for at in instants[:: max(1, len(instants) // 7)]:
        ref = Processor()
        for frame in frames:
            if frame.ts > at:
                break
            ref.handle(frame)
        for row in (r for r in rows if r.ts == at):
            inst = ref.instruments[row.cells["key"]]
            bids, asks = inst.book.levels(5)
            assert (row.cells["seq"], row.cells["bid_px"], row.cells["ask_sz"]) == (
                inst.seq, [p for p, _ in bids], [q for _, q in asks]), (at, row.cells["key"])
    table = ds.dataset(tmp_path / "book.snapshots", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(rows)
    assert table.schema.field("bid_px_f64").type == pa.list_(pa.float64())
    with pytest.raises(BookstreamError, match="expected an interval"):
        parse_every("soon")
