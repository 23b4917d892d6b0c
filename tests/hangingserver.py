"""An HTTP endpoint on 127.0.0.1 that accepts requests and never answers them (or answers late).

Stands in for a hung nginx / dyups interface: the TCP connect succeeds at
once, the request is read in full, and then nothing comes back.

Guarantees:

* ``delay=None`` (the default): no byte is ever sent; every connection stays
  open until the client closes it or :meth:`HangingServer.close` is called.
* ``delay=N``: each request is answered ``200 success`` (the dyups answer to
  a good POST, with Content-Length) N seconds after it was read in full, on a
  keep-alive connection.
* Every request read in full is recorded in :attr:`HangingServer.requests`
  as (method, path, body), and :attr:`HangingServer.received` is set, so a
  test can wait for "the client is now stuck on us".
* :meth:`close` closes the listener and every connection; it is idempotent.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from reloader.localenv.tcpproxy import close_socket

_ANSWER = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Length: 7\r\n\r\nsuccess"


class HangingServer:
    """See the module docstring. ``start()`` before use; ``url`` is its base URL."""

    def __init__(self, delay: float | None = None) -> None:
        self.delay = delay
        self.port: int | None = None
        self.requests: list[tuple[str, str, bytes]] = []
        self.received = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started yet")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HangingServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port or 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                         name=f"hanging-{self.port}").start()
        return self

    def close(self) -> None:
        self._closed.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            close_socket(listener)
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            close_socket(sock)

    def __enter__(self) -> HangingServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._socks.add(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buffer = b""
        try:
            while not self._closed.is_set():
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = (lines[0].split(" ") + ["", ""])[:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip() or 0)
                while len(buffer) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                with self._lock:
                    self.requests.append((method, path, body))
                self.received.set()
                if self.delay is None:
                    # Hold the connection: read (and ignore) whatever else comes until closed.
                    while sock.recv(65536):
                        pass
                    return
                if self._closed.wait(self.delay):
                    return
                sock.sendall(_ANSWER)
        except OSError:
            return
        finally:
            with self._lock:
                self._socks.discard(sock)
            close_socket(sock)

