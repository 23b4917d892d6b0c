"""Tiny HTTP backends that answer every GET with their own name.

They stand in for the real services behind an nginx upstream: a response
body of ``"backend-2\\n"`` shows which server nginx picked.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .ports import free_port

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows the Backend it serves."""

    daemon_threads = True
    # Lets a stopped backend be started again on the same port at once.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        self.backend = backend
        super().__init__(address, _Handler)
        # A non-blocking listener: when select() reports a connection that is
        # gone by the time accept() runs (another holder of the socket took
        # it), serve_forever() gets EAGAIN and goes on polling, so stop() can
        # always end it; a blocking accept() would wait for the next client.
        self.socket.setblocking(False)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self.socket.accept()
        conn.setblocking(True)  # the handler reads and writes plainly
        return conn, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (nginx stopping, a probe giving
        # up) is routine here; socketserver would print a traceback to stderr.
        error = sys.exc_info()[1]
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            log.debug("%s: client %s hung up: %s", self.backend.name, client_address, error)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so nginx upstream keepalive behaves as in production.
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        backend = self.server.backend
        backend._count()
        body = backend.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # http.server writes every request to stderr; keep it at debug level.
        log.debug("%s: " + format, self.server.backend.name, *args)


class Backend:
    """An HTTP server on 127.0.0.1 answering every GET with ``200 NAME\\n``.

    The port is chosen at construction, so :attr:`address` is known before
    :meth:`start` (useful for registering a backend that is still down).
    ``host`` may be another loopback address (127.0.0.2), which lets a test
    allow one backend's address without allowing 127.0.0.1.
    """

    def __init__(self, name: str = "backend", port: int | None = None, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port: int = port if port is not None else free_port()
        self.body: bytes = f"{name}\n".encode()
        self._requests = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, as it appears in an nginx ``server`` line."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/``."""
        return f"http://{self.address}/"

    @property
    def requests(self) -> int:
        """How many GET requests this backend has answered."""
        with self._lock:
            return self._requests

    @property
    def running(self) -> bool:
        """True while the server accepts connections."""
        return self._server is not None

    def _count(self) -> None:
        with self._lock:
            self._requests += 1

    def start(self) -> None:
        """Bind the port and serve in a daemon thread. Does nothing if running."""
        if self._server is not None:
            return
        self._server = _Server((self.host, self.port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"backend-{self.name}",
            daemon=True,
        )
        self._thread.start()
        log.debug("backend %s serving on %s", self.name, self.address)

    def stop(self) -> None:
        """Stop serving and close the port."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.address}>"


class BackendPool:
    """``count`` backends named ``PREFIX-1`` ... ``PREFIX-N``, started and stopped together."""

    def __init__(self, count: int, prefix: str = "backend") -> None:
        self.backends: list[Backend] = [Backend(f"{prefix}-{i}") for i in range(1, count + 1)]

    @property
    def addresses(self) -> list[str]:
        """The ``127.0.0.1:PORT`` of every backend, in order."""
        return [b.address for b in self.backends]

    def by_name(self, name: str) -> Backend:
        """The backend called ``name``; KeyError if there is none."""
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    def start(self) -> None:
        for backend in self.backends:
            backend.start()

    def stop(self) -> None:
        for backend in self.backends:
            backend.stop()

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.backends)

    def __len__(self) -> int:
        return len(self.backends)

    def __getitem__(self, index: int) -> Backend:
        return self.backends[index]

    def __enter__(self) -> BackendPool:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url`` and return (status, body text), never through a proxy.

    Proxy settings from the environment are ignored on purpose: every
    address the tests use is on 127.0.0.1. An HTTP error status is returned,
    not raised; connection errors raise OSError.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
