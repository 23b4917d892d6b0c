"""Logging for ``run``: text or JSON lines, to stderr or to a file that survives logrotate.

Guarantees:

* the text format is the long-standing ``TIME LEVEL LOGGER: MESSAGE`` line;
* the JSON format is exactly one object per line with ``time`` (ISO 8601,
  UTC, milliseconds, ``Z``), ``level``, ``logger`` and ``message``, plus
  ``cluster`` and ``upstream`` when the record carries them (passed with
  ``extra=``) and ``exc`` holding the traceback text when there is one;
* a log file is reopened by the next record once logrotate has moved or
  removed it (``WatchedFileHandler``), and at once on request (SIGUSR1),
  for a ``copytruncate``-less rotation that keeps the inode;
* a log file is opened without following a symbolic link, only when it is
  a regular file owned by the running user, and created with mode 0640;
* no credential kazoo prints at DEBUG (digest ``auth=``, the session's
  ``passwd=``, SASL ``challenge=``) reaches the handler (:class:`RedactingFilter`);
* ``configure_logging`` replaces whatever handlers the root logger had, so
  calling it twice never doubles lines.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from reloader.ownedfile import open_owned

#: Mode of a log file the daemon creates (minus the umask): not world-readable.
LOG_FILE_MODE = 0o640
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
# Record attributes that become JSON fields when present (the core code sets
# them with extra={"cluster": ..., "upstream": ...}).
CONTEXT_FIELDS = ("cluster", "upstream")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
        entry: dict[str, Any] = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            # Formatter caches the text on the record; reuse it when another handler made it.
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an odd object in ``extra`` must not lose the line.
        return json.dumps(entry, ensure_ascii=False, default=str)


# kazoo's DEBUG lines print its requests whole: ``Auth(..., auth='user:password')``,
# the session password of ``Connect(..., passwd=b'...')`` and the SASL
# exchange of ``SASL(challenge=b'...')``. The quoted value is what goes.
_SECRET_FIELDS = re.compile(r"""\b(auth|passwd|challenge)=(b?)(['"])(?:\\.|(?!\3).)*\3""")
REDACTED = "<redacted>"


class RedactingFilter(logging.Filter):
    """Removes credentials from kazoo's records before any handler formats them.

    Installed on the handler, so it sees the records of every logger; only
    kazoo's are rewritten (their message is formatted once, then redacted).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "kazoo" or record.name.startswith("kazoo."):
            message = record.getMessage()
            redacted = _SECRET_FIELDS.sub(lambda match: f"{match.group(1)}={match.group(2)}'{REDACTED}'", message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


class ReopenableFileHandler(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler that can also be told to reopen its file (SIGUSR1).

    ``request_reopen`` only sets a flag; the reopen happens in the next
    ``emit``, under the handler's lock. A signal handler may therefore call
    it even while another thread is half-way through writing a line.
    """

    def __init__(self, filename: str | Path, encoding: str = "utf-8") -> None:
        super().__init__(filename, encoding=encoding, delay=False)
        self._reopen = threading.Event()

    def _open(self) -> TextIO:  # noqa: D401 - logging's hook for every (re)open
        # Never through a link planted in the log directory, only our own
        # regular file, created 0640: the log may hold host names and paths.
        fd = open_owned(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def request_reopen(self) -> None:
        self._reopen.set()

    def reopenIfNeeded(self) -> None:  # noqa: N802 - the name logging calls
        if self._reopen.is_set():
            self._reopen.clear()
            if self.stream is not None:
                self.stream.flush()
                self.stream.close()
                self.stream = None  # type: ignore[assignment]
            self.stream = self._open()
            self._statstream()
            return
        super().reopenIfNeeded()


@dataclass
class LogSetup:
    """What ``configure_logging`` installed: the handler, and the file it writes, if any."""

    handler: logging.Handler
    log_file: Path | None

    def request_reopen(self) -> bool:
        """Ask a file handler to reopen its file at the next record; False when logging to stderr."""
        if isinstance(self.handler, ReopenableFileHandler):
            self.handler.request_reopen()
            return True
        return False

    def stream_fileno(self) -> int | None:
        """The descriptor the handler writes to (to keep open across detaching)."""
        stream: TextIO | None = getattr(self.handler, "stream", None)
        return stream.fileno() if stream is not None else None


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r}; expected one of {', '.join(LOG_FORMATS)}")


def configure_logging(level: str, log_file: str | Path | None = None, log_format: str = "text") -> LogSetup:
    """Send every record at ``level`` or above to ``log_file`` (or stderr) in ``log_format``.

    Raises OSError naming the file when it cannot be opened.
    """
    path = Path(log_file).absolute() if log_file is not None else None
    handler: logging.Handler
    if path is not None:
        handler = ReopenableFileHandler(path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # kazoo logs every reconnect attempt at INFO/WARNING; our own transition
    # lines say what matters, so keep kazoo quieter unless debugging.
    logging.getLogger("kazoo").setLevel(logging.NOTSET if level == "DEBUG" else logging.ERROR)
    return LogSetup(handler, path)
