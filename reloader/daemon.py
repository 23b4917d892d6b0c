"""The daemon: wires sources, pipeline and outputs, and runs the worker loop.

The worker thread drains the inbox (watch events and session transitions
enqueued by kazoo's threads, plus delayed tasks), lets each source read what
changed, and gives every output its periodic ``tick``. The thread that called
``run()`` only waits for a stop request and then shuts down: it gives the
worker a moment to finish its task, then closes the ZooKeeper sessions,
which fails any request the worker is still waiting on. A worker stuck on a
frozen ZooKeeper therefore cannot hold up a SIGTERM.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable

from kazoo.client import KazooClient

from reloader.config import Config
from reloader.inbox import Inbox
from reloader.outputs.base import Output
from reloader.outputs.dyups import DyupsOutput
from reloader.outputs.files import FilesOutput
from reloader.outputs.reload import ReloadOutput
from reloader.pipeline import Pipeline
from reloader.readback import ReadbackError, parse_upstream_block
from reloader.sources.zookeeper import ZooKeeperSource

log = logging.getLogger(__name__)

# How long shutdown may spend closing ZooKeeper sessions; an unreachable
# ensemble must not keep the process from exiting.
SHUTDOWN_GRACE = 2.0
# How long a stop request waits for the worker to finish its current task
# before the sessions are closed under it.
WORKER_GRACE = 1.0
# The longest the worker sleeps, so that output retries and timers stay timely.
MAX_IDLE = 0.5


class Daemon:
    """One running reloader: build it from a Config, then ``run()`` until ``request_stop()``."""

    def __init__(self, config: Config, client_factory: Callable[..., KazooClient] = KazooClient) -> None:
        self.config = config
        self.inbox = Inbox()
        self.files = FilesOutput(config.files_output_path)
        outputs: list[Output] = [self.files]
        self.dyups: DyupsOutput | None = None
        if config.dyups_url:
            self.dyups = DyupsOutput(
                config.dyups_url,
                reconcile_interval=config.reconcile_interval,
                reassert_interval=config.reassert_interval,
            )
            outputs.append(self.dyups)
        if config.nginx_reload:
            outputs.append(ReloadOutput(self.files, config.nginx_reload))
        self.pipeline = Pipeline(config.znodes, outputs)
        self._stop = threading.Event()
        self.sources = [
            ZooKeeperSource(
                cluster, self.inbox, self.pipeline, config.zk_session_timeout, client_factory,
                stopping=self._stop.is_set,
            )
            for cluster in config.clusters
        ]
        for source in self.sources:
            for name in source.upstreams:
                self.pipeline.attach_gate(name, source.gate)

    def request_stop(self) -> None:
        """Ask the worker loop to finish; safe from a signal handler or any thread."""
        self._stop.set()
        self.inbox.put(lambda: None)  # wake the worker if it is waiting

    def request_reassert(self) -> None:
        """Ask the worker to re-POST every managed upstream now (SIGHUP); safe from any thread."""
        if self.dyups is not None:
            dyups = self.dyups
            self.inbox.put(lambda: dyups.reassert("SIGHUP"))

    def run(self) -> int:
        """Run until asked to stop; returns the process exit code."""
        try:
            self.files.prepare()
        except OSError as error:
            log.error("files_output_path %s is not usable: %s", self.files.directory, error.strerror or error)
            return 1
        self._seed_from_files()
        for source in self.sources:
            source.start()
        log.info(
            "watching %d upstreams in %d clusters; files in %s%s",
            len(self.pipeline.upstream_names), len(self.sources), self.files.directory,
            f"; dyups at {self.config.dyups_url}" if self.config.dyups_url else "",
        )
        worker = threading.Thread(target=self._work, name="reloader-worker", daemon=True)
        worker.start()
        # Wait in slices: a signal handler runs between them even where a
        # platform's untimed wait would not be interrupted.
        while not self._stop.wait(MAX_IDLE):
            if not worker.is_alive():
                log.error("the worker thread died; stopping")
                break
        worker.join(WORKER_GRACE)
        if worker.is_alive():
            log.warning("the worker is still waiting on ZooKeeper; closing the sessions under it")
        self._close_sources()
        worker.join(WORKER_GRACE / 2)  # closed sessions fail its waits at once
        if not worker.is_alive():
            # Only now: an output must not be closed while the worker may still use it.
            self._close_outputs()
        log.info("stopped")
        return 0

    def _work(self) -> None:
        while not self._stop.is_set():
            self.step(MAX_IDLE)

    def step(self, max_wait: float) -> None:
        """One pass of the worker loop."""
        for task in self.inbox.drain(max_wait):
            if self._stop.is_set():
                return  # what is left of the batch is moot; shut down promptly
            try:
                task()
            except Exception:  # noqa: BLE001 - the worker must survive any one task
                log.exception("worker task failed")
        for source in self.sources:
            try:
                source.flush()
            except Exception:  # noqa: BLE001
                log.exception("source %s failed to read its changes", source.cluster.label)
        self.pipeline.end_batch()
        now = time.monotonic()
        for output in self.pipeline.outputs:
            try:
                output.tick(now)
            except Exception:  # noqa: BLE001
                log.exception("output %s failed in its periodic work", output.name)

    def _seed_from_files(self) -> None:
        """Adopt existing files as the last good state, before and regardless of ZooKeeper."""
        directives = {znode.upstream: znode.options.directives for znode in self.config.znodes}
        for name in self.pipeline.upstream_names:
            path = self.files.path_for(name)
            try:
                text = self.files.read(name)
            except (OSError, UnicodeDecodeError) as error:
                log.warning("cannot read %s at start-up: %s", path, error)
                continue
            if text is None:
                continue
            try:
                upstream = parse_upstream_block(text)
            except ReadbackError as error:
                log.warning("ignoring %s at start-up: %s", path, error)
                continue
            if upstream.name != name:
                log.warning("ignoring %s at start-up: it defines upstream %r", path, upstream.name)
                continue
            # The config, not an old file, is the authority on directives.
            self.pipeline.seed(replace(upstream, directives=directives[name]))
            log.info("start-up: %s holds %d servers; adopted as the last good state", path, len(upstream.servers))

    def _close_sources(self) -> None:
        stoppers = [threading.Thread(target=source.stop, daemon=True) for source in self.sources]
        for stopper in stoppers:
            stopper.start()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for stopper in stoppers:
            stopper.join(max(deadline - time.monotonic(), 0.0))

    def _close_outputs(self) -> None:
        for output in self.pipeline.outputs:
            try:
                output.close()
            except Exception:  # noqa: BLE001
                log.exception("output %s failed to close", output.name)
