"""The query service selects what the oracle (``tests/index/oracle.py``) selects (PS3.4 C.2.2.2).

One archive per backend pair is filled, once per module, with a seeded random set of about
40 studies of 14 patients, ingested as tiny UTF-8 DICOM instances. Their values are drawn
from an alphabet made to break a careless translation to SQL (``%``, ``_``, quotes, spaces,
``*`` and ``?`` stored literally, Vietnamese letters in both cases, empty values). Hypothesis
then draws only queries: exact values, variants with wild cards, other case and no accents,
lists, date and time ranges of every precision, UID lists, and invalid keys. Every answer must
equal the oracle's selection, in the archive's stable order.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from anyascii import anyascii
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacs.context import Caller
from pacs.errors import InvalidInput
from pacs.index.attributes import ATTRIBUTES, Level
from pacs.query import QueryRequest
from pacs.services import Services
from tests.index import oracle
from tests.index.archives import BACKENDS, backend_services
from tests.index.synthetic import instance_bytes, random_uid

SEED = 20240917
STUDIES = 40
PATIENTS = 14
FIRST_DAY = datetime.date(2024, 1, 1)
DAYS = 60

# Stored text: small, so that values collide and wild cards select several of them.
STORED_ALPHABET = "aAnN01 %_'\"-.*?ễĐđăĂ"
KEY_ALPHABET = STORED_ALPHABET + "*?*?\\eEdD\x00"
NAMES = (
    "Nguyễn^Văn An", "NGUYEN^VAN AN", "nguyen^van  an", "Nguyễn^Thị Bích", "Trần^Đức",
    "TRAN^DUC", "Đặng^Thu Hà", "Lê^Ă", "O'Brien^Seán", 'Smith^"Bob"', "100%^Pure",
    "Under_Score^X", "Ng*yen^?", "Phạm^Ngọc  Ánh",
)
MODALITIES = ("CT", "MR", "CR", "PT", "US", "C_", "CTA")
DESCRIPTIONS = ("CT ngực", "MRI sọ não", "100% contrast", "a_b", "O'Neil", "CT  NGỰC", "ct ngực")
SPECIAL_KEYS = (
    "", " ", "*", " * ", "**", "?", "*?*", "%", "_", "%%", "\\", "\\\\", "'", '"', '""',
    "' OR '1'='1", "'; DROP TABLE studies; --", "a%", "_*", "*\\*", "*%*", "*_*", "\\*",
    "\x00", "a\x00", "\x00*", "a\x00b", "*\x00*",
)
INVALID_DATES = (
    "2024-13-45x", "20241345", "20240230", "2024", "abc", "-", " - ", "20240101-20240102-20240103",
    "2024010", "20240101\\20240102", "２０２４０１０１", "2024011a", "00000101",
)
INVALID_TIMES = (
    "2500", "1360", "126161", "13.5", "1300.5", "130000.1234567", "1", "ab", "-", "13-14-15",
    "130000.", "１３", "24", "13\\14",
)
STUDY_KEYS = ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyDescription", "ModalitiesInStudy")
PATIENT_KEYS = ("PatientName", "PatientID")
SERIES_KEYS = ("Modality", "SeriesInstanceUID", "StudyInstanceUID", "PatientName", "StudyDate",
               "ModalitiesInStudy")
IMAGE_KEYS = ("SOPInstanceUID", "SeriesInstanceUID", "Modality", "AccessionNumber",
              "StudyTime", "ModalitiesInStudy")


# -- the record set --------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str


@dataclass(frozen=True)
class Series:
    uid: str
    modality: str
    sop_uid: str


@dataclass(frozen=True)
class Study:
    uid: str
    patient: Patient
    date: str
    time: str
    accession: str
    description: str
    series: tuple[Series, ...]

    def value(self, keyword: str) -> str:
        """The study's stored value of a patient or study level keyword."""
        return {
            "PatientName": self.patient.name, "PatientID": self.patient.patient_id,
            "StudyInstanceUID": self.uid, "StudyDate": self.date, "StudyTime": self.time,
            "AccessionNumber": self.accession, "StudyDescription": self.description,
        }[keyword]


def _text(rng: random.Random, low: int, high: int) -> str:
    """Text from the stored alphabet without leading or trailing spaces (PS3.5 6.2)."""
    text = "".join(rng.choice(STORED_ALPHABET) for _ in range(rng.randint(low, high)))
    return text.strip(" ") or "x"


def _maybe_empty(rng: random.Random, make: Callable[[], str]) -> str:
    return "" if rng.random() < 0.15 else make()


def _time(rng: random.Random) -> str:
    """A TM value of a random precision, from hours alone to microseconds."""
    text = f"{rng.randrange(24):02d}"
    precision = rng.randrange(4)
    if precision >= 1:
        text += f"{rng.randrange(60):02d}"
    if precision >= 2:
        text += f"{rng.randrange(60):02d}"
    if precision >= 3:
        digits = rng.randint(1, 6)
        text += "." + "".join(rng.choice("0123456789") for _ in range(digits))
    return text


def _patients(rng: random.Random) -> list[Patient]:
    ids: set[str] = set()
    patients = []
    for name in NAMES[:PATIENTS]:
        pid = _text(rng, 1, 5)
        while pid in ids:
            pid = _text(rng, 1, 5)
        ids.add(pid)
        patients.append(Patient(pid, name))
    return patients


def _study(rng: random.Random, patient: Patient) -> Study:
    day = FIRST_DAY + datetime.timedelta(days=rng.randrange(DAYS))
    series = tuple(Series(random_uid(rng), rng.choice(MODALITIES), random_uid(rng))
                   for _ in range(rng.randint(1, 3)))
    return Study(
        uid=random_uid(rng), patient=patient,
        date=_maybe_empty(rng, lambda: f"{day:%Y%m%d}"),
        time=_maybe_empty(rng, lambda: _time(rng)),
        accession=_maybe_empty(rng, lambda: _text(rng, 1, 8)),
        description=_maybe_empty(rng, lambda: rng.choice(DESCRIPTIONS + (_text(rng, 1, 10),))),
        series=series,
    )


def make_studies(seed: int) -> list[Study]:
    rng = random.Random(seed)
    patients = _patients(rng)
    return [_study(rng, patients[k % len(patients)] if k < len(patients) else rng.choice(patients))
            for k in range(STUDIES)]


def ingest(services: Services, studies: Sequence[Study]) -> None:
    for study in studies:
        for series in study.series:
            part10 = instance_bytes(
                series.sop_uid, study.uid, series.uid,
                PatientName=study.patient.name, PatientID=study.patient.patient_id,
                StudyDate=study.date, StudyTime=study.time, AccessionNumber=study.accession,
                StudyDescription=study.description, Modality=series.modality)
            services.ingest.store_instance(Caller.cli(), part10)


# -- keys ------------------------------------------------------------------------------------


def _unaccented(ch: str) -> str:
    return anyascii(ch) or ch


_EDITS: dict[str, Callable[[str], str]] = {
    "keep": lambda ch: ch, "keep2": lambda ch: ch, "keep3": lambda ch: ch,
    "one": lambda ch: "?", "run": lambda ch: "*", "case": str.swapcase, "plain": _unaccented,
}


@st.composite
def variant(draw: st.DrawFn, base: str) -> str:
    """``base`` with some characters edited: wild cards, other case, accents removed."""
    edits = draw(st.lists(st.sampled_from(sorted(_EDITS)), min_size=len(base),
                          max_size=len(base)))
    text = "".join(_EDITS[e](ch) for e, ch in zip(edits, base, strict=True))
    prefix = draw(st.sampled_from(("", "", "*", " ")))
    suffix = draw(st.sampled_from(("", "", "*", " ", "?", "\x00")))
    return prefix + text + suffix


def text_key(stored: Sequence[str], multi: bool) -> st.SearchStrategy[str]:
    pool = sorted(set(stored))
    one = st.one_of(
        st.sampled_from(pool),
        st.sampled_from(pool).flatmap(variant),
        st.text(alphabet=KEY_ALPHABET, max_size=6),
        st.sampled_from(SPECIAL_KEYS),
    )
    if not multi:
        return one
    return st.one_of(one, st.lists(one, min_size=2, max_size=3).map("\\".join))


def name_key(stored: Sequence[str]) -> st.SearchStrategy[str]:
    pool = sorted(set(stored))
    return st.one_of(
        text_key(pool, multi=False),
        st.sampled_from(pool).map(anyascii).flatmap(variant),
        st.sampled_from(pool).map(lambda n: n.split("^")[0].lower() + "*"),
    )


def uid_key(stored: Sequence[str]) -> st.SearchStrategy[str]:
    pool = sorted(set(stored)) + ["1.2.3.4", "2.25.1"]
    sep = st.sampled_from(("\\", "\\", " \\ ", "\\\\"))
    pad = st.sampled_from(("", "", " ", "\x00"))
    listed = st.tuples(st.lists(st.sampled_from(pool), min_size=1, max_size=3), sep, pad).map(
        lambda t: t[1].join(t[0]) + t[2])
    wild = st.sampled_from(pool).map(lambda u: u[:6] + "*")
    return st.one_of(listed, listed, wild,
                     st.sampled_from(("", "*", " ", "?", "1.2.?", "\\", "*\\" + pool[0])))


def _date_text() -> st.SearchStrategy[str]:
    dates = st.dates(FIRST_DAY - datetime.timedelta(days=5),
                     FIRST_DAY + datetime.timedelta(days=DAYS + 5))
    return st.builds(lambda d, f: d.strftime(f), dates, st.sampled_from(("%Y%m%d", "%Y.%m.%d")))


def range_key(bound: st.SearchStrategy[str], invalid: Sequence[str]) -> st.SearchStrategy[str]:
    gap = st.sampled_from(("", " "))
    return st.one_of(
        bound,
        st.tuples(bound, gap, bound).map(lambda t: f"{t[0]}{t[1]}-{t[1]}{t[2]}"),
        bound.map(lambda b: b + "-"),
        bound.map(lambda b: "-" + b),
        st.sampled_from(tuple(invalid) + ("", "*")),
    )


def date_key(stored: Sequence[str]) -> st.SearchStrategy[str]:
    bound = st.one_of(st.sampled_from(sorted({d for d in stored if d})), _date_text())
    return range_key(bound, INVALID_DATES)


@st.composite
def time_text(draw: st.DrawFn) -> str:
    hh = draw(st.integers(0, 23))
    parts = [f"{hh:02d}"]
    precision = draw(st.integers(0, 3))
    if precision >= 1:
        parts.append(f"{draw(st.integers(0, 59)):02d}")
    if precision >= 2:
        parts.append(f"{draw(st.integers(0, 60)):02d}")
    text = (":" if draw(st.integers(0, 5)) == 0 else "").join(parts)
    if precision == 3:
        text += "." + draw(st.text(alphabet="0123456789", min_size=1, max_size=6))
    return text


def _prefixes(time: str) -> list[str]:
    """``time`` at each coarser precision: 045302.33 -> 04, 0453, 045302, 045302.3, ..."""
    cuts = [2, 4, 6] + list(range(8, len(time) + 1))
    return [time[:n] for n in cuts if n <= len(time)]


def time_key(stored: Sequence[str]) -> st.SearchStrategy[str]:
    pool = sorted({t for t in stored if t})
    prefix = st.sampled_from(pool).flatmap(lambda t: st.sampled_from(_prefixes(t)))
    bound = st.one_of(st.sampled_from(pool), time_text(), prefix, prefix)
    return range_key(bound, INVALID_TIMES)


class Archive:
    """The filled archive of one backend pair, its records and a key strategy per keyword."""

    def __init__(self, backend: str, services: Services, studies: list[Study]) -> None:
        self.backend = backend
        self.services = services
        self.studies = studies
        series = [x for study in studies for x in study.series]
        self.keys: dict[str, st.SearchStrategy[str]] = {
            "PatientName": name_key([x.patient.name for x in studies]),
            "PatientID": text_key([x.patient.patient_id for x in studies], multi=True),
            "StudyInstanceUID": uid_key([x.uid for x in studies]),
            "StudyDate": date_key([x.date for x in studies]),
            "StudyTime": time_key([x.time for x in studies]),
            "AccessionNumber": text_key([x.accession for x in studies], multi=True),
            "StudyDescription": text_key([x.description for x in studies], multi=True),
            "ModalitiesInStudy": text_key(MODALITIES, multi=True),
            "Modality": text_key(MODALITIES, multi=True),
            "SeriesInstanceUID": uid_key([x.uid for x in series]),
            "SOPInstanceUID": uid_key([x.sop_uid for x in series]),
        }

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Archive({self.backend}, {len(self.studies)} studies)"

    def search(self, level: Level, filters: dict[str, str], unique: str) -> list[str]:
        request = QueryRequest(level, filters, return_keys=[unique])
        return [m[unique] for m in self.services.query.search(Caller.cli(), request)]


@pytest.fixture(scope="module", params=BACKENDS)
def archive(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    studies = make_studies(SEED)
    with backend_services(request, tmp_path_factory.mktemp("archive"), request.param) as svc:
        ingest(svc, studies)
        yield Archive(request.param, svc, studies)


# -- the oracle's selections -----------------------------------------------------------------


def _vr(keyword: str) -> str:
    return "CS" if keyword == "ModalitiesInStudy" else ATTRIBUTES[keyword].vr


def _tests(filters: dict[str, str]) -> dict[str, oracle.Predicate]:
    """A predicate per key; raises oracle.InvalidKey when any key is invalid."""
    return {k: oracle.matcher(_vr(k), v) for k, v in filters.items()}


def study_matches(study: Study, tests: dict[str, oracle.Predicate],
                  series: Series | None = None) -> bool:
    for keyword, test in tests.items():
        if keyword == "ModalitiesInStudy":
            ok = any(test(x.modality) for x in study.series)
        elif keyword == "Modality":
            ok = series is not None and test(series.modality)
        elif keyword == "SeriesInstanceUID":
            ok = series is not None and test(series.uid)
        elif keyword == "SOPInstanceUID":
            ok = series is not None and test(series.sop_uid)
        else:
            ok = test(study.value(keyword))
        if not ok:
            return False
    return True


def expected_studies(studies: list[Study], filters: dict[str, str]) -> list[str]:
    tests = _tests(filters)
    return [s.uid for s in studies if study_matches(s, tests)]


def expected_patients(studies: list[Study], filters: dict[str, str]) -> list[str]:
    tests = _tests(filters)
    seen: dict[str, bool] = {}
    for s in studies:  # a patient row is created with its first study
        if s.patient.patient_id not in seen:
            seen[s.patient.patient_id] = study_matches(s, tests)
    return [pid for pid, ok in seen.items() if ok]


def expected_series(studies: list[Study], filters: dict[str, str], unique: str) -> list[str]:
    tests = _tests(filters)
    return [x.uid if unique == "SeriesInstanceUID" else x.sop_uid
            for s in studies for x in s.series if study_matches(s, tests, x)]


# -- properties ------------------------------------------------------------------------------

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _filters(data: st.DataObject, archive: Archive, keywords: Sequence[str],
             max_keys: int = 3) -> dict[str, str]:
    chosen = data.draw(st.lists(st.sampled_from(keywords), min_size=1, max_size=max_keys,
                                unique=True), label="keys")
    return {k: data.draw(archive.keys[k], label=k) for k in chosen}


def check(archive: Archive, level: Level, filters: dict[str, str], unique: str,
          expect: Callable[[], list[str]]) -> None:
    try:
        expected = expect()
    except oracle.InvalidKey:
        with pytest.raises(InvalidInput):
            archive.search(level, filters, unique)
        return
    assert archive.search(level, filters, unique) == expected


@PROPERTY
@given(data=st.data())
def test_study_level_selects_what_the_oracle_selects(archive: Archive,
                                                      data: st.DataObject) -> None:
    filters = _filters(data, archive, STUDY_KEYS)
    check(archive, Level.STUDY, filters, "StudyInstanceUID",
          lambda: expected_studies(archive.studies, filters))


@pytest.mark.parametrize("keyword", STUDY_KEYS)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_each_study_key_alone_selects_what_the_oracle_selects(archive: Archive, keyword: str,
                                                               data: st.DataObject) -> None:
    filters = {keyword: data.draw(archive.keys[keyword], label=keyword)}
    check(archive, Level.STUDY, filters, "StudyInstanceUID",
          lambda: expected_studies(archive.studies, filters))


@PROPERTY
@given(data=st.data())
def test_patient_level_selects_what_the_oracle_selects(archive: Archive,
                                                        data: st.DataObject) -> None:
    filters = _filters(data, archive, PATIENT_KEYS, max_keys=2)
    check(archive, Level.PATIENT, filters, "PatientID",
          lambda: expected_patients(archive.studies, filters))


@PROPERTY
@given(data=st.data())
def test_series_level_selects_what_the_oracle_selects(archive: Archive,
                                                       data: st.DataObject) -> None:
    filters = _filters(data, archive, SERIES_KEYS)
    check(archive, Level.SERIES, filters, "SeriesInstanceUID",
          lambda: expected_series(archive.studies, filters, "SeriesInstanceUID"))


@PROPERTY
@given(data=st.data())
def test_image_level_selects_what_the_oracle_selects(archive: Archive,
                                                      data: st.DataObject) -> None:
    filters = _filters(data, archive, IMAGE_KEYS)
    check(archive, Level.IMAGE, filters, "SOPInstanceUID",
          lambda: expected_series(archive.studies, filters, "SOPInstanceUID"))


def test_the_record_set_exercises_the_tricky_cases(archive: Archive) -> None:
    """The seeded records hold what the properties are about (else they prove little)."""
    s = archive.studies
    texts = [x.accession + x.description + x.patient.patient_id for x in s]
    assert any("%" in t for t in texts) and any("_" in t for t in texts)
    assert any("'" in t for t in texts) and any("*" in t or "?" in t for t in texts)
    assert any(not x.date for x in s) and any(not x.time for x in s)
    assert {len(x.time) for x in s if x.time} & {2, 4} and any("." in x.time for x in s)
    assert len({x.patient.patient_id for x in s}) == PATIENTS
    assert any(len(x.series) > 1 for x in s)


def test_returned_names_and_texts_are_as_stored(archive: Archive) -> None:
    request = QueryRequest(Level.STUDY, {}, ("PatientName", "PatientID", "AccessionNumber",
                                             "StudyDescription", "StudyInstanceUID"))
    found = {m["StudyInstanceUID"]: m for m in archive.services.query.search(Caller.cli(),
                                                                             request)}
    assert len(found) == STUDIES
    for study in archive.studies:
        match = found[study.uid]
        assert match["PatientName"] == study.patient.name
        assert match["PatientID"] == study.patient.patient_id
        assert match["AccessionNumber"] == (study.accession or None)
        assert match["StudyDescription"] == (study.description or None)
