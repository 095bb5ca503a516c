"""Driving DCMTK's command-line tools from tests: running them, reading their answers.

DCMTK's own tools are called by full path (pynetdicom installs console scripts with the same
names) with ``TCP_NODELAY=1`` in their environment (see ``/work/shared/INFRA.md``). Statuses and
sub-operation counts are read from the DIMSE messages they print with ``-d``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import cast

import pydicom
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from pacs.dicom.header import dataset_offset

BIN = Path("/usr/bin")
HOST = "127.0.0.1"
CALLED_AE = "MINIPACS"
TIMEOUT = 60.0
# connection, ACSE and DIMSE timeouts, so that a hung peer fails the test instead of hanging it
NET_OPTIONS = ("-to", "10", "-ta", "10", "-td", "30")

_FIELD = re.compile(r"^D: (?P<name>Message Type|DIMSE Status|Completed Suboperations|"
                    r"Failed Suboperations|Warning Suboperations)\s*: (?P<value>.*)$")


@dataclass
class Response:
    """One DIMSE response message as a DCMTK tool printed it with ``-d``."""

    kind: str
    status: int = -1
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None


@dataclass
class Run:
    """A finished DCMTK process: exit code and everything it printed."""

    args: list[str]
    returncode: int
    output: str

    def responses(self, kind: str) -> list[Response]:
        """The ``kind`` messages (e.g. ``C-FIND RSP``) in the order received."""
        found: list[Response] = []
        current: Response | None = None
        for line in self.output.splitlines():
            match = _FIELD.match(line)
            if match is None:
                continue
            name, value = match["name"], match["value"].strip()
            if name == "Message Type":
                current = Response(value) if value == kind else None
                if current is not None:
                    found.append(current)
            elif current is not None and name == "DIMSE Status":
                current.status = int(value.split(":")[0], 16)
            elif current is not None:
                number = None if value == "none" else int(value)
                setattr(current, name.split()[0].lower(), number)
        return found

    def final(self, kind: str) -> Response:
        """The last ``kind`` response (the final one of a C-FIND/C-MOVE/C-GET)."""
        found = self.responses(kind)
        assert found, f"no {kind} in the output of {' '.join(self.args)}:\n{self.output}"
        return found[-1]

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}\n(exit {self.returncode})\n{self.output[-6000:]}"


def run(tool: str, *args: str, env: dict[str, str], timeout: float = TIMEOUT) -> Run:
    """Run ``/usr/bin/<tool>`` with ``args``; never raises on a non-zero exit."""
    cmd = [str(BIN / tool), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace",
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    return Run(cmd, proc.returncode, proc.stdout + proc.stderr)


def keys(*items: str) -> list[str]:
    """``-k`` options for findscu/movescu/getscu, e.g. ``keys("QueryRetrieveLevel=STUDY")``."""
    return [arg for item in items for arg in ("-k", item)]


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file: everything after the File Meta Information."""
    return part10[dataset_offset(part10):]


def read_dir(directory: Path) -> dict[str, Path]:
    """The DICOM files a DCMTK SCP or SCU wrote into ``directory``, by SOP Instance UID."""
    out: dict[str, Path] = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = path
    return out


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"storescp did not listen on {port}:\n{log.read_text()}")
        time.sleep(0.02)


@dataclass
class StoreSCP:
    """A DCMTK ``storescp`` writing what it receives into ``directory``."""

    proc: subprocess.Popen[bytes]
    directory: Path
    log: Path

    def received(self) -> dict[str, Path]:
        return read_dir(self.directory)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def storescp(directory: Path, port: int, *options: str, env: dict[str, str],
             ae_title: str = "STORESCP") -> Iterator[StoreSCP]:
    """Start ``storescp`` on ``port`` (``+B``: files exactly as received); stop it by PID."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory.with_suffix(".log")
    cmd = [str(BIN / "storescp"), "-v", "+B", "-aet", ae_title, "-od", str(directory),
           "-dhl", *options, str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, log, 10.0)
        yield StoreSCP(proc, directory, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def send_raw_c_store(port: int, sop_class_uid: str, sop_instance_uid: str,
                     transfer_syntax_uid: str, data: bytes) -> int:
    """Send ``data`` as the data set of one C-STORE, unparsed, with pynetdicom; the status.

    DCMTK's storescu refuses to send a file it cannot parse, so damaged data sets are sent
    this way: the C-STORE primitive is built by hand (as ``Association.send_c_store`` does,
    pynetdicom 3.0) because pynetdicom's own API always encodes a Dataset.
    """
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(sop_class_uid, transfer_syntax_uid)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(HOST, port, ae_title=CALLED_AE)
    assert assoc.is_established, "association for the raw C-STORE was not accepted"
    try:
        cx = assoc.accepted_contexts[0]
        req = C_STORE()
        req.MessageID = 1
        req.Priority = 2
        req.AffectedSOPClassUID = sop_class_uid
        req.AffectedSOPInstanceUID = sop_instance_uid
        req.DataSet = BytesIO(data)
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        try:
            assoc.dimse.send_msg(req, cast(int, cx.context_id))
            _, rsp = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert rsp is not None, "no C-STORE response"
        status = cast(C_STORE, rsp).Status
        assert status is not None, "C-STORE response without a status"
        return int(status)
    finally:
        assoc.release()
