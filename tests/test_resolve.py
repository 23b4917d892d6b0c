"""Host-name checks: IPs pass untouched, names must resolve, a hung resolver costs the timeout only."""

from __future__ import annotations

import threading
import time

from reloader.resolve import HostChecker


def test_ip_addresses_are_never_looked_up() -> None:
    looked_up: list[str] = []
    checker = HostChecker(lookup=lambda host: looked_up.append(host))
    assert checker.problem("10.0.0.1") is None and checker.problem("fe80::1") is None
    assert looked_up == []


def test_localhost_resolves_and_an_invalid_name_does_not() -> None:
    checker = HostChecker(timeout=5.0)
    assert checker.problem("localhost") is None
    problem = checker.problem("nonexistent-host.invalid")
    assert problem is not None and "nonexistent-host.invalid" in problem and "does not resolve" in problem


def test_a_hung_resolver_costs_the_caller_the_timeout_and_answers_are_cached() -> None:
    release = threading.Event()
    calls: list[str] = []

    def hang(host: str) -> object:
        calls.append(host)
        release.wait(10)
        return ()

    clock_now = [0.0]
    checker = HostChecker(timeout=0.2, ttl=30.0, lookup=hang, clock=lambda: clock_now[0])
    try:
        began = time.monotonic()
        problem = checker.problem("slow.example")
        took = time.monotonic() - began
        assert problem is not None and "did not resolve within 0.2 s" in problem
        assert took < 1.0
        assert checker.problem("slow.example") == problem and calls == ["slow.example"], "cached"
        clock_now[0] = 31.0
        checker.problem("slow.example")
        assert calls == ["slow.example", "slow.example"], "looked up again once the cache period is over"
    finally:
        release.set()
        checker.close()
