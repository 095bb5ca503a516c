"""Object store on a local directory: one file per key, written durably and atomically.

A put writes a hidden temporary file in the key's directory, fsyncs it, renames it over the final
name (``os.replace`` is atomic on POSIX) and fsyncs the directory, so a reader sees the old or the
new object and a crash never leaves a half-written object under a valid key. Temporary names start
with ``.``, which no valid key segment does, so ``keys()`` can never return one.

The root is created by :meth:`FolderStore.check` (called at startup), never implicitly by a
write: a missing root (an unmounted volume) is reported as :class:`StorageUnavailable` instead of
silently filling the disk underneath the mount point. Empty key directories are not pruned.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from storage.base import (
    InvalidKey,
    ObjectNotFound,
    SourceStreamFailed,
    StorageError,
    StorageFull,
    StorageUnavailable,
    check_key,
    check_prefix,
)

CHUNK_SIZE = 1 << 20
_TEMP_PREFIX = ".tmp-"
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
log = logging.getLogger(__name__)


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """Linux's ``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` (not in ``os``):
    starts writing a file's dirty pages to disk without waiting, so the fsync that makes
    the object durable later finds them written. None elsewhere (nothing to gain)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return lambda fd, offset, length: function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_start_writeback = _writeback_starter()


def map_os_error(exc: OSError, what: str) -> StorageError:
    """The storage error for an ``OSError`` raised while accessing ``what``.

    ENOSPC and EDQUOT mean the store is full; everything else (EACCES, EIO, EROFS, a missing
    root...) means the store cannot serve the request now. A missing *object* is decided by the
    caller, which knows whether the root exists.
    """
    if exc.errno in _FULL_ERRNOS:
        return StorageFull(f"no space left for {what}: {exc}")
    return StorageUnavailable(f"cannot access {what}: {exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderStore:
    """Bytes by key in files under ``root`` (thread-safe: no shared mutable state)."""

    def __init__(self, root: Path | str, *, chunk_size: int = CHUNK_SIZE) -> None:
        self._root = Path(root).absolute()
        self._chunk_size = chunk_size

    @property
    def root(self) -> Path:
        return self._root

    @property
    def url(self) -> str:
        return self._root.as_uri()

    def __repr__(self) -> str:
        return f"FolderStore({str(self._root)!r})"

    # -- paths and errors -------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*check_key(key).split("/"))

    def _missing(self, key: str, exc: OSError) -> StorageError:
        """Map an error raised while reading ``key``: missing object unless the root is gone."""
        if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
            if not self._root.is_dir():
                return StorageUnavailable(f"store root {self._root} is missing")
            return ObjectNotFound(key)
        return map_os_error(exc, f"{self._root}: {key}")

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` below the root, fsyncing each parent that gained an entry."""
        if directory.is_dir():
            return
        if not self._root.is_dir():
            raise StorageUnavailable(f"store root {self._root} is missing (run check())")
        missing: list[Path] = []
        current = directory
        while current != self._root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    rel = path.relative_to(self._root)
                    raise InvalidKey(f"{rel} is an object, not a folder") from None
            _fsync_dir(path.parent)

    # -- writing ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO, length: int = -1) -> None:
        path = self._path(key)
        try:
            self._make_dirs(path.parent)
            temp = path.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
            with open(temp, "xb") as out:
                try:
                    self._write(out, data, length)
                    out.flush()
                    os.fsync(out.fileno())
                except BaseException:
                    temp.unlink(missing_ok=True)
                    raise
            try:
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)
        except SourceStreamFailed as failed:
            failed.reraise()  # the caller's stream failed: its own error, not a storage error
        except IsADirectoryError as exc:
            raise InvalidKey(f"{key!r} is a folder of other objects") from exc
        except NotADirectoryError as exc:
            raise InvalidKey(f"a parent of {key!r} is an object, not a folder") from exc
        except OSError as exc:
            raise map_os_error(exc, f"{self._root}: {key}") from exc

    def stage(self, key: str) -> StagedFile:
        """Write ``key`` piece by piece (:class:`storage.base.Staged`): a hidden temporary
        file in the key's folder whose pages go to disk as they are written; ``commit``
        fsyncs, renames and fsyncs the folder as ``put`` does."""
        path = self._path(key)
        try:
            self._make_dirs(path.parent)
            temp = path.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except IsADirectoryError as exc:
            raise InvalidKey(f"{key!r} is a folder of other objects") from exc
        except NotADirectoryError as exc:
            raise InvalidKey(f"a parent of {key!r} is an object, not a folder") from exc
        except OSError as exc:
            raise map_os_error(exc, f"{self._root}: {key}") from exc
        return StagedFile(key, path, temp, fd, f"{self._root}: {key}")

    def _write(self, out: BinaryIO, data: bytes | BinaryIO, length: int) -> None:
        """Copy ``data`` to ``out``; errors raised by the source stream propagate unchanged."""
        if isinstance(data, bytes | bytearray | memoryview):
            out.write(data)
            return
        remaining = length
        while remaining != 0:
            want = self._chunk_size if remaining < 0 else min(self._chunk_size, remaining)
            try:
                chunk = data.read(want)
            except Exception as exc:
                raise SourceStreamFailed(exc) from exc
            if not chunk:
                if remaining > 0:
                    raise ValueError(f"stream ended {remaining} bytes before the given length")
                return
            out.write(chunk)
            if remaining > 0:
                remaining -= len(chunk)

    def discard(self, key: str) -> None:
        """Remove a copy that exists elsewhere too (the S3 spool's, once uploaded): as
        ``delete`` but without the folder's fsync (a journal commit that every other fsync
        on the disk would wait for). After a crash the copy may be back: it is uploaded
        again, which changes nothing."""
        try:
            self._path(key).unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise map_os_error(exc, f"{self._root}: {key}") from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            if path.is_dir():
                return  # a folder of other objects: no object under this key
            raise map_os_error(exc, f"{self._root}: {key}") from exc
        try:
            _fsync_dir(path.parent)
        except OSError as exc:
            raise map_os_error(exc, f"{self._root}: {key}") from exc

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._missing(key, exc) from exc

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = self._path(key)  # an invalid key fails at the call, not at the first next()
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        return self._iter_chunks(key, path, chunk_size)

    def _iter_chunks(self, key: str, path: Path, chunk_size: int) -> Iterator[bytes]:
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise self._missing(key, exc) from exc
        with f:
            try:
                # objects are written once: read exactly what is there, in chunks. A read of
                # a whole chunk_size would allocate it for every object smaller than that,
                # fresh memory from the kernel each time (glibc maps blocks of a size not
                # freed lately): a 525 KB CT slice took 0.45-1.3 ms with read(1 MiB),
                # 0.11-0.17 ms with read(its size)
                remaining = os.fstat(f.fileno()).st_size
                while remaining > 0:
                    chunk = f.read(min(chunk_size, remaining))
                    if not chunk:
                        return  # shorter than it was (never, for a stored object)
                    remaining -= len(chunk)
                    yield chunk
            except OSError as exc:
                raise map_os_error(exc, f"{self._root}: {key}") from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length: {offset}, {length}")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                parts: list[bytes] = []
                remaining = length
                while remaining > 0:
                    chunk = f.read(remaining)
                    if not chunk:
                        break
                    parts.append(chunk)
                    remaining -= len(chunk)
                return b"".join(parts)
        except OSError as exc:
            raise self._missing(key, exc) from exc

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except OSError as exc:
            raise self._missing(key, exc) from exc
        if path.is_dir():
            raise ObjectNotFound(key)
        return st.st_size

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def keys(self, prefix: str = "") -> Iterator[str]:
        folder = check_prefix(prefix).rpartition("/")[0]
        return self._keys(prefix, self._root.joinpath(*folder.split("/")) if folder else self._root)

    def leftovers(self, older_than: float = 0.0) -> list[Path]:
        """Hidden temporary files (a write cut short by a crash or a kill) last modified
        more than ``older_than`` seconds ago; never objects, safe to delete."""
        if not self._root.is_dir():
            raise StorageUnavailable(f"store root {self._root} is missing")
        cutoff = time.time() - older_than
        found = []
        for directory, _folders, files in os.walk(self._root):
            for name in files:
                if name.startswith(_TEMP_PREFIX):
                    path = Path(directory, name)
                    try:
                        if path.stat().st_mtime <= cutoff:
                            found.append(path)
                    except FileNotFoundError:
                        continue  # committed or removed meanwhile
        return sorted(found)

    def _keys(self, prefix: str, start: Path) -> Iterator[str]:
        if not self._root.is_dir():
            raise StorageUnavailable(f"store root {self._root} is missing")
        stack = [start]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise map_os_error(exc, str(directory)) from exc
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = Path(entry.path).relative_to(self._root).as_posix()
                if entry.is_dir(follow_symlinks=False):
                    if rel.startswith(prefix) or prefix.startswith(rel + "/"):
                        stack.append(Path(entry.path))
                elif rel.startswith(prefix):
                    yield rel

    # -- lifecycle --------------------------------------------------------------------------

    def check(self) -> None:
        probe = self._root / f".check-{uuid.uuid4().hex}"
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            with open(probe, "xb") as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as exc:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
            raise StorageUnavailable(f"store root {self._root} is not writable: {exc}") from exc

    def close(self) -> None:
        pass


class StagedFile:
    """An object of a :class:`FolderStore` written piece by piece (see ``FolderStore.stage``)."""

    def __init__(self, key: str, path: Path, temp: Path, fd: int, what: str) -> None:
        self.key = key
        self._path, self._temp, self._fd, self._what = path, temp, fd, what
        self._written = 0
        self._done = False

    def write(self, pieces: Sequence[bytes | memoryview]) -> None:
        if self._done:
            raise StorageUnavailable(f"{self._what}: already committed or aborted")
        try:
            total = sum(len(piece) for piece in pieces)
            written = os.writev(self._fd, pieces)
            if written < total:  # short write (rare): the rest one piece at a time
                data = b"".join(pieces)[written:]
                while data:
                    data = data[os.write(self._fd, data):]
        except OSError as exc:
            raise map_os_error(exc, self._what) from exc
        if _start_writeback is not None:
            _start_writeback(self._fd, self._written, total)  # a hint: errors come at fsync
        self._written += total

    def open_reader(self) -> BinaryIO:
        if self._done:
            raise StorageUnavailable(f"{self._what}: already committed or aborted")
        try:
            return open(self._temp, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise map_os_error(exc, self._what) from exc

    def commit(self) -> None:
        if self._done:
            raise StorageUnavailable(f"{self._what}: already committed or aborted")
        self._done = True
        try:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
            os.replace(self._temp, self._path)
        except OSError as exc:
            self._temp.unlink(missing_ok=True)
            if isinstance(exc, IsADirectoryError):
                raise InvalidKey(f"{self.key!r} is a folder of other objects") from exc
            raise map_os_error(exc, self._what) from exc
        try:
            _fsync_dir(self._path.parent)
        except OSError as exc:
            raise map_os_error(exc, self._what) from exc

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            os.close(self._fd)
            self._temp.unlink(missing_ok=True)
        except OSError as exc:  # a leftover hidden temporary file, never a key
            log.warning("could not remove %s: %s", self._temp, exc)

    def __del__(self) -> None:  # dropped without commit or abort: no file, no descriptor left
        if not getattr(self, "_done", True):
            self.abort()
