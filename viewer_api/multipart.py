"""multipart/related (RFC 2387) for DICOMweb: a streaming writer for WADO-RS answers and a
streaming reader for STOW-RS uploads (parts spooled to temporary files, never the whole
body in memory)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO

from python_multipart.multipart import MultipartParser

from viewer_api.errors import UnsupportedMediaType

SPOOL_IN_MEMORY = 8 << 20


def new_boundary() -> str:
    return uuid.uuid4().hex


def related_content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    ts = f";transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'.replace(
        f'type="{part_type}"', f'type="{part_type}"{ts}')


def write_parts(parts: Iterable[tuple[bytes, dict[str, str]]], boundary: str) -> Iterator[bytes]:
    """Yield a multipart/related body part by part (each part's bytes produced lazily)."""
    for body, headers in parts:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        yield f"--{boundary}\r\n{head}\r\n".encode()
        yield body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Media type and parameters (lower-case names, quotes removed)."""
    media, *params = [p.strip() for p in value.split(";")]
    out: dict[str, str] = {}
    for param in params:
        if "=" in param:
            k, _, v = param.partition("=")
            out[k.strip().lower()] = v.strip().strip('"')
    return media.lower(), out


class _Collector:
    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], IO[bytes]]] = []
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._file: IO[bytes] | None = None

    def on_part_begin(self) -> None:
        self._headers = {}
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._file is not None
        self._file.write(data[start:end])

    def on_part_end(self) -> None:
        assert self._file is not None
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


async def read_parts(content_type: str, body: AsyncIterator[bytes]) -> list[tuple[dict[str, str], IO[bytes]]]:
    """The parts of a multipart/related body: (headers, file positioned at 0) each."""
    media, params = parse_content_type(content_type)
    if media != "multipart/related" or "boundary" not in params:
        raise UnsupportedMediaType("expected multipart/related with a boundary")
    collector = _Collector()
    callbacks = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
        "on_header_end")}
    parser = MultipartParser(params["boundary"], callbacks)  # type: ignore[arg-type]
    async for chunk in body:
        parser.write(chunk)
    parser.finalize()
    return collector.parts
