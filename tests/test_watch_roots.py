"""Shared persistent watches (``watch_roots``) on a real ZooKeeper 3.8.

One persistent recursive watch on a root covers every configured znode under
it: the server holds 2 entries for it (``mntr`` files a recursive watch in
its data and its child table) plus the one-shot children watch each znode's
list sets, so N znodes cost N + 2 instead of 2N. Everything the per-znode
watches promise still holds: changes reach the published state, a quiet blip
reads nothing, a blip with changes reads what changed, an expiry reads in
full, a reload adds and removes znodes (and roots), a root the daemon may
not read falls back to per-znode watches, and classic mode ignores roots.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from reloader.cluster import ClusterWorker
from reloader.config import ClusterConfig, ConfigError, parse_config
from reloader.localenv.zkproxy import ZkFrameProxy
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.model import Upstream
from reloader.sources.kazoo_handler import hands_on
from reloader.sources.kazoo_protocol import Resumption, WatchingKazooClient
from reloader.sources.watchroots import WatchPlan, targets

pytestmark = pytest.mark.timeout(90)

READS = {3, 4, 8, 12, 22}  # exists, getData, getChildren, getChildren2, multiRead
EXISTS, GET_DATA, LISTS, MULTI_READ = 3, 4, {8, 12}, 22
ADD_WATCH, REMOVE_WATCHES = 106, 18


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return result


def watch_count(port: int) -> int:
    """``mntr``'s zk_watch_count: every watch the server holds, data and child tables."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"mntr")
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    (count,) = re.findall(r"^zk_watch_count\s+(\d+)$", out.decode(), re.MULTILINE)
    return int(count)


def cluster_config(hosts: str, nodes: dict[str, str], watch_mode: str = "auto",
                   roots: list[str] | None = None, **extra: Any) -> ClusterConfig:
    settings: dict[str, Any] = {"zk_servers": hosts, "zk_nodes": nodes, "settle_after_reconnect": 0,
                                "max_drop": "100%", "watch_mode": watch_mode, **extra}
    if roots is not None:
        settings["watch_roots"] = roots
    return parse_config(settings, source="test").clusters[0]


class Harness:
    """A cluster worker whose ZooKeeper connection goes through a :class:`ZkFrameProxy`."""

    def __init__(self, target_port: int, nodes: dict[str, str], watch_mode: str = "auto",
                 roots: list[str] | None = None, refuse: dict[int, int] | None = None,
                 client_factory: type[WatchingKazooClient] = WatchingKazooClient, **extra: Any) -> None:
        self.proxy = ZkFrameProxy(target_port, refuse=refuse).start()
        self.lock = threading.Lock()
        self.published: list[Upstream] = []
        self.resumptions: list[Resumption] = []
        self.worker = ClusterWorker(cluster_config(self.proxy.hosts, nodes, watch_mode, roots, **extra),
                                    self._publish, session_timeout=8.0, client_factory=client_factory)
        client = self.worker.source.client
        assert isinstance(client, WatchingKazooClient)
        self.client = client
        client.add_resume_listener(self._resumed)

    def _publish(self, batch: list[Upstream]) -> None:
        with self.lock:
            self.published.extend(batch)

    @hands_on  # as the source's own listener: in the order the connection read it
    def _resumed(self, resumption: Resumption) -> None:
        with self.lock:
            self.resumptions.append(resumption)

    def start(self) -> Harness:
        self.worker.start()
        return self

    def reconfigure(self, nodes: dict[str, str], roots: list[str] | None = None) -> None:
        self.worker.reconfigure(cluster_config(self.proxy.hosts, nodes, self.client.watch_mode, roots), [])

    def latest(self, name: str) -> dict[str, int] | None:
        with self.lock:
            states = [{s.address: s.weight for s in up.servers} for up in self.published if up.name == name]
        return states[-1] if states else None

    def wait_for(self, wants: dict[str, dict[str, int]], timeout: float = 20.0) -> None:
        wait_until(lambda: all(self.latest(name) == want for name, want in wants.items()), timeout,
                   f"{wants}; last published {[(n, self.latest(n)) for n in wants]}")

    def blip(self, while_away: Callable[[], None] = lambda: None) -> tuple[int, Resumption]:
        thaws = self.worker.freeze.thaws
        with self.lock:
            reports = len(self.resumptions)
        self.proxy.hold()
        wait_until(lambda: not self.worker.freeze.is_open, 10, "the cluster to freeze")
        while_away()
        connection = self.proxy.accepted + 1
        self.proxy.release()
        wait_until(lambda: self.worker.freeze.thaws > thaws, 20, "the thaw")
        with self.lock:
            return connection, self.resumptions[reports]

    def requests_on(self, connection: int) -> list[int]:
        return [r.opcode for r in self.proxy.requests if r.connection >= connection]

    def reads_on(self, connection: int) -> list[int]:
        return [op for op in self.requests_on(connection) if op in READS]

    def close(self) -> None:
        self.worker.stop_event.set()
        self.worker.wake()
        self.worker.close_session()
        self.worker.join(time.monotonic() + 5)
        self.proxy.close()


@pytest.fixture
def harnesses(quiet_zk: LocalZooKeeper) -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.close()
    # The next test counts the server's watches from zero.
    wait_until(lambda: watch_count(quiet_zk.port) == 0, 10, "the closed sessions' watches to go")


def services(writer: KazooClient, root: str, counts: dict[str, int]) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """A znode per service under ``root`` with ``count`` host:port children: (zk_nodes, expected states)."""
    nodes, states = {}, {}
    for index, (name, count) in enumerate(counts.items()):
        path = f"{root}/{name}"
        writer.ensure_path(path)
        for k in range(count):
            writer.create(f"{path}/10.{index}.0.{k}:80", b"")
        nodes[name] = path
        states[name] = {f"10.{index}.0.{k}:80": 1 for k in range(count)}
    return nodes, states


def base(tag: str) -> str:
    return f"/{tag}-{time.monotonic_ns()}"


# -- the target: server watches per upstream -----------------------------------------------------------------------


def test_a_shared_root_costs_the_server_at_most_1_1_watches_per_upstream_and_serves_every_change(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness]) -> None:
    root = base("services")
    nodes, states = services(writer, root, {f"svc{i}": 3 for i in range(30)})
    writer.ensure_path(f"{root}/unconfigured")

    # Per znode, for comparison: a recursive watch each, filed twice.
    alone = Harness(quiet_zk.port, nodes)
    harnesses.append(alone)
    alone.start().wait_for(states)
    per_znode = wait_until(lambda: watch_count(quiet_zk.port) == 60 and 60, 10, "60 watches")
    alone.close()
    harnesses.remove(alone)
    wait_until(lambda: watch_count(quiet_zk.port) == 0, 10, "the per-znode session's watches to go")

    harness = Harness(quiet_zk.port, nodes, roots=[root])
    harnesses.append(harness)
    harness.start().wait_for(states)
    assert harness.client.persistent_watches() == {root: 1}
    # The root's recursive watch (2) and each znode's one-shot children watch (1).
    shared = wait_until(lambda: watch_count(quiet_zk.port) == 32 and 32, 10, "32 watches")
    assert shared / len(nodes) <= 1.1 < per_znode / len(nodes)
    adds = [r for r in harness.proxy.requests if r.opcode == ADD_WATCH]
    assert len(adds) == 1

    # Every kind of change under the root reaches the state; the sibling's and the grandchild's
    # churn read nothing. Events are taken in order: any read they caused is sent before the
    # reads of the changes after them, which the states wait for.
    reads = len([r for r in harness.proxy.requests if r.opcode in READS])
    writer.create(f"{nodes['svc1']}/10.1.0.9:80", b"")
    for k in range(5):
        writer.create(f"{root}/unconfigured/x{k}", b"")
        writer.set(f"{root}/unconfigured", str(k).encode())
        writer.create(f"{nodes['svc1']}/10.1.0.9:80/grandchild{k}", b"")
    writer.set(f"{nodes['svc2']}/10.2.0.0:80", b"4")
    writer.delete(f"{nodes['svc3']}/10.3.0.0:80")
    harness.wait_for({"svc1": {**states["svc1"], "10.1.0.9:80": 1}, "svc2": {**states["svc2"], "10.2.0.0:80": 4},
                      "svc3": {"10.3.0.1:80": 1, "10.3.0.2:80": 1}})
    sent = [r.opcode for r in harness.proxy.requests if r.opcode in READS][reads:]
    # svc1's new child read, svc2's changed child read, and one exists that settles svc3's deletion
    # (no list): nothing else.
    assert sorted(sent) == sorted([GET_DATA, GET_DATA, EXISTS]), sent


def test_a_znode_deleted_and_created_again_under_a_root(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness]) -> None:
    root = base("recreate")
    nodes, states = services(writer, root, {"a": 2, "b": 1})
    harness = Harness(quiet_zk.port, nodes, roots=[root])
    harnesses.append(harness)
    harness.start().wait_for(states)
    writer.delete(nodes["b"], recursive=True)
    wait_until(lambda: harness.worker.source.watches.get(nodes["b"]).exists is False, 10, "b to be found missing")
    writer.create(f"{nodes['b']}/10.1.0.9:80", b"", makepath=True)
    harness.wait_for({"b": {"10.1.0.9:80": 1}})
    assert harness.client.persistent_watches() == {root: 1}


@pytest.mark.parametrize("roots", [False, True], ids=["per-znode", "shared-root"])
def test_a_configured_znode_under_another_is_both_a_child_of_it_and_a_znode_of_its_own(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], roots: bool) -> None:
    root = base("nested")
    outer, inner = f"{root}/a", f"{root}/a/10.0.0.2:80"
    writer.create(f"{outer}/10.0.0.1:80", b"", makepath=True)
    harness = Harness(quiet_zk.port, {"a": outer, "b": inner}, roots=[root] if roots else None)
    harnesses.append(harness)
    harness.start().wait_for({"a": {"10.0.0.1:80": 1}})
    # One event, two znodes: a gains a child, and b comes into being.
    writer.create(f"{inner}/10.9.0.1:80", b"", makepath=True)
    harness.wait_for({"a": {"10.0.0.1:80": 1, "10.0.0.2:80": 1}, "b": {"10.9.0.1:80": 1}})


# -- blips and expiry ------------------------------------------------------------------------------------------------


def test_a_quiet_blip_under_a_root_sends_no_read(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness]) -> None:
    root = base("quiet")
    nodes, states = services(writer, root, {f"svc{i}": 4 for i in range(6)})
    harness = Harness(quiet_zk.port, nodes, roots=[root])
    harnesses.append(harness)
    harness.start().wait_for(states)
    published = len(harness.published)

    connection, report = harness.blip()

    assert report.resumed and not report.changed
    assert report.watches == 1 + 6  # the root, and each znode's children watch
    writer.create(f"{nodes['svc0']}/10.0.0.9:80", b"")  # a sentinel: its read comes after any the blip caused
    harness.wait_for({"svc0": {**states["svc0"], "10.0.0.9:80": 1}})
    assert harness.reads_on(connection) == [GET_DATA]
    assert ADD_WATCH not in harness.requests_on(connection)
    with harness.lock:
        assert [up.name for up in harness.published[published:]] == ["svc0"]


@pytest.mark.parametrize("roots", [False, True], ids=["per-znode", "shared-root"])
def test_a_blip_with_changes_under_a_root_ends_with_every_state_right(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], roots: bool) -> None:
    root = base("changes")
    nodes, states = services(writer, root, {"a": 3, "b": 3, "c": 3, "d": 10})
    nodes["late"] = f"{root}/late"  # configured, not there yet
    harness = Harness(quiet_zk.port, nodes, roots=[root] if roots else None)
    harnesses.append(harness)
    harness.start().wait_for(states)
    wait_until(lambda: harness.worker.source.watches.get(nodes["late"]).exists is False, 10, "late to be missing")

    def while_away() -> None:
        writer.create(f"{nodes['a']}/10.0.0.7:80", b"")
        writer.delete(f"{nodes['a']}/10.0.0.0:80")
        writer.set(f"{nodes['b']}/10.1.0.1:80", b"5")
        writer.delete(nodes["c"], recursive=True)
        writer.create(f"{nodes['c']}/10.2.0.7:80", b"2", makepath=True)
        writer.create(f"{nodes['late']}/10.9.0.1:80", b"", makepath=True)
        writer.create(f"{root}/unconfigured/x", b"", makepath=True)

    connection, report = harness.blip(while_away)
    assert report.resumed and report.changed
    harness.wait_for({
        "a": {"10.0.0.1:80": 1, "10.0.0.2:80": 1, "10.0.0.7:80": 1},
        "b": {"10.1.0.0:80": 1, "10.1.0.1:80": 5, "10.1.0.2:80": 1},
        "c": {"10.2.0.7:80": 2},
        "late": {"10.9.0.1:80": 1},
    })
    reads = harness.reads_on(connection)
    # Lists: a, c, and late (missing before, listed again in case it was created); every known
    # child checked in one multi-read (which finds b's change); the new children read.
    assert sum(op in LISTS for op in reads) == 3
    assert reads.count(MULTI_READ) == 1 and reads.count(GET_DATA) == 3
    # Later changes still arrive, on every kind of znode touched.
    writer.create(f"{nodes['late']}/10.9.0.2:80", b"")
    writer.delete(f"{nodes['late']}/10.9.0.1:80")
    writer.set(f"{nodes['d']}/10.3.0.0:80", b"4")
    harness.wait_for({"late": {"10.9.0.2:80": 1}, "d": {**states["d"], "10.3.0.0:80": 4}})


def test_an_expired_session_under_a_root_reads_in_full(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness]) -> None:
    root = base("expiry")
    nodes, states = services(writer, root, {"a": 3, "b": 4})
    harness = Harness(quiet_zk.port, nodes, roots=[root])
    harnesses.append(harness)
    harness.start().wait_for(states)
    session, password = harness.client.client_id
    thaws = harness.worker.freeze.thaws
    harness.proxy.hold()
    other = KazooClient(hosts=quiet_zk.hosts, client_id=(session, password))
    other.start(timeout=10)
    other.stop()
    other.close()
    writer.create(f"{nodes['a']}/10.0.0.5:80", b"")
    connection = harness.proxy.accepted + 1
    harness.proxy.release()
    wait_until(lambda: harness.worker.freeze.thaws > thaws, 20, "the thaw")
    harness.wait_for({"a": {**states["a"], "10.0.0.5:80": 1}, "b": states["b"]})
    assert harness.client.client_id[0] != session
    requests = harness.requests_on(connection)
    assert requests.count(ADD_WATCH) == 1 and harness.client.persistent_watches() == {root: 1}
    reads = harness.reads_on(connection)
    # The root's readability check, both lists, the new child, the known ones in one multi-read.
    assert sum(op in LISTS for op in reads) == 2
    assert reads.count(GET_DATA) == 2 and reads.count(MULTI_READ) == 1


# -- reloads -----------------------------------------------------------------------------------------------------------


def test_a_reload_adds_and_removes_znodes_under_a_root_and_the_last_one_takes_its_watch(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness],
        caplog: pytest.LogCaptureFixture) -> None:
    root, elsewhere = base("sighup"), base("outside")
    nodes, states = services(writer, root, {"a": 2, "b": 2, "c": 1})
    other, other_states = services(writer, elsewhere, {"x": 2})
    start = {"a": nodes["a"], "b": nodes["b"], "x": other["x"]}
    harness = Harness(quiet_zk.port, start, roots=[root])
    harnesses.append(harness)
    harness.start().wait_for({name: {**states, **other_states}[name] for name in start})
    assert harness.client.persistent_watches() == {root: 1, other["x"]: 1}
    # root (2) + a, b children watches (2) + x's own recursive watch (2, its children watch shares it)
    wait_until(lambda: watch_count(quiet_zk.port) == 6, 10, "6 watches")

    # Add c under the root: no new watch, c is read.
    added = len(harness.proxy.requests)
    harness.reconfigure({**start, "c": nodes["c"]}, roots=[root])
    harness.wait_for({"c": states["c"]})
    assert ADD_WATCH not in [r.opcode for r in harness.proxy.requests[added:]]
    writer.create(f"{nodes['c']}/10.2.0.5:80", b"")
    harness.wait_for({"c": {**states["c"], "10.2.0.5:80": 1}})

    # Remove a and b: the root stays while c is configured.
    harness.reconfigure({"c": nodes["c"], "x": other["x"]}, roots=[root])
    writer.create(f"{nodes['c']}/10.2.0.6:80", b"")
    harness.wait_for({"c": {**states["c"], "10.2.0.5:80": 1, "10.2.0.6:80": 1}})
    assert harness.client.persistent_watches() == {root: 1, other["x"]: 1}

    # Remove c, the last one: the root's watch goes, on the server too; x keeps its own.
    caplog.set_level(logging.WARNING, logger="reloader.sources.zookeeper")
    harness.reconfigure({"x": other["x"]}, roots=[root])
    wait_until(lambda: harness.client.persistent_watches() == {other["x"]: 1}, 10, "the root's watch to go")
    assert REMOVE_WATCHES in [r.opcode for r in harness.proxy.requests]
    wait_until(lambda: watch_count(quiet_zk.port) == 2, 10, "x's watch alone")
    writer.create(f"{other['x']}/10.0.0.9:80", b"")
    harness.wait_for({"x": {**other_states["x"], "10.0.0.9:80": 1}})
    assert any(f"watch root {root} covers no configured znode" in r.getMessage() for r in caplog.records)


def test_a_reload_that_adds_or_removes_a_root_moves_its_znodes_between_watches(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness]) -> None:
    root = base("moves")
    nodes, states = services(writer, root, {"a": 2, "b": 2})
    harness = Harness(quiet_zk.port, nodes)
    harnesses.append(harness)
    harness.start().wait_for(states)
    assert harness.client.persistent_watches() == {nodes["a"]: 1, nodes["b"]: 1}

    harness.reconfigure(nodes, roots=[root])
    wait_until(lambda: harness.client.persistent_watches() == {root: 1}, 10, "the root's watch alone")
    wait_until(lambda: watch_count(quiet_zk.port) == 4, 10, "the root's and two children watches")
    writer.create(f"{nodes['a']}/10.0.0.8:80", b"")
    writer.set(f"{nodes['b']}/10.1.0.0:80", b"3")
    harness.wait_for({"a": {**states["a"], "10.0.0.8:80": 1}, "b": {**states["b"], "10.1.0.0:80": 3}})

    harness.reconfigure(nodes)
    wait_until(lambda: harness.client.persistent_watches() == {nodes["a"]: 1, nodes["b"]: 1}, 10,
               "watches of their own again")
    writer.delete(f"{nodes['a']}/10.0.0.8:80")
    harness.wait_for({"a": states["a"]})
    # The two recursive watches and b's one-shot children watch: a's was spent by the deletion, which
    # needs no list to set it again (see ZooKeeperSource._recheck_persistent).
    wait_until(lambda: watch_count(quiet_zk.port) == 3, 10, "two recursive watches and one children watch")


# -- fallbacks ---------------------------------------------------------------------------------------------------------


def test_a_root_the_daemon_may_not_read_falls_back_to_watches_of_their_own_with_a_warning(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness],
        caplog: pytest.LogCaptureFixture) -> None:
    root = base("private")
    writer.add_auth("digest", "admin:secret")
    writer.create(root, b"", acl=[make_digest_acl("admin", "secret", all=True)])
    nodes = {}
    for name in ("a", "b"):
        nodes[name] = f"{root}/{name}"
        writer.create(nodes[name], b"", acl=OPEN_ACL_UNSAFE)
        writer.create(f"{nodes[name]}/10.0.0.1:80", b"", acl=OPEN_ACL_UNSAFE)
    caplog.set_level(logging.WARNING, logger="reloader.sources.zookeeper")
    harness = Harness(quiet_zk.port, nodes, roots=[root])
    harnesses.append(harness)
    harness.start().wait_for({"a": {"10.0.0.1:80": 1}, "b": {"10.0.0.1:80": 1}})
    assert harness.client.persistent_watches() == {nodes["a"]: 1, nodes["b"]: 1}
    warnings = [r.getMessage() for r in caplog.records if "cannot use watch root" in r.getMessage()]
    assert len(warnings) == 1 and root in warnings[0] and "NoAuth" in warnings[0] and "2 znodes" in warnings[0]
    writer.create(f"{nodes['b']}/10.0.0.2:80", b"", acl=OPEN_ACL_UNSAFE)
    harness.wait_for({"b": {"10.0.0.1:80": 1, "10.0.0.2:80": 1}})
    # A blip keeps the fallback, with no second warning and no read.
    connection, report = harness.blip()
    assert report.resumed and ADD_WATCH not in harness.requests_on(connection)
    assert len([r for r in caplog.records if "cannot use watch root" in r.getMessage()]) == 1


class RefusesAddWatchOn(WatchingKazooClient):
    """The real client, but the server's answer to an AddWatch on ``refused`` is NoAuth.

    ZooKeeper 3.8.0 (this one) accepts a persistent watch on any path; a
    release that checks the ACL when the watch is added answers this way.
    """

    refused = ""

    def add_persistent_watch_async(self, path: str, watcher: Any, recursive: bool = True) -> Any:
        if path != self.refused:
            return super().add_persistent_watch_async(path, watcher, recursive)
        result = self.handler.async_result()
        result.set_exception(NoAuthError())
        return result


def test_a_root_whose_watch_the_server_refuses_falls_back_in_the_same_pass(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness],
        caplog: pytest.LogCaptureFixture) -> None:
    root = base("refused")
    nodes, states = services(writer, root, {"a": 2, "b": 1})
    caplog.set_level(logging.WARNING, logger="reloader.sources.zookeeper")
    refusing = type("Refusing", (RefusesAddWatchOn,), {"refused": root})
    harness = Harness(quiet_zk.port, nodes, roots=[root], client_factory=refusing)
    harnesses.append(harness)
    harness.start().wait_for(states)
    assert harness.client.persistent_watches() == {nodes["a"]: 1, nodes["b"]: 1}
    (warning,) = [r.getMessage() for r in caplog.records if "cannot use watch root" in r.getMessage()]
    assert root in warning and "NoAuth" in warning
    # The same pass set the znodes' own watches: nothing failed, nothing waits for a retry.
    assert not [r for r in caplog.records if "cannot watch its children" in r.getMessage()]
    writer.set(f"{nodes['b']}/10.1.0.0:80", b"3")
    harness.wait_for({"b": {"10.1.0.0:80": 3}})
    # Status says so: the cluster's roots, the refused one marked, and a gauge to alert on.
    from reloader.status import PREFIX, SnapshotCollector, render_status

    cluster = harness.worker.status(time.monotonic())
    assert (cluster["watch_roots"], cluster["watch_roots_refused"]) == ([root], [root])
    text = render_status({"clusters": [cluster], "upstreams": {}})
    assert f"watch roots of {cluster['label']}: {root} (refused: its znodes are watched one by one)" in text
    source = type("Source", (), {"ready": True, "healthy": True,
                                 "status_snapshot": lambda self: {"clusters": [cluster]}})()
    families = {family.name: family for family in SnapshotCollector(source).collect()}
    (sample,) = families[f"{PREFIX}_cluster_watch_roots_refused"].samples
    assert sample.value == 1.0


@pytest.mark.parametrize("how", ["classic", "no-addwatch"])
def test_classic_watches_ignore_the_roots(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], how: str) -> None:
    root = base(how)
    nodes, states = services(writer, root, {"a": 2, "b": 2})
    if how == "classic":
        harness = Harness(quiet_zk.port, nodes, "classic", roots=[root])
    else:  # the proxy answers AddWatch as a 3.5 server does
        harness = Harness(quiet_zk.port, nodes, "auto", roots=[root], refuse={ADD_WATCH: -6})
    harnesses.append(harness)
    harness.start().wait_for(states)
    assert harness.client.watch_mode_in_effect == "classic"
    assert harness.client.persistent_watches() == {}
    writer.create(f"{nodes['a']}/10.0.0.8:80", b"3")
    writer.set(f"{nodes['b']}/10.1.0.0:80", b"2")
    harness.wait_for({"a": {**states["a"], "10.0.0.8:80": 3}, "b": {**states["b"], "10.1.0.0:80": 2}})
    connection, report = harness.blip(lambda: writer.delete(f"{nodes['b']}/10.1.0.1:80"))
    assert report.resumed
    harness.wait_for({"b": {"10.1.0.0:80": 2}})
    assert sorted(harness.reads_on(connection)) == [8]  # b's list, nothing else


# -- the plan and the config, without a server -------------------------------------------------------------------------


def test_each_znode_is_covered_by_its_root_unless_refused_and_events_go_only_to_their_znodes() -> None:
    plan = WatchPlan(["/services", "/other/deep"])
    assert plan.cover("/services/app1") == "/services"
    assert plan.cover("/services") == "/services"
    assert plan.cover("/servicesX/app1") == "/servicesX/app1"
    assert plan.cover("/other/app") == "/other/app"
    assert plan.needed(["/services/a", "/services/b", "/x/y"]) == {"/services", "/x/y"}
    assert plan.unused(["/services/a"]) == ["/other/deep"]
    plan.refuse("/services")
    assert plan.cover("/services/app1") == "/services/app1"
    plan.reconfigure(["/services"])
    assert plan.cover("/services/app1") == "/services/app1"  # refused while the session lasts
    plan.reconfigure(["/other/deep"])
    plan.reconfigure(["/services"])
    assert plan.cover("/services/app1") == "/services"  # removed and added again: tried again
    plan.refuse("/services")
    plan.forget_refusals()
    assert plan.cover("/services/app1") == "/services"
    assert WatchPlan(["/"]).cover("/a/b") == "/"

    watched = {"/s/a", "/s/a/b"}.__contains__
    assert targets("/s/a/10.0.0.1:80", watched) == (None, "/s/a")
    assert targets("/s/a", watched) == ("/s/a", None)
    assert targets("/s/a/b", watched) == ("/s/a/b", "/s/a")  # nested znodes: both
    assert targets("/s/unconfigured/x", watched) == (None, None)
    assert targets("/s/a/10.0.0.1:80/deeper", watched) == (None, None)
    assert targets("/", watched) == (None, None)


def test_watch_roots_are_validated_and_shared_by_entries_of_one_session() -> None:
    def roots(value: Any) -> tuple[str, ...]:
        return parse_config({"zk_servers": "127.0.0.1:2181", "zk_nodes": {"a": "/s/a"}, "watch_roots": value},
                            source="t").clusters[0].watch_roots

    assert roots(["/s", "/t"]) == ("/s", "/t")
    assert roots("/s") == ("/s",)
    for bad, message in (([], "non-empty list"), (["s"], "must start with '/'"), ([1], "must be a string"),
                         (["/s", "/s/a"], "'/s/a' is inside '/s'"), (["/s/"], "must not end with '/'")):
        with pytest.raises(ConfigError, match=re.escape("watch_roots: ") + ".*" + re.escape(message)):
            roots(bad)
    with pytest.raises(ConfigError, match=r"clusters\[1\]\.watch_roots"):
        parse_config({"clusters": [{"zk_servers": "h:1", "zk_nodes": {"a": "/a"}},
                                   {"zk_servers": "h:2", "zk_nodes": {"b": "/b"}, "watch_roots": ["b"]}]}, source="t")
    # Two entries of one ensemble become one session: it watches both entries' roots.
    config = parse_config({"clusters": [
        {"zk_servers": "h:1", "zk_nodes": {"a": "/s/a"}, "watch_roots": ["/s"]},
        {"zk_servers": "h:1", "zk_nodes": {"b": "/t/b"}, "watch_roots": ["/t", "/s/a"]},
        {"zk_servers": "h:2", "zk_nodes": {"c": "/u/c"}},
    ]}, source="t")
    assert [c.watch_roots for c in config.clusters] == [("/s", "/t"), ("/s", "/t"), ()]
