"""Every registry format, registered in real ZooKeeper, served by real nginx.

Each format gets its own upstream whose only child points at a real backend,
written the way the system that uses that format writes it. The daemon runs
as a real process in reload mode against Debian's nginx, and each upstream's
traffic must reach its backend. A mixed fleet (two formats under one znode, as
during a migration) must serve both backends.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from kazoo.client import KazooClient

from reloader.localenv.backends import Backend, http_get
from reloader.localenv.nginx import LocalNginx, server_block
from reloader.localenv.ports import free_port
from reloader.localenv.zookeeper import LocalZooKeeper

Child = tuple[str, bytes]


def dubbo(port: int) -> Child:
    url = f"dubbo://127.0.0.1:{port}/com.example.DemoService?anyhost=true&application=demo&side=provider&weight=50"
    return quote(url, safe=""), b""


def smartstack(port: int) -> Child:
    encoded = base64.urlsafe_b64encode(json.dumps({"host": "127.0.0.1", "port": port, "name": "i-1"}).encode()).decode()
    return f"base64_{len(encoded)}_{encoded}_0000000001", b""


def serverset(port: int) -> Child:
    data = {"serviceEndpoint": {"host": "127.0.0.1", "port": port}, "additionalEndpoints": {}, "status": "ALIVE"}
    return "member_0000000001", json.dumps(data).encode()


def curator(port: int) -> Child:
    data = {
        "name": "orders", "id": "3b5e6a8c", "address": "127.0.0.1", "port": port, "sslPort": None,
        "payload": {"@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
                    "metadata": {"instance_status": "UP"}},
        "registrationTimeUTC": 1700000000000, "serviceType": "DYNAMIC",
    }
    return "3b5e6a8c-1d2f-4a6b-9c0e-7f8a9b0c1d2e", json.dumps(data).encode()


def yarn(port: int) -> Child:
    data = {
        "type": "JSONServiceRecord",
        "external": [{"api": "http", "addressType": "host/port", "protocolType": "webui",
                      "addresses": [{"host": "127.0.0.1", "port": str(port)}]}],
        "internal": [],
    }
    return "container_e01_1700000000000_0002_01_000002", json.dumps(data).encode()


def generic_json(port: int) -> Child:
    return "i-0a1b2c3d_0000000031", json.dumps({"host": "127.0.0.1", "port": port, "weight": 2}).encode()


def text(port: int) -> Child:
    return f"127.0.0.1_{port}", f"127.0.0.1:{port}:10".encode()


def plain_name(port: int) -> Child:
    return f"127.0.0.1:{port}", b"3"


FORMATS: dict[str, Callable[[int], Child]] = {
    "dubbo": dubbo,
    "smartstack": smartstack,
    "serverset": serverset,
    "curator": curator,
    "yarn": yarn,
    "json": generic_json,
    "text": text,
    "name": plain_name,
}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def reached(url: str, tries: int = 6) -> set[str]:
    seen = set()
    for _ in range(tries):
        status, body = http_get(url, timeout=2)
        if status == 200:
            seen.add(body.strip())
    return seen


@pytest.fixture
def backends() -> Iterator[dict[str, Backend]]:
    names = [*FORMATS, "mixed-a", "mixed-b"]
    started = {name: Backend(name) for name in names}
    for backend in started.values():
        backend.start()
    yield started
    for backend in started.values():
        backend.stop()


def test_every_format_and_a_mixed_fleet_serve_real_traffic(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, backends: dict[str, Backend],
    nginx_bin: str, tmp_path: Path,
) -> None:
    files = tmp_path / "upstreams"
    zk_nodes = {}
    for name, build in FORMATS.items():
        child, data = build(backends[name].port)
        zk_client.create(f"{zk_root}/{name}/{child}", data, makepath=True)
        zk_nodes[f"fmt-{name}"] = f"{zk_root}/{name}"
    mixed = f"{zk_root}/mixed"
    for child, data in (curator(backends["mixed-a"].port), plain_name(backends["mixed-b"].port)):
        zk_client.create(f"{mixed}/{child}", data, makepath=True)
    zk_nodes["mixed"] = mixed

    nginx = LocalNginx(binary=nginx_bin)
    port = free_port()
    locations = "".join(f"location /{name}/ {{ proxy_pass http://{name}; }}\n" for name in zk_nodes)
    nginx.write_config(f"include {files}/*.upstream;\n" + server_block(port, locations))
    config = tmp_path / "reloader.yaml"
    config.write_text(yaml.safe_dump({
        "files_output_path": str(files),
        "zk_session_timeout": 2,
        "nginx_reload": {"test_cmd": nginx.test_argv(), "reload_cmd": nginx.reload_argv(), "min_interval": "200ms"},
        "clusters": [{"zk_servers": zk.hosts, "zk_nodes": zk_nodes}],
        "allowed_networks": ["127.0.0.0/8"],  # the backends listen on loopback
    }))
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reloader", "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: all((files / f"{name}.upstream").exists() for name in zk_nodes), 15, "every upstream file")
        nginx.start()
        for name in FORMATS:
            url = nginx.url(f"/fmt-{name}/", port=port)
            wait_until(lambda: reached(url) == {name}, 10, f"traffic for format {name} to reach its backend")
        mixed_url = nginx.url("/mixed/", port=port)
        wait_until(lambda: reached(mixed_url, tries=12) == {"mixed-a", "mixed-b"}, 10, "both halves of the mixed fleet")
    except AssertionError:
        print(log_path.read_text()[-4000:])
        raise
    finally:
        daemon.terminate()
        assert daemon.wait(10) == 0
        nginx.close()
