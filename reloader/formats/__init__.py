"""Registry formats an instance can arrive in, and ``auto`` detection.

Each format is a small module behind :class:`~reloader.formats.base.InstanceFormat`.
:data:`FORMATS` lists them in ``auto`` order: the first whose ``detect``
accepts a child parses it. A forced format (the per-znode ``format:``
setting) parses without detection.

The pipeline calls :func:`parse_instance`; the config validator checks
``format:`` against :data:`FORMAT_NAMES`.
"""

from __future__ import annotations

from reloader.formats import childname, curator, dubbo, generic, serverset, smartstack, text, yarn
from reloader.formats._common import MAX_CHILD_NAME, MAX_DATA_BYTES, MAX_WEIGHT, json_object, preview
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip

AUTO = "auto"

#: Every format, in ``auto`` detection order (first match wins).
FORMATS: tuple[InstanceFormat, ...] = (
    dubbo.FORMAT,  # child name is a URL-encoded provider URL
    smartstack.FORMAT,  # child name is base64_<len>_<json>_<seq>
    serverset.FORMAT,  # data JSON with serviceEndpoint
    curator.FORMAT,  # data JSON with address + port/sslPort
    yarn.FORMAT,  # data JSON with type JSONServiceRecord
    generic.FORMAT,  # data JSON with host + port
    text.FORMAT,  # data host:port[:weight], name not host:port
    childname.FORMAT,  # name host:port, data optional weight
)

#: Valid values of the per-znode ``format:`` setting.
FORMAT_NAMES: tuple[str, ...] = (AUTO, *(fmt.name for fmt in FORMATS))

#: The formats that read the instance from the child's name: the ones a
#: znode with ``child_data: ignore`` may use (``auto`` then detects among them).
NAME_FORMATS: tuple[str, ...] = tuple(fmt.name for fmt in FORMATS if fmt.from_name)

#: Valid values of the per-znode ``port_field:`` setting (curator format).
PORT_FIELDS: tuple[str, ...] = ("port", "sslPort")

_BY_NAME: dict[str, InstanceFormat] = {fmt.name: fmt for fmt in FORMATS}


def get_format(name: str) -> InstanceFormat:
    """The format forced by ``format: <name>``; KeyError for ``auto`` or an unknown name."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown format {name!r} (known: {', '.join(_BY_NAME)})") from None


def detect_format(child: str, data: bytes | None) -> InstanceFormat | None:
    """The format ``auto`` would use for this child, or None when none matches."""
    data = b"" if data is None else bytes(data)
    for fmt in FORMATS:
        if fmt.detect(child, data):
            return fmt
    return None


def _describe(child: str, data: bytes) -> str:
    if not data:
        seen = "no data"
    elif len(data) > MAX_DATA_BYTES:
        seen = f"{len(data)} bytes of data"
    elif data.lstrip()[:1] == b"{":
        obj = json_object(data)
        if isinstance(obj, Skip):
            seen = obj.reason
        else:
            keys = ", ".join(preview(key, 20) for key in list(obj)[:8])
            seen = f"data is a JSON object with keys {keys or '(none)'}{' ...' if len(obj) > 8 else ''}"
    else:
        seen = f"data {preview(data, 40)}"
    return f"unrecognised child: name {preview(child, 60)}, {seen}"


def parse_instance(
    child: str, data: bytes | None, format_name: str = AUTO, options: FormatOptions = FormatOptions()
) -> ParseResult:
    """Parse one child with the given format (``auto`` detects). Never raises.

    Returns the :class:`~reloader.model.Server` the child describes, or a
    :class:`Skip` with a short reason (registry text in it is truncated and
    repr-quoted, never dumped).
    """
    fmt: InstanceFormat | None = None
    try:
        if not isinstance(child, str):
            return Skip(f"child name {preview(child, 40)} is not a string")
        data = b"" if data is None else bytes(data)
        if format_name == AUTO:
            fmt = detect_format(child, data)
            if fmt is None:
                return Skip(_describe(child, data))
        else:
            fmt = _BY_NAME.get(format_name)
            if fmt is None:
                return Skip(f"unknown format {preview(format_name, 40)}")
        return fmt.parse(child, data, options)
    except Exception as error:  # last resort: a parser bug must not stop the other children
        where = fmt.name if fmt is not None else format_name
        return Skip(f"{where} format failed on this child ({type(error).__name__})")


__all__ = [
    "AUTO",
    "FORMATS",
    "FORMAT_NAMES",
    "NAME_FORMATS",
    "PORT_FIELDS",
    "MAX_CHILD_NAME",
    "MAX_DATA_BYTES",
    "MAX_WEIGHT",
    "FormatOptions",
    "InstanceFormat",
    "ParseResult",
    "Skip",
    "detect_format",
    "get_format",
    "parse_instance",
]
