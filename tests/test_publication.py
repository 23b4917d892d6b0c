"""Unit tests of the guards against collapse, on a clock the test moves.

The fault suite (tests/test_faults.py) shows the same rules end to end
against real ZooKeeper; here every edge is pinned down exactly.
"""

from __future__ import annotations

import logging

import pytest

from reloader.config import GuardSettings
from reloader.model import Server
from reloader.publication import ClusterFreeze, UpstreamGuard


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
    assert sum("holding a drop of 19 of 20 servers" in m for m in messages) == 1, "one line when held"
    assert sum("releasing the held drop" in m for m in messages) == 1, "one line when released"


def test_a_drop_within_max_drop_is_published_at_once() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(*range(1, 11)))
    assert publish(guard, servers(*range(1, 7))) == list(range(1, 7)), "40% gone: published"
    assert not guard.holding_drop


def test_additions_during_a_hold_are_published_at_once_and_the_held_servers_stay() -> None:
    guard, _clock = make(GuardSettings(settle_after_reconnect=0, max_drop=0.5, drop_hold=30))
    publish(guard, servers(1, 2, 3, 4))
    assert publish(guard, servers(1, 50)) == [1, 2, 3, 4, 50]
    assert guard.holding_drop


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
