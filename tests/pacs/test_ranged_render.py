"""Renders of large native objects read the header and the one frame by byte range (a
frame of a 1 GB cine loop is ~1 MB to read, not 1 GB), on both backend pairs, and equal
the renders of the whole object."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from pacs import render
from pacs.context import Caller
from pacs.errors import NotFound
from pacs.services import Services
from pacs.wado import RANGED_RENDER_BYTES

CLI = Caller.cli("test")


def _multiframe(photometric: str, frames: int, syntax: str = ExplicitVRLittleEndian,
                enhanced: bool = False) -> bytes:
    """A native multi-frame object over RANGED_RENDER_BYTES, every frame different."""
    rows = cols = 256
    rng = np.random.default_rng(frames)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1" if photometric == "RGB" else "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "RANGED", "Range^Test", "US" if photometric == "RGB" else "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        pixels = rng.integers(0, 256, (frames, rows, cols, 3), dtype=np.uint8)
    else:
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
        pixels = rng.integers(-1000, 2000, (frames, rows, cols), dtype=np.int16)
        if enhanced:  # rescale and window per frame (undefined-length groups: pydicom reads them)
            groups = []
            for i in range(frames):
                transformation, window = Dataset(), Dataset()
                transformation.RescaleSlope, transformation.RescaleIntercept = "1", str(-i * 10)
                window.WindowCenter, window.WindowWidth = str(40 + i), "400"
                group = Dataset()
                group.PixelValueTransformationSequence = Sequence([transformation])
                group.FrameVOILUTSequence = Sequence([window])
                groups.append(group)
            ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
            ds["PerFrameFunctionalGroupsSequence"].is_undefined_length = True
        else:
            ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
            ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = pixels.tobytes()
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert len(data) >= RANGED_RENDER_BYTES
    return data


@pytest.mark.parametrize(("photometric", "frames", "syntax", "enhanced"), [
    ("MONOCHROME2", 40, ExplicitVRLittleEndian, False),
    ("MONOCHROME2", 40, ImplicitVRLittleEndian, False),
    ("MONOCHROME2", 40, ExplicitVRLittleEndian, True),
    ("RGB", 24, ExplicitVRLittleEndian, False),
], ids=["mono", "implicit", "enhanced", "rgb"])
def test_frames_of_a_large_object_are_read_by_range(
        services: Services, monkeypatch: pytest.MonkeyPatch, photometric: str, frames: int,
        syntax: str, enhanced: bool) -> None:
    data = _multiframe(photometric, frames, syntax, enhanced)
    uid = services.ingest.store_instance(CLI, data).sop_instance_uid
    inst = services.retrieve.instance(CLI, uid)
    wado = services.wado
    ranges: list[int] = []
    read_range = services.retrieve.read_range

    def counted(instance: object, offset: int, length: int) -> bytes:
        ranges.append(length)
        return read_range(instance, offset, length)  # type: ignore[arg-type]

    def whole(_instance: object) -> bytes:
        raise AssertionError("the whole object was read")

    monkeypatch.setattr(services.retrieve, "read_range", counted)
    monkeypatch.setattr(services.retrieve, "read", whole)
    options = render.RenderOptions.parse(media_type="image/png")
    for frame in (1, frames // 3, frames):
        got = wado.rendered(inst, frame, options)
        assert got == render.render_frame(data, frame - 1, options), frame
    assert wado.rendered(inst, None, options, thumbnail=True) == render.render_thumbnail(data, options)
    assert max(ranges) < len(data) // 4  # a header and single frames, never the object
    with pytest.raises(NotFound):
        wado.rendered(inst, frames + 1, options)


def test_small_objects_are_read_whole(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under RANGED_RENDER_BYTES one read beats two (a CT slice: one read of ~0.5 MB)."""
    ds = pydicom.dcmread(BytesIO(_multiframe("MONOCHROME2", 40)))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData[:2 * 256 * 256 * 2]
    ds.SOPInstanceUID = generate_uid()
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    uid = services.ingest.store_instance(CLI, buf.getvalue()).sop_instance_uid
    inst = services.retrieve.instance(CLI, uid)

    def no_range(*_args: object) -> bytes:
        raise AssertionError("a small object was read by range")

    monkeypatch.setattr(services.retrieve, "read_range", no_range)
    assert services.wado.rendered(inst, 2, render.RenderOptions()) == render.render_frame(
        buf.getvalue(), 1, render.RenderOptions())
