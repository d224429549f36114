"""OTLP span export: finished SDK spans written straight in OTLP's wire format.

The OTLP exporter builds a protobuf object per span, per attribute and per value (``PB2Span(...)``
with keyword arguments) and hashes each span's resource to group them: about 70 µs a span on
the 2-core machine of docs/performance.md, spent on the exporter's thread but holding the same
GIL and cores as the calls being traced. Here a span is appended as bytes: fixed fields packed
by ``struct``, its attributes encoded once per distinct key and value and then reused, its
resource and scope once per process. :class:`OTLPBytesSpanExporter` is the gRPC OTLP exporter
(endpoint, headers, TLS, compression, retries, timeouts: all its ``OTEL_EXPORTER_OTLP_*``
settings) with only the encoding replaced; the bytes parse to the message the SDK's encoder
builds (``tests/unit/server/test_otlp_spans.py`` compares them).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from goverse.server._lean_spans import LeanSpan

_log = logging.getLogger(__name__)

_KEY_VALUES_KEPT = 4096
"""Most encoded attributes (key and value) kept for reuse; the cache starts over when full."""
_CACHED_VALUE_CHARS = 256
"""Longer string values are encoded each time (ids of objects repeat, free text does not)."""
_INT64 = range(-(2**63), 2**63)
_CACHED = frozenset((str, bool, int))
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200
"""``SpanFlags``: whether the parent's remoteness is known, and that it is remote."""

_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_IDS = struct.Struct(">QQ")
"""A trace id as OTLP's 16 big-endian bytes."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = tuple(_varint(value) for value in range(1 << 14))


def varint(value: int) -> bytes:
    """`value` (not negative, below 2**64) as a protobuf varint."""
    return _SMALL_VARINTS[value] if value < 1 << 14 else _varint(value)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _text(number: int, text: str) -> bytes:
    return _field(number, text.encode()) if text else b""


def _uint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


# -- attributes ---------------------------------------------------------------------------------


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` message's bytes (as the SDK's ``_encode_value``; its errors too)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items())
        return _field(6, pairs)
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message's bytes."""
    return _text(1, key) + _field(2, _any_value(value))


_key_values: dict[tuple[int, str, type, Any], bytes] = {}


def _attribute(number: int, key: str, value: Any) -> bytes:
    """The field `number` holding one attribute; encoded once per distinct key and scalar
    value (repeated attributes, such as ``rpc.method``, are most of a span's bytes)."""
    kind = type(value)
    cacheable = kind in (str, bool, int) and (kind is not str or len(value) <= _CACHED_VALUE_CHARS)
    if not cacheable:
        return _field(number, _key_value(key, value))
    cache_key = (number, key, kind, value)
    encoded = _key_values.get(cache_key)
    if encoded is None:
        if len(_key_values) >= _KEY_VALUES_KEPT:
            _key_values.clear()
        encoded = _key_values[cache_key] = _field(number, _key_value(key, value))
    return encoded


def _attributes(number: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated ``KeyValue`` field `number`; an attribute that cannot be encoded is left out
    and logged, as the SDK's encoder does."""
    if not attributes:
        return b""
    parts = []
    for key, value in attributes.items():
        try:
            parts.append(_attribute(number, key, value))
        except Exception as error:  # as the SDK's encoder: one bad value loses only itself
            _log.exception("Failed to encode key %s: %s", key, error)
    return b"".join(parts)


# -- spans --------------------------------------------------------------------------------------


def _flags(parent: SpanContext | None) -> bytes:
    """``SpanFlags`` as a fixed32 (without its tag): whether `parent` is remote is known."""
    remote = parent is not None and parent.is_remote
    return _FIXED32.pack(_FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if remote else 0))


def _trace_id(trace_id: int) -> bytes:
    return _IDS.pack(trace_id >> 64, trace_id & 0xFFFF_FFFF_FFFF_FFFF)


def _events(span: ReadableSpan | LeanSpan) -> bytes:
    parts = []
    for event in span.events:
        body = (
            b"\x09"
            + _FIXED64.pack(event.timestamp)
            + _text(2, event.name)
            + _attributes(3, event.attributes)
            + _uint(4, event.dropped_attributes)
        )
        parts.append(_field(11, body))
    return b"".join(parts)


def _links(span: ReadableSpan | LeanSpan) -> bytes:
    parts = []
    for link in span.links:
        body = (
            _field(1, _trace_id(link.context.trace_id))
            + _field(2, link.context.span_id.to_bytes(8, "big"))
            + _attributes(4, link.attributes)
            + _uint(5, link.dropped_attributes)
            + b"\x35"  # field 6, fixed32
            + _flags(link.context)
        )
        parts.append(_field(13, body))
    return b"".join(parts)


_LEAN_IDS = struct.Struct(">HQQHQ")
"""A span's trace id and span id with their tags and lengths (``0a 10``, ``12 08``)."""
_LEAN_IDS_PARENT = struct.Struct(">HQQHQHQ")
"""The same and the parent's span id (``22 08``)."""
_LEAN_TIMES = struct.Struct("<BQBQ")
"""A span's start and end times with their tags (fixed64 fields 7 and 8)."""
_KINDS = {kind: _uint(6, kind.value + 1) for kind in SpanKind}
_UNSET_STATUS = _field(15, b"")
_LOCAL_PARENT_FLAGS = b"\x85\x01" + _FIXED32.pack(_FLAGS_HAS_IS_REMOTE)
_REMOTE_PARENT_FLAGS = b"\x85\x01" + _FIXED32.pack(_FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE)
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_names: dict[str, bytes] = {}


def _status(span: ReadableSpan | LeanSpan) -> bytes:
    status = span.status
    if status.status_code is StatusCode.UNSET and not status.description:
        return _UNSET_STATUS
    return _field(15, _text(2, status.description or "") + _uint(3, status.status_code.value))


def _lean_attributes(attributes: Mapping[str, Any]) -> bytes:
    """:func:`_attributes` (field 9) of a lean span, the cache looked up inline."""
    parts = []
    for key, value in attributes.items():
        encoded = _key_values.get((9, key, type(value), value)) if type(value) in _CACHED else None
        parts.append(encoded if encoded is not None else _attributes(9, {key: value}))
    return b"".join(parts)


def _encode_lean(span: LeanSpan) -> bytes:
    """:func:`encode_span` of a lean span, read from its own fields (no ``SpanContext``)."""
    parent = span.lean_parent
    trace_id = parent.trace_id
    name = _names.get(span.name)
    if name is None:
        if len(_names) >= _KEY_VALUES_KEPT:
            _names.clear()
        name = _names[span.name] = _text(5, span.name)
    if parent.span_id is None:
        ids = _LEAN_IDS.pack(0x0A10, trace_id >> 64, trace_id & _MASK64, 0x1208, span.span_id)
    else:
        ids = _LEAN_IDS_PARENT.pack(
            0x0A10, trace_id >> 64, trace_id & _MASK64, 0x1208, span.span_id, 0x2208, parent.span_id
        )
    if parent.trace_state:  # field 3, between the span id and the parent span id
        ids = ids[:28] + _text(3, parent.trace_state.to_header()) + ids[28:]
    # The encoder is the lean span's reader: its fields are read as they are, not copied.
    extras = b""
    if span.dropped_attributes or span._events or span._links:
        extras = (
            _uint(10, span.dropped_attributes)
            + _events(span)
            + _uint(12, span.dropped_events)
            + _links(span)
            + _uint(14, span.dropped_links)
        )
    body = b"".join(
        (
            ids,
            name,
            _KINDS[span.kind],
            _LEAN_TIMES.pack(0x39, span.start_time, 0x41, span.end_time or 0),
            _lean_attributes(span._attributes),
            extras,
            _status(span),
            _REMOTE_PARENT_FLAGS if parent.remote else _LOCAL_PARENT_FLAGS,
        )
    )
    return b"\x12" + varint(len(body)) + body  # as an element of ScopeSpans.spans


def encode_span(span: ReadableSpan | LeanSpan) -> bytes:
    """One ``Span`` message's bytes (as the SDK's ``_encode_span``)."""
    if isinstance(span, LeanSpan):
        return _encode_lean(span)
    context = span.get_span_context()
    assert context is not None, "a finished SDK span has its context"
    parent = span.parent
    trace_state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
    body = b"".join(
        (
            b"\x0a\x10",
            _trace_id(context.trace_id),
            b"\x12\x08",
            context.span_id.to_bytes(8, "big"),
            _text(3, trace_state),
            b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"",
            _text(5, span.name),
            _uint(6, span.kind.value + 1),  # OTLP's SpanKind counts from UNSPECIFIED = 0
            b"\x39",
            _FIXED64.pack(span.start_time or 0),
            b"\x41",
            _FIXED64.pack(span.end_time or 0),
            _attributes(9, span.attributes),
            _uint(10, span.dropped_attributes),
            _events(span),
            _uint(12, span.dropped_events),
            _links(span),
            _uint(14, span.dropped_links),
            _status(span),
            b"\x85\x01",  # field 16, fixed32
            _flags(parent),
        )
    )
    return _field(2, body)  # as an element of ScopeSpans.spans


# -- the request --------------------------------------------------------------------------------

_resources: dict[int, tuple[Resource, bytes]] = {}
_scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}
_SHARED_KEPT = 64
"""Most resources and scopes whose encoding is kept (a process has one resource, a few scopes)."""


def _encoded_resource(resource: Resource) -> bytes:
    kept = _resources.get(id(resource))
    if kept is None or kept[0] is not resource:
        if len(_resources) >= _SHARED_KEPT:
            _resources.clear()
        kept = _resources[id(resource)] = (resource, _field(1, _attributes(1, resource.attributes)))
    return kept[1]


def _encoded_scope(scope: InstrumentationScope | None) -> bytes:
    kept = _scopes.get(id(scope))
    if kept is None or kept[0] is not scope:
        if len(_scopes) >= _SHARED_KEPT:
            _scopes.clear()
        body = b""
        if scope is not None:
            body = _text(1, scope.name) + _text(2, scope.version or "")
            body += _attributes(3, scope.attributes)
        encoded = _field(1, body) + _text(3, (scope.schema_url or "") if scope is not None else "")
        kept = _scopes[id(scope)] = (scope, encoded)
    return kept[1]


def _grouped(
    spans: Iterable[ReadableSpan],
) -> dict[Resource, dict[InstrumentationScope | None, list[ReadableSpan]]]:
    """Spans by resource and scope, first seen first, as the SDK's encoder groups them (by
    equality); each object is hashed once, not once per span."""
    by_object: dict[tuple[int, int], list[ReadableSpan]] = {}
    objects: dict[tuple[int, int], tuple[Resource, InstrumentationScope | None]] = {}
    for span in spans:
        scope = span.instrumentation_scope or None
        key = (id(span.resource), id(scope))
        found = by_object.get(key)
        if found is None:
            found = by_object[key] = []
            objects[key] = (span.resource, scope)
        found.append(span)
    groups: dict[Resource, dict[InstrumentationScope | None, list[ReadableSpan]]] = {}
    for key, members in by_object.items():
        resource, scope = objects[key]
        groups.setdefault(resource, {}).setdefault(scope, []).extend(members)
    return groups


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest``'s bytes for `spans`."""
    parts = []
    for resource, scopes in _grouped(spans).items():
        scope_spans = b"".join(
            _field(2, _encoded_scope(scope) + b"".join(encode_span(span) for span in members))
            for scope, members in scopes.items()
        )
        body = _encoded_resource(resource) + scope_spans + _text(3, resource.schema_url)
        parts.append(_field(1, body))
    return b"".join(parts)


class OTLPBytesSpanExporter(OTLPSpanExporter):
    """The SDK's gRPC OTLP span exporter, its spans encoded by :func:`encode_request`."""

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        # The stub serializes what this returns; parsing the bytes back is C work (about
        # 1 µs a span), the SDK's encoder in Python about 70.
        return ExportTraceServiceRequest.FromString(encode_request(data))


__all__ = ["OTLPBytesSpanExporter", "encode_request", "encode_span", "varint"]
