"""A durable local spool in front of a slow remote store (S3).

``put`` writes to the local spool (fsync, so it is durable when the archive acknowledges)
and queues the key; background threads upload queued objects to the remote store and only
then drop the spool copy. Reads are served from the spool while an upload is pending, then
from the remote store. On start every object still in the spool is queued again, so a crash
or a kill at any point loses nothing that ``put`` returned for. While the remote store is
down, uploads are retried with backoff; ingest keeps working as long as the spool has room.

Uploads may run in another process than the puts (``pacs serve`` does: the DICOM and web
processes then spend no time or interpreter lock on uploads, and the uploading process runs
at a lower priority than ingest): the putting processes' stores are made with a
:class:`Doorbell` and only spool and ring it; one process runs :func:`run_uploads` with an
ordinary ``SpooledStore``. A ring that is lost (the pipe full, the uploader restarting) costs
nothing: the uploader rescans the spool every ``RESCAN_SECONDS``. That process can hold its
uploads back while rings keep coming (``defer``, ``PACS_S3_UPLOAD_DEFER``), for an S3 server
that shares the machine with the archive.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from storage.base import ObjectNotFound, ObjectStore, StorageError, check_key
from storage.folder import FolderStore

log = logging.getLogger(__name__)

RESCAN_SECONDS = 60.0  # how often the uploading process looks for spooled keys not rung
REPORT_SECONDS = 60.0  # how often it logs a backlog of pending uploads
STORING_GAP = 0.5  # seconds without a ring after which stores count as paused


class Doorbell:
    """Keys spooled by some processes, for the one process that uploads them: a pipe whose
    writers never block (a full pipe drops the ring; the uploader's rescan finds the key).

    Made before the processes start and passed to them (it pickles with their arguments)."""

    def __init__(self) -> None:
        self._reader, self._writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
        os.set_blocking(self._writer.fileno(), False)
        self._partial = b""

    def ring(self, key: str) -> bool:
        """Tell the uploader ``key`` is spooled; False when the ring was dropped."""
        try:  # one write of at most PIPE_BUF bytes: whole or not at all (keys <= 512 ASCII)
            os.write(self._writer.fileno(), key.encode("ascii") + b"\n")
            return True
        except OSError:  # BlockingIOError when full; the rescan picks the key up
            return False

    def wait(self, timeout: float) -> list[str]:
        """Keys rung since the last call, waiting up to ``timeout`` seconds for the first."""
        if not self._reader.poll(timeout):
            return []
        data = self._partial + os.read(self._reader.fileno(), 1 << 16)
        *lines, self._partial = data.split(b"\n")
        return [line.decode("ascii") for line in lines if line]


class SpooledStore:
    """``ObjectStore`` that acknowledges on the local spool and uploads in the background."""

    eventually_consistent = True  # another node may read before our upload lands

    def __init__(self, spool: FolderStore, remote: ObjectStore, workers: int = 4,
                 max_backoff: float = 30.0, doorbell: Doorbell | None = None) -> None:
        """Uploads in ``workers`` threads of this process; with a ``doorbell``, none here:
        ``put`` rings it and the process running :func:`run_uploads` uploads."""
        self.spool = spool
        self.remote = remote
        self._doorbell = doorbell
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._open = threading.Event()  # cleared while uploads wait (hold_uploads)
        self._open.set()
        self._max_backoff = max_backoff
        self._threads: list[threading.Thread] = []
        self.spool.check()  # creates the spool folder
        if doorbell is not None:
            return
        self._threads = [threading.Thread(target=self._upload_loop, name=f"s3-upload-{n}",
                                          daemon=True) for n in range(max(1, workers))]
        if self.rescan():  # resume uploads left by a previous run
            log.info("resuming %d pending upload(s) to %s", self.pending(), remote.url)
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        return f"{self.remote.url} (spool {self.spool.url})"

    def enqueue(self, key: str) -> bool:
        """Upload ``key`` from the spool (once, however often it is asked for meanwhile);
        False when it was queued already."""
        with self._lock:
            if key in self._pending:
                return False
            self._pending.add(key)
        self._queue.put(key)
        return True

    def rescan(self) -> int:
        """Queue every object in the spool not queued yet; how many were added."""
        return sum(self.enqueue(key) for key in self.spool.keys())

    def hold_uploads(self, hold: bool) -> None:
        """Make the upload threads wait before their next upload (``True``) or go on."""
        if hold:
            self._open.clear()
        else:
            self._open.set()

    def _upload_loop(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            key = self._queue.get()
            if key is None:
                return
            while not self._open.wait(0.5):
                if self._stopping.is_set():
                    return
            try:
                landed = self._upload(key)
                backoff = 0.5
                if landed:
                    self._done(key)
                else:  # replaced while we uploaded: upload the new bytes
                    self._queue.put(key)
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
            self._lock.notify_all()

    def _upload(self, key: str) -> bool:
        """Stream the spool file to the remote store (never whole in memory), then drop the
        spool copy; False when the spool file was replaced meanwhile (kept, to upload again).

        The file is held under an exclusive ``flock`` from before the upload until it is
        dropped, so two uploaders of one spool (``pacs serve``'s and a ``pacs import``
        running beside it) take turns: the second finds the file gone and stops there.
        A delete (in any process; it takes no lock) removes the spool file, then the remote
        copy: if ours landed after that, the file is gone when we look again and we remove
        the remote copy once more (it would otherwise be an orphan)."""
        path = self.spool.root / check_key(key)
        try:
            stream = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"spool read failed: {exc}") from exc
        with stream:  # closing it releases the lock
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)  # waits for another uploader's turn
            sent = os.fstat(stream.fileno())
            if not _same_file(path, sent):  # dropped by the uploader before us, or replaced
                if not path.exists():
                    raise ObjectNotFound(key)
                return False
            self.remote.put(key, stream, sent.st_size)
            if not path.exists():  # deleted while we uploaded
                self.remote.delete(key)
                return True
            if not _same_file(path, sent):
                return False
            self.spool.discard(key)  # uploaded: no fsync of its folder (see FolderStore.discard)
            return True

    def pending(self) -> int:
        """Uploads not landed yet (with a doorbell: objects in the spool)."""
        if self._doorbell is not None:
            return sum(1 for _ in self.spool.keys())
        with self._lock:
            return len(self._pending)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued upload has landed (with a doorbell: until the spool is
        empty); False on timeout."""
        deadline = time.monotonic() + timeout
        if self._doorbell is not None:
            while self.pending():
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            return True
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def put(self, key: str, data: bytes | BinaryIO, length: int = -1) -> None:
        self.spool.put(key, data, length)
        if self._doorbell is not None:
            self._doorbell.ring(key)
        else:
            self.enqueue(key)

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
        (see ``_upload``)."""
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
        self._open.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(10)
        self.remote.close()
        self.spool.close()



def _same_file(path: Path, opened: os.stat_result) -> bool:
    """Whether ``path`` is (still) the file whose ``fstat`` is ``opened``."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def run_uploads(store: SpooledStore, doorbell: Doorbell, stop: threading.Event,
                rescan_every: float = RESCAN_SECONDS, defer: float = 0.0,
                storing_gap: float = STORING_GAP) -> None:
    """The uploading process's loop, until ``stop``: queue the keys other processes ring on
    ``store``'s upload threads, rescan the spool now and then (rings dropped, or rung
    while no uploader ran), log a backlog every ``REPORT_SECONDS``.

    With ``defer`` > 0, uploads wait while objects keep arriving (a ring within the last
    ``storing_gap`` seconds), for at most ``defer`` seconds in a row: a burst of stores is
    then acknowledged without an S3 server on the same machine taking CPU from it, and
    uploaded when the burst pauses. Stores that never pause hold uploads back ``defer``
    seconds once, then share the machine with them."""
    next_scan = time.monotonic() + rescan_every  # the store rescanned when it was made
    next_report = time.monotonic() + REPORT_SECONDS
    last_ring = held_since = -float("inf")
    while not stop.is_set():
        keys = doorbell.wait(storing_gap / 4 if held_since > -float("inf") else 0.5)
        for key in keys:
            store.enqueue(key)
        now = time.monotonic()
        if keys:
            last_ring = now
        if defer > 0 and now - last_ring < storing_gap:  # objects are arriving
            if held_since == -float("inf"):
                held_since = now
            store.hold_uploads(now - held_since < defer)
        else:
            held_since = -float("inf")
            store.hold_uploads(False)
        if now >= next_scan:
            found = store.rescan()
            if found:
                log.info("%d spooled object(s) found by the rescan, queued", found)
            next_scan = now + rescan_every
        if now >= next_report:
            backlog = store.pending()
            if backlog:
                log.info("%d upload(s) pending to %s", backlog, store.remote.url)
            next_report = now + REPORT_SECONDS
