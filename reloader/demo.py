"""``nginx-upstream-reloader demo``: the whole thing on one machine, nothing configured.

It starts, all on 127.0.0.1 and inside one temporary directory:

* a throwaway ZooKeeper server (Debian's ``zookeeper`` package);
* nginx in a private prefix: stock nginx with the project's Lua module when
  Debian's Lua module is installed (Lua mode: no reloads), else stock nginx
  in reload mode (``nginx -t`` then ``nginx -s reload``), or, with ``--nginx
  PATH`` naming a dyups-enabled build, that nginx with a ``dyups_interface``
  server, in dyups mode;
* three tiny backends that answer with their own name;
* the daemon itself, in-process, on a worker thread.

Then every ``interval`` seconds it registers or removes one backend in
ZooKeeper and shows which backends nginx now sends traffic to. Ctrl-C
(SIGINT) or SIGTERM stops everything it started and removes the directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from kazoo.client import KazooClient

from reloader.localenv.backends import BackendPool
from reloader.localenv.luanginx import LuaNginx, lua_missing
from reloader.localenv.nginx import LocalNginx, NginxError, find_nginx, nginx_missing, server_block
from reloader.localenv.ports import free_port
from reloader.localenv.zookeeper import LocalZooKeeper, ZooKeeperError, find_java, zookeeper_missing
from reloader.model import Server, Upstream
from reloader.render import render_file, render_file_lua

UPSTREAM = "demo"
ZNODE = "/demo/services/demo"
REQUESTS_PER_LOOK = 6

# One step per interval; each adds or removes one backend (indexes into the
# pool), so the set always changes. Starting from {0, 1} the cycle returns
# to {0, 1} after six steps.
STEPS: tuple[tuple[str, int], ...] = (("+", 2), ("-", 0), ("+", 0), ("-", 1), ("+", 1), ("-", 2))


class _Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM: unwinds to the cleanup."""


def _say(text: str = "") -> None:
    """Print a line; once stdout is gone (``| tee`` ended by Ctrl-C), print nothing more.

    A closed pipe must not turn a clean stop into a crash or skip the
    cleanup, so EPIPE is swallowed and stdout is pointed at /dev/null: later
    prints, and the flush at interpreter exit, then succeed silently.
    """
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


# ---------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------


def _ensure_installed(nginx_binary: str | None) -> bool:
    """Make sure ZooKeeper (with java) and nginx can run; install them as root."""
    packages: list[str] = []
    if zookeeper_missing():
        packages.append("zookeeper")
        if find_java() is None:
            packages.append("default-jre-headless")
    if nginx_binary is not None:
        if find_nginx(nginx_binary) is None:
            _say(f"--nginx {nginx_binary}: no executable there.")
            return False
    elif nginx_missing():
        packages.append("nginx")
    if not packages:
        return True
    command = ["apt-get", "install", "-y", *packages]
    if os.geteuid() != 0:
        _say(f"The demo needs {', '.join(packages)}. Install with:")
        _say(f"    sudo apt-get update && sudo {' '.join(command)}")
        return False
    _say(f"Installing {', '.join(packages)}:")
    for argv in (["apt-get", "update"], command):
        _say(f"    $ {' '.join(argv)}")
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            _say((result.stdout + result.stderr).strip()[-2000:])
            _say(f"'{' '.join(argv)}' failed (exit {result.returncode}).")
            return False
    still = zookeeper_missing() or (nginx_missing() if nginx_binary is None else None)
    if still:
        _say(still)
        return False
    return True


# ---------------------------------------------------------------------------
# Looking at traffic
# ---------------------------------------------------------------------------


def _reached(url: str, host_header: str | None, requests: int = REQUESTS_PER_LOOK) -> set[str]:
    """The backends that answered ``requests`` GETs through nginx (errors show as such)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Host": host_header} if host_header else {}
    seen: set[str] = set()
    for _ in range(requests):
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=3) as response:
                seen.add(response.read().decode(errors="replace").strip())
        except urllib.error.HTTPError as error:
            seen.add(f"HTTP {error.code}")
        except OSError as error:
            seen.add(f"error ({getattr(error, 'reason', error)})")
    return seen


def _wait_reached(url: str, host_header: str | None, expected: set[str], timeout: float) -> tuple[set[str], float]:
    """Look until nginx reaches exactly ``expected`` or ``timeout`` passes; return (seen, seconds)."""
    began = time.monotonic()
    while True:
        seen = _reached(url, host_header)
        elapsed = time.monotonic() - began
        if seen == expected or elapsed >= timeout:
            return seen, elapsed
        time.sleep(0.05)


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "nothing"


# ---------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------


def _nginx_config(files_dir: Path, port: int, dyups_port: int | None, proxy: str) -> str:
    body = f'include "{files_dir}/*.upstream";\n'
    if dyups_port is not None:
        body += server_block(dyups_port, "location / {\n    dyups_interface;\n}\n")
    return body + server_block(port, f"location / {{\n{proxy}}}\n")


def _configure_dyups_nginx(nginx: LocalNginx, files_dir: Path, port: int, dyups_port: int) -> str | None:
    """Write a dyups config nginx accepts; return the Host header to send, or None on failure.

    dyups serves only upstreams named by a variable in proxy_pass. Newer
    builds (the 2020 master) have ``$dyups_host``, the request's Host; older
    ones need ``set $ups NAME; proxy_pass http://$ups;``. Try the first,
    fall back to the second.
    """
    nginx.write_config(_nginx_config(files_dir, port, dyups_port, "    proxy_pass http://$dyups_host;\n"))
    ok, _ = nginx.test()
    if ok:
        return UPSTREAM
    nginx.write_config(
        _nginx_config(files_dir, port, dyups_port, f"    set $ups {UPSTREAM};\n    proxy_pass http://$ups;\n")
    )
    ok, output = nginx.test()
    if ok:
        return ""
    _say(f"{nginx.binary} refuses the dyups demo config; is it built with ngx_http_dyups_module?\n{output}")
    return None


def run_demo(nginx_binary: str | None = None, interval: float = 3.0) -> int:
    """Run the demo until SIGINT/SIGTERM; return the exit code (0 after a clean stop)."""
    interval = max(interval, 0.2)
    if not _ensure_installed(nginx_binary):
        return 1

    logging.basicConfig(level=logging.WARNING, format="  daemon: %(levelname)s %(message)s")
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise _Stop

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    workdir = Path(tempfile.mkdtemp(prefix="reloader-demo-"))
    zk: LocalZooKeeper | None = None
    nginx: LocalNginx | None = None
    pool = BackendPool(3, prefix="backend")
    client: KazooClient | None = None
    daemon: Any = None
    worker: threading.Thread | None = None
    code = 0
    try:
        dyups = nginx_binary is not None
        # Stock nginx goes without reloads when Debian's Lua module is there.
        lua = not dyups and lua_missing() is None
        if dyups:
            mode = "dyups (no reloads)"
        elif lua:
            mode = "Lua (no reloads: the project's Lua module in stock nginx)"
        else:
            mode = "reload (nginx -t, then nginx -s reload; install libnginx-mod-http-lua for no reloads)"
        _say(f"nginx-upstream-reloader demo, {mode} mode. Starting ZooKeeper, nginx and three backends...")

        # nginx first: a --nginx build without dyups is refused before
        # anything else starts. The daemon's settings are completed below.
        files_dir = workdir / "upstreams"
        files_dir.mkdir()
        nginx = (
            LuaNginx(free_port(), files_dir, workdir=workdir / "nginx")
            if lua
            else LocalNginx(nginx_binary or "nginx", workdir=workdir / "nginx")
        )
        port = free_port()
        # The demo's backends listen on loopback, which registry instances may
        # not name unless the config allows it (reloader/netpolicy.py).
        settings: dict[str, Any] = {"zk_nodes": {UPSTREAM: ZNODE}, "files_output_path": str(files_dir),
                                    "allowed_networks": ["127.0.0.0/8"]}
        host_header: str | None = None
        if dyups:
            dyups_port = free_port()
            host_header = _configure_dyups_nginx(nginx, files_dir, port, dyups_port)
            if host_header is None:
                return 1
            settings["dyups_url"] = f"http://127.0.0.1:{dyups_port}"
        elif isinstance(nginx, LuaNginx):
            # The Lua snippet includes the files itself.
            nginx.write_config(server_block(port, f"location / {{\n    proxy_pass http://{UPSTREAM};\n}}\n"))
            settings["lua_url"] = nginx.api_url
        else:
            nginx.write_config(_nginx_config(files_dir, port, None, f"    proxy_pass http://{UPSTREAM};\n"))
            settings["nginx_reload"] = {
                "test_cmd": nginx.test_argv(),
                "reload_cmd": nginx.reload_argv(),
                "min_interval": min(1.0, interval / 2),
            }

        zk = LocalZooKeeper(workdir=workdir / "zookeeper")
        zk.start()
        settings["zk_servers"] = zk.hosts
        pool.start()
        members = {0, 1}
        client = zk.client()
        for index in sorted(members):
            client.create(f"{ZNODE}/{pool[index].address}", makepath=True)

        # nginx refuses an upstream without servers, so the first file is
        # written here; the daemon adopts it at start-up (no reload needed).
        servers = tuple(Server("127.0.0.1", pool[i].port) for i in sorted(members))
        (files_dir / f"{UPSTREAM}.upstream").write_text(
            (render_file_lua if lua else render_file)(Upstream(UPSTREAM, servers, live_count=len(servers)))
        )
        nginx.start()

        from reloader.config import parse_config
        from reloader.daemon import Daemon

        daemon = Daemon(parse_config(settings, source="<demo>"))
        # Signals reach the main thread only, so the daemon's loop runs on
        # its own thread and is stopped with request_stop().
        worker = threading.Thread(target=daemon.run, name="reloader-daemon", daemon=True)
        worker.start()

        url = nginx.url()
        curl = f"curl -H 'Host: {host_header}' {url}" if host_header else f"curl {url}"
        _say(f"  ZooKeeper  {zk.hosts}, instances under {ZNODE}")
        _say(f"  nginx      {url}   try: {curl}")
        _say("  backends   " + ", ".join(f"{b.name} {b.address}" for b in pool))
        _say(f"Every {interval:g} s one backend joins or leaves ZooKeeper. Ctrl-C stops the demo.")
        _say()

        began = time.monotonic()
        expected = {pool[i].name for i in members}
        seen, _ = _wait_reached(url, host_header, expected, timeout=min(10.0, max(interval, 2.0)))
        _say(f"[{0:5.1f}s] registered {_names(expected)}  ->  nginx reaches {_names(seen)}")

        step = 0
        while True:
            next_at = began + (step + 1) * interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            sign, index = STEPS[step % len(STEPS)]
            backend = pool[index]
            node = f"{ZNODE}/{backend.address}"
            if sign == "+":
                client.create(node)
                members.add(index)
                change = f"+ {backend.name} registered"
            else:
                client.delete(node)
                members.discard(index)
                change = f"- {backend.name} removed   "
            expected = {pool[i].name for i in members}
            seen, took = _wait_reached(url, host_header, expected, timeout=max(interval * 0.8, 0.5))
            note = f"(after {took:.1f} s)" if seen == expected else "(not there yet)"
            _say(f"[{time.monotonic() - began:5.1f}s] {change}  ->  nginx reaches {_names(seen)}  {note}")
            step += 1
    except _Stop:
        code = 0
    except (ZooKeeperError, NginxError, OSError) as error:
        _say(f"The demo could not run: {error}")
        code = 1
    finally:
        # A second Ctrl-C must not interrupt the cleanup.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        _say()
        _say("Stopping...")
        if daemon is not None:
            daemon.request_stop()
        if worker is not None:
            worker.join(timeout=10)
        if client is not None:
            client.stop()
            client.close()
        if nginx is not None:
            nginx.close()
        if zk is not None:
            zk.stop()
        pool.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _say(f"Stopped ZooKeeper, nginx, the backends and the daemon; removed {workdir}.")
    return code
