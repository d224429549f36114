"""A minimal OTLP/gRPC trace receiver in the test process: the services' exporter target.

It implements ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` on a threaded
gRPC server and keeps every span it receives. The message classes come from the
``opentelemetry-proto`` package, which the services' tracing brings; without it the receiver
is unavailable (:func:`receiver_unavailable` says why) and trace scenarios skip.
"""

from __future__ import annotations

import importlib
import threading
from concurrent import futures
from typing import Any

import grpc

from tests.e2e.targets.base import ExportedSpan

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
PROTO_MODULE = "opentelemetry.proto.collector.trace.v1.trace_service_pb2"


def _proto_module() -> Any:
    return importlib.import_module(PROTO_MODULE)


def receiver_unavailable() -> str | None:
    """Why no receiver can run here, or None."""
    try:
        _proto_module()
    except ImportError as error:
        return f"opentelemetry-proto is not installed ({error}): the services do not trace yet"
    return None


def _attribute_text(value: Any) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


def spans_of(request: Any) -> list[ExportedSpan]:
    """The spans of one ExportTraceServiceRequest."""
    spans: list[ExportedSpan] = []
    for resource_spans in request.resource_spans:
        resource = {
            item.key: _attribute_text(item.value) for item in resource_spans.resource.attributes
        }
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ExportedSpan(
                        service=resource.get("service.name", ""),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        resource=resource,
                    )
                )
    return spans


class OtlpReceiver:
    """Receives OTLP trace exports on `host` (a random port) until :meth:`stop`."""

    def __init__(self, host: str) -> None:
        self._host = host
        self._spans: list[ExportedSpan] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT (plaintext gRPC)."""
        return f"http://{self._host}:{self.port}"

    def start(self) -> OtlpReceiver:
        proto = _proto_module()

        def export(request: Any, context: grpc.ServicerContext) -> Any:
            received = spans_of(request)
            with self._lock:
                self._spans.extend(received)
            return proto.ExportTraceServiceResponse()

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    export,
                    request_deserializer=proto.ExportTraceServiceRequest.FromString,
                    response_serializer=proto.ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port(f"{self._host}:0")
        if not self.port:
            raise OSError(f"the OTLP receiver cannot bind {self._host}")
        server.start()
        self._server = server
        return self

    def spans(self) -> list[ExportedSpan]:
        with self._lock:
            return list(self._spans)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
