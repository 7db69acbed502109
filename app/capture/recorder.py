"""Write received frames in bookstream's native capture format, rotating by size."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import IO

from app.capture.formats import Record, write_native
from app.errors import CaptureError

log = logging.getLogger(__name__)


class Recorder:
    """``bookstream-<UTC time>-<n>.jsonl`` files in ``out``, each at most ``rotate_mb`` MB."""

    def __init__(self, out: Path, rotate_mb: float = 256.0) -> None:
        if rotate_mb <= 0:
            raise CaptureError("--rotate-mb must be greater than 0")
        self.out = Path(out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaptureError(f"{self.out}: cannot create the capture folder ({exc.strerror})") from exc
        self.limit = int(rotate_mb * 1024 * 1024)
        self.files: list[Path] = []
        self.records = 0
        self._fh: IO[bytes] | None = None
        self._size = 0
        self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.failed: CaptureError | None = None  # once a write failed, the recorder stays failed

    def _rotate(self) -> None:
        self.close()
        path = self.out / f"bookstream-{self._stamp}-{len(self.files) + 1:04d}.jsonl"
        try:
            self._fh = path.open("xb")
        except OSError as exc:
            raise CaptureError(f"{path}: cannot create a capture file ({exc.strerror}); check the folder "
                               "is writable") from exc
        self.files.append(path)
        self._size = 0
        log.info("recording to %s", path)

    def write(self, rec: Record) -> None:
        if self.failed is not None:
            # No new file after a failed write: on a full disk it would fail too (or hold a few
            # frames after a gap), and the error must keep naming the file that failed.
            raise self.failed
        line = write_native(rec)
        if self._fh is None or (self._size and self._size + len(line) > self.limit):
            self._rotate()
        assert self._fh is not None
        try:
            self._fh.write(line)
        except OSError as exc:
            raise self._write_failed(exc) from exc
        self._size += len(line)
        self.records += 1

    def flush(self) -> None:
        if self.failed is not None:
            raise self.failed
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                raise self._write_failed(exc) from exc

    def _write_failed(self, exc: OSError) -> CaptureError:
        """A write failed (disk full, file too large): end the file at its last whole line, so
        that everything recorded before stays a valid capture, and say what to do."""
        path = self.files[-1]
        if self._fh is not None:  # close first (its last flush fails too), then trim what landed
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        try:
            with path.open("r+b") as fh:
                end = fh.seek(0, 2)
                pos = end
                while pos > 0:
                    step = min(pos, 64 * 1024)
                    fh.seek(pos - step)
                    chunk = fh.read(step)
                    cut = chunk.rfind(b"\n")
                    if cut >= 0:
                        fh.truncate(pos - step + cut + 1)
                        break
                    pos -= step
                else:
                    fh.truncate(0)
        except OSError as trim_exc:
            log.error("could not trim the partial last line of %s: %s", path, trim_exc)
        self.failed = CaptureError(f"{path}: writing the capture failed ({exc.strerror}); free disk space or "
                                   "record to another folder (--out)")
        return self.failed

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                log.error("closing %s failed: %s", self.files[-1], exc)
            self._fh = None
