"""Running the DIMSE service: the AE, its server socket, start and stop.

Several processes can share one port (``PACS_DICOM_WORKERS``): the first binds the listening
socket and hands it to the others (:class:`SharedPort`); each takes a waiting connection only
if no sibling has fewer associations open, so four modalities sending to two processes get
two each. (SO_REUSEPORT, used before, hashes each connection to a process: four associations
landed 2/2 in only about a third of the runs, 3/1 or 4/0 otherwise, and the busier process's
interpreter lock then set the pace.) They share the index and storage.
"""

from __future__ import annotations

import functools
import gc
import logging
import socket
import threading
import time
import weakref
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pydicom.config
import pynetdicom.pdu_items
import pynetdicom.pdu_primitives
import pynetdicom.presentation
import pynetdicom.utils
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import (
    AddressInformation,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from dicom_scp import handlers, reactor
from dicom_scp.conformance import supported_contexts
from pacs.config import Settings
from pacs.services import Services

log = logging.getLogger(__name__)


@dataclass
class SharedPort:
    """The listening socket the DICOM service processes share, and the associations each has
    open (``counts``, a shared array indexed by ``slot``).

    The process that binds the port passes ``listener=None``; the others get its socket
    (picklable when given to a ``multiprocessing`` process as it starts)."""

    counts: Any
    slot: int
    listener: socket.socket | None = None
    grace: float = 0.02
    _open: weakref.WeakSet[socket.socket] = field(default_factory=weakref.WeakSet, repr=False)
    _deferred_since: float | None = field(default=None, repr=False)
    _last_deferral: float = field(default=0.0, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"counts": self.counts, "slot": self.slot, "listener": self.listener,
                "grace": self.grace}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def publish(self) -> int:
        """Record (and return) how many of this process's accepted connections are open."""
        count = sum(1 for sock in list(self._open) if sock.fileno() != -1)
        self.counts[self.slot] = count
        return count

    def may_accept(self) -> bool:
        """Whether this process should take the connection waiting on the socket: it has no
        more associations open than any sibling, or the sibling whose turn it is has left it
        waiting ``grace`` seconds (busy, or gone)."""
        mine = self.publish()
        if mine <= min(self.counts[:]):
            return True
        now = time.monotonic()
        if self._deferred_since is None or now - self._last_deferral > 0.1:
            self._deferred_since = now  # a new connection, not the one deferred before
        self._last_deferral = now
        return now - self._deferred_since >= self.grace

    def accepted(self, sock: socket.socket) -> None:
        self._open.add(sock)
        self._deferred_since = None
        self.publish()


PREPARE_DELAY = 0.003  # after an accept, the next acceptor is prepared this much later


class PacsRequestHandler(RequestHandler):
    """Gives the connection an acceptor the server prepared while it was idle
    (:class:`AcceptorPreparer`), or one built now."""

    server: PacsAssociationServer

    def _create_association(self) -> Association:
        server = self.server
        assoc = server.preparer.take() if server.preparer is not None else None
        if assoc is None:
            assoc = server.new_acceptor()
        # pynetdicom counts an acceptor as open by its thread's name
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acceptor.address_info = self.local
        assoc.requestor.address_info = self.remote
        return assoc


class AcceptorPreparer:
    """Builds the server's next acceptor ahead, so that a connection finds it ready.

    Everything pynetdicom sets up for an association before it reads a byte (the association
    with its DUL and DIMSE providers, ~20 locks and queues, two threads not yet started, ~40
    event handlers bound) and the switch to the responsive reactors took ~0.3-0.6 ms of the
    ~1.1 ms from a connection to the A-ASSOCIATE-AC, every time: one association per image
    (older modalities and routers) pays it per instance, every ``findscu``, ``movescu`` or
    ``getscu`` per query. A thread of its own builds the next acceptor
    :data:`PREPARE_DELAY` after each accept (the association just accepted negotiates
    meanwhile) and then sleeps until it is taken; nothing runs while the archive is idle.

    An acceptor depends on the AE's settings and the server's handlers at the time it is
    built: one built under settings or handlers that changed since is dropped, and the
    connection gets one built afresh, as it does when none is ready (connections coming
    faster than :data:`PREPARE_DELAY`). Nothing about the peer is known before it
    connects; the acceptor is counted as open only once it has a connection.
    """

    def __init__(self, server: PacsAssociationServer, delay: float | None = None) -> None:
        self._server = server
        self._delay = PREPARE_DELAY if delay is None else delay
        self._lock = threading.Lock()
        self._spare: tuple[Association, tuple[Any, ...]] | None = None
        self._wanted = threading.Event()
        self._wanted.set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dicom-prepare", daemon=True)
        self._thread.start()

    def take(self) -> Association | None:
        """The acceptor prepared, if one is ready and still fits the server's settings."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None or spare[1] != self._server.acceptor_settings():
            return None
        return spare[0]

    def prepare(self) -> None:
        """Have the next acceptor prepared, unless one is ready (called once a connection
        has been handed its acceptor and the association's threads have started)."""
        if not self._closed and self._spare is None:
            self._wanted.set()

    def discard(self) -> None:
        """Drop the acceptor prepared (the server's handlers changed) and prepare another."""
        with self._lock:
            self._spare = None
        self.prepare()

    def close(self) -> None:
        self._closed = True
        self._wanted.set()
        with self._lock:
            self._spare = None
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._closed:
                return
            time.sleep(self._delay)
            self._wanted.clear()
            if self._closed:
                return
            with self._lock:
                if self._spare is not None:
                    continue
            settings = self._server.acceptor_settings()
            try:
                assoc = self._server.new_acceptor()
            except Exception:  # noqa: BLE001 - connections get theirs built as they come
                log.exception("preparing the next association failed")
                self._wanted.wait(1.0)  # not in a tight loop
                continue
            with self._lock:
                if not self._closed:
                    self._spare = (assoc, settings)


class PacsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY, optionally sharing its listening socket
    with sibling processes (:class:`SharedPort`), giving connections acceptors prepared
    ahead (:class:`AcceptorPreparer`, once :meth:`prepare_acceptors` is called)."""

    shared: SharedPort | None = None
    preparer: AcceptorPreparer | None = None
    _handlers_version = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", PacsRequestHandler)
        super().__init__(*args, **kwargs)

    def prepare_acceptors(self) -> None:
        if self.preparer is None:
            self.preparer = AcceptorPreparer(self)

    def acceptor_settings(self) -> tuple[Any, ...]:
        """What an acceptor takes from the AE and the server when it is built."""
        ae = self.ae
        return (ae.acse_timeout, ae.connection_timeout, ae.dimse_timeout, ae.network_timeout,
                ae.maximum_pdu_size, ae.implementation_class_uid,
                ae.implementation_version_name, self.ae_title, id(self.contexts),
                self._handlers_version, _config.LOG_HANDLER_LEVEL)

    def new_acceptor(self) -> Association:
        """An acceptor with everything but its connection: what pynetdicom's
        ``RequestHandler._create_association`` sets up, then the responsive reactors."""
        ae = self.ae
        assoc = Association(ae, MODE_ACCEPTOR)
        assoc._server = self
        acceptor = assoc.acceptor
        acceptor.maximum_length = ae.maximum_pdu_size
        acceptor.ae_title = self.ae_title
        acceptor.implementation_class_uid = ae.implementation_class_uid
        acceptor.implementation_version_name = ae.implementation_version_name
        acceptor.supported_contexts = deepcopy(self.contexts)
        for event, bound in list(self._handlers.items()):  # bind() may run meanwhile
            if event.is_intervention and bound:
                assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Any, Any]], bound):
                    assoc.bind(event, handler, args)
        reactor.install(assoc)
        return assoc

    def bind(self, event: evt.EventType, handler: Any, args: list[Any] | None = None) -> None:
        super().bind(event, handler, args)
        self._handlers_changed()

    def unbind(self, event: evt.EventType, handler: Any) -> None:
        super().unbind(event, handler)
        self._handlers_changed()

    def _handlers_changed(self) -> None:
        self._handlers_version += 1
        if self.preparer is not None:
            self.preparer.discard()

    def server_bind(self) -> None:
        if self.shared is not None and self.shared.listener is not None:
            self.socket.close()  # the socket TCPServer made: the sibling's, bound, is used
            self.socket = self.shared.listener
            self.server_address = self.socket.getsockname()
            return
        super().server_bind()

    def server_activate(self) -> None:
        if self.shared is None or self.shared.listener is None:
            super().server_activate()
        if self.shared is not None:
            # Every process wakes for a connection; those that lose the race must not block.
            self.socket.setblocking(False)

    def server_close(self) -> None:
        if self.preparer is not None:
            self.preparer.close()
        if self.shared is None:
            super().server_close()
        else:  # shutdown() would stop the siblings' listening too: only drop this handle
            self.socket.close()

    def service_actions(self) -> None:
        """Between two accepts pynetdicom runs a full ``gc.collect()`` every 60 loops, which
        with the archive's heap holds the next association ~0.1 s; a young-generation
        collection finds the recent associations' cycles, the interpreter the rest."""
        self._gc[0] += 1
        if self._gc[0] >= self._gc[1]:
            self._gc[0] = 0
            gc.collect(1)
        if self.shared is not None:
            self.shared.publish()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Set the association up on the server's thread rather than on a thread of its own
        (``ThreadingMixIn``'s), which only created the association and started its threads:
        one thread start fewer per association (~0.15 ms to the A-ASSOCIATE-AC)."""
        self.process_request_thread(request, client_address)
        if self.preparer is not None:
            self.preparer.prepare()

    def get_request(self) -> tuple[socket.socket, Any]:
        if self.shared is not None and not self.shared.may_accept():
            time.sleep(0.001)  # a sibling with fewer associations takes it
            raise BlockingIOError("left to a less busy process")
        sock, address = super().get_request()  # BlockingIOError if a sibling was quicker
        if self.shared is not None:
            self.shared.accepted(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address


class SharedContexts(list[PresentationContext]):
    """The server's presentation contexts, given to every association as they are.

    pynetdicom deep-copies the server's contexts for every association it accepts: with ~180
    contexts and ~7,700 transfer syntax UIDs that was ~80 ms before a peer could send C-ECHO
    (each UID validated again), and still ~0.6 ms per association with the contexts copied
    field by field. The acceptor only reads them: negotiation
    (``pynetdicom.presentation.negotiate_as_acceptor``) builds new context objects for its
    answer and looks up the supported ones' transfer syntaxes and roles. So each association
    gets a new list of the same objects; ``test_dicom_scp.py`` checks after associations of
    every kind (role selection, rejected contexts) that none of them changed.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


def configure_pynetdicom() -> None:
    """pynetdicom's and pydicom's process-wide settings, applied by :class:`DicomService`:

    - no logging of query identifiers (they hold patient names and IDs, which are never
      logged at INFO, and formatting them cost as much as answering);
    - pydicom's read-time value validation off. In ``WARN`` mode (its default) it only
      warns, yet it ran a regular expression for every UID pynetdicom builds: decoding and
      negotiating an association request that proposes ~100 storage SOP classes (``getscu``)
      cost ~50 ms of CPU, most of it there. The archive validates what it keeps itself
      (UIDs in :mod:`pacs.dicom.uids`, query values in :mod:`pacs.query`);
    - the UIDs of association requests checked once each (:func:`remember_checked_uids`);
    - pynetdicom's standard logging handlers (``LOG_HANDLER_LEVEL``) left unbound while its
      logger does not log INFO (``pacs serve`` sets it to WARNING): they format every PDU and
      message they see whatever the level, ~7 ms for the 121 contexts of a ``getscu``
      association request, to log it at DEBUG.
    """
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    remember_checked_uids()
    _config.LOG_RESPONSE_IDENTIFIERS = False
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


class PacsAE(AE):
    """The archive's AE. The associations it requests (C-MOVE sub-associations) switch to
    the responsive DUL loop and end without 10 ms naps (:func:`dicom_scp.reactor.install`)
    before their threads start: ``_create_socket`` is the one step of pynetdicom's
    ``associate`` between creating the association and starting its DUL (pynetdicom is
    pinned to 3.0.x)."""

    @property
    def active_associations(self) -> list[Association]:
        """pynetdicom's (the associations whose thread runs) and those being negotiated by
        their DUL before their thread runs (:func:`dicom_scp.reactor.accept_on_dul`), so
        that the maximum number of associations holds."""
        running = super().active_associations
        return running + [assoc for assoc in reactor.unstarted_acceptors()
                          if assoc.ae is self and assoc not in running]

    def _create_socket(self, assoc: Association, address: AddressInformation,
                       tls_args: Any) -> AssociationSocket:
        reactor.install(assoc, serves_requests=False)
        return super()._create_socket(assoc, address, tls_args)


UID_CACHE_SIZE = 4096  # distinct SOP class and transfer syntax UIDs remembered as checked


def remember_checked_uids() -> None:
    """Check each SOP class and transfer syntax UID of an association request once per
    process, not every time a peer proposes it.

    pynetdicom converts and validates every UID of an A-ASSOCIATE-RQ (``set_uid``: a
    conversion and one to three regular expressions) on each step from the PDU to the
    negotiated contexts, and again as it adds each transfer syntax to a context: ~1,000
    UIDs and ~9.5 ms for the 121 storage contexts ``getscu`` proposes. The answers are the
    same each time: the converted (immutable) UID is kept for the PDU, primitive and context
    modules' ``set_uid`` (not for the DIMSE messages, whose SOP Instance UIDs are all
    different), and a transfer syntax once added is appended again without its checks.
    A UID that fails its check is not remembered: it is refused every time, as before;
    a non-conformant one is logged once instead of once per association.
    """
    if getattr(pynetdicom.presentation.set_uid, "_pacs_remembered", False):
        return
    original = pynetdicom.utils.set_uid

    @functools.lru_cache(maxsize=UID_CACHE_SIZE)
    def checked(value: str | bytes, name: str, allow_empty: bool, allow_none: bool,
                validate: bool) -> UID | None:
        return original(value, name, allow_empty, allow_none, validate)

    def set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True,
                validate: bool = True) -> UID | None:
        if isinstance(value, str | bytes):
            return checked(value, name, allow_empty, allow_none, validate)
        return original(value, name, allow_empty, allow_none, validate)

    set_uid._pacs_remembered = True  # type: ignore[attr-defined]
    for module in (pynetdicom.pdu_items, pynetdicom.pdu_primitives, pynetdicom.presentation):
        module.set_uid = set_uid  # type: ignore[attr-defined]

    add = PresentationContext.add_transfer_syntax
    known: dict[str, UID] = {}

    def add_transfer_syntax(self: PresentationContext, syntax: Any) -> None:
        uid = known.get(syntax) if isinstance(syntax, str) else None
        if uid is None:
            before = len(self._transfer_syntax)
            add(self, syntax)  # checks, warns, raises for an invalid UID
            if (isinstance(syntax, str) and len(self._transfer_syntax) > before
                    and len(known) < UID_CACHE_SIZE):
                known[str(syntax)] = self._transfer_syntax[-1]
        elif uid not in self._transfer_syntax:
            self._transfer_syntax.append(uid)

    PresentationContext.add_transfer_syntax = add_transfer_syntax  # type: ignore[method-assign]


def make_ae(settings: Settings) -> AE:
    ae = PacsAE(ae_title=settings.ae_title)
    # Not ``ae.supported_contexts = ...``: that setter drops the SCP/SCU roles, and without
    # them a C-GET requestor's role selection is refused and every sub-operation fails.
    for cx in supported_contexts():
        ae.add_supported_context(cast(UID, cx.abstract_syntax), cx.transfer_syntax,
                                 scu_role=cx.scu_role, scp_role=cx.scp_role)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = 30
    if settings.require_known_aes:
        ae.require_calling_aet = [remote.ae_title for remote in settings.remote_aes]
    return ae


def _handlers(services: Services) -> list[Any]:
    return [
        (evt.EVT_CONN_OPEN, handlers.handle_conn_open_scp, [services]),
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, [services]),
        (evt.EVT_C_FIND, handlers.handle_find, [services]),
        (evt.EVT_C_MOVE, handlers.handle_move, [services]),
        (evt.EVT_C_GET, handlers.handle_get, [services]),
        (evt.EVT_REJECTED, _log_rejected),
    ]


def _log_rejected(event: Any) -> None:
    log.warning("association from %s (%s) rejected", event.assoc.requestor.ae_title,
                event.assoc.requestor.address)


class DicomService:
    """The DIMSE service of one process."""

    def __init__(self, services: Services, *, shared: SharedPort | None = None) -> None:
        configure_pynetdicom()
        self.services = services
        self.ae = make_ae(services.settings)
        settings = services.settings
        server_class = type("Server", (PacsAssociationServer,), {"shared": shared})
        self.server = self.ae.make_server(
            (settings.dicom_host, settings.dicom_port),
            evt_handlers=_handlers(services),
            server_class=server_class,
        )
        self.server.contexts = SharedContexts(self.server.contexts)
        self.ae._servers.append(self.server)  # as AE.start_server does, so shutdown() works
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.server.prepare_acceptors()
        self._thread = threading.Thread(target=self.server.serve_forever, name="dicom-server",
                                        daemon=True)
        self._thread.start()
        log.info("DICOM service %s listening on %s:%d", self.services.settings.ae_title,
                 self.services.settings.dicom_host, self.port)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let associations in flight finish, abort those that do not."""
        self.server.shutdown()
        for assoc in list(self.server.active_associations):
            assoc.join(timeout)
        for assoc in list(self.server.active_associations):
            log.warning("aborting association with %s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
