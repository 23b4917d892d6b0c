"""The Lua output: POST each upstream to the project's Lua module in nginx (``lua_url``).

Guarantees:

* ``publish`` makes one attempt, with short timeouts (connect 1 s, read
  2 s), and never sleeps: an upstream whose POST failed stays
  :attr:`LuaOutput.pending` and is retried from ``tick`` every
  ``retry_interval``.
* While the interface is unreachable it is probed (``GET /upstreams``) every
  ``retry_interval``; the first answer flushes what is pending and repairs
  drift at once, so healing after an nginx restart takes at most about
  ``reconcile_interval`` + ``retry_interval``.
* Every ``reconcile_interval`` the live state (``GET /upstreams``) is
  compared with the desired state; a missing or different upstream is
  re-POSTed, with one log line saying why. An answer byte-equal to that of
  the last clean pass, with nothing published since, is skipped by its
  digest without parsing.
* Every ``reassert_interval`` every managed upstream is re-POSTed (the
  module keeps its revision when nothing changed, so this costs the workers
  nothing). Upstreams the config does not manage are never touched.
* A 400 answer (the module refused the body) is logged with the module's
  reason and not retried until the upstream changes.

Server parameters: ``weight``, ``down``, ``backup``, ``max_fails`` and
``fail_timeout`` are sent; ``max_conns`` is not supported by the Lua
balancer (it only applies while nginx's own round robin serves the file's
servers, right after an nginx start) and is dropped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import requests

from reloader.durations import parse_duration
from reloader.model import Server, Upstream
from reloader.outputs.base import Output

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# Parameters the Lua balancer ignores; they still reach the file.
_UNSUPPORTED_PARAMS = frozenset({"max_conns"})

Document = dict[str, Any]


def server_document(server: Server) -> dict[str, Any]:
    """One server as the Lua module stores it (every field, defaults filled in)."""
    doc: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "weight": server.weight,
        "max_fails": 1,
        "fail_timeout": 10,
        "backup": server.backup,
        "down": server.down,
    }
    for name, value in server.params:
        if name == "max_fails":
            doc["max_fails"] = int(value)
        elif name == "fail_timeout":
            doc["fail_timeout"] = parse_duration(value)
        elif name == "weight":
            doc["weight"] = int(value)
        elif name == "down":
            doc["down"] = True
    return doc


def upstream_document(upstream: Upstream) -> Document:
    """The POST body of ``upstream``, equal (as parsed JSON) to what ``GET`` answers once stored."""
    return {"version": FORMAT_VERSION, "servers": [server_document(s) for s in upstream.servers]}


def _unsupported(upstream: Upstream) -> set[str]:
    return {name for server in upstream.servers for name, _ in server.params if name in _UNSUPPORTED_PARAMS}


class LuaOutput(Output):
    """Keeps the Lua module's interface at ``base_url`` serving the published upstreams."""

    name = "lua"

    def __init__(
        self,
        base_url: str,
        *,
        reconcile_interval: float = 5.0,
        reassert_interval: float = 60.0,
        retry_interval: float = 1.0,
        connect_timeout: float = 1.0,
        read_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._reconcile_interval = reconcile_interval
        self._reassert_interval = reassert_interval
        self._retry_interval = retry_interval
        self._timeout = (connect_timeout, read_timeout)
        self._clock = clock
        self._http = requests.Session()
        # The interface is on loopback: never through a proxy from the environment.
        self._http.trust_env = False
        if token is not None:
            # The interface's secret (reloader/nginx/secret.py), on every request.
            self._http.headers["X-Reloader-Token"] = token
        self._desired: dict[str, Document] = {}
        self._pending: set[str] = set()
        # Bodies the module refused (400), by name: not retried until they change.
        self._refused: dict[str, Document] = {}
        self._warned: set[tuple[str, str]] = set()
        self._reachable = True
        # For metrics and status: POST outcomes, repairs, re-asserts.
        self._counts: dict[str, int] = dict.fromkeys(("ok", "refused", "failed", "unreachable", "repairs", "reasserts"), 0)
        # Bumped on every change of the desired state; part of the clean-pass key.
        self._generation = 0
        self._clean: tuple[str, int] | None = None
        now = clock()
        self._next_retry = now + retry_interval
        self._next_reconcile = now + reconcile_interval
        self._next_reassert = now + reassert_interval

    # -- the Output interface ----------------------------------------------

    @property
    def pending(self) -> frozenset[str]:
        """Names whose desired state nginx is not known to serve yet."""
        return frozenset(self._pending)

    def forget(self, name: str) -> None:
        """No longer managed: not re-POSTed or repaired; what the module holds is left alone."""
        self._desired.pop(name, None)
        self._pending.discard(name)
        self._refused.pop(name, None)
        self._generation += 1

    def publish(self, upstream: Upstream) -> None:
        for param in sorted(_unsupported(upstream)):
            if (upstream.name, param) not in self._warned:
                self._warned.add((upstream.name, param))
                log.warning("upstream %s: %s is not supported by the Lua balancer; it applies only while "
                            "nginx serves the file's servers itself", upstream.name, param)
        document = upstream_document(upstream)
        if self._desired.get(upstream.name) == document and upstream.name not in self._pending:
            return
        self._desired[upstream.name] = document
        self._generation += 1
        self._pending.add(upstream.name)
        if self._reachable:
            self._post(upstream.name, "published")

    def seed(self, upstream: Upstream) -> None:
        # Read back at start-up: nginx may or may not hold it, so compare soon.
        self._desired[upstream.name] = upstream_document(upstream)
        self._generation += 1
        self._next_reconcile = min(self._next_reconcile, self._clock())

    def tick(self, now: float) -> None:
        if not self._reachable:
            if now >= self._next_retry:
                self._next_retry = now + self._retry_interval
                self._reconcile(now, probing=True)
            return
        if self._pending and now >= self._next_retry:
            self._next_retry = now + self._retry_interval
            for name in sorted(self._pending):
                if not self._post(name, "retry"):
                    break
        if self._reassert_interval > 0 and now >= self._next_reassert:
            self.reassert("periodic re-assert")
        if self._reconcile_interval > 0 and now >= self._next_reconcile:
            self._reconcile(now)

    def reassert(self, why: str) -> None:
        """Re-POST every managed upstream now (``why`` goes to the log)."""
        self._next_reassert = self._clock() + self._reassert_interval
        names = sorted(name for name in self._desired if name not in self._refused)
        if not names:
            return
        log.info("lua: re-POSTing %d upstreams: %s", len(names), why)
        self._counts["reasserts"] += 1
        self._pending.update(names)
        for name in names:
            if not self._reachable or not self._post(name, why):
                break

    def close(self) -> None:
        self._http.close()

    def stats(self) -> dict[str, int]:
        return {**self._counts, "reachable": int(self._reachable)}

    # -- HTTP ----------------------------------------------------------------

    def _unreachable(self, what: str, error: Exception) -> None:
        if self._reachable:
            log.warning("lua: interface %s unreachable (%s: %s); probing every %.1f s",
                        self.base_url, what, error, self._retry_interval)
        self._reachable = False
        self._clean = None
        self._next_retry = self._clock() + self._retry_interval

    def _post(self, name: str, why: str) -> bool:
        """One POST of the desired state of ``name``; False when the interface is unreachable."""
        document = self._desired[name]
        if self._refused.get(name) == document:
            self._pending.discard(name)
            return True
        try:
            answer = self._http.post(
                f"{self.base_url}/upstream/{name}",
                data=json.dumps(document, separators=(",", ":")).encode(),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except requests.RequestException as error:
            self._counts["unreachable"] += 1
            self._unreachable(f"POST {name}", error)
            return False
        if answer.status_code == 200:
            self._counts["ok"] += 1
            self._pending.discard(name)
            self._refused.pop(name, None)
            log.debug("lua: upstream %s posted (%s): %s", name, why, answer.text.strip())
            return True
        reason = _error_text(answer)
        if answer.status_code == 400:
            # Retrying the same body cannot help; the file still holds the state.
            self._refused[name] = document
            self._pending.discard(name)
            self._counts["refused"] += 1
            log.error("lua: nginx refused upstream %s: %s", name, reason)
        else:
            self._counts["failed"] += 1
            log.warning("lua: POST %s answered %d (%s); retrying in %.1f s",
                        name, answer.status_code, reason, self._retry_interval)
        return True

    def _reconcile(self, now: float, probing: bool = False) -> None:
        self._next_reconcile = now + self._reconcile_interval
        try:
            answer = self._http.get(f"{self.base_url}/upstreams", timeout=self._timeout)
            answer.raise_for_status()
        except requests.RequestException as error:
            self._unreachable("GET /upstreams", error)
            return
        if probing:
            log.info("lua: interface %s answers again", self.base_url)
            self._reachable = True
        digest = hashlib.sha256(answer.content).hexdigest()
        if self._clean == (digest, self._generation) and not self._pending:
            return
        try:
            live = answer.json()["upstreams"]
            if not isinstance(live, dict):
                raise TypeError("upstreams is not an object")
        except (ValueError, KeyError, TypeError) as error:
            log.error("lua: unreadable GET /upstreams answer (%s)", error)
            return
        repaired = False
        for name in sorted(self._desired):
            want = self._desired[name]
            if self._refused.get(name) == want:
                continue
            have = live.get(name)
            if have == want and name not in self._pending:
                continue
            if have is None:
                why = "missing from nginx (restarted?)"
            elif have != want:
                why = f"drifted ({_difference(have, want)})"
            else:
                why = "pending"
            log.info("lua: upstream %s %s; re-POSTing", name, why)
            self._counts["repairs"] += 1
            repaired = True
            self._pending.add(name)
            if not self._post(name, why):
                return
        self._clean = None if repaired or self._pending else (digest, self._generation)


def _error_text(answer: requests.Response) -> str:
    try:
        return str(answer.json().get("error", answer.text.strip()))
    except (ValueError, AttributeError):
        return answer.text.strip()[:200]


def _difference(have: Any, want: Document) -> str:
    """A short reason for a log line: which servers differ."""
    try:
        live = {(s["host"], s["port"]): s for s in have["servers"]}
        desired = {(s["host"], s["port"]): s for s in want["servers"]}
    except (TypeError, KeyError):
        return "unreadable live state"
    parts = []
    if extra := sorted(set(live) - set(desired)):
        parts.append("extra " + ", ".join(f"{h}:{p}" for h, p in extra))
    if missing := sorted(set(desired) - set(live)):
        parts.append("missing " + ", ".join(f"{h}:{p}" for h, p in missing))
    if changed := sorted(k for k in set(live) & set(desired) if live[k] != desired[k]):
        parts.append("changed " + ", ".join(f"{h}:{p}" for h, p in changed))
    return "; ".join(parts) or "server order"
