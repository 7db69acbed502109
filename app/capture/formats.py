"""Capture readers: bookstream's native format and other tools' recordings.

Each reader yields :class:`Record` in capture order. Readers only read; routing to
instrument keys and topics is ``app.router``'s job, so live ingestion and replay share it.

Formats
-------
``native``      JSON Lines, one object per received frame (see README, "Capture format")::

                  {"ts": 1723161255030314667, "venue": "binance-usdm", "conn": "binance-usdm#1",
                   "kind": "ws", "url": "wss://…", "frame": "<frame text, verbatim>"}

``cryptofeed``  v1 text dumps (``NAME.ws.N.M`` with its ``NAME.http.N.M``) or v3 JSON Lines
                envelopes (``{"t":"recv","conn":…,"ts":…,"data":…}``). This is also the **dYdX raw
                dump** (the v4 indexer's frames verbatim, see :func:`read_cryptofeed`): a header
                naming ``DYDX`` or a ``connect`` to ``wss://indexer.dydx.trade/v4/ws`` says the venue.
``hftbacktest`` gzip text, ``<local_ts_ns> <frame json>`` per line; day files of one symbol
                given in order form one capture; the REST snapshot line names no symbol. Binance
                files (``btcusdt_YYYYMMDD.gz``) and Hyperliquid ones (``btc_YYYYMMDD.gz``: the
                collector's ``trades``, ``l2Book`` and ``bbo`` frames, each naming its coin).
"""

from __future__ import annotations

import gzip
import heapq
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson

from app.errors import CaptureError, ConfigError
from app.venues import VENUES
from app.venues.base import Kind

FORMATS = ("native", "cryptofeed", "hftbacktest")


@dataclass(slots=True)
class Record:
    """One captured frame (or connection event) with its original receive time."""

    ts: int  # receive time, ns since epoch
    venue: str
    conn: str  # connection id, unique within the capture
    kind: Kind
    frame: bytes  # verbatim
    url: str = ""  # connection or REST URL
    symbol: str = ""  # venue symbol when the format knows it but the frame does not


def venue_from_url(url: str, hint: str = "") -> str | None:
    """Venue id from an endpoint URL (and a file-name hint for Binance's spot/futures)."""
    parts = urlsplit(url)
    host, path = parts.hostname or "", parts.path
    if "deribit" in host:
        return "deribit"
    if "okx" in host or "okex" in host:
        return "okx"
    if "bybit" in host:
        for category in ("spot", "linear", "inverse", "option"):
            if path.rstrip("/").endswith(f"/{category}"):
                return f"bybit-{category}"
        return None
    if "coinbase" in host:
        return "coinbase"
    if "hyperliquid" in host:
        return "hyperliquid"
    if "dydx" in host:
        return "dydx"
    if "binance" in host:
        if host.startswith(("fstream", "fapi")):
            return "binance-usdm"
        if host.startswith(("dstream", "dapi")):
            return "binance-coinm"
        return "binance"
    return None


CRYPTOFEED_NAMES = {
    "BINANCE": "binance",
    "BINANCE_FUTURES": "binance-usdm",
    "BINANCE_DELIVERY": "binance-coinm",
    "DERIBIT": "deribit",
    "OKX": "okx",
    "COINBASE": "coinbase",
    "DYDX": "dydx",  # the v4 indexer (a v3 API capture is refused: see _dydx_v4)
    "HYPERLIQUID": "hyperliquid",
}


def _check_venue(venue: str | None, source: str) -> str:
    if venue is None:
        raise CaptureError(f"{source}: cannot tell the venue; pass --venue (one of {', '.join(VENUES)})")
    if venue not in VENUES:
        raise ConfigError(f"unknown venue {venue!r}; known venues: {', '.join(VENUES)}")
    return venue


def _open_text(path: Path) -> IO[bytes]:
    try:
        fh = path.open("rb")
        magic = fh.read(2)
        fh.seek(0)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read ({exc.strerror})") from exc
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh)  # type: ignore[return-value]
    return fh


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line without newline); CaptureError for a truncated or unreadable file."""
    fh = _open_text(path)
    lineno = 0
    try:
        with fh:
            for lineno, line in enumerate(fh, 1):  # noqa: B007 - lineno is used after the loop
                if not line.endswith(b"\n"):
                    yield lineno, line  # a last line without newline: the parser decides
                else:
                    yield lineno, line.rstrip(b"\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise CaptureError(f"{path}: truncated or corrupt compressed data after line {lineno} ({exc})") from exc
    except OSError as exc:
        raise CaptureError(f"{path}: read error after line {lineno} ({exc})") from exc


# -- native -------------------------------------------------------------------------
def read_native(path: Path, venue: str | None = None) -> Iterator[Record]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            kind = Kind(obj["kind"])
            rec = Record(
                ts=int(obj["ts"]), venue=str(obj["venue"]), conn=str(obj["conn"]), kind=kind,
                frame=obj["frame"].encode(), url=str(obj.get("url", "")), symbol=str(obj.get("symbol", "")),
            )
        except (orjson.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
            raise CaptureError(f"{path}:{lineno}: not a native capture record ({type(exc).__name__}: {exc})") from exc
        if venue and rec.venue != venue:
            continue
        _check_venue(rec.venue, f"{path}:{lineno}")
        yield rec


def write_native(rec: Record) -> bytes:
    """One native capture line (with trailing newline) for ``rec``."""
    obj: dict[str, Any] = {
        "ts": rec.ts, "venue": rec.venue, "conn": rec.conn, "kind": rec.kind.value,
        "frame": rec.frame.decode("utf-8", "surrogateescape"),
    }
    if rec.url:
        obj["url"] = rec.url
    if rec.symbol:
        obj["symbol"] = rec.symbol
    return orjson.dumps(obj) + b"\n"


# -- cryptofeed ---------------------------------------------------------------------
_V1_RECV = re.compile(rb"^(\d+(?:\.\d+)?): (.*)$", re.S)


def _epoch_ns(text: bytes | str | float) -> int:
    if isinstance(text, float | int):
        return round(float(text) * 1e9)
    raw = text.decode() if isinstance(text, bytes) else text
    whole, _, frac = raw.partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def _read_cryptofeed_v1(path: Path, venue_flag: str | None) -> Iterator[Record]:
    stem = path.name.split(".")[0]
    name_hint = CRYPTOFEED_NAMES.get(stem)
    is_http = ".http." in path.name
    conn_no = 0
    conn = f"{path.name}#0"
    venue = venue_flag or name_hint
    url = ""
    for lineno, line in _lines(path):
        if not line:
            continue
        try:
            if is_http:
                head, sep, rest = line.partition(b" -> ")
                ts_text, sep2, body = rest.partition(b": ")
                if not sep or not sep2:
                    raise CaptureError(f"{path}:{lineno}: not a cryptofeed http record")
                url = head.decode("utf-8", "replace")
                if "depth" not in url and "book" not in url.lower():
                    continue  # instrument lists and other REST calls: not part of a book
                v = venue_flag or venue_from_url(url) or name_hint
                yield Record(_epoch_ns(ts_text), _check_venue(v, str(path)), f"{path.name}#rest", Kind.REST, body,
                             url)
                continue
            if line.startswith((b"wss://", b"ws://")):
                addr, _, rest = line.partition(b" ")
                if rest.startswith(b"<->"):
                    conn_no += 1
                    conn = f"{path.name}#{conn_no}"
                    url = addr.decode("utf-8", "replace")
                    venue = venue_flag or venue_from_url(url) or name_hint
                    _dydx_v4(url, venue, f"{path}:{lineno}")
                continue  # "<-" lines are frames we sent
            m = _V1_RECV.match(line)
            if m is None:
                raise CaptureError(f"{path}:{lineno}: not a cryptofeed v1 record (truncated file?)")
            ts = _epoch_ns(m.group(1))
        except ValueError as exc:  # a timestamp that is not a number
            raise CaptureError(f"{path}:{lineno}: not a cryptofeed v1 record ({exc})") from exc
        yield Record(ts, _check_venue(venue, str(path)), conn, Kind.WS, m.group(2), url)


def _dydx_v4(addr: str, venue: str | None, where: str) -> None:
    """A dYdX connection must be to the v4 indexer: the v3 API (``api.dydx.exchange/v3/ws``,
    ``v3_orderbook`` with offsets, retired) has other frames, which no book here could follow."""
    if venue == "dydx" and "/v3/" in urlsplit(addr).path + "/":
        raise CaptureError(f"{where}: {addr} is dYdX's v3 API; bookstream reads the v4 indexer's frames "
                           "(wss://indexer.dydx.trade/v4/ws) only")


@dataclass(slots=True)
class _V3Conn:
    """A connection of a v3 dump: its address, venue, and the id its frames carry."""

    addr: str
    venue: str | None
    conn: str


def _read_cryptofeed_v3(path: Path, venue_flag: str | None) -> Iterator[Record]:
    exchange_hint = None
    conns: dict[str, _V3Conn] = {}
    opened: dict[str, int] = {}  # envelope conn id → connects seen
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            env = orjson.loads(line)
            t = env["t"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise CaptureError(f"{path}:{lineno}: not a cryptofeed v3 envelope (truncated file?)") from exc
        try:
            rec = _v3_record(env, t, conns, opened, venue_flag, exchange_hint, f"{path}:{lineno}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CaptureError(f"{path}:{lineno}: not a cryptofeed v3 record ({type(exc).__name__}: {exc})") from exc
        if t == "header":
            exchange_hint = CRYPTOFEED_NAMES.get(str(env.get("exchange", "")))
        if rec is not None:
            yield rec


def _v3_record(env: dict[str, Any], t: object, conns: dict[str, _V3Conn], opened: dict[str, int],
               venue_flag: str | None, exchange_hint: str | None, where: str) -> Record | None:
    if t == "connect":
        addr = str(env.get("addr", ""))
        venue = venue_flag or venue_from_url(addr) or exchange_hint
        _dydx_v4(addr, venue, where)
        # A connection id used again (a reconnect under the same name) is a NEW connection: its
        # frames get an id of their own, as live ingestion gives each connection one (a dYdX
        # ``message_id`` starts again at 0 there: its snapshot must not pass for a repeat).
        name = str(env["conn"])
        n = opened[name] = opened.get(name, 0) + 1
        conns[name] = _V3Conn(addr, venue, name if n == 1 else f"{name}~{n}")
    elif t == "recv":
        name = str(env["conn"])
        c = conns.get(name) or _V3Conn("", venue_flag or exchange_hint, name)
        data = env["data"]
        frame = data.encode() if isinstance(data, str) else orjson.dumps(data)
        return Record(_epoch_ns(env["ts"]), _check_venue(c.venue, where), c.conn, Kind.WS, frame, c.addr)
    elif t == "http" and str(env.get("url", "")).find("depth") >= 0:
        url = str(env["url"])
        venue = venue_flag or venue_from_url(url) or exchange_hint
        data = env["data"]
        return Record(_epoch_ns(env["ts"]), _check_venue(venue, where), str(env.get("conn", "rest")), Kind.REST,
                      data.encode() if isinstance(data, str) else orjson.dumps(data), url)
    return None


def read_cryptofeed(path: Path, venue: str | None = None) -> Iterator[Record]:
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return _read_cryptofeed_v3(path, venue)
    if ".ws." in path.name or ".http." in path.name:
        return _read_cryptofeed_v1(path, venue)
    raise CaptureError(f"{path}: not a cryptofeed dump name (NAME.ws.N.M, NAME.http.N.M or *.jsonl)")


def cryptofeed_companions(paths: list[Path]) -> list[Path]:
    """Add the ``.http`` file that belongs to each v1 ``.ws`` file (same NAME, same folder)."""
    out = list(paths)
    for path in paths:
        if ".ws." in path.name:
            stem = path.name.split(".ws.")[0]
            for other in sorted(path.parent.glob(f"{stem}.http.*")):
                if other not in out:
                    out.append(other)
    return out


# -- hftbacktest --------------------------------------------------------------------
#: ``<symbol>_<YYYYMMDD>.gz``, the symbol lower-cased by the collector (Hyperliquid's ``xyz:aapl``, ``@107`` too)
_HFT_NAME = re.compile(r"^([a-z0-9_:@-]+?)_\d{8}", re.I)
_HFT_DIRS = {"spot": "binance", "usdm": "binance-usdm", "coinm": "binance-coinm", "futures": "binance-usdm",
             "hyperliquid": "hyperliquid"}


def _hft_infer_venue(path: Path) -> str | None:
    """The venue of an hftbacktest file from its first frame that tells: Hyperliquid (every frame
    the collector keeps is ``{"channel":…,"data":…}``: trades, l2Book, bbo), or the Binance market
    of the first depth event (``pu``: futures)."""
    for _, line in _lines(path):
        if line.partition(b" ")[2].startswith(b'{"channel":'):
            return "hyperliquid"
        if b"depthUpdate" in line:
            m = re.search(rb'"s":"([^"]*)"', line)
            if b'"pu"' not in line:
                return "binance"
            return "binance-coinm" if m and b"_" in m.group(1) else "binance-usdm"
    return None


def read_hftbacktest(path: Path, venue: str | None = None, symbol: str | None = None) -> Iterator[Record]:
    m = _HFT_NAME.match(path.name)
    sym = (symbol or (m.group(1) if m else "")).upper()
    v = venue or _HFT_DIRS.get(path.parent.name.lower()) or _hft_infer_venue(path)
    conn = f"hftbacktest:{sym or path.name}"
    for lineno, line in _lines(path):
        if not line:
            continue
        ts_text, sep, frame = line.partition(b" ")
        if not sep or not ts_text.isdigit() or not frame.startswith(b"{"):
            raise CaptureError(f"{path}:{lineno}: not an hftbacktest line '<ns> <json>' (truncated file?)")
        kind = Kind.REST if frame.startswith(b'{"lastUpdateId"') else Kind.WS
        if kind is Kind.REST and not sym:
            raise CaptureError(
                f"{path}:{lineno}: REST snapshot names no symbol and the file name has none; pass --symbol"
            )
        yield Record(int(ts_text), _check_venue(v, str(path)), conn, kind, frame, "", sym if kind is Kind.REST else "")


# -- entry point --------------------------------------------------------------------
def read(paths: Iterable[Path], fmt: str, venue: str | None = None, symbol: str | None = None) -> Iterator[Record]:
    """All records of ``paths`` merged in receive-time order (stable for equal times)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown capture format {fmt!r}; use one of {', '.join(FORMATS)}")
    if venue is not None and venue not in VENUES:
        raise ConfigError(f"unknown venue {venue!r}; known venues: {', '.join(VENUES)}")
    plist = [Path(p) for p in paths]
    for p in plist:
        if not p.is_file():
            raise CaptureError(f"{p}: no such file")
    if fmt == "cryptofeed":
        plist = cryptofeed_companions(plist)
        streams = [read_cryptofeed(p, venue) for p in plist]
    elif fmt == "hftbacktest":
        streams = [read_hftbacktest(p, venue, symbol) for p in plist]
    else:
        streams = [read_native(p, venue) for p in plist]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda r: r.ts)
