"""The one retrieve path behind C-MOVE, C-GET and WADO.

:meth:`RetrieveService.find_instances` resolves the unique keys of a retrieve request
(PS3.4 C.4.2.1.4 / C.4.3.1.4: PatientID, StudyInstanceUID, SeriesInstanceUID and
SOPInstanceUID, the UIDs possibly as lists) to stored instances; :meth:`read` returns the
object exactly as it was received, :meth:`stream` the same in chunks. :class:`ReadAhead`
opens the objects of a many-object retrieve ahead of their sending.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, Select, bindparam, select
from sqlalchemy.exc import SQLAlchemyError

import storage
from pacs.context import Caller
from pacs.errors import InvalidInput, NotFound, StorageUnavailable
from pacs.index.attributes import Level
from pacs.index.db import RawStatement
from pacs.index.matching import condition
from pacs.index.models import Instance, Patient, Series, Study

log = logging.getLogger(__name__)
READ_AHEAD = 4  # objects of a retrieve opened ahead of their sending (each one's first chunk read)
T = TypeVar("T")

_RETRIEVE_KEYS: tuple[tuple[str, Level, Any], ...] = (
    ("PatientID", Level.PATIENT, Patient.patient_id),
    ("StudyInstanceUID", Level.STUDY, Study.study_uid),
    ("SeriesInstanceUID", Level.SERIES, Series.series_uid),
    ("SOPInstanceUID", Level.IMAGE, Instance.sop_instance_uid),
)


@dataclass(frozen=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    pixel_data_offset: int | None
    pixel_data_length: int | None
    number_of_frames: int
    bits_allocated: int | None = None


_PLAIN_UID = re.compile(r"[0-9][0-9.]{0,63}")


def _select() -> Select[Any]:
    return (select(Instance.sop_class_uid, Instance.sop_instance_uid, Series.series_uid,
                   Study.study_uid, Instance.transfer_syntax_uid, Instance.storage_key,
                   Instance.size, Instance.pixel_data_offset, Instance.pixel_data_length,
                   Instance.number_of_frames, Instance.bits_allocated)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id))


def _ordered(stmt: Select[Any]) -> Select[Any]:
    return stmt.order_by(Study.id, Series.series_number, Series.id,
                         Instance.instance_number, Instance.id)


def _exact_uids(level: Level, keys: dict[str, str]) -> dict[str, str] | None:
    """The keys as ``{keyword: uid}`` when every one that applies at ``level`` is one plain
    UID (no list, no PatientID), so that equality is all :func:`condition` would make of them;
    None otherwise."""
    found: dict[str, str] = {}
    for keyword, key_level, _ in _RETRIEVE_KEYS:
        value = (keys.get(keyword) or "").strip()
        if key_level > level or not value:
            continue
        if keyword == "PatientID" or not _PLAIN_UID.fullmatch(value):
            return None
        found[keyword] = value
    return found or None


@functools.cache
def _exact_statement(keywords: tuple[str, ...]) -> Select[Any]:
    """Built once per key combination with bound parameters: a statement built per request
    cost ~0.4 ms of SQLAlchemy work (construction, cache key, result adaptation), most of
    the time of a cached rendered image."""
    stmt = _select()
    for keyword, _, column in _RETRIEVE_KEYS:
        if keyword in keywords:
            stmt = stmt.where(column == bindparam(keyword))
    return _ordered(stmt)


@functools.cache
def _raw_exact_statement(keywords: tuple[str, ...], dialect: Any) -> RawStatement:
    return RawStatement.of(_exact_statement(keywords), dialect)


def _statement(level: Level, keys: dict[str, str]) -> Select[Any]:
    stmt = _select()
    constrained = False
    for keyword, key_level, column in _RETRIEVE_KEYS:
        value = (keys.get(keyword) or "").strip()
        if key_level > level or not value:
            continue
        vr = "LO" if keyword == "PatientID" else "UI"
        if vr == "LO" and ("*" in value or "?" in value):
            raise InvalidInput("PatientID must not contain wildcards in a retrieve")
        cond = condition(keyword, vr, column, value)
        if cond is not None:
            stmt = stmt.where(cond)
            constrained = True
    if not constrained:
        raise InvalidInput(f"a {level.name} retrieve needs its unique key(s)")
    return _ordered(stmt)


@dataclass
class RetrieveService:
    engine: Engine
    store: storage.ObjectStore

    @property
    def read_ahead(self) -> int:
        """How many objects a many-object retrieve opens ahead (:class:`ReadAhead`): none
        from a local folder, where a read costs less than handing it to another thread
        (a 100-slice C-MOVE measured 5-10 % slower with it), :data:`READ_AHEAD` from a
        remote store (S3: a GET of a few milliseconds each; 20-30 % faster)."""
        return 0 if isinstance(self.store, storage.FolderStore) else READ_AHEAD

    def find_instances(self, caller: Caller, level: Level, keys: dict[str, str]) -> list[StoredInstance]:
        """Instances selected by the unique keys at and above ``level``."""
        exact = _exact_uids(level, keys)
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            if exact is not None:  # one instance, series or study by UID: WADO's every request
                rows = self._exact_rows(exact)
            else:
                with self.engine.connect() as conn:
                    rows = conn.execute(_statement(level, keys)).all()
        except (SQLAlchemyError, dbapi_error) as exc:
            raise StorageUnavailable(f"index unavailable: {type(exc).__name__}") from exc
        log.info("retrieve %s by %s: %d instance(s)", level.name, caller, len(rows))
        return [StoredInstance(*row) for row in rows]

    def _exact_rows(self, uids: dict[str, str]) -> list[Any]:
        """Rows of :func:`_exact_statement` on the DBAPI cursor: SQLAlchemy's connection and
        result handling took ~0.3 ms of a ~0.4 ms lookup, a tenth of a cold thumbnail."""
        statement = _raw_exact_statement(tuple(uids), self.engine.dialect)
        connection = self.engine.raw_connection()  # the pool's checkout (and ping) as usual
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(statement.sql, statement.params(dict(uids)))
                return list(cursor.fetchall())
            finally:
                cursor.close()
        finally:
            connection.close()  # back to the pool, which rolls back what a SELECT began

    def read_range(self, instance: StoredInstance, offset: int, length: int) -> bytes:
        """``length`` bytes of the stored object from ``offset`` (a frame, without the rest)."""
        try:
            return self.store.get_range(instance.storage_key, offset, length)
        except storage.ObjectNotFound as exc:
            raise NotFound(f"object of {instance.sop_instance_uid} missing from storage") from exc
        except storage.StorageError as exc:
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc

    def instance(self, caller: Caller, sop_instance_uid: str) -> StoredInstance:
        found = self.find_instances(caller, Level.IMAGE, {"SOPInstanceUID": sop_instance_uid})
        if not found:
            raise NotFound(f"instance {sop_instance_uid} not found")
        return found[0]

    def read(self, instance: StoredInstance) -> bytes:
        """The object's Part 10 bytes, exactly as stored (whole in memory: for small objects
        and decoding; :meth:`stream` for sending it on)."""
        return b"".join(self.stream(instance))

    def stream(self, instance: StoredInstance, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's Part 10 bytes exactly as stored, in chunks, never whole in memory.

        The first chunk is fetched here, so a missing object raises :class:`NotFound` before
        anything is sent. With an eventually consistent store (S3 behind another node's
        spool) an object that node just acknowledged may not have landed yet: wait for it a
        little. A storage failure later on raises :class:`StorageUnavailable` mid-stream."""
        waits = [0.1, 0.2, 0.5, 1.0, 2.0, 2.0, 4.0] if getattr(
            self.store, "eventually_consistent", False) else []
        try:
            for delay in [*waits, None]:
                chunks = self.store.iter_chunks(instance.storage_key, chunk_size)
                try:
                    first = next(chunks, b"")
                    break
                except storage.ObjectNotFound:
                    if delay is None:
                        raise
                    time.sleep(delay)
        except storage.ObjectNotFound as exc:
            log.error("object %s of %s is missing from storage", instance.storage_key,
                      instance.sop_instance_uid)
            raise NotFound(f"object of {instance.sop_instance_uid} missing from storage") from exc
        except storage.StorageError as exc:
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc
        return self._rest(instance, first, chunks)

    @staticmethod
    def _rest(instance: StoredInstance, first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            if first:
                yield first
            yield from chunks
        except storage.StorageError as exc:
            log.error("reading %s of %s failed: %s", instance.storage_key,
                      instance.sop_instance_uid, exc)
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


def close_stream(stream: object) -> None:
    """Close a stream of :meth:`RetrieveService.stream` that will not be read to its end:
    its file or HTTP response is released now."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


class ReadAhead(Generic[T]):
    """Opens the objects of a retrieve ahead of their sending (the C-STORE sub-operations of
    C-MOVE and C-GET, the parts of a WADO-RS series or study): called for one object, it
    returns that object opened (by ``opener``, e.g. :meth:`RetrieveService.stream`) and has
    the next ``depth`` in the list opened on worker threads meanwhile, each one's first chunk
    read (a whole CT slice). Storage reads, an S3 GET of a few milliseconds each, then
    overlap the sending and the peer's responses instead of coming between them. Objects are
    asked for in list order; one asked for out of order, or from elsewhere, is opened at
    once, and those skipped over are closed. :meth:`close` drops what was read ahead when the
    retrieve ends early (cancelled, failed, connection lost). An error opening an object
    (missing from storage...) is raised by the call asking for it, as if it were opened
    then. ``close`` releases one opened object that will not be sent (default:
    :func:`close_stream`)."""

    _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="read-ahead")

    def __init__(self, opener: Callable[[StoredInstance], T], instances: list[StoredInstance],
                 depth: int = READ_AHEAD, close: Callable[[T], None] = close_stream) -> None:
        self._opener = opener
        self._instances = instances
        self._depth = depth
        self._close_one = close
        self._position = {id(inst): n for n, inst in enumerate(instances)}
        self._ahead: dict[int, Future[T]] = {}  # by position in the list
        self._lock = threading.Lock()

    def __call__(self, instance: StoredInstance) -> T:
        position = self._position.get(id(instance))
        if position is None:
            return self._opener(instance)
        with self._lock:
            opened = self._ahead.pop(position, None)
            skipped = [self._ahead.pop(n) for n in list(self._ahead) if n < position]
            for following in range(position + 1, min(position + 1 + self._depth,
                                                      len(self._instances))):
                if following not in self._ahead:
                    self._ahead[following] = self._pool.submit(
                        self._opener, self._instances[following])
        for other in skipped:
            self._drop(other)
        if opened is None:
            return self._opener(instance)
        return opened.result()

    def close(self) -> None:
        with self._lock:
            ahead, self._ahead = list(self._ahead.values()), {}
        for opened in ahead:
            self._drop(opened)

    def _drop(self, opened: Future[T]) -> None:
        try:
            result = opened.result()
        except Exception:  # noqa: BLE001 - it failed to open: nothing to close
            return
        self._close_one(result)
