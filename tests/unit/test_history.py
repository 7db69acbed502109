"""book.checkpoints (app.history): a book written to a checkpoint and loaded back goes on exactly as
the book it was taken from, on every venue (a Binance book still buffering deltas among them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.capture.formats import read
from app.history import checkpoint_of, instrument_from, parse_time
from app.processor import Processor
from app.records import decode, encode
from app.router import Router
from tests.unit.test_market import CAPTURES, paths


def _frames(captures: Path, name: str, fmt: str) -> list[Any]:
    router = Router()
    return [raw for rec in read(paths(captures, name), fmt)
            for raw in router.route(rec.venue, rec.conn, rec.kind, rec.frame, rec.ts, rec.url, rec.symbol)]


def _state(proc: Processor, key: str) -> tuple[Any, ...]:
    inst = proc.instruments[key]
    return (str(inst.status), inst.seq, list(inst.book.iter_bids()), list(inst.book.iter_asks()),
            inst.counters.get("epoch"), len(inst.buffer))


def _checkpointed_at(frames: list[Any], cut: int) -> tuple[Processor, Processor]:
    """The books after ``frames[:cut]``, and the same books through a checkpoint and back."""
    whole = Processor()
    for raw in frames[:cut]:
        whole.handle(raw)
    restored = {}
    for key, inst in whole.instruments.items():
        cp = decode("book.checkpoints", encode(checkpoint_of(inst, f"raw.{key.partition(':')[0]}", 0, 123)))
        assert (cp.next_offset, cp.raw_topic) == (123, f"raw.{key.partition(':')[0]}")
        restored[key] = instrument_from(cp)
    return whole, Processor(restored)


def _go_on_together(whole: Processor, again: Processor, frames: list[Any]) -> None:
    for key in whole.instruments:
        assert _state(again, key) == _state(whole, key), key
    for raw in frames:
        whole.handle(raw)
        again.handle(raw)
    assert set(again.instruments) == set(whole.instruments)
    for key in whole.instruments:
        assert _state(again, key) == _state(whole, key), key


@pytest.mark.captures
@pytest.mark.parametrize("name", [*CAPTURES, "usdm"])
def test_a_book_loaded_from_its_checkpoint_goes_on_as_the_book_it_was_taken_from(captures: Path, name: str) -> None:
    frames = _frames(captures, name, "hftbacktest" if name == "usdm" else CAPTURES[name])
    assert frames
    if name == "usdm":
        frames = frames[:60_000]
    cut = len(frames) // 2
    whole, again = _checkpointed_at(frames, cut)
    _go_on_together(whole, again, frames[cut:])


@pytest.mark.captures
def test_a_binance_book_checkpointed_while_it_buffers_deltas_for_its_snapshot(captures: Path) -> None:
    frames = _frames(captures, "usdm", "hftbacktest")[:20_000]
    probe = Processor()
    cut = None
    for i, raw in enumerate(frames):
        probe.handle(raw)
        if any(inst.buffer for inst in probe.instruments.values()):
            cut = i + 1
            break
    assert cut is not None, "no delta ever waited for a snapshot"
    whole, again = _checkpointed_at(frames, cut)
    assert any(inst.buffer for inst in again.instruments.values())
    _go_on_together(whole, again, frames[cut:])


def test_times_are_exact_to_the_nanosecond_in_iso_or_ns() -> None:
    assert parse_time("2024-08-08T23:54:15.250Z", "x") == 1_723_161_255_250_000_000
    assert parse_time("2024-08-08T23:54:15.250123", "x") == 1_723_161_255_250_123_000
    assert parse_time("1723161255250000001", "x") == 1_723_161_255_250_000_001
    with pytest.raises(Exception, match="expected an ISO time"):
        parse_time("yesterday", "TIME")
