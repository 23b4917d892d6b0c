"""The ZooKeeper source: one kazoo client per cluster, one ChildrenWatch per znode.

Threading contract
------------------
kazoo calls watch callbacks and the session listener on its own threads.
Those callbacks do no I/O and no rendering: they put a task into the worker's
:class:`~reloader.inbox.Inbox` (and the session listener closes the cluster's
gate, see below). Everything else in this module runs on the worker thread.

Watches
-------
* ``ChildrenWatch`` (with ``allow_session_lost=False``) gives the child list.
  kazoo's recipe would otherwise spawn a thread per watch on every reconnect;
  the full resync below re-creates the watch instead, so no threads are made
  per znode, per child, or per reconnect.
* A ChildrenWatch dies silently when its znode is deleted, so each znode also
  carries a raw ``exists`` watch. On create or delete the worker re-arms, and a
  new ChildrenWatch (with a new generation number) is started when the znode
  is back. Callbacks of older generations return False, which stops them.
* Child data (weights, enabled flags) is read with pipelined ``get_async``
  calls that set a raw data watch; ChildrenWatch does not fire when only data
  changes. kazoo keeps one watcher per (path, callable), and the callable is
  the same bound method every time, so re-reading never stacks watchers.

Sessions
--------
The session listener closes the cluster's :class:`Gate` at once on SUSPENDED
or LOST, so no output can be touched with stale data, and enqueues the
transition. On CONNECTED the worker re-reads every znode of the cluster in
full; only if the session did not change again meanwhile does it open the
gate and hand the fresh snapshots on.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError, ZookeeperError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import EventType, KazooState, WatchedEvent
from kazoo.recipe.watchers import ChildrenWatch

from reloader.config import ClusterConfig, ZnodeConfig
from reloader.inbox import Inbox

log = logging.getLogger(__name__)

# How many znodes one resync step re-arms and re-reads before the worker
# gets back to its loop; between steps other clusters' events and a stop
# request are served, so a big cluster's reconnect holds up nobody.
RESYNC_STEP = 50
# How often a wait for ZooKeeper answers looks up to check it is still wanted.
_WAIT_SLICE = 0.25


class ReadInterrupted(Exception):
    """A read was abandoned: the session changed, or the daemon is stopping."""


# Errors that mean "ZooKeeper is not answering right now"; the resync that
# follows the next CONNECTED will cover whatever was being read.
_TRANSIENT_ERRORS = (KazooException, ZookeeperError, KazooTimeoutError, ReadInterrupted)


class SnapshotSink(Protocol):
    """Where the source hands complete, consistent views of a znode's children."""

    def update(self, upstream: str, children: Mapping[str, bytes | None], origin: str) -> None:
        """``children`` maps every current child name to its data (None if unreadable)."""


class Gate:
    """Whether a cluster's upstreams may be published: closed while frozen.

    It is closed from kazoo's thread the moment the session is in doubt, and
    opened only by the worker after a full resync. ``epoch`` counts session
    transitions, so a resync can tell that the session changed under it.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._epoch = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    def close(self) -> None:
        with self._lock:
            self._epoch += 1
            self._open.clear()

    def bump(self) -> None:
        """Record a transition that does not itself close the gate (CONNECTED)."""
        with self._lock:
            self._epoch += 1

    def open_if(self, epoch: int) -> bool:
        """Open the gate if no transition happened since ``epoch``; True if opened."""
        with self._lock:
            if epoch != self._epoch:
                return False
            self._open.set()
            return True


@dataclass
class _ZnodeWatch:
    """The worker-side state of one watched znode."""

    config: ZnodeConfig
    generation: int = 0
    present: bool = False
    children: tuple[str, ...] | None = None
    data: dict[str, bytes | None] = field(default_factory=dict)
    stale_children: set[str] = field(default_factory=set)
    dirty: bool = False
    # The newest child list delivered by the ChildrenWatch, waiting for the worker.
    mailbox: tuple[int, list[str]] | None = None
    mailbox_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def upstream(self) -> str:
        return self.config.upstream

    @property
    def path(self) -> str:
        return self.config.path


class ZooKeeperSource:
    """Watches the znodes of one cluster and feeds snapshots to the pipeline."""

    def __init__(
        self,
        cluster: ClusterConfig,
        inbox: Inbox,
        sink: SnapshotSink,
        session_timeout: float = 10.0,
        client_factory: Callable[..., KazooClient] = KazooClient,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cluster = cluster
        self._stopping = stopping
        self.gate = Gate()
        self._inbox = inbox
        self._sink = sink
        self._session_timeout = session_timeout
        self._watches = {znode.upstream: _ZnodeWatch(znode) for znode in cluster.znodes}
        # Two upstream names may watch one znode, so a path maps to a list.
        self._by_path: dict[str, list[_ZnodeWatch]] = {}
        for watch in self._watches.values():
            self._by_path.setdefault(watch.path, []).append(watch)
        self._last_state: str | None = None
        self._resync_pending = False
        self._client = client_factory(
            hosts=cluster.zk_servers,
            timeout=session_timeout,
            # Reconnect forever; a command gives up quickly so that a kazoo
            # callback thread is never stuck retrying while the session is gone.
            connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 5.0},
            command_retry={"max_tries": 2, "delay": 0.1, "max_delay": 1.0},
        )

    @property
    def upstreams(self) -> tuple[str, ...]:
        return tuple(self._watches)

    # ---- lifecycle (worker / main thread) ------------------------------------

    def start(self) -> None:
        """Start connecting in the background; the first CONNECTED triggers a full read."""
        self._client.add_listener(self._on_session_state)
        self._client.start_async()

    def stop(self) -> None:
        """Close the session (so ephemeral state and watches go at once) and free the client."""
        self.gate.close()
        try:
            self._client.stop()
        finally:
            self._client.close()

    # ---- kazoo threads: enqueue only ------------------------------------------

    def _on_session_state(self, state: str) -> None:
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            # Closing the gate here, not on the worker, means no write can slip
            # out between the session going bad and the worker noticing.
            self.gate.close()
        else:
            self.gate.bump()
        self._inbox.put(lambda: self._session_changed(state))

    def _on_children(self, watch: _ZnodeWatch, generation: int, children: list[str]) -> bool | None:
        if generation != watch.generation:
            return False  # an older ChildrenWatch of a deleted/re-created znode: stop it
        with watch.mailbox_lock:
            watch.mailbox = (generation, children)
        self._inbox.put(lambda: self._take_children(watch))
        return None

    def _on_child_data(self, event: WatchedEvent) -> None:
        self._inbox.put(lambda: self._child_data_changed(event))

    def _on_znode_event(self, event: WatchedEvent) -> None:
        self._inbox.put(lambda: self._znode_changed(event))

    # ---- worker thread ---------------------------------------------------------

    def _session_changed(self, state: str) -> None:
        if state != self._last_state:
            count = len(self._watches)
            if state != KazooState.CONNECTED:
                log.warning(
                    "cluster %s: session %s; freezing %d upstreams at their last good state",
                    self.cluster.label, state, count,
                )
            elif self._last_state is None:
                log.info("cluster %s: connected; reading %d znodes", self.cluster.label, count)
            else:
                log.warning("cluster %s: session CONNECTED; re-reading %d znodes before thawing", self.cluster.label, count)
            self._last_state = state
        if state == KazooState.CONNECTED:
            self.resync()

    def resync(self) -> None:
        """Re-read every znode of the cluster, then thaw it if the session held.

        Runs on the worker, in steps of RESYNC_STEP znodes, each step a task
        of its own. If ZooKeeper fails mid-way the gate stays closed; the
        next CONNECTED, or the retry scheduled here, starts again. A newer
        session transition abandons an older resync at its next step.
        """
        if not self._client.connected:
            return
        self._resync_step(self.gate.epoch, list(self._watches.values()), 0, [])

    def _resync_step(
        self,
        epoch: int,
        watches: list[_ZnodeWatch],
        start: int,
        snapshots: list[tuple[_ZnodeWatch, dict[str, bytes | None]]],
    ) -> None:
        if self._abandoned(epoch):
            return  # superseded by a newer transition (which resyncs itself), or stopping
        step = watches[start:start + RESYNC_STEP]
        try:
            for watch in step:
                if self._abandoned(epoch):
                    return  # the session changed (or we are stopping) mid-step
                self._arm(watch, restart_children=True)
                watch.stale_children = set(watch.children or ())
                watch.data.clear()
            snapshots.extend(self._read_dirty(step, epoch))
        except _TRANSIENT_ERRORS as error:
            if not self._stopping():
                log.warning("cluster %s: resync failed (%s); staying frozen", self.cluster.label, _describe(error))
                self._schedule_resync()
            return
        if start + RESYNC_STEP < len(watches):
            self._inbox.put(lambda: self._resync_step(epoch, watches, start + RESYNC_STEP, snapshots))
            return
        if not self.gate.open_if(epoch):
            return  # the session changed while we read; its own transition will resync
        log.info("cluster %s: resynced %d znodes; thawed", self.cluster.label, len(watches))
        for watch, children in snapshots:
            self._sink.update(watch.upstream, children, watch.path)
        # Events that arrived during the resync left their znodes dirty; the
        # worker's next flush publishes what changed since they were read.

    def _schedule_resync(self) -> None:
        if self._resync_pending:
            return
        self._resync_pending = True

        def retry() -> None:
            self._resync_pending = False
            if not self.gate.is_open and self._client.state == KazooState.CONNECTED:
                self.resync()

        self._inbox.call_later(1.0, retry)

    def _arm(self, watch: _ZnodeWatch, restart_children: bool) -> None:
        """Set the znode's exists watch and, if asked and it exists, a new ChildrenWatch."""
        stat = self._client.exists(watch.path, watch=self._on_znode_event)
        was_present = watch.present
        watch.present = stat is not None
        if not watch.present:
            if was_present or watch.children is None:
                log.warning(
                    "znode %s (upstream %s) does not exist; keeping the last good state and waiting for it",
                    watch.path, watch.upstream,
                )
            watch.children = None
            watch.generation += 1  # any surviving ChildrenWatch is now stale
            return
        if restart_children or not was_present:
            watch.generation += 1
            generation = watch.generation
            # The constructor reads the children synchronously and calls back
            # on this thread, so the mailbox is filled when it returns.
            ChildrenWatch(
                self._client,
                watch.path,
                func=lambda children: self._on_children(watch, generation, children),
                allow_session_lost=False,
            )
            self._take_children(watch)

    def _take_children(self, watch: _ZnodeWatch) -> None:
        with watch.mailbox_lock:
            delivered, watch.mailbox = watch.mailbox, None
        if delivered is None or delivered[0] != watch.generation:
            return
        children = tuple(sorted(delivered[1]))
        previous = set(watch.children or ())
        watch.children = children
        for gone in previous - set(children):
            watch.data.pop(gone, None)
            watch.stale_children.discard(gone)
        watch.stale_children.update(set(children) - previous)
        watch.dirty = True

    def _child_data_changed(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE:
            return  # the session was reset; the resync re-reads everything
        znode_path, child = posixpath.split(event.path)
        for watch in self._by_path.get(znode_path, ()):
            if watch.children is not None and child in watch.children:
                watch.stale_children.add(child)
                watch.dirty = True

    def _znode_changed(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE:
            return  # the session was reset: the resync re-arms everything
        # Handled even while the cluster is frozen: a resync in progress keeps
        # the gate closed while the session is fine, and an exists watch that
        # fired and was not set again would never see the znode come back.
        for watch in self._by_path.get(event.path, ()):
            try:
                # The exists watch fires once; set it again. A create or delete
                # kills or invalidates the ChildrenWatch, so start a new one then.
                self._arm(watch, restart_children=event.type in (EventType.CREATED, EventType.DELETED))
            except _TRANSIENT_ERRORS as error:
                log.warning("znode %s: could not re-arm its watch (%s)", watch.path, _describe(error))

    def flush(self) -> None:
        """Read what changed since the last flush and hand complete snapshots on.

        The worker calls this once after each batch of tasks, so a burst of
        watch events for one upstream costs one read and one publish. Frozen
        clusters are skipped: their resync will read everything anyway.
        """
        dirty = [watch for watch in self._watches.values() if watch.dirty]
        if not dirty or not self.gate.is_open:
            return
        try:
            snapshots = self._read_dirty(dirty, self.gate.epoch)
        except _TRANSIENT_ERRORS as error:
            log.warning("cluster %s: read failed (%s); waiting for the session", self.cluster.label, _describe(error))
            return
        for watch, children in snapshots:
            self._sink.update(watch.upstream, children, watch.path)

    def _read_dirty(
        self, watches: list[_ZnodeWatch], epoch: int
    ) -> list[tuple[_ZnodeWatch, dict[str, bytes | None]]]:
        """Fetch the data of every stale child, pipelined, and return full snapshots.

        All requests are sent before any answer is awaited, so reading 20,000
        children costs round trips in parallel, not in series. The whole read
        shares one deadline (the session timeout), and is abandoned at once
        when the session changes (``epoch``) or the daemon is stopping: kazoo
        keeps unsent requests queued across a disconnect, and waiting for
        each of them in turn could hold the worker for hours.
        """
        requests = [
            (watch, child, self._client.get_async(posixpath.join(watch.path, child), watch=self._on_child_data))
            for watch in watches
            if watch.children is not None
            for child in sorted(watch.stale_children)
        ]
        deadline = time.monotonic() + self._session_timeout
        for watch, child, pending in requests:
            try:
                data, _stat = self._await(pending, deadline, epoch)
            except NoNodeError:
                data = None  # deleted meanwhile; the ChildrenWatch is about to say so
            watch.data[child] = data
            watch.stale_children.discard(child)
        snapshots = []
        for watch in watches:
            if watch.dirty and watch.children is not None:
                watch.dirty = False
                snapshots.append((watch, {child: watch.data.get(child) for child in watch.children}))
        return snapshots

    def _abandoned(self, epoch: int) -> bool:
        """True when work begun at session ``epoch`` is no longer wanted."""
        return self.gate.epoch != epoch or self._stopping()

    def _await(self, pending: Any, deadline: float, epoch: int) -> Any:
        """``pending.get()``, giving up at ``deadline``, on a session change, or when stopping."""
        while True:
            if self._abandoned(epoch):
                raise ReadInterrupted("the session changed" if self.gate.epoch != epoch else "the daemon is stopping")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KazooTimeoutError(f"no answer within the session timeout ({self._session_timeout:g} s)")
            try:
                return pending.get(timeout=min(remaining, _WAIT_SLICE))
            except KazooTimeoutError:
                continue


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
