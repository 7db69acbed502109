"""Tamper-evident raw topics: a hash chain per raw partition and writer, and its verification.

Every process that writes raw records (``ingest``, ``record --produce``, ``replay``, the worker's
own ingestion) is a **writer** with a name of its own (``<role>/<host>/<pid>/<start>``). Each raw
record it writes carries three headers beside the format's ``v``:

* ``writer`` — the writer's name;
* ``wseq`` — its sequence on this partition (0, 1, 2 …, decimal);
* ``chain`` — ``BLAKE2b-256(previous chain hash ‖ wseq as 8 bytes ‖ BLAKE2b-256(value))``, hex; the
  chain's first link starts from ``BLAKE2b-256("bookstream-chain" ‖ topic ‖ partition ‖ writer)``
  (the topic without TOPIC_PREFIX), so a record moved to another partition or writer breaks it.

BLAKE2b rather than SHA-256: in the standard library, faster than SHA-256 in software on the CPUs
without SHA extensions most servers still run (the hash is on the ingestion path), and as strong
for this purpose (collision and second-preimage resistance). The hash of the value is chained
rather than the value itself so that the verifier keeps 32 bytes per record it holds back.

What the chain proves, and what it does not (README "Audit and backtests"): a record changed,
removed, inserted or moved after it was written is found — unless whoever changed it also
rewrote every later link of that writer on that partition. The chain is not keyed (anyone who
can write to the topic can compute links), so rewriting the tail is possible; writing down the
digest of a range's end (``verify`` prints it) and checking it later with ``--expect`` catches
that too. The chain says nothing about frames the writer never received.

Not tampering, and reported as what they are: a record sent twice by a producer retry (the
same ``wseq`` and hash again, right after the first: counted as a repeat); a chain that enters
the range mid-way because the range starts there or retention deleted its beginning (said
once per writer); a record refused by Kafka for good (its sequence number is reused by the
next record, so it leaves no hole).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

#: Header names of the chain (README "Raw record format").
WRITER_HEADER = "writer"
SEQ_HEADER = "wseq"
CHAIN_HEADER = "chain"

#: Records a writer's chain may run ahead of a missing sequence number before the number counts
#: as removed (a swap of two records, or a few, is reported as reordered instead).
LOOKAHEAD = 64


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def value_hash(value: bytes) -> bytes:
    return _h(value)


def genesis(topic: str, partition: int, writer: str) -> bytes:
    """The hash a writer's chain on one partition starts from (``topic`` without TOPIC_PREFIX)."""
    return _h(b"bookstream-chain\x00%s\x00%d\x00%s" % (topic.encode(), partition, writer.encode()))


def link(previous: bytes, seq: int, vhash: bytes) -> bytes:
    return _h(previous + seq.to_bytes(8, "big") + vhash)


def writer_name(role: str) -> str:
    """A name no other writer has: role, host, process id and start time (base 36 ns)."""
    return f"{role}/{socket.gethostname()}/{os.getpid()}/{_base36(time.time_ns())}"


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


class ChainWriter:
    """The chain state of one writer over the partitions it writes. The raw sink asks for a
    record's headers when the record is first sent (in partition order: one record in flight per
    partition) and keeps them for every retry; a record Kafka refuses for good gives its sequence
    number back (:meth:`undo`), so the chain has no hole."""

    def __init__(self, writer: str, strip_prefix: str = "") -> None:
        self.writer = writer
        self.strip_prefix = strip_prefix  # TOPIC_PREFIX: the chain names the topic without it
        self._state: dict[tuple[str, int], tuple[int, bytes]] = {}  # (topic, partition) → (next seq, last hash)

    def headers(self, topic: str, partition: int, value: bytes) -> tuple[list[tuple[str, bytes]], tuple[int, bytes]]:
        """The chain headers of the next record of ``topic[partition]``, and the state to go back to
        if the record is refused."""
        base = topic.removeprefix(self.strip_prefix)
        key = (topic, partition)
        before = self._state.get(key)
        if before is None:
            before = (0, genesis(base, partition, self.writer))
        seq, previous = before
        chained = link(previous, seq, value_hash(value))
        self._state[key] = (seq + 1, chained)
        return [(WRITER_HEADER, self.writer.encode()), (SEQ_HEADER, str(seq).encode()),
                (CHAIN_HEADER, chained.hex().encode())], before

    def undo(self, topic: str, partition: int, before: tuple[int, bytes]) -> None:
        """The record whose headers left the chain at ``before`` never reached Kafka."""
        self._state[(topic, partition)] = before


# -- verification ------------------------------------------------------------------------------

@dataclass(slots=True)
class Finding:
    topic: str
    partition: int
    offset: int
    kind: str  # altered | removed | inserted | reordered | unchained | conflict
    detail: str

    def line(self) -> str:
        return f"{self.topic}[{self.partition}] offset {self.offset}: {self.kind.upper()}: {self.detail}"


@dataclass(slots=True)
class _Held:
    offset: int
    seq: int
    claimed: bytes
    vhash: bytes


@dataclass
class _Chain:
    """What the verifier knows of one writer's chain on one partition."""

    writer: str
    expected: int = -1  # next sequence number (-1: none seen yet)
    last: bytes = b""  # chain hash of the last record accepted
    last_vhash: bytes = b""
    last_offset: int = -1
    rivals: list[_Held] = field(default_factory=list)  # other records claiming the last seq
    ahead: dict[int, _Held] = field(default_factory=dict)  # records seen before their predecessor
    records: int = 0
    repeats: int = 0
    entered_at: int | None = None  # the first seq seen, when the chain enters the range mid-way


class PartitionVerifier:
    """Walks one raw partition's records in offset order (:meth:`add`), then :meth:`finish`.

    ``from_log_start``: the walk starts at offset 0 of a partition nothing was ever deleted from,
    so a chain whose first record is not its seq 0 lost its beginning (removed) rather than
    entering the range mid-way (a range start, or retention)."""

    def __init__(self, topic: str, base_topic: str, partition: int, from_log_start: bool) -> None:
        self.topic, self.base, self.partition = topic, base_topic, partition
        self.from_log_start = from_log_start
        self.chains: dict[str, _Chain] = {}
        self.findings: list[Finding] = []
        self.records = 0
        self.frames = 0
        self.unchained = 0
        self.first_offset: int | None = None
        self.last_offset: int | None = None

    def _find(self, offset: int, kind: str, detail: str) -> None:
        self.findings.append(Finding(self.topic, self.partition, offset, kind, detail))

    def add(self, offset: int, headers: dict[str, bytes], value: bytes, frames: int) -> None:
        self.records += 1
        self.frames += frames
        if self.first_offset is None:
            self.first_offset = offset
        self.last_offset = offset
        writer_b, seq_b, chain_b = headers.get(WRITER_HEADER), headers.get(SEQ_HEADER), headers.get(CHAIN_HEADER)
        if writer_b is None or seq_b is None or chain_b is None:
            self.unchained += 1
            self._find(offset, "unchained", "a record without chain headers: inserted, or written by a tool "
                       "that does not chain")
            return
        try:
            writer = writer_b.decode()
            seq = int(seq_b)
            claimed = bytes.fromhex(chain_b.decode())
        except (UnicodeDecodeError, ValueError):
            self._find(offset, "altered", f"chain headers unreadable ({writer_b[:60]!r}, {seq_b[:20]!r})")
            return
        chain = self.chains.get(writer)
        if chain is None:
            chain = self.chains[writer] = _Chain(writer)
        chain.records += 1
        self._step(chain, _Held(offset, seq, claimed, value_hash(value)))

    def _step(self, chain: _Chain, rec: _Held) -> None:
        if chain.expected < 0:
            self._start(chain, rec)
        elif rec.seq == chain.expected:
            self._next(chain, rec)
        elif rec.seq == chain.expected - 1:
            if rec.claimed == chain.last and rec.vhash == chain.last_vhash:
                chain.repeats += 1  # a producer retry sent it again: not tampering
            else:
                chain.rivals.append(rec)  # decided by the record after it (which one it links to)
        elif rec.seq > chain.expected:
            chain.ahead[rec.seq] = rec
            if len(chain.ahead) > LOOKAHEAD:
                self._gap(chain)
        else:
            self._find(rec.offset, "inserted", f"seq {rec.seq} of writer {chain.writer} again, after seq "
                       f"{chain.expected - 1} at offset {chain.last_offset}")

    def _start(self, chain: _Chain, rec: _Held) -> None:
        if rec.seq == 0:
            self._accept(chain, rec, genesis(self.base, self.partition, chain.writer))
            return
        if self.from_log_start:
            # seq 0 must come: held (as any record ahead of its predecessor) until it does — a swap
            # of a chain's first records is reordered — or LOOKAHEAD records later it is removed
            chain.expected, chain.last = 0, genesis(self.base, self.partition, chain.writer)
            chain.ahead[rec.seq] = rec
            return
        chain.entered_at = rec.seq  # the range starts mid-chain, or retention deleted its beginning
        self._trust(chain, rec)

    def _next(self, chain: _Chain, rec: _Held) -> None:
        if link(chain.last, rec.seq, rec.vhash) == rec.claimed:
            for rival in chain.rivals:
                self._find(rival.offset, "inserted", f"claims seq {rival.seq} of writer {chain.writer}, but the "
                           f"chain goes on from the record at offset {chain.last_offset}")
            chain.rivals.clear()
            self._accept(chain, rec, chain.last)
            return
        for rival in chain.rivals:  # the chain goes on from a rival: the record accepted before was inserted
            if link(rival.claimed, rec.seq, rec.vhash) == rec.claimed:
                self._find(chain.last_offset, "inserted", f"claims seq {rival.seq} of writer {chain.writer}, "
                           f"but the chain goes on from the record at offset {rival.offset}")
                chain.rivals.clear()
                chain.last = rival.claimed
                self._accept(chain, rec, chain.last)
                return
        self._find(rec.offset, "altered", f"seq {rec.seq} of writer {chain.writer} does not match its chain hash "
                   "(its frames or headers changed after it was written)")
        chain.rivals.clear()
        self._trust(chain, rec)

    def _accept(self, chain: _Chain, rec: _Held, previous: bytes) -> None:
        """``rec`` follows ``previous``: check its link (seq 0 and after a rival resolved)."""
        if link(previous, rec.seq, rec.vhash) != rec.claimed:
            self._find(rec.offset, "altered", f"seq {rec.seq} of writer {chain.writer} does not match its chain "
                       "hash (its frames or headers changed after it was written)")
        self._trust(chain, rec)

    def _trust(self, chain: _Chain, rec: _Held) -> None:
        chain.expected, chain.last, chain.last_vhash = rec.seq + 1, rec.claimed, rec.vhash
        chain.last_offset = rec.offset
        while chain.expected in chain.ahead:  # held back until their predecessor came
            early = chain.ahead.pop(chain.expected)
            if early.offset < chain.last_offset:  # it came before its predecessor: reordered
                self._find(early.offset, "reordered", f"seq {early.seq} of writer {chain.writer} comes before seq "
                           f"{early.seq - 1} (offset {chain.last_offset})")
            if link(chain.last, early.seq, early.vhash) != early.claimed:
                self._find(early.offset, "altered", f"seq {early.seq} of writer {chain.writer} does not match its "
                           "chain hash")
            chain.expected, chain.last, chain.last_vhash = early.seq + 1, early.claimed, early.vhash
            chain.last_offset = early.offset

    def _gap(self, chain: _Chain) -> None:
        """The next sequence number will not come: removed. Go on from the lowest one held."""
        lowest = min(chain.ahead)
        rec = chain.ahead.pop(lowest)
        missing = f"seq {chain.expected}" if lowest == chain.expected + 1 else f"seq {chain.expected}..{lowest - 1}"
        if chain.last_offset < 0:  # never began: its first records are gone
            self._find(rec.offset, "removed", f"writer {chain.writer} starts at seq {rec.seq}: its {missing} are "
                       "missing from a partition nothing was deleted from")
        else:
            self._find(rec.offset, "removed", f"{missing} of writer {chain.writer} missing before this record "
                       f"(after offset {chain.last_offset})")
        for rival in chain.rivals:
            self._find(rival.offset, "conflict", f"a second record claims seq {rival.seq} of writer {chain.writer}")
        chain.rivals.clear()
        self._trust(chain, rec)

    def finish(self) -> list[Finding]:
        for chain in self.chains.values():
            for rival in chain.rivals:
                self._find(rival.offset, "conflict", f"two records claim seq {rival.seq} of writer {chain.writer} "
                           f"(offsets {chain.last_offset} and {rival.offset}): one of them was inserted")
            chain.rivals.clear()
            while chain.ahead:
                self._gap(chain)
        self.findings.sort(key=lambda f: f.offset)
        return self.findings

    def ends(self) -> list[tuple[str, int, str, int, str]]:
        """(topic, partition, writer, last seq, last hash hex) of every chain: what the digest covers."""
        return [(self.base, self.partition, c.writer, c.expected - 1, c.last.hex()) for c in self.chains.values()]


def end_digest(ends: list[tuple[str, int, str, int, str]]) -> str:
    """One digest of where every chain of a range ends: write it down, check it later (``--expect``)."""
    text = "".join(f"{t}\t{p}\t{w}\t{s}\t{h}\n" for t, p, w, s, h in sorted(ends))
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


# -- walking the raw topics ----------------------------------------------------------------------

@dataclass
class Report:
    """What :func:`verify_topics` found over a range."""

    partitions: list[PartitionVerifier] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for p in self.partitions for f in p.findings]

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)

    @property
    def frames(self) -> int:
        return sum(p.frames for p in self.partitions)

    @property
    def repeats(self) -> int:
        return sum(c.repeats for p in self.partitions for c in p.chains.values())

    def digest(self) -> str:
        return end_digest([e for p in self.partitions for e in p.ends()])

    def lines(self) -> list[str]:
        """One line per partition (clean, or its findings, one line each), then the summary."""
        out: list[str] = []
        for p in self.partitions:
            if not p.records:
                continue
            where = f"{p.topic}[{p.partition}] offsets {p.first_offset}..{p.last_offset}"
            notes = []
            repeats = sum(c.repeats for c in p.chains.values())
            if repeats:
                notes.append(f"{repeats:,} repeats of a producer retry")
            entered = [f"{c.writer} at seq {c.entered_at}" for c in p.chains.values() if c.entered_at is not None]
            if entered:
                notes.append("chains entering the range mid-way (range start or retention): " + ", ".join(entered))
            state = "clean" if not p.findings else f"{len(p.findings)} findings"
            out.append(f"{where}: {p.records:,} records, {p.frames:,} frames, {len(p.chains)} writers, {state}"
                       + (f" ({'; '.join(notes)})" if notes else ""))
            out.extend("  " + f.line() for f in p.findings)
        kinds: dict[str, int] = {}
        for f in self.findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        verdict = "clean" if not kinds else "NOT CLEAN: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        topics = len({p.topic for p in self.partitions})
        out.append(f"verify: {verdict} — {topics} topics, {len(self.partitions)} partitions, {self.records:,} "
                   f"records, {self.frames:,} frames; end digest {self.digest()}")
        return out


def _frames(headers: dict[str, bytes], value: bytes) -> int:
    if headers.get("v") == b"2":
        return value.count(b"\n") + 1 if value else 0
    return 1


async def verify_topics(settings: Any, topics: list[str], from_ns: int | None = None, to_ns: int | None = None,
                        progress: Any = None) -> Report:
    """Walk the chains of ``topics`` (full names) between record times ``from_ns`` and ``to_ns``.
    ``progress(records)`` is called now and then on long walks."""
    from app.kafka import partitions_of, read_range, reading_consumer, stop_reading
    from app.wire import header_map

    consumer = await reading_consumer(settings)
    report = Report()
    try:
        tps: list[Any] = []
        for topic in topics:
            tps += await partitions_of(consumer, topic)
        if not tps:
            return report
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        begin = dict(starts)
        if from_ns is not None:
            found = await consumer.offsets_for_times({tp: from_ns // 1_000_000 for tp in tps})
            begin = {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}
        verifiers: dict[Any, PartitionVerifier] = {}
        for tp in tps:
            base = tp.topic.removeprefix(settings.topic_prefix)
            verifiers[tp] = PartitionVerifier(tp.topic, base, tp.partition,
                                              from_log_start=begin[tp] == 0 and starts[tp] == 0)
            report.partitions.append(verifiers[tp])
        seen = 0
        async for batch in read_range(consumer, begin, ends, None if to_ns is None else to_ns // 1_000_000):
            for tp, msgs in batch.items():
                verifier = verifiers[tp]
                for msg in msgs:
                    headers = header_map(msg.headers)
                    value = msg.value or b""
                    verifier.add(msg.offset, headers, value, _frames(headers, value))
                seen += len(msgs)
            if progress is not None:
                progress(seen)
        for verifier in verifiers.values():
            verifier.finish()
        return report
    finally:
        await stop_reading(consumer)
