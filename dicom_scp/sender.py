"""Sending stored objects over C-STORE (the sub-operations of C-MOVE and C-GET).

An object goes out byte-for-byte as stored when the peer accepted a presentation context
with its transfer syntax; otherwise it is decoded and encoded again in a native syntax the peer
accepted (decompressed, VR made explicit or implicit, byte order swapped as needed).
pynetdicom encodes every dataset it sends, so both paths build the C-STORE message
themselves, installed per association with :func:`install`: the stored bytes are streamed
from storage in P-DATA fragments after the command set (never whole in memory); a transcoded
object is decoded and encoded in memory. The thread that serves the C-MOVE/C-GET writes the
request's PDUs in large batches and reads the C-STORE response itself (:mod:`dicom_scp.subops`),
instead of queueing PDUs one by one for pynetdicom's DUL thread and waiting for its polling
reactors; on a socket it cannot write to directly (TLS) it falls back to pynetdicom's queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, cast

import numpy as np
import pydicom
from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

from dicom_scp import subops, wire
from pacs.dicom.header import META_PREFIX, dataset_offset
from pacs.dicom.source import ChunkReader
from pacs.retrieve import StoredInstance

log = logging.getLogger(__name__)
_SOP_CLASS_UID = Tag(0x0008, 0x0016)
_SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
NATIVE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
MAX_QUEUED_BYTES = 4 << 20  # P-DATA queued for pynetdicom's DUL (TLS only), per association


class StoredDataset(Dataset):
    """A placeholder Dataset that carries a stored object to our ``send_c_store``.

    pynetdicom's C-MOVE/C-GET machinery only passes :class:`Dataset` objects along, so the
    object's reader travels inside one; only our patched ``send_c_store`` ever reads it.
    It holds the SOP Class and Instance UIDs (pynetdicom lists the failed instances by
    SOPInstanceUID), set without pydicom's value validation: one is made per instance of a
    retrieve before the first sub-operation, and validating every UID cost ~0.2 ms each.
    The transfer syntax is in :attr:`instance`, not in a File Meta.
    """

    def __init__(self, instance: StoredInstance,
                 loader: Callable[[StoredInstance], Iterator[bytes]]):
        super().__init__()
        for tag, value in ((_SOP_CLASS_UID, instance.sop_class_uid),
                           (_SOP_INSTANCE_UID, instance.sop_instance_uid)):
            self._dict[tag] = DataElement(tag, "UI", UID(value, validation_mode=IGNORE),
                                          validation_mode=IGNORE)
        object.__setattr__(self, "_pacs_instance", instance)
        object.__setattr__(self, "_pacs_loader", loader)

    @property
    def instance(self) -> StoredInstance:
        return cast(StoredInstance, object.__getattribute__(self, "_pacs_instance"))

    def open(self) -> Iterator[bytes]:
        """The stored object (Part 10, File Meta included), in chunks."""
        loader = cast(Callable[[StoredInstance], Iterator[bytes]],
                      object.__getattribute__(self, "_pacs_loader"))
        return loader(self.instance)


def _accepted(assoc: Association, sop_class: str) -> list[PresentationContext]:
    return [cx for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class and cx.as_scu]


class _Request:
    """What a C-STORE-RQ carries besides its data set."""

    def __init__(self, ds: StoredDataset, msg_id: int, priority: int,
                 originator_aet: str | None, originator_id: int | None) -> None:
        self.ds, self.msg_id, self.priority = ds, msg_id, priority
        self.originator_aet, self.originator_id = originator_aet, originator_id

    def primitive(self) -> C_STORE:
        req = C_STORE()
        req.MessageID = self.msg_id
        req.Priority = self.priority
        req.MoveOriginatorApplicationEntityTitle = self.originator_aet
        req.MoveOriginatorMessageID = self.originator_id
        req.AffectedSOPClassUID = self.ds.instance.sop_class_uid
        req.AffectedSOPInstanceUID = self.ds.instance.sop_instance_uid
        return req

    def command(self) -> bytes:
        inst = self.ds.instance
        return subops.store_command(self.msg_id, self.priority, inst.sop_class_uid,
                                    inst.sop_instance_uid, self.originator_aet,
                                    self.originator_id)


def _response(assoc: Association, rsp: Any) -> Dataset:
    """The C-STORE response's status; no response (DIMSE timeout, A-ABORT, connection lost)
    raises, which pynetdicom counts as a failed sub-operation."""
    if rsp is None:
        assoc._handle_no_response()  # aborts on a DIMSE timeout
        subops.resume_reactor(assoc)
        raise ConnectionError(f"no C-STORE response from {_peer(assoc)}")
    return assoc._check_received_status(rsp)


def _data_set(chunks: Iterator[bytes]) -> Iterator[bytes | memoryview]:
    """The data set of a stored Part 10 object given in chunks: the chunks after the File
    Meta Information (PS3.10 7.1), never joined."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= META_PREFIX:
            break
    offset = dataset_offset(head[:META_PREFIX])
    while len(head) < offset:
        chunk = next(chunks, b"")
        if not chunk:
            raise ValueError("stored object ends inside its File Meta Information")
        head += chunk
    yield memoryview(head)[offset:]
    yield from chunks


def _exchange(assoc: Association, cx: PresentationContext, req: _Request,
              data_set: Iterator[bytes | memoryview]) -> Dataset:
    """One C-STORE, its request written and its response read by this thread
    (:mod:`dicom_scp.subops`); pynetdicom's reactors are not involved."""
    writer, reader = wire.Writer.of(assoc), subops.ResponseReader.of(assoc)
    if writer is None or reader is None:  # TLS: pynetdicom writes (the bytes still streamed)
        return _exchange_queued(assoc, cx, req, ChunkReader(bytes(c) for c in data_set))
    if subops.association_lost(assoc):
        subops.resume_reactor(assoc)
        raise ConnectionError(f"association with {_peer(assoc)} ended")
    subops.hold_reactor(assoc)
    batches = subops.message_batches(cast(int, cx.context_id), req.command(), data_set,
                                     assoc.dimse.maximum_pdu_size)
    half_sent = False

    def write() -> None:
        nonlocal half_sent
        for batch in batches:
            if not writer.write(batch):
                raise ConnectionError(f"association with {_peer(assoc)} lost")
            half_sent = True
        half_sent = False

    try:
        elements = reader.exchange(write, req.msg_id, assoc.dimse_timeout)
    except BaseException:
        if half_sent and assoc.is_established:  # e.g. storage failed mid-object: the peer
            assoc.abort()  # has half a message, the association is unusable
        subops.resume_reactor(assoc)
        raise
    if elements is None:
        if reader.timed_out and assoc.is_established:
            log.error("no C-STORE response from %s within %s s: aborting", _peer(assoc),
                      assoc.dimse_timeout)
            assoc.abort()
        subops.resume_reactor(assoc)
        raise ConnectionError(f"no C-STORE response from {_peer(assoc)}")
    status = subops.status_dataset(elements)
    log.debug("C-STORE %s (message %d) to %s: 0x%04X", req.ds.instance.sop_instance_uid,
              req.msg_id,
              _peer(assoc), status.Status)
    return status


def _exchange_queued(assoc: Association, cx: PresentationContext, req: _Request,
                     data_set: ChunkReader) -> Dataset:
    """:func:`_exchange` through pynetdicom's DUL queue, for sockets we do not write to:
    the fragments are queued as P-DATA, at most :data:`MAX_QUEUED_BYTES` at a time."""
    context_id = cast(int, cx.context_id)
    max_pdu = assoc.dimse.maximum_pdu_size
    size = subops.fragment_size(max_pdu)
    max_queued = max(4, MAX_QUEUED_BYTES // size)
    dul = assoc.dul

    def send() -> None:
        message = C_STORE_RQ()
        message.primitive_to_message(req.primitive())  # no DataSet: the command set alone...
        message.command_set.CommandDataSetType = 0x0001  # ...announcing one
        message.context_id = context_id
        evt.trigger(assoc, evt.EVT_DIMSE_SENT, {"message": message})
        for pdata in message.encode_msg(context_id, max_pdu):
            dul.send_pdu(pdata)
        fragment = data_set.read(size)
        while True:
            following = data_set.read(size)
            pdata = P_DATA()
            control = b"\x00" if following else b"\x02"  # data set, last fragment or not
            pdata.presentation_data_value_list.append((context_id, control + fragment))
            while dul.to_provider_queue.qsize() > max_queued and assoc.is_established:
                time.sleep(0.001)
            if not assoc.is_established:
                return  # aborted or released under us: no response will come
            dul.send_pdu(pdata)
            if not following:
                return
            fragment = following

    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        send()
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return _response(assoc, rsp)


def _peer(assoc: Association) -> str:
    return str(assoc.requestor.ae_title if assoc.is_acceptor else assoc.acceptor.ae_title)


# Values of these VRs are kept as bytes by pydicom and never byte-swapped when it writes in the
# other byte order (PS3.5 7.3: OW holds 16-bit words, OF/OL 32-bit, OD/OV 64-bit).
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap_byte_order(ds: Dataset) -> None:
    """Byte-swap the word-valued (OW, OF, OL, OD, OV) elements of ``ds``, recursively."""
    for elem in ds.iterall():  # also turns raw elements into parsed ones (numbers decoded)
        size = _WORD_SIZE.get(str(elem.VR))
        if size and isinstance(elem.value, bytes) and len(elem.value) % size == 0:
            words = np.frombuffer(elem.value, dtype=f"u{size}")
            elem.value = words.byteswap().tobytes()


def _transcode(raw: bytes, accepted: list[PresentationContext]
               ) -> tuple[PresentationContext, bytes]:
    """The stored object decoded and encoded again in the best native syntax the peer
    accepted (explicit VR little endian, then implicit, then big endian): context and bytes."""
    natives = [cx for cx in accepted if cx.transfer_syntax[0] in NATIVE]
    if not natives:
        raise ValueError("the peer accepted no uncompressed transfer syntax")
    cx = min(natives, key=lambda c: NATIVE.index(str(c.transfer_syntax[0])))
    target = UID(cx.transfer_syntax[0])
    ds = pydicom.dcmread(BytesIO(raw))
    stored = UID(ds.file_meta.TransferSyntaxUID)
    if stored.is_compressed:
        # native little endian pixel data; a change of transfer syntax keeps the SOP Instance
        # UID (pydicom would make a new one by default, and the peer would get an object
        # other than the one the C-STORE request names)
        ds.decompress(generate_instance_uid=False)
    little = stored.is_compressed or stored.is_little_endian
    if little != target.is_little_endian:
        _swap_byte_order(ds)
    fp = DicomBytesIO()
    fp.is_implicit_VR = target.is_implicit_VR
    fp.is_little_endian = target.is_little_endian
    write_dataset(fp, ds)  # converts implicit <-> explicit VR and the byte order of numbers
    return cx, fp.getvalue()


def install(assoc: Association, responses: Association | None = None) -> None:
    """Make ``assoc.send_c_store`` understand :class:`StoredDataset` (raw or transcoded).

    ``assoc`` carries the C-STORE sub-operations: the C-MOVE sub-association (installed at
    its EVT_ESTABLISHED) or the C-GET association. ``responses`` carries the C-MOVE/C-GET
    responses, which then include at most one pending response per
    :data:`subops.PENDING_INTERVAL` (:func:`subops.thin_pending`); by default the association
    whose request the calling thread serves (pynetdicom serves each request in its
    association's own thread, which also establishes the C-MOVE sub-association).
    """
    original = assoc.send_c_store
    if responses is None:
        serving = threading.current_thread()
        responses = serving if isinstance(serving, Association) else None
    if responses is not None:
        subops.thin_pending(responses)

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        if not isinstance(dataset, StoredDataset):
            return original(dataset, msg_id, priority, originator_aet, originator_id)
        inst = dataset.instance
        accepted = _accepted(assoc, inst.sop_class_uid)
        ts = inst.transfer_syntax_uid
        same = next((cx for cx in accepted if cx.transfer_syntax[0] == ts), None)
        req = _Request(dataset, msg_id, priority, originator_aet, originator_id)
        chunks = dataset.open()
        try:
            if same is not None:
                return _exchange(assoc, same, req, _data_set(chunks))
            if not accepted:
                raise ValueError(f"peer accepted no context for {inst.sop_class_uid}")
            # decoding needs the whole object: a transcoded object is held in memory
            cx, data = _transcode(b"".join(chunks), accepted)
        finally:
            chunks.close()  # type: ignore[attr-defined]
        log.info("transcoded %s from %s to %s for %s", inst.sop_instance_uid, ts,
                 cx.transfer_syntax[0], _peer(assoc))
        return _exchange(assoc, cx, req, iter([data]))

    assoc.send_c_store = send_c_store  # type: ignore[method-assign]


def requested_contexts(instances: list[StoredInstance]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination (at most 128, PS3.8 9.3.2.2).

    For each SOP class one context with the native syntaxes, so every object can go out
    (decompressed if need be), then for each (SOP class, stored syntax) one context with that
    syntax alone: offered together with the native ones, a peer could pick its preferred
    native syntax even though it supports the stored one, and the object would be re-encoded.
    """
    wanted: list[tuple[str, tuple[str, ...]]] = []
    for inst in instances:
        wanted.append((inst.sop_class_uid, NATIVE))
    for inst in instances:
        wanted.append((inst.sop_class_uid, (inst.transfer_syntax_uid,)))
    unique = list(dict.fromkeys(wanted))
    if len(unique) > 128:
        log.warning("%d presentation contexts wanted, 128 proposed: some objects will be "
                    "transcoded or fail", len(unique))
    contexts = []
    for sop_class, syntaxes in unique[:128]:
        cx = PresentationContext()
        cx.abstract_syntax = UID(sop_class)
        cx.transfer_syntax = [UID(t) for t in syntaxes]
        contexts.append(cx)
    return contexts
