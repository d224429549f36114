"""Telemetry in tests: an in-process OTLP trace receiver, span capture in the test process, and
reading a Prometheus endpoint."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from prometheus_client.parser import text_string_to_metric_families

KIND_NAMES = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}


@dataclass(frozen=True)
class Span:
    """A finished span, from a service (via OTLP) or from the test process, ids in hex."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[tuple[str, str], ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    instance: str = ""
    """``service.instance.id``: the node's address or the gate's id."""


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC ``TraceService`` on 127.0.0.1 that keeps every span it receives."""

    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._changed = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        assert self._server.stop(0).wait(10), "the OTLP receiver did not stop within 10 s"

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            kind=KIND_NAMES.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            links=tuple(
                                (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                            ),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            instance=str(resource.get("service.instance.id", "")),
                        )
                    )
        with self._changed:
            self._spans.extend(received)
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Span]:
        with self._changed:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[Span]], bool], timeout: float = 20.0, what: str = ""
    ) -> list[Span]:
        """Waits until `predicate(spans)` holds for the spans received so far; returns them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self._spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({(s.service, s.name) for s in self._spans})
                    raise AssertionError(f"timed out waiting for {what or predicate}; got {names}")
                self._changed.wait(left)
            return list(self._spans)


def otel_env(receiver: OtlpReceiver | None, exporter: str = "otlp") -> dict[str, str]:
    """Environment for a service process that exports spans to `receiver` quickly."""
    env = {"OTEL_TRACES_EXPORTER": exporter, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    if receiver is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    return env


class SpanCapture(SpanProcessor):
    """Keeps the spans the test process ends while :meth:`capturing`."""

    def __init__(self) -> None:
        self._spans: list[ReadableSpan] = []
        self._active = 0
        self._lock = threading.Lock()

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            if self._active:
                self._spans.append(span)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return [to_span(span) for span in self._spans]

    def start(self) -> None:
        with self._lock:
            self._active += 1
            self._spans.clear()

    def stop(self) -> None:
        with self._lock:
            self._active -= 1


def to_span(span: ReadableSpan) -> Span:
    context = span.get_span_context()
    assert context is not None
    return Span(
        service=str(span.resource.attributes.get("service.name", "")),
        name=span.name,
        kind=span.kind.name,
        trace_id=format(context.trace_id, "032x"),
        span_id=format(context.span_id, "016x"),
        parent_span_id=format(span.parent.span_id, "016x") if span.parent else "",
        links=tuple(
            (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x"))
            for link in span.links
        ),
        attributes=dict(span.attributes or {}),
    )


_capture: SpanCapture | None = None
_capture_lock = threading.Lock()


def span_capture() -> SpanCapture:
    """The test process's span capture. The first call makes an SDK tracer provider the global
    one (once per process; it records spans only while a capture is active)."""
    global _capture
    with _capture_lock:
        if _capture is None:
            provider = TracerProvider(shutdown_on_exit=False)
            _capture = SpanCapture()
            provider.add_span_processor(_capture)
            trace.set_tracer_provider(provider)
            if trace.get_tracer_provider() is not provider:
                raise RuntimeError("another tracer provider is global already")
        return _capture


Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def scrape(port: int) -> Samples:
    """The samples a Prometheus endpoint on 127.0.0.1 serves now, by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (summed when several match;
    0 when none does)."""
    wanted = set(labels.items())
    return sum(
        value for (found, have), value in samples.items() if found == name and wanted <= have
    )


def iter_tree(spans: list[Span], root: Span) -> Iterator[Span]:
    """`root` and every span below it, depth first."""
    yield root
    for span in spans:
        if span.parent_span_id == root.span_id and span.trace_id == root.trace_id:
            yield from iter_tree(spans, span)
