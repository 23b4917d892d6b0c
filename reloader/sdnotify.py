"""The systemd notification protocol (``sd_notify``), with no dependency.

Guarantees:

* ``SystemdNotifier.from_environment()`` is None unless ``NOTIFY_SOCKET``
  names a socket, so callers outside systemd simply skip notifications;
* every message is one AF_UNIX datagram of ``KEY=VALUE`` lines sent to that
  socket; a name starting with ``@`` is an abstract socket (``\\0`` first);
* sending never raises: a vanished or refusing socket is logged at DEBUG and
  reported as False, because a notification must never take the daemon down;
* ``watchdog_interval()`` is half of ``WATCHDOG_USEC`` (as systemd advises),
  and None when the watchdog is off or meant for another process
  (``WATCHDOG_PID``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        # Abstract namespace: the kernel wants a leading NUL, not '@'.
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when there is no watchdog."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "").strip()
    if watchdog_pid and watchdog_pid != str(os.getpid()):
        return None  # the watchdog belongs to another process (e.g. our parent)
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a whole number of microseconds", raw)
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


class SystemdNotifier:
    """Sends state changes to the service manager over ``NOTIFY_SOCKET``."""

    def __init__(self, socket_name: str) -> None:
        if not socket_name:
            raise ValueError("an empty NOTIFY_SOCKET name")
        self.socket_name = socket_name
        self._address = _address(socket_name)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """A notifier for ``$NOTIFY_SOCKET``, or None when it is unset (not under systemd's Type=notify)."""
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        return cls(name) if name else None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased); True when the datagram was sent."""
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        return self.send(message)

    def send(self, message: str) -> bool:
        """Send one raw notification datagram; True when it was sent."""
        # A fresh socket per message: sends are rare, and no socket state is
        # shared between the threads that may notify.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as error:
            log.debug("cannot notify %s of %r: %s", self.socket_name, message, error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete (and an optional status line)."""
        if status is None:
            return self.notify(ready=1)
        return self.notify(ready=1, status=status)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=...``: start-up (or stop) is progressing; give it ``seconds`` more from now."""
        return self.notify(extend_timeout_usec=int(seconds * 1_000_000))

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify(stopping=1)

    def reloading(self) -> bool:
        """``RELOADING=1``: a configuration reload has begun (send ``ready()`` when done)."""
        return self.notify(reloading=1)

    def status(self, text: str) -> bool:
        """``STATUS=...``: one line shown by ``systemctl status``."""
        return self.notify(status=" ".join(text.split()))  # a newline would end the field

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping ``WatchdogSec=`` expects."""
        return self.notify(watchdog=1)

    def watchdog_interval(self, environ: Mapping[str, str] | None = None) -> float | None:
        """Same as the module's ``watchdog_interval()``."""
        return watchdog_interval(environ)
