"""A measurement, not a feature: the batched design of README "Performance", built only as far
as needed to time it (`make bench`, step `batching`).

    faust -A bench.batched worker      # with the environment bench/run.py sets

Records on ``<TOPIC_PREFIX>raw.batched`` each carry several frames of one instrument, every
one still verbatim with its headers: orjson ``[[kind, ts_recv, conn, frame], …]``. Per
record the worker runs the very same :class:`app.processor.Processor` over every frame,
then writes **one** table row per instrument (the changed levels and the state row, one
changelog record) and **one** ``book.top`` record holding every top change of the batch.
The real worker, by contrast, handles one Faust event per frame and one table write per
changed level. Left out, because they do not change the cost per frame: loading books back
from the table (every book starts empty, as in the throughput run) and recovery.
"""

from __future__ import annotations

from typing import Any

import faust
import orjson
from faust.types import StreamT

from app.core import settings  # also installs the worker's draining producer buffer
from app.processor import Processor

app = faust.App(
    settings.app_id,
    broker=settings.broker_url,
    store="rocksdb://",
    datadir=str(settings.data_dir),
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=settings.partitions,
    consumer_auto_offset_reset="earliest",
    stream_buffer_maxsize=settings.stream_buffer_maxsize,
    producer_linger=settings.producer_linger_ms / 1000.0,
    producer_compression_type=settings.compression,
    web_host="127.0.0.1",
    web_port=settings.web_port,
    web_bind="127.0.0.1",
)
raw = app.topic(settings.topic("raw.batched"))
tops_topic = app.topic(settings.topic("book.top.batched"))
rows = app.Table("batched", key_type=bytes, value_type=bytes, partitions=settings.partitions,
                 options={"block_cache_size": 32 * 1024 * 1024, "write_buffer_size": 16 * 1024 * 1024})
processor = Processor(lambda key: None, settings.buffer_max_frames)
counts = {"frames": 0, "records": 0, "dead": 0}

#: frame offsets for the processor's redelivery guard: record offset × this + index in batch
PER_RECORD = 1 << 16


@app.agent(raw, name="batched")
async def apply_batches(stream: StreamT) -> None:
    async for event in stream.events():
        key = event.message.key.decode()
        frames = orjson.loads(event.value)
        base = event.message.offset * PER_RECORD
        changed: dict[str, str | None] = {}
        tops: list[Any] = []
        inst = None
        for i, (kind, ts, conn, frame) in enumerate(frames):
            out = processor.handle(key, frame.encode(), {"kind": kind.encode(), "ts": ts.encode(),
                                                         "conn": conn.encode()}, base + i)
            inst = out.inst
            counts["dead"] += out.dead is not None
            for side, price, size in out.fx.changes:
                changed[side + price] = size
            tops.extend((seq, ts, tuple(top)) for seq, ts, top in out.fx.tops)  # orjson: no NamedTuples
        if inst is not None:
            rows[key.encode()] = orjson.dumps({"levels": changed, "state": inst.to_state()})
            if tops:
                tops_topic.send_soon(key=key.encode(), value=orjson.dumps(tops))
        counts["frames"] += len(frames)
        counts["records"] += 1


@app.page("/frames")
async def frames_done(web: Any, request: Any) -> Any:
    """Progress, and proof the books were really built: books synced, updates and levels applied."""
    books = processor.instruments.values()
    return web.json(counts | {"books": len(books), "synced": processor.synced(),
                              "applied": sum(i.counters["applied"] for i in books),
                              "levels": sum(i.counters["levels"] for i in books),
                              "gaps": sum(i.counters["gaps"] for i in books)})
