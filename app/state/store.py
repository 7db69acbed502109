"""The local copy of the books table: one RocksDB (rocksdict) per table partition.

``DATA_DIR/state/books-<partition>/`` holds that partition's rows (see :mod:`app.state.layout`)
and a checkpoint row saying where the copy stands in the changelog. A write goes in RocksDB
write batches of at most :data:`WRITE_BATCH_ROWS` rows, the checkpoint in the last: a SIGKILL at
any instant leaves the copy at its checkpoint, or past it with rows of the commits after it,
which the restore writes again from the changelog before anything reads the copy (it reads from
the checkpoint, in log order: later wins). RocksDB drops a torn write-ahead-log record on open.
The worker's periodic writes, the restore's and the standby copies' run on one background
thread (:meth:`PartitionStore.write_soon`), one at a time and in order; a read waits for them.

Why batches, and why that thread hands the GIL over between them: rocksdict holds the GIL for
the whole of a write, measured (0.3.29: 19 ms for a batch of 50,000 rows, during which no other
Python thread ran), so one large batch held the worker's event loop as long, background thread
or not. In batches of 1,000 rows with a ``time.sleep(0)`` between them another thread waited at
most ~2 ms, and the whole write took no longer.

A copy that cannot be opened (corrupted files) is discarded and rebuilt from the changelog;
one that cannot be removed stops the worker with the path and what to do.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import cast

import rocksdict

from app.errors import ConfigError
from app.state.layout import CHECKPOINT_KEY, PROGRESS_PREFIX, Checkpoint, decode_progress

log = logging.getLogger(__name__)

# One thread keeps every background write in submission order.
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rocksdb-write")
#: Rows per RocksDB write batch (rocksdict holds the GIL for a whole write: see the module's doc).
WRITE_BATCH_ROWS = 1000

@dataclass(frozen=True)
class TableSpec:
    """A table declaration (``tables/``): its name and its RocksDB options per partition."""

    name: str
    block_cache_bytes: int
    write_buffer_bytes: int
    max_write_buffers: int

    def options(self) -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(self.write_buffer_bytes)
        opts.set_max_write_buffer_number(self.max_write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(rocksdict.Cache(self.block_cache_bytes))
        opts.set_block_based_table_factory(table)
        return opts


class PartitionStore:
    """One partition's local rows, used from the event loop; only :meth:`write_soon` hands a
    write to the background thread, and every other write, read or close waits for it first."""

    def __init__(self, path: Path, partition: int, spec: TableSpec) -> None:
        self.path = path
        self.partition = partition
        self.spec = spec
        self.db = self._open()
        self._writing: Future[None] | None = None

    def _open(self) -> rocksdict.Rdict:
        try:
            db = rocksdict.Rdict(str(self.path), options=self.spec.options())
            Checkpoint.decode(db.get(CHECKPOINT_KEY))
            return db
        except Exception as exc:  # noqa: BLE001 - any failure to open or read it: the copy cannot be trusted
            log.warning("discarding local table state in %s (%s): partition %d is rebuilt from the changelog",
                        self.path, str(exc)[:200], self.partition)
            self._remove()
            return rocksdict.Rdict(str(self.path), options=self.spec.options())

    def _remove(self) -> None:
        try:
            shutil.rmtree(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(f"cannot discard the local table state in {self.path} ({exc.strerror}: "
                              f"{exc.filename}); remove that folder by hand (it is rebuilt from the changelog) or "
                              "fix its permissions") from exc

    def wipe(self, why: str) -> None:
        """Throw the copy away (it is rebuilt from the changelog)."""
        log.info("discarding local table state in %s (%s)", self.path, why)
        self.close()
        self._remove()
        self.db = rocksdict.Rdict(str(self.path), options=self.spec.options())

    def close(self) -> None:
        try:
            self._settle()
            self.db.close()
        except Exception:  # noqa: BLE001 - closing a broken handle: nothing to keep
            log.debug("closing %s", self.path, exc_info=True)

    # -- reading (after the writes handed over: a read sees every write before it) ---------
    def checkpoint(self) -> Checkpoint:
        self._settle()
        return Checkpoint.decode(self.db.get(CHECKPOINT_KEY))

    def progress(self) -> dict[str, int]:
        return decode_progress(self.items(PROGRESS_PREFIX))

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Rows in key order, from ``prefix`` while keys start with it."""
        self._settle()
        it = cast(Iterator[tuple[bytes, bytes]], self.db.items(from_key=prefix) if prefix else self.db.items())
        for key, value in it:
            if prefix and not key.startswith(prefix):
                break
            yield key, value

    def get(self, key: bytes) -> bytes | None:
        self._settle()
        value = self.db.get(key)
        return value if value is None else bytes(value)

    # -- writing ----------------------------------------------------------------------
    def write(self, records: Iterable[tuple[bytes, bytes | None]], checkpoint: Checkpoint) -> None:
        """Rows in log order (later wins, None deletes), then the checkpoint, in write batches of
        :data:`WRITE_BATCH_ROWS` (the checkpoint in the last: see the module's doc).

        A commit's rows carry their progress rows (:func:`app.state.layout.progress_key`), so
        the rows and the source offsets they cover are in the copy once its checkpoint says so."""
        self._settle()
        self._write(records, checkpoint)

    async def write_soon(self, records: Iterable[tuple[bytes, bytes | None]], checkpoint: Checkpoint) -> None:
        """:meth:`write` on the background thread, after the writes handed over before it.

        The write is handed over before the first await: cancelling the caller never loses or
        reorders it (one thread runs them in order), and the next :meth:`write` or :meth:`close`
        waits for it. ``records`` must not change any more."""
        self._writing = writing = _WRITER.submit(self._write, records, checkpoint)
        await asyncio.shield(asyncio.wrap_future(writing))

    def _settle(self) -> None:
        """Wait for the last background write handed over (and so for every one before it)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            try:
                writing.result()
            except Exception:  # noqa: BLE001 - already raised to the commit that handed it over
                log.debug("background write of %s had failed", self.path, exc_info=True)

    def _write(self, records: Iterable[tuple[bytes, bytes | None]], checkpoint: Checkpoint) -> None:
        rows = iter(records)
        while True:
            batch = rocksdict.WriteBatch(raw_mode=True)
            put, delete = batch.put, batch.delete
            chunk = list(islice(rows, WRITE_BATCH_ROWS))
            for key, value in chunk:
                if value is None:
                    delete(key)
                else:
                    put(key, value)
            if len(chunk) < WRITE_BATCH_ROWS:
                break
            self.db.write(batch)
            time.sleep(0)  # let a thread waiting for the GIL (the event loop) take it
        checkpoint.written_at_ms = int(time.time() * 1000)
        batch.put(CHECKPOINT_KEY, checkpoint.encode())
        self.db.write(batch)


class LocalStore:
    """Every partition copy of one table under ``DATA_DIR/state``: opened on demand, kept on disk."""

    def __init__(self, data_dir: Path, spec: TableSpec) -> None:
        self.root = data_dir / "state"
        self.spec = spec
        self.open_stores: dict[int, PartitionStore] = {}

    def path(self, partition: int) -> Path:
        return self.root / f"{self.spec.name}-{partition}"

    def open(self, partition: int) -> PartitionStore:
        store = self.open_stores.get(partition)
        if store is None:
            self.root.mkdir(parents=True, exist_ok=True)
            store = self.open_stores[partition] = PartitionStore(self.path(partition), partition, self.spec)
        return store

    def close(self, partition: int) -> None:
        store = self.open_stores.pop(partition, None)
        if store is not None:
            store.close()

    def close_all(self) -> None:
        for partition in list(self.open_stores):
            self.close(partition)
