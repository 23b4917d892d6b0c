#!/usr/bin/env python
"""The dyups test server in a process of its own, and the benches' questions about its request log.

:class:`DyupsProcess` runs :class:`tests.dyups_server.DyupsServer` in a
child Python process. A server inside the bench process shares one GIL with
the bench's inotify thread and polling loops, and that GIL, not the subject
under test, then caps how fast anybody can POST; in a process of its own the
server has an interpreter to itself.

What this module guarantees:

* From ``start()`` until ``stop()`` the child serves the dyups interface at
  ``url`` (127.0.0.1, a free port).
* Every query is answered inside the child from the server's request log, so
  the bench never copies the log. Repeated queries (the same arguments, as a
  polling loop sends them) resume where the last one stopped reading, and a
  query started at ``t0`` skips the records before ``t0`` by bisection: the
  cost of a poll is the records that arrived since the last one.
* Times are ``time.monotonic()`` stamps of the child (when the server decided
  its answer). CLOCK_MONOTONIC is one clock system-wide on Linux, so they
  compare with the bench's own ``time.monotonic()``.
* A POST counts when its status is 200 and its path is ``/upstream/NAME``
  (NAME is the rest of the path), as the benches have always counted.
* ``wait=`` makes a query block in the child, woken by each new request
  record, until it has an answer or ``wait`` seconds pass; the answer's times
  are the records', so how soon the bench hears of it never moves a figure.
* One request at a time on the control pipe (JSON lines on the child's
  stdin/stdout); calls from several bench threads are serialised by a lock,
  and each call has a deadline.
* The child dies with the bench: it exits at EOF on its stdin (the kernel
  closes the bench's end however the bench ends) and when its parent pid
  changes; it ignores SIGINT so a Ctrl-C reaches the bench, whose ``finally``
  blocks stop it. ``stop()`` returns within about ``3 x timeout`` seconds: a
  stop request, then SIGTERM, then SIGKILL.

Usage, besides the class::

    bench/_dyups_proc.py ceiling [--upstreams 1000] [--connections 1,2,4] [--rounds 2]

POSTs one body (20 ``server`` lines, as the benches' tree renders) to every
upstream over 1, 2 and 4 keep-alive connections (one thread each) and prints
the POST/s the server process sustains: the most a bench subject can reach.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PYTHON, child_data, child_name, loadavg, upstream_name
from tests.dyups_server import DyupsServer, RequestRecord

if TYPE_CHECKING:  # typing.Self is new in 3.11; annotations are never evaluated here (PEP 563)
    from typing import Self

__all__ = ["DyupsProcess", "ceiling"]

_UPSTREAM = "/upstream/"
# Records enter the log in the order their threads take the server's lock, which can trail the
# order of their stamps by a thread switch or two. A scan from t0 starts where the log reaches
# t0 - _DISORDER, far more than any such lag, so bisecting the nearly sorted log skips nothing.
_DISORDER = 2.0
# A waiting query re-reads the log at most this often: enough records to be worth a pass pile
# up meanwhile, and the server's threads keep the GIL for the POSTs in between.
_REREAD = 0.002
# Incremental query states kept in the child: a polling loop asks one question at a time.
_STATES = 32

T = TypeVar("T")


# ---------------------------------------------------------------------------
# the child: the server and the queries
# ---------------------------------------------------------------------------


def _posted_name(record: RequestRecord) -> str | None:
    """NAME when ``record`` is a POST the benches count (status 200, ``/upstream/NAME``), else None."""
    if record.method == "POST" and record.status == 200 and record.path.startswith(_UPSTREAM):
        return record.path[len(_UPSTREAM):]
    return None


class _Scan:
    """A cursor over the request log plus what one query has gathered so far."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.seen: dict[str, float] = {}
        self.found: float | None = None

    def take(self, log: list[RequestRecord]) -> list[RequestRecord]:
        # The log only grows (nothing here clears it), and a slice of a list is taken whole under the GIL.
        new = log[self.cursor:]
        self.cursor += len(new)
        return new


class _Queries:
    """The questions the benches ask, answered from ``server.requests_log`` in the server's process."""

    def __init__(self, server: DyupsServer) -> None:
        self.server = server
        self.log = server.requests_log
        # The condition the server notifies on each new record. Its public wait_for() would do,
        # but on a timeout it formats describe(), every upstream of every worker, each poll.
        self._cond: threading.Condition | None = getattr(server, "_cond", None)
        self._states: collections.OrderedDict[tuple[Any, ...], _Scan] = collections.OrderedDict()
        self._name_sets: dict[int, frozenset[str]] = {}
        self._non_200 = _Scan(0)
        self._non_200_count = 0

    # -- plumbing ------------------------------------------------------------

    def _start(self, t0: float) -> int:
        """An index before every record stamped at or after ``t0``: a bisection for t0 - _DISORDER."""
        # By hand rather than bisect(key=), which needs Python 3.10; the project supports 3.9.
        log, target = self.log, t0 - _DISORDER
        lo, hi = 0, len(log)
        while lo < hi:
            mid = (lo + hi) // 2
            if log[mid].time < target:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _state(self, key: tuple[Any, ...], t0: float) -> _Scan:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _Scan(self._start(t0))
            while len(self._states) > _STATES:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return state

    def _wait(self, evaluate: Callable[[], T | None], wait: float) -> T | None:
        """``evaluate()`` until it is not None, re-run as records arrive, for at most ``wait`` s."""
        deadline = time.monotonic() + wait
        while True:
            known = len(self.log)
            value = evaluate()
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._cond is None:
                time.sleep(min(remaining, _REREAD))
                continue
            with self._cond:
                # Appends happen under this lock and notify it: checking the length here misses none.
                if len(self.log) == known:
                    self._cond.wait(remaining)
            time.sleep(min(_REREAD, max(0.0, deadline - time.monotonic())))

    # -- the questions --------------------------------------------------------

    def names(self, names: list[str]) -> int:
        """Register a set of upstream names once; later queries name it by the returned id."""
        ident = len(self._name_sets) + 1
        self._name_sets[ident] = frozenset(names)
        return ident

    def all_posted(self, names_id: int, t0: float, wait: float = 0.0) -> list[float] | None:
        """[first, last] time of the first counted POST at/after t0 to each name, once every name has one."""
        names = self._name_sets[names_id]
        state = self._state(("all_posted", names_id, t0), t0)

        def evaluate() -> list[float] | None:
            seen = state.seen
            for record in state.take(self.log):
                name = _posted_name(record)
                if name is not None and record.time >= t0 and name in names and name not in seen:
                    seen[name] = record.time
            if len(seen) == len(names):
                return [min(seen.values()), max(seen.values())] if seen else [t0, t0]
            return None

        return self._wait(evaluate, wait)

    def first_post_with(self, name: str, needle: str, t0: float, present: bool, wait: float = 0.0) -> float | None:
        """Time of the first counted POST to ``name`` at/after t0 whose body holds ``needle`` (or lacks it)."""
        state = self._state(("first_post_with", name, needle, t0, present), t0)
        raw = needle.encode("latin-1")

        def evaluate() -> float | None:
            if state.found is None:
                for record in state.take(self.log):
                    if record.time >= t0 and _posted_name(record) == name and (raw in (record.body or b"")) == present:
                        state.found = record.time
                        break
            return state.found

        return self._wait(evaluate, wait)

    def last_get(self, lo: float, hi: float) -> float | None:
        """Time of the last GET (any path) stamped in [lo, hi], or None."""
        times = [r.time for r in self.log[self._start(lo):] if r.method == "GET" and lo <= r.time <= hi]
        return max(times) if times else None

    def posts_since(self, t0: float, names: list[str] | None = None) -> list[list[Any]]:
        """[time, name] of every counted POST at/after t0 (to ``names`` only, if given), in log order."""
        wanted = frozenset(names) if names is not None else None
        out: list[list[Any]] = []
        for record in self.log[self._start(t0):]:
            name = _posted_name(record)
            if name is not None and record.time >= t0 and (wanted is None or name in wanted):
                out.append([record.time, name])
        return out

    def non_200_posts(self) -> int:
        """POSTs, since the server started, answered otherwise than 200 (or not answered at all)."""
        for record in self._non_200.take(self.log):
            if record.method == "POST" and record.status != 200:
                self._non_200_count += 1
        return self._non_200_count

    def upstreams(self, names: list[str] | None = None) -> dict[str, list[str]]:
        """The converged table: name -> canonical ``server`` lines (only ``names``, if given)."""
        table = self.server.upstreams()
        if names is not None:
            table = {name: table[name] for name in names if name in table}
        return {name: list(lines) for name, lines in table.items()}

    def requests(self) -> int:
        return len(self.log)


def _watch_parent(parent: int) -> None:
    """Exit when the parent is gone, in case something else holds our stdin open."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def serve(generation: str, workers: int) -> int:
    """The child: start the server, announce its url, answer requests until EOF or ``stop``."""
    # The bench decides when this process ends; a Ctrl-C in the terminal is for the bench.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel: IO[str] = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # a stray print must not corrupt the control channel
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="watch-parent", daemon=True).start()
    server = DyupsServer(generation=generation, workers=workers)
    server.start()
    queries = _Queries(server)
    ops: dict[str, Callable[..., Any]] = {
        name: getattr(queries, name)
        for name in ("names", "all_posted", "first_post_with", "last_get", "posts_since", "non_200_posts",
                     "upstreams", "requests")
    }

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message, separators=(",", ":")) + "\n")
        channel.flush()

    try:
        send({"url": server.url, "pid": os.getpid()})
        for line in sys.stdin:
            request = json.loads(line)
            op = request.pop("op")
            if op == "stop":
                server.stop()
                send({"result": None})
                return 0
            try:
                send({"result": ops[op](**request)})
            except Exception as exc:  # noqa: BLE001 - any failed question goes back to the bench; the server carries on
                send({"error": f"{type(exc).__name__}: {exc}"})
    except BrokenPipeError:
        pass
    finally:
        server.stop()
    return 0


# ---------------------------------------------------------------------------
# the bench's side
# ---------------------------------------------------------------------------


class DyupsProcess:
    """A :class:`~tests.dyups_server.DyupsServer` in a child process, queried over a pipe.

    Offers what the benches used of an in-process server: ``start()``,
    ``stop()``, ``url``, and the request-log questions below, each computed in
    the child. ``wait`` (seconds) lets a question block there until it has an
    answer; without it every question answers at once.
    """

    def __init__(self, generation: str = "stable", workers: int = 2, python: str = PYTHON,
                 timeout: float = 30.0) -> None:
        self.generation = generation
        self.workers = workers
        self.python = python
        self.timeout = timeout  # for the child's start and for each answer, beyond its own wait
        self.proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._lock = threading.Lock()
        self._buffer = b""
        self._broken: str | None = None
        self._name_sets: dict[frozenset[str], int] = {}

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the dyups process has not been started")
        return self._url

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Self:
        if self.proc is not None:
            return self
        argv = [self.python, str(Path(__file__).resolve()), "serve", "--generation", self.generation,
                "--workers", str(self.workers)]
        # Answers are read from the raw pipe (select, os.read), so stdout's buffer is never used.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            hello = self._read(time.monotonic() + self.timeout)
        except Exception:
            self._kill()
            raise
        self._url = hello["url"]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to stop; SIGTERM, then SIGKILL, if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return
        # Not under self._lock: a call stuck in a read must not keep the child alive past its deadline.
        if proc.poll() is None and self._broken is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(b'{"op":"stop"}\n')
                proc.stdin.close()  # flushes; and EOF stops the child even if it missed the request
            except OSError:
                pass
        for step in (None, proc.terminate, proc.kill):
            if step is not None:
                step()
            try:
                proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self._broken = self._broken or "stopped"

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the channel ----------------------------------------------------------

    def _read(self, deadline: float) -> dict[str, Any]:
        """One JSON line from the child, by ``deadline``."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the dyups process did not answer in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"the dyups process exited (status {self.proc.wait(5)})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def _call(self, op: str, wait: float = 0.0, **args: Any) -> Any:
        with self._lock:
            if self._broken is not None:
                raise RuntimeError(f"the dyups process cannot be asked: {self._broken}")
            if self.proc is None:
                raise RuntimeError("the dyups process has not been started")
            request = {"op": op, **args}
            if wait:
                request["wait"] = wait
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write((json.dumps(request, separators=(",", ":")) + "\n").encode())
                self.proc.stdin.flush()
                answer = self._read(time.monotonic() + wait + self.timeout)
            except Exception as exc:
                # The answer to this request may still come: nothing later could be matched to its question.
                self._broken = f"{op}: {exc}"
                raise
        if "error" in answer:
            raise RuntimeError(f"dyups process, {op}: {answer['error']}")
        return answer["result"]

    def _names_id(self, names: Iterable[str]) -> int:
        key = frozenset(names)
        ident = self._name_sets.get(key)
        if ident is None:
            ident = self._name_sets[key] = self._call("names", names=sorted(key))
        return ident

    # -- the questions --------------------------------------------------------

    def all_posted(self, names: Iterable[str], t0: float, wait: float = 0.0) -> tuple[float, float] | None:
        """(first, last) of the first counted POST at/after t0 to each of ``names``, once all have one."""
        got = self._call("all_posted", wait, names_id=self._names_id(names), t0=t0)
        return (got[0], got[1]) if got else None

    def first_post_with(self, name: str, needle: str | bytes, t0: float, present: bool = True,
                        wait: float = 0.0) -> float | None:
        """Time of the first counted POST to ``name`` at/after t0 whose body holds ``needle`` (``present``) or lacks it."""
        text = needle.decode("latin-1") if isinstance(needle, bytes) else needle
        found: float | None = self._call("first_post_with", wait, name=name, needle=text, t0=t0, present=present)
        return found

    def last_get(self, lo: float, hi: float) -> float | None:
        """Time of the last GET the server answered in [lo, hi] (a reconcile pass reads with GETs)."""
        found: float | None = self._call("last_get", lo=lo, hi=hi)
        return found

    def posts_since(self, t0: float, names: Iterable[str] | None = None) -> list[tuple[float, str]]:
        """(time, name) of every counted POST at/after t0, in the order the server logged them."""
        got = self._call("posts_since", t0=t0, names=sorted(names) if names is not None else None)
        return [(t, name) for t, name in got]

    def non_200_posts(self) -> int:
        """POSTs answered otherwise than 200, or dropped, since the server started."""
        count: int = self._call("non_200_posts")
        return count

    def upstreams(self, names: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
        """The converged table (every message applied): name -> canonical ``server`` lines."""
        got = self._call("upstreams", names=sorted(names) if names is not None else None)
        return {name: tuple(lines) for name, lines in got.items()}

    def requests(self) -> int:
        """How many requests the server has logged."""
        count: int = self._call("requests")
        return count


# ---------------------------------------------------------------------------
# the ceiling
# ---------------------------------------------------------------------------


def body(u: int, round_no: int, children: int = 20) -> str:
    """Upstream ``u``'s dyups body: ``children`` ``server`` lines, as the benches' tree renders them."""
    lines = []
    for k in range(children):
        host, port = child_name(u, k).rsplit(":", 1)
        # Each round moves the ports, so every POST changes the upstream as a burst would.
        address = f"{host}:{int(port) + 100 * (round_no % 500)}"
        weight = int(child_data(k) or b"1")
        lines.append(f"server {address}" + (f" weight={weight}" if weight != 1 else "") + ";")
    return "".join(lines)


def ceiling(upstreams: int, connections: Iterable[int], rounds: int) -> list[dict[str, Any]]:
    """POST/s of the server process for each connection count; prints one row per round."""
    from bench.floor import Poster  # keep-alive http.client, one thread per connection

    rows: list[dict[str, Any]] = []
    names = [upstream_name(u) for u in range(upstreams)]
    print(f"dyups ceiling: {upstreams} upstreams, 20 servers each; load {loadavg()}")
    with DyupsProcess(generation="stable", workers=2) as dyups:
        serial = 0
        for count in connections:
            for _ in range(rounds):
                serial += 1
                items = [(name, body(u, serial)) for u, name in enumerate(names)]
                poster = Poster(dyups.url, connections=count)
                t0 = time.monotonic()
                poster.post(items)
                elapsed = time.monotonic() - t0
                posted = dyups.all_posted(names, t0, wait=10.0)
                server_s = (posted[1] - t0) if posted else None
                row = {"connections": count, "posts": upstreams, "non_200": poster.non_200,
                       "client_s": round(elapsed, 3), "posts_per_s": round(upstreams / elapsed),
                       "server_posts_per_s": round(upstreams / server_s) if server_s else None}
                rows.append(row)
                print(f"{count} connection(s): {row['posts_per_s']} POST/s ({upstreams} in {row['client_s']} s; "
                      f"server-stamped {row['server_posts_per_s']} POST/s; non-200 {row['non_200']})")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="the child: run the server, answer on stdin/stdout")
    s.add_argument("--generation", default="stable")
    s.add_argument("--workers", type=int, default=2)
    c = sub.add_parser("ceiling", help="POST/s the server process sustains over 1, 2 and 4 connections")
    c.add_argument("--upstreams", type=int, default=1000)
    c.add_argument("--connections", default="1,2,4", help="comma-separated connection counts")
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    args = parser.parse_args()
    if args.cmd == "serve":
        return serve(args.generation, args.workers)
    rows = ceiling(args.upstreams, [int(n) for n in args.connections.split(",")], args.rounds)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
