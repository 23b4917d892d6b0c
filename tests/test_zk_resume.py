"""What a connection blip costs the ZooKeeper source, counted at a frame-aware proxy on a real ZooKeeper 3.8.

A session that survives a blip keeps its watches (SetWatches): a blip in
which nothing changed sends no read at all, a blip with changes reads what
changed, and the cluster thaws only once the server has confirmed the
watches. An expired session still reads in full. Every test runs in both
watch modes where both apply; ``persistent`` is what ``auto`` picks on 3.8,
and the classic fallback is played by a proxy that refuses AddWatch as a
3.5 server does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.protocol.states import Callback, KazooState

from reloader.cluster import ClusterWorker
from reloader.config import ConfigError, parse_config
from reloader.localenv.ensemble import LocalEnsemble
from reloader.localenv.zkproxy import ZkFrameProxy
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.model import Upstream
from reloader.sources.kazoo_handler import hands_on
from reloader.sources.kazoo_protocol import Resumption, WatchingKazooClient

pytestmark = pytest.mark.timeout(90)

READS = {3, 4, 8, 12, 22}  # exists, getData, getChildren, getChildren2, multiRead
EXISTS, GET_DATA, LISTS, MULTI_READ = 3, 4, {8, 12}, 22
ADD_WATCH = 106
MODES = ["classic", "persistent"]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Harness:
    """A cluster worker whose ZooKeeper connection goes through a :class:`ZkFrameProxy`."""

    def __init__(self, target_port: int, nodes: dict[str, str], watch_mode: str,
                 refuse: dict[int, int] | None = None, session_timeout: float = 8.0,
                 hosts: str | None = None) -> None:
        self.proxy = ZkFrameProxy(target_port, refuse=refuse).start() if hosts is None else None
        config = parse_config({"zk_servers": hosts or self.proxy.hosts, "zk_nodes": nodes,  # type: ignore[union-attr]
                               "settle_after_reconnect": 0, "max_drop": "100%", "watch_mode": watch_mode},
                              source="test")
        self.lock = threading.Lock()
        self.published: list[tuple[float, Upstream]] = []
        self.resumptions: list[tuple[float, Resumption, bool]] = []
        self.worker = ClusterWorker(config.clusters[0], self._publish, session_timeout=session_timeout)
        client = self.worker.source.client
        assert isinstance(client, WatchingKazooClient)
        self.client = client
        # Registered before the source's own listener and, like it, run at once on the
        # connection's thread (hands_on): told first, before the cluster thread can thaw.
        client.add_resume_listener(self._resumed)

    def _publish(self, batch: list[Upstream]) -> None:
        with self.lock:
            self.published.extend((time.monotonic(), upstream) for upstream in batch)

    @hands_on
    def _resumed(self, resumption: Resumption) -> None:
        with self.lock:
            self.resumptions.append((time.monotonic(), resumption, self.worker.freeze.is_open))

    def start(self) -> Harness:
        self.worker.start()
        return self

    def latest(self, name: str) -> dict[str, int] | None:
        with self.lock:
            states = [{s.address: s.weight for s in up.servers} for _, up in self.published if up.name == name]
        return states[-1] if states else None

    def published_at(self, name: str, want: dict[str, int]) -> float:
        """When ``name`` was first published as ``want``."""
        with self.lock:
            return next(at for at, up in self.published
                        if up.name == name and {s.address: s.weight for s in up.servers} == want)

    def wait_for(self, wants: dict[str, dict[str, int]], timeout: float = 20.0) -> None:
        wait_until(lambda: all(self.latest(name) == want for name, want in wants.items()), timeout,
                   f"{wants}; last published {[(n, self.latest(n)) for n in wants]}")

    def blip(self, while_away: Callable[[], None] = lambda: None) -> tuple[int, Resumption, float]:
        """Cut the connection, run ``while_away`` and let the same session come back.

        Returns the new connection's number at the proxy, the resumption report and when it came.
        """
        assert self.proxy is not None
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
            at, report, open_then = self.resumptions[reports]
        assert not open_then, "the cluster was open before the server confirmed the watches"
        assert self.worker.freeze.thawed_at is not None and self.worker.freeze.thawed_at >= at
        return connection, report, at

    def reads_on(self, connection: int) -> list[int]:
        assert self.proxy is not None
        return [r.opcode for r in self.proxy.requests if r.connection >= connection and r.opcode in READS]

    def close(self) -> None:
        self.worker.stop_event.set()
        self.worker.wake()
        self.worker.close_session()
        self.worker.join(time.monotonic() + 5)
        if self.proxy is not None:
            self.proxy.close()


@pytest.fixture
def harnesses() -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.close()


def services(writer: KazooClient, root: str, counts: dict[str, int],
             data: bytes = b"") -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Create a znode per service with ``count`` host:port children holding ``data``; return (zk_nodes,
    expected states: every weight 1, as served when ``data`` is empty or not read)."""
    nodes, states = {}, {}
    for index, (name, count) in enumerate(counts.items()):
        path = f"{root}/{name}"
        writer.ensure_path(path)
        for k in range(count):
            writer.create(f"{path}/10.{index}.0.{k}:80", data)
        nodes[name] = path
        states[name] = {f"10.{index}.0.{k}:80": 1 for k in range(count)}
    return nodes, states


@pytest.mark.parametrize("watch_mode", MODES)
def test_a_quiet_blip_sends_no_read_and_thaws_only_after_the_server_confirms(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], watch_mode: str) -> None:
    root = f"/quiet-{watch_mode}-{time.monotonic_ns()}"
    nodes, states = services(writer, root, {f"svc{i}": 5 for i in range(6)})
    harness = Harness(quiet_zk.port, nodes, watch_mode)
    harnesses.append(harness)
    harness.start().wait_for(states)
    assert harness.client.watch_mode_in_effect == watch_mode
    published = len(harness.published)

    connection, report, _ = harness.blip()

    assert report.resumed and not report.changed
    assert report.watches == (12 if watch_mode == "persistent" else 36)
    # A sentinel change: once it is published, every read the blip caused was sent before its own.
    writer.create(f"{nodes['svc0']}/10.0.0.9:80", b"")
    harness.wait_for({"svc0": {**states["svc0"], "10.0.0.9:80": 1}})
    sentinel = [GET_DATA] if watch_mode == "persistent" else [8, GET_DATA]
    assert sorted(harness.reads_on(connection)) == sorted(sentinel)
    assert ADD_WATCH not in {r.opcode for r in harness.proxy.requests if r.connection >= connection}
    # Nothing but the sentinel's upstream was published again.
    with harness.lock:
        assert [up.name for _, up in harness.published[published:]] == ["svc0"]


@pytest.mark.parametrize("watch_mode", MODES)
def test_a_blip_with_changes_reads_what_changed_and_serves_it_within_a_second(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], watch_mode: str) -> None:
    root = f"/changes-{watch_mode}-{time.monotonic_ns()}"
    nodes, states = services(writer, root, {"a": 3, "b": 3, "c": 3, "d": 10, "e": 10})
    harness = Harness(quiet_zk.port, nodes, watch_mode)
    harnesses.append(harness)
    harness.start().wait_for(states)

    def while_away() -> None:
        writer.create(f"{nodes['a']}/10.0.0.7:80", b"")
        writer.delete(f"{nodes['a']}/10.0.0.0:80")
        writer.set(f"{nodes['b']}/10.1.0.1:80", b"5")
        writer.delete(nodes["c"], recursive=True)
        writer.create(f"{nodes['c']}/10.2.0.7:80", b"2", makepath=True)
        writer.create(f"{nodes['c']}/10.2.0.8:80", b"")

    connection, report, resumed_at = harness.blip(while_away)
    want = {
        "a": {"10.0.0.1:80": 1, "10.0.0.2:80": 1, "10.0.0.7:80": 1},
        "b": {"10.1.0.0:80": 1, "10.1.0.1:80": 5, "10.1.0.2:80": 1},
        "c": {"10.2.0.7:80": 2, "10.2.0.8:80": 1},
    }
    harness.wait_for(want)
    assert report.resumed and report.changed
    for name, state in want.items():
        assert harness.published_at(name, state) - resumed_at < 1.0, f"{name} served late"
    reads = harness.reads_on(connection)
    # Lists of a and c, and the data of a's, b's and c's new or changed children: nothing of d and e.
    assert sum(op in LISTS for op in reads) == 2
    assert EXISTS not in reads
    if watch_mode == "classic":
        assert reads.count(GET_DATA) == 4 and MULTI_READ not in reads
    else:
        # A persistent watch is re-added unchecked: every child still known is
        # checked, all in one multi-read (which finds b's change); the new ones are read.
        assert reads.count(GET_DATA) == 3 and reads.count(MULTI_READ) == 1

    # Later changes still arrive, on every kind of znode touched.
    writer.delete(f"{nodes['c']}/10.2.0.8:80")
    writer.set(f"{nodes['d']}/10.3.0.0:80", b"4")
    harness.wait_for({"c": {"10.2.0.7:80": 2}, "d": {**states["d"], "10.3.0.0:80": 4}})


def test_after_a_blip_what_the_server_named_is_served_before_the_sweep(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness]) -> None:
    """A child created during the blip is published before the version sweep of every other znode is sent.

    The server fires the children watch of the znode whose list moved; no
    watch says whether a child's data moved, so every child is checked
    (30 x 20 = 600 children: two multiRead requests). The named znode goes
    first, on a pass of its own (its own 20 children: one multiRead).
    """
    root = f"/named-first-{time.monotonic_ns()}"
    nodes, states = services(writer, root, {f"svc{i:02d}": 20 for i in range(30)})
    harness = Harness(quiet_zk.port, nodes, "persistent")
    harnesses.append(harness)
    new = "10.0.0.99:80"
    sent_before: list[int] = []
    first_connection = [0]
    publish = harness.worker._publish

    def recording(batch: list[Upstream]) -> None:
        if not sent_before and any(up.name == "svc00" and new in {s.address for s in up.servers} for up in batch):
            assert harness.proxy is not None
            sent_before.append(sum(1 for r in harness.proxy.requests
                                   if r.connection >= first_connection[0] and r.opcode == MULTI_READ))
        publish(batch)

    harness.worker._publish = recording  # type: ignore[method-assign]
    harness.start().wait_for(states)
    assert harness.proxy is not None
    first_connection[0] = harness.proxy.accepted + 1

    connection, report, _ = harness.blip(lambda: writer.create(f"{nodes['svc00']}/{new}", b""))

    harness.wait_for({"svc00": {**states["svc00"], new: 1}})
    assert report.resumed and report.changed and connection == first_connection[0]
    wait_until(lambda: harness.reads_on(connection).count(MULTI_READ) >= 2, 10, "the sweep")
    assert sent_before == [1], f"published after {sent_before} multiRead requests: after the sweep"


@pytest.mark.parametrize("watch_mode", MODES)
def test_an_expired_session_reads_in_full(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], watch_mode: str) -> None:
    root = f"/expiry-{watch_mode}-{time.monotonic_ns()}"
    nodes, states = services(writer, root, {"a": 3, "b": 4})
    harness = Harness(quiet_zk.port, nodes, watch_mode)
    harnesses.append(harness)
    harness.start().wait_for(states)
    session, password = harness.client.client_id
    thaws = harness.worker.freeze.thaws
    assert harness.proxy is not None
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
    reads = harness.reads_on(connection)
    assert sum(op in LISTS for op in reads) == 2
    if watch_mode == "classic":
        assert reads.count(GET_DATA) + reads.count(EXISTS) >= 8  # every child checked or read
    else:
        assert reads.count(GET_DATA) == 1 and reads.count(MULTI_READ) == 1  # the new child; the known ones


def test_auto_falls_back_to_classic_watches_on_a_server_without_addwatch(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness]) -> None:
    root = f"/fallback-{time.monotonic_ns()}"
    nodes, states = services(writer, root, {"a": 3, "b": 2})
    harness = Harness(quiet_zk.port, nodes, "auto", refuse={ADD_WATCH: -6})
    harnesses.append(harness)
    harness.start().wait_for(states)
    assert harness.client.watch_mode_in_effect == "classic"
    assert harness.client.persistent_watches() == {}
    writer.create(f"{nodes['a']}/10.0.0.8:80", b"3")
    writer.set(f"{nodes['b']}/10.1.0.0:80", b"2")
    harness.wait_for({"a": {**states["a"], "10.0.0.8:80": 3}, "b": {**states["b"], "10.1.0.0:80": 2}})

    connection, report, _ = harness.blip(lambda: writer.delete(f"{nodes['b']}/10.1.0.1:80"))
    assert report.resumed
    harness.wait_for({"b": {"10.1.0.0:80": 2}})
    assert ADD_WATCH not in {r.opcode for r in harness.proxy.requests if r.connection >= connection}
    assert sorted(harness.reads_on(connection)) == [8]  # b's list, nothing else


def test_watch_mode_is_validated() -> None:
    with pytest.raises(ConfigError, match="watch_mode: must be one of auto, persistent, classic"):
        parse_config({"zk_servers": "127.0.0.1:2181", "zk_nodes": {"a": "/a"}, "watch_mode": "often"}, source="t")
    config = parse_config({"zk_servers": "127.0.0.1:2181", "zk_nodes": {"a": "/a"}}, source="t")
    assert config.clusters[0].watch_mode == "auto"


@pytest.mark.timeout(150)
def test_persistent_watches_survive_a_leader_change(zookeeper_installed: None, harnesses: list[Harness]) -> None:
    with LocalEnsemble() as ensemble:
        writer = KazooClient(hosts=ensemble.hosts, timeout=10)
        writer.start(timeout=15)
        try:
            nodes, states = services(writer, "/svc", {"a": 2, "b": 2})
            harness = Harness(0, nodes, "auto", hosts=ensemble.hosts)
            harnesses.append(harness)
            harness.start().wait_for(states, timeout=30)
            assert harness.client.watch_mode_in_effect == "persistent"
            session = harness.client.client_id[0]
            thaws = harness.worker.freeze.thaws

            ensemble.kill(ensemble.leader())
            wait_until(lambda: harness.worker.freeze.thaws > thaws, 60, "the thaw after the election")

            assert harness.client.client_id[0] == session
            assert harness.client.persistent_watches().keys() == {"/svc/a", "/svc/b"}
            assert harness.worker.source.state == KazooState.CONNECTED
            writer.retry(writer.create, "/svc/a/10.0.0.9:80", b"")
            writer.retry(writer.delete, "/svc/b/10.1.0.0:80")
            harness.wait_for({"a": {**states["a"], "10.0.0.9:80": 1}, "b": {"10.1.0.1:80": 1}}, timeout=30)
        finally:
            writer.stop()
            writer.close()


@pytest.mark.parametrize("watch_mode", MODES)
def test_events_reach_the_cluster_while_kazoos_callback_thread_is_stuck(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], watch_mode: str) -> None:
    """The source's watchers only hand events on, so they skip kazoo's callback thread (one hop less per event)."""
    root = f"/inline-{watch_mode}-{time.monotonic_ns()}"
    nodes, states = services(writer, root, {"a": 2, "b": 2})
    harness = Harness(quiet_zk.port, nodes, watch_mode)
    harnesses.append(harness)
    harness.start().wait_for(states)
    stuck, release = threading.Event(), threading.Event()

    def hold() -> None:
        stuck.set()
        release.wait(30)

    harness.client.handler.dispatch_callback(Callback("watch", hold, ()))
    try:
        wait_until(stuck.is_set, 10, "kazoo's callback thread to be held")
        writer.create(f"{nodes['a']}/10.0.0.9:80", b"3")
        writer.set(f"{nodes['b']}/10.1.0.0:80", b"4")
        writer.delete(f"{nodes['b']}/10.1.0.1:80")
        harness.wait_for({"a": {**states["a"], "10.0.0.9:80": 3}, "b": {"10.1.0.0:80": 4}}, timeout=10)
    finally:
        release.set()


@pytest.mark.parametrize("watch_mode", MODES)
def test_a_znode_deleted_and_created_again_while_connected(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], watch_mode: str) -> None:
    root = f"/recreate-{watch_mode}-{time.monotonic_ns()}"
    nodes, states = services(writer, root, {"a": 2, "b": 1})
    harness = Harness(quiet_zk.port, nodes, watch_mode)
    harnesses.append(harness)
    harness.start().wait_for(states)
    transaction = writer.transaction()
    for child in writer.get_children(nodes["b"]):
        transaction.delete(f"{nodes['b']}/{child}")
    transaction.delete(nodes["b"])
    transaction.commit()
    wait_until(lambda: harness.worker.source.watches.get(nodes["b"]).exists is False, 10, "b to be found missing")
    writer.create(f"{nodes['b']}/10.1.0.9:80", b"", makepath=True)
    harness.wait_for({"b": {"10.1.0.9:80": 1}})


def test_a_multi_read_answers_each_path_in_order_with_its_data_or_its_error(
        quiet_zk: LocalZooKeeper, writer: KazooClient) -> None:
    from kazoo.exceptions import NoNodeError

    from reloader.sources.kazoo_protocol import MultiRead

    root = f"/multiread-{time.monotonic_ns()}"
    writer.create(f"{root}/a", b"5", makepath=True)
    writer.create(f"{root}/b", b"")
    client = WatchingKazooClient(hosts=quiet_zk.hosts)
    client.start(timeout=10)
    try:
        paths = [f"{root}/a", f"{root}/gone", f"{root}/b"] * 300  # one request, 900 reads
        results = client.get_many_async(paths).get(10)
        assert len(results) == 900
        (data_a, stat_a), missing, (data_b, _) = results[:3]
        assert (data_a, data_b) == (b"5", b"") and isinstance(missing, NoNodeError)
        assert stat_a.mzxid == writer.exists(f"{root}/a").mzxid
        assert MultiRead.type == 22
    finally:
        client.stop()
        client.close()
    # Under a chroot, the paths are relative to it.
    rooted = WatchingKazooClient(hosts=f"{quiet_zk.hosts}{root}")
    rooted.start(timeout=10)
    try:
        (data_a, _), missing = rooted.get_many_async(["/a", "/gone"]).get(10)
        assert data_a == b"5" and isinstance(missing, NoNodeError)
    finally:
        rooted.stop()
        rooted.close()
