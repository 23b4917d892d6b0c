"""kazoo's threading handler, with a cheaper wait for its connection loop and no hop for hand-on callbacks.

kazoo's connection thread waits for its socket (or its wake-up pipe) before
every single request it sends and every answer it reads. The stock handler
builds a new epoll selector for each of those waits (an ``epoll_create``,
one ``epoll_ctl`` per descriptor, a ``close``), so a read of 20,000 children
pays for 40,000 selectors. :class:`PollingHandler` answers the same
question with one ``poll()`` call and nothing to tear down.

kazoo also hands every watch event to a callback thread of its own, so
that a watcher may block. A watcher that only hands the event on (a
non-blocking put into a queue) pays a thread hop per event for nothing:
about 0.1 ms of latency and a queue put, get and wake-up of CPU. One marked
with :func:`hands_on` runs at once, on the thread that dispatches it.

kazoo also reads each packet with two ``recv`` calls (its length, then its
body), each after a wait of its own. The connection the handler makes is a
:class:`BufferedSocket`: one ``recv`` takes whatever the kernel holds (up to
64 KB), and the packets in it are served from that buffer with no system
call at all.

Guarantees: ``select`` has the contract of the stock handler's (kazoo's
``selector_select``): the same arguments and checks, the same lists back, a
descriptor that hung up or failed reported as readable (and as writable when
asked for writing only), and no limit on descriptor numbers; a
:class:`BufferedSocket` (or a TLS socket) holding bytes already read is
readable at once, and the others are still polled (without waiting), so a
request to send is never held up by a full buffer. A
:class:`BufferedSocket` returns the bytes in the order the socket gave
them, never more than asked for, and the socket's own errors as they
come; everything else (send, close, shutdown) is the socket's. A callback
marked with :func:`hands_on` runs on the dispatching thread (kazoo's
connection thread for watch events, the caller's for the rest), in the
order it was dispatched, and an exception it raises is logged, never
passed to that thread; unmarked callbacks go to kazoo's callback thread as
before. Everything else is kazoo's own
:class:`~kazoo.handlers.threading.SequentialThreadingHandler`.

A consumer marks all of its callbacks or none: kazoo calls state listeners
on its connection thread anyway, so with every watcher marked too, the
consumer sees events and state changes in the order the connection read
them; a mix of marked and queued watchers could see them reordered.
"""

from __future__ import annotations

import logging
import select
from typing import Any, Callable, TypeVar

from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.handlers.utils import fileobj_to_fd
from kazoo.protocol.states import Callback

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_HANDS_ON = "_reloader_hands_on"


def hands_on(func: F) -> F:
    """Mark a watcher or listener that only hands its argument on: it never blocks and never calls kazoo.

    :class:`PollingHandler` runs it on the thread that dispatches it rather
    than on kazoo's callback thread (a bound method of a marked function is
    marked too).
    """
    setattr(func, _HANDS_ON, True)
    return func


def is_hands_on(func: Callable[..., Any]) -> bool:
    return bool(getattr(func, _HANDS_ON, False))

# How much one read from the kernel may take: ZooKeeper's packets are small,
# and a burst of them (events, answers) comes in one read.
READ_SIZE = 65536


class BufferedSocket:
    """A connected socket whose ``recv`` is served from one larger read (see the module docstring)."""

    __slots__ = ("_sock", "_buffer", "_offset")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._offset = 0

    def recv(self, size: int) -> bytes:
        buffered = len(self._buffer) - self._offset
        if buffered > 0:
            start = self._offset
            self._offset = start + min(size, buffered)
            return self._buffer[start:self._offset]
        data = self._sock.recv(max(size, READ_SIZE))
        if len(data) <= size:
            return data
        self._buffer, self._offset = data, size
        return data[:size]

    def pending(self) -> int:
        """Bytes that can be read without waiting: this buffer's, and a TLS socket's own."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buffer) - self._offset + inner

    def send(self, data: bytes) -> int:
        return int(self._sock.send(data))

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _pending(fileobj: Any) -> int:
    pending = getattr(fileobj, "pending", None)
    return int(pending()) if pending is not None else 0


_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_TROUBLE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class PollingHandler(SequentialThreadingHandler):
    """A :class:`SequentialThreadingHandler` whose ``select`` is one ``poll()``; hand-on callbacks run at once."""

    def create_connection(self, *args: Any, **kwargs: Any) -> BufferedSocket:
        return BufferedSocket(super().create_connection(*args, **kwargs))

    def dispatch_callback(self, callback: Callback) -> None:
        if not is_hands_on(callback.func):
            super().dispatch_callback(callback)
            return
        try:
            callback.func(*callback.args)
        except Exception:  # noqa: BLE001 - as kazoo's callback thread: log it, never break the connection
            log.exception("a %s callback failed", callback.type)

    def select(self, rlist: list[Any], wlist: list[Any], xlist: list[Any],
               timeout: float | None = None) -> tuple[list[Any], list[Any], list[Any]]:
        if timeout is not None:
            if not isinstance(timeout, (int, float)):
                raise TypeError("timeout must be a number")
            if timeout < 0:
                raise ValueError("timeout must be non-negative")
        wanted: dict[int, int] = {}
        readers: dict[int, list[Any]] = {}
        writers: dict[int, list[Any]] = {}
        for mask, fileobjs, by_fd in ((_READ, rlist, readers), (_WRITE, wlist, writers)):
            for fileobj in fileobjs:
                fd = fileobj_to_fd(fileobj)
                wanted[fd] = wanted.get(fd, 0) | mask
                by_fd.setdefault(fd, []).append(fileobj)
        # Bytes already read (by a BufferedSocket, or TLS) wait in no kernel
        # queue: such a reader is ready now, and the rest are only looked at.
        buffered = [fileobj for fileobj in rlist if _pending(fileobj) > 0]
        if buffered:
            timeout = 0
        poller = select.poll()
        for fd, mask in wanted.items():
            poller.register(fd, mask)
        ready = poller.poll(None if timeout is None else timeout * 1000.0)
        readable: list[Any] = list(buffered)
        writable: list[Any] = []
        for fd, events in ready:
            # As the stock selector does: trouble counts as both, reading wins.
            if events & (_READ | _TROUBLE) and fd in readers:
                readable.extend(fileobj for fileobj in readers[fd] if fileobj not in buffered)
            elif events & (_WRITE | _TROUBLE) and fd in writers:
                writable.extend(writers[fd])
        return readable, writable, []
