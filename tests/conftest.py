"""Shared fixtures: archives on both backend pairs, a running DICOM service, test files.

``backend`` is parametrised over the embedded default (SQLite + folder) and the production
pair (PostgreSQL + SeaweedFS S3, started by ``tests.infra`` on 127.0.0.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from dicom_scp.server import DicomService
from pacs.config import Settings
from pacs.services import Services, build_services

pytest_plugins = ["tests.infra"]

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def testdata(name: str) -> Path:
    """A file bundled with pydicom (never downloads)."""
    path = TEST_FILES / name
    assert path.is_file(), f"pydicom test file {name} missing"
    return path


testdata.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def staged_leftovers(store: object) -> list[Path]:
    """Hidden temporary files (objects written as they arrived, never committed) left in a
    folder store (or in the spool in front of S3, which does not stage today)."""
    root = getattr(getattr(store, "spool", store), "root", None)
    return sorted(root.rglob(".tmp-*")) if isinstance(root, Path) and root.exists() else []


@pytest.fixture(params=["embedded", "production"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for a fresh, empty archive on the selected backend pair."""
    base = Settings(data_dir=tmp_path / "pacs-data", dicom_host="127.0.0.1", dicom_port=0,
                    ae_title="MINIPACS")
    if backend == "embedded":
        return base
    pg_url = request.getfixturevalue("postgres_url")
    seaweed = request.getfixturevalue("seaweedfs")
    bucket = request.getfixturevalue("s3_bucket")
    return replace(base, database_url=pg_url, storage_url=f"s3://{bucket}",
                   s3_endpoint=seaweed.endpoint, s3_access_key=seaweed.access_key,
                   s3_secret_key=seaweed.secret_key, s3_secure=False)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = build_services(settings)
    yield svc
    svc.close()


class RunningArchive:
    """An archive whose DICOM service runs in this process on an ephemeral port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Services | None = None
        self.service: DicomService | None = None
        self.start()

    def start(self) -> None:
        self.services = build_services(self.settings)
        self.service = DicomService(self.services)
        self.service.start()
        # keep the port across restarts
        self.settings = replace(self.settings, dicom_port=self.service.port)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
        if self.services is not None:
            self.services.close()
            self.services = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def port(self) -> int:
        return self.settings.dicom_port

    @property
    def svc(self) -> Services:
        assert self.services is not None
        return self.services


@pytest.fixture
def make_archive(settings: Settings) -> Iterator[Callable[..., RunningArchive]]:
    started: list[RunningArchive] = []

    def make(**changes: object) -> RunningArchive:
        archive = RunningArchive(replace(settings, **changes))  # type: ignore[arg-type]
        started.append(archive)
        return archive

    yield make
    for archive in started:
        archive.stop()


@pytest.fixture
def archive(make_archive: Callable[..., RunningArchive]) -> RunningArchive:
    return make_archive()


@pytest.fixture
def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: TCP_NODELAY on (Debian's 3.6.7 leaves Nagle on)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env
