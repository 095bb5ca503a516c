"""Sending stored objects over C-STORE (the sub-operations of C-MOVE and C-GET).

An object goes out byte-for-byte as stored when the peer accepted a presentation context
with its transfer syntax; otherwise it is decompressed to a native syntax the peer accepted.
pynetdicom encodes every dataset it sends, so the raw path builds the C-STORE primitive
itself (``send_stored``) and is installed per association with :func:`install`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
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
        loader = cast(Callable[[StoredInstance], bytes], object.__getattribute__(self, "_pacs_loader"))
        return loader(object.__getattribute__(self, "_pacs_instance"))


def _accepted(assoc: Association, sop_class: str) -> list[PresentationContext]:
    return [cx for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class and cx.as_scu]


def _send_raw(assoc: Association, cx: PresentationContext, ds: StoredDataset, raw: bytes,
              msg_id: int, priority: int, originator_aet: str | None,
              originator_id: int | None) -> Dataset:
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.DataSet = BytesIO(raw[dataset_offset(raw):])
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
    return cast(Dataset, assoc._check_received_status(rsp))


def _transcode(raw: bytes, accepted: list[PresentationContext]) -> Dataset:
    ds = pydicom.dcmread(BytesIO(raw))
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts.is_compressed:
        ds.decompress()
    elif ts.is_deflated or ts not in {cx.transfer_syntax[0] for cx in accepted}:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    target = next((UID(cx.transfer_syntax[0]) for cx in accepted
                   if cx.transfer_syntax[0] in NATIVE), None)
    if target is not None and target != ds.file_meta.TransferSyntaxUID:
        ds.file_meta.TransferSyntaxUID = target
    return ds


def install(assoc: Association) -> None:
    """Make ``assoc.send_c_store`` understand :class:`StoredDataset` (raw or transcoded)."""
    original = assoc.send_c_store

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None, originator_id: int | None = None) -> Dataset:
        if not isinstance(dataset, StoredDataset):
            return original(dataset, msg_id, priority, originator_aet, originator_id)
        raw = dataset.load()
        accepted = _accepted(assoc, dataset.SOPClassUID)
        ts = str(dataset.file_meta.TransferSyntaxUID)
        same = next((cx for cx in accepted if cx.transfer_syntax[0] == ts), None)
        if same is not None:
            return _send_raw(assoc, same, dataset, raw, msg_id, priority, originator_aet,
                             originator_id)
        if not accepted:
            raise ValueError(f"peer accepted no context for {dataset.SOPClassUID}")
        log.info("transcoding %s from %s for %s", dataset.SOPInstanceUID, ts,
                 assoc.requestor.ae_title if assoc.is_acceptor else assoc.acceptor.ae_title)
        return original(_transcode(raw, accepted), msg_id, priority, originator_aet,
                        originator_id)

    assoc.send_c_store = send_c_store  # type: ignore[method-assign]


def requested_contexts(instances: list[StoredInstance]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination: per (SOP class, stored syntax) the stored
    syntax first, then the native ones; at most 128 (PS3.8 9.3.2.2)."""
    seen: dict[tuple[str, str], PresentationContext] = {}
    for inst in instances:
        key = (inst.sop_class_uid, inst.transfer_syntax_uid)
        if key in seen:
            continue
        syntaxes = [inst.transfer_syntax_uid] + [t for t in NATIVE if t != inst.transfer_syntax_uid]
        cx = PresentationContext()
        cx.abstract_syntax = UID(inst.sop_class_uid)
        cx.transfer_syntax = [UID(t) for t in syntaxes]
        seen[key] = cx
        if len(seen) == 128:
            log.warning("more than 128 (SOP class, syntax) pairs: some objects will transcode")
            break
    return list(seen.values())
