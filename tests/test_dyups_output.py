"""The dyups output on its own, against the dyups test server: batches spread over connections.

A batch of written files is POSTed over several kept-alive connections at
once. These tests check that every outcome of such a batch is counted once,
on the output's thread, whatever each connection met: 409s retried, a 500
logged and dropped, and an interface that goes away mid-batch leaving the
rest pending until it answers again, or never answers at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

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
        assert output.pending == (), "a refused body is left to the file and the next re-POST"
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
