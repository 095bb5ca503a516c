"""The C-STORE-RQ of a sub-operation, framed from a data set that arrives in chunks, is what
pynetdicom sends and what a pynetdicom peer decodes (PS3.7 9.3.1.1, 6.3.1; PS3.8 9.3.5,
E.2, D.1); C-STORE response command sets are read as pynetdicom encodes them."""

from __future__ import annotations

import struct
from io import BytesIO

from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from dicom_scp import sender, subops, wire
from pacs.dicom.header import dataset_offset
from tests.conftest import testdata

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def read_pdus(data: bytes) -> list[list[tuple[int, int, bytes]]]:
    """The (context ID, control header, fragment) of each PDV of each P-DATA-TF PDU."""
    pdus = []
    pos = 0
    while pos < len(data):
        kind, length = struct.unpack_from(">BxI", data, pos)
        assert kind == 0x04
        end, pos = pos + 6 + length, pos + 6
        pdvs = []
        while pos < end:
            item, cx, control = struct.unpack_from(">IBB", data, pos)
            pdvs.append((cx, control, data[pos + 6:pos + 4 + item]))
            pos += 4 + item
        pdus.append(pdvs)
    return pdus


def store_rq(msg_id: int, originator: str | None) -> C_STORE:
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = 2
    req.AffectedSOPClassUID = CT_STORAGE
    req.AffectedSOPInstanceUID = INSTANCE
    req.MoveOriginatorApplicationEntityTitle = originator
    req.MoveOriginatorMessageID = 3 if originator else None
    return req


@given(msg_id=st.integers(0, 0xFFFF), originator=st.sampled_from([None, "MOVESCU", "ODD"]))
@settings(max_examples=50, deadline=None)
def test_store_command_equals_pynetdicom(msg_id: int, originator: str | None) -> None:
    message = C_STORE_RQ()
    message.primitive_to_message(store_rq(msg_id, originator))
    message.command_set.CommandDataSetType = 0x0001  # pynetdicom's "a data set follows"
    command = b"".join(pdv[1:] for primitive in message.encode_msg(1, 0)
                       for _, pdv in primitive.presentation_data_value_list if pdv[0] & 1)
    assert subops.store_command(msg_id, 2, CT_STORAGE, INSTANCE, originator,
                                3 if originator else None) == command


@given(data_size=st.integers(0, 3000), cuts=st.lists(st.integers(0, 3000), max_size=6),
       max_pdu=st.sampled_from([0, 7, 8, 64, 100, 4096]), context_id=st.sampled_from([1, 255]),
       batch=st.sampled_from([1, 500, 1 << 20]))
@settings(max_examples=300, deadline=None)
def test_streamed_framing_is_what_pynetdicom_decodes(data_size: int, cuts: list[int],
                                                     max_pdu: int, context_id: int,
                                                     batch: int) -> None:
    command = subops.store_command(7, 2, CT_STORAGE, INSTANCE, "MOVESCU", 3)
    data_set = bytes(range(256)) * (data_size // 256) + bytes(range(data_size % 256))
    bounds = sorted({0, data_size, *(c for c in cuts if c <= data_size)})
    chunks = [data_set[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    chunks.insert(len(chunks) // 2, b"")  # an empty chunk is not the end
    batches = list(subops.message_batches(context_id, command, chunks, max_pdu, batch))
    framed = b"".join(batches)
    assert all(read_pdus(b) for b in batches)  # every write holds whole PDUs
    pdus = read_pdus(framed)
    fragments = [pdv for pdu in pdus for pdv in pdu]
    assert all(len(pdu) == 1 for pdu in pdus)  # one PDV per PDU
    for cx, _, fragment in fragments:
        assert cx == context_id
        # PS3.8 D.1: the PDV with its 6-byte header within the peer's maximum
        assert not max_pdu or len(fragment) + 6 <= max_pdu
    controls = [control for _, control, _ in fragments]
    n_command = sum(1 for c in controls if c & wire.COMMAND)
    assert controls == ([0x01] * (n_command - 1) + [0x03] + [0x00] * (len(controls) - n_command
                                                                       - 1) + [0x02])
    if max_pdu and len(command) + len(data_set) + 12 > max_pdu and data_set:
        # the same PDUs as wire's framing of the whole message
        assert framed == wire.message_pdus(context_id, command, data_set, max_pdu)
    message = DIMSEMessage()
    for index, pdvs in enumerate(pdus):
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[cx, bytes([c]) + f] for cx, c, f in pdvs]
        assert message.decode_msg(primitive) == (index == len(pdus) - 1)
    assert message.encoded_command_set.getvalue() == command
    assert message.data_set.getvalue() == data_set
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    assert (primitive.MessageID, primitive.AffectedSOPInstanceUID) == (7, INSTANCE)


@given(status=st.sampled_from([0x0000, 0xB000, 0xA700, 0xC000]),
       comment=st.sampled_from([None, "", "out of space", "odd"]))
@settings(max_examples=30, deadline=None)
def test_store_response_elements_as_pynetdicom_encodes_them(status: int,
                                                            comment: str | None) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT_STORAGE
    rsp.AffectedSOPInstanceUID = INSTANCE
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    command = BytesIO()
    for primitive in message.encode_msg(1, 0):
        for _, pdv in primitive.presentation_data_value_list:
            command.write(pdv[1:])
    elements = subops.command_elements(command.getvalue())
    assert elements[0x0100] == struct.pack("<H", 0x8001)
    assert elements[0x0120] == struct.pack("<H", 7)
    assert elements[0x0800] == struct.pack("<H", 0x0101)
    got = subops.status_dataset(elements)
    assert got.Status == status
    assert got.get("ErrorComment") == (comment or None)


@given(chunk_size=st.integers(1, 700))
@settings(max_examples=60, deadline=None)
def test_data_set_after_the_file_meta_whatever_the_chunk_size(chunk_size: int) -> None:
    raw = testdata("CT_small.dcm").read_bytes()
    chunks = iter([raw[i:i + chunk_size] for i in range(0, len(raw), chunk_size)])
    assert b"".join(sender._data_set(chunks)) == raw[dataset_offset(raw):]


class _DulActingAtOnce:
    """A DUL whose thread acts on an event the moment it is queued (the worst timing for a
    PDU handed over from another thread): each event must find its PDU already there."""

    def __init__(self) -> None:
        import queue

        self._recv_pdu: queue.Queue[object] = queue.Queue()
        self.acted: list[tuple[str, object]] = []
        dul = self

        class Events:
            def put(self, event: str) -> None:
                dul.acted.append((event, dul._recv_pdu.get(False)))  # Empty: the old race

        self.event_queue = Events()

    def _decode_pdu(self, data: bytearray) -> tuple[bytes, str]:
        return bytes(data), "Evt10"


def test_pdus_read_by_the_sub_operations_reach_the_dul_before_their_events() -> None:
    """A C-CANCEL-RQ read while C-STORE responses are awaited is handed to pynetdicom from
    the sending thread; with the event queued first the DUL thread sometimes found no PDU
    and aborted the association (a C-GET cancel answered with nothing)."""
    dul = _DulActingAtOnce()

    class Assoc:
        pass

    assoc = Assoc()
    assoc.dul = dul  # type: ignore[attr-defined]
    reader = object.__new__(subops.ResponseReader)
    reader._assoc = assoc  # type: ignore[assignment]
    pdus = [b"\x04\x00\x00\x00\x00\x02\xaa\xbb", b"\x04\x00\x00\x00\x00\x02\xcc\xdd"]
    reader._hand_to_dul(pdus)
    assert dul.acted == [("Evt10", pdus[0]), ("Evt10", pdus[1])]
