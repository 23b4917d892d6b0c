"""Host names from the registry become addresses before anything is rendered.

nginx resolves the host names of an upstream block when it loads its
configuration: a name that does not resolve at that moment makes ``nginx -t``,
every later reload and the next restart fail (``host not found in
upstream``), whether the record was removed by a hostile team or lost in a
plain DNS outage. So no output ever gets a host name: the pipeline asks this
module for the name's addresses and serves those (the files keep the name in
a comment).

Guarantees of :class:`HostChecker`:

* nothing here blocks its caller: :meth:`HostChecker.resolve` answers from
  what is known at once and starts a look-up on a :class:`~reloader.threads.DaemonPool`
  when the name is new or its answer is older than ``interval``; a resolver
  that hangs holds up a pool thread, never a cluster thread, and never the
  process's exit;
* a look-up that has not answered leaves the name *unknown*, never
  "unresolvable": queueing behind slow look-ups cannot turn a healthy name
  into a failure;
* once a name has resolved, its last known addresses are kept for as long as
  later look-ups fail: a DNS outage never drops a healthy server; a name that
  has never resolved is *failed* once its look-up says so;
* when an answer changes what a name resolves to (or whether it failed),
  every user of the name is called with it (from a pool thread: users hand the
  work to their own thread);
* the cache holds only names in use: a name is dropped when its last user
  :meth:`releases <HostChecker.release>` it;
* failing to start a look-up (no thread can be started, or the checker is
  closed) leaves the name as it was, never "resolves".

IP addresses are never looked up. Thread-safe: the daemon's clusters share one
checker.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

from reloader.addresses import InvalidAddress, is_ip_literal, normalize_host
from reloader.threads import DaemonPool

log = logging.getLogger(__name__)

Lookup = Callable[[str], object]
#: Called with the host name whose answer changed; from a pool thread.
User = Callable[[str], None]

#: At most this many addresses of one name are served (sorted, so the choice is stable).
MAX_ADDRESSES = 16


def _getaddrinfo(host: str) -> object:
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)


@dataclass(frozen=True)
class Resolution:
    """What is known of one name: its last known addresses, and whether its look-up failed."""

    addresses: tuple[str, ...] = ()
    # Why the latest look-up failed (kept while a retry is on its way).
    error: str | None = None

    @property
    def failed(self) -> bool:
        """Never resolved, and its look-up said so: the name cannot be served."""
        return not self.addresses and self.error is not None

    @property
    def unknown(self) -> bool:
        """No answer yet: keep whatever is published for it."""
        return not self.addresses and self.error is None


@dataclass
class _Entry:
    resolution: Resolution = field(default_factory=Resolution)
    answered_at: float | None = None
    in_flight: bool = False
    users: set[User] = field(default_factory=set)


def addresses_of(answer: object) -> tuple[str, ...]:
    """The distinct addresses in a ``getaddrinfo`` answer (or a list of address strings), normalized and sorted."""
    found: set[str] = set()
    for item in answer if isinstance(answer, (list, tuple)) else ():
        text = item if isinstance(item, str) else item[4][0] if isinstance(item, tuple) and len(item) > 4 else None
        if not isinstance(text, str):
            continue
        try:
            host = normalize_host(text)
        except InvalidAddress:
            continue
        if is_ip_literal(host):
            found.add(host)
    return tuple(sorted(found)[:MAX_ADDRESSES])


class HostChecker:
    """The addresses of host names, looked up in the background and kept up to date (see the module docstring)."""

    def __init__(
        self,
        interval: float = 30.0,
        lookup: Lookup = _getaddrinfo,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 4,
        timeout: float = 5.0,
        pool: DaemonPool | None = None,
    ) -> None:
        #: How old an answer may get before the name is looked up again.
        self.interval = interval
        #: The longest :meth:`wait` waits, over all its calls (the one-shot ``render`` waits; the daemon never does).
        self.timeout = timeout
        self._waited = 0.0
        self._lookup = lookup
        self._clock = clock
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._pool = pool or DaemonPool(workers, name="resolver")

    def __len__(self) -> int:
        """How many names are cached."""
        with self._lock:
            return len(self._entries)

    def resolve(self, host: str, user: User | None = None) -> Resolution:
        """What is known of ``host`` now; starts a look-up when it is due. Never blocks.

        ``user`` (if given) is called when the answer changes, until it
        :meth:`release`\\ s the name. An IP address is its own answer.
        """
        if is_ip_literal(host):
            return Resolution((host,))
        with self._lock:
            entry = self._entries.get(host)
            if entry is None:
                entry = self._entries[host] = _Entry()
            if user is not None:
                entry.users.add(user)
            due = not entry.in_flight and (
                entry.answered_at is None
                or self._clock() - entry.answered_at >= self._retry_after(entry.resolution)
            )
            if due:
                entry.in_flight = True
            resolution = entry.resolution
        if due:
            self._start(host)
        return resolution

    def release(self, host: str, user: User) -> None:
        """``user`` no longer uses ``host``; the name leaves the cache when nobody does."""
        with self._lock:
            entry = self._entries.get(host)
            if entry is None:
                return
            entry.users.discard(user)
            if not entry.users and not entry.in_flight:
                del self._entries[host]

    def wait(self, hosts: Iterable[str]) -> None:
        """Wait until none of ``hosts`` is unknown with a look-up on its way, or the budget is spent.

        For the one-shot ``render`` only: a daemon thread never waits here.
        All calls together wait at most ``timeout``, so a hung resolver costs
        a render that long once, however many upstreams name hosts.
        """
        began = time.monotonic()
        deadline = began + max(self.timeout - self._waited, 0.0)
        names = [host for host in hosts if not is_ip_literal(host)]
        try:
            self._wait_until(names, deadline)
        finally:
            self._waited += time.monotonic() - began

    def _wait_until(self, names: list[str], deadline: float) -> None:
        with self._lock:
            while True:
                waiting = [
                    name for name in names
                    if (entry := self._entries.get(name)) is not None and entry.in_flight
                    and entry.resolution.unknown
                ]
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    return
                self._answered.wait(left)

    def close(self) -> None:
        """Stop looking names up (look-ups already running finish on their own; nobody waits)."""
        self._pool.shutdown()

    # ---- inside -------------------------------------------------------------------

    def _retry_after(self, resolution: Resolution) -> float:
        # A failing name is asked again sooner, so a brief outage ends soon.
        return min(self.interval, 5.0) if resolution.error is not None else self.interval

    def _start(self, host: str) -> None:
        try:
            future: Future[object] = self._pool.submit(self._lookup, host)
        except Exception as error:  # noqa: BLE001 - no thread, or closed: the name stays as it was
            log.debug("host name %r: cannot start a look-up: %s", host, error)
            with self._lock:
                entry = self._entries.get(host)
                if entry is not None:
                    entry.in_flight = False
                self._answered.notify_all()
            return
        future.add_done_callback(lambda done: self._finish(host, done))

    def _finish(self, host: str, future: Future[object]) -> None:
        error: str | None = None
        found: tuple[str, ...] = ()
        if future.cancelled():
            error = None
        else:
            failure = future.exception()
            if isinstance(failure, OSError):
                error = f"host name {host!r} does not resolve ({failure.strerror or failure})"
            elif failure is not None:
                error = f"host name {host!r} could not be resolved ({failure})"
            else:
                found = addresses_of(future.result())
                if not found:
                    error = f"host name {host!r} resolves to no address"
        with self._lock:
            entry = self._entries.get(host)
            if entry is None:
                return
            entry.in_flight = False
            if future.cancelled():
                self._answered.notify_all()
                return  # closing: nothing was learnt
            entry.answered_at = self._clock()
            before = entry.resolution
            if found:
                after = Resolution(found)
            else:
                # Keep the last known addresses: a DNS outage must not drop a healthy server.
                after = Resolution(before.addresses, error)
            entry.resolution = after
            users = list(entry.users)
            if not users:
                del self._entries[host]
            self._answered.notify_all()
        if after.addresses and before.error is not None and before.addresses:
            log.warning("host name %r resolves again: %s", host, ", ".join(after.addresses))
        elif not found and before.addresses and before.error is None:
            log.warning("%s; keeping its last known addresses %s", error, ", ".join(before.addresses))
        if after.addresses != before.addresses or after.failed != before.failed:
            for user in users:
                try:
                    user(host)
                except Exception:  # noqa: BLE001 - one user's failure must not hide the answer from the others
                    log.exception("host name %r: telling a user about its new answer failed", host)
