"""StallWatch: a stretch in which the process did not run is reported once, by whichever thread sees it."""

from __future__ import annotations

import threading

import pytest

from reloader.stall import StallWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_gap_above_the_threshold_is_reported_once_to_every_subscriber() -> None:
    clock = Clock()
    watch = StallWatch(threshold=1.0, interval=0.1, clock=clock)
    heard: list[tuple[str, float]] = []
    watch.subscribe(lambda gap: heard.append(("a", gap)))

    def broken(gap: float) -> None:
        raise RuntimeError("a subscriber that fails")

    watch.subscribe(broken)
    watch.subscribe(lambda gap: heard.append(("b", gap)))
    clock.now += 0.9
    assert watch.check() == 0.0
    clock.now += 5.0
    assert watch.check() == pytest.approx(5.0)
    assert watch.check() == 0.0  # the same stall is not reported twice
    assert heard == [("a", pytest.approx(5.0)), ("b", pytest.approx(5.0))]
    assert watch.stalls == 1 and watch.longest == pytest.approx(5.0)


def test_the_heartbeat_keeps_a_busy_thread_from_looking_stalled() -> None:
    watch = StallWatch(threshold=0.5, interval=0.02).start()
    try:
        heard: list[float] = []
        watch.subscribe(heard.append)
        done = threading.Event()
        # A thread busy for longer than the threshold: the heartbeat still beats meanwhile.
        ticks = 0
        while not done.wait(0.01):
            ticks += 1
            if ticks > 80:
                done.set()
        assert watch.check() == 0.0
        assert heard == []
    finally:
        watch.stop()


def test_the_threshold_must_exceed_the_beat() -> None:
    with pytest.raises(ValueError):
        StallWatch(threshold=0.1, interval=0.1)


def test_no_check_returns_while_another_thread_is_reporting_the_stall() -> None:
    """The cluster thread checking in the moment the heartbeat noticed the stall waits for the freeze."""
    clock = Clock()
    watch = StallWatch(threshold=1.0, interval=0.1, clock=clock)
    reporting, release = threading.Event(), threading.Event()
    frozen: list[bool] = []

    def freeze(gap: float) -> None:
        reporting.set()
        release.wait(5)
        frozen.append(True)

    watch.subscribe(freeze)
    clock.now += 5.0
    noticer = threading.Thread(target=watch.check)
    noticer.start()
    assert reporting.wait(5)
    seen: list[bool] = []
    other = threading.Thread(target=lambda: (watch.check(), seen.append(bool(frozen))))
    other.start()
    other.join(0.2)
    assert other.is_alive(), "a check returned while the stall was still being reported"
    release.set()
    other.join(5)
    noticer.join(5)
    assert seen == [True]


def test_the_heartbeat_is_a_tenth_of_the_threshold_between_a_tenth_and_half_a_second() -> None:
    from reloader.stall import heartbeat_interval

    # The default session timeout (10 s) gives a 5 s threshold: two beats a second, not ten.
    assert [heartbeat_interval(t) for t in (0.5, 1.0, 2.0, 5.0, 60.0)] == [0.1, 0.1, 0.2, 0.5, 0.5]
