"""One kept-alive HTTP/1.1 connection to a local nginx interface (dyups or the Lua module).

Guarantees of :class:`KeepAliveClient`:

* one request at a time, from one thread; plain ``http.client``, so a POST
  costs a few syscalls, not a trip through a generic HTTP stack;
* a request fails in one of three named ways: :class:`InterfaceDown` (no
  connection could be made), :class:`NoAnswer` (connected, no answer within
  the read timeout), :class:`Dropped` (the connection closed or broke before
  a whole answer), plus :class:`AnswerTooLarge`;
* a body is always sent with Content-Length (dyups needs it); the Host header
  is the URL's own ``host:port`` (the port always shown); ``headers`` (an auth token, say) go with
  every request;
* an answer is never read beyond ``max_answer`` bytes: a process squatting
  the port while nginx is down cannot exhaust the daemon's memory. A longer
  answer raises :class:`AnswerTooLarge`, naming the URL and the cap, and the
  connection is closed;
* an idle kept-alive connection the peer closed (or wrote stray bytes to) is
  never reused.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
from dataclasses import dataclass
from collections.abc import Mapping
from urllib.parse import urlsplit

#: The largest answer read from an interface (a /detail of some 100,000 upstreams fits).
MAX_ANSWER = 64 * 1024 * 1024
# How much of an answer of unknown length is read at a time.
_CHUNK = 1 << 16


class TransportError(Exception):
    """A request got no complete answer; the subclass says how."""


class InterfaceDown(TransportError):
    """No connection could be made at all (refused, unreachable, connect timeout)."""


class NoAnswer(TransportError):
    """Connected and sent, but no answer came within the read timeout."""


class Dropped(TransportError):
    """The connection closed (or broke) before a whole answer came back."""


class AnswerTooLarge(TransportError):
    """The answer is longer than the client reads (see :data:`MAX_ANSWER`)."""


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

    def __init__(
        self,
        base_url: str,
        connect_timeout: float,
        read_timeout: float,
        headers: Mapping[str, str] | None = None,
        max_answer: int = MAX_ANSWER,
    ) -> None:
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
        # The interface's own host:port, always with the port: a local interface
        # may refuse any other Host (browser and DNS-rebinding requests).
        shown = f"[{self._host}]" if ":" in self._host else self._host
        self._headers = {"Host": f"{shown}:{self._port}", **(headers or {})}
        self.max_answer = max_answer
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, path: str, body: bytes | None = None, retry_dropped: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request and read its whole answer; raises a :class:`TransportError` subclass.

        ``retry_dropped`` re-sends on a fresh connection that many times when
        the connection drops (only for requests that may be repeated: reads).
        """
        for attempt in range(retry_dropped + 1):
            try:
                return self._exchange(method, path, body, headers)
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

    def _exchange(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None) -> Answer:
        conn = self._connection()
        target = f"{self._prefix}{path}"
        try:
            # http.client sends Content-Length for a bytes body, and dyups needs it.
            conn.request(method, target, body=body, headers={**self._headers, **(headers or {})})
            response = conn.getresponse()
            data = self._read(response, method, target)
        except TimeoutError as error:
            self.close()
            raise NoAnswer(f"{method} {target}: no answer within {self._read_timeout:g} s") from error
        except AnswerTooLarge:
            self.close()
            raise
        except _BROKEN as error:
            self.close()
            raise Dropped(f"{method} {target}: connection dropped: {_reason(error)}") from error
        if response.will_close:
            self.close()
        return Answer(response.status, data)

    def _read(self, response: http.client.HTTPResponse, method: str, target: str) -> bytes:
        """The whole answer body, never more than ``max_answer`` bytes of it."""
        cap = self.max_answer
        if response.length is not None:
            if response.length > cap:
                raise self._too_large(method, target)
            return response.read()
        # Chunked, or until the peer closes: read in slices, counting.
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > cap:
                raise self._too_large(method, target)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, method: str, target: str) -> AnswerTooLarge:
        return AnswerTooLarge(f"{method} {self.base_url}{target[len(self._prefix):]}: answer larger than "
                              f"{self.max_answer} bytes; not read further")


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
