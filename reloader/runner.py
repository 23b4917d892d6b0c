"""One output on a thread of its own, fed through a latest-state-wins queue per upstream.

Guarantees:

* :meth:`OutputRunner.offer_many` never blocks and may be called from any thread;
  a slow or hung output therefore never delays a cluster or another output;
* per upstream, only the newest item waits: items offered while the output is
  busy are folded into one (``merge``), so a burst costs one delivery and
  memory stays bounded by the number of upstreams;
* items are delivered in batches (one call of ``deliver_many`` for the
  whole batch, when the output can take a batch at once: the files output
  fsyncs a batch together), then ``end_batch`` runs, then ``tick`` —
  at least every ``idle`` seconds, so retries and timers stay timely;
* :meth:`submit` runs a callable on the output's thread (a re-assert, a
  settings change), so the output never needs a lock;
* :meth:`stop` returns within its deadline whatever the output is doing; the
  thread is a daemon thread, so a call stuck on a black-holed peer cannot keep
  the process alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Generic, TypeVar

from reloader.outputs.base import Output

log = logging.getLogger(__name__)

T = TypeVar("T")

IDLE = 0.5


class OutputRunner(Generic[T]):
    """Runs ``deliver`` for each item of ``output`` on a thread of its own."""

    def __init__(
        self,
        output: Output,
        deliver: Callable[[T], None],
        key: Callable[[T], str],
        merge: Callable[[T, T], T] = lambda older, newer: newer,
        idle: float = IDLE,
        deliver_many: Callable[[list[T]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.output = output
        self._deliver = deliver
        self._deliver_many = deliver_many
        self._key = key
        self._merge = merge
        self._idle = idle
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._items: dict[str, T] = {}
        self._calls: deque[Callable[[], None]] = deque()
        self._stopping = False
        self._busy_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"output-{output.name}", daemon=True)
        #: Items delivered, and deliveries that raised.
        self.delivered = 0
        self.errors = 0

    @property
    def name(self) -> str:
        return self.output.name

    # ---- any thread ------------------------------------------------------------

    def offer_many(self, items: list[T]) -> None:
        """Queue several items at once: the output takes them in one batch.

        A batch matters to outputs that act on the set (the reload output tests
        nginx once for every file of a resync, not file by file).
        """
        if not items:
            return
        with self._wake:
            for item in items:
                key = self._key(item)
                older = self._items.get(key)
                self._items[key] = item if older is None else self._merge(older, item)
            self._wake.notify()

    def submit(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the output's thread, after the items already queued."""
        with self._wake:
            self._calls.append(call)
            self._wake.notify()

    @property
    def waiting(self) -> int:
        """Upstreams with an item not yet delivered."""
        with self._lock:
            return len(self._items)

    @property
    def busy_for(self) -> float:
        """How long the current delivery has been running (0 when idle): a stuck output shows here."""
        since = self._busy_since
        return 0.0 if since is None else self._clock() - since

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, deadline: float, close: bool = True) -> bool:
        """Ask the thread to finish; wait until ``deadline`` (monotonic). True if it finished.

        What is queued but not delivered is dropped: the files on disk hold
        the truth and the next start resumes from them. ``close`` runs the
        output's ``close`` on its own thread first (the reload output applies
        what it still owes there).
        """
        with self._wake:
            if close:
                self._calls.append(self.output.close)
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        return not self._thread.is_alive()

    # ---- the output's thread -----------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                if not self._items and not self._calls and not self._stopping:
                    self._wake.wait(self._idle)
                items, self._items = self._items, {}
                calls = list(self._calls)
                self._calls.clear()
                stopping = self._stopping
            if not stopping:
                self._run_batch(items)
            for call in calls:
                self._guarded(call, "a queued call")
            if stopping:
                return
            self._guarded(lambda: self.output.tick(self._clock()), "its periodic work")

    def _run_batch(self, items: dict[str, T]) -> None:
        if self._deliver_many is not None and len(items) > 1:
            self._busy_since = self._clock()
            try:
                self._deliver_many(list(items.values()))
                self.delivered += len(items)
            except Exception:  # noqa: BLE001 - one batch must not stop the output
                self.errors += 1
                log.exception("output %s failed for a batch of %d upstreams; delivering them one by one",
                              self.name, len(items))
            else:
                self._guarded(self.output.end_batch, "the end of a batch")
                return
            finally:
                self._busy_since = None
        for item in items.values():
            self._busy_since = self._clock()
            try:
                self._deliver(item)
                self.delivered += 1
            except Exception:  # noqa: BLE001 - one upstream must not stop the output
                self.errors += 1
                log.exception("output %s failed for upstream %s", self.name, self._key(item))
            finally:
                self._busy_since = None
        if items:
            self._guarded(self.output.end_batch, "the end of a batch")

    def _guarded(self, call: Callable[[], None], what: str) -> None:
        self._busy_since = self._clock()
        try:
            call()
        except Exception:  # noqa: BLE001 - the output's thread must survive anything
            self.errors += 1
            log.exception("output %s failed in %s", self.name, what)
        finally:
            self._busy_since = None
