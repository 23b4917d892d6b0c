"""The fault soak (bench/soak.py) as part of the suite: a short seeded run must count no violation.

The soak drives real ZooKeeper (3 nodes), real nginx with the Lua module,
the dyups test server and two daemons through random registry churn and
real faults, and counts every broken promise (see its docstring). CI runs it
for ``SOAK_SECONDS`` (default 45) with the seed ``SOAK_SEED`` (default a
fixed one, so a red run can be repeated exactly; ``SOAK_SEED=random`` picks
a new one and prints it).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from reloader.localenv.luanginx import lua_missing
from reloader.localenv.nginx import nginx_missing
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 20261202


def _seed() -> int:
    raw = os.environ.get("SOAK_SEED", "").strip()
    if raw == "random":
        return random.SystemRandom().randrange(1 << 31)
    return int(raw) if raw else DEFAULT_SEED


@pytest.mark.timeout(600)
def test_fault_soak_counts_no_violation(zookeeper_installed: None, tmp_path: Path) -> None:
    require(nginx_missing())
    require(lua_missing())
    seconds = float(os.environ.get("SOAK_SECONDS", "45"))
    seed = _seed()
    report = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--seed", str(seed), "--duration", str(seconds),
            "--json", str(report), "--workdir", str(tmp_path / "work")]
    print(f"soak seed {seed} ({seconds:g} s): repeat with SOAK_SEED={seed}")
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 400)
    assert report.exists(), f"the soak did not finish (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    result = json.loads(report.read_text())
    print(json.dumps({key: value for key, value in result.items() if key != "violation_details"}, indent=1))
    assert result["faults_total"] > 0 and result["operations_total"] > 0, result
    assert not result["soak_errors"], result["soak_errors"]
    assert result["violations"] == 0, (
        f"seed {seed}: {result['violations']} violations:\n"
        + "\n".join(json.dumps(v) for v in result["violation_details"][:20])
    )
    assert done.returncode == 0, done.stderr[-4000:]


def test_the_checker_does_not_count_a_registry_bounce_no_daemon_could_read() -> None:
    """A state that lasted less than BOUNCE is not the registry coming back; one that lasted is."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = soak
    spec.loader.exec_module(soak)
    history = [(0.0, 6), (10.0, 1), (11.0, 6), (11.05, 1), (20.0, 6)]
    lasting = soak._lasting(history, 20.1, soak.BOUNCE)
    assert lasting == [(0.0, 6), (10.0, 1), (11.05, 1)]
    assert soak._most_over(lasting, 10.5, 19.0, 0) == 1
    assert soak._lasting(history, 20.5, soak.BOUNCE)[-1] == (20.0, 6)
    # A shrink in quick steps (sessions expiring one after the other) is below each step from its
    # start: the registry never came back, so a hold from the first step below the floor was right.
    steps = [(0.0, 10), (5.0, 5), (5.5, 4), (5.65, 3), (5.93, 2), (6.15, 1)]
    assert soak._lasting(steps, 9.0, soak.BOUNCE) == steps
    assert soak._most_over(steps, 5.5, 9.0, 0) == 4
