"""Resync after a reconnect, against a real ZooKeeper behind a switchable TCP proxy.

A session can survive a disconnection (SUSPENDED -> CONNECTED, no LOST). The
client sends its watches back (SetWatches) and the server fires those whose
nodes changed meanwhile; a persistent watch is re-added without that check,
so under one every child's version is checked. This checks, in both watch
modes, that what changed while the client was away is published, that only
the children whose data moved are read again, and that later changes still
arrive through the watches kept.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from kazoo.client import KazooClient

from reloader.cluster import ClusterWorker
from reloader.config import parse_config
from reloader.localenv.tcpproxy import TcpProxy
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.model import Upstream
from reloader.sources.kazoo_protocol import WatchingKazooClient


class CountingClient(WatchingKazooClient):
    """The real kazoo client, counting the child data reads it is asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_reads: list[str] = []

    def get_async(self, path: str, watch: Any = None) -> Any:
        self.data_reads.append(path)
        return super().get_async(path, watch=watch)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.parametrize("watch_mode", ["classic", "persistent"])
def test_a_surviving_session_reads_only_what_changed_and_publishes_it(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, caplog: pytest.LogCaptureFixture, watch_mode: str
) -> None:
    caplog.set_level(logging.INFO, logger="reloader.sources.zookeeper")
    path = f"{zk_root}/app1"
    for k in range(1, 4):
        zk_client.create(f"{path}/10.0.0.{k}:80", b"", makepath=True)
    proxy = TcpProxy(zk.port).start()
    config = parse_config({"zk_servers": proxy.hosts, "zk_nodes": {"app1": path},
                           "settle_after_reconnect": 0, "max_drop": "100%", "watch_mode": watch_mode},
                          source="test")
    published: list[Upstream] = []
    lock = threading.Lock()
    clients: list[CountingClient] = []

    def factory(*args: Any, **kwargs: Any) -> CountingClient:
        clients.append(CountingClient(*args, **kwargs))
        return clients[-1]

    def publish(batch: list[Upstream]) -> None:
        with lock:
            published.extend(batch)

    def latest() -> dict[str, int] | None:
        with lock:
            return {s.address: s.weight for s in published[-1].servers} if published else None

    worker = ClusterWorker(config.clusters[0], publish, session_timeout=8.0, client_factory=factory)
    worker.start()
    try:
        wait_until(lambda: latest() == {f"10.0.0.{k}:80": 1 for k in range(1, 4)}, 15, "the first state")
        client = clients[0]
        assert len(client.data_reads) == 3
        session = client.client_id
        client.data_reads.clear()

        proxy.refuse()
        wait_until(lambda: not worker.freeze.is_open, 10, "the cluster to freeze")
        zk_client.create(f"{path}/10.0.0.4:80", b"")
        zk_client.set(f"{path}/10.0.0.2:80", b"3")
        proxy.pass_through()

        want = {"10.0.0.1:80": 1, "10.0.0.2:80": 3, "10.0.0.3:80": 1, "10.0.0.4:80": 1}
        wait_until(lambda: latest() == want, 15, "the changes made while away")
        assert client.client_id == session, "the session survived"
        # The unchanged children were checked by version, not read again one
        # by one: by exists (classic), or all in one multi-read that also
        # brought the changed one's data (persistent).
        changed = [f"{path}/10.0.0.2:80"] if watch_mode == "classic" else []
        assert sorted(client.data_reads) == [*changed, f"{path}/10.0.0.4:80"]

        # Later changes still arrive through the watches set again, on the
        # children that were only checked as well as on those read.
        zk_client.delete(f"{path}/10.0.0.1:80")
        zk_client.set(f"{path}/10.0.0.3:80", b"2")
        want = {"10.0.0.2:80": 3, "10.0.0.3:80": 2, "10.0.0.4:80": 1}
        wait_until(lambda: latest() == want, 10, "changes after the resync")
    finally:
        worker.stop_event.set()
        worker.wake()
        worker.close_session()
        worker.join(time.monotonic() + 5)
        proxy.close()
