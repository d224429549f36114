"""FakeNode: a scripted NodeService on a real grpc.aio server on loopback, for gate tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import StringValue

from goverse import wire
from goverse.v1 import describe_pb2, node_pb2, node_pb2_grpc
from goverse.v1.calls_pb2 import CallStatus
from goverse.wire import pack, unpack


def text(value: str) -> any_pb2.Any:
    """A push payload: StringValue(value) packed in an Any."""
    return pack(StringValue(value=value))


def unpack_text(packed: any_pb2.Any) -> str:
    """The text of a payload made by :func:`text`."""
    return unpack(packed, StringValue).value


def to_clients(client_ids: list[str], value: str) -> node_pb2.Envelope:
    return node_pb2.Envelope(
        client_message=node_pb2.ClientMessageEnvelope(client_ids=client_ids, message=text(value))
    )


def broadcast(value: str) -> node_pb2.Envelope:
    return node_pb2.Envelope(broadcast=node_pb2.BroadcastEnvelope(message=text(value)))


@dataclass
class ReceivedCall:
    method: str
    request: Any
    metadata: dict[str, str | bytes]
    deadline: float | None


@dataclass
class FakeNode(node_pb2_grpc.NodeServiceServicer):
    """A NodeService whose RegisterGate behaviour tests script, and which records every call.

    RegisterGate sends the acknowledgement (unless `ack` is False), then whatever the test
    hands to :meth:`send`; :meth:`end_streams` ends the open streams normally. Calls, unary or
    on a Calls stream, are recorded in `calls` and answered by `answer` (echo by default) or
    fail with `fail_with`, after `call_delay` seconds. With `refuse` set, every call is
    recorded and refused at once as a node refuses a shard it does not serve:
    FAILED_PRECONDITION with the ``goverse-shard`` marker (a refusal on a Calls stream).
    With `streams` False it answers Calls UNIMPLEMENTED, as a node of a version before the
    call streams does; with `reads` False it never reads a Calls stream, as a frozen node
    (the gate's writes stall once flow control has no room left).
    """

    ack: bool = True
    first_event: node_pb2.RegisterGateResponse | None = None
    end_after_ack: bool = False
    heartbeat_interval_ms: int = 0
    fail_with: tuple[grpc.StatusCode, str] | None = None
    refuse: wire.ShardRefusal | None = None
    call_delay: float = 0.0
    streams: bool = True
    reads: bool = True
    description: describe_pb2.DescribeResponse = field(
        default_factory=describe_pb2.DescribeResponse
    )
    """What Describe answers (a test may replace it); `describes` counts the Describe calls."""
    describes: int = 0
    registrations: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    """The gate instance each registration named, in the order of `registrations`."""
    registered_at: list[float] = field(default_factory=list)
    calls: list[ReceivedCall] = field(default_factory=list)
    call_messages: int = 0
    """CallFrames messages received on Calls streams."""
    cancelled_ids: list[int] = field(default_factory=list)
    """Call ids the gate cancelled on Calls streams."""
    active: int = 0
    max_active: int = 0
    port: int = 0
    unix: str = ""
    """The ``unix:`` address it listens on, when started on one."""
    _queues: list[asyncio.Queue[node_pb2.RegisterGateResponse | None]] = field(default_factory=list)
    _server: Any = None
    _close_reason: str = ""

    @property
    def address(self) -> str:
        return self.unix or f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0, unix: str = "") -> FakeNode:
        """Serves on 127.0.0.1:`port` (a free port when 0; the same port again on restart), or
        on the ``unix:`` address `unix` (one named before anything listens on it)."""
        server = grpc.aio.server()
        node_pb2_grpc.add_NodeServiceServicer_to_server(self, server)
        self.unix = unix or self.unix
        listen = self.unix or f"127.0.0.1:{port or self.port}"
        bound = server.add_insecure_port(listen)
        assert bound, f"cannot bind {listen}"
        self.port = 0 if self.unix else bound
        await server.start()
        self._server = server
        return self

    async def stop(self, grace: float | None = None) -> None:
        """Stops the server; open streams end with an error on the gate's side."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    def send(self, *envelopes: node_pb2.Envelope) -> int:
        """Sends one EnvelopeBatch on every open RegisterGate stream; returns how many."""
        event = node_pb2.RegisterGateResponse(
            envelopes=node_pb2.EnvelopeBatch(envelopes=list(envelopes))
        )
        for queue in self._queues:
            queue.put_nowait(event)
        return len(self._queues)

    def send_event(self, event: node_pb2.RegisterGateResponse) -> int:
        for queue in self._queues:
            queue.put_nowait(event)
        return len(self._queues)

    def end_streams(self, close_reason: str = "") -> None:
        """Ends every open RegisterGate stream with status OK, and with `close_reason` in the
        trailing metadata when given (as a node does: ``shutdown`` when it stops)."""
        self._close_reason = close_reason
        for queue in self._queues:
            queue.put_nowait(None)

    async def RegisterGate(
        self, request: node_pb2.RegisterGateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[node_pb2.RegisterGateResponse]:
        queue: asyncio.Queue[node_pb2.RegisterGateResponse | None] = asyncio.Queue()
        self.registrations.append(request.gate_id)
        self.instances.append(request.instance)
        self.registered_at.append(time.monotonic())
        self._queues.append(queue)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.first_event is not None:
                yield self.first_event
            elif self.ack:
                yield node_pb2.RegisterGateResponse(
                    ack=node_pb2.RegisterGateAck(
                        node=self.address, heartbeat_interval_ms=self.heartbeat_interval_ms
                    )
                )
            if self.end_after_ack:
                return
            while (event := await queue.get()) is not None:
                yield event
            if self._close_reason:
                context.set_trailing_metadata(((wire.CLOSE_REASON_KEY, self._close_reason),))
        finally:
            self.active -= 1
            self._queues.remove(queue)

    async def _unary(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        self.calls.append(ReceivedCall(method, request, metadata, context.time_remaining()))
        if self.refuse is not None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"shard refused: {self.refuse.value}",
                trailing_metadata=wire.shard_metadata(self.refuse),
            )
        if self.call_delay:
            await asyncio.sleep(self.call_delay)
        if self.fail_with is not None:
            await context.abort(*self.fail_with)

    async def Calls(
        self,
        request_iterator: AsyncIterator[node_pb2.CallFrames],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[node_pb2.ReplyFrames]:
        """Answers each call of the stream as the unary handler of its op would (recorded in
        `calls` with the frame's trace context and the gate id as its metadata)."""
        if not self.streams:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if not self.reads:
            await asyncio.Event().wait()  # until the gate cancels the stream
        replies: asyncio.Queue[node_pb2.ReplyFrame | None] = asyncio.Queue()
        gate = dict(context.invocation_metadata() or ()).get(wire.GATE_ID_KEY, "")
        tasks: set[asyncio.Task[None]] = set()

        async def answer(frame: node_pb2.CallFrame) -> None:
            replies.put_nowait(await self._framed(frame, gate))

        by_id: dict[int, asyncio.Task[None]] = {}

        async def read() -> None:
            async for frames in request_iterator:
                self.call_messages += 1
                self.cancelled_ids.extend(frames.cancelled)
                for call_id in frames.cancelled:
                    if call_id in by_id:
                        by_id.pop(call_id).cancel()
                for frame in frames.calls:
                    task = asyncio.create_task(answer(frame))
                    tasks.add(task)
                    by_id[frame.id] = task
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(list(tasks), timeout=30)
            replies.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                yield node_pb2.ReplyFrames(replies=[reply])
        finally:
            for task in (reader, *tasks):
                task.cancel()
            await asyncio.wait([reader, *tasks], timeout=5)

    async def _framed(self, frame: node_pb2.CallFrame, gate: str) -> node_pb2.ReplyFrame:
        op = frame.WhichOneof("op") or ""
        method = {"call": "CallObject", "create": "CreateObject", "delete": "DeleteObject"}[op]
        request = getattr(frame, op)
        metadata: dict[str, str | bytes] = {**frame.trace_context, wire.GATE_ID_KEY: gate}
        deadline = frame.timeout_ms / 1000 if frame.timeout_ms else None
        self.calls.append(ReceivedCall(method, request, metadata, deadline))
        if self.refuse is not None:
            status = CallStatus(
                code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
                message=f"shard refused: {self.refuse.value}",
                shard_refusal=self.refuse.value,
            )
            return node_pb2.ReplyFrame(id=frame.id, error=status)
        if self.call_delay:
            await asyncio.sleep(self.call_delay)
        if self.fail_with is not None:
            code, message = self.fail_with
            return node_pb2.ReplyFrame(
                id=frame.id, error=CallStatus(code=code.value[0], message=message)
            )
        if op == "call":
            return node_pb2.ReplyFrame(
                id=frame.id, call=node_pb2.NodeCallObjectResponse(response=request.request)
            )
        if op == "create":
            return node_pb2.ReplyFrame(
                id=frame.id, create=node_pb2.NodeCreateObjectResponse(created=True)
            )
        return node_pb2.ReplyFrame(
            id=frame.id, delete=node_pb2.NodeDeleteObjectResponse(deleted=True)
        )

    async def CallObject(
        self, request: node_pb2.NodeCallObjectRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.NodeCallObjectResponse:
        await self._unary("CallObject", request, context)
        return node_pb2.NodeCallObjectResponse(response=request.request)

    async def CreateObject(
        self, request: node_pb2.NodeCreateObjectRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.NodeCreateObjectResponse:
        await self._unary("CreateObject", request, context)
        return node_pb2.NodeCreateObjectResponse(created=True)

    async def DeleteObject(
        self, request: node_pb2.NodeDeleteObjectRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.NodeDeleteObjectResponse:
        await self._unary("DeleteObject", request, context)
        return node_pb2.NodeDeleteObjectResponse(deleted=True)

    async def Status(
        self, request: node_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.StatusResponse:
        return node_pb2.StatusResponse(node=self.address, nodes=[self.address])

    async def ListObjects(
        self, request: node_pb2.ListObjectsRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.ListObjectsResponse:
        return node_pb2.ListObjectsResponse()

    async def Describe(
        self, request: describe_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> describe_pb2.DescribeResponse:
        self.describes += 1
        return self.description
