"""Responsive association reactors: no 1 ms naps between the messages of a busy association.

pynetdicom runs two polling loops per association. The DUL thread handles one PDU per loop and
sleeps ``_run_loop_delay`` (1 ms) whenever a loop found nothing to do; the association thread
sleeps 1 ms before each look at the DIMSE message queue. A C-STORE therefore waits for a few
of those naps (the last fragment read, the request served, the response written): measured on
a bare pynetdicom SCP that acknowledges without storing, 207 instances/s with the stock loops
against 325 with 0.1 ms naps (one storescu association, 512 KB CT slices). Shorter naps cost
CPU, though (a 50 us nap: ~1.2 ms of CPU per instance spent polling), so the loops below
wait for the event instead.

:func:`install` (at EVT_CONN_OPEN, before either thread starts) switches an association to
subclasses that keep pynetdicom's logic and change only the waiting:

- the DUL waits in ``select`` for its socket or a wake-up (:meth:`ResponsiveDUL.wake`: a PDU
  to send, an event queued by another thread), at most pynetdicom's 1 ms while its ARTIM
  timer may run and 50 ms once established;
- the association thread waits on the DIMSE queue's condition (woken as soon as a message is
  complete or the DUL hands up a primitive) for at most 50 ms, instead of sleeping 1 ms
  before every look at it.

:func:`accept_on_dul` (at EVT_CONN_OPEN too) has the DUL negotiate the association itself:
it reads the A-ASSOCIATE-RQ and answers it in the same pass, where pynetdicom hands the
request up to the association thread and the answer back down (two thread hand-overs, and
the DUL started only once the association thread runs). The server's thread runs those
passes itself when the request has arrived whole (:meth:`ResponsiveDUL.negotiate_now`), so
the answer does not wait for either thread to start; otherwise the DUL thread, started
first, does. The DUL answers the release of an idle association the same way.

Both classes depend on pynetdicom internals (pinned in pyproject.toml); the tests exercise
them through every DIMSE service.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import struct
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.utils import make_target, set_timer_resolution

LOGGER = logging.getLogger("pynetdicom.association")  # where pynetdicom logs these events
DUL_LOGGER = logging.getLogger("pynetdicom.dul")

IDLE_DELAY = 0.001  # longest wait of the DUL loop (pynetdicom's nap), for its timers
BUSY_DELAY = 0.0002  # nap while another reader holds the socket
ESTABLISHED_DELAY = 0.05  # longest wait of the DUL loop in Sta6 (no ARTIM timer runs)
MESSAGE_WAIT = 0.05  # longest wait of the association thread between its other checks
RECEIVE_SLICE = 0.05  # how often a thread waiting for a primitive checks the connection
KILL_FIRST_WAIT = 0.0001  # first wait of an ending association for its DUL to be idle...
KILL_LONGEST_WAIT = 0.01  # ...doubling up to pynetdicom's fixed one
REQUEST_CACHE_MIN = 2048  # association requests this long or longer are decoded once...
REQUEST_CACHE_SIZE = 32  # ...each, the last ones seen (~100 KiB each with 120 contexts)
NEGOTIATE_NOW_MAX = 65536  # longest association request negotiated by the server's thread
NEGOTIATE_NOW_WAIT = 0.002  # how long the server's thread waits for the request to arrive
PARTIAL_REQUEST_NAP = 0.0001  # its nap while part of the request has arrived
NEGOTIATE_NOW_PASSES = 6  # passes of the DUL loop it runs at most (three do it)


class ResponsiveDUL(DULServiceProvider):
    """A DUL that, with nothing to do, waits for the socket or for something to send.

    pynetdicom's loop naps ``_run_loop_delay`` (1 ms) whenever a pass found nothing to do;
    :meth:`run_reactor` is that loop (same checks, same order) with the nap replaced by
    :meth:`_pause`: a wait, up to pynetdicom's 1 ms, in ``select`` on the association's
    socket and on a wake-up pipe written by :meth:`send_pdu`, after which the loop goes
    on at once. Incoming data and outgoing messages are handled as soon as they come, and
    an idle association costs what it did. (Returning a zero nap to pynetdicom's own loop
    is not the same: ``time.sleep(0)`` still sleeps the kernel's timer slack, ~50-75 us,
    several times per C-STORE.)
    """

    _wake: tuple[socket.socket, socket.socket] | None = None
    _checked_socket = True  # the last pass looked at the socket (see _pause)
    inbound: Any = None  # a dicom_scp.inbound.InboundReader: reads PDUs while established
    _acted = False  # the state machine has left Sta1 (see receive_pdu)
    negotiates = False  # answers the A-ASSOCIATE-RQ itself (accept_on_dul), until it has
    answers_release = False  # answers an A-RELEASE-RQ itself when the association is idle

    def enable_wakeups(self) -> None:
        pair = socket.socketpair()
        for end in pair:
            end.setblocking(False)
        self._wake = pair
        weakref.finalize(self, _close_all, pair)

    def _pause(self) -> None:
        """Wait until the loop may have something to do (it checks everything anyway)."""
        sock = getattr(self.socket, "socket", None)
        if self._wake is not None and not getattr(self.socket, "_is_connected", True):
            # an association we request, before its connection: only a wake-up (the request
            # to connect) or the timers can give the loop something to do
            ready, _, _ = select.select([self._wake[0]], [], [], IDLE_DELAY)
            if ready:
                self._drain_wakeups()
            return
        if self._wake is None or type(sock) is not socket.socket:
            time.sleep(IDLE_DELAY)
            return
        if not self._checked_socket:
            # another reader holds the socket (dicom_scp.subops reads C-STORE responses
            # itself and hides it from this loop): data may wait there that is not ours
            time.sleep(BUSY_DELAY)
            return
        self._checked_socket = False
        # the ARTIM timer runs only outside Sta6 (PS3.8 9.2); in Sta6 whatever needs the
        # loop (data, a PDU to send, an event put by another thread) comes with a wake-up
        wait = ESTABLISHED_DELAY if self.state_machine.current_state == "Sta6" else IDLE_DELAY
        try:
            ready, _, _ = select.select([sock, self._wake[0]], [], [], wait)
        except (OSError, ValueError):  # closed under us: the loop finds out
            return
        if self._wake[0] in ready:
            self._drain_wakeups()

    def _drain_wakeups(self) -> None:
        assert self._wake is not None
        try:
            self._wake[0].recv(4096)
        except OSError:
            pass

    def _is_transport_event(self) -> bool:
        self._checked_socket = True
        return super()._is_transport_event()

    def run_reactor(self) -> None:
        try:
            self._loop()
        finally:  # a data set being read when the association ended is dropped, staged or not
            if self.inbound is not None:
                self.inbound.close()

    def _loop(self) -> None:
        """pynetdicom 3.0's ``DULServiceProvider.run_reactor`` with :meth:`_pause` for its
        nap: each pass encodes and sends one primitive or reads one PDU, then acts on one
        event of the state machine (:meth:`_pass`)."""
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():  # let the association's loop start
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._pause()
            if self._kill_thread:
                break
            acted = self._pass()
            if acted is None:
                return
            idle = not acted

    def _pass(self) -> bool | None:
        """One pass of the loop: whether it acted on an event; None once it aborted the
        association (an exception, as pynetdicom does)."""
        if self.artim_timer.expired:  # its event goes ahead of any other of this pass
            self.event_queue.put("Evt18")
        try:
            if self._process_recv_primitive():
                pass
            elif self._is_transport_event():
                self._idle_timer.restart()
        except Exception as exc:  # noqa: BLE001 - as pynetdicom: abort, bypassing the
            # state machine, whose state can no longer be trusted
            self._abort_broken(exc)
            return None
        try:
            event = self.event_queue.get(block=False)
        except queue.Empty:
            return False
        self.state_machine.do_action(event)
        self._acted = True
        if self.answers_release and self.state_machine.current_state == "Sta8":
            # an A-RELEASE-RQ was just handed up (AR-2)
            try:
                cast(ResponsiveAssociation, self.assoc).answer_release_on_dul()
            except Exception as exc:  # noqa: BLE001 - as below
                self._abort_broken(exc)
                return None
        elif self.negotiates and self.state_machine.current_state == "Sta3":
            # the A-ASSOCIATE indication was just handed up: answer it here; the answer
            # (an A-ASSOCIATE response primitive) is sent by the next pass
            self.negotiates = False
            try:
                cast(ResponsiveAssociation, self.assoc).negotiate_on_dul()
            except Exception as exc:  # noqa: BLE001 - likewise
                self._abort_broken(exc)
                return None
        return True

    def negotiate_now(self) -> bool:
        """Read and answer the A-ASSOCIATE-RQ on the calling thread (the server's, before
        this DUL's thread starts) once the whole request is in the socket's buffer: a peer
        sends it as soon as it has connected, so it is there by the time the association is
        set up, or within :data:`NEGOTIATE_NOW_WAIT`. The answer then goes out without
        waiting for this thread to start (~0.1-0.2 ms each of the two threads), and without
        sharing the interpreter with them starting. False, and nothing read, when the
        request is not all there by then (or too long, or not a request): the thread reads
        it as it comes, and the server's thread goes back to accepting."""
        sock = getattr(self.socket, "socket", None)
        if (not self.negotiates or type(sock) is not socket.socket
                or not _request_waiting(sock, NEGOTIATE_NOW_WAIT)):
            return False
        # the connection (Evt5), the request read and negotiated (Evt6), the answer sent
        for _ in range(NEGOTIATE_NOW_PASSES):
            if not self._pass() or (not self.negotiates and self.to_provider_queue.empty()):
                break
        return True

    def _abort_broken(self, exc: Exception) -> None:
        """pynetdicom's answer to an exception in its loop: an A-ABORT sent at once, and the
        association and this thread ended."""
        DUL_LOGGER.error("Exception in DUL.run(), aborting association")
        DUL_LOGGER.exception(exc)
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 0x02, 0x00
        try:
            cast(Any, self.socket).send(abort.encode())
        except Exception:  # noqa: BLE001 - the connection may be gone already
            pass
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True
        # an association thread waiting for the A-ASSOCIATE-RQ this PDU was (an
        # undecodable one: a UID too long...) would otherwise wait out its ACSE
        # timeout (30 s), counted among the open associations all along
        self.to_user_queue.put(None)
        negotiated = getattr(self.assoc, "_negotiated", None)
        if negotiated is not None:
            negotiated.set()

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """pynetdicom's, except that a long A-ASSOCIATE-RQ already decoded is not decoded
        again (:func:`decoded_request`)."""
        if bytestream[:1] != b"\x01" or len(bytestream) < REQUEST_CACHE_MIN:
            return super()._decode_pdu(bytestream)
        data = bytes(bytestream)
        evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": data})
        pdu = decoded_request(data)
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt6"

    def _read_pdu_data(self) -> None:
        if self.inbound is not None and self.state_machine.current_state == "Sta6":
            self.inbound.read_pdu()
        else:
            super()._read_pdu_data()

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def wake(self) -> None:
        """End the loop's current wait."""
        if self._wake is not None:
            try:
                self._wake[1].send(b"\0")
            except OSError:  # full (the loop has wake-ups pending anyway) or closed
                pass

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def receive_pdu(self, wait: bool = False, timeout: float | None = None) -> Any:
        """pynetdicom's, except that a wait ends as soon as the connection has closed with
        nothing left to hand up. An association thread waiting for the A-ASSOCIATE-RQ of a
        peer that sent an undecodable one (a UID too long...) or none at all was otherwise
        held for its ACSE timeout (30 s), counted among the open associations all along:
        pynetdicom aborts such a peer without telling the association."""
        if not wait:
            return super().receive_pdu(wait, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = RECEIVE_SLICE if deadline is None else deadline - time.monotonic()
            primitive = super().receive_pdu(True, max(0.0, min(RECEIVE_SLICE, left)))
            if primitive is not None or (deadline is not None and left <= RECEIVE_SLICE):
                return primitive
            # over (the connection closed or being closed: back in Sta1 after having left
            # it, or Sta13, where no primitive is handed up any more) first, then empty:
            # whatever the DUL handed up before is queued
            state = self.state_machine.current_state
            over = state == "Sta13" or (state == "Sta1" and self._acted)
            if over and self.to_user_queue.empty():
                return None

    def stop_dul(self) -> bool:
        """pynetdicom's: stop the loop if the state machine is idle (Sta1), and wait until
        it has; woken at once and joined rather than polled every millisecond."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        if threading.current_thread() is not self:
            self.join()
        return True


def _request_waiting(sock: socket.socket, wait: float) -> bool:
    """Whether a whole A-ASSOCIATE-RQ PDU of at most :data:`NEGOTIATE_NOW_MAX` bytes is in
    ``sock``'s receive buffer (looked at, not read), waiting up to ``wait`` seconds for it
    to arrive."""
    deadline = time.monotonic() + wait
    peek = socket.MSG_PEEK | socket.MSG_DONTWAIT
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([sock], [], [], max(0.0, left))
            if not ready:
                return False
            head = sock.recv(6, peek)
            if not head or head[0] != 0x01:  # closed, or not a request: the DUL answers
                return False
            if len(head) == 6:
                size = 6 + struct.unpack(">I", head[2:6])[0]
                if size > NEGOTIATE_NOW_MAX:
                    return False
                if len(sock.recv(size, peek)) == size:
                    return True
            if left <= 0:
                return False
            time.sleep(PARTIAL_REQUEST_NAP)  # part of it is there: select would not wait
    except OSError:
        return False


def _close_all(sockets: tuple[socket.socket, ...]) -> None:
    for sock in sockets:
        sock.close()


class QuickEnd(Association):
    """An association whose end does not wait for its DUL in 10 ms naps.

    pynetdicom's ``Association.kill`` asks the DUL to stop (``stop_dul``: only once its state
    machine is idle, Sta1) and, when it is not idle yet, sleeps 10 ms before asking again.
    Right after a release the DUL thread is usually still finishing the transition that
    handed the A-RELEASE-RP up, so most releases we requested took 10 ms more than the
    exchange: a C-MOVE, which answers only once its sub-association to the destination is
    released, spent ~20 ms on one instance, 11.5 ms of it releasing. :meth:`kill` is
    pynetdicom 3.0's with the wait starting at 0.1 ms and doubling up to its 10 ms.
    """

    def kill(self) -> None:
        self._reactor_checkpoint.set()  # the reactor must run to exit
        self._kill = True
        self.is_established = False
        self._is_paused = True
        if threading.current_thread() is self.dul:
            # negotiating on the DUL thread (accept_on_dul), which cannot wait for itself to
            # go idle: the association thread ends it (ResponsiveAssociation.run_reactor)
            return
        wait = KILL_FIRST_WAIT
        while self.dul.is_alive() and not self.dul.stop_dul():
            time.sleep(wait)
            wait = min(2 * wait, KILL_LONGEST_WAIT)


class ResponsiveAssociation(QuickEnd):
    """An association whose thread wakes as soon as a DIMSE message is complete.

    :meth:`_run_reactor` is pynetdicom 3.0's acceptor loop (same checks, same order) with
    its unconditional 1 ms sleep replaced by a wait on the DIMSE queue."""

    _negotiated: threading.Event | None = None  # set by accept_on_dul
    _serving: threading.Lock  # held by the association thread while it serves or checks

    def negotiate_on_dul(self) -> None:
        """Answer the A-ASSOCIATE-RQ the DUL just handed up, on the thread running its loop
        (the DUL's, or the server's in :meth:`ResponsiveDUL.negotiate_now`): pynetdicom's
        acceptor steps (``Association.run_reactor``). The association's own thread may not
        run yet: :func:`unstarted_acceptors` counts it among the open associations."""
        assert self._negotiated is not None
        try:
            self.requestor.primitive = self.dul.to_user_queue.get(block=False)
            evt.trigger(self, evt.EVT_REQUESTED, {})
            if not self.is_aborted and not self.is_rejected:
                self.acse.negotiate_association()
        finally:
            self._negotiated.set()

    def run_reactor(self) -> None:
        """pynetdicom's acceptor reactor when the DUL negotiates (:func:`accept_on_dul`):
        wait for the outcome, up to the ACSE timeout, instead of for the request."""
        if self._negotiated is None:
            super().run_reactor()
            return
        with _UNSTARTED_LOCK:  # counted as a running thread from now on
            _UNSTARTED.discard(self)
        if self._wait_negotiated() and self.is_established:
            with set_timer_resolution(self._timer_resolution):  # type: ignore[attr-defined]
                self._run_reactor()
        else:  # rejected, aborted, never asked or timed out: once the DUL is idle
            self.kill()
        sock = cast(Any, self.dul.socket)
        if self._server and sock.socket:  # type: ignore[attr-defined]
            self._server.shutdown_request(sock.socket)  # type: ignore[attr-defined]

    def _wait_negotiated(self) -> bool:
        """Whether the DUL answered the request, waiting for it up to the ACSE timeout and
        no longer than the connection lasts (see ResponsiveDUL.receive_pdu)."""
        assert self._negotiated is not None
        timeout = self.acse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        dul = cast(ResponsiveDUL, self.dul)
        while not self._negotiated.wait(RECEIVE_SLICE):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            state = dul.state_machine.current_state
            over = state == "Sta13" or (state == "Sta1" and dul._acted)
            if over or not dul.is_alive():
                return self._negotiated.is_set()
        return True

    def _wait_for_message(self) -> None:
        pending = self.dimse.msg_queue
        with pending.not_empty:
            # a primitive handed up (a release request...) notifies under this lock too,
            # perhaps before this thread first got here (the DUL negotiated without it)
            if not pending._qsize() and self.dul.to_user_queue.empty():  # type: ignore[attr-defined]
                pending.not_empty.wait(MESSAGE_WAIT)

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            self._wait_for_message()
            # send_*() callers on other threads pause the loop through the checkpoint
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            with self._serving:  # the DUL answers a release only while this thread is idle
                if self._kill:  # it did (answer_release_on_dul)
                    break
                context_id, msg = self.dimse.get_msg(block=False)
                if msg:
                    self._serve_request(msg, cast(int, context_id))
                ended = self._peer_ended() or not self.dul.is_alive() or self._timed_out()
            if ended:
                self.kill()
                return
        self.kill()  # ended by the DUL: stop it once idle (a no-op if already stopped)

    def answer_release_on_dul(self) -> None:
        """Answer the A-RELEASE-RQ the DUL just handed up, on the DUL thread, if this
        association's thread is idle (serving no message, none waiting): the A-RELEASE-RP
        then goes out in the DUL's next pass rather than after two thread hand-overs.
        Otherwise the association thread answers it, after the message it serves."""
        if not self._serving.acquire(blocking=False):
            return
        try:
            if self._kill or not self.dimse.msg_queue.empty() or not self._peer_ended():
                return
            self._kill = True  # the association thread ends (and stops the DUL)
        finally:
            self._serving.release()
        pending = self.dimse.msg_queue
        with pending.not_empty:
            pending.not_empty.notify_all()

    def _peer_ended(self) -> bool:
        """A release requested or an abort (either side): answered as pynetdicom does."""
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            return True
        if self.acse.is_aborted():
            LOGGER.info("Association Aborted%s",
                        " (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "")
            self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            return True
        return False

    def _timed_out(self) -> bool:
        if not self.dul.idle_timer_expired():
            return False
        LOGGER.error("Network timeout reached")
        if self.network_timeout_response == "A-RELEASE":
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self.release()
            self._is_paused = False
        else:
            self.abort()
        return True


def install(assoc: Association, *, serves_requests: bool = True) -> None:
    """Switch ``assoc`` (not yet running) to the responsive reactors.

    An association we request (``serves_requests`` False: a C-MOVE's sub-association, on
    which we only send) gets the responsive DUL and :class:`QuickEnd`, and keeps
    pynetdicom's association loop, which stays paused while the sub-operations are sent.

    The loops then wait up to :data:`ESTABLISHED_DELAY` / :data:`MESSAGE_WAIT` (a thread
    that wakes every millisecond to find nothing costs ~3 % of a core per association), so
    whatever they wait for wakes them: an event another thread queues for the DUL (the
    transport closed, a PDU read by :mod:`dicom_scp.subops`) and every primitive the DUL
    hands up to the association (a release request, an abort). Installing twice changes
    nothing (the server prepares its next acceptor ahead, :mod:`dicom_scp.server`)."""
    if getattr(assoc, "_responsive", False):  # switched already (a prepared acceptor)
        return
    assoc._responsive = True  # type: ignore[attr-defined]
    if type(assoc) in (Association, QuickEnd):
        assoc.__class__ = ResponsiveAssociation if serves_requests else QuickEnd
    if isinstance(assoc, ResponsiveAssociation):
        assoc._serving = threading.Lock()
        _remember_release_requests(assoc)
    dul = assoc.dul
    if type(dul) is not DULServiceProvider:
        return
    dul.__class__ = ResponsiveDUL
    responsive = cast(ResponsiveDUL, dul)
    # the thread's target was bound to the base class's run_reactor in DUL.__init__
    dul._target = make_target(responsive.run_reactor)  # type: ignore[attr-defined]
    responsive.enable_wakeups()
    put_event = dul.event_queue.put

    def event(item: Any, *args: Any, **kwargs: Any) -> None:
        put_event(item, *args, **kwargs)
        if threading.current_thread() is not dul:
            responsive.wake()

    put_primitive = dul.to_user_queue.put
    messages = assoc.dimse.msg_queue

    def primitive(item: Any, *args: Any, **kwargs: Any) -> None:
        put_primitive(item, *args, **kwargs)
        with messages.not_empty:
            messages.not_empty.notify_all()

    dul.event_queue.put = event  # type: ignore[method-assign]
    dul.to_user_queue.put = primitive  # type: ignore[method-assign]


def _remember_release_requests(assoc: Association) -> None:
    """Once ``assoc``'s ACSE has seen an A-RELEASE-RQ, it stays seen.

    pynetdicom's ``ACSE.is_release_requested`` takes the A-RELEASE primitive off the queue
    when it finds it. Its query/retrieve service classes call it between the responses of a
    C-FIND, C-GET or C-MOVE and then only stop, so a release requested meanwhile was never
    answered: the association stayed open (Sta8) until the peer gave up and aborted, or the
    network timeout. The association's loop now finds the request and answers it."""
    acse = assoc.acse
    check = acse.is_release_requested
    seen = False

    def is_release_requested() -> bool:
        nonlocal seen
        seen = seen or check()
        return seen

    acse.is_release_requested = is_release_requested  # type: ignore[method-assign]


def accept_on_dul(assoc: Association) -> bool:
    """Have ``assoc``'s DUL negotiate the association it accepts
    (:meth:`ResponsiveAssociation.negotiate_on_dul`): the A-ASSOCIATE-AC goes out in the pass
    that read the request, run by the calling thread if the request is there
    (:meth:`ResponsiveDUL.negotiate_now`), else by the DUL thread, started here, before the
    association's. False, and nothing changed, unless ``assoc`` is an acceptor switched by
    :func:`install` and not yet running."""
    dul = assoc.dul
    if (not isinstance(assoc, ResponsiveAssociation) or not assoc.is_acceptor
            or not isinstance(dul, ResponsiveDUL) or dul.is_alive() or assoc.is_alive()):
        return False
    assoc._negotiated = threading.Event()
    with _UNSTARTED_LOCK:
        _UNSTARTED.add(assoc)
    # Thread.run calls the target bound in Association.__init__, before install's switch
    assoc._target = make_target(assoc.run_reactor)  # type: ignore[attr-defined]
    dul.negotiates = dul.answers_release = True
    dul.negotiate_now()
    dul.start()
    assoc._started_dul = True  # type: ignore[attr-defined]
    return True


# acceptors negotiating on their DUL thread before their own thread runs (accept_on_dul)
_UNSTARTED: weakref.WeakSet[Association] = weakref.WeakSet()
_UNSTARTED_LOCK = threading.Lock()


def unstarted_acceptors() -> list[Association]:
    """The associations :func:`accept_on_dul` set negotiating whose own thread has not
    started yet (pynetdicom counts open associations by their running threads)."""
    with _UNSTARTED_LOCK:
        return [assoc for assoc in _UNSTARTED if not assoc.is_alive()]


_REQUESTS: OrderedDict[bytes, A_ASSOCIATE_RQ] = OrderedDict()
_REQUESTS_LOCK = threading.Lock()


def decoded_request(data: bytes) -> A_ASSOCIATE_RQ:
    """The A-ASSOCIATE-RQ PDU encoded in ``data``, decoded once for the same bytes.

    A peer sends the same request each time it associates, and one proposing many
    presentation contexts takes long to decode (``getscu``'s 121 contexts, 17 KB: ~1.5-2 ms
    in pynetdicom's item-by-item decoding, before negotiation can start). The PDU object is
    only read afterwards (``to_primitive`` builds new objects from it), so the same one can
    serve every association sending those bytes. A request that fails to decode raises each
    time and is never kept."""
    with _REQUESTS_LOCK:
        pdu = _REQUESTS.get(data)
        if pdu is not None:
            _REQUESTS.move_to_end(data)
            return pdu
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(data)
    with _REQUESTS_LOCK:
        _REQUESTS[data] = pdu
        while len(_REQUESTS) > REQUEST_CACHE_SIZE:
            _REQUESTS.popitem(last=False)
    return pdu
