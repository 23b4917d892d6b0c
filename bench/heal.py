#!/usr/bin/env python
"""Heal: how long until a wiped dyups state is restored by the periodic reconciliation.

The DyupsServer's ``simulate_restart()`` is nginx restarting: every POSTed
upstream is gone at once (the port stays up). Nothing changes in ZooKeeper,
so only the daemon's reconciliation (every ``reconcile_interval``: read the
live state - ``/detail`` on stable builds, ``/list`` on the wip build - and
re-POST what drifted) can bring it back. The periodic re-assert is pushed
out of the way (600 s) so that it cannot be what heals.

Each sample waits a random part of the interval before the wipe, so the
wipe falls at a random phase of the reconcile timer; the restore time is
from the wipe to the POST that completed the managed set (the server's
request timestamp), so the expected value is about interval/2 + the cost of
one read and the re-POSTs, and the maximum about interval + that cost.

    bench/heal.py           # stable and wip x reconcile 1 s and 5 s, 10 samples each,
                            # plus stable / 1 s with 1000 upstreams x 20 (3 samples)
    bench/heal.py --quick   # stable and wip x 1 s, 5 samples each
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Daemon,
    Result,
    banner,
    populate,
    summary_ms,
    upstream_name,
    wait_until,
    zk_nodes,
)
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.dyups_server import DyupsServer


def scenario(zk: LocalZooKeeper, workdir: Path, base: str, upstreams: int, generation: str,
             interval: float, samples: int, rng: random.Random) -> dict:
    tag = f"{generation}-{interval:g}s-{upstreams}"
    banner(f"heal: {generation}, reconcile_interval {interval:g} s, {upstreams} upstreams, {samples} wipes")
    dyups = DyupsServer(generation=generation, workers=2)
    dyups.start()
    files = workdir / f"files-{tag}"
    config = {
        "files_output_path": str(files),
        "dyups_url": dyups.url,
        "reconcile_interval": interval,
        "reassert_interval": 600,
        "zk_session_timeout": 10,
        "clusters": [{"zk_servers": zk.hosts, "zk_nodes": zk_nodes(base, upstreams)}],
    }
    names = [upstream_name(u) for u in range(upstreams)]
    daemon = Daemon(workdir, config, name=f"heal-{tag}").start()
    try:
        def converged() -> dict | None:
            table = dyups.upstreams()
            return table if all(name in table for name in names) else None

        wait_until(converged, 120, 0.05, "the initial POSTs")
        time.sleep(interval + 0.5)  # let one reconciliation confirm it
        expected = {name: dyups.upstreams()[name] for name in names}

        def restored() -> bool:
            table = dyups.upstreams()
            return all(table.get(name) == lines for name, lines in expected.items())

        times: list[float] = []
        wanted = set(names)
        for _ in range(samples):
            time.sleep(rng.uniform(0, interval))
            index = len(dyups.requests_log)
            t0 = time.monotonic()
            dyups.simulate_restart()
            if restored():
                raise RuntimeError("simulate_restart did not wipe the managed upstreams")

            def reposted(index: int = index, t0: float = t0) -> float | None:
                # Cheap test first (the server's table is only built once every name was re-POSTed):
                # building dyups.upstreams() on every request would slow the server down.
                last: dict[str, float] = {}
                for record in dyups.requests_log[index:]:
                    if record.method == "POST" and record.status == 200 and record.time >= t0:
                        last[record.path.rsplit("/", 1)[-1]] = record.time
                if len(last.keys() & wanted) == len(wanted) and restored():
                    return max(last[name] for name in wanted)
                return None

            t_done = wait_until(reposted, interval * 2 + 60, 0.01, "the restore")
            times.append(t_done - t0)
            daemon.check_alive()
        repairs = len(daemon.log_lines(r"drifted \(missing\); re-POSTing"))
        errors = daemon.errors()
    finally:
        daemon.stop()
        dyups.stop()
    out = {
        "generation": generation,
        "reconcile_interval_s": interval,
        "upstreams": upstreams,
        "restore": summary_ms(times),
        "mean_ms": round(statistics.mean(times) * 1000, 1),
        "repairs_logged": repairs,
        "errors": errors[:5],
    }
    print(f"restored after: median {out['restore']['median_ms'] / 1000:.2f} s, mean {out['mean_ms'] / 1000:.2f} s, "
          f"max {out['restore']['max_ms'] / 1000:.2f} s, min {out['restore']['min_ms'] / 1000:.2f} s "
          f"(n={samples}; {repairs} repairs logged)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 s interval only, 5 samples, no 1000-upstream run")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--upstreams", type=int, default=20)
    parser.add_argument("--scale-upstreams", type=int, default=1000, help="0 to skip the large run")
    args = parser.parse_args()
    samples = args.samples or (5 if args.quick else 10)
    intervals = (1.0,) if args.quick else (1.0, 5.0)

    workdir = Path(tempfile.mkdtemp(prefix="bench-heal-"))
    zk = LocalZooKeeper(workdir=workdir / "zk")
    began = time.monotonic()
    rng = random.Random(7)
    results = []
    try:
        zk.start()
        client = zk.client()
        populate(client, "/heal", args.upstreams, 3)
        for generation in ("stable", "wip"):
            for interval in intervals:
                results.append(scenario(zk, workdir, "/heal", args.upstreams, generation, interval, samples, rng))
        if not args.quick and args.scale_upstreams:
            populate(client, "/healbig", args.scale_upstreams, 20)
            results.append(scenario(zk, workdir, "/healbig", args.scale_upstreams, "stable", 1.0, 3, rng))
        client.stop()
        client.close()
    finally:
        zk.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    path = Result("heal", args.quick, {"scenarios": results, "wall_seconds": round(time.monotonic() - began, 1)}).save()
    print(f"\nresults: {path} ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
