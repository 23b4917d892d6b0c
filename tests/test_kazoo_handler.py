"""PollingHandler.select keeps the contract of kazoo's stock select, on real sockets and a real ZooKeeper."""

from __future__ import annotations

import socket
import time

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.utils import selector_select

from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.sources.kazoo_handler import PollingHandler


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
