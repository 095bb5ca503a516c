"""Frames of stored instances, for WADO-RS ``/frames/{n}`` (PS3.18 8.3.5, 10.4.1.1.2).

The archive keeps each object byte-for-byte as received, so a frame is found in those bytes:

- :func:`stored_frame` returns a frame in the *stored* transfer syntax: for native (uncompressed)
  syntaxes the slice of ``Rows * Columns * SamplesPerPixel * BitsAllocated / 8`` bytes at
  ``index * frame size`` (PS3.5 8.1.1), for encapsulated syntaxes the concatenated fragments of
  the frame (PS3.5 A.4) found through the Extended Offset Table, the Basic Offset Table, one
  fragment per frame, or JPEG markers (``pydicom.encaps.get_frame``).
- :func:`decoded_frame` returns the frame as a numpy array of stored values (no Modality LUT,
  native byte order), decoded by pydicom's decoders with their defaults: YBR_FULL, YBR_FULL_422, YBR_ICT and
  YBR_RCT colour comes back as RGB, 1-bit data as one uint8 per pixel.
- :func:`uncompressed_frame` returns the frame as Explicit VR Little Endian native bytes (for
  ``application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1``). Little endian native
  frames (also inflated deflated ones) are returned exactly as stored, so their Photometric
  Interpretation is unchanged (even YBR_FULL_422 keeps its subsampled layout, PS3.3
  C.7.6.3.1.2) and 1-bit frames stay bit-packed. Everything else (big endian, compressed) is
  decoded: YBR_* colour becomes RGB (see :func:`uncompressed_photometric_interpretation`).

Frame indexes are 0-based here; WADO-RS frame numbers are 1-based. An index out of range raises
:class:`~pacs.errors.NotFound`, an object without pixel data :class:`~pacs.errors.InvalidInput`.

Only the header (up to the Pixel Data element) is parsed, straight from the bytes
(:func:`pacs.dicom.header.pixel_header`) or by pydicom with ``stop_before_pixels``; the pixel
data is sliced from the stored bytes, never copied whole. :func:`open_frame` opens one frame
of a large object from its header and a ranged read of that frame alone. Deflated objects (PS3.5 A.5)
are the exception: they are inflated once by ``dcmread``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options, pack_bits
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs.dicom.header import pixel_header
from pacs.errors import InvalidInput, NotFound

# Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.6 7FE0,xxxx)
_PIXEL_KEYWORDS = {0x0010: "PixelData", 0x0008: "FloatPixelData", 0x0009: "DoubleFloatPixelData"}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM_LE, _SEQUENCE_END_LE = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"  # (FFFE,E000), (FFFE,E0DD)
# Photometric interpretations that pydicom's decoders (with their defaults) return as RGB
_DECODED_AS_RGB = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
# Errors pydicom and its plugins raise on undecodable or inconsistent pixel data
_DECODE_ERRORS = (ValueError, RuntimeError, TypeError, KeyError, IndexError, AttributeError,
                  struct.error, EOFError, OverflowError)

Pixels = npt.NDArray[Any]


def _read_header(raw: bytes) -> tuple[Dataset, UID, int]:
    """The dataset up to its pixel data (the elements frames are read and rendered with, or
    all of them when pydicom reads it), its transfer syntax and the offset where the pixel
    data element starts."""
    fast = pixel_header(raw)
    if fast is not None:
        ds, ts, pos = fast
        return ds, UID(ts), pos
    fp = BytesIO(raw)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error,
            NotImplementedError, OverflowError, AttributeError) as exc:
        raise InvalidInput(f"unreadable DICOM data: {exc}") from None
    meta = getattr(ds, "file_meta", None)
    ts_value = meta.get("TransferSyntaxUID") if meta is not None else None
    if not ts_value:
        raise InvalidInput("missing Transfer Syntax UID in the file meta")
    return ds, UID(str(ts_value)), fp.tell()


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class PixelSource:
    """A stored object opened for pixel access: its header and where its pixel data lies.

    ``buffer[value_offset:]`` starts with the pixel data value (the Basic Offset Table item when
    encapsulated); ``value_length`` is None for encapsulated data. ``buffer`` is the stored
    bytes, or for a deflated object the inflated Pixel Data value.
    """

    ds: Dataset
    transfer_syntax: UID
    buffer: bytes
    value_offset: int
    value_length: int | None
    pixel_keyword: str
    pixel_vr: str | None
    number_of_frames: int
    # a ranged read (:func:`open_frame`) holds one frame, this one, at value_offset (native
    # bytes, or encapsulated as the one fragment of a one-frame value)
    first_frame: int = 0
    ranged: bool = False

    @property
    def encapsulated(self) -> bool:
        return self.value_length is None

    @property
    def photometric_interpretation(self) -> str:
        return str(self.ds.get("PhotometricInterpretation", "")).strip().upper()

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.number_of_frames:
            raise NotFound(f"frame index {index} out of range: the object has {self.number_of_frames} "
                           f"frame(s)")
        if self.ranged and index != self.first_frame:
            raise ValueError(f"frame {index} was not read (this source holds frame {self.first_frame})")

    def _held(self, index: int) -> int:
        """Where frame ``index`` is among the frames held in ``buffer``."""
        return index - self.first_frame

    def frame_size(self) -> tuple[int, int]:
        """(bytes, bits) of one native frame; bits matter only for BitsAllocated 1."""
        ds = self.ds
        rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
        samples = _int(ds, "SamplesPerPixel", 1)
        bits = _int(ds, "BitsAllocated", 0)
        if rows <= 0 or cols <= 0 or bits <= 0:
            raise InvalidInput("Rows, Columns or Bits Allocated missing or invalid")
        if bits == 1:
            nbits = rows * cols * samples
            return (nbits + 7) // 8, nbits
        if bits % 8:
            raise InvalidInput(f"Bits Allocated {bits} is not 1 or a multiple of 8")
        if self.photometric_interpretation == "YBR_FULL_422" and samples == 3:
            # PS3.3 C.7.6.3.1.2: two chrominance samples for each pair of pixels
            return rows * cols * 2 * bits // 8, 0
        return rows * cols * samples * bits // 8, 0

    def stored_frame(self, index: int) -> bytes:
        """The frame ``index`` in the stored transfer syntax."""
        self.check_index(index)
        if self.encapsulated:
            return self._encapsulated_frame(index)
        nbytes, nbits = self.frame_size()
        assert self.value_length is not None
        end_of_value = self.value_offset + self.value_length
        if nbits and (index * nbits) % 8:
            # 1-bit frames are packed back to back (PS3.5 8.1.1): realign this one
            first = self.value_offset + index * nbits // 8
            last = self.value_offset + ((index + 1) * nbits + 7) // 8
            if last > end_of_value:
                raise InvalidInput(f"truncated pixel data: frame {index} incomplete")
            chunk = np.frombuffer(self.buffer, np.uint8, last - first, first)
            bits = np.unpackbits(chunk, bitorder="little")
            start = (index * nbits) % 8
            return np.packbits(bits[start:start + nbits], bitorder="little").tobytes()
        start = self.value_offset + (index * nbits // 8 if nbits else self._held(index) * nbytes)
        if start + nbytes > end_of_value:
            raise InvalidInput(f"truncated pixel data: frame {index} incomplete")
        return self.buffer[start:start + nbytes]

    def _encapsulated_frame(self, index: int) -> bytes:
        ds = self.ds
        extended = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds and not self.ranged:
            extended = (bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths))
        fp = BytesIO(self.buffer)
        fp.seek(self.value_offset)
        held, frames = (0, 1) if self.ranged else (index, self.number_of_frames)
        try:
            return get_frame(fp, held, extended_offsets=extended, number_of_frames=frames)
        except _DECODE_ERRORS as exc:
            raise InvalidInput(f"frame {index} not found in the encapsulated pixel data: {exc}") from None

    def _native_monochrome(self, index: int) -> Pixels | None:
        """A little endian 8/16-bit monochrome frame read straight from the buffer, or None
        for anything else. pydicom's decoder returns native data as stored (no sign or
        unused-bit correction, ``correct_unused_bits`` being off), so this is its result
        without its per-call option parsing and validation (~0.3 ms of a CT render)."""
        tsyntax = self.transfer_syntax
        if self.encapsulated or not (tsyntax.is_little_endian or tsyntax.is_deflated):
            return None
        ds = self.ds
        if (self.pixel_keyword != "PixelData" or _int(ds, "SamplesPerPixel", 1) != 1
                or self.photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2")):
            return None
        bits, rows, cols = (_int(ds, "BitsAllocated", 0), _int(ds, "Rows", 0),
                            _int(ds, "Columns", 0))
        representation = _int(ds, "PixelRepresentation", 0)
        if bits not in (8, 16) or rows <= 0 or cols <= 0 or representation not in (0, 1):
            return None
        nbytes = rows * cols * bits // 8
        start = self.value_offset + self._held(index) * nbytes
        assert self.value_length is not None
        if start + nbytes > self.value_offset + self.value_length:
            raise InvalidInput(f"truncated pixel data: frame {index} incomplete")
        dtype = np.dtype(f"<{'i' if representation else 'u'}{bits // 8}")
        frame = np.frombuffer(self.buffer, dtype, rows * cols, start).reshape(rows, cols)
        return frame.astype(dtype.newbyteorder("="))  # a writeable copy, as pydicom's

    def decode(self, index: int, *, as_rgb: bool = True) -> tuple[Pixels, str]:
        """The decoded frame and the photometric interpretation of the returned array.

        Values are as stored (no Modality LUT), in native byte order. With ``as_rgb``
        (pydicom's default), YBR_* colour comes back as RGB.
        """
        self.check_index(index)
        native = self._native_monochrome(index)
        if native is not None:
            return native, self.photometric_interpretation
        tsyntax = self.transfer_syntax
        if tsyntax.is_deflated:
            tsyntax = ExplicitVRLittleEndian  # the buffer holds the inflated value
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            raise InvalidInput(f"pixel data in transfer syntax {tsyntax} cannot be decoded") from None
        try:
            opts = as_pixel_options(self.ds)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"invalid Image Pixel attributes: {exc}") from None
        opts["transfer_syntax_uid"] = tsyntax
        opts["pixel_keyword"] = self.pixel_keyword
        opts["number_of_frames"] = self.number_of_frames
        if self.pixel_vr:
            opts["pixel_vr"] = self.pixel_vr
        src: memoryview | BytesIO | bytes
        if self.value_length is None:
            src = BytesIO(self.buffer)
            src.seek(self.value_offset)
        elif _int(self.ds, "BitsAllocated", 0) == 1:
            # pydicom 3.0 misreads 1-bit frames that start mid-byte: give it the realigned frame
            src = self.stored_frame(index)
            opts["number_of_frames"], index = 1, 0
        else:
            src = memoryview(self.buffer)[self.value_offset:self.value_offset + self.value_length]
        held = index
        if self.ranged:  # one frame, read by range (encapsulated: as the one fragment)
            opts["number_of_frames"], held = 1, 0
            opts.pop("extended_offsets", None)
        try:
            arr, meta = decoder.as_array(src, index=held, validate=True, raw=not as_rgb, **opts)
        except _DECODE_ERRORS as exc:
            raise InvalidInput(f"cannot decode frame {index}: {exc}") from None
        if not arr.dtype.isnative:  # big endian data comes back as a big endian dtype
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr, str(meta.get("photometric_interpretation", self.photometric_interpretation))


def _pixel_element(raw: bytes, pos: int, ds: Dataset, tsyntax: UID,
                   total: int | None = None) -> tuple[str, str | None, int, int | None]:
    """(keyword, VR, value offset, value length or None) of the pixel data element at ``pos``."""
    implicit, little = ds.original_encoding
    little = tsyntax.is_little_endian if little is None else little
    implicit = tsyntax.is_implicit_VR if implicit is None else implicit
    endian = "<" if little else ">"
    if len(raw) < pos + 8:
        raise InvalidInput("the object has no pixel data")
    group, element = struct.unpack(endian + "HH", raw[pos:pos + 4])
    if group != 0x7FE0 or element not in _PIXEL_KEYWORDS:
        raise InvalidInput("the object has no pixel data")
    vr: str | None = None
    if not implicit and raw[pos + 4:pos + 6].isalpha():
        vr = raw[pos + 4:pos + 6].decode("ascii")
        (length,) = struct.unpack(endian + "I", raw[pos + 8:pos + 12])
        value_offset = pos + 12
    else:  # implicit VR, or a mislabelled implicit element in an explicit VR file
        (length,) = struct.unpack(endian + "I", raw[pos + 4:pos + 8])
        value_offset = pos + 8
    if length == _UNDEFINED_LENGTH:
        return _PIXEL_KEYWORDS[element], vr, value_offset, None
    if value_offset + length > (len(raw) if total is None else total):
        raise InvalidInput("truncated pixel data")
    return _PIXEL_KEYWORDS[element], vr, value_offset, length


def open_pixels(raw: bytes, *, pixel_data_offset: int | None = None,
                pixel_data_length: int | None = None) -> PixelSource:
    """Open ``raw`` (Part 10 bytes) for frame access, parsing only the header.

    The Pixel Data element is found right after the header, so the pixel data is never parsed.
    ``pixel_data_offset``/``pixel_data_length`` (from the index, see
    :func:`pacs.dicom.header.parse_header`; a length of None means encapsulated) are checked
    against it: a mismatch means a corrupt index or object and raises InvalidInput. They are
    ignored for deflated objects, whose offsets the index does not keep.
    """
    ds, tsyntax, pos = _read_header(raw)
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    if tsyntax.is_deflated:
        try:
            full = pydicom.dcmread(BytesIO(raw))
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error,
                NotImplementedError, OverflowError, AttributeError, OSError) as exc:
            raise InvalidInput(f"unreadable deflated DICOM data: {exc}") from None
        keyword = next((k for k in _PIXEL_KEYWORDS.values() if k in full), None)
        if keyword is None:
            raise InvalidInput("the object has no pixel data")
        value = bytes(full[keyword].value)
        return PixelSource(full, tsyntax, value, 0, len(value), keyword, full[keyword].VR, frames)
    keyword, vr, offset, length = _pixel_element(raw, pos, ds, tsyntax)
    if pixel_data_offset is not None and (pixel_data_offset, pixel_data_length) != (offset, length):
        raise InvalidInput("the indexed pixel data offset and length do not match the stored object")
    if length is None and not tsyntax.is_encapsulated:
        raise InvalidInput("undefined length pixel data in a native transfer syntax")
    return PixelSource(ds, tsyntax, raw, offset, length, keyword, vr, frames)


def open_frame(header: bytes, total: int, index: int | None,
               read: Callable[[int, int], bytes],
               fragments: Sequence[tuple[int, int]] | None = None) -> PixelSource | None:
    """Frame ``index`` (None: the middle one, a thumbnail's) of a stored object opened from
    ``header``, the object's bytes up to its pixel data value (or a little more), and
    ``read(offset, length)``, which fetches byte ranges from storage (``total``: the
    object's size). A render of one frame of a 1 GB multi-frame object then reads a few
    hundred KB, not 1 GB. Native little endian frames are found by their size; encapsulated
    ones through the Extended or the Basic Offset Table, or ``fragments`` (what
    :func:`frame_fragments` found in the whole object before). None where the frame is not
    found that way (1-bit, big endian or deflated data, encapsulated data without an offset
    table, or one that does not fit): read the object whole."""
    ds, tsyntax, pos = _read_header(header)
    if tsyntax.is_deflated or not tsyntax.is_little_endian:
        return None
    keyword, vr, value_offset, length = _pixel_element(header, pos, ds, tsyntax, total)
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    if index is None:
        index = frames // 2
    whole = PixelSource(ds, tsyntax, b"", value_offset, length, keyword, vr, frames)
    whole.check_index(index)

    def fetch(offset: int, size: int) -> bytes:
        data = header[offset:offset + size] if offset + size <= len(header) else read(offset, size)
        if len(data) != size:
            raise InvalidInput(f"truncated pixel data: frame {index} incomplete")
        return data

    if length is None:
        if not tsyntax.is_encapsulated:
            raise InvalidInput("undefined length pixel data in a native transfer syntax")
        fragment = _encapsulated_frame_bytes(ds, value_offset, total, frames, index, fetch)
        if fragment is None and fragments is not None and len(fragments) == frames:
            fragment = fetch(*fragments[index])
        if fragment is None:
            return None
        # the frame as the one fragment of a one-frame value: empty offset table, delimiter
        value = b"".join((_ITEM_LE, b"\0\0\0\0", _ITEM_LE, struct.pack("<I", len(fragment)),
                          fragment, _SEQUENCE_END_LE, b"\0\0\0\0"))
        return PixelSource(ds, tsyntax, value, 0, None, keyword, vr, frames, index, True)
    nbytes, nbits = whole.frame_size()
    if nbits:
        return None
    start = value_offset + index * nbytes
    if start + nbytes > value_offset + length:
        raise InvalidInput(f"truncated pixel data: frame {index} incomplete")
    return PixelSource(ds, tsyntax, fetch(start, nbytes), 0, nbytes, keyword, vr, frames,
                       index, True)


def _encapsulated_frame_bytes(ds: Dataset, value_offset: int, total: int, frames: int,
                              index: int, fetch: Callable[[int, int], bytes]) -> bytes | None:
    """The fragments of frame ``index`` of an encapsulated value at ``value_offset``,
    joined, found through the Extended Offset Table (PS3.5 A.4, one fragment per frame) or
    the Basic Offset Table; None without either, or when they do not fit the object."""
    item, bot_length = struct.unpack("<4sI", fetch(value_offset, 8))
    if item != _ITEM_LE:
        raise InvalidInput("encapsulated pixel data without its offset table item")
    first = value_offset + 8 + bot_length  # the first fragment's item
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = np.frombuffer(bytes(ds.ExtendedOffsetTable), "<u8")
        lengths = np.frombuffer(bytes(ds.ExtendedOffsetTableLengths), "<u8")
        if len(offsets) != frames or len(lengths) != frames:
            return None
        start, size = first + int(offsets[index]), int(lengths[index])
        if start + 8 + size > total:
            return None
        item, item_length = struct.unpack("<4sI", fetch(start, 8))
        if item != _ITEM_LE or item_length != size:
            return None
        return fetch(start + 8, size)
    if bot_length == 0 or bot_length != 4 * frames:
        return None
    table = np.frombuffer(fetch(value_offset + 8, bot_length), "<u4").astype(np.int64)
    if table[0] != 0 or np.any(np.diff(table) <= 0) or first + table[-1] + 8 > total:
        return None
    start = first + int(table[index])
    last = index + 1 == frames  # runs to the sequence delimiter, whatever follows the value
    data = fetch(start, (total if last else first + int(table[index + 1])) - start)
    pieces, pos = [], 0
    while pos + 8 <= len(data):
        tag, size = struct.unpack_from("<4sI", data, pos)
        if tag == _SEQUENCE_END_LE:
            return b"".join(pieces) if last else None
        if tag != _ITEM_LE or pos + 8 + size > len(data):
            return None
        pieces.append(data[pos + 8:pos + 8 + size])
        pos += 8 + size
    return None if last or pos != len(data) else b"".join(pieces)


def frame_fragments(raw: bytes) -> list[tuple[int, int]] | None:
    """(offset, length) in ``raw`` of each frame of an encapsulated multi-frame object with
    one fragment per frame and no offset table (what :func:`open_frame` cannot find
    alone); None for any other object. Only the items' headers are read."""
    source = open_pixels(raw)
    if not source.encapsulated or source.number_of_frames < 2:
        return None
    item, bot_length = struct.unpack_from("<4sI", raw, source.value_offset)
    if item != _ITEM_LE:
        return None
    pos, found = source.value_offset + 8 + bot_length, []
    while pos + 8 <= len(raw):
        tag, size = struct.unpack_from("<4sI", raw, pos)
        if tag == _SEQUENCE_END_LE:
            return found if len(found) == source.number_of_frames else None
        if tag != _ITEM_LE or pos + 8 + size > len(raw):
            return None
        found.append((pos + 8, size))
        pos += 8 + size
    return None


def frame_count(raw: bytes) -> int:
    """Number of frames (Number of Frames, or 1). Raises InvalidInput without pixel data."""
    return open_pixels(raw).number_of_frames


def stored_frame(raw: bytes, index: int, *, pixel_data_offset: int | None = None,
                 pixel_data_length: int | None = None) -> bytes:
    """Frame ``index`` (0-based) in the stored transfer syntax.

    Native: the frame's bytes as stored (big endian stays big endian; 1-bit frames that do not
    start on a byte boundary are realigned and padded to a whole byte). Encapsulated: the
    frame's fragments joined (PS3.18 8.7.3.3.2 "bulk data in the stored syntax").
    """
    return open_pixels(raw, pixel_data_offset=pixel_data_offset,
                       pixel_data_length=pixel_data_length).stored_frame(index)


def decoded_frame(raw: bytes, index: int) -> Pixels:
    """Frame ``index`` decoded to a numpy array of stored values, as ``ds.pixel_array[index]``."""
    arr, _ = open_pixels(raw).decode(index)
    return arr


def uncompressed_frame(raw: bytes, index: int) -> bytes:
    """Frame ``index`` as Explicit VR Little Endian native bytes.

    Little endian native frames are returned as stored; others are decoded and written little
    endian (1-bit data packed again, PS3.5 8.1.1). The photometric interpretation of the result
    is :func:`uncompressed_photometric_interpretation`.
    """
    return source_frame(open_pixels(raw), index, stored=False)


def source_frame(source: PixelSource, index: int, *, stored: bool) -> bytes:
    """Frame ``index`` of an opened object: as stored (:meth:`PixelSource.stored_frame`) or
    uncompressed (:func:`uncompressed_frame`)."""
    tsyntax = source.transfer_syntax
    if stored or not tsyntax.is_encapsulated and (tsyntax.is_little_endian or tsyntax.is_deflated):
        return source.stored_frame(index)
    arr, _ = source.decode(index)
    if _int(source.ds, "BitsAllocated", 0) == 1:
        return pack_bits(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def uncompressed_photometric_interpretation(raw: bytes) -> str:
    """Photometric Interpretation of the frames :func:`uncompressed_frame` returns.

    The stored value for little endian native objects; otherwise RGB for YBR_FULL,
    YBR_FULL_422, YBR_ICT and YBR_RCT (decoded as RGB), the stored value for the others.
    """
    ds, tsyntax, _ = _read_header(raw)
    stored = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    native_le = tsyntax.is_transfer_syntax and not tsyntax.is_encapsulated and (
        tsyntax.is_little_endian or tsyntax.is_deflated)
    if native_le or stored not in _DECODED_AS_RGB:
        return stored
    return "RGB"
