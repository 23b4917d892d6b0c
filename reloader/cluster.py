"""One ZooKeeper cluster on a thread of its own: its session, its watches, its pipeline.

Guarantees:

* everything that may wait on this cluster's ZooKeeper (arming watches,
  reads, resyncs) runs on this cluster's thread, so a cluster that is slow,
  black-holed or gone delays no other cluster and no output;
* publishing never blocks: what the pipeline publishes during one pass of
  the loop (a burst of events, a whole resync) is handed to the files
  runner's queue in one go, so the outputs see it as one batch;
* the thread count is one per cluster (plus kazoo's own per client),
  whatever the number of znodes;
* once a config reload (or retirement) takes an upstream away from this
  cluster, nothing of this cluster reaches the outputs for it any more, even
  what its thread had already produced: another cluster may serve that name
  now.
"""

from __future__ import annotations

import logging
import socket
import ssl
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
from reloader.snapshot import Snapshot
from reloader.stall import StallWatch
from reloader.sources.kazoo_protocol import WatchingKazooClient
from reloader.sources.zookeeper import ZooKeeperSource

log = logging.getLogger(__name__)

# The longest the thread sleeps, so that delayed tasks stay timely.
MAX_IDLE = 0.5
# While a cluster stays unreachable, how often a line says so.
UNREACHABLE_REMINDER = 30.0
# How long the reachability probe behind those lines may wait per host.
PROBE_TIMEOUT = 1.0
# A connected cluster asks ZooKeeper to confirm it still answers once per
# session timeout (kazoo pings three times as often): cheap, and a registry
# that stops answering ages within one timeout.


_PIPELINE_ONLY = "_reloader_pipeline_only"


def _pipeline_only(task: Callable[[], None]) -> Callable[[], None]:
    """``task``, marked as the pipeline's own: it never touches the source's watches."""
    def run() -> None:
        task()

    setattr(run, _PIPELINE_ONLY, True)
    return run


class _Confirming:
    """The source's sink: every snapshot handed over confirms the registry, then goes to the pipeline."""

    def __init__(self, pipeline: Pipeline, confirmed: Callable[[], None], flush: Callable[[], None]) -> None:
        self._pipeline = pipeline
        self._confirmed = confirmed
        self.flush = flush

    def update(self, upstream: str, children: Snapshot, origin: str) -> None:
        self._confirmed()
        self._pipeline.update(upstream, children, origin)


class ClusterWorker:
    """Watches one cluster and publishes its upstreams through ``publish``."""

    def __init__(
        self,
        cluster: ClusterConfig,
        publish: Callable[[list[Upstream]], None],
        session_timeout: float,
        client_factory: Callable[..., KazooClient] = WatchingKazooClient,
        hosts: HostChecker | None = None,
        stopping: threading.Event | None = None,
        stall: StallWatch | None = None,
    ) -> None:
        self.cluster = cluster
        # Checked before each task: a task that was due while the process was
        # stopped runs only after the session is in doubt (see reloader.stall).
        self._stall = stall
        self._session_timeout = session_timeout
        # Set when the daemon stops, or when a config reload retires this cluster.
        self._stopping = stopping or threading.Event()
        self.inbox = Inbox()
        self.freeze = ClusterFreeze()
        self._publish = publish
        self._published: list[Upstream] = []
        # The upstream names this cluster may publish, set at once by the
        # thread that reconfigures or retires it (under the lock, which the
        # hand-over holds too), not later on this cluster's own thread.
        self._owner_lock = threading.Lock()
        self._owned = frozenset(znode.upstream for znode in cluster.znodes)
        self.pipeline = Pipeline(
            cluster.znodes, self._published.append, self.freeze,
            schedule=lambda delay, task: self.inbox.call_later(delay, _pipeline_only(task)), hosts=hosts,
            post=self.put_pipeline,
        )
        # When the registry last confirmed what is served (monotonic): a
        # snapshot handed over, or an answer to the periodic confirmation.
        self.confirmed_at: float | None = None
        self._started_at = time.monotonic()
        self.source = ZooKeeperSource(
            cluster, self.inbox, _Confirming(self.pipeline, self._confirmed, self._hand_over), self.freeze,
            session_timeout, client_factory,
            stopping=self._stopping.is_set,
        )
        self._thread = threading.Thread(target=self._loop, name=f"cluster-{cluster.index}", daemon=True)
        if stall is not None:
            stall.subscribe(self._stalled)

    @property
    def label(self) -> str:
        return self.cluster.label

    @property
    def stop_event(self) -> threading.Event:
        """Set to stop this cluster's thread (the daemon stops, or a reload retires the cluster)."""
        return self._stopping

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        # Counted from the start until the first confirmation: a cluster never
        # read ages like one that went quiet.
        self._started_at = time.monotonic()
        self.source.start()
        self.inbox.call_later(self._session_timeout, self._check_connected)
        self.inbox.call_later(self._session_timeout, self._confirm)
        self._thread.start()

    # ---- saying what is wrong, and keeping on saying it ----------------------------

    def _check_connected(self) -> None:
        """After the first session timeout: warn if the cluster has never been read, then keep reminding."""
        if not self.freeze.ever_open and not self._stopping.is_set():
            log.warning(
                "cluster %s (%s): not connected %.0f s after start (%s); its %d upstreams stay as their "
                "files have them until it answers",
                self.label, self.cluster.zk_servers, self._session_timeout, self._probe(),
                len(self.pipeline.upstream_names), extra={"cluster": self.label},
            )
        self.inbox.call_later(UNREACHABLE_REMINDER, self._remind)

    # ---- staleness: when the registry last answered -------------------------------

    def _confirmed(self) -> None:
        self.confirmed_at = time.monotonic()

    def _confirm(self) -> None:
        """Every session timeout on a live session: an ``exists`` of a watched znode, never waited on.

        Its answer (on kazoo's thread) only stores a time, so a quiet registry
        whose session still answers stays confirmed, and one that stopped
        answering ages in ``cluster_registry_age_seconds``.
        """
        if self._stopping.is_set():
            return
        self.inbox.call_later(self._session_timeout, self._confirm)
        if self.source.state != "CONNECTED" or not self.freeze.is_open or not self.cluster.znodes:
            return
        try:
            pending = self.source.client.exists_async(self.cluster.znodes[0].path)
        except Exception:  # noqa: BLE001 - a closed client: the session state says why
            log.debug("cluster %s: confirmation not sent", self.label, exc_info=True)
            return
        epoch = self.freeze.epoch

        def answered(result: object) -> None:
            # A session change since the request makes its answer say nothing of the new one.
            if pending.successful() and self.freeze.epoch == epoch and self.freeze.is_open:
                self._confirmed()

        pending.rawlink(answered)

    def _remind(self) -> None:
        """While frozen, one line every UNREACHABLE_REMINDER seconds: for how long, and how many upstreams."""
        if self._stopping.is_set():
            return
        since = self.freeze.frozen_since
        if since is not None:
            log.warning(
                "cluster %s (%s): unreachable for %.0f s (%s); %d upstreams frozen at their last good state",
                self.label, self.cluster.zk_servers, time.monotonic() - since, self._probe(),
                len(self.pipeline.upstream_names), extra={"cluster": self.label},
            )
        self.inbox.call_later(UNREACHABLE_REMINDER, self._remind)

    def _probe(self) -> str:
        """Why the ensemble may not answer, from a plain TCP connect to each host (this thread only)."""
        if self.source.state == "CONNECTED":
            return "connected, still reading"
        hosts = self.cluster.zk_servers.partition("/")[0]
        problems = []
        for entry in hosts.split(","):
            host, _, port = entry.strip().rpartition(":") if ":" in entry else (entry.strip(), "", "2181")
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT) as sock:
                    problems.append(f"{entry.strip()}: {self._tls_problem(sock, host.strip('[]'))}")
            except OSError as error:
                problems.append(f"{entry.strip()}: {error.strerror or error}")
        return "; ".join(problems)

    def _tls_problem(self, sock: socket.socket, host: str) -> str:
        """With ``tls:``, what a handshake with the cluster's own settings says; else the plain TCP verdict."""
        tls = self.cluster.tls
        if tls is None:
            return "accepts TCP but ZooKeeper does not answer"
        try:
            context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
            context.check_hostname = tls.verify_hostname
            if tls.cert is not None:
                context.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
            with context.wrap_socket(sock, server_hostname=host) as secured:
                secured.do_handshake()
        except ssl.SSLError as error:
            return f"TLS handshake failed: {error.reason or error}"
        except (OSError, ValueError) as error:
            return f"TLS handshake failed: {error}"
        return "TLS handshake works but ZooKeeper does not answer"

    def _stalled(self, seconds: float) -> None:
        """The process was stopped for ``seconds`` (any thread, before it goes on)."""
        if not self._stopping.is_set():
            self.source.doubt(seconds)

    def wake(self) -> None:
        self.inbox.put(lambda: None)

    def put_pipeline(self, task: Callable[[], None]) -> None:
        """Run ``task``, work of the pipeline's own that never touches the watches, on this cluster's thread.

        The pass after a batch of such tasks and watch events looks only at
        the znodes the events touched (see ZooKeeperSource.read_changed);
        after any other task it looks at every znode.
        """
        self.inbox.put(_pipeline_only(task))

    def _loop(self) -> None:
        while not self._stopping.is_set():
            tasks = self.inbox.drain(MAX_IDLE)
            # None (an idle tick) makes the pass look at every znode, as any task not the pipeline's does.
            others = sum(1 for task in tasks if not getattr(task, _PIPELINE_ONLY, False)) if tasks else None
            for task in tasks:
                if self._stopping.is_set():
                    return  # what is left of the batch is moot; shut down promptly
                if self._stall is not None:
                    self._stall.check()
                try:
                    task()
                except Exception:  # noqa: BLE001 - the cluster thread must survive any one task
                    log.exception("cluster %s: a task failed", self.label, extra={"cluster": self.label})
            try:
                self.source.read_changed(others)
            except Exception:  # noqa: BLE001
                log.exception("cluster %s: reading its changes failed", self.label, extra={"cluster": self.label})
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._published:
            return
        batch = list(self._published)
        self._published.clear()
        with self._owner_lock:  # offer_many never blocks
            batch = [upstream for upstream in batch if upstream.name in self._owned]
            if not batch:
                return
            try:
                self._publish(batch)
            except Exception:  # noqa: BLE001 - a broken queue must not take the cluster down
                log.exception("cluster %s: handing %d upstreams to the outputs failed", self.label, len(batch))

    def reconfigure(self, cluster: ClusterConfig, adopted: list[Upstream]) -> None:
        """Take a reloaded config of this same session (any thread: it runs on the cluster's thread).

        ``adopted`` are the states read back from files for upstreams that are
        new here. Upstreams the new config takes away from this cluster stop
        being published at once, before the reload is applied on its thread.
        """
        with self._owner_lock:
            self._owned = frozenset(znode.upstream for znode in cluster.znodes)

        def apply() -> None:
            added, removed, changed = self.pipeline.reconfigure(cluster.znodes)
            for upstream in adopted:
                self.pipeline.adopt(upstream)
            self.cluster = cluster
            self.source.reconfigure(cluster, changed)
            if added or removed or changed:
                log.info("cluster %s: config reloaded: %d upstreams added, %d removed, %d changed",
                         self.label, len(added), len(removed), len(changed), extra={"cluster": self.label})

        self.inbox.put(apply)

    def retire(self) -> None:
        """Stop this cluster for good (a config reload removed it): the thread ends, the session closes."""
        with self._owner_lock:
            self._owned = frozenset()
        self._stopping.set()
        if self._stall is not None:
            self._stall.unsubscribe(self._stalled)
        self.wake()
        threading.Thread(target=self.close_session, name=f"retire-{self.cluster.index}", daemon=True).start()

    def status(self, now: float) -> dict[str, object]:
        """What status and metrics show of this cluster (plain values; any thread)."""
        freeze = self.freeze
        # The freeze first, then the state: the connection writes the state
        # before the freeze it implies, so a frozen cluster never shows as up.
        frozen = not freeze.is_open
        frozen_since = freeze.frozen_since
        state = self.source.reported_state
        roots, refused = self.source.watch_roots()
        return {
            "label": self.label,
            "hosts": self.cluster.zk_servers,
            "state": state or "CONNECTING",
            "frozen": frozen,
            "frozen_for_seconds": None if frozen_since is None else round(now - frozen_since, 3),
            "read_in_full": freeze.ever_open,
            "thaws": freeze.thaws,
            "upstreams": list(self.pipeline.upstream_names),
            "registry_age_seconds": round(now - (self.confirmed_at or self._started_at), 3),
            # Refused: the daemon cannot read the root (an ACL); its znodes are watched one by one.
            "watch_roots": roots,
            "watch_roots_refused": refused,
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
