"""Host names become addresses in the background: DNS never stalls a cluster nor breaks nginx's start.

No test here asks real DNS: every look-up is an injected function.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reloader.config import GuardSettings, ZnodeConfig
from reloader.model import Server, Upstream
from reloader.netpolicy import NetworkPolicy, parse_networks
from reloader.pipeline import Pipeline
from reloader.readback import parse_upstream_block
from reloader.render import render_file, render_file_lua
from reloader.resolve import HostChecker, Resolution

pytestmark = pytest.mark.timeout(60)

GUARDS_OFF = GuardSettings(settle_after_reconnect=0, max_drop=1.0, drop_hold=0)


class Dns:
    """An injectable resolver: a table of answers, names that hang until released, and a call log."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = dict(table or {})
        self.hang: set[str] = set()
        self.release = threading.Event()
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, host: str) -> object:
        with self._lock:
            self.calls.append(host)
        if host in self.hang:
            self.release.wait(30)
        answer = self.table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0)) for address in answer]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Thread:
    """Stands for a cluster thread: posted tasks and scheduled calls, run when the test says."""

    def __init__(self) -> None:
        self.posted: list[Callable[[], None]] = []
        self.scheduled: list[tuple[float, Callable[[], None]]] = []
        self._lock = threading.Lock()

    def post(self, task: Callable[[], None]) -> None:
        with self._lock:
            self.posted.append(task)

    def schedule(self, delay: float, task: Callable[[], None]) -> None:
        self.scheduled.append((delay, task))

    def run_posted(self) -> int:
        with self._lock:
            tasks, self.posted = self.posted, []
        for task in tasks:
            task()
        return len(tasks)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def znode(
    name: str, path: str | None = None, networks: NetworkPolicy = NetworkPolicy(), **kwargs: object
) -> ZnodeConfig:
    return ZnodeConfig(upstream=name, path=path or f"/svc/{name}", key_path=f"zk_nodes.{name}",
                       guards=GUARDS_OFF, networks=networks, **kwargs)  # type: ignore[arg-type]


def make(checker: HostChecker, *znodes: ZnodeConfig, thread: Thread | None = None,
         sync: bool = False) -> tuple[Pipeline, dict[str, Upstream], Thread]:
    published: dict[str, Upstream] = {}
    thread = thread or Thread()

    def publish(upstream: Upstream) -> None:
        published[upstream.name] = upstream

    pipeline = Pipeline(list(znodes) or [znode("app")], publish, schedule=thread.schedule, hosts=checker,
                        post=None if sync else thread.post)
    return pipeline, published, thread


def served(thread: Thread, published: dict[str, Upstream], upstream: str, address: str) -> bool:
    """Runs what was posted to the pipeline's thread; True once ``address`` is published for ``upstream``."""
    thread.run_posted()
    return address in addresses(published.get(upstream))


def addresses(upstream: Upstream | None) -> list[str]:
    return [server.address for server in upstream.servers] if upstream else []


# ---- the checker ------------------------------------------------------------------------


def test_ip_addresses_are_never_looked_up() -> None:
    dns = Dns()
    checker = HostChecker(lookup=dns)
    assert checker.resolve("10.0.0.1") == Resolution(("10.0.0.1",)) and checker.resolve("fe80::1").addresses
    assert dns.calls == [] and len(checker) == 0


def test_a_look_up_never_blocks_the_caller_and_its_answer_is_announced() -> None:
    dns = Dns({"svc.example": ["10.0.0.7", "10.0.0.5", "10.0.0.7"]})
    dns.hang.add("svc.example")
    checker = HostChecker(lookup=dns)
    heard: list[str] = []
    try:
        began = time.monotonic()
        first = checker.resolve("svc.example", heard.append)
        assert time.monotonic() - began < 0.05 and first.unknown and not first.failed
        assert checker.resolve("svc.example").unknown, "still unknown while the look-up hangs, never 'unresolvable'"
        dns.release.set()
        wait_for(lambda: heard == ["svc.example"])
        assert checker.resolve("svc.example") == Resolution(("10.0.0.5", "10.0.0.7"))
        assert dns.calls == ["svc.example"], "one look-up, not one per caller"
    finally:
        dns.release.set()
        checker.close()


def test_last_known_addresses_are_kept_while_look_ups_fail_and_a_new_name_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dns = Dns({"svc.example": ["10.0.0.5"]})
    clock = Clock()
    checker = HostChecker(lookup=dns, clock=clock, interval=30)
    users: list[str] = []
    try:
        checker.resolve("svc.example", users.append)
        checker.resolve("gone.example", users.append)
        wait_for(lambda: len(users) == 2)
        assert checker.resolve("gone.example").failed
        del dns.table["svc.example"]  # the record is removed (or DNS is down)
        clock.now += 31
        with caplog.at_level(logging.WARNING):
            checker.resolve("svc.example")
            wait_for(lambda: checker.resolve("svc.example").error is not None)
        kept = checker.resolve("svc.example")
        assert kept.addresses == ("10.0.0.5",) and not kept.failed and not kept.unknown
        assert any("keeping its last known addresses 10.0.0.5" in r.getMessage() for r in caplog.records)
        assert users.count("svc.example") == 1, "keeping the same addresses is no change"
    finally:
        checker.close()


def test_a_look_up_that_cannot_start_never_counts_as_resolving() -> None:
    class NoThreads:
        def submit(self, *args: object, **kwargs: object) -> object:
            raise RuntimeError("can't start new thread")

        def shutdown(self) -> None:
            pass

    checker = HostChecker(lookup=Dns({"svc.example": ["10.0.0.5"]}), pool=NoThreads())  # type: ignore[arg-type]
    assert checker.resolve("svc.example").unknown
    pipeline, published, _ = make(checker)
    pipeline.update("app", {"svc.example:80": b"", "10.0.0.1:80": b""}, "/svc/app")
    assert addresses(published["app"]) == ["10.0.0.1:80"], "a name nobody could look up is not served"


# ---- the pipeline -----------------------------------------------------------------------


def test_a_name_is_served_as_its_addresses_with_the_name_in_a_comment() -> None:
    dns = Dns({"svc.example": ["10.0.0.6", "10.0.0.5"]})
    checker = HostChecker(lookup=dns)
    pipeline, published, thread = make(checker)
    try:
        pipeline.update("app", {"svc.example:80": b"3", "10.0.0.1:80": b""}, "/svc/app")
        assert addresses(published["app"]) == ["10.0.0.1:80"], "nothing for the name until it answers"
        wait_for(lambda: thread.run_posted() > 0)
        upstream = published["app"]
        assert addresses(upstream) == ["10.0.0.1:80", "10.0.0.5:80", "10.0.0.6:80"]
        text = render_file(upstream)
        assert "    server 10.0.0.5:80 weight=3;  # svc.example\n" in text
        assert "svc.example:80" not in text
        assert "  # svc.example\n" in render_file_lua(upstream)
        assert parse_upstream_block(text) == upstream, "the name comes back from the file"
    finally:
        checker.close()


def test_with_the_record_gone_the_files_still_pass_nginx_t(tmp_path: Path, nginx_check: Callable[[Path], None]) -> None:
    dns = Dns({"svc.attacker.test": ["10.0.0.5"]})
    clock = Clock()
    checker = HostChecker(lookup=dns, clock=clock, interval=30)
    pipeline, published, thread = make(checker)
    try:
        pipeline.update("app", {"svc.attacker.test:80": b""}, "/svc/app")
        wait_for(lambda: thread.run_posted() > 0)
        del dns.table["svc.attacker.test"]
        clock.now += 31
        assert thread.scheduled and thread.scheduled[0][0] == 5, "names in use are asked for again"
        thread.scheduled.pop(0)[1]()  # the refresh timer fires
        wait_for(lambda: len(dns.calls) == 2)
        wait_for(lambda: checker.resolve("svc.attacker.test").error is not None)
        thread.run_posted()
        pipeline.update("app", {"svc.attacker.test:80": b"", "10.0.0.1:80": b""}, "/svc/app")
        assert addresses(published["app"]) == ["10.0.0.1:80", "10.0.0.5:80"]
        (tmp_path / "app.upstream").write_text(render_file(published["app"]))
        nginx_check(tmp_path)  # what every restart runs: no name for nginx to look up
        # A name that never resolved is skipped, not published.
        pipeline.update("app", {"svc.attacker.test:80": b"", "new.attacker.test:80": b""}, "/svc/app")
        wait_for(lambda: checker.resolve("new.attacker.test").failed)
        thread.run_posted()
        assert addresses(published["app"]) == ["10.0.0.5:80"]
    finally:
        checker.close()


def test_a_name_that_resolves_to_the_host_is_refused_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    dns = Dns({"localhost": ["127.0.0.1", "::1"], "meta.attacker.test": ["10.0.0.9", "169.254.169.254"],
               "sidecar.local": ["127.0.0.1"]})
    checker = HostChecker(lookup=dns)
    allow = NetworkPolicy(allowed=parse_networks(["127.0.0.1/32"]))
    pipeline, published, thread = make(checker, znode("app"), znode("side", networks=allow))
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                pipeline.update("app", {"localhost:14444": b"", "meta.attacker.test:80": b"", "10.0.0.1:80": b""},
                                "/svc/app")
                pipeline.update("side", {"sidecar.local:9000": b""}, "/svc/side")
                wait_for(lambda: served(thread, published, "side", "127.0.0.1:9000"))
                wait_for(lambda: not checker.resolve("meta.attacker.test").unknown)
                wait_for(lambda: not checker.resolve("localhost").unknown)
                wait_for(lambda: not thread.run_posted())
        assert addresses(published["app"]) == ["10.0.0.1:80"]
        assert addresses(published["side"]) == ["127.0.0.1:9000"], "an allowed sidecar by name"
        warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert len(warnings) == 2, warnings
        assert any("/svc/app child 'localhost:14444'" in w and "loopback" in w for w in warnings)
        assert any("'meta.attacker.test:80'" in w and "link-local" in w for w in warnings)
    finally:
        checker.close()


def test_a_hung_resolver_never_delays_the_cluster_thread() -> None:
    dns = Dns({f"n{i}.example": ["10.1.0.1"] for i in range(8)})
    dns.hang.update(dns.table)
    checker = HostChecker(lookup=dns, workers=2)
    pipeline, published, _ = make(checker, znode("names"), znode("plain"))
    try:
        pipeline.update("plain", {"10.0.0.1:80": b""}, "/svc/plain")
        began = time.monotonic()
        pipeline.update("names", {f"n{i}.example:80": b"" for i in range(8)} | {"10.0.0.9:80": b""}, "/svc/names")
        pipeline.update("plain", {"10.0.0.1:80": b"", "10.0.0.2:80": b""}, "/svc/plain")
        took = time.monotonic() - began
        assert took < 0.05, f"the cluster thread waited {took:.3f} s on DNS"
        assert addresses(published["plain"]) == ["10.0.0.1:80", "10.0.0.2:80"]
        assert addresses(published["names"]) == ["10.0.0.9:80"]
    finally:
        dns.release.set()
        checker.close()


def test_queueing_behind_hung_look_ups_never_turns_a_healthy_name_into_a_skip(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dns = Dns({f"hung{i}.example": ["10.1.0.1"] for i in range(8)} | {"good.example": ["10.2.0.2"]})
    dns.hang.update(name for name in dns.table if name.startswith("hung"))
    clock = Clock()
    checker = HostChecker(lookup=dns, workers=2, clock=clock)
    pipeline, published, thread = make(checker)
    children = {f"hung{i}.example:80": b"" for i in range(8)} | {"good.example:80": b"", "10.0.0.1:80": b""}
    try:
        with caplog.at_level(logging.WARNING):
            # The hung names first, so that both resolver threads hang and the good name queues behind them.
            hung = {child: data for child, data in children.items() if child.startswith("hung")}
            pipeline.update("app", hung | {"10.0.0.1:80": b""}, "/svc/app")
            wait_for(lambda: len(dns.calls) == 2)
            pipeline.update("app", children, "/svc/app")
            # Long after any timeout, names queued behind hung look-ups are still unknown, never a skip.
            clock.now += 3600
            pipeline.update("app", children, "/svc/app")
            assert addresses(published["app"]) == ["10.0.0.1:80"]
            dns.release.set()
            wait_for(lambda: served(thread, published, "app", "10.2.0.2:80"))
        assert not [r for r in caplog.records if "skipped" in r.getMessage()]
        assert "10.2.0.2:80" in addresses(published["app"])
    finally:
        dns.release.set()
        checker.close()


def test_an_unanswered_name_keeps_what_is_published_for_it_across_a_restart() -> None:
    dns = Dns({"svc.example": ["10.0.0.5"]})
    dns.hang.add("svc.example")
    checker = HostChecker(lookup=dns)
    pipeline, published, _ = make(checker)
    try:
        # At start-up the file is adopted, with the name in its comment.
        text = "upstream app {\n    server 10.0.0.1:80;\n    server 10.0.0.5:80;  # svc.example\n}\n"
        assert pipeline.adopt(parse_upstream_block(text))
        pipeline.update("app", {"svc.example:80": b"", "10.0.0.2:80": b""}, "/svc/app")
        assert addresses(published["app"]) == ["10.0.0.2:80", "10.0.0.5:80"], "the hung name keeps its server"
    finally:
        dns.release.set()
        checker.close()


def test_an_answer_that_changes_is_published_and_the_cache_holds_only_names_in_use() -> None:
    dns = Dns({f"n{i}.example": [f"10.3.{i // 256}.{i % 256}"] for i in range(5000)})
    clock = Clock()
    checker = HostChecker(lookup=dns, clock=clock, workers=4)
    pipeline, published, thread = make(checker)
    try:
        pipeline.update("app", {f"n{i}.example:80": b"" for i in range(5000)}, "/svc/app")
        wait_for(lambda: len(dns.calls) == 5000, 30)
        wait_for(lambda: thread.run_posted() >= 0 and len(published["app"].servers) == 5000, 30)
        pipeline.update("app", {f"n{i}.example:80": b"" for i in range(10)}, "/svc/app")
        assert len(checker) == 10, "the cache is pruned to the names in use"
        # The refresh timer looks them up again; a changed answer is published.
        dns.table["n0.example"] = ["10.9.9.9"]
        clock.now += 31
        thread.scheduled.pop(0)[1]()
        wait_for(lambda: checker.resolve("n0.example").addresses == ("10.9.9.9",))
        wait_for(lambda: thread.run_posted() > 0)
        assert "10.9.9.9:80" in addresses(published["app"])
        pipeline.update("app", {"10.0.0.1:80": b""}, "/svc/app")
        assert len(checker) == 0
    finally:
        checker.close()


def test_the_one_shot_render_waits_for_answers_without_a_thread_to_post_to() -> None:
    dns = Dns({"svc.example": ["10.0.0.5"]})
    checker = HostChecker(lookup=dns, timeout=5)
    pipeline, published, _ = make(checker, sync=True)
    try:
        pipeline.update("app", {"svc.example:80": b""}, "/svc/app")
        assert addresses(published["app"]) == ["10.0.0.5:80"]
    finally:
        checker.close()


def test_without_a_resolver_names_are_skipped() -> None:
    published: list[Upstream] = []
    pipeline = Pipeline([znode("app")], published.append)
    pipeline.update("app", {"svc.example:80": b"", "10.0.0.1:80": b""}, "/svc/app")
    assert addresses(published[-1]) == ["10.0.0.1:80"]


def test_a_model_server_from_a_name_renders_its_comment_only_in_files() -> None:
    server = Server("10.0.0.5", 80, name="svc.example")
    assert server.address == "10.0.0.5:80"


def test_the_one_shot_render_waits_for_a_hung_resolver_once_in_all(caplog: pytest.LogCaptureFixture) -> None:
    dns = Dns({"a.example": ["10.0.0.5"], "b.example": ["10.0.0.6"]})
    dns.hang.update(dns.table)
    checker = HostChecker(lookup=dns, timeout=0.3)
    pipeline, published, _ = make(checker, znode("a"), znode("b"), sync=True)
    try:
        began = time.monotonic()
        with caplog.at_level(logging.WARNING):
            pipeline.update("a", {"a.example:80": b"", "10.0.0.1:80": b""}, "/svc/a")
            pipeline.update("b", {"b.example:80": b"", "10.0.0.2:80": b""}, "/svc/b")
        took = time.monotonic() - began
        assert 0.25 < took < 0.6, took
        assert addresses(published["a"]) == ["10.0.0.1:80"] and addresses(published["b"]) == ["10.0.0.2:80"]
        assert not [r for r in caplog.records if "skipped" in r.getMessage()], "unanswered is not unresolvable"
    finally:
        dns.release.set()
        checker.close()


def test_resolve_interval_is_a_setting() -> None:
    from reloader.config import ConfigError, parse_config

    base = {"zk_servers": "zk:2181", "zk_nodes": {"app": "/svc/app"}}
    assert parse_config(base).resolve_interval == 30
    assert parse_config({**base, "resolve_interval": "10s"}).resolve_interval == 10
    with pytest.raises(ConfigError, match="resolve_interval: must be greater than zero"):
        parse_config({**base, "resolve_interval": 0})
