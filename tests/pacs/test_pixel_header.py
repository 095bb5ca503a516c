"""Frames and renders read with the fast pixel header (``pacs.dicom.header.pixel_header``)
equal what they are with pydicom's header read, on every Part 10 file bundled with pydicom
and on generated studies; what the fast read declines goes to pydicom."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from pacs import frames, render
from pacs.demo import generate_bulk
from pacs.dicom import header
from pacs.errors import InvalidInput, NotFound

_MAX_BYTES = 4 << 20  # keeps the suite quick: the big multi-frame files add nothing here


def _objects() -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(get_testdata_files("*.dcm")):
        data = Path(path).read_bytes()
        if data[128:132] == b"DICM" and len(data) <= _MAX_BYTES:
            found.append((Path(path).name, data))
    for i, ds in enumerate(generate_bulk(5, 1, 2, rows=32, cols=32)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        found.append((f"generated-{i}", buf.getvalue()))
    return found


_OBJECTS = _objects()


def _outcome(call, *args, **kwargs):  # noqa: ANN001, ANN202 - any frames/render function
    try:
        return "ok", call(*args, **kwargs)
    except (InvalidInput, NotFound) as exc:
        return type(exc).__name__, None


@pytest.mark.parametrize(("name", "data"), _OBJECTS, ids=lambda v: v if isinstance(v, str) else "")
def test_fast_header_reads_what_pydicom_reads(name: str, data: bytes) -> None:
    fast = header.pixel_header(data)
    if fast is None:
        pytest.skip(f"{name}: read by pydicom")
    ds, ts, pos = fast
    fp = io.BytesIO(data)
    slow = pydicom.dcmread(fp, stop_before_pixels=True)
    assert ts == slow.file_meta.TransferSyntaxUID
    assert pos == fp.tell()
    wanted = [elem.tag for elem in slow if elem.tag in header._PIXEL_WANTED]
    assert sorted(ds.keys()) == sorted(wanted)
    for tag in wanted:
        assert ds[tag].value == slow[tag].value, f"{name}: {tag}"


@pytest.mark.parametrize(("name", "data"), _OBJECTS, ids=lambda v: v if isinstance(v, str) else "")
def test_frames_and_renders_equal_pydicoms(name: str, data: bytes,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def results() -> list[object]:
        return [
            _outcome(frames.stored_frame, data, 0),
            _outcome(frames.uncompressed_photometric_interpretation, data),
            _outcome(lambda: frames.open_pixels(data).number_of_frames),
            _outcome(render.render_frame, data, 0),
            _outcome(render.render_frame, data, 0,
                     render.RenderOptions.parse(window="40,400", media_type="image/png")),
            _outcome(render.render_thumbnail, data),
        ]

    fast = results()
    monkeypatch.setattr(frames, "pixel_header", lambda raw: None)
    assert results() == fast


@pytest.mark.parametrize("undefined_length", [True, False])
def test_enhanced_objects_functional_groups(undefined_length: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Rescale from the Shared Functional Groups: an undefined-length sequence goes to
    pydicom, a defined-length one is read fast; either way the render is pydicom's."""
    ds = next(iter(generate_bulk(3, 1, 1, rows=16, cols=16)))
    transformation = pydicom.Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept = "2", "-100"
    group = pydicom.Dataset()
    group.PixelValueTransformationSequence = pydicom.Sequence([transformation])
    ds.SharedFunctionalGroupsSequence = pydicom.Sequence([group])
    ds["SharedFunctionalGroupsSequence"].is_undefined_length = undefined_length
    del ds.RescaleSlope, ds.RescaleIntercept
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert (header.pixel_header(data) is None) == undefined_length
    options = render.RenderOptions.parse(window="0,200", media_type="image/png")
    rendered = render.render_frame(data, 0, options)
    monkeypatch.setattr(frames, "pixel_header", lambda raw: None)
    assert render.render_frame(data, 0, options) == rendered
    del ds.SharedFunctionalGroupsSequence  # without the rescale: another image
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert render.render_frame(buf.getvalue(), 0, options) != rendered
