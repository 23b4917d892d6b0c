"""The watches as an invariant: after every quiet point, every upstream's published view equals ZooKeeper.

A seeded random schedule (printed; ``WATCHES_SEED=<n>`` replays one) runs
against a real ZooKeeper, with the cluster worker behind a switchable TCP
proxy: children created, deleted and changed, connection blips (with
changes made while the daemon is away), session expiries, a service znode
the daemon may not list for a while (an ACL), a service znode deleted and
re-created with new children in one transaction (what Curator's container
nodes go through), and config reloads moving upstreams between znodes and
turning ``child_data: ignore`` on and off (an upstream that ignores child
data serves every child at weight 1; two upstreams of one znode may differ).

The guards are turned off (``max_drop: 100%``, no settle window) and every
znode keeps at least one child, so the published state is exactly what the
watches saw: any difference after a quiet point is a watch that was lost,
a read that was skipped, or a view handed to the wrong upstream.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.sources.watches import ZnodeState
from tests.test_watch_states import OWNER, Harness, admin, harnesses, make_children, wait_until  # noqa: F401

pytestmark = pytest.mark.timeout(120)

ZNODES = 4
UPSTREAMS = ("u0", "u1", "u2", "u3")
STEPS = 30
QUIET = 15.0


class Schedule:
    """The registry side of the run: what ZooKeeper holds, changed at random, and the checks."""

    def __init__(self, seed: int, zk: LocalZooKeeper, admin: KazooClient, root: str, harness: Any) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.zk = zk
        self.admin = admin
        self.paths = [f"{root}/s{i}" for i in range(ZNODES)]
        self.harness = harness
        self.mapping = {name: self.paths[i] for i, name in enumerate(UPSTREAMS)}
        self.ignoring = {name for name in UPSTREAMS if self.rng.random() < 0.5}
        self.serial = 100
        self.done: list[str] = []

    def nodes(self) -> dict[str, Any]:
        return {name: {"path": path, "child_data": "ignore"} if name in self.ignoring else path
                for name, path in self.mapping.items()}

    def _new_child(self, path: str) -> str:
        self.serial += 1
        index = self.paths.index(path)
        return f"10.{index}.{self.serial // 250}.{self.serial % 250}:80"

    def _children(self, path: str) -> list[str]:
        return sorted(self.admin.get_children(path))

    # ---- registry changes ---------------------------------------------------------------

    def create(self) -> None:
        path = self.rng.choice(self.paths)
        self.admin.create(f"{path}/{self._new_child(path)}", str(self.rng.randint(1, 9)).encode())

    def delete(self) -> None:
        path = self.rng.choice(self.paths)
        children = self._children(path)
        if len(children) > 1:
            self.admin.delete(f"{path}/{self.rng.choice(children)}")
        else:
            self.create()

    def change(self) -> None:
        path = self.rng.choice(self.paths)
        child = self.rng.choice(self._children(path))
        self.admin.set(f"{path}/{child}", str(self.rng.randint(1, 9)).encode())

    def recreate(self) -> None:
        """Delete a service znode and create it again with other children, in one transaction."""
        path = self.rng.choice(self.paths)
        transaction = self.admin.transaction()
        for child in self._children(path):
            transaction.delete(f"{path}/{child}")
        transaction.delete(path)
        transaction.create(path, b"")
        kept = self.rng.random() < 0.5
        for _ in range(self.rng.randint(1, 3)):
            transaction.create(f"{path}/{self._new_child(path)}", str(self.rng.randint(1, 9)).encode())
        if kept:
            transaction.create(f"{path}/{self._new_child(path)}", b"")
        results = transaction.commit()
        assert not any(isinstance(result, Exception) for result in results), results

    def registry_change(self) -> None:
        self.rng.choice([self.create, self.create, self.delete, self.change, self.change, self.recreate])()

    # ---- faults and reloads -----------------------------------------------------------

    def blip(self) -> None:
        """Cut the connection; change the registry meanwhile, and at times reload (the resync must take it)."""
        changes = self.rng.randint(0, 3)
        reload = self.rng.random() < 0.3

        def while_away() -> None:
            for _ in range(changes):
                self.registry_change()
            if reload:
                self.reload()

        self.harness.blip(while_away)

    def expire(self) -> None:
        """Expire the worker's session: another client takes it over and closes it."""
        client = self.harness.clients[-1]
        session_id, password = client.client_id
        thief = KazooClient(hosts=self.zk.hosts, client_id=(session_id, password))
        thief.start(timeout=10)
        thief.stop()
        thief.close()
        wait_until(lambda: client.client_id is not None and client.client_id[0] != session_id, 15,
                   "the worker to get a new session")
        for _ in range(self.rng.randint(0, 2)):
            self.registry_change()

    def refuse_listing(self) -> None:
        """While the daemon is away a znode gets an ACL it cannot read: the resync's list of it fails.

        (The ACL is set while the daemon is away because ZooKeeper 3.8 sends
        no watch event for a znode the watcher may not read: the event is
        dropped, and its watch with it.) It is lifted again once the daemon
        has seen the refusal, with a change made meanwhile; the retry after
        the back-off must recover the znode, its children's data watches
        included.
        """
        path = self.rng.choice(self.paths)
        watch = self.harness.worker.source.watches.get(path)
        # The session expires too: a session that survives keeps its watches
        # (SetWatches), and an ACL change alone fires none, so nothing would
        # list the znode again.
        session = self.harness.clients[-1].client_id

        def away() -> None:
            self.admin.set_acls(path, [make_digest_acl(*OWNER.split(":"), all=True)])
            self.harness.expire(self.zk, session)

        self.harness.blip(away)
        if watch is not None:
            wait_until(lambda: watch.state is ZnodeState.FAILED, 15, f"the list of {path} to be refused")
        self.registry_change()
        self.admin.set_acls(path, OPEN_ACL_UNSAFE)

    def reload(self) -> None:
        """Move upstreams between znodes (two names on one znode at times)."""
        for name in self.rng.sample(UPSTREAMS, self.rng.randint(1, 2)):
            self.mapping[name] = self.rng.choice(self.paths)
            if self.rng.random() < 0.3:
                self.ignoring ^= {name}
        self.harness.reconfigure(self.nodes())

    def step(self) -> None:
        action = self.rng.choices(
            [self.registry_change, self.blip, self.expire, self.refuse_listing, self.reload],
            weights=[6, 2, 1, 1, 2],
        )[0]
        self.done.append(action.__name__)
        action()

    # ---- the invariant -------------------------------------------------------------------

    def expected(self, name: str) -> dict[str, int]:
        path = self.mapping[name]
        want = {}
        for child in self._children(path):
            try:
                data, _ = self.admin.get(f"{path}/{child}")
            except NoNodeError:
                continue
            want[child] = int(data) if data.strip() and name not in self.ignoring else 1
        return want

    def published(self, name: str) -> dict[str, int] | None:
        upstream = self.harness.worker.pipeline.last_published(name)
        return None if upstream is None else {s.address: s.weight for s in upstream.servers}

    def quiet(self) -> bool:
        """The worker is thawed, connected, and has nothing left to read (plain reads of its state)."""
        worker = self.harness.worker
        return (worker.freeze.is_open and worker.source.state == "CONNECTED"
                and all(watch.state in (ZnodeState.SYNCED, ZnodeState.ABSENT) and not watch.needs
                        for watch in worker.source.watches))

    def states(self) -> dict[str, str]:
        return {watch.path.rsplit("/", 1)[-1]: f"{watch.state.name} needs={len(watch.needs)} owed={sorted(watch.owed)}"
                for watch in self.harness.worker.source.watches}

    def check_quiet(self) -> None:
        def converged() -> bool:
            return self.quiet() and all(self.published(name) == self.expected(name) for name in UPSTREAMS)

        try:
            wait_until(converged, QUIET, "the published views to equal ZooKeeper")
        except AssertionError:
            differences = {name: (self.published(name), self.expected(name)) for name in UPSTREAMS
                           if self.published(name) != self.expected(name)}
            raise AssertionError(
                f"seed {self.seed}: after steps {self.done}: published != ZooKeeper for {differences}; "
                f"watches: {self.states()}"
            ) from None


def test_after_every_quiet_point_each_upstream_publishes_what_zookeeper_holds(
    zk: LocalZooKeeper, admin: KazooClient, zk_root: str,  # noqa: F811
    harnesses: Callable[..., Harness],  # noqa: F811
) -> None:
    seed = int(os.environ.get("WATCHES_SEED") or random.SystemRandom().randrange(2**32))
    print(f"watches model: seed {seed} (replay with WATCHES_SEED={seed})")
    rng = random.Random(seed)
    paths = [f"{zk_root}/s{i}" for i in range(ZNODES)]
    for index, path in enumerate(paths):
        make_children(admin, path, {f"10.{index}.0.{k}:80": str(rng.randint(1, 9)).encode()
                                    for k in range(1, rng.randint(2, 4))})
    schedule = Schedule(seed, zk, admin, zk_root, None)
    schedule.harness = harnesses(zk, schedule.nodes(), session_timeout=4.0).start()
    print(f"watches model: child_data ignored by {sorted(schedule.ignoring)}")
    schedule.check_quiet()
    started = time.monotonic()
    for _ in range(STEPS):
        schedule.step()
        schedule.check_quiet()
    print(f"watches model: seed {seed}: {STEPS} steps in {time.monotonic() - started:.1f} s: {schedule.done}")
