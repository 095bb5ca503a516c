"""C-FIND timed at the wire: how long an SCP takes to answer, without a client's own costs.

``findscu``'s wall time includes starting a process, negotiating an association and parsing
and printing every response (for 10,000 matches most of the figure, paid against every
target alike). :class:`RawFind` keeps one association open (PS3.8 9.3: A-ASSOCIATE-RQ with
one Study Root C-FIND context, Implicit VR Little Endian) and times each query from the
first byte of the C-FIND-RQ to the last byte of the final response, reading the responses
as bytes and decoding only their command sets (Status). The same client measures every
target, so the ratio is the servers' alone.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicom_scp import wire
from dicom_scp.subops import command_elements

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.9.7433.1.1"  # any valid UID: ours for the bench
_CONTEXT_ID = 1
_MAX_PDU = 1 << 20
_PENDING = (0xFF00, 0xFF01)


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def _associate_rq(calling: str, called: str, abstract_syntax: str = STUDY_ROOT_FIND,
                  transfer_syntax: str = IMPLICIT_LE) -> bytes:
    """An A-ASSOCIATE-RQ with one presentation context (ID 1)."""
    context = _item(0x20, bytes([_CONTEXT_ID, 0, 0, 0]) + _item(0x30, _uid(abstract_syntax))
                    + _item(0x40, _uid(transfer_syntax)))
    user = _item(0x50, _item(0x51, struct.pack(">I", _MAX_PDU))
                 + _item(0x52, _uid(_IMPLEMENTATION_UID)))
    body = (struct.pack(">H2x", 1) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + _item(0x10, _uid(_APPLICATION_CONTEXT)) + context + user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def identifier(keys: dict[str, str]) -> bytes:
    """A C-FIND identifier in Implicit VR Little Endian: ``keys`` with their values ("" for
    return keys), QueryRetrieveLevel STUDY."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return out.getvalue()


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(PDU type, variable field) of the next PDU on ``sock``."""
    def exactly(size: int) -> bytes:
        parts = []
        while size:
            chunk = sock.recv(min(size, 1 << 20))
            if not chunk:
                raise RuntimeError("connection closed")
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    kind, length = struct.unpack(">BxI", exactly(6))
    return kind, exactly(length)


def _ac_items(body: bytes, pos: int = 68) -> Iterator[tuple[int, bytes]]:
    """(type, value) of the items of ``body`` from ``pos`` (68: after the fixed fields of an
    A-ASSOCIATE-AC, PS3.8 9.3.3; sub-items of user information: 0)."""
    while pos + 4 <= len(body):
        kind, length = struct.unpack_from(">BxH", body, pos)
        yield kind, body[pos + 4:pos + 4 + length]
        pos += 4 + length


def check_context(body: bytes, what: str) -> None:
    """Raise unless the A-ASSOCIATE-AC ``body`` accepts the presentation context."""
    for kind, value in _ac_items(body):
        if kind == 0x21 and value[0] == _CONTEXT_ID:
            if value[2] != 0:
                raise RuntimeError(f"{what} context refused (result {value[2]})")
            return
    raise RuntimeError(f"no answer for the {what} presentation context")


def max_pdu(body: bytes) -> int:
    """The Maximum Length Received of an A-ASSOCIATE-AC ``body`` (0: no limit)."""
    for kind, value in _ac_items(body):
        if kind == 0x50:  # user information
            for sub_kind, sub in _ac_items(value, 0):
                if sub_kind == 0x51:
                    return int(struct.unpack(">I", sub[:4])[0])
    return 0


# an association idle this long is replaced before the next query (untimed): SCPs close
# idle ones (Orthanc's DicomScpTimeout: 30 s), and at 1M studies the other tools' queries
# between two of ours take longer than that
IDLE_RECONNECT = 20.0


def association_ms(host: str, port: int, calling: str, called: str) -> float:
    """Milliseconds from opening the connection to the A-ASSOCIATE-AC (what a modality waits
    before its first request); the association is then released, untimed."""
    t0 = time.perf_counter()
    finder = RawFind(host, port, calling, called)
    elapsed = (time.perf_counter() - t0) * 1000
    finder.close()
    return elapsed


class RawFind:
    """One association to a C-FIND SCP, queried again and again."""

    def __init__(self, host: str, port: int, calling: str, called: str) -> None:
        self._address, self._calling, self._called = (host, port), calling, called
        self._message_id = 0
        self._connect()

    def _connect(self) -> None:
        self._sock = socket.create_connection(self._address, timeout=1800)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(_associate_rq(self._calling, self._called))
        kind, body = self._read_pdu()
        if kind != 0x02:
            raise RuntimeError(f"association refused by {self._called} (PDU type {kind:#04x})")
        self._check_context(body)
        self._last = time.monotonic()

    def _check_context(self, body: bytes) -> None:
        check_context(body, "C-FIND")

    def _read_pdu(self) -> tuple[int, bytes]:
        return read_pdu(self._sock)

    def find(self, keys: dict[str, str]) -> tuple[float, int]:
        """(milliseconds from the request's first byte to the final response's last byte,
        number of pending responses)."""
        if time.monotonic() - self._last > IDLE_RECONNECT:
            self.close()
            self._connect()
        self._message_id = self._message_id % 0xFFFF + 1
        command = wire.command_set(CommandField=0x0020, MessageID=self._message_id,
                                   AffectedSOPClassUID=STUDY_ROOT_FIND, Priority=0,
                                   CommandDataSetType=wire.DATA_SET)
        request = wire.message_pdus(_CONTEXT_ID, command, identifier(keys), 0)
        pending = 0
        fragments = bytearray()
        t0 = time.perf_counter()
        self._sock.sendall(request)
        while True:
            kind, body = self._read_pdu()
            if kind != 0x04:
                raise RuntimeError(f"unexpected PDU type {kind:#04x} during C-FIND")
            pos = 0
            while pos < len(body):
                length, _, control = struct.unpack_from(">IBB", body, pos)
                if control & wire.COMMAND:
                    fragments += body[pos + 6:pos + 4 + length]
                    if control & wire.LAST:
                        status = struct.unpack(
                            "<H", command_elements(bytes(fragments))[0x0900])[0]
                        fragments = bytearray()
                        if status in _PENDING:
                            pending += 1
                        else:
                            elapsed = (time.perf_counter() - t0) * 1000
                            self._last = time.monotonic()
                            if status != 0:
                                raise RuntimeError(f"C-FIND failed: status {status:#06x}")
                            return elapsed, pending
                pos += 4 + length

    def close(self) -> None:
        try:
            self._sock.sendall(struct.pack(">BxI", 0x05, 4) + bytes(4))
            self._read_pdu()  # A-RELEASE-RP
        except (OSError, RuntimeError):
            pass
        finally:
            self._sock.close()
