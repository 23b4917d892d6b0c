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
  calling it twice never doubles lines;
* a record is formatted on the thread that logs it and written by one
  writer thread, in batches (:class:`BackgroundHandler`): a burst costs one
  write per batch, not one per line, and a log sink that stops taking
  lines (a full pipe, a hung disk) never holds up the thread that logs.
  At most :data:`MAX_QUEUED` lines wait; beyond that lines are dropped,
  counted, and the count is written as soon as the sink takes lines again.
  Lines still queued are written at exit (``logging.shutdown``), waiting at
  most :data:`FLUSH_TIMEOUT` seconds for the sink.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
import time
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


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, stamped as the stock formatter stamps it, the date and time made once a second.

    A busy daemon logs many lines a second (one per upstream changed), and
    the stock ``formatTime`` builds the same text from ``localtime`` for each.
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        # (whole second, its text), replaced whole: formatting threads share it without a lock.
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        whole = int(record.created)
        second, text = self._second
        if second != whole:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (whole, text)
        return self.default_msec_format % (text, record.msecs)


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


#: Lines that may wait for the writer; more are dropped (and counted) until it catches up.
MAX_QUEUED = 20_000
#: How long a flush (at exit, before detaching) waits for the sink to take the queued lines.
FLUSH_TIMEOUT = 1.0


class _Flush:
    """A marker in the queue: set once the writer has written every line queued before it."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class BackgroundHandler(logging.Handler):
    """Formats each record on the logging thread; one writer thread writes them to ``target``'s stream.

    ``target`` (a StreamHandler or a :class:`ReopenableFileHandler`) keeps
    its own job: the stream, and the reopen after a rotation or a SIGUSR1,
    which happens before a batch is written. Logging from a signal handler
    is safe: queuing a line takes no lock (``queue.SimpleQueue.put`` is
    reentrant). The writer thread starts with the first line, and again
    after a fork or :meth:`stop_writer`: ``--daemon`` stops it before
    detaching, as a fork keeps only the calling thread.
    """

    def __init__(self, target: logging.StreamHandler[TextIO]) -> None:
        super().__init__()
        self.target = target
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        # Lines queued and not yet taken by the writer. Updated without a
        # lock (a lost update only makes the bound a little loose), so that
        # emit never waits for anything.
        self._queued = 0
        self._dropped = 0
        self._writer: threading.Thread | None = None
        self._writer_pid = 0
        self._start_lock = threading.RLock()

    # -- the logging side ----------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        # No handler lock: formatting touches only the record, and the queue
        # is thread-safe; the stock lock would serialise every logging thread.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - logging's own contract: a bad record is reported, not raised
            self.handleError(record)
            return
        if self._writer_pid != os.getpid():
            self._start_writer()
        if self._queued >= MAX_QUEUED:
            self._dropped += 1
            return
        self._queued += 1
        self._queue.put(line)

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait until the lines queued so far are written; False if the sink did not take them within ``timeout``."""
        if self._writer is None or self._writer_pid != os.getpid() or not self._writer.is_alive():
            return self._queued == 0
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def stop_writer(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Write what is queued and end the writer thread (the next line starts it again)."""
        with self._start_lock:
            writer = self._writer
            if writer is None or self._writer_pid != os.getpid() or not writer.is_alive():
                return True
            self._queue.put(_STOP)
            writer.join(timeout)
            if writer.is_alive():
                return False
            self._writer, self._writer_pid = None, 0
            return True

    def close(self) -> None:
        # Closing a file under a writer still stuck in it would only turn
        # its write into an error: leave that file to the process's exit.
        if self.flush():
            self.target.close()
        super().close()

    # -- the writer ------------------------------------------------------------

    def _start_writer(self) -> None:
        with self._start_lock:
            if self._writer_pid == os.getpid():
                return  # another thread started it meanwhile
            if self._writer_pid != 0:
                # After a fork: the parent's lines are the parent's to write.
                self._queue, self._queued = queue.SimpleQueue(), 0
            self._writer = threading.Thread(target=self._write_loop, name="log-writer", daemon=True)
            self._writer_pid = os.getpid()
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            lines: list[str] = []
            markers: list[_Flush] = []
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                else:
                    lines.append(item)  # type: ignore[arg-type]
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queued -= len(lines)
            dropped, self._dropped = self._dropped, 0
            if dropped:
                lines.insert(0, self._dropped_line(dropped))
            if lines:
                self._write("".join(lines))
            for marker in markers:
                marker.done.set()
            if stop:
                return

    def _dropped_line(self, dropped: int) -> str:
        record = logging.LogRecord(__name__, logging.WARNING, __file__, 0,
                                   "log: %d lines were dropped: the log sink did not take them fast enough",
                                   (dropped,), None)
        try:
            return self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - the count must not be lost to a formatter
            return record.getMessage() + "\n"

    def _write(self, text: str) -> None:
        """One batch to the target's descriptor.

        The target's lock is held only to reopen and to pick the descriptor,
        and the bytes go out with ``os.write``, not through the stream's
        buffer: a writer stuck in a sink that takes nothing then holds no
        lock that the exit (``logging.shutdown``, the interpreter's final
        flush of the streams) needs.
        """
        target = self.target
        try:
            with target.lock:  # type: ignore[union-attr]
                reopen = getattr(target, "reopenIfNeeded", None)
                if reopen is not None:
                    reopen()
                stream = target.stream
                stream.flush()
                fd = stream.fileno()
                encoding = getattr(stream, "encoding", None) or "utf-8"
            view = memoryview(text.encode(encoding, "backslashreplace"))
            while view:
                view = view[os.write(fd, view):]
        except Exception:  # noqa: BLE001 - as StreamHandler: a failed write is reported on stderr, not raised
            if logging.raiseExceptions:
                try:
                    sys.stderr.write(f"--- logging error: cannot write {len(text)} characters of log: "
                                     f"{sys.exc_info()[1]}\n")
                except Exception:  # noqa: BLE001 - stderr itself may be the broken sink
                    pass


@dataclass
class LogSetup:
    """What ``configure_logging`` installed: the handler, and the file it writes, if any."""

    handler: BackgroundHandler
    log_file: Path | None

    def request_reopen(self) -> bool:
        """Ask a file handler to reopen its file before the next lines; False when logging to stderr."""
        target = self.handler.target
        if isinstance(target, ReopenableFileHandler):
            target.request_reopen()
            return True
        return False

    def stream_fileno(self) -> int | None:
        """The descriptor the handler writes to (to keep open across detaching)."""
        stream: TextIO | None = getattr(self.handler.target, "stream", None)
        return stream.fileno() if stream is not None else None

    def before_fork(self) -> bool:
        """Write the queued lines and end the writer thread (a fork keeps only the calling thread)."""
        return self.handler.stop_writer()


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {log_format!r}; expected one of {', '.join(LOG_FORMATS)}")


def configure_logging(level: str, log_file: str | Path | None = None, log_format: str = "text") -> LogSetup:
    """Send every record at ``level`` or above to ``log_file`` (or stderr) in ``log_format``.

    Raises OSError naming the file when it cannot be opened.
    """
    path = Path(log_file).absolute() if log_file is not None else None
    target: logging.StreamHandler[TextIO]
    if path is not None:
        target = ReopenableFileHandler(path)
    else:
        target = logging.StreamHandler(sys.stderr)
    handler = BackgroundHandler(target)
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # Neither format prints a record's caller, thread or process, and finding
    # the caller walks the stack for every record: about half of what a line
    # costs the thread that logs it (one line per upstream changed). These
    # are the switches the logging HOWTO's "Optimization" section names.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # kazoo logs every reconnect attempt at INFO/WARNING; our own transition
    # lines say what matters, so keep kazoo quieter unless debugging.
    logging.getLogger("kazoo").setLevel(logging.NOTSET if level == "DEBUG" else logging.ERROR)
    return LogSetup(handler, path)
