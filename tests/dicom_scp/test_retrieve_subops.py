"""C-STORE sub-operations of C-MOVE and C-GET written by :mod:`dicom_scp.subops`: framing at
any maximum PDU length, counts when the destination goes away, cancel, thinned pending
responses (PS3.4 C.4.2.3.1, C.4.3.3.1), on real associations with pynetdicom peers."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_scp import subops
from pacs.config import RemoteAE
from pacs.context import Caller
from pacs.demo import generate_bulk
from pacs.dicom.header import dataset_offset
from tests.conftest import RunningArchive
from tests.infra import free_port

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def load_study(archive: RunningArchive, instances: int, seed: int = 11,
               size: int = 64) -> tuple[str, dict[str, bytes]]:
    """A CT study stored in ``archive``: its UID and each instance's data set bytes."""
    data_sets: dict[str, bytes] = {}
    study = ""
    for ds in generate_bulk(seed, 1, instances, rows=size, cols=size):
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        archive.svc.ingest.store_instance(Caller.cli(), raw)
        data_sets[str(ds.SOPInstanceUID)] = raw[dataset_offset(raw):]
        study = str(ds.StudyInstanceUID)
    return study, data_sets


class Destination:
    """A pynetdicom Storage SCP that keeps each received data set's bytes."""

    def __init__(self, max_pdu: int, abort_after: int | None = None,
                 stall_after: int | None = None) -> None:
        self.received: dict[str, bytes] = {}
        self.abort_after = abort_after
        self.stall_after = stall_after
        self.stalled = threading.Event()  # set to let a stalled handler answer
        self.port = free_port()
        self.ae = AE("STORESCP")
        self.ae.maximum_pdu_size = max_pdu
        self.ae.add_supported_context(CTImageStorage, EXPLICIT_LE)
        self.server: Any = None

    def handle_store(self, event: Event) -> int:
        if self.abort_after is not None and len(self.received) >= self.abort_after:
            event.assoc.abort()
            return 0xA700
        if self.stall_after is not None and len(self.received) >= self.stall_after:
            self.stalled.wait(30)  # no response until the test ends
            return 0xA700
        self.received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    @contextmanager
    def running(self) -> Iterator[Destination]:
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self.handle_store)])
        try:
            yield self
        finally:
            self.server.shutdown()


def study_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return query


def move(archive: RunningArchive, study_uid: str, cancel_after: int | None = None,
         identifiers: list[Dataset | None] | None = None) -> list[Dataset]:
    """C-MOVE the study to STORESCP; every response's status data set (C-CANCEL sent after
    ``cancel_after`` pending responses), and the identifiers in ``identifiers``."""
    ae = AE("MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    assert assoc.is_established
    statuses = []
    try:
        model = StudyRootQueryRetrieveInformationModelMove
        for status, identifier in assoc.send_c_move(study_query(study_uid), "STORESCP", model,
                                                    msg_id=9):
            statuses.append(status)
            if identifiers is not None:
                identifiers.append(identifier)
            if cancel_after is not None and len(statuses) == cancel_after:
                assoc.send_c_cancel(9, query_model=model)
    finally:
        assoc.release()
    return statuses


def get(archive: RunningArchive, study_uid: str, max_pdu: int,
        cancel_after: int | None = None) -> tuple[list[Dataset], dict[str, bytes]]:
    """C-GET the study on an association announcing ``max_pdu``: statuses and data sets."""
    received: dict[str, bytes] = {}

    def handle_store(event: Event) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE("GETSCU")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    assert assoc.is_established
    statuses = []
    try:
        model = StudyRootQueryRetrieveInformationModelGet
        for status, _ in assoc.send_c_get(study_query(study_uid), model, msg_id=9):
            statuses.append(status)
            if cancel_after is not None and len(statuses) == cancel_after:
                assoc.send_c_cancel(9, query_model=model)
    finally:
        assoc.release()
    return statuses, received


def counts(status: Dataset) -> tuple[int, int, int, int]:
    return (status.Status, status.get("NumberOfCompletedSuboperations"),
            status.get("NumberOfFailedSuboperations"),
            status.get("NumberOfWarningSuboperations"))


@pytest.fixture
def study_archive(make_archive: Callable[..., RunningArchive]
                  ) -> Callable[..., tuple[RunningArchive, int, str, dict[str, bytes]]]:
    def make(instances: int, size: int = 64, **settings: Any
             ) -> tuple[RunningArchive, int, str, dict[str, bytes]]:
        port = free_port()
        archive = make_archive(remote_aes=(RemoteAE("STORESCP", "127.0.0.1", port),),
                               precompute_metadata=False, **settings)
        study, data_sets = load_study(archive, instances, size=size)
        return archive, port, study, data_sets
    return make


# PDU lengths: a command set split over several fragments (64), DCMTK's minimum (4096), no
# limit at all (0: a PDU per megabyte)
@pytest.mark.parametrize("max_pdu", [64, 4096, 0])
def test_move_and_get_arrive_byte_for_byte_at_any_maximum_pdu_length(
        study_archive: Callable[..., Any], max_pdu: int) -> None:
    archive, port, study, data_sets = study_archive(5)
    dest = Destination(max_pdu)
    dest.port = port
    with dest.running():
        statuses = move(archive, study)
    assert counts(statuses[-1]) == (0x0000, 5, 0, 0)
    assert dest.received == data_sets

    statuses, received = get(archive, study, max_pdu)
    assert counts(statuses[-1]) == (0x0000, 5, 0, 0)
    assert received == data_sets


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_destination_aborting_mid_move_fails_the_rest_without_hanging(
        study_archive: Callable[..., Any]) -> None:
    archive, port, study, data_sets = study_archive(8)
    dest = Destination(16382, abort_after=3)
    dest.port = port
    identifiers: list[Dataset | None] = []
    with dest.running():
        statuses = move(archive, study, identifiers=identifiers)
    final = statuses[-1]
    # PS3.4 C.4.2.3.1: some sub-operations failed -> Warning, with the counts and the
    # failed instances (C.4.2.1.4.2)
    assert counts(final) == (0xB000, 3, 5, 0), final
    failed = identifiers[-1]
    assert failed is not None
    assert set(failed.FailedSOPInstanceUIDList) == set(data_sets) - set(dest.received)
    assert set(dest.received) <= set(data_sets) and len(dest.received) == 3

    # the archive keeps serving, and the next move to the same destination goes through
    dest.abort_after = None
    dest.received.clear()
    with dest.running():
        statuses = move(archive, study)
    assert counts(statuses[-1]) == (0x0000, 8, 0, 0)
    assert dest.received == data_sets


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_destination_that_stops_answering_is_aborted_after_the_dimse_timeout(
        study_archive: Callable[..., Any]) -> None:
    archive, port, study, data_sets = study_archive(6, dimse_timeout=1.0)
    dest = Destination(16382, stall_after=2)
    dest.port = port
    identifiers: list[Dataset | None] = []
    try:
        with dest.running():
            statuses = move(archive, study, identifiers=identifiers)
    finally:
        dest.stalled.set()
    # the third C-STORE got no response: the sub-association was aborted, the rest failed
    assert counts(statuses[-1]) == (0xB000, 2, 4, 0), statuses[-1]
    failed = identifiers[-1]
    assert failed is not None and len(failed.FailedSOPInstanceUIDList) == 4
    assert len(dest.received) == 2


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_pending_responses_are_thinned_but_the_final_counts_are_exact(
        study_archive: Callable[..., Any]) -> None:
    archive, port, study, data_sets = study_archive(40)
    dest = Destination(16382)
    dest.port = port
    with dest.running():
        statuses = move(archive, study)
    pending = [s for s in statuses if s.Status == subops.PENDING]
    # the first pending response always goes out; the rest at most one per interval
    assert 1 <= len(pending) < 40
    assert pending[0].NumberOfCompletedSuboperations == 1
    assert counts(statuses[-1]) == (0x0000, 40, 0, 0)
    assert dest.received == data_sets


# The cancel logic is the handler's; one backend is enough. The SCP may legally finish first
# if the cancel arrives late: enough instances that it cannot.
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("operation", ["move", "get"])
def test_cancel_stops_the_sub_operations(study_archive: Callable[..., Any],
                                         operation: str) -> None:
    archive, port, study, _ = study_archive(300, size=16)
    dest = Destination(16382)
    dest.port = port
    if operation == "move":
        with dest.running():
            statuses = move(archive, study, cancel_after=1)
        arrived = len(dest.received)
    else:
        statuses, received = get(archive, study, 16382, cancel_after=1)
        arrived = len(received)
    final = statuses[-1]
    assert final.Status == 0xFE00, final
    completed = final.NumberOfCompletedSuboperations
    assert 1 <= completed < 300
    assert final.NumberOfRemainingSuboperations == 300 - completed
    assert arrived == completed
    # no stored object left open (they are opened ahead of their sending: pacs.retrieve.ReadAhead)
    deadline = time.monotonic() + 5
    while _open_objects(archive) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_objects(archive) == []


def _open_objects(archive: RunningArchive) -> list[str]:
    """Stored objects this process holds open."""
    root, paths = str(archive.settings.data_dir), []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [p for p in paths if p.startswith(root) and p.endswith(".dcm")]


def test_a_second_retrieve_on_the_same_association(study_archive: Callable[..., Any]) -> None:
    """The C-GET association's link and pending thinning persist between operations."""
    archive, _, study, data_sets = study_archive(3)
    received: dict[str, bytes] = {}

    def handle_store(event: Event) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE("GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        for msg_id in (1, 2):
            received.clear()
            statuses = list(assoc.send_c_get(study_query(study),
                                             StudyRootQueryRetrieveInformationModelGet,
                                             msg_id=msg_id))
            assert counts(statuses[-1][0]) == (0x0000, 3, 0, 0)
            assert received == data_sets
    finally:
        assoc.release()


def test_move_sub_association_runs_the_responsive_dul_and_ends_quickly(
        study_archive: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The C-MOVE sub-association gets the select-waiting DUL and QuickEnd before its threads
    start (dicom_scp.server.PacsAE): it is released without pynetdicom's 1 ms and 10 ms naps,
    and its association loop stays pynetdicom's (it serves no requests)."""
    from dicom_scp import handlers, reactor

    archive, port, study, data_sets = study_archive(3)
    seen: list[Any] = []
    install_sender = handlers._install_sender

    def record(event: Event) -> None:
        seen.append(event.assoc)
        install_sender(event)

    monkeypatch.setattr(handlers, "_install_sender", record)
    dest = Destination(16384)
    dest.port = port
    with dest.running():
        for _ in range(3):
            statuses = move(archive, study)
            assert counts(statuses[-1]) == (0x0000, 3, 0, 0)
    assert dest.received == data_sets
    assert len(seen) == 3
    for sub in seen:
        assert type(sub) is reactor.QuickEnd
        assert type(sub.dul) is reactor.ResponsiveDUL
        assert sub.is_released and not sub.dul.is_alive()
