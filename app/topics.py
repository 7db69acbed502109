"""Every topic the app reads or writes, with explicit partition counts.

All are co-partitioned with the ``books`` table (``TOPIC_PARTITIONS``) and keyed by
instrument key, so one instrument's raw frames, table rows and outputs share a partition
number. Names take the optional ``TOPIC_PREFIX``.
"""

from __future__ import annotations

import faust

from app.core import app, settings
from app.venues import VENUES


def raw_name(venue: str) -> str:
    return settings.topic(f"raw.{venue}")


def _topic(*names: str) -> faust.TopicT:
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        replicas=settings.replication,
    )


RAW_NAMES = [raw_name(v) for v in VENUES]
raw = _topic(*RAW_NAMES)  # the book agent's source: every venue's raw topic
book_top = _topic(settings.topic("book.top"))
book_depth = _topic(settings.topic("book.depth"))
book_status = _topic(settings.topic("book.status"))
control_resync = _topic(settings.topic("control.resync"))
deadletter = _topic(settings.topic("raw.deadletter"))

OUTPUTS = (book_top, book_depth, book_status, control_resync, deadletter)
ALL_NAMES = [*RAW_NAMES, *(t.get_topic_name() for t in OUTPUTS)]
