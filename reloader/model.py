"""The data model every stage of the pipeline speaks: servers and upstreams.

Both are frozen so that a value handed to an output can never change under it,
and so that "did the upstream change?" is a plain ``==``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reloader.traffic import SlowStart


@dataclass(frozen=True, order=True)
class Server:
    """One ``server`` line of an upstream.

    ``host`` is stored bare (an IPv6 address without brackets); ``address``
    gives the form nginx wants. Field order makes the natural sort "host, then
    port", which is what the renderer promises.
    """

    host: str
    port: int
    weight: int = 1
    down: bool = False
    backup: bool = False
    # Extra nginx server parameters from the config (max_fails, fail_timeout, ...),
    # already validated, as (name, value) pairs; a flag parameter has value "".
    params: tuple[tuple[str, str], ...] = field(default=())
    # The registry's host name this address was resolved from ("" for an IP
    # address): the files show it in a comment; no output ever gets a name.
    name: str = ""
    # The registry's metadata as sorted (key, value) pairs, for ``prefer``
    # (reloader.traffic): never rendered, and no part of a server's identity.
    labels: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    # Derived from the fields above once, when the server is made (it is
    # frozen): the pipeline, the guards and the renderers ask for them many
    # times per change. No part of a server's identity, order or repr.
    #: The identity of a server: two lines with one endpoint are one server.
    endpoint: tuple[str, int] = field(init=False, repr=False, compare=False)
    #: True when nginx would send this server primary traffic: not ``down``,
    #: weight above 0, not ``backup``. This is what the guards count
    #: (reloader/publication.py): capacity, not endpoints. A registry weight
    #: of 0 arrives as ``down`` (nginx refuses ``weight=0``), so "weight 0"
    #: and "marked down" are one case; a ``backup`` server only serves when
    #: every primary server has failed.
    usable: bool = field(init=False, repr=False, compare=False)
    #: ``host:port``, with brackets around an IPv6 host: the form nginx wants.
    address: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoint", (self.host, self.port))
        object.__setattr__(self, "usable", not self.down and not self.backup and self.weight > 0)
        object.__setattr__(self, "address", f"[{self.host}]:{self.port}" if ":" in self.host
                           else f"{self.host}:{self.port}")


#: Servers' natural order as a sort key: ``sorted(servers, key=SERVER_ORDER)``
#: is ``sorted(servers)`` (the same compared fields, in order), with each
#: key built once per server instead of two tuples per comparison.
SERVER_ORDER = operator.attrgetter(*(f.name for f in fields(Server) if f.compare))


@dataclass(frozen=True)
class Upstream:
    """A complete, validated upstream: what the outputs are asked to serve.

    ``servers`` is sorted by host then port. ``directives`` are validated
    upstream-level directives (``least_conn``, ``keepalive 32``) without the
    trailing ``;``. ``live_count`` is how many servers came from the registry,
    as opposed to configured static backup servers; the guards look at it.
    """

    name: str
    servers: tuple[Server, ...]
    directives: tuple[str, ...] = ()
    live_count: int = 0
    # Traffic options (reloader.traffic), for the Lua and dyups outputs only;
    # the files always hold the full weights. ``added`` is, per endpoint that
    # the daemon saw appear while running, the wall-clock time it was added
    # (absolute, so that a document stays byte-stable between POSTs).
    slow_start: "SlowStart | None" = None
    panic_threshold: float | None = None
    added: tuple[tuple[tuple[str, int], float], ...] = ()
    # What the shrink guard's reference still owes to states served before this
    # one: (wall-clock time until which it counts, usable servers) pairs (see
    # reloader.publication). Recorded beside the files, never rendered, and no
    # part of the upstream's identity.
    owed: tuple[tuple[float, int], ...] = field(default=(), compare=False)

    def same_servers(self, other: "Upstream | None") -> bool:
        """True when ``other`` would render to the same nginx state."""
        return (
            other is not None
            and other.servers == self.servers
            and other.directives == self.directives
            and other.slow_start == self.slow_start
            and other.panic_threshold == self.panic_threshold
            and other.added == self.added
        )
