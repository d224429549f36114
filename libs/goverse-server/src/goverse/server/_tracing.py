"""Server-side tracing: spans for served calls, registrations, object calls, pushes, deliveries.

What is traced, and how it is named (client spans on our channels: :mod:`goverse._tracing`):

- every unary gRPC call a server serves, by the OpenTelemetry gRPC instrumentation
  (``/goverse.v1.GateService/CallObject`` …), continuing the W3C context in its metadata;
- the server side of a *registration* (``/goverse.v1.GateService/Register``,
  ``/goverse.v1.NodeService/RegisterGate``): a span that ends when the first response
  (``Registered`` / the ack) is sent, never one span as long as the stream;
- each object method call on a node (``<Type>.<Method>``, internal), local calls included;
- a push: counted on the pushing call's span (``goverse.push.count``, ``.recipients``,
  ``.queued``, set when the call ends), and its W3C context in ``Envelope.trace_context``;
- each delivery of a batch of envelopes on the gate (``goverse.push.deliver``), a new trace
  *linked* to the spans of the calls that pushed them.

Health checks (``grpc.health.v1``) are not traced.

When every span is sampled out (no exporter), the calls of call streams and the object calls
they make create no span objects: they run in the caller's W3C context kept by
:mod:`goverse._unsampled`, which log lines and the calls they make use.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.trace import Link, SpanKind

from goverse import _unsampled
from goverse._tracing import (
    CALL_STREAM_METHODS,
    HEALTH_SERVICE_PREFIX,
    NO_SPAN,
    REGISTRATION_METHODS,
    OnceSpan,
    method_of,
    rpc_attributes,
    start_call_span,
)
from goverse.server import _lean_spans
from goverse.server._lean_spans import LeanSpan, Parent, Recorder
from goverse.server._logging import log_context
from goverse.v1.node_pb2 import Envelope

_tracer = trace.get_tracer("goverse")

DELIVERY_SPAN = "goverse.push.deliver"
PUSH_EVENT = "goverse.push"
ENDUSER_ID = "enduser.id"
"""Span attribute of the authenticated principal's subject (OpenTelemetry's semantic
convention for the end user)."""


def _traced_by_instrumentation(details: Any) -> bool:
    """Whether the gRPC instrumentation traces this call: not health, not a registration, not
    a call stream (each call on it has its own span: :func:`served_call_span`)."""
    method = method_of(details)
    return (
        not method.startswith(HEALTH_SERVICE_PREFIX)
        and method not in REGISTRATION_METHODS
        and method not in CALL_STREAM_METHODS
    )


def _metadata_carrier(metadata: Any) -> dict[str, str]:
    return {str(item[0]): item[1] for item in metadata or () if isinstance(item[1], str)}


class _RegistrationServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Gives the server side of a registration stream a span from the request to the first
    response; the rest of the stream runs outside any span."""

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = method_of(handler_call_details)
        if handler is None or method not in REGISTRATION_METHODS or handler.unary_stream is None:
            return handler
        behavior = handler.unary_stream

        async def traced(request: Any, context: Any) -> AsyncIterator[Any]:
            parent = propagate.extract(_metadata_carrier(context.invocation_metadata()))
            span = OnceSpan(
                _tracer.start_span(
                    method,
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes=rpc_attributes(method),
                )
            )
            stream = behavior(request, context)
            async with contextlib.aclosing(stream):
                token = otel_context.attach(trace.set_span_in_context(span.span, parent))
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    span.end()
                    return
                except BaseException as error:
                    span.end(error, context)
                    raise
                finally:
                    otel_context.detach(token)
                span.end()
                yield first
                async for item in stream:
                    yield item

        return handler._replace(unary_stream=traced)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """Interceptors that trace a server's calls (health checks excluded)."""
    return [
        aio_server_interceptor(filter_=_traced_by_instrumentation),  # type: ignore[no-untyped-call]
        _RegistrationServerInterceptor(),
    ]


def served_call_span(
    method: str, carrier: Mapping[str, str]
) -> contextlib.AbstractContextManager[OnceSpan]:
    """The SERVER span of one call served from a call stream, named as the unary call's
    span (`method`), the child of the caller's span whose W3C context `carrier` holds, and
    current for the block. The block ends it with the call's status (:meth:`OnceSpan.end_with`);
    an exception out of the block ends it with that exception's status. When every span is
    sampled out, no span: the block runs in the caller's context (:mod:`goverse._unsampled`).
    """
    if _unsampled.unsampled():
        return _unsampled.serving(carrier, NO_SPAN)
    recorder = _lean_spans.recorder()
    if recorder is not None and (parent := _lean_spans.remote_parent(carrier)) is not None:
        return _LeanServedCall(recorder.start(method, SpanKind.SERVER, parent, _rpc(method)))
    return _served_call_span(method, carrier)


def call_span(method: str) -> tuple[OnceSpan, dict[str, str]]:
    """The CLIENT span of one call sent over a call stream and the W3C context to send with
    it (:func:`goverse._tracing.start_call_span`), a lean span where one records the same."""
    recorder = _lean_spans.recorder()
    if recorder is not None and (parent := _lean_spans.current_parent()) is not None:
        span = recorder.start(method, SpanKind.CLIENT, parent, _rpc(method))
        return OnceSpan(span), _lean_spans.carrier_of(span)
    return start_call_span(method)


_rpc_by_method: dict[str, dict[str, str]] = {}


def _rpc(method: str) -> dict[str, str]:
    """:func:`rpc_attributes` of one of the few methods calls are served as, made once."""
    attributes = _rpc_by_method.get(method)
    if attributes is None:
        attributes = _rpc_by_method[method] = rpc_attributes(method)
    return attributes


_CALLER_ONLY = otel_context.Context()


class _LeanServedCall:
    """:func:`served_call_span`'s block for a lean span (see :mod:`goverse.server._lean_spans`)."""

    __slots__ = ("_block", "_span")

    def __init__(self, span: LeanSpan) -> None:
        self._span = OnceSpan(span)
        # As the SDK's way: a served call's context is its caller's, nothing of the server's.
        self._block = _lean_spans.current_span(span, _CALLER_ONLY)

    def __enter__(self) -> OnceSpan:
        self._block.__enter__()
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._block.__exit__(None, None, None)  # the status is the call's, no exception event
        self._span.end(error)


@contextlib.contextmanager
def _served_call_span(method: str, carrier: Mapping[str, str]) -> Iterator[OnceSpan]:
    parent = propagate.extract(carrier) if carrier else otel_context.Context()
    span = OnceSpan(
        _tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER, attributes=rpc_attributes(method)
        )
    )
    token = otel_context.attach(trace.set_span_in_context(span.span, parent))
    try:
        yield span
    except BaseException as error:
        span.end(error)
        raise
    finally:
        otel_context.detach(token)
        span.end()


# -- objects, pushes and deliveries -------------------------------------------------------------


_push_tally: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "goverse_push_tally", default=None
)
"""[pushes, recipients, queued] of the object call being served; None outside one."""


_NO_OBJECT_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)
"""An object call's block when every span is sampled out (stateless: shared by all)."""


def object_call_span(
    object_type: str, object_id: str, method: str
) -> contextlib.AbstractContextManager[trace.Span]:
    """The span of one object method call on a node (current for the block).

    Pushes made during the call are tallied and recorded once, as attributes, when it ends:
    an attribute per call instead of an event per push keeps pushing cheap. When every span
    is sampled out, no span (the block gets the invalid span): nothing would read it.
    """
    if _unsampled.unsampled():
        return _NO_OBJECT_SPAN
    recorder = _lean_spans.recorder()
    if recorder is not None and (parent := _lean_spans.current_parent()) is not None:
        return _LeanObjectCall(recorder, parent, object_type, object_id, method)
    return _object_call_span(object_type, object_id, method)


class _LeanObjectCall:
    """:func:`object_call_span`'s block for a lean span: as the SDK's current span, an
    exception out of it recorded on the span (an event, status ERROR)."""

    __slots__ = ("_block", "_span", "_tally", "_token")

    def __init__(
        self, recorder: Recorder, parent: Parent, object_type: str, object_id: str, method: str
    ) -> None:
        attributes = {
            "goverse.object.type": object_type,
            "goverse.object.id": object_id,
            "goverse.object.method": method,
        }
        self._span = recorder.start(
            f"{object_type}.{method}", SpanKind.INTERNAL, parent, attributes
        )
        self._block = _lean_spans.current_span(self._span)
        self._tally = [0, 0, 0]

    def __enter__(self) -> trace.Span:
        self._token = _push_tally.set(self._tally)
        return self._block.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            _record_pushes(self._span, self._tally)
            self._block.__exit__(kind, error, traceback)
            self._span.end()
        finally:
            _push_tally.reset(self._token)


def _record_pushes(span: trace.Span, tally: list[int]) -> None:
    if tally[0] and span.is_recording():
        span.set_attributes(
            {
                "goverse.push.count": tally[0],
                "goverse.push.recipients": tally[1],
                "goverse.push.queued": tally[2],
            }
        )


@contextlib.contextmanager
def _object_call_span(object_type: str, object_id: str, method: str) -> Iterator[trace.Span]:
    tally = [0, 0, 0]
    token = _push_tally.set(tally)
    try:
        with _tracer.start_as_current_span(
            f"{object_type}.{method}",
            kind=SpanKind.INTERNAL,
            attributes={
                "goverse.object.type": object_type,
                "goverse.object.id": object_id,
                "goverse.object.method": method,
            },
        ) as span:
            try:
                yield span
            finally:
                _record_pushes(span, tally)
    finally:
        _push_tally.reset(token)


_last_carrier: tuple[trace.SpanContext | None, dict[str, str]] = (None, {})


def current_trace_context() -> dict[str, str]:
    """The W3C context (``traceparent``, ``tracestate``) of the current span; empty when there
    is none. Computed once per span: a method pushing many messages pays for it once. Empty
    when every span is sampled out: a context that is not sampled links no delivery to it."""
    global _last_carrier
    if _unsampled.unsampled():
        return {}
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    cached_for, carrier = _last_carrier
    if cached_for is not span_context and cached_for != span_context:
        carrier = {}
        propagate.inject(carrier)
        _last_carrier = (span_context, carrier)
    return carrier


def record_push(recipients: int, queued: int, broadcast: bool = False) -> None:
    """Counts a push towards the object call being served (recorded when the call ends)."""
    tally = _push_tally.get()
    if tally is not None:
        tally[0] += 1
        tally[1] += recipients
        tally[2] += queued


def linked_context(carrier: Mapping[str, str]) -> trace.SpanContext | None:
    """The sampled span context `carrier` holds, or None."""
    if not carrier:
        return None
    linked = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    if not linked.is_valid or not linked.trace_flags.sampled:
        return None
    return linked


MAX_DELIVERY_LINKS = 32
"""Most pushing calls one delivery span links to; a batch from more calls links to the first."""


def deliver_traced(deliver: Callable[[Envelope], int], envelope: Envelope) -> int:
    """Runs ``deliver(envelope)`` in a delivery span linked to the call that pushed it."""
    return deliver_all_traced(deliver, (envelope,))


def deliver_all_traced(deliver: Callable[[Envelope], int], envelopes: Sequence[Envelope]) -> int:
    """Delivers a batch of envelopes in ONE delivery span linked to the calls that pushed them.

    A span per batch, not per envelope: a stream message carries many pushes and the span is
    the expensive part. A batch without a sampled trace context is delivered without a span.
    When every envelope of the batch comes from one trace, log lines written during the
    delivery carry ``pushed_by_trace_id``, that trace's id.
    """
    links: list[Link] = []
    seen: set[str] = set()
    for envelope in envelopes:
        parent = envelope.trace_context.get("traceparent")
        if not parent or parent in seen or len(links) >= MAX_DELIVERY_LINKS:
            continue
        seen.add(parent)
        linked = linked_context(envelope.trace_context)
        if linked is not None:
            links.append(Link(linked))
    if not links:
        return sum(deliver(envelope) for envelope in envelopes)
    trace_ids = {link.context.trace_id for link in links}
    pushed_by = (
        {"pushed_by_trace_id": format(next(iter(trace_ids)), "032x")} if len(trace_ids) == 1 else {}
    )
    with (
        _tracer.start_as_current_span(
            DELIVERY_SPAN,
            context=otel_context.Context(),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={"goverse.push.envelopes": len(envelopes)},
        ) as span,
        log_context(**pushed_by),
    ):
        accepted = sum(deliver(envelope) for envelope in envelopes)
        span.set_attribute("goverse.push.accepted", accepted)
        return accepted


__all__ = [
    "DELIVERY_SPAN",
    "ENDUSER_ID",
    "PUSH_EVENT",
    "REGISTRATION_METHODS",
    "call_span",
    "current_trace_context",
    "deliver_all_traced",
    "deliver_traced",
    "linked_context",
    "object_call_span",
    "record_push",
    "served_call_span",
    "server_interceptors",
]
