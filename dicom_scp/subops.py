"""The wire side of C-STORE sub-operations (C-MOVE, C-GET), without pynetdicom's reactors.

pynetdicom sends every P-DATA-TF PDU through its DUL thread, one PDU per reactor loop, and
answers are picked up by reactors that sleep 1 ms whenever a loop found nothing to do; for a
100-slice study sent to a peer that takes 16 KB PDUs that is thousands of queued PDUs and
hundreds of sleeps. Here the thread that runs the retrieve (the one calling ``send_c_store``)
does a sub-operation's I/O itself:

- :func:`message_batches`: the C-STORE-RQ's PDUs (framed by :func:`dicom_scp.wire.pdv_pdu`,
  PS3.8 9.3.5 and E.2) with the data set read from storage as they go, joined into large
  writes for :class:`dicom_scp.wire.Writer` (which keeps them in order with pynetdicom's
  queue and never inside one of its PDUs). ``wire.message_pdus`` needs the data set whole
  in memory, hence this streaming variant.
- :class:`ResponseReader`: reads the C-STORE-RSP off the socket while pynetdicom's DUL thread
  is told to leave the socket alone, and decodes the few command elements it needs; any
  other PDU (an A-ABORT, an A-RELEASE-RQ, a C-CANCEL-RQ on a C-GET association) is handed to
  the DUL exactly as if it had read it.
- :func:`hold_reactor` / :func:`resume_reactor`: a requestor association's reactor (the C-MOVE
  sub-association) stays paused for the whole retrieve instead of being paused and woken per
  sub-operation, which cost a reactor loop (>= 1 ms) each time.
- :func:`thin_pending`: C-MOVE/C-GET pending responses are optional (PS3.4 C.4.2.3.1,
  C.4.3.3.1: "Optionally, the SCP may generate responses ... with status equal to Pending");
  pynetdicom sends one per sub-operation, we let one through per :data:`PENDING_INTERVAL`.

The C-STORE requests and responses handled here are not seen by pynetdicom's
``EVT_DIMSE_SENT``/``EVT_DIMSE_RECV``/``EVT_PDU_*`` handlers (its debug logging); the sender
logs each sub-operation at DEBUG instead. Only plain TCP sockets (``wire.Writer.of``); TLS
associations keep pynetdicom's path.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE

from dicom_scp import wire

PENDING = 0xFF00
PENDING_INTERVAL = 0.25  # seconds between two pending C-MOVE/C-GET responses we let through
BATCH = 256 << 10  # bytes of PDUs per socket write
UNLIMITED_FRAGMENT = 1 << 20  # fragment size when the peer sets no maximum PDU length
POLL = 0.05  # seconds between two looks at the association while a response is awaited
_C_STORE_RSP = struct.pack("<H", 0x8001)  # CommandField
_NO_DATA_SET = struct.pack("<H", 0x0101)  # CommandDataSetType: no data set follows
_US = struct.Struct("<H")
_STATUS = Tag(0x0000, 0x0900)

_PDU_HEADER = struct.Struct(">BxI")  # PDU type, reserved, PDU length (PS3.8 9.3)
_PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, control header
_PDV_OVERHEAD = _PDV_HEADER.size  # 6: what a PDV adds to its fragment
_PDATA_HEADER = struct.Struct(">BxIIBB")  # a P-DATA-TF PDU's header and its one PDV's
_ELEMENT = struct.Struct("<HHI")  # implicit VR little endian: group, element, length


def store_command(message_id: int, priority: int, sop_class_uid: str, sop_instance_uid: str,
                  originator_aet: str | None, originator_id: int | None) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1) announcing a data set."""
    return wire.command_set(
        AffectedSOPClassUID=sop_class_uid, CommandField=0x0001, MessageID=message_id,
        Priority=priority, CommandDataSetType=wire.DATA_SET,
        AffectedSOPInstanceUID=sop_instance_uid,
        MoveOriginatorApplicationEntityTitle=originator_aet.strip() if originator_aet else None,
        MoveOriginatorMessageID=originator_id)


def fragment_size(max_pdu: int) -> int:
    """The largest fragment a PDV may carry within the peer's Maximum Length Received
    (PS3.8 D.1: the limit applies to the P-DATA-TF's variable field; 0: no limit)."""
    if not max_pdu:
        return UNLIMITED_FRAGMENT
    if max_pdu <= _PDV_OVERHEAD:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for a fragment")
    return max_pdu - _PDV_OVERHEAD


def message_batches(context_id: int, command: bytes, data_set: Iterable[bytes | memoryview],
                    max_pdu: int, batch: int = BATCH) -> Iterator[bytes]:
    """The PDUs of one message, joined into writes of about ``batch`` bytes: the command set
    fragments, then the fragments of the data set, which arrives in chunks of any size
    (already in the context's transfer syntax); the last fragment of each is flagged
    (PS3.8 E.2). A fragment may span chunks; each byte of the data set is copied once, into
    its batch, and memory holds one batch and one chunk, whatever the object's size.

    ``wire.pdv_pdu`` frames whole fragments (a copy each); here PDU and PDV headers go
    between slices of the chunks instead.
    """
    size = fragment_size(max_pdu)
    parts: list[bytes | memoryview] = []
    for pos in range(0, len(command), size):
        last = wire.LAST if pos + size >= len(command) else 0
        parts.append(wire.pdv_pdu(context_id, wire.COMMAND | last, command[pos:pos + size]))
    pending = 0
    fragment: list[memoryview] = []  # slices of the chunks making up the next fragment
    filled = 0

    def frame(control: int) -> None:
        nonlocal filled, pending
        parts.append(_PDATA_HEADER.pack(0x04, filled + _PDV_OVERHEAD, filled + 2, context_id,
                                        control))
        parts.extend(fragment)
        pending += filled
        fragment.clear()
        filled = 0

    chunks = (c for c in data_set if len(c))  # an empty chunk would read as the end
    chunk = next(chunks, b"")
    while chunk:
        following = next(chunks, b"")
        view = memoryview(chunk)
        pos = 0
        while pos < len(view):
            take = min(size - filled, len(view) - pos)
            fragment.append(view[pos:pos + take])
            filled += take
            pos += take
            if filled == size and (pos < len(view) or following):  # more data after it
                frame(0)
                if pending >= batch:
                    yield b"".join(parts)
                    parts, pending = [], 0
        chunk = following
    frame(wire.LAST)  # the last fragment (empty for an empty data set)
    yield b"".join(parts)


class ResponseReader:
    """Reads the C-STORE responses of one association off its socket, in the thread that
    sends the requests; see the module docstring. Get it with :meth:`of`.

    pynetdicom's DUL thread checks the socket in ``_is_transport_event``; while
    :meth:`exchange` holds the lock, that check reports nothing to read, so the two never
    read at the same time, and a response cannot reach pynetdicom's DIMSE queue first (the
    lock is taken before the request is written).
    """

    def __init__(self, assoc: Association, sock: socket.socket) -> None:
        self._assoc = assoc
        self._socket = sock
        self._lock = threading.Lock()
        self.timed_out = False
        dul = assoc.dul
        check = dul._is_transport_event

        def check_unless_reading() -> bool:  # the DUL thread, every loop
            if not self._lock.acquire(blocking=False):
                return False
            try:
                return check()
            finally:
                self._lock.release()

        dul._is_transport_event = check_unless_reading  # type: ignore[method-assign]

    @classmethod
    def of(cls, assoc: Association) -> ResponseReader | None:
        """The reader of ``assoc`` (made on first use), or None for a socket that is not
        plain TCP (TLS: pynetdicom reads)."""
        reader = getattr(assoc, "_pacs_reader", None)
        if isinstance(reader, ResponseReader):
            return reader
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if type(sock) is not socket.socket:
            return None
        reader = cls(assoc, sock)
        assoc._pacs_reader = reader  # type: ignore[attr-defined]
        return reader

    def exchange(self, write: Callable[[], None], message_id: int,
                 timeout: float | None) -> dict[int, bytes] | None:
        """``write()`` a request, then read until the C-STORE-RSP to ``message_id``: its
        command elements by element number (group 0000), or None if the association ended
        (the DUL has been told) or ``timeout`` (the DIMSE timeout) passed: :attr:`timed_out`.
        """
        self.timed_out = False
        with self._lock:
            write()
            return self._read_response(message_id, timeout)

    def _read_response(self, message_id: int, timeout: float | None) -> dict[int, bytes] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        dul = self._assoc.dul
        message: list[bytes] = []  # the PDUs of the message being read
        command = bytearray()
        elements: dict[int, bytes] | None = None
        while True:
            if not dul.is_alive() or not self._assoc.is_established:
                return None
            wait = POLL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    self.timed_out = True
                    return None
            if not select.select([self._socket], [], [], wait)[0]:
                continue
            pdu = self._read_pdu()
            if pdu is None:
                dul.event_queue.put("Evt17")  # transport connection closed
                return None
            dul._idle_timer.restart()
            if pdu[0] != 0x04:  # A-ABORT, A-RELEASE-RQ...: no response will come
                self._hand_to_dul([*message, pdu])
                return None
            message.append(pdu)
            complete = False
            for control, fragment in _pdvs(pdu):
                if elements is None:
                    command += fragment
                    if control & wire.LAST:
                        elements = command_elements(bytes(command))
                        complete = elements.get(0x0800) == _NO_DATA_SET
                elif control & wire.LAST:  # the last fragment of a data set
                    complete = True
            if not complete:
                continue
            if (elements is not None and elements.get(0x0100) == _C_STORE_RSP
                    and elements.get(0x0120) == _US.pack(message_id)):
                return elements
            self._hand_to_dul(message)  # another message (a C-CANCEL-RQ): pynetdicom's
            message, command, elements = [], bytearray(), None

    def _recv(self, size: int) -> bytes | None:
        parts = []
        while size:
            try:
                chunk = self._socket.recv(size)
            except OSError:
                return None
            if not chunk:
                return None
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def _read_pdu(self) -> bytes | None:
        header = self._recv(6)
        if header is None:
            return None
        body = self._recv(_PDU_HEADER.unpack(header)[1])
        return None if body is None else header + body

    def _hand_to_dul(self, pdus: list[bytes]) -> None:
        """Give PDUs read here to the DUL as its own ``_read_pdu_data`` would, but the PDU
        before its event: this runs outside the DUL's thread, which may act on the event at
        once (pynetdicom's order, event first, lost a C-CANCEL-RQ now and then: the DUL
        found no PDU for it and aborted the association)."""
        dul = self._assoc.dul
        for pdu in pdus:
            try:
                decoded, event = dul._decode_pdu(bytearray(pdu))
            except Exception:  # noqa: BLE001 - as pynetdicom: an invalid PDU, Evt19
                dul.event_queue.put("Evt19")
                return
            dul._recv_pdu.put(decoded)
            dul.event_queue.put(event)


def _pdvs(pdu: bytes) -> Iterator[tuple[int, bytes]]:
    """The (message control header, fragment) of each PDV of a P-DATA-TF PDU."""
    pos = 6
    while pos + _PDV_OVERHEAD <= len(pdu):
        length, _, control = _PDV_HEADER.unpack_from(pdu, pos)
        yield control, pdu[pos + _PDV_OVERHEAD:pos + 4 + length]
        pos += 4 + length


def command_elements(command: bytes) -> dict[int, bytes]:
    """A command set's values by element number (Implicit VR LE, group 0000, PS3.7 6.3.1)."""
    elements = {}
    pos = 0
    while pos + _ELEMENT.size <= len(command):
        group, element, length = _ELEMENT.unpack_from(command, pos)
        pos += _ELEMENT.size
        if group == 0:
            elements[element] = command[pos:pos + length]
        pos += length
    return elements


def status_dataset(elements: dict[int, bytes]) -> Dataset:
    """The response's Status (and Error Comment, if any), as pynetdicom's
    ``Association.send_c_store`` returns them (a missing Status reads as 0xC000)."""
    status = Dataset()
    value = elements.get(0x0900, b"")
    code = _US.unpack(value)[0] if len(value) == 2 else 0xC000
    status._dict[_STATUS] = DataElement(_STATUS, "US", code, validation_mode=IGNORE)
    comment = elements.get(0x0902)
    if comment:
        status.ErrorComment = comment.decode("ascii", "replace").strip(" \0")
    return status


def hold_reactor(assoc: Association) -> None:
    """Keep ``assoc``'s reactor paused so it cannot take a C-STORE response off the DIMSE
    queue (pynetdicom pauses it around each message; a pause costs a reactor loop).

    The C-GET association's reactor is the thread serving the C-GET: already paused. A C-MOVE
    sub-association's reactor stays paused from its first sub-operation to its release
    (``Association.release`` expects and ends the pause) or :func:`resume_reactor`."""
    if threading.current_thread() is assoc:
        return  # serving a C-GET: this thread is the reactor
    if assoc._is_paused and not assoc._reactor_checkpoint.is_set():
        return  # held since an earlier sub-operation
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)


def resume_reactor(assoc: Association, timeout: float = 1.0) -> None:
    """Let a held reactor run again (after an A-ABORT, a lost connection or a release
    request from the peer) and give it ``timeout`` to notice, so that the association reads
    as ended before the next sub-operation or the final release."""
    if threading.current_thread() is assoc:
        return  # serving a C-GET: its reactor is this thread
    assoc._reactor_checkpoint.set()
    deadline = time.monotonic() + timeout
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.001)


def association_lost(assoc: Association) -> bool:
    """Whether ``assoc`` is gone or going even if its (held) reactor has not said so yet."""
    waiting = assoc.dul.peek_next_pdu()  # what the DUL handed up and the reactor has not seen
    return (not assoc.is_established or not assoc.dul.is_alive()
            or isinstance(waiting, A_ABORT | A_P_ABORT)
            or (isinstance(waiting, A_RELEASE) and waiting.result is None))


def thin_pending(assoc: Association, interval: float = PENDING_INTERVAL) -> None:
    """Let through at most one pending C-MOVE/C-GET response per ``interval`` per operation
    on ``assoc`` (the first always), and every other message (PS3.4 C.4.2.3.1, C.4.3.3.1:
    pending responses are optional)."""
    if getattr(assoc, "_pacs_thin_pending", False):
        return
    dimse = assoc.dimse
    send_msg = dimse.send_msg
    last: dict[int, float] = {}

    def thinned_send_msg(primitive: Any, context_id: int) -> None:
        if isinstance(primitive, C_MOVE | C_GET) and primitive.Status == PENDING:
            msg_id = int(primitive.MessageIDBeingRespondedTo or 0)
            now = time.monotonic()
            if msg_id in last and now - last[msg_id] < interval:
                return
            last[msg_id] = now
        elif isinstance(primitive, C_MOVE | C_GET):
            last.pop(int(primitive.MessageIDBeingRespondedTo or 0), None)
        send_msg(primitive, context_id)

    dimse.send_msg = thinned_send_msg  # type: ignore[method-assign]
    assoc._pacs_thin_pending = True  # type: ignore[attr-defined]
