"""C-STORE requests read and served by the DUL thread (dicom_scp.inbound): the bytes on the
wire in every shape PS3.8 allows (fragments, several PDVs per PDU, a command set over two
PDUs), messages for pynetdicom in between, and broken input, against a running archive."""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_scp import inbound, wire
from pacs.dicom.header import dataset_offset
from pacs.index.attributes import Level
from tests.conftest import RunningArchive, staged_leftovers, testdata

embedded = pytest.mark.parametrize("backend", ["embedded"], indirect=True)
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def ct() -> pydicom.Dataset:
    return pydicom.dcmread(testdata("CT_small.dcm"))


def _encoded(ds: pydicom.Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _pdu(context_id: int, pdvs: list[tuple[int, bytes]]) -> bytes:
    """A P-DATA-TF PDU of PDVs with their own message control headers."""
    items = b"".join(struct.pack(">IBB", len(f) + 2, context_id, c) + f for c, f in pdvs)
    return struct.pack(">BxI", 0x04, len(items)) + items


def _store_command(ds: pydicom.Dataset, message_id: int = 7) -> bytes:
    return wire.command_set(CommandField=0x0001, MessageID=message_id, Priority=0,
                            AffectedSOPClassUID=ds.SOPClassUID,
                            AffectedSOPInstanceUID=ds.SOPInstanceUID,
                            CommandDataSetType=wire.DATA_SET)


class RawPeer:
    """A pynetdicom requestor whose reactor is held, so that the test writes PDUs of its own
    making on the socket and reads the answers from the DIMSE queue."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        ae = AE("RAWPEER")
        ae.add_requested_context(CTImageStorage, EXPLICIT_LE)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        self.assoc: Association = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
        assert self.assoc.is_established
        self.ct_context = self._context(CTImageStorage)
        self.echo_context = self._context(Verification)

    def _context(self, sop_class: Any) -> int:
        return next(int(cx.context_id) for cx in self.assoc.accepted_contexts  # type: ignore[arg-type]
                    if cx.abstract_syntax == sop_class)

    def send(self, data: bytes) -> None:
        self.assoc._reactor_checkpoint.clear()
        while not self.assoc._is_paused:
            time.sleep(0.0001)
        self.assoc.dul.socket.socket.sendall(data)  # type: ignore[union-attr]

    def response(self) -> Any:
        _, rsp = self.assoc.dimse.get_msg(block=True)
        return rsp

    def close(self) -> None:
        self.assoc._reactor_checkpoint.set()
        if self.assoc.is_established:
            self.assoc.release()


@pytest.fixture
def peer(archive: RunningArchive) -> Iterator[RawPeer]:
    raw = RawPeer(archive.port)
    yield raw
    raw.close()


def _served(archive: RunningArchive) -> inbound.InboundReader:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for assoc in list(archive.service.server.active_associations):  # type: ignore[union-attr]
            reader = getattr(assoc.dul, "inbound", None)
            if reader is not None:
                return cast(inbound.InboundReader, reader)
        time.sleep(0.01)
    raise AssertionError("no association with an inbound reader on the server")


def _stored(archive: RunningArchive, sop_instance_uid: str) -> bytes:
    retrieve = archive.svc.retrieve
    (row,) = retrieve.find_instances(None, Level.IMAGE,  # type: ignore[arg-type]
                                     {"SOPInstanceUID": sop_instance_uid})
    return retrieve.read(row)


@embedded
def test_store_read_in_many_small_pdus_with_several_pdvs_each(
        archive: RunningArchive, peer: RawPeer, ct: pydicom.Dataset) -> None:
    data = _encoded(ct)
    pieces = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    controls = [0] * (len(pieces) - 1) + [wire.LAST]
    pdvs = list(zip(controls, pieces, strict=True))
    pdus = [wire.pdv_pdu(peer.ct_context, wire.COMMAND | wire.LAST, _store_command(ct))]
    pdus += [_pdu(peer.ct_context, pdvs[i:i + 3]) for i in range(0, len(pdvs), 3)]
    peer.send(b"".join(pdus))
    rsp = peer.response()
    assert rsp.Status == 0 and rsp.MessageIDBeingRespondedTo == 7
    assert rsp.AffectedSOPInstanceUID == ct.SOPInstanceUID
    got = _stored(archive, ct.SOPInstanceUID)
    assert got[dataset_offset(got):] == data
    meta = pydicom.dcmread(io.BytesIO(got), stop_before_pixels=True).file_meta
    assert meta.SourceApplicationEntityTitle == "RAWPEER"
    assert _served(archive).served == 1


@embedded
def test_command_and_data_set_in_one_pdu_then_an_echo_for_pynetdicom(
        archive: RunningArchive, peer: RawPeer, ct: pydicom.Dataset) -> None:
    peer.send(wire.message_pdus(peer.ct_context, _store_command(ct), _encoded(ct), 0))
    assert peer.response().Status == 0
    echo = wire.command_set(CommandField=0x0030, MessageID=8,
                            AffectedSOPClassUID=Verification,
                            CommandDataSetType=wire.NO_DATA_SET)
    peer.send(wire.pdv_pdu(peer.echo_context, wire.COMMAND | wire.LAST, echo))
    rsp = peer.response()
    assert rsp.Status == 0 and rsp.MessageIDBeingRespondedTo == 8  # pynetdicom's C-ECHO
    assert _served(archive).served == 1


@embedded
def test_command_sets_split_over_two_pdus(archive: RunningArchive, peer: RawPeer,
                                          ct: pydicom.Dataset) -> None:
    command = _store_command(ct)
    peer.send(wire.pdv_pdu(peer.ct_context, wire.COMMAND, command[:20])
              + wire.pdv_pdu(peer.ct_context, wire.COMMAND | wire.LAST, command[20:])
              + wire.pdv_pdu(peer.ct_context, wire.LAST, _encoded(ct)))
    assert peer.response().Status == 0
    got = _stored(archive, ct.SOPInstanceUID)
    assert got[dataset_offset(got):] == _encoded(ct)
    assert _served(archive).served == 1
    # a C-ECHO's command set in two PDUs: both fragments handed to pynetdicom, in order
    echo = wire.command_set(CommandField=0x0030, MessageID=11,
                            AffectedSOPClassUID=Verification,
                            CommandDataSetType=wire.NO_DATA_SET)
    peer.send(wire.pdv_pdu(peer.echo_context, wire.COMMAND, echo[:30])
              + wire.pdv_pdu(peer.echo_context, wire.COMMAND | wire.LAST, echo[30:]))
    rsp = peer.response()
    assert rsp.MessageIDBeingRespondedTo == 11 and rsp.Status == 0


@embedded
def test_data_set_cut_short_by_another_message_is_dropped(
        archive: RunningArchive, peer: RawPeer, ct: pydicom.Dataset) -> None:
    data = _encoded(ct)
    peer.send(wire.pdv_pdu(peer.ct_context, wire.COMMAND | wire.LAST, _store_command(ct))
              + wire.pdv_pdu(peer.ct_context, 0, data[:5000]))
    echo = wire.command_set(CommandField=0x0030, MessageID=9,
                            AffectedSOPClassUID=Verification,
                            CommandDataSetType=wire.NO_DATA_SET)
    peer.send(wire.pdv_pdu(peer.echo_context, wire.COMMAND | wire.LAST, echo))
    rsp = peer.response()
    assert rsp.MessageIDBeingRespondedTo == 9 and rsp.Status == 0
    assert list(archive.svc.store.keys()) == []
    assert staged_leftovers(archive.svc.store) == []  # what had arrived was written, then removed
    # the association still works: the same object, whole this time
    peer.send(wire.message_pdus(peer.ct_context, _store_command(ct, 10), data, 0))
    assert peer.response().Status == 0
    assert _served(archive).served == 1


@embedded
def test_pdu_longer_than_any_peer_may_send_aborts(archive: RunningArchive,
                                                   peer: RawPeer) -> None:
    peer.send(struct.pack(">BxI", 0x04, inbound.MAX_PDU_READ + 1) + b"\0" * 64)
    deadline = time.monotonic() + 10
    while peer.assoc.is_established and time.monotonic() < deadline:
        peer.assoc._reactor_checkpoint.set()  # let the requestor see the A-ABORT
        time.sleep(0.05)
    assert not peer.assoc.is_established
    assert list(archive.svc.store.keys()) == []


@embedded
def test_peer_stalled_in_the_middle_of_a_pdu_is_dropped(
        make_archive: Callable[..., RunningArchive], ct: pydicom.Dataset) -> None:
    archive = make_archive(network_timeout=1.0)
    raw = RawPeer(archive.port, timeout=60)  # the archive, not the peer, must give up
    try:
        pdu = wire.message_pdus(raw.ct_context, _store_command(ct), _encoded(ct), 0)
        raw.send(pdu[:len(pdu) // 2])  # and nothing more
        deadline = time.monotonic() + 8
        while raw.assoc.is_established and time.monotonic() < deadline:
            raw.assoc._reactor_checkpoint.set()
            time.sleep(0.05)
        assert not raw.assoc.is_established
        assert list(archive.svc.store.keys()) == []
        assert list((archive.settings.data_dir / "tmp").iterdir()) == []
        deadline = time.monotonic() + 5  # the DUL thread ends just after the association
        while staged_leftovers(archive.svc.store) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert staged_leftovers(archive.svc.store) == []
    finally:
        raw.close()


def _data_set_pdus(context_id: int, data: bytes, count: int) -> list[bytes]:
    size = -(-len(data) // count)
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return [_pdu(context_id, [(wire.LAST if n == len(pieces) - 1 else 0, piece)])
            for n, piece in enumerate(pieces)]


@embedded
def test_data_set_arriving_slower_than_the_network_timeout_is_stored(
        make_archive: Callable[..., RunningArchive], ct: pydicom.Dataset) -> None:
    """The PDUs of one data set are read on without a pass of the DUL loop each; each still
    counts as activity, so a transfer longer than the network timeout is not cut."""
    archive = make_archive(network_timeout=1.0)
    raw = RawPeer(archive.port)
    try:
        raw.send(wire.pdv_pdu(raw.ct_context, wire.COMMAND | wire.LAST, _store_command(ct)))
        for pdu in _data_set_pdus(raw.ct_context, _encoded(ct), 10):  # 2.5 s in all
            time.sleep(0.25)
            raw.assoc.dul.socket.socket.sendall(pdu)  # type: ignore[union-attr]
        rsp = raw.response()
        assert rsp.Status == 0
        got = _stored(archive, ct.SOPInstanceUID)
        assert got[dataset_offset(got):] == _encoded(ct)
        raw.assoc._reactor_checkpoint.set()  # the association goes on
        time.sleep(0.3)
        assert raw.assoc.is_established
        assert raw.assoc.send_c_echo().Status == 0
    finally:
        raw.close()


@embedded
def test_peer_stalled_between_the_pdus_of_a_data_set_is_dropped(
        make_archive: Callable[..., RunningArchive], ct: pydicom.Dataset) -> None:
    archive = make_archive(network_timeout=1.0)
    raw = RawPeer(archive.port, timeout=60)  # the archive, not the peer, must give up
    try:
        pdus = _data_set_pdus(raw.ct_context, _encoded(ct), 4)
        raw.send(wire.pdv_pdu(raw.ct_context, wire.COMMAND | wire.LAST, _store_command(ct))
                 + b"".join(pdus[:2]))  # and nothing more
        deadline = time.monotonic() + 8
        while raw.assoc.is_established and time.monotonic() < deadline:
            raw.assoc._reactor_checkpoint.set()
            time.sleep(0.05)
        assert not raw.assoc.is_established
        assert list(archive.svc.store.keys()) == []
        deadline = time.monotonic() + 5  # the DUL thread ends just after the association
        while staged_leftovers(archive.svc.store) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert staged_leftovers(archive.svc.store) == []
    finally:
        raw.close()


@pytest.mark.parametrize("body", [
    b"\x00\x00\x00\x01\x01",  # shorter than a PDV header
    struct.pack(">IBB", 1, 1, 3),  # item length below 2
    struct.pack(">IBB", 10, 1, 3) + b"abc",  # runs past the PDU
])
def test_malformed_pdv_items_are_not_taken(body: bytes) -> None:
    assert inbound._pdv_items(bytearray(body)) is None


def test_pdv_items_located() -> None:
    pdu = wire.pdv_pdu(3, wire.COMMAND | wire.LAST, b"abcd", b"ef")
    assert inbound._pdv_items(bytearray(pdu[6:])) == [(0, 10, 3, 3), (10, 18, 3, 3)]
