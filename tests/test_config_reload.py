"""Live config reload (SIGHUP) against real ZooKeeper and the dyups test server, the daemon as a process.

A valid new file is applied without dropping anything: new upstreams and
clusters start, removed ones stop, changed settings take effect, and an
upstream whose configuration did not change is not rewritten. An invalid
file changes nothing at all.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kazoo.client import KazooClient

from reloader.localenv.zookeeper import LocalZooKeeper
from tests.dyups_server import DyupsServer
from tests.test_daemon import (  # noqa: F401 - fixtures
    DaemonProcess,
    cluster,
    create_children,
    daemons,
    dyups,
    files_dir,
    posts,
    upstream_file,
    zk2_root,
)


def reload_with(daemon: DaemonProcess, config: Any) -> None:
    """Write ``config`` as the daemon's config file and send SIGHUP."""
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    daemon.config_path.write_text(text)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)


def fingerprint(path: Path) -> tuple[int, int, bytes]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


def test_reload_adds_and_removes_upstreams_without_touching_the_others(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess],
) -> None:
    for name, ip in (("app1", "10.0.0.1"), ("app2", "10.0.0.2"), ("app3", "10.0.0.3")):
        create_children(zk_client, f"{zk_root}/{name}", {f"{ip}:80": b""})
    nodes = {"app1": f"{zk_root}/app1", "app2": f"{zk_root}/app2"}
    daemon = daemons(cluster(zk.hosts, nodes), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    daemon.wait_both(dyups, "app2", "server 10.0.0.2:80")
    app1_before = fingerprint(daemon.path("app1"))

    reload_with(daemon, cluster(zk.hosts, {"app1": f"{zk_root}/app1", "app3": f"{zk_root}/app3"},
                                dyups_url=dyups.url))
    daemon.wait_both(dyups, "app3", "server 10.0.0.3:80")
    daemon.wait_log(r"config reloaded from .*: 2 upstreams in 1 clusters")
    daemon.wait_log(r"app2\.upstream belongs to no configured upstream; left in place")
    assert fingerprint(daemon.path("app1")) == app1_before, "an unchanged upstream is not rewritten"
    assert daemon.path("app2").exists(), "a removed upstream's file stays by default"

    # The removed upstream is no longer watched; the kept one still is.
    since = len(dyups.requests_log)
    zk_client.create(f"{zk_root}/app2/10.0.0.22:80")
    zk_client.create(f"{zk_root}/app1/10.0.0.11:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.11:80")
    assert "10.0.0.22" not in daemon.read("app2")
    assert posts(dyups, "app2", since) == []
    daemon.stop()


def test_an_invalid_reload_keeps_the_running_config_untouched(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess],
) -> None:
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": f"{zk_root}/app1"}), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    before = fingerprint(daemon.path("app1"))
    live_before = dyups.upstreams()["app1"]
    since = len(dyups.requests_log)

    broken = cluster(zk.hosts, {"app1": f"{zk_root}/app1", "Bad Name": "/x", "app2": "relative/path"},
                     max_drop="150%")
    reload_with(daemon, broken)
    daemon.wait_log(r"config reload refused: 3 problems; the running config stays as it is")
    log = daemon.log()
    assert "Bad Name" in log and "relative/path" in log and "max_drop" in log, "every problem is logged"
    assert fingerprint(daemon.path("app1")) == before
    assert dyups.upstreams()["app1"] == live_before
    assert posts(dyups, "app1", since) == []

    # Still running the old config: a change is served as before.
    zk_client.create(f"{zk_root}/app1/10.0.0.2:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
    daemon.stop()


def test_reload_applies_changed_options_and_prunes_removed_files_when_asked(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, daemons: Callable[..., DaemonProcess],
) -> None:
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    create_children(zk_client, f"{zk_root}/app2", {"10.0.0.2:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": f"{zk_root}/app1", "app2": f"{zk_root}/app2"}))
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80"))
    daemon.wait_file("app2", upstream_file("app2", "server 10.0.0.2:80"))

    changed = {"app1": {"path": f"{zk_root}/app1", "server_params": {"max_fails": 3}}}
    reload_with(daemon, cluster(zk.hosts, changed, prune_files=True))
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80 max_fails=3"))
    daemon.wait_log(r"app2\.upstream belongs to no configured upstream; removed \(prune_files\)")
    assert not daemon.path("app2").exists()
    daemon.stop()


def test_reload_starts_a_new_cluster_and_closes_a_removed_one(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, zk2: LocalZooKeeper,
    zk2_root: tuple[KazooClient, str], daemons: Callable[..., DaemonProcess],
) -> None:
    client_b, root_b = zk2_root
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    create_children(client_b, f"{root_b}/app2", {"10.0.2.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": f"{zk_root}/app1"}))
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80"))
    app1_before = fingerprint(daemon.path("app1"))

    both = {
        "zk_session_timeout": "2s", "settle_after_reconnect": 0, "max_drop": "100%",
        "clusters": [
            {"zk_servers": zk.hosts, "zk_nodes": {"app1": f"{zk_root}/app1"}},
            {"zk_servers": zk2.hosts, "zk_nodes": {"app2": f"{root_b}/app2"}},
        ],
    }
    reload_with(daemon, both)
    daemon.wait_file("app2", upstream_file("app2", "server 10.0.2.1:80"))
    assert fingerprint(daemon.path("app1")) == app1_before

    only_b = {**both, "clusters": both["clusters"][1:]}
    reload_with(daemon, only_b)
    daemon.wait_log(r"config reload: cluster .* is gone; closing its session")
    client_b.create(f"{root_b}/app2/10.0.2.2:80")
    daemon.wait_file("app2", upstream_file("app2", "server 10.0.2.1:80", "server 10.0.2.2:80"))
    daemon.stop()
