"""``pacs verify`` and ``pacs migrate-storage`` on both backend pairs."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from pacs.context import Caller
from pacs.index.models import Instance
from pacs.services import Services
from pacs.verify import migrate_storage, verify
from storage import FolderStore
from storage.spooled import SpooledStore
from tests.conftest import testdata

CLI = Caller.cli("test")
FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")


def _fill(services: Services) -> list[str]:
    uids = [services.ingest.store_instance(CLI, testdata(n).read_bytes()).sop_instance_uid
            for n in FILES]
    if isinstance(services.store, SpooledStore):
        assert services.store.flush(30)
    return uids


def test_healthy_archive_verifies(services: Services) -> None:
    _fill(services)
    report = verify(services.engine, services.store)
    assert report.healthy and report.checked == 3 and report.orphans == []


def _received_long_ago(services: Services) -> None:
    """Rows older than the hour an object may spend in another node's spool (S3)."""
    with services.engine.begin() as conn:
        conn.execute(update(Instance).values(received_at=datetime.now(UTC) - timedelta(hours=2)))


def test_missing_corrupt_and_orphans_found(services: Services) -> None:
    uids = _fill(services)
    _received_long_ago(services)
    missing = services.retrieve.instance(CLI, uids[0])
    corrupt = services.retrieve.instance(CLI, uids[1])
    services.store.delete(missing.storage_key)
    services.store.put(corrupt.storage_key, b"bit rot")
    services.store.put("ff/ff/orphan.dcm", b"never acknowledged")
    report = verify(services.engine, services.store, repair=True, grace_seconds=0)
    assert report.missing == [(uids[0], missing.storage_key)]
    assert report.corrupt == [(uids[1], corrupt.storage_key)]
    assert report.orphans == ["ff/ff/orphan.dcm"]
    assert report.removed_orphans == ["ff/ff/orphan.dcm"]
    assert not services.store.exists("ff/ff/orphan.dcm")
    assert not report.healthy


def test_a_recent_object_not_in_s3_is_pending_not_missing(services: Services) -> None:
    """Several nodes on one bucket: an object acknowledged by another node within the hour
    may still be in its upload spool. On S3 it is reported apart (healthy); on a folder,
    which every node sees at once, it is missing."""
    uids = _fill(services)
    gone = services.retrieve.instance(CLI, uids[0])
    services.store.delete(gone.storage_key)
    report = verify(services.engine, services.store)
    if isinstance(services.store, SpooledStore):
        assert report.pending == [(uids[0], gone.storage_key)]
        assert report.missing == [] and report.healthy
        _received_long_ago(services)
        report = verify(services.engine, services.store)
    assert report.pending == []
    assert report.missing == [(uids[0], gone.storage_key)] and not report.healthy


def test_temporary_files_of_interrupted_writes_reported_and_removed_when_old(
        services: Services) -> None:
    """A crash in the middle of a write leaves a hidden temporary file (never a key): an
    old one is reported and removed by repair, a recent one (a write in flight) kept."""
    _fill(services)
    folder = getattr(services.store, "spool", services.store)
    assert isinstance(folder, FolderStore)
    (folder.root / "20261124" / "a").mkdir(parents=True, exist_ok=True)
    old = folder.root / "20261124" / "a" / ".tmp-0123456789abcdef"
    recent = folder.root / "20261124" / "a" / ".tmp-fedcba9876543210"
    old.write_bytes(b"half an object")
    recent.write_bytes(b"a write in flight")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    report = verify(services.engine, services.store, grace_seconds=0)
    assert report.healthy and report.leftovers == [str(old)] and old.exists()
    report = verify(services.engine, services.store, repair=True, grace_seconds=0)
    assert report.removed_leftovers == [str(old)]
    assert not old.exists() and recent.exists()
    assert report.orphans == [] and report.checked == 3


def test_migrate_storage_copies_everything(services: Services, tmp_path: Path) -> None:
    uids = _fill(services)
    target = FolderStore(tmp_path / "migrated")
    first = migrate_storage(services.engine, services.store, target)
    again = migrate_storage(services.engine, services.store, target)
    assert (first.copied, first.failed) == (3, [])
    assert (again.copied, again.already_there) == (0, 3)
    for uid in uids:
        inst = services.retrieve.instance(CLI, uid)
        assert target.get(inst.storage_key) == services.retrieve.read(inst)
    assert verify(services.engine, target).healthy
