"""Apache Dubbo 2.x interface-level registry: ``/dubbo/<interface>/providers``.

Each provider registers one child whose *name* is its URL, URL-encoded (Java's
``URLEncoder``: ``%3A%2F%2F`` for ``://``, ``+`` for a space)::

    dubbo%3A%2F%2F10.0.0.5%3A20880%2Fcom.foo.Svc%3Fanyhost%3Dtrue%26weight%3D50

The child data is not used (ZkClient/Curator put the registering host's IP or
nothing there). Host and port come from the URL, ``weight`` defaults to 100 as
in Dubbo, ``disabled=true`` (or ``enabled=false`` without ``disabled``) leaves
the provider out, and only URLs of the configured protocol (default
``dubbo``) count: a provider that also exports ``rest://`` or ``tri://`` is
quietly ignored for those. One provider registered under several protocols or
versions for one host:port is merged downstream (the higher weight wins).
"""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import unquote_plus

from reloader.addresses import InvalidAddress, split_hostport
from reloader.formats._common import MAX_CHILD_NAME, make_server, preview, with_labels
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip

DEFAULT_WEIGHT = 100

# An encoded "scheme://" at the start of the child name.
_ENCODED_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,31}%3[Aa]%2[Ff]%2[Ff]")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31})://(?P<rest>.*)$", re.DOTALL)
_TRUE = "true"
_FALSE = "false"


def _query(text: str) -> dict[str, str]:
    # Dubbo's URL.valueOf splits on & and = without further decoding; so do we.
    params: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        params[key.strip()] = value.strip()
    return params


def _split_authority(authority: str) -> tuple[str, str] | Skip:
    """(host, port) from ``[user:pass@]host:port``; an unbracketed IPv6 host splits at the last colon."""
    hostport = authority.rpartition("@")[2]  # credentials are never needed, nor logged
    if hostport.startswith("["):
        try:
            bracketed_host, port_number = split_hostport(hostport)
        except InvalidAddress as error:
            return Skip(f"dubbo provider: {str(error)[:160]}")
        return bracketed_host, str(port_number)
    host, sep, port = hostport.rpartition(":")
    if not sep:
        return Skip(f"provider address {preview(hostport, 60)} has no port")
    return host, port


class DubboFormat(InstanceFormat):
    name: ClassVar[str] = "dubbo"
    written_by: ClassVar[str] = "Apache Dubbo 2.x providers (/dubbo/<interface>/providers)"
    from_name: ClassVar[bool] = True

    def detect(self, child: str, data: bytes) -> bool:
        return _ENCODED_SCHEME.match(child) is not None

    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        if len(child) > MAX_CHILD_NAME:
            return Skip(f"child name too long ({len(child)} characters)")
        try:
            url = unquote_plus(child, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            return Skip("child name does not URL-decode to UTF-8")
        match = _URL.match(url)
        if not match:
            return Skip(f"child name is not a URL-encoded provider URL: {preview(url)}")
        scheme = match.group("scheme").lower()
        wanted = (options.protocol or "dubbo").lower()
        if scheme != wanted:
            return Skip(f"protocol {scheme!r} is not the configured {wanted!r}", quiet=True)
        rest = match.group("rest")
        address_path, _, query = rest.partition("?")
        authority = address_path.partition("/")[0]
        split = _split_authority(authority)
        if isinstance(split, Skip):
            return split
        host, port = split
        params = _query(query)
        disabled = params.get("disabled")
        if disabled is not None:
            if disabled.lower() == _TRUE:
                return Skip("provider is disabled (disabled=true)")
        elif params.get("enabled", "").lower() == _FALSE:
            return Skip("provider is disabled (enabled=false)")
        # Like Dubbo's URL.getParameter: an empty value counts as absent.
        weight: object = params.get("weight") or params.get("default.weight") or DEFAULT_WEIGHT
        # The URL parameters (zone=, group=, ...) are what ``prefer`` matches (reloader.traffic).
        return with_labels(make_server(host, port, weight, what="dubbo provider"), params)


FORMAT = DubboFormat()
