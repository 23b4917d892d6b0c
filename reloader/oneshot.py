"""One-shot render: read the registry once and show (or write) what the daemon would publish.

``nginx-upstream-reloader render`` is the dry run of ``run``. It reads every
configured znode once and sends each snapshot through the daemon's own
:class:`~reloader.pipeline.Pipeline`, seeded with the files on disk as the
daemon's start-up seeds it, so the answer is the one the daemon would give.

Guarantees:

* every cluster is read in parallel, each with one kazoo client that is
  stopped before the command returns: connecting takes at most the config's
  ``zk_session_timeout``, and the reads (every child list first, then every
  child's data, all requests sent before any answer is awaited) share a
  second deadline of the same length;
* host names from the registry are looked up as the daemon looks them up
  (reloader/resolve.py), waiting for answers at most ``HostChecker.timeout``
  (5 s) over the whole run; a name still unanswered then is left out as the
  daemon leaves it out until it answers;
* nothing but ZooKeeper and DNS is read, and nothing is written anywhere unless
  ``write`` is asked for; then only files whose text changes are written,
  atomically, through :class:`~reloader.outputs.files.FileStore`, under the
  directory lock the daemon takes, so a running daemon is never raced;
* an upstream whose cluster or znode could not be read, or whose znode has
  no valid instance, keeps its file, and the report says so;
* a cluster that cannot be read never stops the others from being rendered.

Exit codes: 0 when every cluster and every znode was read, 1 when one was
not (a znode that does not exist counts) or a file could not be written.
Differences shown by ``diff`` do not change the exit code: 1 already means
"the registry could not be read", and a script must be able to tell a
registry change from an outage. (Bad configs, exit 2, are the CLI's part.)
"""

from __future__ import annotations

import difflib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from reloader.config import ClusterConfig, Config, ZnodeConfig, kazoo_arguments
from reloader.model import Upstream
from reloader.outputs.files import FileStore, atomic_write
from reloader.outputs.guard_record import GuardRecord, read_owed
from reloader.outputs.lua import upstream_document
from reloader.pipeline import Pipeline
from reloader.readback import ReadbackError, parse_upstream_block
from reloader.render import render_dyups_body, render_file, render_file_lua
from reloader.resolve import HostChecker
from reloader.snapshot import ChildData, Snapshot, Unreadable
from reloader.sources.zookeeper import close_client, describe_error

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNREAD = 1

ClientFactory = Callable[..., Any]

# What became of one upstream.
CHANGED = "changed"  # the file would get new text (or would be created)
UNCHANGED = "unchanged"  # the file already holds what the registry says
KEPT = "kept"  # nothing is written: the guard or a failed read keeps the file as it is


# ---- reading -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterRead:
    """One cluster read once: a snapshot per znode path read, and what could not be read."""

    cluster: ClusterConfig
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    # Per znode path that could not be listed, why ("does not exist", an error).
    unread: dict[str, str] = field(default_factory=dict)
    # Set when the cluster as a whole could not be read; then nothing else is.
    error: str | None = None


def _child_path(parent: str, child: str) -> str:
    return f"{parent.rstrip('/')}/{child}"


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def read_cluster(cluster: ClusterConfig, timeout: float, client_factory: ClientFactory | None = None) -> ClusterRead:
    """Read every znode of ``cluster`` once, pipelined; never raises for a ZooKeeper failure."""
    from kazoo.client import KazooClient  # imported late: only reading needs kazoo
    from kazoo.exceptions import NoNodeError, ZookeeperError

    factory = client_factory or KazooClient
    # kazoo logs every failed connection attempt; the report names the
    # cluster and the error once instead.
    quiet = logging.getLogger("reloader.oneshot.kazoo")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    paths = list(dict.fromkeys(znode.path for znode in cluster.znodes))
    client = factory(**kazoo_arguments(cluster), timeout=timeout, logger=quiet)
    try:
        client.start(timeout=timeout)
        deadline = time.monotonic() + timeout
        listings: dict[str, list[str]] = {}
        unread: dict[str, str] = {}
        for path, pending in [(path, client.get_children_async(path)) for path in paths]:
            try:
                listings[path] = sorted(pending.get(timeout=_remaining(deadline)))
            except NoNodeError:
                unread[path] = "does not exist"
            except ZookeeperError as error:
                unread[path] = f"cannot be listed: {describe_error(error)}"
        requests = [
            (path, child, client.get_async(_child_path(path, child)))
            for path, children in listings.items()
            for child in children
        ]
        snapshots: dict[str, dict[str, ChildData]] = {path: {} for path in listings}
        for path, child, pending in requests:
            data: ChildData
            try:
                data, _stat = pending.get(timeout=_remaining(deadline))
            except NoNodeError:
                continue  # deleted between the listing and the read: no longer an instance
            except ZookeeperError as error:
                data = Unreadable(f"ZooKeeper refused to read it: {describe_error(error)}")
            snapshots[path][child] = data
        return ClusterRead(cluster, dict(snapshots), unread)
    except Exception as error:  # noqa: BLE001 - any other failure means the cluster was not read
        return ClusterRead(cluster, error=describe_error(error))
    finally:
        close_client(client)


def read_all(config: Config, client_factory: ClientFactory | None = None) -> list[ClusterRead]:
    """Every cluster of ``config`` read at once, in config order."""
    with ThreadPoolExecutor(max_workers=min(8, len(config.clusters))) as pool:
        return list(pool.map(
            lambda cluster: read_cluster(cluster, config.zk_session_timeout, client_factory), config.clusters))


# ---- deciding --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the daemon would do with one upstream now."""

    znode: ZnodeConfig
    cluster: str
    path: Path  # the upstream's file
    state: str  # CHANGED, UNCHANGED or KEPT
    current: str | None  # the file's text now (None: no file)
    upstream: Upstream | None  # what would be published (None when nothing is)
    text: str | None  # the file text that would be written (None when KEPT)
    note: str = ""  # why it is kept, or what a guard holds back


@dataclass(frozen=True)
class Report:
    outcomes: list[Outcome]
    reads: list[ClusterRead]

    @property
    def problems(self) -> list[str]:
        """One line per cluster or znode that could not be read."""
        lines: list[str] = []
        for read in self.reads:
            if read.error is not None:
                lines.append(f"cluster {read.cluster.label}: cannot be read: {read.error}")
            for path, why in read.unread.items():
                lines.append(f"cluster {read.cluster.label}: znode {path} {why}")
        return lines

    @property
    def exit_code(self) -> int:
        return EXIT_UNREAD if self.problems else EXIT_OK


def _read_back(store: FileStore, znode: ZnodeConfig,
               owed: dict[str, tuple[tuple[float, int], ...]]) -> tuple[str | None, Upstream | None]:
    """The file's text, and the state the daemon's start-up would adopt from it (None: none).

    ``owed`` is the guard record's (reloader.outputs.guard_record), as the daemon's start-up reads it.
    """
    path = store.path_for(znode.upstream)
    try:
        text = store.read(znode.upstream)
    except (OSError, UnicodeDecodeError) as error:
        log.warning("cannot read %s: %s", path, error)
        return None, None
    if text is None:
        return None, None
    try:
        upstream = parse_upstream_block(text)
    except ReadbackError as error:
        log.warning("%s is not adopted: %s", path, error)
        return text, None
    if upstream.name != znode.upstream:
        log.warning("%s is not adopted: it defines upstream %r", path, upstream.name)
        return text, None
    # As at the daemon's start-up: the config, not an old file, is the authority on directives,
    # and the shrink guard's reference is what the record says it owes.
    return text, replace(upstream, directives=znode.options.directives, owed=owed.get(znode.upstream, ()))


def decide(config: Config, reads: list[ClusterRead], hosts: HostChecker | None = None) -> Report:
    """Run every snapshot through a daemon pipeline seeded from the files on disk."""
    store = FileStore(config.files_output_path, stream=config.stream_upstreams)
    render = render_file_lua if config.lua_url else render_file
    outcomes: list[Outcome] = []
    owed = read_owed(store.directory)
    for read in reads:
        published: dict[str, Upstream] = {}
        pipeline = Pipeline(read.cluster.znodes, _recorder(published), hosts=hosts)
        for znode in read.cluster.znodes:
            current, adopted = _read_back(store, znode, owed)
            if adopted is not None:
                pipeline.adopt(adopted)
            kept, held = _unread_note(read, znode), ""
            if kept is None:
                pipeline.update(znode.upstream, read.snapshots[znode.path], znode.path)
                kept, held = _guard_notes(pipeline, znode, znode.upstream in published)
            outcomes.append(_outcome(read.cluster, store, znode, current, published.get(znode.upstream),
                                     pipeline.last_published(znode.upstream), kept, held, render))
    return Report(outcomes, reads)


def _recorder(published: dict[str, Upstream]) -> Callable[[Upstream], None]:
    """Stands where the daemon puts the files runner: remembers what the pipeline publishes."""

    def record(upstream: Upstream) -> None:
        published[upstream.name] = upstream

    return record


def _unread_note(read: ClusterRead, znode: ZnodeConfig) -> str | None:
    if read.error is not None:
        return f"cluster {read.cluster.label} could not be read"
    if znode.path in read.unread:
        return f"znode {znode.path} {read.unread[znode.path]}"
    return None


def _guard_notes(pipeline: Pipeline, znode: ZnodeConfig, published: bool) -> tuple[str | None, str]:
    """Why the guards keep the file (None: they let the registry through), and what they hold back."""
    status = pipeline.status(znode.upstream, time.monotonic())
    if not published and status.get("live_instances") == 0:
        return f"znode {znode.path} has no valid instances", ""
    held = status.get("held_servers") or 0
    if not held:
        return None, ""
    guards = znode.guards
    return None, (f"the shrink guard keeps {held} servers the registry no longer lists (more than max_drop "
                  f"{guards.max_drop * 100:g}% at once); the daemon removes them after drop_hold {guards.drop_hold:g}s")


def _outcome(
    cluster: ClusterConfig,
    store: FileStore,
    znode: ZnodeConfig,
    current: str | None,
    published: Upstream | None,
    last: Upstream | None,
    kept: str | None,
    held: str,
    render: Callable[[Upstream], str],
) -> Outcome:
    path = store.path_for(znode.upstream)
    if kept is not None:
        return Outcome(znode, cluster.label, path, KEPT, current, None, None,
                       f"{kept}; {'the file stays as it is' if current is not None else 'no file is written'}")
    upstream = published or last
    if upstream is None:  # cannot happen once read: the pipeline publishes or keeps; say so rather than crash
        return Outcome(znode, cluster.label, path, KEPT, current, None, None, "nothing to publish")
    text = render(upstream)
    state = UNCHANGED if text == current else CHANGED
    return Outcome(znode, cluster.label, path, state, current, upstream, text, held)


# ---- showing and writing ---------------------------------------------------------------


def render_report(report: Report, config: Config) -> str:
    """What would be written: per upstream a header comment, the file text, and the body nginx would be sent."""
    parts: list[str] = []
    for outcome in report.outcomes:
        name = outcome.znode.upstream
        if outcome.state == KEPT:
            parts.append(f"# {name}: {outcome.note}\n")
            continue
        assert outcome.upstream is not None and outcome.text is not None
        what = "unchanged" if outcome.state == UNCHANGED else ("new file" if outcome.current is None else "changed")
        header = (f"# {name}: {outcome.path} ({what}; {len(outcome.upstream.servers)} servers, "
                  f"{outcome.upstream.live_count} live, from {outcome.znode.path} on {outcome.cluster})")
        lines = [header]
        if outcome.note:
            lines.append(f"# {name}: {outcome.note}")
        body = outcome.text
        if config.dyups_url:
            body += f"# dyups POST {config.dyups_url.rstrip('/')}/upstream/{name}\n"
            body += f"# {render_dyups_body(outcome.upstream)}\n"
        elif config.lua_url:
            body += f"# lua POST {config.lua_url.rstrip('/')}/upstream/{name}\n"
            body += f"# {json.dumps(upstream_document(outcome.upstream), sort_keys=True)}\n"
        parts.append("\n".join(lines) + "\n" + body)
    return "\n".join(parts)


def _diff_name(prefix: str, path: Path) -> str:
    # a/<path> and b/<path>, relative to / for an absolute path, so `patch -p1` applies it from there.
    return f"{prefix}/{str(path).lstrip('/')}"


def diff_report(report: Report) -> str:
    """A unified diff of every file that would change; empty when none would."""
    chunks: list[str] = []
    for outcome in report.outcomes:
        if outcome.state != CHANGED:
            continue
        assert outcome.text is not None
        before = (outcome.current or "").splitlines(keepends=True)
        # A new file is a diff from /dev/null, as diff -N and git show it; patch creates the file.
        old = _diff_name("a", outcome.path) if outcome.current is not None else "/dev/null"
        chunks.extend(difflib.unified_diff(before, outcome.text.splitlines(keepends=True),
                                           old, _diff_name("b", outcome.path)))
    return "".join(chunks)


def notes(report: Report) -> list[str]:
    """The per-upstream notes (kept files, held servers), for output modes that keep them off stdout."""
    return [f"{outcome.znode.upstream}: {outcome.note}" for outcome in report.outcomes if outcome.note]


def write_report(report: Report, config: Config) -> tuple[list[Path], list[str]]:
    """Write every changed file atomically; the paths written and one line per failure."""
    from reloader.process import LockHeld, directory_lock  # imported late: only writing takes the lock

    changed = [outcome for outcome in report.outcomes if outcome.state == CHANGED]
    if not changed:
        return [], []
    store = FileStore(config.files_output_path, stream=config.stream_upstreams)
    written: list[Path] = []
    failures: list[str] = []
    try:
        lock = directory_lock(config.files_output_path)
        lock.acquire()
    except LockHeld as held:
        # The daemon owns the directory and would overwrite (or race) a write from here.
        holder = f"pid {held.pid}" if held.pid else "another process"
        return [], [(f"{held.path} is locked ({holder}): a running nginx-upstream-reloader manages "
                     f"{config.files_output_path}; nothing written")]
    except OSError as error:
        return [], [f"cannot use {config.files_output_path}: {error.strerror or error}"]
    try:
        store.prepare()
        # As the daemon does: the guard record first, never behind the files.
        GuardRecord(store.directory, atomic_write).update(
            [outcome.upstream for outcome in changed if outcome.upstream is not None])
        for outcome in changed:
            assert outcome.text is not None
            try:
                store.write(outcome.znode.upstream, outcome.text)
                written.append(outcome.path)
            except OSError as error:
                failures.append(f"cannot write {outcome.path}: {error.strerror or error}")
    except OSError as error:
        failures.append(f"cannot use {config.files_output_path}: {error.strerror or error}")
    finally:
        lock.release()
    return written, failures


def run_render(
    config: Config,
    *,
    diff: bool,
    write: bool,
    out: TextIO,
    err: TextIO,
    client_factory: ClientFactory | None = None,
) -> int:
    """The ``render`` command: read, decide, then print, diff and/or write. Returns the exit code."""
    hosts = HostChecker(interval=config.resolve_interval)
    try:
        report = decide(config, read_all(config, client_factory), hosts)
    finally:
        hosts.close()
    for line in report.problems:
        print(line, file=err)
    code = report.exit_code
    if diff:
        out.write(diff_report(report))
    elif not write:
        out.write(render_report(report, config))
    if diff or write:
        for line in notes(report):
            print(line, file=err)
    if write:
        written, failures = write_report(report, config)
        for path in written:
            print(f"wrote {path}", file=out)
        for line in failures:
            print(line, file=err)
        if failures:
            code = EXIT_UNREAD
    out.flush()
    return code
