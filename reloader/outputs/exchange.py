"""Swapping two paths in one atomic step: Linux ``renameat2(..., RENAME_EXCHANGE)``.

The files output replaces an upstream's file by exchanging it with a spare
that already holds the new text (see :mod:`reloader.outputs.files`). A
rename of a new temporary file over the old one frees an inode and allocates
another on every write; ext4's allocator then skips inodes freed moments ago
by reading their inode table blocks, which took about 40 % of the daemon's
CPU in a burst of 1,000 changes (bench/blip.py, docs/benchmarks.md). An
exchange allocates and frees nothing: the old file becomes the next spare.

Guarantees of :func:`exchange`:

* both paths must exist; on success each names the other's file, in one
  step: a reader of either path sees the old file or the new one, never
  neither and never half of one;
* :class:`Unsupported` (an :class:`OSError`) when the C library, the kernel
  or the file system cannot exchange (no ``renameat2``, ``ENOSYS``,
  ``EINVAL``, ``EOPNOTSUPP``, ``EXDEV``): nothing was changed, and the caller falls
  back to a plain rename. Any other failure is the ``OSError`` of the call,
  naming both paths, and nothing was changed either;
* the C call releases the GIL (ctypes does for every foreign call).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

# <fcntl.h> and <linux/fs.h>
AT_FDCWD = -100
RENAME_EXCHANGE = 2

# Errors that mean "cannot exchange here", not "this exchange failed" (EXDEV:
# a union file system such as overlayfs may refuse what a rename can do).
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV})


class Unsupported(OSError):
    """This system (C library, kernel or file system) cannot exchange two paths."""


def _load() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 (musl has it too), or not Linux
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_RENAMEAT2 = _load()


def exchange(first: str, second: str) -> None:
    """Swap the files at ``first`` and ``second`` atomically; see the module docstring."""
    if _RENAMEAT2 is None:
        raise Unsupported(errno.ENOSYS, "renameat2 is not available", first, None, second)
    if _RENAMEAT2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return
    code = ctypes.get_errno()
    kind = Unsupported if code in _UNSUPPORTED else OSError
    raise kind(code, os.strerror(code), first, None, second)
