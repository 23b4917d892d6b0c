#!/usr/bin/env python
"""Idle CPU of the daemon with dyups: 1,000 upstreams x 20, nothing changing, reconcile passes only.

One real daemon (``python -m reloader run``) with files and dyups, against the
dyups test server (stable API, 2 workers) in a process of its own
(``bench/_dyups_proc.py``) and a private ZooKeeper. Once every upstream is
POSTed and the first reconciliation has compared every block, the daemon's
CPU (utime + stime from /proc) is measured over an idle window, in two
settings:

* ``reconcile``: ``reassert_interval`` 600 s, so the window holds reconcile
  passes only (``reconcile_interval`` 5 s; the default window of 60 s is 12
  passes, two whole cycles of the full read every 6th pass);
* ``default``: ``reassert_interval`` 60 s (the default) over a window of two
  re-asserts, each of which re-POSTs all 1,000 upstreams;
* ``files`` (``--settings files``): no dyups at all, the same window: what
  the daemon costs idle without any output to reconcile, the floor under
  the other two.

The server's request log says what each window read: GETs of ``/list`` and
``/detail`` and their bytes, and POSTs.

    bench/idle_dyups.py                              # the working tree
    bench/idle_dyups.py --daemon-rev 68e68e9 --name idle-dyups-before

Writes ``bench/results/NAME[-quick].json`` (default ``idle-dyups``). The test
server's ``/detail`` is cheaper to produce and to read than a real dyups
build's (no real build is available here): the figures compare daemons, they
do not stand for a real nginx.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Daemon,
    RenameWatcher,
    Result,
    banner,
    cpu_seconds,
    daemon_revision,
    loadavg,
    populate,
    snapshot_daemon,
    zk_nodes,
)
from bench._dyups_proc import DyupsProcess
from bench.targets import all_renamed, wait_posted
from reloader.localenv.zookeeper import LocalZooKeeper

BASE = "/idle"
CHILDREN = 20


def answer_sizes(url: str) -> dict[str, int]:
    """Bytes of the server's ``GET /detail`` and ``GET /list`` answers (what a full and a quick pass read)."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    sizes = {}
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for path in ("/detail", "/list"):
            conn.request("GET", path)
            sizes[path] = len(conn.getresponse().read())
    finally:
        conn.close()
    return sizes


def run_setting(label: str, args: argparse.Namespace, zk: LocalZooKeeper, workdir: Path, znodes: dict[str, str],
                reassert: float | None, window: float) -> dict[str, Any]:
    names = set(znodes)
    files = workdir / f"files-{label}"
    files.mkdir()
    watcher = RenameWatcher(files)
    out: dict[str, Any] = {"setting": label, "reconcile_interval_s": args.reconcile if reassert is not None else None,
                           "reassert_interval_s": reassert,
                           "loadavg_at_start": loadavg()}
    banner(f"idle dyups, {label}: {args.upstreams} x {CHILDREN}, reassert {reassert} s, window {window} s; load {out['loadavg_at_start']}")
    with DyupsProcess(generation="stable", workers=2) as dyups:
        config: dict[str, Any] = {"files_output_path": str(files), "zk_session_timeout": 10}
        if reassert is not None:  # None: files only, the daemon's idle cost without any output to reconcile
            config.update({"dyups_url": dyups.url, "reconcile_interval": args.reconcile, "reassert_interval": reassert})
        config["clusters"] = [{"zk_servers": zk.hosts, "zk_nodes": znodes}]
        daemon = Daemon(workdir, config, name=f"{label}-daemon").start()
        try:
            if not watcher.wait_for(all_renamed(names, 0.0), 180):
                daemon.check_alive()
                raise RuntimeError(f"{label}: initial files missing")
            if reassert is not None:
                wait_posted(daemon, dyups, list(znodes), 0.0, "initial POSTs")
            # The first passes after the initial POSTs compare every block (nothing was verified yet):
            # the tail of the start, not idle work.
            cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(args.settle)
            out["settle"] = {"window_s": round(time.monotonic() - t0, 2), "cpu_s": round(cpu_seconds(daemon.pid) - cpu0, 3)}
            requests0 = dyups.requests()
            cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(window)
            cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
            out["window_s"] = round(t1 - t0, 2)
            out["cpu_s"] = round(cpu1 - cpu0, 3)
            out["cpu_percent"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 3)
            out["requests"] = dyups.requests() - requests0
            out["posts"] = len([t for t, _ in dyups.posts_since(t0) if t <= t1])
            out["gets"] = out["requests"] - out["posts"]
            if reassert is not None:
                out["answer_bytes"] = answer_sizes(dyups.url)
            out["vmrss_mb"] = round(daemon.status().get("VmRSS", 0) / 1024, 1)
            out["daemon_errors"] = daemon.errors()[:5]
            daemon.check_alive()
        finally:
            daemon.stop()
            watcher.close()
    print(f"{label}: {out['cpu_percent']} % of a core over {out['window_s']} s; {out['requests']} requests "
          f"({out['posts']} POSTs); settle {out['settle']}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 upstreams, 20 s windows")
    parser.add_argument("--upstreams", type=int)
    parser.add_argument("--reconcile", type=float, default=5.0, help="reconcile_interval (s)")
    parser.add_argument("--window", type=float, help="idle window of the reconcile setting (default 60 s)")
    parser.add_argument("--settle", type=float, default=12.0,
                        help="wait after the initial POSTs before the window (the first passes compare every block)")
    parser.add_argument("--settings", default="reconcile,default")
    parser.add_argument("--daemon-rev", help="bench the daemon of this git revision (exported), not the working tree")
    parser.add_argument("--name", default="idle-dyups")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    args.upstreams = args.upstreams or (100 if args.quick else 1000)
    window = args.window or (20.0 if args.quick else 60.0)
    workdir = Path(tempfile.mkdtemp(prefix="idle-dyups-"))
    if args.daemon_rev:
        snapshot_daemon(args.daemon_rev, workdir / "daemon-src")
    zk = LocalZooKeeper(workdir=workdir / "zk")
    results = []
    try:
        zk.start()
        client = zk.client()
        populate(client, BASE, args.upstreams, CHILDREN)
        client.stop()
        znodes = zk_nodes(BASE, args.upstreams)
        for label in args.settings.split(","):
            if label == "reconcile":
                results.append(run_setting(label, args, zk, workdir, znodes, 600.0, window))
            elif label == "files":
                results.append(run_setting(label, args, zk, workdir, znodes, None, window))
            elif label == "default":
                # Two re-asserts in the window: it starts 12 s (settle) after the POSTs; a re-assert is due 60 s
                # after the output started, then every 60 s.
                results.append(run_setting(label, args, zk, workdir, znodes, 60.0, 2 * 60.0))
            else:
                raise SystemExit(f"unknown setting {label!r}")
    finally:
        zk.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    path = Result(args.name, args.quick, {"daemon_revision": daemon_revision(), "upstreams": args.upstreams,
                                          "children_per_upstream": CHILDREN, "dyups": "test server, stable, 2 workers",
                                          "settings": results}).save()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
