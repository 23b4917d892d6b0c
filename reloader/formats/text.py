"""Text data ``host:port[:weight]`` (LINE Armeria's ZooKeeper registry style).

Armeria's ``ZooKeeperUpdatingListener`` (legacy codec) writes one child per
server, named after it (``192.168.1.10_8080``), with the address as data::

    192.168.1.10:8080:100

The weight is optional (1 when absent; 0 means "down"). An IPv6 host is
bracketed: ``[2001:db8::7]:8080:10``. Surrounding white space (a trailing
newline from ``echo``) is ignored. ``auto`` only picks this format when the
child name is not itself ``host:port`` (that is the ``name`` layout, whose
data is a bare weight).
"""

from __future__ import annotations

import re
from typing import ClassVar

from reloader.addresses import InvalidAddress, looks_like_hostport, split_hostport
from reloader.formats._common import decode_data, make_server, preview
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip

# host:port or [v6]:port, then an optional :weight. The parts are validated later.
_TEXT = re.compile(
    r"^(?:\[(?P<v6>[^\]\s]{1,64})\]|(?P<host>[^:\[\]\s]{1,253})):(?P<port>[^:\s]{1,16})(?::(?P<weight>[^:\s]{0,16}))?\Z"
)
_MAX_TEXT = 512
_WHITESPACE = " \t\r\n"


def _match(data: bytes) -> re.Match[str] | None:
    if not data or len(data) > _MAX_TEXT:
        return None
    text = decode_data(data)
    if isinstance(text, Skip):
        return None
    return _TEXT.match(text.strip(_WHITESPACE))


class TextFormat(InstanceFormat):
    name: ClassVar[str] = "text"
    written_by: ClassVar[str] = "LINE Armeria (ZooKeeperUpdatingListener, legacy codec), scripts"

    def detect(self, child: str, data: bytes) -> bool:
        return not looks_like_hostport(child) and _match(data) is not None

    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        text = decode_data(data)
        if isinstance(text, Skip):
            return text
        match = _match(data)
        if match is None:
            return Skip(f"data is not host:port[:weight]: {preview(text.strip(_WHITESPACE))}")
        try:
            host, port = split_hostport(match.string[: match.end("port")])
        except InvalidAddress as error:
            return Skip(str(error)[:160])
        weight = match.group("weight")
        return make_server(host, port, 1 if weight is None else weight)


FORMAT = TextFormat()
