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


# A wrapper around the real command line: os.fsync hangs (as on a dead disk
# or a stalled network file system) while FLAG exists, and the first hung
# call writes its thread's name to FLAG.reached. Nothing else is changed.
HUNG_FSYNC_WRAPPER = """
import os, sys, threading, pathlib
flag = pathlib.Path(sys.argv.pop(1))
real_fsync = os.fsync
def fsync(fd):
    if flag.exists():
        reached = flag.with_name(flag.name + ".reached")
        if not reached.exists():
            # Written whole under another name, then renamed: the test never reads it half-written.
            staged = flag.with_name(flag.name + "." + threading.current_thread().name)
            staged.write_text(threading.current_thread().name)
            os.replace(staged, reached)
        threading.Event().wait()  # never returns
    return real_fsync(fd)
os.fsync = fsync
from reloader.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_with_a_hung_fsync_a_blackholed_cluster_and_a_hung_dyups_exits_within_five_seconds(
    zk: LocalZooKeeper, zk_client: Any, zk_root: str, tmp_path: Path
) -> None:
    """Every stuck thing at once: fsync on the files output's pool, a session, the follower's POST."""
    from reloader.localenv.tcpproxy import TcpProxy
    from tests.hangingserver import HangingServer

    names = [f"app{index}" for index in range(6)]
    for index, name in enumerate(names):
        zk_client.create(f"{zk_root}/{name}/10.0.{index}.1:80", makepath=True)
    flag = tmp_path / "hang-fsync"
    flag.touch()  # from the first write on: the start-up batch goes to the fsync pool
    wrapper = tmp_path / "hung_fsync.py"
    wrapper.write_text(HUNG_FSYNC_WRAPPER)
    with TcpProxy(zk.port) as proxy, HangingServer() as hung:
        proxy.blackhole()  # the second cluster never answers
        config = tmp_path / "reloader.yaml"
        config.write_text(yaml.safe_dump({
            "files_output_path": str(tmp_path / "out"),
            "zk_session_timeout": 10,
            "dyups_url": hung.url,
            "clusters": [
                {"zk_servers": zk.hosts, "zk_nodes": {name: f"{zk_root}/{name}" for name in names}},
                {"zk_servers": proxy.hosts, "zk_nodes": {"other": f"{zk_root}/other"}},
            ],
        }))
        log = tmp_path / "daemon.log"
        with log.open("w") as stream:
            daemon = subprocess.Popen(
                [sys.executable, str(wrapper), str(flag), "run", "--config", str(config)],
                stdout=stream, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent,
            )
        try:
            reached = flag.with_name(flag.name + ".reached")
            deadline = time.monotonic() + 20
            while not reached.exists() and time.monotonic() < deadline and daemon.poll() is None:
                time.sleep(0.01)
            assert reached.exists(), f"no fsync was reached:\n{log.read_text()[-3000:]}"
            assert reached.read_text().startswith("files-fsync"), reached.read_text()
            sent = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - sent
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert code == 0, log.read_text()[-3000:]
    assert took < 5, f"SIGTERM took {took:.1f} s:\n{log.read_text()[-3000:]}"
    print(f"SIGTERM with a hung fsync, a black-holed cluster and a hung dyups: exited in {took:.2f} s")
