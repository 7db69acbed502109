"""``faust -A app positions …``, ``collateral …`` and ``rules …``: the desk's side of risk.

``positions set PORTFOLIO INSTRUMENT QUANTITY [--avg-price P]``, ``positions set --file BOOK``
(TOML/YAML ``[[position]]`` or CSV ``portfolio,instrument,quantity[,avg_price]``; every row is
checked, and every instrument looked up in the registry, before anything is written),
``positions play SCRIPT`` (a scripted book: each ``[[position]]`` with ``at_s``, applied that
many seconds after the start), ``positions list [--portfolio P] [--json]``, ``positions clear PORTFOLIO [INSTRUMENT]``.
``collateral set PORTFOLIO CURRENCY AMOUNT``, ``collateral list [--portfolio P] [--json]``,
``collateral clear PORTFOLIO [CURRENCY]``.
``rules check``, ``rules list [--json]``, ``rules state RULE active|reduce-only|halted``.
``hedge fill SIGNAL_ID [--size S] [--price P]``, ``hedge ack SIGNAL_ID``, ``hedge reject SIGNAL_ID
[--reason R]``, ``hedge paper [--delay-s D]`` (app.risk.execution).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.cli import AppCommand, argument, option

from app import records
from app.commands import fail, print_table
from app.errors import BookstreamError, ConfigError
from app.kafka import client_auth, producer, read_to_end, unreachable, wait_for_topic
from app.records import RISK_RULES, RuleState
from app.registry import read_registry
from app.risk import positions as pos
from app.risk.rules import file_format, state_record
from app.risk.service import load_configured_rules
from app.wire import partition_for
from app.worker import app, settings

T = TypeVar("T")


async def read_topic(topic: str) -> dict[bytes, bytes | None]:
    """The latest value of every key of a (compacted) topic, read to its end now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed", **client_auth(settings))
    await consumer.start()
    try:
        if not await wait_for_topic(consumer, topic):  # a topic created a moment ago may still be on its way
            raise BookstreamError(f"topic {topic} does not exist yet: a worker creates it (faust -A app worker)")
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[bytes, bytes | None] = {}

        def keep(tp: TopicPartition, msg: Any) -> None:
            if msg.key is not None:
                out[msg.key] = msg.value

        await read_to_end(consumer, tps, keep)
        return out
    finally:
        await consumer.stop()


async def _send(topic: str, records: list[tuple[str, bytes | None]]) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        for key, value in records:
            await prod.send(topic, value, key=key.encode(), partition=partition_for(key, settings.partitions))
        await prod.flush()
    finally:
        await prod.stop()


async def _read(path: Path) -> str:
    try:
        return await asyncio.to_thread(path.read_text)
    except OSError as exc:
        raise pos.PositionError(f"{path}: {exc.strerror}") from None


async def _require_known(rows: list[pos.Position], force_says: str) -> None:
    """PositionError naming every instrument ``ref.instruments`` does not know."""
    registry = await read_registry(settings)
    unknown = sorted({p.instrument for p in rows if p.instrument not in registry.versions})
    if unknown:
        raise pos.PositionError(f"unknown instrument(s) {', '.join(unknown)}{force_says}")


def _parsed(current: dict[bytes, bytes | None], parse: Callable[[bytes, bytes | None], T | None]) -> list[T]:
    """The rows among a compacted topic's latest records, by key (tombstones and bad records left out)."""
    out = []
    for key, value in sorted(current.items()):
        with contextlib.suppress(pos.PositionError):
            row = parse(key, value)
            if row is not None:
                out.append(row)
    return out


def _held(current: dict[bytes, bytes | None]) -> list[pos.Position]:
    """The open positions among a ``positions`` topic's latest records."""
    return _parsed(current, pos.parse)


@app.command(
    argument("action", type=str),
    argument("args", nargs=-1, type=str),
    option("--file", "book", type=str, default=None, help="set: a book of positions (.toml, .yaml, .csv)."),
    option("--avg-price", type=str, default=None, help="set: the position's average price."),
    option("--portfolio", type=str, default=None, help="list: only this portfolio."),
    option("--force", is_flag=True, default=False, help="set: even for instruments the registry does not know."),
    option("--json", "as_json", is_flag=True, default=False, help="list: one JSON object per line."),
)
async def positions(self: AppCommand, action: str, args: tuple[str, ...], book: str | None, avg_price: str | None,
                    portfolio: str | None, force: bool, as_json: bool) -> None:
    """Positions of the desk's portfolios (the compacted `positions` topic): set | play | list | clear."""
    topic = settings.topic("positions")
    try:
        if action == "set":
            if book is not None:
                if args:
                    raise pos.PositionError("set --file takes no other arguments")
                path = Path(book)
                rows = pos.load_file(await _read(path), file_format(path))
            elif len(args) == 3:
                rows = [pos.make(args[0], args[1], args[2], avg_price)]
            else:
                raise pos.PositionError("set PORTFOLIO INSTRUMENT QUANTITY [--avg-price P], or set --file BOOK")
            if not force:
                await _require_known(rows, ": not in ref.instruments (a worker must have fetched the venue's "
                                           "instrument list; --force sets them anyway)")
            now = time.time_ns()  # a position applies at its ts: stamped as it is sent
            await _send(topic, [(p.key, replace(p, ts=now).encode()) for p in rows])  # 0 closes it
            print(f"{len(rows)} position(s) set", file=sys.stderr)
        elif action == "play":
            if len(args) != 1:
                raise pos.PositionError("play SCRIPT (TOML/YAML [[position]] tables with at_s)")
            path = Path(args[0])
            script = pos.load_script(await _read(path), file_format(path))
            if not force:
                await _require_known([p for _, p in script], " (--force plays them anyway)")
            start = time.monotonic()
            for at, p in script:
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                await _send(topic, [(p.key, replace(p, ts=time.time_ns()).encode())])
                print(f"{at:8.1f} s  {p.portfolio} {p.instrument} {p.quantity}", flush=True)
            print(f"{len(script)} position change(s) played", file=sys.stderr)
        elif action == "list":
            current = await read_topic(topic)
            shown = []
            for key, value in sorted(current.items()):
                position = pos.parse(key, value) if value is not None else None
                if position is not None and (portfolio is None or position.portfolio == portfolio):
                    shown.append(position)
            if as_json:
                for p in shown:
                    print(p.encode().decode(), flush=True)
            else:
                print_table(("portfolio", "instrument", "quantity", "avg_price"),
                       [(p.portfolio, p.instrument, str(p.quantity), "" if p.avg_price is None else str(p.avg_price))
                        for p in shown])
            print(f"{len(shown)} position(s)", file=sys.stderr)
        elif action == "clear":
            if len(args) not in (1, 2):
                raise pos.PositionError("clear PORTFOLIO [INSTRUMENT]")
            now = time.time_ns()
            closed = [pos.make(p.portfolio, p.instrument, 0, ts=now) for p in _held(await read_topic(topic))
                      if p.portfolio == args[0] and (len(args) == 1 or p.instrument == args[1])]
            await _send(topic, [(p.key, p.encode()) for p in closed])
            print(f"{len(closed)} position(s) cleared", file=sys.stderr)
        else:
            raise pos.PositionError(f"unknown action {action!r}: set, play, list or clear")
    except BookstreamError as exc:
        fail(exc)
    except (KafkaError, OSError) as exc:
        fail(unreachable(settings, exc))


@app.command(
    argument("action", type=str),
    argument("args", nargs=-1, type=str),
    option("--json", "as_json", is_flag=True, default=False, help="list: one JSON object per line."),
)
async def rules(self: AppCommand, action: str, args: tuple[str, ...], as_json: bool) -> None:
    """Hedge rules (RISK_RULES_FILE) and their run-time state: check | list | state RULE STATE."""
    try:
        loaded = load_configured_rules(settings)
        if action == "check":
            if settings.risk.rules_file is None:
                print("RISK_RULES_FILE is not set: no rules")
                return
            held = {p.portfolio for p in _held(await read_topic(settings.topic("positions")))}
            empty = sorted({r.portfolio for r in loaded} - held)
            for name in empty:
                print(f"warning: portfolio {name!r} holds no positions (its rules are blocked until it does)",
                      file=sys.stderr)
            print(f"{settings.risk.rules_file}: {len(loaded)} rule(s), no errors")
            return
        if settings.risk.rules_file is None:
            raise ConfigError("RISK_RULES_FILE is not set: there are no rules")
        by_id = {r.id: r for r in loaded}
        if action == "list":
            states: dict[str, RuleState] = {}
            for k, v in (await read_topic(settings.topic("risk.rules"))).items():
                if v is not None:
                    with contextlib.suppress(msgspec.DecodeError):  # an unreadable one: the file's state
                        states[k.decode()] = records.decode(RISK_RULES, v)
            rows = [{**r.as_dict(), "state": s.state if (s := states.get(r.id)) else r.state,
                     "state_by": s.by if (s := states.get(r.id)) else "file"} for r in loaded]
            if as_json:
                for row in rows:
                    print(orjson.dumps(row).decode(), flush=True)
            else:
                print_table(("rule", "portfolio", "underlying", "greek", "band", "target", "hedge", "state"),
                       [(r["id"], r["portfolio"], r["underlying"], r["greek"], f"±{r['trigger']:g}", f"{r['target']:g}",
                         r["hedge"], r["state"]) for r in rows])
        elif action == "state":
            if len(args) != 2:
                raise BookstreamError("state RULE active|reduce-only|halted")
            rule_id, state = args
            if rule_id not in by_id:
                raise BookstreamError(f"no rule {rule_id!r} in {settings.risk.rules_file} "
                                      f"(rules: {', '.join(sorted(by_id)) or 'none'})")
            try:
                record = state_record(rule_id, state, "command")
            except ValueError as exc:
                raise BookstreamError(str(exc)) from None
            await _send(settings.topic("risk.rules"), [(rule_id, record)])
            print(f"rule {rule_id}: {state}", file=sys.stderr)
        else:
            raise BookstreamError(f"unknown action {action!r}: check, list or state")
    except BookstreamError as exc:
        fail(exc)
    except (KafkaError, OSError) as exc:
        fail(unreachable(settings, exc))


@app.command(
    argument("action", type=str),
    argument("args", nargs=-1, type=str),
    option("--portfolio", type=str, default=None, help="list: only this portfolio."),
    option("--json", "as_json", is_flag=True, default=False, help="list: one JSON object per line."),
)
async def collateral(self: AppCommand, action: str, args: tuple[str, ...], portfolio: str | None,
                     as_json: bool) -> None:
    """Collateral of the desk's portfolios (the compacted `collateral` topic): set PORTFOLIO CURRENCY AMOUNT |
    list | clear PORTFOLIO [CURRENCY]."""
    topic = settings.topic("collateral")
    try:
        if action == "set":
            if len(args) != 3:
                raise pos.PositionError("set PORTFOLIO CURRENCY AMOUNT (e.g. set desk BTC 12.5)")
            row = pos.make_collateral(*args)
            await _send(topic, [(row.key, row.encode())])
            print(f"collateral {row.portfolio} {row.currency} {row.amount}", file=sys.stderr)
        elif action == "list":
            if args:
                raise pos.PositionError("list takes no arguments (--portfolio P to choose one)")
            shown = [c for c in _collateral(await read_topic(topic)) if portfolio is None or c.portfolio == portfolio]
            if as_json:
                for c in shown:
                    print(c.encode().decode(), flush=True)
            else:
                print_table(("portfolio", "currency", "amount"),
                            [(c.portfolio, c.currency, str(c.amount)) for c in shown])
            print(f"{len(shown)} collateral balance(s)", file=sys.stderr)
        elif action == "clear":
            if len(args) not in (1, 2):
                raise pos.PositionError("clear PORTFOLIO [CURRENCY]")
            wanted = args[1].upper() if len(args) == 2 else None
            gone = [c for c in _collateral(await read_topic(topic))
                    if c.portfolio == args[0] and wanted in (None, c.currency)]
            await _send(topic, [(c.key, None) for c in gone])  # tombstones
            print(f"{len(gone)} collateral balance(s) cleared", file=sys.stderr)
        else:
            raise pos.PositionError(f"unknown action {action!r}: set, list or clear")
    except BookstreamError as exc:
        fail(exc)
    except (KafkaError, OSError) as exc:
        fail(unreachable(settings, exc))


def _collateral(current: dict[bytes, bytes | None]) -> list[pos.Collateral]:
    """The balances among a ``collateral`` topic's latest records."""
    return _parsed(current, pos.parse_collateral)


@app.command(
    argument("action", type=str),
    option("--positions", "book", type=str, default=None,
           help="The book: positions as for `positions set --file` (.toml, .yaml, .csv)."),
    option("--add", "adds", type=str, multiple=True, help="INSTRUMENT=QTY added to the book (repeatable)."),
    option("--portfolio", type=str, default=None, help="--add goes to this portfolio (default: the book's only one)."),
    option("--params", type=str, default=None, help="Margin parameters (default: MARGIN_PARAMS_FILE, else bundled)."),
    option("--at", "when", type=str, default=None, help="The market of this instant (ISO time or ns; default now)."),
    option("--lookback-s", type=float, default=600.0, help="Market data read from this long before the instant."),
    option("--json", "as_json", is_flag=True, default=False, help="Every component as JSON."),
)
async def margin(self: AppCommand, action: str, book: str | None, adds: tuple[str, ...], portfolio: str | None,
                 params: str | None, when: str | None, lookback_s: float, as_json: bool) -> None:
    """What-if margin: simulate --positions FILE [--add INSTRUMENT=QTY …] [--params FILE] [--at TIME] [--json]."""
    from app.history import parse_time
    from app.risk.margin import load_params
    from app.risk.whatif import market_at, rows, simulate

    try:
        if action != "simulate":
            raise BookstreamError(f"unknown action {action!r}: simulate")
        at = time.time_ns() if when is None else parse_time(when, "--at")
        rows_in = pos.load_file(await _read(Path(book)), file_format(Path(book))) if book is not None else []
        portfolios = sorted({p.portfolio for p in rows_in})
        target = portfolio or (portfolios[0] if len(portfolios) == 1 else "what-if" if not portfolios else None)
        if adds and target is None:
            raise pos.PositionError(f"--add: the book holds portfolios {', '.join(portfolios)}: say which with "
                                    "--portfolio")
        for item in adds:
            instrument, sep, qty = item.partition("=")
            if not sep:
                raise pos.PositionError(f"--add {item!r}: expected INSTRUMENT=QTY (e.g. deribit:BTC-PERPETUAL=-10000)")
            rows_in.append(pos.make(str(target), instrument, qty, ts=at))
        if not rows_in:
            raise pos.PositionError("nothing to margin: give --positions FILE and/or --add INSTRUMENT=QTY")
        loaded = load_params(Path(params) if params else settings.risk.margin_params_file)
        engine, taken = await market_at(settings, at, lookback_s)
        await _require_known(rows_in, "")
        result = simulate(engine, [replace(p, ts=at) for p in rows_in], at, loaded)
        if as_json:
            print(orjson.dumps({"at": at, "params_as_of": loaded.get("as_of"), "inputs": taken,
                                "portfolios": result}, option=orjson.OPT_INDENT_2).decode(), flush=True)
        else:
            print_table(("portfolio", "venue", "method", "currency", "im", "mm", "components"), rows(result))
            for name, body in result.items():
                for key, flags in sorted(body["flags"].items()):
                    print(f"warning: {name} {key}: {', '.join(flags)}", file=sys.stderr)
                if body["not_priced"]:
                    print(f"warning: {name}: not priced, not margined: {', '.join(body['not_priced'])}",
                          file=sys.stderr)
        print(f"margin at {at} from {taken} market inputs, parameters of {loaded.get('as_of')}", file=sys.stderr)
    except BookstreamError as exc:
        fail(exc)
    except (KafkaError, OSError) as exc:
        fail(unreachable(settings, exc))


@app.command(
    argument("action", type=str),
    argument("args", nargs=-1, type=str),
    option("--size", type=str, default=None, help="fill: the cumulative size filled (default: the whole signal)."),
    option("--price", type=str, default=None, help="fill: the average price (default: the signal's expected price)."),
    option("--reason", type=str, default="", help="reject: why."),
    option("--delay-s", type=float, default=2.0, help="paper: seconds between a signal and its fill."),
)
async def hedge(self: AppCommand, action: str, args: tuple[str, ...], size: str | None, price: str | None,
                reason: str, delay_s: float) -> None:
    """What became of hedge signals (the compacted `hedge.fills` topic): fill SIGNAL_ID [--size S] [--price P] |
    ack SIGNAL_ID | reject SIGNAL_ID [--reason R] | paper [--delay-s D] (a paper executor, until Ctrl-C)."""
    from decimal import Decimal, InvalidOperation

    from app.risk.execution import DONE, PaperExecutor, answer, find_signal, publish

    try:
        if action == "paper":
            if args:
                raise BookstreamError("paper takes no arguments (--delay-s D)")
            if delay_s < 0:
                raise BookstreamError(f"--delay-s {delay_s}: must be ≥ 0")
            await PaperExecutor(settings, delay_s).run(settings.risk.signal_ttl_s)
            return
        if action not in ("fill", "ack", "reject"):
            raise BookstreamError(f"unknown action {action!r}: fill, ack, reject or paper")
        if len(args) != 1:
            raise BookstreamError(f"{action} SIGNAL_ID")
        signal, last = await find_signal(settings, args[0])
        if last is not None and last.state in DONE:
            raise BookstreamError(f"signal {signal.id} is already {last.state} ({last.filled} by {last.by})")
        before = Decimal(last.filled) if last is not None else Decimal(0)
        try:
            filled = Decimal(size) if size is not None else Decimal(signal.size)
            paid = Decimal(price) if price is not None else (
                Decimal(repr(signal.expected_price)) if signal.expected_price is not None else None)
        except InvalidOperation:
            raise BookstreamError(f"--size {size!r} / --price {price!r}: not numbers") from None
        if action == "fill":
            if filled < before:
                raise BookstreamError(f"--size {filled} is below what is already filled ({before}): sizes are "
                                      "cumulative")
            if paid is None:
                raise BookstreamError("--price: the signal has no expected price; say at what price it filled")
            state = "filled" if filled == Decimal(signal.size) else "partial"
            row = answer(signal, state, filled, paid, "command")
        else:
            row = answer(signal, "acked" if action == "ack" else "rejected", before,
                         Decimal(last.price) if last is not None and last.price is not None else None, "command",
                         reason)
        await publish(settings, [row])
        print(f"{row.state} {signal.side} {row.filled} of {signal.size} {signal.instrument} (signal {signal.id})",
              file=sys.stderr)
    except BookstreamError as exc:
        fail(exc)
    except (KafkaError, OSError) as exc:
        fail(unreachable(settings, exc))
