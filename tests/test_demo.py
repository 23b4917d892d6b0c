"""The demo, run as a user would: traffic moves; Ctrl-C or SIGTERM leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live descendant of ``root``: pid -> (start time, command line)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info is not None:
                parents[int(entry.name)] = info[0]
    found: dict[int, tuple[int, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                info = _stat(pid)
                if info is None:
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    cmdline = ""
                found[pid] = (info[2], cmdline)
                frontier.append(pid)
    return found


def _alive(pid: int, start_time: int) -> bool:
    """True while that very process (not a reuse of its pid) exists and is not a zombie."""
    info = _stat(pid)
    return info is not None and info[2] == start_time and info[1] != "Z"


@pytest.mark.usefixtures("zookeeper_installed", "nginx_bin")
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_moves_traffic_and_a_signal_leaves_nothing_behind(tmp_path: Path, stop_signal: signal.Signals) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reloader", "demo", "--interval", "1"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    children: dict[int, tuple[int, str]] = {}
    try:
        def reached_sets() -> list[str]:
            return re.findall(r"nginx reaches (.+?)(?:\s{2}\(|$)", "".join(lines), re.MULTILINE)

        deadline = time.monotonic() + 60
        while len(set(reached_sets())) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the demo never showed traffic moving:\n" + "".join(lines))
            time.sleep(0.1)
        sets = reached_sets()
        assert all("error" not in s and "HTTP" not in s for s in sets), sets
        # Every step reports the set it expected (no "(not there yet)").
        assert "not there yet" not in "".join(lines)

        children = _descendants(proc.pid)
        commands = " | ".join(cmd for _, cmd in children.values())
        assert "java" in commands and "nginx" in commands, commands
        assert any(entry.name.startswith("reloader-demo-") for entry in temp.iterdir())

        proc.send_signal(stop_signal)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within 10 s of {stop_signal.name}:\n" + "".join(lines))
        reader.join(timeout=5)
        output = "".join(lines)
        assert code == 0, output
        assert "Stopped" in output

        # Orphans are reaped by init at once; allow a moment for that.
        give_up = time.monotonic() + 3
        while any(_alive(pid, start) for pid, (start, _) in children.items()) and time.monotonic() < give_up:
            time.sleep(0.05)
        left = {pid: cmd for pid, (start, cmd) in children.items() if _alive(pid, start)}
        assert not left, f"processes outlived the demo: {left}"
        assert list(temp.iterdir()) == [], "the demo left files in its temporary directory"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, (start, _) in children.items():
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
