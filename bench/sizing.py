#!/usr/bin/env python
"""Regenerate docs/sizing.md from bench/results: what a fleet of daemons costs ZooKeeper.

Every figure on the page is either read from the results of one run of
``bench/run_all.sh`` (``fleet.json``, ``fleet-roots.json``, ``blip.json``;
``fleet-before.json`` for the daemon before watch re-registration) or
computed here from them, with the basis of each extrapolation written
beside it. The part after :data:`KEEP_MARKER` (the layout, how to re-run)
is hand-written and kept as it is, as ``report.py`` keeps the hand-written
end of ``docs/benchmarks.md``.

``--quick`` renders the quick results to ``bench/results/sizing-quick.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from kazoo.retry import KazooRetry
from report import ROOT, _growth, _heap_growth, _reads, _truth, fig, heap_limit, kept_tail, load

sys.path.insert(0, str(ROOT))
from reloader.sources.zookeeper import CONNECTION_RETRY, MULTI_READ_MAX  # noqa: E402

DOC = ROOT / "docs" / "sizing.md"
KEEP_MARKER = "<!-- Hand-written sections below: bench/sizing.py keeps everything after this line. -->"
#: The fleet the page sizes: hosts (one daemon each), upstreams, instances per upstream.
HOSTS, UPSTREAMS, INSTANCES = 1_000, 1_000, 20
#: Observers in the layout at the end of the page: one per rack of HOSTS // OBSERVERS hosts.
OBSERVERS = 20
MB = 2 ** 20
# Each reconnect delay is scaled by a random factor in 1 +- this (kazoo's default; the daemon keeps it).
KAZOO_JITTER = KazooRetry(**CONNECTION_RETRY).max_jitter

Run = dict[str, Any]


def _layout(run: Run | None, server: str) -> dict[str, Any] | None:
    for x in (run or {}).get("layouts", []):
        if x["server"].startswith(server):
            return x
    return None


def _watch_count(x: dict[str, Any] | None, server: str = "steady") -> int | None:
    """``mntr``'s zk_watch_count with every daemon synced, on the server they talk to.

    ``server`` ``steady_leader``: on the leader instead.
    """
    value = (((x or {}).get(server) or {}).get("mntr") or {}).get("zk_watch_count")
    return int(value) if value not in (None, "") else None


def _per_daemon_reads(x: dict[str, Any] | None, blip: str) -> float | None:
    reads = (((x or {}).get(blip) or {}).get("requests") or {}).get("reads")
    return None if reads is None else reads / x["daemons"]  # type: ignore[index]


def _span(values: list[float], digits: int = 0, unit: str = "") -> str:
    """``lo-hi`` (or one value) of the figures present, rounded to ``digits``."""
    if not values:
        return "-"
    lo, hi = round(min(values), digits), round(max(values), digits)
    if digits == 0:
        lo, hi = int(lo), int(hi)
    # "to" where a dash would read as a minus sign.
    text = fig(lo) if lo == hi else f"{fig(lo)}{' to ' if lo < 0 or hi < 0 else '-'}{fig(hi)}"
    return f"{text} {unit}".strip()


def _rounded(value: float, step: int) -> int:
    return int(round(value / step) * step)


def measured_section(now: Run, roots: Run | None, before: Run | None) -> list[str]:
    """The table of what the fleet bench measured, six columns: before / now / now + roots, twice."""
    columns: list[tuple[str, dict[str, Any] | None]] = []
    for server, where in (("standalone", "standalone"), ("observer", "observer")):
        columns += [(f"before, {where}", _layout(before, server)), (f"now, {where}", _layout(now, server)),
                    (f"now + `watch_roots`, {where}", _layout(roots, server))]
    daemons = _layout(now, "standalone")["daemons"]  # type: ignore[index]

    def row(label: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(cell(x) if x else "-" for _, x in columns) + " |"

    def reads(blip: str) -> Any:
        def cell(x: dict[str, Any]) -> str:
            if _per_daemon_reads(x, blip) is None:
                return "-" if blip == "leader_kill" and not x.get(blip) else "not counted"
            return _reads(x[blip], x["daemons"])
        return cell

    def leader(key: str) -> Any:
        def cell(x: dict[str, Any]) -> str:
            lk = x.get("leader_kill")
            if not lk:
                return "-" if x["server"] == "standalone" else "not run"
            if key == "accepted":
                return fig(lk.get("write_accepted_after_kill_s"), "s")
            t, k = lk["time_to_truth_s"], lk.get("time_to_truth_from_kill_s") or {}
            return (f"{fig(t['median'], 's')} / **{fig(t['max'], 's')}** "
                    f"({fig(k.get('median'), 's')} / {fig(k.get('max'), 's')})")
        return cell

    def reconnects(x: dict[str, Any]) -> str:
        r = x["restart"].get("reconnect_after_ready_s") or {}
        return f"{fig(r.get('first'))} .. {fig(r.get('last'), 's')}" if r else "-"

    def own(x: dict[str, Any]) -> str:
        c = x["restart"].get("reconnect_to_truth_s")
        return f"{fig(c['median'])} / {fig(c['max'], 's')}" if c else "-"

    def daemon_cpu(x: dict[str, Any]) -> str:
        c = x["restart"].get("daemon_cpu_s")
        return f"{fig(c['median'])} / {fig(c['sum'], 's')}" if c else "-"

    def watched(x: dict[str, Any]) -> str:
        w = x["steady"]["wchs"]
        return f"{fig(w.get('watches'))} on {fig(w.get('paths'))}"

    lines = [
        f"## What was measured ({daemons} daemons x {UPSTREAMS:,} upstreams x {INSTANCES})",
        "",
        f"From `bench/fleet.py` in the run of `bench/run_all.sh` on daemon `{now.get('daemon_revision', '?')}`"
        + (f" (`fleet-roots.json`: `{roots.get('daemon_revision', '?')}`)" if roots and roots.get(
            "daemon_revision") != now.get("daemon_revision") else "")
        + ": `fleet.json`, a watch per znode (the default), and `fleet-roots.json`, `watch_roots` set to the "
        "znodes' parent; *before* is the daemon before watch re-registration "
        f"(`fleet-before.json`, `{(before or {}).get('daemon_revision', '?')}`). \"Observer\": 3 voters + 1 observer "
        "(`reloader.localenv.ensemble.LocalEnsemble`), every daemon pointed at the observer. All the daemons, "
        "the servers and the bench share one 2-core machine; the load average at the start of each block is "
        "in the last row.",
        "",
        "| | " + " | ".join(label for label, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
        row("`mntr` zk_watch_count", lambda x: fig(_watch_count(x))),
        row("`wchs`: watches on paths", watched),
        row("heap in use after `GC.run`: no daemon -> all daemons", _growth),
        row("fleet cold start (every daemon at once -> every file)", lambda x: fig(x["cold_start_all_daemons_s"], "s")),
        row("server restart (kill -9): how long it was down", lambda x: fig(x["restart"].get("down_s"), "s")),
        row("... reconnects after it serves again", reconnects),
        row("... time to truth (every daemon's file right): median / max", lambda x: _truth(x["restart"])),
        row("... each daemon's own reconnect -> its file: median / max", own),
        row("... reads the server counted (`zk_cnt_readlatency`)", reads("restart")),
        row("... server CPU", lambda x: fig(x["restart"].get("server_cpu_s"), "s")),
        row("... the daemons' CPU, blip to truth: median / all", daemon_cpu),
        row("kill -9 of the leader: the ensemble takes writes after", leader("accepted")),
        row("... time to truth from that write: median / max (from the kill)", leader("truth")),
        row("... reads on the observer", reads("leader_kill")),
        row("daemon VmRSS (median)", lambda x: fig(x["daemon_vmrss_mb"]["median"], "MB")),
        row("load average at the start (1 / 5 / 15 min)",
            lambda x: " / ".join(str(v) for v in x.get("loadavg_at_start", []))),
        "",
        "Time to truth: from the server serving again (restart) or the ensemble taking a write again (leader "
        "kill) until every daemon's file shows a change written at that moment. Reads: `mntr` "
        "`zk_cnt_readlatency` from the blip to 3 s after truth, the bench's own probe write and reads included "
        "(a few); a `multiRead` counts once. The before runs did not count reads: they read everything again "
        "(the one-daemon table below).",
        "",
    ]
    return lines


def targets_lines(now: Run, roots: Run | None, before: Run | None) -> list[str]:
    """The fleet's targets (heap growth at most a tenth of before, time to truth under 2 s), met or not."""
    lines = ["The fleet targets, from the table:", ""]
    for server, where in (("standalone", "standalone"), ("observer", "observer")):
        old = _heap_growth(before, server)
        limit = heap_limit(old)
        if limit is None:
            continue
        for label, run in (("a watch per znode", now), ("`watch_roots`", roots)):
            growth = _heap_growth(run, server)
            if growth is not None:
                lines.append(f"* heap growth, {where}, {label}: +{fig(growth)} MB against at most a tenth of before "
                             f"(+{fig(old)} MB: {fig(round(limit, 2))} MB): **{'met' if growth <= limit else 'not met'}**;")
    for label, run in (("a watch per znode", now), ("`watch_roots`", roots)):
        worst = []
        for server in ("standalone", "observer"):
            x = _layout(run, server)
            for blip in ("restart", "leader_kill"):
                t = ((x or {}).get(blip) or {}).get("time_to_truth_s")
                if t:
                    worst.append(t["max"])
        if worst:
            lines.append(f"* time to truth after a server restart or a leader kill, {label}: slowest daemon "
                         f"{fig(max(worst), 's')} against under 2 s: **{'met' if max(worst) < 2 else 'not met'}**;")
    lines[-1] = lines[-1].rstrip(";") + "."
    return lines + [""]


def truth_section(now: Run, roots: Run | None, one: dict[str, Any] | None) -> list[str]:
    """What the time to truth is made of, with this run's figures."""
    reconnect: list[float] = []
    after_kill: list[float] = []
    own: list[float] = []
    server_cpu: list[float] = []
    for run in (now, roots):
        for x in (run or {}).get("layouts", []):
            r = x["restart"].get("reconnect_after_ready_s") or {}
            reconnect += [r[k] for k in ("first", "last") if k in r]
            k = (x.get("leader_kill") or {}).get("reconnect_after_kill_s") or {}
            after_kill += [k[key] for key in ("first", "last") if key in k]
            for blip in (x["restart"], x.get("leader_kill") or {}):
                c = blip.get("reconnect_to_truth_s")
                if c:
                    own += [c["min"], c["max"]]
            if x["restart"].get("server_cpu_s") is not None:
                server_cpu.append(x["restart"]["server_cpu_s"])
    delay, cap = CONNECTION_RETRY["delay"], CONNECTION_RETRY["max_delay"]
    worst_wait = cap * (1 + KAZOO_JITTER)
    persistent = (one or {}).get("persistent") or {}
    k_blip = persistent.get("k_blip_files_right_after_reconnect_s")
    k_changes = persistent.get("k", 10)
    multi = ((persistent.get("k_blip") or {}).get("by_kind") or {}).get("multiRead")
    sweep = math.ceil(UPSTREAMS * INSTANCES / MULTI_READ_MAX)
    own_worst = max(own) if own else 0.0
    late = max(reconnect) if reconnect else 0.0
    outlier = (f" The last session came back {fig(late, 's')} after the server served again, later than the "
               "back-off allows (its cause is not established here); the bound below does not cover such a "
               "session." if late > worst_wait + 0.5 else "")
    lines = [
        "### What the time to truth is made of",
        "",
        f"* **The reconnect.** kazoo's back-off decides when each daemon tries again: {fig(delay)} s doubling to "
        f"{fig(cap)} s, each step scaled by 1 +- {KAZOO_JITTER} (`CONNECTION_RETRY` in "
        "`reloader/sources/zookeeper.py`; the Java client also waits up to 1 s). In this run the sessions came "
        f"back {_span(reconnect, 2, 's')} from the server serving again"
        + (f", and {_span(after_kill, 2, 's')} after the leader kill" if after_kill else "") + "." + outlier,
        "* **What the server named, then the sweep.** After a resumption whose zxid moved, the znodes whose "
        "list the server said moved are read and written first, in one round trip; then every child's version "
        f"is checked, {MULTI_READ_MAX:,} to a `multiRead` ({sweep} of them at {UPSTREAMS:,} x {INSTANCES}), "
        "for the data changes no persistent watch reports. A child created during the blip is in the file one "
        "round trip after the resumption; a data change made during it waits for the sweep."
        + (f" One daemon alone at {UPSTREAMS:,} x {INSTANCES} (`bench/blip.py`, {k_changes} changes "
           f"during the blip): every file right {fig(k_blip, 's')} after the reconnect, with {multi} `multiRead`."
           if k_blip is not None else ""),
        "* **The machine.** All the daemons, the ZooKeeper JVMs and the bench share 2 cores here, so every "
        f"sweep competes with every other: each daemon's own reconnect -> file took {_span(own, 2, 's')}, and "
        f"the server's CPU for the storm was {_span(server_cpu, 2, 's')}. On hosts of their own, each daemon "
        "pays its own reconnect, a round trip for what was named and its sweep.",
        "",
        f"**Extrapolation to a fleet on hosts of their own:** a daemon's reconnect comes at most {fig(worst_wait)} s "
        f"after the server serves again (the {fig(cap)} s cap with its jitter)"
        + (f", and its files are right {fig(k_blip, 's')} after that (one daemon alone, the blip with changes in "
           f"the table below, its sweep included): **under {fig(math.ceil((worst_wait + k_blip) * 10) / 10)} s**"
           if k_blip is not None else "")
        + f" for a server restart or a leader change, whatever the fleet's size; with every daemon on the same "
        f"2 cores as here, up to {fig(round(own_worst, 2))} s after the reconnect (**under "
        f"{fig(math.ceil((worst_wait + own_worst) * 10) / 10)} s**). Both hold as long as the server answers each "
        f"daemon's {sweep} `multiRead` within a few hundred milliseconds (see the server CPU per blip below).",
        "",
    ]
    return lines


def one_daemon_section(blip: Run | None) -> list[str]:
    size = ((blip or {}).get("sizes") or {}).get(str(UPSTREAMS)) or {}
    if not size:
        return []
    subjects = [("previous", f"before (`{(blip or {}).get('previous_rev', '?')}`)"),
                ("persistent", "`persistent` (what `auto` picks on 3.6+)"),
                ("shared-root", "`persistent` + `watch_roots`"), ("classic", "`classic`")]
    subjects = [(key, label) for key, label in subjects if key in size]

    def row(label: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(cell(size[key]) for key, _ in subjects) + " |"

    def kinds(counts: dict[str, Any]) -> str:
        most_first = sorted(counts.get("by_kind", {}).items(), key=lambda kv: -kv[1])
        by_kind = ", ".join(f"{n:,} `{kind}`" for kind, n in most_first)
        return f"**{counts['total']:,}** ({by_kind})" if by_kind else f"**{counts['total']:,}**"

    k = next(iter(size.values())).get("k", 10)
    return [
        f"## One daemon: watches and a blip (`bench/blip.py`, {UPSTREAMS:,} x {INSTANCES})",
        "",
        f"From `bench/results/blip.json`, daemon `{(blip or {}).get('daemon_revision', '?')}` (the subjects one "
        "after the other, "
        f"requests counted at a frame-aware proxy). The {k} changes of a blip are {k // 2} creations, served before "
        f"the sweep, and {k - k // 2} data changes, which wait for it.",
        "",
        "| one daemon | " + " | ".join(label for _, label in subjects) + " |",
        "|---|" + "---:|" * len(subjects),
        row("watched paths (`wchc`, the data table only)", lambda s: fig(s["watches"]["wchc_paths"])),
        row("`mntr` zk_watch_count", lambda s: fig(s["watches"]["mntr_watch_count"])),
        row("requests of the first read", lambda s: kinds(s["initial_requests"])),
        row("requests after a blip in which nothing changed", lambda s: kinds(s["quiet_blip"])),
        row(f"requests after a blip with {k} changes", lambda s: kinds(s["k_blip"])),
        row("... reconnect -> every changed file right",
            lambda s: fig(s.get("k_blip_files_right_after_reconnect_s"), "s")),
        row("requests per 1,000 changes (none during a blip)", lambda s: fig(s["requests_per_1000_changes"]["total"])),
        "",
        "A recursive watch is filed in both of ZooKeeper's tables (`mntr` counts it twice); `watch_roots` "
        "needs the upstream znodes to share a parent (see README \"Shared watches\" for what a root with "
        "unrelated churn under it costs).",
        "",
    ]


def extrapolation_section(now: Run, roots: Run | None, before: Run | None, blip: Run | None) -> list[str]:
    per_observer = HOSTS // OBSERVERS
    standalone = _layout(now, "standalone")
    daemons = standalone["daemons"]  # type: ignore[index]
    upstreams = standalone["upstreams"]  # type: ignore[index]
    pairs = daemons * upstreams
    size = ((blip or {}).get("sizes") or {}).get(str(UPSTREAMS)) or {}

    # Watches: exact counts per daemon and upstream (they do not depend on the instances).
    per_upstream = _watch_count(standalone) / pairs  # type: ignore[operator]
    wchs_per_upstream = standalone["steady"]["wchs"]["watches"] / pairs  # type: ignore[index]
    roots_x = _layout(roots, "standalone")
    roots_per_daemon = _watch_count(roots_x) / daemons if roots_x else None  # type: ignore[operator]
    before_x = _layout(before, "standalone")
    before_per_upstream = _watch_count(before_x) / pairs if before_x else None  # type: ignore[operator]

    def heap_bytes(run: Run | None) -> list[float]:
        found = []
        for server in ("standalone", "observer"):
            growth = _heap_growth(run, server)
            if growth is not None:
                found.append(growth * MB / pairs)
        return found

    now_bytes, roots_bytes = heap_bytes(now), heap_bytes(roots)
    before_bytes_per_watch = [g * MB / (before_per_upstream * pairs)
                              for g in (_heap_growth(before, s) for s in ("standalone", "observer"))
                              if g is not None and before_per_upstream]

    before_per_pair = [b * before_per_upstream for b in before_bytes_per_watch] if before_per_upstream else []

    def fleet_mb(per_pair: list[float], hosts: int) -> str:
        return _span([b * hosts * UPSTREAMS / MB for b in per_pair], 0, "MB")

    # Requests per blip.
    quiet = (size.get("persistent") or {}).get("quiet_blip", {}).get("total")
    old_blip = (size.get("previous") or {}).get("quiet_blip", {}).get("total")
    moved = [v for run in (now, roots) for x in (run or {}).get("layouts", [])
             for v in (_per_daemon_reads(x, "restart"), _per_daemon_reads(x, "leader_kill")) if v is not None]
    cpu_per_daemon = [x["restart"]["server_cpu_s"] / x["daemons"] for run in (now, roots)
                      for x in (run or {}).get("layouts", []) if x["restart"].get("server_cpu_s") is not None]
    old_cpu = [x["restart"]["server_cpu_s"] / x["daemons"] for x in (before or {}).get("layouts", [])
               if x["restart"].get("server_cpu_s") is not None]
    expired = UPSTREAMS + UPSTREAMS + math.ceil(UPSTREAMS * INSTANCES / MULTI_READ_MAX)
    per_change = (size.get("persistent") or {}).get("requests_per_1000_changes", {}).get("total")
    fanout = [x["fanout_all_daemons"] for run in (now, roots) for x in (run or {}).get("layouts", [])]

    def times(per_daemon: float | None, hosts: int) -> str:
        return "-" if per_daemon is None else fig(_rounded(per_daemon * hosts, 1))

    lines = [
        f"## Extrapolation to {HOSTS:,} hosts x {UPSTREAMS:,} upstreams x {INSTANCES}",
        "",
        f"\"Observers\" below means {OBSERVERS} observers of {per_observer} hosts each (the layout at the end); "
        "the voters then hold no daemon watches at all (the leader held "
        f"{fig(_watch_count(_layout(now, 'observer'), 'steady_leader'))} "
        "watches in the observer runs above).",
        "",
        f"**Watches.** {fig(per_upstream)} in `mntr` per daemon and upstream with a watch per znode "
        f"({fig(wchs_per_upstream)} recursive watch, filed in both the data and the children table): "
        f"{HOSTS:,} x {UPSTREAMS:,} x {fig(per_upstream)} = **{_rounded(HOSTS * UPSTREAMS * per_upstream, 1):,}** "
        f"in `mntr`, {fig(_rounded(HOSTS * UPSTREAMS * wchs_per_upstream, 1))} watches on {UPSTREAMS:,} paths "
        "(`wchs`); "
        f"**{_rounded(per_observer * UPSTREAMS * per_upstream, 1):,} per observer**."
        + (f" Before: {fig(before_per_upstream)} per daemon and upstream, "
           f"{_rounded(HOSTS * UPSTREAMS * before_per_upstream, 1):,}."
           if before_per_upstream else "")
        + (f" With `watch_roots` on the services' common parent: {fig(roots_per_daemon)} per daemon (the root's "
           "recursive watch counts 2, each znode's one-shot children watch 1), "
           f"**{_rounded(HOSTS * roots_per_daemon, 1):,}** in `mntr`, "
           f"**{_rounded(per_observer * roots_per_daemon, 1):,} "
           "per observer**." if roots_per_daemon else "")
        + f" Basis: the counts of the {daemons}-daemon run ({_watch_count(standalone):,}"
        + (f" and {_watch_count(roots_x):,}" if roots_x else "")
        + "), which are linear in daemons x upstreams and do not depend on the instances per upstream.",
        "",
        f"**Heap.** {_span(now_bytes, 0)} bytes per daemon and upstream with a watch per znode (the growth of the "
        f"{daemons}-daemon run, standalone and observer, over {pairs:,} daemon-upstreams; MB are jcmd's, 2^20 "
        f"bytes): **{fleet_mb(now_bytes, HOSTS)}** on a server every daemon talks to, "
        f"**{fleet_mb(now_bytes, per_observer)} "
        f"per observer**."
        + (f" With `watch_roots`: {_span(roots_bytes, 0)} bytes, **{fleet_mb(roots_bytes, HOSTS)}** on one server, "
           f"**{fleet_mb(roots_bytes, per_observer)} per observer**." if roots_bytes else "")
        + (f" Before: {_span(before_bytes_per_watch, 0)} bytes per watch, {fig(before_per_upstream)} watches per "
           f"daemon and upstream: {fleet_mb(before_per_pair, HOSTS)} on one server, "
           f"{fleet_mb(before_per_pair, per_observer)} per observer." if before_per_pair else "")
        + " On top of that, the tree itself and the JVM's own heap (the \"no daemon\" figure above). Basis: the "
        "heap in use after a full GC (`jcmd GC.run`, then `GC.heap_info`), before any daemon connected and with "
        "all of them synced; ZooKeeper's watch manager keeps maps linear in the watch count. A single reading "
        "moves by about 1 MB between runs, a large part of a growth of a few MB: take the figures as +-25 %.",
        "",
        f"**Sessions.** One per daemon and cluster: {HOSTS:,}, or {per_observer} per observer. Basis: `cons` showed "
        "exactly one connection per daemon. Session tracking is the voters' (an observer forwards its sessions' "
        f"creation and expiry to the leader); {HOSTS:,} sessions is far below what an ensemble holds.",
        "",
        "**Requests per blip** (a server restart, a leader change):",
        "",
        f"| | one server, {HOSTS:,} daemons | per observer ({per_observer} daemons) "
        "| before, one server / per observer |",
        "|---|---:|---:|---:|",
        f"| nothing written during the blip | **{times(quiet, HOSTS)}** | **{times(quiet, per_observer)}** | "
        f"{times(old_blip, HOSTS)} / {times(old_blip, per_observer)} |",
        f"| the zxid moved (the usual case in a fleet) | **{_span([_rounded(v * HOSTS, 1000) for v in moved])}** | "
        f"**{_span([_rounded(v * per_observer, 50) for v in moved])}** | "
        f"{times(old_blip, HOSTS)} / {times(old_blip, per_observer)} |",
        f"| ... children whose version is checked inside the `multiRead`s | {fig(HOSTS * UPSTREAMS * INSTANCES)} | "
        f"{fig(per_observer * UPSTREAMS * INSTANCES)} | - |",
        f"| ... server CPU | about {_span([v * HOSTS for v in cpu_per_daemon], 0, 's')} | "
        f"about {_span([v * per_observer for v in cpu_per_daemon], 1, 's')} | "
        f"about {_span([v * HOSTS for v in old_cpu], 0, 's')} / {_span([v * per_observer for v in old_cpu], 0, 's')} |",
        f"| an expired session (each daemon reads again) | {fig(expired * HOSTS)} | {fig(expired * per_observer)} | "
        f"{times(old_blip, HOSTS)} / {times(old_blip, per_observer)} |",
        "",
        f"Basis: nothing written: one SetWatches2 packet per daemon (`bench/blip.py`'s count, {quiet}). The zxid "
        f"moved: the reads per daemon of the fleet runs above, {_span(moved)}, times the daemons. Server CPU: "
        f"the restart storms above, {_span([v * 1000 for v in cpu_per_daemon], 0, 'ms')} per daemon, on a JVM "
        "that had just restarted, running C1 only with a 256 MB heap: an upper bound. An expired session: "
        f"a new session's `addWatch` and list per upstream, and one `multiRead` per {MULTI_READ_MAX:,} known "
        f"children ({UPSTREAMS:,} + {UPSTREAMS:,} + {math.ceil(UPSTREAMS * INSTANCES / MULTI_READ_MAX)} per daemon; "
        "`tests/test_zk_resume.py` counts them at a proxy). Before: every daemon read everything again, "
        f"{fig(old_blip)} reads (`bench/blip.py`), and the before runs' server CPU. Whether the zxid moves: any "
        "write to the cluster moves it, a session opening or closing included; in a fleet of "
        f"{HOSTS:,} daemons some session opens or closes during most blips, so plan for the sweep.",
        "",
        f"**Write fan-out.** A change to one instance fires one notification per daemon (its recursive watch on "
        f"the upstream), and a daemon reads back what the notification does not say: {fig(per_change)} requests "
        f"per 1,000 changes for one daemon (`bench/blip.py`: a `getData` per created child, an `exists` per batch "
        "of deletions). About "
        f"**{HOSTS:,} notifications and {fig(_rounded(HOSTS * (per_change or 0) / 1000, 1))} reads per change** "
        f"fleet-wide, **{per_observer} and {fig(_rounded(per_observer * (per_change or 0) / 1000, 1))} per "
        f"observer**; at a sustained 1,000 changes/s, {fig(per_observer * 1000)} notifications and "
        f"{fig(_rounded(per_observer * (per_change or 0), 1))} reads per second and observer. Measured fan-out of "
        f"one change to all {daemons} daemons' files: "
        f"{_span([f['median_ms'] for f in fanout], 0, 'ms')} median, {_span([f['max_ms'] for f in fanout], 0, 'ms')} "
        "max (all the daemons on 2 cores).",
        "",
    ]
    classic = size.get("classic") or {}
    if classic and before_bytes_per_watch:
        watches = classic["watches"]["mntr_watch_count"]
        lines += [
            "## `watch_mode: classic`",
            "",
            "`classic` keeps a data watch per instance and a children watch per upstream (re-registered after "
            f"a reconnect with SetWatches packets of at most 128 KB): {watches:,} watches per daemon, so "
            f"{fig(watches * HOSTS)} at {HOSTS:,} hosts, "
            f"{_span([b * watches * HOSTS / MB for b in before_bytes_per_watch], 0, 'MB')} of heap on one server and "
            f"{_span([b * watches * per_observer / MB for b in before_bytes_per_watch], 0, 'MB')} per observer (the "
            "before figure per watch above). In exchange a blip costs O(k) reads for k changes "
            f"({classic['quiet_blip']['total']} SetWatches packets per daemon, then only what moved: `bench/blip.py` "
            f"counted {classic['k_blip']['total']} requests for {classic.get('k', 10)} changes), never the sweep. "
            "A registry that changes constantly behind connections that blip often may prefer it; one that "
            "cares for server heap keeps `persistent`.",
            "",
        ]
    return lines


def render(quick: bool, tail: str) -> str | None:
    now, roots, before, blip = (load(name, quick) for name in ("fleet", "fleet-roots", "fleet-before", "blip"))
    if not now or not _layout(now, "standalone"):
        return None
    one = ((blip or {}).get("sizes") or {}).get(str(UPSTREAMS))
    lines = [
        "# Sizing ZooKeeper for a fleet of daemons",
        "",
        "<!-- Generated by bench/sizing.py from bench/results/*.json; run bench/run_all.sh to refresh. -->",
        "",
        "One daemon runs on every nginx host, and every daemon watches the same upstreams. This page works out "
        f"what {HOSTS:,} hosts x {UPSTREAMS:,} upstreams x {INSTANCES} instances costs ZooKeeper, with and without "
        "observers, from what `bench/fleet.py` measured with many daemons on one 2-core machine and what "
        "`bench/blip.py` counted for one daemon at a frame-aware proxy, both in one run of `bench/run_all.sh` "
        "(rendered in [benchmarks.md](benchmarks.md#fleet-many-daemons-on-one-zookeeper), whose section "
        "\"ZooKeeper's load\" puts every target beside before and the floor). Every extrapolation states its "
        "basis; `bench/sizing.py` redoes the arithmetic from the results whenever they change.",
        "",
        "The daemon measured has its default `watch_mode: auto`, which picks `persistent` on ZooKeeper 3.6+ "
        "(the server here is Debian's 3.8): one recursive persistent watch per upstream znode, kept by the "
        "server across a reconnect and re-registered in one SetWatches2 packet. *Before* is the daemon before "
        "watch re-registration, which set a data watch per instance and a children watch per upstream and read "
        "everything again after every reconnect; `watch_mode: classic` is near the end.",
        "",
    ]
    lines += measured_section(now, roots, before)
    lines += targets_lines(now, roots, before)
    lines += truth_section(now, roots, one)
    lines += one_daemon_section(blip)
    lines += extrapolation_section(now, roots, before, blip)
    lines += [KEEP_MARKER, ""]
    if tail:
        lines += [tail, ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="size from the --quick results")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"default: {DOC.relative_to(ROOT)} (bench/results/sizing-quick.md with --quick)")
    args = parser.parse_args()
    output = args.output or (ROOT / "bench" / "results" / "sizing-quick.md" if args.quick else DOC)
    page = render(args.quick, kept_tail(output, KEEP_MARKER))
    if page is None:
        print("no fleet results in bench/results/; run bench/fleet.py first", file=sys.stderr)
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
