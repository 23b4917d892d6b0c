"""Shutdown while the worker is in the middle of a large read.

A resync of a big cluster is thousands of pipelined reads. If ZooKeeper stops
answering half-way, kazoo keeps the requests it has not sent, so a worker
that waited for each in turn could hang for a session timeout per request.
SIGTERM must still end the daemon within 5 s, exit code 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from reloader.localenv.zookeeper import LocalZooKeeper

UPSTREAMS = 300
CHILDREN = 20


def populate(server: LocalZooKeeper) -> dict[str, str]:
    client = server.client()
    try:
        znodes = {}
        for index in range(UPSTREAMS):
            path = f"/big/app{index}"
            transaction = client.transaction()
            transaction.create(path)
            for child in range(CHILDREN):
                transaction.create(f"{path}/10.{index // 250}.{index % 250}.{child}:80", b"")
            client.ensure_path("/big")
            assert all(result is True or isinstance(result, str) for result in transaction.commit())
            znodes[f"app{index}"] = path
        return znodes
    finally:
        client.stop()


def wait_for_line(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        time.sleep(0.005)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n{log.read_text()[-3000:]}")


def test_sigterm_during_a_resync_against_a_frozen_zookeeper_exits_within_five_seconds(
    zk_factory: Any, tmp_path: Path
) -> None:
    server: LocalZooKeeper = zk_factory()
    znodes = populate(server)
    config = tmp_path / "reloader.yaml"
    config.write_text(yaml.safe_dump({
        "files_output_path": str(tmp_path / "out"),
        # The default session timeout: a worker that waits a session timeout
        # per request would blow the 5 s budget many times over.
        "zk_session_timeout": 10,
        "clusters": [{"zk_servers": server.hosts, "zk_nodes": znodes}],
    }))
    log = tmp_path / "daemon.log"
    with log.open("w") as stream:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reloader", "run", "--config", str(config), "--log-level", "INFO"],
            stdout=stream, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_line(log, f"connected; reading {UPSTREAMS} znodes", 30)
        server.pause()  # ZooKeeper stops answering in the middle of the read
        assert "resynced" not in log.read_text(), "the resync ended before ZooKeeper froze; make the cluster bigger"
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if daemon.poll() is None:
            daemon.kill()
        server.resume()
    assert code == 0, log.read_text()[-3000:]
    assert took < 5, f"SIGTERM took {took:.1f} s:\n{log.read_text()[-3000:]}"
    print(f"SIGTERM mid-resync with ZooKeeper frozen: exited in {took:.2f} s")
