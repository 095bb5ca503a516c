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
    monkeypatch.setattr(header, "_DECODE_RAW", False)
    slow, _ = header.parse_header_file(io.BytesIO(data), len(data))  # pydicom alone
    assert fast == slow


def test_raw_text_declines_what_it_cannot_decode_alike() -> None:
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO 2022 IR 87"
    ds.PatientName = "Yamada^Tarou"
    assert header._Values(ds).codec is None  # code extensions: pydicom decodes


def _generated(implicit: bool = False, sequences: bool = False) -> bytes:
    ds = next(iter(generate_bulk(11, 1, 1, rows=16, cols=16)))
    if sequences:  # undefined lengths everywhere, nested, before the wanted elements end
        inner = pydicom.Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator = "T-D1100", "SRT"
        outer = pydicom.Dataset()
        outer.CodeValue = "X"
        outer.PurposeOfReferenceCodeSequence = pydicom.Sequence([inner])
        ds.ProcedureCodeSequence = pydicom.Sequence([outer, inner])
        ds.ProcedureCodeSequence.is_undefined_length = True
        for item in (outer, inner):
            item.is_undefined_length_sequence_item = True
        ds.add_new(0x00091010, "LO", "ACME")  # a private block, then a private sequence
        ds.add_new(0x00091011, "SQ", pydicom.Sequence([inner]))
        ds[0x00091011].is_undefined_length = True
    buf = io.BytesIO()
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit)
    return buf.getvalue()


@pytest.mark.parametrize(("implicit", "sequences"),
                         [(False, False), (True, False), (False, True), (True, True)])
def test_common_encodings_take_the_fast_scan(implicit: bool, sequences: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = _generated(implicit, sequences)
    fast = header._parse_header_fast(data)
    assert fast is not None  # read by _scan, not handed to pydicom
    monkeypatch.setattr(header, "_DECODE_RAW", False)
    assert fast[0] == header.parse_header_file(io.BytesIO(data), len(data))[0]
    assert fast[0].pixel_data_offset is not None and fast[0].rows == 16


def test_truncated_pixel_data_refused_by_the_fast_scan_too() -> None:
    data = _generated()
    assert header._parse_header_fast(data) is not None
    with pytest.raises(InvalidInput, match="truncated"):
        header.parse_header(data[:-100])


def test_what_the_scan_does_not_expect_goes_to_pydicom() -> None:
    data = _generated()
    start = header.dataset_offset(data)
    implicit = _generated(implicit=True)
    # explicit VR announced, implicit VR data (mislabelled files exist): pydicom guesses
    mislabelled = data[:start] + implicit[header.dataset_offset(implicit):]
    assert header._parse_header_fast(mislabelled) is None
    assert header.parse_header(mislabelled)[0].rows == 16
    big_endian = data[:start].replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00")
    assert big_endian != data[:start]
    assert header._parse_header_fast(big_endian + data[start:]) is None
