"""Node servicer: the gRPC face of NodeService, translating requests to the host and streams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import grpc

from goverse.errors import translate_errors
from goverse.node._call_context import caller_of, inbound
from goverse.node._call_stream import CallStreams
from goverse.node._gate_streams import GateStreams
from goverse.node._object_host import ObjectHost
from goverse.server import ClusterView, PeerCheck, Role
from goverse.v1 import describe_pb2, node_pb2, node_pb2_grpc

GATES = frozenset({Role.GATE})
PEERS = frozenset({Role.GATE, Role.NODE})


class NodeService(node_pb2_grpc.NodeServiceServicer):
    """Serves ``goverse.v1.NodeService``. Every unary handler answers a
    :class:`goverse.errors.GoverseError` with its status code (:func:`translate_errors`).

    With TLS (`peers` enabled), every method first checks the role of the peer's certificate
    (:class:`~goverse.server.PeerCheck`): RegisterGate only from a gate, everything else from
    a gate or a node; a client id is trusted only from a gate (:func:`caller_of`)."""

    def __init__(
        self,
        node: str,
        view: ClusterView,
        host: ObjectHost,
        gates: GateStreams,
        calls: CallStreams,
        membership: Callable[[], node_pb2.StatusResponse],
        peers: PeerCheck | None = None,
        description: describe_pb2.DescribeResponse | None = None,
    ) -> None:
        self._node = node
        self._view = view
        self._host = host
        self._gates = gates
        self._calls = calls
        self._membership = membership
        self._peers = PeerCheck(enabled=False) if peers is None else peers
        self._description = describe_pb2.DescribeResponse() if description is None else description

    async def RegisterGate(
        self, request: node_pb2.RegisterGateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[node_pb2.RegisterGateResponse]:
        peer = await self._peers.require(context, GATES, "RegisterGate")
        async with contextlib.aclosing(self._gates.serve(request, context, peer)) as stream:
            async for response in stream:
                yield response

    async def Calls(
        self,
        request_iterator: AsyncIterator[node_pb2.CallFrames],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[node_pb2.ReplyFrames]:
        peer = await self._peers.require(context, PEERS, "Calls")
        serve = self._calls.serve(request_iterator, context, peer)
        async with contextlib.aclosing(serve) as stream:
            async for replies in stream:
                yield replies

    @translate_errors
    async def CallObject(
        self, request: node_pb2.NodeCallObjectRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.NodeCallObjectResponse:
        peer = await self._peers.require(context, PEERS, "CallObject")
        with inbound(context):
            response = await self._host.invoke(
                request.object_type,
                request.object_id,
                request.method,
                request.request,
                caller_of(request.caller, peer),
            )
        return node_pb2.NodeCallObjectResponse(response=response)

    @translate_errors
    async def CreateObject(
        self, request: node_pb2.NodeCreateObjectRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.NodeCreateObjectResponse:
        await self._peers.require(context, PEERS, "CreateObject")
        with inbound(context):
            created = await self._host.create(request.object_type, request.object_id)
        return node_pb2.NodeCreateObjectResponse(created=created)

    @translate_errors
    async def DeleteObject(
        self, request: node_pb2.NodeDeleteObjectRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.NodeDeleteObjectResponse:
        await self._peers.require(context, PEERS, "DeleteObject")
        with inbound(context):
            deleted = await self._host.delete(request.object_type, request.object_id)
        return node_pb2.NodeDeleteObjectResponse(deleted=deleted)

    @translate_errors
    async def Status(
        self, request: node_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.StatusResponse:
        await self._peers.require(context, PEERS, "Status")
        status = self._membership()
        status.MergeFrom(
            node_pb2.StatusResponse(
                node=self._node,
                nodes=sorted(self._view.nodes()),
                object_types=sorted(self._host.types),
                active_objects=self._host.active_count,
                gates=self._gates.gate_ids(),
                dropped_pushes=self._gates.dropped(),
            )
        )
        return status

    @translate_errors
    async def ListObjects(
        self, request: node_pb2.ListObjectsRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.ListObjectsResponse:
        await self._peers.require(context, PEERS, "ListObjects")
        return node_pb2.ListObjectsResponse(
            objects=[
                node_pb2.ObjectRef(object_type=object_type, object_id=object_id)
                for object_type, object_id in self._host.list(request.object_type)
            ]
        )

    @translate_errors
    async def Describe(
        self, request: describe_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> describe_pb2.DescribeResponse:
        await self._peers.require(context, PEERS, "Describe")
        return self._description


__all__ = ["NodeService"]
