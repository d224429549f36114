"""Lean spans: goverse's per-call spans record what the SDK's spans record (the same names,
kinds, parentage, attributes, statuses and events, exported in the same OTLP bytes), and the
SDK's spans are used wherever a lean span could not (other samplers, exporters, propagators,
limits, baggage, a parent not sampled)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from goverse.errors import NotFound
from goverse.server import _lean_spans, _tracing
from goverse.server._lean_spans import MAX_ATTRIBUTES, MAX_EVENTS, LeanSpan, Recorder
from goverse.server._logging import add_trace_context
from goverse.server._otlp_spans import OTLPBytesSpanExporter, encode_request
from goverse.server._telemetry import Telemetry, _lean_recorder
from tests.helpers.telemetry import SpanCapture, span_capture

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"
CARRIER = {"traceparent": TRACEPARENT, "tracestate": "vendor=value,other=x"}
GATE_METHOD = "goverse.v1.GateService/CallObject"
NODE_METHOD = "goverse.v1.NodeService/CallObject"


class _Captured:
    """The spans the test process ends while capturing, lean or not."""

    def __init__(self, capture: SpanCapture, lean: bool) -> None:
        self.capture = capture
        self.lean = lean
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        self.recorder = Recorder.of(provider, _sdk_scope())

    def run(self, work: Callable[[], object]) -> list[ReadableSpan]:
        _lean_spans.install(self.recorder if self.lean else None)
        self.capture.start()
        try:
            work()
        finally:
            self.capture.stop()
            _lean_spans.install(None)
        return list(self.capture._spans)


def _lean(span: object) -> bool:
    return type(span) is LeanSpan


def _sdk_scope() -> Any:
    span = trace.get_tracer("goverse").start_span("scope probe")
    span.end()
    return span.instrumentation_scope  # type: ignore[attr-defined]


@pytest.fixture
def record() -> Iterator[Callable[[Callable[[], object], bool], list[ReadableSpan]]]:
    capture = span_capture()

    def run(work: Callable[[], object], lean: bool) -> list[ReadableSpan]:
        return _Captured(capture, lean).run(work)

    yield run
    _lean_spans.install(None)


def _shape(spans: list[ReadableSpan]) -> list[dict[str, Any]]:
    """What a span records, its ids replaced by what they refer to (a trace, a span's index,
    the caller) and its times left out: equal for lean and SDK spans of the same work."""
    index = {span.get_span_context().span_id: i for i, span in enumerate(spans)}  # type: ignore[union-attr]
    shapes = []
    for span in spans:
        context = span.get_span_context()
        assert context is not None
        parent = span.parent
        shapes.append(
            {
                "name": span.name,
                "kind": span.kind,
                "trace": "caller's" if context.trace_id == TRACE_ID else "new",
                "trace_state": context.trace_state.to_header(),
                "parent": (
                    None
                    if parent is None
                    else ("caller", parent.is_remote)
                    if parent.span_id == PARENT_ID
                    else (index.get(parent.span_id), parent.is_remote)
                ),
                "sampled": context.trace_flags.sampled,
                "attributes": dict(span.attributes or {}),
                "status": (span.status.status_code, span.status.description),
                "events": [
                    (
                        event.name,
                        {
                            key: value
                            for key, value in (event.attributes or {}).items()
                            if key != "exception.stacktrace"
                        },
                    )
                    for event in span.events
                ],
                "links": [
                    (link.context.span_id, dict(link.attributes or {})) for link in span.links
                ],
                "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
                "scope": span.instrumentation_scope,
                "resource": span.resource,
            }
        )
    return shapes


def _relayed_call() -> None:
    """As a gate and a node serve one call: served span, CLIENT span, served span, object span."""
    with _tracing.served_call_span(GATE_METHOD, CARRIER) as gate_span:
        gate_span.span.set_attribute("enduser.id", "client-7")
        client, carrier = _tracing.call_span(NODE_METHOD)
        with _tracing.served_call_span(NODE_METHOD, carrier) as node_span:
            with _tracing.object_call_span("Counter", "c-1", "Increment") as span:
                _tracing.record_push(recipients=3, queued=2)
                span.add_event("counted", {"value": 7})
                with trace.get_tracer("app").start_as_current_span("inside"):
                    pass
            node_span.end()
        client.end()
        gate_span.end()


def _failed_calls() -> None:
    with _tracing.served_call_span(NODE_METHOD, {"traceparent": TRACEPARENT}) as served:
        try:
            with _tracing.object_call_span("Counter", "c-2", "Fail"):
                raise NotFound("no such thing")
        except NotFound as error:
            served.end(error)
    with _tracing.served_call_span(NODE_METHOD, {}) as served:
        served.end_with(grpc.StatusCode.DEADLINE_EXCEEDED)


def _busy_span() -> None:
    with _tracing.served_call_span(NODE_METHOD, CARRIER) as served:
        span = served.span
        span.set_attributes({f"k{i}": i for i in range(MAX_ATTRIBUTES + 3)})
        span.set_attribute("list", ["a", "b"])
        span.set_attribute("mixed", ["a", 1])  # invalid: dropped
        for i in range(MAX_EVENTS + 2):
            span.add_event(f"e{i}")
        span.add_link(SpanContext(5, 6, False, TraceFlags(1)), {"why": "test"})
        span.update_name("renamed")
        span.set_status(Status(StatusCode.OK))
        span.set_status(StatusCode.ERROR, "after OK: ignored")
        served.end()
        span.set_attribute("late", 1)  # after the end: ignored


@pytest.mark.parametrize("work", [_relayed_call, _failed_calls, _busy_span])
def test_lean_spans_record_what_the_sdks_spans_record(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
    work: Callable[[], object],
) -> None:
    lean = record(work, True)
    sdk = record(work, False)
    assert any(_lean(span) for span in lean)
    assert not any(_lean(span) for span in sdk)
    assert _shape(lean) == _shape(sdk)


def test_a_relayed_call_is_one_trace_of_lean_spans_under_the_caller(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
) -> None:
    inside, obj, node, client, gate = record(_relayed_call, True)
    assert all(_lean(span) for span in (obj, node, client, gate))
    assert not _lean(inside)  # the application's own tracer: an SDK child
    for child, parent in ((inside, obj), (obj, node), (node, client), (client, gate)):
        assert child.parent is not None
        assert child.parent.span_id == parent.get_span_context().span_id  # type: ignore[union-attr]
    assert gate.parent is not None
    assert gate.parent.span_id == PARENT_ID
    assert gate.parent.is_remote
    assert {span.get_span_context().trace_id for span in (inside, obj, node, client, gate)} == {  # type: ignore[union-attr]
        TRACE_ID
    }
    assert obj.attributes == {
        "goverse.object.type": "Counter",
        "goverse.object.id": "c-1",
        "goverse.object.method": "Increment",
        "goverse.push.count": 1,
        "goverse.push.recipients": 3,
        "goverse.push.queued": 2,
    }


def test_the_exception_out_of_an_object_call_is_an_event_and_its_status(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
) -> None:
    obj, served, _ = record(_failed_calls, True)
    assert obj.status.status_code is StatusCode.ERROR
    assert [event.name for event in obj.events] == ["exception"]
    assert obj.events[0].attributes is not None
    assert obj.events[0].attributes["exception.type"] == "goverse.errors.NotFound"
    assert "raise NotFound" in str(obj.events[0].attributes["exception.stacktrace"])
    assert served.status.status_code is StatusCode.ERROR
    assert str(served.status.description).endswith(": no such thing")
    assert served.attributes is not None
    assert "rpc.grpc.status_code" in served.attributes
    assert not served.events


def test_a_call_span_sends_its_own_context(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
) -> None:
    sent: list[dict[str, str]] = []

    def call() -> None:
        with _tracing.served_call_span(GATE_METHOD, CARRIER) as served:
            span, carrier = _tracing.call_span(NODE_METHOD)
            sent.append(carrier)
            span.end()
            served.end()

    client, _ = record(call, True)
    context = client.get_span_context()
    assert context is not None
    assert sent == [
        {
            "traceparent": f"00-{TRACE_ID:032x}-{context.span_id:016x}-01",
            "tracestate": "vendor=value,other=x",
        }
    ]


def test_a_served_call_runs_in_its_callers_context_only(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
) -> None:
    seen: list[dict[str, object]] = []

    def call() -> None:
        token = otel_context.attach(baggage.set_baggage("server's", "1"))
        try:
            with _tracing.served_call_span(NODE_METHOD, {"traceparent": TRACEPARENT}) as served:
                seen.append(dict(baggage.get_all()))
                served.end()
        finally:
            otel_context.detach(token)

    [lean] = record(call, True)
    [sdk] = record(call, False)
    assert _lean(lean)
    assert not _lean(sdk)
    assert seen == [{}, {}]


def test_logs_in_a_lean_span_carry_its_ids(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
) -> None:
    seen: list[Mapping[str, Any]] = []

    def call() -> None:
        with _tracing.served_call_span(NODE_METHOD, CARRIER) as served:
            seen.append(add_trace_context(None, "info", {}))
            served.end()

    [span] = record(call, True)
    context = span.get_span_context()
    assert context is not None
    assert seen[0]["trace_id"] == f"{TRACE_ID:032x}"
    assert seen[0]["span_id"] == f"{context.span_id:016x}"


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-00"},  # not sampled
        {"traceparent": f"01-{TRACE_ID:032x}-{PARENT_ID:016x}-01"},  # another version
        {"traceparent": f"00-{TRACE_ID:032X}-{PARENT_ID:016x}-01"},  # upper case
        {"traceparent": f"00-{0:032x}-{PARENT_ID:016x}-01"},  # invalid trace id
        {"traceparent": "00-zz"},
        {"traceparent": TRACEPARENT, "baggage": "user=1"},
        {"tracestate": "a=b"},
    ],
)
def test_a_caller_context_a_lean_span_cannot_continue_goes_the_sdks_way(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
    carrier: dict[str, str],
) -> None:
    def call() -> None:
        with _tracing.served_call_span(NODE_METHOD, carrier) as served:
            served.end()

    assert _lean_spans.remote_parent(carrier) is None
    lean, sdk = record(call, True), record(call, False)
    assert not any(_lean(span) for span in lean)
    assert _shape(lean) == _shape(sdk)


def test_baggage_or_an_unsampled_parent_makes_child_spans_the_sdks(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
) -> None:
    def with_baggage() -> None:
        token = otel_context.attach(baggage.set_baggage("user", "1"))
        try:
            with _tracing.object_call_span("Counter", "c", "M"):
                _tracing.call_span(NODE_METHOD)[0].end()
        finally:
            otel_context.detach(token)

    def under_unsampled() -> None:
        unsampled = SpanContext(TRACE_ID, PARENT_ID, True, TraceFlags(0))
        token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(unsampled)))
        try:
            assert _lean_spans.current_parent() is None
            with _tracing.object_call_span("Counter", "c", "M"):
                pass
        finally:
            otel_context.detach(token)

    for work in (with_baggage, under_unsampled):
        lean, sdk = record(work, True), record(work, False)
        assert not any(_lean(span) for span in lean)
        assert _shape(lean) == _shape(sdk)


def test_lean_spans_are_encoded_as_the_sdks_encoder_encodes_them(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
) -> None:
    spans = [
        *record(_relayed_call, True),
        *record(_failed_calls, True),
        *record(_busy_span, True),
        *record(_relayed_call, False),
    ]
    lean = [span for span in spans if _lean(span)]
    assert len(lean) >= 8
    request = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert request == encode_spans(spans)
    # Lean and SDK spans of goverse's tracer share one resource and one scope.
    [resource_spans] = request.resource_spans
    goverse_scopes = [s for s in resource_spans.scope_spans if s.scope.name == "goverse"]
    assert len(goverse_scopes) == 1


def test_a_recorder_is_used_only_while_its_provider_is_the_global_one_as_it_was() -> None:
    capture = span_capture()
    recorder = _Captured(capture, True).recorder
    _lean_spans.install(recorder)
    try:
        assert _lean_spans.recorder() is recorder
        processors = recorder.provider._active_span_processor
        kept = processors._span_processors
        recorder.provider.add_span_processor(SpanCapture())  # it would miss lean spans
        try:
            assert _lean_spans.recorder() is None
        finally:
            processors._span_processors = kept
        assert _lean_spans.recorder() is recorder
        other = Recorder(object(), (), recorder.resource, recorder.scope)  # type: ignore[arg-type]
        _lean_spans.install(other)
        assert _lean_spans.recorder() is None
    finally:
        _lean_spans.install(None)


def _exporters(telemetry: Telemetry) -> list[SpanExporter]:
    processors = telemetry.tracer_provider._active_span_processor._span_processors
    return [processor.span_exporter for processor in processors]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "lean"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "always_on"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_PROPAGATORS": "tracecontext"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_PROPAGATORS": "b3"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "10"}, False),
    ],
)
def test_telemetry_makes_spans_lean_only_where_they_would_be_the_sdks(
    env: dict[str, str], lean: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "OTEL_TRACES_SAMPLER" in env:  # the SDK reads its sampler from the process's environment
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", env["OTEL_TRACES_SAMPLER"])
    telemetry = Telemetry("node", environ=env)
    try:
        recorder = telemetry._lean_spans
        assert (recorder is not None) is lean
        if recorder is not None:
            assert recorder.resource is telemetry.tracer_provider.resource
            assert all(isinstance(e, OTLPBytesSpanExporter) for e in _exporters(telemetry))
            sdk_scope = telemetry.tracer_provider.get_tracer("goverse").start_span("probe")
            assert recorder.scope == sdk_scope.instrumentation_scope  # type: ignore[attr-defined]
    finally:
        telemetry.tracer_provider.shutdown()


def test_no_exporter_means_no_recorder() -> None:
    assert _lean_recorder({}, TracerProvider(), []) is None


def test_a_link_to_an_invalid_context_is_not_kept(
    record: Callable[[Callable[[], object], bool], list[ReadableSpan]],
) -> None:
    def call() -> None:
        with _tracing.served_call_span(NODE_METHOD, CARRIER) as served:
            served.span.add_link(trace.INVALID_SPAN_CONTEXT)
            served.span.add_link(
                SpanContext(1, 2, True, TraceFlags(1), TraceState([("k", "v")])), {"a": 1}
            )
            served.end()

    [span] = record(call, True)
    assert [(link.context.span_id, dict(link.attributes or {})) for link in span.links] == [
        (2, {"a": 1})
    ]
    assert isinstance(span.links[0], Link)
    assert _shape([span]) == _shape(record(call, False))
