"""Ingest from a file or a stream: same outcome as from bytes, duplicates compared by streaming."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from pacs.context import Caller
from pacs.dicom.header import dataset_offset, part10_bytes
from pacs.errors import DuplicateConflict, InvalidInput
from pacs.index.models import Instance
from pacs.ingest import StoreStatus
from pacs.services import Services
from tests.large_object import write_multiframe

CLI = Caller.cli("test")


def test_file_and_stream_sources(services: Services, tmp_path: Path) -> None:
    obj = write_multiframe(tmp_path / "mf.dcm", 6 << 20, seed=5)
    raw = obj.path.read_bytes()
    outcome = services.ingest.store_instance(CLI, obj.path)
    assert outcome.status == StoreStatus.STORED
    (stored,) = services.retrieve.find_instances(CLI, *_image(obj.sop_instance_uid))
    assert services.retrieve.read(stored) == raw
    assert stored.size == len(raw)
    assert stored.pixel_data_length == 6 << 20
    assert stored.pixel_data_offset == len(raw) - (6 << 20)
    assert b"".join(services.retrieve.stream(stored)) == raw

    # the same data set behind another File Meta (another sender): a resend
    body = raw[dataset_offset(raw):]
    other = part10_bytes(body, "1.2.840.10008.5.1.4.1.1.7.3", obj.sop_instance_uid,
                         "1.2.840.10008.1.2.1", "ROUTER")
    stream = io.BytesIO(b"junk" + other)
    stream.seek(4)
    assert services.ingest.store_instance(CLI, stream).status == StoreStatus.ALREADY_STORED

    changed = bytearray(other)
    changed[-1] ^= 0xFF
    with pytest.raises(DuplicateConflict):
        services.ingest.store_instance(CLI, io.BytesIO(bytes(changed)), len(changed))
    assert services.retrieve.read(stored) == raw


def test_stream_limits(services: Services, tmp_path: Path) -> None:
    obj = write_multiframe(tmp_path / "mf.dcm", 1 << 20, seed=6)
    services.ingest.max_object_size = obj.size - 1
    with open(obj.path, "rb") as f, pytest.raises(InvalidInput, match="exceeds the limit"):
        services.ingest.store_instance(CLI, f)
    services.ingest.max_object_size = obj.size * 2
    with open(obj.path, "rb") as f, pytest.raises(InvalidInput, match="truncated"):
        services.ingest.store_instance(CLI, f, obj.size - 1000)  # pixel data cut short
    assert list(services.store.keys()) == []


def _image(uid: str) -> tuple[object, dict[str, str]]:
    from pacs.index.attributes import Level

    return Level.IMAGE, {"SOPInstanceUID": uid}


def test_a_streamed_resend_repairs_a_lost_object(services: Services, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An object taking the looked-up-first path (above LOOKUP_FIRST, lowered here), resent
    as a stream after its stored copy was lost: written again from the stream, REPAIRED."""
    from pacs import ingest

    monkeypatch.setattr(ingest, "LOOKUP_FIRST", 1 << 20)
    obj = write_multiframe(tmp_path / "mf.dcm", 2 << 20, seed=7)
    raw = obj.path.read_bytes()
    assert services.ingest.store_instance(CLI, obj.path).status == StoreStatus.STORED
    (lost,) = services.retrieve.find_instances(CLI, *_image(obj.sop_instance_uid))
    services.store.delete(lost.storage_key)
    with services.engine.begin() as conn:  # (S3: not still in another node's upload spool)
        conn.execute(update(Instance).where(Instance.sop_instance_uid == obj.sop_instance_uid)
                     .values(received_at=datetime.now(UTC) - timedelta(hours=2)))
    stream = io.BytesIO(b"head" + raw)
    stream.seek(4)
    assert services.ingest.store_instance(CLI, stream).status == StoreStatus.REPAIRED
    (repaired,) = services.retrieve.find_instances(CLI, *_image(obj.sop_instance_uid))
    assert repaired.storage_key != lost.storage_key
    assert services.retrieve.read(repaired) == raw
    assert list(services.store.keys()) == [repaired.storage_key]
