"""The durable spool in front of a remote store: a delete during an upload leaves no orphan."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

from storage.folder import FolderStore
from storage.spooled import SpooledStore


class GatedStore(FolderStore):
    """A real folder store whose writes wait for a gate (an upload caught in flight)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.started = threading.Event()
        self.gate = threading.Event()

    def put(self, key: str, data: bytes | BinaryIO, length: int = -1) -> None:
        self.started.set()
        assert self.gate.wait(10)
        super().put(key, data, length)


def test_delete_during_upload_leaves_no_remote_copy(tmp_path: Path) -> None:
    remote = GatedStore(tmp_path / "remote")
    remote.check()
    store = SpooledStore(FolderStore(tmp_path / "spool"), remote, workers=1)
    try:
        store.put("ab/object.dcm", b"x" * 1000)
        assert remote.started.wait(10)
        store.delete("ab/object.dcm")  # the upload has the spool file open already
        remote.gate.set()
        assert store.flush(10)
        assert not remote.exists("ab/object.dcm")
        assert not store.exists("ab/object.dcm")
    finally:
        remote.gate.set()
        store.close()


def test_large_stream_is_uploaded_whole(tmp_path: Path) -> None:
    remote = GatedStore(tmp_path / "remote")
    remote.gate.set()
    remote.check()
    store = SpooledStore(FolderStore(tmp_path / "spool"), remote, workers=1)
    try:
        with open(tmp_path / "source", "wb") as f:
            f.write(bytes(range(256)) * 40_000)
        with open(tmp_path / "source", "rb") as f:
            store.put("cd/large.dcm", f, 256 * 40_000)
        assert store.flush(10)
        assert remote.get("cd/large.dcm") == bytes(range(256)) * 40_000
    finally:
        store.close()

