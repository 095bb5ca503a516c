"""The archive driven by DCMTK's reference tools (echoscu, storescu, findscu, movescu, getscu,
storescp), on both backend pairs (embedded SQLite + folder, PostgreSQL + S3).

What "byte-for-byte" means here is explained in :mod:`tests.interop.corpus`: the data set the
archive stores, and later sends, equals the data set storescu put on the wire.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import update

from pacs.config import RemoteAE
from pacs.context import Caller
from pacs.index.attributes import Level
from pacs.index.models import Instance
from pacs.query import QueryRequest
from pacs.retrieve import StoredInstance
from tests.conftest import RunningArchive
from tests.infra import free_port
from tests.interop import dcmtk
from tests.interop.corpus import PATIENTS, Corpus, Source, build_corpus

pytestmark = pytest.mark.interop

NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
CANNOT_UNDERSTAND = range(0xC000, 0xD000)
IDENTIFIER_MISMATCH = range(0xA900, 0xAA00)


def is_failure(status: int) -> bool:
    return status in CANNOT_UNDERSTAND or 0xA000 <= status < 0xB000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    env = {**os.environ, "TCP_NODELAY": "1"}  # as the dcmtk_env fixture (function scope)
    return build_corpus(tmp_path_factory.mktemp("corpus"), env)


@dataclass
class Peer:
    """DCMTK tools pointed at one running archive."""

    archive: RunningArchive
    corpus: Corpus
    env: dict[str, str]
    workdir: Path
    _counter: Iterator[int]

    def fresh_dir(self, prefix: str) -> Path:
        path = self.workdir / f"{prefix}{next(self._counter)}"
        path.mkdir()
        return path

    @property
    def address(self) -> list[str]:
        return [dcmtk.HOST, str(self.archive.port)]

    def run(self, tool: str, *args: str) -> dcmtk.Run:
        return dcmtk.run(tool, "-d", *dcmtk.NET_OPTIONS, "-aec", dcmtk.CALLED_AE, *args,
                         *self.address, env=self.env)

    def echo(self, ae_title: str = "ECHOSCU") -> dcmtk.Run:
        return self.run("echoscu", "-aet", ae_title)

    def store(self, sources: list[Source] | list[Path], ae_title: str = "STORESCU") -> list[int]:
        """storescu every file (proposing its own syntax); the C-STORE statuses in order."""
        files = [s.path if isinstance(s, Source) else s for s in sources]
        result = dcmtk.run("storescu", "-d", "-nh", *dcmtk.NET_OPTIONS, "-aet", ae_title,
                           "-aec", dcmtk.CALLED_AE, *self.address,
                           *self.corpus.storescu_args(files), env=self.env)
        statuses = [r.status for r in result.responses("C-STORE RSP")]
        assert len(statuses) == len(files), str(result)
        return statuses

    def load(self, sources: list[Source]) -> None:
        statuses = self.store(sources)
        assert statuses == [0] * len(sources), [hex(s) for s in statuses]

    def find(self, model: str, *query: str) -> tuple[int, list[Dataset], list[Path]]:
        """findscu with ``-k`` keys; the final status, the responses and their files."""
        out = self.fresh_dir("find")
        result = self.run("findscu", model, "-X", "-od", str(out), *dcmtk.keys(*query))
        final = result.final("C-FIND RSP")
        files = sorted(out.glob("rsp*.dcm"))
        assert len(result.responses("C-FIND RSP")) == len(files) + 1, str(result)
        return final.status, [pydicom.dcmread(f) for f in files], files

    def find_ok(self, model: str, *query: str) -> list[Dataset]:
        status, datasets, _ = self.find(model, *query)
        assert status == 0, f"findscu {query}: 0x{status:04X}"
        return datasets

    def move(self, destination: str, *query: str, model: str = "-S") -> dcmtk.Response:
        result = self.run("movescu", model, "-aem", destination, *dcmtk.keys(*query))
        return result.final("C-MOVE RSP")

    def get(self, out: Path, *query: str, model: str = "-S") -> dcmtk.Response:
        result = self.run("getscu", model, "+B", "-od", str(out), *dcmtk.keys(*query))
        return result.final("C-GET RSP")


@pytest.fixture
def peer_for(corpus: Corpus, dcmtk_env: dict[str, str],
             tmp_path: Path) -> Callable[[RunningArchive], Peer]:
    counter = itertools.count(1)
    return lambda archive: Peer(archive, corpus, dcmtk_env, tmp_path, counter)


@pytest.fixture
def peer(archive: RunningArchive, peer_for: Callable[[RunningArchive], Peer]) -> Peer:
    return peer_for(archive)


# -- helpers over the archive's own services ------------------------------------------------

def stored(archive: RunningArchive, sop_instance_uid: str) -> list[StoredInstance]:
    return archive.svc.retrieve.find_instances(Caller.system(), Level.IMAGE,
                                               {"SOPInstanceUID": sop_instance_uid})


def stored_bytes(archive: RunningArchive, sop_instance_uid: str) -> bytes:
    found = stored(archive, sop_instance_uid)
    assert len(found) == 1, f"{sop_instance_uid}: {len(found)} instance(s) indexed"
    return archive.svc.retrieve.read(found[0])


def indexed_count(archive: RunningArchive) -> int:
    return len(list(archive.svc.query.search(Caller.system(), QueryRequest(Level.IMAGE))))


def object_count(archive: RunningArchive) -> int:
    return len(list(archive.svc.store.keys()))


def values(datasets: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(ds.get(keyword, "")) for ds in datasets)


def uids(sources: list[Source], attr: str = "sop_instance_uid") -> list[str]:
    return sorted({getattr(s, attr) for s in sources})


def assert_same_bytes(received: dict[str, Path], expected: list[Source]) -> None:
    """Each received file holds exactly the data set storescu sent for its source."""
    assert sorted(received) == uids(expected)
    for source in expected:
        raw = received[source.sop_instance_uid].read_bytes()
        meta = pydicom.dcmread(received[source.sop_instance_uid], stop_before_pixels=True)
        assert meta.file_meta.TransferSyntaxUID == source.transfer_syntax_uid, source.name
        assert dcmtk.dataset_bytes(raw) == source.sent, f"{source.name} differs"


# -- 1. C-ECHO ------------------------------------------------------------------------------

def test_echoscu(peer: Peer) -> None:
    result = peer.echo()
    assert result.returncode == 0, str(result)
    assert "Received Echo Response (Success)" in result.output, str(result)


# -- 2. C-STORE of every transfer syntax, stored byte-for-byte -------------------------------

def test_storescu_every_transfer_syntax_is_stored_byte_for_byte(
        peer: Peer, corpus: Corpus, archive: RunningArchive) -> None:
    sources = list(corpus.sources.values())
    statuses = peer.store(sources)
    assert statuses == [0] * len(sources), dict(zip([s.name for s in sources],
                                                    map(hex, statuses), strict=True))
    assert indexed_count(archive) == len(sources)
    for source in sources:
        found = stored(archive, source.sop_instance_uid)
        assert len(found) == 1, source.name
        assert found[0].transfer_syntax_uid == source.transfer_syntax_uid, source.name
        raw = archive.svc.retrieve.read(found[0])
        assert dcmtk.dataset_bytes(raw) == source.sent, f"{source.name} not stored as sent"
        meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw), stop_before_pixels=True)
        assert meta.file_meta.MediaStorageSOPInstanceUID == source.sop_instance_uid
        assert meta.file_meta.TransferSyntaxUID == source.transfer_syntax_uid


# -- 3. duplicates ---------------------------------------------------------------------------

def _changed_copy(source: Source, directory: Path) -> Path:
    """The same SOP Instance UID with other content."""
    ds = pydicom.dcmread(source.path)
    ds.ImageComments = "second, different copy"
    path = directory / f"changed-{source.name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_resend_is_idempotent_and_a_conflicting_copy_is_refused(
        peer: Peer, corpus: Corpus, archive: RunningArchive) -> None:
    first = corpus["bich_cr_1_1"]
    assert peer.store([first]) == [0]
    assert peer.store([first]) == [0]  # the same bytes again: success, nothing new
    assert indexed_count(archive) == 1
    assert object_count(archive) == 1

    changed = _changed_copy(first, peer.fresh_dir("dup"))
    [status] = peer.store([changed])
    assert is_failure(status), f"conflicting duplicate answered 0x{status:04X}"
    assert indexed_count(archive) == 1
    assert object_count(archive) == 1
    assert dcmtk.dataset_bytes(stored_bytes(archive, first.sop_instance_uid)) == first.sent
    assert peer.echo().returncode == 0


def test_resend_restores_an_object_lost_from_storage(
        peer: Peer, corpus: Corpus, archive: RunningArchive) -> None:
    """An object removed from storage behind the archive's back (`pacs verify` reports it
    missing) is stored again when the modality resends it, not answered "already stored"."""
    first = corpus["bich_cr_1_1"]
    assert peer.store([first]) == [0]
    [lost] = stored(archive, first.sop_instance_uid)
    archive.svc.store.delete(lost.storage_key)
    with archive.svc.engine.begin() as conn:  # (S3: not still in another node's spool)
        conn.execute(update(Instance).where(Instance.sop_instance_uid == first.sop_instance_uid)
                     .values(received_at=datetime.now(UTC) - timedelta(hours=2)))
    assert peer.store([first]) == [0]
    [restored] = stored(archive, first.sop_instance_uid)
    assert restored.storage_key != lost.storage_key
    assert object_count(archive) == 1
    assert dcmtk.dataset_bytes(stored_bytes(archive, first.sop_instance_uid)) == first.sent


def test_same_file_from_another_ae_title_is_idempotent(peer: Peer, corpus: Corpus,
                                                       archive: RunningArchive) -> None:
    first = corpus["bich_cr_1_1"]
    assert peer.store([first], ae_title="MODALITY") == [0]
    assert peer.store([first], ae_title="ROUTER") == [0]
    assert indexed_count(archive) == 1


def test_duplicate_policy_overwrite_replaces(
        make_archive: Callable[..., RunningArchive],
        peer_for: Callable[[RunningArchive], Peer], corpus: Corpus) -> None:
    archive = make_archive(duplicate_policy="overwrite")
    peer = peer_for(archive)
    first = corpus["bich_cr_1_1"]
    changed = _changed_copy(first, peer.fresh_dir("dup"))
    assert peer.store([first]) == [0]
    assert peer.store([changed]) == [0]
    assert indexed_count(archive) == 1
    assert object_count(archive) == 1  # the replaced object's bytes are gone
    raw = stored_bytes(archive, first.sop_instance_uid)
    assert dcmtk.dataset_bytes(raw) == dcmtk.dataset_bytes(changed.read_bytes())


# -- 4. C-FIND ------------------------------------------------------------------------------

STUDY_KEYS = ("an_ct", "an_mr", "bich_cr", "pct_cr", "decoy_cr")


@pytest.fixture
def loaded(peer: Peer, corpus: Corpus) -> Peer:
    """The archive holding the synthetic studies (Vietnamese names, SQL wildcard values)."""
    peer.load(corpus.studies(*STUDY_KEYS))
    return peer


def test_findscu_every_level_and_computed_attributes(loaded: Peer, corpus: Corpus) -> None:
    an_ct, an_mr = corpus.study("an_ct"), corpus.study("an_mr")
    ct_uid = an_ct[0].study_uid
    series = uids(an_ct, "series_uid")

    # PATIENT (Patient Root only)
    [patient] = loaded.find_ok("-P", "QueryRetrieveLevel=PATIENT", "PatientID=BN001",
                               "PatientName", "NumberOfPatientRelatedStudies",
                               "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances")
    assert patient.QueryRetrieveLevel == "PATIENT"
    assert patient.PatientName == PATIENTS["an"].name
    assert (int(patient.NumberOfPatientRelatedStudies), int(patient.NumberOfPatientRelatedSeries),
            int(patient.NumberOfPatientRelatedInstances)) == (2, 3, 5)

    # STUDY, with both information models
    for model in ("-S", "-P"):
        studies = loaded.find_ok(model, "QueryRetrieveLevel=STUDY", "PatientID=BN001",
                                 "StudyInstanceUID", "ModalitiesInStudy", "StudyDate",
                                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
        by_uid = {str(ds.StudyInstanceUID): ds for ds in studies}
        assert sorted(by_uid) == sorted([ct_uid, an_mr[0].study_uid])
        ct = by_uid[ct_uid]
        assert ct.ModalitiesInStudy == "CT"
        assert ct.StudyDate == "20240315"
        assert (int(ct.NumberOfStudyRelatedSeries), int(ct.NumberOfStudyRelatedInstances)) == (2, 4)
        mr = by_uid[an_mr[0].study_uid]
        assert (mr.ModalitiesInStudy, int(mr.NumberOfStudyRelatedInstances)) == ("MR", 1)

    # SERIES
    for model in ("-S", "-P"):
        found = loaded.find_ok(model, "QueryRetrieveLevel=SERIES", "PatientID=BN001",
                               f"StudyInstanceUID={ct_uid}", "SeriesInstanceUID", "Modality",
                               "SeriesNumber", "NumberOfSeriesRelatedInstances")
        assert values(found, "SeriesInstanceUID") == series
        assert {(ds.Modality, int(ds.NumberOfSeriesRelatedInstances)) for ds in found} == {
            ("CT", 2)}
        assert all(ds.QueryRetrieveLevel == "SERIES" for ds in found)

    # IMAGE
    first_series = [s for s in an_ct if s.series_uid == series[0]]
    for model in ("-S", "-P"):
        found = loaded.find_ok(model, "QueryRetrieveLevel=IMAGE", "PatientID=BN001",
                               f"StudyInstanceUID={ct_uid}", f"SeriesInstanceUID={series[0]}",
                               "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows")
        assert values(found, "SOPInstanceUID") == uids(first_series)
        assert {(ds.SOPClassUID, ds.Rows) for ds in found} == {(first_series[0].sop_class_uid,
                                                                32)}
        assert sorted(int(ds.InstanceNumber) for ds in found) == [1, 2]


def test_findscu_matching_types(loaded: Peer, corpus: Corpus) -> None:
    study = {key: corpus.study(key)[0].study_uid for key in STUDY_KEYS}

    def studies(*query: str) -> list[str]:
        found = loaded.find_ok("-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *query)
        return sorted(str(ds.StudyInstanceUID) for ds in found)

    def expect(*keys: str) -> list[str]:
        return sorted(study[k] for k in keys)

    # single value, universal (empty), wildcard '*' and '?'
    assert studies("StudyDate=20240315") == expect("an_ct")
    assert studies("PatientID=BN002") == expect("bich_cr")
    assert studies("StudyDate") == expect(*STUDY_KEYS)
    assert studies("PatientID=*") == expect(*STUDY_KEYS)
    assert studies("PatientID=BN00?") == expect("an_ct", "an_mr", "bich_cr")
    assert studies("PatientID=BN*") == expect("an_ct", "an_mr", "bich_cr")
    assert studies("PatientID=BN00") == []
    # date ranges: A-B, A-, -B (inclusive)
    assert studies("StudyDate=20240101-20241231") == expect("an_ct", "bich_cr")
    assert studies("StudyDate=20240315-20241120") == expect("an_ct", "bich_cr")
    assert studies("StudyDate=20250101-") == expect("an_mr")
    assert studies("StudyDate=-20231231") == expect("pct_cr", "decoy_cr")
    # list of UIDs
    assert studies(f"StudyInstanceUID={study['an_ct']}\\{study['bich_cr']}") == expect(
        "an_ct", "bich_cr")
    # the computed ModalitiesInStudy as a matching key
    assert studies("ModalitiesInStudy=CR") == expect("bich_cr", "pct_cr", "decoy_cr")
    # combined keys
    assert studies("PatientID=BN001", "ModalitiesInStudy=MR") == expect("an_mr")

    # '%', '_' and a quote are literal characters, in equality and in wildcard matching
    assert studies("PatientID=PCT%_'1") == expect("pct_cr")
    assert studies("PatientID=PCT%_'*") == expect("pct_cr")
    assert studies("PatientID=PCT%*") == expect("pct_cr")
    assert studies("PatientID=PCT_*") == []
    assert studies("PatientID=PCT__'1") == []
    assert studies("PatientName=*100%_*") == expect("pct_cr")
    assert studies("PatientName=o'brien*") == expect("pct_cr")
    assert studies("PatientID=x' OR '1'='1") == []


def test_findscu_person_names_ignore_diacritics_and_come_back_in_utf8(
        loaded: Peer, corpus: Corpus) -> None:
    an = PATIENTS["an"]
    status, found, files = loaded.find("-S", "QueryRetrieveLevel=STUDY", "PatientName=nguyen*",
                                       "PatientID", "StudyInstanceUID")
    assert status == 0
    assert values(found, "StudyInstanceUID") == uids(corpus.studies("an_ct", "an_mr"),
                                                     "study_uid")
    for ds, path in zip(found, files, strict=True):
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.PatientName == an.name
        assert an.name.encode("utf-8") in path.read_bytes()

    # case and diacritics ignored, also inside the value; '?' stands for one character
    for query in ("NGUYEN^VAN AN", "nguyễn^văn an", "Nguyen^Van*", "*van an", "Ng?yen*"):
        found = loaded.find_ok("-S", "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192",
                               f"PatientName={query}", "PatientID")
        assert values(found, "PatientID") == ["BN001", "BN001"], query
    # Vietnamese đ/Đ folds to d
    found = loaded.find_ok("-P", "QueryRetrieveLevel=PATIENT", "PatientName=*duc", "PatientID")
    assert values(found, "PatientID") == sorted([PATIENTS["pct"].patient_id,
                                                 PATIENTS["decoy"].patient_id])

    # the exact UTF-8 name as the key, with the character set declared
    found = loaded.find_ok("-P", "QueryRetrieveLevel=PATIENT", "SpecificCharacterSet=ISO_IR 192",
                           f"PatientName={PATIENTS['bich'].name}", "PatientID", "PatientSex",
                           "PatientBirthDate")
    [bich] = found
    assert (bich.PatientName, bich.PatientID, bich.PatientSex, bich.PatientBirthDate) == (
        "Trần^Thị Bích", "BN002", "F", "19850203")
    assert bich.SpecificCharacterSet == "ISO_IR 192"

    # every name of the archive round-trips exactly
    found = loaded.find_ok("-P", "QueryRetrieveLevel=PATIENT", "PatientName", "PatientID")
    assert {str(ds.PatientID): str(ds.PatientName) for ds in found} == {
        p.patient_id: p.name for p in PATIENTS.values()}


def test_findscu_bad_query_fails_and_the_service_keeps_serving(loaded: Peer) -> None:
    for model, query in (("-S", ("QueryRetrieveLevel=FOO", "StudyInstanceUID")),
                         ("-S", ("QueryRetrieveLevel=PATIENT", "PatientID")),  # not Study Root
                         ("-S", ("QueryRetrieveLevel=STUDY", "StudyDate=2024-13-45x"))):
        status, found, _ = loaded.find(model, *query)
        assert status in IDENTIFIER_MISMATCH or status in CANNOT_UNDERSTAND, (
            f"{query}: 0x{status:04X}")
        assert found == []
    assert loaded.echo().returncode == 0
    assert len(loaded.find_ok("-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")) == 5


# -- 5. C-MOVE into DCMTK's storescp --------------------------------------------------------

@pytest.fixture
def move_setup(make_archive: Callable[..., RunningArchive],
               peer_for: Callable[[RunningArchive], Peer]) -> tuple[Peer, int]:
    port = free_port()
    archive = make_archive(remote_aes=(RemoteAE("STORESCP", dcmtk.HOST, port),))
    return peer_for(archive), port


MOVE_ODD_ONES = ("MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_bigendian.dcm",
                 "image_dfl.dcm", "JPGExtended.dcm", "MR_small_implicit.dcm")


def test_movescu_study_series_image_arrive_byte_for_byte(
        move_setup: tuple[Peer, int], corpus: Corpus) -> None:
    peer, port = move_setup
    study = corpus.study("an_ct")
    odd = [corpus[name] for name in MOVE_ODD_ONES]
    peer.load(study + corpus.study("bich_cr") + odd)
    first_series = [s for s in study if s.series_uid == study[0].series_uid]

    cases = (
        (study, ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study[0].study_uid}")),
        (first_series, ("QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study[0].study_uid}",
                        f"SeriesInstanceUID={study[0].series_uid}")),
        (study[-1:], ("QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study[0].study_uid}",
                      f"SeriesInstanceUID={study[-1].series_uid}",
                      f"SOPInstanceUID={study[-1].sop_instance_uid}")),
        # a list of SOP Instance UIDs across studies, in every stored syntax
        (odd, ("QueryRetrieveLevel=IMAGE", "SOPInstanceUID=" + "\\".join(uids(odd)))),
    )
    for expected, query in cases:
        # '+xa': storescp accepts every syntax, so each object must go out as stored
        with dcmtk.storescp(peer.fresh_dir("rx"), port, "+xa", env=peer.env) as scp:
            rsp = peer.move("STORESCP", *query)
            received = scp.received()
        assert (rsp.status, rsp.completed, rsp.failed, rsp.warning) == (
            0, len(expected), 0, 0), f"{query}: {rsp}\n{scp.log_text()}"
        assert_same_bytes(received, expected)

    # Patient Root at IMAGE level
    with dcmtk.storescp(peer.fresh_dir("rx"), port, "+xa", env=peer.env) as scp:
        rsp = peer.move("STORESCP", "QueryRetrieveLevel=IMAGE",
                        f"PatientID={PATIENTS['an'].patient_id}",
                        f"StudyInstanceUID={study[0].study_uid}",
                        f"SeriesInstanceUID={study[0].series_uid}",
                        f"SOPInstanceUID={study[0].sop_instance_uid}", model="-P")
        received = scp.received()
    assert (rsp.status, rsp.completed, rsp.failed) == (0, 1, 0)
    assert_same_bytes(received, study[:1])


def assert_same_pixels(received: dict[str, Path], expected: list[Source],
                       syntaxes: set[str]) -> None:
    """Each received object is its source in one of ``syntaxes``, with the same pixels; an
    object whose stored syntax was accepted is the same bytes."""
    assert sorted(received) == uids(expected)
    for source in expected:
        got = pydicom.dcmread(received[source.sop_instance_uid])
        original = pydicom.dcmread(source.path)
        assert got.file_meta.TransferSyntaxUID in syntaxes, source.name
        if got.file_meta.TransferSyntaxUID == source.transfer_syntax_uid:
            assert dcmtk.dataset_bytes(received[source.sop_instance_uid].read_bytes()) == (
                source.sent), source.name
        assert got.SOPInstanceUID == source.sop_instance_uid, source.name
        assert got.StudyInstanceUID == source.study_uid, source.name
        assert got.get("PatientName") == original.get("PatientName"), source.name
        assert (got.Rows, got.Columns) == (original.Rows, original.Columns), source.name
        assert np.array_equal(got.pixel_array, original.pixel_array), (
            f"{source.name}: pixels differ after transcoding")


@pytest.mark.parametrize("accepting", ["uncompressed", "implicit-only"])
def test_movescu_to_a_peer_without_compression_transcodes(
        move_setup: tuple[Peer, int], corpus: Corpus, accepting: str) -> None:
    peer, port = move_setup
    sources = [s for s in corpus.transfer_syntax_sources
               if s.compressed or s.transfer_syntax_uid.is_deflated
               or not s.transfer_syntax_uid.is_little_endian]
    sources += [corpus["CT_small.dcm"], corpus["bich_cr_1_1"]]
    assert len(sources) >= 12
    peer.load(sources)
    # storescp's default accepts the three uncompressed syntaxes, +xi implicit VR LE only
    options, syntaxes = {"uncompressed": ((), NATIVE),
                         "implicit-only": (("+xi",), {"1.2.840.10008.1.2"})}[accepting]
    with dcmtk.storescp(peer.fresh_dir("rx"), port, *options, env=peer.env) as scp:
        rsp = peer.move("STORESCP", "QueryRetrieveLevel=IMAGE",
                        "SOPInstanceUID=" + "\\".join(uids(sources)))
        received = scp.received()
    assert (rsp.status, rsp.completed, rsp.failed) == (0, len(sources), 0), scp.log_text()
    assert_same_pixels(received, sources, syntaxes)


def test_movescu_unknown_destination_is_refused(move_setup: tuple[Peer, int],
                                                corpus: Corpus) -> None:
    peer, _ = move_setup
    study = corpus.study("bich_cr")
    peer.load(study)
    rsp = peer.move("NOWHERE", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study[0].study_uid}")
    assert rsp.status == 0xA801
    assert peer.echo().returncode == 0


def test_movescu_counts_a_failed_sub_operation(move_setup: tuple[Peer, int],
                                               corpus: Corpus) -> None:
    peer, port = move_setup
    ct, mr = corpus.study("an_ct"), corpus.study("an_mr")
    peer.load(ct + mr)
    # a destination that takes CT images only: the MR image cannot be sent
    profile = peer.workdir / "ct-only.cfg"
    profile.write_text("\n".join([
        "[[TransferSyntaxes]]", "[Native]", "TransferSyntax1 = LittleEndianExplicit",
        "TransferSyntax2 = LittleEndianImplicit", "[[PresentationContexts]]", "[Contexts]",
        f"PresentationContext1 = {ct[0].sop_class_uid}\\Native", "[[Profiles]]", "[CTOnly]",
        "PresentationContexts = Contexts", ""]))
    with dcmtk.storescp(peer.fresh_dir("rx"), port, "-xf", str(profile), "CTOnly",
                        env=peer.env) as scp:
        rsp = peer.move("STORESCP", "QueryRetrieveLevel=IMAGE",
                        "SOPInstanceUID=" + "\\".join(uids(ct + mr)))
        received = scp.received()
    # PS3.4 C.4.2.1.5: some sub-operations failed -> 0xB000
    assert (rsp.status, rsp.completed, rsp.failed, rsp.warning) == (0xB000, 4, 1, 0), rsp
    assert_same_bytes(received, ct)


# -- 6. C-GET --------------------------------------------------------------------------------

def test_getscu_study_on_the_same_association(peer: Peer, corpus: Corpus) -> None:
    study = corpus.study("an_ct")
    odd = [corpus[name] for name in ("MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                     "SC_rgb_rle_2frame.dcm")]
    peer.load(study + corpus.study("an_mr") + odd)
    out = peer.fresh_dir("get")
    rsp = peer.get(out, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study[0].study_uid}")
    assert (rsp.status, rsp.completed, rsp.failed, rsp.warning) == (0, 4, 0, 0), rsp
    assert_same_bytes(dcmtk.read_dir(out), study)

    # getscu offers the uncompressed syntaxes only (explicit VR LE first): the others arrive
    # decompressed / in little endian, with the same pixels
    out = peer.fresh_dir("get")
    rsp = peer.get(out, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID=" + "\\".join(uids(odd)))
    assert (rsp.status, rsp.completed, rsp.failed) == (0, len(odd), 0), rsp
    assert_same_pixels(dcmtk.read_dir(out), odd, {"1.2.840.10008.1.2.1"})


# -- 7. bad input ----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
def test_truncated_and_garbage_data_sets_are_refused(peer: Peer, corpus: Corpus,
                                                     archive: RunningArchive) -> None:
    source = corpus["an_ct_1_1"]
    rng = random.Random(7)
    garbage = bytes(rng.randrange(256) for _ in range(4096))
    damaged = {
        "truncated in the pixel data": source.sent[:-1000],
        "truncated in the header": source.sent[:300],
        "garbage": garbage,
        "element longer than the data": b"\x10\x00\x10\x00PN\xff\x7f" + b"A" * 64,
    }
    for what, data in damaged.items():
        status = dcmtk.send_raw_c_store(archive.port, source.sop_class_uid,
                                        source.sop_instance_uid, str(source.transfer_syntax_uid),
                                        data)
        assert status in CANNOT_UNDERSTAND or status in IDENTIFIER_MISMATCH, (
            f"{what}: 0x{status:04X}")
        assert peer.echo().returncode == 0, what
    assert indexed_count(archive) == 0
    assert object_count(archive) == 0
    # and a good object is still stored afterwards
    assert peer.store([source]) == [0]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_invalid_and_path_like_uids_are_refused(peer: Peer, corpus: Corpus,
                                                archive: RunningArchive) -> None:
    source = corpus["bich_cr_1_1"]
    directory = peer.fresh_dir("uids")
    files = []
    for index, (keyword, uid) in enumerate((("SOPInstanceUID", "../../etc/passwd"),
                                            ("SOPInstanceUID", "1.2.abc"),
                                            ("StudyInstanceUID", "../../../tmp/x"),
                                            ("SeriesInstanceUID", "1.2.3/.."))):
        ds = pydicom.dcmread(source.path)
        setattr(ds, keyword, uid)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)
        else:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"1.2.3.4.{index}")
        path = directory / f"bad{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    statuses = peer.store(files)
    assert all(s in CANNOT_UNDERSTAND for s in statuses), [hex(s) for s in statuses]
    assert indexed_count(archive) == 0
    assert object_count(archive) == 0
    assert peer.echo().returncode == 0


def test_unknown_calling_ae_is_rejected(make_archive: Callable[..., RunningArchive],
                                        peer_for: Callable[[RunningArchive], Peer],
                                        corpus: Corpus) -> None:
    archive = make_archive(require_known_aes=True,
                           remote_aes=(RemoteAE("KNOWNSCU", dcmtk.HOST, 104),))
    peer = peer_for(archive)
    refused = peer.echo("STRANGER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.output, str(refused)
    result = dcmtk.run("storescu", *dcmtk.NET_OPTIONS, "-aet", "STRANGER", dcmtk.HOST,
                       str(archive.port), *corpus.storescu_args([corpus["bich_cr_1_1"].path]),
                       env=peer.env)
    assert "Association Rejected" in result.output, str(result)
    assert indexed_count(archive) == 0
    assert peer.echo("KNOWNSCU").returncode == 0
    assert peer.store([corpus["bich_cr_1_1"]], ae_title="KNOWNSCU") == [0]


# -- 8. restart ------------------------------------------------------------------------------

def test_data_survive_a_restart(peer: Peer, corpus: Corpus, archive: RunningArchive) -> None:
    study = corpus.study("an_ct")
    peer.load(study)
    port = archive.port
    archive.restart()
    assert archive.port == port
    [found] = peer.find_ok("-S", "QueryRetrieveLevel=STUDY", "PatientName=nguyen*",
                           "StudyInstanceUID", "NumberOfStudyRelatedInstances")
    assert (found.StudyInstanceUID, int(found.NumberOfStudyRelatedInstances)) == (
        study[0].study_uid, 4)
    out = peer.fresh_dir("get")
    rsp = peer.get(out, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study[0].study_uid}")
    assert (rsp.status, rsp.completed, rsp.failed) == (0, 4, 0), rsp
    assert_same_bytes(dcmtk.read_dir(out), study)
