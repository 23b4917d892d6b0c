"""The dyups output: POST each upstream to nginx's dyups interface, so nginx switches without a reload.

What real dyups builds do, and what this client does about it (see the
project's dyups protocol notes):

* An empty body answers 500, and a POST without Content-Length answers 204
  followed by stray bytes that corrupt a keep-alive connection: bodies are
  never empty, and requests always sends Content-Length for a bytes body.
* ``dyups_trylock`` makes concurrent updates answer 409, and a contended
  DELETE drops the connection without a byte: both are retried here with
  exponential backoff and jitter.
* A 500 on a body that passed validation means nginx is in a bad state: it is
  logged with the body that was sent, and left to the file and the next
  re-POST.
* A refused connection means the interface is down: the upstream stays
  pending, files keep being written by their own output, and the pending
  state is POSTed as soon as the interface answers again.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from typing import Callable

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from reloader.model import Upstream
from reloader.outputs.base import Output
from reloader.render import render_dyups_body

log = logging.getLogger(__name__)


class DyupsOutput(Output):
    """Keeps the dyups interface at ``base_url`` serving the published upstreams."""

    name = "dyups"

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 5,
        backoff: float = 0.05,
        retry_interval: float = 1.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._retry_interval = retry_interval
        self._session = session or requests.Session()
        self._clock = clock
        self._sleep = sleep
        self._random = random.Random()
        # What each managed upstream should be, and which ones nginx has not
        # confirmed yet (dict for insertion order: oldest first on retry).
        self.desired: dict[str, Upstream] = {}
        self._pending: dict[str, None] = {}
        self._reachable = True
        self._next_retry = 0.0
        self.counters: Counter[str] = Counter()

    # ---- Output ----------------------------------------------------------------

    def publish(self, upstream: Upstream) -> None:
        self.desired[upstream.name] = upstream
        self._pending[upstream.name] = None
        if self._reachable:
            self._push(upstream.name)

    def seed(self, upstream: Upstream) -> None:
        # nginx may have reloaded or restarted while the daemon was down and
        # lost every POSTed upstream; the file's state goes back in at once.
        self.publish(upstream)

    def tick(self, now: float) -> None:
        if not self._pending or now < self._next_retry:
            return
        for name in list(self._pending):
            if not self._push(name):
                break

    def close(self) -> None:
        self._session.close()

    @property
    def pending(self) -> tuple[str, ...]:
        """Upstreams not yet confirmed by nginx."""
        return tuple(self._pending)

    @property
    def reachable(self) -> bool:
        return self._reachable

    # ---- the POST ----------------------------------------------------------------

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/upstream/{name}"

    def _push(self, name: str) -> bool:
        """POST ``name``'s desired state; False when the interface is unreachable."""
        upstream = self.desired.get(name)
        if upstream is None:
            self._pending.pop(name, None)
            return True
        body = render_dyups_body(upstream).encode("ascii")
        if not upstream.servers:
            # dyups answers 500 to an empty body; the guards should make this impossible.
            log.error("dyups: refusing to POST an empty body for %s", name)
            self._pending.pop(name, None)
            return True
        for attempt in range(self._max_attempts):
            if attempt:
                self._sleep(self._backoff * (2 ** (attempt - 1)) * (0.5 + self._random.random()))
            try:
                response = self._session.post(self.url_for(name), data=body, timeout=self._timeout)
            except requests.ConnectionError as error:
                if _interface_down(error):
                    self._mark_unreachable(error)
                    return False
                self.counters["dropped"] += 1
                log.info("dyups: connection dropped on POST %s (attempt %d); retrying", name, attempt + 1)
                continue
            except requests.Timeout as error:
                self.counters["timeout"] += 1
                log.warning("dyups: POST %s timed out (attempt %d): %s", name, attempt + 1, error)
                continue
            self._mark_reachable()
            if response.status_code == 200:
                self.counters["ok"] += 1
                self._pending.pop(name, None)
                log.info("dyups: POST %s: %d servers", name, len(upstream.servers))
                return True
            if response.status_code == 409:
                self.counters["conflict"] += 1
                continue
            self.counters[f"http_{response.status_code}"] += 1
            log.error(
                "dyups: POST %s answered %d %r; body sent: %s",
                self.url_for(name), response.status_code, response.content[:200], body.decode(),
            )
            # nginx refused a body that passed validation: it is in a bad state.
            # The file holds the truth; the next re-POST tries again.
            self._pending.pop(name, None)
            return True
        log.warning("dyups: POST %s still failing after %d attempts; will retry", name, self._max_attempts)
        self._next_retry = self._clock() + self._retry_interval
        return True

    def _mark_unreachable(self, error: Exception) -> None:
        self._next_retry = self._clock() + self._retry_interval
        if self._reachable:
            self._reachable = False
            log.warning(
                "dyups: interface %s unreachable (%s); files keep being written, "
                "the current state is POSTed when it answers again",
                self.base_url, _root_cause(error),
            )

    def _mark_reachable(self) -> None:
        if not self._reachable:
            self._reachable = True
            log.warning("dyups: interface %s answers again; catching up %d upstreams", self.base_url, len(self._pending))


def _interface_down(error: requests.ConnectionError) -> bool:
    """True when no connection could be made at all (refused, unreachable, connect timeout).

    requests wraps urllib3's errors a few levels deep; walk the chain of
    ``reason``/``args``/``__cause__`` to find the one that says which.
    """
    cause: BaseException | None = error
    for _ in range(10):
        if cause is None:
            return False
        if isinstance(cause, (NewConnectionError, ConnectTimeoutError)):
            return True
        reason = getattr(cause, "reason", None)
        if isinstance(reason, BaseException):
            cause = reason
            continue
        nested = [arg for arg in cause.args if isinstance(arg, BaseException)]
        cause = nested[0] if nested else cause.__cause__
    return False


def _root_cause(error: BaseException) -> str:
    text = str(error)
    return text if len(text) < 200 else text[:200] + "..."
