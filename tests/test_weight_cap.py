"""Registry weights under a consistent hash are capped at ``max_weight`` (issue 14, item 16).

nginx builds 160 ring points per unit of weight for ``hash ... consistent``,
so one registry weight of 198,958 cost ``nginx -t`` 7.5 s of CPU, and every
nginx start and reload with it. The file the daemon renders is checked here
with a real ``nginx -t``, timed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import pytest

from reloader.assemble import UpstreamOptions, consistent_hash
from reloader.config import ConfigError, GuardSettings, ZnodeConfig, parse_config
from reloader.model import Upstream
from reloader.pipeline import Pipeline
from reloader.render import render_file

HEAVY = 198_958


def pipeline_for(directives: tuple[str, ...], guards: GuardSettings | None = None) -> tuple[Pipeline, list[Upstream]]:
    published: list[Upstream] = []
    znode = ZnodeConfig(upstream="app", path="/services/app", key_path="zk_nodes.app",
                        options=UpstreamOptions(directives=directives), guards=guards or GuardSettings())
    return Pipeline([znode], published.append), published


@pytest.mark.timeout(60)
def test_a_huge_registry_weight_under_a_consistent_hash_is_capped_and_nginx_t_stays_fast(
    tmp_path: Path, nginx_check: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, published = pipeline_for(("hash $remote_addr consistent",))
    children = {"10.0.0.1:80": str(HEAVY).encode(), "10.0.0.2:80": b"7", "10.0.0.3:80": b""}
    with caplog.at_level(logging.WARNING):
        pipeline.update("app", children, "/services/app")
        pipeline.update("app", {**children, "10.0.0.4:80": b""}, "/services/app")
    weights = {server.address: server.weight for server in published[-1].servers}
    assert weights == {"10.0.0.1:80": 100, "10.0.0.2:80": 7, "10.0.0.3:80": 1, "10.0.0.4:80": 1}
    warnings = [r.getMessage() for r in caplog.records if "max_weight" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "/services/app" in warnings[0] and "10.0.0.1:80" in warnings[0] and str(HEAVY) in warnings[0]
    (tmp_path / "app.upstream").write_text(render_file(published[-1]))
    start = time.monotonic()
    nginx_check(tmp_path)
    assert time.monotonic() - start < 2.0, "nginx -t on the rendered file"


def test_the_cap_is_a_setting_and_a_new_weight_is_warned_about_again(caplog: pytest.LogCaptureFixture) -> None:
    pipeline, published = pipeline_for(("hash $request_uri consistent",), GuardSettings(max_weight=1000))
    with caplog.at_level(logging.WARNING):
        pipeline.update("app", {"10.0.0.1:80": b"5000"}, "/services/app")
        pipeline.update("app", {"10.0.0.1:80": b"6000"}, "/services/app")
    assert [s.weight for s in published[-1].servers] == [1000]
    assert sum("max_weight 1000" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("directives", [(), ("hash $remote_addr",), ("least_conn",)])
def test_without_a_consistent_hash_a_registry_weight_is_served_as_given(directives: tuple[str, ...]) -> None:
    pipeline, published = pipeline_for(directives)
    pipeline.update("app", {"10.0.0.1:80": str(HEAVY).encode()}, "/services/app")
    assert [s.weight for s in published[-1].servers] == [HEAVY]


def test_consistent_hash_is_recognised_only_as_the_directive() -> None:
    assert consistent_hash(["hash $remote_addr consistent"])
    assert not consistent_hash(["hash consistent"]), "a key named 'consistent' is a plain hash"
    assert not consistent_hash(["hash $remote_addr", "keepalive 8"])


def test_max_weight_is_a_global_and_per_upstream_setting() -> None:
    config = parse_config({"max_weight": 500, "zk_servers": "a:1",
                           "zk_nodes": {"app1": "/a", "app2": {"path": "/b", "max_weight": 20}}})
    app1, app2 = config.znodes
    assert (config.guards.max_weight, app1.guards.max_weight, app2.guards.max_weight) == (500, 500, 20)
    assert GuardSettings().max_weight == 100


@pytest.mark.parametrize("value", [0, -1, 1.5, "100", True, 10_000_000])
def test_max_weight_refuses_anything_but_a_whole_number_in_range(value: object) -> None:
    with pytest.raises(ConfigError, match="max_weight"):
        parse_config({"max_weight": value, "zk_servers": "a:1", "zk_nodes": {"app1": "/a"}})
