"""Fault suite: nothing slow or broken holds up the rest, and no publish collapses an upstream.

Black-box tests of the daemon as a real process (``DaemonProcess`` from
``test_daemon``) against real ZooKeeper servers, a real ZooKeeper ensemble,
the dyups test server, a hung dyups (``HangingServer``) and a switchable TCP
proxy in front of ZooKeeper for the daemon only (``TcpProxy``). Settings are
short (2 s sessions, 2-5 s guard windows) so the file runs in well under two
minutes.

Every figure a scenario measures (lowest published count, latencies, exit
times, heal times) is printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import errno
import math
import os
import random
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl

from reloader.localenv.ensemble import LocalEnsemble
from reloader.localenv.tcpproxy import TcpProxy
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.dyups_server import DyupsServer
from tests.hangingserver import HangingServer
from tests.test_daemon import (  # noqa: F401 (daemons, dyups and files_dir are fixtures)
    SESSION_TIMEOUT,
    DaemonProcess,
    by_host_port,
    cluster,
    create_children,
    daemons,
    dyups,
    files_dir,
    posts,
    upstream_file,
    wait_until,
)

#: Guards off, for scenarios about something else.
NO_GUARDS: dict[str, Any] = {"settle_after_reconnect": 0, "max_drop": "100%", "drop_hold": 0}
FILE_LINE = re.compile(r"upstream [a-z0-9][a-z0-9._-]* \{\n(?:    server [^\n;{}]+;\n)+\}\n")
TEMPORARY = re.compile(r"\..+\.upstream\..+\.tmp")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def servers(*addresses: str) -> list[str]:
    """``server a;`` statements (without ';') in the renderer's order."""
    return by_host_port([f"server {address}" for address in addresses])


def count_in_file(text: str | None) -> int | None:
    if text is None:
        return None
    return sum(1 for line in text.splitlines() if line.startswith("    server "))


def time_until(condition: Callable[[], Any], what: str, timeout: float = 10.0, poll: float = 0.001) -> float:
    """Seconds until ``condition`` holds, polled every ``poll`` s; fail after ``timeout``."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - began


def change_latency(change: Callable[[], Any], condition: Callable[[], Any], what: str, timeout: float = 10.0) -> float:
    """Seconds from just before ``change()`` until ``condition`` holds (polled every ms)."""
    began = time.monotonic()
    change()
    time_until(condition, what, timeout)
    return time.monotonic() - began


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class Sampler:
    """Samples an upstream's published server count (file and dyups) on a thread until stopped.

    Records the lowest count seen on each side, and any moment at which
    dyups held a state that the file did not (dyups is read first, so a
    correct files-first daemon can never be caught out).
    """

    def __init__(self, daemon: DaemonProcess, name: str, dyups_server: DyupsServer | None) -> None:
        self.daemon = daemon
        self.name = name
        self.dyups = dyups_server
        self.lowest_file: int | None = None
        self.lowest_dyups: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.dyups is not None:
                live = self.dyups.upstreams().get(self.name)
                if live is not None:
                    self.lowest_dyups = len(live) if self.lowest_dyups is None else min(self.lowest_dyups, len(live))
            count = count_in_file(self.daemon.read(self.name))
            if count is not None:
                self.lowest_file = count if self.lowest_file is None else min(self.lowest_file, count)
            self.samples += 1
            self._stop.wait(0.005)


@pytest.fixture
def proxies() -> Iterator[Callable[[int], TcpProxy]]:
    """``make(target_port)`` starts a TcpProxy; all are closed at teardown."""
    made: list[TcpProxy] = []

    def make(target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_port).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def client_of() -> Iterator[Callable[[str], KazooClient]]:
    """``connect(hosts)`` returns a started kazoo client that retries its connection quickly."""
    made: list[KazooClient] = []

    def connect(hosts: str) -> KazooClient:
        client = KazooClient(hosts=hosts, timeout=4.0,
                             connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 0.5},
                             command_retry={"max_tries": -1, "delay": 0.1, "max_delay": 0.5, "deadline": 20})
        client.start(timeout=20)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.stop()
        client.close()


# ---------------------------------------------------------------------------
# 1. Session expiry, then re-registration over several seconds: the settle window
# ---------------------------------------------------------------------------


def test_session_expiry_with_gradual_reregistration_never_shrinks_during_settle(
    zk_factory: Callable[..., LocalZooKeeper], proxies: Callable[[int], TcpProxy], dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    server = zk_factory()
    proxy = proxies(server.port)
    registrar = server.client()
    try:
        path = "/svc/app1"
        old = [f"10.0.1.{i}:80" for i in range(1, 21)]
        create_children(registrar, path, {address: b"" for address in old})
        # The shrink guard is off: the settle window alone must keep the upstream whole.
        config = cluster(proxy.hosts, {"app1": path}, settle_after_reconnect=5, max_drop="100%", drop_hold=0,
                         reassert_interval=0)
        daemon = daemons(config, dyups_url=dyups.url)
        daemon.wait_both(dyups, "app1", *servers(*old))

        with Sampler(daemon, "app1", dyups) as sampler:
            proxy.blackhole()
            # ZooKeeper closes a connection when it expires its session: the
            # daemon's session is gone on the server now.
            wait_until(lambda: proxy.target_closes >= 1, "ZooKeeper to expire the daemon's session", 15,
                       daemon.log_tail)
            # The instances' sessions expired too (their ephemerals are gone);
            # 5 came back before the daemon did.
            transaction = registrar.transaction()
            for address in old[5:]:
                transaction.delete(f"{path}/{address}")
            transaction.commit()
            accepted = proxy.accepted
            proxy.pass_through()
            wait_until(lambda: proxy.accepted > accepted and proxy.connections > 0,
                       "the daemon to reconnect", 15, daemon.log_tail)
            # The rest re-register one by one over ~3.75 s (inside the 5 s
            # window); one comes back on a new address.
            new = [*old[:19], "10.0.2.1:80"]
            for address in new[5:]:
                registrar.create(f"{path}/{address}")
                time.sleep(0.25)  # pacing the registrations, not synchronisation
            daemon.wait_both(dyups, "app1", *servers(*new), timeout=15)
        print(f"settle: session transitions logged: {re.findall(r'session (SUSPENDED|LOST|CONNECTED)', daemon.log())}")
        print(f"settle: lowest published count during the outage and re-registration: "
              f"file {sampler.lowest_file}, dyups {sampler.lowest_dyups} (pre-outage 20, {sampler.samples} samples)")
        assert sampler.lowest_file is not None and sampler.lowest_file >= 20, (
            f"the file fell to {sampler.lowest_file} servers\n{daemon.log_tail()}")
        assert sampler.lowest_dyups is not None and sampler.lowest_dyups >= 20, (
            f"dyups fell to {sampler.lowest_dyups} servers\n{daemon.log_tail()}")
        nginx_check(files_dir)
        daemon.stop()
    finally:
        registrar.stop()
        registrar.close()


# ---------------------------------------------------------------------------
# 2. The shrink guard
# ---------------------------------------------------------------------------


def test_shrink_guard_holds_a_large_drop_and_publishes_a_small_one(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    everyone = [f"10.0.3.{i}:80" for i in range(1, 21)]
    create_children(zk_client, path, {address: b"" for address in everyone})
    hold = 2.0
    config = cluster(zk.hosts, {"app1": path}, settle_after_reconnect=0, max_drop="50%", drop_hold=hold,
                     reassert_interval=0)
    daemon = daemons(config, dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", *servers(*everyone))

    # 40% at once is under max_drop: published at once.
    transaction = zk_client.transaction()
    for address in everyone[12:]:
        transaction.delete(f"{path}/{address}")
    took = change_latency(transaction.commit,
                          lambda: daemon.read("app1") == upstream_file("app1", *servers(*everyone[:12])),
                          "the 40% drop to reach the file", timeout=hold)
    daemon.wait_both(dyups, "app1", *servers(*everyone[:12]), timeout=1.0)
    print(f"shrink guard: a 40% drop reached the file in {ms(took)}")

    create_children(zk_client, path, {address: b"" for address in everyone[12:]})
    daemon.wait_both(dyups, "app1", *servers(*everyone))

    # 19 of 20 at once: held for drop_hold, then published.
    transaction = zk_client.transaction()
    for address in everyone[1:]:
        transaction.delete(f"{path}/{address}")
    removed_at = time.monotonic()
    transaction.commit()
    dyups_while_held: set[int] = set()

    def published() -> bool:
        # dyups first, then the file: a dyups count only counts as "seen while
        # held" if the file still had 20 after it was taken. On the last poll
        # the file and then dyups may both have moved since the poll before.
        in_dyups = len(dyups.upstreams().get("app1", ()))
        if count_in_file(daemon.read("app1")) != 20:
            return True
        dyups_while_held.add(in_dyups)
        return False

    time_until(published, "the 95% drop to be published", timeout=hold + 5)
    held = time.monotonic() - removed_at
    daemon.wait_both(dyups, "app1", *servers(everyone[0]), timeout=2.0)
    print(f"shrink guard: a 95% drop was held {held:.2f} s (drop_hold {hold} s); "
          f"dyups counts seen while held: {sorted(dyups_while_held)}")
    # Files first: dyups cannot have had the small set while the file still had 20.
    assert dyups_while_held == {20}, sorted(dyups_while_held)
    assert held >= hold * 0.9, f"held only {held:.2f} s\n{daemon.log_tail()}"
    assert held <= hold + 2.0, f"held {held:.2f} s\n{daemon.log_tail()}"
    nginx_check(files_dir)
    daemon.stop()


# ---------------------------------------------------------------------------
# 3. One cluster black-holed mid-resync; another keeps its latency
# ---------------------------------------------------------------------------


def test_cluster_black_holed_mid_resync_does_not_delay_another(
    zk_factory: Callable[..., LocalZooKeeper], proxies: Callable[[int], TcpProxy], dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    zka, zkb = zk_factory(), zk_factory()
    proxy = proxies(zka.port)
    client_a, client_b = zka.client(), zkb.client()
    try:
        a_nodes = {f"a{i:03d}": f"/svc/a{i:03d}" for i in range(50)}
        for name, path in a_nodes.items():
            client_a.ensure_path(path)
            transaction = client_a.transaction()
            for j in range(4):
                transaction.create(f"{path}/10.1.{int(name[1:])}.{j + 1}:80", b'{"note": "' + b"x" * 100 + b'"}')
            transaction.commit()
        create_children(client_b, "/svc/b1", {"10.2.0.1:80": b""})
        config = {
            "zk_session_timeout": SESSION_TIMEOUT,
            "reassert_interval": 0,
            **NO_GUARDS,
            "clusters": [
                {"zk_servers": proxy.hosts, "zk_nodes": a_nodes},
                {"zk_servers": zkb.hosts, "zk_nodes": {"b1": "/svc/b1"}},
            ],
        }
        daemon = daemons(config, dyups_url=dyups.url)
        daemon.wait_both(dyups, "b1", "server 10.2.0.1:80")
        wait_until(lambda: all(daemon.read(name) for name in a_nodes), "every file of cluster A", 20,
                   daemon.log_tail)

        # Cut A's connection and change every znode of A meanwhile; the
        # reconnect carries 1500 bytes (the handshake and the first of the
        # events the re-registered watches fire, or replies of the re-read),
        # then goes silent.
        proxy.refuse()
        for name, path in a_nodes.items():
            client_a.create(f"{path}/10.1.{int(name[1:])}.9:80", b"")
        proxy.blackhole_after(1500)
        proxy.pass_through()
        assert proxy.budget_spent.wait(15), f"the daemon never re-read cluster A\n{daemon.log_tail()}"

        b_servers = ["server 10.2.0.1:80"]
        latencies = []
        for i in range(1, 6):
            b_servers.append(f"server 10.2.1.{i}:80")
            expected = upstream_file("b1", *by_host_port(b_servers))
            latencies.append(change_latency(lambda: client_b.create(f"/svc/b1/10.2.1.{i}:80"),
                                            lambda: daemon.read("b1") == expected, f"b1 change {i}"))
        print(f"cluster B while A hangs mid-resync: create -> file {', '.join(ms(t) for t in latencies)} "
              f"(median {ms(statistics.median(latencies))}, max {ms(max(latencies))})")
        assert statistics.median(latencies) < 0.1, daemon.log_tail()
        assert max(latencies) < 1.0, daemon.log_tail()
        took = daemon.stop()
        print(f"cluster B while A hangs mid-resync: SIGTERM -> exit 0 in {took:.2f} s")
        nginx_check(files_dir)
    finally:
        for client in (client_a, client_b):
            client.stop()
            client.close()


# ---------------------------------------------------------------------------
# 4. dyups black-holed: files keep their latency; SIGTERM stays prompt
# ---------------------------------------------------------------------------


def test_hung_dyups_does_not_delay_files_and_sigterm_is_prompt(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, daemons: Callable[..., DaemonProcess],
    files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    names = ("app1", "app2", "app3")
    files_dir.mkdir()
    for k, name in enumerate(names, start=1):
        create_children(zk_client, f"{zk_root}/{name}", {f"10.0.{k}.1:80": b""})
        (files_dir / f"{name}.upstream").write_text(upstream_file(name, f"server 10.0.{k}.1:80"))
    config = cluster(zk.hosts, {name: f"{zk_root}/{name}" for name in names}, reassert_interval=0,
                     reconcile_interval=1, **NO_GUARDS)
    with HangingServer() as hung:
        # At start-up: the seeded states go to a dyups that never answers.
        first = daemons(config, dyups_url=hung.url)
        assert hung.received.wait(10), f"the daemon never reached dyups\n{first.log_tail()}"
        at_start = first.stop()
        print(f"hung dyups: SIGTERM at start-up -> exit 0 in {at_start:.2f} s")

        hung.received.clear()
        daemon = daemons(config, dyups_url=hung.url)
        assert hung.received.wait(10), f"the daemon never reached dyups\n{daemon.log_tail()}"
        current = {"app2": ["server 10.0.2.1:80"], "app3": ["server 10.0.3.1:80"]}
        latencies = []
        for i in range(30):
            name = "app2" if i % 2 == 0 else "app3"
            k = 2 if name == "app2" else 3
            current[name].append(f"server 10.0.{k}.{i + 10}:80")
            expected = upstream_file(name, *by_host_port(current[name]))
            latencies.append(change_latency(lambda: zk_client.create(f"{zk_root}/{name}/10.0.{k}.{i + 10}:80"),
                                            lambda: daemon.read(name) == expected, f"change {i} to {name}"))
        print(f"hung dyups: create -> file over {len(latencies)} changes: p99 {ms(p99(latencies))}, "
              f"median {ms(statistics.median(latencies))}, max {ms(max(latencies))}")
        running = daemon.stop()
        print(f"hung dyups: SIGTERM while running -> exit 0 in {running:.2f} s")
        assert p99(latencies) < 0.05, daemon.log_tail()
    nginx_check(files_dir)


# ---------------------------------------------------------------------------
# 5. A child the daemon may not read
# ---------------------------------------------------------------------------


def test_acl_protected_child_is_skipped_and_the_cluster_still_thaws(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, proxies: Callable[[int], TcpProxy],
    dyups: DyupsServer, daemons: Callable[..., DaemonProcess], files_dir: Path,
    nginx_check: Callable[[Path], None],
) -> None:
    proxy = proxies(zk.port)
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b"", "10.0.0.2:80": b""})
    secret = "secret-instance"
    zk_client.create(f"{path}/{secret}", b'{"host": "10.0.0.66", "port": 80}',
                     acl=[make_digest_acl("owner", "not-the-daemon", all=True)])
    daemon = daemons(cluster(proxy.hosts, {"app1": path}, reassert_interval=0, **NO_GUARDS), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")

    zk_client.create(f"{path}/10.0.0.3:80")
    zk_client.set(f"{path}/10.0.0.1:80", b"5")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80 weight=5", "server 10.0.0.2:80", "server 10.0.0.3:80")
    warnings = [line for line in daemon.log_lines(re.escape(path)) if secret in line and "WARNING" in line]
    assert len(warnings) == 1, f"expected one warning naming {path} and {secret}: {warnings}\n{daemon.log_tail()}"

    # A reconnect re-reads the cluster, the protected child included; it must still thaw.
    accepted = proxy.accepted
    proxy.refuse()
    zk_client.delete(f"{path}/10.0.0.2:80")
    zk_client.create(f"{path}/10.0.0.4:80", b"2")
    proxy.pass_through()
    wait_until(lambda: proxy.accepted > accepted, "the daemon to reconnect", 15, daemon.log_tail)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80 weight=5", "server 10.0.0.3:80", "server 10.0.0.4:80 weight=2")
    zk_client.create(f"{path}/10.0.0.5:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80 weight=5", "server 10.0.0.3:80",
                     "server 10.0.0.4:80 weight=2", "server 10.0.0.5:80")
    assert "10.0.0.66" not in (daemon.read("app1") or "")
    nginx_check(files_dir)
    daemon.stop()


# ---------------------------------------------------------------------------
# 6. nginx restarted: a reconcile heals it
# ---------------------------------------------------------------------------


def test_nginx_restart_is_healed_by_a_reconcile(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path,
) -> None:
    reconcile = 1.0
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b"", "10.0.0.2:80": b"3"})
    daemon = daemons(cluster(zk.hosts, {"app1": path}, reconcile_interval=reconcile, reassert_interval=600,
                             **NO_GUARDS), dyups_url=dyups.url)
    wanted = ("server 10.0.0.1:80", "server 10.0.0.2:80 weight=3")
    daemon.wait_both(dyups, "app1", *wanted)

    dyups.simulate_restart()
    assert "app1" not in dyups.upstreams()
    instant = time_until(lambda: dyups.upstreams().get("app1") == wanted, "the heal after a restart",
                         timeout=reconcile + 5, poll=0.005)

    # A restart with a window in which the interface refuses connections.
    dyups.stop()
    dyups.simulate_restart()
    time.sleep(1.2)  # the length of the outage, not synchronisation
    dyups.start()
    windowed = time_until(lambda: dyups.upstreams().get("app1") == wanted, "the heal after a stop/start",
                          timeout=reconcile + 5, poll=0.005)
    print(f"nginx restart healed by reconcile (interval {reconcile} s): instant restart {instant:.2f} s, "
          f"after a 1.2 s outage {windowed:.2f} s")
    assert instant <= reconcile + 1, daemon.log_tail()
    assert windowed <= reconcile + 1, daemon.log_tail()
    daemon.stop()


# ---------------------------------------------------------------------------
# 7. A 3-node ensemble: leader failover, quorum loss
# ---------------------------------------------------------------------------


@pytest.fixture
def ensemble(zookeeper_installed: None) -> Iterator[LocalEnsemble]:
    with LocalEnsemble() as started:
        yield started


def test_ensemble_leader_failover_and_quorum_loss(
    ensemble: LocalEnsemble, client_of: Callable[[str], KazooClient], dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    client = client_of(ensemble.hosts)
    path = "/svc/app1"
    create_children(client, path, {"10.0.0.1:80": b"", "10.0.0.2:80": b""})
    daemon = daemons(cluster(ensemble.hosts, {"app1": path}, reassert_interval=0, reconcile_interval=1,
                             **NO_GUARDS), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")

    old_leader = ensemble.leader()
    ensemble.kill(old_leader)
    began = time.monotonic()
    new_leader = ensemble.leader()
    client.retry(client.create, f"{path}/10.0.0.3:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80", "server 10.0.0.3:80", timeout=15)
    print(f"ensemble: leader {old_leader} killed, node {new_leader} leads; "
          f"the next change reached file and dyups {time.monotonic() - began:.2f} s after the kill")
    ensemble.start(old_leader)

    # Quorum lost: two of three voters killed.
    text, stat = daemon.path("app1").read_bytes(), daemon.path("app1").stat()
    live = dyups.upstreams()["app1"]
    leader = ensemble.leader()
    other = next(i for i in range(3) if i != leader and i != old_leader)
    ensemble.kill(leader)
    ensemble.kill(other)
    lost_at = time.monotonic()
    while time.monotonic() - lost_at < 5.0:  # over two session timeouts
        assert daemon.path("app1").read_bytes() == text
        now = daemon.path("app1").stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
        assert dyups.upstreams()["app1"] == live, dyups.describe()
        assert daemon.running, daemon.log_tail()
        time.sleep(0.02)

    ensemble.start(other)
    back_at = time.monotonic()
    client.retry(client.create, f"{path}/10.0.0.4:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80", "server 10.0.0.3:80",
                     "server 10.0.0.4:80", timeout=20)
    print(f"ensemble: quorum lost for {back_at - lost_at:.1f} s with files and dyups unchanged; "
          f"a change after it returned reached file and dyups in {time.monotonic() - back_at:.2f} s")
    nginx_check(files_dir)
    daemon.stop()


# ---------------------------------------------------------------------------
# 8. kill -9 during heavy churn
# ---------------------------------------------------------------------------


def test_kill9_during_churn_leaves_complete_files_and_no_temporaries(
    zk: LocalZooKeeper, zk_root: str, client_of: Callable[[str], KazooClient],
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    names = [f"u{i}" for i in range(4)]
    writer = client_of(zk.hosts)
    for k, name in enumerate(names):
        create_children(writer, f"{zk_root}/{name}", {f"10.5.{k}.{j}:80": b"" for j in range(1, 4)})
    config = cluster(zk.hosts, {name: f"{zk_root}/{name}" for name in names}, **NO_GUARDS)
    stop = threading.Event()
    changes = [0]

    def churn() -> None:
        rng = random.Random(8)
        present = {name: {f"10.5.{k}.{j}:80" for j in range(1, 4)} for k, name in enumerate(names)}
        while not stop.is_set():
            k = rng.randrange(len(names))
            name = names[k]
            address = f"10.5.{k}.{rng.randrange(1, 40)}:80"
            if address in present[name] and len(present[name]) > 1:
                writer.delete(f"{zk_root}/{name}/{address}")
                present[name].discard(address)
            elif address not in present[name]:
                writer.create(f"{zk_root}/{name}/{address}")
                present[name].add(address)
            changes[0] += 1
            stop.wait(0.002)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    rng = random.Random(9)
    leftovers_seen = 0
    try:
        left: set[str] = set()
        for round_ in range(20):
            before = {p.name: p.stat().st_mtime_ns for p in files_dir.glob("*.upstream")} if files_dir.exists() else {}
            daemon = daemons(config)
            if left:
                wait_until(lambda: not (left & {p.name for p in files_dir.iterdir()}),
                           f"the temporaries {sorted(left)} to be removed at start", 10, daemon.log_tail)
            # Kill after a random number (1-8) of file replacements seen.
            writes = rng.randrange(1, 9)
            seen = [0, before]

            def written() -> bool:
                now = {p.name: p.stat().st_mtime_ns for p in files_dir.glob("*.upstream")}
                seen[0] += sum(1 for n, t in now.items() if seen[1].get(n) != t)
                seen[1] = now
                return seen[0] >= writes

            time_until(written, f"{writes} file writes in round {round_}", 15)
            daemon.kill()
            left = {p.name for p in files_dir.iterdir() if TEMPORARY.fullmatch(p.name)}
            leftovers_seen += len(left)
            for name in names:
                text = daemon.read(name)
                assert text is not None and FILE_LINE.fullmatch(text), f"round {round_}: {name} reads {text!r}"
            nginx_check(files_dir)
        final = daemons(config)
        final.wait_log(r"thawed|watching")
        if left:
            wait_until(lambda: not (left & {p.name for p in files_dir.iterdir()}),
                       "the last temporaries to be removed", 10, final.log_tail)
        final.stop()
    finally:
        stop.set()
        thread.join(5)
    print(f"kill -9: 20 kills during churn ({changes[0]} ZooKeeper changes); "
          f"{leftovers_seen} temporaries left by kills, all removed at the next start")
    assert not [p.name for p in files_dir.iterdir() if TEMPORARY.fullmatch(p.name)]


# ---------------------------------------------------------------------------
# 9. Smaller defects
# ---------------------------------------------------------------------------


def test_unresolvable_host_is_never_written(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    bad = "nonexistent.invalid:80"
    create_children(zk_client, path, {"10.0.0.1:80": b"", bad: b""})
    daemon = daemons(cluster(zk.hosts, {"app1": {"path": path, "format": "name"}}, **NO_GUARDS),
                     dyups_url=dyups.url)
    seen_bad = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if "nonexistent" in (daemon.read("app1") or ""):
                seen_bad.set()
            stop.wait(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
        zk_client.create(f"{path}/10.0.0.2:80")
        daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
    finally:
        stop.set()
        watcher.join(5)
    assert not seen_bad.is_set(), "the unresolvable host reached the file"
    assert not any(b"nonexistent" in (r.body or b"") for r in posts(dyups, "app1"))
    warnings = [line for line in daemon.log_lines("nonexistent") if "WARNING" in line]
    assert len(warnings) == 1, f"{warnings}\n{daemon.log_tail()}"
    nginx_check(files_dir)
    daemon.stop()


def test_unmanaged_unix_socket_upstream_does_not_break_reconcile(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, daemons: Callable[..., DaemonProcess],
) -> None:
    reconcile = 1.0
    php = ("server unix:/run/php/php-fpm.sock",)
    with DyupsServer(generation="stable", file_upstreams={"php": list(php)}) as server:
        server.set_behind_back("php-pool", ["unix:/run/php/php-fpm.sock"])
        path = f"{zk_root}/app1"
        create_children(zk_client, path, {"10.0.0.1:80": b""})
        daemon = daemons(cluster(zk.hosts, {"app1": path}, reconcile_interval=reconcile, reassert_interval=0,
                                 **NO_GUARDS), dyups_url=server.url)
        daemon.wait_both(server, "app1", "server 10.0.0.1:80")
        server.set_behind_back("app1", ["10.9.9.9:80"])
        healed = time_until(lambda: server.upstreams().get("app1") == ("server 10.0.0.1:80",),
                            "the drift of app1 to heal", timeout=reconcile + 5, poll=0.005)
        print(f"unix-socket upstream in the live state: app1's drift healed in {healed:.2f} s")
        assert healed <= reconcile + 1, daemon.log_tail()
        assert server.upstreams()["php"] == php and server.upstreams()["php-pool"] == php
        assert not [r for r in server.requests_log if r.method != "GET" and "php" in r.path]
        daemon.stop()


@pytest.fixture
def tiny_files_dir(files_dir: Path) -> Iterator[Path]:
    """``files_dir`` as a 256 KiB tmpfs (skips when mounting is not permitted)."""
    files_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(files_dir)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield files_dir
    finally:
        subprocess.run(["umount", "-l", str(files_dir)], capture_output=True)


def test_full_disk_holds_dyups_back_until_the_file_is_written(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], tiny_files_dir: Path, nginx_check: Callable[[Path], None],
) -> None:
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}, retry_interval=0.2, reassert_interval=0, **NO_GUARDS),
                     dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    old_text = daemon.read("app1")

    filler = tiny_files_dir / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    new = ("server 10.0.0.1:80", "server 10.0.0.2:80")
    new_body = b"server 10.0.0.1:80;server 10.0.0.2:80;"
    zk_client.create(f"{path}/10.0.0.2:80")
    daemon.wait_log(r"(?i)no space left")
    # Several retries later, still held back from dyups.
    retries_from = time.monotonic()
    while time.monotonic() - retries_from < 1.0:
        assert daemon.read("app1") == old_text
        assert dyups.upstreams()["app1"] == ("server 10.0.0.1:80",), dyups.describe()
        assert not any(r.body == new_body for r in posts(dyups, "app1")), dyups.describe()
        time.sleep(0.02)

    violations: list[tuple[Any, Any]] = []
    stop = threading.Event()

    def files_first() -> None:
        # dyups first, then the file: with files first, dyups can never be ahead.
        while not stop.is_set():
            live = dyups.upstreams().get("app1")
            text = daemon.read("app1")
            if live == new and text != upstream_file("app1", *new):
                violations.append((live, text))
            stop.wait(0.002)

    checker = threading.Thread(target=files_first, daemon=True)
    checker.start()
    filler.unlink()
    try:
        daemon.wait_both(dyups, "app1", *new, timeout=10)
    finally:
        stop.set()
        checker.join(5)
    assert not violations, violations[:3]
    nginx_check(tiny_files_dir)
    daemon.stop()


def test_a_new_file_keeps_the_mode_of_the_file_it_replaces(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path,
) -> None:
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}, **NO_GUARDS), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    os.chmod(daemon.path("app1"), 0o640)
    zk_client.create(f"{path}/10.0.0.2:80")
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
    mode = daemon.path("app1").stat().st_mode & 0o777
    assert mode == 0o640, oct(mode)
    daemon.stop()


def test_leftover_temporary_files_are_removed_at_start(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, dyups: DyupsServer,
    daemons: Callable[..., DaemonProcess], files_dir: Path,
) -> None:
    files_dir.mkdir()
    leftovers = [".x.upstream.123.tmp", ".app1.upstream.k2j3h4.tmp"]
    for name in leftovers:
        (files_dir / name).write_text("upstream x {\n    server 10.0")
    (files_dir / "notes.txt").write_text("not ours")
    path = f"{zk_root}/app1"
    create_children(zk_client, path, {"10.0.0.1:80": b""})
    daemon = daemons(cluster(zk.hosts, {"app1": path}, **NO_GUARDS), dyups_url=dyups.url)
    daemon.wait_both(dyups, "app1", "server 10.0.0.1:80")
    wait_until(lambda: not any((files_dir / name).exists() for name in leftovers), "the leftovers to go", 5,
               daemon.log_tail)
    assert (files_dir / "notes.txt").read_text() == "not ours"
    daemon.stop()
