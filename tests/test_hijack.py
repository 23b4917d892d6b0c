"""One team's znode cannot point nginx at the host: the hijack attempt, end to end.

Real ZooKeeper, the daemon as a process in reload mode, Debian's nginx, real
traffic. Team A registers, under its own znode, the address of a local
listener (standing in for the Lua interface, dyups, the status listener or
ZooKeeper on the host) in several spellings, and the cloud metadata service.
None of them reaches a file or nginx, team B's traffic is untouched, and each
refused child is named in exactly one warning.

Each team's honest backend listens on a loopback address of its own
(127.0.0.2, 127.0.0.3) that its upstream allows by ``allowed_networks``, so
the test can serve real traffic while 127.0.0.1 stays refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kazoo.client import KazooClient

from reloader.localenv.backends import Backend, http_get
from reloader.localenv.nginx import LocalNginx, check_upstream_files, server_block
from reloader.localenv.ports import free_port
from reloader.localenv.zookeeper import LocalZooKeeper

pytestmark = pytest.mark.timeout(90)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def answers(url: str, tries: int = 8) -> set[str]:
    seen = set()
    for _ in range(tries):
        status, body = http_get(url, timeout=3)
        seen.add(body.strip() if status == 200 else f"HTTP {status}")
    return seen


def test_a_team_cannot_point_nginx_at_the_host_or_at_another_team(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, nginx_bin: str, tmp_path: Path,
) -> None:
    secret = Backend("secret")  # on 127.0.0.1: what the attacker wants nginx to reach
    team_a = Backend("team-a", host="127.0.0.3")
    team_a2 = Backend("team-a2", host="127.0.0.3")
    team_b = Backend("team-b", host="127.0.0.2")
    for backend in (secret, team_a, team_a2, team_b):
        backend.start()
    files = tmp_path / "upstreams"
    znode_a, znode_b = f"{zk_root}/teama", f"{zk_root}/teamb"
    zk_client.create(f"{znode_a}/{team_a.address}", makepath=True)
    zk_client.create(f"{znode_b}/{team_b.address}", makepath=True)

    nginx = LocalNginx(binary=nginx_bin)
    port = free_port()
    locations = "".join(f"location /{name}/ {{ proxy_pass http://{name}; }}\n" for name in ("teama", "teamb"))
    nginx.write_config(f"include {files}/*.upstream;\n" + server_block(port, locations))
    config = tmp_path / "reloader.yaml"
    config.write_text(yaml.safe_dump({
        "files_output_path": str(files),
        "zk_session_timeout": 2,
        "max_drop": 1.0, "drop_hold": 0, "settle_after_reconnect": 0,
        "nginx_reload": {"test_cmd": nginx.test_argv(), "reload_cmd": nginx.reload_argv(), "min_interval": "200ms"},
        "clusters": [{"zk_servers": zk.hosts, "zk_nodes": {
            "teama": {"path": znode_a, "allowed_networks": ["127.0.0.3/32"]},
            "teamb": {"path": znode_b, "allowed_networks": ["127.0.0.2/32"]},
        }}],
    }))
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reloader", "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    hostile = [
        f"127.0.0.1:{secret.port}",
        f"[::ffff:127.0.0.1]:{secret.port}",
        f"0.0.0.0:{secret.port}",
        f"[::1]:{secret.port}",
        "169.254.169.254:80",
        f"localhost:{secret.port}",  # a host name is judged by what it resolves to
    ]
    try:
        wait_until(lambda: all((files / f"{name}.upstream").exists() for name in ("teama", "teamb")), 15,
                   "both upstream files")
        nginx.start()
        url_a, url_b = nginx.url("/teama/", port=port), nginx.url("/teamb/", port=port)
        wait_until(lambda: answers(url_b) == {"team-b"}, 10, "team B's traffic")

        for child in hostile:
            zk_client.create(f"{znode_a}/{child}")
        # An honest change after the attack: once it is served, the attack has been processed.
        zk_client.create(f"{znode_a}/{team_a2.address}")
        wait_until(lambda: answers(url_a, tries=12) == {"team-a", "team-a2"}, 15, "team A's honest change")
        # A second change re-runs the parse of every child: still one warning each.
        zk_client.set(f"{znode_a}/{team_a2.address}", b"2")
        wait_until(lambda: "weight=2" in (files / "teama.upstream").read_text(), 10, "team A's second change")

        text_a = (files / "teama.upstream").read_text()
        for needle in ("127.0.0.1", "::1", "::ffff", "0.0.0.0", "169.254", "localhost"):
            assert needle not in text_a, text_a
        assert (files / "teamb.upstream").read_text() == f"upstream teamb {{\n    server {team_b.address};\n}}\n"
        assert answers(url_b, tries=12) == {"team-b"}
        assert answers(url_a, tries=12) <= {"team-a", "team-a2"}
        assert secret.requests == 0, "nginx never reached the local listener"
        check_upstream_files(files, nginx_bin)

        log_text = log_path.read_text()
        for child in hostile:
            named = [line for line in log_text.splitlines()
                     if re.search(rf"znode {re.escape(znode_a)} child {re.escape(repr(child))} skipped", line)]
            assert len(named) == 1, (child, named)
        assert "teamb" not in "".join(line for line in log_text.splitlines() if "skipped" in line)
    except AssertionError:
        print(log_path.read_text()[-4000:])
        raise
    finally:
        daemon.terminate()
        assert daemon.wait(10) == 0
        nginx.close()
        for backend in (secret, team_a, team_a2, team_b):
            backend.stop()
