"""Every registry format's rules: detection, parsing, weights, left-out children."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from reloader import formats
from reloader.assemble import assemble_upstream
from reloader.formats import (
    FORMAT_NAMES,
    FORMATS,
    MAX_DATA_BYTES,
    MAX_WEIGHT,
    FormatOptions,
    Skip,
    detect_format,
    get_format,
    parse_instance,
)
from reloader.model import Server
from reloader.render import render_file


def server(host: str, port: int, weight: int = 1, down: bool = False) -> Server:
    return Server(host=host, port=port, weight=weight, down=down)


def is_skip(result: object, *words: str, quiet: bool = False) -> bool:
    """True when ``result`` is a Skip with that quietness whose reason holds every word."""
    return (
        isinstance(result, Skip)
        and result.quiet == quiet
        and all(word.lower() in result.reason.lower() for word in words)
    )


def jdata(obj: object) -> bytes:
    return json.dumps(obj).encode()


# ---------------------------------------------------------------------------
# registry


def test_format_names_are_auto_then_every_format_in_detection_order() -> None:
    assert FORMAT_NAMES == ("auto", "dubbo", "smartstack", "serverset", "curator", "yarn", "json", "text", "name")
    assert tuple(fmt.name for fmt in FORMATS) == FORMAT_NAMES[1:]
    assert all(fmt.written_by for fmt in FORMATS)


def test_get_format_by_name() -> None:
    for fmt in FORMATS:
        assert get_format(fmt.name) is fmt
    with pytest.raises(KeyError):
        get_format("auto")
    with pytest.raises(KeyError):
        get_format("nope")


def test_unknown_forced_format_is_a_skip() -> None:
    assert is_skip(parse_instance("10.0.0.1:80", b"", "nope"), "unknown format")


def test_none_data_is_empty_data() -> None:
    assert parse_instance("10.0.0.1:80", None) == parse_instance("10.0.0.1:80", b"") == server("10.0.0.1", 80)
    assert parse_instance("10.0.0.1:80", bytearray(b"3")) == server("10.0.0.1", 80, 3)


def test_default_options() -> None:
    assert FormatOptions() == FormatOptions(protocol="dubbo", endpoint=None, port_field=None)


# ---------------------------------------------------------------------------
# dubbo


def dubbo_child(url: str) -> str:
    """Encode like java.net.URLEncoder."""
    return quote(url, safe="*-_.").replace("%20", "+")


SVC = "com.foo.Svc"


def provider(address: str = "10.0.0.5:20880", query: str = "anyhost=true&side=provider", proto: str = "dubbo") -> str:
    return dubbo_child(f"{proto}://{address}/{SVC}?interface={SVC}&{query}")


class TestDubbo:
    def test_host_port_and_default_weight_100(self) -> None:
        assert parse_instance(provider(), b"") == server("10.0.0.5", 20880, 100)

    def test_example_from_the_brief(self) -> None:
        child = "dubbo%3A%2F%2F10.0.0.5%3A20880%2Fcom.foo.Svc%3Fanyhost%3Dtrue%26weight%3D50%26disabled%3Dfalse"
        assert parse_instance(child, b"") == server("10.0.0.5", 20880, 50)

    def test_lowercase_percent_escapes(self) -> None:
        child = "dubbo%3a%2f%2f10.0.0.5%3a20880%2fcom.foo.Svc"
        assert detect_format(child, b"") is get_format("dubbo")
        assert parse_instance(child, b"") == server("10.0.0.5", 20880, 100)

    @pytest.mark.parametrize(
        ("weight", "expected"),
        [
            ("50", server("10.0.0.5", 20880, 50)),
            ("1", server("10.0.0.5", 20880, 1)),
            ("0", server("10.0.0.5", 20880, 1, down=True)),
            ("", server("10.0.0.5", 20880, 100)),
        ],
    )
    def test_weights(self, weight: str, expected: Server) -> None:
        assert parse_instance(provider(query=f"weight={weight}"), b"") == expected

    @pytest.mark.parametrize(
        ("weight", "word"),
        [("-1", "negative"), ("abc", "not an integer"), ("1.5", "not an integer"), (str(MAX_WEIGHT + 1), "limit")],
    )
    def test_bad_weights_are_skipped(self, weight: str, word: str) -> None:
        assert is_skip(parse_instance(provider(query=f"weight={weight}"), b""), "weight", word)

    def test_default_weight_parameter(self) -> None:
        assert parse_instance(provider(query="default.weight=30"), b"") == server("10.0.0.5", 20880, 30)

    def test_disabled_true_is_left_out_loudly(self) -> None:
        result = parse_instance(provider(query="disabled=true"), b"")
        assert is_skip(result, "disabled", quiet=False)
        assert is_skip(parse_instance(provider(query="disabled=TRUE"), b""), "disabled")

    def test_enabled_false_without_disabled_is_left_out(self) -> None:
        assert is_skip(parse_instance(provider(query="enabled=false"), b""), "disabled")

    def test_disabled_false_wins_over_enabled_false(self) -> None:
        result = parse_instance(provider(query="disabled=false&enabled=false"), b"")
        assert result == server("10.0.0.5", 20880, 100)

    def test_enabled_true_is_served(self) -> None:
        assert isinstance(parse_instance(provider(query="enabled=true"), b""), Server)

    def test_other_protocols_are_quietly_ignored(self) -> None:
        for proto in ("tri", "rest", "consumer", "override"):
            assert is_skip(parse_instance(provider(proto=proto), b""), "protocol", quiet=True)

    def test_protocol_option_selects_urls(self) -> None:
        options = FormatOptions(protocol="tri")
        assert parse_instance(provider(proto="tri", address="10.0.0.5:50051"), b"", "auto", options) == server(
            "10.0.0.5", 50051, 100
        )
        assert is_skip(parse_instance(provider(), b"", "auto", options), "protocol", quiet=True)

    def test_protocol_comparison_ignores_case(self) -> None:
        assert isinstance(parse_instance(provider(), b"", "dubbo", FormatOptions(protocol="DUBBO")), Server)

    def test_unbracketed_ipv6_as_dubbo_writes_it(self) -> None:
        assert parse_instance(provider(address="fd00::5:20880"), b"") == server("fd00::5", 20880, 100)

    def test_bracketed_ipv6_and_scope_is_dropped(self) -> None:
        assert parse_instance(provider(address="[fd00:0::5]:20880"), b"") == server("fd00::5", 20880, 100)
        assert parse_instance(provider(address="fe80::1%eth0:20880"), b"") == server("fe80::1", 20880, 100)

    def test_credentials_in_the_url_are_dropped(self) -> None:
        assert parse_instance(provider(address="admin:secret@10.0.0.5:20880"), b"") == server("10.0.0.5", 20880, 100)

    def test_host_name(self) -> None:
        assert parse_instance(provider(address="Provider-1.Example.com:20880"), b"") == server(
            "provider-1.example.com", 20880, 100
        )

    @pytest.mark.parametrize(
        "address",
        [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:70000",
            "10.0.0.5:80x",
            "bad;host:20880",
            "a{b}:20880",
            "$host:20880",
            "a b:20880",
            "a\nb:20880",
            "[10.0.0.5]:20880",
            ":20880",
            "[fd00::5]",
        ],
    )
    def test_bad_addresses_are_skipped(self, address: str) -> None:
        result = parse_instance(provider(address=address), b"")
        assert isinstance(result, Skip) and not result.quiet, (address, result)

    def test_invalid_utf8_escape_is_skipped(self) -> None:
        assert is_skip(parse_instance("dubbo%3A%2F%2F10.0.0.5%3A20880%2F%FF", b""), "utf-8")
        assert is_skip(parse_instance("dubbo%3A%2F%2F10.0.0.5%3A20880%2F%FF", b"", "dubbo"), "utf-8")

    def test_data_is_ignored_even_when_binary(self) -> None:
        assert parse_instance(provider(), b"\xac\xed\x00\x05t\x00\x0c10.0.0.5") == server("10.0.0.5", 20880, 100)

    def test_forced_on_a_non_url_is_a_skip(self) -> None:
        assert is_skip(parse_instance("10.0.0.5:20880", b"", "dubbo"), "not a URL-encoded provider URL")

    def test_versions_on_one_endpoint_merge_to_the_higher_weight(self) -> None:
        children = [
            provider(query="version=1.0.0&weight=100"),
            provider(query="version=2.0.0&weight=200"),
            provider(proto="tri", address="10.0.0.5:50051"),
        ]
        parsed = [parse_instance(child, b"") for child in children]
        live = [result for result in parsed if isinstance(result, Server)]
        assert assemble_upstream("svc", live).servers == (server("10.0.0.5", 20880, 200),)


# ---------------------------------------------------------------------------
# smartstack


def nerve_child(obj: object, seq: str | None = "0000000003", pad: bool = True) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()
    if not pad:
        encoded = encoded.rstrip("=")
    return f"base64_{len(encoded)}_{encoded}_{seq if seq is not None else ''}"


class TestSmartStack:
    def test_decodes_the_name(self) -> None:
        child = nerve_child({"host": "10.1.2.3", "port": 3000, "name": "i-1"})
        assert detect_format(child, b"") is get_format("smartstack")
        assert parse_instance(child, b"") == server("10.1.2.3", 3000)

    def test_port_as_string_and_weight(self) -> None:
        assert parse_instance(nerve_child({"host": "10.1.2.3", "port": "3000", "weight": 4}), b"") == server(
            "10.1.2.3", 3000, 4
        )

    def test_weight_zero_is_down(self) -> None:
        assert parse_instance(nerve_child({"host": "10.1.2.3", "port": 3000, "weight": 0}), b"") == server(
            "10.1.2.3", 3000, down=True
        )

    def test_base64_holding_underscores(self) -> None:
        for size in range(12):
            obj = {"host": "10.1.2.3", "port": 3000, "labels": {"k": "?" * size}}
            child = nerve_child(obj)
            if "_" in child[len("base64_") :].split("_", 1)[1][:-11]:
                break
        else:
            pytest.fail("no base64 text with '_' found")
        assert parse_instance(child, b"") == server("10.1.2.3", 3000)

    def test_without_sequence_suffix(self) -> None:
        child = nerve_child({"host": "10.1.2.3", "port": 3000}, seq=None)
        assert child.endswith("_")
        assert parse_instance(child, b"") == server("10.1.2.3", 3000)

    def test_without_padding(self) -> None:
        obj = {"host": "10.1.2.3", "port": 3000, "n": "a"}
        child = nerve_child(obj, pad=False)
        assert parse_instance(child, b"") == server("10.1.2.3", 3000)

    def test_name_wins_over_data(self) -> None:
        child = nerve_child({"host": "10.1.2.3", "port": 3000})
        assert parse_instance(child, jdata({"host": "10.9.9.9", "port": 1})) == server("10.1.2.3", 3000)

    def test_wrong_length_is_skipped(self) -> None:
        child = nerve_child({"host": "10.1.2.3", "port": 3000})
        length = int(child.split("_")[1])
        wrong = child.replace(f"base64_{length}_", f"base64_{length - 4}_", 1)
        assert is_skip(parse_instance(wrong, b""), "base64 characters")

    @pytest.mark.parametrize(
        ("child", "word"),
        [
            ("base64_4_a$b=_1", "not url-safe base64"),
            ("base64_4_AAAA_1", "not json"),
            ("base64_4_/w==_1", "not url-safe"),
            (f"base64_4_{base64.urlsafe_b64encode(b'[1]').decode()}_1", "list"),
            ("base64_4_eyJ9_1", "not json"),
        ],
    )
    def test_bad_payloads_are_skipped(self, child: str, word: str) -> None:
        assert is_skip(parse_instance(child, b""), word), parse_instance(child, b"")

    def test_non_utf8_payload_is_skipped(self) -> None:
        encoded = base64.urlsafe_b64encode(b"\xff\xfe{}").decode()
        assert is_skip(parse_instance(f"base64_{len(encoded)}_{encoded}_1", b""), "utf-8")

    def test_missing_host_and_bad_host(self) -> None:
        assert is_skip(parse_instance(nerve_child({"port": 3000}), b""), "no 'host'")
        assert is_skip(parse_instance(nerve_child({"host": "a;b", "port": 3000}), b""), "nerve")


# ---------------------------------------------------------------------------
# serverset


def member(status: str | None = "ALIVE", **extra: object) -> bytes:
    obj: dict = {
        "serviceEndpoint": {"host": "10.2.0.11", "port": 31024},
        "additionalEndpoints": {
            "http": {"host": "10.2.0.11", "port": 31025},
            "admin": {"host": "10.2.0.11", "port": 9990},
        },
        "shard": 0,
    }
    if status is not None:
        obj["status"] = status
    obj.update(extra)
    return jdata(obj)


class TestServerSet:
    def test_alive_member(self) -> None:
        assert detect_format("member_0000000001", member()) is get_format("serverset")
        assert parse_instance("member_0000000001", member()) == server("10.2.0.11", 31024)

    @pytest.mark.parametrize("status", ["DEAD", "STARTING", "STOPPING", "STOPPED", "WARNING", "alive"])
    def test_other_statuses_are_left_out(self, status: str) -> None:
        assert is_skip(parse_instance("member_0000000001", member(status)), "status", status)

    def test_missing_status_is_left_out(self) -> None:
        assert is_skip(parse_instance("member_0000000001", member(None)), "status")

    def test_non_member_children_are_quietly_ignored(self) -> None:
        for child in ("vector_0000000001", "leader_0000000001", "10.0.0.1:80", "Member_1"):
            assert is_skip(parse_instance(child, member()), "member_", quiet=True), child

    def test_weight_vectors_are_quietly_ignored_in_auto(self) -> None:
        data = jdata({"vector": [{"select": "member=member_0000000001", "weight": 2.0}]})
        assert is_skip(parse_instance("vector_0000000002", data), quiet=True)

    def test_endpoint_option_picks_an_additional_endpoint(self) -> None:
        options = FormatOptions(endpoint="http")
        assert parse_instance("member_0000000001", member(), "auto", options) == server("10.2.0.11", 31025)

    def test_missing_additional_endpoint_is_skipped(self) -> None:
        result = parse_instance("member_0000000001", member(), "auto", FormatOptions(endpoint="thrift"))
        assert is_skip(result, "no additional endpoint", "thrift")
        no_additional = jdata({"serviceEndpoint": {"host": "10.2.0.11", "port": 1}, "status": "ALIVE"})
        result = parse_instance("member_1", no_additional, "auto", FormatOptions(endpoint="http"))
        assert is_skip(result, "no additional endpoint", "http")

    def test_endpoint_without_weight(self) -> None:
        data = member(serviceEndpoint={"host": "10.2.0.11", "port": 31024, "weight": 7})
        assert parse_instance("member_1", data) == server("10.2.0.11", 31024)

    @pytest.mark.parametrize(
        "endpoint", [None, "10.2.0.11:31024", {"host": "10.2.0.11"}, {"host": "x;y", "port": 1}, {"host": 5, "port": 1}]
    )
    def test_bad_endpoints_are_skipped(self, endpoint: object) -> None:
        result = parse_instance("member_1", member(serviceEndpoint=endpoint))
        assert isinstance(result, Skip) and not result.quiet and "serviceEndpoint" in result.reason

    def test_forced_on_bad_data(self) -> None:
        assert is_skip(parse_instance("member_1", b"", "serverset"), "empty")
        assert is_skip(parse_instance("member_1", b"[]", "serverset"), "list")


# ---------------------------------------------------------------------------
# curator


def instance(**fields: object) -> bytes:
    obj: dict = {
        "name": "orders",
        "id": "3b5e6a8c",
        "address": "10.3.0.21",
        "port": 8080,
        "sslPort": None,
        "payload": {
            "@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
            "metadata": {"instance_status": "UP"},
        },
        "registrationTimeUTC": 1700000001000,
        "serviceType": "DYNAMIC",
        "uriSpec": None,
    }
    obj.update(fields)
    return jdata(obj)


def with_metadata(**metadata: object) -> bytes:
    return instance(payload={"metadata": metadata})


class TestCurator:
    def test_served(self) -> None:
        assert detect_format("3b5e6a8c", instance()) is get_format("curator")
        assert parse_instance("3b5e6a8c", instance()) == server("10.3.0.21", 8080)

    def test_ssl_port_when_port_is_null(self) -> None:
        assert parse_instance("x", instance(port=None, sslPort=8443)) == server("10.3.0.21", 8443)

    def test_ssl_port_when_port_field_says_so(self) -> None:
        options = FormatOptions(port_field="sslPort")
        assert parse_instance("x", instance(sslPort=8443), "auto", options) == server("10.3.0.21", 8443)
        assert is_skip(parse_instance("x", instance(), "auto", options), "sslPort")

    def test_port_field_port_insists_on_port(self) -> None:
        options = FormatOptions(port_field="port")
        assert is_skip(parse_instance("x", instance(port=None, sslPort=8443), "auto", options), "no 'port'")

    def test_only_ssl_port_key_is_detected(self) -> None:
        data = jdata({"address": "10.3.0.21", "sslPort": 8443})
        assert parse_instance("x", data) == server("10.3.0.21", 8443)

    def test_no_port_at_all(self) -> None:
        assert is_skip(parse_instance("x", instance(port=None), "curator"), "sslPort")

    @pytest.mark.parametrize("enabled", [False, "false", "FALSE"])
    def test_disabled_instances_are_left_out(self, enabled: object) -> None:
        assert is_skip(parse_instance("x", instance(enabled=enabled)), "enabled")

    def test_enabled_true_is_served(self) -> None:
        assert isinstance(parse_instance("x", instance(enabled=True)), Server)

    @pytest.mark.parametrize("status", ["DOWN", "OUT_OF_SERVICE", "STARTING", "UNKNOWN", "up", None, 1])
    def test_instance_status_other_than_up_is_left_out(self, status: object) -> None:
        assert is_skip(parse_instance("x", with_metadata(instance_status=status)), "instance_status")

    @pytest.mark.parametrize("payload", [None, {}, {"metadata": None}, {"metadata": {}}, "text", [1]])
    def test_missing_status_is_served(self, payload: object) -> None:
        assert parse_instance("x", instance(payload=payload)) == server("10.3.0.21", 8080)

    @pytest.mark.parametrize(
        ("weight", "expected"),
        [
            (5, 5),
            ("5", 5),
            (0, 1),
            ("0", 1),
            (-3, 1),
            ("-3", 1),
            ("abc", 1),
            (2.5, 1),
            (True, 1),
            (MAX_WEIGHT, MAX_WEIGHT),
            (MAX_WEIGHT + 1, 1),
            (None, 1),
        ],
    )
    def test_metadata_weight_only_when_a_positive_integer(self, weight: object, expected: int) -> None:
        assert parse_instance("x", with_metadata(instance_status="UP", weight=weight)) == server(
            "10.3.0.21", 8080, expected
        )

    def test_ipv6_with_scope(self) -> None:
        assert parse_instance("x", instance(address="fe80::1%eth0")) == server("fe80::1", 8080)
        assert parse_instance("x", instance(address="[2001:db8::1]")) == server("2001:db8::1", 8080)

    def test_dubbo3_application_level_instance(self) -> None:
        """Dubbo 3 names the child ip:port, but the JSON data decides."""
        data = jdata(
            {
                "name": "demo-provider",
                "id": "10.0.0.5:20880",
                "address": "10.0.0.5",
                "port": 20880,
                "sslPort": None,
                "payload": {
                    "@class": "org.apache.dubbo.registry.zookeeper.ZookeeperInstance",
                    "id": "10.0.0.5:20880",
                    "name": "demo-provider",
                    "metadata": {
                        "dubbo.endpoints": '[{"port":20880,"protocol":"dubbo"}]',
                        "dubbo.metadata.revision": "4c8e3f",
                        "timestamp": "1700000000000",
                    },
                },
                "registrationTimeUTC": 1700000000000,
                "serviceType": "DYNAMIC",
                "uriSpec": None,
            }
        )
        assert detect_format("10.0.0.5:20880", data) is get_format("curator")
        assert parse_instance("10.0.0.5:20880", data) == server("10.0.0.5", 20880)

    @pytest.mark.parametrize("address", ["", "a b", "x;y", "${host}", 123, None, "10.0.0.1\n"])
    def test_bad_address(self, address: object) -> None:
        result = parse_instance("x", instance(address=address))
        assert isinstance(result, Skip) and not result.quiet


# ---------------------------------------------------------------------------
# yarn


def endpoint(api: str, host: str = "192.168.1.5", port: object = "1026", kind: str = "host/port") -> dict:
    if kind == "uri":
        return {"api": api, "addressType": "uri", "protocolType": "REST", "addresses": [{"uri": f"http://{host}:1"}]}
    return {"api": api, "addressType": kind, "protocolType": "hadoop/IPC", "addresses": [{"host": host, "port": port}]}


def record(external: list | None = None, internal: list | None = None, **extra: object) -> bytes:
    obj = {
        "type": "JSONServiceRecord",
        "description": "Slider Application Master",
        "external": external if external is not None else [endpoint("classpath:org.apache.slider.appmaster.ipc")],
        "internal": internal if internal is not None else [],
        "yarn:id": "application_1411356758285_0002",
        "yarn:persistence": "application",
    }
    obj.update(extra)
    return jdata(obj)


class TestYarn:
    def test_first_external_host_port_endpoint(self) -> None:
        data = record(
            [
                endpoint("http://", kind="uri"),
                endpoint("ipc", "192.168.1.5", "1026"),
                endpoint("other", "192.168.1.6", 2000),
            ]
        )
        assert detect_format("c1", data) is get_format("yarn")
        assert parse_instance("c1", data) == server("192.168.1.5", 1026)

    def test_named_endpoint_external_then_internal(self) -> None:
        data = record(
            [endpoint("ipc", "192.168.1.5")], [endpoint("agents", "192.168.1.7", 46958), endpoint("ipc", "192.168.1.8")]
        )
        assert parse_instance("c1", data, "auto", FormatOptions(endpoint="agents")) == server("192.168.1.7", 46958)
        assert parse_instance("c1", data, "auto", FormatOptions(endpoint="ipc")) == server("192.168.1.5", 1026)

    def test_named_endpoint_missing_or_not_host_port(self) -> None:
        data = record([endpoint("web", kind="uri")])
        assert is_skip(parse_instance("c1", data, "auto", FormatOptions(endpoint="nope")), "no endpoint", "nope")
        assert is_skip(parse_instance("c1", data, "auto", FormatOptions(endpoint="web")), "addressType")

    def test_no_external_host_port_endpoint(self) -> None:
        assert is_skip(parse_instance("c1", record([endpoint("web", kind="uri")])), "no external host/port")
        assert is_skip(parse_instance("c1", record([], [endpoint("ipc")])), "no external host/port")
        assert is_skip(parse_instance("c1", record(external="nope")), "no external")  # type: ignore[arg-type]

    def test_first_address_only(self) -> None:
        ep = endpoint("ipc")
        ep["addresses"].append({"host": "192.168.1.9", "port": "9"})
        assert parse_instance("c1", record([ep])) == server("192.168.1.5", 1026)

    def test_list_form_address(self) -> None:
        ep = {"api": "ipc", "addressType": "host/port", "addresses": [["192.168.1.5", "1026"]]}
        assert parse_instance("c1", record([ep])) == server("192.168.1.5", 1026)

    @pytest.mark.parametrize(
        "addresses",
        [
            [],
            None,
            [{"host": "192.168.1.5"}],
            [{"host": "a;b", "port": 1}],
            ["192.168.1.5:1026"],
            [{"host": "192.168.1.5", "port": "1026x"}],
        ],
    )
    def test_bad_addresses(self, addresses: object) -> None:
        ep = {"api": "ipc", "addressType": "host/port", "addresses": addresses}
        result = parse_instance("c1", record([ep]))
        assert isinstance(result, Skip) and not result.quiet

    def test_forced_on_another_record_type(self) -> None:
        assert is_skip(parse_instance("c1", jdata({"type": "Other"}), "yarn"), "record type")


# ---------------------------------------------------------------------------
# generic json


class TestGenericJson:
    def test_host_port(self) -> None:
        data = jdata({"host": "10.4.0.5", "port": 8080, "name": "i-0a1b"})
        assert detect_format("i-0a1b_0000000001", data) is get_format("json")
        assert parse_instance("i-0a1b_0000000001", data) == server("10.4.0.5", 8080)

    @pytest.mark.parametrize(
        ("weight", "expected"),
        [
            (3, server("10.4.0.5", 8080, 3)),
            ("3", server("10.4.0.5", 8080, 3)),
            (None, server("10.4.0.5", 8080)),
            (0, server("10.4.0.5", 8080, down=True)),
            (MAX_WEIGHT, server("10.4.0.5", 8080, MAX_WEIGHT)),
        ],
    )
    def test_weights(self, weight: object, expected: Server) -> None:
        assert parse_instance("x", jdata({"host": "10.4.0.5", "port": 8080, "weight": weight})) == expected

    @pytest.mark.parametrize(
        ("weight", "word"),
        [
            (-1, "negative"),
            ("-1", "negative"),
            (2.5, "not an integer"),
            (2.0, "not an integer"),
            (True, "not an integer"),
            ("x", "not an integer"),
            ([1], "not an integer"),
            (MAX_WEIGHT + 1, "limit"),
        ],
    )
    def test_bad_weights(self, weight: object, word: str) -> None:
        assert is_skip(parse_instance("x", jdata({"host": "10.4.0.5", "port": 8080, "weight": weight})), word)

    @pytest.mark.parametrize("port", [0, 65536, -1, "80a", 80.0, True, None, "", "８０"])
    def test_bad_ports(self, port: object) -> None:
        assert is_skip(parse_instance("x", jdata({"host": "10.4.0.5", "port": port}), "json"), "port")

    @pytest.mark.parametrize(
        "host",
        [
            "",
            "a b",
            "a;b",
            "a{b",
            "a}b",
            "$host",
            "a\nb",
            "999.1.1.1",
            "[10.0.0.1]",
            "-bad.example",
            "bad_host",
            "ex ample.com",
        ],
    )
    def test_bad_hosts(self, host: str) -> None:
        result = parse_instance("x", jdata({"host": host, "port": 80}))
        assert isinstance(result, Skip) and not result.quiet, (host, result)

    def test_host_name_is_lowercased_and_trailing_dot_dropped(self) -> None:
        assert parse_instance("x", jdata({"host": "API-1.Example.COM.", "port": 80})) == server("api-1.example.com", 80)

    def test_ipv6(self) -> None:
        assert parse_instance("x", jdata({"host": "2001:DB8:0::7", "port": 80})) == server("2001:db8::7", 80)

    def test_missing_port_in_forced_mode(self) -> None:
        assert is_skip(parse_instance("x", jdata({"host": "10.4.0.5"}), "json"), "no 'port'")

    def test_missing_port_in_auto_is_unrecognised(self) -> None:
        assert is_skip(parse_instance("x", jdata({"host": "10.4.0.5"})), "unrecognised", "'host'")

    def test_too_large_data(self) -> None:
        data = jdata({"host": "10.4.0.5", "port": 80, "pad": "x" * MAX_DATA_BYTES})
        assert is_skip(parse_instance("x", data, "json"), "too large")
        assert is_skip(parse_instance("x", data), "unrecognised", "bytes of data")

    def test_not_utf8(self) -> None:
        assert is_skip(parse_instance("x", b'{"host": "\xff", "port": 80}', "json"), "not utf-8")

    def test_deeply_nested(self) -> None:
        assert is_skip(parse_instance("x", b"{" + b'"a":' * 5 + b"[" * 50_000, "json"), "json")


# ---------------------------------------------------------------------------
# text data


class TestText:
    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            (b"192.168.1.10:8080", server("192.168.1.10", 8080)),
            (b"192.168.1.11:8080:100", server("192.168.1.11", 8080, 100)),
            (b"192.168.1.11:8080:0", server("192.168.1.11", 8080, down=True)),
            (b"192.168.1.11:8080\n", server("192.168.1.11", 8080)),
            (b"  Web-1.Example.com:80:2\r\n", server("web-1.example.com", 80, 2)),
            (b"[2001:db8::1]:8080", server("2001:db8::1", 8080)),
            (b"[2001:db8::1]:8080:7", server("2001:db8::1", 8080, 7)),
        ],
    )
    def test_served(self, data: bytes, expected: Server) -> None:
        assert detect_format("192.168.1.10_8080", data) is get_format("text")
        assert parse_instance("192.168.1.10_8080", data) == expected

    @pytest.mark.parametrize(
        ("data", "word"),
        [
            (b"192.168.1.11:8080:-1", "negative"),
            (b"192.168.1.11:8080:x", "not an integer"),
            (b"192.168.1.11:8080:", "not an integer"),
            (b"192.168.1.11:99999", "outside"),
            (b"[10.0.0.1]:80", "non-ipv6"),
            (b"bad_host:80", "not an ip address"),
        ],
    )
    def test_bad_values(self, data: bytes, word: str) -> None:
        assert is_skip(parse_instance("192.168.1.10_8080", data), word), parse_instance("192.168.1.10_8080", data)

    @pytest.mark.parametrize(
        "data",
        [
            b"a:b:c:d",
            b"192.168.1.1 :80",
            b"10.0.0.1:80\n10.0.0.2:80",
            b"10.0.0.1:80,10.0.0.2:80:100",
            b"2001:db8::1:80",
        ],
    )
    def test_not_text_is_unrecognised(self, data: bytes) -> None:
        assert is_skip(parse_instance("child", data), "unrecognised")
        assert is_skip(parse_instance("child", data, "text"), "not host:port")

    def test_not_picked_when_the_name_is_host_port(self) -> None:
        assert detect_format("10.0.0.1:80", b"10.0.0.2:81:5") is get_format("name")
        assert parse_instance("10.0.0.1:80", b"10.0.0.2:81:5") == server("10.0.0.1", 80)

    def test_forced_text_ignores_the_name(self) -> None:
        assert parse_instance("10.0.0.1:80", b"10.0.0.2:81:5", "text") == server("10.0.0.2", 81, 5)


# ---------------------------------------------------------------------------
# plain child name


class TestChildName:
    @pytest.mark.parametrize(
        ("child", "data", "expected"),
        [
            ("10.5.0.1:8080", b"", server("10.5.0.1", 8080)),
            ("10.5.0.1:8080", b"5", server("10.5.0.1", 8080, 5)),
            ("10.5.0.1:8080", b" 5\n", server("10.5.0.1", 8080, 5)),
            ("10.5.0.1:8080", b"0", server("10.5.0.1", 8080, down=True)),
            ("10.5.0.1:8080", b"10.5.0.1", server("10.5.0.1", 8080)),
            ("10.5.0.1:8080", b"-5", server("10.5.0.1", 8080)),
            ("10.5.0.1:8080", b"\xac\xed\x00\x05", server("10.5.0.1", 8080)),
            ("10.5.0.1:8080", "٣".encode(), server("10.5.0.1", 8080)),
            ("[2001:db8::3]:8080", b"2", server("2001:db8::3", 8080, 2)),
            ("[fe80::1%eth0]:8080", b"", server("fe80::1", 8080)),
            ("Web-1.Example.com:80", b"", server("web-1.example.com", 80)),
        ],
    )
    def test_served(self, child: str, data: bytes, expected: Server) -> None:
        assert detect_format(child, data) is get_format("name")
        assert parse_instance(child, data) == expected

    def test_huge_digit_weight_is_skipped(self) -> None:
        assert is_skip(parse_instance("10.5.0.1:8080", b"99999999999"), "limit")

    @pytest.mark.parametrize(
        "child", ["10.5.0.1:0", "10.5.0.1:65536", "a;b:80", "[10.0.0.1]:80", "x_y:80", "300.1.1.1:80", "a..b:80"]
    )
    def test_bad_names(self, child: str) -> None:
        result = parse_instance(child, b"")
        assert isinstance(result, Skip) and not result.quiet and "unrecognised" not in result.reason

    def test_forced_on_non_hostport(self) -> None:
        assert is_skip(parse_instance("node-1", b"", "name"), "not host:port")


# ---------------------------------------------------------------------------
# auto detection order, unrecognised children, robustness


class TestAuto:
    def test_dubbo_name_wins_over_json_data(self) -> None:
        assert detect_format(provider(), jdata({"host": "10.9.9.9", "port": 1})) is get_format("dubbo")

    def test_serverset_wins_over_curator_and_generic(self) -> None:
        data = member(address="10.9.9.9", port=1, host="10.9.9.8")
        assert detect_format("member_1", data) is get_format("serverset")

    def test_curator_wins_over_yarn_and_generic(self) -> None:
        data = instance(host="10.9.9.9", type="JSONServiceRecord")
        assert detect_format("x", data) is get_format("curator")

    def test_yarn_wins_over_generic(self) -> None:
        data = record(host="10.9.9.9", port=1)
        assert detect_format("x", data) is get_format("yarn")

    def test_json_wins_over_child_name(self) -> None:
        assert parse_instance("10.0.0.1:80", jdata({"host": "10.0.0.2", "port": 81})) == server("10.0.0.2", 81)

    def test_child_name_with_non_matching_json(self) -> None:
        assert parse_instance("10.0.0.1:80", jdata({"foo": 1})) == server("10.0.0.1", 80)

    def test_unrecognised_child_is_a_loud_skip_with_a_short_reason(self) -> None:
        result = parse_instance("node-" + "x" * 500, b"hello " * 1000)
        assert is_skip(result, "unrecognised", "node-")
        assert len(result.reason) < 400
        assert "\n" not in result.reason

    def test_unrecognised_json_lists_keys(self) -> None:
        assert is_skip(parse_instance("x", jdata({"addr": "10.0.0.1", "p": 1})), "unrecognised", "'addr'", "'p'")
        assert is_skip(parse_instance("x", b"{not json"), "unrecognised", "not json")
        assert is_skip(parse_instance("x", b""), "unrecognised", "no data")

    def test_forced_formats_never_raise_on_other_formats_children(self) -> None:
        samples = [
            (provider(), b""),
            (nerve_child({"host": "10.1.2.3", "port": 1}), b""),
            ("member_1", member()),
            ("x", instance()),
            ("x", record()),
            ("x", jdata({"host": "10.0.0.1", "port": 1})),
            ("a_1", b"10.0.0.1:80:2"),
            ("10.0.0.1:80", b"3"),
            ("", b""),
            ("x", b"\x00\xff"),
        ]
        for fmt in FORMAT_NAMES:
            for child, data in samples:
                result = parse_instance(child, data, fmt)
                assert isinstance(result, (Server, Skip)), (fmt, child, result)

    def test_unexpected_exception_becomes_a_skip_naming_the_format(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def boom(*args: object) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(type(get_format("name")), "parse", boom)
        assert is_skip(parse_instance("10.0.0.1:80", b""), "name format failed", "RuntimeError")
        assert is_skip(parse_instance("10.0.0.1:80", b"", "name"), "name format failed")

    def test_non_string_child(self) -> None:
        assert is_skip(parse_instance(b"10.0.0.1:80", b""), "not a string")  # type: ignore[arg-type]


def test_mixed_fleet_serves_both_formats(tmp_path, nginx_check) -> None:
    """One upstream mid-migration: classic host:port children and Curator instances at once."""
    children = [
        ("10.6.0.1:8080", b"3"),
        ("10.6.0.2:8080", b"10.6.0.2"),
        ("7d3c1f1a-0000-4000-8000-000000000001", instance(address="10.6.0.3", port=8080)),
        ("7d3c1f1a-0000-4000-8000-000000000002", instance(address="10.6.0.1", port=8080)),  # same endpoint
        ("7d3c1f1a-0000-4000-8000-000000000003", with_metadata(instance_status="DOWN")),
    ]
    parsed = [parse_instance(child, data) for child, data in children]
    assert [type(result).__name__ for result in parsed] == ["Server", "Server", "Server", "Server", "Skip"]
    upstream = assemble_upstream("orders", [result for result in parsed if isinstance(result, Server)])
    assert upstream.servers == (server("10.6.0.1", 8080, 3), server("10.6.0.2", 8080), server("10.6.0.3", 8080))
    text = render_file(upstream)
    assert text == (
        "upstream orders {\n"
        "    server 10.6.0.1:8080 weight=3;\n"
        "    server 10.6.0.2:8080;\n"
        "    server 10.6.0.3:8080;\n"
        "}\n"
    )
    (tmp_path / "orders.upstream").write_text(text)
    nginx_check(tmp_path)


def test_module_exports() -> None:
    for name in formats.__all__:
        assert hasattr(formats, name)
