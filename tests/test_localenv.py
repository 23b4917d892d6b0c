"""The local services themselves: real ZooKeeper, real nginx, real backends."""

from __future__ import annotations

import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kazoo.client import KazooClient, KazooState

from reloader.localenv.backends import Backend, BackendPool, http_get
from reloader.localenv.nginx import LocalNginx, NginxConfigError, server_block
from reloader.localenv.ensemble import LocalEnsemble
from reloader.localenv.ports import free_port, port_accepts
from reloader.localenv.tcpproxy import close_socket
from reloader.localenv.zookeeper import LocalZooKeeper, ZooKeeperError, threads_stopped


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_for_state(states: queue.Queue[str], wanted: str, timeout: float) -> None:
    """Wait until the kazoo listener reported ``wanted``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"kazoo never reported {wanted}")
        try:
            if states.get(timeout=remaining) == wanted:
                return
        except queue.Empty:
            continue


# -- ports ---------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_ports_picked_one_by_one_never_repeat_before_any_is_bound() -> None:
    # 600 single picks out of about 28,000 ephemeral ports: unrecorded, a repeat is all but certain.
    ports = [free_port() for _ in range(600)]
    assert len(set(ports)) == 600


def test_an_ensemble_never_gives_two_of_its_ports_the_same_number() -> None:
    ensemble = LocalEnsemble(voters=3, observers=1)  # ports are picked here; nothing starts
    try:
        ports = [port for node in ensemble.nodes for port in (node.port, node.quorum_port, node.election_port)]
        assert len(ports) == 12 and len(set(ports)) == 12
    finally:
        ensemble.close()


# -- ZooKeeper -----------------------------------------------------------------


def test_zookeeper_session_creates_node(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str
) -> None:
    assert zk.hosts == f"127.0.0.1:{zk.port}"
    assert zk.running
    zk_client.create(f"{zk_root}/node", b"hello")
    data, _ = zk_client.get(f"{zk_root}/node")
    assert data == b"hello"


def test_two_session_servers_are_independent(
    zk: LocalZooKeeper, zk2: LocalZooKeeper, zk_client: KazooClient, zk_root: str
) -> None:
    assert zk.hosts != zk2.hosts
    zk_client.create(f"{zk_root}/only-here")
    other = zk2.client()
    try:
        assert not other.exists(f"{zk_root}/only-here")
    finally:
        other.stop()
        other.close()


def test_zookeeper_pause_and_resume(zk_factory: Callable[..., LocalZooKeeper]) -> None:
    server = zk_factory()
    client = server.client(session_timeout=2.0)
    states: queue.Queue[str] = queue.Queue()
    client.add_listener(states.put)
    try:
        client.create("/keep", b"v1")
        server.pause()
        assert server.running  # a stopped process still exists
        assert server.pid is not None and threads_stopped(server.pid), "pause returned before every thread stopped"
        assert port_accepts(server.port)  # the kernel still takes connections; nothing answers them
        # kazoo pings every third of the session timeout, so ~2 s is enough.
        wait_for_state(states, KazooState.SUSPENDED, timeout=15)
        server.resume()
        wait_for(lambda: client.connected, timeout=20, what="kazoo to reconnect")
        assert client.get("/keep")[0] == b"v1"
    finally:
        client.stop()
        client.close()


def test_zookeeper_kill_and_restart_keep_data(zk_factory: Callable[..., LocalZooKeeper]) -> None:
    server = zk_factory()
    hosts = server.hosts
    client = server.client()
    client.create("/persistent", b"survives")
    client.stop()
    client.close()

    server.kill()
    assert not server.running
    assert not port_accepts(server.port)

    server.restart()
    assert server.hosts == hosts
    assert server.last_start_seconds is not None
    client = server.client()
    try:
        assert client.get("/persistent")[0] == b"survives"
    finally:
        client.stop()
        client.close()


@pytest.mark.usefixtures("zookeeper_installed")
def test_zookeeper_start_failure_shows_log(tmp_path: Path) -> None:
    # Hold the port (bound, not listening) so the server cannot bind it.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        server = LocalZooKeeper(workdir=tmp_path / "zk", port=blocker.getsockname()[1])
        with pytest.raises(ZooKeeperError) as caught:
            server.start(timeout=30)
        assert not server.running
    assert "log tail" in str(caught.value)
    assert "Address already in use" in str(caught.value)


# -- nginx upstream check -------------------------------------------------------


def test_check_accepts_good_upstream_file(
    nginx_check: Callable[[Path], None], tmp_path: Path
) -> None:
    (tmp_path / "x.upstream").write_text("upstream x { server 127.0.0.1:1; }\n")
    nginx_check(tmp_path)


def test_check_accepts_empty_directory(nginx_check: Callable[[Path], None], tmp_path: Path) -> None:
    nginx_check(tmp_path)


def test_check_rejects_broken_upstream_file(
    nginx_check: Callable[[Path], None], tmp_path: Path
) -> None:
    (tmp_path / "good.upstream").write_text("upstream good { server 127.0.0.1:1; }\n")
    broken = tmp_path / "broken.upstream"
    broken.write_text("upstream broken {\n    server 1.2.3.4:80;}\n}\n")
    with pytest.raises(NginxConfigError) as caught:
        nginx_check(tmp_path)
    # nginx's own message, pointing at the real file (not the throwaway link).
    assert "[emerg]" in caught.value.output
    assert str(broken) in str(caught.value)


# -- nginx serving real traffic -----------------------------------------------------


def proxy_config(port: int, backend: Backend) -> str:
    return f"upstream b {{\n    server {backend.address};\n}}\n" + server_block(
        port, "location / {\n    proxy_pass http://b;\n}"
    )


def test_nginx_proxies_to_backend_and_reloads(nginx_bin: str) -> None:
    port = free_port()
    with BackendPool(2) as pool, LocalNginx(nginx_bin) as nginx:
        first, second = pool
        nginx.write_config(proxy_config(port, first))
        assert nginx.test()[0]
        nginx.start()
        assert nginx.listen_ports == [port]
        assert http_get(nginx.url()) == (200, "backend-1\n")
        assert first.requests == 1

        old_workers = nginx.worker_pids()
        nginx.write_config(proxy_config(port, second))
        nginx.reload()
        assert len(nginx.worker_pids() - old_workers) == LocalNginx.worker_processes
        assert http_get(nginx.url()) == (200, "backend-2\n")
        assert (first.requests, second.requests) == (1, 1)

        # The argv the daemon will be handed works as given.
        assert nginx.reload_argv()[-2:] == ["-s", "reload"]
        assert nginx.reload_argv()[:2] == [nginx_bin, "-p"]

        nginx.stop()
        assert not nginx.running
        assert not port_accepts(port)


def test_nginx_rejects_bad_config_and_keeps_serving(nginx_bin: str) -> None:
    port = free_port()
    with Backend("only") as backend, LocalNginx(nginx_bin) as nginx:
        nginx.write_config(proxy_config(port, backend))
        nginx.start()
        nginx.write_config("upstream b { server 1.2.3.4:80;} }")
        ok, output = nginx.test()
        assert not ok and "[emerg]" in output
        with pytest.raises(NginxConfigError):
            nginx.reload()
        assert http_get(f"http://127.0.0.1:{port}/") == (200, "only\n")


def _sleeping(thread_id: int) -> bool:
    """True while the thread waits in the kernel (state S in /proc)."""
    try:
        stat = Path(f"/proc/self/task/{thread_id}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "S"


def _stop_with_a_thief(backend: Backend) -> bool:
    """Start ``backend``; let a thief accept on its listening socket while clients connect; True if stop() returns."""
    backend.start()
    server = backend._server
    assert server is not None
    listener = socket.socket(fileno=os.dup(server.socket.fileno()))
    stolen: list[socket.socket] = []
    done = threading.Event()
    thief_ids: list[int] = []

    def steal() -> None:
        # Straight into accept(): on a blocking socket the thief is already
        # waiting in the kernel when the client connects, so it wins the
        # connection while serve_forever() is still on its way from select().
        thief_ids.append(threading.get_native_id())
        while not done.is_set():
            try:
                stolen.append(listener.accept()[0])
            except BlockingIOError:
                try:
                    select.select([listener], [], [], 0.05)
                except (OSError, ValueError):  # closed meanwhile: the round is over
                    return
            except OSError:
                return

    thief = threading.Thread(target=steal, daemon=True)
    thief.start()
    stopper = threading.Thread(target=backend.stop, daemon=True)
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 5
        while not (thief_ids and _sleeping(thief_ids[0])) and time.monotonic() < deadline:
            time.sleep(0.001)
        clients.append(socket.create_connection(("127.0.0.1", backend.port)))
        clients[0].sendall(b"GET / HTTP/1.0\r\n\r\n")  # counted if the backend wins it
        while not stolen and backend.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stopper.start()
        stopper.join(timeout=5)
        return not stopper.is_alive()
    finally:
        done.set()
        close_socket(listener)  # wakes the thief if it waits in accept()
        thief.join(timeout=2)
        for sock in clients + stolen:
            sock.close()


def test_a_backend_stops_even_when_another_holder_of_its_socket_takes_the_connections() -> None:
    """serve_forever() woken for a connection someone else accepted first must not block in accept().

    Which of the two wins the connection is up to the scheduler, so the
    scene is played several times; on a blocking listener most rounds hang.
    """
    for round_ in range(8):
        assert _stop_with_a_thief(Backend(f"shared-{round_}")), f"round {round_}: Backend.stop() hung"
