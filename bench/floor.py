#!/usr/bin/env python
"""The floor: the least a kazoo program can do to keep upstream files and dyups in step.

It does the daemon's work and nothing else: one children watch per znode and
one data watch per child (raw one-shot watches re-armed by the pipelined
reads that answer them), every child's data read with pipelined
``get_async``, each changed upstream written durably (temporary file, fsync,
rename, fsync of the directory; or the batched variant: one directory fsync
per batch), then its body POSTed to a dyups interface over keep-alive
connections. No validation, no formats beyond ``host:port`` names with a
digit weight as data and JSON ``{"host", "port", "weight"}`` data, no guards,
no reconciliation. Whatever the daemon costs above this is its own overhead.

Guarantees: the floor never writes an upstream whose rendering is unchanged,
writes every file before it POSTs, and after a reconnect re-reads the whole
tree pipelined (the floor of a resync). It speaks only to the addresses it
is given (the benches give it 127.0.0.1).

Importable pieces (``read_tree``, ``render``, ``write_files``, ``Poster``,
``FloorSync``) for in-process use, and a CLI:

    bench/floor.py demo [--upstreams N] [--json-data]   # own ZooKeeper + DyupsServer; prints the floor figures
    bench/floor.py watch --hosts H --znodes F.json --files DIR [--dyups-url U] [--batch-fsync]
    bench/floor.py cold  --hosts H --znodes F.json --files DIR [--dyups-url U] [--batch-fsync]

``watch`` runs until SIGTERM and prints one JSON line per sync on stdout
(``{"event": "initial"|"resync"|"change", "read_s": ..., ...}``); the benches
run it as a subprocess beside the daemon, so both pay for their own
interpreter and GIL and are timed by the same inotify and DyupsServer clocks.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

log = logging.getLogger("floor")

Tree = dict[str, dict[str, bytes]]  # upstream -> {child name: data}


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_tree(
    client: KazooClient,
    znodes: Mapping[str, str],
    children_watch: Any = None,
    data_watch: Any = None,
) -> Tree:
    """Every child's data of every znode: all get_children pipelined, then all gets pipelined."""
    listing = {name: client.get_children_async(path, watch=children_watch) for name, path in znodes.items()}
    reads: list[tuple[str, str, Any]] = []
    for name, result in listing.items():
        try:
            kids = result.get(60)
        except NoNodeError:
            kids = []
        base = znodes[name]
        reads.extend((name, kid, client.get_async(f"{base}/{kid}", watch=data_watch)) for kid in kids)
    tree: Tree = {name: {} for name in znodes}
    for name, kid, result in reads:
        try:
            tree[name][kid] = result.get(60)[0] or b""
        except NoNodeError:
            pass  # deleted between the listing and the read; its znode's watch has fired
    return tree


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def server_of(child: str, data: bytes) -> tuple[str, int] | None:
    """(host:port, weight) of one child: JSON data, else a host:port name with an optional digit weight."""
    if data[:1] == b"{":
        try:
            doc = json.loads(data)
            return f"{doc['host']}:{int(doc['port'])}", int(doc.get("weight", 1))
        except (ValueError, KeyError, TypeError):
            return None
    if ":" not in child:
        return None
    return child, int(data) if data.isdigit() else 1


def servers(children: Mapping[str, bytes]) -> list[tuple[str, int]]:
    found = (server_of(kid, data) for kid, data in children.items())
    return sorted(s for s in found if s is not None)


def render(name: str, children: Mapping[str, bytes]) -> tuple[str, str]:
    """(file text, dyups body) of one upstream."""
    lines = [f"server {addr}" + (f" weight={w}" if w != 1 else "") for addr, w in servers(children)]
    text = f"upstream {name} {{\n" + "".join(f"    {line};\n" for line in lines) + "}\n"
    return text, "".join(f"{line};" for line in lines)


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files(directory: Path, items: Iterable[tuple[str, str]], batch: bool = False) -> int:
    """Write ``(name, text)`` as ``name.upstream`` durably; returns the count.

    Per file: temporary file, fsync, rename, fsync of the directory. With
    ``batch`` the directory is fsynced once after every rename of the batch,
    the cheapest sequence that still survives a crash file by file.
    """
    count = 0
    for name, text in items:
        tmp = directory / f".{name}.upstream.floor.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, directory / f"{name}.upstream")
        if not batch:
            _fsync_dir(directory)
        count += 1
    if batch and count:
        _fsync_dir(directory)
    return count


# ---------------------------------------------------------------------------
# dyups
# ---------------------------------------------------------------------------


class Poster:
    """POSTs bodies to a dyups interface over ``connections`` keep-alive connections, one thread each."""

    def __init__(self, url: str, connections: int = 2, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self.connections = max(1, connections)
        self._local = threading.local()
        self.non_200 = 0

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def post_one(self, name: str, body: str) -> int:
        data = body.encode()
        for attempt in (1, 2):  # one retry on a connection the server closed (keepalive_requests)
            conn = self._conn()
            try:
                conn.request("POST", f"/upstream/{name}", body=data, headers={"Content-Length": str(len(data))})
                response = conn.getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self._local.conn = None
                return response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def post(self, items: list[tuple[str, str]]) -> int:
        """POST every ``(name, body)``, split over the connections; returns the count."""
        if not items:
            return 0
        if self.connections == 1 or len(items) == 1:
            self._post_all(items)
            return len(items)
        shards = [items[i :: self.connections] for i in range(self.connections)]
        threads = [threading.Thread(target=self._post_all, args=(shard,), daemon=True) for shard in shards if shard]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return len(items)

    def _post_all(self, items: list[tuple[str, str]]) -> None:
        for name, body in items:
            if self.post_one(name, body) != 200:
                self.non_200 += 1


# ---------------------------------------------------------------------------
# the watching loop
# ---------------------------------------------------------------------------


class FloorSync:
    """Keeps files (and dyups) equal to ZooKeeper with raw watches and pipelined reads.

    Watch callbacks only enqueue; one worker thread drains the queue, so a
    burst of events costs one pipelined read and one write batch.
    """

    def __init__(
        self,
        hosts: str,
        znodes: Mapping[str, str],
        files: Path | None,
        dyups_url: str | None = None,
        batch_fsync: bool = False,
        session_timeout: float = 10.0,
        report: Any = None,
    ) -> None:
        self.znodes = dict(znodes)
        self.by_path = {path: name for name, path in self.znodes.items()}
        self.files = files
        self.batch_fsync = batch_fsync
        self.poster = Poster(dyups_url) if dyups_url else None
        self.report = report or (lambda record: None)
        self.tree: Tree = {}
        self.rendered: dict[str, str] = {}
        self._events: queue.Queue[tuple[str, str]] = queue.Queue()
        self._stop = threading.Event()
        self._was_connected = False
        self.client = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 5.0},
        )
        self.client.add_listener(self._on_state)
        self._worker = threading.Thread(target=self._run, name="floor-worker", daemon=True)

    # kazoo threads: enqueue only
    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._events.put(("resync" if self._was_connected else "initial", ""))
            self._was_connected = True

    def _on_children(self, event: WatchedEvent) -> None:
        self._events.put(("children", event.path))

    def _on_data(self, event: WatchedEvent) -> None:
        if event.type == EventType.CHANGED:
            self._events.put(("data", event.path))

    def start(self) -> FloorSync:
        self._worker.start()
        self.client.start(timeout=60)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._events.put(("stop", ""))
        self._worker.join(10)
        self.client.stop()
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = [self._events.get()]
            while True:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            if any(kind == "stop" for kind, _ in batch):
                return
            try:
                full = [kind for kind, _ in batch if kind in ("initial", "resync")]
                if full:
                    self._full(full[-1])
                else:
                    self._incremental(batch)
            except Exception as error:  # a lost connection mid-read: the next CONNECTED re-reads
                log.warning("floor: sync failed: %r", error)

    def _full(self, kind: str) -> None:
        t0 = time.monotonic()
        self.tree = read_tree(self.client, self.znodes, self._on_children, self._on_data)
        self._publish(kind, t0, time.monotonic(), list(self.znodes))

    def _incremental(self, batch: list[tuple[str, str]]) -> None:
        t0 = time.monotonic()
        touched: set[str] = set()
        listings = {}
        for kind, path in batch:
            if kind == "children" and path in self.by_path and path not in listings:
                listings[path] = self.client.get_children_async(path, watch=self._on_children)
        reads: list[tuple[str, str, Any]] = []
        for path, result in listings.items():
            name = self.by_path[path]
            try:
                kids = set(result.get(60))
            except NoNodeError:
                kids = set()
            known = self.tree.setdefault(name, {})
            for gone in set(known) - kids:
                del known[gone]
            reads.extend((name, kid, self.client.get_async(f"{path}/{kid}", watch=self._on_data)) for kid in kids - set(known))
            touched.add(name)
        for kind, path in batch:
            if kind == "data":
                parent, _, kid = path.rpartition("/")
                name = self.by_path.get(parent)
                if name is not None:
                    reads.append((name, kid, self.client.get_async(path, watch=self._on_data)))
        for name, kid, result in reads:
            try:
                self.tree.setdefault(name, {})[kid] = result.get(60)[0] or b""
            except NoNodeError:
                self.tree.get(name, {}).pop(kid, None)
            touched.add(name)
        self._publish("change", t0, time.monotonic(), sorted(touched))

    def _publish(self, kind: str, t0: float, t_read: float, names: list[str]) -> None:
        changed: list[tuple[str, str, str]] = []
        for name in names:
            text, body = render(name, self.tree.get(name, {}))
            if self.rendered.get(name) != text:
                self.rendered[name] = text
                changed.append((name, text, body))
        if self.files is not None:
            write_files(self.files, ((n, t) for n, t, _ in changed), self.batch_fsync)
        t_written = time.monotonic()
        if self.poster is not None:
            self.poster.post([(n, b) for n, _, b in changed if b])
        t_posted = time.monotonic()
        self.report({
            "event": kind, "t0": t0, "read_s": round(t_read - t0, 4), "write_s": round(t_written - t_read, 4),
            "post_s": round(t_posted - t_written, 4), "changed": len(changed),
            "children": sum(len(v) for v in self.tree.values()) if kind != "change" else None,
        })


# ---------------------------------------------------------------------------
# one cold read, for the floor figures
# ---------------------------------------------------------------------------


def cold(hosts: str, znodes: Mapping[str, str], files: Path | None, dyups_url: str | None, batch_fsync: bool) -> dict[str, Any]:
    """Connect, read the whole tree pipelined, write every file, POST every body; the phase times."""
    t0 = time.monotonic()
    client = KazooClient(hosts=hosts, timeout=10)
    client.start(timeout=60)
    t_conn = time.monotonic()
    tree = read_tree(client, znodes)
    t_read = time.monotonic()
    rendered = [(name, *render(name, kids)) for name, kids in tree.items()]
    t_render = time.monotonic()
    if files is not None:
        write_files(files, ((n, t) for n, t, _ in rendered), batch_fsync)
    t_write = time.monotonic()
    if dyups_url:
        Poster(dyups_url).post([(n, b) for n, _, b in rendered if b])
    t_post = time.monotonic()
    client.stop()
    client.close()
    n = len(rendered)
    return {
        "upstreams": n,
        "children": sum(len(v) for v in tree.values()),
        "connect_s": round(t_conn - t0, 4),
        "read_s": round(t_read - t_conn, 4),
        "render_s": round(t_render - t_read, 4),
        "write_s": round(t_write - t_render, 4),
        "files_per_s": round(n / (t_write - t_render)) if files is not None and t_write > t_render else None,
        "post_s": round(t_post - t_write, 4) if dyups_url else None,
        "posts_per_s": round(n / (t_post - t_write)) if dyups_url and t_post > t_write else None,
        "batch_fsync": batch_fsync,
    }


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _load_znodes(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _cmd_watch(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sync = FloorSync(args.hosts, _load_znodes(args.znodes), args.files, args.dyups_url, args.batch_fsync,
                     args.session_timeout, report=_emit).start()
    stop.wait()
    sync.stop()
    return 0


def _cmd_cold(args: argparse.Namespace) -> int:
    _emit(cold(args.hosts, _load_znodes(args.znodes), args.files, args.dyups_url, args.batch_fsync))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Own ZooKeeper and DyupsServer on 127.0.0.1, one tree; the cold figures for both fsync variants."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench._common import create_many, populate, zk_nodes
    from reloader.localenv.zookeeper import LocalZooKeeper
    from tests.dyups_server import DyupsServer

    with LocalZooKeeper() as zk, DyupsServer(generation="stable", workers=2) as dyups, \
            tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        client = zk.client()
        if args.json_data:
            client.ensure_path("/floor")
            items = []
            for u in range(args.upstreams):
                items.append((f"/floor/svc{u:04d}", b""))
            create_many(client, items)
            kids = [(f"/floor/svc{u:04d}/i-{u:04d}-{k:02d}", json.dumps({"host": f"10.{u // 250}.{u % 250}.{k + 1}", "port": 8000 + k, "weight": 1 + k % 3}).encode())
                    for u in range(args.upstreams) for k in range(20)]
            create_many(client, kids)
        else:
            populate(client, "/floor", args.upstreams, 20)
        client.stop()
        znodes = zk_nodes("/floor", args.upstreams)
        for batch in (False, True):
            files = Path(tmp) / f"files-{int(batch)}"
            files.mkdir()
            figures = cold(zk.hosts, znodes, files, dyups.url, batch)
            print(json.dumps(figures))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("watch", "cold"):
        p = sub.add_parser(name)
        p.add_argument("--hosts", required=True)
        p.add_argument("--znodes", type=Path, required=True, help="JSON file: {upstream: znode path}")
        p.add_argument("--files", type=Path)
        p.add_argument("--dyups-url")
        p.add_argument("--batch-fsync", action="store_true")
        p.add_argument("--session-timeout", type=float, default=10.0)
    demo = sub.add_parser("demo")
    demo.add_argument("--upstreams", type=int, default=1000)
    demo.add_argument("--json-data", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"watch": _cmd_watch, "cold": _cmd_cold, "demo": _cmd_demo}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
