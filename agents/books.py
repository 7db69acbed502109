"""The book agent: every ``raw.<venue>`` topic → ``app.runtime`` (a thin Faust shell).

One Faust event per raw record, however many frames it carries; concurrency 1 per partition
(ordered and stateful). While the outputs wait for Kafka beyond their budget the agent waits
too, and Faust's flow control pauses the raw partitions behind it. ``BookRuntime.handle``
applies each frame exactly once — or ignores a redelivered record, or one past a hole —
records the table rows and publishes the outputs.
It never raises: an exception in a faust agent acks the message and kills the agent.
"""

from __future__ import annotations

import time

from faust.types import StreamT

from app import metrics
from app.worker import app, settings

runtime = app.runtime
raw = app.topic(*runtime.topics.raw, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                partitions=settings.partitions, replicas=None)  # None: the factor resolved at start (app.worker)


@app.agent(raw, name="books")
async def books_agent(stream: StreamT) -> None:
    handle = runtime.handle
    sink = runtime.sink
    observe = metrics.observe_stage
    async for event in stream.events():
        msg = event.message
        start = time.time()
        observe("fetch", start - msg.timestamp)  # its Kafka time (Faust gives seconds): when the sink sent it
        handle(msg.topic, msg.partition, msg.offset, msg.key, msg.value, msg.headers)
        observe("apply", time.time() - start)
        if sink.full():
            # Flow control: the outputs wait for Kafka beyond OUTPUT_BUFFER_MB. Taking no more raw
            # records fills this stream's buffer and Faust stops fetching its partitions until the
            # outputs drain (app.outputs): late, never lossy.
            await sink.room()


@app.timer(interval=max(min(settings.depth_interval_ms / 2000, (settings.top_conflate_ms or 10**9) / 2000, 0.1), 0.005))
async def _publish_due() -> None:
    """book.depth that waited for its interval; conflated book.top (TOP_CONFLATE_MS)."""
    runtime.tick()


@app.timer(interval=1.0)
async def _retry_resyncs() -> None:
    runtime.retry_resyncs()
