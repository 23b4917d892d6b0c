"""The shipped Prometheus rules: ``promtool check rules`` and ``promtool test rules`` (Debian's prometheus).

Every alert in deploy/prometheus/alerts.yml must have a unit test in
alerts_test.yml that shows it firing and one that shows it quiet; and each
of those tests must be able to fail: an alert whose expression never
matches makes ``promtool test rules`` fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    require(None if path else "promtool is not installed (Debian's prometheus package; ./install_venv.sh --services)")
    assert path is not None
    return path


def alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            timeout=30, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts())
    assert names - firing == set(), "alerts without a test that fires them"
    assert names - quiet == set(), "alerts without a test that keeps them quiet"
    # The list, by name: none may silently disappear.
    assert {
        "NginxUpstreamReloaderClusterFrozen", "NginxUpstreamReloaderOutputDown", "NginxUpstreamReloaderOutputBehind",
        "NginxUpstreamReloaderDropHeld", "NginxUpstreamReloaderSettleEndedWithRemovals",
        "NginxUpstreamReloaderConfigReloadRefused", "NginxUpstreamReloaderUpstreamDiverged",
        "NginxUpstreamReloaderNotReady", "NginxUpstreamReloaderMetricsAbsent", "NginxUpstreamReloaderRegistryStale",
    } <= names


def test_every_alert_has_a_summary_and_a_description_that_says_what_to_do() -> None:
    for name, rule in alerts().items():
        annotations = rule.get("annotations") or {}
        assert isinstance(annotations, dict)
        assert annotations.get("summary"), name
        description = str(annotations.get("description") or "")
        assert len(description) > 80, f"{name}: the description must say what to do"
        assert (rule.get("labels") or {}).get("severity") in {"warning", "critical"}, name  # type: ignore[union-attr]


def test_the_unit_tests_fail_when_an_alert_never_fires(promtool: str, tmp_path: Path) -> None:
    """Each alert's unit test catches a broken expression: a test that cannot fail proves nothing.

    A copy of the rules with every alert's expression made never to match:
    promtool must report a failed firing test for each alert by name.
    """
    broken = yaml.safe_load(RULES.read_text())
    for group in broken["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["expr"] = "vector(1) == 0"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(broken))
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    unreported = [name for name in alerts() if f"alertname: {name}," not in output]
    assert unreported == [], f"the unit tests pass with these alerts broken: {unreported}"
