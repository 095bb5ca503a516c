"""C-FIND over the network with the pending responses written by ``dicom_scp.find_responses``:
every uncompressed transfer syntax on its own, small and unlimited maximum PDU lengths, many
matches, the identifiers byte for byte as pydicom encodes them (PS3.7 9.1.2, 9.3.2.2), C-CANCEL
(PS3.7 9.3.2.3), an association aborted mid-answer, and DCMTK's findscu parsing the answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicom_scp import handlers
from dicom_scp.identifier import EXPLICIT_BIG, EXPLICIT_LITTLE, IMPLICIT_LITTLE, SYNTAXES
from pacs.config import Settings
from pacs.context import Caller
from pacs.index.attributes import Level
from pacs.query import QueryRequest
from tests.conftest import RunningArchive
from tests.index.synthetic import instance_bytes
from tests.interop import dcmtk

MANY = 1200  # instances in one series: IMAGE level answers with this many matches
STUDY = "1.2.826.0.1.3680043.10.543.1"
MANY_SERIES = f"{STUDY}.9"
PATIENTS = {  # PatientID -> name, (modality of each series) per study
    "VN001": ("Nguyễn^Văn An", [["CT", "MR", "CT"], ["SR"]]),
    "VN002": ("Trần^Thị Bích", [["MR"]]),
    "VN003": ("Lê^Đức", [[]]),  # a study whose series has no modality
    "VN004": ("", [["OT"]]),  # no name at all
}
STUDY_KEYS = ["PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "ReferringPhysicianName", "InstitutionName"]  # the last is not indexed


def _load(archive: RunningArchive) -> None:
    ingest = archive.svc.ingest
    for p, (patient_id, (name, studies)) in enumerate(PATIENTS.items()):
        for s, modalities in enumerate(studies):
            study = f"{STUDY}.{p}.{s}"
            for r, modality in enumerate(modalities or [""]):
                extra: dict[str, Any] = {"Modality": modality} if modality else {}
                ingest.store_instance(Caller.cli(), instance_bytes(
                    f"{study}.{r}.1", study, f"{study}.{r}", PatientName=name,
                    PatientID=patient_id, StudyDate=f"2024010{s + 1}", StudyTime="101500.25",
                    AccessionNumber=f"ACC{p}{s}" if s else "",
                    StudyDescription="Chụp cắt lớp vi tính ngực" if r else "CT",
                    ReferringPhysicianName="Phạm^Hùng", Rows=512, Columns=512, **extra))
    for i in range(MANY):
        ingest.store_instance(Caller.cli(), instance_bytes(
            f"{MANY_SERIES}.{i}", f"{STUDY}.9", MANY_SERIES, PatientName="Võ^Thị Many",
            PatientID="VN009", Modality="CT", InstanceNumber=i, Rows=16 + i % 3, Columns=i))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningArchive]:
    """One archive on the embedded pair for the module: the behaviour under test is the
    adapter's, not the backend's."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("find") / "pacs-data",
                        dicom_host="127.0.0.1", dicom_port=0, ae_title="MINIPACS")
    running = RunningArchive(settings)
    _load(running)
    yield running
    running.stop()


@dataclass
class Answer:
    statuses: list[int]
    identifiers: list[bytes]  # the data sets exactly as received


def query(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def associate(archive: RunningArchive, model: str, syntax: str, max_pdu: int,
              received: list[tuple[int, bytes]]) -> Association:
    ae = AE("FINDSCU")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(model, [syntax])
    ae.add_requested_context(Verification)

    def record(event: Any) -> None:
        message = event.message
        if message.command_set.CommandField == 0x8020:
            received.append((int(message.command_set.Status), message.data_set.getvalue()))

    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS",
                         evt_handlers=[(evt.EVT_DIMSE_RECV, record)])
    assert assoc.is_established
    return assoc


def find(archive: RunningArchive, identifier: Dataset,
         model: str = StudyRootQueryRetrieveInformationModelFind, syntax: str = EXPLICIT_LITTLE,
         max_pdu: int = 16384) -> Answer:
    received: list[tuple[int, bytes]] = []
    assoc = associate(archive, model, syntax, max_pdu, received)
    statuses = [int(status.Status) for status, _ in assoc.send_c_find(identifier, model)]
    assoc.release()
    assert [s for s, _ in received] == statuses
    return Answer(statuses, [data for _, data in received if data])


def expected(archive: RunningArchive, identifier: Dataset, syntax: str) -> list[bytes]:
    """The identifiers pydicom would have encoded for the query service's matches."""
    level = Level.parse(identifier.QueryRetrieveLevel)
    filters, keys = handlers._identifier_filters(identifier)
    out = []
    for match in archive.svc.query.search(Caller.system(), QueryRequest(level, filters, keys)):
        fp = DicomBytesIO()
        fp.is_implicit_VR = syntax == IMPLICIT_LITTLE
        fp.is_little_endian = syntax != EXPLICIT_BIG
        write_dataset(fp, handlers._response(match, level, "MINIPACS"))
        out.append(fp.getvalue())
    return out


QUERIES = {
    "study": (StudyRootQueryRetrieveInformationModelFind,
              query(QueryRetrieveLevel="STUDY", **dict.fromkeys(STUDY_KEYS, ""))),
    "names": (StudyRootQueryRetrieveInformationModelFind,
              query(QueryRetrieveLevel="STUDY", SpecificCharacterSet="ISO_IR 192",
                    PatientName="nguyen*", StudyInstanceUID="", ModalitiesInStudy="")),
    "patient": (PatientRootQueryRetrieveInformationModelFind,
                query(QueryRetrieveLevel="PATIENT", PatientName="", PatientID="",
                      PatientSex="", NumberOfPatientRelatedStudies="",
                      NumberOfPatientRelatedInstances="")),
    "series": (StudyRootQueryRetrieveInformationModelFind,
               query(QueryRetrieveLevel="SERIES", StudyInstanceUID=f"{STUDY}.0.0",
                     SeriesInstanceUID="", Modality="", NumberOfSeriesRelatedInstances="")),
    "images": (StudyRootQueryRetrieveInformationModelFind,
               query(QueryRetrieveLevel="IMAGE", StudyInstanceUID=f"{STUDY}.9",
                     SeriesInstanceUID=MANY_SERIES, SOPInstanceUID="", InstanceNumber="",
                     Rows=None, Columns=None, SOPClassUID="", PatientName="")),
}


@pytest.mark.parametrize("max_pdu", [0, 4096, 128])
@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("name", list(QUERIES))
def test_identifiers_arrive_as_pydicom_encodes_them(archive: RunningArchive, name: str,
                                                    syntax: str, max_pdu: int) -> None:
    if name == "images" and max_pdu == 128:
        pytest.skip("1200 matches in 128-byte PDUs: covered by the 4096 case and framing tests")
    model, identifier = QUERIES[name]
    answer = find(archive, identifier, model, syntax, max_pdu)
    want = expected(archive, identifier, syntax)
    assert want, name
    assert answer.statuses == [0xFF00] * len(want) + [0x0000]
    assert answer.identifiers == want


def test_a_key_the_plan_cannot_encode_goes_through_pynetdicom(archive: RunningArchive) -> None:
    identifier = query(QueryRetrieveLevel="IMAGE", SeriesInstanceUID=MANY_SERIES,
                       SOPInstanceUID="", SmallestImagePixelValue=None)  # VR "US or SS"
    answer = find(archive, identifier)
    assert answer.statuses == [0xFF00] * MANY + [0x0000]
    decoded = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(i), force=True)
               for i in answer.identifiers[:3]]
    assert [str(ds.SOPInstanceUID) for ds in decoded] == [f"{MANY_SERIES}.{i}" for i in range(3)]


def test_a_bad_query_fails_as_before(archive: RunningArchive) -> None:
    for identifier, status in ((query(QueryRetrieveLevel="FOO", StudyInstanceUID=""), 0xA900),
                               (query(QueryRetrieveLevel="STUDY", StudyDate="2024-13-45x"),
                                0xA900)):
        answer = find(archive, identifier)
        assert answer.statuses == [status]
    patient = query(QueryRetrieveLevel="PATIENT", PatientID="")  # not in Study Root
    assert find(archive, patient).statuses == [0xA900]


def test_no_match_is_a_lone_success(archive: RunningArchive) -> None:
    answer = find(archive, query(QueryRetrieveLevel="STUDY", PatientID="NOBODY",
                                 StudyInstanceUID=""))
    assert answer.statuses == [0x0000]


def test_several_queries_on_one_association(archive: RunningArchive) -> None:
    """Our writes and pynetdicom's final responses stay in order, request after request."""
    received: list[tuple[int, bytes]] = []
    assoc = associate(archive, StudyRootQueryRetrieveInformationModelFind, IMPLICIT_LITTLE,
                      4096, received)
    model, identifier = QUERIES["study"]
    for _ in range(3):
        statuses = [int(s.Status) for s, _ in assoc.send_c_find(identifier, model)]
        assert statuses[-1] == 0x0000 and len(statuses) > 1
        assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert [d for _, d in received if d] == expected(archive, identifier, IMPLICIT_LITTLE) * 3


def test_cancel_stops_the_responses(archive: RunningArchive,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A C-CANCEL received while the SCP works on the request (PS3.7 9.3.2.3): no pending
    response after it, final status Cancel.

    To make "while" certain, the query (the real one) returns only once the server's DIMSE
    layer holds the C-CANCEL; pynetdicom drops a C-CANCEL that arrives before the handler
    starts."""
    server = archive.service.server  # type: ignore[union-attr]
    search = archive.svc.query.search

    def search_after_cancel(*args: Any) -> Any:
        started.set()
        [served] = server.active_associations
        deadline = time.monotonic() + 10
        while not served.dimse.cancel_req and time.monotonic() < deadline:
            time.sleep(0.001)
        return search(*args)

    started = threading.Event()
    monkeypatch.setattr(archive.svc.query, "search", search_after_cancel)
    received: list[tuple[int, bytes]] = []
    assoc = associate(archive, StudyRootQueryRetrieveInformationModelFind, EXPLICIT_LITTLE,
                      16384, received)
    context_id = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelFind, "",
                                          "scu").context_id
    model, identifier = QUERIES["images"]
    canceller = threading.Thread(target=lambda: started.wait(10) and assoc.send_c_cancel(
        1, context_id))
    canceller.start()
    statuses = [int(s.Status) for s, _ in assoc.send_c_find(identifier, model, msg_id=1)]
    canceller.join()
    assoc.release()
    assert statuses == [0xFE00]


def test_cancel_after_the_first_response(archive: RunningArchive,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The SCU cancels on seeing the first match: the responses not yet written are dropped.

    The matches (the real ones) come out of the query only once the server's DIMSE layer
    holds the C-CANCEL after the first two, so that the SCP is certainly not done before it
    (it writes 1,200 responses in a few milliseconds)."""
    server = archive.service.server  # type: ignore[union-attr]
    search = archive.svc.query.search

    def slow_matches(*args: Any) -> Iterator[Any]:
        [served] = server.active_associations
        for index, match in enumerate(search(*args)):
            deadline = time.monotonic() + 10
            while index == 2 and not served.dimse.cancel_req and time.monotonic() < deadline:
                time.sleep(0.001)
            yield match

    monkeypatch.setattr(archive.svc.query, "search", slow_matches)
    received: list[tuple[int, bytes]] = []
    assoc = associate(archive, StudyRootQueryRetrieveInformationModelFind, EXPLICIT_LITTLE,
                      16384, received)
    model, identifier = QUERIES["images"]
    statuses = []
    for status, _ in assoc.send_c_find(identifier, model, msg_id=7):
        statuses.append(int(status.Status))
        if len(statuses) == 1:
            cx = assoc._get_valid_context(model, "", "scu")
            assoc.send_c_cancel(7, cx.context_id)
    assoc.release()
    assert statuses[-1] == 0xFE00
    assert 1 <= len(statuses) - 1 <= 2
    assert set(statuses[:-1]) == {0xFF00}


def test_an_aborted_association_ends_the_handler(archive: RunningArchive) -> None:
    server = archive.service.server  # type: ignore[union-attr]
    received: list[tuple[int, bytes]] = []
    assoc = associate(archive, StudyRootQueryRetrieveInformationModelFind, EXPLICIT_LITTLE,
                      16384, received)
    model, identifier = QUERIES["images"]
    for status, _ in assoc.send_c_find(identifier, model):
        assert status.Status == 0xFF00
        assoc.abort()
        break
    deadline = time.monotonic() + 10
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.active_associations == []
    answer = find(archive, QUERIES["names"][1])  # and the service keeps serving
    assert answer.statuses[-1] == 0x0000


# -- DCMTK -------------------------------------------------------------------------------------

@pytest.mark.interop
@pytest.mark.parametrize(("option", "syntax"), [("-xi", IMPLICIT_LITTLE),
                                                ("-xe", EXPLICIT_LITTLE),
                                                ("-xb", EXPLICIT_BIG)])
def test_findscu_parses_every_answer(archive: RunningArchive, tmp_path: Path,
                                     dcmtk_env: dict[str, str], option: str,
                                     syntax: str) -> None:
    out = tmp_path / "rsp"
    out.mkdir()
    result = dcmtk.run("findscu", "-d", *dcmtk.NET_OPTIONS, option, "--max-pdu", "4096", "-S",
                       "-aec", dcmtk.CALLED_AE, "-X", "-od", str(out),
                       *dcmtk.keys("QueryRetrieveLevel=IMAGE", f"SeriesInstanceUID={MANY_SERIES}",
                                   "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                                   "PatientName"),
                       dcmtk.HOST, str(archive.port), env=dcmtk_env)
    assert result.final("C-FIND RSP").status == 0, str(result)
    files = sorted(out.glob("rsp*.dcm"))
    assert len(files) == MANY, str(result)
    assert len(result.responses("C-FIND RSP")) == MANY + 1
    found = {}
    for path in files:
        ds = pydicom.dcmread(path)
        found[int(ds.InstanceNumber)] = ds
    assert sorted(found) == list(range(MANY))
    sample = found[MANY - 1]
    assert (sample.SOPInstanceUID, sample.Rows, sample.Columns, str(sample.PatientName)) == (
        f"{MANY_SERIES}.{MANY - 1}", 16 + (MANY - 1) % 3, MANY - 1, "Võ^Thị Many")
    assert sample.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.interop
def test_findscu_vietnamese_names_and_modalities(archive: RunningArchive, tmp_path: Path,
                                                 dcmtk_env: dict[str, str]) -> None:
    out = tmp_path / "rsp"
    out.mkdir()
    result = dcmtk.run("findscu", "-d", *dcmtk.NET_OPTIONS, "-S", "-aec", dcmtk.CALLED_AE,
                       "-X", "-od", str(out),
                       *dcmtk.keys("QueryRetrieveLevel=STUDY", "PatientName=*",
                                   "PatientID=VN001", "StudyInstanceUID", "ModalitiesInStudy",
                                   "StudyDescription"),
                       dcmtk.HOST, str(archive.port), env=dcmtk_env)
    assert result.final("C-FIND RSP").status == 0, str(result)
    found = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    modalities = [ds.ModalitiesInStudy for ds in found]
    assert [list(m) if isinstance(m, MultiValue) else [m] for m in modalities] == [
        ["CT", "MR"], ["SR"]]
    assert {str(ds.PatientName) for ds in found} == {"Nguyễn^Văn An"}
    assert found[0].StudyDescription == "CT"
