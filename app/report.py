"""The daily report (``faust -A app report DATE``; README "Daily report").

One UTC day's record of what the desk saw and did, every figure read from the topics (nothing typed
by hand): per venue and instrument the frames received, gaps, resyncs and time spent stale, dead
letters by reason, trades and trade-id gaps, ticker coverage; per portfolio the end-of-day positions,
exposure and scenario worst case, every hedge signal and blocked hedge with its inputs, every alert
raised and cleared; and the raw topics' chain digests of the day. Written as Parquet files (one per
table) and a human-readable ``report.html`` into ``<out>/<DATE>/``; the web view serves the page at
``/reports/<DATE>``.
"""

from __future__ import annotations

import html
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from app.errors import BookstreamError
from app.records import (
    ALERTS,
    BOOK_STATUS,
    DEADLETTER,
    FEED_STATUS,
    POSITIONS,
    RISK_EXPOSURE,
    RISK_HEDGE,
    RISK_SCENARIOS,
    TICKER,
    TRADES,
)
from app.wire import RawFrame, decode_record

DAY_NS = 86_400 * 10**9


def day_bounds(text: str) -> tuple[date, int, int]:
    """``YYYY-MM-DD`` → (the day, its first ns, the first ns of the next day)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise BookstreamError(f"DATE {text!r}: expected YYYY-MM-DD (a UTC day)") from None
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**9
    return day, start, start + DAY_NS


@dataclass
class Instrument:
    """One instrument's day."""

    key: str
    frames: int = 0
    gaps: int = 0
    resyncs: int = 0
    stale_ns: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    trades: int = 0
    trade_gaps: int = 0
    trades_missing: int = 0
    tickers: int = 0
    ticker_minutes: int = 0
    first_ts: int | None = None
    last_ts: int | None = None

    def row(self) -> dict[str, Any]:
        venue, _, symbol = self.key.partition(":")
        return {"venue": venue, "instrument": symbol, "frames": self.frames, "gaps": self.gaps,
                "resyncs": self.resyncs, "stale_s": round(self.stale_ns / 1e9, 3),
                "dead_letters": sum(self.dead_letters.values()),
                "dead_letters_by_reason": orjson.dumps(self.dead_letters).decode() if self.dead_letters else "{}",
                "trades": self.trades, "trade_gaps": self.trade_gaps, "trades_missing": self.trades_missing,
                "tickers": self.tickers, "ticker_minutes": self.ticker_minutes,
                "ticker_coverage": round(self.ticker_minutes / 1440, 4)}


class DayBuilder:
    """Folds the topics' records of one day into the report's tables (pure: the tests feed it)."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.instruments: dict[str, Instrument] = {}
        self._status: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self._ticker_minutes: dict[str, set[int]] = defaultdict(set)
        self.positions: dict[str, dict[str, Any]] = {}  # portfolio|instrument → latest by the day's end
        self.exposure: dict[str, dict[str, Any]] = {}
        self.scenarios: dict[str, dict[str, Any]] = {}
        self.hedges: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.chains: list[dict[str, Any]] = []
        self.sources: dict[str, int] = {}  # topic → records read

    def _inst(self, key: str) -> Instrument:
        inst = self.instruments.get(key)
        if inst is None:
            inst = self.instruments[key] = Instrument(key)
        return inst

    def _in_day(self, ts: int | None) -> bool:
        return ts is not None and self.start <= ts < self.end

    def raw(self, key: bytes | None, value: bytes | None, headers: object) -> None:
        for item in decode_record(key, value, headers):
            if isinstance(item, RawFrame) and self._in_day(item.ts) and item.key.partition(":")[2]:
                inst = self._inst(item.key)
                inst.frames += 1
                inst.first_ts = item.ts if inst.first_ts is None else min(inst.first_ts, item.ts)
                inst.last_ts = item.ts if inst.last_ts is None else max(inst.last_ts, item.ts)

    def record(self, topic: str, value: dict[str, Any], kafka_ts_ms: int) -> None:
        """One record of a derived topic (``topic`` without TOPIC_PREFIX)."""
        if topic == BOOK_STATUS:
            ts = value.get("ts_recv") or value.get("ts")
            key = f"{value['venue']}:{value['instrument']}"
            if isinstance(ts, int) and ts < self.end:
                self._status[key].append((ts, str(value.get("state"))))
        elif topic == DEADLETTER:
            ts = _int((value.get("headers") or {}).get("ts")) or kafka_ts_ms * 1_000_000
            if self._in_day(ts) and value.get("instrument"):
                inst = self._inst(f"{value['venue']}:{value['instrument']}")
                reason = str(value.get("reason"))
                inst.dead_letters[reason] = inst.dead_letters.get(reason, 0) + 1
        elif topic == TRADES:
            if self._in_day(value.get("ts_recv")):
                self._inst(value["key"]).trades += 1
        elif topic == TICKER:
            ts = value.get("ts_recv")
            if isinstance(ts, int) and self._in_day(ts):
                self._inst(value["key"]).tickers += 1
                self._ticker_minutes[value["key"]].add((ts - self.start) // (60 * 10**9))
        elif topic == FEED_STATUS:
            if self._in_day(value.get("ts_recv")) and value.get("event") == "gap" and value.get("feed") == "trades":
                inst = self._inst(value["key"])
                inst.trade_gaps += 1
                inst.trades_missing += int(value.get("missing") or 0)
        elif topic == POSITIONS:
            self._latest(self.positions, f"{value.get('portfolio')}|{value.get('instrument')}", value)
        elif topic == RISK_EXPOSURE:
            self._latest(self.exposure, f"{value.get('portfolio')}|{value.get('underlying')}", value)
        elif topic == RISK_SCENARIOS:
            self._latest(self.scenarios, f"{value.get('portfolio')}|{value.get('underlying')}", value)
        elif topic == RISK_HEDGE:
            if self._in_day(value.get("ts")):
                self.hedges.append(value)
        elif topic == ALERTS and self._in_day(value.get("ts")):
            self.alerts.append(value)

    def _latest(self, table: dict[str, dict[str, Any]], key: str, value: dict[str, Any]) -> None:
        ts = value.get("ts")
        if isinstance(ts, int) and ts < self.end:
            held = table.get(key)
            if held is None or ts >= held.get("ts", 0):
                table[key] = value

    def finish(self) -> None:
        """Gaps, resyncs and stale time from the status transitions (in event time, clipped to the day)."""
        for key, changes in self._status.items():
            changes.sort()
            inst = self._inst(key)
            stale_since: int | None = None
            for ts, state in changes:
                stale = state in ("stale", "resync-requested", "resyncing")
                if self._in_day(ts):
                    if state == "stale":
                        inst.gaps += 1
                    elif state == "resync-requested":
                        inst.resyncs += 1
                if stale and stale_since is None:
                    stale_since = ts
                elif state == "synced" and stale_since is not None:
                    inst.stale_ns += max(0, min(ts, self.end) - max(stale_since, self.start))
                    stale_since = None
            if stale_since is not None:
                inst.stale_ns += max(0, self.end - max(stale_since, self.start))
        for key, minutes in self._ticker_minutes.items():
            self._inst(key).ticker_minutes = len(minutes)

    # -- tables ------------------------------------------------------------------------------------
    def tables(self) -> dict[str, list[dict[str, Any]]]:
        positions = [{"portfolio": p["portfolio"], "instrument": p["instrument"], "quantity": p["quantity"],
                      "avg_price": p.get("avg_price"), "ts": p["ts"]}
                     for _, p in sorted(self.positions.items()) if str(p.get("quantity")) not in ("0", "0.0", "")]
        risk = []
        for key in sorted(set(self.exposure) | set(self.scenarios)):
            e, s = self.exposure.get(key, {}), self.scenarios.get(key, {})
            portfolio, _, underlying = key.partition("|")
            risk.append({"portfolio": portfolio, "underlying": underlying, "delta": e.get("delta"),
                         "delta_usd": e.get("delta_usd"), "gamma": e.get("gamma"), "vega": e.get("vega"),
                         "notional_usd": e.get("notional_usd"), "exposure_ts": e.get("ts"),
                         "worst_case_usd": s.get("worst_usd"), "scenarios_ts": s.get("ts")})
        hedges = [{"id": h.get("id"), "type": h.get("type"), "rule": h.get("rule"), "portfolio": h.get("portfolio"),
                   "underlying": h.get("underlying"), "ts": h.get("ts"), "instrument": h.get("instrument"),
                   "side": h.get("side"), "size": h.get("size"), "reason": h.get("reason"),
                   "inputs": orjson.dumps(h.get("inputs") or []).decode()}
                  for h in sorted(self.hedges, key=lambda r: (r.get("ts", 0), str(r.get("id"))))]
        alerts = [{"kind": a.get("kind"), "key": a.get("key"), "state": a.get("state"), "value": a.get("value"),
                   "threshold": a.get("threshold"), "detail": a.get("detail"), "ts": a.get("ts"),
                   "raised_ts": a.get("raised_ts")} for a in sorted(self.alerts, key=lambda r: r.get("ts", 0))]
        instruments = [self.instruments[k].row() for k in sorted(self.instruments)]
        return {"instruments": instruments, "positions": positions, "risk": risk, "hedges": hedges,
                "alerts": alerts, "chains": self.chains}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# -- reading the topics -----------------------------------------------------------------------------

DERIVED = (BOOK_STATUS, DEADLETTER, TRADES, TICKER, FEED_STATUS, POSITIONS, RISK_EXPOSURE, RISK_SCENARIOS,
           RISK_HEDGE, ALERTS)


async def build(settings: Any, day_text: str) -> tuple[date, DayBuilder]:
    """Every topic read once, folded into the day's tables; the raw topics' chains verified over
    the records written that day."""
    from app.audit import verify_topics
    from app.kafka import partitions_of, read_range, reading_consumer, stop_reading

    day, start, end = day_bounds(day_text)
    builder = DayBuilder(start, end)
    consumer = await reading_consumer(settings)
    try:
        names = await consumer.topics()
        raw = sorted(t for t in names if t.startswith(settings.topic("raw.")) and t != settings.topic(DEADLETTER))
        for topic in [*raw, *(settings.topic(t) for t in DERIVED)]:
            if topic not in names:
                continue
            base = topic.removeprefix(settings.topic_prefix)
            tps = await partitions_of(consumer, topic)
            if not tps:
                continue
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            async for batch in read_range(consumer, await consumer.beginning_offsets(tps), ends):
                for msgs in batch.values():
                    builder.sources[base] = builder.sources.get(base, 0) + len(msgs)
                    for msg in msgs:
                        if base.startswith("raw."):
                            builder.raw(msg.key, msg.value, msg.headers)
                        elif msg.value:
                            builder.record(base, orjson.loads(msg.value), msg.timestamp)
    finally:
        await stop_reading(consumer)
    builder.finish()
    if raw:
        checked = await verify_topics(settings, raw, start, end - 1)
        for p in checked.partitions:
            if p.records:
                builder.chains.append({"topic": p.topic.removeprefix(settings.topic_prefix), "partition": p.partition,
                                       "records": p.records, "frames": p.frames, "writers": len(p.chains),
                                       "findings": len(p.findings), "end_digest": _digest(p)})
        builder.chains.append({"topic": "all", "partition": -1, "records": checked.records,
                               "frames": checked.frames, "writers": sum(len(p.chains) for p in checked.partitions),
                               "findings": len(checked.findings), "end_digest": checked.digest()})
    return day, builder


def _digest(partition: Any) -> str:
    from app.audit import end_digest

    return end_digest(partition.ends())


# -- writing ----------------------------------------------------------------------------------------

def write(out: Path, day: date, builder: DayBuilder) -> Path:
    """``<out>/<day>/``: a Parquet file per table, report.json and report.html, each renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = out / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    tables = builder.tables()
    for name, rows in tables.items():
        table = pa.Table.from_pylist(rows) if rows else pa.table({})
        tmp = folder / f".{name}.parquet.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, folder / f"{name}.parquet")
    summary = {"date": day.isoformat(), "generated_at": time.time_ns(), "records_read": builder.sources,
               "counts": {name: len(rows) for name, rows in tables.items()}}
    _atomic(folder / "report.json", orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    _atomic(folder / "report.html", render(day, tables, summary).encode())
    return folder


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and value > 10**17:  # ns since the epoch
        return datetime.fromtimestamp(value / 1e9, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    return html.escape(str(value))


def _table(title: str, rows: list[dict[str, Any]], anchor: str) -> str:
    if not rows:
        return f'<h2 id="{anchor}">{html.escape(title)}</h2><p class="none">none</p>'
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return (f'<h2 id="{anchor}">{html.escape(title)} <small>({len(rows)})</small></h2>'
            f'<table id="{anchor}-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def render(day: date, tables: dict[str, list[dict[str, Any]]], summary: dict[str, Any]) -> str:
    read = ", ".join(f"{html.escape(t)} {n:,}" for t, n in sorted(summary["records_read"].items()))
    generated = datetime.fromtimestamp(summary["generated_at"] / 1e9, tz=UTC).isoformat(timespec="seconds")
    sections = [_table("Instruments", tables["instruments"], "instruments"),
                _table("Positions at the end of the day", tables["positions"], "positions"),
                _table("Exposure and scenario worst case", tables["risk"], "risk"),
                _table("Hedge signals and blocked hedges", tables["hedges"], "hedges"),
                _table("Alerts raised and cleared", tables["alerts"], "alerts"),
                _table("Raw topics' chain digests", tables["chains"], "chains")]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bookstream daily report {day.isoformat()}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}}table{{border-collapse:collapse;
font-size:.85rem;margin-bottom:1rem}}th,td{{border:1px solid #ccc;padding:.2rem .45rem;text-align:right}}
th{{background:#f3f3f3}}td:first-child,td:nth-child(2){{text-align:left}}.none{{color:#777}}</style></head>
<body><h1>Daily report {day.isoformat()} <small>(UTC)</small></h1>
<p>Generated {generated} from the topics ({read} records read). Times are UTC; every figure comes
from the topics (README "Daily report").</p>
{"".join(sections)}
</body></html>
"""


async def report(settings: Any, day_text: str, out: Path) -> Path:
    day, builder = await build(settings, day_text)
    return write(out, day, builder)


def yesterday(now_ns: int | None = None) -> str:
    now = datetime.fromtimestamp((now_ns or time.time_ns()) / 1e9, tz=UTC)
    return (now.date() - timedelta(days=1)).isoformat()
