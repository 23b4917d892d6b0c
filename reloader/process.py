"""Process-level guards for ``run``: pid-file locks and detaching into the background.

Guarantees:

* the pid file, the lock file and the log file are opened without
  following a symbolic link, and only when they are regular files owned by
  the running user (:mod:`reloader.ownedfile`); otherwise the start fails
  naming the path.
* ``PidLock`` is an exclusive ``fcntl.flock`` on a file that holds the
  holder's pid. The kernel drops the lock when the process dies, however it
  dies, so a stale file never blocks a restart. A second process fails at
  once with ``LockHeld`` naming the pid that holds it.
* Acquiring re-checks that the locked file is still the one at the path, so
  a holder removing its file on exit cannot let two processes both "hold" it.
* ``directory_lock`` makes one daemon per ``files_output_path``: its file is
  a dot-file not ending in ``.upstream``, so ``include DIR/*.upstream;``
  never reads it.
* ``detach`` uses python-daemon's ``DaemonContext`` (double fork, new
  session, standard streams to /dev/null or the log file). Locks and the
  log file opened before it stay open and held across it, so every error up
  to that point is still reported in the foreground. Call it before any
  thread or ZooKeeper client exists: a fork keeps only the calling thread.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import daemon

from reloader.logsetup import LOG_FILE_MODE
from reloader.ownedfile import open_owned

log = logging.getLogger(__name__)

DIRECTORY_LOCK_NAME = ".nginx-upstream-reloader.lock"
# How long a loser waits for the winner to write its pid into the file
# (the lock and the write are two steps).
PID_READ_WAIT = 0.5


class LockHeld(Exception):
    """Another live process holds the lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"{path} is locked by {holder}")
        self.path = path
        self.pid = pid


class PidLock:
    """An exclusive flock on ``path``, which holds the holder's pid."""

    def __init__(self, path: str | Path, remove_on_release: bool = True) -> None:
        self.path = Path(path).absolute()
        self.remove_on_release = remove_on_release
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def fileno(self) -> int:
        assert self._file is not None, "not acquired"
        return self._file.fileno()

    def acquire(self) -> None:
        """Take the lock and write our pid; raise LockHeld, or OSError when the file is unusable."""
        if self._file is not None:
            return
        while True:
            # Not O_TRUNC: the file may be someone else's until the lock is ours.
            # Never through a link, and only our own regular file (see ownedfile).
            fd = open_owned(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            handle = os.fdopen(fd, "r+", encoding="ascii")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                handle.close()
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LockHeld(self.path, self._read_holder()) from None
                raise
            if self._same_file(handle):
                break
            # The holder removed the file between our open and our lock: we
            # locked an orphaned inode. Try again on whatever is there now.
            handle.close()
        self._file = handle
        self.write_pid()

    def write_pid(self, pid: int | None = None) -> None:
        """Record ``pid`` (default: ours) in the held file; called again after detaching."""
        assert self._file is not None, "not acquired"
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid() if pid is None else pid}\n")
        self._file.flush()

    def release(self) -> None:
        """Remove the file (if asked to) and drop the lock; safe to call twice."""
        if self._file is None:
            return
        if self.remove_on_release and self._same_file(self._file):
            try:
                # Unlink while still holding the lock: see acquire's same-file check.
                self.path.unlink()
            except OSError as error:
                log.debug("cannot remove %s: %s", self.path, error)
        self._file.close()  # closing drops the flock
        self._file = None

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def _same_file(self, handle: IO[str]) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(handle.fileno())
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def _read_holder(self) -> int | None:
        deadline = time.monotonic() + PID_READ_WAIT
        while True:
            try:
                text = self.path.read_text(encoding="ascii", errors="replace").strip()
            except OSError:
                text = ""
            if text.isdigit():
                return int(text)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)  # the holder has the lock but has not written its pid yet


def directory_lock(directory: str | Path) -> PidLock:
    """The lock that allows one daemon per files directory (creates the directory if needed)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    # Kept on release: the directory may be shared with nginx, and an
    # operator may watch the file; it only ever holds the last holder's pid.
    return PidLock(path / DIRECTORY_LOCK_NAME, remove_on_release=False)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def detach(keep_open: Iterable[int], log_file: Path | None) -> daemon.DaemonContext:
    """Become a background process; return the open context (close it at exit).

    ``keep_open`` lists descriptors that must survive (the locks and the log
    handler's file). stdout and stderr go to ``log_file`` when there is one,
    so a traceback printed by a dying thread still lands in the log.
    """
    others = [thread.name for thread in threading.enumerate() if thread is not threading.current_thread()]
    if others:
        # The fork would keep only this thread; the others would vanish mid-work.
        raise RuntimeError(f"cannot detach once threads are running: {', '.join(others)}")
    stream: IO[str] | None = None
    if log_file is not None:
        stream = os.fdopen(open_owned(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE),
                           "a", encoding="utf-8")
    context = daemon.DaemonContext(
        # Keep the working directory: relative paths in the config (and in
        # reload commands) must mean what they meant in the foreground.
        working_directory=os.getcwd(),
        # DaemonContext's default umask 0 would make the files world-writable.
        umask=_current_umask(),
        detach_process=True,  # asked for explicitly: detach even when started by init
        files_preserve=list(keep_open),
        stdout=stream,
        stderr=stream,
        # The run command installs its own handlers; only the terminal job
        # control signals are ignored here, as a detached process has no terminal.
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
    context.open()
    if stream is not None:
        stream.close()  # DaemonContext duplicated it onto fds 1 and 2
    return context
