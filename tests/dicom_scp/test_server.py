"""Setting associations up (dicom_scp.server): the server's presentation contexts are shared
by every association, never copied, so negotiation must leave them as they were; the
association is set up on the server's own thread and negotiated by the thread that reads
its request (the server's when it has arrived whole), and the maximum number of
associations holds all the same; a release is answered by that thread when the
association is idle, after the request in progress when not; the server prepares each next
acceptor while idle."""

from __future__ import annotations

import copy
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.conftest import RunningArchive, testdata
from tests.dicom_scp.test_retrieve_subops import get, study_query

pytestmark = pytest.mark.parametrize("backend", ["embedded"], indirect=True)

UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.8.498.999.1"  # no such storage SOP class
UNKNOWN_SYNTAX = "1.2.826.0.1.3680043.8.498.999.2"  # no such transfer syntax


def _snapshot(contexts: list[PresentationContext]) -> list[list[tuple[str, str]]]:
    return [sorted((name, repr(value)) for name, value in vars(cx).items()) for cx in contexts]


def _associations(archive: RunningArchive) -> list[Any]:
    """Associations of every kind against the archive; the server-side ones it accepted."""
    served: list[Any] = []
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            served.append(event.assoc)

    archive.service.server.bind(evt.EVT_ACCEPTED, record)  # type: ignore[union-attr]

    # C-ECHO and C-STORE, several transfer syntaxes offered, one of them unknown
    ae = AE("STORESCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [UNKNOWN_SYNTAX, ExplicitVRLittleEndian,
                                              ImplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [JPEGBaseline8Bit])
    ae.add_requested_context(UNKNOWN_SOP_CLASS)  # rejected: abstract syntax not supported
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(pydicom.dcmread(testdata("CT_small.dcm"))).Status == 0
    assert {cx.abstract_syntax for cx in assoc.rejected_contexts} == {UNKNOWN_SOP_CLASS}
    assoc.release()

    # C-FIND, then C-GET with SCP/SCU role selection for the storage sub-operations
    study_uid = str(pydicom.dcmread(testdata("CT_small.dcm")).StudyInstanceUID)
    ae = AE("FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    found = [status.Status for status, _ in
             assoc.send_c_find(study_query(study_uid), StudyRootQueryRetrieveInformationModelFind)]
    assert found[-1] == 0 and 0xFF00 in found
    assoc.release()
    statuses, received = get(archive, study_uid, 16384)
    assert statuses[-1].Status == 0 and len(received) == 1

    # an association whose every context is refused
    ae = AE("NOTHING")
    ae.add_requested_context(UNKNOWN_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    if assoc.is_established:
        assoc.release()
    return served


def test_negotiation_leaves_the_shared_contexts_unchanged(
        make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False)
    contexts = archive.service.server.contexts  # type: ignore[union-attr]
    before = _snapshot(contexts)
    served = _associations(archive)
    assert len(served) >= 2
    for assoc in served:
        # each association has a list of its own holding the server's context objects
        supported = assoc.acceptor.supported_contexts
        assert supported is not contexts
        assert len(supported) == len(contexts)
        assert all(a is b for a, b in zip(supported, contexts, strict=True))
    assert _snapshot(contexts) == before


def _echo(archive: RunningArchive, times: int = 1) -> None:
    """Associations that each send C-ECHO and release."""
    ae = AE("ECHOSCU")
    ae.add_requested_context(Verification)
    for _ in range(times):
        assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        assert assoc.is_released


def test_connections_are_set_up_on_the_server_thread(
        make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False)
    threads: list[str] = []
    archive.service.server.bind(  # type: ignore[union-attr]
        evt.EVT_CONN_OPEN, lambda event: threads.append(threading.current_thread().name))
    _echo(archive, 3)
    assert threads == ["dicom-server"] * 3


def _prepared(archive: RunningArchive) -> Any:
    """The acceptor the server has prepared for its next connection, once it is ready and
    fits the server's settings."""
    server = archive.service.server  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spare = server.preparer._spare
        if spare is not None and spare[1] == server.acceptor_settings():
            return spare[0]
        time.sleep(0.005)
    raise AssertionError("no acceptor prepared")


def _no_association_left(archive: RunningArchive) -> None:
    """Wait for the server's associations to end (their threads finish after the release)."""
    deadline = time.monotonic() + 10
    while _running_acceptors(archive) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _running_acceptors(archive) == 0


def test_connections_take_the_acceptor_prepared_while_idle(
        make_archive: Callable[..., RunningArchive]) -> None:
    """The server builds its next acceptor ahead (dicom_scp.server.AcceptorPreparer): a
    connection takes it, with the handlers bound since it was built (the one built before
    them is dropped), and one prepared is not counted as an open association."""
    archive = make_archive(precompute_metadata=False)
    server = archive.service.server  # type: ignore[union-attr]
    _echo(archive)
    first = _prepared(archive)
    _no_association_left(archive)  # the one prepared is not counted
    served: list[Any] = []
    server.bind(evt.EVT_ACCEPTED, lambda event: served.append(event.assoc))
    prepared = _prepared(archive)
    assert prepared is not first
    _echo(archive)
    assert served == [prepared]
    assert _prepared(archive) is not prepared
    _no_association_left(archive)


def test_acceptors_prepared_under_other_settings_are_not_used(
        make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False)
    server = archive.service.server  # type: ignore[union-attr]
    served: list[Any] = []
    server.bind(evt.EVT_ACCEPTED, lambda event: served.append(event.assoc))
    stale = _prepared(archive)
    server.ae.network_timeout = 33
    _echo(archive)
    assert len(served) == 1 and served[0] is not stale
    assert served[0].network_timeout == 33
    assert _prepared(archive).network_timeout == 33


def test_stopping_the_service_stops_its_preparer(
        make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False)
    _echo(archive)
    preparer = archive.service.server.preparer  # type: ignore[union-attr]
    assert preparer._thread.is_alive()
    archive.stop()
    assert not preparer._thread.is_alive() and preparer._spare is None


def _associate_rq(called: str, abstract_syntax: str | list[str], transfer_syntax: str,
                  calling: str = "RAWSCU") -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) with a presentation context per abstract syntax,
    built by hand so that it can carry UIDs pynetdicom's own requestor would refuse to
    send."""
    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BxH", kind, len(value)) + value

    syntaxes = [abstract_syntax] if isinstance(abstract_syntax, str) else abstract_syntax
    contexts = b"".join(
        item(0x20, bytes([2 * n + 1, 0, 0, 0]) + item(0x30, syntax.encode())
             + item(0x40, transfer_syntax.encode()))
        for n, syntax in enumerate(syntaxes))
    user = item(0x50, item(0x51, struct.pack(">I", 16384))
                + item(0x52, b"1.2.826.0.1.3680043.8.498.1"))
    body = (struct.pack(">H2x", 1) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + item(0x10, b"1.2.840.10008.3.1.1.1") + contexts + user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def _answer(port: int, request: bytes) -> int:
    """The type of the PDU the archive answers ``request`` with (0: connection closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = sock.recv(1)
        if head and head[0] == 0x02:
            sock.sendall(struct.pack(">BxI", 0x05, 4) + bytes(4))  # release
        return head[0] if head else 0


def test_uids_of_association_requests_are_checked_once_and_bad_ones_every_time(
        make_archive: Callable[..., RunningArchive]) -> None:
    """pynetdicom checks each UID of a request on every step; the archive remembers the
    checked ones (dicom_scp.server.remember_checked_uids), never a refused one."""
    import pynetdicom.presentation

    from dicom_scp import server

    archive = make_archive(precompute_metadata=False)
    assert getattr(pynetdicom.presentation.set_uid, "_pacs_remembered", False)
    too_long = "1.2.826.0.1.3680043.8.498." + "1" * 50  # 76 characters: no valid UID
    for _ in range(2):  # refused each time (the connection is aborted or closed)
        assert _answer(archive.port, _associate_rq("MINIPACS", too_long,
                                                   ExplicitVRLittleEndian)) in (0, 0x07)
        assert _answer(archive.port, _associate_rq("MINIPACS", str(Verification),
                                                   too_long)) in (0, 0x07)
    # a peer that connects and sends nothing, then goes
    socket.create_connection(("127.0.0.1", archive.port), timeout=10).close()
    # refused or gone, none of them holds an association thread (pynetdicom's would wait
    # for the request its ACSE timeout, 30 s, each counted against PACS_MAX_ASSOCIATIONS)
    server_ = archive.service.server  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while server_.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server_.active_associations
    for _ in range(2):  # accepted each time
        assert _answer(archive.port, _associate_rq("MINIPACS", str(Verification),
                                                   ImplicitVRLittleEndian)) == 0x02
    # the same UID object comes back for the same text; a context still holds each syntax once
    first = pynetdicom.presentation.set_uid(str(CTImageStorage), "abstract_syntax")
    assert pynetdicom.presentation.set_uid(str(CTImageStorage), "abstract_syntax") is first
    cx = PresentationContext()
    for syntax in [ExplicitVRLittleEndian, str(ExplicitVRLittleEndian), JPEGBaseline8Bit,
                   str(ExplicitVRLittleEndian).encode()]:
        cx.add_transfer_syntax(syntax)
    assert cx.transfer_syntax == [ExplicitVRLittleEndian, JPEGBaseline8Bit]
    with pytest.raises(ValueError):
        cx.add_transfer_syntax(too_long)
    with pytest.raises(ValueError):
        cx.add_transfer_syntax(too_long)
    assert server.UID_CACHE_SIZE >= 1000  # room for every SOP class and transfer syntax


def test_pynetdicom_standard_log_handlers_are_unbound_while_its_logger_is_quiet(
        make_archive: Callable[..., RunningArchive]) -> None:
    """They format every PDU and message (a 121-context request: ~7 ms) to log at DEBUG and
    INFO, which `pacs serve` does not show for pynetdicom."""
    import logging

    from pynetdicom import _config
    from pynetdicom._handlers import standard_pdu_recv_handler

    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        archive = make_archive(precompute_metadata=False)
    finally:
        logger.setLevel(level)
    assert _config.LOG_HANDLER_LEVEL == "none"
    served: list[Any] = []
    archive.service.server.bind(evt.EVT_ACCEPTED,  # type: ignore[union-attr]
                                lambda event: served.append(event.assoc))
    ae = AE("ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    assert served
    handlers = served[0].get_handlers(evt.EVT_PDU_RECV)
    assert all(handler[0] is not standard_pdu_recv_handler for handler in handlers)


def _negotiating_threads(archive: RunningArchive) -> list[tuple[str, str, bool]]:
    """For each association request: the event, the thread it fires on ("dul": the
    association's DUL thread), and whether that DUL thread runs yet."""
    seen: list[tuple[str, str, bool]] = []

    def record(event: Event) -> None:
        dul = event.assoc.dul
        thread = threading.current_thread()
        seen.append((event.event.name, "dul" if thread is dul else thread.name,
                     dul.is_alive()))

    for event_type in (evt.EVT_REQUESTED, evt.EVT_ACCEPTED):
        archive.service.server.bind(event_type, record)  # type: ignore[union-attr]
    return seen


def _released(sock: socket.socket) -> None:
    sock.sendall(struct.pack(">BxI", 0x05, 4) + bytes(4))  # A-RELEASE-RQ
    assert _read_pdu(sock)[0] == 0x06  # A-RELEASE-RP


def test_a_request_waiting_whole_is_negotiated_by_the_server_thread(
        make_archive: Callable[..., RunningArchive]) -> None:
    """The request is usually all there once the association is set up: the server's thread
    reads and answers it before the association's threads start (their start would delay
    the answer)."""
    archive = make_archive(precompute_metadata=False)
    seen = _negotiating_threads(archive)
    server = archive.service.server  # type: ignore[union-attr]
    accept = server.get_request

    def slow_accept() -> Any:
        connection = accept()
        time.sleep(0.1)  # the request is there before the server looks
        return connection

    server.get_request = slow_accept
    with socket.create_connection(("127.0.0.1", archive.port), timeout=10) as sock:
        sock.sendall(_associate_rq("MINIPACS", str(Verification), ImplicitVRLittleEndian))
        assert _read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        _released(sock)
    assert seen == [("EVT_REQUESTED", "dicom-server", False),
                    ("EVT_ACCEPTED", "dicom-server", False)]


def test_a_request_arriving_in_pieces_is_negotiated_by_the_dul_thread(
        make_archive: Callable[..., RunningArchive]) -> None:
    """A request not all there is left to the association's DUL thread, which reads it as
    it comes: the server's thread never waits for a peer."""
    archive = make_archive(precompute_metadata=False)
    seen = _negotiating_threads(archive)
    request = _associate_rq("MINIPACS", str(Verification), ImplicitVRLittleEndian)
    with socket.create_connection(("127.0.0.1", archive.port), timeout=10) as sock:
        sock.sendall(request[:40])
        time.sleep(0.3)
        sock.sendall(request[40:])
        assert _read_pdu(sock)[0] == 0x02
        _released(sock)
    assert seen == [("EVT_REQUESTED", "dul", True), ("EVT_ACCEPTED", "dul", True)]
    # peers that connect and send nothing hold the server's thread no longer than its
    # short wait: the next association is accepted while they stay silent
    silent = [socket.create_connection(("127.0.0.1", archive.port), timeout=10)
              for _ in range(5)]
    try:
        ae = AE("ECHOSCU")
        ae.add_requested_context(Verification)
        ae.acse_timeout = 5
        assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        for sock in silent:
            sock.close()


def _slow_thread_starts(archive: RunningArchive, delay: float) -> None:
    """Hold the server thread ``delay`` seconds before it starts each association's thread
    (a handler after the archive's own at EVT_CONN_OPEN): the DUL, already started,
    negotiates meanwhile."""
    archive.service.server.bind(  # type: ignore[union-attr]
        evt.EVT_CONN_OPEN, lambda event: time.sleep(delay))


def _running_acceptors(archive: RunningArchive) -> int:
    return len(archive.service.server.active_associations)  # type: ignore[union-attr]


def test_association_limit_counts_those_whose_thread_has_not_started(
        make_archive: Callable[..., RunningArchive]) -> None:
    """PACS_MAX_ASSOCIATIONS: one more is refused as local-limit-exceeded (PS3.8 9.3.4:
    transient, service-provider presentation related, reason 2), even while the newcomer's
    own thread has not started (pynetdicom counts running threads)."""
    archive = make_archive(precompute_metadata=False, max_associations=1)
    _slow_thread_starts(archive, 0.3)
    ae = AE("ECHOSCU")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    assert held.is_established
    deadline = time.monotonic() + 10
    while _running_acceptors(archive) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _running_acceptors(archive) == 1
    with socket.create_connection(("127.0.0.1", archive.port), timeout=10) as sock:
        sock.sendall(_associate_rq("MINIPACS", str(Verification), ImplicitVRLittleEndian))
        kind, _, length = struct.unpack(">BBI", sock.recv(6))
        body = sock.recv(length)
    assert kind == 0x03  # A-ASSOCIATE-RJ
    assert tuple(body[1:4]) == (2, 3, 2)
    held.release()
    _no_association_left(archive)
    again = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    assert again.is_established and again.send_c_echo().Status == 0
    again.release()


def test_release_before_the_association_thread_runs_is_answered(
        make_archive: Callable[..., RunningArchive], monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer may release as soon as it is accepted, before the association's thread first
    waits for work: the request must not be missed until that wait ends (MESSAGE_WAIT,
    made long here so that a miss shows as a release timing out into an abort)."""
    from dicom_scp import reactor

    monkeypatch.setattr(reactor, "MESSAGE_WAIT", 60.0)
    archive = make_archive(precompute_metadata=False)
    _slow_thread_starts(archive, 0.2)
    ae = AE("ECHOSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    for _ in range(2):
        assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
        assert assoc.is_established
        assoc.release()
        assert assoc.is_released and not assoc.is_aborted


def _released_on(archive: RunningArchive) -> list[bool]:
    """For each association the archive releases: whether its DUL thread answered."""
    answered: list[bool] = []
    archive.service.server.bind(  # type: ignore[union-attr]
        evt.EVT_RELEASED,
        lambda event: answered.append(threading.current_thread() is event.assoc.dul))
    return answered


def test_release_of_an_idle_association_is_answered_by_its_dul(
        make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False)
    answered = _released_on(archive)
    _echo(archive, 3)
    assert answered == [True] * 3


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    kind, length = struct.unpack(">BxI", exactly(6))
    return kind, exactly(length)


def test_release_during_a_request_is_answered_after_it(
        make_archive: Callable[..., RunningArchive], monkeypatch: pytest.MonkeyPatch) -> None:
    """A release requested while the association's thread still answers a C-FIND waits for
    the final response (the DUL does not answer it then)."""
    from dicom_scp import wire
    from dicom_scp.subops import command_elements

    archive = make_archive(precompute_metadata=False)
    answered = _released_on(archive)
    search = archive.svc.query.search

    def slow_search(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return search(*args, **kwargs)

    monkeypatch.setattr(archive.svc.query, "search", slow_search)
    model = str(StudyRootQueryRetrieveInformationModelFind)
    command = wire.command_set(CommandField=0x0020, MessageID=1, AffectedSOPClassUID=model,
                               Priority=0, CommandDataSetType=wire.DATA_SET)
    query = pydicom.Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
    identifier = pydicom.filebase.DicomBytesIO()
    identifier.is_little_endian, identifier.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(identifier, query)
    with socket.create_connection(("127.0.0.1", archive.port), timeout=10) as sock:
        sock.sendall(_associate_rq("MINIPACS", model, ImplicitVRLittleEndian))
        assert _read_pdu(sock)[0] == 0x02
        sock.sendall(wire.message_pdus(1, command, identifier.getvalue(), 16384)
                     + struct.pack(">BxI", 0x05, 4) + bytes(4))
        kinds, statuses = [], []
        while not kinds or kinds[-1] == 0x04:
            kind, body = _read_pdu(sock)
            kinds.append(kind)
            if kind == 0x04 and body[5] & wire.COMMAND:
                status = command_elements(body[6:])[0x0900]
                statuses.append(struct.unpack("<H", status)[0])
    assert kinds[-1] == 0x06 and set(kinds[:-1]) == {0x04}  # A-RELEASE-RP after the P-DATA
    assert statuses[-1] == 0x0000
    deadline = time.monotonic() + 10  # EVT_RELEASED may come just after the A-RELEASE-RP
    while not answered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert answered == [False]


def test_long_association_requests_are_decoded_once_for_the_same_bytes(
        make_archive: Callable[..., RunningArchive], monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer proposing many contexts sends the same request each time: decoded once
    (dicom_scp.reactor.decoded_request), answered the same every time; a request that does
    not decode is refused every time."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    from dicom_scp import reactor

    archive = make_archive(precompute_metadata=False)
    decodes: list[int] = []
    decode = reactor.A_ASSOCIATE_RQ.decode

    def counted(self: Any, data: bytes) -> None:
        decodes.append(len(data))
        decode(self, data)

    monkeypatch.setattr(reactor.A_ASSOCIATE_RQ, "decode", counted)
    monkeypatch.setattr(reactor, "_REQUESTS", type(reactor._REQUESTS)())
    many = sorted(_STORAGE_CLASSES.values())[:60]
    request = _associate_rq("MINIPACS", many, ImplicitVRLittleEndian)
    assert len(request) >= reactor.REQUEST_CACHE_MIN
    answers = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", archive.port), timeout=10) as sock:
            sock.sendall(request)
            kind, body = _read_pdu(sock)
            sock.sendall(struct.pack(">BxI", 0x05, 4) + bytes(4))
            assert _read_pdu(sock)[0] == 0x06
        assert kind == 0x02
        answers.append(body[68:])  # the items: contexts and their results, user information
    assert len(decodes) == 1 and answers[0] == answers[1] == answers[2]
    # another calling AE title: other bytes, decoded for themselves
    other = _associate_rq("MINIPACS", many, ImplicitVRLittleEndian, calling="OTHERSCU")
    assert _answer(archive.port, other) == 0x02
    assert len(decodes) == 2
    # short requests are decoded as pynetdicom does (nothing kept)
    assert _answer(archive.port, _associate_rq("MINIPACS", str(Verification),
                                               ImplicitVRLittleEndian)) == 0x02
    assert len(reactor._REQUESTS) == 2
    too_long = "1.2.826.0.1.3680043.8.498." + "1" * 50
    bad = _associate_rq("MINIPACS", [*many, too_long], ImplicitVRLittleEndian)
    for _ in range(2):
        assert _answer(archive.port, bad) in (0, 0x07)
    assert len(reactor._REQUESTS) == 2


def test_associations_set_up_and_ended_concurrently_lose_nothing(
        make_archive: Callable[..., RunningArchive]) -> None:
    """Senders that associate for each image, at once, with peers that abort after C-ECHO
    and peers that hang up before, during or after their request: every store is
    acknowledged and indexed, and no association is left open."""
    from pydicom.uid import generate_uid

    from pacs.index.attributes import Level

    archive = make_archive(precompute_metadata=False)
    template = pydicom.dcmread(testdata("CT_small.dcm"))
    study = generate_uid()
    failures: list[str] = []

    def sender(n: int) -> None:
        ae = AE(f"SENDER{n}")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        for _ in range(12):
            ds = copy.deepcopy(template)
            ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
            assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
            status = assoc.send_c_store(ds).Status if assoc.is_established else None
            if status != 0:
                failures.append(f"store: {status}")
            assoc.release()

    def aborter() -> None:
        ae = AE("ABORTER")
        ae.add_requested_context(Verification)
        for _ in range(12):
            assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
            if not assoc.is_established or assoc.send_c_echo().Status != 0:
                failures.append("echo")
            assoc.abort()

    def hang_up() -> None:
        request = _associate_rq("MINIPACS", str(Verification), ImplicitVRLittleEndian)
        for n in range(24):
            with socket.create_connection(("127.0.0.1", archive.port), timeout=10) as sock:
                sock.sendall((b"", request[:20], request)[n % 3])

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=aborter), threading.Thread(target=hang_up)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    stored = archive.svc.retrieve.find_instances(
        None, Level.STUDY, {"StudyInstanceUID": study})  # type: ignore[arg-type]
    assert len(stored) == 36
    deadline = time.monotonic() + 20
    while _running_acceptors(archive) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running_acceptors(archive) == 0
