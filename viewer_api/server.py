"""Running the HTTP app next to the DICOM service, in a thread of ``pacs serve``."""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from pacs.services import Services
from viewer_api.app import create_app

log = logging.getLogger(__name__)


class HttpService:
    def __init__(self, services: Services) -> None:
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

    def start(self) -> None:
        self.sock.listen(128)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="http-server", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()
