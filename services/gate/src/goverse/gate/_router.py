"""Router: forwards a verified client's calls to the node that owns the object's shard."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from goverse import ids
from goverse.placement import shard_of
from goverse.server import ClusterView, Routing
from goverse.transport import ChannelPool
from goverse.v1 import gate_pb2, node_pb2, node_pb2_grpc

Resp = TypeVar("Resp")
_NodeRequest = (
    node_pb2.NodeCallObjectRequest
    | node_pb2.NodeCreateObjectRequest
    | node_pb2.NodeDeleteObjectRequest
)


class Router:
    """Sends each call to the owner of its object's shard in `view`, through
    :class:`~goverse.server.Routing`, over that node's pooled channel, stamped with the caller
    the gate verified.

    Ids are validated before anything is sent (:class:`~goverse.errors.InvalidArgument`). A
    call is held while its shard has no owner or its owner is not reachable yet, and sent
    again when the node refused it for its shard, within the client's deadline (or
    `call_timeout`); routing gives up a little before the deadline with UNAVAILABLE naming
    the node (or the refusal). A call the node received is never sent twice: its error keeps
    the node's status code and details.
    """

    def __init__(self, view: ClusterView, pool: ChannelPool, call_timeout: timedelta) -> None:
        self._routing = Routing(view, pool)
        self._pool = pool
        self._call_timeout = call_timeout.total_seconds()
        self._stubs: dict[str, node_pb2_grpc.NodeServiceStub] = {}

    def _stub(self, node: str) -> node_pb2_grpc.NodeServiceStub:
        stub = self._stubs.get(node)
        if stub is None:
            stub = node_pb2_grpc.NodeServiceStub(self._pool.get(node))
            self._stubs[node] = stub
        return stub

    def _timeout(self, time_remaining: float | None) -> float:
        return self._call_timeout if time_remaining is None else max(time_remaining, 0.0)

    async def call_object(
        self, client_id: str, request: gate_pb2.CallObjectRequest, time_remaining: float | None
    ) -> gate_pb2.CallObjectResponse:
        ids.validate_object_ref(request.object_type, request.object_id)
        ids.validate_method(request.method)
        reply = await self._route(
            lambda stub: stub.CallObject,
            node_pb2.NodeCallObjectRequest(
                object_type=request.object_type,
                object_id=request.object_id,
                method=request.method,
                request=request.request,
                caller=node_pb2.Caller(client_id=client_id),
            ),
            time_remaining,
        )
        return gate_pb2.CallObjectResponse(response=reply.response)

    async def create_object(
        self, client_id: str, request: gate_pb2.CreateObjectRequest, time_remaining: float | None
    ) -> gate_pb2.CreateObjectResponse:
        ids.validate_object_ref(request.object_type, request.object_id)
        reply = await self._route(
            lambda stub: stub.CreateObject,
            node_pb2.NodeCreateObjectRequest(
                object_type=request.object_type,
                object_id=request.object_id,
                caller=node_pb2.Caller(client_id=client_id),
            ),
            time_remaining,
        )
        return gate_pb2.CreateObjectResponse(created=reply.created)

    async def delete_object(
        self, client_id: str, request: gate_pb2.DeleteObjectRequest, time_remaining: float | None
    ) -> gate_pb2.DeleteObjectResponse:
        ids.validate_object_ref(request.object_type, request.object_id)
        reply = await self._route(
            lambda stub: stub.DeleteObject,
            node_pb2.NodeDeleteObjectRequest(
                object_type=request.object_type,
                object_id=request.object_id,
                caller=node_pb2.Caller(client_id=client_id),
            ),
            time_remaining,
        )
        return gate_pb2.DeleteObjectResponse(deleted=reply.deleted)

    async def _route(
        self,
        rpc: Callable[[node_pb2_grpc.NodeServiceStub], Callable[..., Awaitable[Resp]]],
        request: _NodeRequest,
        time_remaining: float | None,
    ) -> Resp:
        """Sends a validated `request` to the node that owns its object, by `rpc` of its stub."""

        def send(node: str, timeout: float) -> Awaitable[Resp]:
            # wait_for_ready: a connection that drops between routing's check and the send
            # holds the call for the next one instead of failing it fast.
            return rpc(self._stub(node))(request, timeout=timeout, wait_for_ready=True)

        shard = shard_of(request.object_type, request.object_id)
        return await self._routing.call(shard, send, self._timeout(time_remaining))
