"""The status endpoint (``listen:``): Prometheus metrics, health, readiness and a JSON status.

Guarantees:

* every request is answered from :meth:`Daemon.status_snapshot`,
  :attr:`Daemon.ready` and :attr:`Daemon.healthy` only: plain values read
  without locks, so a scrape never waits on ZooKeeper, an output or a
  cluster thread, and never makes one wait;
* the server runs on daemon threads of its own (one listener and a fixed
  pool of :data:`WORKERS`, each connection with a socket timeout and a
  total :data:`CONNECTION_DEADLINE`, which ends a kept-alive connection
  with ``Connection: close`` on an answer rather than under a request,
  unless the client stayed idle through the deadline's second half); at most
  ``WORKERS + BACKLOG`` connections are held at once, more are closed
  unanswered, so no number of clients can exhaust the daemon's file
  descriptors; :meth:`StatusServer.stop` returns within :data:`STOP_GRACE`
  seconds whatever the clients do;
* metrics go through their own :class:`prometheus_client.CollectorRegistry`
  and a collector that reads the snapshot at scrape time: nothing is
  global, and two daemons in one process never share a series;
* only ``GET`` and ``HEAD`` are served; unknown paths answer 404.

Paths: ``/metrics``, ``/healthz`` (200 while every thread works, else 503),
``/readyz`` (200 once every cluster has been read in full, else 503) and
``/status`` (the snapshot as JSON). :func:`status_command` is the
``nginx-upstream-reloader status`` command: it fetches ``/status`` and prints
it as a table.
"""

from __future__ import annotations

import gzip
import json
import logging
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "nginx_upstream_reloader"
F = TypeVar("F", GaugeMetricFamily, CounterMetricFamily, InfoMetricFamily)
#: Where ``status`` looks when no ``--listen`` is given (the documented port).
DEFAULT_ADDRESS = ("127.0.0.1", 9345)
# Level 3: about 5 ms for the 1 MB of 1,000 upstreams, which it makes 23 times smaller.
GZIP_LEVEL = 3
#: How long :meth:`StatusServer.stop` may take.
STOP_GRACE = 2.0
# A client that opens a connection and sends nothing must not hold a thread
# for long; the daemon's own work never depends on these threads anyway.
REQUEST_TIMEOUT = 5.0
#: Threads that answer requests; each holds one connection at a time.
WORKERS = 8
#: Accepted connections that may wait for a worker; more are closed at once.
BACKLOG = 32
#: The longest a connection may hold a worker, however slowly it trickles
#: bytes in. A kept-alive scraper is not cut off by it: an answer given in
#: the second half of the deadline says ``Connection: close`` and the
#: connection ends there, so the scraper connects again between requests.
CONNECTION_DEADLINE = 10.0
# The snapshot is read without locks while other threads change the dicts
# it copies; a copy that races a change raises RuntimeError and is retried.
SNAPSHOT_ATTEMPTS = 5
#: Session states a cluster can report, for the one-hot state gauge.
CLUSTER_STATES = ("CONNECTING", "CONNECTED", "SUSPENDED", "LOST")
# The dyups counters that count POST outcomes: one series per outcome of
# ``_output_posts_total`` (``http_500`` and the like are outcomes too).
_POST_RESULTS = ("ok", "conflict", "dropped", "timeout", "refused", "failed", "unreachable")


class StatusSource(Protocol):
    """What the endpoint reads of the daemon (:class:`reloader.daemon.Daemon` fits)."""

    @property
    def ready(self) -> bool: ...

    @property
    def healthy(self) -> bool: ...

    def status_snapshot(self) -> dict[str, object]: ...


def read_snapshot(source: StatusSource) -> dict[str, Any]:
    """The daemon's snapshot, retried when a lock-free copy raced a change."""
    for attempt in range(SNAPSHOT_ATTEMPTS):
        try:
            return source.status_snapshot()
        except RuntimeError:  # "dictionary changed size during iteration"
            if attempt == SNAPSHOT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def _flag(value: object) -> float:
    return 1.0 if value else 0.0


def _number(value: object) -> float | None:
    """A snapshot value as a sample value; None (absent) stays absent."""
    if value is None or isinstance(value, bool):
        return None if value is None else _flag(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class _Families:
    """Metric families created on first use, yielded in creation order."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, kind: type[F], name: str, doc: str, labels: Iterable[str]) -> F:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = kind(f"{PREFIX}_{name}", doc, labels=list(labels))
        assert isinstance(family, kind)
        return family

    def gauge(self, name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
        return self._family(GaugeMetricFamily, name, doc, labels)

    def counter(self, name: str, doc: str, labels: Iterable[str]) -> CounterMetricFamily:
        # prometheus-client appends ``_total`` to a counter's samples itself.
        return self._family(CounterMetricFamily, name, doc, labels)

    def info(self, name: str, doc: str, labels: Iterable[str]) -> InfoMetricFamily:
        return self._family(InfoMetricFamily, name, doc, labels)

    def __iter__(self) -> Iterator[Metric]:
        return iter(list(self._families.values()))


# Output counters from ``Output.stats()``, by key: (family, kind, help).
# Keys not listed here still appear, as ``_output_events_total{event=KEY}``,
# so a counter added to an output is never silently dropped.
_OUTPUT_STATS: dict[str, tuple[str, str, str]] = {
    "writes": ("output_writes", "counter", "Upstream files written with new contents."),
    "failures": ("output_failures", "counter", "Deliveries the output could not make (file writes that failed)."),
    "retrying": ("output_retrying_upstreams", "gauge", "Upstreams the output is retrying."),
    "reasserts": ("output_reasserts", "counter", "Passes that re-POSTed every managed upstream."),
    "repairs": ("output_repairs", "counter", "Upstreams re-POSTed because the live state had drifted."),
    "reachable": ("output_reachable", "gauge", "1 while the output's peer answers, else 0."),
    "reloads": ("output_reloads", "counter", "nginx reloads run."),
    "test_failures": ("output_reload_test_failures", "counter", "Runs of the nginx test command that failed."),
    "reload_failures": ("output_reload_failures", "counter", "Runs of the nginx reload command that failed."),
    "skipped": ("output_reloads_skipped", "counter", "Reloads skipped because nothing on disk had changed."),
    "refused": ("output_refused_upstreams", "gauge", "Upstreams whose newest state nginx refused."),
}


class SnapshotCollector(Collector):
    """Builds every metric from one snapshot, read when Prometheus scrapes."""

    def __init__(self, source: StatusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        snapshot = read_snapshot(self._source)
        families = _Families()
        self._daemon(families, snapshot)
        self._clusters(families, snapshot)
        self._upstreams(families, snapshot)
        self._outputs(families, snapshot)
        return iter(families)

    @staticmethod
    def _daemon(families: _Families, snapshot: Mapping[str, Any]) -> None:
        families.gauge("ready", "1 once every cluster has been read in full at least once.", []).add_metric(
            [], _flag(snapshot.get("ready")))
        families.gauge("healthy", "1 while every cluster and output thread is alive.", []).add_metric(
            [], _flag(snapshot.get("healthy")))
        families.counter("config_reloads", "Config reloads applied.", []).add_metric(
            [], float(snapshot.get("config_reloads") or 0))
        families.counter("config_reload_failures", "Config reloads refused (the new file was invalid).",
                         []).add_metric([], float(snapshot.get("config_reload_failures") or 0))
        families.counter("process_stalls", "Times the whole process did not run for half a session timeout or "
                         "more (SIGSTOP, a paused VM, a starved host); each froze every cluster until ZooKeeper "
                         "answered again.", []).add_metric([], float(snapshot.get("process_stalls") or 0))

    @staticmethod
    def _clusters(families: _Families, snapshot: Mapping[str, Any]) -> None:
        labels = ["cluster"]
        info = families.info("cluster", "The ZooKeeper hosts of each cluster.", labels)
        up = families.gauge("cluster_up", "1 while the cluster's ZooKeeper session is CONNECTED.", labels)
        state = families.gauge("cluster_state", "The session state, one series per state (1 for the current one).",
                               ["cluster", "state"])
        frozen = families.gauge("cluster_frozen", "1 while the cluster's upstreams are frozen at their last good state.",
                                labels)
        frozen_for = families.gauge("cluster_frozen_seconds", "How long the cluster has been frozen (0 when not).",
                                    labels)
        read = families.gauge("cluster_read_in_full", "1 once the cluster has been read in full at least once.", labels)
        thaws = families.counter("cluster_thaws", "Thaws after a full re-read.", labels)
        count = families.gauge("cluster_upstreams", "Upstreams watched in the cluster.", labels)
        roots_refused = families.gauge(
            "cluster_watch_roots_refused",
            "Configured watch_roots the daemon cannot read (their znodes are watched one by one instead).", labels)
        last_change = families.gauge(
            "cluster_last_change_age_seconds", "Seconds since the newest registry change seen in the cluster.", labels)
        registry_age = families.gauge(
            "cluster_registry_age_seconds",
            "Seconds since the registry last confirmed the cluster's state (a read, a watch event or an answer "
            "to the periodic check on a live session).", labels)
        upstreams: Mapping[str, Mapping[str, Any]] = snapshot.get("upstreams") or {}
        for cluster in snapshot.get("clusters") or []:
            label = [str(cluster.get("label"))]
            info.add_metric(label, {"hosts": str(cluster.get("hosts", ""))})
            current = str(cluster.get("state") or "CONNECTING")
            up.add_metric(label, _flag(current == "CONNECTED"))
            states = CLUSTER_STATES if current in CLUSTER_STATES else (*CLUSTER_STATES, current)
            for name in states:
                state.add_metric([label[0], name], _flag(name == current))
            frozen.add_metric(label, _flag(cluster.get("frozen")))
            frozen_for.add_metric(label, _number(cluster.get("frozen_for_seconds")) or 0.0)
            read.add_metric(label, _flag(cluster.get("read_in_full")))
            thaws.add_metric(label, float(cluster.get("thaws") or 0))
            age = _number(cluster.get("registry_age_seconds"))
            if age is not None:
                registry_age.add_metric(label, age)
            names = list(cluster.get("upstreams") or [])
            count.add_metric(label, float(len(names)))
            roots_refused.add_metric(label, float(len(cluster.get("watch_roots_refused") or [])))
            ages = [
                age for age in (_number(upstreams.get(name, {}).get("last_change_seconds_ago")) for name in names)
                if age is not None
            ]
            if ages:
                last_change.add_metric(label, min(ages))

    @staticmethod
    def _upstreams(families: _Families, snapshot: Mapping[str, Any]) -> None:
        labels = ["upstream", "cluster"]
        gauges = {
            "servers": families.gauge("upstream_servers", "Servers published (backup servers included).", labels),
            "live_published": families.gauge(
                "upstream_live_servers_published", "Live instances among the published servers.", labels),
            "live_instances": families.gauge(
                "upstream_live_instances", "Valid live instances in the registry now.", labels),
            "last_change_seconds_ago": families.gauge(
                "upstream_last_change_age_seconds", "Seconds since the registry last changed for the upstream.",
                labels),
            "last_publish_seconds_ago": families.gauge(
                "upstream_last_publish_age_seconds", "Seconds since the upstream was last published.", labels),
            "held_servers": families.gauge(
                "upstream_held_servers", "Servers kept published by the guards though gone from the registry.",
                labels),
            "holding_drop": families.gauge("upstream_drop_held", "1 while the shrink guard holds back a drop.", labels),
            "settling": families.gauge("upstream_settling", "1 while the upstream settles after a thaw.", labels),
        }
        drained = families.gauge("upstream_drained_servers",
                                 "Servers drained by hand (nginx-upstream-reloader drain), rendered down.", labels)
        # Which output still owes which upstream is in /status, not here: a
        # series per upstream and output would triple the scrape of a fleet
        # for values that are almost always 0 (output_pending_upstreams alerts).
        for name, upstream in (snapshot.get("upstreams") or {}).items():
            label = [str(name), str(upstream.get("cluster", ""))]
            for key, family in gauges.items():
                value = _number(upstream.get(key))
                if value is not None:
                    family.add_metric(label, value)
            drained.add_metric(label, float(len(upstream.get("drained") or ())))

    @staticmethod
    def _outputs(families: _Families, snapshot: Mapping[str, Any]) -> None:
        labels = ["output"]
        up = families.gauge("output_up", "1 while the output's thread is alive.", labels)
        deliveries = families.counter("output_deliveries", "Items the output's thread delivered.", labels)
        errors = families.counter("output_errors", "Deliveries that raised an unexpected error.", labels)
        queued = families.gauge("output_queued_upstreams", "Upstreams waiting in the output's queue.", labels)
        pending = families.gauge("output_pending_upstreams", "Upstreams whose newest state is not delivered yet.",
                                 labels)
        busy = families.gauge("output_busy_seconds", "How long the current delivery has taken (0 when idle).", labels)
        for name, output in (snapshot.get("outputs") or {}).items():
            label = [str(name)]
            up.add_metric(label, _flag(output.get("alive")))
            deliveries.add_metric(label, float(output.get("delivered") or 0))
            errors.add_metric(label, float(output.get("errors") or 0))
            queued.add_metric(label, float(output.get("waiting") or 0))
            pending.add_metric(label, float(len(output.get("pending") or ())))
            busy.add_metric(label, _number(output.get("busy_for_seconds")) or 0.0)
            SnapshotCollector._output_counters(families, label, output.get("counters") or {})

    @staticmethod
    def _output_counters(families: _Families, label: list[str], counters: Mapping[str, Any]) -> None:
        # Only an output that POSTs counts "ok" (from its start): for the
        # reload output "refused" is its gauge of refused upstreams instead.
        posts = "ok" in counters
        for key, raw in sorted(counters.items()):
            value = _number(raw)
            if value is None:
                continue
            if key.startswith("panic:"):
                # The Lua output's per-upstream panic flag (panic_threshold).
                families.gauge("upstream_panic", "1 while nginx's Lua balancer spreads the upstream over every "
                               "server, ignoring the passive checks (panic_threshold).",
                               ["upstream"]).add_metric([key[len("panic:"):]], value)
            elif posts and (key in _POST_RESULTS or key.startswith("http_")):
                families.counter(
                    "output_posts", "POSTs by outcome: ok, conflict (409, retried), dropped (retried), timeout, "
                    "http_NNN.", ["output", "result"]).add_metric([*label, key], value)
            elif key in _OUTPUT_STATS:
                family, kind, doc = _OUTPUT_STATS[key]
                make = families.counter if kind == "counter" else families.gauge
                make(family, doc, ["output"]).add_metric(label, value)
            else:
                families.counter("output_events", "Other output counters, by name.",
                                 ["output", "event"]).add_metric([*label, key], value)


def metrics_registry(source: StatusSource) -> CollectorRegistry:
    """A registry of its own holding only the snapshot collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))
    return registry


# ---------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------


class _Server(HTTPServer):
    """An HTTP server with a fixed pool of :data:`WORKERS` daemon threads and a short queue.

    A connection that finds the queue full is closed at once: however many
    clients connect, the endpoint holds at most ``WORKERS + BACKLOG``
    sockets, and the descriptors the files output needs are never spent here.
    """

    # A restarted daemon can bind again while the old one's connections sit
    # in TIME_WAIT; on Linux this never lets two listeners share the port.
    allow_reuse_address = True
    # The kernel's accept queue (no descriptor of ours until accepted).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], source: StatusSource, registry: CollectorRegistry) -> None:
        # AF_INET6 for an IPv6 literal; the config has already validated the host.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.source = source
        self.registry = registry
        self.refused = 0
        self._queue: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(BACKLOG)
        # Connections being served, with the time by which they must be done.
        self._active: dict[socket.socket, float] = {}
        self._active_lock = threading.Lock()
        super().__init__(address, _Handler)
        for index in range(WORKERS):
            threading.Thread(target=self._work, name=f"status-http-{index}", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("status: too many connections at once; closed %d of them unanswered", self.refused)
            self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            with self._active_lock:
                self._active[request] = time.monotonic() + CONNECTION_DEADLINE
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - one client must not take a worker down
                self.handle_error(request, client_address)
            finally:
                with self._active_lock:
                    self._active.pop(request, None)
                self.shutdown_request(request)

    def keep_alive(self, request: socket.socket) -> bool:
        """Whether an answer on ``request`` may keep the connection open: not in the second half of its deadline.

        Closing it on an answer there, rather than shutting it under a
        request at the deadline, is what lets a client that asks again and
        again on one connection never see a request go unanswered.
        """
        with self._active_lock:
            deadline = self._active.get(request)
        return deadline is not None and time.monotonic() < deadline - CONNECTION_DEADLINE / 2

    def service_actions(self) -> None:
        """Between polls of the listener: end the connections past their deadline.

        A client that sends a byte now and then never trips the socket
        timeout; shutting its socket down wakes the worker blocked on it.
        """
        now = time.monotonic()
        with self._active_lock:
            late = [sock for sock, deadline in self._active.items() if deadline <= now]
        for sock in late:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def server_close(self) -> None:
        super().server_close()
        # Queued connections are closed; the workers end (nobody waits for them).
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        for _ in range(WORKERS):
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("status: a connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    # Headers and body are two writes: with Nagle's algorithm a kept-alive
    # scraper would wait out the peer's delayed ACK (40 ms) on every request.
    disable_nagle_algorithm = True
    server_version = "nginx-upstream-reloader"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": self._metrics,
            "/healthz": lambda: self._probe(self.server.source.healthy, "healthy", "unhealthy"),
            "/readyz": lambda: self._probe(self.server.source.ready, "ready", "not ready"),
            "/status": self._status,
        }
        route = routes.get(path)
        if route is None:
            code, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            try:
                code, content_type, body = route()
            except Exception:  # a broken page must not take the endpoint down
                log.exception("status: %s failed", path)
                code, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        self.send_response(code)
        if path == "/metrics" and code == 200 and _accepts_gzip(self.headers.get("Accept-Encoding", "")):
            # A fleet-sized exposition is about 1 KB per upstream; Prometheus asks for gzip.
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if not self.close_connection and not self.server.keep_alive(self.request):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _metrics(self) -> tuple[int, str, bytes]:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        return 200, content_type, encoder(self.server.registry)

    @staticmethod
    def _probe(ok: bool, yes: str, no: str) -> tuple[int, str, bytes]:
        return (200, "text/plain; charset=utf-8", f"{yes}\n".encode()) if ok else (
            503, "text/plain; charset=utf-8", f"{no}\n".encode())

    def _status(self) -> tuple[int, str, bytes]:
        body = json.dumps(read_snapshot(self.server.source), indent=2, default=str) + "\n"
        return 200, "application/json", body.encode()

    def _refuse(self) -> None:
        body = b"only GET and HEAD\n"
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        # A request body we do not read must not be taken for the next request.
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    # Any other method gets http.server's 501.
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would drown the daemon's log.
        log.debug("status: %s %s", self.address_string(), format % args)


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class StatusServer:
    """Serves the status paths for ``source`` on ``address`` until :meth:`stop`."""

    def __init__(self, source: StatusSource, address: tuple[str, int]) -> None:
        self._source = source
        self._address = address
        self.registry = metrics_registry(source)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when 0 was asked for)."""
        if self._server is None:
            return self._address
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve on a daemon thread; raises OSError when the address cannot be bound."""
        self._server = _Server(self._address, self._source, self.registry)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="status-http", daemon=True,
        )
        self._thread.start()
        log.info("status: serving /metrics, /healthz, /readyz and /status on http://%s",
                 _format_address(*self.address))

    def stop(self) -> None:
        """Stop listening, within :data:`STOP_GRACE` s; connections still open die with the process."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        # shutdown() waits for serve_forever to notice, which it does every
        # poll_interval; run it aside so that a wedged loop cannot hold us.
        stopper = threading.Thread(target=server.shutdown, name="status-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_GRACE)
        thread.join(max(STOP_GRACE - 0.5, 0.1))
        server.server_close()


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------
# The `status` command
# ---------------------------------------------------------------------------


def fetch_status(address: tuple[str, int], timeout: float = 5.0) -> dict[str, Any]:
    """GET ``/status`` from a running daemon; raises OSError when nothing answers there."""
    url = f"http://{_format_address(*address)}/status"
    # A local endpoint: never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        document = json.load(response)
    if not isinstance(document, dict):
        raise TypeError(f"{url} did not answer a JSON object")
    return document


def _age(value: object) -> str:
    number = _number(value)
    if number is None:
        return "-"
    if number < 60:
        return f"{number:.1f}s ago"
    if number < 3600:
        return f"{number / 60:.1f}m ago"
    return f"{number / 3600:.1f}h ago"


def printable(text: object) -> str:
    """``text`` with every control or format character escaped (``\\x1b``, ``\\u202e``).

    What answers on the port is not trusted: a value must not move the
    cursor, rewrite earlier lines or retitle the terminal it is printed on.
    """
    return "".join(
        char if char.isprintable() else (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        for char in str(text)
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def _yes(value: object) -> str:
    return "yes" if value else "no"


def _drained(upstream: Mapping[str, Any]) -> str:
    """The drained servers, each with the time it has left ("-" when none)."""
    shown = []
    for entry in upstream.get("drained") or ():
        left = _number(entry.get("seconds_left"))
        shown.append(str(entry.get("server")) + ("" if left is None else f" ({max(left, 0):.0f}s left)"))
    text = ", ".join(shown) or "-"
    return text + " (not applied: no server would be left)" if upstream.get("drain_refused") else text


def render_status(snapshot: Mapping[str, Any]) -> str:
    """The snapshot as readable tables: the daemon, its clusters, its upstreams, its outputs."""
    summary = printable(
        f"ready: {_yes(snapshot.get('ready'))}   healthy: {_yes(snapshot.get('healthy'))}   "
        f"files: {snapshot.get('files_output_path', '-')}   config reloads: {snapshot.get('config_reloads', 0)} "
        f"({snapshot.get('config_reload_failures', 0)} refused)"
    )
    lines = [summary, ""]
    if snapshot.get("overrides_problem"):
        lines[1:1] = [f"drains file: {snapshot['overrides_problem']}"]
    clusters = []
    for cluster in snapshot.get("clusters") or []:
        frozen = "no"
        if cluster.get("frozen"):
            frozen_for = _number(cluster.get("frozen_for_seconds"))
            frozen = "yes" if frozen_for is None else f"yes, {frozen_for:.1f}s"
        clusters.append([
            str(cluster.get("label")), str(cluster.get("state")), frozen, _yes(cluster.get("read_in_full")),
            str(cluster.get("thaws", 0)), str(len(cluster.get("upstreams") or [])),
            _age(cluster.get("registry_age_seconds")), str(cluster.get("hosts", "")),
        ])
    lines += _table(["CLUSTER", "STATE", "FROZEN", "READ IN FULL", "THAWS", "UPSTREAMS", "CONFIRMED", "HOSTS"],
                    clusters)
    for cluster in snapshot.get("clusters") or []:
        roots = [str(root) for root in cluster.get("watch_roots") or []]
        if roots:
            refused = {str(root) for root in cluster.get("watch_roots_refused") or []}
            lines.append(printable(f"watch roots of {cluster.get('label')}: " + ", ".join(
                f"{root} (refused: its znodes are watched one by one)" if root in refused else root
                for root in roots)))
    lines.append("")
    upstreams = []
    for name, upstream in sorted((snapshot.get("upstreams") or {}).items()):
        guards = []
        if upstream.get("held_servers"):
            guards.append(f"{upstream['held_servers']} held")
        if upstream.get("holding_drop"):
            guards.append("drop held")
        if upstream.get("settling"):
            guards.append("settling")
        live = upstream.get("live_instances")
        upstreams.append([
            str(name), str(upstream.get("cluster", "")), str(upstream.get("servers", 0)),
            "-" if live is None else str(live), _age(upstream.get("last_change_seconds_ago")),
            _age(upstream.get("last_publish_seconds_ago")), ", ".join(guards) or "-",
            ", ".join(upstream.get("pending_in") or ()) or "-", _drained(upstream),
        ])
    lines += _table(["UPSTREAM", "CLUSTER", "SERVERS", "LIVE", "LAST CHANGE", "LAST PUBLISH", "GUARDS", "PENDING IN",
                     "DRAINED"], upstreams)
    lines.append("")
    outputs = []
    for name, output in (snapshot.get("outputs") or {}).items():
        counters = output.get("counters") or {}
        outputs.append([
            str(name), _yes(output.get("alive")), str(output.get("waiting", 0)),
            str(len(output.get("pending") or ())), str(output.get("delivered", 0)), str(output.get("errors", 0)),
            " ".join(f"{key}={value}" for key, value in sorted(counters.items())) or "-",
        ])
    lines += _table(["OUTPUT", "ALIVE", "QUEUED", "PENDING", "DELIVERED", "ERRORS", "COUNTERS"], outputs)
    return "\n".join(lines) + "\n"


def address_of_config(config: Any) -> tuple[str, int] | None:
    """Where the daemon of ``config`` serves status (a wildcard host on loopback); None without ``listen:``."""
    if config.listen is None:
        return None
    host, port = config.listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return host, port


def status_command(address: tuple[str, int], as_json: bool) -> int:
    """``nginx-upstream-reloader status``: 0 after printing, 1 when no daemon answers at ``address``."""
    shown = _format_address(*address)
    try:
        snapshot = fetch_status(address)
    except urllib.error.HTTPError as error:
        print(f"http://{shown}/status answered {error.code} {printable(error.reason)}: "
              "is that an nginx-upstream-reloader?", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as error:
        reason = getattr(error, "reason", error)
        print(f"no nginx-upstream-reloader status at {shown} ({printable(reason)}); is it running, "
              f"with `listen: {address[1]}` in its config?", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(snapshot, indent=2))  # ensure_ascii: every control character is escaped
    else:
        print(render_status(snapshot), end="")
    return 0
