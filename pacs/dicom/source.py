"""A Part 10 object to ingest, as bytes or as a seekable stream, never read whole.

:func:`open_source` accepts what the adapters have: bytes (small objects, ``pacs import``), a
file path, or a seekable binary stream (a C-STORE data set spooled to disk, a STOW-RS part)
with its length. :class:`Source` reads the header from the head only, hashes and compares in
chunks, so a 1 GB multi-frame object costs a few MiB of memory.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pacs.dicom.header import META_PREFIX, InstanceHeader, dataset_offset, parse_header, parse_header_file
from pacs.errors import InvalidInput

CHUNK_SIZE = 1 << 20


@dataclass
class Source:
    """The object's bytes (``data``, small objects) or a seekable stream of ``length`` bytes
    starting at offset ``start`` of ``fp``."""

    fp: BinaryIO
    length: int
    start: int = 0
    data: bytes | None = None

    def header(self) -> InstanceHeader:
        if self.data is not None:
            return parse_header(self.data)[0]
        self.fp.seek(self.start)
        return parse_header_file(self.fp, self.length)[0]

    def chunks(self, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The bytes from ``offset`` to the end, in chunks."""
        if self.data is not None:
            view = memoryview(self.data)
            for pos in range(offset, self.length, chunk_size):
                yield bytes(view[pos:pos + chunk_size])
            return
        self.fp.seek(self.start + offset)
        remaining = self.length - offset
        while remaining > 0:
            chunk = self.fp.read(min(chunk_size, remaining))
            if not chunk:
                raise InvalidInput(f"object ended {remaining} bytes early")
            remaining -= len(chunk)
            yield chunk

    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def dataset_offset(self) -> int:
        """Where the data set starts, after the File Meta Information (PS3.10 7.1)."""
        if self.data is not None:
            return dataset_offset(self.data)
        self.fp.seek(self.start)
        return dataset_offset(self.fp.read(META_PREFIX))

    def hashing_reader(self) -> HashingReader:
        """A reader of the whole object that computes its SHA-256 as it is read."""
        self.fp.seek(self.start)
        return HashingReader(self.fp, self.length)


class HashingReader(io.RawIOBase):
    """Reads ``length`` bytes of ``fp`` and hashes them on the way (for ``store.put``)."""

    def __init__(self, fp: BinaryIO, length: int) -> None:
        super().__init__()
        self._fp = fp
        self._remaining = length
        self._length = length
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._remaining if size is None or size < 0 else min(size, self._remaining)
        if want <= 0:
            return b""
        chunk = self._fp.read(want)
        self._digest.update(chunk)
        self._remaining -= len(chunk)
        return chunk

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self.read(len(buffer))
        memoryview(buffer)[:len(chunk)] = chunk
        return len(chunk)

    def hexdigest(self) -> str:
        """The SHA-256 of everything read; all ``length`` bytes must have been read."""
        if self._remaining:
            raise InvalidInput(f"object ended {self._remaining} bytes early")
        return self._digest.hexdigest()


class ChunkReader:
    """``read(n)`` over an iterator of chunks (a stored object from ``store.iter_chunks``),
    copying each byte once whatever the sizes of reads and chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._pos = 0

    def read(self, size: int) -> bytes:
        available = len(self._buffer) - self._pos
        if available >= size:
            out = self._buffer[self._pos:self._pos + size]
            self._pos += size
            return out
        parts = [self._buffer[self._pos:]] if available else []
        while available < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                self._buffer, self._pos = b"", 0
                return b"".join(parts)
            take = min(size - available, len(chunk))
            parts.append(chunk[:take] if take < len(chunk) else chunk)
            available += take
            self._buffer, self._pos = chunk, take
        return b"".join(parts)

    def skip(self, size: int) -> None:
        while size > 0:
            got = len(self.read(min(size, CHUNK_SIZE)))
            if not got:
                return
            size -= got


@contextmanager
def open_source(part10: bytes | BinaryIO | Path, length: int = -1) -> Iterator[Source]:
    """A :class:`Source` of ``part10`` (a path is opened and closed here; a stream is left
    open, at an undefined position)."""
    if isinstance(part10, bytes | bytearray | memoryview):
        data = bytes(part10)
        yield Source(io.BytesIO(data), len(data), 0, data)
        return
    if isinstance(part10, Path | str):
        try:
            fp = open(part10, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InvalidInput(f"cannot read {part10}: {exc}") from exc
        with fp:
            yield Source(fp, os.fstat(fp.fileno()).st_size)  # type: ignore[arg-type]
        return
    start = part10.tell()
    if length < 0:
        length = part10.seek(0, os.SEEK_END) - start
        part10.seek(start)
    yield Source(part10, length, start)
