"""The book agent: Faust's group over the worker's table partitions, and the book timers.

The agent subscribes to the assignment topic (``<APP_ID>-partitions``: no records, TOPIC_PARTITIONS
partitions): Faust's co-partitioning assignor gives each worker table partitions (actives and
standbys) through it, and ``app.faust_glue`` passes them to ``app.runtime``. The raw records
themselves are read by ``app.rawreader`` on this loop, one ``BookRuntime.handle`` per record,
without Faust's per-event stream machinery (README "Where the time goes").
"""

from __future__ import annotations

from faust.types import StreamT

from app.worker import app, settings

runtime = app.runtime
assignment = app.topic(runtime.topics.assignment, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=settings.partitions,
                       replicas=None)  # None: the factor resolved at start (app.worker)


@app.agent(assignment, name="books")
async def books_agent(stream: StreamT) -> None:
    async for _ in stream.events():  # nothing is written to the assignment topic
        pass


@app.timer(interval=max(min(settings.depth_interval_ms / 2000, (settings.top_conflate_ms or 10**9) / 2000, 0.1), 0.005))
async def _publish_due() -> None:
    """book.depth that waited for its interval; conflated book.top (TOP_CONFLATE_MS)."""
    runtime.tick()


@app.timer(interval=1.0)
async def _retry_resyncs() -> None:
    runtime.age_books()  # books whose venue time is too old, with no frame to say so (Hyperliquid)
    runtime.retry_resyncs()
