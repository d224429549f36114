"""Wire helpers shared by the bench client, the bench objects and the bare server.

Every benchmark message is a ``google.protobuf.BytesValue`` whose value starts with a 16-byte
stamp: a sequence number and the sender's ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock
for every process of the machine), padded to the payload size. Parameters of bench methods
travel as JSON in a ``google.protobuf.StringValue``: no generated code of our own is needed.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

_STAMP = struct.Struct("<QQ")
STAMP_BYTES = _STAMP.size


def stamp(seq: int, size: int) -> bytes:
    """A payload of `size` bytes (at least 16) carrying `seq` and the send time now."""
    head = _STAMP.pack(seq, time.monotonic_ns())
    return head + b"x" * max(size - STAMP_BYTES, 0)


def read_stamp(value: bytes) -> tuple[int, int]:
    """(seq, send time in monotonic ns) of a payload made by :func:`stamp`."""
    seq, sent = _STAMP.unpack_from(value)
    return int(seq), int(sent)


def stamped(seq: int, size: int) -> BytesValue:
    return BytesValue(value=stamp(seq, size))


def packed_stamp(seq: int, size: int) -> any_pb2.Any:
    """A stamped BytesValue packed into Any, as pushes travel."""
    packed = any_pb2.Any()
    packed.Pack(stamped(seq, size))
    return packed


def unpack_stamp(message: any_pb2.Any) -> tuple[int, int]:
    """(seq, send ns) of a pushed ``Any`` holding a stamped BytesValue."""
    value = BytesValue()
    if not message.Unpack(value):
        raise ValueError(f"not a BytesValue: {message.TypeName()}")
    return read_stamp(value.value)


def params(**values: Any) -> StringValue:
    return StringValue(value=json.dumps(values))


def read_params(message: StringValue) -> dict[str, Any]:
    decoded = json.loads(message.value or "{}")
    if not isinstance(decoded, dict):
        raise ValueError("parameters must be a JSON object")
    return decoded
