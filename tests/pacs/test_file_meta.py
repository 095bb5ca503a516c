"""The hand-encoded File Meta Information of objects received over DIMSE is byte for byte
what pydicom writes, and reads back as the values it was given."""

from __future__ import annotations

import io

import pydicom
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from pacs.dicom.header import IMPLEMENTATION_VERSION, dataset_offset, file_meta_bytes

uids = st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,12}", fullmatch=True).filter(
    lambda uid: len(uid) <= 64)
aes = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ -", max_size=20)
syntaxes = st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                            "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90"])


def _pydicom_meta(sop_class: str, sop_instance: str, syntax: str, source_ae: str) -> bytes:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if source_ae.strip():
        meta.SourceApplicationEntityTitle = source_ae.strip()[:16]
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(uids, uids, syntaxes, aes)
def test_same_bytes_as_pydicom(sop_class: str, sop_instance: str, syntax: str,
                               source_ae: str) -> None:
    ours = file_meta_bytes(sop_class, sop_instance, syntax, source_ae)
    assert ours == _pydicom_meta(sop_class, sop_instance, syntax, source_ae)
    assert dataset_offset(ours) == len(ours)


def test_reads_back() -> None:
    ds = pydicom.dcmread(io.BytesIO(file_meta_bytes(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", " CT01 ")
        + b"\x08\x00\x18\x00UI\x08\x001.2.3.4\x00"))
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.file_meta.SourceApplicationEntityTitle == "CT01"
    assert ds.SOPInstanceUID == "1.2.3.4"
