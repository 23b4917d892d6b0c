"""Validation of per-upstream options: server_params, upstream_directives, backup_servers.

Everything here ends up verbatim in an nginx file or a dyups body, so the
rules are an allow-list, checked token by token: no value can carry ``;``,
``{``, ``}``, quotes, ``#``, a backslash or a line break into nginx. Each
function raises ValueError with a message that names what is wrong; the
config loader adds the key path.

The rules follow the open-source nginx that the project targets (Debian's
1.22), checked with ``nginx -t`` in ``tests/test_options.py``.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping

from reloader.addresses import InvalidAddress, split_hostport
from reloader.durations import nginx_time, parse_duration
from reloader.formats._common import is_safe_host
from reloader.model import Server

#: Largest configured weight (the same limit registry weights have).
MAX_WEIGHT = 1_000_000
_MAX_COUNT = 2_147_483_647
_MAX_SECONDS = 86_400.0

#: server_params names that are accepted, in the order they are documented.
SERVER_PARAMS: tuple[str, ...] = ("weight", "max_fails", "fail_timeout", "max_conns", "down")
#: server parameters that only NGINX Plus (or newer nginx) understands.
_PLUS_ONLY = ("slow_start", "resolve", "route", "service", "drain")

#: Balancing methods, of which an upstream has at most one.
BALANCING_METHODS: tuple[str, ...] = ("least_conn", "ip_hash", "random", "hash")
#: Every upstream directive that is accepted.
UPSTREAM_DIRECTIVES: tuple[str, ...] = (
    *BALANCING_METHODS,
    "keepalive",
    "keepalive_timeout",
    "keepalive_requests",
    "zone",
)
#: Methods that nginx refuses to combine with ``backup`` servers.
METHODS_WITHOUT_BACKUP: tuple[str, ...] = ("hash", "ip_hash", "random")

# A hash key: literal characters nginx reads as plain text, and $variables.
_HASH_KEY = re.compile(r"^(?:[A-Za-z0-9_.:/=&?%@,+~!*\[\]-]|\$[A-Za-z_][A-Za-z0-9_]*)+\Z")
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_SIZE = re.compile(r"^([0-9]{1,10})([kKmM]?)\Z")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
# nginx refuses a zone smaller than 8 memory pages (32k with 4 KiB pages).
_MIN_ZONE = 32 * 1024
_MAX_ZONE = 1024 * 1024 * 1024
_DIGITS = re.compile(r"^[0-9]{1,10}\Z")


# Bounded at every level: a value from a hostile file (a huge string, a deeply
# nested or alias-shared structure) is never formatted in full for a message.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, at a cost bounded whatever the value's size."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_shown = shown

#: At most this many problems of one value are listed; the rest are counted.
MAX_LISTED_PROBLEMS = 20


class OptionErrors(ValueError):
    """Every problem of one value, so that all are reported at once.

    Each entry of ``problems`` names its place when it has one: ``"[2]: ..."``
    for a list entry. At most :data:`MAX_LISTED_PROBLEMS` are kept, followed
    by a count of the others.
    """

    def __init__(self, problems: list[str]) -> None:
        if len(problems) > MAX_LISTED_PROBLEMS:
            hidden = len(problems) - MAX_LISTED_PROBLEMS
            problems = [*problems[:MAX_LISTED_PROBLEMS], f"... and {hidden} more problems in this value"]
        self.problems = problems
        super().__init__("; ".join(problems))


def _raise_collected(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise OptionErrors(problems)


def _integer(name: str, value: object, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {_shown(value)}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _seconds(name: str, value: object, *, milliseconds: bool) -> str:
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if seconds > _MAX_SECONDS:
        raise ValueError(f"{name} must be at most 1 day (86400s), got {_shown(value)}")
    try:
        return nginx_time(seconds, milliseconds=milliseconds)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} is a flag: write '{name}: true' (got {_shown(value)})")
    return value


# ---------------------------------------------------------------------------
# server_params


def parse_server_params(value: object) -> tuple[tuple[str, str], ...]:
    """Validate a ``server_params`` mapping into (name, value) pairs, in the configured order.

    ``weight`` (1..1000000), ``max_fails`` and ``max_conns`` (integers >= 0),
    ``fail_timeout`` (a duration in whole seconds, rendered like ``10s``) and
    ``down: true`` (rendered as the flag ``down``, value ``""``). ``down:
    false`` is accepted and means "not set".

    Refused with an explanation: ``backup`` (it would make every registry
    server a backup, and nginx refuses an upstream without a non-backup
    server: list static backups under ``backup_servers``), and the NGINX Plus
    parameters (``slow_start``, ``resolve``, ``route``, ``service``,
    ``drain``), which the open-source nginx rejects.
    """
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of nginx server parameters, got {type(value).__name__}")
    params: list[tuple[str, str]] = []
    problems: list[str] = []
    for name, raw in value.items():
        try:
            params.extend(_server_param(name, raw))
        except ValueError as error:
            problems.append(str(error))
    _raise_collected(problems)
    return tuple(params)


def _server_param(name: object, raw: object) -> list[tuple[str, str]]:
    """The (name, value) pair of one server parameter, or none for ``down: false``."""
    params: list[tuple[str, str]] = []
    if not isinstance(name, str):
        raise ValueError(f"parameter name {_shown(name)} is not a string")
    if name == "weight":
        params.append((name, str(_integer(name, raw, 1, MAX_WEIGHT))))
    elif name in ("max_fails", "max_conns"):
        params.append((name, str(_integer(name, raw, 0, _MAX_COUNT))))
    elif name == "fail_timeout":
        params.append((name, _seconds(name, raw, milliseconds=False)))
    elif name == "down":
        if _flag(name, raw):
            params.append((name, ""))
    elif name == "backup":
        raise ValueError(
            "backup cannot be a server_params entry: it would mark every registry server as a "
            "backup, and nginx refuses an upstream with no non-backup server ('no servers in "
            "upstream'); list static backup servers under backup_servers instead"
        )
    elif name in _PLUS_ONLY:
        raise ValueError(
            f"{name} needs NGINX Plus: the open-source nginx rejects it ('invalid parameter \"{name}=...\"')"
        )
    else:
        raise ValueError(f"unknown server parameter {_shown(name)} (allowed: {', '.join(SERVER_PARAMS)})")
    return params


# ---------------------------------------------------------------------------
# upstream_directives


def _no_args(name: str, args: list[str]) -> str:
    if args:
        raise ValueError(f"{name} takes no arguments, got {_shown(' '.join(args))}")
    return name


def _random(args: list[str]) -> str:
    if args in ([], ["two"], ["two", "least_conn"]):
        return " ".join(["random", *args])
    raise ValueError(
        f"random takes no arguments, 'two' or 'two least_conn', got {_shown(' '.join(args))} "
        "(least_time is NGINX Plus only)"
    )


def _hash(args: list[str], allow_variables: bool) -> str:
    if not args or len(args) > 2 or (len(args) == 2 and args[1] != "consistent"):
        raise ValueError(f"hash takes a key and optionally 'consistent', got {_shown(' '.join(args))}")
    key = args[0]
    if not _HASH_KEY.match(key):
        raise ValueError(
            f"hash key {_shown(key)} may only hold letters, digits, $variables and the characters _.:/=&?%@,+~!*[]-"
        )
    if "$" in key and not allow_variables:
        raise ValueError(
            f"hash key {_shown(key)} uses an nginx variable, which is rejected while the dyups output "
            "is enabled: one upstream body with a variable breaks the worker of the 2020 master dyups "
            "build until nginx is reloaded. Variables are allowed in files-only and reload modes"
        )
    return " ".join(["hash", *args])


def _count(name: str, args: list[str], minimum: int, maximum: int) -> str:
    if len(args) != 1 or not _DIGITS.match(args[0]):
        raise ValueError(f"{name} takes one whole number, got {_shown(' '.join(args))}")
    number = int(args[0])
    if not minimum <= number <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, got {number}")
    return f"{name} {number}"


def _keepalive_timeout(args: list[str]) -> str:
    if len(args) != 1:
        raise ValueError(f"keepalive_timeout takes one duration, got {_shown(' '.join(args))}")
    return f"keepalive_timeout {_seconds('keepalive_timeout', args[0], milliseconds=True)}"


def _zone(args: list[str]) -> str:
    if len(args) != 2:
        raise ValueError(
            f"zone takes a name and a size (like 'zone backend 64k'), got {_shown(' '.join(args))}; "
            "nginx refuses a zone without a size unless another upstream gives it one"
        )
    name, size = args
    if not _ZONE_NAME.match(name):
        raise ValueError(f"zone name {_shown(name)} must match [A-Za-z0-9_-]+ (at most 64 characters)")
    match = _SIZE.match(size)
    if not match:
        raise ValueError(f"zone size {_shown(size)} must be a number of bytes with an optional k or m suffix")
    unit = match.group(2).lower()
    number = int(match.group(1))
    total = number * _SIZE_UNITS[unit]
    if not _MIN_ZONE <= total <= _MAX_ZONE:
        raise ValueError(f"zone size {size} must be between 32k (nginx's minimum) and 1024m")
    return f"zone {name} {number}{unit}"


def _one_directive(text: object, allow_variables: bool) -> tuple[str, str]:
    """(directive name, normalised directive) for one list entry."""
    if not isinstance(text, str):
        raise ValueError(f"each directive must be a string, got {_shown(text)}")
    stripped = text.strip(" ")
    if stripped.endswith(";") and ";" not in stripped[:-1]:
        raise ValueError(f"directive {_shown(text)} must not end with ';' (it is added when rendering)")
    bad = sorted({char for char in stripped if not ("!" <= char <= "~" or char == " ")})
    if bad:
        raise ValueError(f"directive {_shown(text)} contains {', '.join(map(repr, bad))}")
    for char in ";{}\"'\\#":
        if char in stripped:
            raise ValueError(f"directive {_shown(text)} contains {char!r}")
    tokens = stripped.split()
    if not tokens:
        raise ValueError("empty directive")
    name, args = tokens[0], tokens[1:]
    if name in ("least_conn", "ip_hash"):
        return name, _no_args(name, args)
    if name == "random":
        return name, _random(args)
    if name == "hash":
        return name, _hash(args, allow_variables)
    if name == "keepalive":
        return name, _count(name, args, 1, 100_000)
    if name == "keepalive_requests":
        return name, _count(name, args, 1, _MAX_COUNT)
    if name == "keepalive_timeout":
        return name, _keepalive_timeout(args)
    if name == "zone":
        return name, _zone(args)
    if name in ("least_time", "ntlm", "sticky", "queue", "state", "resolver", "resolver_timeout"):
        raise ValueError(f"{name} is not supported (NGINX Plus only, or not safe for dynamic upstreams)")
    raise ValueError(f"unknown upstream directive {_shown(name)} (allowed: {', '.join(UPSTREAM_DIRECTIVES)})")


def parse_upstream_directives(value: object, *, allow_variables: bool) -> tuple[str, ...]:
    """Validate an ``upstream_directives`` list into directive strings without ``;``.

    Accepted: ``least_conn``, ``ip_hash``, ``random [two [least_conn]]``,
    ``hash KEY [consistent]``, ``keepalive N``, ``keepalive_timeout T``,
    ``keepalive_requests N`` and ``zone NAME SIZE``; at most one balancing
    method and each directive at most once. The result has single spaces and
    normalised numbers, and the balancing method comes first: nginx silently
    drops an earlier ``keepalive`` when a method follows it ("load balancing
    method redefined").
    """
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of directive strings, got {type(value).__name__}")
    seen: dict[str, int] = {}
    method: str | None = None
    parsed: list[tuple[str, str]] = []
    problems: list[str] = []
    for index, text in enumerate(value):
        try:
            name, directive = _one_directive(text, allow_variables)
        except ValueError as error:
            problems.append(f"[{index}]: {error}")
            continue
        if name in seen:
            problems.append(f"[{index}]: {name} is already given at [{seen[name]}]")
            continue
        if name in BALANCING_METHODS:
            if method is not None:
                problems.append(f"[{index}]: {name}: only one balancing method is allowed, {method} is already given")
                continue
            method = name
        seen[name] = index
        parsed.append((name, directive))
    _raise_collected(problems)
    parsed.sort(key=lambda item: item[0] not in BALANCING_METHODS)  # stable: method first
    return tuple(directive for _, directive in parsed)


# ---------------------------------------------------------------------------
# backup_servers


def parse_backup_servers(value: object) -> tuple[Server, ...]:
    """Validate a ``backup_servers`` list of ``host:port`` / ``[v6]:port`` strings."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of 'host:port' strings, got {type(value).__name__}")
    servers: list[Server] = []
    seen: set[tuple[str, int]] = set()
    problems: list[str] = []
    for index, text in enumerate(value):
        if not isinstance(text, str):
            problems.append(f"[{index}]: must be a 'host:port' string, got {_shown(text)}")
            continue
        try:
            host, port = split_hostport(text.strip(" "))
        except InvalidAddress as error:
            problems.append(f"[{index}]: {error}")
            continue
        if not is_safe_host(host):
            problems.append(f"[{index}]: {_shown(text)} holds characters not allowed in an address")
        elif (host, port) in seen:
            problems.append(f"[{index}]: {_shown(text)} is listed twice")
        else:
            seen.add((host, port))
            servers.append(Server(host=host, port=port))
    _raise_collected(problems)
    return tuple(servers)


# ---------------------------------------------------------------------------
# combinations


def check_combination(
    server_params: tuple[tuple[str, str], ...],
    directives: tuple[str, ...],
    backup_servers: tuple[Server, ...],
) -> None:
    """Raise ValueError for a valid-looking combination that nginx would refuse.

    nginx's ``hash``, ``ip_hash`` and ``random`` refuse ``backup`` servers
    ("balancing method does not support parameter "backup""), so they cannot
    be combined with ``backup_servers``.
    """
    has_backup = bool(backup_servers) or any(name == "backup" for name, _ in server_params)
    if not has_backup:
        return
    for directive in directives:
        method = directive.split(" ", 1)[0]
        if method in METHODS_WITHOUT_BACKUP:
            raise ValueError(
                f"backup servers cannot be combined with '{method}': nginx refuses it (balancing method "
                'does not support parameter "backup"); drop backup_servers or use least_conn or '
                "round-robin"
            )
