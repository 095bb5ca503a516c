"""The ObjectStore contract, run against every backend (a folder, S3 on a real SeaweedFS).

Then the faults each backend maps at its edge: a failing source stream, a full disk, a missing
root, an unreachable or restarted S3 server, and ``open_store`` URL parsing.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from urllib3.exceptions import MaxRetryError
from urllib3.response import HTTPResponse

import storage
from storage import (
    MAX_KEY_LENGTH,
    FolderStore,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    S3Options,
    S3Store,
    StorageError,
    StorageFull,
    StorageUnavailable,
    open_store,
)
from storage.folder import map_os_error
from storage.s3 import map_s3_error
from tests.infra import SeaweedServer, start_seaweedfs

MiB = 1 << 20
StoreFactory = Callable[..., ObjectStore]


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(params=["folder", "s3"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Make a checked store of the backend under test; S3 keyword arguments change options."""
    made: list[ObjectStore] = []

    def make(**s3_changes: Any) -> ObjectStore:
        store: ObjectStore
        if request.param == "folder":
            store = FolderStore(tmp_path / "store")
        else:
            bucket: str = request.getfixturevalue("s3_bucket")
            options: S3Options = request.getfixturevalue("s3_options")
            store = S3Store(bucket, dataclasses.replace(options, **s3_changes))
        store.check()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(new_store: StoreFactory) -> ObjectStore:
    return new_store()


class PatternStream:
    """``total`` deterministic bytes of unknown length, hashed as read; records read sizes."""

    def __init__(self, total: int, *, fail_after: int | None = None) -> None:
        self._block = random.Random(total).randbytes(MiB + 7)
        self._total = total
        self._pos = 0
        self._fail_after = fail_after
        self.sha256 = hashlib.sha256()
        self.largest_read = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise AssertionError("the whole stream was requested at once")
        self.largest_read = max(self.largest_read, size)
        if self._fail_after is not None and self._pos >= self._fail_after:
            raise ConnectionResetError(errno.ECONNRESET, "client went away")
        size = min(size, self._total - self._pos)
        start = self._pos % len(self._block)
        out = bytearray()
        while len(out) < size:
            out += self._block[start : start + size - len(out)]
            start = 0
        self._pos += size
        self.sha256.update(out)
        return bytes(out)


def sha256_of(chunks: Iterator[bytes]) -> tuple[str, int]:
    digest, total = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- the contract ----------------------------------------------------------------------------


def test_put_and_get_bytes(store: ObjectStore) -> None:
    store.put("ab/cd/object-1", b"hello")
    store.put("ab/cd/empty", b"")
    store.put("ab/cd/binary", bytes(range(256)))
    assert store.get("ab/cd/object-1") == b"hello"
    assert store.get("ab/cd/empty") == b""
    assert store.get("ab/cd/binary") == bytes(range(256))
    assert store.size("ab/cd/empty") == 0


def test_put_stream_of_known_length_reads_only_that_length(store: ObjectStore) -> None:
    store.put("k/known", io.BytesIO(b"0123456789tail"), length=10)
    assert store.get("k/known") == b"0123456789"


def test_put_stream_shorter_than_its_length_is_refused(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="ended"):
        store.put("k/short", io.BytesIO(b"abc"), length=10)
    assert not store.exists("k/short")


def test_put_big_stream_of_unknown_length_in_parts(new_store: StoreFactory) -> None:
    store = new_store(part_size=5 * MiB)
    source = PatternStream(40 * MiB + 123)
    store.put("big/stream", source)  # type: ignore[arg-type]
    assert store.size("big/stream") == 40 * MiB + 123
    assert sha256_of(store.iter_chunks("big/stream")) == (source.sha256.hexdigest(), 40 * MiB + 123)
    assert source.largest_read <= 5 * MiB + 1  # streamed in parts, never read whole


def test_overwrite_is_atomic(store: ObjectStore) -> None:
    old, new = b"a" * (2 * MiB), b"b" * (2 * MiB)
    store.put("atomic/key", old)
    seen: set[bytes] = set()
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            seen.add(store.get("atomic/key"))

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for i in range(12):
            store.put("atomic/key", new if i % 2 == 0 else old)
    finally:
        done.set()
        reader.join()
    assert seen <= {old, new}
    store.put("atomic/key", b"short")  # a smaller object leaves no tail of the bigger one
    assert store.get("atomic/key") == b"short"


def test_get_range(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4
    store.put("r/data", data)
    assert store.get_range("r/data", 0, 1024) == data
    assert store.get_range("r/data", 100, 50) == data[100:150]
    assert store.get_range("r/data", 1000, 100) == data[1000:]  # fewer at the end
    assert store.get_range("r/data", 1024, 5) == b""  # at the end
    assert store.get_range("r/data", 5000, 5) == b""  # beyond the end
    assert store.get_range("r/data", 10, 0) == b""
    with pytest.raises(ValueError):
        store.get_range("r/data", -1, 5)


def test_size_and_exists(store: ObjectStore) -> None:
    assert not store.exists("s/one")
    store.put("s/one", b"x" * 1234)
    assert store.exists("s/one")
    assert store.size("s/one") == 1234
    assert not store.exists("s")  # a folder of objects is not an object


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("d/one", b"1")
    store.delete("d/one")
    assert not store.exists("d/one")
    store.delete("d/one")
    store.delete("never/was")


def test_keys_by_prefix(store: ObjectStore) -> None:
    for key in ("p/a/1", "p/a/2", "p/ab/3", "p/b/4", "q/5"):
        store.put(key, key.encode())
    assert set(store.keys()) == {"p/a/1", "p/a/2", "p/ab/3", "p/b/4", "q/5"}
    assert set(store.keys("p/a/")) == {"p/a/1", "p/a/2"}
    assert set(store.keys("p/a")) == {"p/a/1", "p/a/2", "p/ab/3"}
    assert set(store.keys("p/b/4")) == {"p/b/4"}
    assert set(store.keys("z")) == set()
    for bad in ("../", "/p", "p/../q", "P/"):
        with pytest.raises(InvalidKey):
            list(store.keys(bad))


def test_iter_chunks(store: ObjectStore) -> None:
    data = random.Random(7).randbytes(2 * MiB + MiB // 2)
    store.put("c/data", data)
    chunks = list(store.iter_chunks("c/data", chunk_size=MiB))
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= MiB
    store.put("c/empty", b"")
    assert b"".join(store.iter_chunks("c/empty")) == b""


MISSING_OPERATIONS: dict[str, Callable[[ObjectStore, str], object]] = {
    "get": lambda s, k: s.get(k),
    "size": lambda s, k: s.size(k),
    "get_range": lambda s, k: s.get_range(k, 0, 10),
    "get_range_empty": lambda s, k: s.get_range(k, 0, 0),
    "iter_chunks": lambda s, k: next(s.iter_chunks(k)),
}


@pytest.mark.parametrize("operation", MISSING_OPERATIONS)
def test_missing_key_is_object_not_found(store: ObjectStore, operation: str) -> None:
    store.put("m/present", b"x")
    for key in ("m/absent", "m"):  # no object, and a folder of objects
        with pytest.raises(ObjectNotFound):
            MISSING_OPERATIONS[operation](store, key)


def test_iter_chunks_raises_on_first_next(store: ObjectStore) -> None:
    chunks = store.iter_chunks("m/absent")
    with pytest.raises(ObjectNotFound):
        next(chunks)


BAD_KEYS = ["../x", "/abs", "A/Upper", "a//b", ".hidden", "", "a/../b", "a/", "a b", "a\\b"]
BAD_KEYS += ["a/.tmp-1", "é", "a" * (MAX_KEY_LENGTH + 1)]
KEY_OPERATIONS: dict[str, Callable[[ObjectStore, str], object]] = {
    "put": lambda s, k: s.put(k, b"x"),
    "put_stream": lambda s, k: s.put(k, io.BytesIO(b"x")),
    "get": lambda s, k: s.get(k),
    "size": lambda s, k: s.size(k),
    "exists": lambda s, k: s.exists(k),
    "delete": lambda s, k: s.delete(k),
    "get_range": lambda s, k: s.get_range(k, 0, 1),
    "iter_chunks": lambda s, k: next(s.iter_chunks(k)),
}


@pytest.mark.parametrize("operation", KEY_OPERATIONS)
def test_invalid_keys_are_refused(store: ObjectStore, operation: str) -> None:
    for key in BAD_KEYS:
        with pytest.raises(InvalidKey):
            KEY_OPERATIONS[operation](store, key)
    assert list(store.keys()) == []


def test_concurrent_puts(store: ObjectStore) -> None:
    def put(i: int) -> None:
        store.put(f"t/{i % 4}/obj-{i}", f"object {i}".encode() * 1000)
        store.put("t/shared", io.BytesIO(f"shared {i}".encode() * 1000))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, range(40)))
    for i in range(40):
        assert store.get(f"t/{i % 4}/obj-{i}") == f"object {i}".encode() * 1000
    assert store.get("t/shared") in {f"shared {i}".encode() * 1000 for i in range(40)}
    assert len(set(store.keys("t/"))) == 41


def test_failing_source_stream_raises_its_own_error_and_stores_nothing(
    new_store: StoreFactory,
) -> None:
    store = new_store(part_size=5 * MiB)
    store.put("f/kept", b"old")
    for key, fail_after in (("f/new", 0), ("f/kept", 3 * MiB), ("f/multipart", 11 * MiB)):
        with pytest.raises(ConnectionResetError, match="client went away"):
            store.put(key, PatternStream(20 * MiB, fail_after=fail_after))  # type: ignore[arg-type]
    assert store.get("f/kept") == b"old"
    assert set(store.keys()) == {"f/kept"}


def test_check_and_url(store: ObjectStore) -> None:
    store.check()
    store.check()
    assert isinstance(store, ObjectStore)
    assert "secret" not in store.url and store.url


# -- folder ----------------------------------------------------------------------------------


def test_folder_layout_and_no_temp_files_after_failures(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    store.put("ab/cd/key", b"data")
    assert (tmp_path / "ab" / "cd" / "key").read_bytes() == b"data"
    with pytest.raises(ConnectionResetError):
        store.put("ab/cd/other", PatternStream(3 * MiB, fail_after=MiB))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.put("ab/cd/short", io.BytesIO(b"abc"), length=4)
    assert files_under(tmp_path) == ["ab/cd/key"]


def test_folder_enospc_is_storage_full_and_keeps_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FolderStore(tmp_path)
    store.put("full/key", b"old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)  # NFS and others report ENOSPC at fsync
    with pytest.raises(StorageFull):
        store.put("full/key", b"new")
    monkeypatch.undo()
    assert store.get("full/key") == b"old"
    assert files_under(tmp_path) == ["full/key"]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, StorageFull),
        (errno.EDQUOT, StorageFull),
        (errno.EACCES, StorageUnavailable),
        (errno.EIO, StorageUnavailable),
        (errno.EROFS, StorageUnavailable),
        (errno.ENOENT, StorageUnavailable),
    ],
)
def test_folder_os_error_mapping(code: int, expected: type[StorageError]) -> None:
    assert type(map_os_error(OSError(code, os.strerror(code)), "k")) is expected


def test_folder_missing_root_is_unavailable_until_check(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "not-mounted")
    with pytest.raises(StorageUnavailable):
        store.put("a/b", b"x")
    with pytest.raises(StorageUnavailable):
        store.get("a/b")
    with pytest.raises(StorageUnavailable):
        list(store.keys())
    assert not (tmp_path / "not-mounted").exists()  # never created behind the caller's back
    store.check()
    store.put("a/b", b"x")
    assert list(store.keys()) == ["a/b"]


def test_folder_check_fails_when_root_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageUnavailable):
        FolderStore(tmp_path / "file").check()


def test_folder_object_and_folder_names_cannot_collide(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    store.put("a", b"object")
    with pytest.raises(InvalidKey):
        store.put("a/b", b"x")
    store.put("c/d", b"x")
    with pytest.raises(InvalidKey):
        store.put("c", b"x")
    assert sorted(store.keys()) == ["a", "c/d"]


# -- S3 --------------------------------------------------------------------------------------


def test_s3_creates_its_bucket(seaweedfs: SeaweedServer, s3_bucket: str) -> None:
    client = seaweedfs.client()
    assert not client.bucket_exists(s3_bucket)
    S3Store(s3_bucket, seaweedfs.options()).put("a/b", b"x")
    assert client.bucket_exists(s3_bucket)


def test_s3_prefixes_share_a_bucket(seaweedfs: SeaweedServer, s3_bucket: str) -> None:
    one = S3Store(s3_bucket, seaweedfs.options(prefix="one/"))
    two = S3Store(s3_bucket, seaweedfs.options(prefix="two"))
    one.put("a/b", b"1")
    two.put("a/b", b"2")
    assert (one.get("a/b"), two.get("a/b")) == (b"1", b"2")
    assert list(one.keys()) == ["a/b"]
    names = {o.object_name for o in seaweedfs.client().list_objects(s3_bucket, recursive=True)}
    assert names == {"one/a/b", "two/a/b"}


def test_s3_unreachable_endpoint_is_unavailable_within_seconds() -> None:
    options = S3Options(f"127.0.0.1:{closed_port()}", "key", "secretsecret", secure=False)
    store = S3Store("pacs", options)
    started = time.monotonic()
    for operation in (store.check, lambda: store.put("a/b", b"x"), lambda: store.get("a/b")):
        with pytest.raises(StorageUnavailable):
            operation()
    # a guard against minio's default 5-minute timeouts, not a performance assertion
    assert time.monotonic() - started < 30


def test_s3_wrong_credentials_are_unavailable(seaweedfs: SeaweedServer, s3_bucket: str) -> None:
    with pytest.raises(StorageUnavailable, match="SignatureDoesNotMatch|AccessDenied"):
        S3Store(s3_bucket, seaweedfs.options(secret_key="not-the-secret")).check()


def test_s3_server_down_then_restarted(tmp_path: Path) -> None:
    server = start_seaweedfs(tmp_path)
    try:
        store = S3Store("restart", server.options(connect_timeout=1.0, retries=1))
        store.put("kept/key", b"before")
        server.kill()
        for operation in (
            lambda: store.get("kept/key"),
            lambda: store.put("new/key", b"x"),
            lambda: store.exists("kept/key"),
            lambda: list(store.keys()),
            store.check,
        ):
            with pytest.raises(StorageUnavailable):
                operation()
        server.restart()
        assert store.get("kept/key") == b"before"
        store.put("new/key", b"after")
        assert sorted(store.keys()) == ["kept/key", "new/key"]
    finally:
        server.stop()


def _s3_error(code: str) -> Exception:
    from minio.error import S3Error

    return S3Error(HTTPResponse(status=400), code, "message", "/b/k", "req", "host")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (lambda: _s3_error("NoSuchKey"), ObjectNotFound),
        (lambda: _s3_error("EntityTooLarge"), StorageFull),
        (lambda: _s3_error("XMinioStorageFull"), StorageFull),
        (lambda: _s3_error("AccessDenied"), StorageUnavailable),
        (lambda: _s3_error("InternalError"), StorageUnavailable),
        (lambda: MaxRetryError(None, "/b/k", ConnectionRefusedError()), StorageUnavailable),  # type: ignore[arg-type]
        (lambda: ConnectionResetError(), StorageUnavailable),
    ],
)
def test_s3_error_mapping(error: Callable[[], Exception], expected: type[StorageError]) -> None:
    assert type(map_s3_error(error(), "k")) is expected


# -- open_store and the import boundary ------------------------------------------------------


def test_open_store_urls(tmp_path: Path) -> None:
    options = S3Options("s3.example:9000", "key", "secret")
    folder = open_store(f"file://{tmp_path}/blobs")
    assert isinstance(folder, FolderStore) and folder.url == (tmp_path / "blobs").as_uri()
    assert isinstance(open_store(str(tmp_path)), FolderStore)
    relative = open_store("file://pacs-data/blobs")
    assert isinstance(relative, FolderStore) and relative.root == Path.cwd() / "pacs-data/blobs"
    s3 = open_store("s3://archive/pacs/blobs", options)
    assert isinstance(s3, S3Store) and s3.url == "https://s3.example:9000/archive/pacs/blobs/"
    assert open_store("s3://archive", options).url == "https://s3.example:9000/archive/"
    with pytest.raises(ValueError, match="S3 options"):
        open_store("s3://archive")
    with pytest.raises(ValueError, match="unknown storage URL scheme 'ftp'"):
        open_store("ftp://host/x")
    with pytest.raises(ValueError, match="bucket"):
        open_store("s3://A_bad_bucket", options)
    with pytest.raises(ValueError, match="host:port"):
        S3Options("https://s3.example", "key", "secret")


def test_storage_imports_no_archive_dicom_or_sql() -> None:
    code = "import json, sys, storage; print(json.dumps(sorted(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not loaded & {"pacs", "pydicom", "sqlalchemy", "dicom_scp", "viewer_api"}


# -- objects written as they arrive (stage) ----------------------------------------------------


def test_stage_where_the_store_can(store: ObjectStore) -> None:
    """The folder store writes piece by piece; a store that cannot (S3 without its spool)
    says so with None and is written with put."""
    staged = storage.stage(store, "ab/staged")
    if isinstance(store, FolderStore):
        assert staged is not None
        staged.abort()
    else:
        assert staged is None
    with pytest.raises(InvalidKey):
        storage.stage(FolderStore(Path("/nonexistent")), "../escape")


def test_folder_stage_commit_and_abort(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    store.check()
    staged = store.stage("20261124/a/one.dcm")
    staged.write([b"head", memoryview(b"-body-")])
    staged.write([b"x" * MiB])
    assert not store.exists("20261124/a/one.dcm")  # invisible until committed
    assert list(store.keys()) == []
    staged.commit()
    assert store.get("20261124/a/one.dcm") == b"head-body-" + b"x" * MiB
    staged.abort()  # nothing after a commit
    assert store.exists("20261124/a/one.dcm")
    with pytest.raises(StorageUnavailable):
        staged.write([b"late"])
    other = store.stage("20261124/a/two.dcm")
    other.write([b"never committed"])
    other.abort()
    other.abort()
    with pytest.raises(StorageUnavailable):
        other.commit()
    dropped = store.stage("20261124/b/three.dcm")
    dropped.write([b"forgotten"])
    del dropped  # dropped without commit or abort: removed too
    assert files_under(tmp_path) == ["20261124/a/one.dcm"]


def test_folder_stage_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable):
        FolderStore(tmp_path / "missing").stage("ab/key")
    store = FolderStore(tmp_path / "root")
    store.check()
    store.put("ab/cd", b"an object")
    with pytest.raises(InvalidKey):
        store.stage("ab/cd/below-an-object")
    store.put("ef/gh/key", b"x")
    staged = store.stage("ef/gh")  # a folder of other objects: refused when committed
    staged.write([b"y"])
    with pytest.raises(InvalidKey):
        staged.commit()
    assert files_under(tmp_path / "root") == ["ab/cd", "ef/gh/key"]
