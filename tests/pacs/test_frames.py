"""Tests for pacs.frames: stored, decoded and uncompressed frames of real files.

References are pydicom's own: ``pydicom.encaps.get_frame`` on the parsed Pixel Data for
encapsulated frames, slices of ``ds.PixelData`` for native ones, ``ds.pixel_array`` for decoded.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames, get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options, pack_bits
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pacs import frames
from pacs.demo import StudySpec, generate_study
from pacs.dicom.header import parse_header
from pacs.errors import InvalidInput, NotFound
from tests.conftest import testdata


def _raw(name: str) -> bytes:
    return testdata(name).read_bytes()


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _indexed(raw: bytes) -> dict[str, int | None] | None:
    """The offsets the index keeps for ``raw``, or None for the few test files it would refuse."""
    try:
        header, _ = parse_header(raw)
    except InvalidInput:
        return None
    return {"pixel_data_offset": header.pixel_data_offset, "pixel_data_length": header.pixel_data_length}


def _frames_of(ds: Dataset) -> list[bytes]:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=n))


def _with_encapsulation(name: str, **kwargs: object) -> tuple[bytes, list[bytes]]:
    """The file re-encapsulated as asked, and its frames."""
    ds = pydicom.dcmread(testdata(name))
    fragments = _frames_of(ds)
    if kwargs.pop("extended", False):
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(fragments)
    else:
        ds.PixelData = encapsulate(fragments, **kwargs)  # type: ignore[arg-type]
    ds["PixelData"].is_undefined_length = True
    return _part10(ds), fragments


@pytest.fixture(scope="module")
def demo_ct() -> bytes:
    ds = generate_study(np.random.default_rng(7), StudySpec("CT", rows=128, columns=96))[0]
    return _part10(ds)


@pytest.mark.parametrize(("name", "count"), [
    ("CT_small.dcm", 1), ("rtdose.dcm", 15), ("rtdose_expb.dcm", 15), ("rtdose_rle.dcm", 15),
    ("SC_rgb_rle_2frame.dcm", 2), ("examples_ybr_color.dcm", 30), ("image_dfl.dcm", 1),
    ("JPEG2000.dcm", 1),
])
def test_frame_count(name: str, count: int) -> None:
    assert frames.frame_count(_raw(name)) == count


@pytest.mark.parametrize("name", ["rtdose.dcm", "CT_small.dcm", "MR_small_implicit.dcm",
                                  "SC_rgb_small_odd.dcm", "examples_rgb_color.dcm"])
def test_native_little_endian_frames_are_slices(name: str) -> None:
    raw = _raw(name)
    ds = pydicom.dcmread(BytesIO(raw))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    offsets = _indexed(raw)
    arr = ds.pixel_array.reshape((n, *ds.pixel_array.shape[-3 if ds.SamplesPerPixel > 1 else -2:]))
    for i in range(n):
        expected = ds.PixelData[i * size:(i + 1) * size]
        assert frames.stored_frame(raw, i) == expected
        if offsets is not None:
            assert frames.stored_frame(raw, i, **offsets) == expected
        assert frames.uncompressed_frame(raw, i) == expected
        assert np.array_equal(frames.decoded_frame(raw, i), arr[i])


def test_offsets_from_the_index_are_the_stored_bytes(demo_ct: bytes) -> None:
    header, _ = parse_header(demo_ct)
    assert header.pixel_data_offset is not None and header.pixel_data_length == 128 * 96 * 2
    frame = frames.stored_frame(demo_ct, 0, pixel_data_offset=header.pixel_data_offset,
                                pixel_data_length=header.pixel_data_length)
    assert frame == demo_ct[header.pixel_data_offset:header.pixel_data_offset + 128 * 96 * 2]
    ds = pydicom.dcmread(BytesIO(demo_ct))
    assert np.array_equal(frames.decoded_frame(demo_ct, 0), ds.pixel_array)


def test_wrong_offsets_are_rejected(demo_ct: bytes) -> None:
    header, _ = parse_header(demo_ct)
    assert header.pixel_data_offset is not None
    with pytest.raises(InvalidInput):
        frames.stored_frame(demo_ct, 0, pixel_data_offset=header.pixel_data_offset + 2,
                            pixel_data_length=header.pixel_data_length)
    with pytest.raises(InvalidInput):
        frames.stored_frame(demo_ct, 0, pixel_data_offset=header.pixel_data_offset,
                            pixel_data_length=None)


@pytest.mark.parametrize("name", ["rtdose_expb.dcm", "MR_small_bigendian.dcm", "ExplVR_BigEnd.dcm",
                                  "SC_rgb_small_odd_big_endian.dcm"])
def test_big_endian_frames(name: str) -> None:
    raw = _raw(name)
    ds = pydicom.dcmread(BytesIO(raw))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    arr = ds.pixel_array if n > 1 else ds.pixel_array[None]
    for i in range(n):
        # stored: the big endian bytes as they are in the file
        assert frames.stored_frame(raw, i) == ds.PixelData[i * size:(i + 1) * size]
        assert np.array_equal(frames.decoded_frame(raw, i), arr[i])
        expected = arr[i].astype(arr.dtype.newbyteorder("<")).tobytes()
        assert frames.uncompressed_frame(raw, i) == expected


def test_big_endian_frame_decodes_like_little_endian() -> None:
    little, big = _raw("rtdose.dcm"), _raw("rtdose_expb.dcm")
    for i in (0, 7, 14):
        assert frames.uncompressed_frame(big, i) == frames.uncompressed_frame(little, i)


@pytest.mark.parametrize("name", [
    "rtdose_rle.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_32bit_2frame.dcm", "examples_ybr_color.dcm", "JPEG2000.dcm", "JPGExtended.dcm",
    "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "GDCMJ2K_TextGBR.dcm", "MR_small_RLE.dcm",
])
def test_encapsulated_frames(name: str) -> None:
    raw = _raw(name)
    ds = pydicom.dcmread(BytesIO(raw))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    offsets = _indexed(raw)
    assert offsets is None or offsets["pixel_data_length"] is None
    arr = ds.pixel_array if n > 1 else ds.pixel_array[None]
    for i in range(n):
        expected = get_frame(ds.PixelData, i, number_of_frames=n)
        assert frames.stored_frame(raw, i) == expected
        if offsets is not None:
            assert frames.stored_frame(raw, i, **offsets) == expected
        assert np.array_equal(frames.decoded_frame(raw, i), arr[i])
        uncompressed = frames.uncompressed_frame(raw, i)
        assert uncompressed == arr[i].astype(arr.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("layout", [
    {"has_bot": True}, {"has_bot": False}, {"extended": True},
    {"has_bot": True, "fragments_per_frame": 3}, {"has_bot": False, "fragments_per_frame": 2},
], ids=["basic-offset-table", "one-fragment-per-frame", "extended-offset-table",
        "bot-3-fragments", "no-bot-2-fragments-jpeg-markers"])
def test_every_way_of_finding_encapsulated_frames(layout: dict[str, object]) -> None:
    # JPEG baseline frames: pydicom finds fragmented frames without offsets by their EOI marker
    raw, expected = _with_encapsulation("examples_ybr_color.dcm", **layout)
    ds = pydicom.dcmread(BytesIO(raw))
    assert frames.frame_count(raw) == 30
    for i in (0, 1, 14, 29):
        assert frames.stored_frame(raw, i) == expected[i]
        assert np.array_equal(frames.decoded_frame(raw, i), ds.pixel_array[i])
    with pytest.raises(NotFound):
        frames.stored_frame(raw, 30)


def test_deflated_frame_is_the_inflated_value() -> None:
    raw = _raw("image_dfl.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert ds.file_meta.TransferSyntaxUID.is_deflated
    header, _ = parse_header(raw)
    assert header.pixel_data_offset is None  # the index keeps no offsets for deflated data
    assert frames.stored_frame(raw, 0) == ds.PixelData
    assert frames.uncompressed_frame(raw, 0) == ds.PixelData
    assert np.array_equal(frames.decoded_frame(raw, 0), ds.pixel_array)


def test_ybr_full_422_native_frame_keeps_its_layout() -> None:
    raw = _raw("SC_ybr_full_422_uncompressed.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    frame = frames.stored_frame(raw, 0)
    assert len(frame) == 100 * 100 * 2 == len(ds.PixelData)
    assert frames.uncompressed_frame(raw, 0) == frame
    assert frames.uncompressed_photometric_interpretation(raw) == "YBR_FULL_422"
    assert np.array_equal(frames.decoded_frame(raw, 0), ds.pixel_array)  # decoded as RGB


@pytest.mark.parametrize("name", [
    "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "examples_ybr_color.dcm",
    "GDCMJ2K_TextGBR.dcm", "examples_jpeg2k.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm",
    "ExplVR_BigEnd.dcm", "SC_ybr_full_422_uncompressed.dcm", "examples_palette.dcm", "CT_small.dcm",
])
def test_uncompressed_photometric_interpretation_matches_the_decoder(name: str) -> None:
    raw = _raw(name)
    ds = pydicom.dcmread(BytesIO(raw))
    tsyntax = ds.file_meta.TransferSyntaxUID
    if tsyntax.is_encapsulated or not tsyntax.is_little_endian:
        _, meta = get_decoder(tsyntax).as_array(ds, index=0, **as_pixel_options(ds))
        expected = meta["photometric_interpretation"]
    else:
        expected = ds.PhotometricInterpretation
    assert frames.uncompressed_photometric_interpretation(raw) == expected


def _one_bit_multiframe(byteorder: str = "<") -> tuple[bytes, np.ndarray]:
    """Three 5x3 frames of 1-bit data: 15 bits a frame, so frames 1 and 2 start mid-byte."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 2, (3, 5, 3), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if byteorder == "<" else ExplicitVRBigEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 5, 3, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = pack_bits(pixels)
    ds["PixelData"].VR = "OB"
    return _part10(ds), pixels


def test_one_bit_frames_are_realigned_to_bytes() -> None:
    raw, pixels = _one_bit_multiframe()
    for i in range(3):
        packed = pack_bits(pixels[i])
        assert len(packed) == 2
        assert frames.stored_frame(raw, i) == packed
        assert frames.uncompressed_frame(raw, i) == packed
        assert np.array_equal(frames.decoded_frame(raw, i), pixels[i])


def test_one_bit_single_frame() -> None:
    raw = _raw("liver_1frame.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert frames.stored_frame(raw, 0) == ds.PixelData[:512 * 512 // 8]
    assert np.array_equal(frames.decoded_frame(raw, 0), ds.pixel_array)
    big = _raw("liver_expb_1frame.dcm")
    assert frames.uncompressed_frame(big, 0) == frames.uncompressed_frame(raw, 0)


def test_index_out_of_range_is_not_found() -> None:
    for name, n in (("rtdose.dcm", 15), ("SC_rgb_rle_2frame.dcm", 2), ("CT_small.dcm", 1)):
        raw = _raw(name)
        for bad in (n, n + 10, -1):
            with pytest.raises(NotFound):
                frames.stored_frame(raw, bad)
            with pytest.raises(NotFound):
                frames.decoded_frame(raw, bad)
            with pytest.raises(NotFound):
                frames.uncompressed_frame(raw, bad)


def test_object_without_pixel_data_is_invalid() -> None:
    raw = _raw("rtplan.dcm")
    for call in (lambda: frames.frame_count(raw), lambda: frames.stored_frame(raw, 0),
                 lambda: frames.decoded_frame(raw, 0), lambda: frames.uncompressed_frame(raw, 0)):
        with pytest.raises(InvalidInput):
            call()


def test_unusable_objects_are_invalid() -> None:
    with pytest.raises(InvalidInput):
        frames.stored_frame(b"not a DICOM file at all", 0)
    with pytest.raises(InvalidInput):  # Pixel Data shorter than its length says
        frames.stored_frame(_raw("MR_truncated.dcm"), 0)


def test_undecodable_frame_is_invalid_but_stored_frame_works() -> None:
    # JPEG extended 12-bit with a corrupt stream: no installed plugin decodes it
    raw = _raw("JPEG-lossy.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert frames.stored_frame(raw, 0) == get_frame(ds.PixelData, 0, number_of_frames=1)
    with pytest.raises(InvalidInput):
        frames.decoded_frame(raw, 0)


def test_rle_frames_of_a_reencoded_demo_series() -> None:
    datasets = generate_study(np.random.default_rng(11), StudySpec("MR", rows=64, columns=64,
                                                                   instances_per_series=3))[:3]
    stack = np.stack([ds.pixel_array for ds in datasets])
    ds = datasets[0]
    ds.NumberOfFrames = 3
    ds.PixelData = stack.astype("<u2").tobytes()
    ds.compress(RLELossless, encoding_plugin="pylibjpeg")
    raw = _part10(ds)
    for i in range(3):
        assert np.array_equal(frames.decoded_frame(raw, i), stack[i])
        assert frames.uncompressed_frame(raw, i) == stack[i].astype("<u2").tobytes()



def _native_monochrome_files() -> list[str]:
    from pydicom.data import get_testdata_files

    return sorted(get_testdata_files("*.dcm"))


def test_native_monochrome_frames_read_directly_equal_pydicoms() -> None:
    """The direct read of 8/16-bit little endian monochrome frames gives pydicom's array
    (values, dtype, shape) for every bundled file it applies to, signed, unsigned, with
    unused high bits, MONOCHROME1, several frames."""
    checked = 0
    for path in _native_monochrome_files():
        raw = open(path, "rb").read()
        try:
            source = frames.open_pixels(raw)
            direct = source._native_monochrome(0)
        except (InvalidInput, NotFound):
            continue
        if direct is None:
            continue
        ds = pydicom.dcmread(path)
        try:
            expected = ds.pixel_array
        except Exception:  # noqa: BLE001 - pydicom cannot read it either: not comparable
            continue
        stack = expected if source.number_of_frames > 1 else expected[None]
        for i in range(min(source.number_of_frames, 3)):
            got = source._native_monochrome(i)
            assert got is not None and got.flags.writeable, path
            assert got.dtype == stack[i].dtype and np.array_equal(got, stack[i]), path
            assert np.array_equal(source.decode(i)[0], got)
        checked += 1
    assert checked >= 5  # CT_small, MR_small (signed, unsigned), 8-bit, multi-frame...


def test_native_monochrome_frame_cut_short_is_invalid() -> None:
    from dataclasses import replace

    source = frames.open_pixels(_raw("CT_small.dcm"))
    assert source.value_length is not None
    source = replace(source, value_length=source.value_length - 2)
    with pytest.raises(InvalidInput, match="truncated"):
        source.decode(0)
