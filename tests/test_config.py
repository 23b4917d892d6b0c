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

from reloader.config import DEFAULT_FILES_OUTPUT_PATH, ConfigError, load_config, parse_config

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
    assert result.stdout == expected
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
