"""The project's own commands: ``faust -A app <command>``."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from faust.cli import AppCommand, argument, option

from app.capture.formats import FORMATS
from app.errors import BookstreamError
from app.kafka import unreachable
from app.records import encode
from app.venues import VENUES
from app.wire import BadFrame, RawFrame, decode_record
from app.worker import app, settings

log = logging.getLogger(__name__)


def _show_our_logs() -> None:
    """faust sets up command logging at WARN; let bookstream's own loggers speak at LOG_LEVEL.

    Only the handlers are lowered: faust's and aiokafka's loggers keep their level.
    """
    level = logging.getLevelName(settings.log_level.upper())
    for handler in logging.getLogger().handlers:
        if handler.level > level:
            handler.setLevel(level)


def print_table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Rows under a header, each column as wide as its widest cell."""
    table = [head, *rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), flush=True)


def fail(exc: BookstreamError) -> None:
    print(f"bookstream: error: {exc}", file=sys.stderr)
    raise SystemExit(1)


@app.command(
    argument("paths", nargs=-1, required=True, type=Path),
    option("--format", "fmt", type=str, default="native",
           help=f"Capture format: {', '.join(FORMATS)}."),
    option("--venue", type=str, default=None,
           help=f"Venue id when the capture does not say it: {', '.join(VENUES)}."),
    option("--symbol", type=str, default=None,
           help="Only this venue symbol (and the symbol of captures that do not name it)."),
    option("--speed", type=float, default=None,
           help="Pace by original receive times, X times real time (default: as fast as possible)."),
    option("--max", "max_", is_flag=True, default=False, help="As fast as possible (the default)."),
)
async def replay(self: AppCommand, paths: tuple[Path, ...], fmt: str, venue: str | None,
                 symbol: str | None, speed: float | None, max_: bool) -> None:
    """Produce captured frames into the raw topics exactly as live ingestion would."""
    from app.replay import replay as run

    if speed is not None and max_:
        fail(BookstreamError("--speed and --max exclude each other"))
    try:
        summary = await run(settings, list(paths), fmt, venue, symbol, None if max_ else speed)
    except BookstreamError as exc:
        fail(exc)
        return
    for line in summary.lines():
        print(line, file=sys.stderr)




@app.command(
    option("--out", type=Path, default=Path("schemas"), help="Directory to write into (default: schemas)."),
    option("--check", is_flag=True, default=False,
           help="Write nothing; exit 1 naming every file that differs from the record definitions."),
)
async def schemas(self: AppCommand, out: Path, check: bool) -> None:
    """Write the JSON Schema of every topic's records (app.records) into schemas/<topic>.json."""
    from app import records

    if check:
        stale = records.stale_schemas(out)
        if stale:
            print(f"bookstream: {out}: out of date: {', '.join(stale)} (run `faust -A app schemas`)", file=sys.stderr)
            raise SystemExit(1)
        print(f"{out}: {len(records.TOPICS)} schemas, up to date", file=sys.stderr)
        return
    for path in records.write_schemas(out):
        print(path, flush=True)


@app.command(
    argument("topic", type=str),
    option("--from-beginning", is_flag=True, default=False, help="Start at the oldest record."),
    option("--count", type=int, default=0,
           help="Stop after this many lines (records; frames for raw.<venue>; 0: never)."),
)
async def tail(self: AppCommand, topic: str, from_beginning: bool, count: int) -> None:
    """Print a topic's records as JSON lines (TOPIC without TOPIC_PREFIX, e.g. book.top); for raw.<venue>,
    one line per frame."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from app.kafka import client_auth, unreachable

    consumer = AIOKafkaConsumer(
        settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest", isolation_level="read_committed",
        **client_auth(settings),
    )
    try:
        await consumer.start()
    except (KafkaError, OSError) as exc:
        fail(unreachable(settings, exc))
    seen = 0
    frames = topic.startswith("raw.") and topic != "raw.deadletter"
    try:
        async for msg in consumer:
            key = msg.key.decode("utf-8", "replace") if msg.key else ""
            if frames:  # raw records carry batches of frames: one line per frame
                lines = [_frame_line(msg.partition, msg.offset, index, item)
                         for index, item in enumerate(decode_record(msg.key, msg.value, msg.headers))]
            else:
                value = msg.value.decode("utf-8", "replace") if msg.value else "null"
                lines = [f'{{"key":"{key}","partition":{msg.partition},"offset":{msg.offset},"value":{value}}}']
            for line in lines[: count - seen if count else None]:
                print(line, flush=True)
                seen += 1
            if count and seen >= count:
                break
    finally:
        await consumer.stop()


def _frame_line(partition: int, offset: int, index: int, item: RawFrame | BadFrame) -> str:
    where = {"partition": partition, "offset": offset, "index": index}
    if isinstance(item, BadFrame):
        return orjson.dumps({"key": item.key, **where, "error": f"{item.reason}: {item.detail}"}).decode()
    return orjson.dumps({"key": item.key, **where, "ts": item.ts, "kind": item.kind.value, "conn": item.conn,
                         "frame": item.data.decode("utf-8", "replace")}).decode()


@app.command(
    option("--host", type=str, default="127.0.0.1", help="Address to listen on."),
    option("--port", type=int, default=8765, help="Port for every venue's WebSocket and REST endpoint."),
    option("--rate", type=float, default=10.0, help="Book updates per second per instrument (bursts on top)."),
    option("--seed", type=int, default=0, help="Random seed of the order-flow model."),
)
async def simulate(self: AppCommand, host: str, port: int, rate: float, seed: int) -> None:
    """Run the local venue simulator (every venue's protocol over real WebSockets)."""
    from app.simulator.server import serve

    _show_our_logs()
    if rate <= 0:
        fail(BookstreamError("--rate must be greater than 0"))
    print(f"simulator: http://{host}:{port}/  (FEED=sim SIM_URL=http://{host}:{port})", file=sys.stderr, flush=True)
    try:
        await serve(host, port, rate, seed)
    except OSError as exc:
        fail(BookstreamError(f"cannot listen on {host}:{port}: {exc.strerror}"))


async def _ingest(feeds: str | None, produce: bool, record_dir: Path | None, rotate_mb: float) -> None:
    from app import feeds as feeds_mod
    from app.ingest.service import Ingest

    _show_our_logs()
    try:
        config = feeds_mod.load(feeds_override=feeds)
        service = Ingest(settings, config, produce=produce, record_dir=record_dir, rotate_mb=rotate_mb,
                         buffer_mb=settings.ingest_buffer_mb)
        if produce:
            from app.kafka import ensure_topics

            await ensure_topics(settings, app.runtime.topics.all, compacted=app.runtime.topics.compacted())
        await service.run()
    except BookstreamError as exc:
        fail(exc)


@app.command(
    option("--feeds", type=str, default=None, help="Feeds to ingest (default: FEEDS / FEEDS_FILE)."),
    option("--record", "record_dir", type=Path, default=None, help="Also write a native capture into this folder."),
    option("--rotate-mb", type=float, default=256.0, help="Start a new capture file past this size."),
)
async def ingest(self: AppCommand, feeds: str | None, record_dir: Path | None, rotate_mb: float) -> None:
    """Ingest live venue feeds into the raw topics (FEED=live, or FEED=sim for the simulator)."""
    await _ingest(feeds, True, record_dir, rotate_mb)


@app.command(
    option("--out", "out", type=Path, required=True, help="Folder for the native capture files."),
    option("--rotate-mb", type=float, default=256.0, help="Start a new capture file past this size."),
    option("--feeds", type=str, default=None, help="Feeds to record (default: FEEDS / FEEDS_FILE)."),
    option("--produce", is_flag=True, default=False, help="Also produce to the raw topics, like ingest."),
)
async def record(self: AppCommand, out: Path, rotate_mb: float, feeds: str | None, produce: bool) -> None:
    """Record venue feeds to native capture files (replay them later with `replay`)."""
    await _ingest(feeds, produce, out, rotate_mb)


def _when(text: str, option: str = "--at") -> int:
    """A time option: ns since the epoch, or an ISO-8601 time (UTC when it names no zone)."""
    from app.history import parse_time

    return parse_time(text, option)


def _expiry_day(text: str) -> str:
    """``--expiry``: 2026-12-25 or 25DEC26 → 2026-12-25."""
    from app.market.symbols import expiry_ns

    try:
        ns = expiry_ns(text.upper()) if not text[:4].isdigit() or len(text) == 6 else None
    except (KeyError, ValueError):
        ns = None
    if ns is not None:
        return time.strftime("%Y-%m-%d", time.gmtime(ns // 1_000_000_000))
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return text
    raise BookstreamError(f"--expiry {text!r}: expected 2026-12-25 or 25DEC26")


@app.command(
    option("--venue", type=str, default=None, help=f"Only this venue: {', '.join(VENUES)}."),
    option("--kind", type=str, default=None, help="Only this kind: spot, perpetual, future, option."),
    option("--expiry", type=str, default=None, help="Only contracts expiring that day (2026-12-25 or 25DEC26)."),
    option("--at", "at", type=str, default=None, help="The versions in force at this time (default: the latest)."),
    option("--all-versions", is_flag=True, default=False, help="Every version of each instrument, oldest first."),
    option("--json", "as_json", is_flag=True, default=False, help="One JSON object per line instead of a table."),
)
async def instruments(self: AppCommand, venue: str | None, kind: str | None, expiry: str | None, at: str | None,
                      all_versions: bool, as_json: bool) -> None:
    """List the instrument registry (ref.instruments): contract terms per instrument, versioned in time."""

    from app.market.instruments import KINDS
    from app.registry import read_registry

    try:
        if venue is not None and venue not in VENUES:
            raise BookstreamError(f"--venue {venue!r}: known venues: {', '.join(VENUES)}")
        if kind is not None and kind not in KINDS:
            raise BookstreamError(f"--kind {kind!r}: one of {', '.join(KINDS)}")
        day = _expiry_day(expiry) if expiry else None
        moment = _when(at) if at else None
        try:
            registry = await read_registry(settings)
        except (KafkaError, OSError) as exc:
            raise unreachable(settings, exc) from exc
    except BookstreamError as exc:
        fail(exc)
        return
    rows = []
    for key, versions in sorted(registry.versions.items()):
        if all_versions:
            chosen = versions
        else:
            spec_then = versions[-1] if moment is None else registry.at(key, moment)
            chosen = [spec_then] if spec_then is not None else []
        for spec in chosen:
            expiry_day = time.strftime("%Y-%m-%d", time.gmtime(spec.expiry_ns // 10**9)) if spec.expiry_ns else ""
            wrong_venue = venue is not None and not key.startswith(venue + ":")
            if wrong_venue or (kind and spec.kind != kind) or (day and expiry_day != day):
                continue
            rows.append((spec, expiry_day))
    if as_json:
        for spec, _ in rows:
            print(encode(spec.record()).decode(), flush=True)
    else:
        head = ("instrument", "kind", "margin", "settle", "size", "tick", "lot", "min", "strike", "type", "expiry",
                "state", "valid_from")
        print_table(head, [(s.key, s.kind, s.margin, s.settle, s.contract_size or "", s.tick_size or "",
                            s.lot_size or "", s.min_size or "", s.strike or "", s.option_type or "", day_, s.state,
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.valid_from // 10**9)))
                           for s, day_ in rows])
    print(f"{len(rows)} instrument versions ({sum(len(v) for v in registry.versions.values())} in the registry)",
          file=sys.stderr)


@app.command(
    option("--topic", "topics", type=str, multiple=True,
           help="raw.<venue> to check (repeatable; default: every raw topic of TOPIC_PREFIX)."),
    option("--from", "from_", type=str, default=None, help="Records written at or after this time (ISO or ns)."),
    option("--to", type=str, default=None, help="Records written at or before this time (ISO or ns)."),
    option("--expect", type=str, default=None, help="The end digest an earlier run printed for this range."),
)
async def verify(self: AppCommand, topics: tuple[str, ...], from_: str | None, to: str | None,
                 expect: str | None) -> None:
    """Walk the raw topics' hash chains: report every record altered, removed, inserted or reordered,
    or say the range is clean, with its counts and the digest of its end."""
    from app.audit import verify_topics

    try:
        from_ns = _when(from_, "--from") if from_ else None
        to_ns = _when(to, "--to") if to else None
        for topic in topics:
            if not topic.startswith("raw.") or topic == "raw.deadletter":
                raise BookstreamError(f"--topic {topic!r}: expected a raw topic, raw.<venue> (e.g. raw.okx)")
        names = [settings.topic(t) for t in topics] or await _raw_topics()
    except BookstreamError as exc:
        fail(exc)
        return
    last = [time.monotonic()]

    def progress(records: int) -> None:
        if time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            print(f"verify: {records:,} records read…", file=sys.stderr, flush=True)

    try:
        report = await verify_topics(settings, names, from_ns, to_ns, progress)
    except BookstreamError as exc:
        fail(exc)
        return
    except (KafkaError, OSError) as exc:
        fail(unreachable(settings, exc))
        return
    for line in report.lines():
        print(line, flush=True)
    bad = bool(report.findings)
    if expect is not None:
        if report.digest() != expect.strip().lower():
            print(f"verify: END DIGEST DIFFERS: expected {expect}, got {report.digest()} (records after the range's "
                  "end were changed, or the range is not the one the digest was written for)", flush=True)
            bad = True
        else:
            print("verify: end digest as expected", flush=True)
    if bad:
        raise SystemExit(1)


async def _raw_topics() -> list[str]:
    """Every raw.<venue> topic of TOPIC_PREFIX on the cluster."""
    from aiokafka import AIOKafkaConsumer

    from app.kafka import client_auth

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **client_auth(settings))
    try:
        await consumer.start()
        names = await consumer.topics()
    except (KafkaError, OSError) as exc:
        raise unreachable(settings, exc) from exc
    finally:
        await consumer.stop()
    prefix = settings.topic("raw.")
    found = sorted(t for t in names if t.startswith(prefix) and t != settings.topic("raw.deadletter"))
    if not found:
        raise BookstreamError(f"no raw topics ({prefix}<venue>) on {settings.kafka_bootstrap}")
    return found


@app.command(
    argument("topic", type=str),
    option("--out", type=Path, required=True, help="Folder of the dataset (the topic's folder goes inside)."),
    option("--from", "from_", type=str, default=None, help="Rows at or after this time (ISO or ns)."),
    option("--to", type=str, default=None, help="Rows at or before this time (ISO or ns)."),
    option("--venue", type=str, default=None, help="Only this venue's rows."),
    option("--instrument", type=str, default=None, help="Only this instrument (venue symbol or venue:symbol)."),
    option("--follow", is_flag=True, default=False,
           help="Keep the dataset current: resume where it stopped, read on as records arrive (Ctrl-C ends)."),
    option("--roll-s", type=float, default=60.0, help="--follow: commit each partition's files this often."),
    option("--roll-rows", type=int, default=500_000, help="A file holds at most this many rows."),
    option("--book-snapshots", "every", type=str, default=None,
           help="From a raw topic: every book's top --depth levels every EVERY (250ms, 1s, 5m …) of receive time."),
    option("--depth", type=int, default=10, help="--book-snapshots: levels per side."),
)
async def export(self: AppCommand, topic: str, out: Path, from_: str | None, to: str | None, venue: str | None,
                 instrument: str | None, follow: bool, roll_s: float, roll_rows: int, every: str | None,
                 depth: int) -> None:
    """Write a topic's records (TOPIC without TOPIC_PREFIX) as a Hive-partitioned Parquet dataset."""
    import asyncio
    import signal

    from app.export import export as run
    from app.export import parse_every

    last = [time.monotonic()]

    def progress(records: int, rows: int) -> None:
        if time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            print(f"export: {records:,} records read, {rows:,} rows…", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    if follow:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # commit what was read, then end
            loop.add_signal_handler(sig, stop.set)
        print(f"export: following {topic} into {out} (Ctrl-C commits and ends)", file=sys.stderr, flush=True)
    try:
        if roll_s <= 0 or roll_rows <= 0 or depth <= 0:
            raise BookstreamError("--roll-s, --roll-rows and --depth must be greater than 0")
        snapshots = parse_every(every) if every is not None else None
        from_ns = _when(from_, "--from") if from_ else None
        to_ns = _when(to, "--to") if to else None
        summary = await run(settings, topic, out, from_ns, to_ns, venue, instrument, progress,
                            rows_per_file=roll_rows, follow=follow, roll_s=roll_s, stop=stop,
                            book_snapshots=snapshots, depth=depth)
    except BookstreamError as exc:
        fail(exc)
        return
    print(summary.line(), file=sys.stderr, flush=True)


@app.command(
    argument("key", type=str),
    argument("when", type=str),
    option("--depth", type=int, default=10, help="Levels per side to print."),
)
async def book_at(self: AppCommand, key: str, when: str, depth: int) -> None:
    """The book of KEY (venue:instrument) as it was at WHEN (ISO time or ns), rebuilt from the raw topics
    from the latest book.checkpoints record before it."""
    from app.history import book_at as rebuild

    try:
        if depth < 1:
            raise BookstreamError("--depth must be at least 1")
        past = await rebuild(settings, key, _when(when, "TIME"))
    except BookstreamError as exc:
        fail(exc)
        return
    print(orjson.dumps(past.to_dict(depth), option=orjson.OPT_INDENT_2).decode(), flush=True)


@app.command(
    argument("day", type=str),
    option("--out", type=Path, default=None, help="Folder of the reports (default: REPORTS_DIR)."),
)
async def report(self: AppCommand, day: str, out: Path | None) -> None:
    """One UTC day's report (DAY: YYYY-MM-DD) from the topics: Parquet tables and report.html in OUT/DAY/."""
    from app.report import report as run

    try:
        folder = await run(settings, day, out or settings.reports_dir)
    except BookstreamError as exc:
        fail(exc)
        return
    print(f"report: {folder}/report.html", file=sys.stderr, flush=True)
