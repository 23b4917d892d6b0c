"""A real nginx (Lua mode) with fast backends, for the traffic tests (slow start, panic, prefer).

The backends are server blocks of the same nginx answering ``return 200
NAME``, so thousands of requests a second go through the Lua balancer; each
backend answers 502 while its flag file exists (:meth:`TrafficRig.fail`).
The daemon's side is real too: :class:`~reloader.outputs.lua.LuaOutput`
posts what a :class:`~reloader.pipeline.Pipeline` publishes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

from reloader.assemble import UpstreamOptions
from reloader.config import GuardSettings, ZnodeConfig
from reloader.localenv.luanginx import LuaNginx
from reloader.localenv.nginx import server_block
from reloader.localenv.ports import free_port
from reloader.model import Server, Upstream
from reloader.netpolicy import NetworkPolicy, parse_networks
from reloader.outputs.lua import LuaOutput
from reloader.pipeline import Pipeline
from reloader.publication import ClusterFreeze
from reloader.render import render_file_lua

BACKEND = """access_log off;
location / {{
    if (-f {flag}) {{ return 502; }}
    return 200 "{name}\\n";
}}
"""

FRONT = """access_log off;
location / {{
    proxy_pass http://{name};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_next_upstream error timeout http_502;
    add_header X-Upstream $upstream_addr always;
}}
"""

GUARDS_OFF = GuardSettings(settle_after_reconnect=0, max_drop=1.0, drop_hold=0)
LOOPBACK = NetworkPolicy(allowed=parse_networks(["127.0.0.0/8"]))


class TrafficRig:
    """nginx with the Lua module, ``count`` backends ``b1``..``bN`` and one upstream ``app``."""

    def __init__(self, tmp: Path, count: int = 4) -> None:
        self.tmp = tmp
        self.ports = {f"b{i}": free_port() for i in range(1, count + 1)}
        self.upstream_dir = tmp / "upstreams"
        self.upstream_dir.mkdir()
        first = Upstream("app", tuple(Server("127.0.0.1", port) for port in self.ports.values()))
        (self.upstream_dir / "app.upstream").write_text(render_file_lua(first))
        self.front = free_port()
        self.nginx = LuaNginx(free_port(), self.upstream_dir, workdir=tmp / "nginx")
        body = server_block(self.front, FRONT.format(name="app")) + "".join(
            server_block(port, BACKEND.format(flag=self.flag(name), name=name)) for name, port in self.ports.items()
        )
        self.nginx.write_config(body)
        self.nginx.start()
        self.output = LuaOutput(self.nginx.api_url, token=self.nginx.token(), reconcile_interval=0.5)
        self.freeze = ClusterFreeze()
        self.pipeline: Pipeline | None = None

    def flag(self, name: str) -> Path:
        return self.tmp / f"fail-{name}"

    def fail(self, *names: str) -> None:
        for name in names:
            self.flag(name).touch()

    def recover(self, *names: str) -> None:
        for name in names:
            self.flag(name).unlink(missing_ok=True)

    def make_pipeline(self, options: UpstreamOptions) -> Pipeline:
        znode = ZnodeConfig(upstream="app", path="/services/app", key_path="zk_nodes.app", options=options,
                            guards=GUARDS_OFF, networks=LOOPBACK)
        assert self.freeze.open_if(self.freeze.epoch)
        self.pipeline = Pipeline([znode], self.output.publish, self.freeze)
        return self.pipeline

    def children(self, *names: str, labels: dict[str, dict[str, str]] | None = None) -> dict[str, bytes]:
        """A znode snapshot (json format) registering the named backends."""
        import json

        out = {}
        for name in names:
            doc: dict[str, object] = {"host": "127.0.0.1", "port": self.ports[name]}
            if labels and name in labels:
                doc["labels"] = labels[name]
            out[name] = json.dumps(doc).encode()
        return out

    def register(self, *names: str, labels: dict[str, dict[str, str]] | None = None) -> None:
        assert self.pipeline is not None
        self.pipeline.update("app", self.children(*names, labels=labels), "/services/app")
        assert not self.output.pending, self.output.pending

    def name_of(self, port: int) -> str:
        return next(name for name, p in self.ports.items() if p == port)

    def close(self) -> None:
        self.output.close()
        self.nginx.close()


def requests_until(port: int, until: float) -> Iterator[tuple[float, int, str]]:
    """(wall-clock time, status, body) of requests on one kept-alive connection until ``until`` (wall clock)."""
    conn = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        while time.time() < until:
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read().decode().strip()
            yield time.time(), response.status, body
    finally:
        conn.close()


def one_request(port: int) -> tuple[int, str]:
    conn = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read().decode().strip()
    finally:
        conn.close()
