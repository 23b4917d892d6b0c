#!/usr/bin/env bash
# Install everything the tests need (root installs ZooKeeper, nginx and Java
# with apt-get) and run the whole suite against real servers.
# Extra arguments go to pytest, e.g. ./run_tests.sh -k dyups -x
set -euo pipefail
cd "$(dirname "$0")"
./install_venv.sh --dev --services
exec .venv/bin/python -m pytest "$@"
