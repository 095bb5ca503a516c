"""DICOMweb over HTTP on both backend pairs: QIDO-RS, WADO-RS, STOW-RS, WADO-URI."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pacs.context import Caller
from pacs.services import Services
from tests.conftest import testdata
from viewer_api.app import create_app

CLI = Caller.cli("test")
ROOT = "/dicomweb"


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services)) as c:
        yield c


def _store(services: Services, name: str) -> pydicom.Dataset:
    raw = testdata(name).read_bytes()
    services.ingest.store_instance(CLI, raw)
    return pydicom.dcmread(io.BytesIO(raw))


def _parts(response: object) -> list[bytes]:
    ctype = response.headers["content-type"]  # type: ignore[attr-defined]
    boundary = [p.split("=", 1)[1].strip('"') for p in ctype.split(";") if "boundary" in p][0]
    body: bytes = response.content  # type: ignore[attr-defined]
    out = []
    for chunk in body.split(f"--{boundary}".encode())[1:]:
        if chunk.startswith(b"--"):
            break
        out.append(chunk.split(b"\r\n\r\n", 1)[1][:-2])
    return out


def test_qido_studies_matching_and_json(client: TestClient, services: Services) -> None:
    ds = _store(services, "CT_small.dcm")
    _store(services, "MR_small.dcm")
    r = client.get(f"{ROOT}/studies", params={"PatientName": "compressed*ct1"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    (study,) = r.json()
    assert study["0020000D"]["Value"] == [ds.StudyInstanceUID]
    assert study["00100010"]["Value"] == [{"Alphabetic": str(ds.PatientName)}]
    assert study["00081190"]["Value"][0].endswith(f"{ROOT}/studies/{ds.StudyInstanceUID}")
    assert study["00080061"]["Value"] == ["CT"]
    # OHIF-style requests
    r = client.get(f"{ROOT}/studies?00100020=*&limit=101&offset=0&fuzzymatching=false"
                   "&includefield=00081030,00080060&StudyDate=19000101-20991231")
    assert r.status_code == 200 and len(r.json()) == 2
    assert client.get(f"{ROOT}/studies", params={"limit": 1}).json().__len__() == 1


def test_qido_past_the_result_cap_warns_and_pages(client: TestClient, services: Services,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """More matches than the server returns at once: the first ones and a Warning 299
    (PS3.18 8.3.4.4); the rest by offset. A limit under the cap is exact, no warning."""
    import viewer_api.qido
    from pacs.demo import generate_bulk

    for ds in generate_bulk(7, 3, 1):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        services.ingest.store_instance(CLI, buf.getvalue())
    monkeypatch.setattr(viewer_api.qido, "MAX_RESULTS", 2)
    for params in ({}, {"limit": 5}):
        r = client.get(f"{ROOT}/studies", params=params)
        assert r.status_code == 200 and len(r.json()) == 2
        assert "more than 2 matches" in r.headers["warning"]
    first = {s["0020000D"]["Value"][0] for s in r.json()}
    r = client.get(f"{ROOT}/studies", params={"offset": 2})
    assert len(r.json()) == 1 and "warning" not in r.headers
    assert r.json()[0]["0020000D"]["Value"][0] not in first
    r = client.get(f"{ROOT}/studies", params={"limit": 2})
    assert len(r.json()) == 2 and "warning" not in r.headers
    r = client.get(f"{ROOT}/studies", params={"PatientWeight": "70"})  # not indexed: ignored
    assert r.status_code == 200 and len(r.json()) == 2
    assert r.headers["warning"].count("299 MINIPACS") == 2 and "PatientWeight" in r.headers["warning"]


def test_qido_bad_parameters_are_400(client: TestClient) -> None:
    for params in ({"NotAnAttribute": "x"}, {"limit": "-1"}, {"StudyDate": "2024-13-45x"},
                   {"includefield": "Bogus"}, {"fuzzymatching": "maybe"}):
        r = client.get(f"{ROOT}/studies", params=params)
        assert r.status_code == 400, params
        assert r.json()["message"]


def test_qido_series_and_instances(client: TestClient, services: Services) -> None:
    ds = _store(services, "CT_small.dcm")
    series = client.get(f"{ROOT}/studies/{ds.StudyInstanceUID}/series").json()
    assert [s["0020000E"]["Value"][0] for s in series] == [ds.SeriesInstanceUID]
    instances = client.get(f"{ROOT}/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
    assert instances[0]["00080016"]["Value"] == [ds.SOPClassUID]


def test_wado_instance_as_stored_and_default_transcoded(client: TestClient, services: Services) -> None:
    raw = testdata("JPEG2000.dcm").read_bytes()
    services.ingest.store_instance(CLI, raw)
    ds = pydicom.dcmread(io.BytesIO(raw))
    url = (f"{ROOT}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    stored = client.get(url, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert stored.status_code == 200 and _parts(stored) == [raw]
    assert stored.headers["content-length"] == str(len(stored.content))
    native = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert "content-length" not in native.headers  # transcoded: its length known only later
    (part,) = _parts(native)
    got = pydicom.dcmread(io.BytesIO(part))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    bad = client.get(url, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'})
    assert bad.status_code == 406


def test_wado_series_as_stored_has_the_answer_length(client: TestClient, services: Services) -> None:
    """Objects served as stored: the whole multipart answer's length is sent up front."""
    from pacs.demo import generate_bulk

    sent = {}
    for ds in generate_bulk(9, 1, 3):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        services.ingest.store_instance(CLI, buffer.getvalue())
        sent[str(ds.SOPInstanceUID)] = buffer.getvalue()
    r = client.get(f"{ROOT}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}",
                   headers={"Accept": 'multipart/related; type="application/dicom"; '
                                      'transfer-syntax=*'})
    assert r.status_code == 200 and r.headers["content-length"] == str(len(r.content))
    assert sorted(_parts(r)) == sorted(sent.values())


def test_wado_metadata_frames_rendered(client: TestClient, services: Services) -> None:
    ds = _store(services, "CT_small.dcm")
    series_url = f"{ROOT}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    meta = client.get(f"{series_url}/metadata").json()
    assert meta[0]["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert meta[0]["7FE00010"]["BulkDataURI"].startswith("http")
    assert client.get(f"{series_url}/metadata").json() == meta  # cached copy is identical
    inst_url = f"{series_url}/instances/{ds.SOPInstanceUID}"
    (frame,) = _parts(client.get(f"{inst_url}/frames/1"))
    assert np.array_equal(np.frombuffer(frame, dtype="<i2").reshape(ds.Rows, ds.Columns),
                          ds.pixel_array)
    assert client.get(f"{inst_url}/frames/2").status_code == 404
    img = client.get(f"{inst_url}/rendered", params={"window": "40,400", "viewport": "64,64"})
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(img.content)).size == (64, 64)
    again = client.get(f"{inst_url}/rendered", params={"window": "40,400", "viewport": "64,64"},
                       headers={"If-None-Match": img.headers["etag"]})
    assert again.status_code == 304
    png = client.get(f"{inst_url}/rendered", headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    thumb = client.get(f"{ROOT}/studies/{ds.StudyInstanceUID}/thumbnail")
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) == 128
    assert client.get(f"{inst_url}/rendered", params={"window": "abc"}).status_code == 400


def test_unknown_and_invalid_uids(client: TestClient) -> None:
    assert client.get(f"{ROOT}/studies/1.2.3/metadata").status_code == 404
    assert client.get(f"{ROOT}/studies/..%2F..%2Fetc/metadata").status_code in (400, 404)
    assert client.get(f"{ROOT}/studies/1.2.abc/series").status_code == 400


def _multipart(files: list[bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
                    for f in files) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_then_found_with_partial_failure(client: TestClient, services: Services) -> None:
    good = testdata("CT_small.dcm").read_bytes()
    body, ctype = _multipart([good, b"not dicom at all"])
    r = client.post(f"{ROOT}/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 202
    result = r.json()
    assert len(result["00081199"]["Value"]) == 1 and len(result["00081198"]["Value"]) == 1
    assert result["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    uid = pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID
    assert client.get(f"{ROOT}/instances", params={"SOPInstanceUID": uid}).json()
    body, ctype = _multipart([good])
    again = client.post(f"{ROOT}/studies", content=body, headers={"Content-Type": ctype})
    assert again.status_code == 200  # idempotent
    wrong_study = client.post(f"{ROOT}/studies/1.2.3.4", content=body, headers={"Content-Type": ctype})
    assert wrong_study.status_code == 409
    assert client.post(f"{ROOT}/studies", content=b"x",
                       headers={"Content-Type": "application/json"}).status_code == 415


def test_wado_uri(client: TestClient, services: Services) -> None:
    ds = _store(services, "CT_small.dcm")
    params = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID,
              "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID}
    jpeg = client.get("/wado", params=params)
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    dcm = client.get("/wado", params={**params, "contentType": "application/dicom"})
    assert dcm.content == testdata("CT_small.dcm").read_bytes()
    sized = client.get("/wado", params={**params, "rows": 32, "columns": 32,
                                        "windowCenter": 40, "windowWidth": 400})
    assert Image.open(io.BytesIO(sized.content)).size == (32, 32)
    assert client.get("/wado", params={**params, "requestType": "X"}).status_code == 400
    missing = client.get("/wado", params={**params, "objectUID": f"2.25.{uuid.uuid4().int}"})
    assert missing.status_code == 404


def test_cors_for_another_origin(services: Services) -> None:
    from dataclasses import replace

    services.settings = replace(services.settings, cors_origins=("http://ohif.example",))
    with TestClient(create_app(services)) as c:
        r = c.options(f"{ROOT}/studies", headers={
            "Origin": "http://ohif.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://ohif.example"


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtdose.dcm", "SC_rgb_rle_2frame.dcm",
                                  "MR_small_bigendian.dcm", "JPEG2000.dcm", "image_dfl.dcm"])
def test_frames_equal_decoded_pixels(client: TestClient, services: Services, name: str) -> None:
    """Uncompressed frames (ranged reads where native) equal pydicom's decoded frames."""
    ds = _store(services, name)
    url = (f"{ROOT}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/frames/")
    count = int(ds.get("NumberOfFrames", 1))
    frames = _parts(client.get(url + ",".join(str(n) for n in range(1, count + 1))))
    pixels = ds.pixel_array if count > 1 else ds.pixel_array[None]
    assert len(frames) == count
    for n, frame in enumerate(frames):
        expected = pixels[n]
        got = np.frombuffer(frame, dtype=expected.dtype.newbyteorder("<")).reshape(expected.shape)
        assert np.array_equal(got, expected), (name, n)


def test_metadata_precomputed_after_store(services: Services) -> None:
    import time

    from sqlalchemy import select

    from pacs.index.models import Instance

    _store(services, "CT_small.dcm")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with services.engine.connect() as conn:
            if conn.execute(select(Instance.metadata_json)).scalar_one() is not None:
                return
        time.sleep(0.05)
    raise AssertionError("metadata was not precomputed in the background")
