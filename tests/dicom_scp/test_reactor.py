"""The responsive reactors (dicom_scp.reactor) keep pynetdicom's association life cycle:
requests served, release, abort and the network timeout, and an idle association waits as
long as pynetdicom's own nap instead of spinning."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_scp import reactor
from tests.conftest import RunningArchive, testdata

pytestmark = pytest.mark.parametrize("backend", ["embedded"], indirect=True)


def _scu() -> AE:
    ae = AE("REACTORSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae


def _thread_cpu(native_id: int) -> float:
    """CPU seconds used so far by a thread of this process (Linux)."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_association(archive: RunningArchive) -> object:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        active = list(archive.service.server.active_associations)  # type: ignore[union-attr]
        if active:
            return active[0]
        time.sleep(0.01)
    raise AssertionError("no association on the server")


def test_served_associations_use_the_responsive_reactors(
        make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False)
    assoc = _scu().associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    try:
        served = _server_association(archive)
        assert isinstance(served, reactor.ResponsiveAssociation)
        assert isinstance(served.dul, reactor.ResponsiveDUL)  # type: ignore[attr-defined]
        for _ in range(20):  # many messages in a row, each answered
            assert assoc.send_c_echo().Status == 0
        ct = pydicom.dcmread(testdata("CT_small.dcm"))
        assert assoc.send_c_store(ct).Status == 0
        # idle, the DUL thread waits (in select) instead of spinning
        dul = served.dul  # type: ignore[attr-defined]
        busy = _thread_cpu(dul.native_id)
        time.sleep(1.0)
        assert _thread_cpu(dul.native_id) - busy < 0.25  # seconds of CPU in one second
    finally:
        assoc.release()
    assert assoc.is_released
    deadline = time.monotonic() + 5
    while served.is_alive() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    assert not served.is_alive() and served.is_released  # type: ignore[attr-defined]


def test_busy_dul_thread_never_naps(make_archive: Callable[..., RunningArchive],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the PDUs of a busy association the DUL thread waits in select, never in
    time.sleep: pynetdicom's loop slept even a zero nap (~50-75 us of timer slack each,
    several per C-STORE)."""
    archive = make_archive(precompute_metadata=False)
    assoc = _scu().associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    try:
        served = _server_association(archive)
        dul_thread = served.dul.ident  # type: ignore[attr-defined]
        naps: list[float] = []
        sleep = time.sleep

        def counting_sleep(seconds: float) -> None:
            if threading.get_ident() == dul_thread:
                naps.append(seconds)
            sleep(seconds)

        monkeypatch.setattr(time, "sleep", counting_sleep)
        ct = pydicom.dcmread(testdata("CT_small.dcm"))
        for n in range(20):
            assert assoc.send_c_echo().Status == 0
            ct.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.424242.{n + 1}"
            assert assoc.send_c_store(ct).Status == 0
        assert naps == []
    finally:
        assoc.release()


def test_abort_from_the_peer_ends_the_served_association(
        make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False)
    assoc = _scu().associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    served = _server_association(archive)
    assert assoc.send_c_echo().Status == 0
    assoc.abort()
    deadline = time.monotonic() + 5
    while served.is_alive() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    assert not served.is_alive() and served.is_aborted  # type: ignore[attr-defined]


def test_idle_association_times_out(make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False, network_timeout=1)
    assoc = _scu().associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    served = _server_association(archive)
    assert assoc.send_c_echo().Status == 0
    deadline = time.monotonic() + 10
    while served.is_alive() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert not served.is_alive()  # type: ignore[attr-defined]
    assert not assoc.is_established or assoc.is_aborted or assoc.is_released


def test_quick_end_asks_the_dul_again_after_doubling_waits(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's Association.kill sleeps 10 ms whenever its DUL is not idle yet (it rarely
    is, right after a release); QuickEnd waits 0.1 ms, then twice as long each time, up to
    pynetdicom's 10 ms."""

    class NotYetIdle:
        def __init__(self, busy: int) -> None:
            self.busy = busy
            self.asked = 0

        def is_alive(self) -> bool:
            return True

        def stop_dul(self) -> bool:
            self.asked += 1
            return self.asked > self.busy

    waits: list[float] = []
    monkeypatch.setattr(reactor, "time", SimpleNamespace(sleep=waits.append))
    assoc = reactor.QuickEnd(AE("QUICK"), "requestor")
    dul = NotYetIdle(busy=9)
    assoc.dul = dul  # type: ignore[assignment]
    assoc.kill()
    assert dul.asked == 10
    assert waits == [0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.01, 0.01]
    assert assoc._kill and not assoc.is_established and assoc._is_paused
