"""Servers drained by hand (``drain`` / ``undrain``): the store, the pipeline, and real traffic.

* the override store: atomic, serialised, bad content contained;
* the pipeline: a drain is rendered ``down``, is never a drop for the guards,
  never takes the last server out of traffic, and survives registry changes;
* end to end with the daemon as a process, real ZooKeeper and real nginx
  (reload mode and Lua mode) or the dyups test server: a drained server gets
  no requests within one publish, stays drained across restarts of the
  daemon and of nginx, and comes back after ``undrain`` or when ``--for``
  runs out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from reloader.config import GuardSettings, ZnodeConfig
from reloader.localenv.backends import BackendPool, http_get
from reloader.localenv.luanginx import lua_missing
from reloader.localenv.nginx import LocalNginx, server_block
from reloader.localenv.ports import free_port
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.model import Server, Upstream
from reloader.overrides import OVERRIDES_NAME, OverrideStore, OverrideWatcher
from reloader.pipeline import Pipeline
from reloader.status import render_status
from tests.conftest import require
from tests.test_daemon import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reloader", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=30)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{detail()}")
        time.sleep(0.05)


# =============================================================================
# The store
# =============================================================================


def test_store_round_trip_and_expiry(tmp_path: Path) -> None:
    store = OverrideStore(tmp_path)
    store.drain("app", ("10.0.0.1", 80), None, now=lambda: 100.0)
    store.drain("app", ("::1", 81), 30.0, now=lambda: 100.0)
    drains, problems = store.load()
    assert problems == []
    assert {(d.upstream, d.server, d.until) for d in drains} == {("app", ("10.0.0.1", 80), None),
                                                                 ("app", ("::1", 81), 130.0)}
    assert not any(path.name.endswith(".upstream") for path in tmp_path.iterdir())
    clock = [100.0]
    watcher = OverrideWatcher(tmp_path, clock=lambda: clock[0])
    assert watcher.poll() == {"app": {("10.0.0.1", 80): None, ("::1", 81): 130.0}}
    assert watcher.poll() is None  # nothing changed
    clock[0] = 130.0
    assert watcher.poll() == {"app": {("10.0.0.1", 80): None}}  # --for ran out
    assert store.undrain("app", ("10.0.0.1", 80)) and not store.undrain("app", ("10.0.0.1", 80))
    assert watcher.poll() == {}


def test_concurrent_drains_are_all_kept(tmp_path: Path) -> None:
    store = OverrideStore(tmp_path)
    threads = [threading.Thread(target=store.drain, args=("app", ("10.0.0.1", 1000 + n), None)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drains, _ = store.load()
    assert len(drains) == 20
    assert [path.name for path in tmp_path.iterdir()] == [OVERRIDES_NAME]  # no temporary left behind


def test_a_damaged_file_keeps_the_drains_in_force_and_bad_entries_are_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = OverrideStore(tmp_path)
    store.drain("app", ("10.0.0.1", 80), None)
    watcher = OverrideWatcher(tmp_path)
    assert watcher.poll() == {"app": {("10.0.0.1", 80): None}}
    store.path.write_text("{not json")
    assert watcher.poll() is None and "not valid JSON" in (watcher.problem or "")
    assert "not valid JSON" in caplog.text
    store.path.write_text(json.dumps({"drains": {"app": {"10.0.0.2:80": {"until": None}, "nonsense": {},
                                                         "10.0.0.3:80": {"until": "soon"}}}}))
    assert watcher.poll() == {"app": {("10.0.0.2", 80): None}}
    assert "nonsense" in (watcher.problem or "") and "soon" in (watcher.problem or "")
    # A damaged file is never overwritten by a drain: the operator repairs it.
    store.path.write_text("[")
    with pytest.raises(ValueError, match="not valid JSON"):
        store.drain("app", ("10.0.0.4", 80), None)


def test_cli_checks_its_arguments(tmp_path: Path) -> None:
    bad = cli("drain", "app", "not-an-address", "--files-output-path", str(tmp_path))
    assert bad.returncode == 2 and "host:port" in bad.stderr
    bad = cli("drain", "app", "10.0.0.1:80", "--for", "soon", "--files-output-path", str(tmp_path))
    assert bad.returncode == 2 and "duration" in bad.stderr
    config = tmp_path / "c.yaml"
    config.write_text(f"zk_servers: 127.0.0.1:2181\nfiles_output_path: {tmp_path}\nzk_nodes:\n  web: /web\n")
    bad = cli("drain", "app", "10.0.0.1:80", "--config", str(config))
    assert bad.returncode == 2 and "no upstream 'app'" in bad.stderr
    good = cli("drain", "web", "10.0.0.1:80", "--for", "1m", "--config", str(config))
    assert good.returncode == 0, good.stderr
    assert "drained web 10.0.0.1:80 for 60 s" in good.stdout
    assert cli("undrain", "web", "10.0.0.1:80", "--config", str(config)).returncode == 0
    assert OverrideStore(tmp_path).load() == ([], [])


# =============================================================================
# The pipeline: after the guards, never a drop, never the last server
# =============================================================================


def _pipeline(published: list[Upstream], max_drop: float = 0.3) -> Pipeline:
    znode = ZnodeConfig(upstream="app", path="/app", key_path="zk_nodes.app",
                        guards=GuardSettings(max_drop=max_drop, drop_hold=60.0, settle_after_reconnect=0.0))
    return Pipeline([znode], published.append, clock=lambda: 1000.0)


def _children(*ports: int) -> dict[str, bytes]:
    return {f"10.0.0.1:{port}": b"" for port in ports}


def _down(upstream: Upstream) -> set[int]:
    return {server.port for server in upstream.servers if server.down}


def test_a_drain_is_published_at_once_and_never_held_as_a_drop() -> None:
    published: list[Upstream] = []
    pipeline = _pipeline(published)
    pipeline.update("app", _children(1, 2, 3), "/app")
    # Two of three (67 % > max_drop 30 %): as a registry change this would be held for 60 s.
    pipeline.set_drains("app", {("10.0.0.1", 1): None, ("10.0.0.1", 2): None})
    assert _down(published[-1]) == {1, 2} and len(published[-1].servers) == 3
    status = pipeline.status("app", 1000.0)
    assert not status["holding_drop"] and status["held_servers"] == 0
    assert [entry["server"] for entry in status["drained"]] == ["10.0.0.1:1", "10.0.0.1:2"]  # type: ignore[index]
    # A registry change to the same upstream keeps them drained.
    pipeline.update("app", _children(1, 2, 3, 4), "/app")
    assert _down(published[-1]) == {1, 2} and len(published[-1].servers) == 4
    pipeline.set_drains("app", {})
    assert _down(published[-1]) == set() and len(published[-1].servers) == 4
    count = len(published)
    pipeline.set_drains("app", {})
    assert len(published) == count  # nothing changed, nothing published


def test_a_drain_of_every_server_is_not_applied(caplog: pytest.LogCaptureFixture) -> None:
    published: list[Upstream] = []
    pipeline = _pipeline(published)
    pipeline.update("app", _children(1, 2), "/app")
    pipeline.set_drains("app", {("10.0.0.1", 1): None, ("10.0.0.1", 2): None})
    assert _down(published[-1]) == set()
    assert "would leave no server in traffic" in caplog.text
    assert pipeline.status("app", 1000.0)["drain_refused"]
    pipeline.update("app", _children(1, 2, 3), "/app")  # a third one comes: the drains apply
    assert _down(published[-1]) == {1, 2}
    assert not pipeline.status("app", 1000.0)["drain_refused"]


def test_a_drain_before_the_first_read_applies_to_the_first_publish() -> None:
    published: list[Upstream] = []
    pipeline = _pipeline(published)
    pipeline.set_drains("app", {("10.0.0.1", 2): None})
    assert published == []
    pipeline.update("app", _children(1, 2), "/app")
    assert _down(published[-1]) == {2}


def test_a_drain_applies_while_the_cluster_is_frozen_and_to_an_adopted_file() -> None:
    from reloader.publication import ClusterFreeze

    freeze = ClusterFreeze()
    published: list[Upstream] = []
    znode = ZnodeConfig(upstream="app", path="/app", key_path="zk_nodes.app")
    pipeline = Pipeline([znode], published.append, freeze=freeze)
    # Adopted from its file at start-up; the cluster has not been read (frozen).
    pipeline.adopt(Upstream("app", (Server("10.0.0.1", 1), Server("10.0.0.1", 2)), live_count=2))
    pipeline.set_drains("app", {("10.0.0.1", 2): None})
    assert _down(published[-1]) == {2}
    freeze.open_if(freeze.epoch)
    pipeline.update("app", _children(1, 2, 3), "/app")
    assert _down(published[-1]) == {2} and len(published[-1].servers) == 3
    # The session is lost: the registry publishes nothing, an operator's drain still does.
    freeze.close()
    pipeline.set_drains("app", {("10.0.0.1", 2): None, ("10.0.0.1", 3): None})
    assert _down(published[-1]) == {2, 3} and len(published[-1].servers) == 3
    pipeline.set_drains("app", {})
    assert _down(published[-1]) == set()


def test_status_table_shows_the_drains() -> None:
    snapshot = {"upstreams": {"app": {"cluster": "c", "drained": [{"server": "10.0.0.1:80", "seconds_left": 59.6},
                                                                  {"server": "10.0.0.1:81", "seconds_left": None}]}}}
    assert "10.0.0.1:80 (60s left), 10.0.0.1:81" in render_status(snapshot)
    assert "drains file: not valid JSON" in render_status({**snapshot, "overrides_problem": "not valid JSON"})


# =============================================================================
# End to end: real ZooKeeper, the daemon as a process, real nginx
# =============================================================================


class Rig:
    """Backends b-1..b-4 registered (1-3) in ZooKeeper, nginx in front, the daemon between them."""

    def __init__(self, tmp: Path, zk: LocalZooKeeper, client: KazooClient, znode: str) -> None:
        self.tmp, self.zk, self.client, self.znode = tmp, zk, client, znode
        self.files = tmp / "upstreams"
        self.files.mkdir()
        self.pool = BackendPool(4, prefix="b")
        self.pool.start()
        for backend in list(self.pool)[:3]:
            client.create(f"{znode}/{backend.address}", makepath=True)
        self.daemon: DaemonProcess | None = None
        self.nginx: LocalNginx | None = None

    def start_daemon(self, extra: dict[str, Any]) -> DaemonProcess:
        config = {"zk_servers": self.zk.hosts, "zk_session_timeout": "4s", "files_output_path": str(self.files),
                  "retry_interval": "0.3s", "zk_nodes": {"app": self.znode},
                  # The backends listen on loopback, which registry instances may not name by default.
                  "allowed_networks": ["127.0.0.0/8"], **extra}
        self.daemon = DaemonProcess(self.tmp, config, name="drain-daemon", files_dir=None, dyups_url=None).start()
        return self.daemon

    def drain(self, backend: int, *more: str) -> None:
        result = cli("drain", "app", self.pool[backend].address, "--files-output-path", str(self.files), *more)
        assert result.returncode == 0, result.stderr

    def undrain(self, backend: int) -> None:
        result = cli("undrain", "app", self.pool[backend].address, "--files-output-path", str(self.files))
        assert result.returncode == 0, result.stderr

    def served(self, requests: int = 12) -> set[str]:
        assert self.nginx is not None
        seen = set()
        for _ in range(requests):
            status, body = http_get(self.nginx.url(), timeout=3)
            seen.add(body.strip() if status == 200 else f"HTTP {status}")
        return seen

    def wait_served(self, expected: set[str], timeout: float = 10.0) -> None:
        def detail() -> str:
            return self.daemon.log_tail() if self.daemon else ""

        wait_until(lambda: self.served() == expected, timeout, f"nginx to serve exactly {sorted(expected)}", detail)

    def names(self, *indexes: int) -> set[str]:
        return {self.pool[i].name for i in indexes}

    def assert_no_requests_to(self, backend: int) -> None:
        before = self.pool[backend].requests
        self.served(20)
        assert self.pool[backend].requests == before, "a drained server got requests"

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()
        if self.nginx is not None:
            self.nginx.close()
        self.pool.stop()


@pytest.fixture
def rig(tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, nginx_bin: str) -> Iterator[Rig]:
    rig = Rig(tmp_path, zk, zk_client, f"{zk_root}/app")
    yield rig
    rig.close()


def test_drain_in_reload_mode_through_restarts_registry_changes_and_expiry(rig: Rig, nginx_bin: str) -> None:
    nginx = rig.nginx = LocalNginx(nginx_bin, workdir=rig.tmp / "nginx")
    nginx.write_config(f'include "{rig.files}/*.upstream";\n'
                       + server_block(free_port(), "location / {\n    proxy_pass http://app;\n}\n"))
    reload = {"nginx_reload": {"test_cmd": nginx.test_argv(), "reload_cmd": nginx.reload_argv(), "min_interval": 0.2}}
    daemon = rig.start_daemon(reload)
    wait_until(lambda: (rig.files / "app.upstream").exists(), 10, "the first file", daemon.log_tail)
    nginx.start()
    rig.wait_served(rig.names(0, 1, 2))

    rig.drain(0)
    rig.wait_served(rig.names(1, 2))
    rig.assert_no_requests_to(0)
    assert "server " + rig.pool[0].address + " down;" in (rig.files / "app.upstream").read_text()

    # A registry change to the same upstream keeps it drained.
    rig.client.create(f"{rig.znode}/{rig.pool[3].address}")
    rig.wait_served(rig.names(1, 2, 3))

    # A restart of the daemon, then of nginx: still drained.
    daemon.stop()
    rig.start_daemon(reload).wait_log("watching 1 upstreams")
    nginx.restart()
    rig.assert_no_requests_to(0)
    rig.wait_served(rig.names(1, 2, 3))

    rig.undrain(0)
    rig.wait_served(rig.names(0, 1, 2, 3))

    # --for runs out by itself.
    rig.drain(1, "--for", "2s")
    rig.wait_served(rig.names(0, 2, 3))
    rig.wait_served(rig.names(0, 1, 2, 3), timeout=8)


def test_drain_in_lua_mode(tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
                           nginx_bin: str) -> None:
    require(lua_missing())
    from reloader.localenv.luanginx import LuaNginx

    rig = Rig(tmp_path, zk, zk_client, f"{zk_root}/app")
    try:
        nginx = rig.nginx = LuaNginx(free_port(), rig.files, binary=nginx_bin, workdir=tmp_path / "nginx")
        nginx.write_config(server_block(free_port(), "location / {\n    proxy_pass http://app;\n}\n"))
        daemon = rig.start_daemon({"lua_url": nginx.api_url, "reconcile_interval": "1s"})
        wait_until(lambda: (rig.files / "app.upstream").exists(), 10, "the first file", daemon.log_tail)
        nginx.start()
        rig.wait_served(rig.names(0, 1, 2))
        workers = nginx.worker_pids()
        rig.drain(2)
        rig.wait_served(rig.names(0, 1))
        rig.assert_no_requests_to(2)
        assert nginx.worker_pids() == workers, "Lua mode drains without a reload"
        # nginx restarts: the file it reads has the server down before any POST.
        nginx.restart()
        rig.assert_no_requests_to(2)
        rig.undrain(2)
        rig.wait_served(rig.names(0, 1, 2))
    finally:
        rig.close()


def test_drain_in_dyups_mode(tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str) -> None:
    from tests.dyups_server import DyupsServer

    rig = Rig(tmp_path, zk, zk_client, f"{zk_root}/app")
    try:
        with DyupsServer(generation="stable", propagation_delay=0.0) as dyups:
            daemon = rig.start_daemon({"dyups_url": dyups.url})
            lines = {f"server {rig.pool[i].address}" for i in range(3)}

            def table() -> set[str]:
                return set(dyups.upstreams().get("app") or ())

            wait_until(lambda: table() == lines, 10, "dyups to serve b-1..b-3", daemon.log_tail)
            rig.drain(1)
            drained = lines - {f"server {rig.pool[1].address}"} | {f"server {rig.pool[1].address} down"}
            wait_until(lambda: table() == drained, 5, "dyups to have b-2 down", daemon.log_tail)
            rig.undrain(1)
            wait_until(lambda: table() == lines, 5, "dyups to have b-2 back", daemon.log_tail)
    finally:
        rig.close()


# =============================================================================
# Model: drains never change what the guards decide
# =============================================================================

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PORTS = list(range(1, 7))
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("registry"), st.sets(st.sampled_from(PORTS), max_size=6)),
        st.tuples(st.just("drains"), st.sets(st.sampled_from(PORTS), max_size=6)),
        st.tuples(st.just("wait"), st.sampled_from([1.0, 30.0, 61.0])),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(_operations)
def test_model_drains_are_invisible_to_the_guards(operations: list[tuple[str, Any]]) -> None:
    """Two pipelines get the same registry snapshots and clock; only one gets drains.

    At every step both have the same guard state (held servers, held drop) and
    publish the same servers but for ``down``; in the drained one, exactly the
    drained servers are down, unless that would leave none in traffic.
    """
    clock = [1000.0]
    plain: list[Upstream] = []
    drained: list[Upstream] = []
    guards = GuardSettings(max_drop=0.3, drop_hold=60.0, settle_after_reconnect=0.0)
    znode = ZnodeConfig(upstream="app", path="/app", key_path="zk_nodes.app", guards=guards)
    pipelines = (Pipeline([znode], plain.append, clock=lambda: clock[0]),
                 Pipeline([znode], drained.append, clock=lambda: clock[0]))
    drains: set[int] = set()
    for kind, value in operations:
        if kind == "registry":
            for pipeline in pipelines:
                pipeline.update("app", _children(*sorted(value)), "/app")
        elif kind == "drains":
            drains = set(value)
            pipelines[1].set_drains("app", {("10.0.0.1", port): None for port in drains})
        else:
            clock[0] += value
            for pipeline in pipelines:
                pipeline.recheck("app")
        first, second = (pipeline.status("app", clock[0]) for pipeline in pipelines)
        for key in ("held_servers", "holding_drop", "live_published", "live_instances", "servers"):
            assert first[key] == second[key], key
        if not plain:
            assert not drained
            continue
        assert drained, "a drain never holds back the first publish"
        a, b = plain[-1], drained[-1]
        assert [s.endpoint for s in a.servers] == [s.endpoint for s in b.servers]
        assert _down(a) == set()
        if second["drain_refused"]:
            assert _down(b) == set() and {s.port for s in b.servers} <= drains
        else:
            assert _down(b) == drains & {s.port for s in b.servers}
            assert any(not s.down for s in b.servers)
