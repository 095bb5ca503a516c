"""Sending stored objects over C-STORE (the sub-operations of C-MOVE and C-GET).

An object goes out byte-for-byte as stored when the peer accepted a presentation context
with its transfer syntax; otherwise it is decoded and encoded again in a native syntax the peer
accepted (decompressed, VR made explicit or implicit, byte order swapped as needed).
pynetdicom encodes every dataset it sends, so both paths build the C-STORE primitive
themselves (``_send_raw``), installed per association with :func:`install`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext

from pacs.dicom.header import dataset_offset
from pacs.retrieve import StoredInstance

log = logging.getLogger(__name__)
NATIVE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")


class StoredDataset(Dataset):
    """A placeholder Dataset that carries a stored object's bytes to :func:`send_stored`.

    pynetdicom's C-MOVE/C-GET machinery only passes :class:`Dataset` objects along, so the
    raw bytes travel inside one; only our patched ``send_c_store`` ever reads them.
    """

    def __init__(self, instance: StoredInstance, loader: Callable[[StoredInstance], bytes]):
        super().__init__()
        self.SOPClassUID = instance.sop_class_uid
        self.SOPInstanceUID = instance.sop_instance_uid
        self.file_meta = pydicom.dataset.FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(instance.transfer_syntax_uid)
        object.__setattr__(self, "_pacs_instance", instance)
        object.__setattr__(self, "_pacs_loader", loader)

    def load(self) -> bytes:
        loader = cast(Callable[[StoredInstance], bytes],
                      object.__getattribute__(self, "_pacs_loader"))
        return loader(object.__getattribute__(self, "_pacs_instance"))


def _accepted(assoc: Association, sop_class: str) -> list[PresentationContext]:
    return [cx for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class and cx.as_scu]


def _send_raw(assoc: Association, cx: PresentationContext, ds: StoredDataset, data: bytes,
              msg_id: int, priority: int, originator_aet: str | None,
              originator_id: int | None) -> Dataset:
    """One C-STORE whose data set is ``data``, already encoded in ``cx``'s syntax."""
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.DataSet = BytesIO(data)
    # the same hand-over to the DIMSE layer as Association.send_c_store (pynetdicom 3.0)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, cast(int, cx.context_id))
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(rsp)


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


def install(assoc: Association) -> None:
    """Make ``assoc.send_c_store`` understand :class:`StoredDataset` (raw or transcoded)."""
    original = assoc.send_c_store

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        if not isinstance(dataset, StoredDataset):
            return original(dataset, msg_id, priority, originator_aet, originator_id)
        raw = dataset.load()
        accepted = _accepted(assoc, dataset.SOPClassUID)
        ts = str(dataset.file_meta.TransferSyntaxUID)
        same = next((cx for cx in accepted if cx.transfer_syntax[0] == ts), None)
        if same is not None:
            return _send_raw(assoc, same, dataset, raw[dataset_offset(raw):], msg_id, priority,
                             originator_aet, originator_id)
        if not accepted:
            raise ValueError(f"peer accepted no context for {dataset.SOPClassUID}")
        cx, data = _transcode(raw, accepted)
        log.info("transcoded %s from %s to %s for %s", dataset.SOPInstanceUID, ts,
                 cx.transfer_syntax[0],
                 assoc.requestor.ae_title if assoc.is_acceptor else assoc.acceptor.ae_title)
        return _send_raw(assoc, cx, dataset, data, msg_id, priority, originator_aet,
                         originator_id)

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
