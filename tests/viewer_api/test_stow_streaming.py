"""STOW-RS parts spooled to disk while parsed, ingested from the file; oversize parts dropped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pacs.dicom.header import dataset_offset
from pacs.services import Services
from tests.conftest import staged_leftovers, testdata
from tests.large_object import write_multiframe
from viewer_api.app import create_app

ROOT = "/dicomweb"
CTYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as c:
        yield c


def _body(*files: bytes) -> bytes:
    return b"".join(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
                    for f in files) + b"--b0undary--\r\n"


def test_stow_big_part_round_trips(client: TestClient, services: Services,
                                   tmp_path: Path) -> None:
    obj = write_multiframe(tmp_path / "mf.dcm", 12 << 20, seed=9)  # spooled past 8 MiB
    raw = obj.path.read_bytes()
    r = client.post(f"{ROOT}/studies", content=_body(raw), headers={"Content-Type": CTYPE})
    assert r.status_code == 200, r.text
    url = (f"{ROOT}/studies/{obj.study_uid}/series/{obj.series_uid}"
           f"/instances/{obj.sop_instance_uid}")
    got = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                             "transfer-syntax=*"})
    assert got.status_code == 200
    assert raw in got.content  # stored byte for byte, streamed back whole
    uri = client.get("/wado", params={
        "requestType": "WADO", "studyUID": obj.study_uid, "seriesUID": obj.series_uid,
        "objectUID": obj.sop_instance_uid, "contentType": "application/dicom"})
    assert uri.content == raw and uri.headers["content-length"] == str(len(raw))
    assert raw[dataset_offset(raw):] == uri.content[dataset_offset(uri.content):]
    assert list((services.settings.data_dir / "tmp").iterdir()) == []


def test_stow_oversize_part_refused(client: TestClient, services: Services) -> None:
    small = testdata("CT_small.dcm").read_bytes()
    services.ingest.max_object_size = len(small) - 1
    r = client.post(f"{ROOT}/studies", content=_body(small), headers={"Content-Type": CTYPE})
    assert r.status_code == 409
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert list(services.store.keys()) == []


def test_stow_big_part_written_to_the_store_as_it_arrives(
        client: TestClient, services: Services, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the in-memory spool a part goes to the store as it arrives (the folder store)
    and is committed from there, never put again; a resend is answered as stored; a big
    part that is not DICOM leaves nothing behind."""
    puts: list[str] = []
    put = services.store.put
    monkeypatch.setattr(services.store, "put", lambda key, *a, **k: puts.append(key) or put(key, *a, **k))
    staged = hasattr(services.store, "stage")
    obj = write_multiframe(tmp_path / "mf.dcm", 20 << 20, seed=11)
    raw = obj.path.read_bytes()
    for _ in range(2):
        r = client.post(f"{ROOT}/studies", content=_body(raw), headers={"Content-Type": CTYPE})
        assert r.status_code == 200, r.text
    assert len(puts) == (0 if staged else 1)
    (key,) = services.store.keys()
    assert services.store.get(key) == raw
    junk = b"not dicom " * (1 << 20)
    r = client.post(f"{ROOT}/studies", content=_body(junk), headers={"Content-Type": CTYPE})
    assert r.status_code == 409
    assert list(services.store.keys()) == [key]
    assert staged_leftovers(services.store) == []
    assert list((services.settings.data_dir / "tmp").iterdir()) == []


def test_stow_store_failing_while_a_big_part_arrives(
        client: TestClient, services: Services, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The store failing once a part is only in it: that part fails with Out of Resources
    (the sender may retry), the others of the request are stored, nothing is left behind."""
    if not hasattr(services.store, "stage"):
        pytest.skip("the store writes objects whole (S3 behind its spool)")
    import storage
    from storage.folder import StagedFile

    write = StagedFile.write
    written = {"bytes": 0}

    def failing(self: StagedFile, pieces: object) -> None:
        written["bytes"] += sum(len(p) for p in pieces)  # type: ignore[attr-defined]
        if written["bytes"] > 10 << 20:
            raise storage.StorageFull("no space left (test)")
        write(self, pieces)  # type: ignore[arg-type]

    monkeypatch.setattr(StagedFile, "write", failing)
    big = write_multiframe(tmp_path / "mf.dcm", 16 << 20, seed=12).path.read_bytes()
    small = testdata("CT_small.dcm").read_bytes()
    r = client.post(f"{ROOT}/studies", content=_body(big, small), headers={"Content-Type": CTYPE})
    assert r.status_code == 202, r.text
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA700]
    assert len(r.json()["00081199"]["Value"]) == 1
    assert len(list(services.store.keys())) == 1 and staged_leftovers(services.store) == []
