"""The push engine: keeps an nginx interface (dyups, the Lua module) serving the published upstreams.

One machine for every interface the daemon POSTs to; what differs between
them (the body, the HTTP exchange, how the live table reads) sits in a small
:class:`Adapter`, one file per protocol (:mod:`reloader.outputs.dyups`,
:mod:`reloader.outputs.lua`).

Guarantees of :class:`PushOutput`:

* **pending**: an upstream whose newest state nginx has not confirmed stays
  :attr:`~PushOutput.pending` and is POSTed again from ``tick`` every
  ``retry_interval`` (oldest first) until it is confirmed, replaced or
  forgotten. Nothing here sleeps beyond one exchange's timeouts.
* **probe**: when the interface is unreachable (no connection, no answer in
  time) nothing is POSTed; the live state is read every ``retry_interval``
  instead, and the first answer flushes what is pending and repairs drift at
  once, so healing after an nginx restart takes about ``retry_interval``.
* **reconcile**: every ``reconcile_interval`` the live table is read and
  compared with the desired state; a missing or drifted upstream is
  re-POSTed, one log line each, saying why. An answer byte-equal to that of
  the last clean pass, with the desired state unchanged, is skipped by its
  digest; an adapter may also skip unchanged blocks one by one.
* **quick passes**: an adapter with a cheap read (:meth:`Adapter.quick_digest`:
  dyups' names-only ``GET /list`` plus its connection's history) makes an
  idle pass cost that read alone. The full table is read only when the
  quick digest differs from the one read just before the last clean pass,
  when the desired state moved or anything is owed, after the interface was
  unreachable, and in any case every ``full_every`` passes (a change behind
  the daemon's back that keeps every name and every connection is repaired
  within ``full_every`` x ``reconcile_interval``, or by the re-assert).
* **re-assert**: every ``reassert_interval`` every managed upstream is
  re-POSTed regardless (an interface may answer from one worker only). It
  logs one INFO line; a POST of a state nginx had already taken (a
  re-assert's, a repair's, which the reconcile reports itself) is logged at
  DEBUG, a new state at INFO.
* **refused for good**: a state nginx refuses (an adapter's ``refused``
  answer: 400, 413, a dyups 500) or that breaks the interface's limits before
  it is sent is reported once (an error log line with a short reason, never
  the body; the ``refused`` gauge; status) and is not re-POSTed by the
  retry, repair or re-assert loops. It is tried again when a new state of
  that upstream comes, or after a back-off of ``refused_retry`` doubling up
  to ``refused_retry_max`` (over-limit states, which cannot pass, wait for a
  new state only). Its file still holds the state, so nothing is lost.
* **once-per-upstream warnings**: what an adapter says about a state it can
  only partly serve (host names the Lua balancer cannot use, parameters it
  drops) is logged once per upstream and problem, and counted in ``stats``.
* **slow-start steps**: an adapter whose body changes with time alone
  (dyups' stepped weights, :meth:`Adapter.step`) has the upstream re-POSTed
  from ``tick`` whenever its step moves on, until the ramp is over and the
  full weights went out;
* upstreams the config does not manage are never POSTed; an adapter that
  ``removes_unmanaged`` (the Lua module, which only the daemon may write)
  has them removed by the reconcile, with one log line per pass.

Everything runs on the output's own thread (:mod:`reloader.runner`); the
adapter may use threads of its own for a batch (dyups spreads one over its
kept-alive connections) but hands every outcome back, in order.
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reloader.model import Upstream
from reloader.outputs.base import FileWritten, Output

log = logging.getLogger(__name__)

#: A reconcile pass reads the full live table at least every this many passes (see quick passes).
FULL_EVERY = 6
#: First wait before a refused state is tried again, and the longest one.
REFUSED_RETRY = 30.0
REFUSED_RETRY_MAX = 600.0
# How much of nginx's answer goes into a log line.
_ANSWER_LIMIT = 200

OK = "ok"
RETRY = "retry"
REFUSED = "refused"
UNREACHABLE = "unreachable"


@dataclass
class Outcome:
    """What one POST (with the adapter's own retries) came to.

    ``kind``: :data:`OK` (nginx serves it), :data:`RETRY` (a transient failure:
    try again at the retry interval), :data:`REFUSED` (nginx refused this state
    for good) or :data:`UNREACHABLE` (the interface is down: stop POSTing).
    """

    kind: str
    status: int | None = None
    detail: str = ""
    counters: Counter[str] = field(default_factory=Counter)


class Refusal(Exception):
    """A state the interface cannot take at all (over its limits): never sent."""


class Unreachable(Exception):
    """The live state could not be read because the interface is down."""


class LiveError(Exception):
    """The interface answered, but its live state could not be read or understood."""


class Adapter(ABC):
    """One protocol: how a state is sent, and how the live table reads."""

    #: Output name, for logs, threads and metrics.
    name: str = "push"
    #: Names in the live table compare case-insensitively (nginx's own upstream names do).
    case_insensitive: bool = False
    #: The reconcile removes live upstreams the config does not manage.
    removes_unmanaged: bool = False
    base_url: str = ""

    @abstractmethod
    def body(self, upstream: Upstream) -> bytes:
        """The body that makes nginx serve ``upstream``; raises :class:`Refusal` when none can."""

    @abstractmethod
    def send(self, items: list[tuple[str, bytes]]) -> list[Outcome]:
        """POST each (name, body), in order; may stop early after an :data:`UNREACHABLE` outcome.

        Returns one outcome per item sent, in the order of ``items``.
        """

    @abstractmethod
    def fetch(self) -> tuple[bytes, Any]:
        """The live table, unparsed: (the raw answer's digest, the answer); raises Unreachable or LiveError."""

    @abstractmethod
    def blocks(self, answer: Any) -> dict[str, Any]:
        """The answer of :meth:`fetch` as {name: block} (only when its digest is new); raises LiveError."""

    @abstractmethod
    def drift(self, upstream: Upstream, block: Any) -> str | None:
        """Why the live ``block`` is not ``upstream``, or None when nginx serves what was asked."""

    def block_digest(self, block: Any) -> bytes | None:
        """A digest of one live block, to skip comparing it again (None: always compare)."""
        return None

    def quick_digest(self) -> bytes | None:
        """A cheap digest that changes whenever the live table may have; None: no cheap read here.

        Read before each full :meth:`fetch`; while it stays equal to the one
        read before the last clean pass, an idle pass reads nothing else.
        Anything that can take state away behind the daemon's back, short of
        an edit that keeps every name on an unchanged connection, must move
        it. Raises Unreachable or LiveError, as :meth:`fetch` does.
        """
        return None

    def step(self, upstream: Upstream) -> Any:
        """What of ``upstream``'s body changes with time alone (a slow-start step), or None.

        The engine re-POSTs an upstream whose step changed since its last POST
        (checked on every tick, only for upstreams with a ramp in progress).
        """
        return None

    def remove(self, name: str) -> Outcome:
        """Remove ``name`` from the interface (only for ``removes_unmanaged``)."""
        raise NotImplementedError

    def warnings(self, upstream: Upstream) -> dict[str, str]:
        """{key: message} of what the interface cannot serve of ``upstream`` (logged once each)."""
        return {}

    def close(self) -> None:
        """Release connections and threads."""


@dataclass
class _Refused:
    upstream: Upstream
    retry_at: float
    backoff: float


class PushOutput(Output):
    """Keeps one interface serving the published upstreams (see the module docstring)."""

    def __init__(
        self,
        adapter: Adapter,
        *,
        retry_interval: float = 1.0,
        reconcile_interval: float = 5.0,
        reassert_interval: float = 60.0,
        refused_retry: float = REFUSED_RETRY,
        refused_retry_max: float = REFUSED_RETRY_MAX,
        full_every: int = FULL_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        # Log lines carry the protocol module's name (reloader.outputs.dyups, .lua).
        self._log = logging.getLogger(type(adapter).__module__)
        # The last reason the live state could not be read (said once per streak).
        self._live_error: str | None = None
        self._retry_interval = retry_interval
        self._reconcile_interval = reconcile_interval
        self._reassert_interval = reassert_interval
        self._refused_retry = refused_retry
        self._refused_retry_max = refused_retry_max
        self._clock = clock
        #: What each managed upstream should be.
        self.desired: dict[str, Upstream] = {}
        # Not yet confirmed by nginx (a dict for insertion order: oldest first on retry).
        self._pending: dict[str, None] = {}
        self._refused: dict[str, _Refused] = {}
        self._reachable = True
        self.counters: Counter[str] = Counter()
        # Warnings already given, per upstream: {name: {key}} (each logged once),
        # and what the current state of each upstream has (for stats).
        self._warned: dict[str, set[str]] = {}
        self._problems: dict[str, frozenset[str]] = {}
        # Per upstream, the digest of its live block at the last pass that found
        # it clean and the desired state it was compared with.
        self._clean: dict[str, tuple[bytes, Upstream]] = {}
        # The whole answer of the last clean pass, and the desired state's generation then.
        self._generation = 0
        self._clean_answer: tuple[bytes, int] | None = None
        # Quick passes: the quick digest read just before the last clean full
        # pass, and how many passes were skipped on it since.
        self._full_every = max(1, full_every)
        self._quick_clean: bytes | None = None
        self._quick_skipped = 0
        # Slow start: the step each ramping upstream was last POSTed at (see Adapter.step).
        self._steps: dict[str, Any] = {}
        # Per upstream, the state (and slow-start step) nginx last took: a POST
        # of that same state again (a re-assert, a repair) is logged at DEBUG, so
        # a periodic re-assert of 1,000 upstreams adds one INFO line, not 1,000.
        self._taken: dict[str, tuple[Upstream, Any]] = {}
        now = clock()
        self._next_retry = now + retry_interval
        self._next_reconcile = now + reconcile_interval
        self._next_reassert = now + reassert_interval

    @property
    def base_url(self) -> str:
        return self.adapter.base_url

    # ---- Output ----------------------------------------------------------------

    def publish(self, upstream: Upstream) -> None:
        self._want(upstream)
        if self._reachable and upstream.name in self._pending:
            self._push([upstream.name])

    def file_written(self, event: FileWritten) -> None:
        self.publish(event.upstream)

    def file_written_many(self, events: list[FileWritten]) -> None:
        """A batch of files written: POST them together (the adapter may spread them over connections)."""
        for event in events:
            self._want(event.upstream)
        names = [event.upstream.name for event in events if event.upstream.name in self._pending]
        if self._reachable and names:
            self._push(names)

    def _want(self, upstream: Upstream) -> None:
        name = upstream.name
        if self.desired.get(name) != upstream:
            # An equal state keeps its object: the reconcile's clean cache is keyed by it.
            self._generation += 1
            self.desired[name] = upstream
        self._warn(upstream)
        refused = self._refused.get(name)
        if refused is not None:
            if refused.upstream == upstream:
                return  # the same state again: it waits for its back-off
            del self._refused[name]
        self._pending[name] = None

    def tick(self, now: float) -> None:
        if not self._reachable:
            # Probe on our own schedule: an nginx restart is healed within about
            # retry_interval of the interface coming back, whatever reassert_interval is.
            if now >= self._next_retry:
                self._next_retry = now + self._retry_interval
                self._next_reconcile = now + self._reconcile_interval
                self.reconcile()
            return
        due = [name for name, refused in self._refused.items() if refused.retry_at <= now]
        for name in due:
            # Its back-off is over: one more try, then the pending schedule (a
            # transient failure) or a longer back-off (refused again) decides.
            self._refused[name].retry_at = float("inf")
            self._pending[name] = None
        self._step_ramps()
        if self._pending and (due or now >= self._next_retry):
            self._next_retry = now + self._retry_interval
            self._push(list(self._pending))
        if self._reassert_interval and now >= self._next_reassert:
            self._next_reassert = now + self._reassert_interval
            self._next_reconcile = now + self._reconcile_interval  # a re-assert is a repair of everything
            self.reassert("periodic")
        elif self._reconcile_interval and now >= self._next_reconcile and self._reachable:
            self._next_reconcile = now + self._reconcile_interval
            self.reconcile()

    def _step_ramps(self) -> None:
        """POST the upstreams whose slow-start step moved on since their last POST."""
        if not self._steps:
            return
        moved = []
        for name, sent in list(self._steps.items()):
            upstream = self.desired.get(name)
            if upstream is None:
                del self._steps[name]
                continue
            step = self.adapter.step(upstream)
            if step is None and sent is None:
                del self._steps[name]  # its ramp is over, and the full weights went out
            elif step != sent and name not in self._pending and name not in self._refused:
                moved.append(name)
        if moved:
            for name in moved:
                self._pending[name] = None
            self._push(moved)

    def reassert(self, why: str) -> None:
        """Re-POST every managed upstream now, drift or not (refused states wait for their back-off)."""
        self._next_reassert = self._clock() + self._reassert_interval
        names = [name for name in self.desired if name not in self._refused]
        if not names:
            return
        self._log.info("%s: re-asserting %d upstreams (%s)", self.name, len(names), why)
        self.counters["reasserts"] += 1
        for name in names:
            self._pending[name] = None
        if self._reachable:
            self._push(list(self._pending))

    def reconcile(self) -> dict[str, str]:
        """Compare live and desired state, re-POST what drifted; returns {name: reason} repaired."""
        try:
            quick = self._quick_digest()
            if (quick is not None and quick == self._quick_clean and not self._pending
                    and self._clean_answer is not None and self._clean_answer[1] == self._generation
                    and self._quick_skipped < self._full_every - 1):
                # Nothing moved on either side since the last clean pass, as far as the cheap read tells.
                self._quick_skipped += 1
                self._live_error = None
                return {}
            digest, answer = self.adapter.fetch()
            self._mark_reachable()
            if self._clean_answer == (digest, self._generation) and not self._pending:
                self._live_error = None
                self._clean_pass(quick)
                return {}
            blocks = self.adapter.blocks(answer)
            del answer
        except Unreachable as error:
            self._mark_unreachable(str(error))
            return {}
        except LiveError as error:
            reason = _short(str(error))
            if reason != self._live_error:
                self._live_error = reason
                self._log.warning("%s: cannot read the live state: %s", self.name, reason)
            return {}
        if self._live_error is not None:
            self._live_error = None
            self._log.info("%s: the live state reads again", self.name)
        by_lower: dict[str, str] | None = None
        repairs: dict[str, str] = {}
        clean: dict[str, tuple[bytes, Upstream]] = {}
        for name, upstream in self.desired.items():
            if name in self._pending or name in self._refused:
                continue  # on its way, or known refused: its back-off decides
            block = blocks.get(name)
            if block is None and self.adapter.case_insensitive:
                if by_lower is None:
                    by_lower = {live.lower(): live for live in blocks}
                live_name = by_lower.get(name.lower())
                block = blocks[live_name] if live_name is not None else None
            if block is None:
                repairs[name] = "missing"
                continue
            block_digest = self.adapter.block_digest(block)
            known = self._clean.get(name)
            if block_digest is not None and known is not None and known[0] == block_digest and known[1] is upstream:
                clean[name] = known  # the same text against the same desired state: still clean
                continue
            reason = self.adapter.drift(upstream, block)
            if reason:
                repairs[name] = reason
            elif block_digest is not None:
                clean[name] = (block_digest, upstream)
        self._clean = clean
        removed = self._remove_unmanaged(blocks) if self.adapter.removes_unmanaged else False
        del blocks
        for name, reason in repairs.items():
            self._log.warning("%s: upstream %s drifted (%s); re-POSTing", self.name, name, reason)
            self.counters["repairs"] += 1
            self._pending[name] = None
        # The answer was read before this pass POSTed anything: it only stands
        # for a clean state when nothing was owed (else the same bytes put back
        # behind our back later would be skipped as clean).
        owed = bool(self._pending)
        if self._pending and self._reachable:
            self._push(list(self._pending))
        if not repairs and not removed and not owed:
            self._clean_answer = (digest, self._generation)
            self._clean_pass(quick)
        else:
            self._clean_answer = None
            self._quick_clean = None
        return repairs

    def _quick_digest(self) -> bytes | None:
        """The adapter's quick digest (None when it has none, or its read failed: read everything)."""
        if self._full_every <= 1:
            return None
        try:
            quick = self.adapter.quick_digest()
        except LiveError:
            return None  # the full read says what is wrong
        if quick is not None:
            self._mark_reachable()
        return quick

    def _clean_pass(self, quick: bytes | None) -> None:
        """A full pass found everything clean: quick passes may skip on ``quick`` from now on."""
        self._quick_clean = quick
        self._quick_skipped = 0

    def _remove_unmanaged(self, blocks: dict[str, Any]) -> bool:
        unmanaged = sorted(name for name in blocks if name not in self.desired)
        if not unmanaged:
            return False
        removed = []
        for name in unmanaged:
            outcome = self.adapter.remove(name)
            self.counters.update(outcome.counters)
            if outcome.kind == UNREACHABLE:
                self._mark_unreachable(outcome.detail)
                break
            if outcome.kind == OK:
                removed.append(name)
        if removed:
            self.counters["removed"] += len(removed)
            self._log.warning("%s: removed %d upstreams the config does not manage: %s",
                        self.name, len(removed), _short(", ".join(removed)))
        return True

    def close(self) -> None:
        self.adapter.close()

    def forget(self, name: str) -> None:
        self.desired.pop(name, None)
        self._pending.pop(name, None)
        self._clean.pop(name, None)
        self._taken.pop(name, None)
        self._refused.pop(name, None)
        self._warned.pop(name, None)
        self._problems.pop(name, None)
        self._steps.pop(name, None)
        self._generation += 1

    def stats(self) -> dict[str, int]:
        # Every known key from the start, so that each series exists before its first event.
        stats = dict.fromkeys(("ok", "conflict", "dropped", "timeout", "failed", "unreachable",
                               "repairs", "reasserts"), 0)
        stats.update({key: int(value) for key, value in list(self.counters.items())})
        stats["refused"] = len(self._refused)
        # Upstreams whose current state the interface can only partly serve, by problem.
        for keys in list(self._problems.values()):
            for key in keys:
                stat = "warned_" + key.replace(":", "_")
                stats[stat] = stats.get(stat, 0) + 1
        stats["reachable"] = int(self._reachable)
        return stats

    @property
    def pending(self) -> tuple[str, ...]:
        """Upstreams not yet confirmed by nginx."""
        return tuple(self._pending)

    @property
    def refused(self) -> tuple[str, ...]:
        """Upstreams whose newest state nginx refused (or that cannot be sent at all)."""
        return tuple(self._refused)

    # ---- POSTs ---------------------------------------------------------------------

    def _push(self, names: list[str]) -> None:
        """POST the desired state of each of ``names`` (in order); stops if the interface goes away."""
        items: list[tuple[str, bytes]] = []
        for name in names:
            upstream = self.desired.get(name)
            if upstream is None:
                self._pending.pop(name, None)
                continue
            try:
                if upstream.added:
                    self._steps[name] = self.adapter.step(upstream)
                items.append((name, self.adapter.body(upstream)))
            except Refusal as error:
                self._pending.pop(name, None)
                self._refuse(name, upstream, str(error), forever=True)
        if not items:
            return
        outcomes = self.adapter.send(items)
        gone: str | None = None
        for (name, _), outcome in zip(items, outcomes):
            self.counters.update(outcome.counters)
            if outcome.kind == UNREACHABLE:
                # Noted after the loop, so that what other connections got is all counted first.
                gone = gone or outcome.detail
                continue
            self._mark_reachable()
            self._apply(name, outcome)
        if gone is not None:
            self._mark_unreachable(gone)

    def _apply(self, name: str, outcome: Outcome) -> None:
        upstream = self.desired.get(name)
        if outcome.kind == OK:
            self.counters["ok"] += 1
            self._pending.pop(name, None)
            if self._refused.pop(name, None) is not None:
                self._log.warning("%s: nginx took upstream %s after refusing it", self.name, name)
            if upstream is None:
                return
            state = (upstream, self._steps.get(name))
            again = self._taken.get(name) == state
            self._taken[name] = state
            self._log.log(logging.DEBUG if again else logging.INFO, "%s: POST %s: %d servers%s",
                          self.name, name, len(upstream.servers), " (unchanged)" if again else "")
        elif outcome.kind == REFUSED:
            self._pending.pop(name, None)
            if upstream is not None:
                self._refuse(name, upstream, _status_text(outcome))
        else:
            self._next_retry = self._clock() + self._retry_interval
            self._log.warning("%s: POST %s failed (%s); retrying in %g s",
                        self.name, name, _status_text(outcome), self._retry_interval)

    def _refuse(self, name: str, upstream: Upstream, reason: str, forever: bool = False) -> None:
        """Record that ``upstream`` is refused for good; reported once per state, retried on back-off."""
        now = self._clock()
        known = self._refused.get(name)
        if known is not None and known.upstream == upstream:
            # Refused again after its back-off: wait longer, and say nothing new.
            known.backoff = min(known.backoff * 2, self._refused_retry_max)
            known.retry_at = now + known.backoff
            self._log.debug("%s: upstream %s refused again (%s); next try in %g s",
                            self.name, name, reason, known.backoff)
            return
        backoff = self._refused_retry
        self._refused[name] = _Refused(upstream, float("inf") if forever else now + backoff, backoff)
        self._generation += 1
        self.counters["refusals"] += 1
        then = "until it changes" if forever else f"until it changes, or tried again in {backoff:g} s"
        self._log.error("%s: nginx refused upstream %s (%s); its file holds the state; not re-POSTed %s",
                  self.name, name, _short(reason), then)

    def _warn(self, upstream: Upstream) -> None:
        warnings = self.adapter.warnings(upstream)
        if not warnings:
            self._problems.pop(upstream.name, None)
            return
        self._problems[upstream.name] = frozenset(warnings)
        given = self._warned.setdefault(upstream.name, set())
        for key, message in warnings.items():
            if key not in given:
                given.add(key)
                self._log.warning("%s: upstream %s: %s", self.name, upstream.name, message)

    def _mark_unreachable(self, detail: str) -> None:
        self._next_retry = self._clock() + self._retry_interval
        self._clean_answer = None
        self._quick_clean = None
        if self._reachable:
            self._reachable = False
            self._log.warning(
                "%s: interface %s unreachable (%s); files keep being written, "
                "the current state is POSTed when it answers again",
                self.name, self.adapter.base_url, _short(detail),
            )

    def _mark_reachable(self) -> None:
        if not self._reachable:
            self._reachable = True
            self._log.warning("%s: interface %s answers again; catching up %d upstreams",
                        self.name, self.adapter.base_url, len(self._pending))


def digest_of(data: bytes) -> bytes:
    """The digest the engine compares whole answers and blocks by."""
    return hashlib.blake2b(data, digest_size=16).digest()


def _status_text(outcome: Outcome) -> str:
    if outcome.status is None:
        return outcome.detail or "no answer"
    return f"{outcome.status}: {outcome.detail}" if outcome.detail else str(outcome.status)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ANSWER_LIMIT else text[:_ANSWER_LIMIT] + "..."
