"""Writing to the index: short transactions shared by concurrent stores, race-safe upserts.

An instance costs one statement in the common case: ``INSERT .. SELECT`` of its row under its
series (found by Series Instance UID in the same statement) ``ON CONFLICT DO NOTHING``. Only
when that inserts nothing does the writer look further: the SOP Instance UID is already
indexed (a resend, or a racing store that won), or the series is new, and then patient, study
and series rows are created with ``INSERT .. ON CONFLICT DO NOTHING`` on their unique keys
and read back, so concurrent archive processes create each exactly once. The instance
counters of series and studies are updated once per series and study of a transaction.

Stores running at once in one process share a transaction (group commit,
:mod:`pacs.index.groupcommit`): one commit and one fsync for all of them; each caller returns
only after the transaction holding its row committed.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, delete, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import Pool
from sqlalchemy.sql.dml import Insert, Update

from pacs.dicom.header import InstanceHeader
from pacs.index.db import WRITE_OPTION, RawStatement, unpinged, write_lock
from pacs.index.groupcommit import GroupCommitter, Item
from pacs.index.models import Instance, Patient, Series, Study
from pacs.index.timefmt import normalise_date, normalise_time

log = logging.getLogger(__name__)
MAX_BATCH = 64  # instances per group-commit transaction
_COMMITTERS: weakref.WeakKeyDictionary[Pool, GroupCommitter[Any, Any]] = weakref.WeakKeyDictionary()
_COMMITTERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class StoredRow:
    """The index row of a stored instance, as ingest needs it to decide on duplicates."""

    id: int
    sha256: str
    storage_key: str
    size: int
    received_at: datetime | None = None  # UTC


@dataclass(frozen=True)
class NewObject:
    """Where the bytes of a new instance were written."""

    storage_key: str
    size: int
    sha256: str
    source_ae: str


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _upsert_id(conn: Connection, table: Table, key_col: str, values: dict[str, Any]) -> tuple[int, bool]:
    """Insert unless a row with the same unique key exists; return (id, created)."""
    stmt = _insert(conn, table).values(**values).on_conflict_do_nothing(index_elements=[key_col])
    result = conn.execute(stmt.returning(table.c.id))
    row = result.first()
    if row is not None:
        return int(row[0]), True
    found = conn.execute(select(table.c.id).where(table.c[key_col] == values[key_col])).scalar_one()
    return int(found), False


@dataclass(frozen=True)
class _Statements:
    """The per-instance statements of one dialect, built once (SQLAlchemy then reuses their
    compiled form without rebuilding the expression for each instance)."""

    find_instance: Any
    insert_instance: Insert
    count_series: Update
    count_study: Update


_INSTANCE_COLUMNS = (
    "sop_instance_uid", "sop_class_uid", "instance_number", "content_date", "content_time",
    "rows", "columns", "number_of_frames", "bits_allocated", "photometric_interpretation",
    "transfer_syntax_uid", "storage_key", "size", "sha256", "pixel_data_offset",
    "pixel_data_length", "source_ae",
)


@functools.cache
def _statements_for(dialect: str) -> _Statements:
    table: Table = Instance.__table__  # type: ignore[assignment]
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    # INSERT .. SELECT: no row when the series is missing (no NOT NULL violation, which
    # would abort a PostgreSQL transaction), none when the SOP Instance UID exists
    source = select(Series.id, *(bindparam(name, type_=table.c[name].type) for name in _INSTANCE_COLUMNS)
                    ).where(Series.series_uid == bindparam("series_uid"))
    return _Statements(
        find_instance=select(Instance.id, Instance.sha256, Instance.storage_key, Instance.size,
                             Instance.received_at)
        .where(Instance.sop_instance_uid == bindparam("uid")),
        insert_instance=insert.from_select(["series_pk", *_INSTANCE_COLUMNS], source)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(table.c.series_pk),
        count_series=update(Series).where(Series.id == bindparam("pk"))
        .values(num_instances=Series.num_instances + bindparam("n")).returning(Series.study_pk),
        count_study=update(Study).where(Study.id == bindparam("pk"))
        .values(num_instances=Study.num_instances + bindparam("n")),
    )


def _stmts(conn: Connection) -> _Statements:
    return _statements_for(conn.dialect.name)


def find_instance(conn: Connection, sop_instance_uid: str) -> StoredRow | None:
    row = conn.execute(_stmts(conn).find_instance, {"uid": sop_instance_uid}).first()
    if row is None:
        return None
    received = row[4]
    if received is not None and received.tzinfo is None:  # SQLite keeps UTC without a zone
        received = received.replace(tzinfo=UTC)
    return StoredRow(int(row[0]), row[1], row[2], int(row[3]), received)


def _instance_values(h: InstanceHeader, obj: NewObject) -> dict[str, Any]:
    return dict(
        sop_instance_uid=h.sop_instance_uid,
        sop_class_uid=h.sop_class_uid,
        instance_number=h.instance_number,
        content_date=normalise_date(h.content_date),
        content_time=normalise_time(h.content_time),
        rows=h.rows,
        columns=h.columns,
        number_of_frames=h.number_of_frames,
        bits_allocated=h.bits_allocated,
        photometric_interpretation=h.photometric_interpretation[:32],
        transfer_syntax_uid=h.transfer_syntax_uid,
        storage_key=obj.storage_key,
        size=obj.size,
        sha256=obj.sha256,
        pixel_data_offset=h.pixel_data_offset,
        pixel_data_length=h.pixel_data_length,
        source_ae=obj.source_ae[:16],
    )


def insert_instance(engine: Engine, h: InstanceHeader, obj: NewObject) -> StoredRow | None:
    """Index a new instance; returns once the transaction holding its row committed.

    Returns None when it was inserted, or the row that already holds this SOP Instance UID
    (nothing changed then). Concurrent calls in one process share transactions (group
    commit, see :mod:`pacs.index.groupcommit`); each still returns only after its own row
    is committed, and raises the error of its own transaction.
    """
    return _committer(engine).submit(_Pending(engine, h, obj))


@dataclass(frozen=True)
class _Pending:
    engine: Engine
    header: InstanceHeader
    obj: NewObject


def _committer(engine: Engine) -> GroupCommitter[_Pending, StoredRow]:
    """The group committer of ``engine``'s connection pool (shared by its option engines).

    Kept in a weak mapping keyed by the pool, so it lives as long as the engine's pool and
    holds no reference to it (the engine comes with each item).
    """
    with _COMMITTERS_LOCK:
        found = _COMMITTERS.get(engine.pool)
        if found is None:
            found = GroupCommitter(_insert_batch, MAX_BATCH)
            _COMMITTERS[engine.pool] = found
        return found


def _insert_batch(batch: Sequence[Item[_Pending, StoredRow]]) -> None:
    """One transaction for the whole batch; on a failure other than a lost connection, each
    item again in its own transaction so one bad item (or a deadlock between nodes) fails
    only itself."""
    # a fixed order (SOP Instance UID) so two nodes' batches lock unique keys alike
    ordered = sorted(batch, key=lambda item: item.work.header.sop_instance_uid)
    if _insert_known_series(batch[0].work.engine, [item.work for item in ordered]):
        for item in ordered:
            item.succeed(None)
        return
    engine = batch[0].work.engine.execution_options(**{WRITE_OPTION: True})
    try:
        with write_lock(engine), engine.begin() as conn:
            results = _insert_rows(conn, [item.work for item in ordered])
    except SQLAlchemyError as exc:
        if len(ordered) == 1 or getattr(exc, "connection_invalidated", False):
            raise
        log.info("batch of %d index rows failed (%s): retrying one by one", len(ordered),
                 type(exc).__name__)
        for item in ordered:
            try:
                item.succeed(_insert_alone(engine, item.work))
            except SQLAlchemyError as own:
                item.fail(own)
        return
    for item, result in zip(ordered, results, strict=True):
        item.succeed(result)


def _insert_alone(engine: Engine, pending: _Pending) -> StoredRow | None:
    try:
        with write_lock(engine), engine.begin() as conn:
            return _insert_rows(conn, [pending])[0]
    except IntegrityError:
        # another process stored the same SOP Instance UID between our check and insert
        with engine.connect() as conn:
            existing = find_instance(conn, pending.header.sop_instance_uid)
        if existing is None:
            raise
        return None if existing.storage_key == pending.obj.storage_key else existing


def _insert_rows(conn: Connection, batch: Sequence[_Pending]) -> list[StoredRow | None]:
    """Instance rows of ``batch`` (hierarchy created when missing), then the counters, one
    UPDATE per series and per study touched."""
    results: list[StoredRow | None] = []
    per_series: Counter[int] = Counter()
    for pending in batch:
        h, obj = pending.header, pending.obj
        inserted = _insert_instance_row(conn, h, obj)
        if inserted is None:
            existing = find_instance(conn, h.sop_instance_uid)
            if existing is not None:
                results.append(None if existing.storage_key == obj.storage_key else existing)
                continue
            _hierarchy(conn, h)  # the first instance of its series
            inserted = _insert_instance_row(conn, h, obj)
            if inserted is None:  # stored by a concurrent transaction meanwhile
                existing = find_instance(conn, h.sop_instance_uid)
                if existing is None:
                    raise RuntimeError(f"instance {h.sop_instance_uid} neither inserted nor found")
                results.append(existing)
                continue
        per_series[inserted] += 1
        results.append(None)
    per_study: Counter[int] = Counter()
    for series_pk in sorted(per_series):
        study_pk = conn.execute(_stmts(conn).count_series, {
            "pk": series_pk, "n": per_series[series_pk]}).scalar_one()
        per_study[int(study_pk)] += per_series[series_pk]
    for study_pk in sorted(per_study):
        conn.execute(_stmts(conn).count_study, {"pk": study_pk, "n": per_study[study_pk]})
    return results


@functools.cache
def _raw_statements(dialect: Any) -> tuple[RawStatement, RawStatement, RawStatement]:
    stmts = _statements_for(dialect.name)
    return (RawStatement.of(stmts.insert_instance, dialect),
            RawStatement.of(stmts.count_series, dialect),
            RawStatement.of(stmts.count_study, dialect))


@functools.cache
def _raw_counted_insert(dialect: Any) -> RawStatement | None:
    """PostgreSQL: the instance row and both counters in one statement (data-modifying
    CTEs), a study row's id when the row went in, no row (and nothing changed) otherwise.
    Run in autocommit, it is its own transaction: one round trip instead of five (BEGIN,
    INSERT, two UPDATEs, COMMIT). None where there is no such statement (SQLite)."""
    if dialect.name != "postgresql":
        return None
    inserted = _statements_for(dialect.name).insert_instance.cte("inserted")
    counted = (update(Series).where(Series.id == inserted.c.series_pk)
               .values(num_instances=Series.num_instances + literal_column("1"))
               .returning(Series.study_pk).cte("counted"))
    statement = (update(Study).where(Study.id == counted.c.study_pk)
                 .values(num_instances=Study.num_instances + literal_column("1"))
                 .returning(Study.id))
    return RawStatement.of(statement, dialect)


def _insert_counted(connection: Any, statement: RawStatement, pending: _Pending) -> bool:
    """One new instance of an indexed series through :func:`_raw_counted_insert`; True once
    committed, False (nothing changed) when the series is missing or the UID indexed."""
    values = _instance_values(pending.header, pending.obj)
    values["series_uid"] = pending.header.series_uid
    driver = connection.driver_connection
    driver.autocommit = True
    try:
        cursor = connection.cursor()
        cursor.execute(statement.sql, statement.params(values))
        inserted = cursor.fetchone() is not None
        cursor.close()
        return inserted
    finally:
        try:
            driver.autocommit = False
        except Exception:  # noqa: BLE001 - a broken connection: never back to the pool as is
            driver.close()  # (in autocommit); the pool replaces a closed connection


def _insert_known_series(engine: Engine, batch: Sequence[_Pending]) -> bool:
    """The common case on the DBAPI cursor, without SQLAlchemy's per-statement work (about
    as much CPU as the rest of an ingest): every instance is new and its series indexed.
    True once committed; False, with nothing changed, for anything else (a new series, a
    resend, any database error), which :func:`_insert_rows` then handles in full."""
    insert, count_series, count_study = _raw_statements(engine.dialect)
    dbapi_error = engine.dialect.loaded_dbapi.Error
    sqlite = engine.dialect.name == "sqlite"
    with write_lock(engine):
        try:  # no pre-ping: a dead connection fails the first statement, then the full path
            connection = unpinged(engine).raw_connection()
        except SQLAlchemyError:
            return False
        try:
            counted = _raw_counted_insert(engine.dialect)
            if counted is not None and len(batch) == 1:
                return _insert_counted(connection, counted, batch[0])
            cursor = connection.cursor()
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            per_series: Counter[int] = Counter()
            for pending in batch:
                values = _instance_values(pending.header, pending.obj)
                values["series_uid"] = pending.header.series_uid
                cursor.execute(insert.sql, insert.params(values))
                row = cursor.fetchone()
                if row is None:
                    connection.rollback()
                    return False
                per_series[int(row[0])] += 1
            per_study: Counter[int] = Counter()
            for series_pk in sorted(per_series):
                cursor.execute(count_series.sql, count_series.params(
                    {"pk": series_pk, "n": per_series[series_pk]}))
                per_study[int(cursor.fetchone()[0])] += per_series[series_pk]
            for study_pk in sorted(per_study):
                cursor.execute(count_study.sql, count_study.params(
                    {"pk": study_pk, "n": per_study[study_pk]}))
            cursor.close()
            connection.commit()
            return True
        except dbapi_error as exc:
            log.info("index fast path: %s; using the full path", type(exc).__name__)
            try:
                connection.rollback()
            except dbapi_error:
                connection.invalidate()
            return False
        finally:
            connection.close()


def _insert_instance_row(conn: Connection, h: InstanceHeader, obj: NewObject) -> int | None:
    """INSERT .. SELECT the instance row under its series; its series_pk, or None when the
    series row is missing or the SOP Instance UID is already indexed."""
    params = _instance_values(h, obj)
    params["series_uid"] = h.series_uid
    row = conn.execute(_stmts(conn).insert_instance, params).first()
    return None if row is None else int(row[0])


def replace_instance(engine: Engine, h: InstanceHeader, obj: NewObject, old: StoredRow) -> bool:
    """Point an existing instance row at new bytes (duplicate policy ``overwrite``, or a
    resend repairing a lost object). Only if the row still points at ``old``'s object: False
    (nothing changed) when a concurrent store replaced or repaired it first."""
    with engine.begin() as conn:
        values = _instance_values(h, obj)
        values.pop("sop_instance_uid")
        changed = conn.execute(update(Instance).where(
            Instance.id == old.id, Instance.storage_key == old.storage_key).values(**values))
        return changed.rowcount == 1


def delete_instance_row(engine: Engine, row_id: int) -> None:
    """Remove an instance row and keep the counters right (used by verify/repair)."""
    with engine.begin() as conn:
        series_pk = conn.execute(select(Instance.series_pk).where(Instance.id == row_id)).scalar()
        if series_pk is None:
            return
        conn.execute(delete(Instance).where(Instance.id == row_id))
        conn.execute(update(Series).where(Series.id == series_pk)
                     .values(num_instances=Series.num_instances - 1))
        study_pk = conn.execute(select(Series.study_pk).where(Series.id == series_pk)).scalar_one()
        conn.execute(update(Study).where(Study.id == study_pk)
                     .values(num_instances=Study.num_instances - 1))


def _hierarchy(conn: Connection, h: InstanceHeader) -> int:
    """Patient, study and series rows for ``h`` (created when missing); the series id."""
    known = conn.execute(select(Series.id).where(Series.series_uid == h.series_uid)).scalar()
    if known is not None:  # the common case: the n-th instance of a series
        return int(known)
    patient_pk, _ = _upsert_id(conn, Patient.__table__, "patient_key", dict(
        patient_key=f"{h.patient_id}\\{h.issuer_of_patient_id}"[:200],
        patient_id=h.patient_id[:64],
        issuer_of_patient_id=h.issuer_of_patient_id[:64],
        patient_name=h.patient_name[:324],
        patient_name_folded=h.patient_name_folded[:324],
        patient_birth_date=normalise_date(h.patient_birth_date),
        patient_sex=h.patient_sex[:16],
    ))
    study_pk, _ = _upsert_id(conn, Study.__table__, "study_uid", dict(
        study_uid=h.study_uid,
        patient_pk=patient_pk,
        study_date=normalise_date(h.study_date),
        study_time=normalise_time(h.study_time),
        accession_number=h.accession_number[:64],
        study_id=h.study_id[:64],
        study_description=h.study_description[:200],
        referring_physician_name=h.referring_physician_name[:324],
        referring_physician_folded=h.referring_physician_folded[:324],
        specific_character_set=h.specific_character_set[:200],
    ))
    series_pk, created = _upsert_id(conn, Series.__table__, "series_uid", dict(
        series_uid=h.series_uid,
        study_pk=study_pk,
        modality=h.modality[:16],
        series_number=h.series_number,
        series_description=h.series_description[:200],
        series_date=normalise_date(h.series_date),
        series_time=normalise_time(h.series_time),
        body_part_examined=h.body_part_examined[:64],
    ))
    if created:
        conn.execute(update(Study).where(Study.id == study_pk)
                     .values(num_series=Study.num_series + 1))
    return series_pk
