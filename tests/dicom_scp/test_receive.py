"""C-STORE data sets spooled on receive: small ones in memory, big ones on disk, same bytes."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from pacs.dicom.header import dataset_offset
from pacs.index.attributes import Level
from tests.conftest import RunningArchive, staged_leftovers
from tests.interop.dcmtk import send_raw_c_store
from tests.large_object import MF_GRAYSCALE_WORD_SC, write_multiframe


def test_big_and_small_data_sets_stored_as_received(archive: RunningArchive,
                                                     tmp_path: Path) -> None:
    for name, pixels in (("small", 1 << 20), ("big", 12 << 20)):  # the spool spills at 4 MiB
        obj = write_multiframe(tmp_path / f"{name}.dcm", pixels, seed=len(name))
        raw = obj.path.read_bytes()
        status = send_raw_c_store(archive.port, MF_GRAYSCALE_WORD_SC, obj.sop_instance_uid,
                                  "1.2.840.10008.1.2.1", raw[dataset_offset(raw):])
        assert status == 0, name
        caller = archive.svc.retrieve
        (stored,) = caller.find_instances(None, Level.IMAGE,  # type: ignore[arg-type]
                                          {"SOPInstanceUID": obj.sop_instance_uid})
        got = caller.read(stored)
        assert got[dataset_offset(got):] == raw[dataset_offset(raw):], name
        meta = pydicom.dcmread(io.BytesIO(got), stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == "RAWSCU"
        assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert stored.pixel_data_length == (pixels // (512 * 512 * 2)) * 512 * 512 * 2
    tmp = archive.settings.data_dir / "tmp"
    assert tmp.is_dir() and list(tmp.iterdir()) == []  # anonymous temporary files only
    assert staged_leftovers(archive.svc.store) == []


def test_small_data_set_written_to_the_store_as_it_arrives(
        archive: RunningArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to the in-memory limit the object goes to the store while its PDUs arrive and is
    committed under its key once valid (pacs.ingest.Staging): never put again."""
    puts: list[str] = []
    put = archive.svc.store.put
    monkeypatch.setattr(archive.svc.store, "put",
                        lambda key, *a, **k: puts.append(key) or put(key, *a, **k))
    obj = write_multiframe(tmp_path / "small.dcm", 1 << 20, seed=3)
    raw = obj.path.read_bytes()
    status = send_raw_c_store(archive.port, MF_GRAYSCALE_WORD_SC, obj.sop_instance_uid,
                              "1.2.840.10008.1.2.1", raw[dataset_offset(raw):])
    assert status == 0
    staged = hasattr(archive.svc.store, "stage")  # the folder store; S3 behind its spool: put
    assert puts == ([] if staged else list(archive.svc.store.keys()))
    (key,) = archive.svc.store.keys()
    got = archive.svc.store.get(key)
    assert got[dataset_offset(got):] == raw[dataset_offset(raw):]
    # the same object announced as another instance: refused, the staged bytes removed
    status = send_raw_c_store(archive.port, MF_GRAYSCALE_WORD_SC, "1.2.826.0.1.3680043.8.498.1",
                              "1.2.840.10008.1.2.1", raw[dataset_offset(raw):])
    assert status & 0xF000 == 0xC000
    assert list(archive.svc.store.keys()) == [key] and len(puts) == (0 if staged else 1)
    assert staged_leftovers(archive.svc.store) == []


def test_oversize_data_set_dropped_as_it_arrives(make_archive: Callable[..., RunningArchive],
                                                 tmp_path: Path) -> None:
    archive = make_archive(max_object_size=6 << 20)
    obj = write_multiframe(tmp_path / "big.dcm", 8 << 20, seed=1)
    raw = obj.path.read_bytes()
    status = send_raw_c_store(archive.port, MF_GRAYSCALE_WORD_SC, obj.sop_instance_uid,
                              "1.2.840.10008.1.2.1", raw[dataset_offset(raw):])
    assert status & 0xF000 == 0xC000  # Cannot understand (PS3.4 B.2.3)
    assert list(archive.svc.store.keys()) == []
    assert staged_leftovers(archive.svc.store) == []


def test_big_data_set_written_to_the_store_as_it_arrives(
        archive: RunningArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the in-memory limit a staged object is not spooled and copied: it stays in the
    store's file it is being written to, is read back from there, and a resend or a
    conflicting object is sorted out from it."""
    puts: list[str] = []
    put = archive.svc.store.put
    monkeypatch.setattr(archive.svc.store, "put",
                        lambda key, *a, **k: puts.append(key) or put(key, *a, **k))
    staged = hasattr(archive.svc.store, "stage")  # the folder store; S3 behind its spool: put
    obj = write_multiframe(tmp_path / "big.dcm", 20 << 20, seed=5)  # over 16 MiB: looked up
    raw = obj.path.read_bytes()
    data_set = raw[dataset_offset(raw):]
    for _ in range(2):  # the resend is answered as stored, its staged copy removed
        status = send_raw_c_store(archive.port, MF_GRAYSCALE_WORD_SC, obj.sop_instance_uid,
                                  "1.2.840.10008.1.2.1", data_set)
        assert status == 0
    assert len(puts) == (0 if staged else 1)
    (key,) = archive.svc.store.keys()
    got = archive.svc.store.get(key)
    assert got[dataset_offset(got):] == data_set
    # other pixels under the same SOP Instance UID: refused (duplicate policy reject)
    other = bytearray(data_set)
    other[-1] ^= 0xFF
    status = send_raw_c_store(archive.port, MF_GRAYSCALE_WORD_SC, obj.sop_instance_uid,
                              "1.2.840.10008.1.2.1", bytes(other))
    assert status & 0xF000 in (0xA000, 0xC000)
    assert list(archive.svc.store.keys()) == [key]
    assert archive.svc.store.get(key) == got
    assert staged_leftovers(archive.svc.store) == []


def test_store_failing_while_a_big_data_set_arrives(
        archive: RunningArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store failing once the object is only in it (past the in-memory limit): the
    modality gets Out of Resources, nothing is indexed or left behind, a resend succeeds."""
    if not hasattr(archive.svc.store, "stage"):
        pytest.skip("the store writes objects whole (S3 behind its spool)")
    import storage
    from storage.folder import StagedFile

    write = StagedFile.write
    written = {"bytes": 0}

    def failing(self: StagedFile, pieces: object) -> None:
        written["bytes"] += sum(len(p) for p in pieces)  # type: ignore[attr-defined]
        if written["bytes"] > 6 << 20:
            raise storage.StorageFull("no space left (test)")
        write(self, pieces)  # type: ignore[arg-type]

    monkeypatch.setattr(StagedFile, "write", failing)
    obj = write_multiframe(tmp_path / "big.dcm", 12 << 20, seed=6)
    raw = obj.path.read_bytes()
    data_set = raw[dataset_offset(raw):]
    status = send_raw_c_store(archive.port, MF_GRAYSCALE_WORD_SC, obj.sop_instance_uid,
                              "1.2.840.10008.1.2.1", data_set)
    assert status == 0xA700  # Out of Resources (PS3.4 B.2.3): the modality may resend
    assert list(archive.svc.store.keys()) == [] and staged_leftovers(archive.svc.store) == []
    assert archive.svc.retrieve.find_instances(
        None, Level.IMAGE, {"SOPInstanceUID": obj.sop_instance_uid}) == []  # type: ignore[arg-type]
    monkeypatch.setattr(StagedFile, "write", write)
    status = send_raw_c_store(archive.port, MF_GRAYSCALE_WORD_SC, obj.sop_instance_uid,
                              "1.2.840.10008.1.2.1", data_set)
    assert status == 0 and len(list(archive.svc.store.keys())) == 1
