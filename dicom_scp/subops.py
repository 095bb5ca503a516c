"""The wire side of C-STORE sub-operations (C-MOVE, C-GET): written straight to the socket.

pynetdicom sends every P-DATA-TF PDU through its DUL thread, one PDU per reactor loop, and
answers are picked up by reactors that sleep 1 ms whenever a loop found nothing to do; for a
100-slice study sent to a peer that takes 16 KB PDUs that is thousands of queued PDUs and
hundreds of sleeps. Here the thread that runs the retrieve (the one calling ``send_c_store``)
frames the P-DATA-TF PDUs itself (PS3.8 9.3.5, message control headers PS3.8 E.2) and writes
them in large batches; pynetdicom's DUL thread keeps reading the socket, so the C-STORE
responses, a C-CANCEL or an A-ABORT still arrive through it.

- :class:`Link`: the writer of one association. Two rules keep the byte stream well formed:
  every PDU the DUL writes goes under the same lock as our batches (an A-ABORT lands between
  two batches, never inside a PDU), and before a message the link waits until the DUL has
  written whatever pynetdicom queued before it (e.g. a C-GET pending response), so messages
  never interleave. Not used on TLS sockets (pynetdicom's path then).
- :func:`store_command`: the C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR LE.
- :func:`hold_reactor` / :func:`resume_reactor`: a requestor association's reactor (the C-MOVE
  sub-association) stays paused for the whole retrieve instead of being paused and woken per
  sub-operation, which cost a reactor loop (>= 1 ms) each time.
- :func:`thin_pending`: C-MOVE/C-GET pending responses are optional (PS3.4 C.4.2.3.1,
  C.4.3.3.1: "Optionally, the SCP may generate responses ... with status equal to Pending");
  pynetdicom sends one per sub-operation, we let one through per :data:`PENDING_INTERVAL`.

Messages written here are not seen by pynetdicom's ``EVT_DIMSE_SENT``/``EVT_PDU_SENT``
handlers (its debug logging); the sender logs each sub-operation at DEBUG instead.

This overlaps :mod:`dicom_scp.wire` (written at the same time for C-FIND); once that module is
on main the framing and the writer here should be taken from it.
"""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE, P_DATA

COMMAND, LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)
PENDING = 0xFF00
PENDING_INTERVAL = 0.25  # seconds between two pending C-MOVE/C-GET responses we let through
RESPONSE_POLL = 0.0001  # DUL idle sleep while a C-STORE response is awaited (pynetdicom: 1 ms)
BATCH = 256 << 10  # bytes of PDUs per socket write
UNLIMITED_FRAGMENT = 1 << 20  # fragment size when the peer sets no maximum PDU length

_PDU_HEADER = struct.Struct(">BxI")  # P-DATA-TF: type 0x04, reserved, PDU length
_PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, control header
_PDV_OVERHEAD = _PDV_HEADER.size  # 6
_ELEMENT = struct.Struct("<HHI")  # implicit VR little endian: group, element, length
_US = struct.Struct("<H").pack


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    data = value.encode("ascii")
    return data + pad if len(data) % 2 else data


def store_command(message_id: int, priority: int, sop_class_uid: str, sop_instance_uid: str,
                  originator_aet: str | None, originator_id: int | None) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1) announcing a data set, encoded as PS3.7
    6.3.1 says: Implicit VR Little Endian, tag order, Command Group Length first."""
    body = [_element(0x0002, _text(sop_class_uid, b"\x00")),
            _element(0x0100, _US(0x0001)),  # CommandField: C-STORE-RQ
            _element(0x0110, _US(message_id)),
            _element(0x0700, _US(priority)),
            _element(0x0800, _US(0x0001)),  # CommandDataSetType: anything but 0x0101
            _element(0x1000, _text(sop_instance_uid, b"\x00"))]
    if originator_aet:
        body.append(_element(0x1030, _text(originator_aet.strip(), b" ")))
    if originator_id is not None:
        body.append(_element(0x1031, _US(originator_id)))
    joined = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(joined))) + joined


def fragment_size(max_pdu: int) -> int:
    """The largest fragment a PDV may carry within the peer's Maximum Length Received
    (PS3.8 D.1: the limit applies to the P-DATA-TF's variable field; 0: no limit)."""
    if not max_pdu:
        return UNLIMITED_FRAGMENT
    if max_pdu <= _PDV_OVERHEAD:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for a fragment")
    return max_pdu - _PDV_OVERHEAD


def pdv_pdu(context_id: int, control: int, fragment: bytes) -> list[bytes]:
    """One P-DATA-TF PDU holding one PDV, as buffers to join (the fragment is not copied)."""
    return [_PDU_HEADER.pack(0x04, len(fragment) + _PDV_OVERHEAD),
            _PDV_HEADER.pack(len(fragment) + 2, context_id, control), fragment]


def message_batches(context_id: int, command: bytes, read: Callable[[int], bytes],
                    max_pdu: int, batch: int = BATCH) -> Iterator[bytes]:
    """The PDUs of a message whose data set is read with ``read(n)`` (already in the
    context's transfer syntax), joined into writes of about ``batch`` bytes: the command set
    fragments, then the data set fragments, the last one flagged (PS3.8 E.2). Memory holds
    one batch, whatever the object's size."""
    size = fragment_size(max_pdu)
    parts: list[bytes] = []
    pending = 0
    for pos in range(0, len(command), size):
        piece = command[pos:pos + size]
        last = pos + size >= len(command)
        parts += pdv_pdu(context_id, COMMAND | (LAST if last else 0), piece)
        pending += len(piece)
    fragment = read(size)
    while True:
        following = read(size)
        parts += pdv_pdu(context_id, 0 if following else LAST, fragment)
        pending += len(fragment)
        if pending >= batch or not following:
            yield b"".join(parts)
            parts, pending = [], 0
        if not following:
            return
        fragment = following


class Link:
    """Writes framed PDUs on one association's socket from the DIMSE user's thread; see the
    module docstring. Get it with :meth:`of`."""

    def __init__(self, assoc: Association, sock: socket.socket) -> None:
        self._assoc = assoc
        self._socket = sock
        self._lock = threading.Lock()
        self._markers: collections.deque[threading.Event] = collections.deque()
        self._queued = True  # unknown history: let the DUL drain before the first write
        dul = assoc.dul
        send, send_pdu = dul._send, dul.send_pdu

        def locked_send(pdu: Any) -> None:  # the DUL thread's writes
            if isinstance(pdu, P_DATA_TF) and not pdu.presentation_data_value_items:
                if self._markers:  # our marker: everything queued before it is written
                    self._markers.popleft().set()
                return
            with self._lock:
                send(pdu)

        def noted_send_pdu(primitive: Any) -> None:  # pynetdicom queues a PDU
            self._queued = True
            send_pdu(primitive)

        dul._send = locked_send  # type: ignore[method-assign]
        dul.send_pdu = noted_send_pdu  # type: ignore[method-assign]

    @classmethod
    def of(cls, assoc: Association) -> Link | None:
        """The link of ``assoc`` (made on first use), or None if its socket is not a plain
        TCP socket (TLS): then pynetdicom sends."""
        link = getattr(assoc, "_pacs_link", None)
        if isinstance(link, Link):
            return link
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if type(sock) is not socket.socket:
            return None
        link = cls(assoc, sock)
        assoc._pacs_link = link  # type: ignore[attr-defined]
        return link

    def _drain(self, poll: float = 0.05) -> bool:
        """Wait until the DUL has written everything queued so far: an empty P-DATA goes
        through its queue as a marker, which its (wrapped) writer reports instead of
        sending."""
        marker = threading.Event()
        self._markers.append(marker)
        self._queued = False
        self._assoc.dul.to_provider_queue.put(P_DATA())
        while not marker.wait(poll):
            if not self._assoc.is_established or not self._assoc.dul.is_alive():
                return False
        return True

    def write_message(self, batches: Iterator[bytes]) -> None:
        """Write one message's PDUs, batch by batch, after whatever pynetdicom queued.

        Raises ConnectionError if the association is gone or the connection fails; a
        message cut short leaves the stream unusable, so the association is then aborted.
        """
        if not self._assoc.is_established:
            raise ConnectionError("association no longer established")
        if self._queued and not self._drain():
            raise ConnectionError("association ended while waiting to write")
        started = False
        try:
            for data in batches:
                with self._lock:
                    self._socket.sendall(data)
                started = True
        except OSError as exc:
            self._assoc.dul.event_queue.put("Evt17")  # transport connection closed
            raise ConnectionError(f"writing to the peer failed: {exc}") from exc
        except BaseException:
            if started:  # e.g. storage failed mid-object: the peer has half a message
                self._assoc.abort()
            raise


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
