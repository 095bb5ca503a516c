"""PostgreSQL search indexes: trigram (pg_trgm) GIN indexes for wildcard name search and
pattern-ops b-tree indexes for prefix LIKE, on the diacritic-folded name columns.

SQLite needs none of these (its LIKE uses the plain indexes with case_sensitive_like on).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TRGM = (
    ("ix_patients_name_trgm", "patients", "patient_name_folded"),
    ("ix_patients_id_trgm", "patients", "patient_id"),
    ("ix_studies_description_trgm", "studies", "study_description"),
    ("ix_studies_referring_trgm", "studies", "referring_physician_folded"),
)
_PATTERN = (
    ("ix_patients_name_prefix", "patients", "patient_name_folded"),
    ("ix_patients_id_prefix", "patients", "patient_id"),
    ("ix_studies_accession_prefix", "studies", "accession_number"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, table, column in _TRGM:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({column} gin_trgm_ops)")
    for name, table, column in _PATTERN:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({column} varchar_pattern_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _, _ in _TRGM + _PATTERN:
        op.execute(f"DROP INDEX IF EXISTS {name}")
