"""The Lua interface authenticates its caller: the secret file, the checks in real nginx, and the hijack path.

The hijack this guards against: a registry instance at 127.0.0.1:<interface
port> makes nginx itself proxy a client's ``POST /upstream/teamb`` to the
interface, from 127.0.0.1, which ``allow 127.0.0.1`` lets through. Only the
secret, which the proxied client does not have, stops it.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from reloader.config import ConfigError, parse_config
from reloader.localenv.luanginx import lua_missing
from reloader.localenv.nginx import LocalNginx, server_block
from reloader.localenv.ports import free_port
from reloader.nginx.secret import DEFAULT_NAME, MODE, SecretError, load_or_create, read_secret
from reloader.nginx.snippet import load_module_lines, snippet_for_config
from tests.conftest import require
from tests.test_lua_module import Rig, fresh_get, poll, update

# ---------------------------------------------------------------------------
# The secret file


def test_first_start_generates_a_secret_only_the_daemon_and_nginx_read(tmp_path: Path) -> None:
    path = tmp_path / DEFAULT_NAME
    token = load_or_create(path)
    assert len(token) == 64 and int(token, 16) >= 0
    info = path.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == MODE
    assert path.read_text() == token + "\n"
    # Kept across starts; no temporary file left behind.
    assert load_or_create(path) == token
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_NAME]
    assert not path.match("*.upstream")


def test_the_secret_file_goes_to_nginx_s_group(tmp_path: Path) -> None:
    group = grp.getgrgid(next(g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid())).gr_name
    path = tmp_path / DEFAULT_NAME
    load_or_create(path, group=group)
    assert path.stat().st_gid == grp.getgrnam(group).gr_gid
    # An existing file is given to the group too.
    other = tmp_path / "other"
    load_or_create(other)
    load_or_create(other, group=group)
    assert other.stat().st_gid == grp.getgrnam(group).gr_gid and stat.S_IMODE(other.stat().st_mode) == MODE
    with pytest.raises(SecretError, match="no group named 'no-such-group'"):
        load_or_create(path, group="no-such-group")


def test_a_configured_secret_is_written_for_nginx(tmp_path: Path) -> None:
    path = tmp_path / DEFAULT_NAME
    load_or_create(path)
    value = "s3cret-" + "k" * 40
    assert load_or_create(path, value=value) == value
    assert read_secret(path) == value and stat.S_IMODE(path.stat().st_mode) == MODE


def _symlink(tmp: Path, path: Path) -> None:
    target = tmp / "target"
    load_or_create(target)
    path.symlink_to(target)


def _directory(tmp: Path, path: Path) -> None:
    path.mkdir()


def _fifo(tmp: Path, path: Path) -> None:
    os.mkfifo(path, 0o600)


def _mode(mode: int) -> Any:
    def make(tmp: Path, path: Path) -> None:
        load_or_create(path)
        path.chmod(mode)
    return make


def _foreign(tmp: Path, path: Path) -> None:
    load_or_create(path)
    os.chown(path, 65534, -1)


UNUSABLE = [
    ("symlink", _symlink, "is a symlink"),
    ("directory", _directory, "not a regular file"),
    ("fifo", _fifo, "not a regular file"),
    ("world readable", _mode(0o644), "readable or writable by others"),
    ("world writable", _mode(0o602), "readable or writable by others"),
    ("group writable", _mode(0o660), "writable by its group"),
    ("someone else's", _foreign, "owned by uid 65534"),
]


@pytest.mark.parametrize(("what", "make", "message"), UNUSABLE, ids=[u[0] for u in UNUSABLE])
def test_an_unusable_secret_file_is_refused(tmp_path: Path, what: str, make: Any, message: str) -> None:
    if what == "someone else's" and os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    path = tmp_path / DEFAULT_NAME
    make(tmp_path, path)
    with pytest.raises(SecretError, match=message) as caught:
        load_or_create(path)
    assert str(path) in str(caught.value)


def test_no_error_shows_a_secret(tmp_path: Path) -> None:
    short = "hunter2-" + "z" * 9
    with pytest.raises(ConfigError) as caught:
        parse_config({"zk_servers": "a:1", "zk_nodes": {"a": "/a"}, "lua_secret": short})
    assert "lua_secret" in str(caught.value) and short not in str(caught.value)
    spaced = "pass word " + "q" * 40
    with pytest.raises(ConfigError) as caught:
        parse_config({"zk_servers": "a:1", "zk_nodes": {"a": "/a"}, "lua_secret": spaced})
    assert spaced not in str(caught.value) and "pass" not in str(caught.value)
    config = parse_config({"zk_servers": "a:1", "zk_nodes": {"a": "/a"}, "lua_secret": "v" * 40})
    assert "v" * 40 not in repr(config)
    path = tmp_path / DEFAULT_NAME
    path.write_text("tiny-secret\n")
    path.chmod(0o640)
    with pytest.raises(SecretError) as error:
        read_secret(path)
    assert "tiny-secret" not in str(error.value)


def test_the_daemon_takes_its_token_from_the_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from reloader.nginx.secret import token_or_none

    base = {"zk_servers": "a:1", "zk_nodes": {"a": "/a"}, "lua_url": "http://127.0.0.1:15555",
            "files_output_path": str(tmp_path)}
    token = token_or_none(parse_config(base))
    assert token is not None and read_secret(tmp_path / DEFAULT_NAME) == token
    value = "configured-" + "c" * 30
    config = parse_config({**base, "lua_secret": value, "lua_secret_file": str(tmp_path / "s")})
    assert token_or_none(config) == value and read_secret(tmp_path / "s") == value
    # An unusable file: the daemon logs why, naming the file, and keeps going without a token.
    (tmp_path / "link").symlink_to(tmp_path / "s")
    config = parse_config({**base, "lua_secret": value, "lua_secret_file": str(tmp_path / "link")})
    with caplog.at_level("ERROR", logger="reloader.nginx.secret"):
        assert token_or_none(config) is None
    assert str(tmp_path / "link") in caplog.text and "symlink" in caplog.text and value not in caplog.text


def test_the_snippet_wires_the_secret_and_the_host(tmp_path: Path) -> None:
    config = parse_config({"zk_servers": "a:1", "zk_nodes": {"a": "/a"}, "lua_url": "http://127.0.0.1:15555",
                           "files_output_path": str(tmp_path)})
    text = snippet_for_config(config)
    assert f'set $reloader_secret_file "{tmp_path / DEFAULT_NAME}";' in text
    assert 'set $reloader_hosts "127.0.0.1:15555";' in text
    config = parse_config({"zk_servers": "a:1", "zk_nodes": {"a": "/a"}, "lua_url": "http://[::1]:80",
                           "lua_secret_file": str(tmp_path / "s")})
    text = snippet_for_config(config)
    assert f'set $reloader_secret_file "{tmp_path / "s"}";' in text
    assert 'set $reloader_hosts "[::1]:80 [::1]";' in text


# ---------------------------------------------------------------------------
# The checks, in real nginx


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, nginx_bin: str) -> Iterator[Rig]:
    require(lua_missing())
    rig = Rig(tmp_path_factory.mktemp("luaauth"))
    yield rig
    rig.close()


def raw(rig: Rig, method: str, path: str, *, token: str | None = None, host: str | None = None,
        body: bytes | None = None, content_type: str | None = "application/json") -> requests.Response:
    headers = {"Host": host or f"127.0.0.1:{rig.nginx.api_port}"}
    if token is not None:
        headers["X-Reloader-Token"] = token
    if content_type is not None and body is not None:
        headers["Content-Type"] = content_type
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, f"{rig.nginx.api_url}{path}", data=body, headers=headers, timeout=5)


def snapshot(rig: Rig) -> Any:
    return rig.http.get(f"{rig.nginx.api_url}/upstreams", timeout=5).json()


def test_requests_without_the_right_token_get_401_and_change_nothing(rig: Rig) -> None:
    b1, b2, b3 = rig.backends[:3]
    assert rig.post("app", update(b1, b2)).status_code == 200
    before = snapshot(rig)
    body = json.dumps(update(b3)).encode()
    token = rig.token
    wrong = [None, "", token[:-1] + ("0" if token[-1] != "0" else "1"), token[:-1], token + "0",
             token.upper() if token != token.upper() else token.lower(), "x" * 64]
    for candidate in wrong:
        for method, path, data in (("GET", "/upstreams", None), ("GET", "/upstream/app", None),
                                   ("POST", "/upstream/app", body), ("PUT", "/upstream/new", body),
                                   ("DELETE", "/upstream/app", None), ("POST", "/upstreams", body)):
            answer = raw(rig, method, path, token=candidate, body=data)
            assert answer.status_code == 401, (candidate, method, path, answer.text)
            assert "error" in answer.json() and "app" not in answer.text
    # An oversized body without the token is refused as unauthenticated too.
    answer = raw(rig, "POST", "/upstream/app", body=b" " * (2 << 20))
    assert answer.status_code == 401
    assert snapshot(rig) == before
    assert {fresh_get(rig.ports["app"])[1] for _ in range(10)} == {"b1", "b2"}


def test_a_foreign_host_or_a_body_that_is_not_json_is_refused(rig: Rig) -> None:
    b1, b2, b3 = rig.backends[:3]
    assert rig.post("app", update(b1, b2)).status_code == 200
    before = snapshot(rig)
    body = json.dumps(update(b3)).encode()
    port = rig.nginx.api_port
    for host in (f"attacker.example:{port}", "attacker.example", f"localhost:{port}", "127.0.0.1"):
        answer = raw(rig, "POST", "/upstream/app", token=rig.token, host=host, body=body)
        assert answer.status_code in (400, 421), (host, answer.text)
        answer = raw(rig, "GET", "/upstreams", token=rig.token, host=host)
        assert answer.status_code in (400, 421), (host, answer.text)
    # HTTP/1.0 without any Host header.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /upstreams HTTP/1.0\r\nX-Reloader-Token: {rig.token}\r\n\r\n".encode())
        assert sock.makefile("rb").readline().split()[1] == b"421"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "application/jsonp", None):
        answer = raw(rig, "POST", "/upstream/app", token=rig.token, body=body, content_type=content_type)
        assert answer.status_code == 415, (content_type, answer.text)
    assert snapshot(rig) == before
    answer = raw(rig, "POST", "/upstream/app", token=rig.token, body=body,
                 content_type="Application/JSON; charset=utf-8")
    assert answer.status_code == 200, answer.text
    assert {fresh_get(rig.ports["app"])[1] for _ in range(10)} == {"b3"}


@pytest.mark.timeout(30)
def test_a_secret_created_or_replaced_after_nginx_started_is_used_without_a_reload(rig: Rig) -> None:
    path = rig.nginx.secret_file
    workers = rig.nginx.worker_pids()
    old = rig.token
    try:
        path.unlink()
        # Without a secret nobody gets in (each worker drops its copy within a second).
        poll(lambda: all(raw(rig, "GET", "/upstreams", token=old).status_code == 401 for _ in range(6)),
             5, "the removed secret to be refused")
        new = load_or_create(path)
        poll(lambda: all(raw(rig, "GET", "/upstreams", token=new).status_code == 200 for _ in range(6)),
             5, "the new secret to be used")
        assert raw(rig, "GET", "/upstreams", token=old).status_code == 401
    finally:
        path.unlink(missing_ok=True)
        load_or_create(path, value=old)
    poll(lambda: all(raw(rig, "GET", "/upstreams", token=old).status_code == 200 for _ in range(6)),
         5, "the old secret back")
    assert rig.nginx.worker_pids() == workers


@pytest.mark.timeout(30)
def test_workers_of_another_user_read_the_secret_through_lua_secret_group(nginx_bin: str) -> None:
    """As deployed: the daemon (here root) owns the secret, nginx's workers run as another user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run nginx's workers as nobody")
    require(lua_missing())
    import pwd
    import shutil
    import tempfile

    from reloader.localenv.luanginx import LuaNginx

    worker_group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    # Outside pytest's private 0700 directories, so that nobody can enter.
    base = Path(tempfile.mkdtemp(prefix="luasec-"))
    nginx = None
    try:
        base.chmod(0o755)
        files = base / "upstreams"
        files.mkdir(mode=0o755)
        nginx = LuaNginx(free_port(), files, workdir=base / "nginx")
        conf = nginx.write_config("")
        conf.write_text(conf.read_text().replace("user root;", f"user nobody {worker_group};"))
        token = load_or_create(nginx.secret_file)  # root:root 0640: the workers cannot read it
        nginx.start()
        with requests.Session() as http:
            http.trust_env = False
            http.headers["X-Reloader-Token"] = token
            answer = http.get(f"{nginx.api_url}/upstreams", timeout=5)
            assert answer.status_code == 401, answer.text
            poll(lambda: "Permission denied" in nginx.error_log_path.read_text(), 5, "the reason in the error log")
            load_or_create(nginx.secret_file, group=worker_group)
            assert nginx.secret_file.stat().st_gid == grp.getgrnam(worker_group).gr_gid
            poll(lambda: http.get(f"{nginx.api_url}/upstreams", timeout=5).status_code == 200, 5,
                 "the workers to read the secret through the group")
    finally:
        if nginx is not None:
            nginx.close()
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------
# End to end: the daemon, and the hijack path through nginx's own proxying


class SnippetNginx(LocalNginx):
    """Stock nginx whose http block starts with what ``nginx-snippet --lua --config`` printed."""

    def __init__(self, snippet: str, api_port: int, workdir: Path) -> None:
        super().__init__(workdir=workdir)
        self.snippet = snippet
        self.api_port = api_port

    def render_config(self, http_block_body: str) -> str:
        return load_module_lines() + super().render_config(self.snippet + http_block_body)

    def write_config(self, http_block_body: str) -> Path:
        path = super().write_config(http_block_body)
        self.listen_ports = [*self.listen_ports, self.api_port]
        return path


@pytest.mark.timeout(90)
def test_daemon_updates_work_and_proxied_or_unauthenticated_requests_do_not(
    tmp_path: Path, zk: Any, zk_client: Any, zk_root: str, nginx_bin: str, capsys: pytest.CaptureFixture[str],
) -> None:
    from reloader.cli import main
    from reloader.localenv.backends import Backend
    from tests.test_daemon import DaemonProcess

    require(lua_missing())
    backends = [Backend(f"b{i}") for i in range(1, 5)]
    for backend in backends:
        backend.start()
    files = tmp_path / "upstreams"
    files.mkdir()
    api_port, front, proxy = free_port(), free_port(), free_port()
    znode = f"{zk_root}/teamb"
    for backend in backends[:2]:
        zk_client.create(f"{znode}/{backend.address}", makepath=True)
    config: dict[str, Any] = {
        "zk_servers": zk.hosts, "zk_session_timeout": "4s", "files_output_path": str(files),
        "lua_url": f"http://127.0.0.1:{api_port}", "reconcile_interval": "1s", "retry_interval": "0.3s",
        "zk_nodes": {"teamb": znode},
        # The backends listen on loopback, which registry instances may not name by default.
        "allowed_networks": ["127.0.0.0/8"],
    }
    config_path = tmp_path / "daemon.yaml"
    config_path.write_text(json.dumps(config))
    assert main(["nginx-snippet", "--lua", "--config", str(config_path)]) == 0
    snippet = capsys.readouterr().out
    nginx = SnippetNginx(snippet, api_port, tmp_path / "nginx")
    nginx.write_config(
        server_block(front, "location / {\n    proxy_pass http://teamb;\n}\n")
        # What a registry instance at 127.0.0.1:<api_port> amounts to: nginx proxying a client there.
        + server_block(proxy, f"location / {{\n    proxy_pass http://127.0.0.1:{api_port};\n}}\n")
    )
    # The daemon first: it writes teamb.upstream (which nginx needs to start) and the secret.
    daemon = DaemonProcess(tmp_path, config, name="lua-auth-daemon", files_dir=None, dyups_url=None).start()
    try:
        poll(lambda: (files / "teamb.upstream").exists() and (files / DEFAULT_NAME).exists(), 15,
             "the daemon's file and secret")
        nginx.start()
        token = read_secret(files / DEFAULT_NAME)
        assert token is not None
        http = requests.Session()
        http.trust_env = False
        api = f"http://127.0.0.1:{api_port}"

        def live() -> Any:
            answer = http.get(f"{api}/upstream/teamb", headers={"X-Reloader-Token": token}, timeout=5)
            return answer.json() if answer.status_code == 200 else answer.status_code

        def ports() -> set[int]:
            state = live()
            return set() if isinstance(state, int) else {s["port"] for s in state["servers"]}

        poll(lambda: ports() == {b.port for b in backends[:2]}, 15, "the daemon's first POST")
        workers = nginx.worker_pids()
        # A registry change reaches traffic through the Lua interface, without a reload.
        zk_client.create(f"{znode}/{backends[2].address}")
        poll(lambda: ports() == {b.port for b in backends[:3]}, 10, "the daemon's update")

        def served() -> set[str]:
            return {fresh_get(front)[1] for _ in range(15)}

        poll(lambda: served() == {"b1", "b2", "b3"}, 5, "traffic on the new set")
        before = live()
        hijack = json.dumps({"version": 1, "servers": [{"host": "127.0.0.1", "port": backends[3].port}]})
        json_type = {"Content-Type": "application/json"}
        attempts = [
            ("proxied POST", http.post(f"http://127.0.0.1:{proxy}/upstream/teamb", data=hijack, headers=json_type,
                                       timeout=5)),
            ("proxied GET /upstreams", http.get(f"http://127.0.0.1:{proxy}/upstreams", timeout=5)),
            ("proxied DELETE", http.delete(f"http://127.0.0.1:{proxy}/upstream/teamb", timeout=5)),
            ("direct POST", http.post(f"{api}/upstream/teamb", data=hijack, headers=json_type, timeout=5)),
        ]
        for what, answer in attempts:
            assert answer.status_code == 401, (what, answer.status_code, answer.text)
            assert "teamb" not in answer.text and "error" in answer.json()
        with_token = {"X-Reloader-Token": token}
        answer = http.post(f"{api}/upstream/teamb", data=hijack, timeout=5,
                           headers={**with_token, "Content-Type": "text/plain"})
        assert answer.status_code == 415
        answer = http.post(f"{api}/upstream/teamb", data=hijack, timeout=5,
                           headers={**with_token, **json_type, "Host": f"rebound.example:{api_port}"})
        assert answer.status_code == 421
        assert live() == before
        assert served() == {"b1", "b2", "b3"} and backends[3].requests == 0
        assert nginx.worker_pids() == workers
        daemon.stop()
    finally:
        if daemon.running:
            daemon.kill()
        nginx.close()
        for backend in backends:
            backend.stop()
