"""Watch bookkeeping for one cluster: per znode, what is known and what must be read again.

This module does no I/O. It records what the ZooKeeper source learned (the
child list of each znode, the data and data version read for each child,
which lists and children a watch marked stale) and turns it into complete
snapshots.

Guarantees:

* a snapshot is only ever made of data read, or verified unchanged by its
  version, after the child was last marked stale, so a published state is
  never older than the event that caused it;
* no snapshot is made while the znode's child list is known to be stale;
* several upstream names may watch one znode: :class:`WatchBook` keeps one
  :class:`ZnodeWatch` per path, and every name of that path gets the same
  snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from reloader.config import ZnodeConfig
from reloader.snapshot import ChildData


@dataclass
class ZnodeWatch:
    """What the cluster thread knows about one watched znode."""

    path: str
    upstreams: list[str] = field(default_factory=list)
    present: bool = False
    # Set once the znode's absence has been logged, so it is said once per disappearance.
    absence_reported: bool = False
    children: tuple[str, ...] | None = None
    data: dict[str, ChildData] = field(default_factory=dict)
    # The ZooKeeper data version (mzxid) each child's data was read at: after a
    # reconnect a child whose version is unchanged is not read again.
    versions: dict[str, int] = field(default_factory=dict)
    # Children whose data must be read.
    stale_children: set[str] = field(default_factory=set)
    # Children whose data watch must be set again (after a reconnect); their
    # data is read again only if their version changed.
    unverified_children: set[str] = field(default_factory=set)
    # The child list must be read again (a children watch fired).
    list_stale: bool = False
    dirty: bool = False
    # Consecutive failures to read the child list for a reason other than the
    # session (an ACL on the znode itself, say): drives the re-arm back-off.
    arm_failures: int = 0
    rearm_pending: bool = False

    def set_children(self, children: Iterable[str], verify_kept: bool = False) -> None:
        """Adopt a child list just read; new children get read, and with ``verify_kept`` the kept ones checked."""
        listed = tuple(sorted(children))
        previous = set(self.children or ())
        current = set(listed)
        self.children = listed
        self.list_stale = False
        for gone in previous - current:
            self.data.pop(gone, None)
            self.versions.pop(gone, None)
            self.stale_children.discard(gone)
            self.unverified_children.discard(gone)
        self.stale_children.update(current - previous)
        if verify_kept:
            self.unverified_children.update((current & previous) - self.stale_children)
        self.dirty = True

    def mark_absent(self) -> None:
        """The znode does not exist: nothing can be published for it until it comes back."""
        self.present = False
        self.children = None
        self.list_stale = False
        self.data.clear()
        self.versions.clear()
        self.stale_children.clear()
        self.unverified_children.clear()

    def mark_list_stale(self) -> None:
        if self.present:
            self.list_stale = True
            self.dirty = True

    def mark_child_stale(self, child: str) -> None:
        if self.children is not None and child in self.children:
            self.stale_children.add(child)
            self.unverified_children.discard(child)
            self.dirty = True

    def _paths(self, children: Iterable[str]) -> list[tuple[str, str]]:
        base = self.path.rstrip("/")
        return [(child, f"{base}/{child}") for child in sorted(children)]

    def stale_paths(self) -> list[tuple[str, str]]:
        """(child, full path) for every child whose data must be read."""
        return self._paths(self.stale_children) if self.children is not None else []

    def unverified_paths(self) -> list[tuple[str, str]]:
        """(child, full path) for every child whose version must be checked (and its data watch set)."""
        return self._paths(self.unverified_children) if self.children is not None else []

    def record(self, child: str, data: ChildData, version: int | None) -> None:
        """The data of ``child`` as just read (``version`` None: not worth remembering, read it next time)."""
        if self.children is None or child not in self.children:
            return  # dropped from the list meanwhile
        self.data[child] = data
        if version is None:
            self.versions.pop(child, None)
        else:
            self.versions[child] = version
        self.stale_children.discard(child)
        self.unverified_children.discard(child)

    def verify(self, child: str, version: int) -> bool:
        """Whether ``child``'s data is still at ``version``; if so it counts as read again."""
        if self.versions.get(child) != version or child not in self.data:
            return False
        self.unverified_children.discard(child)
        return True

    def snapshot(self) -> dict[str, ChildData] | None:
        """The complete view if the znode changed since the last one and every child is read; else None."""
        if (not self.dirty or self.children is None or self.list_stale
                or self.stale_children or self.unverified_children):
            return None
        self.dirty = False
        return {child: self.data.get(child) for child in self.children}


class WatchBook:
    """Every watched znode of one cluster, by path."""

    def __init__(self, znodes: Iterable[ZnodeConfig]) -> None:
        self._by_path: dict[str, ZnodeWatch] = {}
        for znode in znodes:
            watch = self._by_path.setdefault(znode.path, ZnodeWatch(znode.path))
            watch.upstreams.append(znode.upstream)

    def reconfigure(self, znodes: Iterable[ZnodeConfig]) -> tuple[list[ZnodeWatch], list[ZnodeWatch]]:
        """Watch exactly ``znodes`` from now on; returns (added, removed) watches.

        A path watched before and after keeps its watch, with everything read
        so far, so an unchanged upstream costs nothing.
        """
        by_path: dict[str, ZnodeWatch] = {}
        added: list[ZnodeWatch] = []
        for znode in znodes:
            watch = by_path.get(znode.path)
            if watch is None:
                watch = self._by_path.get(znode.path)
                if watch is None:
                    watch = ZnodeWatch(znode.path)
                    added.append(watch)
                watch.upstreams = []
                by_path[znode.path] = watch
            watch.upstreams.append(znode.upstream)
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

    def dirty(self) -> list[ZnodeWatch]:
        return [watch for watch in self._by_path.values() if watch.dirty]
