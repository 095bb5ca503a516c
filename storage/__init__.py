"""Bytes by opaque key: a local folder or an S3 bucket, behind one ``ObjectStore`` protocol.

This package knows nothing of DICOM, SQL or the archive (it never imports ``pacs``, ``pydicom``
or ``sqlalchemy``). ``open_store`` builds a store from a URL in the settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import unquote, urlsplit

from storage.base import (
    MAX_KEY_LENGTH,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    Staged,
    StorageError,
    StorageFull,
    StorageUnavailable,
    check_key,
    check_prefix,
    stage,
)
from storage.folder import FolderStore
from storage.s3 import S3Options, S3Store

__all__ = [
    "MAX_KEY_LENGTH",
    "FolderStore",
    "InvalidKey",
    "ObjectNotFound",
    "ObjectStore",
    "S3Options",
    "S3Store",
    "Staged",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "check_key",
    "check_prefix",
    "open_store",
    "stage",
]


def open_store(url: str, s3: S3Options | None = None) -> ObjectStore:
    """The store a URL names; nothing is touched until the first call (or ``check()``).

    - ``file:///abs/path``, ``file://relative/path`` or a plain path: a :class:`FolderStore`.
    - ``s3://bucket`` or ``s3://bucket/prefix``: an :class:`S3Store` reached through ``s3``
      (endpoint and credentials); a prefix in the URL replaces ``s3.prefix``.
    """
    if not url:
        raise ValueError("empty storage URL; use a path, file:///path or s3://bucket[/prefix]")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = unquote(parts.netloc + parts.path)  # file://relative/path keeps "relative"
        if not path:
            raise ValueError(f"no path in storage URL {url!r}")
        return FolderStore(Path(path))
    if scheme == "s3":
        if s3 is None:
            raise ValueError(
                f"storage URL {url!r} needs S3 options (endpoint, access key, secret key)"
            )
        if not parts.netloc:
            raise ValueError(f"no bucket in storage URL {url!r}; use s3://bucket[/prefix]")
        prefix = parts.path.strip("/")
        if prefix:
            s3 = dataclasses.replace(s3, prefix=prefix)
        try:
            return S3Store(parts.netloc, s3)
        except ValueError as exc:
            raise ValueError(f"invalid storage URL {url!r}: {exc}") from exc
    if scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
        return FolderStore(Path(url))  # a plain path (or a Windows drive letter)
    raise ValueError(
        f"unknown storage URL scheme {parts.scheme!r} in {url!r}; "
        "use a path, file:///abs/path, file://relative/path or s3://bucket[/prefix]"
    )
