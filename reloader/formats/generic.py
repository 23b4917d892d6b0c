"""Generic JSON: ``{"host": ..., "port": ..., "weight": ...}`` in the child data.

Airbnb Nerve writes this (without path encoding: ``{"host": "10.0.0.3",
"port": 8080, "name": "i-0abc", "weight": 10, "labels": {...}}``), and so do
many home-grown registries. ``port`` may be a number or a digit string;
``weight`` is optional, a non-negative integer, and 0 means "down".
"""

from __future__ import annotations

from typing import ClassVar

from reloader.formats._common import host_port_weight, json_object, peek_json_object, with_labels
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip


class GenericJsonFormat(InstanceFormat):
    name: ClassVar[str] = "json"
    written_by: ClassVar[str] = "Airbnb Nerve, home-grown registries"

    def detect(self, child: str, data: bytes) -> bool:
        obj = peek_json_object(data)
        return obj is not None and "host" in obj and "port" in obj

    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        obj = json_object(data)
        if isinstance(obj, Skip):
            return obj
        # "labels" is what ``prefer`` matches (reloader.traffic).
        return with_labels(host_port_weight(obj), obj.get("labels"))


FORMAT = GenericJsonFormat()
