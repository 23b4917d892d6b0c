"""Host-name checks before publishing: a name that does not resolve never reaches nginx.

nginx resolves the host names of an upstream block when it loads its
configuration; one that does not resolve makes ``nginx -t``, the next reload
and the next restart fail (``host not found in upstream``), and dyups refuses
the whole body. So a registry server with a host name is published only once
the name resolves; one that does not is skipped like any bad child.

Guarantees:

* IP addresses are never looked up;
* a look-up never takes longer than ``timeout`` for the caller: it runs on a
  small pool of its own, and a resolver that hangs costs the caller the
  timeout once per name and cache period, not a blocked thread;
* answers, good or bad, are cached for ``ttl`` seconds, so a busy upstream
  does not query DNS on every change.

Thread-safe: every cluster thread may share one :class:`HostChecker`.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Callable

from reloader.addresses import is_ip_literal

Lookup = Callable[[str], object]


def _getaddrinfo(host: str) -> object:
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)


class HostChecker:
    """Says whether a host name resolves, within a short timeout, with a cache."""

    def __init__(
        self,
        timeout: float = 1.0,
        ttl: float = 30.0,
        lookup: Lookup = _getaddrinfo,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = timeout
        self._ttl = ttl
        self._lookup = lookup
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="resolver")

    def problem(self, host: str) -> str | None:
        """None when ``host`` is an IP address or a name that resolves; otherwise why not."""
        if is_ip_literal(host):
            return None
        now = self._clock()
        with self._lock:
            cached = self._cache.get(host)
            if cached is not None and cached[0] > now:
                return cached[1]
        answer = self._resolve(host)
        with self._lock:
            self._cache[host] = (now + self._ttl, answer)
        return answer

    def _resolve(self, host: str) -> str | None:
        try:
            future = self._pool.submit(self._lookup, host)
        except RuntimeError:
            return None  # shutting down; nothing will be published anyway
        try:
            future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            return f"host name {host!r} did not resolve within {self._timeout:g} s"
        except OSError as error:
            return f"host name {host!r} does not resolve ({error.strerror or error})"
        except Exception as error:  # noqa: BLE001 - any resolver failure means "not usable"
            return f"host name {host!r} could not be resolved ({error})"
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
