#!/usr/bin/env bash
# Create .venv in the project folder and install nginx-upstream-reloader into it.
#
#   ./install_venv.sh              the daemon and its dependencies
#   ./install_venv.sh --dev        plus the test dependencies
#   ./install_venv.sh --services   also install ZooKeeper, nginx with its Lua
#                                  and stream modules, Java, Prometheus (promtool) and
#                                  systemd-analyze with apt-get when missing
#                                  (root only; otherwise prints the command)
#   ./install_venv.sh --bench      also what bench/ needs: wrk (the Lua benches'
#                                  load) and the JDK's jcmd (ZooKeeper's heap)
#
# Safe to run again: an existing .venv is reused and brought up to date.
set -euo pipefail
cd "$(dirname "$0")"

dev=0
services=0
bench=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        --services) services=1 ;;
        --bench) bench=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "install_venv.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        echo "install_venv.sh: this needs root; run:  sudo $*" >&2
        return 1
    fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    apt_install python3 python3-venv
fi
if [ ! -x .venv/bin/python ]; then
    # Debian's python3 ships venv without ensurepip; python3-venv adds it.
    if ! "$python" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$python" -m venv .venv
    fi
fi

if [ "$dev" -eq 1 ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
else
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
fi

if [ "$services" -eq 1 ]; then
    missing=()
    [ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
    command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    # The TLS tests make their certificates with openssl at run time.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # Lua mode on stock nginx: the Lua module, lua-resty-core and lua-cjson
    # (the JSON library the project's Lua module uses), detected by their files.
    [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || missing+=(libnginx-mod-http-lua)
    [ -f /usr/share/lua/5.1/resty/core.lua ] || missing+=(lua-resty-core)
    compgen -G '/usr/lib/*/lua/5.1/cjson.so' >/dev/null || missing+=(lua-cjson)
    # TCP upstreams (stream: true): Debian builds nginx's stream module as a module of its own.
    if ! nginx -V 2>&1 | grep -qE -- '--with-stream( |$)' && [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
        missing+=(libnginx-mod-stream)
    fi
    # The rule tests run promtool and a real Prometheus (Debian's prometheus
    # ships both); the unit file tests run systemd-analyze verify.
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
fi
if [ "$bench" -eq 1 ]; then
    missing=()
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v jcmd >/dev/null 2>&1 || missing+=(default-jdk-headless)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
fi
echo "install_venv.sh: ready in $(pwd)/.venv"
