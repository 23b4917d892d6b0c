"""Load and validate ``upstream_zk_nodes.conf``.

Three shapes are accepted, so that configs written for earlier tools load as
they are:

1. one cluster as a mapping: ``zk_servers`` + ``zk_nodes`` (settings such as
   ``files_output_path`` may sit beside them);
2. a list of such clusters;
3. a mapping of settings with ``clusters:`` holding the list of shape 2.

Validation collects every problem before it reports, and each message names
the file and the key path (``clusters[1].zk_nodes.app1``) so that the
operator can fix them all in one go. Nothing here touches the network; the
only files read besides the config are the credential and TLS files it names.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from reloader import options as upstream_options
from reloader import traffic
from reloader.addresses import InvalidAddress, normalize_host, validate_port
from reloader.assemble import UpstreamOptions
from reloader.config_yaml import YamlProblem, YamlSource, load_yaml
from reloader.durations import parse_duration
from reloader.formats import FORMAT_NAMES, NAME_FORMATS, PORT_FIELDS, FormatOptions
from reloader.nginx.secret import check_value
from reloader.netpolicy import NetworkPolicy, parse_networks

# Used with fullmatch: a pattern ending in `$` would accept a trailing newline.
UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DEFAULT_FILES_OUTPUT_PATH = Path("/etc/nginx/upstreams")
#: Where ``listen: PORT`` binds: a bare port never listens publicly.
DEFAULT_LISTEN_HOST = "127.0.0.1"

#: The ways of telling nginx about a change; the files are always written.
NOTIFY_KEYS: tuple[str, ...] = ("dyups_url", "lua_url", "nginx_reload")
#: The only upstream directives the Lua balancer leaves to nginx.
LUA_DIRECTIVES: tuple[str, ...] = ("keepalive", "keepalive_timeout", "keepalive_requests")
#: The upstream directives the stream module's ``upstream`` block takes (TCP upstreams, ``stream: true``);
#: ip_hash and the keepalive family are http only.
STREAM_DIRECTIVES: tuple[str, ...] = ("hash", "least_conn", "random", "zone")

#: Global and per upstream: traffic options (reloader/traffic.py).
_TRAFFIC_KEYS = {"slow_start", "panic_threshold", "prefer"}
#: Global and per upstream: which addresses registry instances may name (reloader/netpolicy.py).
_NETWORK_KEYS = {"allowed_networks", "denied_networks"}
_GUARD_KEYS = {"settle_after_reconnect", "max_drop", "drop_hold", "max_weight"}
_SETTING_KEYS = {
    "files_output_path",
    "dyups_url",
    "lua_url",
    "reconcile_interval",
    "reassert_interval",
    "retry_interval",
    "zk_session_timeout",
    "nginx_reload",
    "listen",
    "prune_files",
    "lua_secret",
    "lua_secret_file",
    "lua_secret_group",
    "resolve_interval",
    "max_children",
    "child_data",
    "stream",
    "watch_mode",
    *_GUARD_KEYS,
    *_NETWORK_KEYS,
    *_TRAFFIC_KEYS,
}
_CLUSTER_KEYS = {"zk_servers", "zk_nodes", "name", "auth", "sasl", "tls", "watch_roots"}
_ZNODE_KEYS = {
    "path",
    "format",
    "protocol",
    "endpoint",
    "port_field",
    "server_params",
    "upstream_directives",
    "backup_servers",
    "max_children",
    "child_data",
    "stream",
    *_GUARD_KEYS,
    *_NETWORK_KEYS,
    *_TRAFFIC_KEYS,
}
_RELOAD_KEYS = {"test_cmd", "reload_cmd", "min_interval"}
_AUTH_KEYS = {"scheme", "credential_file", "credential_env"}
_AUTH_SCHEMES = ("digest",)
_TLS_KEYS = {"ca", "cert", "key", "verify_hostname"}
#: sasl keys, as kazoo passes them to pure-sasl's SASLClient; password_file is
#: read here and handed on as password.
_SASL_KEYS = {"mechanism", "username", "password", "password_file", "service", "principal", "authorization_id"}
#: The SASL mechanisms ZooKeeper servers offer.
_SASL_MECHANISMS = ("DIGEST-MD5", "GSSAPI")
#: Secrets are one line; a bigger "credential file" is the wrong file.
_MAX_SECRET_BYTES = 64 * 1024
#: At most this many problems are listed; a hostile file could have millions.
MAX_PROBLEMS = 200
#: Longer strings cannot be a host list or a znode path; refusing them first
#: keeps every later message and check small.
_MAX_TEXT = 4096

T = TypeVar("T")

#: Children read per znode unless ``max_children`` says otherwise: a registry
#: is untrusted, and a znode with millions of children must not exhaust the daemon.
DEFAULT_MAX_CHILDREN = 10_000
#: The highest ``max_children`` accepted.
MAX_MAX_CHILDREN = 1_000_000


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` lists them all."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


@dataclass(frozen=True)
class GuardSettings:
    """What may be published when an upstream shrinks (see reloader/publication.py)."""

    settle_after_reconnect: float = 30.0  # seconds; 0 turns the settle window off
    max_drop: float = 0.5  # fraction 0..1 of live servers; 1.0 turns the shrink guard off
    drop_hold: float = 30.0  # seconds; 0 turns the shrink guard off
    # Highest registry weight served under ``hash ... consistent``: nginx builds 160 ring
    # points per unit of weight, so one weight of 200,000 costs every nginx -t and start 7 s.
    max_weight: int = 100


@dataclass(frozen=True)
class AuthConfig:
    """ZooKeeper ``add_auth`` credentials (kazoo's ``auth_data``)."""

    scheme: str  # "digest" (kazoo auth_data scheme)
    # "user:password", already resolved from credential_file / credential_env;
    # kept out of repr so that a logged config never shows it.
    credential: str = field(repr=False)


@dataclass(frozen=True)
class TlsConfig:
    """TLS to ZooKeeper; every path was readable when the config was loaded."""

    ca: Path | None
    cert: Path | None
    key: Path | None
    verify_hostname: bool = True


@dataclass(frozen=True)
class ZnodeConfig:
    """One upstream and the znode whose children are its instances."""

    upstream: str
    path: str
    key_path: str
    format: str = "auto"
    format_options: FormatOptions = field(default_factory=FormatOptions)
    options: UpstreamOptions = field(default_factory=UpstreamOptions)
    guards: GuardSettings = field(default_factory=GuardSettings)
    # Which addresses its registry instances may name: the global lists plus its own.
    networks: NetworkPolicy = field(default_factory=NetworkPolicy)
    # At most this many children of the znode are read and served (the first, in name order).
    max_children: int = DEFAULT_MAX_CHILDREN
    # ``child_data: ignore``: the child's name is the instance; its data is never read
    # (no read per new child, no data watch per child) and counts as empty.
    ignore_child_data: bool = False
    # A TCP upstream: its file is <name>.stream, for an include inside stream { }.
    stream: bool = False


@dataclass(frozen=True)
class ClusterConfig:
    """One ZooKeeper ensemble and the znodes watched in it."""

    key_path: str
    zk_servers: str
    znodes: tuple[ZnodeConfig, ...]
    name: str | None = None
    index: int = 0  # position in the list of clusters
    auth: AuthConfig | None = None
    # kazoo's sasl_options; read-only, and out of repr (it may hold a password).
    sasl: Mapping[str, str] | None = field(default=None, repr=False, hash=False)
    tls: TlsConfig | None = None
    cluster_count: int = 1  # how many clusters the config has, for ``label``
    #: The global ``watch_mode`` (auto, persistent or classic), see reloader/sources/kazoo_protocol.py.
    watch_mode: str = "auto"
    #: Ancestors whose one persistent watch covers every configured znode under
    #: them (see reloader/sources/watchroots.py); sorted, none inside another.
    watch_roots: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How logs name this cluster: its name, else its hosts (and index, when there are several)."""
        if self.name is not None:
            return self.name
        if self.cluster_count > 1:
            return f"{self.zk_servers} #{self.index}"
        return self.zk_servers

    @property
    def session_key(self) -> tuple[Any, ...]:
        """What identifies one ZooKeeper session: entries with equal keys can share one client."""
        sasl = tuple(sorted(self.sasl.items())) if self.sasl is not None else None
        return (self.zk_servers, self.auth, sasl, self.tls, self.watch_mode)


def kazoo_arguments(cluster: ClusterConfig) -> dict[str, Any]:
    """Keyword arguments for ``KazooClient`` that carry the cluster's hosts, credentials and TLS.

    ``sasl_options`` is a fresh dict on every call: kazoo writes into it
    (it adds ``service``).
    """
    arguments: dict[str, Any] = {"hosts": cluster.zk_servers}
    if cluster.auth is not None:
        arguments["auth_data"] = [(cluster.auth.scheme, cluster.auth.credential)]
    if cluster.sasl is not None:
        arguments["sasl_options"] = dict(cluster.sasl)
    if cluster.tls is not None:
        arguments.update(
            use_ssl=True,
            ca=str(cluster.tls.ca) if cluster.tls.ca else None,
            certfile=str(cluster.tls.cert) if cluster.tls.cert else None,
            keyfile=str(cluster.tls.key) if cluster.tls.key else None,
            verify_certs=True,
            check_hostname=cluster.tls.verify_hostname,
        )
    return arguments


@dataclass(frozen=True)
class ReloadConfig:
    """The ``nginx_reload`` output: argv lists, never a shell."""

    test_cmd: tuple[str, ...]
    reload_cmd: tuple[str, ...]
    min_interval: float = 2.0


@dataclass(frozen=True)
class Config:
    """A validated config with command-line overrides applied."""

    source: str
    clusters: tuple[ClusterConfig, ...]
    files_output_path: Path = DEFAULT_FILES_OUTPUT_PATH
    dyups_url: str | None = None
    reconcile_interval: float = 5.0
    reassert_interval: float = 60.0
    zk_session_timeout: float = 10.0
    nginx_reload: ReloadConfig | None = None
    guards: GuardSettings = field(default_factory=GuardSettings)
    lua_url: str | None = None
    retry_interval: float = 1.0
    listen: tuple[str, int] | None = None
    prune_files: bool = False
    #: The Lua interface's secret: the configured value (None: generated into the file), its file, its group.
    lua_secret: str | None = field(default=None, repr=False)
    lua_secret_file: Path | None = None
    lua_secret_group: str | None = None
    # How often host names from the registry are looked up again (reloader/resolve.py).
    resolve_interval: float = 30.0
    # The global allowed_networks / denied_networks (each znode's networks include them).
    networks: NetworkPolicy = field(default_factory=NetworkPolicy)
    max_children: int = DEFAULT_MAX_CHILDREN

    @property
    def znodes(self) -> tuple[ZnodeConfig, ...]:
        """Every configured znode, across clusters, in file order."""
        return tuple(znode for cluster in self.clusters for znode in cluster.znodes)

    @property
    def stream_upstreams(self) -> frozenset[str]:
        """The names of the TCP upstreams (``stream: true``), whose files are ``<name>.stream``."""
        return frozenset(znode.upstream for znode in self.znodes if znode.stream)


def _shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, without ever formatting all of a huge value."""
    return upstream_options.shown(value, limit)


_YAML_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"), (int, "a number"), (float, "a number"), (type(None), "null"),
)


class _Collector:
    """Gathers problems with their key paths while validation walks the tree.

    ``source`` is what the file said for scalars YAML did not read as strings;
    it lets a message show ``yes`` where the data only holds True.
    """

    def __init__(self, source: YamlSource | None = None) -> None:
        self.problems: list[str] = []
        self.source = source or YamlSource()
        self._hidden = 0

    def add(self, key_path: str, message: str) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self._hidden += 1
            return
        self.problems.append(f"{key_path or '(top level)'}: {message}")

    def finish(self) -> list[str]:
        """Every problem, and a count of the ones left out."""
        if self._hidden:
            return [*self.problems, f"(top level): ... and {self._hidden} more problems"]
        return self.problems

    def hint(self, key_path: str, value: object, *, is_key: bool = False, wants_text: bool = True) -> str:
        """`` (YAML read 'yes' as a boolean; write it in quotes: "yes")`` for a scalar that is not a string."""
        kind = next((name for kinds, name in _YAML_KINDS if isinstance(value, kinds)), None)
        if kind is None and not isinstance(value, (str, list, dict)) and hasattr(value, "isoformat"):
            kind = "a date"
        if kind is None or (not wants_text and kind not in ("a boolean", "null")):
            return ""
        text = (self.source.keys if is_key else self.source.values).get(key_path)
        if text is None:
            return f" (YAML read it as {kind}; write it in quotes to make it text)"
        return f' (YAML read {text!r} as {kind}; write it in quotes: "{text}")'

    def check(
        self, key_path: str, parse: Callable[[Any], T], value: Any, *, wants_text: bool = False,
        source_at: str | None = None,
    ) -> T | None:
        """Run ``parse(value)``; a ValueError becomes a problem at ``key_path``.

        A value YAML did not read as text gets a hint (see :meth:`hint`);
        its source text is looked up at ``source_at`` (default ``key_path``).

        Every problem of an :class:`~reloader.options.OptionErrors` becomes
        its own line, at the key path of the entry it names.
        """
        try:
            return parse(value)
        except upstream_options.OptionErrors as errors:
            for problem in errors.problems:
                index = re.match(r"\[([0-9]+)\]: ", problem)
                if index:
                    self.add(_at(key_path, int(index.group(1))), problem[index.end():])
                else:
                    self.add(key_path, problem)
            return None
        except (ValueError, TypeError) as error:
            hint = self.hint(source_at or key_path, value, wants_text=wants_text)
            self.add(key_path, str(error) + hint)
            return None


def _kind(value: object) -> str:
    """What YAML made of ``value`` ("a number", "null", ...), without showing it."""
    kind = next((name for kinds, name in _YAML_KINDS if isinstance(value, kinds)), None)
    if kind is not None:
        return kind
    return "an empty string" if value == "" else f"a {type(value).__name__}"


def _join(prefix: str, key: object) -> str:
    """The key path of ``key`` in the mapping at ``prefix``; long or odd keys are cut short."""
    text = key if isinstance(key, str) else _shown(key, 40)
    if len(text) > 60:
        text = text[:60] + "..."
    return f"{prefix}.{text}" if prefix else text


def _at(prefix: str, index: int) -> str:
    """The key path of entry ``index`` of the list at ``prefix``."""
    return f"{prefix}[{index}]"


def _unknown_keys(problems: _Collector, key_path: str, mapping: Mapping[Any, Any], allowed: set[str]) -> None:
    for key in mapping:
        if key in allowed:
            continue
        where = _join(key_path, key)
        if not isinstance(key, str):
            problems.add(where, f"unknown key {_shown(key)}{problems.hint(where, key, is_key=True)}")
            continue
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        if close:
            problems.add(where, f"unknown key {_shown(key)} (did you mean {close[0]!r}?)")
        else:
            problems.add(where, f"unknown key {_shown(key)} (allowed here: {', '.join(sorted(allowed))})")


def _parse_zk_servers(value: Any) -> str:
    """Validate ``host[:port],host[:port][/chroot]``, as kazoo takes it."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string like 'zk1:2181,zk2:2181', not {type(value).__name__}")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"is {len(value)} characters long; a host list is at most {_MAX_TEXT}")
    hosts, slash, chroot = value.strip().partition("/")
    if not hosts:
        raise ValueError("is empty")
    if slash:
        try:
            _check_znode_path("/" + chroot)
        except ValueError as error:
            raise ValueError(f"chroot: {error}") from None
    for entry in hosts.split(","):
        host, colon, port = entry.strip().rpartition(":") if ":" in entry else (entry.strip(), "", "")
        try:
            normalize_host(host)
            if colon:
                validate_port(port)
        except InvalidAddress as error:
            raise ValueError(f"entry {_shown(entry.strip())}: {error}") from None
    return value.strip()


def _check_znode_path(value: str) -> None:
    """Refuse what kazoo's path validation would refuse at run time, and white space."""
    if value == "/":
        return
    if len(value) > _MAX_TEXT:
        raise ValueError(f"znode path is {len(value)} characters long; at most {_MAX_TEXT} are allowed")
    if value.endswith("/"):
        raise ValueError(f"znode path {_shown(value)} must not end with '/'")
    for segment in value[1:].split("/"):
        if segment == "":
            raise ValueError(f"znode path {_shown(value)} has an empty segment ('//')")
        if segment in (".", ".."):
            raise ValueError(f"znode path {_shown(value)} has a {segment!r} segment, which ZooKeeper refuses")
    if any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xF8FF
           or 0xFFF0 <= ord(ch) <= 0xFFFF for ch in value):
        raise ValueError(f"znode path {_shown(value)} contains white space or characters ZooKeeper refuses")


def _parse_znode_path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"znode path must be a string, not {type(value).__name__}")
    if not value.startswith("/"):
        raise ValueError(f"znode path {_shown(value)} must start with '/'")
    _check_znode_path(value)
    return value


def _parse_http_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a URL string, not {type(value).__name__}")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"is {len(value)} characters long; a URL here is at most {_MAX_TEXT}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_shown(value)} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ValueError(f"{_shown(value)}: {error}") from None
    return value.rstrip("/")


def _parse_argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(arg, str) and arg for arg in value):
        raise ValueError("must be a non-empty list of strings (an argv; nothing passes through a shell)")
    return tuple(value)


def _parse_files_output_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a directory path string")
    if "\0" in value or len(value) > _MAX_TEXT:
        raise ValueError(f"{_shown(value)} is not a usable directory path")
    return Path(value)


def _parse_lua_secret(problems: _Collector, value: Any) -> str | None:
    """The configured Lua secret; a problem never quotes the value (it may be a real secret)."""
    if value is None:
        return None
    try:
        check_value(value)
    except ValueError as error:
        problems.add("lua_secret", str(error))
        return None
    return str(value)


def _parse_group_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError(f"must be a group name, got {_shown(value)}")
    return value


def _parse_interval(value: Any) -> float:
    return parse_duration(value)


def _parse_positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _parse_max_drop(value: Any) -> float:
    """``"50%"`` (0%-100%) or a fraction between 0 and 1."""
    fraction: float | None = None
    if isinstance(value, str) and (match := re.fullmatch(r"\s*([0-9]{1,3}(?:\.[0-9]{1,6})?)\s*%\s*", value)):
        fraction = float(match.group(1)) / 100
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        fraction = float(value)
    if fraction is None or not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"{_shown(value)} is not a share of the live servers: write a percentage from 0% to 100% "
            "(like \"50%\") or a number from 0 to 1 (like 0.5)"
        )
    return fraction


def _parse_max_children(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_CHILDREN:
        raise ValueError(f"must be a whole number from 1 to {MAX_MAX_CHILDREN:,}, got {_shown(value)}")
    return value


CHILD_DATA = ("read", "ignore")


def _parse_child_data(value: Any) -> bool:
    """``child_data``: True for ``ignore``."""
    if not isinstance(value, str) or value not in CHILD_DATA:
        raise ValueError(f"must be read or ignore, got {_shown(value)}")
    return value == "ignore"


def _parse_flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_shown(value)}")
    return value


WATCH_MODES = ("auto", "persistent", "classic")


def _parse_watch_mode(value: Any) -> str:
    if not isinstance(value, str) or value not in WATCH_MODES:
        raise ValueError(f"must be one of {', '.join(WATCH_MODES)}, got {_shown(value)}")
    return value


#: More roots than this is a generated list, not a choice of shared watches.
MAX_WATCH_ROOTS = 1000


def _parse_watch_roots(value: Any) -> tuple[str, ...]:
    """A list of znode paths, none equal to or inside another (one watch would cover the other's)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of znode paths, got {_shown(value)}")
    if len(value) > MAX_WATCH_ROOTS:
        raise ValueError(f"{len(value)} roots; at most {MAX_WATCH_ROOTS} are allowed")
    roots = sorted({_parse_znode_path(root) for root in value})
    for outer in roots:
        for inner in roots:
            if inner != outer and (outer == "/" or inner.startswith(outer + "/")):
                raise ValueError(f"{_shown(inner)} is inside {_shown(outer)}, whose watch covers it already")
    return tuple(roots)


def _share_watch_roots(clusters: tuple[ClusterConfig, ...]) -> tuple[ClusterConfig, ...]:
    """Entries that will share one session (same ``session_key``) watch the union of their roots.

    The daemon merges such entries into one (reloader.daemon.sessions), keeping the first entry's
    settings; a root named by a later entry must not be lost there.
    """
    union: dict[tuple[Any, ...], set[str]] = {}
    for cluster in clusters:
        union.setdefault(cluster.session_key, set()).update(cluster.watch_roots)
    shared = []
    for cluster in clusters:
        roots = sorted(union[cluster.session_key])
        # Two entries' roots may nest: the outer one covers the inner one's znodes.
        roots = [root for root in roots if not any(o != root and (o == "/" or root.startswith(o + "/")) for o in roots)]
        shared.append(replace(cluster, watch_roots=tuple(roots)))
    return tuple(shared)


def _parse_listen(value: Any) -> tuple[str, int]:
    """``PORT`` (on 127.0.0.1), ``HOST:PORT`` or ``[v6]:PORT``."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str):
        raise ValueError(f"must be PORT, HOST:PORT or [IPv6]:PORT, got {_shown(value)}")
    text = text.strip()
    if text.isdigit():
        host, port_text = DEFAULT_LISTEN_HOST, text
    elif match := re.fullmatch(r"\[([^\]]*)\]:([0-9]+)", text):
        host, port_text = match.group(1), match.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_shown(text)}: brackets are for IPv6 addresses") from None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        raise ValueError(f"must be PORT, HOST:PORT or [IPv6]:PORT, got {_shown(value)}")
    try:
        return normalize_host(host), validate_port(port_text)
    except InvalidAddress as error:
        raise ValueError(str(error)) from None


def _notify_conflict(settings: Mapping[str, Any]) -> str | None:
    """The message for more than one way of telling nginx, or None."""
    given = [key for key in NOTIFY_KEYS if settings.get(key) is not None]
    if len(given) < 2:
        return None
    return (
        f"{' and '.join(given)} are alternatives: choose one way of telling nginx about a change "
        f"({', '.join(NOTIFY_KEYS)}); the upstream files are always written"
    )


def _parse_reload(problems: _Collector, key_path: str, value: Any) -> ReloadConfig | None:
    if not isinstance(value, dict):
        problems.add(key_path, "must be a mapping with test_cmd, reload_cmd and min_interval")
        return None
    _unknown_keys(problems, key_path, value, _RELOAD_KEYS)
    for required in ("test_cmd", "reload_cmd"):
        if required not in value:
            problems.add(_join(key_path, required), "is required")
    test_cmd = problems.check(_join(key_path, "test_cmd"), _parse_argv, value.get("test_cmd"))
    reload_cmd = problems.check(_join(key_path, "reload_cmd"), _parse_argv, value.get("reload_cmd"))
    min_interval = problems.check(_join(key_path, "min_interval"), _parse_interval, value.get("min_interval", 2))
    if test_cmd is None or reload_cmd is None or min_interval is None:
        return None
    return ReloadConfig(test_cmd=test_cmd, reload_cmd=reload_cmd, min_interval=min_interval)


def _parse_networks(
    problems: _Collector, key_path: str, mapping: Mapping[Any, Any], base: NetworkPolicy
) -> NetworkPolicy:
    """``base`` with the allowed_networks / denied_networks that ``mapping`` gives added."""
    extra = {
        key: problems.check(_join(key_path, key), parse_networks, mapping[key]) or ()
        for key in ("allowed_networks", "denied_networks") if key in mapping
    }
    if not extra:
        return base
    return base.with_extra(extra.get("allowed_networks", ()), extra.get("denied_networks", ()))
def _parse_max_weight(value: Any) -> int:
    """A whole number from 1 to the registry weight limit."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upstream_options.MAX_WEIGHT:
        raise ValueError(f"{_shown(value)} is not a weight: write a whole number from 1 to {upstream_options.MAX_WEIGHT}")
    return value


def _parse_guards(problems: _Collector, key_path: str, mapping: Mapping[Any, Any], base: GuardSettings) -> GuardSettings:
    """``base`` with the guard keys ``mapping`` gives replaced, key by key."""
    parsers: dict[str, Callable[[Any], float]] = {
        "settle_after_reconnect": _parse_interval,
        "max_drop": _parse_max_drop,
        "drop_hold": _parse_interval,
        "max_weight": _parse_max_weight,
    }
    values: dict[str, float] = {}
    for key, parse in parsers.items():
        if key in mapping:
            parsed = problems.check(_join(key_path, key), parse, mapping[key])
            if parsed is not None:
                values[key] = parsed
    return replace(base, **values) if values else base


def _resolve(base_dir: Path | None, value: str) -> Path:
    """A path from the file: relative ones are relative to the config file's directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _readable_file(base_dir: Path | None, value: Any) -> Path:
    if not isinstance(value, str) or not value or "\0" in value or len(value) > _MAX_TEXT:
        raise ValueError(f"must be a file path string, got {_shown(value)}")
    path = _resolve(base_dir, value)
    if not path.is_file():
        raise ValueError(f"{_shown(str(path), 240)} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{_shown(str(path), 240)} is not readable")
    return path


def _read_secret(base_dir: Path | None, value: Any) -> str:
    """The one line of a secret file, without its line ending."""
    path = _readable_file(base_dir, value)
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_SECRET_BYTES + 1)
    except OSError as error:
        raise ValueError(f"{_shown(str(path), 240)}: cannot read: {error.strerror or error}") from None
    if len(data) > _MAX_SECRET_BYTES:
        raise ValueError(f"{_shown(str(path), 240)} is larger than {_MAX_SECRET_BYTES // 1024} KiB: not a secret file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{_shown(str(path), 240)} is not UTF-8") from None
    lines = text.splitlines()
    if len(lines) != 1 or not lines[0]:
        raise ValueError(f"{_shown(str(path), 240)} must hold the secret on exactly one line")
    return lines[0]


def _parse_auth(
    problems: _Collector, key_path: str, value: Any, base_dir: Path | None, environ: Mapping[str, str]
) -> AuthConfig | None:
    if not isinstance(value, dict):
        problems.add(key_path, "must be a mapping: {scheme: digest, credential_file: PATH} or "
                     "{scheme: digest, credential_env: VARIABLE}")
        return None
    _unknown_keys(problems, key_path, value, _AUTH_KEYS)
    scheme = value.get("scheme")
    ok = True
    if scheme not in _AUTH_SCHEMES:
        problems.add(_join(key_path, "scheme"), f"must be one of {', '.join(_AUTH_SCHEMES)}, got {_shown(scheme)}")
        ok = False
    sources = [key for key in ("credential_file", "credential_env") if key in value]
    if len(sources) != 1:
        problems.add(key_path, "give exactly one of credential_file (a file holding user:password on one line) "
                     "and credential_env (the name of an environment variable holding user:password)")
        return None
    credential: str | None = None
    source_path = _join(key_path, sources[0])
    if sources[0] == "credential_file":
        credential = problems.check(source_path, lambda raw: _read_secret(base_dir, raw), value["credential_file"])
    else:
        name = value["credential_env"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            problems.add(source_path, f"must be an environment variable name, got {_shown(name)}")
        elif not environ.get(name):
            problems.add(source_path, f"the environment variable {name} is not set or is empty")
        else:
            credential = environ[name].strip()
    if credential is not None and (":" not in credential or credential.startswith(":")):
        problems.add(source_path, "the credential must be user:password")
        credential = None
    if credential is None or not ok:
        return None
    return AuthConfig(scheme=str(scheme), credential=credential)


def _parse_sasl(problems: _Collector, key_path: str, value: Any, base_dir: Path | None) -> Mapping[str, str] | None:
    if not isinstance(value, dict):
        problems.add(key_path, "must be a mapping of strings: mechanism, username, password or password_file, "
                     "service, principal, authorization_id")
        return None
    count = len(problems.problems)
    _unknown_keys(problems, key_path, value, _SASL_KEYS)
    options: dict[str, str] = {}
    for key, raw in value.items():
        if key not in _SASL_KEYS:
            continue
        if not isinstance(raw, str) or not raw:
            if key == "password":  # never echoed: the message may reach the log (SIGHUP)
                problems.add(_join(key_path, key), f"must be a non-empty string (write it in quotes); "
                             f"got {_kind(raw)}, whose value is not shown")
            else:
                problems.add(_join(key_path, key), f"must be a non-empty string, got {_shown(raw)}")
        elif key == "password_file":
            secret = problems.check(_join(key_path, key), lambda path: _read_secret(base_dir, path), raw)
            if secret is not None:
                options["password"] = secret
        else:
            options[key] = raw
    if "password" in value and "password_file" in value:
        problems.add(key_path, "give password or password_file, not both")
    mechanism = value.get("mechanism")
    if mechanism not in _SASL_MECHANISMS:
        problems.add(_join(key_path, "mechanism"), f"must be one of {', '.join(_SASL_MECHANISMS)}, got {_shown(mechanism)}")
    elif mechanism == "DIGEST-MD5":
        for required in ("username", "password"):
            if required not in value and not (required == "password" and "password_file" in value):
                problems.add(_join(key_path, required), "is required for DIGEST-MD5")
    if len(problems.problems) != count:
        return None
    return MappingProxyType(options)


def _parse_tls(problems: _Collector, key_path: str, value: Any, base_dir: Path | None) -> TlsConfig | None:
    if not isinstance(value, dict):
        problems.add(key_path, "must be a mapping: {ca: PATH, cert: PATH, key: PATH, verify_hostname: true}")
        return None
    count = len(problems.problems)
    _unknown_keys(problems, key_path, value, _TLS_KEYS)
    paths: dict[str, Path | None] = {}
    for key in ("ca", "cert", "key"):
        paths[key] = (
            problems.check(_join(key_path, key), lambda raw: _readable_file(base_dir, raw), value[key])
            if value.get(key) is not None else None
        )
    if ("cert" in value) != ("key" in value):
        problems.add(key_path, "cert and key go together: give both or neither")
    verify = problems.check(_join(key_path, "verify_hostname"), _parse_flag, value.get("verify_hostname", True))
    if len(problems.problems) != count or verify is None:
        return None
    return TlsConfig(ca=paths["ca"], cert=paths["cert"], key=paths["key"], verify_hostname=verify)


@dataclass(frozen=True)
class _Context:
    """What every znode and cluster is validated against."""

    dyups_enabled: bool
    lua_enabled: bool
    guards: GuardSettings
    networks: NetworkPolicy
    base_dir: Path | None
    environ: Mapping[str, str]
    max_children: int = DEFAULT_MAX_CHILDREN
    ignore_child_data: bool = False  # the global ``child_data``
    stream: bool = False  # the global default of ``stream``
    # The global traffic options: (slow_start, panic_threshold, prefer).
    traffic: tuple[Any, Any, Any] = (None, None, ())
    reload_enabled: bool = False


def _parse_traffic(
    problems: _Collector, key_path: str, mapping: Mapping[Any, Any], context: _Context,
) -> tuple[Any, Any, Any]:
    """``slow_start``, ``panic_threshold`` and ``prefer`` of ``mapping``, each defaulting to the global one."""
    slow_start, panic, prefer = context.traffic
    if "slow_start" in mapping:
        where = _join(key_path, "slow_start")
        slow_start = problems.check(where, traffic.parse_slow_start, mapping["slow_start"])
        if slow_start is not None and not (context.lua_enabled or context.dyups_enabled):
            problems.add(where, "needs lua_url or dyups_url: " + (
                "with nginx_reload every step of the ramp would be a reload" if context.reload_enabled
                else "the files alone always hold the full weights"))
            slow_start = None
    if "panic_threshold" in mapping:
        where = _join(key_path, "panic_threshold")
        panic = problems.check(where, traffic.parse_panic_threshold, mapping["panic_threshold"])
        if panic is not None and not context.lua_enabled:
            problems.add(where, "needs lua_url: only the Lua balancer can ignore nginx's passive checks")
            panic = None
    if "prefer" in mapping:
        prefer = problems.check(_join(key_path, "prefer"), traffic.parse_prefer, mapping["prefer"]) or ()
    return slow_start, panic, prefer


def _parse_znode(problems: _Collector, key_path: str, name: Any, entry: Any, context: _Context) -> ZnodeConfig | None:
    if not isinstance(name, str):
        hint = problems.hint(key_path, name, is_key=True) or " (not a string)"
        problems.add(key_path, f"upstream name {_shown(name)}{hint}")
        return None
    if not UPSTREAM_NAME.fullmatch(name):
        problems.add(
            key_path,
            f"upstream name {_shown(name)} must match [a-z0-9][a-z0-9._-]* (lowercase: Tengine's dyups "
            "cannot route to capitalised upstream names)",
        )
        return None
    bare = isinstance(entry, str) or entry is None or isinstance(entry, (bool, int, float))
    if bare:
        entry = {"path": entry}
    if not isinstance(entry, dict):
        problems.add(key_path, "must be a znode path string or a mapping with 'path'")
        return None
    _unknown_keys(problems, key_path, entry, _ZNODE_KEYS)
    if "path" not in entry:
        problems.add(_join(key_path, "path"), "is required")
        return None
    # The source text of a bare path (``app1: 123``) is at the entry's own key path.
    path = problems.check(
        _join(key_path, "path"), _parse_znode_path, entry["path"], wants_text=True, source_at=key_path if bare else None
    )
    format_name = entry.get("format", "auto")
    if not isinstance(format_name, str) or format_name not in FORMAT_NAMES:
        where = _join(key_path, "format")
        problems.add(where, f"{_shown(format_name)} is not one of {', '.join(FORMAT_NAMES)}"
                     f"{problems.hint(where, format_name)}")
    for option in ("protocol", "endpoint", "port_field"):
        if option in entry and not (isinstance(entry[option], str) and entry[option]):
            where = _join(key_path, option)
            problems.add(where, f"must be a non-empty string{problems.hint(where, entry[option])}")
    if isinstance(entry.get("port_field"), str) and entry["port_field"] not in PORT_FIELDS:
        problems.add(_join(key_path, "port_field"), f"must be one of {', '.join(PORT_FIELDS)}")
    format_options = FormatOptions(
        protocol=entry.get("protocol", FormatOptions.protocol),
        endpoint=entry.get("endpoint"),
        port_field=entry.get("port_field"),
    )
    server_params = problems.check(
        _join(key_path, "server_params"), upstream_options.parse_server_params, entry.get("server_params")
    )
    directives = problems.check(
        _join(key_path, "upstream_directives"),
        lambda value: upstream_options.parse_upstream_directives(value, allow_variables=not context.dyups_enabled),
        entry.get("upstream_directives"),
    )
    if directives and context.lua_enabled:
        refused = [d for d in directives if d.split(" ", 1)[0] not in LUA_DIRECTIVES]
        if refused:
            problems.add(
                _join(key_path, "upstream_directives"),
                f"{', '.join(d.split(' ', 1)[0] for d in refused)} cannot be used with lua_url: the Lua balancer "
                f"does its own weighted round robin; only {', '.join(LUA_DIRECTIVES)} are allowed",
            )
            directives = None
    backups = problems.check(
        _join(key_path, "backup_servers"), upstream_options.parse_backup_servers, entry.get("backup_servers")
    )
    stream = _parse_stream(problems, key_path, entry, context)
    if stream and directives:
        refused = [d.split(" ", 1)[0] for d in directives if d.split(" ", 1)[0] not in STREAM_DIRECTIVES]
        if refused:
            problems.add(
                _join(key_path, "upstream_directives"),
                f"{', '.join(refused)} cannot be used in a TCP upstream (stream: true"
                f"{'' if 'stream' in entry else ', the global default'}): the stream module's upstream block "
                f"has no {', '.join(refused)}; only {', '.join(STREAM_DIRECTIVES)} are allowed",
            )
            directives = None
    guards = _parse_guards(problems, key_path, entry, context.guards)
    networks = _parse_networks(problems, key_path, entry, context.networks)
    max_children = (problems.check(_join(key_path, "max_children"), _parse_max_children, entry["max_children"])
                    if "max_children" in entry else context.max_children)
    ignore_data = (problems.check(_join(key_path, "child_data"), _parse_child_data, entry["child_data"])
                   if "child_data" in entry else context.ignore_child_data)
    if ignore_data and isinstance(format_name, str) and format_name in FORMAT_NAMES \
            and format_name not in ("auto", *NAME_FORMATS):
        where = _join(key_path, "child_data" if "child_data" in entry else "format")
        problems.add(where, f"child_data: ignore cannot be used with format: {format_name}: that format reads the "
                     f"instance from the child's data; only {', '.join(NAME_FORMATS)} (or auto, which then "
                     "detects among them) read it from the child's name")
    slow_start, panic_threshold, prefer = _parse_traffic(problems, key_path, entry, context)
    if path is None or server_params is None or directives is None or backups is None or stream is None:
        return None
    try:
        upstream_options.check_combination(server_params, directives, backups)
    except ValueError as error:
        problems.add(key_path, str(error))
        return None
    conflict = traffic.check_traffic(slow_start, prefer, directives)
    if conflict:
        problems.add(key_path, conflict)
        return None
    return ZnodeConfig(
        upstream=name,
        path=path,
        key_path=key_path,
        format=format_name if format_name in FORMAT_NAMES else "auto",
        format_options=format_options,
        options=UpstreamOptions(server_params=server_params, directives=directives, backup_servers=backups,
                                slow_start=slow_start, panic_threshold=panic_threshold, prefer=prefer),
        guards=guards,
        networks=networks,
        max_children=max_children or context.max_children,
        ignore_child_data=bool(ignore_data),
        stream=bool(stream),
    )


def _stream_refusal(context: _Context) -> str | None:
    """Why TCP upstreams cannot work with the configured way of telling nginx (None: they can)."""
    if context.lua_enabled:
        return ("cannot be used with lua_url: a Lua balancer for TCP upstreams would need OpenResty's stream Lua "
                "module (ngx_stream_lua_module), which Debian does not package; use nginx_reload (or the files "
                "alone) for TCP upstreams")
    if context.dyups_enabled:
        return ("cannot be used with dyups_url: the dyups module changes http upstreams only and has no stream "
                "support; use nginx_reload (or the files alone) for TCP upstreams")
    return None


def _parse_stream(problems: _Collector, key_path: str, entry: Mapping[Any, Any], context: _Context) -> bool | None:
    """The upstream's ``stream`` flag (the global default when it has none); None when invalid.

    An inherited ``stream: true`` that cannot work is reported once, at the
    global key, not at every upstream.
    """
    if "stream" not in entry:
        return context.stream
    where = _join(key_path, "stream")
    stream = problems.check(where, _parse_flag, entry["stream"])
    refusal = _stream_refusal(context) if stream else None
    if refusal:
        problems.add(where, f"stream: true {refusal}")
        return None
    return stream


def _parse_cluster(
    problems: _Collector,
    key_path: str,
    index: int,
    value: Any,
    context: _Context,
    extra_keys: set[str],
    parsed_znodes: list[ZnodeConfig],
) -> ClusterConfig | None:
    """Validate one cluster; every znode that parses is added to ``parsed_znodes``.

    The znodes are collected even when the cluster as a whole is invalid, so
    that a name used twice is reported together with the cluster's other
    problems, not in a second round.
    """
    if not isinstance(value, dict):
        problems.add(key_path, "must be a mapping with zk_servers and zk_nodes")
        return None
    count = len(problems.problems)
    _unknown_keys(problems, key_path, value, _CLUSTER_KEYS | extra_keys)
    if "zk_servers" not in value:
        problems.add(_join(key_path, "zk_servers"), "is required")
    if "zk_nodes" not in value:
        problems.add(_join(key_path, "zk_nodes"), "is required")
    zk_servers = problems.check(
        _join(key_path, "zk_servers"), _parse_zk_servers, value.get("zk_servers"), wants_text=True
    )
    name = value.get("name")
    if name is not None and not (isinstance(name, str) and CLUSTER_NAME.fullmatch(name)):
        where = _join(key_path, "name")
        problems.add(where, f"cluster name {_shown(name)} must match [A-Za-z0-9][A-Za-z0-9._-]*{problems.hint(where, name)}")
    auth = (
        _parse_auth(problems, _join(key_path, "auth"), value["auth"], context.base_dir, context.environ)
        if value.get("auth") is not None else None
    )
    sasl = _parse_sasl(problems, _join(key_path, "sasl"), value["sasl"], context.base_dir) if value.get("sasl") is not None else None
    tls = _parse_tls(problems, _join(key_path, "tls"), value["tls"], context.base_dir) if value.get("tls") is not None else None
    nodes = value.get("zk_nodes")
    nodes_path = _join(key_path, "zk_nodes")
    if nodes is None or not isinstance(nodes, dict) or not nodes:
        if "zk_nodes" in value:
            problems.add(nodes_path, "must be a non-empty mapping of upstream name to znode")
        return None
    znodes = [_parse_znode(problems, _join(nodes_path, name), name, entry, context) for name, entry in nodes.items()]
    parsed_znodes.extend(znode for znode in znodes if znode)
    watch_roots = problems.check(_join(key_path, "watch_roots"), _parse_watch_roots, value["watch_roots"]) \
        if value.get("watch_roots") is not None else ()
    if zk_servers is None or len(problems.problems) != count:
        return None
    return ClusterConfig(
        key_path=key_path,
        zk_servers=zk_servers,
        znodes=tuple(z for z in znodes if z),
        name=name,
        index=index,
        auth=auth,
        sasl=sasl,
        tls=tls,
        watch_roots=watch_roots or (),
    )


def parse_config(
    data: Any,
    source: str = "<config>",
    overrides: Mapping[str, Any] | None = None,
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    yaml_source: YamlSource | None = None,
) -> Config:
    """Validate already-loaded YAML data; raise ConfigError listing every problem.

    ``overrides`` holds command-line values (``files_output_path``,
    ``dyups_url``, ``log_level`` is not one of them); a value of None means
    "not given" and leaves the file's value in place. Relative paths in the
    data are taken relative to ``base_dir`` (the config file's directory);
    an overriding ``files_output_path`` is used as given. ``environ`` is where
    ``credential_env`` looks (default: the process environment).
    ``yaml_source`` (from :func:`reloader.config_yaml.load_yaml`) lets
    messages quote what the file said.
    """
    problems = _Collector(yaml_source)
    given = {key: value for key, value in (overrides or {}).items() if value is not None}

    if isinstance(data, list):
        settings: dict[str, Any] = {}
        cluster_items = list(enumerate(data))
        cluster_prefix = ""
        cluster_extra: set[str] = set()
    elif isinstance(data, dict) and "clusters" in data:
        settings = data
        _unknown_keys(problems, "", data, _SETTING_KEYS | {"clusters"})
        raw_clusters = data["clusters"]
        if not isinstance(raw_clusters, list) or not raw_clusters:
            problems.add("clusters", "must be a non-empty list of {zk_servers, zk_nodes}")
            raw_clusters = []
        cluster_items = list(enumerate(raw_clusters))
        cluster_prefix = "clusters"
        cluster_extra = set()
    elif isinstance(data, dict):
        # Shape 1: the cluster keys and the settings share one mapping.
        settings = data
        cluster_items = [(0, data)]
        cluster_prefix = None
        cluster_extra = _SETTING_KEYS
    else:
        raise ConfigError(source, ["(top level): must be a mapping or a list of clusters"])

    file_output_path = settings.get("files_output_path")
    settings = {**{key: settings[key] for key in _SETTING_KEYS if key in settings}, **given}
    dyups_url = problems.check("dyups_url", _parse_http_url, settings.get("dyups_url"), wants_text=True)
    lua_url = problems.check("lua_url", _parse_http_url, settings.get("lua_url"), wants_text=True)
    conflict = _notify_conflict(settings)
    if conflict:
        problems.add("(top level)", conflict)
    guards = _parse_guards(problems, "", settings, GuardSettings())
    networks = _parse_networks(problems, "", settings, NetworkPolicy())
    max_children = problems.check("max_children", _parse_max_children, settings.get("max_children", DEFAULT_MAX_CHILDREN))
    stream_default = problems.check("stream", _parse_flag, settings.get("stream", False))
    ignore_data = problems.check("child_data", _parse_child_data, settings.get("child_data", "read"))
    context = _Context(
        dyups_enabled=settings.get("dyups_url") is not None,
        lua_enabled=settings.get("lua_url") is not None,
        guards=guards,
        networks=networks,
        base_dir=base_dir,
        environ=os.environ if environ is None else environ,
        max_children=max_children or DEFAULT_MAX_CHILDREN,
        ignore_child_data=bool(ignore_data),
        stream=bool(stream_default),
        reload_enabled=settings.get("nginx_reload") is not None,
    )
    context = replace(context, traffic=_parse_traffic(problems, "", settings, context))
    stream_refusal = _stream_refusal(context) if stream_default else None
    if stream_refusal:
        problems.add("stream", f"stream: true {stream_refusal}")

    parsed_znodes: list[ZnodeConfig] = []
    clusters = [
        _parse_cluster(
            problems, "" if cluster_prefix is None else _at(cluster_prefix, index), index, item, context,
            cluster_extra, parsed_znodes,
        )
        for index, item in cluster_items
    ]
    if isinstance(data, list) and not data:
        problems.add("", "the list of clusters is empty")

    first_seen: dict[str, str] = {}
    for znode in parsed_znodes:
        if znode.upstream in first_seen:
            problems.add(
                znode.key_path, f"upstream name {znode.upstream!r} is already used at {first_seen[znode.upstream]}"
            )
        else:
            first_seen[znode.upstream] = znode.key_path
    named: dict[str, str] = {}
    for index, item in cluster_items:
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and CLUSTER_NAME.fullmatch(name):
            key_path = _join("" if cluster_prefix is None else _at(cluster_prefix, index), "name")
            if name in named:
                problems.add(key_path, f"cluster name {name!r} is already used at {named[name]}")
            else:
                named[name] = key_path

    files_output_path = problems.check(
        "files_output_path", _parse_files_output_path,
        settings.get("files_output_path", str(DEFAULT_FILES_OUTPUT_PATH)), wants_text=True,
    )
    if files_output_path is not None and "files_output_path" not in given and file_output_path is not None:
        files_output_path = _resolve(base_dir, str(files_output_path))
    reconcile = problems.check("reconcile_interval", _parse_interval, settings.get("reconcile_interval", 5))
    reassert = problems.check("reassert_interval", _parse_interval, settings.get("reassert_interval", 60))
    retry = problems.check("retry_interval", _parse_positive_duration, settings.get("retry_interval", 1))
    session_timeout = problems.check(
        "zk_session_timeout", _parse_positive_duration, settings.get("zk_session_timeout", 10)
    )
    listen = problems.check("listen", _parse_listen, settings["listen"]) if settings.get("listen") is not None else None
    prune_files = problems.check("prune_files", _parse_flag, settings.get("prune_files", False))
    watch_mode = problems.check("watch_mode", _parse_watch_mode, settings.get("watch_mode", "auto"), wants_text=True)
    resolve_interval = problems.check(
        "resolve_interval", _parse_positive_duration, settings.get("resolve_interval", 30)
    )
    reload_config = (
        _parse_reload(problems, "nginx_reload", settings["nginx_reload"]) if settings.get("nginx_reload") is not None else None
    )
    lua_secret = _parse_lua_secret(problems, settings.get("lua_secret"))
    lua_secret_file = problems.check(
        "lua_secret_file", lambda value: _resolve(base_dir, str(_parse_files_output_path(value))),
        settings.get("lua_secret_file"), wants_text=True,
    ) if settings.get("lua_secret_file") is not None else None
    lua_secret_group = problems.check(
        "lua_secret_group", _parse_group_name, settings.get("lua_secret_group"), wants_text=True,
    ) if settings.get("lua_secret_group") is not None else None

    if problems.problems:
        raise ConfigError(source, problems.finish())
    assert files_output_path is not None and reconcile is not None and reassert is not None
    assert session_timeout is not None and retry is not None and prune_files is not None
    assert resolve_interval is not None
    valid = tuple(cluster for cluster in clusters if cluster)
    return Config(
        source=source,
        clusters=_share_watch_roots(tuple(replace(cluster, cluster_count=len(valid), watch_mode=watch_mode or "auto")
                                          for cluster in valid)),
        files_output_path=files_output_path,
        dyups_url=dyups_url,
        reconcile_interval=reconcile,
        reassert_interval=reassert,
        zk_session_timeout=session_timeout,
        nginx_reload=reload_config,
        guards=guards,
        lua_url=lua_url,
        retry_interval=retry,
        listen=listen,
        prune_files=prune_files,
        lua_secret=lua_secret,
        lua_secret_file=lua_secret_file,
        lua_secret_group=lua_secret_group,
        resolve_interval=resolve_interval,
        networks=networks,
        max_children=max_children or DEFAULT_MAX_CHILDREN,
    )


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError naming the file on any problem.

    Relative paths in the file are relative to the file's directory; an
    overriding ``files_output_path`` stays relative to the working directory.
    """
    source = str(path)
    try:
        data, yaml_source = load_yaml(Path(path), _join, _at)
    except YamlProblem as problem:
        raise ConfigError(source, [f"{problem.key_path}: {problem}" if problem.key_path else str(problem)]) from None
    if data is None:
        raise ConfigError(source, ["(top level): the file is empty"])
    return parse_config(
        data, source=source, overrides=overrides, base_dir=Path(path).absolute().parent, yaml_source=yaml_source
    )
