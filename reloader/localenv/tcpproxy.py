"""A TCP proxy on 127.0.0.1 whose network behaviour can be switched at run time.

Put it between a client and a server (typically the daemon and ZooKeeper) to
cut, stall or refuse that one client's traffic while everyone else still
reaches the server directly.

Guarantees:

* It listens on 127.0.0.1 only, on one port picked at construction and kept
  for its whole life, also across ``refuse`` and back.
* ``pass``: every accepted connection is forwarded byte for byte to the
  target, in both directions; a close on one side is passed on to the other.
* ``blackhole``: new connections are accepted and never forwarded (the target
  is not even contacted); connections that were forwarding stop forwarding,
  in both directions, without being closed (their bytes are read and thrown
  away, so neither peer blocks); a close by one peer is not passed on to
  the other either. A connection once black-holed stays so until
  it is closed: bytes it swallowed are gone, so resuming it would corrupt the
  stream. Only connections accepted after a switch back to ``pass`` forward.
* ``refuse``: the listening socket is closed, so connects are refused, and
  every existing connection is reset (RST, not FIN) on both sides.
* :meth:`blackhole_after` black-holes the next accepted connection, and the
  proxy as a whole, once that connection has carried a given number of bytes
  from the target: a way to stall a client in the middle of a conversation.
* :meth:`close` ends everything (listener, connections, threads) and is
  idempotent.

One thread accepts; each connection has one thread per direction.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from types import TracebackType

from .ports import free_port

log = logging.getLogger(__name__)

MODES = ("pass", "blackhole", "refuse")
_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST: SO_LINGER with a zero timeout drops the connection."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # SHUT_RD wakes a thread blocked in recv() without sending a FIN
        # (SHUT_WR would, and the peer would then see a clean close first).
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def close_socket(sock: socket.socket) -> None:
    """Close ``sock`` for good, waking any thread blocked in ``recv()`` on it."""
    # shutdown() first: it wakes a thread blocked in recv() on this socket,
    # which close() alone does not do on Linux.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Connection:
    """One accepted client connection and, while forwarding, its target connection."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, target: socket.socket | None) -> None:
        self.proxy = proxy
        self.client = client
        self.target = target
        self.blackholed = target is None
        # Bytes target -> client left before this connection black-holes itself
        # (None: no such limit).
        self.budget: int | None = None
        self.closed = False
        self.sides_open = 1 if target is None else 2

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(self.client, self.target, False), daemon=True,
                         name=f"tcpproxy-{self.proxy.port}-up").start()
        if self.target is not None:
            threading.Thread(target=self._pump, args=(self.target, self.client, True), daemon=True,
                             name=f"tcpproxy-{self.proxy.port}-down").start()

    def _pump(self, source: socket.socket, sink: socket.socket | None, from_target: bool) -> None:
        while True:
            try:
                data = source.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                if from_target and not self.closed:
                    self.proxy._note_target_closed()
                if self.blackholed and not self.closed:
                    # A black hole passes on nothing, not even a close: the
                    # other peer keeps an open, silent connection (so a
                    # server only learns of a lost client by its timeout).
                    self._side_done(source)
                else:
                    self.close(reset=False)
                return
            if self.blackholed or sink is None:
                continue
            if from_target and self.budget is not None:
                if len(data) >= self.budget:
                    data = data[: self.budget]
                    self.budget = 0
                else:
                    self.budget -= len(data)
            try:
                sink.sendall(data)
            except OSError:
                self.close(reset=False)
                return
            if from_target and self.budget == 0:
                self.budget = None
                self.proxy._budget_spent()

    def _side_done(self, sock: socket.socket) -> None:
        """Close one side of a black-holed connection; forget it once every side is closed."""
        close_socket(sock)
        with self.proxy._lock:
            self.sides_open -= 1
            done = self.sides_open == 0
        if done:
            self.closed = True
            self.proxy._forget(self)

    def close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        finish = _reset if reset else close_socket
        finish(self.client)
        if self.target is not None:
            finish(self.target)
        self.proxy._forget(self)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port``; see the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port: int = port if port is not None else free_port()
        self._lock = threading.Lock()
        self._mode = "pass"
        self._connections: set[_Connection] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._arm_budget: int | None = None
        self.budget_spent = threading.Event()
        # Counters, for tests to wait on: connections accepted, and closes made
        # by the target itself (ZooKeeper closes the connection of a session it
        # expired; a black-holed client's close never reaches it).
        self.accepted = 0
        self.target_closes = 0

    # -- properties -----------------------------------------------------------

    @property
    def hosts(self) -> str:
        """The address clients connect to, ``"127.0.0.1:PORT"``."""
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def connections(self) -> int:
        """How many accepted connections are open right now."""
        with self._lock:
            return len(self._connections)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Start listening (in the current mode, unless it is ``refuse``)."""
        if self._mode != "refuse":
            self._listen()
        return self

    def _listen(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                               name=f"tcpproxy-{self.port}-accept")
        self._accept_thread.start()

    def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        close_socket(listener)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)
            self._accept_thread = None

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closing.set()
        self._unlisten()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close(reset=False)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TcpProxy {self.hosts} -> {self.target[0]}:{self.target[1]} {self._mode}>"

    # -- modes ------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        """Switch to ``pass``, ``blackhole`` or ``refuse`` (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self._lock:
            self._mode = mode
            connections = list(self._connections)
            if mode != "pass":
                self._arm_budget = None
            if mode == "blackhole":
                for connection in connections:
                    connection.blackholed = True
        log.debug("%r: mode %s", self, mode)
        if mode == "refuse":
            self._unlisten()
            for connection in connections:
                connection.close(reset=True)
        elif not self._closing.is_set():
            self._listen()

    def pass_through(self) -> None:
        self.set_mode("pass")

    def blackhole(self) -> None:
        self.set_mode("blackhole")

    def refuse(self) -> None:
        self.set_mode("refuse")

    def blackhole_after(self, nbytes: int) -> None:
        """Forward the next accepted connection until it has carried ``nbytes``
        from the target, then black-hole the whole proxy; :attr:`budget_spent` is set then."""
        if nbytes < 1:
            raise ValueError("nbytes must be at least 1")
        with self._lock:
            self._arm_budget = nbytes
            self.budget_spent.clear()

    # -- internals --------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                mode = self._mode
                self.accepted += 1
            if mode == "refuse":
                _reset(client)
                continue
            target: socket.socket | None = None
            if mode == "pass":
                try:
                    target = socket.create_connection(self.target, timeout=5)
                    target.settimeout(None)
                    target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError as error:
                    # The target is down: behave as it would, refuse this client.
                    log.debug("%r: target unreachable: %s", self, error)
                    _reset(client)
                    continue
            connection = _Connection(self, client, target)
            with self._lock:
                if target is not None and self._arm_budget is not None:
                    connection.budget, self._arm_budget = self._arm_budget, None
                if self._mode == "blackhole":
                    connection.blackholed = True
                self._connections.add(connection)
            connection.start()

    def _budget_spent(self) -> None:
        self.set_mode("blackhole")
        self.budget_spent.set()

    def _note_target_closed(self) -> None:
        with self._lock:
            self.target_closes += 1

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
