#!/usr/bin/env python
"""The price of slow start and the panic threshold in the Lua balancer, side by side in one run.

One front nginx (2 workers) with two Lua-mode upstreams over the same four
backends (a separate nginx answering ``return 200``): ``plain`` (no traffic
options) and ``traffic`` (``slow_start`` with one server ramping for the
whole run, so the weights are recomputed as they would be during a ramp,
and ``panic_threshold`` 50 % with ``max_fails=1``). Load comes from ``wrk``
(Debian package ``wrk``) on 127.0.0.1; the targets alternate round by round
and the median of the per-round throughput ratios is reported.

Writes ``bench/results/lua-traffic.json`` (``lua-traffic-quick.json`` with
``--quick``) and its section of ``docs/benchmarks.md`` (between its own
markers, after the hand-written-sections marker that bench/report.py keeps).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests

from bench.lua_balancer import PROXY, measured, start_backends, wrk
from reloader.localenv.luanginx import LuaNginx, lua_missing
from reloader.localenv.nginx import LocalNginx, server_block
from reloader.localenv.ports import free_port
from reloader.model import Server, Upstream
from reloader.outputs.lua import upstream_document
from reloader.render import render_file_lua
from reloader.traffic import SlowStart

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
KEEP_MARKER = "<!-- Hand-written sections below: bench/report.py keeps everything after this line. -->"
BEGIN = "<!-- lua-traffic: begin (written by bench/lua_traffic.py) -->"
END = "<!-- lua-traffic: end -->"
TARGET_COST_PCT = 5


def run(quick: bool) -> dict[str, Any]:
    missing = lua_missing()
    if missing:
        raise SystemExit(missing)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed; install it with: apt-get install -y wrk")
    seconds, rounds = (2.0, 2) if quick else (3.0, 8)
    connections, threads = 32, 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-lua-traffic-"))
    started: list[LocalNginx] = []
    try:
        backend_ports = [free_port() for _ in range(4)]
        started.append(start_backends(workdir, backend_ports))
        health = (("max_fails", "1"), ("fail_timeout", "10s"))
        servers = tuple(Server("127.0.0.1", port, params=health) for port in backend_ports)
        plain = Upstream("plain", servers, ("keepalive 32",))
        # The last server ramps for the whole run (an hour's window, added now).
        traffic = Upstream(
            "traffic", servers, ("keepalive 32",),
            slow_start=SlowStart(window=3600, min_weight=0.1, aggression=1.0), panic_threshold=0.5,
            added=((servers[-1].endpoint, round(time.time(), 3)),),
        )
        files = workdir / "upstreams"
        files.mkdir()
        for upstream in (plain, traffic):
            (files / f"{upstream.name}.upstream").write_text(render_file_lua(upstream))
        front = LuaNginx(free_port(), files, workdir=workdir / "front")
        ports = {"plain": free_port(), "traffic": free_port()}
        front.write_config("access_log off;\n" + "".join(
            server_block(port, PROXY.format(target=name)) for name, port in ports.items()))
        front.start()
        started.append(front)
        for upstream in (plain, traffic):
            answer = requests.post(f"{front.api_url}/upstream/{upstream.name}", json=upstream_document(upstream),
                                   timeout=5, headers={"X-Reloader-Token": front.token()})
            answer.raise_for_status()
        for port in ports.values():
            wrk(f"http://127.0.0.1:{port}/", 1, connections, threads)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        for _ in range(rounds):
            for name, port in ports.items():
                samples[name].append(measured(front, f"http://127.0.0.1:{port}/", seconds, connections, threads))
    finally:
        for nginx in reversed(started):
            nginx.close()
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {
        name: {
            "median_rps": statistics.median(s["rps"] for s in runs),
            "median_p99_ms": statistics.median(s["p99_ms"] for s in runs),
            "non_2xx": sum(int(s["non_2xx"]) for s in runs),
            "median_cpu_us_per_request": statistics.median(s["cpu_us_per_request"] for s in runs),
            "runs": runs,
        }
        for name, runs in samples.items()
    }
    ratios = [t["rps"] / p["rps"] for t, p in zip(samples["traffic"], samples["plain"])]
    ratio = statistics.median(ratios)
    return {
        "benchmark": "lua_traffic",
        "quick": quick,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "wrk": {"threads": threads, "connections": connections, "seconds": seconds, "rounds": rounds},
        "targets": summary,
        "traffic_to_plain_rps": ratio,
        "round_ratios": ratios,
        "cpu_per_request_ratio": summary["traffic"]["median_cpu_us_per_request"]
        / summary["plain"]["median_cpu_us_per_request"],
        "cost_pct": (1 - ratio) * 100,
        "target_cost_pct": TARGET_COST_PCT,
    }


def section(result: dict[str, Any]) -> str:
    rows = [
        f"| {name} | {v['median_rps']:,.0f} | {v['median_p99_ms']:.2f} | {v['median_cpu_us_per_request']:.1f} "
        f"| {v['non_2xx']} |"
        for name, v in result["targets"].items()
    ]
    quick = " *(quick run)*" if result["quick"] else ""
    w = result["wrk"]
    return "\n".join([
        BEGIN,
        "",
        f"## Slow start and panic threshold in the Lua balancer{quick}",
        "",
        (
            f"`bench/lua_traffic.py`, {result['generated']}: one front nginx with 2 workers, four backends "
            f"(a separate nginx answering `return 200`), upstream keepalive 32; `plain` has no traffic "
            f"options, `traffic` has `slow_start` with one server ramping throughout and `panic_threshold` "
            f"50 % (`max_fails=1`). `wrk -t{w['threads']} -c{w['connections']}`, {w['rounds']} alternating "
            f"rounds of {w['seconds']:g} s per target, medians shown; {result['cpus']} CPUs shared by "
            f"everything; load average at start {result['load_at_start'][0]:.2f}."
        ),
        "",
        "| target | requests/s | p99 ms | front nginx CPU µs/request | non-2xx |",
        "|---|---|---|---|---|",
        *rows,
        "",
        (
            f"With both options on, the balancer serves **{result['traffic_to_plain_rps'] * 100:.1f} %** of the "
            f"plain upstream's throughput (median of the per-round ratios, from {min(result['round_ratios']):.2f} "
            f"to {max(result['round_ratios']):.2f}): a cost of {result['cost_pct']:.1f} % (target: under "
            f"{result['target_cost_pct']} %); front CPU per request {result['cpu_per_request_ratio']:.2f} times "
            "the plain one. While a server ramps, its weight is recomputed at most every 50 ms per worker; the "
            "panic count runs only within fail_timeout of a failure, so a healthy upstream pays one comparison."
        ),
        "",
        END,
    ])


def write_doc(result: dict[str, Any]) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    block = section(result)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        if KEEP_MARKER not in text:
            text = text.rstrip("\n") + "\n\n" + KEEP_MARKER + "\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s instead of 8 of 3 s")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    result = run(args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("lua-traffic-quick.json" if args.quick else "lua-traffic.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_doc:
        write_doc(result)
    for name, v in result["targets"].items():
        print(f"{name:8s} {v['median_rps']:10,.0f} req/s  p99 {v['median_p99_ms']:.2f} ms  "
              f"{v['median_cpu_us_per_request']:.1f} CPU us/req  non-2xx {v['non_2xx']}")
    print(f"traffic/plain throughput: {result['traffic_to_plain_rps']:.3f} (cost {result['cost_pct']:.1f} %); "
          f"CPU per request {result['cpu_per_request_ratio']:.3f}x; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
