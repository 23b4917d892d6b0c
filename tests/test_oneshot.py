"""``render``: one read of the registry, shown, diffed or written, against real ZooKeeper and nginx -t."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from reloader.cli import main
from reloader.config import load_config
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.oneshot import run_render

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "upstream_zk_nodes.conf"
    path.write_text(body)
    return path


def one_cluster(tmp_path: Path, zk: LocalZooKeeper, zk_nodes: str, settings: str = "") -> Path:
    return write_config(tmp_path, (
        f"files_output_path: {tmp_path / 'upstreams'}\nzk_session_timeout: 3s\n{settings}"
        f"zk_servers: {zk.hosts}\nzk_nodes:\n{zk_nodes}"
    ))


def render(config_path: Path, *, diff: bool = False, write: bool = False) -> tuple[int, str, str]:
    """The command in-process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = run_render(load_config(config_path), diff=diff, write=write, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def render_subprocess(config_path: Path, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reloader", "render", "--config", str(config_path), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def register(client: KazooClient, path: str, *children: str) -> None:
    for child in children:
        client.create(f"{path}/{child}", b"", makepath=True)


def test_prints_the_file_and_the_dyups_body_and_writes_nothing(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    register(zk_client, f"{zk_root}/app1", "10.0.0.2:8080", "10.0.0.1:8080", "bad host:80")
    config = one_cluster(tmp_path, zk, f"  app1: {zk_root}/app1\n", "dyups_url: http://127.0.0.1:14443\n")

    result = render_subprocess(config)

    assert result.returncode == 0, result.stderr
    path = tmp_path / "upstreams" / "app1.upstream"
    assert result.stdout == (
        f"# app1: {path} (new file; 2 servers, 2 live, from {zk_root}/app1 on {zk.hosts})\n"
        "upstream app1 {\n"
        "    server 10.0.0.1:8080;\n"
        "    server 10.0.0.2:8080;\n"
        "}\n"
        "# dyups POST http://127.0.0.1:14443/upstream/app1\n"
        "# server 10.0.0.1:8080;server 10.0.0.2:8080;\n"
    )
    assert "'bad host:80' skipped" in result.stderr  # warnings go to stderr, never into the rendering
    assert not path.exists()


def test_diff_shows_exactly_the_registry_change(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    register(zk_client, f"{zk_root}/app1", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
    register(zk_client, f"{zk_root}/app2", "10.1.0.1:80")
    config = one_cluster(tmp_path, zk, f"  app1: {zk_root}/app1\n  app2: {zk_root}/app2\n")
    assert render(config, write=True)[0] == 0

    zk_client.delete(f"{zk_root}/app1/10.0.0.2:80")
    register(zk_client, f"{zk_root}/app1", "10.0.0.4:80")
    code, out, err = render(config, diff=True)

    path = str(tmp_path / "upstreams" / "app1.upstream").lstrip("/")
    assert code == 0, err
    assert out == (  # app2 is unchanged: nothing at all for it
        f"--- a/{path}\n"
        f"+++ b/{path}\n"
        "@@ -1,5 +1,5 @@\n"
        " upstream app1 {\n"
        "     server 10.0.0.1:80;\n"
        "-    server 10.0.0.2:80;\n"
        "     server 10.0.0.3:80;\n"
        "+    server 10.0.0.4:80;\n"
        " }\n"
    )
    assert (tmp_path / "upstreams" / "app1.upstream").read_text().count("10.0.0.2:80") == 1  # --diff writes nothing


def test_write_writes_files_nginx_accepts_and_only_when_they_change(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
    nginx_check: Callable[[Path], None],
) -> None:
    register(zk_client, f"{zk_root}/api", "10.0.0.1:80", "10.0.0.2:80")
    zk_nodes = (
        f"  api:\n    path: {zk_root}/api\n    upstream_directives: [least_conn, keepalive 16]\n"
        "    server_params: {max_fails: 3}\n    backup_servers: ['10.9.9.9:8080']\n"
        f"  web: {zk_root}/web\n"
    )
    register(zk_client, f"{zk_root}/web", "web1.invalid:80", "10.2.0.1:80")
    config = one_cluster(tmp_path, zk, zk_nodes)
    directory = tmp_path / "upstreams"

    result = render_subprocess(config, "--write")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {directory / 'api.upstream'}\nwrote {directory / 'web.upstream'}\n"
    assert (directory / "api.upstream").read_text() == (
        "upstream api {\n    least_conn;\n    keepalive 16;\n"
        "    server 10.0.0.1:80 max_fails=3;\n    server 10.0.0.2:80 max_fails=3;\n"
        "    server 10.9.9.9:8080 backup;\n}\n"
    )
    assert "web1.invalid" not in (directory / "web.upstream").read_text()  # a name that does not resolve is skipped
    nginx_check(directory)
    assert not list(directory.glob(".*.tmp"))

    assert render(config, write=True)[:2] == (0, "")  # nothing changed: nothing written


def test_zero_instances_keeps_the_file_on_disk(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    register(zk_client, f"{zk_root}/app1", "10.0.0.1:80")
    config = one_cluster(tmp_path, zk, f"  app1: {zk_root}/app1\n  app2: {zk_root}/app2\n")
    zk_client.ensure_path(f"{zk_root}/app2")
    assert render(config, write=True)[0] == 0
    file = tmp_path / "upstreams" / "app1.upstream"
    before = file.read_text()
    zk_client.delete(f"{zk_root}/app1/10.0.0.1:80")
    zk_client.create(f"{zk_root}/app1/not-an-instance", b"")

    code, out, err = render(config)
    assert code == 0, err
    assert out == (
        f"# app1: znode {zk_root}/app1 has no valid instances; the file stays as it is\n\n"
        f"# app2: znode {zk_root}/app2 has no valid instances; no file is written\n"
    )
    code, out, err = render(config, write=True)
    assert (code, out) == (0, "")
    assert f"app1: znode {zk_root}/app1 has no valid instances; the file stays as it is" in err
    assert file.read_text() == before
    assert not (tmp_path / "upstreams" / "app2.upstream").exists()


def test_a_missing_znode_is_reported_and_exits_1(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    register(zk_client, f"{zk_root}/app1", "10.0.0.1:80")
    config = one_cluster(tmp_path, zk, f"  app1: {zk_root}/app1\n  gone: {zk_root}/gone\n")

    code, out, err = render(config)

    assert code == 1
    assert f"cluster {zk.hosts}: znode {zk_root}/gone does not exist" in err
    assert f"# gone: znode {zk_root}/gone does not exist; no file is written\n" in out
    assert "    server 10.0.0.1:80;\n" in out  # the znode that exists is still rendered


def test_an_unreachable_cluster_exits_1_promptly_and_names_it(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    register(zk_client, f"{zk_root}/app1", "10.0.0.1:80")
    (tmp_path / "upstreams").mkdir()
    (tmp_path / "upstreams" / "dark.upstream").write_text("upstream dark {\n    server 10.7.0.1:80;\n}\n")
    config = write_config(tmp_path, (
        f"files_output_path: {tmp_path / 'upstreams'}\nzk_session_timeout: 2s\nclusters:\n"
        f"  - zk_servers: {zk.hosts}\n    zk_nodes:\n      app1: {zk_root}/app1\n"
        "  - name: dark-dc\n    zk_servers: 127.0.0.1:1\n    zk_nodes:\n      dark: /services/dark\n"
    ))

    started = time.monotonic()
    result = render_subprocess(config, timeout=30)
    elapsed = time.monotonic() - started

    assert result.returncode == 1, result.stderr
    assert elapsed < 2 + 4, f"took {elapsed:.1f}s"  # the session timeout, plus interpreter start-up and teardown
    assert "cluster dark-dc: cannot be read: " in result.stderr
    assert "# dark: cluster dark-dc could not be read; the file stays as it is\n" in result.stdout
    assert "    server 10.0.0.1:80;\n" in result.stdout  # the reachable cluster is rendered all the same


def test_a_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "zk_servers: 127.0.0.1:2181\nzk_nodes:\n  app1: services/app1\n")
    assert main(["render", "--config", str(config)]) == 2
    assert "must start with '/'" in capsys.readouterr().err


def test_lua_mode_prints_the_lua_file_and_the_json_body(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    register(zk_client, f"{zk_root}/app1", "10.0.0.1:80")
    config = one_cluster(tmp_path, zk, f"  app1: {zk_root}/app1\n", "lua_url: http://127.0.0.1:14444\n")

    code, out, err = render(config)

    assert code == 0, err
    assert 'balancer_by_lua_block { require("reloader_balancer").balance("app1") }\n' in out
    assert out.endswith(
        "# lua POST http://127.0.0.1:14444/upstream/app1\n"
        '# {"servers": [{"backup": false, "down": false, "fail_timeout": 10, "host": "10.0.0.1", '
        '"max_fails": 1, "port": 80, "weight": 1}], "version": 1}\n'
    )


def test_the_shrink_guard_holds_a_large_drop_and_says_so(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    register(zk_client, f"{zk_root}/app1", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
    config = one_cluster(tmp_path, zk, f"  app1: {zk_root}/app1\n")
    assert render(config, write=True)[0] == 0
    for host in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        zk_client.delete(f"{zk_root}/app1/{host}:80")

    code, out, err = render(config, diff=True)

    assert (code, out) == (0, "")  # the daemon would publish nothing yet: the drop is held
    assert ("app1: the shrink guard keeps 3 servers the registry no longer lists (more than max_drop 50% at once); "
            "the daemon removes them after drop_hold 30s") in err


def test_render_reads_and_writes_the_guard_record_as_the_daemon_does(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    """4 -> 2 is written with what the reference owes; 2 -> 1 then is still a drop of 3 of 4."""
    import json

    register(zk_client, f"{zk_root}/app1", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
    config = one_cluster(tmp_path, zk, f"  app1: {zk_root}/app1\n")
    assert render(config, write=True)[0] == 0
    record = tmp_path / "upstreams" / ".reloader-guards.json"
    assert not record.exists()
    for host in ("10.0.0.3", "10.0.0.4"):
        zk_client.delete(f"{zk_root}/app1/{host}:80")
    assert render(config, write=True)[0] == 0
    assert [count for _, count in json.loads(record.read_text())["upstreams"]["app1"]] == [4]
    zk_client.delete(f"{zk_root}/app1/10.0.0.2:80")

    code, out, err = render(config, diff=True)

    assert (code, out) == (0, "")  # the 4 served before still count: held
    assert "app1: the shrink guard keeps 1 servers the registry no longer lists" in err


def test_write_refuses_a_directory_a_daemon_manages(
    tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
) -> None:
    from reloader.process import directory_lock

    register(zk_client, f"{zk_root}/app1", "10.0.0.1:80")
    config = one_cluster(tmp_path, zk, f"  app1: {zk_root}/app1\n")
    lock = directory_lock(tmp_path / "upstreams")
    lock.acquire()  # as `run` does at start-up
    try:
        code, out, err = render(config, write=True)
    finally:
        lock.release()

    assert (code, out) == (1, "")
    assert "a running nginx-upstream-reloader manages" in err
    assert not (tmp_path / "upstreams" / "app1.upstream").exists()
