"""The one path every change takes: parse, assemble, guard, finalize, then hand to the outputs.

A source hands a complete snapshot of a znode's children to
:meth:`Pipeline.update`. The pipeline

1. **parses** each child with the configured format (a child that is
   malformed or unreadable is skipped with one warning; its siblings are
   served). A child whose name and data are the same as in the upstream's
   previous snapshot reuses that parse, and the policy's verdict on its IP
   address (which depends on the address and the policy only): a change to
   one child of a large upstream costs one parse and one verdict. So does
   a child that left and comes back with the same data (a restart in place,
   a registration renewed after an expiry), among the last DEPARTED_KEPT to
   leave. What is kept is bounded by the current children and those, and
   dropped when the upstream's configuration (its policy among it) changes.
   A snapshot whose every child is an IP address the policy accepts is
   served as parsed, with no further look at each child. Then, at this one
   place, every child's address passes the **address policy**
   (:mod:`reloader.netpolicy`: nothing may point nginx at the host) and a
   host name becomes the **addresses** it resolves to (:mod:`reloader.resolve`):
   no output ever gets a name, so no DNS record can break nginx's next start.
   A name whose look-up has not answered yet keeps what is published for it;
   one that never resolved, or that resolves to a refused address, is
   skipped with one warning. Look-ups run on the resolver's own threads;
   when an answer changes, the upstreams that use the name are decided again
   on this pipeline's thread (through ``post``), and names in use are looked
   up again every ``HostChecker.interval`` (through ``schedule``);
2. **assembles** the desired live servers (one per endpoint, configured
   server parameters applied);
3. asks the upstream's :class:`~reloader.publication.UpstreamGuard` which
   live servers may be published now (frozen cluster, zero instances, settle
   window, shrink guard: all in :mod:`reloader.publication`);
4. **finalizes** the upstream (static backup servers, then the operator's
   drains, see :mod:`reloader.overrides`, then ``prefer``; with
   ``slow_start``, the wall-clock time each server was seen to appear while
   running, never at start-up nor on the first hand-on after a thaw) and, if it differs from
   what was last published, hands it to ``publish`` — in the daemon, the files
   runner's queue, which never blocks.

When a guard's decision may change with time alone (a settle window or a
drop hold ending), the pipeline schedules a re-check of the last desired
state, so a held drop is released without waiting for another registry
change.

One pipeline serves one cluster and runs on that cluster's thread only
(resolver threads only add to a locked set of answered names and ``post``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable, Iterable, Mapping, NamedTuple

from reloader.addresses import is_ip_literal
from reloader.assemble import desired_live, finalize_upstream, overweight
from reloader.config import ZnodeConfig
from reloader.formats import ParseResult, Skip, parse_instance
from reloader.model import Server, Upstream
from reloader.overrides import Endpoint, drained_view
from reloader.publication import ClusterFreeze, UpstreamGuard
from reloader.resolve import HostChecker, Resolution
from reloader.snapshot import ChildData, Snapshot, Unreadable

log = logging.getLogger(__name__)

#: The longest time between two requests for the names in use (see Pipeline._schedule_refresh).
REFRESH_AT_MOST = 5.0
#: How many children that left an upstream keep their parse, should they come back.
DEPARTED_KEPT = 16

Publish = Callable[[Upstream], None]
Schedule = Callable[[float, Callable[[], None]], None]
#: Hands a task to the pipeline's own thread; callable from any thread, never blocks.
Post = Callable[[Callable[[], None]], None]


class _Parsed(NamedTuple):
    """What one child of the last snapshot gave: its data, the parse, and the policy's verdict."""

    data: ChildData
    result: ParseResult
    # Whether the server's host is an IP address (judged here, once) rather
    # than a host name (judged by what it resolves to, at every decision).
    literal: bool = False
    # For an IP address: why the policy refuses it, or None.
    refusal: str | None = None


@dataclass
class _UpstreamState:
    config: ZnodeConfig
    guard: UpstreamGuard
    # The latest desired live servers and where they came from, kept for re-checks.
    desired: tuple[Server, ...] | None = None
    origin: str = ""
    recheck_at: float | None = None
    # The live servers last handed on (or adopted), before drains: what a
    # change of drains re-finalizes while the guards decide nothing.
    last_live: tuple[Server, ...] | None = None
    # When the registry last said something about it, and when it was last published.
    updated_at: float | None = None
    published_at: float | None = None
    # Per child of the last snapshot, the data it had, what parsing it gave and the policy's verdict.
    parsed: dict[str, _Parsed] = field(default_factory=dict)
    # The last DEPARTED_KEPT children to leave, as ``parsed`` had them: an
    # instance that comes back under the same name (a restart in place, a
    # registration renewed after its session expired) is not parsed again.
    departed: dict[str, _Parsed] = field(default_factory=dict)
    # Children of the last snapshot that could not be read, with why.
    unreadable: dict[str, str] = field(default_factory=dict)
    # The host names its children use (each resolved through the HostChecker).
    names: frozenset[str] = frozenset()
    # Whether every child of the last snapshot is an IP address the policy
    # accepts (its parse is what is served): nothing unreadable, skipped,
    # refused or to resolve.
    plain: bool = False
    # The (endpoint, weight) pairs already warned about as above max_weight: warned once each.
    overweight: frozenset[tuple[tuple[str, int], int]] = frozenset()
    # slow_start: wall-clock time each endpoint was seen to appear while
    # running, and the cluster's thaw count when it was last handed on.
    added: dict[Endpoint, float] = field(default_factory=dict)
    thaws: int = 0


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
        post: Post | None = None,
    ) -> None:
        self._publish = publish
        self._freeze = freeze
        self._schedule = schedule
        self._hosts = hosts
        self._clock = clock
        self._post = post
        # Per znode and way of reading it (format, options, address policy),
        # the children already warned about with the reason, so a bad child
        # is reported once when it appears (or changes), not on every event,
        # and once for all the upstreams that read the znode alike.
        self._warned: dict[Hashable, dict[str, str]] = {}
        # Per host name in use, the upstreams whose children name it.
        self._name_users: dict[str, set[str]] = {}
        self._refresh_due = False
        # Names whose answer changed, waiting for this pipeline's thread (filled from resolver threads).
        self._answers: set[str] = set()
        self._answers_lock = threading.Lock()
        # The operator's drains per upstream (kept across config reloads), and
        # the upstreams whose drains would leave no server in traffic.
        self._drains: dict[str, dict[Endpoint, float | None]] = {}
        self._drain_refused: set[str] = set()
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
            "drained": drained_view(self._drains.get(upstream, {}), time.time()),
            "drain_refused": upstream in self._drain_refused,
        }

    def set_drains(self, upstream: str, drains: Mapping[Endpoint, float | None]) -> None:
        """Take the operator's drains of ``upstream`` (see :mod:`reloader.overrides`) and re-decide it now.

        Runs on the cluster's thread (handed over through its inbox). The guards
        see nothing of it: the drains apply when the upstream is finalized.
        """
        if dict(self._drains.get(upstream, {})) == dict(drains):
            return
        if drains:
            self._drains[upstream] = dict(drains)
        else:
            self._drains.pop(upstream, None)
        state = self._states.get(upstream)
        if state is None:
            return
        if state.desired is not None:
            self._decide(state, redrain=True)
        elif state.last_live is not None:
            self._hand_on(state, state.last_live)  # adopted from its file, not read yet

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
            self._use_names(name, frozenset())
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
                # The format, its options or the address policy may have changed: parse everything anew.
                state.parsed, state.departed, state.plain = {}, {}, False
                changed.append(name)
        # Warnings remembered for a way of reading a znode that no upstream uses any more are dropped.
        in_use = {_warn_key(state.config.path, state.config) for state in self._states.values()}
        self._warned = {key: children for key, children in self._warned.items() if key in in_use}
        return added, removed, changed

    # ---- start-up --------------------------------------------------------------

    def adopt(self, upstream: Upstream) -> bool:
        """Take ``upstream`` (read back from its file) as published; False if it is not configured here."""
        state = self._states.get(upstream.name)
        if state is None:
            return False
        static = {server.endpoint for server in state.config.options.backup_servers}
        state.guard.adopt(upstream, static)
        state.last_live = tuple(server for server in upstream.servers if server.endpoint not in static)
        return True

    def confirmed(self, upstream: str) -> None:
        """``upstream``'s file now holds its last publish (or a later one); see UpstreamGuard.confirmed."""
        state = self._states.get(upstream)
        if state is not None:
            state.guard.confirmed()

    # ---- the pipeline ------------------------------------------------------------

    def update(self, upstream: str, children: Snapshot, origin: str) -> None:
        """Process a complete view of ``upstream``'s children from znode ``origin``."""
        state = self._states.get(upstream)
        if state is None:
            return
        self._parse(state, children)
        state.origin = origin
        state.updated_at = self._clock()
        self._desire(state)
        self._decide(state)

    def _desire(self, state: _UpstreamState) -> None:
        """The desired live servers of ``state`` from its parsed children (weights capped where they must be)."""
        servers = self._servers(state)
        self._warn_overweight(state, servers, state.origin)
        state.desired = tuple(desired_live(servers, state.config.options, state.config.guards.max_weight))

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

    def _decide(self, state: _UpstreamState, redrain: bool = False) -> None:
        assert state.desired is not None
        name = state.config.upstream
        decision = state.guard.decide(state.desired, state.origin, bool(state.config.options.backup_servers))
        if decision.recheck_at is not None:
            self._schedule_recheck(state, decision.recheck_at)
        if decision.live is None:
            if redrain and state.last_live is not None:
                # Frozen, or no instances: the last live set stays, with the new drains.
                self._hand_on(state, state.last_live)
            return
        self._hand_on(state, decision.live)

    def _hand_on(self, state: _UpstreamState, live: tuple[Server, ...]) -> None:
        """Finalize ``live``, record it with the guard, and publish it if it changed."""
        name = state.config.upstream
        self._note_added(state, live)
        upstream = self._finalize(name, live, state)
        state.last_live = live
        if upstream.same_servers(state.guard.last_published):
            state.guard.published(upstream, live)
            return
        state.guard.published(upstream, live)
        upstream = state.guard.last_published  # with what the reference still owes (recorded beside the files)
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

    def _note_added(self, state: _UpstreamState, live: tuple[Server, ...]) -> None:
        """Record when slow-start servers appeared: not at start-up (nothing handed on yet, or
        adopted from a file), nor on the first hand-on after a thaw."""
        slow_start = state.config.options.slow_start
        thaws = self._freeze.thaws if self._freeze is not None else 0
        thawed, state.thaws = thaws != state.thaws, thaws
        if slow_start is None:
            state.added.clear()
            return
        now = round(time.time(), 3)
        endpoints = {server.endpoint for server in live}
        # Forget servers gone (a return is new again) and ramps that are over.
        state.added = {endpoint: at for endpoint, at in state.added.items()
                       if endpoint in endpoints and now - at < slow_start.window}
        if state.last_live is None or thawed:
            return
        before = {server.endpoint for server in state.last_live}
        for endpoint in endpoints - before:
            state.added[endpoint] = now

    def _finalize(self, name: str, live: tuple[Server, ...], state: _UpstreamState) -> Upstream:
        """The upstream to publish: static backups added, then the operator's drains applied."""
        options = state.config.options
        drained = self._drains.get(name)
        if not drained:
            self._drain_refused.discard(name)
            return finalize_upstream(name, live, options, added=state.added, ordered=True)
        upstream = finalize_upstream(name, live, options, drained=drained.keys(), added=state.added, ordered=True)
        if any(not server.down for server in upstream.servers):
            self._drain_refused.discard(name)
            return upstream
        # Draining every server would take the upstream out of traffic: a
        # publish may never collapse an upstream, whoever asks for it.
        if name not in self._drain_refused:
            log.warning("upstream %s: drains not applied: they would leave no server in traffic", name,
                        extra={"upstream": name})
            self._drain_refused.add(name)
        return finalize_upstream(name, live, options, added=state.added, ordered=True)

    def _schedule_recheck(self, state: _UpstreamState, at: float) -> None:
        if self._schedule is None:
            return
        if state.recheck_at is not None and state.recheck_at <= at:
            return  # an earlier re-check is already due; it schedules the next one
        state.recheck_at = at
        name = state.config.upstream
        # A hair past the deadline, so that the re-check sees the window as over.
        self._schedule(max(at - self._clock(), 0.0) + 0.01, lambda: self.recheck(name))

    def _parse(self, state: _UpstreamState, children: Snapshot) -> None:
        """Parse the snapshot's children into ``state``, reusing the parse of those unchanged or back unchanged."""
        znode = state.config
        known = state.parsed
        departed = state.departed
        unreadable: dict[str, str] = {}
        if znode.ignore_child_data:
            # The name is the instance. The data may still have been read, for
            # another upstream of the same znode; it counts as empty here, so a
            # child parsed before is parsed as it was.
            parsed = {child: known.get(child) or departed.get(child) or self._judge(child, b"", znode)
                      for child in children}
        else:
            parsed = {}
            for child, data in children.items():
                if isinstance(data, Unreadable):
                    unreadable[child] = data.reason
                    continue
                seen = known.get(child) or departed.get(child)
                if seen is None or (seen.data is not data and seen.data != data):
                    seen = self._judge(child, data, znode)
                parsed[child] = seen
        for child in known.keys() - parsed.keys():
            departed.pop(child, None)  # the newest last: the oldest is forgotten first
            departed[child] = known[child]
        while len(departed) > DEPARTED_KEPT:
            del departed[next(iter(departed))]
        unserved = [seen for seen in parsed.values() if not seen.literal or seen.refusal is not None]
        names = {seen.result.host for seen in unserved if not seen.literal and not isinstance(seen.result, Skip)}
        state.parsed = parsed
        state.unreadable = unreadable
        state.plain = not unserved and not unreadable
        if names or state.names:
            self._use_names(znode.upstream, frozenset(names))

    @staticmethod
    def _judge(child: str, data: bytes | None, znode: ZnodeConfig) -> _Parsed:
        return _judged(data, parse_instance(child, data, znode.format, znode.format_options), znode)

    def _servers(self, state: _UpstreamState) -> list[Server]:
        """The servers of the last snapshot, each address judged by the policy, names resolved; warns once."""
        znode = state.config
        origin = state.origin
        key = _warn_key(origin, znode)
        warned = self._warned.get(key, {})
        if state.plain:
            # Nothing to judge, resolve or warn about: the servers as parsed.
            if warned:
                self._warned[key] = {}
            return [parsed.result for parsed in state.parsed.values()]  # type: ignore[misc]
        still_bad: dict[str, str] = dict(state.unreadable)
        servers: list[Server] = []
        resolutions = self._resolutions(state.names)
        for child, (_, result, literal, refusal) in state.parsed.items():
            if literal:
                # An IP address (never a skip), judged when parsed: the verdict
                # depends on the address and the policy only.
                if refusal is None:
                    servers.append(result)  # type: ignore[arg-type]
                else:
                    still_bad[child] = refusal
                continue
            if isinstance(result, Skip):
                if not result.quiet:
                    still_bad[child] = result.reason
                continue
            reason, resolved = self._addresses(state, result, resolutions)
            if reason is not None:
                still_bad[child] = reason
            servers.extend(resolved)
        for child, reason in still_bad.items():
            if warned.get(child) != reason:
                log.warning("znode %s child %r skipped: %s", origin, _short(child), reason,
                            extra={"upstream": znode.upstream})
        self._warned[key] = still_bad
        return servers

    def _addresses(
        self, state: _UpstreamState, server: Server, resolutions: dict[str, Resolution]
    ) -> tuple[str | None, list[Server]]:
        """(why the child is refused, or None; the servers it stands for) — see the module docstring."""
        policy = state.config.networks
        if is_ip_literal(server.host):
            reason = policy.refusal(server.host)
            return (reason, []) if reason is not None else (None, [server])
        resolution = resolutions.get(server.host)
        if resolution is None:
            return f"host name {server.host!r}: host names need a resolver, and none is configured here", []
        if resolution.failed:
            return resolution.error, []
        if resolution.unknown:
            # No answer yet: keep what is published for this server (nothing, for a new name).
            published = state.guard.last_published
            kept = [
                replace(server, host=old.host, name=server.host) for old in (published.servers if published else ())
                if old.name == server.host and old.port == server.port
            ]
            return None, kept
        for address in resolution.addresses:
            refused = policy.refusal(address)
            if refused is not None:
                return f"host name {server.host!r} resolves to {refused}", []
        return None, [replace(server, host=address, name=server.host) for address in resolution.addresses]

    # ---- host names ------------------------------------------------------------------

    def _resolutions(self, names: frozenset[str]) -> dict[str, Resolution]:
        """What is known of each name now (never waits, except in the one-shot render, which has no ``post``)."""
        if self._hosts is None or not names:
            return {}
        hosts = self._hosts
        answers = {name: hosts.resolve(name, self._answered) for name in names}
        if self._post is None and any(answer.unknown for answer in answers.values()):
            # No thread to hand a later answer to (the one-shot render): wait for them, bounded.
            hosts.wait(names)
            answers = {name: hosts.resolve(name) for name in names}
        self._schedule_refresh()
        return answers

    def _use_names(self, upstream: str, names: frozenset[str]) -> None:
        """``upstream`` now uses ``names``; a name nobody here uses any more is released."""
        state = self._states.get(upstream)
        before = state.names if state is not None else frozenset()
        if state is not None:
            state.names = names
        for name in names - before:
            self._name_users.setdefault(name, set()).add(upstream)
        for name in before - names:
            users = self._name_users.get(name)
            if users is None:
                continue
            users.discard(upstream)
            if not users:
                del self._name_users[name]
                if self._hosts is not None:
                    self._hosts.release(name, self._answered)

    def _answered(self, name: str) -> None:
        """The resolver's answer for ``name`` changed (any thread): decide its upstreams again, on ours.

        Answers that arrive before the pipeline's thread gets to them are
        handled in one pass, each upstream decided once: 5,000 names answering
        at start-up cost one pass, not 5,000.
        """
        if self._post is None:
            return
        with self._answers_lock:
            first = not self._answers
            self._answers.add(name)
        if first:
            self._post(self._redecide)

    def _redecide(self) -> None:
        with self._answers_lock:
            names, self._answers = self._answers, set()
        upstreams = {upstream for name in names for upstream in self._name_users.get(name, ())}
        for upstream in sorted(upstreams):
            state = self._states.get(upstream)
            if state is None or state.desired is None:
                continue
            self._desire(state)
            self._decide(state)

    def _schedule_refresh(self) -> None:
        """Ask for the names in use again and again: the resolver looks up those whose answer is due.

        Asking every half interval (at most every 5 s, so that a failed
        look-up is retried soon) keeps each name's age below 1.5 intervals
        at the cost of one dictionary look-up per name.
        """
        if self._schedule is None or self._hosts is None or self._refresh_due:
            return
        self._refresh_due = True
        self._schedule(min(self._hosts.interval / 2, REFRESH_AT_MOST), self._refresh)

    def _refresh(self) -> None:
        self._refresh_due = False
        if self._hosts is None or not self._name_users:
            return
        for name in self._name_users:
            self._hosts.resolve(name, self._answered)
        self._schedule_refresh()


def _judged(data: ChildData, result: ParseResult, znode: ZnodeConfig) -> _Parsed:
    """A child's parse, with the policy's verdict on its address when that is an IP address."""
    if isinstance(result, Skip) or not is_ip_literal(result.host):
        return _Parsed(data, result)
    return _Parsed(data, result, True, znode.networks.refusal(result.host))


def _warn_key(origin: str, znode: ZnodeConfig) -> Hashable:
    """Upstreams that read a znode alike (format, its options, address policy) share their warnings."""
    return (origin, znode.format, znode.format_options, znode.networks, znode.ignore_child_data)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
