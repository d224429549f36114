"""Router: forwards a verified client's calls to the node that owns the object, by placement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import grpc
import structlog

from goverse import ids
from goverse.errors import CallError
from goverse.placement import Placement
from goverse.transport import ChannelPool
from goverse.v1 import gate_pb2, node_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

Resp = TypeVar("Resp")
_NodeRequest = (
    node_pb2.NodeCallObjectRequest
    | node_pb2.NodeCreateObjectRequest
    | node_pb2.NodeDeleteObjectRequest
)


class Router:
    """Places each call with :class:`~goverse.placement.Placement` over the configured nodes and
    sends it over that node's pooled channel, stamped with the caller the gate verified.

    Ids are validated before anything is sent (:class:`~goverse.errors.InvalidArgument`). A
    node's error keeps its status code and details; an unreachable node fails at once with
    UNAVAILABLE naming the node (calls do not wait for the channel to become ready).
    """

    def __init__(self, nodes: tuple[str, ...], pool: ChannelPool, call_timeout: timedelta) -> None:
        self._placement = Placement(nodes)
        self._pool = pool
        self._call_timeout = call_timeout.total_seconds()
        self._stubs: dict[str, node_pb2_grpc.NodeServiceStub] = {}

    @property
    def placement(self) -> Placement:
        return self._placement

    def node_for(self, object_type: str, object_id: str) -> str:
        return self._placement.node_for(object_type, object_id)

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
        node = self.node_for(request.object_type, request.object_id)
        return await self._send(node, rpc(self._stub(node)), request, time_remaining)

    async def _send(
        self,
        node: str,
        method: Callable[..., Awaitable[Resp]],
        request: object,
        time_remaining: float | None,
    ) -> Resp:
        timeout = self._timeout(time_remaining)
        try:
            return await method(request, timeout=timeout, wait_for_ready=False)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            details = error.details() or code.name
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"node {node} is unavailable: {details}"
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                details = f"node {node} did not answer within {timeout:g}s: {details}"
            log.debug("node call failed", node=node, code=code.name, details=details)
            raise CallError(code, details) from None
