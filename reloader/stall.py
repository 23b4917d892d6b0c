"""Noticing that the whole process stopped running, before anything acts on a stale view.

A process that is stopped (SIGSTOP, a paused container or VM, a host
starved of CPU) wakes with every timer overdue and with a view of the
registry that may be long out of date: its ZooKeeper session may have
expired meanwhile, and kazoo only finds out after its own read timeout, or
when the server's goodbye is read. Whatever runs first after the wake-up
must not act on that view as if it were current; a drop hold whose timer
fired would otherwise be released against servers that came back while the
process slept.

:class:`StallWatch` is a heartbeat: a daemon thread beats every
``interval`` seconds, and any thread may :meth:`~StallWatch.check` before
acting. When the last beat is older than ``threshold`` the process was not
running for that long, whichever thread sees it first; every subscriber is
told once per stall, synchronously, in the thread that noticed, before that
thread goes on. A thread that is merely busy (a long resync, a slow fsync)
does not stop the heartbeat, so it never looks like a stall.

Guarantees: a stall is reported at most once, and no :meth:`check` returns
while one is being reported: a thread that checks in the moment another
noticed the stall waits until every subscriber has been told, so it never
goes on as if nothing had happened. :meth:`check` is otherwise cheap (a
clock read and two uncontended locks); subscribers must not block (they
freeze and hand work on) and must not call back into the watch. The
heartbeat thread never holds up the exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Listener = Callable[[float], None]


def heartbeat_interval(threshold: float) -> float:
    """The beat for a ``threshold``: a tenth of it, between 0.1 and 0.5 s.

    Often enough that a beat is never late by a noticeable part of the
    threshold, and no more often: every beat wakes a thread, which an idle
    daemon pays for (ten beats a second were a quarter of its idle CPU).
    """
    return min(max(threshold / 10, 0.1), 0.5)


class StallWatch:
    """Reports each stretch of more than ``threshold`` seconds in which the process did not run."""

    def __init__(self, threshold: float, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0 or threshold <= interval:
            raise ValueError(f"threshold ({threshold}) must exceed the beat interval ({interval})")
        self.threshold = threshold
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # Held by a check from its clock read until its subscribers have run (see check).
        self._checking = threading.Lock()
        self._last = clock()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Stalls noticed, and the longest one (seconds).
        self.stalls = 0
        self.longest = 0.0

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(seconds)`` on each stall, in the thread that notices it."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def check(self) -> float:
        """Beat; if the previous beat is older than the threshold, report the stall. Its length, else 0.

        Returns only once the stall noticed by this or any other thread has
        been reported to every subscriber.
        """
        with self._checking:
            with self._lock:
                now = self._clock()
                gap = now - self._last
                self._last = now
                if gap <= self.threshold:
                    return 0.0
                self.stalls += 1
                self.longest = max(self.longest, gap)
                listeners = list(self._listeners)
            log.warning("the process was stalled for %.1f s (stopped, or starved of CPU); every cluster doubts "
                        "its session until ZooKeeper answers again", gap)
            for listener in listeners:
                try:
                    listener(gap)
                except Exception:  # noqa: BLE001 - one subscriber must not keep the others from hearing
                    log.exception("a stall subscriber failed")
            return gap

    def start(self) -> StallWatch:
        if self._thread is None:
            with self._lock:
                self._last = self._clock()
            self._thread = threading.Thread(target=self._beat, name="stall-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()
