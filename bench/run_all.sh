#!/usr/bin/env bash
# Run every benchmark, then regenerate docs/benchmarks.md and docs/sizing.md from bench/results/*.json.
#   bench/run_all.sh           full runs (25-35 minutes on 2 cores)
#   bench/run_all.sh --quick   smaller runs (about 10 minutes in all); the pages go to
#                              bench/results/{benchmarks,sizing}-quick.md, docs/ is left alone
# Extra arguments after --quick (or alone) go to targets.py and fleet.py, for example
# --daemon-rev REV to bench a committed revision instead of the working tree.
# Run them one after another on an otherwise idle machine: they share the cores
# with ZooKeeper and the daemon, and contention shows up in the figures (each
# targets/fleet block records the load average it started under).
set -euo pipefail
cd "$(dirname "$0")/.."
# ZooKeeper, nginx, wrk, jcmd and the venv (root installs what is missing with apt-get).
./install_venv.sh --dev --services --bench
PY=.venv/bin/python
QUICK=()
if [ "${1:-}" = "--quick" ]; then QUICK=(--quick); shift; fi
run() {
    echo "=== bench/$1.py ${QUICK[*]:-} ${*:2}"
    local start
    start=$(date +%s)
    "$PY" "bench/$1.py" "${QUICK[@]}" "${@:2}"
    echo "=== bench/$1.py took $(( $(date +%s) - start )) s"
}
for bench in latency scale heal lua_balancer lua_traffic; do
    run "$bench"
done
run blip
run idle_dyups
run idle_dyups --settings files --name idle-files
run targets "$@"
run fleet "$@"
run fleet --watch-roots --name fleet-roots "$@"
if [ ${#QUICK[@]} -gt 0 ]; then
    "$PY" bench/report.py --quick --output bench/results/benchmarks-quick.md
    "$PY" bench/sizing.py --quick
else
    "$PY" bench/report.py
    "$PY" bench/sizing.py
fi
