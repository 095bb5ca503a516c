"""Tiny synthetic DICOM instances for index and query tests: a header and no pixel data.

Only what the index keeps, encoded in UTF-8 (``ISO_IR 192``, PS3.5 6.1.2.3) so that names may
carry Vietnamese letters. The SOP class is Secondary Capture (PS3.4 B.5), which needs no
pixel module to be indexed.
"""

from __future__ import annotations

import io
import random

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def random_uid(rng: random.Random) -> str:
    """A UID under the ``2.25`` root (PS3.5 B.2) drawn from ``rng`` (so seeded and repeatable)."""
    return f"2.25.{rng.getrandbits(120)}"


def instance_bytes(sop_uid: str, study_uid: str, series_uid: str,
                   **attributes: str | int) -> bytes:
    """A Part 10 file (PS3.10 7.1) with the given UIDs and ``attributes`` (keyword -> value)."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
