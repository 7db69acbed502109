"""Progress for long work: a bar on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, what: str, out: TextIO | None = None, every_s: float = 5.0) -> None:
        self.total = max(total, 0)
        self.what = what
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.every_s = every_s if not self.tty else 0.2
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        if self.tty:
            width = 30
            filled = int(width * pct / 100)
            bar = "#" * filled + "-" * (width - filled)
            end = "\n" if final else ""
            self.out.write(f"\r[{bar}] {pct:5.1f}% {self.done:,}/{self.total:,} {self.what} {rate:,.0f}/s{end}")
        else:
            self.out.write(f"progress: {self.done:,}/{self.total:,} {self.what} ({pct:.1f}%), {rate:,.0f}/s\n")
        self.out.flush()

    def finish(self) -> float:
        now = time.monotonic()
        self._draw(now, final=True)
        return now - self.start
