#!/usr/bin/env python
"""The performance targets, each judged against the floor measured in the same run.

For every target row the floor (``bench/floor.py watch``, a minimal kazoo
program, as a subprocess) and the daemon (``python -m reloader run``, as a
subprocess) run one after the other against the same ZooKeeper tree, with
the same DyupsServer set-up, and are timed by the same clocks (inotify on the
files directory, the DyupsServer's request records, /proc). The load
average is recorded at the start of every block, because other work on the
machine moves the figures.

The dyups test server runs in a process of its own
(:class:`bench._dyups_proc.DyupsProcess`), and the questions about its
request log (every upstream POSTed? which POST carried the change? a
reconcile GET nearby?) are answered there. Inside the bench process it
shared one GIL with the inotify watcher thread and the polling loops, and
that GIL capped the POST rate of the floor and the daemon alike (about 450 to
490 POST/s at 1,000 upstreams on two cores), so the burst figures measured
the bench rather than the subjects.

Blocks (N upstreams x 20 instances; N = 1,000, or 100 with ``--quick``):

* ``cold_resync``: plain children (``host:port`` names, weight data) and JSON
  children. Cold start = process start -> every file renamed into place.
  Then the client's connection goes through a :class:`bench._gate.TcpGate`,
  which is shut; one instance is added to every upstream; the gate reopens;
  resync = the client's first reconnect accepted -> every file shows the
  addition.
* ``latency``: dyups with ``reconcile_interval: 1s``; worst of S sequential
  child creates -> the POST that carries them (and the deletes back).
* ``burst``: one child replaced in every upstream at once (one multi each,
  pipelined); files only, then files + dyups; RSS of both runs; idle CPU of
  the dyups run (``reconcile_interval`` at its default, 5 s), measured after
  the first reconciliation pass that follows the initial POSTs (whose CPU is
  recorded apart: it verifies every block once).
* ``sustained``: a writer subprocess (pipelined ``set_async`` and
  ``commit_async``) makes R changes/s for D s across every upstream; lag =
  the writer's last acknowledgement -> the last file rename or POST that made
  every file and every dyups upstream equal to ZooKeeper.

    bench/targets.py              # 1,000 x 20, 200 latency samples, 30 s sustained
    bench/targets.py --quick      # 100 x 20, 50 samples, 5 s sustained
    bench/targets.py --only latency,burst --output bench/results/targets-before.json

Writes ``bench/results/targets[-quick].json``: per target the figure, the
floor's figure, the ratio and pass/fail, and the raw blocks.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    PYTHON,
    RESULTS,
    Daemon,
    FloorProcess,
    ProcSampler,
    RenameWatcher,
    banner,
    child_name,
    cpu_seconds,
    create_many,
    daemon_revision,
    guard_settings,
    loadavg,
    machine,
    populate,
    servers_in,
    snapshot_daemon,
    summary_ms,
    upstream_name,
    wait_until,
    zk_nodes,
)
from bench._dyups_proc import DyupsProcess
from bench._gate import TcpGate
from bench.floor import read_tree, servers
from reloader.localenv.zookeeper import LocalZooKeeper

CHILDREN = 20
PLAIN = "/t/plain"
JSONB = "/t/json"
LAT_PATH = "/t/lat/lat"
SUBJECTS = ("floor", "daemon")

Subject = Any  # Daemon | FloorProcess: pid, started_at, check_alive(), status(), stop()


# ---------------------------------------------------------------------------
# the tree
# ---------------------------------------------------------------------------


def json_child(u: int, k: int) -> tuple[str, bytes]:
    data = {"host": f"10.{u // 250}.{u % 250}.{k + 1}", "port": 8000 + k, "weight": 1 + k % 3,
            "labels": {"zone": f"z{k % 3}", "version": "1.2.3"}}
    return f"i-{u:04d}-{k:02d}_00000000{k:02d}", json.dumps(data).encode()


def populate_json(client: Any, base: str, upstreams: int) -> None:
    client.ensure_path(base)
    create_many(client, [(f"{base}/{upstream_name(u)}", b"") for u in range(upstreams)])
    create_many(client, [(f"{base}/{upstream_name(u)}/{name}", data)
                         for u in range(upstreams) for name, data in (json_child(u, k) for k in range(CHILDREN))])


def expected(client: Any, znodes: dict[str, str]) -> dict[str, set[tuple[str, int]]]:
    return {name: set(servers(kids)) for name, kids in read_tree(client, znodes).items()}


def files_state(files: Path, names: list[str]) -> dict[str, set[tuple[str, int]]]:
    out = {}
    for name in names:
        try:
            out[name] = servers_in((files / f"{name}.upstream").read_text())
        except FileNotFoundError:
            out[name] = set()
    return out


def dyups_state(dyups: DyupsProcess, names: list[str]) -> dict[str, set[tuple[str, int]]]:
    table = dyups.upstreams(names)
    return {name: servers_in("\n".join(table.get(name, ()))) for name in names}


def wait_posted(subject: Subject, dyups: DyupsProcess, names: Iterable[str], t0: float, what: str) -> tuple[float, float]:
    """(first, last) once every name has a POST (200) at/after t0; gives up after 180 s or when the subject dies.

    The waiting happens in the server's process (``wait=``); the loop here adds the liveness check.
    """
    def posted() -> tuple[float, float] | None:
        subject.check_alive()
        return dyups.all_posted(names, t0, wait=0.1)

    result: tuple[float, float] = wait_until(posted, 180, 0.0, what)
    return result


def mismatches(want: dict[str, set], got: dict[str, set]) -> list[str]:
    return [name for name in want if want[name] != got.get(name)]


def all_renamed(names: set[str], t0: float) -> Callable[[list[tuple[float, str]]], Any]:
    """A RenameWatcher predicate: (first, last) times once every ``NAME.upstream`` was renamed at/after t0."""
    wanted = {f"{n}.upstream" for n in names}

    def predicate(events: list[tuple[float, str]]) -> Any:
        seen: dict[str, float] = {}
        for t, name in events:
            if t >= t0 and name in wanted and name not in seen:
                seen[name] = t
        return (min(seen.values()), max(seen.values())) if len(seen) == len(wanted) else None

    return predicate


# ---------------------------------------------------------------------------
# running one subject
# ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, zk: LocalZooKeeper, workdir: Path) -> None:
        self.args = args
        self.zk = zk
        self.workdir = workdir
        self.client = zk.client()
        self.n = args.upstreams
        self.seq = 0
        # The daemon's newer keys, passed only once it accepts them.
        self.throughput_keys = guard_settings(workdir, {"max_drop": "100%", "settle_after_reconnect": 0})
        print(f"newer config keys accepted by today's daemon: {self.throughput_keys or 'none'}")

    def fresh_dir(self, tag: str) -> Path:
        self.seq += 1
        path = self.workdir / f"{self.seq:02d}-{tag}"
        path.mkdir()
        return path

    def start(self, kind: str, tag: str, hosts: str, znodes: dict[str, str], files: Path, dyups: DyupsProcess | None = None,
              reconcile: float = 5.0, extra: dict[str, Any] | None = None, session_timeout: float = 10.0) -> Subject:
        if kind == "floor":
            return FloorProcess(self.workdir, f"{tag}-floor", hosts, znodes, files, dyups.url if dyups else None,
                                batch_fsync=False, session_timeout=session_timeout).start()
        config: dict[str, Any] = {"files_output_path": str(files), "zk_session_timeout": session_timeout}
        if dyups is not None:
            config.update({"dyups_url": dyups.url, "reconcile_interval": reconcile, "reassert_interval": 600})
        config.update(extra or {})
        config["clusters"] = [{"zk_servers": hosts, "zk_nodes": znodes}]
        return Daemon(self.workdir, config, name=f"{tag}-daemon").start()

    # -- block: cold start and resync ------------------------------------------

    def cold_resync(self, base: str, label: str) -> dict[str, Any]:
        znodes = zk_nodes(base, self.n)
        names = set(znodes)
        out: dict[str, Any] = {"loadavg_at_start": loadavg(), "children": label}
        banner(f"cold start and resync, {label} children, {self.n} x {CHILDREN}; load {out['loadavg_at_start']}")
        for kind in SUBJECTS:
            files = self.fresh_dir(f"cold-{label}-{kind}")
            watcher = RenameWatcher(files)
            gate = TcpGate(self.zk.port)
            subject = self.start(kind, f"cold-{label}", gate.hosts, znodes, files)
            sampler = ProcSampler(subject.pid).start()
            r: dict[str, Any] = {}
            try:
                got = watcher.wait_for(all_renamed(names, 0.0), 180)
                if not got:
                    subject.check_alive()
                    raise RuntimeError(f"{kind}: not every file was written")
                r["cold_start_s"] = round(got[1] - subject.started_at, 3)
                r["cold_first_file_s"] = round(got[0] - subject.started_at, 3)
                time.sleep(1.0)
                # Cut the client off, add one instance to every upstream, let it back in.
                gate.shut()
                t_shut = time.monotonic()
                adds = {}
                pending = []
                for u in range(self.n):
                    name = upstream_name(u)
                    kid = f"10.{200 + u // 250}.{u % 250}.1:9{self.seq % 10}00" if label == "plain" else f"r-{u:04d}-{self.seq}"
                    data = b"" if label == "plain" else json.dumps({"host": f"10.{200 + u // 250}.{u % 250}.1", "port": 9000 + self.seq}).encode()
                    adds[name] = kid
                    pending.append(self.client.create_async(f"{znodes[name]}/{kid}", data))
                for p in pending:
                    p.get(60)
                r["outage_changes_s"] = round(time.monotonic() - t_shut, 3)
                time.sleep(0.5)
                t_reopen = time.monotonic()
                gate.reopen()
                got = watcher.wait_for(all_renamed(names, t_reopen), 180)
                if not got:
                    subject.check_alive()
                    raise RuntimeError(f"{kind}: not every file was rewritten after the reconnect")
                t_accept = gate.accepted_after(t_reopen)
                assert t_accept is not None
                r["reconnect_backoff_s"] = round(t_accept - t_reopen, 3)
                r["resync_s"] = round(got[1] - t_accept, 3)
                want = expected(self.client, znodes)
                bad = mismatches(want, files_state(files, sorted(names)))
                r["files_exact"] = not bad
                r["mismatched"] = bad[:5]
                if kind == "floor":
                    initial = subject.records("initial")
                    resync = subject.records("resync")
                    r["pipelined_read_s"] = initial[0]["read_s"] if initial else None
                    r["resync_read_s"] = resync[-1]["read_s"] if resync else None
                r["vmrss_mb"] = round(subject.status().get("VmRSS", 0) / 1024, 1)
                r["peak_threads"] = sampler.peak_threads(0.0)
                r["errors"] = subject.errors()[:5]
                print(f"{kind}: cold start {r['cold_start_s']:.2f} s; resync {r['resync_s']:.2f} s after the reconnect "
                      f"(back-off {r['reconnect_backoff_s']:.2f} s); exact {r['files_exact']}"
                      + (f"; pipelined read {r['pipelined_read_s']} s" if kind == "floor" else ""))
            finally:
                sampler.stop()
                subject.stop()
                gate.close()
                watcher.close()
            out[kind] = r
        return out

    # -- block: latency ---------------------------------------------------------

    def latency(self) -> dict[str, Any]:
        znodes = {**zk_nodes(PLAIN, self.n), "lat": LAT_PATH}
        out: dict[str, Any] = {"loadavg_at_start": loadavg(), "samples": self.args.samples, "reconcile_interval_s": 1.0}
        banner(f"latency: {self.args.samples} creates -> POST, {self.n + 1} upstreams, reconcile 1 s; load {out['loadavg_at_start']}")
        self.client.ensure_path(LAT_PATH)
        for seed in ("10.250.0.1:80", "10.250.0.2:80"):
            if not self.client.exists(f"{LAT_PATH}/{seed}"):
                self.client.create(f"{LAT_PATH}/{seed}", b"")
        for kind in SUBJECTS:
            files = self.fresh_dir(f"lat-{kind}")
            dyups = DyupsProcess(generation="stable", workers=2).start()
            subject = self.start(kind, "lat", self.zk.hosts, znodes, files, dyups, reconcile=1.0)
            rng = random.Random(7)
            creates: list[float] = []
            deletes: list[float] = []
            overlapped: list[float] = []
            try:
                wait_posted(subject, dyups, znodes, 0.0, "the initial POSTs")
                time.sleep(1.5)  # past the first reconcile passes
                for i in range(self.args.samples):
                    child = f"10.251.{i // 200}.{i % 200 + 1}:9000"
                    for phase in ("create", "delete"):
                        t0 = time.monotonic()
                        if phase == "create":
                            self.client.create(f"{LAT_PATH}/{child}", b"")
                        else:
                            self.client.delete(f"{LAT_PATH}/{child}")

                        # The first POST of "lat" since t0 whose body has the child (create) or has it no more (delete).
                        landed = functools.partial(dyups.first_post_with, "lat", child, t0, present=phase == "create", wait=0.25)
                        t_post = wait_until(landed, 30, 0.0, f"POST after {phase}")
                        (creates if phase == "create" else deletes).append(t_post - t0)
                        if phase == "create" and dyups.last_get(t0 - 0.2, t_post) is not None:
                            overlapped.append(t_post - t0)
                        time.sleep(rng.uniform(0.02, 0.06))
                    if i % 50 == 49:
                        subject.check_alive()
                r = {"create_to_post": summary_ms(creates), "delete_to_post": summary_ms(deletes),
                     "creates_near_a_reconcile": len(overlapped),
                     "worst_near_a_reconcile_ms": round(max(overlapped) * 1000, 2) if overlapped else None,
                     "errors": subject.errors()[:5]}
                print(f"{kind}: create -> POST median {r['create_to_post']['median_ms']} ms, worst {r['create_to_post']['max_ms']} ms; "
                      f"{len(overlapped)} near a reconcile GET (worst {r['worst_near_a_reconcile_ms']} ms)")
            finally:
                subject.stop()
                dyups.stop()
            out[kind] = r
        return out

    # -- block: bursts, RSS, idle CPU -------------------------------------------

    def burst_round(self, znodes: dict[str, str], round_no: int) -> tuple[float, float]:
        """Replace one instance of every upstream; (t0, acked)."""
        t0 = time.monotonic()
        pending = []
        for u in range(self.n):
            parent = znodes[upstream_name(u)]
            old = child_name(u, CHILDREN - 1) if round_no == 0 else child_name(u, 100 + round_no - 1)
            tx = self.client.transaction()
            tx.delete(f"{parent}/{old}")
            tx.create(f"{parent}/{child_name(u, 100 + round_no)}", b"")
            pending.append(tx.commit_async())
        for p in pending:
            outcome = p.get(60)
            if any(isinstance(x, Exception) for x in outcome):
                raise RuntimeError(f"burst multi failed: {outcome}")
        return t0, time.monotonic()

    def burst(self) -> dict[str, Any]:
        znodes = zk_nodes(PLAIN, self.n)
        names = set(znodes)
        out: dict[str, Any] = {"loadavg_at_start": loadavg()}
        banner(f"burst, RSS, idle CPU: {self.n} x {CHILDREN}; load {out['loadavg_at_start']}")
        for kind in SUBJECTS:
            for mode in ("files", "dyups"):
                files = self.fresh_dir(f"burst-{mode}-{kind}")
                watcher = RenameWatcher(files)
                dyups = DyupsProcess(generation="stable", workers=2).start() if mode == "dyups" else None
                subject = self.start(kind, f"burst-{mode}", self.zk.hosts, znodes, files, dyups, extra=self.throughput_keys)
                r: dict[str, Any] = {"loadavg_at_start": loadavg()}
                try:
                    if not watcher.wait_for(all_renamed(names, 0.0), 180):
                        subject.check_alive()
                        raise RuntimeError(f"{kind}/{mode}: initial files missing")
                    if dyups:
                        wait_posted(subject, dyups, names, 0.0, "initial POSTs")
                    time.sleep(2.0)
                    if dyups:
                        # The first reconciliation after the initial POSTs compares every
                        # block once (nothing was verified yet): the tail of the initial
                        # sync, not idle work. Its CPU is recorded on its own; the idle
                        # window starts after it, one reconcile interval (5 s) later.
                        settle = 6.0
                        cpu0, t_settle = cpu_seconds(subject.pid), time.monotonic()
                        time.sleep(settle)
                        r["first_verification_cpu_s"] = round(cpu_seconds(subject.pid) - cpu0, 3)
                        r["first_verification_window_s"] = round(time.monotonic() - t_settle, 2)
                        # Idle: nothing changes; the daemon's periodic reconciliation still runs (default 5 s).
                        window = self.args.idle_window
                        cpu0, t_idle = cpu_seconds(subject.pid), time.monotonic()
                        time.sleep(window)
                        r["idle_cpu_percent"] = round(100 * (cpu_seconds(subject.pid) - cpu0) / (time.monotonic() - t_idle), 2)
                        r["idle_window_s"] = window
                    rounds = []
                    for round_no in range(2):
                        t0, t_ack = self.burst_round(znodes, round_no)
                        got = watcher.wait_for(all_renamed(names, t0), 180)
                        if not got:
                            subject.check_alive()
                            raise RuntimeError(f"{kind}/{mode}: burst files missing")
                        b = {"zk_acked_s": round(t_ack - t0, 3), "all_files_s": round(got[1] - t0, 3),
                             "files_per_s": round(self.n / (got[1] - t0))}
                        if dyups:
                            posted = wait_posted(subject, dyups, names, t0, "burst POSTs")
                            b["all_posts_s"] = round(posted[1] - t0, 3)
                            b["posts_per_s"] = round(self.n / (posted[1] - t0))
                        rounds.append(b)
                        time.sleep(1.0)
                    r["bursts"] = rounds
                    want = expected(self.client, znodes)
                    r["files_exact"] = not mismatches(want, files_state(files, sorted(names)))
                    if dyups:
                        r["dyups_exact"] = not mismatches(want, dyups_state(dyups, sorted(names)))
                    status = subject.status()
                    r["vmrss_mb"] = round(status["VmRSS"] / 1024, 1)
                    r["vmhwm_mb"] = round(status["VmHWM"] / 1024, 1)
                    r["errors"] = subject.errors()[:5]
                    best = max(rounds, key=lambda b: b["files_per_s"])
                    print(f"{kind}/{mode}: burst {best['files_per_s']} files/s"
                          + (f", {max(b['posts_per_s'] for b in rounds)} POST/s" if dyups else "")
                          + f"; VmRSS {r['vmrss_mb']} MB" + (f"; idle CPU {r['idle_cpu_percent']} %" if dyups else ""))
                finally:
                    subject.stop()
                    watcher.close()
                    if dyups:
                        dyups.stop()
                    self.restore_after_bursts(znodes)
                out[f"{kind}_{mode}"] = r
        return out

    def restore_after_bursts(self, znodes: dict[str, str]) -> None:
        """Put back the instance the bursts replaced, so every run (and block) starts from the same tree."""
        pending = []
        for u in range(self.n):
            parent = znodes[upstream_name(u)]
            tx = self.client.transaction()
            tx.delete(f"{parent}/{child_name(u, 101)}")
            tx.create(f"{parent}/{child_name(u, CHILDREN - 1)}", b"")
            pending.append(tx.commit_async())
        for p in pending:
            p.get(60)

    # -- block: sustained rate ---------------------------------------------------

    def sustained(self) -> dict[str, Any]:
        znodes = zk_nodes(PLAIN, self.n)
        names = sorted(znodes)
        out: dict[str, Any] = {"loadavg_at_start": loadavg(), "rate": self.args.rate, "duration_s": self.args.duration}
        banner(f"sustained: {self.args.rate} changes/s for {self.args.duration} s over {self.n} upstreams; load {out['loadavg_at_start']}")
        for kind in SUBJECTS:
            files = self.fresh_dir(f"sustained-{kind}")
            watcher = RenameWatcher(files)
            dyups = DyupsProcess(generation="stable", workers=2).start()
            subject = self.start(kind, "sustained", self.zk.hosts, znodes, files, dyups, extra=self.throughput_keys)
            r: dict[str, Any] = {"loadavg_at_start": loadavg()}
            try:
                if not watcher.wait_for(all_renamed(set(names), 0.0), 180):
                    subject.check_alive()
                    raise RuntimeError(f"{kind}: initial files missing")
                wait_posted(subject, dyups, names, 0.0, "initial POSTs")
                time.sleep(1.0)
                writer = run_writer(self.zk.hosts, PLAIN, self.n, self.args.rate, self.args.duration, tag=f"{kind}{self.seq}")
                r["writer"] = writer
                subject.check_alive()
                want = expected(self.client, znodes)
                deadline = time.monotonic() + 60
                exact_at = None
                bad_dyups: list[str] | None = None
                while time.monotonic() < deadline:
                    bad_files = mismatches(want, files_state(files, names))
                    # The dyups table crosses a pipe: ask for it only once the files are right.
                    bad_dyups = mismatches(want, dyups_state(dyups, names)) if not bad_files else None
                    if not bad_files and not bad_dyups:
                        exact_at = time.monotonic()
                        break
                    time.sleep(0.1)
                r["exact"] = exact_at is not None
                posts = dyups.posts_since(writer["t_first"])
                if exact_at is None:
                    if bad_dyups is None:
                        bad_dyups = mismatches(want, dyups_state(dyups, names))
                    r["mismatched_files"] = bad_files[:5]
                    r["mismatched_dyups"] = bad_dyups[:5]
                    r["lag_s"] = None
                else:
                    last_file = max((t for t, _ in watcher.events if t <= exact_at), default=writer["t_last_ack"])
                    last_post = max((t for t, _ in posts if t <= exact_at), default=writer["t_last_ack"])
                    r["lag_s"] = round(max(0.0, max(last_file, last_post) - writer["t_last_ack"]), 3)
                    r["file_lag_s"] = round(max(0.0, last_file - writer["t_last_ack"]), 3)
                    r["post_lag_s"] = round(max(0.0, last_post - writer["t_last_ack"]), 3)
                r["posts"] = len(posts)
                r["file_renames"] = len([e for e in watcher.events if e[0] >= writer["t_first"]])
                r["non_200"] = dyups.non_200_posts()
                r["vmrss_mb"] = round(subject.status().get("VmRSS", 0) / 1024, 1)
                r["errors"] = subject.errors()[:5]
                print(f"{kind}: writer {writer['acked_per_s']} changes/s acked ({writer['acked']} in {writer['elapsed_s']} s); "
                      f"exact {r['exact']}; lag {r['lag_s']} s (files {r.get('file_lag_s')}, POSTs {r.get('post_lag_s')}); "
                      f"{r['posts']} POSTs, {r['file_renames']} renames")
            finally:
                subject.stop()
                watcher.close()
                dyups.stop()
            out[kind] = r
        return out


# ---------------------------------------------------------------------------
# the writer (a subprocess of its own, so it keeps its rate whatever the bench does)
# ---------------------------------------------------------------------------


def run_writer(hosts: str, base: str, upstreams: int, rate: float, duration: float, tag: str) -> dict[str, Any]:
    argv = [PYTHON, str(Path(__file__).resolve()), "_writer", "--hosts", hosts, "--base", base,
            "--upstreams", str(upstreams), "--rate", str(rate), "--duration", str(duration), "--tag", tag]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"writer failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def writer_main(args: argparse.Namespace) -> int:
    """Changes at ``rate``/s for ``duration`` s, round-robin over the upstreams, pipelined.

    Even rounds set a weight in one child's data (``set_async``), odd rounds
    swap an extra instance in (one multi: delete the previous extra, create a
    new one). Bounded: at most rate x duration changes, and it stops sending
    at duration + 5 s whatever happened.
    """
    from kazoo.client import KazooClient

    client = KazooClient(hosts=args.hosts, timeout=10)
    client.start(timeout=30)
    total = int(args.rate * args.duration)
    lock = threading.Lock()
    acked = [0, 0]  # ok, failed
    last_ack = [0.0]
    extra: dict[int, str | None] = {}

    def done(result: Any) -> None:
        now = time.monotonic()
        with lock:
            try:
                value = result.get_nowait()
                failed = isinstance(value, list) and any(isinstance(v, Exception) for v in value)
                acked[1 if failed else 0] += 1
            except Exception:  # noqa: BLE001 - whatever the request failed with, it counts as failed
                acked[1] += 1
            last_ack[0] = max(last_ack[0], now)

    t_first = time.monotonic()
    stop_at = t_first + args.duration + 5
    sent = 0
    while sent < total and time.monotonic() < stop_at:
        due = min(total, int((time.monotonic() - t_first) * args.rate) + 1)
        while sent < due:
            u, rnd = sent % args.upstreams, sent // args.upstreams
            parent = f"{args.base}/{upstream_name(u)}"
            if rnd % 2 == 0:
                k = (rnd // 2) % CHILDREN
                result = client.set_async(f"{parent}/{child_name(u, k)}", str(2 + rnd % 7).encode())
            else:
                tx = client.transaction()
                old = extra.get(u)
                if old:
                    tx.delete(f"{parent}/{old}")
                new = f"10.{220 + u // 250}.{u % 250}.{rnd % 250 + 1}:7{rnd % 1000:03d}"
                new = f"{new}"
                tx.create(f"{parent}/{new}", b"")
                extra[u] = new
                result = tx.commit_async()
            result.rawlink(done)
            sent += 1
        time.sleep(0.002)
    t_last_sent = time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if acked[0] + acked[1] >= sent:
                break
        time.sleep(0.005)
    # Leave no extra instance behind: the tree ends as it began plus the weights.
    pending = [client.delete_async(f"{args.base}/{upstream_name(u)}/{old}") for u, old in extra.items() if old]
    for p in pending:
        p.get(30)
    t_cleanup = time.monotonic()
    client.stop()
    client.close()
    elapsed = last_ack[0] - t_first
    print(json.dumps({
        "sent": sent, "acked": acked[0], "failed": acked[1], "t_first": t_first, "t_last_sent": t_last_sent,
        "t_last_ack": t_cleanup, "elapsed_s": round(elapsed, 3),
        "sent_per_s": round(sent / max(t_last_sent - t_first, 1e-9)),
        "acked_per_s": round(acked[0] / max(elapsed, 1e-9)),
        "cleanup_s": round(t_cleanup - last_ack[0], 3),
    }))
    return 0


# ---------------------------------------------------------------------------
# the verdicts
# ---------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def verdicts(blocks: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(key: str, title: str, figure: Any, floor: Any, unit: str, target: str, ok: bool | None, **extra: Any) -> None:
        rows.append({"id": key, "title": title, "figure": figure, "floor": floor, "unit": unit,
                     "ratio": ratio(figure, floor) if isinstance(figure, (int, float)) and isinstance(floor, (int, float)) else None,
                     "target": target, "pass": ok, **extra})

    lat = blocks.get("latency")
    if lat:
        d, f = lat["daemon"]["create_to_post"]["max_ms"], lat["floor"]["create_to_post"]["max_ms"]
        near = lat["daemon"]["worst_near_a_reconcile_ms"]
        row("latency", "worst create -> dyups POST (reconcile_interval 1 s)", d, f, "ms", "< 3x floor; no change waits for a reconcile",
            d < 3 * f and (near is None or near < 3 * f),
            daemon_median_ms=lat["daemon"]["create_to_post"]["median_ms"], floor_median_ms=lat["floor"]["create_to_post"]["median_ms"],
            worst_near_a_reconcile_ms=near, samples=lat["samples"], loadavg=lat["loadavg_at_start"])
    sus = blocks.get("sustained")
    if sus:
        d, f = sus["daemon"], sus["floor"]
        row("sustained", f"lag after {sus['rate']:g} changes/s for {sus['duration_s']:g} s stop (files + dyups)", d.get("lag_s"), f.get("lag_s"),
            "s", "< 0.5 s; final state exact", d.get("lag_s") is not None and d["lag_s"] < 0.5 and d["exact"],
            exact=d["exact"], floor_exact=f["exact"], writer_rate=d["writer"]["acked_per_s"],
            floor_writer_rate=f["writer"]["acked_per_s"], loadavg=sus["loadavg_at_start"])
    bur = blocks.get("burst")
    if bur:
        dd, fd = bur["daemon_dyups"], bur["floor_dyups"]
        dp = max(b["posts_per_s"] for b in dd["bursts"])
        fp = max(b["posts_per_s"] for b in fd["bursts"])
        row("burst_posts", "burst touching every upstream: POST/s", dp, fp, "POST/s", ">= 1000 POST/s", dp >= 1000, loadavg=bur["loadavg_at_start"])
        df = max(b["files_per_s"] for b in dd["bursts"])
        ff = max(b["files_per_s"] for b in fd["bursts"])
        row("burst_files", "burst touching every upstream: files/s (files + dyups run)", df, ff, "files/s", ">= 2000 files/s", df >= 2000,
            files_only=max(b["files_per_s"] for b in bur["daemon_files"]["bursts"]),
            floor_files_only=max(b["files_per_s"] for b in bur["floor_files"]["bursts"]), loadavg=bur["loadavg_at_start"])
        drss = round(dd["vmrss_mb"] - bur["daemon_files"]["vmrss_mb"], 1)
        frss = round(fd["vmrss_mb"] - bur["floor_files"]["vmrss_mb"], 1)
        row("rss", "VmRSS with dyups minus files only", drss, frss, "MB", "within 10 MB", abs(drss) <= 10,
            daemon_files_mb=bur["daemon_files"]["vmrss_mb"], daemon_dyups_mb=dd["vmrss_mb"],
            floor_files_mb=bur["floor_files"]["vmrss_mb"], floor_dyups_mb=fd["vmrss_mb"], loadavg=bur["loadavg_at_start"])
        row("idle_cpu", f"idle CPU with dyups over {dd['idle_window_s']} s (reconcile_interval 5 s)", dd["idle_cpu_percent"],
            fd["idle_cpu_percent"], "% of a core", "< 0.5 %", dd["idle_cpu_percent"] < 0.5, loadavg=bur["loadavg_at_start"],
            first_verification_cpu_s=dd.get("first_verification_cpu_s"),
            floor_first_verification_cpu_s=fd.get("first_verification_cpu_s"))
    for label in ("plain", "json"):
        cr = blocks.get(f"cold_{label}")
        if not cr:
            continue
        d, f = cr["daemon"], cr["floor"]
        row(f"cold_{label}", f"cold start -> all files ({label} children)", d["cold_start_s"], f["cold_start_s"], "s", "<= 1.1x floor",
            ratio(d["cold_start_s"], f["cold_start_s"]) is not None and d["cold_start_s"] <= 1.1 * f["cold_start_s"],
            floor_pipelined_read_s=f.get("pipelined_read_s"), loadavg=cr["loadavg_at_start"])
        row(f"resync_{label}", f"resync after a reconnect -> all files ({label} children)", d["resync_s"], f["resync_s"], "s", "<= 1.1x floor",
            d["resync_s"] <= 1.1 * f["resync_s"] and d["files_exact"], exact=d["files_exact"],
            floor_pipelined_read_s=f.get("resync_read_s"), loadavg=cr["loadavg_at_start"])
    return rows


BLOCKS = ("cold_plain", "cold_json", "latency", "burst", "sustained")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    w = sub.add_parser("_writer", help=argparse.SUPPRESS)
    w.add_argument("--hosts", required=True)
    w.add_argument("--base", required=True)
    w.add_argument("--upstreams", type=int, required=True)
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--duration", type=float, required=True)
    w.add_argument("--tag", default="")
    parser.add_argument("--quick", action="store_true", help="100 upstreams, 50 samples, 5 s sustained")
    parser.add_argument("--upstreams", type=int)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--idle-window", type=float)
    parser.add_argument("--only", help=f"comma-separated blocks of {', '.join(BLOCKS)}")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--daemon-rev", help="bench the daemon of this git revision (exported), not the working tree")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every daemon and server this bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "_writer":
        return writer_main(args)
    args.upstreams = args.upstreams or (100 if args.quick else 1000)
    args.samples = args.samples or (50 if args.quick else 200)
    args.duration = args.duration or (5.0 if args.quick else 30.0)
    args.idle_window = args.idle_window or (6.0 if args.quick else 20.0)
    only = set(args.only.split(",")) if args.only else set(BLOCKS)
    output = args.output or RESULTS / f"targets{'-quick' if args.quick else ''}.json"
    workdir = Path(tempfile.mkdtemp(prefix="targets-"))
    if args.daemon_rev:
        snapshot_daemon(args.daemon_rev, workdir / "daemon-src")
    revision = daemon_revision()
    print(f"daemon under test: {revision}")
    blocks: dict[str, Any] = {}
    began = time.monotonic()
    try:
        with LocalZooKeeper(workdir=workdir / "zk") as zk:
            bench = Bench(args, zk, workdir)
            t = time.monotonic()
            populate(bench.client, PLAIN, args.upstreams, CHILDREN)
            if "cold_json" in only:
                populate_json(bench.client, JSONB, args.upstreams)
            print(f"populated {args.upstreams} x {CHILDREN} in {time.monotonic() - t:.1f} s")
            for name in BLOCKS:
                if name not in only:
                    continue
                if name == "cold_plain":
                    blocks[name] = bench.cold_resync(PLAIN, "plain")
                elif name == "cold_json":
                    blocks[name] = bench.cold_resync(JSONB, "json")
                else:
                    blocks[name] = getattr(bench, name)()
            bench.client.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = verdicts(blocks)
    payload = {"benchmark": "targets", "quick": args.quick, "machine": machine(), "daemon_revision": revision,
               "upstreams": args.upstreams,
               "children_per_upstream": CHILDREN, "took_s": round(time.monotonic() - began, 1),
               "targets": rows, "blocks": blocks}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2) + "\n")
    banner("targets")
    for row in rows:
        verdict = {True: "PASS", False: "FAIL", None: "-"}[row["pass"]]
        print(f"{verdict:4}  {row['title']}: {row['figure']} {row['unit']} (floor {row['floor']}, ratio {row['ratio']}); target {row['target']}")
    print(f"wrote {output} in {payload['took_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
