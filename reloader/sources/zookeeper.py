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
Each watched znode is a state machine (:class:`~reloader.sources.watches.ZnodeWatch`,
whose docstring has the states, events and guarantees). This module turns
what kazoo says into its events, and runs *passes*: one pass takes every
znode that has something to read, sends every child-list read at once (one
round), then each znode's data reads and version checks as soon as its list
is in (a second round), and hands complete views on. The client is a
:class:`~reloader.sources.kazoo_protocol.WatchingKazooClient`; its
``watch_mode`` (the config's) picks the watches. In classic mode only raw
one-shot watches are used, each set again by the read that answers it, and
always with the same bound method per kind, so kazoo (which keeps one
watcher per path and callable) never stacks them:

* a children watch per znode, set by ``get_children_async``; it also fires
  when the znode is deleted, and a znode found missing gets an ``exists``
  watch instead, which fires when it is created;
* a data watch per child, set by the ``get_async`` that reads its data, or
  by the ``exists`` that checks its version (a children watch does not fire
  when only data changes).

In persistent mode (ZooKeeper 3.6 and later; ``auto`` picks it when the
server accepts ``AddWatch``) each znode has one persistent recursive watch,
set before its first list: a child's creation marks that child for reading
(no list), a data change marks it for reading, a deletion marks that child
gone, and it goes once every event of its transaction was taken (see
:meth:`ZooKeeperSource._settle`: one small request per batch, no list).
Children get no watch of their own. The znode keeps the one-shot children
watch its list sets (see :meth:`ZooKeeperSource._recheck_persistent`), and
never an ``exists`` watch (see :meth:`ZooKeeperSource._watch_for_creation`).

With ``watch_roots`` (see :mod:`reloader.sources.watchroots`), one
persistent recursive watch on a root covers every configured znode under
it instead of one per znode: its events carry the full path and go to the
znode the path is, or is a child of; the rest (unconfigured siblings,
grandchildren) is discarded. A root is checked readable before it is
watched; one that is not (an ACL) is not used: its znodes get watches of
their own, with a warning naming the root. Which watch covers a znode can
change (a reload adds or removes a root, a root is refused): the znode is
then invalidated, and its next pass sets the new watch before it lists. A
persistent watch no configured znode needs any more is removed.

Recovery has one path: a lost or new session, a znode deleted or created, a
per-node failure whose back-off ended, a batch given up, a znode added by a
config reload all *invalidate* the znode, and the next pass lists it,
checks every known child's version and re-reads only what moved.

A child whose data cannot be read for a reason other than the session
(``NoAuthError``, …) becomes :class:`~reloader.snapshot.Unreadable`: it is
skipped with one warning and its siblings are served. A znode whose child
list cannot be read (an ACL on the znode itself) keeps its last good state
and is tried again with back-off, through the same recovery.

Sessions
--------
On SUSPENDED or LOST the cluster freezes at once. CONNECTED alone thaws
nothing: the client first sends its watches back (SetWatches, before any
other request) and reports a :class:`~reloader.sources.kazoo_protocol.Resumption`
after the events the server fired for what changed meanwhile. Those events
took the usual path (a changed list or child is marked), so when the session
survived with its watches nothing else is read: the resync only recovers the
znodes a pass left half-read, then the cluster thaws, and what the events
marked is read by the next pass (a sweep of every child's version, when
persistent watches could not say what changed, comes after what the server
named, in steps: see :meth:`ZooKeeperSource.read_changed`). A new session (after an expiry), a server
that refused the re-registration, or a resumption before the last full read
finished: every znode is invalidated and the resync recovers them in steps
of RESYNC_STEP znodes (a stop request or a newer transition is noticed
between steps); only if the session did not change meanwhile does the
cluster thaw and hand the fresh views on. A client that is a plain
``KazooClient`` (no resumption reports) takes that full path on every
CONNECTED.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import deque
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
    UnimplementedError,
    ZookeeperError,
    ZookeeperStoppedError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import EventType, KazooState, KeeperState, WatchedEvent

from reloader.config import ClusterConfig, kazoo_arguments
from reloader.inbox import Inbox
from reloader.publication import ClusterFreeze
from reloader.snapshot import MAX_KEPT_DATA, OVERSIZED, Snapshot, Unreadable, is_oversized
from reloader.sources.kazoo_handler import PollingHandler, hands_on
from reloader.sources.kazoo_protocol import Resumption, WatchingKazooClient
from reloader.sources.watches import Need, WatchBook, ZnodeState, ZnodeWatch, capped, max_children_of
from reloader.sources.watchroots import WatchPlan, targets

log = logging.getLogger(__name__)

# How many znodes one resync step recovers before the cluster thread gets
# back to its loop, where a stop request or a newer session transition is
# noticed.
RESYNC_STEP = 250
# How often a wait for ZooKeeper answers looks up to check it is still wanted.
_WAIT_SLICE = 0.25
# How long after an authentication failure the session is tried again.
AUTH_RETRY = 30.0
# How long after a failed resync it is tried again (while the session is up).
RESYNC_RETRY = 1.0
# kazoo's reconnection back-off: 0.1 s doubling to 1 s, each step with +-40 %
# jitter. The Java client waits up to 1 s before each attempt too. A longer
# cap is what made a fleet late after a server restart: a daemon whose step
# had grown to 3-5 s during a 2 s outage waited that long with the server
# back (docs/sizing.md). Each try against a server that is down is one
# refused TCP connection.
CONNECTION_RETRY = {"max_tries": -1, "delay": 0.1, "max_delay": 1.0}
# How many children one multi-read request checks at most (a persistent
# znode's version checks; about 100 bytes of answer each for host:port
# children), and how large its answer may be expected to be, from the data
# last read. A child known to carry more than MULTI_READ_LARGE bytes, or a
# too large one, is checked on its own (an exists), so that one answer never
# carries many large children.
MULTI_READ_MAX = 500
# How many version checks one step of a sweep sends at most (10 multi-reads).
# Between two steps the cluster thread takes its inbox and reads what events
# named first: a sweep of 20,000 children never holds a change back for more
# than a step.
SWEEP_STEP = 5000
MULTI_READ_BYTES = 256 * 1024
MULTI_READ_LARGE = 4096
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
# The persistent-watch events that say what changed (NONE only says the session did).
_NUMBERED = (EventType.CREATED, EventType.DELETED, EventType.CHANGED)


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
    """Child data requests sent and not yet awaited: reads, and version checks."""

    reads: deque[tuple[ZnodeWatch, str, Any]] = field(default_factory=deque)
    checks: deque[tuple[ZnodeWatch, str, Any]] = field(default_factory=deque)
    # Children of persistent znodes to check, not sent yet (with the size of
    # their data as last read); then the multi-reads sent for them.
    bulk: list[tuple[ZnodeWatch, str, int]] = field(default_factory=list)
    bulk_sent: deque[tuple[list[tuple[ZnodeWatch, str]], Any]] = field(default_factory=deque)


class SnapshotSink(Protocol):
    """Where the source hands complete, consistent views of a znode's children."""

    def update(self, upstream: str, children: Snapshot, origin: str) -> None:
        """``children`` maps every current child name to its data."""

    def flush(self) -> None:
        """What the updates so far produced should go on now: more reading follows before the source returns."""


class ZooKeeperSource:
    """Watches the znodes of one cluster and feeds snapshots to the sink. Runs on the cluster's thread."""

    def __init__(
        self,
        cluster: ClusterConfig,
        inbox: Inbox,
        sink: SnapshotSink,
        freeze: ClusterFreeze,
        session_timeout: float = 10.0,
        client_factory: Callable[..., KazooClient] = WatchingKazooClient,
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
        self._caps = {znode.upstream: max_children_of(znode) for znode in cluster.znodes}
        self._last_state: str | None = None
        # The state the connection last reported, written on kazoo's thread
        # before the freeze it implies, so that status never shows a frozen
        # cluster as CONNECTED while the cluster thread has yet to take it.
        self._reported_state: str | None = None
        self._resync_pending = False
        # Whether the server may have dropped watches this source relies on
        # (a new session, a refused SetWatches): a full read is due, and until
        # one thaws the cluster, a resumed session re-reads in full too.
        self._watches_lost = True
        # Paths with a persistent recursive watch in this session (a znode's
        # own, or a root's, see WatchPlan); the znodes under one of them
        # (kept by _cover_changed), and those of them whose one-shot children
        # watch (kept alongside, see _recheck_persistent) fired and was not
        # set again.
        self._held: set[str] = set()
        self._persistent: set[str] = set()
        self._spent: set[str] = set()
        self._plan = WatchPlan(cluster.watch_roots)
        self._warn_unused_roots()
        # Persistent-watch events are numbered as the connection thread reads
        # them, and the cluster thread notes the last one it took: together
        # they tell when a deletion's whole transaction was taken (see _settle).
        self._events_numbered = 0
        self._events_taken = 0
        self._unsettled: set[ZnodeWatch] = set()
        self._settles_at: int | None = None
        # What the next pass must look at when its batch held watch events
        # only: the znodes they touched and those the last pass left unfinished
        # (see read_changed); any other task makes it look at every znode.
        self._event_tasks = 0
        self._touched: set[ZnodeWatch] = set()
        self._unfinished: set[ZnodeWatch] = set()
        watch_mode = {"watch_mode": cluster.watch_mode} if _is_watching(client_factory) else {}
        self._client = client_factory(
            **kazoo_arguments(cluster),
            **watch_mode,
            timeout=session_timeout,
            # Reconnect forever; a command gives up quickly so that a kazoo
            # callback thread is never stuck retrying while the session is gone.
            connection_retry=dict(CONNECTION_RETRY),
            command_retry={"max_tries": 2, "delay": 0.1, "max_delay": 1.0},
            **{"handler": PollingHandler(), **(client_options or {})},
        )

    @property
    def label(self) -> str:
        return self.cluster.label

    def watch_roots(self) -> tuple[list[str], list[str]]:
        """(the configured watch roots, those refused in this session): plain values, for status (any thread)."""
        plan = self._plan
        return sorted(plan.roots), sorted(plan.refused)

    @property
    def _watching(self) -> bool:
        """Whether the client keeps watches across blips (SetWatches) and reports each reconnection."""
        return isinstance(self._client, WatchingKazooClient)

    def _cover_changed(self) -> None:
        """Which persistent watches are held, which roots are used or which znodes are watched changed."""
        self._persistent = {watch.path for watch in self._watches if self._plan.cover(watch.path) in self._held}

    @property
    def upstreams(self) -> tuple[str, ...]:
        return self._watches.upstreams

    @property
    def client(self) -> KazooClient:
        return self._client

    @property
    def watches(self) -> WatchBook:
        """The state machines of the watched znodes (cluster thread only; tests read it when quiet)."""
        return self._watches

    @property
    def state(self) -> str | None:
        """The last session state seen by the cluster thread (None before the first)."""
        return self._last_state

    @property
    def reported_state(self) -> str | None:
        """The session state the connection last reported (any thread; what status shows).

        Read it after the freeze: it is written before the freeze it implies.
        """
        return self._reported_state

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; the first CONNECTED triggers a full read."""
        self._client.add_listener(self._on_session_state)
        if isinstance(self._client, WatchingKazooClient):
            self._client.add_resume_listener(self._on_resumption)
        self._client.start_async()

    def stop(self) -> None:
        """Close the session (so ephemeral state and watches go at once) and free the client."""
        self.freeze.close()
        try:
            self._client.stop()
        finally:
            self._client.close()

    def doubt(self, stalled: float) -> None:
        """The process was not running for ``stalled`` seconds (any thread): the session is in doubt.

        The session may have expired while the process slept, and kazoo only
        learns that after its read timeout; until ZooKeeper has answered, the
        view is not current. So the cluster freezes now, in the calling
        thread, before anything due (a drop hold's timer) can act on that
        view, and the connection is broken so that kazoo proves the session
        the usual way: a reconnect, then the resumption report (or an
        expiry and a full read) thaws it. A client that cannot be made to
        reconnect (a plain ``KazooClient``, or one not connected) re-reads
        in full on this cluster's thread, which proves the session as well.
        """
        if self._stopping():
            return
        self.freeze.close()
        epoch = self.freeze.epoch
        drop = getattr(self._client, "drop_connection", None)
        if drop is None or not drop():
            self._inbox.put(lambda: self._reread(epoch))
        # If neither a transition nor the re-read has thawed it by then, read in full (never frozen
        # for good). Scheduled from this cluster's own thread: the schedule is that thread's alone.
        self._inbox.put(lambda: self._inbox.call_later(self._session_timeout, lambda: self._reread(epoch)))

    def _reread(self, epoch: int) -> None:
        """Read every znode again and thaw, unless a session transition since ``epoch`` is already doing it."""
        if self._stopping() or self.freeze.is_open or self.freeze.epoch != epoch:
            return
        self._watches_lost = True
        self._watches.invalidate_all()
        self.resync()

    def reconfigure(self, cluster: ClusterConfig, changed: Iterable[str]) -> None:
        """Watch the znodes of ``cluster`` from now on (same session); cluster thread only.

        New znodes start UNKNOWN: the next pass reads them (the resync, while
        frozen). Removed ones are forgotten: their watches may still fire
        once, and find nobody to tell. A name new to a znode already read,
        and the names in ``changed`` (their options or format changed), are
        owed that znode's current view, handed on after this task without a
        ZooKeeper read.
        """
        before = {watch.path: self._plan.cover(watch.path) for watch in self._watches}
        self.cluster = cluster
        self._plan.reconfigure(cluster.watch_roots)
        _, removed = self._watches.reconfigure(cluster.znodes, changed)
        for watch in self._watches:
            old, new = before.get(watch.path), self._plan.cover(watch.path)
            if old is not None and old != new and (old in self._held or new in self._held):
                # A root came or went over it: its events come through another
                # watch from now on, which its next pass sets before listing it.
                watch.invalidate()
        self._cover_changed()
        self._spent &= self._persistent
        self._release(watch.path for watch in removed if watch.path != before.get(watch.path))
        self._warn_unused_roots()
        self._caps = {znode.upstream: max_children_of(znode) for znode in cluster.znodes}

    # ---- kazoo threads: enqueue only --------------------------------------------
    # The watchers are all hands_on (see reloader.sources.kazoo_handler): they
    # run on kazoo's connection thread, as its state listeners do, so the
    # inbox gets events, resumptions and state changes in the order the
    # connection read them, one thread hop sooner.

    def _on_session_state(self, state: str) -> None:
        self._reported_state = state
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            # Freezing here, not on the cluster thread, means no publish can
            # slip out between the session going bad and the thread noticing.
            self.freeze.close()
        else:
            self.freeze.note_transition()
        # Read here: kazoo moves on from AUTH_FAILED before the cluster thread runs.
        auth_failed = self._client.client_state == KeeperState.AUTH_FAILED
        self._inbox.put(lambda: self._session_changed(state, auth_failed))

    @hands_on
    def _on_children_event(self, event: WatchedEvent) -> None:
        if event.type == EventType.CHILD:
            self._inbox.put(lambda: self._children_changed(event.path))
        elif event.type == EventType.DELETED:
            self._inbox.put(lambda: self._znode_changed(event))

    @hands_on
    def _on_resumption(self, resumption: Resumption) -> None:
        self._inbox.put(lambda: self._resumed(resumption))

    @hands_on
    def _on_persistent_event(self, event: WatchedEvent) -> None:
        number = 0
        if event.type in _NUMBERED:
            # Only the connection thread reads these, so the numbers follow the inbox order.
            number = self._events_numbered = self._events_numbered + 1
        self._inbox.put(lambda: self._persistent_event(event, number))

    @hands_on
    def _on_child_data(self, event: WatchedEvent) -> None:
        self._inbox.put(lambda: self._child_data_changed(event))

    @hands_on
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
            elif self._watching:
                log.warning("cluster %s: session CONNECTED; waiting for the server to confirm the watches "
                            "of %d znodes before thawing", self.label, count, extra=extra)
            else:
                log.warning("cluster %s: session CONNECTED; re-reading %d znodes before thawing",
                            self.label, count, extra=extra)
            self._last_state = state
        if self._watching:
            # The client keeps its watches across a blip and sends them back
            # (SetWatches) before anything else; the resumption report says
            # whether the server kept them (see _resumed). CONNECTED alone
            # proves nothing: the cluster stays frozen until that report.
            if state == KazooState.LOST:
                self._watches_lost = True
                self._watches.invalidate_all()
        else:
            # kazoo keeps no watch across a disconnection: lost or back, every
            # znode's watches are unverified.
            self._watches.invalidate_all()
            if state == KazooState.CONNECTED:
                self.resync()
        if state == KazooState.LOST and auth_failed:
            # kazoo gives up for good after an authentication failure; a
            # credential fixed on the server side must not need a restart.
            log.error(
                "cluster %s: ZooKeeper refused this cluster's credentials (authentication failed); check its "
                "auth:/sasl: settings; trying again in %.0f s", self.label, AUTH_RETRY, extra={"cluster": self.label},
            )
            self._inbox.call_later(AUTH_RETRY, self._restart_client)

    def _resumed(self, resumption: Resumption) -> None:
        """A connection settled its watches: thaw at once if the server kept them all, else read in full.

        Runs after the events the re-registration fired (they and it reach
        the inbox in the order the connection read them), so every znode
        whose watch the server fired is already CHANGED or marked for
        reading, through the usual event path; the others are current. A
        znode left half-read by a pass the drop interrupted is UNKNOWN and is
        recovered before the thaw.
        """
        if self._stopping():
            return
        extra = {"cluster": self.label}
        if not resumption.resumed or self._watches_lost:
            self._watches_lost = True
            self._held.clear()
            self._persistent.clear()
            self._spent.clear()
            self._plan.forget_refusals()
            self._watches.invalidate_all()
            if resumption.resumed or resumption.packets:
                log.warning("cluster %s: the server did not keep this session's watches; re-reading %d znodes",
                            self.label, len(self._watches), extra=extra)
        else:
            log.info("cluster %s: resumed its session; the server kept its %d watches (%s)", self.label,
                     resumption.watches, "the cluster changed meanwhile" if resumption.changed else "nothing changed",
                     extra=extra)
            if resumption.changed:
                self._recheck_persistent()
        self.resync()

    def _recheck_persistent(self) -> None:
        """After a blip during which the cluster changed, find what the persistent watches did not say.

        ZooKeeper re-adds a persistent watch without comparing it against the
        zxid: a change made while the connection was down fires nothing on it.
        Each persistent znode also keeps the one-shot children watch its list
        sets, and that one *is* compared: the server has already fired it for
        every znode whose child list moved, and those are CHANGED. (It costs
        the server nothing: ZooKeeper before 3.9 keeps one watch mode per
        connection and path, so the recursive watch takes its place in the
        server's children table; the client still holds it and sends it back
        with SetWatches, which is all it is kept for.) A
        znode whose children watch was consumed since its last list (a child
        came or went while connected, told by the persistent watch) cannot
        say, and is listed again. What no watch covers is a child's data:
        every child of a persistent znode is checked, MULTI_READ_MAX to a
        ``multiRead`` request (ZooKeeper 3.6+, as persistent watches are):
        at 1,000 upstreams x 20, 40 requests instead of 20,000.

        A znode found missing has no watch the server compares (no
        ``exists`` watch under a persistent one): it is listed again, in
        case it was created meanwhile.
        """
        for watch in self._watches:
            if watch.path not in self._persistent or watch.state is ZnodeState.UNKNOWN:
                continue  # not persistent, or recovered in full anyway
            if watch.state is ZnodeState.ABSENT:
                watch.invalidate()
                continue
            if watch.path in self._spent:
                watch.children_changed()
            watch.verify_children()

    def _release(self, gone: Iterable[str] = ()) -> None:
        """Remove the persistent watches no configured znode needs now, and every watch on the ``gone`` paths.

        A znode's own watch goes with its znode; a root's with the last
        znode under it; a removed znode under a root leaves a one-shot
        children watch, which goes too. Sent and not awaited (ZooKeeper
        applies them in order; one that fails, with its connection, is not
        sent back by the next SetWatches either): a hung server holds up
        nothing here.
        """
        client = self._client
        if not isinstance(client, WatchingKazooClient):
            return
        needed = self._plan.needed(watch.path for watch in self._watches)
        unneeded = self._held - needed
        self._held -= unneeded
        self._cover_changed()
        for path in sorted(unneeded | (set(gone) - needed)):
            try:
                client.remove_watches_async(path)
            except Exception as error:
                # It fires for a path nobody watches now; the next session forgets it.
                log.info("cluster %s: could not remove the watches on %s (%s)", self.label, path,
                         describe_error(error), extra={"cluster": self.label})

    def _warn_unused_roots(self) -> None:
        for root in self._plan.unused(watch.path for watch in self._watches):
            log.warning("cluster %s: watch root %s covers no configured znode; it is not watched", self.label,
                        root, extra={"cluster": self.label})

    def _restart_client(self) -> None:
        if self._stopping() or self._client.connected:
            return
        self._client.stop()
        self._client.start_async()

    def resync(self) -> None:
        """Recover every UNKNOWN znode, then thaw the cluster if the session held.

        Runs in steps of RESYNC_STEP znodes, each a task of its own; each
        step takes the znodes that are UNKNOWN *then*, so a znode a config
        reload added, or one created or deleted meanwhile, is covered before
        the thaw. If ZooKeeper fails mid-way the cluster stays frozen and a
        retry is scheduled; a newer session transition abandons an older
        resync at its next step (the transition starts its own).
        """
        if not self._client.connected:
            return
        self._resync_step(self.freeze.epoch, 0)

    def _resync_step(self, epoch: int, done: int) -> None:
        if self._abandoned(epoch):
            return
        step = [watch for watch in self._watches if watch.state is ZnodeState.UNKNOWN][:RESYNC_STEP]
        if step:
            try:
                self._sync(step, epoch)
            except SESSION_ERRORS as error:
                self._given_up(step)
                if not self._stopping():
                    log.warning("cluster %s: resync failed (%s); staying frozen", self.label, describe_error(error),
                                extra={"cluster": self.label})
                    self._schedule_resync()
                return
            except Exception:
                # Not ZooKeeper's doing: still, a resync that stopped here
                # would leave the cluster frozen for good.
                self._given_up(step)
                log.exception("cluster %s: resync failed; staying frozen, trying again", self.label,
                              extra={"cluster": self.label})
                self._schedule_resync()
                return
            self._inbox.put(lambda: self._resync_step(epoch, done + len(step)))
            return
        if not self.freeze.open_if(epoch):
            return  # the session changed while we read; its own transition resyncs
        self._watches_lost = False
        log.info("cluster %s: resynced %d znodes; thawed", self.label, done, extra={"cluster": self.label})
        # What arrived during the resync is read by the next read_changed().
        self._deliver()

    def _schedule_resync(self) -> None:
        if self._resync_pending:
            return
        self._resync_pending = True

        def retry() -> None:
            self._resync_pending = False
            if not self.freeze.is_open and self._client.state == KazooState.CONNECTED:
                self.resync()

        self._inbox.call_later(RESYNC_RETRY, retry)

    # ---- events ----------------------------------------------------------------------

    def _children_changed(self, path: str) -> None:
        self._event_tasks += 1
        watch = self._watches.get(path)
        if watch is None:
            return
        self._touched.add(watch)
        if path in self._persistent and self.freeze.is_open:
            # The persistent watch tells each child's coming and going; this
            # one-shot watch is kept only for the next resumption (see
            # _recheck_persistent), and is now spent.
            self._spent.add(path)
            return
        watch.children_changed()  # read_changed() reads every changed list at once

    def _child_data_changed(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE:
            return  # the session was reset; the resync re-reads everything
        self._event_tasks += 1
        znode_path, child = posixpath.split(event.path)
        watch = self._watches.get(znode_path)
        if watch is not None:
            self._touched.add(watch)
            watch.child_data_changed(child)

    def _znode_changed(self, event: WatchedEvent) -> None:
        """A watched znode was deleted (its children watch says so) or created (its creation watch)."""
        if event.type not in (EventType.CREATED, EventType.DELETED):
            return  # NONE: the session was reset, the resync recovers everything; CHANGED: its own data
        self._event_tasks += 1
        watch = self._watches.get(event.path)
        if watch is not None:
            self._touched.add(watch)
            # Even while frozen: a resync in progress takes every UNKNOWN znode before it thaws.
            watch.invalidate()

    def _persistent_event(self, event: WatchedEvent, number: int = 0) -> None:
        """A persistent recursive watch's event (number ``number``): a child came, went or changed, or the znode itself did.

        The watch may be a root's, shared by many znodes: the event goes to
        the znode its path is and to the one it is a child of (both, when
        configured znodes nest); anything else is discarded.
        """
        if event.type not in _NUMBERED:
            return  # NONE: the session ended; the full read that follows recovers everything
        self._events_taken = number
        self._event_tasks += 1
        itself, znode_path = targets(event.path, self._persistent.__contains__)
        if itself is not None and event.type != EventType.CHANGED:
            znode = self._watches.get(itself)
            assert znode is not None
            self._touched.add(znode)
            znode.invalidate()  # the znode itself came or went
        if znode_path is None:
            return  # not a watched znode's child: a sibling under a root, a grandchild, or not watched (any more)
        watch = self._watches.get(znode_path)
        assert watch is not None
        self._touched.add(watch)
        child = posixpath.basename(event.path)
        if event.type == EventType.CHANGED:
            watch.child_data_changed(child)
        elif watch.over_cap:
            watch.children_changed()  # capped: which children are served needs the list
        elif event.type == EventType.CREATED:
            watch.child_created(child)
        else:
            # Not dropped yet: the events of one transaction come one by one,
            # and a transaction that removes several instances must not be
            # served half-applied (the shrink guard would let a first half
            # through). _settle() drops the child with its whole transaction.
            watch.child_gone(child, number)
            self._unsettled.add(watch)

    def _retry_due(self, watch: ZnodeWatch, failures: int) -> None:
        if self._watches.get(watch.path) is watch:
            watch.retry_due(failures)  # the next pass (or the resync, while frozen) recovers it

    # ---- passes ----------------------------------------------------------------------

    def read_changed(self, tasks: int | None = None) -> None:
        """Read what events and recoveries left to read, and hand complete views on.

        The cluster thread calls this once after each batch of tasks, so a
        burst of watch events costs one pipelined round of list reads, one of
        data reads, and one publish per znode. A frozen cluster is skipped:
        its resync reads everything anyway.

        ``tasks`` is how many tasks of the batch may have touched the
        watches (the cluster worker leaves out the pipeline's own). When
        every one of them was a watch event, only the znodes those events
        touched and the ones the last pass left unfinished are looked at (a
        burst of events over 1,000 znodes would otherwise pay a walk over all
        of them per batch); after any other task, or with ``tasks`` None (an
        idle tick), every znode is.

        A sweep (every child of every persistent znode to check, after a
        resumption during which the cluster changed) comes after what the
        server named (a list that moved, a child an event told of): those
        are read and handed on first, in one round trip, and the sweep
        follows in steps (see :func:`sweep_plan`), the inbox taken between
        two steps, so an event that comes during a long sweep waits for one
        step at most.
        """
        only_events = tasks is not None and tasks == self._event_tasks
        self._event_tasks = 0
        touched, self._touched = self._touched, set()
        if not self.freeze.is_open:
            self._unfinished = set(self._watches)  # the pass after the thaw looks at everything
            return
        watches: Iterable[ZnodeWatch]
        if only_events:
            watches = touched | self._unfinished | self._unsettled
        else:
            watches = list(self._watches)
        # A synced znode with nothing to read (nearly all of them) is passed
        # over without the property call, which costs 1,000 znodes 0.4 ms a
        # pass, 0.05 ms this way.
        synced = ZnodeState.SYNCED
        work = [watch for watch in watches
                if (watch.state is not synced or watch.needs) and watch.needs_pass]
        named, step, more = sweep_plan(work)
        epoch = self.freeze.epoch
        for batch in (named, step):
            if not batch:
                continue
            if not self._reading(lambda batch=batch: self._sync(batch, epoch), work):
                return
            if batch is named and step:
                self._deliver(watches)
                self._sink.flush()
        if not self._reading(self._settle, work):
            return
        self._deliver(watches)
        self._unfinished = {watch for watch in watches
                            if watch.owed or ((watch.state is not synced or watch.needs) and watch.needs_pass)}
        if more:
            # The rest of the sweep after the inbox: events that came meanwhile are read first.
            self._inbox.put(lambda: None)

    def _reading(self, read: Callable[[], None], work: list[ZnodeWatch]) -> bool:
        """Run one read of a pass; on a session error give the pass up (False): the session's recovery reads it all."""
        try:
            read()
        except SESSION_ERRORS as error:
            self._given_up(work)
            self._unfinished = set(self._watches)
            log.warning("cluster %s: read failed (%s); waiting for the session", self.label,
                        describe_error(error), extra={"cluster": self.label})
            return False
        return True

    def _settle(self) -> None:
        """Drop the children persistent watches said were deleted, each with its whole transaction.

        ZooKeeper applies a transaction whole, with no read in between, and
        sends one session its events and answers in order on the one
        connection; the connection thread numbers and queues each event
        before it reads the next packet. So once a request sent after a
        deletion's event was taken is answered, every event of that
        deletion's transaction has a number, at most the last one given;
        once the cluster thread has taken every event up to that number,
        the deletions up to it are dropped together. One ``exists`` serves
        every deletion of a batch, of any number of znodes, where a child
        list per deletion served before. Events taken after the request was
        sent wait for the next one; at most two are sent per pass, and a
        pass follows every batch of events.
        """
        for _ in range(2):
            self._unsettled = {watch for watch in self._unsettled
                               if watch.gone and self._watches.get(watch.path) is watch}
            if self._settles_at is None:
                if not self._unsettled:
                    return
                any_path = next(iter(self._unsettled)).path
                try:
                    self._await(self._client.exists_async(any_path), self._patience(), self.freeze.epoch)
                except SESSION_ERRORS:
                    raise
                except ZOOKEEPER_ERRORS:
                    pass  # an error is an answer too, and came in the same order
                self._settles_at = self._events_numbered
            if self._events_taken < self._settles_at:
                return  # some of those events wait in the inbox: the pass after the next batch settles them
            upto, self._settles_at = self._settles_at, None
            for watch in self._unsettled:
                watch.settle(upto)

    def _given_up(self, watches: list[ZnodeWatch]) -> None:
        """A pass was given up: whatever it had not finished is unverified again."""
        for watch in watches:
            if watch.state in (ZnodeState.LISTING, ZnodeState.READING) or (
                    watch.state is ZnodeState.SYNCED and watch.needs):
                watch.invalidate()

    def _deliver(self, watches: Iterable[ZnodeWatch] | None = None) -> None:
        """Hand every complete view of ``watches`` (default: all) on to the upstreams owed it (only those mapped to its path now)."""
        if not self.freeze.is_open:
            return
        for watch in self._watches if watches is None else watches:
            if not watch.owed:
                continue
            view = watch.view()
            if view is None:
                continue
            for name in watch.take_owed():
                self._sink.update(name, capped(view, self._caps.get(name, len(view))), watch.path)

    def _sync(self, watches: list[ZnodeWatch], epoch: int) -> None:
        """One pass over ``watches``: read the lists they need, then their children's data.

        Every list request is sent before any answer is awaited, so N znodes
        cost one round trip, not N; each znode's data requests go out as soon
        as its list is in, while the other lists are still on their way, and
        are awaited together at the end. Session errors propagate (the caller
        gives the pass up); any other failure stays with its znode or child.
        """
        deadline = self._patience()
        for watch in watches:
            if watch.state in (ZnodeState.LISTING, ZnodeState.READING):
                watch.invalidate()  # left half-read by a pass that failed
        self._add_persistent([watch for watch in watches if watch.needs_list and watch.path not in self._persistent],
                             deadline, epoch)
        listings: dict[int, Any] = {}
        for watch in watches:
            if watch.needs_list:
                # Also in persistent mode: this one-shot children watch is
                # what SetWatches compares (see _recheck_persistent).
                listings[id(watch)] = self._client.get_children_async(watch.path, watch=self._on_children_event)
                self._spent.discard(watch.path)
                watch.listing_sent()
        requests = _DataRequests()
        missing = []
        for watch in watches:
            listing = listings.pop(id(watch), None)
            if listing is not None and not self._take_listing(watch, listing, deadline, epoch):
                missing.append(watch)
            elif watch.state in (ZnodeState.READING, ZnodeState.SYNCED):
                self._request_data(watch, requests)
        if missing:
            self._watch_for_creation(missing, deadline, epoch)
        self._send_bulk(requests)
        self._collect(requests, deadline, epoch)

    def _add_persistent(self, watches: list[ZnodeWatch], deadline: _Patience, epoch: int) -> None:
        """Set the persistent recursive watch that covers each of ``watches`` (pipelined), unless classic is in effect.

        One ``AddWatch`` per cover: a root's is sent once for all its znodes
        (after the root was found readable, see :meth:`_check_roots`), any
        other znode gets its own. Sent before the lists, and ZooKeeper
        answers in order: the watch covers every change after the list. A
        root the server refuses is not used, and its znodes get watches of
        their own in the same pass. A server without persistent watches
        (older than 3.6) answers UNIMPLEMENTED and closes the connection:
        with ``watch_mode: auto`` the session goes on with classic watches,
        and the pass is given up (the reconnection's resync reads it).
        """
        client = self._client
        if not watches or not isinstance(client, WatchingKazooClient) or client.watch_mode_in_effect == "classic":
            return
        plan = self._plan
        unchecked = {plan.cover(w.path) for w in watches} & plan.roots - plan.refused - self._held
        self._check_roots(sorted(unchecked), deadline, epoch)
        groups: dict[str, list[ZnodeWatch]] = {}
        for watch in watches:
            groups.setdefault(plan.cover(watch.path), []).append(watch)
        try:
            self._add_watches(groups, deadline, epoch)
        finally:
            self._cover_changed()

    def _add_watches(self, groups: dict[str, list[ZnodeWatch]], deadline: _Patience, epoch: int) -> None:
        """Send an ``AddWatch`` per path of ``groups`` (path -> the znodes it covers), then await them all."""
        client = self._client
        assert isinstance(client, WatchingKazooClient)
        plan = self._plan
        while groups:
            sent = []
            for path, members in groups.items():
                pending = client.add_persistent_watch_async(path, self._on_persistent_event)
                if pending is None:
                    return  # classic watches in this session
                sent.append((path, members, pending))
            groups = {}
            for path, members, pending in sent:
                try:
                    self._await(pending, deadline, epoch)
                except UnimplementedError as error:
                    if client.persistent_refused(error):
                        raise ConnectionDropped("ZooKeeper has no persistent watches; classic watches from now on") \
                            from None
                    self._watch_failed(path, members, error, groups)
                except SESSION_ERRORS:
                    raise
                except ZOOKEEPER_ERRORS as error:
                    self._watch_failed(path, members, error, groups)
                else:
                    client.persistent_accepted()
                    self._held.add(path)
                    if path in plan.roots:
                        log.info("cluster %s: one persistent watch on %s covers %d znodes", self.label, path,
                                 sum(1 for w in self._watches if plan.cover(w.path) == path),
                                 extra={"cluster": self.label})

    def _watch_failed(self, path: str, members: list[ZnodeWatch], error: BaseException,
                      retry: dict[str, list[ZnodeWatch]]) -> None:
        """The server refused the persistent watch on ``path``: a root is given up (its znodes go to ``retry``
        with their own paths), a znode's own watch fails like its list."""
        if path in self._plan.roots and path not in self._plan.refused:
            self._refuse_root(path, error)
        for watch in members:
            cover = self._plan.cover(watch.path)
            if cover != path:
                retry.setdefault(cover, []).append(watch)
            else:
                self._list_failed(watch, error)

    def _check_roots(self, roots: list[str], deadline: _Patience, epoch: int) -> None:
        """Read each root's data (pipelined, no watch): a root this session may not read is not used.

        ZooKeeper 3.8 accepts a persistent watch on a node the client may
        not read (Debian's 3.8.0, CVE-2024-23944 fix included, then sends the
        events of the readable nodes under it); whether a release checks
        the ACL when the watch is added, per event, or not at all differs,
        so the daemon checks for itself and never relies on a watch over a
        node it was not granted. A root that does not exist is used (its
        watch reports its creation).
        """
        checks = [(root, self._client.get_async(root)) for root in roots]
        for root, pending in checks:
            try:
                self._await(pending, deadline, epoch)
            except NoNodeError:
                pass
            except SESSION_ERRORS:
                raise
            except ZOOKEEPER_ERRORS as error:
                self._refuse_root(root, error)
            del pending

    def _refuse_root(self, root: str, error: BaseException) -> None:
        self._plan.refuse(root)
        self._cover_changed()
        covered = [w.path for w in self._watches if self._plan.root_of(w.path) == root]
        log.warning(
            "cluster %s: cannot use watch root %s (%s); its %d znodes get a persistent watch each instead "
            "(two server watches per znode, not one shared); fix its ACL and restart the daemon to share it",
            self.label, root, describe_error(error, cluster=self.cluster, path=root), len(covered),
            extra={"cluster": self.label},
        )

    def _take_listing(self, watch: ZnodeWatch, listing: Any, deadline: _Patience, epoch: int) -> bool:
        """Adopt the answer of a ``get_children_async`` sent for ``watch``; False if the znode does not exist."""
        try:
            children = self._await(listing, deadline, epoch)
        except NoNodeError:
            return False
        except SESSION_ERRORS:
            raise
        except ZOOKEEPER_ERRORS as error:
            self._list_failed(watch, error)
            return True
        was_over = watch.over_cap
        dropped = watch.listed(children)
        extra = {"upstream": watch.upstreams[0]} if watch.upstreams else {}
        if dropped and not was_over:
            log.warning(
                "znode %s (upstream %s) has %d children, more than max_children (%d); only the first %d "
                "(in name order) are read and served", watch.path, ", ".join(watch.upstreams),
                len(watch.names) + dropped, watch.max_children, watch.max_children, extra=extra,
            )
        elif was_over and not dropped:
            log.info("znode %s: %d children, within max_children again", watch.path, len(watch.names), extra=extra)
        return True

    def _list_failed(self, watch: ZnodeWatch, error: BaseException) -> None:
        failures, delay = watch.list_failed()
        log.warning(
            "znode %s (upstream %s): cannot watch its children (%s); keeping the last good state, "
            "trying again in %.0f s",
            watch.path, ", ".join(watch.upstreams), describe_error(error), delay,
            extra={"upstream": watch.upstreams[0]} if watch.upstreams else {},
        )
        self._inbox.call_later(delay, lambda: self._retry_due(watch, failures))

    def _watch_for_creation(self, watches: list[ZnodeWatch], deadline: _Patience, epoch: int) -> None:
        """Set an ``exists`` watch on znodes found missing, so that their creation is seen.

        A znode created between the missing list and the ``exists`` is
        invalidated at once: the next pass lists it.

        A znode with a persistent watch gets no ``exists`` watch: its
        persistent watch reports the creation, and ZooKeeper before 3.9 keeps
        one watch mode per connection and path (ZOOKEEPER-4466), so a
        one-shot watch there would replace the persistent one and take it
        away when it fires.
        """
        checks = [(watch, self._client.exists_async(
            watch.path, watch=None if watch.path in self._persistent else self._on_znode_event)) for watch in watches]
        for watch, pending in checks:
            try:
                stat = self._await(pending, deadline, epoch)
            except SESSION_ERRORS:
                raise
            except ZOOKEEPER_ERRORS as error:
                self._list_failed(watch, error)
                continue
            if stat is not None:
                watch.invalidate()
                self._inbox.put(lambda: None)  # a pass soon, not at the next idle tick
            elif watch.list_missing():
                log.warning(
                    "znode %s (upstream %s) does not exist; keeping the last good state and waiting for it",
                    watch.path, ", ".join(watch.upstreams),
                    extra={"upstream": watch.upstreams[0]} if watch.upstreams else {},
                )

    def _request_data(self, watch: ZnodeWatch, requests: _DataRequests) -> None:
        """Send the data reads of ``watch``'s children marked for reading, and the version checks of the others.

        Every read leaves a data watch. A child known before (after a
        recovery) gets an ``exists`` (its data watch and version, no data)
        and is read only if its version moved.
        """
        get, exists = self._client.get_async, self._client.exists_async
        # Under a persistent watch a child needs no watch of its own.
        data_watch = None if watch.path in self._persistent else self._on_child_data
        requests.reads.extend((watch, child, get(watch.child_path(child), watch=data_watch))
                              for child in watch.reads())
        checks = watch.checks()
        if watch.path in self._persistent and isinstance(self._client, WatchingKazooClient):
            # No watch to set again: check (read) the small ones many to a request.
            large = []
            for child in checks:
                size = _last_size(watch, child)
                if size <= MULTI_READ_LARGE:
                    requests.bulk.append((watch, child, size))
                else:
                    large.append(child)
            checks = large
        requests.checks.extend((watch, child, exists(watch.child_path(child), watch=data_watch))
                               for child in checks)

    def _send_bulk(self, requests: _DataRequests) -> None:
        """Send the multi-reads of the persistent znodes' children to check, MULTI_READ_MAX to a request."""
        client = self._client
        assert not requests.bulk or isinstance(client, WatchingKazooClient)
        chunks: list[list[tuple[ZnodeWatch, str]]] = [[]]
        size = 0
        for watch, child, last in requests.bulk:
            expected = last + 100
            if chunks[-1] and (len(chunks[-1]) >= MULTI_READ_MAX or size + expected > MULTI_READ_BYTES):
                chunks.append([])
                size = 0
            chunks[-1].append((watch, child))
            size += expected
        for chunk in chunks:
            if chunk:
                requests.bulk_sent.append((chunk, client.get_many_async([w.child_path(c) for w, c in chunk])))
        requests.bulk = []

    def _collect(self, requests: _DataRequests, deadline: _Patience, epoch: int) -> None:
        """Await every request sent, and read what a version check found moved.

        All requests were sent before any answer is awaited, so reading
        20,000 children costs round trips in parallel, not in series. The
        read is given up when ZooKeeper stays silent for a session timeout,
        and at once when the session changes (``epoch``) or the daemon is stopping: kazoo keeps
        unsent requests queued across a disconnect, and waiting for each of
        them in turn could hold the thread for hours.
        """
        self._take_reads(requests.reads, deadline, epoch)
        rereads: deque[tuple[ZnodeWatch, str, Any]] = deque()
        while requests.bulk_sent:
            chunk, pending = requests.bulk_sent.popleft()
            try:
                results = self._await(pending, deadline, epoch)
            except SESSION_ERRORS:
                raise
            except ZOOKEEPER_ERRORS:
                # The multi-read as a whole was refused: read them one by one.
                results = [None] * len(chunk)
            for (watch, child), result in zip(chunk, results):
                if result is None:
                    watch.verified(child, None)
                    rereads.append((watch, child, self._client.get_async(watch.child_path(child))))
                elif isinstance(result, NoNodeError):
                    self._adopt(watch, child, None, None)
                elif isinstance(result, BaseException):
                    why = describe_error(result, cluster=self.cluster, path=watch.child_path(child))
                    self._adopt(watch, child, Unreadable(f"ZooKeeper refused to read it: {why}"), None)
                elif not watch.verified(child, result[1].mzxid):
                    # Moved: keep the data just read. (Unmoved, nearly all of a
                    # sweep: the data is the same, nothing to keep.)
                    self._adopt(watch, child, result[0], result[1].mzxid)
            del results
        while requests.checks:
            watch, child, pending = requests.checks.popleft()
            try:
                stat = self._await(pending, deadline, epoch)
            except SESSION_ERRORS:
                raise
            except ZOOKEEPER_ERRORS:
                stat = None  # read it; the read says what is wrong
            if not watch.verified(child, None if stat is None else stat.mzxid):
                data_watch = None if watch.path in self._persistent else self._on_child_data
                rereads.append((watch, child, self._client.get_async(watch.child_path(child), watch=data_watch)))
        self._take_reads(rereads, deadline, epoch)

    def _take_reads(self, reads: deque[tuple[ZnodeWatch, str, Any]], deadline: _Patience, epoch: int) -> None:
        # Taken off the queue one by one, so that data read is dropped as soon
        # as it is kept (or not): a batch of large children never piles up.
        while reads:
            watch, child, pending = reads.popleft()
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
            del pending
            self._adopt(watch, child, data, version)
            data = None

    def _adopt(self, watch: ZnodeWatch, child: str, data: Any, version: int | None) -> None:
        """Keep what was read of ``child`` (a too large data is noted, not kept)."""
        if is_oversized(data):
            record = watch.known.get(child)
            if record is not None and record.data is not OVERSIZED:
                log.warning(
                    "znode %s child %r: %d bytes of data, more than any format reads (%d); not kept",
                    watch.path, child[:120], len(data), MAX_KEPT_DATA,
                    extra={"upstream": watch.upstreams[0]} if watch.upstreams else {},
                )
        watch.data_read(child, data, version)

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


def sweep_plan(work: list[ZnodeWatch]) -> tuple[list[ZnodeWatch], list[ZnodeWatch], bool]:
    """Split one pass's ``work`` into what to read first and a step of a sweep: ``(named, step, more)``.

    A *sweep* is the version checks of every child of znodes that are
    otherwise current (after a resumption during which the cluster
    changed: no persistent watch says which child's data moved). Everything
    else, a list to read or a child an event named, is *named*: what the
    server said changed. When the sweep is large (more than MULTI_READ_MAX
    checks), the named znodes are read first, on a pass of their own, and
    the sweep follows in steps of about SWEEP_STEP checks (whole znodes);
    ``more`` says a step is left for a later pass. A small one goes with
    the named ones in one pass (a second round trip would cost a burst of
    events more than it saves).
    """
    named: list[ZnodeWatch] = []
    sweep: list[ZnodeWatch] = []
    checks = 0
    for watch in work:
        if watch.state is ZnodeState.SYNCED and all(need is Need.VERIFY for need in watch.needs.values()):
            sweep.append(watch)
            checks += len(watch.needs)
        else:
            named.append(watch)
    if checks <= MULTI_READ_MAX:
        return work, [], False
    step: list[ZnodeWatch] = []
    taken = 0
    for watch in sweep:
        if step and taken + len(watch.needs) > SWEEP_STEP:
            return named, step, True
        step.append(watch)
        taken += len(watch.needs)
    return named, step, False


def _last_size(watch: ZnodeWatch, child: str) -> int:
    """The size of ``child``'s data as last read (large for a too large or unreadable one)."""
    record = watch.known.get(child)
    data = None if record is None else record.data
    if data is None:
        return 0
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    return MAX_KEPT_DATA  # OVERSIZED, Unreadable: check it on its own


def _is_watching(factory: Callable[..., KazooClient]) -> bool:
    """Whether ``factory`` takes ``watch_mode``: any but a class that is not a :class:`WatchingKazooClient`."""
    return not isinstance(factory, type) or issubclass(factory, WatchingKazooClient)


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
