"""The archive on the production pair (PostgreSQL + SeaweedFS S3) under concurrency and faults.

1. Two ``pacs serve`` nodes (own data dir and spool, same database and bucket) take four
   DCMTK ``storescu`` pushes of overlapping studies at once: every instance, patient, study
   and series is indexed exactly once, the counters match the rows, each node finds and
   returns (byte for byte) what the other stored, and ``verify`` is healthy. The same data
   set arriving at the other node from another AE is an idempotent Success, and two nodes
   started at once on an empty database both come up.
2. S3 killed during ingest: with the spool, C-STOREs keep succeeding and every acknowledged
   object reaches the bucket once S3 is back; without it, a C-STORE gets 0xA700, never Success,
   and a resend after the restart succeeds.
3. PostgreSQL stopped during ingest: C-STORE answers 0xA7xx, never Success for an object not
   indexed; the service stays up; resends succeed after the restart; nothing is missing and
   ``verify --repair`` removes the orphans.
4. ``pacs serve`` SIGKILLed mid-stream: restarted on the same data dir its spool uploads what
   was acknowledged; ``pacs verify`` exits 0.

Fault tests use private servers (:func:`tests.infra.start_seaweedfs`,
:func:`tests.infra.start_postgres`) so the session's shared servers are never disturbed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from pacs.cli import UPLOAD_NICE
from pacs.context import Caller
from pacs.demo import StudySpec
from pacs.index.db import make_engine
from pacs.verify import verify
from storage.spooled import SpooledStore
from tests.conftest import RunningArchive
from tests.e2e.prod_support import (
    CALLED_AE,
    HOST,
    SMALL_CT,
    Backend,
    PacsNode,
    association,
    counter_mismatches,
    dataset_bytes,
    echo,
    find,
    get_study,
    indexed,
    is_out_of_resources,
    make_studies,
    not_in_bucket,
    row_counts,
    run_pacs,
    spooled_files,
    store_all,
    store_status,
    wait_for,
    wait_uploaded,
    write_files,
)
from tests.infra import InfraError, PostgresServer, SeaweedServer, start_postgres, start_seaweedfs
from tests.interop import dcmtk

pytestmark = pytest.mark.production

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
UPLOAD_TIMEOUT = 90.0  # the spool's retry backoff grows while S3 is down


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def shared(postgres_url: str, s3_bucket: str, seaweedfs: SeaweedServer) -> Backend:
    """A fresh database and bucket on the session's servers."""
    return Backend(postgres_url, s3_bucket, seaweedfs)


@pytest.fixture(scope="module")
def private_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS of this module's own, to kill and restart."""
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("private-s3"))
    except InfraError as exc:
        pytest.fail(f"private SeaweedFS could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.kill()  # a throwaway: no need for its slow graceful stop


@pytest.fixture
def private_s3(private_s3_server: SeaweedServer) -> SeaweedServer:
    """The private SeaweedFS, running (a failed test may have left it killed)."""
    if not private_s3_server.running:
        private_s3_server.restart()
    return private_s3_server


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own, to stop and start."""
    try:
        server = start_postgres(tmp_path / "private-pg")
    except InfraError as exc:
        pytest.fail(f"private PostgreSQL could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def start_node() -> Iterator[Callable[..., PacsNode]]:
    """Start ``pacs serve`` nodes; every one still running is stopped after the test."""
    nodes: list[PacsNode] = []

    def start(backend: Backend, data_dir: Path, **kwargs: str | int | bool) -> PacsNode:
        node = PacsNode(backend, data_dir, **kwargs)  # type: ignore[arg-type]
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def start_archive() -> Iterator[Callable[..., RunningArchive]]:
    """In-process archives (DicomService on an ephemeral port), stopped after the test."""
    archives: list[RunningArchive] = []

    def start(backend: Backend, data_dir: Path, **changes: object) -> RunningArchive:
        archive = RunningArchive(backend.settings(data_dir, **changes))
        archives.append(archive)
        return archive

    yield start
    for archive in archives:
        archive.stop()


def _uids(datasets: list[Dataset]) -> list[str]:
    return [str(ds.SOPInstanceUID) for ds in datasets]


def _statuses(statuses: list[int | None]) -> list[str]:
    return ["none" if s is None else f"0x{s:04X}" for s in statuses]


# -- 1. two nodes, four storescu, overlapping studies ----------------------------------------

def _storescu(port: int, files: list[Path], log: Path, env: dict[str, str],
              ae_title: str) -> subprocess.Popen[bytes]:
    args = [str(dcmtk.BIN / "storescu"), "-d", "-nh", *dcmtk.NET_OPTIONS, "-aet", ae_title,
            "-aec", CALLED_AE, HOST, str(port), *(str(f) for f in files)]
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def test_two_nodes_take_overlapping_pushes_from_four_storescu(
        shared: Backend, start_node: Callable[..., PacsNode], tmp_path: Path,
        dcmtk_env: dict[str, str]) -> None:
    studies = make_studies(11, [("BN1001", SMALL_CT), ("BN1001", SMALL_CT),
                                ("BN2002", SMALL_CT)])
    files = write_files(chain(*studies), tmp_path / "studies")
    paths = list(files.values())
    node_a = start_node(shared, tmp_path / "node-a")  # creates the schema and the bucket
    node_b = start_node(shared, tmp_path / "node-b")
    shuffled = random.Random(5).sample(paths, len(paths))
    plans = [(node_a, paths), (node_b, paths), (node_a, paths[::-1]), (node_b, shuffled)]
    procs = [(_storescu(node.port, order, tmp_path / f"storescu-{n}.log", dcmtk_env,
                        "MODALITY"), tmp_path / f"storescu-{n}.log", len(order))
             for n, (node, order) in enumerate(plans)]
    try:
        for proc, log, count in procs:
            proc.wait(120)
            run = dcmtk.Run([str(a) for a in proc.args], proc.returncode,  # type: ignore[union-attr]
                            log.read_text(errors="replace"))
            statuses = [r.status for r in run.responses("C-STORE RSP")]
            assert statuses == [0] * count, str(run)
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    # Each node returns every instance, including those the other stored and may not have
    # uploaded yet, exactly as storescu sent it.
    for study in studies:
        study_uid = str(study[0].StudyInstanceUID)
        from_a, from_b = get_study(node_a.port, study_uid), get_study(node_b.port, study_uid)
        assert sorted(from_a) == sorted(from_b) == sorted(_uids(study))
        for uid in _uids(study):
            expected = (EXPLICIT_VR_LE, dataset_bytes(files[uid].read_bytes()))
            assert from_a[uid] == expected, f"{uid} from node A differs from what was sent"
            assert from_b[uid] == expected, f"{uid} from node B differs from what was sent"

    # C-FIND on either node sees everything, with the right counters.
    for node in (node_a, node_b):
        found = find(node.port, "STUDY", StudyInstanceUID="", NumberOfStudyRelatedSeries="",
                     NumberOfStudyRelatedInstances="")
        assert sorted((str(m.StudyInstanceUID), int(m.NumberOfStudyRelatedSeries),
                       int(m.NumberOfStudyRelatedInstances)) for m in found) == sorted(
            (str(s[0].StudyInstanceUID), 2, 20) for s in studies)
        images = find(node.port, "IMAGE", StudyInstanceUID="\\".join(
            str(s[0].StudyInstanceUID) for s in studies), SOPInstanceUID="")
        assert sorted(str(m.SOPInstanceUID) for m in images) == sorted(files)

    for node in (node_a, node_b):
        wait_uploaded(node, UPLOAD_TIMEOUT)
    engine = make_engine(shared.database_url)
    bucket = shared.bucket_store()
    try:
        assert row_counts(engine) == {"patients": 2, "studies": 3, "series": 6,
                                      "instances": 60, "distinct_sop_uids": 60}
        assert counter_mismatches(engine) == []
        report = verify(engine, bucket)  # the bucket itself: no node's spool involved
        assert report.healthy and report.checked == 60, report
    finally:
        bucket.close()
        engine.dispose()
    assert [node.stop() for node in (node_a, node_b)] == [0, 0]


def test_same_data_set_through_another_ae_and_node_is_already_stored(
        shared: Backend, start_archive: Callable[..., RunningArchive], tmp_path: Path) -> None:
    (study,) = make_studies(12, [("BN1003", StudySpec("CT", 1, 3, rows=32, columns=32))])
    node_a = start_archive(shared, tmp_path / "node-a")
    node_b = start_archive(shared, tmp_path / "node-b")
    assert store_all(node_a.port, study, ae_title="MODALITY") == [0, 0, 0]
    statuses = store_all(node_b.port, study, ae_title="ROUTER")  # e.g. a forwarding router
    assert statuses == [0, 0, 0], _statuses(statuses)


def test_two_nodes_started_at_once_on_a_fresh_database_both_come_up(
        shared: Backend, start_node: Callable[..., PacsNode], tmp_path: Path) -> None:
    node_a = start_node(shared, tmp_path / "node-a", wait=False)
    node_b = start_node(shared, tmp_path / "node-b", wait=False)
    node_a.wait_ready()
    node_b.wait_ready()
    assert (echo(node_a.port), echo(node_b.port)) == (0, 0)


# -- 2. S3 down during ingest ----------------------------------------------------------------

def test_s3_down_spool_keeps_acknowledging_then_uploads_everything(
        private_s3: SeaweedServer, postgres_url: str,
        start_archive: Callable[..., RunningArchive], tmp_path: Path) -> None:
    backend = Backend(postgres_url, f"spool-{uuid.uuid4().hex[:16]}", private_s3)
    (study,) = make_studies(21, [("BN3003", StudySpec("CT", 1, 30, rows=64, columns=64))])
    archive = start_archive(backend, tmp_path / "node")
    store = archive.svc.store
    assert isinstance(store, SpooledStore)
    with association(archive.port) as assoc:
        before = [store_status(assoc, ds) for ds in study[:10]]
        private_s3.kill()
        during = [store_status(assoc, ds) for ds in study[10:]]
    assert before + during == [0] * 30, _statuses(before + during)
    assert store.pending() >= 20, "objects acknowledged while S3 was down must be spooled"
    last = archive.svc.retrieve.instance(Caller.system(), str(study[-1].SOPInstanceUID))
    assert dataset_bytes(archive.svc.retrieve.read(last)) == dataset_bytes(
        write_files([study[-1]], tmp_path / "sent")[last.sop_instance_uid].read_bytes())

    private_s3.restart()
    assert store.flush(UPLOAD_TIMEOUT), f"{store.pending()} upload(s) still pending"
    objects = indexed(archive.svc.engine)
    assert sorted(objects) == sorted(_uids(study))
    bucket = backend.bucket_store()
    try:
        assert not_in_bucket(bucket, objects) == []
        assert verify(archive.svc.engine, bucket).healthy
    finally:
        bucket.close()


def test_s3_down_without_spool_refuses_then_resend_succeeds(
        private_s3: SeaweedServer, postgres_url: str,
        start_archive: Callable[..., RunningArchive], tmp_path: Path) -> None:
    backend = Backend(postgres_url, f"direct-{uuid.uuid4().hex[:16]}", private_s3)
    (study,) = make_studies(22, [("BN4004", StudySpec("CT", 1, 8, rows=64, columns=64))])
    archive = start_archive(backend, tmp_path / "node", s3_spool=False)
    assert not isinstance(archive.svc.store, SpooledStore)
    assert store_all(archive.port, study[:5]) == [0] * 5
    private_s3.kill()
    refused = store_all(archive.port, study[5:])
    assert all(s is not None and is_out_of_resources(s) for s in refused), _statuses(refused)
    assert echo(archive.port) == 0, "the service must keep running while S3 is down"
    assert sorted(indexed(archive.svc.engine)) == sorted(_uids(study[:5])), (
        "an object refused while S3 was down was indexed")

    private_s3.restart()
    assert store_all(archive.port, study[5:]) == [0] * 3
    objects = indexed(archive.svc.engine)
    assert sorted(objects) == sorted(_uids(study))
    bucket = backend.bucket_store()
    try:
        assert not_in_bucket(bucket, objects) == []
        report = verify(archive.svc.engine, bucket)
        assert report.healthy and report.orphans == [], report
    finally:
        bucket.close()


# -- 3. PostgreSQL down during ingest --------------------------------------------------------

def test_postgres_down_refuses_stores_and_recovers(
        private_pg: PostgresServer, seaweedfs: SeaweedServer, s3_bucket: str,
        start_archive: Callable[..., RunningArchive], tmp_path: Path) -> None:
    backend = Backend(private_pg.create_database(), s3_bucket, seaweedfs)
    (study,) = make_studies(31, [("BN5005", StudySpec("CT", 2, 20, rows=64, columns=64))])
    archive = start_archive(backend, tmp_path / "node")
    assert store_all(archive.port, study[:10]) == [0] * 10

    # A stream of stores on its own association; PostgreSQL stops in the middle of it.
    streamed: dict[str, int | None] = {}
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with association(archive.port, "STREAMSCU") as assoc:
                for ds in study[10:35]:
                    streamed[str(ds.SOPInstanceUID)] = store_status(assoc, ds)
                    threading.Event().wait(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    sender = threading.Thread(target=stream, name="stream-scu")
    sender.start()
    try:
        wait_for(lambda: sum(s == 0 for s in streamed.values()) >= 5 or not sender.is_alive(),
                 30, "no store succeeded in the stream")
        private_pg.stop()
    finally:
        sender.join(60)
    assert not sender.is_alive() and not errors, errors
    assert 0 in streamed.values() and any(
        s is not None and is_out_of_resources(s) for s in streamed.values()), (
        f"PostgreSQL did not stop mid-stream: {_statuses(list(streamed.values()))}")
    refused = store_all(archive.port, study[35:])  # certainly after the stop
    statuses = list(streamed.values()) + refused
    assert all(s == 0 or (s is not None and is_out_of_resources(s)) for s in statuses), (
        _statuses(statuses))
    assert all(s is not None and is_out_of_resources(s) for s in refused), _statuses(refused)
    assert echo(archive.port) == 0, "the service must keep running while the index is down"

    private_pg.start()
    objects = indexed(archive.svc.engine)
    acknowledged = _uids(study[:10]) + [uid for uid, s in streamed.items() if s == 0]
    assert [uid for uid in acknowledged if uid not in objects] == [], (
        "acknowledged but not indexed")
    retry = [ds for ds in study if str(ds.SOPInstanceUID) not in acknowledged]
    assert store_all(archive.port, retry) == [0] * len(retry)
    assert row_counts(archive.svc.engine)["instances"] == len(study)
    assert counter_mismatches(archive.svc.engine) == []

    store = archive.svc.store
    assert isinstance(store, SpooledStore) and store.flush(UPLOAD_TIMEOUT)
    report = verify(archive.svc.engine, store)
    assert report.healthy and report.missing == [] and report.checked == len(study), report
    repaired = verify(archive.svc.engine, store, repair=True, grace_seconds=0)
    assert repaired.healthy and repaired.removed_orphans == repaired.orphans
    assert verify(archive.svc.engine, store).orphans == []


# -- 4. pacs serve SIGKILLed mid-stream ------------------------------------------------------

def test_sigkilled_node_resumes_uploads_of_everything_acknowledged(
        private_s3: SeaweedServer, postgres_url: str, start_node: Callable[..., PacsNode],
        tmp_path: Path) -> None:
    backend = Backend(postgres_url, f"sigkill-{uuid.uuid4().hex[:16]}", private_s3)
    (study,) = make_studies(41, [("BN6006", StudySpec("CT", 3, 40, rows=64, columns=64))])
    data_dir = tmp_path / "node"
    node = start_node(backend, data_dir)
    acknowledged: list[str] = []
    errors: list[BaseException] = []
    # Events, not polling: ingest is fast enough to finish the study between two polls.
    reached = {15: threading.Event(), 30: threading.Event()}

    def send() -> None:  # one by one, as a modality does; stops at the first failure
        try:
            with association(node.port, "MODALITY") as assoc:
                for ds in study:
                    if store_status(assoc, ds) != 0:
                        return
                    acknowledged.append(str(ds.SOPInstanceUID))
                    if len(acknowledged) in reached:
                        reached[len(acknowledged)].set()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            for event in reached.values():
                event.set()

    sender = threading.Thread(target=send, name="modality")
    sender.start()
    try:
        assert reached[15].wait(60), f"only {len(acknowledged)} acknowledged"
        private_s3.kill()  # from here on, acknowledged objects exist only in the spool
        spool_only_from = len(acknowledged)
        assert reached[30].wait(60), f"only {len(acknowledged)} acknowledged"
        node.kill()  # while the modality is still sending
    finally:
        sender.join(60)
    assert not sender.is_alive() and not errors, errors
    acked = list(acknowledged)
    assert 30 <= len(acked) < len(study), f"{len(acked)} acknowledged before the kill"
    assert len(spooled_files(data_dir)) >= len(acked) - spool_only_from

    private_s3.restart()
    again = start_node(backend, data_dir, port=node.port)
    wait_uploaded(again, UPLOAD_TIMEOUT)
    engine = make_engine(backend.database_url)
    bucket = backend.bucket_store()
    try:
        objects = indexed(engine)
        assert [uid for uid in acked if uid not in objects] == [], "acknowledged, not indexed"
        assert not_in_bucket(bucket, {uid: objects[uid] for uid in acked}) == []
        rest = [ds for ds in study if str(ds.SOPInstanceUID) not in acked]
        assert store_all(again.port, rest) == [0] * len(rest)
        assert row_counts(engine)["instances"] == len(study)
        assert counter_mismatches(engine) == []
    finally:
        bucket.close()
        engine.dispose()
    wait_uploaded(again, UPLOAD_TIMEOUT)
    assert again.stop() == 0
    result = run_pacs(again.env, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"checked {len(study)} instance(s): 0 missing, 0 corrupt" in result.stderr


# -- 5. the uploads process dies -------------------------------------------------------------

def _uploads_process(parent: int) -> int:
    """The PID of ``pacs serve``'s uploads process: its one child at the uploads' priority."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == parent and int(fields[16]) == UPLOAD_NICE:
            found.append(int(entry.name))
    assert len(found) == 1, f"uploads processes of {parent}: {found}"
    return found[0]


def test_killed_uploads_process_is_restarted_and_uploads_everything(
        private_s3: SeaweedServer, postgres_url: str, start_node: Callable[..., PacsNode],
        tmp_path: Path) -> None:
    """S3 uploads run in a process of their own at a lower priority; killed, it is started
    again and uploads what was acknowledged meanwhile (rung, or found in the spool)."""
    backend = Backend(postgres_url, f"uploads-{uuid.uuid4().hex[:16]}", private_s3)
    (study,) = make_studies(42, [("BN7007", StudySpec("CT", 1, 12, rows=64, columns=64))])
    node = start_node(backend, tmp_path / "node")
    first = _uploads_process(node.proc.pid)
    assert store_all(node.port, study[:6]) == [0] * 6
    wait_uploaded(node, UPLOAD_TIMEOUT)
    os.kill(first, signal.SIGKILL)
    assert store_all(node.port, study[6:]) == [0] * 6
    wait_uploaded(node, UPLOAD_TIMEOUT)
    assert "S3 uploads process exited" in node.log_text()
    assert _uploads_process(node.proc.pid) != first
    engine = make_engine(backend.database_url)
    bucket = backend.bucket_store()
    try:
        objects = indexed(engine)
        assert sorted(objects) == sorted(_uids(study))
        assert not_in_bucket(bucket, objects) == []
    finally:
        bucket.close()
        engine.dispose()
