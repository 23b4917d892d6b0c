"""Unit tests of the guards against collapse, on a clock the test moves.

The fault suite (tests/test_faults.py) shows the same rules end to end
against real ZooKeeper; here every edge is pinned down exactly.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from reloader.config import GuardSettings
from reloader.model import Server, Upstream
from reloader.publication import ClusterFreeze, ServedHistory, UpstreamGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def servers(*last_octets: int) -> list[Server]:
    return [Server(f"10.0.0.{octet}", 80) for octet in last_octets]


def octets(decision_live: tuple[Server, ...] | None) -> list[int]:
    assert decision_live is not None
    return sorted(int(server.host.rsplit(".", 1)[1]) for server in decision_live)


def publish(guard: UpstreamGuard, live: list[Server]) -> list[int]:
    """Decide, record as published (as the pipeline does), and return what was published."""
    decision = guard.decide(live, "/svc/app")
    assert decision.live is not None
    from reloader.assemble import finalize_upstream

    guard.published(finalize_upstream("app", decision.live), decision.live)
    return octets(decision.live)


def make(settings: GuardSettings, freeze: ClusterFreeze | None = None) -> tuple[UpstreamGuard, Clock]:
    clock = Clock()
    return UpstreamGuard("app", settings, freeze, clock), clock


def test_a_drop_of_more_than_max_drop_is_held_for_drop_hold_then_released(caplog: pytest.LogCaptureFixture) -> None:
    guard, clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    assert publish(guard, servers(*range(1, 21))) == list(range(1, 21))
    with caplog.at_level(logging.INFO):
        decision = guard.decide(servers(1), "/svc/app")
        assert octets(decision.live) == list(range(1, 21)), "19 of 20 gone at once: every server stays"
        assert decision.recheck_at == clock.now + 30
        assert guard.holding == 19 and guard.holding_drop
        clock.now += 29.9
        assert octets(guard.decide(servers(1), "/svc/app").live) == list(range(1, 21))
        clock.now += 0.1
        assert octets(guard.decide(servers(1), "/svc/app").live) == [1], "released after drop_hold"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("holding a drop of 19 of 20 usable servers" in m for m in messages) == 1, "one line when held"
    assert sum("releasing the held drop" in m for m in messages) == 1, "one line when released"


def test_a_drop_within_max_drop_is_published_at_once() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 11)))
    assert publish(guard, servers(*range(1, 7))) == list(range(1, 7)), "40% gone: published"
    assert not guard.holding_drop


def test_additions_during_a_hold_are_published_at_once_and_the_held_servers_stay() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 7)))
    published = publish(guard, servers(1, 50))
    assert {1, 50} <= set(published) and len(published) == 6 and set(published) <= {*range(1, 7), 50}, (
        "the new server goes out at once; held servers keep the upstream at the six it served"
    )
    assert guard.holding_drop and guard.holding == 4


def test_servers_coming_back_end_the_hold_without_waiting() -> None:
    guard, clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(1, 2, 3, 4))
    publish(guard, servers(1))
    assert guard.holding_drop
    clock.now += 1
    assert publish(guard, servers(1, 2, 3)) == [1, 2, 3], "only one of four gone now: within max_drop"
    assert not guard.holding_drop


@pytest.mark.parametrize("settings", [
    GuardSettings(settle_after_reconnect=0, max_drop=1.0, drop_hold=30),
    GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=0),
])
def test_max_drop_100_percent_or_drop_hold_0_turn_the_shrink_guard_off(settings: GuardSettings) -> None:
    guard, _clock = make(settings)
    publish(guard, servers(*range(1, 21)))
    assert publish(guard, servers(1)) == [1]


def test_zero_instances_keep_the_last_state_whatever_the_settings() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=1.0, drop_hold=0))
    publish(guard, servers(1, 2))
    assert guard.decide([], "/svc/app").live is None


def test_a_frozen_cluster_publishes_nothing() -> None:
    freeze = ClusterFreeze()
    guard, _clock = make(GuardSettings(), freeze)
    assert guard.decide(servers(1), "/svc/app").live is None
    assert freeze.open_if(freeze.epoch)
    assert octets(guard.decide(servers(1), "/svc/app").live) == [1]


def thawed(settings: GuardSettings) -> tuple[UpstreamGuard, Clock, ClusterFreeze]:
    """A guard whose cluster served 20 servers, froze, and has just thawed."""
    clock = Clock()
    freeze = ClusterFreeze(clock)
    guard = UpstreamGuard("app", settings, freeze, clock)
    assert freeze.open_if(freeze.epoch)
    publish(guard, servers(*range(1, 21)))
    freeze.close()
    clock.now += 60  # an outage long enough for every registration to expire
    assert freeze.open_if(freeze.epoch) and freeze.thaws == 1
    return guard, clock, freeze


def test_after_a_thaw_removals_wait_for_the_settle_window_while_additions_go_out() -> None:
    guard, clock, _freeze = thawed(GuardSettings(settle_after_reconnect=30, max_drop=1.0, drop_hold=0))
    # Re-registration one by one: the pre-outage set stays published throughout.
    for count in range(1, 20):
        assert publish(guard, servers(*range(1, count + 1))) == list(range(1, 21))
        clock.now += 0.4
    assert guard.settling
    assert publish(guard, servers(*range(1, 19), 77)) == [*range(1, 21), 77], "a new instance joins at once"
    assert guard.settling, "19 of 20: still below the pre-outage size"
    assert publish(guard, servers(*range(1, 20), 77)) == [*range(1, 20), 77], (
        "back at the pre-outage size: the window ends early and the one removal goes out"
    )
    assert not guard.settling


def test_the_settle_window_ends_on_time_and_hands_over_to_the_shrink_guard() -> None:
    guard, clock, _freeze = thawed(GuardSettings(settle_after_reconnect=30, max_drop=0.5, drop_hold=10))
    decision = guard.decide(servers(1, 2), "/svc/app")
    assert octets(decision.live) == list(range(1, 21))
    assert decision.recheck_at == pytest.approx(clock.now + 30)
    clock.now += 30
    decision = guard.decide(servers(1, 2), "/svc/app")
    assert octets(decision.live) == list(range(1, 21)), "18 of 20 would go at once: the shrink guard holds"
    assert guard.holding_drop and decision.recheck_at == pytest.approx(clock.now + 10)
    clock.now += 10
    assert octets(guard.decide(servers(1, 2), "/svc/app").live) == [1, 2]


def test_the_first_full_read_is_not_a_thaw() -> None:
    clock = Clock()
    freeze = ClusterFreeze(clock)
    guard = UpstreamGuard("app", GuardSettings(settle_after_reconnect=30, max_drop=1.0, drop_hold=0), freeze, clock)
    assert freeze.open_if(freeze.epoch) and freeze.thaws == 0
    publish(guard, servers(*range(1, 21)))
    assert publish(guard, servers(1, 2)) == [1, 2]
    assert not guard.settling


# ---- issue 14, item 1: the shrink guard cannot be walked around step by step -----------------


@pytest.mark.parametrize("steps", [(8, 6, 4, 2), (5, 3, 2, 1)], ids=["10-8-6-4-2", "10-5-3-2-1"])
def test_a_drop_in_small_steps_is_held_against_what_was_published_recently(steps: tuple[int, ...]) -> None:
    guard, clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 11)))
    published = []
    for count in steps:
        clock.now += 2
        published.append(len(publish(guard, servers(*range(1, count + 1)))))
    assert min(published) >= 5, f"10 servers two seconds ago: never fewer than half of them, got {published}"
    assert guard.holding_drop
    # The hold ends drop_hold after it began, and then the drop goes out in full.
    start = clock.now
    decision = guard.decide(servers(*range(1, steps[-1] + 1)), "/svc/app")
    assert decision.recheck_at is not None and decision.recheck_at - start < 30
    clock.now = decision.recheck_at
    assert publish(guard, servers(*range(1, steps[-1] + 1))) == list(range(1, steps[-1] + 1))
    assert not guard.holding_drop


def test_the_reference_is_what_was_served_within_drop_hold_not_only_what_was_published_then() -> None:
    guard, clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 11)))
    clock.now += 1
    assert len(publish(guard, servers(*range(1, 7)))) == 6
    clock.now += 100  # six servers served all along: they are the reference now
    assert len(publish(guard, servers(1, 2, 3, 4))) == 4
    clock.now += 1
    assert len(publish(guard, servers(1, 2))) == 4, "6 were served a second ago: 2 left is a drop of 4 of 6"
    assert guard.holding_drop


def test_a_released_drop_is_not_held_again_and_a_new_drop_after_it_is() -> None:
    guard, clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 11)))
    publish(guard, servers(1, 2))
    clock.now += 30
    assert publish(guard, servers(1, 2)) == [1, 2], "released after drop_hold"
    clock.now += 1
    assert publish(guard, servers(1, 2, 3)) == [1, 2, 3]
    assert publish(guard, servers(1, 2)) == [1, 2], "2 of 3: within max_drop of what was served since the release"
    assert not guard.holding_drop
    assert publish(guard, servers(1)) == [1, 2], "3 were served a moment ago: 1 is a new drop, held"


# ---- issue 14, item 2: a replacement is not a drop ----------------------------------------------


def test_a_one_server_upstream_whose_instance_is_replaced_is_published_at_once() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(1))
    assert publish(guard, servers(2)) == [2], "one new instance for one old one: same capacity"
    assert not guard.holding_drop and guard.holding == 0


def test_a_rolling_deploy_replacing_most_of_an_upstream_in_one_batch_is_published_at_once() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 11)))
    assert publish(guard, servers(1, 2, 3, *range(21, 28))) == [1, 2, 3, *range(21, 28)]
    assert not guard.holding_drop


def test_a_znode_deleted_and_recreated_with_new_children_is_published_at_once() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(1, 2, 3, 4))
    assert guard.decide([], "/svc/app").live is None, "the znode gone: the last good state stays"
    assert publish(guard, servers(11, 12, 13, 14)) == [11, 12, 13, 14]


def test_a_replacement_during_a_hold_keeps_the_capacity_not_more() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 11)))
    assert publish(guard, servers(1, 2)) == list(range(1, 11))
    published = publish(guard, servers(1, 2, 50, 51))
    assert {1, 2, 50, 51} <= set(published) and len(published) == 10, (
        "four usable now: six of the servers that left stay, and the upstream keeps its ten"
    )


# ---- issue 14, item 3: the guards count usable servers, not endpoints -------------------------


def down(*last_octets: int) -> list[Server]:
    return [Server(f"10.0.0.{octet}", 80, down=True) for octet in last_octets]


def test_every_instance_down_is_the_zero_instances_case(caplog: pytest.LogCaptureFixture) -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 11)))
    with caplog.at_level(logging.WARNING):
        assert guard.decide(down(*range(1, 11)), "/svc/app").live is None, "ten down servers: keep the last state"
        assert guard.decide(down(*range(1, 11)), "/svc/app").live is None
    warnings = [r.getMessage() for r in caplog.records if "no usable instances" in r.getMessage()]
    assert len(warnings) == 1 and "/svc/app" in warnings[0], warnings


def test_nothing_is_published_first_when_every_instance_is_down() -> None:
    guard, _clock = make(GuardSettings())
    assert guard.decide(down(1, 2), "/svc/app").live is None


def test_instances_going_down_count_as_a_drop_and_stay_published_as_they_were() -> None:
    guard, clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    heavy = [Server(f"10.0.0.{octet}", 80, weight=5) for octet in range(1, 11)]
    publish(guard, heavy)
    decision = guard.decide([*heavy[:2], *[Server(s.host, 80, down=True) for s in heavy[2:]]], "/svc/app")
    assert decision.live is not None and sorted(decision.live) == sorted(heavy), (
        "eight of ten re-registered with weight 0: held, as they were published"
    )
    assert guard.holding == 8 and guard.holding_drop
    clock.now += 30
    decision = guard.decide([*heavy[:2], *[Server(s.host, 80, down=True) for s in heavy[2:]]], "/svc/app")
    assert decision.live is not None and sum(not s.down for s in decision.live) == 2, "released after drop_hold"


def test_a_weight_falling_to_zero_within_max_drop_is_published_at_once() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(1, 2, 3, 4))
    decision = guard.decide([*servers(1, 2, 3), *down(4)], "/svc/app")
    assert decision.live is not None and sorted(decision.live) == sorted([*servers(1, 2, 3), *down(4)])


def test_the_settle_window_counts_usable_servers() -> None:
    guard, _clock, _freeze = thawed(GuardSettings(settle_after_reconnect=30, max_drop=1.0, drop_hold=0))
    decision = guard.decide([*servers(*range(1, 11)), *down(*range(11, 21))], "/svc/app")
    assert decision.live is not None and sorted(decision.live) == sorted(servers(*range(1, 21))), (
        "ten of the twenty came back down: every pre-outage server stays usable during the window"
    )


def test_the_served_history_is_a_sliding_maximum_bounded_by_the_upstream_size() -> None:
    history = ServedHistory(10)
    now = 0.0
    for step in range(10_000):
        now += 0.5
        history.record(now, (step * 7) % 11)
    assert len(history) <= 12, "at most one entry per distinct count, whatever the number of publishes"
    history = ServedHistory(10)
    history.record(1.0, 6)  # 10 served until t=1
    history.record(40.0, 4)  # 6 served until t=40
    assert history.reference(31.0, 30) == 10, "10 was served 30 s before t=31"
    assert history.reference(40.0, 30) == 6
    history = ServedHistory(10)
    history.record(1.0, 6)
    assert history.reference(31.5, 30) == 6
    history.reset(2)
    assert history.reference(31.5, 30) == 2


# ---- the same promises through the pipeline, with the default settings -----------------------


def pipeline(clock: Clock) -> tuple[object, list]:
    from reloader.config import ZnodeConfig
    from reloader.pipeline import Pipeline

    published: list = []
    znode = ZnodeConfig(upstream="app", path="/svc/app", key_path="zk_nodes.app")  # default guards
    return Pipeline([znode], published.append, clock=clock), published


def children(*last_octets: int, weight: int = 1) -> dict[str, bytes]:
    return {f"10.0.0.{octet}:80": str(weight).encode() for octet in last_octets}


def test_through_the_pipeline_a_replaced_single_instance_is_published_at_once() -> None:
    clock = Clock()
    pipe, published = pipeline(clock)
    pipe.update("app", children(1), "/svc/app")  # type: ignore[attr-defined]
    clock.now += 1
    pipe.update("app", children(2), "/svc/app")  # type: ignore[attr-defined]
    assert [s.address for s in published[-1].servers] == ["10.0.0.2:80"]


def test_through_the_pipeline_a_walk_down_and_instances_turning_weight_0_are_held() -> None:
    clock = Clock()
    pipe, published = pipeline(clock)
    pipe.update("app", children(*range(1, 11)), "/svc/app")  # type: ignore[attr-defined]
    for count in (8, 6, 4, 2):
        clock.now += 2
        pipe.update("app", children(*range(1, count + 1)), "/svc/app")  # type: ignore[attr-defined]
    assert sum(s.usable for s in published[-1].servers) == 6
    pipe.update("app", {**children(1, 2), **children(*range(3, 11), weight=0)}, "/svc/app")  # type: ignore[attr-defined]
    assert sum(s.usable for s in published[-1].servers) == 6, "weight 0 is no capacity: still held"


def test_during_the_settle_window_a_kept_server_stays_as_last_published_not_as_at_the_thaw() -> None:
    guard, _clock, _freeze = thawed(GuardSettings(settle_after_reconnect=30, max_drop=1.0, drop_hold=0))
    heavier = [Server(f"10.0.0.{octet}", 80, weight=5) for octet in range(1, 11)]
    publish(guard, heavier)  # half back, with a new weight: the other half kept
    decision = guard.decide(heavier[:5], "/svc/app")
    assert decision.live is not None
    weights = {int(s.host.rsplit(".", 1)[1]): s.weight for s in decision.live}
    assert all(weights[octet] == 5 for octet in range(1, 11)), weights
    assert all(weights[octet] == 1 for octet in range(11, 21)), weights


# ---- the reference across a restart ----------------------------------------------


def restarted(guard: UpstreamGuard, settings: GuardSettings, clock: Clock, wall: Clock,
              downtime: float) -> UpstreamGuard:
    """A new guard, as a restarted daemon makes it: the file's state and the record's entries, ``downtime`` later."""
    published = guard.last_published
    assert published is not None
    clock.now += 5000.0  # another process: its monotonic clock has nothing to do with the old one's
    wall.now += downtime
    fresh = UpstreamGuard("app", settings, None, clock, wall)
    fresh.adopt(published)
    return fresh


@given(steps=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=6),
       downtime=st.floats(min_value=0, max_value=40))
@example(steps=[5], downtime=30.0)  # found by it: a restart exactly drop_hold later dropped what still counted
def test_a_restart_holds_against_what_was_served_before_it(steps: list[int], downtime: float) -> None:
    """Whatever was published before a restart, the restarted guard's reference is what it would have been."""
    settings = GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30)
    clock, wall = Clock(), Clock()
    wall.now = 1_800_000_000.0
    guard = UpstreamGuard("app", settings, None, clock, wall)
    publish(guard, servers(*range(1, 11)))
    for count in steps:
        clock.now += 2
        wall.now += 2
        publish(guard, servers(*range(1, count + 1)))
    before = guard._served.reference(clock.now + downtime, settings.drop_hold)
    fresh = restarted(guard, settings, clock, wall, downtime)
    after = fresh._served.reference(clock.now, settings.drop_hold)
    assert after == before


def test_a_record_from_a_clock_set_back_counts_no_longer_than_drop_hold() -> None:
    settings = GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30)
    clock, wall = Clock(), Clock()
    guard = UpstreamGuard("app", settings, None, clock, wall)
    publish(guard, servers(*range(1, 3)))
    guard.adopt(finalize("app", servers(1, 2), owed=((wall.now + 10_000, 10),)))
    assert guard._served.reference(clock.now, 30) == 10
    assert guard._served.reference(clock.now + 30.5, 30) == 2


def test_nothing_is_owed_in_steady_state_or_with_the_guard_off() -> None:
    clock, wall = Clock(), Clock()
    guard = UpstreamGuard("app", GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30), None, clock, wall)
    publish(guard, servers(*range(1, 5)))
    assert guard.last_published is not None and guard.last_published.owed == ()
    publish(guard, servers(1, 2, 3))
    assert guard.last_published.owed == ((wall.now + 30, 4),)
    clock.now += 31
    publish(guard, servers(1, 2, 3, 5))
    assert guard.last_published.owed == ()
    off = UpstreamGuard("app", GuardSettings(settle_after_reconnect=0, max_drop=1.0, drop_hold=30), None, clock, wall)
    publish(off, servers(*range(1, 5)))
    publish(off, servers(1))
    assert off.last_published is not None and off.last_published.owed == ()


def finalize(name: str, live: list[Server], owed: tuple[tuple[float, int], ...]) -> Upstream:
    from reloader.assemble import finalize_upstream

    return replace(finalize_upstream(name, tuple(live)), owed=owed)


def test_a_state_counts_as_served_until_the_files_hold_what_replaced_it() -> None:
    """A write that failed (a full disk) left 7 served for longer than the guard decided; 3 is then a drop."""
    settings = GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=3)
    clock = Clock()
    guard = UpstreamGuard("app", settings, None, clock)
    from reloader.assemble import finalize_upstream

    guard.adopt(finalize_upstream("app", tuple(servers(*range(1, 8)))))
    clock.now += 1.8
    assert len(publish(guard, servers(*range(1, 7)))) == 6  # decided; its write fails
    clock.now += 2.1
    assert len(publish(guard, servers(*range(1, 6)))) == 5
    guard.confirmed()  # the files hold 5 now: 7 was served until this moment
    clock.now += 0.5
    assert len(publish(guard, servers(1, 2, 3, 4))) == 4
    guard.confirmed()
    clock.now += 0.6
    assert len(publish(guard, servers(1, 2, 3))) == 4, "7 were in the files 1.1 s ago: 3 is a drop of 4 of 7"
    assert guard.holding_drop
