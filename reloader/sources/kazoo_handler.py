"""kazoo's threading handler, with a cheaper wait for its connection loop.

kazoo's connection thread waits for its socket (or its wake-up pipe) before
every single request it sends and every answer it reads. The stock handler
builds a new epoll selector for each of those waits (an ``epoll_create``,
one ``epoll_ctl`` per descriptor, a ``close``), so a read of 20,000 children
pays for 40,000 selectors. :class:`PollingHandler` answers the same
question with one ``poll()`` call and nothing to tear down.

Guarantees: ``select`` has the contract of the stock handler's (kazoo's
``selector_select``): the same arguments and checks, the same lists back, a
descriptor that hung up or failed reported as readable (and as writable when
asked for writing only), and no limit on descriptor numbers. Everything else
is kazoo's own :class:`~kazoo.handlers.threading.SequentialThreadingHandler`.
"""

from __future__ import annotations

import select
from typing import Any

from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.handlers.utils import fileobj_to_fd

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_TROUBLE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class PollingHandler(SequentialThreadingHandler):
    """A :class:`SequentialThreadingHandler` whose ``select`` is one ``poll()`` call."""

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
        poller = select.poll()
        for fd, mask in wanted.items():
            poller.register(fd, mask)
        ready = poller.poll(None if timeout is None else timeout * 1000.0)
        readable: list[Any] = []
        writable: list[Any] = []
        for fd, events in ready:
            # As the stock selector does: trouble counts as both, reading wins.
            if events & (_READ | _TROUBLE) and fd in readers:
                readable.extend(readers[fd])
            elif events & (_WRITE | _TROUBLE) and fd in writers:
                writable.extend(writers[fd])
        return readable, writable, []
