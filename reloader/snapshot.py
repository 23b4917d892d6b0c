"""What a source hands the pipeline: one complete view of a znode's children.

A snapshot maps every current child name to its data. Data is ``None`` when
the child vanished between the listing and the read (the next listing will
drop it), and :class:`Unreadable` when ZooKeeper refused to give it (an ACL
the daemon's credentials do not satisfy, say): such a child is skipped with
one warning, and its siblings are served as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union


@dataclass(frozen=True)
class Unreadable:
    """A child whose data ZooKeeper would not return, and why."""

    reason: str


ChildData = Union[bytes, None, Unreadable]
Snapshot = Mapping[str, ChildData]
