#!/usr/bin/env python
"""Scale: 1,000 upstreams x 20 instances (20,000 children) in one ZooKeeper.

Three daemon runs, each a real ``python -m reloader run`` subprocess whose
/proc/PID/status is sampled every 10 ms (Threads, VmRSS):

A. files only, --log-level WARNING, empty output directory (cold start):
   time to all files written, steady-state threads/RSS/HWM, then a burst
   (one child replaced in every upstream, one multi each, all pipelined)
   until every file shows it.
B. files only, --log-level INFO (the "resynced N znodes; thawed" line that
   marks the end of a resync is logged at INFO), warm start on A's files;
   ZooKeeper pause()/resume() (SIGSTOP/SIGCONT: SUSPENDED -> CONNECTED),
   then kill()+restart() (the session-loss path), each timed from the
   resume / from "ZooKeeper accepts sessions again" to the thaw line, with
   the peak thread count during the whole outage.
C. files + dyups (DyupsServer, stable, workers=2), WARNING, cold start:
   initial POST throughput, SIGHUP re-assert of every upstream, and the
   burst again with POSTs.

    bench/scale.py             # 1000 upstreams x 20
    bench/scale.py --quick     # 100 upstreams x 20
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Daemon,
    ProcSampler,
    RenameWatcher,
    Result,
    banner,
    child_name,
    cpu_seconds,
    populate,
    upstream_name,
    wait_until,
    zk_nodes,
)
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.dyups_server import DyupsServer

BASE = "/scale"
OTHER_PATH = "/other/other"
# Pause between phases so that one phase's tail does not spill into the next (--quick: shorter).
SETTLE = 0.5
CHILDREN = 20


def config_for(zk: LocalZooKeeper, files: Path, upstreams: int, session_timeout: float, dyups_url: str | None = None) -> dict:
    config: dict = {
        "files_output_path": str(files),
        "zk_session_timeout": session_timeout,
        "clusters": [{"zk_servers": zk.hosts, "zk_nodes": zk_nodes(BASE, upstreams)}],
    }
    if dyups_url:
        # The periodic re-assert is pushed out of the measurement window; SIGHUP measures it instead.
        config.update({"dyups_url": dyups_url, "reconcile_interval": 5, "reassert_interval": 600})
    return config


def all_files_event(watcher: RenameWatcher, names: set[str], t0: float):
    """A predicate for watcher.wait_for: (first, last) event times once every name was renamed after t0."""

    def predicate(events):
        seen: dict[str, float] = {}
        for t, name in events:
            if t >= t0 and name in names and name not in seen:
                seen[name] = t
        if len(seen) == len(names):
            return min(seen.values()), max(seen.values())
        return None

    return predicate


def steady(daemon: Daemon, sampler: ProcSampler, seconds: float) -> dict:
    t0 = time.monotonic()
    cpu0 = cpu_seconds(daemon.pid)
    time.sleep(seconds)
    cpu = cpu_seconds(daemon.pid) - cpu0
    status = daemon.status()
    window = sampler.window(t0)
    return {
        "window_s": seconds,
        "cpu_percent": round(100 * cpu / (time.monotonic() - t0), 1),
        "threads": status["Threads"],
        "threads_seen": sorted({s[1] for s in window}),
        "vmrss_mb": round(status["VmRSS"] / 1024, 1),
        "vmhwm_mb": round(status["VmHWM"] / 1024, 1),
    }


def burst(client, upstreams: int, round_no: int) -> tuple[float, float, dict[int, str]]:
    """Replace the last instance of every upstream by a new one; (t0, t_acked, {u: new child})."""
    old_k = CHILDREN - 1 if round_no == 0 else 100 + round_no - 1
    new_k = 100 + round_no
    new = {}
    t0 = time.monotonic()
    pending = []
    for u in range(upstreams):
        parent = f"{BASE}/{upstream_name(u)}"
        tx = client.transaction()
        tx.delete(f"{parent}/{child_name(u, old_k)}")
        tx.create(f"{parent}/{child_name(u, new_k)}", b"")
        new[u] = child_name(u, new_k)
        pending.append(tx.commit_async())
    for result in pending:
        outcome = result.get(60)
        if any(isinstance(r, Exception) for r in outcome):
            raise RuntimeError(f"burst transaction failed: {outcome}")
    return t0, time.monotonic(), new


def check_files(files: Path, upstreams: int, new: dict[int, str]) -> None:
    for u in range(upstreams):
        text = (files / f"{upstream_name(u)}.upstream").read_text()
        if new[u] not in text:
            raise RuntimeError(f"{upstream_name(u)}.upstream lacks {new[u]}:\n{text}")


def run_a(zk, client, workdir: Path, upstreams: int, session_timeout: float) -> tuple[dict, Path]:
    banner(f"A: files only, cold start, {upstreams} upstreams x {CHILDREN}")
    files = workdir / "files"
    files.mkdir()
    names = {f"{upstream_name(u)}.upstream" for u in range(upstreams)}
    watcher = RenameWatcher(files)
    daemon = Daemon(workdir, config_for(zk, files, upstreams, session_timeout), name="scale-a").start()
    sampler = ProcSampler(daemon.pid).start()
    out: dict = {}
    try:
        first, last = watcher.wait_for(all_files_event(watcher, names, 0.0), 120) or (None, None)
        if last is None:
            raise RuntimeError(f"not every file was written:\n{daemon.log_tail()}")
        out["cold_start_first_file_s"] = round(first - daemon.started_at, 3)
        out["cold_start_all_files_s"] = round(last - daemon.started_at, 3)
        out["initial_sync_peak_threads"] = sampler.peak_threads(daemon.started_at, last)
        print(f"cold start: first file {out['cold_start_first_file_s']:.2f} s, all {upstreams} files "
              f"{out['cold_start_all_files_s']:.2f} s after Popen (peak threads {out['initial_sync_peak_threads']})")
        out["steady"] = steady(daemon, sampler, 6 * SETTLE)
        print(f"steady: {out['steady']['threads']} threads, {out['steady']['cpu_percent']}% CPU, "
              f"VmRSS {out['steady']['vmrss_mb']} MB, VmHWM {out['steady']['vmhwm_mb']} MB")
        bursts = []
        for round_no in range(2):
            t0, t_ack, new = burst(client, upstreams, round_no)
            got = watcher.wait_for(all_files_event(watcher, names, t0), 120)
            if not got:
                raise RuntimeError(f"burst: not every file was rewritten:\n{daemon.log_tail()}")
            check_files(files, upstreams, new)
            b = {
                "zk_acked_s": round(t_ack - t0, 3),
                "all_files_s": round(got[1] - t0, 3),
                "files_per_s": round(upstreams / (got[1] - t0)),
                "peak_threads": sampler.peak_threads(t0, got[1]),
            }
            bursts.append(b)
            print(f"burst {round_no + 1}: ZooKeeper acked all {upstreams} multis in {b['zk_acked_s']:.2f} s; "
                  f"all files in {b['all_files_s']:.2f} s ({b['files_per_s']}/s), peak threads {b['peak_threads']}")
            time.sleep(SETTLE)
        out["bursts"] = bursts
        status = daemon.status()
        out["after_bursts"] = {"threads": status["Threads"], "vmrss_mb": round(status["VmRSS"] / 1024, 1),
                               "vmhwm_mb": round(status["VmHWM"] / 1024, 1)}
        out["peak_threads_whole_run"] = sampler.peak_threads(0.0)
        out["errors"] = daemon.errors()[:5]
    finally:
        sampler.stop()
        out["shutdown_s"] = daemon.stop()
        watcher.close()
    print(f"SIGTERM -> exit in {out['shutdown_s']:.2f} s" if out["shutdown_s"] is not None else "had to kill the daemon")
    return out, files


def run_b(zk: LocalZooKeeper, zk2: LocalZooKeeper, workdir: Path, files: Path, upstreams: int, session_timeout: float, cycles: int) -> dict:
    banner(f"B: files only, warm start, ZooKeeper pause/resume x{cycles} and kill/restart (zk_session_timeout {session_timeout:g} s)")
    watcher = RenameWatcher(files)
    started_wall = time.time()
    # A second, small cluster beside the big one: how long does its change wait
    # while the worker is busy re-reading the big cluster after a reconnect?
    other = zk2.client()
    other.ensure_path(OTHER_PATH)
    other.create(f"{OTHER_PATH}/10.250.0.1:80", b"")
    config = config_for(zk, files, upstreams, session_timeout)
    config["clusters"].append({"zk_servers": zk2.hosts, "zk_nodes": {"other": OTHER_PATH}})
    daemon = Daemon(workdir, config, name="scale-b", log_level="INFO").start()
    sampler = ProcSampler(daemon.pid).start()
    out: dict = {}
    label = re.escape(zk.hosts) + r"(?: #\d+)?"  # two clusters: the label carries the position
    # A resumed session resyncs only what a pass left half-read (often 0 znodes); a new one all of them.
    thawed = rf"cluster {label}: resynced \d+ znodes; thawed"
    suspended = rf"cluster {label}: session SUSPENDED"
    session_line = rf"cluster {label}: session (SUSPENDED|LOST|CONNECTED)"
    # "re-reading N znodes" (a new session) or "waiting for the server to confirm the watches" (resumed).
    reconnected = rf"cluster {label}: session CONNECTED; "

    def last_before(pattern: str, after: float, before: float) -> float:
        """Wall time of the last line matching ``pattern`` between ``after`` and ``before``."""
        times = [t for t, _ in daemon.log_lines(pattern, after=after) if t <= before + 0.0015]
        if not times:
            raise RuntimeError(f"no /{pattern}/ line before the thaw:\n{daemon.log_tail()}")
        return times[-1]

    def transitions_since(outage_wall: float) -> list[str]:
        """The session states the daemon logged since ``outage_wall``, in order."""
        return [line.split(": session ")[1].split(";")[0] for _, line in daemon.log_lines(session_line, after=outage_wall)]

    def thaw_after(after_wall: float, outage_wall: float) -> tuple[float, float, list[str]]:
        """Wait for the thaw after ``after_wall``; (thawed, reconnected) wall times and the transitions."""
        t_thaw, _ = daemon.wait_log(thawed, after=after_wall, timeout=120)
        t_conn = last_before(reconnected, after_wall, t_thaw)
        time.sleep(SETTLE)
        return t_thaw, t_conn, transitions_since(outage_wall)

    other_seq = iter(range(2, 250))

    def other_change() -> float:
        """Add an instance to the small cluster's upstream; seconds until its file is renamed into place."""
        child = f"10.250.0.{next(other_seq)}:80"
        t0 = time.monotonic()
        other.create(f"{OTHER_PATH}/{child}", b"")
        t_file = wait_until(lambda: watcher.first_after("other.upstream", t0), 60, 0.001, "other.upstream")
        if child not in (files / "other.upstream").read_text():
            raise RuntimeError("other.upstream does not show the new instance")
        return t_file - t0
    try:
        when, _ = daemon.wait_log(thawed, after=started_wall, timeout=120)
        out["warm_start_thawed_s"] = round(when - started_wall, 3)
        # other.upstream is new in this run (the small cluster); only the big cluster's files count.
        out["warm_start_files_rewritten"] = len([e for e in watcher.events
                                                 if e[0] >= daemon.started_at and e[1] != "other.upstream"])
        print(f"warm start: thawed {out['warm_start_thawed_s']:.2f} s after Popen; "
              f"{out['warm_start_files_rewritten']} files rewritten (unchanged ones must not be)")
        time.sleep(SETTLE)
        out["steady"] = steady(daemon, sampler, 1.0)
        out["other_cluster_idle_ms"] = round(other_change() * 1000, 1)
        print(f"small cluster's change with the big one idle: file after {out['other_cluster_idle_ms']:.1f} ms")
        pauses = []
        for cycle in range(cycles):
            t_pause_wall, t_pause = time.time(), time.monotonic()
            zk.pause()
            try:
                t_susp, _ = daemon.wait_log(suspended, after=t_pause_wall, timeout=30)
            finally:
                zk.resume()
            t_resume_wall = time.time()
            # Once the big cluster's resync has begun, change the small cluster.
            t_conn, _ = daemon.wait_log(reconnected, after=t_resume_wall, timeout=120)
            time.sleep(0.1)
            resyncing = not daemon.log_lines(thawed, after=t_resume_wall)
            other_ms = other_change() * 1000
            t_thaw, _ = daemon.wait_log(thawed, after=t_resume_wall, timeout=120)
            time.sleep(SETTLE)
            transitions = transitions_since(t_pause_wall)
            p = {
                "detect_suspended_s": round(t_susp - t_pause_wall, 3),
                "paused_s": round(t_resume_wall - t_pause_wall, 3),
                "resume_to_thawed_s": round(t_thaw - t_resume_wall, 3),
                "resume_to_connected_s": round(t_conn - t_resume_wall, 3),
                "resync_s": round(t_thaw - t_conn, 3),
                "transitions": transitions,
                "peak_threads": sampler.peak_threads(t_pause),
                "threads_after": daemon.status()["Threads"],
                "files_rewritten": len([e for e in watcher.events if e[0] >= t_pause and e[1] != "other.upstream"]),
                "other_cluster_change_ms": round(other_ms, 1),
                "other_cluster_change_during_resync": resyncing,
            }
            pauses.append(p)
            print(f"pause {cycle + 1}: SUSPENDED seen {p['detect_suspended_s']:.2f} s after SIGSTOP; resumed; thawed "
                  f"{p['resume_to_thawed_s']:.3f} s after SIGCONT; transitions {p['transitions']}; "
                  f"peak threads {p['peak_threads']} (after: {p['threads_after']}); small cluster's change "
                  f"{'during the resync' if resyncing else 'after the resync'}: file after {other_ms:.0f} ms; "
                  f"of which reconnect {p['resume_to_connected_s']:.2f} s, resync {p['resync_s']:.2f} s")
        out["pause_resume"] = pauses

        kills = []
        for cycle in range(cycles):
            t_kill_wall, t_kill = time.time(), time.monotonic()
            zk.kill()
            daemon.wait_log(suspended, after=t_kill_wall, timeout=30)
            time.sleep(session_timeout + 1.0)  # longer than the session timeout
            t_restart = time.monotonic()
            zk.restart()
            t_ready_wall, t_ready = time.time(), time.monotonic()
            t_thaw, t_conn, transitions = thaw_after(t_kill_wall, t_kill_wall)
            k = {
                "down_s": round(t_restart - t_kill, 3),
                "zk_restart_s": round(t_ready - t_restart, 3),
                "ready_to_thawed_s": round(t_thaw - t_ready_wall, 3),
                "ready_to_connected_s": round(t_conn - t_ready_wall, 3),
                "resync_s": round(t_thaw - t_conn, 3),
                "transitions": transitions,
                "peak_threads": sampler.peak_threads(t_kill),
                "threads_after": daemon.status()["Threads"],
            }
            kills.append(k)
            print(f"kill {cycle + 1}: down {k['down_s']:.1f} s, ZooKeeper restart took {k['zk_restart_s']:.2f} s; "
                  f"thawed {k['ready_to_thawed_s']:.3f} s after it accepted sessions (reconnect {k['ready_to_connected_s']:.2f} s, "
                  f"resync {k['resync_s']:.2f} s); transitions {k['transitions']}; "
                  f"peak threads {k['peak_threads']} (after: {k['threads_after']})")
        out["kill_restart"] = kills

        # ZooKeeper restores sessions from its log on restart, so kill+restart
        # often keeps the session. To take the session-expiry path for sure,
        # freeze the daemon (SIGSTOP) for longer than the session timeout
        # while ZooKeeper runs: the server expires the session, and on SIGCONT
        # kazoo is told so (LOST) and starts a new one.
        expiries = []
        for cycle in range(cycles):
            t_stop_wall, t_stop = time.time(), time.monotonic()
            daemon.signal(signal.SIGSTOP)
            try:
                time.sleep(session_timeout + 2.0)
            finally:
                daemon.signal(signal.SIGCONT)
            t_cont_wall = time.time()
            t_thaw, t_conn, transitions = thaw_after(t_cont_wall, t_stop_wall)
            e = {
                "frozen_s": round(t_cont_wall - t_stop_wall, 3),
                "cont_to_thawed_s": round(t_thaw - t_cont_wall, 3),
                "cont_to_connected_s": round(t_conn - t_cont_wall, 3),
                "resync_s": round(t_thaw - t_conn, 3),
                "transitions": transitions,
                "peak_threads": sampler.peak_threads(t_stop),
                "threads_after": daemon.status()["Threads"],
            }
            expiries.append(e)
            print(f"expiry {cycle + 1}: daemon frozen {e['frozen_s']:.1f} s; thawed {e['cont_to_thawed_s']:.3f} s after SIGCONT "
                  f"(resync {e['resync_s']:.2f} s); "
                  f"transitions {e['transitions']}; peak threads {e['peak_threads']} (after: {e['threads_after']})")
        out["session_expiry"] = expiries
        status = daemon.status()
        out["after"] = {"threads": status["Threads"], "vmrss_mb": round(status["VmRSS"] / 1024, 1),
                        "vmhwm_mb": round(status["VmHWM"] / 1024, 1)}
        out["peak_threads_whole_run"] = sampler.peak_threads(0.0)
        out["errors"] = daemon.errors()[:5]
    finally:
        sampler.stop()
        out["shutdown_s"] = daemon.stop()
        watcher.close()
        other.stop()
        other.close()
    return out


def _posts(dyups: DyupsServer, start: int, t0: float, names: set[str], needles: dict[str, str] | None = None):
    """(first, last, count) of the first 200-answered POST per name after t0 (with the needle in the body)."""
    seen: dict[str, float] = {}
    total = 0
    for record in dyups.requests_log[start:]:
        if record.method != "POST" or record.time < t0 or record.status != 200:
            continue
        total += 1
        name = record.path.rsplit("/", 1)[-1]
        if name in names and name not in seen and (needles is None or needles[name].encode() in (record.body or b"")):
            seen[name] = record.time
    if len(seen) == len(names):
        return min(seen.values()), max(seen.values()), total
    return None


def run_c(zk, client, workdir: Path, upstreams: int, session_timeout: float, steady_window: float) -> dict:
    banner(f"C: files + dyups (stable, workers=2), cold start, {upstreams} upstreams")
    files = workdir / "files-dyups"
    files.mkdir()
    dyups = DyupsServer(generation="stable", workers=2)
    dyups.start()
    names = {upstream_name(u) for u in range(upstreams)}
    file_names = {f"{n}.upstream" for n in names}
    watcher = RenameWatcher(files)
    daemon = Daemon(workdir, config_for(zk, files, upstreams, session_timeout, dyups.url), name="scale-c").start()
    sampler = ProcSampler(daemon.pid).start()
    out: dict = {}
    try:
        first, last, _total = wait_until(lambda: _posts(dyups, 0, 0.0, names), 180, 0.02, "every initial POST")
        files_last = watcher.wait_for(all_files_event(watcher, file_names, 0.0), 30)
        out["cold_start_all_posts_s"] = round(last - daemon.started_at, 3)
        out["cold_start_all_files_s"] = round(files_last[1] - daemon.started_at, 3)
        out["initial_posts_per_s"] = round(upstreams / (last - first))
        print(f"cold start: all {upstreams} POSTs answered {out['cold_start_all_posts_s']:.2f} s after Popen "
              f"({out['initial_posts_per_s']} POST/s, files+POST interleaved); files done at {out['cold_start_all_files_s']:.2f} s")
        # 10 s: two reconciliations (GET /detail of every upstream) fall in the window (--quick: one).
        out["steady"] = steady(daemon, sampler, steady_window)
        print(f"steady: {out['steady']['threads']} threads, {out['steady']['cpu_percent']}% CPU, VmRSS {out['steady']['vmrss_mb']} MB, VmHWM {out['steady']['vmhwm_mb']} MB")

        # SIGHUP: re-POST every upstream, nothing else to do.
        index = len(dyups.requests_log)
        t0 = time.monotonic()
        daemon.signal(signal.SIGHUP)
        first, last, _total = wait_until(lambda: _posts(dyups, index, t0, names), 120, 0.02, "the SIGHUP re-assert")
        out["sighup_reassert"] = {"all_posted_s": round(last - t0, 3), "posts_per_s": round(upstreams / (last - first)),
                                  "peak_threads": sampler.peak_threads(t0, last)}
        print(f"SIGHUP re-assert: {upstreams} POSTs in {last - t0:.2f} s ({out['sighup_reassert']['posts_per_s']} POST/s)")
        time.sleep(SETTLE)

        index = len(dyups.requests_log)
        t0, t_ack, new = burst(client, upstreams, 2)  # run A did rounds 0 and 1
        needles = {upstream_name(u): new[u] for u in range(upstreams)}
        first, last, _total = wait_until(lambda: _posts(dyups, index, t0, names, needles), 120, 0.02, "the burst POSTs")
        got = watcher.wait_for(all_files_event(watcher, file_names, t0), 30)
        check_files(files, upstreams, new)
        out["burst"] = {
            "zk_acked_s": round(t_ack - t0, 3),
            "all_posts_s": round(last - t0, 3),
            "all_files_s": round(got[1] - t0, 3),
            "posts_per_s": round(upstreams / (last - first)),
            "peak_threads": sampler.peak_threads(t0, last),
        }
        print(f"burst: all {upstreams} files {out['burst']['all_files_s']:.2f} s, all POSTs {out['burst']['all_posts_s']:.2f} s "
              f"after the first multi ({out['burst']['posts_per_s']} POST/s); peak threads {out['burst']['peak_threads']}")
        status = daemon.status()
        out["after"] = {"threads": status["Threads"], "vmrss_mb": round(status["VmRSS"] / 1024, 1),
                        "vmhwm_mb": round(status["VmHWM"] / 1024, 1)}
        out["peak_threads_whole_run"] = sampler.peak_threads(0.0)
        out["dyups_non_200"] = sum(1 for r in dyups.requests_log if r.status != 200 and r.method == "POST")
        out["errors"] = daemon.errors()[:5]
    finally:
        sampler.stop()
        out["shutdown_s"] = daemon.stop()
        watcher.close()
        dyups.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 upstreams, one pause and one kill")
    parser.add_argument("--upstreams", type=int)
    parser.add_argument("--session-timeout", type=float, default=2.0)
    parser.add_argument("--cycles", type=int, help="pause/resume and kill/restart cycles")
    args = parser.parse_args()
    upstreams = args.upstreams or (100 if args.quick else 1000)
    cycles = args.cycles or (1 if args.quick else 2)
    global SETTLE
    SETTLE = 0.25 if args.quick else 0.5

    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    zk = LocalZooKeeper(workdir=workdir / "zk")
    began = time.monotonic()
    data: dict = {"upstreams": upstreams, "children_per_upstream": CHILDREN, "session_timeout_s": args.session_timeout}
    try:
        zk.start()
        client = zk.client()
        took = populate(client, BASE, upstreams, CHILDREN)
        data["populate_s"] = round(took, 2)
        print(f"populated {upstreams} znodes x {CHILDREN} children ({upstreams * CHILDREN} children) in {took:.2f} s")
        data["a_files"], files = run_a(zk, client, workdir, upstreams, args.session_timeout)
        client.stop()
        client.close()
        zk2 = LocalZooKeeper(workdir=workdir / "zk2")
        zk2.start()
        try:
            data["b_reconnect"] = run_b(zk, zk2, workdir, files, upstreams, args.session_timeout, cycles)
        finally:
            zk2.stop()
        client = zk.client()
        data["c_dyups"] = run_c(zk, client, workdir, upstreams, args.session_timeout, 5.5 if args.quick else 10.0)
        client.stop()
        client.close()
    finally:
        zk.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    data["wall_seconds"] = round(time.monotonic() - began, 1)
    path = Result("scale", args.quick, data).save()
    print(f"\nresults: {path} ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
