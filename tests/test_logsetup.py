"""The daemon's log handler: lines in order, written in batches by one thread, never blocking the logger."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from reloader import logsetup
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.logsetup import BackgroundHandler, ReopenableFileHandler


def make_handler(target: logging.StreamHandler) -> tuple[BackgroundHandler, logging.Logger]:  # type: ignore[type-arg]
    handler = BackgroundHandler(target)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test-logsetup-{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler, logger


def test_the_text_format_stamps_every_line_as_the_stock_formatter_does() -> None:
    """The date and time are made once a second; the stamp must not tell."""
    stock, ours = logging.Formatter(logsetup.TEXT_FORMAT), logsetup.make_formatter("text")
    created = [1_700_000_000.0, 1_700_000_000.4, 1_700_000_000.9995, 1_700_000_001.0, 1_699_999_999.5,
               1_700_000_001.001, time.time()]
    for at in created:
        record = logging.LogRecord("reloader.x", logging.INFO, __file__, 1, "upstream %s", ("app",), None)
        record.created, record.msecs = at, (at - int(at)) * 1000
        assert ours.format(record) == stock.format(record)
    assert ours.formatTime(record, "%H") == stock.formatTime(record, "%H")


def test_lines_from_many_threads_arrive_whole_and_in_each_thread_s_order(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    handler, logger = make_handler(ReopenableFileHandler(path))

    def burst(thread: int) -> None:
        for line in range(2000):
            logger.info("thread %d line %d", thread, line)

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert handler.flush(timeout=10)
    lines = path.read_text().splitlines()
    assert len(lines) == 8000
    for t in range(4):
        assert [line for line in lines if line.startswith(f"thread {t} ")] == [
            f"thread {t} line {n}" for n in range(2000)]
    handler.close()


def test_a_sink_that_takes_nothing_never_blocks_the_logger_and_the_dropped_lines_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logsetup, "MAX_QUEUED", 50)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = os.fdopen(write_end, "w", encoding="utf-8")
    handler, logger = make_handler(logging.StreamHandler(stream))
    try:
        # More than the pipe holds: the writer is then stuck in write() until someone reads.
        logger.info("x" * (1 << 20))
        assert not handler.flush(timeout=0.2), "a sink that takes nothing cannot have taken the line"
        began = time.monotonic()
        for line in range(5000):
            logger.info("line %d", line)
        took = time.monotonic() - began
        assert took < 2, f"5,000 lines took {took:.1f} s with the sink stuck"
        data = b""
        deadline = time.monotonic() + 10
        while b"lines were dropped" not in data or not data.endswith(b"\n"):
            assert time.monotonic() < deadline, data[-300:]
            try:
                chunk = os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            data += chunk
        assert handler.flush(timeout=5)
        while True:
            try:
                data += os.read(read_end, 1 << 20)
            except BlockingIOError:
                break
        text = data.decode()
        kept = [line for line in text.splitlines() if line.startswith("line ")]
        dropped = int(text.split("log: ", 1)[1].split(" lines were dropped")[0])
        assert len(kept) == logsetup.MAX_QUEUED and dropped == 5000 - len(kept), (len(kept), dropped)
    finally:
        handler.close()
        stream.close()
        os.close(read_end)


def test_a_forked_child_writes_its_own_lines(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    handler, logger = make_handler(ReopenableFileHandler(path))
    logger.info("parent before")
    assert handler.flush()
    assert handler.stop_writer()
    pid = os.fork()
    if pid == 0:  # the child: its writer thread starts with its first line
        try:
            logger.info("child %d", os.getpid())
            os._exit(0 if handler.flush(timeout=5) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    logger.info("parent after")
    assert handler.flush()
    assert path.read_text().splitlines() == ["parent before", f"child {pid}", "parent after"]
    handler.close()


def test_lines_queued_at_exit_are_written(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    script = (
        "import logging, sys\n"
        "from reloader.logsetup import configure_logging\n"
        f"configure_logging('INFO', {str(path)!r})\n"
        "for n in range(5000):\n"
        "    logging.getLogger('reloader.test').info('line %d', n)\n"
        "sys.exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parent.parent)
    lines = path.read_text().splitlines()
    assert len(lines) == 5000 and lines[-1].endswith("reloader.test: line 4999"), lines[-3:]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_configured_daemon_s_lines_carry_everything_their_format_prints(tmp_path: Path, log_format: str) -> None:
    """configure_logging stops records from looking up their caller, thread and process: no format prints them."""
    path = tmp_path / "daemon.log"
    script = (
        "import logging\n"
        "from reloader.logsetup import configure_logging\n"
        f"setup = configure_logging('INFO', {str(path)!r}, {log_format!r})\n"
        "logging.getLogger('reloader.test').warning('upstream %s: %d servers', 'app', 3, extra={'upstream': 'app'})\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('reloader.test').exception('failed')\n"
        "assert setup.handler.flush()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parent.parent)
    text = path.read_text()
    if log_format == "text":
        first = text.splitlines()[0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING reloader.test: upstream app: 3 servers",
                            first), first
        assert "ERROR reloader.test: failed" in text and "ZeroDivisionError" in text
    else:
        first, second = (json.loads(line) for line in text.splitlines())
        assert first["level"] == "WARNING" and first["logger"] == "reloader.test"
        assert first["message"] == "upstream app: 3 servers" and first["upstream"] == "app"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
        assert second["message"] == "failed" and "ZeroDivisionError" in second["exc"]


def test_a_log_file_moved_away_is_reopened_before_the_next_batch(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    handler, logger = make_handler(ReopenableFileHandler(path))
    logger.info("first")
    assert handler.flush()
    path.rename(tmp_path / "daemon.log.1")
    logger.info("second")
    assert handler.flush()
    assert path.read_text() == "second\n"
    assert (tmp_path / "daemon.log.1").read_text() == "first\n"
    handler.close()


def _waits_on_a_pipe(pid: int) -> bool:
    """Whether a thread of PID sleeps in the kernel's pipe write. Where the kernel hides its symbols
    (every wchan reads "0"), the test cannot see it and trusts the pipe's content instead."""
    channels = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            channels.append((task / "wchan").read_text())
        except OSError:
            continue
    if all(channel in ("", "0") for channel in channels):
        return True
    return any(channel.endswith("pipe_write") for channel in channels)


def test_a_daemon_whose_stderr_nobody_reads_keeps_serving_and_stops_on_sigterm(
    zk: LocalZooKeeper, zk_client: KazooClient, zk_root: str, tmp_path: Path,
) -> None:
    """Logging to a full pipe (a supervisor that stopped reading) holds nothing up: every file is written,
    and SIGTERM still ends the daemon within 5 s."""
    import signal

    import yaml

    from tests.test_daemon import ROOT, cluster, create_children, upstream_files, wait_until

    names = [f"app{index}" for index in range(300)]
    transaction = zk_client.transaction()
    for index, name in enumerate(names):
        transaction.create(f"{zk_root}/{name}")
        transaction.create(f"{zk_root}/{name}/10.2.{index // 200}.{index % 200 + 1}:80")
    transaction.commit()
    files = tmp_path / "upstreams"
    config = tmp_path / "reloader.yaml"
    config.write_text(yaml.safe_dump(cluster(zk.hosts, {name: f"{zk_root}/{name}" for name in names},
                                             files_output_path=str(files))))
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: full after a few dozen lines
    try:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reloader", "run", "--config", str(config), "--log-level", "DEBUG"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=write_end)
        os.close(write_end)
        try:
            wait_until(lambda: files.is_dir() and len(upstream_files(files)) == len(names)
                       or daemon.poll() is not None, "every file, with nobody reading the log", timeout=60)
            assert daemon.poll() is None, "the daemon died"
            # Full: some thread of the daemon waits in the kernel for room in the pipe. How many bytes that
            # takes varies: a one-page pipe can refuse a 3.5 KB batch while it holds under 1 KB.
            wait_until(lambda: _waits_on_a_pipe(daemon.pid), "the log writer to wait on the full pipe")
            assert os.read(read_end, 1 << 16), "the log never reached the pipe"
            create_children(zk_client, f"{zk_root}/app7", {"10.9.9.9:80": b""})
            wait_until(lambda: "10.9.9.9:80" in (files / "app7.upstream").read_text(), "a change after the pipe filled")
            began = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=10)
            took = time.monotonic() - began
            assert took < 5, f"SIGTERM took {took:.1f} s with the log sink stuck"
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    finally:
        os.close(read_end)
