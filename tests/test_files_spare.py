"""The files output swaps each file with a spare holding the previous version: no inode is made or freed.

What is promised (reloader/outputs/files.py, reloader/outputs/exchange.py):
the file always holds the last state written, its mode is kept, a spare is
never written through a link or into someone else's file, a file system that
cannot swap gets plain renames, and spares of files gone are cleaned up.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from reloader.model import Server, Upstream
from reloader.outputs import files as files_module
from reloader.outputs.exchange import Unsupported, exchange
from reloader.outputs.files import FilesOutput, FileStore, spare_path
from reloader.render import render_file


def state(name: str, last_octet: int) -> Upstream:
    return Upstream(name, (Server(f"10.0.0.{last_octet}", 80),), live_count=1)


def write(output: FilesOutput, *upstreams: Upstream) -> None:
    output.publish_many(list(upstreams))
    output.end_batch()


def test_exchange_swaps_two_files_in_one_step(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("new")
    second.write_text("old")
    inode = first.stat().st_ino
    exchange(str(first), str(second))
    assert (first.read_text(), second.read_text()) == ("old", "new")
    assert second.stat().st_ino == inode
    with pytest.raises(FileNotFoundError):
        exchange(str(first), str(tmp_path / "missing"))
    assert first.read_text() == "old", "a failed exchange changes nothing"


def test_after_the_second_write_every_write_swaps_two_inodes(tmp_path: Path) -> None:
    output = FilesOutput(tmp_path)
    path = output.path_for("app")
    write(output, state("app", 1))
    write(output, state("app", 2))
    spare = Path(spare_path(str(path)))
    assert spare.read_text() == render_file(state("app", 1)), "the spare holds the previous version"
    inodes = {path.stat().st_ino, spare.stat().st_ino}
    for n in range(3, 12):
        write(output, state("app", n))
        assert output.read("app") == render_file(state("app", n))
        assert {path.stat().st_ino, spare.stat().st_ino} == inodes, "no inode made or freed"
    # A shorter text after a longer one leaves nothing of the longer behind.
    long = Upstream("app", tuple(Server(f"10.0.1.{i}", 8080) for i in range(30)), live_count=30)
    write(output, long)
    write(output, state("app", 1))
    write(output, state("app", 2))
    assert output.read("app") == render_file(state("app", 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".app.upstream.spare", "app.upstream"]
    output.close()


def test_the_mode_of_the_file_is_kept_through_the_spare(tmp_path: Path) -> None:
    output = FilesOutput(tmp_path)
    write(output, state("app", 1))
    write(output, state("app", 2))
    output.path_for("app").chmod(0o640)
    for n in (3, 4, 5):
        write(output, state("app", n))
        assert output.path_for("app").stat().st_mode & 0o777 == 0o640
    output.close()


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "directory", "fifo"])
def test_a_spare_that_is_not_the_daemons_own_file_is_never_written_through(tmp_path: Path, planted: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    output = FilesOutput(files)
    write(output, state("app", 1))
    spare = Path(spare_path(str(output.path_for("app"))))
    if planted == "symlink":
        spare.symlink_to(victim)
    elif planted == "hardlink":
        os.link(victim, spare)
    elif planted == "directory":
        spare.mkdir()
        (spare / "inside").write_text("kept")
    else:
        os.mkfifo(spare)
    for n in (2, 3, 4):
        write(output, state("app", n))
        assert output.read("app") == render_file(state("app", n)) and output.pending == ()
    assert victim.read_text() == "precious"
    if planted == "directory":
        assert (spare / "inside").read_text() == "kept", "a directory is not the spare: left alone"
    else:
        assert spare.is_file() and not spare.is_symlink() and spare.stat().st_nlink == 1, "replaced, by name only"
    output.close()


def test_a_file_system_that_cannot_swap_gets_plain_renames(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def refusing(first: str, second: str) -> None:
        calls.append(second)
        raise Unsupported(errno.EINVAL, "Invalid argument", first, None, second)

    monkeypatch.setattr(files_module, "exchange", refusing)
    output = FilesOutput(tmp_path)
    caplog.set_level(logging.INFO, logger="reloader.outputs.files")
    for n in range(1, 6):
        write(output, state("app", n))
        assert output.read("app") == render_file(state("app", n)) and output.pending == ()
    assert len(calls) == 1, "asked once, then plain renames"
    assert sum("cannot swap files in place" in r.getMessage() for r in caplog.records) == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    output.close()


def test_start_up_removes_spares_whose_file_is_gone_and_keeps_the_others(tmp_path: Path) -> None:
    output = FilesOutput(tmp_path)
    write(output, state("app", 1), state("gone", 1))
    write(output, state("app", 2), state("gone", 2))
    output.path_for("gone").unlink()
    store = FileStore(tmp_path)
    store.prepare()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".app.upstream.spare", "app.upstream"]
    assert store.remove("app") and sorted(p.name for p in tmp_path.iterdir()) == [], "a removed file takes its spare"
    output.close()
