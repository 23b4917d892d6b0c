#!/usr/bin/env python
"""Profile the daemon's worker thread (cProfile) at 1,000 upstreams x 20 instances.

Not part of run_all.sh: it backs the *Findings* in docs/benchmarks.md with
where the time goes. cProfile slows Python code down (2-3x), so read the
shares, not the absolute times.

    bench/profile_worker.py cold        # the initial sync: connect, read 20,000 children, write 1,000 files
    bench/profile_worker.py burst       # one child replaced in every upstream
    bench/profile_worker.py reconcile   # 10 s idle with dyups: two reconciliations (GET /detail + compare)

Only the worker thread is profiled; kazoo's threads and the main thread are not.
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PYTHON, ROOT, populate, zk_nodes
from bench.scale import BASE, burst
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.dyups_server import DyupsServer

# Runs the daemon's own CLI in-process with cProfile on the worker thread
# (Daemon._work); SIGUSR1 starts profiling (for the phases after the initial
# sync), SIGTERM stops the daemon, and the worker dumps its profile on exit.
RUNNER = """
import cProfile, signal, sys, threading
from reloader.cli import main
from reloader.daemon import Daemon
profile = cProfile.Profile()
wanted = threading.Event()
if sys.argv[2] == "now":
    wanted.set()
else:
    signal.signal(signal.SIGUSR1, lambda *_: wanted.set())
work = Daemon._work

def profiled_work(self):
    # cProfile sees only the thread that enables it, so enable it here, in the
    # worker, once the phase to profile has begun.
    while not wanted.wait(0.05):
        if self._stop.is_set():
            return
        self.step(0.05)
    profile.enable()
    try:
        work(self)
    finally:
        profile.disable()
        profile.dump_stats("{out}")

Daemon._work = profiled_work
sys.argv = ["reloader", "run", "--config", sys.argv[1], "--log-level", "WARNING"]
main()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["cold", "burst", "reconcile"])
    parser.add_argument("--upstreams", type=int, default=1000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out = workdir / "worker.prof"
    files = workdir / "files"
    files.mkdir()
    with LocalZooKeeper(workdir=workdir / "zk") as zk:
        client = zk.client()
        populate(client, BASE, args.upstreams, 20)
        dyups = DyupsServer(workers=2) if args.phase == "reconcile" else None
        config: dict = {
            "files_output_path": str(files),
            "zk_session_timeout": 10,
            "clusters": [{"zk_servers": zk.hosts, "zk_nodes": zk_nodes(BASE, args.upstreams)}],
        }
        if dyups:
            dyups.start()
            config.update({"dyups_url": dyups.url, "reconcile_interval": 5, "reassert_interval": 600})
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [PYTHON, "-c", RUNNER.replace("{out}", str(out)), str(config_path), "now" if args.phase == "cold" else "later"],
            cwd=ROOT,
        )
        began = time.monotonic()
        while len(list(files.glob("*.upstream"))) < args.upstreams:
            if proc.poll() is not None:
                raise SystemExit("the daemon exited")
            time.sleep(0.02)
        print(f"all {args.upstreams} files after {time.monotonic() - began:.2f} s")
        if args.phase == "burst":
            time.sleep(1)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            t0, _ack, new = burst(client, args.upstreams, 0)
            last = new[args.upstreams - 1]
            path = files / f"svc{args.upstreams - 1:04d}.upstream"
            while last not in path.read_text():
                time.sleep(0.01)
            time.sleep(1)
            print(f"burst done ({time.monotonic() - t0:.2f} s incl. 1 s settle)")
        elif args.phase == "reconcile":
            time.sleep(1)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(10.2)
            gets = [r for r in dyups.requests_log if r.method == "GET"] if dyups else []
            if gets:
                print(f"{len(gets)} GETs so far; the last answered {len(gets[-1].response_body):,} bytes")
        else:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        client.stop()
        client.close()
        if dyups:
            dyups.stop()
    pstats.Stats(str(out)).sort_stats("cumulative").print_stats(args.top)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
