"""Readiness probe for a Kafka broker or cluster, standard library only.

Sends a real Metadata request and succeeds when the broker answers with at least one
registered broker (``--brokers N``: at least N; ``--node ID``: broker ID among them).
``--leader TOPIC:PARTITION`` prints the node id leading that partition instead. Used by
scripts/kafka.sh before the virtualenv exists, so it must not import anything outside the
standard library.

Exit codes: 0 ready (or leader printed), 1 not ready (connection refused, no answer, too few
brokers yet, no leader).
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
from dataclasses import dataclass, field

CLIENT_ID = b"bookstream-ready"


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> int:
    """Return how many brokers the cluster metadata lists (raises OSError on failure)."""
    # Request header v1: api_key, api_version, correlation_id, client_id (string);
    # body v0: topics array, length 0 meaning "all topics".
    body = struct.pack(">hhih", 3, 0, 7, len(CLIENT_ID)) + CLIENT_ID + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _read_exact(sock, 4))[0]
        payload = _read_exact(sock, size)
    correlation_id, broker_count = struct.unpack(">ii", payload[:8])
    if correlation_id != 7:
        raise OSError(f"unexpected correlation id {correlation_id}")
    return int(broker_count)


@dataclass
class PartitionMeta:
    leader: int  # -1 while the partition has no leader
    replicas: list[int]
    isr: list[int]


@dataclass
class Metadata:
    """What one broker's Metadata (v1) answer says about the cluster."""

    brokers: dict[int, tuple[str, int]]  # live (registered, unfenced) brokers: node id -> (host, port)
    controller_id: int
    topics: dict[str, dict[int, PartitionMeta]] = field(default_factory=dict)
    topic_errors: dict[str, int] = field(default_factory=dict)  # error code of a topic that has one


def metadata(host: str, port: int, topics: list[str] | None = None, timeout: float = 2.0) -> Metadata:
    """A Metadata v1 request for ``topics`` (None: every topic); raises OSError on failure."""
    corr = 11
    body = struct.pack(">hhih", 3, 1, corr, len(CLIENT_ID)) + CLIENT_ID
    if topics is None:
        body += struct.pack(">i", -1)  # v1: null array means every topic
    else:
        body += struct.pack(">i", len(topics))
        for t in topics:
            raw = t.encode()
            body += struct.pack(">h", len(raw)) + raw
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _read_exact(sock, 4))[0]
        payload = _read_exact(sock, size)
    try:
        return _parse_metadata_v1(payload, corr)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise OSError(f"malformed metadata response: {exc}") from exc


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode()

    def int_array(self) -> list[int]:
        return [self.take(">i") for _ in range(max(0, self.take(">i")))]


def _parse_metadata_v1(payload: bytes, corr: int) -> Metadata:
    r = _Reader(payload)
    if (got := r.take(">i")) != corr:
        raise OSError(f"unexpected correlation id {got}")
    brokers: dict[int, tuple[str, int]] = {}
    for _ in range(r.take(">i")):
        node_id = r.take(">i")
        host = r.string() or ""
        port = r.take(">i")
        r.string()  # rack
        brokers[node_id] = (host, port)
    meta = Metadata(brokers, r.take(">i"))
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string() or ""
        r.take(">?")  # is_internal
        parts: dict[int, PartitionMeta] = {}
        for _ in range(r.take(">i")):
            r.take(">h")  # partition error (e.g. LEADER_NOT_AVAILABLE): the leader field says it
            index = r.take(">i")
            leader = r.take(">i")
            parts[index] = PartitionMeta(leader, r.int_array(), r.int_array())
        meta.topics[name] = parts
        if error:
            meta.topic_errors[name] = error
    return meta


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by broker")
        buf.extend(chunk)
    return bytes(buf)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:9092", help="host:port of one broker")
    parser.add_argument("--brokers", type=int, default=1, help="ready once the metadata lists this many brokers")
    parser.add_argument("--node", type=int, default=None, help="ready once this node id is among them")
    parser.add_argument("--leader", metavar="TOPIC:PARTITION", help="print the node id leading this partition")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv[1:])
    host, _, port = args.address.rpartition(":")
    try:
        if args.leader:
            topic, _, part = args.leader.rpartition(":")
            meta = metadata(host or "127.0.0.1", int(port), [topic], args.timeout)
            p = meta.topics.get(topic, {}).get(int(part))
            if p is None or p.leader < 0:
                return 1
            print(p.leader)
            return 0
        meta = metadata(host or "127.0.0.1", int(port), [], args.timeout)
    except (OSError, ValueError, struct.error):
        return 1
    if len(meta.brokers) < max(1, args.brokers):
        return 1
    return 0 if args.node is None or args.node in meta.brokers else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
