"""Shared helpers for the benchmarks: the daemon as a real subprocess, /proc sampling,
inotify on the files directory, statistics and result files.

Clocks: everything here uses ``time.monotonic()`` (CLOCK_MONOTONIC is one
system-wide clock on Linux, so it is comparable across processes), which is
also what :class:`tests.dyups_server.DyupsServer` stamps on each request
record. The one exception is the daemon's own log lines, which carry wall
clock time (``asctime``, millisecond resolution); they are compared with
``time.time()`` taken in the bench process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import json
import os
import platform
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Other work on the machine skews the figures; record how busy it was before the bench began.
LOAD_AT_START = os.getloadavg()

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("empty sample")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def summary_ms(values: list[float]) -> dict[str, float]:
    """median / p90 / max / min of seconds, in milliseconds."""
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 2),
        "p90_ms": round(percentile(values, 90) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "min_ms": round(min(values) * 1000, 2),
    }


# ---------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """Threads, VmRSS and VmHWM (kB) of ``pid`` from /proc/PID/status; {} if it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                key, _, value = line.partition(b":")
                if key in (b"Threads", b"VmRSS", b"VmHWM"):
                    out[key.decode()] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid`` (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_names(pid: int) -> list[str]:
    """The comm names of every thread of ``pid`` (Python sets them to the thread name, truncated)."""
    names = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
            except OSError:
                pass
    except OSError:
        pass
    return sorted(names)


class ProcSampler:
    """Samples Threads and VmRSS of a process every ``interval`` seconds in a thread.

    ``samples`` holds (monotonic time, threads, rss_kb); ``window(t0, t1)``
    returns the samples in a time range.
    """

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def start(self) -> ProcSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.is_set():
            status = proc_status(self.pid)
            if not status:
                return
            self.samples.append((time.monotonic(), status.get("Threads", 0), status.get("VmRSS", 0)))
            self._stop.wait(self.interval)

    def window(self, t0: float, t1: float | None = None) -> list[tuple[float, int, int]]:
        t1 = time.monotonic() if t1 is None else t1
        return [s for s in list(self.samples) if t0 <= s[0] <= t1]

    def peak_threads(self, t0: float, t1: float | None = None) -> int:
        return max((s[1] for s in self.window(t0, t1)), default=0)

    def peak_rss(self, t0: float, t1: float | None = None) -> int:
        return max((s[2] for s in self.window(t0, t1)), default=0)

    def thread_counts(self, t0: float, t1: float | None = None) -> list[int]:
        return sorted({s[1] for s in self.window(t0, t1)})


# ---------------------------------------------------------------------------
# inotify: when a file was renamed into place
# ---------------------------------------------------------------------------

IN_MOVED_TO = 0x00000080
IN_CLOSE_WRITE = 0x00000008
_EVENT = struct.Struct("iIII")


class RenameWatcher:
    """Records (monotonic time, name) for every file renamed into ``directory``.

    The atomic writer renames ``.NAME.upstream.XXXX.tmp`` over
    ``NAME.upstream``, which is one IN_MOVED_TO event; the time is taken
    when the read of the event returns, a few microseconds after the rename.
    """

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = libc.inotify_add_watch(self._fd, str(directory).encode(), IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self.events: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            now = time.monotonic()
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                continue
            batch = []
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                batch.append((now, name))
            with self._cond:
                self.events.extend(batch)
                self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self._fd)

    def first_after(self, name: str, t0: float) -> float | None:
        with self._cond:
            for t, n in self.events:
                if n == name and t >= t0:
                    return t
        return None

    def wait_for(self, predicate: Callable[[list[tuple[float, str]]], Any], timeout: float) -> Any:
        """Wait until ``predicate(events)`` is truthy and return its value; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self.events)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.05))


# ---------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_line_time(line: str) -> float | None:
    """The wall-clock time (epoch seconds) of a daemon log line, from its asctime."""
    match = _LOG_TIME.match(line)
    if not match:
        return None
    stamp = _dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()  # naive = local time, which is what logging's asctime uses


def daemon_root() -> Path:
    """Where the daemon under test is run from: ``$BENCH_DAEMON_ROOT`` (see :func:`snapshot_daemon`) or ROOT."""
    return Path(os.environ.get("BENCH_DAEMON_ROOT") or ROOT)


def snapshot_daemon(rev: str, into: Path) -> Path:
    """Export ``reloader/`` at git revision ``rev`` into ``into`` and point :class:`Daemon` there.

    Benches of a committed revision (the "before" figures) then do not depend
    on whatever is being edited in the working tree at the time.
    """
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "reloader"], capture_output=True, check=True, timeout=60)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60)
    os.environ["BENCH_DAEMON_ROOT"] = str(into)
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True, timeout=10).stdout.strip()
    os.environ["BENCH_DAEMON_REV"] = sha or rev
    return into


def daemon_revision() -> str:
    """The revision the daemon under test came from: the snapshot's, or HEAD plus "+dirty" edits."""
    if os.environ.get("BENCH_DAEMON_REV"):
        return os.environ["BENCH_DAEMON_REV"]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "reloader"], capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+working-tree" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class _Subprocess:
    """A benchmarked process: its pid, liveness, /proc status, and a prompt stop."""

    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def stop(self, timeout: float = 15.0) -> float | None:
        """SIGTERM and wait; returns the seconds it took to exit (None if it had to be killed)."""
        if not self.alive():
            return None
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None
        return time.monotonic() - began

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


class Daemon(_Subprocess):
    """``python -m reloader run`` as a real subprocess, its output in a log file."""

    def __init__(self, workdir: Path, config: dict[str, Any], name: str = "daemon", log_level: str = "WARNING",
                 root: Path | None = None) -> None:
        self.workdir = workdir
        # ``python -m reloader`` is found in the working directory: ROOT, or a snapshot of another revision.
        self.root = root or daemon_root()
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.config = config
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Daemon:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        argv = [PYTHON, "-m", "reloader", "run", "--config", str(self.config_path), "--log-level", self.log_level]
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        return self

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"the daemon exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)


    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_lines(self, pattern: str, after: float | None = None) -> list[tuple[float, str]]:
        """(wall time, line) of every log line matching ``pattern`` (logged at or after wall time ``after``)."""
        found = []
        regex = re.compile(pattern)
        for line in self.log_text().splitlines():
            if regex.search(line):
                when = log_line_time(line)
                if when is not None and (after is None or when >= after - 0.0015):
                    found.append((when, line))
        return found

    def wait_log(self, pattern: str, after: float | None = None, timeout: float = 60.0, poll: float = 0.01) -> tuple[float, str]:
        """Wait for a log line matching ``pattern`` logged at/after wall time ``after``; (wall time, line)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.log_lines(pattern, after)
            if found:
                return found[0]
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no log line /{pattern}/ within {timeout} s:\n{self.log_tail()}")
            time.sleep(poll)

    def errors(self) -> list[str]:
        """Log lines at ERROR or a traceback, for the report."""
        return [line for line in self.log_text().splitlines() if " ERROR " in line or line.startswith("Traceback")]


def wait_until(predicate: Callable[[], Any], timeout: float, poll: float = 0.005, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


# ---------------------------------------------------------------------------
# ZooKeeper helpers
# ---------------------------------------------------------------------------


def wait_all(asyncs: list[Any], timeout: float = 60.0) -> None:
    for result in asyncs:
        result.get(timeout=timeout)


def create_many(client: Any, items: list[tuple[str, bytes]], window: int = 2000) -> None:
    """Create znodes with pipelined create_async calls, ``window`` outstanding at a time."""
    pending: list[Any] = []
    for path, data in items:
        pending.append(client.create_async(path, data))
        if len(pending) >= window:
            wait_all(pending)
            pending = []
    wait_all(pending)


def zookeeper_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "zookeeper"], check=False, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], check=False, capture_output=True, text=True, timeout=20)
        first = (out.stderr or out.stdout).splitlines()[0]
        return first.strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine() -> dict[str, Any]:
    import kazoo

    try:
        import requests
        requests_version = requests.__version__
    except ImportError:
        requests_version = "-"
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kazoo": kazoo.__version__ if hasattr(kazoo, "__version__") else _dist_version("kazoo"),
        "requests": requests_version,
        "zookeeper": zookeeper_version(),
        "java": java_version(),
        "loadavg_at_start": [round(x, 2) for x in LOAD_AT_START],
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    quick: bool
    data: dict[str, Any]

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}{'-quick' if self.quick else ''}.json"
        payload = {"benchmark": self.name, "quick": self.quick, "machine": machine(), **self.data}
        path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
        return path


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def fmt_ms(s: dict[str, float]) -> str:
    return f"median {s['median_ms']:.1f} ms, p90 {s['p90_ms']:.1f} ms, max {s['max_ms']:.1f} ms (n={s['n']})"


def child_name(upstream_index: int, k: int) -> str:
    """The k-th instance of upstream ``upstream_index``: ``10.x.y.z:port``."""
    u = upstream_index
    return f"10.{u // 250}.{u % 250}.{k + 1}:{8000 + k}"


def child_data(k: int) -> bytes:
    """Every fourth instance carries a weight in its data, the rest none."""
    return b"5" if k % 4 == 0 else b""


def upstream_name(u: int) -> str:
    return f"svc{u:04d}"


def populate(client: Any, base: str, upstreams: int, children: int) -> float:
    """Create ``base/svcNNNN`` with ``children`` instances each, one multi per upstream; returns seconds."""
    began = time.monotonic()
    client.ensure_path(base)
    pending = []
    for u in range(upstreams):
        tx = client.transaction()
        parent = f"{base}/{upstream_name(u)}"
        tx.create(parent, b"")
        for k in range(children):
            tx.create(f"{parent}/{child_name(u, k)}", child_data(k))
        pending.append(tx.commit_async())
    for result in pending:
        outcome = result.get(60)
        bad = [r for r in outcome if isinstance(r, Exception)]
        if bad:
            raise RuntimeError(f"populate failed: {bad[:3]}")
    return time.monotonic() - began


def zk_nodes(base: str, upstreams: int) -> dict[str, str]:
    return {upstream_name(u): f"{base}/{upstream_name(u)}" for u in range(upstreams)}


# ---------------------------------------------------------------------------
# shared by targets.py and fleet.py
# ---------------------------------------------------------------------------


def loadavg() -> list[float]:
    """The 1/5/15-minute load average now; recorded at the start of every bench block."""
    return [round(x, 2) for x in os.getloadavg()]


def daemon_accepts(workdir: Path, settings: dict[str, Any]) -> bool:
    """True if ``python -m reloader check`` accepts these settings (a tiny config with them)."""
    path = workdir / "accepts-check.yaml"
    config = {"files_output_path": str(workdir / "accepts-check"), **settings,
              "clusters": [{"zk_servers": "127.0.0.1:1", "zk_nodes": {"probe": "/probe"}}]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = subprocess.run([PYTHON, "-m", "reloader", "check", "--config", str(path)], cwd=daemon_root(),
                         capture_output=True, text=True, timeout=60, check=False)
    return out.returncode == 0


def guard_settings(workdir: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``wanted`` (newer config keys) that today's daemon accepts, key by key."""
    return {key: value for key, value in wanted.items() if daemon_accepts(workdir, {key: value})}


_SERVER = re.compile(r"server (\S+?)(?: weight=(\d+))?(?=[ ;\n]|$)")


def servers_in(text: str) -> set[tuple[str, int]]:
    """(address, weight) of every ``server`` statement in a file or in canonical dyups lines."""
    return {(m.group(1), int(m.group(2) or 1)) for m in _SERVER.finditer(text)}


def four_letter(port: int, word: str, timeout: float = 5.0) -> str:
    """Send a ZooKeeper four-letter word to 127.0.0.1:port; the answer ('' if refused)."""
    from reloader.localenv.ensemble import four_letter_word

    return four_letter_word(port, word, timeout) or ""


def jvm_memory(pid: int) -> dict[str, Any]:
    """Heap use of a JVM (``jcmd PID GC.heap_info`` when the JDK tools work) and its /proc RSS."""
    out: dict[str, Any] = {"vmrss_mb": round(proc_status(pid).get("VmRSS", 0) / 1024, 1)}
    try:
        # A full collection first, so "used" is live data (watches, znodes), not garbage.
        subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=30, check=False)
        info = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=30, check=False)
        text = info.stdout
        used = [int(m) for m in re.findall(r"used (\d+)K", text)]
        total = [int(m) for m in re.findall(r"total (\d+)K", text)]
        if used:
            # Serial GC prints the young and the old generation (and the metaspace, which is not heap).
            gens = [(t, u) for t, u in zip(total, used)][:2]
            out["heap_used_mb"] = round(sum(u for _, u in gens) / 1024, 1)
            out["heap_committed_mb"] = round(sum(t for t, _ in gens) / 1024, 1)
            out["source"] = "jcmd GC.heap_info"
    except (OSError, subprocess.SubprocessError):
        pass
    return out


class FloorProcess(_Subprocess):
    """``bench/floor.py watch`` as a real subprocess (its own interpreter, like the daemon); JSON lines on stdout."""

    def __init__(self, workdir: Path, name: str, hosts: str, znodes: dict[str, str], files: Path | None,
                 dyups_url: str | None = None, batch_fsync: bool = False, session_timeout: float = 10.0) -> None:
        self.workdir = workdir
        self.name = name
        self.znodes_path = workdir / f"{name}.znodes.json"
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.argv = [PYTHON, str(BENCH / "floor.py"), "watch", "--hosts", hosts, "--znodes", str(self.znodes_path),
                     "--session-timeout", str(session_timeout)]
        if files is not None:
            self.argv += ["--files", str(files)]
        if dyups_url:
            self.argv += ["--dyups-url", dyups_url]
        if batch_fsync:
            self.argv.append("--batch-fsync")
        self.znodes = znodes
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> FloorProcess:
        self.znodes_path.write_text(json.dumps(self.znodes))
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT)
        return self

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"the floor exited ({self.proc and self.proc.returncode}):\n{self.err_path.read_text()[-3000:]}")

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.out_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if event is None or record.get("event") == event:
                found.append(record)
        return found

    def errors(self) -> list[str]:
        try:
            return [line for line in self.err_path.read_text().splitlines() if "WARNING" in line or "Traceback" in line][:5]
        except FileNotFoundError:
            return []

