"""Load and validate ``upstream_zk_nodes.conf``.

Three shapes are accepted, so that configs written for earlier tools load as
they are:

1. one cluster as a mapping: ``zk_servers`` + ``zk_nodes`` (settings such as
   ``files_output_path`` may sit beside them);
2. a list of such clusters;
3. a mapping of settings with ``clusters:`` holding the list of shape 2.

Validation collects every problem before it reports, and each message names
the file and the key path (``clusters[1].zk_nodes.app1``) so that the
operator can fix them all in one go. Nothing here touches the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

import yaml

from reloader import options as upstream_options
from reloader.addresses import InvalidAddress, normalize_host, validate_port
from reloader.assemble import UpstreamOptions
from reloader.durations import parse_duration
from reloader.formats import FORMAT_NAMES, PORT_FIELDS, FormatOptions

# Used with fullmatch: a pattern ending in `$` would accept a trailing newline.
UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
DEFAULT_FILES_OUTPUT_PATH = Path("/etc/nginx/upstreams")

_SETTING_KEYS = {
    "files_output_path",
    "dyups_url",
    "reconcile_interval",
    "reassert_interval",
    "zk_session_timeout",
    "nginx_reload",
}
_CLUSTER_KEYS = {"zk_servers", "zk_nodes"}
_ZNODE_KEYS = {
    "path",
    "format",
    "protocol",
    "endpoint",
    "port_field",
    "server_params",
    "upstream_directives",
    "backup_servers",
}
_RELOAD_KEYS = {"test_cmd", "reload_cmd", "min_interval"}

T = TypeVar("T")


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` lists them all."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


@dataclass(frozen=True)
class ZnodeConfig:
    """One upstream and the znode whose children are its instances."""

    upstream: str
    path: str
    key_path: str
    format: str = "auto"
    format_options: FormatOptions = field(default_factory=FormatOptions)
    options: UpstreamOptions = field(default_factory=UpstreamOptions)


@dataclass(frozen=True)
class ClusterConfig:
    """One ZooKeeper ensemble and the znodes watched in it."""

    key_path: str
    zk_servers: str
    znodes: tuple[ZnodeConfig, ...]

    @property
    def label(self) -> str:
        """How logs name this cluster."""
        return self.zk_servers


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

    @property
    def znodes(self) -> tuple[ZnodeConfig, ...]:
        """Every configured znode, across clusters, in file order."""
        return tuple(znode for cluster in self.clusters for znode in cluster.znodes)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys instead of keeping the last one silently.

    A duplicated upstream name in a YAML mapping would otherwise make one of
    the two upstreams vanish without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Collector:
    """Gathers problems with their key paths while validation walks the tree."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, key_path: str, message: str) -> None:
        self.problems.append(f"{key_path or '(top level)'}: {message}")

    def check(self, key_path: str, parse: Callable[[Any], T], value: Any) -> T | None:
        """Run ``parse(value)``; a ValueError becomes a problem at ``key_path``."""
        try:
            return parse(value)
        except (ValueError, TypeError) as error:
            self.add(key_path, str(error))
            return None


def _join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def _unknown_keys(problems: _Collector, key_path: str, mapping: Mapping[Any, Any], allowed: set[str]) -> None:
    for key in mapping:
        if key not in allowed:
            problems.add(_join(key_path, str(key)), f"unknown key (allowed here: {', '.join(sorted(allowed))})")


def _parse_zk_servers(value: Any) -> str:
    """Validate ``host[:port],host[:port][/chroot]``, as kazoo takes it."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string like 'zk1:2181,zk2:2181', not {type(value).__name__}")
    hosts, slash, chroot = value.strip().partition("/")
    if not hosts:
        raise ValueError("is empty")
    if slash and (not chroot or chroot.endswith("/") or "//" in chroot):
        raise ValueError(f"chroot '/{chroot}' is not a valid znode path")
    for entry in hosts.split(","):
        host, colon, port = entry.strip().rpartition(":") if ":" in entry else (entry.strip(), "", "")
        try:
            normalize_host(host)
            if colon:
                validate_port(port)
        except InvalidAddress as error:
            raise ValueError(f"entry {entry.strip()!r}: {error}") from None
    return value.strip()


def _parse_znode_path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"znode path must be a string, not {type(value).__name__}")
    if not value.startswith("/"):
        raise ValueError(f"znode path {value!r} must start with '/'")
    if value != "/" and (value.endswith("/") or "//" in value):
        raise ValueError(f"znode path {value!r} has an empty component")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise ValueError(f"znode path {value!r} contains white space or control characters")
    return value


def _parse_dyups_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a URL string, not {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ValueError(f"{value!r}: {error}") from None
    return value.rstrip("/")


def _parse_argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(arg, str) and arg for arg in value):
        raise ValueError("must be a non-empty list of strings (an argv; nothing passes through a shell)")
    return tuple(value)


def _parse_files_output_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a directory path string")
    return Path(value)


def _parse_interval(value: Any) -> float:
    return parse_duration(value)


def _parse_positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


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


def _parse_znode(
    problems: _Collector, key_path: str, name: Any, entry: Any, dyups_enabled: bool
) -> ZnodeConfig | None:
    if not isinstance(name, str) or not UPSTREAM_NAME.fullmatch(name):
        problems.add(
            key_path,
            f"upstream name {name!r} must match [a-z0-9][a-z0-9._-]* (lowercase: Tengine's dyups "
            "cannot route to capitalised upstream names)",
        )
        return None
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict):
        problems.add(key_path, "must be a znode path string or a mapping with 'path'")
        return None
    _unknown_keys(problems, key_path, entry, _ZNODE_KEYS)
    if "path" not in entry:
        problems.add(_join(key_path, "path"), "is required")
        return None
    path = problems.check(_join(key_path, "path"), _parse_znode_path, entry["path"])
    format_name = entry.get("format", "auto")
    if format_name not in FORMAT_NAMES:
        problems.add(_join(key_path, "format"), f"{format_name!r} is not one of {', '.join(FORMAT_NAMES)}")
    for option in ("protocol", "endpoint", "port_field"):
        if option in entry and not (isinstance(entry[option], str) and entry[option]):
            problems.add(_join(key_path, option), "must be a non-empty string")
    if entry.get("port_field") not in (None, *PORT_FIELDS):
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
        lambda value: upstream_options.parse_upstream_directives(value, allow_variables=not dyups_enabled),
        entry.get("upstream_directives"),
    )
    backups = problems.check(
        _join(key_path, "backup_servers"), upstream_options.parse_backup_servers, entry.get("backup_servers")
    )
    if path is None or server_params is None or directives is None or backups is None:
        return None
    try:
        upstream_options.check_combination(server_params, directives, backups)
    except ValueError as error:
        problems.add(key_path, str(error))
        return None
    return ZnodeConfig(
        upstream=name,
        path=path,
        key_path=key_path,
        format=format_name if format_name in FORMAT_NAMES else "auto",
        format_options=format_options,
        options=UpstreamOptions(server_params=server_params, directives=directives, backup_servers=backups),
    )


def _parse_cluster(
    problems: _Collector,
    key_path: str,
    value: Any,
    dyups_enabled: bool,
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
    _unknown_keys(problems, key_path, value, _CLUSTER_KEYS | extra_keys)
    if "zk_servers" not in value:
        problems.add(_join(key_path, "zk_servers"), "is required")
    if "zk_nodes" not in value:
        problems.add(_join(key_path, "zk_nodes"), "is required")
    zk_servers = problems.check(_join(key_path, "zk_servers"), _parse_zk_servers, value.get("zk_servers"))
    nodes = value.get("zk_nodes")
    nodes_path = _join(key_path, "zk_nodes")
    if nodes is None or not isinstance(nodes, dict) or not nodes:
        if "zk_nodes" in value:
            problems.add(nodes_path, "must be a non-empty mapping of upstream name to znode")
        return None
    znodes = [
        _parse_znode(problems, _join(nodes_path, str(name)), name, entry, dyups_enabled)
        for name, entry in nodes.items()
    ]
    parsed_znodes.extend(znode for znode in znodes if znode)
    if zk_servers is None or any(znode is None for znode in znodes):
        return None
    return ClusterConfig(key_path=key_path, zk_servers=zk_servers, znodes=tuple(z for z in znodes if z))


def parse_config(data: Any, source: str = "<config>", overrides: Mapping[str, Any] | None = None) -> Config:
    """Validate already-loaded YAML data; raise ConfigError listing every problem.

    ``overrides`` holds command-line values (``files_output_path``,
    ``dyups_url``, ``log_level`` is not one of them); a value of None means
    "not given" and leaves the file's value in place.
    """
    problems = _Collector()
    given = {key: value for key, value in (overrides or {}).items() if value is not None}

    if isinstance(data, list):
        settings: dict[str, Any] = {}
        cluster_items = [(_join("", index), item) for index, item in enumerate(data)]
        cluster_extra: set[str] = set()
    elif isinstance(data, dict) and "clusters" in data:
        settings = data
        _unknown_keys(problems, "", data, _SETTING_KEYS | {"clusters"})
        raw_clusters = data["clusters"]
        if not isinstance(raw_clusters, list) or not raw_clusters:
            problems.add("clusters", "must be a non-empty list of {zk_servers, zk_nodes}")
            raw_clusters = []
        cluster_items = [(_join("clusters", index), item) for index, item in enumerate(raw_clusters)]
        cluster_extra = set()
    elif isinstance(data, dict):
        # Shape 1: the cluster keys and the settings share one mapping.
        settings = data
        cluster_items = [("", data)]
        cluster_extra = _SETTING_KEYS
    else:
        raise ConfigError(source, ["(top level): must be a mapping or a list of clusters"])

    settings = {**{key: settings[key] for key in _SETTING_KEYS if key in settings}, **given}
    dyups_url = problems.check("dyups_url", _parse_dyups_url, settings.get("dyups_url"))
    dyups_enabled = dyups_url is not None

    parsed_znodes: list[ZnodeConfig] = []
    clusters = [
        _parse_cluster(problems, key_path, item, dyups_enabled, cluster_extra, parsed_znodes)
        for key_path, item in cluster_items
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

    files_output_path = problems.check(
        "files_output_path", _parse_files_output_path, settings.get("files_output_path", str(DEFAULT_FILES_OUTPUT_PATH))
    )
    reconcile = problems.check("reconcile_interval", _parse_interval, settings.get("reconcile_interval", 5))
    reassert = problems.check("reassert_interval", _parse_interval, settings.get("reassert_interval", 60))
    session_timeout = problems.check(
        "zk_session_timeout", _parse_positive_duration, settings.get("zk_session_timeout", 10)
    )
    reload_config = (
        _parse_reload(problems, "nginx_reload", settings["nginx_reload"]) if settings.get("nginx_reload") is not None else None
    )

    if problems.problems:
        raise ConfigError(source, problems.problems)
    assert files_output_path is not None and reconcile is not None and reassert is not None
    assert session_timeout is not None
    return Config(
        source=source,
        clusters=tuple(cluster for cluster in clusters if cluster),
        files_output_path=files_output_path,
        dyups_url=dyups_url,
        reconcile_interval=reconcile,
        reassert_interval=reassert,
        zk_session_timeout=session_timeout,
        nginx_reload=reload_config,
    )


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError naming the file on any problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(source, [f"cannot read: {error.strerror or error}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError(source, [f"is not UTF-8: {error}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(source, [f"{where}invalid YAML: {problem}"]) from None
    if data is None:
        raise ConfigError(source, ["(top level): the file is empty"])
    return parse_config(data, source=source, overrides=overrides)
