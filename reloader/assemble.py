"""Build the desired :class:`~reloader.model.Upstream` from parsed registry servers.

This is the step between "what the registry says" and "what nginx should
serve": duplicates are merged, registry weights are capped under a
consistent hash, per-upstream settings are applied, and static backup
servers are added. It has no I/O and no state, so it is the easiest
part of the pipeline to test exhaustively.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Collection, Iterable, Mapping

from reloader.model import SERVER_ORDER, Server, Upstream
from reloader.traffic import SlowStart


@dataclass(frozen=True)
class UpstreamOptions:
    """Per-upstream settings from the config, already validated."""

    server_params: tuple[tuple[str, str], ...] = ()
    directives: tuple[str, ...] = ()
    backup_servers: tuple[Server, ...] = ()
    # Traffic options (reloader.traffic): off unless configured.
    slow_start: SlowStart | None = None
    panic_threshold: float | None = None
    prefer: tuple[tuple[str, str], ...] = ()
    # Whether ``directives`` balance with ``hash KEY consistent`` (see
    # :func:`consistent_hash`): made once, as every change asks.
    consistent: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "consistent", consistent_hash(self.directives))


def _effective_weight(server: Server) -> int:
    # A server that is down carries no traffic, so any live twin outranks it.
    return 0 if server.down else server.weight


def merge_duplicates(servers: Iterable[Server]) -> list[Server]:
    """One server per host:port; when one endpoint appears twice, the higher weight wins."""
    servers = list(servers)
    if len({server.endpoint for server in servers}) == len(servers):
        return servers  # no endpoint twice (the usual case): nothing to merge
    by_endpoint: dict[tuple[str, int], Server] = {}
    for server in servers:
        known = by_endpoint.get(server.endpoint)
        if known is None or _effective_weight(server) > _effective_weight(known):
            by_endpoint[server.endpoint] = server
    return list(by_endpoint.values())


def consistent_hash(directives: Iterable[str]) -> bool:
    """True when the upstream balances with ``hash KEY consistent`` (a ketama ring)."""
    return any(d.split()[:1] == ["hash"] and d.split()[2:] == ["consistent"] for d in directives)


def overweight(live: Iterable[Server], options: UpstreamOptions, max_weight: int | None) -> list[Server]:
    """The registry servers whose weight :func:`desired_live` caps at ``max_weight``.

    Only under ``hash ... consistent``: nginx builds 160 ring points per unit
    of weight there, so one registry weight of 198,958 cost ``nginx -t`` (and
    every nginx start and reload) 7.5 s of CPU. Elsewhere a weight costs nothing.
    """
    if max_weight is None or not options.consistent:
        return []
    return [server for server in live if server.weight > max_weight]


def apply_server_params(server: Server, params: tuple[tuple[str, str], ...]) -> Server:
    """Apply configured ``server_params`` to a registry server.

    ``weight``, ``backup`` and ``down`` map onto the model's own fields (a
    configured weight overrides the registry's); everything else is carried as
    an extra parameter in the configured order.
    """
    if not params:
        return server
    extra: list[tuple[str, str]] = []
    weight, backup, down = server.weight, server.backup, server.down
    for name, value in params:
        if name == "weight":
            weight = int(value)
        elif name == "backup":
            backup = True
        elif name == "down":
            down = True
        else:
            extra.append((name, value))
    return replace(server, weight=weight, backup=backup, down=down, params=tuple(extra))


def desired_live(
    live: Iterable[Server], options: UpstreamOptions = UpstreamOptions(), max_weight: int | None = None
) -> list[Server]:
    """The registry's servers as nginx should serve them: one per endpoint, configured parameters applied.

    Under ``hash ... consistent``, a registry weight above ``max_weight`` is
    served as ``max_weight`` (see :func:`overweight`); a configured ``weight``
    in ``server_params`` is the operator's and is left as configured. This is
    what the guards compare with what is published.
    """
    servers = merge_duplicates(live)
    capped = {server.endpoint for server in overweight(servers, options, max_weight)}
    if capped:
        assert max_weight is not None
        servers = [replace(s, weight=max_weight) if s.endpoint in capped else s for s in servers]
    if not options.server_params:
        return servers
    return [apply_server_params(server, options.server_params) for server in servers]


def finalize_upstream(
    name: str, live: Iterable[Server], options: UpstreamOptions = UpstreamOptions(),
    drained: Collection[tuple[str, int]] = (),
    added: Mapping[tuple[str, int], float] | None = None,
    ordered: bool = False,
) -> Upstream:
    """The upstream for ``name`` made of ``live`` (already from :func:`desired_live`) and static backups.

    Static backup servers are rendered with ``backup`` while live servers
    exist; with none live they are rendered as plain servers, because nginx and
    dyups both refuse an upstream whose every server is a backup. They never
    count towards ``live_count``.

    Servers whose endpoint is in ``drained`` (operator overrides, see
    :mod:`reloader.overrides`) are rendered ``down``; they still count as live,
    since the guards have already decided on the registry's set.

    With ``prefer``, live servers whose labels match are the primaries and
    the other live servers are rendered ``backup``, as long as one matching
    server is in traffic (not down); with none, every live server is a
    primary. ``added`` (the slow start's wall-clock times of addition, by
    endpoint) is kept for the live endpoints only, and only with slow_start.
    ``ordered`` says ``live`` is already sorted (a guard's decision is): with
    nothing added or changed, it is then not sorted again.
    """
    merged = list(live)
    servers = list(merged)
    # Nothing added or changed (the usual case): sorted servers stay as they are.
    ordered = ordered and not (options.backup_servers or drained or options.prefer)
    live_endpoints = {server.endpoint for server in merged}
    for static in options.backup_servers:
        if static.endpoint in live_endpoints:
            continue  # the live registration of the same endpoint wins
        servers.append(replace(static, backup=bool(merged)))
    if drained:
        servers = [replace(server, down=True) if server.endpoint in drained else server for server in servers]
    if options.prefer:
        servers = _prefer(servers, live_endpoints, options.prefer)
    kept_added: tuple[tuple[tuple[str, int], float], ...] = ()
    if options.slow_start is not None and added:
        kept_added = tuple(sorted((endpoint, at) for endpoint, at in added.items() if endpoint in live_endpoints))
    return Upstream(
        name=name,
        servers=tuple(servers if ordered else sorted(servers, key=SERVER_ORDER)),
        directives=options.directives,
        live_count=len(merged),
        slow_start=options.slow_start,
        panic_threshold=options.panic_threshold,
        added=kept_added,
    )


def _prefer(
    servers: list[Server], live: Collection[tuple[str, int]], prefer: tuple[tuple[str, str], ...],
) -> list[Server]:
    """Live servers not matching ``prefer`` become backups while a matching one is in traffic."""
    wanted = set(prefer)

    def matches(server: Server) -> bool:
        return wanted <= set(server.labels)

    if not any(server.endpoint in live and not server.down and matches(server) for server in servers):
        return servers  # none preferred in traffic: the others serve as primaries
    return [
        replace(server, backup=True) if server.endpoint in live and not matches(server) else server
        for server in servers
    ]


def assemble_upstream(
    name: str, live: Iterable[Server], options: UpstreamOptions = UpstreamOptions(), max_weight: int | None = None
) -> Upstream:
    """The desired upstream for ``name`` given its live registry servers (both steps above)."""
    return finalize_upstream(name, desired_live(live, options, max_weight), options)
