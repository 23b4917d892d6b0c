"""The files output: one ``<name>.upstream`` file per upstream, written atomically.

nginx ``include``s these files, so they are what survives a reload or a
restart. A file is replaced, never edited in place: write a temporary file in
the same directory, fsync it, rename it over the target, fsync the directory.
A reader (nginx, or a crash) sees the old file or the new one, never half.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from reloader.model import Upstream
from reloader.outputs.base import Output
from reloader.render import render_file

log = logging.getLogger(__name__)

SUFFIX = ".upstream"
# Seconds between retries of a failed write (a full disk must not flood the log).
RETRY_INTERVAL = 5.0


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` atomically and durably."""
    directory = path.parent
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
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


class FilesOutput(Output):
    """Writes rendered upstreams into ``directory``."""

    name = "files"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._failed: dict[str, Upstream] = {}
        self._next_retry = 0.0
        # name -> previous text (None if the file did not exist) for every file
        # changed since the last take_changes(); the reload output uses it to
        # roll back a change that `nginx -t` refuses.
        self._changes: dict[str, str | None] = {}

    def path_for(self, name: str) -> Path:
        return self.directory / f"{name}{SUFFIX}"

    def prepare(self) -> None:
        """Create the output directory if needed; raise OSError naming it otherwise."""
        self.directory.mkdir(parents=True, exist_ok=True)

    def read(self, name: str) -> str | None:
        """The current text of ``name``'s file, or None if there is none."""
        try:
            return self.path_for(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def publish(self, upstream: Upstream) -> None:
        self._write(upstream.name, render_file(upstream), upstream)

    def _write(self, name: str, text: str, upstream: Upstream | None) -> bool:
        path = self.path_for(name)
        try:
            previous = self.read(name)
        except (OSError, UnicodeDecodeError):
            previous = None
        if previous == text:
            self._failed.pop(name, None)
            return False
        try:
            atomic_write(path, text)
        except OSError as error:
            log.error("files: cannot write %s: %s; will retry", path, error.strerror or error)
            if upstream is not None:
                self._failed[name] = upstream
            return False
        self._failed.pop(name, None)
        self._changes.setdefault(name, previous)
        log.info("files: wrote %s", path)
        return True

    def take_changes(self) -> dict[str, str | None]:
        """Return and forget the files changed since the last call, with their previous text."""
        changes, self._changes = self._changes, {}
        return changes

    def restore(self, name: str, previous: str | None) -> None:
        """Put back ``previous`` (or remove the file if it did not exist before)."""
        path = self.path_for(name)
        if previous is None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        else:
            atomic_write(path, previous)
        log.warning("files: restored the previous %s", path)

    def tick(self, now: float) -> None:
        if not self._failed or now < self._next_retry:
            return
        self._next_retry = now + RETRY_INTERVAL
        for upstream in list(self._failed.values()):
            self.publish(upstream)
