"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque

# How many of this process's latest picks are never handed out again.
RECENT_PICKS = 1024


class _Picks:
    """The ports this process handed out lately (newest last), shared by every caller.

    Process-wide state, on purpose: the port space is the machine's, and a
    server is often given its port well before it binds it (a Backend, a
    LocalZooKeeper, an nginx: at construction). Without the record, two picks made before either port is
    bound can return the same number (the kernel hands a port out again as
    soon as the picking socket closes), and the second server fails to bind.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[int] = deque(maxlen=RECENT_PICKS)

    def take(self) -> int:
        with self._lock, contextlib.ExitStack() as stack:
            while True:
                # Each refused pick stays bound until the end, so the kernel never offers its port again here.
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
                if port not in self._recent:
                    self._recent.append(port)
                    return port


_PICKS = _Picks()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, and not among this process's latest picks.

    The kernel picks the port (bind to port 0); the socket is closed again at
    once, so there is a small window in which another process could take it.
    Callers that start a server on it should be ready to report a bind error.
    No port is returned twice within RECENT_PICKS picks (see :class:`_Picks`),
    so servers of one process given their ports before binding never share one.
    """
    return _PICKS.take()


def port_is_free(port: int) -> bool:
    """Return True when nothing is bound to 127.0.0.1:``port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Return True when a TCP connection to ``host:port`` is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
