"""What a source hands the pipeline: one complete view of a znode's children.

A snapshot maps every current child name to its data. Data is ``None`` when
the child vanished between the listing and the read (the next listing will
drop it), and :class:`Unreadable` when ZooKeeper refused to give it (an ACL
the daemon's credentials do not satisfy, say): such a child is skipped with
one warning, and its siblings are served as usual.

Data larger than :data:`MAX_KEPT_DATA` is never kept whole: no format parses
more than that (formats skip it as too large, or ignore the data and read
the child's name), so :func:`keepable` puts :data:`OVERSIZED` in its place,
one shared object of just over the limit that every format treats exactly
as it treats any oversized data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

#: The most child data that is kept as it is; the formats' own limit (MAX_DATA_BYTES).
MAX_KEPT_DATA = 64 * 1024
#: What stands in for any child data over MAX_KEPT_DATA.
OVERSIZED = bytes(MAX_KEPT_DATA + 1)


@dataclass(frozen=True)
class Unreadable:
    """A child whose data ZooKeeper would not return, and why."""

    reason: str


ChildData = Union[bytes, None, Unreadable]
Snapshot = Mapping[str, ChildData]


def is_oversized(data: object) -> bool:
    return isinstance(data, (bytes, bytearray)) and len(data) > MAX_KEPT_DATA


def keepable(data: ChildData) -> ChildData:
    """``data`` as it may be kept: oversized data becomes the shared :data:`OVERSIZED`."""
    return OVERSIZED if is_oversized(data) else data
