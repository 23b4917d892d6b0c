"""Per-upstream options: server_params, upstream_directives, backup_servers, their combinations.

The claims about what nginx accepts or refuses are checked with the real
``nginx -t`` (Debian's open-source nginx) through the ``nginx_check`` fixture.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from reloader.assemble import UpstreamOptions, assemble_upstream
from reloader.durations import nginx_time, parse_duration
from reloader.localenv.nginx import NginxConfigError
from reloader.model import Server
from reloader.options import (
    MAX_WEIGHT,
    check_combination,
    parse_backup_servers,
    parse_server_params,
    parse_upstream_directives,
)
from reloader.render import render_file

LIVE = [Server("127.0.0.1", 8081, weight=2), Server("127.0.0.2", 8082), Server("::1", 8083, down=True)]


def directives(*items: str, allow_variables: bool = True) -> tuple[str, ...]:
    return parse_upstream_directives(list(items), allow_variables=allow_variables)


def write_upstream(directory: Path, name: str, options: UpstreamOptions, live: list[Server] = LIVE) -> str:
    text = render_file(assemble_upstream(name, live, options))
    (directory / f"{name}.upstream").write_text(text)
    return text


# ---------------------------------------------------------------------------
# durations


class TestDurations:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            (2, 2.0),
            (0.5, 0.5),
            (0, 0.0),
            ("2", 2.0),
            ("0.5", 0.5),
            ("500ms", 0.5),
            ("2s", 2.0),
            ("1m", 60.0),
            ("1h", 3600.0),
            (" 3 s ", 3.0),
        ],
    )
    def test_parse(self, value: object, seconds: float) -> None:
        assert parse_duration(value) == seconds

    @pytest.mark.parametrize(
        "value", [True, None, -1, "-1s", "1d", "1 m s", "", "s", "1e3", float("nan"), float("inf"), 10**400, [1], "１s"]
    )
    def test_parse_errors(self, value: object) -> None:
        with pytest.raises(ValueError):
            parse_duration(value)

    @pytest.mark.parametrize(
        ("seconds", "text"), [(10, "10s"), (0, "0s"), (0.5, "500ms"), (1.5, "1500ms"), (0.001, "1ms"), (60, "60s")]
    )
    def test_nginx_time(self, seconds: float, text: str) -> None:
        assert nginx_time(seconds) == text

    def test_nginx_time_in_whole_seconds(self) -> None:
        assert nginx_time(30, milliseconds=False) == "30s"
        with pytest.raises(ValueError, match="whole number of seconds"):
            nginx_time(0.5, milliseconds=False)
        with pytest.raises(ValueError, match="milliseconds"):
            nginx_time(0.0005)


# ---------------------------------------------------------------------------
# server_params


class TestServerParams:
    def test_empty(self) -> None:
        assert parse_server_params(None) == ()
        assert parse_server_params({}) == ()

    def test_every_parameter_in_the_configured_order(self) -> None:
        value = {"max_fails": 3, "fail_timeout": "1m", "weight": 5, "max_conns": 100, "down": True}
        assert parse_server_params(value) == (
            ("max_fails", "3"),
            ("fail_timeout", "60s"),
            ("weight", "5"),
            ("max_conns", "100"),
            ("down", ""),
        )

    @pytest.mark.parametrize(
        ("value", "text"), [(10, "10s"), ("10s", "10s"), ("30", "30s"), (0, "0s"), ("2m", "120s"), (86400, "86400s")]
    )
    def test_fail_timeout(self, value: object, text: str) -> None:
        assert parse_server_params({"fail_timeout": value}) == (("fail_timeout", text),)

    def test_zero_counts(self) -> None:
        assert parse_server_params({"max_fails": 0, "max_conns": 0}) == (("max_fails", "0"), ("max_conns", "0"))

    def test_down_false_means_not_set(self) -> None:
        assert parse_server_params({"down": False}) == ()

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ([("weight", 1)], "must be a mapping"),
            ("weight=1", "must be a mapping"),
            ({1: 2}, "not a string"),
            ({"wieght": 2}, "unknown server parameter 'wieght'"),
            ({"weight": 0}, "between 1 and"),
            ({"weight": -1}, "between 1 and"),
            ({"weight": MAX_WEIGHT + 1}, "between 1 and"),
            ({"weight": True}, "must be an integer"),
            ({"weight": "5"}, "must be an integer"),
            ({"weight": 1.5}, "must be an integer"),
            ({"max_fails": -1}, "between 0 and"),
            ({"max_conns": "x"}, "must be an integer"),
            ({"fail_timeout": "abc"}, "not a duration"),
            ({"fail_timeout": -1}, "non-negative"),
            ({"fail_timeout": "500ms"}, "whole number of seconds"),
            ({"fail_timeout": "25h"}, "at most 1 day"),
            ({"down": "yes"}, "is a flag"),
            ({"down": 1}, "is a flag"),
            ({"backup": True}, "backup_servers"),
            ({"slow_start": "30s"}, "NGINX Plus"),
            ({"resolve": True}, "NGINX Plus"),
            ({"route": "a"}, "NGINX Plus"),
        ],
    )
    def test_errors(self, value: object, message: str) -> None:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            parse_server_params(value)


# ---------------------------------------------------------------------------
# upstream_directives


class TestUpstreamDirectives:
    def test_empty(self) -> None:
        assert parse_upstream_directives(None, allow_variables=False) == ()
        assert parse_upstream_directives([], allow_variables=False) == ()

    @pytest.mark.parametrize(
        ("text", "normalised"),
        [
            ("least_conn", "least_conn"),
            ("ip_hash", "ip_hash"),
            ("random", "random"),
            ("random two", "random two"),
            ("random  two   least_conn", "random two least_conn"),
            ("hash $request_uri", "hash $request_uri"),
            ("hash $remote_addr$request_uri consistent", "hash $remote_addr$request_uri consistent"),
            ("hash user-[id]:/a?b=c&d%20,e@f+g~h!i*j", "hash user-[id]:/a?b=c&d%20,e@f+g~h!i*j"),
            (" keepalive 32 ", "keepalive 32"),
            ("keepalive_timeout 60", "keepalive_timeout 60s"),
            ("keepalive_timeout 1.5s", "keepalive_timeout 1500ms"),
            ("keepalive_timeout 500ms", "keepalive_timeout 500ms"),
            ("keepalive_requests 1000", "keepalive_requests 1000"),
            ("keepalive_requests 007", "keepalive_requests 7"),
            ("zone backend 64K", "zone backend 64k"),
            ("zone my_zone-1 1M", "zone my_zone-1 1m"),
            ("zone z 32768", "zone z 32768"),
        ],
    )
    def test_valid(self, text: str, normalised: str) -> None:
        assert directives(text) == (normalised,)

    def test_balancing_method_comes_first(self) -> None:
        result = directives("keepalive 16", "zone z 64k", "least_conn", "keepalive_timeout 30s")
        assert result == ("least_conn", "keepalive 16", "zone z 64k", "keepalive_timeout 30s")

    def test_constant_hash_key_is_allowed_without_variables(self) -> None:
        assert directives("hash tenant-a consistent", allow_variables=False) == ("hash tenant-a consistent",)

    def test_variables_are_refused_for_dyups(self) -> None:
        with pytest.raises(ValueError, match="dyups") as info:
            directives("hash $request_uri", allow_variables=False)
        assert "files-only and reload modes" in str(info.value)
        assert "[0]" in str(info.value)

    @pytest.mark.parametrize(
        ("items", "message"),
        [
            ("least_conn", "must be a list"),
            ({"least_conn": True}, "must be a list"),
            ([1], "must be a string"),
            (["keepalive 32;"], "must not end with ';'"),
            (["least_conn; ip_hash"], "contains ';'"),
            (["hash {a}"], "contains '{'"),
            (["hash a}"], "contains '}'"),
            (['hash "a b"'], "contains '\"'"),
            (["hash 'a'"], 'contains "\'"'),
            (["hash a\\b"], "contains '\\\\\\\\'"),
            (["hash a#b"], "contains '#'"),
            (["keepalive\n32"], "contains '\\\\n'"),
            (["keepalive\t32"], "contains '\\\\t'"),
            (["hash é"], "contains"),
            ([""], "empty directive"),
            (["   "], "empty directive"),
            (["server 10.0.0.1:80"], "unknown upstream directive 'server'"),
            (["proxy_pass http://x"], "unknown upstream directive"),
            (["least_time header"], "NGINX Plus"),
            (["sticky cookie srv_id"], "NGINX Plus"),
            (["least_conn now"], "takes no arguments"),
            (["ip_hash x"], "takes no arguments"),
            (["random three"], "random takes"),
            (["random two least_time=header"], "random takes"),
            (["random least_conn"], "random takes"),
            (["hash"], "hash takes a key"),
            (["hash a b"], "hash takes a key"),
            (["hash a consistent extra"], "hash takes a key"),
            (["hash $"], "hash key"),
            (["hash $1"], "hash key"),
            (["hash a<b"], "hash key"),
            (["keepalive 0"], "between 1 and"),
            (["keepalive"], "one whole number"),
            (["keepalive -1"], "one whole number"),
            (["keepalive 1 2"], "one whole number"),
            (["keepalive 1k"], "one whole number"),
            (["keepalive_requests 0"], "between 1 and"),
            (["keepalive_timeout"], "one duration"),
            (["keepalive_timeout soon"], "not a duration"),
            (["keepalive_timeout 2d"], "not a duration"),
            (["keepalive_timeout 25h"], "at most 1 day"),
            (["zone z"], "a name and a size"),
            (["zone z 16k"], "between 32k"),
            (["zone z 2048m"], "between 32k"),
            (["zone z 1g"], "optional k or m suffix"),
            (["zone z 64kb"], "optional k or m suffix"),
            (["zone a.b 64k"], "zone name"),
            (["zone $z 64k"], "zone name"),
            (["keepalive 8", "keepalive 16"], "already given at \\[0\\]"),
            (["least_conn", "least_conn"], "already given"),
            (["least_conn", "hash $a"], "only one balancing method"),
            (["ip_hash", "random"], "only one balancing method"),
        ],
    )
    def test_errors(self, items: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_upstream_directives(items, allow_variables=True)


# ---------------------------------------------------------------------------
# backup_servers


class TestBackupServers:
    def test_valid(self) -> None:
        assert parse_backup_servers(["10.9.0.1:8080", "[2001:db8::9]:80", "Backup.Example.com:81"]) == (
            Server("10.9.0.1", 8080),
            Server("2001:db8::9", 80),
            Server("backup.example.com", 81),
        )
        assert parse_backup_servers(None) == ()
        assert parse_backup_servers([]) == ()

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("10.9.0.1:8080", "must be a list"),
            ({"a": 1}, "must be a list"),
            ([8080], "must be a 'host:port' string"),
            (["10.9.0.1"], "not host:port"),
            (["10.9.0.1:0"], "outside"),
            (["a;b:80"], "not an IP address"),
            (["a\n:80"], "not an IP address or an RFC 1123 host name"),
            (["[10.0.0.1]:80"], "non-IPv6"),
            (["10.9.0.1:8080", "10.9.0.1:8080"], "listed twice"),
            (["[2001:db8::9]:80", "[2001:db8:0::9]:80"], "listed twice"),
        ],
    )
    def test_errors(self, value: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_backup_servers(value)


# ---------------------------------------------------------------------------
# combinations


class TestCheckCombination:
    BACKUPS = (Server("10.9.0.1", 8080),)

    @pytest.mark.parametrize(
        "method", ["hash $request_uri", "hash a consistent", "ip_hash", "random", "random two least_conn"]
    )
    def test_backup_servers_with_hashing_or_random_are_refused(self, method: str) -> None:
        with pytest.raises(ValueError, match=f"'{method.split()[0]}'"):
            check_combination((), directives(method, "keepalive 8"), self.BACKUPS)

    def test_backup_in_params_is_refused_too(self) -> None:
        with pytest.raises(ValueError, match="'ip_hash'"):
            check_combination((("backup", ""),), ("ip_hash",), ())

    @pytest.mark.parametrize("method", [(), ("least_conn",), ("keepalive 8",)])
    def test_backup_servers_with_round_robin_or_least_conn(self, method: tuple[str, ...]) -> None:
        check_combination((("max_fails", "2"),), method, self.BACKUPS)

    @pytest.mark.parametrize("method", ["hash $request_uri", "ip_hash", "random"])
    def test_hashing_without_backups(self, method: str) -> None:
        check_combination((("weight", "2"), ("down", "")), directives(method), ())


# ---------------------------------------------------------------------------
# nginx -t proves the rules


METHODS = [
    [],
    ["least_conn"],
    ["ip_hash"],
    ["random"],
    ["random two"],
    ["random two least_conn"],
    ["hash $request_uri"],
    ["hash $remote_addr$request_uri consistent"],
    ["hash tenant-a"],
]
EXTRAS = [
    [],
    ["keepalive 16"],
    ["keepalive 32", "keepalive_timeout 1.5s", "keepalive_requests 100"],
    ["zone {name} 64k", "keepalive 8"],
]
PARAMS = [
    {},
    {"weight": 3},
    {"max_fails": 0, "fail_timeout": "10s"},
    {"max_fails": 3, "fail_timeout": 30, "max_conns": 50, "weight": 2},
    {"down": True},
]
BACKUPS = [[], ["127.0.0.9:9090", "[::1]:9091"]]


def test_every_accepted_combination_passes_nginx(tmp_path: Path, nginx_check) -> None:
    accepted = refused = 0
    for index, (method, extra, params, backups) in enumerate(itertools.product(METHODS, EXTRAS, PARAMS, BACKUPS)):
        raw = method + [item.format(name=f"z{index}") for item in extra]
        parsed_directives = directives(*raw)
        server_params = parse_server_params(params)
        backup_servers = parse_backup_servers(backups)
        try:
            check_combination(server_params, parsed_directives, backup_servers)
        except ValueError:
            refused += 1
            continue
        accepted += 1
        options = UpstreamOptions(server_params, parsed_directives, backup_servers)
        write_upstream(tmp_path, f"u{index}", options)
        # The same options with no live server: backups are rendered as plain servers.
        if backup_servers:
            write_upstream(tmp_path, f"u{index}-nolive", options, live=[])
    assert (accepted, refused) == (220, 140)
    nginx_check(tmp_path)


@pytest.mark.parametrize("method", ["hash $request_uri consistent", "ip_hash", "random", "random two least_conn"])
def test_refused_backup_combination_really_is_refused_by_nginx(tmp_path: Path, nginx_check, method: str) -> None:
    parsed = directives(method)
    backups = parse_backup_servers(["127.0.0.9:9090"])
    with pytest.raises(ValueError):
        check_combination((), parsed, backups)
    # Render it anyway, bypassing the check: nginx must refuse it.
    write_upstream(tmp_path, "refused", UpstreamOptions((), parsed, backups))
    with pytest.raises(NginxConfigError, match='does not support parameter "backup"'):
        nginx_check(tmp_path)


@pytest.mark.parametrize(
    ("line", "nginx_says"),
    [
        ("server 127.0.0.1:80 backup;", "no servers in upstream"),  # why server_params refuses backup
        ("server 127.0.0.1:80 slow_start=30s;", 'invalid parameter "slow_start=30s"'),
        ("server 127.0.0.1:80 fail_timeout=500ms;", 'invalid parameter "fail_timeout=500ms"'),
        ("server 127.0.0.1:80 weight=0;", 'invalid parameter "weight=0"'),
        ("zone z 16k; server 127.0.0.1:80;", "is too small"),
        ("zone z; server 127.0.0.1:80;", "zero size"),
        ("zone z 1g; server 127.0.0.1:80;", "invalid zone size"),
        ("keepalive 0; server 127.0.0.1:80;", 'invalid value "0"'),
        ("hash $no_such_variable; server 127.0.0.1:80;", "unknown"),
        ("least_time header; server 127.0.0.1:80;", "unknown directive"),
    ],
)
def test_what_options_refuse_nginx_refuses_too(tmp_path: Path, nginx_check, line: str, nginx_says: str) -> None:
    (tmp_path / "x.upstream").write_text(f"upstream x {{ {line} }}\n")
    with pytest.raises(NginxConfigError, match=nginx_says):
        nginx_check(tmp_path)


def test_server_params_backup_would_leave_no_primary(tmp_path: Path, nginx_check) -> None:
    """Why ``backup`` is not a server_params entry: every registry server would be a backup."""
    options = UpstreamOptions(server_params=(("backup", ""),), backup_servers=parse_backup_servers(["127.0.0.9:1"]))
    write_upstream(tmp_path, "allbackup", options)
    with pytest.raises(NginxConfigError, match="no servers in upstream"):
        nginx_check(tmp_path)
