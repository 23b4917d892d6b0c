"""The one path every change takes: parse, assemble, guard, finalize, then hand to the outputs.

A source hands a complete snapshot of a znode's children to
:meth:`Pipeline.update`. The pipeline

1. **parses** each child with the configured format (a child that is
   malformed, unreadable, or names a host that does not resolve is skipped
   with one warning; its siblings are served). A child whose name and data
   are the same as in the upstream's previous snapshot reuses that parse
   (the host check still runs every time): a change to one child of a large
   upstream costs one parse. What is kept is bounded by the current children
   and dropped when the upstream's configuration changes;
2. **assembles** the desired live servers (one per endpoint, configured
   server parameters applied);
3. asks the upstream's :class:`~reloader.publication.UpstreamGuard` which
   live servers may be published now (frozen cluster, zero instances, settle
   window, shrink guard: all in :mod:`reloader.publication`);
4. **finalizes** the upstream (static backup servers) and, if it differs from
   what was last published, hands it to ``publish`` — in the daemon, the files
   runner's queue, which never blocks.

When a guard's decision may change with time alone (a settle window or a
drop hold ending), the pipeline schedules a re-check of the last desired
state, so a held drop is released without waiting for another registry
change.

One pipeline serves one cluster and runs on that cluster's thread only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from reloader.assemble import desired_live, finalize_upstream, overweight
from reloader.config import ZnodeConfig
from reloader.formats import ParseResult, Skip, parse_instance
from reloader.model import Server, Upstream
from reloader.publication import ClusterFreeze, UpstreamGuard
from reloader.resolve import HostChecker
from reloader.snapshot import ChildData, Snapshot, Unreadable

log = logging.getLogger(__name__)

Publish = Callable[[Upstream], None]
Schedule = Callable[[float, Callable[[], None]], None]


@dataclass
class _UpstreamState:
    config: ZnodeConfig
    guard: UpstreamGuard
    # The latest desired live servers and where they came from, kept for re-checks.
    desired: tuple[Server, ...] | None = None
    origin: str = ""
    recheck_at: float | None = None
    # When the registry last said something about it, and when it was last published.
    updated_at: float | None = None
    published_at: float | None = None
    # Per child of the last snapshot, the data it had and what parsing it gave.
    parsed: dict[str, tuple[ChildData, ParseResult]] = field(default_factory=dict)
    # The (endpoint, weight) pairs already warned about as above max_weight: warned once each.
    overweight: frozenset[tuple[tuple[str, int], int]] = frozenset()


class Pipeline:
    """Turns one cluster's registry snapshots into published upstreams."""

    def __init__(
        self,
        znodes: Iterable[ZnodeConfig],
        publish: Publish,
        freeze: ClusterFreeze | None = None,
        schedule: Schedule | None = None,
        hosts: HostChecker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._freeze = freeze
        self._schedule = schedule
        self._hosts = hosts
        self._clock = clock
        # Per znode, the children already warned about with the reason, so a
        # bad child is reported once when it appears (or changes), not on
        # every event, and once for all the upstreams that share the znode.
        self._warned: dict[str, dict[str, str]] = {}
        self._states = {
            znode.upstream: _UpstreamState(
                znode, UpstreamGuard(znode.upstream, znode.guards, freeze, clock)
            )
            for znode in znodes
        }

    @property
    def upstream_names(self) -> tuple[str, ...]:
        return tuple(self._states)

    def last_published(self, upstream: str) -> Upstream | None:
        """What was last handed to the outputs for ``upstream`` (or adopted from its file)."""
        return self._states[upstream].guard.last_published

    def published_states(self) -> list[Upstream]:
        """Every upstream's last published state (those that have one)."""
        return [state.guard.last_published for state in self._states.values() if state.guard.last_published]

    def status(self, upstream: str, now: float) -> dict[str, object]:
        """What status and metrics show of one upstream (read from other threads: plain values only)."""
        state = self._states[upstream]
        guard = state.guard
        published = guard.last_published
        return {
            "servers": len(published.servers) if published else 0,
            "live_published": published.live_count if published else 0,
            "live_instances": len(state.desired) if state.desired is not None else None,
            "znode": state.config.path,
            "last_change_seconds_ago": None if state.updated_at is None else round(now - state.updated_at, 3),
            "last_publish_seconds_ago": None if state.published_at is None else round(now - state.published_at, 3),
            "held_servers": guard.holding,
            "holding_drop": guard.holding_drop,
            "settling": guard.settling,
        }

    def reconfigure(self, znodes: Iterable[ZnodeConfig]) -> tuple[list[str], list[str], list[str]]:
        """Serve exactly ``znodes`` from now on; returns the (added, removed, changed) upstream names.

        An upstream whose configuration did not change keeps everything: its
        last published state, its guard's windows and holds. A changed one
        keeps its last published state and takes the new settings; its next
        snapshot is decided under them.
        """
        wanted = {znode.upstream: znode for znode in znodes}
        removed = [name for name in self._states if name not in wanted]
        for name in removed:
            del self._states[name]
        added, changed = [], []
        for name, znode in wanted.items():
            state = self._states.get(name)
            if state is None:
                self._states[name] = _UpstreamState(znode, UpstreamGuard(name, znode.guards, self._freeze, self._clock))
                added.append(name)
            elif state.config != znode:
                state.config = znode
                state.guard.settings = znode.guards
                state.parsed = {}  # the format or its options may have changed
                changed.append(name)
        return added, removed, changed

    # ---- start-up --------------------------------------------------------------

    def adopt(self, upstream: Upstream) -> bool:
        """Take ``upstream`` (read back from its file) as published; False if it is not configured here."""
        state = self._states.get(upstream.name)
        if state is None:
            return False
        static = (server.endpoint for server in state.config.options.backup_servers)
        state.guard.adopt(upstream, static)
        return True

    # ---- the pipeline ------------------------------------------------------------

    def update(self, upstream: str, children: Snapshot, origin: str) -> None:
        """Process a complete view of ``upstream``'s children from znode ``origin``."""
        state = self._states.get(upstream)
        if state is None:
            return
        servers = self._parse(state, children, origin)
        self._warn_overweight(state, servers, origin)
        state.desired = tuple(desired_live(servers, state.config.options, state.config.guards.max_weight))
        state.origin = origin
        state.updated_at = self._clock()
        self._decide(state)

    def _warn_overweight(self, state: _UpstreamState, servers: list[Server], origin: str) -> None:
        max_weight = state.config.guards.max_weight
        over = {(s.endpoint, s.weight): s for s in overweight(servers, state.config.options, max_weight)}
        for key, server in over.items():
            if key not in state.overweight:
                log.warning("znode %s instance %s: weight %d is above max_weight %d under a consistent hash; "
                            "served with weight %d", origin, server.address, server.weight, max_weight, max_weight,
                            extra={"upstream": state.config.upstream})
        state.overweight = frozenset(over)

    def recheck(self, upstream: str) -> None:
        """Decide again with the last desired state (a guard's window may have ended)."""
        state = self._states.get(upstream)
        if state is None or state.desired is None:
            return
        state.recheck_at = None
        self._decide(state)

    def _decide(self, state: _UpstreamState) -> None:
        assert state.desired is not None
        name = state.config.upstream
        decision = state.guard.decide(state.desired, state.origin, bool(state.config.options.backup_servers))
        if decision.recheck_at is not None:
            self._schedule_recheck(state, decision.recheck_at)
        if decision.live is None:
            return
        upstream = finalize_upstream(name, decision.live, state.config.options)
        if upstream.same_servers(state.guard.last_published):
            state.guard.published(upstream, decision.live)
            return
        state.guard.published(upstream, decision.live)
        state.published_at = self._clock()
        held = state.guard.holding
        log.info(
            "upstream %s: %d servers (%d live%s) from %s",
            name, len(upstream.servers), upstream.live_count,
            f", {held} kept by the guards" if held else "", state.origin,
            extra={"upstream": name},
        )
        try:
            self._publish(upstream)
        except Exception:  # noqa: BLE001 - a broken output must not take the cluster down
            log.exception("upstream %s: handing it to the outputs failed", name)

    def _schedule_recheck(self, state: _UpstreamState, at: float) -> None:
        if self._schedule is None:
            return
        if state.recheck_at is not None and state.recheck_at <= at:
            return  # an earlier re-check is already due; it schedules the next one
        state.recheck_at = at
        name = state.config.upstream
        # A hair past the deadline, so that the re-check sees the window as over.
        self._schedule(max(at - self._clock(), 0.0) + 0.01, lambda: self.recheck(name))

    def _parse(self, state: _UpstreamState, children: Snapshot, origin: str) -> list[Server]:
        servers: list[Server] = []
        still_bad: dict[str, str] = {}
        warned = self._warned.get(origin, {})
        znode = state.config
        known = state.parsed
        parsed: dict[str, tuple[ChildData, ParseResult]] = {}
        for child, data in children.items():
            if isinstance(data, Unreadable):
                reason: str | None = data.reason
            else:
                seen = known.get(child)
                if seen is not None and (seen[0] is data or seen[0] == data):
                    result = seen[1]
                else:
                    result = parse_instance(child, data, znode.format, znode.format_options)
                parsed[child] = (data, result)
                if isinstance(result, Skip):
                    reason = None if result.quiet else result.reason
                    if reason is None:
                        continue
                else:
                    reason = self._hosts.problem(result.host) if self._hosts is not None else None
                    if reason is None:
                        servers.append(result)
                        continue
            still_bad[child] = reason
            if warned.get(child) != reason:
                log.warning("znode %s child %r skipped: %s", origin, _short(child), reason,
                            extra={"upstream": znode.upstream})
        if still_bad:
            warned.update(still_bad)
        self._warned[origin] = {child: warned[child] for child in still_bad}
        state.parsed = parsed
        return servers


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
