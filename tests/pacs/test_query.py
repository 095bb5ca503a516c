"""QueryService by example, at every level and on both backend pairs (PS3.4 C.2.2.2, C.6).

A small archive (four patients, five studies, Vietnamese names, an accession number that is
an SQL injection, ``%`` and ``_`` in values) is filled once per module and backend pair and
only queried. The computed attributes (PS3.4 C.6.1.1.x), ModalitiesInStudy matching, name
folding, paging, invalid keys and hostile values are checked against it; the matching rules
themselves are checked at random against an oracle in ``tests/index``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import String, cast, func, insert, literal, select

from pacs.context import Caller
from pacs.errors import InvalidInput, StorageUnavailable
from pacs.index.attributes import Level
from pacs.index.models import Patient, Series, Study
from pacs.query import MAX_LIMIT, Match, QueryRequest
from pacs.services import Services
from tests.index.archives import BACKENDS, backend_services
from tests.index.synthetic import SECONDARY_CAPTURE, instance_bytes

INJECTION = "'; DROP TABLE studies; --"
SHORT_INJECTION = "' OR 1=1--"  # fits an SH (16 characters)

# label: (PatientName, PatientID, PatientBirthDate, PatientSex)
PATIENTS = {
    "an": ("Nguyễn^Văn An", "BN001", "19800101", "M"),
    "an_ascii": ("NGUYEN^VAN AN", "BN002", "19750505", "M"),
    "bich": ("Trần^Thị Bích", "BN003", "19900909", "F"),
    "obrien": ("O'Brien^Seán", INJECTION, "", "O"),
}


@dataclass(frozen=True)
class StudyData:
    label: str
    patient: str
    date: str
    time: str
    accession: str
    description: str
    referring: str
    series: tuple[tuple[str, int], ...]  # (Modality, number of instances) per series


STUDIES = (
    StudyData("an-ct-mr", "an", "20240115", "093000", "ACC100%", "CT ngực", "Lê^Văn Đức",
              (("CT", 2), ("MR", 1))),
    StudyData("an-mr", "an", "20240220", "1430", "ACC1000", "MRI sọ não", "", (("MR", 3),)),
    StudyData("an-ascii-ct", "an_ascii", "20240301", "", "A_B", "CT bụng", "LE^VAN DUC",
              (("CT", 1),)),
    StudyData("bich-cr", "bich", "20231231", "235959.5", "AXB", "X-quang ngực", "",
              (("CR", 1), ("CR", 1))),
    StudyData("obrien-us", "obrien", "", "", SHORT_INJECTION, "100% sure", "",
              (("US", 1),)),
)
ORDER = [s.label for s in STUDIES]


def study_uid(label: str) -> str:
    return f"2.25.{1000 + ORDER.index(label)}"


def series_uid(label: str, index: int) -> str:
    return f"2.25.{2000 + 10 * ORDER.index(label) + index}"


def sop_uid(label: str, index: int, number: int) -> str:
    return f"2.25.{3000 + 100 * ORDER.index(label) + 10 * index + number}"


def ingest(services: Services) -> None:
    for study in STUDIES:
        name, pid, birth, sex = PATIENTS[study.patient]
        for index, (modality, count) in enumerate(study.series):
            for number in range(1, count + 1):
                services.ingest.store_instance(Caller.cli(), instance_bytes(
                    sop_uid(study.label, index, number), study_uid(study.label),
                    series_uid(study.label, index),
                    PatientName=name, PatientID=pid, PatientBirthDate=birth, PatientSex=sex,
                    StudyDate=study.date, StudyTime=study.time,
                    AccessionNumber=study.accession, StudyDescription=study.description,
                    ReferringPhysicianName=study.referring, StudyID=str(ORDER.index(study.label)),
                    Modality=modality, SeriesNumber=index + 1, InstanceNumber=number,
                    Rows=4, Columns=6))


@pytest.fixture(scope="module", params=BACKENDS)
def services(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """An archive holding PATIENTS and STUDIES, shared by the module's tests (they only query)."""
    with backend_services(request, tmp_path_factory.mktemp("query"), request.param) as svc:
        ingest(svc)
        yield svc


def search(services: Services, level: Level, filters: dict[str, str] | None = None,
           keys: tuple[str, ...] = (), **paging: Any) -> list[Match]:
    return list(services.query.search(
        Caller.cli(), QueryRequest(level, filters or {}, keys, **paging)))


def studies(services: Services, filters: dict[str, str], **paging: Any) -> list[str]:
    """Labels of the matching studies, in the archive's order."""
    labels = {study_uid(label): label for label in ORDER}
    found = search(services, Level.STUDY, filters, ("StudyInstanceUID",), **paging)
    return [labels[m["StudyInstanceUID"]] for m in found]


def patient_ids(services: Services, filters: dict[str, str]) -> list[str]:
    return [m["PatientID"] for m in search(services, Level.PATIENT, filters, ("PatientID",))]


# -- levels and computed attributes (PS3.4 C.6.1.1) -----------------------------------------


def test_patient_level_returns_each_patient_once_with_its_counts(services: Services) -> None:
    found = search(services, Level.PATIENT, {}, (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
        "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances"))
    assert [m["PatientID"] for m in found] == ["BN001", "BN002", "BN003", INJECTION]
    an = found[0]
    assert an["PatientName"] == "Nguyễn^Văn An"
    assert (an["PatientBirthDate"], an["PatientSex"]) == ("19800101", "M")
    assert (an["NumberOfPatientRelatedStudies"], an["NumberOfPatientRelatedSeries"],
            an["NumberOfPatientRelatedInstances"]) == (2, 3, 6)
    bich = found[2]
    assert (bich["NumberOfPatientRelatedStudies"], bich["NumberOfPatientRelatedSeries"],
            bich["NumberOfPatientRelatedInstances"]) == (1, 2, 2)
    assert found[3]["PatientBirthDate"] is None


def test_patient_level_default_keys(services: Services) -> None:
    first = search(services, Level.PATIENT)[0]
    assert first == {"PatientName": "Nguyễn^Văn An", "PatientID": "BN001",
                     "PatientBirthDate": "19800101", "PatientSex": "M",
                     "NumberOfPatientRelatedStudies": 2}


def test_study_level_computed_attributes(services: Services) -> None:
    found = {m["StudyInstanceUID"]: m for m in search(services, Level.STUDY)}
    assert len(found) == len(STUDIES)
    ct_mr = found[study_uid("an-ct-mr")]
    assert ct_mr["ModalitiesInStudy"] == ["CT", "MR"]
    assert (ct_mr["NumberOfStudyRelatedSeries"], ct_mr["NumberOfStudyRelatedInstances"]) == (2, 3)
    cr = found[study_uid("bich-cr")]
    assert cr["ModalitiesInStudy"] == ["CR"]  # two CR series, one modality
    assert (cr["NumberOfStudyRelatedSeries"], cr["NumberOfStudyRelatedInstances"]) == (2, 2)
    assert found[study_uid("an-mr")]["NumberOfStudyRelatedInstances"] == 3


def test_study_level_returns_patient_and_study_values_as_stored(services: Services) -> None:
    m = search(services, Level.STUDY, {"StudyInstanceUID": study_uid("an-ct-mr")})[0]
    assert m["PatientName"] == "Nguyễn^Văn An"
    assert m["PatientID"] == "BN001"
    assert m["ReferringPhysicianName"] == "Lê^Văn Đức"
    assert (m["StudyDate"], m["StudyTime"]) == ("20240115", "093000")
    assert (m["AccessionNumber"], m["StudyDescription"]) == ("ACC100%", "CT ngực")
    injected = search(services, Level.STUDY, {"StudyInstanceUID": study_uid("obrien-us")})[0]
    assert injected["AccessionNumber"] == SHORT_INJECTION
    assert injected["PatientID"] == INJECTION
    assert injected["PatientName"] == "O'Brien^Seán"
    assert (injected["StudyDate"], injected["StudyTime"]) == (None, None)


def test_times_are_returned_at_least_to_the_second(services: Services) -> None:
    times = {m["StudyInstanceUID"]: m["StudyTime"]
             for m in search(services, Level.STUDY, {}, ("StudyTime",))}
    assert times[study_uid("an-mr")] == "143000"  # stored 1430
    assert times[study_uid("bich-cr")] == "235959.500000"


def test_series_level(services: Services) -> None:
    found = search(services, Level.SERIES, {"StudyInstanceUID": study_uid("an-ct-mr")})
    assert [m["SeriesInstanceUID"] for m in found] == [series_uid("an-ct-mr", 0),
                                                       series_uid("an-ct-mr", 1)]
    assert [(m["Modality"], m["SeriesNumber"], m["NumberOfSeriesRelatedInstances"])
            for m in found] == [("CT", 1, 2), ("MR", 2, 1)]
    assert all(m["StudyInstanceUID"] == study_uid("an-ct-mr") for m in found)


def test_series_level_combines_keys_of_every_level_above(services: Services) -> None:
    found = search(services, Level.SERIES, {"PatientName": "nguyen*", "Modality": "CT",
                                            "StudyDate": "20240101-20240131"})
    assert [m["SeriesInstanceUID"] for m in found] == [series_uid("an-ct-mr", 0)]


def test_image_level(services: Services) -> None:
    found = search(services, Level.IMAGE, {"SeriesInstanceUID": series_uid("an-ct-mr", 0)})
    assert [m["SOPInstanceUID"] for m in found] == [sop_uid("an-ct-mr", 0, 1),
                                                    sop_uid("an-ct-mr", 0, 2)]
    first = found[0]
    assert first["SOPClassUID"] == SECONDARY_CAPTURE
    assert (first["InstanceNumber"], first["Rows"], first["Columns"]) == (1, 4, 6)
    assert first["StudyInstanceUID"] == study_uid("an-ct-mr")
    assert first["SeriesInstanceUID"] == series_uid("an-ct-mr", 0)


def test_image_level_computed_study_attributes(services: Services) -> None:
    found = search(services, Level.IMAGE, {"SOPInstanceUID": sop_uid("an-mr", 0, 3)},
                   ("ModalitiesInStudy", "NumberOfStudyRelatedInstances",
                    "NumberOfPatientRelatedStudies"))
    assert len(found) == 1
    assert found[0]["ModalitiesInStudy"] == ["MR"]
    assert found[0]["NumberOfStudyRelatedInstances"] == 3
    assert found[0]["NumberOfPatientRelatedStudies"] == 2


def test_keys_below_the_query_level_are_not_matched(services: Services) -> None:
    """Hierarchical model (PS3.4 C.4.1.3.1): a series key in a study query is ignored."""
    found = search(services, Level.STUDY, {"Modality": "XX"}, ("StudyInstanceUID",))
    assert len(found) == len(STUDIES)
    assert all(m["Modality"] is None for m in found)
    assert len(search(services, Level.PATIENT, {"StudyDate": "19000101"})) == len(PATIENTS)


def test_unknown_keywords_are_returned_empty(services: Services) -> None:
    found = search(services, Level.STUDY, {"NoSuchKeyword": "x"}, ("PatientName",))
    assert len(found) == len(STUDIES)
    assert all(m["NoSuchKeyword"] is None for m in found)


# -- ModalitiesInStudy -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), [
    ("CT", ["an-ct-mr", "an-ascii-ct"]),
    ("MR", ["an-ct-mr", "an-mr"]),
    ("CT\\MR", ["an-ct-mr", "an-mr", "an-ascii-ct"]),
    ("MR\\CR", ["an-ct-mr", "an-mr", "bich-cr"]),
    (" CT \\ US ", ["an-ct-mr", "an-ascii-ct", "obrien-us"]),
    ("C?", ["an-ct-mr", "an-ascii-ct", "bich-cr"]),
    ("ct", []),
    ("XA", []),
    ("", ORDER),
    ("*", ORDER),
])
def test_modalities_in_study_matches_any_series(services: Services, key: str,
                                                expected: list[str]) -> None:
    assert studies(services, {"ModalitiesInStudy": key}) == expected


def test_modalities_in_study_returns_all_modalities_of_a_matching_study(
        services: Services) -> None:
    found = search(services, Level.STUDY, {"ModalitiesInStudy": "MR"}, ("ModalitiesInStudy",))
    assert [m["ModalitiesInStudy"] for m in found] == [["CT", "MR"], ["MR"]]


def test_modalities_in_study_at_series_level(services: Services) -> None:
    found = search(services, Level.SERIES, {"ModalitiesInStudy": "CR"}, ("Modality",))
    assert [m["SeriesInstanceUID"] for m in found] == [series_uid("bich-cr", 0),
                                                       series_uid("bich-cr", 1)]


# -- names (PN: case and diacritics insensitive) --------------------------------------------


@pytest.mark.parametrize(("key", "expected"), [
    ("nguyen*", ["BN001", "BN002"]),
    ("NGUYEN^VAN AN", ["BN001", "BN002"]),
    ("Nguyễn^Văn An", ["BN001", "BN002"]),
    ("nguyễn^văn an", ["BN001", "BN002"]),
    ("  Nguyen^Van   An ", ["BN001", "BN002"]),
    ("nguyen", []),
    ("tran^thi bich", ["BN003"]),
    ("TRẦN*", ["BN003"]),
    ("*bích", ["BN003"]),
    ("Tr?n^*", ["BN003"]),
    ("o'brien^sean", [INJECTION]),
    ("O'BRIEN*", [INJECTION]),
    ("*^*", ["BN001", "BN002", "BN003", INJECTION]),
    ("", ["BN001", "BN002", "BN003", INJECTION]),
])
def test_patient_names_match_without_case_or_accents(services: Services, key: str,
                                                     expected: list[str]) -> None:
    assert patient_ids(services, {"PatientName": key}) == expected


def test_names_are_returned_exactly_as_stored(services: Services) -> None:
    found = search(services, Level.PATIENT, {"PatientName": "nguyen*"}, ("PatientName",))
    assert [m["PatientName"] for m in found] == ["Nguyễn^Văn An", "NGUYEN^VAN AN"]


def test_referring_physician_name_is_folded_too(services: Services) -> None:
    assert studies(services, {"ReferringPhysicianName": "le^van duc"}) == ["an-ct-mr",
                                                                            "an-ascii-ct"]
    assert studies(services, {"ReferringPhysicianName": "Lê^V*"}) == ["an-ct-mr", "an-ascii-ct"]


# -- dates, times, text ----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), [
    ("20240115", ["an-ct-mr"]),
    ("2024.01.15", ["an-ct-mr"]),
    ("20240101-20240229", ["an-ct-mr", "an-mr"]),
    ("20240220-", ["an-mr", "an-ascii-ct"]),
    ("-20240115", ["an-ct-mr", "bich-cr"]),  # an empty date is in no range
    ("20240301-20240101", []),
])
def test_study_date(services: Services, key: str, expected: list[str]) -> None:
    assert studies(services, {"StudyDate": key}) == expected


@pytest.mark.parametrize(("key", "expected"), [
    ("09", ["an-ct-mr"]),
    ("0930", ["an-ct-mr"]),
    ("14-", ["an-mr", "bich-cr"]),
    ("-1430", ["an-ct-mr", "an-mr"]),
    ("235959", ["bich-cr"]),
    ("235959.5", ["bich-cr"]),
    ("235959.4", []),
    ("2359-", ["bich-cr"]),
])
def test_study_time(services: Services, key: str, expected: list[str]) -> None:
    assert studies(services, {"StudyTime": key}) == expected


@pytest.mark.parametrize(("key", "expected"), [
    ("ACC100%", ["an-ct-mr"]),
    ("ACC100_", []),
    ("ACC100%*", ["an-ct-mr"]),
    ("ACC100?", ["an-ct-mr", "an-mr"]),
    ("ACC*", ["an-ct-mr", "an-mr"]),
    ("A_B", ["an-ascii-ct"]),
    ("A_*", ["an-ascii-ct"]),
    ("A?B", ["an-ascii-ct", "bich-cr"]),
    ("*%", ["an-ct-mr"]),
    ("%", []),
    ("_", []),
    ("acc100%", []),
    ("ACC1000\\A_B", ["an-mr", "an-ascii-ct"]),
    ("ACC1000\\", ["an-mr"]),
    ("\\", ORDER),
])
def test_percent_and_underscore_are_literal(services: Services, key: str,
                                            expected: list[str]) -> None:
    assert studies(services, {"AccessionNumber": key}) == expected


def test_text_matching_is_exact_about_inner_spaces_and_accents(services: Services) -> None:
    assert studies(services, {"StudyDescription": "CT ngực"}) == ["an-ct-mr"]
    assert studies(services, {"StudyDescription": "CT nguc"}) == []
    assert studies(services, {"StudyDescription": "CT  ngực"}) == []
    assert studies(services, {"StudyDescription": "*ngực"}) == ["an-ct-mr", "bich-cr"]
    assert studies(services, {"StudyDescription": "100%*"}) == ["obrien-us"]


def test_uid_lists(services: Services) -> None:
    uids = f"{study_uid('an-mr')}\\{study_uid('bich-cr')}\\2.25.999999"
    assert studies(services, {"StudyInstanceUID": uids}) == ["an-mr", "bich-cr"]
    assert studies(services, {"StudyInstanceUID": f" {study_uid('an-mr')} "}) == ["an-mr"]
    assert studies(services, {"StudyInstanceUID": "\\"}) == ORDER


# -- paging ----------------------------------------------------------------------------------


def test_limit_and_offset_page_through_a_stable_order(services: Services) -> None:
    assert studies(services, {}) == ORDER
    assert studies(services, {}, limit=2) == ORDER[:2]
    assert studies(services, {}, limit=2, offset=2) == ORDER[2:4]
    assert studies(services, {}, offset=4) == ORDER[4:]
    assert studies(services, {}, limit=10, offset=3) == ORDER[3:]
    assert studies(services, {}, offset=5) == []
    assert studies(services, {}, limit=0) == []
    pages = [studies(services, {}, limit=2, offset=k) for k in range(0, 6, 2)]
    assert [label for page in pages for label in page] == ORDER


def test_limit_applies_after_matching(services: Services) -> None:
    assert studies(services, {"PatientName": "nguyen*"}, limit=2, offset=1) == ["an-mr",
                                                                                 "an-ascii-ct"]


@pytest.mark.parametrize("paging", [{"limit": -1}, {"limit": MAX_LIMIT + 1}, {"offset": -1}])
def test_bad_paging_is_invalid_input(services: Services, paging: dict[str, int]) -> None:
    with pytest.raises(InvalidInput):
        studies(services, {}, **paging)


# -- invalid and hostile keys ----------------------------------------------------------------


@pytest.mark.parametrize(("keyword", "value"), [
    ("StudyDate", "2024-13-45x"),
    ("StudyDate", "20241345"),
    ("StudyDate", "20230229"),
    ("StudyDate", "2024"),
    ("StudyDate", "-"),
    ("StudyDate", INJECTION),
    ("PatientBirthDate", "yesterday"),
    ("StudyTime", "2561"),
    ("StudyTime", "13.5"),
    ("StudyTime", "1300-1400-1500"),
    ("StudyInstanceUID", "2.25.*"),
    ("StudyInstanceUID", f"{study_uid('an-mr')}\\2.25.10?"),
    ("SeriesInstanceUID", "*.1"),
    ("NumberOfStudyRelatedSeries", "two"),
])
def test_invalid_keys_raise_invalid_input_at_the_call(services: Services, keyword: str,
                                                      value: str) -> None:
    request = QueryRequest(Level.SERIES, {keyword: value})
    with pytest.raises(InvalidInput):
        services.query.search(Caller.cli(), request)  # raised before any iteration


def test_too_many_values_in_one_key_is_invalid_input(services: Services) -> None:
    uids = "\\".join(f"2.25.{n}" for n in range(70_000))
    with pytest.raises(InvalidInput):
        studies(services, {"StudyInstanceUID": uids})


HOSTILE = (INJECTION, SHORT_INJECTION, "' OR '1'='1", "x' OR 1=1 --", '" OR ""="', "%' --", "\\'; --",
           "'); DELETE FROM patients; --", "1; SELECT pg_sleep(5)", "Robert'); --")


@pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "AccessionNumber",
                                     "StudyDescription", "StudyID", "ModalitiesInStudy",
                                     "StudyInstanceUID", "ReferringPhysicianName"])
def test_injection_like_values_match_only_themselves_and_break_nothing(
        services: Services, keyword: str) -> None:
    for value in HOSTILE:
        found = studies(services, {keyword: value})
        stored_as_is = ((keyword, value) in (("PatientID", INJECTION),
                                             ("AccessionNumber", SHORT_INJECTION)))
        assert found == (["obrien-us"] if stored_as_is else []), value
    assert studies(services, {}) == ORDER
    with services.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Study)).scalar_one() == len(STUDIES)


# -- many results (computed keys for more rows than a statement takes parameters) ------------


def _fill(services: Services, count: int) -> None:
    """``count`` patients, each with one study of one CT series, made inside the database."""
    numbers = select(literal(1).label("n")).cte("numbers", recursive=True)
    numbers = numbers.union_all(select(numbers.c.n + 1).where(numbers.c.n < count))
    text = cast(numbers.c.n, String)
    with services.engine.begin() as conn:
        conn.execute(insert(Patient).from_select(
            ["patient_key", "patient_id"], select(text + literal("\\"), text)))
        conn.execute(insert(Study).from_select(
            ["study_uid", "patient_pk", "num_series"],
            select(literal("2.25.") + cast(Patient.id, String), Patient.id, literal(1))))
        conn.execute(insert(Series).from_select(
            ["series_uid", "study_pk", "modality"],
            select(literal("2.25.9") + cast(Study.id, String), Study.id, literal("CT"))))


def test_computed_keys_for_more_rows_than_bound_parameters(
        tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
        backend: str) -> None:
    """PostgreSQL takes at most 65535 bound parameters per statement; 70,000 patients and
    studies must still get their computed keys."""
    count = 70_000
    with backend_services(request, tmp_path_factory.mktemp("many"), backend) as svc:
        _fill(svc, count)
        patients = search(svc, Level.PATIENT, {}, ("PatientID", "NumberOfPatientRelatedSeries"))
        assert len(patients) == count
        assert {m["NumberOfPatientRelatedSeries"] for m in patients} == {1}
        found = search(svc, Level.STUDY, {}, ("ModalitiesInStudy",))
        assert len(found) == count
        assert all(m["ModalitiesInStudy"] == ["CT"] for m in found)


# -- the retrieve keys behind C-MOVE, C-GET and WADO (PS3.4 C.4.2.1.4) ----------------------

def _retrieved(services: Services, level: Level, keys: dict[str, str]) -> list[str]:
    return [i.sop_instance_uid for i in services.retrieve.find_instances(Caller.cli(), level, keys)]


def test_retrieve_by_one_uid_per_level_agrees_with_uid_lists(services: Services) -> None:
    """Plain UIDs take a statement built once; the same keys as UID lists (with a UID that
    matches nothing) the statement built per request: the same instances, in series and
    instance order."""
    label = "an-ct-mr"
    cases = [
        (Level.STUDY, {"StudyInstanceUID": study_uid(label)},
         [sop_uid(label, 0, 1), sop_uid(label, 0, 2), sop_uid(label, 1, 1)]),
        (Level.SERIES, {"StudyInstanceUID": study_uid(label),
                        "SeriesInstanceUID": series_uid(label, 0)},
         [sop_uid(label, 0, 1), sop_uid(label, 0, 2)]),
        (Level.IMAGE, {"StudyInstanceUID": study_uid(label), "SeriesInstanceUID":
                       series_uid(label, 1), "SOPInstanceUID": sop_uid(label, 1, 1)},
         [sop_uid(label, 1, 1)]),
        (Level.IMAGE, {"SOPInstanceUID": sop_uid(label, 0, 2)}, [sop_uid(label, 0, 2)]),
        # keys below the level are ignored; keys that contradict each other match nothing
        (Level.STUDY, {"StudyInstanceUID": study_uid(label),
                       "SOPInstanceUID": sop_uid("an-mr", 0, 1)},
         [sop_uid(label, 0, 1), sop_uid(label, 0, 2), sop_uid(label, 1, 1)]),
        (Level.IMAGE, {"StudyInstanceUID": study_uid("an-mr"),
                       "SOPInstanceUID": sop_uid(label, 0, 1)}, []),
        (Level.IMAGE, {"SOPInstanceUID": "1.2.3.999"}, []),
    ]
    for level, keys, expected in cases:
        assert _retrieved(services, level, keys) == expected, keys
        as_lists = {k: f"{v}\\1.2.3.999" for k, v in keys.items()}
        assert _retrieved(services, level, as_lists) == expected, as_lists
        padded = {k: f" {v} " for k, v in keys.items()}
        assert _retrieved(services, level, padded) == expected, padded


def test_retrieve_lookups_fail_as_unavailable_while_the_index_is_broken(services: Services) -> None:
    """Both lookup paths (plain UIDs on the DBAPI cursor, the others through SQLAlchemy)
    turn a database error into StorageUnavailable (HTTP 503, a DICOM failure status), and
    answer again once the index is whole: no connection goes back to the pool broken."""
    uid = sop_uid("an-mr", 0, 1)
    with services.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE instances RENAME TO instances_away")
    try:
        for _ in range(3):  # more than one pooled connection sees the failure
            with pytest.raises(StorageUnavailable, match="index unavailable"):
                _retrieved(services, Level.IMAGE, {"SOPInstanceUID": uid})
            with pytest.raises(StorageUnavailable, match="index unavailable"):
                _retrieved(services, Level.PATIENT, {"PatientID": "BN001"})
    finally:
        with services.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE instances_away RENAME TO instances")
    assert _retrieved(services, Level.IMAGE, {"SOPInstanceUID": uid}) == [uid]
    assert len(_retrieved(services, Level.PATIENT, {"PatientID": "BN001"})) == 6


def test_retrieve_keys_checked_before_any_lookup(services: Services) -> None:
    with pytest.raises(InvalidInput, match="unique key"):
        _retrieved(services, Level.SERIES, {"SOPInstanceUID": sop_uid("an-mr", 0, 1)})
    with pytest.raises(InvalidInput, match="wildcards"):
        _retrieved(services, Level.STUDY, {"StudyInstanceUID": "2.25.*"})
    with pytest.raises(InvalidInput, match="wildcards"):
        _retrieved(services, Level.PATIENT, {"PatientID": "BN*"})
    assert len(_retrieved(services, Level.PATIENT, {"PatientID": "BN001"})) == 6
