"""The one interface every registry format implements.

A format turns one ZooKeeper child (its name and its raw data) into either a
:class:`~reloader.model.Server` or a :class:`Skip` that says why the child is
not served. Formats never raise on bad input: a hostile or broken child is a
``Skip`` with a reason, and the pipeline logs it naming the znode and child.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Union

from reloader.model import Server


@dataclass(frozen=True)
class Skip:
    """A child that is not served, and why.

    ``quiet`` marks children that are expected and harmless to ignore (for
    example a ServerSet child whose name does not start with ``member_``), so
    the pipeline does not warn about them.
    """

    reason: str
    quiet: bool = False


@dataclass(frozen=True)
class FormatOptions:
    """Per-znode settings that some formats read (see the config reference)."""

    protocol: str = "dubbo"
    endpoint: str | None = None
    port_field: str | None = None


ParseResult = Union[Server, Skip]


class InstanceFormat(ABC):
    """A registry format: detection for ``format: auto`` and parsing."""

    #: The value of the per-znode ``format:`` setting that forces this format.
    name: ClassVar[str]
    #: The systems that register instances this way, for docs and logs.
    written_by: ClassVar[str]
    #: Whether the child's *name* holds the instance (its data adds a weight
    #: at most), so that a znode set to ``child_data: ignore`` can use it.
    from_name: ClassVar[bool] = False

    @abstractmethod
    def detect(self, child: str, data: bytes) -> bool:
        """True when this child looks like this format (used by ``auto``)."""

    @abstractmethod
    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        """Return the server this child describes, or a Skip. Never raises."""
