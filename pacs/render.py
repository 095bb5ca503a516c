"""Rendered images and thumbnails (PS3.18 8.3.5.1, 8.3.5.2, 8.7.4; rendering per PS3.4 N.2).

:func:`render_frame` turns one frame of a stored object into an 8-bit JPEG (libjpeg-turbo via
``simplejpeg``) or PNG (Pillow):

- grayscale (PS3.4 N.2.1): Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence,
  PS3.3 C.11.1; for enhanced objects the Pixel Value Transformation functional group), then VOI:
  the requested ``window``, else the object's first Window Center/Width with its VOI LUT Function
  (PS3.3 C.11.2.1.2; or the Frame VOI LUT functional group), else its first VOI LUT Sequence
  item, else the frame's min/max stretched linearly. MONOCHROME1, or a Presentation LUT Shape
  of INVERSE, is inverted (once) so that the output is always MONOCHROME2-like.
- colour: RGB as is, YBR_* as RGB (pydicom's decoders convert), PALETTE COLOR through its
  palette (PS3.3 C.7.6.3.1.5); samples of more than 8 bits are shifted down to 8 bits. The
  ``window`` parameter does not apply to colour images and is ignored for them.
- then the optional source region (sx, sy, sw, sh; negative sw/sh flip) and viewport scaling
  that fits the region into vw x vh keeping its aspect ratio (up or down, PS3.18 8.3.5.1.3);
  without a viewport the image keeps its size.

Grayscale rendering is one lookup table over the stored value range of the frame: the whole
pipeline runs in float64 on at most 65,536 entries, then a single ``take`` maps the pixels,
so a 512 x 512 CT frame renders to JPEG in about 2 ms (half of it header parse and JPEG
encoding). Output values are
``rint`` of the PS3.3 formulas, clipped to 0..255. An image shrunk to a viewport at least
twice smaller (thumbnails) maps only the values its blocks average (all of them up to 4 x 4
blocks, 4 x 4 samples of larger ones), then averages the display values: a box filter of
the full render at a fraction of its cost for large images (2560 x 2560: 15 -> 2 ms).

:class:`RenderCache` is a thread-safe LRU of rendered bytes; instances never change, so entries
never go stale.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg  # type: ignore[import-untyped]  # no stubs
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    convert_color_space,
)

from pacs.errors import InvalidInput
from pacs.frames import PixelSource, open_pixels

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 90
MAX_VIEWPORT = 8192  # largest vw or vh accepted: bigger is "not supported" (PS3.18 8.3.5.1.3)
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
THUMBNAIL_FRAME = -1  # the frame key of thumbnails in RenderCache
_PNG_COMPRESS_LEVEL = 1  # medical images gain little from higher levels, which cost 2-3x time
_LUT_MAX_ENTRIES = 1 << 16
_REDUCE_SAMPLES = 4  # values per side of a block averaged into one when shrinking
_UINT = re.compile(r"\d{1,9}")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

Region = tuple[float | None, float | None, float | None, float | None]
Image8 = npt.NDArray[np.uint8]
Array = npt.NDArray[Any]


def _decimal(text: str, name: str) -> float:
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        raise InvalidInput(f"{name} must be a decimal number, got {text[:40]!r}")
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be finite")
    return value


def _window_function(text: str) -> str:
    name = text.strip().upper().replace("-", "_")
    if name not in WINDOW_FUNCTIONS:
        raise InvalidInput(f"window function must be linear, linear-exact or sigmoid, got {text[:40]!r}")
    return name


@dataclass(frozen=True)
class RenderOptions:
    """Rendering parameters of PS3.18 8.3.5.1 (validated; hashable, so usable as a cache key).

    ``window`` is (center, width, function) with function 'LINEAR' | 'LINEAR_EXACT' | 'SIGMOID';
    ``viewport`` is (vw, vh); ``region`` is the optional (sx, sy, sw, sh) of the viewport
    parameter, None meaning the default; ``quality`` (1-100) applies to JPEG only.
    """

    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    region: Region | None = None

    def __post_init__(self) -> None:
        if self.media_type not in MEDIA_TYPES:
            raise InvalidInput(f"unsupported rendered media type {self.media_type!r}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) \
                or not 1 <= self.quality <= 100:
            raise InvalidInput("quality must be an integer from 1 to 100")
        if self.window is not None:
            center, width, function = self.window
            if function not in WINDOW_FUNCTIONS:
                raise InvalidInput(f"unknown window function {function!r}")
            if not (math.isfinite(center) and math.isfinite(width)):
                raise InvalidInput("window center and width must be finite")
            # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID
            if width < 1 if function == "LINEAR" else width <= 0:
                raise InvalidInput(f"window width {width} too small for {function}")
        if self.viewport is not None:
            vw, vh = self.viewport
            if not (1 <= vw <= MAX_VIEWPORT and 1 <= vh <= MAX_VIEWPORT):
                raise InvalidInput(f"viewport sides must be from 1 to {MAX_VIEWPORT}")
        if self.region is not None:
            if self.viewport is None:
                raise InvalidInput("a source region needs a viewport")
            if len(self.region) != 4 or any(v is not None and not math.isfinite(v) for v in self.region):
                raise InvalidInput("the source region must be four finite numbers or defaults")
            if self.region[2] == 0 or self.region[3] == 0:
                raise InvalidInput("the source region must not be empty")

    @classmethod
    def parse(cls, *, window: str | None = None, viewport: str | None = None,
              quality: str | None = None, media_type: str = JPEG,
              thumbnail: bool = False) -> RenderOptions:
        """Options from DICOMweb query parameter values (None when a parameter is absent).

        ``window=center,width[,function]`` (function ``linear`` by default, a lenient reading of
        PS3.18 8.3.5.1.4 which requires all three), ``viewport=vw,vh[,sx,sy,sw,sh]`` (only vw,vh
        when ``thumbnail``), ``quality=1..100``. Raises InvalidInput on any bad value.
        """
        parsed_window = None
        if window is not None:
            parts = window.split(",")
            if len(parts) not in (2, 3):
                raise InvalidInput("window must be center,width,function")
            function = _window_function(parts[2]) if len(parts) == 3 else "LINEAR"
            parsed_window = (_decimal(parts[0], "window center"), _decimal(parts[1], "window width"),
                             function)
        parsed_viewport, region = None, None
        if viewport is not None:
            parts = [p.strip() for p in viewport.split(",")]
            if len(parts) not in (2, 3, 4, 5, 6) or (thumbnail and len(parts) != 2):
                raise InvalidInput("viewport must be vw,vh" + ("" if thumbnail else "[,sx,sy,sw,sh]"))
            if not all(_UINT.fullmatch(p) for p in parts[:2]):
                raise InvalidInput("viewport vw and vh must be positive integers")
            parsed_viewport = (int(parts[0]), int(parts[1]))
            if len(parts) > 2:
                values = [None if p == "" else _decimal(p, "viewport region") for p in parts[2:]]
                values += [None] * (4 - len(values))
                region = (values[0], values[1], values[2], values[3])
        parsed_quality = DEFAULT_QUALITY
        if quality is not None:
            if not _UINT.fullmatch(quality.strip()):
                raise InvalidInput("quality must be an integer from 1 to 100")
            parsed_quality = int(quality)
        return cls(window=parsed_window, viewport=parsed_viewport, media_type=media_type,
                   quality=parsed_quality, region=region)


# --- grayscale -------------------------------------------------------------------------------

def _frame_group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The first item of a functional group macro for this frame (PS3.3 C.7.6.16)."""
    for container, position in (("PerFrameFunctionalGroupsSequence", index),
                                ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(container)
        if groups and len(groups) > position:
            seq = groups[position].get(keyword)
            if seq:
                return seq[0]  # type: ignore[no-any-return]
    return None


def _first_float(value: Any) -> float | None:
    """The first value of a (possibly multi-valued) numeric element, if finite."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _modality(x: Array, ds: Dataset, index: int) -> Array:
    """Modality LUT output (float64) for stored values ``x`` (PS3.3 C.11.1)."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(x, ds), dtype=np.float64)
    source: Dataset | None = ds
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        source = _frame_group(ds, index, "PixelValueTransformationSequence")
    slope = _first_float(source.get("RescaleSlope")) if source is not None else None
    intercept = _first_float(source.get("RescaleIntercept")) if source is not None else None
    values = x.astype(np.float64)
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept:
        values += intercept
    return values


def _dataset_window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    """The object's first window (PS3.3 C.11.2), if valid."""
    source: Dataset | None = ds
    if "WindowCenter" not in ds:
        source = _frame_group(ds, index, "FrameVOILUTSequence")
    if source is None:
        return None
    center = _first_float(source.get("WindowCenter"))
    width = _first_float(source.get("WindowWidth"))
    function = str(source.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if center is None or width is None or function not in WINDOW_FUNCTIONS:
        return None
    if width < 1 if function == "LINEAR" else width <= 0:
        return None
    return center, width, function


def _window(v: Array, center: float, width: float, function: str) -> Array:
    """PS3.3 C.11.2.1.2 with y in 0..255 (float64, not yet rounded)."""
    if function == "LINEAR_EXACT":
        y = ((v - center) / width + 0.5) * 255.0
    elif function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (v - center) / width))
    elif width == 1:
        return np.where(v <= center - 0.5, 0.0, 255.0)
    else:
        y = ((v - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(y, 0.0, 255.0)


def _voi_lut(v: Array, ds: Dataset) -> Array:
    """First VOI LUT Sequence item applied to ``v``, scaled to 0..255 (PS3.3 C.11.2.1.1)."""
    entries, first, depth = (int(n) for n in ds.VOILUTSequence[0].LUTDescriptor)
    out = apply_voi(np.rint(v).astype(np.int64), ds)
    # Many objects declare 16 bits per entry but use fewer: the largest entry decides the scale
    every_entry = apply_voi(np.arange(first, first + (entries or 1 << 16), dtype=np.int64), ds)
    bits = min(depth, max(int(every_entry.max()).bit_length(), 1))
    return np.asarray(out, dtype=np.float64) * (255.0 / ((1 << bits) - 1))


def _gray_pipeline(x: Array, ds: Dataset, index: int, window: tuple[float, float, str] | None,
                   invert: bool) -> Image8:
    """Stored values -> 8-bit display values (Modality LUT, VOI, inversion)."""
    v = _modality(x, ds, index)
    chosen = window or _dataset_window(ds, index)
    if chosen is not None:
        y = _window(v, *chosen)
    elif ds.get("VOILUTSequence"):
        try:
            y = _voi_lut(v, ds)
        except (NotImplementedError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise InvalidInput(f"unusable VOI LUT Sequence: {exc}") from None
    else:
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        y = (v - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(v)
    out = np.rint(y).astype(np.uint8)
    if invert:
        np.subtract(255, out, out=out)
    return out


def _lookup(lut: Image8, arr: Array, lo: int) -> Image8:
    """``lut[arr - lo]`` quickly: 8/16-bit values index a full table through an unsigned view."""
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        size = 1 << (8 * arr.dtype.itemsize)
        table = np.zeros(size, dtype=np.uint8)
        table[np.arange(lo, lo + lut.size) & (size - 1)] = lut
        return table.take(arr.view(f"u{arr.dtype.itemsize}"))
    index = arr.astype(np.intp)
    index -= lo
    return lut.take(index)


def _render_gray(arr: Array, ds: Dataset, index: int, window: tuple[float, float, str] | None,
                 photometric: str) -> Image8:
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    invert = photometric == "MONOCHROME1" or shape == "INVERSE"
    if arr.dtype.kind in "iu" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < _LUT_MAX_ENTRIES:
            domain = np.arange(lo, hi + 1, dtype=np.int64)
            return _lookup(_gray_pipeline(domain, ds, index, window, invert), arr, lo)
    return _gray_pipeline(arr, ds, index, window, invert)


# --- colour ----------------------------------------------------------------------------------

def _to_8bit(arr: Array, bits_stored: int) -> Image8:
    if arr.dtype == np.uint8:
        return arr
    shift = max(bits_stored - 8, 0)
    out = np.right_shift(arr, shift) if shift else arr
    return np.minimum(out, 255).astype(np.uint8)


def _render_color(arr: Array, ds: Dataset, photometric: str) -> Image8:
    bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)
        except (ValueError, AttributeError, TypeError, IndexError, KeyError) as exc:
            raise InvalidInput(f"unusable palette: {exc}") from None
        return _to_8bit(rgb, 16 if rgb.dtype == np.uint16 else 8)
    if photometric.startswith("YBR"):
        arr = convert_color_space(arr, photometric, "RGB")
    return _to_8bit(arr, bits_stored)


# --- geometry and encoding ---------------------------------------------------------------------

def _crop(img: Image8, region: Region) -> Image8:
    """Source region of PS3.18 8.3.5.1.3: absolute sx, sy, sw, sh; a negative sw/sh flips."""
    sx, sy, sw, sh = region
    height, width = img.shape[:2]
    x0 = int(round(abs(sx or 0.0)))
    y0 = int(round(abs(sy or 0.0)))
    if x0 >= width or y0 >= height:
        raise InvalidInput("the source region starts outside the image")
    x1 = width if sw is None else min(width, x0 + max(int(round(abs(sw))), 1))
    y1 = height if sh is None else min(height, y0 + max(int(round(abs(sh))), 1))
    img = img[y0:y1, x0:x1]
    if sw is not None and sw < 0:
        img = img[:, ::-1]
    if sh is not None and sh < 0:
        img = img[::-1]
    return img


def fit_viewport(width: int, height: int, viewport: tuple[int, int]) -> tuple[int, int]:
    """Largest (width, height) with the image's aspect ratio that fits the viewport."""
    vw, vh = viewport
    scale = min(vw / width, vh / height)
    return (min(vw, max(1, round(width * scale))), min(vh, max(1, round(height * scale))))


def _scale(img: Image8, size: tuple[int, int]) -> Image8:
    """``img`` resized to ``size`` (width, height)."""
    height, width = img.shape[:2]
    if size == (width, height):
        return img
    resized = Image.fromarray(np.ascontiguousarray(img)).resize(
        size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized)


def _samples(arr: Array, size: tuple[int, int]) -> Array | None:
    """For an image shrunk to ``size`` (width, height) by a whole factor k >= 2: the stored
    values that its k x k blocks average, stacked (n, rows, columns): all of them up to
    k = 4, else 4 x 4 evenly spread over each block. None when k < 2. (Up to k = 4
    :func:`_render_gray_shrunk` maps the image itself and lets Pillow average the blocks.)"""
    height, width = arr.shape
    k = min(width // size[0], height // size[1])
    if k < 2:
        return None
    rows, cols = height // k, width // k
    per_side = min(k, _REDUCE_SAMPLES)
    offsets = [(i * k) // per_side for i in range(per_side)]
    return np.stack([arr[oy:oy + rows * k:k, ox:ox + cols * k:k]
                     for oy in offsets for ox in offsets])


def _render_gray_shrunk(arr: Array, ds: Dataset, index: int,
                        window: tuple[float, float, str] | None, photometric: str,
                        size: tuple[int, int]) -> Image8:
    """Grayscale display values at ``size``: the display pipeline maps only the values that
    the blocks of :func:`_samples` average (then averaged, as a box filter would), so a
    thumbnail of a 2560 x 2560 image maps 262 thousand values instead of 6.5 million
    (15 -> ~2 ms); the final resize does the rest. Up to 4 x 4 blocks every value counts:
    the whole image is mapped and ``Image.reduce`` averages the blocks (a 512 x 512 CT
    thumbnail 0.99 -> 0.90 ms, against stacking the blocks' values first). The window
    applies before averaging, as for the full render (averaging stored values first would
    darken every air-skin edge of a CT soft-tissue window)."""
    height, width = arr.shape
    k = min(width // size[0], height // size[1])
    if 2 <= k <= _REDUCE_SAMPLES:  # every value counts: map them all, then Pillow's box reduce
        rows, cols = height // k, width // k
        shown = _render_gray(arr[:rows * k, :cols * k], ds, index, window, photometric)
        return _scale(np.asarray(Image.fromarray(shown).reduce(k)), size)
    stack = _samples(arr, size)
    if stack is None:
        return _scale(_render_gray(arr, ds, index, window, photometric), size)
    total = np.zeros(stack.shape[1:], dtype=np.uint16)  # at most 16 x 255
    for block in _render_gray(stack, ds, index, window, photometric):
        total += block
    total += len(stack) // 2  # the mean, rounded
    total //= len(stack)
    return _scale(total.astype(np.uint8), size)


def _encode(img: Image8, media_type: str, quality: int) -> bytes:
    img = np.ascontiguousarray(img)
    if media_type == JPEG:
        if img.ndim == 2:
            return bytes(simplejpeg.encode_jpeg(img[..., None], quality, "GRAY", "Gray"))
        return bytes(simplejpeg.encode_jpeg(img, quality, "RGB", "444"))
    buffer = BytesIO()
    Image.fromarray(img).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _render(source: PixelSource, index: int, options: RenderOptions) -> bytes:
    arr, photometric = source.decode(index)
    ds = source.ds
    if arr.ndim == 3 or photometric == "PALETTE COLOR":
        img = np.ascontiguousarray(_render_color(arr, ds, photometric))
    elif options.viewport is not None and options.region is None:
        size = fit_viewport(arr.shape[1], arr.shape[0], options.viewport)
        img = _render_gray_shrunk(arr, ds, index, options.window, photometric, size)
        return _encode(img, options.media_type, options.quality)
    else:
        img = _render_gray(arr, ds, index, options.window, photometric)
    if options.region is not None:
        img = _crop(img, options.region)
    if options.viewport is not None:
        height, width = img.shape[:2]
        img = _scale(img, fit_viewport(width, height, options.viewport))
    return _encode(img, options.media_type, options.quality)


def render_frame(raw: bytes, index: int, options: RenderOptions | None = None) -> bytes:
    """Frame ``index`` (0-based) of the Part 10 bytes ``raw`` rendered as ``options`` say.

    Raises NotFound for an index out of range, InvalidInput for an object without pixel data
    or whose pixel data cannot be decoded or rendered.
    """
    return _render(open_pixels(raw), index, options or RenderOptions())


def thumbnail_options(options: RenderOptions | None = None, size: int = 128) -> RenderOptions:
    """``options`` for a thumbnail: fitted into ``size`` x ``size`` unless they give a viewport."""
    options = options or RenderOptions()
    if options.region is not None:
        raise InvalidInput("a thumbnail viewport takes only vw and vh")
    if options.viewport is None:
        options = replace(options, viewport=(size, size))
    return options


def render_thumbnail(raw: bytes, options: RenderOptions | None = None, size: int = 128) -> bytes:
    """The middle frame fitted into ``size`` x ``size`` (or the options' viewport), JPEG by default."""
    source = open_pixels(raw)
    return _render(source, source.number_of_frames // 2, thumbnail_options(options, size))


def render_source(source: PixelSource, options: RenderOptions | None = None) -> bytes:
    """The frame a ranged read opened (:func:`pacs.frames.open_frame`), rendered as
    :func:`render_frame` would render it from the whole object."""
    return _render(source, source.first_frame, options or RenderOptions())


# --- cache ---------------------------------------------------------------------------------------

CacheKey = tuple[str, int, RenderOptions]


class RenderCache:
    """Thread-safe LRU of rendered bytes keyed by (SOP Instance UID, frame, options).

    Use :data:`THUMBNAIL_FRAME` as the frame of thumbnails. Entries larger than ``max_bytes``
    are not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._size

    def get(self, sop_instance_uid: str, frame: int, options: RenderOptions) -> bytes | None:
        key = (sop_instance_uid, frame, options)
        with self._lock:
            data = self._entries.get(key)
            if data is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return data

    def put(self, sop_instance_uid: str, frame: int, options: RenderOptions, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        key = (sop_instance_uid, frame, options)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._entries[key] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._size -= len(evicted)

    def get_or_render(self, sop_instance_uid: str, frame: int, options: RenderOptions,
                      render: Callable[[], bytes]) -> bytes:
        """The cached bytes, or ``render()`` stored and returned (rendered outside the lock)."""
        data = self.get(sop_instance_uid, frame, options)
        if data is None:
            data = render()
            self.put(sop_instance_uid, frame, options, data)
        return data

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._size = 0
