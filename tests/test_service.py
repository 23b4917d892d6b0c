"""The daemon as a service: it says what is wrong and keeps saying it, and talks to systemd.

Real ZooKeeper, the daemon as a process (or in-process where a reminder
interval has to be shortened), a real AF_UNIX datagram socket standing in for
systemd's ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from reloader import cluster as cluster_module
from reloader.config import parse_config
from reloader.daemon import Daemon
from reloader.localenv.ports import free_port
from tests.test_daemon import DaemonProcess, cluster, create_children, upstream_file, wait_until
from tests.test_daemon import daemons, files_dir  # noqa: F401 - fixtures


def test_an_unreachable_cluster_is_reported_after_the_session_timeout_and_then_reminded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_module, "UNREACHABLE_REMINDER", 0.5)
    port = free_port()  # nothing listens there: connections are refused
    config = parse_config({
        "zk_servers": f"127.0.0.1:{port}", "zk_session_timeout": "1s",
        "files_output_path": str(tmp_path / "out"), "zk_nodes": {"app1": "/svc/app1"},
    }, source="test")
    daemon = Daemon(config)
    thread = threading.Thread(target=daemon.run, daemon=True)
    with caplog.at_level(logging.WARNING, logger="reloader"):
        thread.start()
        try:
            wait_until(lambda: any("not connected 1 s after start" in r.getMessage() for r in caplog.records),
                       "the first warning", timeout=10)
            first = next(r.getMessage() for r in caplog.records if "not connected" in r.getMessage())
            assert f"127.0.0.1:{port}: Connection refused" in first, first
            assert "1 upstreams stay as their files have them" in first
            wait_until(lambda: sum("unreachable for" in r.getMessage() for r in caplog.records) >= 2,
                       "two reminders", timeout=10)
            reminder = next(r.getMessage() for r in caplog.records if "unreachable for" in r.getMessage())
            assert "1 upstreams frozen at their last good state" in reminder
        finally:
            daemon.request_stop()
            thread.join(10)
    assert not thread.is_alive()


def test_no_warning_when_the_cluster_connects_in_time(
    zk_client: KazooClient, zk_root: str, zk: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    config = parse_config({
        "zk_servers": zk.hosts, "zk_session_timeout": "1s",
        "files_output_path": str(tmp_path / "out"), "zk_nodes": {"app1": f"{zk_root}/app1"},
    }, source="test")
    daemon = Daemon(config)
    thread = threading.Thread(target=daemon.run, daemon=True)
    with caplog.at_level(logging.WARNING, logger="reloader"):
        thread.start()
        try:
            wait_until(lambda: (tmp_path / "out" / "app1.upstream").exists(), "the file")
            # The check runs one session timeout after start; wait past it on a condition of its own.
            wait_until(lambda: daemon.clusters[0].freeze.ever_open, "the first full read")
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:  # a window in which a wrong warning would show
                assert not any("not connected" in r.getMessage() for r in caplog.records)
                time.sleep(0.05)
        finally:
            daemon.request_stop()
            thread.join(10)


class NotifySocket:
    """A datagram socket where the daemon sends its sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return self.messages

    def close(self) -> None:
        self.sock.close()


def test_systemd_gets_ready_after_the_first_full_read_then_watchdog_pings_then_stopping(
    zk_client: KazooClient, zk_root: str, zk: Any, tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        daemon = daemons(
            cluster(zk.hosts, {"app1": f"{zk_root}/app1"}),
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"},
        )
        daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80"))
        wait_until(lambda: any(m.startswith("READY=1") for m in notify.collect()), "READY=1",
                   details=lambda: "\n".join(notify.messages))
        ready_at = next(i for i, m in enumerate(notify.messages) if m.startswith("READY=1"))
        assert "STATUS=watching 1 upstreams" in notify.messages[ready_at]
        wait_until(lambda: notify.collect().count("WATCHDOG=1") >= 3, "three watchdog pings",
                   details=lambda: "\n".join(notify.messages))
        daemon.stop()
        assert "STOPPING=1" in notify.collect()
        assert [m for m in notify.messages if m.startswith("READY=1")] == [notify.messages[ready_at]]
    finally:
        notify.close()


def test_entries_with_the_same_hosts_share_one_session_and_one_znode_is_read_once(
    zk_client: KazooClient, zk_root: str, zk: Any, daemons: Callable[..., DaemonProcess],
) -> None:
    """The seed config's second shape often names one ensemble twice; it must cost one session."""
    create_children(zk_client, f"{zk_root}/shared", {"10.0.0.1:80": b"", "bad child!": b""})
    create_children(zk_client, f"{zk_root}/other", {"10.0.0.9:80": b""})
    config = [  # the list shape, exactly as the seed config has it
        {"zk_servers": zk.hosts, "zk_nodes": {"app1": f"{zk_root}/shared"}},
        {"zk_servers": zk.hosts, "zk_nodes": {"app2": f"{zk_root}/shared", "app3": f"{zk_root}/other"}},
    ]
    daemon = daemons(config)
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80"))
    daemon.wait_file("app2", upstream_file("app2", "server 10.0.0.1:80"))
    daemon.wait_file("app3", upstream_file("app3", "server 10.0.0.9:80"))
    log = daemon.log()
    assert "share one ZooKeeper session" in log
    assert len(daemon.log_lines(r"connected; reading")) == 1, "one session, not one per entry"
    assert len(daemon.log_lines(r"child 'bad child!' skipped")) == 1, "one znode, one warning"
    # Both upstreams of the shared znode follow one snapshot.
    zk_client.create(f"{zk_root}/shared/10.0.0.2:80")
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80", "server 10.0.0.2:80"))
    daemon.wait_file("app2", upstream_file("app2", "server 10.0.0.1:80", "server 10.0.0.2:80"))
    daemon.stop()


def test_a_file_of_an_unconfigured_upstream_is_reported_at_start_up(
    zk_client: KazooClient, zk_root: str, zk: Any, daemons: Callable[..., DaemonProcess], files_dir: Path,
) -> None:
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    files_dir.mkdir(parents=True)
    (files_dir / "gone.upstream").write_text(upstream_file("gone", "server 10.9.9.9:80"))
    daemon = daemons(cluster(zk.hosts, {"app1": f"{zk_root}/app1"}))
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80"))
    daemon.wait_log(r"gone\.upstream belongs to no configured upstream; left in place")
    assert (files_dir / "gone.upstream").exists()
    daemon.stop()


def test_systemd_ready_does_not_wait_for_a_cluster_that_cannot_connect(
    zk_client: KazooClient, zk_root: str, zk: Any, tmp_path: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    """One ensemble down at boot must not hold READY until systemd's start timeout kills the daemon."""
    from reloader.localenv.tcpproxy import TcpProxy

    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    notify = NotifySocket(tmp_path / "notify.sock")
    with TcpProxy(zk.port) as proxy:
        proxy.blackhole()  # connects are accepted and never answered: the worst case for a start-up
        try:
            config = {
                "zk_session_timeout": "2s",
                "clusters": [
                    {"name": "good", "zk_servers": zk.hosts, "zk_nodes": {"app1": f"{zk_root}/app1"}},
                    {"name": "down", "zk_servers": proxy.hosts, "zk_nodes": {"app2": f"{zk_root}/app2"}},
                ],
            }
            began = time.monotonic()
            daemon = daemons(config, env={"NOTIFY_SOCKET": str(notify.path)})
            # A SIGHUP during start-up must not announce READY on its own.
            daemon.wait_log(r"watching 2 upstreams in 2 clusters")
            daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            daemon.wait_log(r"config reloaded from")
            daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80"))
            wait_until(lambda: any(m.startswith("READY=1") for m in notify.collect()), "READY=1", timeout=15,
                       details=lambda: "\n".join(notify.messages) + daemon.log_tail())
            took = time.monotonic() - began
            messages = notify.messages
            ready_at = next(i for i, m in enumerate(messages) if m.startswith("READY=1"))
            before = messages[:ready_at]
            # While it waited, systemd was told for what, and given more time.
            assert any(m.startswith("STATUS=starting: waiting for") and "cluster down (connecting)" in m
                       for m in before), messages
            assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in before), messages
            assert "RELOADING=1" not in before, messages
            # READY names the cluster still missing.
            assert "STATUS=watching 2 upstreams; not read yet (unreachable?): cluster down" in messages[ready_at]
            assert took < 2 + 5, f"READY after {took:.1f} s"
            print(f"READY with one ensemble black-holed: {took:.2f} s after start (session timeout 2 s)")
            # When the ensemble comes back, STATUS says everything is read.
            proxy.pass_through()
            proxy.refuse()  # reset the black-holed connections so the client reconnects
            proxy.pass_through()
            wait_until(lambda: "STATUS=watching 2 upstreams" in notify.collect(), "STATUS once both are read",
                       timeout=20, details=lambda: "\n".join(notify.messages) + daemon.log_tail())
            daemon.stop()
        finally:
            notify.close()
