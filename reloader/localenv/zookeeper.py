"""A real, standalone ZooKeeper server in a private directory.

Uses the jars of Debian's ``zookeeper`` package (``/usr/share/java``) and the
system ``java``. The server listens on 127.0.0.1 only, keeps its data and its
log inside one work directory, and is tuned to start in well under a second
so tests can afford to start, kill and restart it.

Typical use::

    with LocalZooKeeper() as zk:
        client = zk.client()
        client.create("/x", b"1")
        client.stop()
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

from kazoo.client import KazooClient

from .ports import free_port, port_accepts, port_is_free

log = logging.getLogger(__name__)

JAVA_DIR = Path("/usr/share/java")
ZOOKEEPER_JAR = JAVA_DIR / "zookeeper.jar"

# The classpath is exactly the Debian jar plus a logging backend. Nothing else
# is needed: Debian's zookeeper.jar carries a manifest ``Class-Path`` naming
# its dependencies (zookeeper-jute, netty-*, slf4j-api, commons-cli,
# metrics-core, snappy-java, jackson-*, jetty9-*), and java follows it.
# slf4j-simple makes the server log to stderr, which we send to a file; if it
# is missing java skips the entry and the server still runs, just silently.
CLASSPATH: tuple[Path, ...] = (
    ZOOKEEPER_JAR,
    JAVA_DIR / "slf4j-simple.jar",
)

MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

# Small heap and the serial collector keep memory low on a 2-core machine;
# C1-only compilation starts the JVM faster and the server never runs long
# enough to profit from C2. -UsePerfData avoids hsperfdata files in /tmp.
JVM_FLAGS: tuple[str, ...] = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Dzookeeper.admin.enableServer=false",
)

INSTALL_HINT = "apt-get install -y zookeeper"


class ZooKeeperError(RuntimeError):
    """The local ZooKeeper could not be started or controlled."""


def find_java() -> str | None:
    """Return the path of the ``java`` binary, or None when there is none."""
    found = shutil.which("java")
    if found:
        return found
    return "/usr/bin/java" if os.access("/usr/bin/java", os.X_OK) else None


def zookeeper_missing() -> str | None:
    """Return None when a local ZooKeeper can be run, else what to install.

    The message names the exact install command so the demo and the tests can
    print it as is.
    """
    missing = []
    if find_java() is None:
        missing.append("java")
    if not ZOOKEEPER_JAR.is_file():
        missing.append(str(ZOOKEEPER_JAR))
    if not missing:
        return None
    return (
        f"ZooKeeper is not available (missing: {', '.join(missing)}); "
        f"install it with: {INSTALL_HINT}"
    )


def _tail(path: Path, lines: int) -> str:
    """Return the last ``lines`` lines of ``path``, or a note if unreadable."""
    try:
        with path.open("r", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError as exc:
        return f"(no log: {exc})"


def _kill_quietly(proc: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup at interpreter exit, so no JVM outlives its owner."""
    if proc.poll() is None:
        try:
            proc.kill()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass


class _QuietLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Logs every record at DEBUG.

    Probing a starting server makes kazoo warn about refused and dropped
    connections; those are expected, so they must not reach the console.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


def threads_stopped(pid: int) -> bool:
    """True when every thread of process ``pid`` is stopped (or gone), as /proc tells."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as stat:
                # The state follows the command name, which is in parentheses and may hold anything.
                state = stat.read().rpartition(b")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # the thread ended meanwhile
        if state not in (b"T", b"t", b"Z", b"X"):
            return False
    return True


class LocalZooKeeper:
    """A standalone ZooKeeper server process on 127.0.0.1.

    ``workdir`` holds ``zoo.cfg``, the ``data`` directory and
    ``zookeeper.log``. Without a ``workdir`` a temporary directory is created
    and removed again by :meth:`stop`. The port is picked once and kept, so
    :meth:`restart` brings the server back where clients expect it.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        port: int | None = None,
        tick_time_ms: int = 200,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir: Path = (
            Path(tempfile.mkdtemp(prefix="localzk-")) if workdir is None else Path(workdir)
        )
        # Only an auto-picked port may be swapped for another one if it was
        # taken in the meantime; a caller-given port is a promise.
        self._port_fixed = port is not None
        self._port: int = port if port is not None else free_port()
        self.tick_time_ms = tick_time_ms
        self.data_dir: Path = self.workdir / "data"
        self.config_path: Path = self.workdir / "zoo.cfg"
        self.log_path: Path = self.workdir / "zookeeper.log"
        self.last_start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], LocalZooKeeper] | None = None
        self._started_once = False

    # -- properties -------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port."""
        return self._port

    @property
    def hosts(self) -> str:
        """The connect string for clients, ``"127.0.0.1:PORT"``."""
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (also while paused)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the server process exists (a paused one counts)."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------

    def write_config(self) -> Path:
        """Write ``zoo.cfg`` for the current port and return its path."""
        tick = self.tick_time_ms
        lines = [
            f"tickTime={tick}",
            f"dataDir={self.data_dir}",
            f"clientPort={self._port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            # Tests open many clients from one address; 0 means unlimited.
            "maxClientCnxns=0",
            # The defaults are 2 and 20 ticks; spell out a low minimum so tests
            # can ask for ~2 s sessions, and a high maximum so a client asking
            # for the usual 10-30 s is not silently cut down to 20 ticks.
            f"minSessionTimeout={2 * tick}",
            "maxSessionTimeout=60000",
            # No fsync: data still reaches the page cache before a request is
            # answered, so it survives kill -9 of the server (what tests do),
            # and writes do not stall on a slow disk.
            "forceSync=no",
            # Transaction logs are preallocated in 64 MB steps by default.
            "preAllocSize=1024",
            "",
        ]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines))
        return self.config_path

    def command(self) -> list[str]:
        """The argv that starts the server."""
        java = find_java() or "java"
        classpath = ":".join(str(jar) for jar in CLASSPATH)
        return [java, *JVM_FLAGS, "-cp", classpath, MAIN_CLASS, str(self.config_path.resolve())]

    def start(self, timeout: float = 60) -> None:
        """Start the server and return once a kazoo session has connected.

        The ``ruok`` four-letter word answers before sessions are accepted,
        so readiness is judged by a real session. Raises ZooKeeperError, with
        the tail of the server log, if the process exits or ``timeout``
        passes first. Does nothing if the server is already running.
        """
        if self.running:
            return
        missing = zookeeper_missing()
        if missing:
            raise ZooKeeperError(missing)
        if not self._port_fixed and not self._started_once and not port_is_free(self._port):
            # Someone took the auto-picked port between __init__ and now.
            self._port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()

        began = time.monotonic()
        with self.log_path.open("ab") as log_file:
            log_file.write(f"=== starting ZooKeeper on {self.hosts}\n".encode())
            log_file.flush()
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at the test run reaches us, not
                # the JVM, so shutdown stays orderly through stop().
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _kill_quietly, self._proc)
        self._started_once = True
        try:
            self._wait_ready(began + timeout)
        except BaseException:
            self._terminate()
            raise
        self.last_start_seconds = time.monotonic() - began
        log.info("ZooKeeper on %s ready in %.2f s", self.hosts, self.last_start_seconds)

    def _wait_ready(self, deadline: float) -> None:
        """Poll until a kazoo session connects; raise ZooKeeperError if not."""
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ZooKeeperError(
                    f"ZooKeeper exited with code {code} while starting on {self.hosts}; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ZooKeeperError(
                    f"ZooKeeper on {self.hosts} did not accept a session in time; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            # A plain TCP probe first: it is cheap, and no kazoo client (with
            # its threads) is started while nothing listens yet.
            if port_accepts(self._port) and self._try_session(min(2.0, max(remaining, 0.1))):
                return
            time.sleep(0.05)

    def _try_session(self, timeout: float) -> bool:
        """Return True if a kazoo session can be established right now."""
        # The port accepts TCP before the server handles sessions, and a
        # connect request sent in that window may never be answered: kazoo
        # then waits a whole session timeout. A short session keeps each
        # probe short; the server raises it to its minimum if need be.
        client = KazooClient(
            hosts=self.hosts,
            timeout=0.5,
            connection_retry=None,
            logger=_QuietLogger(log.getChild("probe")),
        )
        try:
            client.start(timeout=timeout)
            client.exists("/")
            return True
        except Exception:  # any failure just means "not ready yet"
            return False
        finally:
            try:
                client.stop()
                client.close()
            except Exception:  # a half-started client may fail to stop
                pass

    def _signal(self, signum: int) -> None:
        if not self.running or self._proc is None:
            raise ZooKeeperError(f"ZooKeeper on {self.hosts} is not running")
        self._proc.send_signal(signum)

    def _terminate(self, grace: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``grace``); keep data."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # A stopped process cannot act on SIGTERM; wake it first.
            try:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("ZooKeeper on %s ignored SIGTERM; killing it", self.hosts)
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        self._proc = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def stop(self) -> None:
        """Stop the server and remove the work directory if it was created here."""
        self._terminate()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def pause(self, timeout: float = 5.0) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers.

        Returns once every thread of the JVM is stopped: the signal only asks
        the kernel, and a thread that was running may finish what it was
        doing (answer a request) after ``kill`` returned.
        """
        self._signal(signal.SIGSTOP)
        pid = self.pid
        deadline = time.monotonic() + timeout
        while pid is not None and not threads_stopped(pid):
            if time.monotonic() > deadline:
                raise ZooKeeperError(f"ZooKeeper on {self.hosts} did not stop within {timeout:g} s of SIGSTOP")
            time.sleep(0.001)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), keeping its data for :meth:`restart`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._terminate()

    def restart(self, timeout: float = 60) -> None:
        """Stop the server if it runs and start it again on the same port and data."""
        self._terminate()
        self.start(timeout=timeout)

    # -- helpers ----------------------------------------------------------

    def client(self, timeout: float = 10, session_timeout: float = 10.0) -> KazooClient:
        """Return a started kazoo client for this server; the caller stops it.

        ``timeout`` bounds the wait for the connection; ``session_timeout``
        is the session timeout asked of the server.
        """
        client = KazooClient(hosts=self.hosts, timeout=session_timeout)
        try:
            client.start(timeout=timeout)
        except BaseException:
            client.close()
            raise
        return client

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        return _tail(self.log_path, lines)

    def __enter__(self) -> LocalZooKeeper:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalZooKeeper {self.hosts} {state} workdir={self.workdir}>"
