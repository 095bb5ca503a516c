"""Tests for pacs.render against references written here from the standard.

The grayscale reference is PS3.3 C.11.2.1.2 written out per pixel (``np.select`` over the three
cases of each VOI LUT Function), after the Modality LUT of C.11.1; PNG output must match it
exactly, JPEG output within a mean absolute difference of 3.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from copy import deepcopy
from io import BytesIO

import numpy as np
import pydicom
import pytest
import simplejpeg  # type: ignore[import-untyped]  # no stubs
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.sequence import Sequence

from pacs.demo import StudySpec, generate_study
from pacs.errors import InvalidInput, NotFound
from pacs.render import (
    JPEG,
    PNG,
    THUMBNAIL_FRAME,
    RenderCache,
    RenderOptions,
    fit_viewport,
    render_frame,
    render_thumbnail,
)
from tests.conftest import testdata

PNG_OPTS = RenderOptions(media_type=PNG)
CR_FILE = "dicomdirtests/77654033/CR1/6154"  # MONOCHROME1, rescale 0.684/200, window 1600/2800


def _raw(name: str) -> bytes:
    return testdata(name).read_bytes()


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _png(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(BytesIO(data)), dtype=np.uint8)


def _jpeg(data: bytes) -> np.ndarray:
    assert data.startswith(b"\xff\xd8")
    return np.asarray(Image.open(BytesIO(data)), dtype=np.uint8)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# --- reference (PS3.3 C.11.1, C.11.2.1.2, C.7.6.3.1.2) -----------------------------------------

def ref_modality(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    x = stored.astype(np.float64)
    if "RescaleSlope" in ds:
        x = x * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return x


def ref_window(x: np.ndarray, c: float, w: float, function: str = "LINEAR") -> np.ndarray:
    if function == "LINEAR":
        low, high = x <= c - 0.5 - (w - 1) / 2, x > c - 0.5 + (w - 1) / 2
        y = np.select([low, high], [0.0, 255.0], ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0)
    elif function == "LINEAR_EXACT":
        low, high = x <= c - w / 2, x > c + w / 2
        y = np.select([low, high], [0.0, 255.0], ((x - c) / w + 0.5) * 255.0)
    else:
        y = 255.0 / (1 + np.exp(-4 * (x - c) / w))
    out: np.ndarray = np.rint(y).astype(np.uint8)
    return out


def ref_minmax(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.rint((x - x.min()) * (255.0 / (x.max() - x.min()))).astype(np.uint8)
    return out


def _windowed(name: str, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    ds = pydicom.dcmread(testdata(name))
    return ref_window(ref_modality(ds, ds.pixel_array), center, width, function)


# --- grayscale -----------------------------------------------------------------------------------

def test_signed_ct_with_rescale_and_requested_window() -> None:
    raw = _raw("CT_small.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert ds.PixelRepresentation == 1 and float(ds.RescaleIntercept) == -1024
    expected = _windowed("CT_small.dcm", 40, 400)
    opts = RenderOptions(window=(40.0, 400.0, "LINEAR"), media_type=PNG)
    assert np.array_equal(_png(render_frame(raw, 0, opts)), expected)
    jpeg = _jpeg(render_frame(raw, 0, RenderOptions(window=(40.0, 400.0, "LINEAR"))))
    assert jpeg.shape == expected.shape and _mad(jpeg, expected) < 3


def test_ct_without_window_is_stretched_over_min_max() -> None:
    raw = _raw("CT_small.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    expected = ref_minmax(ref_modality(ds, ds.pixel_array))
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), expected)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions(function: str) -> None:
    raw = _raw("MR_small.dcm")
    expected = _windowed("MR_small.dcm", 1000, 1500, function)
    opts = RenderOptions(window=(1000.0, 1500.0, function), media_type=PNG)
    assert np.array_equal(_png(render_frame(raw, 0, opts)), expected)


def test_linear_window_of_width_one_is_a_threshold() -> None:
    raw = _raw("MR_small.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    img = _png(render_frame(raw, 0, RenderOptions(window=(600.0, 1.0, "LINEAR"), media_type=PNG)))
    assert np.array_equal(img, np.where(ds.pixel_array <= 599.5, 0, 255).astype(np.uint8))


def test_window_of_the_object_and_its_voi_lut_function() -> None:
    raw = _raw("MR_small.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    expected = _windowed("MR_small.dcm", 600, 1600)
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), expected)
    ds.VOILUTFunction = "SIGMOID"
    sigmoid = _png(render_frame(_part10(ds), 0, PNG_OPTS))
    assert np.array_equal(sigmoid, _windowed("MR_small.dcm", 600, 1600, "SIGMOID"))


def test_first_of_several_windows_is_used() -> None:
    raw = _raw("examples_overlay.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert len(ds.WindowCenter) == 2
    expected = ref_window(ds.pixel_array.astype(np.float64), float(ds.WindowCenter[0]),
                          float(ds.WindowWidth[0]))
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), expected)


def test_big_endian_renders_like_little_endian() -> None:
    little = render_frame(_raw("MR_small.dcm"), 0, PNG_OPTS)
    for name in ("MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm"):
        assert np.array_equal(_png(render_frame(_raw(name), 0, PNG_OPTS)), _png(little)), name


def test_monochrome1_is_inverted() -> None:
    raw = _raw(CR_FILE)
    ds = pydicom.dcmread(BytesIO(raw))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    windowed = ref_window(ref_modality(ds, ds.pixel_array), float(ds.WindowCenter), float(ds.WindowWidth))
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), 255 - windowed)


def test_demo_cr_monochrome1() -> None:
    ds = generate_study(np.random.default_rng(5), StudySpec("CR", rows=256, columns=200))[0]
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = _part10(ds)
    x = ref_modality(ds, ds.pixel_array)
    if "WindowCenter" in ds:
        shown = ref_window(x, float(ds.WindowCenter), float(ds.WindowWidth))
    else:
        shown = ref_minmax(x)
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), 255 - shown)
    jpeg = _jpeg(render_frame(raw, 0, RenderOptions(quality=95)))
    assert _mad(jpeg, 255 - shown) < 3


def test_presentation_lut_shape_inverse_inverts_monochrome2() -> None:
    ds = pydicom.dcmread(testdata("MR_small.dcm"))
    ds.PresentationLUTShape = "INVERSE"
    expected = 255 - _windowed("MR_small.dcm", 600, 1600)
    assert np.array_equal(_png(render_frame(_part10(ds), 0, PNG_OPTS)), expected)


def test_modality_lut_sequence() -> None:
    ds = pydicom.dcmread(testdata("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    lut = (np.arange(4096, dtype=np.float64) ** 1.5 / 4096 ** 0.5).astype(np.uint16)  # 0..4095
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
    ds.ModalityLUTSequence = Sequence([item])
    raw = _part10(ds)
    stored = ds.pixel_array
    assert stored.min() >= 0 and stored.max() < 4096
    expected = ref_window(lut[stored].astype(np.float64), 1000.0, 2000.0)
    opts = RenderOptions(window=(1000.0, 2000.0, "LINEAR"), media_type=PNG)
    assert np.array_equal(_png(render_frame(raw, 0, opts)), expected)


def test_voi_lut_sequence_when_there_is_no_window() -> None:
    ds = pydicom.dcmread(testdata("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    first, entries = 100, 2048
    lut = np.sqrt(np.linspace(0, 1, entries)) * 4095  # 12-bit output
    item = Dataset()
    item.LUTDescriptor = [entries, first, 12]
    item.add_new(0x00283006, "US", np.rint(lut).astype(np.uint16).tolist())  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    raw = _part10(ds)
    stored = ds.pixel_array.astype(np.int64)
    index = np.clip(stored - first, 0, entries - 1)
    expected = np.rint(np.rint(lut)[index] * (255.0 / 4095)).astype(np.uint8)
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), expected)
    item.LUTDescriptor = [entries, first, 16]  # declared 16 bits, 12 used: scaled by the data
    assert np.array_equal(_png(render_frame(_part10(ds), 0, PNG_OPTS)), expected)
    # a requested window wins over the object's VOI LUT
    opts = RenderOptions(window=(600.0, 1600.0, "LINEAR"), media_type=PNG)
    assert np.array_equal(_png(render_frame(raw, 0, opts)), _windowed("MR_small.dcm", 600, 1600))


def test_enhanced_functional_groups_give_rescale_and_window() -> None:
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = ds.RescaleSlope, \
        ds.RescaleIntercept, "HU"
    del ds.RescaleSlope, ds.RescaleIntercept
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = "40", "400"
    per_frame = Dataset()
    per_frame.FrameVOILUTSequence = Sequence([voi])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame])
    ds.NumberOfFrames = 1
    img = _png(render_frame(_part10(ds), 0, PNG_OPTS))
    assert np.array_equal(img, _windowed("CT_small.dcm", 40, 400))


def test_multiframe_grayscale_frames() -> None:
    raw = _raw("rtdose.dcm")  # 15 frames, 32-bit unsigned, no window
    ds = pydicom.dcmread(BytesIO(raw))
    for index in (0, 7, 14):
        x = ds.pixel_array[index].astype(np.float64)
        expected = ref_minmax(x) if x.max() > x.min() else np.zeros(x.shape, np.uint8)
        assert np.array_equal(_png(render_frame(raw, index, PNG_OPTS)), expected)


def test_demo_ct_512_jpeg() -> None:
    ds = generate_study(np.random.default_rng(2), StudySpec("CT", rows=512, columns=512))[0]
    raw = _part10(ds)
    expected = ref_window(ref_modality(ds, ds.pixel_array), float(ds.WindowCenter), float(ds.WindowWidth))
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), expected)
    jpeg = _jpeg(render_frame(raw, 0))
    assert jpeg.shape == (512, 512) and _mad(jpeg, expected) < 3


# --- colour --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "GDCMJ2K_TextGBR.dcm", "SC_rgb_rle.dcm", "ExplVR_BigEnd.dcm"])
def test_colour_is_rgb(name: str) -> None:
    raw = _raw(name)
    ds = pydicom.dcmread(BytesIO(raw))
    expected = ds.pixel_array  # pydicom decodes YBR_* as RGB
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), expected)
    jpeg = _jpeg(render_frame(raw, 0, RenderOptions(quality=95)))
    assert jpeg.shape == expected.shape and _mad(jpeg, expected) < 3


def test_colour_ignores_the_window() -> None:
    raw = _raw("examples_rgb_color.dcm")
    opts = RenderOptions(window=(10.0, 20.0, "LINEAR"), media_type=PNG)
    assert render_frame(raw, 0, opts) == render_frame(raw, 0, PNG_OPTS)


@pytest.mark.parametrize("name", ["SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"])
def test_deep_colour_is_shifted_to_8_bits(name: str) -> None:
    raw = _raw(name)
    ds = pydicom.dcmread(BytesIO(raw))
    expected = (ds.pixel_array >> (ds.BitsStored - 8)).astype(np.uint8)
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), expected)


def test_palette_color() -> None:
    raw = _raw("examples_palette.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)  # 16-bit palette
    assert np.array_equal(_png(render_frame(raw, 0, PNG_OPTS)), expected)


def test_multiframe_ybr_jpeg_frames() -> None:
    raw = _raw("examples_ybr_color.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    for index in (0, 15, 29):
        assert np.array_equal(_png(render_frame(raw, index, PNG_OPTS)), ds.pixel_array[index])
    with pytest.raises(NotFound):
        render_frame(raw, 30)


def test_rle_two_frames() -> None:
    raw = _raw("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(BytesIO(raw))
    assert np.array_equal(_png(render_frame(raw, 1, PNG_OPTS)), ds.pixel_array[1])


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "JPEGLSNearLossless_16.dcm",
                                  "image_dfl.dcm", "liver_1frame.dcm", "693_J2KI.dcm"])
def test_other_syntaxes_render(name: str) -> None:
    raw = _raw(name)
    ds = pydicom.dcmread(BytesIO(raw))
    img = _png(render_frame(raw, 0, PNG_OPTS))
    assert img.shape == (ds.Rows, ds.Columns) and img.dtype == np.uint8
    assert img.max() > img.min()


# --- geometry ------------------------------------------------------------------------------------

def test_viewport_keeps_the_aspect_ratio() -> None:
    raw = _raw("JPEG2000.dcm")  # 1024 rows x 256 columns
    data = render_frame(raw, 0, RenderOptions(viewport=(256, 256)))
    assert simplejpeg.decode_jpeg_header(data)[:2] == (256, 64)  # (height, width)
    data = render_frame(raw, 0, RenderOptions(viewport=(512, 100), media_type=PNG))
    assert _png(data).shape == (100, 25)


def test_viewport_scales_up_to_fit() -> None:
    raw = _raw("MR_small.dcm")  # 64 x 64
    img = _png(render_frame(raw, 0, RenderOptions(viewport=(300, 200), media_type=PNG)))
    assert img.shape == (200, 200)
    assert fit_viewport(64, 64, (300, 200)) == (200, 200)
    assert fit_viewport(640, 480, (100, 100)) == (100, 75)
    assert fit_viewport(3, 1000, (50, 50)) == (1, 50)


def test_source_region_crops_and_flips() -> None:
    raw = _raw("CT_small.dcm")  # 128 x 128
    full = _png(render_frame(raw, 0, PNG_OPTS))
    crop = RenderOptions(viewport=(32, 16), region=(10.0, 20.0, 32.0, 16.0), media_type=PNG)
    assert np.array_equal(_png(render_frame(raw, 0, crop)), full[20:36, 10:42])
    flipped = RenderOptions(viewport=(32, 16), region=(10.0, 20.0, -32.0, -16.0), media_type=PNG)
    assert np.array_equal(_png(render_frame(raw, 0, flipped)), full[20:36, 10:42][::-1, ::-1])
    to_edges = RenderOptions(viewport=(28, 8), region=(100.0, 120.0, None, None), media_type=PNG)
    assert np.array_equal(_png(render_frame(raw, 0, to_edges)), full[120:, 100:])
    with pytest.raises(InvalidInput):
        render_frame(raw, 0, RenderOptions(viewport=(10, 10), region=(500.0, 0.0, None, None)))


def test_thumbnail_is_the_middle_frame_in_a_square() -> None:
    raw = _raw("examples_ybr_color.dcm")  # 30 frames of 240 x 320
    thumb = render_thumbnail(raw)
    assert simplejpeg.decode_jpeg_header(thumb)[:2] == (96, 128)
    assert thumb == render_frame(raw, 15, RenderOptions(viewport=(128, 128)))
    ct = render_thumbnail(_raw("CT_small.dcm"), size=64)
    assert simplejpeg.decode_jpeg_header(ct)[:2] == (64, 64)
    png = render_thumbnail(_raw("CT_small.dcm"), RenderOptions(viewport=(50, 40), media_type=PNG))
    assert _png(png).shape == (40, 40)
    with pytest.raises(InvalidInput):
        render_thumbnail(raw, RenderOptions(viewport=(10, 10), region=(1.0, 1.0, None, None)))


@pytest.mark.parametrize(("modality", "rows", "columns", "exact"), [
    ("CT", 512, 512, True),  # shrunk by 4: every displayed value averaged
    ("MR", 300, 500, True),  # by 3, not a multiple of it: the final resize takes the rest
    ("CR", 1000, 760, False),  # MONOCHROME1, by 7: 4 x 4 values of each 7 x 7 block
])
def test_thumbnail_is_the_box_filtered_full_render(modality: str, rows: int, columns: int,
                                                   exact: bool) -> None:
    ds = generate_study(np.random.default_rng(7), StudySpec(modality, rows=rows,
                                                            columns=columns))[0]
    raw = _part10(ds)
    thumb = _png(render_thumbnail(raw, RenderOptions(viewport=(128, 128), media_type=PNG)))
    full = _png(render_frame(raw, 0, RenderOptions(media_type=PNG))).astype(np.float64)
    width, height = fit_viewport(columns, rows, (128, 128))
    k = min(columns // width, rows // height)
    box = full[:rows // k * k, :columns // k * k].reshape(rows // k, k, columns // k, k)
    means = Image.fromarray(np.rint(box.mean(axis=(1, 3))).astype(np.uint8))
    reference = np.asarray(means.resize((width, height), Image.Resampling.BILINEAR))
    assert thumb.shape == reference.shape == (height, width)
    diff = np.abs(thumb.astype(int) - reference)
    if exact:  # the window applied to every value, then their mean
        assert diff.max() <= 1
    else:  # a sampled box: close to the full one
        assert diff.mean() < 2 and np.percentile(diff, 99) <= 30


def test_samples_of_blocks_for_a_shrunk_image() -> None:
    from pacs.render import _samples

    blocks = np.array([[-1000, 5], [300, -2]], dtype=np.int16)
    for k, count in ((2, 4), (4, 16), (10, 16)):  # every value up to 4 a side, then 4 x 4
        stack = _samples(np.kron(blocks, np.ones((k, k), dtype=np.int16)), (2, 2))
        assert stack is not None and stack.shape == (count, 2, 2) and stack.dtype == np.int16
        assert all(np.array_equal(layer, blocks) for layer in stack)
    ramp = np.arange(36).reshape(6, 6)
    stack = _samples(ramp, (2, 2))
    assert stack is not None and stack.mean(axis=0).tolist() == [[7.0, 10.0], [25.0, 28.0]]
    assert _samples(np.zeros((9, 7)), (2, 2)).shape == (9, 3, 2)  # type: ignore[union-attr]
    assert _samples(ramp, (4, 3)) is None  # no whole factor of 2 or more


def test_quality_changes_the_jpeg() -> None:
    raw = _raw("CT_small.dcm")
    low = render_frame(raw, 0, RenderOptions(quality=10))
    high = render_frame(raw, 0, RenderOptions(quality=100))
    assert len(low) < len(high)


# --- errors --------------------------------------------------------------------------------------

def test_no_pixel_data_and_bad_index() -> None:
    with pytest.raises(InvalidInput):
        render_frame(_raw("rtplan.dcm"), 0)
    with pytest.raises(InvalidInput):
        render_thumbnail(_raw("rtplan.dcm"))
    with pytest.raises(NotFound):
        render_frame(_raw("CT_small.dcm"), 1)
    with pytest.raises(InvalidInput):
        render_frame(_raw("JPEG-lossy.dcm"), 0)  # no installed decoder can read it


# --- parameters ----------------------------------------------------------------------------------

def test_parse_valid_parameters() -> None:
    opts = RenderOptions.parse(window="40,400,linear-exact", viewport="512,256", quality="75")
    assert opts == RenderOptions(window=(40.0, 400.0, "LINEAR_EXACT"), viewport=(512, 256), quality=75)
    assert RenderOptions.parse(window="-600.5,1500,sigmoid").window == (-600.5, 1500.0, "SIGMOID")
    assert RenderOptions.parse(window="40,400").window == (40.0, 400.0, "LINEAR")
    assert RenderOptions.parse(window="40,400,LINEAR").window == (40.0, 400.0, "LINEAR")
    region = RenderOptions.parse(viewport="512,512,,,256,256")
    assert region.viewport == (512, 512) and region.region == (None, None, 256.0, 256.0)
    assert RenderOptions.parse(viewport="10,10,5,6").region == (5.0, 6.0, None, None)
    assert RenderOptions.parse(media_type=PNG).media_type == PNG
    assert RenderOptions.parse() == RenderOptions()
    assert RenderOptions().media_type == JPEG


@pytest.mark.parametrize("kwargs", [
    {"window": "40"}, {"window": "a,400,linear"}, {"window": "40,400,cubic"},
    {"window": "40,0,linear"}, {"window": "40,0.5,linear"}, {"window": "40,0,sigmoid"},
    {"window": "nan,400,linear"}, {"window": "40,inf,linear"}, {"window": "40,400,linear,1"},
    {"window": ""}, {"viewport": "0,10"}, {"viewport": "-5,5"}, {"viewport": "10"},
    {"viewport": "1e3,10"}, {"viewport": "10,10,1,2,3,4,5"}, {"viewport": "10,10,0,0,0,5"},
    {"viewport": "100000,10"}, {"viewport": "10,10,x"}, {"viewport": ""},
    {"viewport": "10,10,1,1", "thumbnail": True}, {"quality": "0"}, {"quality": "101"},
    {"quality": "abc"}, {"quality": ""}, {"quality": "5.5"}, {"media_type": "image/gif"},
])
def test_parse_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        RenderOptions.parse(**kwargs)  # type: ignore[arg-type]  # mixed value types


def test_options_are_validated_when_built_directly() -> None:
    cases: list[dict[str, object]] = [
        {"quality": 0}, {"media_type": "text/plain"}, {"viewport": (0, 5)},
        {"window": (1.0, 0.0, "LINEAR")}, {"window": (1.0, 5.0, "CUBIC")},
        {"region": (0.0, 0.0, None, None)},
    ]
    for bad in cases:
        with pytest.raises(InvalidInput):
            RenderOptions(**bad)  # type: ignore[arg-type]  # deliberately bad values


# --- cache ---------------------------------------------------------------------------------------

def test_cache_is_an_lru_bounded_in_bytes() -> None:
    cache = RenderCache(max_bytes=10)
    opts = RenderOptions()
    cache.put("1.2.3", 0, opts, b"aaaa")
    cache.put("1.2.3", 1, opts, b"bbbb")
    assert cache.get("1.2.3", 0, opts) == b"aaaa"  # now most recent
    cache.put("1.2.3", 2, opts, b"cccc")  # evicts frame 1
    assert cache.get("1.2.3", 1, opts) is None
    assert cache.get("1.2.3", 0, opts) == b"aaaa"
    assert cache.get("1.2.3", 2, opts) == b"cccc"
    assert len(cache) == 2 and cache.size_bytes == 8
    cache.put("1.2.3", 3, opts, b"x" * 11)  # larger than the cache: not kept
    assert cache.get("1.2.3", 3, opts) is None and cache.size_bytes == 8
    cache.put("1.2.3", 0, RenderOptions(quality=50), b"dd")  # other options: another key
    assert cache.get("1.2.3", 0, RenderOptions(quality=50)) == b"dd"
    assert len(cache) == 3 and cache.size_bytes == 10
    cache.put("1.2.3", 4, opts, b"ee")  # evicts the least recently used: frame 0
    assert cache.get("1.2.3", 0, opts) is None
    assert cache.get("1.2.3", 2, opts) == b"cccc"
    assert len(cache) == 3 and cache.size_bytes == 8
    cache.clear()
    assert len(cache) == 0 and cache.size_bytes == 0


def test_cache_get_or_render_renders_once() -> None:
    raw = _raw("CT_small.dcm")
    cache = RenderCache(max_bytes=1 << 20)
    calls = []

    def render() -> bytes:
        calls.append(1)
        return render_thumbnail(raw)

    first = cache.get_or_render("1.2.3", THUMBNAIL_FRAME, RenderOptions(viewport=(128, 128)), render)
    second = cache.get_or_render("1.2.3", THUMBNAIL_FRAME, RenderOptions(viewport=(128, 128)), render)
    assert first == second and len(calls) == 1
    assert (cache.hits, cache.misses) == (1, 1)


def test_cache_is_thread_safe() -> None:
    cache = RenderCache(max_bytes=5000)
    errors: list[BaseException] = []

    def worker(seed: int) -> Callable[[], None]:
        def run() -> None:
            try:
                rng = np.random.default_rng(seed)
                for _ in range(2000):
                    frame = int(rng.integers(0, 50))
                    data = bytes([frame]) * int(rng.integers(1, 200))
                    cache.put("1.2", frame, PNG_OPTS, data)
                    got = cache.get("1.2", frame, PNG_OPTS)
                    assert got is None or got[:1] == bytes([frame])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=worker(seed)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cache.size_bytes <= 5000
    assert cache.size_bytes == sum(len(v) for v in deepcopy(cache._entries).values())
