"""Opening the daemon's own files (pid file, lock file, log file) without following anyone else's link.

The daemon often runs as root, and these files sit in directories that the
service user (or an operator) may write. A symbolic link planted there
would make root write wherever it points. Guarantees of :func:`open_owned`:

* the last path component is never followed (``O_NOFOLLOW``), and the
  descriptor does not leak into child processes (``O_CLOEXEC``);
* a FIFO or device planted at the path cannot block the open
  (``O_NONBLOCK``, which regular files ignore);
* the opened file is a regular file owned by the running (effective) user,
  or the descriptor is closed again and :class:`UnsafeFileError` names the
  path and what is wrong with it;
* a file it creates gets ``mode`` (minus the umask); an existing file's
  mode is left alone.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class UnsafeFileError(OSError):
    """The path is a link, not a regular file, or not ours; ``strerror`` says which, naming the path."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(errno.EPERM, f"{path}: {reason}; refusing to use it", str(path))

    def __str__(self) -> str:
        return str(self.strerror)


def open_owned(path: str | Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` for the daemon's own files; see the module docstring. Returns the descriptor."""
    # ``path`` goes to the system as given: the files output opens a spare per write.
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFileError(Path(path), "it is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(Path(path), "it is not a regular file")
        if info.st_uid != os.geteuid():
            raise UnsafeFileError(Path(path), f"it is owned by uid {info.st_uid}, not by the running user "
                                              f"(uid {os.geteuid()}); run as its owner, or remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd
