"""Generated docs agree with the code; every setting is documented."""

from __future__ import annotations

from dataclasses import fields

from pacs.config import SETTINGS_DOCS, Settings
from scripts.gen_docs import generated


def test_generated_docs_are_current() -> None:
    for path, text in generated().items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run `make docs`"


def test_every_setting_documented() -> None:
    documented = {s.env for s in SETTINGS_DOCS}
    for f in fields(Settings):
        assert f"PACS_{f.name.upper()}" in documented, f.name
