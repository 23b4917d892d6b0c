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

Every call that could wait on ZooKeeper (arming watches, reading child
lists and child data) is asynchronous: a batch of requests is sent before
any answer is awaited, and the batch is given up when no answer at all
comes for a session timeout (see :class:`_Patience`), and at once when the
session changes or the daemon is stopping. Nothing of this module waits on
a kazoo thread.

Watches
-------
Only kazoo's raw one-shot watches are used, each set again by the read that
answers it, and always with the same bound method per kind, so kazoo (which
keeps one watcher per path and callable) never stacks them:

* a children watch per znode, set by ``get_children_async``. When it fires
  the znode's list is marked stale; after each batch of events every stale
  list is read again in one pipelined round, then the data of the new
  children in another;
* a children watch also fires when its znode is deleted; a znode found
  missing gets an ``exists`` watch instead, which fires when it is created;
* a data watch per child, set by the ``get_async`` that reads its data
  (a children watch does not fire when only data changes);
* after a reconnect kazoo keeps none of them, so a resync sets every one
  again. A child already read gets an ``exists`` with its data watch and is
  read again only if its data version (mzxid) moved, so a resync of an
  unchanged tree transfers no child data.

A child whose data cannot be read for a reason other than the session
(``NoAuthError``, …) becomes :class:`~reloader.snapshot.Unreadable`: it is
skipped with one warning and its siblings are served. A znode whose child
list cannot be read (an ACL on the znode itself) keeps its last good state
and is armed again with back-off.

Sessions
--------
On SUSPENDED or LOST the cluster freezes at once. On CONNECTED every znode is
re-armed and its children re-read or re-verified, in steps of RESYNC_STEP
znodes (a stop request or a newer transition is noticed between steps); only
if the session did not change meanwhile does the cluster thaw and hand the
fresh snapshots on.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

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

from reloader.config import ClusterConfig, kazoo_arguments
from reloader.inbox import Inbox
from reloader.publication import ClusterFreeze
from reloader.snapshot import Snapshot, Unreadable
from reloader.sources.kazoo_handler import PollingHandler
from reloader.sources.watches import WatchBook, ZnodeWatch

log = logging.getLogger(__name__)

# How many znodes one resync step re-arms and re-reads before the cluster
# thread gets back to its loop, where a stop request or a newer session
# transition is noticed.
RESYNC_STEP = 250
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


class _Patience:
    """How long a batch of reads may wait with no answer at all: the session timeout, from the last answer.

    ZooKeeper answers one session's requests in order, so a big read that
    keeps getting answers is making progress however long it takes (a
    server shared by a whole fleet is slow, not gone); one that hears
    nothing for a session timeout is given up.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self.expires = time.monotonic() + timeout

    def answered(self) -> None:
        self.expires = time.monotonic() + self._timeout


@dataclass
class _DataRequests:
    """Child data requests sent and not yet awaited: reads, and version checks after a reconnect."""

    reads: list[tuple[ZnodeWatch, str, Any]] = field(default_factory=list)
    checks: list[tuple[ZnodeWatch, str, Any]] = field(default_factory=list)


class SnapshotSink(Protocol):
    """Where the source hands complete, consistent views of a znode's children."""

    def update(self, upstream: str, children: Snapshot, origin: str) -> None:
        """``children`` maps every current child name to its data."""


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
            **{"handler": PollingHandler(), **(client_options or {})},
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
        frozen cluster's resync covers them); removed ones are forgotten:
        their watches may still fire once, and find nobody to tell. The
        upstreams named in ``changed`` (their options or format changed) get
        their znode's snapshot again from what was read already, without a
        ZooKeeper read.
        """
        self.cluster = cluster
        added, _removed = self._watches.reconfigure(cluster.znodes)
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
        watches = list(watches)
        if not watches:
            return
        try:
            self._arm(watches, self.freeze.epoch, self._patience())
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

    def _on_children_event(self, event: WatchedEvent) -> None:
        if event.type == EventType.CHILD:
            self._inbox.put(lambda: self._children_changed(event.path))
        elif event.type == EventType.DELETED:
            self._inbox.put(lambda: self._znode_changed(event))

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
        """Re-arm every watch and re-read the tree, then thaw the cluster if the session held.

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
            deadline = self._patience()
            # kazoo keeps no watch across a reconnect, so every list and every
            # child's data watch is set again. A child whose data version is
            # the one already read is not read again.
            requests = _DataRequests()
            self._arm(step, epoch, deadline, verify_kept=True, then=requests)
            snapshots.extend(self._collect(step, requests, deadline, epoch))
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

    def _arm(self, watches: list[ZnodeWatch], epoch: int, deadline: _Patience, verify_kept: bool = False,
             then: _DataRequests | None = None, stale_lists_only: bool = False) -> None:
        """Read each znode's child list with a children watch; a missing znode gets a creation watch.

        With ``stale_lists_only``, only the lists a children watch marked
        stale are read (the other znodes still get their data requests).

        Every request is sent before any answer is awaited, so arming N
        znodes costs one round trip, not N. With ``verify_kept`` the children
        that were known already are marked for a version check (their data
        watches are gone after a reconnect). With ``then``, each znode's data
        requests are sent as soon as its list is in, while the other lists
        are still on their way. Session errors propagate (the caller stays
        frozen or retries); any other failure to read a child list is logged
        and re-armed with back-off.
        """
        listings = {id(watch): self._client.get_children_async(watch.path, watch=self._on_children_event)
                    for watch in watches if watch.list_stale or not stale_lists_only}
        missing = []
        for watch in watches:
            listing = listings.get(id(watch))
            if listing is not None and not self._take_listing(watch, listing, deadline, epoch, verify_kept):
                missing.append(watch)
            elif then is not None:
                self._request_data(watch, then)
        if missing:
            self._watch_for_creation(missing, deadline, epoch)

    def _take_listing(self, watch: ZnodeWatch, listing: Any, deadline: _Patience, epoch: int,
                      verify_kept: bool = False) -> bool:
        """Adopt the answer of a ``get_children_async`` sent for ``watch``; False if the znode does not exist.

        Session errors propagate.
        """
        try:
            children = self._await(listing, deadline, epoch)
        except NoNodeError:
            return False
        except SESSION_ERRORS:
            raise
        except ZOOKEEPER_ERRORS as error:
            self._children_watch_failed(watch, error)
            return True
        watch.present = True
        watch.absence_reported = False
        watch.arm_failures = 0
        watch.set_children(children, verify_kept=verify_kept)
        return True

    def _watch_for_creation(self, watches: list[ZnodeWatch], deadline: _Patience, epoch: int) -> None:
        """Set an ``exists`` watch on znodes found missing, so that their creation is seen.

        A znode created between the missing list and the ``exists`` is armed
        again at once, from the cluster's inbox.
        """
        checks = [(watch, self._client.exists_async(watch.path, watch=self._on_znode_event)) for watch in watches]
        for watch, pending in checks:
            try:
                stat = self._await(pending, deadline, epoch)
            except SESSION_ERRORS:
                raise
            except ZOOKEEPER_ERRORS as error:
                self._children_watch_failed(watch, error)
                continue
            self._znode_absent(watch)
            if stat is not None:
                self._inbox.put(functools.partial(self._rearm, watch))

    def _rearm(self, watch: ZnodeWatch) -> None:
        """Arm one znode again (it was created or deleted); cluster thread, from the inbox."""
        if self._watches.get(watch.path) is not watch:
            return  # no longer watched (a config reload removed it)
        try:
            self._arm([watch], self.freeze.epoch, self._patience())
        except SESSION_ERRORS as error:
            log.warning("znode %s: could not re-arm its watch (%s); the resync after the session "
                        "comes back re-arms it", watch.path, describe_error(error))

    def _znode_absent(self, watch: ZnodeWatch) -> None:
        if not watch.absence_reported:
            log.warning(
                "znode %s (upstream %s) does not exist; keeping the last good state and waiting for it",
                watch.path, ", ".join(watch.upstreams), extra={"upstream": watch.upstreams[0]},
            )
            watch.absence_reported = True
        watch.mark_absent()

    def _children_watch_failed(self, watch: ZnodeWatch, error: BaseException) -> None:
        watch.arm_failures += 1
        delay = min(REARM_MIN * 2 ** (watch.arm_failures - 1), REARM_MAX)
        log.warning(
            "znode %s (upstream %s): cannot watch its children (%s); keeping the last good state, "
            "trying again in %.0f s",
            watch.path, ", ".join(watch.upstreams), describe_error(error), delay, extra={"upstream": watch.upstreams[0]},
        )
        watch.list_stale = False  # not before the re-arm: a re-read now would fail the same way
        if watch.rearm_pending:
            return
        watch.rearm_pending = True

        def rearm() -> None:
            watch.rearm_pending = False
            if self.freeze.epoch != epoch_at_failure or self._stopping() or self._watches.get(watch.path) is not watch:
                return  # a resync since then re-armed everything, or the znode is no longer watched
            try:
                self._arm([watch], self.freeze.epoch, self._patience())
            except SESSION_ERRORS:
                pass  # the next CONNECTED resyncs

        epoch_at_failure = self.freeze.epoch
        self._inbox.call_later(delay, rearm)

    # ---- events ----------------------------------------------------------------------

    def _children_changed(self, path: str) -> None:
        watch = self._watches.get(path)
        if watch is not None:
            watch.mark_list_stale()  # read_changed() reads every stale list at once

    def _child_data_changed(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE:
            return  # the session was reset; the resync re-reads everything
        znode_path, child = posixpath.split(event.path)
        watch = self._watches.get(znode_path)
        if watch is not None:
            watch.mark_child_stale(child)

    def _znode_changed(self, event: WatchedEvent) -> None:
        """A watched znode was deleted (its children watch says so) or created (its creation watch)."""
        if event.type not in (EventType.CREATED, EventType.DELETED):
            return  # NONE: the session was reset, the resync re-arms everything; CHANGED: its own data
        watch = self._watches.get(event.path)
        if watch is not None:
            # Handled even while the cluster is frozen: a resync in progress
            # keeps it frozen while the session is fine, and a creation watch
            # that fired and was not set again would never see the znode come back.
            self._rearm(watch)

    # ---- reads -----------------------------------------------------------------------

    def read_changed(self) -> None:
        """Read what watches marked stale since the last call, and hand complete snapshots on.

        The cluster thread calls this once after each batch of tasks, so a
        burst of watch events costs one pipelined round of list reads, one of
        data reads, and one publish per znode. A frozen cluster is skipped:
        its resync will read everything anyway.
        """
        dirty = self._watches.dirty()
        if not dirty or not self.freeze.is_open:
            return
        epoch = self.freeze.epoch
        try:
            deadline = self._patience()
            requests = _DataRequests()
            self._arm(dirty, epoch, deadline, then=requests, stale_lists_only=True)
            snapshots = self._collect(dirty, requests, deadline, epoch)
        except SESSION_ERRORS as error:
            log.warning("cluster %s: read failed (%s); waiting for the session", self.label, describe_error(error),
                        extra={"cluster": self.label})
            return
        for watch, children in snapshots:
            self._hand_on(watch, children)

    def _hand_on(self, watch: ZnodeWatch, children: Snapshot) -> None:
        for upstream in watch.upstreams:
            self._sink.update(upstream, children, watch.path)

    def _request_data(self, watch: ZnodeWatch, requests: _DataRequests) -> None:
        """Send the data reads of ``watch``'s stale children and the version checks of its unverified ones.

        Every read leaves a data watch. An unverified child (known before a
        reconnect) gets an ``exists`` (its data watch and version, no data)
        and is read only if its version moved.
        """
        requests.reads.extend((watch, child, self._client.get_async(path, watch=self._on_child_data))
                              for child, path in watch.stale_paths())
        requests.checks.extend((watch, child, self._client.exists_async(path, watch=self._on_child_data))
                               for child, path in watch.unverified_paths())

    def _collect(self, watches: list[ZnodeWatch], requests: _DataRequests, deadline: _Patience,
                 epoch: int) -> list[tuple[ZnodeWatch, Snapshot]]:
        """Await every request sent, read what a version check found changed, and return full snapshots.

        All requests were sent before any answer is awaited, so reading
        20,000 children costs round trips in parallel, not in series. The
        read is given up when ZooKeeper stays silent for a session timeout,
        and at once when the session changes (``epoch``) or the daemon is stopping: kazoo keeps
        unsent requests queued across a disconnect, and waiting for each of
        them in turn could hold the thread for hours.
        """
        self._take_reads(requests.reads, deadline, epoch)
        rereads = []
        for watch, child, pending in requests.checks:
            try:
                stat = self._await(pending, deadline, epoch)
            except SESSION_ERRORS:
                raise
            except ZOOKEEPER_ERRORS:
                stat = None  # read it; the read says what is wrong
            if stat is None or not watch.verify(child, stat.mzxid):
                rereads.append((watch, child, self._client.get_async(f"{watch.path.rstrip('/')}/{child}",
                                                                     watch=self._on_child_data)))
        self._take_reads(rereads, deadline, epoch)
        snapshots: list[tuple[ZnodeWatch, Snapshot]] = []
        for watch in watches:
            snapshot = watch.snapshot()
            if snapshot is not None:
                snapshots.append((watch, snapshot))
        return snapshots

    def _take_reads(self, reads: list[tuple[ZnodeWatch, str, Any]], deadline: _Patience, epoch: int) -> None:
        for watch, child, pending in reads:
            version: int | None = None
            try:
                data, stat = self._await(pending, deadline, epoch)
                version = stat.mzxid
            except NoNodeError:
                data = None  # deleted meanwhile; the children watch is about to say so
            except SESSION_ERRORS:
                raise
            except ZOOKEEPER_ERRORS as error:
                why = describe_error(error, cluster=self.cluster, path=posixpath.join(watch.path, child))
                data = Unreadable(f"ZooKeeper refused to read it: {why}")
            watch.record(child, data, version)

    def _abandoned(self, epoch: int) -> bool:
        """True when work begun at session ``epoch`` is no longer wanted."""
        return self.freeze.epoch != epoch or self._stopping()

    def _patience(self) -> _Patience:
        return _Patience(self._session_timeout)

    def _await(self, pending: Any, deadline: _Patience, epoch: int) -> Any:
        """``pending.get()``, giving up when ``deadline`` runs out, on a session change, or when stopping."""
        while True:
            if self._abandoned(epoch):
                raise ReadInterrupted("the session changed" if self.freeze.epoch != epoch else "the daemon is stopping")
            remaining = deadline.expires - time.monotonic()
            if remaining <= 0:
                raise KazooTimeoutError(f"no answer for the session timeout ({self._session_timeout:g} s)")
            try:
                result = pending.get(timeout=min(remaining, _WAIT_SLICE))
            except KazooTimeoutError:
                continue
            except BaseException:
                deadline.answered()  # an error is an answer too
                raise
            deadline.answered()
            return result


def describe_error(error: BaseException, *, cluster: ClusterConfig | None = None, path: str | None = None) -> str:
    """``Type: message`` (or just ``Type``) for a log line.

    Given the cluster (and the znode), a ``NoAuth`` also says what it can
    mean for that cluster's credentials (:mod:`reloader.sources.authhint`):
    a wrong digest credential and a missing ACL look alike otherwise.
    """
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if cluster is not None:
        from kazoo.exceptions import NoAuthError

        from reloader.sources.authhint import noauth_hint

        if isinstance(error, NoAuthError):
            text += f" ({noauth_hint(cluster, path)})"
    return text


def close_client(client: KazooClient) -> None:
    """Stop and free a client that is no longer wanted, whatever state it is in."""
    try:
        client.stop()
        client.close()
    except Exception:
        log.debug("closing a ZooKeeper client failed", exc_info=True)
