"""Engine creation and schema versioning (Alembic migrations in ``pacs/index/migrations``).

One engine per process. SQLite runs in WAL mode with a busy timeout, and write transactions
start with ``BEGIN IMMEDIATE`` so several archive processes sharing one file serialise their
writes instead of failing on lock upgrades.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

from pacs.errors import ConfigError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
WRITE_OPTION = "pacs_write"
SCHEMA_LOCK = 0x5041435301  # pg_advisory_lock key of schema creation/upgrade


def make_engine(url: str) -> Engine:
    """The process's engine for ``url`` (SQLite file, created with its folder, or PostgreSQL)."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"PACS_DATABASE_URL is not a valid SQLAlchemy URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                               pool_size=20, max_overflow=20)
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True,
                               connect_args={"connect_timeout": 5})
        _add_unpinged(engine)
        return engine
    raise ConfigError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or "
                      "postgresql+psycopg")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# pool of an engine -> an engine on the same database whose checkouts are not pre-pinged
_UNPINGED: weakref.WeakKeyDictionary[Any, Engine] = weakref.WeakKeyDictionary()


def _add_unpinged(engine: Engine) -> None:
    """A small second pool without the pre-ping (a ``SELECT 1`` round trip per checkout)
    for the index's fast write path, which goes down the full path (on ``engine``, pinged)
    whenever its statement fails, a lost connection included; disposed with ``engine``."""
    unpinged = create_engine(engine.url, pool_size=2, max_overflow=8, pool_pre_ping=False,
                             connect_args={"connect_timeout": 5})
    _UNPINGED[engine.pool] = unpinged

    @event.listens_for(engine, "engine_disposed")
    def _on_dispose(_engine: Any) -> None:
        unpinged.dispose()


def unpinged(engine: Engine) -> Engine:
    """``engine`` or, on PostgreSQL, its pool without pre-ping (see :func:`_add_unpinged`)."""
    return _UNPINGED.get(engine.pool, engine)


def writer(engine: Engine) -> Engine:
    """The engine to open write transactions with (``BEGIN IMMEDIATE`` on SQLite); made once
    per engine and kept on it (making one costs ~50 µs, and every store asks)."""
    found: Engine | None = engine.__dict__.get("_pacs_writer")
    if found is None:
        found = engine.execution_options(**{WRITE_OPTION: True})
        engine.__dict__["_pacs_writer"] = found
    return found


@contextlib.contextmanager
def write_lock(engine: Engine) -> Iterator[None]:
    """Serialise the archive's index write transactions across processes (SQLite files).

    SQLite lets a second writer wait in its busy handler, which sleeps 1, 2, 5, 10 … ms
    between attempts, so with several DICOM processes most of a writer's wait is oversleep.
    Writers holding this ``flock`` on ``<index>-writelock`` are woken by the kernel as soon
    as the previous one releases it. Other writers still work without it (the busy timeout
    applies as before); it is a queue, not a correctness requirement. A no-op elsewhere.
    """
    path = _lock_path(engine)
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_path(engine: Engine) -> str | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{database}-writelock"


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    script = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://")))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (``pacs db upgrade``)."""
    command.upgrade(_alembic_config(engine), revision)


def ensure_schema(engine: Engine, *, auto_upgrade: bool) -> None:
    """Create the schema on an empty database; check it is current otherwise.

    A database behind the code is upgraded when ``auto_upgrade`` (the embedded default) and
    refused with a clear message otherwise (run ``pacs db upgrade``).
    """
    if engine.dialect.name == "postgresql":
        # several nodes starting together on an empty database: one creates the schema
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK})
            try:
                _ensure(engine, auto_upgrade)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK})
                conn.commit()
        return
    _ensure(engine, auto_upgrade)


def _ensure(engine: Engine, auto_upgrade: bool) -> None:
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    fresh = current is None and not inspect(engine).get_table_names()
    if fresh or auto_upgrade:
        log.info("database schema %s -> %s", current or "(empty)", head)
        upgrade(engine)
        return
    raise ConfigError(
        f"the index schema is at revision {current or '(none)'} but this version needs {head}: "
        "run `pacs db upgrade` (back up the database first)"
    )


@dataclass(frozen=True)
class RawStatement:
    """A statement compiled once for a dialect, run on the DBAPI cursor: SQLAlchemy's
    per-execution work (connection events, compiled cache lookup, result adaptation) costs
    more than SQLite's execution of a small indexed statement. Only for statements whose
    columns need no result processing (strings and integers)."""

    sql: str
    names: tuple[str, ...] | None  # parameter order of a positional paramstyle, else None
    processors: dict[str, Any]

    @classmethod
    def of(cls, statement: Any, dialect: Any) -> RawStatement:
        compiled = statement.compile(dialect=dialect)
        names = tuple(compiled.positiontup) if compiled.positional else None
        return cls(str(compiled), names, dict(compiled._bind_processors))

    def params(self, values: dict[str, Any]) -> Any:
        for name, process in self.processors.items():
            if name in values:
                values[name] = process(values[name])
        if self.names is None:
            return values
        return tuple(values[name] for name in self.names)
