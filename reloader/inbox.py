"""The worker's inbox: the only way other threads hand work to the daemon's worker.

Kazoo runs watch callbacks and state listeners on its own threads. They must
not render, write or POST; they put a callable here and return. The worker
drains the inbox in batches, so a burst of watch events becomes one pass over
the affected upstreams (latest state wins). Delayed calls (retries, periodic
reconciliation) live here too, so the daemon needs no timer threads.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import time
from typing import Callable

Task = Callable[[], None]


class Inbox:
    """A thread-safe queue of tasks plus a schedule of delayed tasks.

    ``put`` may be called from any thread. ``call_later`` and ``drain`` are
    for the worker thread only.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._queue: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._schedule: list[tuple[float, int, Task]] = []
        self._sequence = itertools.count()
        self._clock = clock

    def put(self, task: Task) -> None:
        """Hand ``task`` to the worker. Safe from any thread, never blocks."""
        self._queue.put(task)

    def call_later(self, delay: float, task: Task) -> None:
        """Run ``task`` on the worker after ``delay`` seconds (worker thread only)."""
        heapq.heappush(self._schedule, (self._clock() + max(delay, 0.0), next(self._sequence), task))

    def drain(self, max_wait: float) -> list[Task]:
        """Wait up to ``max_wait`` (less if a scheduled task is due) and return every ready task.

        Queued tasks come first, in arrival order, then the scheduled tasks
        that are due.
        """
        now = self._clock()
        if self._schedule:
            max_wait = min(max_wait, max(self._schedule[0][0] - now, 0.0))
        tasks: list[Task] = []
        try:
            tasks.append(self._queue.get(timeout=max_wait) if max_wait > 0 else self._queue.get_nowait())
        except queue.Empty:
            pass
        while True:
            try:
                tasks.append(self._queue.get_nowait())
            except queue.Empty:
                break
        now = self._clock()
        while self._schedule and self._schedule[0][0] <= now:
            tasks.append(heapq.heappop(self._schedule)[2])
        return tasks
