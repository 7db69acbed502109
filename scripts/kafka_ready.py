"""Readiness probe for a Kafka broker, standard library only.

Sends a real Metadata request (API key 3, version 0, all topics) and succeeds when the
broker answers with at least one registered broker. Used by scripts/kafka.sh before the
virtualenv exists, so it must not import anything outside the standard library.

Exit codes: 0 ready, 1 not ready (connection refused, no answer, no brokers yet).
"""

from __future__ import annotations

import socket
import struct
import sys

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


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by broker")
        buf.extend(chunk)
    return bytes(buf)


def main(argv: list[str]) -> int:
    host, _, port = (argv[1] if len(argv) > 1 else "127.0.0.1:9092").rpartition(":")
    try:
        return 0 if metadata_brokers(host or "127.0.0.1", int(port)) > 0 else 1
    except (OSError, ValueError, struct.error):
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
