"""Interoperability with the ``dicomweb-client`` package (a peer we did not write) against a
real HTTP server of ours, on both backend pairs; STOW'd instances are found by C-FIND."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from pacs.context import Caller
from tests.conftest import RunningArchive, testdata
from viewer_api.server import HttpService

pytestmark = pytest.mark.interop


@pytest.fixture
def web(archive: RunningArchive) -> Iterator[tuple[DICOMwebClient, RunningArchive]]:
    from dataclasses import replace

    archive.svc.settings = replace(archive.svc.settings, http_host="127.0.0.1", http_port=0)
    http = HttpService(archive.svc)
    http.start()
    try:
        yield DICOMwebClient(url=f"http://127.0.0.1:{http.port}/dicomweb"), archive
    finally:
        http.stop()


def test_store_search_retrieve_with_dicomweb_client(web: tuple[DICOMwebClient, RunningArchive]) -> None:
    client, archive = web
    names = ["CT_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_bigendian.dcm"]
    datasets = [pydicom.dcmread(testdata(n)) for n in names]
    result = client.store_instances(datasets)
    assert len(result.ReferencedSOPSequence) == len(names)
    studies = client.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {d.StudyInstanceUID for d in datasets}
    for name, ds in zip(names, datasets, strict=True):
        got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                       media_types=(("application/dicom", "*"),))
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(got.pixel_array, ds.pixel_array), name
        meta = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert meta[0]["00080018"]["Value"] == [ds.SOPInstanceUID]
        (frame,) = client.retrieve_instance_frames(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1])
        ts = ds.file_meta.TransferSyntaxUID
        if not ts.is_compressed and ts.is_little_endian:
            assert frame == ds.PixelData[: len(frame)]
        rendered = client.retrieve_instance_rendered(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
            media_types=("image/jpeg",))
        assert rendered[:2] == b"\xff\xd8"


def test_stowed_found_by_cfind_and_cstored_found_by_qido(
        web: tuple[DICOMwebClient, RunningArchive]) -> None:
    client, archive = web
    stowed = pydicom.dcmread(testdata("CT_small.dcm"))
    client.store_instances([stowed])
    archive.svc.ingest.store_instance(Caller.cli(), testdata("MR_small.dcm").read_bytes())
    ae = AE("FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title=archive.settings.ae_title)
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = stowed.StudyInstanceUID
    found = [i for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
             if s.Status == 0xFF00]
    assoc.release()
    assert len(found) == 1
    mr = pydicom.dcmread(io.BytesIO(testdata("MR_small.dcm").read_bytes()))
    assert client.search_for_instances(search_filters={"SOPInstanceUID": mr.SOPInstanceUID})


def _pixels(ds: pydicom.Dataset) -> np.ndarray | None:
    try:
        return ds.pixel_array
    except Exception:  # noqa: BLE001 - a syntax the installed decoders cannot read
        return None


@pytest.mark.parametrize("name", sorted(__import__(
    "tests.interop.corpus", fromlist=["TRANSFER_SYNTAX_FILES"]).TRANSFER_SYNTAX_FILES))
def test_every_bundled_transfer_syntax_round_trips(web: tuple[DICOMwebClient, RunningArchive],
                                                   name: str) -> None:
    """STOW-RS in, WADO-RS out as stored (same syntax, same pixels) and as explicit VR
    little endian (decoded pixels equal the source's)."""
    client, _ = web
    source = pydicom.dcmread(testdata(name))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):  # a few test files lack them
        if keyword not in source:
            setattr(source, keyword, pydicom.uid.generate_uid())
    client.store_instances([source])
    uids = (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
    stored = client.retrieve_instance(*uids, media_types=(("application/dicom", "*"),))
    assert stored.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert stored.PixelData == source.PixelData
    expected = _pixels(source)
    if expected is None:
        return
    native = client.retrieve_instance(
        *uids, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert native.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(native.pixel_array, expected), name
