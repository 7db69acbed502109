"""JSON decoding shared by the adapters: orjson, with malformed input as FrameError."""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import FrameError


def loads(frame: bytes | str) -> Any:
    """Decode a frame; ``FrameError("bad-json")`` for anything that is not JSON."""
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise FrameError("bad-json", str(exc)[:80]) from None


def obj(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else ``FrameError("bad-shape")``."""
    if not isinstance(value, dict):
        raise FrameError("bad-shape", f"{what} is not an object")
    return value
