"""DaemonPool: results, limits, and an exit that a hung call cannot hold up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from reloader.threads import DaemonPool


def test_results_and_exceptions_reach_the_caller() -> None:
    pool = DaemonPool(2, "t")
    assert pool.submit(lambda a, b: a + b, 2, b=3).result(timeout=5) == 5
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=5)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_never_more_threads_than_max_workers() -> None:
    # A name of its own: the threads of the other tests' pools ("t-0", "t-1")
    # may still be on their way out, as shutdown() does not wait for them.
    pool = DaemonPool(2, "never-more")
    release = threading.Event()
    running: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running.append(i)
        release.wait(10)
        return i

    futures = [pool.submit(work, i) for i in range(6)]
    deadline = time.monotonic() + 5
    while len(running) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(running) == 2
    assert len([t for t in threading.enumerate() if t.name.startswith("never-more-")]) == 2
    release.set()
    assert sorted(f.result(timeout=5) for f in futures) == list(range(6))
    pool.shutdown()


def test_shutdown_cancels_queued_work() -> None:
    pool = DaemonPool(1, "t")
    release = threading.Event()
    first = pool.submit(release.wait, 10)
    queued = pool.submit(lambda: "never")
    pool.shutdown()
    assert queued.cancelled()
    release.set()
    assert first.result(timeout=5) is True


def test_a_hung_call_does_not_hold_up_the_exit() -> None:
    # The standard ThreadPoolExecutor joins its threads at exit, even after
    # shutdown(wait=False): this script would then hang for 60 s.
    script = textwrap.dedent(
        """
        import threading, time
        from reloader.threads import DaemonPool
        pool = DaemonPool(2, "hung")
        started = threading.Event()
        pool.submit(lambda: (started.set(), time.sleep(60)))
        started.wait(5)
        pool.shutdown()
        print("exiting", flush=True)
        """
    )
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "exiting" in done.stdout
    assert time.monotonic() - began < 10
