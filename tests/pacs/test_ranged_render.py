"""Renders of large native objects read the header and the one frame by byte range (a
frame of a 1 GB cine loop is ~1 MB to read, not 1 GB), on both backend pairs, and equal
the renders of the whole object."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from pacs import frames as pixel_frames
from pacs import render
from pacs.context import Caller
from pacs.errors import DuplicateConflict, InvalidInput, NotFound
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



def _force_ranged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pacs.wado.RANGED_RENDER_BYTES", 0)


def _whole_renders(data: bytes, frames: int) -> list[object]:
    """What rendering the whole object gives: the first and last frames, the thumbnail."""
    out: list[object] = []
    for call in (lambda: render.render_frame(data, 0),
                 lambda: render.render_frame(data, frames - 1),
                 lambda: render.render_thumbnail(data)):
        try:
            out.append(call())
        except (InvalidInput, NotFound) as exc:
            out.append(type(exc).__name__)
    return out


def _ranged_renders(services: Services, uid: str) -> tuple[list[object], bool]:
    inst = services.retrieve.instance(CLI, uid)
    try:
        opened = services.wado._ranged_frame(inst, None) is not None
    except (InvalidInput, NotFound):
        opened = False
    got: list[object] = []
    for frame, thumbnail in ((1, False), (max(inst.number_of_frames, 1), False), (None, True)):
        services.wado.render_cache = None
        try:
            got.append(services.wado.rendered(inst, frame, render.RenderOptions(),
                                              thumbnail=thumbnail))
        except (InvalidInput, NotFound) as exc:
            got.append(type(exc).__name__)
    return got, opened


def test_every_bundled_file_renders_alike_read_by_range(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every object read by range (the size threshold at 0), each pydicom test file
    that the archive takes renders exactly as from its whole bytes: frames found by offset
    (native, or encapsulated with an offset table), or the object read whole."""
    _force_ranged(monkeypatch)
    opened = []
    for path in sorted(get_testdata_files("*.dcm")):
        data = Path(path).read_bytes()
        if len(data) > 8 << 20 or data[128:132] != b"DICM":
            continue
        try:
            uid = services.ingest.store_instance(CLI, data).sop_instance_uid
        except (InvalidInput, DuplicateConflict):
            continue  # not an archivable object, or another file's SOP Instance UID
        inst = services.retrieve.instance(CLI, uid)
        got, by_range = _ranged_renders(services, uid)
        assert got == _whole_renders(services.retrieve.read(inst), max(inst.number_of_frames, 1)), \
            Path(path).name
        if by_range:
            opened.append((Path(path).name, inst.pixel_data_length is None))
    assert len(opened) >= 15 and any(encapsulated for _, encapsulated in opened), opened


@pytest.mark.parametrize("table", ["basic", "extended", "none", "two-fragments"])
def test_encapsulated_frames_found_through_the_offset_tables(
        services: Services, monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    """A 30-frame JPEG object re-encapsulated with each kind of offset table: the ranged
    render equals the whole one; without a table the object is read whole the first time,
    by range afterwards (one fragment per frame, found then)."""
    _force_ranged(monkeypatch)
    ds = pydicom.dcmread(get_testdata_files("examples_ybr_color.dcm")[0])
    jpegs = list(generate_frames(ds.PixelData, number_of_frames=30))
    if table == "extended":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = \
            encapsulate_extended(jpegs)
    elif table == "two-fragments":  # every frame in two fragments, found through the table
        ds.PixelData = encapsulate(jpegs, fragments_per_frame=2, has_bot=True)
    else:
        ds.PixelData = encapsulate(jpegs, has_bot=table == "basic")
    ds["PixelData"].is_undefined_length = True
    ds.SOPInstanceUID = generate_uid()
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    uid = services.ingest.store_instance(CLI, data).sop_instance_uid
    got, by_range = _ranged_renders(services, uid)
    assert by_range == (table != "none")
    assert got == _whole_renders(data, 30)
    if table == "none":  # read whole once: where its frames lie is known from then on
        got, by_range = _ranged_renders(services, uid)
        assert by_range and got == _whole_renders(data, 30)

    def whole(_instance: object) -> bytes:
        raise AssertionError("the whole object was read")

    # WADO-RS frames (OHIF asks for them one by one) as stored and uncompressed
    monkeypatch.setattr(services.retrieve, "read", whole)
    inst = services.retrieve.instance(CLI, uid)
    assert services.wado.frames(inst, [1, 17, 30], True) == [
        pixel_frames.stored_frame(data, i) for i in (0, 16, 29)]
    assert services.wado.frames(inst, [30, 2], False) == [
        pixel_frames.uncompressed_frame(data, i) for i in (29, 1)]


def test_frames_split_over_fragments_without_a_table_are_read_whole(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an offset table, two fragments per frame cannot be told apart by their
    headers: such an object is read whole every time (pydicom splits it at JPEG markers)."""
    _force_ranged(monkeypatch)
    ds = pydicom.dcmread(get_testdata_files("examples_ybr_color.dcm")[0])
    jpegs = list(generate_frames(ds.PixelData, number_of_frames=30))
    ds.PixelData = encapsulate(jpegs, fragments_per_frame=2, has_bot=False)
    ds["PixelData"].is_undefined_length = True
    ds.SOPInstanceUID = generate_uid()
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert pixel_frames.frame_fragments(data) is None
    uid = services.ingest.store_instance(CLI, data).sop_instance_uid
    for _ in range(2):
        got, by_range = _ranged_renders(services, uid)
        assert not by_range and got == _whole_renders(data, 30)
