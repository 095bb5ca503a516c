"""pynetdicom event handlers: one service call per DIMSE request, outcome -> status.

Handlers get the archive's :class:`~pacs.services.Services` as a bound argument
(``evt_handlers=[(evt.EVT_C_STORE, handle_store, [services])]``); nothing is global.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
)

from dicom_scp import inbound, reactor, receive, sender
from dicom_scp.find_responses import PendingResponses
from dicom_scp.status import (
    CANCEL,
    FIND_STATUS,
    FIND_UNABLE_TO_PROCESS,
    PENDING,
    RETRIEVE_STATUS,
    STORE_CANNOT_UNDERSTAND,
    STORE_OUT_OF_RESOURCES,
    STORE_STATUS,
    SUCCESS,
    status_for,
)
from pacs.context import Caller
from pacs.dicom.header import file_meta_bytes
from pacs.errors import InvalidInput, PacsError, UnknownDestination
from pacs.index.attributes import ATTRIBUTES, Level
from pacs.query import QueryRequest
from pacs.retrieve import ReadAhead
from pacs.services import Services

log = logging.getLogger(__name__)
_PATIENT_ROOT = {PatientRootQueryRetrieveInformationModelFind,
                 PatientRootQueryRetrieveInformationModelMove,
                 PatientRootQueryRetrieveInformationModelGet}
_SKIP_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
_VRS = {keyword: attr.vr for keyword, attr in ATTRIBUTES.items()}  # VRs of the query keys


def caller_of(event: Event) -> Caller:
    requestor = event.assoc.requestor
    return Caller.dicom(requestor.ae_title, f"{requestor.address}:{requestor.port}")


def handle_conn_open(event: Event) -> None:
    """Set TCP_NODELAY on every association socket, accepted or requested."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def handle_echo(event: Event) -> int:
    log.info("C-ECHO from %s", caller_of(event))
    return SUCCESS


def handle_conn_open_scp(event: Event, services: Services) -> None:
    """A peer connected to our listener: TCP_NODELAY, reactors that do not nap between the
    messages of a busy association (:mod:`dicom_scp.reactor`), C-STORE requests served by
    the thread that reads them (:mod:`dicom_scp.inbound`; with TLS, pynetdicom's path), and
    their data sets spooled (in memory when small, in ``<data dir>/tmp`` when big; see
    :mod:`dicom_scp.receive`) and, when small, written to the store as they arrive
    (:class:`pacs.ingest.Staging`); the association negotiated by the thread that reads
    the request (:func:`dicom_scp.reactor.accept_on_dul`)."""
    handle_conn_open(event)
    assoc = event.assoc
    reactor.install(assoc)
    tmp_dir = services.settings.data_dir / "tmp"
    limit = services.settings.max_object_size

    def serve(assoc: Any, request: inbound.StoreRequest,
              received: receive.ReceivedDataset) -> int:
        requestor = assoc.requestor
        caller = Caller.dicom(requestor.ae_title, f"{requestor.address}:{requestor.port}")
        return store_received(services, caller, received, request.sop_class_uid,
                              request.sop_instance_uid)

    inbound.install(assoc, serve, tmp_dir, limit, stage=services.ingest.begin_staging)
    receive.install(assoc, tmp_dir, limit)
    reactor.accept_on_dul(assoc)  # last: its DUL thread starts reading the request


def store_received(services: Services, caller: Caller, received: receive.ReceivedDataset,
                   sop_class_uid: str, sop_instance_uid: str) -> int:
    """Store a received C-STORE data set; the status for the response. Success only once
    the object is durable and indexed (PS3.4 B.2.3)."""
    try:
        if received.too_large:
            raise InvalidInput(f"object of {received.received} bytes exceeds the limit of "
                               f"{received.limit} bytes")
        if received.length <= received.meta_length:
            raise InvalidInput("empty data set")
        services.ingest.store_instance(caller, received.part10(),
                                       expected_sop_instance_uid=sop_instance_uid,
                                       expected_sop_class_uid=sop_class_uid,
                                       staging=received.staging)
    except PacsError as exc:
        status = status_for(STORE_STATUS, exc, STORE_CANNOT_UNDERSTAND)
        log.warning("C-STORE %s from %s failed: 0x%04X %s", sop_instance_uid, caller,
                    status, exc)
        return status
    except Exception:  # noqa: BLE001 - never crash an association; the modality resends
        log.exception("C-STORE %s from %s: unexpected error", sop_instance_uid, caller)
        return STORE_OUT_OF_RESOURCES
    return SUCCESS


def handle_store(event: Event, services: Services) -> int:
    """C-STORE through pynetdicom (TLS associations, or a command set split over PDUs)."""
    caller = caller_of(event)
    req = event.request
    received = req.DataSet
    if not isinstance(received, receive.ReceivedDataset):  # came whole in one P-DATA
        data = received.getvalue() if received is not None else b""
        meta = file_meta_bytes(req.AffectedSOPClassUID, req.AffectedSOPInstanceUID,
                               event.context.transfer_syntax, caller.name)
        received = receive.ReceivedDataset(meta, len(meta) + len(data),
                                           services.settings.data_dir / "tmp")
        received.write(data)
    try:
        return store_received(services, caller, received, req.AffectedSOPClassUID,
                              req.AffectedSOPInstanceUID)
    finally:
        received.close()  # drops the spool (memory or temporary file)


def _identifier_filters(identifier: Dataset) -> tuple[dict[str, str], list[str]]:
    filters: dict[str, str] = {}
    keys: list[str] = []
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in _SKIP_KEYS or elem.VR == "SQ":
            continue
        keys.append(keyword)
        value = elem.value
        if value is None:
            text = ""
        elif isinstance(value, MultiValue):
            text = "\\".join(str(v) for v in value)
        elif isinstance(value, bytes):
            text = value.decode("utf-8", "replace")
        else:
            text = str(value)
        filters[keyword] = text
    return filters, keys


def _level(identifier: Dataset, model: str, allow_patient: bool) -> Level:
    text = str(identifier.get("QueryRetrieveLevel", "")).strip()
    try:
        level = Level.parse(text)
    except ValueError:
        raise InvalidInput(f"invalid QueryRetrieveLevel {text!r}") from None
    if level == Level.PATIENT and not allow_patient:
        raise InvalidInput("PATIENT level needs the Patient Root information model")
    return level


def _constants(level: Level, ae_title: str) -> dict[str, str]:
    """What every C-FIND response identifier holds besides the matched keys."""
    return {"SpecificCharacterSet": "ISO_IR 192", "QueryRetrieveLevel": level.name,
            "RetrieveAETitle": ae_title}


def _response(match: dict[str, Any], level: Level, ae_title: str) -> Dataset:
    ds = Dataset()
    for keyword, value in _constants(level, ae_title).items():
        setattr(ds, keyword, value)
    for keyword, value in match.items():
        if isinstance(value, PersonName):
            value = str(value)
        setattr(ds, keyword, value if value is not None else None)
    return ds


def handle_find(event: Event, services: Services) -> Iterator[tuple[int, Dataset | None]]:
    """C-FIND, Patient Root and Study Root (PS3.4 C.4.1).

    The pending responses are written by :class:`~dicom_scp.find_responses.PendingResponses`
    (pynetdicom only where it cannot), the final one by pynetdicom.
    """
    caller = caller_of(event)
    model = event.request.AffectedSOPClassUID
    ae_title = services.settings.ae_title
    count = 0
    try:
        identifier = event.identifier
        level = _level(identifier, model, model in _PATIENT_ROOT)
        filters, keys = _identifier_filters(identifier)
        matches = services.query.search(caller, QueryRequest(level, filters, keys))
        direct = PendingResponses.start(event, _constants(level, ae_title), _VRS)
        for match in matches:
            if event.is_cancelled:
                sent = count - (direct.discard() if direct is not None else 0)
                log.info("C-FIND by %s cancelled after %d match(es)", caller, sent)
                yield CANCEL, None
                return
            count += 1
            if direct is not None:
                taken = direct.add(match)
                if direct.lost:
                    break
                if taken:
                    continue
            yield PENDING, _response(match, level, ae_title)
        if direct is not None and not direct.flush():
            log.info("C-FIND by %s: association ended after %d match(es)", caller,
                     direct.written)
            yield FIND_UNABLE_TO_PROCESS, None
            return
    except PacsError as exc:
        status = status_for(FIND_STATUS, exc, FIND_UNABLE_TO_PROCESS)
        log.warning("C-FIND by %s failed: 0x%04X %s", caller, status, exc)
        yield status, None
        return
    except Exception:  # noqa: BLE001
        log.exception("C-FIND by %s: unexpected error", caller)
        yield FIND_UNABLE_TO_PROCESS, None
        return
    log.info("C-FIND %s by %s: %d match(es)", level.name, caller, count)
    yield SUCCESS, None


def _retrieve_keys(identifier: Dataset) -> dict[str, str]:
    keys = {}
    for kw in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = identifier.get(kw)
        if value is not None:
            keys[kw] = ("\\".join(str(v) for v in value) if isinstance(value, MultiValue)
                        else str(value))
    return keys


def _instances(event: Event, services: Services
               ) -> tuple[list[sender.StoredDataset], ReadAhead[Iterator[bytes]]]:
    """The stored objects a C-MOVE/C-GET asks for, opened ahead of their sending."""
    identifier = event.identifier
    model = event.request.AffectedSOPClassUID
    level = _level(identifier, model, model in _PATIENT_ROOT)
    found = services.retrieve.find_instances(caller_of(event), level, _retrieve_keys(identifier))
    loader = ReadAhead(services.retrieve.stream, found, depth=services.retrieve.read_ahead)
    return [sender.StoredDataset(inst, loader) for inst in found], loader


def handle_move(event: Event, services: Services) -> Iterator[Any]:
    """C-MOVE to a destination from PACS_REMOTE_AES (PS3.4 C.4.2)."""
    caller = caller_of(event)
    destination = services.settings.remote_ae(event.move_destination)
    try:
        if destination is None:
            raise UnknownDestination(f"unknown move destination {event.move_destination!r}")
        datasets, loader = _instances(event, services)
    except PacsError as exc:
        status = status_for(RETRIEVE_STATUS, exc)
        log.warning("C-MOVE by %s to %s refused: 0x%04X %s", caller,
                    event.move_destination, status, exc)
        if isinstance(exc, UnknownDestination):
            yield None, None
            return
        # pynetdicom reports a failure only from inside the sub-operation loop
        yield destination.host, destination.port  # type: ignore[union-attr]
        yield 1
        yield status, None
        return
    contexts = sender.requested_contexts([d._pacs_instance for d in datasets])  # type: ignore[attr-defined]
    handlers = [(evt.EVT_CONN_OPEN, handle_conn_open), (evt.EVT_ESTABLISHED, _install_sender)]
    yield destination.host, destination.port, {"contexts": contexts, "evt_handlers": handlers,
                                               "max_pdu": services.settings.max_pdu}
    yield len(datasets)
    log.info("C-MOVE by %s: %d instance(s) to %s", caller, len(datasets), destination)
    yield from _sub_operations(event, datasets, loader)


def _sub_operations(event: Event, datasets: list[sender.StoredDataset],
                    loader: ReadAhead[Iterator[bytes]]) -> Iterator[Any]:
    """One pending status and object per C-STORE sub-operation, until done or cancelled."""
    try:
        for ds in datasets:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, ds
    finally:
        loader.close()


def _install_sender(event: Event) -> None:
    sender.install(event.assoc)


def handle_get(event: Event, services: Services) -> Iterator[Any]:
    """C-GET: the objects go back on the same association (PS3.4 C.4.3)."""
    caller = caller_of(event)
    try:
        datasets, loader = _instances(event, services)
    except PacsError as exc:
        status = status_for(RETRIEVE_STATUS, exc)
        log.warning("C-GET by %s refused: 0x%04X %s", caller, status, exc)
        yield 1
        yield status, None
        return
    sender.install(event.assoc)
    yield len(datasets)
    log.info("C-GET by %s: %d instance(s)", caller, len(datasets))
    yield from _sub_operations(event, datasets, loader)
