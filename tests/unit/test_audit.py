"""The raw topics' hash chain (app.audit): every alteration, removal, insertion and reordering is
found at its offset; retries, range starts and refused records are not tampering."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from app.audit import CHAIN_HEADER, SEQ_HEADER, WRITER_HEADER, ChainWriter, PartitionVerifier, end_digest

Record = tuple[dict[str, bytes], bytes]  # headers, value


def written(n: int, writers: int = 2, seed: int = 1) -> list[Record]:
    """``n`` records of ``writers`` interleaved writers on raw.okx[3], as the raw sink chains them."""
    rng = random.Random(seed)
    chains = [ChainWriter(f"ingest/host/{w}/x", strip_prefix="t1.") for w in range(writers)]
    out = []
    for i in range(n):
        value = b'{"n":%d,"r":%d}' % (i, rng.randrange(10**9))
        headers, _ = chains[rng.randrange(writers)].headers("t1.raw.okx", 3, value)
        out.append(({"v": b"2", **dict(headers)}, value))
    return out


def walk(records: list[Record], from_log_start: bool = True) -> PartitionVerifier:
    verifier = PartitionVerifier("t2.raw.okx", "raw.okx", 3, from_log_start)
    for offset, (headers, value) in enumerate(records):
        verifier.add(offset, headers, value, 1)
    verifier.finish()
    return verifier


def kinds(v: PartitionVerifier) -> list[tuple[int, str]]:
    return [(f.offset, f.kind) for f in v.findings]


def test_a_clean_chain_is_clean_across_topic_prefixes_and_its_end_digest_is_stable() -> None:
    records = written(300)
    v = walk(records)
    assert v.findings == []
    assert v.records == 300
    assert len(v.chains) == 2
    assert end_digest(v.ends()) == end_digest(walk(written(300)).ends())
    assert end_digest(v.ends()) != end_digest(walk(written(299)).ends())


def test_one_byte_altered_is_found_at_its_offset() -> None:
    records = written(200)
    headers, value = records[117]
    records[117] = (headers, value[:5] + bytes([value[5] ^ 1]) + value[6:])
    assert kinds(walk(records)) == [(117, "altered")]


def test_a_removed_record_is_found_where_its_chain_goes_on() -> None:
    records = written(200, writers=1)
    del records[80]
    assert kinds(walk(records)) == [(80, "removed")]
    assert "seq 80 " in walk(records).findings[0].detail


def test_a_removed_last_record_changes_the_end_digest() -> None:
    records = written(50, writers=1)
    assert end_digest(walk(records[:-1]).ends()) != end_digest(walk(records).ends())


def test_an_inserted_record_with_a_forged_but_valid_link_is_found() -> None:
    """Whoever inserts can compute a link (the chain is not keyed): the record after it tells which
    of the two records claiming one sequence number the chain goes on from."""
    records = written(100, writers=1)
    headers, _ = records[40]
    seq = int(headers[SEQ_HEADER])
    forger = ChainWriter(headers[WRITER_HEADER].decode(), strip_prefix="t1.")
    for _ in range(seq):  # the forger's chain state up to the record before it
        forger.headers("t1.raw.okx", 3, b"")
    forger._state[("t1.raw.okx", 3)] = (seq, bytes.fromhex(records[39][0][CHAIN_HEADER].decode()))
    fake_headers, _ = forger.headers("t1.raw.okx", 3, b'{"fake":1}')
    records.insert(40, ({"v": b"2", **dict(fake_headers)}, b'{"fake":1}'))
    assert kinds(walk(records)) == [(40, "inserted")]


def test_a_copy_of_an_earlier_record_inserted_later_is_found() -> None:
    records = written(100, writers=1)
    records.insert(70, records[20])
    assert kinds(walk(records)) == [(70, "inserted")]


def test_an_unchained_record_is_reported() -> None:
    records = written(20)
    records.insert(5, ({"v": b"2"}, b'{"x":1}'))
    assert kinds(walk(records)) == [(5, "unchained")]


def test_two_swapped_records_are_reported_as_reordered_at_the_first() -> None:
    records = written(100, writers=1)
    records[30], records[31] = records[31], records[30]
    assert kinds(walk(records)) == [(30, "reordered")]


def test_a_producer_retry_repeat_is_not_tampering() -> None:
    records = written(100)
    records.insert(51, records[50])  # sent again after its acknowledgement was lost
    v = walk(records)
    assert v.findings == []
    assert sum(c.repeats for c in v.chains.values()) == 1


def test_a_chain_entering_mid_way_is_a_boundary_unless_nothing_was_ever_deleted() -> None:
    records = written(100, writers=1)[30:]
    assert kinds(walk(records, from_log_start=False)) == []
    assert walk(records, from_log_start=False).chains["ingest/host/0/x"].entered_at == 30
    assert kinds(walk(records, from_log_start=True)) == [(0, "removed")]


def test_a_refused_record_gives_its_sequence_number_back() -> None:
    chain = ChainWriter("replay/h/1/a")
    out = []
    for i in range(10):
        value = b"%d" % i
        headers, before = chain.headers("raw.okx", 0, value)
        if i == 4:
            chain.undo("raw.okx", 0, before)  # Kafka refused it for good: it is not in the topic
            continue
        out.append((dict(headers), value))
    v = PartitionVerifier("raw.okx", "raw.okx", 0, True)
    for offset, (headers, value) in enumerate(out):
        v.add(offset, headers, value, 1)
    assert v.finish() == []


def test_a_record_moved_to_another_partition_breaks_its_chain() -> None:
    records = written(10, writers=1)
    v = PartitionVerifier("t2.raw.okx", "raw.okx", 4, True)  # written for partition 3
    for offset, (headers, value) in enumerate(records):
        v.add(offset, headers, value, 1)
    assert [(f.offset, f.kind) for f in v.finish()] == [(0, "altered")]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["alter", "drop", "swap", "copy"]), st.integers(5, 150), st.integers(1, 3), st.integers(0, 99))
def test_any_single_tampering_is_found_at_its_offset(op: str, at: int, writers: int, seed: int) -> None:
    records = written(160, writers=writers, seed=seed)
    mine = records[at][0][WRITER_HEADER]
    expect: tuple[int, str]
    if op == "alter":
        headers, value = records[at]
        records[at] = (headers, value + b" ")
        expect = (at, "altered")
    elif op == "drop":
        del records[at]
        # found at the next record of the same writer
        nxt = next(i for i in range(at, len(records)) if records[i][0][WRITER_HEADER] == mine)
        expect = (nxt, "removed")
    elif op == "swap":
        j = next(i for i in range(at + 1, len(records)) if records[i][0][WRITER_HEADER] == mine)
        records[at], records[j] = records[j], records[at]
        expect = (at, "reordered")
    else:
        copy = records[at - 3]
        records.insert(at + 1, copy)
        writer = copy[0][WRITER_HEADER]
        previous = max(i for i in range(at + 1) if records[i][0][WRITER_HEADER] == writer)
        if records[previous] == copy:  # right after itself in its writer's chain: a retry's repeat
            assert kinds(walk(records)) == []
            return
        expect = (at + 1, "inserted")
    assert kinds(walk(records))[:1] == [expect], kinds(walk(records))


def test_a_swap_of_a_chains_first_two_records_is_reordered() -> None:
    """Found by the property above (3 writers, seed 90): a writer's seq 1 before its seq 0 was
    reported removed + inserted, not reordered."""
    records = written(40, writers=1)
    records[0], records[1] = records[1], records[0]
    assert kinds(walk(records)) == [(0, "reordered")]
    del records[1]  # seq 0 gone for good: its chain starts at seq 1
    assert kinds(walk(records)) == [(0, "removed")]
