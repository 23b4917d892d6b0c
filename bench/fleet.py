#!/usr/bin/env python
"""Fleet sizing: N daemons watching the same upstreams against one ZooKeeper.

Every daemon is a real ``python -m reloader run`` process with its own files
directory (files only: the file rename is the marker that a daemon caught a
change). Two layouts:

* ``standalone``: one ZooKeeper server, every daemon connected to it;
* ``ensemble``: 3 voters + 1 observer (:class:`reloader.localenv.ensemble.LocalEnsemble`),
  every daemon pointed at the observer, writes sent to the voters.

For each layout it records, on the server the daemons talk to: sessions and
watches (the four-letter words ``mntr``, ``wchs``, ``cons``), the JVM's heap
(``jcmd GC.run``, then ``GC.heap_info``: live data only) before any daemon
and with all of them synced, and RSS; the fleet's cold start (all daemons
started at once -> every daemon has every file); the fan-out time of one
change (the create acknowledged -> every daemon's file renamed). Then two
blips:

* a kill -9 and restart of that server: the reconnect spread (the ``est``
  times of the daemons' sessions in ``cons``) and the time to truth (server
  accepting sessions again -> every daemon's file shows a change made at
  that moment);
* in the ensemble, a kill -9 of the leader (the observer drops its sessions
  until it follows the new leader): the time to truth from the moment the
  ensemble took the change (and from the kill).

For each blip: the reads the server counted (``mntr`` ``zk_cnt_readlatency``;
``zk_packets_received`` restarts with the server), each daemon's own
reconnect -> truth, and the CPU the daemons used until truth (all daemons
share this machine's cores, so that CPU is the basis for a daemon on a host
of its own).

    bench/fleet.py                   # 20 daemons x 1,000 upstreams x 20, both layouts
    bench/fleet.py --quick           # 4 daemons x 100 upstreams
    bench/fleet.py --daemons 30 --layouts standalone

Writes ``bench/results/fleet[-quick].json``. Everything listens on and
connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    RESULTS,
    Daemon,
    RenameWatcher,
    Result,
    banner,
    cpu_seconds,
    daemon_revision,
    four_letter,
    jvm_memory,
    loadavg,
    populate,
    snapshot_daemon,
    summary_ms,
    upstream_name,
    zk_nodes,
)
from kazoo.exceptions import KazooException

from reloader.localenv.ensemble import LocalEnsemble
from reloader.localenv.zookeeper import LocalZooKeeper

BASE = "/fleet"
CHILDREN = 20


class WatchedZooKeeper(LocalZooKeeper):
    """A standalone LocalZooKeeper that answers every four-letter word (wchs, cons, mntr)."""

    def write_config(self) -> Path:
        path = super().write_config()
        with path.open("a") as handle:
            handle.write("4lw.commands.whitelist=*\n")
        return path


# ---------------------------------------------------------------------------
# server-side figures
# ---------------------------------------------------------------------------


def mntr(port: int) -> dict[str, str]:
    out = {}
    for line in four_letter(port, "mntr").splitlines():
        key, _, value = line.partition("\t")
        if key:
            out[key] = value.strip()
    return out


def wchs(port: int) -> dict[str, int]:
    text = four_letter(port, "wchs")
    m = re.search(r"(\d+) connections watching (\d+) paths\s+Total watches:\s*(\d+)", text)
    return {"connections": int(m.group(1)), "paths": int(m.group(2)), "watches": int(m.group(3))} if m else {}


_CONS = re.compile(r"/127\.0\.0\.1:(\d+)\[\d+\]\((.*)\)")


def cons(port: int) -> dict[int, dict[str, str]]:
    """Client port -> the fields of its connection (sid, est, ...), from ``cons``."""
    out = {}
    for line in four_letter(port, "cons").splitlines():
        m = _CONS.search(line)
        if m:
            fields = dict(kv.split("=", 1) for kv in m.group(2).split(",") if "=" in kv)
            out[int(m.group(1))] = fields
    return out


def local_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets process ``pid`` holds (from /proc/PID/fd and /proc/net/tcp)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def server_figures(port: int, jvm_pid: int | None, daemons: list[Daemon]) -> dict[str, Any]:
    m = mntr(port)
    keys = ("zk_num_alive_connections", "zk_watch_count", "zk_znode_count", "zk_approximate_data_size",
            "zk_avg_latency", "zk_max_latency", "zk_outstanding_requests", "zk_server_state")
    out: dict[str, Any] = {"mntr": {k: m.get(k) for k in keys}, "wchs": wchs(port)}
    connections = cons(port)
    daemon_ports = set().union(*(local_ports(d.pid) for d in daemons)) if daemons else set()
    out["cons_connections"] = len(connections)
    out["cons_daemon_sessions"] = len([p for p in connections if p in daemon_ports])
    if jvm_pid:
        out["jvm"] = jvm_memory(jvm_pid)
    return out


def daemon_est_times(port: int, daemons: list[Daemon]) -> list[float]:
    """Wall-clock seconds at which each daemon's current connection was established (``cons`` est)."""
    return [t for t in daemon_est_by_daemon(port, daemons) if t is not None]


def daemon_est_by_daemon(port: int, daemons: list[Daemon]) -> list[float | None]:
    """Per daemon (in order): when its current connection was established (``cons`` est), or None."""
    connections = cons(port)
    times: list[float | None] = []
    for d in daemons:
        found = None
        for p in local_ports(d.pid):
            fields = connections.get(p)
            if fields and fields.get("est", "").isdigit():
                found = int(fields["est"]) / 1000
        times.append(found)
    return times


def daemon_cpu(daemons: list[Daemon]) -> list[float]:
    return [cpu_seconds(d.pid) for d in daemons]


def catch_up(got: list[float | None], est: list[float | None], cpu0: list[float], cpu1: list[float],
             mono_minus_wall: float) -> dict[str, Any]:
    """What each daemon spent between its reconnect and its file being right: wall time and CPU.

    The wall time is what a daemon on a host of its own would need at most
    (here 20 of them share 2 cores); its CPU is the work that needs a core.
    """
    after = [g - (e + mono_minus_wall) for g, e in zip(got, est) if g is not None and e is not None]
    cpu = [b - a for a, b in zip(cpu0, cpu1)]
    out: dict[str, Any] = {"daemon_cpu_s": {"median": round(sorted(cpu)[len(cpu) // 2], 2), "max": round(max(cpu), 2),
                                            "sum": round(sum(cpu), 2)} if cpu else None}
    if after:
        out["reconnect_to_truth_s"] = {"median": round(sorted(after)[len(after) // 2], 2),
                                       "max": round(max(after), 2), "min": round(min(after), 2)}
    return out



# ---------------------------------------------------------------------------
# blips
# ---------------------------------------------------------------------------


def requests_seen(port: int) -> dict[str, int]:
    """Request counters of one server (``mntr``): packets received, reads, connection requests.

    ``zk_packets_received`` counts every request a client sent (pings included) and
    restarts from 0 with the server process, and on an observer each time it
    follows a leader anew; ``zk_cnt_readlatency`` counts reads and lives as long as the JVM.
    """
    m = mntr(port)
    keys = {"packets_received": "zk_packets_received", "reads": "zk_cnt_readlatency",
            "connection_requests": "zk_connection_request_count"}
    return {name: int(m.get(key, "0") or 0) for name, key in keys.items()}


def requests_delta(before: dict[str, int], after: dict[str, int], seconds: float, idle_rate: float) -> dict[str, Any]:
    """Requests between two ``requests_seen``; a counter that went back started again at 0 (a restart)."""
    out: dict[str, Any] = {}
    for key in before:
        reset = after[key] < before[key]
        out[key] = after[key] if reset else after[key] - before[key]
        if reset:
            out[f"{key}_counter_restarted"] = True
    out["window_s"] = round(seconds, 2)
    # What the pings of the same window would have sent anyway.
    out["packets_minus_idle_pings"] = max(0, round(out["packets_received"] - idle_rate * seconds))
    return out


def write_probe(client: Any, path: str, timeout: float = 60) -> float:
    """Create ``path`` through the bench's own session, retried while the servers are not serving; ack time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create(path, b"")
            return time.monotonic()
        except KazooException:
            # The bench's own session may have expired while the server was down; kazoo opens a new one.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def truth(got: list[float | None], t_ref: float) -> dict[str, float] | None:
    times = [g - t_ref for g in got if g is not None]
    if not times:
        return None
    return {"median": round(sorted(times)[len(times) // 2], 2), "max": round(max(times), 2), "min": round(min(times), 2)}


def blip_restart(layout: str, args: argparse.Namespace, ensemble: LocalEnsemble | None, zk: WatchedZooKeeper | None,
                 serve: Any, client: Any, daemons: list[Daemon], watchers: list[RenameWatcher], dirs: list[Path],
                 idle_rate: float) -> dict[str, Any]:
    """kill -9 and restart of the server the daemons talk to; a change made the moment it serves again."""
    before = requests_seen(serve.port)
    heap_before = jvm_memory(serve.pid).get("heap_used_mb") if serve.pid else None
    t_kill = time.monotonic()
    if ensemble:
        ensemble.kill(len(ensemble.nodes) - 1)
        time.sleep(args.down_s)
        ensemble.start(node=len(ensemble.nodes) - 1)
    else:
        assert zk is not None
        zk.kill()
        time.sleep(args.down_s)
        zk.restart()
    t_ready, wall_ready = time.monotonic(), time.time()
    storm_cpu0 = cpu_seconds(serve.pid) if serve.pid else 0.0
    cpu0 = daemon_cpu(daemons)
    probe = upstream_name(args.upstreams - 1)
    child = "10.241.0.1:9200"
    t_ack = write_probe(client, f"{BASE}/{probe}/{child}")
    got = wait_every(watchers, dirs, f"{probe}.upstream", child, t_ready, args.timeout)
    t_truth = time.monotonic()
    cpu1 = daemon_cpu(daemons)
    storm_cpu = round(cpu_seconds(serve.pid) - storm_cpu0, 2) if serve.pid else None
    est_each = daemon_est_by_daemon(serve.port, daemons)
    est = [e for e in est_each if e is not None]
    time.sleep(args.settle_s)
    after = requests_seen(serve.port)
    reached = [g for g in got if g is not None]
    out = {
        "down_s": round(t_ready - t_kill, 2),
        "daemons_at_truth": len(reached),
        "time_to_truth_s": truth(got, t_ready),
        "time_to_truth_from_ack_s": truth(got, t_ack),
        "reconnected_sessions": len(est),
        "reconnect_after_ready_s": reconnect_spread(est, wall_ready),
        "server_cpu_s": storm_cpu,
        **catch_up(got, est_each, cpu0, cpu1, t_ready - wall_ready),
        # The restarted server's counters start at 0: everything it received from serving again to settled.
        "requests": requests_delta(before, after, time.monotonic() - t_ready, idle_rate),
        "heap_used_mb_before": heap_before,
        "loadavg_after": loadavg(),
        "truth_wait_s": round(t_truth - t_ready, 2),
    }
    print(f"restart ({layout}): {len(est)} sessions re-established over {out['reconnect_after_ready_s']}; "
          f"time to truth {out['time_to_truth_s']} ({len(reached)}/{args.daemons} daemons); requests {out['requests']}; "
          f"reconnect -> truth {out.get('reconnect_to_truth_s')}, daemon CPU {out['daemon_cpu_s']}")
    return out


def blip_leader_kill(args: argparse.Namespace, ensemble: LocalEnsemble, serve: Any, client: Any, daemons: list[Daemon],
                     watchers: list[RenameWatcher], dirs: list[Path], idle_rate: float) -> dict[str, Any]:
    """kill -9 of the ensemble's leader; a change written as soon as the new leader takes writes."""
    before = requests_seen(serve.port)
    old = ensemble.leader()
    cpu0 = daemon_cpu(daemons)
    t_kill, wall_kill = time.monotonic(), time.time()
    ensemble.kill(old)
    probe = upstream_name(args.upstreams - 2)
    child = "10.241.0.2:9200"
    t_ack = write_probe(client, f"{BASE}/{probe}/{child}")
    new = ensemble.leader()
    got = wait_every(watchers, dirs, f"{probe}.upstream", child, t_kill, args.timeout)
    t_truth = time.monotonic()
    cpu1 = daemon_cpu(daemons)
    est_each = daemon_est_by_daemon(serve.port, daemons)
    est = [e for e in est_each if e is not None]
    time.sleep(args.settle_s)
    after = requests_seen(serve.port)
    reached = [g for g in got if g is not None]
    out = {
        "old_leader": old, "new_leader": new,
        "write_accepted_after_kill_s": round(t_ack - t_kill, 2),
        "daemons_at_truth": len(reached),
        # From the moment the change was acknowledged (the ensemble takes writes again): the target's measure,
        # as for a restart (from the server serving again); and from the kill, the election included.
        "time_to_truth_s": truth(got, t_ack),
        "time_to_truth_from_kill_s": truth(got, t_kill),
        "reconnected_sessions": len(est),
        "reconnect_after_kill_s": reconnect_spread(est, wall_kill),
        "requests": requests_delta(before, after, time.monotonic() - t_kill, idle_rate),
        **catch_up(got, est_each, cpu0, cpu1, t_kill - wall_kill),
        "loadavg_after": loadavg(),
        "truth_wait_s": round(t_truth - t_kill, 2),
    }
    print(f"leader kill: node {old} -> {new}, writes after {out['write_accepted_after_kill_s']} s; time to truth "
          f"{out['time_to_truth_s']} from the ack, {out['time_to_truth_from_kill_s']} from the kill "
          f"({len(reached)}/{args.daemons}); requests {out['requests']}; "
          f"reconnect -> truth {out.get('reconnect_to_truth_s')}, daemon CPU {out['daemon_cpu_s']}")
    ensemble.start(node=old)  # whole again for the figures after
    return out


# ---------------------------------------------------------------------------
# one layout
# ---------------------------------------------------------------------------


def file_has(path: Path, needle: str) -> bool:
    try:
        return needle in path.read_text()
    except FileNotFoundError:
        return False


def wait_every(watchers: list[RenameWatcher], dirs: list[Path], name: str, needle: str, t0: float, timeout: float) -> list[float | None]:
    """Per daemon: the first rename of ``name`` after t0 whose file holds ``needle`` (None on timeout)."""
    deadline = time.monotonic() + timeout
    found: list[float | None] = [None] * len(watchers)
    while time.monotonic() < deadline and any(f is None for f in found):
        for i, (watcher, d) in enumerate(zip(watchers, dirs)):
            if found[i] is None:
                t = watcher.first_after(name, t0)
                if t is not None and file_has(d / name, needle):
                    found[i] = t
        time.sleep(0.005)
    return found


def reconnect_spread(established: list[float], origin: float) -> dict[str, float] | None:
    """When the first and the last session came back, counted from ``origin`` (wall clock), and the spread."""
    if not established:
        return None
    return {"first": round(min(established) - origin, 2), "last": round(max(established) - origin, 2),
            "spread": round(max(established) - min(established), 2)}


def run_layout(layout: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"layout": layout, "daemons": args.daemons, "upstreams": args.upstreams,
                           "children_per_upstream": CHILDREN, "watch_mode": "auto (the default)",
                           "watch_roots": [BASE] if args.watch_roots else [],
                           "loadavg_at_start": loadavg()}
    banner(f"fleet, {layout}: {args.daemons} daemons x {args.upstreams} upstreams x {CHILDREN}; load {out['loadavg_at_start']}")
    ensemble: LocalEnsemble | None = None
    zk: WatchedZooKeeper | None = None
    if layout == "ensemble":
        ensemble = LocalEnsemble(voters=3, observers=1, workdir=workdir / "ensemble").start()
        serve = ensemble.nodes[-1]  # the observer the daemons talk to
        writer_hosts = ensemble.hosts
        out["server"] = "observer (3 voters + 1 observer)"
    else:
        zk = WatchedZooKeeper(workdir=workdir / "zk")
        zk.start()
        serve = zk
        writer_hosts = zk.hosts
        out["server"] = "standalone"
    from kazoo.client import KazooClient

    client = KazooClient(hosts=writer_hosts, timeout=30)
    client.start(timeout=30)
    daemons: list[Daemon] = []
    watchers: list[RenameWatcher] = []
    dirs: list[Path] = []
    try:
        t = time.monotonic()
        populate(client, BASE, args.upstreams, CHILDREN)
        out["populate_s"] = round(time.monotonic() - t, 2)
        out["before_daemons"] = server_figures(serve.port, serve.pid, [])
        znodes = zk_nodes(BASE, args.upstreams)
        names = {f"{n}.upstream" for n in znodes}
        for i in range(args.daemons):
            d = workdir / f"{layout}-files-{i:02d}"
            d.mkdir()
            dirs.append(d)
            watchers.append(RenameWatcher(d))
        t_start = time.monotonic()
        jvm_cpu0 = cpu_seconds(serve.pid) if serve.pid else 0.0
        for i in range(args.daemons):
            cluster: dict[str, Any] = {"zk_servers": serve.hosts, "zk_nodes": znodes}
            if args.watch_roots:
                cluster["watch_roots"] = [BASE]  # one recursive watch for every upstream znode
            config = {"files_output_path": str(dirs[i]), "zk_session_timeout": args.session_timeout,
                      "clusters": [cluster]}
            daemons.append(Daemon(workdir, config, name=f"{layout}-daemon-{i:02d}").start())
        # Fleet cold start: every daemon has every file.
        done: list[float | None] = [None] * args.daemons
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and any(x is None for x in done):
            for i, w in enumerate(watchers):
                if done[i] is None:
                    with w._cond:
                        seen = {n for _, n in w.events if n in names}
                        last = max((t for t, n in w.events if n in names), default=None)
                    if len(seen) == len(names):
                        done[i] = last
            for dmn in daemons:
                dmn.check_alive()
            time.sleep(0.1)
        if any(x is None for x in done):
            raise RuntimeError(f"{layout}: not every daemon wrote every file within {args.timeout} s")
        out["cold_start_all_daemons_s"] = round(max(done) - t_start, 2)  # type: ignore[type-var]
        out["cold_start_first_daemon_s"] = round(min(done) - t_start, 2)  # type: ignore[type-var]
        # The server's own CPU for serving every daemon's full read: the basis for sizing a bigger fleet,
        # since the daemons' CPU (all on this machine here) is spread over their own hosts in production.
        out["cold_start_server_cpu_s"] = round(cpu_seconds(serve.pid) - jvm_cpu0, 2) if serve.pid else None
        print(f"cold start: first daemon done {out['cold_start_first_daemon_s']} s, all {args.daemons} in {out['cold_start_all_daemons_s']} s")
        time.sleep(2.0)
        out["steady"] = server_figures(serve.port, serve.pid, daemons)
        if ensemble:
            leader = ensemble.nodes[ensemble.leader()]
            out["steady_leader"] = server_figures(leader.port, leader.pid, [])
        heap0 = out["before_daemons"].get("jvm", {}).get("heap_used_mb")
        heap1 = out["steady"].get("jvm", {}).get("heap_used_mb")
        if heap0 is not None and heap1 is not None:
            out["heap_growth_mb"] = round(heap1 - heap0, 1)
        rss = [d.status().get("VmRSS", 0) / 1024 for d in daemons]
        out["daemon_vmrss_mb"] = {"median": round(sorted(rss)[len(rss) // 2], 1), "max": round(max(rss), 1)}
        w = out["steady"]["wchs"]
        print(f"server: {out['steady']['cons_daemon_sessions']} daemon sessions, {w.get('watches')} watches on {w.get('paths')} paths; "
              f"JVM {out['steady'].get('jvm')}")
        # Fan-out: one change -> every daemon's file.
        fan = []
        per_daemon: list[float] = []
        for s in range(args.samples):
            name = upstream_name(s % args.upstreams)
            child = f"10.240.{s // 250}.{s % 250 + 1}:9100"
            t0 = time.monotonic()
            client.create(f"{BASE}/{name}/{child}", b"")
            got = wait_every(watchers, dirs, f"{name}.upstream", child, t0, 60)
            if any(g is None for g in got):
                raise RuntimeError(f"{layout}: a daemon missed the change {child}")
            times = [g - t0 for g in got if g is not None]
            fan.append(max(times))
            per_daemon.extend(times)
            time.sleep(0.2)
        out["fanout_all_daemons"] = summary_ms(fan)
        out["fanout_per_daemon"] = summary_ms(per_daemon)
        print(f"fan-out to all {args.daemons}: median {out['fanout_all_daemons']['median_ms']} ms, max {out['fanout_all_daemons']['max_ms']} ms")
        # The idle request rate (pings), subtracted from each blip's request count below.
        idle0, t_idle0 = requests_seen(serve.port), time.monotonic()
        time.sleep(args.idle_s)
        idle1 = requests_seen(serve.port)
        idle_rate = (idle1["packets_received"] - idle0["packets_received"]) / (time.monotonic() - t_idle0)
        out["idle_packets_per_s"] = round(idle_rate, 1)
        # Restart of the server the daemons talk to; a change made the moment it serves again.
        out["restart"] = blip_restart(layout, args, ensemble, zk, serve, client, daemons, watchers, dirs, idle_rate)
        out["after_restart"] = server_figures(serve.port, serve.pid, daemons)
        if ensemble:
            # kill -9 of the leader: the observer drops its sessions until it has followed the new leader.
            out["leader_kill"] = blip_leader_kill(args, ensemble, serve, client, daemons, watchers, dirs, idle_rate)
            out["after_leader_kill"] = server_figures(serve.port, serve.pid, daemons)
        out["daemon_errors"] = sum((d.errors()[:2] for d in daemons), [])[:5]
    finally:
        for d in daemons:
            d.stop(timeout=10)
        for w in watchers:
            w.close()
        client.stop()
        client.close()
        if ensemble:
            ensemble.close()
        if zk:
            zk.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 daemons x 100 upstreams")
    parser.add_argument("--daemons", type=int)
    parser.add_argument("--upstreams", type=int)
    parser.add_argument("--samples", type=int, help="fan-out samples (default 20, quick 5)")
    parser.add_argument("--layouts", default="standalone,ensemble")
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--down-s", type=float, default=1.0, help="how long the server stays down")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--idle-s", type=float, default=5.0, help="window for the idle request rate (pings)")
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait after truth before counting a blip's requests")
    parser.add_argument("--watch-roots", action="store_true",
                        help="every daemon watches the upstream znodes' common parent (watch_roots)")
    parser.add_argument("--daemon-rev", help="bench the daemon of this git revision (exported), not the working tree")
    parser.add_argument("--name", default="fleet", help="result name: bench/results/NAME[-quick].json (default fleet)")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every daemon and server this bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The bench's own client reconnects through the restarts; its kazoo notices are noise here.
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    args.daemons = args.daemons or (4 if args.quick else 20)
    args.upstreams = args.upstreams or (100 if args.quick else 1000)
    args.samples = args.samples or (5 if args.quick else 20)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-"))
    if args.daemon_rev:
        snapshot_daemon(args.daemon_rev, workdir / "daemon-src")
    layouts = []
    try:
        for layout in args.layouts.split(","):
            layout_dir = workdir / layout
            layout_dir.mkdir()
            layouts.append(run_layout(layout, args, layout_dir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path = Result(args.name, args.quick, {"daemon_revision": daemon_revision(), "layouts": layouts}).save()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
