"""Objects that generate load on real nodes (``--objects tests.helpers.load_objects``)."""

from __future__ import annotations

import asyncio
import time

from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value

from goverse.objects import Object

STAMP_BYTES = 8


def stamped(padding: int) -> BytesValue:
    """A push payload: CLOCK_MONOTONIC in nanoseconds (system-wide on Linux), then padding."""
    return BytesValue(value=time.monotonic_ns().to_bytes(STAMP_BYTES, "big") + b"x" * padding)


def stamp_of(payload: bytes) -> int:
    """The stamp of a serialized :func:`stamped` payload (an ``Any.value``), without parsing:
    one tag byte and a one- or two-byte length come first."""
    offset = 2 if payload[1] < 0x80 else 3
    return int.from_bytes(payload[offset : offset + STAMP_BYTES], "big")


class Ticker(Object):
    """Pushes timestamped messages at a steady rate, to measure delivery latency."""

    async def Run(self, request: Struct) -> Struct:
        """Pushes :func:`stamped` payloads to the client ids in ``request["ids"]``,
        ``request["rate"]`` pushes a second for ``request["seconds"]``, each padded with
        ``request["padding"]`` bytes. Returns how many pushes were made (``pushed``) and how
        many recipients they were queued for (``queued``)."""
        fields = request.fields
        ids = [value.string_value for value in fields["ids"].list_value.values]
        rate = fields["rate"].number_value
        total = int(rate * fields["seconds"].number_value)
        padding = int(fields["padding"].number_value)
        started = time.monotonic()
        pushed = queued = 0
        while pushed < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while pushed < due:
                queued += self.push(ids, stamped(padding))
                pushed += 1
            await asyncio.sleep(0.005)
        return _result(pushed, queued)


def _result(pushed: int, queued: int) -> Struct:
    result = Struct()
    result.update({"pushed": pushed, "queued": queued})
    return result


class Blob(Object):
    """Answers and pushes payloads of a requested size, to test message-size limits."""

    async def Make(self, request: Int64Value) -> BytesValue:
        """Returns `request.value` bytes."""
        return BytesValue(value=b"b" * request.value)

    async def Measure(self, request: BytesValue) -> Int64Value:
        """Returns how many bytes `request` carries (to send payloads of a given size)."""
        return Int64Value(value=len(request.value))

    async def PushToCaller(self, request: Int64Value) -> Int64Value:
        """Pushes `request.value` bytes to the caller; returns how many clients it queued for."""
        return Int64Value(
            value=self.push(self.caller.client_id, BytesValue(value=b"p" * request.value))
        )
