"""Each format's real-world fixture renders to its checked-in upstream file.

Fixtures live in tests/fixtures/formats/<format>.json: the children one real
system writes (named in ``written_by``), with what each should become in
``expect``. The expected nginx files are tests/fixtures/golden/<format>.upstream.
To regenerate them after an intended change, run with ``UPDATE_GOLDEN=1`` and
review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reloader.assemble import assemble_upstream
from reloader.formats import FORMAT_NAMES, FormatOptions, Skip, parse_instance
from reloader.model import Server
from reloader.render import render_dyups_body, render_file

FIXTURES = Path(__file__).parent / "fixtures"
FORMAT_FIXTURES = FIXTURES / "formats"
GOLDEN = FIXTURES / "golden"
FORMATS = [name for name in FORMAT_NAMES if name != "auto"]


def load_fixture(format_name: str) -> dict:
    return json.loads((FORMAT_FIXTURES / f"{format_name}.json").read_text())


def fixture_options(fixture: dict) -> FormatOptions:
    return FormatOptions(**fixture.get("options", {}))


def child_data(child: dict) -> bytes | None:
    data = child.get("data")
    return None if data is None else data.encode("utf-8")


def parse_fixture(fixture: dict, format_name: str) -> list[Server | Skip]:
    options = fixture_options(fixture)
    return [parse_instance(child["name"], child_data(child), format_name, options) for child in fixture["children"]]


def render_fixture(fixture: dict) -> str:
    servers = [result for result in parse_fixture(fixture, "auto") if isinstance(result, Server)]
    return render_file(assemble_upstream(fixture["format"], servers))


def test_every_format_has_a_fixture_and_a_golden_file() -> None:
    assert sorted(path.stem for path in FORMAT_FIXTURES.glob("*.json")) == sorted(FORMATS)
    assert sorted(path.stem for path in GOLDEN.glob("*.upstream")) == sorted(FORMATS)


@pytest.mark.parametrize("format_name", FORMATS)
def test_fixture_names_its_source(format_name: str) -> None:
    fixture = load_fixture(format_name)
    assert fixture["format"] == format_name
    assert fixture["written_by"].strip()
    assert fixture["znode"].startswith("/")
    assert fixture["children"]
    assert all(child["expect"].strip() for child in fixture["children"])


@pytest.mark.parametrize("format_name", FORMATS)
def test_fixture_renders_to_golden_file(format_name: str) -> None:
    fixture = load_fixture(format_name)
    rendered = render_fixture(fixture)
    golden = GOLDEN / f"{format_name}.upstream"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text()


@pytest.mark.parametrize("format_name", FORMATS)
def test_auto_detection_agrees_with_forced_format(format_name: str) -> None:
    fixture = load_fixture(format_name)
    assert parse_fixture(fixture, "auto") == parse_fixture(fixture, format_name)


@pytest.mark.parametrize("format_name", FORMATS)
def test_expectations_in_fixture_hold(format_name: str) -> None:
    """The human-readable ``expect`` of each child matches what the parser does."""
    fixture = load_fixture(format_name)
    for child, result in zip(fixture["children"], parse_fixture(fixture, format_name), strict=True):
        expect = child["expect"]
        if expect.startswith("served"):
            assert isinstance(result, Server), (child["name"][:60], result)
            assert result.down == ("down" in expect), (child["name"][:60], result)
        elif expect.startswith("quietly ignored"):
            assert isinstance(result, Skip) and result.quiet, (child["name"][:60], result)
        else:
            assert expect.startswith("left out"), expect
            assert isinstance(result, Skip) and not result.quiet, (child["name"][:60], result)


def test_golden_files_pass_nginx(nginx_check) -> None:
    nginx_check(GOLDEN)


@pytest.mark.parametrize("format_name", FORMATS)
def test_golden_dyups_body_matches_file(format_name: str) -> None:
    """The dyups body carries exactly the golden file's statements."""
    fixture = load_fixture(format_name)
    servers = [result for result in parse_fixture(fixture, "auto") if isinstance(result, Server)]
    upstream = assemble_upstream(format_name, servers)
    body = render_dyups_body(upstream)
    lines = (GOLDEN / f"{format_name}.upstream").read_text().splitlines()[1:-1]
    assert body == "".join(line.strip() for line in lines)
