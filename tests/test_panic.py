"""panic_threshold: when most servers fail the passive checks, the Lua balancer spreads over all of them.

Real nginx traffic: four backends answer 502 for a moment (every one is
marked failed, max_fails=1) and then recover. With the threshold requests
succeed again as soon as the backends do; without it they get 502 until
fail_timeout passes. The panic shows in nginx's log and in the daemon's
metric (read from the Lua interface's GET /panic).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest

from reloader.assemble import UpstreamOptions
from reloader.config import ConfigError, parse_config
from reloader.localenv.luanginx import lua_missing
from reloader.status import SnapshotCollector
from tests.conftest import require
from tests.traffic_rig import TrafficRig

FAIL_TIMEOUT = 5.0
HEALTH = (("max_fails", "1"), ("fail_timeout", f"{FAIL_TIMEOUT:g}s"))
ALL = ("b1", "b2", "b3", "b4")


@pytest.fixture
def rig(tmp_path: Path, nginx_bin: str) -> Iterator[TrafficRig]:
    require(lua_missing())
    rig = TrafficRig(tmp_path)
    yield rig
    rig.close()


class Client:
    """One kept-alive connection (so one nginx worker, whose passive checks are its own)."""

    def __init__(self, port: int) -> None:
        self.conn = HTTPConnection("127.0.0.1", port, timeout=5)

    def get(self) -> int:
        return self.fetch()[0]

    def fetch(self) -> tuple[int, str]:
        self.conn.request("GET", "/")
        response = self.conn.getresponse()
        return response.status, response.read().decode().strip()

    def close(self) -> None:
        self.conn.close()


class _Source:
    """The part of the daemon's status snapshot the metric comes from."""

    def __init__(self, rig: TrafficRig) -> None:
        self.rig = rig

    def status_snapshot(self) -> dict[str, object]:
        return {"outputs": {"lua": {"counters": self.rig.output.stats()}}}


def _outage_then_recovery(rig: TrafficRig, threshold: float | None) -> tuple[float, bool]:
    """Fail every backend until all are marked, recover them; (seconds until a request succeeds, panic seen)."""
    rig.make_pipeline(UpstreamOptions(server_params=HEALTH, panic_threshold=threshold))
    rig.register(*ALL)
    client = Client(rig.front)
    try:
        assert all(client.get() == 200 for _ in range(8))
        rig.fail(*ALL)
        # Each request tries every server not yet marked; two requests mark all four.
        statuses = [client.get() for _ in range(4)]
        assert statuses == [502] * 4, statuses
        rig.output.reconcile()
        panic_seen = rig.output.stats().get("panic:app") == 1
        rig.recover(*ALL)
        recovered = time.monotonic()
        deadline = recovered + FAIL_TIMEOUT + 5
        while client.get() != 200:
            assert time.monotonic() < deadline, "requests never succeeded again"
            time.sleep(0.05)
        return time.monotonic() - recovered, panic_seen
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_with_a_panic_threshold_requests_succeed_as_soon_as_backends_recover(rig: TrafficRig) -> None:
    took, panic_seen = _outage_then_recovery(rig, 0.5)
    print(f"panic_threshold 50%: first success {took * 1000:.0f} ms after the backends recovered")
    assert took < 0.5
    assert panic_seen
    # nginx's log says when it entered panic; the metric reads 1 while it lasts.
    log = rig.nginx.error_log_path.read_text()
    assert "upstream app: panic: fewer than 50% of its servers pass the passive checks" in log
    metrics = {
        sample.labels.get("upstream"): sample.value
        for family in SnapshotCollector(_Source(rig)).collect()
        if family.name == "nginx_upstream_reloader_upstream_panic"
        for sample in family.samples
    }
    assert metrics == {"app": 1.0}
    # Once fail_timeout has passed nobody is in panic; the mark fades, and so does the metric.
    time.sleep(0.1)
    deadline = time.monotonic() + FAIL_TIMEOUT + 5
    while True:
        rig.output.reconcile()
        if rig.output.stats()["panic:app"] == 0:
            break
        assert time.monotonic() < deadline, "the panic never ended"
        Client(rig.front).get()
        time.sleep(0.2)


@pytest.mark.timeout(60)
def test_without_it_requests_fail_until_fail_timeout(rig: TrafficRig) -> None:
    took, panic_seen = _outage_then_recovery(rig, None)
    print(f"no panic_threshold: first success {took:.2f} s after the backends recovered "
          f"(fail_timeout {FAIL_TIMEOUT:g} s)")
    assert took > FAIL_TIMEOUT - 1.5
    assert not panic_seen


def test_panic_threshold_needs_lua_mode() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"zk_servers": "127.0.0.1:2181", "dyups_url": "http://127.0.0.1:1",
                      "zk_nodes": {"app": {"path": "/a", "panic_threshold": "50%"}}})
    assert "zk_nodes.app.panic_threshold: needs lua_url" in str(error.value)
    with pytest.raises(ConfigError) as error:
        parse_config({"zk_servers": "127.0.0.1:2181", "lua_url": "http://127.0.0.1:1",
                      "zk_nodes": {"app": {"path": "/a", "panic_threshold": "two"}}})
    assert "zk_nodes.app.panic_threshold: 'two' is not a share of the usable servers" in str(error.value)


@pytest.mark.timeout(60)
def test_a_healthy_backup_takes_the_traffic_instead_of_a_panic(rig: TrafficRig) -> None:
    zones = {"b1": {"zone": "dc1"}, "b2": {"zone": "dc1"}, "b3": {"zone": "dc2"}, "b4": {"zone": "dc2"}}
    rig.make_pipeline(UpstreamOptions(server_params=HEALTH, panic_threshold=0.5, prefer=(("zone", "dc1"),)))
    rig.register(*ALL, labels=zones)
    client = Client(rig.front)
    try:
        assert {client.fetch()[1] for _ in range(8)} == {"b1", "b2"}
        rig.fail("b1", "b2")  # every primary fails; the backups are fine
        answers = [client.fetch() for _ in range(12)]
        assert all(status == 200 for status, _ in answers), answers
        assert {body for _, body in answers[2:]} == {"b3", "b4"}, answers
        rig.output.reconcile()
        assert rig.output.stats()["panic:app"] == 0
        rig.fail("b3", "b4")  # now nothing passes: panic
        assert [client.get() for _ in range(3)] == [502] * 3
        rig.recover(*ALL)
        assert client.get() == 200
        rig.output.reconcile()
        assert rig.output.stats()["panic:app"] == 1
    finally:
        client.close()
