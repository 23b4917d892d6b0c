"""The address policy: registry instances may not point nginx at the host, unless the config allows it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from reloader.config import ConfigError, GuardSettings, ZnodeConfig, parse_config
from reloader.netpolicy import NetworkPolicy, parse_networks
from reloader.pipeline import Pipeline
from reloader.model import Upstream

DEFAULT = NetworkPolicy()

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:0:127.0.0.1", "loopback"),
    ("::127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
]

SERVED = ["10.0.0.1", "192.168.1.5", "8.8.8.8", "2001:db8::7", "::ffff:10.0.0.1", "fd00::1", "100.64.0.1"]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_every_form_of_the_host_itself_is_refused_by_default(address: str, kind: str) -> None:
    reason = DEFAULT.refusal(address)
    assert reason is not None and kind in reason and address in reason and "allowed_networks" in reason


@pytest.mark.parametrize("address", SERVED)
def test_ordinary_addresses_are_served(address: str) -> None:
    assert DEFAULT.refusal(address) is None


def test_host_names_are_not_judged_here() -> None:
    assert DEFAULT.refusal("localhost") is None  # judged by what it resolves to (reloader/resolve.py)


@pytest.mark.parametrize(("address", "allowed"), [
    ("127.0.0.1", "127.0.0.1/32"),
    ("127.0.0.1", "127.0.0.0/8"),
    ("::ffff:127.0.0.1", "127.0.0.1/32"),  # an embedded address is judged as its IPv4 address
    ("::127.0.0.1", "127.0.0.0/8"),
    ("::1", "::1/128"),
    ("0.0.0.0", "0.0.0.0/32"),
    ("::", "::/128"),
    ("169.254.169.254", "169.254.0.0/16"),
    ("fe80::1", "fe80::/10"),
    ("224.0.0.1", "224.0.0.0/4"),
])
def test_allowed_networks_override_the_default_refusal(address: str, allowed: str) -> None:
    policy = NetworkPolicy(allowed=parse_networks([allowed]))
    assert policy.refusal(address) is None


def test_an_allowed_network_allows_only_itself() -> None:
    policy = NetworkPolicy(allowed=parse_networks(["127.0.0.1/32"]))
    assert policy.refusal("127.0.0.2") is not None
    assert policy.refusal("::1") is not None
    assert policy.refusal("169.254.169.254") is not None


def test_denied_networks_add_to_the_refusal_and_the_longer_prefix_wins() -> None:
    policy = NetworkPolicy(allowed=parse_networks(["10.1.2.3/32", "127.0.0.0/8"]),
                           denied=parse_networks(["10.0.0.0/8", "127.0.0.9/32", "2001:db8::/32"]))
    assert "denied_networks" in (policy.refusal("10.9.9.9") or "")
    assert policy.refusal("10.1.2.3") is None, "the allowed /32 is more specific than the denied /8"
    assert "denied_networks" in (policy.refusal("127.0.0.9") or "")
    assert policy.refusal("127.0.0.8") is None
    assert "denied_networks" in (policy.refusal("2001:db8::1") or "")
    assert "denied_networks" in (policy.refusal("::ffff:10.9.9.9") or ""), "embedded forms are denied too"
    tie = NetworkPolicy(allowed=parse_networks(["10.0.0.0/8"]), denied=parse_networks(["10.0.0.0/8"]))
    assert tie.refusal("10.0.0.1") is not None, "on a tie, denied wins"


@pytest.mark.parametrize("value", ["10.0.0.0/8", [42], ["10.0.0.1/8"], ["nonsense"], ["10.0.0.0/33"], [""]])
def test_bad_network_lists_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_networks(value)


def _config(extra: dict[str, object], node: dict[str, object] | None = None) -> dict[str, object]:
    return {"zk_servers": "zk:2181", "zk_nodes": {"app": {"path": "/svc/app", **(node or {})},
                                                   "other": "/svc/other"}, **extra}


def test_the_config_takes_global_and_per_upstream_lists_and_names_a_bad_key() -> None:
    config = parse_config(_config({"allowed_networks": ["127.0.0.1/32"]}, {"denied_networks": ["10.0.0.0/8"],
                                                                           "allowed_networks": ["::1/128"]}))
    app, other = config.znodes
    assert app.networks.refusal("127.0.0.1") is None and app.networks.refusal("::1") is None
    assert app.networks.refusal("10.0.0.1") is not None
    assert other.networks.refusal("127.0.0.1") is None and other.networks.refusal("::1") is not None
    assert other.networks.refusal("10.0.0.1") is None
    with pytest.raises(ConfigError) as error:
        parse_config(_config({"allowed_networks": ["127.0.0.1/8"]}, {"denied_networks": "10.0.0.0/8"}))
    text = str(error.value)
    assert "allowed_networks: [0] '127.0.0.1/8' is not a network" in text
    assert "zk_nodes.app.denied_networks: must be a list" in text


GUARDS_OFF = GuardSettings(settle_after_reconnect=0, max_drop=1.0, drop_hold=0)


def _pipeline(networks: NetworkPolicy = DEFAULT) -> tuple[Pipeline, list[Upstream]]:
    published: list[Upstream] = []
    znode = ZnodeConfig(upstream="app", path="/svc/app", key_path="zk_nodes.app", guards=GUARDS_OFF,
                        networks=networks)
    return Pipeline([znode], published.append), published


HOSTILE = ["127.0.0.1:14444", "[::1]:2181", "0.0.0.0:9345", "[::]:14444", "[::ffff:127.0.0.1]:14444",
           "169.254.169.254:80"]


def test_the_pipeline_skips_refused_children_once_and_serves_their_siblings(caplog: pytest.LogCaptureFixture) -> None:
    pipeline, published = _pipeline()
    children = {child: b"" for child in HOSTILE}
    children["10.0.0.1:80"] = b""
    with caplog.at_level(logging.WARNING):
        pipeline.update("app", children, "/svc/app")
        pipeline.update("app", {**children, "10.0.0.2:80": b""}, "/svc/app")
    assert [s.address for s in published[-1].servers] == ["10.0.0.1:80", "10.0.0.2:80"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(HOSTILE), warnings
    for child in HOSTILE:
        assert sum(f"/svc/app child {child!r} skipped" in w for w in warnings) == 1, child


def test_json_formats_are_refused_alike() -> None:
    pipeline, published = _pipeline()
    pipeline.update("app", {
        "a": json.dumps({"address": "127.0.0.1", "port": 14444}).encode(),
        "b": json.dumps({"address": "10.0.0.1", "port": 80}).encode(),
    }, "/svc/app")
    assert [s.address for s in published[-1].servers] == ["10.0.0.1:80"]


def test_an_allowed_sidecar_is_served() -> None:
    pipeline, published = _pipeline(NetworkPolicy(allowed=parse_networks(["127.0.0.1/32"])))
    pipeline.update("app", {"127.0.0.1:14444": b"", "169.254.169.254:80": b""}, "/svc/app")
    assert [s.address for s in published[-1].servers] == ["127.0.0.1:14444"]


def test_static_backup_servers_are_not_filtered(tmp_path: Path) -> None:
    config = parse_config(_config({}, {"backup_servers": ["127.0.0.1:8080"]}))
    znode = config.znodes[0]
    published: list[Upstream] = []
    pipeline = Pipeline([znode], published.append)
    pipeline.update("app", {"10.0.0.1:80": b"", "127.0.0.1:9": b""}, "/svc/app")
    assert pipeline.last_published("app") is not None
    addresses = [s.address for s in pipeline.last_published("app").servers]
    assert addresses == ["10.0.0.1:80", "127.0.0.1:8080"]


def test_check_warns_when_dyups_is_not_on_loopback(tmp_path: Path) -> None:
    import subprocess
    import sys

    def check(url: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "upstream_zk_nodes.conf"
        path.write_text(f"zk_servers: zk:2181\ndyups_url: {url}\nallowed_networks: ['127.0.0.1/32']\n"
                        "zk_nodes:\n  app: /svc/app\n")
        return subprocess.run([sys.executable, "-m", "reloader", "check", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)

    remote = check("http://10.0.0.5:8081")
    assert remote.returncode == 0 and "dyups_url http://10.0.0.5:8081 is not on loopback" in remote.stderr
    assert "# allowed_networks = 127.0.0.1/32" in remote.stdout
    for url in ("http://127.0.0.1:8081", "http://[::1]:8081", "http://localhost:8081"):
        local = check(url)
        assert local.returncode == 0 and "loopback" not in local.stderr, url


def test_an_embedded_ipv4_address_is_judged_as_itself() -> None:
    import ipaddress

    from hypothesis import given, settings
    from hypothesis import strategies as st

    policies = [DEFAULT, NetworkPolicy(allowed=parse_networks(["127.0.0.0/8"]), denied=parse_networks(["10.0.0.0/8"]))]

    @settings(max_examples=500, deadline=None)
    @given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from(policies))
    def check(value: int, policy: NetworkPolicy) -> None:
        v4 = str(ipaddress.IPv4Address(value))
        for form in (f"::ffff:{v4}", f"::ffff:0:{v4}"):
            assert (policy.refusal(v4) is None) == (policy.refusal(str(ipaddress.ip_address(form))) is None), form

    check()


def test_a_config_reload_that_changes_the_policy_applies_to_the_next_snapshot() -> None:
    from dataclasses import replace

    pipeline, published = _pipeline()
    children = {"127.0.0.1:9000": b"", "10.0.0.1:80": b""}
    pipeline.update("app", children, "/svc/app")
    assert [s.address for s in published[-1].servers] == ["10.0.0.1:80"]
    allowing = replace(pipeline._states["app"].config, networks=NetworkPolicy(allowed=parse_networks(["127.0.0.1/32"])))
    assert pipeline.reconfigure([allowing]) == ([], [], ["app"])
    pipeline.update("app", children, "/svc/app")  # the source hands a changed upstream its snapshot again
    assert [s.address for s in published[-1].servers] == ["10.0.0.1:80", "127.0.0.1:9000"]
    pipeline.reconfigure([replace(allowing, networks=DEFAULT)])
    pipeline.update("app", children, "/svc/app")
    assert [s.address for s in published[-1].servers] == ["10.0.0.1:80"]


def test_a_policy_s_remembered_answers_are_its_answers_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy answers from memory as it would afresh, forgets beyond its bound, and is compared without it."""
    import ipaddress

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from reloader import netpolicy

    monkeypatch.setattr(netpolicy, "VERDICTS_KEPT", 8)
    lists = (parse_networks(["127.0.0.0/8"]), parse_networks(["10.0.0.0/8"]))
    addresses = st.one_of(
        st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v))),
        st.sampled_from([host for host, _ in REFUSED] + SERVED + ["backend.internal", "10.0.0.1:80", ""]),
    )

    @settings(max_examples=200, deadline=None)
    @given(st.lists(addresses, max_size=40), st.sampled_from([(), lists[0]]), st.sampled_from([(), lists[1]]))
    def check(hosts: list[str], allowed: tuple, denied: tuple) -> None:
        remembering = NetworkPolicy(allowed=allowed, denied=denied)
        for host in hosts + hosts:  # each host asked twice: once afresh, once (if still kept) from memory
            assert remembering.refusal(host) == NetworkPolicy(allowed=allowed, denied=denied).refusal(host), host
            assert len(remembering._verdicts) <= 8
        fresh = NetworkPolicy(allowed=allowed, denied=denied)
        assert remembering == fresh and hash(remembering) == hash(fresh) and repr(remembering) == repr(fresh)

    check()
