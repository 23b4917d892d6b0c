"""The config file and the command line: the three shapes, every error with its key path.

``check`` and ``run`` are exercised through the real command line (a
subprocess), so exit codes and what reaches stderr are what an operator sees.
Settings and overrides are checked in process with ``load_config``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reloader.config import (
    DEFAULT_FILES_OUTPUT_PATH,
    AuthConfig,
    ConfigError,
    GuardSettings,
    TlsConfig,
    kazoo_arguments,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reloader", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
    )


def write(tmp_path: Path, text: str, name: str = "upstream_zk_nodes.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------
# The three shapes, verbatim from the issue
# ---------------------------------------------------------------------------

SHAPE1 = """\
zk_servers: zk1:2181,zk2:2181
zk_nodes:
    bonus-api: /web_services/com.miui.bonus.api.resin-web
"""

SHAPE2 = """\
- zk_servers: zk-a:2181
  zk_nodes:
    app1: /services/app1
- zk_servers: zk-b:2181
  zk_nodes:
    app2: /services/app2
"""

SHAPE3 = """\
files_output_path: /etc/nginx/upstreams
dyups_url: http://127.0.0.1:14443
clusters:
  - zk_servers: 127.0.0.1:2181
    zk_nodes:
      app1: /services/app1
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SHAPE1, "bonus-api\tzk1:2181,zk2:2181\t/web_services/com.miui.bonus.api.resin-web\n"),
        (SHAPE2, "app1\tzk-a:2181\t/services/app1\napp2\tzk-b:2181\t/services/app2\n"),
        (SHAPE3, "app1\t127.0.0.1:2181\t/services/app1\n"),
    ],
    ids=["shape1-mapping", "shape2-list", "shape3-clusters"],
)
def test_check_lists_every_upstream_of_each_shape(tmp_path: Path, text: str, expected: str) -> None:
    result = cli("check", "--config", str(write(tmp_path, text)))
    assert result.returncode == 0, result.stderr
    upstream_lines = [line for line in result.stdout.splitlines(keepends=True) if not line.startswith("# ")]
    assert "".join(upstream_lines) == expected
    # The upstream lines come first; the effective settings follow as comments.
    assert result.stdout.startswith(expected)
    assert "# zk_session_timeout = 10s\n" in result.stdout
    assert result.stderr == ""


def test_shapes_load_with_their_settings(tmp_path: Path) -> None:
    one = load_config(write(tmp_path, SHAPE1, "one.conf"))
    assert [c.zk_servers for c in one.clusters] == ["zk1:2181,zk2:2181"]
    assert one.files_output_path == DEFAULT_FILES_OUTPUT_PATH
    assert one.dyups_url is None
    assert one.zk_session_timeout == 10.0

    two = load_config(write(tmp_path, SHAPE2, "two.conf"))
    assert [(z.upstream, z.path) for z in two.znodes] == [("app1", "/services/app1"), ("app2", "/services/app2")]
    assert [c.key_path for c in two.clusters] == ["[0]", "[1]"]

    three = load_config(write(tmp_path, SHAPE3, "three.conf"))
    assert three.files_output_path == Path("/etc/nginx/upstreams")
    assert three.dyups_url == "http://127.0.0.1:14443"
    assert [z.key_path for z in three.znodes] == ["clusters[0].zk_nodes.app1"]


def test_shape1_settings_beside_the_cluster_keys_and_overrides(tmp_path: Path) -> None:
    text = (
        "zk_servers: 127.0.0.1:2181/prod\n"
        "files_output_path: /srv/upstreams\n"
        "dyups_url: http://127.0.0.1:8081/\n"
        "zk_session_timeout: 2s\n"
        "zk_nodes:\n"
        "  app1: /services/app1\n"
        "  app2: {path: /services/app2}\n"
    )
    path = write(tmp_path, text)
    config = load_config(path)
    assert config.clusters[0].zk_servers == "127.0.0.1:2181/prod"
    assert config.files_output_path == Path("/srv/upstreams")
    assert config.dyups_url == "http://127.0.0.1:8081"
    assert config.zk_session_timeout == 2.0
    assert [z.upstream for z in config.znodes] == ["app1", "app2"]

    overridden = load_config(path, {"files_output_path": str(tmp_path), "dyups_url": "http://127.0.0.1:9/"})
    assert overridden.files_output_path == tmp_path
    assert overridden.dyups_url == "http://127.0.0.1:9"
    # None means "not given on the command line": the file's value stays.
    kept = load_config(path, {"files_output_path": None, "dyups_url": None})
    assert kept.files_output_path == Path("/srv/upstreams")
    assert kept.dyups_url == "http://127.0.0.1:8081"


@pytest.mark.parametrize(("value", "seconds"), [(2, 2.0), ("2s", 2.0), ("500ms", 0.5), (1.5, 1.5), ("1m", 60.0)])
def test_zk_session_timeout_durations(value: object, seconds: float) -> None:
    config = parse_config({"zk_servers": "a:1", "zk_session_timeout": value, "zk_nodes": {"app1": "/a"}})
    assert config.zk_session_timeout == seconds


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "nginx-upstream-reloader"
    found = str(script) if script.exists() else shutil.which("nginx-upstream-reloader")
    if found is None:
        pytest.skip("the nginx-upstream-reloader console script is not installed in this environment")
    result = subprocess.run(
        [found, "check", "--config", str(write(tmp_path, SHAPE1))], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bonus-api\t")


# ---------------------------------------------------------------------------
# Errors: exit 2, the file and the key path in every line, for check and run
# ---------------------------------------------------------------------------

CASES = {
    "unknown-key": (
        "zk_servers: a:2181\nzk_nodes:\n  app1: /a\nbogus: 1\n",
        ["bogus: unknown key"],
    ),
    "unknown-key-in-cluster": (
        "clusters:\n  - zk_servers: a:2181\n    zk_nodes: {app1: /a}\n    colour: red\n",
        ["clusters[0].colour: unknown key"],
    ),
    "unknown-key-in-znode": (
        "zk_servers: a:2181\nzk_nodes:\n  app1: {path: /a, colour: red}\n",
        ["zk_nodes.app1.colour: unknown key"],
    ),
    "wrong-type-zk-servers": (
        "zk_servers: 2181\nzk_nodes:\n  app1: /a\n",
        ["zk_servers: must be a string"],
    ),
    "wrong-type-zk-nodes": (
        "zk_servers: a:2181\nzk_nodes: [app1, app2]\n",
        ["zk_nodes: must be a non-empty mapping"],
    ),
    "wrong-type-duration": (
        "zk_servers: a:2181\nzk_session_timeout: [1]\nzk_nodes:\n  app1: /a\n",
        ["zk_session_timeout: [1] is not a duration"],
    ),
    "zero-session-timeout": (
        "zk_servers: a:2181\nzk_session_timeout: 0\nzk_nodes:\n  app1: /a\n",
        ["zk_session_timeout: must be greater than zero"],
    ),
    "wrong-type-clusters": (
        "clusters: {zk_servers: a:1}\n",
        ["clusters: must be a non-empty list"],
    ),
    "bad-dyups-url": (
        "zk_servers: a:2181\ndyups_url: ftp://x\nzk_nodes:\n  app1: /a\n",
        ["dyups_url: 'ftp://x' is not an http:// or https:// URL"],
    ),
    "empty-zk-servers": (
        'zk_servers: ""\nzk_nodes:\n  app1: /a\n',
        ["zk_servers: is empty"],
    ),
    "empty-zk-servers-in-list": (
        '- zk_servers: a:1\n  zk_nodes: {app1: /a}\n- zk_servers: ""\n  zk_nodes: {app2: /b}\n',
        ["[1].zk_servers: is empty"],
    ),
    "missing-zk-servers": (
        "zk_nodes:\n  app1: /a\n",
        ["zk_servers: is required"],
    ),
    "znode-without-slash": (
        "zk_servers: a:2181\nzk_nodes:\n  app1: services/app1\n",
        ["zk_nodes.app1.path: znode path 'services/app1' must start with '/'"],
    ),
    "name-used-twice-across-clusters": (
        "- zk_servers: a:1\n  zk_nodes:\n    app1: /a\n- zk_servers: b:1\n  zk_nodes:\n    app1: /b\n",
        ["[1].zk_nodes.app1: upstream name 'app1' is already used at [0].zk_nodes.app1"],
    ),
    "name-with-capitals": (
        "zk_servers: a:2181\nzk_nodes:\n  App1: /a\n",
        ["zk_nodes.App1: upstream name 'App1' must match [a-z0-9][a-z0-9._-]*"],
    ),
    "duplicate-yaml-key": (
        "zk_servers: a:2181\nzk_nodes:\n  app1: /a\n  app1: /b\n",
        ["line 4, column 3: invalid YAML: duplicate key 'app1'"],
    ),
    "invalid-yaml": (
        "zk_servers: a:2181\nzk_nodes:\n  app1: [/a\n",
        ["invalid YAML"],
    ),
    "empty-file": (
        "",
        ["(top level): the file is empty"],
    ),
    "scalar-file": (
        "just a string\n",
        ["(top level): must be a mapping or a list of clusters"],
    ),
    "empty-list": (
        "[]\n",
        ["the list of clusters is empty"],
    ),
}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_exit_2_naming_file_and_key_path(tmp_path: Path, command: str, case: str) -> None:
    text, expected = CASES[case]
    path = write(tmp_path, text)
    out = tmp_path / "out"
    extra = ["--files-output-path", str(out)] if command == "run" else []
    result = cli(command, "--config", str(path), *extra)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines, "no message"
    for line in lines:
        assert line.startswith(f"{path}: "), line
    for wanted in expected:
        assert any(wanted in line for line in lines), (wanted, lines)
    # A refused config starts nothing: no output directory is created.
    assert not out.exists()


@pytest.mark.parametrize("command", ["check", "run"])
def test_unreadable_config_files_exit_2(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "missing.conf"
    directory = tmp_path / "a-directory"
    directory.mkdir()
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"zk_servers: \xff\xfe\n")
    unreadable = write(tmp_path, SHAPE1, "unreadable.conf")
    unreadable.chmod(0)
    cases = [
        (missing, "cannot read: No such file or directory"),
        (directory, "cannot read: Is a directory"),
        (binary, "is not UTF-8"),
    ]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        cases.append((unreadable, "cannot read: Permission denied"))
    for path, wanted in cases:
        result = cli(command, "--config", str(path))
        assert result.returncode == 2, (path, result.stderr)
        assert result.stderr.startswith(f"{path}: "), result.stderr
        assert wanted in result.stderr, result.stderr


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        'zk_servers: ""\n'
        "zk_session_timeout: soon\n"
        "dyups_url: ftp://x\n"
        "bogus: 1\n"
        "zk_nodes:\n"
        "  app1: services/app1\n"
        "  App2: /b\n"
        "  app3: {path: /c, colour: red}\n"
    )
    path = write(tmp_path, text)
    result = cli("check", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    for key_path in (
        "zk_servers:", "zk_session_timeout:", "dyups_url:", "bogus:", "zk_nodes.app1.path:",
        "zk_nodes.App2:", "zk_nodes.app3.colour:",
    ):
        assert any(line.startswith(f"{path}: {key_path}") for line in lines), (key_path, lines)
    assert len(lines) == 7, lines


def test_duplicate_name_is_reported_even_when_its_cluster_has_other_problems(tmp_path: Path) -> None:
    """The module promises every problem in one go: a second cluster with an
    empty zk_servers must not hide that it also reuses an upstream name."""
    text = (
        "- zk_servers: a:1\n  zk_nodes:\n    app1: /a\n"
        '- zk_servers: ""\n  zk_nodes:\n    app1: /b\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load(text), source="two.conf")
    problems = caught.value.problems
    assert any(p.startswith("[1].zk_servers: is empty") for p in problems), problems
    assert any(p.startswith("[1].zk_nodes.app1: upstream name 'app1' is already used") for p in problems), problems


def test_run_refuses_a_bad_dyups_url_override(tmp_path: Path) -> None:
    path = write(tmp_path, SHAPE1)
    result = cli("run", "--config", str(path), "--files-output-path", str(tmp_path / "out"), "--dyups-url", "nope")
    assert result.returncode == 2
    assert f"{path}: dyups_url: 'nope' is not an http:// or https:// URL" in result.stderr


@pytest.mark.parametrize(
    "args",
    [[], ["run"], ["check"], ["run", "--config", "x", "--log-level", "bogus"], ["frobnicate"]],
    ids=["no-command", "run-without-config", "check-without-config", "bad-log-level", "unknown-command"],
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


# ---------------------------------------------------------------------------
# Guards, the ways of telling nginx, listen, clusters with names and credentials
# ---------------------------------------------------------------------------


def problems_of(data: object, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, **kwargs)  # type: ignore[arg-type]
    return caught.value.problems


def one_cluster(**settings: object) -> dict[str, object]:
    return {"zk_servers": "a:1", "zk_nodes": {"app1": "/a"}, **settings}


def test_new_settings_have_their_defaults() -> None:
    config = parse_config(one_cluster())
    assert config.guards == GuardSettings(settle_after_reconnect=30.0, max_drop=0.5, drop_hold=30.0)
    assert config.znodes[0].guards == config.guards
    assert (config.lua_url, config.retry_interval, config.listen, config.prune_files) == (None, 1.0, None, False)
    cluster = config.clusters[0]
    assert (cluster.name, cluster.index, cluster.auth, cluster.sasl, cluster.tls) == (None, 0, None, None, None)


def test_per_znode_guards_override_the_global_ones_key_by_key() -> None:
    config = parse_config({
        "settle_after_reconnect": "5s", "max_drop": "25%", "drop_hold": 0,
        "clusters": [{"zk_servers": "a:1", "zk_nodes": {
            "app1": "/a",
            "app2": {"path": "/b", "max_drop": 1, "settle_after_reconnect": "500ms"},
        }}],
    })
    assert config.guards == GuardSettings(settle_after_reconnect=5.0, max_drop=0.25, drop_hold=0.0)
    app1, app2 = config.znodes
    assert app1.guards == config.guards
    assert app2.guards == GuardSettings(settle_after_reconnect=0.5, max_drop=1.0, drop_hold=0.0)


@pytest.mark.parametrize(("value", "fraction"), [("50%", 0.5), ("0%", 0.0), ("100%", 1.0), (0.3, 0.3), (1, 1.0), ("12.5 %", 0.125)])
def test_max_drop_accepts_percentages_and_fractions(value: object, fraction: float) -> None:
    assert parse_config(one_cluster(max_drop=value)).guards.max_drop == fraction


@pytest.mark.parametrize("value", ["150%", "-5%", 1.5, -0.1, "half", True, "0.5", [1]])
def test_max_drop_refuses_anything_else_naming_both_forms(value: object) -> None:
    (problem,) = problems_of(one_cluster(max_drop=value))
    assert problem.startswith("max_drop: ")
    assert '"50%"' in problem and "0 to 1" in problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [(8080, ("127.0.0.1", 8080)), ("8080", ("127.0.0.1", 8080)), ("0.0.0.0:9000", ("0.0.0.0", 9000)),
     ("localhost:9000", ("localhost", 9000)), ("[::1]:9000", ("::1", 9000)), ("[::]:9000", ("::", 9000))],
)
def test_listen_forms(value: object, expected: tuple[str, int]) -> None:
    assert parse_config(one_cluster(listen=value)).listen == expected


@pytest.mark.parametrize("value", [0, 70000, "::1:9000", "[nothost]:80", "host:", ":80", True, "a b:80"])
def test_listen_refuses_bad_values(value: object) -> None:
    (problem,) = problems_of(one_cluster(listen=value))
    assert problem.startswith("listen: ")


def test_other_new_settings() -> None:
    config = parse_config(one_cluster(retry_interval="250ms", prune_files=True, lua_url="http://127.0.0.1:8081/"))
    assert (config.retry_interval, config.prune_files, config.lua_url) == (0.25, True, "http://127.0.0.1:8081")
    assert problems_of(one_cluster(retry_interval=0)) == ["retry_interval: must be greater than zero"]
    assert problems_of(one_cluster(prune_files="yes please"))[0].startswith("prune_files: must be true or false")
    assert problems_of(one_cluster(lua_url="ftp://x"))[0].startswith("lua_url: 'ftp://x' is not an http")


RELOAD = {"test_cmd": ["nginx", "-t"], "reload_cmd": ["nginx", "-s", "reload"]}


@pytest.mark.parametrize(
    "keys",
    [("dyups_url", "nginx_reload"), ("dyups_url", "lua_url"), ("lua_url", "nginx_reload"),
     ("dyups_url", "lua_url", "nginx_reload")],
)
def test_ways_of_telling_nginx_are_alternatives(keys: tuple[str, ...]) -> None:
    values = {"dyups_url": "http://127.0.0.1:1", "lua_url": "http://127.0.0.1:2", "nginx_reload": RELOAD}
    (problem,) = problems_of(one_cluster(**{key: values[key] for key in keys}))
    assert problem.startswith("(top level): " + " and ".join(keys) + " are alternatives")
    assert "choose one way of telling nginx" in problem and "files are always written" in problem


def test_a_dyups_url_flag_conflicts_with_a_reload_mode_in_the_file() -> None:
    (problem,) = problems_of(one_cluster(nginx_reload=RELOAD), overrides={"dyups_url": "http://127.0.0.1:1"})
    assert "dyups_url and nginx_reload are alternatives" in problem


def test_lua_url_allows_only_keepalive_directives() -> None:
    entry = {"path": "/a", "upstream_directives": ["keepalive 8", "keepalive_timeout 30s", "keepalive_requests 100"]}
    config = parse_config({"zk_servers": "a:1", "lua_url": "http://127.0.0.1:1", "zk_nodes": {"app1": entry}})
    assert config.znodes[0].options.directives == ("keepalive 8", "keepalive_timeout 30s", "keepalive_requests 100")
    entry = {"path": "/a", "upstream_directives": ["least_conn", "keepalive 8", "zone z 64k"]}
    (problem,) = problems_of({"zk_servers": "a:1", "lua_url": "http://127.0.0.1:1", "zk_nodes": {"app1": entry}})
    assert problem.startswith("zk_nodes.app1.upstream_directives: least_conn, zone cannot be used with lua_url")
    assert "weighted round robin" in problem


SEVERAL = [
    {"zk_servers": "a:1", "zk_nodes": {"app1": "/a"}},
    {"zk_servers": "a:1", "zk_nodes": {"app2": "/b"}},
    {"zk_servers": "b:1", "name": "east-1.b", "zk_nodes": {"app3": "/c"}},
]


def test_cluster_labels_index_and_session_keys() -> None:
    one = parse_config(one_cluster())
    assert one.clusters[0].label == "a:1"
    first, second, third = parse_config(SEVERAL).clusters
    assert [c.index for c in (first, second, third)] == [0, 1, 2]
    assert [c.label for c in (first, second, third)] == ["a:1 #0", "a:1 #1", "east-1.b"]
    assert first.session_key == second.session_key != third.session_key
    hash(first.session_key)


def test_cluster_names_are_checked_and_unique() -> None:
    clusters = [
        {"zk_servers": "a:1", "name": "main", "zk_nodes": {"app1": "/a"}},
        {"zk_servers": "b:1", "name": "main", "zk_nodes": {"app2": "/b"}},
        {"zk_servers": "c:1", "name": "-bad", "zk_nodes": {"app3": "/c"}},
    ]
    problems = problems_of({"clusters": clusters})
    assert problems == [
        "clusters[2].name: cluster name '-bad' must match [A-Za-z0-9][A-Za-z0-9._-]*",
        "clusters[1].name: cluster name 'main' is already used at clusters[0].name",
    ]


def test_digest_auth_from_a_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "zk.secret").write_text("reloader:s3cret\n")
    config = load_config(write(tmp_path, SHAPE1 + "auth: {scheme: digest, credential_file: zk.secret}\n"))
    cluster = config.clusters[0]
    assert cluster.auth == AuthConfig(scheme="digest", credential="reloader:s3cret")
    assert "s3cret" not in repr(cluster)
    assert kazoo_arguments(cluster)["auth_data"] == [("digest", "reloader:s3cret")]


def test_digest_auth_from_the_environment() -> None:
    data = one_cluster(auth={"scheme": "digest", "credential_env": "ZK_CRED"})
    config = parse_config(data, environ={"ZK_CRED": "u:p"})
    assert config.clusters[0].auth == AuthConfig("digest", "u:p")
    assert problems_of(data, environ={}) == ["auth.credential_env: the environment variable ZK_CRED is not set or is empty"]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"scheme": "digest", "credential_file": "/nonexistent/zk.secret"},
         "auth.credential_file: '/nonexistent/zk.secret' does not exist or is not a file"),
        ({"scheme": "sasl", "credential_env": "X"}, "auth.scheme: must be one of digest, got 'sasl'"),
        ({"scheme": "digest"}, "auth: give exactly one of credential_file"),
        ({"scheme": "digest", "credential_env": "X", "credential_file": "f"}, "auth: give exactly one of"),
        ({"scheme": "digest", "credential_env": "NOCOLON"}, "auth.credential_env: the credential must be user:password"),
        ("digest:u:p", "auth: must be a mapping"),
    ],
)
def test_bad_auth_is_refused_clearly(auth: object, expected: str) -> None:
    problems = problems_of(one_cluster(auth=auth), environ={"X": "x:y", "NOCOLON": "nocolon"})
    assert any(p.startswith(expected) for p in problems), problems


def test_sasl_options(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    sasl = {"mechanism": "DIGEST-MD5", "username": "u", "password_file": "pw"}
    config = parse_config(one_cluster(sasl=sasl), base_dir=tmp_path)
    cluster = config.clusters[0]
    assert dict(cluster.sasl or {}) == {"mechanism": "DIGEST-MD5", "username": "u", "password": "hunter2"}
    arguments = kazoo_arguments(cluster)
    arguments["sasl_options"]["service"] = "zookeeper"  # kazoo writes into it; the config must not change
    assert "service" not in (cluster.sasl or {})
    hash(cluster.session_key)
    gssapi = parse_config(one_cluster(sasl={"mechanism": "GSSAPI", "principal": "c@EXAMPLE.COM", "service": "zk"}))
    assert dict(gssapi.clusters[0].sasl or {})["principal"] == "c@EXAMPLE.COM"

    problems = problems_of(one_cluster(sasl={"mechanism": "PLAIN", "colour": "red", "username": 5}))
    assert "sasl.colour: unknown key" in problems[0]
    assert any(p.startswith("sasl.username: must be a non-empty string") for p in problems), problems
    assert any(p.startswith("sasl.mechanism: must be one of DIGEST-MD5, GSSAPI") for p in problems), problems
    assert problems_of(one_cluster(sasl={"mechanism": "DIGEST-MD5", "username": "u"})) == [
        "sasl.password: is required for DIGEST-MD5"
    ]


def test_tls_paths_must_exist(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    tls = {"ca": "ca.pem", "cert": "cert.pem", "key": str(tmp_path / "key.pem"), "verify_hostname": False}
    cluster = parse_config(one_cluster(tls=tls), base_dir=tmp_path).clusters[0]
    assert cluster.tls == TlsConfig(ca=tmp_path / "ca.pem", cert=tmp_path / "cert.pem", key=tmp_path / "key.pem",
                                    verify_hostname=False)
    arguments = kazoo_arguments(cluster)
    assert arguments["use_ssl"] is True and arguments["check_hostname"] is False
    assert arguments["ca"] == str(tmp_path / "ca.pem")

    problems = problems_of(one_cluster(tls={"ca": "missing.pem", "cert": "cert.pem"}), base_dir=tmp_path)
    assert problems[0] == f"tls.ca: '{tmp_path / 'missing.pem'}' does not exist or is not a file"
    assert problems[1] == "tls: cert and key go together: give both or neither"
