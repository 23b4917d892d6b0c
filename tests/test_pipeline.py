"""Unit tests of the pipeline: parse, assemble, guards, and what reaches the outputs."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from typing import Any, Callable

from reloader.assemble import UpstreamOptions
from reloader.config import GuardSettings, ZnodeConfig
from reloader.model import SERVER_ORDER, Server, Upstream
from reloader.pipeline import Pipeline
from reloader.publication import ClusterFreeze
from reloader.snapshot import Snapshot, Unreadable


class Recorder:
    """Stands where the daemon puts the files runner's queue: records what is published."""

    def __init__(self) -> None:
        self.published: list[Upstream] = []

    def __call__(self, upstream: Upstream) -> None:
        self.published.append(upstream)


GUARDS_OFF = GuardSettings(settle_after_reconnect=0, max_drop=1.0, drop_hold=0)


def make(
    options: UpstreamOptions = UpstreamOptions(),
    freeze: ClusterFreeze | None = None,
    publish: Callable[[Upstream], None] | None = None,
) -> tuple[Pipeline, Recorder]:
    recorder = Recorder()
    znode = ZnodeConfig(upstream="app", path="/services/app", key_path="zk_nodes.app", options=options,
                        guards=GUARDS_OFF)
    return Pipeline([znode], publish or recorder, freeze), recorder


def addresses(upstream: Upstream) -> list[str]:
    return [server.address for server in upstream.servers]


def test_a_snapshot_is_parsed_merged_sorted_and_published() -> None:
    pipeline, out = make()
    pipeline.update("app", {
        "10.0.0.2:80": b"3",
        "10.0.0.1:80": b"",
        "uuid-1": json.dumps({"address": "10.0.0.2", "port": 80, "payload": {"metadata": {"weight": 5}}}).encode(),
    }, "/services/app")
    assert len(out.published) == 1
    upstream = out.published[0]
    assert addresses(upstream) == ["10.0.0.1:80", "10.0.0.2:80"]
    assert upstream.servers[1].weight == 5  # the same endpoint twice: the higher weight wins
    assert upstream.live_count == 2


def test_an_unchanged_snapshot_is_not_published_again() -> None:
    pipeline, out = make()
    for _ in range(3):
        pipeline.update("app", {"10.0.0.1:80": b""}, "/services/app")
    assert len(out.published) == 1


def test_zero_valid_instances_keep_the_last_good_state(caplog: pytest.LogCaptureFixture) -> None:
    pipeline, out = make()
    pipeline.update("app", {"10.0.0.1:80": b""}, "/services/app")
    with caplog.at_level(logging.WARNING):
        pipeline.update("app", {}, "/services/app")
        pipeline.update("app", {"garbage;}": b""}, "/services/app")
    assert len(out.published) == 1
    assert addresses(pipeline.last_published("app")) == ["10.0.0.1:80"]  # type: ignore[arg-type]
    empty_warnings = [r for r in caplog.records if "no valid instances" in r.getMessage()]
    assert len(empty_warnings) == 1, "one warning per transition to empty, not one per event"
    assert "keeping the last good state (1 servers)" in empty_warnings[0].getMessage()


def test_nothing_is_published_before_any_instance_exists() -> None:
    pipeline, out = make()
    pipeline.update("app", {}, "/services/app")
    assert out.published == []


def test_backup_servers_alone_make_a_valid_first_state_but_never_replace_a_live_one() -> None:
    backups = (Server("10.9.9.9", 8080),)
    pipeline, out = make(UpstreamOptions(backup_servers=backups))
    pipeline.update("app", {}, "/services/app")
    assert [(s.address, s.backup) for s in out.published[-1].servers] == [("10.9.9.9:8080", False)]
    pipeline.update("app", {"10.0.0.1:80": b""}, "/services/app")
    assert [(s.address, s.backup) for s in out.published[-1].servers] == [
        ("10.0.0.1:80", False), ("10.9.9.9:8080", True),
    ]
    # The registry empties: backups do not count as live, so the guard keeps the last good state.
    pipeline.update("app", {}, "/services/app")
    assert len(out.published) == 2


def test_a_frozen_cluster_publishes_nothing_until_it_thaws() -> None:
    freeze = ClusterFreeze()
    pipeline, out = make(freeze=freeze)
    assert freeze.open_if(freeze.epoch)
    pipeline.update("app", {"10.0.0.1:80": b""}, "/services/app")
    freeze.close()
    pipeline.update("app", {"10.0.0.2:80": b""}, "/services/app")
    assert len(out.published) == 1
    assert freeze.open_if(freeze.epoch)
    pipeline.update("app", {"10.0.0.2:80": b""}, "/services/app")
    assert addresses(out.published[-1]) == ["10.0.0.2:80"]


def test_a_freeze_overtaken_by_a_newer_transition_does_not_thaw() -> None:
    freeze = ClusterFreeze()
    epoch = freeze.epoch
    freeze.close()
    assert not freeze.open_if(epoch)
    assert not freeze.is_open


def test_an_unreadable_child_is_skipped_and_its_siblings_are_served(caplog: pytest.LogCaptureFixture) -> None:
    pipeline, out = make()
    with caplog.at_level(logging.WARNING):
        pipeline.update("app", {"10.0.0.1:80": b"", "10.0.0.2:80": Unreadable("NoAuthError")}, "/services/app")
        pipeline.update("app", {"10.0.0.1:80": b"", "10.0.0.2:80": Unreadable("NoAuthError"),
                                "10.0.0.3:80": b""}, "/services/app")
    assert addresses(out.published[-1]) == ["10.0.0.1:80", "10.0.0.3:80"]
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "'10.0.0.2:80'" in warnings[0] and "NoAuthError" in warnings[0]


def test_a_bad_child_is_warned_about_once_not_on_every_event(caplog: pytest.LogCaptureFixture) -> None:
    pipeline, _out = make()
    with caplog.at_level(logging.WARNING):
        for extra in ("10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"):
            pipeline.update("app", {"10.0.0.1:80": b"", "a b:80": b"", extra: b""}, "/services/app")
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "/services/app" in warnings[0] and "'a b:80'" in warnings[0]


def test_a_bad_child_that_leaves_and_returns_is_warned_about_again(caplog: pytest.LogCaptureFixture) -> None:
    pipeline, _out = make()
    with caplog.at_level(logging.WARNING):
        pipeline.update("app", {"10.0.0.1:80": b"", "host:0": b""}, "/services/app")
        pipeline.update("app", {"10.0.0.1:80": b""}, "/services/app")
        pipeline.update("app", {"10.0.0.1:80": b"", "host:0": b""}, "/services/app")
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 2


def test_a_failing_publish_is_logged_and_the_next_change_still_goes_out(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Upstream] = []

    def publish(upstream: Upstream) -> None:
        calls.append(upstream)
        if len(calls) == 1:
            raise RuntimeError("queue on fire")

    pipeline, _out = make(publish=publish)
    with caplog.at_level(logging.ERROR):
        pipeline.update("app", {"10.0.0.1:80": b""}, "/services/app")
        pipeline.update("app", {"10.0.0.2:80": b""}, "/services/app")
    assert len(calls) == 2
    assert any("handing it to the outputs failed" in r.getMessage() for r in caplog.records)


def test_adopt_takes_a_state_without_publishing_it() -> None:
    pipeline, out = make()
    adopted = Upstream("app", (Server("10.0.0.1", 80),), live_count=1)
    assert pipeline.adopt(adopted)
    assert out.published == []
    pipeline.update("app", {"10.0.0.1:80": b""}, "/services/app")
    assert out.published == [], "the registry agrees with the file: nothing to publish"


def test_unknown_upstreams_are_ignored() -> None:
    pipeline, out = make()
    pipeline.update("other", {"10.0.0.1:80": b""}, "/services/other")
    assert not pipeline.adopt(Upstream("other", (Server("10.0.0.1", 80),)))
    assert out.published == []


def test_only_children_that_changed_are_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from reloader import pipeline as pipeline_module

    calls: list[str] = []
    real_parse = pipeline_module.parse_instance

    def counting_parse(child: str, data: bytes | None, *args: object) -> object:
        calls.append(child)
        return real_parse(child, data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline_module, "parse_instance", counting_parse)
    pipeline, out = make()
    children = {f"10.0.0.{k}:80": b"" for k in range(1, 21)}
    pipeline.update("app", children, "/services/app")
    assert len(calls) == 20
    calls.clear()
    pipeline.update("app", {**children, "10.0.0.5:80": b"7", "10.0.0.99:80": b""}, "/services/app")
    assert sorted(calls) == ["10.0.0.5:80", "10.0.0.99:80"], "one changed and one new child: two parses"
    assert out.published[-1].servers[[s.host for s in out.published[-1].servers].index("10.0.0.5")].weight == 7
    assert len(out.published[-1].servers) == 21
    calls.clear()
    del children["10.0.0.1:80"]
    pipeline.update("app", {**children, "10.0.0.5:80": b"7", "10.0.0.99:80": b""}, "/services/app")
    assert calls == [] and len(out.published[-1].servers) == 20, "a child leaving needs no parse"
    pipeline.update("app", {**children, "10.0.0.1:80": b"", "10.0.0.5:80": b"7", "10.0.0.99:80": b""},
                    "/services/app")
    assert calls == [] and len(out.published[-1].servers) == 21, "a child back under its name is not parsed again"
    pipeline.update("app", {**children, "10.0.0.1:80": b"4", "10.0.0.5:80": b"7", "10.0.0.99:80": b""},
                    "/services/app")
    assert calls == ["10.0.0.1:80"], "a child back with other data is"
    calls.clear()
    pipeline.update("app", {"10.0.0.1:80": b"4"}, "/services/app")
    state = pipeline._states["app"]
    assert calls == [] and len(state.parsed) == 1
    assert len(state.departed) == pipeline_module.DEPARTED_KEPT, "what is kept of the children gone stays bounded"
    pipeline.update("app", {**children, "10.0.0.5:80": b"7", "10.0.0.99:80": b""}, "/services/app")
    assert len(calls) == 20 - pipeline_module.DEPARTED_KEPT, "the children forgotten are parsed again"
    calls.clear()
    pipeline.update("app", {"10.0.0.1:80": b"4"}, "/services/app")  # 20 leave at once, 16 are kept
    pipeline.update("app", {"10.0.0.1:80": b"4", "10.0.0.2:80": b""}, "/services/app")
    calls.clear()
    pipeline.update("app", {"10.0.0.1:80": b"4"}, "/services/app")  # 10.0.0.2 is the last to leave
    pipeline.update("app", {"10.0.0.1:80": b"4", "10.0.0.2:80": b""}, "/services/app")
    assert calls == [], "the last to leave is kept, whatever left before it"
    calls.clear()
    znode = pipeline._states["app"].config
    pipeline.reconfigure([ZnodeConfig(upstream="app", path=znode.path, key_path=znode.key_path,
                                      options=UpstreamOptions(), guards=GUARDS_OFF, format="name")])
    pipeline.update("app", {"10.0.0.1:80": b""}, "/services/app")
    assert calls == ["10.0.0.1:80"], "a changed format parses everything again"


def test_only_addresses_that_changed_are_judged_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's verdict is kept with the parse: one changed child costs one verdict, not one per child.

    A changed policy (a config reload) judges every address again, so a child
    allowed before is refused at once.
    """
    from reloader.netpolicy import NetworkPolicy, parse_networks

    judged: list[str] = []
    real_refusal = NetworkPolicy.refusal

    def counting_refusal(self: NetworkPolicy, host: str) -> str | None:
        judged.append(host)
        return real_refusal(self, host)

    monkeypatch.setattr(NetworkPolicy, "refusal", counting_refusal)
    pipeline, out = make()
    children = {f"10.0.0.{k}:80": b"" for k in range(1, 21)}
    pipeline.update("app", children, "/services/app")
    assert len(judged) == 20
    judged.clear()
    pipeline.update("app", {**children, "10.0.0.99:80": b"", "127.0.0.1:80": b""}, "/services/app")
    assert sorted(judged) == ["10.0.0.99", "127.0.0.1"], "two new children: two verdicts"
    assert len(out.published[-1].servers) == 21, "the loopback child is still refused"
    judged.clear()
    pipeline.update("app", {**children, "10.0.0.99:80": b"", "127.0.0.1:80": b"", "10.0.0.5:80": b"3"},
                    "/services/app")
    assert judged == ["10.0.0.5"], "a child whose data changed is parsed and judged again"
    judged.clear()
    znode = pipeline._states["app"].config
    denying = NetworkPolicy(denied=parse_networks(["10.0.0.0/28"]))
    pipeline.reconfigure([ZnodeConfig(upstream="app", path=znode.path, key_path=znode.key_path,
                                      options=znode.options, guards=GUARDS_OFF, networks=denying)])
    pipeline.update("app", {**children, "10.0.0.99:80": b"", "127.0.0.1:80": b"", "10.0.0.5:80": b"3"},
                    "/services/app")
    assert len(judged) == 22, "a changed policy judges every address again"
    served = {server.host for server in out.published[-1].servers}
    assert served == {f"10.0.0.{k}" for k in range(16, 21)} | {"10.0.0.99"}, served

def test_a_znode_read_in_two_formats_warns_once_per_format(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    znodes = [ZnodeConfig(upstream=name, path="/services/shared", key_path=f"zk_nodes.{name}", format=fmt,
                          guards=GUARDS_OFF) for name, fmt in (("by-json", "json"), ("by-text", "text"))]
    pipeline = Pipeline(znodes, recorder)
    with caplog.at_level(logging.WARNING):
        for weight in (b"1", b"2", b"3"):
            children = {"junk": b"{}", "10.0.0.1:80": b'{"host": "10.0.0.1", "port": 80}', "x": weight}
            pipeline.update("by-json", children, "/services/shared")
            pipeline.update("by-text", children, "/services/shared")
    warnings = [r.getMessage() for r in caplog.records if "'junk' skipped" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert any("no 'host'" in w for w in warnings) and any("not host:port" in w for w in warnings)


def test_warnings_remembered_for_a_removed_upstream_are_dropped() -> None:
    recorder = Recorder()
    znodes = [ZnodeConfig(upstream=name, path=f"/services/{name}", key_path=f"zk_nodes.{name}", guards=GUARDS_OFF)
              for name in ("a", "b")]
    pipeline = Pipeline(znodes, recorder)
    for znode in znodes:
        pipeline.update(znode.upstream, {"10.0.0.1:80": b"", "a b:80": b""}, znode.path)
    assert len(pipeline._warned) == 2
    pipeline.reconfigure(znodes[:1])
    assert len(pipeline._warned) == 1


@given(st.lists(st.builds(
    Server,
    host=st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", "backend.internal"]),
    port=st.sampled_from([80, 443, 8080]),
    weight=st.integers(1, 3),
    down=st.booleans(),
    backup=st.booleans(),
    params=st.sampled_from([(), (("max_fails", "1"),), (("max_fails", "2"),)]),
    name=st.sampled_from(["", "a.example"]),
    labels=st.sampled_from([(), (("zone", "a"),)]),
), max_size=12))
def test_the_server_sort_key_is_the_servers_own_order(servers: list[Server]) -> None:
    assert sorted(servers, key=SERVER_ORDER) == sorted(servers)
    assert [s.labels for s in sorted(servers, key=SERVER_ORDER)] == [s.labels for s in sorted(servers)]  # stable alike


@given(st.builds(
    Server,
    host=st.sampled_from(["10.0.0.1", "::1", "backend.internal"]),
    port=st.sampled_from([80, 8080]),
    weight=st.integers(0, 3),
    down=st.booleans(),
    backup=st.booleans(),
), st.sampled_from(["weight", "down", "backup", "host", "port"]))
def test_a_server_s_endpoint_usable_and_address_follow_its_fields_and_are_no_part_of_its_identity(
    server: Server, change: str
) -> None:
    """Both are made once with the server; every way of making one (``replace`` too) makes them anew."""
    assert server.endpoint == (server.host, server.port)
    assert server.usable == (not server.down and not server.backup and server.weight > 0)
    other = replace(server, **{change: {"weight": server.weight + 1, "down": not server.down,
                                        "backup": not server.backup, "host": "10.9.9.9",
                                        "port": server.port + 1}[change]})
    assert other.endpoint == (other.host, other.port)
    assert other.usable == (not other.down and not other.backup and other.weight > 0)
    assert other.address == (f"[{other.host}]:{other.port}" if ":" in other.host else f"{other.host}:{other.port}")
    twin = Server(server.host, server.port, server.weight, server.down, server.backup)
    assert twin == server and hash(twin) == hash(server) and not twin < server
    assert not {"endpoint", "usable", "address"} & set(repr(server).replace("(", ",").replace("=", ",").split(","))


class _FullPath(Pipeline):
    """The pipeline with its shortcuts turned off: every child judged one by one, one that comes back parsed again."""

    def _parse(self, state: Any, children: Snapshot) -> None:
        super()._parse(state, children)
        state.plain = False
        state.departed.clear()


_CHILDREN = {
    **{f"10.0.0.{k}:80": st.sampled_from([b"", b"3", b"0"]) for k in range(1, 5)},
    "127.0.0.1:80": st.just(b""),  # refused by the address policy
    "backend.internal:80": st.just(b""),  # a host name, and no resolver here
    "not an instance": st.just(b"?"),  # skipped
    "dup": st.just(json.dumps({"host": "10.0.0.1", "port": 80, "weight": 7}).encode()),  # 10.0.0.1:80 again
    "lost": st.just(Unreadable("the read timed out")),
}


@given(st.booleans(), st.lists(st.fixed_dictionaries({}, optional=_CHILDREN), min_size=1, max_size=8))
def test_the_pipeline_s_shortcuts_publish_and_warn_as_the_full_path_does(
    ignore_data: bool, snapshots: list[dict[str, object]]
) -> None:
    """Two shortcuts: every child an accepted IP address gives the servers as parsed, with no
    per-child look; a child that comes back keeps the parse it had when it left.

    Two pipelines take the same snapshots, one with the shortcuts, one without:
    they publish the same upstreams and log the same lines, whatever mix of
    plain, refused, unnamed, unparseable, duplicate and unreadable children
    comes, goes and comes back.
    """
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Lines(logging.INFO)
    logger = logging.getLogger("reloader.pipeline")
    logger.addHandler(handler)
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        runs = []
        for kind in (Pipeline, _FullPath):
            recorder = Recorder()
            znode = ZnodeConfig(upstream="app", path="/services/app", key_path="zk_nodes.app", guards=GUARDS_OFF,
                                ignore_child_data=ignore_data)
            pipeline = kind([znode], recorder)
            lines.clear()
            for snapshot in snapshots:
                pipeline.update("app", snapshot, "/services/app")  # type: ignore[arg-type]
            runs.append((recorder.published, list(lines)))
        assert runs[0] == runs[1]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


@given(
    st.lists(st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", "10.0.0.10"]), st.sampled_from([80, 81]),
                       st.integers(0, 3), st.booleans()), max_size=8),
    st.sampled_from([(), (Server("10.0.0.2", 80),), (Server("10.9.9.9", 80), Server("10.0.0.1", 81))]),
    st.sets(st.sampled_from([("10.0.0.1", 80), ("10.0.0.2", 81)])),
    st.sampled_from([(), (("zone", "a"),)]),
)
def test_duplicates_merge_and_ordered_servers_finalize_as_they_always_did(
    raw: list[tuple[str, int, int, bool]], backups: tuple[Server, ...], drained: set[tuple[str, int]],
    prefer: tuple[tuple[str, str], ...],
) -> None:
    """Shortcuts for the usual case (no endpoint twice; nothing to add to sorted servers) change no result."""
    from reloader.assemble import finalize_upstream, merge_duplicates

    servers = [Server(host, port, weight, down, labels=(("zone", "a"),) if weight == 2 else ())
               for host, port, weight, down in raw]
    by_endpoint: dict[tuple[str, int], Server] = {}
    for server in servers:  # the rule, spelled out: the higher weight wins, a down server counting 0
        known = by_endpoint.get(server.endpoint)
        if known is None or (0 if server.down else server.weight) > (0 if known.down else known.weight):
            by_endpoint[server.endpoint] = server
    assert merge_duplicates(servers) == list(by_endpoint.values())
    live = tuple(sorted(by_endpoint.values(), key=SERVER_ORDER))
    options = UpstreamOptions(backup_servers=backups, prefer=prefer, panic_threshold=0.5)
    assert finalize_upstream("app", live, options, drained, ordered=True) == finalize_upstream(
        "app", list(reversed(live)), options, drained)
