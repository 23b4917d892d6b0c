"""LuaOutput driven directly (no ZooKeeper) against real nginx with the Lua module.

The output is ticked from the test thread, as its own thread would: every
call comes from one thread, and healing is waited for with a deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from reloader.localenv.backends import Backend
from reloader.localenv.luanginx import lua_missing
from reloader.model import Server, Upstream
from reloader.outputs.lua import LuaOutput, upstream_document
from tests.conftest import require
from tests.test_lua_module import Rig, fresh_get, update

if TYPE_CHECKING:
    from kazoo.client import KazooClient

    from reloader.localenv.zookeeper import LocalZooKeeper


def upstream(name: str, *backends: Backend, params: tuple[tuple[str, str], ...] = ()) -> Upstream:
    return Upstream(name, tuple(Server("127.0.0.1", b.port, params=params) for b in backends),
                    live_count=len(backends))


def tick_until(output: LuaOutput, condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Tick ``output`` every 20 ms until ``condition()``; return the seconds it took."""
    began = time.monotonic()
    while not condition():
        now = time.monotonic()
        if now - began > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        output.tick(now)
        time.sleep(0.02)
    return time.monotonic() - began




@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, nginx_bin: str) -> Iterator[Rig]:
    require(lua_missing())
    rig = Rig(tmp_path_factory.mktemp("luaout"))
    yield rig
    rig.close()


@pytest.fixture
def output(rig: Rig) -> Iterator[LuaOutput]:
    out = LuaOutput(rig.nginx.api_url, reconcile_interval=1.0, reassert_interval=60.0, retry_interval=0.2,
                    token=rig.token)
    yield out
    out.close()


def served(rig: Rig, count: int = 20) -> set[str]:
    return {fresh_get(rig.ports["app"])[1] for _ in range(count)}


def test_publish_serves_at_once(rig: Rig, output: LuaOutput) -> None:
    b3, b4 = rig.backends[2:4]
    output.publish(upstream("app", b3, b4))
    assert output.pending == ()
    assert served(rig) == {"b3", "b4"}
    assert rig.state("app") == upstream_document(upstream("app", b3, b4))


def test_params_are_mapped_and_max_conns_dropped(rig: Rig, output: LuaOutput,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    b3 = rig.backends[2]
    params = (("max_fails", "3"), ("fail_timeout", "2500ms"), ("max_conns", "10"))
    with caplog.at_level(logging.WARNING, logger="reloader.outputs.lua"):
        output.publish(upstream("app", b3, params=params))
    server = rig.state("app")["servers"][0]
    assert (server["max_fails"], server["fail_timeout"]) == (3, 2.5)
    assert "max_conns is not supported" in caplog.text


def test_restart_heals_within_reconcile_interval(rig: Rig, output: LuaOutput,
                                                record_property: Callable[[str, object], None]) -> None:
    b3, b4 = rig.backends[2:4]
    output.publish(upstream("app", b3, b4))
    rig.nginx.restart()
    restarted = time.monotonic()
    # Before the output notices, the file's servers serve: no request fails.
    assert served(rig, 5) <= {"b1", "b2"}
    took = tick_until(output, lambda: rig.state("app") != 404, 1.0 + 1.0 + 1.0, "the re-POST")
    healed = time.monotonic() - restarted
    record_property("heal_after_restart_s", round(healed, 2))
    print(f"healed {healed:.2f} s after the restart (reconcile_interval 1 s)")
    assert healed <= 1.0 + 1.0 + 0.5, took
    assert served(rig) == {"b3", "b4"}


def test_unreachable_interface_keeps_pending_and_probes(rig: Rig, output: LuaOutput) -> None:
    b4 = rig.backends[3]
    rig.nginx.stop()
    try:
        began = time.monotonic()
        output.publish(upstream("app", b4))
        # One attempt, short timeouts: publish never hangs on a dead interface.
        assert time.monotonic() - began < 1.5
        assert output.pending == ("app",)
        output.tick(time.monotonic())
        assert output.pending == ("app",)
    finally:
        rig.nginx.start()
    took = tick_until(output, lambda: not output.pending, 0.2 + 1.0, "the probe to flush the pending upstream")
    assert took <= 1.2
    assert served(rig) == {"b4"}


def test_drift_is_repaired_and_unmanaged_upstreams_are_removed(
    rig: Rig, output: LuaOutput, caplog: pytest.LogCaptureFixture
) -> None:
    b1, b3, b4, b5 = rig.backends[0], rig.backends[2], rig.backends[3], rig.backends[4]
    output.publish(upstream("app", b3))
    assert rig.post("other", update(b5)).status_code == 200
    other = rig.state("other")
    # Someone changes "app" behind the daemon's back.
    assert rig.post("app", update(b1, b4)).status_code == 200
    with caplog.at_level(logging.INFO, logger="reloader.outputs.lua"):
        tick_until(output, lambda: rig.state("app") == upstream_document(upstream("app", b3)), 2.5, "the repair")
    assert "upstream app drifted" in caplog.text
    # Only the daemon writes the module's store: a name it does not manage is
    # removed by the reconcile, with one log line (traffic falls back to its file).
    assert other != 404 and rig.state("other") == 404
    assert len([r for r in caplog.records if "does not manage" in r.getMessage()]) == 1
    assert "other" in caplog.text
    output.reassert("test")
    assert rig.state("app") == upstream_document(upstream("app", b3))


def test_refused_body_is_logged_not_retried(rig: Rig, output: LuaOutput, caplog: pytest.LogCaptureFixture) -> None:
    bad = Upstream("app", (Server("bad;host", 80),), live_count=1)
    with caplog.at_level(logging.ERROR, logger="reloader.outputs.lua"):
        output.publish(bad)
    assert "nginx refused upstream app" in caplog.text
    assert output.pending == ()


def test_daemon_end_to_end(tmp_path: Path, nginx_bin: str, zk: LocalZooKeeper, zk_client: KazooClient,
                           zk_root: str, record_property: Callable[[str, object], None]) -> None:
    """The daemon as a process: ZooKeeper -> Lua-mode files and POSTs -> nginx, no reload."""
    from tests.test_daemon import DaemonProcess

    require(lua_missing())
    (tmp_path / "rig").mkdir()
    rig = Rig(tmp_path / "rig")
    daemon = None
    try:
        b3, b4, b5 = rig.backends[2:5]
        znode = f"{zk_root}/app"
        for backend in (b3, b4):
            zk_client.create(f"{znode}/{backend.address}", makepath=True)
        config = {
            "zk_servers": zk.hosts,
            "zk_session_timeout": "4s",
            "files_output_path": str(rig.upstream_dir),
            "lua_url": rig.nginx.api_url,
            "reconcile_interval": "1s",
            "retry_interval": "0.5s",
            "zk_nodes": {"app": znode},
            "allowed_networks": ["127.0.0.0/8"],  # the backends listen on loopback
        }
        # nginx has loaded the rig's file (b1, b2); without it on disk the daemon
        # adopts no earlier state, so no drop guard holds b1 and b2 back.
        (rig.upstream_dir / "app.upstream").unlink()
        workers_before = rig.nginx.worker_pids()
        daemon = DaemonProcess(tmp_path, config, name="lua-daemon", files_dir=None, dyups_url=None).start()

        def serves(expected: set[str]) -> bool:
            assert daemon is not None and daemon.running, daemon.log_tail() if daemon else ""
            return served(rig) == expected

        deadline = time.monotonic() + 15
        while not serves({"b3", "b4"}):
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.05)
        assert "balancer_by_lua_block" in (rig.upstream_dir / "app.upstream").read_text()

        zk_client.create(f"{znode}/{b5.address}")
        added = time.monotonic()
        while not serves({"b3", "b4", "b5"}):
            assert time.monotonic() - added < 5, daemon.log_tail()
            time.sleep(0.01)
        record_property("zk_change_to_traffic_s", round(time.monotonic() - added, 3))
        # No reload happened: the same worker processes served all of it.
        assert rig.nginx.worker_pids() == workers_before

        rig.nginx.restart()
        restarted = time.monotonic()
        # The restarted nginx reads the file the daemon wrote: the live set, before any POST.
        assert served(rig, 10) <= {"b3", "b4", "b5"}
        while rig.state("app") == 404:
            assert time.monotonic() - restarted < 1.0 + 1.0 + 1.0, daemon.log_tail()
            time.sleep(0.05)
        record_property("heal_after_restart_s", round(time.monotonic() - restarted, 2))
        daemon.stop()
        daemon = None
    finally:
        if daemon is not None:
            daemon.kill()
        rig.close()


def many(name: str, count: int) -> Upstream:
    servers = tuple(Server(f"10.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}", 8080) for n in range(count))
    return Upstream(name, servers, live_count=count)


def errors_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_state_over_the_limits_is_refused_once_before_sending(
    rig: Rig, output: LuaOutput, caplog: pytest.LogCaptureFixture
) -> None:
    from reloader.nginx import MAX_SERVERS

    with caplog.at_level(logging.INFO, logger="reloader.outputs.lua"):
        output.publish(many("big", MAX_SERVERS + 1))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # five retry intervals and a reconcile
            output.tick(time.monotonic())
            time.sleep(0.02)
    assert rig.state("big") == 404, "never sent"
    (line,) = errors_in(caplog)
    assert "nginx refused upstream big" in line and f"limit of {MAX_SERVERS}" in line, line
    assert output.pending == () and output.refused == ("big",) and output.stats()["refused"] == 1


def test_a_413_is_refused_once_and_retried_only_with_back_off_or_a_new_state(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The interface refuses a body that is too large: reported once, not retried every retry_interval."""
    from reloader.nginx import MAX_BODY

    b3 = rig.backends[2]
    # A client that believes in a larger limit than nginx's, as a mismatch of the two sides would.
    out = LuaOutput(rig.nginx.api_url, token=rig.token, reconcile_interval=0.2, reassert_interval=0, retry_interval=0.1,
                    max_body=100 * MAX_BODY, max_servers=10**6, refused_retry=0.6)
    try:
        count = 2 * MAX_BODY // 90 + 1
        with caplog.at_level(logging.INFO, logger="reloader.outputs.lua"):
            out.publish(many("big", count))
            began = time.monotonic()
            while time.monotonic() - began < 0.5:  # retries and reconciles, inside the back-off
                out.tick(time.monotonic())
                time.sleep(0.02)
            assert out.stats()["http_413"] == 1, out.stats()
            tick_until(out, lambda: out.stats()["http_413"] == 2, 1.0, "the retry after the back-off")
        (line,) = errors_in(caplog)
        assert "nginx refused upstream big" in line and "413" in line, line
        assert out.refused == ("big",) and out.stats()["refused"] == 1
        out.publish(upstream("big", b3))  # a new state goes out at once
        assert out.refused == () and out.pending == ()
        assert rig.state("big") == upstream_document(upstream("big", b3))
    finally:
        out.close()


def test_host_names_the_balancer_cannot_use_are_warned_once(
    rig: Rig, output: LuaOutput, caplog: pytest.LogCaptureFixture
) -> None:
    named = Upstream("named", (Server("backend-1.example", 80), Server("backend-2.example", 80)), live_count=2)
    with caplog.at_level(logging.WARNING, logger="reloader.outputs.lua"):
        output.publish(named)
        output.publish(Upstream("named", (*named.servers, Server("backend-3.example", 80)), live_count=3))
        output.reassert("test")
    lines = [r.getMessage() for r in caplog.records if "host" in r.getMessage() and "named" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "backend-1.example" in lines[0] and "502" in lines[0], lines[0]
    assert output.stats()["warned_hostnames"] == 1
    output.publish(upstream("named", rig.backends[2]))  # addresses only: nothing to warn about
    assert "warned_hostnames" not in output.stats()
    output.forget("named")


def test_every_request_carries_the_token_and_json_posts_go_to_the_interface_host() -> None:
    """The authentication contract, checked on the wire with a local server that records every request."""
    import http.server
    import json
    import threading

    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, body: bytes) -> None:
            seen.append((self.command, {k.lower(): v for k, v in self.headers.items()}))
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._answer(json.dumps({"upstreams": {"stray": {"version": 1, "servers": []}}}).encode())

        def do_POST(self) -> None:  # noqa: N802
            self._answer(b'{"ok":true}')

        def do_DELETE(self) -> None:  # noqa: N802
            self._answer(b'{"ok":true}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    out = LuaOutput(url, token="s3cret", reconcile_interval=0, reassert_interval=0)
    try:
        out.publish(Upstream("app", (Server("10.0.0.1", 80),), live_count=1))
        out.reconcile()
    finally:
        out.close()
        server.shutdown()
        server.server_close()
    # The POST, the reconcile's GET, the removal of the stray name, the re-POST of the missing one.
    assert [method for method, _ in seen] == ["POST", "GET", "DELETE", "POST"], seen
    assert all(headers.get("x-reloader-token") == "s3cret" for _, headers in seen), seen
    assert all(headers.get("content-type") == "application/json" for method, headers in seen if method == "POST")
    assert all(headers.get("host") == url.split("//", 1)[1] for _, headers in seen), seen
