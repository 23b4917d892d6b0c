"""Hadoop YARN service registry records (``org.apache.hadoop.registry``).

A record is JSON with ``"type": "JSONServiceRecord"`` and two endpoint
lists, ``external`` (for callers) and ``internal`` (within the application)::

    {"type": "JSONServiceRecord", "description": "...",
     "external": [{"api": "classpath:org.example.ipc", "addressType": "host/port",
                   "protocolType": "hadoop/IPC",
                   "addresses": [{"host": "192.168.1.5", "port": "1026"}]}],
     "internal": [], "yarn:id": "application_...", "yarn:persistence": "application"}

The server is the first ``host/port`` address of the endpoint whose ``api``
is the znode's ``endpoint`` option (looked up in ``external``, then
``internal``), or, without that option, of the first external endpoint whose
``addressType`` is ``host/port``. Ports are often strings. Early registry
versions wrote an address as a ``[host, port]`` list; that is read too.
"""

from __future__ import annotations

from typing import ClassVar

from reloader.formats._common import json_object, make_server, peek_json_object, preview
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip

RECORD_TYPE = "JSONServiceRecord"
HOST_PORT = "host/port"


def _endpoints(obj: dict, key: str) -> list[dict]:
    value = obj.get(key)
    if not isinstance(value, list):
        return []
    return [endpoint for endpoint in value if isinstance(endpoint, dict)]


def _first_address(endpoint: dict, what: str) -> ParseResult:
    if endpoint.get("addressType") != HOST_PORT:
        return Skip(f"{what} has addressType {preview(endpoint.get('addressType'), 20)}, not 'host/port'")
    addresses = endpoint.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        return Skip(f"{what} has no addresses")
    first = addresses[0]
    if isinstance(first, dict):
        host, port = first.get("host"), first.get("port")
    elif isinstance(first, list) and len(first) == 2:
        host, port = first
    else:
        return Skip(f"{what}: first address is not a host/port pair")
    if port is None:
        return Skip(f"{what}: first address has no port")
    return make_server(host, port, what=what)


class YarnFormat(InstanceFormat):
    name: ClassVar[str] = "yarn"
    written_by: ClassVar[str] = "Hadoop YARN service registry (RegistryOperations, YARN services, Slider)"

    def detect(self, child: str, data: bytes) -> bool:
        obj = peek_json_object(data)
        return obj is not None and obj.get("type") == RECORD_TYPE

    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        obj = json_object(data)
        if isinstance(obj, Skip):
            return obj
        if obj.get("type") != RECORD_TYPE:
            return Skip(f"record type is {preview(obj.get('type'), 30)}, not {RECORD_TYPE!r}")
        if options.endpoint:
            for key in ("external", "internal"):
                for endpoint in _endpoints(obj, key):
                    if endpoint.get("api") == options.endpoint:
                        return _first_address(endpoint, f"{key} endpoint {options.endpoint[:60]!r}")
            return Skip(f"record has no endpoint with api {preview(options.endpoint, 60)}")
        for endpoint in _endpoints(obj, "external"):
            if endpoint.get("addressType") == HOST_PORT:
                return _first_address(endpoint, f"external endpoint {preview(endpoint.get('api'), 60)}")
        return Skip("record has no external host/port endpoint (set 'endpoint' to pick one by api)")


FORMAT = YarnFormat()
