"""The one path every change takes: parse, assemble, guard, then hand to the outputs.

A source hands a complete snapshot of a znode's children to
:meth:`Pipeline.update`. The pipeline parses each child with the configured
format, assembles the desired upstream, and then the guards decide whether it
may be published:

* **frozen**: the upstream's cluster gate is closed (session suspended, lost,
  or not yet resynced), so nothing is published;
* **zero instances**: the registry offers no valid live instance; nginx
  refuses an empty upstream, and an empty registry is far more often an
  outage than an intent, so the last good state stays;
* **unchanged**: the desired upstream equals the last one published.

Only then does each output get the upstream, files first so that what
survives an nginx restart is never behind what dyups serves. Runs on the
worker thread only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol

from reloader.assemble import assemble_upstream
from reloader.config import ZnodeConfig
from reloader.formats import Skip, parse_instance
from reloader.model import Server, Upstream
from reloader.outputs.base import Output

log = logging.getLogger(__name__)


class GateView(Protocol):
    """Read-only view of a cluster gate (see :class:`reloader.sources.zookeeper.Gate`)."""

    @property
    def is_open(self) -> bool: ...


@dataclass
class _UpstreamState:
    config: ZnodeConfig
    gate: GateView | None = None
    last_good: Upstream | None = None
    # Children we already warned about, with the reason, so a bad child is
    # reported once when it appears (or changes), not on every event.
    warned: dict[str, str] = field(default_factory=dict)
    empty_warned: bool = False


class Pipeline:
    """Turns registry snapshots into published upstreams."""

    def __init__(self, znodes: Iterable[ZnodeConfig], outputs: Iterable[Output]) -> None:
        self._states = {znode.upstream: _UpstreamState(znode) for znode in znodes}
        self.outputs: tuple[Output, ...] = tuple(outputs)

    def attach_gate(self, upstream: str, gate: GateView) -> None:
        """Tie ``upstream`` to its cluster's gate; until then it counts as open."""
        self._states[upstream].gate = gate

    def last_good(self, upstream: str) -> Upstream | None:
        return self._states[upstream].last_good

    @property
    def upstream_names(self) -> tuple[str, ...]:
        return tuple(self._states)

    # ---- start-up --------------------------------------------------------------

    def seed(self, upstream: Upstream) -> None:
        """Adopt ``upstream`` (read back from its file) as the last good state.

        The outputs are told with ``seed``, not ``publish``: the file already
        holds it, but nginx may have reloaded and lost its dyups state.
        """
        state = self._states.get(upstream.name)
        if state is None:
            return
        state.last_good = upstream
        self._each_output(lambda output: output.seed(upstream), upstream.name)

    # ---- the pipeline ------------------------------------------------------------

    def update(self, upstream: str, children: Mapping[str, bytes | None], origin: str) -> None:
        """Process a complete view of ``upstream``'s children from znode ``origin``."""
        state = self._states.get(upstream)
        if state is None:
            return
        servers = self._parse(state, children, origin)
        desired = assemble_upstream(upstream, servers, state.config.options)
        if not self._guard(state, desired, origin):
            return
        state.last_good = desired
        log.info(
            "upstream %s: %d servers (%d live) from %s",
            upstream, len(desired.servers), desired.live_count, origin,
        )
        self._each_output(lambda output: output.publish(desired), upstream)

    def end_batch(self) -> None:
        """Tell the outputs a batch of updates is complete (they may act on it as a whole)."""
        for output in self.outputs:
            try:
                output.end_batch()
            except Exception:  # noqa: BLE001 - one output must not take the daemon down
                log.exception("output %s failed at the end of a batch", output.name)

    def _parse(self, state: _UpstreamState, children: Mapping[str, bytes | None], origin: str) -> list[Server]:
        servers: list[Server] = []
        still_bad: dict[str, str] = {}
        znode = state.config
        for child, data in children.items():
            result = parse_instance(child, data, znode.format, znode.format_options)
            if isinstance(result, Skip):
                if not result.quiet:
                    still_bad[child] = result.reason
                    if state.warned.get(child) != result.reason:
                        log.warning("znode %s child %r skipped: %s", origin, _short(child), result.reason)
                continue
            servers.append(result)
        state.warned = still_bad
        return servers

    def _guard(self, state: _UpstreamState, desired: Upstream, origin: str) -> bool:
        if state.gate is not None and not state.gate.is_open:
            return False
        if desired.live_count == 0 and (state.last_good is not None or not desired.servers):
            if not state.empty_warned:
                kept = f"keeping the last good state ({len(state.last_good.servers)} servers)" if state.last_good else "nothing to publish yet"
                log.warning("upstream %s: znode %s has no valid instances; %s", desired.name, origin, kept)
                state.empty_warned = True
            return False
        state.empty_warned = False
        return not desired.same_servers(state.last_good)

    def _each_output(self, action: Callable[[Output], None], upstream: str) -> None:
        for output in self.outputs:
            try:
                action(output)
            except Exception:  # noqa: BLE001 - one output must not take the daemon down
                log.exception("output %s failed for upstream %s", output.name, upstream)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
