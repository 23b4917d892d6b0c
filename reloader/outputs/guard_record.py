"""The shrink guard's record beside the files: what each upstream's reference still owes.

The shrink guard (:mod:`reloader.publication`) holds a drop against the most
usable servers served within ``drop_hold``; each published upstream carries
the part of that reference its own servers do not show
(:attr:`reloader.model.Upstream.owed`). This record keeps it across a
restart, in ``.reloader-guards.json`` in the files directory.

Guarantees:

* **Never behind the files.** The files output writes the record, atomically
  and durably (file and directory fsynced), *before* it writes the upstream
  files of the same batch; if the record cannot be written, the upstreams
  whose entry changed are held back with the files (and retried with them).
  A crash between the two leaves a record ahead of the files, which only
  makes the restarted guard hold more, never less.
* **Quiet in steady state.** It is written only when an entry of an upstream
  being written changes: an upstream with no drop within ``drop_hold`` owes
  nothing and costs no write. Entries are wall-clock times, so a record
  needs no rewrite as they expire; expired entries are dropped at the next
  write and ignored when read.
* **Bad input is no input.** A missing record is an empty one; an unreadable
  or malformed one is ignored with one warning naming the file and what is
  wrong (the guard then starts from the files alone, as without a record).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from reloader.model import Upstream

log = logging.getLogger(__name__)

RECORD_NAME = ".reloader-guards.json"
# No upstream owes more entries than this (each is a distinct, larger count served
# within drop_hold); a record that claims more is not the daemon's own.
MAX_ENTRIES = 4096

Owed = tuple[tuple[float, int], ...]


class GuardRecordError(ValueError):
    """A record that is not what the daemon writes; the message says what is wrong."""


def _entries(name: object, value: object) -> Owed:
    if not isinstance(name, str) or not name:
        raise GuardRecordError(f"bad upstream name {name!r}")
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise GuardRecordError(f"upstream {name}: expected a list of [until, count] pairs")
    entries = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool)
                or not isinstance(item[0], (int, float)) or not math.isfinite(item[0])
                or isinstance(item[1], bool) or not isinstance(item[1], int) or item[1] < 0):
            raise GuardRecordError(f"upstream {name}: bad entry {item!r}")
        entries.append((float(item[0]), item[1]))
    return tuple(entries)


def parse_record(text: str) -> dict[str, Owed]:
    """The entries of a record's text; GuardRecordError says what is wrong."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise GuardRecordError(f"not JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("upstreams"), dict):
        raise GuardRecordError('expected {"upstreams": {...}}')
    return {name: _entries(name, value) for name, value in document["upstreams"].items()}


def _unexpired(entries: dict[str, Owed], now: float) -> dict[str, Owed]:
    kept = {name: tuple(entry for entry in owed if entry[0] > now) for name, owed in entries.items()}
    return {name: owed for name, owed in kept.items() if owed}


def read_owed(directory: Path, wall: Callable[[], float] = time.time) -> dict[str, Owed]:
    """Per upstream, what the record in ``directory`` says its reference owes (expired entries left out).

    Any thread: the record is only ever replaced whole. A missing record is
    empty; a bad one is ignored with a warning naming it.
    """
    path = Path(directory) / RECORD_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        log.warning("files: cannot read the guard record %s: %s; the shrink guard starts from the files alone",
                    path, getattr(error, "strerror", None) or error)
        return {}
    try:
        entries = parse_record(text)
    except GuardRecordError as error:
        log.warning("files: ignoring the guard record %s: %s; the shrink guard starts from the files alone",
                    path, error)
        return {}
    return _unexpired(entries, wall())


class GuardRecord:
    """The record file of one files directory, with what it holds kept in memory (one thread: the files output's)."""

    def __init__(self, directory: Path, write: Callable[[Path, str], None],
                 wall: Callable[[], float] = time.time) -> None:
        self.path = Path(directory) / RECORD_NAME
        # The files output's atomic, durable write (file and directory fsynced).
        self._write = write
        self._wall = wall
        self._entries: dict[str, Owed] | None = None
        #: Times the record was written.
        self.writes = 0

    def load(self) -> dict[str, Owed]:
        """What the record on disk says, entries that already expired left out."""
        self._entries = read_owed(self.path.parent, self._wall)
        return dict(self._entries)

    def _current(self, entries: dict[str, Owed]) -> dict[str, Owed]:
        return _unexpired(entries, self._wall())

    def changes(self, upstreams: Iterable[Upstream]) -> list[str]:
        """The names among ``upstreams`` whose entry would change (nothing is written)."""
        upstreams = list(upstreams)
        old = self._current(self._entries if self._entries is not None else self.load())
        new = self._current({upstream.name: upstream.owed for upstream in upstreams})
        return [name for name in {*new, *(u.name for u in upstreams if u.name in old)}
                if old.get(name) != new.get(name)]

    def update(self, upstreams: Iterable[Upstream]) -> list[str]:
        """Record ``upstreams``' entries, durably, if any changed; the names that changed.

        Raises OSError when the record could not be written (nothing changed then).
        """
        upstreams = list(upstreams)
        changed = self.changes(upstreams)
        if not changed:
            return []
        assert self._entries is not None
        by_name = {upstream.name: upstream.owed for upstream in upstreams}
        entries = self._current({**self._entries, **{name: by_name[name] for name in changed}})
        text = json.dumps({"upstreams": {name: [list(entry) for entry in owed]
                                         for name, owed in sorted(entries.items())}}, sort_keys=True)
        self._write(self.path, text + "\n")
        self._entries = entries
        self.writes += 1
        return changed
