"""A ZooKeeper-aware TCP proxy: it sees each request, can refuse opcodes and cut connections.

Put it between one client and a ZooKeeper server to count what the client
sends (opcode by opcode, connection by connection), to play an older server
that does not know an opcode, or to cut the client off while its session
lives on.

Guarantees:

* It listens on 127.0.0.1 only, on one port kept for its whole life.
* Frames (a 4-byte big-endian length, then the body) are forwarded whole and
  unchanged in both directions; a close on one side is passed on.
* :attr:`requests` records every frame a client sends, in order, as a
  :class:`Request`: the connection's number (1 for the first accepted), and
  for every frame but the first (the ConnectRequest, recorded with opcode
  ``None``) its xid and opcode.
* ``refuse={opcode: err}``: a request with that opcode is not forwarded; the
  client gets the reply a ZooKeeper server gives an opcode it does not know
  (UnimplementedRequestProcessor: a reply header with the request's xid, zxid
  -1 and ``err``, ZooKeeper 3.5 answers -6 for AddWatch), and then the
  connection is closed, as that server closes it. The session lives on.
* :meth:`stall_after` (one opcode, once): the next request with that opcode
  is forwarded, and from then on nothing the server sends on that
  connection reaches the client (its answer, events, pings' answers are
  read and dropped): a one-way black hole, as a dead return path looks,
  until the client gives the connection up. Later connections are not
  touched.
* :meth:`drop` resets every open connection; new ones are accepted.
  :meth:`hold` resets them and resets every new one at once until
  :meth:`release`: the client is cut off for as long as the test needs.
* :meth:`close` ends everything and is idempotent.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from types import TracebackType
from typing import NamedTuple

from .ports import free_port
from .tcpproxy import _reset, close_socket

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!i")
_XID_OPCODE = struct.Struct("!ii")
_REPLY_HEADER = struct.Struct("!iqi")


class Request(NamedTuple):
    """One frame a client sent: its connection's number, xid and opcode (None: the ConnectRequest)."""

    connection: int
    xid: int | None
    opcode: int | None


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    parts = []
    while size:
        try:
            chunk = sock.recv(size)
        except OSError:
            return None
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _read_frame(sock: socket.socket) -> bytes | None:
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    if length < 0:
        return None
    body = _read_exactly(sock, length) if length else b""
    return None if body is None else head + body


class _Connection:
    def __init__(self, proxy: ZkFrameProxy, number: int, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.number = number
        self.client = client
        self.server = server
        self.to_client = threading.Lock()  # whole frames only, also the injected replies
        self.closed = False
        # Set once this connection forwarded the request stall_after named: nothing more goes down.
        self.stalled = threading.Event()

    def start(self) -> None:
        name = f"zkproxy-{self.proxy.port}-{self.number}"
        threading.Thread(target=self._up, daemon=True, name=f"{name}-up").start()
        threading.Thread(target=self._down, daemon=True, name=f"{name}-down").start()

    def _up(self) -> None:
        first = True
        while True:
            frame = _read_frame(self.client)
            if frame is None:
                self.close(reset=False)
                return
            if first:
                first = False
                self.proxy._record(Request(self.number, None, None))
            elif len(frame) >= 12:
                xid, opcode = _XID_OPCODE.unpack_from(frame, 4)
                self.proxy._record(Request(self.number, xid, opcode))
                if self.proxy._take_stall(opcode):
                    self.stalled.set()
                err = self.proxy.refuse.get(opcode)
                if err is not None:
                    reply = _REPLY_HEADER.pack(xid, -1, err)
                    with self.to_client:
                        try:
                            self.client.sendall(_LENGTH.pack(len(reply)) + reply)
                        except OSError:
                            pass
                    self.close(reset=False)
                    return
            try:
                self.server.sendall(frame)
            except OSError:
                self.close(reset=False)
                return

    def _down(self) -> None:
        while True:
            frame = _read_frame(self.server)
            if frame is None:
                self.close(reset=False)
                return
            if self.stalled.is_set():
                continue  # the black hole: read (so the server never blocks) and dropped
            with self.to_client:
                try:
                    self.client.sendall(frame)
                except OSError:
                    self.close(reset=False)
                    return

    def close(self, reset: bool) -> None:
        with self.proxy._lock:
            if self.closed:
                return
            self.closed = True
            self.proxy._connections.discard(self)
        finish = _reset if reset else close_socket
        finish(self.client)
        finish(self.server)


class ZkFrameProxy:
    """Forwards 127.0.0.1:``port`` to a ZooKeeper server frame by frame; see the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int | None = None,
                 refuse: dict[int, int] | None = None) -> None:
        self.target = (target_host, target_port)
        self.port: int = port if port is not None else free_port()
        self.refuse: dict[int, int] = dict(refuse or {})
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._requests: list[Request] = []
        self._accepted = 0
        self._held = False
        self._stall_opcode: int | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """Connections accepted and forwarded so far (the number of the last one)."""
        with self._lock:
            return self._accepted

    @property
    def requests(self) -> list[Request]:
        """A copy of every request seen so far, in order."""
        with self._lock:
            return list(self._requests)

    def requests_on(self, connection: int) -> list[Request]:
        """The requests seen on connection number ``connection``."""
        return [request for request in self.requests if request.connection == connection]

    def start(self) -> ZkFrameProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                        name=f"zkproxy-{self.port}-accept")
        self._thread.start()
        return self

    def drop(self) -> None:
        """Reset every open connection (the clients see a lost connection); keep accepting."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close(reset=True)

    def stall_after(self, opcode: int) -> None:
        """Black-hole the way back of the connection that next sends a request with ``opcode`` (see the module docstring)."""
        with self._lock:
            self._stall_opcode = opcode

    @property
    def stalled(self) -> bool:
        """Whether a connection is black-holed now (the stall happened and its connection is still open)."""
        with self._lock:
            return any(connection.stalled.is_set() for connection in self._connections)

    def _take_stall(self, opcode: int) -> bool:
        with self._lock:
            if self._stall_opcode is None or opcode != self._stall_opcode:
                return False
            self._stall_opcode = None
            return True

    def hold(self) -> None:
        """Reset every open connection and every new one until :meth:`release`."""
        with self._lock:
            self._held = True
        self.drop()

    def release(self) -> None:
        with self._lock:
            self._held = False

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            close_socket(listener)
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.drop()

    def __enter__(self) -> ZkFrameProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ZkFrameProxy {self.hosts} -> {self.target[0]}:{self.target[1]}>"

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                held = self._held
            if held:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError as error:
                log.debug("%r: target unreachable: %s", self, error)
                _reset(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._accepted += 1
                connection = _Connection(self, self._accepted, client, server)
                self._connections.add(connection)
            connection.start()
