"""The header values decoded straight from raw elements equal pydicom's decoding, on every
readable file bundled with pydicom and on generated Vietnamese studies."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from pacs.demo import generate_bulk
from pacs.dicom import header
from pacs.errors import InvalidInput


def _objects() -> list[tuple[str, bytes]]:
    found = []
    for path in get_testdata_files("*.dcm"):
        data = Path(path).read_bytes()
        if data[128:132] == b"DICM":
            found.append((Path(path).name, data))
    for i, ds in enumerate(generate_bulk(7, 2, 2, rows=16, cols=16)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        found.append((f"generated-{i}", buf.getvalue()))
    return found


@pytest.mark.parametrize(("name", "data"), _objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_fast_values_equal_pydicom(name: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        fast, _ = header.parse_header(data)
    except InvalidInput:
        pytest.skip(f"{name}: not an archivable object")
    monkeypatch.setattr(header, "_raw_text", lambda ds, keyword: None)
    slow, _ = header.parse_header(data)
    assert fast == slow


def test_raw_text_declines_what_it_cannot_decode_alike() -> None:
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO 2022 IR 87"
    ds.PatientName = "Yamada^Tarou"
    assert header._raw_text(ds, "PatientName") is None  # code extensions: pydicom decodes
