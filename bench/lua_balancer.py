#!/usr/bin/env python
"""Throughput and p99 latency through nginx: the Lua balancer against a static upstream.

One run, side by side, on one front nginx (2 workers) with upstreams of the
same three backends: ``static`` (a plain ``upstream`` file), ``lua`` (the
Lua-mode file, its servers POSTed to the Lua interface) and ``lua_empty`` (an
empty ``balancer_by_lua_block``: the fixed price of entering Lua). With
``RELOADER_TEST_DYUPS_NGINX`` naming a dyups-enabled nginx, a third target
goes through dyups. The backends are a separate nginx answering ``return
200`` on three ports, so the proxy path, not the backends, is what is
measured. Load comes from ``wrk`` (Debian package ``wrk``), aimed only at
127.0.0.1, for a bounded time; the targets alternate round by round so that
drift in the machine's load hits all of them alike.

Writes ``bench/results/lua.json`` (``lua-quick.json`` with ``--quick``) and
its section of ``docs/benchmarks.md`` (between its own markers, after the
hand-written-sections marker that bench/report.py keeps).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests

from bench._common import cpu_seconds
from reloader.localenv.luanginx import LuaNginx, lua_missing
from reloader.localenv.nginx import LocalNginx, server_block
from reloader.localenv.ports import free_port
from reloader.model import Server, Upstream
from reloader.outputs.lua import upstream_document
from reloader.render import render_file, render_file_lua

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
KEEP_MARKER = "<!-- Hand-written sections below: bench/report.py keeps everything after this line. -->"
BEGIN = "<!-- lua-balancer: begin (written by bench/lua_balancer.py) -->"
END = "<!-- lua-balancer: end -->"

# Both proxied upstreams keep connections to the backends, so the balancer is a
# visible share of each request's cost.
PROXY = """location / {{
    proxy_pass http://{target};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
}}
"""


def wrk(url: str, seconds: float, connections: int, threads: int) -> dict[str, float]:
    """One wrk run: requests/s and p99 latency in ms."""
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert total is not None, out
    return {
        "rps": rps,
        "p99_ms": float(p99.group(1)) * scale,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "requests": int(total.group(1)),
    }


def measured(nginx: LocalNginx, url: str, seconds: float, connections: int, threads: int) -> dict[str, float]:
    """A wrk run plus the front nginx workers' CPU time per request (robust to other load)."""
    workers = sorted(nginx.worker_pids())
    before = sum(cpu_seconds(pid) for pid in workers)
    run = wrk(url, seconds, connections, threads)
    spent = sum(cpu_seconds(pid) for pid in workers) - before
    run["cpu_us_per_request"] = spent / max(run["requests"], 1) * 1e6
    return run


def start_backends(workdir: Path, ports: list[int]) -> LocalNginx:
    backends = LocalNginx(workdir=workdir / "backends")
    backends.worker_processes = 1
    body = "access_log off;\n" + "".join(
        server_block(port, f'access_log off;\nlocation / {{ return 200 "b{i}\\n"; }}\n')
        for i, port in enumerate(ports, 1)
    )
    backends.write_config(body)
    backends.start()
    return backends


def start_dyups(binary: str, workdir: Path, servers: tuple[Server, ...]) -> tuple[LocalNginx, int]:
    """A dyups nginx proxying ``dy`` (POSTed) on a port of its own; returns (nginx, port)."""
    front, api = free_port(), free_port()
    nginx = LocalNginx(binary, workdir=workdir / "dyups")
    nginx.write_config(
        "access_log off;\n"
        + server_block(api, "location / { dyups_interface; }\n")
        + server_block(front, "location / {\n    set $ups dy;\n    proxy_pass http://$ups;\n"
                       "    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n}\n")
    )
    nginx.start()
    body = "".join(f"server {s.address};" for s in servers)
    answer = requests.post(f"http://127.0.0.1:{api}/upstream/dy", data=body.encode(), timeout=5)
    answer.raise_for_status()
    return nginx, front


def run(quick: bool) -> dict[str, Any]:
    missing = lua_missing()
    if missing:
        raise SystemExit(missing)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed; install it with: apt-get install -y wrk")
    seconds, rounds = (2.0, 2) if quick else (3.0, 8)
    connections, threads = 32, 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-lua-"))
    started: list[LocalNginx] = []
    try:
        backend_ports = [free_port() for _ in range(3)]
        started.append(start_backends(workdir, backend_ports))
        servers = tuple(Server("127.0.0.1", port) for port in backend_ports)
        files = workdir / "upstreams"
        files.mkdir()
        (files / "static.upstream").write_text(render_file(Upstream("static", servers, ("keepalive 32",))))
        lua_upstream = Upstream("lua", servers, ("keepalive 32",))
        (files / "lua.upstream").write_text(render_file_lua(lua_upstream))
        # The fixed price of entering Lua at all: a handler that sets no peer
        # (nginx's round robin then picks), to tell it apart from the module's work.
        (files / "lua_empty.upstream").write_text(
            render_file(Upstream("lua_empty", servers)).replace("}\n", "    balancer_by_lua_block { }\n    keepalive 32;\n}\n")
        )
        front = LuaNginx(free_port(), files, workdir=workdir / "front")
        ports = {"static": free_port(), "lua_empty": free_port(), "lua": free_port()}
        front.write_config("access_log off;\n" + "".join(
            server_block(port, PROXY.format(target=name)) for name, port in ports.items()))
        front.start()
        started.append(front)
        answer = requests.post(f"{front.api_url}/upstream/lua", json=upstream_document(lua_upstream), timeout=5,
                               headers={"X-Reloader-Token": front.token()})
        answer.raise_for_status()

        dyups_binary = os.environ.get("RELOADER_TEST_DYUPS_NGINX")
        if dyups_binary:
            dyups, ports["dyups"] = start_dyups(dyups_binary, workdir, servers)
            started.append(dyups)

        # Warm every target (worker caches, keepalive pools) before measuring.
        for port in ports.values():
            wrk(f"http://127.0.0.1:{port}/", 1, connections, threads)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        for _ in range(rounds):
            for name, port in ports.items():
                # The dyups target runs in its own nginx.
                owner = started[-1] if name == "dyups" else front
                samples[name].append(measured(owner, f"http://127.0.0.1:{port}/", seconds, connections, threads))
    finally:
        for nginx in reversed(started):
            nginx.close()
        shutil.rmtree(workdir, ignore_errors=True)

    summary: dict[str, dict[str, Any]] = {
        name: {
            "median_rps": statistics.median(s["rps"] for s in runs),
            "median_p99_ms": statistics.median(s["p99_ms"] for s in runs),
            "non_2xx": sum(int(s["non_2xx"]) for s in runs),
            "median_cpu_us_per_request": statistics.median(s["cpu_us_per_request"] for s in runs),
            "runs": runs,
        }
        for name, runs in samples.items()
    }
    # Each round's lua run follows its static run within seconds, so the
    # median of the per-round ratios is robust to load that drifts over the run.
    ratio = statistics.median(
        lua["rps"] / static["rps"] for lua, static in zip(samples["lua"], samples["static"])
    )
    return {
        "benchmark": "lua_balancer",
        "quick": quick,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "front_workers": 2,
        "wrk": {"threads": threads, "connections": connections, "seconds": seconds, "rounds": rounds},
        "targets": summary,
        "lua_to_static_rps": ratio,
        "ratio_of_medians": summary["lua"]["median_rps"] / summary["static"]["median_rps"],
        "lua_cpu_per_request_ratio": summary["lua"]["median_cpu_us_per_request"]
        / summary["static"]["median_cpu_us_per_request"],
        "round_ratios": [lua["rps"] / static["rps"] for lua, static in zip(samples["lua"], samples["static"])],
        "lua_cost_pct": (1 - ratio) * 100,
        "target_cost_pct": 10,
    }


def section(result: dict[str, Any]) -> str:
    t = result["targets"]
    rows = [
        f"| {name} | {v['median_rps']:,.0f} | {v['median_p99_ms']:.2f} | {v['median_cpu_us_per_request']:.1f} "
        f"| {v['non_2xx']} |"
        for name, v in t.items()
    ]
    quick = " *(quick run)*" if result["quick"] else ""
    w = result["wrk"]
    return "\n".join([
        BEGIN,
        "",
        f"## Lua balancer against a static upstream{quick}",
        "",
        (
            f"`bench/lua_balancer.py`, {result['generated']}: one front nginx with {result['front_workers']} "
            f"workers, three backends (a separate nginx answering `return 200`), upstream keepalive 32; "
            f"`wrk -t{w['threads']} -c{w['connections']}`, {w['rounds']} alternating rounds of {w['seconds']:g} s "
            f"per target, medians shown. {result['cpus']} CPUs shared by wrk, both nginx and everything "
            f"else; load average at start {result['load_at_start'][0]:.2f}."
        ),
        "",
        "| target | requests/s | p99 ms | front nginx CPU µs/request | non-2xx |",
        "|---|---|---|---|---|",
        *rows,
        "",
        (
            f"The Lua balancer serves **{result['lua_to_static_rps'] * 100:.1f} %** of the static upstream's "
            f"throughput (median of the per-round ratios): a cost of {result['lua_cost_pct']:.1f} % "
            f"(target: under {result['target_cost_pct']} %); the rounds' ratios ran from "
            f"{min(result['round_ratios']):.2f} to {max(result['round_ratios']):.2f}. "
            f"Measured as the front workers' CPU time per request (median over the rounds; less "
            f"sensitive to other load than throughput), a Lua-balanced request costs "
            f"{result['lua_cpu_per_request_ratio']:.2f} times a static one. "
            "Per request it reads one revision number from the shared dict and runs the weighted round "
            "robin over the worker's own copy of the servers. The p99 column swings with whatever else "
            "the two CPUs run at the time (both targets' rounds alternate, so each sees the same mix); "
            "the throughput ratio and the CPU per request are the figures to compare. `lua_empty` is an upstream whose "
            "`balancer_by_lua_block` is empty (nginx's round robin picks): the price of entering Lua "
            "at all, apart from the module's own work."
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
    out = RESULTS / ("lua-quick.json" if args.quick else "lua.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_doc:
        write_doc(result)
    for name, v in result["targets"].items():
        print(f"{name:9s} {v['median_rps']:10,.0f} req/s  p99 {v['median_p99_ms']:.2f} ms  "
              f"{v['median_cpu_us_per_request']:.1f} CPU us/req  non-2xx {v['non_2xx']}")
    print(f"lua/static throughput: {result['lua_to_static_rps']:.3f} (cost {result['lua_cost_pct']:.1f} %); "
          f"CPU per request {result['lua_cpu_per_request_ratio']:.3f}x; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
