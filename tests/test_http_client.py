"""The kept-alive connection to nginx's interfaces (reloader.outputs.http), against scripted raw-socket answers.

Each test has a listener on 127.0.0.1 play one answer byte for byte, the
way nginx, a broken build or a process squatting the port would send it,
and checks what the client makes of it: the answer, the error it names,
and whether the next request goes over the same connection.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from reloader.localenv.tcpproxy import close_socket
from reloader.outputs.http import MAX_ANSWER, AnswerTooLarge, Dropped, InterfaceDown, KeepAliveClient, NoAnswer

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess"


def _read_request(conn: socket.socket, pending: bytearray) -> bytes | None:
    """One whole request (head and Content-Length body) from ``conn``; None at EOF."""
    while b"\r\n\r\n" not in pending:
        data = conn.recv(65536)
        if not data:
            return None
        pending += data
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None
        rest += data
    pending[:] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


class Scripted:
    """Answers the n-th request on any connection with ``answers[n]`` (bytes, or a callable given the socket).

    Records each connection's requests, so a test can tell whether the
    client kept its connection.
    """

    def __init__(self, answers: list[bytes | Callable[[socket.socket], None]]) -> None:
        self._answers = list(answers)
        self.requests: list[tuple[int, bytes]] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._socks.append(conn)
            threading.Thread(target=self._talk, args=(conn, number), daemon=True).start()

    def _talk(self, conn: socket.socket, number: int) -> None:
        pending = bytearray()
        try:
            while (request := _read_request(conn, pending)) is not None:
                with self._lock:
                    self.requests.append((number, request))
                    answer = self._answers.pop(0) if self._answers else OK
                if callable(answer):
                    answer(conn)
                    return
                conn.sendall(answer)
        except OSError:
            pass

    def close(self) -> None:
        close_socket(self._listener)
        with self._lock:
            for sock in self._socks:
                close_socket(sock)


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def make(*answers: bytes | Callable[[socket.socket], None]) -> Scripted:
        servers.append(Scripted(list(answers)))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def client(server: Scripted, read_timeout: float = 2.0, headers: dict[str, str] | None = None,
           max_answer: int = MAX_ANSWER) -> KeepAliveClient:
    return KeepAliveClient(server.url, 1.0, read_timeout, headers=headers, max_answer=max_answer)


def test_a_request_is_sent_whole_with_its_host_and_length(scripted: Callable[..., Scripted]) -> None:
    server = scripted()
    http = client(server, headers={"X-Token": "secret"})
    assert http.request("POST", "/upstream/app1", b"server 10.0.0.1:80;").status == 200
    assert http.request("POST", "/upstream/app2").status == 200
    assert http.request("GET", "/detail").status == 200
    port = server.url.rsplit(":", 1)[1]
    first, empty, get = (request for _, request in server.requests)
    assert first == (f"POST /upstream/app1 HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: 127.0.0.1:{port}\r\n"
                     f"X-Token: secret\r\nContent-Length: 19\r\n\r\nserver 10.0.0.1:80;").encode()
    assert b"\r\nContent-Length: 0\r\n\r\n" in empty, "a POST without a body still says its length"
    assert b"Content-Length" not in get
    assert server.connections == 1, "kept alive"


@pytest.mark.parametrize("target, headers", [
    ("/upstream/a\r\nX-Injected: 1", {}),
    ("/upstream/a b", {}),
    ("/upstream/a", {"X-Token": "a\r\nX-Injected: 1"}),
    ("/upstream/a", {"X Bad": "1"}),
])
def test_a_control_character_in_a_target_or_header_is_refused_before_sending(
    scripted: Callable[..., Scripted], target: str, headers: dict[str, str],
) -> None:
    server = scripted()
    with pytest.raises(ValueError, match="control character"):
        client(server).request("POST", target, b"x", headers=headers)
    assert server.requests == []


@pytest.mark.parametrize("answer, body", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n", b"hello"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
], ids=["length", "chunked", "no-content"])
def test_framed_answers_keep_the_connection(scripted: Callable[..., Scripted], answer: bytes, body: bytes) -> None:
    server = scripted(answer)
    http = client(server)
    got = http.request("GET", "/list")
    assert got.body == body
    assert http.request("GET", "/list").status == 200
    assert server.connections == 1


def test_an_answer_split_across_many_segments_is_read_whole(scripted: Callable[..., Scripted]) -> None:
    body = b"x" * 200_000

    def trickle(conn: socket.socket) -> None:
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        for i in range(0, len(data), 7_001):
            conn.sendall(data[i:i + 7_001])

    server = scripted(trickle)
    assert client(server).request("GET", "/detail").body == body


def test_a_body_that_ends_with_the_connection_is_whole_and_the_next_request_reconnects(
    scripted: Callable[..., Scripted],
) -> None:
    def until_close(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        conn.close()

    server = scripted(until_close)
    http = client(server)
    assert http.request("GET", "/detail").body == b"all of it"
    assert http.request("GET", "/detail").body == b"success"
    assert server.connections == 2


def test_connection_close_is_honoured(scripted: Callable[..., Scripted]) -> None:
    server = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    http = client(server)
    assert http.request("GET", "/list").body == b"ok"
    assert http.request("GET", "/list").body == b"success"
    assert server.connections == 2


def test_bytes_after_a_whole_answer_keep_the_answer_and_end_the_connection(
    scripted: Callable[..., Scripted],
) -> None:
    # dyups' quirk: a 204 header, then a body it did not announce.
    server = scripted(b"HTTP/1.1 204 No Content\r\n\r\nsuccess")
    http = client(server)
    assert http.request("POST", "/upstream/app1", b"server 10.0.0.1:80;").status == 204
    assert http.request("POST", "/upstream/app1", b"server 10.0.0.1:80;").body == b"success"
    assert server.connections == 2, "the stray bytes were never read as the next answer"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"",
], ids=["short-body", "half-a-header", "nothing"])
def test_an_answer_cut_short_is_dropped(scripted: Callable[..., Scripted], answer: bytes) -> None:
    def cut(conn: socket.socket) -> None:
        conn.sendall(answer)
        conn.close()

    server = scripted(cut)
    with pytest.raises(Dropped, match="closed before a whole answer"):
        client(server).request("GET", "/detail")


def test_what_is_not_http_is_dropped_naming_the_request(scripted: Callable[..., Scripted]) -> None:
    server = scripted(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    with pytest.raises(Dropped, match="GET /detail: not an HTTP answer"):
        client(server).request("GET", "/detail")


def test_a_declared_length_over_the_cap_is_refused_before_its_body(scripted: Callable[..., Scripted]) -> None:
    def huge(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        threading.Event().wait(5)  # the body never comes: the client must not wait for it

    server = scripted(huge)
    with pytest.raises(AnswerTooLarge, match="larger than 1000 bytes"):
        client(server, max_answer=1000).request("GET", "/detail")


def test_a_chunked_answer_over_the_cap_is_cut(scripted: Callable[..., Scripted]) -> None:
    server = scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n"
                      + b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n")
    http = client(server, max_answer=1500)
    with pytest.raises(AnswerTooLarge):
        http.request("GET", "/detail")
    assert http.request("GET", "/detail").body == b"success"
    assert server.connections == 2, "the connection of the refused answer was closed"


def test_silence_is_no_answer(scripted: Callable[..., Scripted]) -> None:
    server = scripted(lambda conn: threading.Event().wait(5))
    with pytest.raises(NoAnswer, match="no answer within 0.3 s"):
        client(server, read_timeout=0.3).request("GET", "/detail")


def test_nobody_listening_is_interface_down() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(InterfaceDown, match=f"cannot connect to 127.0.0.1:{port}"):
        KeepAliveClient(f"http://127.0.0.1:{port}", 1.0, 1.0).request("GET", "/detail")


def test_an_idle_connection_the_peer_closed_is_not_reused(scripted: Callable[..., Scripted]) -> None:
    closed = threading.Event()

    def answer_then_close(conn: socket.socket) -> None:
        conn.sendall(OK)
        conn.close()
        closed.set()

    server = scripted(answer_then_close)
    http = client(server)
    assert http.request("GET", "/list").status == 200
    assert closed.wait(5)
    # The peer closed after a keep-alive answer: the next request must not be lost on that socket.
    assert http.request("POST", "/upstream/app1", b"server 10.0.0.1:80;").status == 200
    assert server.connections == 2
