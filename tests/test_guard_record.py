"""The guard record beside the files: never behind them, quiet in steady state, bad input is no input."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from reloader.model import Server, Upstream
from reloader.outputs.base import FileWritten
from reloader.outputs.files import FilesOutput, atomic_write
from reloader.outputs.guard_record import RECORD_NAME, GuardRecord, read_owed

NOW = 1_800_000_000.0


def upstream(name: str, *octets: int, owed: tuple[tuple[float, int], ...] = ()) -> Upstream:
    servers = tuple(Server(f"10.0.0.{octet}", 80) for octet in octets)
    return Upstream(name, servers, live_count=len(servers), owed=owed)


def test_nothing_owed_writes_nothing(tmp_path: Path) -> None:
    record = GuardRecord(tmp_path, atomic_write, wall=lambda: NOW)
    assert record.update([upstream("a", 1, 2), upstream("b", 3)]) == []
    assert not (tmp_path / RECORD_NAME).exists()


def test_entries_are_written_changed_and_expire(tmp_path: Path) -> None:
    wall = [NOW]
    record = GuardRecord(tmp_path, atomic_write, wall=lambda: wall[0])
    assert record.update([upstream("a", 1, owed=((NOW + 30, 4),)), upstream("b", 3)]) == ["a"]
    assert read_owed(tmp_path, lambda: NOW) == {"a": ((NOW + 30, 4),)}
    # The same entry again: no write.
    assert record.update([upstream("a", 1, owed=((NOW + 30, 4),))]) == []
    assert record.writes == 1
    # Another upstream's entry joins; a's stays.
    record.update([upstream("b", 3, owed=((NOW + 20, 2),))])
    assert read_owed(tmp_path, lambda: NOW) == {"a": ((NOW + 30, 4),), "b": ((NOW + 20, 2),)}
    # Expired entries are ignored when read, and dropped at the next write.
    assert read_owed(tmp_path, lambda: NOW + 25) == {"a": ((NOW + 30, 4),)}
    wall[0] = NOW + 25
    record.update([upstream("a", 1)])
    assert json.loads((tmp_path / RECORD_NAME).read_text()) == {"upstreams": {}}


@pytest.mark.parametrize("text, problem", [
    ("{", "not JSON"),
    ("[]", "expected"),
    ('{"upstreams": {"a": [[1e999, 3]]}}', "bad entry"),
    ('{"upstreams": {"a": [["x", 3]]}}', "bad entry"),
    ('{"upstreams": {"a": [[1, -3]]}}', "bad entry"),
    ('{"upstreams": {"a": [[1, true]]}}', "bad entry"),
    ('{"upstreams": {"": []}}', "bad upstream name"),
])
def test_a_bad_record_is_ignored_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, problem: str,
) -> None:
    (tmp_path / RECORD_NAME).write_text(text)
    with caplog.at_level(logging.WARNING):
        assert read_owed(tmp_path) == {}
    assert str(tmp_path / RECORD_NAME) in caplog.text
    assert problem in caplog.text, caplog.text


def test_the_record_is_written_before_the_files_and_a_failed_record_holds_the_file_back(tmp_path: Path) -> None:
    heard: list[list[FileWritten]] = []
    output = FilesOutput(tmp_path, [heard.append])
    output.prepare()
    output.publish_many([upstream("a", 1, 2, 3, 4)])
    output.end_batch()
    order: list[str] = []
    failing = [True]

    def write(path: Path, text: str) -> None:
        order.append(path.name)
        if failing[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        atomic_write(path, text)

    output.guard_record = GuardRecord(tmp_path, write)
    shrunk = upstream("a", 1, 2, owed=((4_000_000_000.0, 4),))
    output.publish_many([shrunk, upstream("b", 9)])
    output.end_batch()
    # The record could not be written: a's file is held back with it; b owes nothing and is written.
    assert "10.0.0.3" in (tmp_path / "a.upstream").read_text()
    assert (tmp_path / "b.upstream").exists()
    assert output.pending == ("a",)
    assert [event.upstream.name for event in heard[-1]] == ["b"]
    failing[0] = False
    output.tick(10**9)
    assert output.pending == ()
    assert "10.0.0.3" not in (tmp_path / "a.upstream").read_text()
    assert read_owed(tmp_path, lambda: NOW) == {"a": ((4_000_000_000.0, 4),)}
    assert order == [RECORD_NAME, RECORD_NAME]
