"""The ZooKeeper source of one cluster: its session, its watches, its reads and resyncs.

Threading contract
------------------
Every cluster has a thread of its own (see :mod:`reloader.cluster`), and all
of this module runs on it, except the kazoo callbacks: those run on kazoo's
threads, do no I/O, and only put a task into the cluster's
:class:`~reloader.inbox.Inbox` (the session listener also freezes the
cluster at once, see :class:`~reloader.publication.ClusterFreeze`). A
cluster whose ZooKeeper is slow, black-holed or gone therefore holds up its
own thread only: never another cluster, never an output.

Calls that could wait on ZooKeeper:

* reads (``exists``, child data) are asynchronous and awaited under one
  deadline (the session timeout), and abandoned at once when the session
  changes or the daemon is stopping;
* kazoo's ``ChildrenWatch`` reads the child list synchronously in its
  constructor, with no deadline of ours. It is kept (one per znode, no thread
  per znode) and only ever built on this cluster's thread.

Watches
-------
* ``ChildrenWatch`` (``allow_session_lost=False``) gives the child list; a
  resync re-creates it, so no thread is made per znode, child or reconnect.
  A watch that dies for a reason other than the session (an ACL on the znode)
  is re-armed with back-off.
* A ChildrenWatch stops silently when its znode is deleted, so each znode also
  has a raw ``exists`` watch; on create or delete the znode is re-armed with a
  new ChildrenWatch generation (older generations stop at their next call).
* Child data is read with pipelined ``get_async`` calls that leave a data
  watch (ChildrenWatch does not fire when only data changes). kazoo keeps one
  watcher per (path, callable) and the callable is always the same bound
  method, so re-reading never stacks watchers.
* A child whose data cannot be read for a reason other than the session
  (``NoAuthError``, …) becomes :class:`~reloader.snapshot.Unreadable`: it is
  skipped with one warning and its siblings are served.

Sessions
--------
On SUSPENDED or LOST the cluster freezes at once. On CONNECTED every znode is
re-armed and re-read in full, in steps of RESYNC_STEP znodes (a stop request
or a newer transition is noticed between steps); only if the session did not
change meanwhile does the cluster thaw and hand the fresh snapshots on.
"""

from __future__ import annotations

import logging
import posixpath
import time
from typing import Any, Callable, Iterable, Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionDropped,
    ConnectionLoss,
    KazooException,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
    SessionMovedError,
    ZookeeperError,
    ZookeeperStoppedError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import EventType, KazooState, KeeperState, WatchedEvent
from kazoo.recipe.watchers import ChildrenWatch

from reloader.config import ClusterConfig, kazoo_arguments
from reloader.inbox import Inbox
from reloader.publication import ClusterFreeze
from reloader.snapshot import Snapshot, Unreadable
from reloader.sources.watches import WatchBook, ZnodeWatch

log = logging.getLogger(__name__)

# How many znodes one resync step re-arms and re-reads before the cluster
# thread gets back to its loop, where a stop request or a newer session
# transition is noticed.
RESYNC_STEP = 50
# How often a wait for ZooKeeper answers looks up to check it is still wanted.
_WAIT_SLICE = 0.25
# Back-off for re-arming a watch that failed for a reason other than the session.
REARM_MIN = 1.0
REARM_MAX = 30.0
# How long after an authentication failure the session is tried again.
AUTH_RETRY = 30.0


class ReadInterrupted(Exception):
    """A read was abandoned: the session changed, or the daemon is stopping."""


# Errors that say "the session cannot answer right now". Whatever was being
# read is covered by the resync that follows the next CONNECTED. Anything
# else ZooKeeper raises is about one node (an ACL, bad arguments) and stays
# with that node.
SESSION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionLoss,
    ConnectionDropped,
    ConnectionClosedError,
    SessionExpiredError,
    SessionMovedError,
    OperationTimeoutError,
    ZookeeperStoppedError,
    KazooTimeoutError,
    ReadInterrupted,
)
# Every error a ZooKeeper call may raise, session or not.
ZOOKEEPER_ERRORS: tuple[type[BaseException], ...] = (KazooException, ZookeeperError, *SESSION_ERRORS)


class SnapshotSink(Protocol):
    """Where the source hands complete, consistent views of a znode's children."""

    def update(self, upstream: str, children: Snapshot, origin: str) -> None:
        """``children`` maps every current child name to its data."""


class _ReportingChildrenWatch(ChildrenWatch):
    """kazoo's ChildrenWatch, telling its owner when a later re-read fails.

    kazoo logs such a failure on its own thread and the watch is then dead
    without a word; the owner needs to know so that it can arm it again.
    """

    def __init__(self, *args: Any, on_error: Callable[[BaseException], None], **kwargs: Any) -> None:
        self._on_error = on_error
        self._constructed = False
        super().__init__(*args, **kwargs)
        self._constructed = True

    def _get_children(self, event: Any = None) -> None:
        try:
            super()._get_children(event)
        except Exception as error:  # noqa: BLE001 - reported to the owner, who re-arms
            if not self._constructed:
                raise
            self._on_error(error)


class ZooKeeperSource:
    """Watches the znodes of one cluster and feeds snapshots to the sink. Runs on the cluster's thread."""

    def __init__(
        self,
        cluster: ClusterConfig,
        inbox: Inbox,
        sink: SnapshotSink,
        freeze: ClusterFreeze,
        session_timeout: float = 10.0,
        client_factory: Callable[..., KazooClient] = KazooClient,
        stopping: Callable[[], bool] = lambda: False,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.cluster = cluster
        self.freeze = freeze
        self._stopping = stopping
        self._inbox = inbox
        self._sink = sink
        self._session_timeout = session_timeout
        self._watches = WatchBook(cluster.znodes)
        self._last_state: str | None = None
        self._resync_pending = False
        self._client = client_factory(
            **kazoo_arguments(cluster),
            timeout=session_timeout,
            # Reconnect forever; a command gives up quickly so that a kazoo
            # callback thread is never stuck retrying while the session is gone.
            connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 5.0},
            command_retry={"max_tries": 2, "delay": 0.1, "max_delay": 1.0},
            **(client_options or {}),
        )

    @property
    def label(self) -> str:
        return self.cluster.label

    @property
    def upstreams(self) -> tuple[str, ...]:
        return self._watches.upstreams

    @property
    def client(self) -> KazooClient:
        return self._client

    @property
    def state(self) -> str | None:
        """The last session state seen by the cluster thread (None before the first)."""
        return self._last_state

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; the first CONNECTED triggers a full read."""
        self._client.add_listener(self._on_session_state)
        self._client.start_async()

    def stop(self) -> None:
        """Close the session (so ephemeral state and watches go at once) and free the client."""
        self.freeze.close()
        try:
            self._client.stop()
        finally:
            self._client.close()

    def reconfigure(self, cluster: ClusterConfig, changed: Iterable[str]) -> None:
        """Watch the znodes of ``cluster`` from now on (same session); cluster thread only.

        New znodes are armed and read at once when the cluster is thawed (a
        frozen cluster's resync covers them); removed ones are forgotten, their
        watches left to stop at their next call. The upstreams named in
        ``changed`` (their options or format changed) get their znode's
        snapshot again from what was read already, without a ZooKeeper read.
        """
        self.cluster = cluster
        added, removed = self._watches.reconfigure(cluster.znodes)
        for watch in removed:
            watch.generation += 1  # its ChildrenWatch stops at its next call
        changed = set(changed)
        for watch in self._watches:
            if watch not in added and changed.intersection(watch.upstreams) and watch.children is not None:
                watch.dirty = True
        if added and self.freeze.is_open:
            self._arm_new(added)
        # While frozen, the resync under way (if any) arms them when it thaws:
        # see _arm_new's call in _resync_step.

    def _arm_new(self, watches: Iterable[ZnodeWatch]) -> None:
        """Arm and mark for reading znodes that were never armed (added by a config reload)."""
        epoch = self.freeze.epoch
        try:
            for watch in watches:
                self._arm(watch, epoch, restart_children=True)
                watch.forget_data()
        except SESSION_ERRORS as error:
            log.warning("cluster %s: could not arm the new znodes (%s); the resync after the session comes "
                        "back does", self.label, describe_error(error), extra={"cluster": self.label})

    # ---- kazoo threads: enqueue only --------------------------------------------

    def _on_session_state(self, state: str) -> None:
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            # Freezing here, not on the cluster thread, means no publish can
            # slip out between the session going bad and the thread noticing.
            self.freeze.close()
        else:
            self.freeze.note_transition()
        # Read here: kazoo moves on from AUTH_FAILED before the cluster thread runs.
        auth_failed = self._client.client_state == KeeperState.AUTH_FAILED
        self._inbox.put(lambda: self._session_changed(state, auth_failed))

    def _on_children(self, watch: ZnodeWatch, generation: int, children: list[str]) -> bool | None:
        if generation != watch.generation:
            return False  # an older ChildrenWatch of a deleted/re-created znode: stop it
        watch.deliver(generation, children)
        self._inbox.put(watch.take_children)
        return None

    def _on_children_error(self, watch: ZnodeWatch, generation: int, error: BaseException) -> None:
        if isinstance(error, SESSION_ERRORS):
            return  # the resync after the next CONNECTED re-arms it
        self._inbox.put(lambda: self._children_watch_failed(watch, generation, error))

    def _on_child_data(self, event: WatchedEvent) -> None:
        self._inbox.put(lambda: self._child_data_changed(event))

    def _on_znode_event(self, event: WatchedEvent) -> None:
        self._inbox.put(lambda: self._znode_changed(event))

    # ---- session transitions -----------------------------------------------------

    def _session_changed(self, state: str, auth_failed: bool = False) -> None:
        if state != self._last_state:
            count = len(self._watches)
            extra = {"cluster": self.label}
            if state != KazooState.CONNECTED:
                log.warning("cluster %s: session %s; freezing %d upstreams at their last good state",
                            self.label, state, len(self.upstreams), extra=extra)
            elif self._last_state is None:
                log.info("cluster %s: connected; reading %d znodes", self.label, count, extra=extra)
            else:
                log.warning("cluster %s: session CONNECTED; re-reading %d znodes before thawing",
                            self.label, count, extra=extra)
            self._last_state = state
        if state == KazooState.CONNECTED:
            self.resync()
        elif state == KazooState.LOST and auth_failed:
            # kazoo gives up for good after an authentication failure; a
            # credential fixed on the server side must not need a restart.
            log.error(
                "cluster %s: ZooKeeper refused this cluster's credentials (authentication failed); check its "
                "auth:/sasl: settings; trying again in %.0f s", self.label, AUTH_RETRY, extra={"cluster": self.label},
            )
            self._inbox.call_later(AUTH_RETRY, self._restart_client)

    def _restart_client(self) -> None:
        if self._stopping() or self._client.connected:
            return
        self._client.stop()
        self._client.start_async()

    def resync(self) -> None:
        """Re-arm and re-read every znode, then thaw the cluster if the session held.

        Runs in steps of RESYNC_STEP znodes, each a task of its own. If
        ZooKeeper fails mid-way the cluster stays frozen and a retry is
        scheduled; a newer session transition abandons an older resync at
        its next step (the transition starts its own).
        """
        if not self._client.connected:
            return
        self._resync_step(self.freeze.epoch, list(self._watches), 0, [])

    def _resync_step(
        self,
        epoch: int,
        watches: list[ZnodeWatch],
        start: int,
        snapshots: list[tuple[ZnodeWatch, Snapshot]],
    ) -> None:
        if self._abandoned(epoch):
            return
        step = watches[start:start + RESYNC_STEP]
        try:
            # Every exists of the step is sent before any answer is awaited, so
            # arming costs one round trip per znode (the ChildrenWatch's own
            # read), not two in series.
            existing = [self._client.exists_async(watch.path, watch=self._on_znode_event) for watch in step]
            for watch, pending in zip(step, existing):
                if self._abandoned(epoch):
                    return
                self._arm(watch, epoch, restart_children=True, pending=pending)
                watch.forget_data()
            snapshots.extend(self._read_dirty(step, epoch))
        except SESSION_ERRORS as error:
            if not self._stopping():
                log.warning("cluster %s: resync failed (%s); staying frozen", self.label, describe_error(error),
                            extra={"cluster": self.label})
                self._schedule_resync()
            return
        if start + RESYNC_STEP < len(watches):
            self._inbox.put(lambda: self._resync_step(epoch, watches, start + RESYNC_STEP, snapshots))
            return
        if not self.freeze.open_if(epoch):
            return  # the session changed while we read; its own transition resyncs
        log.info("cluster %s: resynced %d znodes; thawed", self.label, len(watches), extra={"cluster": self.label})
        for watch, children in snapshots:
            self._hand_on(watch, children)
        # A config reload during the resync may have added znodes that this
        # resync's list did not have: arm them now that the cluster is open.
        armed = {id(watch) for watch in watches}
        self._arm_new(watch for watch in self._watches if id(watch) not in armed)
        # Events that arrived during the resync left their znodes dirty; the
        # next read_changed() publishes what changed since they were read.

    def _schedule_resync(self) -> None:
        if self._resync_pending:
            return
        self._resync_pending = True

        def retry() -> None:
            self._resync_pending = False
            if not self.freeze.is_open and self._client.state == KazooState.CONNECTED:
                self.resync()

        self._inbox.call_later(1.0, retry)

    # ---- arming watches ------------------------------------------------------------

    def _arm(self, watch: ZnodeWatch, epoch: int, restart_children: bool, pending: Any = None) -> None:
        """Set the znode's exists watch and, if asked and it exists, a new ChildrenWatch.

        ``pending`` is an ``exists_async`` with this source's watch already
        sent for the znode (a resync sends a step's worth at once).
        Session errors propagate (the caller stays frozen or retries); any other
        failure to set the ChildrenWatch is logged and re-armed with back-off.
        """
        if pending is None:
            pending = self._client.exists_async(watch.path, watch=self._on_znode_event)
        try:
            stat = self._await(pending, time.monotonic() + self._session_timeout, epoch)
        except SESSION_ERRORS:
            raise
        except ZOOKEEPER_ERRORS as error:
            self._children_watch_failed(watch, watch.generation, error)
            return
        was_present = watch.present
        watch.present = stat is not None
        if not watch.present:
            if was_present or watch.children is None:
                log.warning(
                    "znode %s (upstream %s) does not exist; keeping the last good state and waiting for it",
                    watch.path, ", ".join(watch.upstreams), extra={"upstream": watch.upstreams[0]},
                )
            watch.children = None
            watch.generation += 1  # any surviving ChildrenWatch is now stale
            return
        if restart_children or not was_present:
            self._start_children_watch(watch)

    def _start_children_watch(self, watch: ZnodeWatch) -> None:
        watch.generation += 1
        generation = watch.generation
        try:
            # The constructor reads the children synchronously and calls back
            # on this thread, so the mailbox is filled when it returns.
            _ReportingChildrenWatch(
                self._client,
                watch.path,
                func=lambda children: self._on_children(watch, generation, children),
                allow_session_lost=False,
                on_error=lambda error: self._on_children_error(watch, generation, error),
            )
        except SESSION_ERRORS:
            raise
        except ZOOKEEPER_ERRORS as error:
            self._children_watch_failed(watch, generation, error)
            return
        watch.arm_failures = 0
        watch.take_children()

    def _children_watch_failed(self, watch: ZnodeWatch, generation: int, error: BaseException) -> None:
        if generation != watch.generation:
            return  # a newer watch replaced it meanwhile
        watch.arm_failures += 1
        delay = min(REARM_MIN * 2 ** (watch.arm_failures - 1), REARM_MAX)
        log.warning(
            "znode %s (upstream %s): cannot watch its children (%s); keeping the last good state, "
            "trying again in %.0f s",
            watch.path, ", ".join(watch.upstreams), describe_error(error), delay, extra={"upstream": watch.upstreams[0]},
        )
        watch.generation += 1  # whatever is left of the failed watch is stale

        def rearm() -> None:
            if self.freeze.epoch != epoch_at_failure or self._stopping():
                return  # a resync since then re-armed everything
            try:
                self._arm(watch, self.freeze.epoch, restart_children=True)
            except SESSION_ERRORS:
                pass  # the next CONNECTED resyncs

        epoch_at_failure = self.freeze.epoch
        self._inbox.call_later(delay, rearm)

    # ---- events ----------------------------------------------------------------------

    def _child_data_changed(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE:
            return  # the session was reset; the resync re-reads everything
        znode_path, child = posixpath.split(event.path)
        watch = self._watches.get(znode_path)
        if watch is not None:
            watch.mark_child_stale(child)

    def _znode_changed(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE:
            return  # the session was reset: the resync re-arms everything
        watch = self._watches.get(event.path)
        if watch is None:
            return
        # Handled even while the cluster is frozen: a resync in progress keeps
        # it frozen while the session is fine, and an exists watch that fired
        # and was not set again would never see the znode come back.
        try:
            # The exists watch fires once; set it again. A create or delete
            # kills or invalidates the ChildrenWatch, so start a new one then.
            self._arm(watch, self.freeze.epoch,
                      restart_children=event.type in (EventType.CREATED, EventType.DELETED))
        except SESSION_ERRORS as error:
            log.warning("znode %s: could not re-arm its watch (%s); the resync after the session "
                        "comes back re-arms it", watch.path, describe_error(error))

    # ---- reads -----------------------------------------------------------------------

    def read_changed(self) -> None:
        """Read the data of children marked stale since the last call, and hand complete snapshots on.

        The cluster thread calls this once after each batch of tasks, so a
        burst of watch events for one znode costs one read and one publish.
        A frozen cluster is skipped: its resync will read everything anyway.
        """
        dirty = self._watches.dirty()
        if not dirty or not self.freeze.is_open:
            return
        try:
            snapshots = self._read_dirty(dirty, self.freeze.epoch)
        except SESSION_ERRORS as error:
            log.warning("cluster %s: read failed (%s); waiting for the session", self.label, describe_error(error),
                        extra={"cluster": self.label})
            return
        for watch, children in snapshots:
            self._hand_on(watch, children)

    def _hand_on(self, watch: ZnodeWatch, children: Snapshot) -> None:
        for upstream in watch.upstreams:
            self._sink.update(upstream, children, watch.path)

    def _read_dirty(self, watches: list[ZnodeWatch], epoch: int) -> list[tuple[ZnodeWatch, Snapshot]]:
        """Fetch the data of every stale child, pipelined, and return full snapshots.

        All requests are sent before any answer is awaited, so reading 20,000
        children costs round trips in parallel, not in series. The whole read
        shares one deadline (the session timeout) and is abandoned at once
        when the session changes (``epoch``) or the daemon is stopping: kazoo
        keeps unsent requests queued across a disconnect, and waiting for
        each of them in turn could hold the thread for hours.
        """
        requests = [
            (watch, child, self._client.get_async(path, watch=self._on_child_data))
            for watch in watches
            for child, path in watch.stale_paths()
        ]
        deadline = time.monotonic() + self._session_timeout
        for watch, child, pending in requests:
            try:
                data, _stat = self._await(pending, deadline, epoch)
            except NoNodeError:
                data = None  # deleted meanwhile; the ChildrenWatch is about to say so
            except SESSION_ERRORS:
                raise
            except ZOOKEEPER_ERRORS as error:
                data = Unreadable(f"ZooKeeper refused to read it: {describe_error(error)}")
            watch.record(child, data)
        snapshots: list[tuple[ZnodeWatch, Snapshot]] = []
        for watch in watches:
            snapshot = watch.snapshot()
            if snapshot is not None:
                snapshots.append((watch, snapshot))
        return snapshots

    def _abandoned(self, epoch: int) -> bool:
        """True when work begun at session ``epoch`` is no longer wanted."""
        return self.freeze.epoch != epoch or self._stopping()

    def _await(self, pending: Any, deadline: float, epoch: int) -> Any:
        """``pending.get()``, giving up at ``deadline``, on a session change, or when stopping."""
        while True:
            if self._abandoned(epoch):
                raise ReadInterrupted("the session changed" if self.freeze.epoch != epoch else "the daemon is stopping")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KazooTimeoutError(f"no answer within the session timeout ({self._session_timeout:g} s)")
            try:
                return pending.get(timeout=min(remaining, _WAIT_SLICE))
            except KazooTimeoutError:
                continue


def describe_error(error: BaseException) -> str:
    """``Type: message`` (or just ``Type``) for a log line."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def close_client(client: KazooClient) -> None:
    """Stop and free a client that is no longer wanted, whatever state it is in."""
    try:
        client.stop()
        client.close()
    except Exception:  # noqa: BLE001 - a half-open client may fail to stop; nothing is left to save
        log.debug("closing a ZooKeeper client failed", exc_info=True)
