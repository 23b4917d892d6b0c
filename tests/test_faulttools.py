"""The fault-injection tools themselves: TcpProxy, HangingServer, LocalEnsemble.

Each tool is checked against what its docstring promises, with real sockets,
a real ZooKeeper and a real ensemble. Waits are polled conditions under a
deadline.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient, KazooState

from reloader.localenv.ensemble import LocalEnsemble, four_letter_word
from reloader.localenv.tcpproxy import TcpProxy, close_socket
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.hangingserver import HangingServer


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class EchoServer:
    """A TCP echo server on 127.0.0.1 that counts its connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.closed_by_peer = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(sock,), daemon=True).start()

    def _echo(self, sock: socket.socket) -> None:
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self.closed_by_peer += 1
                    return
                sock.sendall(data)

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would
        # leave the port listening for the rest of the run.
        close_socket(self.listener)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.port) as p:
        yield p


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock.settimeout(0.3)
    return sock


def _roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    deadline = time.monotonic() + 2
    while len(got) < len(data) and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        got += chunk
    return got


def _silent(sock: socket.socket, seconds: float = 0.3) -> bool:
    """True if nothing arrives and the connection stays open for ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b"never"  # an empty read (close) is not silence either
    except socket.timeout:
        return True


# -- TcpProxy -------------------------------------------------------------------


def test_proxy_pass_forwards_both_ways(proxy: TcpProxy, echo: EchoServer) -> None:
    assert proxy.hosts == f"127.0.0.1:{proxy.port}" and proxy.mode == "pass"
    with _connect(proxy.port) as sock:
        payload = bytes(range(256)) * 1000
        assert _roundtrip(sock, payload) == payload
    wait_for(lambda: echo.closed_by_peer == 1, "the close to reach the target")


def test_proxy_blackhole_swallows_new_and_existing_connections_without_closing(
    proxy: TcpProxy, echo: EchoServer,
) -> None:
    existing = _connect(proxy.port)
    assert _roundtrip(existing, b"hello") == b"hello"
    proxy.blackhole()
    existing.sendall(b"lost")
    assert _silent(existing)
    fresh = _connect(proxy.port)  # accepted ...
    fresh.sendall(b"x" * 100_000)  # ... and its bytes read, so the writer never blocks
    assert _silent(fresh)
    assert echo.accepted == 1  # never forwarded: the target saw no new connection
    assert proxy.connections == 2

    # Back to pass: new connections forward; the black-holed ones stay silent.
    proxy.pass_through()
    with _connect(proxy.port) as third:
        assert _roundtrip(third, b"again") == b"again"
    existing.sendall(b"still lost")
    assert _silent(existing)
    existing.close()
    fresh.close()


def test_proxy_refuse_resets_existing_and_refuses_new(proxy: TcpProxy) -> None:
    existing = _connect(proxy.port)
    assert _roundtrip(existing, b"hi") == b"hi"
    proxy.refuse()
    with pytest.raises(ConnectionResetError):
        existing.settimeout(2)
        existing.recv(1)
    existing.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    # The same port comes back.
    proxy.pass_through()
    with _connect(proxy.port) as sock:
        assert _roundtrip(sock, b"back") == b"back"


def test_proxy_blackhole_after_stalls_mid_stream(proxy: TcpProxy) -> None:
    proxy.blackhole_after(10)
    with _connect(proxy.port) as sock:
        assert _roundtrip(sock, b"0123456789abcdef") == b"0123456789"
        assert proxy.budget_spent.wait(2)
        assert proxy.mode == "blackhole"
        assert _silent(sock)


def test_proxy_close_ends_everything(echo: EchoServer) -> None:
    proxy = TcpProxy(echo.port).start()
    sock = _connect(proxy.port)
    assert _roundtrip(sock, b"x") == b"x"
    proxy.close()
    sock.settimeout(2)
    assert sock.recv(1) == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    proxy.close()  # idempotent


def test_proxy_blackhole_expires_a_zookeeper_session_for_that_client_only(zk: LocalZooKeeper) -> None:
    with TcpProxy(zk.port) as proxy:
        states: list[KazooState] = []
        behind = KazooClient(hosts=proxy.hosts, timeout=2.0,
                             connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 0.5})
        behind.add_listener(states.append)
        direct = zk.client()
        try:
            behind.start(timeout=10)
            behind.exists("/")
            proxy.blackhole()
            # ZooKeeper closes the connection of a session it expired.
            wait_for(lambda: proxy.target_closes >= 1, "ZooKeeper to expire the session", 10)
            assert KazooState.SUSPENDED in states
            direct.exists("/")  # the direct client never noticed
            proxy.pass_through()
            wait_for(lambda: KazooState.LOST in states, "the client to learn its session is lost", 15)
        finally:
            behind.stop()
            behind.close()
            direct.stop()
            direct.close()


# -- HangingServer ----------------------------------------------------------------


def test_hanging_server_reads_the_request_and_never_answers() -> None:
    with HangingServer() as server:
        request = urllib.request.Request(f"{server.url}/upstream/app1", data=b"server 10.0.0.1:80;", method="POST")
        began = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            urllib.request.urlopen(request, timeout=0.5)
        assert time.monotonic() - began >= 0.45
        assert server.received.is_set()
        assert server.requests == [("POST", "/upstream/app1", b"server 10.0.0.1:80;")]


def test_hanging_server_with_delay_answers_late() -> None:
    with HangingServer(delay=0.3) as server:
        began = time.monotonic()
        with urllib.request.urlopen(f"{server.url}/detail", timeout=5) as answer:
            assert answer.status == 200 and answer.read() == b"success"
        assert time.monotonic() - began >= 0.3


def test_hanging_server_close_drops_held_connections() -> None:
    server = HangingServer().start()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
    sock.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.received.wait(2)
    server.close()
    sock.settimeout(2)
    assert sock.recv(1) == b""
    sock.close()


# -- LocalEnsemble ------------------------------------------------------------------


def test_ensemble_failover_quorum_loss_observer_and_pause(zookeeper_installed: None) -> None:
    with LocalEnsemble(observers=1) as ensemble:
        print(f"ensemble of 3 + 1 observer ready in {ensemble.last_start_seconds:.2f} s")
        assert len(ensemble.hosts.split(",")) == 3 and len(ensemble.observer_hosts.split(",")) == 1
        assert ensemble.nodes[3].mode() == "observer"
        assert (four_letter_word(ensemble.nodes[0].port, "ruok") or "") == "imok"
        client = KazooClient(hosts=ensemble.hosts, timeout=2.0)
        observer_client = KazooClient(hosts=ensemble.observer_hosts, timeout=2.0)
        client.start(timeout=10)
        observer_client.start(timeout=10)
        try:
            client.create("/x", b"1")
            wait_for(lambda: observer_client.exists("/x"), "the write to reach the observer")

            leader = ensemble.leader()
            began = time.monotonic()
            ensemble.kill(leader)
            new_leader = ensemble.leader()
            print(f"failover after kill -9 of the leader: {time.monotonic() - began:.2f} s")
            assert new_leader != leader
            client.retry(client.set, "/x", b"2")

            # Two voters down: no quorum, no service.
            other = next(i for i in range(3) if i not in (leader, new_leader))
            ensemble.stop(other)
            wait_for(lambda: ensemble.nodes[new_leader].mode() is None, "the last voter to stop serving")
            ensemble.start(leader)  # quorum again
            assert ensemble.leader() in (leader, new_leader)
            assert client.retry(client.get, "/x")[0] == b"2"

            # A paused node keeps its sockets but answers nothing, not even srvr.
            ensemble.pause(leader)
            assert ensemble.nodes[leader].running and ensemble.nodes[leader].mode() is None
            ensemble.resume(leader)
            wait_for(lambda: ensemble.nodes[leader].mode() is not None, "the resumed node to answer")
            ensemble.start(other)
            wait_for(lambda: all(n.mode() is not None for n in ensemble.nodes), "every node to serve again")
        finally:
            for c in (client, observer_client):
                c.stop()
                c.close()
    assert not ensemble.workdir.exists()


# ---- ZkFrameProxy.stall_after: a one-way black hole after one request ----------------------


class _FramedEcho(EchoServer):
    """An :class:`EchoServer` that answers frame by frame (length-prefixed) and keeps the frames: the proxy's far side."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        super().__init__()

    def _echo(self, sock: socket.socket) -> None:
        with sock:
            while True:
                head = _recv_exactly(sock, 4)
                body = _recv_exactly(sock, int.from_bytes(head, "big")) if head else None
                if head is None or body is None:
                    return
                self.frames.append(body)
                sock.sendall(head + body)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None if the connection ends (or is reset) first."""
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def _frame(xid: int, opcode: int) -> bytes:
    body = xid.to_bytes(4, "big", signed=True) + opcode.to_bytes(4, "big", signed=True) + b"payload"
    return len(body).to_bytes(4, "big") + body


def test_stall_after_forwards_the_request_and_black_holes_everything_back_on_that_connection_only() -> None:
    from reloader.localenv.zkproxy import ZkFrameProxy

    echo = _FramedEcho()
    proxy = ZkFrameProxy(echo.port).start()
    try:
        proxy.stall_after(3)
        first = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        first.sendall(b"\x00\x00\x00\x04conn")  # the ConnectRequest: never an opcode
        assert _recv_exactly(first, 8) == b"\x00\x00\x00\x04conn"
        first.sendall(_frame(1, 4))
        assert _recv_exactly(first, 4 + 15)[4:8] == (1).to_bytes(4, "big")
        assert not proxy.stalled
        first.sendall(_frame(2, 3) + _frame(3, 4))
        wait_for(lambda: len(echo.frames) == 4, "both requests to reach the server")  # the way up still works
        assert proxy.stalled
        first.settimeout(0.5)
        with pytest.raises(socket.timeout):
            first.recv(1)  # the answers to both were read by the proxy and dropped
        # The stall was used up: another connection, even sending the same opcode, is served.
        second = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        second.sendall(b"\x00\x00\x00\x04conn" + _frame(4, 3))
        assert _recv_exactly(second, 8) == b"\x00\x00\x00\x04conn"
        assert _recv_exactly(second, 4 + 15)[4:8] == (4).to_bytes(4, "big")
        first.close()
        wait_for(lambda: not proxy.stalled, "the stalled connection to be gone")
        second.close()
    finally:
        proxy.close()
        echo.close()
