"""The one query engine behind C-FIND and QIDO-RS.

A :class:`QueryRequest` names a level, the matching keys (DICOM keyword -> value as it would
appear in a C-FIND identifier) and the keys to return. Matching follows PS3.4 C.2.2.2
(``pacs.index.matching``); keys below the query level are not matched (hierarchical model,
PS3.4 C.4.1.3.1) and keys at or above it may be combined freely (relational-style, which
QIDO-RS needs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Select, exists, func, select
from sqlalchemy.exc import SQLAlchemyError

from pacs.context import Caller
from pacs.errors import InvalidInput, StorageUnavailable
from pacs.index.attributes import ATTRIBUTES, DEFAULT_KEYS, UNIQUE_KEYS, Level
from pacs.index.matching import condition
from pacs.index.models import Instance, Patient, Series, Study

log = logging.getLogger(__name__)
MAX_LIMIT = 100_000


@dataclass(frozen=True)
class QueryRequest:
    level: Level
    filters: dict[str, str] = field(default_factory=dict)
    return_keys: Sequence[str] = ()
    limit: int | None = None
    offset: int = 0


Match = dict[str, Any]  # keyword -> value (str, int or list[str]); None: empty


def _base(level: Level, keys: list[str]) -> Select[Any]:
    """SELECT of the returned keys' columns (labelled by keyword) over the level's joins."""
    columns: list[Any] = [Patient.id.label("_patient_pk")]
    if level >= Level.STUDY:
        columns.append(Study.id.label("_study_pk"))
    for keyword in keys:
        attr = ATTRIBUTES.get(keyword)
        if attr is not None and attr.column is not None and attr.level <= level:
            columns.append(attr.column.label(keyword))
    stmt = select(*columns)
    if level == Level.PATIENT:
        return stmt.select_from(Patient)
    if level == Level.STUDY:
        return stmt.select_from(Study).join(Patient, Study.patient_pk == Patient.id)
    if level == Level.SERIES:
        return (stmt.select_from(Series).join(Study, Series.study_pk == Study.id)
                .join(Patient, Study.patient_pk == Patient.id))
    return (stmt.select_from(Instance)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id))


_ORDER = {Level.PATIENT: Patient.id, Level.STUDY: Study.id, Level.SERIES: Series.id,
          Level.IMAGE: Instance.id}


def _format(attr_vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if attr_vr == "TM" and isinstance(value, str) and value.endswith(".000000"):
        return value[:-7]
    return value


@dataclass
class QueryService:
    engine: Engine

    def search(self, caller: Caller, request: QueryRequest) -> Iterator[Match]:
        """Matches of ``request`` in a stable order (rows created first come first)."""
        keys = self._return_keys(request)
        stmt = self._statement(request, keys)
        log.debug("query %s by %s: %s", request.level.name, caller, sorted(request.filters))
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
                computed = self._computed(conn, request.level, keys, rows)
        except SQLAlchemyError as exc:
            raise StorageUnavailable(f"index unavailable: {type(exc).__name__}") from exc
        for row in rows:
            yield self._match(row, request.level, keys, computed)

    def _statement(self, request: QueryRequest, keys: list[str]) -> Select[Any]:
        stmt = _base(request.level, keys)
        for keyword, value in request.filters.items():
            attr = ATTRIBUTES.get(keyword)
            if attr is None or attr.level > request.level or value is None:
                continue
            if keyword == "ModalitiesInStudy":
                cond = condition("Modality", "CS", Series.modality, str(value))
                if cond is not None:
                    stmt = stmt.where(exists().where(Series.study_pk == Study.id, cond))
                continue
            if attr.column is None:
                continue  # other computed keys are return-only
            cond = condition(keyword, attr.vr, attr.column, str(value), attr.folded)
            if cond is not None:
                stmt = stmt.where(cond)
        stmt = stmt.order_by(_ORDER[request.level])
        if request.limit is not None:
            if request.limit < 0 or request.limit > MAX_LIMIT:
                raise InvalidInput(f"limit must be between 0 and {MAX_LIMIT}")
            stmt = stmt.limit(request.limit)
        if request.offset:
            if request.offset < 0:
                raise InvalidInput("offset must not be negative")
            stmt = stmt.offset(request.offset)
        return stmt

    @staticmethod
    def _return_keys(request: QueryRequest) -> list[str]:
        keys = list(request.return_keys) or list(DEFAULT_KEYS[request.level])
        for keyword in request.filters:
            if keyword not in keys:
                keys.append(keyword)
        for level in Level:
            if level <= request.level and UNIQUE_KEYS[level] not in keys and level > Level.PATIENT:
                keys.append(UNIQUE_KEYS[level])
        return keys

    def _computed(self, conn: Any, level: Level, keys: list[str], rows: Sequence[Any]) -> dict[str, dict[int, Any]]:
        """Values of computed keys, fetched in one query per key for all rows."""
        out: dict[str, dict[int, Any]] = {}
        if not rows:
            return out
        if "ModalitiesInStudy" in keys and level >= Level.STUDY:
            study_ids = {row._mapping["_study_pk"] for row in rows}
            mods: dict[int, list[str]] = {}
            for study_pk, modality in conn.execute(
                select(Series.study_pk, Series.modality).distinct()
                .where(Series.study_pk.in_(study_ids)).order_by(Series.study_pk, Series.modality)
            ):
                if modality:
                    mods.setdefault(study_pk, []).append(modality)
            out["ModalitiesInStudy"] = mods
        patient_keys = [k for k in ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                                    "NumberOfPatientRelatedInstances") if k in keys]
        if patient_keys:
            patient_ids = {row._mapping["_patient_pk"] for row in rows}
            counts = conn.execute(
                select(Study.patient_pk, func.count(Study.id), func.sum(Study.num_series),
                       func.sum(Study.num_instances))
                .where(Study.patient_pk.in_(patient_ids)).group_by(Study.patient_pk)
            ).all()
            for index, key in enumerate(("NumberOfPatientRelatedStudies",
                                         "NumberOfPatientRelatedSeries",
                                         "NumberOfPatientRelatedInstances"), start=1):
                out[key] = {c[0]: int(c[index] or 0) for c in counts}
        return out

    def _match(self, row: Any, level: Level, keys: list[str], computed: dict[str, dict[int, Any]]) -> Match:
        values = row._mapping
        match: Match = {}
        for keyword in keys:
            attr = ATTRIBUTES.get(keyword)
            if attr is None or attr.level > level:
                match[keyword] = None
            elif keyword in computed:
                owner = values["_study_pk"] if keyword == "ModalitiesInStudy" else values["_patient_pk"]
                match[keyword] = computed[keyword].get(owner) or None
            elif attr.column is None:
                match[keyword] = None
            else:
                match[keyword] = _format(attr.vr, values[keyword])
        return match
