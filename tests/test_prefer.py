"""prefer: instances whose registry metadata matches are the primaries, the others backups.

Real nginx traffic (Lua mode): requests go only to the preferred zone;
when its instances unregister, the next requests (one publish later) go to
the other zone, and back when they return. Also: the metadata each format
carries, the rendering rules, and the config's refusals.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from reloader.assemble import UpstreamOptions, finalize_upstream
from reloader.config import ConfigError, parse_config
from reloader.formats import parse_instance
from reloader.formats.base import FormatOptions
from reloader.localenv.luanginx import lua_missing
from reloader.model import Server
from reloader.render import render_file
from tests.conftest import require
from tests.traffic_rig import TrafficRig, requests_until

DC1 = (("zone", "dc1"),)


def _server(last: int, zone: str | None = None, down: bool = False) -> Server:
    return Server(f"10.0.0.{last}", 80, down=down, labels=(("zone", zone),) if zone else ())


def test_matching_servers_are_primaries_and_the_others_backups() -> None:
    options = UpstreamOptions(prefer=DC1)
    live = [_server(1, "dc1"), _server(2, "dc2"), _server(3)]
    upstream = finalize_upstream("app", live, options)
    assert [(s.host, s.backup) for s in upstream.servers] == [
        ("10.0.0.1", False), ("10.0.0.2", True), ("10.0.0.3", True)]
    assert upstream.live_count == 3  # the guards count the whole set
    assert "server 10.0.0.2:80 backup;" in render_file(upstream)
    # None of the preferred live, or all of them drained: the others are the primaries.
    assert not any(s.backup for s in finalize_upstream("app", live[1:], options).servers)
    drained = finalize_upstream("app", live, options, drained={("10.0.0.1", 80)})
    assert not any(s.backup for s in drained.servers)
    # Labels are no part of a server's identity, nor of what is rendered.
    assert _server(1, "dc1") == _server(1, "dc2")
    assert "dc1" not in render_file(upstream)


@pytest.mark.parametrize(("fmt", "child", "data"), [
    ("curator", "uuid-1", json.dumps({"address": "10.0.0.1", "port": 80,
                                      "payload": {"metadata": {"zone": "dc1", "instance_status": "UP"}}}).encode()),
    ("json", "i-1", json.dumps({"host": "10.0.0.1", "port": 80, "labels": {"zone": "dc1"}}).encode()),
    ("dubbo", "dubbo%3A%2F%2F10.0.0.1%3A80%2Fcom.example.Api%3Fzone%3Ddc1%26weight%3D100", b""),
    ("serverset", "member_0000000001", json.dumps({"serviceEndpoint": {"host": "10.0.0.1", "port": 80},
                                                   "additionalEndpoints": {}, "status": "ALIVE",
                                                   "metadata": {"zone": "dc1"}}).encode()),
])
def test_each_format_carries_its_metadata(fmt: str, child: str, data: bytes) -> None:
    server = parse_instance(child, data, fmt, FormatOptions())
    assert isinstance(server, Server), server
    assert ("zone", "dc1") in server.labels


def test_hostile_metadata_is_ignored() -> None:
    data = json.dumps({"host": "10.0.0.1", "port": 80,
                       "labels": {"zone": "dc1;evil", "x" * 100: "y", "ok": {"nested": 1}, "n": 3}}).encode()
    server = parse_instance("i-1", data, "json", FormatOptions())
    assert isinstance(server, Server)
    assert server.labels == (("n", "3"),)


@pytest.mark.parametrize("method", ["hash $remote_addr", "ip_hash", "random"])
def test_prefer_is_refused_with_hash_ip_hash_and_random(method: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"zk_servers": "127.0.0.1:2181",
                      "zk_nodes": {"app": {"path": "/a", "prefer": {"zone": "dc1"}, "upstream_directives": [method]}}})
    assert f"zk_nodes.app: prefer cannot be combined with '{method.split()[0]}'" in str(error.value)


def test_prefer_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"zk_servers": "127.0.0.1:2181", "zk_nodes": {"app": {"path": "/a", "prefer": "dc1"}}})
    assert "zk_nodes.app.prefer: must be a mapping of registry metadata" in str(error.value)
    config = parse_config({"zk_servers": "127.0.0.1:2181", "prefer": {"zone": "dc1"}, "zk_nodes": {"app": "/a"}})
    assert config.znodes[0].options.prefer == DC1


# ---- real traffic ---------------------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path, nginx_bin: str) -> Iterator[TrafficRig]:
    require(lua_missing())
    rig = TrafficRig(tmp_path)
    yield rig
    rig.close()


def _served(rig: TrafficRig, count: int = 200) -> Counter[str]:
    import time

    seen: Counter[str] = Counter()
    for _, status, body in requests_until(rig.front, time.time() + 5):
        assert status == 200
        seen[body] += 1
        if sum(seen.values()) >= count:
            break
    return seen


@pytest.mark.timeout(60)
def test_traffic_stays_in_the_preferred_zone_and_falls_back_within_one_publish(rig: TrafficRig) -> None:
    zones = {"b1": {"zone": "dc1"}, "b2": {"zone": "dc1"}, "b3": {"zone": "dc2"}, "b4": {"zone": "dc2"}}
    rig.make_pipeline(UpstreamOptions(prefer=DC1))
    rig.register("b1", "b2", "b3", "b4", labels=zones)
    first = _served(rig)
    assert set(first) == {"b1", "b2"}, first

    rig.register("b3", "b4", labels=zones)  # dc1's instances unregister: one publish
    fallback = _served(rig)
    assert set(fallback) == {"b3", "b4"}, fallback

    rig.register("b1", "b2", "b3", "b4", labels=zones)  # they return
    back = _served(rig)
    assert set(back) == {"b1", "b2"}, back
    print(f"preferred zone: {dict(first)}; dc1 gone: {dict(fallback)}; dc1 back: {dict(back)}")


# ---- property: prefer never collapses an upstream ------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_servers = st.lists(
    st.tuples(st.integers(1, 8), st.sampled_from([None, "dc1", "dc2"]), st.booleans()),
    min_size=1, max_size=8, unique_by=lambda item: item[0],
)


@settings(max_examples=200, deadline=None)
@given(_servers, st.sets(st.integers(1, 8)), st.booleans())
def test_prefer_keeps_a_primary_and_only_changes_backup_flags(
    entries: list[tuple[int, str | None, bool]], drained_ids: set[int], with_static: bool,
) -> None:
    live = [_server(last, zone, down) for last, zone, down in entries]
    static = (Server("10.9.9.9", 80),) if with_static else ()
    drained = {(f"10.0.0.{i}", 80) for i in drained_ids}
    plain = finalize_upstream("app", live, UpstreamOptions(backup_servers=static), drained=drained)
    preferred = finalize_upstream("app", live, UpstreamOptions(backup_servers=static, prefer=DC1), drained=drained)
    # Same servers, same down flags, same live count: only backup flags differ.
    assert [(s.endpoint, s.down, s.weight) for s in plain.servers] == [
        (s.endpoint, s.down, s.weight) for s in preferred.servers]
    assert preferred.live_count == plain.live_count
    # nginx refuses an upstream of backups only: there is always a primary.
    assert any(not s.backup for s in preferred.servers)
    in_traffic = [s for s in preferred.servers if not s.down and not s.backup]
    matching = [s for s in live if ("zone", "dc1") in s.labels and (s.host, 80) not in drained and not s.down]
    if matching:
        # The primaries in traffic are exactly the preferred ones.
        assert {s.endpoint for s in in_traffic} == {s.endpoint for s in matching}
