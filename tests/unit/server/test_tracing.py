"""Tracing: spans of gRPC calls and registration streams, push context and delivery links."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace

from goverse.errors import NotFound, translate_errors
from goverse.server import (
    CallDurations,
    CallMetricsInterceptor,
    GrpcHost,
    KnownNames,
    current_log_context,
    current_trace_context,
    deliver_traced,
)
from goverse.transport import ChannelPool, channel_options
from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.telemetry import Span, SpanCapture

SERVICE = "goverse.v1.NodeService"


class _Node(node_pb2_grpc.NodeServiceServicer):
    """Status answers; ListObjects fails with NOT_FOUND; RegisterGate acks, then waits."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.hold_status = False
        self.status_started = asyncio.Event()
        self.status_cancelled = asyncio.Event()

    @translate_errors
    async def Status(
        self, request: node_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.StatusResponse:
        if self.hold_status:
            self.status_started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.status_cancelled.set()
                raise
        return node_pb2.StatusResponse(node="n")

    @translate_errors
    async def ListObjects(
        self, request: node_pb2.ListObjectsRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.ListObjectsResponse:
        raise NotFound("nothing here")

    async def RegisterGate(
        self, request: node_pb2.RegisterGateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[node_pb2.RegisterGateResponse]:
        yield node_pb2.RegisterGateResponse(ack=node_pb2.RegisterGateAck(node="n"))
        await self.release.wait()
        yield node_pb2.RegisterGateResponse(heartbeat=node_pb2.Heartbeat())


@dataclass
class Served:
    node: _Node
    stub: node_pb2_grpc.NodeServiceStub
    durations: CallDurations
    address: str


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """_Node on a GrpcHost with call metrics, and a stub over a pooled (traced) channel."""
    durations = CallDurations("t.d", "t")
    node = _Node()  # type: ignore[abstract]  # only the RPCs under test
    host = GrpcHost(
        "127.0.0.1:0",
        [SERVICE],
        interceptors=[
            CallMetricsInterceptor(durations, [SERVICE], names=KnownNames({"Counter": ()}))
        ],
    )
    node_pb2_grpc.add_NodeServiceServicer_to_server(node, host.server)
    port = await host.start()
    pool = ChannelPool(channel_options())
    try:
        address = f"127.0.0.1:{port}"
        yield Served(node, node_pb2_grpc.NodeServiceStub(pool.get(address)), durations, address)
    finally:
        node.release.set()
        await pool.close()
        await host.stop(0)


def _named(spans: list[Span], name: str) -> list[Span]:
    return [span for span in spans if span.name == name]


async def test_a_call_has_a_client_span_and_a_server_span_below_it(
    served: Served, captured_spans: SpanCapture
) -> None:
    """The caller's span is the parent of the client span, which is the server span's parent:
    the context crossed the call in its metadata."""
    stub = served.stub
    with trace.get_tracer("test").start_as_current_span("root") as root:
        await stub.Status(node_pb2.StatusRequest(), timeout=10)
    spans = captured_spans.spans
    (client,) = [s for s in _named(spans, f"/{SERVICE}/Status") if s.kind == "CLIENT"]
    (server,) = [s for s in _named(spans, f"/{SERVICE}/Status") if s.kind == "SERVER"]
    trace_id = format(root.get_span_context().trace_id, "032x")
    assert client.trace_id == server.trace_id == trace_id
    assert client.parent_span_id == format(root.get_span_context().span_id, "016x")
    assert server.parent_span_id == client.span_id


async def test_a_traced_call_whose_caller_gives_up_is_cancelled_on_the_server(
    served: Served,
) -> None:
    """The caller's task is cancelled while the call runs: the server's handler is cancelled
    too (the tracing interceptor cancels the RPC, not only its wait for the status)."""
    served.node.hold_status = True

    async def status() -> Any:
        return await served.stub.Status(node_pb2.StatusRequest(), timeout=30)

    call = asyncio.get_running_loop().create_task(status())
    async with asyncio.timeout(10):
        await served.node.status_started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    async with asyncio.timeout(10):
        await served.node.status_cancelled.wait()


async def test_health_checks_are_not_traced(served: Served, captured_spans: SpanCapture) -> None:
    """Neither the client nor the server side of a health check makes a span."""
    pool = ChannelPool(channel_options())
    try:
        reply = await health_pb2_grpc.HealthStub(pool.get(served.address)).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
        )
    finally:
        await pool.close()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert captured_spans.spans == []


async def test_a_registration_stream_is_traced_until_its_first_response_only(
    served: Served, captured_spans: SpanCapture
) -> None:
    """Both registration spans have ended once the ack is read, while the stream stays open."""
    node, stub = served.node, served.stub
    with trace.get_tracer("test").start_as_current_span("root"):
        call = stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id="g"))
    first = await call.read()
    assert first.WhichOneof("event") == "ack"

    def registration_spans() -> list[Span]:
        return _named(captured_spans.spans, f"/{SERVICE}/RegisterGate")

    for _ in range(200):
        if len(registration_spans()) == 2:
            break
        await asyncio.sleep(0.01)
    client, server = sorted(registration_spans(), key=lambda span: span.kind)
    assert (client.kind, server.kind) == ("CLIENT", "SERVER")
    assert server.parent_span_id == client.span_id
    assert not call.done()
    node.release.set()
    second = await call.read()
    assert second.WhichOneof("event") == "heartbeat"
    call.cancel()
    assert len(registration_spans()) == 2


async def test_call_metrics_record_each_call_with_its_status_code(served: Any) -> None:
    stub = served.stub
    await stub.Status(node_pb2.StatusRequest(), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListObjects(node_pb2.ListObjectsRequest(object_type="Counter"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    counts = {
        (rpc, object_type, code): count
        for (code, _, object_type, rpc), count in served.durations.counts().items()
    }
    assert counts == {("Status", "", "OK"): 1, ("ListObjects", "Counter", "NOT_FOUND"): 1}


def test_a_push_carries_the_current_context_and_its_delivery_links_to_it(
    captured_spans: SpanCapture,
) -> None:
    """A delivery is a span of its own trace, linked to the pushing span; log lines written
    during it carry the pushing trace id."""
    seen: dict[str, Any] = {}

    def deliver(envelope: node_pb2.Envelope) -> int:
        seen.update(current_log_context())
        seen["span"] = trace.get_current_span().get_span_context()
        return 3

    with trace.get_tracer("test").start_as_current_span("push") as pushing:
        carrier = current_trace_context()
    assert set(carrier) == {"traceparent"}
    envelope = node_pb2.Envelope(broadcast=node_pb2.BroadcastEnvelope(), trace_context=carrier)
    assert deliver_traced(deliver, envelope) == 3
    pushed = pushing.get_span_context()
    (delivery,) = _named(captured_spans.spans, "goverse.push.deliver")
    assert delivery.kind == "CONSUMER"
    assert delivery.links == ((format(pushed.trace_id, "032x"), format(pushed.span_id, "016x")),)
    assert delivery.trace_id != format(pushed.trace_id, "032x")
    assert delivery.parent_span_id == ""
    assert delivery.attributes["goverse.push.accepted"] == 3
    assert seen["pushed_by_trace_id"] == format(pushed.trace_id, "032x")
    assert format(seen["span"].span_id, "016x") == delivery.span_id


def test_an_envelope_without_context_is_delivered_without_a_span(
    captured_spans: SpanCapture,
) -> None:
    assert current_trace_context() == {}
    envelope = node_pb2.Envelope(broadcast=node_pb2.BroadcastEnvelope())
    assert deliver_traced(lambda _: 1, envelope) == 1
    assert captured_spans.spans == []
