"""The durable spool in front of a remote store: a delete during an upload leaves no orphan;
uploads in another process than the puts (a doorbell) lose nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import BinaryIO

from storage.folder import FolderStore
from storage.spooled import Doorbell, SpooledStore, run_uploads


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



def test_replaced_during_upload_uploads_the_new_bytes(tmp_path: Path) -> None:
    remote = GatedStore(tmp_path / "remote")
    remote.check()
    store = SpooledStore(FolderStore(tmp_path / "spool"), remote, workers=1)
    try:
        store.put("ab/object.dcm", b"old" * 100)
        assert remote.started.wait(10)
        store.put("ab/object.dcm", b"new" * 100)  # the upload has the old file open
        remote.gate.set()
        assert store.flush(10)
        assert remote.get("ab/object.dcm") == b"new" * 100
        assert list(store.spool.keys()) == []
    finally:
        remote.gate.set()
        store.close()


class Uploader:
    """What ``pacs serve``'s uploads process runs, on a thread: a store that uploads, fed
    by a doorbell."""

    def __init__(self, spool: Path, remote: FolderStore, doorbell: Doorbell,
                 rescan_every: float = 60.0, defer: float = 0.0) -> None:
        self.store = SpooledStore(FolderStore(spool), remote, workers=2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_uploads, args=(
            self.store, doorbell, self.stop, rescan_every, defer, 0.3))
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.store.close()


def test_puts_rung_to_another_uploader_land_and_leave_the_spool(tmp_path: Path) -> None:
    remote = FolderStore(tmp_path / "remote")
    remote.check()
    doorbell = Doorbell()
    writer = SpooledStore(FolderStore(tmp_path / "spool"), remote, doorbell=doorbell)
    writer.put("ab/one.dcm", b"1" * 1000)
    writer.put("cd/two.dcm", b"2" * 1000)
    assert writer.pending() == 2 and not remote.exists("ab/one.dcm")  # nobody uploads yet
    uploader = Uploader(tmp_path / "spool", remote, doorbell)
    try:
        assert writer.flush(10), f"{writer.pending()} still in the spool"
        writer.put("ef/three.dcm", b"3" * 1000)  # rung while the uploader runs
        assert writer.flush(10)
        assert [remote.get(k)[:1] for k in ("ab/one.dcm", "cd/two.dcm", "ef/three.dcm")] == [
            b"1", b"2", b"3"]
        assert writer.get("ef/three.dcm") == b"3" * 1000  # read from the remote store now
    finally:
        uploader.close()
        writer.close()


def test_a_full_doorbell_drops_rings_and_never_blocks(tmp_path: Path) -> None:
    doorbell = Doorbell()
    rings = 0
    while doorbell.ring(f"xx/{rings:020d}.dcm"):  # nobody reads: the pipe fills
        rings += 1
        assert rings < 1_000_000
    writer = SpooledStore(FolderStore(tmp_path / "spool"), FolderStore(tmp_path / "remote"),
                          doorbell=doorbell)
    writer.put("ab/lost.dcm", b"x" * 100)  # spooled; its ring dropped
    assert writer.get("ab/lost.dcm") == b"x" * 100 and writer.pending() == 1
    assert doorbell.wait(0)[:1] == [f"xx/{0:020d}.dcm"]
    writer.close()


def test_a_key_not_rung_is_found_by_the_rescan(tmp_path: Path) -> None:
    remote = FolderStore(tmp_path / "remote")
    remote.check()
    doorbell = Doorbell()
    writer = SpooledStore(FolderStore(tmp_path / "spool"), remote, doorbell=doorbell)
    uploader = Uploader(tmp_path / "spool", remote, doorbell, rescan_every=0.2)
    try:
        writer.spool.put("ab/lost.dcm", b"x" * 100)  # as if its ring had been dropped
        assert writer.flush(10)
        assert remote.get("ab/lost.dcm") == b"x" * 100
    finally:
        uploader.close()
        writer.close()


def test_delete_by_another_process_during_upload_leaves_no_remote_copy(tmp_path: Path) -> None:
    remote = GatedStore(tmp_path / "remote")
    remote.check()
    doorbell = Doorbell()
    writer = SpooledStore(FolderStore(tmp_path / "spool"), remote, doorbell=doorbell)
    uploader = Uploader(tmp_path / "spool", remote, doorbell)
    try:
        writer.put("ab/object.dcm", b"x" * 1000)
        assert remote.started.wait(10)
        writer.delete("ab/object.dcm")  # the uploader has the spool file open already
        remote.gate.set()
        assert uploader.store.flush(10)
        assert not remote.exists("ab/object.dcm") and not writer.exists("ab/object.dcm")
    finally:
        remote.gate.set()
        uploader.close()
        writer.close()


def test_uploaded_spool_copies_are_discarded_and_a_missing_one_is_fine(tmp_path: Path) -> None:
    spool = FolderStore(tmp_path / "spool")
    spool.check()
    spool.put("ab/object.dcm", b"x")
    spool.discard("ab/object.dcm")
    spool.discard("ab/object.dcm")  # gone already (deleted meanwhile): nothing to do
    spool.discard("ab")  # a folder is never an object
    assert not spool.exists("ab/object.dcm") and (tmp_path / "spool" / "ab").is_dir()


def test_two_uploaders_of_one_spool_take_turns_and_lose_nothing(tmp_path: Path) -> None:
    """``pacs serve``'s uploads and a ``pacs import`` beside it both find a spooled object:
    the second waits for the first, finds the file uploaded and dropped, and leaves the
    remote copy alone (it is not a delete)."""
    remote = GatedStore(tmp_path / "remote")
    remote.check()
    first = SpooledStore(FolderStore(tmp_path / "spool"), remote, workers=1)
    second = None
    try:
        first.put("ab/object.dcm", b"x" * 1000)
        assert remote.started.wait(10)  # first's upload is in flight
        second = SpooledStore(FolderStore(tmp_path / "spool"), remote, workers=1)  # resumes it
        assert second.pending() == 1
        remote.gate.set()
        assert first.flush(10) and second.flush(10)
        assert remote.get("ab/object.dcm") == b"x" * 1000
        assert list(first.spool.keys()) == []
    finally:
        remote.gate.set()
        first.close()
        if second is not None:
            second.close()


def _store_steadily(writer: SpooledStore, prefix: str, seconds: float) -> list[str]:
    """Put an object every 0.05 s for ``seconds`` (a modality's burst); the keys."""
    keys: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        keys.append(f"{prefix}/{len(keys):04d}.dcm")
        writer.put(keys[-1], b"x" * 100)
        time.sleep(0.05)
    return keys


def test_deferred_uploads_wait_for_a_pause_in_the_stores(tmp_path: Path) -> None:
    remote = FolderStore(tmp_path / "remote")
    remote.check()
    doorbell = Doorbell()
    writer = SpooledStore(FolderStore(tmp_path / "spool"), remote, doorbell=doorbell)
    uploader = Uploader(tmp_path / "spool", remote, doorbell, defer=30.0)
    try:
        keys = _store_steadily(writer, "ab", 1.5)
        assert not list(remote.keys()), "uploaded while objects kept arriving"
        assert writer.get(keys[0]) == b"x" * 100  # served from the spool meanwhile
        assert writer.flush(10), f"{writer.pending()} still in the spool after the pause"
        assert sorted(remote.keys()) == keys
    finally:
        uploader.close()
        writer.close()


def test_deferred_uploads_wait_no_longer_than_the_limit(tmp_path: Path) -> None:
    remote = FolderStore(tmp_path / "remote")
    remote.check()
    doorbell = Doorbell()
    writer = SpooledStore(FolderStore(tmp_path / "spool"), remote, doorbell=doorbell)
    uploader = Uploader(tmp_path / "spool", remote, doorbell, defer=0.5)
    try:
        keys: list[str] = []
        storing = threading.Thread(  # stores that never pause
            target=lambda: keys.extend(_store_steadily(writer, "cd", 3.0)))
        storing.start()
        time.sleep(2.0)
        landed = list(remote.keys())
        assert storing.is_alive() and landed, "nothing uploaded 1.5 s past the limit"
        storing.join()
        assert writer.flush(10)
        assert sorted(remote.keys()) == keys
    finally:
        uploader.close()
        writer.close()
