"""app.risk.service.RiskService: how far the engine may compute (the watermark, per input
source), and what it publishes of partitions it does not own (held records)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson
from aiokafka import TopicPartition

from app.config import Settings
from app.records import Exposure, HedgeSignal, encode
from app.risk.service import RiskService
from app.runtime import BookRuntime
from app.venues import VENUES
from app.wire import Topics

DAY_NS = 86_400 * 10**9


def service(applying: dict[tuple[str, int], float] | None = None) -> tuple[RiskService, int]:
    settings = Settings()
    svc = RiskService(settings, Topics("", VENUES, "unit"), [], lambda *a: None, lambda key: True, lambda: True,
                      applying=lambda: applying or {})
    return svc, settings.risk.lateness_ms * 1_000_000


def test_quiet_live_sources_hold_the_engine_at_the_lateness_bound_not_past_the_wall_clock() -> None:
    """A broker failover stalls the whole pipeline for seconds: every source is quiet. The
    engine must not run ahead (an infinite watermark released every input held, and the
    stalled ones came late): what they bring next was received no earlier than RISK_LATENESS_MS ago."""
    svc, lateness = service()
    now, wall = time.monotonic(), time.time_ns()
    for p in range(4):
        svc.marks.sources[("book.top", p, "deribit")] = [wall - 10 * 10**9, now - 10]  # quiet for 10 s
    mark = svc.watermark(now)
    assert wall - lateness <= mark <= time.time_ns() - lateness


def test_a_live_source_counts_with_its_newest_input_when_later_than_the_bound() -> None:
    svc, lateness = service()
    now, wall = time.monotonic(), time.time_ns()
    svc.marks.sources[("book.top", 0, "deribit")] = [wall + 5 * 10**9, now]  # a clock ahead: its own time
    svc.marks.sources[("ticker", 0, "okx")] = [wall - 10 * 10**9, now - 10]
    mark = svc.watermark(now)
    assert wall - lateness <= mark <= time.time_ns() - lateness


def test_history_holds_the_engine_while_read_recently_or_at_what_the_worker_still_applies() -> None:
    svc, _ = service()
    now, wall = time.monotonic(), time.time_ns()
    svc.marks.sources[("book.top", 0, "binance-usdm")] = [wall - DAY_NS, now]  # a replay, read a moment ago
    svc.marks.sources[("book.top", 1, "deribit")] = [wall, now]
    assert svc.watermark(now) == wall - DAY_NS
    svc.marks.sources[("book.top", 0, "binance-usdm")] = [wall - DAY_NS, now - 10]  # quiet: its replay done
    assert svc.watermark(now) > wall - DAY_NS
    # quiet only because the worker is still applying its raw topics, an hour into the day's replay:
    # held at what the worker applies, not at the quiet source's own time and not at the clock
    behind, _ = service(applying={("raw.binance-usdm", 2): wall - DAY_NS + 3_600 * 10**9})
    behind.marks.sources = svc.marks.sources
    assert behind.watermark(now) == wall - DAY_NS + 3_600 * 10**9
    # a few milliseconds behind, as a worker under live load is most of the time: live
    lagging, lateness = service(applying={("raw.binance-usdm", 2): wall - 5_000_000})
    lagging.marks.sources = svc.marks.sources
    assert wall - lateness <= lagging.watermark(now) <= time.time_ns() - lateness


class Outputs:
    """The consumer's view of the output partitions: read to their end unless told otherwise."""

    def __init__(self) -> None:
        self.high: dict[tuple[str, int], int] = {}
        self.polled: dict[tuple[str, int], float] = {}  # wall ms of the last fetch answer (default: now)

    def highwater(self, tp: TopicPartition) -> int:
        return self.high.get((tp.topic, tp.partition), 0)

    def last_poll_timestamp(self, tp: TopicPartition) -> float:
        return self.polled.get((tp.topic, tp.partition), time.time() * 1000)

    async def position(self, tp: TopicPartition) -> int:
        return self.high.get((tp.topic, tp.partition), 0)  # read to the end


def signal(n: int, ts: int) -> HedgeSignal:
    return HedgeSignal(id=f"s{n}", rule="r1", portfolio="desk", underlying="BTC", greek="delta", band=[-1.0, 1.0],
                       target=0.0, state="active", reason="test", ts=ts, inputs=[], instrument="deribit:BTC-PERPETUAL",
                       side="buy", size="10", exposure_before=2.0, exposure_after=0.0, expected_price=None, mid=None,
                       slippage_bps=None, fillable=None, depth_ts_recv=None)


def exposure(ts: int) -> Exposure:
    return Exposure(portfolio="desk", underlying="BTC", delta=float(ts), delta_usd=None, gamma=None, gamma_1pct=None,
                    vega=None, theta=None, notional_usd=None, venue={}, positions=[], flags={}, unknown=[], ok=True,
                    inputs=[], reason="interval", ts=ts)


def held_service() -> tuple[RiskService, set[str], list[str], Outputs]:
    owned: set[str] = set()
    sent: list[str] = []
    svc = RiskService(Settings(), Topics("", VENUES, "unit"), [],
                      lambda topic, p, key, value: sent.append(orjson.loads(value).get("id") or key),
                      lambda key: key in owned, lambda: True)
    outputs = Outputs()
    svc.consumer = outputs  # type: ignore[assignment]
    return svc, owned, sent, outputs


def test_signals_computed_while_no_one_owns_the_partition_are_published_when_it_comes_here() -> None:
    """A rebalance: the desk's partition is nobody's for a moment (or another worker's that stops
    publishing). What this worker computed meanwhile is not lost: held, and published in order
    once the partition is here and the outputs are read to their end — except what the owner
    published (read back)."""
    svc, owned, sent, outputs = held_service()
    svc._emit([("risk.hedge", "s1", signal(1, 100)), ("risk.hedge", "s2", signal(2, 200))])  # noqa: SLF001
    assert sent == []
    svc._published("risk.hedge", b"s1", encode(signal(1, 100)))  # noqa: SLF001 - the old owner's, read back
    svc._publish_held()  # noqa: SLF001
    assert sent == []  # still not ours
    owned.add("desk")
    svc._emit([("risk.hedge", "s3", signal(3, 300))])  # noqa: SLF001 - behind the held one: in order
    assert sent == []
    outputs.high[("risk.hedge", 0)] = 5  # an output partition not read to its end: the old owner's may be there
    svc._publish_held()  # noqa: SLF001
    assert sent == []
    outputs.high.clear()
    svc._publish_held()  # noqa: SLF001
    assert sent == ["s2", "s3"]
    svc._emit([("risk.hedge", "s4", signal(4, 400))])  # noqa: SLF001
    assert sent == ["s2", "s3", "s4"]
    assert not svc.unowned


def test_of_a_latest_value_only_the_latest_is_held_and_the_owners_publication_clears_it() -> None:
    svc, owned, sent, _ = held_service()
    svc._emit([("risk.exposure", "desk|BTC", exposure(1)), ("risk.exposure", "desk|BTC", exposure(2))])  # noqa: SLF001
    assert [h[0] for h in svc.unowned[("risk.exposure", "desk|BTC")]] == [2]
    svc._published("risk.exposure", b"desk|BTC", encode(exposure(2)))  # noqa: SLF001
    assert not svc.unowned
    owned.add("desk")
    svc._publish_held()  # noqa: SLF001
    assert sent == []


def test_a_partition_is_read_to_its_end_only_if_a_fetch_said_so_lately_and_nothing_of_it_waits_here() -> None:
    """A failover: no fetch answers for a partition whose leader is moving, and this worker's
    own records for it wait for the new leader. Either way its end is not known: it holds the
    engine at its newest input, instead of the engine running on and its inputs coming late."""
    pending: set[tuple[str, int]] = set()
    svc = RiskService(Settings(), Topics("", VENUES, "unit"), [], lambda *a: None, lambda key: True, lambda: True,
                      undelivered=lambda topic, partition: (topic, partition) in pending)
    outputs = Outputs()
    svc.consumer = outputs  # type: ignore[assignment]
    svc.read_to[("ticker", 1)] = 9
    outputs.high[("ticker", 1)] = 10
    assert not svc._behind("ticker", 1)  # noqa: SLF001
    outputs.polled[("ticker", 1)] = time.time() * 1000 - svc.settings.risk.idle_ms - 1000
    assert svc._behind("ticker", 1)  # noqa: SLF001
    outputs.polled.clear()
    pending.add(("ticker", 1))
    assert svc._behind("ticker", 1)  # noqa: SLF001
    pending.clear()
    outputs.high[("ticker", 1)] = 11
    assert svc._behind("ticker", 1)  # noqa: SLF001 - records still to read


def test_records_this_worker_had_acknowledged_hold_their_partition_until_they_are_read() -> None:
    """A replay: a raw partition applied behind the others gives a ticker older than the tops
    already read; Kafka acknowledged it after the consumer's last fetch told it the partition's
    end. Until it is read the partition is not read to its end: the engine waits for it instead
    of ticking past its time (the same replay gave different risk records run to run)."""
    acked: dict[tuple[str, int], int] = {}
    svc = RiskService(Settings(), Topics("", VENUES, "unit"), [], lambda *a: None, lambda key: True, lambda: True,
                      acknowledged_to=lambda topic, partition: acked.get((topic, partition), -1))
    outputs = Outputs()
    svc.consumer = outputs  # type: ignore[assignment]
    svc.read_to[("ticker", 1)] = 9
    outputs.high[("ticker", 1)] = 10
    assert not svc._behind("ticker", 1)  # noqa: SLF001
    acked[("ticker", 1)] = 9
    assert not svc._behind("ticker", 1)  # noqa: SLF001 - read already
    acked[("ticker", 1)] = 12  # acknowledged since: the high watermark the consumer knows is stale
    assert svc._behind("ticker", 1)  # noqa: SLF001
    svc.read_to[("ticker", 1)] = 12
    outputs.high[("ticker", 1)] = 13
    assert not svc._behind("ticker", 1)  # noqa: SLF001


async def test_a_commit_marker_at_the_end_of_a_partition_is_not_a_record_still_to_read() -> None:
    """PROCESSING_GUARANTEE=exactly_once: every output partition the worker wrote in a commit ends
    with its marker (one offset, no record). Read to the end, the last record's offset is one short
    of the high watermark: the engine goes by the consumer's position there, not by the last record."""
    svc = RiskService(Settings(), Topics("", VENUES, "unit"), [], lambda *a: None, lambda key: True, lambda: True)
    outputs = Outputs()
    svc.consumer = outputs  # type: ignore[assignment]
    marked, fresh = TopicPartition("book.status", 2), TopicPartition("book.status", 3)
    svc.assigned = [marked, fresh]
    svc.read_to[("book.status", 2)] = 41  # its last record; the marker at 42
    outputs.high[("book.status", 2)] = 43
    svc.read_to[("book.status", 3)] = 7  # records just returned by this fetch, more of them to come
    outputs.high[("book.status", 3)] = 20
    assert svc._behind("book.status", 2)  # noqa: SLF001
    await svc._past_markers({fresh: []})  # noqa: SLF001
    assert not svc._behind("book.status", 2)  # noqa: SLF001
    assert svc.read_to[("book.status", 3)] == 7  # a partition this fetch returned records of: as they say


def test_the_worker_names_each_raw_partition_with_frames_still_to_apply_and_the_receive_time_it_is_at() -> None:
    """No slack: one raw record behind may hold an output partition's first records (a replay)."""
    stub = SimpleNamespace(applied_ts={("raw.okx", 0): 5, ("raw.okx", 1): 7},
                           consumer_lag=lambda: {("raw.okx", 0): 1, ("raw.okx", 1): 0, ("raw.okx", 2): 3})
    assert BookRuntime.raw_applying(stub) == {("raw.okx", 0): 5, ("raw.okx", 2): float("-inf")}  # type: ignore[arg-type]
