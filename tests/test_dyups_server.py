"""The dyups test server against shared/dyups-protocol.md, row by row.

Everything is checked over real sockets: requests for ordinary exchanges,
raw bytes where the protocol's quirks live in the framing.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.dyups_server import (
    BodyError,
    DyupsServer,
    ServerSpec,
    parse_body,
    parse_size,
    parse_time,
    parse_upstream_conf,
    tokenize,
)

FILES = {"host1": ["server 127.0.0.1:18080"]}
BODY = "server 10.0.0.1:80;server 10.0.0.2:80 weight=2 max_fails=3 fail_timeout=5 backup;"
HOSTS = {"backend.test": ["10.9.8.7"], "dual.test": ["10.0.0.5", "10.0.0.6"]}


@pytest.fixture
def make() -> Iterator[Callable[..., DyupsServer]]:
    servers: list[DyupsServer] = []

    def factory(generation: str = "stable", **kwargs: object) -> DyupsServer:
        kwargs.setdefault("hosts", HOSTS)
        server = DyupsServer(generation, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def stable(make: Callable[..., DyupsServer]) -> DyupsServer:
    return make("stable", file_upstreams=FILES)


def exchange(server: DyupsServer, *messages: bytes, timeout: float = 5) -> bytes:
    """Send raw requests on one connection, half-close, and read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        for message in messages:
            sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def post(server: DyupsServer, name: str, body: str | bytes, **kwargs: object) -> requests.Response:
    return requests.post(f"{server.url}/upstream/{name}", data=body, timeout=5, **kwargs)  # type: ignore[arg-type]


def get(server: DyupsServer, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=5)


def sa(response: requests.Response) -> tuple[int, bytes]:
    return response.status_code, response.content


# ---------------------------------------------------------------------------
# Requests and answers (stable and tengine)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["stable", "tengine"])
def test_post_valid_body(make: Callable[..., DyupsServer], generation: str) -> None:
    server = make(generation)
    response = post(server, "dyhost", BODY)
    assert sa(response) == (200, b"success")
    assert "Content-Type" not in response.headers
    assert server.upstreams() == {
        "dyhost": ("server 10.0.0.1:80", "server 10.0.0.2:80 weight=2 max_fails=3 fail_timeout=5 backup")
    }
    assert server.directives("dyhost") == ()


@pytest.mark.parametrize(
    "directives",
    [["ip_hash"], ["least_conn"], ["keepalive 8"], ["least_conn", "keepalive 16", "keepalive_timeout 30s"]],
)
def test_post_with_upstream_directives(stable: DyupsServer, directives: list[str]) -> None:
    body = "".join(d + ";" for d in directives) + "server 10.0.0.1:80;"
    assert sa(post(stable, "dyhost", body)) == (200, b"success")
    assert stable.directives("dyhost") == tuple(directives)
    assert stable.upstreams()["dyhost"] == ("server 10.0.0.1:80",)


INVALID_BODIES = [
    "garbage",
    "hello world;",
    "server 10.0.0.1:80",  # no ';'
    "server 10.0.0.1:80;server 10.0.0.2:80",  # last one without ';'
    "server 10.0.0.1:99999;",
    "server 10.0.0.1:0;",
    "server 10.0.0.1:;",
    "server 10.0.0.1:80 weight=0;",
    "server 10.0.0.1:80 weight=x;",
    "server 10.0.0.1:80 weight=-1;",
    "server $backend:80;",
    "server 10.0.0.1:80 weight=$w;",
    "server 10.0.0.1:80; hash $remote_addr;",
    "server no-such-host.invalid:80;",
    "server 10.0.0.1:80; }",
    "server 10.0.0.1:80;}",
    "} server 10.0.0.1:80;",
    "server 10.0.0.1:80 {",
    "server 10.0.0.1:80 { }",
    "upstream x { server 10.0.0.1:80; }",
    ";",
    "server 10.0.0.1:80;;",
    "ip_hash;",
    "keepalive 8; least_conn;",
    "server 10.0.0.1:80 backup;",
    "server 10.0.0.1:80 backup; server 10.0.0.2:80 backup;",
    "ip_hash; server 10.0.0.1:80; server 10.0.0.2:80 backup;",
    "server 10.0.0.1:80 backup; server 10.0.0.2:80; hash $x;",
    "server 10.0.0.1:80 bogus;",
    "server 10.0.0.1:80 slow_start=10s;",  # nginx Plus only
    "server 10.0.0.1:80 fail_timeout=500ms;",
    "server 10.0.0.1:80 fail_timeout=;",
    "server 10.0.0.1:80 max_fails=;",
    "server;",
    "server 10.0.0.1:80 10.0.0.2:80;",
    "server 10.0.0.1/80;",
    "server 10.0.0.1:80/path;",
    "server ::1:80;",
    "server [::1;",
    "server [fe80::1%eth0]:80;",
    "server :80;",
    "Server 10.0.0.1:80;",
    "server 10.0.0.1:80; keepalive 0;",
    "server 10.0.0.1:80; keepalive 8; keepalive 8;",
    "server 10.0.0.1:80; keepalive;",
    "server 10.0.0.1:80; ip_hash on;",
    "server 10.0.0.1:80; hash;",
    "server 10.0.0.1:80; hash key inconsistent;",
    "server 10.0.0.1:80; random least_conn;",
    "server 10.0.0.1:80; zone z 1k;",
    "server 10.0.0.1:80; zone z 64x;",
    "server 10.0.0.1:80; proxy_pass http://x;",
    'server "10.0.0.1:80"x;',
    'server "10.0.0.1:80;',
    " \n # only a comment\n",
]


@pytest.mark.parametrize("generation", ["stable", "tengine"])
@pytest.mark.parametrize("body", INVALID_BODIES)
def test_post_invalid_body_changes_nothing(make: Callable[..., DyupsServer], generation: str, body: str) -> None:
    server = make(generation, file_upstreams=FILES)
    assert post(server, "keep", "server 10.0.0.9:80;").status_code == 200
    before = server.upstreams()
    response = post(server, "keep", body)
    assert sa(response) == (500, b"add server failed")
    assert "Content-Type" not in response.headers
    assert sa(post(server, "fresh", body)) == (500, b"add server failed")
    assert server.upstreams() == before
    assert server.error_log, "the reason goes to error.log"


@pytest.mark.parametrize(
    "body",
    [
        "server 10.0.0.1;",  # default port 80
        "server 10.0.0.1:80 weight=1 max_fails=1 fail_timeout=10s max_conns=0;",
        "server\t10.0.0.1:80\n;",
        "server 10.0.0.1:80; # trailing comment",
        '"server" "10.0.0.1:80";',
        "server 10.0.0.1:80;server 10.0.0.2:80 backup;least_conn;",
        "server 10.0.0.1:80 down;",
        "server 10.0.0.1:80; hash key consistent;",
        "server 10.0.0.1:80; random two least_conn;",
        "server 10.0.0.1:80; zone z 64k;",
        "server 10.0.0.1:80; zone z;",
        "server 10.0.0.1:80; keepalive 8; keepalive_requests 100; keepalive_timeout 60s; keepalive_time 1h;",
        "server [::1]:8080;",
        "server unix:/tmp/backend.sock;",
        "server backend.test:8080;",
        "server localhost:8080;",
        "server 10.0.0.1:65535; server 10.0.0.2:1;",
    ],
)
def test_post_accepts_what_nginx_accepts(stable: DyupsServer, body: str) -> None:
    assert sa(post(stable, "ok", body)) == (200, b"success")


def test_empty_body_is_500(stable: DyupsServer) -> None:
    response = post(stable, "dyhost", b"")
    assert response.request.headers["Content-Length"] == "0"
    assert sa(response) == (500, b"add server failed")
    assert "dyhost" not in stable.upstreams()


def test_post_without_content_length_is_204_with_a_stray_body(stable: DyupsServer) -> None:
    request = b"POST /upstream/dyhost HTTP/1.1\r\nHost: x\r\n\r\n"
    data = exchange(stable, request)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"content-length" not in head.lower()
    assert b"content-type" not in head.lower()
    assert rest == b"no content\n"
    assert "dyhost" not in stable.upstreams()


def test_stray_body_corrupts_the_keep_alive_connection(stable: DyupsServer) -> None:
    data = exchange(
        stable,
        b"POST /upstream/dyhost HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 204 ")
    # What a client takes for the next status line is the stray body.
    assert rest.startswith(b"no content\nHTTP/1.1 200 OK\r\n")
    assert rest.endswith(b"\r\n\r\nhost1\n")
    # And it happens on any path: the body check comes before the path check.
    data = exchange(stable, b"POST /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 204 ") and data.endswith(b"\r\n\r\nno content\n")


def test_chunked_post_is_accepted(stable: DyupsServer) -> None:
    def gen() -> Iterator[bytes]:
        yield b"server 10.0.0.1:80;"
        yield b"server 10.0.0.2:80 weight=3;"

    response = requests.post(f"{stable.url}/upstream/chunky", data=gen(), timeout=5)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert sa(response) == (200, b"success")
    assert stable.upstreams()["chunky"] == ("server 10.0.0.1:80", "server 10.0.0.2:80 weight=3")
    data = exchange(
        stable,
        b"POST /upstream/raw HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"7;ext=1\r\nserver \r\nc\r\n10.0.0.3:80;\r\n0\r\nX-Trailer: y\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nsuccess")
    assert stable.upstreams()["raw"] == ("server 10.0.0.3:80",)
    assert stable.requests_log[-1].body == b"server 10.0.0.3:80;"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/upstream", b"not support this interface"),
        ("/upstream/", b"not support this interface"),
        ("/upstream/a/b", b"not support this interface"),
        ("/list", b"not support this interface"),
        ("/other/path", b"not support this api"),
        ("/detail/x", b"not support this api"),
    ],
)
def test_post_to_other_paths_is_404(stable: DyupsServer, path: str, body: bytes) -> None:
    response = requests.post(stable.url + path, data="server 10.0.0.1:80;", timeout=5)
    assert sa(response) == (404, body)
    assert "Content-Type" not in response.headers
    assert set(stable.upstreams()) == {"host1"}


@pytest.mark.parametrize("method", ["PUT", "PATCH", "HEAD", "OPTIONS"])
def test_other_methods_are_405_with_an_empty_body(stable: DyupsServer, method: str) -> None:
    response = requests.request(method, f"{stable.url}/upstream/dyhost", data="server 10.0.0.1:80;", timeout=5)
    assert sa(response) == (405, b"")
    assert response.headers["Content-Length"] == "0"
    assert "dyhost" not in stable.upstreams()


def test_get_list(stable: DyupsServer, make: Callable[..., DyupsServer]) -> None:
    assert sa(post(stable, "dyhost", "server 127.0.0.1:19089;")) == (200, b"success")
    response = get(stable, "/list")
    assert sa(response) == (200, b"host1\ndyhost\n")
    assert "Content-Type" not in response.headers
    empty = make("stable")
    data = exchange(empty, b"GET /list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n") and rest == b""
    assert b"content-length" not in head.lower()


def test_get_detail(stable: DyupsServer, make: Callable[..., DyupsServer]) -> None:
    post(
        stable,
        "dyhost",
        "server 127.0.0.1:19089 backup;"
        " server 127.0.0.1:19090 weight=3 max_conns=7 max_fails=2 fail_timeout=1m down;",
    )
    response = get(stable, "/detail")
    assert response.status_code == 200
    assert "Content-Type" not in response.headers
    assert response.content == (
        b"host1\nserver 127.0.0.1:18080 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n\n"
        b"dyhost\nserver 127.0.0.1:19089 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=1 down=0\n"
        b"server 127.0.0.1:19090 weight=3 max_conns=7 max_fails=2 fail_timeout=60 backup=0 down=1\n\n"
    )
    assert sa(get(make("tengine"), "/detail")) == (204, b"")


def test_get_upstream_name_is_case_insensitive_on_stable(stable: DyupsServer) -> None:
    post(stable, "dyhost", "server 127.0.0.1:19089 weight=5; server backend.test:81; least_conn;")
    for name in ("dyhost", "DYHOST", "DyHost"):
        response = get(stable, f"/upstream/{name}")
        assert sa(response) == (200, b"server 127.0.0.1:19089\nserver 10.9.8.7:81\n")
        assert "Content-Type" not in response.headers
    assert sa(get(stable, "/upstream/host1")) == (200, b"server 127.0.0.1:18080\n")


@pytest.mark.parametrize("path", ["/upstream/unknown", "/upstream", "/upstream/", "/upstream/host1/x", "/foo", "/"])
def test_get_unknown_is_404_with_an_empty_body(stable: DyupsServer, path: str) -> None:
    response = get(stable, path)
    assert sa(response) == (404, b"")
    assert "Content-Type" not in response.headers


def test_delete(stable: DyupsServer) -> None:
    post(stable, "dyhost", "server 127.0.0.1:19089;")
    response = requests.delete(f"{stable.url}/upstream/dyhost", timeout=5)
    assert sa(response) == (200, b"success")
    assert "Content-Type" not in response.headers
    assert "dyhost" not in stable.upstreams()
    assert sa(requests.delete(f"{stable.url}/upstream/dyhost", timeout=5)) == (404, b"not found uptream")
    assert sa(requests.delete(f"{stable.url}/upstream/never", timeout=5)) == (404, b"not found uptream")


@pytest.mark.parametrize(
    ("path", "body"),
    [("/upstream", b"not support this interface"), ("/list", b"not support this interface"),
     ("/upstream/a/b", b"not support this interface"), ("/list/host1", b"not support this api")],
)
def test_delete_on_other_paths_is_405(stable: DyupsServer, path: str, body: bytes) -> None:
    response = requests.delete(stable.url + path, timeout=5)
    assert sa(response) == (405, body)
    assert set(stable.upstreams()) == {"host1"}


def test_api_answers_never_carry_content_type(stable: DyupsServer) -> None:
    post(stable, "a", "server 10.0.0.1:80;")
    responses = [
        post(stable, "b", "server 10.0.0.1:80;"), post(stable, "b", "junk"), get(stable, "/list"),
        get(stable, "/detail"), get(stable, "/upstream/a"), get(stable, "/nothing"),
        requests.delete(f"{stable.url}/upstream/a", timeout=5), requests.delete(f"{stable.url}/upstream/a", timeout=5),
        requests.put(f"{stable.url}/upstream/a", data="x", timeout=5),
    ]
    for response in responses:
        assert "Content-Type" not in response.headers, response.request.method
        assert response.headers["Server"] == "nginx/1.24.0"


# ---------------------------------------------------------------------------
# trylock and fault injection
# ---------------------------------------------------------------------------


def test_trylock_contention_409_on_post_and_silent_drop_on_delete(make: Callable[..., DyupsServer]) -> None:
    server = make("stable", trylock=True, file_upstreams=FILES)
    assert server.trylock_409_rate == 0.02
    server.trylock_409_rate = 1.0
    response = post(server, "dyhost", "server 10.0.0.1:80;")
    assert sa(response) == (409, b"wait and try again\n")
    assert "dyhost" not in server.upstreams()
    data = exchange(server, b"DELETE /upstream/host1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data == b""  # not a single byte
    assert server.requests_log[-1].status is None
    assert "host1" in server.upstreams()
    with pytest.raises(requests.ConnectionError):
        requests.delete(f"{server.url}/upstream/host1", timeout=5)
    server.trylock_409_rate = 0.0
    assert sa(post(server, "dyhost", "server 10.0.0.1:80;")) == (200, b"success")


def test_trylock_rate_is_random_but_reproducible(make: Callable[..., DyupsServer]) -> None:
    server = make("stable", trylock=True)
    server.trylock_409_rate = 0.5
    with requests.Session() as session:
        codes = [session.post(f"{server.url}/upstream/a", data="server 10.0.0.1:80;", timeout=5).status_code
                 for _ in range(40)]
    assert set(codes) == {200, 409}
    again = make("stable", trylock=True)
    again.trylock_409_rate = 0.5
    with requests.Session() as session:
        assert codes == [session.post(f"{again.url}/upstream/a", data="server 10.0.0.1:80;", timeout=5).status_code
                         for _ in range(40)]


def test_no_409_without_trylock(stable: DyupsServer) -> None:
    stable.trylock_409_rate = 1.0
    assert post(stable, "a", "server 10.0.0.1:80;").status_code == 200


def test_injected_faults_are_deterministic(stable: DyupsServer) -> None:
    stable.inject("409", count=2)
    assert sa(post(stable, "a", "server 10.0.0.1:80;")) == (409, b"wait and try again\n")
    assert get(stable, "/list").status_code == 200  # a GET does not consume a POST fault
    assert sa(post(stable, "a", "server 10.0.0.1:80;")) == (409, b"wait and try again\n")
    assert "a" not in stable.upstreams()
    assert sa(post(stable, "a", "server 10.0.0.1:80;")) == (200, b"success")

    stable.inject("drop")
    with pytest.raises(requests.ConnectionError):
        post(stable, "b", "server 10.0.0.1:80;")
    assert "b" not in stable.upstreams()
    assert stable.requests_log[-1].status is None and stable.requests_log[-1].fault == "drop"

    stable.inject("500")
    assert sa(post(stable, "b", "server 10.0.0.1:80;")) == (500, b"add server failed")
    assert "b" not in stable.upstreams()

    stable.inject("drop_after")
    with pytest.raises(requests.ConnectionError):
        post(stable, "b", "server 10.0.0.2:80;")
    assert stable.upstreams()["b"] == ("server 10.0.0.2:80",)  # applied, answer lost

    stable.inject("409", method="DELETE")  # contention on DELETE: a dropped connection
    assert exchange(stable, b"DELETE /upstream/b HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert "b" in stable.upstreams()
    stable.inject("500", method="*")
    assert sa(get(stable, "/list")) == (500, b"")
    assert sa(requests.delete(f"{stable.url}/upstream/b", timeout=5)) == (200, b"success")
    with pytest.raises(ValueError):
        stable.inject("418")


# ---------------------------------------------------------------------------
# State and propagation (stable and tengine)
# ---------------------------------------------------------------------------


def test_other_worker_catches_up_on_its_timer(make: Callable[..., DyupsServer]) -> None:
    server = make("stable", propagation_delay=0.2)
    server.route_to(0)
    start = time.monotonic()
    assert post(server, "app", "server 10.0.0.1:80;").status_code == 200
    assert server.upstreams(0) == {"app": ("server 10.0.0.1:80",)}
    assert server.proxy_request("app", worker=0) == ("server 10.0.0.1:80",)
    if time.monotonic() - start < 0.15:
        assert server.upstreams(1) == {}
        assert server.proxy_request("app", worker=1) is None
    server.wait_for(lambda s: "app" in s.upstreams(1), timeout=2)
    assert time.monotonic() - start >= 0.2
    assert server.proxy_request("app", worker=1) == ("server 10.0.0.1:80",)


def test_a_get_makes_the_worker_catch_up_at_once(make: Callable[..., DyupsServer]) -> None:
    server = make("stable", propagation_delay=60)
    server.route_to(0)
    post(server, "app", "server 10.0.0.1:80;")
    assert server.upstreams(1) == {}
    server.route_to(1)
    assert sa(get(server, "/list")) == (200, b"app\n")
    assert server.upstreams(1) == {"app": ("server 10.0.0.1:80",)}
    assert server.requests_log[-1].worker == 1


def test_an_update_on_a_lagging_worker_reads_the_messages_first(make: Callable[..., DyupsServer]) -> None:
    server = make("stable", propagation_delay=60)
    server.route_to(0)
    post(server, "app", "server 10.0.0.1:80;")
    server.route_to(1)
    assert sa(requests.delete(f"{server.url}/upstream/app", timeout=5)) == (200, b"success")
    assert server.upstreams() == {}
    assert server.upstreams(1) == {}
    assert server.upstreams(0) == {"app": ("server 10.0.0.1:80",)}  # its timer has not fired yet


def test_reload_loses_posted_upstreams_and_restores_files(make: Callable[..., DyupsServer]) -> None:
    files = {"host1": ["server 127.0.0.1:18080"], "host2": ["server 127.0.0.1:18081"]}
    server = make("stable", file_upstreams=files)
    post(server, "dyhost", "server 10.0.0.1:80;")
    post(server, "host1", "server 10.0.0.2:80;")  # replaces the file's host1
    requests.delete(f"{server.url}/upstream/host2", timeout=5)
    assert server.upstreams() == {"host1": ("server 10.0.0.2:80",), "dyhost": ("server 10.0.0.1:80",)}
    pids = server.worker_pids()
    with requests.Session() as session:
        assert session.get(server.url + "/list", timeout=5).status_code == 200
        assert server.simulate_reload() is True
        assert server.worker_pids() != pids
        expected = {"host1": ("server 127.0.0.1:18080",), "host2": ("server 127.0.0.1:18081",)}
        assert server.upstreams() == expected
        assert server.upstreams(0) == expected and server.upstreams(1) == expected
        # The old worker closed the idle keep-alive connection; the client reconnects.
        server.wait_for(lambda s: not s._conns, timeout=2)
        assert session.get(server.url + "/list", timeout=5).content == b"host1\nhost2\n"


def test_restart_loses_posted_upstreams(make: Callable[..., DyupsServer]) -> None:
    for generation in ("stable", "tengine", "wip"):
        server = make(generation, file_upstreams=FILES)
        post(server, "dyhost", "server 10.0.0.1:80;")
        server.simulate_restart()
        assert server.upstreams() == {"host1": ("server 127.0.0.1:18080",)}, generation


def test_reload_rereads_the_files(make: Callable[..., DyupsServer], tmp_path) -> None:
    conf = tmp_path / "ups"
    conf.mkdir()
    (conf / "a.conf").write_text("upstream app {\n    server 10.0.0.1:80;\n    keepalive 4;\n}\n")
    server = make("stable", file_upstreams=conf)
    assert server.upstreams() == {"app": ("server 10.0.0.1:80",)}
    assert server.directives("app") == ("keepalive 4",)
    (conf / "a.conf").write_text("upstream app { server 10.0.0.2:80; }\nupstream web { server 10.0.0.3:80; }\n")
    assert server.upstreams() == {"app": ("server 10.0.0.1:80",)}  # files are read at reload only
    server.simulate_worker_crash(1)
    assert server.upstreams(1) == {"app": ("server 10.0.0.1:80",)}  # the master's config, not the disk
    assert server.simulate_reload() is True
    assert server.upstreams() == {"app": ("server 10.0.0.2:80",), "web": ("server 10.0.0.3:80",)}
    (conf / "a.conf").write_text("upstream app { server 10.0.0.4:99999; }\n")
    assert server.simulate_reload() is False  # nginx keeps the old config
    assert server.upstreams() == {"app": ("server 10.0.0.2:80",), "web": ("server 10.0.0.3:80",)}
    assert "reload failed" in server.error_log[-1]
    server.set_file_upstreams({"x": ["server 10.0.0.5:80"]})
    server.simulate_restart()
    assert server.upstreams() == {"x": ("server 10.0.0.5:80",)}


def test_worker_crash_leaves_workers_out_of_step_until_the_next_post(make: Callable[..., DyupsServer]) -> None:
    server = make("stable", file_upstreams=FILES, propagation_delay=0.05)
    server.route_to(0)
    post(server, "a", "server 10.0.0.1:80;")
    post(server, "b", "server 10.0.0.2:80;")
    server.wait_for(lambda s: s.upstreams(1) == s.upstreams(0), timeout=2)
    server.simulate_worker_crash(1)
    files_only = {"host1": ("server 127.0.0.1:18080",)}
    assert server.upstreams(1) == files_only
    assert server.proxy_request("a", worker=1) is None
    # /detail answers from one worker: worker 0 looks complete, worker 1 shows files only.
    assert b"\na\n" in get(server, "/detail").content
    server.route_to(1)
    assert get(server, "/list").content == b"host1\n"
    # Re-POSTing an upstream heals that upstream only.
    server.route_to(0)
    post(server, "a", "server 10.0.0.1:80;")
    server.wait_for(lambda s: "a" in s.upstreams(1), timeout=2)
    assert "b" not in server.upstreams(1)
    assert server.upstreams(0).keys() == {"host1", "a", "b"}


def test_crash_closes_that_workers_connections(make: Callable[..., DyupsServer]) -> None:
    server = make("stable")
    server.route_to(1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 204")
        server.simulate_worker_crash(1)
        try:
            assert sock.recv(65536) == b""
        except ConnectionResetError:
            pass


def test_file_upstreams_can_be_replaced_and_deleted(make: Callable[..., DyupsServer]) -> None:
    files = {"host1": ["server 127.0.0.1:18080"], "other": ["server 127.0.0.1:18081"]}
    server = make("stable", file_upstreams=files)
    assert post(server, "host1", "server 10.0.0.1:80;").status_code == 200
    assert server.upstreams()["host1"] == ("server 10.0.0.1:80",)
    assert sa(requests.delete(f"{server.url}/upstream/host1", timeout=5)) == (200, b"success")
    server.wait_for(lambda s: all(s.proxy_request("host1", worker=w) is None for w in (0, 1)), timeout=2)
    assert server.upstreams() == {"other": ("server 127.0.0.1:18081",)}  # others untouched
    server.simulate_reload()
    assert server.proxy_request("host1", worker=1) == ("server 127.0.0.1:18080",)


def test_update_keeps_table_order_and_reuses_freed_slots(stable: DyupsServer) -> None:
    for name in ("a", "b", "c"):
        post(stable, name, "server 10.0.0.1:80;")
    post(stable, "b", "server 10.0.0.2:80;")
    assert get(stable, "/list").content == b"host1\na\nb\nc\n"
    requests.delete(f"{stable.url}/upstream/a", timeout=5)
    post(stable, "d", "server 10.0.0.3:80;")
    assert get(stable, "/list").content == b"host1\nd\nb\nc\n"


def test_an_update_deletes_first_and_takes_the_last_free_slot(make: Callable[..., DyupsServer]) -> None:
    # Slots: host1=0 a=1 b=2 c=3 d=4 e=5; freeing b and d leaves holes at 2 and 4.
    for generation, posted_c in (("stable", b"C"), ("tengine", b"c\nC")):
        server = make(generation, file_upstreams=FILES, propagation_delay=60)
        server.route_to(0)
        for name in ("a", "b", "c", "d", "e"):
            post(server, name, "server 10.0.0.1:80;")
        for name in ("b", "d"):
            assert requests.delete(f"{server.url}/upstream/{name}", timeout=5).status_code == 200
        # stable: "C" is c, deleted first (a hole at 3), then stored in the last hole, 4.
        # tengine: "C" is a new name; c stays and "C" still takes hole 4.
        post(server, "C", "server 10.0.0.2:80;")
        post(server, "x", "server 10.0.0.3:80;")  # the last hole left: 3 (stable) or 2 (tengine)
        post(server, "y", "server 10.0.0.4:80;")  # stable: hole 2; tengine: no hole, appended
        post(server, "z", "server 10.0.0.5:80;")  # no hole left: appended
        if generation == "stable":
            expected = b"host1\na\ny\nx\nC\ne\nz\n"
        else:
            expected = b"host1\na\nx\n" + posted_c + b"\ne\ny\nz\n"
        assert get(server, "/list").content == expected, generation
        # Worker 1 reads the same messages in the same order, so it builds the same table.
        server.route_to(1)
        assert get(server, "/list").content == expected, generation
        assert "\n".join(server.upstreams()).encode() + b"\n" == expected, generation


_Slot = tuple[str, str]  # (name, server address) as the reference array holds it


def _reference_find(slots: list[_Slot | None], name: str, fold: bool) -> int | None:
    """The module's lookup, written the plain way: the first live slot whose name matches."""
    key = name.lower() if fold else name
    for i, slot in enumerate(slots):
        if slot is not None and (slot[0].lower() if fold else slot[0]) == key:
            return i
    return None


def _reference_apply(slots: list[_Slot | None], op: str, slot: _Slot, fold: bool) -> bool:
    """The module's update: delete first, then the last free slot, else append."""
    idx = _reference_find(slots, slot[0], fold)
    if op == "delete":
        if idx is None:
            return False
        slots[idx] = None
        return True
    if idx is not None:
        slots[idx] = None
    free = [i for i, s in enumerate(slots) if s is None]
    if free:
        slots[free[-1]] = slot
    else:
        slots.append(slot)
    return True


@pytest.mark.parametrize("generation", ["stable", "tengine"])
def test_table_order_matches_a_plain_array_after_random_updates(
    make: Callable[..., DyupsServer], generation: str
) -> None:
    # Two file upstreams that differ only in case: stable holds both, and finds the first.
    files = {"host1": ["server 127.0.0.1:18080"], "Dup": ["server 127.0.0.1:18081"],
             "dup": ["server 127.0.0.1:18082"]}
    initial: list[_Slot | None] = [(name, lines[0].split()[1]) for name, lines in files.items()]
    server = make(generation, file_upstreams=files, propagation_delay=60)
    fold = generation == "stable"
    rng = random.Random(7)
    names = ["a", "A", "b", "B", "c", "d", "e", "dup", "DUP", "host1"]
    # Per worker: its array and the messages it has not read (the timer never fires here).
    workers: list[tuple[list[_Slot | None], list[tuple[str, _Slot]]]] = [(list(initial), []) for _ in range(2)]

    def catch_up(w: int) -> list[_Slot | None]:
        slots, pending = workers[w]
        for op, slot in pending:
            _reference_apply(slots, op, slot, fold)
        pending.clear()
        return slots

    def listing(slots: list[_Slot | None]) -> bytes:
        return "".join(f"{s[0]}\n" for s in slots if s is not None).encode()

    for step in range(300):
        w = rng.randrange(2)
        server.route_to(w)
        roll = rng.random()
        name = rng.choice(names)
        if roll < 0.03:
            server.simulate_worker_crash(w)
            workers[w] = (list(initial), workers[w][1])  # unread messages survive the crash
        elif roll < 0.1:
            slots = catch_up(w)  # a GET makes the worker read its messages
            assert get(server, "/list").content == listing(slots), step
        elif roll < 0.15:
            slots = catch_up(w)
            idx = _reference_find(slots, name, fold)
            hit = None if idx is None else slots[idx]
            found = (404, b"") if hit is None else (200, f"server {hit[1]}\n".encode())
            assert sa(get(server, f"/upstream/{name}")) == found, step
        else:
            op = "delete" if roll < 0.4 else "add"
            slot = (name, f"10.0.0.{step % 250 + 1}:80")
            ok = _reference_apply(catch_up(w), op, slot, fold)
            if ok:
                workers[1 - w][1].append((op, slot))
            if op == "delete":
                response = requests.delete(f"{server.url}/upstream/{name}", timeout=5)
                assert sa(response) == ((200, b"success") if ok else (404, b"not found uptream")), step
            else:
                assert sa(post(server, name, f"server {slot[1]};")) == (200, b"success"), step
    for w in (0, 1):
        server.route_to(w)
        slots = catch_up(w)
        assert get(server, "/list").content == listing(slots)
        for name in names:
            idx = _reference_find(slots, name, fold)
            hit = None if idx is None else slots[idx]
            lines = None if hit is None else (f"server {hit[1]}",)
            assert server.proxy_request(name, worker=w) == lines, name


def test_stable_names_are_case_insensitive(stable: DyupsServer) -> None:
    stable.route_to(0)
    post(stable, "MyApp", "server 10.0.0.1:80;")
    post(stable, "myapp", "server 10.0.0.2:80;")
    assert stable.upstreams() == {"host1": ("server 127.0.0.1:18080",), "myapp": ("server 10.0.0.2:80",)}
    assert stable.proxy_request("myapp") == ("server 10.0.0.2:80",)
    assert sa(get(stable, "/upstream/MYAPP")) == (200, b"server 10.0.0.2:80\n")
    assert sa(requests.delete(f"{stable.url}/upstream/MyApp", timeout=5)) == (200, b"success")
    assert sa(requests.delete(f"{stable.url}/UPSTREAM/HOST1", timeout=5)) == (200, b"success")


def test_tengine_names_are_case_sensitive(make: Callable[..., DyupsServer]) -> None:
    server = make("tengine")
    post(server, "MyApp", "server 10.0.0.1:80;")
    post(server, "myapp", "server 10.0.0.2:80;")
    assert server.upstreams() == {"MyApp": ("server 10.0.0.1:80",), "myapp": ("server 10.0.0.2:80",)}
    assert sa(get(server, "/upstream/MYAPP")) == (404, b"")
    assert sa(get(server, "/upstream/MyApp")) == (200, b"server 10.0.0.1:80\n")
    requests.delete(f"{server.url}/upstream/myapp", timeout=5)
    # $host is lowercase, so "MyApp" cannot be reached by proxy.
    assert server.proxy_request("myapp") is None
    assert get(server, "/list").headers["Server"] == "Tengine/3.2.0"


@pytest.mark.parametrize("raw", ["a%20b", "a;b", "a%7Bb", "a%7Db"])
def test_names_are_not_validated(stable: DyupsServer, raw: str) -> None:
    response = requests.post(f"{stable.url}/upstream/{raw}", data="server 10.0.0.1:80;", timeout=5)
    assert sa(response) == (200, b"success")
    name = requests.utils.unquote(raw)
    assert stable.upstreams()[name] == ("server 10.0.0.1:80",)
    assert name.encode() + b"\n" in get(stable, "/list").content


# ---------------------------------------------------------------------------
# The wip build
# ---------------------------------------------------------------------------


def wip_list(server: DyupsServer) -> requests.Response:
    return get(server, "/list")


def test_wip_has_no_detail_and_no_get_upstream(make: Callable[..., DyupsServer]) -> None:
    server = make("wip", file_upstreams=FILES)
    post(server, "app", "server 10.0.0.1:80;")
    assert sa(get(server, "/detail")) == (404, b"")
    assert sa(get(server, "/upstream/app")) == (404, b"")
    assert sa(get(server, "/upstream/host1")) == (404, b"")


def test_wip_list_prints_blocks_in_hash_order(make: Callable[..., DyupsServer]) -> None:
    names = ["alpha", "beta", "gamma", "delta", "epsilon"]
    first = make("wip", file_upstreams=FILES)
    assert sa(wip_list(first)) == (204, b"")  # file upstreams are not in the shared table
    for name in names:
        assert sa(post(first, name, "server 10.0.0.1:80;server 10.0.0.2:81 weight=2;")) == (200, b"success")
    response = wip_list(first)
    assert response.status_code == 200 and "Content-Type" not in response.headers
    blocks = response.content.decode().split("}\n")
    assert blocks[-1] == ""
    body = "server 10.0.0.1:80;server 10.0.0.2:81 weight=2;"
    assert sorted(blocks[:-1]) == sorted(f"upstream {n} {{\n{body}\n" for n in names)
    order = [block.split(" ")[1] for block in blocks[:-1]]
    assert order != names and order != sorted(names)
    second = make("wip")
    for name in reversed(names):
        post(second, name, "server 10.0.0.1:80;server 10.0.0.2:81 weight=2;")
    assert wip_list(second).content == response.content  # hash order, not insertion order
    for name in names:
        assert requests.delete(f"{first.url}/upstream/{name}", timeout=5).status_code in (200, 404)


def test_wip_list_prints_the_body_as_posted(make: Callable[..., DyupsServer]) -> None:
    server = make("wip")
    post(server, "app", "server 10.0.0.1:80;\n  keepalive 8;")
    assert wip_list(server).content == b"upstream app {\nserver 10.0.0.1:80;\n  keepalive 8;\n}\n"
    assert server.directives("app") == ("keepalive 8",)


def test_wip_posted_upstreams_survive_reload_but_not_restart(make: Callable[..., DyupsServer]) -> None:
    server = make("wip", file_upstreams=FILES)
    post(server, "app", "server 10.0.0.1:80;")
    assert server.simulate_reload()
    assert server.upstreams()["app"] == ("server 10.0.0.1:80",)
    assert wip_list(server).content == b"upstream app {\nserver 10.0.0.1:80;\n}\n"
    assert server.proxy_request("app", worker=1) == ("server 10.0.0.1:80",)
    server.simulate_restart()
    assert sa(wip_list(server)) == (204, b"")
    assert server.upstreams() == {"host1": ("server 127.0.0.1:18080",)}


def test_wip_workers_sync_only_through_the_dyups_variable(make: Callable[..., DyupsServer]) -> None:
    server = make("wip")
    server.route_to(0)
    post(server, "app", "server 10.0.0.1:80;")
    assert server.upstreams(0) == {"app": ("server 10.0.0.1:80",)}
    assert server.upstreams(1) == {}
    server.route_to(1)
    wip_list(server)  # the interface reads the shared table; the worker stays behind
    assert server.upstreams(1) == {}
    assert server.proxy_request("app", worker=1, via_dyups_variable=False) is None
    assert server.proxy_request("app", worker=1) == ("server 10.0.0.1:80",)
    assert server.upstreams(1) == {"app": ("server 10.0.0.1:80",)}


def test_wip_bug_file_upstreams_dropped_after_any_update(make: Callable[..., DyupsServer]) -> None:
    server = make("wip", file_upstreams=FILES)
    assert server.proxy_request("host1", worker=0) == ("server 127.0.0.1:18080",)
    post(server, "app", "server 10.0.0.1:80;")
    assert server.proxy_request("host1", worker=0) is None  # 502
    assert server.proxy_request("host1", worker=0) is None
    assert server.proxy_request("host1", worker=1) is None
    assert "host1" not in server.upstreams(0)
    server.simulate_reload()
    assert server.proxy_request("host1", worker=0) == ("server 127.0.0.1:18080",)
    # The workaround: POST the file-defined upstream through the interface too.
    post(server, "host1", "server 127.0.0.1:18080;")
    post(server, "other", "server 10.0.0.2:80;")
    assert server.proxy_request("host1", worker=1) == ("server 127.0.0.1:18080",)
    # Once the last dyups upstream is gone, every request for a file upstream fails.
    server.simulate_reload()
    server.route_to(0)
    for name in ("app", "host1", "other"):
        server.proxy_request(name, worker=0)
        assert requests.delete(f"{server.url}/upstream/{name}", timeout=5).status_code == 200
    assert sa(wip_list(server)) == (204, b"")
    assert server.proxy_request("host1", worker=0) is None
    assert server.proxy_request("host1", worker=1) is None


def test_wip_bug_delete_on_a_worker_that_has_not_used_the_upstream(make: Callable[..., DyupsServer]) -> None:
    server = make("wip")
    server.route_to(0)
    post(server, "app", "server 10.0.0.1:80;")
    server.route_to(1)
    assert sa(requests.delete(f"{server.url}/upstream/app", timeout=5)) == (404, b"not found uptream")
    assert b"upstream app {" in wip_list(server).content  # the entry stays
    server.proxy_request("app", worker=1)
    assert sa(requests.delete(f"{server.url}/upstream/app", timeout=5)) == (200, b"success")
    assert sa(wip_list(server)) == (204, b"")
    assert sa(requests.delete(f"{server.url}/upstream/app", timeout=5)) == (404, b"not found uptream")
    # After a reload no worker has used anything yet.
    server.route_to(0)
    post(server, "app", "server 10.0.0.1:80;")
    server.simulate_reload()
    assert requests.delete(f"{server.url}/upstream/app", timeout=5).status_code == 404


def test_wip_bug_variable_breaks_that_workers_posts_until_reload(make: Callable[..., DyupsServer]) -> None:
    server = make("wip")
    server.route_to(0)
    assert sa(post(server, "app", "server 10.0.0.1:80; hash $remote_addr consistent;")) == (200, b"success")
    assert server.directives("app") == ("hash $remote_addr consistent",)
    assert sa(post(server, "web", "server 10.0.0.2:80;")) == (500, b"add server failed")
    assert "web" not in server.upstreams()
    server.route_to(1)
    assert sa(post(server, "web", "server 10.0.0.2:80;")) == (200, b"success")
    assert sa(post(server, "bad", "server $x:80;")) == (500, b"add server failed")  # refused, and breaks worker 1
    assert sa(post(server, "web", "server 10.0.0.3:80;")) == (500, b"add server failed")
    server.simulate_reload()
    for worker in (0, 1):
        server.route_to(worker)
        assert sa(post(server, "web", f"server 10.0.0.{worker + 4}:80;")) == (200, b"success")
    # stable refuses the same body outright and stays healthy.
    stable = make("stable")
    stable.route_to(0)
    assert post(stable, "app", "server 10.0.0.1:80; hash $remote_addr;").status_code == 500
    assert post(stable, "web", "server 10.0.0.2:80;").status_code == 200


def test_wip_has_no_trylock(make: Callable[..., DyupsServer]) -> None:
    with pytest.raises(ValueError):
        DyupsServer("wip", trylock=True)
    server = make("wip")
    with pytest.raises(ValueError):
        server.inject("409")
    server.trylock_409_rate = 1.0
    assert post(server, "a", "server 10.0.0.1:80;").status_code == 200
    server.inject("drop")
    with pytest.raises(requests.ConnectionError):
        post(server, "a", "server 10.0.0.1:80;")


def test_wip_other_answers_match_stable(make: Callable[..., DyupsServer]) -> None:
    server = make("wip")
    assert sa(post(server, "a", "junk")) == (500, b"add server failed")
    assert sa(requests.post(f"{server.url}/upstream/a/b", data="x", timeout=5)) == (404, b"not support this interface")
    assert sa(requests.post(f"{server.url}/other/a", data="x", timeout=5)) == (404, b"not support this api")
    assert sa(requests.delete(f"{server.url}/upstream/none", timeout=5)) == (404, b"not found uptream")
    assert sa(requests.put(f"{server.url}/upstream/a", data="x", timeout=5)) == (405, b"")


# ---------------------------------------------------------------------------
# The interface itself
# ---------------------------------------------------------------------------


def test_stop_refuses_connections_and_start_reuses_the_port(stable: DyupsServer) -> None:
    post(stable, "app", "server 10.0.0.1:80;")
    port = stable.port
    with requests.Session() as session:
        session.get(stable.url + "/list", timeout=5)
        stable.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with pytest.raises(requests.ConnectionError):
            session.get(f"http://127.0.0.1:{port}/list", timeout=2)
        stable.start()
        assert stable.port == port
        assert session.get(stable.url + "/list", timeout=5).content == b"host1\napp\n"  # state kept


def test_keep_alive_connections_are_reused_and_routed_to_one_worker(make: Callable[..., DyupsServer]) -> None:
    server = make("stable", workers=4)
    with requests.Session() as session:
        for i in range(5):
            response = session.post(f"{server.url}/upstream/a{i}", data="server 10.0.0.1:80;", timeout=5)
            assert response.status_code == 200
    assert len({rec.connection for rec in server.requests_log}) == 1
    assert len({rec.worker for rec in server.requests_log}) == 1
    for _ in range(4):
        get(server, "/list")
    assert {rec.worker for rec in server.requests_log[-4:]} == {0, 1, 2, 3}  # new connections: round-robin
    spread = make("stable", workers=3, routing="request")
    with requests.Session() as session:
        for _ in range(3):
            session.get(spread.url + "/list", timeout=5)
    assert [rec.worker for rec in spread.requests_log] == [0, 1, 2]


def test_http_framing(stable: DyupsServer) -> None:
    data = exchange(stable, b"GET /list HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in data
    data = exchange(stable, b"GET /list HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert data.count(b"HTTP/1.1 200 OK") == 3 and data.count(b"Connection: keep-alive") == 3
    data = exchange(stable, b"get /list HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    data = exchange(
        stable,
        b"POST /upstream/e HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n",
        b"server 10.0.0.1:80;",
    )
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    data = exchange(stable, b"GET //upstream/./x/../host1?a=b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.endswith(b"\r\n\r\nserver 127.0.0.1:18080\n")
    assert stable.requests_log[-1].path == "/upstream/host1"
    stable.keepalive_requests = 2
    data = exchange(stable, b"GET /list HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.endswith(b"Connection: close\r\n\r\nhost1\ne\n")
    stable.client_max_body_size = 10
    assert post(stable, "big", "server 10.0.0.1:80;").status_code == 413


def test_requests_log_records_everything(stable: DyupsServer) -> None:
    stable.route_to(1)
    post(stable, "app", "server 10.0.0.1:80;", headers={"X-Test": "1"})
    rec = stable.requests_log[-1]
    assert (rec.method, rec.path, rec.target) == ("POST", "/upstream/app", "/upstream/app")
    assert (rec.status, rec.worker) == (200, 1)
    assert rec.body == b"server 10.0.0.1:80;" and rec.response_body == b"success"
    assert rec.header("x-test") == "1" and rec.header("content-length") == "19"
    stable.clear_log()
    assert stable.requests_log == []


def test_set_behind_back_and_wait_for(make: Callable[..., DyupsServer]) -> None:
    server = make("stable", propagation_delay=0.05)
    server.set_behind_back("app", ["10.0.0.1:80", "server 10.0.0.2:80 weight=2"], directives=["least_conn"])
    assert server.upstreams() == {"app": ("server 10.0.0.1:80", "server 10.0.0.2:80 weight=2")}
    assert server.directives("app") == ("least_conn",)
    assert get(server, "/upstream/app").content == b"server 10.0.0.1:80\nserver 10.0.0.2:80\n"
    server.wait_for(lambda s: "app" in s.upstreams(1), timeout=2)
    with pytest.raises(BodyError):
        server.set_behind_back("app", ["10.0.0.1:0"])
    assert server.delete_behind_back("app") is True
    assert server.delete_behind_back("app") is False
    with pytest.raises(AssertionError, match="timed out"):
        server.wait_for(lambda s: "never" in s.upstreams(), timeout=0.1)


# ---------------------------------------------------------------------------
# The grammar
# ---------------------------------------------------------------------------


def test_parse_body_canonical_forms() -> None:
    servers, directives = parse_body(
        "server 10.0.0.1 weight=1 fail_timeout=10s;  server [0:0::1]:81 weight=2 down;"
        " server backend.test:8080 max_fails=0 fail_timeout=1m30s max_conns=5 backup; keepalive   8;",
        hosts=HOSTS,
    )
    assert [s.canonical() for s in servers] == [
        "server 10.0.0.1:80",
        "server [::1]:81 weight=2 down",
        "server backend.test:8080 max_conns=5 max_fails=0 fail_timeout=90 backup",
    ]
    assert servers[2].resolved == ("10.9.8.7:8080",)
    assert directives == ("keepalive 8",)
    (dual,), _ = parse_body("server DUAL.test;", hosts=HOSTS)
    assert dual == ServerSpec("dual.test:80", ("10.0.0.5:80", "10.0.0.6:80"))
    assert dual.detail_line().startswith("server 10.0.0.5:80 weight=1")


def test_tokenizer_follows_nginx() -> None:
    assert tokenize('a "b c" \'d;\' e\\;f;# x;\n g;') == [(("a", "b c", "d;", "e\\;f"), ";"), (("g",), ";")]
    assert tokenize("hash ${a}b;") == [(("hash", "${a}b"), ";")]
    assert tokenize("upstream x { y; }") == [(("upstream", "x"), "{"), (("y",), ";"), ((), "}")]
    for bad in ("a", ";", "a b}", '"a', '"a"b;', "{"):
        with pytest.raises(BodyError):
            tokenize(bad)


def test_time_and_size_values() -> None:
    assert parse_time("10", True) == 10
    assert parse_time("10s", True) == 10
    assert parse_time("1m30s", True) == 90
    assert parse_time("1h", True) == 3600
    assert parse_time("500ms", True) is None
    assert parse_time("500ms", False) == 500
    assert parse_time("2s", False) == 2000
    assert parse_time("1y", False) is None
    assert parse_time("30s1m", True) is None
    assert parse_time("", True) is None
    assert parse_time("s", True) is None
    assert parse_size("64k") == 65536 and parse_size("1M") == 1048576 and parse_size("x") is None


def test_parse_upstream_conf() -> None:
    specs = parse_upstream_conf(
        "# managed\nupstream a {\n  server 10.0.0.1:80 weight=2;\n  hash $request_uri consistent;\n}\n"
        "upstream b { server 10.0.0.2:80; }\n"
    )
    assert [(s.name, s.lines(), s.directives) for s in specs] == [
        ("a", ("server 10.0.0.1:80 weight=2",), ("hash $request_uri consistent",)),
        ("b", ("server 10.0.0.2:80",), ()),
    ]
    for bad in ("upstream a { }", "server 10.0.0.1:80;", "upstream a { server 10.0.0.1:80; ",
                "upstream a { server 10.0.0.1:80; } upstream A { server 10.0.0.1:80; }"):
        with pytest.raises(BodyError):
            parse_upstream_conf(bad)


def test_slow_start_only_where_the_build_knows_it(stable: DyupsServer) -> None:
    assert post(stable, "a", "server 10.0.0.1:80 slow_start=30s;").status_code == 500
    stable.accept_slow_start = True
    assert post(stable, "a", "server 10.0.0.1:80 slow_start=30s;").status_code == 200
    assert stable.upstreams()["a"] == ("server 10.0.0.1:80 slow_start=30",)
