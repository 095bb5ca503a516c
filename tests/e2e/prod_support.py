"""Helpers for ``test_production.py``: archive nodes on the production pair (PostgreSQL +
SeaweedFS S3), DICOM requests from a pynetdicom SCU, and checks of the index and the bucket.

A node is either a ``pacs serve`` subprocess (:class:`PacsNode`, configured with ``PACS_*``
variables as an operator would) or an in-process ``RunningArchive`` built from
:func:`node_settings`. Every wait is bounded and fails with what was seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, CTImageStorage
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy import Engine, func, select

from pacs.config import Settings
from pacs.demo import PatientSpec, StudySpec, generate_study, random_patient
from pacs.index.models import Instance, Patient, Series, Study
from storage import S3Store
from tests.infra import SeaweedServer, free_port

PACS = str(Path(sys.executable).parent / "pacs")
HOST = "127.0.0.1"
CALLED_AE = "MINIPACS"
TIMEOUT = 30  # ACSE, DIMSE and network timeouts of our SCU
# pynetdicom.sop_class builds its names at run time (invisible to mypy): the UIDs, PS3.4 Annex
Verification = UID("1.2.840.10008.1.1")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")
SMALL_CT = StudySpec("CT", series_count=2, instances_per_series=10, rows=64, columns=64)


def is_out_of_resources(status: int) -> bool:
    """The C-STORE "Refused: Out of Resources" class (0xA7xx, PS3.4 B.2.3)."""
    return 0xA700 <= status <= 0xA7FF


def wait_for(check: Callable[[], bool], timeout: float, what: Callable[[], str] | str,
             interval: float = 0.2) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds saying ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            message = what() if callable(what) else what
            raise AssertionError(f"not true after {timeout:.0f} s: {message}")
        time.sleep(interval)


# -- configuration of a node -----------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """The shared production pair of a group of nodes: one database, one bucket."""

    database_url: str
    bucket: str
    s3: SeaweedServer

    def env(self, data_dir: Path, port: int, **extra: str) -> dict[str, str]:
        """Environment of a ``pacs`` process (no ``PACS_*`` inherited from ours)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env.update(
            PACS_DATA_DIR=str(data_dir), PACS_DICOM_HOST=HOST, PACS_DICOM_PORT=str(port),
            PACS_HTTP_HOST=HOST, PACS_HTTP_PORT="0",  # never a fixed port shared by nodes
            PACS_LOG_LEVEL="WARNING", PACS_DATABASE_URL=self.database_url,
            PACS_STORAGE_URL=f"s3://{self.bucket}", PACS_S3_ENDPOINT=self.s3.endpoint,
            PACS_S3_ACCESS_KEY=self.s3.access_key, PACS_S3_SECRET_KEY=self.s3.secret_key,
            PACS_S3_SECURE="false", **extra)
        return env

    def settings(self, data_dir: Path, **changes: object) -> Settings:
        """Settings of an in-process node (ephemeral DICOM port)."""
        values: dict[str, object] = dict(
            data_dir=data_dir, dicom_host=HOST, dicom_port=0, ae_title=CALLED_AE,
            database_url=self.database_url, storage_url=f"s3://{self.bucket}",
            s3_endpoint=self.s3.endpoint, s3_access_key=self.s3.access_key,
            s3_secret_key=self.s3.secret_key, s3_secure=False)
        values.update(changes)
        return Settings(**values)  # type: ignore[arg-type]

    def bucket_store(self) -> S3Store:
        """The bucket itself, without any node's spool (what S3 really holds)."""
        return S3Store(self.bucket, self.s3.options())


class PacsNode:
    """A ``pacs serve`` subprocess; :meth:`stop` (SIGTERM) or :meth:`kill` (SIGKILL) it."""

    def __init__(self, backend: Backend, data_dir: Path, port: int | None = None,
                 wait: bool = True, **extra: str) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = backend.env(data_dir, self.port, **extra)
        self.log = data_dir.parent / f"serve-{data_dir.name}-{self.port}.log"
        self._log_start = self.log.stat().st_size if self.log.exists() else 0  # a restart
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([PACS, "serve"], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the "ready" line; kill the process and fail if it exits or times out."""
        try:
            wait_for(lambda: "ready" in self.log_text() or self.proc.poll() is not None,
                     timeout,
                     lambda: f"pacs serve did not start; log tail:\n{self.log_text()[-3000:]}")
            if self.proc.poll() is not None:
                raise AssertionError(f"pacs serve exited with {self.proc.returncode}; log "
                                     f"tail:\n{self.log_text()[-3000:]}")
        except BaseException:
            self.kill()
            raise

    def log_text(self) -> str:
        """What this process logged (a node restarted on the same port appends)."""
        with open(self.log, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after 60 s); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def spooled_files(data_dir: Path) -> list[Path]:
    """Objects still waiting in a node's spool (temporary files start with a dot)."""
    spool = data_dir / "spool"
    if not spool.is_dir():
        return []
    return [p for p in spool.rglob("*") if p.is_file() and not p.name.startswith(".")]


def wait_uploaded(node: PacsNode, timeout: float) -> None:
    """Wait until the node's spool is empty (everything it acknowledged is in S3)."""
    wait_for(lambda: not spooled_files(node.data_dir), timeout,
             lambda: f"{len(spooled_files(node.data_dir))} upload(s) still pending in "
                     f"{node.spool}; log tail:\n{node.log_text()[-3000:]}")


def run_pacs(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PACS, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


# -- test studies ----------------------------------------------------------------------------

def make_studies(seed: int, shapes: Sequence[tuple[str, StudySpec]]) -> list[list[Dataset]]:
    """Studies of ``shapes`` (patient ID, spec); studies with the same ID share a patient."""
    rng = np.random.default_rng(seed)
    patients: dict[str, PatientSpec] = {}
    studies = []
    for patient_id, spec in shapes:
        patient = patients.setdefault(patient_id, random_patient(rng, patient_id))
        studies.append(generate_study(rng, spec, patient))
    return studies


def write_files(datasets: Iterable[Dataset], folder: Path) -> dict[str, Path]:
    """Part 10 files of ``datasets`` in ``folder``, by SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[str(ds.SOPInstanceUID)] = path
    return out


def dataset_bytes(part10: bytes) -> bytes:
    from pacs.dicom.header import dataset_offset

    return part10[dataset_offset(part10):]


# -- a pynetdicom SCU ------------------------------------------------------------------------

def _ae(ae_title: str) -> AE:
    ae = AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    return ae


@contextlib.contextmanager
def association(port: int, ae_title: str = "TESTSCU") -> Iterator[Association]:
    """An association for C-ECHO, C-STORE (CT) and C-FIND; released or aborted after use."""
    ae = _ae(ae_title)
    for context in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind):
        ae.add_requested_context(context)
    assoc = ae.associate(HOST, port, ae_title=CALLED_AE)
    assert assoc.is_established, f"association with port {port} not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


def store_status(assoc: Association, ds: Dataset) -> int | None:
    """The C-STORE status, or None when no response came (association gone)."""
    try:
        rsp = assoc.send_c_store(ds)
    except (RuntimeError, OSError):
        return None
    return int(rsp.Status) if "Status" in rsp else None


def store_all(port: int, datasets: Iterable[Dataset], ae_title: str = "TESTSCU") -> list[int | None]:
    with association(port, ae_title) as assoc:
        return [store_status(assoc, ds) for ds in datasets]


def echo(port: int) -> int | None:
    with association(port) as assoc:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else None


def find(port: int, level: str, **keys: str) -> list[Dataset]:
    """C-FIND (Study Root) matches; fails unless the final status is Success."""
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    matches: list[Dataset] = []
    with association(port, "FINDSCU") as assoc:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            assert status and "Status" in status, "C-FIND: no response"
            if status.Status == 0xFF00:
                assert identifier is not None, "C-FIND: pending response without identifier"
                matches.append(identifier)
            else:
                assert status.Status == 0x0000, f"C-FIND final status 0x{status.Status:04X}"
    return matches


def get_study(port: int, study_uid: str) -> dict[str, tuple[str, bytes]]:
    """C-GET a study; (transfer syntax, data set bytes as received) by SOP Instance UID."""
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event: Event) -> int:
        req = event.request
        assert isinstance(req, C_STORE) and req.DataSet is not None
        received[str(req.AffectedSOPInstanceUID)] = (str(event.context.transfer_syntax),
                                                     req.DataSet.getvalue())
        return 0x0000

    ae = _ae("GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(HOST, port, ae_title=CALLED_AE,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established, f"C-GET association with port {port} not established"
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    final = None
    try:
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            assert status and "Status" in status, "C-GET: no response"
            final = status
    finally:
        assoc.release()
    assert final is not None and final.Status == 0x0000, (
        f"C-GET {study_uid}: final status {final}")
    return received


# -- the index and the bucket ----------------------------------------------------------------

def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            "patients": conn.execute(select(func.count(Patient.id))).scalar_one(),
            "studies": conn.execute(select(func.count(Study.id))).scalar_one(),
            "series": conn.execute(select(func.count(Series.id))).scalar_one(),
            "instances": conn.execute(select(func.count(Instance.id))).scalar_one(),
            "distinct_sop_uids": conn.execute(
                select(func.count(func.distinct(Instance.sop_instance_uid)))).scalar_one(),
        }


def counter_mismatches(engine: Engine) -> list[str]:
    """Study and series counters that differ from the rows they count (empty: all right)."""
    series_rows = (select(func.count(Series.id)).where(Series.study_pk == Study.id)
                   .scalar_subquery())
    study_instances = (select(func.count(Instance.id)).join(Series, Instance.series_pk == Series.id)
                       .where(Series.study_pk == Study.id).scalar_subquery())
    series_instances = (select(func.count(Instance.id)).where(Instance.series_pk == Series.id)
                        .scalar_subquery())
    problems = []
    with engine.connect() as conn:
        for uid, num_series, num_instances, n_series, n_instances in conn.execute(
                select(Study.study_uid, Study.num_series, Study.num_instances, series_rows,
                       study_instances)):
            if (num_series, num_instances) != (n_series, n_instances):
                problems.append(f"study {uid}: counters ({num_series} series, {num_instances} "
                                f"instances), rows ({n_series}, {n_instances})")
        for uid, num_instances, n_instances in conn.execute(
                select(Series.series_uid, Series.num_instances, series_instances)):
            if num_instances != n_instances:
                problems.append(f"series {uid}: counter {num_instances}, rows {n_instances}")
    return problems


def indexed(engine: Engine) -> dict[str, tuple[str, str]]:
    """(storage key, SHA-256) of every indexed instance, by SOP Instance UID."""
    with engine.connect() as conn:
        rows = conn.execute(select(Instance.sop_instance_uid, Instance.storage_key,
                                   Instance.sha256)).all()
    return {uid: (key, sha) for uid, key, sha in rows}


def not_in_bucket(bucket: S3Store, objects: dict[str, tuple[str, str]]) -> list[str]:
    """SOP Instance UIDs whose object is absent from the bucket or differs from its hash."""
    bad = []
    for uid, (key, sha) in sorted(objects.items()):
        try:
            if hashlib.sha256(bucket.get(key)).hexdigest() != sha:
                bad.append(f"{uid} (object {key} does not match its hash)")
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            bad.append(f"{uid} (object {key}: {type(exc).__name__})")
    return bad
