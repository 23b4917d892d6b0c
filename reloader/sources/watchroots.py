"""Shared persistent watches: which watch covers which znode, and which znodes an event concerns.

By default each watched znode has a persistent recursive watch of its own,
which ZooKeeper 3.8 files in both its data and its child watch tables (two
entries in ``mntr``'s zk_watch_count). A cluster's ``watch_roots`` name
ancestors whose one watch covers every configured znode under them instead:
1,000 services under ``/services`` cost the server one recursive watch, not
1,000. This module does no I/O; :mod:`reloader.sources.zookeeper` asks it.

Guarantees
----------

* **One cover per znode.** :meth:`WatchPlan.cover` is the configured root
  that is the znode's path or one of its ancestors (roots never nest, the
  config refuses it), unless that root was refused (:meth:`WatchPlan.refuse`:
  the daemon may not read it); otherwise the znode's own path. A znode
  outside every root keeps a watch of its own.
* **A root is watched only while it covers something.** :meth:`WatchPlan.needed`
  is the set of covers of the znodes configured now: a root with no
  configured znode under it is not watched, and the last znode removed from
  under it takes its watch away.
* **An event goes only where it belongs.** :func:`targets` names the watched
  znode the event's path *is* (the znode itself was created or deleted) and
  the one it is a direct *child* of (an instance came, went or changed);
  both when configured znodes nest. Anything else a shared watch reports (an
  unconfigured sibling, a grandchild of a service znode, the root itself)
  concerns no znode and is discarded.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable


class WatchPlan:
    """The configured roots of one cluster, and those refused in this session."""

    def __init__(self, roots: Iterable[str] = ()) -> None:
        # Both replaced whole, never changed in place: status reads them from other threads.
        self.roots: frozenset[str] = frozenset(roots)
        self.refused: frozenset[str] = frozenset()

    def reconfigure(self, roots: Iterable[str]) -> None:
        """Roots from a reloaded config; a refusal lasts while its root stays configured (and the session lasts)."""
        self.roots = frozenset(roots)
        self.refused = self.refused & self.roots

    def root_of(self, path: str) -> str | None:
        """The configured root that is ``path`` or one of its ancestors (refused or not), or None."""
        if not self.roots:
            return None
        ancestor = path
        while True:
            if ancestor in self.roots:
                return ancestor
            if ancestor in ("/", ""):
                return None
            ancestor = posixpath.dirname(ancestor)

    def cover(self, path: str) -> str:
        """The path whose persistent watch covers the znode at ``path``."""
        root = self.root_of(path)
        return root if root is not None and root not in self.refused else path

    def refuse(self, root: str) -> None:
        """The daemon may not use ``root`` (it cannot read it): its znodes keep watches of their own."""
        self.refused = self.refused | {root}

    def forget_refusals(self) -> None:
        """A new session: every root is tried again."""
        self.refused = frozenset()

    def needed(self, paths: Iterable[str]) -> set[str]:
        """The persistent watches the znodes at ``paths`` need."""
        return {self.cover(path) for path in paths}

    def unused(self, paths: Iterable[str]) -> list[str]:
        """The configured roots that cover none of ``paths`` (sorted)."""
        used = {self.root_of(path) for path in paths}
        return sorted(self.roots - used)


def targets(path: str, watched: Callable[[str], bool]) -> tuple[str | None, str | None]:
    """The watched znodes an event on ``path`` concerns: (the znode it is, the znode it is a child of).

    ``watched(path)`` says whether a znode is watched under a persistent
    watch now; either part is None when it names no such znode.
    """
    itself = path if watched(path) else None
    parent = posixpath.dirname(path) if path not in ("/", "") else None
    return itself, parent if parent is not None and watched(parent) else None
