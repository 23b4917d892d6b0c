#!/usr/bin/env python
"""Regenerate docs/benchmarks.md from bench/results/*.json.

Full results are preferred; a benchmark that only has a ``--quick`` result
is reported from it, marked as such. ``--quick`` reports the quick results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def load(name: str, quick: bool) -> dict[str, Any] | None:
    order = [f"{name}-quick.json"] if quick else [f"{name}.json", f"{name}-quick.json"]
    for candidate in order:
        path = RESULTS / candidate
        if path.exists():
            return json.loads(path.read_text())
    return None


def s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ms(summary: dict[str, float]) -> str:
    return f"{summary['median_ms']:.1f} | {summary['p90_ms']:.1f} | {summary['max_ms']:.1f}"


def quick_note(result: dict[str, Any]) -> str:
    return " *(quick run)*" if result.get("quick") else ""


def machine_section(results: list[dict[str, Any]]) -> list[str]:
    m = results[0]["machine"]
    dates = sorted({r["machine"]["date"] for r in results})
    return [
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| date | {', '.join(dates)} |",
        f"| CPU | {m['nproc']} cores ({m['cpu']}) |",
        f"| memory | {m['memory_gb']} GB |",
        f"| kernel | Linux {m['kernel']} |",
        f"| Python | {m['python']} (kazoo {m['kazoo']}, requests {m['requests']}) |",
        f"| ZooKeeper | {m['zookeeper']} (Debian package, standalone, `LocalZooKeeper`: tickTime 200 ms, forceSync=no) |",
        f"| Java | {m['java']} |",
        "| load average (1/5/15 min) when each bench started | "
        + "; ".join(f"{r['benchmark']}: {' / '.join(str(x) for x in r['machine'].get('loadavg_at_start', []))}" for r in results)
        + " |",
        "",
        "Everything ran on this one machine over loopback: ZooKeeper (a JVM), the daemon, the",
        "bench process (kazoo client, DyupsServer threads, samplers) share the cores, so the",
        "figures include that contention. The files go to a temporary directory with the",
        "daemon's real fsync-file, rename, fsync-directory sequence.",
        "",
    ]


def how_to_run() -> list[str]:
    return [
        "## How to run",
        "",
        "```sh",
        "bench/run_all.sh            # every benchmark (25-35 minutes on 2 cores), then this page and docs/sizing.md",
        "bench/run_all.sh --quick    # smaller runs (about 10 minutes in all); pages to bench/results/*-quick.md",
        ".venv/bin/python bench/latency.py [--quick]",
        ".venv/bin/python bench/scale.py   [--quick] [--upstreams N] [--session-timeout S] [--cycles N]",
        ".venv/bin/python bench/heal.py    [--quick] [--samples N]",
        ".venv/bin/python bench/floor.py demo [--upstreams N] [--json-data]   # the floor's own figures",
        ".venv/bin/python bench/targets.py [--quick] [--only BLOCKS] [--daemon-rev REV] [--output PATH]",
        ".venv/bin/python bench/fleet.py   [--quick] [--daemons N] [--layouts standalone,ensemble]",
        ".venv/bin/python bench/idle_dyups.py [--quick] [--daemon-rev REV] [--name NAME]",
        ".venv/bin/python bench/report.py  [--quick] [--output PATH]   # this page from bench/results/*.json",
        ".venv/bin/python bench/sizing.py  [--quick] [--output PATH]   # docs/sizing.md from the fleet and blip results",
        "py-spy record --pid PID -o profile.svg   # where the time goes, every thread (pip install py-spy)",
        "```",
        "",
        "Each script starts its own `LocalZooKeeper` (and `DyupsServer` from `tests/dyups_server.py`)",
        "and runs the daemon as a real subprocess, `python -m reloader run --config CFG`, so that",
        "thread counts (`Threads:` in `/proc/PID/status`, sampled every 10 ms) and memory",
        "(`VmRSS`, `VmHWM`) are those of the real process. Raw figures land in",
        "`bench/results/<name>[-quick].json`.",
        "",
        "Clocks: ZooKeeper operations, inotify events (the moment `NAME.upstream` is renamed",
        "into place) and the DyupsServer's request records (`RequestRecord.time`, taken when",
        "the answer is decided) all use `time.monotonic()`, one system-wide clock on Linux.",
        "Log lines (used only to time a resync, whose end is the INFO line",
        "`resynced N znodes; thawed`) carry wall-clock time with millisecond resolution.",
        "",
    ]


def latency_section(r: dict[str, Any]) -> list[str]:
    lines = [
        f"## 1. Change latency{quick_note(r)}",
        "",
        "From sending a znode child create (or delete) with a kazoo client to the daemon's",
        "answered dyups POST for that upstream, and to its file being renamed into place.",
        f"{r['scenarios'][0]['samples']} creates and {r['scenarios'][0]['samples']} deletes per scenario,",
        "50-150 ms apart; DyupsServer stable, 2 workers; `--log-level WARNING`.",
        "",
        "| watched upstreams | event | to file: median / p90 / max (ms) | to dyups POST: median / p90 / max (ms) |",
        "|---:|---|---|---|",
    ]
    for sc in r["scenarios"]:
        n = sc["watched_upstreams"]
        lines.append(f"| {n} | child created | {ms(sc['create_to_file']).replace(' | ', ' / ')} | {ms(sc['create_to_post']).replace(' | ', ' / ')} |")
        lines.append(f"| {n} | child deleted | {ms(sc['delete_to_file']).replace(' | ', ' / ')} | {ms(sc['delete_to_post']).replace(' | ', ' / ')} |")
    ack = r["scenarios"][0]["zk_ack"]
    lines += [
        "",
        f"For scale: the ZooKeeper create/delete itself took {ack['median_ms']:.1f} ms (median) to be acknowledged.",
        "The file is written before the POST (files first, so what survives an nginx restart is",
        "never behind dyups), hence file < POST.",
        "",
        "The same change-to-POST times split by whether a reconciliation read (`GET /detail`, every",
        "`reconcile_interval` = 5 s) was answered within 0.5 s before the change or while it was on its way:",
        "",
        "| watched upstreams | clear of a reconciliation: median / p90 / max (ms) | near one: n, median / max (ms) |",
        "|---:|---|---|",
    ]
    for sc in r["scenarios"]:
        clear, near = sc.get("to_post_clear_of_reconcile"), sc.get("to_post_near_reconcile")
        clear_text = ms(clear).replace(" | ", " / ") if clear else "-"
        near_text = f"{near['n']}, {near['median_ms']:.1f} / {near['max_ms']:.1f}" if near else "0"
        lines.append(f"| {sc['watched_upstreams']} | {clear_text} | {near_text} |")
    lines += [
        "",
        "The reconciliation runs on the dyups output's own thread: a file never waits for it, and a",
        "POST at most for one pass (see *Findings*).",
        "",
    ]
    return lines


def scale_section(r: dict[str, Any]) -> list[str]:
    a, b, c = r["a_files"], r["b_reconnect"], r["c_dyups"]
    n = r["upstreams"]
    lines = [
        f"## 2. Scale: {n} upstreams x {r['children_per_upstream']} instances{quick_note(r)}",
        "",
        f"{n * r['children_per_upstream']:,} children named `10.x.y.z:port` (every fourth with weight data `5`) in one",
        f"ZooKeeper, created in {r['populate_s']:.1f} s with one pipelined multi per upstream. `zk_session_timeout`",
        f"{r['session_timeout_s']:g} s. Three daemon runs (see `bench/scale.py`).",
        "",
        "### A. Files only: cold start, steady state, burst",
        "",
        "| measure | value |",
        "|---|---|",
        f"| cold start: Popen to first file | {s(a['cold_start_first_file_s'])} s |",
        f"| cold start: Popen to all {n} files written | {s(a['cold_start_all_files_s'])} s |",
        f"| threads during the initial sync (peak) | {a['initial_sync_peak_threads']} |",
        f"| steady state: threads | {a['steady']['threads']} |",
        f"| steady state: VmRSS / VmHWM | {a['steady']['vmrss_mb']} MB / {a['steady']['vmhwm_mb']} MB |",
        f"| steady state: CPU (over {a['steady'].get('window_s', '?')} s idle) | {a['steady'].get('cpu_percent', '-')} % of one core |",
    ]
    for i, bu in enumerate(a["bursts"], 1):
        lines.append(
            f"| burst {i}: one child replaced in each of {n} upstreams; all files show it | "
            f"{s(bu['all_files_s'])} s ({bu['files_per_s']} upstreams/s; ZooKeeper acked all in {s(bu['zk_acked_s'])} s; peak threads {bu['peak_threads']}) |"
        )
    lines += [
        f"| after the bursts: threads, VmRSS / VmHWM | {a['after_bursts']['threads']}, {a['after_bursts']['vmrss_mb']} MB / {a['after_bursts']['vmhwm_mb']} MB |",
        f"| peak threads over the whole run | {a['peak_threads_whole_run']} |",
        f"| SIGTERM to exit | {s(a['shutdown_s'])} s |",
        "",
        "### B. Reconnects (files only, warm start on A's files)",
        "",
        "A second, small ZooKeeper cluster with one upstream runs beside the big one, to see how",
        "long its changes wait while the big cluster is re-read (on that cluster's own thread).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| warm start: Popen to `resynced {n} znodes; thawed` | {s(b['warm_start_thawed_s'])} s ({b['warm_start_files_rewritten']} files rewritten) |",
        f"| steady state: threads (two clusters) | {b['steady']['threads']} |",
        f"| small cluster's change, big one idle: to file | {b['other_cluster_idle_ms']:.1f} ms |",
    ]
    lines += [
        f"| end of run: threads, VmRSS / VmHWM | {b['after']['threads']}, {b['after']['vmrss_mb']} MB / {b['after']['vmhwm_mb']} MB |",
        f"| peak threads over the whole run | {b['peak_threads_whole_run']} |",
        "",
        "Each outage below: the time to the thaw (`resynced N znodes; thawed`), split into the",
        "reconnect (to the `session CONNECTED; re-reading` line) and the resync itself (setting every",
        "watch again, re-reading the child lists and checking each child's data version, then thawing); the session transitions the",
        "daemon logged; the peak thread count sampled every 10 ms from the start of the outage.",
        "",
        "| outage | from | to thawed (s) | reconnect (s) | resync (s) | transitions | peak threads (after) |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for i, p in enumerate(b["pause_resume"], 1):
        lines.append(
            f"| pause/resume {i}: ZooKeeper SIGSTOPped until SUSPENDED was logged ({s(p['detect_suspended_s'])} s) | SIGCONT | "
            f"{s(p['resume_to_thawed_s'])} | {s(p.get('resume_to_connected_s'))} | {s(p.get('resync_s'))} | "
            f"{' → '.join(p['transitions'])} | {p['peak_threads']} ({p['threads_after']}) |"
        )
    for i, k in enumerate(b["kill_restart"], 1):
        lines.append(
            f"| kill -9 / restart {i}: down {s(k['down_s'], 1)} s, the restart took {s(k['zk_restart_s'])} s | ZooKeeper accepts sessions | "
            f"{s(k['ready_to_thawed_s'])} | {s(k.get('ready_to_connected_s'))} | {s(k.get('resync_s'))} | "
            f"{' → '.join(k['transitions'])} | {k['peak_threads']} ({k['threads_after']}) |"
        )
    for i, e in enumerate(b.get("session_expiry", []), 1):
        lines.append(
            f"| session expiry {i}: the daemon SIGSTOPped {s(e['frozen_s'], 1)} s (> session timeout) | SIGCONT | "
            f"{s(e['cont_to_thawed_s'])} | {s(e.get('cont_to_connected_s'))} | {s(e.get('resync_s'))} | "
            f"{' → '.join(e['transitions'])} | {e['peak_threads']} ({e['threads_after']}) |"
        )
    lines += ["", "Files rewritten by the pause/resume resyncs (nothing changed, so none should be): "
              + ", ".join(str(p["files_rewritten"]) for p in b["pause_resume"]) + ".", ""]
    lines += [
        "A change in the small cluster sent 0.1 s after the big cluster's resync began "
        "(its `session CONNECTED; re-reading` line) reached its file after: "
        + ", ".join(f"{p['other_cluster_change_ms']:.0f} ms" + ("" if p["other_cluster_change_during_resync"] else " (the resync had already ended)")
                    for p in b["pause_resume"])
        + f" (with the big cluster idle: {b['other_cluster_idle_ms']:.1f} ms).",
        "",
        "### C. Files + dyups (DyupsServer stable, 2 workers)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| cold start: Popen to all {n} POSTs answered | {s(c['cold_start_all_posts_s'])} s (files done at {s(c['cold_start_all_files_s'])} s) |",
        f"| initial sync POST rate (file write + POST per upstream, interleaved) | {c['initial_posts_per_s']} POST/s |",
        f"| SIGHUP re-assert: all {n} upstreams re-POSTed | {s(c['sighup_reassert']['all_posted_s'])} s ({c['sighup_reassert']['posts_per_s']} POST/s) |",
        f"| burst: one child replaced in each upstream; all files / all POSTs | {s(c['burst']['all_files_s'])} s / {s(c['burst']['all_posts_s'])} s ({c['burst']['posts_per_s']} POST/s) |",
        f"| steady state: threads, VmRSS / VmHWM | {c['steady']['threads']}, {c['steady']['vmrss_mb']} MB / {c['steady']['vmhwm_mb']} MB |",
        f"| steady state: CPU over {c['steady'].get('window_s', '?')} s idle (`reconcile_interval` 5 s) | {c['steady'].get('cpu_percent', '-')} % of one core |",
        f"| peak threads over the whole run | {c['peak_threads_whole_run']} |",
        f"| POSTs not answered 200 | {c['dyups_non_200']} |",
        "",
    ]
    return lines


def heal_section(r: dict[str, Any]) -> list[str]:
    lines = [
        f"## 3. Self-healing after nginx loses the dyups state{quick_note(r)}",
        "",
        "`DyupsServer.simulate_restart()` wipes every POSTed upstream (nginx restarted); ZooKeeper",
        "does not change, so only the periodic reconciliation can notice. Time from the wipe to",
        "the POST that completed the managed set. Each wipe falls at a random phase of the",
        "reconcile timer; `reassert_interval` 600 s so the re-assert cannot be what heals.",
        "",
        "| build | reconcile_interval | upstreams | samples | median (s) | mean (s) | max (s) | min (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in r["scenarios"]:
        x = sc["restore"]
        lines.append(
            f"| {sc['generation']} | {sc['reconcile_interval_s']:g} s | {sc['upstreams']} | {x['n']} | "
            f"{x['median_ms'] / 1000:.2f} | {sc['mean_ms'] / 1000:.2f} | {x['max_ms'] / 1000:.2f} | {x['min_ms'] / 1000:.2f} |"
        )
    lines += [
        "",
        "Expected: uniform over one interval plus the cost of one live-state read and the",
        "re-POSTs, so a median near interval/2 and a maximum just above the interval.",
        "",
    ]
    return lines


def interpretation(lat: dict | None, scale: dict | None, heal: dict | None) -> list[str]:
    lines = ["## Interpretation", ""]
    if scale:
        a, b, c = scale["a_files"], scale["b_reconnect"], scale["c_dyups"]
        n = scale["upstreams"]
        kids = n * scale["children_per_upstream"]
        peaks = [a["peak_threads_whole_run"], c["peak_threads_whole_run"]]
        resyncs = [x["resync_s"] for x in b["pause_resume"] + b["kill_restart"] + b.get("session_expiry", []) if "resync_s" in x]
        lines += [
            f"* **Threads are O(clusters), not O(upstreams or children).** With {n} upstreams and",
            f"  {kids:,} children the daemon runs {a['steady']['threads']} threads (peak {max(peaks)} over whole runs):",
            "  the main thread (signals, shutdown), one per ZooKeeper session, one per output (files, dyups), kazoo's",
            "  three per client (connection loop, callback worker, completion worker) and the files output's small",
            f"  fsync pool. With a second cluster it is {b['steady']['threads']}, and reconnects",
            f"  (pause/resume, kill/restart, session expiry) never raised it (peak {b['peak_threads_whole_run']}): only raw one-shot",
            "  watches are used, set again by the resync, so kazoo spawns no thread per watch on reconnect.",
            (f"* **Memory** is about {a['steady']['vmrss_mb']:.0f} MB resident at {n} x {scale['children_per_upstream']}"
            f" (VmHWM {a['steady']['vmhwm_mb']:.0f} MB) and stays flat: {a['after_bursts']['vmrss_mb']:.1f} MB after the bursts;"
            f" in run B (two clusters, INFO logging) {b['steady']['vmrss_mb']:.1f} MB before the"
            f" {len(b['pause_resume']) + len(b['kill_restart']) + len(b.get('session_expiry', []))} outages and"
            f" {b['after']['vmrss_mb']:.1f} MB after them."),
        ]
        if resyncs:
            per_child = 1000 * sum(resyncs) / len(resyncs) / kids
            lines += [
                f"* **A resync costs about {per_child:.2f} ms per child** ({min(resyncs):.1f}-{max(resyncs):.1f} s for {kids:,} children):",
                "  after every reconnect, whichever way the session went, every watch is set again, every",
                "  child list re-read and every child's data version checked (data re-read only where it",
                "  moved) before the cluster thaws. The cold start reads all the data",
                f"  ({s(a['cold_start_all_files_s'], 1)} s to all files, including interpreter start and the writes).",
                "  Nothing is published for the resyncing cluster meanwhile, which is the design; see",
                "  *Findings* for what it does to other clusters.",
            ]
        lines += [
            f"* **Throughput**: a burst touching every upstream completes at {a['bursts'][-1]['files_per_s']} upstreams/s with",
            (f"  files only and about {c['burst']['posts_per_s']} POST/s with dyups; a pure re-assert (SIGHUP) reaches"
            f" {c['sighup_reassert']['posts_per_s']} POST/s."),
            "  Per changed upstream the worker re-parses all its children, writes and fsyncs the file",
            "  and its directory, then POSTs; under a profiler the fsyncs/rename and the parsing are",
            "  most of it.",
            f"* **Idle cost**: {a['steady'].get('cpu_percent', '-')} % of a core with files only; {c['steady'].get('cpu_percent', '-')} % with dyups,",
            "  almost all of it the periodic reconciliation parsing the live state.",
        ]
    if lat:
        sc0, scn = lat["scenarios"][0], lat["scenarios"][-1]
        clear = scn.get("to_post_clear_of_reconcile")
        lines += [
            f"* **Latency** of a single change is a few milliseconds: median {sc0['create_to_file']['median_ms']:.1f} ms to the file",
            f"  and {sc0['create_to_post']['median_ms']:.1f} ms to the POST, of which ZooKeeper's own acknowledgement is",
            f"  {sc0['zk_ack']['median_ms']:.1f} ms. With {scn['watched_upstreams']} watched upstreams the median is unchanged"
            + (f" (clear of a reconciliation: max {clear['max_ms']:.1f} ms)" if clear else "")
            + f", but the maximum reaches {max(scn['create_to_post']['max_ms'], scn['delete_to_post']['max_ms']):.0f} ms when a change queues",
            "  behind a reconciliation.",
        ]
    if heal:
        by = {(x["generation"], x["reconcile_interval_s"], x["upstreams"]): x for x in heal["scenarios"]}
        parts = [f"{g} / {i:g} s: median {x['restore']['median_ms'] / 1000:.2f} s, max {x['restore']['max_ms'] / 1000:.2f} s"
                 for (g, i, u), x in by.items() if u == min(k[2] for k in by)]
        lines += [
            "* **Healing** after nginx loses its dyups state takes at most about one `reconcile_interval`",
            f"  plus one read and the re-POSTs, on both builds ({'; '.join(parts)}).",
        ]
        big = [x for (g, i, u), x in by.items() if u > 100]
        if big:
            x = big[0]
            lines += [
                (f"  With {x['upstreams']} upstreams x 20 ({x['generation']}, {x['reconcile_interval_s']:g} s) it takes"
                f" {x['restore']['median_ms'] / 1000:.1f} s (median): the read plus {x['upstreams']} re-POSTs."),
            ]
    lines.append("")
    return lines


def findings(lat: dict | None, scale: dict | None, heal: dict | None) -> list[str]:
    n_text = "1,000 x 20"
    resync = cold = other = "?"
    reconcile_cpu = idle_cpu = tail = "?"
    per_run = "a large part of a second"
    if scale:
        b = scale["b_reconnect"]
        n_text = f"{scale['upstreams']:,} x {scale['children_per_upstream']}"
        resyncs = [x["resync_s"] for x in b["pause_resume"] + b["kill_restart"] + b.get("session_expiry", []) if "resync_s" in x]
        resync = f"{min(resyncs):.1f}-{max(resyncs):.1f} s" if resyncs else "?"
        cold = f"{scale['a_files']['cold_start_all_files_s']:.1f} s"
        waits = [p["other_cluster_change_ms"] for p in b["pause_resume"] if p["other_cluster_change_during_resync"]]
        if waits and min(waits) > 10 * max(b["other_cluster_idle_ms"], 1.0):
            other = ("a change in the small second cluster sent during the big cluster's resync reached its\n"
                     "   file after " + ", ".join(f"{w:.0f} ms" for w in waits)
                     + f", against {b['other_cluster_idle_ms']:.0f} ms otherwise (it waits for the step in progress\n"
                     "   and the tasks queued before it).")
        elif waits:
            other = ("a change in the small second cluster sent during the big cluster's resync reached its\n"
                     "   file after " + ", ".join(f"{w:.0f} ms" for w in waits)
                     + f" (idle: {b['other_cluster_idle_ms']:.0f} ms), so here it was not held up noticeably.")
        else:
            other = "(the small cluster's change did not land during a resync in this run)."
        cpu = scale["c_dyups"]["steady"].get("cpu_percent")
        reconcile_cpu = f"{cpu} %" if cpu is not None else "?"
        per_run = f"about {cpu * 5 / 100:.1f} s" if cpu is not None else "a large part of a second"
        idle_cpu = f"{scale['a_files']['steady'].get('cpu_percent', '?')} %"
    watched, clear_max = "many", "a few"
    kill_path, kill_reconnect = "SUSPENDED -> CONNECTED, not LOST", "?"
    if scale:
        kills = scale["b_reconnect"]["kill_restart"]
        paths = sorted({" -> ".join(k["transitions"]) for k in kills})
        kill_path = " and ".join(paths) + ("" if any("LOST" in p for p in paths) else ", not LOST")
        recon = [k["ready_to_connected_s"] for k in kills if "ready_to_connected_s" in k]
        kill_reconnect = f"{min(recon):.1f}-{max(recon):.1f} s" if recon else "?"
    if lat:
        scn = lat["scenarios"][-1]
        tail = f"{max(scn['create_to_post']['max_ms'], scn['delete_to_post']['max_ms']):.0f} ms"
        watched = f"{scn['watched_upstreams']:,}"
        if scn.get("to_post_clear_of_reconcile"):
            clear_max = f"{scn['to_post_clear_of_reconcile']['max_ms']:.0f}"
    errors = []
    for result in (lat, scale, heal):
        if not result:
            continue
        for part in result.get("scenarios", []) or [result.get(k, {}) for k in ("a_files", "b_reconnect", "c_dyups")]:
            errors += part.get("errors", []) + part.get("daemon_errors", [])
    non_200 = scale["c_dyups"].get("dyups_non_200", 0) if scale else 0
    rewritten = sum(p["files_rewritten"] for p in scale["b_reconnect"]["pause_resume"]) if scale else 0
    if not errors and not non_200 and not rewritten:
        health = ("No thread growth was found, and nothing failed: no ERROR lines in any daemon log, no\n"
                  "non-200 POSTs, no files rewritten by a resync when nothing had changed.")
    else:
        health = (f"Anomalies: {len(errors)} ERROR/traceback lines (first: {errors[:1]}), {non_200} non-200 POSTs,\n"
                  f"{rewritten} files rewritten by resyncs that had nothing to change.")
    return f"""## Findings

{health} Two costs grow with size; each runs on a thread of its own, so neither holds up
another cluster or another output:

1. **Every reconnect sets every watch of its cluster again.** kazoo 2.11 drops every watcher
   when the connection drops (`_reset_watchers()`) and sets none again on reconnect, so after
   every CONNECTED `ZooKeeperSource.resync()` (`reloader/sources/zookeeper.py`) reads each
   znode's child list again (with its children watch) and sends each known child an `exists`
   (its data watch and version, no data), pipelined in steps of 250 znodes on that cluster's
   own thread; a child's data is read again only where its version (mzxid) moved. At {n_text}
   that took {resync} per reconnect here. Other clusters are not involved at all: {other}
2. **A dyups reconciliation reads the whole live table.** `DyupsOutput.reconcile()`
   (`reloader/outputs/dyups.py`, every `reconcile_interval`, 5 s by default) reads `GET /detail`
   (1.8 MB for 1,000 x 20) on the dyups output's thread. It keeps a digest of each managed
   upstream's live block from the last clean comparison and parses only the blocks whose text or
   desired state changed. Measured effect: {reconcile_cpu} of a core over a 10 s idle window right
   after a burst that changed every upstream, files only: {idle_cpu}. Files never wait for it; a
   POST waits for at most one pass (worst change-to-POST {tail} with {watched} watched upstreams,
   against {clear_max} ms at most otherwise).
3. **kill+restart of a standalone ZooKeeper usually keeps the session** (not a daemon bug,
   but it matters for tests and runbooks): ZooKeeper restores sessions from its log on
   restart, so the daemon saw {kill_path}. The time from "ZooKeeper
   accepts sessions" to the thaw is kazoo's reconnect backoff (`connection_retry`: 0.2 s
   doubling to `max_delay` 5 s; {kill_reconnect} here) plus the resync. The session-expiry path
   (SUSPENDED -> LOST -> CONNECTED with a new session) was forced by SIGSTOPping the daemon
   for longer than the session timeout; it behaves like the others (no extra threads, full
   resync, thaw).
4. Why no thread or watcher growth: there is one thread per ZooKeeper session and one per
   output, whatever the number of znodes; kazoo's `_reset_watchers()` drops every watcher on
   SUSPENDED and LOST, and the resync sets each raw watch again with the same bound method
   (kazoo keeps one watcher per path and callable), so neither threads nor stale watchers
   accumulate across reconnects.
""".splitlines()


# Everything after this line in docs/benchmarks.md is written by hand (or by another
# bench) and is kept as it is when the page is regenerated.
KEEP_MARKER = "<!-- Hand-written sections below: bench/report.py keeps everything after this line. -->"


def kept_tail(path: Path, marker: str = KEEP_MARKER) -> str:
    """The hand-written part of the existing page (after ``marker``), or ''."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    at = text.find(marker)
    return text[at + len(marker):].strip("\n") if at >= 0 else ""


def fig(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def verdict(row: dict[str, Any]) -> str:
    return {True: "**pass**", False: "**FAIL**", None: "-"}[row.get("pass")]


def targets_section(r: dict[str, Any], before: dict[str, Any] | None) -> list[str]:
    n, c = r["upstreams"], r["children_per_upstream"]
    lines = [
        f"## Targets against the floor{quick_note(r)}",
        "",
        f"`bench/targets.py` at {n:,} upstreams x {c} instances, daemon `{r.get('daemon_revision', '?')}`"
        f" ({r.get('took_s', '?')} s). The *floor* is `bench/floor.py`, a minimal kazoo program doing the",
        "same work with nothing else (raw watches, pipelined reads, durable file writes, keep-alive POSTs),",
        "run as a subprocess in the same run right beside the daemon, against the same tree and timed by",
        "the same clocks. ratio = daemon / floor. The load average was recorded at the start of each block:",
        "other work on the machine moves these figures, so judge the ratios more than the absolutes.",
        "The floor uses kazoo as it comes; the daemon gives kazoo a handler that waits with one `poll()` per",
        "socket wait instead of a new epoll selector (`reloader/sources/kazoo_handler.py`), which is part of",
        "why it can come in under the floor. The dyups test server runs in a process of its own",
        "(`bench/_dyups_proc.py`) for both.",
        "",
    ]
    before_rows = {row["id"]: row for row in before["targets"]} if before else {}
    head = "| target | daemon | floor | ratio | goal | verdict | load at start |"
    sep = "|---|---:|---:|---:|---|---|---|"
    if before_rows:
        head = f"| target | before (`{before.get('daemon_revision', '?')}`) | before ratio | daemon | floor | ratio | goal | verdict | load at start |"
        sep = "|---|---:|---:|---:|---:|---:|---|---|---|"
    lines += [head, sep]
    for row in r["targets"]:
        load = " / ".join(str(x) for x in row.get("loadavg", []))
        cells = [row["title"]]
        if before_rows:
            b = before_rows.get(row["id"], {})
            cells += [fig(b.get("figure"), row["unit"]), fig(b.get("ratio"))]
        cells += [fig(row["figure"], row["unit"]), fig(row["floor"], row["unit"]), fig(row["ratio"]), row["target"], verdict(row), load]
        lines.append("| " + " | ".join(cells) + " |")
    blocks = r.get("blocks", {})
    notes = []
    if "sustained" in blocks:
        sus = blocks["sustained"]
        d, f = sus["daemon"], sus["floor"]
        notes.append(f"* **sustained**: the writer (its own process, pipelined `set_async` and `commit_async`) reached "
                     f"{fig(d['writer']['acked_per_s'])} changes/s acknowledged for the daemon and {fig(f['writer']['acked_per_s'])} for the floor; "
                     f"final state exact: daemon {fig(d['exact'])}, floor {fig(f['exact'])}; the daemon made {fig(d.get('posts'))} POSTs "
                     f"and {fig(d.get('file_renames'))} file renames (floor: {fig(f.get('posts'))} / {fig(f.get('file_renames'))}).")
    if "latency" in blocks:
        lat = blocks["latency"]
        notes.append(f"* **latency**: {lat['samples']} creates; median create -> POST daemon {fig(lat['daemon']['create_to_post']['median_ms'], 'ms')}, "
                     f"floor {fig(lat['floor']['create_to_post']['median_ms'], 'ms')}; {lat['daemon']['creates_near_a_reconcile']} of the daemon's "
                     f"samples fell within a reconcile GET (worst of those {fig(lat['daemon']['worst_near_a_reconcile_ms'], 'ms')}).")
    for label in ("plain", "json"):
        cr = blocks.get(f"cold_{label}")
        if cr:
            notes.append(f"* **cold/resync, {label}**: the floor's own pipelined read of the tree took {fig(cr['floor'].get('pipelined_read_s'), 's')} "
                         f"at the cold start and {fig(cr['floor'].get('resync_read_s'), 's')} after the reconnect; the reconnect back-off "
                         f"(gate reopened -> first reconnect) was daemon {fig(cr['daemon']['reconnect_backoff_s'], 's')}, floor "
                         f"{fig(cr['floor']['reconnect_backoff_s'], 's')} and is not counted.")
    if "burst" in blocks:
        bur = blocks["burst"]
        notes.append(f"* **burst**: files only, the daemon reached {fig(max(b['files_per_s'] for b in bur['daemon_files']['bursts']))} files/s "
                     f"(floor {fig(max(b['files_per_s'] for b in bur['floor_files']['bursts']))}); VmRSS files only / with dyups: daemon "
                     f"{fig(bur['daemon_files']['vmrss_mb'], 'MB')} / {fig(bur['daemon_dyups']['vmrss_mb'], 'MB')}, floor "
                     f"{fig(bur['floor_files']['vmrss_mb'], 'MB')} / {fig(bur['floor_dyups']['vmrss_mb'], 'MB')}"
                     + (f"; the daemon used {fig(bur['daemon_dyups']['first_verification_cpu_s'], 's')} of CPU in the 6 s"
                        " before the idle window (the first reconciliation after the initial POSTs, which compares every"
                        " block once, falls in them or just before them)"
                        if "first_verification_cpu_s" in bur["daemon_dyups"] else "") + ".")
    lines += ["", *notes, "",
              "How each figure is taken: cold start = process start -> the last `NAME.upstream` renamed into place",
              "(inotify); resync = the client's first reconnect through a TCP gate (`bench/_gate.py`), shut while one",
              "instance was added to every upstream -> every file shows it; latency = create sent -> the DyupsServer's",
              "answer to the POST carrying it; burst = one multi per upstream (all pipelined) sent -> the last file / the",
              "last POST; sustained lag = the writer's last acknowledgement -> the last rename or POST that made every file",
              "and every dyups upstream equal to ZooKeeper; RSS = VmRSS after the bursts; idle CPU = utime+stime over the",
              "window with nothing changing, which starts 6 s after the initial POSTs, once the first reconciliation has",
              "compared every block (that pass's CPU is shown in the notes above).", ""]
    return lines


def _growth(x: dict[str, Any]) -> str:
    before = x.get("before_daemons", {}).get("jvm", {}).get("heap_used_mb")
    after = x.get("steady", {}).get("jvm", {}).get("heap_used_mb")
    if before is None or after is None:
        return "-"
    return f"{fig(before)} -> {fig(after)} MB (+{fig(round(after - before, 1))})"


def _truth(blip: dict[str, Any] | None, key: str = "time_to_truth_s") -> str:
    if not blip:
        return "-"
    t = blip.get(key) or {}
    return f"{fig(t.get('median'), 's')} / {fig(t.get('max'), 's')}" if t else "-"


def _reads(blip: dict[str, Any] | None, daemons: int) -> str:
    reads = ((blip or {}).get("requests") or {}).get("reads")
    return "-" if reads is None else f"{reads:,} ({fig(round(reads / daemons, 1))} per daemon)"


def fleet_section(r: dict[str, Any], before: dict[str, Any] | None = None,
                  others: list[dict[str, Any]] | None = None) -> list[str]:
    lines = [
        f"## Fleet: many daemons on one ZooKeeper{quick_note(r)}",
        "",
        "`bench/fleet.py`: N daemons (real processes, files only, `watch_mode` auto: persistent watches on",
        "ZooKeeper 3.8) each watching the same upstreams; the server figures come from the four-letter words",
        "(`mntr`, `wchs`, `cons`) and `jcmd GC.run` + `GC.heap_info` of the server the daemons talk to.",
        "Time to truth: the server serves again (restart) or the ensemble takes a write again (leader kill)",
        "-> every daemon's file shows a change written at that moment. Reads: `mntr` `zk_cnt_readlatency`",
        "from the blip to 3 s after truth (a `multiRead` counts once). `docs/sizing.md` extrapolates from",
        "these to 1,000 hosts.",
        "",
        "| daemon | layout | daemons | sessions | watches (`mntr`) | watched paths | heap after a full GC: no daemon -> with daemons | cold start, all daemons | fan-out to all: median / max | restart: reconnect spread | restart: time to truth median / max | restart: reads | leader kill: time to truth median / max | leader kill: reads | load at start |",
        "|---|---|---:|---:|---:|---:|---|---:|---|---:|---|---|---|---|---|",
    ]
    runs = [(f"before (`{before.get('daemon_revision', '?')}`)", before)] if before else []
    runs += [(f"`{r.get('daemon_revision', '?')}`", r)]
    for label, run in runs:
        for x in run["layouts"]:
            st = x["steady"]
            rs = x.get("restart", {})
            spread = (rs.get("reconnect_after_ready_s") or {}).get("spread")
            lk = x.get("leader_kill")
            lines.append(
                f"| {label} | {x['server']} | {x['daemons']} | {st.get('cons_daemon_sessions')} | "
                f"{fig(int(st['mntr']['zk_watch_count']) if st['mntr'].get('zk_watch_count') else None)} | "
                f"{fig(st['wchs'].get('paths'))} | {_growth(x)} | "
                f"{fig(x['cold_start_all_daemons_s'], 's')} | {fig(x['fanout_all_daemons']['median_ms'], 'ms')} / {fig(x['fanout_all_daemons']['max_ms'], 'ms')} | "
                f"{fig(spread, 's')} | {_truth(rs)} | {_reads(rs, x['daemons'])} | "
                f"{_truth(lk) if lk else ('-' if x['server'] == 'standalone' else 'not run')} | "
                f"{_reads(lk, x['daemons']) if lk else '-'} | "
                f"{' / '.join(str(v) for v in x.get('loadavg_at_start', []))} |")
    lines += ["", "Per daemon VmRSS: " + "; ".join(f"{x['server']}: median {x['daemon_vmrss_mb']['median']} MB" for x in r["layouts"]) + ".",
              "Server CPU (the JVM's utime+stime) for the fleet's cold start / the reconnect storm: "
              + "; ".join(f"{x['server']}: {fig(x.get('cold_start_server_cpu_s'), 's')} / {fig(x.get('restart', {}).get('server_cpu_s'), 's')}"
                          for x in r["layouts"]) + "."]
    for x in r["layouts"]:
        for what, blip in (("restart", x.get("restart")), ("leader kill", x.get("leader_kill"))):
            if blip and blip.get("reconnect_to_truth_s"):
                c, cpu = blip["reconnect_to_truth_s"], blip.get("daemon_cpu_s") or {}
                lines.append(f"{x['server']}, {what}: each daemon's own reconnect -> its file right: median {fig(c['median'], 's')}, "
                             f"max {fig(c['max'], 's')}; daemon CPU from the blip to truth: median {fig(cpu.get('median'), 's')}, "
                             f"max {fig(cpu.get('max'), 's')}, all {x['daemons']} together {fig(cpu.get('sum'), 's')}.")
    for other in others or []:
        for x in other["layouts"]:
            lk = x.get("leader_kill")
            rs = x.get("restart") or {}
            roots = f" and `watch_roots: {x['watch_roots']}`" if x.get("watch_roots") else ""
            lines.append(f"The same with {x['daemons']} daemon{'s' if x['daemons'] != 1 else ''}{roots} ({x['server']}, "
                         f"`{other.get('daemon_revision', '?')}`): cold start "
                         f"{fig(x['cold_start_all_daemons_s'], 's')}; restart: time to truth {_truth(rs)}, reads {_reads(rs, x['daemons'])}"
                         + (f"; leader kill: {_truth(lk)} (from the kill {_truth(lk, 'time_to_truth_from_kill_s')}), "
                            f"reads {_reads(lk, x['daemons'])}" if lk else "")
                         + (f"; watches (`mntr`) {int(x['steady']['mntr']['zk_watch_count']):,}" if x.get("watch_roots") else "")
                         + f"; heap {_growth(x)}; load at start "
                         f"{' / '.join(str(v) for v in x.get('loadavg_at_start', []))}.")
    lines += ["All daemons share this machine's 2 cores here, so the cold start and the time to truth are bound by",
              "the daemons' own CPU; on a real fleet each daemon has its host, and the server CPU is what adds up.", ""]
    return lines


def _median(values: Any) -> float | None:
    return statistics.median(values) if isinstance(values, list) and values else values


def _worst_truth(run: dict[str, Any] | None, server: str, blip: str) -> float | None:
    for x in (run or {}).get("layouts", []):
        if x["server"].startswith(server) and x.get(blip):
            return (x[blip].get("time_to_truth_s") or {}).get("max")
    return None


def _heap_growth(run: dict[str, Any] | None, server: str) -> float | None:
    for x in (run or {}).get("layouts", []):
        if x["server"].startswith(server):
            before = x.get("before_daemons", {}).get("jvm", {}).get("heap_used_mb")
            after = x.get("steady", {}).get("jvm", {}).get("heap_used_mb")
            return None if before is None or after is None else round(after - before, 1)
    return None


def heap_limit(before_growth: float | None) -> float | None:
    """The fleet heap target: at most a tenth of before's growth, unrounded (a growth just over it is not met)."""
    return None if before_growth is None else before_growth / 10


def load_targets_section(blip: dict[str, Any] | None, fleet: dict[str, Any] | None, roots: dict[str, Any] | None,
                         fleet_before: dict[str, Any] | None, idle: dict[str, Any] | None,
                         idle_before: dict[str, Any] | None, names_side: dict[str, Any] | None = None) -> list[str]:
    """Every target of ZooKeeper's load beside the daemon before, the floor and now, from the results of one run.

    The per-change targets name plain ``host:port`` children, which ``child_data: ignore``
    serves without a read: the ``names`` subject of the run's side-by-side figures, or,
    when the run has none, of ``names_side`` (``bench/results/blip-names-side.json``,
    named with its revision).
    """
    if not blip:
        return []
    lines = [
        f"## ZooKeeper's load: every target against before and the floor{quick_note(blip)}",
        "",
        "From `bench/blip.py` (one daemon; *before* is the daemon at "
        f"`{blip.get('previous_rev', '?')}`, before watch re-registration; the floor is `bench/floor.py` with raw",
        "kazoo watches), `bench/fleet.py` (many daemons; *before* from `fleet-before.json`, "
        f"`{(fleet_before or {}).get('daemon_revision', '?')}`) and `bench/idle_dyups.py`. "
        "*Now* has two columns: a watch per znode",
        "(`watch_mode` auto, the default) and `watch_roots` set to the znodes' parent. Ratios against the floor",
        "come from the side-by-side runs (every subject at once, samples alternated).",
        "",
        "| target | before | floor | now: a watch per znode | now: `watch_roots` | met? |",
        "|---|---:|---:|---:|---:|---|",
    ]
    sizes = blip.get("sizes", {})

    def subject(n: str, name: str) -> dict[str, Any]:
        return sizes.get(n, {}).get(name) or {}

    def ratio(n: str, name: str, key: str, result: dict[str, Any] | None = blip) -> float | None:
        side = (result or {}).get("sizes", {}).get(n, {}).get("side_by_side", {}).get("subjects", {})
        return (side.get(name) or {}).get(key)

    def row(target: str, before: Any, floor: Any, now: Any, roots_now: Any, met: str) -> None:
        lines.append(f"| {target} | {before} | {floor} | {now} | {roots_now} | {met} |")

    for n in sizes:
        label = f"{int(n):,}"
        quiet = [subject(n, s).get("quiet_blip", {}).get("total") for s in ("previous", "floor", "persistent", "shared-root")]
        met = all(v is not None and v <= 20 for v in quiet[2:] if v is not None) and quiet[2] is not None
        row(f"requests after a quiet blip, {label} x 20: at most 20", *(fig(v) for v in quiet), "yes" if met else "**no**")
    for n in sizes:
        label = f"{int(n):,}"
        k = subject(n, "persistent").get("k")
        cells = []
        times = []
        for s in ("previous", "floor", "persistent", "shared-root"):
            x = subject(n, s)
            if not x:
                cells.append("-")
                continue
            t = x.get("k_blip_files_right_after_reconnect_s")
            if s in ("persistent", "shared-root"):
                times.append(t)
            cells.append(f"{fig(x['k_blip']['reads'])} reads, {fig(t, 's')}")
        met = bool(times) and all(t is not None and t <= 1.0 for t in times)
        row(f"a blip with k = {k} changes, {label} x 20: O(k) reads, files right within 1 s of the reconnect",
            *cells, ("yes" if met else "**no**") + " (a persistent watch adds one `multiRead` per 500 children "
            "when the zxid moved)")
    big = max(sizes, key=int)
    watch = [subject(big, s).get("watches", {}).get("mntr_per_upstream") for s in ("previous", "floor", "persistent", "shared-root")]
    row(f"server watches per upstream (`mntr`), {int(big):,} x 20: at most 1.1", *(fig(v) for v in watch),
        "yes, with `watch_roots`" if watch[3] is not None and watch[3] <= 1.1 else "**no**")
    size = next((f"{x['daemons']} daemons x {x['upstreams']:,} x {x['children_per_upstream']}"
                 for x in (fleet or roots or {}).get("layouts", [])), "the fleet")
    for server, label in (("standalone", "standalone"), ("observer", "observer")):
        growth = [_heap_growth(run, server) for run in (fleet_before, fleet, roots)]
        limit = heap_limit(growth[0])
        met = limit is not None and any(g is not None and g <= limit for g in growth[1:])
        row(f"fleet heap growth (MB), {size}, {label}: a tenth of before"
            + (f" ({fig(round(limit, 2))})" if limit is not None else ""),
            fig(growth[0]), "-", fig(growth[1]), fig(growth[2]),
            ("yes" + (", with `watch_roots`" if growth[1] is not None and growth[1] > limit else "")) if met else "**no**")
    for server, blipname, label in (("standalone", "restart", "a server restart"),
                                    ("observer", "restart", "an observer restart"),
                                    ("observer", "leader_kill", "a leader kill (from the write)")):
        truth = [_worst_truth(run, server, blipname) for run in (fleet_before, fleet, roots)]
        met = [t is not None and t < 2.0 for t in truth[1:]]
        row(f"fleet time to truth, slowest daemon of {size}, after {label}: under 2 s",
            fig(truth[0], "s"), "-", fig(truth[1], "s"), fig(truth[2], "s"),
            "yes" if all(met) else ("yes, with `watch_roots`" if met[1] else "**no**"))
    own_names = any("names" in sizes.get(n, {}).get("side_by_side", {}).get("subjects", {}) for n in sizes)
    names_source = blip if own_names else names_side
    names_rev = "" if own_names or not names_side else f", `{names_side.get('daemon_revision', '?')}`"

    for key, target, bound in (("create_to_file_x_floor", "create -> file median", 0.8),
                               ("cpu_x_floor", "CPU per 1,000 changes", 0.6)):
        for n in sizes:
            label = f"{int(n):,}"
            cells = [ratio(n, s, key) for s in ("previous", "floor", "persistent", "shared-root")]
            shown = [f"{fig(c)}x" if c is not None else "-" for c in cells]
            names = ratio(n, "names", key, names_source)
            if names is not None:
                shown[2] += f"; names only{names_rev}: {fig(names)}x"
            met = "yes" if any(c is not None and c <= bound for c in cells[2:]) else (
                "yes, names only" if names is not None and names <= bound else "**no**")
            row(f"{target}, {label} x 20: at most {bound}x the floor", *shown, met)
    if idle:
        settings = {x["setting"]: x["cpu_percent"] for x in idle.get("settings", [])}
        before = {x["setting"]: x["cpu_percent"] for x in (idle_before or {}).get("settings", [])}
        for setting, label in (("reconcile", "reconcile passes only"), ("default", "default 60 s re-assert")):
            if setting in settings:
                now = settings[setting]
                row(f"idle CPU with dyups, {idle['upstreams']:,} x {idle['children_per_upstream']}, {label}: "
                    "at most 0.5 % of a core (test server)",
                    fig(before.get(setting), "%"), "-", fig(now, "%"), "-",
                    ("yes" if now <= 0.5 else "**no**") + "; a real dyups build could not be measured here")
    lines += ["", "The floor does no watch re-registration: its quiet blip is a full re-read. The heap and time-to-truth",
              "rows come from the fleet runs, where all the daemons share this machine's 2 cores with the servers.", ""]
    if names_source is not None:
        bursts = max((len((size.get("side_by_side", {}).get("subjects", {}).get("names") or {})
                          .get("cpu_s_per_1000_changes", [])) for size in names_source.get("sizes", {}).values()),
                     default=0)
        source = (f"; `blip-names-side.json`, `{names_source.get('daemon_revision', '?')}`, {bursts} bursts"
                  if names_rev else "")
        lines += ["The per-change targets name plain `host:port` children: *names only* is the daemon with",
                  "`child_data: ignore`, which serves a created child from the watch's event with no read",
                  f"(section *Names only* below{source}).",
                  "The other columns read each child's data, as by default.",
                  ""]
    return lines


# Measured before against a real stable dyups build and the test server, with /detail read every pass
# (1.43 % and 0.35 % of a core); the quick passes read /detail in one pass of 6.
REAL_DETAIL_EXTRA = (1.43 - 0.35) / 6


def idle_section(r: dict[str, Any], before: dict[str, Any] | None, files: dict[str, Any] | None = None) -> list[str]:
    lines = [
        f"## Idle CPU with dyups (bench/idle_dyups.py){quick_note(r)}",
        "",
        f"One daemon, {r['upstreams']:,} upstreams x {r['children_per_upstream']}, files and dyups against the dyups test",
        "server (stable API, 2 workers, a process of its own); nothing changes. CPU = the daemon's utime+stime",
        "over the window, which starts 12 s after the initial POSTs (the first passes compare every block).",
        "`reconcile`: `reassert_interval` 600 s, so the window holds reconcile passes only (every 5 s);",
        "`default`: `reassert_interval` 60 s, two re-asserts of all 1,000 upstreams in the window;",
        "`files`: no dyups at all, the floor under both (the daemon's own idle cost: ZooKeeper pings, timers).",
        "",
        "| daemon | setting | window | CPU | % of a core | requests (POSTs) | load at start |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for run in ([before] if before else []) + [r] + ([files] if files else []):
        for x in run["settings"]:
            lines.append(f"| `{run.get('daemon_revision', '?')}` | {x['setting']} | {fig(x['window_s'], 's')} | {fig(x['cpu_s'], 's')} | "
                         f"**{fig(x['cpu_percent'])}** | {x['requests']} ({x['posts']}) | "
                         f"{' / '.join(str(v) for v in x.get('loadavg_at_start', []))} |")
    sizes = next((x["answer_bytes"] for x in r["settings"] if x.get("answer_bytes")), None)
    lines += [""]
    if sizes:
        ratio = sizes["/detail"] / max(sizes["/list"], 1)
        lines += [f"A full pass reads `GET /detail`, {sizes['/detail']:,} bytes from this server at this size; a quick pass",
                  f"`GET /list`, {sizes['/list']:,} bytes ({ratio:.0f} times fewer). The daemon before the quick passes read `/detail`",
                  "every pass; now it reads `/list` every pass and `/detail` on the first passes, when the names, the",
                  "connection or the desired state moved, and every 6th pass.", ""]
    recon = next((x for x in r["settings"] if x["setting"] == "reconcile"), None)
    floor = next((x for x in (files or {}).get("settings", []) if x["setting"] == "files"), None)
    lines += ["No real dyups build is available on this machine, so the real build's figure could not be re-measured.",
              "Measured before, with the daemon that read `/detail` every pass: 1.43 % of a core against a real",
              "stable build and 0.35 % against this test server: the real build's answer added about 1.08 % (54 ms a pass)."]
    if recon:
        estimate = recon["cpu_percent"] + REAL_DETAIL_EXTRA
        lines += [f"Extrapolation: with `/detail` read in one pass of 6, that extra falls to about {fig(REAL_DETAIL_EXTRA)} %; "
                  "on top of the",
                  f"{fig(recon['cpu_percent'])} % measured here that is **about {estimate:.2f} % of a core** against a real build,",
                  "assuming the real build costs more only in the `/detail` read (the `/list` answer is the names alone)",
                  "and that cost goes with the number of `/detail` reads. An estimate, not a measurement."]
    default = next((x for x in r["settings"] if x["setting"] == "default"), None)
    if default:
        estimate = default["cpu_percent"] + REAL_DETAIL_EXTRA
        lines += [f"With the default 60 s re-assert the same reasoning gives {fig(default['cpu_percent'])} % + "
                  f"{fig(REAL_DETAIL_EXTRA)} %,",
                  f"**about {estimate:.2f} % of a core**: a re-assert's POSTs cost the daemon the same against either",
                  "(each answer is a short `success`)."]
    if floor:
        lines += [f"The floor, the same daemon with files only: {fig(floor['cpu_percent'])} % of a core; the reconcile passes add "
                  + (f"{fig(round(before_recon - floor['cpu_percent'], 3))} % before and " if (before_recon := next(
                      (x["cpu_percent"] for x in (before or {}).get("settings", []) if x["setting"] == "reconcile"), None)) is not None else "")
                  + (f"{fig(round(recon['cpu_percent'] - floor['cpu_percent'], 3))} % now." if recon else "")]
    lines += [""]
    return lines


def generic_section(title: str, r: dict[str, Any]) -> list[str]:
    """Any other result file, as a flat table of its figures (nested keys joined with '.')."""
    rows: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, list) and value and all(isinstance(v, (int, float, str, bool)) for v in value):
            rows.append((prefix, ", ".join(str(v) for v in value)))
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                walk(f"{prefix}[{i}]", sub)
        else:
            rows.append((prefix, value))

    walk("", {k: v for k, v in r.items() if k not in ("machine", "benchmark", "quick")})
    lines = [f"## {title}{quick_note(r)}", "", "| figure | value |", "|---|---|"]
    lines += [f"| `{key}` | {fig(value)} |" for key, value in rows[:200]]
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="report the --quick results")
    parser.add_argument("--output", type=Path, default=DOC, help=f"default: {DOC.relative_to(ROOT)}")
    args = parser.parse_args()
    lat, scale, heal = (load(name, args.quick) for name in ("latency", "scale", "heal"))
    targets, fleet, lua = (load(name, args.quick) for name in ("targets", "fleet", "lua"))
    before_path = RESULTS / "targets-before.json"
    before = json.loads(before_path.read_text()) if before_path.exists() else None
    if targets and targets.get("quick") and before and not args.quick:
        targets = None  # a full "before" run says more than a quick one of the same page
    tail = kept_tail(args.output)
    present = [r for r in (lat, scale, heal, targets, fleet, lua) if r]
    if not present:
        print("no results in bench/results/; run the benchmarks first", file=sys.stderr)
        return 1
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/report.py from bench/results/*.json; run bench/run_all.sh to refresh. -->",
        "",
        "How fast the daemon follows ZooKeeper, what it costs at 1,000 upstreams, and how quickly",
        "it repairs nginx's dyups state. All figures below were measured, on the machine described",
        "next, by the scripts in `bench/`.",
        "",
    ]
    shown_targets = targets or before
    lines += machine_section([r for r in (lat, scale, heal, shown_targets, fleet) if r and "machine" in r])
    lines += how_to_run()
    if lat:
        lines += latency_section(lat)
    if scale:
        lines += scale_section(scale)
    if heal:
        lines += heal_section(heal)
    if targets:
        lines += targets_section(targets, before if before is not targets else None)
    elif before:
        lines += targets_section(before, None)
    if fleet:
        fleet_before = load("fleet-before", args.quick)
        others = [x for x in (load("fleet-5daemons", args.quick), load("fleet-1daemon", args.quick),
                              load("fleet-roots", args.quick)) if x]
        lines += fleet_section(fleet, fleet_before, others)
    idle = load("idle-dyups", args.quick)
    lines += load_targets_section(load("blip", args.quick), fleet, load("fleet-roots", args.quick),
                                  load("fleet-before", args.quick), idle, load("idle-dyups-before", args.quick),
                                  load("blip-names-side", args.quick))
    if idle:
        lines += idle_section(idle, load("idle-dyups-before", args.quick), load("idle-files", args.quick))
    if lat or scale or heal:
        lines += interpretation(lat, scale, heal)
        lines += findings(lat, scale, heal)
    if lua and "lua" not in tail.lower():  # the Lua bench writes its own section after the marker
        lines += generic_section("Lua balancer (bench/results/lua.json)", lua)
    lines += ["", KEEP_MARKER, ""]
    if tail:
        lines += [tail, ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
