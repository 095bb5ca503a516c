"""Writing to the index: one short transaction per instance, race-safe upserts.

Patient, study and series rows are created with ``INSERT .. ON CONFLICT DO NOTHING`` on their
unique keys and then read back, so concurrent archive processes create each exactly once.
The instance row's unique SOP Instance UID decides which of two racing stores wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from pacs.dicom.header import InstanceHeader
from pacs.index.models import Instance, Patient, Series, Study
from pacs.index.timefmt import normalise_date, normalise_time


@dataclass(frozen=True)
class StoredRow:
    """The index row of a stored instance, as ingest needs it to decide on duplicates."""

    id: int
    sha256: str
    storage_key: str
    size: int


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


def find_instance(conn: Connection, sop_instance_uid: str) -> StoredRow | None:
    row = conn.execute(
        select(Instance.id, Instance.sha256, Instance.storage_key, Instance.size)
        .where(Instance.sop_instance_uid == sop_instance_uid)
    ).first()
    return StoredRow(int(row[0]), row[1], row[2], int(row[3])) if row else None


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
    """Index a new instance in one transaction.

    Returns None when it was inserted, or the row that already holds this SOP Instance UID
    (nothing changed then).
    """
    try:
        with engine.begin() as conn:
            existing = find_instance(conn, h.sop_instance_uid)
            if existing is not None:
                return existing
            series_pk = _hierarchy(conn, h)
            conn.execute(_insert(conn, Instance.__table__).values(
                series_pk=series_pk, **_instance_values(h, obj)))
            conn.execute(update(Series).where(Series.id == series_pk)
                         .values(num_instances=Series.num_instances + 1))
            study_pk = conn.execute(select(Series.study_pk).where(Series.id == series_pk)).scalar_one()
            conn.execute(update(Study).where(Study.id == study_pk)
                         .values(num_instances=Study.num_instances + 1))
            return None
    except IntegrityError:
        # another process stored the same SOP Instance UID between our check and insert
        with engine.connect() as conn:
            existing = find_instance(conn, h.sop_instance_uid)
        if existing is None:
            raise
        return existing


def replace_instance(engine: Engine, h: InstanceHeader, obj: NewObject, old: StoredRow) -> None:
    """Point an existing instance row at new bytes (duplicate policy ``overwrite``)."""
    with engine.begin() as conn:
        values = _instance_values(h, obj)
        values.pop("sop_instance_uid")
        conn.execute(update(Instance).where(Instance.id == old.id).values(**values))


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
