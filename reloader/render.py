"""Turn an :class:`~reloader.model.Upstream` into the text nginx reads.

Two renderings of one value: the file that nginx includes, and the body that
the dyups interface takes. A TCP upstream's file (``<name>.stream``, included
inside ``stream { }``) is rendered by :func:`render_file` too: the stream
module's ``upstream`` block has the same syntax, and the config refuses the
directives it lacks (reloader/config.py); its name comes from
:func:`reloader.outputs.files.file_name`. Both are deterministic: servers are
already sorted by the model, so equal upstreams give byte-equal output and an
unchanged file is never rewritten.
"""

from __future__ import annotations

from reloader.model import Server, Upstream


def server_line(server: Server) -> str:
    """The ``server ...`` statement for one server, without the trailing ``;``."""
    parts = ["server", server.address]
    if server.weight != 1:
        parts.append(f"weight={server.weight}")
    for name, value in server.params:
        parts.append(f"{name}={value}" if value else name)
    if server.backup:
        parts.append("backup")
    if server.down:
        parts.append("down")
    return " ".join(parts)


def _file_line(server: Server) -> str:
    """One ``server`` line of a file, with the host name it was resolved from in a comment."""
    if server.weight == 1 and not (server.params or server.backup or server.down):
        # The line nearly every server has, without building server_line's list of parts.
        line = f"    server {server.address};"
    else:
        line = f"    {server_line(server)};"
    # A name passed reloader.addresses' RFC 1123 check: it holds no newline or nginx syntax.
    return f"{line}  # {server.name}" if server.name else line


def render_file(upstream: Upstream) -> str:
    """The full ``upstream NAME { ... }`` block for ``<name>.upstream`` (or ``<name>.stream``)."""
    lines = [f"upstream {upstream.name} {{"]
    lines.extend(f"    {directive};" for directive in upstream.directives)
    lines.extend(_file_line(server) for server in upstream.servers)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_dyups_body(upstream: Upstream) -> str:
    """The dyups POST body: directives then servers, each ending in ``;``, no spaces between.

    Never empty for an upstream that passed the guards, which matters: dyups
    answers an empty body with 500.
    """
    statements = [*upstream.directives, *(server_line(server) for server in upstream.servers)]
    return "".join(f"{statement};" for statement in statements)


def render_file_lua(upstream: Upstream) -> str:
    """The ``<name>.upstream`` file for Lua mode (``lua_url`` set).

    The same ``server`` lines as :func:`render_file`, so that nginx's own
    round robin serves them whenever the Lua balancer sets no peer (right
    after an nginx start, before the daemon has POSTed), followed by the
    ``balancer_by_lua_block`` that serves the live set from the shared dict.
    The name is written into the block rather than read from
    ``$proxy_host``, which is empty in the balancer phase. Directives
    (only the keepalive family is allowed in Lua mode) come after the
    balancer, as nginx needs keepalive to wrap the balancer it follows.
    """
    lines = [f"upstream {upstream.name} {{"]
    lines.extend(_file_line(server) for server in upstream.servers)
    lines.append(f'    balancer_by_lua_block {{ require("reloader_balancer").balance("{upstream.name}") }}')
    lines.extend(f"    {directive};" for directive in upstream.directives)
    lines.append("}")
    return "\n".join(lines) + "\n"
