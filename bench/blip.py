#!/usr/bin/env python
"""What a connection blip costs ZooKeeper: requests, watches, and the time until the files are right.

For each size (N upstreams x 20 instances: 100 and 1,000, or 100 with
``--quick``) and each subject, run one after the other against one private
ZooKeeper 3.8, each behind its own :class:`~reloader.localenv.zkproxy.ZkFrameProxy`
(which counts every request by opcode):

* ``previous``: the daemon at ``--previous-rev`` (default 87e1d38, before
  SetWatches and persistent watches), exported with ``git archive``;
* ``persistent`` and ``classic``: the daemon in this tree with that ``watch_mode``
  (``auto`` picks ``persistent`` on ZooKeeper 3.8): a watch per znode;
* ``shared-root``: ``persistent`` with ``watch_roots`` set to the znodes'
  common parent, one recursive watch for them all;
* ``names``: ``persistent`` with ``child_data: ignore`` (plain ``host:port``
  children served by name, their data never read, so every weight is 1);
  side by side only, as its files cannot show the k-change blip's data changes;
* ``floor``: ``bench/floor.py watch --batch-fsync`` (raw kazoo watches, a
  full pipelined re-read after each reconnect; files written as durably as
  the daemon writes them: each fsynced and renamed, one directory fsync per
  batch).

Per subject: the server's watches once it is synced (``mntr``
zk_watch_count, and the paths ``wchc`` lists, both per upstream); a quiet
blip (every connection reset, nothing changes, the connection comes back):
the requests sent on the new connection, by kind; 1,000 changes under an unconfigured sibling of the
upstream znodes (what a root's unrelated churn costs: requests and CPU);
a blip with ``--k``
changes (half creates, half data changes, each in its own upstream): the
requests, and the time from the reconnection (the proxy accepting the new
connection) to the last changed file being right.

Per change, while connected, two ways. *One after the other*, in each
subject's own run above: sequential creates (create -> file) and 1,000
changes (CPU). *Side by side* (``--paired-rounds``, on by default): every
subject runs at once, each on its own copy of the tree (so
no subject hears another's changes), and the samples alternate between them
(one create each, in a rotating order; then one burst of 1,000 changes
each, ``--paired-rounds`` times): a load that comes and goes on a shared
machine falls on every subject alike, so the ratios against the floor are
taken from these.

    bench/blip.py                # 100 and 1,000 upstreams
    bench/blip.py --quick        # 100 upstreams
Writes ``bench/results/blip[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    RESULTS,
    Daemon,
    FloorProcess,
    banner,
    child_name,
    cpu_seconds,
    create_many,
    summary_ms,
    daemon_revision,
    four_letter,
    jvm_memory,
    loadavg,
    machine,
    populate,
    servers_in,
    upstream_name,
    wait_until,
    zk_nodes,
)
from bench._common import snapshot_daemon  # noqa: E402
from reloader.localenv.zkproxy import ZkFrameProxy  # noqa: E402
from reloader.localenv.zookeeper import LocalZooKeeper  # noqa: E402

CHILDREN = 20
PING, CONNECT = 11, None
KINDS = {3: "exists", 4: "getData", 8: "getChildren", 12: "getChildren2", 101: "setWatches", 105: "setWatches2",
         106: "addWatch", 18: "removeWatches", 22: "multiRead"}
READS = {3, 4, 8, 12, 22}
SUBJECTS = ("previous", "persistent", "shared-root", "classic", "names", "floor")
#: Subjects timed side by side only (see the module docstring).
PAIRED_ONLY = ("names",)


def requests_since(proxy: ZkFrameProxy, start: int) -> dict[str, Any]:
    """The requests after the first ``start`` ones, by kind (pings and connects left out of ``total``)."""
    seen = Counter(request.opcode for request in proxy.requests[start:])
    by_kind = {KINDS.get(op, str(op)): count for op, count in sorted(seen.items(), key=lambda kv: str(kv[0]))
               if op not in (PING, CONNECT)}
    return {"total": sum(by_kind.values()), "reads": sum(seen[op] for op in READS), "by_kind": by_kind,
            "connections": seen[CONNECT]}


def settle(proxy: ZkFrameProxy, quiet: float = 1.5, limit: float = 120.0) -> None:
    """Wait until the proxy has seen nothing but pings for ``quiet`` seconds."""
    began = time.monotonic()
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() - began < limit:
        count = sum(1 for request in proxy.requests if request.opcode != PING)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return
        time.sleep(0.05)


def watches(port: int) -> dict[str, int]:
    mntr = four_letter(port, "mntr")
    count = re.findall(r"^zk_watch_count\s+(\d+)$", mntr, re.MULTILINE)
    paths = sum(1 for line in four_letter(port, "wchc").splitlines() if line.startswith("\t") or line.startswith("/"))
    return {"mntr_watch_count": int(count[0]) if count else -1, "wchc_paths": paths}


def file_servers(files: Path, name: str) -> set[tuple[str, int]]:
    try:
        return servers_in((files / f"{name}.upstream").read_text())
    except FileNotFoundError:
        return set()


def expected_servers(u: int, extra: dict[int, int] | None = None, subject: str = "") -> set[tuple[str, int]]:
    if subject == "names":
        return {(child_name(u, k), 1) for k in range(CHILDREN)}  # the weights in the data are not read
    want = {(child_name(u, k), 5 if k % 4 == 0 else 1) for k in range(CHILDREN)}
    for k, weight in (extra or {}).items():
        want = {item for item in want if item[0] != child_name(u, k)} | {(child_name(u, k), weight)}
    return want


class Run:
    def __init__(self, args: argparse.Namespace, zk: LocalZooKeeper, workdir: Path, previous_root: Path | None) -> None:
        self.args = args
        self.zk = zk
        self.workdir = workdir
        self.previous_root = previous_root
        self.writer = zk.client()

    def start(self, subject: str, hosts: str, znodes: dict[str, str], files: Path, tag: str, base: str) -> Any:
        if subject == "floor":
            # The daemon's durable sequence: each file fsynced and renamed, one directory fsync per batch.
            return FloorProcess(self.workdir, f"{tag}-floor", hosts, znodes, files, batch_fsync=True).start()
        config: dict[str, Any] = {"files_output_path": str(files), "zk_session_timeout": 10,
                                  "settle_after_reconnect": 0, "max_drop": "100%"}
        root = None
        cluster: dict[str, Any] = {"zk_servers": hosts, "zk_nodes": znodes}
        if subject == "previous":
            root = self.previous_root
        elif subject == "shared-root":
            config["watch_mode"] = "persistent"
            cluster["watch_roots"] = [base]
        elif subject == "names":
            config["watch_mode"] = "persistent"
            config["child_data"] = "ignore"
        else:
            config["watch_mode"] = subject
        config["clusters"] = [cluster]
        return Daemon(self.workdir, config, name=f"{tag}-daemon", log_level="INFO", root=root).start()

    def heap(self) -> float | None:
        """The server's heap in use after a full GC (MB), or None without the JDK tools."""
        pid = self.zk.pid
        return jvm_memory(pid).get("heap_used_mb") if pid else None

    def one(self, n: int, subject: str, base: str) -> dict[str, Any]:
        znodes = zk_nodes(base, n)
        files = self.workdir / f"{n}-{subject}"
        files.mkdir()
        proxy = ZkFrameProxy(self.zk.port).start()
        out: dict[str, Any] = {"loadavg_at_start": loadavg()}
        heap_before = self.heap()
        proc = self.start(subject, proxy.hosts, znodes, files, f"{n}-{subject}", base)
        try:
            began = time.monotonic()
            wait_until(lambda: proc.check_alive() or all(file_servers(files, upstream_name(u)) == expected_servers(u)
                                                         for u in range(n)), 300, 0.2, f"{subject} synced")
            out["initial_sync_s"] = round(time.monotonic() - began, 2)
            settle(proxy)
            out["initial_requests"] = requests_since(proxy, 0)
            out["watches"] = watches(self.zk.port)
            out["watches"]["mntr_per_upstream"] = round(out["watches"]["mntr_watch_count"] / n, 2)
            out["watches"]["wchc_paths_per_upstream"] = round(out["watches"]["wchc_paths"] / n, 2)
            heap_after = self.heap()
            if heap_before is not None and heap_after is not None:
                out["server_heap_mb"] = {"before": heap_before, "synced": heap_after,
                                         "growth": round(heap_after - heap_before, 1)}

            # -- a quiet blip ---------------------------------------------------------
            start = len(proxy.requests)
            proxy.hold()
            time.sleep(1.0)
            accepted = proxy.accepted
            proxy.release()
            wait_until(lambda: proxy.accepted > accepted, 60, 0.005, "the reconnection")
            settle(proxy)
            out["quiet_blip"] = requests_since(proxy, start)

            # -- a blip with k changes --------------------------------------------------
            k = self.args.k
            start = len(proxy.requests)
            proxy.hold()
            time.sleep(1.0)
            picked = [(u * 7919) % n for u in range(k)]
            wants: dict[int, set[tuple[str, int]]] = {}
            for i, u in enumerate(picked):
                parent = f"{base}/{upstream_name(u)}"
                if i % 2 == 0:
                    name = f"10.250.{u % 250}.{i % 250}:9{i % 1000:03d}"
                    self.writer.create(f"{parent}/{name}", b"")
                    wants[u] = expected_servers(u) | {(name, 1)}
                else:
                    self.writer.set(f"{parent}/{child_name(u, 1)}", b"7")
                    wants[u] = expected_servers(u, {1: 7})
            accepted = proxy.accepted
            proxy.release()
            t_connect = wait_until(lambda: proxy.accepted > accepted and time.monotonic(), 60, 0.002,
                                   "the reconnection")
            wait_until(lambda: proc.check_alive() or all(file_servers(files, upstream_name(u)) == want
                                                         for u, want in wants.items()), 120, 0.005,
                       "the changes in the files")
            out["k"] = k
            out["k_blip_files_right_after_reconnect_s"] = round(time.monotonic() - t_connect, 3)
            settle(proxy)
            out["k_blip"] = requests_since(proxy, start)
            # Undo, so the next subject starts from the same tree.
            for i, u in enumerate(picked):
                parent = f"{base}/{upstream_name(u)}"
                if i % 2 == 0:
                    self.writer.delete(f"{parent}/10.250.{u % 250}.{i % 250}:9{i % 1000:03d}")
                else:
                    self.writer.set(f"{parent}/{child_name(u, 1)}", b"")
            wait_until(lambda: proc.check_alive() or all(file_servers(files, upstream_name(u)) == expected_servers(u)
                                                         for u in picked), 60, 0.01, "the undo in the files")
            if self.args.changes:
                out.update(self.changes(proc, proxy, files, base, n))
            out.update(self.sibling_churn(proc, proxy, base))
        finally:
            out["stop_s"] = proc.stop()
            proxy.close()
        return out

    def changes(self, proc: Any, proxy: ZkFrameProxy, files: Path, base: str, n: int) -> dict[str, Any]:
        """Per change, while connected: create -> file latency of plain children, and CPU per 1,000 changes."""
        samples = []
        for i in range(self.args.samples):
            u = (i * 104729) % n
            name, path = f"10.251.{u % 250}.{i % 250}:7{i:03d}", f"{base}/{upstream_name(u)}"
            began = time.monotonic()
            self.writer.create(f"{path}/{name}", b"")
            wait_until(lambda: (name, 1) in file_servers(files, upstream_name(u)), 30, 0.0005, "the created child")
            samples.append(time.monotonic() - began)
            self.writer.delete(f"{path}/{name}")
            wait_until(lambda: (name, 1) not in file_servers(files, upstream_name(u)), 30, 0.002, "the deletion")
        # 1,000 changes: 500 creates then 500 deletes, spread over the upstreams, pipelined.
        start = len(proxy.requests)
        cpu0 = cpu_seconds(proc.pid)
        made = [(f"{base}/{upstream_name(i % n)}/10.252.{i % 250}.{i // 250}:6000", b"") for i in range(500)]
        create_many(self.writer, made)
        wait_until(lambda: proc.check_alive() or all((p.rsplit("/", 1)[1], 1) in file_servers(files, p.split("/")[-2])
                                                     for p, _ in made), 120, 0.01, "500 creates in the files")
        pending = [self.writer.delete_async(p) for p, _ in made]
        for result in pending:
            result.get(30)
        wait_until(lambda: proc.check_alive() or all(file_servers(files, upstream_name(u)) == expected_servers(u)
                                                     for u in range(n)), 120, 0.01, "500 deletes in the files")
        settle(proxy, quiet=1.0)
        return {"create_to_file_ms": summary_ms(samples),
                "cpu_s_per_1000_changes": round(cpu_seconds(proc.pid) - cpu0, 3),
                "requests_per_1000_changes": requests_since(proxy, start)}

    def sibling_churn(self, proc: Any, proxy: ZkFrameProxy, base: str) -> dict[str, Any]:
        """500 creates then 500 deletes under an unconfigured sibling of the upstream znodes, pipelined.

        A root's watch sends them all to the daemon, which discards them; a
        watch per znode never hears of them.
        """
        sibling = f"{base}/zz-unconfigured"
        self.writer.ensure_path(sibling)
        settle(proxy, quiet=1.0)
        start = len(proxy.requests)
        cpu0 = cpu_seconds(proc.pid)
        made = [(f"{sibling}/n{i}", b"") for i in range(500)]
        create_many(self.writer, made)
        for result in [self.writer.delete_async(path) for path, _ in made]:
            result.get(30)
        settle(proxy, quiet=1.0)
        self.writer.delete(sibling)
        return {"sibling_churn_cpu_s_per_1000": round(cpu_seconds(proc.pid) - cpu0, 3),
                "sibling_churn_requests": requests_since(proxy, start)}

    def paired(self, n: int, subjects: list[str]) -> dict[str, Any]:
        """Per-change figures of ``subjects`` running side by side, each on its own tree, samples alternated."""
        out: dict[str, Any] = {"loadavg_at_start": loadavg(), "subjects": {}}
        procs: dict[str, Any] = {}
        bases = {subject: f"/blip/p{n}-{subject}" for subject in subjects}
        files = {subject: self.workdir / f"{n}-paired-{subject}" for subject in subjects}
        try:
            for subject in subjects:
                populate(self.writer, bases[subject], n, CHILDREN)
                files[subject].mkdir()
                procs[subject] = self.start(subject, self.zk.hosts, zk_nodes(bases[subject], n), files[subject],
                                            f"{n}-paired-{subject}", bases[subject])
            for subject, proc in procs.items():
                wait_until(lambda: proc.check_alive() or all(
                    file_servers(files[subject], upstream_name(u)) == expected_servers(u, subject=subject)
                    for u in range(n)), 300, 0.2, f"{subject} synced (side by side)")
            time.sleep(1.0)
            latency: dict[str, list[float]] = {subject: [] for subject in subjects}
            for i in range(self.args.samples):
                order = subjects[i % len(subjects):] + subjects[:i % len(subjects)]
                for subject in order:
                    u = (i * 104729) % n
                    name, path = f"10.251.{u % 250}.{i % 250}:7{i:03d}", f"{bases[subject]}/{upstream_name(u)}"
                    began = time.monotonic()
                    self.writer.create(f"{path}/{name}", b"")
                    wait_until(lambda: (name, 1) in file_servers(files[subject], upstream_name(u)), 30, 0.0005,
                               "the created child")
                    latency[subject].append(time.monotonic() - began)
                    self.writer.delete(f"{path}/{name}")
                    wait_until(lambda: (name, 1) not in file_servers(files[subject], upstream_name(u)), 30, 0.002,
                               "the deletion")
            cpu: dict[str, list[float]] = {subject: [] for subject in subjects}
            for round_ in range(self.args.paired_rounds):
                order = subjects[round_ % len(subjects):] + subjects[:round_ % len(subjects)]
                for subject in order:
                    cpu[subject].append(self.burst(procs[subject], files[subject], bases[subject], n, subject))
            for subject in subjects:
                out["subjects"][subject] = {"create_to_file_ms": summary_ms(latency[subject]),
                                            "cpu_s_per_1000_changes": cpu[subject]}  # in the order run
            floor = out["subjects"].get("floor")
            if floor is not None:
                for subject, figures in out["subjects"].items():
                    figures["create_to_file_x_floor"] = round(
                        figures["create_to_file_ms"]["median_ms"] / floor["create_to_file_ms"]["median_ms"], 2)
                    figures["cpu_x_floor"] = round(
                        statistics.median(figures["cpu_s_per_1000_changes"])
                        / statistics.median(floor["cpu_s_per_1000_changes"]), 2)
        finally:
            for proc in procs.values():
                proc.stop()
        out["loadavg_at_end"] = loadavg()
        return out

    def burst(self, proc: Any, files: Path, base: str, n: int, subject: str) -> float:
        """CPU seconds of ``proc`` for 500 creates then 500 deletes, pipelined, until its files are right + 1 s."""
        cpu0 = cpu_seconds(proc.pid)
        made = [(f"{base}/{upstream_name(i % n)}/10.252.{i % 250}.{i // 250}:6000", b"") for i in range(500)]
        create_many(self.writer, made)
        wait_until(lambda: proc.check_alive() or all((p.rsplit("/", 1)[1], 1) in file_servers(files, p.split("/")[-2])
                                                     for p, _ in made), 120, 0.01, "500 creates in the files")
        for result in [self.writer.delete_async(p) for p, _ in made]:
            result.get(30)
        wait_until(lambda: proc.check_alive() or all(file_servers(files, upstream_name(u))
                                                     == expected_servers(u, subject=subject)
                                                     for u in range(n)), 120, 0.01, "500 deletes in the files")
        time.sleep(1.0)  # as the sequential figure's settle: what the subject does right after counts too
        return round(cpu_seconds(proc.pid) - cpu0, 3)

    def size(self, n: int) -> dict[str, Any]:
        base = f"/blip/n{n}"
        populate(self.writer, base, n, CHILDREN)
        result: dict[str, Any] = {}
        for subject in self.args.subjects:
            if subject == "previous" and self.previous_root is None or subject in PAIRED_ONLY or self.args.side_only:
                continue
            banner(f"{n} x {CHILDREN}: {subject}")
            result[subject] = self.one(n, subject, base)
            r = result[subject]
            print(f"  watches {r['watches']}; quiet blip {r['quiet_blip']['total']} requests "
                  f"({r['quiet_blip']['by_kind']}); k={r['k']} blip {r['k_blip']['total']} requests "
                  f"({r['k_blip']['by_kind']}), files right {r['k_blip_files_right_after_reconnect_s']} s "
                  f"after the reconnect", flush=True)
        side = [subject for subject in self.args.subjects if subject != "previous" or self.previous_root is not None]
        if self.args.changes and self.args.paired_rounds > 0 and len(side) > 1:
            banner(f"{n} x {CHILDREN}: side by side ({', '.join(side)})")
            result["side_by_side"] = self.paired(n, side)
            for subject, figures in result["side_by_side"]["subjects"].items():
                print(f"  {subject}: create -> file {figures['create_to_file_ms']}, CPU per 1,000 changes "
                      f"{figures['cpu_s_per_1000_changes']}", flush=True)
        return result


def markdown(results: dict[str, Any]) -> str:
    """The section of docs/benchmarks.md these results make (printed; pasted below the keep marker)."""
    lines = []
    for n, subjects in results["sizes"].items():
        subjects = dict(subjects)
        side = subjects.pop("side_by_side", None)
        k = next(iter(subjects.values()))["k"] if subjects else None
        lines += [f"**{int(n):,} upstreams x {results['children']}**" + (f" (k = {k} changes)" if k else ""), ""]
        if subjects:
            lines += ["| | " + " | ".join(subjects) + " |", "|---|" + "---|" * len(subjects)]

            def row(label: str, get: Any) -> None:
                lines.append(f"| {label} | " + " | ".join(str(get(r)) for r in subjects.values()) + " |")

            row("server watches per upstream, `mntr` zk_watch_count", lambda r: r["watches"]["mntr_per_upstream"])
            row("server watches in all, `mntr`", lambda r: f"{r['watches']['mntr_watch_count']:,}")
            row("watched paths per upstream, `wchc`", lambda r: r["watches"]["wchc_paths_per_upstream"])
            row("requests after a quiet blip", lambda r: f"{r['quiet_blip']['total']:,}")
            row("of which reads", lambda r: f"{r['quiet_blip']['reads']:,}")
            row("requests after a blip with k changes", lambda r: f"{r['k_blip']['total']:,}")
            row("of which reads", lambda r: f"{r['k_blip']['reads']:,}")
            row("k-change blip: reconnect -> every changed file right", lambda r: f"{r['k_blip_files_right_after_reconnect_s']} s")
            row("create -> file, plain child: median (ms)",
                lambda r: r["create_to_file_ms"]["median_ms"] if "create_to_file_ms" in r else "n/a")
            row("CPU per 1,000 changes (s; idle settle included)", lambda r: r.get("cpu_s_per_1000_changes", "n/a"))
            row("requests per 1,000 changes", lambda r: f"{r['requests_per_1000_changes']['total']:,}"
                if "requests_per_1000_changes" in r else "n/a")
            row("1,000 changes under an unconfigured sibling: requests", lambda r: r["sibling_churn_requests"]["total"]
                if "sibling_churn_requests" in r else "n/a")
            row("... and CPU (s; idle settle included)", lambda r: r.get("sibling_churn_cpu_s_per_1000", "n/a"))
            row("server heap growth, synced (MB, after a full GC)",
                lambda r: r.get("server_heap_mb", {}).get("growth", "n/a"))
            row("initial sync (start -> every file right)", lambda r: f"{r['initial_sync_s']} s")
            lines += ["", "Requests by kind, k-change blip: " + "; ".join(
                f"{name}: {r['k_blip']['by_kind']}" for name, r in subjects.items()), ""]
        if side:
            figures = side["subjects"]
            lines += [f"Side by side, samples alternated (load average {side['loadavg_at_start']} at the start, "
                      f"{side['loadavg_at_end']} at the end):", "",
                      "| | " + " | ".join(figures) + " |", "|---|" + "---|" * len(figures)]
            lines.append("| create -> file, plain child: median (ms) | " + " | ".join(
                f"{f['create_to_file_ms']['median_ms']} ({f.get('create_to_file_x_floor', '-')}x)"
                for f in figures.values()) + " |")
            lines.append("| create -> file: p90 (ms) | " + " | ".join(
                str(f["create_to_file_ms"]["p90_ms"]) for f in figures.values()) + " |")
            lines.append("| CPU per 1,000 changes: median of the bursts (s) | " + " | ".join(
                f"{statistics.median(f['cpu_s_per_1000_changes'])} ({f.get('cpu_x_floor', '-')}x)"
                for f in figures.values()) + " |")
            lines.append("| ... every burst (s) | " + " | ".join(
                ", ".join(str(v) for v in f["cpu_s_per_1000_changes"]) for f in figures.values()) + " |")
            lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated upstream counts (default 100,1000)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--samples", type=int, default=40, help="sequential creates timed per subject")
    parser.add_argument("--no-changes", dest="changes", action="store_false",
                        help="skip the per-change figures (latency, CPU per 1,000 changes)")
    parser.add_argument("--paired-rounds", type=int, default=5,
                        help="bursts of 1,000 changes per subject side by side (0: no side-by-side figures)")
    parser.add_argument("--side-only", action="store_true",
                        help="only the side-by-side per-change figures (no blips, no sequential runs)")
    parser.add_argument("--previous-rev", default="87e1d38")
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--output", default=None)
    parser.add_argument("--markdown", default=None, help="print the section for these results (a JSON file) and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    args.subjects = args.subjects.split(",")
    sizes = [int(s) for s in (args.sizes or ("100" if args.quick else "100,1000")).split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-blip-"))
    previous_root = None
    if "previous" in args.subjects:
        previous_root = snapshot_daemon(args.previous_rev, workdir / "previous")
        import os
        os.environ.pop("BENCH_DAEMON_ROOT", None)
        os.environ.pop("BENCH_DAEMON_REV", None)
    zk = LocalZooKeeper()
    zk.start()
    try:
        run = Run(args, zk, workdir, previous_root)
        results = {"machine": machine(), "daemon_revision": daemon_revision(), "previous_rev": args.previous_rev,
                   "children": CHILDREN, "sizes": {}}
        for n in sizes:
            results["sizes"][str(n)] = run.size(n)
        run.writer.stop()
        run.writer.close()
    finally:
        zk.stop()
    output = Path(args.output) if args.output else RESULTS / ("blip-quick.json" if args.quick else "blip.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")
    print(markdown(results))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
