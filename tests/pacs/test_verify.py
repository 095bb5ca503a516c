"""``pacs verify`` and ``pacs migrate-storage`` on both backend pairs."""

from __future__ import annotations

from pathlib import Path

from pacs.context import Caller
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


def test_missing_corrupt_and_orphans_found(services: Services) -> None:
    uids = _fill(services)
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
