"""slow_start: Envoy's ramp for instances the daemon sees appear, in Lua mode and through dyups.

Real traffic through nginx's Lua balancer (a new instance beside three old
ones: its share at 25, 50, 75 and 100 % of the window follows Envoy's
formula within 3 points), the dyups test server's stepped weights, and the
rules around them: what counts as new (not at start-up, not adopted from a
file, not after a thaw), the files keep full weights, the config refuses
what cannot work.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reloader.assemble import UpstreamOptions
from reloader.config import ConfigError, ZnodeConfig, parse_config
from reloader.localenv.luanginx import lua_missing
from reloader.model import Server, Upstream
from reloader.outputs.dyups import DyupsOutput
from reloader.outputs.lua import upstream_document
from reloader.pipeline import Pipeline
from reloader.publication import ClusterFreeze
from reloader.render import render_dyups_body, render_file, render_file_lua
from reloader.traffic import RAMP_SCALE, SlowStart, ramp_factor, stepped_weights
from tests.conftest import require
from tests.dyups_server import DyupsServer
from tests.traffic_rig import GUARDS_OFF, LOOPBACK, TrafficRig, requests_until

WINDOW = 8.0
SLOW = SlowStart(window=WINDOW, min_weight=0.1, aggression=1.0)
MARKS = (0.25, 0.5, 0.75, 1.0)


def envoy_share(at: float, added: float, slow: SlowStart = SLOW, others: int = 3) -> float:
    """The share of requests a new server of equal weight beside ``others`` gets at wall time ``at``."""
    factor = ramp_factor(slow, at - added)
    return factor / (others + factor)


# ---- the formula and the steps ---------------------------------------------------


def test_ramp_factor_is_envoys_formula() -> None:
    # weight * max(min_weight, time_factor ** (1 / aggression)), time_factor = max(elapsed, 1) / window
    assert ramp_factor(SLOW, 0) == pytest.approx(max(0.1, 1 / 8))
    assert ramp_factor(SLOW, 2) == pytest.approx(0.25)
    assert ramp_factor(SLOW, 8) == 1.0
    steep = SlowStart(window=100, min_weight=0.1, aggression=2.0)
    assert ramp_factor(steep, 25) == pytest.approx(0.5)  # (25/100) ** (1/2)
    assert ramp_factor(steep, 0.5) == pytest.approx(0.1)  # max(1, 0.5)/100 = 0.01 ** 0.5 = 0.1


def test_stepped_weights_scale_so_the_minimum_is_representable() -> None:
    slow = SlowStart(window=60, min_weight=0.01, aggression=0.1)  # (1.5 s / 60 s) ** 10: the 1 % minimum
    weights, key = stepped_weights(slow, {("a", 1): 1, ("b", 1): 1}, {("b", 1): 1000.0}, 1000.0)
    assert weights == {("a", 1): RAMP_SCALE, ("b", 1): 1}  # 1 % of weight 1, scaled: 1, never 0
    assert key is not None
    weights, key = stepped_weights(slow, {("a", 1): 1, ("b", 1): 1}, {("b", 1): 1000.0}, 1060.0)
    assert weights == {("a", 1): 1, ("b", 1): 1} and key is None  # over: plain weights again


# ---- what is new ---------------------------------------------------------------------


def _pipeline(freeze: ClusterFreeze, published: list[Upstream]) -> Pipeline:
    znode = ZnodeConfig(upstream="app", path="/a", key_path="zk_nodes.app",
                        options=UpstreamOptions(slow_start=SLOW), guards=GUARDS_OFF)
    return Pipeline([znode], published.append, freeze)


def test_only_instances_seen_appearing_while_running_are_new() -> None:
    freeze = ClusterFreeze()
    assert freeze.open_if(freeze.epoch)
    published: list[Upstream] = []
    pipeline = _pipeline(freeze, published)
    pipeline.update("app", {"10.0.0.1:80": b"", "10.0.0.2:80": b""}, "/a")
    assert published[-1].added == ()  # start-up: nothing is new

    before = time.time()
    pipeline.update("app", {"10.0.0.1:80": b"", "10.0.0.2:80": b"", "10.0.0.3:80": b""}, "/a")
    added = dict(published[-1].added)
    assert list(added) == [("10.0.0.3", 80)] and before - 0.01 <= added[("10.0.0.3", 80)] <= time.time() + 0.01
    # Files hold the full weights; the Lua document says when it was added, the slow start's parameters too.
    assert "weight" not in render_file(published[-1]) and "weight" not in render_file_lua(published[-1])
    document = upstream_document(published[-1])
    assert document["slow_start"] == {"window": 8.0, "min_weight": 0.1, "aggression": 1.0}
    assert [s.get("added") for s in document["servers"]] == [None, None, added[("10.0.0.3", 80)]]
    # Byte-stable: the same state gives the same document later.
    assert json.dumps(upstream_document(published[-1])) == json.dumps(document)

    # Gone and back: new again.
    pipeline.update("app", {"10.0.0.1:80": b"", "10.0.0.2:80": b""}, "/a")
    assert published[-1].added == ()
    pipeline.update("app", {"10.0.0.1:80": b"", "10.0.0.2:80": b"", "10.0.0.3:80": b""}, "/a")
    assert [endpoint for endpoint, _ in published[-1].added] == [("10.0.0.3", 80)]

    # A thaw: what appeared meanwhile is not new; after it, new again.
    freeze.close()
    assert freeze.open_if(freeze.epoch)
    pipeline.update("app", {f"10.0.0.{i}:80": b"" for i in (1, 2, 3, 4)}, "/a")
    assert ("10.0.0.4", 80) not in dict(published[-1].added)
    pipeline.update("app", {f"10.0.0.{i}:80": b"" for i in (1, 2, 3, 4, 5)}, "/a")
    assert ("10.0.0.5", 80) in dict(published[-1].added)


def test_servers_adopted_from_files_are_not_new() -> None:
    freeze = ClusterFreeze()
    assert freeze.open_if(freeze.epoch)
    published: list[Upstream] = []
    pipeline = _pipeline(freeze, published)
    pipeline.adopt(Upstream("app", (Server("10.0.0.1", 80),), live_count=1))
    pipeline.update("app", {"10.0.0.1:80": b"", "10.0.0.2:80": b""}, "/a")
    assert [endpoint for endpoint, _ in published[-1].added] == [("10.0.0.2", 80)]
    published.clear()
    pipeline = _pipeline(freeze, published)
    pipeline.adopt(Upstream("app", (Server("10.0.0.1", 80), Server("10.0.0.2", 80)), live_count=2))
    pipeline.update("app", {"10.0.0.1:80": b"", "10.0.0.2:80": b""}, "/a")
    assert all(upstream.added == () for upstream in published)


# ---- config -------------------------------------------------------------------------------


def _config(**extra: object) -> dict[str, object]:
    return {"zk_servers": "127.0.0.1:2181", "zk_nodes": {"app": {"path": "/a", **extra}}}


@pytest.mark.parametrize(("settings", "entry", "message"), [
    ({"nginx_reload": {"test_cmd": ["true"], "reload_cmd": ["true"]}}, {"slow_start": {"window": "60s"}},
     "zk_nodes.app.slow_start: needs lua_url or dyups_url: with nginx_reload every step of the ramp would be a reload"),
    ({}, {"slow_start": {"window": "60s"}}, "zk_nodes.app.slow_start: needs lua_url or dyups_url"),
    ({"dyups_url": "http://127.0.0.1:1"}, {"slow_start": {"window": "60s"}, "upstream_directives": ["ip_hash"]},
     "zk_nodes.app: slow_start cannot be combined with 'ip_hash'"),
    ({"dyups_url": "http://127.0.0.1:1"}, {"slow_start": {"window": "60s"}, "upstream_directives": ["random"]},
     "zk_nodes.app: slow_start cannot be combined with 'random'"),
    ({"dyups_url": "http://127.0.0.1:1"}, {"slow_start": {"window": "60s", "min_weight": "0%"}},
     "zk_nodes.app.slow_start: min_weight: must be more than 0%"),
    ({"lua_url": "http://127.0.0.1:1"}, {"slow_start": {"window": "2h"}},
     "zk_nodes.app.slow_start: window: must be from 1 s to 3600 s"),
    ({"lua_url": "http://127.0.0.1:1"}, {"slow_start": {"windw": "60s"}},
     "zk_nodes.app.slow_start: unknown key 'windw'"),
])
def test_config_refuses_what_cannot_work(settings: dict[str, object], entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({**_config(**entry), **settings})
    assert message in str(error.value)


def test_global_slow_start_applies_to_every_upstream_unless_turned_off() -> None:
    config = parse_config({"zk_servers": "127.0.0.1:2181", "lua_url": "http://127.0.0.1:1",
                           "slow_start": {"window": "1m", "min_weight": "5%", "aggression": 2},
                           "zk_nodes": {"a": "/a", "b": {"path": "/b", "slow_start": False}}})
    by_name = {znode.upstream: znode.options.slow_start for znode in config.znodes}
    assert by_name == {"a": SlowStart(window=60.0, min_weight=0.05, aggression=2.0), "b": None}


# ---- real traffic: Lua mode ---------------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path, nginx_bin: str) -> Iterator[TrafficRig]:
    require(lua_missing())
    rig = TrafficRig(tmp_path)
    yield rig
    rig.close()


def _shares(samples: list[tuple[float, int, str]], start: float, end: float, name: str) -> tuple[float, int]:
    window = [body for at, status, body in samples if start <= at < end and status == 200]
    return (window.count(name) / len(window) if window else 0.0), len(window)


@pytest.mark.timeout(60)
def test_lua_new_instance_ramps_by_envoys_formula_and_startup_ones_do_not(rig: TrafficRig) -> None:
    rig.make_pipeline(UpstreamOptions(slow_start=SLOW))
    # Present at start-up: not ramped, an equal share at once.
    rig.register("b1", "b2", "b3", "b4")
    assert rig.output.desired["app"].added == ()
    samples = list(requests_until(rig.front, time.time() + 1.0))
    share, count = _shares(samples, 0, float("inf"), "b4")
    print(f"b4 present at start-up: {share:.3f} of {count} requests")
    assert abs(share - 0.25) < 0.03, share

    # Gone, then back while the daemon runs: new, ramped over the window.
    rig.register("b1", "b2", "b3")
    rig.register("b1", "b2", "b3", "b4")
    added = dict(rig.output.desired["app"].added)[("127.0.0.1", rig.ports["b4"])]
    samples = list(requests_until(rig.front, added + WINDOW + 1.0))
    rows = []
    for mark in MARKS:
        at = added + mark * WINDOW
        start, end = (at - 0.4, at + 0.4) if mark < 1 else (at, at + 0.8)
        share, count = _shares(samples, start, end, "b4")
        inside = [t for t, _, _ in samples if start <= t < end]
        expected = sum(envoy_share(t, added) for t in inside) / len(inside)
        rows.append((mark, share, envoy_share(at, added), expected, count))
    for mark, share, point, expected, count in rows:
        print(f"{mark:4.0%} of the window: new instance {share:.3f} of {count} requests; "
              f"Envoy's formula {point:.3f} at the mark, {expected:.3f} over the requests measured")
    for mark, share, point, expected, count in rows:
        assert count > 200, (mark, count)
        assert abs(share - expected) < 0.03, rows
        assert abs(share - point) < 0.03, rows


# ---- dyups: stepped weights through the dyups test server -------------------------------------------


def _dyups_share(dyups: DyupsServer, port: int) -> float:
    lines = dyups.proxy_request("app") or ()
    weights = {}
    for line in lines:
        match = re.search(r"server \S+:(\d+)(?: weight=(\d+))?", line)
        assert match, line
        weights[int(match.group(1))] = int(match.group(2) or 1)
    return weights.get(port, 0) / sum(weights.values())


@pytest.mark.timeout(60)
def test_dyups_new_instance_ramps_in_steps_by_envoys_formula() -> None:
    ports = {f"b{i}": 20000 + i for i in range(1, 5)}
    with DyupsServer(generation="stable", propagation_delay=0.0, workers=1) as dyups:
        output = DyupsOutput(dyups.url, reconcile_interval=0, reassert_interval=0, retry_interval=0.2)
        try:
            freeze = ClusterFreeze()
            assert freeze.open_if(freeze.epoch)
            znode = ZnodeConfig(upstream="app", path="/a", key_path="zk_nodes.app",
                                options=UpstreamOptions(slow_start=SLOW), guards=GUARDS_OFF, networks=LOOPBACK)
            pipeline = Pipeline([znode], output.publish, freeze)
            children = {name: json.dumps({"host": "127.0.0.1", "port": port}).encode() for name, port in ports.items()}
            pipeline.update("app", {k: v for k, v in children.items() if k != "b4"}, "/a")
            assert _dyups_share(dyups, ports["b1"]) == pytest.approx(1 / 3)
            pipeline.update("app", children, "/a")
            added = dict(output.desired["app"].added)[("127.0.0.1", ports["b4"])]
            # The runner ticks the output at least every 0.5 s; so does this loop.
            rows = []
            for mark in MARKS:
                at = added + mark * WINDOW
                samples = []
                while time.time() < at + 0.3:
                    output.tick(time.monotonic())
                    if time.time() >= at - 0.3:
                        samples.append((time.time(), _dyups_share(dyups, ports["b4"])))
                    time.sleep(0.05)
                share = sum(s for _, s in samples) / len(samples)
                expected = sum(envoy_share(t, added) for t, _ in samples) / len(samples)
                rows.append((mark, share, envoy_share(at, added), expected))
            for mark, share, point, expected in rows:
                print(f"dyups {mark:4.0%}: new instance weight share {share:.3f}; Envoy's formula {point:.3f}")
            for mark, share, point, expected in rows:
                assert abs(share - expected) < 0.03, rows
                assert abs(share - point) < 0.03, rows
            # Over: the plain weights, as the file has them.
            deadline = time.monotonic() + 3
            while "weight=" in " ".join(dyups.proxy_request("app") or ()) and time.monotonic() < deadline:
                output.tick(time.monotonic())
                time.sleep(0.05)
            assert "weight=" not in " ".join(dyups.proxy_request("app") or ())
            assert render_dyups_body(output.desired["app"]).count("weight=") == 0
        finally:
            output.close()


# ---- property: what counts as new, whatever the sequence ------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_steps = st.lists(
    st.one_of(st.tuples(st.just("registry"), st.sets(st.integers(1, 5), min_size=1)),
              st.tuples(st.just("thaw"), st.just(frozenset()))),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(_steps)
def test_model_added_times_mark_exactly_the_servers_seen_appearing(steps: list[tuple[str, frozenset[int]]]) -> None:
    """A model: a server is new when a publish adds it to the live set of the previous one, unless
    that publish is the first (start-up) or the first after a thaw; it stays new (same time) while
    it stays; it is never new in another server's place."""
    freeze = ClusterFreeze()
    assert freeze.open_if(freeze.epoch)
    published: list[Upstream] = []
    pipeline = _pipeline(freeze, published)
    previous: set[int] | None = None
    thawed = False
    expected: dict[int, float] = {}
    for kind, value in steps:
        if kind == "thaw":
            freeze.close()
            assert freeze.open_if(freeze.epoch)
            thawed = True
            continue
        count = len(published)
        pipeline.update("app", {f"10.0.0.{i}:80": b"" for i in sorted(value)}, "/a")
        added = {int(host.rsplit(".", 1)[1]): at for (host, _), at in (published[-1].added if published else ())}
        if len(published) == count and previous == set(value):
            thawed = False  # nothing changed: nothing published, the thaw's first hand-on is done
            continue
        expected = {i: at for i, at in expected.items() if i in value}
        if previous is not None and not thawed:
            for i in set(value) - previous:
                expected[i] = added.get(i, -1.0)
        assert set(added) == set(expected), (added, expected)
        for i, at in expected.items():
            assert added[i] == at  # the time of addition never moves while the server stays
        previous, thawed = set(value), False
