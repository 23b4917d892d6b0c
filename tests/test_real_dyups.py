"""Opt-in: the daemon against a real nginx built with the dyups module.

The module is third-party C and cannot be built on every machine, so this
test runs only when ``RELOADER_TEST_DYUPS_NGINX`` names such an nginx binary
(the stable module, Tengine, or the 2020 master build). Without it the test
reports itself skipped, by name: it is the only test in the suite that may.

It starts that nginx with a generated config (a ``dyups_interface`` server and
a proxy that picks the upstream from the Host header), real ZooKeeper and
real backends, then checks that proxied traffic follows ZooKeeper changes and
recovers after ``nginx -s reload`` and a full restart within
``reconcile_interval`` plus 2 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import yaml
from kazoo.client import KazooClient

from reloader.localenv.backends import Backend
from reloader.localenv.nginx import LocalNginx, server_block
from reloader.localenv.ports import free_port
from reloader.localenv.zookeeper import LocalZooKeeper

DYUPS_NGINX = os.environ.get("RELOADER_TEST_DYUPS_NGINX", "")
RECONCILE = 1.0

pytestmark = pytest.mark.skipif(
    not DYUPS_NGINX,
    reason="test_real_dyups: RELOADER_TEST_DYUPS_NGINX is not set (opt-in run against a real dyups nginx)",
)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def proxy_config(nginx: LocalNginx, files: Path, interface_port: int, proxy_port: int, proxy_pass: str) -> str:
    return (
        f"include {files}/*.upstream;\n"
        + server_block(interface_port, "location / { dyups_interface; }")
        + server_block(proxy_port, f"location / {{ proxy_pass {proxy_pass}; proxy_next_upstream off; }}")
    )


def choose_proxy_pass(nginx: LocalNginx, files: Path, interface_port: int, proxy_port: int) -> str:
    """``$dyups_host`` on the 2020 master build (only it knows the variable), ``$host`` elsewhere."""
    nginx.write_config(proxy_config(nginx, files, interface_port, proxy_port, "http://$dyups_host"))
    accepted, _output = nginx.test()
    return "http://$dyups_host" if accepted else "http://$host"


@pytest.fixture
def dyups_nginx(tmp_path: Path) -> Iterator[tuple[LocalNginx, Path, int, int]]:
    files = tmp_path / "upstreams"
    files.mkdir()
    nginx = LocalNginx(binary=DYUPS_NGINX)
    interface_port, proxy_port = free_port(), free_port()
    yield nginx, files, interface_port, proxy_port
    nginx.close()


def reached(proxy_port: int, name: str, tries: int = 6) -> set[str]:
    seen = set()
    for _ in range(tries):
        try:
            response = requests.get(f"http://127.0.0.1:{proxy_port}/", headers={"Host": name}, timeout=2)
        except requests.RequestException:
            continue
        if response.status_code == 200:
            seen.add(response.text.strip())
    return seen


def test_real_dyups_nginx_follows_zookeeper_and_recovers(
    dyups_nginx: tuple[LocalNginx, Path, int, int], zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
    tmp_path: Path,
) -> None:
    nginx, files, interface_port, proxy_port = dyups_nginx
    znode = f"{zk_root}/app1"
    with Backend("backend-1") as one, Backend("backend-2") as two:
        zk_client.create(f"{znode}/{one.address}", b"", makepath=True)
        config = tmp_path / "reloader.yaml"
        config.write_text(yaml.safe_dump({
            "files_output_path": str(files),
            "dyups_url": f"http://127.0.0.1:{interface_port}",
            "reconcile_interval": RECONCILE,
            "zk_session_timeout": 2,
            "clusters": [{"zk_servers": zk.hosts, "zk_nodes": {"app1": znode}}],
            "allowed_networks": ["127.0.0.0/8"],  # the backends listen on loopback
        }))
        log = (tmp_path / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reloader", "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            # nginx refuses to start with an include of an empty upstream, so the file comes first.
            wait_until((files / "app1.upstream").exists, 10, "the first upstream file")
            proxy_pass = choose_proxy_pass(nginx, files, interface_port, proxy_port)
            nginx.write_config(proxy_config(nginx, files, interface_port, proxy_port, proxy_pass))
            nginx.start()
            wait_until(lambda: reached(proxy_port, "app1") == {"backend-1"}, 10, "traffic to backend-1")

            zk_client.create(f"{znode}/{two.address}", b"")
            zk_client.delete(f"{znode}/{one.address}")
            wait_until(lambda: reached(proxy_port, "app1") == {"backend-2"}, 10, "traffic to move to backend-2")

            # Change ZooKeeper, then reload nginx: the stable and Tengine builds
            # forget every POSTed upstream, so only the reconciler brings this back.
            for event in ("reload", "restart"):
                getattr(nginx, event)()
                took = wait_until(
                    lambda: reached(proxy_port, "app1") == {"backend-2"}, RECONCILE + 2, f"traffic after nginx {event}"
                )
                print(f"real dyups: traffic correct {took:.2f} s after nginx {event}")
        finally:
            daemon.terminate()
            assert daemon.wait(10) == 0
            log.close()
