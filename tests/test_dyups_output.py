"""The dyups output on its own, against the dyups test server: batches spread over connections.

A batch of written files is POSTed over several kept-alive connections at
once. These tests check that every outcome of such a batch is counted once,
on the output's thread, whatever each connection met: 409s retried, a 500
logged and dropped, and an interface that goes away mid-batch leaving the
rest pending until it answers again, or never answers at all.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from reloader.localenv.ports import port_accepts
from reloader.localenv.tcpproxy import close_socket
from reloader.model import Server, Upstream
from reloader.outputs.base import FileWritten
from reloader.outputs.dyups import DyupsOutput
from tests.dyups_server import DyupsServer
from tests.hangingserver import HangingServer


def upstream(n: int, port: int = 80) -> Upstream:
    return Upstream(f"app{n:03d}", (Server(f"10.0.{n // 250}.{n % 250 + 1}", port), Server("10.1.0.1", port)),
                    live_count=2)


def batch(count: int, port: int = 80) -> list[FileWritten]:
    return [FileWritten(upstream(n, port), None, "") for n in range(count)]


@pytest.fixture
def dyups() -> Iterator[DyupsServer]:
    with DyupsServer(generation="stable", propagation_delay=0.0) as server:
        yield server


def make_output(dyups: DyupsServer, **kwargs: object) -> DyupsOutput:
    settings: dict[str, object] = {"reconcile_interval": 0, "reassert_interval": 0, "retry_interval": 0.2}
    settings.update(kwargs)
    return DyupsOutput(dyups.url, **settings)  # type: ignore[arg-type]


def served(dyups: DyupsServer, count: int, port: int = 80) -> bool:
    table = dyups.upstreams()
    return all(table.get(f"app{n:03d}") == tuple(f"server {s.host}:{s.port}" for s in upstream(n, port).servers)
               for n in range(count))


def test_a_batch_is_spread_over_the_connections_and_counted_once(dyups: DyupsServer) -> None:
    output = make_output(dyups, connections=2)
    try:
        output.file_written_many(batch(40))
        assert output.pending == ()
        assert served(dyups, 40)
        posts = [r for r in dyups.requests_log if r.method == "POST"]
        assert len(posts) == 40 and all(r.status == 200 for r in posts)
        assert len({r.connection for r in posts}) == 2, "both connections carried POSTs"
        assert output.stats()["ok"] == 40
    finally:
        output.close()


def test_one_connection_posts_in_order(dyups: DyupsServer) -> None:
    output = make_output(dyups, connections=1)
    try:
        output.file_written_many(batch(10))
        posts = [r.path for r in dyups.requests_log if r.method == "POST"]
        assert posts == [f"/upstream/app{n:03d}" for n in range(10)]
        assert len({r.connection for r in dyups.requests_log}) == 1
    finally:
        output.close()


def test_409s_and_a_500_inside_a_batch(dyups: DyupsServer) -> None:
    output = make_output(dyups, connections=2, backoff=0.001)
    try:
        dyups.inject("409", count=3)
        output.file_written_many(batch(20))
        assert output.stats()["conflict"] == 3
        assert output.pending == () and served(dyups, 20)

        dyups.inject("500", count=1)
        output.file_written_many(batch(20, port=81))
        stats = output.stats()
        assert stats["http_500"] == 1, stats
        assert output.pending == (), "a refused body is left to the file and the engine's back-off"
        assert stats["refused"] == 1
        refused = [r.path for r in dyups.requests_log if r.status == 500]
        assert len(refused) == 1
        table = dyups.upstreams()
        assert sum(table[f"app{n:03d}"][0].endswith(":81") for n in range(20)) == 19
    finally:
        output.close()


def test_an_interface_that_goes_away_mid_batch_leaves_the_rest_pending(dyups: DyupsServer) -> None:
    output = make_output(dyups, connections=2, connect_timeout=0.5)
    try:
        output.file_written_many(batch(10))
        assert output.pending == ()
        dyups.stop()
        output.file_written_many(batch(30, port=81))
        assert len(output.pending) == 30
        assert output.stats()["reachable"] == 0
        dyups.start()
        output.tick(output._next_retry + 0.01)  # the probe finds it back, then the pending ones go out
        output.tick(output._next_retry + 0.01)
        assert output.pending == ()
        assert output.stats()["reachable"] == 1
        assert served(dyups, 30, port=81)
    finally:
        output.close()


def test_a_batch_to_a_dyups_that_never_answers_costs_one_read_timeout() -> None:
    """Both connections hang: the batch returns after about one read timeout, everything stays pending."""
    with HangingServer() as hung:
        output = DyupsOutput(hung.url, read_timeout=0.5, reconcile_interval=0, reassert_interval=0)
        try:
            started = time.monotonic()
            output.file_written_many(batch(20))
            took = time.monotonic() - started
            assert took < 2.0, f"the batch took {took:.2f} s"
            assert len(output.pending) == 20
            stats = output.stats()
            assert stats["reachable"] == 0 and stats["timeout"] == 2, stats  # one stuck POST per connection
            assert len(hung.requests) == 2
        finally:
            output.close()


def test_a_500_is_reported_once_short_and_retried_only_with_back_off(
    dyups: DyupsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A state answered 500 is not re-POSTed by every reconcile pass, and its body is never logged."""
    clock = [1000.0]
    output = make_output(dyups, reconcile_interval=0.1, retry_interval=0.1, refused_retry=5.0,
                         clock=lambda: clock[0])
    try:
        dyups.inject("500", count=2)  # the first POST and the back-off's retry
        with caplog.at_level(logging.INFO, logger="reloader.outputs.dyups"):
            output.publish(upstream(1))
            for _ in range(20):  # two seconds of reconcile passes and retries
                clock[0] += 0.1
                output.tick(clock[0])
        posts = [r for r in dyups.requests_log if r.method == "POST"]
        assert len(posts) == 1, f"{len(posts)} POSTs of a refused state"
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "nginx refused upstream app001" in errors[0] and "500" in errors[0], errors
        assert "10.0.0.2:80" not in caplog.text, "the body is never logged"
        assert output.stats()["refused"] == 1 and output.refused == ("app001",)

        clock[0] += 5.0  # the back-off is over: one more try, still refused, silently
        output.tick(clock[0])
        assert len([r for r in dyups.requests_log if r.method == "POST"]) == 2
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1

        output.publish(upstream(1, port=81))  # a new state is tried at once
        assert dyups.upstreams()["app001"] == ("server 10.0.0.2:81", "server 10.1.0.1:81")
        assert output.refused == () and output.pending == ()
    finally:
        output.close()


class EndlessServer:
    """A local process squatting an interface's port: answers every request with a body that never ends."""

    def __init__(self, chunked: bool) -> None:
        self._chunked = chunked
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent = 0
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        chunk = b"x" * 65536
        try:
            conn.recv(65536)
            head = b"Transfer-Encoding: chunked\r\n" if self._chunked else b"Connection: close\r\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + head + b"\r\n")
            piece = b"10000\r\n" + chunk + b"\r\n" if self._chunked else chunk
            while not self._closed:
                conn.sendall(piece)
                self.sent += len(chunk)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._closed = True
        # shutdown() wakes the thread blocked in accept(); close() alone would
        # leave the port listening, answering whatever connects to it later.
        close_socket(self._listener)


def test_a_closed_endless_server_frees_its_port() -> None:
    squatter = EndlessServer(chunked=True)
    port = int(squatter.url.rsplit(":", 1)[1])
    squatter.close()
    assert not port_accepts(port), "the closed squatter still answers on its port"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "until-close"])
def test_an_endless_answer_is_capped_with_a_clear_error(chunked: bool, caplog: pytest.LogCaptureFixture) -> None:
    from reloader.outputs.lua import LuaOutput

    squatter = EndlessServer(chunked)
    cap = 1 << 20
    outputs = [
        DyupsOutput(squatter.url, reconcile_interval=0, reassert_interval=0, max_answer=cap),
        LuaOutput(squatter.url, reconcile_interval=0, reassert_interval=0, max_answer=cap),
    ]
    try:
        for output in outputs:
            with caplog.at_level(logging.WARNING):
                caplog.clear()
                assert output.reconcile() == {}
            line = next(r.getMessage() for r in caplog.records if "cannot read the live state" in r.getMessage())
            assert squatter.url in line and f"larger than {cap} bytes" in line, line
            assert output.stats()["reachable"] == 1  # it answered: not "down", just refused
        assert squatter.sent < 64 * cap, "the client stopped reading near the cap"
    finally:
        for output in outputs:
            output.close()
        squatter.close()


# ---- a model-based test of the push engine against the dyups test server ------------

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule  # noqa: E402

NAMES = ("app-a", "app-b", "app-c")


def state(name: str, ports: tuple[int, ...]) -> Upstream:
    return Upstream(name, tuple(Server("10.0.0.1", port) for port in sorted(set(ports))), live_count=len(ports))


def lines(upstream: Upstream) -> tuple[str, ...]:
    return tuple(f"server {s.host}:{s.port}" for s in upstream.servers)


class PushEngineMachine(RuleBasedStateMachine):
    """Random publishes, faults (409, dropped connections, 500s), wipes, changes behind the daemon's back,
    an interface going down and coming back, and time passing.

    Invariants: nginx never serves a state of a managed upstream that was never
    published (or put there behind the daemon's back); no state is POSTed more
    often than the retry, repair and back-off rules allow; and once the
    interface is up and quiet and every back-off has passed, nginx serves
    exactly the newest published state of every upstream.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dyups = DyupsServer(generation="stable", propagation_delay=0.0)
        self.dyups.start()
        self.now = 1000.0
        self.output = DyupsOutput(
            self.dyups.url, reconcile_interval=1.0, reassert_interval=0, retry_interval=0.5,
            connect_timeout=0.3, read_timeout=1.0, backoff=0.0005, refused_retry=5.0, refused_retry_max=40.0,
            clock=lambda: self.now,
        )
        self.desired: dict[str, Upstream] = {}
        self.published: dict[str, set[tuple[str, ...]]] = {name: set() for name in NAMES}
        self.up = True

    @rule(name=st.sampled_from(NAMES), ports=st.lists(st.integers(80, 83), min_size=1, max_size=3))
    def publish(self, name: str, ports: list[int]) -> None:
        upstream = state(name, tuple(ports))
        self.desired[name] = upstream
        self.published[name].add(lines(upstream))
        self.output.file_written_many([FileWritten(upstream, None, "")])

    @rule(fault=st.sampled_from(["409", "drop", "500"]), count=st.integers(1, 3))
    def fault(self, fault: str, count: int) -> None:
        self.dyups.inject(fault, count=count)

    @rule()
    def wipe(self) -> None:
        self.dyups.simulate_restart()

    @rule(name=st.sampled_from(NAMES))
    def behind_back(self, name: str) -> None:
        self.dyups.set_behind_back(name, ["server 10.9.9.9:80"])
        self.published[name].add(("server 10.9.9.9:80",))

    @rule()
    def toggle_interface(self) -> None:
        if self.up:
            self.dyups.stop()
        else:
            self.dyups.start()
        self.up = not self.up

    @rule(seconds=st.sampled_from([0.1, 0.6, 1.1, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.output.tick(self.now)

    @invariant()
    def nothing_served_was_never_published(self) -> None:
        if not self.up:
            return
        for name, served_lines in self.dyups.upstreams().items():
            if name in self.published:
                assert served_lines in self.published[name], (name, served_lines)

    def teardown(self) -> None:
        try:
            if not self.up:
                self.dyups.start()
            # Quiet: faults still injected are used up by the first requests; every back-off passes.
            for _ in range(30):
                self.now += 41.0
                self.output.tick(self.now)
                table = self.dyups.upstreams()
                # Served is not enough: a state nginx already held may still be owed a retry (refused).
                if all(table.get(name) == lines(upstream) for name, upstream in self.desired.items()) \
                        and self.output.pending == () and self.output.refused == ():
                    break
            table = self.dyups.upstreams()
            for name, upstream in self.desired.items():
                assert table.get(name) == lines(upstream), (name, table.get(name), self.output.stats())
            assert self.output.pending == () and self.output.refused == ()
        finally:
            self.output.close()
            self.dyups.stop()


PushEngineMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
test_push_engine_model = pytest.mark.timeout(300)(PushEngineMachine.TestCase)


def test_a_refused_state_retried_after_its_back_off_then_failing_waits_for_the_retry_interval(
    dyups: DyupsServer,
) -> None:
    clock = [1000.0]
    output = make_output(dyups, retry_interval=0.5, refused_retry=5.0, backoff=0.0001, clock=lambda: clock[0])
    try:
        dyups.inject("500", count=1)
        output.publish(upstream(1))
        assert output.refused == ("app001",)
        clock[0] += 5.0
        dyups.inject("409", count=5)  # every attempt of the retry meets a busy lock: a transient failure
        output.tick(clock[0])
        posts = len([r for r in dyups.requests_log if r.method == "POST"])
        assert posts == 1 + 5 and output.pending == ("app001",)
        for _ in range(4):
            clock[0] += 0.1
            output.tick(clock[0])
        assert len([r for r in dyups.requests_log if r.method == "POST"]) == posts, "not retried on every tick"
        clock[0] += 0.2
        output.tick(clock[0])
        assert output.pending == () and output.refused == ()
        assert dyups.upstreams()["app001"] == lines(upstream(1))
    finally:
        output.close()


def test_a_refusal_of_a_state_nginx_already_serves_is_retried_all_the_same() -> None:
    """Found by the model: the table already held the state when its re-POST was refused (a 500). The
    table matched, so the model stopped waiting while the refusal was still owed its retry."""
    machine = PushEngineMachine()
    machine.publish(name="app-a", ports=[80])  # served
    machine.toggle_interface()  # down
    machine.fault(fault="500", count=1)
    machine.publish(name="app-a", ports=[80])  # the same state again: unreachable, pending
    machine.teardown()  # up: the POST is refused; its retry after the back-off clears it


def test_an_answer_read_before_a_catch_up_is_never_taken_as_clean() -> None:
    """Found by the model: the probe's pass read a table holding a change made behind the daemon's
    back, POSTed the pending state over it, and recorded that answer as clean; the same change made
    again then read byte-equal and was skipped by its digest for good."""
    machine = PushEngineMachine()
    machine.toggle_interface()  # down
    machine.publish(name="app-a", ports=[80])  # the POST fails: unreachable, pending
    machine.toggle_interface()  # up again
    machine.behind_back(name="app-a")
    machine.time_passes(seconds=0.6)  # the probe reads the table and catches up
    machine.behind_back(name="app-a")  # the same bytes as the answer the probe read
    machine.teardown()  # the reconcile must repair it


def test_a_reassert_logs_one_line_not_one_per_upstream(dyups: DyupsServer, caplog: pytest.LogCaptureFixture) -> None:
    output = make_output(dyups, connections=2)
    try:
        with caplog.at_level(logging.INFO, logger="reloader.outputs.dyups"):
            output.file_written_many(batch(30))
            assert sum(": POST app" in r.getMessage() for r in caplog.records) == 30, "a new state: a line each"
            caplog.clear()
            output.reassert("test")
            posts = [r for r in dyups.requests_log if r.method == "POST"]
            assert len(posts) == 60 and output.pending == ()
            infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
            assert infos == ["dyups: re-asserting 30 upstreams (test)"], infos
            caplog.clear()
            output.file_written_many(batch(1, port=81))  # a new state of app000
            assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
                "dyups: POST app000: 2 servers"]
        with caplog.at_level(logging.DEBUG, logger="reloader.outputs.dyups"):
            caplog.clear()
            output.reassert("test")
            assert sum(r.getMessage().endswith("(unchanged)") for r in caplog.records) == 30
    finally:
        output.close()
