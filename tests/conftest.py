"""Shared fixtures: real local services (ZooKeeper, nginx) for the tests.

Missing services are a skip on a developer machine and a failure in CI
(``CI=true``): CI must never pass by skipping the tests that matter.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Let a bare `pytest` import the package from the work tree even when it is
# not installed (pytest puts tests/, not the project root, on sys.path).
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from kazoo.client import KazooClient  # noqa: E402

from reloader.localenv.nginx import check_upstream_files, find_nginx, nginx_missing  # noqa: E402
from reloader.localenv.zookeeper import LocalZooKeeper, zookeeper_missing  # noqa: E402


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require(missing: str | None) -> None:
    """Skip (locally) or fail (in CI) when ``missing`` names an absent service."""
    if missing is None:
        return
    if _in_ci():
        pytest.fail(missing, pytrace=False)
    pytest.skip(missing)


# ---------------------------------------------------------------------------
# ZooKeeper
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def zookeeper_installed() -> None:
    """Skip (or fail in CI) unless java and Debian's ZooKeeper jars are present."""
    require(zookeeper_missing())


@pytest.fixture(scope="session")
def zk(zookeeper_installed: None) -> Iterator[LocalZooKeeper]:
    """A ZooKeeper server shared by the whole session.

    Tests must keep to their own ``zk_root`` and must not stop, pause or kill
    it; use ``zk_factory`` for that.
    """
    server = LocalZooKeeper()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def zk2(zookeeper_installed: None) -> Iterator[LocalZooKeeper]:
    """A second, independent session-wide ZooKeeper (for multi-cluster tests)."""
    server = LocalZooKeeper()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def zk_client(zk: LocalZooKeeper) -> Iterator[KazooClient]:
    """A connected kazoo client on ``zk``, stopped after the test."""
    client = zk.client()
    yield client
    client.stop()
    client.close()


@pytest.fixture
def zk_root(zk_client: KazooClient, request: pytest.FixtureRequest) -> str:
    """A fresh, existing base path for this test on the shared ``zk``.

    Named after the test plus a short random suffix, so tests (and reruns)
    sharing the session server never see each other's nodes.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60].strip("_.") or "test"
    path = f"/t/{name}-{uuid.uuid4().hex[:8]}"
    zk_client.ensure_path(path)
    return path


@pytest.fixture(scope="module")
def quiet_zk(zookeeper_installed: None) -> Iterator[LocalZooKeeper]:
    """A server of the test module's own: no other module's session moves its zxid (a blip's
    resumption then checks nothing) or adds to its watch count."""
    server = LocalZooKeeper()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def writer(quiet_zk: LocalZooKeeper) -> Iterator[KazooClient]:
    """A plain kazoo client of ``quiet_zk``, for the test's own writes."""
    client = quiet_zk.client()
    yield client
    client.stop()
    client.close()


@pytest.fixture
def zk_factory(zookeeper_installed: None) -> Iterator[Callable[..., LocalZooKeeper]]:
    """Start private ZooKeeper servers; all are stopped at teardown.

    For tests that pause, kill or restart ZooKeeper. Keyword arguments go to
    LocalZooKeeper (e.g. ``port=``, ``tick_time_ms=``).
    """
    servers: list[LocalZooKeeper] = []

    def make(**kwargs: Any) -> LocalZooKeeper:
        server = LocalZooKeeper(**kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    """Path of the nginx binary."""
    require(nginx_missing())
    path = find_nginx()
    assert path is not None
    return path


@pytest.fixture
def nginx_check(nginx_bin: str) -> Callable[[Path], None]:
    """``check(directory)``: nginx -t on every ``*.upstream`` file in it.

    Raises reloader.localenv.nginx.NginxConfigError with nginx's message.
    """

    def check(directory: Path) -> None:
        check_upstream_files(directory, binary=nginx_bin)

    return check


# ---------------------------------------------------------------------------
# Further fixtures (e.g. the dyups server) go below, in their own section.
# ---------------------------------------------------------------------------
