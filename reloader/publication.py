"""What may be published, and when: the freeze and the guards, in one place.

Everything that can keep a registry change from reaching nginx lives here,
so the rules can be read (and tested) together:

* **The freeze** (:class:`ClusterFreeze`). While a cluster's session is
  suspended or lost, or until a full re-read after a reconnect has finished,
  nothing of that cluster is published: its upstreams keep their last
  published state. The source closes the freeze from kazoo's thread the
  moment the session is in doubt and opens it only after a complete resync
  that no newer session transition has overtaken.

The guards protect *capacity*: they count **usable** servers
(:attr:`reloader.model.Server.usable`: a live registry server nginx would
send primary traffic to, so not ``down``, weight above 0, not ``backup``),
never endpoints, and never configured static backup servers. Ten instances
re-registered with weight 0 are ten endpoints and zero capacity; one
instance replaced by another is a change of endpoint and no loss at all.

* **Zero usable instances.** A registry that offers no usable live instance
  (none at all, or every one ``down`` / weight 0) is far more often an outage
  than an intent, and nginx answers 502 for an upstream with nothing usable:
  the last published state stays, with one warning.
* **Settle after a thaw.** For ``settle_after_reconnect`` seconds after a
  cluster thaws, additions are published at once but no pre-outage usable
  server leaves (or turns unusable) until the window ends, or until the
  registry is back at the pre-outage number of usable servers. Instances
  whose sessions expired during the outage re-register over seconds; until
  they have had the chance, nginx keeps every pre-outage server.
* **Shrink guard.** The *reference* is the largest number of usable servers
  served at any moment within the last ``drop_hold`` seconds (the state
  being served now included). A decision that would leave fewer than
  ``(1 - max_drop)`` x reference usable servers is a drop, and is held: the
  published usable servers that left (or turned unusable) stay published
  exactly as they were, as many as it takes to bring the upstream back to the
  reference, never more. Because the reference is what was served recently,
  not the last publish, a drop cannot be walked around in small steps
  (10 -> 8 -> 6 -> 4 -> 2 two seconds apart: 8 and 6 go out, the step to 4
  is held and 6 stay published); because it
  counts usable servers, a replacement (the same number of usable servers on
  other endpoints, even all of them) is no drop and goes out at once. A held
  drop goes out when it has been held for ``drop_hold`` seconds; the
  reference then starts again from the released set, so the same drop is not
  held twice. Servers coming back end the hold at once. ``max_drop`` of 1.0
  or a ``drop_hold`` of 0 turns the shrink guard off.
* **The reference outlives the process.** Each published upstream carries
  what of its reference is still owed (:meth:`UpstreamGuard.owed`: usable
  counts larger than the state published, each with the wall-clock time it
  stops counting), and the files output records that beside the files
  before it writes them (``reloader.outputs.guard_record``). At start-up the
  guard adopts its file *and* that record, so a daemon restarted (or
  crash-looping) in the middle of a drop holds against what was served
  before the restart, not against the smaller state it finds in the file.
  A hold itself starts again at a restart: it is kept longer, never shorter.

A server kept a little too long costs nginx a failed connect and a retry on
the next server; a server left alone with all the traffic costs an outage.

Threading: a :class:`ClusterFreeze` is safe from any thread. An
:class:`UpstreamGuard` belongs to the thread of its cluster.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from reloader.config import GuardSettings
from reloader.model import SERVER_ORDER, Server, Upstream

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


def usable_count(servers: Iterable[Server]) -> int:
    """How many of ``servers`` carry primary traffic (:attr:`Server.usable`): what the guards count."""
    return len([server for server in servers if server.usable])  # a list: cheaper than a generator's steps


class ServedHistory:
    """The most usable servers served at any moment within a window: the shrink guard's reference.

    Each publish replaces the state being served; a replaced state counts until
    ``window`` seconds after it was replaced, the current one for as long as it
    is served. Times never go back (the guard's monotonic clock). Kept as a
    monotonic queue (counts strictly falling, end times rising), so the memory is bounded by the upstream's size whatever the
    number of publishes, and each publish costs amortised O(1).
    """

    def __init__(self, current: int = 0) -> None:
        self._current = current
        # (when the state was replaced, its usable count), oldest first.
        self._ended: deque[tuple[float, int]] = deque()

    @property
    def current(self) -> int:
        return self._current

    def record(self, now: float, count: int) -> None:
        """A state of ``count`` usable servers replaces the one being served."""
        if count < self._current:
            self._push(now, self._current)
        else:
            # The new state outlasts, and is no smaller than, everything still queued that it covers.
            while self._ended and self._ended[-1][1] <= count:
                self._ended.pop()
        self._current = count

    def reset(self, count: int) -> None:
        """Forget what was served before: ``count`` usable servers are the reference from now on."""
        self._ended.clear()
        self._current = count

    def replaced(self, now: float, window: float) -> list[tuple[float, int]]:
        """The replaced states that still count at ``now``: (when each was replaced, its usable count).

        Only counts above the current state's are kept (see :meth:`record`):
        they are exactly what the reference owes to the past.
        """
        self.reference(now, window)
        return list(self._ended)

    def restore(self, ended_at: float, count: int) -> None:
        """Add a state of ``count`` usable servers that was replaced at ``ended_at`` (before anything recorded)."""
        if count <= self._current:
            return
        entries = sorted([*self._ended, (ended_at, count)])
        self._ended.clear()
        for at, value in entries:
            if value > self._current:
                self._push(at, value)

    def extend(self, since: float, until: float) -> None:
        """The states replaced at ``since`` or later were still served until ``until`` (an output lagged)."""
        if not self._ended or self._ended[-1][0] < since:
            return
        kept = [(at, count) for at, count in self._ended if at < since]
        lagged = [count for at, count in self._ended if at >= since]
        self._ended.clear()
        self._ended.extend(kept)
        # The largest of them dominates the others from now on (the queue keeps counts falling).
        self._push(until, max(lagged))

    def reference(self, now: float, window: float) -> int:
        """The most usable servers served at any moment in ``[now - window, now]``."""
        while self._ended and self._ended[0][0] < now - window:
            self._ended.popleft()
        return max(self._current, self._ended[0][1]) if self._ended else self._current

    def __len__(self) -> int:
        return len(self._ended) + 1

    def _push(self, ended_at: float, count: int) -> None:
        while self._ended and self._ended[-1][1] <= count:
            self._ended.pop()
        self._ended.append((ended_at, count))


def _keep(target: dict[Endpoint, Server], kept: Iterable[Server], limit: int | None = None) -> int:
    """Put back the usable ``kept`` servers that ``target`` lacks or has unusable, at most ``limit``; how many."""
    count = 0
    for server in sorted(kept, key=SERVER_ORDER):
        if limit is not None and count >= limit:
            break
        if not server.usable:
            continue
        present = target.get(server.endpoint)
        if present is not None and present.usable:
            continue
        target[server.endpoint] = server
        count += 1
    return count


class UpstreamGuard:
    """The publication rules for one upstream; remembers what was published, and served recently."""

    def __init__(
        self,
        name: str,
        settings: GuardSettings,
        freeze: ClusterFreeze | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.settings = settings
        self._freeze = freeze
        self._clock = clock
        self._wall = wall
        #: The upstream last handed to the outputs (or adopted from its file at start-up).
        self.last_published: Upstream | None = None
        self._published_live: dict[Endpoint, Server] = {}
        self._served = ServedHistory()
        # When the files last confirmed a publish (monotonic): states replaced since then
        # may still be what the files hold (see confirmed).
        self._confirmed_at = clock()
        self._seen_thaws = freeze.thaws if freeze is not None else 0
        self._settle_until: float | None = None
        self._settle_baseline: dict[Endpoint, Server] = {}
        self._hold_since: float | None = None
        self._held_count = 0
        self._empty_warned = False

    # ---- state ---------------------------------------------------------------------

    @property
    def holding(self) -> int:
        """How many servers the guards publish other than as the registry has them right now."""
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
        """Take ``upstream`` (read back from its file) as what is published.

        ``upstream.owed`` (from the guard record, see :meth:`owed`) restores
        the reference the previous process held: each count keeps counting
        until its wall-clock time, never for more than ``drop_hold`` from now
        (a clock set back between the two processes cannot stretch it).
        """
        static = set(static_endpoints)
        self.last_published = upstream
        self._published_live = {
            server.endpoint: server for server in upstream.servers if server.endpoint not in static
        }
        self._served.reset(usable_count(self._published_live.values()))
        self._confirmed_at = self._clock()
        window = self.settings.drop_hold
        if window <= 0:
            return
        now, wall = self._clock(), self._wall()
        for until, count in upstream.owed:
            left = min(until - wall, window)
            if left >= 0:  # as reference(): a state counts up to and including the end of its window
                # Replaced at (now + left - window): it counts until now + left.
                self._served.restore(now + left - window, count)

    def owed(self) -> tuple[tuple[float, int], ...]:
        """What the reference still owes to states served before the last publish.

        (wall-clock time until which it counts, usable servers), for the counts
        above what is published now; empty when the last publish is its own
        reference. Rounded up to the millisecond so the record is stable text.
        """
        window = self.settings.drop_hold
        if window <= 0 or self.settings.max_drop >= 1.0:
            return ()
        now, wall = self._clock(), self._wall()
        return tuple(
            (math.ceil((wall + ended_at + window - now) * 1000) / 1000, count)
            for ended_at, count in self._served.replaced(now, window)
        )

    def published(self, upstream: Upstream, live: Iterable[Server]) -> None:
        """Record that ``upstream``, made of ``live`` plus static servers, went to the outputs."""
        self._published_live = {server.endpoint: server for server in live}
        self._served.record(self._clock(), usable_count(self._published_live.values()))
        owed = self.owed()
        # replace() rebuilds every field: skip it when the record is already right (most publishes).
        self.last_published = upstream if owed == upstream.owed else replace(upstream, owed=owed)

    def confirmed(self) -> None:
        """The files now hold the last publish (or a later one): what it replaced was served until now.

        A publish replaces a state in the guard's history the moment it is
        decided, but nginx serves the old state until the file (and then
        nginx) has the new one; a write that fails (a full disk) or waits
        leaves the old state served for longer. Every state replaced since
        the last confirmation therefore counts as served until this one, so
        the reference is what was really served, never shorter.
        """
        now = self._clock()
        self._served.extend(self._confirmed_at, now)
        self._confirmed_at = now

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
        if not usable_count(wanted.values()):
            if self._settle_until is not None and now >= self._settle_until:
                self._settle_until, self._settle_baseline = None, {}
            if static_servers and self.last_published is None:
                return Decision(())
            self._warn_empty(origin, len(wanted))
            return Decision(None)
        self._empty_warned = False
        target = dict(wanted)
        recheck: list[float] = []
        self._apply_settle(target, now, recheck)
        self._apply_shrink_guard(target, now, recheck)
        # Most servers are the very objects the registry gave: identity first spares comparing fields,
        # and a target the guards left alone (dict equality tries identity first, in C) holds none.
        self._held_count = 0 if target == wanted else sum(
            1 for endpoint, server in target.items() if (want := wanted.get(endpoint)) is not server and want != server)
        # One server per endpoint, so the endpoints alone give SERVER_ORDER (host, then port),
        # without fetching every compared field of every server.
        return Decision(tuple([target[endpoint] for endpoint in sorted(target)]), min(recheck) if recheck else None)

    def _warn_empty(self, origin: str, registered: int) -> None:
        if self._empty_warned:
            return
        self._empty_warned = True
        kept = (
            f"keeping the last good state ({len(self.last_published.servers)} servers)"
            if self.last_published else "nothing to publish yet"
        )
        if registered:
            log.warning("upstream %s: znode %s has no usable instances (%d registered, every one down or "
                        "weight 0); %s", self.name, origin, registered, kept, extra={"upstream": self.name})
        else:
            log.warning("upstream %s: znode %s has no valid instances; %s", self.name, origin, kept,
                        extra={"upstream": self.name})

    def _notice_thaw(self) -> None:
        freeze = self._freeze
        if freeze is None or freeze.thaws == self._seen_thaws:
            return
        self._seen_thaws = freeze.thaws
        window = self.settings.settle_after_reconnect
        if window > 0 and self._published_live and freeze.thawed_at is not None:
            self._settle_until = freeze.thawed_at + window
            self._settle_baseline = {
                endpoint: server for endpoint, server in self._published_live.items() if server.usable
            }

    def _apply_settle(self, target: dict[Endpoint, Server], now: float, recheck: list[float]) -> None:
        if self._settle_until is None:
            return
        if now >= self._settle_until or usable_count(target.values()) >= len(self._settle_baseline):
            why = "the window ended" if now >= self._settle_until else "the set is back at its pre-outage size"
            kept = [endpoint for endpoint, server in self._settle_baseline.items()
                    if not (endpoint in target and target[endpoint].usable)]
            if kept:
                log.info("upstream %s: settle over (%s); %d pre-outage servers may now go",
                         self.name, why, len(kept), extra={"upstream": self.name})
            self._settle_until = None
            self._settle_baseline = {}
            return
        # Each pre-outage server stays as it was last published (its weight may have changed
        # since the thaw), not as it was at the thaw.
        published = self._published_live
        _keep(target, (
            published[endpoint] if endpoint in published and published[endpoint].usable else server
            for endpoint, server in self._settle_baseline.items()
        ))
        recheck.append(self._settle_until)

    def _apply_shrink_guard(self, target: dict[Endpoint, Server], now: float, recheck: list[float]) -> None:
        settings = self.settings
        if self.last_published is None or settings.max_drop >= 1.0 or settings.drop_hold <= 0:
            self._hold_since = None
            return
        reference = self._served.reference(now, settings.drop_hold)
        remaining = usable_count(target.values())
        # The same comparison as "no more than max_drop of the reference is lost", kept in
        # integers-against-a-product form so that 50 % of 10 is exactly 5.
        if reference - remaining <= settings.max_drop * reference:
            if self._hold_since is not None:
                log.info("upstream %s: drop no longer held (%d usable servers of %d served recently)",
                         self.name, remaining, reference, extra={"upstream": self.name})
            self._hold_since = None
            return
        if self._hold_since is None:
            self._hold_since = now
            log.warning(
                "upstream %s: holding a drop of %d of %d usable servers (more than max_drop %g%% of the most "
                "served within the last %g s); they stay published for %g s unless they come back",
                self.name, reference - remaining, reference, settings.max_drop * 100, settings.drop_hold,
                settings.drop_hold, extra={"upstream": self.name},
            )
        release_at = self._hold_since + settings.drop_hold
        if now >= release_at:
            log.warning("upstream %s: releasing the held drop to %d of %d usable servers after %g s",
                        self.name, remaining, reference, settings.drop_hold, extra={"upstream": self.name})
            self._hold_since = None
            # The drop has been waited out: what is served from now on is the new reference,
            # so the servers that were held do not hold the same drop a second time.
            self._served.reset(remaining)
            return
        # The published usable servers that left, as they were published, up to the reference:
        # the upstream keeps the capacity it had, and a replacement arriving during the hold
        # takes the place of a held server rather than adding to it.
        _keep(target, self._published_live.values(), reference - remaining)
        recheck.append(release_at)
