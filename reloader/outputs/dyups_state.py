"""Talk to a dyups interface: one kept-alive HTTP connection, and the live state in the model's terms.

Two API generations exist (see the project's dyups protocol notes):

* stable and Tengine builds answer ``GET /detail`` with blocks of a name line
  and one ``server ADDR weight=1 max_conns=0 ... down=0`` line per server;
* the 2020 master build has no ``/detail`` (404) and its ``GET /list``
  returns whole ``upstream NAME { ... }`` blocks as they were posted.

:class:`KeepAliveClient` is the one connection to the interface (plain
``http.client``: a POST costs a few syscalls, not a trip through a generic
HTTP stack). It never sends a request concurrently with another, says which
way a request failed (:class:`InterfaceDown`: no connection could be made;
:class:`NoAnswer`: connected, no answer in time; :class:`Dropped`: the
connection closed before a whole answer), and always sends Content-Length
with a body.

:class:`LiveStateReader` detects which API it talks to once per connection,
fetches the raw table, and splits it into one text block per upstream
(:func:`split_blocks`), so that a caller can skip parsing the blocks it has
seen before; :func:`parse_block` parses one. :func:`fingerprint` reduces a
server to what both sides can express, so that the desired state and the
live state compare equal exactly when nginx serves what was asked for.
Nothing here is cached at module level: whatever is remembered between
reconcile passes belongs to the caller.
"""

from __future__ import annotations

import http.client
import logging
import re
import select
import socket
import ssl
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

from reloader.durations import parse_duration
from reloader.model import Server
from reloader.readback import ReadbackError, parse_server_statement

log = logging.getLogger(__name__)

# nginx's defaults as /detail prints them; a parameter at its default is the
# same as no parameter at all.
_DEFAULT_PARAMS = {"max_conns": "0", "max_fails": "1", "fail_timeout": "10"}
_TIME_PARAMS = {"fail_timeout", "slow_start"}
_LIST_BLOCK = re.compile(r"upstream\s+(\S+)\s*\{([^{}]*)\}", re.DOTALL)

Fingerprint = tuple[str, int, int, bool, bool, frozenset[tuple[str, str]]]


class LiveStateError(Exception):
    """The live state could not be read or understood."""


def _canonical_value(name: str, value: str) -> str:
    if name in _TIME_PARAMS:
        try:
            seconds = parse_duration(value)
        except ValueError:
            return value
        return str(int(seconds)) if seconds == int(seconds) else repr(seconds)
    return value


def fingerprint(server: Server) -> Fingerprint:
    """What identifies a server line across renderings (defaults dropped, times in seconds)."""
    params = frozenset(
        (name, canonical)
        for name, value in server.params
        if _DEFAULT_PARAMS.get(name) != (canonical := _canonical_value(name, value))
    )
    return (server.host, server.port, server.weight, server.backup, server.down, params)


def fingerprints(servers: Iterable[Server]) -> frozenset[Fingerprint]:
    """The fingerprints of one upstream's servers."""
    return frozenset(fingerprint(server) for server in servers)


def _parse_lines(statements: Iterable[str]) -> tuple[Server, ...]:
    """The servers of the statements that parse.

    A line the daemon cannot parse (``server unix:/run/php/php-fpm.sock`` in an
    upstream it does not manage, say) is left out: it can never belong to a
    managed upstream, whose lines are the daemon's own, and a managed
    upstream that somehow shows one compares as drifted and is re-POSTed.
    """
    servers = []
    for statement in statements:
        try:
            servers.append(parse_server_statement(statement))
        except ReadbackError:
            continue
    return tuple(servers)


def split_blocks(api: str, text: str) -> dict[str, str]:
    """The live table as ``{name: block text}``, unparsed (see :func:`parse_block`).

    A block's text is all that decides its servers, so a block whose text did
    not change since it last compared equal with an unchanged desired state
    need not be parsed again.
    """
    blocks: dict[str, str] = {}
    if not text:
        return blocks
    if api == "detail":
        for block in re.split(r"\n\s*\n", text.strip()):
            name, _, rest = block.strip().partition("\n")
            if name.strip():
                blocks[name.strip()] = rest
    else:
        for name, body in _LIST_BLOCK.findall(text):
            blocks[name] = body
    return blocks


def parse_block(api: str, block: str) -> tuple[Server, ...]:
    """The servers of one block of :func:`split_blocks` (lines the daemon cannot parse left out)."""
    if api == "detail":
        lines = (line.strip() for line in block.splitlines())
        return _parse_lines(line.rstrip(";") for line in lines if line)
    statements = (" ".join(raw.split()) for raw in block.split(";"))
    return _parse_lines(statement for statement in statements if statement.startswith("server "))


def parse_detail(text: str) -> dict[str, tuple[Server, ...]]:
    """Parse a ``GET /detail`` answer (stable, Tengine)."""
    return {name: parse_block("detail", block) for name, block in split_blocks("detail", text).items()}


def parse_list_blocks(text: str) -> dict[str, tuple[Server, ...]]:
    """Parse a ``GET /list`` answer of the 2020 master build (whole blocks)."""
    return {name: parse_block("list", block) for name, block in split_blocks("list", text).items()}


# ---- the connection -------------------------------------------------------------


class TransportError(Exception):
    """A request got no complete answer; the subclass says how."""


class InterfaceDown(TransportError):
    """No connection could be made at all (refused, unreachable, connect timeout)."""


class NoAnswer(TransportError):
    """Connected and sent, but no answer came within the read timeout."""


class Dropped(TransportError):
    """The connection closed (or broke) before a whole answer came back."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


# Errors of a request on an established connection that mean it broke.
_BROKEN = (http.client.HTTPException, ConnectionError, ssl.SSLError, OSError)


class KeepAliveClient:
    """One kept-alive HTTP/1.1 connection to ``base_url``; one request at a time, from one thread."""

    def __init__(self, base_url: str, connect_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes | None = None, retry_dropped: int = 0) -> Answer:
        """Send one request and read its whole answer; raises a :class:`TransportError` subclass.

        ``retry_dropped`` re-sends on a fresh connection that many times when
        the connection drops (only for requests that may be repeated: reads).
        """
        for attempt in range(retry_dropped + 1):
            try:
                return self._exchange(method, path, body)
            except Dropped:
                if attempt == retry_dropped:
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and conn.sock is not None and _readable(conn.sock):
            # An idle kept-alive connection is readable only when the peer closed
            # it (or sent stray bytes): never reuse it for a request.
            self.close()
            conn = None
        if conn is None or conn.sock is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._connect_timeout)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
            try:
                conn.connect()
            except ssl.SSLError as error:
                conn.close()
                raise Dropped(f"TLS handshake with {self._host}:{self._port} failed: {error}") from error
            except OSError as error:  # refused, unreachable, name unknown, connect timeout
                conn.close()
                raise InterfaceDown(f"cannot connect to {self._host}:{self._port}: {_reason(error)}") from error
            assert conn.sock is not None
            conn.sock.settimeout(self._read_timeout)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return conn

    def _exchange(self, method: str, path: str, body: bytes | None) -> Answer:
        conn = self._connection()
        target = f"{self._prefix}{path}"
        try:
            # http.client sends Content-Length for a bytes body, and dyups needs it.
            conn.request(method, target, body=body)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError as error:
            self.close()
            raise NoAnswer(f"{method} {target}: no answer within {self._read_timeout:g} s") from error
        except _BROKEN as error:
            self.close()
            raise Dropped(f"{method} {target}: connection dropped: {_reason(error)}") from error
        if response.will_close:
            self.close()
        return Answer(response.status, data)


def _readable(sock: socket.socket) -> bool:
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


class LiveStateReader:
    """Reads the live upstream table from a dyups interface."""

    def __init__(self, client: KeepAliveClient) -> None:
        self._client = client
        self._base_url = client.base_url
        # "detail" or "list"; None until detected. Forgotten whenever the
        # connection fails, because a restarted nginx may be another build.
        self.api: str | None = None

    def forget_api(self) -> None:
        self.api = None

    def fetch(self) -> tuple[str, str]:
        """The raw live state as (api, text), without parsing it.

        Parsing a large table costs far more than fetching it, so a caller
        compares blocks (:func:`split_blocks`) and parses only those that changed.
        Raises :class:`TransportError` or :class:`LiveStateError`.
        """
        if self.api in (None, "detail"):
            response = self._get("/detail")
            if response.status in (200, 204):
                if self.api is None:
                    log.info("dyups: %s has /detail (stable or Tengine API)", self._base_url)
                self.api = "detail"
                return "detail", response.text if response.status == 200 else ""
            if response.status != 404:
                raise LiveStateError(f"GET /detail answered {response.status}")
            log.info("dyups: %s has no /detail; reading blocks from /list (2020 master API)", self._base_url)
            self.api = "list"
        response = self._get("/list")
        if response.status not in (200, 204):
            raise LiveStateError(f"GET /list answered {response.status}")
        return "list", response.text if response.status == 200 else ""

    @staticmethod
    def parse(api: str, text: str) -> dict[str, tuple[Server, ...]]:
        """Parse what :meth:`fetch` returned, whole."""
        return {name: parse_block(api, block) for name, block in split_blocks(api, text).items()}

    def _get(self, path: str) -> Answer:
        # A kept-alive connection nginx closed meanwhile is retried on a fresh one.
        return self._client.request("GET", path, retry_dropped=2)
