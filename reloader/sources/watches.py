"""Watch bookkeeping for one cluster: per znode, what is known and what must be read again.

This module does no I/O. It records what the ZooKeeper source learned (the
child list a ``ChildrenWatch`` delivered, the data read for each child, which
children a data watch marked stale) and turns it into complete snapshots.

Guarantees:

* a snapshot is only ever made of data read after the child was last marked
  stale, so a published state is never older than the event that caused it;
* a child list delivered by an older generation of ``ChildrenWatch`` (one
  that belonged to a deleted and re-created znode) is ignored;
* several upstream names may watch one znode: :class:`WatchBook` keeps one
  :class:`ZnodeWatch` per path, and every name of that path gets the same
  snapshot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable

from reloader.config import ZnodeConfig
from reloader.snapshot import ChildData


@dataclass
class ZnodeWatch:
    """What the cluster thread knows about one watched znode."""

    path: str
    upstreams: list[str] = field(default_factory=list)
    generation: int = 0
    present: bool = False
    children: tuple[str, ...] | None = None
    data: dict[str, ChildData] = field(default_factory=dict)
    stale_children: set[str] = field(default_factory=set)
    dirty: bool = False
    # The newest child list delivered by the ChildrenWatch (on kazoo's thread),
    # waiting for the cluster thread.
    mailbox: tuple[int, list[str]] | None = None
    mailbox_lock: threading.Lock = field(default_factory=threading.Lock)
    # Consecutive failures to arm the ChildrenWatch for a reason other than the
    # session (an ACL on the znode itself, say): drives the re-arm back-off.
    arm_failures: int = 0

    def deliver(self, generation: int, children: list[str]) -> None:
        """Post a child list from the ChildrenWatch (any thread)."""
        with self.mailbox_lock:
            self.mailbox = (generation, children)

    def take_children(self) -> bool:
        """Adopt the newest delivered child list of the current generation; True if one was taken."""
        with self.mailbox_lock:
            delivered, self.mailbox = self.mailbox, None
        if delivered is None or delivered[0] != self.generation:
            return False
        children = tuple(sorted(delivered[1]))
        previous = set(self.children or ())
        self.children = children
        current = set(children)
        for gone in previous - current:
            self.data.pop(gone, None)
            self.stale_children.discard(gone)
        self.stale_children.update(current - previous)
        self.dirty = True
        return True

    def mark_child_stale(self, child: str) -> None:
        if self.children is not None and child in self.children:
            self.stale_children.add(child)
            self.dirty = True

    def forget_data(self) -> None:
        """Before a full re-read: every known child must be read again."""
        self.stale_children = set(self.children or ())
        self.data.clear()
        self.dirty = True

    def stale_paths(self) -> list[tuple[str, str]]:
        """(child, full path) for every child whose data must be read."""
        if self.children is None:
            return []
        return [(child, f"{self.path.rstrip('/')}/{child}") for child in sorted(self.stale_children)]

    def record(self, child: str, data: ChildData) -> None:
        self.data[child] = data
        self.stale_children.discard(child)

    def snapshot(self) -> dict[str, ChildData] | None:
        """The complete view if the znode changed since the last one and every child is read; else None."""
        if not self.dirty or self.children is None or self.stale_children:
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

    def __iter__(self):  # type: ignore[no-untyped-def]
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
