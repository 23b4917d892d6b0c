"""One output on a thread of its own, fed through a latest-state-wins queue per upstream.

Guarantees:

* :meth:`OutputRunner.offer_many` and :meth:`OutputRunner.submit` never block
  and may be called from any thread; a slow or hung output therefore never
  delays a cluster or another output;
* **order**: items and calls are one queue. A ``submit(call)`` runs after
  every item offered before it has been delivered, and before any item
  offered after it is delivered. So a re-wiring submitted before an
  ``offer_many`` is in force when that batch is delivered;
* per upstream, only the newest item waits between two calls: items offered
  while the output is busy are folded into one (``merge``), so a burst costs
  one delivery and memory stays bounded by the number of upstreams times the
  number of calls waiting (calls are rare: a re-assert, a settings change);
* items are delivered in batches (one call of ``deliver_many`` for the
  whole batch, when the output can take a batch at once: the files output
  fsyncs a batch together), then ``end_batch`` runs, then ``tick`` —
  at least every ``idle`` seconds, so retries and timers stay timely;
* a call runs on the output's thread (a re-assert, a settings change), so
  the output never needs a lock;
* **stop**: :meth:`stop` finishes the work owed before it: every item offered
  and every call submitted before ``stop`` is delivered or run, in order,
  then the output's ``close``, and then the thread ends. Items offered after
  ``stop`` are dropped. :meth:`stop` returns by its deadline whatever the
  output is doing; work not done by then is left to the next start, which
  recovers it from the files on disk (files first: every follower's input is
  a file already written, and the reload output remembers beside the files
  what nginx last loaded);
* the thread is a daemon thread, so a call stuck on a black-holed peer cannot
  keep the process alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Generic, TypeVar, Union

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
        # The work, in order: runs of items (one dict per run, newest state per
        # upstream) separated by calls. Items never move across a call.
        self._queue: deque[Union[dict[str, T], Callable[[], None]]] = deque()
        self._stopping = False
        self._busy_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"output-{output.name}", daemon=True)
        #: Items delivered, and deliveries that raised.
        self.delivered = 0
        self.errors = 0
        #: Items offered after stop() (dropped).
        self.dropped = 0

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
            if self._stopping:
                self.dropped += len(items)
                log.debug("output %s is stopping; %d items not taken", self.name, len(items))
                return
            last = self._queue[-1] if self._queue else None
            if not isinstance(last, dict):
                last = {}
                self._queue.append(last)
            for item in items:
                key = self._key(item)
                older = last.get(key)
                last[key] = item if older is None else self._merge(older, item)
            self._wake.notify()

    def submit(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the output's thread, after every item already offered and before any offered later."""
        with self._wake:
            if self._stopping:
                log.debug("output %s is stopping; a call was not taken", self.name)
                return
            self._queue.append(call)
            self._wake.notify()

    @property
    def waiting(self) -> int:
        """Upstreams with an item not yet delivered."""
        with self._lock:
            keys: set[str] = set()
            for work in self._queue:
                if isinstance(work, dict):
                    keys.update(work)
            return len(keys)

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
        """Finish the owed work, then end the thread; wait until ``deadline`` (monotonic). True if it finished.

        Everything offered or submitted before this call is delivered or run,
        then ``close`` runs on the output's thread (``close=True``: the reload
        output applies what it still owes there). Work not finished by the
        deadline is recovered at the next start from the files on disk.
        """
        with self._wake:
            if not self._stopping:
                if close:
                    self._queue.append(self.output.close)
                self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0.0))
        elif self._thread.ident is None:
            # Never started: nothing can be owed to an output that never ran.
            return True
        return not self._thread.is_alive()

    # ---- the output's thread -----------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                if not self._queue and not self._stopping:
                    self._wake.wait(self._idle)
                work = list(self._queue)
                self._queue.clear()
                stopping = self._stopping
            for step in work:
                if isinstance(step, dict):
                    self._run_batch(step)
                else:
                    self._guarded(step, "a queued call")
            if stopping:
                with self._lock:
                    if self._queue:
                        continue  # queued between the take and the stop flag: owed too
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
