"""The Lua module in real nginx (Debian's nginx + libnginx-mod-http-lua), two workers.

Covers the interface (validation, hostile input), propagation to every
worker without a timer, smooth weighted round robin, down and backup
servers, passive health checks, and what survives a reload, a killed worker
and a full restart. Backends are real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import requests

from reloader.localenv.backends import Backend
from reloader.localenv.luanginx import LuaNginx, lua_missing
from reloader.localenv.nginx import server_block
from reloader.localenv.ports import free_port
from reloader.model import Server, Upstream
from reloader.nginx import LUA_DIR, MAX_BODY, MAX_SERVERS, MAX_UPSTREAMS
from reloader.render import render_file_lua
from tests.conftest import require

# The front server: new connections spread over both workers (reuseport),
# every answer names the worker and the peers nginx tried. HTTP/1.0 to the
# backends (nginx's default): http.server answers in two writes, which on a
# kept-alive connection waits for a delayed ACK, 40 ms a request.
FRONT = """
location / {{
    proxy_pass http://{name};
    proxy_connect_timeout 1s;
    add_header X-Upstream $upstream_addr always;
    header_filter_by_lua_block {{ ngx.header["X-Worker"] = ngx.worker.id() }}
}}
"""


class Rig:
    """One nginx with the Lua module, its backends and a client for the interface."""

    def __init__(self, tmp: Path, dict_size: str = "16m") -> None:
        self.backends = [Backend(f"b{i}") for i in range(1, 7)]
        for backend in self.backends:
            backend.start()
        self.upstream_dir = tmp / "upstreams"
        self.upstream_dir.mkdir()
        # "app" lists b1 and b2 in its file; "flaky" (b5, b6) is for the health tests.
        self.write_file("app", self.backends[0], self.backends[1])
        self.write_file("flaky", self.backends[4], self.backends[5])
        # Only loaded, so that nginx -t proves the Lua-mode file takes keepalive and backup.
        kept = Upstream(
            "kept",
            (Server("127.0.0.1", self.backends[0].port), Server("127.0.0.1", self.backends[1].port, backup=True)),
            ("keepalive 8", "keepalive_timeout 30s"),
        )
        (self.upstream_dir / "kept.upstream").write_text(render_file_lua(kept))
        self.nginx = LuaNginx(free_port(), self.upstream_dir, workdir=tmp / "nginx", dict_size=dict_size)
        self.ports = {"app": free_port(), "flaky": free_port()}
        body = "".join(
            server_block(port, FRONT.format(name=name)).replace(
                f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port} reuseport;"
            )
            for name, port in self.ports.items()
        )
        self.nginx.write_config(body)
        self.nginx.start()
        self.http = requests.Session()
        self.http.trust_env = False
        self.token = self.nginx.token()
        self.http.headers["X-Reloader-Token"] = self.token

    def write_file(self, name: str, *backends: Backend) -> None:
        upstream = Upstream(name, tuple(Server("127.0.0.1", b.port) for b in backends))
        (self.upstream_dir / f"{name}.upstream").write_text(render_file_lua(upstream))

    def by_port(self, port: int) -> Backend:
        return next(b for b in self.backends if b.port == port)

    def post(self, name: str, body: Any) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.http.post(f"{self.nginx.api_url}/upstream/{name}", data=data, timeout=5,
                              headers={"Content-Type": "application/json"})

    def state(self, name: str) -> Any:
        answer = self.http.get(f"{self.nginx.api_url}/upstream/{name}", timeout=5)
        return answer.json() if answer.status_code == 200 else answer.status_code

    def close(self) -> None:
        self.http.close()
        self.nginx.close()
        for backend in self.backends:
            backend.stop()


def servers(*entries: tuple[Backend, dict[str, Any]] | Backend) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        backend, extra = entry if isinstance(entry, tuple) else (entry, {})
        out.append({"host": "127.0.0.1", "port": backend.port, **extra})
    return out


def update(*entries: tuple[Backend, dict[str, Any]] | Backend) -> dict[str, Any]:
    return {"version": 1, "servers": servers(*entries)}


def fresh_get(port: int) -> tuple[int, str, str, str]:
    """One GET on a new connection: (status, body, worker id, X-Upstream)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: front\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), body.decode().strip(), headers.get("X-Worker", ""), headers.get("X-Upstream", "")


def poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, nginx_bin: str) -> Iterator[Rig]:
    require(lua_missing())
    rig = Rig(tmp_path_factory.mktemp("lua"))
    yield rig
    rig.close()


def test_file_servers_serve_until_the_first_post(rig: Rig) -> None:
    rig.nginx.restart()
    seen = {fresh_get(rig.ports["app"])[1] for _ in range(20)}
    assert seen == {"b1", "b2"}


def test_post_reaches_every_worker_at_once(rig: Rig, record_property: Callable[[str, object], None]) -> None:
    b1, b2, b3, b4 = rig.backends[:4]
    port = rig.ports["app"]
    assert rig.post("app", update(b1, b2)).status_code == 200
    # One kept-alive connection per worker, each warmed on the old set (so
    # each worker has built local state that must now be dropped). Opening
    # them first keeps connection set-up out of the measurement.
    by_worker: dict[str, HTTPConnection] = {}

    def one_per_worker() -> bool:
        conn = HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.read().decode().strip() in {"b1", "b2"}
        worker = response.getheader("X-Worker", "")
        if worker in by_worker:
            conn.close()
        else:
            by_worker[worker] = conn
        return len(by_worker) == 2

    try:
        poll(one_per_worker, 5, "a connection to each worker")
        answer = rig.post("app", update(b3, b4))
        answered = time.monotonic()
        assert answer.status_code == 200, answer.text
        seen: dict[str, tuple[str, float]] = {}
        for worker, conn in by_worker.items():
            conn.request("GET", "/")
            response = conn.getresponse()
            seen[worker] = (response.read().decode().strip(), time.monotonic() - answered)
    finally:
        for conn in by_worker.values():
            conn.close()
    slowest = max(took for _, took in seen.values())
    record_property("all_workers_ms", round(slowest * 1000, 2))
    print(f"every worker served the new set {slowest * 1000:.1f} ms after the POST's answer")
    assert all(body in {"b3", "b4"} for body, _ in seen.values()), seen
    assert slowest < 0.05, seen
    # And on new connections, spread over the workers: not one answer from the old set.
    assert {fresh_get(port)[1] for _ in range(20)} <= {"b3", "b4"}


def test_weights_share_within_two_percent(rig: Rig) -> None:
    b1, b2, b3 = rig.backends[:3]
    weights = {b1.name: 1, b2.name: 3, b3.name: 6}
    assert rig.post("app", update((b1, {"weight": 1}), (b2, {"weight": 3}), (b3, {"weight": 6}))).status_code == 200
    counts: Counter[str] = Counter()
    # Smooth weighted round robin is exact per worker up to one request a peer: 2,000 requests bound
    # the shares far tighter than 2 % (a random balancer would need many more).
    total = 2_000
    # Keep-alive connections, opened anew every 500 requests so both workers take part.
    done = 0
    while done < total:
        conn = HTTPConnection("127.0.0.1", rig.ports["app"], timeout=5)
        for _ in range(min(500, total - done)):
            conn.request("GET", "/")
            response = conn.getresponse()
            counts[response.read().decode().strip()] += 1
            done += 1
        conn.close()
    shares = {name: counts[name] / total for name in weights}
    print(f"weight shares over {total:,} requests:", {name: f"{share:.4f}" for name, share in shares.items()})
    for name, weight in weights.items():
        share = shares[name]
        assert abs(share - weight / 10) < 0.02, (name, share, counts)


def test_down_and_backup_servers(rig: Rig) -> None:
    b1, b2, b3 = rig.backends[:3]
    assert rig.post("app", update((b1, {"down": True}), b2)).status_code == 200
    assert {fresh_get(rig.ports["app"])[1] for _ in range(20)} == {"b2"}

    # Backups only while every primary is unusable.
    assert rig.post("app", update(b1, b2, (b3, {"backup": True}))).status_code == 200
    assert {fresh_get(rig.ports["app"])[1] for _ in range(30)} == {"b1", "b2"}
    assert rig.post("app", update((b1, {"down": True}), (b2, {"down": True}), (b3, {"backup": True}))).status_code == 200
    assert {fresh_get(rig.ports["app"])[1] for _ in range(20)} == {"b3"}

    # Every server down: 502, as nginx answers with no live upstream.
    assert rig.post("app", update((b1, {"down": True}))).status_code == 200
    assert fresh_get(rig.ports["app"])[0] == 502


def test_killed_backend_is_skipped_then_returns(rig: Rig) -> None:
    b5, b6 = rig.backends[4:6]
    port = rig.ports["flaky"]
    health = {"max_fails": 1, "fail_timeout": 1}
    assert rig.post("flaky", update((b5, health), (b6, health))).status_code == 200
    assert {fresh_get(port)[1] for _ in range(20)} == {"b5", "b6"}

    b6.stop()
    try:
        began = time.monotonic()
        results = [fresh_get(port) for _ in range(40)]
        elapsed = time.monotonic() - began
        # Every request still succeeds: the failed attempt is retried on b5.
        assert all(status == 200 and body == "b5" for status, body, _, _ in results), results
        retried = [r for r in results if "," in r[3]]
        if elapsed < health["fail_timeout"]:
            # One failure per worker marks b6 down for fail_timeout (max_fails 1).
            assert 1 <= len(retried) <= 2, retried
    finally:
        b6.start()
    before = b6.requests
    # Back after fail_timeout.
    poll(lambda: fresh_get(port)[1] == "b6" or b6.requests > before, 3 * health["fail_timeout"] + 2, "b6 back")


def test_retry_stops_with_502_when_no_untried_server_is_left(rig: Rig) -> None:
    b5 = rig.backends[4]
    dead = Backend("dead")  # never started: connection refused
    assert rig.post("flaky", update((dead, {"max_fails": 0}), (b5, {"down": True}))).status_code == 200
    status, _, _, tried = fresh_get(rig.ports["flaky"])
    # nginx repeats the last peer's name in $upstream_addr for the "no live
    # upstreams" step; the dead server is the only one ever tried.
    assert status == 502 and set(tried.split(", ")) == {dead.address}, tried


def test_reload_and_killed_worker_keep_the_state(rig: Rig) -> None:
    b3, b4 = rig.backends[2:4]
    assert rig.post("app", update(b3, b4)).status_code == 200
    rig.nginx.reload()
    assert {fresh_get(rig.ports["app"])[1] for _ in range(20)} == {"b3", "b4"}

    victim = min(rig.nginx.worker_pids())
    os.kill(victim, signal.SIGKILL)
    poll(
        lambda: victim not in rig.nginx.worker_pids() and len(rig.nginx.worker_pids()) == 2,
        10,
        "the master to replace the killed worker",
    )
    workers: set[str] = set()
    bodies: set[str] = set()

    def both_seen() -> bool:
        _, body, worker, _ = fresh_get(rig.ports["app"])
        workers.add(worker)
        bodies.add(body)
        return len(workers) == 2

    poll(both_seen, 5, "both workers")
    # The new worker starts its round robin afresh, so a couple of answers may all be b3.
    assert bodies <= {"b3", "b4"}
    assert {fresh_get(rig.ports["app"])[1] for _ in range(20)} == {"b3", "b4"}


def test_restart_falls_back_to_the_file_servers(rig: Rig) -> None:
    b3, b4 = rig.backends[2:4]
    assert rig.post("app", update(b3, b4)).status_code == 200
    rig.nginx.restart()
    assert rig.state("app") == 404
    assert {fresh_get(rig.ports["app"])[1] for _ in range(20)} == {"b1", "b2"}


HOSTILE: list[tuple[str, bytes, int]] = [
    ("bad json", b'{"version": 1, "servers": [', 400),
    ("not an object", b"[1, 2]", 400),
    ("wrong version", b'{"version": 2, "servers": []}', 400),
    ("unknown field", b'{"version": 1, "servers": [], "extra": 1}', 400),
    ("servers not a list", b'{"version": 1, "servers": {"host": "127.0.0.1"}}', 400),
    ("port as string", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": "80"}]}', 400),
    ("port out of range", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": 70000}]}', 400),
    ("fractional port", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": 80.5}]}', 400),
    ("weight zero", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": 80, "weight": 0}]}', 400),
    ("down as string", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": 80, "down": "no"}]}', 400),
    ("host with ;", b'{"version": 1, "servers": [{"host": "127.0.0.1;", "port": 80}]}', 400),
    ("host with braces", b'{"version": 1, "servers": [{"host": "a}b", "port": 80}]}', 400),
    ("host with space", b'{"version": 1, "servers": [{"host": "a b", "port": 80}]}', 400),
    ("host not a string", b'{"version": 1, "servers": [{"host": 1, "port": 80}]}', 400),
    ("only backups", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": 80, "backup": true}]}', 400),
    ("no servers", b'{"version": 1, "servers": []}', 400),
    ("NaN", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": NaN}]}', 400),
    ("empty body", b"", 400),
    ("slow_start window 0", b'{"version": 1, "slow_start": {"window": 0, "min_weight": 0.1, "aggression": 1},'
     b' "servers": [{"host": "127.0.0.1", "port": 80}]}', 400),
    ("slow_start min_weight 0", b'{"version": 1, "slow_start": {"window": 5, "min_weight": 0, "aggression": 1},'
     b' "servers": [{"host": "127.0.0.1", "port": 80}]}', 400),
    ("slow_start missing aggression", b'{"version": 1, "slow_start": {"window": 5, "min_weight": 0.1},'
     b' "servers": [{"host": "127.0.0.1", "port": 80}]}', 400),
    ("slow_start extra field", b'{"version": 1, "slow_start": {"window": 5, "min_weight": 0.1, "aggression": 1,'
     b' "x": 1}, "servers": [{"host": "127.0.0.1", "port": 80}]}', 400),
    ("added negative", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": 80, "added": -1}]}', 400),
    ("added string", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": 80, "added": "now"}]}', 400),
    ("added far future", b'{"version": 1, "servers": [{"host": "127.0.0.1", "port": 80, "added": 1e12}]}', 400),
    ("panic_threshold above 1", b'{"version": 1, "panic_threshold": 2,'
     b' "servers": [{"host": "127.0.0.1", "port": 80}]}', 400),
    ("1 MB body", b'{"version": 1, "servers": [' + b" " * (1 << 20) + b"]}", 413),
]


@pytest.mark.parametrize(("what", "body", "status"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_update_is_refused_and_changes_nothing(rig: Rig, what: str, body: bytes, status: int) -> None:
    b1, b2 = rig.backends[:2]
    good = update(b1, b2)
    assert rig.post("app", good).status_code == 200
    before = rig.state("app")
    answer = rig.post("app", body)
    assert answer.status_code == status, answer.text
    assert "error" in answer.json()
    assert rig.state("app") == before
    assert {fresh_get(rig.ports["app"])[1] for _ in range(6)} == {"b1", "b2"}


def test_chunked_body_over_the_cap_is_413(rig: Rig) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 10_000 + 2):
            yield b" " * 10_000

    answer = rig.http.post(f"{rig.nginx.api_url}/upstream/app", data=chunks(), timeout=5,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "error" in answer.json()


def test_paths_methods_and_names(rig: Rig) -> None:
    api = rig.nginx.api_url
    assert rig.http.get(f"{api}/nope", timeout=5).status_code == 404
    assert rig.http.get(f"{api}/upstream/never-posted", timeout=5).status_code == 404
    json_type = {"Content-Type": "application/json"}
    assert rig.http.post(f"{api}/upstreams", data=b"{}", timeout=5, headers=json_type).status_code == 405
    assert rig.http.patch(f"{api}/upstream/app", data=b"{}", timeout=5, headers=json_type).status_code == 405
    assert rig.http.get(f"{api}/upstream/Bad;Name", timeout=5).status_code == 400


def test_get_all_and_delete(rig: Rig) -> None:
    b1, b2, b3 = rig.backends[:3]
    assert rig.post("app", update((b3, {"weight": 2, "max_fails": 3, "fail_timeout": 2.5}))).status_code == 200
    everything = rig.http.get(f"{rig.nginx.api_url}/upstreams", timeout=5).json()
    assert everything["version"] == 1
    assert everything["upstreams"]["app"]["servers"] == [
        {"host": "127.0.0.1", "port": b3.port, "weight": 2, "max_fails": 3, "fail_timeout": 2.5,
         "backup": False, "down": False}
    ]
    # An unchanged re-POST keeps the revision, so workers keep their balancer state.
    first = rig.post("app", update((b3, {"weight": 2, "max_fails": 3, "fail_timeout": 2.5}))).json()
    assert first["changed"] is False
    assert rig.http.delete(f"{rig.nginx.api_url}/upstream/app", timeout=5).status_code == 200
    assert rig.state("app") == 404
    # Deleted: the file's servers serve again.
    assert {fresh_get(rig.ports["app"])[1] for _ in range(20)} == {b1.name, b2.name}


def test_nginx_snippet_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reloader.cli import main
    from reloader.nginx import LUA_DIR, LUA_MODULES

    config = tmp_path / "reloader.conf"
    config.write_text(
        f"lua_url: http://127.0.0.1:15555\nfiles_output_path: {tmp_path / 'ups'}\n"
        "zk_servers: 127.0.0.1:2181\nzk_nodes:\n  app: /services/app\n"
    )
    assert main(["nginx-snippet", "--lua", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert f'lua_package_path "{LUA_DIR}/?.lua;;";' in text
    assert "listen 127.0.0.1:15555;" in text
    assert f'include "{tmp_path / "ups"}/*.upstream";' in text
    assert all((LUA_DIR / f"{module}.lua").is_file() for module in LUA_MODULES)


# ---------------------------------------------------------------------------
# The store: names, limits, a full dict


def lua_constant(name: str) -> int:
    """A ``_M.NAME = number`` constant of reloader_store.lua, read from the source nginx runs."""
    import re

    match = re.search(rf"^_M\.{name} = (\d+)$", (LUA_DIR / "reloader_store.lua").read_text(), re.M)
    assert match, name
    return int(match.group(1))


def test_python_and_lua_limits_agree() -> None:
    assert lua_constant("MAX_BODY") == MAX_BODY
    assert lua_constant("MAX_SERVERS") == MAX_SERVERS
    assert lua_constant("MAX_UPSTREAMS") == MAX_UPSTREAMS


def longest_servers(count: int) -> list[dict[str, Any]]:
    """``count`` distinct servers, every field at its longest (253-character host names)."""
    out = []
    for i in range(count):
        label = f"h{i:05d}" + "x" * 57  # 63 characters: the longest label
        host = ".".join([label, "a" * 63, "b" * 63, "c" * 61])
        assert len(host) == 253
        # The longest float the daemon sends for a duration: 22 characters in JSON.
        # "added": the longest wall-clock time the module accepts, with 17 significant digits.
        out.append({"host": host, "port": 65535 - (i % 50000), "weight": 1000000, "max_fails": 1000000,
                    "fail_timeout": 1.0000000000000002e-05, "backup": False, "down": False,
                    "added": 4102444799.9990001})
    return out


# Traffic options at their longest too.
LONGEST_OPTIONS = {"slow_start": {"window": 3599.9999999999995, "min_weight": 0.10000000000000001,
                                  "aggression": 99.999999999999986}, "panic_threshold": 0.49999999999999994}


def test_a_body_of_max_servers_longest_servers_is_accepted(rig: Rig) -> None:
    body = json.dumps({"version": 1, **LONGEST_OPTIONS, "servers": longest_servers(MAX_SERVERS)},
                      separators=(",", ":"))
    assert len(body) <= MAX_BODY, len(body)
    try:
        answer = rig.post("app", body)
        assert answer.status_code == 200, answer.text[:300]
        assert len(rig.state("app")["servers"]) == MAX_SERVERS
        # One more server is refused by its count, not by the body's size.
        over = json.dumps({"version": 1, "servers": longest_servers(MAX_SERVERS + 1)}, separators=(",", ":"))
        answer = rig.post("app", over)
        assert answer.status_code == 400 and f"at most {MAX_SERVERS} servers" in answer.json()["error"]
    finally:
        assert rig.post("app", update(*rig.backends[:2])).status_code == 200


def test_a_name_with_a_trailing_newline_is_refused(rig: Rig) -> None:
    api = rig.nginx.api_url
    for raw in ("evil%0A", "evil%0D%0A", "evil%00", "app%0A"):
        answer = rig.http.post(f"{api}/upstream/{raw}", data=json.dumps(update(rig.backends[0])), timeout=5,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, (raw, answer.text)
    names = rig.http.get(f"{api}/upstreams", timeout=5).json()["upstreams"]
    assert not any(name != name.strip() or "\0" in name for name in names), names


def pipelined(rig: Rig, requests_: list[tuple[str, str, bytes]]) -> list[int]:
    """Send many requests, pipelined in batches; return the statuses in order."""
    statuses: list[int] = []
    for start in range(0, len(requests_), 500):  # nginx closes a connection after 1,000 requests
        statuses += _pipelined(rig, requests_[start:start + 500])
    return statuses


def _pipelined(rig: Rig, requests_: list[tuple[str, str, bytes]]) -> list[int]:
    out = bytearray()
    for method, path, body in requests_:
        out += (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{rig.nginx.api_port}\r\n"
                f"X-Reloader-Token: {rig.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    statuses: list[int] = []
    with socket.create_connection(("127.0.0.1", rig.nginx.api_port), timeout=10) as sock:
        sock.sendall(out)
        reader = sock.makefile("rb")
        while len(statuses) < len(requests_):
            status = int(reader.readline().split()[1])
            length, chunked = 0, False
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                chunked = chunked or line.lower().startswith(b"transfer-encoding: chunked")
            if chunked:
                while (size := int(reader.readline().strip(), 16)) > 0:
                    reader.read(size + 2)
                reader.readline()
            else:
                reader.read(length)
            statuses.append(status)
    return statuses


@pytest.mark.timeout(60)
def test_the_number_of_upstreams_is_capped(rig: Rig) -> None:
    body = json.dumps(update(rig.backends[0])).encode()
    stored = len(rig.http.get(f"{rig.nginx.api_url}/upstreams", timeout=5).json()["upstreams"])
    room = MAX_UPSTREAMS - stored
    names = [f"junk-{i}" for i in range(room + 1)]
    try:
        statuses = pipelined(rig, [("POST", f"/upstream/{name}", body) for name in names])
        assert statuses[:-1] == [200] * room
        assert statuses[-1] == 409
        answer = rig.post(names[-1], update(rig.backends[0]))
        assert answer.status_code == 409 and f"at most {MAX_UPSTREAMS} upstreams" in answer.json()["error"]
        assert rig.state(names[-1]) == 404
        # Stored names are still updated, and a DELETE makes room.
        assert rig.post("app", update(rig.backends[1])).status_code == 200
        assert rig.http.delete(f"{rig.nginx.api_url}/upstream/{names[0]}", timeout=5).status_code == 200
        assert rig.post(names[-1], update(rig.backends[0])).status_code == 200
    finally:
        pipelined(rig, [("DELETE", f"/upstream/{name}", b"") for name in names])
    assert rig.post("app", update(*rig.backends[:2])).status_code == 200


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, nginx_bin: str) -> Iterator[Rig]:
    """A rig whose shared dict is small enough to fill in a moment."""
    require(lua_missing())
    rig = Rig(tmp_path_factory.mktemp("lua-small"), dict_size="128k")
    yield rig
    rig.close()


def fill(rig: Rig) -> list[str]:
    """POST new upstreams of shrinking size until not even one server fits; return their names."""
    names: list[str] = []
    size = 256
    while size >= 1:
        name = f"filler-{len(names)}"
        body = {"version": 1, "servers": [{"host": f"10.{i // 256}.{i % 256}.1", "port": 80 + len(names)}
                                          for i in range(size)]}
        answer = rig.post(name, body)
        if answer.status_code == 200:
            names.append(name)
        else:
            assert answer.status_code == 507, answer.text
            assert rig.state(name) == 404
            size //= 2
    return names


@pytest.mark.timeout(60)
def test_a_full_dict_refuses_an_update_and_keeps_the_old_state_served(small: Rig) -> None:
    b3 = small.backends[2]
    first = small.post("app", update(b3))
    assert first.status_code == 200
    revision = first.json()["revision"]
    before = small.state("app")
    names = fill(small)
    assert names, "nothing fitted"
    bigger = update(*small.backends[:4])
    bigger["servers"] += [{"host": f"10.9.{i}.1", "port": 80, "down": True} for i in range(200)]
    answer = small.post("app", bigger)
    assert answer.status_code == 507, answer.text
    assert "error" in answer.json()
    # Refused means unchanged: stored, served by every worker, and its revision kept.
    assert small.state("app") == before
    assert {fresh_get(small.ports["app"])[1] for _ in range(20)} == {"b3"}
    again = small.post("app", update(b3)).json()
    assert (again["changed"], again["revision"]) == (False, revision)
    pipelined(small, [("DELETE", f"/upstream/{name}", b"") for name in names])
    assert small.post("app", bigger).status_code == 200


@pytest.mark.timeout(60)
def test_a_full_dict_never_evicts_or_reuses_a_revision(small: Rig) -> None:
    b3, b4 = small.backends[2:4]
    answer = small.post("app", update(b3))
    assert answer.status_code == 200
    revisions = [answer.json()["revision"]]
    # Both workers build and cache their state for this revision.
    assert {fresh_get(small.ports["app"])[1] for _ in range(20)} == {"b3"}
    names = fill(small)
    # Many small updates into the full dict, each of which needs new keys:
    # none may push out the stored upstream's keys (the oldest, as nothing
    # has read them since) to make room.
    for i in range(150):
        if names:
            small.http.delete(f"{small.nginx.api_url}/upstream/{names.pop()}", timeout=5)
        if small.post(f"tiny-{i:04d}", update(b4)).status_code == 200:
            names.insert(0, f"tiny-{i:04d}")
    assert {fresh_get(small.ports["app"])[1] for _ in range(20)} == {"b3"}
    assert small.state("app") == update(b3) | {"servers": [
        {**s, "weight": 1, "max_fails": 1, "fail_timeout": 10, "backup": False, "down": False}
        for s in servers(b3)]}
    everything = small.http.get(f"{small.nginx.api_url}/upstreams", timeout=5).json()["upstreams"]
    pipelined(small, [("DELETE", f"/upstream/{name}", b"") for name in everything if name != "app"])
    # The next change gets a revision never handed out before, so every worker drops its cache.
    answer = small.post("app", update(b4))
    assert answer.status_code == 200
    revisions.append(answer.json()["revision"])
    assert revisions[1] > revisions[0]
    assert {fresh_get(small.ports["app"])[1] for _ in range(20)} == {"b4"}


# ---------------------------------------------------------------------------
# The store as a state machine: random updates, deletes and a filling dict


def normalised(doc: dict[str, Any]) -> dict[str, Any]:
    defaults = {"weight": 1, "max_fails": 1, "fail_timeout": 10, "backup": False, "down": False}
    return {"version": 1, "servers": [{**defaults, **server} for server in doc["servers"]]}


@pytest.mark.timeout(120)
def test_store_state_machine(small: Rig) -> None:
    """Whatever the order of updates, deletes and memory pressure, the store keeps its promises.

    Invariants after every step: the stored upstreams are exactly the model's
    (an accepted POST replaced one, a refused one -- 507 -- changed nothing, a
    DELETE removed one); every change got a revision never handed out before.
    """
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    names = st.sampled_from(["app", "flaky", "a.b", "c-d", "bulk"])
    # 600 servers take about 78 KB: two of them, or one being replaced, fill the 128 KB dict.
    sizes = st.sampled_from([1, 2, 150, 600, 600])

    def body(size: int, seed: int) -> dict[str, Any]:
        return {"version": 1, "servers": [{"host": f"10.{seed % 200}.{i // 250}.{i % 250 + 1}", "port": 80 + seed,
                                           "weight": 1 + seed % 5} for i in range(size)]}

    class Store(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            stored = small.http.get(f"{small.nginx.api_url}/upstreams", timeout=5).json()["upstreams"]
            pipelined(small, [("DELETE", f"/upstream/{name}", b"") for name in stored])
            self.model: dict[str, dict[str, Any]] = {}
            self.revisions: set[int] = set()
            self.last_revision = 0

        def _revision(self, revision: int) -> None:
            assert revision not in self.revisions and revision > self.last_revision, (revision, self.last_revision)
            self.revisions.add(revision)
            self.last_revision = revision

        @rule(name=names, size=sizes, seed=st.integers(0, 1000))
        def post(self, name: str, size: int, seed: int) -> None:
            doc = body(size, seed)
            answer = small.post(name, doc)
            assert answer.status_code in (200, 507), answer.text
            if answer.status_code == 200:
                result = answer.json()
                assert result["changed"] is (self.model.get(name) != normalised(doc))
                if result["changed"]:
                    self._revision(result["revision"])
                self.model[name] = normalised(doc)

        @rule(name=names)
        def repost(self, name: str) -> None:
            if name in self.model:
                answer = small.post(name, self.model[name])
                assert answer.status_code == 200 and answer.json()["changed"] is False, answer.text

        @rule(name=names)
        def delete(self, name: str) -> None:
            answer = small.http.delete(f"{small.nginx.api_url}/upstream/{name}", timeout=5)
            assert answer.status_code == (200 if name in self.model else 404), answer.text
            self.model.pop(name, None)

        @invariant()
        def stored_is_the_model(self) -> None:
            stored = small.http.get(f"{small.nginx.api_url}/upstreams", timeout=5).json()["upstreams"]
            assert stored == self.model

    Store.TestCase.settings = settings(max_examples=20, stateful_step_count=30, deadline=None,
                                       suppress_health_check=list(HealthCheck))
    Store.TestCase().runTest()


def test_traffic_options_are_stored_as_posted_and_a_repost_changes_nothing(rig: Rig) -> None:
    from reloader.outputs.lua import upstream_document
    from reloader.traffic import SlowStart

    b1, b2 = rig.backends[:2]
    upstream = Upstream(
        "app", (Server("127.0.0.1", b1.port), Server("127.0.0.1", b2.port)),
        slow_start=SlowStart(window=30, min_weight=0.1, aggression=1.5), panic_threshold=0.5,
        added=((("127.0.0.1", b2.port), time.time() - 100.123),),
    )
    document = upstream_document(upstream)
    first = rig.post("app", document)
    assert first.status_code == 200, first.text
    assert rig.state("app") == document  # what reconcile compares: equal as parsed JSON
    again = rig.post("app", json.dumps(document))
    assert again.json()["changed"] is False
    # The ramp is long over: both serve.
    assert {fresh_get(rig.ports["app"])[1] for _ in range(10)} == {"b1", "b2"}
