"""Schema migrations: a fresh database reaches head, PostgreSQL gets its search indexes,
and a database behind the code is refused with a clear message."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from pacs.config import Settings
from pacs.errors import ConfigError
from pacs.index.db import current_revision, ensure_schema, head_revision, make_engine, upgrade


def test_fresh_database_reaches_head(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    ensure_schema(engine, auto_upgrade=False)
    assert current_revision(engine) == head_revision()
    assert {"patients", "studies", "series", "instances"} <= set(inspect(engine).get_table_names())
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            names = set(conn.execute(text("SELECT indexname FROM pg_indexes")).scalars())
        assert {"ix_patients_name_trgm", "ix_patients_name_prefix"} <= names
    engine.dispose()


def test_schema_behind_is_refused_unless_upgraded(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    upgrade(engine, "0001")
    with pytest.raises(ConfigError, match="pacs db upgrade"):
        ensure_schema(engine, auto_upgrade=False)
    ensure_schema(engine, auto_upgrade=True)
    assert current_revision(engine) == head_revision()
    engine.dispose()
