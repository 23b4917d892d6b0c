"""The interface every output implements, and the event the files output announces.

Each output runs on a thread of its own (see :mod:`reloader.runner`), and all
of its methods are called from that thread only, so an output needs no locks
of its own and may block — but only with timeouts, and never for long: a
stop request is honoured between calls. An output owns its retries: when a
write or a POST fails it remembers the upstream and tries again from
``tick``.

The files output is first. Every other output follows it: it is fed
:class:`FileWritten` events, so it never serves a state that the files on
disk (what survives an nginx restart) do not hold yet.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from reloader.model import Upstream


@dataclass(frozen=True)
class FileWritten:
    """``upstream``'s file now holds ``text``; it held ``previous`` before (None: there was no file).

    ``previous == text`` when the file already held the state (at start-up,
    say): nothing was written, but the followers still need the state.
    """

    upstream: Upstream
    previous: str | None
    text: str

    @property
    def changed(self) -> bool:
        return self.previous != self.text

    def after(self, older: "FileWritten") -> "FileWritten":
        """This event folded onto an older one for the same upstream (the oldest previous text stays)."""
        return FileWritten(self.upstream, older.previous, self.text)


class Output(ABC):
    """One destination for published upstreams."""

    #: Short name for logs and threads.
    name: str = "output"

    @abstractmethod
    def publish(self, upstream: Upstream) -> None:
        """Make ``upstream`` the served state of its name."""

    def file_written(self, event: FileWritten) -> None:
        """A follower's input: the file of ``event.upstream`` holds it now (default: publish it)."""
        self.publish(event.upstream)

    def file_written_many(self, events: list[FileWritten]) -> None:
        """A batch of ``file_written`` events; an output that gains from taking them at once overrides it."""
        for event in events:
            self.file_written(event)

    def end_batch(self) -> None:
        """Called after every batch of publishes (default: nothing)."""

    def tick(self, now: float) -> None:
        """Periodic work: retries, reconciliation (default: nothing)."""

    def close(self) -> None:
        """Release resources at shutdown (default: nothing)."""

    def forget(self, name: str) -> None:
        """``name`` is no longer managed (a config reload removed it): stop serving and repairing it.

        Whatever nginx holds for it is left alone, like any upstream the config
        does not manage (default: nothing).
        """

    def stats(self) -> dict[str, int]:
        """Counters for metrics and status: writes, POSTs, failures, retries, repairs (default: none).

        Read from other threads while the output works: return plain ints
        and build a new dict on every call.
        """
        return {}

    def pending_names(self) -> tuple[str, ...]:
        """Upstreams whose newest state this output has not delivered yet (default: none)."""
        return tuple(getattr(self, "pending", ()) or ())
