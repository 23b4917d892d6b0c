"""The dyups adapter: POST each upstream to nginx's dyups interface, so nginx switches without a reload.

The pending, retry, probe, reconcile, re-assert and refusal rules are the
push engine's (:mod:`reloader.outputs.push`); this module is what is
particular to dyups (see the project's dyups protocol notes):

* An empty body answers 500, and a POST without Content-Length answers 204
  followed by stray bytes that corrupt a keep-alive connection: bodies are
  never empty (an empty state is refused before it is sent), and always
  sent with Content-Length.
* ``dyups_trylock`` makes concurrent updates answer 409, and a contended
  DELETE drops the connection without a byte: both are retried here with
  exponential backoff and jitter, then left to the engine's retry.
* Any other answer but 200 (a 500 on a body that passed validation: nginx is
  in a bad state) refuses that state: it is logged once, short (never the
  whole body), and tried again on a new state or after the engine's back-off,
  not by every reconcile pass.
* A refused connection or a request that gets no answer in time means the
  interface is down: the engine probes it and catches up when it answers.
* A batch is POSTed over ``CONNECTIONS`` kept-alive connections at once (one
  small lane thread each, which only speaks HTTP); every outcome is handed
  back to the engine in the batch's order.
* The live table comes from ``GET /detail`` (stable, Tengine) or ``GET
  /list`` (2020 master), split into blocks; a block whose text is unchanged
  since a clean pass is not parsed again. On stable and Tengine an idle
  pass reads only the names of ``GET /list`` and checks that the adapter's
  connection did not end (a reload or restart closes it), and ``/detail``
  only when either moved, or every ``full_every`` passes (the engine's
  quick passes). ``/detail`` answers from one
  worker, hence the engine's periodic re-assert. Names compare
  case-insensitively, as nginx's do. Upstreams the config does not manage
  are never touched.
* Slow start (:mod:`reloader.traffic`): while a server of an upstream ramps,
  the body carries stepped weights, every weight scaled by
  :data:`~reloader.traffic.RAMP_SCALE` (so a 10 % minimum of weight 1 is
  10, not 0), the ramping server's at Envoy's formula for the middle of its
  step; the engine re-POSTs at each of the :data:`~reloader.traffic.RAMP_STEPS`
  steps, then once more with the plain weights. The files keep the full weights.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from reloader.addresses import is_ip_literal
from reloader.model import Server, Upstream
from reloader.outputs.dyups_state import (
    AnswerTooLarge,
    CountingClient,
    Dropped,
    InterfaceDown,
    KeepAliveClient,
    LiveStateError,
    LiveStateReader,
    NoAnswer,
    TransportError,
    fingerprints,
    parse_block,
    split_blocks,
)
from reloader.outputs.http import MAX_ANSWER
from reloader.outputs.push import (
    OK,
    REFUSED,
    RETRY,
    UNREACHABLE,
    Adapter,
    LiveError,
    Outcome,
    PushOutput,
    Refusal,
    Unreachable,
    digest_of,
)
from reloader.render import render_dyups_body
from reloader.traffic import stepped_weights

log = logging.getLogger(__name__)

# Kept-alive connections a batch of POSTs is spread over: with two, nginx
# handles one POST while the next is being prepared, and one slow answer
# does not hold up the whole batch.
CONNECTIONS = 2

Shard = list[tuple[str, bytes]]


class _Lane:
    """A daemon thread with a kept-alive connection of its own, POSTing the shards it is handed."""

    def __init__(self, adapter: DyupsAdapter, http: KeepAliveClient, index: int) -> None:
        self.http = http
        self._adapter = adapter
        self._jobs: queue.SimpleQueue[tuple[Shard, queue.SimpleQueue[list[Outcome]]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"dyups-lane-{index}", daemon=True)
        self._thread.start()

    def post(self, items: Shard) -> queue.SimpleQueue[list[Outcome]]:
        answer: queue.SimpleQueue[list[Outcome]] = queue.SimpleQueue()
        self._jobs.put((items, answer))
        return answer

    def close(self) -> None:
        self._jobs.put(([], queue.SimpleQueue()))  # an empty job ends the thread

    def _run(self) -> None:
        while True:
            items, answer = self._jobs.get()
            if not items:
                self.http.close()
                return
            answer.put(self._adapter.post_shard(self.http, items))


class DyupsAdapter(Adapter):
    """The dyups protocol at ``base_url``: POST bodies, /detail or /list blocks."""

    name = "dyups"
    case_insensitive = True

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        max_attempts: int = 5,
        backoff: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        connections: int = CONNECTIONS,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._max_answer = max_answer
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._connections = max(1, connections)
        # Lanes beyond the adapter's own connection, started with the first batch.
        self._lanes: list[_Lane] = []
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._sleep = sleep
        self._random = random.Random()
        # It counts its connections' ends: the quick digest of an idle pass (see quick_digest).
        self._http = CountingClient(self.base_url, connect_timeout, read_timeout, max_answer=max_answer)
        self._reader = LiveStateReader(self._http)

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/upstream/{name}"

    def body(self, upstream: Upstream) -> bytes:
        if not upstream.servers:
            # dyups answers 500 to an empty body; the guards should make this impossible.
            raise Refusal("an empty upstream cannot be POSTed to dyups")
        return render_dyups_body(_ramped(upstream)).encode("ascii")

    def step(self, upstream: Upstream) -> Any:
        if upstream.slow_start is None or not upstream.added:
            return None
        weights = {server.endpoint: server.weight for server in upstream.servers}
        return stepped_weights(upstream.slow_start, weights, dict(upstream.added), time.time())[1]

    def send(self, items: list[tuple[str, bytes]]) -> list[Outcome]:
        lanes = min(self._connections, len(items))
        if lanes <= 1:
            return self.post_shard(self._http, items)
        while len(self._lanes) < self._connections - 1:
            http = KeepAliveClient(self.base_url, self._connect_timeout, self._read_timeout,
                                   max_answer=self._max_answer)
            self._lanes.append(_Lane(self, http, len(self._lanes) + 1))
        shards = [items[i::lanes] for i in range(lanes)]
        answers = [lane.post(shard) for lane, shard in zip(self._lanes, shards[1:])]
        results = [self.post_shard(self._http, shards[0])] + [answer.get() for answer in answers]
        # Back in the order the items came in (round-robin shards). A lane
        # that stopped early (the interface went away) leaves its remaining
        # items without an outcome: they count as unreachable, so stay pending.
        outcomes = []
        for i in range(len(items)):
            shard = results[i % lanes]
            if i // lanes < len(shard):
                outcomes.append(shard[i // lanes])
            else:
                outcomes.append(Outcome(UNREACHABLE, detail="its connection met an unreachable interface"))
        return outcomes

    def post_shard(self, http: KeepAliveClient, items: Shard) -> list[Outcome]:
        """POST each item in turn over ``http`` (any thread: touches no shared state); stops once unreachable."""
        outcomes = []
        for name, body in items:
            outcome = self._attempt(http, name, body)
            outcomes.append(outcome)
            if outcome.kind == UNREACHABLE:
                break
        return outcomes

    def _attempt(self, http: KeepAliveClient, name: str, body: bytes) -> Outcome:
        """Up to max_attempts POSTs of ``body``, retrying 409s and dropped connections (any thread)."""
        outcome = Outcome(RETRY)
        for attempt in range(self._max_attempts):
            if attempt:
                self._sleep(self._backoff * (2 ** (attempt - 1)) * (0.5 + self._random.random()))
            try:
                response = http.request("POST", f"/upstream/{name}", body)
            except (InterfaceDown, NoAnswer) as error:
                # No connection, or no answer in time: the interface is down,
                # hung or overloaded. Retrying at once would only stack waits;
                # the engine probes it on the retry schedule instead.
                if isinstance(error, NoAnswer):
                    outcome.counters["timeout"] += 1
                outcome.kind, outcome.detail = UNREACHABLE, str(error)
                return outcome
            except AnswerTooLarge as error:
                outcome.counters["failed"] += 1
                outcome.detail = str(error)
                return outcome
            except Dropped:
                outcome.counters["dropped"] += 1
                log.info("dyups: connection dropped on POST %s (attempt %d); retrying", name, attempt + 1)
                continue
            outcome.status = response.status
            if response.status == 409:
                outcome.counters["conflict"] += 1
                continue
            if response.status == 200:
                outcome.kind = OK
                return outcome
            outcome.counters[f"http_{response.status}"] += 1
            outcome.kind = REFUSED
            outcome.detail = f"POST {self.url_for(name)} answered {response.text.strip()[:120]!r}"
            return outcome
        outcome.detail = f"still failing after {self._max_attempts} attempts"
        return outcome

    def fetch(self) -> tuple[bytes, Any]:
        api, text = self._read(self._reader.fetch)
        return digest_of(f"{api}\n{text}".encode()), (api, text)

    def quick_digest(self) -> bytes | None:
        quick = self._read(self._reader.quick)
        return None if quick is None else digest_of(quick.encode())

    def _read(self, read: Callable[[], Any]) -> Any:
        """One read of the live state, its failures in the push engine's terms (the API is probed again after)."""
        try:
            return read()
        except (InterfaceDown, NoAnswer) as error:
            self._reader.forget_api()
            raise Unreachable(str(error)) from error
        except (TransportError, LiveStateError) as error:
            self._reader.forget_api()
            raise LiveError(str(error)) from error

    def blocks(self, answer: Any) -> dict[str, Any]:
        api, text = answer
        return {name: (api, block) for name, block in split_blocks(api, text).items()}

    def block_digest(self, block: Any) -> bytes:
        api, text = block
        return digest_of(f"{api}\n{text}".encode())

    def drift(self, upstream: Upstream, block: Any) -> str | None:
        api, text = block
        return _drift(_ramped(upstream).servers, parse_block(api, text))

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
        self._lanes = []
        self._http.close()


class DyupsOutput(PushOutput):
    """Keeps the dyups interface at ``base_url`` serving the published upstreams."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        max_attempts: int = 5,
        backoff: float = 0.05,
        retry_interval: float = 1.0,
        reconcile_interval: float = 5.0,
        reassert_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        connections: int = CONNECTIONS,
        max_answer: int = MAX_ANSWER,
        **engine: Any,
    ) -> None:
        adapter = DyupsAdapter(
            base_url, connect_timeout=connect_timeout, read_timeout=read_timeout, max_attempts=max_attempts,
            backoff=backoff, sleep=sleep, connections=connections, max_answer=max_answer,
        )
        super().__init__(
            adapter, retry_interval=retry_interval, reconcile_interval=reconcile_interval,
            reassert_interval=reassert_interval, clock=clock, **engine,
        )

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/upstream/{name}"


def _ramped(upstream: Upstream) -> Upstream:
    """``upstream`` with the weights of its slow-start step now (itself when nothing ramps)."""
    if upstream.slow_start is None or not upstream.added:
        return upstream
    weights = {server.endpoint: server.weight for server in upstream.servers}
    stepped, step = stepped_weights(upstream.slow_start, weights, dict(upstream.added), time.time())
    if step is None:
        return upstream
    return replace(upstream, servers=tuple(replace(server, weight=stepped[server.endpoint])
                                           for server in upstream.servers))


def _drift(desired: tuple[Server, ...], live: tuple[Server, ...] | None) -> str | None:
    """Why ``live`` is not ``desired``, or None when nginx serves what was asked."""
    if live is None:
        return "missing"
    if any(not is_ip_literal(server.host) for server in desired):
        # nginx shows a host name's resolved addresses, so the two sides
        # cannot be compared; the periodic re-assert covers these upstreams.
        return None
    wanted, have = fingerprints(desired), fingerprints(live)
    if wanted == have:
        return None
    missing = sorted(f"{f[0]}:{f[1]}" for f in wanted - have)
    extra = sorted(f"{f[0]}:{f[1]}" for f in have - wanted)
    parts = ["differs"]
    if missing:
        parts.append(f"missing servers {', '.join(missing)}")
    if extra:
        parts.append(f"extra servers {', '.join(extra)}")
    return "; ".join(parts)
