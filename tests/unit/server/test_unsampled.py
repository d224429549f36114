"""Unsampled calls: without an exporter, served calls carry their W3C context without spans."""

from __future__ import annotations

import re

import grpc
import pytest
from opentelemetry import trace

from goverse import _unsampled
from goverse._tracing import NO_SPAN, start_call_span
from goverse.server import (
    Telemetry,
    current_trace_context,
    object_call_span,
    served_call_span,
)
from goverse.server._logging import add_trace_context
from tests.helpers.telemetry import span_capture

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-00")


@pytest.fixture
def unsampled(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's tracer provider is a service's without an exporter, for the test."""
    provider = Telemetry("goverse-gate", environ={}).tracer_provider
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert _unsampled.unsampled()


def ids_of(carrier: dict[str, str]) -> tuple[str, str]:
    match = TRACEPARENT.fullmatch(carrier["traceparent"])
    assert match is not None, carrier
    return match.group(1), match.group(2)


def test_a_recording_provider_is_not_unsampled() -> None:
    span_capture()  # the tests' global provider: it records
    assert not _unsampled.unsampled()


def test_a_continued_context_keeps_the_trace_and_the_state_with_a_new_unsampled_span() -> None:
    carrier = _unsampled.continued({"traceparent": PARENT, "tracestate": "k=v"})
    trace_id, span_id = ids_of(carrier)
    assert trace_id == TRACE_ID
    assert span_id not in PARENT
    assert carrier["tracestate"] == "k=v"


@pytest.mark.parametrize(
    "carrier",
    [
        {},
        {"traceparent": "garbage"},
        {"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"},
        {"traceparent": PARENT.upper()},
    ],
    ids=["none", "malformed", "invalid-trace-id", "upper-case"],
)
def test_without_a_valid_context_a_new_trace_starts(carrier: dict[str, str]) -> None:
    first, second = _unsampled.continued(carrier), _unsampled.continued(carrier)
    assert ids_of(first)[0] != ids_of(second)[0]
    assert ids_of(first)[0] != "0" * 32


@pytest.mark.usefixtures("unsampled")
def test_a_served_call_passes_its_callers_trace_on_and_logs_it_without_any_span() -> None:
    with served_call_span("/goverse.v1.GateService/CallObject", {"traceparent": PARENT}) as span:
        assert span is NO_SPAN
        assert trace.get_current_span() is trace.INVALID_SPAN
        sent_span, carrier = start_call_span("/goverse.v1.NodeService/CallObject")
        assert sent_span is NO_SPAN
        trace_id, span_id = ids_of(carrier)
        assert trace_id == TRACE_ID
        assert add_trace_context(None, "info", {}) == {"trace_id": TRACE_ID, "span_id": span_id}
        with object_call_span("Counter", "c1", "Add") as object_span:
            assert object_span is trace.INVALID_SPAN
            # Not sampled: a delivery would link to nothing, so pushes carry no context.
            assert current_trace_context() == {}
        sent_span.end_with(grpc.StatusCode.OK)  # nothing to end
    assert _unsampled.current_ids() is None
    assert add_trace_context(None, "info", {}) == {}


@pytest.mark.usefixtures("unsampled")
def test_a_call_without_a_context_gets_one_trace_for_its_hops() -> None:
    with served_call_span("/goverse.v1.GateService/CallObject", {}):
        _, first = start_call_span("/goverse.v1.NodeService/CallObject")
        _, again = start_call_span("/goverse.v1.NodeService/CallObject")
    assert first == again  # one served call, one context for every call it makes
    _, outside = start_call_span("/goverse.v1.NodeService/CallObject")
    assert ids_of(outside)[0] != ids_of(first)[0]  # outside any served call: a new trace
