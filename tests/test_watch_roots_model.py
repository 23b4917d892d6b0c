"""The watches invariant of tests/test_watches_model.py, with the znodes under a shared root.

The same seeded random schedule (children created, deleted and changed,
blips with changes made meanwhile, session expiries, a znode the daemon may
not list for a while, a znode deleted and re-created in one transaction,
reloads moving upstreams between znodes), plus what a shared root adds:
churn under an unconfigured sibling, and reloads that add or drop the root
(its znodes move between the root's watch and watches of their own). After
every quiet point every upstream's published view equals ZooKeeper.
``WATCHES_SEED=<n>`` replays a schedule.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from reloader.localenv.zookeeper import LocalZooKeeper
from tests.test_watch_states import Harness, admin, make_children  # noqa: F401
from tests.test_watches_model import STEPS, UPSTREAMS, ZNODES, Schedule

pytestmark = pytest.mark.timeout(150)


class RootSchedule(Schedule):
    def __init__(self, *args: Any, root: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.root = root
        self.shared = True
        self.sibling = 0

    def sibling_churn(self) -> None:
        """Changes under the root that concern no configured znode: the daemon must ignore them."""
        self.sibling += 1
        path = f"{self.root}/unconfigured/n{self.sibling}"
        self.admin.create(path, b"", makepath=True)
        self.admin.set(f"{self.root}/unconfigured", str(self.sibling).encode())
        if self.sibling % 2:
            self.admin.delete(path)

    def registry_change(self) -> None:
        self.rng.choice([self.create, self.create, self.delete, self.change, self.change, self.recreate,
                         self.sibling_churn])()

    def reload(self) -> None:
        """Move upstreams between znodes, and at times add or drop the root."""
        for name in self.rng.sample(UPSTREAMS, self.rng.randint(1, 2)):
            self.mapping[name] = self.rng.choice(self.paths)
        if self.rng.random() < 0.3:
            self.shared = not self.shared
        self.harness.reconfigure(self.nodes(), **({"watch_roots": [self.root]} if self.shared else {}))


@pytest.fixture
def harness_list() -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.close()


def test_after_every_quiet_point_each_upstream_publishes_what_zookeeper_holds_under_a_shared_root(
    zk: LocalZooKeeper, admin: KazooClient, zk_root: str, harness_list: list[Harness],  # noqa: F811
) -> None:
    seed = int(os.environ.get("WATCHES_SEED") or random.SystemRandom().randrange(2**32))
    print(f"watch roots model: seed {seed} (replay with WATCHES_SEED={seed})")
    rng = random.Random(seed)
    paths = [f"{zk_root}/s{i}" for i in range(ZNODES)]
    for index, path in enumerate(paths):
        make_children(admin, path, {f"10.{index}.0.{k}:80": str(rng.randint(1, 9)).encode()
                                    for k in range(1, rng.randint(2, 4))})
    schedule = RootSchedule(seed, zk, admin, zk_root, None, root=zk_root)
    harness = Harness(zk, schedule.nodes(), session_timeout=4.0, watch_mode="persistent", watch_roots=[zk_root])
    harness_list.append(harness)
    schedule.harness = harness.start()
    schedule.check_quiet()
    assert harness.clients[-1].persistent_watches() == {zk_root: 1}
    started = time.monotonic()
    for _ in range(STEPS):
        schedule.step()
        schedule.check_quiet()
    print(f"watch roots model: seed {seed}: {STEPS} steps in {time.monotonic() - started:.1f} s: {schedule.done}")
