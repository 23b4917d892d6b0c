"""Watch bookkeeping for one cluster: one explicit state machine per watched znode.

This module does no I/O. The ZooKeeper source (:mod:`reloader.sources.zookeeper`)
feeds each :class:`ZnodeWatch` *events* (what a watch, a read or the session
said) and asks it what to read next; the watch turns what was read into
complete snapshots and says which upstreams are owed one.

Guarantees
----------

* **One recovery path.** Whatever makes a znode's watches or knowledge
  doubtful (the session was lost or came back, its list could not be read,
  the znode was deleted or created, it was just added by a config reload)
  is the one event :meth:`ZnodeWatch.invalidate`: the znode goes to
  ``UNKNOWN`` and every child already known is marked for a version check.
  The next pass lists it (setting its children watch), checks every known
  child's version (setting its data watch), and re-reads only the children
  whose version (mzxid) moved and the new ones. No trigger chooses its own
  arguments.
* **Snapshots are never stale.** A snapshot exists only in ``SYNCED``, and
  only when every listed child's data was read, or verified unchanged by its
  version, after the last event that concerned it; so a published state is
  never older than the event that caused it, and nothing is published for a
  znode whose list is doubtful.
* **Snapshots go only where they belong.** What is owed is kept per upstream
  *name* and handed only to the names that map to the znode's path *now*
  (:meth:`ZnodeWatch.take_owed`): an upstream that a reload moved elsewhere
  never gets this znode's view, and a name newly mapped to a known znode is
  owed its current view at once.
* **Deletions a transaction at a time.** A persistent watch's deletion
  event only marks the child *gone* (:meth:`ZnodeWatch.child_gone`): it is
  served until the source knows every event of its transaction was taken,
  and then every child that transaction deleted goes at once
  (:meth:`ZnodeWatch.settle`). A list read meanwhile supersedes the marks;
  a child created again before its deletion settled stays.
* **Names only, when told so.** A znode whose every upstream has
  ``child_data: ignore`` never has a child's data read, checked or
  watched: a child is known by its name alone, as empty data, and is
  current as soon as it is listed or created. Its snapshots are complete
  without a data read, so a persistent watch's creation event is a view at
  once, and a recovery lists it and nothing more.
* **Bounded memory.** At most ``max_children`` children are known (the first
  ones in name order; the znode is reported as capped), child data larger
  than :data:`~reloader.snapshot.MAX_KEPT_DATA` is kept as one shared
  stand-in, never whole, and everything known of a child goes when it does.

States and events
-----------------

============  ===================================================================
``UNKNOWN``   watches and knowledge unverified: list, verify every child, re-read moved
``CHANGED``   watches set, but the child list moved (a children event): list again
``LISTING``   a child-list read (setting the children watch) is in flight
``READING``   list in; data reads and version checks (setting data watches) in flight
``SYNCED``    every watch set and every child current (a child's data event only
              marks that child for reading; the snapshot waits for it)
``ABSENT``    the znode does not exist; a creation watch is set
``FAILED``    its list could not be read for a reason of its own (an ACL); a retry
              is due after a back-off
============  ===================================================================

=====================  ===========================================  ===============
event                  from                                         to
=====================  ===========================================  ===============
invalidate             any (session lost or back, created/deleted,  UNKNOWN
                       retry due, batch given up, new watch)
watches_confirmed      UNKNOWN with a known list (a future          SYNCED; reads
                       SetWatches that the server accepted)         only data events
children_changed       SYNCED, READING                              CHANGED
listing_sent           UNKNOWN, CHANGED                             LISTING
listed                 LISTING                                      READING/SYNCED
list_missing           LISTING (and no creation since)              ABSENT
list_failed            LISTING                                      FAILED
retry_due              FAILED (same failure)                        UNKNOWN
data_read / verified   READING, SYNCED (child marked)               SYNCED when no
                                                                    child is left
child_created          SYNCED, READING (a persistent watch's event) same, child
                                                                    added
child_gone             any (a persistent watch's deletion event)    same, child
                                                                    marked gone
settle                 any (a barrier covered the gone children's   same, children
                       transactions)                                dropped
verify_children        any (a resumption under a persistent watch   same, every
                       after which the zxid moved)                  child checked
=====================  ===========================================  ===============

Reaching ``SYNCED`` through a pass owes the view to every upstream of the
znode (the pipeline drops a state equal to the published one).

A child's data event can arrive in any state: the child is marked for
reading, and the next pass that reaches its znode reads it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from reloader.config import DEFAULT_MAX_CHILDREN, ZnodeConfig
from reloader.snapshot import ChildData, Snapshot, keepable

# Back-off for a znode whose list failed for a reason of its own.
RETRY_MIN = 1.0
RETRY_MAX = 30.0


class ZnodeState(enum.Enum):
    UNKNOWN = "unknown"
    CHANGED = "changed"
    LISTING = "listing"
    READING = "reading"
    SYNCED = "synced"
    ABSENT = "absent"
    FAILED = "failed"


class Need(enum.Enum):
    """What a known child still needs before its data counts as current."""

    READ = "read"  # a data event, or new: read its data (and set its data watch)
    VERIFY = "verify"  # its data watch may be gone: check its version, read it if moved


# States in which the next pass must read the znode's child list.
_LIST_NEEDED = (ZnodeState.UNKNOWN, ZnodeState.CHANGED)
# States that wait for an event, not for a pass.
_AT_REST = (ZnodeState.SYNCED, ZnodeState.ABSENT, ZnodeState.FAILED)


class _Child:
    """What was read of one child: its data, and the data version (mzxid) it was read at."""

    __slots__ = ("data", "version")

    def __init__(self) -> None:
        self.data: ChildData = None
        # None: not worth remembering (unreadable, or gone): read it again next time.
        self.version: int | None = None


@dataclass(eq=False)
class ZnodeWatch:
    """The state machine of one watched znode (see the module docstring)."""

    path: str
    upstreams: list[str] = field(default_factory=list)
    max_children: int = DEFAULT_MAX_CHILDREN
    # False when every upstream of the znode ignores child data (``child_data: ignore``).
    read_data: bool = True
    state: ZnodeState = ZnodeState.UNKNOWN
    # Knowledge: whether the znode existed when last looked at (None: never
    # looked), its children in name order and what was read of each.
    exists: bool | None = None
    names: tuple[str, ...] = ()
    known: dict[str, _Child] = field(default_factory=dict)
    # Children whose data is not current yet, and what each needs.
    needs: dict[str, Need] = field(default_factory=dict)
    # Upstream names owed the current view (handed on once SYNCED).
    owed: set[str] = field(default_factory=set)
    # Consecutive list failures of this znode's own (drives the back-off).
    failures: int = 0
    # How many children the list had beyond max_children when last read (0: none).
    over_cap: int = 0
    # Children a persistent watch said were deleted, with the number of that
    # event: still served until settle() says their whole transaction was taken.
    gone: dict[str, int] = field(default_factory=dict)

    # ---- what the source asks ------------------------------------------------------

    @property
    def needs_list(self) -> bool:
        return self.state in _LIST_NEEDED

    @property
    def needs_pass(self) -> bool:
        """Whether the next pass has anything to read for this znode.

        LISTING and READING only last for a pass; a znode found in one of
        them between passes was left there by a pass that failed, and the
        pass that takes it starts with a recovery.
        """
        return self.state not in _AT_REST or (self.state is ZnodeState.SYNCED and bool(self.needs))

    def child_path(self, child: str) -> str:
        return f"{self.path.rstrip('/')}/{child}"

    def reads(self) -> list[str]:
        """Children whose data must be read, in name order."""
        return sorted(child for child, need in self.needs.items() if need is Need.READ)

    def checks(self) -> list[str]:
        """Children whose version must be checked (their data watch set again), in name order."""
        return sorted(child for child, need in self.needs.items() if need is Need.VERIFY)

    def view(self) -> dict[str, ChildData] | None:
        """Every child's data if the znode is SYNCED and every child current; else None."""
        if self.state is not ZnodeState.SYNCED or self.needs:
            return None
        return {name: self.known[name].data for name in self.names}

    def take_owed(self) -> list[str]:
        """The upstream names owed the view that map to this path now; they are no longer owed."""
        owed = [name for name in self.upstreams if name in self.owed]
        self.owed.clear()
        return owed

    # ---- events ----------------------------------------------------------------------

    def invalidate(self) -> None:
        """The one recovery trigger: nothing about this znode's watches can be trusted any more."""
        self.state = ZnodeState.UNKNOWN
        self.verify_children()

    def watches_confirmed(self) -> bool:
        """The server kept every watch of this znode (SetWatches): UNKNOWN becomes SYNCED, no read.

        Events for what changed meanwhile arrive as children and data events.
        False (and nothing changes) unless the znode was UNKNOWN with a list known.
        """
        if self.state is not ZnodeState.UNKNOWN or not self.exists:
            return False
        for name in [name for name, need in self.needs.items() if need is Need.VERIFY]:
            del self.needs[name]
        self.state = ZnodeState.SYNCED
        return True

    def children_changed(self) -> None:
        """Its children watch fired: the list must be read again."""
        if self.state in (ZnodeState.SYNCED, ZnodeState.READING):
            self.state = ZnodeState.CHANGED

    def child_data_changed(self, child: str) -> None:
        """A child's data watch fired: read that child again."""
        if child in self.known and self.read_data:
            self.needs[child] = Need.READ

    def child_created(self, child: str) -> None:
        """A child appeared (a persistent watch says so): read it, no list needed (nor a read, names only)."""
        if self.gone.pop(child, None) is not None:
            # Deleted and created again before its deletion settled: it stays, with whatever data it has now.
            if self.read_data:
                self.needs[child] = Need.READ
            return
        if self.exists and child not in self.known and len(self.names) < self.max_children:
            self.known[child] = self._new_child()
            self.names = tuple(sorted((*self.names, child)))
            if self.read_data:
                self.needs[child] = Need.READ
            else:
                self._completed()

    def set_read_data(self, read_data: bool) -> None:
        """Whether child data is read from now on (a config reload changed ``child_data``).

        Turned on, every known child is read (what was known of it is its
        name only); turned off, nothing waits for a read any more.
        """
        if read_data == self.read_data:
            return
        self.read_data = read_data
        if read_data:
            for name in self.names:
                self.needs[name] = Need.READ
        else:
            for record in self.known.values():
                record.data, record.version = b"", None
            self.needs.clear()
            self._completed()

    def _new_child(self) -> _Child:
        record = _Child()
        if not self.read_data:
            record.data = b""
        return record

    def child_gone(self, child: str, number: int) -> None:
        """A persistent watch's event number ``number`` says ``child`` was deleted: it goes at the :meth:`settle` that covers it.

        The events of one transaction come one by one, and a transaction
        that removes several instances must never be served half-applied
        (the shrink guard would let a first half through): until every event
        of its transaction is known to be taken, the child is served as before.
        """
        if child in self.known:
            self.gone[child] = number

    def settle(self, upto: int) -> None:
        """Every event up to number ``upto``, and every other event of their transactions, was taken: drop what they deleted."""
        for child in [child for child, number in self.gone.items() if number <= upto]:
            self.child_deleted(child)  # forgets its mark too

    def child_deleted(self, child: str) -> None:
        """A child went (known to be): drop it, no list needed."""
        self.gone.pop(child, None)
        if self.known.pop(child, None) is not None:
            self.names = tuple(name for name in self.names if name != child)
            self.needs.pop(child, None)
            self._completed()

    def verify_children(self) -> None:
        """Nothing says whether a child's data moved (a persistent watch after a blip): check every version.

        ZooKeeper re-adds a persistent watch on a resumed session without
        comparing it against the zxid, so a data change made while the
        connection was down fires nothing. The state stays as it is: only
        the children are marked, and a snapshot waits for their checks.
        """
        if self.read_data:
            for name in self.names:
                self.needs.setdefault(name, Need.VERIFY)

    def listing_sent(self) -> None:
        self.state = ZnodeState.LISTING

    def listed(self, children: Iterable[str]) -> int:
        """Adopt a child list just read; returns how many children beyond ``max_children`` were left out."""
        listed = sorted(children)
        dropped = max(len(listed) - self.max_children, 0)
        if dropped:
            listed = listed[: self.max_children]
        current = set(listed)
        for gone in [name for name in self.known if name not in current]:
            del self.known[gone]
            self.needs.pop(gone, None)
        for name in listed:
            if name not in self.known:
                self.known[name] = self._new_child()
                if self.read_data:
                    self.needs[name] = Need.READ
        if len(self.known) < len(self.names) // 2:
            self.known = dict(self.known)  # a dict never shrinks in place: give the memory back
        self.names = tuple(listed)
        self.gone = {}  # the list came after every deletion event taken so far
        self.exists = True
        self.failures = 0
        self.over_cap = dropped
        self.state = ZnodeState.READING
        self._completed()
        return dropped

    def list_missing(self) -> bool:
        """The znode does not exist (a creation watch is set); True if that is news."""
        news = self.exists is not False
        self.exists = False
        self.names = ()
        self.known = {}
        self.needs = {}
        self.gone = {}
        self.failures = 0
        self.state = ZnodeState.ABSENT
        return news

    def list_failed(self) -> tuple[int, float]:
        """Its list could not be read for a reason of its own: (failure count, back-off before the retry)."""
        self.failures += 1
        self.state = ZnodeState.FAILED
        return self.failures, min(RETRY_MIN * 2 ** (self.failures - 1), RETRY_MAX)

    def retry_due(self, failures: int) -> bool:
        """The back-off of failure number ``failures`` ended; True if that starts a recovery."""
        if self.state is not ZnodeState.FAILED or self.failures != failures:
            return False  # recovered (or failed again) since
        self.invalidate()
        return True

    def data_read(self, child: str, data: ChildData, version: int | None) -> None:
        """The data of ``child`` as just read (``version`` None: not worth remembering, read it next time)."""
        record = self.known.get(child)
        if record is None:
            return  # dropped from the list meanwhile
        record.data = keepable(data)
        record.version = version
        self.needs.pop(child, None)
        self._completed()

    def verified(self, child: str, version: int | None) -> bool:
        """Whether ``child``'s data is still at ``version``; if so it counts as read again."""
        record = self.known.get(child)
        if record is None:
            return True  # dropped from the list meanwhile: nothing to read
        if version is None or record.version != version:
            self.needs[child] = Need.READ
            return False
        self.needs.pop(child, None)
        self._completed()
        return True

    def _completed(self) -> None:
        if self.state is ZnodeState.READING and not self.needs:
            self.state = ZnodeState.SYNCED
            self.owed.update(self.upstreams)
        elif self.state is ZnodeState.SYNCED and not self.needs:
            self.owed.update(self.upstreams)


class WatchBook:
    """Every watched znode of one cluster, by path."""

    def __init__(self, znodes: Iterable[ZnodeConfig]) -> None:
        self._by_path: dict[str, ZnodeWatch] = {}
        self.reconfigure(znodes)

    def reconfigure(self, znodes: Iterable[ZnodeConfig],
                    changed: Iterable[str] = ()) -> tuple[list[ZnodeWatch], list[ZnodeWatch]]:
        """Watch exactly ``znodes`` from now on; returns (added, removed) watches.

        A path watched before and after keeps its watch, with everything read
        so far, so an unchanged upstream costs nothing. A name new to a kept
        path, and every name in ``changed`` (its options changed), is owed
        that path's current view. Added watches start UNKNOWN.
        """
        changed = set(changed)
        by_path: dict[str, ZnodeWatch] = {}
        upstreams: dict[str, list[ZnodeConfig]] = {}
        for znode in znodes:
            upstreams.setdefault(znode.path, []).append(znode)
        added: list[ZnodeWatch] = []
        for path, configs in upstreams.items():
            watch = self._by_path.get(path)
            if watch is None:
                watch = ZnodeWatch(path)
                added.append(watch)
            names = [znode.upstream for znode in configs]
            watch.owed.update(name for name in names if name not in watch.upstreams or name in changed)
            watch.owed.intersection_update(names)
            watch.upstreams = names
            watch.max_children = max(max_children_of(znode) for znode in configs)
            watch.set_read_data(not all(znode.ignore_child_data for znode in configs))
            by_path[path] = watch
        removed = [watch for path, watch in self._by_path.items() if path not in by_path]
        self._by_path = by_path
        return added, removed

    def __iter__(self) -> Iterator[ZnodeWatch]:
        return iter(list(self._by_path.values()))

    def __len__(self) -> int:
        return len(self._by_path)

    def get(self, path: str) -> ZnodeWatch | None:
        return self._by_path.get(path)

    @property
    def upstreams(self) -> tuple[str, ...]:
        return tuple(name for watch in self._by_path.values() for name in watch.upstreams)

    def invalidate_all(self) -> None:
        for watch in self._by_path.values():
            watch.invalidate()


def max_children_of(znode: ZnodeConfig) -> int:
    return znode.max_children


def capped(view: Snapshot, limit: int) -> Snapshot:
    """``view`` cut to its first ``limit`` children (in name order)."""
    if len(view) <= limit:
        return view
    return {name: view[name] for name in list(view)[:limit]}
