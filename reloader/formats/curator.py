"""Apache Curator x-discovery ``ServiceInstance`` JSON.

Written by Curator's ``ServiceDiscovery`` and everything built on it: Spring
Cloud Zookeeper (``/services/<app>/<uuid>``) and Dubbo 3 application-level
registration (``/services/<app>/<ip>:<port>``)::

    {"name": "orders", "id": "5f0c...", "address": "10.0.0.9", "port": 8080,
     "sslPort": null, "payload": {"@class": "...ZookeeperInstance",
     "metadata": {"instance_status": "UP"}}, "enabled": true, ...}

The port is ``port``, or ``sslPort`` when the znode's ``port_field`` is
``sslPort`` or when ``port`` is null (``port_field: port`` insists on
``port``). ``enabled: false``, or a
``payload.metadata.instance_status`` other than ``UP`` (Spring Cloud's
status), leaves the instance out. ``payload.metadata.weight`` is used when it
is a positive integer (number or digit string); metadata is free-form, so
anything else there is ignored and the weight stays 1.
"""

from __future__ import annotations

from typing import ClassVar

from reloader.formats._common import MAX_WEIGHT, json_object, make_server, peek_json_object, preview, with_labels
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip


def _metadata(obj: dict) -> dict:
    payload = obj.get("payload")
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _metadata_weight(metadata: dict) -> int:
    value = metadata.get("weight")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_WEIGHT:
        return value
    return 1


def _is_false(value: object) -> bool:
    return value is False or (isinstance(value, str) and value.strip().lower() == "false")


class CuratorFormat(InstanceFormat):
    name: ClassVar[str] = "curator"
    written_by: ClassVar[str] = "Apache Curator x-discovery, Spring Cloud Zookeeper, Dubbo 3 application-level"

    def detect(self, child: str, data: bytes) -> bool:
        obj = peek_json_object(data)
        return obj is not None and "address" in obj and ("port" in obj or "sslPort" in obj)

    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        obj = json_object(data)
        if isinstance(obj, Skip):
            return obj
        if "address" not in obj:
            return Skip("ServiceInstance JSON has no 'address'")
        if _is_false(obj.get("enabled")):
            return Skip("instance is disabled (enabled: false)")
        metadata = _metadata(obj)
        if "instance_status" in metadata and metadata["instance_status"] != "UP":
            return Skip(f"instance_status is {preview(metadata['instance_status'], 20)}, not 'UP'")
        if options.port_field in ("port", "sslPort"):
            field = options.port_field
        else:
            field = "port" if obj.get("port") is not None else "sslPort"
        port = obj.get(field)
        if port is None:
            return Skip(f"ServiceInstance JSON has no {field!r}")
        server = make_server(obj["address"], port, _metadata_weight(metadata), what="ServiceInstance")
        # payload.metadata is what ``prefer`` matches (reloader.traffic).
        return with_labels(server, metadata)


FORMAT = CuratorFormat()
