"""Archives filled once per test module and backend pair, for tests that only query.

A query changes nothing, so a module builds one archive on each backend pair (the embedded
SQLite + folder default, and PostgreSQL + S3 on the servers that ``tests.infra`` starts) and
runs all its queries against it. Each gets a fresh database and bucket, removed afterwards.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pacs.config import Settings
from pacs.services import Services, build_services
from tests.infra import PostgresServer, SeaweedServer

BACKENDS = ("embedded", "production")


@contextlib.contextmanager
def backend_services(request: pytest.FixtureRequest, workdir: Path,
                     backend: str) -> Iterator[Services]:
    """Services on a fresh, empty archive of ``backend``; the database and bucket go after."""
    settings = Settings(data_dir=workdir / "pacs-data", dicom_host="127.0.0.1", dicom_port=0,
                        ae_title="MINIPACS")
    if backend == "embedded":
        services = build_services(settings)
        try:
            yield services
        finally:
            services.close()
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    seaweed: SeaweedServer = request.getfixturevalue("seaweedfs")
    url = postgres.create_database()
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    services = build_services(replace(
        settings, database_url=url, storage_url=f"s3://{bucket}", s3_endpoint=seaweed.endpoint,
        s3_access_key=seaweed.access_key, s3_secret_key=seaweed.secret_key, s3_secure=False))
    try:
        yield services
    finally:
        services.close()
        postgres.drop_database(url.rsplit("/", 1)[1])
        with contextlib.suppress(Exception):  # removing a bucket removes its content
            seaweed.client().remove_bucket(bucket)
