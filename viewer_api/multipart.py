"""multipart/related (RFC 2387) for DICOMweb: a streaming writer for WADO-RS answers and a
streaming reader for STOW-RS uploads (parts spooled to temporary files, never the whole
body in memory)."""

from __future__ import annotations

import io
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from python_multipart.multipart import MultipartParser

from viewer_api.errors import UnsupportedMediaType

if TYPE_CHECKING:
    from pacs.ingest import Staging

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY = 8 << 20
FLUSH_AT = 1 << 20  # bytes of a multipart answer gathered before they are sent


def new_boundary() -> str:
    return uuid.uuid4().hex


def related_content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    ts = f";transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'.replace(
        f'type="{part_type}"', f'type="{part_type}"{ts}')


def write_parts(parts: Iterable[tuple[bytes | Iterable[bytes], dict[str, str]]],
                boundary: str, flush_at: int = FLUSH_AT) -> Iterator[bytes]:
    """Yield a multipart/related body part by part; a part's body is bytes or an iterable of
    chunks, streamed as it comes (each part's bytes produced lazily).

    Pieces are gathered up to ``flush_at`` bytes before they are yielded: the server sends
    each yielded piece from a worker thread (one hand-over per piece), so a series of small
    objects would otherwise cost three hand-overs per instance. At most ``flush_at`` plus
    one chunk is held in memory."""
    pending: list[bytes] = []
    size = 0

    def add(piece: bytes) -> Iterator[bytes]:
        nonlocal size
        pending.append(piece)
        size += len(piece)
        if size >= flush_at:
            yield b"".join(pending)
            pending.clear()
            size = 0

    for body, headers in parts:
        yield from add(part_head(boundary, headers))
        if isinstance(body, bytes | bytearray | memoryview):
            yield from add(bytes(body))
        else:
            for chunk in body:
                yield from add(chunk)
        yield from add(b"\r\n")
    pending.append(closing(boundary))
    yield b"".join(pending)


def part_head(boundary: str, headers: dict[str, str]) -> bytes:
    """The delimiter and headers that start a part (its body follows, then CRLF)."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"--{boundary}\r\n{head}\r\n".encode()


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def body_length(boundary: str, parts: Iterable[tuple[int, dict[str, str]]]) -> int:
    """Length of what :func:`write_parts` writes for parts of these (length, headers)."""
    return sum(len(part_head(boundary, headers)) + length + 2
               for length, headers in parts) + len(closing(boundary))


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Media type and parameters (lower-case names, quotes removed)."""
    media, *params = [p.strip() for p in value.split(";")]
    out: dict[str, str] = {}
    for param in params:
        if "=" in param:
            k, _, v = param.partition("=")
            out[k.strip().lower()] = v.strip().strip('"')
    return media.lower(), out


class TooLarge:
    """Marks a part whose body exceeded the size limit: the rest of it was discarded."""

    def __init__(self, size: int) -> None:
        self.size = size


class StagedPart:
    """A part too big for memory, written to the store as it arrived (``pacs.ingest.Staging``,
    the folder store) instead of a temporary file: the ingest reads it back from there
    (:meth:`open`) and commits it, so its bytes go to disk once. ``failure``: the store
    failed while it arrived (the rest was dropped)."""

    def __init__(self, staging: Staging) -> None:
        self.staging: Staging | None = staging
        self.failure: Exception | None = None
        self._stream: IO[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self.staging is None:
            return
        try:
            self.staging.write(data)
        except Exception as exc:  # noqa: BLE001 - reported as this part's failure
            log.error("writing an uploaded part to the store failed: %s", exc)
            self.failure = exc
            self.staging.abort()
            self.staging = None

    def open(self) -> IO[bytes]:
        """The part's bytes from the first; raises the store's error."""
        if self.failure is not None:
            raise self.failure
        assert self.staging is not None
        if self._stream is None:
            self._stream = cast(IO[bytes], self.staging.open_reader())
        self._stream.seek(0)
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self.staging is not None:
            self.staging.abort()  # nothing once committed


Body = IO[bytes] | TooLarge | StagedPart


class _Collector:
    def __init__(self, tmp_dir: Path | None, max_part_size: int,
                 stage: Callable[[], Staging | None] | None) -> None:
        self.parts: list[tuple[dict[str, str], Body]] = []
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._file: IO[bytes] | StagedPart | None = None
        self._size = 0
        self._tmp_dir = tmp_dir
        self._max = max_part_size
        self._stage = stage

    def on_part_begin(self) -> None:
        self._headers = {}
        self._size = 0
        self._file = io.BytesIO()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._file is None:
            return  # too large: discarded
        if 0 <= self._max < self._size:
            self._file.close()
            self._file = None
            return
        if isinstance(self._file, io.BytesIO) and self._size > SPOOL_IN_MEMORY:
            self._roll_over()
        self._file.write(data[start:end])

    def _roll_over(self) -> None:
        """Past ``SPOOL_IN_MEMORY``: to the store as it arrives if it can, else to a file."""
        assert isinstance(self._file, io.BytesIO)
        held = self._file.getvalue()
        staging = self._stage() if self._stage is not None else None
        if staging is not None:
            self._file = StagedPart(staging)
        else:
            self._file = cast(IO[bytes], tempfile.TemporaryFile(dir=self._tmp_dir))
        self._file.write(held)

    def on_part_end(self) -> None:
        if self._file is None:
            self.parts.append((self._headers, TooLarge(self._size)))
            return
        if not isinstance(self._file, StagedPart):
            self._file.seek(0)
        self.parts.append((self._headers, self._file))
        self._file = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field = self._value = b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for _, body in self.parts:
            if not isinstance(body, TooLarge):
                body.close()


async def read_parts(content_type: str, body: AsyncIterator[bytes], tmp_dir: Path | None = None,
                     max_part_size: int = -1, stage: Callable[[], Staging | None] | None = None
                     ) -> list[tuple[dict[str, str], Body]]:
    """The parts of a multipart/related body: (headers, file positioned at 0) each.

    Each part is spooled while the body is parsed: in memory up to ``SPOOL_IN_MEMORY`` bytes,
    then written to the store as it arrives when ``stage`` gives a staging (a
    :class:`StagedPart`), else to an anonymous temporary file in ``tmp_dir``. A part longer
    than ``max_part_size`` (-1: no limit) is discarded as it arrives and listed as
    :class:`TooLarge`. The caller closes the bodies."""
    media, params = parse_content_type(content_type)
    if media != "multipart/related" or "boundary" not in params:
        raise UnsupportedMediaType("expected multipart/related with a boundary")
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    collector = _Collector(tmp_dir, max_part_size, stage)
    callbacks = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
        "on_header_end")}
    parser = MultipartParser(params["boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except BaseException:
        collector.close()
        raise
    return collector.parts
