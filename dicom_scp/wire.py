"""DIMSE messages put on the wire without pynetdicom's per-message machinery.

pynetdicom builds, validates, logs and queues every message one P-DATA-TF PDU per reactor
loop; for the many similar messages of one operation (C-FIND pending responses, later C-MOVE
and C-GET sub-operations) that costs more than the work itself. The pieces here let an event
handler encode such messages once and write them straight to the association's socket:

- :func:`command_set`: a command set in Implicit VR Little Endian, Command Group Length first
  (PS3.7 6.3.1, E.1);
- :func:`message_pdus` and :func:`pdv_pdu`: P-DATA-TF PDUs (PS3.8 9.3.5) holding a message's
  fragments with their message control headers (PS3.8 E.2), within the peer's maximum length
  (PS3.8 D.1);
- :class:`Writer`: writes such bytes on an association's socket in order with what pynetdicom
  has queued, never in the middle of one of pynetdicom's PDUs.

A message written here is not seen by pynetdicom's ``EVT_DIMSE_SENT``/``EVT_PDU_SENT``
handlers or its logs.
"""

from __future__ import annotations

import collections
import functools
import socket
import struct
import threading
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pynetdicom.association import Association
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

COMMAND = 0x01  # message control header (PS3.8 E.2): bit 0 set: command information
LAST = 0x02  # bit 1 set: last fragment of the command set or data set
NO_DATA_SET = 0x0101  # CommandDataSetType when no data set follows (PS3.7 E.1)
DATA_SET = 0x0001  # ... and when one does (any other value; pynetdicom's choice)

_PDU_HEADER = struct.Struct(">BxI")  # PDU type 0x04, reserved, PDU length (PS3.8 9.3.5)
_PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, control header
_PDV_OVERHEAD = _PDV_HEADER.size  # 6: what a PDV item adds to its fragment
_ELEMENT = struct.Struct("<HHI")  # implicit VR little endian element header
_PACK = {"US": struct.Struct("<H").pack, "UL": struct.Struct("<I").pack}


def command_set(**elements: Any) -> bytes:
    """A command set (PS3.7 E.1) from command element keywords and values, e.g.
    ``command_set(CommandField=0x8020, Status=0xFF00, ...)``, encoded as PS3.7 6.3.1 says:
    Implicit VR Little Endian, elements in tag order, Command Group Length first.

    UI values are padded with NUL, other text (AE, LO) with a space; US and UL are numbers.
    ``None`` values are left out, as pynetdicom does for absent optional elements.
    """
    encoded: list[tuple[int, bytes]] = []
    for keyword, value in elements.items():
        if value is None:
            continue
        tag, vr = _command_element(keyword)
        if vr in _PACK:
            data = _PACK[vr](value)
        elif vr in ("UI", "AE", "LO", "SH", "CS"):
            data = str(value).encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
        else:
            raise ValueError(f"{keyword}: VR {vr} is not supported here")
        encoded.append((tag, _ELEMENT.pack(0, tag & 0xFFFF, len(data)) + data))
    body = b"".join(data for _, data in sorted(encoded))
    return _ELEMENT.pack(0, 0, 4) + _PACK["UL"](len(body)) + body


@functools.cache
def _command_element(keyword: str) -> tuple[int, str]:
    """The tag and VR of a command element's keyword (looked up in pydicom's dictionary
    once: a few percent of a small C-STORE's CPU otherwise)."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag >> 16 != 0 or keyword == "CommandGroupLength":
        raise ValueError(f"{keyword} is not a command element")
    return tag, dictionary_VR(tag)


def pdv_pdu(context_id: int, control: int, *fragments: bytes) -> bytes:
    """One P-DATA-TF PDU with one PDV per fragment, all with the same message control
    header ``control`` (:data:`COMMAND` and/or :data:`LAST`) and presentation context."""
    items = [_PDV_HEADER.pack(len(f) + 2, context_id, control) + f for f in fragments]
    return _PDU_HEADER.pack(0x04, sum(map(len, items))) + b"".join(items)


def _fragments(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] if size else [data]


def message_pdus(context_id: int, command: bytes, data_set: bytes | None,
                 max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs of one DIMSE message: the command set then, if given, the data
    set (already encoded in the context's transfer syntax).

    ``max_pdu`` is the peer's Maximum Length Received (PS3.8 D.1: the most a P-DATA-TF's
    variable field may hold; 0: no limit). A message that fits goes in one PDU as two PDVs
    (command, data set); otherwise each fragment of at most ``max_pdu - 6`` bytes gets a PDU
    of its own. PDVs of two messages never share a PDU (pynetdicom reads one message per
    PDU).
    """
    if 0 < max_pdu <= _PDV_OVERHEAD:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for a fragment")
    if data_set is not None and not data_set:
        raise ValueError("an empty data set is sent as no data set")
    if data_set is None:
        if not max_pdu or len(command) + _PDV_OVERHEAD <= max_pdu:
            return pdv_pdu(context_id, COMMAND | LAST, command)
    elif not max_pdu or len(command) + len(data_set) + 2 * _PDV_OVERHEAD <= max_pdu:
        return (_PDU_HEADER.pack(0x04, len(command) + len(data_set) + 2 * _PDV_OVERHEAD)
                + _PDV_HEADER.pack(len(command) + 2, context_id, COMMAND | LAST) + command
                + _PDV_HEADER.pack(len(data_set) + 2, context_id, LAST) + data_set)
    size = max_pdu - _PDV_OVERHEAD
    pdus = []
    for part, kind in ((command, COMMAND), (data_set, 0)):
        if part is None:
            continue
        pieces = _fragments(part, size)
        for piece in pieces[:-1]:
            pdus.append(pdv_pdu(context_id, kind, piece))
        pdus.append(pdv_pdu(context_id, kind | LAST, pieces[-1]))
    return b"".join(pdus)


class Writer:
    """Writes already framed PDUs on one association's socket, from the thread that runs the
    association's event handlers (the DIMSE user).

    pynetdicom's DUL thread keeps reading the socket (so a C-CANCEL or an A-ABORT arrives
    while we write) and writes what the DIMSE layer queued for it, one PDU at a time. Two
    rules keep the byte stream well formed:

    - order: before writing, the writer waits until the DUL has written everything queued
      so far (a marker, an empty P-DATA, goes through its queue; the DUL reports it instead
      of sending it), unless nothing was queued since the last such wait;
    - no interleaving: the DUL's PDU writes and ours hold the same lock, so an A-ABORT the
      DUL sends meanwhile goes between two of our writes, not inside one.

    Get it with :meth:`of` (installed once per association); :meth:`write` returns False
    once the association is gone, and the caller stops.
    """

    def __init__(self, assoc: Association, sock: socket.socket) -> None:
        self._assoc = assoc
        self._socket = sock
        self._lock = threading.Lock()
        self._markers: collections.deque[threading.Event] = collections.deque()
        self._queued = True  # unknown history: wait for the DUL before the first write
        dul = assoc.dul
        send = dul._send
        send_pdu = dul.send_pdu

        def locked_send(pdu: Any) -> None:  # runs in the DUL thread
            if (self._markers and isinstance(pdu, P_DATA_TF)
                    and not pdu.presentation_data_value_items):
                # our marker: everything queued before it is written. Another writer's
                # marker (one installed before us) goes on to its wrapper below.
                self._markers.popleft().set()
                return
            with self._lock:
                send(pdu)

        def noted_send_pdu(primitive: Any) -> None:  # runs in the DIMSE user's thread
            self._queued = True
            send_pdu(primitive)

        dul._send = locked_send  # type: ignore[method-assign]
        dul.send_pdu = noted_send_pdu  # type: ignore[method-assign]
        self._enqueue = send_pdu  # under our note: wakes a DUL that waits for work

    @classmethod
    def of(cls, assoc: Association) -> Writer | None:
        """The writer of ``assoc`` (installed on first use), or None when its socket cannot
        be written directly (not a plain TCP socket, e.g. TLS)."""
        writer = getattr(assoc, "_pacs_writer", None)
        if isinstance(writer, Writer):
            return writer
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if type(sock) is not socket.socket:
            return None
        writer = cls(assoc, sock)
        assoc._pacs_writer = writer  # type: ignore[attr-defined]
        return writer

    @property
    def max_pdu(self) -> int:
        """The peer's maximum P-DATA-TF length (0: no limit)."""
        return int(self._assoc.dimse.maximum_pdu_size or 0)

    @property
    def is_established(self) -> bool:
        return bool(self._assoc.is_established)

    def _wait_for_dul(self, poll: float = 0.05) -> bool:
        marker = threading.Event()
        self._markers.append(marker)
        self._queued = False
        self._enqueue(P_DATA())
        while not marker.wait(poll):
            if not self._assoc.is_established:
                return False
        return True

    def send_from_dul(self, data: bytes) -> None:
        """Write ``data`` (whole PDUs) from the DUL thread itself (its queue is written in
        that thread, so nothing queued can be pending); raises OSError as ``sendall``."""
        with self._lock:
            self._socket.sendall(data)

    def write(self, data: bytes) -> bool:
        """Write ``data`` (whole PDUs) after everything already queued for the peer; False,
        and nothing written, if the association is no longer established; False too if the
        connection fails while writing (the DUL is told, as pynetdicom's own writes do)."""
        if not self._assoc.is_established:
            return False
        if self._queued and not self._wait_for_dul():
            return False
        with self._lock:
            try:
                self._socket.sendall(data)
            except OSError:
                self._assoc.dul.event_queue.put("Evt17")  # transport connection closed
                return False
        return True
