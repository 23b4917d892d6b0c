"""What may be published, and when: the freeze and the guards, in one place.

Everything that can keep a registry change from reaching nginx lives here,
so the rules can be read (and tested) together:

* **The freeze** (:class:`ClusterFreeze`). While a cluster's session is
  suspended or lost, or until a full re-read after a reconnect has finished,
  nothing of that cluster is published: its upstreams keep their last
  published state. The source closes the freeze from kazoo's thread the
  moment the session is in doubt and opens it only after a complete resync
  that no newer session transition has overtaken.
* **Zero instances.** A registry that offers no valid live instance is far
  more often an outage than an intent, and nginx refuses an empty upstream:
  the last published state stays.
* **Settle after a thaw.** For ``settle_after_reconnect`` seconds after a
  cluster thaws, additions are published at once but removals wait until the
  window ends, or until the set is back at its pre-outage size. Instances
  whose sessions expired during the outage re-register over seconds; until
  they have had the chance, nginx keeps every pre-outage server.
* **Shrink guard.** An update that would remove more than ``max_drop`` of an
  upstream's published live servers at once is held back: the removed servers
  stay published until the smaller set has held for ``drop_hold`` seconds.
  ``max_drop`` of 1.0 or a ``drop_hold`` of 0 turns it off.

A server kept a little too long costs nginx a failed connect and a retry on
the next server; a server left alone with all the traffic costs an outage.
The guards work on the *live* servers (those from the registry), never on
configured static backup servers.

Threading: a :class:`ClusterFreeze` is safe from any thread. An
:class:`UpstreamGuard` belongs to the thread of its cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from reloader.config import GuardSettings
from reloader.model import Server, Upstream

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]


class ClusterFreeze:
    """Whether a cluster's upstreams may be published: frozen until a full read of a good session.

    ``epoch`` counts session transitions, so that a resync can tell the
    session changed under it. ``thaws`` counts the times the cluster came
    back after having been served before (the first full read at start-up
    is not a thaw); ``thawed_at`` is when the last one happened.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._epoch = 0
        self._ever_open = False
        self._frozen_since: float | None = clock()
        self.thaws = 0
        self.thawed_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    @property
    def frozen_since(self) -> float | None:
        """When the cluster was frozen (monotonic), or None while it is open."""
        with self._lock:
            return self._frozen_since

    @property
    def ever_open(self) -> bool:
        """True once the cluster has been read in full at least once."""
        with self._lock:
            return self._ever_open

    def close(self) -> None:
        """Freeze now (any thread): the session is in doubt."""
        with self._lock:
            self._epoch += 1
            if self._open.is_set():
                self._frozen_since = self._clock()
            self._open.clear()

    def note_transition(self) -> None:
        """Record a session transition that does not itself freeze (CONNECTED)."""
        with self._lock:
            self._epoch += 1

    def open_if(self, epoch: int) -> bool:
        """Thaw if no transition happened since ``epoch``; True if it thawed now."""
        with self._lock:
            if epoch != self._epoch:
                return False
            if self._open.is_set():
                return True
            if self._ever_open:
                self.thaws += 1
                self.thawed_at = self._clock()
            self._ever_open = True
            self._frozen_since = None
            self._open.set()
            return True


@dataclass(frozen=True)
class Decision:
    """What the guards allow for one upstream now.

    ``live`` is the set of live servers to publish (None: publish nothing);
    ``recheck_at`` is when the decision may change without a registry change
    (a settle window or a drop hold ending), on the guard's clock.
    """

    live: tuple[Server, ...] | None
    recheck_at: float | None = None


class UpstreamGuard:
    """The publication rules for one upstream; remembers what was last published."""

    def __init__(
        self,
        name: str,
        settings: GuardSettings,
        freeze: ClusterFreeze | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self._freeze = freeze
        self._clock = clock
        #: The upstream last handed to the outputs (or adopted from its file at start-up).
        self.last_published: Upstream | None = None
        self._published_live: dict[Endpoint, Server] = {}
        self._seen_thaws = freeze.thaws if freeze is not None else 0
        self._settle_until: float | None = None
        self._settle_baseline: dict[Endpoint, Server] = {}
        self._hold_since: float | None = None
        self._held_count = 0
        self._empty_warned = False

    # ---- state ---------------------------------------------------------------------

    @property
    def holding(self) -> int:
        """How many servers the guards keep published beyond the registry's set right now."""
        return self._held_count

    @property
    def settling(self) -> bool:
        """True while a settle window after a thaw keeps pre-outage servers."""
        return self._settle_until is not None

    @property
    def holding_drop(self) -> bool:
        """True while the shrink guard holds a drop back."""
        return self._hold_since is not None

    def adopt(self, upstream: Upstream, static_endpoints: Iterable[Endpoint] = ()) -> None:
        """Take ``upstream`` (read back from its file) as what is published."""
        static = set(static_endpoints)
        self.last_published = upstream
        self._published_live = {
            server.endpoint: server for server in upstream.servers if server.endpoint not in static
        }

    def published(self, upstream: Upstream, live: Iterable[Server]) -> None:
        """Record that ``upstream``, made of ``live`` plus static servers, went to the outputs."""
        self.last_published = upstream
        self._published_live = {server.endpoint: server for server in live}

    # ---- the rules -----------------------------------------------------------------

    def decide(self, desired: Iterable[Server], origin: str, static_servers: bool = False) -> Decision:
        """Which live servers may be published, given the registry's ``desired`` live servers.

        ``static_servers`` says the upstream has configured backup servers: with
        nothing published yet, they alone make a valid first state.
        """
        if self._freeze is not None and not self._freeze.is_open:
            return Decision(None)
        now = self._clock()
        self._notice_thaw()
        wanted = {server.endpoint: server for server in desired}
        if not wanted and static_servers and self.last_published is None:
            return Decision(())
        if not wanted:
            if not self._empty_warned:
                kept = (
                    f"keeping the last good state ({len(self.last_published.servers)} servers)"
                    if self.last_published else "nothing to publish yet"
                )
                log.warning("upstream %s: znode %s has no valid instances; %s", self.name, origin, kept,
                            extra={"upstream": self.name})
                self._empty_warned = True
            return Decision(None)
        self._empty_warned = False
        target = dict(wanted)
        recheck: list[float] = []
        self._apply_settle(target, now, recheck)
        self._apply_shrink_guard(target, now, recheck)
        self._held_count = len(target) - len(wanted)
        return Decision(tuple(sorted(target.values())), min(recheck) if recheck else None)

    def _notice_thaw(self) -> None:
        freeze = self._freeze
        if freeze is None or freeze.thaws == self._seen_thaws:
            return
        self._seen_thaws = freeze.thaws
        window = self.settings.settle_after_reconnect
        if window > 0 and self._published_live and freeze.thawed_at is not None:
            self._settle_until = freeze.thawed_at + window
            self._settle_baseline = dict(self._published_live)

    def _apply_settle(self, target: dict[Endpoint, Server], now: float, recheck: list[float]) -> None:
        if self._settle_until is None:
            return
        if now >= self._settle_until or len(target) >= len(self._settle_baseline):
            why = "the window ended" if now >= self._settle_until else "the set is back at its pre-outage size"
            kept = [endpoint for endpoint in self._settle_baseline if endpoint not in target]
            if kept:
                log.info("upstream %s: settle over (%s); %d pre-outage servers may now go",
                         self.name, why, len(kept), extra={"upstream": self.name})
            self._settle_until = None
            self._settle_baseline = {}
            return
        for endpoint, server in self._settle_baseline.items():
            target.setdefault(endpoint, server)
        recheck.append(self._settle_until)

    def _apply_shrink_guard(self, target: dict[Endpoint, Server], now: float, recheck: list[float]) -> None:
        settings, published = self.settings, self._published_live
        if not published or settings.max_drop >= 1.0 or settings.drop_hold <= 0:
            self._hold_since = None
            return
        removed = [endpoint for endpoint in published if endpoint not in target]
        if len(removed) <= settings.max_drop * len(published):
            if self._hold_since is not None:
                log.info("upstream %s: drop no longer held (now %d of %d servers removed)",
                         self.name, len(removed), len(published), extra={"upstream": self.name})
            self._hold_since = None
            return
        if self._hold_since is None:
            self._hold_since = now
            log.warning(
                "upstream %s: holding a drop of %d of %d servers (more than max_drop %g%%); "
                "they stay published for %g s unless they come back",
                self.name, len(removed), len(published), settings.max_drop * 100, settings.drop_hold,
                extra={"upstream": self.name},
            )
        release_at = self._hold_since + settings.drop_hold
        if now >= release_at:
            log.warning("upstream %s: releasing the held drop of %d of %d servers after %g s",
                        self.name, len(removed), len(published), settings.drop_hold,
                        extra={"upstream": self.name})
            self._hold_since = None
            return
        for endpoint in removed:
            target[endpoint] = published[endpoint]
        recheck.append(release_at)
