"""A durable local spool in front of a slow remote store (S3).

``put`` writes to the local spool (fsync, so it is durable when the archive acknowledges)
and queues the key; background threads upload queued objects to the remote store and only
then drop the spool copy. Reads are served from the spool while an upload is pending, then
from the remote store. On start every object still in the spool is queued again, so a crash
or a kill at any point loses nothing that ``put`` returned for. While the remote store is
down, uploads are retried with backoff; ingest keeps working as long as the spool has room.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from storage.base import ObjectNotFound, ObjectStore, StorageError, check_key
from storage.folder import FolderStore

log = logging.getLogger(__name__)


class SpooledStore:
    """``ObjectStore`` that acknowledges on the local spool and uploads in the background."""

    eventually_consistent = True  # another node may read before our upload lands

    def __init__(self, spool: FolderStore, remote: ObjectStore, workers: int = 4,
                 max_backoff: float = 30.0) -> None:
        self.spool = spool
        self.remote = remote
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        self._cancelled: set[str] = set()  # deleted while queued or uploading
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._max_backoff = max_backoff
        self._threads = [threading.Thread(target=self._upload_loop, name=f"s3-upload-{n}",
                                          daemon=True) for n in range(max(1, workers))]
        self.spool.check()  # creates the spool folder
        for key in self.spool.keys():  # resume uploads left by a previous run
            self._enqueue(key)
        if self._pending:
            log.info("resuming %d pending upload(s) to %s", len(self._pending), remote.url)
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        return f"{self.remote.url} (spool {self.spool.url})"

    def _enqueue(self, key: str) -> None:
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
        self._queue.put(key)

    def _upload_loop(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            key = self._queue.get()
            if key is None:
                return
            try:
                self._upload(key)
                with self._lock:
                    cancelled = key in self._cancelled
                if cancelled:  # deleted while we uploaded: our copy landed after its delete
                    self.remote.delete(key)
                self.spool.delete(key)
                backoff = 0.5
                self._done(key)
            except ObjectNotFound:  # deleted meanwhile
                self._done(key)
            except Exception as exc:  # noqa: BLE001 - an upload thread must never die
                log.warning("upload of %s failed (%s); retrying in %.1f s", key, exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                self._queue.put(key)

    def _done(self, key: str) -> None:
        with self._lock:
            self._pending.discard(key)
            self._cancelled.discard(key)
            self._lock.notify_all()

    def _upload(self, key: str) -> None:
        """Stream the spool file to the remote store (never whole in memory)."""
        try:
            stream = open(self.spool.root / check_key(key), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"spool read failed: {exc}") from exc
        with stream:
            self.remote.put(key, stream, os.fstat(stream.fileno()).st_size)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued upload has landed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def put(self, key: str, data: bytes | BinaryIO, length: int = -1) -> None:
        self.spool.put(key, data, length)
        self._enqueue(key)

    def get(self, key: str) -> bytes:
        try:
            return self.spool.get(key)
        except ObjectNotFound:
            return self.remote.get(key)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if self.spool.exists(key):
            try:
                yield from self.spool.iter_chunks(key, chunk_size)
                return
            except ObjectNotFound:
                pass  # uploaded and dropped between the two calls
        yield from self.remote.iter_chunks(key, chunk_size)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            return self.spool.get_range(key, offset, length)
        except ObjectNotFound:
            return self.remote.get_range(key, offset, length)

    def size(self, key: str) -> int:
        try:
            return self.spool.size(key)
        except ObjectNotFound:
            return self.remote.size(key)

    def exists(self, key: str) -> bool:
        return self.spool.exists(key) or self.remote.exists(key)

    def delete(self, key: str) -> None:
        """Remove the object; an upload of it in flight removes its remote copy when it lands
        (it would otherwise recreate the object after this delete: an orphan)."""
        with self._lock:
            if key in self._pending:
                self._cancelled.add(key)
        self.spool.delete(key)
        self.remote.delete(key)

    def keys(self, prefix: str = "") -> Iterator[str]:
        seen = set(self.spool.keys(prefix))
        yield from seen
        for key in self.remote.keys(prefix):
            if key not in seen:
                yield key

    def check(self) -> None:
        self.spool.check()
        try:
            self.remote.check()
        except StorageError as exc:  # ingest still works on the spool
            log.warning("remote store %s unavailable (%s): objects stay in the spool",
                        self.remote.url, exc)

    def close(self) -> None:
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(10)
        self.remote.close()
        self.spool.close()

