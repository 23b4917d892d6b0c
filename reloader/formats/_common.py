"""Helpers every format shares: limits, strict decoding, weights, building servers.

Each helper either returns a value or returns a :class:`Skip` (never raises
for bad input), so the format modules read as a short list of rules:
``value = helper(...); if isinstance(value, Skip): return value``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from functools import lru_cache
from typing import Any

from reloader.addresses import InvalidAddress, normalize_host, validate_port
from reloader.formats.base import Skip
from reloader.model import Server
from reloader.traffic import usable_labels

#: Child data larger than this is not parsed (a registry entry is a few hundred bytes).
MAX_DATA_BYTES = 64 * 1024
#: Longest child name that is parsed. Nerve's path encoding allows 65536 base64
#: characters plus its ``base64_<len>_`` prefix and ``_<seq>`` suffix.
MAX_CHILD_NAME = 66 * 1024
#: Highest weight served. nginx itself takes any weight up to 2**63-1, but its
#: round-robin sums weights of all peers, so an absurd registry value is a bug
#: upstream and is skipped rather than rendered.
MAX_WEIGHT = 1_000_000

_PREVIEW = 60

# What a normalised host can look like: IPv4, compressed IPv6, or an RFC 1123
# name. A last check on every host a format returns, independent of
# reloader.addresses (whose ``$`` anchors let a trailing newline through).
_SAFE_HOST = re.compile(r"[a-z0-9.:-]{1,253}")


def is_safe_host(host: str) -> bool:
    """True when ``host`` holds only characters nginx reads as part of an address."""
    return _SAFE_HOST.fullmatch(host) is not None


def preview(text: object, limit: int = _PREVIEW) -> str:
    """A short, safe repr of registry text for a Skip reason (never the whole value)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text)
    shown = repr(text[:limit] if isinstance(text, (str, bytes)) else text)
    if isinstance(text, (str, bytes)) and len(text) > limit:
        shown += f"... ({len(text)} {'bytes' if isinstance(text, bytes) else 'chars'})"
    return shown[: limit * 4 + 40]


def decode_data(data: bytes) -> str | Skip:
    """The child data as text: size-capped and strictly UTF-8."""
    if len(data) > MAX_DATA_BYTES:
        return Skip(f"data too large ({len(data)} bytes, limit {MAX_DATA_BYTES})")
    try:
        return data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as error:
        return Skip(f"data is not UTF-8 (bad byte at offset {error.start})")


@lru_cache(maxsize=64)
def _load_json(data: bytes) -> tuple[Any, str]:
    # Cached because ``auto`` asks several JSON formats about the same data.
    # Callers never mutate the result.
    text = decode_data(data)
    if isinstance(text, Skip):
        return None, text.reason
    try:
        return json.loads(text), ""
    except RecursionError:
        return None, "data is JSON nested too deeply"
    except ValueError as error:  # JSONDecodeError, and too-long integer literals
        return None, f"data is not JSON ({str(error)[:80]})"


def json_object(data: bytes) -> dict | Skip:
    """The child data parsed as a JSON object, or a Skip saying why it is not one."""
    if not data:
        return Skip("data is empty, expected a JSON object")
    value, error = _load_json(data)
    if error:
        return Skip(error)
    if not isinstance(value, dict):
        return Skip(f"data is JSON {type(value).__name__}, expected an object")
    return value


def peek_json_object(data: bytes) -> dict | None:
    """For ``detect``: the JSON object in ``data``, or None. Cheap on non-JSON data."""
    if not data or data.lstrip()[:1] != b"{":
        return None
    value = json_object(data)
    return value if isinstance(value, dict) else None


def parse_weight(value: object, what: str = "weight") -> tuple[int, bool] | Skip:
    """A registry weight as (nginx weight, down).

    Accepts a non-negative integer or a string of ASCII digits. Weight 0 means
    "registered but take no traffic": nginx rejects ``weight=0``, so it becomes
    ``down`` with weight 1. Negative, fractional or non-numeric weights, and
    weights above :data:`MAX_WEIGHT`, are a Skip.
    """
    if isinstance(value, bool):
        return Skip(f"{what} {value!r} is not an integer")
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] == "-" else text
        if not digits.isascii() or not digits.isdigit():
            return Skip(f"{what} {preview(value, 20)} is not an integer")
        if digits != text:
            return Skip(f"{what} {preview(value, 20)} is negative")
        if len(digits) > 12:
            return Skip(f"{what} {preview(value, 20)} is above the limit {MAX_WEIGHT}")
        value = int(digits)
    if not isinstance(value, int):
        return Skip(f"{what} {preview(value, 20)} is not an integer")
    if value < 0:
        return Skip(f"{what} {value} is negative")
    if value > MAX_WEIGHT:
        return Skip(f"{what} {value} is above the limit {MAX_WEIGHT}")
    if value == 0:
        return 1, True
    return value, False


def make_server(host: object, port: object, weight: object = 1, *, what: str = "") -> Server | Skip:
    """A validated Server from registry values, or a Skip naming the bad value.

    ``weight`` goes through :func:`parse_weight` (so 0 gives a ``down`` server).
    """
    prefix = f"{what}: " if what else ""
    if not isinstance(host, str):
        return Skip(f"{prefix}host {preview(host, 30)} is not a string")
    if host.startswith("[") and ":" not in host:
        # normalize_host accepts "[10.0.0.1]"; brackets only ever belong around IPv6.
        return Skip(f"{prefix}{preview(host, 60)} is bracketed but not an IPv6 address")
    try:
        clean_host = normalize_host(host)
        clean_port = validate_port(port)
    except InvalidAddress as error:
        return Skip(f"{prefix}{str(error)[:160]}")
    if not is_safe_host(clean_host):
        return Skip(f"{prefix}host {preview(host, 60)} holds characters not allowed in an address")
    parsed = parse_weight(weight)
    if isinstance(parsed, Skip):
        return Skip(prefix + parsed.reason, parsed.quiet)
    clean_weight, down = parsed
    return Server(host=clean_host, port=clean_port, weight=clean_weight, down=down)


def host_port_weight(obj: dict, *, what: str = "") -> Server | Skip:
    """The generic ``{"host": ..., "port": ..., "weight": ...}`` object (Nerve and friends)."""
    for key in ("host", "port"):
        if key not in obj:
            return Skip(f"{what + ': ' if what else ''}JSON object has no {key!r}")
    weight = obj.get("weight", 1)
    if weight is None:
        weight = 1
    return make_server(obj["host"], obj["port"], weight, what=what)


def with_labels(server: Server | Skip, metadata: object) -> Server | Skip:
    """``server`` carrying the registry's metadata as labels (see :func:`reloader.traffic.usable_labels`)."""
    if isinstance(server, Skip):
        return server
    labels = usable_labels(metadata)
    return replace(server, labels=labels) if labels else server
