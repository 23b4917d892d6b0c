"""Read a config file's YAML with bounded time and memory, whatever the file holds.

Guarantees of :func:`load_yaml`:

* the file is refused above :data:`MAX_FILE_BYTES`, checked before it is
  read (and the read itself never takes more than that, even from a pipe or
  a device that reports size 0);
* YAML aliases work, but the document may expand to at most
  :data:`MAX_NODES` values, counted while it is composed: an alias bomb
  ("billion laughs") is refused at the alias that crosses the line, before
  anything is expanded; a recursive alias is refused too;
* nesting deeper than :data:`MAX_DEPTH` is refused (instead of a RecursionError);
* a duplicate key, or a key that is a list or a mapping, is refused with its
  line and column;
* every failure is a :class:`YamlProblem` with a message for the operator;
  nothing else escapes (a bad ``!!float``, an impossible date and an
  integer too long to convert included);
* :class:`YamlSource` keeps what the user wrote for every plain scalar that
  YAML 1.1 did not read as a string (``yes``, ``on``, ``no``, ``123``, ``~``),
  by key path, so that messages can show it and suggest quotes.

Only the safe YAML tags are constructed (``yaml.SafeLoader``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: The largest config file read.
MAX_FILE_BYTES = 10 * 1024 * 1024
#: The most values (scalars, lists and mappings, aliases expanded) a config may hold.
MAX_NODES = 200_000
#: The deepest nesting of lists and mappings a config may have.
MAX_DEPTH = 64

_STR_TAG = "tag:yaml.org,2002:str"


class YamlProblem(Exception):
    """The file cannot be read as a config; ``str()`` is the message, ``key_path`` where, if known."""

    def __init__(self, message: str, key_path: str = "") -> None:
        self.key_path = key_path
        super().__init__(message)


@dataclass
class YamlSource:
    """The text a user wrote for plain scalars YAML did not read as strings, by key path.

    ``keys`` holds mapping keys (by the key path of their entry), ``values``
    holds values. Key paths are built with the ``join`` and ``at`` functions
    the validator uses, so they match its messages.
    """

    keys: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that counts what it composes and refuses duplicate and non-scalar keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded = 0
        self._depth = 0
        # Expanded size of every node composed so far, by id; a node still
        # being composed has none, which is how a recursive alias shows.
        self._sizes: dict[int, int] = {}
        self._path: list[str] = []

    def _count(self, size: int, mark: Any) -> None:
        self._expanded += size
        if self._expanded > MAX_NODES:
            raise YamlProblem(
                f"{_where(mark)}: the config expands to more than {MAX_NODES} values (aliases repeat what "
                "their anchor holds); refused without expanding it",
                "".join(self._path).lstrip("."),
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise YamlProblem(f"{_where(event.start_mark)}: alias *{event.anchor} refers to a value that "
                                      "contains it (a recursive alias)")
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlProblem(f"{_where(self.peek_event().start_mark)}: nested more than {MAX_DEPTH} levels deep")
        self._path.append(f"[{index}]" if isinstance(index, int) else
                          f".{index.value[:40]}" if isinstance(index, ScalarNode) else "")
        before = self._expanded
        node = super().compose_node(parent, index)
        self._path.pop()
        self._depth -= 1
        if node is not None:
            self._count(1, node.start_mark)
            self._sizes[id(node)] = self._expanded - before
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as error:
            # A safe tag with an impossible value: !!float abc, 2020-13-45,
            # an integer of thousands of digits.
            raise YamlProblem(f"{_where(node.start_mark)}: invalid value {node.value[:60]!r}: {str(error)[:200]}"
                              if isinstance(node, ScalarNode) else
                              f"{_where(node.start_mark)}: invalid value: {str(error)[:200]}") from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Merge keys (<<) first, so that a merged key repeated by hand counts as a duplicate.
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                kind = "a list" if isinstance(key_node, SequenceNode) else "a mapping"
                raise YamlProblem(f"{_where(key_node.start_mark)}: a key is {kind}; keys must be strings")
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise YamlProblem(f"{_where(key_node.start_mark)}: invalid YAML: duplicate key {key_node.value[:60]!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_bounded(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise YamlProblem(f"is {size} bytes; a config may be at most {MAX_FILE_BYTES // (1024 * 1024)} MB")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise YamlProblem(f"cannot read: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlProblem(f"is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB, the most a config may be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise YamlProblem(f"is not UTF-8: {error}") from None


def _record(
    loader: _BoundedLoader, node: Node, path: str, source: YamlSource,
    join: Callable[[str, object], str], at: Callable[[str, int], str],
) -> None:
    """Fill ``source`` for the (expanded, hence bounded) tree under ``node``."""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if key_node.tag == _STR_TAG else loader.construct_object(key_node)
            child = join(path, key)
            if key_node.tag != _STR_TAG and key_node.style is None:
                source.keys[child] = key_node.value[:60]
            _record(loader, value_node, child, source, join, at)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _record(loader, item, at(path, index), source, join, at)
    elif isinstance(node, ScalarNode) and node.tag != _STR_TAG and node.style is None:
        source.values[path] = node.value[:60]


def load_yaml(
    path: Path, join: Callable[[str, object], str], at: Callable[[str, int], str]
) -> tuple[Any, YamlSource]:
    """The data of the config file at ``path`` and the source text of its non-string scalars."""
    text = _read_bounded(path)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, YamlSource()
        data = loader.construct_document(node)
        source = YamlSource()
        _record(loader, node, "", source, join, at)
        return data, source
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise YamlProblem(f"{_where(mark) + ': ' if mark else ''}invalid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise YamlProblem(f"invalid YAML: {str(error)[:200]}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        # A scalar with a safe tag and an impossible value: !!float abc,
        # 2020-13-45, an integer of thousands of digits.
        raise YamlProblem(f"invalid YAML value: {str(error)[:200]}") from None
    finally:
        loader.dispose()

