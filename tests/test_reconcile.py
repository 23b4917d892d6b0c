"""Drift healing against the dyups test server, both API generations.

Real dyups builds lose POSTed state behind the daemon's back (reloads,
restarts, crashed workers). These tests wipe or change that state and check
the daemon puts it back within ``reconcile_interval`` plus 1 s, never touches
upstreams it does not manage, and keeps a frozen cluster at its last good
state. The daemon runs in-process here so heal times can be timed precisely.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kazoo.client import KazooClient

from reloader.config import parse_config
from reloader.daemon import Daemon
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.dyups_server import DyupsServer

RECONCILE = 1.0
WANTED = ("server 10.0.0.1:80", "server 10.0.0.2:80 weight=3")


@contextmanager
def running_daemon(settings: dict[str, Any]) -> Iterator[Daemon]:
    """Run a Daemon on a worker thread for the duration of the block."""
    daemon = Daemon(parse_config(settings, source="test"))
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(daemon.run()), daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(10)
        assert not thread.is_alive(), "daemon did not stop within 10 s"
        assert exit_codes == [0]


def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; return the seconds it took, or fail naming ``what``."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def register(client: KazooClient, root: str) -> str:
    path = f"{root}/app1"
    client.create(f"{path}/10.0.0.1:80", b"", makepath=True)
    client.create(f"{path}/10.0.0.2:80", b"3", makepath=True)
    return path


def settings_for(zk_hosts: str, path: str, dyups: DyupsServer, tmp_path: Any, **extra: Any) -> dict[str, Any]:
    return {
        "files_output_path": str(tmp_path / "out"),
        "dyups_url": dyups.url,
        "reconcile_interval": RECONCILE,
        "reassert_interval": 0,
        "zk_session_timeout": 2,
        "clusters": [{"zk_servers": zk_hosts, "zk_nodes": {"app1": path}}],
        **extra,
    }


def served(dyups: DyupsServer, worker: int | None = None) -> tuple[str, ...] | None:
    return dyups.upstreams(worker).get("app1")


@pytest.mark.parametrize("generation", ["stable", "tengine", "wip"])
def test_wiped_state_is_restored_within_the_reconcile_interval(
    generation: str, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, tmp_path: Any
) -> None:
    path = register(zk_client, zk_root)
    with DyupsServer(generation=generation) as dyups, running_daemon(settings_for(zk.hosts, path, dyups, tmp_path)):
        wait_until(lambda: served(dyups) == WANTED, 10, "the first POST")
        heal_times = []
        for wipe in (dyups.simulate_restart, dyups.simulate_reload):
            wipe()
            if generation == "wip" and wipe == dyups.simulate_reload:
                # The 2020 master keeps POSTed upstreams across a reload: nothing to heal.
                assert served(dyups) == WANTED
                continue
            assert served(dyups) is None
            heal_times.append(wait_until(lambda: served(dyups) == WANTED, RECONCILE + 1, "the wiped upstream"))
        print(f"{generation}: heal times after wipe {[round(t, 2) for t in heal_times]} s")


@pytest.mark.parametrize("wipe", ["restart", "reload"])
def test_a_wipe_whose_files_define_the_same_name_is_healed_within_the_reconcile_interval(
    wipe: str, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, tmp_path: Any
) -> None:
    """nginx comes back serving its files' app1: /list still names it, so only the closed connection tells.

    Idle passes read /list alone (the full /detail every 6th pass), so a heal
    within one reconcile interval shows the quick pass saw the reload or restart.
    """
    path = register(zk_client, zk_root)
    stale = ("server 10.9.9.9:80",)
    with DyupsServer(file_upstreams={"app1": list(stale)}) as dyups, \
            running_daemon(settings_for(zk.hosts, path, dyups, tmp_path)):
        wait_until(lambda: served(dyups) == WANTED, 10, "the first POST")
        lists = sum(1 for r in dyups.requests_log if r.path == "/list")
        wait_until(lambda: sum(1 for r in dyups.requests_log if r.path == "/list") >= lists + 2, 4 * RECONCILE,
                   "quick passes")
        getattr(dyups, f"simulate_{wipe}")()
        assert served(dyups) == stale
        took = wait_until(lambda: served(dyups) == WANTED, RECONCILE + 1, "the file's app1 to be replaced")
        print(f"{wipe} under the same name healed in {took:.2f} s")


@pytest.mark.parametrize("generation", ["stable", "wip"])
def test_an_upstream_changed_behind_the_daemons_back_is_put_back(
    generation: str, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, tmp_path: Any
) -> None:
    path = register(zk_client, zk_root)
    with DyupsServer(generation=generation) as dyups, running_daemon(settings_for(zk.hosts, path, dyups, tmp_path)):
        wait_until(lambda: served(dyups) == WANTED, 10, "the first POST")
        dyups.set_behind_back("app1", ["server 10.9.9.9:80"])
        dyups.set_behind_back("unmanaged", ["server 10.8.8.8:80"])
        took = wait_until(lambda: served(dyups) == WANTED, RECONCILE + 1, "the changed upstream to be put back")
        print(f"{generation}: changed upstream put back in {took:.2f} s")
        # Give one more reconcile pass a chance to misbehave, then check the
        # unmanaged upstream was never touched and nothing was deleted.
        passes = dyups_reads(dyups)
        wait_until(lambda: dyups_reads(dyups) > passes, RECONCILE + 1, "another reconcile pass")
        assert dyups.upstreams().get("unmanaged") == ("server 10.8.8.8:80",)
        assert not [r for r in dyups.requests_log if r.method == "DELETE"]
        assert not [r for r in dyups.requests_log if r.method == "POST" and r.path != "/upstream/app1"]


def dyups_reads(dyups: DyupsServer) -> int:
    return sum(1 for r in dyups.requests_log if r.method == "GET")


def test_periodic_reassert_heals_workers_that_disagree(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, tmp_path: Any
) -> None:
    path = register(zk_client, zk_root)
    with DyupsServer(generation="stable", workers=2) as dyups:
        settings = settings_for(zk.hosts, path, dyups, tmp_path, reconcile_interval=0, reassert_interval=1)
        with running_daemon(settings):
            wait_until(lambda: served(dyups, 0) == WANTED and served(dyups, 1) == WANTED, 10, "both workers")
            dyups.simulate_worker_crash(1)
            assert served(dyups, 1) is None
            # /detail answers from one worker, so only the re-assert can heal this.
            took = wait_until(lambda: served(dyups, 1) == WANTED, 1 + 1.5, "the crashed worker to be healed")
            print(f"crashed worker healed by re-assert in {took:.2f} s")


def test_zero_intervals_turn_reconciliation_off(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, tmp_path: Any
) -> None:
    path = register(zk_client, zk_root)
    with DyupsServer() as dyups:
        settings = settings_for(zk.hosts, path, dyups, tmp_path, reconcile_interval="0s")
        with running_daemon(settings):
            wait_until(lambda: served(dyups) == WANTED, 10, "the first POST")
            dyups.simulate_restart()
            with pytest.raises(AssertionError, match="timed out"):
                wait_until(lambda: served(dyups) is not None, 2.5, "a repair that must not happen")
            assert dyups_reads(dyups) == 0


def test_a_frozen_cluster_is_reasserted_with_its_last_good_state(
    zk_factory: Any, tmp_path: Any
) -> None:
    server: LocalZooKeeper = zk_factory()
    client = server.client()
    path = register(client, "/frozen")
    client.stop()
    with DyupsServer() as dyups:
        with running_daemon(settings_for(server.hosts, path, dyups, tmp_path)) as daemon:
            wait_until(lambda: served(dyups) == WANTED, 10, "the first POST")
            source = daemon.clusters[0]
            server.pause()
            wait_until(lambda: not source.freeze.is_open, 10, "the cluster to freeze")
            dyups.simulate_restart()
            took = wait_until(lambda: served(dyups) == WANTED, RECONCILE + 1, "the frozen upstream to be restored")
            print(f"frozen upstream restored in {took:.2f} s")
            file_text = (tmp_path / "out" / "app1.upstream").read_text()
            assert "10.0.0.2:80 weight=3" in file_text
            server.resume()
            wait_until(lambda: source.freeze.is_open, 15, "the cluster to thaw")


@pytest.mark.parametrize("generation", ["stable", "wip"])
def test_reconcile_parses_only_the_blocks_that_changed(generation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass parses a managed block only when its live text or its desired state changed since a clean pass."""
    from reloader.model import Server, Upstream
    from reloader.outputs import dyups as dyups_module
    from reloader.outputs.dyups import DyupsOutput

    parsed: list[str] = []
    real_parse_block = dyups_module.parse_block

    def counting_parse_block(api: str, block: str) -> Any:
        parsed.append(block)
        return real_parse_block(api, block)

    monkeypatch.setattr(dyups_module, "parse_block", counting_parse_block)
    with DyupsServer(generation=generation) as dyups:
        output = DyupsOutput(dyups.url, reconcile_interval=0, reassert_interval=0)
        try:
            for n in range(1, 6):
                output.publish(Upstream(f"app{n}", (Server("10.0.0.1", 80 + n), Server("10.0.0.2", 80)), live_count=2))
            assert output.pending == ()
            assert output.reconcile() == {}
            assert len(parsed) == 5, "the first pass compares every managed block"
            parsed.clear()
            assert output.reconcile() == {}
            assert parsed == [], "nothing changed on either side: nothing parsed"

            dyups.set_behind_back("app2", ["server 10.9.9.9:80"])
            dyups.set_behind_back("unmanaged", ["server 10.8.8.8:80"])
            repairs = output.reconcile()
            assert list(repairs) == ["app2"] and "10.9.9.9:80" in repairs["app2"]
            assert len(parsed) == 1, "only the changed managed block is parsed"
            assert dyups.upstreams()["app2"] == ("server 10.0.0.1:82", "server 10.0.0.2:80")
            assert dyups.upstreams()["unmanaged"] == ("server 10.8.8.8:80",)

            parsed.clear()
            output.publish(Upstream("app3", (Server("10.0.0.3", 80),), live_count=1))
            assert output.reconcile() == {}
            assert len(parsed) == 2, "app2 (repaired since) and app3 (a new desired state) are compared again"

            dyups.simulate_restart()
            repairs = output.reconcile()
            assert sorted(repairs) == [f"app{n}" for n in range(1, 6)]
            assert set(repairs.values()) == {"missing"}
            assert sorted(name for name in dyups.upstreams() if name.startswith("app")) == [
                f"app{n}" for n in range(1, 6)]
        finally:
            output.close()


@pytest.mark.timeout(60)
def test_a_sighup_that_changes_the_outputs_hands_every_state_to_the_new_ones(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, tmp_path: Any
) -> None:
    """Files only -> dyups -> Lua by SIGHUP: each new output gets every state at once, and files are re-rendered.

    Reconciliation and re-assert are off, so nothing but the hand-over itself
    can give the new output its state.
    """
    import yaml

    from reloader.config import load_config

    path = register(zk_client, zk_root)
    config_path = tmp_path / "upstream_zk_nodes.conf"
    base = {
        "files_output_path": str(tmp_path / "out"),
        "reconcile_interval": 0,
        "reassert_interval": 0,
        "zk_session_timeout": 2,
        "clusters": [{"zk_servers": zk.hosts, "zk_nodes": {"app1": path}}],
    }
    config_path.write_text(yaml.safe_dump(base))
    file = tmp_path / "out" / "app1.upstream"
    with DyupsServer() as dyups:
        daemon = Daemon(load_config(config_path))
        exit_codes: list[int] = []
        thread = threading.Thread(target=lambda: exit_codes.append(daemon.run()), daemon=True)
        thread.start()
        try:
            wait_until(lambda: file.exists() and "10.0.0.2:80 weight=3" in file.read_text(), 10, "the file")
            config_path.write_text(yaml.safe_dump({**base, "dyups_url": dyups.url}))
            daemon.request_reload()
            wait_until(lambda: served(dyups) == WANTED, 5, "the new dyups output to get the state")

            # Lua mode: the files carry the balancer hook (the interface itself may be down).
            config_path.write_text(yaml.safe_dump({**base, "lua_url": "http://127.0.0.1:9"}))
            daemon.request_reload()
            wait_until(lambda: "balancer_by_lua" in file.read_text(), 5, "the file re-rendered with the Lua hook")
        finally:
            daemon.request_stop()
            thread.join(10)
        assert exit_codes == [0]
