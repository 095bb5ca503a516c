"""The one ingest path, shared by C-STORE, STOW-RS and ``pacs import``.

Order (as Orthanc does, see STYLE.md): validate the header -> write the bytes exactly as
received under a fresh opaque key (durable on return) -> index in one transaction -> on any
failure remove the bytes -> only then report success -> notify listeners, whose errors never
fail a store. An object held in memory (a C-STORE of up to 4 MiB, most images) is written,
once its header is valid, on a worker thread while this one computes its SHA-256: both run
without the interpreter lock (the write is mostly a wait for fsync), and nothing invalid is
ever written (with S3 behind the spool it would be uploaded). A C-STORE data set can also
be written while it arrives (:class:`Staging`, when the store can: the folder store): a
hidden temporary file whose pages go to disk as the PDUs come in, hashed on the way,
committed under its key (fsync, rename) only once the header is valid, else removed; the
fsync that makes it durable then finds the data written. A staged object too big to keep
in memory is read back from that file (header, comparison with a stored duplicate): its
bytes go to disk once, not through a spool file and a copy.

Duplicates (docs/adr/0002-duplicates.md): the same SOP Instance UID with the same bytes is an
idempotent success (``ALREADY_STORED``, nothing kept: a small object is written, found to be
a duplicate by the index insert, and removed; one above 16 MiB is looked up first unless
it was written as it arrived), once the stored copy is found whole (its SHA-256
recomputed): a lost or damaged one is replaced by the resend (``REPAIRED``). With
different bytes it is refused
(:class:`DuplicateConflict`) under the default policy ``reject``, or replaces the stored
object under ``overwrite``.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

import storage
from pacs.context import Caller
from pacs.dicom.header import META_PREFIX, InstanceHeader, dataset_offset
from pacs.dicom.source import ChunkReader, Source, open_source
from pacs.errors import DuplicateConflict, InvalidInput, StorageFull, StorageUnavailable
from pacs.index import writer
from pacs.index.db import writer as write_engine

log = logging.getLogger(__name__)
LOOKUP_FIRST = 16 << 20  # objects above this size are looked up before they are written
STAGE_FLUSH = 64 << 10  # received bytes gathered before they are written to a staged object
# how long an object acknowledged by another node may stay in that node's upload spool
# (S3 behind spools, several nodes) before a resend that cannot find it repairs it
UPLOAD_GRACE = timedelta(hours=1)


class StoreStatus(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    REPLACED = "replaced"
    REPAIRED = "repaired"  # a resend restored an object lost or damaged in storage


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str


Listener = Callable[[StoreOutcome, InstanceHeader], None]


class Staging:
    """A received object written to the store as it arrives (``storage.stage``) and hashed
    on the way (see the module doc). :meth:`IngestService.store_instance` commits it under
    its key once the header is valid, or aborts it; so does the receiver if it never gets
    there. Used by one thread at a time."""

    def __init__(self, staged: storage.Staged) -> None:
        self.key = staged.key
        self.length = 0  # bytes received
        self._staged = staged
        self._digest = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``; written to the store every :data:`STAGE_FLUSH` bytes. Raises a
        storage error (the receiver then aborts and keeps the data set for the plain path)."""
        self._digest.update(data)
        self.length += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= STAGE_FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            pieces, self._pending, self._pending_size = self._pending, [], 0
            self._staged.write(pieces)

    def open_reader(self) -> BinaryIO:
        """A stream of the object written so far, from its first byte (the caller closes
        it). Raises a storage error."""
        self._flush()
        return self._staged.open_reader()

    def commit(self) -> str:
        """Make the object durable under :attr:`key`; its SHA-256."""
        self._flush()
        self._staged.commit()
        return self._digest.hexdigest()

    def abort(self) -> None:
        """Drop it (idempotent; nothing after a commit)."""
        self._pending = []
        self._staged.abort()


def maybe_in_another_spool(store: storage.ObjectStore, received_at: datetime | None) -> bool:
    """Whether an indexed object that ``store`` cannot find may still be in another node's
    upload spool (S3 behind spools, several nodes on one bucket) rather than lost: received
    less than :data:`UPLOAD_GRACE` ago (``received_at`` in UTC; None: unknown, assumed so)."""
    if not getattr(store, "eventually_consistent", False):
        return False
    if received_at is None:
        return True
    if received_at.tzinfo is None:  # SQLite keeps UTC without a zone
        received_at = received_at.replace(tzinfo=UTC)
    return datetime.now(UTC) - received_at < UPLOAD_GRACE


def new_storage_key(now: datetime | None = None) -> str:
    """A fresh opaque key under the day of receipt (UTC) and a 16-way fan-out:
    ``20261123/a/abcd…ef.dcm`` (docs/adr/0001-blob-keys.md). Objects received together share
    folders, so a folder store creates (and fsyncs) at most 17 folders a day instead of up
    to two per object; a day's objects are one prefix for incremental backups."""
    name = uuid.uuid4().hex
    day = (now or datetime.now(UTC)).strftime("%Y%m%d")
    return f"{day}/{name[0]}/{name}.dcm"


@dataclass
class IngestService:
    """Validate, store and index DICOM objects."""

    engine: Engine
    store: storage.ObjectStore
    duplicate_policy: str = "reject"
    max_object_size: int = 4 * 1024**3
    listeners: list[Listener] = field(default_factory=list)
    _writers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(64, thread_name_prefix="ingest-write"),
        repr=False)

    def close(self) -> None:
        self._writers.shutdown()

    def begin_staging(self) -> Staging | None:
        """A :class:`Staging` to write a received object into as it arrives, or None when
        the store cannot (or fails to start one: the plain path then reports its error)."""
        try:
            staged = storage.stage(self.store, new_storage_key())
        except storage.StorageError as exc:
            log.debug("cannot stage a received object: %s", exc)
            return None
        return Staging(staged) if staged is not None else None

    def store_instance(self, caller: Caller, part10: bytes | BinaryIO | Path, length: int = -1,
                       expected_sop_instance_uid: str | None = None,
                       expected_sop_class_uid: str | None = None,
                       expected_study_uid: str | None = None,
                       staging: Staging | None = None) -> StoreOutcome:
        """Store one Part 10 object. Raises a domain error; never leaves half a store behind.

        ``part10`` is the object's bytes, a file path, or a seekable binary stream positioned at
        the object's start with ``length`` bytes (-1: up to its end). A stream or file is never
        read whole into memory: the header is parsed from its head, the SHA-256 computed while
        the store writes it, a duplicate compared chunk by chunk. ``staging``: the same bytes
        (``part10`` in memory, or :meth:`Staging.open_reader`) already written to the store as
        they arrived (committed here once the header is valid, aborted otherwise).
        """
        with open_source(part10, length) as source:
            if staging is not None and staging.length != source.length:
                staging.abort()  # not what it was made for: the plain path
                staging = None
            try:
                return self._store(caller, source, expected_sop_instance_uid,
                                   expected_sop_class_uid, expected_study_uid, staging)
            finally:
                if staging is not None:
                    staging.abort()  # nothing once committed

    def _store(self, caller: Caller, source: Source, sop_instance: str | None,
               sop_class: str | None, study: str | None,
               staging: Staging | None = None) -> StoreOutcome:
        if source.length > self.max_object_size:
            raise InvalidInput(f"object of {source.length} bytes exceeds the limit of "
                               f"{self.max_object_size} bytes")
        key = staging.key if staging is not None else new_storage_key()
        if staging is not None:
            header = source.header()
            self._check_expected(header, sop_instance, sop_class, study)
            with self._storage_errors(key):
                digest = staging.commit()
        elif source.data is not None and source.length <= LOOKUP_FIRST:
            header, digest = self._put_while_parsing(key, source, sop_instance, sop_class, study)
        else:
            header = source.header()
            self._check_expected(header, sop_instance, sop_class, study)
            if source.length > LOOKUP_FIRST:  # a resent big object is not written again
                existing = self._lookup(header.sop_instance_uid)
                if existing is not None:
                    return self._duplicate(caller, header, source, source.sha256(), existing)
            digest = self._put(key, source)
        # a small duplicate is found by the insert (``raced`` below): one query less per store
        obj = writer.NewObject(key, source.length, digest,
                               caller.name if caller.kind == "dicom" else "")
        try:
            raced = writer.insert_instance(write_engine(self.engine), header, obj)
        except SQLAlchemyError as exc:
            self._discard_unless_indexed(key, header.sop_instance_uid)
            log.error("index unavailable storing %s: %s", header.sop_instance_uid, exc)
            raise StorageUnavailable(f"index unavailable: {type(exc).__name__}") from exc
        except BaseException:
            self._discard(key)
            raise
        if raced is not None:  # indexed already (a resend, or a concurrent store)
            return self._duplicate(caller, header, source, digest, raced, written=key)
        return self._done(caller, header, StoreStatus.STORED)

    def _check_expected(self, h: InstanceHeader, sop_instance: str | None,
                        sop_class: str | None, study: str | None) -> None:
        if sop_instance and sop_instance != h.sop_instance_uid:
            raise InvalidInput(f"SOP Instance UID {h.sop_instance_uid} in the data set differs "
                               f"from the request's {sop_instance}")
        if sop_class and sop_class != h.sop_class_uid:
            raise InvalidInput(f"SOP Class UID {h.sop_class_uid} in the data set differs "
                               f"from the request's {sop_class}")
        if study and study != h.study_uid:
            raise InvalidInput(f"Study Instance UID {h.study_uid} differs from the target "
                               f"study {study}")

    def _lookup(self, sop_instance_uid: str) -> writer.StoredRow | None:
        try:
            with self.engine.connect() as conn:
                return writer.find_instance(conn, sop_instance_uid)
        except SQLAlchemyError as exc:
            raise StorageUnavailable(f"index unavailable: {type(exc).__name__}") from exc

    def _duplicate(self, caller: Caller, header: InstanceHeader, source: Source, digest: str,
                   existing: writer.StoredRow, written: str | None = None) -> StoreOutcome:
        """A store of an indexed SOP Instance UID (ADR 0002). ``written``: the key this store
        already wrote the object under (a small object is written before its insert finds
        the UID), reused when it is kept and removed otherwise."""
        try:
            if existing.sha256 == digest:
                if self._stored_intact(existing):
                    return self._done(caller, header, StoreStatus.ALREADY_STORED)
                log.error("stored object of %s (key %s) is missing or damaged: replaced by the "
                          "copy resent by %s", header.sop_instance_uid, existing.storage_key, caller)
                outcome = self._replace(caller, header, source, digest, existing, written,
                                        StoreStatus.REPAIRED)
                written = None
                return outcome
            if self._same_dataset(existing, source):
                return self._done(caller, header, StoreStatus.ALREADY_STORED)
            if self.duplicate_policy != "overwrite":
                log.warning("refused %s from %s: SOP Instance UID already stored with other "
                            "content", header.sop_instance_uid, caller)
                raise DuplicateConflict(
                    f"SOP Instance UID {header.sop_instance_uid} is already stored with different "
                    "content (duplicate policy: reject)")
            outcome = self._replace(caller, header, source, digest, existing, written,
                                    StoreStatus.REPLACED)
            written = None
            return outcome
        finally:
            if written is not None:
                self._discard(written)

    def _stored_intact(self, row: writer.StoredRow) -> bool:
        """Whether the stored object of ``row`` is there and whole (its SHA-256 recomputed:
        one read, on a resend only, no dearer than receiving the resend), so that a resend
        repairs an object lost or damaged since (`pacs verify` reports those) instead of
        being answered "already stored".

        With several nodes on one S3 bucket (an eventually consistent store), an object
        acknowledged by another node may still be in that node's upload spool: one received
        less than :data:`UPLOAD_GRACE` ago and not found is taken as there."""
        try:
            digest = hashlib.sha256()
            for chunk in self.store.iter_chunks(row.storage_key):
                digest.update(chunk)
            return digest.hexdigest() == row.sha256
        except storage.ObjectNotFound:
            if maybe_in_another_spool(self.store, row.received_at):
                log.info("stored object %s not found yet (received %s): maybe still in "
                         "another node's upload spool", row.storage_key, row.received_at)
                return True
            return False
        except storage.StorageError as exc:  # cannot tell: the sender retries later
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc

    def _replace(self, caller: Caller, header: InstanceHeader, source: Source, digest: str,
                 existing: writer.StoredRow, written: str | None,
                 status: StoreStatus) -> StoreOutcome:
        """Point ``existing``'s row at the received object (written now unless ``written``
        holds it already), then remove the object it pointed at. A concurrent store that
        changed the row first wins: this copy is removed and the store answered as a resend."""
        key = written
        if key is None:
            key = new_storage_key()
            self._put(key, source)
        obj = writer.NewObject(key, source.length, digest,
                               caller.name if caller.kind == "dicom" else "")
        try:
            changed = writer.replace_instance(write_engine(self.engine), header, obj, existing)
        except SQLAlchemyError as exc:
            self._discard_unless_indexed(key, header.sop_instance_uid)
            raise StorageUnavailable(f"index unavailable: {type(exc).__name__}") from exc
        except BaseException:
            self._discard(key)
            raise
        if not changed:
            self._discard(key)
            return self._done(caller, header, StoreStatus.ALREADY_STORED)
        self._discard(existing.storage_key)
        return self._done(caller, header, status)

    def _same_dataset(self, existing: writer.StoredRow, source: Source) -> bool:
        """Same data set, different File Meta (e.g. another Source AE Title): a resend.

        Compared chunk by chunk after both File Meta headers, never loading either object."""
        try:
            key = existing.storage_key
            stored_offset = dataset_offset(self.store.get_range(key, 0, META_PREFIX))
            offset = source.dataset_offset()
            if self.store.size(key) - stored_offset != source.length - offset:
                return False
            stored = ChunkReader(self.store.iter_chunks(key))
            stored.skip(stored_offset)
            for chunk in source.chunks(offset):
                if stored.read(len(chunk)) != chunk:
                    return False
            return stored.read(1) == b""
        except (storage.StorageError, InvalidInput):
            return False

    def _put_while_parsing(self, key: str, source: Source, sop_instance: str | None,
                           sop_class: str | None, study: str | None) -> tuple[InstanceHeader, str]:
        """Check the header of ``source.data``, then write it under ``key`` on a worker thread
        while this one hashes it; the header and SHA-256 once the object is durable."""
        data = source.data
        assert data is not None
        header = source.header()
        self._check_expected(header, sop_instance, sop_class, study)
        writing = self._writers.submit(self._put_bytes, key, data)
        try:
            digest = hashlib.sha256(data).hexdigest()
        except BaseException:
            if writing.exception() is None:  # waits for the write, then removes it
                self._discard(key)
            raise
        writing.result()
        return header, digest

    def _put_bytes(self, key: str, data: bytes) -> None:
        with self._storage_errors(key):
            self.store.put(key, data)

    def _put(self, key: str, source: Source) -> str:
        """Write the object under ``key``; its SHA-256, computed while the store reads it."""
        with self._storage_errors(key):
            if source.data is not None:
                self.store.put(key, source.data)
                return hashlib.sha256(source.data).hexdigest()
            reader = source.hashing_reader()
            self.store.put(key, reader, source.length)  # type: ignore[arg-type]
            try:
                return reader.hexdigest()
            except InvalidInput:
                self._discard(key)
                raise

    @contextlib.contextmanager
    def _storage_errors(self, key: str) -> Iterator[None]:
        """Storage errors as the archive's: full, unavailable, or a truncated source."""
        try:
            yield
        except ValueError as exc:  # the stream ended before its announced length
            raise InvalidInput(f"truncated object: {exc}") from exc
        except storage.StorageFull as exc:
            raise StorageFull(str(exc)) from exc
        except storage.StorageError as exc:
            log.error("storage unavailable writing %s: %s", key, exc)
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc

    def _discard_unless_indexed(self, key: str, sop_instance_uid: str) -> None:
        """After an index error the COMMIT may still have landed: keep the bytes unless the
        index surely does not point at them (an orphan is repairable, a loss is not)."""
        try:
            row = self._lookup(sop_instance_uid)
        except StorageUnavailable:
            return
        if row is None or row.storage_key != key:
            self._discard(key)

    def _discard(self, key: str) -> None:
        try:
            self.store.delete(key)
        except storage.StorageError as exc:  # an orphan for `pacs verify` to find
            log.warning("could not remove object %s after a failed store: %s", key, exc)

    def _done(self, caller: Caller, header: InstanceHeader, status: StoreStatus) -> StoreOutcome:
        outcome = StoreOutcome(status, header.sop_class_uid, header.sop_instance_uid,
                               header.study_uid, header.series_uid, header.transfer_syntax_uid)
        log.debug("%s %s (study %s) from %s", status.value, header.sop_instance_uid,
                 header.study_uid, caller)
        for listener in self.listeners:
            try:
                listener(outcome, header)
            except Exception:  # noqa: BLE001 - a listener never fails a store
                log.exception("store listener failed for %s", header.sop_instance_uid)
        return outcome
