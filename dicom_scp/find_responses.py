"""The pending responses of one C-FIND, encoded and written by us (PS3.7 9.1.2, 9.3.2.2).

Every pending C-FIND-RSP of a request has the same command set (Status 0xFF00, the request's
Message ID and SOP class, a data set follows), so it is encoded once; each identifier is
encoded from a plan (:class:`~dicom_scp.identifier.IdentifierEncoder`) and framed with its
command set as P-DATA-TF PDUs; several responses go out in one socket write through
:class:`~dicom_scp.wire.Writer`. The final response (Success, Cancel or a failure) still goes
through pynetdicom, after the last pending one has been written.

Where the shortcut does not apply (a transfer syntax other than the three uncompressed ones,
a socket that is not plain TCP, a key the plan cannot encode) :meth:`PendingResponses.start`
returns None and the handler yields the identifiers to pynetdicom as before; a match whose
values the plan cannot write goes through pynetdicom too (:meth:`PendingResponses.add`
returns False), after the responses before it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pynetdicom.events import Event

from dicom_scp import wire
from dicom_scp.identifier import SYNTAXES, IdentifierEncoder, Unsupported
from dicom_scp.status import PENDING

log = logging.getLogger(__name__)
C_FIND_RSP = 0x8020
BATCH_BYTES = 32 * 1024  # then write whenever this much is waiting


class PendingResponses:
    """Pending C-FIND responses for one request on one association."""

    def __init__(self, writer: wire.Writer, context_id: int, transfer_syntax: str,
                 command: bytes, constants: Mapping[str, Any], vrs: Mapping[str, str]) -> None:
        self._writer = writer
        self._context_id = context_id
        self._transfer_syntax = transfer_syntax
        self._command = command
        self._constants = constants
        self._vrs = vrs
        self._max_pdu = writer.max_pdu
        self._encoder: IdentifierEncoder | None = None
        self._unplanned = True
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._limit = 0  # bytes before a write: 0 until the first write is done
        self.written = 0  # responses written so far
        self.lost = False  # the association ended under us

    @classmethod
    def start(cls, event: Event, constants: Mapping[str, Any],
              vrs: Mapping[str, str]) -> PendingResponses | None:
        """Responses for ``event``'s request whose identifiers hold ``constants`` and the keys
        of the matches (VRs from ``vrs`` or the data dictionary); None when pynetdicom must
        send them."""
        context = event.context
        if str(context.transfer_syntax) not in SYNTAXES:
            return None
        writer = wire.Writer.of(event.assoc)
        if writer is None:
            return None
        request = event.request
        command = wire.command_set(
            AffectedSOPClassUID=request.AffectedSOPClassUID,
            CommandField=C_FIND_RSP,
            MessageIDBeingRespondedTo=request.MessageID,
            CommandDataSetType=wire.DATA_SET,
            Status=PENDING,
        )
        return cls(writer, context.context_id, str(context.transfer_syntax), command,
                   constants, vrs)

    def _plan(self, match: Mapping[str, Any]) -> IdentifierEncoder | None:
        self._unplanned = False
        try:
            self._encoder = IdentifierEncoder(list(match), self._constants,
                                              self._transfer_syntax, self._vrs)
        except Unsupported as exc:
            log.debug("C-FIND responses through pynetdicom: %s", exc)
        return self._encoder

    def add(self, match: Mapping[str, Any]) -> bool:
        """Queue the response for ``match`` (written when enough are waiting); False if it
        must go through pynetdicom instead (everything queued before it is written first:
        check :attr:`lost` then)."""
        encoder = self._plan(match) if self._unplanned else self._encoder
        try:
            if encoder is None:
                raise Unsupported("no plan")
            identifier = encoder.encode(match)
            pdus = wire.message_pdus(self._context_id, self._command, identifier,
                                     self._max_pdu)
        except Exception as exc:  # noqa: BLE001 - pynetdicom reports it as it always did
            log.debug("C-FIND response through pynetdicom: %s", exc)
            self.flush()
            return False
        self._buffer.append(pdus)
        self._buffered += len(pdus)
        if self._buffered >= self._limit:
            self.flush()
        return True

    def flush(self) -> bool:
        """Write the queued responses; False if the association is gone (:attr:`lost`)."""
        if self.lost:
            return False
        if not self._buffer:
            return True
        count = len(self._buffer)
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        self._limit = BATCH_BYTES
        if not self._writer.write(data):
            self.lost = True
            return False
        self.written += count
        return True

    def discard(self) -> int:
        """Drop the responses not written yet (cancelled); how many there were."""
        count = len(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return count
