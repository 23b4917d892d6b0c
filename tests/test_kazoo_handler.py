"""PollingHandler: select keeps the contract of kazoo's stock select; hand-on callbacks run at once.

On real sockets and a real ZooKeeper.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.utils import selector_select
from kazoo.protocol.states import Callback

from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.sources.kazoo_handler import READ_SIZE, BufferedSocket, PollingHandler, hands_on, is_hands_on


def both(rlist: list[object], wlist: list[object], timeout: float) -> tuple[object, object]:
    ours = PollingHandler().select(rlist, wlist, [], timeout)
    stock = selector_select(rlist, wlist, [], timeout)
    return ours, stock


def test_same_answers_as_the_stock_select() -> None:
    a, b = socket.socketpair()
    try:
        assert both([a], [], 0.0) == (([], [], []), ([], [], []))  # nothing to read yet
        assert both([], [a], 0.0) == (([], [a], []), ([], [a], []))  # writable at once
        b.send(b"x")
        assert both([a, b], [], 0.0) == (([a], [], []), ([a], [], []))
        assert both([a], [a], 0.0)[0] == ([a], [], [])  # reading wins
        b.close()
        a.recv(1)
        assert both([a], [], 0.0) == (([a], [], []), ([a], [], []))  # a hang-up reads as readable
        assert both([], [a], 0.0)[0] == both([], [a], 0.0)[1]
    finally:
        a.close()


def test_bad_timeouts_are_refused_like_the_stock_select() -> None:
    with pytest.raises(ValueError):
        PollingHandler().select([], [], [], -1)
    with pytest.raises(TypeError):
        PollingHandler().select([], [], [], "1")  # type: ignore[arg-type]


def test_a_buffered_socket_serves_packets_from_one_read_in_order_and_never_more_than_asked() -> None:
    a, b = socket.socketpair()
    reads: list[int] = []

    class Counting:
        def recv(self, size: int) -> bytes:
            reads.append(size)
            return a.recv(size)

        def fileno(self) -> int:
            return a.fileno()

    try:
        buffered = BufferedSocket(Counting())
        packets = [bytes([k]) * (k * 7 + 1) for k in range(40)]
        b.sendall(b"".join(packets))
        got = [buffered.recv(len(packet)) for packet in packets]
        assert got == packets and reads == [READ_SIZE], "one read from the kernel served every packet"
        assert buffered.pending() == 0
        b.sendall(b"abcdef")
        assert buffered.recv(4) == b"abcd" and buffered.pending() == 2
        assert buffered.recv(10) == b"ef", "what is buffered, and no wait for more"
        big = b"z" * (READ_SIZE * 2)
        threading.Thread(target=b.sendall, args=(big,), daemon=True).start()
        whole = b""
        while len(whole) < len(big):
            whole += buffered.recv(len(big) - len(whole))
        assert whole == big
        b.close()
        assert buffered.recv(4) == b"", "the socket's end, as it comes"
    finally:
        a.close()


def test_bytes_already_buffered_are_ready_at_once_and_the_other_readers_are_still_polled() -> None:
    a, b = socket.socketpair()
    wake_r, wake_w = socket.socketpair()
    try:
        buffered = BufferedSocket(a)
        b.sendall(b"12345678")
        assert buffered.recv(4) == b"1234"  # the rest now waits in the buffer, not in the kernel
        handler = PollingHandler()
        began = time.monotonic()
        assert handler.select([buffered, wake_r], [], [], 5.0)[0] == [buffered]
        assert time.monotonic() - began < 1.0, "a buffered reader never waits for the kernel"
        wake_w.send(b"x")
        assert handler.select([buffered, wake_r], [], [], 5.0)[0] == [buffered, wake_r]
        assert buffered.recv(4) == b"5678"
        assert handler.select([buffered, wake_r], [], [], 0.0)[0] == [wake_r]
    finally:
        for sock in (a, b, wake_r, wake_w):
            sock.close()


def test_a_client_on_it_reads_and_watches(zk: LocalZooKeeper, zk_root: str) -> None:
    client = KazooClient(hosts=zk.hosts, handler=PollingHandler())
    client.start(timeout=15)
    try:
        client.create(f"{zk_root}/h/a", b"1", makepath=True)
        seen: list[object] = []
        children = client.get_children(f"{zk_root}/h", watch=seen.append)
        assert children == ["a"]
        client.create(f"{zk_root}/h/b")
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen and getattr(seen[0], "type", None) == "CHILD"
        assert client.get(f"{zk_root}/h/a")[0] == b"1"
    finally:
        client.stop()
        client.close()


def test_hands_on_callbacks_run_at_once_in_order_and_their_errors_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    handler = PollingHandler()
    handler.start()
    try:
        stuck, release = threading.Event(), threading.Event()
        seen: list[tuple[str, str]] = []

        def hold() -> None:
            stuck.set()
            release.wait(10)

        @hands_on
        def marked(tag: str) -> None:
            seen.append((tag, threading.current_thread().name))

        @hands_on
        def broken() -> None:
            raise RuntimeError("a broken watcher")

        def queued(tag: str) -> None:
            seen.append((tag, threading.current_thread().name))

        handler.dispatch_callback(Callback("watch", hold, ()))
        assert stuck.wait(10)
        handler.dispatch_callback(Callback("watch", queued, ("queued",)))
        handler.dispatch_callback(Callback("watch", marked, ("first",)))
        with caplog.at_level(logging.ERROR, logger="reloader.sources.kazoo_handler"):
            handler.dispatch_callback(Callback("watch", broken, ()))
        handler.dispatch_callback(Callback("watch", marked, ("second",)))
        me = threading.current_thread().name
        # While kazoo's callback thread is held, the marked ones ran here, in order; the other waits.
        assert seen == [("first", me), ("second", me)]
        assert "a broken watcher" in caplog.text
        release.set()
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen[2][0] == "queued" and seen[2][1] != me
    finally:
        release.set()
        handler.stop()


def test_a_bound_method_of_a_marked_function_is_marked() -> None:
    class Consumer:
        @hands_on
        def event(self, value: object) -> None:
            pass

        def other(self, value: object) -> None:
            pass

    assert is_hands_on(Consumer().event) and not is_hands_on(Consumer().other)
