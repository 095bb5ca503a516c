"""The ``pacs`` command as a user runs it: serve (and stop on a signal), import, demo, db."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.conftest import testdata
from tests.infra import free_port

PACS = str(Path(sys.executable).parent / "pacs")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"), PACS_DICOM_HOST="127.0.0.1", PACS_HTTP_PORT="0",
               PACS_LOG_LEVEL="WARNING", **extra)
    return env


class Server:
    def __init__(self, tmp_path: Path, **extra: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"serve-{self.port}.log"
        self.env = _env(tmp_path, PACS_DICOM_PORT=str(self.port), **extra)
        self.proc = subprocess.Popen([PACS, "serve"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 60
        while "ready" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"pacs serve did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    yield srv
    srv.stop()


def _scu() -> AE:
    ae = AE("TESTSCU")
    for cx in (Verification, CTImageStorage, MRImageStorage,
               StudyRootQueryRetrieveInformationModelFind):
        ae.add_requested_context(cx)
    return ae


def _study_uids(port: int) -> list[str]:
    assoc = _scu().associate("127.0.0.1", port)
    assert assoc.is_established
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    found = [str(ident.StudyInstanceUID) for status, ident in
             assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
             if status and status.Status == 0xFF00]
    assoc.release()
    return found


def test_serve_stores_stops_on_sigterm_and_keeps_data(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    assoc = _scu().associate("127.0.0.1", srv.port)
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(pydicom.dcmread(testdata("CT_small.dcm"))).Status == 0
    assoc.release()
    assert srv.stop(signal.SIGTERM) == 0
    assert "stopped" in srv.log.read_text()
    again = Server(tmp_path)
    try:
        assert _study_uids(again.port) == [pydicom.dcmread(testdata("CT_small.dcm")).StudyInstanceUID]
    finally:
        assert again.stop(signal.SIGINT) == 0


def test_serve_with_two_worker_processes(tmp_path: Path) -> None:
    import numpy as np

    from pacs.demo import CT_DEMO, generate_study

    srv = Server(tmp_path, PACS_DICOM_WORKERS="2")
    try:
        datasets = generate_study(np.random.default_rng(3), CT_DEMO)
        for start in range(0, len(datasets), 10):  # several associations, both processes
            assoc = _scu().associate("127.0.0.1", srv.port)
            for ds in datasets[start:start + 10]:
                assert assoc.send_c_store(ds).Status == 0
            assoc.release()
        assert _study_uids(srv.port) == [datasets[0].StudyInstanceUID]
    finally:
        assert srv.stop() == 0


def _port_sockets(pids: list[int], port: int) -> dict[int, dict[str, int]]:
    """For each process, how many of its sockets on local ``port`` listen / are established."""
    states = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                states[cols[9]] = {"0A": "listen", "01": "established"}.get(cols[3], "other")
    found: dict[int, dict[str, int]] = {}
    for pid in pids:
        counts = {"listen": 0, "established": 0, "other": 0}
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in states:
                counts[states[target[8:-1]]] += 1
        found[pid] = counts
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_processes_share_associations_evenly(tmp_path: Path) -> None:
    """Four modalities sending to two processes get two each (the kernel's SO_REUSEPORT hash
    put 3 or 4 of them on one process in most runs), whichever order they arrive in."""
    srv = Server(tmp_path, PACS_DICOM_WORKERS="2")
    held = []
    try:
        pids = [srv.proc.pid, *_children(srv.proc.pid)]
        for _ in range(4):
            assoc = _scu().associate("127.0.0.1", srv.port)
            assert assoc.is_established
            held.append(assoc)
        dicom = {pid: c for pid, c in _port_sockets(pids, srv.port).items() if c["listen"]}
        assert len(dicom) == 2, dicom  # both processes hold the one listening socket
        assert sorted(c["established"] for c in dicom.values()) == [2, 2], dicom
        for assoc in held[:2]:  # two released: the next ones still go where fewest are open
            assoc.release()
        held = held[2:]
        # release() returns on the A-RELEASE-RP, a moment before the archive closes its end
        deadline = time.monotonic() + 10
        while (sum(c["established"] for c in _port_sockets(pids, srv.port).values()) > 2
               and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(0.6)  # each process publishes its count between accepts, every <= 0.5 s
        for _ in range(2):
            assoc = _scu().associate("127.0.0.1", srv.port)
            assert assoc.send_c_echo().Status == 0
            held.append(assoc)
        dicom = {pid: c for pid, c in _port_sockets(pids, srv.port).items() if c["listen"]}
        assert sorted(c["established"] for c in dicom.values()) == [2, 2], dicom
    finally:
        for assoc in held:
            assoc.release()
        assert srv.stop() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_dead_worker_process_is_reported_and_the_others_take_its_share(tmp_path: Path) -> None:
    srv = Server(tmp_path, PACS_DICOM_WORKERS="2")
    held = []
    try:
        holders = _port_sockets([srv.proc.pid, *_children(srv.proc.pid)], srv.port)
        (worker,) = [pid for pid, c in holders.items() if c["listen"] and pid != srv.proc.pid]
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "exited with" not in srv.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "DICOM worker dicom-2 exited with -9" in srv.log.read_text()
        for _ in range(3):
            started = time.monotonic()
            assoc = _scu().associate("127.0.0.1", srv.port)
            assert assoc.send_c_echo().Status == 0
            assert time.monotonic() - started < 5
            held.append(assoc)
        assert _port_sockets([srv.proc.pid], srv.port)[srv.proc.pid]["established"] == 3
    finally:
        for assoc in held:
            assoc.release()
        srv.stop()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_sigkilled_serve_takes_its_workers_down(tmp_path: Path) -> None:
    """An orphaned worker would go on acknowledging C-STOREs on the shared port."""
    srv = Server(tmp_path, PACS_DICOM_WORKERS="3")
    workers = _children(srv.proc.pid)
    assert len(workers) >= 2, workers  # the multiprocessing resource tracker may be one more
    srv.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)]
    ae = _scu()
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", srv.port)
    assert not assoc.is_established


def test_import_reports_stored_duplicates_and_rejects(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    (folder / "ct.dcm").write_bytes(testdata("CT_small.dcm").read_bytes())
    (folder / "ct-copy.dcm").write_bytes(testdata("CT_small.dcm").read_bytes())
    (folder / "truncated.dcm").write_bytes(testdata("MR_truncated.dcm").read_bytes())
    (folder / "notes.txt").write_text("not dicom")
    result = subprocess.run([PACS, "import", str(tmp_path / "in")], env=_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "stored 1, already stored 1, replaced 0, rejected 2" in result.stderr
    assert "truncated" in result.stderr


def test_import_again_repairs_an_object_lost_from_storage(tmp_path: Path) -> None:
    """`pacs verify` reports an object deleted behind the archive's back; importing the
    same file again restores it (counted "repaired") and `pacs verify` is clean again."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(testdata("CT_small.dcm").read_bytes())
    env = _env(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PACS, *args], env=env, capture_output=True, text=True, timeout=120)

    assert run("import", str(folder)).returncode == 0
    [stored] = [p for p in (tmp_path / "data" / "objects").rglob("*.dcm")]
    stored.unlink()
    broken = run("verify")
    assert broken.returncode != 0
    assert "1 missing" in broken.stderr + broken.stdout
    assert "send the same objects again" in broken.stderr + broken.stdout
    result = run("import", str(folder))
    assert result.returncode == 0, result.stderr
    assert "stored 0, already stored 0, replaced 0, repaired 1, rejected 0" in result.stderr
    assert run("verify").returncode == 0


def test_demo_loads_vietnamese_studies(tmp_path: Path) -> None:
    result = subprocess.run([PACS, "demo", "--studies", "3"], env=_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rejected 0" in result.stderr
    from pacs.config import Settings
    from pacs.context import Caller
    from pacs.index.attributes import Level
    from pacs.query import QueryRequest
    from pacs.services import build_services

    services = build_services(Settings(data_dir=tmp_path / "data"))
    try:
        names = {m["PatientName"] for m in services.query.search(
            Caller.cli(), QueryRequest(Level.STUDY, {}, ["PatientName"]))}
    finally:
        services.close()
    assert len(names) >= 2 and any(not n.isascii() for n in names)


def test_bad_setting_gives_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run([PACS, "serve"], env=_env(tmp_path, PACS_DICOM_PORT="eleven"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "PACS_DICOM_PORT" in result.stderr
    result = subprocess.run([PACS, "serve"], env=_env(tmp_path, PACS_REMOTE_AES="nohost"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "AET@host:port" in result.stderr


def test_db_commands(tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "data").mkdir()
    up = subprocess.run([PACS, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    current = subprocess.run([PACS, "db", "current"], env=env, capture_output=True, text=True,
                             timeout=60)
    database, code = current.stdout.strip().split(";")
    assert database.split(":")[1].strip() == code.split(":")[1].strip()


def test_import_streams_a_large_file(tmp_path: Path) -> None:
    """A file over the import's in-memory size is streamed: the importing process stays far
    below the object's size, and the object is stored byte for byte."""
    from tests.large_object import dataset_sha256, write_multiframe

    folder = tmp_path / "in"
    folder.mkdir()
    obj = write_multiframe(folder / "large.dcm", 400 << 20, seed=7)
    # a parent of its own, so that the peak is the import's alone
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", measure, PACS, "import", str(folder)],
                            env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "stored 1," in result.stderr
    peak_mib = int(result.stdout.split()[-1]) >> 10
    assert peak_mib < 250, f"the import grew to {peak_mib} MiB for a 400 MiB object"
    [stored] = [p for p in (tmp_path / "data" / "objects").rglob("*.dcm")]
    assert stored.stat().st_size == obj.path.stat().st_size
    assert dataset_sha256(stored) == obj.dataset_sha256
