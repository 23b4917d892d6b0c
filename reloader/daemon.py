"""The daemon: wires clusters, the files output and its followers, and runs until asked to stop.

Threads, and what each may wait on:

* one thread per ZooKeeper cluster (:mod:`reloader.cluster`): that cluster's
  session, watches, reads and pipeline;
* one thread per output (:mod:`reloader.runner`): the files output first;
  dyups, Lua or reload follow it, fed by "file written" events, so none of
  them is ever ahead of what survives an nginx restart, and a hung one delays
  only itself;
* the thread that called :meth:`Daemon.run`: it waits for a stop request,
  then shuts everything down within a bounded time, whatever state the other
  threads are in (they are daemon threads).

No thread is made per znode, per child or per reconnect.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from kazoo.client import KazooClient

from reloader.childenv import without_secrets
from reloader.cluster import ClusterWorker
from reloader.config import ClusterConfig, Config, ConfigError, ZnodeConfig, load_config
from reloader.model import Upstream
from reloader.outputs.base import FileWritten, Output
from reloader.outputs.dyups import DyupsOutput
from reloader.outputs.files import FilesOutput, FileStore, StoredFile
from reloader.outputs.guard_record import read_owed
from reloader.outputs.reload import ReloadOutput
from reloader.overrides import OverrideWatcher
from reloader.pipeline import Pipeline
from reloader.readback import ReadbackError, parse_upstream_block
from reloader.render import render_file, render_file_lua
from reloader.resolve import HostChecker
from reloader.runner import OutputRunner
from reloader.sdnotify import SystemdNotifier
from reloader.sources.kazoo_protocol import WatchingKazooClient
from reloader.stall import StallWatch, heartbeat_interval

log = logging.getLogger(__name__)

# How long shutdown may spend closing ZooKeeper sessions; an unreachable
# ensemble must not keep the process from exiting.
SHUTDOWN_GRACE = 2.0
# How long shutdown waits for the outputs to finish what they are doing.
OUTPUT_GRACE = 2.0
# How often the main thread looks up from its wait (signal handlers run in
# between): a stop starts within this, a drains file is applied within it.
# Each wake-up costs an idle daemon CPU (about 0.1 ms), so not more often.
MAIN_SLICE = 0.5
# At start-up, how long a connected cluster that is still being read may hold
# READY back (an unreachable one holds it for one session timeout only).
STARTUP_READ_LIMIT = 60.0
# While start-up progresses: ask systemd for EXTEND_BY more seconds, every EXTEND_EVERY.
EXTEND_BY = 10.0
EXTEND_EVERY = 2.0


def _outputs_of(config: Config) -> tuple[object, ...]:
    """The settings that shape the followers: when they change, the followers are rebuilt."""
    return (config.dyups_url, config.lua_url, config.nginx_reload, config.reconcile_interval,
            config.reassert_interval, config.retry_interval,
            config.lua_secret, config.lua_secret_file, config.lua_secret_group)


def _follower_runner(output: Output) -> OutputRunner[FileWritten]:
    # Only an output that takes a batch at once (dyups spreads it over its
    # connections) gets it whole; the others keep their one-by-one delivery,
    # where one failing upstream is retried alone.
    batched = type(output).file_written_many is not Output.file_written_many
    return OutputRunner(
        output,
        deliver=output.file_written,
        key=lambda event: event.upstream.name,
        merge=lambda older, newer: newer.after(older),
        deliver_many=output.file_written_many if batched else None,
    )


def sessions(clusters: Iterable[ClusterConfig]) -> list[ClusterConfig]:
    """The clusters as ZooKeeper sessions: list entries with the same hosts and credentials become one.

    Two entries for one ensemble (the seed config's second shape often has
    them) then share one kazoo client and one session, and a znode named in
    both is watched once and read once.
    """
    groups: dict[tuple[object, ...], list[ClusterConfig]] = {}
    for cluster in clusters:
        groups.setdefault(cluster.session_key, []).append(cluster)
    merged = []
    for group in groups.values():
        first = group[0]
        if len(group) == 1:
            merged.append(first)
            continue
        names = [cluster.name for cluster in group if cluster.name]
        merged.append(replace(
            first,
            znodes=tuple(znode for cluster in group for znode in cluster.znodes),
            name="+".join(names) if names else None,
        ))
        log.info("clusters %s share one ZooKeeper session (same hosts and credentials)",
                 ", ".join(cluster.label for cluster in group))
    return merged


class _SystemdState:
    """READY once the daemon serves, ``STATUS=`` naming the clusters not read, and watchdog pings.

    The daemon serves once its files are adopted (before this runs) and every
    cluster that could be reached has been read in full. A cluster that has
    not connected within its session timeout after start does not hold
    READY back: its upstreams stay as their files have them, and ``STATUS=``
    names it until it has been read. A connected cluster still reading holds
    READY back for at most :data:`STARTUP_READ_LIMIT`, and meanwhile
    ``EXTEND_TIMEOUT_USEC`` keeps systemd's start timeout from killing a
    start-up that is progressing.
    """

    def __init__(self, notifier: SystemdNotifier | None) -> None:
        self._notifier = notifier
        self._ready_sent = False
        self._watchdog = notifier.watchdog_interval() if notifier is not None else None
        self._next_ping = 0.0
        self._next_extend = 0.0
        self._status: str | None = None

    def tick(self, daemon: "Daemon") -> None:
        notifier = self._notifier
        if notifier is None:
            return
        now = time.monotonic()
        if not self._ready_sent:
            waiting = daemon.startup_waiting(now)
            if waiting:
                self._say(notifier, "starting: waiting for " + ", ".join(waiting))
                if now >= self._next_extend:
                    self._next_extend = now + EXTEND_EVERY
                    notifier.extend_timeout(EXTEND_BY)
            else:
                self._ready_sent = True
                self._status = daemon.service_status()
                notifier.ready(self._status)
        else:
            self._say(notifier, daemon.service_status())
        if self._watchdog is not None and now >= self._next_ping and daemon.healthy:
            self._next_ping = now + self._watchdog
            notifier.watchdog()

    @property
    def ready_sent(self) -> bool:
        return self._ready_sent

    def _say(self, notifier: SystemdNotifier, status: str) -> None:
        if status != self._status:
            self._status = status
            notifier.status(status)


class Daemon:
    """One running reloader: build it from a Config, then ``run()`` until ``request_stop()``."""

    def __init__(
        self,
        config: Config,
        client_factory: Callable[..., KazooClient] = WatchingKazooClient,
        notifier: SystemdNotifier | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """``overrides`` are the command line's settings, applied again on every config reload."""
        self.config = config
        self._notifier = notifier
        # Plain flags, not Events: a signal handler sets them, and an Event's
        # lock taken in a handler that interrupted the same lock's holder
        # would deadlock the main thread.
        self._stop_requested = False
        self._reload_requested = False
        self.store = FileStore(config.files_output_path, stream=config.stream_upstreams)
        # In Lua mode the files carry the balancer hook, so that nginx serves
        # the file's servers until the Lua module has been told the live set.
        self.files = FilesOutput(self.store, render=render_file_lua if config.lua_url else render_file)
        self.files_runner: OutputRunner[Upstream] = OutputRunner(
            self.files, deliver=self.files.publish, key=lambda upstream: upstream.name,
            deliver_many=self.files.publish_many,
        )
        self.followers = [_follower_runner(output) for output in self._make_followers(config)]
        # The guards hear when the files hold what they published (first, never blocking).
        self.files.subscribe(self._files_written)
        for runner in self.followers:
            self.files.subscribe(runner.offer_many)
        self.hosts = HostChecker(interval=config.resolve_interval)
        # A process stopped for half a session timeout may have lost its sessions
        # without knowing yet: each cluster doubts its own then (reloader.stall).
        threshold = config.zk_session_timeout / 2
        self.stall = StallWatch(threshold=threshold, interval=heartbeat_interval(threshold))
        self._client_factory = client_factory
        self.clusters = [self._make_worker(cluster) for cluster in sessions(config.clusters)]
        self._cluster_of = {name: worker for worker in self.clusters for name in worker.pipeline.upstream_names}
        #: Config reloads applied, and reloads refused because the new file was invalid.
        self.config_reloads = 0
        self.config_reload_failures = 0
        self.status_server: object | None = None
        self._overrides = dict(overrides or {})
        # Servers drained by hand (reloader/overrides.py): polled by the main
        # thread, handed to each upstream's cluster thread when they change.
        self.drains = OverrideWatcher(config.files_output_path)
        self._drains_sent: dict[str, dict[tuple[str, int], float | None]] = {}
        # Whether every upstream's drains are to be compared again although the drains in force did not
        # change: at start and after a config reload, which may move upstreams to new cluster threads.
        self._drains_owed = True
        # When the clusters were started (run): the bound on how long start-up holds READY back.
        self._started_at: float | None = None
        self._systemd: _SystemdState | None = None

    def _make_followers(self, config: Config) -> list[Output]:
        followers: list[Output] = []
        timing = {
            "reconcile_interval": config.reconcile_interval,
            "reassert_interval": config.reassert_interval,
            "retry_interval": config.retry_interval,
        }
        if config.dyups_url:
            followers.append(DyupsOutput(config.dyups_url, **timing))
        if config.lua_url:
            from reloader.outputs.lua import LuaOutput  # imported late: only Lua mode needs it

            from reloader.nginx.secret import token_or_none

            followers.append(LuaOutput(config.lua_url, token=token_or_none(config), **timing))
        if config.nginx_reload:
            # nginx -t and nginx -s reload never see the ZooKeeper credentials (reloader.childenv).
            followers.append(ReloadOutput(self.store, config.nginx_reload,
                                          run=without_secrets(subprocess.run, lambda: self.config)))
        return followers

    def _make_worker(self, cluster: ClusterConfig) -> ClusterWorker:
        return ClusterWorker(
            cluster, self.files_runner.offer_many, self.config.zk_session_timeout, self._client_factory,
            hosts=self.hosts, stopping=threading.Event(), stall=self.stall,
        )

    @property
    def runners(self) -> list[OutputRunner]:  # type: ignore[type-arg]
        return [self.files_runner, *self.followers]

    def request_stop(self) -> None:
        """Ask the daemon to finish; safe from a signal handler or any thread."""
        self._stop_requested = True

    def request_reload(self) -> None:
        """Re-read the config file and apply the difference (SIGHUP); safe from a signal handler."""
        self._reload_requested = True

    @property
    def upstream_names(self) -> tuple[str, ...]:
        return tuple(self._cluster_of)

    @property
    def ready(self) -> bool:
        """True once every cluster has been read in full at least once."""
        return all(worker.freeze.ever_open for worker in self.clusters)

    def startup_waiting(self, now: float) -> list[str]:
        """The clusters that still hold READY back, each with why ("reading", "connecting").

        A cluster holds it until it has been read in full, while it is
        connected (at most STARTUP_READ_LIMIT after start) or still within
        its first session timeout; one that could not connect by then does not.
        """
        if self._started_at is None:
            return ["start-up"]
        elapsed = now - self._started_at
        waiting = []
        for worker in self.clusters:
            if worker.freeze.ever_open:
                continue
            if worker.source.state == "CONNECTED" and elapsed < STARTUP_READ_LIMIT:
                waiting.append(f"cluster {worker.label} (reading)")
            elif elapsed < self.config.zk_session_timeout:
                waiting.append(f"cluster {worker.label} (connecting)")
        return waiting

    def service_status(self) -> str:
        """One line for systemd's ``STATUS=``: what is watched, and which clusters have not been read yet."""
        unread = [worker.label for worker in self.clusters if not worker.freeze.ever_open]
        status = f"watching {len(self._cluster_of)} upstreams"
        if unread:
            status += (f"; not read yet (unreachable?): cluster {', '.join(unread)}; "
                       "their upstreams stay as their files have them")
        return status

    @property
    def healthy(self) -> bool:
        """True while every cluster and output thread is alive."""
        return all(worker.alive for worker in self.clusters) and all(runner.alive for runner in self.runners)

    def status_snapshot(self) -> dict[str, object]:
        """Everything status and metrics show, as plain values (any thread; read without locks).

        A config reload may remove an upstream between listing it and reading
        it: it is then left out (it is gone), never an error. Each output's
        pending names are read once, so a scrape costs upstreams + pending.
        """
        now = time.monotonic()
        runners = self.runners
        pending = {runner.name: runner.output.pending_names() for runner in runners}
        pending_in: dict[str, list[str]] = {}
        for runner_name, names in pending.items():
            for name in names:
                pending_in.setdefault(name, []).append(runner_name)
        upstreams: dict[str, dict[str, object]] = {}
        clusters = []
        for worker in list(self.clusters):
            clusters.append(worker.status(now))
            for name in worker.pipeline.upstream_names:
                try:
                    upstream = worker.pipeline.status(name, now)
                except KeyError:
                    continue  # removed by a config reload meanwhile
                upstream["cluster"] = worker.label
                upstream["pending_in"] = pending_in.get(name, [])
                upstreams[name] = upstream
        outputs = {
            runner.name: {
                "alive": runner.alive,
                "waiting": runner.waiting,
                "delivered": runner.delivered,
                "errors": runner.errors,
                "busy_for_seconds": round(runner.busy_for, 3),
                "pending": list(pending[runner.name]),
                "counters": runner.output.stats(),
            }
            for runner in runners
        }
        return {
            "ready": self.ready,
            "healthy": self.healthy,
            "files_output_path": str(self.store.directory),
            "clusters": clusters,
            "upstreams": upstreams,
            "outputs": outputs,
            "config_reloads": self.config_reloads,
            "config_reload_failures": self.config_reload_failures,
            "process_stalls": self.stall.stalls,
            "overrides_problem": self.drains.problem,
        }

    def request_reassert(self) -> None:
        """Re-POST every managed upstream now (SIGHUP); safe from any thread."""
        for runner in self.followers:
            reassert = getattr(runner.output, "reassert", None)
            if reassert is not None:
                runner.submit(lambda reassert=reassert: reassert("SIGHUP"))

    def run(self) -> int:
        """Run until asked to stop; returns the process exit code."""
        try:
            self.store.prepare()
        except OSError as error:
            log.error("files_output_path %s is not usable: %s", self.store.directory, error.strerror or error)
            return 1
        for runner in self.runners:
            runner.start()
        self._adopt_files()
        self._apply_drains()  # queued before the first read, so the first publish has them
        self._started_at = time.monotonic()
        self.stall.start()
        for worker in self.clusters:
            worker.start()
        if self.config.listen is not None:
            from reloader.status import StatusServer  # imported late: only `listen:` needs it

            try:
                self.status_server = StatusServer(self, self.config.listen)
                self.status_server.start()  # type: ignore[attr-defined]
            except OSError as error:
                log.error("listen %s:%d: cannot serve status: %s", *self.config.listen, error.strerror or error)
                self._shutdown()
                return 1
        log.info(
            "watching %d upstreams in %d clusters; files in %s%s",
            len(self._cluster_of), len(self.clusters), self.store.directory,
            self._telling_nginx(),
        )
        # Wait in slices: the flags a signal handler sets are looked at between them.
        systemd = self._systemd = _SystemdState(self._notifier)
        exit_code = 0
        while not self._stop_requested:
            time.sleep(MAIN_SLICE)
            if self._stop_requested:
                break
            dead = [worker.label for worker in self.clusters if not worker.alive]
            dead += [runner.name for runner in self.runners if not runner.alive]
            if dead:
                log.error("thread of %s died; stopping", ", ".join(dead))
                exit_code = 1  # a supervisor should know, and start a fresh process
                break
            systemd.tick(self)
            self._apply_drains()
            if self._reload_requested:
                self._reload_requested = False
                self._reload_config()
        if self._notifier is not None:
            self._notifier.stopping()
        self._shutdown()
        log.info("stopped")
        return exit_code

    def _apply_drains(self) -> None:
        """Hand each upstream whose drains changed (the file, or an expiry) to its cluster thread.

        Between changes a tick costs one stat of the overrides file: the walk
        over every upstream runs only when the drains in force changed, or
        after a start or a config reload (at 1,000 upstreams the walk is most
        of what the main thread costs idle, twice a second).
        """
        changed = self.drains.poll() is not None
        if not changed and not self._drains_owed:
            return
        self._drains_owed = False
        active = self.drains.active
        for name, worker in self._cluster_of.items():
            drains = active.get(name, {})
            if self._drains_sent.get(name, {}) == drains:
                continue
            self._drains_sent[name] = drains
            worker.put_pipeline(lambda worker=worker, name=name, drains=drains: worker.pipeline.set_drains(name, drains))

    def _files_written(self, events: list[FileWritten]) -> None:
        """On the files runner's thread: tell each upstream's cluster thread that its file caught up."""
        by_worker: dict[int, tuple[ClusterWorker, list[str]]] = {}
        for event in events:
            worker = self._cluster_of.get(event.upstream.name)
            if worker is not None:
                by_worker.setdefault(id(worker), (worker, []))[1].append(event.upstream.name)
        for worker, names in by_worker.values():
            def confirm(pipeline: Pipeline = worker.pipeline, names: list[str] = names) -> None:
                for name in names:
                    pipeline.confirmed(name)

            worker.put_pipeline(confirm)

    def _telling_nginx(self) -> str:
        config = self.config
        if config.dyups_url:
            return f"; dyups at {config.dyups_url}"
        if config.lua_url:
            return f"; Lua module at {config.lua_url}"
        if config.nginx_reload:
            return "; reloading nginx"
        return ""

    def _adopt_files(self) -> None:
        """Existing files are what is published, before and regardless of ZooKeeper.

        Each is adopted by its upstream's guard and offered to the files runner,
        which finds it already on disk and hands it to the followers: nginx may
        have reloaded or restarted while the daemon was down and lost every
        POSTed upstream. This never blocks: a hung dyups delays only its runner.
        """
        adopted: list[Upstream] = []
        for worker in self.clusters:
            for upstream in self._read_back_all(worker.cluster.znodes):
                worker.pipeline.adopt(upstream)
                adopted.append(upstream)
        self.files_runner.offer_many(adopted)
        self._unconfigured_files()

    def _read_back_all(self, znodes: Iterable[ZnodeConfig]) -> list[Upstream]:
        states = []
        owed: dict[str, tuple[tuple[float, int], ...]] | None = None
        for znode in znodes:
            upstream = self._read_back(znode.upstream)
            if upstream is not None:
                if owed is None:
                    owed = read_owed(self.store.directory)
                # The config, not an old file, is the authority on directives; the guard
                # record keeps what the shrink guard's reference owed when the file was written.
                states.append(replace(upstream, directives=znode.options.directives,
                                      owed=owed.get(znode.upstream, ())))
        return states

    def _configured(self, stored: StoredFile) -> bool:
        """True when ``stored`` is the file of a configured upstream (an http file of a TCP upstream is not)."""
        return stored.name in self._cluster_of and stored.stream == self.store.is_stream(stored.name)

    def _unconfigured_files(self, names: Iterable[str] | None = None) -> None:
        """Files (of ``names``, default all) of no configured upstream: kept with a warning, or pruned.

        A file of the other kind than its upstream's (``db.upstream`` when db
        is a TCP upstream) belongs to no configured upstream either.
        """
        wanted = None if names is None else set(names)
        for stored in self.store.files():
            if (wanted is not None and stored.name not in wanted) or self._configured(stored):
                continue
            if self.config.prune_files:
                self.files_runner.submit(lambda stored=stored: self._prune(stored))
            else:
                log.warning("%s belongs to no configured upstream; left in place (nginx may still include it; "
                            "prune_files: true removes such files)", stored.path, extra={"upstream": stored.name})

    def _prune(self, stored: StoredFile) -> None:
        """On the files runner's thread, after every write queued before it."""
        if self._configured(stored):
            return  # configured again meanwhile
        try:
            if self.store.remove_file(stored.path):
                log.warning("%s belongs to no configured upstream; removed (prune_files)", stored.path,
                            extra={"upstream": stored.name})
        except OSError as error:
            log.error("cannot remove %s: %s", stored.path, error.strerror or error)

    def _read_back(self, name: str) -> Upstream | None:
        path = self.store.path_for(name)
        try:
            text = self.store.read(name)
        except (OSError, UnicodeDecodeError) as error:
            log.warning("cannot read %s at start-up: %s", path, error)
            return None
        if text is None:
            return None
        try:
            upstream = parse_upstream_block(text)
        except ReadbackError as error:
            log.warning("ignoring %s at start-up: %s", path, error)
            return None
        if upstream.name != name:
            log.warning("ignoring %s at start-up: it defines upstream %r", path, upstream.name)
            return None
        log.info("start-up: %s holds %d servers; adopted as the last good state", path, len(upstream.servers))
        return upstream

    # ---- live config reload ------------------------------------------------------

    def _reload_config(self) -> None:
        """Re-read the config file and apply the difference; an invalid file changes nothing.

        Runs on the main thread. Clusters whose session is unchanged are
        reconfigured in place (on their own threads), so an upstream whose
        configuration did not change keeps its state and is not republished;
        new sessions start, removed ones close. Outputs are rebuilt only when
        their settings changed. Every managed upstream is re-POSTed at the end.
        """
        # Before start-up's READY, a reload must not announce READY itself.
        notifier = self._notifier if self._systemd is not None and self._systemd.ready_sent else None
        if notifier is not None:
            notifier.reloading()
        try:
            new = load_config(self.config.source, self._overrides)
            problem = self._cannot_reload(new)
            if problem:
                raise ConfigError(self.config.source, [problem])
        except ConfigError as error:
            self.config_reload_failures += 1
            for line in error.problems:
                log.error("config reload: %s: %s", error.source, line)
            log.error("config reload refused: %d problems; the running config stays as it is", len(error.problems))
            if notifier is not None:
                notifier.ready()
            return
        old = self.config
        self.config = new
        # Before any cluster takes the new config: a new TCP upstream's first file is <name>.stream.
        self.store.set_stream(new.stream_upstreams)
        self.hosts.interval = new.resolve_interval
        if _outputs_of(new) != _outputs_of(old):
            self._replace_followers(new)
        self._reconfigure_clusters(old, new)
        if new.listen != old.listen:
            self._restart_status_server()
        self.config_reloads += 1
        log.info("config reloaded from %s: %d upstreams in %d clusters",
                 new.source, len(self._cluster_of), len(self.clusters))
        self.request_reassert()
        if notifier is not None:
            notifier.ready()

    def _cannot_reload(self, new: Config) -> str | None:
        if new.files_output_path != self.config.files_output_path:
            return (f"files_output_path cannot change while running ({self.config.files_output_path} -> "
                    f"{new.files_output_path}); restart the daemon for that")
        kinds = {znode.upstream: znode.stream for znode in self.config.znodes}
        switched = sorted(z.upstream for z in new.znodes if kinds.get(z.upstream, z.stream) != z.stream)
        if switched:
            # Its file would move between <name>.upstream and <name>.stream (and between http { } and
            # stream { }) under a running nginx; a restart adopts the new kind cleanly.
            return (f"stream cannot change while running for upstream {', '.join(switched)}; "
                    "restart the daemon for that")
        return None

    def _reconfigure_clusters(self, old: Config, new: Config) -> None:
        # A new session timeout only applies to new sessions: start them all anew then.
        reuse = new.zk_session_timeout == old.zk_session_timeout
        self.stall.threshold = new.zk_session_timeout / 2
        current = {worker.cluster.session_key: worker for worker in self.clusters} if reuse else {}
        old_names = set(self._cluster_of)
        pairs: list[tuple[ClusterConfig, ClusterWorker]] = []
        started: list[ClusterWorker] = []
        for cluster in sessions(new.clusters):
            worker = current.pop(cluster.session_key, None)
            if worker is not None:
                known = set(worker.pipeline.upstream_names)
                worker.reconfigure(cluster, self._read_back_all(z for z in cluster.znodes if z.upstream not in known))
            else:
                worker = self._make_worker(cluster)
                for upstream in self._read_back_all(cluster.znodes):
                    worker.pipeline.adopt(upstream)
                started.append(worker)
                log.info("config reload: new cluster %s (%d upstreams)", cluster.label, len(cluster.znodes),
                         extra={"cluster": cluster.label})
            pairs.append((cluster, worker))
        kept = {id(worker) for _, worker in pairs}
        for worker in self.clusters:
            if id(worker) not in kept:
                log.info("config reload: cluster %s is gone; closing its session", worker.label,
                         extra={"cluster": worker.label})
                worker.retire()
        self.clusters = [worker for _, worker in pairs]
        # Built from the new config: a kept worker takes it on its own thread.
        self._cluster_of = {znode.upstream: worker for cluster, worker in pairs for znode in cluster.znodes}
        self._drains_sent = {}  # new workers, and upstreams that moved, take their drains on the next tick
        self._drains_owed = True
        for worker in started:
            worker.start()
        removed = sorted(old_names - set(self._cluster_of))
        for name in removed:
            for runner in self.followers:
                runner.submit(lambda output=runner.output, name=name: output.forget(name))
        self._unconfigured_files(removed)

    def _replace_followers(self, new: Config) -> None:
        """The outputs' settings changed: stop the old followers, start new ones, and hand them every state."""
        deadline = time.monotonic() + OUTPUT_GRACE
        for runner in self.followers:
            runner.stop(deadline)
        render = render_file_lua if new.lua_url else render_file
        followers = [_follower_runner(output) for output in self._make_followers(new)]
        self.followers = followers
        for runner in followers:
            runner.start()

        def rewire() -> None:
            self.files.set_listeners([self._files_written, *(runner.offer_many for runner in followers)])
            self.files.set_render(render)

        self.files_runner.submit(rewire)
        # Every upstream goes through the files again: files whose rendering
        # changed are rewritten, and the new followers get every state. The
        # runner runs a call before any item offered after it, so this batch
        # is rendered and announced the new way.
        states = [upstream for worker in self.clusters for upstream in worker.pipeline.published_states()]
        self.files_runner.offer_many(states)
        log.info("config reload: outputs now %s", ", ".join(runner.name for runner in self.runners))

    def _restart_status_server(self) -> None:
        if self.status_server is not None:
            self.status_server.stop()  # type: ignore[attr-defined]
            self.status_server = None
        if self.config.listen is None:
            return
        from reloader.status import StatusServer

        try:
            self.status_server = StatusServer(self, self.config.listen)
            self.status_server.start()  # type: ignore[attr-defined]
        except OSError as error:
            log.error("listen %s:%d: cannot serve status: %s", *self.config.listen, error.strerror or error)
            self.status_server = None

    def _shutdown(self) -> None:
        for worker in self.clusters:
            worker.stop_event.set()
            worker.wake()
        if self.status_server is not None:
            self.status_server.stop()  # type: ignore[attr-defined]
        # Sessions first, in parallel and bounded: closing a session fails any
        # read a cluster thread still waits on. Once the cluster threads have
        # ended nothing more is published, so the outputs' grace runs while
        # the closes finish: a black-holed ensemble and a hung output cost
        # the larger of the two graces, not their sum.
        closers = [threading.Thread(target=worker.close_session, daemon=True) for worker in self.clusters]
        for closer in closers:
            closer.start()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for worker in self.clusters:
            worker.join(deadline)
        # Then the outputs, files first: each stop delivers what was queued
        # before it, so a follower's close (the reload output applies what it
        # still owes) sees every file written. What a stuck output leaves is
        # recovered at the next start, from the files.
        deadline = time.monotonic() + OUTPUT_GRACE
        self.files_runner.stop(deadline)
        for runner in self.followers:
            runner.stop(deadline)
        stuck = [runner.name for runner in self.runners if runner.alive]
        if stuck:
            log.warning("output %s still busy at exit (a peer that does not answer); leaving it", ", ".join(stuck))
        for closer in closers:
            closer.join(max(deadline - time.monotonic(), 0.0))
        self.hosts.close()
        self.stall.stop()
