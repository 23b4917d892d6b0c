"""The Lua adapter: POST each upstream as JSON to the project's Lua module in nginx (``lua_url``).

The pending, retry, probe, reconcile, re-assert and refusal rules are the
push engine's (:mod:`reloader.outputs.push`); this module is what is
particular to the Lua interface:

* every request goes to the ``lua_url`` host exactly (the Host header is the
  interface's own ``host:port``), carries ``X-Reloader-Token`` when a token is
  set, and every POST body is JSON sent as ``application/json``; one
  kept-alive connection with short timeouts (connect 1 s, read 2 s), and an
  answer is never read beyond :data:`~reloader.outputs.http.MAX_ANSWER`;
* the interface's limits are known here (:data:`reloader.nginx.MAX_BODY`,
  :data:`reloader.nginx.MAX_SERVERS`): a state over them is never sent, and
  is reported once as refused; a 4xx answer (400: the module refused the
  body, 413: too large) refuses the state too, with the module's reason;
  other answers (507: shared dict full) are retried;
* the live state is ``GET /upstreams``; a missing or different upstream is
  re-POSTed, and names the config does not manage are removed (``DELETE
  /upstream/NAME``): only the daemon, which holds the token, writes the
  module's store;
* the Lua balancer connects to addresses only: an upstream with servers
  named by host is warned about once (all of them: every request fails with
  502), and counted in the output's stats.

Traffic options (:mod:`reloader.traffic`): ``slow_start`` and
``panic_threshold`` go into the document when configured, with each
ramping server's ``added`` wall-clock time; the balancer does the rest per
request. Every ``reconcile_interval`` the output reads ``GET /panic`` (only
while some upstream has a threshold) and shows it in ``stats`` as
``panic:NAME``.

Server parameters: ``weight``, ``down``, ``backup``, ``max_fails`` and
``fail_timeout`` are sent; ``max_conns`` is not supported by the Lua
balancer (it only applies while nginx's own round robin serves the file's
servers, right after an nginx start) and is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from reloader.addresses import is_ip_literal
from reloader.durations import parse_duration
from reloader.model import Server, Upstream
from reloader.nginx import MAX_BODY, MAX_SERVERS
from reloader.outputs.http import MAX_ANSWER, InterfaceDown, KeepAliveClient, NoAnswer, TransportError
from reloader.outputs.push import (
    OK,
    REFUSED,
    RETRY,
    UNREACHABLE,
    Adapter,
    LiveError,
    Outcome,
    PushOutput,
    Refusal,
    Unreachable,
    digest_of,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# Parameters the Lua balancer ignores; they still reach the file.
_UNSUPPORTED_PARAMS = frozenset({"max_conns"})

Document = dict[str, Any]

#: The header that carries the interface's token (checked by the Lua module).
TOKEN_HEADER = "X-Reloader-Token"
_JSON = {"Content-Type": "application/json"}


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
    """The POST body of ``upstream``, equal (as parsed JSON) to what ``GET`` answers once stored.

    Traffic options only appear when configured: ``slow_start`` (the Lua
    balancer ramps each server that has an ``added`` wall-clock time, per
    request) and ``panic_threshold``. ``added`` is absolute, so the document
    stays byte-stable between POSTs while nothing changes.
    """
    added = dict(upstream.added)
    servers = []
    for server in upstream.servers:
        doc = server_document(server)
        if upstream.slow_start is not None and server.endpoint in added:
            doc["added"] = added[server.endpoint]
        servers.append(doc)
    document: Document = {"version": FORMAT_VERSION}
    if upstream.slow_start is not None:
        slow = upstream.slow_start
        document["slow_start"] = {"window": slow.window, "min_weight": slow.min_weight,
                                  "aggression": slow.aggression}
    if upstream.panic_threshold is not None:
        document["panic_threshold"] = upstream.panic_threshold
    document["servers"] = servers
    return document


def _unsupported(upstream: Upstream) -> set[str]:
    return {name for server in upstream.servers for name, _ in server.params if name in _UNSUPPORTED_PARAMS}


class LuaAdapter(Adapter):
    """The Lua interface at ``base_url``: JSON documents, ``GET /upstreams``, ``DELETE`` of unmanaged names."""

    name = "lua"
    removes_unmanaged = True

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 2.0,
        max_body: int = MAX_BODY,
        max_servers: int = MAX_SERVERS,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {TOKEN_HEADER: token} if token else {}
        self._http = KeepAliveClient(self.base_url, connect_timeout, read_timeout, headers, max_answer)
        self._max_body = max_body
        self._max_servers = max_servers

    def body(self, upstream: Upstream) -> bytes:
        count = len(upstream.servers)
        if count > self._max_servers:
            raise Refusal(f"{count} servers, more than the Lua module's limit of {self._max_servers}")
        data = json.dumps(upstream_document(upstream), separators=(",", ":")).encode()
        if len(data) > self._max_body:
            raise Refusal(f"a body of {len(data)} bytes, more than the Lua interface's limit of {self._max_body}")
        return data

    def send(self, items: list[tuple[str, bytes]]) -> list[Outcome]:
        outcomes = []
        for name, body in items:
            outcome = self._post(name, body)
            outcomes.append(outcome)
            if outcome.kind == UNREACHABLE:
                break
        return outcomes

    def _post(self, name: str, body: bytes) -> Outcome:
        try:
            answer = self._http.request("POST", _path(name), body, retry_dropped=1, headers=_JSON)
        except (InterfaceDown, NoAnswer) as error:
            return Outcome(UNREACHABLE, detail=str(error), counters=Counter(unreachable=1))
        except TransportError as error:
            return Outcome(RETRY, detail=str(error), counters=Counter(failed=1))
        if answer.status == 200:
            log.debug("lua: upstream %s posted: %s", name, answer.text.strip()[:200])
            return Outcome(OK, 200)
        reason = _error_text(answer.body)
        if 400 <= answer.status < 500:
            # Retrying the same body cannot help; the file still holds the state.
            return Outcome(REFUSED, answer.status, reason, Counter({f"http_{answer.status}": 1}))
        return Outcome(RETRY, answer.status, reason, Counter(failed=1))

    def fetch(self) -> tuple[bytes, Any]:
        try:
            answer = self._http.request("GET", "/upstreams", retry_dropped=2)
        except (InterfaceDown, NoAnswer) as error:
            raise Unreachable(str(error)) from error
        except TransportError as error:
            raise LiveError(str(error)) from error
        if answer.status != 200:
            raise LiveError(f"GET {self.base_url}/upstreams answered {answer.status}: {_error_text(answer.body)}")
        return digest_of(answer.body), answer.body

    def blocks(self, answer: Any) -> dict[str, Any]:
        try:
            live = json.loads(answer)["upstreams"]
            if not isinstance(live, dict):
                raise TypeError("upstreams is not an object")
        except (ValueError, KeyError, TypeError) as error:
            raise LiveError(f"unreadable GET {self.base_url}/upstreams answer ({error})") from error
        return live

    def drift(self, upstream: Upstream, block: Any) -> str | None:
        want = upstream_document(upstream)
        return None if block == want else f"differs: {_difference(block, want)}"

    def remove(self, name: str) -> Outcome:
        try:
            answer = self._http.request("DELETE", _path(name))
        except (InterfaceDown, NoAnswer) as error:
            return Outcome(UNREACHABLE, detail=str(error))
        except TransportError as error:
            return Outcome(RETRY, detail=str(error))
        if answer.status in (200, 204, 404):
            return Outcome(OK, answer.status)
        log.warning("lua: DELETE %s answered %d (%s)", _path(name), answer.status, _error_text(answer.body))
        return Outcome(RETRY, answer.status, _error_text(answer.body))

    def warnings(self, upstream: Upstream) -> dict[str, str]:
        warnings = {}
        for param in sorted(_unsupported(upstream)):
            warnings[f"param:{param}"] = (f"{param} is not supported by the Lua balancer; it applies only while "
                                          "nginx serves the file's servers itself")
        named = sorted({server.host for server in upstream.servers if not is_ip_literal(server.host)})
        if named:
            every = all(not is_ip_literal(server.host) for server in upstream.servers)
            shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
            warnings["hostnames"] = (
                f"servers named by host ({shown}) are skipped by the Lua balancer, which connects to "
                "addresses only" + ("; every server is one, so every request to it fails (502)" if every else "")
            )
        return warnings

    def panics(self) -> set[str] | None:
        """The upstreams some nginx worker balanced in panic just now (``GET /panic``), or None if unreadable."""
        try:
            answer = self._http.request("GET", "/panic", retry_dropped=1)
            if answer.status != 200:
                return None
            panic = json.loads(answer.body)["panic"]
        except (InterfaceDown, NoAnswer, TransportError, ValueError, KeyError, TypeError):
            return None
        return {name for name, flag in panic.items() if flag is True} if isinstance(panic, dict) else None

    def close(self) -> None:
        self._http.close()


class LuaOutput(PushOutput):
    """Keeps the Lua module's interface at ``base_url`` serving the published upstreams."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        reconcile_interval: float = 5.0,
        reassert_interval: float = 60.0,
        retry_interval: float = 1.0,
        connect_timeout: float = 1.0,
        read_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_body: int = MAX_BODY,
        max_servers: int = MAX_SERVERS,
        max_answer: int = MAX_ANSWER,
        **engine: Any,
    ) -> None:
        adapter = LuaAdapter(
            base_url, token=token, connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_body=max_body, max_servers=max_servers, max_answer=max_answer,
        )
        super().__init__(
            adapter, retry_interval=retry_interval, reconcile_interval=reconcile_interval,
            reassert_interval=reassert_interval, clock=clock, **engine,
        )
        self._lua = adapter
        # Upstreams with a panic_threshold that nginx balanced in panic at the last read.
        self._panic: frozenset[str] = frozenset()

    def reconcile(self) -> dict[str, str]:
        repairs = super().reconcile()
        # With the reconcile's cadence: which upstreams are in panic (for the metric).
        if self._reachable and any(upstream.panic_threshold is not None for upstream in self.desired.values()):
            panics = self._lua.panics()
            if panics is not None:
                self._panic = frozenset(panics)
        return repairs

    def stats(self) -> dict[str, int]:
        stats = super().stats()
        # "panic:NAME" per upstream with a panic_threshold: 1 while nginx balances it in panic
        # (exported as nginx_upstream_reloader_upstream_panic by reloader.status).
        for name, upstream in list(self.desired.items()):
            if upstream.panic_threshold is not None:
                stats[f"panic:{name}"] = int(name in self._panic)
        return stats


def _path(name: str) -> str:
    return f"/upstream/{quote(name, safe='')}"


def _error_text(body: bytes) -> str:
    """The module's reason (its JSON ``error``), or the start of the answer."""
    try:
        return str(json.loads(body).get("error", ""))[:200] or body.decode("utf-8", "replace").strip()[:200]
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace").strip()[:200]


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
