"""A real ZooKeeper ensemble (3 voting nodes, optionally observers) on 127.0.0.1.

Each node is a :class:`~reloader.localenv.zookeeper.LocalZooKeeper` process
with a quorum config of its own: its own work directory, dataDir and
``myid``, free 127.0.0.1 ports (client, quorum, election), the admin server
off and every four-letter word allowed (``srvr`` tells the leader apart).

Guarantees:

* :meth:`LocalEnsemble.start` returns once every node serves (``srvr``
  reports leader, follower or observer), exactly one node is the leader, and
  a kazoo session connects through :attr:`hosts`; otherwise it raises
  ZooKeeperError with the tail of every node's log.
* Nodes are numbered 0..n-1 (``myid`` is the number plus one); voters come
  first, observers after them. Ports and data survive :meth:`kill`,
  :meth:`stop` and ``start(node)``, so it rejoins where clients
  expect it.
* :meth:`close` stops every node and removes the work directory.

Timings are short (tickTime 200 ms, initLimit 10 and syncLimit 5 ticks, a
1 s election connect timeout) so an ensemble starts in a few seconds and
fails over in about one.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .ports import free_port
from .zookeeper import JVM_FLAGS, LocalZooKeeper, ZooKeeperError

log = logging.getLogger(__name__)

SERVING_MODES = ("leader", "follower", "observer")


def four_letter_word(port: int, word: str, timeout: float = 0.5) -> str | None:
    """Send ``word`` (``srvr``, ``stat``, ``ruok``...) to 127.0.0.1:``port``; its answer or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while True:
                data = sock.recv(4096)
                if not data:
                    break
                chunks.append(data)
    except OSError:
        return None
    return b"".join(chunks).decode(errors="replace")


class EnsembleNode(LocalZooKeeper):
    """One member of a :class:`LocalEnsemble`: a LocalZooKeeper with a quorum config."""

    def __init__(self, workdir: Path, myid: int, port: int, quorum_port: int, election_port: int,
                 observer: bool, tick_time_ms: int) -> None:
        super().__init__(workdir=workdir, port=port, tick_time_ms=tick_time_ms)
        self.myid = myid
        self.quorum_port = quorum_port
        self.election_port = election_port
        self.observer = observer
        self.peers: list[EnsembleNode] = []
        # While the ensemble starts, nodes are launched together and judged
        # together: a lone voter can never accept a session.
        self.wait_for_session = True

    def server_line(self) -> str:
        role = ":observer" if self.observer else ""
        return f"server.{self.myid}=127.0.0.1:{self.quorum_port}:{self.election_port}{role}"

    def write_config(self) -> Path:
        path = super().write_config()
        extra = [
            "initLimit=10",
            "syncLimit=5",
            "4lw.commands.whitelist=*",
            "reconfigEnabled=false",
            "standaloneEnabled=false",
            *(["peerType=observer"] if self.observer else []),
            *(peer.server_line() for peer in self.peers),
            "",
        ]
        with path.open("a") as handle:
            handle.write("\n".join(extra))
        (self.data_dir / "myid").write_text(f"{self.myid}\n")
        return path

    def command(self) -> list[str]:
        argv = super().command()
        # A short election connect timeout: a killed or paused peer must not
        # hold up a failover for the default 5 s.
        at = argv.index(JVM_FLAGS[-1]) + 1
        return [*argv[:at], "-Dzookeeper.cnxTimeout=1000", *argv[at:]]

    def _wait_ready(self, deadline: float) -> None:
        if self.wait_for_session:
            super()._wait_ready(deadline)

    def mode(self) -> str | None:
        """``leader``, ``follower`` or ``observer`` while serving, else None."""
        answer = four_letter_word(self.port, "srvr")
        if not answer:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None


class LocalEnsemble:
    """``voters`` (default 3) voting nodes plus ``observers`` observers; see the module docstring."""

    def __init__(self, voters: int = 3, observers: int = 0, tick_time_ms: int = 200,
                 workdir: Path | None = None) -> None:
        if voters < 1:
            raise ValueError("an ensemble needs at least one voter")
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="localzk-ensemble-")) if workdir is None else Path(workdir)
        self.nodes: list[EnsembleNode] = [
            EnsembleNode(self.workdir / f"node{i}", myid=i + 1, port=free_port(), quorum_port=free_port(),
                         election_port=free_port(), observer=i >= voters, tick_time_ms=tick_time_ms)
            for i in range(voters + observers)
        ]
        for node in self.nodes:
            node.peers = self.nodes
        self.last_start_seconds: float | None = None

    # -- addresses ----------------------------------------------------------

    @property
    def voters(self) -> list[EnsembleNode]:
        return [node for node in self.nodes if not node.observer]

    @property
    def hosts(self) -> str:
        """The connect string of the voting nodes."""
        return ",".join(node.hosts for node in self.voters)

    @property
    def observer_hosts(self) -> str:
        """The connect string of the observers ("" when there are none)."""
        return ",".join(node.hosts for node in self.nodes if node.observer)

    # -- lifecycle ------------------------------------------------------------

    def start(self, node: int | None = None, wait: bool = True, timeout: float = 60) -> LocalEnsemble:
        """Start every node and wait until the ensemble serves (see the module docstring).

        With ``node``, start only that node again; with ``wait``, return once
        it serves (only possible while a quorum can form with it).
        """
        if node is not None:
            self._start_node(node, wait, timeout)
            return self
        began = time.monotonic()
        try:
            for member in self.nodes:
                member.wait_for_session = False
                member.start(timeout=timeout)
                member.wait_for_session = True
            self._wait(lambda: self._serving(self.nodes), began + timeout, "every node to serve")
        except BaseException:
            self.close()
            raise
        self.last_start_seconds = time.monotonic() - began
        log.info("ZooKeeper ensemble %s ready in %.2f s", self.hosts, self.last_start_seconds)
        return self

    def _serving(self, nodes: list[EnsembleNode]) -> bool:
        modes = [node.mode() for node in nodes]
        if not all(mode in SERVING_MODES for mode in modes) or modes.count("leader") > 1:
            return False
        leaders = [node for node in self.nodes if node.running and node.mode() == "leader"]
        return len(leaders) == 1 and leaders[0]._try_session(2.0)

    def _wait(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        while not condition():
            for node in self.nodes:
                code = node._proc.poll() if node._proc is not None else None
                if code is not None:
                    raise ZooKeeperError(f"ensemble node {node.myid} exited with {code}\n{self.log_tails()}")
            if time.monotonic() > deadline:
                raise ZooKeeperError(f"timed out waiting for {what}\n{self.log_tails()}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every node and remove the work directory (if it was created here)."""
        for node in self.nodes:
            node.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalEnsemble:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- one node ---------------------------------------------------------------

    def leader(self, timeout: float = 10) -> int:
        """The number of the node that is leader now (waits up to ``timeout`` s for one)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, node in enumerate(self.nodes):
                if node.running and node.mode() == "leader":
                    return index
            if time.monotonic() > deadline:
                raise ZooKeeperError(f"no leader within {timeout} s\n{self.log_tails()}")
            time.sleep(0.05)

    def kill(self, node: int) -> None:
        """kill -9 of node ``node``; its data stays for :meth:`start`."""
        self.nodes[node].kill()

    def stop(self, node: int) -> None:
        """A graceful stop (SIGTERM) of node ``node``; its data stays."""
        self.nodes[node]._terminate()

    def _start_node(self, node: int, wait: bool, timeout: float) -> None:
        member = self.nodes[node]
        member.wait_for_session = wait
        try:
            member.start(timeout=timeout)
        finally:
            member.wait_for_session = True
        if wait:
            self._wait(lambda: member.mode() in SERVING_MODES, time.monotonic() + timeout,
                       f"node {node} to serve")

    def pause(self, node: int) -> None:
        """SIGSTOP node ``node``: its connections stay open, nothing answers."""
        self.nodes[node].pause()

    def resume(self, node: int) -> None:
        """SIGCONT node ``node``."""
        self.nodes[node].resume()

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- node {n.myid} ({n.log_path}) ---\n{n.log_tail(lines)}" for n in self.nodes)

    def __repr__(self) -> str:
        return f"<LocalEnsemble {self.hosts} observers={self.observer_hosts or '-'} workdir={self.workdir}>"
