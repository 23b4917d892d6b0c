"""The per-znode watch state machine, against a real ZooKeeper (behind a switchable TCP proxy where needed).

Each defect has its own test: a failed child-list read after a reconnect
(issue 14 item 4), an upstream added on a znode already watched (item 5), an
upstream moved by a reload while a resync is under way (item 6), and the
memory a registry can make the daemon hold (issue 18 item 4). The state
machine's transitions are also checked on their own, without ZooKeeper.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.protocol.serialization import Exists
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from reloader.cluster import ClusterWorker
from reloader.config import ClusterConfig, parse_config
from reloader.formats import MAX_DATA_BYTES
from reloader.localenv.tcpproxy import TcpProxy
from reloader.localenv.zkproxy import ZkFrameProxy
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.model import Upstream
from reloader.sources.kazoo_protocol import WatchingKazooClient
from reloader.snapshot import MAX_KEPT_DATA, OVERSIZED, keepable
from reloader.sources import zookeeper as zookeeper_source
from reloader.sources.watches import Need, ZnodeState, ZnodeWatch
from tests.test_daemon import DaemonProcess, daemons, files_dir, upstream_file  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(90)

OWNER = "owner:secret"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class HookedClient(WatchingKazooClient):
    """The real kazoo client; ``on_list`` (if set) is told of every child-list read it is asked for."""

    on_list: Callable[[str], None] | None = None

    def get_children_async(self, path: str, watch: Any = None, include_data: bool = False) -> Any:
        if self.on_list is not None:
            self.on_list(path)
        return super().get_children_async(path, watch=watch, include_data=include_data)


class Harness:
    """A cluster worker on its own thread, publishing into a list; the worker's ZooKeeper is behind ``proxy``."""

    def __init__(self, zk: LocalZooKeeper, nodes: dict[str, Any], session_timeout: float = 8.0,
                 watch_mode: str = "auto", proxy: TcpProxy | ZkFrameProxy | None = None, **settings: Any) -> None:
        self.watch_mode = watch_mode
        self.proxy = proxy if proxy is not None else TcpProxy(zk.port).start()
        self.config = self.cluster_config(nodes, **settings)
        self.session_timeout = session_timeout
        self.lock = threading.Lock()
        self.published: list[Upstream] = []
        self.clients: list[HookedClient] = []
        self.worker = ClusterWorker(self.config, self._publish, session_timeout=session_timeout,
                                    client_factory=self._factory)

    def cluster_config(self, nodes: dict[str, Any], **settings: Any) -> ClusterConfig:
        data = {"zk_servers": self.proxy.hosts, "zk_nodes": nodes, "settle_after_reconnect": 0,
                "max_drop": "100%", "watch_mode": self.watch_mode, **settings}
        return parse_config(data, source="test").clusters[0]

    def _factory(self, *args: Any, **kwargs: Any) -> HookedClient:
        self.clients.append(HookedClient(*args, **kwargs))
        return self.clients[-1]

    def _publish(self, batch: list[Upstream]) -> None:
        with self.lock:
            self.published.extend(batch)

    def start(self) -> Harness:
        self.worker.start()
        return self

    def history(self, name: str) -> list[dict[str, int]]:
        with self.lock:
            return [{s.address: s.weight for s in up.servers} for up in self.published if up.name == name]

    def latest(self, name: str) -> dict[str, int] | None:
        history = self.history(name)
        return history[-1] if history else None

    def wait_for(self, name: str, want: dict[str, int], timeout: float = 15.0) -> None:
        try:
            wait_until(lambda: self.latest(name) == want, timeout, f"{name} to be {want}")
        except AssertionError:
            raise AssertionError(f"{name}: wanted {want}, last published {self.latest(name)}") from None

    def reconfigure(self, nodes: dict[str, Any], **settings: Any) -> None:
        self.config = self.cluster_config(nodes, **settings)
        self.worker.reconfigure(self.config, [])

    def blip(self, while_away: Callable[[], None] = lambda: None) -> None:
        """Cut the worker's connection, do ``while_away``, and let it reconnect to the same session."""
        self.proxy.refuse()
        wait_until(lambda: not self.worker.freeze.is_open, 10, "the cluster to freeze")
        while_away()
        self.proxy.pass_through()

    def expire(self, zk: LocalZooKeeper, client_id: tuple[int, bytes]) -> None:
        """End the session ``client_id`` from another connection: the worker's next connection reads in full."""
        other = KazooClient(hosts=zk.hosts, client_id=client_id)
        other.start(timeout=10)
        other.stop()
        other.close()

    def close(self) -> None:
        self.worker.stop_event.set()
        self.worker.wake()
        self.worker.close_session()
        self.worker.join(time.monotonic() + 5)
        self.proxy.close()


@pytest.fixture(params=["persistent", "classic"])
def harnesses(request: pytest.FixtureRequest) -> Iterator[Callable[..., Harness]]:
    """Harnesses in one watch mode; every test that takes them runs in both."""
    made: list[Harness] = []

    def make(*args: Any, **kwargs: Any) -> Harness:
        kwargs.setdefault("watch_mode", request.param)
        made.append(Harness(*args, **kwargs))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def admin(zk: LocalZooKeeper) -> Iterator[KazooClient]:
    """A client that authenticates as the owner of the ACLs the tests set."""
    client = KazooClient(hosts=zk.hosts, auth_data=[("digest", OWNER)])
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


def make_children(client: KazooClient, path: str, children: dict[str, bytes]) -> None:
    client.ensure_path(path)
    for name, data in children.items():
        client.create(f"{path}/{name}", data)


# ---- issue 14 item 4 --------------------------------------------------------------------


def test_a_list_refused_after_a_reconnect_still_sets_every_child_data_watch_once_it_recovers(
    zk: LocalZooKeeper, admin: KazooClient, zk_root: str, harnesses: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="reloader.sources.zookeeper")
    path = f"{zk_root}/svc"
    make_children(admin, path, {"10.0.0.1:80": b"5", "10.0.0.2:80": b"1"})
    harness = harnesses(zk, {"app1": path}).start()
    harness.wait_for("app1", {"10.0.0.1:80": 5, "10.0.0.2:80": 1})

    # While the daemon is away, the service znode gets an ACL it cannot read
    # and the session expires: the resync's child-list read fails with
    # NoAuth, and the new session holds no watch at all. (A session that
    # survives keeps its watches: an ACL change alone fires none.)
    session = harness.clients[0].client_id

    def while_away() -> None:
        admin.set_acls(path, [make_digest_acl(*OWNER.split(":"), all=True)])
        harness.expire(zk, session)

    harness.blip(while_away)
    wait_until(lambda: "cannot watch its children" in caplog.text and harness.worker.freeze.is_open, 15,
               "the refused list and the thaw")

    # The ACL is lifted and a child added: the retry after the back-off reads it.
    admin.set_acls(path, OPEN_ACL_UNSAFE)
    admin.create(f"{path}/10.0.0.3:80", b"1")
    harness.wait_for("app1", {"10.0.0.1:80": 5, "10.0.0.2:80": 1, "10.0.0.3:80": 1})

    # A data-only change of a child known from before the reconnect arrives:
    # its data watch was set again by the recovery.
    admin.set(f"{path}/10.0.0.1:80", b"9")
    harness.wait_for("app1", {"10.0.0.1:80": 9, "10.0.0.2:80": 1, "10.0.0.3:80": 1}, timeout=10)


# ---- deletions under a persistent watch ----------------------------------------------------


def test_a_transaction_that_deletes_many_children_is_published_whole_and_lists_nothing(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, harnesses: Callable[..., Harness],
) -> None:
    """Its events come one by one; every published view holds all of the deleted children or none.
    Under a persistent watch, no deletion costs a child list (one small request settles a batch)."""
    path = f"{zk_root}/svc"
    kept = {f"10.0.0.{k}:80": 1 for k in range(1, 5)}
    make_children(zk_client, path, dict.fromkeys(kept, b""))
    harness = harnesses(zk, {"app1": path}).start()
    harness.wait_for("app1", kept)
    lists: list[str] = []
    harness.clients[-1].on_list = lists.append
    for round_ in range(6):
        doomed = {f"10.{round_ + 1}.0.{k}:80": 1 for k in range(1, 41)}
        transaction = zk_client.transaction()
        for name in doomed:
            transaction.create(f"{path}/{name}", b"")
        transaction.commit()
        harness.wait_for("app1", {**kept, **doomed})  # (creations are served as they come: growth)
        before = len(harness.history("app1"))
        transaction = zk_client.transaction()
        for name in doomed:
            transaction.delete(f"{path}/{name}")
        transaction.commit()
        harness.wait_for("app1", kept)
        seen = harness.history("app1")[before:]
        halves = [len(view) for view in seen if kept.items() <= view.items() and len(kept) < len(view)
                  < len(kept) + len(doomed)]
        assert not halves, f"round {round_}: a transaction was published in part: sizes {halves}"
    if harness.watch_mode == "persistent":
        assert lists == [], f"deletions listed {lists}"


@pytest.mark.parametrize("harnesses", ["persistent"], indirect=True)
def test_a_deletion_whose_settling_answer_never_comes_stays_served_whole_until_the_resumed_session_settles_it(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, harnesses: Callable[..., Harness],
) -> None:
    """The way back goes dark right after the settling ``exists`` is sent: its answer never comes.
    The deleted children stay served (nothing is lost, nothing published in part) while the cluster
    waits, gives the connection up and freezes; the session survives, and once it is back the
    deletion is served whole (the resumed session's recovery reads the znode again)."""
    path = f"{zk_root}/svc"
    kept = {f"10.0.0.{k}:80": 1 for k in range(1, 5)}
    doomed = {f"10.1.0.{k}:80": 1 for k in range(1, 21)}
    make_children(zk_client, path, dict.fromkeys({**kept, **doomed}, b""))
    proxy = ZkFrameProxy(zk.port).start()
    harness = harnesses(zk, {"app1": path}, session_timeout=6.0, proxy=proxy).start()
    harness.wait_for("app1", {**kept, **doomed})
    session = harness.clients[-1].client_id
    before = len(harness.history("app1"))

    proxy.stall_after(Exists.type)
    transaction = zk_client.transaction()
    for name in doomed:
        transaction.delete(f"{path}/{name}")
    transaction.commit()
    wait_until(lambda: proxy.stalled, 10, "the settling exists to go out and the way back to go dark")
    wait_until(lambda: not harness.worker.freeze.is_open, 15, "the cluster to give the connection up and freeze")
    assert harness.latest("app1") == {**kept, **doomed}, "a deletion was served before it settled"

    harness.wait_for("app1", kept, timeout=20)
    assert harness.clients[-1].client_id == session, "the session expired: this test wants it to live"
    assert proxy.accepted >= 2
    seen = harness.history("app1")[before:]
    assert all(view in ({**kept, **doomed}, kept) for view in seen), f"published in part: {seen}"


def test_a_pass_after_watch_events_looks_only_at_the_znodes_they_touched(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, harnesses: Callable[..., Harness],
) -> None:
    """A burst of events over many znodes pays no walk over all of them per batch; anything else does."""
    nodes = {f"app{k}": f"{zk_root}/s{k}" for k in range(150)}
    for path in nodes.values():
        make_children(zk_client, path, {"10.0.0.1:80": b""})
    harness = harnesses(zk, nodes).start()
    for name in nodes:
        harness.wait_for(name, {"10.0.0.1:80": 1})
    source = harness.worker.source
    looked_at: list[int] = []
    deliver = source._deliver

    def counting(watches: Any = None) -> None:
        looked_at.append(len(source.watches) if watches is None else len(list(watches)))
        deliver(watches)

    source._deliver = counting  # type: ignore[method-assign]
    for k in range(30):
        zk_client.create(f"{nodes[f'app{k}']}/10.0.1.{k}:80", b"")
        # The pipeline's own work (a file caught up, drains) comes between events in a daemon.
        harness.worker.put_pipeline(lambda: None)
        harness.wait_for(f"app{k}", {"10.0.0.1:80": 1, f"10.0.1.{k}:80": 1})
    whole = [count for count in looked_at if count == len(nodes)]
    assert len(looked_at) >= 30 and len(whole) <= 5, (len(looked_at), len(whole))
    # A reload (not an event) looks at every znode, and the state stays right.
    harness.reconfigure({**nodes, "extra": nodes["app0"]})
    harness.wait_for("extra", {"10.0.0.1:80": 1, "10.0.1.0:80": 1})
    assert len([count for count in looked_at if count == len(source.watches)]) > len(whole)


# ---- issue 14 item 5 --------------------------------------------------------------------


def test_an_upstream_added_on_a_watched_znode_gets_its_view_at_once(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, harnesses: Callable[..., Harness],
) -> None:
    path = f"{zk_root}/app1"
    make_children(zk_client, path, {"10.0.0.1:80": b"", "10.0.0.2:80": b"3"})
    harness = harnesses(zk, {"app1": path}).start()
    harness.wait_for("app1", {"10.0.0.1:80": 1, "10.0.0.2:80": 3})

    harness.reconfigure({"app1": path, "app1-canary": path})
    harness.wait_for("app1-canary", {"10.0.0.1:80": 1, "10.0.0.2:80": 3}, timeout=5)
    assert harness.history("app1") == [{"10.0.0.1:80": 1, "10.0.0.2:80": 3}], "the kept upstream is not re-published"


# ---- issue 14 item 6 --------------------------------------------------------------------


def test_a_resync_never_hands_an_upstream_the_view_of_the_znode_a_reload_moved_it_from(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, harnesses: Callable[..., Harness],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One znode per resync step, so that a reload can land between steps.
    monkeypatch.setattr(zookeeper_source, "RESYNC_STEP", 1)
    a, b, c = (f"{zk_root}/{name}" for name in "abc")
    make_children(zk_client, a, {"10.0.1.1:80": b""})
    make_children(zk_client, b, {"10.0.2.1:80": b""})
    make_children(zk_client, c, {"10.0.3.1:80": b""})
    harness = harnesses(zk, {"x": a, "y": b, "z": c}).start()
    harness.wait_for("x", {"10.0.1.1:80": 1})
    harness.wait_for("z", {"10.0.3.1:80": 1})

    moved = threading.Event()

    def move_x_during_the_resync(path: str) -> None:
        # On the cluster thread, while the resync reads znode a: the reload
        # is queued and runs between two resync steps.
        if path == a and not moved.is_set():
            moved.set()
            harness.reconfigure({"x": b, "y": b, "z": c})

    session = harness.clients[0].client_id

    def while_away() -> None:
        # An expiry: the resync reads every znode, one step each.
        zk_client.create(f"{a}/10.0.1.2:80", b"")
        harness.expire(zk, session)
        harness.clients[0].on_list = move_x_during_the_resync

    harness.blip(while_away)
    wait_until(moved.is_set, 15, "the resync to read znode a")
    harness.wait_for("x", {"10.0.2.1:80": 1})
    wait_until(lambda: harness.worker.freeze.is_open, 10, "the thaw")
    harness.clients[0].on_list = None
    # Still on b, and never a's view after the move.
    zk_client.create(f"{b}/10.0.2.2:80", b"")
    harness.wait_for("x", {"10.0.2.1:80": 1, "10.0.2.2:80": 1})
    assert all("10.0.1.2:80" not in state for state in harness.history("x")), harness.history("x")


# ---- issue 18 item 4 --------------------------------------------------------------------


# One mode only: 30 children of 1 MB are heavy for the shared 256 MB test server.
@pytest.mark.parametrize("harnesses", ["persistent"], indirect=True)
def test_large_child_data_is_not_kept_and_memory_goes_with_the_children(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, harnesses: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="reloader.sources.zookeeper")
    path = f"{zk_root}/big"
    # ZooKeeper's default jute.maxbuffer (localenv leaves it) is 1 MiB - 1: a
    # child just under 1 MB is the largest a registry can hold.
    blob = b"\x00serialised-java-object" + bytes(999_000)
    count = 30
    children = {f"10.0.4.{k}:80": blob for k in range(1, count + 1)}
    make_children(zk_client, path, children)
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        harness = harnesses(zk, {"big": path}, zk_session_timeout=8).start()
        # The name format ignores data that is not a weight: every child is served.
        harness.wait_for("big", {name: 1 for name in children}, timeout=30)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
        assert held < 8_000_000, f"{held} bytes held for {count} children of {len(blob)} bytes"
        assert "more than any format reads" in caplog.text

        for name in list(children)[1:]:
            zk_client.delete(f"{path}/{name}")
        harness.wait_for("big", {"10.0.4.1:80": 1}, timeout=20)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] - baseline
        assert after < 8_000_000, f"{after} bytes still held after the children went"
    finally:
        tracemalloc.stop()
        zk_client.delete(path, recursive=True)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_daemon_process_stays_small_with_large_children_and_after_they_go(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, daemons: Callable[..., DaemonProcess],  # noqa: F811
) -> None:
    path = f"{zk_root}/big"
    make_children(zk_client, path, {"10.0.6.1:80": b""})
    daemon = daemons({"zk_servers": zk.hosts, "zk_nodes": {"big": path}, "max_drop": "100%",
                      "settle_after_reconnect": 0})
    daemon.wait_file("big", upstream_file("big", "server 10.0.6.1:80"))
    idle = rss_mb(daemon.pid)
    blob = bytes(1_000_000)
    names = [f"10.0.7.{k}:80" for k in range(1, 31)]
    try:
        for name in names:
            zk_client.create(f"{path}/{name}", blob)
        wait_until(lambda: (daemon.read("big") or "").count("server ") == 31, 30, "31 servers in the file")
        time.sleep(1)  # let the last reads' buffers go
        loaded = rss_mb(daemon.pid)
        for name in names:
            zk_client.delete(f"{path}/{name}")
        wait_until(lambda: (daemon.read("big") or "").count("server ") == 1, 30, "1 server in the file")
        time.sleep(1)
        after = rss_mb(daemon.pid)
    finally:
        zk_client.delete(path, recursive=True)
    # Before: 30 MB more while the children were there, and still after they went.
    assert loaded - idle < 12, f"RSS {idle:.0f} MB idle, {loaded:.0f} MB with 30 children of 1 MB"
    assert after - idle < 12, f"RSS {idle:.0f} MB idle, {after:.0f} MB after the children went"


def test_children_beyond_max_children_are_left_out_with_a_warning_naming_the_znode(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, harnesses: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="reloader.sources.zookeeper")
    path = f"{zk_root}/many"
    make_children(zk_client, path, {f"10.0.5.{k}:80": b"" for k in range(1, 7)})
    harness = harnesses(zk, {"many": {"path": path, "max_children": 4}, "all": path}, max_children=5).start()
    harness.wait_for("many", {f"10.0.5.{k}:80": 1 for k in range(1, 5)})
    harness.wait_for("all", {f"10.0.5.{k}:80": 1 for k in range(1, 6)})
    assert f"znode {path} (upstream many, all) has 6 children, more than max_children (5)" in caplog.text
    # Back under the cap: everything is read, and the log says so.
    zk_client.delete(f"{path}/10.0.5.1:80")
    harness.wait_for("all", {f"10.0.5.{k}:80": 1 for k in range(2, 7)})
    assert f"znode {path}: 5 children, within max_children again" in caplog.text


# ---- the state machine alone ------------------------------------------------------------


def synced(children: dict[str, tuple[bytes, int]]) -> ZnodeWatch:
    watch = ZnodeWatch("/svc", upstreams=["app"])
    watch.listing_sent()
    watch.listed(children)
    for name, (data, version) in children.items():
        watch.data_read(name, data, version)
    assert watch.state is ZnodeState.SYNCED
    watch.take_owed()
    return watch


def test_every_recovery_verifies_every_known_child() -> None:
    watch = synced({"a": (b"1", 10), "b": (b"2", 11)})
    watch.child_data_changed("b")
    watch.invalidate()  # the session went
    assert watch.needs == {"a": Need.VERIFY, "b": Need.READ}
    watch.listing_sent()
    assert watch.list_failed() == (1, 1.0)
    assert watch.view() is None
    assert not watch.retry_due(2), "an older failure's timer is ignored"
    assert watch.retry_due(1) and watch.state is ZnodeState.UNKNOWN
    watch.listing_sent()
    watch.listed(["a", "b", "c"])
    assert watch.checks() == ["a"] and watch.reads() == ["b", "c"]
    assert watch.verified("a", 10)
    watch.data_read("b", b"3", 12)
    assert watch.view() is None and not watch.owed
    watch.data_read("c", b"4", 13)
    assert watch.view() == {"a": b"1", "b": b"3", "c": b"4"}
    assert watch.take_owed() == ["app"]


def test_a_children_event_lists_again_without_verifying_the_kept_children() -> None:
    watch = synced({"a": (b"1", 10)})
    watch.children_changed()
    assert watch.state is ZnodeState.CHANGED and watch.needs_list
    watch.listing_sent()
    watch.listed(["a", "b"])
    assert watch.checks() == [] and watch.reads() == ["b"]


def test_confirmed_watches_and_persistent_watch_events_need_no_list() -> None:
    watch = synced({"a": (b"1", 10), "b": (b"2", 11)})
    watch.invalidate()
    watch.child_data_changed("b")
    assert watch.watches_confirmed()
    assert watch.state is ZnodeState.SYNCED and watch.reads() == ["b"] and watch.checks() == []
    watch.data_read("b", b"5", 14)
    watch.child_created("c")
    watch.child_deleted("a")
    assert watch.reads() == ["c"] and watch.view() is None
    watch.data_read("c", b"6", 15)
    assert watch.view() == {"b": b"5", "c": b"6"}


def test_a_deleted_child_goes_when_its_transaction_settles_and_a_list_supersedes_the_marks() -> None:
    watch = synced({"a": (b"1", 10), "b": (b"2", 11), "c": (b"3", 12)})
    watch.child_gone("a", 5)
    watch.child_gone("b", 6)
    watch.child_gone("unknown", 6)
    assert watch.view() == {"a": b"1", "b": b"2", "c": b"3"} and not watch.owed, "served until settled"
    watch.settle(4)
    assert watch.gone == {"a": 5, "b": 6} and not watch.owed
    watch.settle(6)
    assert watch.view() == {"c": b"3"} and watch.take_owed() == ["app"] and watch.gone == {}
    # Created again before its deletion settled: it stays, and its data is read again.
    watch.child_gone("c", 7)
    watch.child_created("c")
    watch.settle(7)
    assert watch.gone == {} and watch.reads() == ["c"]
    watch.data_read("c", b"4", 13)
    assert watch.view() == {"c": b"4"}
    # A list read after the event supersedes it.
    watch.child_gone("c", 8)
    watch.children_changed()
    watch.listing_sent()
    watch.listed(["c", "d"])
    assert watch.gone == {}
    watch.settle(8)
    assert "c" in watch.known


def test_owed_views_reach_only_the_names_mapped_to_the_path_now() -> None:
    watch = synced({"a": (b"1", 10)})
    watch.upstreams = ["app", "canary"]
    watch.owed.update(["canary", "moved-away"])
    assert watch.take_owed() == ["canary"]


def test_a_missing_znode_forgets_its_children_and_says_so_once() -> None:
    watch = synced({"a": (b"1", 10)})
    watch.invalidate()
    watch.listing_sent()
    assert watch.list_missing()
    assert watch.known == {} and watch.state is ZnodeState.ABSENT
    watch.invalidate()
    watch.listing_sent()
    assert not watch.list_missing(), "still missing is not news"


def test_oversized_data_is_kept_as_one_shared_stand_in() -> None:
    assert MAX_KEPT_DATA == MAX_DATA_BYTES, "the stand-in must be oversized exactly where the formats say so"
    assert keepable(bytes(MAX_KEPT_DATA)) == bytes(MAX_KEPT_DATA)
    assert keepable(bytes(MAX_KEPT_DATA + 10)) is OVERSIZED
    watch = synced({"a": (bytes(500_000), 10)})
    assert watch.view() == {"a": OVERSIZED}


# ---- the max_children setting ------------------------------------------------------------


def test_max_children_is_a_global_and_per_upstream_setting_validated_like_the_others() -> None:
    from reloader.config import ConfigError

    config = parse_config({"zk_servers": "h:1", "max_children": 500,
                           "zk_nodes": {"a": "/a", "b": {"path": "/b", "max_children": 20}}}, source="test")
    assert [znode.max_children for znode in config.znodes] == [500, 20]
    assert parse_config({"zk_servers": "h:1", "zk_nodes": {"a": "/a"}}).znodes[0].max_children == 10_000
    with pytest.raises(ConfigError) as error:
        parse_config({"zk_servers": "h:1", "max_children": True,
                      "zk_nodes": {"a": {"path": "/a", "max_children": 0}, "b": {"path": "/b", "max_children": "9"}}},
                     source="test")
    assert error.value.problems == [
        "max_children: must be a whole number from 1 to 1,000,000, got True (YAML read it as a boolean; write it "
        "in quotes to make it text)",
        "zk_nodes.a.max_children: must be a whole number from 1 to 1,000,000, got 0",
        "zk_nodes.b.max_children: must be a whole number from 1 to 1,000,000, got '9'",
    ]


# ---- a reload that moves an upstream to another cluster ----------------------------------


def test_a_cluster_publishes_nothing_more_for_an_upstream_a_reload_took_away() -> None:
    """What the cluster's thread produced before it applied the reload is dropped at the hand-over."""
    config = parse_config({"clusters": [
        {"zk_servers": "127.0.0.1:1", "zk_nodes": {"x": "/a", "y": "/b"}},
        {"zk_servers": "127.0.0.1:2", "zk_nodes": {"z": "/c"}},
    ]}, source="test")
    handed: list[str] = []
    worker = ClusterWorker(config.clusters[0], lambda batch: handed.extend(u.name for u in batch), 5.0)
    try:
        worker._published.extend([Upstream("x", ()), Upstream("y", ())])  # produced, not handed over yet
        # x moves to the other cluster; the reload is queued for this cluster's thread.
        moved = parse_config({"zk_servers": "127.0.0.1:1", "zk_nodes": {"y": "/b"}}, source="test")
        worker.reconfigure(moved.clusters[0], [])
        worker._hand_over()
        assert handed == ["y"]
        worker._published.append(Upstream("y", ()))
        worker.retire()
        worker._hand_over()
        assert handed == ["y"], "a retired cluster hands nothing over"
    finally:
        worker.close_session()


# ---- the reconnection back-off ---------------------------------------------------------------


def test_a_daemon_tries_to_reconnect_at_least_every_1_4_s_however_long_the_outage() -> None:
    """kazoo's connection retry as the source sets it: 0.1 s doubling to 1 s, +-40 % jitter.

    With a longer cap, a daemon whose step had grown during an outage waited
    that long with the server back (3-7 s per step with the old 5 s cap):
    the fleet's time to truth after a server restart (docs/sizing.md).
    """
    from kazoo.exceptions import ConnectionLoss
    from kazoo.retry import KazooRetry

    config = parse_config({"zk_servers": "127.0.0.1:1", "zk_nodes": {"x": "/a"}}, source="test")
    worker = ClusterWorker(config.clusters[0], lambda batch: None, 5.0)
    try:
        retry = worker.source._client._conn_retry  # what its connection loop copies
        assert isinstance(retry, KazooRetry) and retry.max_tries == -1
        slept: list[float] = []
        sleeper = retry.copy()
        sleeper.sleep_func = slept.append
        sleeper.interrupt = None  # the client is not started

        def refused() -> None:
            if len(slept) < 200:
                raise ConnectionLoss("refused")

        sleeper(refused)
    finally:
        worker.close_session()
    assert len(slept) == 200
    assert max(slept) <= 1.4, max(slept)
    # kazoo compounds the jitter (each step doubles the last sleep): at worst 0.14 + 0.39 + 1.1 + 1.4.
    assert sum(slept[:4]) <= 3.1, "the first tries come quickly"
    assert sum(slept) >= 200 * 0.6 * 0.6, "and the server is not hammered: about one try a second"


# ---- the order of a pass: what the server named, then a sweep in steps ---------------------------


def test_a_large_sweep_comes_after_what_the_server_named_and_in_steps() -> None:
    from reloader.sources.watches import Need, ZnodeState, ZnodeWatch
    from reloader.sources.zookeeper import MULTI_READ_MAX, SWEEP_STEP, sweep_plan

    def synced(path: str, children: int, need: Need | None = Need.VERIFY) -> ZnodeWatch:
        watch = ZnodeWatch(path, state=ZnodeState.SYNCED)
        watch.names = tuple(f"10.0.0.{i}:80" for i in range(children))
        watch.needs = {name: need for name in watch.names} if need else {}
        return watch

    sweep = [synced(f"/s{i}", 20) for i in range(1000)]  # 20,000 version checks
    listed = ZnodeWatch("/listed", state=ZnodeState.CHANGED)
    told = synced("/told", 20)
    told.needs["10.0.0.3:80"] = Need.READ  # a child an event named, besides its checks
    work = sweep[:500] + [listed, told] + sweep[500:]

    named, step, more = sweep_plan(work)
    assert named == [listed, told] and more
    assert step == sweep[:SWEEP_STEP // 20]
    # What a step took is current again; the next pass takes the next step, then the last.
    for watch in step:
        watch.needs.clear()
    rest = [watch for watch in sweep if watch.needs]
    steps = 1
    while True:
        named, step, more = sweep_plan(rest)
        assert named == [] and sum(len(w.needs) for w in step) <= SWEEP_STEP
        steps += 1
        for watch in step:
            watch.needs.clear()
        rest = [watch for watch in rest if watch.needs]
        if not more:
            break
    assert rest == [] and steps == 20_000 // SWEEP_STEP
    # A small sweep goes with the rest in one pass.
    small = [synced(f"/m{i}", 20) for i in range(MULTI_READ_MAX // 20)]
    assert sweep_plan([*small, listed]) == ([*small, listed], [], False)
