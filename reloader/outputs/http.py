"""One kept-alive HTTP/1.1 connection to a local nginx interface (dyups or the Lua module).

Guarantees of :class:`KeepAliveClient`:

* one request at a time, from one thread; a request goes out in one
  ``sendall`` and its answer is parsed by ``httptools`` (a binding of
  llhttp, the parser that descends from nginx's own): an idle re-assert of
  1,000 upstreams is 1,000 POSTs, and ``http.client``'s header parsing cost
  more than the rest of each POST together;
* a request fails in one of three named ways: :class:`InterfaceDown` (no
  connection could be made), :class:`NoAnswer` (connected, no answer within
  the read timeout), :class:`Dropped` (the connection closed or broke before
  a whole answer, or what came back is not HTTP), plus :class:`AnswerTooLarge`;
* a body is always sent with Content-Length (dyups needs it), as is an
  empty one for POST, PUT and PATCH; the Host header is the URL's own
  ``host:port`` (the port always shown); ``headers`` (an auth token, say)
  go with every request; a target or a header with a control character is
  refused (ValueError) before anything is sent;
* an answer is never read beyond ``max_answer`` bytes: a process squatting
  the port while nginx is down cannot exhaust the daemon's memory. A longer
  answer raises :class:`AnswerTooLarge`, naming the URL and the cap, and the
  connection is closed;
* an idle kept-alive connection the peer closed (or wrote stray bytes to) is
  never reused, and neither is one whose answer was followed by bytes it did
  not announce (dyups' 204 quirk), or that said it would close.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
from dataclasses import dataclass
from collections.abc import Mapping
from urllib.parse import urlsplit

import httptools

#: The largest answer read from an interface (a /detail of some 100,000 upstreams fits).
MAX_ANSWER = 64 * 1024 * 1024
# How much of an answer is read at a time.
_CHUNK = 1 << 16
# Methods whose request carries a Content-Length even without a body (as Python's http.client sends them).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# What may not appear in a request line or a header: it would end the line (request splitting).
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_HEADER_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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
_BROKEN = (ConnectionError, ssl.SSLError, OSError)


class _Reading:
    """The parser's callbacks for one answer: its body (up to the cap) and how it ended."""

    __slots__ = ("cap", "chunks", "size", "too_large", "headers_done", "framed", "complete", "keep_alive", "parser")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.headers_done = False
        # A Content-Length or a chunked body: without either the body ends when the peer closes.
        self.framed = False
        self.complete = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.framed = True
            if value.strip().isdigit() and int(value) > self.cap:
                self.too_large = True  # refused before its body is read
        elif name == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.cap:
            self.too_large = True
        elif not self.too_large:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked now: the parser forgets the answer's keep-alive once it moves past it.
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()


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
        self._sock: socket.socket | None = None
        self._buffer = bytearray(_CHUNK)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def request(
        self, method: str, path: str, body: bytes | None = None, retry_dropped: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request and read its whole answer; raises a :class:`TransportError` subclass.

        ``retry_dropped`` re-sends on a fresh connection that many times when
        the connection drops (only for requests that may be repeated: reads).
        """
        target = f"{self._prefix}{path}"
        message = self._message(method, target, body, headers)
        for attempt in range(retry_dropped + 1):
            try:
                return self._exchange(message, method, target)
            except Dropped:
                if attempt == retry_dropped:
                    raise
        raise AssertionError("unreachable")

    def _message(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str] | None) -> bytes:
        """The whole request, header and body, as one buffer (one send, one segment on loopback)."""
        if _CONTROL.search(method) or _CONTROL.search(target):
            raise ValueError(f"refusing to send a request line with a control character: {method} {target!r}")
        lines = [f"{method} {target} HTTP/1.1", "Accept-Encoding: identity"]
        for name, value in {**self._headers, **(headers or {})}.items():
            if _CONTROL.search(name) or _HEADER_VALUE_CONTROL.search(value):
                raise ValueError(f"refusing to send header {name!r}: it holds a control character")
            lines.append(f"{name}: {value}")
        if body is not None or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + body if body else head

    def _connection(self) -> socket.socket:
        sock = self._sock
        if sock is not None and _readable(sock):
            # An idle kept-alive connection is readable only when the peer closed
            # it (or sent stray bytes): never reuse it for a request.
            self.close()
            sock = None
        if sock is None:
            try:
                sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
            except OSError as error:  # refused, unreachable, name unknown, connect timeout
                raise InterfaceDown(f"cannot connect to {self._host}:{self._port}: {_reason(error)}") from error
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._https:
                    context = ssl.create_default_context()
                    context.set_alpn_protocols(["http/1.1"])
                    sock = context.wrap_socket(sock, server_hostname=self._host)
            except ssl.SSLError as error:
                sock.close()
                raise Dropped(f"TLS handshake with {self._host}:{self._port} failed: {error}") from error
            except OSError as error:
                sock.close()
                raise InterfaceDown(f"cannot connect to {self._host}:{self._port}: {_reason(error)}") from error
            sock.settimeout(self._read_timeout)
            self._sock = sock
        return sock

    def _exchange(self, message: bytes, method: str, target: str) -> Answer:
        sock = self._connection()
        try:
            sock.sendall(message)
            answer, keep = self._receive(sock, method, target)
        except (TimeoutError, socket.timeout) as error:
            self.close()
            raise NoAnswer(f"{method} {target}: no answer within {self._read_timeout:g} s") from error
        except (AnswerTooLarge, Dropped):
            self.close()
            raise
        except _BROKEN as error:
            self.close()
            raise Dropped(f"{method} {target}: connection dropped: {_reason(error)}") from error
        if not keep:
            self.close()
        return answer

    def _receive(self, sock: socket.socket, method: str, target: str) -> tuple[Answer, bool]:
        """The whole answer, never more than ``max_answer`` bytes of its body; and whether to keep the connection."""
        reading = _Reading(self.max_answer)
        parser = reading.parser = httptools.HttpResponseParser(reading)
        view = memoryview(self._buffer)
        keep = True
        while not reading.complete:
            count = sock.recv_into(view)
            if count == 0:
                if reading.headers_done and not reading.framed:
                    break  # a body that ends where the connection does
                raise Dropped(f"{method} {target}: connection closed before a whole answer")
            try:
                parser.feed_data(view[:count])
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
                if not reading.complete:
                    raise Dropped(f"{method} {target}: not an HTTP answer ({error})") from error
                # Bytes after a whole answer that it did not announce: the
                # answer stands, the connection is not to be trusted again.
                keep = False
            if reading.too_large:
                raise self._too_large(method, target)
        # A body that ended with the connection never completes in the parser.
        keep = keep and reading.complete and reading.keep_alive
        return Answer(parser.get_status_code(), b"".join(reading.chunks)), keep

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
