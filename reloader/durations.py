"""Durations in the config: a number of seconds, or a string with a unit.

:func:`parse_duration` reads every duration the config has (``2``, ``0.5``,
``"500ms"``, ``"2s"``, ``"1m"``, ``"1h"``) into seconds; :func:`nginx_time`
writes one back in nginx's own syntax for a directive or server parameter.
"""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*(ms|s|m|h)?\s*\Z")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds for ``2``, ``0.5``, ``"500ms"``, ``"2s"``, ``"1m"``, ``"1h"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"{str(value)[:20]}... is too large for a duration") from None
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        shown = repr(value)[:60]
        raise ValueError(f"{shown} is not a duration (use seconds, or a string like 500ms, 2s, 1m)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a non-negative duration")
    return seconds


def nginx_time(seconds: float, *, milliseconds: bool = True) -> str:
    """``seconds`` in nginx time syntax: ``"10s"``, or ``"500ms"`` when not whole seconds.

    With ``milliseconds=False`` (nginx reads some values, such as the server
    parameter ``fail_timeout``, in whole seconds only) a fractional value is a
    ValueError, as is a value that does not come to a whole millisecond.
    """
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6 * max(1.0, seconds * 1000):
        raise ValueError(f"{seconds:g}s is not a whole number of milliseconds")
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    if not milliseconds:
        raise ValueError(f"{seconds:g}s is not a whole number of seconds (nginx reads this value in seconds)")
    return f"{millis}ms"
