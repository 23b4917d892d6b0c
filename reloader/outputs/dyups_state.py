"""Read what a dyups nginx is serving right now, in the model's terms.

Two API generations exist (see the project's dyups protocol notes):

* stable and Tengine builds answer ``GET /detail`` with blocks of a name line
  and one ``server ADDR weight=1 max_conns=0 ... down=0`` line per server;
* the 2020 master build has no ``/detail`` (404) and its ``GET /list``
  returns whole ``upstream NAME { ... }`` blocks as they were posted.

:class:`LiveStateReader` detects which one it talks to once per connection,
fetches the raw table, and parses either into ``{name: servers}``. :func:`fingerprint` reduces a
server to what both sides can express, so that the desired state and the
live state compare equal exactly when nginx serves what was asked for.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Iterable

import requests

from reloader.durations import parse_duration
from reloader.model import Server
from reloader.readback import ReadbackError, parse_server_statement

log = logging.getLogger(__name__)

# nginx's defaults as /detail prints them; a parameter at its default is the
# same as no parameter at all.
_DEFAULT_PARAMS = {"max_conns": "0", "max_fails": "1", "fail_timeout": "10"}
_TIME_PARAMS = {"fail_timeout", "slow_start"}
_LIST_BLOCK = re.compile(r"upstream\s+(\S+)\s*\{([^{}]*)\}", re.DOTALL)

Fingerprint = tuple[str, int, int, bool, bool, frozenset[tuple[str, str]]]


# The live table repeats itself from one reconcile pass to the next, and a
# parsed Server is immutable, so parsed lines and desired fingerprints are
# cached: a pass over 20,000 unchanged servers then costs lookups, not parsing.
# Sized for the largest tables seen (1,000 upstreams x 20 servers) with room.
_CACHE_SIZE = 65536


@lru_cache(maxsize=_CACHE_SIZE)
def _parse_live_line(statement: str) -> Server:
    return parse_server_statement(statement)


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


@lru_cache(maxsize=_CACHE_SIZE // 16)
def fingerprints(servers: tuple[Server, ...]) -> frozenset[Fingerprint]:
    """The fingerprints of one upstream's servers (cached: upstreams rarely change)."""
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
            servers.append(_parse_live_line(statement))
        except ReadbackError:
            continue
    return tuple(servers)


def parse_detail(text: str) -> dict[str, tuple[Server, ...]]:
    """Parse a ``GET /detail`` answer (stable, Tengine)."""
    live: dict[str, tuple[Server, ...]] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        name, server_lines = lines[0], lines[1:]
        live[name] = _parse_lines(line.rstrip(";") for line in server_lines)
    return live


def parse_list_blocks(text: str) -> dict[str, tuple[Server, ...]]:
    """Parse a ``GET /list`` answer of the 2020 master build (whole blocks)."""
    live: dict[str, tuple[Server, ...]] = {}
    for name, body in _LIST_BLOCK.findall(text):
        statements = [" ".join(raw.split()) for raw in body.split(";")]
        live[name] = _parse_lines(statement for statement in statements if statement.startswith("server "))
    return live


class LiveStateReader:
    """Reads the live upstream table from a dyups interface."""

    def __init__(self, session: requests.Session, base_url: str, timeout: tuple[float, float]) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        # "detail" or "list"; None until detected. Forgotten whenever the
        # connection fails, because a restarted nginx may be another build.
        self.api: str | None = None

    def forget_api(self) -> None:
        self.api = None

    def fetch(self) -> tuple[str, str]:
        """The raw live state as (api, text), without parsing it.

        Parsing a large table costs far more than fetching it, so a caller
        that saw this exact text before can skip :meth:`parse`.
        """
        if self.api in (None, "detail"):
            response = self._get("/detail")
            if response.status_code in (200, 204):
                if self.api is None:
                    log.info("dyups: %s has /detail (stable or Tengine API)", self._base_url)
                self.api = "detail"
                return "detail", response.text if response.status_code == 200 else ""
            if response.status_code != 404:
                raise LiveStateError(f"GET /detail answered {response.status_code}")
            log.info("dyups: %s has no /detail; reading blocks from /list (2020 master API)", self._base_url)
            self.api = "list"
        response = self._get("/list")
        if response.status_code not in (200, 204):
            raise LiveStateError(f"GET /list answered {response.status_code}")
        return "list", response.text if response.status_code == 200 else ""

    @staticmethod
    def parse(api: str, text: str) -> dict[str, tuple[Server, ...]]:
        """Parse what :meth:`fetch` returned."""
        if not text:
            return {}
        return parse_detail(text) if api == "detail" else parse_list_blocks(text)

    def _get(self, path: str) -> requests.Response:
        return self._session.get(f"{self._base_url}{path}", timeout=self._timeout)
