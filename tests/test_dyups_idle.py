"""Quick reconcile passes against the dyups test server: an idle pass reads names, yet every loss heals.

On stable and Tengine an idle reconcile pass reads only ``GET /list`` (names)
and checks that the adapter's connection did not end; ``GET /detail`` is read
when either moved, when the desired state moved, and every ``full_every``
passes. Each test below takes away state by one path (a restart or reload
whose files define the same names, a DELETE or POST behind the daemon's
back, an interface that went away) with ``full_every`` so large that only the
quick read can notice it, and checks the very next pass repairs it: a quick
read that missed the loss fails the test. Passes are driven by calling
``reconcile()`` directly, so each test is exact about which pass does what.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reloader.model import Server, Upstream
from reloader.outputs.dyups import DyupsOutput
from tests.dyups_server import DyupsServer

NEVER = 10**6  # full_every that leaves every full read to the quick digest
WANTED = ("server 10.0.0.1:80", "server 10.0.0.2:80 weight=3")
STALE = ["server 10.9.9.9:80"]  # what nginx's files say after the restart or reload


def app(name: str = "app1") -> Upstream:
    return Upstream(name, (Server("10.0.0.1", 80), Server("10.0.0.2", 80, weight=3)), live_count=2)


def reads(dyups: DyupsServer, path: str) -> int:
    return sum(1 for r in dyups.requests_log if r.method == "GET" and r.path == path)


@pytest.fixture
def output_for() -> Iterator:
    made: list[DyupsOutput] = []

    def make(dyups: DyupsServer, full_every: int = NEVER) -> DyupsOutput:
        output = DyupsOutput(dyups.url, reconcile_interval=0, reassert_interval=0, full_every=full_every)
        made.append(output)
        return output

    yield make
    for output in made:
        output.close()


def settled(dyups: DyupsServer, output: DyupsOutput, *names: str) -> None:
    """Publish ``names`` and run the first two (full, clean) passes, then one quick pass that reads /list only."""
    for name in names or ("app1",):
        output.publish(app(name))
    assert output.pending == ()
    assert output.reconcile() == {}  # learns the API
    assert output.reconcile() == {}  # the first quick digest, and /detail
    detail = reads(dyups, "/detail")
    assert output.reconcile() == {}
    assert reads(dyups, "/detail") == detail, "an idle pass must not read /detail"


@pytest.mark.parametrize("generation", ["stable", "tengine"])
def test_idle_passes_read_the_names_and_the_full_table_every_nth_pass(generation: str, output_for) -> None:
    with DyupsServer(generation=generation) as dyups:
        output = output_for(dyups, full_every=3)
        for n in range(1, 4):
            output.publish(app(f"app{n}"))
        pattern = []
        for _ in range(7):
            detail, names = reads(dyups, "/detail"), reads(dyups, "/list")
            assert output.reconcile() == {}
            pattern.append((reads(dyups, "/detail") - detail, reads(dyups, "/list") - names))
        # The first pass learns the API from /detail; a full pass reads /list (the quick digest,
        # first) then /detail; a quick pass /list only.
        assert pattern == [(1, 0), (1, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1)]
        # A new desired state is verified by the next pass in full.
        output.publish(Upstream("app2", (Server("10.0.0.9", 80),), live_count=1))
        detail = reads(dyups, "/detail")
        assert output.reconcile() == {}
        assert reads(dyups, "/detail") == detail + 1


@pytest.mark.parametrize("generation", ["stable", "tengine"])
@pytest.mark.parametrize("wipe", ["restart", "reload"])
def test_a_restart_or_reload_under_the_same_names_is_seen_by_the_quick_pass(
    generation: str, wipe: str, output_for
) -> None:
    """nginx comes back with its files' upstreams under the managed names: /list is unchanged, the connection is not."""
    with DyupsServer(generation=generation, file_upstreams={"app1": STALE}) as dyups:
        output = output_for(dyups)
        settled(dyups, output)
        names_before = reads(dyups, "/list")
        getattr(dyups, f"simulate_{wipe}")()
        assert dyups.upstreams()["app1"] == tuple(STALE)
        repairs = output.reconcile()
        assert reads(dyups, "/list") == names_before + 1
        assert list(repairs) == ["app1"] and "10.9.9.9:80" in repairs["app1"]
        assert dyups.upstreams()["app1"] == WANTED


def test_a_restart_that_drops_the_names_is_repaired_by_the_next_pass(output_for) -> None:
    with DyupsServer(generation="stable") as dyups:
        output = output_for(dyups)
        settled(dyups, output, "app1", "app2")
        dyups.simulate_restart()
        assert output.reconcile() == {"app1": "missing", "app2": "missing"}
        assert dyups.upstreams()["app1"] == WANTED


def test_a_delete_behind_the_back_on_the_same_connection_is_seen_by_its_names(output_for) -> None:
    """No reload, no new connection: only the names of /list moved."""
    with DyupsServer(generation="stable", workers=1) as dyups:
        output = output_for(dyups)
        settled(dyups, output, "app1", "app2")
        connections = {r.connection for r in dyups.requests_log}
        assert dyups.delete_behind_back("app2")
        assert output.reconcile() == {"app2": "missing"}
        assert {r.connection for r in dyups.requests_log} == connections, "the same connection all along"
        assert dyups.upstreams()["app2"] == WANTED


def test_a_new_unmanaged_name_beside_a_changed_one_triggers_the_full_read(output_for) -> None:
    with DyupsServer(generation="stable", workers=1) as dyups:
        output = output_for(dyups)
        settled(dyups, output)
        dyups.set_behind_back("app1", STALE)
        dyups.set_behind_back("unmanaged", ["server 10.8.8.8:80"])
        assert list(output.reconcile()) == ["app1"]
        assert dyups.upstreams()["app1"] == WANTED
        assert dyups.upstreams()["unmanaged"] == ("server 10.8.8.8:80",)


def test_a_change_behind_the_back_under_the_same_names_waits_for_the_full_pass(output_for) -> None:
    """What the quick read cannot see (same names, same connection) is repaired by the every-Nth full pass."""
    with DyupsServer(generation="stable", workers=1) as dyups:
        output = output_for(dyups, full_every=3)
        settled(dyups, output)  # full passes, then quick pass 1 of 2
        dyups.set_behind_back("app1", STALE)
        assert output.reconcile() == {}  # quick pass 2: the names did not move
        repairs = output.reconcile()  # the third pass reads /detail
        assert list(repairs) == ["app1"]
        assert dyups.upstreams()["app1"] == WANTED


def test_an_interface_that_went_away_is_read_in_full_when_it_answers(output_for) -> None:
    with DyupsServer(generation="stable", file_upstreams={"app1": STALE}) as dyups:
        output = output_for(dyups)
        settled(dyups, output)
        port = dyups.port
        dyups.stop()
        assert output.reconcile() == {}
        assert output.stats()["reachable"] == 0
    with DyupsServer(generation="stable", file_upstreams={"app1": STALE}, port=port) as dyups:
        output.reconcile()
        assert dyups.upstreams()["app1"] == WANTED
        assert output.stats()["reachable"] == 1


def test_the_2020_master_reads_its_whole_list_every_pass(output_for) -> None:
    """Its /list is the whole table already: no cheaper read, so every pass compares it."""
    with DyupsServer(generation="wip") as dyups:
        output = output_for(dyups)
        output.publish(app())
        for _ in range(3):
            assert output.reconcile() == {}
        assert reads(dyups, "/list") == 3 and reads(dyups, "/detail") == 1  # the API probe of the first pass
        dyups.set_behind_back("app1", STALE)
        assert list(output.reconcile()) == ["app1"]
        assert dyups.upstreams()["app1"] == WANTED
