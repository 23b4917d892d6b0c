"""Validation of hosts and ports that arrive from the registry.

Everything that ends up in an nginx file or a dyups body passes through here
first. The rules are strict on purpose: a host is an IPv4 address, an IPv6
address or an RFC 1123 host name, so no character that nginx would read as
syntax (``;``, ``{``, ``}``, ``$``, white space) can ever get through.
"""

from __future__ import annotations

import ipaddress
import re

# Matched with fullmatch: a pattern ending in `$` would also accept a
# trailing newline, which must never reach an nginx file.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# host:port or [v6]:port, as found in child names and text data.
# A dotted-quad IPv4 address exactly as ipaddress prints it (no leading
# zeros, each octet 0-255): the common case, accepted without the cost of
# parsing it with ipaddress.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_HOSTPORT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})")


class InvalidAddress(ValueError):
    """A host or port that must not be served; the message says why."""


def normalize_host(host: str) -> str:
    """Return ``host`` in the bare form the model stores, or raise InvalidAddress.

    IPv6 addresses lose any brackets and are compressed (``::1``); IPv4
    addresses and host names are returned as given, host names lowercased
    because nginx and DNS treat them so.
    """
    if not isinstance(host, str) or not host:
        raise InvalidAddress("empty host")
    if _CANONICAL_IPV4.fullmatch(host):
        return host
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        pass
    else:
        if candidate is not host and not isinstance(address, ipaddress.IPv6Address):
            raise InvalidAddress(f"{host!r}: only IPv6 addresses take brackets")
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            # A zone index (fe80::1%eth0) only means something on the registering host.
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        return str(address)
    if candidate is not host:
        raise InvalidAddress(f"{host!r} is bracketed but not an IPv6 address")
    return _normalize_hostname(host)


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IP address (as the model stores it), not a host name."""
    if _CANONICAL_IPV4.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _normalize_hostname(host: str) -> str:
    name = host.removesuffix(".")
    if len(name) > 253:
        raise InvalidAddress(f"host name longer than 253 characters: {host[:40]!r}...")
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidAddress(f"{host!r} is not an IP address or an RFC 1123 host name")
    # An all-numeric dotted name is a malformed IPv4 address (999.1.1.1), not a host name.
    if labels[-1].isdigit():
        raise InvalidAddress(f"{host!r} is not a valid IPv4 address")
    return name.lower()


def validate_port(port: object) -> int:
    """Return ``port`` as an int in 1..65535, or raise InvalidAddress.

    Accepts an int or a string of digits (some registries store ports as text);
    rejects bools, floats and anything else.
    """
    if isinstance(port, bool):
        raise InvalidAddress(f"port {port!r} is not a number")
    if isinstance(port, str):
        if not port.isascii() or not port.isdigit() or len(port) > 5:
            raise InvalidAddress(f"port {port!r} is not a number")
        port = int(port)
    if not isinstance(port, int):
        raise InvalidAddress(f"port {port!r} is not a number")
    if not 1 <= port <= 65535:
        raise InvalidAddress(f"port {port} is outside 1-65535")
    return port


def split_hostport(text: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` into a validated (host, port)."""
    match = _HOSTPORT.fullmatch(text)
    if not match:
        raise InvalidAddress(f"{text[:80]!r} is not host:port")
    host = match.group("v6") or match.group("host")
    if match.group("v6") is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidAddress(f"{text[:80]!r} has brackets around a non-IPv6 host") from None
    return normalize_host(host), validate_port(match.group("port"))


def looks_like_hostport(text: str) -> bool:
    """True when ``text`` has the shape of host:port (its parts may still be invalid)."""
    return _HOSTPORT.fullmatch(text) is not None
