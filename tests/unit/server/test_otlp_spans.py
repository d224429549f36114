"""OTLP span export: the bytes written for finished spans parse to the message the SDK's own
encoder builds, for every field a span can carry; the exporter sends them to a real receiver."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from goverse.server import _otlp_spans
from goverse.server._otlp_spans import OTLPBytesSpanExporter, encode_request, varint
from tests.helpers.telemetry import OtlpReceiver

REMOTE = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "value"), ("other", "x")]),
)
LOCAL_LINK = SpanContext(trace_id=(1 << 127) | 5, span_id=(1 << 63) | 7, is_remote=False)


def _provider(resource: Resource, **limits: int) -> tuple[TracerProvider, InMemorySpanExporter]:
    kept = InMemorySpanExporter()
    provider = TracerProvider(resource=resource, span_limits=SpanLimits(**limits))
    provider.add_span_processor(SimpleSpanProcessor(kept))
    return provider, kept


@pytest.fixture
def spans() -> list[ReadableSpan]:
    """Spans of every kind and shape, from two resources and three scopes."""
    first, kept = _provider(Resource.create({"service.name": "gate", "n": 3}))
    second, kept_too = _provider(
        Resource({"service.name": "node", "flag": True}, schema_url="https://s/1"),
        max_attributes=3,
        max_events=1,
        max_links=1,
    )
    plain = first.get_tracer("goverse")
    versioned = first.get_tracer("app", "1.2", schema_url="https://s/2", attributes={"a": "b"})
    limited = second.get_tracer("goverse")
    with plain.start_as_current_span("/svc/Call", kind=SpanKind.SERVER) as parent:
        parent.set_attributes({"rpc.system": "grpc", "rpc.method": "Call", "code": 0})
        with versioned.start_as_current_span("Counter.Add") as child:
            child.set_attributes(
                {
                    "negative": -5,
                    "big": 2**62,
                    "zero": 0,
                    "ratio": 0.25,
                    "off": False,
                    "on": True,
                    "empty": "",
                    "names": ["a", "", "c"],
                    "numbers": (1, -2, 3),
                    "flags": [True, False],
                    "floats": [1.5, -0.0],
                    "nothing": [],
                    "unicode": "héllo ☃",
                    "long": "x" * 1000,
                }
            )
            child.add_event("pushed", {"to": "c1", "n": 2}, timestamp=123)
            child.add_event("bare")
            child.set_status(Status(StatusCode.ERROR, "it broke"))
    remote = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    for kind in SpanKind:
        span = plain.start_span(f"kind {kind.name}", context=remote, kind=kind)
        span.set_status(Status(StatusCode.OK))
        span.end()
    linked = plain.start_span(
        "linked",
        kind=SpanKind.CONSUMER,
        links=[Link(REMOTE, {"why": "pushed"}), Link(LOCAL_LINK)],
    )
    linked.end(end_time=123_456_789)
    over = limited.start_span("over limits", attributes={f"k{i}": i for i in range(5)})
    over.add_event("one")
    over.add_event("two", {"x": 1, "y": 2, "z": 3, "w": 4})
    over.end()
    linked_over = limited.start_span("links over", links=[Link(REMOTE), Link(LOCAL_LINK)])
    linked_over.end()
    return [*kept.get_finished_spans(), *kept_too.get_finished_spans()]


def _parsed(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encode_request(spans))


def test_the_bytes_parse_to_what_the_sdks_encoder_builds(spans: list[ReadableSpan]) -> None:
    assert len(spans) == 10
    assert _parsed(spans) == encode_spans(spans)


def test_spans_of_interleaved_resources_and_scopes_are_grouped_as_the_sdk_groups_them(
    spans: list[ReadableSpan],
) -> None:
    interleaved = [span for pair in zip(spans, reversed(spans), strict=True) for span in pair]
    assert _parsed(interleaved) == encode_spans(interleaved)
    assert len(_parsed(interleaved).resource_spans) == 2


def test_encoding_twice_gives_the_same_bytes(spans: list[ReadableSpan]) -> None:
    assert encode_request(spans) == encode_request(spans)  # the second from the caches
    assert encode_request([]) == b""


def test_a_value_out_of_range_loses_only_its_attribute(caplog: pytest.LogCaptureFixture) -> None:
    provider, kept = _provider(Resource.create({}))
    span = provider.get_tracer("t").start_span("s", attributes={"huge": 2**64, "fine": 1})
    span.end()
    finished = list(kept.get_finished_spans())
    with caplog.at_level(logging.ERROR):
        parsed = _parsed(finished)
    assert parsed == encode_spans(finished)
    [kept_attribute] = parsed.resource_spans[0].scope_spans[0].spans[0].attributes
    assert kept_attribute.key == "fine"
    assert "huge" in caplog.text


def test_reused_attributes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_otlp_spans, "_KEY_VALUES_KEPT", 8)
    monkeypatch.setattr(_otlp_spans, "_key_values", {})
    provider, kept = _provider(Resource.create({}))
    tracer = provider.get_tracer("t")
    for index in range(50):
        tracer.start_span("s", attributes={"id": f"object-{index}"}).end()
    finished = list(kept.get_finished_spans())
    assert _parsed(finished) == encode_spans(finished)
    assert len(_otlp_spans._key_values) <= 8


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**14 - 1, 2**14, 2**35, 2**64 - 1])
def test_varints_are_protobufs(value: int) -> None:
    from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]

    assert varint(value) == _VarintBytes(value)


def test_the_exporter_delivers_spans_to_a_real_receiver(spans: list[ReadableSpan]) -> None:
    receiver = OtlpReceiver().start()
    try:
        exporter = OTLPBytesSpanExporter(endpoint=receiver.endpoint, insecure=True, timeout=10)
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        received = receiver.wait_for(lambda got: len(got) >= len(spans), timeout=10)
    finally:
        receiver.stop()
    assert sorted(span.name for span in received) == sorted(span.name for span in spans)
    services = {span.service for span in received}
    assert services == {"gate", "node"}
