"""The object-store contract: bytes under opaque keys.

The archive core (``pacs``) generates every key (a random UUID fanned out in folders), so no
DICOM UID or user input ever becomes a path. This package knows nothing of DICOM, SQL or the
archive; it only stores and returns bytes. Every backend passes the same contract tests
(``tests/storage/test_contract.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import BinaryIO, NoReturn, Protocol, runtime_checkable

_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")
MAX_KEY_LENGTH = 512


class StorageError(Exception):
    """Base class of every storage failure."""


class ObjectNotFound(StorageError):
    """The key holds no object."""


class StorageUnavailable(StorageError):
    """The store cannot be reached or refused the operation; the caller may retry later."""


class StorageFull(StorageError):
    """The store has no space left (ENOSPC, quota exceeded)."""


class InvalidKey(StorageError, ValueError):
    """The key is not of the safe form ``segment(/segment)*`` with ``[a-z0-9._-]`` segments."""


class SourceStreamFailed(Exception):
    """Internal: the caller's ``data`` stream raised while a backend was reading it.

    Backends wrap the stream's own exception in this so that their ``OSError`` mapping does not
    mistake, say, a broken client socket for an unavailable store, then re-raise the original
    with :meth:`reraise`. Never escapes a backend.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error

    def reraise(self) -> NoReturn:
        raise self.error from self.error.__cause__


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`InvalidKey`.

    Keys are lower-case ASCII segments separated by ``/``; no segment starts with a dot, so
    ``..`` and hidden names can never appear.
    """
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY_RE.match(key):
        raise InvalidKey(f"invalid object key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start a safe key (``""``, ``"ab"``, ``"ab/"``, ``"ab/c"``).

    Everything before the last ``/`` must be a valid key, so a prefix can never climb out of the
    store (``../``) or name hidden entries.
    """
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LENGTH or prefix.startswith("/"):
        raise InvalidKey(f"invalid key prefix: {prefix!r}")
    folder, _, last = prefix.rpartition("/")
    if (folder and not _KEY_RE.match(folder)) or (last and not _KEY_RE.match(last)):
        raise InvalidKey(f"invalid key prefix: {prefix!r}")
    return prefix


@runtime_checkable
class ObjectStore(Protocol):
    """Bytes by key. Implementations are thread-safe."""

    @property
    def url(self) -> str:
        """Where the objects live, without secrets (for logs and ``pacs verify``)."""
        ...

    def put(self, key: str, data: bytes | BinaryIO, length: int = -1) -> None:
        """Store ``data`` under ``key``; durable when this returns (fsync / S3 acknowledged).

        ``data`` is bytes or a readable binary stream of ``length`` bytes (-1: read to EOF,
        streamed in parts, never held whole in memory). Overwrites an existing object
        atomically: a reader sees the old or the new object, never a mix.
        """
        ...

    def get(self, key: str) -> bytes:
        """The whole object; :class:`ObjectNotFound` when missing."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream the object in chunks; :class:`ObjectNotFound` (raised on the first ``next``)."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes starting at ``offset`` (fewer at the end of the object)."""
        ...

    def size(self, key: str) -> int:
        """Size in bytes; :class:`ObjectNotFound` when missing."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix``, in no particular order."""
        ...

    def check(self) -> None:
        """Raise :class:`StorageUnavailable` unless the store is reachable and writable."""
        ...

    def close(self) -> None: ...


class Staged(Protocol):
    """An object being written under a key chosen in advance, piece by piece as it arrives
    (a C-STORE data set off the network): invisible until :meth:`commit`, which makes it
    durable under the key (what ``put`` does), or gone after :meth:`abort`. Used by one
    thread at a time; exactly one of commit or abort ends it."""

    key: str

    def write(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Append ``pieces``; the store may start writing them to disk at once."""
        ...

    def open_reader(self) -> BinaryIO:
        """A new read-only stream of everything written so far, from its first byte (the
        caller closes it; it stays readable after commit). Raises a storage error."""
        ...

    def commit(self) -> None:
        """Make the object durable under its key (as ``put``); raises a storage error."""
        ...

    def abort(self) -> None:
        """Drop what was written (never raises; idempotent, a no-op after commit)."""
        ...


def stage(store: object, key: str) -> Staged | None:
    """Start writing ``key`` piece by piece if ``store`` can (a ``stage(key)`` method: the
    folder store), else None: the caller uses ``put``. The S3 spool does not: with upload
    threads in the same process the writes' extra releases of the interpreter lock slowed
    four associations by a quarter, and with uploads in a process of their own it measured
    no faster than ``put`` (docs/performance.md)."""
    method = getattr(store, "stage", None)
    return method(check_key(key)) if method is not None else None
