"""A stand-in for nginx's dyups HTTP interface, faithful to shared/dyups-protocol.md.

The real module cannot be built here, so the daemon's dyups client is tested
against this server. It speaks HTTP/1.1 over raw sockets (so it can send the
bytes real builds send, quirks included), keeps one upstream table per
simulated nginx worker, and models the three builds the protocol page records:

``stable``
    ngx_http_dyups_module b29a7c5 in nginx 1.24. Names match
    case-insensitively. The worker that takes an update applies it at once;
    the others catch up after ``propagation_delay`` (the module's message
    timer) or at once when they serve any interface request. ``/list`` and
    ``/detail`` answer from the worker that took the request.
``tengine``
    Like ``stable``, but names are stored and matched case-sensitively.
``wip``
    The 2020 "keep ups after reload" master: no ``/detail`` and no
    ``GET /upstream/NAME``; ``/list`` prints ``upstream NAME {...}`` blocks in
    hash order from the shared table; POSTed upstreams survive a reload; a
    worker syncs only through the ``$dyups_`` variable (see
    :meth:`DyupsServer.proxy_request`); and the three bugs the page lists.

Routing: like nginx, a connection belongs to one worker for its whole life;
new connections go round-robin over the workers (``route_to`` pins them,
``routing="request"`` spreads every request instead).

Nothing here imports the daemon: the server must judge the client, not
share its code.
"""

from __future__ import annotations

import bisect
import dataclasses
import email.utils
import functools
import heapq
import ipaddress
import os
import random
import re
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote_to_bytes

__all__ = [
    "BodyError",
    "DyupsServer",
    "RequestRecord",
    "ServerSpec",
    "UpstreamSpec",
    "parse_body",
    "parse_size",
    "parse_time",
    "parse_upstream_conf",
    "tokenize",
]

GENERATIONS = ("stable", "tengine", "wip")
FAULTS = ("409", "drop", "500", "drop_after")

_REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}

_SUCCESS = b"success"
_ADD_FAILED = b"add server failed"
_NOT_FOUND_UPS = b"not found uptream"  # sic: the module's spelling
_NO_INTERFACE = b"not support this interface"
_NO_API = b"not support this api"
_TRY_AGAIN = b"wait and try again\n"
_NO_CONTENT = b"no content\n"


# ---------------------------------------------------------------------------
# Body grammar
# ---------------------------------------------------------------------------


class BodyError(ValueError):
    """A body (or upstream file) nginx would refuse; the message is what error.log would say."""


_WS = " \t\r\n"
# A bare word of ordinary characters only: no escape, no variable, no brace. When such a run
# ends the word (at white space, ';', '{' or the end), the general loop in tokenize() would
# walk it character by character to the same end, so the word is taken in one match.
_PLAIN_WORD = re.compile(r"[^ \t\r\n;{}\\$]+")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


def _unescape(raw: str) -> str:
    # nginx's token copy: \" \' \\ \t \r \n are replaced, any other \x is kept as is.
    if "\\" not in raw:
        return raw  # nearly every word: nothing to copy
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[i + 1]])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def tokenize(text: str) -> list[tuple[tuple[str, ...], str]]:
    """Split nginx configuration text into statements, as ngx_conf_read_token does.

    Returns ``(words, terminator)`` pairs; the terminator is ``;``, ``{`` (a
    block opens after ``words``) or ``}`` (a block closes; ``words`` is empty).
    Words are separated by spaces, tabs, CR and LF; ``#`` at the start of a
    word comments out the rest of the line; ``"..."`` and ``'...'`` quote a
    word (and must be followed by white space, ``;`` or ``{``); a backslash
    escapes the next character. Raises BodyError for an empty statement
    (``;`` alone), a ``}`` or ``{`` inside a bare word other than a
    ``${name}`` variable, an unterminated quote, and text that ends inside a
    statement (``server 10.0.0.1:80`` without ``;``).
    """
    stmts: list[tuple[tuple[str, ...], str]] = []
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _WS:
            i += 1
            continue
        if ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if ch == ";":
            if not words:
                raise BodyError('unexpected ";"')
            stmts.append((tuple(words), ";"))
            words = []
            i += 1
            continue
        if ch == "{":
            if not words:
                raise BodyError('unexpected "{"')
            stmts.append((tuple(words), "{"))
            words = []
            i += 1
            continue
        if ch == "}":
            if words:
                raise BodyError('unexpected "}"')
            stmts.append(((), "}"))
            i += 1
            continue
        if ch in "\"'":
            j = i + 1
            while True:
                if j >= n:
                    raise BodyError("unexpected end of file, expecting closing quote")
                if text[j] == "\\" and j + 1 < n:
                    j += 2
                    continue
                if text[j] == ch:
                    break
                j += 1
            words.append(_unescape(text[i + 1 : j]))
            i = j + 1
            if i < n and text[i] not in _WS and text[i] not in ";{":
                raise BodyError(f'unexpected "{text[i]}"')
            continue
        plain = _PLAIN_WORD.match(text, i)
        if plain is not None:
            j = plain.end()
            if j == n or text[j] in _WS or text[j] in ";{":
                words.append(text[i:j])
                i = j
                continue
        # A bare word: ends at white space, ';' or '{' (a '{' right after '$' opens ${name}).
        j = i
        prev_dollar = False
        in_var = False
        while j < n:
            c = text[j]
            if c == "\\" and j + 1 < n:
                j += 2
                prev_dollar = False
                continue
            if c == "{" and prev_dollar:
                in_var = True
                prev_dollar = False
                j += 1
                continue
            if c in _WS or c in ";{":
                break
            if c == "}":
                if not in_var:
                    raise BodyError('unexpected "}"')
                in_var = False
            prev_dollar = c == "$"
            j += 1
        words.append(_unescape(text[i:j]))
        i = j
    if words:
        raise BodyError('unexpected end of file, expecting ";" or "}"')
    return stmts


def _atoi(text: str) -> int | None:
    """ngx_atoi: a non-empty run of ASCII digits, else None."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


_TIME_UNITS = {"y": (1, 365 * 86400), "M": (2, 30 * 86400), "w": (3, 7 * 86400), "d": (4, 86400),
               "h": (5, 3600), "m": (6, 60), "s": (7, 1)}


def parse_time(text: str, is_sec: bool) -> int | None:
    """ngx_parse_time: ``1h30m``, ``10s``, ``500ms``, bare numbers are seconds.

    Returns seconds when ``is_sec`` (then ``ms``, e.g. ``fail_timeout=500ms``,
    is an error), else milliseconds (then ``y`` and ``M`` are errors). Units
    must come in decreasing order; None means nginx would refuse the value.
    """
    step = 0 if is_sec else 2
    total = 0
    value = 0
    valid = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if "0" <= ch <= "9":
            value = value * 10 + (ord(ch) - 48)
            valid = True
            i += 1
            continue
        i += 1
        if ch == "m" and i < n and text[i] == "s":
            if is_sec or step >= 8:
                return None
            i += 1
            step, scale = 8, 1
        elif ch in _TIME_UNITS:
            unit_step, scale = _TIME_UNITS[ch]
            if step >= unit_step:
                return None
            step = unit_step
            if not is_sec:
                scale *= 1000
        else:
            return None
        total += value * scale
        value = 0
        while i < n and text[i] == " ":
            i += 1
    if not valid:
        return None
    total += value if is_sec else value * 1000
    return total if total < 2**63 else None


def parse_size(text: str) -> int | None:
    """ngx_parse_size: digits with an optional k/K, m/M or g/G suffix; None if invalid."""
    if not text:
        return None
    scale = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(text[-1].lower())
    digits = text[:-1] if scale else text
    value = _atoi(digits)
    if value is None:
        return None
    return value * (scale or 1)


class _Resolver:
    """getaddrinfo with a cache shared by every server; ``hosts`` entries win (like /etc/hosts)."""

    _cache: dict[str, tuple[str, ...] | None] = {}
    _lock = threading.Lock()

    def __init__(self, hosts: Mapping[str, Iterable[str]] | None = None) -> None:
        self.hosts = {name.lower(): tuple(ips) for name, ips in (hosts or {}).items()}

    def resolve(self, host: str) -> tuple[str, ...] | None:
        key = host.lower()
        if key in self.hosts:
            return self.hosts[key] or None
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError):
            result: tuple[str, ...] | None = None
        else:
            seen: list[str] = []
            for info in infos:
                ip = str(info[4][0]).split("%", 1)[0]
                if ip not in seen:
                    seen.append(ip)
            result = tuple(seen) or None
        with self._lock:
            self._cache[key] = result
        return result


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")


def _sockaddr_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _parse_port(text: str, url: str) -> int:
    port = _atoi(text)
    if port is None or not 1 <= port <= 65535:
        raise BodyError(f'invalid port in upstream "{url}"')
    return port


def _parse_address(url: str, resolver: _Resolver) -> tuple[str, tuple[str, ...]]:
    """ngx_parse_url for a ``server`` address: (canonical address, resolved "ip:port" names)."""
    if url.startswith("unix:"):
        if len(url) == 5:
            raise BodyError(f'no path in the unix domain socket in upstream "{url}"')
        return url, (url,)
    if url.startswith("["):
        end = url.find("]")
        if end < 0:
            raise BodyError(f'invalid host in upstream "{url}"')
        try:
            addr = ipaddress.IPv6Address(url[1:end])
        except ValueError:
            raise BodyError(f'invalid IPv6 address in upstream "{url}"') from None
        if addr.scope_id:
            raise BodyError(f'invalid IPv6 address in upstream "{url}"')
        rest = url[end + 1 :]
        if rest == "":
            port = 80
        elif rest.startswith(":"):
            port = _parse_port(rest[1:], url)
        else:
            raise BodyError(f'invalid host in upstream "{url}"')
        name = _sockaddr_text(addr.compressed, port)
        return name, (name,)
    if "/" in url or "?" in url:
        raise BodyError(f'invalid host in upstream "{url}"')
    host, sep, port_text = url.partition(":")
    port = _parse_port(port_text, url) if sep else 80
    if not host or host == "*":
        raise BodyError(f'no host in upstream "{url}"')
    if _IPV4.match(host):
        name = f"{host}:{port}"
        return name, (name,)
    ips = resolver.resolve(host)
    if not ips:
        raise BodyError(f'host not found in upstream "{url}"')
    return f"{host.lower()}:{port}", tuple(_sockaddr_text(ip, port) for ip in ips)


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """One parsed ``server`` statement, with nginx's defaults filled in."""

    address: str  # canonical: "10.0.0.1:80", "name:80" (lowercased), "[::1]:80", "unix:/path"
    resolved: tuple[str, ...]  # what nginx connects to: "ip:port" per resolved address
    weight: int = 1
    max_conns: int = 0
    max_fails: int = 1
    fail_timeout: int = 10  # seconds
    backup: bool = False
    down: bool = False
    slow_start: int = 0  # seconds; only with accept_slow_start

    def canonical(self) -> str:
        """``server ADDR`` plus only the parameters that differ from nginx's defaults.

        Order: weight, max_conns, max_fails, fail_timeout (integer seconds),
        slow_start, backup, down. So ``server 10.0.0.1:80 weight=1
        fail_timeout=10s`` and ``server 10.0.0.1`` are both ``server 10.0.0.1:80``.
        """
        parts = ["server", self.address]
        if self.weight != 1:
            parts.append(f"weight={self.weight}")
        if self.max_conns != 0:
            parts.append(f"max_conns={self.max_conns}")
        if self.max_fails != 1:
            parts.append(f"max_fails={self.max_fails}")
        if self.fail_timeout != 10:
            parts.append(f"fail_timeout={self.fail_timeout}")
        if self.slow_start:
            parts.append(f"slow_start={self.slow_start}")
        if self.backup:
            parts.append("backup")
        if self.down:
            parts.append("down")
        return " ".join(parts)

    def detail_line(self) -> str:
        """The line ``GET /detail`` prints for this server (stable and tengine)."""
        return (
            f"server {self.resolved[0]} weight={self.weight} max_conns={self.max_conns} "
            f"max_fails={self.max_fails} fail_timeout={self.fail_timeout} "
            f"backup={int(self.backup)} down={int(self.down)}"
        )


@dataclasses.dataclass(frozen=True)
class UpstreamSpec:
    """An upstream as one worker holds it."""

    name: str  # as last posted (or as written in the file)
    servers: tuple[ServerSpec, ...]
    directives: tuple[str, ...]  # canonical: words joined by one space, no ';'
    body: str  # the body exactly as posted (wip's /list prints it)
    origin: str  # "file" or "api"

    def lines(self) -> tuple[str, ...]:
        return self._lines

    # The spec never changes once parsed, while upstreams() and GET /detail render every
    # upstream of the table on each call: format each one once, when first asked.
    @functools.cached_property
    def _lines(self) -> tuple[str, ...]:
        return tuple(server.canonical() for server in self.servers)

    @functools.cached_property
    def _detail_block(self) -> str:
        """This upstream's block in ``GET /detail``: its name, a line per server, a blank line."""
        return self.name + "\n" + "".join(s.detail_line() + "\n" for s in self.servers) + "\n"


_LB_WITHOUT_BACKUP = ("ip_hash", "hash", "random")


def _build_upstream(
    stmts: Iterable[tuple[tuple[str, ...], str]],
    *,
    allow_variables: bool,
    resolver: _Resolver,
    accept_slow_start: bool,
) -> tuple[tuple[ServerSpec, ...], tuple[str, ...]]:
    servers: list[ServerSpec] = []
    directives: list[str] = []
    lb: str | None = None
    seen: set[str] = set()

    def once(name: str) -> None:
        if name in seen:
            raise BodyError(f'"{name}" directive is duplicate')
        seen.add(name)

    for words, term in stmts:
        if term != ";":
            raise BodyError(f'unexpected "{term}"')
        name, args = words[0], words[1:]
        for k, word in enumerate(words):
            if "$" in word and not (allow_variables and name == "hash" and k == 1):
                raise BodyError(f'variables are not allowed here: "{word}"')
        if name == "server":
            if not args:
                raise BodyError('invalid number of arguments in "server" directive')
            servers.append(_parse_server(args, resolver, accept_slow_start))
            continue
        if name in ("ip_hash", "least_conn"):
            if args:
                raise BodyError(f'invalid number of arguments in "{name}" directive')
            lb = name
        elif name == "random":
            if len(args) > 2 or (args and args[0] != "two") or (len(args) == 2 and args[1] != "least_conn"):
                raise BodyError(f'invalid parameter in "random" directive: {" ".join(args)}')
            lb = name
        elif name == "hash":
            if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1] != "consistent"):
                raise BodyError('invalid parameters in "hash" directive')
            lb = name
        elif name == "keepalive":
            if len(args) != 1 or not _atoi(args[0]):
                raise BodyError(f'invalid value in "keepalive" directive: {" ".join(args)}')
            once(name)
        elif name in ("keepalive_timeout", "keepalive_time"):
            if len(args) != 1 or parse_time(args[0], is_sec=False) is None:
                raise BodyError(f'invalid value in "{name}" directive')
            once(name)
        elif name == "keepalive_requests":
            if len(args) != 1 or _atoi(args[0]) is None:
                raise BodyError('invalid number in "keepalive_requests" directive')
            once(name)
        elif name == "zone":
            if not 1 <= len(args) <= 2 or not args[0]:
                raise BodyError('invalid number of arguments in "zone" directive')
            if len(args) == 2:
                size = parse_size(args[1])
                if size is None:
                    raise BodyError(f'invalid zone size "{args[1]}"')
                if size < 8 * 4096:
                    raise BodyError(f'zone "{args[0]}" is too small')
            once(name)
        else:
            raise BodyError(f'unknown directive "{name}"')
        directives.append(" ".join(words))

    if lb in _LB_WITHOUT_BACKUP and any(server.backup for server in servers):
        raise BodyError(f'invalid parameter "backup": not supported with "{lb}"')
    if not any(not server.backup for server in servers):
        raise BodyError("no servers in upstream")
    return tuple(servers), tuple(directives)


def _parse_server(args: tuple[str, ...], resolver: _Resolver, accept_slow_start: bool) -> ServerSpec:
    address, resolved = _parse_address(args[0], resolver)
    values: dict[str, object] = {}
    for param in args[1:]:
        key, eq, raw = param.partition("=")
        if eq and key in ("weight", "max_fails", "max_conns"):
            number = _atoi(raw)
            if number is None or (key == "weight" and number == 0):
                raise BodyError(f'invalid parameter "{param}"')
            values[key] = number
        elif eq and key == "fail_timeout" or (eq and key == "slow_start" and accept_slow_start):
            seconds = parse_time(raw, is_sec=True)
            if seconds is None:
                raise BodyError(f'invalid parameter "{param}"')
            values[key] = seconds
        elif not eq and param in ("backup", "down"):
            values[param] = True
        else:
            raise BodyError(f'invalid parameter "{param}"')
    return ServerSpec(address, resolved, **values)  # type: ignore[arg-type]


def parse_body(
    text: str,
    *,
    allow_variables: bool = False,
    hosts: Mapping[str, Iterable[str]] | None = None,
    accept_slow_start: bool = False,
) -> tuple[tuple[ServerSpec, ...], tuple[str, ...]]:
    """Validate a dyups POST body the way the module's sandbox update does.

    Grammar (tokens as in :func:`tokenize`; every statement ends with ``;``)::

        body      := statement+
        statement := server | directive
        server    := "server" ADDR param*
        ADDR      := IPv4[:PORT] | "[" IPv6 "]"[:PORT] | HOSTNAME[:PORT] | "unix:" PATH
                     (PORT 1-65535, default 80; a host name must resolve)
        param     := "weight=" N (N >= 1) | "max_fails=" N | "max_conns=" N
                   | "fail_timeout=" TIME (seconds) | "backup" | "down"
                   | "slow_start=" TIME (only with accept_slow_start: nginx Plus)
        directive := "ip_hash" | "least_conn" | "random" ["two" ["least_conn"]]
                   | "hash" KEY ["consistent"] | "keepalive" N (N >= 1)
                   | "keepalive_timeout" TIME | "keepalive_time" TIME
                   | "keepalive_requests" N | "zone" NAME [SIZE (>= 32k)]

    Refused (BodyError): anything else, a statement without ``;``, ``{`` or
    ``}``, a ``$`` anywhere (``allow_variables`` admits one only as the
    ``hash`` key, as in files and on wip), ``backup`` together with
    ip_hash/hash/random, a duplicate keepalive*/zone, and an upstream with no
    non-backup server (nginx: "no servers in upstream"). An empty body has no
    server and is refused too.

    Returns (servers, directives) in the order given.
    """
    return _build_upstream(
        tokenize(text),
        allow_variables=allow_variables,
        resolver=_Resolver(hosts),
        accept_slow_start=accept_slow_start,
    )


def parse_upstream_conf(
    text: str,
    *,
    hosts: Mapping[str, Iterable[str]] | None = None,
    accept_slow_start: bool = False,
) -> list[UpstreamSpec]:
    """Parse a file of ``upstream NAME { ... }`` blocks, as nginx reads an included upstream file.

    Anything but upstream blocks at the top level, nested blocks, a duplicate
    name (case-insensitive, as nginx) or an invalid block body raises BodyError.
    """
    resolver = _Resolver(hosts)
    stmts = tokenize(text)
    result: list[UpstreamSpec] = []
    names: set[str] = set()
    i = 0
    while i < len(stmts):
        words, term = stmts[i]
        if term != "{" or len(words) != 2 or words[0] != "upstream":
            raise BodyError(f"expected an upstream block, got {' '.join(words) or term!r}")
        name = words[1]
        inner: list[tuple[tuple[str, ...], str]] = []
        i += 1
        while i < len(stmts) and stmts[i][1] != "}":
            inner.append(stmts[i])
            i += 1
        if i >= len(stmts):
            raise BodyError('unexpected end of file, expecting "}"')
        i += 1
        if name.lower() in names:
            raise BodyError(f'duplicate upstream "{name}"')
        names.add(name.lower())
        servers, directives = _build_upstream(
            inner, allow_variables=True, resolver=resolver, accept_slow_start=accept_slow_start
        )
        body = "".join(" ".join(words) + ";" for words, _ in inner)
        result.append(UpstreamSpec(name, servers, directives, body, "file"))
    return result


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class RequestRecord:
    """One request the interface received, and what it answered."""

    method: str
    target: str  # the request target as sent, e.g. "/upstream/app%201?x"
    path: str  # percent-decoded, slashes merged, no query: "/upstream/app 1"
    headers: list[tuple[str, str]]
    body: bytes | None  # None: no Content-Length and not chunked
    status: int | None  # None: the connection was dropped without an answer
    response_body: bytes
    worker: int
    connection: int  # serial number of the TCP connection
    time: float  # time.monotonic() when the answer was decided
    fault: str | None = None  # injected or trylock fault that shaped the answer

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class _SlotTable:
    """The module's upstream array (stable, tengine): upstreams in table order, with holes.

    The module keeps its upstreams in an array. A DELETE frees a slot; an
    update deletes the old entry first and stores the new one in the free
    slot with the highest index, or appends when none is free. Lookups match
    names with ``key`` (the build's case folding) and find the first match.

    A plain list reproduces that with a scan per lookup and per update, and
    an update then costs O(upstreams) for the shared table and again for
    every worker. Here a lookup is a dict hit and finding the free slot a
    heap pop, so an update costs O(log holes), whatever the table's size.
    """

    def __init__(self, specs: Iterable[UpstreamSpec], key: Callable[[str], str]) -> None:
        self._key = key
        self._slots: list[UpstreamSpec | None] = []
        # key -> the indices of the live slots with that key, ascending. Nearly always one:
        # only file upstreams can share a key (names differing in case from a mapping, the
        # same name in two files), and then a lookup must find the first, as the module does.
        self._index: dict[str, list[int]] = {}
        # The freed indices, negated: a max-heap. Only add() fills a freed slot, and it takes
        # the largest, so the heap never holds a filled slot and needs no lazy deletion.
        self._free: list[int] = []
        for spec in specs:
            self._slots.append(spec)
            self._index.setdefault(key(spec.name), []).append(len(self._slots) - 1)

    def find(self, name: str) -> UpstreamSpec | None:
        """The first live upstream whose name matches ``name``, as the module's lookup finds it."""
        hits = self._index.get(self._key(name))
        return self._slots[hits[0]] if hits else None

    def find_as_dict(self, name: str) -> UpstreamSpec | None:
        """What ``{s.name: s for s in live()}`` yields first for a key matching ``name``.

        That dict keeps the first position and the last value of each exact
        name, so it is the last slot whose name equals the first match's name.
        """
        hits = self._index.get(self._key(name))
        if not hits:
            return None
        first = self._slots[hits[0]]
        assert first is not None
        for i in reversed(hits):
            spec = self._slots[i]
            assert spec is not None
            if spec.name == first.name:
                return spec
        return first  # not reached: hits[0] itself has that name

    def delete(self, name: str) -> bool:
        """Free the first slot matching ``name``; False if there is none."""
        key = self._key(name)
        hits = self._index.get(key)
        if not hits:
            return False
        idx = hits.pop(0)
        if not hits:
            del self._index[key]
        self._slots[idx] = None
        heapq.heappush(self._free, -idx)
        return True

    def add(self, spec: UpstreamSpec) -> None:
        """Store ``spec``: delete its old entry first, then take the last free slot (or append)."""
        self.delete(spec.name)
        if self._free:
            idx = -heapq.heappop(self._free)
            self._slots[idx] = spec
        else:
            idx = len(self._slots)
            self._slots.append(spec)
        hits = self._index.setdefault(self._key(spec.name), [])
        if hits and hits[-1] > idx:
            bisect.insort(hits, idx)
        else:
            hits.append(idx)

    def live(self) -> list[UpstreamSpec]:
        """The upstreams in table order (holes skipped), as /list, /detail and upstreams() show them."""
        return [spec for spec in self._slots if spec is not None]


@dataclasses.dataclass
class _Worker:
    index: int
    pid: int
    # stable / tengine: the module's upstream array and the messages not read yet.
    slots: _SlotTable
    pending: list[tuple[float, str, str, UpstreamSpec | None]] = dataclasses.field(default_factory=list)
    # wip: the worker's own copy of the dyups table, what it has used, what the bug dropped.
    local: dict[str, UpstreamSpec] = dataclasses.field(default_factory=dict)
    used: set[str] = dataclasses.field(default_factory=set)
    dropped: set[str] = dataclasses.field(default_factory=set)
    broken: bool = False


class _Conn:
    def __init__(self, serial: int, sock: socket.socket, worker: int) -> None:
        self.serial = serial
        self.sock = sock
        self.worker = worker
        self.busy = False
        self.close_after = False
        self.closed = False


class _Gone(Exception):
    """The client went away (or we were told to close)."""


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclasses.dataclass
class _Answer:
    status: int | None  # None = drop the connection, no bytes
    body: bytes = b""
    stray: bytes = b""  # bytes sent after a 204's header (the no-content quirk)
    fault: str | None = None
    drop_after: bool = False


_METHOD = re.compile(r"^[A-Z_-]+$")  # nginx: anything else is "client sent invalid method"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

UpstreamSource = Mapping[str, Iterable[str]] | str | os.PathLike | Callable[[], object] | None


class DyupsServer:
    """A dyups interface on 127.0.0.1 with ``workers`` simulated nginx workers.

    ``file_upstreams`` is what nginx's included files define, read at start,
    reload and restart (a crashed worker's replacement uses the config of the
    last start/reload, as nginx's master does). It may be a mapping of name to
    statement lines (``["server 127.0.0.1:1", "keepalive 8"]``, ``;`` optional),
    a path to a file or a directory of ``*.conf`` files with
    ``upstream NAME {...}`` blocks, or a callable returning either.

    ``hosts`` maps host names to IPs for ``server`` addresses before
    getaddrinfo is asked. Tunable attributes: ``trylock_409_rate``,
    ``propagation_delay``, ``keepalive_requests`` (nginx: 1000),
    ``client_max_body_size`` (nginx: 1m), ``accept_slow_start`` (nginx OSS
    refuses ``slow_start=``; set True to model a build that knows it).
    """

    def __init__(
        self,
        generation: str = "stable",
        workers: int = 2,
        trylock: bool = False,
        file_upstreams: UpstreamSource = None,
        propagation_delay: float = 0.45,
        port: int | None = None,
        *,
        routing: str = "connection",
        hosts: Mapping[str, Iterable[str]] | None = None,
        seed: int | None = 0,
    ) -> None:
        if generation not in GENERATIONS:
            raise ValueError(f"generation must be one of {GENERATIONS}, not {generation!r}")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if trylock and generation == "wip":
            raise ValueError("the wip build has no dyups_trylock (nginx -t: unknown directive)")
        if routing not in ("connection", "request"):
            raise ValueError("routing must be 'connection' or 'request'")
        self.generation = generation
        self.trylock = trylock
        self.trylock_409_rate = 0.02
        self.propagation_delay = propagation_delay
        self.routing = routing
        self.keepalive_requests = 1000
        self.client_max_body_size = 1024 * 1024
        self.accept_slow_start = False
        self.server_header = "Tengine/3.2.0" if generation == "tengine" else "nginx/1.24.0"
        self.requests_log: list[RequestRecord] = []
        self.error_log: list[str] = []
        self.port: int | None = port
        self._resolver = _Resolver(hosts)
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._file_source: UpstreamSource = file_upstreams
        self._files: list[UpstreamSpec] = self._load_files(file_upstreams)
        self._next_pid = 1000
        self._workers = [self._new_worker(i) for i in range(workers)]
        self._shared = self._new_slots()  # stable: every message applied
        self._shm: dict[str, UpstreamSpec] = {}  # wip: the shared dyups table
        self._mutations = 0  # wip: POSTs and DELETEs since the last reload/restart
        self._faults: list[list] = []  # [fault, remaining, method]
        self._pinned: int | None = None
        self._rr = 0
        self._conn_serial = 0
        self._conns: set[_Conn] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._date_cache: tuple[int, str] = (-1, "")  # (second, its Date header value)

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started yet")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Bring the interface up (on the same port as before, if it ran already)."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port or 0))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"dyups-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Take the interface down: the port is freed and refuses connections. State is kept."""
        listener = self._listener
        if listener is None:
            return
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)
        self._listener = None
        self._accept_thread = None
        listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._kill_conn(conn)

    def __enter__(self) -> "DyupsServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.port else "not started"
        return f"<DyupsServer {self.generation} {len(self._workers)} workers {where}>"

    # -- routing -----------------------------------------------------------

    def route_to(self, worker: int | None) -> None:
        """Send new connections (or, with routing="request", every request) to ``worker``; None = round-robin."""
        if worker is not None and not 0 <= worker < len(self._workers):
            raise ValueError(f"no worker {worker}")
        with self._lock:
            self._pinned = worker

    def _pick_worker(self) -> int:
        with self._lock:
            if self._pinned is not None:
                return self._pinned
            worker = self._rr % len(self._workers)
            self._rr += 1
            return worker

    # -- inspection --------------------------------------------------------

    def upstreams(self, worker: int | None = None) -> dict[str, tuple[str, ...]]:
        """Upstream name -> canonical server lines (see ServerSpec.canonical), in table order.

        ``worker=k`` is worker k's live table right now (stable/tengine: the
        messages its timer has read by now; wip: its own synced copy plus the
        file upstreams the bug has not dropped). ``worker=None`` is the table
        every worker converges on: stable/tengine = the files plus every
        update since the last reload/restart; wip = the files overlaid by the
        shared table.
        """
        return {name: spec.lines() for name, spec in self._table(worker).items()}

    def directives(self, name: str, worker: int | None = None) -> tuple[str, ...]:
        """The upstream-level directives of ``name`` (e.g. ("ip_hash", "keepalive 8")); KeyError if absent."""
        return self.spec(name, worker).directives

    def spec(self, name: str, worker: int | None = None) -> UpstreamSpec:
        """The full parsed upstream ``name`` (name matched as the build matches it); KeyError if absent."""
        if self.generation != "wip":
            with self._lock:
                found = self._slots_of(worker).find_as_dict(name)
            if found is None:
                raise KeyError(name)
            return found
        table = self._table(worker)
        key = self._key(name)
        for stored, spec in table.items():
            if self._key(stored) == key:
                return spec
        raise KeyError(name)

    def _table(self, worker: int | None) -> dict[str, UpstreamSpec]:
        with self._lock:
            if self.generation != "wip":
                return {spec.name: spec for spec in self._slots_of(worker).live()}
            table: dict[str, UpstreamSpec] = {}
            if worker is None:
                dyups = self._shm
                dropped: set[str] = set()
            else:
                w = self._workers[worker]
                dyups = w.local
                dropped = w.dropped
            for spec in self._files:
                key = self._key(spec.name)
                if key not in dyups and key not in dropped:
                    table[spec.name] = spec
            for spec in dyups.values():
                table[spec.name] = spec
            return table

    def wait_for(self, predicate: Callable[["DyupsServer"], bool], timeout: float = 10) -> None:
        """Wait until ``predicate(self)`` is true; AssertionError with the state after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {predicate!r}\n{self.describe()}")
            with self._cond:
                self._cond.wait(min(remaining, 0.02))

    def describe(self) -> str:
        """A readable dump of the state, for failure messages."""
        lines = [repr(self)]
        lines.append(f"  converged: {self.upstreams()}")
        for i in range(len(self._workers)):
            lines.append(f"  worker {i}: {self.upstreams(i)}")
        for rec in self.requests_log[-10:]:
            lines.append(f"  {rec.method} {rec.target} -> {rec.status} {rec.response_body[:60]!r} (w{rec.worker})")
        for err in self.error_log[-5:]:
            lines.append(f"  error.log: {err}")
        return "\n".join(lines)

    def clear_log(self) -> None:
        with self._lock:
            self.requests_log.clear()
            self.error_log.clear()

    # -- simulations ---------------------------------------------------------

    def inject(self, fault: str, count: int = 1, method: str = "POST") -> None:
        """Give the next ``count`` requests with ``method`` (or "*" for any) a fault.

        "409": POST answers 409 ``wait and try again\\n``; a DELETE under the
        same lock contention drops the connection (the module's bug), as
        real builds do. "drop": the connection closes with no bytes. "500":
        500 ``add server failed`` (empty body for non-POST). "drop_after": the
        request takes effect, then the connection closes with no answer.
        None of the first three change any state.
        """
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        if fault == "409" and self.generation == "wip":
            raise ValueError("the wip build has no trylock, so no 409")
        with self._lock:
            self._faults.append([fault, count, method.upper()])

    def simulate_reload(self) -> bool:
        """``nginx -s reload``: re-read the files; new workers; idle connections close.

        stable/tengine lose every POSTed upstream; wip keeps its shared table.
        If the files are invalid nginx keeps the old configuration and workers:
        this returns False and records the reason in ``error_log``.
        """
        try:
            files = self._load_files(self._file_source)
        except BodyError as exc:
            with self._lock:
                self.error_log.append(f"reload failed: {exc}")
            return False
        with self._lock:
            self._files = files
            self._reset(keep_shm=True)
        self._close_connections(None)
        return True

    def simulate_restart(self) -> None:
        """A full stop and start of nginx (kept instant: the port stays up). Everything POSTed is lost."""
        files = self._load_files(self._file_source)  # raises BodyError: nginx would not start
        with self._lock:
            self._files = files
            self._reset(keep_shm=False)
        self._close_connections(None)

    def simulate_worker_crash(self, worker: int) -> None:
        """kill -9 of one worker: its replacement starts from the last loaded files only."""
        with self._lock:
            w = self._workers[worker]
            w.pid = self._take_pid()
            w.slots = self._new_slots()
            # Messages the dead worker had not read yet are read by the new one (ngx_dyups_purge_msg).
            w.local = {}
            w.used = set()
            w.dropped = set()
            w.broken = False
            self._cond.notify_all()
        self._close_connections(worker)

    def set_file_upstreams(self, source: UpstreamSource) -> None:
        """Change what the files say; like editing them, it takes effect at the next reload or restart."""
        self._load_files(source)  # validate now, for a readable failure
        with self._lock:
            self._file_source = source

    def set_behind_back(
        self, name: str, servers: Iterable[str], directives: Iterable[str] = (), worker: int = 0
    ) -> None:
        """Change ``name`` as if someone else had POSTed it to ``worker``.

        ``servers`` are "host:port" or full "server host:port weight=2" lines.
        Raises BodyError if nginx would refuse the body.
        """
        statements = [s if s.startswith("server ") else f"server {s}" for s in servers]
        statements += list(directives)
        body = "".join(s.strip().rstrip(";") + ";" for s in statements)
        spec = self._parse(name, body)
        with self._lock:
            if self.generation == "wip":
                self._wip_post(self._workers[worker], spec)
            else:
                self._stable_post(self._workers[worker], spec)
            self._cond.notify_all()

    def delete_behind_back(self, name: str, worker: int = 0) -> bool:
        """Delete ``name`` as if someone else had; False if the worker answered 404."""
        with self._lock:
            if self.generation == "wip":
                ok = self._wip_delete(self._workers[worker], name)
            else:
                ok = self._stable_delete(self._workers[worker], name)
            self._cond.notify_all()
            return ok

    def proxy_request(self, name: str, worker: int = 0, via_dyups_variable: bool = True) -> tuple[str, ...] | None:
        """Route one proxied request for upstream ``name`` on ``worker``.

        Returns the canonical server lines the request would be balanced
        over, or None where nginx would answer 502 (no such upstream, deleted,
        or dropped by the wip file-upstream bug). ``name`` is what the
        variable yields (``$host`` is always lowercase). On wip,
        ``via_dyups_variable`` (``proxy_pass http://$dyups_host``) first syncs
        the worker with the shared table; without it the worker never sees
        other workers' changes.
        """
        with self._lock:
            w = self._workers[worker]
            if self.generation != "wip":
                self._catch_up(w, time.monotonic())
                found = w.slots.find(name)
                return None if found is None else found.lines()
            key = self._key(name)
            if via_dyups_variable:
                w.local = dict(self._shm)
            if key in w.local:
                w.used.add(key)
                return w.local[key].lines()
            for spec in self._files:
                if self._key(spec.name) != key:
                    continue
                if key in w.dropped:
                    return None
                if self._mutations:
                    # Bug: after any POST or DELETE a file-only upstream is dropped at its next request.
                    w.dropped.add(key)
                    self.error_log.append(f"wip bug: file upstream {spec.name!r} dropped from worker {worker}")
                    return None
                return spec.lines()
            return None

    def worker_pids(self) -> list[int]:
        """Fake pids, changing when a worker is replaced (crash, reload, restart)."""
        with self._lock:
            return [w.pid for w in self._workers]

    # -- state machinery ---------------------------------------------------

    def _key(self, name: str) -> str:
        return name if self.generation == "tengine" else name.translate(_ASCII_LOWER)

    def _take_pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def _new_slots(self) -> _SlotTable:
        """A table holding the loaded files' upstreams, as a (re)started worker has."""
        return _SlotTable(self._files, self._key)

    def _slots_of(self, worker: int | None) -> _SlotTable:
        """Worker ``worker``'s table as its timer has it now (None: the converged table)."""
        if worker is None:
            return self._shared
        w = self._workers[worker]
        self._catch_up(w, time.monotonic())
        return w.slots

    def _new_worker(self, index: int) -> _Worker:
        return _Worker(index=index, pid=self._take_pid(), slots=self._new_slots())

    def _reset(self, keep_shm: bool) -> None:
        self._workers = [self._new_worker(i) for i in range(len(self._workers))]
        self._shared = self._new_slots()
        if not keep_shm or self.generation != "wip":
            self._shm = {}
        self._mutations = 0
        self._cond.notify_all()

    def _load_files(self, source: UpstreamSource) -> list[UpstreamSpec]:
        if source is None:
            return []
        if callable(source) and not isinstance(source, (str, os.PathLike)):
            return self._load_files(source())  # type: ignore[arg-type]
        if isinstance(source, Mapping):
            specs = []
            for name, lines in source.items():
                if isinstance(lines, str):
                    raise TypeError("file_upstreams values are lists of statement lines")
                body = "".join(line.strip().rstrip(";") + ";\n" for line in lines)
                try:
                    servers, directives = _build_upstream(
                        tokenize(body), allow_variables=True, resolver=self._resolver,
                        accept_slow_start=getattr(self, "accept_slow_start", False),
                    )
                except BodyError as exc:
                    raise BodyError(f"upstream {name!r}: {exc}") from None
                specs.append(UpstreamSpec(name, servers, directives, body, "file"))
            return specs
        path = Path(source)  # type: ignore[arg-type]
        if path.is_dir():
            files = sorted(path.glob("*.conf"))
        elif path.exists():
            files = [path]
        else:
            files = []
        specs = []
        for file in files:
            specs += parse_upstream_conf(
                file.read_text(encoding="latin-1"), hosts=self._resolver.hosts,
                accept_slow_start=getattr(self, "accept_slow_start", False),
            )
        return specs

    def _parse(self, name: str, body: str) -> UpstreamSpec:
        servers, directives = _build_upstream(
            tokenize(body),
            allow_variables=self.generation == "wip",
            resolver=self._resolver,
            accept_slow_start=self.accept_slow_start,
        )
        return UpstreamSpec(name, servers, directives, body, "api")

    @staticmethod
    def _apply(slots: _SlotTable, op: str, name: str, spec: UpstreamSpec | None) -> bool:
        if op == "delete":
            return slots.delete(name)
        assert spec is not None
        slots.add(spec)  # "upstream delete first"; the new one takes the last free slot
        return True

    def _catch_up(self, w: _Worker, now: float | None) -> None:
        """Apply the messages worker ``w`` has read by ``now`` (None: read them all, as a request does)."""
        done = 0
        for due, op, name, spec in w.pending:
            if now is not None and due > now:
                break
            self._apply(w.slots, op, name, spec)
            done += 1
        if done:
            del w.pending[:done]

    def _broadcast(self, origin: _Worker, op: str, name: str, spec: UpstreamSpec | None) -> None:
        self._apply(self._shared, op, name, spec)
        due = time.monotonic() + self.propagation_delay
        for w in self._workers:
            if w is not origin:
                w.pending.append((due, op, name, spec))

    def _stable_post(self, w: _Worker, spec: UpstreamSpec) -> None:
        self._catch_up(w, None)
        self._apply(w.slots, "add", spec.name, spec)
        self._broadcast(w, "add", spec.name, spec)

    def _stable_delete(self, w: _Worker, name: str) -> bool:
        self._catch_up(w, None)
        if not self._apply(w.slots, "delete", name, None):
            return False
        self._broadcast(w, "delete", name, None)
        return True

    def _wip_post(self, w: _Worker, spec: UpstreamSpec) -> None:
        key = self._key(spec.name)
        self._shm[key] = spec
        w.local[key] = spec
        w.used.add(key)
        self._mutations += 1

    def _wip_delete(self, w: _Worker, name: str) -> bool:
        key = self._key(name)
        # Bug: a worker that has not used the upstream yet answers 404 and the entry stays.
        if key not in self._shm or key not in w.used:
            return False
        del self._shm[key]
        w.local.pop(key, None)
        w.used.discard(key)
        self._mutations += 1
        return True

    # -- network -------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([listener], [], [], 0.02)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                sock, _ = listener.accept()
            except OSError:
                continue
            if self._stopping.is_set():
                sock.close()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conn_serial += 1
                # routing="request" picks per request; -1 = no fixed worker.
                owner = self._pick_worker() if self.routing == "connection" else -1
                conn = _Conn(self._conn_serial, sock, owner)
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name=f"dyups-conn-{conn.serial}", daemon=True
            ).start()

    def _kill_conn(self, conn: _Conn) -> None:
        conn.closed = True
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_connections(self, worker: int | None) -> None:
        """Close the connections of ``worker`` (None: all): idle ones now, busy ones after their answer."""
        with self._lock:
            conns = [c for c in self._conns if worker is None or c.worker in (worker, -1)]
            idle = []
            for conn in conns:
                if conn.busy and (worker is None or conn.worker == -1):
                    conn.close_after = True
                else:
                    idle.append(conn)
        for conn in idle:
            self._kill_conn(conn)

    def _serve(self, conn: _Conn) -> None:
        sock = conn.sock
        reader = _Reader(sock)
        served = 0
        try:
            sock.settimeout(75)  # nginx keepalive_timeout
            while not conn.closed:
                try:
                    head = reader.read_head(8192 * 4)
                except _BadRequest as exc:
                    self._send_error_page(sock, exc.status)
                    return
                if head is None:
                    return
                with self._lock:
                    conn.busy = True
                try:
                    keep = self._handle(conn, reader, head, served)
                except _BadRequest as exc:
                    self._send_error_page(sock, exc.status)
                    return
                served += 1
                with self._lock:
                    conn.busy = False
                    if conn.close_after:
                        keep = False
                if not keep:
                    return
        except (_Gone, OSError):
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._cond.notify_all()
            try:
                sock.close()
            except OSError:
                pass

    def _date(self) -> str:
        """The Date header value for now: formatted once a second, not once an answer."""
        second = int(time.time())
        cached = self._date_cache  # one read: threads replace the tuple whole
        if cached[0] != second:
            # formatdate drops the fraction, so the second formats as the moment itself would.
            cached = self._date_cache = (second, email.utils.formatdate(second, usegmt=True))
        return cached[1]

    def _send_error_page(self, sock: socket.socket, status: int) -> None:
        reason = _REASONS.get(status, "Error")
        page = (
            f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>{self.server_header}</center>\r\n"
            "</body>\r\n</html>\r\n"
        ).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\nServer: {self.server_header}\r\n"
            f"Date: {self._date()}\r\nContent-Type: text/html\r\n"
            f"Content-Length: {len(page)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            sock.sendall(head + page)
            # Lingering close, as nginx does: unread request bytes must not turn into a RST
            # that destroys the answer before the client reads it.
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and sock.recv(65536):
                pass
        except OSError:
            pass

    def _handle(self, conn: _Conn, reader: "_Reader", head: bytes, served: int) -> bool:
        """Read one request's body, answer it; return whether the connection stays open."""
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not _METHOD.match(parts[0]):
            raise _BadRequest(400)
        method, target, version = parts
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400)
            headers.append((name, value.strip()))

        def get(name: str) -> list[str]:
            return [v for k, v in headers if k.lower() == name]

        connection = ",".join(get("connection")).lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        te = get("transfer-encoding")
        cl = get("content-length")
        if te and cl:
            raise _BadRequest(400)
        if te and te[-1].lower() != "chunked":
            raise _BadRequest(501)
        if len(cl) > 1 or (cl and _atoi(cl[0]) is None):
            raise _BadRequest(400)
        expect = any(v.lower() == "100-continue" for v in get("expect"))
        body: bytes | None
        if te:
            if expect:
                conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = reader.read_chunked(self.client_max_body_size)
        elif cl:
            length = int(cl[0])
            if length > self.client_max_body_size:
                raise _BadRequest(413)
            if expect and length:
                conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = reader.read_exact(length)
        else:
            body = None

        path_target = target
        if "://" in path_target:
            rest = path_target.split("://", 1)[1]
            path_target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        if not path_target.startswith("/"):
            raise _BadRequest(400)
        segments = []
        raw_path = unquote_to_bytes(path_target.split("?", 1)[0]).decode("latin-1")
        for seg in raw_path.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                if not segments:
                    raise _BadRequest(400)
                segments.pop()
                continue
            segments.append(seg)
        path = "/" + "/".join(segments)

        worker = self._pick_worker() if self.routing == "request" else conn.worker
        answer = self._dispatch(method, segments, body, worker)
        served += 1
        if served >= self.keepalive_requests:
            keep_alive = False
        record = RequestRecord(
            method=method, target=target, path=path, headers=headers, body=body,
            status=None if answer.drop_after else answer.status, response_body=answer.body,
            worker=worker, connection=conn.serial, time=time.monotonic(), fault=answer.fault,
        )
        if answer.status is None or answer.drop_after:
            with self._lock:
                self.requests_log.append(record)
                self._cond.notify_all()
            self._kill_conn(conn)
            return False
        status = answer.status
        out = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Server: {self.server_header}",
               f"Date: {self._date()}"]
        if status != 204:  # nginx drops Content-Length from a 204
            out.append(f"Content-Length: {len(answer.body)}")
        out.append("Connection: keep-alive" if keep_alive else "Connection: close")
        data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        if method != "HEAD" and status != 204:
            data += answer.body
        data += answer.stray
        with self._lock:
            self.requests_log.append(record)
            self._cond.notify_all()
        conn.sock.sendall(data)
        return keep_alive

    def _take_fault(self, method: str) -> str | None:
        for entry in self._faults:
            fault, remaining, wanted = entry
            if wanted in ("*", method):
                entry[1] = remaining - 1
                if entry[1] <= 0:
                    self._faults.remove(entry)
                return fault
        return None

    def _dispatch(self, method: str, seg: list[str], body: bytes | None, worker: int) -> _Answer:
        with self._lock:
            fault = self._take_fault(method)
        if fault == "drop" or (fault == "409" and method == "DELETE"):
            return _Answer(None, fault=fault)
        if fault == "409":
            return _Answer(409, _TRY_AGAIN, fault=fault)
        if fault == "500":
            return _Answer(500, _ADD_FAILED if method == "POST" else b"", fault=fault)
        answer = self._dispatch_normal(method, seg, body, worker)
        if fault == "drop_after":
            answer.drop_after = True
            answer.fault = fault
        return answer

    def _dispatch_normal(self, method: str, seg: list[str], body: bytes | None, worker: int) -> _Answer:
        is_ups = len(seg) >= 1 and seg[0].lower() == "upstream"
        if method == "GET":
            return self._do_get(seg, worker)
        if method == "DELETE":
            if len(seg) != 2:
                return _Answer(405, _NO_INTERFACE)
            if not is_ups:
                return _Answer(405, _NO_API)
            if self.trylock and self._contended():
                return _Answer(None, fault="trylock")
            with self._lock:
                w = self._workers[worker]
                if self.generation == "wip":
                    ok = self._wip_delete(w, seg[1])
                else:
                    ok = self._stable_delete(w, seg[1])
            return _Answer(200, _SUCCESS) if ok else _Answer(404, _NOT_FOUND_UPS)
        if method != "POST":
            return _Answer(405)
        if body is None:
            # No Content-Length and not chunked: a 204 header, then a body anyway.
            return _Answer(204, stray=_NO_CONTENT)
        if len(seg) != 2:
            return _Answer(404, _NO_INTERFACE)
        if not is_ups:
            return _Answer(404, _NO_API)
        if self.trylock and self._contended():
            return _Answer(409, _TRY_AGAIN, fault="trylock")
        name = seg[1]
        text = body.decode("latin-1")
        with self._lock:
            w = self._workers[worker]
            if self.generation == "wip" and w.broken:
                self.error_log.append(f"worker {worker} is broken by an earlier $variable POST")
                return _Answer(500, _ADD_FAILED)
        try:
            spec = self._parse(name, text)
        except BodyError as exc:
            with self._lock:
                self.error_log.append(f"[dyups] {exc} (upstream {name!r})")
                if self.generation == "wip" and "$" in text:
                    self._workers[worker].broken = True
            return _Answer(500, _ADD_FAILED)
        with self._lock:
            w = self._workers[worker]
            if self.generation == "wip":
                self._wip_post(w, spec)
                if "$" in text:
                    w.broken = True  # Bug: later POSTs to this worker fail until a reload.
            else:
                self._stable_post(w, spec)
        return _Answer(200, _SUCCESS)

    def _contended(self) -> bool:
        with self._lock:
            return self._rng.random() < self.trylock_409_rate

    def _do_get(self, seg: list[str], worker: int) -> _Answer:
        if not seg:
            return _Answer(404)
        what = seg[0].lower()
        with self._lock:
            w = self._workers[worker]
            if self.generation == "wip":
                if what != "list":
                    return _Answer(404)
                entries = sorted(self._shm.items(), key=lambda kv: (zlib.crc32(kv[0].encode("latin-1")), kv[0]))
                text = "".join(f"upstream {spec.name} {{\n{spec.body}\n}}\n" for _, spec in entries)
            else:
                self._catch_up(w, None)  # a GET makes the worker read its messages
                live = w.slots.live()
                if what == "list":
                    text = "".join(f"{spec.name}\n" for spec in live)
                elif what == "detail":
                    text = "".join(spec._detail_block for spec in live)
                elif what == "upstream":
                    if len(seg) != 2:
                        return _Answer(404)
                    found = w.slots.find(seg[1])
                    if found is None:
                        return _Answer(404)
                    text = "".join(f"server {s.resolved[0]}\n" for s in found.servers)
                else:
                    return _Answer(404)
        if not text:
            return _Answer(204)
        return _Answer(200, text.encode("latin-1"))


class _Reader:
    """Buffered reads of HTTP framing from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise _Gone() from None
        if not data:
            raise _Gone()
        self.buf += data

    def read_head(self, limit: int) -> bytes | None:
        """The request line and headers, or None if the client closed between requests."""
        while True:
            # Tolerate blank lines before a request line, as nginx does.
            self.buf = self.buf.lstrip(b"\r\n")
            for sep in (b"\r\n\r\n", b"\n\n"):
                end = self.buf.find(sep)
                if end >= 0:
                    head, self.buf = self.buf[:end], self.buf[end + len(sep) :]
                    return head
            if len(self.buf) > limit:
                raise _BadRequest(400)
            try:
                self._fill()
            except _Gone:
                return None

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > 8192:
                raise _BadRequest(400)
            self._fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def read_chunked(self, limit: int) -> bytes:
        body = b""
        while True:
            size_text = self.read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest(400) from None
            if size < 0:
                raise _BadRequest(400)
            if size == 0:
                while self.read_line():  # trailers
                    pass
                return body
            if len(body) + size > limit:
                raise _BadRequest(413)
            body += self.read_exact(size)
            if self.read_line():
                raise _BadRequest(400)
