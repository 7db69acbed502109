"""The exceptions bookstream raises, in one tree.

    BookstreamError
    ├── ConfigError          bad setting or command-line value; fix and restart
    ├── CaptureError         a capture file is unreadable, truncated or of another format
    └── FrameError           one frame cannot be used; it goes to raw.deadletter with `reason`
        └── VenueFault       the frame is the venue saying one instrument's stream failed: no dead
                             letter, the book goes stale with the venue's words and resyncs

Messages say what to do next; causes are chained with ``raise … from exc``.
"""

from __future__ import annotations


class BookstreamError(Exception):
    """Base of every error bookstream raises on purpose."""


class ConfigError(BookstreamError):
    """A setting or option has a value bookstream cannot use."""


class CaptureError(BookstreamError):
    """A capture file cannot be replayed (unknown format, unreadable, truncated)."""


class FrameError(BookstreamError):
    """A frame is malformed or not what its venue sends. ``reason`` is short and stable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail



class VenueFault(FrameError):
    """The venue reports that one instrument's stream failed (dYdX: "Internal error, could not
    fetch data for subscription: v4_orderbook"): raised by an adapter's ``parse``, the book goes
    stale with ``detail`` and asks for a resync (``app.sync.Instrument.venue_fault``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("venue-fault", detail)
