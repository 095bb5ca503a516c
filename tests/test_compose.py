"""docker-compose.yml is valid (Debian's docker-compose validates it; no engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"POSTGRES_PASSWORD": "pw", "MINIO_ROOT_USER": "user", "MINIO_ROOT_PASSWORD": "secret123"}


def _compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose missing: `make test` installs it (Debian docker-compose)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_compose_valid_with_secrets() -> None:
    result = _compose(SECRETS)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"postgres", "minio", "archive"} <= set(services)
    for name in ("postgres", "minio"):
        assert "healthcheck" in services[name]
    env = services["archive"]["environment"]
    assert env["PACS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["PACS_STORAGE_URL"].startswith("s3://")
    assert services["archive"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_refuses_missing_secrets() -> None:
    result = _compose({})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "MINIO_ROOT" in result.stderr
