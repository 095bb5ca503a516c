"""C-STORE requests served by the thread that reads them, without pynetdicom's DIMSE layer.

For every incoming C-STORE pynetdicom reads the socket 4 KB at a time, decodes each P-DATA-TF
PDU into PDU and primitive objects, runs it through its state machine, reassembles the
message in its DIMSE layer, decodes the command set with pydicom, queues the message for the
association thread, and answers through the same layers in reverse: ~3 ms of CPU per
instance, more than writing and indexing the object. An :class:`InboundReader`, installed on
an accepted association with a plain TCP socket (:func:`install`), takes the place of the
DUL's PDU reader (``_read_pdu_data``) while the association is established (state Sta6):

- it reads each PDU in one piece and walks its PDVs (PS3.8 9.3.5, E.2);
- a C-STORE-RQ (PS3.7 9.3.1.1) whose command set says a data set follows, on an accepted
  presentation context of a storage SOP class, is taken here: the data set fragments go
  straight into a :class:`~dicom_scp.receive.ReceivedDataset` (the Part 10 file, in memory
  or spilled to disk; with ``stage``, a small one also written to the store as it arrives),
  then ``serve`` (the archive's store: durable and indexed before it returns) runs in this
  thread, and the C-STORE-RSP (PS3.7 9.3.1.2), encoded by :mod:`dicom_scp.wire`, is written
  straight to the socket;
- every other PDU or message (C-ECHO, C-FIND, C-MOVE, C-GET, C-CANCEL, responses, releases
  and aborts, anything malformed) goes to pynetdicom exactly as its own reader would have
  handed it over (a command set that came in several PDUs: in one PDU, once whole).

The state machine sees nothing of a C-STORE taken here, which is what it would do with it
anyway: a P-DATA-TF in Sta6 (Evt10) leads to action DT-2, a P-DATA indication, and Sta6
again (PS3.8 9.2). pynetdicom's ``EVT_DIMSE_RECV``/``EVT_PDU_RECV``/``EVT_C_STORE`` handlers
and its logs do not see these messages; the archive logs each store itself.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pynetdicom.association import Association
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from dicom_scp import wire
from dicom_scp.receive import ReceivedDataset, ensure_dir
from dicom_scp.subops import command_elements
from pacs.dicom.header import file_meta_bytes

if TYPE_CHECKING:
    from pacs.ingest import Staging

log = logging.getLogger(__name__)
LOGGER = logging.getLogger("pynetdicom.dul")  # where pynetdicom logs these events

MAX_PDU_READ = 64 << 20  # longest P-DATA-TF accepted whole, whatever the peer was told
_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
_US = struct.Struct("<H")
_PDU_TYPES = range(0x01, 0x08)
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101
# command elements of a C-STORE-RQ (PS3.7 9.3.1.1) that pynetdicom requires before serving
_SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID, _PRIORITY = 0x0002, 0x0100, 0x0110, 0x0700
_DATA_SET_TYPE, _SOP_INSTANCE = 0x0800, 0x1000


@dataclass(frozen=True)
class StoreRequest:
    """What the archive needs of a C-STORE-RQ's command set."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


Serve = Callable[[Association, StoreRequest, ReceivedDataset], int]


class InboundReader:
    """Reads the PDUs of one accepted association in its DUL thread; see the module doc."""

    def __init__(self, assoc: Association, sock: socket.socket, serve: Serve,
                 tmp_dir: Path, limit: int = -1, in_memory: int = 4 << 20,
                 stage: Callable[[], Staging | None] | None = None) -> None:
        self._assoc = assoc
        self._stage = stage
        self._socket = sock
        self._serve = serve
        self._tmp_dir = tmp_dir
        self._limit = limit
        self._in_memory = in_memory
        self._command = bytearray()  # command fragments of the message being read
        self._held: list[bytes] = []  # ... and their PDVs, in case pynetdicom gets them
        self._request: StoreRequest | None = None  # the C-STORE being read here
        self._dataset: ReceivedDataset | None = None
        self._pynetdicom_data = False  # pynetdicom's message: a data set still to come
        self._storage_classes: dict[str, bool] = {}
        self.served = 0  # C-STORE requests served here

    # -- reading ---------------------------------------------------------------------------

    def read_pdu(self) -> None:
        """Read one PDU (the socket has data) and act on it; pynetdicom's ``_read_pdu_data``
        with the same outcomes for everything not taken here (Evt17 when the connection
        breaks, Evt19 for an unknown PDU type). While the data set of a C-STORE taken here
        is still coming, the PDUs that carry it are read on, without a pass of the DUL's
        loop for each (a peer that stops sending then meets the network timeout)."""
        dul = self._assoc.dul
        while self._read_one() and self._dataset is not None and not dul._kill_thread:
            dul._idle_timer.restart()  # as the loop does after each PDU (a long transfer)

    def _read_one(self) -> bool:
        """Read one PDU and act on it; True when it was a P-DATA-TF taken here whole (the
        DUL's loop has nothing to do for it)."""
        dul = self._assoc.dul
        header = self._recv(6)
        if header is None:
            LOGGER.error("Connection closed before the entire PDU was received")
            self._reset()
            dul.event_queue.put("Evt17")
            return False
        pdu_type, length = _PDU_HEADER.unpack(header)
        if pdu_type not in _PDU_TYPES:
            LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            dul.event_queue.put("Evt19")
            return False
        if length > MAX_PDU_READ:
            LOGGER.error(f"PDU of {length} bytes refused (more than {MAX_PDU_READ})")
            dul.event_queue.put("Evt19")
            return False
        body = self._recv(length)
        if body is None:
            LOGGER.error("Connection closed before the entire PDU was received")
            self._reset()
            dul.event_queue.put("Evt17")
            return False
        if pdu_type != 0x04:  # A-RELEASE, A-ABORT...: whatever was being read is moot
            self._reset()
            self._hand_over(header + body)
            return False
        return self._read_pdata(body)

    def _recv(self, size: int) -> bytearray | None:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            try:
                n = self._socket.recv_into(view[got:])
            except OSError:
                return None
            if not n:
                return None
            got += n
        return buffer

    def _read_pdata(self, body: bytearray) -> bool:
        """Act on a P-DATA-TF; True when nothing of it went to pynetdicom."""
        items = _pdv_items(body)
        if items is None:  # malformed: pynetdicom decides (an A-ABORT)
            self._reset()
            self._hand_over(_PDU_HEADER.pack(0x04, len(body)) + body)
            return False
        view = memoryview(body)
        passed: list[bytes | memoryview] = []
        for start, end, context_id, control in items:
            fragment = view[start + 6:end]
            if not self._take(context_id, control, fragment, view[start:end], passed):
                passed.append(view[start:end])
        if passed:
            self._hand_over(_PDU_HEADER.pack(0x04, sum(map(len, passed))) + b"".join(passed))
            return False
        return True

    def _take(self, context_id: int, control: int, fragment: memoryview, item: memoryview,
              passed: list[bytes | memoryview]) -> bool:
        """Whether a PDV was taken here; otherwise (False) it goes to pynetdicom."""
        if self._dataset is not None:  # the data set of a C-STORE read here
            if control & wire.COMMAND:  # a new message before the data set ended
                log.warning("C-STORE from %s: data set cut short by another message",
                            self._assoc.requestor.ae_title)
                self._reset()
                return False
            self._dataset.write(fragment)
            if control & wire.LAST:
                self._complete()
            return True
        if self._pynetdicom_data:  # the data set of pynetdicom's message
            if control & wire.LAST and not control & wire.COMMAND:
                self._pynetdicom_data = False
            return False
        if not control & wire.COMMAND:
            return False  # a data set without a command: pynetdicom's error to report
        self._command += fragment
        self._held.append(bytes(item))
        if not control & wire.LAST:
            return True  # the rest of the command set comes later
        elements = command_elements(bytes(self._command))
        held = self._held
        self._command, self._held = bytearray(), []
        request = self._store_request(context_id, elements)
        if request is None:
            passed.extend(held)  # everything of this command set, in order
            self._pynetdicom_data = _value(elements, _DATA_SET_TYPE) != _NO_DATA_SET
            return True
        self._request = request
        self._dataset = ReceivedDataset(
            file_meta_bytes(request.sop_class_uid, request.sop_instance_uid,
                            request.transfer_syntax_uid, self._assoc.requestor.ae_title),
            self._in_memory, self._tmp_dir, self._limit,
            self._stage() if self._stage is not None else None)
        return True

    def _store_request(self, context_id: int, elements: dict[int, bytes]) -> StoreRequest | None:
        """The C-STORE-RQ to serve here, or None: pynetdicom's message."""
        if (_value(elements, _COMMAND_FIELD) != _C_STORE_RQ
                or _value(elements, _DATA_SET_TYPE) in (None, _NO_DATA_SET)
                or _value(elements, _MESSAGE_ID) is None
                or _value(elements, _PRIORITY) is None
                or self._assoc._sent_release):
            return None
        context = self._assoc._accepted_cx.get(context_id)
        if context is None or not context.transfer_syntax:
            return None
        try:
            sop_class = _uid(elements[_SOP_CLASS])
            sop_instance = _uid(elements[_SOP_INSTANCE])
        except (KeyError, UnicodeDecodeError):
            return None
        if not sop_class or not sop_instance or not self._is_storage(sop_class):
            return None
        return StoreRequest(context_id, _value(elements, _MESSAGE_ID) or 0, sop_class,
                            sop_instance, str(context.transfer_syntax[0]))

    def _is_storage(self, sop_class: str) -> bool:
        """Whether pynetdicom would serve this SOP class with its Storage service class."""
        known = self._storage_classes.get(sop_class)
        if known is None:
            extended = self._assoc.acceptor.accepted_common_extended.get(sop_class)
            service = uid_to_service_class(extended[0] if extended else sop_class)
            known = self._storage_classes[sop_class] = service is StorageServiceClass
        return known

    # -- serving ---------------------------------------------------------------------------

    def _complete(self) -> None:
        request, dataset = self._request, self._dataset
        self._request, self._dataset = None, None
        assert request is not None and dataset is not None
        try:
            status = self._serve(self._assoc, request, dataset)
        finally:
            dataset.close()
        self.served += 1
        command = wire.command_set(
            CommandField=0x8001,
            MessageIDBeingRespondedTo=request.message_id,
            AffectedSOPClassUID=request.sop_class_uid,
            AffectedSOPInstanceUID=request.sop_instance_uid,
            CommandDataSetType=wire.NO_DATA_SET,
            Status=status,
        )
        max_pdu = int(self._assoc.dimse.maximum_pdu_size or 0)
        self._send(wire.message_pdus(request.context_id, command, None, max_pdu))

    def _send(self, data: bytes) -> None:
        writer = getattr(self._assoc, "_pacs_writer", None)
        try:
            if isinstance(writer, wire.Writer):
                writer.send_from_dul(data)
            else:
                self._socket.sendall(data)
        except OSError:
            self._assoc.dul.event_queue.put("Evt17")  # transport connection closed

    # -- handing over to pynetdicom ---------------------------------------------------------

    def _hand_over(self, pdu: bytes | bytearray) -> None:
        """Give a PDU to the DUL as its own reader would have."""
        dul = self._assoc.dul
        try:
            decoded, event = dul._decode_pdu(bytearray(pdu))
        except Exception as exc:  # noqa: BLE001 - as pynetdicom: an invalid PDU, Evt19
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            dul.event_queue.put("Evt19")
            return
        dul._recv_pdu.put(decoded)  # before its event, as in subops.ResponseReader
        dul.event_queue.put(event)

    def _reset(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
        self._request, self._dataset = None, None
        self._command, self._held = bytearray(), []
        self._pynetdicom_data = False

    def close(self) -> None:
        self._reset()


def _pdv_items(body: bytearray) -> list[tuple[int, int, int, int]] | None:
    """(start, end, presentation context ID, message control header) of each PDV item in a
    P-DATA-TF's variable field, or None if the items do not exactly fill it."""
    items = []
    pos, size = 0, len(body)
    while pos < size:
        if pos + 6 > size:
            return None
        length, context_id, control = _PDV_HEADER.unpack_from(body, pos)
        end = pos + 4 + length
        if length < 2 or end > size:
            return None
        items.append((pos, end, context_id, control))
        pos = end
    return items


def _value(elements: dict[int, bytes], element: int) -> int | None:
    data = elements.get(element)
    return _US.unpack(data)[0] if data is not None and len(data) == 2 else None


def _uid(data: bytes) -> str:
    return data.decode("ascii").rstrip("\0 ")


def install(assoc: Association, serve: Serve, tmp_dir: Path, limit: int = -1,
            stage: Callable[[], Staging | None] | None = None) -> bool:
    """Serve ``assoc``'s C-STORE requests with an :class:`InboundReader` (see the module
    doc); False, and nothing changed, when its socket is not plain TCP (TLS) or its DUL
    cannot take one (not :class:`dicom_scp.reactor.ResponsiveDUL`)."""
    from dicom_scp.reactor import ResponsiveDUL

    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if type(sock) is not socket.socket or not isinstance(assoc.dul, ResponsiveDUL):
        return False
    ensure_dir(tmp_dir)
    if assoc.network_timeout is not None:
        # a peer that stops in the middle of a PDU is dropped after the network timeout
        # (the DUL waits in recv(); between PDUs the association's idle timer applies)
        sock.settimeout(assoc.network_timeout)
    assoc.dul.inbound = InboundReader(assoc, sock, serve, tmp_dir, limit, stage=stage)
    return True
