"""Call tracing on the OpenTelemetry API: a client span per call on our channels, its W3C
context in the call's metadata.

Only ``opentelemetry-api`` is needed, so the client SDK carries it at no cost: until the
application installs an OpenTelemetry SDK, spans are no-ops and no context is sent. The
services install one, and their servers continue the trace (``goverse.server``'s tracing).

- a unary call gets a CLIENT span named after its method (``/goverse.v1.GateService/CallObject``)
  with ``rpc.system``, ``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code``;
- a *registration* (``/goverse.v1.GateService/Register``, ``/goverse.v1.NodeService/RegisterGate``)
  gets a span from the call to its first response, never one as long as the stream;
- health checks (``grpc.health.v1``) are not traced.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from opentelemetry.trace import SpanKind, Status, StatusCode

from goverse import _unsampled, wire

_tracer = trace.get_tracer("goverse")

HEALTH_SERVICE_PREFIX = "/grpc.health.v1."
REGISTRATION_METHODS = frozenset({wire.GATE_REGISTER, wire.NODE_REGISTER_GATE})
"""Long-lived streams traced only until their first response (see the module docstring)."""
CALL_STREAM_METHODS = frozenset({wire.NODE_CALLS, wire.GATE_SESSION})
"""Streams that carry many calls: never one span for the stream, a span per call on each end
(:func:`start_call_span` here, ``goverse.server``'s ``served_call_span`` on the receiving
end)."""


def method_of(details: Any) -> str:
    """The full method name of call details (grpc passes bytes or str)."""
    method = getattr(details, "method", "") or ""
    return method.decode() if isinstance(method, bytes) else str(method)


def rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def status_code_of(error: BaseException, context: Any = None) -> grpc.StatusCode:
    """The status code an exception ends a call with (CANCELLED for cancellation)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code()
    if isinstance(error, grpc.aio.AbortError) and context is not None:
        try:
            code = context.code()
        except Exception:  # a context that cannot tell: fall through to UNKNOWN
            code = None
        if isinstance(code, grpc.StatusCode):
            return code
    if not isinstance(error, Exception):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class OnceSpan:
    """A span that ends exactly once, whoever gets there first."""

    __slots__ = ("_ended", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self._ended = False

    def end(self, error: BaseException | None = None, context: Any = None) -> None:
        """Ends the span OK, or with the status `error` ends a call with."""
        if error is None:
            self.end_with(grpc.StatusCode.OK)
        else:
            code = status_code_of(error, context)
            self.end_with(code, f"{code.name}: {error}".rstrip(": "))

    def end_with(self, code: grpc.StatusCode, description: str = "") -> None:
        if self._ended:
            return
        self._ended = True
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            self.span.set_status(Status(StatusCode.ERROR, description or code.name))
        self.span.end()


class _NoSpan(OnceSpan):
    """The span of a call whose spans are sampled out: ending it does nothing."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(trace.INVALID_SPAN)
        self._ended = True  # so every end is a no-op


NO_SPAN: OnceSpan = _NoSpan()
"""What a call gets instead of a span when every span is sampled out."""


_environment_names_provider: bool | None = None
_UNKNOWN = object()


def _no_provider() -> bool:
    """Whether no tracer provider is installed (an application without the OpenTelemetry
    SDK), read from OpenTelemetry's global: ``trace.get_tracer_provider()`` looks up an
    environment variable each time it finds none (a microsecond a call), and loads the provider
    that variable names, so while one is named this says False and lets it do that."""
    global _environment_names_provider
    if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is not None:
        return False  # installed (or a layout of the API this does not know: the usual way)
    if _environment_names_provider is None:
        _environment_names_provider = OTEL_PYTHON_TRACER_PROVIDER in os.environ
    return not _environment_names_provider


def start_call_span(method: str) -> tuple[OnceSpan, dict[str, str]]:
    """A CLIENT span for one call sent over a call stream, and the W3C context to send with
    it (empty when the span is not sampled: the receiver then starts no trace of its own
    from it, as with a unary call whose metadata carries none). When every span is sampled out,
    no span at all: the context of the call being served, or of a new trace
    (:mod:`goverse._unsampled`)."""
    if _no_provider() and not trace.get_current_span().get_span_context().is_valid:
        return NO_SPAN, {}  # what the no-op tracer would give, for a tenth of its cost
    if _unsampled.unsampled():
        return NO_SPAN, _unsampled.current()
    span = _tracer.start_span(method, kind=SpanKind.CLIENT, attributes=rpc_attributes(method))
    carrier: dict[str, str] = {}
    if span.get_span_context().is_valid:
        propagate.inject(carrier, context=trace.set_span_in_context(span))
    return OnceSpan(span), carrier


def _start_client_span(details: Any) -> tuple[OnceSpan, grpc.aio.ClientCallDetails]:
    """A CLIENT span for the call, and the call's details with the span's context added."""
    method = method_of(details)
    span = _tracer.start_span(method, kind=SpanKind.CLIENT, attributes=rpc_attributes(method))
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
    for key, value in carrier.items():
        metadata.add(key, value)
    traced = grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )
    return OnceSpan(span), traced


class _UnaryCallTracing(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A client span per unary call, ended with the call's status code."""

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        if method_of(client_call_details).startswith(HEALTH_SERVICE_PREFIX):
            return await continuation(client_call_details, request)
        span, details = _start_client_span(client_call_details)
        try:
            call = await continuation(details, request)
            try:
                code = await call.code()
            except asyncio.CancelledError:
                # Cancelling the wait for the status does not cancel the RPC: the caller gave
                # up, so the server must hear of it (it frees the call there).
                call.cancel()
                raise
            span.end_with(code, f"{code.name}: {await call.details()}")
        except BaseException as error:
            span.end(error)
            raise
        return call


class _RegistrationTracing(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """A client span for a registration stream, from the call to its first response."""

    async def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        if method_of(client_call_details) not in REGISTRATION_METHODS:
            return await continuation(client_call_details, request)
        span, details = _start_client_span(client_call_details)
        try:
            call = await continuation(details, request)
        except BaseException as error:
            span.end(error)
            raise
        call.add_done_callback(lambda _: span.end())
        return _until_first_response(call, span)


async def _until_first_response(call: Any, span: OnceSpan) -> AsyncIterator[Any]:
    iterator = call.__aiter__()
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        span.end()
        return
    except BaseException as error:
        span.end(error)
        raise
    span.end()
    yield first
    async for item in iterator:
        yield item


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that trace a channel's calls and send the W3C context with each of them."""
    return [_UnaryCallTracing(), _RegistrationTracing()]


__all__ = [
    "CALL_STREAM_METHODS",
    "HEALTH_SERVICE_PREFIX",
    "NO_SPAN",
    "REGISTRATION_METHODS",
    "OnceSpan",
    "client_interceptors",
    "method_of",
    "rpc_attributes",
    "start_call_span",
    "status_code_of",
]
