"""What ``nginx-upstream-reloader check`` reports about a valid config.

* :func:`settings_lines`: every effective setting, defaults included, as
  ``# name = value`` lines (comment lines, so a script reading the
  tab-separated upstream lines can skip them); secrets are never shown.
* :func:`output_path_state`: whether ``files_output_path`` can be written,
  without creating or writing anything.
* :func:`warnings`: settings that are valid but unsafe (a ``dyups_url``
  beyond loopback: dyups has no authentication of its own);
* :func:`connect_all`: one short ZooKeeper connection attempt per cluster
  (the only part that touches the network), in parallel, so the whole takes
  about one session timeout however many clusters there are; a cluster is
  ``connected`` only once a request has been answered, so credentials that
  ZooKeeper refuses (SASL) are reported as such.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from urllib.parse import urlsplit

from reloader.config import ClusterConfig, Config, GuardSettings, kazoo_arguments
from reloader.threads import DaemonPool

# How long past the session timeout ``connect_all`` waits for an attempt to report.
CONNECT_SLACK = 2.0


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _guards(guards: GuardSettings) -> list[tuple[str, str]]:
    return [
        ("settle_after_reconnect", _seconds(guards.settle_after_reconnect)),
        ("max_drop", f"{guards.max_drop * 100:g}%"),
        ("drop_hold", _seconds(guards.drop_hold)),
    ]


def output_path_state(path: Path) -> str:
    """``writable``, ``can be created``, or why not."""
    if path.exists():
        if not path.is_dir():
            return "not writable: it is not a directory"
        return "writable" if os.access(path, os.W_OK | os.X_OK) else "not writable: permission denied"
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return "does not exist; can be created"


def _cluster_line(cluster: ClusterConfig) -> str:
    auth = f"{cluster.auth.scheme} (user {cluster.auth.credential.split(':', 1)[0]})" if cluster.auth else "none"
    sasl = "none"
    if cluster.sasl is not None:
        shown = {key: value for key, value in cluster.sasl.items() if key != "password"}
        sasl = ", ".join(f"{key} {value}" for key, value in shown.items()) + (
            ", password (hidden)" if "password" in cluster.sasl else "")
    tls = "none"
    if cluster.tls is not None:
        tls = (f"ca {cluster.tls.ca or 'system default'}, cert {cluster.tls.cert or 'none'}, "
               f"key {cluster.tls.key or 'none'}, verify_hostname {str(cluster.tls.verify_hostname).lower()}")
    return (f"# cluster {cluster.label}: index {cluster.index}, name {cluster.name or 'none'}, "
            f"zk_servers {cluster.zk_servers}, auth {auth}, sasl {sasl}, tls {tls}")


def settings_lines(config: Config) -> list[str]:
    """Every effective setting of ``config``, one ``# name = value`` line each."""
    reload = config.nginx_reload
    settings: list[tuple[str, str]] = [
        ("files_output_path", f"{config.files_output_path} ({output_path_state(config.files_output_path)})"),
        ("dyups_url", config.dyups_url or "none"),
        ("lua_url", config.lua_url or "none"),
        ("nginx_reload", "none" if reload is None else
         f"test_cmd {list(reload.test_cmd)}, reload_cmd {list(reload.reload_cmd)}, "
         f"min_interval {_seconds(reload.min_interval)}"),
        ("reconcile_interval", _seconds(config.reconcile_interval)),
        ("reassert_interval", _seconds(config.reassert_interval)),
        ("retry_interval", _seconds(config.retry_interval)),
        ("zk_session_timeout", _seconds(config.zk_session_timeout)),
        ("listen", "none" if config.listen is None else
         (f"[{config.listen[0]}]:{config.listen[1]}" if ":" in config.listen[0] else
          f"{config.listen[0]}:{config.listen[1]}")),
        ("prune_files", str(config.prune_files).lower()),
        ("resolve_interval", _seconds(config.resolve_interval)),
        ("allowed_networks", " ".join(map(str, config.networks.allowed)) or "none"),
        ("denied_networks", " ".join(map(str, config.networks.denied)) or "none"),
        *_guards(config.guards),
    ]
    lines = [f"# {name} = {value}" for name, value in settings]
    lines += [_cluster_line(cluster) for cluster in config.clusters]
    for znode in config.znodes:
        options = znode.options
        lines.append(
            f"# upstream {znode.upstream}: format {znode.format}, "
            + ", ".join(f"{name} {value}" for name, value in _guards(znode.guards))
            + (f", server_params {' '.join(f'{k}={v}' if v else k for k, v in options.server_params)}"
               if options.server_params else "")
            + (f", upstream_directives {'; '.join(options.directives)}" if options.directives else "")
            + (f", backup_servers {' '.join(server.address for server in options.backup_servers)}"
               if options.backup_servers else "")
            + (f", allowed_networks {' '.join(map(str, znode.networks.allowed))}"
               if znode.networks.allowed != config.networks.allowed else "")
            + (f", denied_networks {' '.join(map(str, znode.networks.denied))}"
               if znode.networks.denied != config.networks.denied else "")
        )
    return lines


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def warnings(config: Config) -> list[str]:
    """Valid settings that are unsafe, one line each (``check`` prints them on stderr)."""
    lines: list[str] = []
    if config.dyups_url is not None:
        host = urlsplit(config.dyups_url).hostname or ""
        if not _is_loopback(host):
            lines.append(
                f"warning: dyups_url {config.dyups_url} is not on loopback: dyups has no authentication of its "
                "own, so anyone who can reach it can rewrite every upstream; serve it on 127.0.0.1 or ::1 only"
            )
    return lines


def _try_connect(cluster: ClusterConfig, timeout: float) -> str:
    from kazoo.client import KazooClient  # imported late: only --connect needs kazoo
    from kazoo.exceptions import AuthFailedError
    from kazoo.protocol.states import KeeperState

    from reloader.sources.zookeeper import close_client

    quiet = logging.getLogger("reloader.check.kazoo")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    client = KazooClient(**kazoo_arguments(cluster), timeout=timeout, logger=quiet)
    deadline = time.monotonic() + timeout
    try:
        client.start(timeout=timeout)
        # kazoo reports CONNECTED before the SASL exchange has been answered:
        # only a request that comes back proves the session is authenticated.
        client.exists_async("/").get(timeout=max(deadline - time.monotonic(), 0.1))
    except Exception as error:  # noqa: BLE001 - any failure is "unreachable", with its reason
        if isinstance(error, AuthFailedError) or client.client_state == KeeperState.AUTH_FAILED:
            return "authentication failed: ZooKeeper refused this cluster's sasl:/auth: credentials"
        return f"unreachable: {error or type(error).__name__}"
    finally:
        close_client(client)
    return "connected"


def connect_all(config: Config) -> list[tuple[ClusterConfig, str]]:
    """Each cluster with ``connected``, ``unreachable: <error>`` or ``authentication failed: ...``.

    All are tried at once, each within the session timeout, on daemon
    threads: an attempt that outlives its bound does not hold up the exit.
    """
    pool = DaemonPool(max_workers=min(8, len(config.clusters)), name="check-connect")
    try:
        futures = [pool.submit(_try_connect, cluster, config.zk_session_timeout) for cluster in config.clusters]
        deadline = time.monotonic() + config.zk_session_timeout + CONNECT_SLACK
        states = []
        for future in futures:
            try:
                states.append(future.result(timeout=max(deadline - time.monotonic(), 0.0)))
            except FutureTimeout:
                states.append(f"unreachable: no answer within {config.zk_session_timeout:g} s")
    finally:
        pool.shutdown()
    return list(zip(config.clusters, states))
