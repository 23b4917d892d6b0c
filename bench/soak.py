#!/usr/bin/env python
"""Fault soak: random registry churn and real faults, with a checker that counts every broken promise.

Real parts only: a 3-node ZooKeeper ensemble, Debian's nginx with the Lua
module serving real traffic to real backends, the dyups test server in a
process of its own, and two daemons as processes (one in Lua mode, one in
dyups mode), each reaching every ZooKeeper node through a TCP proxy of its
own so that its connections can be black-holed alone.

A seeded schedule (``--seed``; printed first, so any run can be repeated)
mixes registry operations (weight changes, additions, removals, one-batch
replacements, instances expiring in steps, everything removed) with faults:
a daemon's session expiring (SIGSTOP past the session timeout), a leader
kill, quorum loss, a black-holed ZooKeeper, nginx reload, restart and a
worker killed, a hung dyups (SIGSTOP), SIGHUP with a valid and an invalid
config, kill -9 of a daemon and its restart, a SIGTERM restart, and a full
files disk (a tmpfs, where mounting one is allowed).

The checker counts a violation for:

* ``collapse``: a file, the Lua state or the dyups state with fewer usable
  servers than ``(1 - max_drop)`` x the most it had within the last
  ``drop_hold``, unless the registry has been that small for ``drop_hold``;
  or with none at all. As for the guard, a drop held that long and then
  published ends the reference: what was served before it counts no more.
  A registry state shorter than ``BOUNCE`` is not the registry coming back
  (no daemon could be sure to read it); whether a drop in nginx's state was
  held is judged against what its daemon's file served (nginx's own
  history has gaps: a hung dyups, a restarting nginx);
* ``files-first``: the Lua or dyups state naming a set of servers that the
  daemon's file never had (nginx ahead of what survives a restart), seen on
  two samples in a row;
* ``final-state``: after every fault is healed and the input is quiet for
  longer than every window, a file, the Lua state or the dyups state that is
  not the registry's within the deadline;
* ``exit``: a daemon that exited without being told to; ``sigterm``: a
  SIGTERM that took longer than 5 s;
* ``traffic``: nginx answering 5xx for an upstream (every backend is always
  up, so an error means nginx had nowhere to send the request).

Usage::

    bench/soak.py [--seed N] [--duration 90] [--json bench/results/soak.json]

Exit status 0 when no violation was counted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from kazoo.client import KazooClient  # noqa: E402
from kazoo.exceptions import (  # noqa: E402
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)

from bench._common import _EVENT, IN_CLOSE_WRITE, IN_MOVED_TO, Daemon, guard_settings  # noqa: E402
from bench._dyups_proc import DyupsProcess  # noqa: E402
from reloader.localenv.backends import BackendPool  # noqa: E402
from reloader.localenv.ensemble import LocalEnsemble  # noqa: E402
from reloader.localenv.luanginx import LuaNginx  # noqa: E402
from reloader.localenv.nginx import server_block  # noqa: E402
from reloader.localenv.ports import free_port  # noqa: E402
from reloader.localenv.tcpproxy import TcpProxy  # noqa: E402

UPSTREAMS = ("alpha", "bravo", "charlie", "delta")
BACKENDS = 10
SESSION_TIMEOUT = 2.0
MAX_DROP = 0.5
DROP_HOLD = 3.0
SETTLE = 3.0
RECONCILE = 1.0
#: Longer than every window: what a quiet point waits before the state must be the registry's.
QUIET = DROP_HOLD + SETTLE + 2 * RECONCILE + 1.0
FINAL_DEADLINE = 30.0
SIGTERM_LIMIT = 5.0
#: Slack for the checker's own sampling when it compares a drop with the registry's history.
SLACK = 0.6
#: A registry state that lasted less than this may never have been read by a daemon: ZooKeeper's
#: watches say that something changed, and by the time the daemon reads, it may have changed again.
#: The checker does not count such a bounce as the registry coming back during a hold (see _drop_held).
BOUNCE = 0.3
#: A channel not sampled for longer than this has a gap in its history (see _check_collapse).
GAP = 1.0
#: The Lua interface's token header (the daemon sends it; the soak reads the state with it).
TOKEN_HEADER = "X-Reloader-Token"


def usable(servers: Iterator[tuple[str, dict[str, str]]] | list[tuple[str, dict[str, str]]]) -> frozenset[str]:
    """The endpoints nginx would send primary traffic to: not down, not backup, weight above zero."""
    found = set()
    for endpoint, params in servers:
        if "down" in params or "backup" in params or params.get("weight", "1") in ("0", ""):
            continue
        found.add(endpoint)
    return frozenset(found)


def parse_server_lines(lines: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``server HOST:PORT k=v flag`` statements (with or without ';') as (endpoint, params)."""
    servers = []
    for line in lines:
        words = line.strip().rstrip(";").split()
        if len(words) < 2 or words[0] != "server":
            continue
        params: dict[str, str] = {}
        for word in words[2:]:
            key, _, value = word.partition("=")
            params[key] = value
        servers.append((words[1], params))
    return servers


def file_servers(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    lines = [line for line in text.splitlines() if line.strip().startswith("server ")]
    return usable(parse_server_lines(lines))


def _lasting(history: list[tuple[float, int]], now: float, at_least: float) -> list[tuple[float, int]]:
    """The change points of ``history`` without its short rises.

    A state that lasted less than ``at_least`` seconds (the current one:
    until ``now``) and was higher than the one before it is dropped: a
    daemon may never have read it, so it is not the registry coming back. A
    short state lower than the one before is kept: the registry was that
    low from then on, whatever it went to next (a shrink in quick steps is
    one drop, from its first step).
    """
    kept = []
    for index, (when, value) in enumerate(history):
        until = history[index + 1][0] if index + 1 < len(history) else now
        fell = index > 0 and value < history[index - 1][1]
        if until - when >= at_least or fell:
            kept.append((when, value))
    return kept


def _most_over(history: Iterable[tuple[float, int]], start: float, end: float, default: int) -> int:
    """The largest value in effect at any moment of [start, end], from (time, value) change points in order."""
    before: int | None = None
    most: int | None = None
    for when, value in history:
        if when <= start:
            before = value
        elif when <= end:
            most = value if most is None else max(most, value)
    values = [value for value in (before, most) if value is not None]
    return max(values) if values else default


@dataclass
class Channel:
    """What one output (a file, Lua, dyups) of one upstream has shown over time."""

    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4000))
    ahead_since: float | None = None
    # Set while a collapse is being reported, so that one episode counts once.
    collapsed: bool = False
    # When this channel was last sampled: a gap (its output stopped or unreachable) breaks its history.
    seen_at: float | None = None
    # When it last showed a drop that had been held for drop_hold: as for the guard, what it
    # served before then is no reference any more (the history itself stays: _drop_held reads it).
    released_at: float = -math.inf


@dataclass
class Report:
    seed: int
    duration: float
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[dict[str, Any]] = field(default_factory=list)
    sigterm_seconds: list[float] = field(default_factory=list)
    requests: int = 0
    samples: int = 0
    skipped_faults: list[str] = field(default_factory=list)
    soak_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def violation(self, kind: str, **detail: Any) -> None:
        with self.lock:
            self.violations.append({"kind": kind, "at": round(time.monotonic() - START, 2), **detail})
        print(f"VIOLATION {kind}: {detail}", flush=True)


START = time.monotonic()


class Registry:
    """The registry as the soak wrote it, with its history of usable counts per upstream."""

    def __init__(self, client: KazooClient, base: str, backends: list[str]) -> None:
        self.client = client
        self.base = base
        self.backends = backends
        self.lock = threading.Lock()
        self.truth: dict[str, dict[str, int]] = {name: {} for name in UPSTREAMS}
        self.history: dict[str, deque[tuple[float, int]]] = {name: deque(maxlen=4000) for name in UPSTREAMS}

    def path(self, name: str, child: str | None = None) -> str:
        return f"{self.base}/{name}" + (f"/{child}" if child else "")

    def _note(self, name: str) -> None:
        count = sum(1 for weight in self.truth[name].values() if weight > 0)
        self.history[name].append((time.monotonic(), count))

    def set(self, name: str, children: dict[str, int]) -> None:
        """Make ``name``'s children exactly ``children`` in one transaction.

        The soak's own session lives through the same faults as the daemons'
        (a leader kill, quorum loss): a commit whose answer was lost is
        checked against what ZooKeeper holds and sent again from there.
        """
        with self.lock:
            deadline = time.monotonic() + 60
            old = self.truth[name]
            while True:
                try:
                    self._commit(name, old, children)
                    break
                except (ConnectionLoss, SessionExpiredError, OperationTimeoutError, NodeExistsError,
                        NoNodeError, RuntimeError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                    try:
                        old = self._actual(name)
                    except (ConnectionLoss, SessionExpiredError, OperationTimeoutError):
                        old = self.truth[name]
                    if old == children:
                        break
            self.truth[name] = dict(children)
            self._note(name)

    def _commit(self, name: str, old: dict[str, int], children: dict[str, int]) -> None:
        tx = self.client.transaction()
        for child in old:
            if child not in children:
                tx.delete(self.path(name, child))
        for child, weight in children.items():
            data = str(weight).encode()
            if child not in old:
                tx.create(self.path(name, child), data)
            elif old[child] != weight:
                tx.set_data(self.path(name, child), data)
        results = tx.commit()
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"registry transaction for {name} failed: {failed}")

    def _actual(self, name: str) -> dict[str, int]:
        """What ZooKeeper holds now for ``name`` (after a commit whose answer was lost)."""
        actual = {}
        for child in self.client.get_children(self.path(name)):
            data, _ = self.client.get(self.path(name, child))
            actual[child] = int(data or b"1")
        return actual

    def usable_now(self, name: str) -> frozenset[str]:
        with self.lock:
            return frozenset(child for child, weight in self.truth[name].items() if weight > 0)


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.seed: int = args.seed
        self.rng = random.Random(self.seed)
        self.workdir = workdir
        self.report = Report(seed=self.seed, duration=args.duration)
        self.stop = threading.Event()
        self.expected_down: set[str] = set()  # daemons we stopped on purpose
        self.nginx_down = threading.Event()
        # While the dyups process is stopped, its control pipe cannot answer either.
        self.dyups_hung = threading.Event()
        self.file_seen: dict[tuple[str, str], deque[tuple[float, frozenset[str]]]] = defaultdict(
            lambda: deque(maxlen=20000))
        self.channels: dict[tuple[str, str, str], Channel] = defaultdict(Channel)
        self.file_lock = threading.Lock()

    # ---- set-up ---------------------------------------------------------------

    def run(self) -> Report:
        print(f"soak: seed {self.seed}, {self.args.duration:g} s", flush=True)
        with ExitStack() as stack:
            self.ensemble = stack.enter_context(LocalEnsemble(voters=3))
            self.ensemble.start()
            self.backends = stack.enter_context(BackendPool(BACKENDS, prefix="soak"))
            self.backends.start()
            # Retry connecting for ever: the soak's own session lives through leader kills and quorum loss.
            self.client = KazooClient(hosts=self.ensemble.hosts, timeout=10,
                                      connection_retry={"max_tries": -1, "max_delay": 1.0})
            self.client.start(timeout=30)
            stack.callback(self._close_client)
            self.registry = Registry(self.client, "/soak", [b.address for b in self.backends])
            self.dyups = stack.enter_context(DyupsProcess())
            self.dyups.start()
            self.tmpfs = self._mount_files_dirs(stack)
            self.proxies = {
                who: [stack.enter_context(TcpProxy(node.port)).start() for node in self.ensemble.voters]
                for who in ("lua", "dyups")
            }
            self._populate()
            # The soak's backends are on loopback, which the registry may not name by default.
            self.policy = guard_settings(self.workdir, {"allowed_networks": ["127.0.0.0/8"]})
            self.lua_port = free_port()
            self.front_port = free_port()
            self.daemons = {
                "lua": self._daemon("lua", {"lua_url": f"http://127.0.0.1:{self.lua_port}"}),
                "dyups": self._daemon("dyups", {"dyups_url": self.dyups.url}),
            }
            for daemon in self.daemons.values():
                daemon.start()
            stack.callback(self._stop_daemons)
            self._wait_files("lua")
            self.nginx = stack.enter_context(LuaNginx(self.lua_port, self.files_dir("lua"),
                                                      workdir=self.workdir / "nginx"))
            locations = "".join(f"location /{name}/ {{\n    proxy_pass http://{name};\n}}\n" for name in UPSTREAMS)
            self.nginx.write_config(server_block(self.front_port, locations))
            self.nginx.start()
            self._quiet_point("start", wait=0.0)  # nothing has opened a window yet: poll at once
            threads = [threading.Thread(target=self._files_sampler, daemon=True),
                       *(threading.Thread(target=self._files_watcher, args=(who,), daemon=True)
                         for who in ("lua", "dyups")),
                       threading.Thread(target=self._checker, daemon=True),
                       threading.Thread(target=self._traffic, daemon=True)]
            for thread in threads:
                thread.start()
            try:
                self._schedule()
                self._quiet_point("end")
            finally:
                self.stop.set()
                for thread in threads:
                    thread.join(5)
            for who, daemon in self.daemons.items():
                took = daemon.stop(timeout=15)
                self._sigterm_took(who, took)
        return self.report

    def _close_client(self) -> None:
        try:
            self.client.stop()
            self.client.close()
        except Exception:  # noqa: BLE001 - teardown
            pass

    def _stop_daemons(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()

    def files_dir(self, who: str) -> Path:
        return self.workdir / f"files-{who}"

    def _mount_files_dirs(self, stack: ExitStack) -> bool:
        mounted = True
        for who in ("lua", "dyups"):
            directory = self.files_dir(who)
            directory.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                mounted = False
                continue
            stack.callback(subprocess.run, ["umount", "-l", str(directory)], capture_output=True)
        if not mounted:
            self.report.skipped_faults.append("full-disk (cannot mount a tmpfs here)")
        return mounted

    def _populate(self) -> None:
        self.client.ensure_path("/soak")
        for name in UPSTREAMS:
            try:
                self.client.create(self.registry.path(name))
            except NodeExistsError:
                pass
            picks = self.rng.sample(self.registry.backends, 6)
            self.registry.set(name, {child: self.rng.choice((1, 1, 2, 3)) for child in picks})

    def _config(self, who: str, extra: dict[str, Any]) -> dict[str, Any]:
        hosts = ",".join(proxy.hosts for proxy in self.proxies[who])
        return {
            "files_output_path": str(self.files_dir(who)),
            "zk_session_timeout": SESSION_TIMEOUT,
            "retry_interval": 0.2,
            "reconcile_interval": RECONCILE,
            "reassert_interval": 10,
            "max_drop": f"{int(MAX_DROP * 100)}%",
            "drop_hold": DROP_HOLD,
            "settle_after_reconnect": SETTLE,
            **self.policy,
            **extra,
            "clusters": [{"zk_servers": hosts, "zk_nodes": {name: self.registry.path(name) for name in UPSTREAMS}}],
        }

    def _daemon(self, who: str, extra: dict[str, Any]) -> Daemon:
        return Daemon(self.workdir, self._config(who, extra), name=f"daemon-{who}", log_level="INFO")

    def _wait_files(self, who: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while any(not (self.files_dir(who) / f"{name}.upstream").exists() for name in UPSTREAMS):
            self.daemons[who].check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon {who} wrote no files:\n{self.daemons[who].log_tail()}")
            time.sleep(0.05)

    # ---- what the outputs show ---------------------------------------------------

    def read_file(self, who: str, name: str) -> frozenset[str] | None:
        try:
            text = (self.files_dir(who) / f"{name}.upstream").read_text()
        except OSError:
            return None
        return file_servers(text)

    def lua_token(self) -> str | None:
        for candidate in self.files_dir("lua").glob(".*secret*"):
            try:
                return candidate.read_text().strip()
            except OSError:
                return None
        return None

    def lua_state(self) -> dict[str, frozenset[str]] | None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.lua_port}/upstreams")
        token = self.lua_token()
        if token:
            request.add_header(TOKEN_HEADER, token)
        try:
            with urllib.request.urlopen(request, timeout=1) as answer:
                document = json.loads(answer.read(4 << 20))
        except (OSError, ValueError):
            return None
        upstreams = document.get("upstreams", document) if isinstance(document, dict) else {}
        state = {}
        for name, doc in upstreams.items():
            if not isinstance(doc, dict):
                continue
            servers = []
            for server in doc.get("servers", []):
                params = {"weight": str(server.get("weight", 1))}
                if server.get("down"):
                    params["down"] = ""
                if server.get("backup"):
                    params["backup"] = ""
                servers.append((f"{server.get('host')}:{server.get('port')}", params))
            state[name] = usable(servers)
        return state

    def dyups_state(self) -> dict[str, frozenset[str]] | None:
        if self.dyups_hung.is_set():
            return None
        try:
            table = self.dyups.upstreams(list(UPSTREAMS))
        except Exception:  # noqa: BLE001 - the dyups process may be stopped on purpose
            return None
        return {name: usable(parse_server_lines(list(lines))) for name, lines in table.items()}

    # ---- the checker -----------------------------------------------------------------

    def _files_sampler(self) -> None:
        """Every file state, sampled fast, so that 'nginx ahead of the file' can be told apart."""
        while not self.stop.is_set():
            for who in ("lua", "dyups"):
                for name in UPSTREAMS:
                    self._saw_file(who, name, self.read_file(who, name))
            self.stop.wait(0.004)

    def _saw_file(self, who: str, name: str, servers: frozenset[str] | None) -> None:
        if servers is None:
            return
        with self.file_lock:
            seen = self.file_seen[(who, name)]
            if not seen or seen[-1][1] != servers:
                seen.append((time.monotonic(), servers))

    def _files_watcher(self, who: str) -> None:
        """Read each file the moment the daemon closes its temporary copy or renames it into place.

        A state the daemon replaces within a millisecond or two (a burst of
        registry changes) would slip between two polls; its temporary file
        is read here before the rename instead.
        """
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        directory = self.files_dir(who)
        if fd < 0 or libc.inotify_add_watch(fd, str(directory).encode(), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            return
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            while not self.stop.is_set():
                if not poller.poll(100):
                    continue
                try:
                    data = os.read(fd, 1 << 20)
                except BlockingIOError:
                    continue
                offset = 0
                while offset < len(data):
                    _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                    offset += _EVENT.size
                    file = data[offset:offset + length].rstrip(b"\0").decode(errors="replace")
                    offset += length
                    name = file.lstrip(".").split(".upstream", 1)[0]
                    if name not in UPSTREAMS or ".upstream" not in file:
                        continue
                    try:
                        text = (directory / file).read_text()
                    except OSError:
                        continue  # already renamed or replaced: the next event reads it
                    self._saw_file(who, name, file_servers(text))
        finally:
            os.close(fd)

    def _file_had(self, who: str, name: str, servers: frozenset[str]) -> bool:
        with self.file_lock:
            return any(state == servers for _, state in self.file_seen[(who, name)])

    def _checker(self) -> None:
        while not self.stop.wait(0.15):
            now = time.monotonic()
            self.report.samples += 1
            self._check_exits()
            lua = self.lua_state() if not self.nginx_down.is_set() else None
            dyups = self.dyups_state()
            for name in UPSTREAMS:
                for who in ("lua", "dyups"):
                    self._check_collapse(("file", who, name), self.read_file(who, name), now)
                if lua is not None and name in lua:
                    self._check_collapse(("lua", "lua", name), lua[name], now)
                    self._check_ahead("lua", name, lua[name], now)
                if dyups is not None and name in dyups:
                    self._check_collapse(("dyups", "dyups", name), dyups[name], now)
                    self._check_ahead("dyups", name, dyups[name], now)

    def _check_collapse(self, key: tuple[str, str, str], servers: frozenset[str] | None, now: float) -> None:
        if servers is None:
            return
        channel = self.channels[key]
        count = len(servers)
        name = key[2]
        if channel.seen_at is not None and now - channel.seen_at > GAP:
            # Not sampled for a while (a hung dyups, nginx restarting): what it served
            # meanwhile is unknown, so the state before the gap is no reference.
            channel.history.clear()
            channel.collapsed = False
        channel.seen_at = now
        most = max(_most_over(channel.history, max(now - DROP_HOLD + SLACK, channel.released_at), now, count), count)
        floor = math.ceil((1 - MAX_DROP) * most - 1e-9)
        # Whether a drop was held is judged against what the daemon's file served before it began:
        # nginx's own history has holes (a hung dyups, a restarting nginx) and only follows the file.
        decided = channel if key[0] == "file" else self.channels[("file", key[1], name)]
        collapsed = count == 0 or (count < floor and not self._drop_held(name, decided, now))
        if count < floor and not collapsed:
            # A drop held for drop_hold and then published: as the guard does, the reference
            # starts again from here, so the same drop is not held (nor counted) twice.
            channel.released_at = now
        if collapsed and not channel.collapsed:
            self.report.violation("collapse", channel="/".join(key), usable=count, most_recent=most,
                                  wall=time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() % 1 * 1000):03d}",
                                  history=[(round(when - now, 3), value) for when, value in list(channel.history)[-8:]],
                                  registry=[(round(when - now, 3), value)
                                            for when, value in list(self.registry.history[name])[-8:]])
        channel.collapsed = collapsed
        if not channel.history or channel.history[-1][1] != count:
            channel.history.append((now, count))

    def _drop_held(self, name: str, channel: Channel, now: float) -> bool:
        """Whether the registry dropped below this channel's floor at least drop_hold ago and stayed below it.

        The floor is the one of the moment the drop began (from the most the
        channel served within drop_hold before it): a registry that keeps
        shrinking during a hold is one drop, held since it began.
        """
        with self.registry.lock:
            registry = _lasting(list(self.registry.history[name]), now, BOUNCE)
        latest = now - DROP_HOLD + SLACK
        for began in [when for when, _ in registry if now - 120 <= when <= latest] + [latest]:
            reference = _most_over(channel.history, began - DROP_HOLD - SLACK, began, 0)
            floor = math.ceil((1 - MAX_DROP) * reference - 1e-9)
            if _most_over(registry, began, now, 0) < floor:
                return True
        return False

    def _check_ahead(self, who: str, name: str, servers: frozenset[str], now: float) -> None:
        channel = self.channels[("ahead", who, name)]
        if self._file_had(who, name, servers):
            channel.ahead_since = None
            return
        if channel.ahead_since is None:
            channel.ahead_since = now
            return
        self.report.violation("files-first", output=who, upstream=name, servers=sorted(servers))
        channel.ahead_since = None

    def _check_exits(self) -> None:
        for who, daemon in self.daemons.items():
            if who in self.expected_down or daemon.alive():
                continue
            code = daemon.proc.returncode if daemon.proc else None
            self.report.violation("exit", daemon=who, code=code, log=daemon.log_tail(15))
            daemon.start()

    def _traffic(self) -> None:
        index = 0
        while not self.stop.wait(0.03):
            name = UPSTREAMS[index % len(UPSTREAMS)]
            index += 1
            if self.nginx_down.is_set():
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.front_port}/{name}/", timeout=2) as answer:
                    answer.read()
                self.report.requests += 1
            except urllib.error.HTTPError as error:
                self.report.requests += 1
                if error.code >= 500 and not self.nginx_down.is_set():
                    self.report.violation("traffic", upstream=name, status=error.code)
            except OSError:
                pass  # nginx restarting or its worker killed: not the daemon's doing

    # ---- quiet points -------------------------------------------------------------------

    def _quiet_point(self, label: str, wait: float = QUIET) -> None:
        """Heal everything, wait past every window (``wait``), then every output must be the registry's."""
        self.report.operations["quiet-point"] += 1
        time.sleep(wait)  # the windows are the point: nothing to poll for until they are over
        deadline = time.monotonic() + FINAL_DEADLINE
        while True:
            wrong = self._differences()
            if not wrong:
                return
            if time.monotonic() > deadline:
                self.report.violation("final-state", label=label, wrong=wrong[:6])
                return
            time.sleep(0.2)

    def _differences(self) -> list[str]:
        wrong = []
        lua = None if self.nginx_down.is_set() else self.lua_state()
        dyups = self.dyups_state()
        for name in UPSTREAMS:
            want = self.registry.usable_now(name)
            if not want:
                continue  # zero usable servers is never published: the last good state stays
            for who in ("lua", "dyups"):
                have = self.read_file(who, name)
                if have != want:
                    wrong.append(f"file {who}/{name}: {sorted(have or ())} != {sorted(want)}")
            if lua is None or lua.get(name) != want:
                wrong.append(f"lua/{name}: {sorted((lua or {}).get(name, ()))} != {sorted(want)}")
            if dyups is None or dyups.get(name) != want:
                wrong.append(f"dyups/{name}: {sorted((dyups or {}).get(name, ()))} != {sorted(want)}")
        return wrong

    # ---- the schedule -------------------------------------------------------------------

    def _schedule(self) -> None:
        operations: list[tuple[float, Callable[[], None]]] = [
            (30, self.op_weights), (20, self.op_add), (15, self.op_remove), (10, self.op_replace),
            (6, self.op_expire_in_steps), (3, self.op_remove_all),
        ]
        faults: list[tuple[float, Callable[[], None]]] = [
            (3, self.fault_session_expiry), (2, self.fault_leader_kill), (1, self.fault_quorum_loss),
            (2, self.fault_blackhole), (2, self.fault_nginx_reload), (1, self.fault_nginx_restart),
            (2, self.fault_worker_kill), (2, self.fault_hung_dyups), (2, self.fault_sighup_valid),
            (2, self.fault_sighup_invalid), (1, self.fault_kill9), (1, self.fault_sigterm_restart),
        ]
        if self.tmpfs:
            faults.append((1, self.fault_full_disk))
        end = time.monotonic() + self.args.duration
        last_quiet = time.monotonic()
        while time.monotonic() < end:
            pool = faults if self.rng.random() < 0.25 else operations
            action = self.rng.choices([fn for _, fn in pool], weights=[w for w, _ in pool])[0]
            try:
                action()
            except Exception as error:  # noqa: BLE001 - the soak's own trouble is reported, not a violation
                self.report.soak_errors.append(f"{action.__name__}: {type(error).__name__}: {error}")
                print(f"  soak error in {action.__name__}: {type(error).__name__}: {error}", flush=True)
            time.sleep(self.rng.uniform(0.05, 0.6))
            if time.monotonic() - last_quiet > self.args.quiet_every:
                self._quiet_point(f"t+{time.monotonic() - START:.0f}s")
                last_quiet = time.monotonic()

    def _pick(self) -> str:
        return self.rng.choice(UPSTREAMS)

    def _free_backends(self, name: str) -> list[str]:
        current = self.registry.truth[name]
        return [backend for backend in self.registry.backends if backend not in current]

    def op_weights(self) -> None:
        name = self._pick()
        children = dict(self.registry.truth[name])
        if not children:
            return self.op_add()
        child = self.rng.choice(sorted(children))
        children[child] = self.rng.choice((0, 1, 2, 3, 5)) if self.rng.random() < 0.15 else self.rng.choice((1, 2, 3))
        self.report.operations["weight"] += 1
        self.registry.set(name, children)

    def op_add(self) -> None:
        name = self._pick()
        free = self._free_backends(name)
        if not free:
            return
        children = dict(self.registry.truth[name])
        for backend in self.rng.sample(free, min(len(free), self.rng.choice((1, 1, 2)))):
            children[backend] = self.rng.choice((1, 2))
        self.report.operations["add"] += 1
        self.registry.set(name, children)

    def op_remove(self) -> None:
        name = self._pick()
        children = dict(self.registry.truth[name])
        if len(children) <= 1:
            return self.op_add()
        del children[self.rng.choice(sorted(children))]
        self.report.operations["remove"] += 1
        self.registry.set(name, children)

    def op_replace(self) -> None:
        name = self._pick()
        children = dict(self.registry.truth[name])
        free = self._free_backends(name)
        if not children or not free:
            return
        k = self.rng.randint(1, min(len(children), len(free)))
        for child in self.rng.sample(sorted(children), k):
            del children[child]
        for backend in self.rng.sample(free, k):
            children[backend] = 1
        self.report.operations["replace"] += 1
        self.registry.set(name, children)

    def op_expire_in_steps(self) -> None:
        """Instances expiring in tick-sized buckets: many small drops that add up to a big one."""
        name = self._pick()
        children = dict(self.registry.truth[name])
        if len(children) < 3:
            return self.op_add()
        self.report.operations["expire-in-steps"] += 1
        doomed = self.rng.sample(sorted(children), len(children) - 1)
        for child in doomed:
            del children[child]
            self.registry.set(name, dict(children))
            time.sleep(self.rng.uniform(0.1, 0.6))
        if self.rng.random() < 0.7:
            time.sleep(self.rng.uniform(0.5, DROP_HOLD + 1))
            picks = self.rng.sample(self._free_backends(name), self.rng.randint(3, 6))
            children.update({backend: 1 for backend in picks})
            self.registry.set(name, children)

    def op_remove_all(self) -> None:
        name = self._pick()
        self.report.operations["remove-all"] += 1
        before = dict(self.registry.truth[name])
        self.registry.set(name, {})
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.registry.set(name, before)

    # ---- faults ---------------------------------------------------------------------------

    def _victim(self) -> str:
        return self.rng.choice(("lua", "dyups"))

    @contextmanager
    def _fault(self, kind: str) -> Iterator[None]:
        self.report.faults[kind] += 1
        print(f"  fault {kind} at t+{time.monotonic() - START:.1f}s", flush=True)
        yield

    def fault_session_expiry(self) -> None:
        who = self._victim()
        daemon = self.daemons[who]
        with self._fault("session-expiry"):
            os.kill(daemon.pid, signal.SIGSTOP)
            try:
                self._churn_for(SESSION_TIMEOUT + 1.5)
            finally:
                os.kill(daemon.pid, signal.SIGCONT)

    def _churn_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rng.choice((self.op_weights, self.op_add, self.op_remove))()
            time.sleep(self.rng.uniform(0.1, 0.5))

    def fault_leader_kill(self) -> None:
        with self._fault("leader-kill"):
            leader = self.ensemble.leader()
            self.ensemble.kill(leader)
            self._churn_for(self.rng.uniform(0.5, 2.0))
            self.ensemble.start(leader)

    def fault_quorum_loss(self) -> None:
        with self._fault("quorum-loss"):
            victims = self.rng.sample(range(3), 2)
            for node in victims:
                self.ensemble.stop(node)
            time.sleep(self.rng.uniform(1.0, 4.0))
            for node in victims:
                self.ensemble.start(node, wait=False)
            self.ensemble.leader(timeout=30)
            self._reconnect_writer()

    def _reconnect_writer(self) -> None:
        deadline = time.monotonic() + 30
        while not self.client.connected and time.monotonic() < deadline:
            time.sleep(0.05)

    def fault_blackhole(self) -> None:
        who = self._victim()
        with self._fault("blackhole"):
            for proxy in self.proxies[who]:
                proxy.blackhole()
            try:
                self._churn_for(self.rng.uniform(1.0, SESSION_TIMEOUT + 2))
            finally:
                for proxy in self.proxies[who]:
                    proxy.pass_through()

    def fault_nginx_reload(self) -> None:
        with self._fault("nginx-reload"):
            self.nginx.reload()

    def fault_nginx_restart(self) -> None:
        with self._fault("nginx-restart"):
            self.nginx_down.set()
            try:
                self.nginx.restart()
            finally:
                self.nginx_down.clear()

    def fault_worker_kill(self) -> None:
        with self._fault("nginx-worker-kill"):
            workers = sorted(self.nginx.worker_pids())
            if workers:
                try:
                    os.kill(self.rng.choice(workers), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def fault_hung_dyups(self) -> None:
        with self._fault("hung-dyups"):
            self.dyups_hung.set()
            os.kill(self.dyups.pid, signal.SIGSTOP)
            try:
                self._churn_for(self.rng.uniform(1.0, 3.0))
            finally:
                os.kill(self.dyups.pid, signal.SIGCONT)
                self.dyups_hung.clear()

    def fault_sighup_valid(self) -> None:
        who = self._victim()
        daemon = self.daemons[who]
        with self._fault("sighup-valid"):
            config = dict(daemon.config)
            config["reassert_interval"] = self.rng.choice((5, 10, 15))
            daemon.config = config
            daemon.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            daemon.signal(signal.SIGHUP)

    def fault_sighup_invalid(self) -> None:
        who = self._victim()
        daemon = self.daemons[who]
        with self._fault("sighup-invalid"):
            good = daemon.config_path.read_text()
            daemon.config_path.write_text(good + "\nclusters: [this is: not: valid\n")
            daemon.signal(signal.SIGHUP)
            self._churn_for(self.rng.uniform(0.3, 1.0))
            daemon.config_path.write_text(good)
            daemon.signal(signal.SIGHUP)

    def fault_kill9(self) -> None:
        who = self._victim()
        daemon = self.daemons[who]
        with self._fault("kill-9"):
            self.expected_down.add(who)
            try:
                daemon.kill()
                self._churn_for(self.rng.uniform(0.2, 1.5))
                daemon.start()
            finally:
                self.expected_down.discard(who)

    def fault_sigterm_restart(self) -> None:
        who = self._victim()
        daemon = self.daemons[who]
        with self._fault("sigterm-restart"):
            self.expected_down.add(who)
            try:
                took = daemon.stop(timeout=15)
                self._sigterm_took(who, took)
                daemon.start()
            finally:
                self.expected_down.discard(who)

    def _sigterm_took(self, who: str, took: float | None) -> None:
        if took is None:
            self.report.violation("sigterm", daemon=who, seconds=None)
            return
        self.report.sigterm_seconds.append(round(took, 3))
        if took > SIGTERM_LIMIT:
            self.report.violation("sigterm", daemon=who, seconds=round(took, 2))

    def fault_full_disk(self) -> None:
        who = self._victim()
        filler = self.files_dir(who) / "filler"
        with self._fault("full-disk"):
            try:
                with filler.open("wb", buffering=0) as handle:
                    while True:
                        handle.write(b"\0" * 65536)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
            try:
                self._churn_for(self.rng.uniform(1.0, 3.0))
            finally:
                filler.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: random, printed)")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of schedule (default 90)")
    parser.add_argument("--quiet-every", type=float, default=45.0, help="seconds between quiet points")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    report = Soak(args, workdir).run()
    result = {
        "seed": report.seed,
        "duration_s": report.duration,
        "wall_s": round(time.monotonic() - began, 1),
        "operations": dict(report.operations),
        "operations_total": sum(report.operations.values()),
        "faults": dict(report.faults),
        "faults_total": sum(report.faults.values()),
        "skipped_faults": report.skipped_faults,
        "soak_errors": report.soak_errors[:20],
        "requests": report.requests,
        "checker_samples": report.samples,
        "sigterm_seconds_max": max(report.sigterm_seconds, default=None),
        "violations": len(report.violations),
        "violation_details": report.violations[:50],
        "workdir": str(workdir),
    }
    print(json.dumps(result, indent=2), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not report.violations else 1


if __name__ == "__main__":
    sys.exit(main())
