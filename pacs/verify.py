"""``pacs verify``: cross-check the index against storage, and ``pacs migrate-storage``.

Checks every indexed instance's object exists (and, with ``hashes``, that its SHA-256 still
matches what was received), and lists objects no index row points at (orphans: bytes of a
store that failed before its index commit, never acknowledged) and, in a folder store (or
the S3 spool), hidden temporary files left by a write cut short by a crash. Repair removes
orphans only, after a grace period and a second look, so a store in flight is never
touched, and temporary files older than :data:`LEFTOVER_AGE`. Missing or
corrupt objects are reported, not "repaired": they were acknowledged, so they must be
restored from backup or resent (a resend replaces them, see :mod:`pacs.ingest`). On S3
behind upload spools, an object received within :data:`pacs.ingest.UPLOAD_GRACE` and not
found yet is reported as pending (another node may not have uploaded it), not missing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, select

import storage
from pacs.dicom.source import ChunkReader, HashingReader
from pacs.errors import InvalidInput
from pacs.index.models import Instance
from pacs.ingest import maybe_in_another_spool

log = logging.getLogger(__name__)
Progress = Callable[[int], None]
LEFTOVER_AGE = 3600.0  # seconds: a temporary file this old belongs to no write in flight


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)   # (SOP Instance UID, key)
    # not found but recent, on S3 behind spools: maybe still in another node's upload spool
    pending: list[tuple[str, str]] = field(default_factory=list)   # (SOP Instance UID, key)
    corrupt: list[tuple[str, str]] = field(default_factory=list)   # (SOP Instance UID, key)
    orphans: list[str] = field(default_factory=list)
    removed_orphans: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # temporary files (paths)
    removed_leftovers: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not (self.missing or self.corrupt)


def _indexed(engine: Engine) -> Iterator[tuple[str, str, str, int, datetime | None]]:
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=2000).execute(
            select(Instance.sop_instance_uid, Instance.storage_key, Instance.sha256, Instance.size,
                   Instance.received_at)
            .order_by(Instance.id))
        yield from result


def count_instances(engine: Engine) -> int:
    from sqlalchemy import func

    with engine.connect() as conn:
        return int(conn.execute(select(func.count(Instance.id))).scalar_one())


def _indexed_keys(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(Instance.storage_key)).scalars())


def verify(engine: Engine, store: storage.ObjectStore, *, hashes: bool = True,
           repair: bool = False, grace_seconds: float = 5.0,
           progress: Progress | None = None) -> VerifyReport:
    """Cross-check index and storage; see the module docstring."""
    report = VerifyReport()
    stored_keys = set(store.keys())
    for uid, key, sha, _size, received_at in _indexed(engine):
        report.checked += 1
        if progress:
            progress(1)
        if key not in stored_keys and not store.exists(key):
            if maybe_in_another_spool(store, received_at):
                report.pending.append((uid, key))
                log.info("verify: %s (key %s) not in storage yet: received %s, maybe still "
                         "in another node's upload spool", uid, key, received_at)
                continue
            report.missing.append((uid, key))
            log.error("verify: %s has no object (key %s)", uid, key)
            continue
        if hashes:
            try:
                digest = hashlib.sha256()
                for chunk in store.iter_chunks(key):
                    digest.update(chunk)
            except storage.ObjectNotFound:
                report.missing.append((uid, key))
                continue
            if digest.hexdigest() != sha:
                report.corrupt.append((uid, key))
                log.error("verify: %s object %s does not match its hash", uid, key)
        stored_keys.discard(key)
    candidates = stored_keys - _indexed_keys(engine)
    report.orphans = sorted(candidates)
    if repair and candidates:
        time.sleep(grace_seconds)  # let stores in flight commit, then look again
        still = candidates - _indexed_keys(engine)
        for key in sorted(still):
            store.delete(key)
            report.removed_orphans.append(key)
            log.warning("verify: removed orphan object %s", key)
    _leftovers(store, report, repair)
    return report


def _leftovers(store: storage.ObjectStore, report: VerifyReport, repair: bool) -> None:
    """Temporary files of writes cut short (a folder store's, or the S3 spool's)."""
    folder = getattr(store, "spool", store)
    if not isinstance(folder, storage.FolderStore):
        return
    old = folder.leftovers(LEFTOVER_AGE)
    report.leftovers = [str(path) for path in old]
    for path in old if repair else ():
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        report.removed_leftovers.append(str(path))
        log.warning("verify: removed temporary file %s", path)


@dataclass
class MigrationReport:
    copied: int = 0
    already_there: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def migrate_storage(engine: Engine, source: storage.ObjectStore, target: storage.ObjectStore,
                    progress: Progress | None = None) -> MigrationReport:
    """Copy every indexed object from ``source`` to ``target`` (same keys), checking each
    copy's hash. Idempotent: objects already present with the right hash are skipped."""
    report = MigrationReport()
    target.check()  # reachable, writable, folder/bucket created
    for uid, key, sha, size, _received in _indexed(engine):
        try:
            if target.exists(key) and _sha256(target, key) == sha:
                report.already_there += 1
            else:  # streamed: a 1 GB object is never whole in memory
                reader = HashingReader(ChunkReader(source.iter_chunks(key)), size)  # type: ignore[arg-type]
                target.put(key, reader, size)  # type: ignore[arg-type]
                try:
                    matches = reader.hexdigest() == sha
                except InvalidInput:
                    matches = False
                if not matches:
                    target.delete(key)
                    raise storage.StorageError("source object does not match its hash")
                if _sha256(target, key) != sha:
                    raise storage.StorageError("copy does not match its hash")
                report.copied += 1
        except (storage.StorageError, ValueError) as exc:  # ValueError: source too short
            report.failed.append((uid, f"{type(exc).__name__}: {exc}"))
        if progress:
            progress(1)
    return report


def _sha256(store: storage.ObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in store.iter_chunks(key):
        digest.update(chunk)
    return digest.hexdigest()
