"""C-STORE data sets received into a spool: in memory when small, on disk when big.

pynetdicom collects each incoming data set in a ``BytesIO``, so a 1 GB object would sit whole
in memory. Its own stream-to-file mode (``_config.STORE_RECV_CHUNKED_DATASET``) is a
process-wide switch that sends *every* object, small ones too, through a named temporary file
in the system temp folder (often a tmpfs, i.e. memory), flushed after each fragment, and left
behind when a handler fails or the association aborts. Instead, :func:`install` swaps the data
set buffer of each C-STORE request, per association, for a :class:`ReceivedDataset`: the File
Meta Information (PS3.10 7.1) is written first, then the fragments as they arrive; up to
``in_memory`` bytes stay in memory, beyond that the spool rolls over to an anonymous
temporary file (unlinked from the start, so nothing is left behind on any path, even a kill)
in the archive's temp folder (``<data dir>/tmp``). A data set written to the store as it
arrives (``pacs.ingest.Staging``, the folder store) does not roll over: past ``in_memory``
it is only in the store's file, and read back from there. The C-STORE responses are
encoded here too (:func:`_fast_store_responses`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu_primitives import P_DATA

import storage
from dicom_scp import wire
from pacs.dicom.header import file_meta_bytes
from pacs.errors import PacsError, StorageFull, StorageUnavailable

if TYPE_CHECKING:
    from pacs.ingest import Staging

IN_MEMORY = 4 << 20
log = logging.getLogger(__name__)


class ReceivedDataset(BytesIO):
    """The data set of one C-STORE request, spooled as a Part 10 file.

    Up to ``in_memory`` bytes are kept as the received pieces (joined once, by
    :meth:`part10`); beyond that everything goes to an anonymous temporary file in
    ``tmp_dir``, unless the object is being written to the store as it arrives
    (``staging``): then nothing more is kept here and :meth:`part10` reads the object back
    from the store's file (its bytes go to disk once). A ``BytesIO`` subclass only because
    pynetdicom's primitives accept nothing else; the base buffer stays empty.
    """

    def __init__(self, meta: bytes, in_memory: int, tmp_dir: Path, limit: int = -1,
                 staging: Staging | None = None) -> None:
        super().__init__()
        self._pieces: list[bytes | memoryview] = [meta]
        # the object also written to the store as it arrives (past ``in_memory``, only there)
        self.staging = staging
        self._in_store = False  # too big for memory: only in the store (``staging``)
        self._reader: BinaryIO | None = None  # the staged object read back, once asked for
        # staging failed once the object was only in the store: the rest is dropped and the
        # store answers this error (the modality can send again)
        self.failure: PacsError | None = None
        if staging is not None:
            self._stage(meta)
        self._file: BinaryIO | None = None
        self._size = len(meta)  # bytes kept
        self.meta_length = len(meta)
        self.in_memory = in_memory
        self.tmp_dir = tmp_dir
        self.limit = limit
        self.received = len(meta)  # bytes of the Part 10 file received, kept or not

    @property
    def too_large(self) -> bool:
        """More than ``limit`` bytes arrived: the rest was dropped as it came."""
        return 0 <= self.limit < self.received

    def write(self, data: Any) -> int:
        """Append a fragment. A fragment kept in memory is kept by reference (so is one
        written to the store, until it is written): callers pass buffers they do not change
        afterwards (the inbound reader's are fresh for each PDU)."""
        size = len(data)
        self.received += size
        if self.too_large:
            self._unstage()
            self._in_store = False
            if self._size > self.meta_length:  # give the memory or disk space back at once
                if self._file is not None:
                    self._file.truncate(self.meta_length)
                    self._file.seek(self.meta_length)
                else:
                    self._pieces = self._pieces[:1]
                self._size = self.meta_length
            return size
        if self.failure is not None:
            return size
        if self._in_store:
            self._stage(data)
            self._size += size
            return size
        if self._file is None and self._size + size > self.in_memory:
            if self.staging is not None:  # already in the store: read back from there
                self._pieces = self._pieces[:1]
                self._in_store = True
                self._stage(data)
                self._size += size
                return size
            self._file = cast(BinaryIO, tempfile.TemporaryFile(dir=self.tmp_dir))
            self._file.writelines(self._pieces)
            self._pieces = []
        if self._file is not None:
            self._file.write(data)
        else:
            self._pieces.append(data)  # by reference (see above): no copy
            if self.staging is not None:
                self._stage(data)
        self._size += size
        return size

    def _stage(self, piece: bytes) -> None:
        assert self.staging is not None
        try:
            self.staging.write(piece)
        except Exception as exc:  # noqa: BLE001 - the store path reports storage errors
            self._unstage()
            if not self._in_store:  # still whole in memory: the plain path stores it
                log.debug("writing a received object as it arrives failed: %s", exc)
                return
            log.error("writing a received object to the store failed: %s", exc)
            full = isinstance(exc, storage.StorageFull)
            self.failure = (StorageFull if full else StorageUnavailable)(
                f"storage {'full' if full else 'unavailable'}: {exc}")

    def _unstage(self) -> None:
        if self.staging is not None:
            self.staging.abort()
            self.staging = None

    @property
    def length(self) -> int:
        """Bytes of the Part 10 file (File Meta Information and data set)."""
        return self._size

    def part10(self) -> bytes | BinaryIO:
        """The Part 10 file: its bytes when small, else a stream at offset 0 (the spool
        file, or the object read back from the store). Raises a storage error (the
        archive's) when the object cannot be read back."""
        if self.failure is not None:
            raise self.failure
        if self._in_store:
            if self._reader is None:
                assert self.staging is not None
                try:
                    self._reader = self.staging.open_reader()
                except storage.StorageError as exc:
                    raise StorageUnavailable(f"cannot read the received object back: {exc}") \
                        from exc
            self._reader.seek(0)
            return self._reader
        if self._file is not None:
            self._file.seek(0)
            return self._file
        if len(self._pieces) > 1 or not isinstance(self._pieces[0], bytes):
            self._pieces = [b"".join(self._pieces)]
        return cast(bytes, self._pieces[0])

    def getvalue(self) -> bytes:
        """The data set bytes when held in memory; once spilled to disk, only its first
        64 KiB (pynetdicom's logging handler only checks that the data set is not empty)."""
        part10 = self.part10()
        if isinstance(part10, bytes):
            return part10[self.meta_length:]
        part10.seek(self.meta_length)
        return part10.read(1 << 16)

    def close(self) -> None:
        self._unstage()  # nothing if the store committed it
        for stream in (self._file, self._reader):
            if stream is not None:
                stream.close()
        self._pieces = []
        super().close()


def ensure_dir(path: Path) -> None:
    """Create the folder ``path`` unless it exists (a ``stat`` when it does, where
    ``Path.mkdir(exist_ok=True)`` tries to create it and catches the error: ~10 us more for
    every association)."""
    if not os.path.isdir(path):
        path.mkdir(parents=True, exist_ok=True)


def install(assoc: Association, tmp_dir: Path, limit: int = -1,
            in_memory: int = IN_MEMORY) -> None:
    """Spool the data sets of the C-STORE requests ``assoc`` receives (see the module doc);
    an object over ``limit`` bytes (-1: none) is dropped as it arrives."""
    ensure_dir(tmp_dir)
    dimse = assoc.dimse
    original = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        original(primitive)
        message = dimse.message  # None once a message is complete
        if not isinstance(message, C_STORE_RQ) or isinstance(message.data_set, ReceivedDataset):
            return
        cs = message.command_set
        cx = assoc._accepted_cx[cast(int, message.context_id)]
        received = ReceivedDataset(
            file_meta_bytes(str(cs.AffectedSOPClassUID), str(cs.AffectedSOPInstanceUID),
                            str(cx.transfer_syntax[0]), assoc.requestor.ae_title),
            in_memory, tmp_dir, limit)
        if message.data_set is not None:  # fragments that came with the command set
            received.write(message.data_set.getvalue())
        message.data_set = received

    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]
    _fast_store_responses(assoc)


_RETRIEVE_FIELDS = {C_FIND: 0x8020, C_GET: 0x8010, C_MOVE: 0x8021}  # CommandField of the RSP
_SUB_OPERATIONS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                   "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")


def response_command(primitive: Any) -> bytes | None:
    """The command set of a plain C-STORE, C-ECHO, C-FIND, C-GET or C-MOVE response (a
    status, no error comment or offending element, no identifier: the final response of a
    query or retrieve, the pending ones of a retrieve, with their sub-operation counts) as
    :func:`wire.command_set` encodes it; None for anything else."""
    field = _RETRIEVE_FIELDS.get(type(primitive))
    if field is not None:
        if (primitive.Status is None or primitive.ErrorComment or primitive.OffendingElement
                or primitive.Identifier is not None):
            return None
        counts = ({name: getattr(primitive, name) for name in _SUB_OPERATIONS}
                  if field != 0x8020 else {})
        return wire.command_set(
            CommandField=field,
            MessageIDBeingRespondedTo=primitive.MessageIDBeingRespondedTo,
            AffectedSOPClassUID=primitive.AffectedSOPClassUID,
            CommandDataSetType=wire.NO_DATA_SET,
            Status=primitive.Status,
            **counts,
        )
    if isinstance(primitive, C_STORE):
        if primitive.Status is None or primitive.ErrorComment or primitive.OffendingElement:
            return None
        return wire.command_set(
            CommandField=0x8001,
            MessageIDBeingRespondedTo=primitive.MessageIDBeingRespondedTo,
            AffectedSOPClassUID=primitive.AffectedSOPClassUID,
            AffectedSOPInstanceUID=primitive.AffectedSOPInstanceUID,
            CommandDataSetType=wire.NO_DATA_SET,
            Status=primitive.Status,
        )
    if isinstance(primitive, C_ECHO):
        if primitive.Status is None or primitive.ErrorComment:
            return None
        return wire.command_set(
            CommandField=0x8030,
            MessageIDBeingRespondedTo=primitive.MessageIDBeingRespondedTo,
            AffectedSOPClassUID=primitive.AffectedSOPClassUID,
            CommandDataSetType=wire.NO_DATA_SET,
            Status=primitive.Status,
        )
    return None


def _fast_store_responses(assoc: Association) -> None:
    """Encode plain responses (:func:`response_command`: C-STORE, C-ECHO, the final
    response of a C-FIND, those of a C-GET or C-MOVE without identifier) with
    :func:`wire.command_set` instead of pynetdicom's pydicom-based encoder (a large part of a
    small object's cost; ~0.5 ms of a C-ECHO's); queued for the DUL like any message, so the
    order of PDUs is unchanged (not seen by ``EVT_DIMSE_SENT`` handlers, which we do not
    use). Anything else, or a peer whose maximum PDU is too small for the command, goes
    through pynetdicom."""
    dimse = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        command = response_command(primitive)
        max_pdu = int(dimse.maximum_pdu_size or 0)
        if command is None or (max_pdu and len(command) + 6 > max_pdu):
            original(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append(
            (context_id, bytes([wire.COMMAND | wire.LAST]) + command))
        assoc.dul.send_pdu(pdata)

    dimse.send_msg = send_msg  # type: ignore[method-assign]
