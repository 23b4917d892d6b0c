"""Traffic options of an upstream: ``slow_start``, ``panic_threshold`` and ``prefer``.

This module parses and validates them (every error names the key through the
config's collector) and holds the one slow-start formula the daemon uses,
Envoy's::

    weight * max(min_weight, time_factor ** (1 / aggression))
    time_factor = max(elapsed, 1) / window

The Lua balancer computes the same formula per request
(``reloader/nginx/lua/reloader_balancer.lua``); the dyups adapter uses
:func:`ramp_factor` for each of its steps. Nothing here has state or I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reloader.durations import parse_duration

#: The balancing methods nginx refuses ``slow_start`` and ``backup`` with.
METHODS_WITHOUT_RAMP: tuple[str, ...] = ("hash", "ip_hash", "random")
#: The longest slow-start window (the Lua module refuses longer ones too).
MAX_WINDOW = 3600.0
MAX_AGGRESSION = 100.0
#: Metadata keys and values ``prefer`` may match (short, printable: they come from the registry).
_LABEL = re.compile(r"[A-Za-z0-9_.:/-]{1,63}")
_SLOW_START_KEYS = {"window", "min_weight", "aggression"}


@dataclass(frozen=True)
class SlowStart:
    """Envoy's slow-start parameters: seconds, a fraction (0 to 1), and a positive factor."""

    window: float
    min_weight: float = 0.1
    aggression: float = 1.0


def ramp_factor(slow_start: SlowStart, elapsed: float) -> float:
    """The share of its weight a server added ``elapsed`` seconds ago gets (1.0 once the window is over)."""
    if elapsed >= slow_start.window:
        return 1.0
    time_factor = max(elapsed, 1.0) / slow_start.window
    return min(1.0, max(slow_start.min_weight, time_factor ** (1.0 / slow_start.aggression)))


def _share(value: Any, what: str) -> float:
    fraction: float | None = None
    if isinstance(value, str) and (match := re.fullmatch(r"\s*([0-9]{1,3}(?:\.[0-9]{1,6})?)\s*%\s*", value)):
        fraction = float(match.group(1)) / 100
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        fraction = float(value)
    if fraction is None or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{value!r:.60} is not {what}: write a percentage from 0% to 100% (like \"10%\") "
                         "or a number from 0 to 1 (like 0.1)")
    return fraction


def parse_slow_start(value: Any) -> SlowStart | None:
    """``{window: 60s, min_weight: 10%, aggression: 1.0}``; ``false``/``null`` turns it off."""
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping like {window: 60s, min_weight: 10%, aggression: 1.0}, or false")
    unknown = sorted(str(key) for key in value if key not in _SLOW_START_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r:.60} (known: aggression, min_weight, window)")
    if "window" not in value:
        raise ValueError("window is required (like window: 60s)")
    try:
        window = parse_duration(value["window"])
    except ValueError as error:
        raise ValueError(f"window: {error}") from None
    if not 1.0 <= window <= MAX_WINDOW:
        raise ValueError(f"window: must be from 1 s to {MAX_WINDOW:g} s")
    min_weight = _share(value.get("min_weight", 0.1), "a minimum weight")
    if min_weight <= 0:
        raise ValueError("min_weight: must be more than 0% (a server at weight 0 gets no traffic at all)")
    aggression = value.get("aggression", 1.0)
    if (isinstance(aggression, bool) or not isinstance(aggression, (int, float)) or not math.isfinite(aggression)
            or not 0 < aggression <= MAX_AGGRESSION):
        raise ValueError(f"aggression: must be a number above 0 and at most {MAX_AGGRESSION:g}")
    return SlowStart(window=window, min_weight=min_weight, aggression=float(aggression))


def parse_panic_threshold(value: Any) -> float | None:
    """``50%`` or ``0.5``; ``false``/``null``/``0`` turns it off."""
    if value is None or value is False:
        return None
    fraction = _share(value, "a share of the usable servers")
    return fraction or None


def parse_prefer(value: Any) -> tuple[tuple[str, str], ...]:
    """``{zone: dc1}``: metadata every preferred instance must have, as sorted (key, value) pairs."""
    if value is None or value is False:
        return ()
    if not isinstance(value, Mapping) or not value:
        raise ValueError("must be a mapping of registry metadata, like {zone: dc1}")
    pairs = []
    for key, wanted in value.items():
        if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
            wanted = str(wanted)
        if not isinstance(key, str) or not _LABEL.fullmatch(key):
            raise ValueError(f"key {key!r:.60} must be 1 to 63 letters, digits or _.:/-")
        if not isinstance(wanted, str) or not _LABEL.fullmatch(wanted):
            raise ValueError(f"{key}: value {wanted!r:.60} must be 1 to 63 letters, digits or _.:/-")
        pairs.append((key, wanted))
    return tuple(sorted(pairs))


def check_traffic(
    slow_start: SlowStart | None, prefer: tuple[tuple[str, str], ...], directives: tuple[str, ...],
) -> str | None:
    """Why these options cannot work with these directives (None when they can); names the key."""
    for directive in directives:
        method = directive.split(" ", 1)[0]
        if method in METHODS_WITHOUT_RAMP:
            if slow_start is not None:
                return (f"slow_start cannot be combined with '{method}': nginx refuses slow start with hash, "
                        "ip_hash and random; drop slow_start or use round-robin")
            if prefer:
                return (f"prefer cannot be combined with '{method}': nginx refuses backup servers with hash, "
                        "ip_hash and random; drop prefer or use round-robin")
    return None


def usable_labels(raw: Any) -> tuple[tuple[str, str], ...]:
    """Registry metadata as sorted (key, value) pairs: strings and numbers only, the rest is ignored.

    The registry is untrusted: at most 64 pairs, keys and values as ``prefer`` allows them.
    """
    if not isinstance(raw, Mapping):
        return ()
    pairs = []
    for key, value in raw.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(key, str) and isinstance(value, str) and _LABEL.fullmatch(key) and _LABEL.fullmatch(value):
            pairs.append((key, value))
            if len(pairs) == 64:
                break
    return tuple(sorted(pairs))


#: dyups: a ramp goes out in this many steps over the window (each at least
#: MIN_STEP seconds long), every weight scaled by RAMP_SCALE while a server of
#: the upstream ramps, so that a 1 % minimum of weight 1 is still weight 1.
RAMP_STEPS = 20
MIN_STEP = 0.25
RAMP_SCALE = 100


def ramp_step(slow_start: SlowStart, elapsed: float) -> int | None:
    """The step a server added ``elapsed`` seconds ago is in (None once its ramp is over)."""
    if elapsed >= slow_start.window:
        return None
    step = max(slow_start.window / RAMP_STEPS, MIN_STEP)
    return int(max(elapsed, 0.0) // step)


def stepped_weights(
    slow_start: SlowStart, weights: Mapping[tuple[str, int], int], added: Mapping[tuple[str, int], float], now: float,
) -> tuple[dict[tuple[str, int], int], tuple[Any, ...] | None]:
    """Integer weights for this moment of the ramps, and a key that changes with each step.

    Each ramping server gets Envoy's weight at the middle of its current step
    (so the stepped share stays within half a step of the smooth ramp); while
    any server ramps every weight is scaled by :data:`RAMP_SCALE`. With no
    ramp in progress the weights are returned as they are, with key None.
    """
    steps = {endpoint: ramp_step(slow_start, now - at) for endpoint, at in added.items() if endpoint in weights}
    steps = {endpoint: step for endpoint, step in steps.items() if step is not None}
    if not steps:
        return dict(weights), None
    length = max(slow_start.window / RAMP_STEPS, MIN_STEP)
    out = {}
    for endpoint, weight in weights.items():
        step = steps.get(endpoint)
        factor = 1.0 if step is None else ramp_factor(slow_start, (step + 0.5) * length)
        out[endpoint] = max(1, round(weight * RAMP_SCALE * factor))
    return out, tuple(sorted(steps.items()))
