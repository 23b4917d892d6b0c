"""The interface every output implements.

The pipeline calls an output only from the worker thread, and only with an
upstream that passed the guards. An output owns its own retries: when a write
or a POST fails it remembers the upstream and tries again from ``tick``, so a
failure never blocks the pipeline or other outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from reloader.model import Upstream


class Output(ABC):
    """One destination for published upstreams."""

    #: Short name for logs.
    name: str = "output"

    @abstractmethod
    def publish(self, upstream: Upstream) -> None:
        """Make ``upstream`` the served state of its name."""

    def seed(self, upstream: Upstream) -> None:
        """Adopt ``upstream``, read back at start-up, as already published (default: nothing)."""

    def end_batch(self) -> None:
        """Called after every batch of publishes (default: nothing)."""

    def tick(self, now: float) -> None:
        """Periodic work on the worker thread: retries, reconciliation (default: nothing)."""

    def close(self) -> None:
        """Release resources at shutdown (default: nothing)."""
