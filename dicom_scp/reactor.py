"""Responsive association reactors: no 1 ms naps between the messages of a busy association.

pynetdicom runs two polling loops per association. The DUL thread handles one PDU per loop and
sleeps ``_run_loop_delay`` (1 ms) whenever a loop found nothing to do; the association thread
sleeps 1 ms before each look at the DIMSE message queue. A C-STORE therefore waits for a few
of those naps (the last fragment read, the request served, the response written): measured on
a bare pynetdicom SCP that acknowledges without storing, 207 instances/s with the stock loops
against 325 with 0.1 ms naps (one storescu association, 512 KB CT slices).

:func:`install` (at EVT_CONN_OPEN, before either thread starts) switches an association to
subclasses that keep pynetdicom's logic and change only the waiting:

- the DUL naps :data:`BUSY_DELAY` while the association has been active in the last
  :data:`ACTIVE_WINDOW` seconds, and pynetdicom's 1 ms when idle, so an idle association costs
  what it always did;
- the association thread waits on the DIMSE queue's condition (woken as soon as a message is
  complete) for at most 1 ms, instead of sleeping 1 ms before every look at it.

Both classes depend on pynetdicom internals (pinned in pyproject.toml); the tests exercise
them through every DIMSE service.
"""

from __future__ import annotations

import logging
import time
from typing import cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

LOGGER = logging.getLogger("pynetdicom.association")  # where pynetdicom logs these events

BUSY_DELAY = 0.00005  # seconds between DUL loops of an active association
IDLE_DELAY = 0.001  # pynetdicom's default, once the association went quiet
ACTIVE_WINDOW = 0.05  # seconds after the last PDU sent or received that count as active
MESSAGE_WAIT = 0.001  # longest wait of the association thread between its other checks


class ResponsiveDUL(DULServiceProvider):
    """A DUL whose idle nap is short while PDUs flow and pynetdicom's 1 ms otherwise."""

    _last_activity = 0.0

    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        if time.monotonic() - self._last_activity < ACTIVE_WINDOW:
            return BUSY_DELAY
        return IDLE_DELAY

    @_run_loop_delay.setter
    def _run_loop_delay(self, _value: float) -> None:
        pass  # pynetdicom's __init__ sets its constant; the property decides

    def _process_recv_primitive(self) -> bool:
        sent = super()._process_recv_primitive()
        if sent:
            self._last_activity = time.monotonic()
        return sent

    def _is_transport_event(self) -> bool:
        received = super()._is_transport_event()
        if received:
            self._last_activity = time.monotonic()
        return received


class ResponsiveAssociation(Association):
    """An association whose thread wakes as soon as a DIMSE message is complete.

    :meth:`_run_reactor` is pynetdicom 3.0's acceptor loop (same checks, same order) with
    its unconditional 1 ms sleep replaced by a wait on the DIMSE queue."""

    def _wait_for_message(self) -> None:
        pending = self.dimse.msg_queue
        with pending.not_empty:
            if not pending._qsize():  # type: ignore[attr-defined]
                pending.not_empty.wait(MESSAGE_WAIT)

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            self._wait_for_message()
            # send_*() callers on other threads pause the loop through the checkpoint
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self._peer_ended() or not self.dul.is_alive() or self._timed_out():
                self.kill()
                return

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


def install(assoc: Association) -> None:
    """Switch ``assoc`` (not yet running) to the responsive reactors."""
    if type(assoc) is Association:
        assoc.__class__ = ResponsiveAssociation
    if type(assoc.dul) is DULServiceProvider:
        assoc.dul.__class__ = ResponsiveDUL
