"""Settings from the environment (``pacs.config``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs.config import ConfigError, load_settings


def test_s3_upload_defer_is_seconds_off_by_default(tmp_path: Path) -> None:
    base = {"PACS_DATA_DIR": str(tmp_path)}
    assert load_settings(base).s3_upload_defer == 0.0
    assert load_settings({**base, "PACS_S3_UPLOAD_DEFER": "30"}).s3_upload_defer == 30.0
    assert load_settings({**base, "PACS_S3_UPLOAD_DEFER": "2.5"}).s3_upload_defer == 2.5
    for bad in ("-1", "soon"):
        with pytest.raises(ConfigError, match="PACS_S3_UPLOAD_DEFER"):
            load_settings({**base, "PACS_S3_UPLOAD_DEFER": bad})
