"""End to end: the daemon as a real subprocess, against real ZooKeeper and the dyups test server.

Every test starts ``python -m reloader run`` with its own config, its own
files directory and its own dyups server, drives ZooKeeper with a separate
kazoo client, and watches what reaches the files and the dyups interface.
The daemon's log goes to a file that is printed when a test fails (pytest
shows captured output only for failures).

Every wait is a condition polled every 20 ms under a deadline. Tests that
pause, kill or restart ZooKeeper use servers of their own (``zk_factory``);
the others share the session server, each under its own ``zk_root``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from reloader.localenv.ports import free_port
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.dyups_server import DyupsServer, RequestRecord

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.02
WAIT = 10.0
STOP_LIMIT = 5.0
SESSION_TIMEOUT = "2s"

# What a rendered server statement may look like: nothing from the registry
# may bring ``;{}$`` or white space into it.
_SAFE_SERVER = r"server [0-9a-f.:\[\]]+:[0-9]{1,5}(?: weight=[0-9]+)?(?: down)?"
_SAFE_FILE_LINE = re.compile(rf"    {_SAFE_SERVER};")
_SAFE_BODY = re.compile(rf"(?:{_SAFE_SERVER};)+")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = WAIT, details: Callable[[], str] = lambda: ""
) -> Any:
    """Poll ``condition`` until it returns a true value (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{details()}", pytrace=True)
        time.sleep(POLL)


def upstream_file(name: str, *servers: str) -> str:
    """The exact file text for ``servers`` (statements without ';', already in order)."""
    return f"upstream {name} {{\n" + "".join(f"    {server};\n" for server in servers) + "}\n"


def by_host_port(statements: list[str]) -> list[str]:
    """Server statements in the order the renderer promises: by host (as text), then port (as a number)."""

    def key(statement: str) -> tuple[str, int]:
        host, _, port = statement.split()[1].rpartition(":")
        return host.strip("[]"), int(port)

    return sorted(statements, key=key)


def dyups_body(*servers: str) -> bytes:
    return "".join(f"{server};" for server in servers).encode()


def body_of_file(text: str) -> bytes:
    """The dyups body that says what an ``.upstream`` file says (servers only)."""
    statements = [line.strip() for line in text.splitlines()[1:-1]]
    return "".join(statements).encode()


def posts(server: DyupsServer, name: str, since: int = 0) -> list[RequestRecord]:
    """POSTs for upstream ``name`` in the server's log, from index ``since`` on."""
    return [
        record
        for record in list(server.requests_log)[since:]
        if record.method == "POST" and record.path == f"/upstream/{name}"
    ]


# The guards against collapse (settle window, shrink guard) have tests of their
# own; here they are off unless a test asks, so that a test of something else
# sees every registry change published at once.
GUARDS_OFF = {"settle_after_reconnect": 0, "max_drop": "100%"}


def cluster(zk_servers: str, nodes: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A shape-1 config with a short session timeout and the guards off."""
    return {"zk_servers": zk_servers, "zk_session_timeout": SESSION_TIMEOUT, **GUARDS_OFF, **settings, "zk_nodes": nodes}


def upstream_files(directory: Path) -> dict[str, bytes]:
    """The ``*.upstream`` files of ``directory`` by name (the lock and other dot files are not upstreams)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.name.startswith(".")}


def create_children(client: KazooClient, path: str, children: dict[str, bytes]) -> None:
    client.ensure_path(path)
    for child, data in children.items():
        client.create(f"{path}/{child}", data)


def delete_atomically(client: KazooClient, path: str) -> None:
    """Delete ``path`` and its children in one multi-op."""
    transaction = client.transaction()
    for child in client.get_children(path):
        transaction.delete(f"{path}/{child}")
    transaction.delete(path)
    results = transaction.commit()
    assert not any(isinstance(result, Exception) for result in results), results


class DaemonProcess:
    """``python -m reloader run`` in a subprocess, with its log in a file."""

    def __init__(
        self,
        workdir: Path,
        config: str | dict[str, Any] | list[Any],
        *,
        name: str,
        files_dir: Path | None,
        dyups_url: str | None,
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.config = config
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.files_dir = files_dir
        self.dyups_url = dyups_url
        self.log_level = log_level
        self.env = env
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> DaemonProcess:
        text = self.config if isinstance(self.config, str) else yaml.safe_dump(self.config, sort_keys=False)
        self.config_path.write_text(text)
        argv = [sys.executable, "-m", "reloader", "run", "--config", str(self.config_path), "--log-level", self.log_level]
        if self.files_dir is not None:
            argv += ["--files-output-path", str(self.files_dir)]
        if self.dyups_url is not None:
            argv += ["--dyups-url", self.dyups_url]
        argv += list(self.extra_args)
        env = None if self.env is None else {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, signum: int = signal.SIGTERM, limit: float = STOP_LIMIT) -> float:
        """Send ``signum``; assert a clean exit 0 within ``limit`` s; return how long it took."""
        assert self.proc is not None
        assert self.running, f"the daemon exited early with {self.proc.returncode}\n{self.log_tail()}"
        began = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the daemon did not exit within {limit} s of {signal.Signals(signum).name}\n{self.log_tail()}")
        took = time.monotonic() - began
        assert code == 0, f"exit code {code} after {signal.Signals(signum).name}\n{self.log_tail()}"
        return took

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
        except ProcessLookupError:
            pass
        self.proc.kill()
        self.proc.wait(timeout=10)

    # -- observation ---------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def log_lines(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.log().splitlines() if regex.search(line)]

    def _alive_or_fail(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"the daemon exited with {self.proc.returncode}\n{self.log_tail()}")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = WAIT) -> list[str]:
        def found() -> list[str] | None:
            self._alive_or_fail()
            lines = self.log_lines(pattern)
            return lines if len(lines) >= count else None

        return wait_until(found, f"{count} log line(s) matching {pattern!r}", timeout, self.log_tail)

    def path(self, upstream: str) -> Path:
        assert self.files_dir is not None
        return self.files_dir / f"{upstream}.upstream"

    def read(self, upstream: str) -> str | None:
        try:
            return self.path(upstream).read_text()
        except FileNotFoundError:
            return None

    def wait_file(self, upstream: str, expected: str, timeout: float = WAIT) -> None:
        def matches() -> bool:
            self._alive_or_fail()
            return self.read(upstream) == expected

        wait_until(
            matches,
            f"{self.path(upstream)} to read {expected!r}",
            timeout,
            lambda: f"it reads {self.read(upstream)!r}\n{self.log_tail()}",
        )

    def wait_dyups(self, server: DyupsServer, upstream: str, lines: tuple[str, ...], timeout: float = WAIT) -> None:
        def matches() -> bool:
            self._alive_or_fail()
            return server.upstreams().get(upstream) == lines

        wait_until(
            matches,
            f"dyups upstream {upstream} to be {lines}",
            timeout,
            lambda: f"{server.describe()}\n{self.log_tail()}",
        )

    def wait_both(self, server: DyupsServer, upstream: str, *servers: str, timeout: float = WAIT) -> None:
        """Wait until the file and the dyups server both hold exactly ``servers``,
        and the last POST for it carried exactly their body."""
        self.wait_file(upstream, upstream_file(upstream, *servers), timeout)
        self.wait_dyups(server, upstream, tuple(servers), timeout)
        # The server applies a POST before it logs the request: wait for the record too.
        records = wait_until(lambda: posts(server, upstream), f"the POST record of {upstream}", timeout)
        last = records[-1]
        assert last.status == 200 and last.body == dyups_body(*servers), last


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    return tmp_path / "upstreams"


@pytest.fixture
def daemons(tmp_path: Path, files_dir: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """``make(config, dyups_url=..., files_dir=...)`` starts a daemon; all are killed at teardown."""
    started: list[DaemonProcess] = []

    def make(config: Any, *, dyups_url: str | None = None, files_dir: Path | None = files_dir,
             log_level: str = "INFO", env: dict[str, str] | None = None,
             extra_args: tuple[str, ...] = ()) -> DaemonProcess:
        daemon = DaemonProcess(
            tmp_path, config, name=f"daemon{len(started)}", files_dir=files_dir, dyups_url=dyups_url,
            log_level=log_level, env=env, extra_args=extra_args,
        )
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.kill()
        print(daemon.log_tail(150))


@pytest.fixture
def dyups() -> Iterator[DyupsServer]:
    server = DyupsServer(generation="stable")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def zk2_root(zk2: LocalZooKeeper) -> Iterator[tuple[KazooClient, str]]:
    """A client on the second session ZooKeeper and a fresh base path in it."""
    client = zk2.client()
    path = f"/t/zk2-{uuid.uuid4().hex[:8]}"
    client.ensure_path(path)
    yield client, path
    client.stop()
    client.close()


# ---------------------------------------------------------------------------
# 1, 9: children and their data reach the file and dyups
# ---------------------------------------------------------------------------


def test_children_added_and_removed_reach_file_and_dyups(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.2:80": b"", "10.0.0.1:8080": b"3", "10.0.0.1:443": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}), dyups_url=dyups.url)

    # Sorted by host, then numerically by port; weight only where it is not 1.
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:443", "server 10.0.0.1:8080 weight=3", "server 10.0.0.2:80")
    assert daemon.read("app1") == (
        "upstream app1 {\n    server 10.0.0.1:443;\n    server 10.0.0.1:8080 weight=3;\n    server 10.0.0.2:80;\n}\n"
    )
    assert posts(dyups, "app1")[-1].body == b"server 10.0.0.1:443;server 10.0.0.1:8080 weight=3;server 10.0.0.2:80;"

    zk_client.create(f"{path}/10.0.0.3:80")
    zk_client.create(f"{path}/[2001:db8::1]:9000", b"2")
    daemon.wait_both(
        dyups, "app1",
        "server 10.0.0.1:443", "server 10.0.0.1:8080 weight=3", "server 10.0.0.2:80", "server 10.0.0.3:80",
        "server [2001:db8::1]:9000 weight=2",
    )

    zk_client.delete(f"{path}/10.0.0.1:443")
    zk_client.delete(f"{path}/10.0.0.2:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:8080 weight=3", "server 10.0.0.3:80", "server [2001:db8::1]:9000 weight=2")

    nginx_check(files_dir)
    daemon.stop()


def test_data_only_change_reaches_outputs(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b"", "10.0.0.2:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")

    # ChildrenWatch does not fire on a data change: only the data watch can see this.
    zk_client.set(f"{path}/10.0.0.2:80", b"5")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80 weight=5")
    zk_client.set(f"{path}/10.0.0.2:80", b"7")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80 weight=7")
    # Weight 0 means "registered, take no traffic": nginx wants `down`, not weight=0.
    zk_client.set(f"{path}/10.0.0.1:80", b"0")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80 down", "server 10.0.0.2:80 weight=7")
    zk_client.set(f"{path}/10.0.0.1:80", b"1")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80 weight=7")

    # A data watch is set again after each change: a new child's data is watched too.
    zk_client.create(f"{path}/10.0.0.3:80", b"")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80 weight=7", "server 10.0.0.3:80")
    zk_client.set(f"{path}/10.0.0.3:80", b"4")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80 weight=7", "server 10.0.0.3:80 weight=4")

    nginx_check(files_dir)
    daemon.stop()


# ---------------------------------------------------------------------------
# 2: config shapes and chroot, with a running daemon
# ---------------------------------------------------------------------------


def test_multi_cluster_shape2_list_of_clusters(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, zk2: LocalZooKeeper,
    zk2_root: tuple[KazooClient, str], dyups: DyupsServer, daemons: Callable[..., DaemonProcess],
    files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    client2, root2 = zk2_root
    create_children(zk_client, f"{zk_root}/services/app1", {"10.1.0.1:80": b""})
    create_children(client2, f"{root2}/services/app2", {"10.2.0.1:80": b"", "10.2.0.2:80": b"2"})
    config = (
        f"- zk_servers: {zk.hosts}\n"
        f"  zk_nodes:\n"
        f"    app1: {zk_root}/services/app1\n"
        f"- zk_servers: {zk2.hosts}\n"
        f"  zk_nodes:\n"
        f"    app2: {root2}/services/app2\n"
    )
    daemon = daemons(config, dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.1.0.1:80")
    daemon.wait_both(dyups, "app2", "server 10.2.0.1:80", "server 10.2.0.2:80 weight=2")

    zk_client.create(f"{zk_root}/services/app1/10.1.0.2:80")
    client2.delete(f"{root2}/services/app2/10.2.0.1:80")
    daemon.wait_both(dyups, "app1", "server 10.1.0.1:80", "server 10.1.0.2:80")
    daemon.wait_both(dyups, "app2", "server 10.2.0.2:80 weight=2")
    daemon.wait_log(r"watching 2 upstreams in 2 clusters")
    nginx_check(files_dir)
    daemon.stop()


def test_multi_cluster_shape3_settings_and_clusters(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, zk2: LocalZooKeeper,
    zk2_root: tuple[KazooClient, str], dyups: DyupsServer, daemons: Callable[..., DaemonProcess],
    nginx_check: Callable[[Path], None],
) -> None:
    """files_output_path and dyups_url come from the file here, not from flags."""
    client2, root2 = zk2_root
    out = tmp_path / "from-config"
    create_children(zk_client, f"{zk_root}/services/app1", {"10.1.0.1:80": b""})
    create_children(client2, f"{root2}/services/app2", {"10.2.0.1:80": b""})
    config = (
        f"files_output_path: {out}\n"
        f"dyups_url: {dyups.url}\n"
        f"zk_session_timeout: 2s\n"
        f"clusters:\n"
        f"  - zk_servers: {zk.hosts}\n"
        f"    zk_nodes:\n"
        f"      app1: {zk_root}/services/app1\n"
        f"  - zk_servers: {zk2.hosts}\n"
        f"    zk_nodes:\n"
        f"      app2: {root2}/services/app2\n"
    )
    daemon = daemons(config, files_dir=None)
    daemon.files_dir = out
    daemon.wait_both(dyups, "app1", "server 10.1.0.1:80")
    daemon.wait_both(dyups, "app2", "server 10.2.0.1:80")
    client2.create(f"{root2}/services/app2/10.2.0.9:80")
    daemon.wait_both(dyups, "app2", "server 10.2.0.1:80", "server 10.2.0.9:80")
    nginx_check(out)
    daemon.stop()


def test_shape1_with_chroot_in_zk_servers(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    # The config names /services/app1; with the chroot it lives at <zk_root>/services/app1.
    create_children(zk_client, f"{zk_root}/services/app1", {"10.0.0.1:80": b""})
    # A decoy outside the chroot, where a daemon ignoring the chroot would look.
    zk_client.ensure_path("/services/app1")
    config = (
        f"zk_servers: {zk.hosts}{zk_root}\n"
        f"zk_session_timeout: 2s\n"
        f"zk_nodes:\n"
        f"    app1: /services/app1\n"
    )
    daemon = daemons(config, dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    zk_client.create(f"{zk_root}/services/app1/10.0.0.2:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
    nginx_check(files_dir)
    daemon.stop()


def test_two_upstreams_on_one_znode(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/shared"
    create_children(zk_client, path, {"10.0.0.1:80": b""})
    nodes = {"web": path, "web-canary": {"path": path, "server_params": {"max_fails": 3}}}
    daemon = daemons(cluster(zk.hosts, nodes), dyups_url=dyups.url)
    daemon.wait_both(dyups, "web", "server 10.0.0.1:80")
    daemon.wait_file("web-canary", upstream_file("web-canary", "server 10.0.0.1:80 max_fails=3"))
    zk_client.create(f"{path}/10.0.0.2:80")
    zk_client.set(f"{path}/10.0.0.1:80", b"4")
    daemon.wait_both(dyups, "web", "server 10.0.0.1:80 weight=4", "server 10.0.0.2:80")
    daemon.wait_file(
        "web-canary", upstream_file("web-canary", "server 10.0.0.1:80 weight=4 max_fails=3", "server 10.0.0.2:80 max_fails=3")
    )
    daemon.wait_dyups(dyups, "web-canary", ("server 10.0.0.1:80 weight=4 max_fails=3", "server 10.0.0.2:80 max_fails=3"))
    nginx_check(files_dir)
    daemon.stop()


# ---------------------------------------------------------------------------
# 3: one cluster frozen, the other keeps going; then resync to the truth
# ---------------------------------------------------------------------------


def _session_lines(daemon: DaemonProcess, label: str) -> list[str]:
    """The states (SUSPENDED, LOST, CONNECTED) of the session transition lines for one cluster."""
    pattern = re.compile(rf"cluster {re.escape(label)}(?: #\d+)?: session (\w+)")
    return [m.group(1) for line in daemon.log().splitlines() if (m := pattern.search(line))]


def test_paused_cluster_freezes_other_cluster_keeps_updating_then_resyncs(
    zk_factory: Callable[..., LocalZooKeeper], dyups: DyupsServer, daemons: Callable[..., DaemonProcess],
    files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    zka, zkb = zk_factory(), zk_factory()
    client_a, client_b = zka.client(), zkb.client()
    try:
        create_children(client_a, "/svc/a1", {"10.1.0.1:80": b"", "10.1.0.2:80": b""})
        create_children(client_b, "/svc/b1", {"10.2.0.1:80": b""})
        config = {
            "zk_session_timeout": SESSION_TIMEOUT, **GUARDS_OFF,
            "clusters": [
                {"zk_servers": zka.hosts, "zk_nodes": {"a1": "/svc/a1"}},
                {"zk_servers": zkb.hosts, "zk_nodes": {"b1": "/svc/b1"}},
            ],
        }
        daemon = daemons(config, dyups_url=dyups.url)
        daemon.wait_both(dyups, "a1", "server 10.1.0.1:80", "server 10.1.0.2:80")
        daemon.wait_both(dyups, "b1", "server 10.2.0.1:80")

        a_text = daemon.path("a1").read_bytes()
        a_stat = daemon.path("a1").stat()
        a_live = dyups.upstreams()["a1"]
        frozen_from = len(dyups.requests_log)

        zka.pause()
        daemon.wait_log(rf"cluster {re.escape(zka.hosts)} #0: session SUSPENDED; freezing 1 upstreams")

        # Cluster B keeps updating for longer than the session timeout.
        paused_at = time.monotonic()
        b_servers = ["server 10.2.0.1:80"]
        i = 0
        while time.monotonic() - paused_at < 3.0:
            i += 1
            client_b.create(f"/svc/b1/10.2.1.{i}:80")
            b_servers.append(f"server 10.2.1.{i}:80")
            daemon.wait_both(dyups, "b1", *by_host_port(b_servers))
        client_b.delete("/svc/b1/10.2.0.1:80")
        b_servers.remove("server 10.2.0.1:80")
        daemon.wait_both(dyups, "b1", *by_host_port(b_servers))

        # Cluster A's upstream has not moved: same bytes, same inode, no POST since the freeze.
        assert daemon.path("a1").read_bytes() == a_text
        assert daemon.path("a1").stat().st_ino == a_stat.st_ino
        assert daemon.path("a1").stat().st_mtime_ns == a_stat.st_mtime_ns
        assert dyups.upstreams()["a1"] == a_live
        assert posts(dyups, "a1", frozen_from) == []
        # One line for the transition, not one per reconnect attempt.
        assert _session_lines(daemon, zka.hosts) == ["SUSPENDED"], daemon.log_tail()
        assert _session_lines(daemon, zkb.hosts) == [], daemon.log_tail()

        zka.kill()  # SIGKILL while stopped; the data stays for restart()
        client_b.create("/svc/b1/10.2.2.1:80")
        b_servers.append("server 10.2.2.1:80")
        daemon.wait_both(dyups, "b1", *by_host_port(b_servers))
        assert daemon.path("a1").read_bytes() == a_text
        assert posts(dyups, "a1", frozen_from) == []

        # Bring A back and change its truth before the daemon can reconnect:
        # the daemon is stopped meanwhile, so only the resumption (SetWatches
        # on the surviving session, or a full read on a new one) can see it.
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            zka.restart()
            fresh = zka.client()
            try:
                fresh.delete("/svc/a1/10.1.0.1:80")
                fresh.create("/svc/a1/10.1.0.3:80", b"2")
                fresh.set("/svc/a1/10.1.0.2:80", b"4")
            finally:
                fresh.stop()
                fresh.close()
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        daemon.wait_both(dyups, "a1", "server 10.1.0.2:80 weight=4", "server 10.1.0.3:80 weight=2", timeout=20)
        daemon.wait_log(rf"cluster {re.escape(zka.hosts)} #0: resynced [01] znodes; thawed", count=2)

        states = _session_lines(daemon, zka.hosts)
        assert states[0] == "SUSPENDED" and states[-1] == "CONNECTED", states
        assert all(a != b for a, b in zip(states, states[1:])), f"a transition was logged twice: {states}"
        assert set(states) <= {"SUSPENDED", "LOST", "CONNECTED"}, states

        # The watches work again after the resync, on both clusters.
        client_a.stop()
        client_a.close()
        client_a = zka.client()
        client_a.create("/svc/a1/10.1.0.4:80")
        daemon.wait_both(
            dyups, "a1", "server 10.1.0.2:80 weight=4", "server 10.1.0.3:80 weight=2", "server 10.1.0.4:80"
        )
        client_a.set("/svc/a1/10.1.0.4:80", b"9")
        daemon.wait_both(
            dyups, "a1", "server 10.1.0.2:80 weight=4", "server 10.1.0.3:80 weight=2", "server 10.1.0.4:80 weight=9"
        )
        client_b.delete("/svc/b1/10.2.2.1:80")
        b_servers.remove("server 10.2.2.1:80")
        daemon.wait_both(dyups, "b1", *by_host_port(b_servers))

        nginx_check(files_dir)
        daemon.stop()
    finally:
        for client in (client_a, client_b):
            client.stop()
            client.close()


def test_session_expiry_then_full_resync_and_new_watches(
    zk_factory: Callable[..., LocalZooKeeper], dyups: DyupsServer, daemons: Callable[..., DaemonProcess],
    files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    """LOST, not just SUSPENDED: kazoo's old watches are gone, so only the
    daemon's own re-arming can make later changes visible."""
    server = zk_factory()
    client = server.client()
    try:
        create_children(client, "/svc/app1", {"10.0.0.1:80": b"", "10.0.0.2:80": b""})
        create_children(client, "/svc/app2", {"10.0.1.1:80": b""})
        daemon = daemons(cluster(server.hosts, {"app1": "/svc/app1", "app2": "/svc/app2"}), dyups_url=dyups.url)
        daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
        daemon.wait_both(dyups, "app2", "server 10.0.1.1:80")
        frozen_from = len(dyups.requests_log)

        server.pause()
        daemon.wait_log(r"session SUSPENDED; freezing 2 upstreams")
        # The daemon is stopped before ZooKeeper answers again, so its session
        # expires on the server (timeout 2 s) before it can ping, and the
        # changes below are made before it can reconnect.
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            server.resume()
            client.delete("/svc/app1/10.0.0.1:80")
            client.create("/svc/app1/10.0.0.3:80", b"2")
            client.create("/svc/app2/10.0.1.2:80")
            resumed = time.monotonic()
            wait_until(lambda: time.monotonic() - resumed > 2.5, "the daemon's session to be past its timeout")
            assert posts(dyups, "app1", frozen_from) == [] and posts(dyups, "app2", frozen_from) == []
        finally:
            os.kill(daemon.pid, signal.SIGCONT)

        daemon.wait_both(dyups, "app1", "server 10.0.0.2:80", "server 10.0.0.3:80 weight=2")
        daemon.wait_both(dyups, "app2", "server 10.0.1.1:80", "server 10.0.1.2:80")
        assert _session_lines(daemon, server.hosts) == ["SUSPENDED", "LOST", "CONNECTED"], daemon.log_tail()

        # New children, data and znode watches on the new session.
        client.create("/svc/app1/10.0.0.4:80")
        daemon.wait_both(dyups, "app1", "server 10.0.0.2:80", "server 10.0.0.3:80 weight=2", "server 10.0.0.4:80")
        client.set("/svc/app1/10.0.0.2:80", b"5")
        daemon.wait_both(
            dyups, "app1", "server 10.0.0.2:80 weight=5", "server 10.0.0.3:80 weight=2", "server 10.0.0.4:80"
        )
        delete_atomically(client, "/svc/app2")
        daemon.wait_log(r"znode /svc/app2 \(upstream app2\) does not exist")
        create_children(client, "/svc/app2", {"10.0.1.9:80": b""})
        daemon.wait_both(dyups, "app2", "server 10.0.1.9:80")
        nginx_check(files_dir)
        daemon.stop()
    finally:
        client.stop()
        client.close()


# ---------------------------------------------------------------------------
# 4, 5: hostile children, and the zero-instance guard
# ---------------------------------------------------------------------------


def test_malformed_and_hostile_children_are_skipped_with_a_warning(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    big = json.dumps({"host": "10.0.0.7", "port": 80, "pad": ""}).encode()
    big = big[:-2] + b"x" * (1_000_000 - len(big)) + b'"}'
    assert len(big) == 1_000_000
    hostile = {
        "1.2.3.4:80;}": b"",
        "a b:80": b"",
        "host:0": b"",
        "host:99999": b"",
        "{evil}:80": b"",
        "json-semicolon": b'{"host": "10.0.0.9;}", "port": 80}',
        "json-dollar": b'{"host": "$host", "port": 80}',
        "json-newline": b'{"host": "10.0.0.9\\nserver 6.6.6.6", "port": 80}',
        "json-space": b'{"host": "10.0.0.9 backup", "port": 80}',
        "bad-utf8": b'{"host": "10.0.0.8", "port": 80, "x": "\xff\xfe"}',
        "big": big,
    }
    valid = {
        "10.0.0.1:80": b"",
        "10.0.0.2:80": b"3",
        # Curator ServiceInstance JSON, as Spring Cloud writes it.
        "0b5e6a8c-1d2f-4a6b-9c0e-7f8a9b0c1d2e": json.dumps(
            {"name": "app1", "address": "10.0.0.5", "port": 8080, "sslPort": None, "enabled": True}
        ).encode(),
    }
    create_children(zk_client, path, {**hostile, **valid})
    daemon = daemons(cluster(zk.hosts, {"app1": path}), dyups_url=dyups.url)
    served = ("server 10.0.0.1:80", "server 10.0.0.2:80 weight=3", "server 10.0.0.5:8080")
    daemon.wait_both(dyups, "app1", *served)

    for child in hostile:
        daemon.wait_log(re.escape(f"znode {path} child {child!r} skipped: "))
    # A hostile child arriving later is skipped too, and the valid newcomer is served.
    zk_client.create(f"{path}/late-$(evil)", b'{"host": "10.0.0.6", "port": "80;"}')
    zk_client.create(f"{path}/10.0.0.3:80", b"")
    served = (*served[:2], "server 10.0.0.3:80", served[2])
    daemon.wait_both(dyups, "app1", *served)
    daemon.wait_log(re.escape(f"znode {path} child {'late-$(evil)'!r} skipped: "))

    text = daemon.read("app1")
    assert text is not None
    for line in text.splitlines()[1:-1]:
        assert _SAFE_FILE_LINE.fullmatch(line), line
    for record in posts(dyups, "app1"):
        assert record.body is not None and _SAFE_BODY.fullmatch(record.body.decode()), record.body
    # The 1 MB child is named, not dumped into the log.
    assert len(daemon.log()) < 200_000
    nginx_check(files_dir)
    daemon.stop()


def test_zero_instances_keep_the_last_good_state(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b"", "10.0.0.2:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
    before = daemon.path("app1").stat()
    post_count = len(posts(dyups, "app1"))

    # Both at once (two deletes in a row could rightly be served as 2, 1, then kept).
    transaction = zk_client.transaction()
    transaction.delete(f"{path}/10.0.0.1:80")
    transaction.delete(f"{path}/10.0.0.2:80")
    assert transaction.commit() == [True, True]
    daemon.wait_log(rf"upstream app1: znode {re.escape(path)} has no valid instances; keeping the last good state")
    # Only invalid instances is still zero instances.
    zk_client.create(f"{path}/not-an-instance", b"hello")
    daemon.wait_log(re.escape(f"znode {path} child 'not-an-instance' skipped"))

    assert daemon.read("app1") == upstream_file("app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
    after = daemon.path("app1").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(posts(dyups, "app1")) == post_count
    assert dyups.upstreams()["app1"] == ("server 10.0.0.1:80", "server 10.0.0.2:80")

    # The first valid instance replaces the kept state.
    zk_client.create(f"{path}/10.0.0.9:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.9:80")
    nginx_check(files_dir)
    daemon.stop()


# ---------------------------------------------------------------------------
# 6, 8: dyups down and back; restart with ZooKeeper down re-POSTs the files
# ---------------------------------------------------------------------------


def test_dyups_down_files_keep_updating_then_catch_up(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    create_children(zk_client, f"{zk_root}/app2", {"10.0.1.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": f"{zk_root}/app1", "app2": f"{zk_root}/app2"}), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    daemon.wait_both(dyups, "app2", "server 10.0.1.1:80")

    dyups.stop()
    zk_client.create(f"{zk_root}/app1/10.0.0.2:80")
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80", "server 10.0.0.2:80"))
    zk_client.delete(f"{zk_root}/app1/10.0.0.1:80")
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.2:80"))
    zk_client.set(f"{zk_root}/app2/10.0.1.1:80", b"6")
    daemon.wait_file("app2", upstream_file("app2", "server 10.0.1.1:80 weight=6"))
    daemon.wait_log(r"dyups: interface .* unreachable")
    assert dyups.upstreams()["app1"] == ("server 10.0.0.1:80",)  # nothing reached it meanwhile

    back_from = len(dyups.requests_log)
    back_at = time.monotonic()
    dyups.start()
    daemon.wait_dyups(dyups, "app1", ("server 10.0.0.2:80",), timeout=5)
    daemon.wait_dyups(dyups, "app2", ("server 10.0.1.1:80 weight=6",), timeout=5)
    caught_up = [
        record for record in dyups.requests_log[back_from:] if record.status == 200 and record.method == "POST"
    ]
    assert {record.path: record.body for record in caught_up} == {
        "/upstream/app1": body_of_file(daemon.read("app1") or ""),
        "/upstream/app2": body_of_file(daemon.read("app2") or ""),
    }
    print(f"dyups catch-up took {max(r.time for r in caught_up) - back_at:.3f} s")
    daemon.wait_log(r"dyups: interface .* answers again")
    nginx_check(files_dir)
    daemon.stop()


def test_restart_with_zookeeper_down_reposts_the_files(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b"", "10.0.0.2:80": b"2"})
    create_children(zk_client, f"{zk_root}/app2", {"[2001:db8::1]:8080": b""})
    nodes = {"app1": f"{zk_root}/app1", "app2": f"{zk_root}/app2"}
    first = daemons(cluster(zk.hosts, nodes), dyups_url=dyups.url)
    first.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80 weight=2")
    first.wait_both(dyups, "app2", "server [2001:db8::1]:8080")
    first.stop()
    texts = {name: first.read(name) for name in nodes}
    stats = {name: first.path(name).stat() for name in nodes}

    # nginx restarted meanwhile (a fresh dyups knows nothing); ZooKeeper is unreachable.
    fresh = DyupsServer(generation="stable")
    fresh.start()
    try:
        second = daemons(cluster(f"127.0.0.1:{free_port()}", nodes), dyups_url=fresh.url)
        for name in nodes:
            expected = body_of_file(texts[name] or "")
            wait_until(
                lambda: any(r.status == 200 and r.body == expected for r in posts(fresh, name)),
                f"a POST of {name} equal to its file",
                details=lambda: f"{fresh.describe()}\n{second.log_tail()}",
            )
        assert fresh.upstreams() == {
            "app1": ("server 10.0.0.1:80", "server 10.0.0.2:80 weight=2"),
            "app2": ("server [2001:db8::1]:8080",),
        }
        for name in nodes:
            assert second.read(name) == texts[name]
            assert second.path(name).stat().st_ino == stats[name].st_ino
        second.wait_log(r"adopted as the last good state", count=2)
        nginx_check(files_dir)
        second.stop()
    finally:
        fresh.stop()


def test_startup_adopts_only_valid_files_of_its_own_upstreams(
    zk_root: str, daemons: Callable[..., DaemonProcess], files_dir: Path,
) -> None:
    """Files are trusted only as far as they parse like the registry data they came from."""
    files_dir.mkdir()
    (files_dir / "good.upstream").write_text(upstream_file("good", "server 10.0.0.1:80 weight=2"))
    (files_dir / "foreign.upstream").write_text(upstream_file("other", "server 10.0.0.2:80"))
    (files_dir / "hostile.upstream").write_text(
        "upstream hostile {\n    server 10.0.0.3:80;\n}\nupstream injected {\n    server 6.6.6.6:80;\n}\n"
    )
    (files_dir / "dollar.upstream").write_text(upstream_file("dollar", "server $host:80"))
    originals = upstream_files(files_dir)
    nodes = {name: f"{zk_root}/{name}" for name in ("good", "foreign", "hostile", "dollar")}
    fresh = DyupsServer(generation="stable")
    fresh.start()
    try:
        daemon = daemons(cluster(f"127.0.0.1:{free_port()}", nodes), dyups_url=fresh.url)
        daemon.wait_dyups(fresh, "good", ("server 10.0.0.1:80 weight=2",))
        daemon.wait_log(r"ignoring .*foreign\.upstream at start-up: it defines upstream 'other'")
        daemon.wait_log(r"ignoring .*hostile\.upstream at start-up")
        daemon.wait_log(r"ignoring .*dollar\.upstream at start-up")
        daemon.stop()
        assert [r.path for r in fresh.requests_log if r.method == "POST"] == ["/upstream/good"]
        assert upstream_files(files_dir) == originals
    finally:
        fresh.stop()


# ---------------------------------------------------------------------------
# 7: the znode itself goes and comes back
# ---------------------------------------------------------------------------


def test_znode_missing_at_start_then_deleted_and_recreated(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/services/app1"
    daemon = daemons(cluster(zk.hosts, {"app1": path}), dyups_url=dyups.url)
    daemon.wait_log(rf"znode {re.escape(path)} \(upstream app1\) does not exist")
    assert daemon.read("app1") is None

    # Created later, with its parent: picked up.
    create_children(zk_client, path, {"10.0.0.1:80": b""})
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    zk_client.create(f"{path}/10.0.0.2:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")

    # Deleted recursively in one transaction (kazoo's recursive delete removes
    # the children one by one, which the daemon rightly serves as it goes):
    # the znode vanishing is not an instruction, so the last good state stays.
    before = len(posts(dyups, "app1"))
    delete_atomically(zk_client, path)
    daemon.wait_log(rf"znode {re.escape(path)} \(upstream app1\) does not exist", count=2)
    assert daemon.read("app1") == upstream_file("app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
    assert len(posts(dyups, "app1")) == before

    # Re-created with other children: the watch resumes.
    create_children(zk_client, path, {"10.0.0.5:80": b"", "10.0.0.6:80": b"3"})
    daemon.wait_both(dyups, "app1", "server 10.0.0.5:80", "server 10.0.0.6:80 weight=3")
    zk_client.create(f"{path}/10.0.0.7:80")
    zk_client.set(f"{path}/10.0.0.5:80", b"2")
    daemon.wait_both(dyups, "app1", "server 10.0.0.5:80 weight=2", "server 10.0.0.6:80 weight=3", "server 10.0.0.7:80")

    # And once more, quickly: delete and re-create in a row.
    zk_client.delete(path, recursive=True)
    create_children(zk_client, path, {"10.0.0.8:80": b""})
    daemon.wait_both(dyups, "app1", "server 10.0.0.8:80")
    zk_client.create(f"{path}/10.0.0.9:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.8:80", "server 10.0.0.9:80")

    nginx_check(files_dir)
    daemon.stop()


# ---------------------------------------------------------------------------
# dyups faults: 409, dropped connection, 500
# ---------------------------------------------------------------------------


def test_dyups_409_and_dropped_connection_are_retried(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")

    since = len(dyups.requests_log)
    dyups.inject("409", 2)
    zk_client.create(f"{path}/10.0.0.2:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80", timeout=5)
    tries = posts(dyups, "app1", since)
    assert [r.status for r in tries] == [409, 409, 200], tries
    assert len({r.body for r in tries}) == 1

    since = len(dyups.requests_log)
    dyups.inject("drop")
    zk_client.create(f"{path}/10.0.0.3:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80", "server 10.0.0.3:80", timeout=5)
    tries = posts(dyups, "app1", since)
    assert [r.status for r in tries] == [None, 200], tries
    assert tries[0].body == tries[1].body

    # More 409s than one round of attempts: the upstream stays pending and a
    # later round gets it through.
    since = len(dyups.requests_log)
    dyups.inject("409", 7)
    zk_client.create(f"{path}/10.0.0.4:80")
    daemon.wait_both(
        dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80", "server 10.0.0.3:80", "server 10.0.0.4:80",
        timeout=8,
    )
    tries = posts(dyups, "app1", since)
    assert [r.status for r in tries] == [409] * 7 + [200], tries
    nginx_check(files_dir)
    daemon.stop()


def test_dyups_500_is_logged_once_without_the_body(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")

    dyups.inject("500")
    zk_client.create(f"{path}/10.0.0.2:80", b"2")
    # The file is written regardless.
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80", "server 10.0.0.2:80 weight=2"))
    line = daemon.wait_log(r"dyups: nginx refused upstream app1 \(500: POST \S+/upstream/app1 answered")[0]
    assert "add server failed" in line
    assert "10.0.0.2:80 weight=2" not in line, "the body is never logged"

    # The daemon carries on: the next change goes through.
    zk_client.create(f"{path}/10.0.0.3:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80 weight=2", "server 10.0.0.3:80")
    nginx_check(files_dir)
    daemon.stop()


# ---------------------------------------------------------------------------
# Files are replaced atomically, and never rewritten without a change
# ---------------------------------------------------------------------------


def test_files_are_replaced_atomically_and_unchanged_content_is_not_rewritten(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    create_children(zk_client, f"{zk_root}/app2", {"10.0.1.1:80": b""})
    nodes = {"app1": f"{zk_root}/app1", "app2": f"{zk_root}/app2"}
    daemon = daemons(cluster(zk.hosts, nodes), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    daemon.wait_both(dyups, "app2", "server 10.0.1.1:80")
    first = daemon.path("app1").stat()
    assert first.st_mode & 0o777 == 0o644

    # A change replaces the file: a new inode, never an in-place edit.
    zk_client.create(f"{zk_root}/app1/10.0.0.2:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
    second = daemon.path("app1").stat()
    assert second.st_ino != first.st_ino
    assert second.st_mode & 0o777 == 0o644
    assert sorted(upstream_files(files_dir)) == ["app1.upstream", "app2.upstream"]

    # Changes that render the same (data that is not a weight, a skipped child)
    # rewrite nothing and POST nothing. A real change to app2 afterwards is the
    # barrier that proves the daemon has seen them.
    app1_posts = len(posts(dyups, "app1"))
    zk_client.set(f"{zk_root}/app1/10.0.0.1:80", b"10.9.9.9")  # Curator's default data: the IP, not a weight
    zk_client.create(f"{zk_root}/app1/junk", b"")
    zk_client.create(f"{zk_root}/app2/10.0.1.2:80")
    daemon.wait_both(dyups, "app2", "server 10.0.1.1:80", "server 10.0.1.2:80")
    third = daemon.path("app1").stat()
    assert (third.st_ino, third.st_mtime_ns) == (second.st_ino, second.st_mtime_ns)
    assert len(posts(dyups, "app1")) == app1_posts

    # A restart against unchanged ZooKeeper re-POSTs (nginx may have lost it)
    # but rewrites no file.
    daemon.stop()
    stats = {name: daemon.path(name).stat() for name in nodes}
    since = len(dyups.requests_log)
    again = daemons(cluster(zk.hosts, nodes), dyups_url=dyups.url)
    again.wait_log(r"resynced 2 znodes; thawed")
    wait_until(lambda: posts(dyups, "app1", since) and posts(dyups, "app2", since), "the start-up re-POSTs")
    zk_client.create(f"{zk_root}/app2/10.0.1.3:80")  # barrier again
    again.wait_both(dyups, "app2", "server 10.0.1.1:80", "server 10.0.1.2:80", "server 10.0.1.3:80")
    now = daemon.path("app1").stat()
    assert (now.st_ino, now.st_mtime_ns) == (stats["app1"].st_ino, stats["app1"].st_mtime_ns)
    assert sorted(upstream_files(files_dir)) == ["app1.upstream", "app2.upstream"]
    nginx_check(files_dir)
    again.stop()


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signame", "paused"),
    [("SIGTERM", False), ("SIGINT", False), ("SIGTERM", True), ("SIGINT", True)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-zk-paused", "SIGINT-zk-paused"],
)
def test_signal_exits_zero_within_five_seconds(
    signame: str, paused: bool, zk: LocalZooKeeper, zk_factory: Callable[..., LocalZooKeeper],
    dyups: DyupsServer, daemons: Callable[..., DaemonProcess], files_dir: Path,
    nginx_check: Callable[[Path], None],
) -> None:
    server = zk_factory() if paused else zk
    client = server.client()
    try:
        path = f"/t/sig-{uuid.uuid4().hex[:8]}/app1"
        create_children(client, path, {"10.0.0.1:80": b""})
    finally:
        client.stop()
        client.close()
    daemon = daemons(cluster(server.hosts, {"app1": path}), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    if paused:
        server.pause()
        if signame == "SIGINT":
            # Also once the daemon has noticed (SIGTERM goes out while it has not).
            daemon.wait_log(r"session SUSPENDED")
    took = daemon.stop(getattr(signal, signame))
    print(f"{signame} (ZooKeeper paused: {paused}): exited 0 in {took:.2f} s")
    assert re.search(rf"received {signame}; stopping", daemon.log())
    assert daemon.log().rstrip().endswith("stopped")
    nginx_check(files_dir)


# ---------------------------------------------------------------------------
# Latency: znode child create -> dyups POST answered
# ---------------------------------------------------------------------------


def test_create_to_post_latency(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, record_property: Callable[[str, object], None],
    nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")

    latencies = []
    for i in range(1, 21):
        child = f"10.0.2.{i}:80"
        since = len(dyups.requests_log)
        began = time.monotonic()  # same clock as RequestRecord.time (CLOCK_MONOTONIC)
        zk_client.create(f"{path}/{child}")
        record = wait_until(
            lambda: next(
                (r for r in posts(dyups, "app1", since) if r.status == 200 and f"server {child};".encode() in r.body),
                None,
            ),
            f"the POST carrying {child}",
            details=daemon.log_tail,
        )
        latencies.append(record.time - began)
    median = statistics.median(latencies)
    summary = (
        f"create -> dyups POST answered, 20 samples: median {median * 1000:.1f} ms, "
        f"min {min(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    print(summary)
    record_property("create_to_post_latency_median_ms", round(median * 1000, 1))
    record_property("create_to_post_latency_summary", summary)
    assert median < 2.0, summary
    nginx_check(files_dir)
    daemon.stop()
