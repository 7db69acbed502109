"""How late the worker's event loop runs, and — on demand — what held it.

Every latency a frame sees inside the worker is time on one event loop: when a callback runs
for 20 ms, every record that arrives meanwhile waits those 20 ms, whatever stage it is in. A
**heartbeat** scheduled every ``BEAT_S`` measures how late it runs (``bookstream_loop_lag_seconds``):
lateness is time the loop spent on something else, or time the operating system did not run the
process at all (a machine whose cores are all busy). It costs one timer callback per beat.

The **stall tracer** (``LOOP_STALL_TRACE_MS``, off by default) says which: a thread looks at the
heartbeat every few milliseconds and, while it is more than the threshold late, samples the
loop thread's Python stack. When the loop comes back it logs one WARNING with the stall's length
and its most frequent stack (at most one line per ``LOG_EVERY_S``; ``loop_stalls`` counts them
all). A stack that is only the loop's own entry point means no Python code was running: the loop
was inside its C code, or the process was not scheduled. The thread takes the GIL for each look
(every threshold/2): a diagnostic, not a default.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import traceback
from types import FrameType

from app import metrics

log = logging.getLogger(__name__)

#: The heartbeat's period (seconds).
BEAT_S = 0.01
#: At most one stall line per this many seconds (every stall is counted).
LOG_EVERY_S = 5.0
#: Frames of a sampled stack kept (innermost first).
STACK_DEPTH = 6


def describe(frame: FrameType | None, depth: int = STACK_DEPTH) -> str:
    """The innermost ``depth`` frames of a stack, innermost first: ``file:function:line <- …``."""
    if frame is None:
        return "(no Python frame)"
    entries = traceback.extract_stack(frame)[-depth:]
    return " <- ".join(f"{e.filename.rsplit('/', 1)[-1]}:{e.name}:{e.lineno}" for e in reversed(entries))


class LoopWatch:
    """The heartbeat (always) and the stall tracer (when ``trace_ms`` > 0) of the running loop."""

    def __init__(self, trace_ms: float = 0.0, beat_s: float = BEAT_S) -> None:
        self.trace_s = trace_ms / 1000.0
        self.beat_s = beat_s
        self.last_beat = time.monotonic()  # the next beat is due beat_s after it
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._logged_at = -LOG_EVERY_S
        self._unlogged = 0
        #: the stalls traced so far: (seconds, most frequent stack), the last 100
        self.stalls: collections.deque[tuple[float, str]] = collections.deque(maxlen=100)

    def start(self) -> None:
        if self._handle is not None:
            return  # started already
        self._stop.clear()
        self._loop = asyncio.get_running_loop()
        self.last_beat = time.monotonic()
        self._handle = self._loop.call_at(self._loop.time() + self.beat_s, self._beat)
        if self.trace_s > 0:
            self._thread = threading.Thread(target=self._trace, args=(threading.get_ident(),),
                                            name="loop-stall-tracer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _beat(self) -> None:
        now = time.monotonic()
        metrics.observe_loop_lag(max(now - self.last_beat - self.beat_s, 0.0))
        self.last_beat = now
        assert self._loop is not None
        self._handle = self._loop.call_at(self._loop.time() + self.beat_s, self._beat)

    # -- the tracer thread ---------------------------------------------------------------
    def _trace(self, loop_thread: int) -> None:
        look = max(self.trace_s / 2, 0.002)
        while not self._stop.wait(look):
            began = self.last_beat
            if time.monotonic() - began - self.beat_s < self.trace_s:
                continue
            samples: collections.Counter[str] = collections.Counter()
            while self.last_beat == began and not self._stop.is_set():  # until the loop beats again
                samples[describe(sys._current_frames().get(loop_thread))] += 1
                time.sleep(0.002)
            held = self.last_beat - began - self.beat_s
            if held >= self.trace_s:
                self._stalled(held, samples)

    def _stalled(self, held: float, samples: collections.Counter[str]) -> None:
        stack, n = samples.most_common(1)[0] if samples else ("(not sampled)", 0)
        self.stalls.append((held, stack))
        metrics.count("loop_stalls")
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        self._logged_at, unlogged, self._unlogged = now, self._unlogged, 0
        log.warning("event loop held %.0f ms (LOOP_STALL_TRACE_MS=%.0f); in %d of %d samples: %s%s",
                    held * 1000, self.trace_s * 1000, n, sum(samples.values()), stack,
                    f" ({unlogged} more stalls since the last line)" if unlogged else "")
