"""A real Prometheus scrapes running daemons and evaluates the shipped rules and dashboard.

Three daemons (real ZooKeeper; the dyups test server, a dyups interface that
is not there, and reload mode with an ``nginx -t`` that refuses) are scraped
every second by Debian's Prometheus, which evaluates a copy of
deploy/prometheus/alerts.yml every second with short ``for:`` and the two
time thresholds made short (the shipped values are unit-tested by promtool).
Faults are injected for real: one cluster is black-holed through
:class:`~reloader.localenv.tcpproxy.TcpProxy`, instances are deleted, a
broken config is reloaded, daemons are killed. Alert states are read from
Prometheus's own ``/api/v1/alerts``; every expression of the rules and of
the Grafana dashboard is evaluated through ``/api/v1/query`` and must return
series, so a renamed metric fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from reloader.localenv.ports import free_port
from reloader.localenv.tcpproxy import TcpProxy
from reloader.localenv.zookeeper import LocalZooKeeper
from tests.conftest import require
from tests.dyups_server import DyupsServer
from tests.test_daemon import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "nginx-upstream-reloader.json"
JOB = "nginx-upstream-reloader"
# The shipped thresholds in seconds, made short for the test copy: (shipped, test).
SHORT_THRESHOLDS = {
    "NginxUpstreamReloaderClusterFrozen": ("> 120", "> 2"),
    "NginxUpstreamReloaderRegistryStale": ("> 600", "> 6"),
}
TEST_FOR = "2s"
# Alerts no scenario here fires, and why (their unit tests in alerts_test.yml cover them).
NOT_FIRED = {
    "NginxUpstreamReloaderOutputErrors": "an output raising an unexpected error is a bug; no fault injects one",
}
pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------


def short_rules(tmp_path: Path) -> Path:
    """The shipped rules with short ``for:`` and short time thresholds."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            name = rule.get("alert")
            if name is None:
                continue
            if "for" in rule:
                rule["for"] = TEST_FOR
            if name in SHORT_THRESHOLDS:
                shipped, short = SHORT_THRESHOLDS[name]
                assert shipped in rule["expr"], f"{name}: the shipped threshold changed; update SHORT_THRESHOLDS"
                rule["expr"] = rule["expr"].replace(shipped, short)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(document))
    return path


class Prometheus:
    """Debian's prometheus on a free loopback port, with a temporary storage directory."""

    def __init__(self, workdir: Path, targets: list[str], rules: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.history: dict[tuple[str, str, str], dict[str, float]] = {}
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="alerts-watch", daemon=True)

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as response:
            return json.load(response) if "/api/" in path else response.read()

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                self.get("/-/ready")
                return True
            except OSError:
                return False

        wait_until(ready, 20, "Prometheus to be ready", lambda: self.log.read_text()[-3000:])
        self._watcher.start()

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result = answer["data"]["result"]
        return result if isinstance(result, list) else [result]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["data"]["alerts"])

    def _watch(self) -> None:
        """Every 0.2 s: when each (alert, instance, cluster or upstream) was first seen in each state."""
        while not self._stop.wait(0.2):
            try:
                alerts = self.alerts()
            except OSError:
                continue
            now = time.monotonic()
            for alert in alerts:
                labels = alert["labels"]
                key = (labels["alertname"], labels.get("instance", ""),
                       labels.get("upstream") or labels.get("cluster") or labels.get("output") or "")
                self.history.setdefault(key, {}).setdefault(alert["state"], now)
            for key, states in self.history.items():
                gone = not any(self._matches(alert["labels"], key) for alert in alerts)
                if gone and "firing" in states:
                    states.setdefault("resolved_after", now)

    @staticmethod
    def _matches(labels: dict[str, str], key: tuple[str, str, str]) -> bool:
        name, instance, detail = key
        return labels["alertname"] == name and labels.get("instance", "") == instance and detail in (
            labels.get("upstream") or labels.get("cluster") or labels.get("output") or "")

    def seen(self, name: str, state: str, instance: str = "", detail: str = "") -> bool:
        return any(key[0] == name and (not instance or key[1] == instance) and (not detail or key[2] == detail)
                   and state in states for key, states in self.history.items())

    def fired(self) -> set[str]:
        return {key[0] for key, states in self.history.items() if "firing" in states}

    def close(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{detail()}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# Every expression returns series
# ---------------------------------------------------------------------------

_METRIC = re.compile(r"\b(nginx_upstream_reloader_[a-z_]+|[a-z_]+:nginx_upstream_reloader_[a-z_]+:[a-z0-9]+)\b")


def rule_expressions() -> list[tuple[str, str]]:
    """(name, expression) of every rule in the shipped file."""
    document = yaml.safe_load(RULES.read_text())
    return [(rule.get("alert") or rule["record"], rule["expr"]) for group in document["groups"]
            for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every target, variables replaced as Grafana would with "All" chosen."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", "1m")
                    .replace("$instance", ".*").replace("$cluster", ".*").replace("$upstream", ".*"))
            found.append((panel["title"], expr))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            found.append((f"variable {variable['name']}", match.group(1).replace("$instance", ".*")
                          .replace("$cluster", ".*")))
    return found


def test_the_dashboard_has_the_datasource_variable_and_the_filters() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"cluster", "upstream"} <= set(variables)
    titles = {panel["title"] for panel in dashboard["panels"]}
    for title in ("Clusters", "Upstreams", "Outputs", "Session state", "Frozen for", "Thaws", "Servers published",
                  "Guards holding", "Deliveries /s", "Errors /s", "Pending upstreams", "POST results /s",
                  "Reloads /s"):
        assert title in titles
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    raw = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert any('cluster=~"$cluster"' in expr for expr in raw)
    assert any('upstream=~"$upstream"' in expr for expr in raw)


# ---------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------


def _listen(daemon: DaemonProcess) -> str:
    config = daemon.config
    assert isinstance(config, dict)
    return str(config["listen"])


def _ready(address: str) -> bool:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{address}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def prometheus_installed() -> None:
    require(None if shutil.which("prometheus") else
            "prometheus is not installed (Debian's prometheus package; ./install_venv.sh --services)")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def test_prometheus_scrapes_the_daemons_and_the_alerts_fire_and_resolve(
        prometheus_installed: None, tmp_path: Path, zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str,
        daemons: list[DaemonProcess]) -> None:
    proxy = TcpProxy(zk.port).start()
    dyups = DyupsServer(generation="stable", propagation_delay=0.0)
    dyups.__enter__()
    prometheus: Prometheus | None = None
    try:
        alpha, beta, gamma = f"{zk_root}/alpha", f"{zk_root}/beta", f"{zk_root}/gamma"
        for znode, count in ((alpha, 3), (beta, 4), (gamma, 1)):
            for n in range(count):
                zk_client.create(f"{znode}/127.0.0.1:{20001 + n}", makepath=True)
        # The instances are on loopback, which registry instances may not name by default.
        common = {"zk_session_timeout": "2s", "retry_interval": "0.5s", "allowed_networks": ["127.0.0.0/8"]}

        # A: the dyups test server; cluster "proxied" goes through the proxy, "direct" does not.
        a = DaemonProcess(tmp_path, {
            **common, "listen": f"127.0.0.1:{free_port()}", "files_output_path": str(tmp_path / "a"),
            "dyups_url": dyups.url, "reconcile_interval": "1s",
            "clusters": [
                {"name": "proxied", "zk_servers": proxy.hosts,
                 "zk_nodes": {"alpha": {"path": alpha, "settle_after_reconnect": "2s"}}},
                {"name": "direct", "zk_servers": zk.hosts,
                 "zk_nodes": {"beta": {"path": beta, "max_drop": "50%", "drop_hold": "1m"}}},
            ],
        }, name="a", files_dir=None, dyups_url=None).start()
        # B: a dyups interface that is not there, and a cluster that never answers.
        b = DaemonProcess(tmp_path, {
            **common, "listen": f"127.0.0.1:{free_port()}", "files_output_path": str(tmp_path / "b"),
            "dyups_url": f"http://127.0.0.1:{free_port()}",
            "clusters": [
                {"name": "direct", "zk_servers": zk.hosts, "zk_nodes": {"gamma": gamma}},
                {"name": "nowhere", "zk_servers": f"127.0.0.1:{free_port()}", "zk_nodes": {"delta": "/delta"}},
            ],
        }, name="b", files_dir=None, dyups_url=None).start()
        # C: reload mode, with an nginx -t that refuses every change.
        c = DaemonProcess(tmp_path, {
            **common, "listen": f"127.0.0.1:{free_port()}", "files_output_path": str(tmp_path / "c"),
            "nginx_reload": {"test_cmd": ["false"], "reload_cmd": ["true"], "min_interval": 0.2},
            "zk_servers": zk.hosts, "zk_nodes": {"gamma": gamma},
        }, name="c", files_dir=None, dyups_url=None).start()
        daemons += [a, b, c]
        for daemon in (a, c):
            wait_until(lambda daemon=daemon: _ready(_listen(daemon)), 20, f"daemon {daemon.name} ready",
                       daemon.log_tail)

        prometheus = Prometheus(tmp_path, [_listen(d) for d in (a, b, c)], short_rules(tmp_path))
        prometheus.wait_ready()
        wait_until(lambda: len(prometheus.query(f'up{{job="{JOB}"}} == 1')) == 3, 20, "three targets up")
        a_instance = _listen(a)

        # Faults, all at once: A's dyups answering 500, B's config broken and reloaded, three of beta's
        # four instances gone,
        # and A's "proxied" cluster black-holed while one of alpha's three instances leaves.
        dyups.inject("500", count=10_000)  # A's POSTs from now on fail
        b.config_path.write_text("zk_nodes: [\n")
        assert b.proc is not None
        b.proc.send_signal(signal.SIGHUP)
        for n in range(1, 4):
            zk_client.delete(f"{beta}/127.0.0.1:{20001 + n}")
        proxy.blackhole()
        zk_client.delete(f"{alpha}/127.0.0.1:20003")

        frozen = ("NginxUpstreamReloaderClusterFrozen", a_instance, "proxied")
        wait_until(lambda: prometheus.seen(frozen[0], "firing", *frozen[1:]), 30,
                   "the frozen-cluster alert to fire", lambda: json.dumps(prometheus.history, indent=1))
        assert prometheus.seen(frozen[0], "pending", *frozen[1:]), "pending comes before firing"
        history = next(states for key, states in prometheus.history.items() if key == frozen)
        assert history["pending"] < history["firing"]
        assert not prometheus.seen(frozen[0], "pending", a_instance, "direct"), "only the black-holed cluster"
        wait_until(lambda: prometheus.seen("NginxUpstreamReloaderRegistryStale", "firing", a_instance, "proxied"),
                   20, "the staleness alert to fire", a.log_tail)
        assert not prometheus.seen("NginxUpstreamReloaderRegistryStale", "pending", a_instance, "direct")

        proxy.pass_through()
        wait_until(lambda: "resolved_after" in prometheus.history[frozen], 30, "the frozen-cluster alert to resolve",
                   a.log_tail)
        wait_until(lambda: prometheus.seen("NginxUpstreamReloaderSettleEndedWithRemovals", "firing", a_instance,
                                           "alpha"), 20, "the settle alert", a.log_tail)

        # Every expression of the rules and of the dashboard returns series from these daemons.
        for name, expr in rule_expressions():
            prometheus.query(expr)  # valid PromQL (an alert's own expression is empty while it is quiet)
            for metric in set(_METRIC.findall(expr)):
                assert prometheus.query(metric), f"rule {name}: no series named {metric}"
        for title, expr in dashboard_expressions():
            assert prometheus.query(expr), f"dashboard {title}: no series for {expr}"

        expected = {name for name, _ in rule_expressions() if name.startswith("NginxUpstreamReloader")}
        expected -= set(NOT_FIRED) | {"NginxUpstreamReloaderDown", "NginxUpstreamReloaderMetricsAbsent"}
        wait_until(lambda: expected <= prometheus.fired(), 20, "every scenario's alert to fire",
                   lambda: f"not fired: {sorted(expected - prometheus.fired())}")

        # A dead daemon alerts; and when none is left, the absent metrics do.
        b.kill()
        wait_until(lambda: prometheus.seen("NginxUpstreamReloaderDown", "firing", _listen(b)), 20,
                   "the daemon-down alert")
        a.kill()
        c.kill()
        wait_until(lambda: prometheus.seen("NginxUpstreamReloaderMetricsAbsent", "firing"), 20,
                   "the absent-metrics alert")
        assert set(NOT_FIRED).isdisjoint(prometheus.fired())
        names = {_listen(a): "a", _listen(b): "b", _listen(c): "c"}
        for (alert, instance, detail), states in sorted(prometheus.history.items()):
            if "firing" in states:
                print(f"fired: {alert} daemon {names.get(instance, '-')} {detail}")
    finally:
        if prometheus is not None:
            prometheus.close()
        dyups.__exit__(None, None, None)
        proxy.close()


def test_the_reload_outputs_refused_upstreams_is_its_own_gauge_not_a_post_result() -> None:
    """"refused" is a POST outcome for dyups and Lua, and the count of refused upstreams for reload."""
    from prometheus_client.exposition import generate_latest

    from reloader.status import metrics_registry

    class Source:
        ready = healthy = True

        @staticmethod
        def status_snapshot() -> dict[str, object]:
            return {"outputs": {
                "reload": {"alive": True, "counters": {"reloads": 3, "refused": 2}},
                "lua": {"alive": True, "counters": {"ok": 5, "refused": 1}},
            }}

    text = generate_latest(metrics_registry(Source())).decode()
    assert 'nginx_upstream_reloader_output_refused_upstreams{output="reload"} 2.0' in text
    assert 'nginx_upstream_reloader_output_posts_total{output="lua",result="refused"} 1.0' in text
    assert 'output="reload",result=' not in text
