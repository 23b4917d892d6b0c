"""The reload output: stock nginx, no dyups module, kept in step by ``nginx -s reload``.

This output follows the files output: it is fed a ``FileWritten`` event for
every file written, with the text the file held before, and makes nginx pick
the files up:

1. run ``test_cmd`` (``nginx -t``). If nginx refuses the new files, put back
   their previous contents, log nginx's own message, and keep serving: the
   running nginx never saw the bad files, and a restart later reads the old
   ones. When several files changed together, each is tried on its own so a
   single bad upstream does not hold back the good ones.
2. if the test passes, run ``reload_cmd`` (``nginx -s reload``). If that
   fails (nginx not running yet, say), the files stay -- they passed the
   test -- and the reload is tried again later, backing off up to a minute.

Refused changes are not forgotten. ``nginx -t`` may refuse them for a reason
outside these files (an operator's broken ``nginx.conf``, a name that does
not resolve yet), and the pipeline will not publish the same state again. So
the refused contents are tried again after REFUSED_RETRY_MIN seconds,
doubling up to REFUSED_RETRY_MAX while they keep failing, until they pass or
a newer state of that upstream replaces them.

Rate limit: at most one test-and-reload per ``min_interval``. The first change
after a quiet period is applied at once, at the end of its batch; changes that
arrive inside the interval are collected and applied together by ``tick``
once it has passed, so none is lost. Files that went back to their tested
contents (A -> B -> A within one window) cause no reload at all. Pending
changes are applied at shutdown too: the next start adopts the files as
published, so it would never reload for them.

What nginx last loaded is recorded beside the files (:data:`LOADED_RECORD`:
a digest of every ``*.upstream`` file as it was just before the last
successful ``reload_cmd``, written atomically after it). At start-up the
files are compared with that record, and any difference (or no record while
files exist) is a reload owed. So a file ahead of nginx is always recovered,
whatever was lost in between: a ``FileWritten`` still queued at SIGTERM, a
``close()`` whose test outlived the grace, a reload owed when the process
died. The record is taken before the reload runs, so it may be behind what
nginx loaded (one reload too many at the next start), never ahead.

Commands are argv lists run without a shell and with a timeout; a timeout or
a missing binary is a failure like any other, logged with the command.
Everything here runs on the output's own thread; files are put back through
the shared :class:`~reloader.outputs.files.FileStore` with a compare-and-replace,
so a refusal never undoes a newer state the files output wrote meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import subprocess
import time
from typing import Callable, Iterable

from reloader.config import ReloadConfig
from reloader.model import Upstream
from reloader.outputs.base import FileWritten, Output
from reloader.outputs.files import FileStore, atomic_write

log = logging.getLogger(__name__)

#: Seconds either command may run before it counts as failed.
COMMAND_TIMEOUT = 30.0
#: Upper bound of the back-off between attempts after ``reload_cmd`` failed.
MAX_RETRY_INTERVAL = 60.0
#: First wait before a refused change is tried again, and the longest one.
REFUSED_RETRY_MIN = 30.0
REFUSED_RETRY_MAX = 600.0
#: How much of a command's output goes into a log line.
_OUTPUT_LIMIT = 2000
#: The file, beside the upstream files, that records what nginx last loaded.
LOADED_RECORD = ".reloader-loaded.json"

Clock = Callable[[], float]
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class ReloadOutput(Output):
    """Tests and reloads nginx after the files output changed ``*.upstream`` files."""

    name = "reload"

    def __init__(
        self,
        store: FileStore,
        config: ReloadConfig,
        *,
        clock: Clock = time.monotonic,
        run: Runner = subprocess.run,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self._run = run
        self._timeout = timeout
        # name -> text of the file when it last passed test_cmd (None: no
        # file), for every file changed since then: what a refusal restores.
        self._pending: dict[str, str | None] = {}
        # Earliest time the next test-and-reload may run.
        self._next_allowed = float("-inf")
        self._retry_interval = 0.0
        # reload_cmd failed after a passing test; reload again at the next window.
        self._reload_owed = False
        #: Successful reloads.
        self.reloads = 0
        #: Times ``test_cmd`` refused a change (files were restored).
        self.test_failures = 0
        #: Times ``reload_cmd`` failed after a passing test (retried later).
        self.reload_failures = 0
        #: Times a window's changes cancelled out, so no reload was needed.
        self.skipped = 0
        # name -> the refused file text, waiting to be tried again.
        self._refused: dict[str, str] = {}
        self._refused_retry_at = float("inf")
        self._refused_backoff = REFUSED_RETRY_MIN
        self._retrying_refused = False
        # Files that differ from what nginx last loaded: a reload is owed from the start.
        behind = self._behind_nginx()
        if behind:
            log.warning("reload: %s differ from what nginx last loaded; reloading", behind)
            self._reload_owed = True

    # ---- what nginx last loaded ---------------------------------------------------

    def _digests(self) -> dict[str, str]:
        """A digest of every upstream file on disk now (a file that cannot be read counts as changed)."""
        digests = {}
        for name in self.store.names():
            try:
                text = self.store.read(name)
            except (OSError, UnicodeDecodeError):
                text = None
            digests[name] = "unreadable" if text is None else hashlib.sha256(text.encode()).hexdigest()
        return digests

    def _behind_nginx(self) -> str | None:
        """Which files are not what nginx last loaded (None: all are), from the record beside them."""
        path = self.store.directory / LOADED_RECORD
        digests = self._digests()
        try:
            record = json.loads(path.read_text(encoding="utf-8"))["files"]
            if not isinstance(record, dict):
                raise TypeError("files is not an object")
        except FileNotFoundError:
            return "the files (no record of an earlier reload)" if digests else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("reload: cannot read %s (%s)", path, error)
            return "the files (the record of the last reload is unreadable)" if digests else None
        differ = sorted(name for name in set(digests) | set(record) if digests.get(name) != record.get(name))
        return _names(differ) if differ else None

    def _record_loaded(self, digests: dict[str, str]) -> None:
        path = self.store.directory / LOADED_RECORD
        try:
            atomic_write(path, json.dumps({"files": digests}, sort_keys=True))
        except OSError as error:
            # The next start reloads once more: safe, only slower.
            log.warning("reload: cannot record the reload in %s: %s", path, error.strerror or error)

    # ---- Output interface ---------------------------------------------------------

    def publish(self, upstream: Upstream) -> None:
        """Nothing to do: this output acts on files written (:meth:`file_written`), not on states."""

    def file_written(self, event: FileWritten) -> None:
        """Collect a changed file; end_batch acts on the batch. A newer state replaces a refused one."""
        self._refused.pop(event.upstream.name, None)
        if event.changed:
            # Keep the oldest previous text: the last one that passed test_cmd.
            self._pending.setdefault(event.upstream.name, event.previous)

    def end_batch(self) -> None:
        self._maybe_apply(self._clock())

    def tick(self, now: float) -> None:
        self._maybe_apply(now)
        self._retry_refused(now)

    def _retry_refused(self, now: float) -> None:
        """Write refused contents back and test them again, once their back-off has passed."""
        if not self._refused or now < self._refused_retry_at or self._pending or now < self._next_allowed:
            return
        refused, self._refused = self._refused, {}
        self._refused_retry_at = float("inf")
        log.info("reload: trying the refused %s again", _names(refused))
        for name, text in refused.items():
            previous = self._current(name)
            if previous == text:
                continue
            try:
                written = self.store.replace_if(name, previous, text)
            except OSError as error:
                log.error("reload: cannot write %s: %s", self.store.path_for(name), error.strerror or error)
                self._refused[name] = text
                continue
            if written:
                self._pending.setdefault(name, previous)
        self._retrying_refused = True
        try:
            self._apply(now)
        finally:
            self._retrying_refused = False
        if not self._refused:
            self._refused_backoff = REFUSED_RETRY_MIN

    def close(self) -> None:
        """At shutdown, apply what is still waiting for its window.

        Otherwise nginx would stay behind the files until the next start
        finds them differing from the record of the last reload.
        """
        if self._pending or self._reload_owed:
            log.info("reload: applying pending changes before exit")
            self._apply(self._clock())

    def stats(self) -> dict[str, int]:
        return {
            "reloads": self.reloads, "test_failures": self.test_failures,
            "reload_failures": self.reload_failures, "skipped": self.skipped, "refused": len(self._refused),
        }

    @property
    def pending(self) -> tuple[str, ...]:
        """Upstreams changed on disk and waiting for the next reload."""
        return tuple(sorted(self._pending))

    # ---- internals -----------------------------------------------------------------

    def _maybe_apply(self, now: float) -> None:
        if (self._pending or self._reload_owed) and now >= self._next_allowed:
            self._apply(now)

    def _current(self, name: str) -> str | None:
        try:
            return self.store.read(name)
        except (OSError, UnicodeDecodeError) as error:
            log.warning("reload: cannot read %s: %s", self.store.path_for(name), error)
            return None

    def _apply(self, now: float) -> None:
        changes = self._pending
        self._pending = {}
        current = {name: self._current(name) for name in changes}
        net = {name: previous for name, previous in changes.items() if current[name] != previous}
        if not net and not self._reload_owed:
            log.info("reload: %s back to the tested contents; no reload needed", ", ".join(sorted(changes)))
            self.skipped += 1
            return
        self._next_allowed = now + self.config.min_interval

        if net:
            ok, output = self._command(self.config.test_cmd, "test_cmd")
            if not ok:
                net = self._reject(net, current, output)
                if not net and not self._reload_owed:
                    return
        # From here on the files on disk passed the test: they are the state a
        # later refusal restores, whether or not the reload below succeeds.
        what = _names(net) if net else "changes of an earlier failed or lost reload"
        # Taken before the reload: a file written after this is not recorded as loaded.
        loaded = self._digests()
        ok, output = self._command(self.config.reload_cmd, "reload_cmd")
        if not ok:
            self.reload_failures += 1
            # nginx may still serve an older state: reload again later,
            # backing off so a stopped nginx does not flood the log.
            self._reload_owed = True
            self._retry_interval = min(
                max(self._retry_interval * 2, self.config.min_interval, 1.0), MAX_RETRY_INTERVAL
            )
            self._next_allowed = now + self._retry_interval
            log.error(
                "reload: %s failed for %s; will try again in %.0f s%s",
                _show(self.config.reload_cmd), what, self._retry_interval, _detail(output),
            )
            return
        self._reload_owed = False
        self._retry_interval = 0.0
        self.reloads += 1
        self._record_loaded(loaded)
        log.info("reload: nginx reloaded for %s", what)

    def _reject(
        self, net: dict[str, str | None], current: dict[str, str | None], output: str
    ) -> dict[str, str | None]:
        """``test_cmd`` failed on ``net``: restore, then keep whichever files pass alone.

        Returns the changes that are still on disk and passed the test.
        """
        self.test_failures += 1
        # Restore before logging, so the line never announces what has not happened yet.
        restored = {name for name in sorted(net) if self._restore(name, net[name], current[name])}
        log.error(
            "reload: %s refused the new %s; kept the previous contents%s",
            _show(self.config.test_cmd), _names(net), _detail(output),
        )
        if len(net) == 1:
            self._remember_refused(net, current)
            return {}
        # Several upstreams changed together: one bad one must not keep the
        # others from nginx. Try each on top of the ones already accepted.
        accepted: dict[str, str | None] = {}
        for name in sorted(net):
            refused_text = current[name]
            if name not in restored or refused_text is None:
                continue
            try:
                if not self.store.replace_if(name, net[name], refused_text):
                    continue  # a newer state was written meanwhile; its own event follows
            except OSError as error:
                log.error("reload: cannot write %s back: %s", self.store.path_for(name), error)
                continue
            ok, alone = self._command(self.config.test_cmd, "test_cmd", quiet=True)
            if ok:
                accepted[name] = net[name]
            else:
                log.error("reload: upstream %s is the one nginx refuses%s", name, _detail(alone))
                self._restore(name, net[name], refused_text)
        if accepted:
            log.info("reload: %s pass on their own; reloading with them", _names(accepted))
        self._remember_refused({name: net[name] for name in net if name not in accepted}, current)
        return accepted

    def _remember_refused(self, refused: dict[str, str | None], current: dict[str, str | None]) -> None:
        """Keep refused contents for a later try, backing off while they keep failing."""
        for name in refused:
            text = current.get(name)
            if text is not None:
                self._refused[name] = text
        if not self._refused:
            return
        if self._retrying_refused:
            self._refused_backoff = min(self._refused_backoff * 2, REFUSED_RETRY_MAX)
        self._refused_retry_at = self._clock() + self._refused_backoff
        log.warning(
            "reload: will try the refused %s again in %.0f s (or sooner if it changes)",
            _names(self._refused), self._refused_backoff,
        )

    def _restore(self, name: str, previous: str | None, refused: str | None) -> bool:
        """Put ``previous`` back if the file still holds the ``refused`` text; True if it was put back."""
        path = self.store.path_for(name)
        try:
            if not self.store.replace_if(name, refused, previous):
                log.info("reload: %s changed again meanwhile; its new state is tested next", path)
                return False
        except OSError as error:
            log.error(
                "reload: cannot restore %s: %s; nginx still serves the previous state, "
                "but a restart would read the refused file",
                path, error.strerror or error,
            )
            return False
        log.warning("files: restored the previous %s", path)
        return True

    def _command(self, argv: tuple[str, ...], what: str, quiet: bool = False) -> tuple[bool, str]:
        """Run ``argv`` (no shell); return (succeeded, trimmed output)."""
        try:
            result = self._run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=self._timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError:
            return False, f"{what} {_show(argv)} cannot run: {argv[0]!r} not found"
        except subprocess.TimeoutExpired:
            return False, f"{what} {_show(argv)} did not finish within {self._timeout:g} s"
        except OSError as error:
            return False, f"{what} {_show(argv)} could not be started: {error.strerror or error}"
        output = _trim(f"{result.stderr or ''}\n{result.stdout or ''}")
        if result.returncode != 0:
            return False, output or f"{what} exited with code {result.returncode} and printed nothing"
        if output and not quiet:
            log.debug("reload: %s: %s", what, output)
        return True, output


def _show(argv: tuple[str, ...] | list[str]) -> str:
    return shlex.join(argv)


def _names(upstreams: Iterable[str]) -> str:
    names = sorted(upstreams)
    return ("upstream " if len(names) == 1 else "upstreams ") + ", ".join(names)


def _trim(text: str) -> str:
    text = text.strip()
    if len(text) > _OUTPUT_LIMIT:
        text = "..." + text[-_OUTPUT_LIMIT:]
    return text


def _detail(output: str) -> str:
    return f":\n{output}" if output else ""
