"""TCP upstreams (``stream: true``): ``<name>.stream`` files for an include inside ``stream { }``.

What is shown here, with real services where it matters:

* the naming: one function names both kinds of file, and neither nginx glob
  (``*.upstream`` in http, ``*.stream`` in stream) picks up the other's
  files, checked by real ``nginx -t``;
* the config: the option per upstream and as a global default, refused with
  ``lua_url`` and ``dyups_url`` and with the directives the stream module's
  ``upstream`` block does not have; what it allows passes ``nginx -t``
  inside ``stream { }`` and what it refuses does not;
* the daemon as a process in reload mode, real ZooKeeper, Debian's nginx
  with its stream module proxying TCP connections to echo backends that
  answer with their own name: a change in ZooKeeper reaches new
  connections after the reload; a refused stream file is put back;
* start-up adoption, pruning, ``render --diff/--write`` and
  ``nginx-snippet --stream`` on stream files.
"""

from __future__ import annotations

import fnmatch
import io
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kazoo.client import KazooClient

from reloader.config import UPSTREAM_NAME, ConfigError, load_config, parse_config
from reloader.localenv.nginx import (
    LocalNginx,
    NginxConfigError,
    check_upstream_files,
    main_context,
    stream_missing,
    stream_module_lines,
)
from reloader.localenv.ports import free_port
from reloader.localenv.tcpecho import EchoPool, backend_name, tcp_ask
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.model import Server, Upstream
from reloader.oneshot import run_render
from reloader.outputs.files import FilesOutput, FileStore, file_name, parse_file_name
from reloader.render import render_file
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
WAIT = 15.0

pytestmark = pytest.mark.timeout(120)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT,
             details: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{details()}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def stream_nginx(nginx_bin: str) -> str:
    """nginx with its stream module (Debian: libnginx-mod-stream)."""
    require(stream_missing(nginx_bin))
    return nginx_bin


def config_of(text: str, **overrides: Any) -> Any:
    """The config of ``text`` (indented or not) under one cluster's zk_servers."""
    return parse_config(yaml.safe_load("zk_servers: 127.0.0.1:2181\n" + textwrap.dedent(text)), overrides=overrides)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_of(text)
    return caught.value.problems


# =============================================================================
# Naming
# =============================================================================


@pytest.mark.parametrize("name", ["db", "db.stream", "cache.upstream", "a", "x-1_y.z"])
def test_one_function_names_both_kinds_and_neither_glob_matches_the_other(name: str) -> None:
    http, stream = file_name(name), file_name(name, stream=True)
    assert http == f"{name}.upstream" and stream == f"{name}.stream"
    assert parse_file_name(http) == (name, False) and parse_file_name(stream) == (name, True)
    assert fnmatch.fnmatch(http, "*.upstream") and not fnmatch.fnmatch(http, "*.stream")
    assert fnmatch.fnmatch(stream, "*.stream") and not fnmatch.fnmatch(stream, "*.upstream")
    for hidden in (f".{stream}.123-4.tmp", f".{http}.123-4.tmp", ".reloader-loaded.json", ".upstream", ".stream"):
        assert parse_file_name(hidden) is None


@settings(max_examples=300, deadline=None)
@given(name=st.from_regex(UPSTREAM_NAME, fullmatch=True), stream=st.booleans())
def test_every_valid_name_round_trips_and_lands_in_exactly_one_glob(name: str, stream: bool) -> None:
    entry = file_name(name, stream)
    assert parse_file_name(entry) == (name, stream)
    assert fnmatch.fnmatch(entry, "*.stream") == stream and fnmatch.fnmatch(entry, "*.upstream") != stream


def test_the_store_names_each_upstream_by_its_kind(tmp_path: Path) -> None:
    store = FileStore(tmp_path, stream={"db"})
    (tmp_path / ".db.stream.99-1.tmp").write_text("half")  # a crash's leftover
    store.prepare()
    assert not (tmp_path / ".db.stream.99-1.tmp").exists(), "leftovers of stream files are removed too"
    store.write("db", "upstream db { server 10.0.0.1:3306; }\n")
    store.write("web", "upstream web { server 10.0.0.1:80; }\n")
    assert store.path_for("db") == tmp_path / "db.stream" and (tmp_path / "db.stream").is_file()
    assert store.path_for("web") == tmp_path / "web.upstream" and (tmp_path / "web.upstream").is_file()
    # Files of the other kind (an upstream that was switched, one no longer configured) are listed by
    # files(), never taken for the configured upstream's own.
    (tmp_path / "db.upstream").write_text("upstream db { server 10.0.0.9:80; }\n")
    (tmp_path / "old.stream").write_text("upstream old { server 10.0.0.9:80; }\n")
    assert store.names() == ["db", "web"]
    assert [(f.name, f.stream) for f in store.files()] == [
        ("db", True), ("db", False), ("old", True), ("web", False)]
    assert store.read("db") == "upstream db { server 10.0.0.1:3306; }\n"
    assert store.replace_if("db", "upstream db { server 10.0.0.1:3306; }\n", None) and not store.read("db")
    assert (tmp_path / "db.upstream").is_file(), "the compare-and-replace touched the stream file only"


def test_an_http_include_never_picks_up_a_stream_file(tmp_path: Path, stream_nginx: str) -> None:
    """Both kinds side by side, one name in both: nginx would say "duplicate upstream" if either glob matched both."""
    servers = (Server("127.0.0.1", 3306),)
    (tmp_path / "app.upstream").write_text(render_file(Upstream("app", servers, live_count=1)))
    (tmp_path / "app.stream").write_text(render_file(Upstream("app", servers, live_count=1)))
    check_upstream_files(tmp_path, binary=stream_nginx)
    assert sorted(p.name for p in tmp_path.glob("*.upstream")) == ["app.upstream"]
    # The check does include the stream file: a duplicate there is found.
    (tmp_path / "copy.stream").write_text(render_file(Upstream("app", servers, live_count=1)))
    with pytest.raises(NginxConfigError, match="duplicate upstream"):
        check_upstream_files(tmp_path, binary=stream_nginx)


# =============================================================================
# Config
# =============================================================================


def test_stream_per_upstream_and_as_the_global_default() -> None:
    config = config_of("""\
        stream: true
        zk_nodes:
          db: /services/db
          web: {path: /services/web, stream: false}
          cache: {path: /services/cache, upstream_directives: ["hash $remote_addr consistent", "zone cache 64k"],
                  server_params: {max_conns: 100, max_fails: 2, fail_timeout: 5s, weight: 2}}
        """)
    assert config.stream_upstreams == {"db", "cache"}
    assert {z.upstream: z.stream for z in config.znodes} == {"db": True, "web": False, "cache": True}
    # Off by default.
    assert config_of("zk_nodes: {db: /services/db}\n").stream_upstreams == frozenset()
    # With nginx_reload, and with the files alone, it works.
    assert config_of("""\
        nginx_reload: {test_cmd: [nginx, -t], reload_cmd: [nginx, -s, reload]}
        zk_nodes: {db: {path: /services/db, stream: true}}
        """).stream_upstreams == {"db"}


def test_stream_is_refused_with_lua_and_dyups_naming_the_key() -> None:
    lua = problems_of("""\
        lua_url: http://127.0.0.1:14444
        zk_nodes: {db: {path: /services/db, stream: true}, web: /services/web}
        """)
    assert len(lua) == 1 and lua[0].startswith("zk_nodes.db.stream: stream: true cannot be used with lua_url")
    assert "OpenResty's stream Lua module" in lua[0] and "Debian does not package" in lua[0]
    dyups = problems_of("""\
        dyups_url: http://127.0.0.1:14443
        zk_nodes: {db: {path: /services/db, stream: true}}
        """)
    assert len(dyups) == 1 and dyups[0].startswith("zk_nodes.db.stream: stream: true cannot be used with dyups_url")
    assert "no stream support" in dyups[0]
    # A global default that cannot work is reported once, at its own key.
    global_lua = problems_of("""\
        stream: true
        lua_url: http://127.0.0.1:14444
        zk_nodes: {db: /services/db, cache: /services/cache}
        """)
    assert len(global_lua) == 1 and global_lua[0].startswith("stream: stream: true cannot be used with lua_url")
    # A command-line dyups URL counts too.
    with pytest.raises(ConfigError, match="zk_nodes.db.stream: .*dyups_url"):
        config_of("zk_nodes: {db: {path: /services/db, stream: true}}\n", dyups_url="http://127.0.0.1:1")
    assert problems_of("zk_nodes: {db: {path: /services/db, stream: 'yes'}}\n") == [
        "zk_nodes.db.stream: must be true or false, got 'yes'"]


@pytest.mark.parametrize("directive", ["keepalive 16", "keepalive_timeout 30s", "keepalive_requests 100", "ip_hash"])
def test_http_only_directives_are_refused_for_tcp_upstreams(directive: str) -> None:
    problems = problems_of(f"""\
        zk_nodes: {{db: {{path: /services/db, stream: true, upstream_directives: ["{directive}"]}}}}
        """)
    name = directive.split()[0]
    assert problems == [(
        f"zk_nodes.db.upstream_directives: {name} cannot be used in a TCP upstream (stream: true): the stream "
        f"module's upstream block has no {name}; only hash, least_conn, random, zone are allowed")]
    inherited = problems_of(f"""\
        stream: true
        zk_nodes: {{db: {{path: /services/db, upstream_directives: ["{directive}"]}}}}
        """)
    assert len(inherited) == 1 and "(stream: true, the global default)" in inherited[0]
    # The same directive in an http upstream is fine.
    config_of(f"""\
        zk_nodes: {{db: {{path: /services/db, upstream_directives: ["{directive}"]}}}}
        """)


def test_what_the_config_allows_passes_nginx_t_in_stream_and_what_it_refuses_does_not(
    tmp_path: Path, stream_nginx: str,
) -> None:
    """Every allowed directive and server parameter, rendered by the files output into <name>.stream."""
    directives = ["least_conn", "random", "random two", "random two least_conn", "hash $remote_addr",
                  "hash $remote_addr consistent"]
    nodes = {
        f"u{index}": {"path": f"/s/{index}", "upstream_directives": [directive, f"zone z{index} 64k"],
                      "server_params": {"weight": 3, "max_fails": 2, "fail_timeout": "5s", "max_conns": 10}}
        for index, directive in enumerate(directives)
    }
    nodes["plain"] = {"path": "/s/plain", "server_params": {"down": True},
                      "backup_servers": ["127.0.0.1:3307"]}
    config = parse_config({"zk_servers": "127.0.0.1:2181", "stream": True, "zk_nodes": nodes})
    store = FileStore(tmp_path, stream=config.stream_upstreams)
    output = FilesOutput(store)
    from reloader.assemble import assemble_upstream

    for znode in config.znodes:
        live = [Server("127.0.0.1", 3306), Server("127.0.0.1", 3308, weight=5)]
        if znode.upstream == "plain":
            live = live[:1]
        output.publish(assemble_upstream(znode.upstream, live, znode.options))
    output.end_batch()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        f"{name}.stream" for name in nodes)
    assert "backup" in (tmp_path / "plain.stream").read_text()
    check_upstream_files(tmp_path, binary=stream_nginx)
    # What the config refuses, nginx refuses inside stream { } too.
    for refused in ("keepalive 16", "ip_hash", "keepalive_timeout 30s", "keepalive_requests 100"):
        bad = tmp_path / "bad"
        bad.mkdir(exist_ok=True)
        (bad / "x.stream").write_text(f"upstream x {{\n    {refused};\n    server 127.0.0.1:3306;\n}}\n")
        with pytest.raises(NginxConfigError, match=refused.split()[0]):
            check_upstream_files(bad, binary=stream_nginx)


# =============================================================================
# nginx-snippet --stream
# =============================================================================


def test_nginx_snippet_stream_includes_the_stream_files_and_passes_nginx_t(
    tmp_path: Path, stream_nginx: str, capsys: pytest.CaptureFixture[str],
) -> None:
    from reloader.cli import main

    files = tmp_path / "ups"
    files.mkdir()
    (files / "db.stream").write_text("upstream db {\n    server 127.0.0.1:3306;\n}\n")
    (files / "web.upstream").write_text("upstream web {\n    server 127.0.0.1:8080;\n}\n")
    config = tmp_path / "reloader.conf"
    config.write_text(f"files_output_path: {files}\nzk_servers: 127.0.0.1:2181\n"
                      "zk_nodes:\n  db: {path: /services/db, stream: true}\n  web: /services/web\n")
    assert main(["nginx-snippet", "--stream", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert f'include "{files}/*.stream";' in text and "#     proxy_pass db;" in text
    assert "proxy_pass web" not in text and ".upstream\"" not in text
    # Uncomment the example server: the snippet is a working stream block.
    port = free_port()
    block = text.replace("    # server {", "    server {")
    block = block.replace("    #     listen PORT;", f"    listen 127.0.0.1:{port};")
    block = block.replace("    #     proxy_pass", "    proxy_pass").replace("    # }", "    }")
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(stream_module_lines(stream_nginx) + main_context(prefix) + "events {}\n" + block)
    result = subprocess.run([stream_nginx, "-p", f"{prefix}/", "-e", str(prefix / "logs" / "error.log"),
                             "-c", str(conf), "-t"], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert main(["nginx-snippet", "--stream"]) == 0
    assert 'include "/etc/nginx/upstreams/*.stream";' in capsys.readouterr().out


# =============================================================================
# The daemon
# =============================================================================


def test_a_switch_between_http_and_stream_is_refused_on_config_reload(tmp_path: Path) -> None:
    from reloader.daemon import Daemon

    def config(stream: bool) -> Any:
        return parse_config({"zk_servers": "127.0.0.1:2181", "files_output_path": str(tmp_path),
                             "zk_nodes": {"db": {"path": "/db", "stream": stream}, "web": "/web"}})

    daemon = Daemon(config(False))
    try:
        assert daemon._cannot_reload(config(False)) is None
        assert daemon._cannot_reload(config(True)) == (
            "stream cannot change while running for upstream db; restart the daemon for that")
        added = parse_config({"zk_servers": "127.0.0.1:2181", "files_output_path": str(tmp_path),
                              "zk_nodes": {"web": "/web", "cache": {"path": "/c", "stream": True}}})
        assert daemon._cannot_reload(added) is None, "a new TCP upstream (or a removed one) is fine"
    finally:
        daemon.hosts.close()


class DaemonRun:
    """``python -m reloader run`` in a subprocess, with its log in a file."""

    def __init__(self, tmp: Path, config: dict[str, Any], name: str = "daemon") -> None:
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reloader", "run", "--config", str(self.config_path), "--log-level", "DEBUG"],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self) -> str:
        return "--- daemon log:\n" + "\n".join(self.log().splitlines()[-40:])

    def wait_log(self, text: str, timeout: float = WAIT) -> None:
        def found() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"the daemon exited with {self.proc.returncode}\n{self.tail()}")
            return text in self.log()

        wait_for(found, f"{text!r} in the daemon's log", timeout, self.tail)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(timeout=5) == 0, self.tail()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"the daemon did not stop within 5 s\n{self.tail()}")


GUARDS_OFF = {"settle_after_reconnect": 0, "max_drop": "100%"}


class StreamStack:
    """ZooKeeper znode, echo backends, nginx proxying TCP through <name>.stream, and the daemon in reload mode."""

    def __init__(self, tmp: Path, zk: LocalZooKeeper, znode: str, nginx_bin: str) -> None:
        self.tmp = tmp
        self.zk = zk
        self.znode = znode
        self.files_dir = tmp / "upstreams"
        self.files_dir.mkdir()
        self.stream_file = self.files_dir / "db.stream"
        self.pool = EchoPool(4, prefix="e")
        self.pool.start()
        self.port = free_port()
        self.nginx = LocalNginx(nginx_bin, workdir=tmp / "nginx")
        # The http block includes *.upstream as users' configs do today: it must never see db.stream.
        self.nginx.write_config(
            f'include "{self.files_dir}/*.upstream";\n',
            f'include "{self.files_dir}/*.stream";\n'
            f"server {{\n    listen 127.0.0.1:{self.port};\n    proxy_pass db;\n    proxy_connect_timeout 2s;\n}}\n",
        )
        self.break_marker = tmp / "break-nginx-t"
        self.daemon: DaemonRun | None = None

    def start_nginx_with(self, indexes: list[int]) -> None:
        """nginx will not start without an upstream db: write its file first, as an operator would."""
        servers = tuple(Server("127.0.0.1", self.pool[i].port) for i in indexes)
        self.stream_file.write_text(render_file(Upstream("db", servers, live_count=len(servers))))
        self.nginx.start()

    def start_daemon(self) -> DaemonRun:
        test = self.tmp / "nginx-test.sh"
        test.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            if [ -e '{self.break_marker}' ]; then
                echo 'nginx: [emerg] simulated failure (marker present)' >&2
                exit 1
            fi
            exec {' '.join(f"'{a}'" for a in self.nginx.test_argv())}
            """))
        test.chmod(0o755)
        self.daemon = DaemonRun(self.tmp, {
            "zk_servers": self.zk.hosts,
            "zk_session_timeout": 2,
            "allowed_networks": ["127.0.0.0/8"],  # the backends listen on loopback
            "files_output_path": str(self.files_dir),
            "nginx_reload": {"test_cmd": [str(test)], "reload_cmd": self.nginx.reload_argv(), "min_interval": 0.2},
            **GUARDS_OFF,
            "zk_nodes": {"db": {"path": self.znode, "stream": True}},
        })
        return self.daemon

    def reached(self, connections: int = 8) -> set[str]:
        """The backends that ``connections`` new TCP connections through nginx reached."""
        seen = set()
        for _ in range(connections):
            try:
                seen.add(backend_name(self.port, timeout=3))
            except OSError as error:
                seen.add(f"error {error}")
        return seen

    def wait_reached(self, indexes: list[int], what: str) -> float:
        began = time.monotonic()
        expected = {self.pool[i].name for i in indexes}
        last: list[set[str]] = [set()]

        def ok() -> bool:
            last[0] = self.reached()
            return last[0] == expected

        wait_for(ok, what, WAIT, lambda: f"reached {sorted(last[0])}, expected {sorted(expected)}\n"
                 + (self.daemon.tail() if self.daemon else ""))
        return time.monotonic() - began

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.nginx.close()
        self.pool.stop()


@pytest.fixture
def stack(tmp_path: Path, zk: LocalZooKeeper, zk_root: str, stream_nginx: str) -> Iterator[StreamStack]:
    s = StreamStack(tmp_path, zk, f"{zk_root}/db", stream_nginx)
    yield s
    s.close()


def register(client: KazooClient, stack: StreamStack, index: int) -> None:
    client.create(f"{stack.znode}/{stack.pool[index].address}", makepath=True)


def unregister(client: KazooClient, stack: StreamStack, index: int) -> None:
    client.delete(f"{stack.znode}/{stack.pool[index].address}")


def test_reload_mode_moves_new_tcp_connections_after_a_zookeeper_change(
    stack: StreamStack, zk_client: KazooClient, capsys: pytest.CaptureFixture[str],
) -> None:
    register(zk_client, stack, 0)
    stack.start_nginx_with([0])
    daemon = stack.start_daemon()
    daemon.wait_log("watching 1 upstreams")
    daemon.wait_log(f"start-up: {stack.stream_file} holds 1 servers; adopted")
    stack.wait_reached([0], "e-1 only")

    # A connection opened now stays with e-1 through the reloads below (old workers finish their sessions).
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as held:
        held.sendall(b"first\n")
        assert held.recv(100) == b"e-1 first\n"

        changed = time.monotonic()
        register(zk_client, stack, 1)
        stack.wait_reached([0, 1], "e-1 and e-2")
        added = time.monotonic() - changed
        time.sleep(0.3)  # past min_interval, so the next figure is the latency, not the window
        changed = time.monotonic()
        unregister(zk_client, stack, 0)
        stack.wait_reached([1], "e-2 only")
        removed = time.monotonic() - changed

        held.sendall(b"second\n")
        assert held.recv(100) == b"e-1 second\n", "an established TCP session survives the reload"

    assert f"server 127.0.0.1:{stack.pool[1].port};" in stack.stream_file.read_text()
    assert not list(stack.files_dir.glob("*.upstream")), "a TCP upstream never gets an http file"
    check_upstream_files(stack.files_dir, binary=stack.nginx.binary)

    # A refused stream file is put back (the reload output's restore goes through the same naming).
    good = stack.stream_file.read_text()
    stack.break_marker.touch()
    register(zk_client, stack, 2)
    daemon.wait_log("refused the new upstream db")
    wait_for(lambda: stack.stream_file.read_text() == good, "db.stream to be restored", WAIT, daemon.tail)
    assert not (stack.files_dir / "db.upstream").exists()
    assert stack.reached() == {stack.pool[1].name}
    stack.break_marker.unlink()
    register(zk_client, stack, 3)
    stack.wait_reached([1, 2, 3], "e-2, e-3 and e-4")
    with capsys.disabled():
        print(f"\n[stream] znode change -> new TCP connections moved: add {added:.2f} s, remove {removed:.2f} s")


def test_start_up_adopts_stream_files_and_prunes_the_wrong_kind(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    """Files only: db.stream is adopted; db.upstream (db is a TCP upstream) and old.stream are pruned."""
    files = tmp_path / "upstreams"
    files.mkdir()
    adopted = "upstream db {\n    server 127.0.0.1:3306;\n}\n"
    (files / "db.stream").write_text(adopted)
    (files / "db.upstream").write_text("upstream db {\n    server 127.0.0.1:80;\n}\n")
    (files / "old.stream").write_text("upstream old {\n    server 127.0.0.1:81;\n}\n")
    (files / "web.upstream").write_text("upstream web {\n    server 127.0.0.1:8080;\n}\n")
    zk_client.ensure_path(f"{zk_root}/db")  # no instance yet: the adopted file stays
    zk_client.create(f"{zk_root}/web/127.0.0.1:8080", makepath=True)
    daemon = DaemonRun(tmp_path, {
        "zk_servers": zk.hosts, "zk_session_timeout": 2, "allowed_networks": ["127.0.0.0/8"],
        "files_output_path": str(files), "prune_files": True, **GUARDS_OFF,
        "zk_nodes": {"db": {"path": f"{zk_root}/db", "stream": True}, "web": f"{zk_root}/web"},
    })
    try:
        daemon.wait_log(f"start-up: {files / 'db.stream'} holds 1 servers; adopted")
        daemon.wait_log(f"{files / 'db.upstream'} belongs to no configured upstream; removed")
        daemon.wait_log(f"{files / 'old.stream'} belongs to no configured upstream; removed")
        wait_for(lambda: sorted(p.name for p in files.iterdir() if not p.name.startswith(".")) ==
                 ["db.stream", "web.upstream"], "the pruned files to go", WAIT, daemon.tail)
        assert (files / "db.stream").read_text() == adopted
        zk_client.create(f"{zk_root}/db/127.0.0.1:3307")
        wait_for(lambda: "127.0.0.1:3307" in (files / "db.stream").read_text(), "db.stream to be written",
                 WAIT, daemon.tail)
        assert not (files / "db.upstream").exists()

        # The other path to the same states: a live config reload (SIGHUP). A switch of kind is refused ...
        config = yaml.safe_load(daemon.config_path.read_text())
        config["zk_nodes"]["web"] = {"path": f"{zk_root}/web", "stream": True}
        daemon.config_path.write_text(yaml.safe_dump(config))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("stream cannot change while running for upstream web; restart the daemon for that")
        # ... a new TCP upstream gets its <name>.stream, and a removed one's file is pruned by its own name.
        zk_client.create(f"{zk_root}/cache/127.0.0.1:6379", makepath=True)
        config["zk_nodes"] = {"web": f"{zk_root}/web", "cache": {"path": f"{zk_root}/cache", "stream": True}}
        daemon.config_path.write_text(yaml.safe_dump(config))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("config reloaded")
        wait_for(lambda: sorted(p.name for p in files.iterdir() if not p.name.startswith(".")) ==
                 ["cache.stream", "web.upstream"], "cache.stream written and db.stream pruned", WAIT, daemon.tail)
        assert "server 127.0.0.1:6379;" in (files / "cache.stream").read_text()
    finally:
        daemon.stop()


def test_render_diff_and_write_name_the_stream_file(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, stream_nginx: str,
) -> None:
    zk_client.create(f"{zk_root}/db/127.0.0.1:3306", makepath=True)
    zk_client.create(f"{zk_root}/web/127.0.0.1:8080", makepath=True)
    files = tmp_path / "upstreams"
    path = tmp_path / "upstream_zk_nodes.conf"
    path.write_text(yaml.safe_dump({
        "zk_servers": zk.hosts, "zk_session_timeout": 3, "allowed_networks": ["127.0.0.0/8"],
        "files_output_path": str(files),
        "zk_nodes": {"db": {"path": f"{zk_root}/db", "stream": True}, "web": f"{zk_root}/web"},
    }))
    config = load_config(path)
    out, err = io.StringIO(), io.StringIO()
    assert run_render(config, diff=True, write=False, out=out, err=err) == 0, err.getvalue()
    diff = out.getvalue()
    assert f"+++ b/{str(files / 'db.stream').lstrip('/')}" in diff
    assert f"+++ b/{str(files / 'web.upstream').lstrip('/')}" in diff
    assert "db.upstream" not in diff
    out = io.StringIO()
    assert run_render(config, diff=False, write=True, out=out, err=err) == 0, err.getvalue()
    assert sorted(p.name for p in files.iterdir() if not p.name.startswith(".")) == ["db.stream", "web.upstream"]
    check_upstream_files(files, binary=stream_nginx)
    # Read back as the daemon's start-up reads it: nothing changes.
    out = io.StringIO()
    assert run_render(config, diff=True, write=False, out=out, err=err) == 0
    assert out.getvalue() == ""


def test_echo_backends_answer_with_their_name() -> None:
    with EchoPool(2, prefix="t") as pool:
        assert backend_name(pool[0].port) == "t-1"
        assert tcp_ask(pool[1].port, "ping") == "t-2 ping"
        assert pool[0].connections == 1
