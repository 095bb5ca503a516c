"""A large multi-frame object never sits whole in the archive's memory (issue 3).

A 256 MiB object, written to disk block by block, goes into a ``pacs serve`` subprocess with
DCMTK's ``storescu`` and STOW-RS, and comes back with ``getscu`` (C-GET), WADO-RS and WADO-URI,
unchanged (SHA-256 of the data set). For each transfer the server's peak resident memory
(VmHWM, reset before the transfer) must grow by far less than the object: under a quarter.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.infra import free_port
from tests.interop import dcmtk
from tests.interop.dcmtk import keys
from tests.large_object import (
    ArchiveProcess,
    LargeObject,
    archive_env,
    dataset_sha256,
    file_slice_sha256,
    memory,
    multipart_first_part,
    reset_peak,
    write_multiframe,
)

pytestmark = pytest.mark.interop
PIXEL_BYTES = 256 << 20
TIMEOUT = 240.0


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LargeObject]:
    folder = tmp_path_factory.mktemp("large")
    obj = write_multiframe(folder / "large.dcm", PIXEL_BYTES, seed=3)
    yield obj
    obj.path.unlink(missing_ok=True)


@pytest.fixture
def server(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ArchiveProcess]:
    extra: dict[str, str] = {}
    if backend == "production":
        seaweed = request.getfixturevalue("seaweedfs")
        extra = dict(PACS_DATABASE_URL=request.getfixturevalue("postgres_url"),
                     PACS_STORAGE_URL=f"s3://{request.getfixturevalue('s3_bucket')}",
                     PACS_S3_ENDPOINT=seaweed.endpoint, PACS_S3_ACCESS_KEY=seaweed.access_key,
                     PACS_S3_SECRET_KEY=seaweed.secret_key, PACS_S3_SECURE="false")
    proc = ArchiveProcess(archive_env(tmp_path / "data", free_port(), **extra),
                          tmp_path / "serve.log")
    yield proc
    proc.stop()


class Watch:
    """Peak RSS growth of the server during one transfer."""

    def __init__(self, server: ArchiveProcess) -> None:
        self.pid = server.pid

    def __enter__(self) -> Watch:
        self.before = memory(self.pid)["VmRSS"]
        reset_peak(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = memory(self.pid)["VmHWM"] - self.before


def _check_growth(what: str, watch: Watch, obj: LargeObject) -> None:
    assert watch.growth < obj.size // 4, (
        f"{what}: server peak RSS grew by {watch.growth >> 20} MiB for a "
        f"{obj.size >> 20} MiB object")


def _store_scu(server: ArchiveProcess, obj: LargeObject, env: dict[str, str]) -> None:
    with Watch(server) as watch:
        run = dcmtk.run("storescu", "-d", *dcmtk.NET_OPTIONS, "-aec", dcmtk.CALLED_AE,
                        dcmtk.HOST, str(server.dicom_port), str(obj.path), env=env,
                        timeout=TIMEOUT)
    assert run.returncode == 0, str(run)
    assert run.final("C-STORE RSP").status == 0, str(run)
    _check_growth("C-STORE", watch, obj)


def _get_scu(server: ArchiveProcess, obj: LargeObject, env: dict[str, str], out: Path) -> None:
    out.mkdir()
    with Watch(server) as watch:
        run = dcmtk.run("getscu", "-d", *dcmtk.NET_OPTIONS, "-aec", dcmtk.CALLED_AE, "-S",
                        *keys("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={obj.study_uid}"),
                        "-od", str(out), dcmtk.HOST, str(server.dicom_port), env=env,
                        timeout=TIMEOUT)
    assert run.final("C-GET RSP").status == 0, str(run)
    received = dcmtk.read_dir(out)
    assert list(received) == [obj.sop_instance_uid]
    assert dataset_sha256(received[obj.sop_instance_uid]) == obj.dataset_sha256
    _check_growth("C-GET", watch, obj)


def _wado(server: ArchiveProcess, obj: LargeObject, out: Path) -> None:
    url = (f"{server.http}/dicomweb/studies/{obj.study_uid}/series/{obj.series_uid}"
           f"/instances/{obj.sop_instance_uid}")
    with Watch(server) as watch, httpx.stream(
            "GET", url, timeout=TIMEOUT,
            headers={"Accept": 'multipart/related; type="application/dicom"; '
                               "transfer-syntax=*"}) as response:
        assert response.status_code == 200, response.read()[:500]
        with open(out, "wb") as f:
            for chunk in response.iter_bytes(1 << 20):
                f.write(chunk)
    offset, length = multipart_first_part(out)
    assert file_slice_sha256(out, offset, length) == obj.dataset_sha256
    _check_growth("WADO-RS", watch, obj)
    uri = (f"{server.http}/wado?requestType=WADO&studyUID={obj.study_uid}"
           f"&seriesUID={obj.series_uid}&objectUID={obj.sop_instance_uid}"
           "&contentType=application/dicom")
    with Watch(server) as watch, httpx.stream("GET", uri, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        with open(out, "wb") as f:
            for chunk in response.iter_bytes(1 << 20):
                f.write(chunk)
    assert dataset_sha256(out) == obj.dataset_sha256
    _check_growth("WADO-URI", watch, obj)
    out.unlink()


def _rendered(server: ArchiveProcess, obj: LargeObject) -> None:
    """A frame and the thumbnail of the object: its header and one frame read by range."""
    base = (f"{server.http}/dicomweb/studies/{obj.study_uid}/series/{obj.series_uid}"
            f"/instances/{obj.sop_instance_uid}")
    frames = (obj.size - 4096) // (512 * 512 * 2)  # whole 512 x 512 16-bit frames
    with Watch(server) as watch:
        for url, size in ((f"{base}/frames/{frames}/rendered", (512, 512)),
                          (f"{base}/thumbnail", (128, 128))):
            response = httpx.get(url, timeout=TIMEOUT, headers={"Accept": "image/png"})
            assert response.status_code == 200, response.text[:500]
            image = Image.open(BytesIO(response.content))
            assert (image.format, image.size) == ("PNG", size)
    _check_growth("rendered", watch, obj)


def test_large_object_streams_through_dimse_and_dicomweb(
        server: ArchiveProcess, large: LargeObject, dcmtk_env: dict[str, str],
        tmp_path: Path) -> None:
    _store_scu(server, large, dcmtk_env)
    _get_scu(server, large, dcmtk_env, tmp_path / "got")
    _wado(server, large, tmp_path / "wado.bin")
    _rendered(server, large)


def _multipart_body(obj: LargeObject, boundary: str) -> Iterator[bytes]:
    yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with open(obj.path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def test_large_stow_rs_upload_streams(server: ArchiveProcess, large: LargeObject,
                                      tmp_path: Path) -> None:
    boundary = "large-object-boundary"
    with Watch(server) as watch:
        response = httpx.post(
            f"{server.http}/dicomweb/studies", content=_multipart_body(large, boundary),
            headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                     f"boundary={boundary}"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text[:1000]
    assert "00081199" in response.json()
    _check_growth("STOW-RS", watch, large)
    _wado(server, large, tmp_path / "wado.bin")
