"""What ``run`` does on each signal an operator might send.

Guarantees: no such signal ends the process without a log line.

| signal          | effect |
|-----------------|--------|
| SIGTERM, SIGINT | clean stop (exit 0) |
| SIGQUIT         | clean stop too, logged as such (no core dump) |
| SIGHUP          | reload the config when the daemon can, else re-POST every upstream to dyups |
| SIGUSR1         | reopen the log file (after logrotate) |
| SIGUSR2         | logged and ignored |
| SIGPIPE         | ignored (a closed socket is an error return, not death) |

Handlers only set flags or queue work (``request_*`` methods, and the log
handler's reopen flag), so they are safe whatever the main thread was doing.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Protocol

from reloader.logsetup import LogSetup
from reloader.sdnotify import SystemdNotifier

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Controllable(Protocol):
    """What the handlers need of the daemon (``request_reload`` is used when it exists)."""

    def request_stop(self) -> None: ...

    def request_reassert(self) -> None: ...


def install(daemon: Controllable, logs: LogSetup, notifier: SystemdNotifier | None) -> None:
    """Install the handlers for ``daemon``; call from the main thread, before ``daemon.run()``."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        if notifier is not None:
            notifier.stopping()
        daemon.request_stop()

    def hup(_signum: int, _frame: FrameType | None) -> None:
        reload = getattr(daemon, "request_reload", None)
        if callable(reload):
            log.info("received SIGHUP; reloading the config")
            reload()
        else:
            # After a manual `nginx -s reload`: put every upstream back into dyups now.
            log.info("received SIGHUP; re-asserting every upstream")
            daemon.request_reassert()

    def usr1(_signum: int, _frame: FrameType | None) -> None:
        if logs.request_reopen():
            # This very line is the first written to the reopened file.
            log.info("received SIGUSR1; reopened the log file %s", logs.log_file)
        else:
            log.info("received SIGUSR1; logging to stderr, nothing to reopen")

    def usr2(_signum: int, _frame: FrameType | None) -> None:
        log.info("received SIGUSR2; it has no meaning here, ignored")

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGUSR1, usr1)
    signal.signal(signal.SIGUSR2, usr2)
    # Python already ignores SIGPIPE; say so here, where every signal is decided.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
