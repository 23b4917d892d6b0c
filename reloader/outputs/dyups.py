"""The dyups output: POST each upstream to nginx's dyups interface, so nginx switches without a reload.

What real dyups builds do, and what this client does about it (see the
project's dyups protocol notes):

* An empty body answers 500, and a POST without Content-Length answers 204
  followed by stray bytes that corrupt a keep-alive connection: bodies are
  never empty, and always sent with Content-Length.
* ``dyups_trylock`` makes concurrent updates answer 409, and a contended
  DELETE drops the connection without a byte: both are retried here with
  exponential backoff and jitter.
* A 500 on a body that passed validation means nginx is in a bad state: it is
  logged with the body that was sent, and left to the file and the next
  re-POST.
* A refused connection or a request that gets no answer in time means the
  interface is down: the upstream stays pending, and the interface is probed
  every ``retry_interval`` (a read of the live state); as soon as it answers,
  the pending states go out and drift is repaired. This output runs on its
  own thread and follows the files output, so a dyups that hangs delays
  nothing but itself, and it never serves a state the files do not hold.

Real builds also lose POSTed state behind the daemon's back: ``nginx -s
reload`` and restarts wipe it, and a crashed worker comes back with the files
only. So every ``reconcile_interval`` the live state is read and compared
with the desired state (drifted upstreams are re-POSTed, each repair logged
with its reason), and every ``reassert_interval`` every managed upstream is
re-POSTed regardless, because ``/detail`` answers from one worker and cannot
show workers that disagree. Upstreams the config does not manage are never
touched, and the desired state of a frozen upstream is its last good state,
because the pipeline publishes nothing newer while its cluster is frozen.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import random
import time
from collections import Counter
from typing import Callable

from reloader.model import Server, Upstream
from reloader.outputs.base import Output
from reloader.outputs.dyups_state import (
    Dropped,
    InterfaceDown,
    KeepAliveClient,
    LiveStateError,
    LiveStateReader,
    NoAnswer,
    TransportError,
    fingerprints,
    parse_block,
    split_blocks,
)
from reloader.render import render_dyups_body

log = logging.getLogger(__name__)


class DyupsOutput(Output):
    """Keeps the dyups interface at ``base_url`` serving the published upstreams."""

    name = "dyups"

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        max_attempts: int = 5,
        backoff: float = 0.05,
        retry_interval: float = 1.0,
        reconcile_interval: float = 5.0,
        reassert_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._retry_interval = retry_interval
        self._http = KeepAliveClient(self.base_url, connect_timeout, read_timeout)
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
        self._reader = LiveStateReader(self._http)
        self._reconcile_interval = reconcile_interval
        self._reassert_interval = reassert_interval
        # Per managed upstream, the digest of its live block at the last pass
        # that found it clean, and the desired state it was compared with: a
        # block whose text and desired state are both unchanged is not parsed
        # again. Only a digest is kept, never the live text.
        self._clean: dict[str, tuple[bytes, Upstream]] = {}
        now = clock()
        self._next_reconcile = now + reconcile_interval
        self._next_reassert = now + reassert_interval

    # ---- Output ----------------------------------------------------------------

    def publish(self, upstream: Upstream) -> None:
        self.desired[upstream.name] = upstream
        self._pending[upstream.name] = None
        if self._reachable:
            self._push(upstream.name)

    def tick(self, now: float) -> None:
        if not self._reachable:
            # Probe on our own schedule: an nginx restart is healed within about
            # retry_interval of the interface coming back, whatever reassert_interval is.
            if now >= self._next_retry:
                self._next_retry = now + self._retry_interval
                self._next_reconcile = now + self._reconcile_interval
                self.reconcile()
            return
        if self._pending and now >= self._next_retry:
            self._push_pending()
        if self._reassert_interval and now >= self._next_reassert:
            self._next_reassert = now + self._reassert_interval
            self._next_reconcile = now + self._reconcile_interval  # a re-assert is a repair of everything
            self.reassert("periodic")
        elif self._reconcile_interval and now >= self._next_reconcile and self._reachable:
            self._next_reconcile = now + self._reconcile_interval
            self.reconcile()

    def _push_pending(self) -> None:
        for name in list(self._pending):
            if not self._push(name):
                break

    def reassert(self, why: str) -> None:
        """Re-POST every managed upstream now, drift or not."""
        if not self.desired:
            return
        log.info("dyups: re-asserting %d upstreams (%s)", len(self.desired), why)
        self.counters["reasserts"] += 1
        for name in self.desired:
            self._pending[name] = None
        self._push_pending()

    def reconcile(self) -> dict[str, str]:
        """Compare live and desired state, re-POST what drifted; returns {name: reason} repaired."""
        try:
            api, text = self._reader.fetch()
        except InterfaceDown as error:
            self._reader.forget_api()
            self._mark_unreachable(error)
            return {}
        except NoAnswer as error:
            self._reader.forget_api()
            self._mark_unreachable(error)
            return {}
        except (TransportError, LiveStateError) as error:
            self._reader.forget_api()
            log.warning("dyups: cannot read the live state: %s", error)
            return {}
        self._mark_reachable()
        blocks = split_blocks(api, text)
        del text  # only the managed upstreams' blocks matter from here on
        by_lower: dict[str, str] | None = None
        repairs: dict[str, str] = {}
        clean: dict[str, tuple[bytes, Upstream]] = {}
        for name, upstream in self.desired.items():
            if name in self._pending:
                continue  # already on its way
            block = blocks.get(name)
            if block is None:
                if by_lower is None:
                    by_lower = {live.lower(): live for live in blocks}
                live_name = by_lower.get(name.lower())
                block = blocks[live_name] if live_name is not None else None
            if block is None:
                repairs[name] = "missing"
                continue
            digest = hashlib.blake2b(f"{api}\n{block}".encode(), digest_size=16).digest()
            known = self._clean.get(name)
            if known is not None and known[0] == digest and known[1] is upstream:
                clean[name] = known  # the same text against the same desired state: still clean
                continue
            reason = _drift(upstream.servers, parse_block(api, block))
            if reason:
                repairs[name] = reason
            else:
                clean[name] = (digest, upstream)
        self._clean = clean
        for name, reason in repairs.items():
            log.warning("dyups: upstream %s drifted (%s); re-POSTing", name, reason)
            self.counters["repairs"] += 1
            self._pending[name] = None
        if self._pending:
            self._push_pending()
        return repairs

    def close(self) -> None:
        self._http.close()

    def forget(self, name: str) -> None:
        self.desired.pop(name, None)
        self._pending.pop(name, None)
        self._clean.pop(name, None)

    def stats(self) -> dict[str, int]:
        # Every known key from the start, so that each series exists before its first event.
        stats = dict.fromkeys(("ok", "conflict", "dropped", "timeout", "repairs", "reasserts"), 0)
        stats.update({key: int(value) for key, value in list(self.counters.items())})
        stats["reachable"] = int(self._reachable)
        return stats

    @property
    def pending(self) -> tuple[str, ...]:
        """Upstreams not yet confirmed by nginx."""
        return tuple(self._pending)

    # ---- the POST ----------------------------------------------------------------

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/upstream/{name}"

    @staticmethod
    def _path_for(name: str) -> str:
        return f"/upstream/{name}"

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
                response = self._http.request("POST", self._path_for(name), body)
            except InterfaceDown as error:
                self._mark_unreachable(error)
                return False
            except Dropped:
                self.counters["dropped"] += 1
                log.info("dyups: connection dropped on POST %s (attempt %d); retrying", name, attempt + 1)
                continue
            except NoAnswer as error:
                # No answer in time: the interface is hung or overloaded. Retrying at
                # once would only stack waits; probe it on the retry schedule instead.
                self.counters["timeout"] += 1
                self._mark_unreachable(error)
                return False
            self._mark_reachable()
            if response.status == 200:
                self.counters["ok"] += 1
                self._pending.pop(name, None)
                log.info("dyups: POST %s: %d servers", name, len(upstream.servers))
                return True
            if response.status == 409:
                self.counters["conflict"] += 1
                continue
            self.counters[f"http_{response.status}"] += 1
            log.error(
                "dyups: POST %s answered %d %r; body sent: %s",
                self.url_for(name), response.status, response.body[:200], body.decode(),
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


def _drift(desired: tuple[Server, ...], live: tuple[Server, ...] | None) -> str | None:
    """Why ``live`` is not ``desired``, or None when nginx serves what was asked."""
    if live is None:
        return "missing"
    if any(not _is_ip(server.host) for server in desired):
        # nginx shows a host name's resolved addresses, so the two sides
        # cannot be compared; the periodic re-assert covers these upstreams.
        return None
    wanted, have = fingerprints(desired), fingerprints(live)
    if wanted == have:
        return None
    missing = sorted(f"{f[0]}:{f[1]}" for f in wanted - have)
    extra = sorted(f"{f[0]}:{f[1]}" for f in have - wanted)
    parts = ["differs"]
    if missing:
        parts.append(f"missing servers {', '.join(missing)}")
    if extra:
        parts.append(f"extra servers {', '.join(extra)}")
    return "; ".join(parts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _root_cause(error: BaseException) -> str:
    text = str(error)
    return text if len(text) < 200 else text[:200] + "..."
