"""Model-based test of the publication rules: the guards' promises as invariants.

A Hypothesis state machine drives one :class:`UpstreamGuard` (a fake clock, a
real :class:`ClusterFreeze`) through random sequences of registry sets,
weights, ``down`` flags, freezes, thaws and clock steps, the way the pipeline
does: every registry change and every thaw is decided at once, and a decision
that names a ``recheck_at`` is decided again at that moment. Beside it runs a
small reference model of the promises, written from their wording rather than
from the guard's code (the served history is kept in full, the reference is a
brute-force maximum), and every decision is checked against it:

* nothing is published while the cluster is frozen;
* zero usable servers is never published;
* no publish leaves fewer usable servers than ``(1 - max_drop)`` x the most
  usable servers served within the last ``drop_hold``, unless the registry
  has been below that floor for ``drop_hold`` (the drop was held and is now
  released; what was served before a release is no longer the reference);
* a change that keeps the number of usable servers (a replacement) is
  published at once, exactly as the registry has it;
* a server published other than as the registry has it is one that was
  published just before, unchanged (held servers stay as they were);
* during a settle window no pre-outage usable server leaves, unless the
  registry is back at its pre-outage number of usable servers;
* once the input is quiet for longer than every window, the published set
  equals the registry's (when the registry has any usable server);
* all of the above across a restart (a new guard adopting the file and the
  guard record): the reference is what was served before it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from reloader.assemble import finalize_upstream
from reloader.config import GuardSettings
from reloader.model import Server
from reloader.publication import ClusterFreeze, Decision, UpstreamGuard

POOL = 8  # endpoints 10.0.0.1..8: small, so that sets overlap, come back and replace each other


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def usable(servers: object) -> int:
    return sum(1 for server in servers if not server.down and not server.backup and server.weight > 0)  # type: ignore[attr-defined]


# One registry entry: which endpoint, its registry weight (0 arrives as down, as every format
# makes it), and whether it is marked down.
entries = st.tuples(st.integers(1, POOL), st.sampled_from([0, 1, 1, 1, 3]), st.sampled_from([False, False, False, True]))


def registry_set(raw: list[tuple[int, int, bool]]) -> tuple[Server, ...]:
    by_endpoint: dict[int, Server] = {}
    for octet, weight, down in raw:
        by_endpoint[octet] = Server(f"10.0.0.{octet}", 80, weight=max(weight, 1), down=down or weight == 0)
    return tuple(sorted(by_endpoint.values()))


class PublicationMachine(RuleBasedStateMachine):
    """The guard under test, the pipeline's way of calling it, and the reference model."""

    @initialize(
        max_drop=st.sampled_from([0.25, 0.5, 0.5, 0.75, 1.0]),
        drop_hold=st.sampled_from([0.0, 5.0, 10.0, 10.0]),
        settle=st.sampled_from([0.0, 4.0, 8.0]),
        first=st.lists(entries, min_size=1, max_size=POOL),
        adopted=st.none() | st.lists(entries, min_size=1, max_size=POOL),
    )
    def start(
        self, max_drop: float, drop_hold: float, settle: float, first: list[tuple[int, int, bool]],
        adopted: list[tuple[int, int, bool]] | None,
    ) -> None:
        self.settings = GuardSettings(settle_after_reconnect=settle, max_drop=max_drop, drop_hold=drop_hold)
        self.clock = Clock()
        self.freeze = ClusterFreeze(self.clock)
        self.guard = UpstreamGuard("app", self.settings, self.freeze, self.clock, wall=self.clock)
        self.registry: tuple[Server, ...] = registry_set(first)
        self.rechecks: list[float] = []
        # The model.
        self.published: dict[tuple[str, int], Server] | None = None
        self.served: list[list[float | None]] = []  # [start, end or None, usable count], since the last release
        self.low_since: float | None = None
        self.seen_thaws = 0
        self.settle_until: float | None = None
        self.baseline: dict[tuple[str, int], Server] = {}
        if adopted is not None:
            # A restart: the file on disk is taken as published before the first full read.
            servers = registry_set(adopted)
            self.guard.adopt(finalize_upstream("app", servers))
            self.published = {server.endpoint: server for server in servers}
            self.served = [[self.clock.now, None, usable(servers)]]
        assert self.freeze.open_if(self.freeze.epoch)
        self.decide()

    # ---- the model -------------------------------------------------------------------------------

    @property
    def shrink_guard_on(self) -> bool:
        return self.settings.max_drop < 1.0 and self.settings.drop_hold > 0

    def reference(self, now: float) -> int:
        """The most usable servers served at any moment within the last drop_hold (since the last release)."""
        window_start = now - self.settings.drop_hold
        return max((int(count) for _start, end, count in self.served  # type: ignore[arg-type]
                    if end is None or end >= window_start), default=0)

    def below_floor(self, count: int, reference: int) -> bool:
        return reference - count > self.settings.max_drop * reference

    # ---- driving the guard as the pipeline does --------------------------------------------------

    def decide(self) -> Decision:
        now = self.clock.now
        decision = self.guard.decide(self.registry, "/svc/app")
        if not self.freeze.is_open:
            assert decision.live is None, "published while frozen"
            return decision
        if decision.recheck_at is not None:
            assert decision.recheck_at > now
            self.rechecks.append(decision.recheck_at)
        wanted = usable(self.registry)
        self.notice_thaw()
        if self.settle_until is not None and (now >= self.settle_until or wanted >= len(self.baseline)):
            self.settle_until, self.baseline = None, {}
        reference = self.reference(now)
        if self.published is not None and self.shrink_guard_on and self.below_floor(wanted, reference):
            self.low_since = now if self.low_since is None else self.low_since
        else:
            self.low_since = None
        if decision.live is None:
            assert wanted == 0, f"{wanted} usable servers in the registry, nothing published"
            return decision
        live = decision.live
        assert list(live) == sorted(live), "a decision's servers are not in the servers' own order"
        assert len({server.endpoint for server in live}) == len(live), f"an endpoint twice: {live}"
        count = usable(live)
        assert count > 0, f"zero usable servers published: {live}"
        registry = set(self.registry)
        last = set(self.published.values()) if self.published is not None else set()
        for server in live:
            assert server in registry or server in last, f"{server} is neither the registry's nor as published"
        assert self.guard.holding == sum(1 for server in live if server not in registry), "held count misreported"
        if self.published is not None and self.shrink_guard_on and self.below_floor(count, reference):
            held_for = None if self.low_since is None else now - self.low_since
            assert held_for is not None and held_for >= self.settings.drop_hold, (
                f"{count} usable published against {reference} served within {self.settings.drop_hold} s "
                f"(max_drop {self.settings.max_drop}); below the floor for {held_for} s"
            )
            self.served, self.low_since = [], None  # released: the reference starts again here
        current = usable(self.published.values()) if self.published is not None else 0
        if wanted >= current:
            assert set(live) == registry, f"a change keeping {wanted} >= {current} usable servers was held: {live}"
        if self.settle_until is not None:
            published_now = {server.endpoint: server for server in live}
            for endpoint in self.baseline:
                server = published_now.get(endpoint)
                assert server is not None and server.usable, f"pre-outage {endpoint} left during the settle window"
        self.guard.published(finalize_upstream("app", live), live)
        self.published = {server.endpoint: server for server in live}
        if self.served:
            self.served[-1][1] = now
        self.served.append([now, None, count])
        return decision

    def notice_thaw(self) -> None:
        if self.freeze.thaws == self.seen_thaws:
            return
        self.seen_thaws = self.freeze.thaws
        if self.settings.settle_after_reconnect > 0 and self.published and self.freeze.thawed_at is not None:
            self.settle_until = self.freeze.thawed_at + self.settings.settle_after_reconnect
            self.baseline = {endpoint: server for endpoint, server in self.published.items() if server.usable}

    def advance(self, seconds: float) -> None:
        """Move the clock, deciding again at every re-check that falls due on the way (as the pipeline does)."""
        end = self.clock.now + seconds
        while True:
            due = [at for at in self.rechecks if at <= end]
            if not due:
                break
            at = min(due)
            self.rechecks.remove(at)
            self.clock.now = max(self.clock.now, at)
            self.decide()
        self.clock.now = end

    # ---- rules -----------------------------------------------------------------------------------

    @rule(raw=st.lists(entries, max_size=POOL))
    def registry_changes(self, raw: list[tuple[int, int, bool]]) -> None:
        self.registry = registry_set(raw)
        self.decide()

    @rule(data=st.data())
    def some_instances_leave(self, data: st.DataObject) -> None:
        """Registrations expire in a batch (what a mass failure looks like: steps of a few)."""
        if not self.registry:
            return
        keep = data.draw(st.integers(0, len(self.registry) - 1))
        self.registry = self.registry[:keep]
        self.decide()

    @rule(octet=st.integers(1, POOL))
    def one_instance_is_replaced(self, octet: int) -> None:
        """The first registered instance goes, a new one comes, in one batch."""
        if not self.registry:
            return
        fresh = Server(f"10.0.0.{octet}", 80)
        rest = [server for server in self.registry[1:] if server.endpoint != fresh.endpoint]
        self.registry = tuple(sorted([*rest, fresh]))
        self.decide()

    @rule()
    def session_lost(self) -> None:
        self.freeze.close()
        self.decide()

    @rule()
    def session_back(self) -> None:
        self.freeze.open_if(self.freeze.epoch)
        self.decide()  # the resync hands every upstream its children

    @precondition(lambda self: self.guard.last_published is not None)
    @rule(downtime=st.sampled_from([0.0, 0.5, 2.0, 6.0]))
    def restart(self, downtime: float) -> None:
        """kill -9 and a restart: a new guard adopts the file and the guard record, then reads in full.

        The reference must survive it (the model keeps its served history);
        the settle window and the hold's timer do not (a new process: the
        first full read is not a thaw, and a hold starts again).
        """
        last = self.guard.last_published
        assert last is not None
        self.clock.now += downtime
        self.freeze = ClusterFreeze(self.clock)
        self.guard = UpstreamGuard("app", self.settings, self.freeze, self.clock, wall=self.clock)
        self.guard.adopt(last)  # the file's servers, with what the record says is owed
        self.rechecks = []
        self.seen_thaws, self.settle_until, self.baseline = 0, None, {}
        assert self.freeze.open_if(self.freeze.epoch)
        self.decide()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 4.0, 5.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.advance(seconds)

    @precondition(lambda self: self.freeze.is_open)
    @rule()
    def quiet(self) -> None:
        """No change for longer than every window: the published set is the registry's."""
        self.advance(self.settings.settle_after_reconnect + self.settings.drop_hold + 1)
        self.decide()
        if usable(self.registry):
            assert self.published is not None and set(self.published.values()) == set(self.registry), (
                f"quiet for longer than every window, published {sorted(self.published.values())} "
                f"against the registry's {sorted(self.registry)}"
            )
            assert not self.guard.holding_drop and not self.guard.settling


PublicationMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_publication_rules = PublicationMachine.TestCase


def test_the_machine_replays_a_walk_down_across_a_restart() -> None:
    """A path the machine must hold against (4 -> 2, restart, -> 1), replayed by hand: it fails if the
    restarted guard forgets the 4 served before the restart."""
    machine = PublicationMachine()
    machine.start(max_drop=0.5, drop_hold=10.0, settle=0.0, adopted=None,
                  first=[(1, 1, False), (2, 1, False), (3, 1, False), (4, 1, False)])
    machine.registry_changes([(1, 1, False), (2, 1, False)])
    machine.restart(0.5)
    machine.registry_changes([(1, 1, False)])
    machine.quiet()
