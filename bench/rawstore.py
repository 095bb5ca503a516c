"""C-STORE with one association per instance, timed at the wire.

Many senders open an association for each image (older modalities, routers forwarding as
images arrive), so each instance also pays for setting an association up and releasing it.
DCMTK's ``storescu`` sends all its files over one association, so this client (the same for
every target, which makes the ratio the servers' alone) connects, proposes the object's SOP
class and transfer syntax, sends one C-STORE, releases and closes, for each object in turn.
The objects are read into memory before the clock starts.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from bench.rawfind import _associate_rq, check_context, max_pdu, read_pdu
from dicom_scp import wire
from dicom_scp.subops import command_elements, store_command

_RELEASE_RQ = struct.pack(">BxI", 0x05, 4) + bytes(4)


@dataclass(frozen=True)
class Instance:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data_set: bytes  # after the file meta information, in its transfer syntax


def load(path: Path) -> Instance:
    meta = read_file_meta_info(path)
    raw = path.read_bytes()
    start = 132 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, (0002,0000)
    return Instance(str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                    str(meta.TransferSyntaxUID), raw[start:])


def store_one(host: str, port: int, calling: str, called: str, inst: Instance) -> None:
    """Associate, C-STORE ``inst``, release; raises unless every step succeeded."""
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_associate_rq(calling, called, inst.sop_class_uid,
                                   inst.transfer_syntax_uid))
        kind, body = read_pdu(sock)
        if kind != 0x02:
            raise RuntimeError(f"association refused by {called} (PDU type {kind:#04x})")
        check_context(body, "C-STORE")
        command = store_command(1, 0, inst.sop_class_uid, inst.sop_instance_uid, None, None)
        sock.sendall(wire.message_pdus(1, command, inst.data_set, max_pdu(body)))
        kind, body = read_pdu(sock)
        if kind != 0x04:
            raise RuntimeError(f"unexpected PDU type {kind:#04x} after the C-STORE")
        status = struct.unpack("<H", command_elements(body[6:])[0x0900])[0]
        if status != 0:
            raise RuntimeError(f"C-STORE failed: status {status:#06x}")
        sock.sendall(_RELEASE_RQ)
        kind, _ = read_pdu(sock)
        if kind != 0x06:
            raise RuntimeError(f"release not answered (PDU type {kind:#04x})")


def push_per_association(port: int, called: str, instances: list[Instance],
                         calling: str = "STORESCU") -> float:
    """Seconds to store ``instances`` one association each, one after the other."""
    t0 = time.perf_counter()
    for inst in instances:
        store_one("127.0.0.1", port, calling, called, inst)
    return time.perf_counter() - t0
