"""The classic layout: the child *name* is ``host:port`` or ``[v6]:port``.

This is what shell scripts, ``zkCli.sh create -e /svc/web/10.0.0.2:8080``
and many in-house agents register. Data that is all digits is the weight (0
means "down"). Any other data is ignored: Curator's ``create()`` stores the
registering host's IP there by default, and older ZkClient-based agents store
Java-serialised bytes, neither of which is a weight.
"""

from __future__ import annotations

from typing import ClassVar

from reloader.addresses import InvalidAddress, looks_like_hostport, split_hostport
from reloader.formats._common import MAX_CHILD_NAME, make_server, preview
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip

_MAX_WEIGHT_DATA = 32
_WHITESPACE = b" \t\r\n"


def _weight(data: bytes) -> object:
    """The weight the data holds: its digits, or 1 when the data is not a bare number."""
    text = data.strip(_WHITESPACE)
    if text and len(text) <= _MAX_WEIGHT_DATA and text.isdigit():  # bytes.isdigit is ASCII-only
        return text.decode("ascii")
    return 1


class ChildNameFormat(InstanceFormat):
    name: ClassVar[str] = "name"
    written_by: ClassVar[str] = "zkCli.sh and shell scripts, in-house agents (classic host:port children)"
    from_name: ClassVar[bool] = True

    def detect(self, child: str, data: bytes) -> bool:
        return looks_like_hostport(child)

    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        if len(child) > MAX_CHILD_NAME or not looks_like_hostport(child):
            return Skip(f"child name is not host:port: {preview(child)}")
        try:
            host, port = split_hostport(child)
        except InvalidAddress as error:
            return Skip(str(error)[:160])
        return make_server(host, port, _weight(data))


FORMAT = ChildNameFormat()
