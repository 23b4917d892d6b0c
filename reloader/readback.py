"""Read nginx upstream text back into the model.

Used at start-up, where existing upstream files (``<name>.upstream``, and
``<name>.stream`` for a TCP upstream: one syntax) are the last known good
state, and by reconciliation, where the live state comes from the dyups
interface. Everything read is validated exactly like registry data: a
hand-edited or corrupted file yields a clear error, never an unsafe server.
"""

from __future__ import annotations

import re
from dataclasses import replace

from reloader.addresses import InvalidAddress, is_ip_literal, normalize_host, split_hostport
from reloader.model import SERVER_ORDER, Server, Upstream

_BLOCK = re.compile(r"^\s*upstream\s+(?P<name>\S+)\s*\{(?P<body>[^{}]*)\}\s*$", re.DOTALL)
_LUA_HOOK = re.compile(r"\s*balancer_by_lua_block\s*\{[^{}]*\}\s*")
# A server line as render._file_line writes it for an address resolved from a host name.
_NAMED_SERVER = re.compile(r"\s*server\s+(?P<address>\S+)[^#;]*;\s*#\s*(?P<name>[A-Za-z0-9.-]{1,253})\s*")
_PARAM = re.compile(r"(?P<key>[a-z_]+)(?:=(?P<value>[A-Za-z0-9.]+))?")


class ReadbackError(ValueError):
    """Text that does not describe a valid upstream; the message says where."""


def parse_server_statement(statement: str) -> Server:
    """Parse ``server ADDR [params]`` (without ``;``) into a Server.

    Parameters that nginx prints with their defaults in dyups' ``/detail``
    (``weight=1 max_fails=1 fail_timeout=10 backup=0 down=0``) are understood
    too, so that live state and desired state compare equal.
    """
    tokens = statement.split()
    if len(tokens) < 2 or tokens[0] != "server":
        raise ReadbackError(f"not a server statement: {statement[:80]!r}")
    try:
        host, port = split_hostport(tokens[1])
    except InvalidAddress as error:
        raise ReadbackError(str(error)) from None
    # Fields gathered first and the Server built once: a reconcile pass reads
    # tens of thousands of these.
    weight, backup, down = 1, False, False
    extra: list[tuple[str, str]] = []
    for token in tokens[2:]:
        match = _PARAM.fullmatch(token)
        if not match:
            raise ReadbackError(f"bad server parameter {token[:40]!r}")
        key, value = match.group("key"), match.group("value")
        if key == "weight" and value is not None and value.isdigit():
            weight = int(value)
        elif key == "backup":
            backup = value in (None, "1")
        elif key == "down":
            down = value in (None, "1")
        else:
            extra.append((key, value or ""))
    return Server(host=host, port=port, weight=weight, down=down, backup=backup, params=tuple(extra))


def parse_upstream_block(text: str) -> Upstream:
    """Parse one ``upstream NAME { ... }`` block as this project renders it."""
    # Lua-mode files carry the balancer hook on a line of its own (see
    # render.render_file_lua); it is how the file is served, not what it holds.
    without_comments = "\n".join(
        line.split("#", 1)[0] for line in text.splitlines() if not _LUA_HOOK.fullmatch(line)
    )
    match = _BLOCK.match(without_comments)
    if not match:
        raise ReadbackError("expected exactly one 'upstream NAME { ... }' block")
    servers: list[Server] = []
    directives: list[str] = []
    for raw in match.group("body").split(";"):
        statement = " ".join(raw.split())
        if not statement:
            continue
        if statement.startswith("server "):
            servers.append(parse_server_statement(statement))
        else:
            directives.append(statement)
    if not servers:
        raise ReadbackError("the upstream has no servers")
    names = _names(text)
    if names:
        servers = [replace(server, name=names.get(server.endpoint, "")) for server in servers]
    return Upstream(
        name=match.group("name"),
        servers=tuple(sorted(servers, key=SERVER_ORDER)),
        directives=tuple(directives),
        live_count=sum(1 for server in servers if not server.backup),
    )


def _names(text: str) -> dict[tuple[str, int], str]:
    """Per endpoint, the host name its file line names in a comment (see render._file_line)."""
    names: dict[tuple[str, int], str] = {}
    for line in text.splitlines():
        match = _NAMED_SERVER.fullmatch(line)
        if not match:
            continue
        try:
            endpoint = split_hostport(match.group("address"))
            name = normalize_host(match.group("name"))
        except InvalidAddress:
            continue
        if not is_ip_literal(name):
            names[endpoint] = name
    return names
