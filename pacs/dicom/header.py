"""Header parsing for ingest: one ``dcmread(stop_before_pixels=True)`` and nothing else.

:func:`parse_header` turns the bytes of a DICOM Part 10 file (PS3.10 7.1) into an
:class:`InstanceHeader`: the attributes the index needs plus where the pixel data sits, so a
frame can later be a ranged read. :func:`part10_bytes` wraps a dataset received over DIMSE
with a File Meta Information header without touching the dataset bytes
(:func:`file_meta_bytes` writes the header alone, so the data set can follow as a stream).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from pacs.dicom.names import fold
from pacs.dicom.uids import clean_uid, is_valid_uid
from pacs.errors import InvalidInput

IMPLEMENTATION_VERSION = "MINIPACS_010"
_PREAMBLE = b"\x00" * 128 + b"DICM"
_META_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_META_LONG = struct.Struct("<HH2s2xI")  # OB/OW/UN/SQ...: reserved, 32-bit length
_IMPLEMENTATION_UID = str(PYDICOM_IMPLEMENTATION_UID).encode("ascii")
_IMPLEMENTATION_NAME = IMPLEMENTATION_VERSION.encode("ascii")
_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_PIXEL_TAG_BE = b"\x7f\xe0\x00\x10"
_SEQ_DELIM_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF
_TAIL = 4096  # where an encapsulated Pixel Data's sequence delimiter must be
META_PREFIX = 144  # preamble, DICM and the group length element: enough for dataset_offset


@dataclass(frozen=True)
class InstanceHeader:
    """What the index keeps about one instance, read from its header."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    modality: str
    series_number: int | None
    series_description: str
    series_date: str
    series_time: str
    body_part_examined: str
    instance_number: int | None
    content_date: str
    content_time: str
    rows: int | None
    columns: int | None
    number_of_frames: int
    bits_allocated: int | None
    photometric_interpretation: str
    pixel_data_offset: int | None
    pixel_data_length: int | None
    specific_character_set: str

    @property
    def patient_name_folded(self) -> str:
        return fold(self.patient_name)

    @property
    def referring_physician_folded(self) -> str:
        return fold(self.referring_physician_name)


def _text(ds: Dataset, keyword: str) -> str:
    raw = _raw_text(ds, keyword)
    if raw is not None:
        return raw
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    # NUL is padding for UIDs and invalid inside text (PS3.5 6.2); PostgreSQL refuses it
    return text.replace("\x00", "").strip()


# Character sets whose text decodes with one Python codec and no code extensions, so that a
# raw value decodes to what pydicom would give (values joined by backslashes)
_SIMPLE_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1",
                    "ISO_IR 192": "utf-8"}
_TAGS: dict[str, int] = {}


def _raw_text(ds: Dataset, keyword: str) -> str | None:
    """The text of ``keyword`` decoded straight from the still-undecoded element, as pydicom
    would decode it; None when that is not certain (other character sets, an element pydicom
    has already converted, a value that does not decode): then pydicom decodes it.
    pydicom's element conversion was most of the header parse."""
    codec = _SIMPLE_CHARSETS.get(_charset(ds))
    if codec is None:
        return None
    elem = ds._dict.get(_tag(keyword))  # type: ignore[arg-type]
    if elem is None:
        return ""
    if not isinstance(elem, pydicom.dataelem.RawDataElement) or elem.value is None:
        return None
    try:
        text = bytes(elem.value).decode(codec)
    except UnicodeDecodeError:
        return None  # pydicom replaces or falls back per its settings
    return text.replace("\x00", "").strip()


def _charset(ds: Dataset) -> str:
    elem = ds._dict.get(0x00080005)  # type: ignore[arg-type]
    if elem is None:
        return ""
    if isinstance(elem, pydicom.dataelem.RawDataElement):
        return bytes(elem.value or b"").decode("ascii", "replace").strip(" \x00")
    value = elem.value
    return "\\".join(value) if isinstance(value, pydicom.multival.MultiValue) else str(value or "")


def _int(ds: Dataset, keyword: str) -> int | None:
    if pydicom.datadict.dictionary_VR(_tag(keyword)) == "IS":
        raw = _raw_text(ds, keyword)
        if raw == "":
            return None
        if raw is not None and raw.isdigit():
            return int(raw)
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _tag(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = int(pydicom.datadict.tag_for_keyword(keyword) or 0)
    return tag


def _pixel_location(head: bytes, pos: int, total: int, tail: bytes, little: bool,
                    implicit: bool) -> tuple[int | None, int | None]:
    """Offset and length of the Pixel Data value starting at ``pos`` (None, None when absent).

    ``head`` holds the (at least 12) bytes of the object from ``pos``, ``tail`` its last bytes
    and ``total`` its length, so the object itself never needs to be in memory. A length of
    None means encapsulated (undefined length). Raises InvalidInput when the pixel data is
    truncated.
    """
    tag = head[:4]
    if tag != (_PIXEL_TAG_LE if little else _PIXEL_TAG_BE):
        return None, None
    endian = "<" if little else ">"
    if not implicit and not head[4:6].isalpha():
        implicit = True  # mislabelled files: the element is in fact implicit VR
    if implicit:
        (length,) = struct.unpack(endian + "I", head[4:8])
        value_offset = pos + 8
    else:
        (length,) = struct.unpack(endian + "I", head[8:12])
        value_offset = pos + 12
    if length == _UNDEFINED:
        if _SEQ_DELIM_LE not in tail:
            raise InvalidInput("truncated data: encapsulated Pixel Data has no sequence delimiter")
        return value_offset, None
    if value_offset + length > total:
        raise InvalidInput(
            f"truncated data: Pixel Data needs {length} bytes, {total - value_offset} present"
        )
    return value_offset, length


def parse_header(raw: bytes) -> tuple[InstanceHeader, Dataset]:
    """Parse a Part 10 file's header. Raises :class:`InvalidInput` on anything unusable."""
    return parse_header_file(io.BytesIO(raw), len(raw))


def parse_header_file(fp: BinaryIO, total: int) -> tuple[InstanceHeader, Dataset]:
    """:func:`parse_header` of a seekable Part 10 stream of ``total`` bytes, starting at its
    current position (returned there): only the header and the last 4 KiB are read, so a
    1 GB object never sits whole in memory."""
    start = fp.tell()
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        pos = fp.tell() - start
        head = fp.read(12)
        fp.seek(start + max(total - _TAIL, 0))
        tail = fp.read(_TAIL)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError,
            struct.error, NotImplementedError, OverflowError, AttributeError) as exc:
        raise InvalidInput(f"unreadable DICOM data: {exc}") from None
    finally:
        fp.seek(start)
    meta = getattr(ds, "file_meta", None)
    ts = clean_uid(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not is_valid_uid(ts):
        raise InvalidInput("missing or invalid Transfer Syntax UID in the file meta")
    try:
        uids = {kw: clean_uid(ds.get(kw, "")) for kw in
                ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
        for keyword, value in uids.items():
            if not value:
                raise InvalidInput(f"missing {keyword}")
            if not is_valid_uid(value):
                raise InvalidInput(f"invalid {keyword}: {value[:80]!r}")
        tsuid = UID(ts)
        if tsuid.is_deflated or not tsuid.is_transfer_syntax:
            offset, length = None, None
        else:
            implicit, little = ds.original_encoding
            offset, length = _pixel_location(
                head, pos, total, tail,
                tsuid.is_little_endian if little is None else little,
                tsuid.is_implicit_VR if implicit is None else implicit,
            )
        header = _build_header(ds, uids, ts, offset, length)
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure of a header value
        raise InvalidInput(f"unreadable DICOM header value: {exc}") from None
    return header, ds


def _build_header(ds: Dataset, uids: dict[str, str], ts: str,
                  offset: int | None, length: int | None) -> InstanceHeader:
    frames = _int(ds, "NumberOfFrames")
    charset = ds.get("SpecificCharacterSet", "")
    if isinstance(charset, pydicom.multival.MultiValue):
        charset = "\\".join(str(c) for c in charset)
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=ts,
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        accession_number=_text(ds, "AccessionNumber"),
        study_id=_text(ds, "StudyID"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician_name=_text(ds, "ReferringPhysicianName"),
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        series_date=_text(ds, "SeriesDate"),
        series_time=_text(ds, "SeriesTime"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        instance_number=_int(ds, "InstanceNumber"),
        content_date=_text(ds, "ContentDate"),
        content_time=_text(ds, "ContentTime"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=frames if frames and frames > 0 else 1,
        bits_allocated=_int(ds, "BitsAllocated"),
        photometric_interpretation=_text(ds, "PhotometricInterpretation"),
        pixel_data_offset=offset,
        pixel_data_length=length,
        specific_character_set=str(charset),
    )


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One File Meta element, explicit VR little endian (PS3.5 7.1.2), value padded to an
    even length (NUL for UI, space for text)."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr == b"OB":
        return _META_LONG.pack(2, element, vr, len(value)) + value
    return _META_SHORT.pack(2, element, vr, len(value)) + value


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                    source_ae: str = "") -> bytes:
    """Preamble, ``DICM`` and File Meta Information (PS3.10 7.1) for a data set received over
    DIMSE: write these, then the data set bytes unchanged, and the result is a Part 10 file.

    Encoded by hand (the same bytes pydicom's ``write_file_meta_info`` writes, see the tests):
    it runs once per C-STORE, and pydicom's dataset machinery cost more than the rest of
    receiving a small object. Values are the request's, as received; the ingest checks them.
    """
    def text(value: str) -> bytes:
        return value.encode("latin-1", "replace")

    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", text(sop_class_uid)),
        _meta_element(0x0003, b"UI", text(sop_instance_uid)),
        _meta_element(0x0010, b"UI", text(transfer_syntax_uid)),
        _meta_element(0x0012, b"UI", _IMPLEMENTATION_UID),
        _meta_element(0x0013, b"SH", _IMPLEMENTATION_NAME),
        _meta_element(0x0016, b"AE", text(source_ae.strip()[:16])) if source_ae.strip() else b"",
    ))
    return (_PREAMBLE + _META_SHORT.pack(2, 0x0000, b"UL", 4) + struct.pack("<I", len(body))
            + body)


def part10_bytes(dataset: bytes, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax_uid: str, source_ae: str = "") -> bytes:
    """A Part 10 file: preamble, ``DICM``, File Meta Information, then ``dataset`` unchanged."""
    return file_meta_bytes(sop_class_uid, sop_instance_uid, transfer_syntax_uid,
                           source_ae) + dataset


def dataset_offset(raw: bytes) -> int:
    """Offset of the dataset after the preamble and File Meta Information of a Part 10 file."""
    if raw[128:132] != b"DICM":
        raise InvalidInput("not a DICOM Part 10 file (no DICM prefix)")
    # (0002,0000) File Meta Information Group Length, explicit VR little endian, UL
    if raw[132:136] != b"\x02\x00\x00\x00" or raw[136:138] != b"UL":
        raise InvalidInput("File Meta Information has no group length")
    (group_length,) = struct.unpack("<I", raw[140:144])
    return 144 + group_length


def header_value(ds: Dataset, keyword: str) -> Any:
    """Value of ``keyword`` in ``ds`` or None."""
    return ds.get(keyword)
