#!/usr/bin/env bash
# Run nginx-upstream-reloader from this folder.
#
#   ./start.sh                  run with ./upstream_zk_nodes.conf (extra flags are passed on)
#   ./start.sh --demo [--nginx PATH]
#                               a self-contained local demo: ZooKeeper, nginx,
#                               three backends, traffic moving; Ctrl-C stops it all
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/nginx-upstream-reloader ]; then
    ./install_venv.sh
fi

if [ "${1:-}" = "--demo" ]; then
    shift
    exec .venv/bin/nginx-upstream-reloader demo "$@"
fi
exec .venv/bin/nginx-upstream-reloader run --config upstream_zk_nodes.conf "$@"
