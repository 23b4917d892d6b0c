"""The files under deploy/ stay valid: they parse, name real paths, and run commands this CLI accepts.

``systemd-analyze verify`` runs on the unit file (skipped where it is
missing, a failure in CI); docker images are never built here.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from reloader.cli import _build_parser
from reloader.config import load_config
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "nginx-upstream-reloader.service"
INSTALLED_BINARY = "/opt/nginx-upstream-reloader/.venv/bin/nginx-upstream-reloader"
FILES_DIR = "/etc/nginx/upstreams"
CONFIG = "/etc/nginx-upstream-reloader/upstream_zk_nodes.conf"


def _unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value, in order (a unit may repeat a key, unlike an ini file)."""
    settings: dict[tuple[str, str], list[str]] = defaultdict(list)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings[(section, key.strip())].append(value.strip())
    return settings


def _assert_run_command(argv: list[str]) -> None:
    """``argv`` (after the program) is a ``run`` this CLI accepts, in the foreground, with the config."""
    args = _build_parser().parse_args(argv)
    assert args.command == "run" and args.config == CONFIG, argv
    assert not args.daemon, "service managers track the process themselves: no --daemon"


# ---------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------


def test_systemd_unit_has_the_service_settings() -> None:
    unit = _unit_settings(UNIT.read_text())

    def one(section: str, key: str) -> str:
        values = unit[(section, key)]
        assert len(values) == 1, f"[{section}] {key}: {values}"
        return values[0]

    assert unit[("Unit", "Description")] and unit[("Unit", "Documentation")]
    assert "network-online.target" in one("Unit", "After").split()
    assert one("Unit", "Wants") == "network-online.target"
    assert one("Service", "Type") == "notify" and one("Service", "NotifyAccess") == "main"
    command = shlex.split(one("Service", "ExecStart"))
    assert command[0] == INSTALLED_BINARY
    _assert_run_command(command[1:])
    assert one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Service", "Restart") == "always"
    assert re.fullmatch(r"\d+s?", one("Service", "WatchdogSec"))
    user = one("Service", "User")
    assert user and user != "root" and one("Service", "Group")
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ReadWritePaths": FILES_DIR, "ProtectHome": "yes",
        "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert one("Service", key) == value, key
    assert one("Install", "WantedBy") == "multi-user.target"

    # The user and the writable directory come from the sysusers and tmpfiles files beside it.
    sysusers = [line.split() for line in (DEPLOY / "systemd" / "nginx-upstream-reloader.sysusers").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    assert sysusers[0][:2] == ["u", user]
    tmpfiles = [line.split() for line in (DEPLOY / "systemd" / "nginx-upstream-reloader.tmpfiles").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    assert tmpfiles[0][:5] == ["d", FILES_DIR, "0755", user, one("Service", "Group")]


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(None if analyze else "systemd-analyze is not installed (Debian's systemd; ./install_venv.sh --services)")
    assert analyze is not None
    # verify insists that ExecStart= is executable: point it at this checkout.
    text = UNIT.read_text().replace(INSTALLED_BINARY, f"{sys.executable} -m reloader")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify only warns about unknown keys or bad values: any line about our unit is a failure.
    ours = [line for line in output.splitlines() if UNIT.name in line]
    assert not ours, "\n".join(ours)


# ---------------------------------------------------------------------------
# supervisord
# ---------------------------------------------------------------------------


def test_supervisord_program_section() -> None:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string((DEPLOY / "supervisord.conf").read_text())
    program = parser["program:nginx-upstream-reloader"]
    command = shlex.split(program["command"])
    assert command[0] == INSTALLED_BINARY
    _assert_run_command(command[1:])
    assert program["stopsignal"] == "TERM"
    assert int(program["stopwaitsecs"]) >= 5  # the daemon promises a stop within 5 s
    assert program["autorestart"] == "true" and program["autostart"] == "true"
    assert program.get("user") not in (None, "root")
    assert program["stdout_logfile"].startswith("/var/log/")
    assert program["redirect_stderr"] == "true"  # the log lines are on stderr


# ---------------------------------------------------------------------------
# Docker
# ---------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def test_dockerfile_copies_real_paths_and_runs_as_a_user() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    destinations: list[str] = []
    for word, rest in instructions:
        if word != "COPY":
            continue
        *sources, destination = shlex.split(rest)
        destinations.append(destination)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the build context (the repo root)"
            # Re-included by the dockerignore, which excludes everything else.
            assert any(line.strip() in (f"!{source}", f"!{source}/") or
                       (line.startswith("!") and source.startswith(line[1:].rstrip("/") + "/"))
                       for line in ignore), f"{source} is excluded by Dockerfile.dockerignore"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install /tmp/src" in runs and any(d.startswith("/tmp/src") for d in destinations)
    # setup.py reads README.md and finds the package: both must be copied next to it.
    assert "/tmp/src/" in destinations and "/tmp/src/reloader" in destinations
    assert "useradd" in runs and FILES_DIR in runs

    user = [rest for word, rest in instructions if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    volumes = [rest for word, rest in instructions if word == "VOLUME"]
    assert volumes and FILES_DIR in " ".join(volumes)
    entrypoint = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    cmd = [rest for word, rest in instructions if word == "CMD"]
    argv = yaml.safe_load(entrypoint[-1]) + yaml.safe_load(cmd[-1])  # exec form is a JSON list
    assert argv[0] == "nginx-upstream-reloader"
    _assert_run_command(argv[1:])
    assert CONFIG in destinations


def test_compose_shares_the_files_volume_between_nginx_and_the_sidecar() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"nginx", "reloader"}
    assert "upstreams" in compose["volumes"]

    def mounts(service: str) -> dict[str, str]:
        found = {}
        for volume in services[service]["volumes"]:
            source, target, *_mode = volume.split(":")
            found[source] = target
        return found

    nginx, reloader = mounts("nginx"), mounts("reloader")
    assert nginx["upstreams"] == FILES_DIR and reloader["upstreams"] == FILES_DIR
    assert services["nginx"]["volumes"][0].endswith(":ro"), "nginx only reads the files"
    for source in [*nginx, *reloader]:
        if source.startswith("."):
            assert (DEPLOY / source).is_file(), f"{source}: no such file beside docker-compose.yml"
    build = services["reloader"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    assert services["reloader"]["stop_signal"] == "SIGTERM"

    # The sidecar's config writes where the volume is, and POSTs to nginx over the shared namespace.
    config = yaml.safe_load((DEPLOY / "docker" / "upstream_zk_nodes.conf").read_text())
    assert load_config(DEPLOY / "docker" / "upstream_zk_nodes.conf").files_output_path == Path(FILES_DIR)
    assert config["files_output_path"] == FILES_DIR
    assert services["reloader"]["network_mode"] == "service:nginx"
    port = config["dyups_url"].rsplit(":", 1)[1]
    assert f"listen 127.0.0.1:{port};" in (DEPLOY / "docker" / "nginx-upstreams.conf").read_text()
    assert f"include {FILES_DIR}/*.upstream;" in (DEPLOY / "docker" / "nginx-upstreams.conf").read_text()


def test_logrotate_signals_only_the_service_users_processes(tmp_path: Path) -> None:
    """postrotate runs as root: a pid file the service user can write must not choose whom root signals."""
    text = (DEPLOY / "logrotate" / "nginx-upstream-reloader").read_text()
    script = text.split("\n    postrotate\n", 1)[1].split("endscript", 1)[0].strip()
    assert ".pid" not in script and "kill " not in script.replace("pkill ", ""), script
    user = (DEPLOY / "systemd" / "nginx-upstream-reloader.sysusers").read_text().split("\nu ", 1)[1].split()[0]
    assert f"-u {user}" in script, script
    # It is valid shell (not run: pkill -f would match the shell that carries the pattern).
    done = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
