"""``child_data: ignore``: a znode whose children are plain names is served without a single data read.

Counted at a frame-aware proxy on a real ZooKeeper 3.8, in both watch
modes: the first sync lists and reads nothing else, a created child is
served with no request at all under a persistent watch (one list under
classic watches), a data change is not read and changes nothing, and a
blip during which the cluster changed sends no version sweep. A reload
that turns it off reads every child's data at once; two upstreams of one
znode may differ. The model tests (``test_watches_model.py``) turn it on
and off at random among their other steps.
"""

from __future__ import annotations

import time

import pytest
from kazoo.client import KazooClient

from reloader.config import ConfigError, parse_config
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.sources.watches import Need, ZnodeState, ZnodeWatch
from tests.test_zk_resume import (  # noqa: F401
    EXISTS, GET_DATA, LISTS, MODES, MULTI_READ, Harness, harnesses, services, wait_until,
)

pytestmark = pytest.mark.timeout(90)


def plain(writer: KazooClient, root: str, counts: dict[str, int]
          ) -> tuple[dict[str, object], dict[str, dict[str, int]]]:
    """Services whose children carry a weight as data, configured with ``child_data: ignore`` (all served at 1)."""
    paths, states = services(writer, root, counts, data=b"3")
    return {name: {"path": path, "child_data": "ignore"} for name, path in paths.items()}, states


@pytest.mark.parametrize("watch_mode", MODES)
def test_names_only_znodes_are_served_without_reading_child_data(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], watch_mode: str) -> None:
    root = f"/names-{watch_mode}-{time.monotonic_ns()}"
    nodes, states = plain(writer, root, {"a": 4, "b": 3})
    harness = Harness(quiet_zk.port, nodes, watch_mode)  # type: ignore[arg-type]
    harnesses.append(harness)
    harness.start().wait_for(states)
    assert sorted(harness.reads_on(1)) == [8, 8], "the first sync read more than the two lists"
    assert harness.proxy is not None
    sent = len(harness.proxy.requests)

    writer.create(f"{root}/a/10.0.0.9:80", b"5")
    harness.wait_for({"a": {**states["a"], "10.0.0.9:80": 1}})
    new = [r.opcode for r in harness.proxy.requests[sent:]]
    assert GET_DATA not in new and EXISTS not in new
    assert [op for op in new if op in LISTS] == ([] if watch_mode == "persistent" else [8])

    # A data change is neither read nor served; a later creation shows the
    # upstream went on from the state before it.
    writer.set(f"{root}/b/10.1.0.0:80", b"9")
    writer.create(f"{root}/b/10.1.0.9:80", b"")
    harness.wait_for({"b": {**states["b"], "10.1.0.9:80": 1}})
    assert GET_DATA not in [r.opcode for r in harness.proxy.requests[sent:]]
    writer.delete(f"{root}/a/10.0.0.0:80")
    harness.wait_for({"a": {"10.0.0.1:80": 1, "10.0.0.2:80": 1, "10.0.0.3:80": 1, "10.0.0.9:80": 1}})


@pytest.mark.parametrize("watch_mode", MODES)
def test_a_blip_with_changes_costs_names_only_znodes_no_sweep(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], watch_mode: str) -> None:
    root = f"/names-blip-{watch_mode}-{time.monotonic_ns()}"
    nodes, states = plain(writer, root, {f"s{i}": 5 for i in range(8)})
    harness = Harness(quiet_zk.port, nodes, watch_mode)  # type: ignore[arg-type]
    harnesses.append(harness)
    harness.start().wait_for(states)

    def while_away() -> None:
        writer.create(f"{root}/s0/10.0.0.9:80", b"")
        writer.set(f"{root}/s1/10.1.0.0:80", b"7")

    connection, report, _ = harness.blip(while_away)
    harness.wait_for({"s0": {**states["s0"], "10.0.0.9:80": 1}})
    assert report.resumed and report.changed
    # A server watch per znode under classic watches: the children watch, and no data watch per child.
    assert report.watches == (16 if watch_mode == "persistent" else 8)
    reads = harness.reads_on(connection)
    assert sorted(reads) == [8], f"after the blip: {reads}"  # s0's list; no multiRead, no data read


@pytest.mark.parametrize("watch_mode", MODES)
def test_a_reload_turns_reading_on_and_off_and_two_upstreams_of_one_znode_may_differ(
        quiet_zk: LocalZooKeeper, writer: KazooClient, harnesses: list[Harness], watch_mode: str) -> None:
    root = f"/names-reload-{watch_mode}-{time.monotonic_ns()}"
    nodes, states = plain(writer, root, {"a": 3})
    harness = Harness(quiet_zk.port, nodes, watch_mode)  # type: ignore[arg-type]
    harnesses.append(harness)
    harness.start().wait_for(states)
    path = f"{root}/a"
    weighted = {f"10.0.0.{k}:80": 3 for k in range(3)}
    names = {f"10.0.0.{k}:80": 1 for k in range(3)}

    def reload(zk_nodes: dict[str, object]) -> None:
        config = parse_config({"zk_servers": harness.proxy.hosts, "zk_nodes": zk_nodes,  # type: ignore[union-attr]
                               "settle_after_reconnect": 0, "max_drop": "100%", "watch_mode": watch_mode},
                              source="test")
        harness.worker.reconfigure(config.clusters[0], [])

    reload({"a": path})
    harness.wait_for({"a": weighted})
    writer.set(f"{path}/10.0.0.1:80", b"6")
    harness.wait_for({"a": {**weighted, "10.0.0.1:80": 6}})

    reload({"a": path, "b": {"path": path, "child_data": "ignore"}})
    harness.wait_for({"a": {**weighted, "10.0.0.1:80": 6}, "b": names})
    writer.set(f"{path}/10.0.0.2:80", b"8")
    writer.create(f"{path}/10.0.0.7:80", b"2")
    harness.wait_for({"a": {**weighted, "10.0.0.1:80": 6, "10.0.0.2:80": 8, "10.0.0.7:80": 2},
                      "b": {**names, "10.0.0.7:80": 1}})

    reload({"b": {"path": path, "child_data": "ignore"}})
    writer.set(f"{path}/10.0.0.0:80", b"4")  # not read any more
    writer.create(f"{path}/10.0.0.8:80", b"")
    harness.wait_for({"b": {**names, "10.0.0.7:80": 1, "10.0.0.8:80": 1}})

    reload({"b": path})  # read again: every child's data, as it is now
    harness.wait_for({"b": {"10.0.0.0:80": 4, "10.0.0.1:80": 6, "10.0.0.2:80": 8, "10.0.0.7:80": 2,
                            "10.0.0.8:80": 1}})


# ---- the state machine alone --------------------------------------------------------------


def names_only_watch() -> ZnodeWatch:
    watch = ZnodeWatch("/svc/a", upstreams=["a"], read_data=False)
    watch.listing_sent()
    watch.listed(["10.0.0.1:80", "10.0.0.2:80"])
    return watch


def test_a_listed_names_only_znode_is_synced_at_once_and_owes_its_view() -> None:
    watch = names_only_watch()
    assert watch.state is ZnodeState.SYNCED and not watch.needs
    assert watch.view() == {"10.0.0.1:80": b"", "10.0.0.2:80": b""}
    assert watch.take_owed() == ["a"]


def test_a_created_child_is_a_view_at_once_and_data_events_are_nothing() -> None:
    watch = names_only_watch()
    watch.take_owed()
    watch.child_created("10.0.0.3:80")
    assert watch.view() == {"10.0.0.1:80": b"", "10.0.0.2:80": b"", "10.0.0.3:80": b""}
    assert watch.take_owed() == ["a"]
    watch.child_data_changed("10.0.0.1:80")
    watch.verify_children()
    assert not watch.needs and not watch.needs_pass and not watch.owed


def test_a_recovery_lists_a_names_only_znode_and_checks_no_child() -> None:
    watch = names_only_watch()
    watch.invalidate()
    assert watch.needs_list and not watch.needs
    assert watch.watches_confirmed() and watch.state is ZnodeState.SYNCED


def test_turning_reading_on_reads_every_child_and_off_waits_for_none() -> None:
    watch = names_only_watch()
    watch.take_owed()
    watch.set_read_data(True)
    assert watch.view() is None and watch.reads() == ["10.0.0.1:80", "10.0.0.2:80"]
    watch.data_read("10.0.0.1:80", b"5", 7)
    assert watch.view() is None
    watch.set_read_data(False)
    assert watch.needs == {} and watch.view() == {"10.0.0.1:80": b"", "10.0.0.2:80": b""}
    assert watch.take_owed() == ["a"]
    watch.set_read_data(True)
    assert watch.needs == {"10.0.0.1:80": Need.READ, "10.0.0.2:80": Need.READ}


# ---- the config ---------------------------------------------------------------------------


def test_child_data_is_validated_and_has_a_global_default() -> None:
    base = {"zk_servers": "127.0.0.1:2181"}
    config = parse_config({**base, "zk_nodes": {"a": "/a", "b": {"path": "/b", "child_data": "ignore"}}}, source="t")
    assert [z.ignore_child_data for z in config.clusters[0].znodes] == [False, True]
    config = parse_config({**base, "child_data": "ignore",
                           "zk_nodes": {"a": "/a", "b": {"path": "/b", "child_data": "read"}}}, source="t")
    assert [z.ignore_child_data for z in config.clusters[0].znodes] == [True, False]
    with pytest.raises(ConfigError, match=r"zk_nodes\.a\.child_data: must be read or ignore, got 'no'"):
        parse_config({**base, "zk_nodes": {"a": {"path": "/a", "child_data": "no"}}}, source="t")
    with pytest.raises(ConfigError, match=r"zk_nodes\.a\.child_data: child_data: ignore cannot be used with "
                                          r"format: json: .*only dubbo, smartstack, name"):
        parse_config({**base, "zk_nodes": {"a": {"path": "/a", "format": "json", "child_data": "ignore"}}},
                     source="t")
    with pytest.raises(ConfigError, match=r"zk_nodes\.a\.format: child_data: ignore cannot be used with format: "
                                          r"curator"):
        parse_config({**base, "child_data": "ignore", "zk_nodes": {"a": {"path": "/a", "format": "curator"}}},
                     source="t")
    for fmt in ("auto", "name", "dubbo", "smartstack"):
        parse_config({**base, "zk_nodes": {"a": {"path": "/a", "format": fmt, "child_data": "ignore"}}}, source="t")
