"""Property tests: no registry input can crash a parser or inject nginx syntax.

* Every format, forced or ``auto``, returns a Server or a Skip for arbitrary
  child names and data -- both random bytes and structured, realistic
  children (Dubbo URLs, Nerve names, JSON records) whose fields come from a
  hostile alphabet holding ``; { } $`` quotes, white space and newlines.
* Every Server holds only safe values, every rendered ``.upstream`` file
  passes Debian's ``nginx -t`` (collected over a whole Hypothesis run and
  checked in one nginx call), and every dyups body is nothing but
  ``server ...;`` statements and allow-listed directives.
* The option parsers turn any input into ValueError or a valid result.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reloader.assemble import UpstreamOptions, assemble_upstream
from reloader.durations import parse_duration
from reloader.formats import FORMAT_NAMES, FORMATS, MAX_WEIGHT, FormatOptions, Skip, parse_instance
from reloader.model import Server, Upstream
from reloader.options import (
    check_combination,
    parse_backup_servers,
    parse_server_params,
    parse_upstream_directives,
)
from reloader.render import render_dyups_body, render_file

# Examples per test; the file runs about 9,000 examples in total.
FAST = settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
THOROUGH = settings(FAST, max_examples=1500)

# ---------------------------------------------------------------------------
# what safe output looks like

SAFE_HOST = re.compile(r"[a-z0-9.:-]{1,253}")
ADDRESS = r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9a-f:.]+\]|[a-z0-9.-]+):[0-9]{1,5}"
SERVER_STATEMENT = (
    rf"server {ADDRESS}(?: weight=[1-9][0-9]*)?"
    r"(?: (?:max_fails=[0-9]+|max_conns=[0-9]+|fail_timeout=[0-9]+s))*(?: backup)?(?: down)?"
)
HASH_KEY = r"(?:[A-Za-z0-9_.:/=&?%@,+~!*\[\]-]|\$[A-Za-z_][A-Za-z0-9_]*)+"
DIRECTIVE = (
    r"(?:least_conn|ip_hash|random(?: two(?: least_conn)?)?"
    rf"|hash {HASH_KEY}(?: consistent)?"
    r"|keepalive [1-9][0-9]*|keepalive_timeout [0-9]+m?s|keepalive_requests [1-9][0-9]*"
    r"|zone [A-Za-z0-9_-]+ [1-9][0-9]*[km]?)"
)
DYUPS_BODY = re.compile(rf"(?:(?:{DIRECTIVE}|{SERVER_STATEMENT});)+")
DIRECTIVE_RE = re.compile(DIRECTIVE)


def assert_safe_server(server: Server) -> None:
    assert isinstance(server, Server)
    assert SAFE_HOST.fullmatch(server.host), server
    assert type(server.port) is int and 1 <= server.port <= 65535, server
    assert type(server.weight) is int and 1 <= server.weight <= MAX_WEIGHT, server
    assert type(server.down) is bool and server.backup is False and server.params == (), server
    if ":" in server.host:
        assert str(ipaddress.IPv6Address(server.host)) == server.host


def assert_result(result: object) -> None:
    assert isinstance(result, (Server, Skip)), result
    if isinstance(result, Server):
        assert_safe_server(result)
    else:
        assert isinstance(result.reason, str) and result.reason and isinstance(result.quiet, bool)
        assert len(result.reason) < 1000 and "\n" not in result.reason


# ---------------------------------------------------------------------------
# strategies: hostile building blocks

HOSTILE_CHARS = ";{}$ \t\n\r#\"'\\"
hostile_text = st.text(alphabet=st.sampled_from(list(HOSTILE_CHARS + "ab09.:-_[]%/@?&=")), max_size=12)
hostnames = st.from_regex(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?(\.[A-Za-z][A-Za-z0-9-]{0,8}[A-Za-z0-9])*\.?", fullmatch=True
)
good_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    hostnames,
)
hosts = st.one_of(
    good_hosts,
    st.ip_addresses(v=6).map(lambda a: f"{a}%eth0"),
    st.builds(lambda h, bad: h + bad, good_hosts, hostile_text),
    st.builds(lambda bad, h: bad + h, hostile_text, good_hosts),
    hostile_text,
    st.sampled_from(["10.0.0.1\n", "a\n", "[10.0.0.1]", "999.1.1.1", "-a.b", "${host}", "a;b", "a{b}", ""]),
)
json_hosts = st.one_of(hosts, st.none(), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))
ports = st.one_of(
    st.integers(min_value=1, max_value=65535),
    st.integers(min_value=-3, max_value=70000),
    st.integers(min_value=1, max_value=65535).map(str),
    st.builds(lambda p, bad: f"{p}{bad}", st.integers(1, 65535), hostile_text),
    hostile_text,
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.sampled_from(["８０", "0080", "+80", " 80"]),
)
weights = st.one_of(
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=-5, max_value=MAX_WEIGHT + 5),
    st.integers(min_value=0, max_value=200).map(str),
    st.sampled_from(["-1", "1.5", "", " 7 ", "1e3", "٣", str(2**70)]),
    hostile_text,
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text)
format_options = st.builds(
    FormatOptions,
    protocol=st.sampled_from(["dubbo", "tri", "rest", "DUBBO", "x;y"]),
    endpoint=st.one_of(st.none(), st.sampled_from(["http", "aurora", "ipc", "classpath:org.example.ipc", "a;b"])),
    port_field=st.sampled_from([None, "port", "sslPort"]),
)


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


# ---------------------------------------------------------------------------
# strategies: structured children, one per format


@st.composite
def dubbo_children(draw: st.DrawFn) -> tuple[str, bytes]:
    proto = draw(st.sampled_from(["dubbo", "dubbo", "tri", "rest", "consumer"]) | hostile_text)
    host = draw(hosts)
    port = draw(ports)
    shape = draw(st.sampled_from(["plain", "bracket", "userinfo", "noport"]))
    authority = {
        "plain": f"{host}:{port}",
        "bracket": f"[{host}]:{port}",
        "userinfo": f"user:pw@{host}:{port}",
        "noport": f"{host}",
    }[shape]
    params = draw(
        st.dictionaries(
            st.sampled_from(["weight", "default.weight", "disabled", "enabled", "side", "version", "anyhost"])
            | hostile_text,
            st.sampled_from(["true", "false", "TRUE", "0", "50", "100", "-1", ""]) | weights.map(str) | hostile_text,
            max_size=5,
        )
    )
    query = "&".join(f"{key}={value}" for key, value in params.items())
    url = f"{proto}://{authority}/com.foo.Svc?{query}"
    encoding = draw(st.sampled_from(["java", "java", "plus", "lower", "broken"]))
    child = quote(url, safe="*-_.")
    if encoding == "plus":
        child = child.replace("%20", "+")
    elif encoding == "lower":
        child = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), child)
    elif encoding == "broken":
        child = child + draw(st.sampled_from(["%", "%F", "%FF", "%C3", "%zz"]))
    data = draw(st.sampled_from([b"", b"10.0.0.1", b"\xac\xed\x00\x05"]) | st.binary(max_size=20))
    return child, data


@st.composite
def nerve_objects(draw: st.DrawFn) -> dict:
    obj = {"host": draw(json_hosts), "port": draw(ports)}
    if draw(st.booleans()):
        obj["weight"] = draw(weights)
    if draw(st.booleans()):
        obj["name"] = draw(hostile_text)
    if draw(st.booleans()):
        del obj[draw(st.sampled_from(["host", "port"]))]
    return obj


@st.composite
def smartstack_children(draw: st.DrawFn) -> tuple[str, bytes]:
    payload = draw(st.one_of(nerve_objects().map(lambda o: json.dumps(o).encode()), st.binary(max_size=40)))
    encoded = base64.urlsafe_b64encode(payload).decode()
    if draw(st.booleans()):
        encoded = encoded.rstrip("=")
    length = len(encoded) + draw(st.sampled_from([0, 0, 0, -1, 1, 4]))
    suffix = draw(st.sampled_from(["_0000000001", "_", "_12", "", "_x", "_1\n"]))
    return f"base64_{max(length, 0)}_{encoded}{suffix}", draw(st.sampled_from([b"", b"{}"]))


def endpoint_objects() -> st.SearchStrategy[object]:
    return st.one_of(
        st.builds(lambda h, p: {"host": h, "port": p}, json_hosts, ports),
        json_scalars,
    )


@st.composite
def serverset_children(draw: st.DrawFn) -> tuple[str, bytes]:
    child = draw(st.sampled_from(["member_0000000001", "member_", "vector_0000000001", "leader"]) | hostile_text)
    obj = {
        "serviceEndpoint": draw(endpoint_objects()),
        "additionalEndpoints": draw(
            st.one_of(
                st.dictionaries(st.sampled_from(["http", "aurora", "admin"]), endpoint_objects(), max_size=3),
                json_scalars,
            )
        ),
        "status": draw(st.sampled_from(["ALIVE", "ALIVE", "DEAD", "STARTING", "STOPPING", "alive"]) | json_scalars),
        "shard": draw(st.integers(0, 9)),
    }
    return child, dumps(obj)


@st.composite
def curator_children(draw: st.DrawFn) -> tuple[str, bytes]:
    obj = {
        "name": "orders",
        "id": draw(hostile_text),
        "address": draw(json_hosts),
        "port": draw(ports),
        "sslPort": draw(ports),
        "payload": draw(
            st.one_of(
                st.builds(
                    lambda status, weight: {"metadata": {"instance_status": status, "weight": weight}},
                    st.sampled_from(["UP", "UP", "DOWN", "OUT_OF_SERVICE"]) | json_scalars,
                    weights,
                ),
                json_scalars,
            )
        ),
        "enabled": draw(st.sampled_from([True, False, "false", None])),
        "serviceType": "DYNAMIC",
    }
    child = draw(st.sampled_from(["3b5e6a8c-1d2f-4a6b-9c0e-7f8a9b0c1d2e", "10.0.0.5:20880"]) | hostile_text)
    return child, dumps(obj)


@st.composite
def yarn_children(draw: st.DrawFn) -> tuple[str, bytes]:
    def endpoints() -> st.SearchStrategy[object]:
        good = st.builds(lambda h, p: {"host": h, "port": str(p)}, good_hosts, st.integers(1, 65535))
        address = st.one_of(
            good,
            good,
            good,
            st.builds(lambda h, p: {"host": h, "port": p}, json_hosts, ports),
            st.builds(lambda h, p: [h, p], json_hosts, ports),
            json_scalars,
        )
        endpoint = st.builds(
            lambda api, kind, addresses: {
                "api": api,
                "addressType": kind,
                "protocolType": "hadoop/IPC",
                "addresses": addresses,
            },
            st.sampled_from(["ipc", "http", "classpath:org.example.ipc"]) | hostile_text,
            st.sampled_from(["host/port", "host/port", "host/port", "uri"]) | json_scalars,
            st.lists(address, min_size=1, max_size=3) | st.lists(address, max_size=1) | json_scalars,
        )
        return st.lists(endpoint, min_size=1, max_size=3) | st.lists(endpoint | json_scalars, max_size=3) | json_scalars

    obj = {
        "type": draw(st.sampled_from(["JSONServiceRecord", "JSONServiceRecord", "Other"])),
        "external": draw(endpoints()),
        "internal": draw(endpoints()),
        "yarn:persistence": "container",
    }
    return draw(hostile_text), dumps(obj)


@st.composite
def generic_children(draw: st.DrawFn) -> tuple[str, bytes]:
    child = draw(st.sampled_from(["i-0a1b_0000000001", "10.0.0.1:80"]) | hostile_text)
    return child, dumps(draw(nerve_objects()))


@st.composite
def text_children(draw: st.DrawFn) -> tuple[str, bytes]:
    host = draw(hosts)
    if ":" in host and draw(st.booleans()):
        host = f"[{host}]"
    text = f"{host}:{draw(ports)}"
    if draw(st.booleans()):
        text += f":{draw(weights)}"
    text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", "\n", "\r\n", " x"]))
    return draw(st.sampled_from(["192.168.1.10_8080", "node"]) | hostile_text), text.encode("utf-8", "surrogatepass")


@st.composite
def name_children(draw: st.DrawFn) -> tuple[str, bytes]:
    host = draw(hosts)
    if ":" in host or draw(st.integers(0, 9)) == 0:
        host = f"[{host}]"
    data = draw(st.one_of(weights.map(lambda w: str(w).encode("utf-8", "surrogatepass")), st.binary(max_size=16)))
    return f"{host}:{draw(ports)}", data


random_children = st.tuples(st.text(max_size=40), st.binary(max_size=80))
# Children that are usually served, so generated fleets are not mostly empty.
good_children = st.one_of(
    st.builds(
        lambda h, p, w: (f"[{h}]:{p}" if ":" in h else f"{h}:{p}", str(w).encode()),
        good_hosts,
        st.integers(1, 65535),
        st.integers(0, 300),
    ),
    st.builds(
        lambda h, p, w: ("i-1_0000000001", dumps({"host": h, "port": p, "weight": w})),
        good_hosts,
        st.integers(1, 65535),
        st.integers(0, 300),
    ),
    st.builds(
        lambda h, p, w: ("uuid", dumps({"address": h, "port": p, "payload": {"metadata": {"weight": w}}})),
        good_hosts,
        st.integers(1, 65535),
        weights,
    ),
    st.builds(
        lambda h, p, w: (quote(f"dubbo://{h}:{p}/com.foo.Svc?weight={w}", safe=""), b""),
        good_hosts,
        st.integers(1, 65535),
        st.integers(0, 300),
    ),
)
structured_children = st.one_of(
    dubbo_children(),
    smartstack_children(),
    serverset_children(),
    curator_children(),
    yarn_children(),
    generic_children(),
    text_children(),
    name_children(),
)
any_children = st.one_of(structured_children, random_children)


# ---------------------------------------------------------------------------
# 1. parsers never raise


def _surrogate_free(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


@THOROUGH
@given(child=any_children, options=format_options)
def test_every_format_returns_server_or_skip(child: tuple[str, bytes], options: FormatOptions) -> None:
    name, data = child
    name = _surrogate_free(name)
    for fmt in FORMATS:
        # The parsers themselves, without parse_instance's last-resort guard.
        assert isinstance(fmt.detect(name, data), bool)
        assert_result(fmt.parse(name, data, options))
    for format_name in FORMAT_NAMES:
        result = parse_instance(name, data, format_name, options)
        assert_result(result)
        assert not (isinstance(result, Skip) and "failed on this child" in result.reason), result


@FAST
@given(name=st.text(max_size=200), data=st.one_of(st.none(), st.binary(max_size=300)))
def test_random_bytes_never_raise(name: str, data: bytes | None) -> None:
    name = _surrogate_free(name)
    for fmt in FORMATS:
        assert_result(fmt.parse(name, b"" if data is None else data, FormatOptions()))
    result = parse_instance(name, data)
    assert_result(result)
    assert not (isinstance(result, Skip) and "failed on this child" in result.reason), result


@FAST
@given(child=structured_children)
def test_auto_matches_the_detected_format(child: tuple[str, bytes]) -> None:
    name, data = child
    name = _surrogate_free(name)
    detected = next((fmt for fmt in FORMATS if fmt.detect(name, data)), None)
    result = parse_instance(name, data)
    if detected is None:
        assert isinstance(result, Skip) and "unrecognised" in result.reason
    else:
        assert result == detected.parse(name, data, FormatOptions())


# ---------------------------------------------------------------------------
# 2. rendered output is valid nginx and a strict dyups body

KNOWN_VARIABLES = ["$request_uri", "$remote_addr", "$host", "$arg_user", "$http_x_tenant", "$cookie_sid", "$uri"]
# Pieces are joined with "/": a letter right after "$uri" would make it another (unknown) variable.
hash_keys = st.lists(
    st.sampled_from(KNOWN_VARIABLES) | st.from_regex(r"[A-Za-z0-9_.:=&?%@,+~!*-]{1,6}", fullmatch=True),
    min_size=1,
    max_size=3,
).map("/".join)
methods = st.one_of(
    st.just([]),
    st.sampled_from([["least_conn"], ["ip_hash"], ["random"], ["random two"], ["random two least_conn"]]),
    st.builds(lambda key, consistent: [f"hash {key}{' consistent' if consistent else ''}"], hash_keys, st.booleans()),
)
extras = st.lists(
    st.sampled_from(
        [
            "keepalive 16",
            "keepalive_timeout 1.5s",
            "keepalive_requests 100",
            "zone ZONE 64k",
            "keepalive_timeout 60",
            "keepalive 1",
        ]
    ),
    unique_by=lambda directive: directive.split()[0],
    max_size=4,
)
server_params_values = st.fixed_dictionaries(
    {},
    optional={
        "weight": st.integers(1, 100),
        "max_fails": st.integers(0, 10),
        "fail_timeout": st.sampled_from([0, 10, "30s", "1m"]),
        "max_conns": st.integers(0, 1000),
        "down": st.booleans(),
    },
)
backup_lists = st.lists(
    st.builds(
        lambda a, p: f"{a}:{p}", st.sampled_from(["127.0.0.9", "[::1]", "backup.example"]), st.integers(1, 65535)
    ),
    max_size=2,
    unique=True,
)


@st.composite
def upstream_options(draw: st.DrawFn) -> UpstreamOptions:
    directives = parse_upstream_directives(draw(methods) + draw(extras), allow_variables=True)
    server_params = parse_server_params(draw(server_params_values))
    backups = parse_backup_servers(draw(backup_lists))
    try:
        check_combination(server_params, directives, backups)
    except ValueError:
        backups = ()
    return UpstreamOptions(server_params, directives, backups)


def nginx_view(upstream: Upstream, name: str) -> Upstream:
    """The upstream as nginx -t may check it offline and quickly: a unique name and zone, host names as localhost.

    ``nginx -t`` resolves host names, and there is no DNS here; a host name's
    characters are checked by assert_safe_server instead.
    """

    def offline(server: Server) -> Server:
        try:
            ipaddress.ip_address(server.host)
        except ValueError:
            return replace(server, host="localhost")
        return server

    directives = tuple(re.sub(r"^zone \S+", f"zone {name}", d) for d in upstream.directives)
    servers = tuple(map(offline, upstream.servers))
    if any(d.startswith("hash ") and d.endswith(" consistent") for d in directives):
        # nginx builds 160 ring points per unit of weight for a consistent
        # hash: one server of weight 200,000 costs nginx -t 7 s of CPU. The
        # weights' syntax is what this check is about, so they are kept small.
        servers = tuple(replace(s, weight=min(s.weight, 100)) for s in servers)
    return replace(upstream, name=name, directives=directives, servers=servers)


def test_rendered_upstreams_pass_nginx_and_dyups_bodies_are_strict(tmp_path: Path, nginx_check) -> None:
    files: dict[str, str] = {}

    @FAST
    @given(children=st.lists(good_children | any_children, max_size=6), options=upstream_options(), fmt=format_options)
    def collect(children: list[tuple[str, bytes]], options: UpstreamOptions, fmt: FormatOptions) -> None:
        live = [parse_instance(_surrogate_free(name), data, "auto", fmt) for name, data in children]
        upstream = assemble_upstream("svc", [s for s in live if isinstance(s, Server)], options)
        if not upstream.servers:
            return  # the pipeline's guards never serve an empty upstream
        for server in upstream.servers:
            assert SAFE_HOST.fullmatch(server.host), server
        body = render_dyups_body(upstream)
        assert DYUPS_BODY.fullmatch(body), body
        text = render_file(upstream)
        assert text.count(";") == body.count(";") and "{" not in text.split("{", 1)[1]
        name = f"u{len(files)}"
        files[name] = render_file(nginx_view(upstream, name))

    collect()
    assert len(files) > 200
    for name, text in files.items():
        (tmp_path / f"{name}.upstream").write_text(text)
    nginx_check(tmp_path)  # one nginx -t for the whole run


# ---------------------------------------------------------------------------
# 3. option parsers: ValueError or a valid result

yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), hostile_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12) | hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)
directive_names = st.sampled_from(
    [
        "least_conn",
        "ip_hash",
        "random",
        "hash",
        "keepalive",
        "keepalive_timeout",
        "keepalive_requests",
        "zone",
        "server",
        "least_time",
    ]
)
directive_args = st.one_of(
    st.sampled_from(
        [
            "two",
            "least_conn",
            "consistent",
            "$request_uri",
            "32",
            "0",
            "64k",
            "1m",
            "16k",
            "1.5s",
            "500ms",
            "z",
            "a$b",
            "$",
            "$1",
        ]
    ),
    hostile_text,
    st.text(max_size=6),
)
directive_texts = st.builds(
    lambda name, args, sep: sep.join([name, *args]),
    directive_names,
    st.lists(directive_args, max_size=3),
    st.sampled_from([" ", "  ", "\t", " ; "]),
)
param_mappings = st.dictionaries(
    st.sampled_from(["weight", "max_fails", "fail_timeout", "max_conns", "down", "backup", "slow_start"])
    | hostile_text,
    st.one_of(
        st.integers(-5, 2_000_000),
        st.booleans(),
        st.sampled_from(["10s", "500ms", "1m", "x", "1d"]),
        hostile_text,
        st.floats(),
    ),
    max_size=5,
)


@FAST
@given(value=st.one_of(st.lists(directive_texts, max_size=5), yaml_values), allow_variables=st.booleans())
def test_parse_upstream_directives_is_valueerror_or_valid(value: object, allow_variables: bool) -> None:
    try:
        result = parse_upstream_directives(value, allow_variables=allow_variables)
    except ValueError:
        return
    assert isinstance(result, tuple)
    names = [directive.split(" ", 1)[0] for directive in result]
    assert len(names) == len(set(names))
    assert sum(name in ("least_conn", "ip_hash", "random", "hash") for name in names) <= 1
    for directive in result:
        assert DIRECTIVE_RE.fullmatch(directive), directive
        assert allow_variables or "$" not in directive


@FAST
@given(value=st.one_of(param_mappings, yaml_values))
def test_parse_server_params_is_valueerror_or_valid(value: object) -> None:
    try:
        result = parse_server_params(value)
    except ValueError:
        return
    server = Server("10.0.0.1", 80)
    for name, _value in result:
        assert name in ("weight", "max_fails", "fail_timeout", "max_conns", "down")
    upstream = assemble_upstream("x", [server], UpstreamOptions(server_params=result))
    assert DYUPS_BODY.fullmatch(render_dyups_body(upstream)), result


@FAST
@given(
    value=st.one_of(
        st.lists(st.one_of(st.builds(lambda h, p: f"{h}:{p}", hosts, ports), hostile_text), max_size=4), yaml_values
    )
)
def test_parse_backup_servers_is_valueerror_or_valid(value: object) -> None:
    try:
        result = parse_backup_servers(value)
    except ValueError:
        return
    assert len({server.endpoint for server in result}) == len(result)
    for server in result:
        assert_safe_server(server)


@FAST
@given(value=st.one_of(yaml_values, st.from_regex(r"\s*[0-9]{0,4}(\.[0-9]{0,3})?\s*(ms|s|m|h|d)?\s*", fullmatch=True)))
def test_parse_duration_is_valueerror_or_a_non_negative_number(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return
    assert isinstance(seconds, float) and seconds >= 0 and seconds == seconds and seconds != float("inf")


@FAST
@given(params=param_mappings, directives=st.lists(directive_texts, max_size=4), backups=backup_lists)
def test_check_combination_is_valueerror_or_none(params: dict, directives: list[str], backups: list[str]) -> None:
    try:
        parsed = (
            parse_server_params(params),
            parse_upstream_directives(directives, allow_variables=True),
            parse_backup_servers(backups),
        )
    except ValueError:
        return
    try:
        assert check_combination(*parsed) is None
    except ValueError as error:
        assert "backup" in str(error)


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_each_format_is_exercised_by_the_structured_strategies(format_name: str) -> None:
    """Guard against strategies that silently stop reaching a format."""
    strategy = {
        "auto": structured_children,
        "dubbo": dubbo_children(),
        "smartstack": smartstack_children(),
        "serverset": serverset_children(),
        "curator": curator_children(),
        "yarn": yarn_children(),
        "json": generic_children(),
        "text": text_children(),
        "name": name_children(),
    }[format_name]
    served: list[Server] = []

    @settings(FAST, max_examples=300)
    @given(child=strategy)
    def run(child: tuple[str, bytes]) -> None:
        name, data = child
        result = parse_instance(_surrogate_free(name), data, format_name)
        if isinstance(result, Server):
            served.append(result)

    run()
    assert served, f"no {format_name} child was ever served"
