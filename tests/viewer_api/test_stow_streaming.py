"""STOW-RS parts spooled to disk while parsed, ingested from the file; oversize parts dropped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pacs.dicom.header import dataset_offset
from pacs.services import Services
from tests.conftest import testdata
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
