"""The files output: one file per upstream, written atomically and durably.

An http upstream's file is ``<name>.upstream`` (``include DIR/*.upstream;``
inside ``http { }``); a TCP upstream's (``stream: true``) is ``<name>.stream``
(``include DIR/*.stream;`` inside ``stream { }``). Neither glob matches the
other's files; :func:`file_name` and :func:`parse_file_name` are the one
place that names them.

nginx ``include``s these files, so they are what survives a reload or a
restart. A file is replaced, never edited in place: write the new text into
a spare file in the same directory, fsync it, swap it with the target in one
step (``renameat2`` ``RENAME_EXCHANGE``; the old version becomes the spare),
fsync the directory. A reader (nginx, or a crash) sees the old file or the
new one, never half. Where the file system cannot swap, a new temporary file
is renamed over the target instead.
The files output fsyncs the directory once per batch, after the batch's last
rename and before it announces anything: one directory fsync makes every
rename before it durable, and it costs as much as a file's own fsync.

Guarantees:

* a rename that succeeded is a write that succeeded, even if the directory
  fsync after it fails (that is logged): the file holds the new state;
* a new file keeps the mode of the file it replaces;
* temporary files and spares never match ``*.upstream`` or ``*.stream``;
  leftovers of an earlier crash, and spares whose file is gone, are removed
  at start-up; a spare is written only if it is a regular file of the
  running user with one link (anything else there is replaced, never
  written through);
* every file written (or found already holding the state) is announced to the
  followers as a :class:`~reloader.outputs.base.FileWritten` event, all the
  events of a batch together once the whole batch is on disk; a file that
  cannot be written is announced to nobody and is retried, so dyups and reload
  are never ahead of the files.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from reloader.model import Upstream
from reloader.ownedfile import open_owned
from reloader.outputs.base import FileWritten, Output
from reloader.outputs.exchange import Unsupported, exchange
from reloader.outputs.guard_record import GuardRecord
from reloader.render import render_file
from reloader.threads import DaemonPool

log = logging.getLogger(__name__)

#: The file of an http upstream: ``<name>.upstream``.
SUFFIX = ".upstream"
#: The file of a TCP upstream (``stream: true``): ``<name>.stream``, which
#: ``include DIR/*.upstream;`` in ``http { }`` never picks up.
STREAM_SUFFIX = ".stream"
DEFAULT_MODE = 0o644
# Threads that fsync a batch's temporary files side by side (file systems
# commit concurrent fsyncs together), each taking its share of the batch in
# one task (a task per file cost more CPU than the fsyncs); a batch of one
# is fsynced inline.
FSYNC_THREADS = 4
# How many temporary files of a batch are open at once: well under the
# usual soft limit of 1,024 descriptors, whatever the number of upstreams.
STAGE_AT_ONCE = 128
# Back-off between retries of a failed write (a full disk must not flood the log).
RETRY_MIN = 1.0
RETRY_MAX = 10.0
_LEFTOVER = re.compile(r"\..+\.(?:upstream|stream)\..+\.tmp")
_SPARE = re.compile(r"\.(.+\.(?:upstream|stream))\.spare")


def spare_path(path: str) -> str:
    """The spare beside the file at ``path``: ``.<name>.upstream.spare``, holding a previous version.

    Each write fills the spare and exchanges it with the file (see
    :mod:`reloader.outputs.exchange`), so no write allocates or frees an
    inode. Hidden, and no ``*.upstream`` or ``*.stream`` glob matches it.
    """
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.spare")


def _open_spare(path: str) -> tuple[int, int, int] | None:
    """The spare at ``path`` opened for writing (at its start), its size and mode; None: use a new temporary file.

    None when it is missing, or is not a regular file of the running user
    with a single link (a link or a file planted there is never written
    through; the exchange that follows replaces its name only).
    """
    try:
        handle = open_owned(path, os.O_WRONLY)
    except OSError:
        return None
    try:
        info = os.fstat(handle)
        if info.st_nlink == 1:
            return handle, info.st_size, info.st_mode & 0o7777
    except OSError:
        pass
    os.close(handle)
    return None


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def file_name(upstream: str, stream: bool = False) -> str:
    """The name of ``upstream``'s file: ``<name>.upstream``, or ``<name>.stream`` for a TCP upstream."""
    return f"{upstream}{STREAM_SUFFIX if stream else SUFFIX}"


def parse_file_name(entry: str) -> tuple[str, bool] | None:
    """(upstream name, is a TCP upstream) of a file named by :func:`file_name`; None for any other entry.

    Hidden files (temporary files, the daemon's own records) are never upstream files.
    """
    if entry.startswith("."):
        return None
    for suffix, stream in ((SUFFIX, False), (STREAM_SUFFIX, True)):
        if entry.endswith(suffix) and len(entry) > len(suffix):
            return entry[: -len(suffix)], stream
    return None


@dataclass(frozen=True)
class StoredFile:
    """One upstream file found in the directory."""

    name: str
    stream: bool
    path: Path


def fsync_directory(directory: Path) -> None:
    """Make the renames done in ``directory`` durable; a failure is logged, never raised."""
    try:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
    except OSError as error:
        # The rename is done: readers see the new file. Only its durability
        # across a power cut is in doubt, which must not undo the write.
        log.warning("files: fsync of directory %s failed: %s", directory, error.strerror or error)


def atomic_write(path: Path, text: str, mode: int | None = None, sync_directory: bool = True) -> None:
    """Replace ``path`` with ``text`` atomically and durably.

    ``mode`` defaults to the mode of the file being replaced (0644 for a new one).
    Raises OSError only when the file was not replaced. With
    ``sync_directory=False`` the rename is not durable until the caller
    fsyncs the directory (see :func:`fsync_directory`).
    """
    directory = path.parent
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = DEFAULT_MODE
    # The temporary name does not end in ".upstream", so an
    # `include DIR/*.upstream;` can never pick up a half-written file.
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    if sync_directory:
        fsync_directory(directory)


def _read_with_mode(path: str) -> tuple[str | None, int]:
    """The text of the file at ``path`` (None if missing or unreadable) and the mode a replacement keeps."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, DEFAULT_MODE
    try:
        mode = os.fstat(handle).st_mode & 0o7777
        chunks = []
        while chunk := os.read(handle, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return None, DEFAULT_MODE
    finally:
        os.close(handle)
    try:
        return b"".join(chunks).decode("utf-8"), mode
    except UnicodeDecodeError:
        return None, mode


def _write_fully(handle: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(handle, view):]


def _fsync_handle(handle: int) -> OSError | None:
    """fsync an open file; the error instead of raising it (it runs on a pool)."""
    try:
        os.fsync(handle)
    except OSError as error:
        return error
    return None


def _fsync_handles(handles: list[int]) -> list[OSError | None]:
    return [_fsync_handle(handle) for handle in handles]


def _fsync_side_by_side(handles: list[int], pool: DaemonPool | None) -> list[OSError | None]:
    """fsync every handle (per handle, the error or None): on ``pool``, one task per thread, each a share."""
    shares = min(FSYNC_THREADS, len(handles)) if pool is not None else 1
    if shares <= 1:
        return _fsync_handles(handles)
    assert pool is not None
    futures = [pool.submit(_fsync_handles, handles[share::shares]) for share in range(shares)]
    synced: list[OSError | None] = [None] * len(handles)
    for share, future in enumerate(futures):
        synced[share::shares] = future.result()
    return synced


class FileStore:
    """The directory of upstream files, shared by the outputs that write there.

    Every write goes through one lock, so that a compare-and-replace (the
    reload output putting back a file that nginx refused) can never undo a
    newer state that the files output wrote meanwhile.

    ``stream`` names the TCP upstreams (``stream: true``): their files are
    ``<name>.stream``, every other upstream's ``<name>.upstream``. Every
    method that takes a name uses that name's file of its configured kind.
    """

    def __init__(self, directory: Path, stream: Iterable[str] = ()) -> None:
        self.directory = Path(directory)
        # Replaced whole (never changed in place): other threads read it without the lock.
        self._stream: frozenset[str] = frozenset(stream)
        self._lock = threading.Lock()
        # Temporary names of a batch: this process's pid and a serial number,
        # so no random name has to be made and tried (O_EXCL still guards).
        self._temporary_prefix = f".%s{SUFFIX}.{os.getpid()}-"
        self._serial = itertools.count()
        # Whether files are swapped with their spare (see _put); off for good
        # once the file system says it cannot.
        self._exchange = True

    def set_stream(self, names: Iterable[str]) -> None:
        """The TCP upstreams from now on (a config reload; an upstream's kind itself never changes while running)."""
        self._stream = frozenset(names)

    def is_stream(self, name: str) -> bool:
        return name in self._stream

    def path_for(self, name: str) -> Path:
        return self.directory / file_name(name, name in self._stream)

    def path_text(self, name: str) -> str:
        """``str(path_for(name))``, without building a Path (a batch needs several per file)."""
        return os.path.join(str(self.directory), file_name(name, name in self._stream))

    def prepare(self) -> None:
        """Create the directory if needed, remove leftover temporary files and spares of files gone.

        OSError names the directory when it cannot be created or listed.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(self.directory):
            spare_of = _SPARE.fullmatch(entry.name)
            orphan = spare_of is not None and not (self.directory / spare_of.group(1)).exists()
            if (orphan or _LEFTOVER.fullmatch(entry.name)) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    log.info("files: removed %s, left over from an earlier run", entry.path)
                except OSError as error:
                    log.warning("files: cannot remove leftover %s: %s", entry.path, error.strerror or error)

    def files(self) -> list[StoredFile]:
        """Every upstream file in the directory, of either kind, whatever the configuration says."""
        try:
            entries = os.listdir(self.directory)
        except OSError:
            return []
        found = []
        for entry in sorted(entries):
            parsed = parse_file_name(entry)
            if parsed is not None:
                found.append(StoredFile(parsed[0], parsed[1], self.directory / entry))
        return found

    def names(self) -> list[str]:
        """The upstream names whose file (of the kind :meth:`path_for` names) is in the directory."""
        return sorted(stored.name for stored in self.files() if stored.stream == self.is_stream(stored.name))

    def read(self, name: str) -> str | None:
        """The current text of ``name``'s file, or None if there is none."""
        try:
            return self.path_for(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _read_quietly(self, name: str) -> str | None:
        try:
            return self.read(name)
        except (OSError, UnicodeDecodeError):
            return None

    def write(self, name: str, text: str, sync_directory: bool = True) -> str | None:
        """Make ``name``'s file hold ``text``; returns the previous text. Raises OSError if not written.

        With ``sync_directory=False`` the caller owes a :meth:`sync` before it
        relies on the rename surviving a power cut.
        """
        with self._lock:
            previous = self._read_quietly(name)
            if previous != text:
                atomic_write(self.path_for(name), text, sync_directory=sync_directory)
            return previous

    def write_many(
        self, items: list[tuple[str, str]], pool: DaemonPool | None = None
    ) -> dict[str, str | None | OSError]:
        """Make each ``name``'s file hold its ``text``; per name, the previous text or the OSError.

        Like :meth:`write` for each item, but the temporary files of each
        chunk of STAGE_AT_ONCE items are all written first and fsynced
        together (on ``pool``, when given: concurrent fsyncs share the file
        system's journal commits), then renamed in order. The directory is not fsynced: the caller owes a
        :meth:`sync`. A file whose write failed keeps its old content.
        """
        results: dict[str, str | None | OSError] = {}
        with self._lock:
            for start in range(0, len(items), STAGE_AT_ONCE):
                self._write_chunk(items[start:start + STAGE_AT_ONCE], pool, results)
        return results

    def _write_chunk(self, items: list[tuple[str, str]], pool: DaemonPool | None,
                     results: dict[str, str | None | OSError]) -> None:
        """Stage, fsync and put in place one chunk of a batch (its staged files are open meanwhile)."""
        staged: list[tuple[str, str, str, int, bool]] = []  # name, path, staged file, open handle, is the spare
        try:
            for name, text in items:
                path = self.path_text(name)
                previous, mode = _read_with_mode(path)
                results[name] = previous
                if previous == text:
                    continue
                try:
                    staged_path, handle, spare = self._stage(name, path, text, mode)
                except OSError as error:
                    results[name] = error
                    continue
                staged.append((name, path, staged_path, handle, spare))
            synced = _fsync_side_by_side([handle for _, _, _, handle, _ in staged], pool)
        finally:
            for _, _, _, handle, _ in staged:
                os.close(handle)
        for (name, path, staged_path, _, spare), sync_error in zip(staged, synced):
            try:
                if sync_error is not None:
                    raise sync_error
                self._put(path, staged_path, spare)
            except OSError as failure:
                results[name] = failure
                if not spare:
                    try:
                        os.unlink(staged_path)
                    except FileNotFoundError:
                        pass

    def _stage(self, name: str, path: str, text: str, mode: int) -> tuple[str, int, bool]:
        """A file beside ``path`` holding ``text`` with ``mode`` (not fsynced): its path, open handle, is the spare.

        The spare (see :func:`spare_path`) when it can be reused, else a new
        temporary file. Neither name ends in ".upstream" or ".stream", so no
        ``include DIR/*.upstream;`` can ever pick up a half-written file.
        """
        data = text.encode("utf-8")
        if self._exchange:
            spare = spare_path(path)
            opened = _open_spare(spare)
            if opened is not None:
                handle, size, spare_mode = opened
                try:
                    # Over the old text, cut only where the new one is shorter:
                    # emptying the file first frees its block, and allocating
                    # it again costs the file system a journal entry.
                    _write_fully(handle, data)
                    if size > len(data):
                        os.ftruncate(handle, len(data))
                    if spare_mode != mode:
                        os.fchmod(handle, mode)
                except BaseException:
                    os.close(handle)
                    raise
                return spare, handle, True
        temporary = os.path.join(str(self.directory), f"{self._temporary_prefix % name}{next(self._serial)}.tmp")
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_fully(handle, data)
            os.fchmod(handle, mode)
        except BaseException:
            os.close(handle)
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        return temporary, handle, False

    def _put(self, path: str, staged: str, spare: bool) -> None:
        """Put the fsynced ``staged`` file at ``path``: exchanged with the old file, which becomes the spare.

        Without an old regular file (nothing there, or a link, a directory:
        what a rename does with those is kept), or where the file system
        cannot exchange, a plain rename (the old file, if any, is freed; see
        :mod:`reloader.outputs.exchange`). Raises OSError only when ``path``
        still holds the old file.
        """
        if self._exchange and _is_regular(path):
            try:
                exchange(staged, path)
            except Unsupported as error:
                self._exchange = False
                log.info("files: %s cannot swap files in place (%s); replacing them by rename",
                         self.directory, error.strerror or error)
            except FileNotFoundError:
                pass  # gone meanwhile: the rename below makes it, and its next write the spare
            else:
                if not spare:
                    # The temporary file now holds the old version: it is the spare from now on.
                    try:
                        os.rename(staged, spare_path(path))
                    except OSError:
                        _unlink_quietly(staged)
                return
        os.replace(staged, path)

    def sync(self) -> None:
        """fsync the directory: every rename done before it is durable (a failure is logged)."""
        fsync_directory(self.directory)

    def replace_if(self, name: str, expected: str | None, text: str | None) -> bool:
        """Put ``text`` (None: remove the file) only if the file still holds ``expected``; True if done."""
        with self._lock:
            if self._read_quietly(name) != expected:
                return False
            path = self.path_for(name)
            if text is None:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            else:
                atomic_write(path, text)
            return True

    def remove(self, name: str) -> bool:
        """Delete ``name``'s file; True if there was one."""
        return self.remove_file(self.path_for(name))

    def remove_file(self, path: Path) -> bool:
        """Delete one file of :meth:`files` (of whichever kind), and its spare; True if there was one."""
        with self._lock:
            _unlink_quietly(spare_path(str(path)))
            try:
                path.unlink()
                return True
            except FileNotFoundError:
                return False


# Called with the events of one batch, once every file of the batch is on disk.
Listener = Callable[[list[FileWritten]], None]


class FilesOutput(Output):
    """Writes rendered upstreams into a :class:`FileStore` and announces what it wrote."""

    name = "files"

    def __init__(
        self,
        store: FileStore | Path,
        listeners: Iterable[Listener] = (),
        render: Callable[[Upstream], str] = render_file,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store if isinstance(store, FileStore) else FileStore(Path(store))
        self._listeners = list(listeners)
        self._render = render
        self._failed: dict[str, Upstream] = {}
        self._announce: list[FileWritten] = []
        # A rename was done since the last directory fsync: end_batch owes one.
        self._unsynced = False
        # Made at the first batch of more than one file (see FSYNC_THREADS).
        self._pool: DaemonPool | None = None
        self._retry_interval = RETRY_MIN
        self._next_retry = 0.0
        self._clock = clock
        # What the shrink guard's reference owes, written before the files (see guard_record).
        self.guard_record = GuardRecord(self.store.directory, atomic_write)
        #: Files written, and writes that failed.
        self.writes = 0
        self.failures = 0

    @property
    def directory(self) -> Path:
        return self.store.directory

    def subscribe(self, listener: Listener) -> None:
        """Announce every file written to ``listener`` (call before the runner starts)."""
        self._listeners.append(listener)

    def set_listeners(self, listeners: Iterable[Listener]) -> None:
        """Replace the followers (on the output's thread: a config reload changed them)."""
        self._listeners = list(listeners)

    def set_render(self, render: Callable[[Upstream], str]) -> None:
        """Render files another way from now on (on the output's thread: Lua mode was turned on or off)."""
        self._render = render

    def path_for(self, name: str) -> Path:
        return self.store.path_for(name)

    def prepare(self) -> None:
        self.store.prepare()

    def read(self, name: str) -> str | None:
        return self.store.read(name)

    @property
    def pending(self) -> tuple[str, ...]:
        """Upstreams whose newest state is not on disk yet (a write failed)."""
        return tuple(self._failed)

    def stats(self) -> dict[str, int]:
        return {"writes": self.writes, "failures": self.failures, "retrying": len(self._failed)}

    def publish(self, upstream: Upstream) -> None:
        self.publish_many([upstream])

    def publish_many(self, upstreams: list[Upstream]) -> None:
        """Write a batch of upstreams: temporary files fsynced together, then renamed (see FileStore.write_many).

        Each file is written, or kept for a retry and held back from the
        followers, on its own; the announcement waits for :meth:`end_batch`.
        """
        try:
            self.guard_record.update(upstreams)
        except OSError as error:
            # The record must never be behind the files: what it would have said
            # is held back with them, and retried with them.
            held = set(self.guard_record.changes(upstreams))
            for upstream in upstreams:
                if upstream.name in held:
                    self._write_failed(upstream, self.guard_record.path, error)
            upstreams = [upstream for upstream in upstreams if upstream.name not in held]
        rendered = [(upstream, self._render(upstream)) for upstream in upstreams]
        if len(rendered) > 1 and self._pool is None:
            # Daemon threads: a hung fsync must not hold up the exit (see reloader.threads).
            self._pool = DaemonPool(FSYNC_THREADS, name="files-fsync")
        results = self.store.write_many([(upstream.name, text) for upstream, text in rendered], self._pool)
        for upstream, text in rendered:
            path = self.store.path_text(upstream.name)
            previous = results[upstream.name]
            if isinstance(previous, OSError):
                self._write_failed(upstream, path, previous)
                continue
            if self._failed.pop(upstream.name, None) is not None:
                log.warning("files: wrote %s after earlier failures", path, extra={"upstream": upstream.name})
            if previous != text:
                self.writes += 1
                self._unsynced = True
                # DEBUG: the pipeline's "upstream X: N servers" line already
                # says it at INFO, and a failure says so at ERROR; a second
                # INFO line per change only doubled the log of a burst.
                log.debug("files: wrote %s", path, extra={"upstream": upstream.name})
            self._announce.append(FileWritten(upstream, previous, text))

    def _write_failed(self, upstream: Upstream, path: Path | str, error: OSError) -> None:
        """``upstream``'s file (or the record it needs first, at ``path``) was not written: hold it back, retry."""
        self.failures += 1
        if upstream.name not in self._failed:
            log.error("files: cannot write %s: %s; holding %s back from the other outputs and retrying",
                      path, error.strerror or error, self.store.path_for(upstream.name).name,
                      extra={"upstream": upstream.name})
        self._failed[upstream.name] = upstream
        if self._next_retry <= self._clock():
            self._next_retry = self._clock() + self._retry_interval

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def end_batch(self) -> None:
        """Make the batch's renames durable (one directory fsync), then announce its files, all at once."""
        if self._unsynced:
            self._unsynced = False
            self.store.sync()
        events, self._announce = self._announce, []
        if events:
            for listener in self._listeners:
                listener(events)

    def tick(self, now: float) -> None:
        if not self._failed:
            self._retry_interval = RETRY_MIN
            return
        if now < self._next_retry:
            return
        self.publish_many(list(self._failed.values()))
        self.end_batch()
        if self._failed:
            self._retry_interval = min(self._retry_interval * 2, RETRY_MAX)
            self._next_retry = now + self._retry_interval
