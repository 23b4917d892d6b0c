"""A small thread pool whose threads never keep the process alive.

``concurrent.futures.ThreadPoolExecutor`` joins its worker threads at
interpreter exit, even after ``shutdown(wait=False)``: one call stuck in a
hung resolver or a hung ``fsync`` then holds up the exit for as long as it
hangs, and SIGTERM no longer exits within its grace.

Guarantees of :class:`DaemonPool`:

* its threads are daemon threads and nothing joins them at exit, so a stop
  is never longer than the caller's own deadline;
* ``submit`` returns a :class:`concurrent.futures.Future` and never blocks;
  after :meth:`shutdown` it raises ``RuntimeError``, like the standard pool;
* at most ``max_workers`` threads run, started on demand; work queued when
  :meth:`shutdown` is called is cancelled.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()


class DaemonPool:
    """A fixed-size pool of daemon threads (see the module docstring)."""

    def __init__(self, max_workers: int, name: str = "pool") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"pool {self._name} is shut down")
            self._queue.put((future, fn, args, kwargs))
            if self._idle == 0 and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1 if self._idle else 0
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as error:  # noqa: BLE001 - handed to the caller through the future
                    future.set_exception(error)
                else:
                    future.set_result(result)
            with self._lock:
                if self._closed:
                    return
                self._idle += 1

    def shutdown(self) -> None:
        """Refuse new work, cancel what is queued; running calls finish on their own (nobody waits)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = len(self._threads)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item[0].cancel()
        for _ in range(threads):
            self._queue.put(_STOP)
