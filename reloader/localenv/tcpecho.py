"""Tiny TCP backends that answer every line with their own name.

They stand in for the services behind a TCP upstream (a database, a cache,
Dubbo's own protocol) proxied by nginx's ``stream`` module: the client sends
a line, the backend answers ``NAME LINE``, so the answer shows which server
nginx picked for that connection. A connection stays open for as many lines
as the client sends.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from types import TracebackType

from .ports import free_port

log = logging.getLogger(__name__)

#: The longest line a backend reads; a longer one is cut there.
MAX_LINE = 4096


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    # Lets a stopped backend be started again on the same port at once.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], backend: EchoBackend) -> None:
        self.backend = backend
        super().__init__(address, _Handler)


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        backend = self.server.backend
        backend._count()
        try:
            while line := self.rfile.readline(MAX_LINE):
                self.wfile.write(f"{backend.name} ".encode() + line.rstrip(b"\r\n") + b"\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as error:
            log.debug("%s: client %s hung up: %s", backend.name, self.client_address, error)


class EchoBackend:
    """A TCP server on 127.0.0.1 answering each line ``L`` with ``NAME L``.

    The port is chosen at construction, so :attr:`address` is known before
    :meth:`start`, as for :class:`reloader.localenv.backends.Backend`.
    """

    def __init__(self, name: str = "echo", port: int | None = None, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port: int = port if port is not None else free_port()
        self._connections = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, as it appears in an nginx ``server`` line."""
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """How many connections this backend has accepted."""
        with self._lock:
            return self._connections

    def _count(self) -> None:
        with self._lock:
            self._connections += 1

    def start(self) -> None:
        """Bind the port and serve in a daemon thread. Does nothing if running."""
        if self._server is not None:
            return
        self._server = _Server((self.host, self.port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"echo-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the port (open connections end with their client)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> EchoBackend:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EchoBackend {self.name} {self.address}>"


class EchoPool:
    """``count`` echo backends named ``PREFIX-1`` ... ``PREFIX-N``, started and stopped together."""

    def __init__(self, count: int, prefix: str = "echo") -> None:
        self.backends = [EchoBackend(f"{prefix}-{i}") for i in range(1, count + 1)]

    def start(self) -> None:
        for backend in self.backends:
            backend.start()

    def stop(self) -> None:
        for backend in self.backends:
            backend.stop()

    def __iter__(self) -> Iterator[EchoBackend]:
        return iter(self.backends)

    def __len__(self) -> int:
        return len(self.backends)

    def __getitem__(self, index: int) -> EchoBackend:
        return self.backends[index]

    def __enter__(self) -> EchoPool:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def tcp_ask(port: int, line: str = "hello", host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    """Open a new connection to ``host:port``, send ``line``, return the answer line (without its newline).

    Raises OSError when the connection fails or closes without an answer.
    """
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(line.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = connection.recv(MAX_LINE)
            if not chunk:
                raise ConnectionError(f"{host}:{port} closed the connection without an answer (got {answer!r})")
            answer += chunk
    return answer.decode(errors="replace").rstrip("\n")


def backend_name(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    """The name of the backend a new connection to ``host:port`` reaches (through nginx or directly)."""
    answer = tcp_ask(port, "hello", host, timeout)
    name, _, echoed = answer.partition(" ")
    if echoed != "hello":
        raise ConnectionError(f"unexpected answer {answer!r} from {host}:{port}")
    return name
