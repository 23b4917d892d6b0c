"""The dyups output: POST each upstream to nginx's dyups interface, so nginx switches without a reload.

What real dyups builds do, and what this client does about it (see the
project's dyups protocol notes):

* An empty body answers 500, and a POST without Content-Length answers 204
  followed by stray bytes that corrupt a keep-alive connection: bodies are
  never empty, and always sent with Content-Length.
* ``dyups_trylock`` makes concurrent updates answer 409, and a contended
  DELETE drops the connection without a byte: both are retried here with
  exponential backoff and jitter.
* A 500 on a body that passed validation means nginx is in a bad state: it is
  logged with the body that was sent, and left to the file and the next
  re-POST.
* A refused connection or a request that gets no answer in time means the
  interface is down: the upstream stays pending, and the interface is probed
  every ``retry_interval`` (a read of the live state); as soon as it answers,
  the pending states go out and drift is repaired. This output runs on its
  own thread and follows the files output, so a dyups that hangs delays
  nothing but itself, and it never serves a state the files do not hold.
* A batch of files written is POSTed over ``CONNECTIONS`` kept-alive
  connections at once (one small lane thread each, which only speaks HTTP);
  every answer is counted and acted on from this output's thread, in the
  batch's order, so the retry and reachability rules above hold per POST.

Real builds also lose POSTed state behind the daemon's back: ``nginx -s
reload`` and restarts wipe it, and a crashed worker comes back with the files
only. So every ``reconcile_interval`` the live state is read and compared
with the desired state (drifted upstreams are re-POSTed, each repair logged
with its reason), and every ``reassert_interval`` every managed upstream is
re-POSTed regardless, because ``/detail`` answers from one worker and cannot
show workers that disagree. Upstreams the config does not manage are never
touched, and the desired state of a frozen upstream is its last good state,
because the pipeline publishes nothing newer while its cluster is frozen.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from reloader.addresses import is_ip_literal
from reloader.model import Server, Upstream
from reloader.outputs.base import FileWritten, Output
from reloader.outputs.dyups_state import (
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
from reloader.render import render_dyups_body

log = logging.getLogger(__name__)

# Kept-alive connections a batch of POSTs is spread over: with two, nginx
# handles one POST while the next is being prepared, and one slow answer
# does not hold up the whole batch.
CONNECTIONS = 2


@dataclass
class _Outcome:
    """What the attempts at one POST came to (computed on a lane, applied on the output's thread)."""

    status: int | None = None
    answer: bytes = b""
    # The interface answered at least once (so it is reachable).
    answered: bool = False
    # Every attempt failed (409s, dropped connections): try again later.
    gave_up: bool = False
    # InterfaceDown or NoAnswer: the interface is unreachable, stop POSTing.
    unreachable: Exception | None = None
    counters: Counter[str] = field(default_factory=Counter)


class _Lane:
    """A daemon thread with a kept-alive connection of its own, POSTing the shards it is handed."""

    def __init__(self, output: DyupsOutput, http: KeepAliveClient, index: int) -> None:
        self.http = http
        self._output = output
        self._jobs: queue.SimpleQueue[tuple[list[tuple[str, bytes]], queue.SimpleQueue[list[_Outcome]]]] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name=f"dyups-lane-{index}", daemon=True)
        self._thread.start()

    def post(self, items: list[tuple[str, bytes]]) -> queue.SimpleQueue[list[_Outcome]]:
        answer: queue.SimpleQueue[list[_Outcome]] = queue.SimpleQueue()
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
            answer.put(self._output.post_shard(self.http, items))


class DyupsOutput(Output):
    """Keeps the dyups interface at ``base_url`` serving the published upstreams."""

    name = "dyups"

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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._connections = max(1, connections)
        # Lanes beyond the output's own connection, started with the first batch.
        self._lanes: list[_Lane] = []
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._retry_interval = retry_interval
        self._http = KeepAliveClient(self.base_url, connect_timeout, read_timeout)
        self._clock = clock
        self._sleep = sleep
        self._random = random.Random()
        # What each managed upstream should be, and which ones nginx has not
        # confirmed yet (dict for insertion order: oldest first on retry).
        self.desired: dict[str, Upstream] = {}
        self._pending: dict[str, None] = {}
        self._reachable = True
        self._next_retry = 0.0
        self.counters: Counter[str] = Counter()
        self._reader = LiveStateReader(self._http)
        self._reconcile_interval = reconcile_interval
        self._reassert_interval = reassert_interval
        # Per managed upstream, the digest of its live block at the last pass
        # that found it clean, and the desired state it was compared with: a
        # block whose text and desired state are both unchanged is not parsed
        # again. Only a digest is kept, never the live text.
        self._clean: dict[str, tuple[bytes, Upstream]] = {}
        now = clock()
        self._next_reconcile = now + reconcile_interval
        self._next_reassert = now + reassert_interval

    # ---- Output ----------------------------------------------------------------

    def publish(self, upstream: Upstream) -> None:
        self.desired[upstream.name] = upstream
        self._pending[upstream.name] = None
        if self._reachable:
            self._push(upstream.name)

    def file_written_many(self, events: list[FileWritten]) -> None:
        """A batch of files written: POST them all, spread over the connections."""
        for event in events:
            self.desired[event.upstream.name] = event.upstream
            self._pending[event.upstream.name] = None
        if self._reachable:
            self._push_many([event.upstream.name for event in events])

    def tick(self, now: float) -> None:
        if not self._reachable:
            # Probe on our own schedule: an nginx restart is healed within about
            # retry_interval of the interface coming back, whatever reassert_interval is.
            if now >= self._next_retry:
                self._next_retry = now + self._retry_interval
                self._next_reconcile = now + self._reconcile_interval
                self.reconcile()
            return
        if self._pending and now >= self._next_retry:
            self._push_pending()
        if self._reassert_interval and now >= self._next_reassert:
            self._next_reassert = now + self._reassert_interval
            self._next_reconcile = now + self._reconcile_interval  # a re-assert is a repair of everything
            self.reassert("periodic")
        elif self._reconcile_interval and now >= self._next_reconcile and self._reachable:
            self._next_reconcile = now + self._reconcile_interval
            self.reconcile()

    def _push_pending(self) -> None:
        self._push_many(list(self._pending))

    def reassert(self, why: str) -> None:
        """Re-POST every managed upstream now, drift or not."""
        if not self.desired:
            return
        log.info("dyups: re-asserting %d upstreams (%s)", len(self.desired), why)
        self.counters["reasserts"] += 1
        for name in self.desired:
            self._pending[name] = None
        self._push_pending()

    def reconcile(self) -> dict[str, str]:
        """Compare live and desired state, re-POST what drifted; returns {name: reason} repaired."""
        try:
            api, text = self._reader.fetch()
        except InterfaceDown as error:
            self._reader.forget_api()
            self._mark_unreachable(error)
            return {}
        except NoAnswer as error:
            self._reader.forget_api()
            self._mark_unreachable(error)
            return {}
        except (TransportError, LiveStateError) as error:
            self._reader.forget_api()
            log.warning("dyups: cannot read the live state: %s", error)
            return {}
        self._mark_reachable()
        blocks = split_blocks(api, text)
        del text  # only the managed upstreams' blocks matter from here on
        by_lower: dict[str, str] | None = None
        repairs: dict[str, str] = {}
        clean: dict[str, tuple[bytes, Upstream]] = {}
        for name, upstream in self.desired.items():
            if name in self._pending:
                continue  # already on its way
            block = blocks.get(name)
            if block is None:
                if by_lower is None:
                    by_lower = {live.lower(): live for live in blocks}
                live_name = by_lower.get(name.lower())
                block = blocks[live_name] if live_name is not None else None
            if block is None:
                repairs[name] = "missing"
                continue
            digest = hashlib.blake2b(f"{api}\n{block}".encode(), digest_size=16).digest()
            known = self._clean.get(name)
            if known is not None and known[0] == digest and known[1] is upstream:
                clean[name] = known  # the same text against the same desired state: still clean
                continue
            reason = _drift(upstream.servers, parse_block(api, block))
            if reason:
                repairs[name] = reason
            else:
                clean[name] = (digest, upstream)
        self._clean = clean
        for name, reason in repairs.items():
            log.warning("dyups: upstream %s drifted (%s); re-POSTing", name, reason)
            self.counters["repairs"] += 1
            self._pending[name] = None
        if self._pending:
            self._push_pending()
        return repairs

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
        self._lanes = []
        self._http.close()

    def forget(self, name: str) -> None:
        self.desired.pop(name, None)
        self._pending.pop(name, None)
        self._clean.pop(name, None)

    def stats(self) -> dict[str, int]:
        # Every known key from the start, so that each series exists before its first event.
        stats = dict.fromkeys(("ok", "conflict", "dropped", "timeout", "repairs", "reasserts"), 0)
        stats.update({key: int(value) for key, value in list(self.counters.items())})
        stats["reachable"] = int(self._reachable)
        return stats

    @property
    def pending(self) -> tuple[str, ...]:
        """Upstreams not yet confirmed by nginx."""
        return tuple(self._pending)

    # ---- the POST ----------------------------------------------------------------

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/upstream/{name}"

    @staticmethod
    def _path_for(name: str) -> str:
        return f"/upstream/{name}"

    def _body(self, name: str) -> bytes | None:
        """The body to POST for ``name``, or None (nothing to POST: it is dropped from the pending set)."""
        upstream = self.desired.get(name)
        if upstream is None:
            self._pending.pop(name, None)
            return None
        if not upstream.servers:
            # dyups answers 500 to an empty body; the guards should make this impossible.
            log.error("dyups: refusing to POST an empty body for %s", name)
            self._pending.pop(name, None)
            return None
        return render_dyups_body(upstream).encode("ascii")

    def _push(self, name: str) -> bool:
        """POST ``name``'s desired state; False when the interface is unreachable."""
        body = self._body(name)
        return True if body is None else self._push_one(name, body)

    def _push_many(self, names: list[str]) -> None:
        """POST each of ``names`` (oldest first), spread over the connections; stops if the interface goes away.

        The lanes only talk HTTP; every outcome is applied here, on the
        output's thread, in the order of ``names``.
        """
        items = [(name, body) for name in names if (body := self._body(name)) is not None]
        lanes = min(self._connections, len(items))
        if lanes <= 1:
            for name, body in items:
                if not self._push_one(name, body):
                    return
            return
        while len(self._lanes) < self._connections - 1:
            http = KeepAliveClient(self.base_url, self._connect_timeout, self._read_timeout)
            self._lanes.append(_Lane(self, http, len(self._lanes) + 1))
        shards = [items[i::lanes] for i in range(lanes)]
        answers = [lane.post(shard) for lane, shard in zip(self._lanes, shards[1:])]
        results = [self.post_shard(self._http, shards[0])] + [answer.get() for answer in answers]
        # Back in the order the names came in (round-robin shards). An
        # unreachable interface is noted last, so that the answers other
        # lanes did get are all counted first.
        gone: Exception | None = None
        for i, (name, body) in enumerate(items):
            shard = results[i % lanes]
            if i // lanes >= len(shard):
                continue  # its lane stopped early: the interface went away; it stays pending
            outcome = shard[i // lanes]
            if outcome.unreachable is not None:
                gone = gone or outcome.unreachable
                self.counters.update(outcome.counters)
                continue
            self._apply(name, body, outcome)
        if gone is not None:
            self._mark_unreachable(gone)

    def _push_one(self, name: str, body: bytes) -> bool:
        return self._apply(name, body, self._attempt(self._http, name, body))

    def post_shard(self, http: KeepAliveClient, items: list[tuple[str, bytes]]) -> list[_Outcome]:
        """POST each item in turn over ``http`` (any thread: touches no state); stops once unreachable."""
        outcomes = []
        for name, body in items:
            outcome = self._attempt(http, name, body)
            outcomes.append(outcome)
            if outcome.unreachable is not None:
                break
        return outcomes

    def _attempt(self, http: KeepAliveClient, name: str, body: bytes) -> _Outcome:
        """Up to max_attempts POSTs of ``body``, retrying 409s and dropped connections (any thread)."""
        outcome = _Outcome()
        for attempt in range(self._max_attempts):
            if attempt:
                self._sleep(self._backoff * (2 ** (attempt - 1)) * (0.5 + self._random.random()))
            try:
                response = http.request("POST", self._path_for(name), body)
            except (InterfaceDown, NoAnswer) as error:
                # No connection, or no answer in time: the interface is down,
                # hung or overloaded. Retrying at once would only stack waits;
                # probe it on the retry schedule instead.
                if isinstance(error, NoAnswer):
                    outcome.counters["timeout"] += 1
                outcome.unreachable = error
                return outcome
            except Dropped:
                outcome.counters["dropped"] += 1
                log.info("dyups: connection dropped on POST %s (attempt %d); retrying", name, attempt + 1)
                continue
            outcome.status, outcome.answer, outcome.answered = response.status, response.body, True
            if response.status == 409:
                outcome.counters["conflict"] += 1
                continue
            return outcome
        outcome.gave_up = True
        return outcome

    def _apply(self, name: str, body: bytes, outcome: _Outcome) -> bool:
        """Record one POST's outcome; False when the interface is unreachable."""
        self.counters.update(outcome.counters)
        if outcome.unreachable is not None:
            self._mark_unreachable(outcome.unreachable)
            return False
        if outcome.answered:
            self._mark_reachable()
        if outcome.gave_up:
            log.warning("dyups: POST %s still failing after %d attempts; will retry", name, self._max_attempts)
            self._next_retry = self._clock() + self._retry_interval
            return True
        if outcome.status == 200:
            self.counters["ok"] += 1
            self._pending.pop(name, None)
            upstream = self.desired.get(name)
            log.info("dyups: POST %s: %d servers", name, len(upstream.servers) if upstream else 0)
            return True
        self.counters[f"http_{outcome.status}"] += 1
        log.error(
            "dyups: POST %s answered %d %r; body sent: %s",
            self.url_for(name), outcome.status, outcome.answer[:200], body.decode(),
        )
        # nginx refused a body that passed validation: it is in a bad state.
        # The file holds the truth; the next re-POST tries again.
        self._pending.pop(name, None)
        return True

    def _mark_unreachable(self, error: Exception) -> None:
        self._next_retry = self._clock() + self._retry_interval
        if self._reachable:
            self._reachable = False
            log.warning(
                "dyups: interface %s unreachable (%s); files keep being written, "
                "the current state is POSTed when it answers again",
                self.base_url, _root_cause(error),
            )

    def _mark_reachable(self) -> None:
        if not self._reachable:
            self._reachable = True
            log.warning("dyups: interface %s answers again; catching up %d upstreams", self.base_url, len(self._pending))


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


def _root_cause(error: BaseException) -> str:
    text = str(error)
    return text if len(text) < 200 else text[:200] + "..."
