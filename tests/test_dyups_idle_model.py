"""A model of quick reconcile passes: whatever takes dyups state away, the passes put it back in time.

A Hypothesis state machine against the dyups test server (stable, one
worker, so every request meets the same table). Rules take state away by
every path the server models: a restart or a reload (whose files define
some managed names again, stale), a DELETE behind the daemon's back, a POST
behind its back under a managed name (quiet: /list and the connection stay
the same) or under a new name, and the desired state moving. After each
reconcile pass the invariant is checked:

* nothing quiet outstanding: every managed upstream serves its desired state
  after the pass;
* a quiet change is repaired at the latest by the ``FULL_EVERY``-th pass
  after it (the periodic full read), and also by any pass after a loud one.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from reloader.model import Server, Upstream
from reloader.outputs.dyups import DyupsOutput
from tests.dyups_server import DyupsServer

FULL_EVERY = 3
NAMES = ("app0", "app1", "app2")
STALE = ["server 10.9.9.9:80"]


def state(name: str, version: int) -> Upstream:
    return Upstream(name, (Server("10.0.0.1", 80 + version), Server("10.0.0.2", 80, weight=2)), live_count=2)


def lines(upstream: Upstream) -> tuple[str, ...]:
    return tuple(f"server {s.host}:{s.port}" + (f" weight={s.weight}" if s.weight != 1 else "")
                 for s in upstream.servers)


class QuickPasses(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dyups = DyupsServer(generation="stable", workers=1, propagation_delay=0.0,
                                 file_upstreams={"app0": STALE, "app1": STALE})
        self.dyups.start()
        self.output = DyupsOutput(self.dyups.url, reconcile_interval=0, reassert_interval=0, full_every=FULL_EVERY)
        self.version = {name: 0 for name in NAMES}
        for name in NAMES:
            self.output.publish(state(name, 0))
        # The first pass learns the API, the second takes the first quick digest: both read /detail.
        self.output.reconcile()
        self.output.reconcile()
        # Passes since the oldest quiet change not yet repaired (None: none outstanding).
        self.quiet_for: int | None = None
        self.loud = False
        self.checked = True

    def teardown(self) -> None:
        self.output.close()
        self.dyups.stop()

    def served(self) -> dict[str, tuple[str, ...] | None]:
        table = self.dyups.upstreams()
        return {name: table.get(name) for name in NAMES}

    def wanted(self) -> dict[str, tuple[str, ...]]:
        return {name: lines(self.output.desired[name]) for name in NAMES}

    # -- what takes state away ------------------------------------------------

    @rule(names=st.sets(st.sampled_from(NAMES)))
    def files_define(self, names: set[str]) -> None:
        """What nginx's files say from the next restart or reload on (all names: /list will not move)."""
        self.dyups.set_file_upstreams({name: STALE for name in sorted(names)})

    @rule(how=st.sampled_from(["restart", "reload"]))
    def wipe(self, how: str) -> None:
        getattr(self.dyups, f"simulate_{how}")()
        self.loud = True

    @rule(name=st.sampled_from(NAMES))
    def delete_behind_back(self, name: str) -> None:
        if self.dyups.delete_behind_back(name):
            self.loud = True

    @rule(name=st.sampled_from(NAMES))
    def post_behind_back(self, name: str) -> None:
        known = name in self.dyups.upstreams()
        self.dyups.set_behind_back(name, STALE)
        if known:
            self.quiet_for = self.quiet_for if self.quiet_for is not None else 0
        else:
            self.loud = True  # a name came back: /list moved

    @rule(suffix=st.integers(0, 3))
    def post_unmanaged(self, suffix: int) -> None:
        name = f"other{suffix}"
        if name not in self.dyups.upstreams():
            self.loud = True
        self.dyups.set_behind_back(name, ["server 10.8.8.8:80"])

    @rule(name=st.sampled_from(NAMES))
    def new_desired_state(self, name: str) -> None:
        self.version[name] += 1
        self.output.publish(state(name, self.version[name]))

    # -- the passes -------------------------------------------------------------

    @rule()
    def reconcile(self) -> None:
        self.output.reconcile()
        self.checked = False
        served, wanted = self.served(), self.wanted()
        if self.loud or self.quiet_for is None:
            assert served == wanted, f"after a pass that had to see it: {served} != {wanted}"
            self.quiet_for, self.loud = None, False
        else:
            self.quiet_for += 1
            if served == wanted:
                self.quiet_for = None
            else:
                assert self.quiet_for < FULL_EVERY, f"a quiet change outlived {FULL_EVERY} passes: {served}"
        self.checked = True

    @precondition(lambda self: self.quiet_for is None and not self.loud)
    @invariant()
    def idle_passes_do_not_read_detail(self) -> None:
        """Two passes in a row with nothing moved: at most one of them reads /detail."""
        if not self.checked:
            return
        before = sum(1 for r in self.dyups.requests_log if r.path == "/detail")
        self.output.reconcile()
        self.output.reconcile()
        assert sum(1 for r in self.dyups.requests_log if r.path == "/detail") - before <= 1
        assert self.served() == self.wanted()


QuickPasses.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_quick_passes_heal_every_loss_in_time = pytest.mark.timeout(120)(QuickPasses.TestCase)
