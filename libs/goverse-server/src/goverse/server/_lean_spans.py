"""Lean spans: the spans goverse records for each call, without the SDK's span machinery.

A relayed call records four spans (the gate's SERVER and CLIENT spans, the node's SERVER span,
the object's span). The OpenTelemetry SDK spends 40-55 µs starting and ending each on the
2-core machine of docs/performance.md: its sampler builds a result object, its attributes are
cleaned value by value under a lock, a span holds three bounded collections and a readable
copy is made when it ends. That was most of what tracing cost a call. A :class:`LeanSpan` is
the same span for what reads it: it implements the OpenTelemetry ``Span`` API (an object's
method may set attributes on it, add events, record exceptions, start child spans through
any tracer), it is the current span of its block, and it is exported by the process's own
span processors and OTLP exporter (:mod:`goverse.server._otlp_spans`) in the same batches as
the SDK's spans, with the same resource and instrumentation scope.

They are used only where they record exactly what the SDK would: :func:`install` is called by
``Telemetry`` when its only exporter is OTLP, the sampler is the SDK's default (parent-based,
always on) and the propagators are the default (W3C trace context and baggage); spans are
made lean only for a sampled parent (or none) and a caller whose context holds nothing but
``traceparent`` and ``tracestate``. Anything else (another sampler, a console exporter, span
limits set in the environment, baggage, a span processor added to the provider later) goes the
SDK's way. ``tests/unit/server/test_lean_spans.py`` runs the same calls both ways and compares
every field of every span.
"""

from __future__ import annotations

import logging
import random
import re
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, NamedTuple

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, SpanProcessor, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util import types

_log = logging.getLogger(__name__)

MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
MAX_LINKS = 128
"""The SDK's default span limits (a lean span is used only when none is set otherwise)."""

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""Version 00 of W3C's ``traceparent``: trace id, parent span id, flags."""
_SCALAR_TYPES = frozenset((str, bool, int, float))
_ABSENT = object()
_UNSET = Status(StatusCode.UNSET)
_NO_TRACE_STATE = TraceState()


class Parent(NamedTuple):
    """What a lean span continues: its caller's trace and span, or a new trace."""

    trace_id: int
    span_id: int | None
    remote: bool
    trace_state: TraceState


def _new_trace() -> Parent:
    return Parent(random.getrandbits(128) or 1, None, False, _NO_TRACE_STATE)


def remote_parent(carrier: Mapping[str, str]) -> Parent | None:
    """The parent a caller's W3C context names, or a new trace when it names none; None when
    a lean span would not record what the SDK records for it (a parent not sampled, a
    malformed ``traceparent``, anything besides ``traceparent`` and ``tracestate``)."""
    if not carrier:
        return _new_trace()
    header = carrier.get(TRACEPARENT)
    if header is None or len(carrier) > (2 if TRACESTATE in carrier else 1):
        return None
    found = _TRACEPARENT.fullmatch(header)
    if found is None or not int(found[3], 16) & 1:
        return None
    trace_id, span_id = int(found[1], 16), int(found[2], 16)
    if not trace_id or not span_id:
        return None
    state = carrier.get(TRACESTATE)
    trace_state = TraceState.from_header([state]) if state else _NO_TRACE_STATE
    return Parent(trace_id, span_id, True, trace_state)


def current_parent() -> Parent | None:
    """The parent of a span started now: the current span (a new trace when there is none);
    None when a lean span would not record what the SDK records (an unsampled current span,
    baggage that must travel on)."""
    if baggage.get_all():
        return None
    span = trace.get_current_span()
    if isinstance(span, LeanSpan):
        return Parent(span.lean_parent.trace_id, span.span_id, False, span.lean_parent.trace_state)
    context = span.get_span_context()
    if not context.is_valid:
        return _new_trace()
    if not context.trace_flags.sampled:
        return None
    return Parent(context.trace_id, context.span_id, False, context.trace_state)


class _Sampled:
    """What a batch span processor checks of a finished span (``span.context``)."""

    trace_flags = _SAMPLED

    def __bool__(self) -> bool:
        return True


_SAMPLED_CONTEXT = _Sampled()


class LeanSpan(trace.Span):
    """A recording span of goverse's own calls; see the module docstring."""

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        kind: SpanKind,
        parent: Parent,
        attributes: dict[str, types.AttributeValue],
    ) -> None:
        self._recorder = recorder
        self.name = name
        self.kind = kind
        self.lean_parent = parent
        self.span_id = random.getrandbits(64) or 1
        self.start_time = time.time_ns()
        self.end_time: int | None = None
        self._attributes = attributes
        self._events: deque[Event] | None = None  # made by the first event (few spans have one)
        self._links: deque[Link] | None = None
        self.dropped_attributes = 0
        self.dropped_events = 0
        self.dropped_links = 0
        self.status = _UNSET
        self._context: SpanContext | None = None  # made when asked for

    # -- what the exporter reads (as of an SDK ReadableSpan) ------------------------------------

    context = _SAMPLED_CONTEXT
    """A batch span processor exports a finished span whose context says sampled."""

    @property
    def resource(self) -> Resource:
        return self._recorder.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._recorder.scope

    @property
    def parent(self) -> SpanContext | None:
        parent = self.lean_parent
        if parent.span_id is None:
            return None
        return SpanContext(
            parent.trace_id,
            parent.span_id,
            is_remote=parent.remote,
            trace_flags=_SAMPLED,
            trace_state=parent.trace_state,
        )

    @property
    def attributes(self) -> Mapping[str, types.AttributeValue]:
        return MappingProxyType(self._attributes)

    @property
    def events(self) -> Sequence[Event]:
        return tuple(self._events) if self._events else ()

    @property
    def links(self) -> Sequence[Link]:
        return tuple(self._links) if self._links else ()

    # -- the Span API ---------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            parent = self.lean_parent
            context = self._context = SpanContext(
                parent.trace_id,
                self.span_id,
                is_remote=False,
                trace_flags=_SAMPLED,
                trace_state=parent.trace_state,
            )
        return context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        if self.end_time is not None:
            return
        cleaned = _clean_attribute_value(attributes, None)  # the SDK's own checks
        self.dropped_attributes += len(attributes) - len(cleaned)
        for key, value in cleaned.items():
            self._store(key, value)

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self.end_time is not None:
            return
        attributes = self._attributes
        if (
            type(value) in _SCALAR_TYPES
            and type(key) is str
            and key
            and key not in attributes
            and len(attributes) < MAX_ATTRIBUTES
        ):
            attributes[key] = value  # the common case: a new key, nothing to clean or drop
            return
        if type(value) not in _SCALAR_TYPES:
            value = _clean_attribute_value(value, None)
        if type(key) is not str or not key:
            _log.warning("Invalid span attribute key %r (dropped)", key)
            self.dropped_attributes += 1
            return
        self._store(key, value)

    def _store(self, key: str, value: Any) -> None:
        # As the SDK's BoundedAttributes: a key set again moves to the end; a new key past
        # the limit drops the oldest.
        attributes = self._attributes
        if attributes.pop(key, _ABSENT) is _ABSENT and len(attributes) >= MAX_ATTRIBUTES:
            del attributes[next(iter(attributes))]
            self.dropped_attributes += 1
        attributes[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is not None:
            return
        if self._events is None:
            self._events = deque(maxlen=MAX_EVENTS)  # as the SDK's: past the limit the oldest go
        elif len(self._events) == MAX_EVENTS:
            self.dropped_events += 1
        kept = BoundedAttributes(MAX_ATTRIBUTES, attributes, immutable=True)
        self._events.append(Event(name, kept, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is not None or not context.is_valid:
            return
        if self._links is None:
            self._links = deque(maxlen=MAX_LINKS)
        elif len(self._links) == MAX_LINKS:
            self.dropped_links += 1
        kept = BoundedAttributes(MAX_ATTRIBUTES, attributes, immutable=True)
        self._links.append(Link(context, kept))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET changes nothing.
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        recorded: dict[str, types.AttributeValue] = {
            "exception.type": (
                f"{module}.{kind.__qualname__}"
                if module and module != "builtins"
                else kind.__qualname__
            ),
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else time.time_ns()
        self._recorder.finish(self)


def _processors(provider: TracerProvider) -> tuple[SpanProcessor, ...]:
    # The SDK keeps a provider's processors as a tuple it replaces when one is added.
    return provider._active_span_processor._span_processors


@dataclass(frozen=True)
class Recorder:
    """Where lean spans of one tracer provider go: its span processors, its resource, the
    instrumentation scope goverse's tracer has there."""

    provider: TracerProvider
    processors: tuple[SpanProcessor, ...]
    resource: Resource
    scope: InstrumentationScope

    @classmethod
    def of(cls, provider: TracerProvider, scope: InstrumentationScope) -> Recorder:
        """The recorder of `provider` as its span processors are now."""
        return cls(provider, _processors(provider), provider.resource, scope)

    def finish(self, span: LeanSpan) -> None:
        for processor in self.processors:
            processor.on_end(span)  # type: ignore[arg-type]  # read as a ReadableSpan

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: Parent,
        attributes: Mapping[str, types.AttributeValue],
    ) -> LeanSpan:
        return LeanSpan(self, name, kind, parent, dict(attributes))


_installed: Recorder | None = None


def install(recorder: Recorder | None) -> None:
    """Makes `recorder` the one lean spans go to while its provider is the global one and has
    the same span processors (None: no lean spans)."""
    global _installed
    _installed = recorder


def recorder() -> Recorder | None:
    """The recorder of the global tracer provider, if lean spans are on for it: not once the
    provider has another span processor (one added later sees every span start and end)."""
    installed = _installed
    if installed is None or trace.get_tracer_provider() is not installed.provider:
        return None
    if _processors(installed.provider) is not installed.processors:
        return None
    return installed


class current_span:  # noqa: N801  # a block, named as what it makes current
    """A block with `span` the current span, in the current context or in `base`; an exception
    out of it is recorded on the span and sets its status to ERROR (as the SDK's ``use_span``),
    the span is not ended."""

    __slots__ = ("_base", "_span", "_token")

    def __init__(self, span: LeanSpan, base: otel_context.Context | None = None) -> None:
        self._span = span
        self._base = base
        self._token: object = None

    def __enter__(self) -> LeanSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self._span, self._base))
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback_: TracebackType | None,
    ) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        if isinstance(error, Exception) and self._span.is_recording():
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def carrier_of(span: LeanSpan) -> dict[str, str]:
    """The W3C context a call made in `span` sends: its ``traceparent`` (and ``tracestate``)."""
    parent = span.lean_parent
    carrier = {TRACEPARENT: f"00-{parent.trace_id:032x}-{span.span_id:016x}-01"}
    if parent.trace_state:
        carrier[TRACESTATE] = parent.trace_state.to_header()
    return carrier


__all__ = [
    "LeanSpan",
    "Parent",
    "Recorder",
    "carrier_of",
    "current_parent",
    "current_span",
    "install",
    "recorder",
    "remote_parent",
]
