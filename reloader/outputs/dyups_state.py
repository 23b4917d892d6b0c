"""Talk to a dyups interface: one kept-alive HTTP connection, and the live state in the model's terms.

Two API generations exist (see the project's dyups protocol notes):

* stable and Tengine builds answer ``GET /detail`` with blocks of a name line
  and one ``server ADDR weight=1 max_conns=0 ... down=0`` line per server;
* the 2020 master build has no ``/detail`` (404) and its ``GET /list``
  returns whole ``upstream NAME { ... }`` blocks as they were posted.

:class:`~reloader.outputs.http.KeepAliveClient` (re-exported here) is the
one connection to the interface; it caps what it reads of an answer.

:class:`LiveStateReader` detects which API it talks to once per connection,
fetches the raw table, and splits it into one text block per upstream
(:func:`split_blocks`), so that a caller can skip parsing the blocks it has
seen before; :func:`parse_block` parses one. :func:`fingerprint` reduces a
server to what both sides can express, so that the desired state and the
live state compare equal exactly when nginx serves what was asked for.
:meth:`LiveStateReader.quick` is the cheap read of an idle pass on stable
and Tengine: the names of ``GET /list`` and how many times the connection
ended (:class:`CountingClient`). nginx closes its idle kept-alive
connections when it reloads, and a restart closes every connection, so a
reload or restart that put other upstreams in place under the same names
(the files') still moves it.
Nothing here is cached at module level: whatever is remembered between
reconcile passes belongs to the caller.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable

from reloader.durations import parse_duration
from reloader.model import Server
from reloader.outputs.http import (  # noqa: F401 - re-exported: the connection lives in outputs.http
    Answer,
    AnswerTooLarge,
    Dropped,
    InterfaceDown,
    KeepAliveClient,
    NoAnswer,
    TransportError,
)
from reloader.readback import ReadbackError, parse_server_statement

log = logging.getLogger(__name__)

__all__ = [
    "Answer", "AnswerTooLarge", "CountingClient", "Dropped", "InterfaceDown", "KeepAliveClient", "LiveStateError",
    "LiveStateReader", "NoAnswer", "TransportError", "fingerprint", "fingerprints", "parse_block",
    "parse_detail", "parse_list_blocks", "split_blocks",
]

# nginx's defaults as /detail prints them; a parameter at its default is the
# same as no parameter at all.
_DEFAULT_PARAMS = {"max_conns": "0", "max_fails": "1", "fail_timeout": "10"}
_TIME_PARAMS = {"fail_timeout", "slow_start"}
_LIST_BLOCK = re.compile(r"upstream\s+(\S+)\s*\{([^{}]*)\}", re.DOTALL)

Fingerprint = tuple[str, int, int, bool, bool, frozenset[tuple[str, str]]]


class LiveStateError(Exception):
    """The live state could not be read or understood."""


def _canonical_value(name: str, value: str) -> str:
    if name in _TIME_PARAMS:
        try:
            seconds = parse_duration(value)
        except ValueError:
            return value
        return str(int(seconds)) if seconds == int(seconds) else repr(seconds)
    return value


def fingerprint(server: Server) -> Fingerprint:
    """What identifies a server line across renderings (defaults dropped, times in seconds)."""
    params = frozenset(
        (name, canonical)
        for name, value in server.params
        if _DEFAULT_PARAMS.get(name) != (canonical := _canonical_value(name, value))
    )
    return (server.host, server.port, server.weight, server.backup, server.down, params)


def fingerprints(servers: Iterable[Server]) -> frozenset[Fingerprint]:
    """The fingerprints of one upstream's servers."""
    return frozenset(fingerprint(server) for server in servers)


def _parse_lines(statements: Iterable[str]) -> tuple[Server, ...]:
    """The servers of the statements that parse.

    A line the daemon cannot parse (``server unix:/run/php/php-fpm.sock`` in an
    upstream it does not manage, say) is left out: it can never belong to a
    managed upstream, whose lines are the daemon's own, and a managed
    upstream that somehow shows one compares as drifted and is re-POSTed.
    """
    servers = []
    for statement in statements:
        try:
            servers.append(parse_server_statement(statement))
        except ReadbackError:
            continue
    return tuple(servers)


def split_blocks(api: str, text: str) -> dict[str, str]:
    """The live table as ``{name: block text}``, unparsed (see :func:`parse_block`).

    A block's text is all that decides its servers, so a block whose text did
    not change since it last compared equal with an unchanged desired state
    need not be parsed again.
    """
    blocks: dict[str, str] = {}
    if not text:
        return blocks
    if api == "detail":
        for block in re.split(r"\n\s*\n", text.strip()):
            name, _, rest = block.strip().partition("\n")
            if name.strip():
                blocks[name.strip()] = rest
    else:
        for name, body in _LIST_BLOCK.findall(text):
            blocks[name] = body
    return blocks


def parse_block(api: str, block: str) -> tuple[Server, ...]:
    """The servers of one block of :func:`split_blocks` (lines the daemon cannot parse left out)."""
    if api == "detail":
        lines = (line.strip() for line in block.splitlines())
        return _parse_lines(line.rstrip(";") for line in lines if line)
    statements = (" ".join(raw.split()) for raw in block.split(";"))
    return _parse_lines(statement for statement in statements if statement.startswith("server "))


def parse_detail(text: str) -> dict[str, tuple[Server, ...]]:
    """Parse a ``GET /detail`` answer (stable, Tengine)."""
    return {name: parse_block("detail", block) for name, block in split_blocks("detail", text).items()}


def parse_list_blocks(text: str) -> dict[str, tuple[Server, ...]]:
    """Parse a ``GET /list`` answer of the 2020 master build (whole blocks)."""
    return {name: parse_block("list", block) for name, block in split_blocks("list", text).items()}


# ---- the connection (shared with the Lua interface: reloader.outputs.http) ------------

class CountingClient(KeepAliveClient):
    """A :class:`KeepAliveClient` that counts how often its connection ended (``closes``).

    Every end of a connection goes through :meth:`close`: the peer closed an
    idle one, a request broke, an answer said ``Connection: close``. A
    request after a change of the count went over a new connection, maybe to
    a reloaded or restarted nginx. Counting a close too many only costs one
    full read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        super().close()


class LiveStateReader:
    """Reads the live upstream table from a dyups interface."""

    def __init__(self, client: KeepAliveClient) -> None:
        self._client = client
        self._base_url = client.base_url
        # "detail" or "list"; None until detected. Forgotten whenever the
        # connection fails, because a restarted nginx may be another build.
        self.api: str | None = None

    def forget_api(self) -> None:
        self.api = None

    def fetch(self) -> tuple[str, str]:
        """The raw live state as (api, text), without parsing it.

        Parsing a large table costs far more than fetching it, so a caller
        compares blocks (:func:`split_blocks`) and parses only those that changed.
        Raises :class:`TransportError` or :class:`LiveStateError`.
        """
        if self.api in (None, "detail"):
            response = self._get("/detail")
            if response.status in (200, 204):
                if self.api is None:
                    log.info("dyups: %s has /detail (stable or Tengine API)", self._base_url)
                self.api = "detail"
                return "detail", response.text if response.status == 200 else ""
            if response.status != 404:
                raise LiveStateError(f"GET /detail answered {response.status}")
            log.info("dyups: %s has no /detail; reading blocks from /list (2020 master API)", self._base_url)
            self.api = "list"
        response = self._get("/list")
        if response.status not in (200, 204):
            raise LiveStateError(f"GET /list answered {response.status}")
        return "list", response.text if response.status == 200 else ""

    def quick(self) -> str | None:
        """The cheap view of an idle pass: the connection's close count and ``GET /list``'s names.

        Only on the stable and Tengine API (``/list`` names only); None
        elsewhere, without a request: the 2020 master's ``/list`` is the
        whole table already, and before the first :meth:`fetch` the API is
        not known. Raises :class:`TransportError` or :class:`LiveStateError`.
        """
        if self.api != "detail":
            return None
        response = self._get("/list")
        if response.status not in (200, 204):
            raise LiveStateError(f"GET /list answered {response.status}")
        # Read after the request: a connection that ended before it counts already.
        closes = getattr(self._client, "closes", None)
        if closes is None:
            return None  # a client that does not count: no cheap read can be trusted
        return f"{closes}\n{response.text if response.status == 200 else ''}"

    @staticmethod
    def parse(api: str, text: str) -> dict[str, tuple[Server, ...]]:
        """Parse what :meth:`fetch` returned, whole."""
        return {name: parse_block(api, block) for name, block in split_blocks(api, text).items()}

    def _get(self, path: str) -> Answer:
        # A kept-alive connection nginx closed meanwhile is retried on a fresh one.
        return self._client.request("GET", path, retry_dropped=2)
