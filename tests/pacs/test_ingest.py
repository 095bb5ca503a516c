"""The ingest path on both backend pairs: store, idempotence, duplicates, bad input, faults."""

from __future__ import annotations

import hashlib
import shutil
import threading
from datetime import UTC, datetime, timedelta
from io import BytesIO

import pydicom
import pytest
from sqlalchemy import func, select, text, update

from pacs.context import Caller
from pacs.errors import DuplicateConflict, InvalidInput, StorageUnavailable
from pacs.index.models import Instance, Patient, Series, Study
from pacs.ingest import Staging, StoreStatus
from pacs.services import Services, build_services
from tests.conftest import staged_leftovers, testdata

CLI = Caller.cli("test")


def _count(services: Services, model: type) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def _objects(services: Services) -> list[str]:
    return list(services.store.keys())


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_store_then_read_back_identical(services: Services) -> None:
    raw = testdata("CT_small.dcm").read_bytes()
    outcome = services.ingest.store_instance(CLI, raw)
    assert outcome.status is StoreStatus.STORED
    stored = services.retrieve.instance(CLI, outcome.sop_instance_uid)
    assert services.retrieve.read(stored) == raw
    assert stored.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert stored.pixel_data_offset is not None
    assert raw[stored.pixel_data_offset - 12:stored.pixel_data_offset - 8] == b"\xe0\x7f\x10\x00"
    assert [_count(services, m) for m in (Patient, Study, Series, Instance)] == [1, 1, 1, 1]


def test_resend_is_idempotent(services: Services) -> None:
    raw = testdata("MR_small.dcm").read_bytes()
    first = services.ingest.store_instance(CLI, raw)
    second = services.ingest.store_instance(CLI, raw)
    assert (first.status, second.status) == (StoreStatus.STORED, StoreStatus.ALREADY_STORED)
    assert _count(services, Instance) == 1
    assert len(_objects(services)) == 1


def test_same_uid_other_content_rejected_by_default(services: Services) -> None:
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    services.ingest.store_instance(CLI, _bytes(ds))
    ds.StudyDescription = "changed"
    with pytest.raises(DuplicateConflict):
        services.ingest.store_instance(CLI, _bytes(ds))
    stored = services.retrieve.instance(CLI, ds.SOPInstanceUID)
    assert b"changed" not in services.retrieve.read(stored)
    assert len(_objects(services)) == 1


def test_same_uid_other_content_replaced_with_overwrite_policy(services: Services) -> None:
    services.ingest.duplicate_policy = "overwrite"
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    services.ingest.store_instance(CLI, _bytes(ds))
    ds.StudyDescription = "changed"
    outcome = services.ingest.store_instance(CLI, _bytes(ds))
    assert outcome.status is StoreStatus.REPLACED
    stored = services.retrieve.instance(CLI, ds.SOPInstanceUID)
    assert b"changed" in services.retrieve.read(stored)
    assert len(_objects(services)) == 1
    with services.engine.connect() as conn:
        assert conn.execute(select(Study.num_instances)).scalar_one() == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda ds: setattr(ds, "SOPInstanceUID", "../../etc/passwd"), "invalid SOPInstanceUID"),
    (lambda ds: setattr(ds, "StudyInstanceUID", "1.2.abc"), "invalid StudyInstanceUID"),
    (lambda ds: delattr(ds, "SeriesInstanceUID"), "missing SeriesInstanceUID"),
    (lambda ds: setattr(ds, "SOPInstanceUID", "1." + "2" * 70), "invalid SOPInstanceUID"),
])
def test_bad_uids_rejected(services: Services, mutate: object, message: str) -> None:
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    mutate(ds)  # type: ignore[operator]
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    with pytest.raises(InvalidInput, match=message):
        services.ingest.store_instance(CLI, _bytes(ds))
    assert _count(services, Instance) == 0
    assert _objects(services) == []


@pytest.mark.parametrize("payload", [
    b"",
    b"garbage" * 100,
    b"\x00" * 128 + b"DICM" + b"\xff" * 300,
])
def test_garbage_rejected(services: Services, payload: bytes,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before anything is written: behind the S3 spool a written object would be
    uploaded, even if removed right after."""
    puts: list[str] = []
    put = services.store.put
    monkeypatch.setattr(services.store, "put", lambda key, *a, **k: puts.append(key) or put(key, *a, **k))
    with pytest.raises(InvalidInput):
        services.ingest.store_instance(CLI, payload)
    assert _objects(services) == []
    assert puts == []


def test_truncated_pixel_data_rejected(services: Services) -> None:
    with pytest.raises(InvalidInput, match="truncated"):
        services.ingest.store_instance(CLI, testdata("MR_truncated.dcm").read_bytes())
    raw = testdata("CT_small.dcm").read_bytes()
    with pytest.raises(InvalidInput):
        services.ingest.store_instance(CLI, raw[: len(raw) // 2])
    assert _count(services, Instance) == 0
    assert _objects(services) == []


def test_object_not_the_announced_one_leaves_nothing(services: Services) -> None:
    """The C-STORE request names another instance: refused before anything is written."""
    raw = testdata("CT_small.dcm").read_bytes()
    with pytest.raises(InvalidInput, match="differs from the request"):
        services.ingest.store_instance(CLI, raw, expected_sop_instance_uid="1.2.3.4")
    with pytest.raises(InvalidInput, match="Study Instance UID"):
        services.ingest.store_instance(CLI, raw, expected_study_uid="1.2.3.4")
    assert _count(services, Instance) == 0
    assert _objects(services) == []


def test_object_too_large_rejected(services: Services) -> None:
    services.ingest.max_object_size = 1000
    with pytest.raises(InvalidInput, match="exceeds"):
        services.ingest.store_instance(CLI, testdata("CT_small.dcm").read_bytes())


def test_index_failure_removes_the_bytes(services: Services) -> None:
    """An index that fails mid-transaction leaves no object behind and no Success."""
    with services.engine.begin() as conn:
        conn.execute(text("CREATE TABLE broken_marker (id INTEGER)"))
        conn.execute(text("DROP TABLE broken_marker"))
        conn.execute(text("ALTER TABLE series RENAME TO series_gone"))
    with pytest.raises(StorageUnavailable):
        services.ingest.store_instance(CLI, testdata("CT_small.dcm").read_bytes())
    assert _objects(services) == []


def test_storage_failure_indexes_nothing(settings: object) -> None:
    from pacs.config import Settings

    assert isinstance(settings, Settings)
    if not settings.storage_url.startswith("file://"):
        pytest.skip("folder-specific fault (S3 and PostgreSQL faults: tests/e2e/test_production.py)")
    services = build_services(settings)
    try:
        root = settings.storage_url.removeprefix("file://")
        shutil.rmtree(root)
        with open(root, "w") as fh:  # a file where the folder should be: every write fails
            fh.write("not a folder")
        with pytest.raises(StorageUnavailable):
            services.ingest.store_instance(CLI, testdata("CT_small.dcm").read_bytes())
        assert services.ingest.begin_staging() is None  # the plain path reports the error
        assert _count(services, Instance) == 0
    finally:
        services.close()


def test_concurrent_stores_of_one_instance(services: Services) -> None:
    raw = testdata("CT_small.dcm").read_bytes()
    results: list[StoreStatus] = []

    def send() -> None:
        results.append(services.ingest.store_instance(CLI, raw).status)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.value for r in results) == ["already stored"] * 5 + ["stored"]
    assert _count(services, Instance) == 1
    assert len(_objects(services)) == 1


def test_counters_follow_hierarchy(services: Services) -> None:
    import numpy as np

    from pacs.demo import CT_DEMO, generate_study

    datasets = generate_study(np.random.default_rng(7), CT_DEMO)
    for ds in datasets:
        services.ingest.store_instance(CLI, _bytes(ds))
    with services.engine.connect() as conn:
        study = conn.execute(select(Study.num_series, Study.num_instances)).one()
    assert tuple(study) == (CT_DEMO.series_count, len(datasets))
    assert _count(services, Patient) == 1


def test_listener_errors_never_fail_a_store(services: Services) -> None:
    seen: list[str] = []

    def broken(outcome: object, header: object) -> None:
        seen.append("called")
        raise RuntimeError("thumbnail service down")

    services.ingest.listeners.append(broken)
    outcome = services.ingest.store_instance(CLI, testdata("CT_small.dcm").read_bytes())
    assert outcome.status is StoreStatus.STORED and seen == ["called"]


def test_every_bundled_transfer_syntax_indexed(services: Services) -> None:
    names = ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEG2000.dcm",
             "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm", "SC_rgb_rle.dcm", "rtplan.dcm"]
    for name in names:
        raw = testdata(name).read_bytes()
        outcome = services.ingest.store_instance(CLI, raw)
        stored = services.retrieve.instance(CLI, outcome.sop_instance_uid)
        assert services.retrieve.read(stored) == raw, name
    assert _count(services, Instance) == len(names)


def test_nul_inside_text_is_dropped(services: Services) -> None:
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    ds.PatientName = "A\x00B"
    services.ingest.store_instance(CLI, _bytes(ds))
    with services.engine.connect() as conn:
        assert conn.execute(select(Patient.patient_name)).scalar_one() == "AB"


def test_same_dataset_from_another_source_ae_is_already_stored(services: Services) -> None:
    from pacs.dicom.header import dataset_offset, part10_bytes

    raw = testdata("CT_small.dcm").read_bytes()
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    body = raw[dataset_offset(raw):]
    first = part10_bytes(body, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "MODALITY")
    second = part10_bytes(body, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "ROUTER")
    assert services.ingest.store_instance(CLI, first).status is StoreStatus.STORED
    assert services.ingest.store_instance(CLI, second).status is StoreStatus.ALREADY_STORED


# -- a resend repairs an object lost or damaged in storage since (ADR 0002) --------------------

def _stored_key(services: Services, sop_instance_uid: str) -> str:
    return services.retrieve.instance(CLI, sop_instance_uid).storage_key


def _lose(services: Services, key: str, how: str) -> None:
    """What an operator, a partial restore or a failing disk can do to a stored object."""
    if how == "deleted":
        services.store.delete(key)
    elif how == "damaged":  # same size, other bytes
        data = bytearray(services.store.get(key))
        data[-100:] = bytes(100)
        services.store.put(key, bytes(data))
    else:  # truncated
        services.store.put(key, services.store.get(key)[:-100])


@pytest.mark.parametrize("how", ["deleted", "damaged", "truncated"])
@pytest.mark.parametrize("path", ["in memory", "staged", "looked up first"])
def test_resend_repairs_a_lost_or_damaged_object(services: Services, how: str, path: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bytes resent after the stored copy went missing or changed are stored again
    (the row pointed at the new copy, the damaged one removed): answered ``REPAIRED``, not
    "already stored", and `pacs verify` finds the archive whole again."""
    from pacs import ingest
    from pacs.verify import verify

    if path == "looked up first":  # the path of objects above 16 MiB, with a small object
        monkeypatch.setattr(ingest, "LOOKUP_FIRST", 1000)
    raw = testdata("CT_small.dcm").read_bytes()
    uid = pydicom.dcmread(BytesIO(raw), stop_before_pixels=True).SOPInstanceUID

    def store() -> StoreStatus:
        staging = _staged(services, raw) if path == "staged" else None
        return services.ingest.store_instance(CLI, raw, staging=staging).status

    assert store() is StoreStatus.STORED
    lost = _stored_key(services, uid)
    _lose(services, lost, how)
    _received_long_ago(services, uid)  # (S3: not still in another node's spool)
    assert not verify(services.engine, services.store).healthy

    assert store() is StoreStatus.REPAIRED
    repaired = _stored_key(services, uid)
    assert repaired != lost
    assert services.retrieve.read(services.retrieve.instance(CLI, uid)) == raw
    assert _objects(services) == [repaired]  # the damaged copy removed, nothing else kept
    assert _count(services, Instance) == 1
    with services.engine.connect() as conn:
        assert conn.execute(select(Series.num_instances)).scalar_one() == 1
    after = verify(services.engine, services.store)
    assert after.healthy and after.orphans == []
    assert store() is StoreStatus.ALREADY_STORED  # whole again: a resend keeps nothing
    assert _objects(services) == [repaired]
    assert staged_leftovers(services.store) == []


def _received_long_ago(services: Services, uid: str) -> None:
    with services.engine.begin() as conn:
        conn.execute(update(Instance).where(Instance.sop_instance_uid == uid)
                     .values(received_at=datetime.now(UTC) - timedelta(hours=2)))


def test_a_recent_object_not_found_on_s3_is_not_repaired(services: Services) -> None:
    """Several nodes on one bucket: an object another node acknowledged minutes ago may
    still be in that node's upload spool. A resend that cannot find it is answered
    "already stored" and keeps nothing (on the folder store, which every node shares at
    once, it is repaired at any age)."""
    raw = testdata("CT_small.dcm").read_bytes()
    uid = services.ingest.store_instance(CLI, raw).sop_instance_uid
    services.store.delete(_stored_key(services, uid))  # as if it were on another node
    status = services.ingest.store_instance(CLI, raw).status
    if getattr(services.store, "eventually_consistent", False):
        assert status is StoreStatus.ALREADY_STORED
        assert _objects(services) == []
    else:
        assert status is StoreStatus.REPAIRED
        assert len(_objects(services)) == 1


def test_other_content_for_a_lost_object_is_still_refused(services: Services) -> None:
    """Different bytes under the UID of a lost object cannot be compared with it: the
    duplicate policy decides (reject by default), nothing is kept."""
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    services.ingest.store_instance(CLI, _bytes(ds))
    services.store.delete(_stored_key(services, ds.SOPInstanceUID))
    ds.StudyDescription = "changed"
    with pytest.raises(DuplicateConflict):
        services.ingest.store_instance(CLI, _bytes(ds))
    assert _objects(services) == [] and _count(services, Instance) == 1


def test_a_row_changed_meanwhile_is_not_replaced(services: Services) -> None:
    """Two resends repairing (or overwriting) one row at once: the first wins, the second
    changes nothing (its copy is removed by the caller), so no object is left unreferenced."""
    from pacs.dicom.header import parse_header
    from pacs.index import writer

    raw = testdata("CT_small.dcm").read_bytes()
    uid = services.ingest.store_instance(CLI, raw).sop_instance_uid
    with services.engine.connect() as conn:
        old = writer.find_instance(conn, uid)
    assert old is not None
    header, _ = parse_header(raw)
    first = writer.NewObject("20260101/a/first.dcm", len(raw), old.sha256, "")
    second = writer.NewObject("20260101/b/second.dcm", len(raw), old.sha256, "")
    assert writer.replace_instance(services.engine, header, first, old) is True
    assert writer.replace_instance(services.engine, header, second, old) is False
    assert _stored_key(services, uid) == "20260101/a/first.dcm"


def test_instances_of_a_known_series_take_the_cursor_path(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first instance of a series (full path: hierarchy created), the next ones are
    indexed by the statements on the DBAPI cursor, on SQLite and on PostgreSQL; a resend
    still takes the full path and is found a duplicate; counters stay right."""
    from pacs.index import writer

    full: list[int] = []
    original = writer._insert_rows
    monkeypatch.setattr(writer, "_insert_rows",
                        lambda conn, batch: full.append(len(batch)) or original(conn, batch))
    base = pydicom.dcmread(testdata("CT_small.dcm"))
    objects = []
    for n in range(4):
        ds = base.copy()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7433.3.{n + 1}"
        ds.InstanceNumber = n + 1
        objects.append(_bytes(ds))
    for raw in objects:
        assert services.ingest.store_instance(CLI, raw).status is StoreStatus.STORED
    assert full == [1]  # the first instance only
    assert services.ingest.store_instance(CLI, objects[2]).status is StoreStatus.ALREADY_STORED
    assert full == [1, 1]
    with services.engine.connect() as conn:
        assert tuple(conn.execute(select(Series.num_instances, Study.num_instances)
                                  .join(Study, Series.study_pk == Study.id)).one()) == (4, 4)
    assert _count(services, Instance) == 4


# -- objects written as they arrive (C-STORE data sets: pacs.ingest.Staging) ------------------


def _staged(services: Services, raw: bytes, piece: int = 16_000) -> Staging:
    """What the DICOM service does while a data set arrives: staged piece by piece."""
    staging = services.ingest.begin_staging()
    if staging is None:
        pytest.skip("the store writes objects whole (S3 behind its spool: docs/performance.md)")
    for pos in range(0, len(raw), piece):
        staging.write(raw[pos:pos + piece])
    return staging


def test_staged_object_committed_under_its_key(services: Services,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    raw = testdata("CT_small.dcm").read_bytes()
    puts: list[str] = []
    put = services.store.put
    monkeypatch.setattr(services.store, "put", lambda key, *a, **k: puts.append(key) or put(key, *a, **k))
    staging = _staged(services, raw)
    outcome = services.ingest.store_instance(CLI, raw, staging=staging)
    assert outcome.status is StoreStatus.STORED
    assert puts == []  # written as it arrived, not put again
    assert _objects(services) == [staging.key]
    stored = services.retrieve.instance(CLI, outcome.sop_instance_uid)
    assert services.retrieve.read(stored) == raw
    with services.engine.connect() as conn:
        digest = conn.execute(select(Instance.sha256)).scalar_one()
    assert digest == hashlib.sha256(raw).hexdigest()
    assert staged_leftovers(services.store) == []


@pytest.mark.parametrize("case", ["garbage", "other instance", "truncated"])
def test_staged_invalid_object_is_removed_never_put(services: Services, case: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused: the staged bytes go, nothing is put (or, behind the spool, uploaded)."""
    raw = testdata("CT_small.dcm").read_bytes()
    expected = None
    if case == "garbage":
        raw = b"\x00" * 128 + b"DICM" + b"\xff" * 3000
    elif case == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        expected = "1.2.3.4"
    puts: list[str] = []
    put = services.store.put
    monkeypatch.setattr(services.store, "put", lambda key, *a, **k: puts.append(key) or put(key, *a, **k))
    with pytest.raises(InvalidInput):
        services.ingest.store_instance(CLI, raw, expected_sop_instance_uid=expected,
                                       staging=_staged(services, raw))
    assert puts == [] and _objects(services) == [] and _count(services, Instance) == 0
    assert staged_leftovers(services.store) == []


def test_staged_resend_is_idempotent(services: Services) -> None:
    raw = testdata("MR_small.dcm").read_bytes()
    first = services.ingest.store_instance(CLI, raw, staging=_staged(services, raw))
    second = services.ingest.store_instance(CLI, raw, staging=_staged(services, raw))
    assert (first.status, second.status) == (StoreStatus.STORED, StoreStatus.ALREADY_STORED)
    assert len(_objects(services)) == 1 and _count(services, Instance) == 1
    assert staged_leftovers(services.store) == []


def test_staged_object_read_back_from_the_store(services: Services,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A staged object too big for memory: the ingest reads it back from its staged file
    (header, the comparison of a resend) and never writes it again."""
    raw = testdata("MR_small.dcm").read_bytes()
    puts: list[str] = []
    put = services.store.put
    monkeypatch.setattr(services.store, "put", lambda key, *a, **k: puts.append(key) or put(key, *a, **k))
    statuses = []
    for _ in range(2):
        staging = _staged(services, raw)
        with staging.open_reader() as stream:
            statuses.append(services.ingest.store_instance(CLI, stream, staging=staging).status)
    assert statuses == [StoreStatus.STORED, StoreStatus.ALREADY_STORED]
    assert puts == [] and len(_objects(services)) == 1 and _count(services, Instance) == 1
    assert services.store.get(_objects(services)[0]) == raw
    other = raw[:-1] + bytes([raw[-1] ^ 0xFF])  # same UIDs, other pixels: refused
    staging = _staged(services, other)
    with staging.open_reader() as stream, pytest.raises(DuplicateConflict):
        services.ingest.store_instance(CLI, stream, staging=staging)
    assert len(_objects(services)) == 1 and staged_leftovers(services.store) == []


def test_staging_that_does_not_match_takes_the_plain_path(services: Services) -> None:
    """A staging with other bytes than the object (not what it was made for) is dropped."""
    raw = testdata("CT_small.dcm").read_bytes()
    staging = _staged(services, raw[:1000])
    outcome = services.ingest.store_instance(CLI, raw, staging=staging)
    assert outcome.status is StoreStatus.STORED
    assert len(_objects(services)) == 1 and _objects(services) != [staging.key]
    assert staged_leftovers(services.store) == []


def test_index_failure_removes_the_staged_bytes(services: Services) -> None:
    with services.engine.begin() as conn:
        conn.execute(text("ALTER TABLE series RENAME TO series_gone"))
    raw = testdata("CT_small.dcm").read_bytes()
    with pytest.raises(StorageUnavailable):
        services.ingest.store_instance(CLI, raw, staging=_staged(services, raw))
    assert _objects(services) == [] and staged_leftovers(services.store) == []


def test_one_statement_index_path_counts_and_leaves_transactions_on(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL an instance of a known series goes in with its counters in one statement,
    in autocommit; the connection returns to the pool transactional again."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's data-modifying CTEs")
    from pacs.demo import generate_bulk
    from pacs.index import writer
    from pacs.index.db import unpinged

    taken: list[bool] = []
    one_statement = writer._insert_counted
    monkeypatch.setattr(writer, "_insert_counted",
                        lambda *args: taken.append(one_statement(*args)) or taken[-1])
    first, second, third = (_bytes(ds) for ds in generate_bulk(8, 1, 3))
    services.ingest.store_instance(CLI, first)  # new series: the full path
    for raw in (second, third, second):
        services.ingest.store_instance(CLI, raw)
    assert taken == [False, True, True, False]  # no series yet, two new ones, the resend
    with services.engine.connect() as conn:
        assert conn.execute(select(Series.num_instances)).scalar_one() == 3
        assert conn.execute(select(Study.num_instances)).scalar_one() == 3
    assert _count(services, Instance) == 3
    pooled = unpinged(services.engine).raw_connection()
    try:
        assert pooled.driver_connection.autocommit is False
    finally:
        pooled.close()


def test_stores_go_on_after_the_database_dropped_our_connections(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    """The index's fast path checks out connections without a pre-ping (pacs.index.db):
    one the server has closed fails its first statement and the store takes the full path."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's pooled connections")
    from pacs.demo import generate_bulk

    first, second, third = (_bytes(ds) for ds in generate_bulk(7, 1, 3))
    services.ingest.store_instance(CLI, first)
    services.ingest.store_instance(CLI, second)  # series known: the fast path's connection
    with services.engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    with caplog.at_level("INFO", logger="pacs.index.writer"):
        assert services.ingest.store_instance(CLI, third).status is StoreStatus.STORED
    assert "using the full path" in caplog.text  # the dead connection was met, and dropped
    assert _count(services, Instance) == 3
    with services.engine.connect() as conn:
        assert conn.execute(select(Series.num_instances)).scalar_one() == 3
