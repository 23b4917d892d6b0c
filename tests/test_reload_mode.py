"""Reload mode: stock nginx kept in step with ``nginx -t`` + ``nginx -s reload``.

Two halves:

* unit tests of :class:`ReloadOutput` with a fake ``run`` and a fake clock:
  rate limiting, coalescing, restore on a refused change, no shell;
* end to end with real services: ZooKeeper, the daemon as a subprocess,
  Debian's nginx in a private prefix, and tiny backends that answer with
  their own name, so "traffic moved" is observed, not assumed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from reloader.config import ReloadConfig
from reloader.localenv.backends import BackendPool, http_get
from reloader.localenv.nginx import LocalNginx, server_block
from reloader.localenv.ports import free_port
from reloader.localenv.zookeeper import LocalZooKeeper
from reloader.model import Server, Upstream
from reloader.outputs.base import FileWritten
from reloader.outputs.files import FilesOutput, FileStore
from reloader.outputs.reload import REFUSED_RETRY_MAX, REFUSED_RETRY_MIN, ReloadOutput
from reloader.render import render_file

TEST_CMD = ("nginx", "-t")
RELOAD_CMD = ("nginx", "-s", "reload")


# =============================================================================
# Unit tests: fake run, fake clock
# =============================================================================


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRun:
    """Records every call; answers from a per-argv script (default: success)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        # argv tuple -> callable() returning (returncode, stderr) or an exception to raise
        self.behaviour: dict[tuple[str, ...], Callable[[], Any]] = {}

    def __call__(self, argv: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, kwargs))
        action = self.behaviour.get(tuple(argv))
        code, err = 0, ""
        if action is not None:
            result = action()
            if isinstance(result, BaseException):
                raise result
            code, err = result
        return subprocess.CompletedProcess(argv, code, stdout="", stderr=err)

    def argvs(self) -> list[tuple[str, ...]]:
        return [tuple(argv) for argv, _ in self.calls]

    @property
    def reloads(self) -> int:
        return self.argvs().count(RELOAD_CMD)

    @property
    def tests(self) -> int:
        return self.argvs().count(TEST_CMD)


def upstream(name: str, *ports: int) -> Upstream:
    servers = tuple(Server("127.0.0.1", port) for port in sorted(ports))
    return Upstream(name, servers, live_count=len(servers))


@pytest.fixture
def rig(tmp_path: Path) -> tuple[FilesOutput, ReloadOutput, FakeRun, FakeClock]:
    store = FileStore(tmp_path)
    store.prepare()
    run, clock = FakeRun(), FakeClock()
    output = ReloadOutput(store, ReloadConfig(TEST_CMD, RELOAD_CMD, 2.0), clock=clock, run=run)
    files = FilesOutput(store, listeners=[lambda events: [output.file_written(event) for event in events]])
    return files, output, run, clock


def batch(files: FilesOutput, output: ReloadOutput, *upstreams: Upstream) -> None:
    """One batch as the runners see it: the files output writes, the reload output follows its events."""
    for item in upstreams:
        files.publish(item)
    files.end_batch()
    output.end_batch()


def test_first_change_tests_then_reloads_at_once_without_a_shell(rig: Any) -> None:
    files, output, run, _clock = rig
    batch(files, output, upstream("app1", 8001))
    assert run.argvs() == [TEST_CMD, RELOAD_CMD]
    for argv, kwargs in run.calls:
        assert isinstance(argv, list)
        assert not kwargs.get("shell", False)
        assert kwargs["timeout"] > 0
    assert output.reloads == 1 and output.test_failures == 0


def test_changes_inside_the_interval_are_coalesced_into_one_reload(rig: Any) -> None:
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    assert run.reloads == 1
    for step in range(1, 10):  # nine more changes, 0.1 s apart, all inside the window
        clock.now += 0.1
        batch(files, output, upstream("app1", 8001, 9000 + step))
        output.tick(clock.now)
    assert run.reloads == 1, "no reload before min_interval has passed"
    assert output.pending == ("app1",)
    clock.now = 1000.0 + 1.99
    output.tick(clock.now)
    assert run.reloads == 1
    clock.now = 1000.0 + 2.0
    output.tick(clock.now)
    assert run.reloads == 2, "the coalesced changes are applied once the interval passed"
    assert output.pending == ()
    assert "127.0.0.1:9009" in (files.read("app1") or "")
    # Quiet afterwards: nothing more.
    clock.now += 10
    output.tick(clock.now)
    assert run.reloads == 2 and output.reloads == 2


def test_reloads_never_come_closer_than_min_interval(rig: Any) -> None:
    files, output, run, clock = rig
    reload_times: list[float] = []
    run.behaviour[RELOAD_CMD] = lambda: (reload_times.append(clock.now), (0, ""))[1]
    start = clock.now
    port = 8000
    while clock.now < start + 20:
        port += 1
        batch(files, output, upstream("app1", port))
        clock.now += 0.25
        output.tick(clock.now)
    gaps = [b - a for a, b in zip(reload_times, reload_times[1:])]
    assert len(reload_times) >= 9
    assert all(gap >= 2.0 for gap in gaps), gaps
    # Last state is reached at the next window.
    clock.now += 2
    output.tick(clock.now)
    assert output.pending == ()


def test_quiet_period_means_the_next_change_reloads_at_once(rig: Any) -> None:
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    clock.now += 5
    batch(files, output, upstream("app1", 8002))
    assert run.reloads == 2


def test_change_undone_within_the_window_causes_no_reload(rig: Any) -> None:
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    clock.now += 0.5
    batch(files, output, upstream("app1", 8001, 8002))
    clock.now += 0.5
    batch(files, output, upstream("app1", 8001))
    clock.now += 2
    output.tick(clock.now)
    assert run.reloads == 1
    assert output.skipped == 1


def test_seed_never_reloads(rig: Any) -> None:
    files, output, run, clock = rig
    text = render_file(upstream("app1", 8001))
    files.path_for("app1").write_text(text)
    # Start-up: the file already holds the state, and nginx loaded it.
    output.file_written(FileWritten(upstream("app1", 8001), text, text))
    output.end_batch()
    clock.now += 10
    output.tick(clock.now)
    assert run.calls == []


def test_refused_change_restores_the_previous_file_and_does_not_reload(rig: Any) -> None:
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    good = files.read("app1")
    run.behaviour[TEST_CMD] = lambda: (1, "nginx: [emerg] host not found in upstream \"bad:80\"\n")
    clock.now += 5
    batch(files, output, upstream("app1", 8001, 8002))
    assert files.read("app1") == good
    assert output.test_failures == 1
    assert run.reloads == 1
    assert output.pending == ()
    # The next good change goes through normally (after the interval).
    run.behaviour.pop(TEST_CMD)
    clock.now += 2
    batch(files, output, upstream("app1", 8003))
    assert run.reloads == 2
    assert "8003" in (files.read("app1") or "")


def test_refused_new_file_is_removed(rig: Any) -> None:
    files, output, run, _clock = rig
    run.behaviour[TEST_CMD] = lambda: (1, "emerg")
    batch(files, output, upstream("app1", 8001))
    assert files.read("app1") is None
    assert run.reloads == 0


def test_restore_goes_back_to_what_nginx_last_loaded_across_a_window(rig: Any) -> None:
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    loaded = files.read("app1")
    clock.now += 0.5
    batch(files, output, upstream("app1", 8002))  # waits for the window
    clock.now += 0.5
    batch(files, output, upstream("app1", 8003))  # still waiting
    run.behaviour[TEST_CMD] = lambda: (1, "emerg")
    clock.now += 1
    output.tick(clock.now)
    assert files.read("app1") == loaded


def test_one_refused_upstream_does_not_hold_back_the_others(rig: Any, tmp_path: Path) -> None:
    files, output, run, clock = rig
    batch(files, output, upstream("good", 8001), upstream("bad", 8001))
    old_bad = files.read("bad")
    # The "test" refuses whenever bad.upstream lists port 6666.
    run.behaviour[TEST_CMD] = lambda: (1, "emerg: bad") if "6666" in (files.read("bad") or "") else (0, "")
    clock.now += 5
    batch(files, output, upstream("good", 8002), upstream("bad", 6666))
    assert "8002" in (files.read("good") or "")
    assert files.read("bad") == old_bad
    assert output.test_failures == 1
    assert run.reloads == 2


@pytest.mark.parametrize(
    "failure",
    [
        FileNotFoundError(2, "No such file"),
        subprocess.TimeoutExpired(list(TEST_CMD), 30),
        PermissionError(13, "denied"),
    ],
    ids=["missing", "timeout", "permission"],
)
def test_a_test_cmd_that_cannot_run_is_a_failure(rig: Any, failure: BaseException, caplog: Any) -> None:
    files, output, run, _clock = rig
    run.behaviour[TEST_CMD] = lambda: failure
    batch(files, output, upstream("app1", 8001))
    assert output.test_failures == 1
    assert run.reloads == 0
    assert files.read("app1") is None
    assert "nginx -t" in caplog.text


def test_failed_reload_is_retried_with_backoff(rig: Any, caplog: Any) -> None:
    files, output, run, clock = rig
    run.behaviour[RELOAD_CMD] = lambda: (1, "nginx: [error] invalid PID number")
    batch(files, output, upstream("app1", 8001))
    assert output.reload_failures == 1 and output.reloads == 0
    assert "invalid PID number" in caplog.text
    # The file was kept: the test passed, only the reload failed.
    assert "8001" in (files.read("app1") or "")
    attempts = [clock.now]
    for _ in range(60):  # 30 s of ticks, still failing: 2, 4, 8, 16 s apart
        clock.now += 0.5
        before = run.reloads
        output.tick(clock.now)
        if run.reloads > before:
            attempts.append(clock.now)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps == [2.0, 4.0, 8.0, 16.0]
    run.behaviour.pop(RELOAD_CMD)
    clock.now += 32
    output.tick(clock.now)
    assert output.reloads == 1
    clock.now += 100
    output.tick(clock.now)
    assert output.reloads == 1, "nothing owed any more"


def test_a_reload_owed_when_the_process_stops_is_made_at_the_next_start(rig: Any, tmp_path: Path) -> None:
    """The reload failed (nginx not running), and so did close()'s: the next start still owes it."""
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    assert output.reloads == 1
    run.behaviour[RELOAD_CMD] = lambda: (1, "nginx: [error] invalid PID number")
    clock.now += 10
    batch(files, output, upstream("app1", 8002))
    output.close()
    assert output.reload_failures == 2 and output.reloads == 1
    run.behaviour.pop(RELOAD_CMD)
    # Next start: the adopted file is announced unchanged; the reload is owed all the same.
    restarted = ReloadOutput(FileStore(tmp_path), ReloadConfig(TEST_CMD, RELOAD_CMD, 2.0), clock=clock, run=run)
    text = files.read("app1")
    restarted.file_written(FileWritten(upstream("app1", 8002), text, text))
    restarted.end_batch()
    assert restarted.reloads == 1
    # And once made, a further start owes nothing.
    again = ReloadOutput(FileStore(tmp_path), ReloadConfig(TEST_CMD, RELOAD_CMD, 2.0), clock=clock, run=run)
    again.tick(clock.now + 100)
    assert again.reloads == 0


def test_refusal_after_a_failed_reload_restores_the_tested_file(rig: Any) -> None:
    """nginx was not running for the first change; the file it later started with must stay."""
    files, output, run, clock = rig
    run.behaviour[RELOAD_CMD] = lambda: (1, "no pid")
    batch(files, output, upstream("app1", 8001))
    tested = files.read("app1")
    run.behaviour.pop(RELOAD_CMD)
    run.behaviour[TEST_CMD] = lambda: (1, "emerg")
    clock.now += 0.5
    batch(files, output, upstream("app1", 8001, 8002))
    clock.now += 2
    output.tick(clock.now)
    assert files.read("app1") == tested
    assert output.test_failures == 1
    assert output.reloads == 1, "the owed reload still happens, for the tested file"


def test_close_applies_pending_changes(rig: Any) -> None:
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    clock.now += 0.5
    batch(files, output, upstream("app1", 8002))
    assert run.reloads == 1
    output.close()
    assert run.reloads == 2


def test_a_refused_change_is_tried_again_once_nginx_accepts_it(rig: Any) -> None:
    """nginx -t refused for a reason outside the files (a broken nginx.conf, fixed later)."""
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    good = files.read("app1")
    run.behaviour[TEST_CMD] = lambda: (1, "nginx: [emerg] unknown directive in nginx.conf")
    clock.now += 5
    batch(files, output, upstream("app1", 8002))
    assert files.read("app1") == good
    reloads = run.reloads

    run.behaviour.pop(TEST_CMD)  # the operator fixes nginx.conf
    clock.now += REFUSED_RETRY_MIN - 1
    output.tick(clock.now)
    assert files.read("app1") == good and run.reloads == reloads, "not before the back-off"
    clock.now += 1
    output.tick(clock.now)
    assert files.read("app1") == render_file(upstream("app1", 8002))
    assert run.reloads == reloads + 1


def test_a_change_refused_again_backs_off_and_a_newer_state_replaces_it(rig: Any) -> None:
    files, output, run, clock = rig
    batch(files, output, upstream("app1", 8001))
    good = files.read("app1")
    run.behaviour[TEST_CMD] = lambda: (1, "nginx: [emerg] still broken")
    clock.now += 5
    batch(files, output, upstream("app1", 8002))
    tests = run.tests

    clock.now += REFUSED_RETRY_MIN
    output.tick(clock.now)
    assert run.tests == tests + 1 and files.read("app1") == good, "tried again, refused again, restored"
    clock.now += REFUSED_RETRY_MIN  # the back-off has doubled: not yet
    output.tick(clock.now)
    assert run.tests == tests + 1
    clock.now += REFUSED_RETRY_MIN
    output.tick(clock.now)
    assert run.tests == tests + 2

    # A newer state of the upstream replaces the refused one: it is never tried again.
    run.behaviour.pop(TEST_CMD)
    clock.now += 2  # past min_interval, so the batch is tested and reloaded at once
    batch(files, output, upstream("app1", 8003))
    assert files.read("app1") == render_file(upstream("app1", 8003))
    tests = run.tests
    clock.now += REFUSED_RETRY_MAX
    output.tick(clock.now)
    assert run.tests == tests
    assert files.read("app1") == render_file(upstream("app1", 8003))


def test_a_write_that_failed_is_reloaded_once_the_files_retry_writes_it(rig: Any, tmp_path: Path) -> None:
    files, output, run, clock = rig
    real_path = files.store.directory
    files.store.directory = tmp_path / "missing"  # writes fail: the directory is not there
    files.publish(upstream("app1", 8001))
    files.end_batch()
    output.end_batch()
    assert run.calls == [] and files.pending == ("app1",), "nothing written: nothing tested, nothing reloaded"
    files.store.directory = real_path
    files.tick(1e12)  # the files output's retry writes it and announces it
    output.end_batch()
    assert run.reloads == 1


# =============================================================================
# End to end: ZooKeeper, the daemon as a subprocess, real nginx, real traffic
# =============================================================================

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Stack:
    """One test's nginx, backends, config and daemon process."""

    def __init__(self, tmp: Path, zk: LocalZooKeeper, znode: str, nginx_bin: str) -> None:
        self.tmp = tmp
        self.zk = zk
        self.znode = znode
        self.files_dir = tmp / "upstreams"
        self.files_dir.mkdir()
        self.upstream_file = self.files_dir / "app1.upstream"
        self.nginx = LocalNginx(nginx_bin, workdir=tmp / "nginx")
        self.port = free_port()
        self.nginx.write_config(
            f'include "{self.files_dir}/*.upstream";\n'
            + server_block(self.port, "location / {\n    proxy_pass http://app1;\n}\n")
        )
        self.pool = BackendPool(4, prefix="b")
        self.pool.start()
        self.reload_log = tmp / "reloads.log"
        self.break_marker = tmp / "break-nginx-t"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log = tmp / "daemon.log"

    def start_nginx_with(self, indexes: list[int]) -> None:
        """Write app1.upstream for these backends, then start nginx (it refuses an empty upstream)."""
        servers = tuple(Server("127.0.0.1", self.pool[i].port) for i in indexes)
        self.upstream_file.write_text(render_file(Upstream("app1", servers, live_count=len(servers))))
        self.nginx.start()

    def wrappers(self) -> tuple[list[str], list[str]]:
        """argv of test_cmd and reload_cmd wrapper scripts around the real nginx."""
        test = self.tmp / "nginx-test.sh"
        test.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            # Fails, as nginx -t would, while the marker file exists.
            if [ -e '{self.break_marker}' ]; then
                echo 'nginx: [emerg] simulated failure (marker present)' >&2
                exit 1
            fi
            exec {' '.join(f"'{a}'" for a in self.nginx.test_argv())}
            """))
        reload = self.tmp / "nginx-reload.sh"
        reload.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            date +%s.%N >> '{self.reload_log}'
            exec {' '.join(f"'{a}'" for a in self.nginx.reload_argv())}
            """))
        for script in (test, reload):
            script.chmod(0o755)
        return [str(test)], [str(reload)]

    def start_daemon(self, min_interval: float, test_cmd: list[str] | None = None) -> None:
        wrapped_test, wrapped_reload = self.wrappers()
        config = {
            "zk_servers": self.zk.hosts,
            "zk_nodes": {"app1": self.znode},
            "allowed_networks": ["127.0.0.0/8"],  # the backends listen on loopback
            "files_output_path": str(self.files_dir),
            "zk_session_timeout": 2,
            "nginx_reload": {
                "test_cmd": test_cmd or wrapped_test,
                "reload_cmd": wrapped_reload,
                "min_interval": min_interval,
            },
        }
        path = self.tmp / "upstream_zk_nodes.conf"
        path.write_text(yaml.safe_dump(config))
        with self.daemon_log.open("wb") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "reloader", "run", "--config", str(path), "--log-level", "DEBUG"],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def daemon_output(self) -> str:
        return self.daemon_log.read_text(errors="replace") if self.daemon_log.exists() else ""

    def reload_times(self) -> list[float]:
        """Wall-clock start of every reload_cmd run."""
        return [float(line) for line in self.reload_log.read_text().split()] if self.reload_log.exists() else []

    def reload_count(self) -> int:
        return len(self.reload_times())

    def reached(self, requests: int = 8) -> set[str]:
        """Identities of the backends nginx reached in ``requests`` GETs (errors show as "HTTP nnn")."""
        seen = set()
        for _ in range(requests):
            try:
                status, body = http_get(self.nginx.url(), timeout=3)
            except OSError as error:
                seen.add(f"error {error}")
                continue
            seen.add(body.strip() if status == 200 else f"HTTP {status}")
        return seen

    def names(self, indexes: list[int]) -> set[str]:
        return {self.pool[i].name for i in indexes}

    def file_addresses(self) -> set[str]:
        text = self.upstream_file.read_text() if self.upstream_file.exists() else ""
        return set(re.findall(r"server (\S+?);", text))

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.nginx.close()
        self.pool.stop()


@pytest.fixture
def stack(tmp_path: Path, zk: LocalZooKeeper, zk_root: str, nginx_bin: str) -> Iterator[Stack]:
    s = Stack(tmp_path, zk, f"{zk_root}/app1", nginx_bin)
    yield s
    s.close()


def register(client: KazooClient, stack: Stack, index: int) -> None:
    client.create(f"{stack.znode}/{stack.pool[index].address}", makepath=True)


def unregister(client: KazooClient, stack: Stack, index: int) -> None:
    client.delete(f"{stack.znode}/{stack.pool[index].address}")


def wait_reached(stack: Stack, expected: set[str], timeout: float, what: str) -> float:
    """Wait until nginx reaches exactly ``expected``; return how long it took."""
    began = time.monotonic()
    last: list[set[str]] = [set()]

    def ok() -> bool:
        last[0] = stack.reached()
        return last[0] == expected

    deadline = began + timeout
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout} s waiting for {what}: nginx reached {sorted(last[0])}, "
                f"expected {sorted(expected)}\n--- daemon log:\n{stack.daemon_output()[-4000:]}"
            )
        time.sleep(0.05)
    return time.monotonic() - began


def test_reload_mode_routes_and_survives_a_refused_change(
    stack: Stack, zk_client: KazooClient, capsys: Any
) -> None:
    # nginx will not start while an included upstream is empty: write the
    # file for b-1, start nginx, then the daemon (which adopts the file).
    register(zk_client, stack, 0)
    stack.start_nginx_with([0])
    stack.start_daemon(min_interval=0.5)
    wait_for(lambda: "watching 1 upstreams" in stack.daemon_output(), 20, "the daemon to start")
    wait_reached(stack, stack.names([0]), 10, "b-1 only")

    # Added in ZooKeeper -> receives requests through nginx.
    changed = time.monotonic()
    register(zk_client, stack, 1)
    wait_reached(stack, stack.names([0, 1]), 10, "b-1 and b-2")
    total_add = time.monotonic() - changed

    # Removed -> stops receiving them. (Wait out the rate-limit window first,
    # so that this measures the latency, not the window.)
    time.sleep(0.6)
    changed = time.monotonic()
    unregister(zk_client, stack, 0)
    wait_reached(stack, stack.names([1]), 10, "b-2 only")
    total_remove = time.monotonic() - changed
    reloads_before = stack.reload_count()
    assert reloads_before >= 2

    # A refused change: test_cmd fails while the marker exists.
    good_text = stack.upstream_file.read_text()
    stack.break_marker.touch()
    register(zk_client, stack, 2)
    wait_for(lambda: "refused the new upstream app1" in stack.daemon_output(), 10, "the refusal in the log")
    assert "simulated failure (marker present)" in stack.daemon_output(), "nginx's own message is logged"
    assert stack.upstream_file.read_text() == good_text, "the file is restored to the previous content"
    assert stack.reload_count() == reloads_before, "no reload after a refused test"
    # nginx keeps serving the old set, for a while.
    for _ in range(5):
        assert stack.reached() == stack.names([1])
        time.sleep(0.1)
    assert stack.daemon.poll() is None, "the daemon keeps running"

    # Once nginx -t passes again, the next change goes through (and includes b-3).
    stack.break_marker.unlink()
    register(zk_client, stack, 3)
    wait_reached(stack, stack.names([1, 2, 3]), 10, "b-2, b-3 and b-4")
    assert stack.file_addresses() == {stack.pool[i].address for i in (1, 2, 3)}
    with capsys.disabled():
        print(f"\n[reload mode] znode change -> traffic moved: add {total_add:.2f} s, remove {total_remove:.2f} s")


def test_unresolvable_host_never_reaches_the_file_or_nginx(stack: Stack, zk_client: KazooClient) -> None:
    """nginx -t, a reload and a restart all fail on a host name that does not resolve.

    So such a child is skipped before it is published, with one warning, and
    nothing is tested or reloaded for it. Here the daemon starts before nginx,
    as at boot: its first reload fails (no nginx yet) and is retried; nginx
    starts from the file meanwhile.
    """
    register(zk_client, stack, 0)
    stack.start_daemon(min_interval=0.2, test_cmd=stack.nginx.test_argv())
    wait_for(lambda: stack.file_addresses() == {stack.pool[0].address}, 20, "the first upstream file")
    stack.nginx.start()
    wait_reached(stack, stack.names([0]), 10, "b-1 only")
    good_text = stack.upstream_file.read_text()

    zk_client.create(f"{stack.znode}/nonexistent-host.invalid:80")
    wait_for(lambda: "'nonexistent-host.invalid:80' skipped: host name 'nonexistent-host.invalid' does not resolve"
             in stack.daemon_output(), 15, "the skip in the log")
    assert stack.upstream_file.read_text() == good_text
    assert "refused" not in stack.daemon_output()
    assert stack.reached() == stack.names([0])

    # Removing the bad instance and adding a good one works as usual.
    zk_client.delete(f"{stack.znode}/nonexistent-host.invalid:80")
    register(zk_client, stack, 1)
    wait_reached(stack, stack.names([0, 1]), 10, "b-1 and b-2")


def test_a_burst_of_changes_is_coalesced_and_ends_exact(stack: Stack, zk_client: KazooClient, capsys: Any) -> None:
    register(zk_client, stack, 0)
    stack.start_nginx_with([0])
    stack.start_daemon(min_interval=2.0)
    wait_for(lambda: "watching 1 upstreams" in stack.daemon_output(), 20, "the daemon to start")
    wait_reached(stack, stack.names([0]), 10, "b-1 only")
    before = stack.reload_count()

    # Ten changes within about one second: walk through sets of backends.
    sequence = [[0, 1], [0, 1, 2], [1, 2], [1, 2, 3], [2, 3], [0, 2, 3], [0, 3], [0, 1, 3], [1, 3], [1, 2, 3]]
    current = {0}
    for wanted in sequence:
        for index in sorted(current - set(wanted)):
            unregister(zk_client, stack, index)
        for index in sorted(set(wanted) - current):
            register(zk_client, stack, index)
        current = set(wanted)
        time.sleep(0.1)
    final = {stack.pool[i].address for i in current}

    wait_for(lambda: stack.file_addresses() == final, 10, "the final file")
    wait_reached(stack, stack.names(sorted(current)), 10, "the final set")
    # No further reload is pending: wait one window and count.
    time.sleep(2.5)
    times = stack.reload_times()[before:]
    reloads = len(times)
    assert stack.file_addresses() == final
    assert stack.reached(12) == stack.names(sorted(current))
    # About a second of changes with a 2 s window: one reload at once, one for the rest.
    assert 1 <= reloads <= 3, f"{reloads} reloads for {len(sequence)} changes"
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert all(gap >= 2.0 - 0.1 for gap in gaps), f"reloads closer than min_interval: {gaps}"
    with capsys.disabled():
        print(f"\n[reload mode] burst: {len(sequence)} changes -> {reloads} reloads")


# =============================================================================
# Files first across a restart: a file ahead of nginx is reloaded at the next start
# =============================================================================


@pytest.mark.timeout(60)
def test_a_file_written_but_never_reloaded_is_reloaded_at_the_next_start(tmp_path: Path, nginx_bin: str) -> None:
    """The FileWritten queued while nginx -t ran was lost at SIGTERM: the next start still reloads.

    Real nginx: the first run writes b-1's state and reloads; then the files
    output writes b-2's state but the process stops before the reload output
    takes the event. The next start adopts the file (unchanged, so no event
    says "changed"), compares it with what nginx last loaded, and reloads.
    """
    files_dir = tmp_path / "upstreams"
    files_dir.mkdir()
    nginx = LocalNginx(nginx_bin, workdir=tmp_path / "nginx")
    port = free_port()
    nginx.write_config(f'include "{files_dir}/*.upstream";\n'
                       + server_block(port, "location / {\n    proxy_pass http://app1;\n}\n"))
    pool = BackendPool(2, prefix="b")
    pool.start()
    try:
        store = FileStore(files_dir)
        store.prepare()
        config = ReloadConfig(tuple(nginx.test_argv()), tuple(nginx.reload_argv()), 0.0)

        def reached() -> set[str]:
            return {http_get(nginx.url(), timeout=3)[1].strip() for _ in range(6)}

        # First run: nginx loads b-1 through the reload output.
        first = ReloadOutput(store, config)
        events: list[FileWritten] = []
        files = FilesOutput(store, listeners=[events.extend])
        files.publish(upstream("app1", pool[0].port))
        files.end_batch()
        nginx.start()
        for event in events:
            first.file_written(event)
        first.end_batch()
        assert first.reloads == 1
        wait_for(lambda: reached() == {pool[0].name}, 10, "nginx to serve b-1")

        # The files output writes b-2; the event never reaches the reload output (SIGTERM).
        lost = FilesOutput(store, listeners=[lambda events: None])
        lost.publish(upstream("app1", pool[1].port))
        lost.end_batch()
        assert reached() == {pool[0].name}, "nginx is behind the file"

        # Next start: the adopted file is announced unchanged.
        second = ReloadOutput(store, config)
        text = store.read("app1")
        second.file_written(FileWritten(upstream("app1", pool[1].port), text, text))
        second.end_batch()
        wait_for(lambda: reached() == {pool[1].name}, 10, "nginx to serve the file's b-2")
        assert second.reloads == 1

        # And a start with nothing owed does not reload.
        third = ReloadOutput(store, config)
        third.file_written(FileWritten(upstream("app1", pool[1].port), text, text))
        third.end_batch()
        third.tick(time.monotonic() + 100)
        assert third.reloads == 0
    finally:
        nginx.close()
        pool.stop()
