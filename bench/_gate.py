"""A TCP gate between clients and one server on 127.0.0.1, which a bench can shut and reopen.

Why: to time a resync after a reconnect, the bench must change ZooKeeper
while a client is cut off, and know the moment the client is back. The gate
relays bytes both ways; ``shut()`` drops every relayed connection and stops
listening (clients see a dead connection, then "connection refused");
``reopen()`` listens again on the same port, and ``accepted_after(t)`` is the
first connection accepted since ``t`` (``time.monotonic()``), which is when
the client's reconnect began, independent of its back-off timer.

Guarantees: only 127.0.0.1 is ever bound or dialled; one thread relays all
connections with ``selectors``; ``close()`` frees everything.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time


class TcpGate:
    """Listens on 127.0.0.1:port (0 = pick) and relays to 127.0.0.1:target_port."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self.accepts: list[float] = []  # monotonic times of accepted connections
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._commands: list[str] = []
        self._stop = False
        self._listen()
        self._thread = threading.Thread(target=self._run, name=f"gate-{self.port}", daemon=True)
        self._thread.start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(512)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, "listen")

    def _command(self, command: str) -> None:
        done = threading.Event()
        with self._lock:
            self._commands.append((command, done))  # type: ignore[arg-type]
        self._wake_w.send(b"x")
        done.wait(5)

    def shut(self) -> None:
        """Drop every relayed connection and stop listening."""
        self._command("shut")

    def reopen(self) -> None:
        """Listen again on the same port."""
        self._command("reopen")

    def close(self) -> None:
        self._command("shut")
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()

    def connections(self) -> int:
        return len(self._pairs) // 2

    def accepted_after(self, t: float) -> float | None:
        with self._lock:
            return next((a for a in self.accepts if a >= t), None)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(1.0):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                    with self._lock:
                        commands, self._commands = self._commands, []
                    for command, done in commands:  # type: ignore[misc]
                        if command == "shut":
                            if self._listener is not None:
                                self._sel.unregister(self._listener)
                                self._listener.close()
                                self._listener = None
                            for sock in list(self._pairs):
                                if sock in self._pairs:
                                    self._drop(sock)
                        elif command == "reopen" and self._listener is None:
                            self._listen()
                        done.set()
                elif key.data == "listen":
                    assert self._listener is not None
                    try:
                        client, _ = self._listener.accept()
                    except BlockingIOError:
                        continue
                    with self._lock:
                        self.accepts.append(time.monotonic())
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                    except OSError:
                        client.close()
                        continue
                    for s in (client, upstream):
                        s.setblocking(False)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._pairs[client] = upstream
                    self._pairs[upstream] = client
                    self._sel.register(client, selectors.EVENT_READ, "relay")
                    self._sel.register(upstream, selectors.EVENT_READ, "relay")
                else:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock not in self._pairs:
                        continue
                    try:
                        data = sock.recv(1 << 18)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(sock)
                        continue
                    peer = self._pairs[sock]
                    try:
                        peer.settimeout(10)  # a short blocking send keeps the relay simple and ordered
                        peer.sendall(data)
                        peer.setblocking(False)
                    except OSError:
                        self._drop(sock)
