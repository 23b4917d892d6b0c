"""Small units of the publishing path: assemble, render, read back, and the atomic file write."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reloader.assemble import UpstreamOptions, assemble_upstream, merge_duplicates
from reloader.model import Server, Upstream
from reloader.outputs import files as files_module
from reloader.outputs.base import FileWritten
from reloader.outputs.files import FilesOutput, FileStore, atomic_write
from reloader.readback import ReadbackError, parse_server_statement, parse_upstream_block
from reloader.render import render_dyups_body, render_file, server_line

# ---------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------


def test_render_file_exact() -> None:
    upstream = assemble_upstream(
        "app1", [Server("10.0.0.2", 80), Server("10.0.0.1", 8080, weight=3), Server("10.0.0.1", 443)]
    )
    assert render_file(upstream) == (
        "upstream app1 {\n"
        "    server 10.0.0.1:443;\n"
        "    server 10.0.0.1:8080 weight=3;\n"
        "    server 10.0.0.2:80;\n"
        "}\n"
    )
    assert render_dyups_body(upstream) == "server 10.0.0.1:443;server 10.0.0.1:8080 weight=3;server 10.0.0.2:80;"


def test_render_directives_params_backup_down_and_ipv6() -> None:
    options = UpstreamOptions(
        server_params=(("max_fails", "3"), ("fail_timeout", "5s")),
        directives=("least_conn", "keepalive 8"),
        backup_servers=(Server("10.9.9.9", 80),),
    )
    upstream = assemble_upstream("app1", [Server("::1", 8080, weight=2), Server("10.0.0.1", 80, down=True)], options)
    assert render_file(upstream) == (
        "upstream app1 {\n"
        "    least_conn;\n"
        "    keepalive 8;\n"
        "    server 10.0.0.1:80 max_fails=3 fail_timeout=5s down;\n"
        "    server 10.9.9.9:80 backup;\n"
        "    server [::1]:8080 weight=2 max_fails=3 fail_timeout=5s;\n"
        "}\n"
    )
    assert render_dyups_body(upstream) == (
        "least_conn;keepalive 8;"
        "server 10.0.0.1:80 max_fails=3 fail_timeout=5s down;"
        "server 10.9.9.9:80 backup;"
        "server [::1]:8080 weight=2 max_fails=3 fail_timeout=5s;"
    )


def test_weight_one_is_not_written() -> None:
    assert server_line(Server("10.0.0.1", 80, weight=1)) == "server 10.0.0.1:80"
    assert server_line(Server("10.0.0.1", 80, weight=2)) == "server 10.0.0.1:80 weight=2"


def test_input_order_does_not_change_the_bytes() -> None:
    servers = [Server("10.0.0.3", 80), Server("10.0.0.1", 81, weight=4), Server("10.0.0.1", 80)]
    first = render_file(assemble_upstream("app1", servers))
    second = render_file(assemble_upstream("app1", list(reversed(servers))))
    assert first == second


# ---------------------------------------------------------------------------
# assemble
# ---------------------------------------------------------------------------


def test_duplicates_merge_and_the_higher_weight_wins() -> None:
    merged = merge_duplicates([Server("10.0.0.1", 80, weight=2), Server("10.0.0.1", 80, weight=5)])
    assert merged == [Server("10.0.0.1", 80, weight=5)]
    # A live twin outranks a down one, whatever the order.
    for order in ([Server("10.0.0.1", 80, down=True), Server("10.0.0.1", 80)],
                  [Server("10.0.0.1", 80), Server("10.0.0.1", 80, down=True)]):
        assert merge_duplicates(order) == [Server("10.0.0.1", 80)]


def test_static_backups_are_backup_only_while_live_servers_exist() -> None:
    options = UpstreamOptions(backup_servers=(Server("10.9.9.9", 80), Server("10.0.0.1", 80)))
    with_live = assemble_upstream("app1", [Server("10.0.0.1", 80, weight=3)], options)
    # The live registration of 10.0.0.1:80 wins over the static one.
    assert with_live.servers == (Server("10.0.0.1", 80, weight=3), Server("10.9.9.9", 80, backup=True))
    assert with_live.live_count == 1
    without = assemble_upstream("app1", [], options)
    assert without.servers == (Server("10.0.0.1", 80), Server("10.9.9.9", 80))
    assert without.live_count == 0


def test_configured_weight_overrides_the_registry() -> None:
    upstream = assemble_upstream(
        "app1", [Server("10.0.0.1", 80, weight=7)], UpstreamOptions(server_params=(("weight", "2"), ("max_fails", "1")))
    )
    assert upstream.servers == (Server("10.0.0.1", 80, weight=2, params=(("max_fails", "1"),)),)


# ---------------------------------------------------------------------------
# readback
# ---------------------------------------------------------------------------


def test_readback_round_trip() -> None:
    options = UpstreamOptions(directives=("least_conn",), backup_servers=(Server("10.9.9.9", 80),))
    upstream = assemble_upstream("app1", [Server("::1", 80, weight=2), Server("10.0.0.1", 81, down=True)], options)
    assert parse_upstream_block(render_file(upstream)) == upstream


def test_readback_understands_detail_lines() -> None:
    line = "server 127.0.0.1:19089 weight=3 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=1"
    server = parse_server_statement(line)
    assert (server.host, server.port, server.weight, server.backup, server.down) == ("127.0.0.1", 19089, 3, False, True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "upstream app1 {\n}\n",  # no servers
        "upstream app1 {\n    server 10.0.0.1:80;\n}\nupstream app2 {\n    server 10.0.0.2:80;\n}\n",
        "upstream app1 {\n    server 10.0.0.1:80;}\n}\n",
        "upstream app1 {\n    server $evil:80;\n}\n",
        "upstream app1 {\n    server 10.0.0.1:99999;\n}\n",
        "upstream app1 {\n    server 10.0.0.1:80 weight=$x;\n}\n",
        "server 10.0.0.1:80;\n",
    ],
    ids=["empty", "no-servers", "two-blocks", "stray-brace", "variable-host", "bad-port", "variable-param", "no-block"],
)
def test_readback_refuses_what_is_not_one_valid_upstream(text: str) -> None:
    with pytest.raises(ReadbackError):
        parse_upstream_block(text)


def test_readback_ignores_comments() -> None:
    text = "# managed by nginx-upstream-reloader\nupstream app1 {\n    server 10.0.0.1:80; # the only one\n}\n"
    assert parse_upstream_block(text).servers == (Server("10.0.0.1", 80),)


_hosts = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts))),
    st.sampled_from(["::1", "2001:db8::7", "fe80::1", "backend-1.example.com", "localhost"]),
)
_servers = st.builds(
    Server, host=_hosts, port=st.integers(1, 65535), weight=st.integers(1, 1000), down=st.booleans()
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_servers, min_size=1, max_size=8))
def test_readback_round_trip_property(servers: list[Server]) -> None:
    upstream = assemble_upstream("app1", servers)
    text = render_file(upstream)
    assert parse_upstream_block(text) == upstream
    assert render_file(parse_upstream_block(text)) == text
    body = render_dyups_body(upstream)
    assert not any(ch in body for ch in "{}$\n\t") and body.endswith(";")


# ---------------------------------------------------------------------------
# atomic_write and the files output
# ---------------------------------------------------------------------------


def test_atomic_write_replaces_the_inode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "app1.upstream"
    atomic_write(target, "one\n")
    first = target.stat()
    atomic_write(target, "two\n")
    second = target.stat()
    assert target.read_text() == "two\n"
    assert second.st_ino != first.st_ino
    assert second.st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["app1.upstream"]


def test_atomic_write_failure_keeps_the_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "app1.upstream"
    atomic_write(target, "old\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_module.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["app1.upstream"]


def test_temporary_names_cannot_match_the_include_glob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(files_module.os, "replace", spy)
    atomic_write(tmp_path / "app1.upstream", "x\n")
    assert seen and not seen[0].endswith(".upstream") and seen[0].startswith(".")


def test_files_output_does_not_rewrite_unchanged_content_and_announces_every_state(tmp_path: Path) -> None:
    events: list[FileWritten] = []
    output = FilesOutput(tmp_path, listeners=[events.extend])
    output.prepare()
    upstream = Upstream("app1", (Server("10.0.0.1", 80),), live_count=1)
    output.publish(upstream)
    assert events == [], "announced only once the batch is done"
    output.end_batch()
    before = output.path_for("app1").stat()
    assert [(e.previous, e.changed) for e in events] == [(None, True)]
    output.publish(Upstream("app1", (Server("10.0.0.1", 80),), live_count=1))
    output.end_batch()
    after = output.path_for("app1").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert events[-1].changed is False, "an unchanged file is still announced, for the followers"

    output.publish(Upstream("app1", (Server("10.0.0.2", 80),), live_count=1))
    output.end_batch()
    assert events[-1].previous == render_file(upstream) and events[-1].changed
    store = output.store
    assert not store.replace_if("app1", "something else\n", render_file(upstream)), "compare-and-replace"
    assert store.replace_if("app1", events[-1].text, render_file(upstream))
    assert output.read("app1") == render_file(upstream)
    assert store.replace_if("app1", render_file(upstream), None)
    assert output.read("app1") is None


def test_a_new_file_keeps_the_mode_of_the_one_it_replaces(tmp_path: Path) -> None:
    output = FilesOutput(tmp_path)
    output.publish(Upstream("app1", (Server("10.0.0.1", 80),), live_count=1))
    assert output.path_for("app1").stat().st_mode & 0o777 == 0o644
    output.path_for("app1").chmod(0o640)
    output.publish(Upstream("app1", (Server("10.0.0.2", 80),), live_count=1))
    assert output.path_for("app1").stat().st_mode & 0o777 == 0o640


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / ".app1.upstream.x1y2.tmp").write_text("half")
    (tmp_path / "app1.upstream").write_text("upstream app1 {\n    server 10.0.0.1:80;\n}\n")
    (tmp_path / ".nginx-upstream-reloader.lock").write_text("1\n")
    FileStore(tmp_path).prepare()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".nginx-upstream-reloader.lock", "app1.upstream"]


def test_a_failed_directory_fsync_after_the_rename_is_a_successful_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_directory_open(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECTORY:
            raise OSError(5, "Input/output error")
        return real_open(path, flags, *args)

    events: list[FileWritten] = []
    output = FilesOutput(tmp_path, listeners=[events.extend])
    monkeypatch.setattr(files_module.os, "open", no_directory_open)
    output.publish(Upstream("app1", (Server("10.0.0.1", 80),), live_count=1))
    output.end_batch()
    assert output.read("app1") is not None and len(events) == 1 and output.pending == ()


def test_a_batch_of_files_costs_one_directory_fsync_before_it_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    directory_opens: list[int] = []
    events: list[FileWritten] = []

    def counting_open(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECTORY:
            directory_opens.append(len(events))  # how much was announced when the directory was synced
        return real_open(path, flags, *args)

    output = FilesOutput(tmp_path, listeners=[events.extend])
    monkeypatch.setattr(files_module.os, "open", counting_open)
    for n in range(1, 11):
        output.publish(Upstream(f"app{n}", (Server("10.0.0.1", 80 + n),), live_count=1))
    assert all((tmp_path / f"app{n}.upstream").exists() for n in range(1, 11)), "renamed at once"
    output.end_batch()
    assert directory_opens == [0], "one directory fsync per batch, before the announcement"
    assert len(events) == 10
    output.publish(Upstream("app1", (Server("10.0.0.1", 81),), live_count=1))
    output.end_batch()
    assert directory_opens == [0], "a batch that renamed nothing needs no directory fsync"


def test_a_batch_is_written_file_by_file_a_failure_holds_back_only_its_upstream(tmp_path: Path) -> None:
    events: list[FileWritten] = []
    output = FilesOutput(tmp_path, listeners=[events.extend])
    output.publish_many([Upstream(f"app{n}", (Server("10.0.0.1", 80),), live_count=1) for n in range(1, 4)])
    output.end_batch()
    output.path_for("app2").chmod(0o640)
    output.path_for("app3").unlink()
    output.path_for("app3").mkdir()  # a rename over a directory fails
    batch = [Upstream(f"app{n}", (Server("10.0.0.2", 80),), live_count=1) for n in range(1, 5)]
    output.publish_many(batch)
    output.end_batch()
    assert [event.upstream.name for event in events[3:]] == ["app1", "app2", "app4"]
    assert output.pending == ("app3",)
    for name in ("app1", "app2", "app4"):
        assert output.read(name) == render_file(batch[0]).replace("app1", name)
    assert output.path_for("app2").stat().st_mode & 0o777 == 0o640, "the mode of the replaced file is kept"
    assert output.path_for("app1").stat().st_mode & 0o777 == 0o644
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file is left"
    output.path_for("app3").rmdir()
    output.tick(1e12)
    assert output.pending == () and output.read("app3") == render_file(batch[2])
    assert events[-1].upstream.name == "app3", "announced once it is on disk"
    output.close()


def test_a_batch_fsyncs_its_files_in_a_few_shares_and_an_fsync_failure_holds_back_only_its_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's fsyncs go to the pool in at most FSYNC_THREADS tasks, and each error reaches its own file."""
    from reloader.threads import DaemonPool

    tasks: list[int] = []
    real_submit = DaemonPool.submit

    def counting_submit(self: DaemonPool, fn: Any, *args: Any, **kwargs: Any) -> Any:
        tasks.append(len(args[0]) if args and isinstance(args[0], list) else 1)
        return real_submit(self, fn, *args, **kwargs)

    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if ".app7.upstream." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(DaemonPool, "submit", counting_submit)
    monkeypatch.setattr(files_module.os, "fsync", failing_fsync)
    events: list[FileWritten] = []
    output = FilesOutput(tmp_path, listeners=[events.extend])
    batch = [Upstream(f"app{n}", (Server("10.0.0.1", 80 + n),), live_count=1) for n in range(1, 11)]
    output.publish_many(batch)
    output.end_batch()
    assert len(tasks) == files_module.FSYNC_THREADS and sum(tasks) == 10, tasks
    assert output.pending == ("app7",)
    assert sorted(event.upstream.name for event in events) == sorted(f"app{n}" for n in range(1, 11) if n != 7)
    for upstream in batch:
        assert output.read(upstream.name) == (None if upstream.name == "app7" else render_file(upstream))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file is left"
    output.close()

def test_files_output_retries_a_failed_write(tmp_path: Path) -> None:
    directory = tmp_path / "not-yet"
    output = FilesOutput(directory)
    upstream = Upstream("app1", (Server("10.0.0.1", 80),), live_count=1)
    output.publish(upstream)  # the directory does not exist: logged, kept for retry
    assert not directory.exists()
    directory.mkdir()
    output.tick(1e12)  # far enough in the future for any retry interval
    assert output.read("app1") == render_file(upstream)


def test_a_batch_that_raises_is_delivered_again_one_by_one(tmp_path: Path) -> None:
    from reloader.runner import OutputRunner

    def render(upstream: Upstream) -> str:
        if upstream.name == "bad":
            raise ValueError("a renderer bug")
        return render_file(upstream)

    events: list[FileWritten] = []
    output = FilesOutput(tmp_path, listeners=[events.extend], render=render)
    runner: OutputRunner[Upstream] = OutputRunner(output, deliver=output.publish, key=lambda u: u.name,
                                                  deliver_many=output.publish_many)
    runner.offer_many([Upstream(name, (Server("10.0.0.1", 80),), live_count=1) for name in ("app1", "bad", "app2")])
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while sorted(e.upstream.name for e in events) != ["app1", "app2"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(e.upstream.name for e in events) == ["app1", "app2"], "one bad upstream costs only itself"
        assert output.read("app1") is not None and output.read("bad") is None
    finally:
        runner.stop(time.monotonic() + 5)
