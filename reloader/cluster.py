"""One ZooKeeper cluster on a thread of its own: its session, its watches, its pipeline.

Guarantees:

* everything that may wait on this cluster's ZooKeeper (arming watches,
  reads, resyncs) runs on this cluster's thread, so a cluster that is slow,
  black-holed or gone delays no other cluster and no output;
* publishing never blocks: what the pipeline publishes during one pass of
  the loop (a burst of events, a whole resync) is handed to the files
  runner's queue in one go, so the outputs see it as one batch;
* the thread count is one per cluster (plus kazoo's own per client),
  whatever the number of znodes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from kazoo.client import KazooClient

from reloader.config import ClusterConfig
from reloader.inbox import Inbox
from reloader.model import Upstream
from reloader.pipeline import Pipeline
from reloader.publication import ClusterFreeze
from reloader.resolve import HostChecker
from reloader.sources.zookeeper import ZooKeeperSource

log = logging.getLogger(__name__)

# The longest the thread sleeps, so that delayed tasks stay timely.
MAX_IDLE = 0.5


class ClusterWorker:
    """Watches one cluster and publishes its upstreams through ``publish``."""

    def __init__(
        self,
        cluster: ClusterConfig,
        publish: Callable[[list[Upstream]], None],
        session_timeout: float,
        client_factory: Callable[..., KazooClient] = KazooClient,
        hosts: HostChecker | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.cluster = cluster
        self._stopping = stopping or threading.Event()
        self.inbox = Inbox()
        self.freeze = ClusterFreeze()
        self._publish = publish
        self._published: list[Upstream] = []
        self.pipeline = Pipeline(
            cluster.znodes, self._published.append, self.freeze, schedule=self.inbox.call_later, hosts=hosts,
        )
        self.source = ZooKeeperSource(
            cluster, self.inbox, self.pipeline, self.freeze, session_timeout, client_factory,
            stopping=self._stopping.is_set,
        )
        self._thread = threading.Thread(target=self._loop, name=f"cluster-{cluster.index}", daemon=True)

    @property
    def label(self) -> str:
        return self.cluster.label

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self.source.start()
        self._thread.start()

    def wake(self) -> None:
        self.inbox.put(lambda: None)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            for task in self.inbox.drain(MAX_IDLE):
                if self._stopping.is_set():
                    return  # what is left of the batch is moot; shut down promptly
                try:
                    task()
                except Exception:  # noqa: BLE001 - the cluster thread must survive any one task
                    log.exception("cluster %s: a task failed", self.label, extra={"cluster": self.label})
            try:
                self.source.read_changed()
            except Exception:  # noqa: BLE001
                log.exception("cluster %s: reading its changes failed", self.label, extra={"cluster": self.label})
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._published:
            return
        batch = list(self._published)
        self._published.clear()
        try:
            self._publish(batch)
        except Exception:  # noqa: BLE001 - a broken queue must not take the cluster down
            log.exception("cluster %s: handing %d upstreams to the outputs failed", self.label, len(batch))

    def status(self, now: float) -> dict[str, object]:
        """What status and metrics show of this cluster (plain values; any thread)."""
        freeze = self.freeze
        frozen_since = freeze.frozen_since
        return {
            "label": self.label,
            "hosts": self.cluster.zk_servers,
            "state": self.source.state or "CONNECTING",
            "frozen": not freeze.is_open,
            "frozen_for_seconds": None if frozen_since is None else round(now - frozen_since, 3),
            "read_in_full": freeze.ever_open,
            "thaws": freeze.thaws,
            "upstreams": list(self.pipeline.upstream_names),
        }

    def close_session(self) -> None:
        """Close the session (any thread; may wait on ZooKeeper, so callers bound it)."""
        try:
            self.source.stop()
        except Exception:  # noqa: BLE001 - shutting down: nothing to save
            log.debug("cluster %s: closing the session failed", self.label, exc_info=True)

    def join(self, deadline: float) -> bool:
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        return not self._thread.is_alive()
