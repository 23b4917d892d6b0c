"""Config input that cannot hurt: whatever the file holds, a clear message and exit 2, quickly.

Alias bombs, huge files, odd keys, YAML 1.1 surprises, bad znode paths, and
a property test that no structure makes ``parse_config`` raise anything but
ConfigError. ``check --connect`` is tried against a real ZooKeeper.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reloader.config import ConfigError, load_config, parse_config
from reloader.config_yaml import MAX_FILE_BYTES, MAX_NODES
from reloader.localenv.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reloader", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
    )


def problems_in(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "upstream_zk_nodes.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


# ---------------------------------------------------------------------------
# Alias bombs: refused while composing, before anything is expanded


def bomb(levels: int = 9, width: int = 9, leaf: str = '"1.1.1.1:1"') -> str:
    """A flow sequence of anchors, each repeating the previous one ``width`` times (width**levels leaves)."""
    parts = [f"&l0 [{', '.join([leaf] * width)}]"]
    parts += [f"&l{level} [{', '.join([f'*l{level - 1}'] * width)}]" for level in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize(
    ("where", "entry", "key_path"),
    [
        ("format", "{path: /a, format: %s}", "zk_nodes.app1.format"),
        ("backup_servers", "{path: /a, backup_servers: %s}", "zk_nodes.app1.backup_servers"),
        ("server_params", "{path: /a, server_params: {weight: %s}}", "zk_nodes.app1.server_params.weight"),
        ("upstream_directives", "{path: /a, upstream_directives: %s}", "zk_nodes.app1.upstream_directives"),
    ],
)
def test_alias_bombs_are_refused_quickly_with_bounded_memory(tmp_path: Path, where: str, entry: str, key_path: str) -> None:
    text = "zk_servers: a:1\nzk_nodes:\n  app1: " + entry % bomb() + "\n"
    tracemalloc.start()
    started = time.monotonic()
    try:
        problems = problems_in(tmp_path, text)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (problem,) = problems
    assert problem.startswith(key_path), problem
    assert f"expands to more than {MAX_NODES} values" in problem and "refused without expanding it" in problem
    assert elapsed < 5, elapsed  # 9**9 leaves when expanded: only the cap keeps this fast
    assert peak < 200 * 1024 * 1024, peak


def test_a_bomb_exits_2_through_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.conf"
    path.write_text("zk_servers: a:1\nzk_nodes:\n  app1: {path: /a, backup_servers: %s}\n" % bomb())
    result = cli("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: zk_nodes.app1.backup_servers")


def test_small_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = (
        "defaults: &defaults {server_params: {max_fails: 3}, backup_servers: ['10.9.9.9:80']}\n"
        "zk_servers: a:1\nzk_nodes:\n"
        "  app1: {<<: *defaults, path: /a}\n"
        "  app2: {<<: *defaults, path: /b}\n"
    )
    problems = problems_in(tmp_path, text)
    # Only the anchor's holder is unknown: the merged entries themselves load.
    assert problems == ["defaults: unknown key 'defaults' (allowed here: auth, drop_hold, dyups_url, files_output_path,"
                        " listen, lua_url, max_drop, max_weight, name, nginx_reload, prune_files, reassert_interval, "
                        "reconcile_interval, retry_interval, sasl, settle_after_reconnect, tls, zk_nodes, zk_servers, "
                        "zk_session_timeout)"]
    path = tmp_path / "ok.conf"
    path.write_text("clusters:\n  - &c {zk_servers: a:1, zk_nodes: {app1: {path: /a, server_params: &p {max_fails: 3}}}}\n"
                    "  - {zk_servers: b:1, zk_nodes: {app2: {path: /b, server_params: *p}}}\n")
    config = load_config(path)
    assert [z.options.server_params for z in config.znodes] == [(("max_fails", "3"),)] * 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [*a]\n", "alias *a refers to a value that contains it (a recursive alias)"),
        ("a: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels deep"),
        ("a: 2020-13-45\n", "line 1, column 4: invalid value '2020-13-45'"),
        ("a: !!float abc\n", "line 1, column 4: invalid value 'abc'"),
        ("a: " + "1" * 5000 + "\n", "line 1, column 4: invalid value"),
        ("a: !!python/object:os.system x\n", "invalid YAML"),
        ("a: 1\n---\nb: 2\n", "invalid YAML"),
        ("zk_nodes:\n  app1: /a\n  app1: /b\n", "line 3, column 3: invalid YAML: duplicate key 'app1'"),
        ("? [a, b]\n: x\n", "line 1, column 3: a key is a list; keys must be strings"),
        ("{[a, b]: x}\n", "line 1, column 2: a key is a list; keys must be strings"),
        ("? {a: b}\n: x\n", "a key is a mapping; keys must be strings"),
    ],
)
def test_hostile_yaml_is_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    (problem,) = problems_in(tmp_path, text)
    assert expected in problem, problem
    assert len(problem) < 400


def test_the_file_size_is_capped_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.conf"
    with big.open("wb") as handle:  # sparse: nothing of it is ever read
        handle.truncate(MAX_FILE_BYTES + 1)
    assert problems_in_path(big) == [f"is {MAX_FILE_BYTES + 1} bytes; a config may be at most 10 MB"]
    # A device reports size 0; the read stops at the cap all the same.
    assert problems_in_path(Path("/dev/zero")) == ["is larger than 10 MB, the most a config may be"]


def problems_in_path(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_huge_values_are_cut_short_in_messages(tmp_path: Path) -> None:
    huge = "x" * 1_000_000
    text = f"zk_servers: {huge}\nzk_nodes:\n  {huge}: /a\n  app1: {{path: /{huge}, format: {huge}}}\n{huge}: 1\n"
    problems = problems_in(tmp_path, text)
    assert problems and all(len(problem) < 600 for problem in problems), [len(p) for p in problems]


def test_the_number_of_problems_is_capped() -> None:
    data = {"zk_servers": "a:1", "zk_nodes": {f"App{i}": "/a" for i in range(5000)}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    problems = caught.value.problems
    assert len(problems) == 201
    assert problems[-1] == "(top level): ... and 4800 more problems"


# ---------------------------------------------------------------------------
# Keys, YAML 1.1 surprises, suggestions


def test_yaml_1_1_surprises_are_explained_with_what_the_user_wrote(tmp_path: Path) -> None:
    text = (
        "zk_servers: a:1\n"
        "on: 1\n"
        "zk_nodes:\n"
        "  yes: /a\n"
        "  no: /b\n"
        "  123: /c\n"
        "  app4: {path: /d, format: no}\n"
        "  app5: {path: /e, protocol: off}\n"
        "  app6: 42\n"
    )
    problems = problems_in(tmp_path, text)
    assert problems == [
        "True: unknown key True (YAML read 'on' as a boolean; write it in quotes: \"on\")",
        "zk_nodes.True: upstream name True (YAML read 'yes' as a boolean; write it in quotes: \"yes\")",
        "zk_nodes.False: upstream name False (YAML read 'no' as a boolean; write it in quotes: \"no\")",
        "zk_nodes.123: upstream name 123 (YAML read '123' as a number; write it in quotes: \"123\")",
        "zk_nodes.app4.format: False is not one of auto, dubbo, smartstack, serverset, curator, yarn, json, text, "
        "name (YAML read 'no' as a boolean; write it in quotes: \"no\")",
        "zk_nodes.app5.protocol: must be a non-empty string (YAML read 'off' as a boolean; write it in quotes: \"off\")",
        "zk_nodes.app6.path: znode path must be a string, not int (YAML read '42' as a number; write it in quotes: \"42\")",
    ]
    # Quoted, they are what was meant.
    fixed = tmp_path / "fixed.conf"
    fixed.write_text('zk_servers: a:1\nzk_nodes:\n  "yes": /a\n  "123": /c\n')
    assert [z.upstream for z in load_config(fixed).znodes] == ["yes", "123"]


def test_non_string_keys_from_data_are_errors_naming_where() -> None:
    data = {"zk_servers": "a:1", ("a", "b"): 1, 5: 2, "zk_nodes": {frozenset({1}): "/a", None: "/b", "app1": "/c"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    problems = caught.value.problems
    assert any(p.startswith("('a', 'b'): unknown key") for p in problems), problems
    assert any(p.startswith("5: unknown key 5") for p in problems), problems
    assert any(p.startswith("zk_nodes.frozenset({1}): upstream name frozenset({1}) (not a string)") for p in problems)
    assert any(p.startswith("zk_nodes.None: upstream name None (YAML read it as null") for p in problems), problems


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("zk_node", "zk_nodes"), ("zk_server", "zk_servers"), ("dyup_url", "dyups_url"), ("max-drop", "max_drop")],
)
def test_an_unknown_key_suggests_the_nearest_known_one(key: str, suggestion: str) -> None:
    data = {"zk_servers": "a:1", "zk_nodes": {"app1": "/a"}, key: 1}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert f"{key}: unknown key '{key}' (did you mean '{suggestion}'?)" in caught.value.problems


def test_every_bad_entry_of_one_value_is_reported(tmp_path: Path) -> None:
    text = (
        "zk_servers: a:1\nzk_nodes:\n  app1:\n    path: /a\n"
        "    backup_servers: ['1.2.3.4', 'x:0', 5, '10.0.0.1:80']\n"
        "    upstream_directives: [foo, least_conn, ip_hash]\n"
        "    server_params: {weight: 0, max_fails: -1, slow_start: 1}\n"
    )
    problems = problems_in(tmp_path, text)
    assert problems == [
        "zk_nodes.app1.server_params: weight must be between 1 and 1000000, got 0",
        "zk_nodes.app1.server_params: max_fails must be between 0 and 2147483647, got -1",
        "zk_nodes.app1.server_params: slow_start needs NGINX Plus: the open-source nginx rejects it "
        "('invalid parameter \"slow_start=...\"')",
        "zk_nodes.app1.upstream_directives[0]: unknown upstream directive 'foo' (allowed: least_conn, ip_hash, random, "
        "hash, keepalive, keepalive_timeout, keepalive_requests, zone)",
        "zk_nodes.app1.upstream_directives[2]: ip_hash: only one balancing method is allowed, least_conn is already given",
        "zk_nodes.app1.backup_servers[0]: '1.2.3.4' is not host:port",
        "zk_nodes.app1.backup_servers[1]: port 0 is outside 1-65535",
        "zk_nodes.app1.backup_servers[2]: must be a 'host:port' string, got 5",
    ]


# ---------------------------------------------------------------------------
# znode paths and chroots: what kazoo would refuse at run time is refused now


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/a/../b", "has a '..' segment"),
        ("/a/./b", "has a '.' segment"),
        ("/..", "has a '..' segment"),
        ("/a//b", "has an empty segment"),
        ("/a/", "must not end with '/'"),
        ("/a\u0001b", "characters ZooKeeper refuses"),
        ("/a b", "white space"),
    ],
)
def test_bad_znode_paths_and_chroots(path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"zk_servers": "a:1", "zk_nodes": {"app1": path}})
    (problem,) = caught.value.problems
    assert problem.startswith("zk_nodes.app1.path: ") and message in problem, problem
    with pytest.raises(ConfigError) as caught:
        parse_config({"zk_servers": f"a:1{path}", "zk_nodes": {"app1": "/a"}})
    (problem,) = caught.value.problems
    assert problem.startswith("zk_servers: chroot: ") and message in problem, problem


def test_good_paths_and_chroots_load() -> None:
    config = parse_config({"zk_servers": "a:1,b:2/prod/eu", "zk_nodes": {"app1": "/", "app2": "/a.b/c..d/...x"}})
    assert [z.path for z in config.znodes] == ["/", "/a.b/c..d/...x"]


# ---------------------------------------------------------------------------
# files_output_path: relative to the file; a flag stays relative to the working directory


def test_relative_files_output_path_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "upstream_zk_nodes.conf"
    path.write_text("files_output_path: upstreams\nzk_servers: a:1\nzk_nodes: {app1: /a}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("etc/upstream_zk_nodes.conf").files_output_path == conf_dir / "upstreams"
    assert load_config(path, {"files_output_path": "flag-dir"}).files_output_path == Path("flag-dir")


# ---------------------------------------------------------------------------
# check: the output directory, every effective setting, and --connect


def test_check_says_whether_the_output_directory_can_be_written(tmp_path: Path) -> None:
    def check(files: str) -> str:
        path = tmp_path / "c.conf"
        path.write_text(f"files_output_path: {files}\nzk_servers: a:1\nzk_nodes: {{app1: /a}}\n")
        result = cli("check", "--config", str(path))
        assert result.returncode == 0, result.stderr
        (line,) = [line for line in result.stdout.splitlines() if line.startswith("# files_output_path = ")]
        return line

    (tmp_path / "exists").mkdir()
    (tmp_path / "a-file").write_text("")
    assert check("exists") == f"# files_output_path = {tmp_path / 'exists'} (writable)"
    assert check("new/deeper") == f"# files_output_path = {tmp_path / 'new/deeper'} (does not exist; can be created)"
    assert check("a-file") == f"# files_output_path = {tmp_path / 'a-file'} (not writable: it is not a directory)"
    assert check("a-file/below").endswith(f"(cannot be created: {tmp_path / 'a-file'} is not a directory)")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert check("locked/x").endswith("is not writable)")


def test_check_prints_every_effective_setting(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("reloader:hunter2\n")
    path = tmp_path / "c.conf"
    path.write_text(
        "max_drop: 25%\nlisten: 9000\n"
        "clusters:\n"
        "  - zk_servers: a:1\n    auth: {scheme: digest, credential_file: secret}\n"
        "    zk_nodes: {app1: {path: /a, drop_hold: 5s}}\n"
    )
    result = cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "app1\ta:1\t/a"
    for wanted in (
        "# dyups_url = none", "# lua_url = none", "# nginx_reload = none", "# reconcile_interval = 5s",
        "# reassert_interval = 60s", "# retry_interval = 1s", "# zk_session_timeout = 10s",
        "# listen = 127.0.0.1:9000", "# prune_files = false", "# settle_after_reconnect = 30s",
        "# max_drop = 25%", "# drop_hold = 30s",
        "# upstream app1: format auto, settle_after_reconnect 30s, max_drop 25%, drop_hold 5s",
    ):
        assert wanted in lines, (wanted, lines)
    assert any(line.startswith("# cluster a:1: index 0, name none, zk_servers a:1, auth digest (user reloader)")
               for line in lines), lines
    assert "hunter2" not in result.stdout


def test_check_connect_reports_each_cluster(zk, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dead = f"127.0.0.1:{free_port()}"
    path = tmp_path / "c.conf"
    path.write_text(
        "zk_session_timeout: 1s\n"
        "clusters:\n"
        f"  - {{name: live, zk_servers: '{zk.hosts}', zk_nodes: {{app1: /a}}}}\n"
        f"  - {{name: dead, zk_servers: '{dead}', zk_nodes: {{app2: /b}}}}\n"
    )
    started = time.monotonic()
    result = cli("check", "--connect", "--config", str(path))
    assert time.monotonic() - started < 20
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "cluster live: connected" in result.stdout.splitlines()
    assert any(line.startswith("cluster dead: unreachable: ") for line in result.stdout.splitlines()), result.stdout

    path.write_text(f"zk_session_timeout: 2s\nzk_servers: '{zk.hosts}'\nzk_nodes: {{app1: /a}}\n")
    result = cli("check", "--connect", "--config", str(path))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[-1] == f"cluster {zk.hosts}: connected"


# ---------------------------------------------------------------------------
# Property: nothing but ConfigError, whatever the structure

SETTING_WORDS = ["zk_servers", "zk_nodes", "clusters", "path", "format", "backup_servers", "server_params",
                 "upstream_directives", "max_drop", "listen", "auth", "sasl", "tls", "name", "nginx_reload",
                 "dyups_url", "lua_url", "files_output_path", "prune_files", "scheme", "credential_env",
                 "mechanism", "ca", "test_cmd", "weight", "app1", "/a", "a:1", "50%", "keepalive 8"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(SETTING_WORDS),
)
keys = st.one_of(st.sampled_from(SETTING_WORDS), st.text(max_size=8), st.integers(), st.booleans(), st.none(),
                 st.tuples(st.integers()), st.frozensets(st.integers(), max_size=2))
structures = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=structures)
def test_parse_config_raises_nothing_but_config_error(data: object) -> None:
    try:
        parse_config(data, environ={})
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(problem, str) and len(problem) < 1000 for problem in error.problems)


yaml_keys = st.one_of(st.sampled_from(SETTING_WORDS), st.text(max_size=8), st.integers(), st.booleans(), st.none())
yaml_structures = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(yaml_keys, children, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=st.one_of(
    st.text(alphabet=st.sampled_from(list("ab:-&*[]{}?!,|>'\"\n #%@`~.0123")), max_size=60),
    yaml_structures.map(lambda data: yaml.safe_dump(data, default_flow_style=None)),
))
def test_load_config_raises_nothing_but_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.conf"
    path.write_text(text)
    try:
        load_config(path, {})
    except ConfigError as error:
        assert error.problems
