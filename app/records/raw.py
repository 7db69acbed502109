"""``raw.<venue>``: every frame as received, and ``conn`` frames written by ingestion and replay."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from app.records.common import Ns, Record


class RawLine(Record, kw_only=True):
    """One line of a version-2 raw record (header ``v`` = ``2``; the record's value is JSON
    Lines, one of these per frame). Key: the instrument key when every frame is about one
    instrument, else ``<venue>:*``."""

    key: Annotated[str, Meta(description="the frame's instrument key; <venue>: for a frame about no instrument")]
    ts: Annotated[Ns, Meta(description="receive time")]
    kind: Literal["ws", "rest", "conn"]
    conn: Annotated[str, Meta(description="connection id, unique within an ingestion or replay run")]
    frame: Annotated[str | UnsetType, Meta(description="the frame exactly as received (UTF-8 text)")] = UNSET
    frame_b64: Annotated[str | UnsetType, Meta(description="a frame not UTF-8, base64")] = UNSET


class ConnEvent(Record, kw_only=True):
    """The frame of a ``conn`` line: the connection's ``gap`` or ``reset``, or a subscription
    ``refused``, ``unconfirmed``, ``silent`` or ``recovered``."""

    event: Annotated[str, Meta(description="gap | reset | refused | unconfirmed | silent | recovered")]
    detail: Annotated[str, Meta(description="what happened, in the venue's words where it gave some")]
    feed: Annotated[str | UnsetType, Meta(description="book, or the channel's name (subscriptions)")] = UNSET
    channel: Annotated[str | UnsetType, Meta(description="the subscription's channel id (subscriptions)")] = UNSET
