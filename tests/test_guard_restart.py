"""The shrink guard's reference survives a restart, and a stalled process doubts its session.

End to end: a real daemon process, a real ZooKeeper, ``kill -9`` and
``SIGSTOP``. The guard's reference (the most usable servers served within
``drop_hold``) is what makes a drop impossible to walk around in steps; if a
restart forgot it, a crash-looping daemon (or one restarted by its
supervisor mid-incident) would publish the drop the guard was holding.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from kazoo.client import KazooClient

from reloader.localenv.ports import free_port
from reloader.localenv.tcpproxy import TcpProxy
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.test_faults import tiny_files_dir  # noqa: F401 (a fixture)
from tests.test_status import scrape
from tests.test_daemon import (  # noqa: F401 (daemons and files_dir are fixtures)
    DaemonProcess,
    cluster,
    create_children,
    daemons,
    files_dir,
    upstream_file,
    wait_until,
)

GUARDS = {"settle_after_reconnect": 0, "max_drop": "50%", "allowed_networks": ["10.0.0.0/8"]}


def test_a_restart_keeps_the_shrink_guards_reference(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
    daemons: Callable[..., DaemonProcess], files_dir: Path,
) -> None:
    path = f"{zk_root}/app"
    four = ["10.9.0.1:80", "10.9.0.2:80", "10.9.0.3:80", "10.9.0.4:80"]
    create_children(zk_client, path, {address: b"" for address in four})
    hold = 8.0
    config = cluster(zk.hosts, {"app": path}, drop_hold=f"{hold}s", **GUARDS)
    first = daemons(config)
    first.wait_file("app", upstream_file("app", *(f"server {a}" for a in four)))

    # 4 -> 2 is exactly max_drop: published. The reference stays 4 for drop_hold.
    dropped_at = time.monotonic()
    for address in four[:2]:
        zk_client.delete(f"{path}/{address}")
    first.wait_file("app", upstream_file("app", "server 10.9.0.3:80", "server 10.9.0.4:80"))
    # 4 -> 1 is more than max_drop of 4: held, the two published servers stay.
    zk_client.delete(f"{path}/{four[2]}")
    first.wait_log(r"holding a drop of 3 of 4 usable servers")
    first.kill()

    second = daemons(config)
    # The restarted daemon still holds against the 4 served before the crash...
    second.wait_log(r"holding a drop of 3 of 4 usable servers")
    assert second.read("app") == upstream_file("app", "server 10.9.0.3:80", "server 10.9.0.4:80"), second.log_tail()
    # ...until that reference is older than drop_hold; then 2 -> 1 is within max_drop.
    second.wait_file("app", upstream_file("app", "server 10.9.0.4:80"), timeout=hold + 10)
    released = time.monotonic() - dropped_at
    assert released >= hold * 0.9, f"released {released:.2f} s after the drop (drop_hold {hold} s)"
    second.stop()


def test_the_guard_record_is_never_behind_the_files(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
    daemons: Callable[..., DaemonProcess], files_dir: Path,
) -> None:
    """The record that keeps the reference is written before the file it explains, and read back at start."""
    path = f"{zk_root}/app"
    four = [f"10.9.1.{i}:80" for i in range(1, 5)]
    create_children(zk_client, path, {address: b"" for address in four})
    config = cluster(zk.hosts, {"app": path}, drop_hold="60s", **GUARDS)
    daemon = daemons(config)
    daemon.wait_file("app", upstream_file("app", *(f"server {a}" for a in four)))
    record = files_dir / ".reloader-guards.json"
    assert not record.exists(), "nothing is owed while no drop is within drop_hold"
    zk_client.delete(f"{path}/{four[0]}")
    daemon.wait_file("app", upstream_file("app", *(f"server {a}" for a in four[1:])))
    entries = json.loads(record.read_text())["upstreams"]["app"]
    assert [count for _, count in entries] == [4]
    until = entries[0][0]
    assert time.time() + 50 < until <= time.time() + 60
    assert record.stat().st_mtime_ns <= daemon.path("app").stat().st_mtime_ns
    assert oct(record.stat().st_mode & 0o777) == oct(0o644)
    daemon.stop()


def test_a_stalled_daemon_does_not_release_a_held_drop_on_a_stale_view(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
    daemons: Callable[..., DaemonProcess], files_dir: Path,
) -> None:
    """SIGSTOP past the hold and the session timeout while a drop is held; the servers come back meanwhile.

    At SIGCONT the hold's timer is long due, and the session is gone (the
    daemon's connection is black-holed, so kazoo only finds out after its own
    read timeout). Released on the view from before the stop, the hold would
    publish the drop though the registry has every server again: a stalled
    daemon doubts its session before anything else, and publishes nothing
    until ZooKeeper has answered again.
    """
    path = f"{zk_root}/app"
    four = [f"10.9.2.{i}:80" for i in range(1, 5)]
    create_children(zk_client, path, {address: b"" for address in four})
    hold = 2.0
    port = free_port()
    with TcpProxy(zk.port).start() as proxy:
        config = cluster(proxy.hosts, {"app": path}, drop_hold=f"{hold}s", listen=f"127.0.0.1:{port}", **GUARDS)
        daemon = daemons(config)
        everyone = upstream_file("app", *(f"server {a}" for a in four))
        daemon.wait_file("app", everyone)
        transaction = zk_client.transaction()
        for address in four[:3]:
            transaction.delete(f"{path}/{address}")
        transaction.commit()
        daemon.wait_log(r"holding a drop of 3 of 4 usable servers")
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            proxy.blackhole()
            create_children(zk_client, path, {address: b"" for address in four[:3]})
            # Past the hold and the session timeout (2 s): both the timer and the session are due.
            deadline = time.monotonic() + hold + 2.5
            wait_until(lambda: time.monotonic() >= deadline, "the stall to outlast the hold and the session")
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        first = daemon.wait_log(r"releasing the held drop|the process was stalled")
        assert "the process was stalled" in first[0], daemon.log_tail()
        assert scrape(port)[("nginx_upstream_reloader_process_stalls_total", frozenset())] == 1
        proxy.pass_through()
        daemon.wait_log(r"thawed", count=2)  # the start-up's, then the one after the stall
        daemon.wait_file("app", everyone)
        assert not daemon.log_lines(r"releasing the held drop|upstream app: 1 servers"), daemon.log_tail()
        daemon.stop()


def test_a_state_the_files_kept_longer_counts_until_they_moved_on(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
    daemons: Callable[..., DaemonProcess], tiny_files_dir: Path,
) -> None:
    """A full disk keeps the old file (4 servers) past drop_hold after 4 -> 2 was decided.

    nginx served those 4 until the disk had room again, so once the file
    holds 2, going to 1 is still a drop of 3 of the 4 served within drop_hold,
    not 1 of the 2 decided long ago.
    """
    path = f"{zk_root}/app"
    four = [f"10.9.3.{i}:80" for i in range(1, 5)]
    create_children(zk_client, path, {address: b"" for address in four})
    hold = 2.0
    daemon = daemons(cluster(zk.hosts, {"app": path}, drop_hold=f"{hold}s", retry_interval=0.2, **GUARDS),
                     files_dir=tiny_files_dir)
    daemon.wait_file("app", upstream_file("app", *(f"server {a}" for a in four)))
    filler = tiny_files_dir / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    transaction = zk_client.transaction()
    for address in four[:2]:
        transaction.delete(f"{path}/{address}")
    transaction.commit()
    daemon.wait_log(r"(?i)no space left")
    deadline = time.monotonic() + hold + 0.5
    wait_until(lambda: time.monotonic() >= deadline, "the decided 4 -> 2 to be older than drop_hold")
    filler.unlink()
    daemon.wait_file("app", upstream_file("app", *(f"server {a}" for a in four[2:])))
    zk_client.delete(f"{path}/{four[2]}")
    first = daemon.wait_log(r"holding a drop of 3 of 4|upstream app: 1 servers")
    assert "holding" in first[0], daemon.log_tail()
    daemon.stop()
