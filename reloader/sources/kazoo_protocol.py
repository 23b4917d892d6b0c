"""ZooKeeper's watch re-registration and persistent watches, added to kazoo.

kazoo (2.11) forgets every watch when a connection drops, even when the
session survives, and knows neither ``SetWatches`` nor persistent watches, so
a client re-reads everything it watched after each blip. ZooKeeper itself
drops a connection's watches with the connection; its Java client keeps its
watch tables and sends them back, with the last zxid it saw, as the first
packets on the new connection. :class:`WatchingKazooClient` does the same.

Guarantees:

* Wire format: :class:`SetWatches` (101), :class:`SetWatches2` (105),
  :class:`AddWatch` (106) and :class:`RemoveWatches` (18) serialize exactly
  as ZooKeeper's jute records ``SetWatches``, ``SetWatches2``,
  ``AddWatchRequest`` and ``RemoveWatchesRequest``; :func:`set_watches_packets`
  splits a watch list into packets of at most :data:`SET_WATCHES_MAX_BYTES`
  (128 KB, the Java client's limit) each, in order, nothing lost.
* A blip (the connection drops, the session survives): the one-shot watches
  armed through kazoo's usual calls (``get_children``, ``get``, ``exists``
  with ``watch=``) stay armed in the client, no ``NONE`` event is sent to
  them, and right after the handshake (and kazoo's auth packets), before any
  other request on the new connection, they are sent back with the
  ``client.last_zxid`` of before the drop (``exists`` watches on absent nodes as
  ``existWatches``), together with the persistent watches. The server then
  fires at once the watches whose nodes changed since that zxid (their events
  reach the callbacks as usual) and keeps the others. Nothing is read.
  ``last_zxid`` also follows the server's zxid in ping answers (the server
  has sent every notification up to it before answering).
* Then, and only after the server has answered every packet, each resume
  listener gets a :class:`Resumption` (``resumed=True``), on kazoo's callback
  thread, after the events the re-registration fired. A connection that
  opens a new session (the first one, or after an expiry) sends no
  ``SetWatches`` and reports ``resumed=False``: the caller reads in full.
* ZooKeeper re-adds persistent watches without checking them against the
  zxid (``DataTree.setWatches``): a change made under a persistent watch
  while the connection was down fires no event. :attr:`Resumption.changed`
  says whether anything at all changed in the cluster meanwhile (the server's
  zxid moved); when it did, the caller must check its persistent paths itself.
* If the server refuses the re-registration (an older server), the client
  falls back to kazoo's own behaviour: every kept watcher gets its ``NONE``
  event and is dropped, persistent watches are dropped, the report says
  ``resumed=False``, and the client reconnects (with nothing to re-register).
* An expired or closed session: kazoo's behaviour (``NONE`` events, tables
  cleared), and persistent watchers get a ``NONE`` event too and are dropped.
* Persistent watches (:meth:`WatchingKazooClient.add_persistent_watch`) are
  never consumed; a recursive one reports every ``CREATED``, ``DELETED`` and
  ``CHANGED`` at or under its path with the node's own path (ZooKeeper sends
  no ``CHILD`` events to recursive watches), through the client's handler
  (kazoo's callback thread, or at once for a watcher marked
  :func:`~reloader.sources.kazoo_handler.hands_on`), in the server's order,
  next to kazoo's one-shot watchers.
* ``watch_mode``: ``persistent`` always sends ``AddWatch`` (an error is
  raised), ``classic`` never does (``add_persistent_watch`` answers False),
  ``auto`` tries once per session and falls back to classic when the server
  answers as a 3.5 server does (``UNIMPLEMENTED``, then it closes the
  connection, a blip the client survives).
* kazoo's internals this relies on are checked by :func:`check_kazoo` when a
  client is made: another kazoo raises :class:`KazooInternalsChanged` rather
  than losing watches silently.
"""

from __future__ import annotations

import inspect
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import kazoo
from kazoo.client import CLOSED_STATES, KazooClient
from kazoo.exceptions import EXCEPTIONS, ConnectionDropped, NoNodeError, NoWatcherError, UnimplementedError
from kazoo.protocol.connection import PING_XID, WATCH_XID, ConnectionHandler
from kazoo.protocol.paths import _prefix_root
from kazoo.protocol.serialization import (
    Exists,
    GetData,
    ReplyHeader,
    Watch,
    int_struct,
    long_struct,
    multiheader_struct,
    stat_struct,
    write_string,
)
from kazoo.protocol.states import EVENT_TYPE_MAP, Callback, EventType, KazooState, WatchedEvent, ZnodeStat

log = logging.getLogger(__name__)

#: kazoo releases whose internals this module was tested against.
# 2.10's internals used here are the same, but it has no NoWatcherError: a
# RemoveWatches answered NOWATCHER (-121) would end its connection loop.
TESTED_KAZOO = ("2.11.0",)

#: The Java client's limit for one SetWatches packet (ClientCnxn.SET_WATCHES_MAX_LENGTH).
SET_WATCHES_MAX_BYTES = 128 * 1024

#: The xid the Java client gives SetWatches packets (ClientCnxn.SET_WATCHES_XID).
SET_WATCHES_XID = -8

PERSISTENT = 0
PERSISTENT_RECURSIVE = 1

# RemoveWatchesRequest.type: ZooKeeper's WatcherType.Any.
_WATCHER_TYPE_ANY = 3

WATCH_MODES = ("auto", "persistent", "classic")

_CREATED, _DELETED, _CHANGED, _CHILD = 1, 2, 3, 4


# -- requests -----------------------------------------------------------------


def _write_strings(paths: Sequence[str]) -> bytes:
    return int_struct.pack(len(paths)) + b"".join(write_string(path) for path in paths)


class SetWatches(NamedTuple):
    """jute ``SetWatches``: re-register one-shot watches relative to a zxid."""

    relative_zxid: int
    data: tuple[str, ...]
    exist: tuple[str, ...]
    child: tuple[str, ...]

    type = 101  # type: ignore[assignment]  # kazoo reads the opcode from ``type``

    def serialize(self) -> bytes:
        return (long_struct.pack(self.relative_zxid) + _write_strings(self.data)
                + _write_strings(self.exist) + _write_strings(self.child))

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> None:
        return None  # the reply is a bare header


class SetWatches2(NamedTuple):
    """jute ``SetWatches2``: :class:`SetWatches` plus persistent watches (ZooKeeper >= 3.6)."""

    relative_zxid: int
    data: tuple[str, ...]
    exist: tuple[str, ...]
    child: tuple[str, ...]
    persistent: tuple[str, ...]
    persistent_recursive: tuple[str, ...]

    type = 105  # type: ignore[assignment]

    def serialize(self) -> bytes:
        return (long_struct.pack(self.relative_zxid) + _write_strings(self.data)
                + _write_strings(self.exist) + _write_strings(self.child)
                + _write_strings(self.persistent) + _write_strings(self.persistent_recursive))

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> None:
        return None


class AddWatch(NamedTuple):
    """jute ``AddWatchRequest``: a persistent watch, ``mode`` PERSISTENT or PERSISTENT_RECURSIVE.

    ``callback`` is not sent: the client registers it when the server has
    accepted the watch (not named ``watcher``, which kazoo would register as
    a one-shot data watcher).
    """

    path: str
    mode: int
    callback: Any = None

    type = 106  # type: ignore[assignment]

    def serialize(self) -> bytes:
        return write_string(self.path) + int_struct.pack(self.mode)

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> bool:
        return True  # the body is an ErrorResponse whose code is also in the header


class RemoveWatches(NamedTuple):
    """jute ``RemoveWatchesRequest`` (``type`` 3 removes every watch of the connection on ``path``)."""

    path: str
    watcher_type: int

    type = 18  # type: ignore[assignment]

    def serialize(self) -> bytes:
        return write_string(self.path) + int_struct.pack(self.watcher_type)

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> bool:
        return True


class MultiRead(NamedTuple):
    """jute ``MultiOperationRecord`` of ``getData`` operations (opcode 22, ZooKeeper >= 3.6).

    Many reads in one request, with no watch. The answer is one entry per
    path, in order: ``(data, ZnodeStat)``, or the exception of that read
    (``NoNodeError``, ``NoAuthError``...).
    """

    paths: tuple[str, ...]

    type = 22  # type: ignore[assignment]

    def serialize(self) -> bytes:
        # One join over constant headers: a sweep serializes 20,000 of these,
        # and kazoo's MultiHeader/write_string cost a few objects per path.
        # tests/test_kazoo_protocol.py checks the bytes against the jute records.
        parts = []
        for path in self.paths:
            encoded = path.encode("utf-8")
            parts.append(_GET_DATA_OP + int_struct.pack(len(encoded)) + encoded + b"\x00")
        parts.append(_MULTI_DONE)
        return b"".join(parts)

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> list[Any]:
        results: list[Any] = []
        unpack_header, header_size = multiheader_struct.unpack_from, multiheader_struct.size
        unpack_int, unpack_stat, stat_size = int_struct.unpack_from, stat_struct.unpack_from, stat_struct.size
        make_stat = ZnodeStat._make
        while True:
            kind, done, _ = unpack_header(buffer, offset)
            offset += header_size
            if done:
                return results
            if kind == GetData.type:
                length = unpack_int(buffer, offset)[0]
                offset += 4
                if length < 0:
                    data = None
                else:
                    data = buffer[offset:offset + length]
                    offset += length
                results.append((data, make_stat(unpack_stat(buffer, offset))))
                offset += stat_size
            elif kind == -1:
                err = unpack_int(buffer, offset)[0]
                offset += 4
                results.append(EXCEPTIONS[err]())
            else:
                raise ValueError(f"unexpected operation {kind} in a multi-read answer")


# MultiRead's constant parts: the header of each getData operation, and the end mark.
_GET_DATA_OP = multiheader_struct.pack(GetData.type, False, -1)
_MULTI_DONE = multiheader_struct.pack(-1, True, -1)


def _length(path: str) -> int:
    return 4 + len(path.encode("utf-8"))


def set_watches_packets(relative_zxid: int, data: Iterable[str] = (), exist: Iterable[str] = (),
                        child: Iterable[str] = (), persistent: Iterable[str] = (),
                        persistent_recursive: Iterable[str] = (),
                        max_bytes: int = SET_WATCHES_MAX_BYTES) -> list[SetWatches | SetWatches2]:
    """Every watch in packets of at most ``max_bytes`` serialized, in order.

    A packet with no persistent watch is a :class:`SetWatches`, so an older
    server that knows only that opcode accepts it. A single path longer than
    ``max_bytes`` (impossible within ZooKeeper's own limits) goes alone.
    """
    kinds = [list(data), list(exist), list(child), list(persistent), list(persistent_recursive)]
    empty = 8 + 4 * len(kinds)
    packets: list[SetWatches | SetWatches2] = []
    batch: list[list[str]] = [[] for _ in kinds]
    size = empty

    def flush() -> None:
        nonlocal batch, size
        if batch[3] or batch[4]:
            packets.append(SetWatches2(relative_zxid, *(tuple(paths) for paths in batch)))
        else:
            packets.append(SetWatches(relative_zxid, *(tuple(paths) for paths in batch[:3])))
        batch = [[] for _ in kinds]
        size = empty

    for kind, paths in enumerate(kinds):
        for path in paths:
            if size + _length(path) > max_bytes and size > empty:
                flush()
            batch[kind].append(path)
            size += _length(path)
    if size > empty:
        flush()
    return packets


# -- kazoo's internals ---------------------------------------------------------


class KazooInternalsChanged(RuntimeError):
    """The installed kazoo is not one whose internals this module was tested with."""


_HANDLER_METHODS = {
    "__init__": ["self", "client", "retry_sleeper", "logger", "sasl_options"],
    "_connect": ["self", "host", "hostip", "port"],
    "_read_watch_event": ["self", "buffer", "offset"],
    "_read_response": ["self", "header", "buffer", "offset"],
    "_read_header": ["self", "timeout"],
    "_submit": ["self", "request", "timeout", "xid"],
}
_CLIENT_METHODS = {
    "_reset_watchers": ["self"],
    "_reset": ["self"],
    "_session_callback": ["self", "state"],
    "_call": ["self", "request", "async_object"],
    "unchroot": ["self", "path"],
}


def check_kazoo(version: str | None = None) -> None:
    """Raise :class:`KazooInternalsChanged` unless kazoo is a tested release with the expected internals."""
    version = kazoo.__version__ if version is None else version
    if version not in TESTED_KAZOO:
        raise KazooInternalsChanged(
            f"kazoo {version} is not one of the releases the watch layer was tested with "
            f"({', '.join(TESTED_KAZOO)}); test it and add it to TESTED_KAZOO and setup.py")
    for owner, methods in ((ConnectionHandler, _HANDLER_METHODS), (KazooClient, _CLIENT_METHODS)):
        for name, params in methods.items():
            method = getattr(owner, name, None)
            if method is None or list(inspect.signature(method).parameters) != params:
                raise KazooInternalsChanged(f"kazoo {version}: {owner.__name__}.{name} is not {params}")


def _check_client(client: KazooClient) -> None:
    """The attributes of a kazoo client this module reads and writes."""
    for name in ("_child_watchers", "_data_watchers", "_pending", "_queue", "last_zxid", "_session_id",
                 "_stopped", "_state", "_connection", "chroot", "handler"):
        if not hasattr(client, name):
            raise KazooInternalsChanged(f"kazoo {kazoo.__version__}: KazooClient has no {name}")
    for name in ("retry_sleeper", "logger", "sasl_options", "_socket"):
        if not hasattr(client._connection, name):
            raise KazooInternalsChanged(f"kazoo {kazoo.__version__}: ConnectionHandler has no {name}")


# -- the client ---------------------------------------------------------------


@dataclass(frozen=True)
class Resumption:
    """What a (re)connection did about the watches."""

    session_id: int
    #: True: the session survived and the server confirmed every watch; False: read in full.
    resumed: bool
    #: The zxid the watches were re-registered against (0 on a new session).
    relative_zxid: int
    #: The server's last zxid when it confirmed them (None when nothing was sent).
    server_zxid: int | None
    #: SetWatches/SetWatches2 packets sent, and the watches they carried.
    packets: int
    watches: int

    @property
    def changed(self) -> bool:
        """Whether anything in the cluster may have changed while the connection was down.

        It speaks of this reconnection only: a caller still checking its
        paths after an earlier report (``changed``, or ``resumed=False``)
        must finish that first.
        """
        return not self.resumed or self.server_zxid is None or self.server_zxid > self.relative_zxid


Watcher = Callable[[WatchedEvent], Any]


class _Persistent:
    __slots__ = ("mode", "watchers")

    def __init__(self, mode: int) -> None:
        self.mode = mode
        self.watchers: set[Watcher] = set()


class WatchingConnection(ConnectionHandler):
    """kazoo's connection loop, re-registering watches on reconnect and dispatching persistent events."""

    client: WatchingKazooClient

    def drop(self) -> bool:
        """Break the current connection (any thread); kazoo then reconnects as after any drop.

        Shutting the socket down wakes the connection loop with an end of
        stream, which it handles as a lost connection: SUSPENDED, a reconnect
        with the same session, and a resumption report. False when there is
        no connection to break.
        """
        sock = self._socket
        if sock is None:
            return False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False
        return True

    def _connect(self, host: str, hostip: str, port: int) -> tuple[float, float]:
        client = self.client
        previous = client._session_id
        relative = client.last_zxid
        read_timeout, connect_timeout = super()._connect(host, hostip, port)
        if previous is not None and previous == client._session_id:
            self._resume(relative, connect_timeout / 1000.0)
        else:
            client._new_session()
        return read_timeout, connect_timeout

    def _resume(self, relative: int, timeout: float) -> None:
        """Send the kept watches back; read until the server has answered every packet."""
        client = self.client
        packets = client._set_watches_packets(relative)
        server_zxid: int | None = None
        for packet in packets:
            self._submit(packet, timeout, SET_WATCHES_XID)
        answered = 0
        while answered < len(packets):
            header, buffer, offset = self._read_header(timeout)
            if header.xid == WATCH_XID:
                # The watches whose nodes changed fire before the answer.
                self._read_watch_event(buffer, offset)
                continue
            if header.xid != SET_WATCHES_XID:
                raise ConnectionDropped(f"unexpected xid {header.xid} while re-registering watches")
            answered += 1
            if header.err:
                # An older server (3.5 answers SetWatches2 with UNIMPLEMENTED
                # and closes): kazoo's own behaviour, then a clean connection
                # (the answers still due must not reach kazoo's request queue).
                self.logger.warning("The server refused to re-register %d watches (error %d): reading in full",
                                    sum(len(paths) for packet in packets for paths in packet[1:]), header.err)
                client._drop_watches()
                client._report(Resumption(client._session_id, False, relative, None, len(packets), 0))
                raise ConnectionDropped("the server refused SetWatches")
            if header.zxid > 0:
                server_zxid = header.zxid if server_zxid is None else max(server_zxid, header.zxid)
        if server_zxid is not None and server_zxid > client.last_zxid:
            client.last_zxid = server_zxid
        watches = sum(len(paths) for packet in packets for paths in packet[1:])
        self.logger.info("Re-registered %d watches in %d packets at zxid %#x", watches, len(packets), relative)
        client._report(Resumption(client._session_id, True, relative, server_zxid, len(packets), watches))

    def _read_header(self, timeout: float) -> tuple[ReplyHeader, bytes, int]:
        header, buffer, offset = super()._read_header(timeout)
        # A ping's answer carries the server's last zxid, and the server has
        # queued every notification up to it before that answer: the client
        # has seen everything up to it. Without this, a client that only
        # receives events (persistent watches, no reads) would re-register
        # against an old zxid and always look as if the cluster had changed.
        if header.xid == PING_XID and header.zxid > self.client.last_zxid:
            self.client.last_zxid = header.zxid
        return header, buffer, offset

    def _read_watch_event(self, buffer: bytes, offset: int) -> None:
        watch = Watch.deserialize(buffer, offset)[0]
        client = self.client
        # kazoo's own dispatch serves only its one-shot watchers (and warns
        # of an unknown type): a persistent watch's event, nearly every event
        # here, is decoded once and goes straight to the persistent watchers.
        if (watch.path in client._data_watchers or watch.path in client._child_watchers
                or watch.type not in EVENT_TYPE_MAP):
            super()._read_watch_event(buffer, offset)
        client._dispatch_persistent(watch)

    def _read_response(self, header: ReplyHeader, buffer: bytes, offset: int) -> Any:
        client = self.client
        request = client._pending[0][0] if client._pending else None
        result = super()._read_response(header, buffer, offset)
        if isinstance(request, AddWatch) and not header.err and request.callback is not None:
            client._hold_persistent(request)
        # kazoo keeps exists() and get() watchers in one table; SetWatches
        # must tell them apart: a data watch on a node that is gone fires
        # NodeDeleted, an exists watch on an absent node is kept.
        if isinstance(request, Exists) and getattr(request, "watcher", None):
            if header.err == NoNodeError.code:
                client._absent.add(request.path)
            elif not header.err:
                client._absent.discard(request.path)
        return result


class WatchingKazooClient(KazooClient):
    """A :class:`KazooClient` that keeps its watches across blips and has persistent watches.

    ``watch_mode`` is ``auto``, ``persistent`` or ``classic`` (see the module
    docstring); every other argument is kazoo's.
    """

    def __init__(self, *args: Any, watch_mode: str = "auto", **kwargs: Any) -> None:
        if watch_mode not in WATCH_MODES:
            raise ValueError(f"watch_mode must be one of {WATCH_MODES}, not {watch_mode!r}")
        check_kazoo()
        self._persistent: dict[str, _Persistent] = {}
        self._persistent_lock = threading.Lock()
        self._absent: set[str] = set()
        self._resume_listeners: list[Callable[[Resumption], Any]] = []
        self._supports_persistent: bool | None = None
        self.watch_mode = watch_mode
        #: The size limit of one SetWatches packet (tests lower it to see the split on a real server).
        self.set_watches_max_bytes = SET_WATCHES_MAX_BYTES
        super().__init__(*args, **kwargs)
        _check_client(self)
        stock = self._connection
        self._connection = WatchingConnection(self, stock.retry_sleeper, logger=stock.logger,
                                              sasl_options=stock.sasl_options)

    # -- the caller's interface -------------------------------------------

    def drop_connection(self) -> bool:
        """Make the client reconnect now, as after a network drop (any thread); False if not connected."""
        if self._state != KazooState.CONNECTED:
            return False
        return self._connection.drop()

    @property
    def watch_mode_in_effect(self) -> str | None:
        """``persistent`` or ``classic`` once known for this session; None while ``auto`` has not tried."""
        if self.watch_mode != "auto":
            return self.watch_mode
        if self._supports_persistent is None:
            return None
        return "persistent" if self._supports_persistent else "classic"

    def add_resume_listener(self, listener: Callable[[Resumption], Any]) -> None:
        """Call ``listener(Resumption)`` after each connection has settled its watches."""
        self._resume_listeners.append(listener)

    def remove_resume_listener(self, listener: Callable[[Resumption], Any]) -> None:
        if listener in self._resume_listeners:
            self._resume_listeners.remove(listener)

    def persistent_watches(self) -> dict[str, int]:
        """The persistent watches held, full path to mode."""
        with self._persistent_lock:
            return {path: entry.mode for path, entry in self._persistent.items()}

    def add_persistent_watch(self, path: str, watcher: Watcher, recursive: bool = True,
                             timeout: float | None = None) -> bool:
        """Add a persistent (by default recursive) watch on ``path`` calling ``watcher``.

        Returns True when the server holds it, False when the classic mode is
        in effect (``classic``, or ``auto`` on a server without them): the
        caller then watches ``path`` with one-shot watches. Raises kazoo's
        errors otherwise (after ``ConnectionLoss`` the watch is not held:
        the server drops it with the connection; call again once connected).
        """
        if self.watch_mode == "classic" or (self.watch_mode == "auto" and self._supports_persistent is False):
            return False
        full = _prefix_root(self.chroot, path)
        mode = PERSISTENT_RECURSIVE if recursive else PERSISTENT
        with self._persistent_lock:
            entry = self._persistent.get(full)
            if entry is not None and entry.mode != mode:
                raise ValueError(f"{path} already has a persistent watch of mode {entry.mode}")
        # The connection thread registers ``watcher`` when the server accepts
        # the watch, before it reads anything else: no event is missed, and a
        # watch the server never confirmed is never sent again by SetWatches2.
        result = self.handler.async_result()
        self._call(AddWatch(full, mode, watcher), result)
        try:
            result.get(timeout=timeout)
        except UnimplementedError:
            if self.watch_mode == "auto":
                self.logger.warning("ZooKeeper refused AddWatch (a server older than 3.6): classic watches")
                self._supports_persistent = False
                return False
            raise
        self._supports_persistent = True
        return True

    def add_persistent_watch_async(self, path: str, watcher: Watcher, recursive: bool = True) -> Any:
        """Send the ``AddWatch`` of :meth:`add_persistent_watch` without waiting for it.

        Returns None when the classic mode is in effect (nothing sent), else
        kazoo's async result: it gives True once the server holds the watch,
        or raises the server's error. Pass an ``UnimplementedError`` to
        :meth:`persistent_refused`, which decides what ``auto`` makes of it.
        """
        if self.watch_mode == "classic" or (self.watch_mode == "auto" and self._supports_persistent is False):
            return None
        full = _prefix_root(self.chroot, path)
        mode = PERSISTENT_RECURSIVE if recursive else PERSISTENT
        with self._persistent_lock:
            entry = self._persistent.get(full)
            if entry is not None and entry.mode != mode:
                raise ValueError(f"{path} already has a persistent watch of mode {entry.mode}")
        result = self.handler.async_result()
        self._call(AddWatch(full, mode, watcher), result)
        return result

    def get_many_async(self, paths: Sequence[str]) -> Any:
        """Read the data of every path in one ``multiRead`` request (ZooKeeper >= 3.6), setting no watch.

        Each path must be absolute and normalized (no ``//``, no trailing ``/``).

        kazoo's async result gives a list with, per path in order,
        ``(data, ZnodeStat)`` or the exception of that read.
        """
        result = self.handler.async_result()
        # The paths are normalized and absolute (the source builds them from
        # checked znode paths and child names), so the chroot is a plain
        # prefix: kazoo's _prefix_root normalizes each one again, which costs
        # a sweep of 20,000 children a fifth of a second.
        root = self.chroot
        self._call(MultiRead(tuple(root + path for path in paths) if root else tuple(paths)), result)
        return result

    def persistent_accepted(self) -> None:
        """The server accepted an ``AddWatch`` sent by :meth:`add_persistent_watch_async`."""
        self._supports_persistent = True

    def persistent_refused(self, error: BaseException) -> bool:
        """Whether ``error`` (an AddWatch's) means classic watches for the rest of this session (``auto``)."""
        if self.watch_mode == "auto" and isinstance(error, UnimplementedError):
            if self._supports_persistent is not False:
                self.logger.warning("ZooKeeper refused AddWatch (a server older than 3.6): classic watches")
            self._supports_persistent = False
            return True
        return False

    def remove_persistent_watch(self, path: str, timeout: float | None = None) -> None:
        """Remove the persistent watch on ``path`` and its watchers.

        The server's RemoveWatches removes every watch this connection holds
        on that exact path: kazoo's one-shot watchers on it get a ``NONE``
        event and are dropped as well.
        """
        full = _prefix_root(self.chroot, path)
        with self._persistent_lock:
            if self._persistent.pop(full, None) is None:
                return
        result = self.handler.async_result()
        self._call(RemoveWatches(full, _WATCHER_TYPE_ANY), result)
        try:
            result.get(timeout=timeout)
        except NoWatcherError:
            pass
        finally:
            stale = list(self._child_watchers.pop(full, ())) + list(self._data_watchers.pop(full, ()))
            self._absent.discard(full)
            event = WatchedEvent(EventType.NONE, self._state, path)
            for watcher in stale:
                self.handler.dispatch_callback(Callback("watch", watcher, (event,)))

    def remove_watches_async(self, path: str) -> Any:
        """Forget every watch on ``path`` (one-shot or persistent) and send the server's RemoveWatches; no wait.

        Returns kazoo's async result (``NoWatcherError`` when the server held
        none), or None when the client held nothing there (nothing is sent).
        The one-shot watchers get a ``NONE`` event at once. Forgotten before
        the server answers: an event already on its way finds no watcher, and
        a reconnection never sends these watches back.
        """
        full = _prefix_root(self.chroot, path)
        with self._persistent_lock:
            persistent = self._persistent.pop(full, None)
        stale = list(self._child_watchers.pop(full, ())) + list(self._data_watchers.pop(full, ()))
        self._absent.discard(full)
        if persistent is None and not stale:
            return None
        result = self.handler.async_result()
        self._call(RemoveWatches(full, _WATCHER_TYPE_ANY), result)
        event = WatchedEvent(EventType.NONE, self._state, path)
        for watcher in stale:
            self.handler.dispatch_callback(Callback("watch", watcher, (event,)))
        return result

    # -- hooks into kazoo ---------------------------------------------------

    def _reset_watchers(self) -> None:
        # kazoo calls this when a connection drops and when a session ends;
        # only the second really ends the watches. _state is already the new one.
        if self._state not in CLOSED_STATES and getattr(self, "_persistent", None) is not None:
            return
        self._drop_watches()

    def _drop_watches(self) -> None:
        """kazoo's own reset for the one-shot watchers, and the same for persistent ones."""
        super()._reset_watchers()
        if getattr(self, "_persistent", None) is None:
            return  # kazoo's __init__, before ours ran
        with self._persistent_lock:
            dropped = [watcher for entry in self._persistent.values() for watcher in entry.watchers]
            self._persistent.clear()
        self._absent.clear()
        event = WatchedEvent(EventType.NONE, self._state, None)
        for watcher in dropped:
            self.handler.dispatch_callback(Callback("watch", watcher, (event,)))

    def _new_session(self) -> None:
        self._supports_persistent = None
        self._report(Resumption(self._session_id, False, 0, None, 0, 0))

    def _report(self, resumption: Resumption) -> None:
        for listener in list(self._resume_listeners):
            # Through the handler, as the events are: after the events already dispatched
            # (a hands-on listener, as the source's, runs at once; see kazoo_handler).
            self.handler.dispatch_callback(Callback("watch", listener, (resumption,)))

    def _set_watches_packets(self, relative: int) -> list[SetWatches | SetWatches2]:
        data, exist = [], []
        for path, watchers in list(self._data_watchers.items()):
            if watchers:
                (exist if path in self._absent else data).append(path)
        child = [path for path, watchers in list(self._child_watchers.items()) if watchers]
        with self._persistent_lock:
            persistent = [path for path, entry in self._persistent.items() if entry.mode == PERSISTENT]
            recursive = [path for path, entry in self._persistent.items() if entry.mode == PERSISTENT_RECURSIVE]
        return set_watches_packets(relative, data, exist, child, persistent, recursive,
                                   max_bytes=self.set_watches_max_bytes)

    def _hold_persistent(self, request: AddWatch) -> None:
        with self._persistent_lock:
            entry = self._persistent.get(request.path)
            if entry is None or entry.mode != request.mode:
                entry = self._persistent[request.path] = _Persistent(request.mode)
            entry.watchers.add(request.callback)

    def _dispatch_persistent(self, watch: Watch) -> None:
        """Send one notification to the persistent watchers it concerns."""
        if watch.type in (_CREATED, _DELETED, _CHANGED):
            self._absent.discard(watch.path)
        if watch.type not in EVENT_TYPE_MAP or self._stopped.is_set():
            return
        watchers: list[Watcher] = []
        with self._persistent_lock:
            if self._persistent:
                entry = self._persistent.get(watch.path)
                if entry is not None and (entry.mode == PERSISTENT or watch.type != _CHILD):
                    watchers.extend(entry.watchers)
                if watch.type != _CHILD:
                    # Ancestors' recursive watches; ZooKeeper sends them no child events.
                    ancestor = watch.path
                    while ancestor not in ("/", ""):
                        ancestor = ancestor.rsplit("/", 1)[0] or "/"
                        entry = self._persistent.get(ancestor)
                        if entry is not None and entry.mode == PERSISTENT_RECURSIVE:
                            watchers.extend(entry.watchers)
        if not watchers:
            return
        event = WatchedEvent(EVENT_TYPE_MAP[watch.type], self._state, self.unchroot(watch.path))
        for watcher in watchers:
            self.handler.dispatch_callback(Callback("watch", watcher, (event,)))
