"""Transfer syntax conversion for retrieval (WADO-RS Accept, C-MOVE/C-GET peers that only
accept native syntaxes). The archive never re-encodes what it stores; this runs only when a
peer asks for a syntax other than the stored one."""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.errors import InvalidInput

NATIVE = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}


def can_transcode(stored: str, wanted: str) -> bool:
    """Whether we can produce ``wanted`` from ``stored`` (any -> native little endian)."""
    return wanted == stored or wanted in NATIVE


def decoded_dataset(raw: bytes, wanted: str = str(ExplicitVRLittleEndian)) -> pydicom.Dataset:
    """The object as a dataset encoded in native little endian ``wanted``."""
    if wanted not in NATIVE:
        raise InvalidInput(f"cannot transcode to {wanted}")
    ds = pydicom.dcmread(BytesIO(raw))
    stored = UID(ds.file_meta.TransferSyntaxUID)
    if stored.is_compressed:
        ds.decompress()
    elif not stored.is_little_endian and "PixelData" in ds and ds.get("BitsAllocated", 8) > 8:
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = UID(wanted)
    return ds


def transcode(raw: bytes, wanted: str) -> bytes:
    """Part 10 bytes in ``wanted``: the stored bytes when they already are."""
    ds = pydicom.dcmread(BytesIO(raw), stop_before_pixels=True)
    if str(ds.file_meta.TransferSyntaxUID) == wanted:
        return raw
    out = BytesIO()
    decoded = decoded_dataset(raw, wanted)
    # big endian sources: the values were swapped above, so force the new encoding
    dcmwrite(out, decoded, force_encoding=True,
             implicit_vr=wanted == str(ImplicitVRLittleEndian), little_endian=True)
    return out.getvalue()
