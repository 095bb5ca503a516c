"""Object store on an S3 bucket (MinIO, AWS S3, a SeaweedFS S3 gateway) through ``minio``.

One ``Minio`` client (thread-safe) per store, on an urllib3 pool with short connect timeouts and
few retries, so a dead endpoint gives :class:`StorageUnavailable` within seconds instead of
minio's default five-minute timeouts. Streams larger than ``part_size`` go up as a multipart
upload in ``part_size`` parts, one at a time (at most about two parts in memory, whatever the
object's size); an S3 PUT is atomic, so readers never
see a partly overwritten object. The bucket is created on first use.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, cast

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error, ServerError
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE, check_bucket_name
from urllib3.exceptions import HTTPError
from urllib3.response import BaseHTTPResponse

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

log = logging.getLogger(__name__)

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchVersion"})
_FULL_CODES = frozenset(
    {
        "EntityTooLarge",
        "QuotaExceeded",
        "StorageFull",
        "InsufficientStorage",
        "XMinioStorageFull",
        "XMinioAdminBucketQuotaExceeded",
    }
)
# What minio and urllib3 raise when the server is unreachable, slow or answers an error.
_CLIENT_ERRORS = (MinioException, HTTPError, OSError)


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3 endpoint (no bucket: the bucket is the store's).

    ``endpoint`` is ``host:port`` and ``secure`` selects TLS; ``region`` None lets the client ask
    the server. ``prefix`` is prepended (with ``/``) to every key in the bucket. Streams of
    unknown length are uploaded in ``part_size`` parts (5 MiB to 5 GiB). ``connect_timeout``,
    ``read_timeout`` (seconds) and ``retries`` bound how long a dead endpoint can stall a call.
    """

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str | None = None
    secure: bool = True
    prefix: str = ""
    part_size: int = 16 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    retries: int = 2

    def __post_init__(self) -> None:
        if not self.endpoint or "://" in self.endpoint or "/" in self.endpoint:
            raise ValueError(
                f"S3 endpoint must be 'host:port' (got {self.endpoint!r}); "
                "use secure=True for https"
            )
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB, got {self.part_size}")
        prefix = self.prefix.strip("/")
        if prefix and not _PREFIX_RE.match(prefix):
            raise ValueError(f"invalid S3 key prefix: {self.prefix!r}")
        object.__setattr__(self, "prefix", prefix)


def map_s3_error(exc: Exception, what: str) -> StorageError:
    """The storage error for an exception raised by minio or urllib3 while accessing ``what``."""
    if isinstance(exc, S3Error):
        if exc.code in _NOT_FOUND_CODES:
            return ObjectNotFound(what)
        if exc.code in _FULL_CODES:
            return StorageFull(f"S3 {exc.code} for {what}: {exc.message}")
        return StorageUnavailable(f"S3 {exc.code} for {what}: {exc.message}")
    if isinstance(exc, ServerError) and exc.status_code == 507:
        return StorageFull(f"S3 insufficient storage for {what}: {exc}")
    return StorageUnavailable(f"S3 unavailable for {what}: {type(exc).__name__}: {exc}")


class _Source:
    """Reads at most ``length`` bytes of the caller's stream, tagging the stream's own errors."""

    def __init__(self, data: BinaryIO, length: int) -> None:
        self._data = data
        self._remaining = length

    def read(self, size: int = -1) -> bytes:
        if self._remaining == 0:
            return b""
        want = size
        if self._remaining > 0:
            want = self._remaining if size < 0 else min(size, self._remaining)
        try:
            chunk = self._data.read(want)
        except Exception as exc:
            raise SourceStreamFailed(exc) from exc
        if self._remaining > 0:
            if not chunk and want != 0:
                error = ValueError(f"stream ended {self._remaining} bytes before the given length")
                raise SourceStreamFailed(error)
            self._remaining -= len(chunk)
        return chunk


def _release(response: BaseHTTPResponse) -> None:
    response.close()
    response.release_conn()


class S3Store:
    """Bytes by key in ``bucket`` (under ``options.prefix``)."""

    def __init__(self, bucket: str, options: S3Options) -> None:
        check_bucket_name(bucket, strict=True)
        self._bucket = bucket
        self._options = options
        self._prefix = f"{options.prefix}/" if options.prefix else ""
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=options.connect_timeout, read=options.read_timeout),
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=options.retries,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
            ),
        )
        self._client = Minio(
            options.endpoint,
            access_key=options.access_key,
            secret_key=options.secret_key,
            secure=options.secure,
            region=options.region,
            http_client=self._http,
        )
        self._bucket_ready = False
        self._lock = threading.Lock()

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def url(self) -> str:
        scheme = "https" if self._options.secure else "http"
        return f"{scheme}://{self._options.endpoint}/{self._bucket}/{self._prefix}"

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    # -- helpers ----------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._prefix + check_key(key)

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except SourceStreamFailed as failed:
            failed.reraise()
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                self._bucket_ready = False  # deleted under us: recreate on next use
            raise map_s3_error(exc, what) from exc
        except _CLIENT_ERRORS as exc:
            raise map_s3_error(exc, what) from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._lock, self._mapped(f"bucket {self._bucket}"):
            if self._bucket_ready:
                return
            if not self._client.bucket_exists(self._bucket):
                try:
                    self._client.make_bucket(self._bucket, location=self._options.region)
                    log.info("created S3 bucket %s at %s", self._bucket, self._options.endpoint)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    # -- writing ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO, length: int = -1) -> None:
        name = self._name(key)
        self._ensure_bucket()
        stream: BinaryIO
        if isinstance(data, bytes | bytearray | memoryview):
            stream, size = io.BytesIO(data), memoryview(data).nbytes
        else:
            stream, size = cast(BinaryIO, _Source(data, length)), max(length, -1)
        with self._mapped(key):
            # one part at a time: minio's parallel uploads queue parts without bound, so a
            # stream read faster than the network would end up whole in memory
            self._client.put_object(
                self._bucket, name, stream, size, part_size=self._options.part_size,
                num_parallel_uploads=1,
            )

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._ensure_bucket()
        try:
            with self._mapped(key):
                self._client.remove_object(self._bucket, name)
        except ObjectNotFound:
            pass

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        name = self._name(key)
        self._ensure_bucket()
        with self._mapped(key):
            response = self._client.get_object(self._bucket, name)
            try:
                return response.read()
            finally:
                _release(response)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        name = self._name(key)  # an invalid key fails at the call, not at the first next()
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        return self._iter_chunks(key, name, chunk_size)

    def _iter_chunks(self, key: str, name: str, chunk_size: int) -> Iterator[bytes]:
        self._ensure_bucket()
        with self._mapped(key):
            response = self._client.get_object(self._bucket, name)
        try:
            while True:
                with self._mapped(key):
                    chunk = response.read(chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            _release(response)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        name = self._name(key)
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length: {offset}, {length}")
        if length == 0:
            self.size(key)  # ObjectNotFound when missing; minio reads length 0 as "to the end"
            return b""
        self._ensure_bucket()
        with self._mapped(key):
            try:
                response = self._client.get_object(self._bucket, name, offset=offset, length=length)
            except S3Error as exc:
                if exc.code == "InvalidRange":
                    return b""  # offset at or beyond the end of an existing object
                raise
            try:
                return response.read()
            finally:
                _release(response)

    def size(self, key: str) -> int:
        name = self._name(key)
        self._ensure_bucket()
        with self._mapped(key):
            return self._client.stat_object(self._bucket, name).size or 0

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def keys(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        return self._keys(prefix)

    def _keys(self, prefix: str) -> Iterator[str]:
        self._ensure_bucket()
        skip = len(self._prefix)
        with self._mapped(f"keys {prefix!r}"):
            listing = self._client.list_objects(
                self._bucket, prefix=self._prefix + prefix, recursive=True
            )
            for item in listing:
                name = item.object_name
                if name is None or item.is_dir:
                    continue
                key = name[skip:]
                try:
                    check_key(key)
                except InvalidKey:
                    continue  # not one of ours (a folder marker, a stray probe)
                yield key

    # -- lifecycle --------------------------------------------------------------------------

    def check(self) -> None:
        probe = f"{self._prefix}.pacs-check-{uuid.uuid4().hex}"
        try:
            self._ensure_bucket()
            with self._mapped(f"bucket {self._bucket}"):
                self._client.put_object(self._bucket, probe, io.BytesIO(b"ok"), 2)
                self._client.remove_object(self._bucket, probe)
        except StorageError as exc:
            if isinstance(exc, StorageUnavailable):
                raise
            raise StorageUnavailable(f"S3 store {self.url} is not writable: {exc}") from exc

    def close(self) -> None:
        self._http.clear()
