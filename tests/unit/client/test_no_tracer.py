"""An application without the OpenTelemetry SDK: its calls get no span and send no context,
unless the context it runs in carries a trace (which they then continue)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from goverse import _tracing
from goverse._tracing import NO_SPAN, start_call_span

METHOD = "/goverse.v1.GateService/CallObject"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


@pytest.fixture(autouse=True)
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracer provider installed, none named by the environment, for the test (and the
    module's tracer a no-op one: another test's provider may have become its real one)."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(_tracing, "_tracer", trace.NoOpTracer())
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    monkeypatch.setattr(_tracing, "_environment_names_provider", None)


def test_a_call_gets_no_span_and_sends_no_context() -> None:
    span, carrier = start_call_span(METHOD)
    assert span is NO_SPAN
    assert carrier == {}


def test_a_call_made_in_a_traced_context_sends_that_context_on() -> None:
    """What the no-op tracer does: the current span's context goes with the call."""
    parent = SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(parent)):
        _, carrier = start_call_span(METHOD)
    assert carrier["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"


def test_a_provider_the_environment_names_is_left_to_opentelemetry_to_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_TRACER_PROVIDER", "some_provider")
    assert not _tracing._no_provider()
