"""The status endpoint and the ``status`` command, against the daemon as a real process and real ZooKeeper.

Each test starts ``python -m reloader run`` with ``listen:`` on a free port
and reads ``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` over HTTP
while ZooKeeper is paused (SIGSTOP) and resumed. Every wait polls a
condition under a deadline.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from reloader.cluster import ClusterWorker
from reloader.config import parse_config
from reloader.localenv.ports import free_port
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.hangingserver import HangingServer
from tests.test_daemon import (  # noqa: F401 - daemons, files_dir and zk2_root are fixtures
    ROOT,
    DaemonProcess,
    cluster,
    create_children,
    daemons,
    files_dir,
    upstream_file,
    wait_until,
    zk2_root,
)

# Long enough for a session to expire and come back under the 2 s session timeout.
FAULT_WAIT = 20.0
METRIC_NAME = re.compile(r"nginx_upstream_reloader_[a-z][a-z0-9_]*")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def request(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def answers(port: int, path: str) -> int | None:
    """The status code of GET ``path``, or None while nothing listens yet."""
    try:
        return request(port, path)[0]
    except OSError:
        return None


def scrape(port: int) -> Samples:
    status, headers, body = request(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain"), headers
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_until(
    port: int, condition: Callable[[Samples], bool], what: str, timeout: float, details: Callable[[], str],
) -> Samples:
    """Scrape until ``condition`` holds for the samples (returned)."""
    def check() -> Samples | None:
        samples = scrape(port)
        return samples if condition(samples) else None

    return wait_until(check, what, timeout, details)


def status_of(port: int) -> dict[str, Any]:
    status, headers, body = request(port, "/status")
    assert status == 200 and headers["content-type"] == "application/json", (status, headers)
    document = json.loads(body)
    assert isinstance(document, dict)
    return document


def run_status_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reloader", "status", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )


def test_a_frozen_cluster_is_never_shown_as_up(zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str) -> None:
    """The freeze and the session state shown come from the same report of the connection.

    The connection thread freezes the cluster the moment the session is in
    doubt; the cluster thread takes the state change later, from its inbox.
    Status must not show the gap: here the cluster thread is held busy while
    the connection reports SUSPENDED, and status is read in between.
    """
    path = f"{zk_root}/app1"
    zk_client.create(f"{path}/10.0.0.1:80", b"", makepath=True)
    config = parse_config({"zk_servers": zk.hosts, "zk_nodes": {"app1": path}}, source="test")
    worker = ClusterWorker(config.clusters[0], lambda batch: None, session_timeout=8.0)
    worker.start()
    held, release = threading.Event(), threading.Event()
    try:
        wait_until(lambda: worker.freeze.is_open and worker.status(time.monotonic())["state"] == "CONNECTED",
                   "the cluster to be read and thawed", 15)
        worker.inbox.put(lambda: (held.set(), release.wait(10)))
        wait_until(held.is_set, "the cluster thread to be held", 5)
        # What kazoo's connection thread does when the session goes bad.
        worker.source._on_session_state(KazooState.SUSPENDED)
        shown = worker.status(time.monotonic())
        assert shown["frozen"] is True
        assert shown["state"] == "SUSPENDED"
    finally:
        release.set()
        worker.stop_event.set()
        worker.wake()
        worker.close_session()
        worker.join(time.monotonic() + 5)


def test_ready_after_the_first_full_read_then_a_freeze_and_a_thaw(
    zk_factory: Callable[..., LocalZooKeeper], daemons: Callable[..., DaemonProcess],
) -> None:
    server = zk_factory()
    client = server.client()
    create_children(client, "/svc/app1", {"10.0.0.1:80": b"", "10.0.0.2:80": b""})
    client.stop()
    client.close()
    port = free_port()
    labels = {"cluster": server.hosts}
    upstream = {"upstream": "app1", "cluster": server.hosts}

    # Start with ZooKeeper paused: the endpoint serves at once, but no cluster is read yet.
    server.pause()
    daemon = daemons(cluster(server.hosts, {"app1": "/svc/app1"}, listen=port))
    wait_until(lambda: answers(port, "/healthz") == 200, "/healthz to answer 200", details=daemon.log_tail)
    assert answers(port, "/readyz") == 503
    document = status_of(port)
    assert document["ready"] is False
    assert [c["read_in_full"] for c in document["clusters"]] == [False]
    samples = scrape(port)
    assert sample(samples, "nginx_upstream_reloader_ready") == 0
    assert sample(samples, "nginx_upstream_reloader_cluster_up", **labels) == 0
    assert sample(samples, "nginx_upstream_reloader_cluster_read_in_full", **labels) == 0

    server.resume()
    wait_until(lambda: answers(port, "/readyz") == 200, "/readyz to answer 200", FAULT_WAIT, daemon.log_tail)
    daemon.wait_file("app1", upstream_file("app1", "server 10.0.0.1:80", "server 10.0.0.2:80"))
    # The file is on disk a moment before its write is counted: wait for both.
    samples = scrape_until(
        port, lambda s: sample(s, "nginx_upstream_reloader_upstream_servers", **upstream) == 2
        and sample(s, "nginx_upstream_reloader_output_writes_total", output="files") == 1,
        "2 servers and 1 write in the metrics", FAULT_WAIT, daemon.log_tail)
    assert sample(samples, "nginx_upstream_reloader_cluster_up", **labels) == 1
    assert sample(samples, "nginx_upstream_reloader_cluster_state", state="CONNECTED", **labels) == 1
    assert sample(samples, "nginx_upstream_reloader_cluster_frozen", **labels) == 0
    assert sample(samples, "nginx_upstream_reloader_upstream_live_instances", **upstream) == 2
    thaws_before = sample(samples, "nginx_upstream_reloader_cluster_thaws_total", **labels)
    assert thaws_before is not None

    # Freeze: the session is suspended, then lost (2 s session timeout).
    server.pause()
    try:
        frozen = scrape_until(
            port, lambda s: sample(s, "nginx_upstream_reloader_cluster_frozen", **labels) == 1,
            "the cluster to be frozen in the metrics", FAULT_WAIT, daemon.log_tail)
        assert sample(frozen, "nginx_upstream_reloader_cluster_up", **labels) == 0
        assert sample(frozen, "nginx_upstream_reloader_cluster_state", state="CONNECTED", **labels) == 0
        # The frozen clock runs: a later scrape shows it grown.
        first = sample(frozen, "nginx_upstream_reloader_cluster_frozen_seconds", **labels)
        assert first is not None
        wait_until(lambda: (sample(scrape(port), "nginx_upstream_reloader_cluster_frozen_seconds", **labels)
                            or 0) > first + 0.2, "frozen seconds to grow")
        document = status_of(port)
        (state,) = document["clusters"]
        assert state["frozen"] is True and state["state"] in ("SUSPENDED", "LOST"), state
        assert state["frozen_for_seconds"] > 0
        # Ready stays ready (it was read once); healthy stays healthy (threads work).
        assert answers(port, "/readyz") == 200
        assert answers(port, "/healthz") == 200
        # The last good state is still what is published.
        assert document["upstreams"]["app1"]["servers"] == 2
    finally:
        server.resume()

    thawed = scrape_until(
        port, lambda s: sample(s, "nginx_upstream_reloader_cluster_frozen", **labels) == 0
        and sample(s, "nginx_upstream_reloader_cluster_up", **labels) == 1,
        "the cluster to thaw in the metrics", FAULT_WAIT, daemon.log_tail)
    assert (sample(thawed, "nginx_upstream_reloader_cluster_thaws_total", **labels) or 0) > thaws_before
    assert sample(thawed, "nginx_upstream_reloader_cluster_frozen_seconds", **labels) == 0
    (state,) = status_of(port)["clusters"]
    assert state["frozen"] is False and state["state"] == "CONNECTED" and state["frozen_for_seconds"] is None
    daemon.stop()


def test_status_command_metric_names_and_the_http_contract(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
    zk2: LocalZooKeeper, zk2_root: tuple[KazooClient, str], daemons: Callable[..., DaemonProcess],
) -> None:
    client2, root2 = zk2_root
    create_children(zk_client, f"{zk_root}/app1", {"10.0.1.1:80": b"", "10.0.1.2:80": b"", "10.0.1.3:80": b""})
    create_children(client2, f"{root2}/app2", {"10.0.2.1:8080": b""})
    port = free_port()
    config = {
        "zk_session_timeout": "2s",
        "settle_after_reconnect": 0,
        "listen": f"127.0.0.1:{port}",
        "clusters": [
            {"name": "east", "zk_servers": zk.hosts, "zk_nodes": {"app1": f"{zk_root}/app1"}},
            {"name": "west", "zk_servers": zk2.hosts, "zk_nodes": {"app2": f"{root2}/app2"}},
        ],
    }
    daemon = daemons(config)
    wait_until(lambda: answers(port, "/readyz") == 200, "/readyz to answer 200", details=daemon.log_tail)
    daemon.wait_file("app2", upstream_file("app2", "server 10.0.2.1:8080"))
    wait_until(lambda: status_of(port)["outputs"]["files"]["counters"].get("writes") == 2, "both files written",
               details=daemon.log_tail)

    # The table: the clusters, then the upstreams with their server counts.
    shown = run_status_command("--listen", str(port))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    print(shown.stdout)
    assert lines[0].startswith("ready: yes   healthy: yes")
    rows = {line.split()[0]: line.split() for line in lines if line.strip()}
    assert rows["CLUSTER"][:2] == ["CLUSTER", "STATE"]
    assert rows["east"][1:3] == ["CONNECTED", "no"] and rows["east"][-1] == zk.hosts
    assert rows["west"][1:3] == ["CONNECTED", "no"] and rows["west"][-1] == zk2.hosts
    assert rows["app1"][1:4] == ["east", "3", "3"] and rows["app1"][-1] == "-"  # pending nowhere
    assert rows["app2"][1:4] == ["west", "1", "1"]
    assert rows["files"][1] == "yes"
    assert lines.index(next(line for line in lines if line.startswith("CLUSTER"))) < lines.index(
        next(line for line in lines if line.startswith("UPSTREAM")))

    raw = run_status_command("--listen", f"127.0.0.1:{port}", "--json")
    assert raw.returncode == 0, raw.stderr
    document = json.loads(raw.stdout)
    assert [c["label"] for c in document["clusters"]] == ["east", "west"]
    assert document["upstreams"]["app1"]["cluster"] == "east"
    assert document["upstreams"]["app1"]["pending_in"] == []

    # Metric names: valid, prefixed, counters as _total, every documented family present.
    status, headers, body = request(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    for name, family in families.items():
        assert METRIC_NAME.fullmatch(name), name
        for each in family.samples:
            assert METRIC_NAME.fullmatch(each.name), each.name
            if family.type == "counter":
                assert each.name.endswith("_total"), each.name
            assert set(each.labels) <= {"cluster", "upstream", "output", "state", "hosts", "result", "event"}
    expected = {
        "ready", "healthy", "config_reloads", "config_reload_failures", "process_stalls",
        "cluster_info", "cluster_up", "cluster_state", "cluster_frozen", "cluster_frozen_seconds", "cluster_read_in_full",
        "cluster_thaws", "cluster_upstreams", "cluster_last_change_age_seconds",
        "upstream_servers", "upstream_live_servers_published", "upstream_live_instances",
        "upstream_last_change_age_seconds", "upstream_last_publish_age_seconds", "upstream_held_servers",
        "upstream_drop_held", "upstream_settling",
        "output_up", "output_deliveries", "output_errors", "output_queued_upstreams", "output_pending_upstreams",
        "output_busy_seconds", "output_writes", "output_failures",
    }
    assert {f"nginx_upstream_reloader_{name}" for name in expected} <= set(families), set(families)
    samples = scrape(port)
    assert sample(samples, "nginx_upstream_reloader_upstream_servers", upstream="app1", cluster="east") == 3
    assert sample(samples, "nginx_upstream_reloader_cluster_info", cluster="west", hosts=zk2.hosts) == 1
    assert sample(samples, "nginx_upstream_reloader_output_writes_total", output="files") == 2

    # OpenMetrics when the scraper asks for it, and it parses as such.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    assert response.getheader("Content-Type", "").startswith("application/openmetrics-text"), response.getheaders()
    assert any(f.name == "nginx_upstream_reloader_cluster_thaws" for f in openmetrics_families(text))

    # Compressed when the scraper accepts gzip (Prometheus does).
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    response = connection.getresponse()
    compressed = response.read()
    connection.close()
    assert response.getheader("Content-Encoding") == "gzip"
    assert "nginx_upstream_reloader_cluster_up" in {
        f.name for f in text_string_to_metric_families(gzip.decompress(compressed).decode())}

    # The HTTP contract: only GET and HEAD, unknown paths 404.
    assert request(port, "/nope")[0] == 404
    code, headers, body = request(port, "/metrics", "POST")
    assert code == 405 and headers["allow"] == "GET, HEAD", (code, headers)
    code, headers, body = request(port, "/status", "HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 0
    assert request(port, "/healthz")[2] == b"healthy\n"
    daemon.stop()

    # Nothing listens there any more: a clear message and exit 1.
    gone = run_status_command("--listen", str(port))
    assert gone.returncode == 1
    assert f"no nginx-upstream-reloader status at 127.0.0.1:{port}" in gone.stderr, gone.stderr


def test_a_taken_listen_port_fails_the_start(
    zk: LocalZooKeeper, zk_root: str, daemons: Callable[..., DaemonProcess], tmp_path: Path,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        daemon = daemons(cluster(zk.hosts, {"app1": f"{zk_root}/app1"}, listen=port))
        assert daemon.proc is not None
        code = daemon.proc.wait(timeout=15)
    assert code == 1, daemon.log_tail()
    assert daemon.log_lines(rf"listen 127\.0\.0\.1:{port}: cannot serve status"), daemon.log_tail()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# Enough upstreams that a snapshot takes several of the interpreter's switch intervals.
UPSTREAMS_RELOADED = 400
RELOADS = 8


def test_status_never_fails_while_config_reloads_add_and_remove_upstreams(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, daemons: Callable[..., DaemonProcess],
) -> None:
    """/status and /metrics read the daemon without locks; a reload changing the upstreams must not break them."""
    import signal
    import threading

    import yaml

    names = [f"app{index}" for index in range(UPSTREAMS_RELOADED)]
    for start in range(0, len(names), 100):
        transaction = zk_client.transaction()
        for index in range(start, min(start + 100, len(names))):
            transaction.create(f"{zk_root}/{names[index]}")
            transaction.create(f"{zk_root}/{names[index]}/10.1.{index // 200}.{index % 200 + 1}:80")
        transaction.commit()
    port = free_port()
    every = cluster(zk.hosts, {name: f"{zk_root}/{name}" for name in names}, listen=port)
    half = cluster(zk.hosts, {name: f"{zk_root}/{name}" for name in names[::2]}, listen=port)
    # A dyups that never answers: every upstream stays pending in it, the
    # case where naming each upstream's pending outputs used to cost
    # upstreams x pending per scrape.
    hung = HangingServer().start()
    request_stop = hung.close
    daemon = daemons(every, dyups_url=hung.url)
    wait_until(lambda: answers(port, "/readyz") == 200, "ready", details=daemon.log_tail)
    wait_until(lambda: len(status_of(port)["outputs"]["dyups"]["pending"]) >= len(names) - 1,
               "every upstream pending in the hung dyups", details=daemon.log_tail)
    began = time.monotonic()
    status_of(port)
    took = time.monotonic() - began
    print(f"/status of {len(names)} upstreams, all pending in dyups: {took * 1000:.0f} ms")
    assert took < 0.5, f"/status took {took:.2f} s"
    failures: list[tuple[str, int, bytes]] = []
    scrapes = [0]
    stop = threading.Event()

    def scraper() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while not stop.is_set():
            for path in ("/status", "/metrics"):
                try:
                    connection.request("GET", path)
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as error:
                    # A scrape cut off is a failed scrape: counted, never lost in a thread.
                    failures.append((path, 0, repr(error).encode()))
                    connection.close()
                    continue
                scrapes[0] += 1
                if response.status != 200:
                    failures.append((path, response.status, body[:200]))
        connection.close()

    threads = [threading.Thread(target=scraper, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for reload in range(1, RELOADS + 1):
            daemon.config_path.write_text(yaml.safe_dump(half if reload % 2 else every))
            daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            daemon.wait_log(r"config reloaded from", count=reload)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        request_stop()
    assert not failures, (failures[:3], daemon.log_lines(r"status: .* failed")[:3])
    assert not daemon.log_lines(r"Traceback"), daemon.log_tail()
    print(f"{RELOADS} config reloads of {UPSTREAMS_RELOADED // 2} upstreams each, {scrapes[0]} scrapes: no failure")
    # Each cluster thread applies the last reload on its own: /status lists them all once it has.
    wait_until(lambda: sorted(status_of(port)["upstreams"]) == sorted(names), "every upstream in /status again",
               details=daemon.log_tail)
    daemon.stop()


# The daemon under systemd's default soft limit on open files.
NOFILE_WRAPPER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from reloader.cli import main
sys.exit(main(sys.argv[1:]))
"""
SLOW_CONNECTIONS = 1000


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_a_thousand_slow_connections_to_the_status_port_do_not_starve_the_files_output(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, tmp_path: Path,
) -> None:
    import resource
    import signal

    import yaml

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOW_CONNECTIONS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    create_children(zk_client, f"{zk_root}/app1", {"10.0.0.1:80": b""})
    port = free_port()
    files = tmp_path / "upstreams"
    config = tmp_path / "reloader.yaml"
    config.write_text(yaml.safe_dump(cluster(zk.hosts, {"app1": f"{zk_root}/app1"}, listen=port,
                                             files_output_path=str(files))))
    wrapper = tmp_path / "nofile.py"
    wrapper.write_text(NOFILE_WRAPPER)
    log = tmp_path / "daemon.log"
    with log.open("w") as stream:
        daemon = subprocess.Popen([sys.executable, str(wrapper), "run", "--config", str(config)],
                                  stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
    slow: list[socket.socket] = []
    try:
        wait_until(lambda: answers(port, "/readyz") == 200, "ready", details=lambda: log.read_text()[-3000:])
        threads_before = _threads(daemon.pid)
        opened = time.monotonic()
        for _ in range(SLOW_CONNECTIONS):
            if time.monotonic() - opened > 15:
                break  # the daemon no longer accepts at all
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                slow.append(sock)
                sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
            except OSError:
                pass  # closed unanswered by the daemon, or its backlog is full
        print(f"{len(slow)} connections opened in {time.monotonic() - opened:.2f} s")
        began = time.monotonic()
        zk_client.create(f"{zk_root}/app1/10.0.0.2:80")
        expected = upstream_file("app1", "server 10.0.0.1:80", "server 10.0.0.2:80")
        wait_until(lambda: (files / "app1.upstream").exists() and (files / "app1.upstream").read_text() == expected,
                   "the registry change in the file", timeout=10, details=lambda: log.read_text()[-3000:])
        took = time.monotonic() - began
        held = len(list(Path(f"/proc/{daemon.pid}/fd").iterdir()))
        print(f"{SLOW_CONNECTIONS} slow status connections: change -> file in {took * 1000:.0f} ms, "
              f"daemon holds {held} descriptors")
        assert took < 2, took
        assert held < 200, held
        # No thread per connection: the pool was there before the clients came.
        threads_after = _threads(daemon.pid)
        assert threads_after <= threads_before + 2, (threads_before, threads_after)
        assert "Too many open files" not in log.read_text()
        # Once the slow clients are gone, the endpoint answers again.
        for sock in slow:
            sock.close()
        wait_until(lambda: answers(port, "/healthz") == 200, "/healthz again", timeout=10)
        # SIGTERM while slow clients hold every worker still exits at once.
        slow = [socket.create_connection(("127.0.0.1", port), timeout=1) for _ in range(50)]
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(10)
        stopped = time.monotonic() - sent
        assert code == 0 and stopped < 5, (code, stopped)
    finally:
        for sock in slow:
            sock.close()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    assert "Too many open files" not in log.read_text(), log.read_text()[-3000:]


def test_status_command_escapes_control_characters_from_whatever_answers_on_the_port(tmp_path: Path) -> None:
    """A local process squatting the port must not drive the operator's terminal."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    hostile = "evil\x1b]0;pwned\x07\x1b[2J\u202e"
    document = json.dumps({
        "ready": True, "healthy": True, "files_output_path": "/x\x1b[31m",
        "clusters": [{"label": hostile, "state": "CONNECTED", "hosts": "h\r\nfake line", "upstreams": [hostile]}],
        "upstreams": {hostile: {"cluster": hostile, "servers": 1, "pending_in": [hostile]}},
        "outputs": {hostile: {"alive": True, "counters": {hostile: 1}}},
    }).encode()

    class Squatter(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Squatter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_status_command("--listen", str(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result
    assert not any(ord(char) < 0x20 and char != "\n" or 0x7f <= ord(char) < 0xa0 or char == "\u202e"
                   for char in result.stdout), repr(result.stdout)
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\u202e" in result.stdout
    assert "h\\x0d\\x0afake line" in result.stdout


def test_status_command_with_a_config_that_has_no_listener_says_so(tmp_path: Path) -> None:
    import yaml

    without = tmp_path / "without.yaml"
    without.write_text(yaml.safe_dump({"zk_servers": "127.0.0.1:2181", "zk_nodes": {"app1": "/svc/app1"}}))
    result = run_status_command("--config", str(without))
    assert result.returncode == 1, result
    assert f"{without} has no `listen:`: a daemon run with it serves no status" in result.stderr, result.stderr
    assert "9345" not in result.stderr.split("(add")[0], "it must not have tried the default port"
    port = free_port()
    with_listen = tmp_path / "with.yaml"
    with_listen.write_text(yaml.safe_dump({"zk_servers": "127.0.0.1:2181", "zk_nodes": {"app1": "/svc/app1"},
                                           "listen": f"0.0.0.0:{port}"}))
    result = run_status_command("--config", str(with_listen))
    assert result.returncode == 1
    assert f"no nginx-upstream-reloader status at 127.0.0.1:{port}" in result.stderr, result.stderr


def test_clients_trickling_bytes_cannot_hold_the_status_workers_past_their_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More trickling clients than workers: /healthz still answers once their deadline has passed."""
    import threading

    from reloader import status as status_module

    monkeypatch.setattr(status_module, "CONNECTION_DEADLINE", 1.0)

    class Source:
        ready = healthy = True

        def status_snapshot(self) -> dict[str, object]:
            return {}

    server = status_module.StatusServer(Source(), ("127.0.0.1", 0))
    server.start()
    port = server.address[1]
    stop = threading.Event()
    trickling = [socket.create_connection(("127.0.0.1", port), timeout=5)
                 for _ in range(status_module.WORKERS * 2)]

    def trickle() -> None:
        while not stop.wait(0.2):  # well inside the 5 s socket timeout
            for sock in trickling:
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        began = time.monotonic()
        wait_until(lambda: answers(port, "/healthz") == 200, "/healthz past the trickling clients", timeout=10)
        took = time.monotonic() - began
        print(f"{len(trickling)} trickling clients, {status_module.WORKERS} workers: /healthz after {took:.2f} s")
    finally:
        stop.set()
        feeder.join(5)
        for sock in trickling:
            sock.close()
        server.stop()


def test_a_kept_alive_scraper_is_never_cut_off_by_the_connection_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client asking again and again on one connection sees every answer whole: the deadline ends the
    connection with ``Connection: close`` on an answer, never under a request (http.client connects again)."""
    from reloader import status as status_module

    monkeypatch.setattr(status_module, "CONNECTION_DEADLINE", 1.0)

    class Source:
        ready = healthy = True

        def status_snapshot(self) -> dict[str, object]:
            return {"upstreams": {f"app{i}": {"servers": i} for i in range(200)}}

    server = status_module.StatusServer(Source(), ("127.0.0.1", 0))
    server.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=5)
    answered = closed = 0
    try:
        deadline = time.monotonic() + 3 * status_module.CONNECTION_DEADLINE
        while time.monotonic() < deadline:
            for path in ("/status", "/metrics", "/healthz"):
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                assert response.status == 200, (path, response.status)
                answered += 1
                closed += response.getheader("Connection", "").lower() == "close"
    finally:
        connection.close()
        server.stop()
    print(f"{answered} answers on kept-alive connections, {closed} of them closing the connection")
    assert closed >= 2, "the connection outlived its deadline"
