#!/usr/bin/env bash
# Run every benchmark, then regenerate docs/benchmarks.md from bench/results/*.json.
#   bench/run_all.sh           full runs (about 5 minutes on 2 cores)
#   bench/run_all.sh --quick   smaller runs (under 30 s each); the page goes to
#                              bench/results/benchmarks-quick.md, docs/ is left alone
# Run them one after another on an otherwise idle machine: they share the cores
# with ZooKeeper and the daemon, and contention shows up in the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
QUICK=()
if [ "${1:-}" = "--quick" ]; then QUICK=(--quick); fi
for bench in latency scale heal; do
    echo "=== bench/$bench.py ${QUICK[*]:-}"
    start=$(date +%s)
    "$PY" "bench/$bench.py" "${QUICK[@]}"
    echo "=== bench/$bench.py took $(( $(date +%s) - start )) s"
done
if [ ${#QUICK[@]} -gt 0 ]; then
    "$PY" bench/report.py --quick --output bench/results/benchmarks-quick.md
else
    "$PY" bench/report.py
fi
