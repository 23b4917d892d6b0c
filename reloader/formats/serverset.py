"""Twitter Finagle / Apache Aurora ServerSet members.

Finagle's ``ZkAnnouncer`` and Aurora's executor announce each instance as an
ephemeral sequential child ``member_<sequence>`` whose data is JSON::

    {"serviceEndpoint": {"host": "10.0.0.7", "port": 31337},
     "additionalEndpoints": {"http": {"host": "10.0.0.7", "port": 31337}},
     "status": "ALIVE", "shard": 0}

The server is ``serviceEndpoint``, or ``additionalEndpoints[<endpoint>]`` when
the znode's ``endpoint`` option is set. Only ``ALIVE`` members are served.
Children not named ``member_*`` (Finagle's ``vector_*`` weight vectors,
leader-election nodes and the like) are quietly ignored.
"""

from __future__ import annotations

from typing import ClassVar

from reloader.formats._common import host_port_weight, json_object, peek_json_object, preview, with_labels
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip

MEMBER_PREFIX = "member_"
VECTOR_PREFIX = "vector_"


class ServerSetFormat(InstanceFormat):
    name: ClassVar[str] = "serverset"
    written_by: ClassVar[str] = "Twitter Finagle (ZkAnnouncer), Apache Aurora"

    def detect(self, child: str, data: bytes) -> bool:
        obj = peek_json_object(data)
        if obj is None:
            return False
        # Finagle's serverset2 also keeps weight vectors (vector_*) next to the
        # members; claiming them here lets parse() ignore them quietly.
        return "serviceEndpoint" in obj or (child.startswith(VECTOR_PREFIX) and "vector" in obj)

    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        if not child.startswith(MEMBER_PREFIX):
            return Skip(f"not a ServerSet member (name does not start with {MEMBER_PREFIX!r})", quiet=True)
        obj = json_object(data)
        if isinstance(obj, Skip):
            return obj
        status = obj.get("status")
        if status != "ALIVE":
            return Skip(f"member status is {preview(status, 20)}, not 'ALIVE'")
        if options.endpoint:
            additional = obj.get("additionalEndpoints")
            if not isinstance(additional, dict) or options.endpoint not in additional:
                return Skip(f"member has no additional endpoint {preview(options.endpoint, 40)}")
            endpoint, what = additional[options.endpoint], f"additionalEndpoints[{options.endpoint[:40]!r}]"
        else:
            endpoint, what = obj.get("serviceEndpoint"), "serviceEndpoint"
        if not isinstance(endpoint, dict):
            return Skip(f"{what} is not an object")
        # A ServerSet endpoint has no weight; an object carrying one is not trusted for it.
        server = host_port_weight({"host": endpoint.get("host"), "port": endpoint.get("port")}, what=what)
        # The member's "metadata" object is what ``prefer`` matches (reloader.traffic).
        return with_labels(server, obj.get("metadata"))


FORMAT = ServerSetFormat()
