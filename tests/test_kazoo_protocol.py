"""The watch layer over kazoo, on a real ZooKeeper 3.8: SetWatches on reconnect, persistent watches, fallback.

The client talks to ZooKeeper through ZkFrameProxy, which cuts its
connections and records every request it sends; ZooKeeper's own ``wchc``
says which watches the server holds for the session.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kazoo
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import UnimplementedError
from kazoo.protocol.connection import ConnectionHandler
from kazoo.protocol.states import WatchedEvent
from kazoo.retry import KazooRetry
from packaging.requirements import Requirement

from reloader.localenv.ensemble import LocalEnsemble
from reloader.localenv.zkproxy import ZkFrameProxy
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.sources.kazoo_protocol import (
    SET_WATCHES_MAX_BYTES,
    TESTED_KAZOO,
    AddWatch,
    KazooInternalsChanged,
    MultiRead,
    RemoveWatches,
    Resumption,
    SetWatches,
    SetWatches2,
    WatchingKazooClient,
    check_kazoo,
    set_watches_packets,
)

pytestmark = pytest.mark.timeout(60)

SET_WATCHES_OPS = {101, 105}
PING = 11
READS = {3, 4, 8, 12}  # exists, getData, getChildren, getChildren2


# -- helpers ------------------------------------------------------------------


def four_letter(port: int, word: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(word)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out.decode()


def watch_count(port: int) -> int:
    """Every watch the server holds, data and child (``mntr``'s zk_watch_count)."""
    (count,) = re.findall(r"^zk_watch_count\s+(\d+)$", four_letter(port, b"mntr"), re.MULTILINE)
    return int(count)


def server_watches(port: int, session_id: int) -> set[str]:
    """The paths the server holds a data, exists or persistent watch on for ``session_id``.

    ``wchc`` lists ZooKeeper's data-watch table only: child watches count in
    :func:`watch_count` alone.
    """
    held: dict[int, set[str]] = {}
    current: set[str] | None = None
    for line in four_letter(port, b"wchc").splitlines():
        if line.startswith("0x"):
            current = held.setdefault(int(line, 16), set())
        elif line.strip() and current is not None:
            current.add(line.strip())
    return held.get(session_id, set())


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Recorder:
    """Collects events (or resumptions) from kazoo's callback thread."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, item: Any) -> None:
        with self._lock:
            self.items.append(item)

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.items)

    def clear(self) -> None:
        with self._lock:
            self.items.clear()


def events(recorder: Recorder) -> set[tuple[str, str]]:
    return {(event.type, event.path) for event in recorder.snapshot() if isinstance(event, WatchedEvent)}


def opcodes(requests: list[Any]) -> list[int | None]:
    return [request.opcode for request in requests]


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def root(writer: KazooClient, request: pytest.FixtureRequest) -> str:
    path = f"/{request.node.name[:40]}-{time.monotonic_ns()}"
    writer.ensure_path(path)
    return path


@pytest.fixture
def proxies(quiet_zk: LocalZooKeeper) -> Iterator[Callable[..., ZkFrameProxy]]:
    made: list[ZkFrameProxy] = []

    def make(**kwargs: Any) -> ZkFrameProxy:
        made.append(ZkFrameProxy(quiet_zk.port, **kwargs).start())
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def clients() -> Iterator[Callable[..., WatchingKazooClient]]:
    made: list[WatchingKazooClient] = []

    def make(hosts: str, **kwargs: Any) -> WatchingKazooClient:
        # A short, flat retry: a test's blip ends in well under a second.
        retry = KazooRetry(max_tries=-1, delay=0.05, backoff=1, max_jitter=0.05)
        kwargs.setdefault("timeout", 10)
        client = WatchingKazooClient(hosts=hosts, connection_retry=retry, **kwargs)
        made.append(client)
        client.start(timeout=15)
        return client

    yield make
    for client in made:
        client.stop()
        client.close()


def resumed_after(client: WatchingKazooClient, drop: Callable[[], None]) -> Resumption:
    """Cut the connection with ``drop`` and return the report of the reconnection."""
    reports = Recorder()
    client.add_resume_listener(reports)
    try:
        drop()
        wait_until(lambda: reports.snapshot(), 20, "the reconnection's report")
        return reports.snapshot()[0]
    finally:
        client.remove_resume_listener(reports)


# -- kazoo's internals and the pin ---------------------------------------------


def test_kazoo_is_a_tested_release_with_the_internals_relied_on(monkeypatch: pytest.MonkeyPatch) -> None:
    check_kazoo()
    assert kazoo.__version__ in TESTED_KAZOO
    with pytest.raises(KazooInternalsChanged, match="2.99.0"):
        check_kazoo("2.99.0")
    # A hook whose signature moved is caught before any client runs on it.
    monkeypatch.setattr(ConnectionHandler, "_read_watch_event", lambda self, event: None)
    with pytest.raises(KazooInternalsChanged, match="_read_watch_event"):
        WatchingKazooClient(hosts="127.0.0.1:1")


def test_setup_pins_exactly_the_tested_kazoo_releases() -> None:
    setup = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
    (line,) = re.findall(r'"(kazoo[^"]*)"', setup)
    spec = Requirement(line).specifier
    assert all(version in spec for version in TESTED_KAZOO)
    minor = max(tuple(int(part) for part in version.split(".")[:2]) for version in TESTED_KAZOO)
    assert f"{minor[0]}.{minor[1] + 1}.0" not in spec, "an untested kazoo release is allowed"


# -- wire format ---------------------------------------------------------------


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!i", len(raw)) + raw


def _v(*paths: str) -> bytes:
    return struct.pack("!i", len(paths)) + b"".join(_s(path) for path in paths)


def test_requests_serialize_as_zookeepers_jute_records() -> None:
    zxid = 0x1_0000_0002
    assert (SetWatches.type, SetWatches2.type, AddWatch.type, RemoveWatches.type) == (101, 105, 106, 18)
    assert bytes(SetWatches(zxid, ("/d",), ("/e",), ("/c1", "/c2")).serialize()) == (
        struct.pack("!q", zxid) + _v("/d") + _v("/e") + _v("/c1", "/c2"))
    assert bytes(SetWatches2(zxid, (), ("/e",), (), ("/p",), ("/r",)).serialize()) == (
        struct.pack("!q", zxid) + _v() + _v("/e") + _v() + _v("/p") + _v("/r"))
    assert bytes(AddWatch("/svc", 1, print).serialize()) == _s("/svc") + struct.pack("!i", 1)
    assert bytes(RemoveWatches("/svc", 3).serialize()) == _s("/svc") + struct.pack("!i", 3)
    assert "é" and bytes(AddWatch("/é", 0).serialize()) == _s("/é") + struct.pack("!i", 0)


def test_a_multi_read_serializes_and_parses_as_zookeepers_jute_records() -> None:
    # MultiOperationRecord: per op a MultiHeader (type, done, err) and a
    # GetDataRequest (path, watch=false); the end mark (-1, true, -1).
    def header(kind: int, done: bool, err: int) -> bytes:
        return struct.pack("!i?i", kind, done, err)

    assert MultiRead.type == 22
    assert bytes(MultiRead(("/a/b", "/é")).serialize()) == (
        header(4, False, -1) + _s("/a/b") + b"\x00" + header(4, False, -1) + _s("/é") + b"\x00"
        + header(-1, True, -1))
    assert bytes(MultiRead(()).serialize()) == header(-1, True, -1)
    # The answer: per op a header, then data + Stat (11 fields), or an error code.
    stat = struct.pack("!qqqqiiiqiiq", 1, 77, 3, 4, 5, 6, 7, 0, 1, 0, 9)
    answer = (b"junk" + header(4, False, 0) + struct.pack("!i", 1) + b"7" + stat
              + header(-1, False, -101) + struct.pack("!i", -101)
              + header(4, False, 0) + struct.pack("!i", -1) + stat
              + header(4, False, 0) + struct.pack("!i", 0) + stat
              + header(-1, True, -1))
    (data, first), missing, (null, _), (empty, _) = MultiRead.deserialize(answer, 4)
    assert (data, first.mzxid, first.pzxid, null, empty) == (b"7", 77, 9, None, b"")
    assert type(missing).__name__ == "NoNodeError"
    with pytest.raises(ValueError, match="unexpected operation 5"):
        MultiRead.deserialize(header(5, False, 0) + header(-1, True, -1), 0)


def test_set_watches_split_into_packets_of_at_most_128_kb_in_order() -> None:
    data = [f"/services/team-{i:05d}/instance-{i:05d}" for i in range(4000)]
    child = [f"/services/team-{i:05d}" for i in range(4000)]
    recursive = [f"/r/{i:05d}" for i in range(3000)]
    packets = set_watches_packets(7, data=data, child=child, persistent_recursive=recursive)
    assert len(packets) >= 3
    for packet in packets:
        assert len(packet.serialize()) <= SET_WATCHES_MAX_BYTES
        assert packet.relative_zxid == 7
        # Only a packet carrying persistent watches needs the 3.6+ opcode.
        assert isinstance(packet, SetWatches2) == bool(getattr(packet, "persistent_recursive", ()))
    assert [path for packet in packets for path in packet.data] == data
    assert [path for packet in packets for path in packet.child] == child
    assert [path for packet in packets for path in getattr(packet, "persistent_recursive", ())] == recursive
    assert set_watches_packets(7) == []


# -- persistent watches --------------------------------------------------------


def test_a_recursive_watch_reports_every_change_under_it_without_rearming(
        quiet_zk: LocalZooKeeper, writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    proxy = proxies()
    client = clients(proxy.hosts, watch_mode="persistent")
    seen = Recorder()
    assert client.add_persistent_watch(root, seen) is True
    assert client.watch_mode_in_effect == "persistent"
    for round_ in range(3):
        child = f"{root}/10.0.0.{round_}:80"
        writer.create(child, b"1")
        writer.set(child, b"2")
        writer.create(f"{child}/deeper", b"")
        writer.delete(f"{child}/deeper")
        writer.delete(child)
        want = [("CREATED", child), ("CHANGED", child), ("CREATED", f"{child}/deeper"),
                ("DELETED", f"{child}/deeper"), ("DELETED", child)]
        total = 5 * (round_ + 1)
        wait_until(lambda total=total: len(seen.snapshot()) == total, 10, f"round {round_}'s events")
        assert [(e.type, e.path) for e in seen.snapshot()[-5:]] == want
    # One watch on the server for the whole subtree, and not a single read.
    assert server_watches(quiet_zk.port, client.client_id[0]) == {root}
    # ZooKeeper 3.8 files it in both its data and its child table: mntr counts 2.
    assert watch_count(quiet_zk.port) == 2
    assert not READS & set(opcodes(proxy.requests))


def test_a_persistent_watch_is_removed_with_removewatches(
        quiet_zk: LocalZooKeeper, writer: KazooClient, root: str,
        clients: Callable[..., WatchingKazooClient]) -> None:
    client = clients(quiet_zk.hosts, watch_mode="persistent")
    seen, one_shot = Recorder(), Recorder()
    assert client.add_persistent_watch(root, seen)
    client.get_children(root, watch=one_shot)
    assert watch_count(quiet_zk.port) == 2  # the child watch shares the recursive watch's entry
    client.remove_persistent_watch(root)
    assert client.persistent_watches() == {}
    # RemoveWatches removes every watch of the connection on that path: the one-shot watcher is told.
    assert watch_count(quiet_zk.port) == 0
    wait_until(lambda: [e.type for e in one_shot.snapshot()] == ["NONE"], 10, "the one-shot watcher's NONE")
    writer.create(f"{root}/a")
    client.sync(root)  # an event would have arrived before this answer
    assert seen.snapshot() == []
    client.remove_persistent_watch(root)  # nothing left: a no-op


# -- re-registration on reconnect ---------------------------------------------


def _watch_classically(client: KazooClient, writer: KazooClient, service: str, children: int,
                       seen: Recorder) -> None:
    for i in range(children):
        writer.create(f"{service}/10.0.0.{i}:80", b"1", makepath=True)
    assert len(client.get_children(service, watch=seen)) == children
    for i in range(children):
        assert client.exists(f"{service}/10.0.0.{i}:80", watch=seen)


def test_a_quiet_blip_sends_only_setwatches_and_the_server_keeps_every_watch(
        quiet_zk: LocalZooKeeper, writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    proxy = proxies()
    client = clients(proxy.hosts)
    seen = Recorder()
    _watch_classically(client, writer, f"{root}/classic", 5, seen)
    assert client.exists(f"{root}/absent", watch=seen) is None
    writer.ensure_path(f"{root}/persistent")
    assert client.add_persistent_watch(f"{root}/persistent", seen)
    session = client.client_id[0]
    before = server_watches(quiet_zk.port, session)
    assert len(before) == 5 + 1 + 1
    # Only this client holds watches on this server now: 1 child, 5 data, 1 exists, 2 for the persistent one.
    assert watch_count(quiet_zk.port) == 9
    client.set_watches_max_bytes = 120  # several packets, each answered by the real server

    report = resumed_after(client, proxy.drop)

    assert report.resumed and report.session_id == session
    assert not report.changed, report
    assert report.watches == 8
    assert report.packets > 1
    sent = opcodes(proxy.requests_on(proxy.accepted))
    assert sent[0] is None  # the ConnectRequest
    assert set(sent[1:1 + report.packets]) <= SET_WATCHES_OPS, "SetWatches is not sent first"
    assert set(sent[1:]) <= SET_WATCHES_OPS | {PING}, "the client read after a quiet blip"
    assert sent.count(101) + sent.count(105) == report.packets
    assert server_watches(quiet_zk.port, session) == before
    assert watch_count(quiet_zk.port) == 9
    assert seen.snapshot() == []

    # The watches the server kept still fire.
    writer.create(f"{root}/classic/10.0.0.9:80")
    writer.set(f"{root}/classic/10.0.0.1:80", b"2")
    writer.create(f"{root}/absent")
    writer.create(f"{root}/persistent/x")
    want = {("CHILD", f"{root}/classic"), ("CHANGED", f"{root}/classic/10.0.0.1:80"),
            ("CREATED", f"{root}/absent"), ("CREATED", f"{root}/persistent/x")}
    wait_until(lambda: events(seen) == want, 10, "the events after the blip")


def test_stock_kazoo_loses_every_watch_on_a_blip(
        quiet_zk: LocalZooKeeper, writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy]) -> None:
    """What the layer is for: with kazoo alone, the server holds nothing after a blip and every watch is re-read."""
    proxy = proxies()
    client = KazooClient(hosts=proxy.hosts, timeout=10,
                         connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=1, max_jitter=0.05))
    client.start(timeout=15)
    try:
        seen = Recorder()
        _watch_classically(client, writer, f"{root}/classic", 3, seen)
        assert watch_count(quiet_zk.port) == 4
        proxy.drop()
        wait_until(lambda: proxy.accepted == 2 and client.connected, 10, "the reconnection")
        wait_until(lambda: [e.type for e in seen.snapshot()] == ["NONE"] * 4, 10, "the NONE events")
        client.sync("/")  # the server has handled the new connection
        assert watch_count(quiet_zk.port) == 0
    finally:
        client.stop()
        client.close()


def test_changes_made_during_a_blip_fire_after_the_reconnect(
        quiet_zk: LocalZooKeeper, writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    proxy = proxies()
    client = clients(proxy.hosts)
    seen = Recorder()
    service = f"{root}/classic"
    _watch_classically(client, writer, service, 3, seen)
    assert client.exists(f"{root}/later", watch=seen) is None
    writer.ensure_path(f"{root}/persistent/a")
    persistent = Recorder()
    assert client.add_persistent_watch(f"{root}/persistent", persistent)
    session = client.client_id[0]

    def blip_with_changes() -> None:
        proxy.hold()
        wait_until(lambda: not client.connected, 10, "the client to see the connection drop")
        writer.create(f"{service}/10.0.0.7:80", b"1")
        writer.delete(f"{service}/10.0.0.0:80")
        writer.set(f"{service}/10.0.0.1:80", b"5")
        writer.create(f"{root}/later")
        writer.create(f"{root}/persistent/b")
        writer.set(f"{root}/persistent/a", b"5")
        proxy.release()

    report = resumed_after(client, blip_with_changes)

    assert report.resumed and report.session_id == session and report.changed
    # Fired by the server from the SetWatches alone, before its answer (so before the report).
    assert events(seen) == {("CHILD", service), ("DELETED", f"{service}/10.0.0.0:80"),
                            ("CHANGED", f"{service}/10.0.0.1:80"), ("CREATED", f"{root}/later")}
    assert not READS & set(opcodes(proxy.requests_on(proxy.accepted)))
    # ZooKeeper re-adds a persistent watch without looking back: the caller
    # learns from report.changed that it must check those paths itself.
    assert persistent.snapshot() == []
    writer.delete(f"{root}/persistent/b")
    wait_until(lambda: events(persistent) == {("DELETED", f"{root}/persistent/b")}, 10, "a later event")


def test_an_expired_session_sends_no_setwatches_and_reports_a_new_session(
        quiet_zk: LocalZooKeeper, writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    proxy = proxies()
    client = clients(proxy.hosts)
    seen = Recorder()
    _watch_classically(client, writer, f"{root}/classic", 2, seen)
    assert client.add_persistent_watch(root, seen)
    session, password = client.client_id

    def expire() -> None:
        proxy.hold()
        # Closing the session from another connection expires it for the client.
        other = KazooClient(hosts=quiet_zk.hosts, client_id=(session, password))
        other.start(timeout=10)
        other.stop()
        other.close()
        proxy.release()

    report = resumed_after(client, expire)

    assert not report.resumed and report.session_id != session and report.changed
    assert client.client_id[0] == report.session_id
    sent = opcodes(proxy.requests)
    assert not SET_WATCHES_OPS & set(sent[sent.index(None, 1):]), "SetWatches was sent after the first connect"
    assert client.persistent_watches() == {}
    # Every watcher was told its watch is gone.
    wait_until(lambda: [e.type for e in seen.snapshot()] == ["NONE"] * 4, 10, "the NONE events")
    assert watch_count(quiet_zk.port) == 0


def test_a_request_queued_while_disconnected_goes_after_setwatches(
        writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    proxy = proxies()
    client = clients(proxy.hosts)
    client.get_children(root, watch=Recorder())
    queued: list[Any] = []

    def blip_with_a_queued_read() -> None:
        proxy.hold()
        wait_until(lambda: not client.connected, 10, "the client to see the connection drop")
        queued.append(client.get_children_async(root))
        proxy.release()

    resumed_after(client, blip_with_a_queued_read)
    assert queued[0].get(timeout=10) == []
    sent = [op for op in opcodes(proxy.requests_on(proxy.accepted)) if op != PING]
    assert sent == [None, 101, 8]


def test_pings_keep_the_zxid_fresh_for_a_client_that_only_receives_events(
        writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    proxy = proxies()
    client = clients(proxy.hosts, watch_mode="persistent", timeout=2.0)  # pings every ~0.6 s
    seen = Recorder()
    assert client.add_persistent_watch(root, seen)
    writer.create(f"{root}/a")
    wait_until(lambda: events(seen) == {("CREATED", f"{root}/a")}, 10, "the event")
    wait_until(lambda: client.last_zxid >= writer.last_zxid, 10, "a ping to bring the zxid")
    report = resumed_after(client, proxy.drop)
    assert report.resumed and not report.changed


# -- servers without persistent watches ------------------------------------------


def test_auto_mode_falls_back_to_classic_on_a_server_that_refuses_addwatch(
        quiet_zk: LocalZooKeeper, writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    # What ZooKeeper 3.5 does with an opcode it does not know: UNIMPLEMENTED, then it closes the connection.
    proxy = proxies(refuse={106: -6, 105: -6})
    client = clients(proxy.hosts, watch_mode="auto")
    assert client.watch_mode_in_effect is None
    seen = Recorder()
    assert client.get_children(root, watch=seen) == []
    session = client.client_id[0]

    report = resumed_after(client, lambda: client.add_persistent_watch(root, seen))

    # It survived the close as a blip: same session, its classic watch sent back with 101 (not 105).
    assert report.resumed and report.session_id == session and report.watches == 1
    assert client.watch_mode_in_effect == "classic"
    assert client.add_persistent_watch(root, seen) is False
    assert opcodes(proxy.requests).count(106) == 1, "auto mode tries once per session"
    assert 101 in opcodes(proxy.requests_on(proxy.accepted))
    writer.create(f"{root}/a")
    wait_until(lambda: events(seen) == {("CHILD", root)}, 10, "the classic watch's event")


def test_a_refused_reregistration_falls_back_to_kazoos_own_behaviour(
        quiet_zk: LocalZooKeeper, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    # The session moves to an older server, which refuses SetWatches2 (and closes).
    proxy = proxies()
    client = clients(proxy.hosts, watch_mode="persistent")
    client.set_watches_max_bytes = 40  # the refusal comes with answers still due
    seen = Recorder()
    for name in ("a", "b", "c"):
        client.exists(f"{root}/{name}", watch=seen)
    assert client.add_persistent_watch(root, seen)
    session = client.client_id[0]
    proxy.refuse = {105: -6, 101: -6}
    reports = Recorder()
    client.add_resume_listener(reports)
    proxy.drop()
    wait_until(lambda: len(reports.snapshot()) >= 2, 20, "the refusal and the clean reconnection")
    refused, clean = reports.snapshot()[:2]
    assert not refused.resumed and refused.changed and refused.session_id == session
    assert clean.resumed and clean.watches == 0 and clean.session_id == session
    assert [e.type for e in seen.snapshot()] == ["NONE"] * 4
    assert client.persistent_watches() == {}
    assert client.get_children(root) == []  # the connection loop is alive and well


def test_persistent_mode_raises_and_classic_mode_never_asks(
        quiet_zk: LocalZooKeeper, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient]) -> None:
    proxy = proxies(refuse={106: -6})
    strict = clients(proxy.hosts, watch_mode="persistent")
    with pytest.raises(UnimplementedError):
        strict.add_persistent_watch(root, print)
    classic = clients(quiet_zk.hosts, watch_mode="classic")
    assert classic.add_persistent_watch(root, print) is False
    assert classic.watch_mode_in_effect == "classic"
    assert classic.persistent_watches() == {}
    with pytest.raises(ValueError):
        WatchingKazooClient(hosts=quiet_zk.hosts, watch_mode="sometimes")


# -- measured at the scale --------------------------------------------------


def test_measured_a_quiet_blip_at_100_upstreams_x_20(
        quiet_zk: LocalZooKeeper, writer: KazooClient, root: str, proxies: Callable[..., ZkFrameProxy],
        clients: Callable[..., WatchingKazooClient], capsys: pytest.CaptureFixture[str]) -> None:
    upstreams, instances = 100, 20
    services = [f"{root}/upstream-{u:04d}" for u in range(upstreams)]
    pending = [writer.create_async(service) for service in services]
    for result in pending:
        result.get(timeout=10)
    pending = [writer.create_async(f"{service}/10.0.{u}.{i}:8080", b"")
               for u, service in enumerate(services) for i in range(instances)]
    for result in pending:
        result.get(timeout=10)

    # Classic watches, as the source keeps them today: a list per upstream, an exists per instance.
    proxy = proxies()
    client = clients(proxy.hosts, watch_mode="classic")
    seen = Recorder()
    reads = [client.get_children_async(service, watch=seen) for service in services]
    reads += [client.exists_async(f"{service}/10.0.{u}.{i}:8080", watch=seen)
              for u, service in enumerate(services) for i in range(instances)]
    for result in reads:
        assert result.get(timeout=10) is not None
    held = watch_count(quiet_zk.port)
    assert held == upstreams * (1 + instances)
    report = resumed_after(client, proxy.drop)
    sent = [op for op in opcodes(proxy.requests_on(proxy.accepted))[1:] if op != PING]
    assert report.resumed and not report.changed
    assert sent == [101] * report.packets and len(sent) <= 20
    assert watch_count(quiet_zk.port) == held and seen.snapshot() == []
    classic = (len(sent), report.packets, report.watches, held)

    # Persistent: one recursive watch per upstream.
    client.stop()
    wait_until(lambda: watch_count(quiet_zk.port) == 0, 10, "the classic session's watches to go")
    persistent_proxy = proxies()
    persistent = clients(persistent_proxy.hosts, watch_mode="persistent")
    for service in services:
        assert persistent.add_persistent_watch(service, seen)
    held_persistent = watch_count(quiet_zk.port)
    paths = len(server_watches(quiet_zk.port, persistent.client_id[0]))
    report = resumed_after(persistent, persistent_proxy.drop)
    sent = [op for op in opcodes(persistent_proxy.requests_on(persistent_proxy.accepted))[1:] if op != PING]
    assert report.resumed and sent == [105] * report.packets
    assert watch_count(quiet_zk.port) == held_persistent

    with capsys.disabled():
        print(f"\n{upstreams} upstreams x {instances}: quiet blip, classic watches: {classic[0]} requests "
              f"({classic[1]} SetWatches packets carrying {classic[2]} watches); server watches {classic[3]} "
              f"({classic[3] / upstreams:.2f} per upstream)")
        print(f"{upstreams} upstreams x {instances}: persistent recursive: mntr zk_watch_count {held_persistent} "
              f"({held_persistent / upstreams:.2f} per upstream), wchc paths {paths} "
              f"({paths / upstreams:.2f} per upstream); quiet blip: {len(sent)} requests")


# -- a leader change ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_persistent_watch_survives_a_leader_change(
        zookeeper_installed: None, clients: Callable[..., WatchingKazooClient]) -> None:
    with LocalEnsemble() as ensemble:
        writer = KazooClient(hosts=ensemble.hosts, timeout=10)
        writer.start(timeout=15)
        try:
            writer.ensure_path("/svc/app")
            client = clients(ensemble.hosts, watch_mode="persistent")
            seen = Recorder()
            assert client.add_persistent_watch("/svc/app", seen)
            session = client.client_id[0]

            report = resumed_after(client, lambda: ensemble.kill(ensemble.leader()))

            assert report.resumed and report.session_id == session and report.watches == 1
            port = client._connection._socket.getpeername()[1]
            assert server_watches(port, session) == {"/svc/app"}
            writer.retry(writer.create, "/svc/app/10.0.0.1:80")
            wait_until(lambda: events(seen) == {("CREATED", "/svc/app/10.0.0.1:80")}, 15, "the event")
        finally:
            writer.stop()
            writer.close()
