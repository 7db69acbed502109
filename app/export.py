"""Parquet datasets of any topic and time range (``faust -A app export``; README "Audit and backtests").

The dataset is Hive-partitioned, ``<out>/<topic>/venue=<venue>/date=<YYYY-MM-DD>/`` (``options.chain``
also ``chain=<chain>/`` between the two: one expiry's surface per folder), zstd-compressed, with a
typed schema per topic derived from the topic's one record definition (``app.records``):

* integer nanoseconds since the epoch (the ``Ns`` fields: ``ts_recv``, ``ts_exchange``, ``expiry_ns``
  …) are ``timestamp[ns, UTC]``;
* prices and sizes (the ``Dec`` fields) are the venue's **exact text** with a ``float64`` column
  beside it (``price`` and ``price_f64``): a decimal column needs one precision and scale for
  every row, and instruments quote from 1e-8 (small coins) to 1e5 with their own number of
  digits; the text keeps the venue's digits exactly (the audit's need), the float is what
  pandas, polars and DuckDB compute with (the research need), and ``CAST(price AS DECIMAL(p, s))``
  gives a decimal where one is wanted;
* nested records are flattened with their field's name as prefix (``source_offset``,
  ``ours_delta``); lists and free-form JSON are JSON text;
* the partition folders' keys (``venue``, ``date``, ``chain``) are not columns of the files, as
  Hive has it: every reader (pyarrow, polars, DuckDB, pandas) adds them back from the path;
* every row says where it came from: ``kafka_topic``, ``kafka_partition``, ``kafka_offset`` of the
  record it was read from (raw topics also ``frame_index``), and the raw source
  (``source_topic``, ``source_partition``, ``source_offset``, ``source_index``) where the record
  names it.

Raw topics export their frames verbatim (``frame``, UTF-8 text; ``frame_b64`` for a frame that is
not text) with their receive time. ``options.chain`` exports one row per option per snapshot.

Files are named after what they hold, ``p<partition>-<first offset>-<last offset>.parquet``, like
Kafka Connect's object-store sinks, written under a temporary name and renamed only once complete:
a crash leaves no unreadable file, and running the same export again writes the same files.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson

from app.errors import BookstreamError
from app.records import OPTIONS_CHAIN, TOPICS, TopicSpec
from app.wire import BadFrame, RawFrame, decode_record

log = logging.getLogger(__name__)

#: Rows a file holds at most (a new file starts past it).
ROWS_PER_FILE = 500_000

_NS_DOC = "nanoseconds since the Unix epoch"
_DEC_DOC = "a decimal number as text"


@dataclass(frozen=True, slots=True)
class Column:
    """One output column: its name, Arrow type name and where its value is in the record's dict."""

    name: str
    kind: str  # ns | dec | dec_f64 | int | float | bool | str | json
    path: tuple[str, ...]


def _docs(hint: Any) -> list[str]:
    """Every description an annotation carries, however deep (``Annotated[Ns, Meta(…)] | None``)."""
    import typing

    out: list[str] = []
    if typing.get_origin(hint) is typing.Annotated:
        out += [str(m.description) for m in hint.__metadata__ if getattr(m, "description", None)]
    for arg in typing.get_args(hint):
        out += _docs(arg)
    return out


def _unwrap(info: Any) -> Any:
    """The type under Metadata and Optional."""
    while True:
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
            continue
        if isinstance(info, msgspec.inspect.UnionType):
            rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(rest) == 1:
                info = rest[0]
                continue
        return info


def _ns_named(name: str) -> bool:
    """bookstream's own convention: ``ts``, ``ts_*``, ``*_ns`` and ``valid_from`` are ns since the epoch."""
    return name == "ts" or name.startswith("ts_") or name.endswith("_ns") or name in ("valid_from", "valid_to")


def columns_of(struct: type, prefix: tuple[str, ...] = ()) -> list[Column]:
    """The flat columns of a record definition (nested records flattened, prefixed by their field)."""
    import typing

    info = msgspec.inspect.type_info(struct)
    hints = typing.get_type_hints(struct, include_extras=True)
    out: list[Column] = []
    for f in info.fields:  # type: ignore[attr-defined]
        inner = _unwrap(f.type)
        docs = _docs(hints.get(f.name))
        path = (*prefix, f.name)
        name = "_".join(path)
        if isinstance(inner, msgspec.inspect.StructType):
            out += columns_of(inner.cls, path)
        elif isinstance(inner, msgspec.inspect.IntType):
            out.append(Column(name, "ns" if _NS_DOC in docs or _ns_named(f.name) else "int", path))
        elif isinstance(inner, msgspec.inspect.StrType):
            if any(d.startswith(_DEC_DOC) for d in docs):
                out += [Column(name, "dec", path), Column(f"{name}_f64", "dec_f64", path)]
            else:
                out.append(Column(name, "str", path))
        elif isinstance(inner, msgspec.inspect.FloatType):
            out.append(Column(name, "float", path))
        elif isinstance(inner, msgspec.inspect.BoolType):
            out.append(Column(name, "bool", path))
        elif isinstance(inner, msgspec.inspect.LiteralType) and all(isinstance(v, str) for v in inner.values):
            out.append(Column(name, "str", path))
        else:  # lists, dicts, unions of several types, free-form JSON
            out.append(Column(name, "json", path))
    return out


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    return {"ns": pa.timestamp("ns", tz="UTC"), "int": pa.int64(), "dec": pa.string(), "dec_f64": pa.float64(),
            "float": pa.float64(), "bool": pa.bool_(), "str": pa.string(), "json": pa.string(),
            "declist": pa.list_(pa.string()), "f64list": pa.list_(pa.float64())}[kind]


def _get(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _cell(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "dec_f64":
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    if kind == "json":
        return orjson.dumps(value).decode()
    if kind == "ns":
        return int(value) or None  # 0: "the venue gives none"
    if kind == "int":
        return int(value)
    return value


#: Columns every row has, first: where it was read from.
KAFKA_COLUMNS = [Column("kafka_topic", "str", ()), Column("kafka_partition", "int", ()),
                 Column("kafka_offset", "int", ())]
RAW_COLUMNS = [Column("frame_index", "int", ()), Column("key", "str", ()), Column("venue", "str", ()),
               Column("instrument", "str", ()), Column("ts_recv", "ns", ()), Column("kind", "str", ()),
               Column("conn", "str", ()), Column("frame", "str", ()), Column("frame_b64", "str", ())]
#: options.chain: one row per option; the chain's own fields, then the strike's, then the option's.
_CHAIN_SKIP = {"strikes"}


def schema_columns(topic: str) -> list[Column]:
    """The columns of ``topic``'s dataset (``topic`` without TOPIC_PREFIX)."""
    if topic.startswith("raw.") and topic != "raw.deadletter":
        return KAFKA_COLUMNS + RAW_COLUMNS
    spec = spec_for(topic)
    if topic == OPTIONS_CHAIN:
        from app.records.market import ChainOption

        chain = [c for c in columns_of(spec.type) if c.path[0] not in _CHAIN_SKIP]
        option = [Column(f"option_{c.name}", c.kind, ("option", *c.path)) for c in columns_of(ChainOption)]
        return [*KAFKA_COLUMNS, *chain, Column("strike", "dec", ("strike",)), Column("strike_f64", "dec_f64",
                ("strike",)), Column("option_type", "str", ("option_type",)), *option]
    return KAFKA_COLUMNS + columns_of(_single(spec))


def _single(spec: TopicSpec) -> type:
    """The record type of a topic (a union of record kinds, like risk.hedge's: the first kind's fields
    and the others' as well, by name)."""
    if isinstance(spec.type, type):
        return spec.type
    info = msgspec.inspect.type_info(spec.type)
    kinds = [t.cls for t in getattr(info, "types", ()) if isinstance(t, msgspec.inspect.StructType)]
    if not kinds:
        raise BookstreamError(f"{spec.topic}: no record definition to export")
    return _Merged.of(tuple(kinds))


class _Merged:
    """The union of several record kinds' fields (for a topic whose records are tagged kinds)."""

    _cache: dict[tuple[type, ...], type] = {}

    @classmethod
    def of(cls, kinds: tuple[type, ...]) -> type:
        merged = cls._cache.get(kinds)
        if merged is None:
            fields: dict[str, Any] = {}
            for kind in kinds:
                for f in msgspec.inspect.type_info(kind).fields:  # type: ignore[attr-defined]
                    fields.setdefault(f.name, (f.name, _annotation(kind, f.name) | None, None))
            tag = getattr(kinds[0], "__struct_config__", None)
            tag_field = getattr(tag, "tag_field", None)
            extra = [(tag_field, str | None, None)] if tag_field and tag_field not in fields else []
            merged = msgspec.defstruct("Merged", [*extra, *fields.values()], kw_only=True)
            cls._cache[kinds] = merged
        return merged


def _annotation(kind: type, name: str) -> Any:
    import typing

    return typing.get_type_hints(kind, include_extras=True)[name]


def spec_for(topic: str) -> TopicSpec:
    if topic.startswith("raw.") and topic != "raw.deadletter":
        return TOPICS["raw.<venue>"]
    spec = TOPICS.get(topic)
    if spec is None:
        names = ", ".join(sorted(t for t in TOPICS if t != "raw.<venue>"))
        raise BookstreamError(f"unknown topic {topic!r}: expected raw.<venue> or one of {names}")
    return spec


# -- rows -------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Row:
    """One output row: its cells by column name, its time (ns) and where it goes (partition folders)."""

    cells: dict[str, Any]
    ts: int
    venue: str
    instrument: str
    chain: str | None = None


def _raw_rows(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
              headers: Any) -> Iterator[Row]:
    for index, item in enumerate(decode_record(key, value, headers)):
        if isinstance(item, BadFrame):
            continue  # unreadable lines are raw.deadletter's business; the frames around them are kept
        assert isinstance(item, RawFrame)
        venue, _, symbol = item.key.partition(":")
        try:
            text, b64 = item.data.decode("utf-8"), None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(item.data).decode()
        cells = {"kafka_topic": topic, "kafka_partition": partition, "kafka_offset": offset, "frame_index": index,
                 "key": item.key, "venue": venue, "instrument": symbol, "ts_recv": item.ts, "kind": item.kind.value,
                 "conn": item.conn, "frame": text, "frame_b64": b64}
        yield Row(cells, item.ts, venue, symbol)


def _time_of(record: dict[str, Any]) -> int:
    for name in ("ts_recv", "ts", "valid_from", "ts_published"):
        value = record.get(name)
        if isinstance(value, int) and value:
            return value
    return 0


def _venue_of(record: dict[str, Any], key: bytes | None) -> tuple[str, str]:
    venue = record.get("venue")
    instrument = record.get("instrument")
    text = record.get("key") or (key.decode("utf-8", "replace") if key else "")
    if isinstance(text, str) and ":" in text:
        v, _, s = text.partition(":")
        venue = venue or v
        instrument = instrument or s.split("|")[0]
    return str(venue or "none"), str(instrument or "")


def _record_rows(topic: str, spec: TopicSpec, columns: list[Column], partition: int, offset: int,
                 key: bytes | None, value: bytes | None) -> Iterator[Row]:
    if not value:
        return  # a tombstone of a compacted topic: nothing to export
    record = orjson.loads(value)
    if not isinstance(record, dict):
        return
    ts = _time_of(record)
    venue, instrument = _venue_of(record, key)
    base = {"kafka_topic": topic, "kafka_partition": partition, "kafka_offset": offset}
    if spec.topic == OPTIONS_CHAIN:
        for strike in record.get("strikes") or []:
            for side in ("call", "put"):
                option = strike.get(side)
                if not option:
                    continue
                flat = {**record, "strike": strike.get("strike"), "option_type": side, "option": option}
                cells = dict(base)
                for c in columns[len(KAFKA_COLUMNS):]:
                    cells[c.name] = _cell(c.kind, _get(flat, c.path))
                yield Row(cells, ts, venue, instrument, chain=str(record.get("chain") or ""))
        return
    cells = dict(base)
    for c in columns[len(KAFKA_COLUMNS):]:
        cells[c.name] = _cell(c.kind, _get(record, c.path))
    yield Row(cells, ts, venue, instrument)


# -- book snapshots ---------------------------------------------------------------------------------

#: The dataset ``export raw.<venue> --book-snapshots EVERY`` writes (a folder beside the topics').
BOOK_SNAPSHOTS = "book.snapshots"
SNAPSHOT_COLUMNS = [*KAFKA_COLUMNS, Column("key", "str", ()), Column("venue", "str", ()),
                    Column("instrument", "str", ()), Column("ts", "ns", ()), Column("state", "str", ()),
                    Column("seq", "int", ()), Column("epoch", "int", ()), Column("ts_exchange", "ns", ()),
                    Column("ts_recv", "ns", ()), Column("bid_px", "declist", ()), Column("bid_sz", "declist", ()),
                    Column("ask_px", "declist", ()), Column("ask_sz", "declist", ()),
                    Column("bid_px_f64", "f64list", ()), Column("bid_sz_f64", "f64list", ()),
                    Column("ask_px_f64", "f64list", ()), Column("ask_sz_f64", "f64list", ())]


def parse_every(text: str) -> int:
    """``--book-snapshots``: 250ms, 1s, 5m, 1h, or ns → ns."""
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    for unit in sorted(units, key=len, reverse=True):
        number = text.removesuffix(unit)
        if number != text and number.replace(".", "", 1).isdigit():
            value = int(float(number) * units[unit])
            break
    else:
        value = int(text) if text.isdigit() else 0
    if value <= 0:
        raise BookstreamError(f"--book-snapshots {text!r}: expected an interval such as 250ms, 1s, 5m or ns")
    return value


class Snapshotter:
    """Top-``depth`` snapshots of every book of one raw partition at each multiple of ``every`` ns of
    receive time: the book after every frame received at or before that instant (as ``book-at``),
    from the same processor the worker runs, over the partition's frames in order."""

    def __init__(self, topic: str, partition: int, every: int, depth: int, keep: Callable[[str], bool]) -> None:
        from app.processor import Processor

        self.topic, self.partition, self.every, self.depth, self.keep = topic, partition, every, depth, keep
        self.processor = Processor()
        self.next_at: int | None = None  # the next instant to snapshot

    def frames(self, offset: int, key: bytes | None, value: bytes | None, headers: Any) -> Iterator[Row]:
        for item in decode_record(key, value, headers):
            if not isinstance(item, RawFrame):
                continue
            if self.next_at is None:
                self.next_at = (item.ts // self.every + 1) * self.every
            while item.ts > self.next_at:  # every instant before this frame: the books as they are
                yield from self._snapshot(offset, self.next_at)
                self.next_at += self.every
            if self.keep(item.key):
                self.processor.handle(item)

    def _snapshot(self, offset: int, at: int) -> Iterator[Row]:
        for key, inst in self.processor.instruments.items():
            if not inst.ts_recv:
                continue  # nothing applied yet
            venue, _, symbol = key.partition(":")
            bids, asks = inst.book.levels(self.depth)
            cells = {"kafka_topic": self.topic, "kafka_partition": self.partition, "kafka_offset": offset,
                     "key": key, "venue": venue, "instrument": symbol, "ts": at, "state": str(inst.status),
                     "seq": inst.seq, "epoch": inst.counters.get("epoch"), "ts_exchange": inst.ts_exchange or None,
                     "ts_recv": inst.ts_recv or None,
                     "bid_px": [p for p, _ in bids], "bid_sz": [q for _, q in bids],
                     "ask_px": [p for p, _ in asks], "ask_sz": [q for _, q in asks],
                     "bid_px_f64": [float(p) for p, _ in bids], "bid_sz_f64": [float(q) for _, q in bids],
                     "ask_px_f64": [float(p) for p, _ in asks], "ask_sz_f64": [float(q) for _, q in asks]}
            yield Row(cells, at, venue, symbol)


# -- files ------------------------------------------------------------------------------------------

def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, tz=UTC).strftime("%Y-%m-%d") if ts else "unknown"


def _safe(text: str) -> str:
    """A partition folder value: no path separators."""
    return text.replace("/", "_").replace("=", "_") or "none"


@dataclass
class _Buffer:
    folder: Path
    partition: int
    first: int = -1
    last: int = -1
    rows: list[dict[str, Any]] = field(default_factory=list)


#: Where ``--follow`` keeps its positions (a folder Hive readers skip: its name starts with "_").
POSITIONS = "_positions"


def _durable(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


class DatasetWriter:
    """Rows into Parquet files per partition folder and Kafka partition, renamed into place once complete.

    One-shot (``follow=False``): a file per folder and partition as it fills (``rows_per_file``) and
    at :meth:`close`, named after the offsets of its first and last row. Following: nothing is
    written until :meth:`commit` of a partition, which writes every folder's file of that partition
    — named after the commit's offset range — and then the partition's position, each renamed into
    place: a file and its position are committed together (see :meth:`resume`)."""

    def __init__(self, out: Path, topic: str, columns: list[Column], rows_per_file: int = ROWS_PER_FILE,
                 follow: bool = False) -> None:
        import pyarrow as pa

        self.root = out / topic
        self.chained = topic == OPTIONS_CHAIN
        # Hive's rule: a partition folder's key is not a column of its files (readers add it back;
        # pandas and pyarrow refuse a dataset that has both).
        keys = {"venue", "date", *(("chain",) if self.chained else ())}
        self.columns = [c for c in columns if c.name not in keys]
        self.schema = pa.schema([pa.field(c.name, _arrow_type(c.kind)) for c in self.columns])
        self.rows_per_file = rows_per_file
        self.follow = follow
        self.buffers: dict[tuple[Path, int], _Buffer] = {}
        self.buffered: dict[int, int] = {}  # rows waiting per Kafka partition
        self.positions: dict[int, int] = {}  # following: the next offset of each partition, as committed
        self.files: list[Path] = []
        self.rows = 0
        self.bytes = 0

    def add(self, row: Row, partition: int, offset: int) -> None:
        folder = self.root / f"venue={_safe(row.venue)}"
        if self.chained:
            folder = folder / f"chain={_safe(row.chain or '')}"
        folder = folder / f"date={_date(row.ts)}"
        buf = self.buffers.get((folder, partition))
        if buf is None:
            buf = self.buffers[(folder, partition)] = _Buffer(folder, partition)
        if buf.first < 0:
            buf.first = offset
        buf.last = offset
        buf.rows.append(row.cells)
        self.buffered[partition] = self.buffered.get(partition, 0) + 1
        if not self.follow and len(buf.rows) >= self.rows_per_file:
            self._write(buf, buf.first, buf.last)

    def _write(self, buf: _Buffer, first: int, last: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not buf.rows:
            return
        data = {c.name: [r.get(c.name) for r in buf.rows] for c in self.columns}
        table = pa.Table.from_pydict(data, schema=self.schema)
        buf.folder.mkdir(parents=True, exist_ok=True)
        final = buf.folder / f"p{buf.partition}-{first:020d}-{last:020d}.parquet"
        tmp = buf.folder / f".{final.name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        if self.follow:
            _durable(tmp)
        os.replace(tmp, final)  # complete, or not there at all
        self.files.append(final)
        self.rows += len(buf.rows)
        self.bytes += final.stat().st_size
        self.buffered[buf.partition] -= len(buf.rows)
        buf.rows, buf.first, buf.last = [], -1, -1

    def close(self) -> None:
        for buf in self.buffers.values():
            self._write(buf, buf.first, buf.last)

    # -- following ----------------------------------------------------------------------------------
    def resume(self, arguments: dict[str, Any]) -> dict[int, int]:
        """The committed position of every partition (where to read from), after removing what a
        crash left half-committed: temporary files, and files of a commit whose position was not
        written (their rows are read again). ``arguments`` must be those the dataset was started
        with: a dataset is one selection."""
        meta = self.root / POSITIONS / "export.json"
        if meta.exists():
            before = orjson.loads(meta.read_bytes())
            if before != arguments:
                raise BookstreamError(f"{self.root} was written by an export with other arguments ({before}); "
                                      "follow into a new folder, or with the same arguments")
        else:
            meta.parent.mkdir(parents=True, exist_ok=True)
            tmp = meta.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(arguments))
            os.replace(tmp, meta)
        for path in (self.root / POSITIONS).glob("p*.json"):
            self.positions[int(path.stem[1:])] = int(orjson.loads(path.read_bytes())["next_offset"])
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink()
        for path in self.root.rglob("p*-*-*.parquet"):
            partition, first, _ = path.stem.split("-")
            if int(first) >= self.positions.get(int(partition[1:]), 0):
                path.unlink()  # written, but its commit's position was not: its rows come again
        return dict(self.positions)

    def commit(self, partition: int, next_offset: int) -> None:
        """Every row of ``partition`` read before ``next_offset`` into files, then the position."""
        start = self.positions.get(partition, 0)
        for buf in self.buffers.values():
            if buf.partition == partition and buf.rows:
                self._write(buf, start, next_offset - 1)
        folder = self.root / POSITIONS
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"p{partition}.json"
        tmp = folder / f".p{partition}.json.tmp"
        tmp.write_bytes(orjson.dumps({"partition": partition, "next_offset": next_offset}))
        _durable(tmp)
        os.replace(tmp, final)
        self.positions[partition] = next_offset


@dataclass
class ExportSummary:
    topic: str
    records: int = 0
    rows: int = 0
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (f"export: {self.topic}: {self.records:,} records → {self.rows:,} rows in {len(self.files)} files, "
                f"{self.bytes / 2**20:.1f} MiB, {self.seconds:.1f} s ({rate:,.0f} rows/s)")


async def export(settings: Any, topic: str, out: Path, from_ns: int | None = None, to_ns: int | None = None,
                 venue: str | None = None, instrument: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 rows_per_file: int = ROWS_PER_FILE, follow: bool = False, roll_s: float = 60.0,
                 stop: Any = None, book_snapshots: int | None = None, depth: int = 10) -> ExportSummary:
    """Export ``topic`` (without TOPIC_PREFIX) between row times ``from_ns`` and ``to_ns`` (every record
    retained is read: a replay's rows carry their capture's times, not the time they were written).

    ``follow``: keep the dataset current — start where the dataset's committed positions say, read
    on as records arrive, and commit each partition's files with its position every ``roll_s``
    seconds or ``rows_per_file`` rows; until ``stop`` (an asyncio.Event) is set, then commit and return."""
    from app.kafka import partitions_of, read_range, reading_consumer, stop_reading

    spec = spec_for(topic)
    raw = topic.startswith("raw.") and topic != "raw.deadletter"
    if book_snapshots is not None and (not raw or follow):
        raise BookstreamError("--book-snapshots reads a raw topic (raw.<venue>), and not with --follow")
    columns = SNAPSHOT_COLUMNS if book_snapshots is not None else schema_columns(topic)
    full = settings.topic(topic)
    began = time.monotonic()
    summary = ExportSummary(BOOK_SNAPSHOTS if book_snapshots is not None else topic)
    writer = DatasetWriter(out, summary.topic, columns, rows_per_file, follow=follow)
    snapshotters: dict[int, Snapshotter] = {}

    def keep(key: str) -> bool:
        v, _, s = key.partition(":")
        return (venue is None or v == venue) and (instrument is None or instrument in (s, key))
    positions = writer.resume({"topic": topic, "from": from_ns, "to": to_ns, "venue": venue,
                               "instrument": instrument}) if follow else {}
    consumer = await reading_consumer(settings)
    try:
        tps = await partitions_of(consumer, full)
        if not tps:
            raise BookstreamError(f"topic {full} does not exist on {settings.kafka_bootstrap}")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        begin = {}
        for tp in tps:
            begin[tp] = max(positions.get(tp.partition, 0), starts[tp])
            if follow and positions.get(tp.partition, 0) < starts[tp]:
                log.warning("export: %s[%d] from offset %d: retention deleted offsets %d..%d before this export "
                            "read them", full, tp.partition, starts[tp], positions.get(tp.partition, 0), starts[tp] - 1)
        read_to = {tp.partition: positions.get(tp.partition, 0) for tp in tps}  # next offset, as read
        committed_at = {tp.partition: time.monotonic() for tp in tps}
        async for batch in read_range(consumer, begin, None if follow else ends, poll_ms=200 if follow else 1000):
            for tp, msgs in batch.items():
                for msg in msgs:
                    summary.records += 1
                    read_to[tp.partition] = msg.offset + 1
                    if book_snapshots is not None:
                        snap = snapshotters.get(tp.partition)
                        if snap is None:
                            snap = snapshotters[tp.partition] = Snapshotter(topic, tp.partition, book_snapshots,
                                                                            depth, keep)
                        rows = snap.frames(msg.offset, msg.key, msg.value, msg.headers)
                    elif raw:
                        rows = _raw_rows(topic, tp.partition, msg.offset, msg.key, msg.value, msg.headers)
                    else:
                        rows = _record_rows(topic, spec, columns, tp.partition, msg.offset, msg.key, msg.value)
                    for row in rows:
                        if (from_ns is not None and row.ts < from_ns) or (to_ns is not None and row.ts > to_ns):
                            continue
                        if venue is not None and row.venue != venue:
                            continue
                        if instrument is not None and instrument not in (row.instrument,
                                                                         f"{row.venue}:{row.instrument}"):
                            continue
                        writer.add(row, tp.partition, msg.offset)
            if follow:
                now = time.monotonic()
                stopping = stop is not None and stop.is_set()
                for tp in tps:
                    p = tp.partition
                    position = await consumer.position(tp)
                    read_to[p] = max(read_to[p], position)  # past transaction markers too
                    due = writer.buffered.get(p, 0) >= rows_per_file or now - committed_at[p] >= roll_s
                    if read_to[p] > writer.positions.get(p, 0) and (due or stopping):
                        writer.commit(p, read_to[p])
                        committed_at[p] = now
                if stopping:
                    break
            if progress is not None:
                progress(summary.records, writer.rows + sum(writer.buffered.values()))
        if not follow:
            writer.close()
    finally:
        await stop_reading(consumer)
    summary.rows, summary.files, summary.bytes = writer.rows, writer.files, writer.bytes
    summary.seconds = time.monotonic() - began
    return summary
