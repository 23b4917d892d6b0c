"""The shared secret that authenticates the daemon to the Lua interface.

Guarantees:

* :func:`load_or_create` returns a token made of 32 to 256 printable,
  non-space ASCII characters (safe in an HTTP header), and leaves it in the
  secret file that the Lua module reads: generated (256 random bits, hex) on
  first start, or the configured ``lua_secret`` written there when the file
  holds another value.
* The file is written atomically (a temporary file created ``O_EXCL`` mode
  0600 in the same directory, its group and mode 0640 set on the open
  descriptor, fsynced, then renamed into place), so nginx never reads half a
  secret and the secret is never readable by others, not even for a moment.
* A file is used only if it is a regular file (opened with ``O_NOFOLLOW``,
  checked on the open descriptor, so a symlink swapped in is refused),
  owned by the daemon's user or root, and neither readable nor writable by
  others nor writable by its group; otherwise :class:`SecretError` names the
  file and the problem. When ``group`` is given the file's group is set to
  it (the group nginx's workers run as).
* No error message, log line or ``repr`` ever contains the secret's value.
"""

from __future__ import annotations

import grp
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reloader.config import Config

log = logging.getLogger(__name__)

#: The header the daemon sends and the Lua module checks.
HEADER: str = "X-Reloader-Token"
#: The secret file's name in the files directory: a dot-file, never matched by ``*.upstream``.
DEFAULT_NAME: str = ".lua-secret"
MIN_LENGTH: int = 32
MAX_LENGTH: int = 256
#: Owner read/write, group read: the daemon's user writes it, nginx's group reads it.
MODE: int = 0o640
_MAX_FILE = 4096


class SecretError(Exception):
    """The secret file or value cannot be used; the message names the file and why."""


def default_path(files_dir: Path) -> Path:
    """Where the secret lives unless ``lua_secret_file`` says otherwise."""
    return Path(files_dir) / DEFAULT_NAME


def check_value(value: str) -> None:
    """Raise ValueError (without the value in it) unless ``value`` can be a token."""
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {type(value).__name__}")
    if not MIN_LENGTH <= len(value) <= MAX_LENGTH:
        raise ValueError(f"must be {MIN_LENGTH} to {MAX_LENGTH} characters long (it has {len(value)})")
    if not all(33 <= ord(char) <= 126 for char in value):
        raise ValueError("must be printable ASCII without spaces")


def _gid(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SecretError(f"lua_secret_group: no group named {group!r} on this host") from None


def _check_stat(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SecretError(f"{path}: the Lua secret file is not a regular file; remove it and restart")
    if info.st_uid not in (os.geteuid(), 0):
        raise SecretError(f"{path}: the Lua secret file is owned by uid {info.st_uid}, not by this user "
                          f"(uid {os.geteuid()}) or root; someone else may know it: remove it and restart")
    if info.st_mode & 0o007:
        raise SecretError(f"{path}: the Lua secret file is readable or writable by others "
                          f"(mode {stat.S_IMODE(info.st_mode):04o}); remove it and restart (it is recreated 0640)")
    if info.st_mode & 0o020:
        raise SecretError(f"{path}: the Lua secret file is writable by its group "
                          f"(mode {stat.S_IMODE(info.st_mode):04o}); it must be 0640 or stricter")


def read_secret(path: Path) -> str | None:
    """The token in ``path``, None if there is no file; SecretError if it cannot be used."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        if os.path.islink(path):
            raise SecretError(f"{path}: the Lua secret file is a symlink; refusing to follow it") from None
        raise SecretError(f"{path}: cannot open the Lua secret file: {error.strerror}") from None
    try:
        _check_stat(path, os.fstat(fd))
        data = os.read(fd, _MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise SecretError(f"{path}: the Lua secret file is larger than {_MAX_FILE} bytes")
    try:
        value = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SecretError(f"{path}: the Lua secret must be printable ASCII without spaces") from None
    try:
        check_value(value)
    except ValueError as error:
        raise SecretError(f"{path}: the Lua secret {error}") from None
    return value


def _write(path: Path, value: str, gid: int | None) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise SecretError(f"{path}: cannot create the Lua secret file: {error.strerror}") from None
    try:
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, MODE)
            os.write(fd, (value + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise SecretError(f"{path}: cannot write the Lua secret file: {error.strerror}") from None


def _fix_group(path: Path, gid: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        _check_stat(path, info)
        if info.st_gid != gid:
            os.fchown(fd, -1, gid)
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & MODE)
    except OSError as error:
        raise SecretError(f"{path}: cannot give the Lua secret file to group {gid}: {error.strerror}") from None
    finally:
        os.close(fd)


def load_or_create(path: Path, *, value: str | None = None, group: str | None = None) -> str:
    """The token to send, with ``path`` holding it for nginx (see the module's guarantees).

    ``value`` is the configured ``lua_secret`` (None: generate one on the
    first start, then keep it); ``group`` the configured ``lua_secret_group``.
    """
    path = Path(path)
    gid = _gid(group)
    if value is not None:
        try:
            check_value(value)
        except ValueError as error:
            raise SecretError(f"lua_secret {error}") from None
    current = read_secret(path)
    if current is None or (value is not None and not secrets.compare_digest(current, value)):
        token = value if value is not None else secrets.token_hex(32)
        _write(path, token, gid)
        log.info("lua: %s the interface's secret in %s", "wrote" if value is not None else "generated", path)
        return token
    if gid is not None:
        _fix_group(path, gid)
    return current


def path_for_config(config: Config) -> Path:
    """The secret file of ``config``: ``lua_secret_file``, else the dot-file in the files directory."""
    return config.lua_secret_file or default_path(config.files_output_path)


def for_config(config: Config) -> str:
    """The token of ``config``'s Lua interface, its file created or checked (:func:`load_or_create`)."""
    return load_or_create(path_for_config(config), value=config.lua_secret, group=config.lua_secret_group)


def token_or_none(config: Config) -> str | None:
    """:func:`for_config`, or None after logging why the secret cannot be used.

    The daemon keeps running (files first); nginx answers its updates with
    401, which the Lua output logs, until the file is fixed.
    """
    try:
        return for_config(config)
    except SecretError as error:
        log.error("lua: %s; updates to the Lua interface will be refused (401) until this is fixed "
                  "and the daemon restarted", error)
        return None
