"""One definition per topic (app.records): the published schemas are current and valid, and
every record bookstream writes — over every capture, and from the risk engine — matches its
schema, checked by an independent validator (jsonschema) and by decoding with the definition."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from app import records
from app.capture.formats import Record, read
from app.market.records import TICKER_FIELDS
from app.records.market import TRADE_EXTRA
from app.risk import positions as pos
from app.risk.rules import state_record
from app.venues.base import Kind
from app.wire import RawFrame, conn_event, encode_frame
from tests.helpers import ROOT, publish
from tests.risk_reference import copies_instruments
from tests.unit.test_market import CAPTURES, paths
from tests.unit.test_risk import _market, _run

SCHEMAS = ROOT / "schemas"


def validator(topic: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / records.schema_file(topic)).read_text())
    return jsonschema.Draft202012Validator(schema)


def check(topic: str, value: bytes) -> None:
    """``value`` matches the published schema of ``topic`` and decodes with its definition."""
    errors = list(validator(topic).iter_errors(json.loads(value)))
    assert not errors, f"{topic}: {errors[0].message} at {list(errors[0].path)}: {value[:300]!r}"
    records.decode(topic, value)


def test_the_committed_schemas_are_those_of_the_definitions() -> None:
    assert records.stale_schemas(SCHEMAS) == [], "run `faust -A app schemas` and commit schemas/"


def test_the_schemas_command_checks_and_writes(tmp_path: Path) -> None:
    faust = [sys.executable, "-m", "faust", "-A", "app"]
    ok = subprocess.run([*faust, "schemas", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    written = subprocess.run([*faust, "schemas", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, check=False)
    assert written.returncode == 0, written.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(records.schema_file(t) for t in records.TOPICS)
    (tmp_path / "book.top.json").write_text("{}\n")
    stale = subprocess.run([*faust, "schemas", "--check", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, check=False)
    assert stale.returncode == 1
    assert "out of date: book.top.json" in stale.stderr


@pytest.mark.parametrize("topic", list(records.TOPICS))
def test_each_schema_is_valid_json_schema_and_names_its_key(topic: str) -> None:
    schema = json.loads((SCHEMAS / records.schema_file(topic)).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == topic
    assert schema["x-kafka-key"]
    assert schema["description"]
    assert schema["x-version"] == records.SCHEMA_VERSION


def test_a_record_that_breaks_its_schema_is_refused_by_both_checks() -> None:
    good = records.encode(records.BookTop(venue="okx", instrument="BTC-USDT", bid_px="1", bid_sz="2", ask_px="3",
                                          ask_sz="4", seq=1, epoch=0, ts_exchange=0, ts_recv=1, ts_published=2))
    check("book.top", good)
    for bad in ({**json.loads(good), "bid_px": 1.0},  # a float where the venue's text belongs
                {k: v for k, v in json.loads(good).items() if k != "seq"}):  # a field missing
        value = json.dumps(bad).encode()
        assert list(validator("book.top").iter_errors(bad))
        with pytest.raises(msgspec.ValidationError):
            records.decode("book.top", value)


def test_ticker_and_trade_fields_are_those_of_their_records() -> None:
    assert set(TICKER_FIELDS) < set(records.TickerRecord.__struct_fields__)
    assert set(TRADE_EXTRA) < set(records.TradeRecord.__struct_fields__)


@pytest.mark.captures
def test_every_record_published_for_every_capture_matches_its_schema(captures: Path) -> None:
    """Each capture through the worker's publishing path (tests.helpers.publish), plus an
    instrument list, a dead letter, a subscription refused and a trade gap."""
    sent: list[tuple[str, int, bytes, bytes]] = []
    for name, fmt in CAPTURES.items():
        sent += publish(read(paths(captures, name), fmt), risk_depth_keys={"bybit-linear:BTCUSDT", "okx:BTC-USDT"})
    extra = [copies_instruments(2, 1_800_000_000 * 10**9),
             Record(1, "okx", "c9", Kind.WS, b'{"arg":{"channel":"books","instId":"BTC-USDT"},"data":[{"asks":['),
             Record(2, "okx", "c9", Kind.CONN, conn_event("refused", "60018: no such channel", feed="trades",
                                                           channel="trades:BTC-USDT"), symbol="BTC-USDT")]
    sent += publish(extra)
    counts = collections.Counter(topic for topic, *_ in sent)
    for topic in ("book.top", "book.depth", "book.status", "trades", "ticker", "options.chain", "ref.instruments",
                  "raw.deadletter", "feed.status", "risk.depth"):
        assert counts[topic], f"no {topic} record to check: {dict(counts)}"
    seen: collections.Counter[str] = collections.Counter()
    for topic, _partition, _key, value in sent:
        records.decode(topic, value)  # every one decodes with its definition
        if seen[topic] < 300:  # and a sample is checked against the published file
            check(topic, value)
            seen[topic] += 1


def test_raw_lines_and_conn_events_match_their_schema() -> None:
    for frame in (RawFrame("okx:BTC-USDT", 1, Kind.WS, "okx#1", b'{"a":1}'),
                  RawFrame("okx:", 2, Kind.REST, "okx#1", b"\xff\xfe not utf-8"),
                  RawFrame("okx:BTC-USDT", 3, Kind.CONN, "okx#1", conn_event("gap", "lost"))):
        check("raw.<venue>", encode_frame(frame))
    event = json.loads(conn_event("silent", "no data in 5 s", feed="book", channel="books:BTC-USDT"))
    assert event == {"event": "silent", "detail": "no data in 5 s", "feed": "book", "channel": "books:BTC-USDT"}
    assert json.loads(conn_event("reset", "closed")) == {"event": "reset", "detail": "closed"}  # unset: left out


def test_every_risk_record_matches_its_schema() -> None:
    outs = _run(_market(60)) + _run(_market(30, stale_at=0))
    by_topic = collections.Counter(topic for topic, *_ in outs)
    assert {"risk.exposure", "risk.scenarios", "risk.hedge"} <= set(by_topic), by_topic
    for topic, _key, body in outs:
        check(topic, json.dumps(body).encode())
    types = {body["type"] for topic, _, body in outs if topic == "risk.hedge"}
    assert types == {"signal", "blocked"}
    position = pos.make("desk", "deribit:BTC-PERPETUAL", "-1000", "65000.5", ts=5)
    check("positions", position.encode())
    assert pos.parse(position.key.encode(), position.encode()) == position
    check("risk.rules", state_record("desk-delta", "halted", "web"))


def test_alerts_and_nbbo_match_their_schema() -> None:
    from app.market.instruments import Registry, Spec
    from app.risk.alerts import Alerts, AlertSettings
    from app.risk.engine import MarketTop

    registry = Registry()
    for key, quote in (("binance:BTCUSDT", "USDT"), ("okx:BTC-USDT", "USDT"), ("bybit-spot:BTCUSDT", "USDT")):
        registry.apply(Spec(key=key, kind="spot", margin="linear", base="BTC", quote=quote, settle=quote))
    alerts = Alerts(AlertSettings(divergence_bps=50, spread_bps=10), registry)
    t = 10**12
    tops = {"binance:BTCUSDT": MarketTop(65_000.0, 65_001.0, t, 1), "okx:BTC-USDT": MarketTop(65_000.5, 65_002.0, t, 1),
            "bybit-spot:BTCUSDT": MarketTop(65_500.0, 65_501.0, t, 1)}
    outs: list[tuple[str, str, Any]] = alerts.tick(t + 1, tops, {}, 10**10)
    outs += alerts.on_top("okx:BTC-USDT", 100.1, 100.0, t + 2) + alerts.on_top("okx:BTC-USDT", 100.0, 100.01, t + 3)
    assert {topic for topic, *_ in outs} == {"nbbo", "alerts"}
    assert {o.state for topic, _, o in outs if topic == "alerts"} == {"raised", "cleared"}
    for topic, _key, body in outs:
        check(topic, records.encode(msgspec.structs.replace(body, ts_published=t)))
