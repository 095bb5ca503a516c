"""Running the HTTP app next to the DICOM service, in a thread of ``pacs serve``."""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time

import uvicorn

from pacs.services import Services
from viewer_api.app import create_app

log = logging.getLogger(__name__)
# requested once at start (HttpService.warm_up): the health check (a sync endpoint), a miss that
# walks every DICOMweb route, and searches and retrievals of UIDs that name nothing
_NO_SUCH = "/dicomweb/studies/1.2/series/1.2"  # a valid UID that names nothing
WARM_UP_PATHS = ("/healthz", "/dicomweb/warm-up", "/dicomweb/studies?StudyInstanceUID=1.2",
                 "/dicomweb/series?SeriesInstanceUID=1.2", "/dicomweb/instances?SOPInstanceUID=1.2",
                 f"{_NO_SUCH}/metadata", f"{_NO_SUCH}/instances/1.2/rendered")


class HttpService:
    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: no 40 ms Nagle/delayed-ACK stall per response
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((settings.http_host, settings.http_port))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(create_app(services), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self, warm_up: bool = True) -> None:
        self.sock.listen(128)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="http-server", daemon=True)
        self._thread.start()
        if warm_up:
            self.warm_up()

    def warm_up(self, timeout: float = 10.0) -> dict[str, int]:
        """Request :data:`WARM_UP_PATHS` from ourselves once the server listens, so that the
        one-time costs of a first request (modules the web stack imports on first use, the
        route tables FastAPI builds on first match, SQL statements compiled on first use, the
        rendering libraries: 5-25 ms per kind of request) are paid before a user's first
        request. The paths name no stored object: nothing is read, nothing is rendered.
        Returns the HTTP status of each path."""
        self.services.wado.warm_up()
        deadline = time.monotonic() + timeout
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        address = self.sock.getsockname()[0]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)  # noqa: S104
        statuses: dict[str, int] = {}
        # their misses are expected: not worth a warning in the operator's log at every start
        quiet = logging.getLogger("viewer_api.errors")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self._warm_up_requests(host, timeout, statuses)
        finally:
            quiet.setLevel(level)
        return statuses

    def _warm_up_requests(self, host: str, timeout: float, statuses: dict[str, int]) -> None:
        for path in WARM_UP_PATHS:
            conn = http.client.HTTPConnection(host, self.port, timeout=timeout)
            try:
                conn.request("GET", path)
                answer = conn.getresponse()
                answer.read()
                statuses[path] = answer.status
            except OSError as exc:  # only slower first requests: never a reason not to start
                log.warning("HTTP warm-up request %s to %s failed: %s", path, host, exc)
                break
            finally:
                conn.close()

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()
