#!/usr/bin/env python
"""Latency: from a znode child create/delete to the dyups POST and to the file rename.

A kazoo client in this process creates (then deletes) one child under the
watched znode; the daemon runs as a real subprocess. t0 is taken just before
the create/delete request is sent. The POST time is the DyupsServer's
``RequestRecord.time`` (time.monotonic() when the answer was decided, just
before it is sent); the file time is when inotify reports ``lat.upstream``
renamed into place. Both clocks are CLOCK_MONOTONIC.

Two scenarios: the latency upstream alone, and the same with N idle
upstreams (20 instances each) watched beside it, which adds the cost of the
periodic dyups reconciliation (GET /detail of every upstream, every 5 s).

    bench/latency.py            # 50 samples each way; 1 and 1+1000 upstreams
    bench/latency.py --quick    # 20 samples each way; 1 and 1+100 upstreams
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Daemon,
    RenameWatcher,
    Result,
    banner,
    fmt_ms,
    populate,
    summary_ms,
    wait_until,
    zk_nodes,
)
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.dyups_server import DyupsServer

LAT = "lat"
LAT_PATH = "/lat/lat"


def _post_after(dyups: DyupsServer, start_index: int, t0: float, predicate) -> float | None:
    for record in dyups.requests_log[start_index:]:
        if (record.method == "POST" and record.path == f"/upstream/{LAT}" and record.time >= t0
                and record.status == 200 and predicate(record.body or b"")):
            return record.time
    return None


def scenario(zk: LocalZooKeeper, workdir: Path, samples: int, background: int) -> dict:
    client = zk.client()
    tag = f"bg{background}"
    try:
        for child in list(client.get_children("/lat/lat")) if client.exists(LAT_PATH) else []:
            client.delete(f"{LAT_PATH}/{child}")
        client.ensure_path(LAT_PATH)
        for seed in ("10.200.0.1:80", "10.200.0.2:80"):
            if not client.exists(f"{LAT_PATH}/{seed}"):
                client.create(f"{LAT_PATH}/{seed}", b"")
        base = f"/bg{background}"
        if background and not client.exists(base):
            took = populate(client, base, background, 20)
            print(f"populated {background} idle upstreams x 20 instances in {took:.2f} s")
        files = workdir / f"files-{tag}"
        files.mkdir()
        watcher = RenameWatcher(files)
        dyups = DyupsServer(generation="stable", workers=2)
        dyups.start()
        nodes = {LAT: LAT_PATH, **(zk_nodes(base, background) if background else {})}
        config = {
            "files_output_path": str(files),
            "dyups_url": dyups.url,
            "reconcile_interval": 5,
            "reassert_interval": 600,
            "zk_session_timeout": 10,
            "clusters": [{"zk_servers": zk.hosts, "zk_nodes": nodes}],
        }
        daemon = Daemon(workdir, config, name=f"latency-{tag}").start()
        try:
            wait_until(lambda: len(list(files.glob("*.upstream"))) == len(nodes), 60, 0.02, "the initial files")
            wait_until(lambda: _post_after(dyups, 0, 0.0, lambda body: True), 30, 0.02, "the first POST")
            time.sleep(1.0)
            create_post, create_file, delete_post, delete_file, acks = [], [], [], [], []
            with_reconcile: list[float] = []
            without_reconcile: list[float] = []
            rng = random.Random(1)
            lat_file = files / f"{LAT}.upstream"
            for i in range(samples):
                child = f"10.201.{i // 200}.{i % 200 + 1}:9000"
                needle = child.encode()
                for phase in ("create", "delete"):
                    index = len(dyups.requests_log)
                    t0 = time.monotonic()
                    if phase == "create":
                        client.create(f"{LAT_PATH}/{child}", b"")
                        wanted = lambda body, n=needle: n in body
                    else:
                        client.delete(f"{LAT_PATH}/{child}")
                        wanted = lambda body, n=needle: n not in body
                    acks.append(time.monotonic() - t0)
                    t_post = wait_until(lambda i=index, t=t0, w=wanted: _post_after(dyups, i, t, w), 30, 0.001, f"POST after {phase}")
                    t_file = wait_until(lambda t=t0: watcher.first_after(f"{LAT}.upstream", t), 30, 0.001, f"file after {phase}")
                    text = lat_file.read_text()
                    if (child in text) != (phase == "create"):
                        raise RuntimeError(f"{lat_file} does not reflect the {phase} of {child}:\n{text}")
                    (create_post if phase == "create" else delete_post).append(t_post - t0)
                    (create_file if phase == "create" else delete_file).append(t_file - t0)
                    # Did a reconciliation read (GET of the live state) run around this change?
                    overlap = any(r.method == "GET" and t0 - 0.5 <= r.time <= t_post
                                  for r in dyups.requests_log[max(index - 5, 0):])
                    (with_reconcile if overlap else without_reconcile).append(t_post - t0)
                    time.sleep(rng.uniform(0.05, 0.15))
                    daemon.check_alive()
            errors = daemon.errors()
        finally:
            daemon.stop()
            watcher.close()
            dyups.stop()
        out = {
            "watched_upstreams": len(nodes),
            "samples": samples,
            "zk_ack": summary_ms(acks),
            "create_to_file": summary_ms(create_file),
            "create_to_post": summary_ms(create_post),
            "delete_to_file": summary_ms(delete_file),
            "delete_to_post": summary_ms(delete_post),
            "daemon_errors": errors[:5],
            # Change-to-POST split by whether a reconciliation GET was answered within 0.5 s before
            # the change or while it was on its way.
            "to_post_near_reconcile": summary_ms(with_reconcile) if with_reconcile else None,
            "to_post_clear_of_reconcile": summary_ms(without_reconcile) if without_reconcile else None,
        }
        print(f"{len(nodes)} watched upstream(s):")
        for key in ("zk_ack", "create_to_file", "create_to_post", "delete_to_file", "delete_to_post",
                    "to_post_near_reconcile", "to_post_clear_of_reconcile"):
            if out[key]:
                print(f"  {key:26s} {fmt_ms(out[key])}")
        return out
    finally:
        client.stop()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 samples, 100 idle upstreams")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--background", type=int, help="idle upstreams in the second scenario")
    args = parser.parse_args()
    samples = args.samples or (20 if args.quick else 50)
    background = args.background if args.background is not None else (100 if args.quick else 1000)

    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    zk = LocalZooKeeper(workdir=workdir / "zk")
    began = time.monotonic()
    try:
        zk.start()
        results = []
        for bg in (0, background):
            banner(f"latency: {samples} creates + {samples} deletes, {bg} idle upstreams beside")
            results.append(scenario(zk, workdir, samples, bg))
    finally:
        zk.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    path = Result("latency", args.quick, {"scenarios": results, "wall_seconds": round(time.monotonic() - began, 1)}).save()
    print(f"\nresults: {path} ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
