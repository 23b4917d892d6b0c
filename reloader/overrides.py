"""Operator overrides: servers drained by hand, kept on disk beside the upstream files.

``nginx-upstream-reloader drain UPSTREAM HOST:PORT [--for DURATION]`` takes
one server out of traffic without touching the registry; ``undrain`` puts it
back. A drained server is rendered ``down`` in every output.

Guarantees:

* **On disk, beside the files.** The drains live in one JSON file,
  :data:`OVERRIDES_NAME`, in the files directory. It does not match
  ``*.upstream``, so nginx never includes it and the files output never
  takes it for an upstream. It is replaced atomically (a temporary file in
  the same directory, fsync, rename), so a reader sees the old or the new
  set, never half of one; concurrent ``drain`` commands are serialised by a
  lock on the directory, so none is lost. Only a user who may create files
  in the directory can change it: the rename needs that right.
* **Survives restarts.** Expiry times are wall-clock times, so a drain with
  ``--for`` ends when it said it would, across restarts of the daemon, of
  nginx and of the host. A drained server is ``down`` in its file, so an
  nginx that restarts before the daemon does keeps it out of traffic.
* **Never a drop.** A drain is applied after the guards have decided (see
  :func:`reloader.assemble.finalize_upstream`): the guards compare the
  registry's servers, and a drained server still counts as published and
  live for them. Undraining publishes it back at once. While the cluster is
  frozen (or not read yet) a change of drains is applied to the servers last
  published (or adopted from the file): it is the operator's, not the
  registry's.
* **Never the last server.** A drain that would leave an upstream with no
  server in traffic is not applied (with a warning), because a publish may
  never collapse an upstream, whatever asks for it.
* **Bad content is contained.** A file that is too large, not JSON, or has
  malformed entries is reported with the reason; malformed entries are
  skipped, the rest applies; a file that cannot be read at all keeps the
  last good set in force.

The daemon's main thread polls the file (:class:`OverrideWatcher`, a
``stat`` per tick) and hands each changed upstream to its cluster thread,
which re-decides it at once: the daemon needs no listener for it, and a
request that reaches the status port can never change it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reloader.addresses import InvalidAddress, split_hostport

log = logging.getLogger(__name__)

#: The file's name in the files directory (hidden, and not ``*.upstream``).
OVERRIDES_NAME = ".nginx-upstream-reloader.overrides.json"
# Beyond this the file is not read: no operator drains that many servers.
MAX_BYTES = 1 << 20
VERSION = 1

Endpoint = tuple[str, int]
#: Per upstream, per drained endpoint: when the drain ends (wall clock), or None for never.
Drains = dict[str, dict[Endpoint, float | None]]


class OverrideError(ValueError):
    """The overrides file cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class Drain:
    """One drained server."""

    upstream: str
    server: Endpoint
    since: float
    until: float | None

    @property
    def address(self) -> str:
        return format_endpoint(self.server)


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """``HOST:PORT`` (``[v6]:PORT``) as the model stores it; ValueError otherwise."""
    try:
        return split_hostport(text.strip())
    except InvalidAddress as error:
        raise ValueError(str(error)) from None


class OverrideStore:
    """The overrides file of one files directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / OVERRIDES_NAME

    # ---- reading ---------------------------------------------------------------

    def signature(self) -> tuple[int, int, int] | None:
        """What changes whenever the file is replaced (inode, size, mtime); None when absent."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def load(self) -> tuple[list[Drain], list[str]]:
        """Every drain in the file and the problems of the entries that were skipped.

        An absent file is no drains. Raises :class:`OverrideError` when the
        file as a whole cannot be used.
        """
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return [], []
        except OSError as error:
            raise OverrideError(f"{self.path}: cannot read: {error.strerror or error}") from None
        if len(raw) > MAX_BYTES:
            raise OverrideError(f"{self.path}: larger than {MAX_BYTES} bytes")
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise OverrideError(f"{self.path}: not valid JSON ({error})") from None
        if not isinstance(document, dict) or not isinstance(document.get("drains", {}), dict):
            raise OverrideError(f"{self.path}: expected an object with a \"drains\" object")
        drains: list[Drain] = []
        problems: list[str] = []
        for upstream, servers in document.get("drains", {}).items():
            if not isinstance(servers, dict):
                problems.append(f"upstream {upstream[:80]!r}: expected an object of servers")
                continue
            for address, entry in servers.items():
                try:
                    drains.append(_drain_from(upstream, address, entry))
                except (ValueError, TypeError) as error:
                    problems.append(f"upstream {upstream[:80]!r} server {str(address)[:80]!r}: {error}")
        return drains, problems

    # ---- changing ----------------------------------------------------------------

    def drain(self, upstream: str, server: Endpoint, duration: float | None,
              now: Callable[[], float] = time.time) -> Drain:
        """Drain ``server`` of ``upstream`` (for ``duration`` seconds, or until undrained)."""
        if duration is not None and (not math.isfinite(duration) or duration <= 0):
            raise ValueError("--for must be a positive duration")
        with self._locked():
            drains, _ = self.load()
            started = now()
            entry = Drain(upstream, server, started, None if duration is None else started + duration)
            kept = [d for d in drains if (d.upstream, d.server) != (upstream, server)]
            self._write([*kept, entry], started)
        return entry

    def undrain(self, upstream: str, server: Endpoint, now: Callable[[], float] = time.time) -> bool:
        """Put ``server`` of ``upstream`` back in traffic; False if it was not drained."""
        with self._locked():
            drains, _ = self.load()
            kept = [d for d in drains if (d.upstream, d.server) != (upstream, server)]
            found = len(kept) != len(drains)
            if found:
                self._write(kept, now())
        return found

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock on the directory itself: no lock file to leave behind, and a
        # second drain waits for the first instead of overwriting it.
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, drains: list[Drain], now: float) -> None:
        document: dict[str, object] = {"version": VERSION, "drains": {}}
        table: dict[str, dict[str, dict[str, float | None]]] = {}
        for drain in sorted(drains, key=lambda d: (d.upstream, d.server)):
            if drain.until is not None and drain.until <= now:
                continue  # expired: the file need not keep it
            table.setdefault(drain.upstream, {})[drain.address] = {"since": drain.since, "until": drain.until}
        document["drains"] = table
        data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
        fd, temporary = tempfile.mkstemp(prefix=".overrides.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        try:
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError:
            pass  # the rename is done; a lost fsync of the directory only risks a crash's worth


def _drain_from(upstream: object, address: object, entry: object) -> Drain:
    if not isinstance(upstream, str) or not upstream:
        raise ValueError("the upstream name must be a non-empty string")
    if not isinstance(address, str):
        raise ValueError("the server must be HOST:PORT")
    server = parse_endpoint(address)
    if not isinstance(entry, dict):
        raise ValueError("expected {\"since\": ..., \"until\": ...}")
    since, until = entry.get("since", 0.0), entry.get("until")
    for value in (since, until):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"{value!r} is not a time")
    return Drain(upstream, server, float(since or 0.0), None if until is None else float(until))


def active_drains(drains: list[Drain], now: float) -> Drains:
    """The drains in force at ``now``, per upstream."""
    table: Drains = {}
    for drain in drains:
        if drain.until is None or drain.until > now:
            table.setdefault(drain.upstream, {})[drain.server] = drain.until
    return table


class OverrideWatcher:
    """Notices changes of the overrides file and expiries; for one thread (the daemon's main thread)."""

    def __init__(self, directory: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.store = OverrideStore(directory)
        self._clock = clock
        self._signature: tuple[int, int, int] | None | bool = False  # False: never looked
        self._drains: list[Drain] = []
        self._active: Drains = {}
        #: The last problem with the file (None while it is fine), for status.
        self.problem: str | None = None

    def poll(self) -> Drains | None:
        """The drains in force now when they differ from the last call's, else None."""
        signature = self.store.signature()
        if signature != self._signature:
            self._signature = signature
            self._reload()
        active = active_drains(self._drains, self._clock())
        if active == self._active:
            return None
        self._active = active
        return active

    @property
    def active(self) -> Drains:
        return self._active

    def _reload(self) -> None:
        try:
            drains, problems = self.store.load()
        except OverrideError as error:
            if str(error) != self.problem:
                log.error("overrides: %s; the drains in force stay as they were", error)
            self.problem = str(error)
            return
        for problem in problems:
            log.error("overrides: %s: skipped: %s", self.store.path, problem)
        self.problem = "; ".join(problems) or None
        self._drains = drains
        log.info("overrides: %d servers drained by hand (%s)", len(drains), self.store.path)


def drained_view(drains: Mapping[Endpoint, float | None], now: float) -> list[dict[str, object]]:
    """Drains as status shows them: the server and the seconds left (None: until undrained)."""
    return [
        {"server": format_endpoint(endpoint), "seconds_left": None if until is None else round(until - now, 1)}
        for endpoint, until in sorted(drains.items())
    ]
