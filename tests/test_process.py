"""Running as a service: background mode, locks, log files, signals, systemd notify, the demo's closed pipe.

Every daemon here is the real ``python -m reloader run`` process against the
session ZooKeeper; every wait is a polled condition under a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.logsetup import JsonFormatter
from reloader.process import DIRECTORY_LOCK_NAME, LockHeld, PidLock
from reloader.sdnotify import SystemdNotifier, watchdog_interval
from tests.test_daemon import ROOT, DaemonProcess, cluster, create_children, upstream_file, wait_until
from tests.test_demo import _alive, _descendants, _stat

STOP_LIMIT = 5.0


class ServiceProcess(DaemonProcess):
    """DaemonProcess with extra ``run`` flags and environment (``--daemon``, ``--pidfile``, ...)."""

    def __init__(self, *args: Any, extra: Sequence[str] = (), env: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = list(extra)
        self.env = env

    def start(self) -> ServiceProcess:
        text = self.config if isinstance(self.config, str) else yaml.safe_dump(self.config, sort_keys=False)
        self.config_path.write_text(text)
        argv = [sys.executable, "-m", "reloader", "run", "--config", str(self.config_path),
                "--log-level", self.log_level, *self.extra]
        if self.files_dir is not None:
            argv += ["--files-output-path", str(self.files_dir)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, **(self.env or {})},
            )
        return self

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} did not exit within {timeout} s\n{self.log_tail()}")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """``make(config, files_dir=..., extra=[...], env={...})``; every one still running is killed at teardown."""
    started: list[ServiceProcess] = []

    def make(config: Any, *, files_dir: Path | None, extra: Sequence[str] = (),
             env: dict[str, str] | None = None) -> ServiceProcess:
        service = ServiceProcess(tmp_path, config, name=f"service{len(started)}", files_dir=files_dir,
                                 dyups_url=None, extra=extra, env=env)
        started.append(service)
        return service.start()

    yield make
    for service in started:
        service.kill()
        print(service.log_tail(80))


@pytest.fixture
def detached() -> Iterator[list[tuple[int, int]]]:
    """Background daemons (pid, start time) a test registers; any left alive is SIGKILLed."""
    found: list[tuple[int, int]] = []
    yield found
    for pid, start in found:
        if _alive(pid, start):
            os.kill(pid, signal.SIGKILL)


def _one_upstream(zk: LocalZooKeeper, client: KazooClient, root: str) -> dict[str, Any]:
    create_children(client, f"{root}/app1", {"10.0.0.1:80": b""})
    return cluster(zk.hosts, {"app1": f"{root}/app1"})


APP1 = upstream_file("app1", "server 10.0.0.1:80")
APP1_TWO = upstream_file("app1", "server 10.0.0.1:80", "server 10.0.0.2:80")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _open_files(pid: int) -> set[str]:
    names = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            names.add(os.readlink(entry))
        except OSError:
            continue
    return names


# ---------------------------------------------------------------------------
# One daemon per files directory
# ---------------------------------------------------------------------------


def test_a_second_daemon_on_the_same_directory_exits_1_naming_the_holder(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, services: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    config = _one_upstream(zk, zk_client, zk_root)
    files = tmp_path / "shared" / "upstreams"  # does not exist yet: the lock creates it
    first = services(config, files_dir=files)
    first.wait_file("app1", APP1)
    lock = files / DIRECTORY_LOCK_NAME
    assert _read_pid(lock) == first.pid
    # `include DIR/*.upstream;` reads the upstreams and nothing else.
    assert sorted(p.name for p in files.glob("*.upstream")) == ["app1.upstream"]

    second = services(config, files_dir=files)
    assert second.wait_exit() == 1, second.log_tail()
    assert f"pid {first.pid}" in second.log() and str(files) in second.log(), second.log()
    assert first.running

    # A holder killed outright leaves its file behind, but the kernel drops
    # the lock: the next daemon starts at once and works.
    first.kill()
    third = services(config, files_dir=files)
    zk_client.create(f"{zk_root}/app1/10.0.0.2:80")
    third.wait_file("app1", APP1_TWO)
    assert _read_pid(lock) == third.pid
    third.stop(limit=STOP_LIMIT)


def test_pid_lock_refuses_a_second_holder_and_survives_removal_races(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    first = PidLock(path)
    first.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    # flock conflicts between open files even within one process.
    with pytest.raises(LockHeld) as held:
        PidLock(path).acquire()
    assert held.value.pid == os.getpid() and str(path) in str(held.value)
    first.release()
    assert not path.exists()
    with PidLock(path) as again:
        assert again.held
    kept = PidLock(tmp_path / "kept.lock", remove_on_release=False)
    kept.acquire()
    kept.release()
    assert (tmp_path / "kept.lock").exists()


# ---------------------------------------------------------------------------
# --daemon and --pidfile
# ---------------------------------------------------------------------------


def test_daemon_mode_detaches_holds_its_pidfile_and_stops_on_sigterm(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, services: Callable[..., ServiceProcess],
    detached: list[tuple[int, int]], tmp_path: Path,
) -> None:
    config = _one_upstream(zk, zk_client, zk_root)
    files = tmp_path / "upstreams"
    pidfile = tmp_path / "run" / "reloader.pid"
    pidfile.parent.mkdir()
    log_file = tmp_path / "daemon.log"
    flags = ["--daemon", "--pidfile", str(pidfile), "--log-file", str(log_file)]

    launcher = services(config, files_dir=files, extra=flags)
    assert launcher.wait_exit() == 0, launcher.log_tail()
    assert launcher.log() == "", "the launcher printed something"

    def background_pid() -> int | None:
        pid = _read_pid(pidfile)
        return pid if pid is not None and pid != launcher.pid else None

    pid = wait_until(background_pid, "the background pid in the pid file", details=lambda: log_file.read_text())
    info = _stat(pid)
    assert info is not None
    detached.append((pid, info[2]))
    assert os.getsid(pid) != os.getsid(0), "the daemon is still in the launcher's session"
    assert os.getsid(pid) != pid, "a session leader could acquire a controlling terminal"
    # It works in the background: threads and ZooKeeper came after the fork.
    wait_until(lambda: (files / "app1.upstream").exists() and (files / "app1.upstream").read_text() == APP1,
               "the upstream file", details=lambda: log_file.read_text())
    zk_client.create(f"{zk_root}/app1/10.0.0.2:80")
    wait_until(lambda: (files / "app1.upstream").read_text() == APP1_TWO, "the changed upstream file",
               details=lambda: log_file.read_text())
    assert _read_pid(files / DIRECTORY_LOCK_NAME) == pid

    # A second start with the same pid file, even on another directory, is refused in the foreground.
    second = services(config, files_dir=tmp_path / "other", extra=flags)
    assert second.wait_exit() == 1
    assert f"already running as pid {pid}" in second.log() and str(pidfile) in second.log(), second.log()
    # ... and so is one without a pid file on the same directory.
    third = services(config, files_dir=files, extra=["--daemon", "--log-file", str(tmp_path / "third.log")])
    assert third.wait_exit() == 1
    assert f"pid {pid}" in third.log(), third.log()

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not _alive(pid, info[2]), "the background daemon to exit", timeout=STOP_LIMIT,
               details=lambda: log_file.read_text())
    text = log_file.read_text()
    assert "received SIGTERM; stopping" in text and text.rstrip().endswith("stopped"), text
    assert not pidfile.exists(), "the pid file outlived the daemon"


def test_errors_before_detaching_reach_the_terminal(
    services: Callable[..., ServiceProcess], tmp_path: Path,
) -> None:
    log_file = tmp_path / "never.log"
    pidfile = tmp_path / "never.pid"
    bad = services({"zk_servers": "127.0.0.1:1", "zk_nodes": {"app1": "no-slash"}}, files_dir=tmp_path / "u",
                   extra=["--daemon", "--log-file", str(log_file), "--pidfile", str(pidfile)])
    assert bad.wait_exit() == 2
    assert "must start with '/'" in bad.log(), bad.log()
    assert not pidfile.exists() and not log_file.exists()

    no_log = services({"zk_servers": "127.0.0.1:1", "zk_nodes": {"app1": "/a"}}, files_dir=tmp_path / "u",
                      extra=["--daemon"])
    assert no_log.wait_exit() == 2
    assert "--daemon needs --log-file" in no_log.log()


# ---------------------------------------------------------------------------
# Signals and log files
# ---------------------------------------------------------------------------


def test_every_operator_signal_is_logged_and_log_files_follow_rotation(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, services: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "reloader.log"
    daemon = services(_one_upstream(zk, zk_client, zk_root), files_dir=tmp_path / "upstreams",
                      extra=["--log-file", str(log_file)])
    daemon.wait_file("app1", APP1)

    def logged(text: str, path: Path = log_file, count: int = 1) -> None:
        def found() -> bool:
            assert daemon.running, daemon.log_tail()
            try:
                return path.read_text().count(text) >= count
            except FileNotFoundError:
                return False

        wait_until(found, f"{text!r} in {path}", details=lambda: path.read_text() if path.exists() else "")

    logged("watching 1 upstreams")
    # logrotate moves the file; the next line goes to a new file of the same name.
    log_file.rename(tmp_path / "reloader.log.1")
    daemon.proc.send_signal(signal.SIGUSR2)  # type: ignore[union-attr]
    logged("received SIGUSR2; it has no meaning here, ignored")
    assert "SIGUSR2" not in (tmp_path / "reloader.log.1").read_text()
    assert str(tmp_path / "reloader.log.1") not in _open_files(daemon.pid)

    # SIGUSR1 reopens at once; its own line is the first of the new file.
    log_file.rename(tmp_path / "reloader.log.2")
    daemon.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
    logged(f"received SIGUSR1; reopened the log file {log_file}")
    assert log_file.read_text().splitlines()[0].endswith(f"reopened the log file {log_file}")
    assert str(tmp_path / "reloader.log.2") not in _open_files(daemon.pid)

    daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    logged("received SIGHUP; ")
    # SIGPIPE is ignored: a later signal still finds the process alive and logging.
    daemon.proc.send_signal(signal.SIGPIPE)  # type: ignore[union-attr]
    assert "SIGUSR2" not in log_file.read_text()  # the first one is in reloader.log.2
    daemon.proc.send_signal(signal.SIGUSR2)  # type: ignore[union-attr]
    logged("received SIGUSR2")
    assert daemon.log() == "", "a log file was given, yet something went to stderr"

    daemon.stop(signal.SIGQUIT, limit=STOP_LIMIT)
    text = log_file.read_text()
    assert "received SIGQUIT; stopping" in text and text.rstrip().endswith("stopped"), text


def test_json_log_lines_and_systemd_stopping_notification(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, services: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify.sock"))
    try:
        daemon = services(_one_upstream(zk, zk_client, zk_root), files_dir=tmp_path / "upstreams",
                          extra=["--log-format", "json"], env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        daemon.wait_file("app1", APP1)
        daemon.wait_log(r'"message": "watching 1 upstreams')
        daemon.stop(limit=STOP_LIMIT)
        messages = _datagrams(receiver)
    finally:
        receiver.close()
    assert "STOPPING=1" in messages, messages

    lines = daemon.log().splitlines()
    assert lines, "no log lines"
    for line in lines:
        entry = json.loads(line)  # every line is one object: nothing else reaches stderr
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["time"].endswith("Z")
        datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert json.loads(lines[-1])["message"] == "stopped"
    assert any(json.loads(line)["message"] == "received SIGTERM; stopping" for line in lines)


def _datagrams(receiver: socket.socket, timeout: float = 0.0) -> list[str]:
    """Every datagram already queued on ``receiver`` (one wait of ``timeout`` for the first)."""
    found: list[str] = []
    receiver.settimeout(timeout)
    while True:
        try:
            found.append(receiver.recv(4096).decode())
        except (BlockingIOError, socket.timeout):
            return found
        receiver.settimeout(0.0)


def test_json_formatter_carries_context_and_tracebacks() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("reloader.pipeline", logging.WARNING, __file__, 1, "upstream %s: %d", ("a", 3), None)
    record.cluster = "zk1:2181"
    record.upstream = "app1"
    entry = json.loads(formatter.format(record))
    assert entry["message"] == "upstream a: 3" and entry["level"] == "WARNING"
    assert entry["logger"] == "reloader.pipeline"
    assert entry["cluster"] == "zk1:2181" and entry["upstream"] == "app1"
    assert "exc" not in entry
    assert datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp() == pytest.approx(
        record.created, abs=0.001)

    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        failing = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(failing)
    assert "\n" not in text  # one line per record, whatever the traceback holds
    entry = json.loads(text)
    assert "Traceback" in entry["exc"] and "ValueError: boom" in entry["exc"]
    assert "cluster" not in entry and "upstream" not in entry


# ---------------------------------------------------------------------------
# sd_notify against real AF_UNIX datagram sockets
# ---------------------------------------------------------------------------


def test_sdnotify_path_and_abstract_sockets(tmp_path: Path) -> None:
    assert SystemdNotifier.from_environment({}) is None
    path = str(tmp_path / "notify")
    abstract = f"@reloader-test-{os.getpid()}-{time.monotonic_ns()}"
    for name, address in ((path, path), (abstract, "\0" + abstract[1:])):
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(address)
        try:
            notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": name})
            assert notifier is not None
            assert notifier.ready()
            assert notifier.status("2 clusters\nread")
            assert notifier.watchdog()
            assert notifier.stopping()
            assert notifier.ready(status="reloaded")
            got = [_datagrams(receiver, timeout=2.0)]
            while sum(len(batch) for batch in got) < 5:
                batch = _datagrams(receiver, timeout=2.0)
                assert batch, got
                got.append(batch)
        finally:
            receiver.close()
        assert [message for batch in got for message in batch] == [
            "READY=1", "STATUS=2 clusters read", "WATCHDOG=1", "STOPPING=1", "READY=1\nSTATUS=reloaded",
        ]
    # Nobody listening: reported, never raised.
    assert SystemdNotifier(str(tmp_path / "gone")).ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


# ---------------------------------------------------------------------------
# The demo, its output piped into something that dies first (Ctrl-C with | tee)
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("zookeeper_installed", "nginx_bin")
def test_demo_whose_output_pipe_closes_still_cleans_up_and_exits_0(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    errors = tmp_path / "stderr"
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    read_end, write_end = os.pipe()
    with errors.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reloader", "demo", "--interval", "0.5"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=write_end, stderr=stderr,
        )
    os.close(write_end)
    children: dict[int, tuple[int, str]] = {}
    try:
        output = b""
        deadline = time.monotonic() + 60
        while b"nginx reaches" not in output:
            assert proc.poll() is None, output.decode(errors="replace") + errors.read_text()
            assert time.monotonic() < deadline, "the demo never showed traffic:\n" + output.decode(errors="replace")
            ready, _, _ = select.select([read_end], [], [], 0.2)
            if ready:
                output += os.read(read_end, 65536)
        children = _descendants(proc.pid)
        assert "nginx" in " ".join(cmd for _, cmd in children.values())
        os.close(read_end)  # the reader is gone: every later print meets EPIPE
        read_end = -1

        # The demo keeps stepping (nginx keeps being asked) past prints into the closed pipe.
        access_logs = list(temp.rglob("access.log"))
        assert access_logs, list(temp.rglob("*"))
        served = len(access_logs[0].read_bytes().splitlines())
        wait_until(lambda: proc.poll() is not None or len(access_logs[0].read_bytes().splitlines()) >= served + 20,
                   "more demo steps after the pipe closed", timeout=20)
        assert proc.poll() is None, errors.read_text()

        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the demo did not stop within 15 s of SIGINT\n" + errors.read_text())
        assert code == 0, errors.read_text()
        assert "Traceback" not in errors.read_text(), errors.read_text()
        wait_until(lambda: not any(_alive(pid, start) for pid, (start, _) in children.items()),
                   "the demo's processes to be gone", timeout=5,
                   details=lambda: str({p: c for p, (s, c) in children.items() if _alive(p, s)}))
        assert list(temp.iterdir()) == [], "the demo left files in its temporary directory"
    finally:
        if read_end >= 0:
            os.close(read_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, (start, _) in children.items():
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# The daemon's own files: no symbolic links, no one else's files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("planted", ["pidfile", "log-file", "lock"])
def test_a_symlinked_pid_lock_or_log_file_is_refused_naming_it_and_its_target_is_untouched(
    services: Callable[..., ServiceProcess], tmp_path: Path, planted: str,
) -> None:
    """A link planted where the daemon (often root) writes its files would write through to the target."""
    target = tmp_path / "root-owned.conf"
    target.write_text("precious\n")
    target.chmod(0o644)
    files_dir = tmp_path / "upstreams"
    files_dir.mkdir()
    pidfile, log_file = tmp_path / "reloader.pid", tmp_path / "reloader.log"
    link = {"pidfile": pidfile, "log-file": log_file, "lock": files_dir / DIRECTORY_LOCK_NAME}[planted]
    link.symlink_to(target)
    service = services({"zk_servers": "127.0.0.1:1", "zk_nodes": {"app1": "/a"}}, files_dir=files_dir,
                       extra=["--pidfile", str(pidfile), "--log-file", str(log_file)])
    assert service.wait_exit() == 1, service.log()
    assert f"{link}: it is a symbolic link; refusing to use it" in service.log(), service.log()
    assert target.read_text() == "precious\n"


def test_render_write_refuses_a_symlinked_lock(zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
                                               tmp_path: Path) -> None:
    files_dir = tmp_path / "upstreams"
    files_dir.mkdir()
    target = tmp_path / "root-owned.conf"
    target.write_text("precious\n")
    (files_dir / DIRECTORY_LOCK_NAME).symlink_to(target)
    config = tmp_path / "render.yaml"
    config.write_text(yaml.safe_dump(_one_upstream(zk, zk_client, zk_root)))
    result = subprocess.run(
        [sys.executable, "-m", "reloader", "render", "--config", str(config), "--files-output-path", str(files_dir),
         "--write"], capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode != 0, result
    assert "it is a symbolic link" in result.stderr, result.stderr
    assert target.read_text() == "precious\n"
    assert not (files_dir / "app1.upstream").exists()


def test_files_not_owned_by_the_running_user_or_not_regular_are_refused(tmp_path: Path) -> None:
    from reloader.logsetup import configure_logging
    from reloader.ownedfile import UnsafeFileError

    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError, match="it is not a regular file"):
        PidLock(fifo).acquire()  # and it does not block on the FIFO
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign.log"
        foreign.write_text("")
        os.chown(foreign, 65534, 65534)
        with pytest.raises(UnsafeFileError, match=r"owned by uid 65534, not by the running user"):
            configure_logging("INFO", foreign)
        with pytest.raises(UnsafeFileError, match=r"owned by uid 65534"):
            PidLock(foreign).acquire()
    # A log file the daemon creates is not world-readable.
    old_mask = os.umask(0o022)
    try:
        created = tmp_path / "new.log"
        setup = configure_logging("INFO", created)
        logging.getLogger("reloader.test").info("hello")
        assert (created.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old_mask)
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()
    assert setup.log_file == created
