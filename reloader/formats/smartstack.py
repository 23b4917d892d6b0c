"""Airbnb SmartStack: Nerve's ZooKeeper reporter with ``use_path_encoding``.

Nerve then puts the instance JSON into the child *name* so that Synapse can
read a whole service with one ``get_children``::

    base64_<len>_<urlsafe base64 of the JSON>_<sequence>

``<len>`` is the length of the base64 text, which is needed because the
URL-safe alphabet itself contains ``_``. The sequence is ZooKeeper's
10-digit suffix (``ephemeral_sequential``, Nerve's default); with a plain
``ephemeral`` node the name ends right after the trailing ``_``. The decoded
JSON is read by the same rules as the generic ``json`` format.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import ClassVar

from reloader.formats._common import MAX_CHILD_NAME, MAX_DATA_BYTES, host_port_weight, with_labels
from reloader.formats.base import FormatOptions, InstanceFormat, ParseResult, Skip

_PREFIX = re.compile(r"^base64_([0-9]{1,6})_")
_URLSAFE_B64 = re.compile(r"^[A-Za-z0-9_-]*={0,2}\Z")
_SUFFIX = re.compile(r"^_[0-9]*\Z")


class SmartStackFormat(InstanceFormat):
    name: ClassVar[str] = "smartstack"
    written_by: ClassVar[str] = "Airbnb Nerve (SmartStack) with use_path_encoding"
    from_name: ClassVar[bool] = True

    def detect(self, child: str, data: bytes) -> bool:
        return _PREFIX.match(child) is not None

    def parse(self, child: str, data: bytes, options: FormatOptions) -> ParseResult:
        if len(child) > MAX_CHILD_NAME:
            return Skip(f"child name too long ({len(child)} characters)")
        match = _PREFIX.match(child)
        if not match:
            return Skip("child name does not start with base64_<length>_")
        length = int(match.group(1))
        start = match.end()
        encoded = child[start : start + length]
        if len(encoded) != length or not _SUFFIX.match(child[start + length :]):
            return Skip(f"child name does not hold {length} base64 characters followed by _<sequence>")
        if not _URLSAFE_B64.match(encoded):
            return Skip("encoded part of the child name is not URL-safe base64")
        padded = encoded + "=" * (-len(encoded) % 4)
        try:
            raw = base64.urlsafe_b64decode(padded)
        except (binascii.Error, ValueError):
            return Skip("encoded part of the child name is not valid base64")
        if len(raw) > MAX_DATA_BYTES:
            return Skip(f"decoded child name too large ({len(raw)} bytes)")
        try:
            value = json.loads(raw.decode("utf-8", errors="strict"))
        except UnicodeDecodeError:
            return Skip("decoded child name is not UTF-8")
        except RecursionError:
            return Skip("decoded child name is JSON nested too deeply")
        except ValueError:
            return Skip("decoded child name is not JSON")
        if not isinstance(value, dict):
            return Skip(f"decoded child name is JSON {type(value).__name__}, expected an object")
        # Nerve's "labels", as in the json format, are what ``prefer`` matches.
        return with_labels(host_port_weight(value, what="nerve"), value.get("labels"))


FORMAT = SmartStackFormat()
