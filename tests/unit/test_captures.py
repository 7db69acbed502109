"""Real venue captures through the router and book processor in-process (no Kafka).

The same checks run through Kafka and a real worker in tests/integration; these cover
every capture quickly and make the delete-one-frame experiments cheap.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from app.capture.formats import Record
from app.sync import STALE, SYNCED
from scripts.harness import CRYPTOFEED_FILES
from tests.helpers import reference

pytestmark = pytest.mark.captures

CRYPTOFEED = list(CRYPTOFEED_FILES)


def hft(captures: Path, market: str) -> list[Path]:
    return sorted((captures / "hftbacktest" / market).glob("*.gz"))


@pytest.mark.parametrize("name", CRYPTOFEED)
def test_every_cryptofeed_capture_rebuilds_without_gaps(captures: Path, name: str) -> None:
    proc = reference([captures / "cryptofeed" / name], "cryptofeed")
    assert proc.instruments
    for key, inst in proc.instruments.items():
        assert inst.status == SYNCED, (key, inst.reason)
        assert inst.counters["gaps"] == 0, key
        assert not inst.book.crossed(), key


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_hftbacktest_captures_rebuild_across_day_files(captures: Path, market: str) -> None:
    proc = reference(hft(captures, market), "hftbacktest")
    (inst,) = proc.instruments.values()
    assert inst.status == SYNCED, inst.reason
    assert inst.counters["applied"] > 6000


def test_okx_every_frame_checksum_validates(captures: Path) -> None:
    path = captures / "cryptofeed" / "OKX.ws.1.0"
    with_checksum = sum(1 for line in path.read_bytes().splitlines() if b'"checksum":' in line)
    proc = reference([path], "cryptofeed")
    applied = sum(i.counters["applied"] for i in proc.instruments.values()) + len(proc.instruments)
    assert applied == with_checksum == 290  # 3 snapshots + 287 updates, each verified after applying
    assert all(i.status == SYNCED for i in proc.instruments.values())


def test_okx_a_corrupted_level_fails_its_checksum(captures: Path) -> None:
    path = captures / "cryptofeed" / "OKX.ws.1.0"

    def corrupt(rec: Record) -> None:
        rec.frame = rec.frame.replace(b'"asks":[["', b'"asks":[["1', 1)

    proc = reference_with(path, "cryptofeed", target=b'"action":"update"', nth=50, edit=corrupt)
    stale = [k for k, i in proc.instruments.items() if i.status == STALE]
    assert len(stale) == 1
    assert "checksum" in proc.instruments[stale[0]].reason


def reference_with(path: Path, fmt: str, target: bytes, nth: int, edit: object = None):  # type: ignore[no-untyped-def]
    """Reference run where the nth frame containing ``target`` is dropped (or edited)."""
    seen = [0]
    dropped: list[Record] = []

    def drop(_i: int, rec: Record) -> bool:
        if target in rec.frame:
            seen[0] += 1
            if seen[0] == nth:
                dropped.append(rec)
                if edit is None:
                    return True
                edit(rec)  # type: ignore[operator]
        return False

    proc = reference([path], fmt, drop=drop)
    assert dropped, f"no frame #{nth} with {target!r}"
    proc.dropped = dropped[0]
    return proc


@pytest.mark.parametrize(("name", "target", "nth"), [
    ("DERIBIT.ws.1.0", b'"type":"change"', 10),
    ("BYBIT.jsonl", b'"type":"delta","ts"', 300),
    ("BINANCE_FUTURES.ws.1.0", b'"e":"depthUpdate"', 200),
])
def test_deleting_one_frame_makes_only_that_instrument_stale(captures: Path, name: str, target: bytes,
                                                             nth: int) -> None:
    path = captures / "cryptofeed" / name
    full = reference([path], "cryptofeed")
    cut = reference_with(path, "cryptofeed", target, nth)
    stale = {k for k, i in cut.instruments.items() if i.status == STALE}
    assert len(stale) == 1, stale
    (key,) = stale
    assert key.split(":", 1)[1].encode() in cut.dropped.frame
    assert "gap" in cut.instruments[key].reason
    for other, inst in cut.instruments.items():
        if other != key:
            assert inst.status == SYNCED
            assert inst.book.levels(10_000) == full.instruments[other].book.levels(10_000)


def test_coinbase_connection_gap_resyncs_every_book_of_that_connection(captures: Path) -> None:
    """Coinbase numbers frames per connection across channels: a gap cannot be attributed to
    one product, so every instrument seen on that connection goes stale (never wrong)."""
    path = captures / "cryptofeed" / "COINBASE.jsonl"
    cut = reference_with(path, "cryptofeed", b'"channel":"l2_data"', 400)
    assert {i.status for i in cut.instruments.values()} == {STALE}
    assert all("gap" in i.reason for i in cut.instruments.values())


def test_binance_book_top_agrees_with_every_book_ticker(captures: Path) -> None:
    """At every update id where a bookTicker reports the venue's best bid/ask and a depth
    event ends, the latest emitted top with seq <= that id equals it."""
    cases = [([captures / "cryptofeed" / n], "cryptofeed") for n in CRYPTOFEED[:3]]
    cases += [(hft(captures, m), "hftbacktest") for m in ("spot", "usdm")]
    total = 0
    for paths, fmt in cases:
        tops, tickers, depth_ids = emitted_tops_and_tickers(paths, fmt)
        for key, ticks in tickers.items():
            seqs = [s for s, _ in tops[key]]
            for u, tick in ticks:
                if u not in depth_ids[key]:
                    continue
                i = bisect.bisect_right(seqs, u) - 1
                if i < 0:
                    continue  # before the book first synced: nothing was published for this id
                assert tops[key][i][1] == tick, (key, u)
                total += 1
    assert total > 1500


def emitted_tops_and_tickers(paths: list[Path], fmt: str):  # type: ignore[no-untyped-def]
    from app.capture.formats import read
    from app.processor import Processor
    from app.router import Router

    router, proc = Router(), Processor()
    tops: dict[str, list] = defaultdict(list)
    tickers: dict[str, list] = defaultdict(list)
    depth_ids: dict[str, set] = defaultdict(set)
    for rec in read(paths, fmt):
        for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol):
            out = proc.handle(raw)
            tops[raw.key].extend((seq, top) for seq, _, top in out.fx.tops)
            note_ticker(raw.key, raw.data, tickers, depth_ids)
    return tops, tickers, depth_ids


def note_ticker(key: str, frame: bytes, tickers: dict, depth_ids: dict) -> None:  # type: ignore[type-arg]
    if b"bookTicker" not in frame and b"depthUpdate" not in frame:
        return
    msg = orjson.loads(frame)
    data = msg.get("data", msg)
    if data.get("e") == "depthUpdate":
        depth_ids[key].add(data["u"])
    elif "bookTicker" in msg.get("stream", "") or data.get("e") == "bookTicker":
        tickers[key].append((data["u"], (data["b"], data["B"], data["a"], data["A"])))
